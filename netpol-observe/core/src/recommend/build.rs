//! From [`Observations`] to NetworkPolicies: a default-deny per namespace, one policy per
//! workload whose rules are exactly the observed edges (plus the documented aggregations).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::LabelSelector, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};

use super::{
    PublicIngress, RecommendConfig, annotations,
    cidr::{aggregate, world_except},
    dns_names::{self, PolicyHints, RulePort},
    observe::{EdgeKey, Labels, Observations, PeerKey, Span, WorkloadObs, platform_address},
};
use crate::{
    attribution::Subnets,
    flow::Protocol,
    inventory::{AddressEndpoints, ContainerPortInfo, ServiceType},
};

/// Label key of the namespace name, set on every namespace by the API server.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A peer as it will be written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeerSpec {
    /// Pods by selector; `namespace` is `None` for the policy's own namespace.
    Pods {
        namespace: Option<String>,
        labels: Labels,
    },
    /// An address block.
    Block { cidr: IpNet, except: Vec<IpNet> },
}

/// A port as it will be written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortVal {
    Number(u16),
    Name(String),
}

/// The ports of one peer: `None` = every port and protocol (ICMP, which NetworkPolicy cannot
/// name), else `(protocol, port)` pairs.
type PortSet = Option<BTreeSet<(Protocol, PortVal)>>;

/// What the builder reads besides the observations.
pub(crate) struct Context<'c> {
    pub(crate) config: &'c RecommendConfig,
    pub(crate) subnets: &'c Subnets,
    /// Container ports per workload `(namespace, kind, name)`.
    pub(crate) ports: &'c HashMap<(String, String, String), Vec<ContainerPortInfo>>,
    /// Pod, service and extra cluster ranges excluded from "whole Internet" blocks.
    pub(crate) cluster_ranges: &'c [IpNet],
    /// Address endpoints of Services without selector, by `(namespace, name)`.
    pub(crate) endpoints: &'c BTreeMap<(String, String), AddressEndpoints>,
    /// Per workload `(namespace, kind, name)`: the LoadBalancer/NodePort Services it backs.
    pub(crate) entry_points: &'c HashMap<(String, String, String), Vec<EntryService>>,
    /// Per namespace: the workloads (`Kind/name`) of its live pods in the inventory.
    pub(crate) workloads_by_ns: &'c BTreeMap<String, BTreeSet<String>>,
}

/// A LoadBalancer or NodePort Service a workload backs: a public entry point.
#[derive(Debug, Clone)]
pub(crate) struct EntryService {
    /// `namespace/name`.
    pub(crate) service: String,
    /// LoadBalancer or NodePort.
    pub(crate) service_type: ServiceType,
    /// The backend ports it reaches on the workload's pods.
    pub(crate) ports: BTreeSet<(Protocol, u16)>,
}

/// Builder output.
pub(crate) struct Built {
    pub(crate) policies: Vec<NetworkPolicy>,
    pub(crate) notes: Vec<String>,
    /// Per policy `(namespace, name)`: what other formats need besides its rules.
    pub(crate) hints: BTreeMap<(String, String), PolicyHints>,
}

/// One direction's rules for one workload, being collected.
#[derive(Default)]
struct Direction {
    peers: BTreeMap<PeerSpec, PortSet>,
    /// External addresses per port: (subnet name, address).
    external: BTreeMap<PortKey, BTreeSet<(String, IpAddr)>>,
    /// Platform peers kept automatically (API server, Services without selector, node-local
    /// DNS, metadata endpoints), for the `platform` annotation.
    platform: BTreeSet<String>,
    span: Span,
    /// DNS names of external addresses per port (`dst.dns_names`), for the evidence.
    names: BTreeMap<(PortKey, IpAddr), BTreeSet<String>>,
    /// The named addresses behind the blocks written (see [`dns_names`]).
    hints: PolicyHints,
}

type PortKey = Option<(Protocol, PortVal)>;

fn add_peer(peers: &mut BTreeMap<PeerSpec, PortSet>, peer: PeerSpec, port: PortKey) {
    use std::collections::btree_map::Entry;
    match peers.entry(peer) {
        Entry::Vacant(e) => {
            e.insert(port.map(|p| BTreeSet::from([p])));
        }
        Entry::Occupied(mut e) => match (e.get_mut(), port) {
            (Some(set), Some(p)) => {
                set.insert(p);
            }
            (set, None) => *set = None,
            (None, Some(_)) => {}
        },
    }
}

