//! The compiled engine: the policies selecting each pod pre-computed at compile time, pods
//! grouped by the policies selecting them, each group's rules merged into per-port tables
//! ([`super::table`]), label keys and values interned, so that a verdict costs a few hash
//! lookups and integer comparisons whatever the number of policies.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::{
    Connection, Name, Names, PeerId, PolicyError, Reason, SideResult, SideVerdict, Verdict,
    cluster::{
        Action, ClusterNetworkPolicy, Tier,
        tiers::{ClusterTiers, TierQuery},
    },
    names::RuleNames,
    table::{PeerKey, Rows, Tables, TablesBuilder},
};
use crate::{
    attribution::{Attributor, Subnets},
    flow::{FlowRecord, Protocol},
    inventory::{Inventory, NetworkPolicy, PodDiff, PodInfo},
    rules::{
        network_policy::{CompiledPolicy, NsMatch, Peer, Rule, compile_policy},
        selector::{CompiledSelector, Interner},
    },
};

/// The pods, nodes and Services of one inventory snapshot as attribution indexes them (an
/// [`Attributor`]): what does not depend on the policies. Built once per snapshot
/// ([`PodTable::new`]) and shared by the engines compiled against it (the policies in force
/// and the staged ones, [`PolicyEngine::compile_shared`]). The engines' pod and node indices
/// are the attributor's (the inventory's order): a [`Connection`] it makes names the pods the
/// engines compiled.
#[derive(Debug)]
pub struct PodTable {
    attributor: Attributor,
}

impl PodTable {
    /// Indexes the pods, nodes and Services of `inventory` (no named subnets: the engines
    /// judge outside addresses by address).
    pub fn new(inventory: &Inventory) -> Arc<PodTable> {
        Self::with_attributor(Attributor::new(inventory, &Subnets::default()))
    }

    /// The table of `attributor`'s snapshot (what the agent attributes flows with: one index
    /// of the snapshot for attribution and the engines).
    pub fn with_attributor(attributor: Attributor) -> Arc<PodTable> {
        Arc::new(PodTable { attributor })
    }

    /// The table of `new` from this one when only pods changed (`diff`, from this table's
    /// snapshot to `new`): [`Attributor::update_pods`].
    pub fn update(&self, new: &Arc<Inventory>, diff: &PodDiff) -> Arc<PodTable> {
        Self::with_attributor(self.attributor.update_pods(Arc::clone(new), diff))
    }

    /// The attributor: what makes the [`Connection`]s the engines on this table evaluate.
    pub fn attributor(&self) -> &Attributor {
        &self.attributor
    }

    /// The id of the node named `name`, or [`NO_NODE`].
    fn node_id(&self, name: Option<&str>) -> u32 {
        name.and_then(|n| self.attributor.node_index(n))
            .map_or(NO_NODE, to_u32)
    }

    /// Whether this table was built from `inventory` (same pods, in order).
    fn indexes(&self, inventory: &Inventory) -> bool {
        self.attributor.pod_count() == inventory.pods.len()
            && inventory.pods.iter().enumerate().all(|(i, p)| {
                self.attributor
                    .pod(i)
                    .is_some_and(|e| e.namespace == p.namespace && e.name == p.name)
            })
    }
}

/// The fields of a pod every verdict reads, kept apart in a compact array.
#[derive(Debug, Clone, Copy)]
struct PodHot {
    /// Peer class: pods of one namespace with the same values for every key a peer selector
    /// looks at are one class (`NO_CLASS` for hostNetwork pods, never a pod peer).
    class: u32,
    /// The node (`NO_NODE`: unknown).
    node: u32,
    /// The group of the policies with the Ingress type selecting this pod (`NO_GROUP`: none,
    /// not isolated for ingress).
    ingress: u32,
    /// The group of the policies with the Egress type selecting this pod.
    egress: u32,
    host_network: bool,
}

const NO_CLASS: u32 = u32::MAX;
const NO_GROUP: u32 = u32::MAX;
const NO_NODE: u32 = u32::MAX;

/// What a direction is asked about: the pod `me`, the other side and its address.
#[derive(Debug, Clone, Copy)]
struct Query {
    me: u32,
    peer: Side,
    peer_ip: IpAddr,
    ingress: bool,
}

/// The flow's destination, (effective) port and protocol.
#[derive(Debug, Clone, Copy)]
struct FlowQuery {
    dst: Side,
    port: Option<u16>,
    protocol: Protocol,
}

/// One side of a flow, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Pod(u32),
    Node(u32),
    Other,
}

/// One direction of a [`CompactVerdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactSide {
    /// Not isolated, allowed or denied.
    pub result: SideResult,
    /// Set when decided without rules.
    pub reason: Option<Reason>,
}

impl From<(SideResult, Reason)> for CompactSide {
    fn from((result, reason): (SideResult, Reason)) -> Self {
        CompactSide {
            result,
            reason: Some(reason),
        }
    }
}

/// A verdict without its explanation ([`PolicyEngine::evaluate_compact`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactVerdict {
    /// Whether the flow is allowed.
    pub allowed: bool,
    /// The destination's ingress.
    pub ingress: CompactSide,
    /// The source's egress.
    pub egress: CompactSide,
}

/// Which policies select a pod, per direction (`ns/name`, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicies {
    /// Policies with the Ingress type selecting the pod (the pod is ingress-isolated if any).
    pub ingress: Vec<String>,
    /// Policies with the Egress type selecting the pod (the pod is egress-isolated if any).
    pub egress: Vec<String>,
}

/// The groups by direction (ingress) and list of selecting policies.
type GroupIds = HashMap<(bool, Box<[u32]>), u32>;

/// Container ports whose names some rule uses: (name id, protocol, port), in container order.
type PortList = Box<[(u32, Protocol, u16)]>;

