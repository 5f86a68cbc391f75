//! `netpol-observe agent`: the node agent (see [`crate::agent`]).
//!
//! Configuration: defaults, then `--config FILE` (YAML, camelCase names), then environment
//! variables (`NETPOL_OBSERVE_*`, `NODE_NAME`) and flags. On SIGINT, SIGTERM, SIGHUP, SIGQUIT
//! or after `--duration` it sweeps a last time, detaches, prints the flows it saw (`--output`)
//! and exits 0.

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;

use super::out::OutputError;
use crate::{
    agent::{Agent, AgentConfig, config::ApiAuth},
    datapath::{AttachMode, DropScope},
    flow::jsonl,
};

/// Output format of the flows printed at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table for people.
    Table,
    /// One JSON line per flow: the flow record with its `verdict` (and `staged_verdict`).
    Jsonl,
    /// Nothing.
    None,
}

/// Arguments of `netpol-observe agent`. Unset flags take the configuration file's value, else
/// the default shown.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe agent                                   # in-cluster (DaemonSet)
  netpol-observe agent --listen 0.0.0.0:9965 --api-token-audiences netpol-observe   # as the DaemonSet
  netpol-observe agent --inventory cluster.yaml --subnets subnets.yaml  # standalone, API on 127.0.0.1:9965
  netpol-observe agent --inventory cluster/ --staged-policies drafts/   # what would the drafts block?
  netpol-observe agent --duration 30 --output jsonl > flows.jsonl
  netpol-observe agent --inventory cluster/ --drift-baseline baseline.jsonl --drift-learn 168h   # learn a week, then report new dependencies
  netpol-observe agent --interfaces 'veth*' 'cali*' --exclude 'veth-infra*'

Every flag has an environment variable (NETPOL_OBSERVE_<FLAG>, NODE_NAME for --node-name;
lists comma-separated, but --interfaces/--exclude take one glob there: '{veth*,cali*}'), and every setting of the agent (not --output and --duration, which are
about this run) a key in the --config file (camelCase: listen, inventory, stagedPolicies,
interfaces, flowMapCapacity, dropReasons, dropScope, enforcementGrace, driftBaseline, driftLearn,
apiAuth, apiTokenAudiences, metrics.seriesBudget, ...).

