//! The lab scenario file (format: `docs/lab.md`): its serde types, defaults, and validation
//! into a resolved [`LabModel`](super::model::LabModel) before anything touches the machine.
//!
//! Every validation error names the file and the line of the offending entry (the YAML parser
//! gives locations for syntax and type errors; for semantic errors the text is re-scanned for
//! the N-th entry of the section, see [`entry_line`]).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::flow::Protocol;

/// A scenario file as written by a user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name of the scenario (also names the simulated node when `nodes` is empty:
    /// `<name>-node`).
    pub name: String,
    /// The cluster's nodes (default: one, `<name>-node`). Each is its own network namespace
    /// with its pods, Service DNAT and agent.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Pod CIDR of the cluster (default `10.244.0.0/24` for one node, else `10.244.0.0/16`),
    /// split evenly between the nodes (a `/24` each by default).
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<Ipv4Net>,
    /// Service CIDR of the cluster (default `10.96.0.0/16`); `kube-dns` is at `.10`.
    #[serde(default, rename = "serviceCIDR")]
    pub service_cidr: Option<Ipv4Net>,
    /// Namespaces (`kube-system` is implicit).
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    /// Workloads; pods come from them.
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    /// Services with ClusterIPs.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Hosts outside the cluster, on their own subnets.
    #[serde(default)]
    pub externals: Vec<ExternalSpec>,
    /// The legitimate traffic of the learning phase.
    #[serde(default)]
    pub traffic: Vec<TrafficSpec>,
    /// Probes that must be blocked once policies are enforced.
    #[serde(default)]
    pub forbidden: Vec<TrafficSpec>,
}

/// A node of the scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name (a DNS label).
    pub name: String,
    /// Whether `--enforce` loads the policies' rules on this node (default true). `false`
    /// simulates a node whose CNI does not enforce NetworkPolicy: its agents still judge the
    /// flows against the policies, and report the denied ones that get through.
    #[serde(default = "yes")]
    pub enforce: bool,
}

fn yes() -> bool {
    true
}

/// A namespace of the scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Namespace name.
    pub name: String,
    /// Labels (`kubernetes.io/metadata.name` is added automatically).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The kind of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum WorkloadKind {
    /// A Deployment (pods owned by a ReplicaSet owned by the Deployment).
    #[default]
    Deployment,
    /// A StatefulSet (pods `<name>-0`, `<name>-1`, ...).
    StatefulSet,
    /// A DaemonSet (one pod on every node).
    DaemonSet,
    /// A Job (pods `<name>-<5>`, `parallelism` = replicas).
    Job,
    /// A CronJob and the Job of its current run (`<name>-<8 digits>`), whose pods are running.
    CronJob,
    /// A bare Pod without owner.
    Pod,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A workload: a pod template with replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Namespace (must be declared).
    pub namespace: String,
    /// Workload name.
    pub name: String,
    /// Kind (default Deployment).
    #[serde(default)]
    pub kind: WorkloadKind,
    /// Number of pods (default 1; DaemonSet and Pod must have 1).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Pod labels, also the workload's selector.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Container ports; a server listens on each.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The node running every pod of the workload (default: replicas spread over the nodes
    /// in order, replica `r` on node `r mod nodes`).
    #[serde(default)]
    pub node: Option<String>,
}

/// A declared port (of a container or an external host).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Optional port name (referenced by `targetPort` and traffic entries).
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// TCP (default) or UDP.
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