/// What a verdict and its explanation are found from: the merged rule tables, the pods'
/// named ports and the rule names.
#[derive(Debug, Clone)]
struct Core {
    /// Groups of pods selected by the same policies and their merged rule tables.
    tables: Arc<Tables>,
    /// Per pod, its list in `port_lists`.
    named_ports: Box<[u32]>,
    /// The distinct lists of container ports whose names some rule uses: (name id, protocol,
    /// port), in container order (pods of one workload share theirs).
    port_lists: Arc<[PortList]>,
    /// Rule and policy names, for explanations.
    rule_names: Arc<RuleNames>,
}

impl Core {
    /// The first container port of pod `pod` named by rule name id `id` with `protocol`.
    #[inline]
    fn named_port_id(&self, pod: u32, id: u32, protocol: Protocol) -> Option<u16> {
        let list = self.named_ports.get(pod as usize)?;
        self.port_lists
            .get(*list as usize)?
            .iter()
            .find(|(n, p, _)| *n == id && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

/// NetworkPolicies compiled against an inventory: compile once, evaluate many times.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    /// Policy names (`ns/name`), sorted: policy indices are positions here.
    names: Vec<Name>,
    /// The rule tables, the named ports and the rule names.
    core: Core,
    /// The pods, nodes and Services as attribution indexes them (possibly shared with another
    /// engine).
    table: Arc<PodTable>,
    /// The same pods, the fields every verdict reads.
    hot: Vec<PodHot>,
    /// The ClusterNetworkPolicy tiers, when there are any (`None`: the NetworkPolicy-only
    /// path, unchanged).
    tiers: Option<Arc<ClusterTiers>>,
    /// What places a changed pod without recompiling ([`PolicyEngine::update_pods`]).
    selection: Arc<Selection>,
}

/// What an engine keeps from its compile to place a new or changed pod (its peer class, the
/// groups of the policies selecting it, its named ports) without recompiling.
#[derive(Debug)]
struct Selection {
    /// The compile's label interner (looked up, never extended).
    interner: Interner,
    /// The label keys peer selectors look at.
    peer_keys: std::collections::HashSet<u32>,
    /// Namespace ids.
    ns_ids: HashMap<String, u32>,
    /// Peer classes by (namespace, labels projected on `peer_keys`).
    class_ids: HashMap<(u32, Vec<(u32, u32)>), u32>,
    /// Per namespace, its policies: (index, podSelector, has Ingress, has Egress), ascending.
    ns_policies: HashMap<u32, Vec<(u32, CompiledSelector, bool, bool)>>,
    /// The groups by direction (ingress) and list of selecting policies.
    groups: GroupIds,
    /// The named-port lists by content.
    port_list_ids: HashMap<PortList, u32>,
}

impl PolicyEngine {
    /// Validates and compiles `policies` against `inventory` (pods, namespaces, nodes and
    /// Services). The first invalid policy is an error naming it and the field.
    pub fn compile(
        policies: &[NetworkPolicy],
        inventory: &Inventory,
    ) -> Result<PolicyEngine, PolicyError> {
        Self::compile_shared(policies, inventory, &PodTable::new(inventory))
    }

    /// As [`PolicyEngine::compile`], on the pod table `table` built from the same `inventory`
    /// ([`PodTable::new`]), which the engine then shares (engines compiled against one
    /// snapshot hold its pods once). A table built from another inventory is not used: the
    /// engine then indexes `inventory` itself.
    pub fn compile_shared(
        policies: &[NetworkPolicy],
        inventory: &Inventory,
        table: &Arc<PodTable>,
    ) -> Result<PolicyEngine, PolicyError> {
        Self::compile_shared_with_cluster(policies, &[], inventory, table)
    }

    /// As [`PolicyEngine::compile`], with ClusterNetworkPolicies `cluster`: their Admin tier
    /// decides before the NetworkPolicies, their Baseline tier after them for pods no
    /// NetworkPolicy isolates ([`super::cluster`]). The first invalid policy of either kind is
    /// an error naming it and the field.
    pub fn compile_with_cluster(
        policies: &[NetworkPolicy],
        cluster: &[ClusterNetworkPolicy],
        inventory: &Inventory,
    ) -> Result<PolicyEngine, PolicyError> {
        Self::compile_shared_with_cluster(policies, cluster, inventory, &PodTable::new(inventory))
    }

    /// [`PolicyEngine::compile_with_cluster`] on a shared pod table (see
    /// [`PolicyEngine::compile_shared`]). Stages: compile the policies, index the namespaces,
    /// class the pods as peers ([`PodClasses::build`]), find the policies selecting each pod
    /// ([`select_pods`]), the peer classes of each pod peer ([`peer_class_sets`]), merge the
    /// rules into group tables ([`build_tables`]), list the named ports ([`NamedPorts::build`]).
    pub fn compile_shared_with_cluster(
        policies: &[NetworkPolicy],
        cluster: &[ClusterNetworkPolicy],
        inventory: &Inventory,
        table: &Arc<PodTable>,
    ) -> Result<PolicyEngine, PolicyError> {
        let tiers = ClusterTiers::compile(cluster, inventory)?.map(Arc::new);
        let table = if table.indexes(inventory) {
            Arc::clone(table)
        } else {
            PodTable::new(inventory)
        };
        let mut interner = Interner::default();
        let mut compiled = policies
            .iter()
            .map(|p| compile_policy(p, &mut interner))
            .collect::<Result<Vec<_>, _>>()?;
        // Order never matters: verdicts list policies by `ns/name`.
        compiled.sort_by(|a, b| a.id.cmp(&b.id));

        let mut namespaces = Namespaces::new(inventory, &mut interner);
        let peer_keys = peer_keys(&compiled);
        let mut pods = PodClasses::build(
            inventory,
            &table,
            &peer_keys,
            &mut interner,
            &mut namespaces,
        );
        let policy_ns: Vec<u32> = compiled
            .iter()
            .map(|p| namespaces.id(&p.namespace, &mut interner))
            .collect();
        let ns_policies = namespace_policies(&compiled, &policy_ns);
        let selecting = select_pods(&mut compiled, &policy_ns, &namespaces, &pods);
        let sets = peer_class_sets(&mut compiled, &policy_ns, &pods);

        let names: Vec<Name> = compiled.iter().map(|p| Name::from(p.id.as_str())).collect();
        let (groups, tables) = build_tables(
            &compiled,
            &sets,
            pods.class_labels.len(),
            &names,
            &mut pods.hot,
            &selecting,
        );
        let rule_names = tables.rule_names(&names);
        let named = NamedPorts::build(inventory, &tables);

        Ok(PolicyEngine {
            names,
            core: Core {
                tables: Arc::new(tables),
                named_ports: named.per_pod,
                port_lists: named.lists.into(),
                rule_names: Arc::new(rule_names),
            },
            table,
            hot: pods.hot,
            tiers,
            selection: Arc::new(Selection {
                interner,
                peer_keys,
                ns_ids: namespaces.ids,
                class_ids: pods.class_ids,
                ns_policies,
                groups,
                port_list_ids: named.ids,
            }),
        })
    }

    /// This engine for `new` (its policies compiled against `new`), made from this one
    /// (compiled against `old`) when only pods changed (`diff`), on the pod table `table`
    /// built for `new` ([`PodTable::update`]): unchanged pods keep their place, changed ones
    /// are placed by the compile's lookups (peer class, groups of the policies selecting them,
    /// named ports). `None` when that is not enough — a pod whose labels make a peer class or
    /// a list of selecting policies the compile did not see, a new list of named ports, or
    /// ClusterNetworkPolicies (compiled per pod): then compile again. The verdicts are those
    /// of an engine compiled against `new`.
    pub fn update_pods(
        &self,
        new: &Inventory,
        diff: &PodDiff,
        table: &Arc<PodTable>,
    ) -> Option<PolicyEngine> {
        if self.tiers.is_some() || !table.indexes(new) || diff.old_of_new.len() != new.pods.len() {
            return None;
        }
        let mut hot = Vec::with_capacity(new.pods.len());
        let mut named_ports = Vec::with_capacity(new.pods.len());
        for (p, old) in new.pods.iter().zip(&diff.old_of_new) {
            let kept = old.and_then(|o| {
                Some((
                    *self.hot.get(o as usize)?,
                    *self.core.named_ports.get(o as usize)?,
                ))
            });
            let (h, n) = match kept {
                Some(k) => k,
                None => self.place(p, table)?,
            };
            hot.push(h);
            named_ports.push(n);
        }
        Some(PolicyEngine {
            names: self.names.clone(),
            core: Core {
                tables: Arc::clone(&self.core.tables),
                named_ports: named_ports.into_boxed_slice(),
                port_lists: Arc::clone(&self.core.port_lists),
                rule_names: Arc::clone(&self.core.rule_names),
            },
            table: Arc::clone(table),
            hot,
            tiers: None,
            selection: Arc::clone(&self.selection),
        })
    }

    /// A new or changed pod's place as the compile would give it, when the compile saw its
    /// peer class, groups and named-port list.
    fn place(&self, p: &PodInfo, table: &PodTable) -> Option<(PodHot, u32)> {
        let sel = &*self.selection;
        let ns = *sel.ns_ids.get(p.namespace.as_str())?;
        // Strings the compile never saw cannot be named by a selector: such a key is dropped,
        // such a value is one that no selector value equals.
        let mut labels: Vec<(u32, u32)> = p
            .labels
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    sel.interner.get(k)?,
                    sel.interner.get(v).unwrap_or(u32::MAX),
                ))
            })
            .collect();
        labels.sort_unstable();
        let (class, ingress, egress) = if p.host_network {
            (NO_CLASS, NO_GROUP, NO_GROUP)
        } else {
            let projected: Vec<(u32, u32)> = labels
                .iter()
                .filter(|(k, _)| sel.peer_keys.contains(k))
                .copied()
                .collect();
            let class = *sel.class_ids.get(&(ns, projected))?;
            let (mut ingress, mut egress) = (Vec::new(), Vec::new());
            for (pi, selector, i, e) in sel.ns_policies.get(&ns).into_iter().flatten() {
                if selector.matches(&labels) {
                    if *i {
                        ingress.push(*pi);
                    }
                    if *e {
                        egress.push(*pi);
                    }
                }
            }
            let group = |dir: bool, list: Vec<u32>| -> Option<u32> {
                if list.is_empty() {
                    return Some(NO_GROUP);
                }
                sel.groups.get(&(dir, list.into_boxed_slice())).copied()
            };
            (class, group(true, ingress)?, group(false, egress)?)
        };
        let list: Box<[_]> = p
            .container_ports
            .iter()
            .filter_map(|c| {
                let id = self.core.tables.port_name(c.name.as_deref()?)?;
                Some((id, c.protocol, c.port))
            })
            .collect();
        let named = *sel.port_list_ids.get(&list)?;
        Some((
            PodHot {
                class,
                node: table.node_id(p.node_name.as_deref()),
                ingress,
                egress,
                host_network: p.host_network,
            },
            named,
        ))
    }

    /// The pod table this engine was compiled on (shared with the engines compiled against
    /// the same snapshot).
    pub fn pod_table(&self) -> &Arc<PodTable> {
        &self.table
    }

    /// Number of compiled policies.
    pub fn policy_count(&self) -> usize {
        self.names.len()
    }

    /// Number of compiled ClusterNetworkPolicies.
    pub fn cluster_policy_count(&self) -> usize {
        self.tiers.as_ref().map_or(0, |t| t.len())
    }

    /// The policies selecting pod `namespace/name` (the newest pod of that name), or `None` if
    /// the pod is unknown. hostNetwork pods are selected by nothing.
    pub fn policies_selecting(&self, namespace: &str, name: &str) -> Option<PodPolicies> {
        let idx = self.table.attributor.named(namespace, name).last()?;
        let pod = self.hot.get(*idx as usize)?;
        let ids = |group: u32| {
            if group == NO_GROUP {
                return Vec::new();
            }
            self.core
                .tables
                .group(group)
                .map(|g| {
                    g.policies
                        .iter()
                        .map(|i| self.names[*i as usize].to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(PodPolicies {
            ingress: ids(pod.ingress),
            egress: ids(pod.egress),
        })
    }

    /// Every known pod with whether it is isolated for ingress and for egress:
    /// `(namespace, name, ingress_isolated, egress_isolated)`; hostNetwork pods are skipped.
    pub fn pod_isolation(&self) -> impl Iterator<Item = (&str, &str, bool, bool)> + '_ {
        let pods = (0..self.hot.len()).map_while(|i| self.table.attributor.pod(i));
        pods.zip(&self.hot)
            .filter(|(_, h)| !h.host_network)
            .map(|(p, h)| {
                (
                    &*p.namespace,
                    &*p.name,
                    h.ingress != NO_GROUP,
                    h.egress != NO_GROUP,
                )
            })
    }

    /// The verdict of a connection whose peers attribution resolved
    /// ([`crate::attribution::Attributor::connection`], on the inventory this engine was
    /// compiled against: same pod and node indices).
    ///
    /// The verdict is a value: its explanation (the allowing rules and their policies, or the
    /// isolating policies) is complete and holds nothing of the engine.
    pub fn evaluate(&self, connection: &Connection<'_>) -> Verdict {
        let names = connection.dns_names;
        let (ingress, egress) = self.evaluate_with(connection, |e, q| self.explained(e, q, names));
        Verdict::new(ingress, egress)
    }

    /// The verdict without the explanation (no policy names, no allocation): what the agent
    /// needs for counters. Stops at the first allowing rule. Same decision as
    /// [`PolicyEngine::evaluate`].
    pub fn evaluate_compact(&self, connection: &Connection<'_>) -> CompactVerdict {
        let names = connection.dns_names;
        let (ingress, egress) = self.evaluate_with(connection, |e, q| self.decide(e, q, names));
        CompactVerdict {
            allowed: ingress.result != SideResult::Denied && egress.result != SideResult::Denied,
            ingress,
            egress,
        }
    }

    /// The verdict of a flow record: [`PolicyEngine::evaluate`] of the connection that the
    /// engine's attributor ([`PodTable::attributor`]) makes of it. Attribution fields name
    /// the pods when present; otherwise addresses are looked up (a pod IP at the flow's time,
    /// a node IP, a ClusterIP whose first backend is taken, checked at the backend's target
    /// port, as the destination sees it after DNAT).
    pub fn evaluate_flow(&self, flow: &FlowRecord) -> Verdict {
        self.evaluate(&self.table.attributor.connection(flow))
    }

    /// [`PolicyEngine::evaluate_compact`] of a flow record (see
    /// [`PolicyEngine::evaluate_flow`]).
    pub fn evaluate_flow_compact(&self, flow: &FlowRecord) -> CompactVerdict {
        self.evaluate_compact(&self.table.attributor.connection(flow))
    }

    /// Evaluates each direction of `c` with `side`.
    fn evaluate_with<T>(&self, c: &Connection<'_>, side: impl Fn(Query, FlowQuery) -> T) -> (T, T)
    where
        T: Clone + From<(SideResult, Reason)>,
    {
        let side_of = |p: PeerId| match p {
            PeerId::Pod(i) => Side::Pod(to_u32(i)),
            PeerId::Node(n) => Side::Node(to_u32(n)),
            PeerId::External => Side::Other,
        };
        let (src, dst) = (side_of(c.src.peer), side_of(c.dst.peer));
        if let (Side::Pod(s), Side::Pod(d)) = (src, dst)
            && s == d
            && self.hot.get(s as usize).is_some_and(|h| !h.host_network)
        {
            let v = T::from((SideResult::Allowed, Reason::SelfTraffic));
            return (v.clone(), v);
        }
        let flow_q = FlowQuery {
            dst,
            port: c.port,
            protocol: c.protocol,
        };
        let egress = match src {
            Side::Pod(s) => side(
                Query {
                    me: s,
                    peer: dst,
                    peer_ip: c.dst.ip,
                    ingress: false,
                },
                flow_q,
            ),
            _ => T::from((SideResult::NotIsolated, Reason::NotAPod)),
        };
        let ingress = match dst {
            Side::Pod(d) => side(
                Query {
                    me: d,
                    peer: src,
                    peer_ip: c.src.ip,
                    ingress: true,
                },
                flow_q,
            ),
            _ => T::from((SideResult::NotIsolated, Reason::NotAPod)),
        };
        (ingress, egress)
    }

    /// One direction with its explanation. The decision is made as in [`Self::decide`]; an
    /// allowed direction lists its allowing rules and their policies, a denied one the
    /// group's isolating policies (shared).
    fn explained(&self, q: Query, f: FlowQuery, names: &[String]) -> SideVerdict {
        if let Some(tiers) = &self.tiers {
            return self.explained_tiered(tiers, q, f, names);
        }
        let group = match self.isolating_group(q) {
            Ok(group) => group,
            Err((result, Some(reason))) => return SideVerdict::by_reason(result, reason),
            Err(_) => return SideVerdict::not_isolated(),
        };
        self.explained_group(group, q, f)
    }

    /// [`Self::explained`] with ClusterNetworkPolicies: the Admin tier, the NetworkPolicies
    /// (when some isolate the pod), else the Baseline tier.
    fn explained_tiered(
        &self,
        tiers: &ClusterTiers,
        q: Query,
        f: FlowQuery,
        names: &[String],
    ) -> SideVerdict {
        let group = match self.isolating_group(q) {
            Ok(group) => Some(group),
            Err((result, Some(reason))) => return SideVerdict::by_reason(result, reason),
            Err(_) => None,
        };
        let tq = self.tier_query(q, f, names);
        if let Some(rule) = tiers.decide(Tier::Admin, &tq)
            && rule.action != Action::Pass
        {
            return rule.verdict();
        }
        if let Some(group) = group {
            return self.explained_group(group, q, f);
        }
        match tiers.decide(Tier::Baseline, &tq) {
            Some(rule) if rule.action != Action::Pass => rule.verdict(),
            _ => SideVerdict::not_isolated(),
        }
    }

    /// [`Self::decide`] with ClusterNetworkPolicies (as [`Self::explained_tiered`]).
    fn decide_tiered(
        &self,
        tiers: &ClusterTiers,
        q: Query,
        f: FlowQuery,
        names: &[String],
    ) -> CompactSide {
        let group = match self.isolating_group(q) {
            Ok(group) => Some(group),
            Err((result, Some(reason))) => {
                return CompactSide {
                    result,
                    reason: Some(reason),
                };
            }
            Err(_) => None,
        };
        let decided = |result| CompactSide {
            result,
            reason: None,
        };
        let tq = self.tier_query(q, f, names);
        if let Some(rule) = tiers.decide(Tier::Admin, &tq)
            && rule.action != Action::Pass
        {
            return decided(rule.result());
        }
        if let Some(group) = group {
            let allowed = self.allows(group, self.core.tables.rows(self.peer_key(q)), f);
            return decided(if allowed {
                SideResult::Allowed
            } else {
                SideResult::Denied
            });
        }
        match tiers.decide(Tier::Baseline, &tq) {
            Some(rule) if rule.action != Action::Pass => decided(rule.result()),
            _ => decided(SideResult::NotIsolated),
        }
    }

    /// A direction as the ClusterNetworkPolicy tiers see it.
    fn tier_query<'a>(&self, q: Query, f: FlowQuery, names: &'a [String]) -> TierQuery<'a> {
        let (peer_pod, peer_node) = match q.peer {
            Side::Pod(p) => match self.hot.get(p as usize) {
                Some(h) if h.host_network => (None, Some(h.node).filter(|n| *n != NO_NODE)),
                Some(_) => (Some(p), None),
                None => (None, None),
            },
            Side::Node(n) => (None, Some(n)),
            Side::Other => (None, None),
        };
        TierQuery {
            me: q.me,
            ingress: q.ingress,
            peer_pod,
            peer_node,
            peer_ip: q.peer_ip,
            dst_pod: match f.dst {
                Side::Pod(d) => Some(d),
                _ => None,
            },
            port: f.port,
            protocol: f.protocol,
            dns_names: names,
        }
    }

    /// An isolated direction decided by the NetworkPolicies of `group`: allowed when some
    /// rule allows the flow (one search finds them all: the explanation), else denied.
    fn explained_group(&self, group: u32, q: Query, f: FlowQuery) -> SideVerdict {
        let rows = self.core.tables.rows(self.peer_key(q));
        let dst_pod = match f.dst {
            Side::Pod(d) => Some(d),
            _ => None,
        };
        let rules = self
            .core
            .tables
            .allowing_rules(group, f.protocol, f.port, rows, |name| {
                dst_pod.and_then(|d| self.core.named_port_id(d, name, f.protocol))
            });
        let none = Names::default();
        let isolating = self.core.tables.group(group).map_or(&none, |g| &g.denied);
        if rules.is_empty() {
            return SideVerdict {
                result: SideResult::Denied,
                policies: isolating.clone(),
                rules: Names::default(),
                reason: None,
            };
        }
        let (policies, rules) = self.core.rule_names.explain(&rules, isolating);
        SideVerdict {
            result: SideResult::Allowed,
            policies,
            rules,
            reason: None,
        }
    }

    /// The peer of a direction as the rule tables see it.
    #[inline]
    fn peer_key(&self, q: Query) -> PeerKey {
        let class = match q.peer {
            Side::Pod(p) => self
                .hot
                .get(p as usize)
                .filter(|h| !h.host_network && h.class != NO_CLASS)
                .map(|h| h.class),
            _ => None,
        };
        PeerKey {
            class,
            ip: q.peer_ip,
        }
    }

    /// The always-decided cases of one direction of pod `q.me` (hostNetwork, own node, not
    /// isolated) as `Err`, else the group of policies isolating it.
    #[inline]
    fn isolating_group(&self, q: Query) -> Result<u32, (SideResult, Option<Reason>)> {
        let Some(pod) = self.hot.get(q.me as usize) else {
            return Err((SideResult::NotIsolated, None));
        };
        if pod.host_network {
            return Err((SideResult::NotIsolated, Some(Reason::HostNetwork)));
        }
        let peer_node = match q.peer {
            Side::Node(n) => n,
            Side::Pod(p) => self
                .hot
                .get(p as usize)
                .filter(|h| h.host_network)
                .map_or(NO_NODE, |h| h.node),
            Side::Other => NO_NODE,
        };
        if peer_node != NO_NODE && peer_node == pod.node {
            return Err((SideResult::Allowed, Some(Reason::OwnNode)));
        }
        let group = if q.ingress { pod.ingress } else { pod.egress };
        if group == NO_GROUP {
            return Err((SideResult::NotIsolated, None));
        }
        Ok(group)
    }

    /// Whether a rule of `group` allows the flow `f` from/to the peer of `rows`.
    #[inline]
    fn allows(&self, group: u32, rows: Rows, f: FlowQuery) -> bool {
        let dst_pod = match f.dst {
            Side::Pod(d) => Some(d),
            _ => None,
        };
        self.core
            .tables
            .allows(group, f.protocol, f.port, rows, |name| {
                dst_pod.and_then(|d| self.core.named_port_id(d, name, f.protocol))
            })
    }

    /// Decides one direction of pod `q.me` (`f` carries the flow's destination, port and
    /// protocol): always-allowed cases first, then the pod's group table.
    #[inline]
    fn decide(&self, q: Query, f: FlowQuery, names: &[String]) -> CompactSide {
        if let Some(tiers) = &self.tiers {
            return self.decide_tiered(tiers, q, f, names);
        }
        let group = match self.isolating_group(q) {
            Ok(group) => group,
            Err((result, reason)) => return CompactSide { result, reason },
        };
        let allowed = self.allows(group, self.core.tables.rows(self.peer_key(q)), f);
        CompactSide {
            result: if allowed {
                SideResult::Allowed
            } else {
                SideResult::Denied
            },
            reason: None,
        }
    }
}

/// The namespaces of a compile: ids, and each one's labels (interned). A namespace named only
/// by a pod or a policy gets the one label the API server sets.
struct Namespaces {
    ids: HashMap<String, u32>,
    labels: Vec<Vec<(u32, u32)>>,
}

impl Namespaces {
    fn new(inventory: &Inventory, interner: &mut Interner) -> Self {
        let mut ns = Namespaces {
            ids: HashMap::new(),
            labels: Vec::new(),
        };
        for (name, n) in &inventory.namespaces {
            ns.ids.insert(name.clone(), to_u32(ns.labels.len()));
            ns.labels.push(interner.labels(&n.labels));
        }
        ns
    }

    /// The id of namespace `name`, added when unknown.
    fn id(&mut self, name: &str, interner: &mut Interner) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = to_u32(self.labels.len());
        self.ids.insert(name.to_owned(), id);
        self.labels
            .push(interner.labels([("kubernetes.io/metadata.name", name)]));
        id
    }
}

