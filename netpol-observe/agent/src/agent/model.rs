//! What the agent knows about the cluster at one time: the attributor and the compiled policy
//! engines (in force, staged), built from one inventory snapshot. Rebuilt whenever the
//! inventory or the staged policies change; flows keep the verdict they got when first seen.
//!
//! Flows are judged compactly ([`CompactVerdicts`]: a few bytes, no policy names); the
//! explanation (which policies and rules) is computed from the same model only when a flow is
//! served or a drop names its policy ([`Model::explain`]), or when the model is replaced
//! ([`super::AgentState::set_model`] explains the flows it judged, so a flow keeps its verdict).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use rustc_hash::FxHashMap;

use crate::{
    attribution::{Attributor, Resolved, Subnets},
    flow::{FlowRecord, Protocol, ServiceRef},
    inventory::{Inventory, NetworkPolicy, PodDiff},
    metrics::{self, Direction},
    policy::{
        CompactVerdict, Connection, End, PeerId, PodTable, PolicyEngine, PolicyError, Reason,
        SideResult, Verdict,
    },
};

use super::{
    observed::ObservedFlow,
    peer::{Peer, Peers},
};

/// At most this many verdicts are cached per model; the cache starts over when full. 7/8 of
/// 4,096: what a hash table of 4,096 buckets holds (4,096 entries would take 8,192 buckets).
const VERDICT_CACHE: usize = 3584;

/// The cluster model used to attribute and judge flows.
#[derive(Debug)]
pub struct Model {
    /// The inventory snapshot.
    pub inventory: Arc<Inventory>,
    subnets: Subnets,
    /// The attributor, shared with the engines ([`PodTable`]): the peers it makes are the
    /// ones the engines evaluate.
    table: Arc<PodTable>,
    engine: PolicyEngine,
    staged: Option<PolicyEngine>,
    /// The Service of each ClusterIP, shared by the flows addressed to it.
    services: FxHashMap<IpAddr, Arc<ServiceRef>>,
    /// The shared peers and the verdict cache: caches of a model shared read-only, each
    /// locked inside one of this type's methods and released before it returns (leaves; on
    /// the agent's flow path they are taken under its flows lock, uncontended).
    peers: Mutex<Peers>,
    verdicts: Mutex<FxHashMap<VerdictKey, CompactVerdicts>>,
    /// The identity of the NetworkPolicy set in force ([`policy_fingerprint`]).
    policy_fingerprint: u64,
}

/// Both ends of a flow, attributed ([`Model::attribute`]).
#[derive(Debug, Clone)]
pub struct Attributed {
    /// The initiator.
    pub src: Arc<Peer>,
    /// The responder (the backend pod for a flow to a Service).
    pub dst: Arc<Peer>,
    /// The Service the flow was addressed to.
    pub service: Option<Arc<ServiceRef>>,
    /// Whether both peers are the model's shared ones (so a verdict can be cached by them).
    shared: bool,
}

impl Attributed {
    /// Peers attributed outside a model's shared ones.
    pub fn new(src: Arc<Peer>, dst: Arc<Peer>, service: Option<Arc<ServiceRef>>) -> Self {
        Attributed {
            src,
            dst,
            service,
            shared: false,
        }
    }
}

impl Attributed {
    /// Whether the agent of node `node` counts this flow in its metrics (`flows_total`,
    /// packets, bytes, verdict and staged series): the rule that has every flow counted by
    /// exactly one agent across the cluster. A flow between pods of two nodes is seen by both
    /// agents (at the client pod's interface on one, at the server pod's on the other); it is
    /// counted by the agent of the node running the initiating pod (`src`). When the initiator
    /// is not a pod of the cluster (a subnet, a node or hostNetwork pod, an unknown address),
    /// by the agent of the responding pod's node. When neither end is a pod with a node, by
    /// the agent that sees it.
    ///
    /// `backend_known`: for a flow to a Service (a client leg, seen before the node's DNAT),
    /// whether `dst` is the backend the DNAT chose ([`Model::attribute_with_backend`]) rather
    /// than the Service's first backend. A client leg whose initiator is not a pod is counted
    /// only once its backend is known (it is then a pod of this node: its backend leg was seen
    /// here); until then the node of the backend really reached counts it, from its backend
    /// leg.
    pub(crate) fn counted_on(&self, node: &str, backend_known: bool) -> bool {
        if let Some(n) = self.src.pod_node.as_deref() {
            return n == node;
        }
        match self.dst.pod_node.as_deref() {
            Some(_) if self.service.is_some() && !backend_known => false,
            Some(n) => n == node,
            None => true,
        }
    }
}