/// A port given by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A port name.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A Service with a ClusterIP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Namespace (must be declared).
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Pod selector (in the service's namespace).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Service ports.
    pub ports: Vec<ServicePortSpec>,
    /// Fixed ClusterIP (default: allocated from the service CIDR; `default/kubernetes` gets
    /// the first address, as the API server gives it).
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<std::net::Ipv4Addr>,
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`: the latter two are public entry
    /// points (externals reach them through the node's DNAT, client address preserved).
    #[serde(default, rename = "type")]
    pub service_type: ServiceKind,
    /// A Service without selector whose endpoints are the hosts of this external (their
    /// EndpointSlice lists the addresses with numeric `targetPort`s), e.g. the API server
    /// behind `default/kubernetes`.
    #[serde(default)]
    pub endpoints: Option<String>,
}

/// The `type` of a lab Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ServiceKind {
    /// Reachable on its ClusterIP.
    #[default]
    ClusterIP,
    /// Also on a node port (a public entry point).
    NodePort,
    /// Through a load balancer (a public entry point).
    LoadBalancer,
}

impl ServiceKind {
    /// The name as in `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::ClusterIP => "ClusterIP",
            ServiceKind::NodePort => "NodePort",
            ServiceKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A port of a Service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePortSpec {
    /// Optional port name.
    #[serde(default)]
    pub name: Option<String>,
    /// The ClusterIP port.
    pub port: u16,
    /// The backend port, by number or container port name (default: `port`).
    #[serde(default, rename = "targetPort")]
    pub target_port: Option<PortRef>,
    /// TCP (default) or UDP.
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

/// Hosts outside the cluster on their own subnet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// Name (given to the agent as a named subnet unless `anonymous`).
    pub name: String,
    /// The subnet.
    pub cidr: Ipv4Net,
    /// Number of hosts (default 1).
    #[serde(default = "one")]
    pub hosts: u32,
    /// Ports served by every host.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Not named to the agent (shows as `private`/`world`).
    #[serde(default)]
    pub anonymous: bool,
    /// DNS names the lab's DNS answers with the first host's address (A records), e.g.
    /// `api.payments.example`; a traffic entry or probe `to:` one of them resolves it from the
    /// client pod first.
    #[serde(default)]
    pub dns: Vec<String>,
    /// TTL of the answers for `dns`, seconds (default [`DEFAULT_DNS_TTL`]).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// The rotation step: with `--enforce`, after the enforcement probes, the names move to
    /// another address and every traffic entry to one of them runs again; the policies,
    /// written for the old address, must drop it and the agents must count the rotation.
    /// Needs `dns`.
    #[serde(default, rename = "rotateTo")]
    pub rotate_to: Option<RotateTo>,
}

/// Where an external's DNS names move in the rotation step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RotateTo {
    /// Another host of the same external (1-based: `2` is `.2`); the external must be
    /// `anonymous` (the policies allow a named subnet as a whole).
    Host(u32),
    /// The first host of another external (a new range of the provider), which serves the
    /// external's ports.
    External(String),
}

/// TTL of the lab DNS's answers for externals' names when the scenario gives none (seconds).
pub(crate) const DEFAULT_DNS_TTL: u32 = 5;

/// One traffic entry or forbidden probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// `ns/workload` or an external name.
    pub from: String,
    /// `ns/workload`, `svc/ns/name` (resolved through kube-dns first) or an external name.
    pub to: String,
    /// Port by number or name (a service port for `svc/...`, else a declared port of the target).
    pub port: PortRef,
    /// TCP or UDP (default: the protocol of the named port, else TCP).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Number of connections (default 1).
    #[serde(default = "one")]
    pub connections: u32,
}

fn one() -> u32 {
    1
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// An invalid scenario: what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse into a scenario.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// The YAML parser's message (with line and column).
        message: String,
    },
    /// An entry is inconsistent with the rest of the scenario.
    #[error("{path}:{line}: {entry}: {problem}")]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line of the entry (0 when unknown).
        line: usize,
        /// The entry, e.g. `traffic[2]`.
        entry: String,
        /// What is wrong.
        problem: Box<Problem>,
    },
}

impl ScenarioError {
    /// The 1-based line the error points at (0 when unknown).
    pub fn line(&self) -> usize {
        match self {
            ScenarioError::Read { .. } => 0,
            ScenarioError::Syntax { line, .. } | ScenarioError::Invalid { line, .. } => *line,
        }
    }
}