/// The rules of a policy, ingress then egress.
fn rules_of(policy: &CompiledPolicy) -> impl Iterator<Item = &Rule> {
    policy
        .ingress
        .iter()
        .flatten()
        .chain(policy.egress.iter().flatten())
}

/// The rules of a policy, ingress then egress, mutably.
fn rules_of_mut(policy: &mut CompiledPolicy) -> impl Iterator<Item = &mut Rule> {
    policy
        .ingress
        .iter_mut()
        .flatten()
        .chain(policy.egress.iter_mut().flatten())
}

/// The label keys peer selectors look at: pods equal on these keys (in one namespace) are
/// indistinguishable as peers.
fn peer_keys(compiled: &[CompiledPolicy]) -> std::collections::HashSet<u32> {
    let mut keys = std::collections::HashSet::new();
    for rule in compiled.iter().flat_map(rules_of) {
        for peer in rule.peers.iter().flatten() {
            if let Peer::Pods {
                pods: Some(sel), ..
            } = peer
            {
                keys.extend(sel.keys());
            }
        }
    }
    keys
}

/// The pods of a compile as peers and as selected pods: their peer classes and hot fields,
/// their labels (interned; only selectors read them, while compiling), by namespace.
struct PodClasses {
    /// Per pod, its hot fields (groups not yet set).
    hot: Vec<PodHot>,
    /// Per namespace, its pods (not hostNetwork).
    pods_by_ns: HashMap<u32, Vec<u32>>,
    /// Per pod, its labels (interned).
    pod_labels: Vec<Vec<(u32, u32)>>,
    /// Peer classes by (namespace, labels projected on the peer keys).
    class_ids: HashMap<(u32, Vec<(u32, u32)>), u32>,
    /// Per class, its projected labels.
    class_labels: Vec<Vec<(u32, u32)>>,
    /// Per namespace, its classes.
    classes_by_ns: HashMap<u32, Vec<u32>>,
}

