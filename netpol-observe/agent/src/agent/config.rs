//! The agent's configuration, defined once: [`AgentConfig`] is at the same time the `agent`
//! command's flags (with their environment variables), the `--config` YAML file's keys
//! (camelCase, `seriesBudget` under `metrics`, exactly as
//! `deploy/kubernetes/base/configmap.yaml` writes it) and the typed value the agent runs
//! with. Layers: defaults, then the file, then environment variables and flags
//! ([`ConfigOverrides`]), the later overriding the earlier. Unknown keys are errors; durations
//! are typed (`10s`, `2m`, `1m30s`, `7d`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{ArgAction, FromArgMatches};
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use crate::inventory::Validation;

use crate::{
    datapath::{AttachMode, DEFAULT_EXCLUDE, DEFAULT_INCLUDE, DatapathConfig, DropScope},
    metrics::{DEFAULT_SERIES_BUDGET, MetricsConfig},
};

/// The largest kernel flow map the agent asks for (16 Mi entries).
pub(crate) const MAX_FLOW_MAP_CAPACITY: u32 = 1 << 24;

/// Default listen address of the HTTP API: loopback only. The DaemonSet listens on every
/// address (`--listen=0.0.0.0:9965`) with `/api/v1` behind Kubernetes authentication.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9965";

/// Drop reasons recorded by default: the ones a policy or filter decides (names of the
/// kernel's `enum skb_drop_reason` without the `SKB_DROP_REASON_` prefix). Names the running
/// kernel does not have are skipped with a warning; ordinary socket teardown
/// (`NOT_SPECIFIED`, `TCP_CLOSE`, …) is never a drop here.
pub const DEFAULT_DROP_REASONS: &[&str] = &[
    "NETFILTER_DROP",
    "TC_INGRESS",
    "TC_EGRESS",
    "TC_DROP",
    "BPF_CGROUP_INGRESS",
    "BPF_CGROUP_EGRESS",
    "SOCKET_FILTER",
    "NO_SOCKET",
    "IP_RPFILTER",
    "XFRM_POLICY",
];

const DAY: SignedDuration = SignedDuration::from_hours(24);

/// Parses a duration setting: `10s`, `2m`, `1m30s`, `500ms`, `7d` (24-hour days) or ISO 8601
/// (`PT10S`, `P7D`). A bare number is refused: its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let text = s.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{s:?} has no unit: write {text}s, {text}m or {text}h"
        ));
    }
    text.parse::<SignedDuration>().or_else(|e| {
        // `7d` / `P7D`: a calendar span of days, taken as 24-hour days.
        text.parse::<jiff::Span>()
            .ok()
            .and_then(|span| {
                span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                    .ok()
            })
            .ok_or_else(|| format!("{s:?} is not a duration like 10s, 2m, 1m30s or 7d: {e}"))
    })
}

/// A duration setting, typed: flags, environment variables and the file all write it as
/// [`parse_duration`] reads it (`10s`, `2m`, `1m30s`, `7d`, `PT10S`; a YAML number is read as
/// its text, so a bare `10` is refused for its missing unit), and it is written back in
/// jiff's friendly form (`1m 30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSetting(pub SignedDuration);

impl DurationSetting {
    /// No time.
    pub const ZERO: DurationSetting = DurationSetting(SignedDuration::ZERO);

    /// `secs` seconds.
    pub const fn from_secs(secs: i64) -> DurationSetting {
        DurationSetting(SignedDuration::from_secs(secs))
    }

    /// `mins` minutes.
    pub const fn from_mins(mins: i64) -> DurationSetting {
        DurationSetting(SignedDuration::from_mins(mins))
    }

    /// The duration.
    pub const fn get(self) -> SignedDuration {
        self.0
    }

    /// The duration as a `std` one (settings are never negative: [`AgentConfig::validate`]).
    pub fn unsigned(self) -> std::time::Duration {
        self.0.unsigned_abs()
    }
}

impl From<SignedDuration> for DurationSetting {
    fn from(d: SignedDuration) -> Self {
        DurationSetting(d)
    }
}