/// A flow's verdicts under the policies in force and under the staged ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// Under the policies in force.
    pub verdict: Verdict,
    /// Under the staged (draft) policies, when loaded.
    pub staged: Option<Verdict>,
}

/// A flow's verdicts without their explanation: what the counters need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactVerdicts {
    /// Under the policies in force.
    pub verdict: CompactVerdict,
    /// Under the staged (draft) policies, when loaded.
    pub staged: Option<CompactVerdict>,
}

/// Explained verdicts shared by the flows that have the same [`VerdictKey`] (while a model's
/// flows are explained at once, [`Model::explainer`]).
pub(crate) type Explained = FxHashMap<VerdictKey, Arc<Verdicts>>;

/// What a verdict depends on for a flow whose peers are the model's shared ones: the
/// protocol, both addresses (ipBlocks, ClusterIPs), the destination port, and the peers
/// themselves (the pod instance an address was attributed to at the flow's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    protocol: Protocol,
    src: IpAddr,
    dst: IpAddr,
    dst_port: Option<u16>,
    src_peer: usize,
    dst_peer: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Model {
    /// Compiles the inventory's policies (and the staged ones, if any) against `inventory`.
    /// Errors name the policy and field at fault.
    pub fn new(
        inventory: Arc<Inventory>,
        subnets: &Subnets,
        staged: Option<&[NetworkPolicy]>,
    ) -> Result<Model, PolicyError> {
        // Attribution and both engines share one index of the snapshot's pods.
        let pods = PodTable::with_attributor(Attributor::shared(Arc::clone(&inventory), subnets));
        // ClusterNetworkPolicies stay in force under staged NetworkPolicies.
        let cluster = &inventory.cluster_network_policies;
        let engine = PolicyEngine::compile_shared_with_cluster(
            &inventory.network_policies,
            cluster,
            &inventory,
            &pods,
        )?;
        let staged = match staged {
            Some(p) => Some(PolicyEngine::compile_shared_with_cluster(
                p, cluster, &inventory, &pods,
            )?),
            None => None,
        };
        let mut services = FxHashMap::default();
        for svc in &inventory.services {
            let r = Arc::new(ServiceRef {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
            });
            for ip in &svc.cluster_ips {
                services.insert(*ip, Arc::clone(&r));
            }
        }
        let policy_fingerprint =
            policy_fingerprint(&inventory.network_policies) ^ cluster_fingerprint(cluster);
        Ok(Model {
            policy_fingerprint,
            table: pods,
            peers: Mutex::new(Peers::new(inventory.pods.len())),
            subnets: subnets.clone(),
            inventory,
            engine,
            staged,
            services,
            verdicts: Mutex::new(FxHashMap::default()),
        })
    }

    /// The model for `inventory`, from this one when only pods changed since its snapshot:
    /// the pod table, the engines' per-pod placement and the attributor are updated for just
    /// the changed pods ([`PolicyEngine::update_pods`]); anything else (namespaces, Services,
    /// policies, a pod the compiled engine cannot place) compiles anew ([`Model::new`]). The
    /// verdicts are those of [`Model::new`] on `inventory`. `staged` must be the staged
    /// policies this model was built with.
    pub fn next(
        &self,
        inventory: Arc<Inventory>,
        subnets: &Subnets,
        staged: Option<&[NetworkPolicy]>,
    ) -> Result<Model, PolicyError> {
        match self.update_pods(&inventory, subnets, staged.is_some()) {
            Some(m) => Ok(m),
            None => Model::new(inventory, subnets, staged),
        }
    }

    /// [`Model::next`]'s incremental path; `None` when a full build is needed.
    fn update_pods(
        &self,
        inventory: &Arc<Inventory>,
        subnets: &Subnets,
        staged: bool,
    ) -> Option<Model> {
        if *subnets != self.subnets || staged != self.staged.is_some() {
            return None;
        }
        let diff = PodDiff::between(&self.inventory, inventory)?;
        let pods = self.table.update(inventory, &diff);
        let engine = self.engine.update_pods(inventory, &diff, &pods)?;
        let staged = match &self.staged {
            Some(s) => Some(s.update_pods(inventory, &diff, &pods)?),
            None => None,
        };
        tracing::debug!(
            changed = diff.changed(),
            "model updated for the changed pods"
        );
        Some(Model {
            policy_fingerprint: self.policy_fingerprint,
            table: pods,
            peers: Mutex::new(Peers::new(inventory.pods.len())),
            subnets: self.subnets.clone(),
            inventory: Arc::clone(inventory),
            engine,
            staged,
            services: self.services.clone(),
            verdicts: Mutex::new(FxHashMap::default()),
        })
    }

    /// Attributes a datapath record and computes its verdicts.
    pub fn observe(&self, flow: FlowRecord) -> ObservedFlow {
        let a = self.attribute(&flow);
        let record = to_record(flow, &a);
        let v = self.explained(&record, &a);
        ObservedFlow {
            flow: record,
            verdict: Some(v.verdict),
            staged_verdict: v.staged,
            dns_rotation: None,
        }
    }

    /// Attributes both ends of a record: to the model's shared peers when the record carries
    /// no attribution of its own (as the datapath's records), else as
    /// [`Attributor::attribute`] completes it.
    pub fn attribute(&self, flow: &FlowRecord) -> Attributed {
        let mut peers = lock(&self.peers);
        if !is_bare(flow) {
            let mut r = flow.clone();
            self.attributor().attribute(&mut r);
            return Attributed {
                src: peers.unshared(&r.src),
                dst: peers.unshared(&r.dst),
                service: r.dst.service.map(Arc::new),
                shared: false,
            };
        }
        let at = flow.seen_at();
        let peer = |peers: &mut Peers, r: Resolved<'_>| match r {
            Resolved::Pod(i) => match self.attributor().pod(i) {
                Some(p) => peers.pod(i, p),
                None => peers.bare(),
            },
            Resolved::Node { name, index } => peers.node(name, index),
            Resolved::Subnet(s) => peers.subnet(s),
        };
        let src = peer(&mut peers, self.attributor().resolve(flow.src.ip, at));
        let (dst, service) = match self.attributor().service(flow.dst.ip) {
            Some((_, backend)) => {
                let dst = match backend {
                    Some(b) => peer(&mut peers, Resolved::Pod(b)),
                    None => peers.bare(),
                };
                (dst, self.services.get(&flow.dst.ip).cloned())
            }
            None => (
                peer(&mut peers, self.attributor().resolve(flow.dst.ip, at)),
                None,
            ),
        };
        Attributed {
            src,
            dst,
            service,
            shared: true,
        }
    }

    /// As [`Model::attribute`] for the client leg of a Service connection (a flow to a
    /// ClusterIP) whose backend is known — the address the node's DNAT chose, seen on the
    /// backend leg ([`super::nat`]): that backend pod becomes the destination, judged on its own
    /// (the engines would otherwise take the Service's first backend).
    pub(crate) fn attribute_with_backend(&self, flow: &FlowRecord, backend: IpAddr) -> Attributed {
        let mut a = self.attribute(flow);
        let at = flow.seen_at();
        if let Resolved::Pod(i) = self.attributor().resolve(backend, at)
            && let Some(p) = self.attributor().pod(i)
        {
            let dst = lock(&self.peers).pod(i, p);
            if !Arc::ptr_eq(&dst, &a.dst) {
                a.dst = dst;
                a.shared = false;
            }
        }
        a
    }

    /// Whether `addr` is the address of a backend pod of the Service whose ClusterIP is
    /// `cluster_ip`.
    pub(crate) fn is_service_backend(&self, cluster_ip: IpAddr, addr: IpAddr) -> bool {
        self.attributor()
            .service(cluster_ip)
            .is_some_and(|(svc, _)| {
                self.inventory
                    .service_backends(svc)
                    .iter()
                    .any(|p| p.ips.contains(&addr))
            })
    }

    /// The attributor (shared with the engines).
    fn attributor(&self) -> &Attributor {
        self.table.attributor()
    }

    /// The connection the engines evaluate for `flow` attributed as `a`, made from the peers
    /// attribution resolved (no second lookup of the addresses; for a flow to a Service, the
    /// backend pod of `a` on its target port). `None` when `a`'s peers were attributed some
    /// other way (a record's own attribution).
    fn peer_connection<'f>(&self, flow: &'f FlowRecord, a: &Attributed) -> Option<Connection<'f>> {
        let (src, dst) = (a.src.policy?, a.dst.policy?);
        let at = flow.seen_at();
        let backend = match dst {
            PeerId::Pod(i) => Some(i),
            _ => None,
        };
        let (dst, port) = a
            .service
            .as_ref()
            .and_then(|_| {
                self.attributor().service_destination(
                    flow.dst.ip,
                    backend,
                    flow.dst.port,
                    flow.protocol,
                    at,
                )
            })
            .unwrap_or((
                End {
                    peer: dst,
                    ip: flow.dst.ip,
                },
                flow.dst.port,
            ));
        Some(Connection {
            src: End {
                peer: src,
                ip: flow.src.ip,
            },
            dst,
            port,
            protocol: flow.protocol,
            dns_names: &flow.dst.dns_names,
        })
    }

    /// The compact verdicts of a record attributed as `a` (cached per [`VerdictKey`] when
    /// `a`'s peers are the model's shared ones).
    pub fn judge(&self, flow: &FlowRecord, a: &Attributed) -> CompactVerdicts {
        let Some(key) = verdict_key(flow, a) else {
            return match self.peer_connection(flow, a) {
                Some(c) => self.evaluate_compact(&c),
                None => {
                    let record = to_record(flow.clone(), a);
                    self.evaluate_compact(&self.attributor().connection(&record))
                }
            };
        };
        if let Some(v) = lock(&self.verdicts).get(&key) {
            return *v;
        }
        // The key is only made for the model's shared peers: they make the connection.
        let v = match self.peer_connection(flow, a) {
            Some(c) => self.evaluate_compact(&c),
            None => self.evaluate_compact(&self.attributor().connection(flow)),
        };
        let mut cache = lock(&self.verdicts);
        if cache.len() >= VERDICT_CACHE {
            cache.clear();
        }
        cache.insert(key, v);
        v
    }

    /// The explained verdicts of `record` (attributed as `a` by this model): the same
    /// decisions as [`Model::judge`], with the policies and rules behind them. Shared through
    /// `explained` by the flows with the same [`VerdictKey`].
    pub(crate) fn explain(
        &self,
        record: &FlowRecord,
        a: &Attributed,
        explained: &mut Explained,
    ) -> Arc<Verdicts> {
        let Some(key) = verdict_key(record, a) else {
            return Arc::new(self.explained(record, a));
        };
        Arc::clone(
            explained
                .entry(key)
                .or_insert_with(|| Arc::new(self.explained(record, a))),
        )
    }

    /// The explained verdicts of `record` attributed as `a`: from `a`'s peers, else (peers
    /// attributed some other way) from the record's attribution.
    fn explained(&self, record: &FlowRecord, a: &Attributed) -> Verdicts {
        match self.peer_connection(record, a) {
            Some(c) => self.evaluate(&c),
            None => self.evaluate(&self.attributor().connection(record)),
        }
    }

    /// Explained verdicts (values: storing them keeps nothing of this model's engines).
    fn evaluate(&self, c: &Connection<'_>) -> Verdicts {
        Verdicts {
            verdict: self.engine.evaluate(c),
            staged: self.staged.as_ref().map(|e| e.evaluate(c)),
        }
    }

    fn evaluate_compact(&self, c: &Connection<'_>) -> CompactVerdicts {
        CompactVerdicts {
            verdict: self.engine.evaluate_compact(c),
            staged: self.staged.as_ref().map(|e| e.evaluate_compact(c)),
        }
    }

    /// The identity of the NetworkPolicy set in force: equal for two models whose policies
    /// have the same namespaces, names and specs (in any order), so the agent knows when the
    /// set it judges flows with changed (the enforcement check's timing rule).
    pub(crate) fn policy_fingerprint(&self) -> u64 {
        self.policy_fingerprint
    }

    /// The named subnets the model attributes external peers with.
    pub fn subnets(&self) -> &Subnets {
        &self.subnets
    }

    /// Whether staged policies are loaded.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// The IPs of the (non-hostNetwork) pods on node `node`.
    pub(crate) fn local_pod_ips(&self, node: &str) -> Vec<IpAddr> {
        self.inventory
            .pods
            .iter()
            .filter(|p| {
                !p.host_network && p.deleted.is_none() && p.node_name.as_deref() == Some(node)
            })
            .flat_map(|p| p.ips.iter().copied())
            .collect()
    }

    /// Whether the inventory knows node `node`: a Node of that name, or a pod placed on it.
    /// The agent applies its counting rule ([`Attributed::counted_on`]) only then: a node name
    /// the inventory does not know (a standalone agent's host name) makes the agent count
    /// every flow it sees.
    pub(crate) fn knows_node(&self, node: &str) -> bool {
        self.inventory.node(node).is_some()
            || self
                .inventory
                .pods
                .iter()
                .any(|p| p.node_name.as_deref() == Some(node))
    }

    /// Whether `ip` belongs to a (non-hostNetwork, live) pod of node `node`.
    pub(crate) fn is_local_pod_ip(&self, node: &str, ip: IpAddr) -> bool {
        self.inventory.pods.iter().any(|p| {
            !p.host_network
                && p.deleted.is_none()
                && p.node_name.as_deref() == Some(node)
                && p.ips.contains(&ip)
        })
    }

    /// Workloads no policy isolates, per namespace and direction: `(namespace, direction,
    /// count)`. Restricted to the pods of `node` when the inventory places any pod there
    /// (each agent then reports its own node), else every pod.
    pub(crate) fn unprotected(&self, node: Option<&str>) -> Vec<(String, Direction, u64)> {
        let on_node =
            |p: &crate::inventory::PodInfo| node.is_some_and(|n| p.node_name.as_deref() == Some(n));
        let restrict = self.inventory.pods.iter().any(on_node);
        let workloads: BTreeMap<(&str, &str), (&str, &str)> = self
            .inventory
            .pods
            .iter()
            .filter(|p| !restrict || on_node(p))
            .map(|p| {
                (
                    (p.namespace.as_str(), p.name.as_str()),
                    (p.workload.kind.as_str(), p.workload.name.as_str()),
                )
            })
            .collect();
        // (namespace, direction) → workloads with at least one unisolated pod.
        let mut open: BTreeMap<(String, Direction), BTreeSet<(String, String)>> = BTreeMap::new();
        let mut namespaces = BTreeSet::new();
        for (ns, name, ingress, egress) in self.engine.pod_isolation() {
            let Some((kind, wl)) = workloads.get(&(ns, name)) else {
                continue;
            };
            namespaces.insert(ns.to_owned());
            for (dir, isolated) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
                let set = open.entry((ns.to_owned(), dir)).or_default();
                if !isolated {
                    set.insert(((*kind).to_owned(), (*wl).to_owned()));
                }
            }
        }
        open.into_iter()
            .map(|((ns, dir), set)| (ns, dir, set.len() as u64))
            .collect()
    }
}