impl PodClasses {
    fn build(
        inventory: &Inventory,
        table: &PodTable,
        peer_keys: &std::collections::HashSet<u32>,
        interner: &mut Interner,
        namespaces: &mut Namespaces,
    ) -> Self {
        let mut out = PodClasses {
            hot: Vec::with_capacity(inventory.pods.len()),
            pods_by_ns: HashMap::new(),
            pod_labels: Vec::with_capacity(inventory.pods.len()),
            class_ids: HashMap::new(),
            class_labels: Vec::new(),
            classes_by_ns: HashMap::new(),
        };
        for p in &inventory.pods {
            let idx = to_u32(out.hot.len());
            let ns = namespaces.id(&p.namespace, interner);
            if !p.host_network {
                out.pods_by_ns.entry(ns).or_default().push(idx);
            }
            let labels = interner.labels(&p.labels);
            let class = if p.host_network {
                NO_CLASS
            } else {
                let projected: Vec<(u32, u32)> = labels
                    .iter()
                    .filter(|(k, _)| peer_keys.contains(k))
                    .copied()
                    .collect();
                out.class(ns, projected)
            };
            out.hot.push(PodHot {
                class,
                node: table.node_id(p.node_name.as_deref()),
                ingress: NO_GROUP,
                egress: NO_GROUP,
                host_network: p.host_network,
            });
            out.pod_labels.push(labels);
        }
        out
    }

