//! The resolved lab: every pod, service, external host and probe of a scenario with its
//! addresses and port numbers, built and validated before anything touches the machine.
//!
//! Addressing: node `i` is `172.31.0.<i+1>` ([`NODE_IP`] for the first) and gets the `i`-th
//! equal part of the pod CIDR (all of it for one node); pods get `.10`, `.11`, ... of their
//! node's pod CIDR (kube-dns first, on the first node), services get `.20`, `.21`, ... of the
//! service CIDR (kube-dns is `.10`), external hosts get `.1`, `.2`, ... of their subnet.

mod names;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use ipnet::Ipv4Net;

use super::scenario::{
    PortRef, PortSpec, Problem, Scenario, ScenarioError, ServiceKind, ServiceSpec, TrafficSpec,
    WorkloadKind, entry_line,
};
use crate::flow::Protocol;

/// The first node's address (InternalIP), also its pods' and every external host's default
/// gateway; node `i` is this address plus `i`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
/// Default pod CIDR of a one-node lab.
pub(crate) const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";
/// Default pod CIDR of a lab with several nodes (a `/24` per node).
pub(crate) const DEFAULT_CLUSTER_POD_CIDR: &str = "10.244.0.0/16";
/// Default service CIDR.
pub(crate) const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";
/// Namespace of the DNS service.
pub(crate) const DNS_NAMESPACE: &str = "kube-system";
/// Name of the DNS service.
pub(crate) const DNS_SERVICE: &str = "kube-dns";

/// A node: its own network namespace with its pods, Service DNAT and agent.
#[derive(Debug, Clone)]
pub struct NodeModel {
    /// Node name.
    pub name: String,
    /// InternalIP (on the node's loopback; its pods' default gateway).
    pub ip: Ipv4Addr,
    /// The node's part of the pod CIDR (`spec.podCIDR`).
    pub pod_cidr: Ipv4Net,
    /// Whether `--enforce` loads the policies' rules here (scenario `enforce`, default true).
    pub enforce: bool,
    /// Indexes of its pods in [`LabModel::pods`].
    pub pods: Vec<usize>,
}

/// A namespace with its labels (including `kubernetes.io/metadata.name`).
#[derive(Debug, Clone)]
pub struct NamespaceModel {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A container port (or an external host's port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortModel {
    /// Optional name.
    pub name: Option<String>,
    /// Number.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// A workload and its pods.
#[derive(Debug, Clone)]
pub struct WorkloadModel {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: WorkloadKind,
    /// Selector labels (the pods' labels without `pod-template-hash`).
    pub labels: BTreeMap<String, String>,
    /// Container ports.
    pub ports: Vec<PortModel>,
    /// Hash of the pod template (`pod-template-hash` of Deployment pods, 10 chars).
    pub template_hash: String,
    /// Indexes of its pods in [`LabModel::pods`].
    pub pods: Vec<usize>,
}

/// One pod (one network namespace).
#[derive(Debug, Clone)]
pub struct PodModel {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Index of its workload in [`LabModel::workloads`].
    pub workload: usize,
    /// Index of its node in [`LabModel::nodes`].
    pub node: usize,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Labels (workload labels plus `pod-template-hash` for Deployments).
    pub labels: BTreeMap<String, String>,
    /// Container ports.
    pub ports: Vec<PortModel>,
}

impl PodModel {
    /// The container port named `name` with `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A service port with its target.
#[derive(Debug, Clone)]
pub struct ServicePortModel {
    /// Optional name.
    pub name: Option<String>,
    /// ClusterIP port.
    pub port: u16,
    /// Backend port (number or container port name).
    pub target: PortRef,
    /// Protocol.
    pub protocol: Protocol,
}

impl ServicePortModel {
    /// The backend port on `pod`, resolving a named target port.
    pub(crate) fn target_on(&self, pod: &PodModel) -> Option<u16> {
        match &self.target {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => pod.named_port(name, self.protocol),
        }
    }
}

/// A Service with its ClusterIP and backends.
#[derive(Debug, Clone)]
pub struct ServiceModel {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Selector.
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePortModel>,
    /// Indexes of the selected pods in [`LabModel::pods`].
    pub backends: Vec<usize>,
    /// `spec.type`.
    pub service_type: ServiceKind,
    /// For a Service without selector: the external (index in [`LabModel::externals`]) whose
    /// hosts are its endpoints.
    pub external: Option<usize>,
}

impl ServicePortModel {
    /// The numeric target port (the port on address endpoints).
    pub(crate) fn target_number(&self) -> u16 {
        match self.target {
            PortRef::Number(n) => n,
            PortRef::Name(_) => self.port,
        }
    }
}

impl ServiceModel {
    /// The DNS name `<name>.<namespace>.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// An external subnet with its hosts.
#[derive(Debug, Clone)]
pub struct ExternalModel {
    /// Name.
    pub name: String,
    /// Subnet.
    pub cidr: Ipv4Net,
    /// Not named to the agent.
    pub anonymous: bool,
    /// Ports served by every host.
    pub ports: Vec<PortModel>,
    /// Host addresses.
    pub hosts: Vec<Ipv4Addr>,
    /// DNS names the lab's DNS answers with the first host (lower case, no trailing dot).
    pub dns: Vec<String>,
    /// TTL of those answers, seconds.
    pub ttl: u32,
    /// The rotation step: the address the names move to after the enforcement probes, and
    /// the external it belongs to (index in [`LabModel::externals`]).
    pub rotate_to: Option<(Ipv4Addr, usize)>,
}

/// One end of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRef {
    /// A workload (its pods, round robin).
    Workload(usize),
    /// A Service through its ClusterIP (resolved through kube-dns from pods).
    Service(usize),
    /// An external subnet (its hosts, round robin).
    External(usize),
}

/// Whether a probe belongs to the legitimate traffic or is forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A `traffic` entry: must succeed.
    Traffic,
    /// A `forbidden` probe: must be dropped under enforcement.
    Forbidden,
}

/// A resolved traffic entry or forbidden probe.
#[derive(Debug, Clone)]
pub struct ProbeModel {
    /// Traffic or forbidden.
    pub kind: ProbeKind,
    /// `from` as written.
    pub from: String,
    /// `to` as written.
    pub to: String,
    /// The client side.
    pub source: PeerRef,
    /// The server side.
    pub target: PeerRef,
    /// Port number as addressed (service port for services, else the target's port).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Connections to make.
    pub connections: u32,
    /// Line in the scenario file.
    pub line: usize,
}

/// The whole resolved lab.
#[derive(Debug, Clone)]
pub struct LabModel {
    /// Scenario name.
    pub name: String,
    /// Nodes (at least one; the first runs kube-dns and is the gateway of the externals).
    pub nodes: Vec<NodeModel>,
    /// Pod CIDR of the cluster.
    pub pod_cidr: Ipv4Net,
    /// Service CIDR.
    pub service_cidr: Ipv4Net,
    /// Namespaces (with `kube-system`).
    pub namespaces: Vec<NamespaceModel>,
    /// Workloads (with `kube-system/coredns` first).
    pub workloads: Vec<WorkloadModel>,
    /// Pods.
    pub pods: Vec<PodModel>,
    /// Services (with `kube-system/kube-dns` first).
    pub services: Vec<ServiceModel>,
    /// External subnets.
    pub externals: Vec<ExternalModel>,
    /// Traffic entries then forbidden probes.
    pub probes: Vec<ProbeModel>,
}

/// (scenario index, namespace, name, kind, replicas, labels, ports, pinned node)
type WorkloadDraft = (
    Option<usize>,
    String,
    String,
    WorkloadKind,
    u32,
    BTreeMap<String, String>,
    Vec<PortModel>,
    Option<usize>,
);

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, section: &str, index: usize, problem: Problem) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line: entry_line(self.text, section, index).unwrap_or(0),
            entry: format!("{section}[{index}]"),
            problem: Box::new(problem),
        }
    }
}