/// A side's result as the metrics label it.
pub(crate) fn side_label(result: SideResult) -> metrics::Verdict {
    match result {
        SideResult::Allowed => metrics::Verdict::Allowed,
        SideResult::Denied => metrics::Verdict::Denied,
        SideResult::NotIsolated => metrics::Verdict::NotIsolated,
    }
}

/// The overall verdict label of a flow (`unknown` without a verdict).
pub(crate) fn overall_label(v: Option<&CompactVerdict>) -> metrics::Verdict {
    match v {
        Some(v) => {
            metrics::Verdict::overall(side_label(v.egress.result), side_label(v.ingress.result))
        }
        None => metrics::Verdict::Unknown,
    }
}

/// The compact form of an explained verdict.
pub fn compact(v: &Verdict) -> CompactVerdict {
    let side = |s: &crate::policy::SideVerdict| crate::policy::CompactSide {
        result: s.result,
        reason: s.reason,
    };
    CompactVerdict {
        allowed: v.allowed,
        ingress: side(&v.ingress),
        egress: side(&v.egress),
    }
}

/// Whether a side (decided for `reason`) concerns a pod (so a per-pod verdict series makes
/// sense).
pub(crate) fn side_is_pod(reason: Option<Reason>) -> bool {
    !matches!(reason, Some(Reason::NotAPod | Reason::HostNetwork))
}