/// A semantic problem of a scenario entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A namespace that is not declared.
    #[error("unknown namespace `{0}`")]
    UnknownNamespace(String),
    /// A `ns/workload` that is not declared.
    #[error("unknown workload `{0}`")]
    UnknownWorkload(String),
    /// A `svc/ns/name` that is not declared.
    #[error("unknown service `{0}`")]
    UnknownService(String),
    /// A peer that is neither `ns/workload`, `svc/ns/name` nor an external.
    #[error(
        "unknown external `{0}` (expected `ns/workload`, `svc/ns/name`, an external name or an external's DNS name)"
    )]
    UnknownExternal(String),
    /// A port the target does not declare.
    #[error("port {port}/{protocol} is not declared by `{target}`")]
    UndeclaredPort {
        /// The target.
        target: String,
        /// The port as written.
        port: String,
        /// The protocol.
        protocol: String,
    },
    /// Two address ranges overlap.
    #[error("CIDR {a} overlaps {b}")]
    OverlappingCidrs {
        /// This entry's range.
        a: String,
        /// The range it overlaps (and whose).
        b: String,
    },
    /// A name declared twice.
    #[error("duplicate {kind} `{name}`")]
    Duplicate {
        /// What kind of entry.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Anything else (unsupported value, range exhausted...).
    #[error("{0}")]
    Other(String),
}

/// Loads and parses a scenario file (no validation; see [`super::model::LabModel::build`]).
pub fn load(path: &Path) -> Result<(Scenario, String), ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let scenario = parse(path, &text)?;
    Ok((scenario, text))
}

/// Parses scenario text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    crate::yaml::check_nesting(text).map_err(|e| ScenarioError::Syntax {
        path: path.to_path_buf(),
        line: e.line,
        message: format!(
            "more than {} nested [ or {{ (refused before parsing)",
            crate::yaml::MAX_FLOW_DEPTH
        ),
    })?;
    crate::yaml::from_str(text).map_err(|err| ScenarioError::Syntax {
        path: path.to_path_buf(),
        line: err.line(),
        message: err.to_string(),
    })
}

/// The 1-based line where entry `index` of the top-level sequence `section` starts, found by
/// re-scanning the text (block sequences `- ...`; a flow sequence gives the section's line).
pub(crate) fn entry_line(text: &str, section: &str, index: usize) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let key = format!("{section}:");
    let start = lines
        .iter()
        .position(|l| l.starts_with(&key) && !l.starts_with(' '))?;
    let mut item_indent: Option<usize> = None;
    let mut seen = 0usize;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            break; // next top-level key
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            let expected = *item_indent.get_or_insert(indent);
            if indent == expected {
                if seen == index {
                    return Some(i + 1);
                }
                seen += 1;
            }
        }
    }
    Some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_line_finds_block_items() {
        let text = "name: x\ntraffic:\n  # c\n  - {from: a, to: b, port: 1}\n  - from: a\n    to: b\n    port: 2\nforbidden: []\n";
        assert_eq!(entry_line(text, "traffic", 0), Some(4));
        assert_eq!(entry_line(text, "traffic", 1), Some(5));
        assert_eq!(entry_line(text, "forbidden", 0), Some(8));
        assert_eq!(entry_line(text, "services", 0), None);
    }

    #[test]
    fn defaults_apply() {
        let s = parse(
            Path::new("s.yaml"),
            "name: s\nworkloads:\n- {namespace: a, name: w, ports: [{port: 80}]}\ntraffic:\n- {from: a/w, to: a/w, port: 80}\n",
        )
        .unwrap();
        assert_eq!(s.workloads[0].replicas, 1);
        assert_eq!(s.workloads[0].kind, WorkloadKind::Deployment);
        assert_eq!(s.workloads[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.traffic[0].connections, 1);
        assert_eq!(s.traffic[0].protocol, None);
        assert_eq!(s.traffic[0].port, PortRef::Number(80));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse(
            Path::new("s.yaml"),
            "name: s\nworkloads:\n- {namespace: a, nme: w}\n",
        )
        .unwrap_err();
        assert_eq!(err.line(), 3, "{err}");
        assert!(err.to_string().starts_with("s.yaml:3:"), "{err}");
    }
}