    /// The class of pods of namespace `ns` with labels `projected` (on the peer keys), added
    /// when new.
    fn class(&mut self, ns: u32, projected: Vec<(u32, u32)>) -> u32 {
        if let Some(c) = self.class_ids.get(&(ns, projected.clone())) {
            return *c;
        }
        let c = to_u32(self.class_labels.len());
        self.class_ids.insert((ns, projected.clone()), c);
        self.class_labels.push(projected);
        self.classes_by_ns.entry(ns).or_default().push(c);
        c
    }
}

/// Per namespace, its policies: (index, podSelector, has Ingress, has Egress), ascending.
fn namespace_policies(
    compiled: &[CompiledPolicy],
    policy_ns: &[u32],
) -> HashMap<u32, Vec<(u32, CompiledSelector, bool, bool)>> {
    let mut ns_policies: HashMap<u32, Vec<(u32, CompiledSelector, bool, bool)>> = HashMap::new();
    for (pi, policy) in compiled.iter().enumerate() {
        ns_policies.entry(policy_ns[pi]).or_default().push((
            to_u32(pi),
            policy.pod_selector.clone(),
            policy.ingress.is_some(),
            policy.egress.is_some(),
        ));
    }
    ns_policies
}

/// Per pod, the policies (indices, ascending) with the Ingress / Egress type selecting it;
/// fills each namespaceSelector's hits per namespace on the way.
fn select_pods(
    compiled: &mut [CompiledPolicy],
    policy_ns: &[u32],
    namespaces: &Namespaces,
    pods: &PodClasses,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut selecting: Vec<(Vec<u32>, Vec<u32>)> = vec![Default::default(); pods.hot.len()];
    for (pi, policy) in compiled.iter_mut().enumerate() {
        for rule in rules_of_mut(policy) {
            for peer in rule.peers.iter_mut().flatten() {
                if let Peer::Pods {
                    namespaces: NsMatch::Selector { selector, hits },
                    ..
                } = peer
                {
                    *hits = namespaces
                        .labels
                        .iter()
                        .map(|l| selector.matches(l))
                        .collect();
                }
            }
        }
        for &idx in pods.pods_by_ns.get(&policy_ns[pi]).into_iter().flatten() {
            if policy.pod_selector.matches(&pods.pod_labels[idx as usize]) {
                let (ingress, egress) = &mut selecting[idx as usize];
                if policy.ingress.is_some() {
                    ingress.push(to_u32(pi));
                }
                if policy.egress.is_some() {
                    egress.push(to_u32(pi));
                }
            }
        }
    }
    selecting
}

