//! `recommend --format cilium`: the recommended NetworkPolicies as `cilium.io/v2`
//! CiliumNetworkPolicies with the same least privilege, in Cilium's terms:
//!
//! - `endpointSelector` from the workload's selector labels; pods as `fromEndpoints` /
//!   `toEndpoints` (other namespaces with `k8s:io.kubernetes.pod.namespace`);
//! - address blocks (named subnets, aggregated and whole-Internet blocks) as `fromCIDRSet` /
//!   `toCIDRSet`, with the same exceptions;
//! - external addresses whose clients resolved them by name (flow records' `dst.dns_names`) as
//!   `toFQDNs` `matchName`, with the DNS rule Cilium's DNS proxy needs on the port-53 rules
//!   (`rules.dns: [matchPattern: "*"]`; every lookup stays allowed, the proxy learns the
//!   answers); a block that also held unnamed addresses, or a named subnet, stays a CIDR too;
//! - the API server (the endpoints of `default/kubernetes`) as `toEntities: [kube-apiserver]`;
//! - node-local DNS (`169.254.20.10`) as the entity `host` and the `k8s-app=node-local-dns`
//!   pods (a hostNetwork DaemonSet, or pods behind a Local Redirect Policy);
//! - nodes and hostNetwork pods as the entities `host` and `remote-node` (Cilium does not
//!   select nodes by address), and a pod's traffic to its own node, implicit in NetworkPolicy,
//!   as `toEntities: [host]` on its ports;
//! - a direction without rules as an empty rule (`{}`): default deny.
//!
//! [`check`] evaluates flows against such policies with Cilium's allow-list semantics.

pub mod check;
pub mod types;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use self::types::{
    API_VERSION, CidrRule, CiliumNetworkPolicy, EgressRule, EndpointSelector, Entity, FqdnSelector,
    IngressRule, KIND, L7Rules, NAMESPACE_LABEL, PortProtocol, PortRule, Spec,
};
use super::{
    NAMESPACE_NAME_LABEL, NODE_LOCAL_DNS, Recommendation, annotations,
    dns_names::{PolicyHints, RulePort},
};
use crate::{
    flow::Protocol,
    inventory::{Inventory, NetworkPolicy},
};

/// At most this many ports in one `toPorts` entry (the CRD's limit).
const MAX_PORTS: usize = 40;

/// A recommended policy that has no CiliumNetworkPolicy form (never expected: the recommender
/// writes only what this module translates).
#[derive(Debug, thiserror::Error)]
#[error("NetworkPolicy {policy}: field {field}: {what} has no CiliumNetworkPolicy form here")]
pub struct CiliumError {
    /// `namespace/name`.
    pub policy: String,
    /// The field at fault.
    pub field: String,
    /// What it holds.
    pub what: String,
}

/// What the translation reads from the inventory.
struct Cluster {
    /// Addresses of the API server (endpoints of `default/kubernetes`).
    api_server: BTreeSet<IpAddr>,
    /// Node addresses.
    nodes: BTreeSet<IpAddr>,
}

impl Cluster {
    fn new(inventory: &Inventory) -> Self {
        let api_server = inventory
            .services
            .iter()
            .filter(|s| s.namespace == "default" && s.name == "kubernetes")
            .filter_map(|s| inventory.address_endpoints(s))
            .flat_map(|e| e.addresses)
            .collect();
        let nodes = inventory
            .nodes
            .iter()
            .flat_map(|n| n.addresses.iter().copied())
            .collect();
        Cluster { api_server, nodes }
    }
}

/// A peer as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Endpoints(EndpointSelector),
    Entity(Entity),
    Cidr(CidrRule),
    Fqdn(String),
}

/// The ports of a peer: `None` for every port and protocol.
type Ports = Option<BTreeSet<PortProtocol>>;

fn add(peers: &mut BTreeMap<Peer, Ports>, peer: Peer, port: Option<&PortProtocol>) {
    use std::collections::btree_map::Entry;
    match peers.entry(peer) {
        Entry::Vacant(e) => {
            e.insert(port.map(|p| BTreeSet::from([p.clone()])));
        }
        Entry::Occupied(mut e) => match (e.get_mut(), port) {
            (Some(set), Some(p)) => {
                set.insert(p.clone());
            }
            (set, None) => *set = None,
            (None, Some(_)) => {}
        },
    }
}