/// The policy that explains a drop of a flow with this verdict: the isolating policies of the
/// denying side (egress first, as the packet meets them; `,`-joined), or `None` when the policies
/// allow the flow.
pub(crate) fn drop_policy(v: Option<&Verdict>) -> Option<String> {
    let v = v?;
    if v.allowed {
        return None;
    }
    // A packet meets its source's egress rules first (on the source's node): when both sides
    // deny, the egress side is the one that dropped it.
    let side = if v.egress.result == SideResult::Denied {
        &v.egress
    } else {
        &v.ingress
    };
    if side.policies.is_empty() {
        None
    } else {
        Some(side.policies.join(","))
    }
}

/// The identity of a NetworkPolicy set: a hash of each policy's namespace, name and spec (what
/// the verdicts depend on; not its resourceVersion or annotations), in a fixed order.
fn policy_fingerprint(policies: &[NetworkPolicy]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut each: Vec<(&str, &str, String)> = policies
        .iter()
        .map(|p| {
            (
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
                serde_json::to_string(&p.spec).unwrap_or_default(),
            )
        })
        .collect();
    each.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    each.hash(&mut h);
    h.finish()
}

/// The identity of a ClusterNetworkPolicy set (0 for none, so that a NetworkPolicy-only
/// cluster keeps its fingerprint).
fn cluster_fingerprint(policies: &[crate::policy::cluster::ClusterNetworkPolicy]) -> u64 {
    use std::hash::{Hash, Hasher};
    if policies.is_empty() {
        return 0;
    }
    let mut each: Vec<(&str, String)> = policies
        .iter()
        .map(|p| (p.name(), serde_json::to_string(&p.spec).unwrap_or_default()))
        .collect();
    each.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    each.hash(&mut h);
    h.finish()
}

