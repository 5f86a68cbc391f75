//! Aggregation of attributed flows into workload-level edges: who talked to whom, on which
//! (backend) port and protocol, how often and when. Borrowed from the flows, so a million
//! flows cost a few hash lookups each and no allocation.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use jiff::Timestamp;

use crate::{
    attribution::Attributor,
    flow::{Endpoint, FlowRecord, Protocol},
};

/// Selector labels as flow records carry them.
pub(crate) type Labels = BTreeMap<String, String>;

/// The node-local DNS cache address (the NodeLocal DNSCache default).
pub const NODE_LOCAL_DNS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 20, 10));

/// Cloud metadata endpoints (AWS/GCP/Azure/OpenStack `169.254.169.254`, AWS IPv6
/// `fd00:ec2::254`, Alibaba `100.100.100.200`): written as observed, never aggregated.
pub const CLOUD_METADATA: &[IpAddr] = &[
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
];

/// What a platform address outside the cluster is (node-local DNS, a cloud metadata
/// endpoint, another link-local address), or `None` for an ordinary address. Such addresses
/// are written as observed hosts and named in the `platform` annotation.
pub(crate) fn platform_address(ip: IpAddr) -> Option<&'static str> {
    if ip == NODE_LOCAL_DNS {
        Some("node-local DNS")
    } else if CLOUD_METADATA.contains(&ip) {
        Some("cloud metadata endpoint")
    } else if is_link_local(ip) {
        Some("link-local address")
    } else {
        None
    }
}

/// Names (Service, workload, `k8s-app` label) under which cluster DNS servers run.
const DNS_NAMES: &[&str] = &["kube-dns", "coredns", "node-local-dns"];

/// Number of flows and first/last seen: the evidence of an edge, a workload, a namespace or
/// the whole input (the observation window).
///
/// Only counted records are evidence. A record marked `counted: false` is one agent's view
/// of a flow that another agent counts (a flow between two nodes is seen on both): it gives
/// its rules, but neither a count nor times, so each flow counts once and the annotations of
/// several agents' records are those of one node seeing everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) flows: u64,
    pub(crate) first: Option<Timestamp>,
    pub(crate) last: Option<Timestamp>,
}

impl Span {
    pub(crate) fn add_flow(&mut self, f: &FlowRecord) {
        if !f.counted {
            return;
        }
        self.flows += f.connections.unwrap_or(1);
        let first = f.seen_at();
        let last = f.last_seen.or(f.first_seen);
        if let Some(t) = first {
            self.first = Some(self.first.map_or(t, |c| c.min(t)));
        }
        if let Some(t) = last {
            self.last = Some(self.last.map_or(t, |c| c.max(t)));
        }
    }

    pub(crate) fn merge(&mut self, other: &Span) {
        self.flows += other.flows;
        if let Some(t) = other.first {
            self.first = Some(self.first.map_or(t, |c| c.min(t)));
        }
        if let Some(t) = other.last {
            self.last = Some(self.last.map_or(t, |c| c.max(t)));
        }
    }

    /// Seconds between first and last seen.
    pub(crate) fn seconds(&self) -> Option<i64> {
        Some(self.last?.duration_since(self.first?).as_secs())
    }
}

/// A workload seen in the flows.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadObs<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) name: &'a str,
    /// The stable selector labels (from the flow records' `labels`).
    pub(crate) selector: Option<&'a Labels>,
    pub(crate) pods: HashSet<&'a str>,
    pub(crate) ips: BTreeSet<IpAddr>,
    pub(crate) span: Span,
}

/// One side of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum PeerKey<'a> {
    /// A workload (index into [`Observations::workloads`]).
    Workload(u32),
    /// A node (or a hostNetwork pod), by name and address.
    Node(&'a str, IpAddr),
    /// An address outside the cluster: subnet name (`private`, `world` or a named subnet).
    External(&'a str, IpAddr),
    /// The address endpoints of a Service without selector (`namespace`, `name`): the API
    /// server behind `default/kubernetes`, a database registered as a Service… Written as
    /// their addresses and endpoint ports.
    Endpoints(&'a str, &'a str),
}

/// A workload-level connection: client, server, protocol and the port the server receives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EdgeKey<'a> {
    pub(crate) client: PeerKey<'a>,
    pub(crate) server: PeerKey<'a>,
    pub(crate) protocol: Protocol,
    pub(crate) port: Option<u16>,
    /// A name lookup to a cluster or link-local DNS server.
    pub(crate) dns: bool,
}

/// What backs an edge.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EdgeObs {
    pub(crate) span: Span,
    /// Index of one flow of this edge (for the self-check).
    pub(crate) example: usize,
}

