//! The agent's one typed configuration: defaults, then an optional YAML file (`--config`),
//! then environment variables and flags (clap reads `NETPOL_OBSERVE_*` and `NODE_NAME` for
//! the flags), the later overriding the earlier.
//!
//! The file uses the same names as the flags, in camelCase (`seriesBudget` under `metrics`),
//! exactly as `deploy/kubernetes/base/configmap.yaml` writes it. Unknown keys are errors.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::inventory::Validation;

pub use crate::http::auth::ApiAuth;
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

/// Default of [`AgentConfig::enforcement_grace`].
pub(crate) const DEFAULT_ENFORCEMENT_GRACE: jiff::SignedDuration =
    jiff::SignedDuration::from_secs(10);

/// The longest enforcement grace: one day (a longer one would switch the check off).
pub(crate) const MAX_ENFORCEMENT_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Parses an enforcement grace (`--enforcement-grace`, `enforcementGrace`): a duration such as
/// `10s`, `2m` or `1m30s` (or ISO 8601 `PT10S`), zero or more, at most a day.
pub fn parse_enforcement_grace(s: &str) -> Result<jiff::SignedDuration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 10s, 2m or 1m30s: {e}"))?;
    if d.is_negative() {
        return Err(format!("{s:?}: the grace cannot be negative"));
    }
    if d > MAX_ENFORCEMENT_GRACE {
        return Err(format!("{s:?} is too long: at most 24h"));
    }
    Ok(d)
}

/// The longest drift learning period: a year.
pub(crate) const MAX_DRIFT_LEARN: jiff::SignedDuration = jiff::SignedDuration::from_hours(366 * 24);

/// Parses a drift learning period (`--drift-learn`, `driftLearn`): a duration such as `0s`
/// (no learning), `30m`, `168h` (or ISO 8601 `P7D`), at most a year.
pub fn parse_drift_learn(s: &str) -> Result<jiff::SignedDuration, String> {
    let text = s.trim();
    let d: jiff::SignedDuration = match text.parse() {
        Ok(d) => d,
        // `7d` / `P7D`: a calendar span of days, taken as 24-hour days.
        Err(e) => text
            .parse::<jiff::Span>()
            .ok()
            .and_then(|span| {
                span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                    .ok()
            })
            .ok_or_else(|| format!("{s:?} is not a duration like 0s, 30m, 168h or 7d: {e}"))?,
    };
    if d.is_negative() {
        return Err(format!("{s:?}: the learning period cannot be negative"));
    }
    if d > MAX_DRIFT_LEARN {
        return Err(format!("{s:?} is too long: at most 366 days"));
    }
    Ok(d)
}