/// A set of a flow's two policy sides: the source pod's egress, the destination pod's ingress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sides(u8);

impl Sides {
    /// Neither side.
    pub(crate) const NONE: Sides = Sides(0);
    /// The source pod's egress.
    pub(crate) const EGRESS: Sides = Sides(1);
    /// The destination pod's ingress.
    pub(crate) const INGRESS: Sides = Sides(2);
    /// Both.
    pub const BOTH: Sides = Sides(3);

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the set holds the egress side.
    pub fn egress(self) -> bool {
        self.0 & 1 != 0
    }

    /// Whether the set holds the ingress side.
    pub fn ingress(self) -> bool {
        self.0 & 2 != 0
    }

    /// Both sets together.
    pub fn union(self, other: Sides) -> Sides {
        Sides(self.0 | other.0)
    }

    /// The sides whose verdict is `denied` in `v`.
    pub fn denying(v: &CompactVerdict) -> Sides {
        let mut s = Sides::NONE;
        if v.egress.result == SideResult::Denied {
            s = s.union(Sides::EGRESS);
        }
        if v.ingress.result == SideResult::Denied {
            s = s.union(Sides::INGRESS);
        }
        s
    }
}

/// The policies a flow with verdict `v` was delivered against, on `sides`: the isolating
/// policies of those of `sides` that deny (ingress, then egress; sorted and each once, as
/// `,`-joined `ns/name`), or `None` when none deny or no policy is named. For one side this is
/// [`drop_policy`]'s label.
pub(crate) fn unenforced_policy(v: &Verdict, sides: Sides) -> Option<String> {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for (side, wanted) in [(&v.ingress, sides.ingress()), (&v.egress, sides.egress())] {
        if wanted && side.result == SideResult::Denied {
            names.extend(side.policies.iter().map(|n| n.as_str()));
        }
    }
    if names.is_empty() {
        return None;
    }
    Some(names.into_iter().collect::<Vec<_>>().join(","))
}