/// Everything the policy builder needs, borrowed from the flows.
#[derive(Debug, Default)]
pub(crate) struct Observations<'a> {
    pub(crate) workloads: Vec<WorkloadObs<'a>>,
    index: HashMap<(&'a str, &'a str, &'a str), u32>,
    pub(crate) edges: HashMap<EdgeKey<'a>, EdgeObs>,
    pub(crate) window: Span,
    /// Flows left out (no rule can be written for them), by reason (for the notes).
    pub(crate) skipped: BTreeMap<String, u64>,
    /// Flows that need no rule (a pod's traffic to itself or with its own node), by reason.
    pub(crate) implicit: BTreeMap<&'static str, u64>,
    /// One flow (index) per distinct (protocol, source, destination, port) of the left-out
    /// and implicit flows, with the reason: the self-check evaluates each.
    pub(crate) unruled: Vec<(usize, String)>,
    unruled_seen: HashSet<(Protocol, IpAddr, IpAddr, Option<u16>)>,
    /// Per edge to an address outside the cluster: the DNS names its clients resolved to it
    /// (`dst.dns_names`).
    pub(crate) names: HashMap<EdgeKey<'a>, BTreeSet<&'a str>>,
    /// Per workload: the (protocol, port) of its traffic to its own node (implicit in
    /// NetworkPolicy; Cilium needs a rule to its `host`).
    pub(crate) own_node_egress: BTreeMap<u32, BTreeSet<(Protocol, Option<u16>)>>,
    /// The records the flow being added stands for.
    weight: u64,
}

/// Reason of the implicit flows between a pod and its own node.
pub(crate) const OWN_NODE: &str =
    "traffic between a pod and its own node (kubelet probes), always allowed";
/// Reason of the implicit flows of a pod to itself.
pub(crate) const SELF_TRAFFIC: &str = "a pod's traffic to itself, always allowed";

impl<'a> Observations<'a> {
    /// Aggregates attributed `flows`, except those `excluded` (`excluded[i]`; empty: none),
    /// which only widen the observation window; `attributor` gives backend ports and pod
    /// nodes. `endpoints(ns, name)`: whether the Service has address endpoints (no selector,
    /// EndpointSlice addresses that are not pods).
    ///
    /// `weights[i]`: the records `flows[i]` stands for (empty: one each), for the counts of
    /// left-out and implicit flows; the other evidence comes from the records' own fields.
    pub(crate) fn collect(
        flows: &'a [FlowRecord],
        excluded: &[bool],
        weights: &[u64],
        attributor: &Attributor,
        endpoints: &dyn Fn(&str, &str) -> bool,
    ) -> Self {
        let mut obs = Observations::default();
        for (i, f) in flows.iter().enumerate() {
            obs.window.add_flow(f);
            if excluded.get(i).copied().unwrap_or(false) {
                continue;
            }
            obs.weight = weights.get(i).copied().unwrap_or(1);
            obs.add(i, f, attributor, endpoints);
        }
        obs
    }

    fn note_unruled(&mut self, i: usize, f: &FlowRecord, reason: &str) {
        if self
            .unruled_seen
            .insert((f.protocol, f.src.ip, f.dst.ip, f.dst.port))
        {
            self.unruled.push((i, reason.to_owned()));
        }
    }

    // Left-out and implicit flows are counted once too (`counted: false` records aside), but
    // every record is evaluated by the self-check.
    fn skip(&mut self, i: usize, f: &FlowRecord, reason: String) {
        self.note_unruled(i, f, &reason);
        *self.skipped.entry(reason).or_default() += u64::from(f.counted) * self.weight;
    }

    fn implicit(&mut self, i: usize, f: &FlowRecord, reason: &'static str) {
        self.note_unruled(i, f, reason);
        *self.implicit.entry(reason).or_default() += u64::from(f.counted) * self.weight;
    }