fn fnv(data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Kubernetes-style random suffix characters (no vowels), deterministic from `seed`.
fn suffix(seed: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv(seed);
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h = (h / ALPHABET.len() as u64) ^ fnv(&format!("{seed}{h}"));
            c
        })
        .collect()
}

fn ports(specs: &[PortSpec]) -> Vec<PortModel> {
    specs
        .iter()
        .map(|p| PortModel {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol,
        })
        .collect()
}

fn nth_host(net: Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let base = u32::from(net.network());
    let addr = Ipv4Addr::from(base.checked_add(n)?);
    (net.contains(&addr) && addr != net.broadcast()).then_some(addr)
}

/// A scenario's name for a namespace, workload, service or node must be a DNS-1123 label (the
/// strictest of the names it becomes).
fn check_name(kind: &str, name: &str) -> Result<(), Problem> {
    if crate::names::check(crate::names::NameKind::Namespace, name).is_ok() {
        Ok(())
    } else {
        Err(Problem::Other(format!(
            "{kind} name `{name}` is not a DNS label (lower case letters, digits and '-', at most 63)"
        )))
    }
}

/// The Job running a Job or CronJob workload's pods: the Job itself, or the CronJob's current
/// run `<name>-<8 digits>` (the scheduled time in minutes, as the CronJob controller names it;
/// here derived from the template hash).
pub fn job_name(kind: WorkloadKind, name: &str, template_hash: &str) -> String {
    match kind {
        WorkloadKind::CronJob => {
            let minutes = fnv(template_hash) % 90_000_000 + 10_000_000;
            format!("{name}-{minutes}")
        }
        _ => name.to_owned(),
    }
}

/// The nodes of `scenario` (one, `<name>-node`, when it declares none) with their addresses
/// and their parts of `pod_cidr`.
fn node_models(
    cx: &Ctx<'_>,
    scenario: &Scenario,
    pod_cidr: Ipv4Net,
) -> Result<Vec<NodeModel>, ScenarioError> {
    let names: Vec<String> = match scenario.nodes.is_empty() {
        true => vec![format!("{}-node", scenario.name)],
        false => scenario.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let enforcing: Vec<bool> = match scenario.nodes.is_empty() {
        true => vec![true],
        false => scenario.nodes.iter().map(|n| n.enforce).collect(),
    };
    for (i, name) in names.iter().enumerate() {
        if scenario.nodes.is_empty() {
            break;
        }
        check_name("node", name).map_err(|p| cx.err("nodes", i, p))?;
        if names[..i].contains(name) {
            return Err(cx.err(
                "nodes",
                i,
                Problem::Duplicate {
                    kind: "node",
                    name: name.clone(),
                },
            ));
        }
        if i >= 64 {
            return Err(cx.err(
                "nodes",
                i,
                Problem::Other("the lab runs at most 64 nodes".into()),
            ));
        }
    }
    // One node has the whole pod CIDR; several split it in 2^k equal parts, at most /24 each.
    let parts_bits = (names.len() as u32).next_power_of_two().trailing_zeros();
    let prefix = match names.len() {
        1 => pod_cidr.prefix_len(),
        _ => (pod_cidr.prefix_len() + parts_bits as u8).max(24),
    };
    let count = names.len();
    let too_small = || {
        cx.err(
            "podCIDR",
            0,
            Problem::Other(format!(
                "pod CIDR {pod_cidr} is too small for {count} nodes"
            )),
        )
    };
    if prefix > 27 {
        return Err(too_small());
    }
    let mut parts = pod_cidr.subnets(prefix).map_err(|_| too_small())?;
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            Ok(NodeModel {
                name,
                ip: Ipv4Addr::from(u32::from(NODE_IP) + i as u32),
                pod_cidr: parts.next().ok_or_else(too_small)?,
                enforce: enforcing[i],
                pods: Vec::new(),
            })
        })
        .collect()
}

/// The pod and service CIDRs (the defaults unless set), each large enough for the lab.
fn cidrs(cx: &Ctx<'_>, scenario: &Scenario) -> Result<(Ipv4Net, Ipv4Net), ScenarioError> {
    let node_count = scenario.nodes.len().max(1);
    let default_pod_cidr = if node_count > 1 {
        DEFAULT_CLUSTER_POD_CIDR
    } else {
        DEFAULT_POD_CIDR
    };
    let pod_cidr = scenario
        .pod_cidr
        .unwrap_or_else(|| default_pod_cidr.parse().unwrap_or_default());
    let service_cidr = scenario
        .service_cidr
        .unwrap_or_else(|| DEFAULT_SERVICE_CIDR.parse().unwrap_or_default());
    if pod_cidr.prefix_len() > 27 {
        return Err(cx.err(
            "podCIDR",
            0,
            Problem::Other(format!("pod CIDR {pod_cidr} is too small")),
        ));
    }
    if service_cidr.prefix_len() > 27 {
        return Err(cx.err(
            "serviceCIDR",
            0,
            Problem::Other(format!("service CIDR {service_cidr} is too small")),
        ));
    }
    Ok((pod_cidr, service_cidr))
}