/// Builds the policies: the observed edges sorted into each workload's ingress and egress,
/// one policy per workload with a selector, hints for workloads whose only traffic is with
/// their own node, and a default-deny per namespace with observed traffic.
pub(crate) fn build(obs: &Observations<'_>, cx: &Context<'_>) -> Built {
    let mut notes = Vec::new();
    let (dirs, ns_span) = directions(obs, cx, &mut notes);
    let window_warning = annotations::window_warning(&obs.window, cx.config);
    if let Some(w) = &window_warning {
        notes.push(format!("warning: {w}"));
    }
    let mut writer = Writer {
        obs,
        cx,
        window: annotations::window(&obs.window),
        window_warning,
        notes,
        by_ns: BTreeMap::new(),
        unselectable: BTreeSet::new(),
        used: BTreeSet::new(),
        hints: BTreeMap::new(),
    };
    let ruled = writer.workload_policies(dirs);
    writer.own_node_hints(&ruled);
    writer.finish(&ns_span)
}

/// Whether the recommendation covers the namespace of `w` (not `--exclude-namespace`).
fn in_scope(cx: &Context<'_>, w: &WorkloadObs<'_>) -> bool {
    !cx.config
        .exclude_namespaces
        .iter()
        .any(|n| n == w.namespace)
}

/// Per workload (index): its (ingress, egress) rules being collected.
type Directions = BTreeMap<u32, (Direction, Direction)>;

/// Per workload (index), its (ingress, egress) peers from every edge it is the server or
/// client of; and per namespace, the span of the flows with an in-scope workload end there.
fn directions<'o>(
    obs: &Observations<'o>,
    cx: &Context<'_>,
    notes: &mut Vec<String>,
) -> (Directions, BTreeMap<&'o str, Span>) {
    let mut dirs = Directions::new();
    let mut ns_span: BTreeMap<&str, Span> = BTreeMap::new();
    let mut edges: Vec<(&EdgeKey<'_>, &Span)> =
        obs.edges.iter().map(|(k, v)| (k, &v.span)).collect();
    edges.sort_by_key(|(k, _)| (k.client, k.server, k.protocol, k.port, k.dns));
    for (edge, span) in edges {
        // The server's ingress admits the client; the client's egress reaches the server, by
        // the names it resolved too.
        let sides = [
            (edge.server, edge.client, "ingress", None),
            (edge.client, edge.server, "egress", obs.names.get(edge)),
        ];
        for (own, other, direction, names) in sides {
            let PeerKey::Workload(w) = own else {
                continue;
            };
            if !in_scope(cx, &obs.workloads[w as usize]) {
                continue;
            }
            let ports = ports_of(obs, cx, edge);
            let (ingress, egress) = dirs.entry(w).or_default();
            let dir = if direction == "ingress" {
                ingress
            } else {
                egress
            };
            dir.span.merge(span);
            let peer = EdgePeer {
                peer: other,
                policy_ns: obs.workloads[w as usize].namespace,
                direction,
                dns: edge.dns,
                names,
            };
            add_edge_peer(obs, cx, dir, &peer, &ports, notes);
        }
        // The namespaces of the in-scope workload ends: each flow counts once per namespace.
        let mut namespaces: Vec<&str> = [edge.client, edge.server]
            .into_iter()
            .filter_map(|p| match p {
                PeerKey::Workload(w) if in_scope(cx, &obs.workloads[w as usize]) => {
                    Some(obs.workloads[w as usize].namespace)
                }
                _ => None,
            })
            .collect();
        namespaces.dedup();
        for ns in namespaces {
            ns_span.entry(ns).or_default().merge(span);
        }
    }
    (dirs, ns_span)
}

/// The policies being written, and what the steps of [`build`] share.
struct Writer<'a> {
    obs: &'a Observations<'a>,
    cx: &'a Context<'a>,
    /// The observation window, for the evidence annotations.
    window: Option<String>,
    /// The window was too short (see [`annotations::window_warning`]).
    window_warning: Option<String>,
    notes: Vec<String>,
    /// The workload policies per namespace.
    by_ns: BTreeMap<&'a str, Vec<NetworkPolicy>>,
    /// The namespaces with a workload no policy can select: no default-deny there.
    unselectable: BTreeSet<&'a str>,
    /// The policy names taken, per namespace.
    used: BTreeSet<(String, String)>,
    hints: BTreeMap<(String, String), PolicyHints>,
}

