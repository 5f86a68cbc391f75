//! `recommend --format clusternetworkpolicy`: the recommendation as
//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicies next to the namespaced
//! NetworkPolicies (which stay the least privilege of each workload):
//! - [`BASELINE`], Baseline tier: the cluster's default deny for every pod no NetworkPolicy
//!   isolates (namespaces the recommendation excluded, `kube-system` by default, left out),
//!   with DNS to kube-dns (and the node-local DNS address) allowed — what a platform team
//!   applies once, so that a new namespace starts closed;
//! - per workload with named external peers (flows whose `dst.dns_names` is not empty), an
//!   Admin-tier policy `<namespace>.<policy>.domains` accepting its egress to those names on
//!   the observed ports (`domainNames`, exact names): the destinations stay allowed when their
//!   addresses rotate, whatever the ipBlocks of the NetworkPolicy say.
//!
//! [`check`] proves with the engine that the whole output keeps every flow the NetworkPolicies
//! alone allow.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::Recommendation;
use crate::{
    flow::{FlowRecord, Protocol},
    inventory::Inventory,
    policy::{
        PolicyEngine, PolicyError,
        cluster::{
            Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec, EgressPeer, EgressRule,
            IngressPeer, IngressRule, NamespacedPod, ProtocolMatch, Subject, Tier,
        },
    },
};

/// The name of the Baseline policy.
pub const BASELINE: &str = "netpol-observe-baseline";
/// The priority of the written policies in their tiers (0-1000: room on both sides for the
/// platform team's own).
pub const PRIORITY: i32 = 500;
/// At most this many names per rule and rules per policy (the CRD's limits).
const MAX_ITEMS: usize = 25;
/// The label every namespace carries.
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

fn match_labels<K: Into<String>, V: Into<String>>(
    labels: impl IntoIterator<Item = (K, V)>,
) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn port(protocol: Protocol, number: u16) -> Option<ProtocolMatch> {
    let p = crate::policy::cluster::ProtocolPort::number(number);
    match protocol {
        Protocol::Tcp => Some(ProtocolMatch {
            tcp: Some(p),
            ..Default::default()
        }),
        Protocol::Udp => Some(ProtocolMatch {
            udp: Some(p),
            ..Default::default()
        }),
        Protocol::Sctp => Some(ProtocolMatch {
            sctp: Some(p),
            ..Default::default()
        }),
        _ => None,
    }
}

/// The Baseline default deny with DNS allowed.
fn baseline(rec: &Recommendation, inventory: &Inventory) -> ClusterNetworkPolicy {
    let excluded: BTreeSet<String> = rec.excluded_namespaces.iter().cloned().collect();
    let subject = if excluded.is_empty() {
        LabelSelector::default()
    } else {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: NAMESPACE_NAME.to_owned(),
                operator: "NotIn".to_owned(),
                values: Some(excluded.into_iter().collect()),
            }]),
        }
    };
    // kube-dns by its Service's selector, as the cluster runs it.
    let dns_pods = inventory
        .service("kube-system", "kube-dns")
        .and_then(|s| s.selector.as_ref())
        .filter(|l| !l.is_empty())
        .map(|l| match_labels(l.to_map()))
        .unwrap_or_else(|| match_labels([("k8s-app", "kube-dns")]));
    let dns_ports: Vec<ProtocolMatch> = [Protocol::Udp, Protocol::Tcp]
        .into_iter()
        .filter_map(|p| port(p, 53))
        .collect();
    ClusterNetworkPolicy::new(
        BASELINE,
        ClusterNetworkPolicySpec {
            tier: Tier::Baseline,
            priority: PRIORITY,
            subject: Subject {
                namespaces: Some(subject),
                pods: None,
            },
            ingress: vec![IngressRule {
                name: Some("default-deny".into()),
                action: Action::Deny,
                from: vec![IngressPeer {
                    namespaces: Some(LabelSelector::default()),
                    pods: None,
                }],
                protocols: None,
            }],
            egress: vec![
                EgressRule {
                    name: Some("dns".into()),
                    action: Action::Accept,
                    to: vec![
                        EgressPeer {
                            pods: Some(NamespacedPod {
                                namespace_selector: match_labels([(NAMESPACE_NAME, "kube-system")]),
                                pod_selector: dns_pods,
                            }),
                            ..Default::default()
                        },
                        EgressPeer {
                            networks: Some(vec![format!("{}/32", super::NODE_LOCAL_DNS)]),
                            ..Default::default()
                        },
                    ],
                    protocols: Some(dns_ports),
                },
                EgressRule {
                    name: Some("default-deny".into()),
                    action: Action::Deny,
                    to: vec![EgressPeer {
                        networks: Some(vec!["0.0.0.0/0".into(), "::/0".into()]),
                        ..Default::default()
                    }],
                    protocols: None,
                },
            ],
        },
    )
}