/// Serde form of [`AgentConfig::drift_learn`]: a string such as `168h`.
mod learn {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        d: &jiff::SignedDuration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{d:#}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<jiff::SignedDuration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_drift_learn(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde form of [`AgentConfig::enforcement_grace`]: a string such as `10s`.
mod grace {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        d: &jiff::SignedDuration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{d:#}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<jiff::SignedDuration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_enforcement_grace(&text).map_err(serde::de::Error::custom)
    }
}

/// Errors of the agent configuration: each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
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
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        /// The setting (flag name without dashes).
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Metric settings of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSettings {
    /// Label sets per flow-labelled family before collapsing into `other` (default 2000).
    pub series_budget: usize,
    /// Add `src_pod`/`dst_pod` labels (default false).
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

/// Everything the agent can be told. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// HTTP listen address (default `127.0.0.1:9965`).
    pub listen: SocketAddr,
    /// Who may read `/api/v1` (flows, recommendations): `kubernetes` (a bearer token checked by
    /// the API server's TokenReview and SubjectAccessReview) or `none` (anyone who reaches the
    /// port). Default: `kubernetes` in-cluster, `none` with `inventory` (standalone). `none` on
    /// an address other than loopback is refused unless `allowUnauthenticatedRemoteApi`.
    /// `/metrics`, `/healthz` and `/readyz` are never authenticated.
    pub api_auth: Option<ApiAuth>,
    /// Serve `/api/v1` without authentication on a non-loopback address (with `apiAuth: none`;
    /// default false): anyone who reaches the port reads every flow of the node.
    pub allow_unauthenticated_remote_api: bool,
    /// With `apiAuth: kubernetes`: the audiences a token must be valid for (TokenReview
    /// `spec.audiences`), e.g. `[netpol-observe]` for tokens minted with `kubectl create token
    /// --audience netpol-observe`. Default empty: the API server's own audiences.
    pub api_token_audiences: Vec<String>,
    /// Standalone mode: Kubernetes objects (file or directory), reloaded when they change.
    /// Absent: in-cluster mode (service account, watches).
    pub inventory: Option<PathBuf>,
    /// In-cluster mode: a kubeconfig instead of the pod's ServiceAccount (default: `$KUBECONFIG`,
    /// else the in-cluster identity, else `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Unknown fields in the inventory and staged policy files: `strict` (an error naming the
    /// field), `warn` or `ignore` (files from a newer Kubernetes) (default strict).
    pub validate: Validation,
    /// Named subnets file (`name: CIDR` or `name: [CIDRs]`).
    pub subnets: Option<PathBuf>,
    /// Draft NetworkPolicies (file or directory) evaluated next to the ones in force.
    pub staged_policies: Option<PathBuf>,
    /// This node's name (`NODE_NAME` from the downward API); default: the host name.
    pub node_name: Option<String>,
    /// Interface patterns to attach to (default: common CNI pod interfaces).
    pub interfaces: Vec<String>,
    /// Interface patterns never attached (default `cilium_*`, `lo`).
    pub exclude: Vec<String>,
    /// Capacity of the kernel flow map (default 65536).
    pub flow_map_capacity: u32,
    /// Seconds between sweeps of the flow map (default 5).
    pub sweep_interval: u64,
    /// Seconds between checks of the inventory files for changes (default 2).
    pub inventory_poll_interval: u64,
    /// Record kernel drops (default true).
    pub drops: bool,
    /// Drop reasons recorded (default [`DEFAULT_DROP_REASONS`]).
    pub drop_reasons: Vec<String>,
    /// Which drops are recorded: `kernel`, every drop of the node's kernel (a real node;
    /// default), or `netns`, only drops whose device is in the agent's network namespace
    /// (several simulated nodes on one kernel, as `netpol-observe lab` runs them).
    pub drop_scope: DropScope,
    /// Flows kept for `/api/v1/flows` (default 100000; the oldest ended flows go first).
    pub max_flows: usize,
    /// Seconds an ended flow stays in `/api/v1/flows` (default 600).
    pub flow_retention: u64,
    /// The enforcement check (`netpol_observe_unenforced_flows_total`) only judges flows first
    /// seen at least this long after the NetworkPolicy set in force last changed (default
    /// `10s`, `0s` allowed): the CNI's time to program a change, connections it lets finish.
    /// A duration such as `10s`, `1m`, `1m30s`.
    #[serde(with = "grace")]
    pub enforcement_grace: jiff::SignedDuration,
    /// Drift baseline (JSON lines, one edge per line; `netpol_observe_agent::drift`): flows whose
    /// edge (workload pair, port, protocol) is not in it count in
    /// `netpol_observe_drift_flows_total` and are listed on `/api/v1/drift`. A missing file is
    /// an empty baseline; the file is reloaded when it changes (every `inventoryPollInterval`).
    /// Unset (default): no drift detection.
    pub drift_baseline: Option<PathBuf>,
    /// With `driftBaseline`: learn for this long (default `0s`: never). An empty baseline
    /// (missing file, or no edge and no `learning_since` line) starts a learning period;
    /// during it every new edge joins the baseline, written to the file (temporary file +
    /// rename, at most every `inventoryPollInterval`, and at shutdown); a restarted agent
    /// resumes the period the file records. After it, new edges are drift.
    #[serde(with = "learn")]
    pub drift_learn: jiff::SignedDuration,
    /// Metric labelling.
    pub metrics: MetricsSettings,
    /// Forward the eBPF programs' debug log to the agent's log (default false).
    pub ebpf_log: bool,
    /// `tcx` or `clsact` (default: tcx on kernels ≥ 6.6, clsact before).
    pub attach_mode: Option<AttachMode>,
    /// Capture the DNS answers this node's pods receive (packets from port 53) to name the
    /// destinations of their flows (`dst.dns_names`) and watch the names policies allow
    /// (default true).
    pub dns_capture: bool,
    /// How long after a DNS record's TTL its names still name flows (default `5m`, at most
    /// 24h).
    #[serde(with = "super::dns::grace_serde")]
    pub dns_grace: jiff::SignedDuration,
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
            node_name: None,
            interfaces: DEFAULT_INCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            exclude: DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            flow_map_capacity: netpol_observe_ebpf::DEFAULT_FLOW_CAPACITY,
            sweep_interval: 5,
            inventory_poll_interval: 2,
            drops: true,
            drop_reasons: DEFAULT_DROP_REASONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            drop_scope: DropScope::Kernel,
            max_flows: 100_000,
            flow_retention: 600,
            enforcement_grace: DEFAULT_ENFORCEMENT_GRACE,
            drift_baseline: None,
            drift_learn: jiff::SignedDuration::ZERO,
            metrics: MetricsSettings::default(),
            ebpf_log: false,
            attach_mode: None,
            dns_capture: true,
            dns_grace: super::dns::DEFAULT_DNS_GRACE_CONFIG,
        }
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
        if self.sweep_interval == 0 {
            return invalid("sweep-interval", "must be at least 1 second");
        }
        if self.inventory_poll_interval == 0 {
            return invalid("inventory-poll-interval", "must be at least 1 second");
        }
        if self.max_flows == 0 {
            return invalid("max-flows", "must be at least 1");
        }
        if self.enforcement_grace.is_negative() || self.enforcement_grace > MAX_ENFORCEMENT_GRACE {
            return invalid("enforcement-grace", "must be between 0s and 24h");
        }
        if self.drift_learn.is_negative() || self.drift_learn > MAX_DRIFT_LEARN {
            return invalid("drift-learn", "must be between 0s and 366 days");
        }
        if self.dns_grace.is_negative() || self.dns_grace > jiff::SignedDuration::from_hours(24) {
            return invalid("dns-grace", "must be between 0s and 24h");
        }
        if self.drift_learn.is_positive() && self.drift_baseline.is_none() {
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
        DatapathConfig {
            include: self.interfaces.clone(),
            exclude: self.exclude.clone(),
            flow_capacity: self.flow_map_capacity,
            sweep_interval: Duration::from_secs(self.sweep_interval),
            // The agent's store keeps ended flows (flowRetention, bounded by maxFlows); the
            // datapath's table needs them only until their end is published. Its default (10
            // min) kept a second, unbounded copy of every ended flow: RSS grew with the flow
            // rate (the soak tier: +45 MB over 100k flows in 10 min).
            retention: Duration::from_secs(self.sweep_interval.saturating_mul(2)),
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
            AgentConfig::default().enforcement_grace,
            jiff::SignedDuration::from_secs(10)
        );
        let c = AgentConfig::from_yaml_str("enforcementGrace: 1m30s\n", path).unwrap();
        assert_eq!(c.enforcement_grace, jiff::SignedDuration::from_secs(90));
        let c = AgentConfig::from_yaml_str("enforcementGrace: 0s\n", path).unwrap();
        assert_eq!(c.enforcement_grace, jiff::SignedDuration::ZERO);
        c.validate().unwrap();
        for bad in ["-5s", "soon", "25h", "10"] {
            let err = AgentConfig::from_yaml_str(&format!("enforcementGrace: {bad}\n"), path)
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
        assert_eq!(c.drift_learn, jiff::SignedDuration::from_hours(168));
        assert_eq!(
            c.drift_baseline.as_deref(),
            Some(Path::new("/var/lib/netpol-observe/baseline.jsonl"))
        );
        c.validate().unwrap();
        assert_eq!(
            AgentConfig::default().drift_learn,
            jiff::SignedDuration::ZERO
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
            sweep_interval: 0,
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