/// One bitset of peer classes per distinct (namespaces, podSelector) pod peer; sets each pod
/// peer's `set`.
fn peer_class_sets(
    compiled: &mut [CompiledPolicy],
    policy_ns: &[u32],
    pods: &PodClasses,
) -> Vec<Vec<u64>> {
    type SetKey = (
        Option<u32>,
        Option<CompiledSelector>,
        Option<CompiledSelector>,
    );
    let mut sets: Vec<Vec<u64>> = Vec::new();
    let mut set_ids: HashMap<SetKey, u32> = HashMap::new();
    let words = pods.class_labels.len().div_ceil(64);
    for (pi, policy) in compiled.iter_mut().enumerate() {
        let own = policy_ns[pi];
        for peer in rules_of_mut(policy).flat_map(|r| r.peers.iter_mut().flatten()) {
            let Peer::Pods {
                namespaces,
                pods: selector,
                set,
            } = peer
            else {
                continue;
            };
            let key: SetKey = match namespaces {
                NsMatch::Own => (Some(own), None, selector.clone()),
                NsMatch::Selector {
                    selector: ns_sel, ..
                } => (None, Some(ns_sel.clone()), selector.clone()),
            };
            if let Some(id) = set_ids.get(&key) {
                *set = *id;
                continue;
            }
            let namespaces: Vec<u32> = match namespaces {
                NsMatch::Own => vec![own],
                NsMatch::Selector { hits, .. } => hits
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| **h)
                    .map(|(i, _)| to_u32(i))
                    .collect(),
            };
            let mut bits = vec![0u64; words];
            for ns in namespaces {
                for &c in pods.classes_by_ns.get(&ns).into_iter().flatten() {
                    if selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&pods.class_labels[c as usize]))
                    {
                        bits[c as usize / 64] |= 1 << (c % 64);
                    }
                }
            }
            *set = to_u32(sets.len());
            set_ids.insert(key, *set);
            sets.push(bits);
        }
    }
    sets
}