/metrics, /healthz and /readyz are open to whoever reaches --listen; /api/v1 needs, with
--api-auth kubernetes, `Authorization: Bearer <token>` of a user or ServiceAccount allowed `get`
on flows.netpol-observe.io (also for /api/v1/drift; recommendations.netpol-observe.io for
/api/v1/recommendations),
e.g. through the ClusterRole netpol-observe-reader (deploy/README.md).")]
pub struct Args {
    /// YAML configuration file (flags and environment variables override it).
    #[arg(long, env = "NETPOL_OBSERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP listen address for /metrics, /healthz, /readyz and /api/v1 [default: 127.0.0.1:9965].
    #[arg(long, env = "NETPOL_OBSERVE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Who may read /api/v1 (flows, recommendations): `kubernetes` (bearer token checked by the
    /// API server's TokenReview and SubjectAccessReview: `get` on flows.netpol-observe.io or
    /// recommendations.netpol-observe.io) or `none` [default: kubernetes in-cluster, none with
    /// --inventory]. /metrics, /healthz and /readyz are always open.
    #[arg(long, env = "NETPOL_OBSERVE_API_AUTH", value_name = "MODE")]
    pub api_auth: Option<ApiAuth>,
    /// Allow `--api-auth none` on an address other than loopback (anyone who reaches the port
    /// reads every flow of the node).
    #[arg(long, env = "NETPOL_OBSERVE_ALLOW_UNAUTHENTICATED_REMOTE_API")]
    pub allow_unauthenticated_remote_api: bool,
    /// With `--api-auth kubernetes`: audiences a token must be valid for (e.g. netpol-observe,
    /// for `kubectl create token --audience netpol-observe`) [default: the API server's].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_API_TOKEN_AUDIENCES",
        num_args = 1..,
        value_delimiter = ',',
        value_name = "AUDIENCE"
    )]
    pub api_token_audiences: Vec<String>,
    /// Standalone mode: Kubernetes objects (file or directory), reloaded when they change
    /// [default: in-cluster, from the API server].
    #[arg(long, env = "NETPOL_OBSERVE_INVENTORY", value_name = "PATH")]
    pub inventory: Option<PathBuf>,
    /// In-cluster mode from outside a pod: this kubeconfig instead of the pod's ServiceAccount
    /// [default: $KUBECONFIG, else the in-cluster identity, else ~/.kube/config].
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Unknown fields in --inventory and --staged-policies files: strict (an error naming the
    /// field, as kubectl --validate=strict), warn or ignore (files from a newer Kubernetes)
    /// [default: strict].
    #[arg(long, env = "NETPOL_OBSERVE_VALIDATE", value_enum, value_name = "MODE")]
    pub validate: Option<crate::inventory::Validation>,
    /// Named subnets outside the cluster: YAML `name: CIDR` or `name: [CIDRs]`.
    #[arg(long, env = "NETPOL_OBSERVE_SUBNETS", value_name = "FILE")]
    pub subnets: Option<PathBuf>,
    /// Draft NetworkPolicies (file or directory): every flow is also judged against them
    /// (`netpol_observe_staged_verdicts_total`).
    #[arg(long, env = "NETPOL_OBSERVE_STAGED_POLICIES", value_name = "PATH")]
    pub staged_policies: Option<PathBuf>,
    /// Interfaces to attach to (glob patterns) [default: veth* cali* lxc* azv* eni* gke*].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_INTERFACES",
        num_args = 1..,
        value_name = "PATTERN"
    )]
    pub interfaces: Vec<String>,
    /// Interfaces never attached (glob patterns) [default: cilium_* lo].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_EXCLUDE",
        num_args = 1..,
        value_name = "PATTERN"
    )]
    pub exclude: Vec<String>,
    /// Label sets per flow-labelled metric family before the `other` bucket [default: 2000].
    #[arg(long, env = "NETPOL_OBSERVE_METRICS_SERIES_BUDGET", value_name = "N")]
    pub metrics_series_budget: Option<usize>,
    /// Add src_pod/dst_pod labels to the flow metrics (high cardinality).
    #[arg(long, env = "NETPOL_OBSERVE_METRICS_POD_LEVEL")]
    pub metrics_pod_level: bool,
    /// This node's name (from the downward API) [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Capacity of the kernel flow map [default: 65536].
    #[arg(
        long,
        alias = "flow-capacity",
        env = "NETPOL_OBSERVE_FLOW_MAP_CAPACITY"
    )]
    pub flow_map_capacity: Option<u32>,
    /// Seconds between sweeps of the flow map [default: 5].
    #[arg(long, env = "NETPOL_OBSERVE_SWEEP_INTERVAL", value_name = "SECS")]
    pub sweep_interval: Option<u64>,
    /// Seconds between checks of the inventory files for changes [default: 2].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_INVENTORY_POLL_INTERVAL",
        value_name = "SECS"
    )]
    pub inventory_poll_interval: Option<u64>,
    /// Record kernel drops (`--drops=false` on kernels without BTF) [default: true].
    #[arg(long, env = "NETPOL_OBSERVE_DROPS", value_name = "BOOL")]
    pub drops: Option<bool>,
    /// Drop reasons counted (kernel `enum skb_drop_reason` names without `SKB_DROP_REASON_`)
    /// [default: NETFILTER_DROP TC_INGRESS TC_EGRESS TC_DROP BPF_CGROUP_INGRESS
    /// BPF_CGROUP_EGRESS SOCKET_FILTER NO_SOCKET IP_RPFILTER XFRM_POLICY].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DROP_REASONS",
        num_args = 1..,
        value_delimiter = ',',
        value_name = "REASON"
    )]
    pub drop_reasons: Vec<String>,
    /// Which drops are recorded. kernel: every drop of the node's kernel (a real node;
    /// default). netns: only drops whose device is in the agent's network namespace (several
    /// simulated nodes on one kernel, as `netpol-observe lab` runs them).
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DROP_SCOPE",
        value_enum,
        value_name = "SCOPE",
        hide_possible_values = true
    )]
    pub drop_scope: Option<DropScope>,
    /// Flows kept for /api/v1/flows [default: 100000].
    #[arg(long, env = "NETPOL_OBSERVE_MAX_FLOWS", value_name = "N")]
    pub max_flows: Option<usize>,
    /// Seconds an ended flow stays in /api/v1/flows [default: 600].
    #[arg(long, env = "NETPOL_OBSERVE_FLOW_RETENTION", value_name = "SECONDS")]
    pub flow_retention: Option<u64>,
    /// The enforcement check (netpol_observe_unenforced_flows_total: denied flows that were
    /// delivered) judges only flows first seen at least this long after the NetworkPolicy set
    /// in force last changed; 0s judges every flow [default: 10s].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_ENFORCEMENT_GRACE",
        value_name = "DURATION",
        value_parser = crate::agent::config::parse_enforcement_grace
    )]
    pub enforcement_grace: Option<jiff::SignedDuration>,
    /// Drift baseline, JSON lines of edges (workload pair, port, protocol; see `netpol-observe
    /// baseline`): counted flows outside it count in netpol_observe_drift_flows_total{kind} and
    /// are listed on /api/v1/drift. A missing file is an empty baseline; the file is reloaded
    /// when it changes. Unset: no drift detection.
    #[arg(long, env = "NETPOL_OBSERVE_DRIFT_BASELINE", value_name = "PATH")]
    pub drift_baseline: Option<PathBuf>,
    /// Learn for this long when the baseline is empty (missing file, no edge): every new edge
    /// joins it and is written to the file; a restarted agent resumes the period the file
    /// records. 0s never learns [default: 0s].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DRIFT_LEARN",
        value_name = "DURATION",
        value_parser = crate::agent::config::parse_drift_learn
    )]
    pub drift_learn: Option<jiff::SignedDuration>,
    /// Forward the eBPF programs' debug log to the agent's log.
    #[arg(long, env = "NETPOL_OBSERVE_EBPF_LOG")]
    pub ebpf_log: bool,
    /// Capture the DNS answers the pods receive (packets from port 53) to name their flows'
    /// destinations (dst.dns_names) and count rotations of the names policies allow
    /// [default: true].
    #[arg(long, env = "NETPOL_OBSERVE_DNS_CAPTURE", value_name = "BOOL")]
    pub dns_capture: Option<bool>,
    /// How long after a DNS record's TTL its names still name flows (clients keep using an
    /// address a while), at most 24h [default: 5m].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DNS_GRACE",
        value_name = "DURATION",
        value_parser = crate::agent::dns::parse_dns_grace
    )]
    pub dns_grace: Option<jiff::SignedDuration>,
    /// How the programs are attached: tcx or clsact [default: tcx on kernels ≥ 6.6, clsact
    /// before].
    #[arg(long, env = "NETPOL_OBSERVE_ATTACH_MODE", value_name = "MODE")]
    pub attach_mode: Option<AttachMode>,
    /// Output format of the flows printed at the end (as kubectl's `-o`).
    #[arg(
        short = 'o',
        long,
        env = "NETPOL_OBSERVE_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: Output,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, env = "NETPOL_OBSERVE_DURATION", value_name = "SECS")]
    pub duration: Option<u64>,
}