impl<'a> Writer<'a> {
    /// One policy per workload with peers (in namespace, name, kind order); returns the
    /// workloads that had some.
    fn workload_policies(&mut self, mut dirs: Directions) -> BTreeSet<u32> {
        let mut order: Vec<u32> = dirs.keys().copied().collect();
        order.sort_by_key(|w| {
            let w = &self.obs.workloads[*w as usize];
            (w.namespace, w.name, w.kind)
        });
        let mut ruled: BTreeSet<u32> = BTreeSet::new();
        for w_idx in order {
            let Some((ingress, egress)) = dirs.remove(&w_idx) else {
                continue;
            };
            ruled.insert(w_idx);
            self.workload_policy(w_idx, ingress, egress);
        }
        ruled
    }

    /// The policy of workload `w_idx`, or a note (and no default-deny in its namespace) when
    /// it has no selector labels.
    fn workload_policy(&mut self, w_idx: u32, mut ingress: Direction, mut egress: Direction) {
        let (obs, cx) = (self.obs, self.cx);
        let w = &obs.workloads[w_idx as usize];
        let Some(selector) = w.selector.filter(|s| !s.is_empty()) else {
            self.notes.push(format!(
                "{}/{} {}: no selector labels, no policy can select it; namespace {} gets no default-deny",
                w.namespace, w.kind, w.name, w.namespace
            ));
            self.unselectable.insert(w.namespace);
            return;
        };
        let mut aggregation = Vec::new();
        let key = (w.namespace.to_owned(), w.kind.to_owned(), w.name.to_owned());
        let entry = cx.entry_points.get(&key).map(Vec::as_slice);
        let ext = External {
            workload: &key,
            entry,
            direction: "ingress",
        };
        resolve_external(cx, &mut ingress, &ext, &mut aggregation, &mut self.notes);
        let ext = External {
            direction: "egress",
            entry: None,
            ..ext
        };
        resolve_external(cx, &mut egress, &ext, &mut aggregation, &mut self.notes);
        let platform: Vec<String> = ingress
            .platform
            .iter()
            .chain(&egress.platform)
            .cloned()
            .collect();
        let name = self.policy_name(w);
        let hints = std::mem::take(&mut egress.hints);
        let ann = self.workload_annotations(w_idx, &name, hints, &aggregation, &platform);
        let ingress_rules: Vec<NetworkPolicyIngressRule> = rules(ingress.peers)
            .into_iter()
            .map(|(from, ports)| NetworkPolicyIngressRule {
                from: Some(from),
                ports,
            })
            .collect();
        let egress_rules: Vec<NetworkPolicyEgressRule> = rules(egress.peers)
            .into_iter()
            .map(|(to, ports)| NetworkPolicyEgressRule {
                to: Some(to),
                ports,
            })
            .collect();
        self.by_ns
            .entry(w.namespace)
            .or_default()
            .push(NetworkPolicy {
                metadata: meta(&name, w.namespace, ann),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(selector_of(selector)),
                    policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                    ingress: (!ingress_rules.is_empty()).then_some(ingress_rules),
                    egress: (!egress_rules.is_empty()).then_some(egress_rules),
                }),
            });
    }

    /// The annotations of the policy `name` of workload `w_idx` (evidence, DNS names,
    /// workload, warnings, aggregations, platform peers); keeps its `hints`, with its traffic
    /// to its own node, for the other formats.
    fn workload_annotations(
        &mut self,
        w_idx: u32,
        name: &str,
        mut hints: PolicyHints,
        aggregation: &[String],
        platform: &[String],
    ) -> BTreeMap<String, String> {
        let w = &self.obs.workloads[w_idx as usize];
        let mut ann = annotations::evidence(&w.span, &self.window);
        hints.own_node_egress = self
            .obs
            .own_node_egress
            .get(&w_idx)
            .into_iter()
            .flatten()
            .map(|(proto, port)| port.map(|n| (*proto, n.to_string())))
            .collect();
        if let Some(names) = dns_names::annotation(&hints) {
            ann.insert(dns_names::DNS_NAMES.to_owned(), names);
        }
        if !hints.is_empty() {
            self.hints
                .insert((w.namespace.to_owned(), name.to_owned()), hints);
        }
        ann.insert(
            annotations::WORKLOAD.to_owned(),
            format!("{}/{}", w.kind, w.name),
        );
        let warnings: Vec<String> = self
            .window_warning
            .iter()
            .cloned()
            .chain(annotations::brief_warning(
                w,
                &self.obs.window,
                self.cx.config,
            ))
            .collect();
        if !warnings.is_empty() {
            ann.insert(annotations::WARNING.to_owned(), warnings.join("; "));
        }
        if !aggregation.is_empty() {
            ann.insert(annotations::AGGREGATION.to_owned(), aggregation.join("; "));
        }
        if !platform.is_empty() {
            ann.insert(annotations::PLATFORM.to_owned(), platform.join("; "));
        }
        ann
    }

    /// `<workload>-np`, or `<workload>-<kind>-np` when that is taken in the namespace (or is
    /// `default-deny`); marks it taken.
    fn policy_name(&mut self, w: &WorkloadObs<'_>) -> String {
        let mut name = format!("{}-np", w.name);
        if name == "default-deny" || self.used.contains(&(w.namespace.to_owned(), name.clone())) {
            name = format!("{}-{}-np", w.name, w.kind.to_ascii_lowercase());
        }
        self.used.insert((w.namespace.to_owned(), name.clone()));
        name
    }

    /// A workload whose only traffic is with its own node gets no NetworkPolicy (that traffic
    /// is implicit); other APIs need a rule for it: hints with its selector.
    fn own_node_hints(&mut self, ruled: &BTreeSet<u32>) {
        let obs = self.obs;
        for (w_idx, ports) in &obs.own_node_egress {
            let w = &obs.workloads[*w_idx as usize];
            let Some(selector) = w.selector.filter(|s| !s.is_empty()) else {
                continue;
            };
            if ruled.contains(w_idx) || !in_scope(self.cx, w) {
                continue;
            }
            let name = self.policy_name(w);
            let hints = PolicyHints {
                own_node_egress: ports
                    .iter()
                    .map(|(proto, port)| port.map(|n| (*proto, n.to_string())))
                    .collect(),
                selector: Some(selector.clone()),
                ..PolicyHints::default()
            };
            self.hints.insert((w.namespace.to_owned(), name), hints);
        }
    }

    /// Per namespace with observed traffic: its default-deny (unless disabled or some
    /// workload there is unselectable), then its workload policies by name.
    fn finish(mut self, ns_span: &BTreeMap<&'a str, Span>) -> Built {
        let mut policies = Vec::new();
        for (ns, span) in ns_span {
            let mut list = self.by_ns.remove(ns).unwrap_or_default();
            if self.cx.config.default_deny && !self.unselectable.contains(ns) {
                policies.push(self.default_deny(ns, span));
            }
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            policies.extend(list);
        }
        self.notes.sort();
        self.notes.dedup();
        Built {
            policies,
            notes: self.notes,
            hints: self.hints,
        }
    }

    /// The default-deny of `ns`, with a warning (and a note) naming the workloads of its live
    /// pods that had no observed flow: they lose all traffic.
    fn default_deny(&mut self, ns: &str, span: &Span) -> NetworkPolicy {
        let mut ann = annotations::evidence(span, &self.window);
        let mut warnings: Vec<String> = self.window_warning.iter().cloned().collect();
        let observed: BTreeSet<String> = self
            .obs
            .workloads
            .iter()
            .filter(|w| w.namespace == ns)
            .map(|w| format!("{}/{}", w.kind, w.name))
            .collect();
        let unobserved: Vec<&str> = self
            .cx
            .workloads_by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|w| !observed.contains(*w))
            .map(String::as_str)
            .collect();
        if !unobserved.is_empty() {
            let list = unobserved.join(", ");
            ann.insert(annotations::UNOBSERVED.to_owned(), list.clone());
            warnings.push(format!(
                "isolates {} workload(s) with no observed flow, which lose all traffic: {list}",
                unobserved.len()
            ));
            self.notes.push(format!(
                "warning: {ns}/default-deny isolates {} workload(s) with no observed flow (all their traffic will be denied): {list}",
                unobserved.len()
            ));
        }
        if !warnings.is_empty() {
            ann.insert(annotations::WARNING.to_owned(), warnings.join("; "));
        }
        NetworkPolicy {
            metadata: meta("default-deny", ns, ann),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                ingress: None,
                egress: None,
            }),
        }
    }
}

