//! The literal ClusterNetworkPolicy tiers for the reference evaluator
//! ([`crate::policy::reference`]): read straight off the API objects at every call, no
//! pre-computation, to check the engine's [`super::tiers`].

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{
    Action, ClusterNetworkPolicy, EgressPeer, IngressPeer, NamespacedPod, ProtocolMatch, Tier,
};
use crate::{
    flow::Protocol,
    inventory::{Inventory, Labels, NodeInfo, PodInfo},
    policy::{Names, SideResult, SideVerdict, label_selector_matches},
};

/// A rule as the reference reads it: name, action, whether a peer matches, protocols.
type RuleView<'a> = (
    Option<&'a str>,
    Action,
    bool,
    Option<&'a Vec<ProtocolMatch>>,
);

/// One direction of a pod, as the reference asks it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Question<'a> {
    pub(crate) me: &'a PodInfo,
    pub(crate) ingress: bool,
    /// The other side when it is a pod that is not hostNetwork.
    pub(crate) peer_pod: Option<&'a PodInfo>,
    /// The other side's node (a node, or the node of a hostNetwork pod).
    pub(crate) peer_node: Option<&'a NodeInfo>,
    pub(crate) peer_ip: IpAddr,
    pub(crate) dst_pod: Option<&'a PodInfo>,
    pub(crate) port: Option<u16>,
    pub(crate) protocol: Protocol,
    pub(crate) dns_names: &'a [String],
}

fn sel(s: &LabelSelector, labels: &Labels) -> bool {
    label_selector_matches(s, labels).unwrap_or(false)
}

fn ns_labels(inventory: &Inventory, ns: &str) -> Labels {
    inventory
        .namespace_labels(ns)
        .cloned()
        .unwrap_or_else(|| Labels::from([("kubernetes.io/metadata.name", ns)]))
}

fn pod_in(
    inventory: &Inventory,
    pod: &PodInfo,
    ns: &LabelSelector,
    pods: Option<&LabelSelector>,
) -> bool {
    !pod.host_network
        && sel(ns, &ns_labels(inventory, &pod.namespace))
        && pods.is_none_or(|p| sel(p, &pod.labels))
}

fn namespaced(inventory: &Inventory, pod: &PodInfo, np: &NamespacedPod) -> bool {
    pod_in(
        inventory,
        pod,
        &np.namespace_selector,
        Some(&np.pod_selector),
    )
}

fn domain_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => name == pattern,
    }
}

fn protocol_matches(p: &ProtocolMatch, q: &Question<'_>) -> bool {
    let Some(port) = q.port else { return false };
    let numbered = [
        (&p.tcp, Protocol::Tcp),
        (&p.udp, Protocol::Udp),
        (&p.sctp, Protocol::Sctp),
    ];
    for (pp, proto) in numbered {
        if let Some(pp) = pp {
            let Some(d) = &pp.destination_port else {
                return false;
            };
            let port = i32::from(port);
            return proto == q.protocol
                && (d.number == Some(port)
                    || d.range.is_some_and(|r| r.start <= port && port <= r.end));
        }
    }
    match &p.destination_named_port {
        Some(name) => q.dst_pod.and_then(|d| d.named_port(name, q.protocol)) == Some(port),
        None => false,
    }
}

fn ingress_peer(inventory: &Inventory, p: &IngressPeer, q: &Question<'_>) -> bool {
    let Some(pod) = q.peer_pod else { return false };
    match (&p.namespaces, &p.pods) {
        (Some(ns), _) => pod_in(inventory, pod, ns, None),
        (_, Some(np)) => namespaced(inventory, pod, np),
        _ => false,
    }
}

fn egress_peer(inventory: &Inventory, p: &EgressPeer, q: &Question<'_>) -> bool {
    if let Some(ns) = &p.namespaces {
        return q
            .peer_pod
            .is_some_and(|pod| pod_in(inventory, pod, ns, None));
    }
    if let Some(np) = &p.pods {
        return q.peer_pod.is_some_and(|pod| namespaced(inventory, pod, np));
    }
    if let Some(nodes) = &p.nodes {
        return q.peer_node.is_some_and(|n| sel(nodes, &n.labels));
    }
    if let Some(networks) = &p.networks {
        return networks
            .iter()
            .filter_map(|n| n.parse::<IpNet>().ok())
            .any(|n| n.trunc().contains(&q.peer_ip));
    }
    if let Some(names) = &p.domain_names {
        return names
            .iter()
            .any(|d| q.dns_names.iter().any(|n| domain_matches(d, n)));
    }
    false
}

/// The first rule of `tier` matching `q`, read literally: its action and the verdict it gives
/// (for Pass, the verdict is meaningless). `policies` are valid.
pub(crate) fn decide(
    inventory: &Inventory,
    policies: &[&ClusterNetworkPolicy],
    tier: Tier,
    q: &Question<'_>,
) -> Option<(Action, SideVerdict)> {
    let mut applicable: Vec<&ClusterNetworkPolicy> = policies
        .iter()
        .copied()
        .filter(|p| p.spec.tier == tier)
        .filter(
            |p| match (&p.spec.subject.namespaces, &p.spec.subject.pods) {
                (Some(ns), _) => pod_in(inventory, q.me, ns, None),
                (_, Some(np)) => namespaced(inventory, q.me, np),
                _ => false,
            },
        )
        .collect();
    applicable.sort_by_key(|p| (p.spec.priority, p.id()));
    for p in applicable {
        let dir = if q.ingress { "ingress" } else { "egress" };
        let rules: Vec<RuleView<'_>> = if q.ingress {
            p.spec
                .ingress
                .iter()
                .map(|r| {
                    let peer = r.from.iter().any(|f| ingress_peer(inventory, f, q));
                    (r.name.as_deref(), r.action, peer, r.protocols.as_ref())
                })
                .collect()
        } else {
            p.spec
                .egress
                .iter()
                .map(|r| {
                    let peer = r.to.iter().any(|t| egress_peer(inventory, t, q));
                    (r.name.as_deref(), r.action, peer, r.protocols.as_ref())
                })
                .collect()
        };
        for (i, (name, action, peer, protocols)) in rules.into_iter().enumerate() {
            let ports = protocols.is_none_or(|ps| ps.iter().any(|pm| protocol_matches(pm, q)));
            if peer && ports {
                let label = match name.filter(|n| !n.is_empty()) {
                    Some(n) => format!("{}:{dir}[{i}]:{n}", p.id()),
                    None => format!("{}:{dir}[{i}]", p.id()),
                };
                let verdict = SideVerdict {
                    result: if action == Action::Deny {
                        SideResult::Denied
                    } else {
                        SideResult::Allowed
                    },
                    policies: Names::from(vec![p.id()]),
                    rules: Names::from(vec![label]),
                    reason: None,
                };
                return Some((action, verdict));
            }
        }
    }
    None
}