impl std::str::FromStr for DurationSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(DurationSetting)
    }
}

impl std::fmt::Display for DurationSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl Serialize for DurationSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Text(String),
            Number(serde_json::Number),
        }
        let text = match Text::deserialize(d)? {
            Text::Text(t) => t,
            Text::Number(n) => n.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Errors of the agent configuration: each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("invalid configuration file {path}: field `{field}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Path of the field at fault (`metrics.seriesBudget`), `.` for the whole document.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A setting has an unusable value.
    #[error(
        "invalid setting --{setting} (file key {}): {message}",
        file_key(setting)
    )]
    Invalid {
        /// The setting (flag name without dashes).
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A flag or environment variable could not be applied.
    #[error("applying the flags and environment variables")]
    Flags(#[source] clap::Error),
}

/// The file key of a flag: `metrics-series-budget` → `metrics.seriesBudget`,
/// `flow-map-capacity` → `flowMapCapacity`.
fn file_key(flag: &str) -> String {
    let (prefix, rest) = match flag.strip_prefix("metrics-") {
        Some(rest) => ("metrics.", rest),
        None => ("", flag),
    };
    let mut key = String::from(prefix);
    let mut upper = false;
    for c in rest.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            key.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            key.push(c);
        }
    }
    key
}

/// How `/api/v1` is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApiAuth {
    /// Everyone who reaches the port (loopback only, unless explicitly allowed).
    None,
    /// A bearer token, authenticated (TokenReview) and authorised (SubjectAccessReview) by the
    /// Kubernetes API server.
    Kubernetes,
}

impl std::fmt::Display for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiAuth::None => "none",
            ApiAuth::Kubernetes => "kubernetes",
        })
    }
}

/// Metric settings of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSettings {
    /// Label sets per flow-labelled metric family before the `other` bucket [default: 2000].
    #[arg(
        id = "metrics_series_budget",
        long = "metrics-series-budget",
        env = "NETPOL_OBSERVE_METRICS_SERIES_BUDGET",
        value_name = "N",
        required = false
    )]
    pub series_budget: usize,
    /// Add src_pod/dst_pod labels to the flow metrics (high cardinality) [default: false].
    #[arg(
        id = "metrics_pod_level",
        long = "metrics-pod-level",
        env = "NETPOL_OBSERVE_METRICS_POD_LEVEL",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL",
        required = false
    )]
    pub pod_level: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            series_budget: DEFAULT_SERIES_BUDGET,
            pod_level: false,
        }
    }
}