fn meta(name: &str, ns: &str, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_owned(),
                "netpol-observe".to_owned(),
            )]
            .into(),
        ),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

fn selector_of(labels: &Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

/// The ports of an edge as written in a rule: DNS gets both UDP and TCP; a port with a name on
/// the server workload's containers is written by name; ICMP is every port.
fn ports_of(obs: &Observations<'_>, cx: &Context<'_>, edge: &EdgeKey<'_>) -> Vec<PortKey> {
    let Some(port) = edge.port.filter(|_| edge.protocol.has_ports()) else {
        return vec![None];
    };
    if edge.dns {
        return vec![
            Some((Protocol::Tcp, PortVal::Number(port))),
            Some((Protocol::Udp, PortVal::Number(port))),
        ];
    }
    let named = match edge.server {
        PeerKey::Workload(s) => {
            let w = &obs.workloads[s as usize];
            cx.ports
                .get(&(w.namespace.to_owned(), w.kind.to_owned(), w.name.to_owned()))
                .and_then(|list| {
                    list.iter()
                        .find(|p| p.port == port && p.protocol == edge.protocol)
                        .and_then(|p| p.name.clone())
                })
        }
        _ => None,
    };
    vec![Some((
        edge.protocol,
        named.map_or(PortVal::Number(port), PortVal::Name),
    ))]
}

/// The other end of an edge, as seen from the workload whose policy is being written.
struct EdgePeer<'p> {
    peer: PeerKey<'p>,
    /// The namespace of the policy.
    policy_ns: &'p str,
    /// `ingress` or `egress`.
    direction: &'static str,
    /// A DNS lookup.
    dns: bool,
    /// The DNS names the clients resolved to an external peer.
    names: Option<&'p BTreeSet<&'p str>>,
}

