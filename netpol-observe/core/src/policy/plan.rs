//! A read-only view of what a [`PolicyEngine`] compiled ([`PolicyEngine::plan`]): per pod and
//! direction, whether the pod is isolated and the rules that allow traffic, with their peers
//! resolved to pods (indices into the inventory's pods, which the caller maps to addresses)
//! and ipBlocks, and their ports resolved to protocols and port ranges (named ports resolved on
//! the destination pod as a verdict resolves them). An enforcer (the lab's nftables) maps it
//! onto its own rules instead of interpreting the policies a second time.
//!
//! What the view leaves to the enforcer, as the engine decides it without rules: a pod's
//! traffic to itself and traffic between a pod and its own node are always allowed, hostNetwork
//! pods are never isolated (and, as peers, are their node's address), and a connection to a
//! ClusterIP is judged at its backend pod and target port (after DNAT). A connection needs the
//! destination's ingress and the source's egress.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::{
    Name, Names, PolicyEngine,
    table::{GroupRef, PeerKey},
};
use crate::{flow::Protocol, rules::network_policy::PortSpec};

/// A pod as the engine compiled it (filled by the engine's accessors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompiledPod<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) ips: &'a [IpAddr],
    pub(crate) host_network: bool,
    /// Peer class (`None` for hostNetwork pods).
    pub(crate) class: Option<u32>,
    /// The group isolating it for ingress (`None`: not isolated).
    pub(crate) ingress: Option<GroupRef>,
    /// The group isolating it for egress.
    pub(crate) egress: Option<GroupRef>,
}

/// A direction of a pod's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic to the pod (the pod is the destination).
    Ingress,
    /// Traffic from the pod (the pod is the source).
    Egress,
}

/// A pod of the plan (the inventory's pod of the same index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanPod<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Addresses.
    pub ips: &'a [IpAddr],
    /// hostNetwork pods are outside policy scope (never isolated, never a pod peer).
    pub host_network: bool,
}

/// One direction of an isolated pod: only what one of `rules` allows passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidePlan {
    /// The policies isolating the pod in this direction (`ns/name`, sorted).
    pub policies: Names,
    /// Their rules in this direction, in policy order then rule order.
    pub rules: Vec<RulePlan>,
}

/// One ingress or egress rule as it applies to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePlan {
    /// The policy (`ns/name`).
    pub policy: Name,
    /// The rule (`ns/name:ingress[i]`).
    pub rule: Name,
    /// Who the other side may be.
    pub peers: PeerPlan,
    /// `None`: every port and protocol (the rule has no `ports`). Otherwise the rule allows
    /// what one entry allows (an empty list allows nothing: its named ports resolve nowhere).
    pub ports: Option<Vec<PortPlan>>,
}

/// The peers of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPlan {
    /// Every peer (the rule has no `from`/`to`).
    Any,
    /// The pods its pod peers select and the addresses of its ipBlocks (which match pod
    /// addresses too); either may be empty.
    Listed {
        /// Pods (indices, ascending; hostNetwork pods never).
        pods: Vec<usize>,
        /// ipBlocks, in the order the rule names them (duplicates once).
        blocks: Vec<IpBlock>,
    },
}

/// An `ipBlock`: the addresses of `cidr` except those of `except`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBlock {
    /// The CIDR (host bits cleared).
    pub cidr: IpNet,
    /// CIDRs inside it that are excluded.
    pub except: Vec<IpNet>,
}

/// One entry of a rule's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPlan {
    /// Every port of the protocol (and its packets without a port).
    Protocol(Protocol),
    /// Destination ports `start..=end` of the protocol (a numeric port, its `endPort`, or, on
    /// ingress, a named port resolved on the pod itself).
    Range {
        /// The protocol.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Last port (inclusive).
        end: u16,
    },
    /// A named port on egress, resolved on each destination pod: per port number (ascending),
    /// the pods among the rule's peers whose container port of that name and protocol it is
    /// (ascending). For this entry these pods are the peers: the port is the destination
    /// pod's, so an address that is no pod's matches nothing (a pod counts as a peer by its
    /// selectors, or when one of its addresses is in one of the rule's ipBlocks).
    Named {
        /// The protocol.
        protocol: Protocol,
        /// The name.
        name: String,
        /// Port number → the destination pods.
        ports: Vec<(u16, Vec<usize>)>,
    },
}

