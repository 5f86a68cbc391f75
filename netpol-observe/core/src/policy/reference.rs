//! The slow, literal reference evaluator: the NetworkPolicy semantics read straight off the
//! API objects, with no index, no interning and no pre-computation. It exists to check the
//! compiled [`PolicyEngine`](super::PolicyEngine) (they must agree on every flow) and as a
//! readable statement of the semantics.

use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    Names, PolicyError, Reason, SideResult, SideVerdict, Verdict,
    cluster::{
        Action, ClusterNetworkPolicy, Tier,
        reference::{Question, decide},
    },
    label_selector_matches, policy_id, policy_types, validate,
};
use crate::{
    flow::{Endpoint, FlowRecord, Protocol},
    inventory::{Inventory, NetworkPolicy, NodeInfo, PodInfo},
};

/// `(peers, ports)` of one rule.
type RuleParts<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

enum Side<'a> {
    Pod(&'a PodInfo),
    Node(&'a NodeInfo),
    Other,
}

/// The reference evaluator over one inventory and a set of policies (validated and sorted by
/// `ns/name` once; everything else is done literally at each call).
#[derive(Debug, Clone)]
pub struct Reference<'a> {
    inventory: &'a Inventory,
    policies: Vec<&'a NetworkPolicy>,
    cluster: Vec<&'a ClusterNetworkPolicy>,
}

impl<'a> Reference<'a> {
    /// Validates `policies`.
    pub fn new(
        inventory: &'a Inventory,
        policies: &'a [NetworkPolicy],
    ) -> Result<Self, PolicyError> {
        for p in policies {
            validate(p)?;
        }
        let mut sorted: Vec<&NetworkPolicy> = policies.iter().collect();
        sorted.sort_by_key(|p| policy_id(p));
        Ok(Reference {
            inventory,
            policies: sorted,
            cluster: Vec::new(),
        })
    }

    /// Validates `policies` and the ClusterNetworkPolicies `cluster` (Admin tier before the
    /// NetworkPolicies, Baseline after).
    pub fn with_cluster(
        inventory: &'a Inventory,
        policies: &'a [NetworkPolicy],
        cluster: &'a [ClusterNetworkPolicy],
    ) -> Result<Self, PolicyError> {
        for p in cluster {
            super::cluster::validate(p)?;
        }
        let mut reference = Reference::new(inventory, policies)?;
        reference.cluster = cluster.iter().collect();
        Ok(reference)
    }

    /// Evaluates `flow`, literally. Slow: for tests.
    pub fn evaluate(&self, flow: &FlowRecord) -> Verdict {
        evaluate_sorted(self.inventory, &self.policies, &self.cluster, flow)
    }
}

/// Evaluates `flow` against `policies` over `inventory`, literally. Slow: for tests.
pub fn evaluate(
    inventory: &Inventory,
    policies: &[NetworkPolicy],
    flow: &FlowRecord,
) -> Result<Verdict, PolicyError> {
    Ok(Reference::new(inventory, policies)?.evaluate(flow))
}

fn evaluate_sorted(
    inventory: &Inventory,
    sorted: &[&NetworkPolicy],
    cluster: &[&ClusterNetworkPolicy],
    flow: &FlowRecord,
) -> Verdict {
    let at = flow.seen_at();
    let src = resolve(inventory, &flow.src, at);
    let (dst, dst_ip, port) = resolve_dst(inventory, &flow.dst, flow.protocol, at);

    if let (Side::Pod(s), Side::Pod(d)) = (&src, &dst)
        && std::ptr::eq(*s, *d)
        && !s.host_network
    {
        let v = SideVerdict::by_reason(SideResult::Allowed, Reason::SelfTraffic);
        return Verdict::new(v.clone(), v);
    }
    let ctx = Context {
        inventory,
        policies: sorted,
        cluster,
        dns_names: &flow.dst.dns_names,
        dst_pod: match &dst {
            Side::Pod(p) => Some(*p),
            _ => None,
        },
        port,
        protocol: flow.protocol,
    };
    let egress = match &src {
        Side::Pod(s) => side(&ctx, s, &dst, dst_ip, false),
        _ => SideVerdict::by_reason(SideResult::NotIsolated, Reason::NotAPod),
    };
    let ingress = match &dst {
        Side::Pod(d) => side(&ctx, d, &src, flow.src.ip, true),
        _ => SideVerdict::by_reason(SideResult::NotIsolated, Reason::NotAPod),
    };
    Verdict::new(ingress, egress)
}