/// Adds the other end of an edge to a direction on its ports: a workload as its pods (or their
/// addresses), a node as its address, a Service without selector as its endpoints on their
/// ports, an external address to the direction's external addresses (or, for DNS and platform
/// addresses, as a host block).
fn add_edge_peer(
    obs: &Observations<'_>,
    cx: &Context<'_>,
    dir: &mut Direction,
    edge: &EdgePeer<'_>,
    ports: &[PortKey],
    notes: &mut Vec<String>,
) {
    let mut ports: Vec<PortKey> = ports.to_vec();
    let specs: Vec<PeerSpec> = match edge.peer {
        PeerKey::Workload(p) => workload_peer(&obs.workloads[p as usize], edge, notes),
        PeerKey::Node(_, ip) => vec![host_block(ip)],
        PeerKey::Endpoints(ns, name) => {
            let Some(eps) = cx.endpoints.get(&(ns.to_owned(), name.to_owned())) else {
                return; // observe only makes this peer for Services with endpoints
            };
            ports = endpoint_ports(ports, eps);
            endpoints_peer(dir, edge, (ns, name), eps, &ports)
        }
        PeerKey::External(subnet, ip) => external_peer(dir, edge, (subnet, ip), &ports, notes),
    };
    for spec in specs {
        for port in &ports {
            add_peer(&mut dir.peers, spec.clone(), port.clone());
        }
    }
}

/// A workload peer: its pods by selector labels (with its namespace when not the policy's), or,
/// without selector labels, its observed pod addresses (noted).
fn workload_peer(
    pw: &WorkloadObs<'_>,
    edge: &EdgePeer<'_>,
    notes: &mut Vec<String>,
) -> Vec<PeerSpec> {
    match pw.selector.filter(|s| !s.is_empty()) {
        Some(labels) => vec![PeerSpec::Pods {
            namespace: (pw.namespace != edge.policy_ns).then(|| pw.namespace.to_owned()),
            labels: labels.clone(),
        }],
        None => {
            notes.push(format!(
                "{}/{} {}: no selector labels; as a peer it is written as its observed pod addresses",
                pw.namespace, pw.kind, pw.name
            ));
            pw.ips.iter().map(|ip| host_block(*ip)).collect()
        }
    }
}

/// The Service ports → the ports the endpoints receive on (the DNAT's target); named ports and
/// all-ports stay.
fn endpoint_ports(ports: Vec<PortKey>, eps: &AddressEndpoints) -> Vec<PortKey> {
    ports
        .into_iter()
        .map(|p| match p {
            Some((proto, PortVal::Number(n))) => {
                Some((proto, PortVal::Number(eps.port_for(n, proto).unwrap_or(n))))
            }
            other => other,
        })
        .collect()
}

/// A Service without selector (`(namespace, name)`): its endpoint addresses as host blocks,
/// recorded as a platform peer on `ports` (the endpoints' ports).
fn endpoints_peer(
    dir: &mut Direction,
    edge: &EdgePeer<'_>,
    (ns, name): (&str, &str),
    eps: &AddressEndpoints,
    ports: &[PortKey],
) -> Vec<PeerSpec> {
    let what = if (ns, name) == ("default", "kubernetes") {
        "the API server (Service default/kubernetes)".to_owned()
    } else {
        format!("Service {ns}/{name} (no selector)")
    };
    let addrs: Vec<String> = eps.addresses.iter().map(ToString::to_string).collect();
    let port_list: Vec<String> = ports.iter().map(port_text).collect();
    dir.platform.insert(format!(
        "{} to {what}: its endpoints {} on {}",
        edge.direction,
        addrs.join(", "),
        port_list.join(", ")
    ));
    eps.addresses.iter().map(|ip| host_block(*ip)).collect()
}