/// Everything the agent can be told, in the order `--help` shows it. Every field is a flag
/// (with an environment variable, `NETPOL_OBSERVE_<FLAG>`), a key of the `--config` file and
/// has the default [`AgentConfig::default`] gives (shown as `[default: …]`). No flag has a
/// clap default: an unset flag leaves the file's value ([`ConfigOverrides`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// HTTP listen address for /metrics, /healthz, /readyz and /api/v1 [default: 127.0.0.1:9965].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_LISTEN",
        value_name = "ADDR",
        required = false
    )]
    pub listen: SocketAddr,
    /// Who may read /api/v1 (flows, recommendations): `kubernetes` (bearer token checked by the
    /// API server's TokenReview and SubjectAccessReview: `get` on flows.netpol-observe.io or
    /// recommendations.netpol-observe.io) or `none` [default: kubernetes in-cluster, none with
    /// --inventory]. /metrics, /healthz and /readyz are always open.
    #[arg(long, env = "NETPOL_OBSERVE_API_AUTH", value_name = "MODE")]
    pub api_auth: Option<ApiAuth>,
    /// Allow `--api-auth none` on an address other than loopback (anyone who reaches the port
    /// reads every flow of the node) [default: false].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_ALLOW_UNAUTHENTICATED_REMOTE_API",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL",
        required = false
    )]
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
    #[arg(
        long,
        env = "NETPOL_OBSERVE_VALIDATE",
        value_enum,
        value_name = "MODE",
        required = false
    )]
    pub validate: Validation,
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
    /// Metric labelling.
    #[command(flatten)]
    pub metrics: MetricsSettings,
    /// This node's name (from the downward API) [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Capacity of the kernel flow map [default: 65536].
    #[arg(
        long,
        alias = "flow-capacity",
        env = "NETPOL_OBSERVE_FLOW_MAP_CAPACITY",
        value_name = "N",
        required = false
    )]
    pub flow_map_capacity: u32,
    /// Time between sweeps of the flow map [default: 5s].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_SWEEP_INTERVAL",
        value_name = "DURATION",
        required = false
    )]
    pub sweep_interval: DurationSetting,
    /// Time between checks of the inventory files (and the drift baseline) for changes
    /// [default: 2s].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_INVENTORY_POLL_INTERVAL",
        value_name = "DURATION",
        required = false
    )]
    pub inventory_poll_interval: DurationSetting,
    /// Record kernel drops (`--drops=false` on kernels without BTF) [default: true].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DROPS",
        action = ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL",
        required = false
    )]
    pub drops: bool,
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
        hide_possible_values = true,
        required = false
    )]
    pub drop_scope: DropScope,
    /// Flows kept for /api/v1/flows; the oldest ended flows go first [default: 100000].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_MAX_FLOWS",
        value_name = "N",
        required = false
    )]
    pub max_flows: usize,
    /// How long an ended flow stays in /api/v1/flows [default: 10m].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_FLOW_RETENTION",
        value_name = "DURATION",
        required = false
    )]
    pub flow_retention: DurationSetting,
    /// The enforcement check (netpol_observe_unenforced_flows_total: denied flows that were
    /// delivered) judges only flows first seen at least this long after the NetworkPolicy set
    /// in force last changed (the CNI's time to program a change); 0s judges every flow, at
    /// most 24h [default: 10s].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_ENFORCEMENT_GRACE",
        value_name = "DURATION",
        required = false
    )]
    pub enforcement_grace: DurationSetting,
    /// Drift baseline, JSON lines of edges (workload pair, port, protocol; see `netpol-observe
    /// baseline`): counted flows outside it count in netpol_observe_drift_flows_total{kind} and
    /// are listed on /api/v1/drift. A missing file is an empty baseline; the file is reloaded
    /// when it changes. Unset: no drift detection.
    #[arg(long, env = "NETPOL_OBSERVE_DRIFT_BASELINE", value_name = "PATH")]
    pub drift_baseline: Option<PathBuf>,
    /// Learn for this long when the baseline is empty (missing file, no edge): every new edge
    /// joins it and is written to the file; a restarted agent resumes the period the file
    /// records. 0s never learns; at most 366 days [default: 0s].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DRIFT_LEARN",
        value_name = "DURATION",
        required = false
    )]
    pub drift_learn: DurationSetting,
    /// Forward the eBPF programs' debug log to the agent's log [default: false].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_EBPF_LOG",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL",
        required = false
    )]
    pub ebpf_log: bool,
    /// Capture the DNS answers the pods receive (packets from port 53) to name their flows'
    /// destinations (dst.dns_names) and count rotations of the names policies allow
    /// [default: true].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DNS_CAPTURE",
        action = ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL",
        required = false
    )]
    pub dns_capture: bool,
    /// How long after a DNS record's TTL its names still name flows (clients keep using an
    /// address a while), at most 24h [default: 5m].
    #[arg(
        long,
        env = "NETPOL_OBSERVE_DNS_GRACE",
        value_name = "DURATION",
        required = false
    )]
    pub dns_grace: DurationSetting,
    /// How the programs are attached: tcx or clsact [default: tcx on kernels ≥ 6.6, clsact
    /// before].
    #[arg(long, env = "NETPOL_OBSERVE_ATTACH_MODE", value_name = "MODE")]
    pub attach_mode: Option<AttachMode>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9965)),
            api_auth: None,
            allow_unauthenticated_remote_api: false,
            api_token_audiences: Vec::new(),
            inventory: None,
            kubeconfig: None,
            validate: Validation::Strict,
            subnets: None,
            staged_policies: None,
            interfaces: DEFAULT_INCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            exclude: DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            metrics: MetricsSettings::default(),
            node_name: None,
            flow_map_capacity: netpol_observe_ebpf::DEFAULT_FLOW_CAPACITY,
            sweep_interval: DurationSetting::from_secs(5),
            inventory_poll_interval: DurationSetting::from_secs(2),
            drops: true,
            drop_reasons: DEFAULT_DROP_REASONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            drop_scope: DropScope::Kernel,
            max_flows: 100_000,
            flow_retention: DurationSetting::from_mins(10),
            enforcement_grace: DurationSetting::from_secs(10),
            drift_baseline: None,
            drift_learn: DurationSetting::ZERO,
            ebpf_log: false,
            dns_capture: true,
            dns_grace: DurationSetting::from_secs(super::dns::DEFAULT_DNS_GRACE.as_secs() as i64),
            attach_mode: None,
        }
    }
}

