//! The ClusterNetworkPolicy tiers compiled against an inventory, for the engine: per pod and
//! direction the Admin and Baseline policies whose subject selects it (in evaluation order:
//! priority, then name), every pod peer as a bitset of pods, every nodes peer as a bitset of
//! nodes. A question is answered by walking the pod's policies' rules in order until one
//! matches (the first match decides).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Action, ClusterNetworkPolicy, Tier};
use crate::{
    flow::Protocol,
    inventory::{ContainerPortInfo, Inventory, Labels},
    policy::{Names, PolicyError, SideResult, SideVerdict, label_selector_matches},
    rules::cluster::compile::{
        CompiledCnp, DomainPattern, Peer, PodMatch, PortMatch, compile, ports_match,
    },
};

/// A set of indices (pods or nodes).
#[derive(Debug, Clone)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(len: usize, mut member: impl FnMut(usize) -> bool) -> Bits {
        let mut words = vec![0u64; len.div_ceil(64)];
        for i in 0..len {
            if member(i) {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        Bits(words.into_boxed_slice())
    }

    #[inline]
    fn contains(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

#[derive(Debug, Clone)]
enum TierPeer {
    Pods(Bits),
    Nodes(Bits),
    Networks(Box<[IpNet]>),
    Domains(Box<[DomainPattern]>),
}

/// A compiled rule with its explanation (shared names: a verdict clones no string).
#[derive(Debug, Clone)]
pub(crate) struct TierRule {
    pub(crate) action: Action,
    peers: Box<[TierPeer]>,
    ports: Option<Box<[PortMatch]>>,
    /// `[cnp/<name>]`.
    pub(crate) policies: Names,
    /// `[cnp/<name>:egress[i]…]`.
    pub(crate) rules: Names,
}

impl TierRule {
    /// The verdict of a direction this rule decided (Accept or Deny).
    pub(crate) fn verdict(&self) -> SideVerdict {
        SideVerdict {
            result: self.result(),
            policies: self.policies.clone(),
            rules: self.rules.clone(),
            reason: None,
        }
    }

    /// Allowed for Accept, denied for Deny (Pass never decides).
    pub(crate) fn result(&self) -> SideResult {
        match self.action {
            Action::Deny => SideResult::Denied,
            Action::Accept | Action::Pass => SideResult::Allowed,
        }
    }
}

#[derive(Debug, Clone)]
struct TierPolicy {
    ingress: Box<[TierRule]>,
    egress: Box<[TierRule]>,
}

/// One direction of a pod asked about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TierQuery<'a> {
    /// The pod (engine index) whose direction this is.
    pub(crate) me: u32,
    /// Ingress of `me` (else egress).
    pub(crate) ingress: bool,
    /// The other side, when it is a pod that is not hostNetwork.
    pub(crate) peer_pod: Option<u32>,
    /// The other side's node, when it is a node or a hostNetwork pod.
    pub(crate) peer_node: Option<u32>,
    /// The other side's address.
    pub(crate) peer_ip: IpAddr,
    /// The destination pod (named ports).
    pub(crate) dst_pod: Option<u32>,
    /// The destination port.
    pub(crate) port: Option<u16>,
    /// The protocol.
    pub(crate) protocol: Protocol,
    /// The names the client resolved to the destination (egress `domainNames`).
    pub(crate) dns_names: &'a [String],
}

/// The tiers of ClusterNetworkPolicies compiled against one inventory.
#[derive(Debug)]
pub(crate) struct ClusterTiers {
    policies: Box<[TierPolicy]>,
    /// Per pod: the lists (in `lists`) of Admin ingress, Admin egress, Baseline ingress,
    /// Baseline egress policies selecting it.
    pods: Box<[[u32; 4]]>,
    /// Policy indices in evaluation order; list 0 is empty.
    lists: Box<[Box<[u32]>]>,
    /// Container ports per pod (named ports).
    ports: Box<[Arc<[ContainerPortInfo]>]>,
    count: usize,
}

/// The labels of namespace `ns` (its `kubernetes.io/metadata.name` when unknown).
fn namespace_labels(inventory: &Inventory, ns: &str) -> Labels {
    inventory
        .namespace_labels(ns)
        .cloned()
        .unwrap_or_else(|| Labels::from([("kubernetes.io/metadata.name", ns)]))
}

fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    label_selector_matches(selector, labels).unwrap_or(false)
}

/// Pods (by index) a [`PodMatch`] covers, hostNetwork pods never.
fn pod_bits(inventory: &Inventory, m: &PodMatch, ns_cache: &mut HashMap<String, Labels>) -> Bits {
    let mut ns_hits: HashMap<&str, bool> = HashMap::new();
    Bits::new(inventory.pods.len(), |i| {
        let p = &inventory.pods[i];
        if p.host_network {
            return false;
        }
        let ns_ok = *ns_hits.entry(&p.namespace).or_insert_with(|| {
            let labels = ns_cache
                .entry(p.namespace.to_string())
                .or_insert_with(|| namespace_labels(inventory, &p.namespace));
            matches(&m.namespaces, labels)
        });
        ns_ok && m.pods.as_ref().is_none_or(|s| matches(s, &p.labels))
    })
}