/// The merged rule tables: every rule (policy order, then ingress before egress, then rule
/// order), then one group per distinct list of selecting policies and direction, set in each
/// pod's `hot`. Returns the groups by (direction, policies) and the tables.
fn build_tables(
    compiled: &[CompiledPolicy],
    sets: &[Vec<u64>],
    classes: usize,
    names: &[Name],
    hot: &mut [PodHot],
    selecting: &[(Vec<u32>, Vec<u32>)],
) -> (GroupIds, Tables) {
    let mut builder = TablesBuilder::new(classes);
    let mut policy_rules: Vec<(Vec<u32>, Vec<u32>)> = Vec::with_capacity(compiled.len());
    for (pi, policy) in compiled.iter().enumerate() {
        let mut dirs: [Vec<u32>; 2] = Default::default();
        for (d, list) in [&policy.ingress, &policy.egress].into_iter().enumerate() {
            for rule in list.iter().flatten() {
                let pod_sets: Vec<&[u64]> = rule
                    .peers
                    .iter()
                    .flatten()
                    .filter_map(|p| match p {
                        Peer::Pods { set, .. } => Some(sets[*set as usize].as_slice()),
                        Peer::IpBlock { .. } => None,
                    })
                    .collect();
                let label = Name::from(rule.label.as_str());
                dirs[d].push(builder.add_rule(to_u32(pi), rule, &pod_sets, label));
            }
        }
        let [ingress, egress] = dirs;
        policy_rules.push((ingress, egress));
    }
    for (pod, (ingress, egress)) in hot.iter_mut().zip(selecting) {
        if !ingress.is_empty() {
            pod.ingress =
                builder.group(true, ingress, |p| policy_rules[p as usize].0.clone(), names);
        }
        if !egress.is_empty() {
            pod.egress =
                builder.group(false, egress, |p| policy_rules[p as usize].1.clone(), names);
        }
    }
    (builder.groups(), builder.finish())
}

/// The container ports whose names some rule uses, per pod: each pod's list (an index into
/// the distinct lists), the lists, and their ids by content.
struct NamedPorts {
    per_pod: Box<[u32]>,
    lists: Vec<PortList>,
    ids: HashMap<PortList, u32>,
}