    fn add(
        &mut self,
        i: usize,
        f: &'a FlowRecord,
        attributor: &Attributor,
        endpoints: &dyn Fn(&str, &str) -> bool,
    ) {
        let Some(client) = self.peer(&f.src, true) else {
            self.skip(i, f, format!("source {} not attributed", f.src.ip));
            return;
        };
        let server = match self.peer(&f.dst, f.dst.service.is_none()) {
            Some(server) => server,
            None => match &f.dst.service {
                Some(s) if endpoints(&s.namespace, &s.name) => {
                    PeerKey::Endpoints(&s.namespace, &s.name)
                }
                Some(s) => {
                    self.skip(
                        i,
                        f,
                        format!(
                            "Service {}/{} has no backend pod and no endpoint address in the inventory",
                            s.namespace, s.name
                        ),
                    );
                    return;
                }
                None => {
                    self.skip(i, f, format!("destination {} not attributed", f.dst.ip));
                    return;
                }
            },
        };
        if client == server && f.src.pod.is_some() && f.src.pod == f.dst.pod {
            // A pod's traffic to itself is always allowed.
            self.implicit(i, f, SELF_TRAFFIC);
            return;
        }
        let at = f.seen_at();
        let own_node = match (client, server) {
            (PeerKey::Node(node, _), PeerKey::Workload(_)) => {
                pod_node(&f.dst, attributor, at).is_some_and(|n| n == node)
            }
            (PeerKey::Workload(_), PeerKey::Node(node, _)) => {
                pod_node(&f.src, attributor, at).is_some_and(|n| n == node)
            }
            _ => false,
        };
        if own_node {
            // Traffic between a pod and its own node (kubelet probes) is always allowed.
            if let (PeerKey::Workload(w), PeerKey::Node(..)) = (client, server) {
                let port = f.dst.port.filter(|_| f.protocol.has_ports());
                self.own_node_egress
                    .entry(w)
                    .or_default()
                    .insert((f.protocol, port));
            }
            self.implicit(i, f, OWN_NODE);
            return;
        }
        let port = if matches!(server, PeerKey::Endpoints(..)) {
            f.dst.port // the Service port; the builder maps it to the endpoints' port
        } else if f.protocol.has_ports() {
            attributor.backend_port(f)
        } else {
            None
        };
        let key = EdgeKey {
            client,
            server,
            protocol: f.protocol,
            port,
            dns: is_dns(f),
        };
        if matches!(server, PeerKey::External(..)) && !f.dst.dns_names.is_empty() {
            self.names
                .entry(key)
                .or_default()
                .extend(f.dst.dns_names.iter().map(String::as_str));
        }
        self.edges
            .entry(key)
            .or_insert_with(|| EdgeObs {
                span: Span::default(),
                example: i,
            })
            .span
            .add_flow(f);
        for p in [client, server] {
            if let PeerKey::Workload(w) = p {
                self.workloads[w as usize].span.add_flow(f);
            }
        }
    }

    /// The peer of an endpoint (interning workloads); `own_ip`: the address is the pod's.
    fn peer(&mut self, ep: &'a Endpoint, own_ip: bool) -> Option<PeerKey<'a>> {
        if let Some(ns) = ep.namespace.as_deref() {
            let (kind, name) = match (&ep.workload, &ep.pod) {
                (Some(w), _) => (w.kind.as_str(), w.name.as_str()),
                (None, Some(p)) => ("Pod", p.as_str()),
                (None, None) => return None,
            };
            let next = u32::try_from(self.workloads.len()).unwrap_or(u32::MAX);
            let idx = *self.index.entry((ns, kind, name)).or_insert(next);
            if idx == next {
                self.workloads.push(WorkloadObs {
                    namespace: ns,
                    kind,
                    name,
                    selector: None,
                    pods: HashSet::new(),
                    ips: BTreeSet::new(),
                    span: Span::default(),
                });
            }
            let w = &mut self.workloads[idx as usize];
            if w.selector.is_none_or(|s| s.is_empty())
                && let Some(l) = &ep.labels
            {
                w.selector = Some(l);
            }
            if let Some(p) = ep.pod.as_deref() {
                w.pods.insert(p);
            }
            if own_ip {
                w.ips.insert(ep.ip);
            }
            return Some(PeerKey::Workload(idx));
        }
        if let Some(node) = ep.node.as_deref() {
            return Some(PeerKey::Node(node, ep.ip));
        }
        ep.subnet.as_deref().map(|s| PeerKey::External(s, ep.ip))
    }
}

fn pod_node<'x>(
    ep: &Endpoint,
    attributor: &'x Attributor,
    at: Option<Timestamp>,
) -> Option<&'x str> {
    let pod = attributor.pod_by_name(ep.namespace.as_deref()?, ep.pod.as_deref()?, at)?;
    pod.node_name.as_deref()
}

/// Whether the flow is a name lookup: port 53 (TCP/UDP) to kube-dns/CoreDNS (by Service,
/// workload or `k8s-app` label), to the node-local DNS address or to a link-local resolver.
pub(crate) fn is_dns(f: &FlowRecord) -> bool {
    if !matches!(f.protocol, Protocol::Udp | Protocol::Tcp) || f.dst.port != Some(53) {
        return false;
    }
    let d = &f.dst;
    d.service
        .as_ref()
        .is_some_and(|s| DNS_NAMES.contains(&s.name.as_str()))
        || d.workload
            .as_ref()
            .is_some_and(|w| DNS_NAMES.contains(&w.name.as_str()))
        || d.labels.as_ref().is_some_and(|l| {
            l.get("k8s-app")
                .is_some_and(|v| DNS_NAMES.contains(&v.as_str()))
        })
        || d.ip == NODE_LOCAL_DNS
        || is_link_local(d.ip)
}

/// `169.254.0.0/16` or `fe80::/10`.
pub(crate) fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}