/// The recommendation's policies as CiliumNetworkPolicies, in the same order (one per
/// NetworkPolicy, same name, namespace, labels and annotations).
pub fn render(
    rec: &Recommendation,
    inventory: &Inventory,
) -> Result<Vec<CiliumNetworkPolicy>, CiliumError> {
    let cluster = Cluster::new(inventory);
    let empty = PolicyHints::default();
    let mut out = rec
        .policies
        .iter()
        .map(|p| {
            let key = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            translate(p, rec.hints.get(&key).unwrap_or(&empty), &cluster)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Workloads whose only traffic is with their own node: a policy allowing just that (the
    // namespace's default deny would block it in Cilium), after their namespace's others.
    for ((ns, name), hints) in &rec.hints {
        let Some(selector) = &hints.selector else {
            continue;
        };
        let np = own_node_policy(ns, name, selector, rec);
        let cnp = translate(&np, hints, &cluster)?;
        let at = out
            .iter()
            .rposition(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .map_or(out.len(), |i| i + 1);
        out.insert(at, cnp);
    }
    Ok(out)
}

/// A NetworkPolicy selecting a workload, with no rules (egress only), labelled and annotated
/// as the recommender's: what [`translate`] turns into its own-node rule.
fn own_node_policy(
    ns: &str,
    name: &str,
    selector: &BTreeMap<String, String>,
    rec: &Recommendation,
) -> NetworkPolicy {
    let labels = rec
        .policies
        .iter()
        .find(|p| p.metadata.namespace.as_deref() == Some(ns))
        .and_then(|p| p.metadata.labels.clone())
        .unwrap_or_else(|| {
            [(
                "app.kubernetes.io/managed-by".to_owned(),
                "netpol-observe".to_owned(),
            )]
            .into()
        });
    NetworkPolicy {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::networking::v1::NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Egress".to_owned()]),
            ingress: None,
            egress: None,
        }),
    }
}

/// One NetworkPolicy as a CiliumNetworkPolicy: its ingress and egress peers in Cilium's terms,
/// the pod's own-node egress as the entity `host`, the DNS rule `toFQDNs` needs, and what was
/// written differently noted in the platform annotation.
fn translate(
    p: &NetworkPolicy,
    hints: &PolicyHints,
    cluster: &Cluster,
) -> Result<CiliumNetworkPolicy, CiliumError> {
    let id = format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    );
    let err = |field: String, what: String| CiliumError {
        policy: id.clone(),
        field,
        what,
    };
    let spec = p.spec.clone().unwrap_or_default();
    let types = spec.policy_types.clone().unwrap_or_default();
    let mut notes: Vec<String> = Vec::new();

    let ingress = direction_peers(
        spec.ingress
            .iter()
            .flatten()
            .map(|r| (r.ports.as_deref(), r.from.as_deref())),
        ("spec.ingress", "from"),
        None,
        cluster,
        &mut notes,
        &err,
    )?;
    let mut egress = direction_peers(
        spec.egress
            .iter()
            .flatten()
            .map(|r| (r.ports.as_deref(), r.to.as_deref())),
        ("spec.egress", "to"),
        Some(hints),
        cluster,
        &mut notes,
        &err,
    )?;
    add_own_node_egress(hints, &mut egress, &mut notes);

    let fqdn = egress.keys().any(|p| matches!(p, Peer::Fqdn(_)));
    let ingress_rules = ingress_rules(ingress);
    let mut egress_rules = egress_rules(egress, fqdn);
    if fqdn && !egress_rules.iter().any(has_dns_rule) {
        egress_rules.push(kube_dns_rule());
        notes.push(
            "egress DNS to kube-system pods k8s-app=kube-dns on 53/UDP, 53/TCP through Cilium's DNS proxy: toFQDNs needs it (no lookup observed)"
                .to_owned(),
        );
    }
    let mut metadata = p.metadata.clone();
    annotate(&mut metadata, notes);
    let direction = |name: &str| types.iter().any(|t| t == name);
    Ok(CiliumNetworkPolicy {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata,
        spec: Spec {
            endpoint_selector: endpoint_selector(spec.pod_selector.as_ref(), None)
                .map_err(|what| err("spec.podSelector".to_owned(), what))?,
            ingress: direction("Ingress").then(|| {
                if ingress_rules.is_empty() {
                    vec![IngressRule::default()]
                } else {
                    ingress_rules
                }
            }),
            egress: direction("Egress").then(|| {
                if egress_rules.is_empty() {
                    vec![EgressRule::default()]
                } else {
                    egress_rules
                }
            }),
        },
    })
}

/// The Cilium peers of one direction's rules, with their ports: `rules` yields each rule's
/// `(ports, from|to)`, `(field, peers_field)` name them in errors (`spec.ingress`, `from`),
/// `hints` are the egress hints (`None` for ingress).
fn direction_peers<'r>(
    rules: impl Iterator<
        Item = (
            Option<&'r [NetworkPolicyPort]>,
            Option<&'r [NetworkPolicyPeer]>,
        ),
    >,
    (field, peers_field): (&str, &str),
    hints: Option<&PolicyHints>,
    cluster: &Cluster,
    notes: &mut Vec<String>,
    err: &impl Fn(String, String) -> CiliumError,
) -> Result<BTreeMap<Peer, Ports>, CiliumError> {
    let mut out: BTreeMap<Peer, Ports> = BTreeMap::new();
    for (i, (rule_ports, rule_peers)) in rules.enumerate() {
        let ports =
            ports_of(rule_ports).map_err(|what| err(format!("{field}[{i}].ports"), what))?;
        for (j, peer) in rule_peers.into_iter().flatten().enumerate() {
            let field = format!("{field}[{i}].{peers_field}[{j}]");
            for port in &ports {
                for peer in peers_of(peer, port.as_ref(), hints, cluster, notes)
                    .map_err(|what| err(field.clone(), what))?
                {
                    add(&mut out, peer, port.as_ref());
                }
            }
        }
    }
    Ok(out)
}