impl ClusterTiers {
    /// Validates and compiles `policies` against `inventory`; `None` when there are none.
    pub(crate) fn compile(
        policies: &[ClusterNetworkPolicy],
        inventory: &Inventory,
    ) -> Result<Option<ClusterTiers>, PolicyError> {
        if policies.is_empty() {
            return Ok(None);
        }
        let mut compiled = policies
            .iter()
            .map(compile)
            .collect::<Result<Vec<CompiledCnp>, _>>()?;
        // Evaluation order: tier, priority (lower first), then name (the API leaves equal
        // priorities to the implementation; this one is deterministic).
        compiled.sort_by(|a, b| (a.tier, a.priority, &a.id).cmp(&(b.tier, b.priority, &b.id)));
        let mut ns_cache = HashMap::new();
        let mut out = Vec::with_capacity(compiled.len());
        let mut subjects = Vec::with_capacity(compiled.len());
        for p in &compiled {
            let mut rules = |list: &[crate::rules::cluster::compile::Rule]| -> Box<[TierRule]> {
                list.iter()
                    .map(|r| TierRule {
                        action: r.action,
                        peers: r
                            .peers
                            .iter()
                            .map(|peer| match peer {
                                Peer::Pods(m) => {
                                    TierPeer::Pods(pod_bits(inventory, m, &mut ns_cache))
                                }
                                Peer::Nodes(sel) => {
                                    TierPeer::Nodes(Bits::new(inventory.nodes.len(), |i| {
                                        matches(sel, &inventory.nodes[i].labels)
                                    }))
                                }
                                Peer::Networks(n) => {
                                    TierPeer::Networks(n.clone().into_boxed_slice())
                                }
                                Peer::Domains(d) => TierPeer::Domains(d.clone().into_boxed_slice()),
                            })
                            .collect(),
                        ports: r.ports.clone().map(Vec::into_boxed_slice),
                        policies: Names::from(vec![p.id.clone()]),
                        rules: Names::from(vec![r.label.clone()]),
                    })
                    .collect()
            };
            let ingress = rules(&p.ingress);
            let egress = rules(&p.egress);
            out.push(TierPolicy { ingress, egress });
            subjects.push(pod_bits(inventory, &p.subject, &mut ns_cache));
        }
        let mut list_ids: HashMap<Vec<u32>, u32> = HashMap::from([(Vec::new(), 0)]);
        let mut lists: Vec<Box<[u32]>> = vec![Box::new([])];
        let mut pods = Vec::with_capacity(inventory.pods.len());
        for i in 0..inventory.pods.len() {
            let mut slots = [0u32; 4];
            for (slot, (tier, ingress)) in [
                (Tier::Admin, true),
                (Tier::Admin, false),
                (Tier::Baseline, true),
                (Tier::Baseline, false),
            ]
            .into_iter()
            .enumerate()
            {
                let list: Vec<u32> = compiled
                    .iter()
                    .enumerate()
                    .filter(|(pi, p)| {
                        p.tier == tier
                            && if ingress {
                                !p.ingress.is_empty()
                            } else {
                                !p.egress.is_empty()
                            }
                            && subjects[*pi].contains(u32::try_from(i).unwrap_or(u32::MAX))
                    })
                    .map(|(pi, _)| u32::try_from(pi).unwrap_or(u32::MAX))
                    .collect();
                let next = u32::try_from(lists.len()).unwrap_or(u32::MAX);
                slots[slot] = *list_ids.entry(list.clone()).or_insert_with(|| {
                    lists.push(list.into_boxed_slice());
                    next
                });
            }
            pods.push(slots);
        }
        Ok(Some(ClusterTiers {
            count: out.len(),
            policies: out.into_boxed_slice(),
            pods: pods.into_boxed_slice(),
            lists: lists.into_boxed_slice(),
            ports: inventory
                .pods
                .iter()
                .map(|p| Arc::clone(&p.container_ports))
                .collect(),
        }))
    }

    /// Number of compiled ClusterNetworkPolicies.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The first rule of `tier` that matches `q` (its action decides; Pass ends the tier),
    /// or `None` when no rule of the tier matches.
    pub(crate) fn decide(&self, tier: Tier, q: &TierQuery<'_>) -> Option<&TierRule> {
        let slots = self.pods.get(q.me as usize)?;
        let slot = match (tier, q.ingress) {
            (Tier::Admin, true) => 0,
            (Tier::Admin, false) => 1,
            (Tier::Baseline, true) => 2,
            (Tier::Baseline, false) => 3,
        };
        let list = self.lists.get(slots[slot] as usize)?;
        for pi in list.iter() {
            let Some(policy) = self.policies.get(*pi as usize) else {
                continue;
            };
            let rules = if q.ingress {
                &policy.ingress
            } else {
                &policy.egress
            };
            for rule in rules.iter() {
                if self.rule_matches(rule, q) {
                    return Some(rule);
                }
            }
        }
        None
    }

    fn rule_matches(&self, rule: &TierRule, q: &TierQuery<'_>) -> bool {
        let named = |name: &str| {
            let d = q.dst_pod?;
            self.ports
                .get(d as usize)?
                .iter()
                .find(|p| p.name.as_deref() == Some(name) && p.protocol == q.protocol)
                .map(|p| p.port)
        };
        if !ports_match(rule.ports.as_deref(), q.port, q.protocol, named) {
            return false;
        }
        rule.peers.iter().any(|peer| match peer {
            TierPeer::Pods(bits) => q.peer_pod.is_some_and(|p| bits.contains(p)),
            TierPeer::Nodes(bits) => q.peer_node.is_some_and(|n| bits.contains(n)),
            TierPeer::Networks(nets) => nets.iter().any(|n| n.contains(&q.peer_ip)),
            TierPeer::Domains(domains) => {
                !q.ingress
                    && q.dns_names
                        .iter()
                        .any(|name| domains.iter().any(|d| d.matches(name)))
            }
        })
    }
}