impl Args {
    /// The configuration: defaults, then the file, then flags and environment variables.
    pub fn resolve(&self) -> anyhow::Result<AgentConfig> {
        let mut c = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.api_auth {
            c.api_auth = Some(v);
        }
        if self.allow_unauthenticated_remote_api {
            c.allow_unauthenticated_remote_api = true;
        }
        if !self.api_token_audiences.is_empty() {
            c.api_token_audiences = self.api_token_audiences.clone();
        }
        if let Some(v) = &self.inventory {
            c.inventory = Some(v.clone());
        }
        if let Some(v) = &self.kubeconfig {
            c.kubeconfig = Some(v.clone());
        }
        if let Some(v) = self.validate {
            c.validate = v;
        }
        if let Some(v) = &self.subnets {
            c.subnets = Some(v.clone());
        }
        if let Some(v) = &self.staged_policies {
            c.staged_policies = Some(v.clone());
        }
        if !self.interfaces.is_empty() {
            c.interfaces = self.interfaces.clone();
        }
        if !self.exclude.is_empty() {
            c.exclude = self.exclude.clone();
        }
        if let Some(v) = self.metrics_series_budget {
            c.metrics.series_budget = v;
        }
        if self.metrics_pod_level {
            c.metrics.pod_level = true;
        }
        if let Some(v) = &self.node_name {
            c.node_name = Some(v.clone());
        }
        if let Some(v) = self.flow_map_capacity {
            c.flow_map_capacity = v;
        }
        if let Some(v) = self.sweep_interval {
            c.sweep_interval = v;
        }
        if let Some(v) = self.inventory_poll_interval {
            c.inventory_poll_interval = v;
        }
        if let Some(v) = self.drops {
            c.drops = v;
        }
        if !self.drop_reasons.is_empty() {
            c.drop_reasons = self.drop_reasons.clone();
        }
        if let Some(v) = self.drop_scope {
            c.drop_scope = v;
        }
        if let Some(v) = self.max_flows {
            c.max_flows = v;
        }
        if let Some(v) = self.flow_retention {
            c.flow_retention = v;
        }
        if let Some(v) = self.enforcement_grace {
            c.enforcement_grace = v;
        }
        if let Some(v) = &self.drift_baseline {
            c.drift_baseline = Some(v.clone());
        }
        if let Some(v) = self.drift_learn {
            c.drift_learn = v;
        }
        if self.ebpf_log {
            c.ebpf_log = true;
        }
        if let Some(v) = self.attach_mode {
            c.attach_mode = Some(v);
        }
        if let Some(v) = self.dns_capture {
            c.dns_capture = v;
        }
        if let Some(v) = self.dns_grace {
            c.dns_grace = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs `netpol-observe agent`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.resolve()?;
    // Every signal that ends a process by default ends the agent cleanly: a last sweep, the
    // programs detached, the final flows written (SIGKILL cannot be caught).
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = Vec::new();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::quit(), "SIGQUIT"),
    ] {
        let s = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        signals.push((s, name));
    }
    let duration = args.duration;
    let stop = async move {
        let until = async {
            match duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let any_signal = futures::future::select_all(
            signals
                .iter_mut()
                .map(|(s, name)| Box::pin(async move { s.recv().await.map(|_| *name) })),
        );
        tokio::select! {
            (name, _, _) = any_signal => tracing::info!("{}: stopping", name.unwrap_or("signal")),
            _ = until => tracing::info!("duration elapsed: stopping"),
        }
    };
    let flows = Agent::run(config, stop).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::None => {}
        Output::Table => {
            out.write_all(super::flows::observed_table(flows).as_bytes())
                .map_err(OutputError::from)?;
        }
        Output::Jsonl => {
            for f in &flows {
                jsonl::write_line(&mut out, f).map_err(OutputError::from)?;
            }
        }
    }
    out.flush().map_err(OutputError::from)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    /// `--help` says every flag has an environment variable: it does.
    #[test]
    fn every_flag_has_an_environment_variable() {
        let cmd = <super::Args as clap::Args>::augment_args(clap::Command::new("agent"));
        let missing: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_env().is_none())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "flags without environment variable: {missing:?}"
        );
    }

    /// List flags take a comma-separated value (as their environment variables do) as well as
    /// several values; interface patterns keep their commas (glob alternatives).
    #[test]
    fn list_flags_split_on_commas_but_globs_keep_theirs() {
        let cli = Cli::try_parse_from([
            "netpol-observe",
            "agent",
            "--drop-reasons",
            "NETFILTER_DROP,TC_INGRESS",
            "--exclude",
            "{veth-infra*,lo}",
            "--interfaces",
            "veth*",
            "cali*",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not the agent command")
        };
        assert_eq!(args.drop_reasons, ["NETFILTER_DROP", "TC_INGRESS"]);
        assert_eq!(args.exclude, ["{veth-infra*,lo}"]);
        assert_eq!(args.interfaces, ["veth*", "cali*"]);
    }

    fn resolve(args: &[&str]) -> anyhow::Result<crate::agent::AgentConfig> {
        let cli = Cli::try_parse_from(["netpol-observe", "agent"].iter().chain(args))?;
        match cli.command {
            Command::Agent(a) => a.resolve(),
            other => panic!("{other:?}"),
        }
    }

    /// `--enforcement-grace` overrides the configuration's `enforcementGrace` (default 10s);
    /// `0s` is allowed, a negative or malformed duration is refused.
    #[test]
    fn enforcement_grace_flag() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.enforcement_grace, jiff::SignedDuration::from_secs(10));
        let c = resolve(&["--enforcement-grace", "45s"]).unwrap();
        assert_eq!(c.enforcement_grace, jiff::SignedDuration::from_secs(45));
        let c = resolve(&["--enforcement-grace", "0s"]).unwrap();
        assert_eq!(c.enforcement_grace, jiff::SignedDuration::ZERO);
        for bad in ["-1s", "later", "2d"] {
            let err = resolve(&[&format!("--enforcement-grace={bad}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("enforcement-grace"), "{bad}: {err}");
        }
    }
}