/// The pod's egress to its own node (always allowed by NetworkPolicy, so not in its rules) as
/// the entity `host` on its ports, each noted.
fn add_own_node_egress(
    hints: &PolicyHints,
    egress: &mut BTreeMap<Peer, Ports>,
    notes: &mut Vec<String>,
) {
    for port in &hints.own_node_egress {
        let port = port.as_ref().map(|(proto, n)| PortProtocol {
            port: n.clone(),
            protocol: Some(proto.as_str().to_owned()),
        });
        add(egress, Peer::Entity(Entity::Host), port.as_ref());
        notes.push(format!(
            "egress to the pod's own node on {} (always allowed by NetworkPolicy) as the entity host",
            port.as_ref()
                .map_or_else(|| "all ports".to_owned(), |p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("ANY")))
        ));
    }
}

/// Appends the notes (sorted, without duplicates) to the policy's platform annotation, after
/// the ones it has; nothing when there are none.
fn annotate(
    metadata: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    mut notes: Vec<String>,
) {
    if notes.is_empty() {
        return;
    }
    notes.sort();
    notes.dedup();
    let ann = metadata.annotations.get_or_insert_with(BTreeMap::new);
    let key = annotations::PLATFORM.to_owned();
    let mut list: Vec<String> = ann
        .get(&key)
        .map(|v| v.split("; ").map(str::to_owned).collect())
        .unwrap_or_default();
    list.extend(notes);
    ann.insert(key, list.join("; "));
}

/// The ports of a NetworkPolicy rule: `[None]` for every port.
fn ports_of(ports: Option<&[NetworkPolicyPort]>) -> Result<Vec<Option<PortProtocol>>, String> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Ok(vec![None]);
    };
    ports
        .iter()
        .map(|p| {
            if p.end_port.is_some() {
                return Err("a port range (endPort)".to_owned());
            }
            let port = match &p.port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => return Err("a protocol without port".to_owned()),
            };
            Ok(Some(PortProtocol {
                port,
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
            }))
        })
        .collect()
}

/// The hints' key for a port.
fn rule_port(port: Option<&PortProtocol>) -> RulePort {
    let p = port?;
    let proto = match p.protocol.as_deref() {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    };
    Some((proto, p.port.clone()))
}

