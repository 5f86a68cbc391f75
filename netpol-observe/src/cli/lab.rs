//! The lab: a simulated Kubernetes node (network namespaces as pods) driven by a scenario file,
//! observed by the agent, with policies recommended, verified and (with `--enforce`) enforced.
//! `netpol-observe lab`.

use std::{fmt::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;

use crate::lab::{
    control_plane, enforce, expect,
    expect::Seen,
    model::LabModel,
    prometheus::Comparison,
    run::{self, EnforceProbe, LabOptions, LabReport},
    scenario,
    traffic::{Outcome, Timeouts},
};

/// Arguments of `netpol-observe lab`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sudo netpol-observe lab --scenario deploy/lab/shop.yaml --out lab-out --enforce
  sudo netpol-observe lab --scenario deploy/lab/voting.yaml --out lab-out
  sudo netpol-observe lab --scenario deploy/lab/shop.yaml --enforce --policies my-policies/
  sudo netpol-observe lab --scenario deploy/lab/shop.yaml --enforce --apiserver \
      --kube-apiserver ../shared/k8s/bin/kube-apiserver --etcd ../shared/k8s/bin/etcd

Writes inventory.yaml, subnets.yaml, probes.json, flows.jsonl, recommended.yaml, verify.json,
metrics.txt and agent.log (with --enforce also enforce.nft, enforce.json and, for externals
with rotateTo, rotation.json; with Prometheus prometheus.json and prometheus/) into --out.

Where a prometheus binary is found (--prometheus-bin, $NETPOL_OBSERVE_PROMETHEUS, or PATH) the
lab runs its own Prometheus in the node's namespace (127.0.0.1:9090 there, its own config and
data in --out/prometheus), scraping the agent every second, and checks that
`recommend --prometheus` gives the policies of `recommend --agent`. With --keep-running the
lab stays up after the run until Ctrl-C, printing how to reach that Prometheus.

Exit status: 0 when every traffic entry succeeded and was reported by the agent, the
recommended policies allow every observed flow, with --enforce every traffic entry still
succeeded and every forbidden probe was dropped and reported, every rotation was counted by
the agents before its connection, which was dropped, and with Prometheus
`recommend --prometheus` equals `recommend --agent`; 1 when something did not;
2 on error.")]
pub struct Args {
    /// The scenario file (format: docs/lab.md).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "lab-out")]
    pub out: PathBuf,
    /// Compile NetworkPolicies into nftables rules on the node and probe again.
    #[arg(long)]
    pub enforce: bool,
    /// Policies to enforce (file or directory of YAML); default: the recommended ones.
    #[arg(long, requires = "enforce")]
    pub policies: Option<PathBuf>,
    /// Probe timeout in milliseconds (connect and answer).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Seconds to wait for the agent to be ready and to report the traffic's flows.
    #[arg(long, default_value_t = 30)]
    pub agent_timeout: u64,
    /// Keep the lab's objects in a real kube-apiserver (with etcd, started in the node's
    /// namespace) and run the agent in in-cluster mode with the DaemonSet's ServiceAccount.
    #[arg(long)]
    pub apiserver: bool,
    /// The kube-apiserver binary for --apiserver.
    #[arg(
        long,
        env = "NETPOL_OBSERVE_KUBE_APISERVER",
        value_name = "FILE",
        requires = "apiserver"
    )]
    pub kube_apiserver: Option<PathBuf>,
    /// The etcd binary for --apiserver.
    #[arg(
        long,
        env = "NETPOL_OBSERVE_ETCD",
        value_name = "FILE",
        requires = "apiserver"
    )]
    pub etcd: Option<PathBuf>,
    /// The prometheus binary [default: `prometheus` on PATH; none found: no Prometheus].
    #[arg(long, env = "NETPOL_OBSERVE_PROMETHEUS", value_name = "FILE")]
    pub prometheus_bin: Option<PathBuf>,
    /// After the run, keep the node, the agent and Prometheus up until Ctrl-C/SIGTERM.
    #[arg(long)]
    pub keep_running: bool,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `netpol-observe lab`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Everything that can be wrong with the input is checked before touching the machine.
    let (scenario, text) = scenario::load(&args.scenario)?;
    let model = LabModel::build(&args.scenario, &text, &scenario)?;
    let policies = match &args.policies {
        Some(p) => Some(enforce::load_policies(p)?),
        None => None,
    };
    if let Some(p) = &policies {
        enforce::compile(&model, p)?;
    }
    let apiserver = args
        .apiserver
        .then(|| control_plane::Binaries::resolve(args.kube_apiserver.clone(), args.etcd.clone()))
        .transpose()?;
    let prometheus = crate::lab::prometheus::find(args.prometheus_bin.clone())?;
    if prometheus.is_none() {
        tracing::warn!(
            "no prometheus binary (--prometheus-bin, $NETPOL_OBSERVE_PROMETHEUS, PATH): the lab runs without Prometheus"
        );
    }
    if !is_root() {
        anyhow::bail!(
            "the lab creates network namespaces, nftables rules and loads eBPF programs: run it as root"
        );
    }
    let agent_program =
        std::env::current_exe().context("cannot find this executable to run it as the agent")?;
    let opts = LabOptions {
        out: args.out.clone(),
        enforce: args.enforce,
        policies,
        timeouts: Timeouts {
            connect: Duration::from_millis(args.timeout_ms),
            ..Timeouts::default()
        },
        agent_program,
        agent_timeout: Duration::from_secs(args.agent_timeout.max(1)),
        apiserver,
        prometheus,
    };
    let (report, running) = run::start(&model, &opts)
        .await
        .with_context(|| format!("lab {}", model.name))?;
    super::out::stdout(summary(&model, &report))?;
    if args.keep_running {
        super::out::stdout(keep_running_hint(&report, &running, &args.out))?;
        let why = run::wait_for_signal().await;
        tracing::info!("{why}: removing the lab");
    }
    running
        .finish()
        .await
        .with_context(|| format!("lab {}", model.name))?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::Partial => "partial",
    }
}