/// What both directions of one flow are judged against: the objects in force and the flow's
/// destination (pod, port, protocol and names).
struct Context<'a> {
    inventory: &'a Inventory,
    policies: &'a [&'a NetworkPolicy],
    cluster: &'a [&'a ClusterNetworkPolicy],
    dns_names: &'a [String],
    dst_pod: Option<&'a PodInfo>,
    port: Option<u16>,
    protocol: Protocol,
}

/// The verdict of the direction in which `me` is the pod and `peer` (at `peer_ip`) the other
/// side.
fn side(
    ctx: &Context<'_>,
    me: &PodInfo,
    peer: &Side<'_>,
    peer_ip: std::net::IpAddr,
    ingress: bool,
) -> SideVerdict {
    let inventory = ctx.inventory;
    if me.host_network {
        return SideVerdict::by_reason(SideResult::NotIsolated, Reason::HostNetwork);
    }
    let peer_node = match peer {
        Side::Node(n) => Some(n.name.as_str()),
        Side::Pod(p) if p.host_network => p.node_name.as_deref(),
        _ => None,
    };
    if peer_node.is_some() && peer_node == me.node_name.as_deref() {
        return SideVerdict::by_reason(SideResult::Allowed, Reason::OwnNode);
    }
    let question = Question {
        me,
        ingress,
        peer_pod: match peer {
            Side::Pod(p) if !p.host_network => Some(*p),
            _ => None,
        },
        peer_node: match peer {
            Side::Node(n) => Some(*n),
            Side::Pod(p) if p.host_network => {
                p.node_name.as_deref().and_then(|n| inventory.node(n))
            }
            _ => None,
        },
        peer_ip,
        dst_pod: ctx.dst_pod,
        port: ctx.port,
        protocol: ctx.protocol,
        dns_names: ctx.dns_names,
    };
    let tier = |tier: Tier| match decide(inventory, ctx.cluster, tier, &question) {
        Some((Action::Accept | Action::Deny, verdict)) => Some(verdict),
        Some((Action::Pass, _)) | None => None,
    };
    if let Some(verdict) = tier(Tier::Admin) {
        return verdict;
    }
    network_policies(inventory, ctx.policies, &question, peer)
        .unwrap_or_else(|| tier(Tier::Baseline).unwrap_or_else(SideVerdict::not_isolated))
}

/// The NetworkPolicies' verdict on one direction (`q`), `None` when none isolates the pod.
fn network_policies(
    inventory: &Inventory,
    policies: &[&NetworkPolicy],
    q: &Question<'_>,
    peer: &Side<'_>,
) -> Option<SideVerdict> {
    let (me, ingress) = (q.me, q.ingress);
    let mut isolating = Vec::new();
    let mut allowed = Vec::new();
    let mut rules = Vec::new();
    for policy in policies {
        let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
        if ns != me.namespace {
            continue;
        }
        let Some(spec) = &policy.spec else { continue };
        let selector = spec.pod_selector.clone().unwrap_or_default();
        if !label_selector_matches(&selector, &me.labels).unwrap_or(false) {
            continue;
        }
        let (has_ingress, has_egress) = policy_types(policy);
        if (ingress && !has_ingress) || (!ingress && !has_egress) {
            continue;
        }
        let id = policy_id(policy);
        isolating.push(id.clone());
        let mut any = false;
        // (peers, ports) of each rule in this direction.
        let list: Vec<RuleParts<'_>> = if ingress {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect()
        };
        for (i, (peers, ports)) in list.into_iter().enumerate() {
            let ports_ok = match ports {
                None => true,
                Some(ports) if ports.is_empty() => true,
                Some(ports) => ports
                    .iter()
                    .any(|p| port_matches(p, q.dst_pod, q.port, q.protocol)),
            };
            let peers_ok = match peers {
                None => true,
                Some(peers) if peers.is_empty() => true,
                Some(peers) => peers
                    .iter()
                    .any(|p| peer_matches(inventory, ns, p, peer, q.peer_ip)),
            };
            if ports_ok && peers_ok {
                any = true;
                rules.push(format!(
                    "{id}:{}[{i}]",
                    if ingress { "ingress" } else { "egress" }
                ));
            }
        }
        if any {
            allowed.push(id);
        }
    }
    if isolating.is_empty() {
        None
    } else if allowed.is_empty() {
        Some(SideVerdict {
            result: SideResult::Denied,
            policies: isolating.into(),
            rules: Names::default(),
            reason: None,
        })
    } else {
        Some(SideVerdict {
            result: SideResult::Allowed,
            policies: allowed.into(),
            rules: rules.into(),
            reason: None,
        })
    }
}