/// The Cilium peers of one NetworkPolicy peer on one port (`hints`: egress only).
fn peers_of(
    peer: &NetworkPolicyPeer,
    port: Option<&PortProtocol>,
    hints: Option<&PolicyHints>,
    cluster: &Cluster,
    notes: &mut Vec<String>,
) -> Result<Vec<Peer>, String> {
    if let Some(block) = &peer.ip_block {
        let cidr: IpNet = block
            .cidr
            .parse()
            .map_err(|e| format!("ipBlock.cidr {:?}: {e}", block.cidr))?;
        let host = cidr.prefix_len() == cidr.max_prefix_len();
        if host && hints.is_some() && cluster.api_server.contains(&cidr.addr()) {
            return Ok(vec![Peer::Entity(Entity::KubeApiserver)]);
        }
        if host && hints.is_some() && cidr.addr() == NODE_LOCAL_DNS {
            // Cilium sees node-local DNS as the host (a hostNetwork DaemonSet) or, behind a
            // Local Redirect Policy, as its pods: never as this address.
            notes.push(format!(
                "egress to node-local DNS {NODE_LOCAL_DNS} as the entity host and the kube-system pods k8s-app=node-local-dns (Cilium never sees its address)"
            ));
            return Ok(vec![
                Peer::Entity(Entity::Host),
                Peer::Endpoints(EndpointSelector {
                    match_labels: Some(
                        [
                            (NAMESPACE_LABEL.to_owned(), "kube-system".to_owned()),
                            ("k8s:k8s-app".to_owned(), "node-local-dns".to_owned()),
                        ]
                        .into(),
                    ),
                    match_expressions: None,
                }),
            ]);
        }
        if host && cluster.nodes.contains(&cidr.addr()) {
            notes.push(format!(
                "{} node {} as the entities host and remote-node (Cilium selects nodes by entity, not address)",
                if hints.is_some() { "egress to" } else { "ingress from" },
                cidr.addr()
            ));
            return Ok(vec![
                Peer::Entity(Entity::Host),
                Peer::Entity(Entity::RemoteNode),
            ]);
        }
        let as_cidr = Peer::Cidr(CidrRule {
            cidr: cidr.to_string(),
            except: block.except.clone().filter(|e| !e.is_empty()),
        });
        let named = hints.and_then(|h| h.egress_names.get(&(rule_port(port), cidr)));
        return Ok(match named {
            Some(b) => {
                let mut out: Vec<Peer> = b.names.iter().cloned().map(Peer::Fqdn).collect();
                if b.keep_cidr {
                    out.push(as_cidr);
                }
                out
            }
            None => vec![as_cidr],
        });
    }
    Ok(vec![Peer::Endpoints(endpoint_selector(
        peer.pod_selector.as_ref(),
        peer.namespace_selector.as_ref(),
    )?)])
}

/// A pod selector (and a namespace selector by name) as an endpoint selector.
fn endpoint_selector(
    pods: Option<&LabelSelector>,
    namespaces: Option<&LabelSelector>,
) -> Result<EndpointSelector, String> {
    let mut labels: BTreeMap<String, String> = pods
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    if let Some(ns) = namespaces {
        let name = ns
            .match_labels
            .as_ref()
            .filter(|m| m.len() == 1 && ns.match_expressions.as_ref().is_none_or(Vec::is_empty))
            .and_then(|m| m.get(NAMESPACE_NAME_LABEL))
            .ok_or_else(|| {
                format!("a namespaceSelector other than {NAMESPACE_NAME_LABEL}: <name>")
            })?;
        labels.insert(NAMESPACE_LABEL.to_owned(), name.clone());
    }
    let expressions: Vec<types::Requirement> = pods
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .map(types::Requirement::from)
        .collect();
    Ok(EndpointSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    })
}

/// Peers grouped by identical ports (each rule's peers × ports were all observed).
fn grouped(peers: BTreeMap<Peer, Ports>) -> BTreeMap<Ports, Vec<Peer>> {
    let mut groups: BTreeMap<Ports, Vec<Peer>> = BTreeMap::new();
    for (peer, ports) in peers {
        groups.entry(ports).or_default().push(peer);
    }
    groups
}