/// The cache key of a record attributed as `a`, when its peers are a model's shared ones and
/// it carries no DNS names (a ClusterNetworkPolicy `domainNames` rule judges by them, and the
/// key does not hold them: such records are judged each time).
fn verdict_key(flow: &FlowRecord, a: &Attributed) -> Option<VerdictKey> {
    (a.shared && flow.dst.dns_names.is_empty()).then_some(VerdictKey {
        protocol: flow.protocol,
        src: flow.src.ip,
        dst: flow.dst.ip,
        dst_port: flow.dst.port,
        src_peer: Arc::as_ptr(&a.src) as usize,
        dst_peer: Arc::as_ptr(&a.dst) as usize,
    })
}

/// Whether a record carries no attribution (only addresses, ports, times): the datapath's.
fn is_bare(r: &FlowRecord) -> bool {
    let bare = |ep: &crate::flow::Endpoint| {
        ep.service.is_none()
            && ep.namespace.is_none()
            && ep.pod.is_none()
            && ep.workload.is_none()
            && ep.labels.is_none()
            && ep.node.is_none()
            && ep.subnet.is_none()
    };
    bare(&r.src) && bare(&r.dst)
}

/// `flow` with the attribution `a` filled in.
pub(crate) fn to_record(mut flow: FlowRecord, a: &Attributed) -> FlowRecord {
    flow.src = a.src.endpoint(flow.src.ip, flow.src.port, None);
    flow.dst = a
        .dst
        .endpoint(flow.dst.ip, flow.dst.port, a.service.as_deref());
    flow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::synth;

    /// The shared attribution, the cached compact verdicts and the explanations give exactly
    /// what attributing the record and evaluating it did: same endpoints, same verdicts, on a synthetic
    /// cluster with IP reuse, Services, nodes and hostNetwork pods, every flow seen twice (the
    /// second time from the cache).
    #[test]
    fn shared_attribution_and_cached_verdicts_match_the_full_path() {
        let mut inv = synth::cluster(20, 2_000, 3);
        inv.network_policies = synth::policies(200, 20, 7);
        let inv = Arc::new(inv);
        let staged = synth::policies(200, 20, 8);
        let model = Model::new(Arc::clone(&inv), &Subnets::default(), Some(&staged)).unwrap();
        let attributor = Attributor::new(&inv, &Subnets::default());
        let engine = PolicyEngine::compile(&inv.network_policies, &inv).unwrap();
        let staged_engine = PolicyEngine::compile(&staged, &inv).unwrap();
        let flows = synth::flows(&inv, 5_000, 5);
        let mut explained = Explained::default();
        for _pass in 0..2 {
            for f in &flows {
                let mut full = f.clone();
                attributor.attribute(&mut full);
                let a = model.attribute(f);
                assert!(a.shared);
                assert_eq!(to_record(f.clone(), &a), full);
                let v = model.judge(f, &a);
                assert_eq!(v.verdict, engine.evaluate_flow_compact(&full), "{full:?}");
                assert_eq!(
                    v.staged,
                    Some(staged_engine.evaluate_flow_compact(&full)),
                    "{full:?}"
                );
                let e = model.explain(&full, &a, &mut explained);
                assert_eq!(e.verdict, engine.evaluate_flow(&full), "{full:?}");
                assert_eq!(
                    e.staged,
                    Some(staged_engine.evaluate_flow(&full)),
                    "{full:?}"
                );
                assert_eq!(compact(&e.verdict), v.verdict);
            }
        }
        assert!(lock(&model.verdicts).len() > 1_000, "verdicts cached");
        // A record that carries its own attribution takes the full path.
        let mut named = flows[0].clone();
        named.src.subnet = Some("elsewhere".into());
        let a = model.attribute(&named);
        assert!(!a.shared);
        assert_eq!(a.src.subnet.as_deref(), Some("elsewhere"));
    }
}