/// The read-only view of a compiled [`PolicyEngine`] ([`PolicyEngine::plan`]).
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    engine: &'a PolicyEngine,
}

impl PolicyEngine {
    /// The view of what this engine compiled, per pod and direction ([`Plan`]). `None` when
    /// the engine has ClusterNetworkPolicies, whose tiers the view does not describe.
    pub fn plan(&self) -> Option<Plan<'_>> {
        (self.cluster_policy_count() == 0).then_some(Plan { engine: self })
    }
}

impl<'a> Plan<'a> {
    /// Number of pods (the inventory's pods, in its order: the plan's pod indices).
    pub fn pod_count(&self) -> usize {
        self.engine.compiled_pod_count()
    }

    /// Pod `pod`.
    pub fn pod(&self, pod: usize) -> Option<PlanPod<'a>> {
        let p = self.engine.compiled_pod(pod)?;
        Some(PlanPod {
            namespace: p.namespace,
            name: p.name,
            ips: p.ips,
            host_network: p.host_network,
        })
    }

    /// Direction `direction` of pod `pod`: `None` when no policy isolates it there (every
    /// peer and port allowed), else the policies and rules that decide it.
    pub fn side(&self, pod: usize, direction: Direction) -> Option<SidePlan> {
        let p = self.engine.compiled_pod(pod)?;
        let group = match direction {
            Direction::Ingress => p.ingress,
            Direction::Egress => p.egress,
        }?;
        let tables = self.engine.compiled_tables();
        let g = tables.group(group)?;
        Some(SidePlan {
            policies: g.denied.clone(),
            rules: g
                .rules
                .iter()
                .filter_map(|r| self.rule(*r, pod, direction))
                .collect(),
        })
    }

    /// Rule `r` (global id) as it applies to pod `pod` in `direction`.
    fn rule(&self, r: u32, pod: usize, direction: Direction) -> Option<RulePlan> {
        let tables = self.engine.compiled_tables();
        let info = tables.rule(r)?;
        let peers = match &info.blocks {
            None => PeerPlan::Any,
            Some(blocks) => PeerPlan::Listed {
                pods: (0..self.pod_count())
                    .filter(|&i| {
                        self.engine
                            .compiled_pod(i)
                            .and_then(|p| p.class)
                            .is_some_and(|c| tables.rule_allows_class(r, c))
                    })
                    .collect(),
                blocks: blocks
                    .iter()
                    .filter_map(|b| tables.block(*b))
                    .map(|(cidr, except)| IpBlock {
                        cidr: *cidr,
                        except: except.to_vec(),
                    })
                    .collect(),
            },
        };
        let ports = info.ports.as_ref().map(|list| {
            list.iter()
                .filter_map(|pm| match &pm.port {
                    PortSpec::Any => Some(PortPlan::Protocol(pm.protocol)),
                    PortSpec::Range(start, end) => Some(PortPlan::Range {
                        protocol: pm.protocol,
                        start: *start,
                        end: *end,
                    }),
                    PortSpec::Named(name) => match direction {
                        // The destination is the pod itself.
                        Direction::Ingress => self
                            .engine
                            .compiled_named_port(pod, name, pm.protocol)
                            .map(|n| PortPlan::Range {
                                protocol: pm.protocol,
                                start: n,
                                end: n,
                            }),
                        Direction::Egress => Some(PortPlan::Named {
                            protocol: pm.protocol,
                            name: name.clone(),
                            ports: self.named_destinations(r, name, pm.protocol),
                        }),
                    },
                })
                .collect()
        });
        Some(RulePlan {
            policy: self
                .engine
                .compiled_policy_names()
                .get(info.policy as usize)?
                .clone(),
            rule: info.label.clone(),
            peers,
            ports,
        })
    }

    /// The destination pods rule `r` allows (by its peers, as a verdict tests them) that have
    /// a port named `name` with `protocol`, by port number.
    fn named_destinations(&self, r: u32, name: &str, protocol: Protocol) -> Vec<(u16, Vec<usize>)> {
        let tables = self.engine.compiled_tables();
        let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for i in 0..self.pod_count() {
            let Some(p) = self.engine.compiled_pod(i).filter(|p| !p.host_network) else {
                continue;
            };
            let Some(port) = self.engine.compiled_named_port(i, name, protocol) else {
                continue;
            };
            let allowed = p.ips.iter().any(|ip| {
                tables.rule_allows(
                    r,
                    tables.rows(PeerKey {
                        class: p.class,
                        ip: *ip,
                    }),
                )
            });
            if allowed {
                by_port.entry(port).or_default().push(i);
            }
        }
        by_port.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{Direction, PeerPlan, PortPlan, RulePlan, SidePlan};
    use crate::{
        flow::{FlowRecord, Protocol},
        inventory::Inventory,
        policy::{PolicyEngine, synth},
    };

    /// Whether `rule` allows the flow from/to the peer (`peer_ip`, the pod `peer` holding it),
    /// `dst` being the destination pod.
    fn rule_allows(
        rule: &RulePlan,
        flow: &FlowRecord,
        peer_ip: IpAddr,
        peer: Option<usize>,
        dst: Option<usize>,
    ) -> bool {
        let peers_allow = match &rule.peers {
            PeerPlan::Any => true,
            PeerPlan::Listed { pods, blocks } => {
                peer.is_some_and(|p| pods.contains(&p))
                    || blocks.iter().any(|b| {
                        b.cidr.contains(&peer_ip) && !b.except.iter().any(|e| e.contains(&peer_ip))
                    })
            }
        };
        let Some(ports) = &rule.ports else {
            return peers_allow;
        };
        ports.iter().any(|p| match p {
            PortPlan::Protocol(proto) => flow.protocol == *proto && peers_allow,
            PortPlan::Range {
                protocol,
                start,
                end,
            } => {
                flow.protocol == *protocol
                    && flow.dst.port.is_some_and(|n| *start <= n && n <= *end)
                    && peers_allow
            }
            PortPlan::Named {
                protocol, ports, ..
            } => {
                flow.protocol == *protocol
                    && ports.iter().any(|(n, pods)| {
                        flow.dst.port == Some(*n) && dst.is_some_and(|d| pods.contains(&d))
                    })
            }
        })
    }

    /// Each pod's ingress and egress side.
    type Sides = Vec<(Option<SidePlan>, Option<SidePlan>)>;

    /// The flow's verdict read off the plan, as an enforcer applies it: self traffic and a
    /// pod's own node always pass; each isolated side needs a rule.
    fn plan_allows(sides: &Sides, inv: &Inventory, flow: &FlowRecord) -> bool {
        let pod_at = |ip: IpAddr| {
            inv.pods
                .iter()
                .position(|p| !p.host_network && p.deleted.is_none() && p.ips.contains(&ip))
        };
        let (src, dst) = (pod_at(flow.src.ip), pod_at(flow.dst.ip));
        if src.is_some() && src == dst {
            return true;
        }
        let side = |me: Option<usize>, peer_ip: IpAddr, peer: Option<usize>, d: Direction| {
            let Some(me) = me else {
                return true;
            };
            let own_node = inv.nodes.iter().any(|n| {
                n.addresses.contains(&peer_ip)
                    && inv.pods[me].node_name.as_deref() == Some(n.name.as_str())
            });
            if own_node {
                return true;
            }
            let side = match d {
                Direction::Ingress => &sides[me].0,
                Direction::Egress => &sides[me].1,
            };
            match side {
                None => true,
                Some(s) => s
                    .rules
                    .iter()
                    .any(|r| rule_allows(r, flow, peer_ip, peer, dst)),
            }
        };
        side(src, flow.dst.ip, dst, Direction::Egress)
            && side(dst, flow.src.ip, src, Direction::Ingress)
    }

    /// On random flows of a synthetic cluster (every construct: selectors, namespace
    /// selectors, ipBlocks with except, numbered, ranged and named ports, policy types), a flow
    /// passes the plan's rules exactly when the engine allows it. ClusterIP destinations are
    /// left out (an enforcer sees them after DNAT, at the backend) and flows carry no time (a
    /// reused address is its live pod's).
    #[test]
    fn plan_agrees_with_the_engine_on_random_flows() {
        for seed in [1, 2, 3] {
            let inv = synth::cluster(6, 400, seed);
            let pols = synth::policies(60, 6, seed);
            let engine = PolicyEngine::compile(&pols, &inv).unwrap();
            let plan = engine.plan().unwrap();
            assert_eq!(plan.pod_count(), inv.pods.len());
            let sides: Sides = (0..plan.pod_count())
                .map(|p| {
                    (
                        plan.side(p, Direction::Ingress),
                        plan.side(p, Direction::Egress),
                    )
                })
                .collect();
            let services: Vec<IpAddr> = inv
                .services
                .iter()
                .flat_map(|s| s.cluster_ips.iter().copied())
                .collect();
            let (mut allowed, mut denied) = (0, 0);
            for mut flow in synth::flows(&inv, 20_000, seed) {
                if services.contains(&flow.dst.ip) {
                    continue;
                }
                flow.first_seen = None;
                flow.last_seen = None;
                let want = engine.evaluate_flow(&flow).allowed;
                assert_eq!(
                    plan_allows(&sides, &inv, &flow),
                    want,
                    "seed {seed}: {flow:?}"
                );
                if want {
                    allowed += 1;
                } else {
                    denied += 1;
                }
            }
            // Both outcomes are well represented.
            assert!(
                allowed > 1000 && denied > 1000,
                "{allowed} allowed, {denied} denied"
            );
        }
    }

    /// The view of one policy: isolation per direction, pod peers, ipBlocks with excepts,
    /// ranges, named ports resolved on the pod itself (ingress) and per destination (egress).
    #[test]
    fn plan_of_one_policy() {
        let inv = synth::cluster(2, 12, 5);
        let policy: k8s_openapi::api::networking::v1::NetworkPolicy = crate::yaml::from_str(
            "metadata: {name: p, namespace: ns-0}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: http}, {port: 9000, endPort: 9100}, {protocol: UDP}]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: http}]
",
        )
        .unwrap();
        let engine = PolicyEngine::compile(&[policy], &inv).unwrap();
        let plan = engine.plan().unwrap();
        let in_ns = |ns: &str| -> Vec<usize> {
            (0..plan.pod_count())
                .filter(|i| {
                    let p = plan.pod(*i).unwrap();
                    p.namespace == ns && !p.host_network
                })
                .collect()
        };
        let pod = in_ns("ns-0")[0];
        let ingress = plan.side(pod, Direction::Ingress).unwrap();
        assert_eq!(ingress.policies, ["ns-0/p"]);
        assert_eq!(ingress.rules.len(), 1);
        let r = &ingress.rules[0];
        assert_eq!((&*r.policy, &*r.rule), ("ns-0/p", "ns-0/p:ingress[0]"));
        let PeerPlan::Listed { pods, blocks } = &r.peers else {
            panic!("{r:?}");
        };
        assert_eq!(pods, &in_ns("ns-0"));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].cidr.to_string(), "10.0.0.0/8");
        assert_eq!(blocks[0].except[0].to_string(), "10.1.0.0/16");
        assert_eq!(
            r.ports.as_deref().unwrap(),
            [
                PortPlan::Range {
                    protocol: Protocol::Tcp,
                    start: 8080,
                    end: 8080
                },
                PortPlan::Range {
                    protocol: Protocol::Tcp,
                    start: 9000,
                    end: 9100
                },
                PortPlan::Protocol(Protocol::Udp),
            ]
        );
        let egress = plan.side(pod, Direction::Egress).unwrap();
        assert_eq!(
            egress.rules[0].peers,
            PeerPlan::Listed {
                pods: (0..plan.pod_count())
                    .filter(|i| !plan.pod(*i).unwrap().host_network)
                    .collect(),
                blocks: Vec::new(),
            }
        );
        let mut every = in_ns("ns-0");
        every.extend(in_ns("ns-1"));
        every.sort_unstable();
        assert_eq!(
            egress.rules[0].ports.as_deref().unwrap(),
            [PortPlan::Named {
                protocol: Protocol::Tcp,
                name: "http".into(),
                ports: vec![(8080, every)],
            }]
        );
        // Pods of the other namespace are not isolated.
        assert_eq!(plan.side(in_ns("ns-1")[0], Direction::Ingress), None);
    }
}