/// The flags and environment variables given to one `agent` command: the top layer over the
/// file. It holds clap's matches of [`AgentConfig`]'s arguments; applying them sets exactly
/// the settings that were given (clap knows no defaults for them), so the file keeps the rest.
#[derive(Debug, Clone)]
pub struct ConfigOverrides(clap::ArgMatches);

impl FromArgMatches for ConfigOverrides {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(ConfigOverrides(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl clap::Args for ConfigOverrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        AgentConfig::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        AgentConfig::augment_args_for_update(cmd)
    }
}

impl ConfigOverrides {
    /// The configuration: defaults, then `file` (if any), then these flags and environment
    /// variables, validated.
    pub fn resolve(&self, file: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let mut config = match file {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        config
            .update_from_arg_matches(&self.0)
            .map_err(ConfigError::Flags)?;
        config.validate()?;
        Ok(config)
    }
}

impl AgentConfig {
    /// Reads a configuration file over the defaults. Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// Parses configuration YAML (`path` names it in errors). An empty document is the
    /// defaults.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(AgentConfig::default());
        }
        crate::yaml::check_nesting(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            field: ".".into(),
            message: e.to_string(),
        })?;
        crate::yaml::from_str_naming_field(text).map_err(|(field, e)| ConfigError::Parse {
            path: path.to_owned(),
            field,
            message: e.to_string(),
        })
    }

    /// The duration settings: flag name, value, and the allowed range.
    fn durations(&self) -> [(&'static str, SignedDuration, SignedDuration, SignedDuration); 6] {
        const SECOND: SignedDuration = SignedDuration::from_secs(1);
        const YEAR: SignedDuration = SignedDuration::from_hours(366 * 24);
        let zero = SignedDuration::ZERO;
        [
            ("sweep-interval", self.sweep_interval.get(), SECOND, DAY),
            (
                "inventory-poll-interval",
                self.inventory_poll_interval.get(),
                SECOND,
                DAY,
            ),
            ("flow-retention", self.flow_retention.get(), zero, YEAR),
            ("enforcement-grace", self.enforcement_grace.get(), zero, DAY),
            ("drift-learn", self.drift_learn.get(), zero, YEAR),
            ("dns-grace", self.dns_grace.get(), zero, DAY),
        ]
    }

    /// Checks the values that have limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, message: &str| {
            Err(ConfigError::Invalid {
                setting,
                message: message.to_owned(),
            })
        };
        if self.interfaces.is_empty() {
            return invalid("interfaces", "at least one interface pattern is needed");
        }
        if self.flow_map_capacity == 0 {
            return invalid("flow-map-capacity", "must be at least 1");
        }
        if self.flow_map_capacity > MAX_FLOW_MAP_CAPACITY {
            return Err(ConfigError::Invalid {
                setting: "flow-map-capacity",
                message: format!(
                    "{} is more than {MAX_FLOW_MAP_CAPACITY} (about 150 bytes of kernel memory \
                     per entry: 2.5 GB at the maximum)",
                    self.flow_map_capacity
                ),
            });
        }
        for (setting, value, min, max) in self.durations() {
            if value < min || value > max {
                return Err(ConfigError::Invalid {
                    setting,
                    message: format!("{value:#} is not between {min:#} and {max:#}"),
                });
            }
        }
        if self.max_flows == 0 {
            return invalid("max-flows", "must be at least 1");
        }
        if self.drift_learn.get().is_positive() && self.drift_baseline.is_none() {
            return invalid(
                "drift-learn",
                "learning needs a file to keep the baseline in: set --drift-baseline (driftBaseline)",
            );
        }
        if self.api_auth() == ApiAuth::None
            && !self.listen.ip().is_loopback()
            && !self.allow_unauthenticated_remote_api
        {
            return Err(ConfigError::Invalid {
                setting: "api-auth",
                message: format!(
                    "`none` on {}, which is not a loopback address, would let anyone who reaches \
                     the port read every flow of this node: use --api-auth kubernetes, listen on \
                     127.0.0.1, or pass --allow-unauthenticated-remote-api",
                    self.listen
                ),
            });
        }
        if let Some(bad) = self
            .api_token_audiences
            .iter()
            .find(|a| a.trim().is_empty())
        {
            return Err(ConfigError::Invalid {
                setting: "api-token-audiences",
                message: format!("{bad:?}: an audience cannot be empty"),
            });
        }
        if let Some(bad) = self
            .drop_reasons
            .iter()
            .find(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(ConfigError::Invalid {
                setting: "drop-reasons",
                message: format!(
                    "{bad:?} is not a drop reason name (e.g. NETFILTER_DROP, from the kernel's enum skb_drop_reason)"
                ),
            });
        }
        Ok(())
    }

    /// The effective `/api/v1` authentication: the configured one, else `kubernetes`
    /// in-cluster and `none` standalone (`inventory` set).
    pub fn api_auth(&self) -> ApiAuth {
        self.api_auth.unwrap_or_else(|| {
            if self.inventory.is_some() {
                ApiAuth::None
            } else {
                ApiAuth::Kubernetes
            }
        })
    }

    /// The datapath part of the configuration.
    pub fn datapath(&self) -> DatapathConfig {
        let sweep = self.sweep_interval.unsigned();
        DatapathConfig {
            include: self.interfaces.clone(),
            exclude: self.exclude.clone(),
            flow_capacity: self.flow_map_capacity,
            sweep_interval: sweep,
            // The agent's store keeps ended flows (flowRetention, bounded by maxFlows); the
            // datapath's table needs them only until their end is published. Its default (10
            // min) kept a second, unbounded copy of every ended flow: RSS grew with the flow
            // rate (the soak tier: +45 MB over 100k flows in 10 min).
            retention: sweep.saturating_mul(2),
            node_name: self.node_name.clone(),
            ebpf_log: self.ebpf_log,
            attach_mode: self.attach_mode,
            capture_dns: self.dns_capture,
            ..DatapathConfig::default()
        }
    }

    /// The metrics part of the configuration.
    pub(crate) fn metrics_config(&self) -> MetricsConfig {
        MetricsConfig {
            series_budget: self.metrics.series_budget,
            pod_level: self.metrics.pod_level,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_configmap_parses() {
        let text = r#"
listen: 0.0.0.0:9965
interfaces: ["veth*", "cali*"]
metrics:
  seriesBudget: 500
  podLevel: true
attachMode: clsact
"#;
        let c = AgentConfig::from_yaml_str(text, Path::new("agent.yaml")).unwrap();
        assert_eq!(c.datapath().attach_mode, Some(AttachMode::Clsact));
        assert_eq!(c.metrics.series_budget, 500);
        assert!(c.metrics.pod_level);
        assert_eq!(c.interfaces, vec!["veth*", "cali*"]);
        assert_eq!(
            c.flow_map_capacity,
            netpol_observe_ebpf::DEFAULT_FLOW_CAPACITY
        );
        c.validate().unwrap();
    }

    #[test]
    fn unknown_and_bad_fields_are_named() {
        let err = AgentConfig::from_yaml_str("metrics:\n  seriesBudgt: 3\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.yaml") && err.contains("seriesBudgt"),
            "{err}"
        );
        let err = AgentConfig::from_yaml_str("listen: nowhere\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `listen`"), "{err}");
        let err = AgentConfig::from_yaml_str("attachMode: tc\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("attachMode") && err.contains("clsact"),
            "{err}"
        );
    }

    #[test]
    fn enforcement_grace_from_the_file() {
        let path = Path::new("agent.yaml");
        assert_eq!(
            AgentConfig::default().enforcement_grace.get(),
            SignedDuration::from_secs(10)
        );
        let c = AgentConfig::from_yaml_str("enforcementGrace: 1m30s\n", path).unwrap();
        assert_eq!(c.enforcement_grace.get(), SignedDuration::from_secs(90));
        let c = AgentConfig::from_yaml_str("enforcementGrace: 0s\n", path).unwrap();
        assert_eq!(c.enforcement_grace.get(), SignedDuration::ZERO);
        c.validate().unwrap();
        for bad in ["-5s", "soon", "25h", "10"] {
            let err = AgentConfig::from_yaml_str(&format!("enforcementGrace: {bad}\n"), path)
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string();
            assert!(err.contains("enforcementGrace"), "{bad}: {err}");
        }
        // Written back as it is read.
        let json = serde_json::to_value(AgentConfig::default()).unwrap();
        assert_eq!(json["enforcementGrace"], "10s");
    }

    #[test]
    fn drift_settings_from_the_file() {
        let path = Path::new("agent.yaml");
        let c = AgentConfig::from_yaml_str(
            "driftBaseline: /var/lib/netpol-observe/baseline.jsonl\ndriftLearn: 7d\n",
            path,
        )
        .unwrap();
        assert_eq!(c.drift_learn.get(), SignedDuration::from_hours(168));
        assert_eq!(
            c.drift_baseline.as_deref(),
            Some(Path::new("/var/lib/netpol-observe/baseline.jsonl"))
        );
        c.validate().unwrap();
        assert_eq!(
            AgentConfig::default().drift_learn.get(),
            SignedDuration::ZERO
        );
        let c = AgentConfig::from_yaml_str("driftLearn: 30m\n", path).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("drift-baseline"),
            "learning without a file"
        );
        for bad in ["-1h", "later", "400d"] {
            let err = AgentConfig::from_yaml_str(&format!("driftLearn: {bad}\n"), path)
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string();
            assert!(err.contains("driftLearn"), "{bad}: {err}");
        }
        let json = serde_json::to_value(AgentConfig::default()).unwrap();
        assert_eq!(json["driftLearn"], "0s");
    }

    #[test]
    fn drop_scope_from_the_file() {
        let path = Path::new("agent.yaml");
        assert_eq!(AgentConfig::default().drop_scope, DropScope::Kernel);
        let c = AgentConfig::from_yaml_str("dropScope: netns\n", path).unwrap();
        assert_eq!(c.drop_scope, DropScope::Netns);
        let c = AgentConfig::from_yaml_str("dropScope: kernel\n", path).unwrap();
        assert_eq!(c.drop_scope, DropScope::Kernel);
        let err = AgentConfig::from_yaml_str("dropScope: node\n", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dropScope") && err.contains("kernel") && err.contains("netns"),
            "{err}"
        );
    }

    #[test]
    fn validation_mode_and_flow_map_bound() {
        let path = Path::new("agent.yaml");
        let c = AgentConfig::from_yaml_str("validate: warn\n", path).unwrap();
        assert_eq!(c.validate, Validation::Warn);
        assert_eq!(AgentConfig::default().validate, Validation::Strict);
        let err = AgentConfig::from_yaml_str("validate: lax\n", path).unwrap_err();
        assert!(err.to_string().contains("validate"), "{err}");
        let big = AgentConfig {
            flow_map_capacity: u32::MAX,
            ..AgentConfig::default()
        };
        let err = big.validate().unwrap_err().to_string();
        assert!(
            err.contains("flow-map-capacity") && err.contains("16777216"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        let c = AgentConfig {
            drop_reasons: vec!["NETFILTER DROP".into()],
            ..AgentConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("drop-reasons")
        );
        let c = AgentConfig {
            sweep_interval: DurationSetting::ZERO,
            ..AgentConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sweep-interval")
        );
        let c = AgentConfig {
            api_token_audiences: vec![" ".into()],
            ..AgentConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("api-token-audiences")
        );
    }

    /// `/api/v1` is open only on loopback (standalone's default) unless explicitly allowed;
    /// in-cluster it is authenticated by default.
    #[test]
    fn unauthenticated_api_only_on_loopback_unless_allowed() {
        let any: SocketAddr = "0.0.0.0:9965".parse().unwrap();
        let standalone = AgentConfig {
            inventory: Some("cluster.yaml".into()),
            ..AgentConfig::default()
        };
        assert_eq!(standalone.listen, "127.0.0.1:9965".parse().unwrap());
        assert_eq!(standalone.api_auth(), ApiAuth::None);
        standalone.validate().unwrap();
        let v6 = AgentConfig {
            listen: "[::1]:9965".parse().unwrap(),
            ..standalone.clone()
        };
        v6.validate().unwrap();

        let open = AgentConfig {
            listen: any,
            ..standalone
        };
        let err = open.validate().unwrap_err().to_string();
        assert!(
            err.contains("api-auth") && err.contains("--allow-unauthenticated-remote-api"),
            "{err}"
        );
        AgentConfig {
            allow_unauthenticated_remote_api: true,
            ..open.clone()
        }
        .validate()
        .unwrap();
        AgentConfig {
            api_auth: Some(ApiAuth::Kubernetes),
            ..open
        }
        .validate()
        .unwrap();

        let in_cluster = AgentConfig {
            listen: any,
            ..AgentConfig::default()
        };
        assert_eq!(in_cluster.api_auth(), ApiAuth::Kubernetes);
        in_cluster.validate().unwrap();
        let err = AgentConfig {
            api_auth: Some(ApiAuth::None),
            ..in_cluster
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("api-auth"), "{err}");

        let c = AgentConfig::from_yaml_str(
            "apiAuth: none\nallowUnauthenticatedRemoteApi: true\napiTokenAudiences: [a]\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        assert_eq!(c.api_auth, Some(ApiAuth::None));
        assert!(c.allow_unauthenticated_remote_api);
        let err = AgentConfig::from_yaml_str("apiAuth: token\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apiAuth") && err.contains("kubernetes"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    /// The ConfigMap the DaemonSet mounts parses into this configuration, and its subnets file
    /// into named subnets.
    #[test]
    fn deploy_configmap_matches_the_agent() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/kubernetes/base/configmap.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let cm: k8s_openapi::api::core::v1::ConfigMap = crate::yaml::from_str(&text).unwrap();
        let data = cm.data.unwrap();
        let c = AgentConfig::from_yaml_str(&data["agent.yaml"], Path::new("agent.yaml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 9965)));
        // Metrics for the cluster, /api/v1 only for authorised callers with audience-bound
        // tokens (deploy/README.md).
        assert_eq!(c.api_auth, Some(ApiAuth::Kubernetes));
        assert_eq!(c.api_token_audiences, ["netpol-observe"]);
        assert_eq!(c.drop_reasons, AgentConfig::default().drop_reasons);
        assert_eq!(
            c.enforcement_grace,
            AgentConfig::default().enforcement_grace
        );
        // Only pod interfaces: a bridge or tunnel would count pod traffic a second time.
        assert_eq!(c.interfaces, DEFAULT_INCLUDE);
        assert_eq!(c.exclude, DEFAULT_EXCLUDE);
        crate::attribution::Subnets::from_yaml_str(
            &data["subnets.yaml"],
            Path::new("subnets.yaml"),
        )
        .unwrap();
    }
}