/// An external address (`(subnet, ip)`): a platform address (recorded as a platform peer) or a
/// DNS server as its host block; any other is added to the direction's external addresses per
/// port, with the DNS names its clients resolved (for the evidence), and gives no peer here.
fn external_peer(
    dir: &mut Direction,
    edge: &EdgePeer<'_>,
    (subnet, ip): (&str, IpAddr),
    ports: &[PortKey],
    notes: &mut Vec<String>,
) -> Vec<PeerSpec> {
    let platform = platform_address(ip);
    if let Some(kind) = platform {
        let what = if edge.dns {
            format!("DNS at {kind} {ip}")
        } else {
            format!("{kind} {ip} (observed)")
        };
        let port_list: Vec<String> = ports.iter().map(port_text).collect();
        dir.platform.insert(format!(
            "{} {what} on {}",
            edge.direction,
            port_list.join(", ")
        ));
    }
    if edge.dns || platform.is_some() {
        return vec![host_block(ip)];
    }
    let names: BTreeSet<String> = edge
        .names
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let name = dns_names::normalize(n);
            if name.is_none() {
                notes.push(format!(
                    "DNS name {n:?} of {ip} is not a valid name: left out of the evidence"
                ));
            }
            name
        })
        .collect();
    for port in ports {
        dir.external
            .entry(port.clone())
            .or_default()
            .insert((subnet.to_owned(), ip));
        if !names.is_empty() {
            dir.names
                .entry((port.clone(), ip))
                .or_default()
                .extend(names.iter().cloned());
        }
    }
    Vec::new()
}

fn host_block(ip: IpAddr) -> PeerSpec {
    PeerSpec::Block {
        cidr: IpNet::from(ip),
        except: Vec::new(),
    }
}

/// Which direction of which workload [`resolve_external`] resolves.
#[derive(Clone, Copy)]
struct External<'e> {
    /// `(namespace, kind, name)`.
    workload: &'e (String, String, String),
    /// The LoadBalancer/NodePort Services it backs (ingress only).
    entry: Option<&'e [EntryService]>,
    /// `ingress` or `egress`.
    direction: &'static str,
}

/// Turns the external addresses of a direction into blocks: named subnets by their CIDRs,
/// other addresses aggregated within the bound, many public addresses — or any public client
/// of a public entry point — as the whole Internet minus the cluster and private ranges.
fn resolve_external(
    cx: &Context<'_>,
    dir: &mut Direction,
    ext: &External<'_>,
    aggregation: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let external = std::mem::take(&mut dir.external);
    let names = std::mem::take(&mut dir.names);
    for (port, addrs) in external {
        let mut sorted = by_subnet(cx, &addrs, notes);
        private_blocks(cx, ext.direction, &port, &mut sorted, aggregation);
        world_blocks(cx, ext, &port, &mut sorted, aggregation);
        record_names(
            dir,
            &port,
            &sorted.blocks,
            &sorted.subnet_nets,
            &addrs,
            &names,
        );
        for b in sorted.blocks {
            add_peer(&mut dir.peers, b, port.clone());
        }
    }
}

/// One port's external addresses sorted by subnet, and the blocks written for them so far.
#[derive(Default)]
struct BySubnet {
    blocks: BTreeSet<PeerSpec>,
    /// The CIDRs of the named subnets written.
    subnet_nets: BTreeSet<IpNet>,
    /// Private addresses, and those of a subnet not in the subnets file.
    private: Vec<IpAddr>,
    /// Public addresses.
    world: Vec<IpAddr>,
}

/// Sorts `addrs` by subnet; a named subnet is written as its CIDRs.
fn by_subnet(
    cx: &Context<'_>,
    addrs: &BTreeSet<(String, IpAddr)>,
    notes: &mut Vec<String>,
) -> BySubnet {
    let mut out = BySubnet::default();
    for (subnet, ip) in addrs.iter().cloned() {
        match subnet.as_str() {
            "world" => out.world.push(ip),
            "private" => out.private.push(ip),
            named => {
                let nets: Vec<IpNet> = cx
                    .subnets
                    .entries()
                    .iter()
                    .filter(|e| e.name == named)
                    .map(|e| e.net)
                    .collect();
                if nets.is_empty() {
                    notes.push(format!(
                        "subnet {named:?} is not in the subnets file: its addresses are written as observed"
                    ));
                    out.private.push(ip);
                }
                for net in nets {
                    out.subnet_nets.insert(net);
                    out.blocks.insert(PeerSpec::Block {
                        cidr: net,
                        except: Vec::new(),
                    });
                }
            }
        }
    }
    out
}