/// The address ranges in use (pod and service CIDRs, node addresses), checked not to overlap.
fn address_ranges(
    cx: &Ctx<'_>,
    pod_cidr: Ipv4Net,
    service_cidr: Ipv4Net,
    nodes: &[NodeModel],
) -> Result<Vec<(String, Ipv4Net)>, ScenarioError> {
    // Address ranges must not overlap.
    let mut ranges: Vec<(String, Ipv4Net)> = vec![
        ("the pod CIDR".into(), pod_cidr),
        ("the service CIDR".into(), service_cidr),
    ];
    ranges.extend(nodes.iter().map(|n| {
        (
            format!("the address of node {}", n.name),
            Ipv4Net::from(n.ip),
        )
    }));
    for (section, net) in [("podCIDR", pod_cidr), ("serviceCIDR", service_cidr)] {
        for (name, other) in &ranges {
            if *other != net && (other.contains(&net.network()) || net.contains(&other.network())) {
                return Err(cx.err(
                    section,
                    0,
                    Problem::OverlappingCidrs {
                        a: net.to_string(),
                        b: format!("{other} ({name})"),
                    },
                ));
            }
        }
    }

    Ok(ranges)
}

/// The namespaces: kube-system first, each labelled with its name.
fn namespace_models(
    cx: &Ctx<'_>,
    scenario: &Scenario,
) -> Result<Vec<NamespaceModel>, ScenarioError> {
    let mut namespaces = vec![NamespaceModel {
        name: DNS_NAMESPACE.into(),
        labels: BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            DNS_NAMESPACE.to_string(),
        )]),
    }];
    for (i, ns) in scenario.namespaces.iter().enumerate() {
        check_name("namespace", &ns.name).map_err(|p| cx.err("namespaces", i, p))?;
        if namespaces.iter().any(|n| n.name == ns.name) {
            return Err(cx.err(
                "namespaces",
                i,
                Problem::Duplicate {
                    kind: "namespace",
                    name: ns.name.clone(),
                },
            ));
        }
        let mut labels = ns.labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), ns.name.clone());
        namespaces.push(NamespaceModel {
            name: ns.name.clone(),
            labels,
        });
    }

    Ok(namespaces)
}

