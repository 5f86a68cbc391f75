//! `netpol-observe recommend`: least-privilege NetworkPolicies from observed flows.

use crate::report::Chain;
use std::{
    ffi::OsStr,
    path::{Component, Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use ipnet::IpNet;
use jiff::SignedDuration;

use super::{
    inputs,
    out::{self, errln},
};
use crate::{
    agent,
    attribution::Subnets,
    flow::{FlowRecord, jsonl::FlowLineError},
    inventory::{Inventory, NetworkPolicy, Validation},
    names,
    policy::PolicyEngine,
    recommend::{
        FlowAggregate, PolicyFormat, PublicIngress, RecommendConfig, Recommendation, Recommender,
        RecordedFlows, diff,
        format::RenderedObject,
        render_objects,
        sources::{self, prometheus},
    },
};

use super::recommend_output::{self as output, Output};

/// Arguments of `netpol-observe recommend`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe recommend --flows flows.jsonl --inventory cluster.yaml --subnets subnets.yaml
  netpol-observe recommend --flows day1.jsonl day2.jsonl --inventory inv/ --write policies/
  netpol-observe recommend --flows flows.jsonl --inventory inv/ -o json
  netpol-observe recommend --agent http://10.0.0.11:9965 http://10.0.0.12:9965 --token-file token --inventory inv/
  netpol-observe recommend --prometheus http://prometheus:9090 --window 24h --inventory inv/
  netpol-observe recommend --flows flows.jsonl --inventory inv/ --diff
  netpol-observe recommend --flows flows.jsonl --inventory inv/ --diff -o json --write policies/
  netpol-observe recommend --flows flows.jsonl --inventory inv/ --format cilium

Writes one multi-document YAML stream (-o yaml, the default; -o json: one JSON List) to
stdout, or to the file given with --write, or with --write DIR one <namespace>.yaml (.json)
per namespace (_cluster.yaml for cluster-scoped objects). With --diff, -o is the report's
format (text, the default, or json; to stdout) and the policies are written only with --write
(YAML). --format picks
the policy API: networkpolicy (default; every CNI), cilium (CiliumNetworkPolicy),
clusternetworkpolicy. The same input gives the same bytes. Notes (left-out
flows, aggregations) go to stderr. A bad flow line is reported (file:line) and the others are
still used; the exit code is then 2. The policies are checked against the observed flows
before they are written: if they would deny one (the self-check), nothing is written and the
exit code is 2.

Flows the policies in force denied are not evidence: a connection the kernel dropped gets no
allow rule (anyone can knock on a port while the agent learns). A flow counts as denied when
it has drops of a filter (drops.count > 0, not NO_SOCKET or IP_RPFILTER), when its source
recorded a verdict saying denied (the agent's /api/v1/flows, evaluate's output, Prometheus'
verdict=\"denied\" series), or, without a recorded verdict, when the --inventory's
NetworkPolicies deny it. Unless it was delivered all the same (the agent's \"unenforced\",
a completed TCP handshake, an answer), it is not learned and is listed as \"denied by the
policies in force — review\" in the notes, in the netpol-observe.io/denied-in-force
annotation of the namespace's default-deny and in the --diff report; --include-denied learns
it. A denied flow that was delivered is real traffic the CNI did not block: it is learned,
and noted; so is a record with neither state nor packets that only the --inventory's
policies deny (they may postdate it).

Kubernetes objects are checked strictly: a field their type does not know (a typo such as
podSelectr, or a field of a newer Kubernetes) is an error naming file, document, object and
field; --validate=warn reports and ignores such fields, --validate=ignore drops them. A
namespaced object without metadata.namespace is taken as \"default\" with a warning.")]
pub struct Args {
    /// Flow records, JSON lines (`-` for stdin); several files are merged.
    #[arg(long, value_name = "FILE", num_args = 1.., required_unless_present_any = ["agent", "prometheus"], conflicts_with_all = ["agent", "prometheus"])]
    pub flows: Vec<PathBuf>,
    /// Running agents whose `GET /api/v1/flows` to read (merged, duplicates dropped).
    #[arg(long, value_name = "URL", num_args = 1.., conflicts_with = "prometheus")]
    pub agent: Vec<String>,
    /// Bearer token for `--agent` (a file holding it) [default: the pod's ServiceAccount token,
    /// else the kubeconfig's].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_TOKEN_FILE",
        value_name = "FILE",
        requires = "agent"
    )]
    pub token_file: Option<PathBuf>,
    /// Prometheus (or Thanos/Mimir) base URL holding `netpol_observe_flows_total`.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Observation window for `--prometheus` (e.g. `24h`, `7d`, `90m`).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub window: SignedDuration,
    /// Kubernetes objects (a file or a directory of YAML files, `kubectl get … -o yaml`).
    #[arg(long, value_name = "PATH")]
    pub inventory: Option<PathBuf>,
    /// Named subnets, YAML `name: [CIDRs]`; written as their CIDRs.
    #[arg(long, value_name = "FILE")]
    pub subnets: Option<PathBuf>,
    /// Output format (as kubectl's `-o`): `yaml` (default) or `json` for the policies;
    /// with `--diff`, `text` (default) or `json` for the report.
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_parser = output::parse)]
    pub output: Option<Output>,
    /// Write the policies to this file (one stream) or directory (existing, or ending in `/`:
    /// one file per namespace) instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub write: Option<PathBuf>,
    /// Instead of only writing policies, report the current policies of the inventory against
    /// the flows: flows they deny and rules never exercised (to stdout; policies only with
    /// --write).
    #[arg(long, requires = "inventory")]
    pub diff: bool,
    /// The policy API written: NetworkPolicy (every CNI), CiliumNetworkPolicy (Cilium), or
    /// ClusterNetworkPolicy next to the NetworkPolicies (Calico 3.32, Cilium 1.20, AWS).
    #[arg(long, value_enum, value_name = "API", default_value = "networkpolicy")]
    pub format: PolicyFormat,
    /// Do not write a `default-deny` policy per namespace.
    #[arg(long)]
    pub no_default_deny: bool,
    /// Namespaces to write no policies for (they remain peers). Default: kube-system.
    #[arg(long, value_name = "NS", default_values_t = ["kube-system".to_owned()])]
    pub exclude_namespace: Vec<String>,
    /// Widest IPv4 prefix observed external addresses are aggregated into.
    #[arg(long, value_name = "LEN", default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub aggregate_v4: u8,
    /// Widest IPv6 prefix observed external addresses are aggregated into.
    #[arg(long, value_name = "LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub aggregate_v6: u8,
    /// More distinct public addresses than this on one port become 0.0.0.0/0 and ::/0.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub world_threshold: usize,
    /// Workloads seen for less than this get a warning annotation.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub min_observation: SignedDuration,
    /// Extra cluster ranges (e.g. the service CIDR) excluded from 0.0.0.0/0 blocks.
    #[arg(long, value_name = "CIDR")]
    pub cluster_range: Vec<IpNet>,
    /// Public entry points (workloads behind a LoadBalancer or NodePort Service, on its ports,
    /// with public clients observed): `any` opens them to 0.0.0.0/0 and ::/0 except private
    /// and cluster ranges; `observed` keeps the observed clients (aggregated).
    #[arg(long, value_enum, value_name = "RULE", default_value = "any")]
    pub public_ingress: PublicIngress,
    /// Learn the flows the policies in force denied that never got through (dropped, or
    /// attempted while a policy denied them) as legitimate traffic: by default they get no
    /// allow rule and are listed for review.
    #[arg(long)]
    pub include_denied: bool,
    /// How unknown fields in inventory and policy files are treated.
    #[arg(long, value_enum, value_name = "MODE", default_value = "strict", long_help = inputs::VALIDATE_HELP)]
    pub validate: Validation,
}