impl NamedPorts {
    fn build(inventory: &Inventory, tables: &Tables) -> Self {
        let mut ids: HashMap<PortList, u32> = HashMap::new();
        let mut lists = Vec::new();
        let per_pod = inventory
            .pods
            .iter()
            .map(|p| {
                let list: Box<[_]> = p
                    .container_ports
                    .iter()
                    .filter_map(|p| {
                        let id = tables.port_name(p.name.as_deref()?)?;
                        Some((id, p.protocol, p.port))
                    })
                    .collect();
                *ids.entry(list).or_insert_with_key(|list| {
                    lists.push(list.clone());
                    to_u32(lists.len() - 1)
                })
            })
            .collect();
        NamedPorts {
            per_pod,
            lists,
            ids,
        }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Read-only accessors for [`super::plan`]: what the engine compiled, per pod.
impl PolicyEngine {
    /// The rule tables.
    pub(super) fn compiled_tables(&self) -> &Tables {
        &self.core.tables
    }

    /// Policy names (`ns/name`) by index.
    pub(super) fn compiled_policy_names(&self) -> &[Name] {
        &self.names
    }

    /// Number of pods (the inventory's, in its order).
    pub(super) fn compiled_pod_count(&self) -> usize {
        self.hot.len()
    }

    /// Pod `pod` as compiled.
    pub(super) fn compiled_pod(&self, pod: usize) -> Option<super::plan::CompiledPod<'_>> {
        let (hot, entry) = (self.hot.get(pod)?, self.table.attributor.pod(pod)?);
        let group = |g: u32| (g != NO_GROUP).then_some(g);
        Some(super::plan::CompiledPod {
            namespace: &entry.namespace,
            name: &entry.name,
            ips: &entry.ips,
            host_network: hot.host_network,
            class: (hot.class != NO_CLASS).then_some(hot.class),
            ingress: group(hot.ingress),
            egress: group(hot.egress),
        })
    }

    /// The port of pod `pod` named `name` with `protocol`, as a verdict resolves it.
    pub(super) fn compiled_named_port(
        &self,
        pod: usize,
        name: &str,
        protocol: Protocol,
    ) -> Option<u16> {
        let id = self.core.tables.port_name(name)?;
        self.core.named_port_id(to_u32(pod), id, protocol)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::policy::{
        PodTable, PolicyEngine, SideResult, SideVerdict, Verdict, reference::Reference, synth,
    };

    /// Engines compiled on one shared pod table judge as the reference does; a table built
    /// from another inventory is not used (the engine indexes its own inventory).
    #[test]
    fn engines_on_a_shared_pod_table_agree_with_the_reference() {
        let inv = synth::cluster(6, 600, 21);
        let other = synth::cluster(6, 500, 22);
        let in_force = synth::policies(300, 6, 21);
        let staged = synth::policies(300, 6, 22);
        let table = PodTable::new(&inv);
        let foreign = PodTable::new(&other);
        let a = PolicyEngine::compile_shared(&in_force, &inv, &table).unwrap();
        let b = PolicyEngine::compile_shared(&staged, &inv, &table).unwrap();
        let c = PolicyEngine::compile_shared(&staged, &inv, &foreign).unwrap();
        assert!(Arc::ptr_eq(&a.table, &table) && Arc::ptr_eq(&b.table, &table));
        assert!(!Arc::ptr_eq(&c.table, &foreign));
        let (ra, rb) = (
            Reference::new(&inv, &in_force).unwrap(),
            Reference::new(&inv, &staged).unwrap(),
        );
        for flow in synth::flows(&inv, 3_000, 21) {
            assert_eq!(a.evaluate_flow(&flow), ra.evaluate(&flow), "{flow:?}");
            assert_eq!(b.evaluate_flow(&flow), rb.evaluate(&flow), "{flow:?}");
            assert_eq!(c.evaluate_flow(&flow), rb.evaluate(&flow), "{flow:?}");
        }
    }

    /// A verdict is moved on every evaluation: its size is part of the cost.
    #[test]
    fn verdicts_stay_small() {
        let names = size_of::<crate::policy::Names>();
        let side = size_of::<SideVerdict>();
        let verdict = size_of::<Verdict>();
        assert!(names <= 16, "Names: {names} bytes");
        assert!(side <= 40, "SideVerdict: {side} bytes");
        assert!(verdict <= 88, "Verdict: {verdict} bytes");
    }

    /// Explanations are values: complete when the verdict is made (one rule or several, one
    /// policy or several) and the same after the engine is dropped.
    #[test]
    fn explanations_are_values_that_outlive_the_engine() {
        let inv = synth::cluster(4, 300, 11);
        let pols = synth::policies(400, 4, 11);
        let flows = synth::flows(&inv, 2_000, 11);
        let reference = Reference::new(&inv, &pols).unwrap();
        let engine = PolicyEngine::compile(&pols, &inv).unwrap();
        let verdicts: Vec<_> = flows.iter().map(|f| engine.evaluate_flow(f)).collect();
        let again: Vec<_> = flows.iter().map(|f| engine.evaluate_flow(f)).collect();
        let allowed: Vec<_> = verdicts
            .iter()
            .flat_map(|v| [&v.ingress, &v.egress])
            .filter(|s| s.result == SideResult::Allowed && s.reason.is_none())
            .collect();
        assert!(allowed.len() > 1_000, "{}", allowed.len());
        // Every allowed direction names its rules and their policies, some one of each, some
        // several.
        assert!(
            allowed
                .iter()
                .all(|s| !s.rules.is_empty() && !s.policies.is_empty())
        );
        assert!(allowed.iter().any(|s| s.rules.len() == 1));
        assert!(
            allowed
                .iter()
                .any(|s| s.rules.len() > 1 && s.policies.len() > 1)
        );
        // Made again, the same values.
        assert_eq!(verdicts, again);
        drop(engine);
        for (flow, v) in flows.iter().zip(&verdicts) {
            assert_eq!(
                v,
                &reference.evaluate(flow),
                "read after the engine is gone: {flow:?}"
            );
        }
    }
}