fn port_matches(
    p: &NetworkPolicyPort,
    dst_pod: Option<&PodInfo>,
    port: Option<u16>,
    protocol: Protocol,
) -> bool {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    if proto != protocol.as_str() {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = p.end_port.unwrap_or(*n);
            port.is_some_and(|x| i32::from(x) >= *n && i32::from(x) <= end)
        }
        Some(IntOrString::String(name)) => {
            port.is_some() && dst_pod.and_then(|d| d.named_port(name, protocol)) == port
        }
    }
}

fn peer_matches(
    inventory: &Inventory,
    policy_ns: &str,
    p: &NetworkPolicyPeer,
    peer: &Side<'_>,
    peer_ip: std::net::IpAddr,
) -> bool {
    if let Some(block) = &p.ip_block {
        let Ok(cidr) = block.cidr.parse::<IpNet>() else {
            return false;
        };
        let excepted = block
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse::<IpNet>().ok())
            .any(|e| e.trunc().contains(&peer_ip));
        return cidr.trunc().contains(&peer_ip) && !excepted;
    }
    let Side::Pod(pod) = peer else { return false };
    if pod.host_network {
        return false;
    }
    let ns_ok = match &p.namespace_selector {
        None => pod.namespace == policy_ns,
        Some(sel) => {
            let default_labels = [(
                "kubernetes.io/metadata.name".to_owned(),
                pod.namespace.clone(),
            )]
            .into();
            let labels = inventory
                .namespace_labels(&pod.namespace)
                .unwrap_or(&default_labels);
            label_selector_matches(sel, labels).unwrap_or(false)
        }
    };
    let pod_ok = match &p.pod_selector {
        None => true,
        Some(sel) => label_selector_matches(sel, &pod.labels).unwrap_or(false),
    };
    ns_ok && pod_ok
}

fn pick<'a>(
    candidates: Vec<&'a PodInfo>,
    at: Option<Timestamp>,
    names: Option<(&str, &str)>,
) -> Option<&'a PodInfo> {
    let named: Vec<&PodInfo> = candidates
        .into_iter()
        .filter(|p| names.is_none_or(|(ns, n)| p.namespace == ns && p.name == n))
        .collect();
    named
        .iter()
        .rev()
        .find(|p| p.alive_at(at))
        .or_else(|| named.iter().max_by_key(|p| p.created))
        .copied()
}

fn resolve<'a>(inventory: &'a Inventory, ep: &Endpoint, at: Option<Timestamp>) -> Side<'a> {
    let names = ep.pod_name();
    let by_ip = inventory
        .pods
        .iter()
        .filter(|p| !p.host_network && p.ips.contains(&ep.ip))
        .collect();
    if let Some(p) = pick(by_ip, at, names) {
        return Side::Pod(p);
    }
    if let Some((ns, n)) = names {
        let by_name = inventory
            .pods
            .iter()
            .filter(|p| p.namespace == ns && p.name == n)
            .collect();
        if let Some(p) = pick(by_name, at, None) {
            return Side::Pod(p);
        }
    }
    if let Some(n) = inventory
        .nodes
        .iter()
        .rev()
        .find(|n| n.addresses.contains(&ep.ip))
    {
        return Side::Node(n);
    }
    if let Some(n) = ep.node.as_deref().and_then(|n| inventory.node(n)) {
        return Side::Node(n);
    }
    Side::Other
}

fn resolve_dst<'a>(
    inventory: &'a Inventory,
    ep: &Endpoint,
    protocol: Protocol,
    at: Option<Timestamp>,
) -> (Side<'a>, std::net::IpAddr, Option<u16>) {
    let Some(svc) = inventory
        .services
        .iter()
        .rev()
        .find(|s| s.cluster_ips.contains(&ep.ip))
    else {
        return (resolve(inventory, ep, at), ep.ip, ep.port);
    };
    let pod = match ep.pod_name() {
        Some((ns, n)) => pick(
            inventory
                .pods
                .iter()
                .filter(|p| p.namespace == ns && p.name == n)
                .collect(),
            at,
            None,
        ),
        None => inventory.service_backends(svc).first().copied(),
    };
    let Some(pod) = pod else {
        if let Some(eps) = inventory.address_endpoints(svc)
            && let Some(addr) = eps.addresses.first().copied()
        {
            let port = ep.port.map(|p| eps.port_for(p, protocol).unwrap_or(p));
            let target = Endpoint::bare(addr, port);
            return (resolve(inventory, &target, at), addr, port);
        }
        return (Side::Other, ep.ip, ep.port);
    };
    let port = ep
        .port
        .map(|p| svc.backend_port(p, protocol, Some(pod)).unwrap_or(p));
    let ip = pod
        .ips
        .iter()
        .find(|i| i.is_ipv4() == ep.ip.is_ipv4())
        .or_else(|| pod.ips.first())
        .copied()
        .unwrap_or(ep.ip);
    (Side::Pod(pod), ip, port)
}