/// The workloads, validated, kube-dns (coredns) first; pods are placed by [`place_pods`].
fn workload_drafts(
    cx: &Ctx<'_>,
    scenario: &Scenario,
    namespaces: &[NamespaceModel],
    nodes: &[NodeModel],
) -> Result<Vec<WorkloadDraft>, ScenarioError> {
    let dns_ports = vec![
        PortModel {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
        PortModel {
            name: Some("dns-tcp".into()),
            port: 53,
            protocol: Protocol::Tcp,
        },
    ];
    let mut workload_specs: Vec<WorkloadDraft> = vec![(
        None,
        DNS_NAMESPACE.into(),
        "coredns".into(),
        WorkloadKind::Deployment,
        1,
        BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        dns_ports,
        Some(0),
    )];
    for (i, w) in scenario.workloads.iter().enumerate() {
        let draft = workload_draft(cx, i, w, namespaces, nodes, &workload_specs)?;
        workload_specs.push(draft);
    }
    Ok(workload_specs)
}

/// Scenario workload `i`, validated against the namespaces, the nodes and the `earlier`
/// workloads.
fn workload_draft(
    cx: &Ctx<'_>,
    i: usize,
    w: &super::scenario::WorkloadSpec,
    namespaces: &[NamespaceModel],
    nodes: &[NodeModel],
    earlier: &[WorkloadDraft],
) -> Result<WorkloadDraft, ScenarioError> {
    check_identity(cx, i, w, namespaces, earlier)?;
    let pinned = pinned_node(cx, i, w, nodes)?;
    if w.replicas == 0 {
        return Err(cx.err(
            "workloads",
            i,
            Problem::Other("replicas must be at least 1".into()),
        ));
    }
    check_ports(cx, i, w)?;
    Ok((
        Some(i),
        w.namespace.clone(),
        w.name.clone(),
        w.kind,
        w.replicas,
        w.labels.clone(),
        ports(&w.ports),
        pinned,
    ))
}

/// Scenario workload `i`'s name, namespace (declared), uniqueness among the `earlier`
/// workloads, and replicas of a DaemonSet or a Pod (one).
fn check_identity(
    cx: &Ctx<'_>,
    i: usize,
    w: &super::scenario::WorkloadSpec,
    namespaces: &[NamespaceModel],
    earlier: &[WorkloadDraft],
) -> Result<(), ScenarioError> {
    check_name("workload", &w.name).map_err(|p| cx.err("workloads", i, p))?;
    if !namespaces.iter().any(|n| n.name == w.namespace) {
        return Err(cx.err(
            "workloads",
            i,
            Problem::UnknownNamespace(w.namespace.clone()),
        ));
    }
    if earlier
        .iter()
        .any(|(_, ns, name, ..)| *ns == w.namespace && *name == w.name)
    {
        return Err(cx.err(
            "workloads",
            i,
            Problem::Duplicate {
                kind: "workload",
                name: format!("{}/{}", w.namespace, w.name),
            },
        ));
    }
    if matches!(w.kind, WorkloadKind::DaemonSet | WorkloadKind::Pod) && w.replicas != 1 {
        let one = match w.kind {
            WorkloadKind::DaemonSet => "exactly one pod on every node",
            _ => "exactly one pod",
        };
        return Err(cx.err(
            "workloads",
            i,
            Problem::Other(format!("a {} has {one}", w.kind)),
        ));
    }
    Ok(())
}

/// The node scenario workload `i` is pinned to (index in `nodes`), if any: not for a
/// DaemonSet, and only a declared node.
fn pinned_node(
    cx: &Ctx<'_>,
    i: usize,
    w: &super::scenario::WorkloadSpec,
    nodes: &[NodeModel],
) -> Result<Option<usize>, ScenarioError> {
    match &w.node {
        None => Ok(None),
        Some(_) if w.kind == WorkloadKind::DaemonSet => Err(cx.err(
            "workloads",
            i,
            Problem::Other("a DaemonSet runs on every node: no `node`".into()),
        )),
        Some(name) => match nodes.iter().position(|n| n.name == *name) {
            Some(n) => Ok(Some(n)),
            None => Err(cx.err(
                "workloads",
                i,
                Problem::Other(format!(
                    "unknown node `{name}` (declared: {})",
                    nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            )),
        },
    }
}

/// Scenario workload `i`'s ports: TCP or UDP only, no port/protocol and no name twice.
fn check_ports(
    cx: &Ctx<'_>,
    i: usize,
    w: &super::scenario::WorkloadSpec,
) -> Result<(), ScenarioError> {
    let mut seen = BTreeSet::new();
    for p in &w.ports {
        if !matches!(p.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(cx.err(
                "workloads",
                i,
                Problem::Other("the lab serves TCP and UDP ports only".into()),
            ));
        }
        let dup_name = p.name.as_ref().is_some_and(|n| {
            w.ports
                .iter()
                .filter(|q| q.name.as_ref() == Some(n))
                .count()
                > 1
        });
        if !seen.insert((p.port, p.protocol)) || dup_name {
            return Err(cx.err(
                "workloads",
                i,
                Problem::Duplicate {
                    kind: "port",
                    name: p.name.clone().unwrap_or_else(|| p.port.to_string()),
                },
            ));
        }
    }
    Ok(())
}

/// The pods of every workload: names as their controllers name them, addresses from their
/// node's pod CIDR, the controllers' labels.
fn place_pods(
    cx: &Ctx<'_>,
    workload_specs: Vec<WorkloadDraft>,
    nodes: &mut [NodeModel],
) -> Result<(Vec<WorkloadModel>, Vec<PodModel>), ScenarioError> {
    let mut workloads = Vec::new();
    let mut pods = Vec::new();
    let mut next_pod_ip = vec![10u32; nodes.len()];
    let mut taken: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    for (spec_index, namespace, name, kind, replicas, labels, wports, pinned) in workload_specs {
        // A DaemonSet has one pod per node.
        let replicas = match kind {
            WorkloadKind::DaemonSet => u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            _ => replicas,
        };
        let template_hash = suffix(&format!("{namespace}/{name}/template"), 10);
        let wi = workloads.len();
        let mut pod_indexes = Vec::new();
        for r in 0..replicas {
            let pod_name = pod_name(kind, (&namespace, &name), &template_hash, r, &taken);
            let node = pinned.unwrap_or(r as usize % nodes.len());
            let node_cidr = nodes[node].pod_cidr;
            let ip = nth_host(node_cidr, next_pod_ip[node]).ok_or_else(|| {
                cx.err(
                    "workloads",
                    spec_index.unwrap_or(0),
                    Problem::Other(format!(
                        "pod CIDR {node_cidr} of node {} is full",
                        nodes[node].name
                    )),
                )
            })?;
            next_pod_ip[node] += 1;
            nodes[node].pods.push(pods.len());
            let pod_labels = pod_labels(kind, &labels, &name, &template_hash, &pod_name);
            pod_indexes.push(pods.len());
            taken.insert((namespace.clone(), pod_name.clone()));
            pods.push(PodModel {
                namespace: namespace.clone(),
                name: pod_name,
                workload: wi,
                node,
                ip,
                labels: pod_labels,
                ports: wports.clone(),
            });
        }
        workloads.push(WorkloadModel {
            namespace,
            name,
            kind,
            labels,
            ports: wports,
            template_hash,
            pods: pod_indexes,
        });
    }

    Ok((workloads, pods))
}

/// The name of replica `r` of a workload (`(namespace, name)`) as its controller names it,
/// salted until no pod of the namespace has it (`taken`).
fn pod_name(
    kind: WorkloadKind,
    (namespace, name): (&String, &String),
    template_hash: &str,
    r: u32,
    taken: &std::collections::HashSet<(String, String)>,
) -> String {
    let mut pod_name = match kind {
        WorkloadKind::Deployment => format!(
            "{name}-{template_hash}-{}",
            suffix(&format!("{namespace}/{name}/{r}"), 5)
        ),
        WorkloadKind::StatefulSet => format!("{name}-{r}"),
        WorkloadKind::DaemonSet => {
            let seed = match r {
                0 => format!("{namespace}/{name}/ds"),
                _ => format!("{namespace}/{name}/ds/{r}"),
            };
            format!("{name}-{}", suffix(&seed, 5))
        }
        WorkloadKind::Job | WorkloadKind::CronJob => format!(
            "{}-{}",
            job_name(kind, name, template_hash),
            suffix(&format!("{namespace}/{name}/{r}"), 5)
        ),
        WorkloadKind::Pod => name.clone(),
    };
    let mut salt = 0;
    // A set, not a scan of the pods: 100k replicas stay linear.
    while taken.contains(&(namespace.clone(), pod_name.clone())) {
        salt += 1;
        pod_name = format!(
            "{name}-{template_hash}-{}",
            suffix(&format!("{namespace}/{name}/{r}/{salt}"), 5)
        );
    }
    pod_name
}

/// A pod's labels: its workload's, and those its controller adds (`pod-template-hash`, the
/// StatefulSet pod name, the Job name).
fn pod_labels(
    kind: WorkloadKind,
    labels: &BTreeMap<String, String>,
    name: &str,
    template_hash: &str,
    pod_name: &str,
) -> BTreeMap<String, String> {
    let mut pod_labels = labels.clone();
    match kind {
        WorkloadKind::Deployment => {
            pod_labels.insert("pod-template-hash".into(), template_hash.to_owned());
        }
        WorkloadKind::StatefulSet => {
            pod_labels.insert(
                "statefulset.kubernetes.io/pod-name".into(),
                pod_name.to_owned(),
            );
        }
        WorkloadKind::Job | WorkloadKind::CronJob => {
            let job = job_name(kind, name, template_hash);
            pod_labels.insert("batch.kubernetes.io/job-name".into(), job.clone());
            pod_labels.insert("job-name".into(), job);
        }
        _ => {}
    }
    pod_labels
}

/// A Service whose endpoints are an external's hosts: (service index, scenario index,
/// external name), linked by [`link_service_endpoints`] once the externals are known.
type ServiceEndpoints = Vec<(usize, usize, String)>;

/// The Services, kube-dns first: cluster IPs, ports, backends (every target port declared by
/// every backend).
fn service_models(
    cx: &Ctx<'_>,
    scenario: &Scenario,
    service_cidr: Ipv4Net,
    namespaces: &[NamespaceModel],
    workloads: &[WorkloadModel],
    pods: &[PodModel],
) -> Result<(Vec<ServiceModel>, ServiceEndpoints), ScenarioError> {
    let mut services = vec![dns_service(service_cidr)];
    let mut next_svc_ip = 20u32;
    let mut service_endpoints: ServiceEndpoints = Vec::new();
    for (i, s) in scenario.services.iter().enumerate() {
        check_service_name(cx, i, s, namespaces, &services)?;
        let cluster_ip = cluster_ip(
            cx,
            i,
            s,
            scenario,
            service_cidr,
            &services,
            &mut next_svc_ip,
        )?;
        let sports = service_ports(cx, i, s)?;
        let backends: Vec<usize> = (0..pods.len())
            .filter(|&pi| {
                pods[pi].namespace == s.namespace
                    && !s.selector.is_empty()
                    && matches(&s.selector, &pods[pi].labels)
            })
            .collect();
        check_target_ports(cx, i, &sports, &backends, workloads, pods)?;
        if let Some(ext) = &s.endpoints {
            check_endpoints_service(cx, i, s, &sports)?;
            service_endpoints.push((services.len(), i, ext.clone()));
        }
        services.push(ServiceModel {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            cluster_ip,
            selector: s.selector.clone(),
            ports: sports,
            backends,
            service_type: s.service_type,
            external: None,
        });
    }
    services[0].backends = workloads[0].pods.clone();
    Ok((services, service_endpoints))
}

/// The cluster DNS Service (`kube-system/kube-dns`, the range's 10th address), its backends
/// set once the workloads are known.
fn dns_service(service_cidr: Ipv4Net) -> ServiceModel {
    let port = |name: &str, protocol| ServicePortModel {
        name: Some(name.into()),
        port: 53,
        target: PortRef::Name(name.into()),
        protocol,
    };
    ServiceModel {
        namespace: DNS_NAMESPACE.into(),
        name: DNS_SERVICE.into(),
        cluster_ip: nth_host(service_cidr, 10).unwrap_or(Ipv4Addr::UNSPECIFIED),
        selector: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        ports: vec![port("dns", Protocol::Udp), port("dns-tcp", Protocol::Tcp)],
        backends: vec![],
        service_type: ServiceKind::ClusterIP,
        external: None,
    }
}

/// Scenario Service `i`'s name: valid, in a known namespace, not taken.
fn check_service_name(
    cx: &Ctx<'_>,
    i: usize,
    s: &ServiceSpec,
    namespaces: &[NamespaceModel],
    services: &[ServiceModel],
) -> Result<(), ScenarioError> {
    check_name("service", &s.name).map_err(|p| cx.err("services", i, p))?;
    if !namespaces.iter().any(|n| n.name == s.namespace) {
        return Err(cx.err(
            "services",
            i,
            Problem::UnknownNamespace(s.namespace.clone()),
        ));
    }
    if services
        .iter()
        .any(|o| o.namespace == s.namespace && o.name == s.name)
    {
        return Err(cx.err(
            "services",
            i,
            Problem::Duplicate {
                kind: "service",
                name: format!("{}/{}", s.namespace, s.name),
            },
        ));
    }
    Ok(())
}

/// Scenario Service `i`'s ports (TCP and UDP only; the target port defaults to the port).
fn service_ports(
    cx: &Ctx<'_>,
    i: usize,
    s: &ServiceSpec,
) -> Result<Vec<ServicePortModel>, ScenarioError> {
    s.ports
        .iter()
        .map(|p| match p.protocol {
            Protocol::Tcp | Protocol::Udp => Ok(ServicePortModel {
                name: p.name.clone(),
                port: p.port,
                target: p.target_port.clone().unwrap_or(PortRef::Number(p.port)),
                protocol: p.protocol,
            }),
            _ => Err(cx.err(
                "services",
                i,
                Problem::Other("the lab serves TCP and UDP ports only".into()),
            )),
        })
        .collect()
}

/// A Service with `endpoints` (an external's hosts): no selector, numeric target ports.
fn check_endpoints_service(
    cx: &Ctx<'_>,
    i: usize,
    s: &ServiceSpec,
    ports: &[ServicePortModel],
) -> Result<(), ScenarioError> {
    if !s.selector.is_empty() {
        return Err(cx.err(
            "services",
            i,
            Problem::Other(
                "a Service with `endpoints` has no selector (its endpoints are the external's hosts)"
                    .into(),
            ),
        ));
    }
    if ports.iter().any(|p| matches!(p.target, PortRef::Name(_))) {
        return Err(cx.err(
            "services",
            i,
            Problem::Other(
                "a Service with `endpoints` needs numeric targetPorts (its endpoints are not pods)"
                    .into(),
            ),
        ));
    }
    Ok(())
}

/// The cluster IP of scenario Service `i`: its own (free, in the range), the range's first
/// for `default/kubernetes` (as the API server gives it), else the next free one.
fn cluster_ip(
    cx: &Ctx<'_>,
    i: usize,
    s: &ServiceSpec,
    scenario: &Scenario,
    service_cidr: Ipv4Net,
    services: &[ServiceModel],
    next_svc_ip: &mut u32,
) -> Result<Ipv4Addr, ScenarioError> {
    Ok(match s.cluster_ip {
        Some(ip) if service_cidr.contains(&ip) && !services.iter().any(|o| o.cluster_ip == ip) => {
            ip
        }
        Some(ip) => {
            return Err(cx.err(
                "services",
                i,
                Problem::Other(format!(
                    "clusterIP {ip} is taken or outside the service CIDR {service_cidr}"
                )),
            ));
        }
        // The API server gives its own Service the first address of the range.
        None if s.namespace == "default" && s.name == "kubernetes" => {
            nth_host(service_cidr, 1).unwrap_or(Ipv4Addr::UNSPECIFIED)
        }
        None => loop {
            let ip = nth_host(service_cidr, *next_svc_ip).ok_or_else(|| {
                cx.err("services", i, Problem::Other("service CIDR is full".into()))
            })?;
            *next_svc_ip += 1;
            if !services.iter().any(|o| o.cluster_ip == ip)
                && scenario.services.iter().all(|o| o.cluster_ip != Some(ip))
            {
                break ip;
            }
        },
    })
}

/// Every target port of scenario Service `i` must be declared by every backend.
fn check_target_ports(
    cx: &Ctx<'_>,
    i: usize,
    sports: &[ServicePortModel],
    backends: &[usize],
    workloads: &[WorkloadModel],
    pods: &[PodModel],
) -> Result<(), ScenarioError> {
    for sp in sports {
        for &b in backends {
            let pod = &pods[b];
            let declared = match sp.target_on(pod) {
                Some(n) => pod
                    .ports
                    .iter()
                    .any(|p| p.port == n && p.protocol == sp.protocol),
                None => false,
            };
            if !declared {
                return Err(cx.err(
                    "services",
                    i,
                    Problem::UndeclaredPort {
                        target: format!("{}/{}", pod.namespace, workloads[pod.workload].name),
                        port: sp.target.to_string(),
                        protocol: protocol_name(sp.protocol),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// The externals (their ranges join `ranges`, which they must not overlap) and their
/// rotation steps: to another host of the external, or to another external.
fn external_models(
    cx: &Ctx<'_>,
    scenario: &Scenario,
    ranges: &mut Vec<(String, Ipv4Net)>,
) -> Result<Vec<ExternalModel>, ScenarioError> {
    let mut externals: Vec<ExternalModel> = Vec::new();
    for (i, e) in scenario.externals.iter().enumerate() {
        check_name("external", &e.name).map_err(|p| cx.err("externals", i, p))?;
        if externals.iter().any(|o| o.name == e.name) || e.name.contains('/') {
            return Err(cx.err(
                "externals",
                i,
                Problem::Duplicate {
                    kind: "external",
                    name: e.name.clone(),
                },
            ));
        }
        for (name, other) in ranges.iter() {
            if other.contains(&e.cidr.network()) || e.cidr.contains(&other.network()) {
                return Err(cx.err(
                    "externals",
                    i,
                    Problem::OverlappingCidrs {
                        a: e.cidr.to_string(),
                        b: format!("{other} ({name})"),
                    },
                ));
            }
        }
        let hosts: Option<Vec<Ipv4Addr>> = (1..=e.hosts).map(|n| nth_host(e.cidr, n)).collect();
        let hosts = match hosts {
            Some(h) if !h.is_empty() && e.hosts <= 16 => h,
            _ => {
                return Err(cx.err(
                    "externals",
                    i,
                    Problem::Other(format!(
                        "{} hosts do not fit in {} (1 to 16 hosts)",
                        e.hosts, e.cidr
                    )),
                ));
            }
        };
        for p in &e.ports {
            if !matches!(p.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(cx.err(
                    "externals",
                    i,
                    Problem::Other("the lab serves TCP and UDP ports only".into()),
                ));
            }
        }
        let ttl = names::check_external(e, &externals).map_err(|p| cx.err("externals", i, p))?;
        ranges.push((format!("external {}", e.name), e.cidr));
        externals.push(ExternalModel {
            name: e.name.clone(),
            cidr: e.cidr,
            anonymous: e.anonymous,
            ports: ports(&e.ports),
            hosts,
            dns: e.dns.clone(),
            ttl,
            rotate_to: None,
        });
    }

    for (i, e) in scenario.externals.iter().enumerate() {
        externals[i].rotate_to =
            names::rotation_target(e, i, &externals).map_err(|p| cx.err("externals", i, p))?;
    }

    Ok(externals)
}

/// Services whose endpoints are an external's hosts: the external must serve the ports.
fn link_service_endpoints(
    cx: &Ctx<'_>,
    service_endpoints: ServiceEndpoints,
    services: &mut [ServiceModel],
    externals: &[ExternalModel],
) -> Result<(), ScenarioError> {
    for (si, i, name) in service_endpoints {
        let Some(e) = externals.iter().position(|x| x.name == name) else {
            return Err(cx.err("services", i, Problem::UnknownExternal(name)));
        };
        for sp in &services[si].ports {
            let n = sp.target_number();
            if !externals[e]
                .ports
                .iter()
                .any(|p| p.port == n && p.protocol == sp.protocol)
            {
                return Err(cx.err(
                    "services",
                    i,
                    Problem::UndeclaredPort {
                        target: name,
                        port: n.to_string(),
                        protocol: protocol_name(sp.protocol),
                    },
                ));
            }
        }
        services[si].external = Some(e);
    }

    Ok(())
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl LabModel {
    /// Validates `scenario` (read from `path`, whose `text` locates errors) and resolves it.
    pub fn build(path: &Path, text: &str, scenario: &Scenario) -> Result<LabModel, ScenarioError> {
        let cx = Ctx { path, text };
        let (pod_cidr, service_cidr) = cidrs(&cx, scenario)?;
        let mut nodes = node_models(&cx, scenario, pod_cidr)?;
        let mut ranges = address_ranges(&cx, pod_cidr, service_cidr, &nodes)?;
        let namespaces = namespace_models(&cx, scenario)?;
        let drafts = workload_drafts(&cx, scenario, &namespaces, &nodes)?;
        let (workloads, pods) = place_pods(&cx, drafts, &mut nodes)?;
        let (mut services, service_endpoints) =
            service_models(&cx, scenario, service_cidr, &namespaces, &workloads, &pods)?;
        let externals = external_models(&cx, scenario, &mut ranges)?;
        link_service_endpoints(&cx, service_endpoints, &mut services, &externals)?;
        let mut model = LabModel {
            name: scenario.name.clone(),
            nodes,
            pod_cidr,
            service_cidr,
            namespaces,
            workloads,
            pods,
            services,
            externals,
            probes: Vec::new(),
        };
        for (section, kind, list) in [
            ("traffic", ProbeKind::Traffic, &scenario.traffic),
            ("forbidden", ProbeKind::Forbidden, &scenario.forbidden),
        ] {
            for (i, t) in list.iter().enumerate() {
                let probe = model
                    .resolve_probe(t, kind)
                    .map_err(|p| cx.err(section, i, p))?;
                let probe = ProbeModel {
                    line: entry_line(cx.text, section, i).unwrap_or(0),
                    ..probe
                };
                model.probes.push(probe);
            }
        }
        Ok(model)
    }

    fn peer(&self, text: &str, as_target: bool) -> Result<PeerRef, Problem> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            ["svc", ns, name] if as_target => {
                if !self.namespaces.iter().any(|n| n.name == *ns) {
                    return Err(Problem::UnknownNamespace((*ns).into()));
                }
                self.services
                    .iter()
                    .position(|s| s.namespace == *ns && s.name == *name)
                    .map(PeerRef::Service)
                    .ok_or_else(|| Problem::UnknownService(format!("{ns}/{name}")))
            }
            [ns, name] => {
                if !self.namespaces.iter().any(|n| n.name == *ns) {
                    return Err(Problem::UnknownNamespace((*ns).into()));
                }
                self.workloads
                    .iter()
                    .position(|w| w.namespace == *ns && w.name == *name)
                    .map(PeerRef::Workload)
                    .ok_or_else(|| Problem::UnknownWorkload(text.into()))
            }
            [name] => self
                .externals
                .iter()
                .position(|e| e.name == *name || e.dns.iter().any(|n| n == name))
                .map(PeerRef::External)
                .ok_or_else(|| Problem::UnknownExternal(text.into())),
            _ => Err(Problem::Other(format!(
                "`{text}` is not `ns/workload`, `svc/ns/name` or an external name"
            ))),
        }
    }

    fn resolve_probe(&self, t: &TrafficSpec, kind: ProbeKind) -> Result<ProbeModel, Problem> {
        let source = self.peer(&t.from, false)?;
        let target = self.peer(&t.to, true)?;
        if t.connections == 0 || t.connections > 1000 {
            return Err(Problem::Other(
                "connections must be between 1 and 1000".into(),
            ));
        }
        let undeclared = |protocol: Option<Protocol>| Problem::UndeclaredPort {
            target: t.to.clone(),
            port: t.port.to_string(),
            protocol: protocol_name(protocol.unwrap_or(Protocol::Tcp)),
        };
        let (port, protocol) = match target {
            PeerRef::Service(s) => {
                let svc = &self.services[s];
                let found = svc.ports.iter().find(|p| {
                    t.protocol.is_none_or(|proto| proto == p.protocol)
                        && match &t.port {
                            PortRef::Number(n) => p.port == *n,
                            PortRef::Name(n) => p.name.as_deref() == Some(n),
                        }
                });
                let p = found.ok_or_else(|| undeclared(t.protocol))?;
                (p.port, p.protocol)
            }
            PeerRef::Workload(w) => find_port(&self.workloads[w].ports, &t.port, t.protocol)
                .ok_or_else(|| undeclared(t.protocol))?,
            PeerRef::External(e) => find_port(&self.externals[e].ports, &t.port, t.protocol)
                .ok_or_else(|| undeclared(t.protocol))?,
        };
        if let PeerRef::Service(s) = target
            && self.services[s].backends.is_empty()
            && self.services[s].external.is_none()
            && kind == ProbeKind::Traffic
        {
            return Err(Problem::Other(format!(
                "service `{}` selects no pod, the traffic cannot succeed",
                t.to
            )));
        }
        Ok(ProbeModel {
            kind,
            from: t.from.clone(),
            to: t.to.clone(),
            source,
            target,
            port,
            protocol,
            connections: t.connections,
            line: 0,
        })
    }

    /// The DNS service (`kube-system/kube-dns`).
    pub fn dns_service(&self) -> &ServiceModel {
        &self.services[0]
    }

    /// The workload of a pod.
    pub fn workload_of(&self, pod: &PodModel) -> &WorkloadModel {
        &self.workloads[pod.workload]
    }

    /// The pod holding `ip`.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodModel> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Labels of a namespace (empty when unknown).
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.labels.clone())
            .unwrap_or_default()
    }
}

fn find_port(
    ports: &[PortModel],
    port: &PortRef,
    protocol: Option<Protocol>,
) -> Option<(u16, Protocol)> {
    ports
        .iter()
        .find(|p| {
            protocol.is_none_or(|proto| proto == p.protocol)
                && match port {
                    PortRef::Number(n) => p.port == *n,
                    PortRef::Name(n) => p.name.as_deref() == Some(n),
                }
        })
        .map(|p| (p.port, p.protocol))
}

/// `TCP`/`UDP`/... as written in Kubernetes objects.
pub(crate) fn protocol_name(protocol: Protocol) -> String {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
        Protocol::Icmp => "ICMP",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    const BASE: &str = "name: t
namespaces:
  - {name: shop}
workloads:
  - {namespace: shop, name: web, replicas: 2, labels: {app: web}, ports: [{name: http, port: 8080}]}
  - {namespace: shop, name: api, labels: {app: api}, ports: [{name: api, port: 9000}, {name: stats, port: 9100, protocol: UDP}]}
services:
  - {namespace: shop, name: api, selector: {app: api}, ports: [{port: 80, targetPort: api}]}
externals:
  - {name: db, cidr: 10.0.2.0/24, ports: [{port: 5432}]}
traffic:
  - {from: db, to: shop/web, port: http}
  - {from: shop/web, to: svc/shop/api, port: 80, connections: 3}
";

    fn build(text: &str) -> Result<LabModel, ScenarioError> {
        let path = Path::new("t.yaml");
        let s = parse(path, text)?;
        LabModel::build(path, text, &s)
    }

    fn problem(text: &str) -> (usize, Problem) {
        match build(text) {
            Err(ScenarioError::Invalid { line, problem, .. }) => (line, *problem),
            other => panic!("expected an invalid scenario, got {other:?}"),
        }
    }

    /// 100k replicas resolve in linear time (the pod-name check scanned every pod before: a
    /// quadratic build that did not finish in 90 s).
    #[test]
    fn a_hundred_thousand_replicas_resolve() {
        let text = BASE
            .replacen("name: t\n", "name: t\npodCIDR: 10.128.0.0/14\n", 1)
            .replace("replicas: 2,", "replicas: 100000,");
        let m = build(&text).unwrap();
        assert_eq!(m.pods.len(), 100_002);
        let names: std::collections::HashSet<(&str, &str)> = m
            .pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(names.len(), m.pods.len(), "pod names are unique");
    }

    #[test]
    fn resolves_pods_services_and_probes() {
        let m = build(BASE).unwrap();
        assert_eq!(m.pods.len(), 4); // coredns + 2 web + api
        assert_eq!(m.pods[0].name.split('-').next(), Some("coredns"));
        assert_eq!(m.pods[0].ip, Ipv4Addr::new(10, 244, 0, 10));
        assert_eq!(m.dns_service().cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(m.services[1].cluster_ip, Ipv4Addr::new(10, 96, 0, 20));
        assert_eq!(m.services[1].backends, vec![3]);
        assert_eq!(m.services[1].ports[0].target_on(&m.pods[3]), Some(9000));
        assert_eq!(m.externals[0].hosts, vec![Ipv4Addr::new(10, 0, 2, 1)]);
        assert_eq!(m.probes[0].port, 8080);
        assert_eq!(m.probes[0].line, 12);
        assert_eq!(m.probes[1].connections, 3);
        assert_eq!(m.probes[1].target, PeerRef::Service(1));
        let web = &m.workloads[1];
        assert_eq!(
            m.pods[web.pods[0]].labels.get("pod-template-hash"),
            Some(&web.template_hash)
        );
        assert!(
            m.pods[web.pods[0]]
                .name
                .starts_with(&format!("web-{}-", web.template_hash))
        );
    }

    #[test]
    fn unknown_workload_names_the_line() {
        let (line, p) = problem(&format!(
            "{BASE}  - {{from: shop/wbe, to: shop/api, port: 9000}}\n"
        ));
        assert_eq!(line, 14);
        assert_eq!(p, Problem::UnknownWorkload("shop/wbe".into()));
    }

    #[test]
    fn unknown_namespace_in_traffic_and_workloads() {
        let (line, p) = problem(&format!(
            "{BASE}  - {{from: nope/web, to: shop/api, port: 9000}}\n"
        ));
        assert_eq!((line, p), (14, Problem::UnknownNamespace("nope".into())));
        let text = BASE.replace(
            "{namespace: shop, name: api,",
            "{namespace: other, name: api,",
        );
        let (line, p) = problem(&text);
        assert_eq!((line, p), (6, Problem::UnknownNamespace("other".into())));
    }

    #[test]
    fn unknown_service_and_external() {
        let (line, p) = problem(&format!(
            "{BASE}forbidden:\n  - {{from: shop/web, to: svc/shop/db, port: 80}}\n"
        ));
        assert_eq!((line, p), (15, Problem::UnknownService("shop/db".into())));
        let (line, p) = problem(&format!(
            "{BASE}  - {{from: internet, to: shop/web, port: 8080}}\n"
        ));
        assert_eq!((line, p), (14, Problem::UnknownExternal("internet".into())));
    }

    #[test]
    fn undeclared_ports() {
        let (line, p) = problem(&format!(
            "{BASE}  - {{from: shop/web, to: shop/api, port: 9001}}\n"
        ));
        assert_eq!(line, 14);
        assert!(
            matches!(p, Problem::UndeclaredPort { ref port, .. } if port == "9001"),
            "{p:?}"
        );
        // Named port with the wrong protocol.
        let (_, p) = problem(&format!(
            "{BASE}  - {{from: shop/web, to: shop/api, port: stats, protocol: TCP}}\n"
        ));
        assert!(matches!(p, Problem::UndeclaredPort { .. }), "{p:?}");
        // A service port that is not declared.
        let (_, p) = problem(&format!(
            "{BASE}  - {{from: shop/web, to: svc/shop/api, port: 81}}\n"
        ));
        assert!(matches!(p, Problem::UndeclaredPort { .. }), "{p:?}");
        // A service whose targetPort the backends do not declare.
        let text = BASE.replace("targetPort: api", "targetPort: grpc");
        let (line, p) = problem(&text);
        assert_eq!(line, 8);
        assert!(
            matches!(p, Problem::UndeclaredPort { ref port, .. } if port == "grpc"),
            "{p:?}"
        );
        // UDP by name resolves the protocol.
        let m = build(&format!(
            "{BASE}  - {{from: shop/web, to: shop/api, port: stats}}\n"
        ))
        .unwrap();
        assert_eq!(m.probes[2].protocol, Protocol::Udp);
    }

    #[test]
    fn overlapping_cidrs() {
        let text = BASE.replace(
            "externals:\n",
            "externals:\n  - {name: pods, cidr: 10.244.0.128/25}\n",
        );
        let (line, p) = problem(&text);
        assert_eq!(line, 10);
        assert!(matches!(p, Problem::OverlappingCidrs { .. }), "{p:?}");
        let text = BASE.replace(
            "externals:\n",
            "externals:\n  - {name: a, cidr: 10.0.0.0/16}\n",
        );
        let (line, p) = problem(&text);
        assert_eq!(line, 11, "the second, overlapping entry");
        assert!(matches!(p, Problem::OverlappingCidrs { .. }), "{p:?}");
    }

    /// Nodes: each its part of the pod CIDR and its address; replicas spread in order,
    /// `node` pins a workload, a DaemonSet has a pod on every node, kube-dns is on the first.
    #[test]
    fn nodes_place_pods_and_split_the_pod_cidr() {
        let text = "name: t
nodes: [{name: n1}, {name: n2}, {name: n3}]
namespaces: [{name: a}]
workloads:
  - {namespace: a, name: web, replicas: 4, labels: {app: web}}
  - {namespace: a, name: db, kind: StatefulSet, replicas: 2, labels: {app: db}, node: n3}
  - {namespace: a, name: agent, kind: DaemonSet, labels: {app: agent}}
";
        let s = parse(Path::new("t"), text).unwrap();
        let m = LabModel::build(Path::new("t"), text, &s).unwrap();
        let cidrs: Vec<String> = m.nodes.iter().map(|n| n.pod_cidr.to_string()).collect();
        assert_eq!(cidrs, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
        let ips: Vec<String> = m.nodes.iter().map(|n| n.ip.to_string()).collect();
        assert_eq!(ips, ["172.31.0.1", "172.31.0.2", "172.31.0.3"]);
        let placed = |w: &str| -> Vec<(usize, String)> {
            let w = m.workloads.iter().find(|x| x.name == w).unwrap();
            w.pods
                .iter()
                .map(|&p| (m.pods[p].node, m.pods[p].ip.to_string()))
                .collect()
        };
        assert_eq!(placed("coredns"), [(0, "10.244.0.10".to_string())]);
        let web: Vec<usize> = placed("web").into_iter().map(|p| p.0).collect();
        assert_eq!(web, [0, 1, 2, 0]);
        assert!(
            placed("db")
                .iter()
                .all(|p| p.0 == 2 && p.1.starts_with("10.244.2."))
        );
        let agent: Vec<usize> = placed("agent").into_iter().map(|p| p.0).collect();
        assert_eq!(agent, [0, 1, 2]);
        for (i, n) in m.nodes.iter().enumerate() {
            assert!(
                n.pods
                    .iter()
                    .all(|&p| m.pods[p].node == i && n.pod_cidr.contains(&m.pods[p].ip))
            );
        }
        // The inventory says where every pod runs.
        let yaml = crate::inventory::to_yaml(&m).unwrap();
        let inv = netpol_observe_agent::inventory::Inventory::from_yaml_str(&yaml, "lab").unwrap();
        assert_eq!(inv.nodes.len(), 3);
        // Errors name the entry.
        for (bad, want) in [
            (text.replace("node: n3}", "node: n9}"), "unknown node `n9`"),
            (
                text.replace("labels: {app: agent}}", "labels: {app: agent}, node: n1}"),
                "DaemonSet runs on every node",
            ),
            (
                text.replace("{name: n3}", "{name: n2}"),
                "duplicate node `n2`",
            ),
            (
                text.replace("name: t\n", "name: t\npodCIDR: 10.244.0.0/26\n"),
                "too small for 3 nodes",
            ),
        ] {
            let s = parse(Path::new("t"), &bad).unwrap();
            let err = LabModel::build(Path::new("t"), &bad, &s)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn duplicates() {
        let text = BASE.replace(
            "  - {namespace: shop, name: api,",
            "  - {namespace: shop, name: web,",
        );
        let (line, p) = problem(&text);
        assert_eq!(
            (line, p),
            (
                6,
                Problem::Duplicate {
                    kind: "workload",
                    name: "shop/web".into()
                }
            )
        );
        let text = BASE.replace("  - {name: shop}\n", "  - {name: shop}\n  - {name: shop}\n");
        let (line, p) = problem(&text);
        assert_eq!(
            (line, p),
            (
                4,
                Problem::Duplicate {
                    kind: "namespace",
                    name: "shop".into()
                }
            )
        );
        let text = BASE.replace(
            "externals:\n",
            "externals:\n  - {name: db, cidr: 10.9.0.0/24}\n",
        );
        let (line, p) = problem(&text);
        assert_eq!(
            (line, p),
            (
                11,
                Problem::Duplicate {
                    kind: "external",
                    name: "db".into()
                }
            )
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        let text = BASE.replace("name: web, replicas: 2", "name: Web_1, replicas: 2");
        let (line, p) = problem(&text);
        assert_eq!(line, 5);
        assert!(
            matches!(p, Problem::Other(ref m) if m.contains("`Web_1` is not a DNS label")),
            "{p:?}"
        );
    }

    #[test]
    fn error_message_names_file_line_and_entry() {
        let err = build(&format!(
            "{BASE}  - {{from: shop/wbe, to: shop/api, port: 9000}}\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:14: traffic[2]: unknown workload `shop/wbe`"
        );
    }
}