/// The private addresses as blocks, aggregated within the configured bound.
fn private_blocks(
    cx: &Context<'_>,
    direction: &str,
    port: &PortKey,
    sorted: &mut BySubnet,
    aggregation: &mut Vec<String>,
) {
    let bound_v4 = cx.config.aggregate_v4;
    let bound_v6 = cx.config.aggregate_v6;
    let private_nets = aggregate(&sorted.private, bound_v4, bound_v6);
    if private_nets
        .iter()
        .any(|n| n.prefix_len() < n.max_prefix_len())
    {
        aggregation.push(format!(
            "{direction} {}: {} private address(es) written as {} (prefixes no wider than /{bound_v4}, /{bound_v6})",
            port_text(port),
            sorted.private.iter().collect::<BTreeSet<_>>().len(),
            nets_text(&private_nets)
        ));
    }
    for net in private_nets {
        sorted.blocks.insert(PeerSpec::Block {
            cidr: net,
            except: Vec::new(),
        });
    }
}

/// The public addresses as blocks: the whole Internet minus the cluster and private ranges
/// for many of them, unknown ones or any client of a public entry point
/// (`--public-ingress any`); else aggregated within the configured bound.
fn world_blocks(
    cx: &Context<'_>,
    ext: &External<'_>,
    port: &PortKey,
    sorted: &mut BySubnet,
    aggregation: &mut Vec<String>,
) {
    let direction = ext.direction;
    let distinct: BTreeSet<IpAddr> = sorted.world.iter().copied().collect();
    // A public peer without its address (a workload-level record of Prometheus series,
    // whose labels say only `world`): no narrower block can be known.
    let unknown = distinct.iter().any(IpAddr::is_unspecified);
    let entry = entry_service(cx, ext, port);
    let public_entry =
        !distinct.is_empty() && cx.config.public_ingress == PublicIngress::Any && entry.is_some();
    if public_entry || unknown || distinct.len() > cx.config.world_threshold {
        for all in ["0.0.0.0/0", "::/0"] {
            if let Ok(all) = all.parse::<IpNet>() {
                sorted.blocks.insert(PeerSpec::Block {
                    cidr: all,
                    except: world_except(all, cx.cluster_ranges),
                });
            }
        }
        let why = match entry.filter(|_| public_entry) {
            None if unknown => "public peers whose addresses the source does not carry (Prometheus series say only `world`)".to_owned(),
            Some(e) => format!(
                "public entry point (backs {} Service {}; {} public client(s) observed; --public-ingress any)",
                e.service_type.as_str(),
                e.service,
                distinct.len()
            ),
            None => format!(
                "{} distinct public addresses (more than {})",
                distinct.len(),
                cx.config.world_threshold
            ),
        };
        aggregation.push(format!(
            "{direction} {}: {why}, allowed as 0.0.0.0/0 and ::/0 except cluster and private ranges",
            port_text(port),
        ));
        return;
    }
    let (bound_v4, bound_v6) = (cx.config.aggregate_v4, cx.config.aggregate_v6);
    let nets = aggregate(&sorted.world, bound_v4, bound_v6);
    if nets.iter().any(|n| n.prefix_len() < n.max_prefix_len()) {
        aggregation.push(format!(
            "{direction} {}: {} public address(es) written as {} (prefixes no wider than /{bound_v4}, /{bound_v6})",
            port_text(port),
            distinct.len(),
            nets_text(&nets)
        ));
    }
    if let Some(e) = entry {
        aggregation.push(format!(
            "{direction} {}: public entry point (backs {} Service {}) kept to the {} observed public client(s) (--public-ingress observed)",
            port_text(port),
            e.service_type.as_str(),
            e.service,
            distinct.len()
        ));
    }
    for net in nets {
        sorted.blocks.insert(PeerSpec::Block {
            cidr: net,
            except: Vec::new(),
        });
    }
}

/// The named addresses of one port's `blocks` into the direction's hints.
fn record_names(
    dir: &mut Direction,
    port: &PortKey,
    blocks: &BTreeSet<PeerSpec>,
    subnet_nets: &BTreeSet<IpNet>,
    addrs: &BTreeSet<(String, IpAddr)>,
    names: &BTreeMap<(PortKey, IpAddr), BTreeSet<String>>,
) {
    if !names.keys().any(|(p, _)| p == port) {
        return;
    }
    let nets: Vec<(IpNet, &[IpNet], bool)> = blocks
        .iter()
        .filter_map(|b| match b {
            PeerSpec::Block { cidr, except } => {
                Some((*cidr, except.as_slice(), subnet_nets.contains(cidr)))
            }
            PeerSpec::Pods { .. } => None,
        })
        .collect();
    let ips: Vec<IpAddr> = addrs.iter().map(|(_, ip)| *ip).collect();
    let lookup = |ip: IpAddr| names.get(&(port.clone(), ip));
    let rule_port = rule_port(port);
    for (cidr, block) in dns_names::named_blocks(&nets, &ips, &lookup) {
        dir.hints
            .egress_names
            .insert((rule_port.clone(), cidr), block);
    }
}