/// The Admin `domainNames` Accept policies, one per workload policy with named external peers.
fn domains(rec: &Recommendation) -> Vec<ClusterNetworkPolicy> {
    let mut out = Vec::new();
    for ((ns, name), hints) in &rec.hints {
        // Names per port as the NetworkPolicy's rule wrote it.
        let mut by_port: BTreeMap<Option<(Protocol, u16)>, BTreeSet<&str>> = BTreeMap::new();
        for ((rule_port, _cidr), block) in &hints.egress_names {
            let key = match rule_port {
                None => None,
                Some((protocol, p)) => match p.parse::<u16>() {
                    Ok(n) if port(*protocol, n).is_some() => Some((*protocol, n)),
                    // A named or ICMP port has no domainNames form: every port.
                    _ => None,
                },
            };
            by_port
                .entry(key)
                .or_default()
                .extend(block.names.iter().map(String::as_str));
        }
        if by_port.is_empty() {
            continue;
        }
        let Some(policy) = rec.policies.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        }) else {
            continue;
        };
        let pod_selector = policy
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.clone())
            .unwrap_or_default();
        let mut rules = Vec::new();
        for (p, names) in &by_port {
            let names: Vec<&str> = names.iter().copied().collect();
            for chunk in names.chunks(MAX_ITEMS) {
                rules.push(EgressRule {
                    name: Some(match p {
                        Some((protocol, n)) => {
                            format!("{}-{n}", protocol.as_str().to_ascii_lowercase())
                        }
                        None => "any-port".to_owned(),
                    }),
                    action: Action::Accept,
                    to: vec![EgressPeer {
                        domain_names: Some(chunk.iter().map(|s| (*s).to_owned()).collect()),
                        ..Default::default()
                    }],
                    protocols: p
                        .and_then(|(protocol, n)| port(protocol, n))
                        .map(|m| vec![m]),
                });
            }
        }
        for (i, chunk) in rules.chunks(MAX_ITEMS).enumerate() {
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("-{}", i + 1)
            };
            out.push(ClusterNetworkPolicy::new(
                format!("{ns}.{name}.domains{suffix}"),
                ClusterNetworkPolicySpec {
                    tier: Tier::Admin,
                    priority: PRIORITY,
                    subject: Subject {
                        namespaces: None,
                        pods: Some(NamespacedPod {
                            namespace_selector: match_labels([(NAMESPACE_NAME, ns.as_str())]),
                            pod_selector: pod_selector.clone(),
                        }),
                    },
                    ingress: Vec::new(),
                    egress: chunk.to_vec(),
                },
            ));
        }
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The ClusterNetworkPolicies of the recommendation: the Baseline, then the Admin
/// `domainNames` policies by name.
pub fn render(rec: &Recommendation, inventory: &Inventory) -> Vec<ClusterNetworkPolicy> {
    let mut out = vec![baseline(rec, inventory)];
    out.extend(domains(rec));
    out
}

/// The flows (attributed) the recommended NetworkPolicies allow but the whole output (they
/// and `cluster`) denies, described: empty when the output keeps every flow. An error when
/// the policies do not compile.
pub fn check(
    rec: &Recommendation,
    cluster: &[ClusterNetworkPolicy],
    inventory: &Inventory,
    flows: &[FlowRecord],
) -> Result<Vec<String>, PolicyError> {
    Ok(
        check_weighted(rec, cluster, inventory, flows.iter().map(|f| (f, 1)))?
            .into_iter()
            .flat_map(|(d, n)| std::iter::repeat_n(d, usize::try_from(n).unwrap_or(usize::MAX)))
            .collect(),
    )
}

/// [`check`] of attributed flows each standing for a number of records (the groups of a
/// [`FlowAggregate`](super::FlowAggregate)): each denied flow described once, with its number
/// of records.
pub fn check_weighted<'f>(
    rec: &Recommendation,
    cluster: &[ClusterNetworkPolicy],
    inventory: &Inventory,
    flows: impl IntoIterator<Item = (&'f FlowRecord, u64)>,
) -> Result<Vec<(String, u64)>, PolicyError> {
    let alone = PolicyEngine::compile(&rec.policies, inventory)?;
    let whole = PolicyEngine::compile_with_cluster(&rec.policies, cluster, inventory)?;
    Ok(flows
        .into_iter()
        .filter(|(f, _)| alone.evaluate_flow_compact(f).allowed)
        .filter_map(|(f, n)| {
            let v = whole.evaluate_flow(f);
            (!v.allowed).then(|| {
                (
                    format!(
                        "{} {} -> {}:{} (ingress {:?} {}, egress {:?} {})",
                        f.protocol,
                        f.src.ip,
                        f.dst.ip,
                        f.dst.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                        v.ingress.result,
                        v.ingress.policies.join(","),
                        v.egress.result,
                        v.egress.policies.join(",")
                    ),
                    n,
                )
            })
        })
        .collect())
}