fn ingress_rules(peers: BTreeMap<Peer, Ports>) -> Vec<IngressRule> {
    grouped(peers)
        .into_iter()
        .map(|(ports, peers)| {
            let mut rule = IngressRule {
                to_ports: to_ports(ports, false),
                ..IngressRule::default()
            };
            for peer in peers {
                match peer {
                    Peer::Endpoints(s) => rule.from_endpoints.get_or_insert_with(Vec::new).push(s),
                    Peer::Entity(e) => rule.from_entities.get_or_insert_with(Vec::new).push(e),
                    Peer::Cidr(c) => rule.from_cidr_set.get_or_insert_with(Vec::new).push(c),
                    Peer::Fqdn(_) => {} // egress only
                }
            }
            rule
        })
        .collect()
}

/// Egress rules; with `fqdn`, every port-53 rule carries the DNS rule (Cilium's DNS proxy
/// must see the lookups that `toFQDNs` follows).
fn egress_rules(peers: BTreeMap<Peer, Ports>, fqdn: bool) -> Vec<EgressRule> {
    let mut rules = Vec::new();
    for (ports, peers) in grouped(peers) {
        let mut rule = EgressRule::default();
        let mut names = Vec::new();
        for peer in peers {
            match peer {
                Peer::Endpoints(s) => rule.to_endpoints.get_or_insert_with(Vec::new).push(s),
                Peer::Entity(e) => rule.to_entities.get_or_insert_with(Vec::new).push(e),
                Peer::Cidr(c) => rule.to_cidr_set.get_or_insert_with(Vec::new).push(c),
                Peer::Fqdn(n) => names.push(FqdnSelector {
                    match_name: Some(n),
                    match_pattern: None,
                }),
            }
        }
        if rule != EgressRule::default() {
            rule.to_ports = to_ports(ports.clone(), fqdn);
            rules.push(rule);
        }
        if !names.is_empty() {
            rules.push(EgressRule {
                to_fqdns: Some(names),
                to_ports: to_ports(ports, false),
                ..EgressRule::default()
            });
        }
    }
    rules
}

fn is_dns_port(p: &PortProtocol) -> bool {
    p.port == "53" && matches!(p.protocol.as_deref(), Some("UDP" | "TCP") | None)
}

/// `toPorts` of a port set: DNS ports in their own entry with the DNS rule when `dns_rule`,
/// at most [`MAX_PORTS`] per entry.
fn to_ports(ports: Ports, dns_rule: bool) -> Option<Vec<PortRule>> {
    let ports = ports?;
    let (dns, other): (Vec<PortProtocol>, Vec<PortProtocol>) =
        ports.into_iter().partition(|p| dns_rule && is_dns_port(p));
    let mut out = Vec::new();
    if !dns.is_empty() {
        out.push(PortRule {
            ports: dns,
            rules: Some(any_lookup()),
        });
    }
    for chunk in other.chunks(MAX_PORTS) {
        out.push(PortRule {
            ports: chunk.to_vec(),
            rules: None,
        });
    }
    Some(out)
}

fn any_lookup() -> L7Rules {
    L7Rules {
        dns: vec![FqdnSelector {
            match_name: None,
            match_pattern: Some("*".to_owned()),
        }],
    }
}

fn has_dns_rule(rule: &EgressRule) -> bool {
    rule.to_ports
        .iter()
        .flatten()
        .any(|p| p.rules.as_ref().is_some_and(|r| !r.dns.is_empty()))
}

/// Lookups to the cluster DNS (kube-dns / CoreDNS pods) through the DNS proxy.
fn kube_dns_rule() -> EgressRule {
    EgressRule {
        to_endpoints: Some(vec![EndpointSelector {
            match_labels: Some(
                [
                    (NAMESPACE_LABEL.to_owned(), "kube-system".to_owned()),
                    ("k8s:k8s-app".to_owned(), "kube-dns".to_owned()),
                ]
                .into(),
            ),
            match_expressions: None,
        }]),
        to_ports: Some(vec![PortRule {
            ports: ["UDP", "TCP"]
                .into_iter()
                .map(|proto| PortProtocol {
                    port: "53".to_owned(),
                    protocol: Some(proto.to_owned()),
                })
                .collect(),
            rules: Some(any_lookup()),
        }]),
        ..EgressRule::default()
    }
}