/// A port as other formats read it.
fn rule_port(port: &PortKey) -> RulePort {
    port.as_ref().map(|(proto, val)| {
        let text = match val {
            PortVal::Number(n) => n.to_string(),
            PortVal::Name(name) => name.clone(),
        };
        (*proto, text)
    })
}

/// The LoadBalancer/NodePort Service through which `port` of the workload is a public entry
/// point (ingress only).
fn entry_service<'e>(
    cx: &Context<'_>,
    ext: &External<'e>,
    port: &PortKey,
) -> Option<&'e EntryService> {
    let entry = ext.entry?;
    let (proto, val) = port.as_ref()?;
    let number = match val {
        PortVal::Number(n) => *n,
        PortVal::Name(name) => {
            cx.ports
                .get(ext.workload)?
                .iter()
                .find(|p| p.name.as_deref() == Some(name) && p.protocol == *proto)?
                .port
        }
    };
    entry.iter().find(|e| e.ports.contains(&(*proto, number)))
}

fn nets_text(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn port_text(port: &PortKey) -> String {
    match port {
        None => "all ports".to_owned(),
        Some((proto, PortVal::Number(n))) => format!("{n}/{proto}"),
        Some((proto, PortVal::Name(n))) => format!("{n}/{proto}"),
    }
}

/// Groups peers with the same ports into one rule (exact: the rule's peers × ports are all
/// observed), in a stable order.
fn rules(
    peers: BTreeMap<PeerSpec, PortSet>,
) -> Vec<(Vec<NetworkPolicyPeer>, Option<Vec<NetworkPolicyPort>>)> {
    let mut grouped: BTreeMap<PortSet, Vec<PeerSpec>> = BTreeMap::new();
    for (peer, ports) in peers {
        grouped.entry(ports).or_default().push(peer);
    }
    grouped
        .into_iter()
        .map(|(ports, peers)| {
            let peers = peers.into_iter().map(to_peer).collect();
            let ports = ports.map(|set| {
                set.into_iter()
                    .map(|(proto, val)| NetworkPolicyPort {
                        protocol: Some(proto.as_str().to_owned()),
                        port: Some(match val {
                            PortVal::Number(n) => IntOrString::Int(i32::from(n)),
                            PortVal::Name(s) => IntOrString::String(s),
                        }),
                        end_port: None,
                    })
                    .collect()
            });
            (peers, ports)
        })
        .collect()
}

fn to_peer(spec: PeerSpec) -> NetworkPolicyPeer {
    match spec {
        PeerSpec::Pods { namespace, labels } => NetworkPolicyPeer {
            ip_block: None,
            namespace_selector: namespace.map(|ns| LabelSelector {
                match_labels: Some([(NAMESPACE_NAME_LABEL.to_owned(), ns)].into()),
                match_expressions: None,
            }),
            pod_selector: Some(selector_of(&labels)),
        },
        PeerSpec::Block { cidr, except } => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.to_string(),
                except: (!except.is_empty())
                    .then(|| except.iter().map(ToString::to_string).collect()),
            }),
            namespace_selector: None,
            pod_selector: None,
        },
    }
}

/// Marks each namespace's `default-deny` with the left-out flows its namespace's workloads
/// would lose (`denied`: reason → namespaces), so the reviewer sees them in the YAML.
pub(crate) fn annotate_left_out(
    policies: &mut [NetworkPolicy],
    skipped: &BTreeMap<String, u64>,
    denied: &BTreeMap<&str, BTreeSet<String>>,
) {
    for p in policies
        .iter_mut()
        .filter(|p| p.metadata.name.as_deref() == Some("default-deny"))
    {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let lines: Vec<String> = denied
            .iter()
            .filter(|(_, namespaces)| namespaces.contains(&ns))
            .map(|(reason, _)| {
                let n = skipped.get(*reason).copied().unwrap_or_default();
                format!("{n} flow(s): {reason}")
            })
            .collect();
        if !lines.is_empty() {
            p.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(annotations::LEFT_OUT.to_owned(), lines.join("; "));
        }
    }
}