/// The longest `--window` / `--min-observation`: 100 years (36,600 days). Longer durations mean
/// nothing for an observation and overflow the time arithmetic.
const MAX_DURATION: SignedDuration = SignedDuration::from_hours(36_600 * 24);

/// A `--window` / `--min-observation` value: the agent's duration grammar (`24h`, `90m`, `7d`,
/// `1m30s`, ISO 8601; [`agent::config::parse_duration`]), positive and at most 100 years.
pub(super) fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let too_long = || format!("{s:?} is too long: at most 36600d (100 years)");
    let is_day_count = |t: &str| {
        t.strip_suffix('d')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let d = match agent::config::parse_duration(s) {
        Ok(d) => d,
        // A day count past what a duration can hold.
        Err(_) if is_day_count(s.trim()) => return Err(too_long()),
        Err(e) => return Err(e),
    };
    if d.is_negative() || d.is_zero() {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// Runs `netpol-observe recommend`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (policy_output, report_output) = outputs(&args)?;
    let inventory = match &args.inventory {
        Some(path) => inputs::load(path, args.validate, "the inventory")?,
        None => Inventory::default(),
    };
    let subnets = match &args.subnets {
        Some(path) => Subnets::from_path(path)?,
        None => Subnets::default(),
    };
    let recommender = Recommender::new(&inventory, &subnets, config(&args));
    // The records are folded as they are read: memory follows the distinct connections, not
    // the number of records (see `recommend::aggregate`).
    let (flows, bad) = collect_flows(&args, &inventory, &subnets, &recommender).await?;
    let rec = recommender.recommend_aggregate(&flows);
    for note in &rec.notes {
        if note.starts_with("warning: ") {
            errln!("{note}");
        } else {
            errln!("note: {note}");
        }
    }
    tracing::info!(
        flows = rec.stats.flows,
        edges = rec.stats.edges,
        workloads = rec.stats.workloads,
        policies = rec.stats.policies,
        "recommended"
    );

    if rec.self_check_failed() {
        anyhow::bail!(
            "self-check failed: the recommended policies {} (see the notes above); nothing was written",
            match &rec.stats.self_check_error {
                Some(err) => format!("do not compile: {err}"),
                None => format!("deny {} observed flow(s)", rec.stats.self_check_denied),
            }
        );
    }
    check_output_names(&rec.policies)?;
    let objects = render_objects(args.format, &rec, &inventory)?;
    if args.format == PolicyFormat::ClusterNetworkPolicy {
        check_cluster_policies(&rec, &inventory, &flows, &recommender)?;
    }
    write_policies(&args, &objects, policy_output)?;

    if args.diff {
        let engine = PolicyEngine::compile_with_cluster(
            &inventory.network_policies,
            &inventory.cluster_network_policies,
            &inventory,
        )
        .context("the inventory's current NetworkPolicies")?;
        let attributed = attributed(&flows, &recommender);
        let mut report = diff::diff_weighted(
            &inventory.network_policies,
            &inventory,
            &engine,
            attributed.iter().map(|(f, n)| (f, *n)),
        );
        report.denied_in_force = rec.denied;
        match report_output {
            Output::Json => out::stdout(serde_json::to_string_pretty(&report)? + "\n")?,
            _ => out::stdout(report.to_text())?,
        }
        if bad == 0 && !report.denied.is_clean() {
            // As `verify`: observed flows the current policies deny.
            return Ok(ExitCode::from(1));
        }
    }
    if bad > 0 {
        errln!("error: {bad} flow line(s) could not be read");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// The formats of the policies and of the `--diff` report. `-o` is the format of what goes
/// to stdout: the policies, or with `--diff` the report.
fn outputs(args: &Args) -> anyhow::Result<(Output, Output)> {
    Ok(match (args.diff, args.output) {
        (false, None) => (Output::Yaml, Output::Text),
        (false, Some(Output::Text)) => anyhow::bail!(
            "-o text is the --diff report's format; the policies are written as -o yaml or -o json"
        ),
        (false, Some(o)) => (o, Output::Text),
        (true, None) => (Output::Yaml, Output::Text),
        (true, Some(Output::Yaml)) => anyhow::bail!(
            "-o yaml: the --diff report is -o text or -o json (the policies go to --write as YAML)"
        ),
        (true, Some(o)) => (Output::Yaml, o),
    })
}

/// The recommender's configuration from the command line.
fn config(args: &Args) -> RecommendConfig {
    RecommendConfig {
        default_deny: !args.no_default_deny,
        exclude_namespaces: args.exclude_namespace.clone(),
        aggregate_v4: args.aggregate_v4,
        aggregate_v6: args.aggregate_v6,
        world_threshold: args.world_threshold,
        min_observation: args.min_observation,
        cluster_ranges: args.cluster_range.clone(),
        self_check: true,
        public_ingress: args.public_ingress,
        include_denied: args.include_denied,
    }
}

/// The self-check of `--format cluster-network-policy`: the ClusterNetworkPolicies must take
/// away nothing the NetworkPolicies allow (the first denied flows go to stderr).
fn check_cluster_policies(
    rec: &Recommendation,
    inventory: &Inventory,
    flows: &FlowAggregate,
    recommender: &Recommender<'_>,
) -> anyhow::Result<()> {
    let cluster = crate::recommend::cluster_policy::render(rec, inventory);
    let attributed = attributed(flows, recommender);
    let denied = crate::recommend::cluster_policy::check_weighted(
        rec,
        &cluster,
        inventory,
        attributed.iter().map(|(f, n)| (f, *n)),
    )
    .context("self-check of the ClusterNetworkPolicies")?;
    if denied.is_empty() {
        return Ok(());
    }
    let lines = denied
        .iter()
        .flat_map(|(d, n)| std::iter::repeat_n(d, usize::try_from(*n).unwrap_or(0)));
    for d in lines.take(20) {
        errln!("self-check: the ClusterNetworkPolicies deny an observed flow {d}");
    }
    anyhow::bail!(
        "self-check failed: the ClusterNetworkPolicies deny {} observed flow(s) the NetworkPolicies allow; nothing was written",
        denied.iter().map(|(_, n)| n).sum::<u64>()
    );
}

/// Writes the policies to `--write` (a file, or a directory: one file per namespace), else to
/// stdout unless `--diff` prints its report there.
fn write_policies(args: &Args, objects: &[RenderedObject], format: Output) -> anyhow::Result<()> {
    match &args.write {
        Some(out) if is_dir_target(out) => {
            let files = by_file(out, objects, format)?;
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create the directory {}", out.display()))?;
            for (file, yaml) in files {
                std::fs::write(&file, yaml)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
        }
        Some(out) => {
            std::fs::write(out, output::render(objects, format)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        None if !args.diff => out::stdout(output::render(objects, format)?)?,
        None => {}
    }
    Ok(())
}

/// The files of `--write DIR`: `<namespace>.yaml` per namespace, `_cluster.yaml` for
/// cluster-scoped objects (no namespace can be named so), each a stream in the objects' order
/// (`.json`, one List each, with `-o json`).
fn by_file(
    dir: &Path,
    objects: &[RenderedObject],
    format: Output,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut groups: std::collections::BTreeMap<Option<&str>, Vec<&RenderedObject>> =
        std::collections::BTreeMap::new();
    for o in objects {
        groups.entry(o.namespace.as_deref()).or_default().push(o);
    }
    groups
        .into_iter()
        .map(|(ns, list)| {
            let ext = output::extension(format);
            let file = match ns {
                Some(ns) => namespace_file(dir, ns, ext)?,
                None => dir.join(format!("_cluster.{ext}")),
            };
            Ok((file, output::render_refs(list, format)?))
        })
        .collect()
}

/// Every name of the policies to write (namespace, name, labels) follows the Kubernetes rules:
/// the last line of defence for names that came from input.
fn check_output_names(policies: &[NetworkPolicy]) -> anyhow::Result<()> {
    for p in policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let id = format!("NetworkPolicy {ns}/{name}");
        names::check_namespace(ns).with_context(|| format!("{id}: field metadata.namespace"))?;
        names::check_object(name).with_context(|| format!("{id}: field metadata.name"))?;
        names::check_labels(p.metadata.labels.iter().flatten()).map_err(|(key, e)| {
            anyhow::Error::new(e).context(format!("{id}: field metadata.labels[{key:?}]"))
        })?;
        crate::policy::validate(p).with_context(|| format!("{id} is not valid"))?;
    }
    Ok(())
}

/// The file `<ns>.<ext>` directly in `dir`. `ns` must be a namespace name (DNS-1123 label: no
/// separator, no `..`), and the joined path is checked to be a plain child of `dir`.
fn namespace_file(dir: &Path, ns: &str, ext: &str) -> anyhow::Result<PathBuf> {
    names::check_namespace(ns).with_context(|| {
        format!(
            "refusing to write the policies of namespace {ns:?} under {}",
            dir.display()
        )
    })?;
    let name = format!("{ns}.{ext}");
    let file = dir.join(&name);
    let plain = matches!(
        Path::new(&name).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(n)] if *n == OsStr::new(&name)
    );
    anyhow::ensure!(
        plain && file.parent() == Some(dir) && file.file_name() == Some(OsStr::new(&name)),
        "refusing to write {}: not a file directly in {}",
        file.display(),
        dir.display()
    );
    Ok(file)
}

fn is_dir_target(path: &Path) -> bool {
    path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/')
}

/// Each group's first record of `flows` attributed, with the records it stands for.
fn attributed(flows: &FlowAggregate, recommender: &Recommender<'_>) -> Vec<(FlowRecord, u64)> {
    flows
        .records_weighted()
        .map(|(f, n)| {
            let mut f = f.clone();
            recommender.attributor().attribute(&mut f);
            (f, n)
        })
        .collect()
}

/// The flows of `--flows`, `--agent` or `--prometheus` with the verdicts their source recorded,
/// folded as they are read, and the number of unreadable lines (each reported on stderr).
async fn collect_flows(
    args: &Args,
    inventory: &Inventory,
    subnets: &Subnets,
    recommender: &Recommender<'_>,
) -> anyhow::Result<(FlowAggregate, usize)> {
    if let Some(url) = &args.prometheus {
        let flows = flows_from_prometheus(args, url, inventory, subnets).await?;
        return Ok((recommender.aggregate_recorded(&flows), 0));
    }
    if !args.agent.is_empty() {
        let mut lists = Vec::new();
        let mut bad = 0;
        let token = crate::http::client::bearer_token(args.token_file.as_deref()).await?;
        let client = reqwest::Client::new();
        for url in &args.agent {
            let endpoint = format!("{}/api/v1/flows", url.trim_end_matches('/'));
            let body = agent_flows(&client, &endpoint, token.as_ref()).await?;
            let (flows, errors) = sources::parse_agent_answer(&body, &endpoint);
            for e in &errors {
                errln!("error: {}", Chain(e));
            }
            bad += errors.len();
            lists.push(flows);
        }
        // The agents' answers are held (each is bounded by its agent's flow store) to drop
        // the records several agents made of one flow.
        let merged = sources::merge_recorded(lists);
        return Ok((recommender.aggregate_recorded(&merged), bad));
    }
    flows_from_files(args, recommender)
}

/// The flows of `--prometheus url` in the window: the counters at one evaluation time, with
/// the first and last increase of each connection's counter as first and last seen (a store
/// without range queries: the window, with a warning).
async fn flows_from_prometheus(
    args: &Args,
    url: &str,
    inventory: &Inventory,
    subnets: &Subnets,
) -> anyhow::Result<RecordedFlows> {
    let base = url.trim_end_matches('/');
    let endpoint = format!("{base}/api/v1/query");
    let query = prometheus::prometheus_query(args.window);
    // One evaluation time for both queries.
    let end = jiff::Timestamp::now();
    let time = end.as_second().to_string();
    let params = [("query", query.as_str()), ("time", time.as_str())];
    let body = prometheus_get(url, &endpoint, &params).await?;
    let range = format!("{base}/api/v1/query_range");
    let start = end.checked_sub(args.window).unwrap_or(end);
    let seen = async {
        let params = prometheus::range_params(args.window, end);
        let answer = prometheus_get(url, &range, &params).await?;
        anyhow::Ok(prometheus::parse_range(&answer, &range, start)?)
    }
    .await
    .unwrap_or_else(|e| {
        errln!(
            "warning: {}: first/last seen are the query window",
            super::error_chain(&e)
        );
        prometheus::Seen::default()
    });
    let (flows, notes) = prometheus::parse_prometheus_seen(
        &body,
        &seen,
        &endpoint,
        inventory,
        subnets,
        args.window,
    )?;
    for n in notes {
        errln!("note: {n}");
    }
    Ok(flows)
}

/// The body of Prometheus' answer to `endpoint` with `params` (`url`: as given).
async fn prometheus_get<V: AsRef<str>>(
    url: &str,
    endpoint: &str,
    params: &[(&str, V)],
) -> anyhow::Result<String> {
    let full = reqwest::Url::parse_with_params(endpoint, params)
        .with_context(|| format!("--prometheus {url:?} is not a URL"))?;
    reqwest::get(full)
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot query {endpoint}"))?
        .text()
        .await
        .with_context(|| format!("cannot read the answer of {endpoint}"))
}

/// The body of an agent's answer to `endpoint` (its flows); a refusal names the status, the
/// agent's answer, and what to do about a token; a truncated answer is warned about.
async fn agent_flows(
    client: &reqwest::Client,
    endpoint: &str,
    token: Option<&crate::http::client::BearerToken>,
) -> anyhow::Result<String> {
    let resp = crate::http::client::get(client, endpoint, token)
        .send()
        .await
        .with_context(|| format!("cannot read flows from {endpoint}"))?;
    let status = resp.status();
    let truncated = resp
        .headers()
        .get(crate::http::TRUNCATED_HEADER)
        .is_some_and(|v| v == "true");
    let body = resp
        .text()
        .await
        .with_context(|| format!("cannot read flows from {endpoint}"))?;
    if !status.is_success() {
        let mut msg = format!(
            "cannot read flows from {endpoint}: HTTP {status}: {}",
            body.trim()
        );
        if let Some(hint) = crate::http::client::refusal_hint(status, token) {
            msg.push_str(&format!(" ({hint})"));
        }
        anyhow::bail!(msg);
    }
    if truncated {
        errln!(
            "warning: {endpoint}: the agent holds more flows than one answer carries; \
             the oldest are left out"
        );
    }
    Ok(body)
}

/// The flows of `--flows` files (`-`: stdin), folded as they are read, and the number of
/// unreadable lines (each reported on stderr, in the first pass only).
fn flows_from_files(
    args: &Args,
    recommender: &Recommender<'_>,
) -> anyhow::Result<(FlowAggregate, usize)> {
    let mut bad = 0;
    // stdin cannot be read twice (a pass may ask for another): it is kept in a file.
    let stdin = match args.flows.iter().any(|p| p == Path::new("-")) {
        true => Some(Spool::stdin()?),
        false => None,
    };
    // Several files are concatenated, as before: only agents' answers are de-duplicated.
    let flows = recommender.aggregate(|agg| {
        let report = agg.pass() == 0;
        let mut each = |e: FlowLineError| {
            if report {
                errln!("error: {}", Chain(&e));
                bad += 1;
            }
        };
        for path in &args.flows {
            match &stdin {
                Some(spool) if path == Path::new("-") => {
                    let file = std::fs::File::open(&spool.0)
                        .with_context(|| format!("cannot read {}", spool.0.display()))?;
                    agg.fold_reader(
                        path,
                        std::io::BufReader::with_capacity(1 << 16, file),
                        &mut each,
                    );
                }
                _ => agg.fold_file(path, &mut each),
            }
        }
        anyhow::Ok(())
    })?;
    Ok((flows, bad))
}

/// stdin copied to a temporary file (removed when dropped).
struct Spool(PathBuf);

impl Spool {
    fn stdin() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "netpol-observe-stdin-{}-{nanos}.jsonl",
            std::process::id()
        ));
        let spool = Spool(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&spool.0)
            .with_context(|| format!("cannot create {}", spool.0.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file)
            .with_context(|| format!("cannot copy stdin to {}", spool.0.display()))?;
        Ok(spool)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_parsed_and_bounded() {
        assert_eq!(parse_duration("7d"), Ok(SignedDuration::from_hours(168)));
        assert_eq!(parse_duration("90m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("36600d"), Ok(MAX_DURATION));
        for huge in [
            "200000000000000d",
            "9223372036854775807d",
            "36601d",
            "1000000h",
        ] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("is too long: at most 36600d"), "{huge}: {err}");
        }
        for bad in ["0d", "-1d", "soon", "200000000000000000000h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