fn seen(o: Seen) -> &'static str {
    match o {
        Seen::Allowed => "allowed",
        Seen::Denied => "denied",
    }
}

fn policy_name(p: &k8s_openapi::api::networking::v1::NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The readable summary printed at the end of a run: the traffic, the flows the agent saw by
/// workload pair, the policies written, the verification and the enforcement.
pub(super) fn summary(model: &LabModel, report: &LabReport) -> String {
    let mut s = String::new();
    traffic_summary(&mut s, model, report);
    flows_summary(&mut s, model, report);
    recommended_summary(&mut s, report);
    if let Some(probes) = &report.enforced {
        enforcement_summary(&mut s, model, report, probes);
    }
    rotation_summary(&mut s, report);
    drift_summary(&mut s, report);
    if let Some(c) = &report.prometheus {
        prometheus_summary(&mut s, c);
    }
    let _ = writeln!(s, "\nwritten:");
    for f in &report.files {
        let _ = writeln!(s, "  {}", f.display());
    }
    let _ = writeln!(
        s,
        "\nresult: {}",
        if report.ok() {
            "every probe as expected"
        } else {
            "SOME PROBES NOT AS EXPECTED"
        }
    );
    s
}

/// The lab's line, then the traffic entries: per entry, the connections that got through and
/// the flows the agents reported.
fn traffic_summary(s: &mut String, model: &LabModel, report: &LabReport) {
    let nodes: Vec<String> = model
        .nodes
        .iter()
        .map(|n| format!("{} ({} pods)", n.name, n.pods.len()))
        .collect();
    let _ = writeln!(
        s,
        "lab {} (run {}): {} pods on {} {}, {} services, {} external subnets",
        model.name,
        report.run_id,
        model.pods.len(),
        if nodes.len() == 1 { "node" } else { "nodes" },
        nodes.join(", "),
        model.services.len(),
        model.externals.len()
    );
    let _ = writeln!(s, "\ntraffic:");
    let _ = writeln!(
        s,
        "  {:<24} {:<24} {:<10} {:>5} {:>5}  result",
        "from", "to", "port", "ok", "flows"
    );
    let mut flows_seen = report.coverage.entries.iter().map(|e| e.1);
    for r in &report.learning {
        let _ = writeln!(
            s,
            "  {:<24} {:<24} {:<10} {:>5} {:>5}  {}{}",
            r.from,
            r.to,
            format!("{}/{}", r.port, r.protocol),
            format!("{}/{}", r.succeeded, r.connections),
            flows_seen.next().unwrap_or(0),
            outcome(r.observed),
            r.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
}

/// The flows the agents saw, by workload pair, with the destinations reached by name and the
/// traffic entries whose flows are missing.
fn flows_summary(s: &mut String, model: &LabModel, report: &LabReport) {
    let _ = writeln!(
        s,
        "\nflows seen by the {} ({} flows, {} DNS lookups, {} unexpected{}):",
        if model.nodes.len() == 1 {
            "agent"
        } else {
            "agents"
        },
        report.flows.len(),
        report.coverage.dns,
        report.coverage.unexpected.len(),
        match report.flows.iter().filter(|f| !f.counted).count() {
            0 => String::new(),
            n => format!("; {n} are the other node's uncounted view of a cross-node connection"),
        }
    );
    s.push_str(&expect::flow_table(&report.flows));
    for line in expect::named_destinations(&report.flows) {
        let _ = writeln!(s, "  by name: {line}");
    }
    for m in &report.missing {
        let _ = writeln!(s, "  MISSING {m}");
    }
}

/// The recommended policies (names, notes) and their verification against the flows.
fn recommended_summary(s: &mut String, report: &LabReport) {
    let _ = writeln!(
        s,
        "\nrecommended policies ({}):",
        report.recommended.policies.len()
    );
    let names: Vec<String> = report
        .recommended
        .policies
        .iter()
        .map(policy_name)
        .collect();
    for chunk in names.chunks(4) {
        let _ = writeln!(s, "  {}", chunk.join("  "));
    }
    for n in &report.recommended.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    let v = &report.verify;
    let _ = writeln!(
        s,
        "\nverification: {} of {} observed flows allowed by the recommended policies{}",
        v.flows - v.denied_flows,
        v.flows,
        if v.is_clean() { "" } else { " — SOME DENIED" }
    );
    for d in &v.denied {
        let _ = writeln!(
            s,
            "  DENIED {} -> {}:{}",
            d.src,
            d.dst,
            d.port.map(|p| p.to_string()).unwrap_or_default()
        );
    }
}

/// The enforcement `probes` (`--enforce`): per probe, what was expected and observed, the
/// drop and the policy the agents reported.
fn enforcement_summary(
    s: &mut String,
    model: &LabModel,
    report: &LabReport,
    probes: &[EnforceProbe],
) {
    let off: Vec<&str> = model
        .nodes
        .iter()
        .filter(|n| !n.enforce)
        .map(|n| n.name.as_str())
        .collect();
    let _ = writeln!(
        s,
        "\nenforcement ({}{}):",
        report.enforced_policies.as_deref().unwrap_or_default(),
        match off.is_empty() {
            true => String::new(),
            false => format!("; not enforced on {} (scenario)", off.join(", ")),
        }
    );
    let _ = writeln!(
        s,
        "  {:<9} {:<20} {:<24} {:<9} {:<8} {:<8} {:<8} {:<15} policy",
        "kind", "from", "to", "port", "expected", "observed", "result", "drop reason"
    );
    for p in probes {
        let _ = writeln!(
            s,
            "  {:<9} {:<20} {:<24} {:<9} {:<8} {:<8} {:<8} {:<15} {}",
            format!("{:?}", p.kind).to_lowercase(),
            p.from,
            p.to,
            format!("{}/{}", p.port, p.protocol),
            seen(p.expected),
            seen(p.observed),
            match (p.ok(), &p.unenforced) {
                (true, _) => "ok",
                (false, Some(_)) => "UNENFORCED",
                (false, None) => "MISMATCH",
            },
            p.drop_reason.as_deref().unwrap_or("-"),
            match &p.unenforced {
                Some(policies) => format!("not enforced: {policies}"),
                None => p.policy.clone().unwrap_or_else(|| "-".to_owned()),
            },
        );
    }
}

/// The dependencies the agents reported as drift, if any.
fn drift_summary(s: &mut String, report: &LabReport) {
    if report.drift.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\ndrift (dependencies outside the learning phase's baseline, drift.json):"
    );
    for d in &report.drift {
        let _ = writeln!(
            s,
            "  {:<8} {:<20} {:<24} {:<9} {:<15} {} flow(s)",
            d.node, d.src, d.dst, d.port, d.kind, d.flows
        );
    }
}

/// `recommend --prometheus` against `recommend --agent` (with Prometheus).
fn prometheus_summary(s: &mut String, c: &Comparison) {
    let _ = writeln!(
        s,
        "\nprometheus ({} in {}): recommend --prometheus {} recommend --agent ({} and {} policies){}",
        c.url,
        c.netns,
        if c.equal { "==" } else { "!=" },
        c.prometheus.len(),
        c.agent.len(),
        if c.equal {
            String::new()
        } else {
            format!(" — DIFFERENT: {}", c.differing.join(", "))
        }
    );
    for n in &c.notes {
        let _ = writeln!(s, "  note: {n}");
    }
}

/// The rotation steps: where the names moved, and per traffic entry run again the answer,
/// the drop and the rotations the agents counted (before the connection, and in all).
fn rotation_summary(s: &mut String, report: &LabReport) {
    for r in &report.rotations {
        let _ = writeln!(
            s,
            "\ndns rotation (rotation.json): {} of {} moved {} -> {} ({}; ttl {} s)",
            r.names.join(", "),
            r.external,
            r.from_address,
            r.to_address,
            r.to_external,
            r.ttl
        );
        let _ = writeln!(
            s,
            "  {:<20} {:<24} {:<9} {:<15} {:<8} {:<8} {:<15} {:<36} rotations counted",
            "from", "to", "port", "answered", "observed", "result", "drop reason", "policy"
        );
        for p in &r.probes {
            let _ = writeln!(
                s,
                "  {:<20} {:<24} {:<9} {:<15} {:<8} {:<8} {:<15} {:<36} {} of {} expected, {} before connecting",
                p.from,
                p.to,
                format!("{}/{}", p.port, p.protocol),
                p.answered
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                seen(p.observed),
                if p.ok(r.to_address) { "ok" } else { "MISMATCH" },
                p.drop_reason.as_deref().unwrap_or("-"),
                p.policy.as_deref().unwrap_or("-"),
                p.alerts,
                p.expected_alerts,
                p.alerts_before_connect,
            );
            for series in &p.alert_series {
                let _ = writeln!(s, "    counted: {series}");
            }
            if let Some(e) = p.error.as_deref().filter(|_| !p.ok(r.to_address)) {
                let _ = writeln!(s, "    error: {e}");
            }
        }
        if r.probes.is_empty() {
            let _ = writeln!(
                s,
                "  MISMATCH no traffic entry from a pod to {}: nothing ran after the move",
                r.names.join(", ")
            );
        }
    }
}

/// What `--keep-running` prints before waiting: how to reach the lab's Prometheus.
fn keep_running_hint(report: &LabReport, running: &run::Running, out: &std::path::Path) -> String {
    let mut s = format!("\nthe lab (run {}) keeps running", report.run_id);
    let urls: Vec<String> = running
        .agents()
        .each()
        .iter()
        .map(|a| format!("http://{}", a.listen()))
        .collect();
    let _ = write!(
        s,
        "; its agents ({}), from the first node's namespace:\n  \
         ip netns exec {ns} netpol-observe recommend --agent {} --inventory {inv} --subnets {sub}\n",
        running
            .agents()
            .each()
            .iter()
            .map(|a| format!("{} on {}", a.node(), a.listen()))
            .collect::<Vec<_>>()
            .join(", "),
        urls.join(" "),
        ns = running.first_node_netns(),
        inv = out.join("inventory.yaml").display(),
        sub = out.join("subnets.yaml").display(),
    );
    match running.prometheus() {
        Some(p) => {
            let addr = crate::lab::prometheus::PROMETHEUS_LISTEN;
            let _ = write!(
                s,
                "Prometheus inside the first node's namespace:\n  \
                 ip netns exec {ns} curl -s 'http://{addr}/api/v1/query?query=netpol_observe_flows_total'\n  \
                 in a browser: socat TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr \
                 EXEC:'ip netns exec {ns} socat STDIO TCP:{addr}' then http://localhost:{port}/\n",
                ns = p.netns(),
                port = addr.port(),
            );
        }
        None => s.push_str("(no Prometheus)\n"),
    }
    s.push_str("press Ctrl-C to remove it\n");
    s
}
