//! The agent's in-memory store of attributed flows with their verdicts and drops, served by
//! `/api/v1/flows`. Bounded: ended flows leave after the retention, and when the store is
//! full the flow changed longest ago goes first.
//!
//! A stored flow is compact ([`StoredFlow`]): its addresses and ports, counters, times and
//! state, and shared handles to the attribution of each end ([`super::peer::Peer`], one per
//! pod, node or subnet) and its verdicts ([`Judged`]: compact while the model that judged it
//! is current, explained when that model is replaced). The full [`ObservedFlow`] is rebuilt,
//! and its verdicts explained, only when served.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use jiff::Timestamp;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    model::{Attributed, CompactVerdicts, Explained, Model, Verdicts},
    nat::{BackendLeg, ServiceLegs},
    peer::Peer,
};
use crate::{
    flow::{Directional, Drops, Endpoint, FlowRecord, FlowState, Protocol},
    policy::{CompactVerdict, Verdict},
};

/// A stored flow's verdicts.
#[derive(Debug, Clone)]
pub enum Judged {
    /// Judged by the current model, not explained yet (a few bytes).
    Compact(CompactVerdicts),
    /// Explained (by the model that judged the flow, before it was replaced).
    Explained(Arc<Verdicts>),
}

impl Judged {
    /// The verdict under the policies in force, without explanation.
    pub fn verdict(&self) -> CompactVerdict {
        match self {
            Judged::Compact(v) => v.verdict,
            Judged::Explained(v) => super::model::compact(&v.verdict),
        }
    }

    /// The verdict under the staged policies, without explanation.
    pub fn staged(&self) -> Option<CompactVerdict> {
        match self {
            Judged::Compact(v) => v.staged,
            Judged::Explained(v) => v.staged.as_ref().map(super::model::compact),
        }
    }
}

/// One flow of `/api/v1/flows`: the flow record (attributed) with its verdict under the
/// policies in force and, with `--staged-policies`, under the drafts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFlow {
    /// The flow, attributed.
    #[serde(flatten)]
    pub flow: FlowRecord,
    /// Verdict under the policies in force (absent while the inventory is not loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Verdict under the staged (draft) policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_verdict: Option<Verdict>,
}

/// The identity of a flow: protocol and both endpoints as oriented by the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    /// Protocol.
    pub protocol: Protocol,
    /// Initiator address and port.
    pub src: (IpAddr, u16),
    /// Responder address and port.
    pub dst: (IpAddr, u16),
}

impl FlowId {
    /// The identity of a record.
    pub fn of(r: &FlowRecord) -> FlowId {
        FlowId {
            protocol: r.protocol,
            src: (r.src.ip, r.src.port.unwrap_or(0)),
            dst: (r.dst.ip, r.dst.port.unwrap_or(0)),
        }
    }

    /// The identity without orientation (for matching a dropped packet going either way).
    pub fn unoriented(&self) -> FlowId {
        if self.src <= self.dst {
            *self
        } else {
            FlowId {
                protocol: self.protocol,
                src: self.dst,
                dst: self.src,
            }
        }
    }
}

/// What `/api/v1/flows` can filter on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Flows with either peer in this namespace.
    pub namespace: Option<String>,
    /// Flows with either peer's workload (or pod, subnet, node) of this name.
    pub workload: Option<String>,
    /// `allowed`, `denied` (overall verdict under the policies in force) or `staged-denied`.
    pub verdict: Option<String>,
    /// Flows seen at or after this time (RFC 3339).
    pub since: Option<Timestamp>,
    /// At most this many flows (the most recent).
    pub limit: Option<usize>,
}

/// The names of one end of a flow that a [`FlowQuery`] looks at.
#[derive(Debug, Clone, Copy)]
struct PeerView<'a> {
    namespace: Option<&'a str>,
    workload: Option<&'a str>,
    pod: Option<&'a str>,
    subnet: Option<&'a str>,
    node: Option<&'a str>,
}

impl<'a> PeerView<'a> {
    fn of_endpoint(ep: &'a Endpoint) -> Self {
        PeerView {
            namespace: ep.namespace.as_deref(),
            workload: ep.workload.as_ref().map(|w| w.name.as_str()),
            pod: ep.pod.as_deref(),
            subnet: ep.subnet.as_deref(),
            node: ep.node.as_deref(),
        }
    }

    fn of_peer(p: &'a Peer) -> Self {
        PeerView {
            namespace: p.namespace.as_deref(),
            workload: p.workload.as_ref().map(|w| w.name.as_str()),
            pod: p.pod.as_deref(),
            subnet: p.subnet.as_deref(),
            node: p.node.as_deref(),
        }
    }

    fn named(&self, w: &str) -> bool {
        [self.workload, self.pod, self.subnet, self.node].contains(&Some(w))
    }
}

impl FlowQuery {
    /// Whether `f` passes every filter of the query (`limit` aside).
    pub fn matches(&self, f: &ObservedFlow) -> bool {
        let r = &f.flow;
        self.matches_view(
            PeerView::of_endpoint(&r.src),
            PeerView::of_endpoint(&r.dst),
            f.verdict.as_ref().map(|v| v.allowed),
            f.staged_verdict.as_ref().map(|v| v.allowed),
            r.last_seen.or(r.first_seen),
        )
    }

    fn matches_stored(&self, f: &StoredFlow) -> bool {
        let v = f.verdicts.as_ref();
        self.matches_view(
            PeerView::of_peer(&f.peers.src),
            PeerView::of_peer(&f.peers.dst),
            v.map(|v| v.verdict().allowed),
            v.and_then(|v| v.staged()).map(|s| s.allowed),
            f.last_seen.or(f.first_seen),
        )
    }

    fn matches_view(
        &self,
        src: PeerView<'_>,
        dst: PeerView<'_>,
        allowed: Option<bool>,
        staged_allowed: Option<bool>,
        seen: Option<Timestamp>,
    ) -> bool {
        if let Some(ns) = self.namespace.as_deref()
            && src.namespace != Some(ns)
            && dst.namespace != Some(ns)
        {
            return false;
        }
        if let Some(w) = &self.workload
            && !src.named(w)
            && !dst.named(w)
        {
            return false;
        }
        if let Some(v) = &self.verdict {
            let ok = match v.as_str() {
                "allowed" => allowed == Some(true),
                "denied" => allowed == Some(false),
                "staged-allowed" => staged_allowed == Some(true),
                "staged-denied" => staged_allowed == Some(false),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        if let Some(since) = self.since
            && seen.is_some_and(|t| t < since)
        {
            return false;
        }
        true
    }
}

/// Drops joined to a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropState {
    /// What the flow record shows.
    pub drops: Drops,
    /// Drop counts per reason (the record shows the most frequent).
    reasons: HashMap<String, u64>,
}

/// A flow as the store holds it: the datapath's fields, shared attribution and verdicts.
#[derive(Debug, Clone)]
pub struct StoredFlow {
    /// Source port as the record had it (absent for ICMP).
    pub src_port: Option<u16>,
    /// Destination port as the record had it.
    pub dst_port: Option<u16>,
    /// What both ends belong to.
    pub peers: Attributed,
    /// Lifecycle state.
    pub state: Option<FlowState>,
    /// First packet seen.
    pub first_seen: Option<Timestamp>,
    /// Last packet seen.
    pub last_seen: Option<Timestamp>,
    /// Packets sent/received by the initiator.
    pub packets: Option<Directional>,
    /// Bytes sent/received by the initiator.
    pub bytes: Option<Directional>,
    /// The node whose agent observed the flow.
    pub node: Option<Arc<str>>,
    /// Drops joined to the flow.
    pub drops: Option<Box<DropState>>,
    /// Verdicts (absent while no inventory was loaded).
    pub verdicts: Option<Judged>,
}

impl StoredFlow {
    /// The compact form of `record` (whose own attribution fields, if any, are left to
    /// `peers`).
    pub fn new(
        record: &FlowRecord,
        peers: Attributed,
        verdicts: Option<Judged>,
        node: Option<Arc<str>>,
    ) -> Self {
        StoredFlow {
            src_port: record.src.port,
            dst_port: record.dst.port,
            peers,
            state: record.state,
            first_seen: record.first_seen,
            last_seen: record.last_seen,
            packets: record.packets,
            bytes: record.bytes,
            node,
            drops: None,
            verdicts,
        }
    }

    /// The verdict under the policies in force, without explanation.
    pub fn verdict(&self) -> Option<CompactVerdict> {
        self.verdicts.as_ref().map(Judged::verdict)
    }

    /// The record of flow `id` as served, without verdicts.
    pub fn to_record(&self, id: &FlowId) -> FlowRecord {
        let p = &self.peers;
        FlowRecord {
            protocol: id.protocol,
            src: p.src.endpoint(id.src.0, self.src_port, None),
            dst: p
                .dst
                .endpoint(id.dst.0, self.dst_port, p.service.as_deref()),
            state: self.state,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            packets: self.packets,
            bytes: self.bytes,
            drops: self.drops.as_ref().map(|d| d.drops.clone()),
            node: self.node.as_deref().map(str::to_owned),
        }
    }

    /// The explained verdicts of flow `id` (`model`: the current one, which judged the flows
    /// whose verdicts are still compact).
    pub fn explained(
        &self,
        id: &FlowId,
        model: Option<&Model>,
        explained: &mut Explained,
    ) -> Option<Arc<Verdicts>> {
        match self.verdicts.as_ref()? {
            Judged::Explained(v) => Some(v.clone()),
            Judged::Compact(_) => {
                let m = model?;
                Some(m.explain(&self.to_record(id), &self.peers, explained))
            }
        }
    }

    /// The full flow (flow `id`) as served, its verdicts explained by `model` (the current
    /// one) if not yet.
    pub fn to_observed(
        &self,
        id: &FlowId,
        model: Option<&Model>,
        explained: &mut Explained,
    ) -> ObservedFlow {
        let flow = self.to_record(id);
        let v = match &self.verdicts {
            Some(Judged::Explained(v)) => Some(v.clone()),
            Some(Judged::Compact(_)) => model.map(|m| m.explain(&flow, &self.peers, explained)),
            None => None,
        };
        ObservedFlow {
            flow,
            verdict: v.as_ref().map(|v| v.verdict.clone()),
            staged_verdict: v.and_then(|v| v.staged.clone()),
        }
    }
}

#[derive(Debug)]
struct Entry {
    flow: StoredFlow,
    ended: bool,
    /// Order of the last change (for eviction and "most recent").
    touched: u64,
}

/// The bounded store of observed flows.
#[derive(Debug)]
pub struct FlowStore {
    max: usize,
    entries: FxHashMap<FlowId, Entry>,
    unoriented: FxHashMap<FlowId, FlowId>,
    /// `touched` → flow, to find the least recently changed flow in O(log n).
    order: BTreeMap<u64, FlowId>,
    clock: u64,
    /// The last node name seen, shared by the flows that carry it.
    node: Option<Arc<str>>,
    /// Client legs of Service connections held here, and their joined backend legs.
    legs: ServiceLegs,
}

impl FlowStore {
    /// A store holding at most `max` flows.
    pub fn new(max: usize) -> Self {
        FlowStore {
            max: max.max(1),
            entries: FxHashMap::default(),
            unoriented: FxHashMap::default(),
            order: BTreeMap::new(),
            clock: 0,
            node: None,
            legs: ServiceLegs::default(),
        }
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The shared copy of a node name (flows of one agent all carry the same).
    pub fn node(&mut self, name: Option<&str>) -> Option<Arc<str>> {
        let name = name?;
        match &self.node {
            Some(n) if **n == *name => Some(n.clone()),
            _ => {
                let n: Arc<str> = name.into();
                self.node = Some(n.clone());
                Some(n)
            }
        }
    }

    /// The flow with this identity.
    pub fn get(&self, id: &FlowId) -> Option<&StoredFlow> {
        self.entries.get(id).map(|e| &e.flow)
    }

    /// The flow with this identity, as served (`model`: the current one).
    pub fn observed(&self, id: &FlowId, model: Option<&Model>) -> Option<ObservedFlow> {
        self.get(id)
            .map(|f| f.to_observed(id, model, &mut Explained::default()))
    }

    /// Explains the verdicts of every flow judged by `model` (which is being replaced), so
    /// each flow keeps the verdict it got when first seen.
    pub fn explain_all(&mut self, model: &Model) {
        let mut explained = Explained::default();
        for (id, e) in &mut self.entries {
            if let Some(Judged::Compact(_)) = e.flow.verdicts {
                let v = model.explain(&e.flow.to_record(id), &e.flow.peers, &mut explained);
                e.flow.verdicts = Some(Judged::Explained(v));
            }
        }
    }

    /// Whether flow `id` is held.
    pub fn contains(&self, id: &FlowId) -> bool {
        self.entries.contains_key(id)
    }

    /// Whether `record` is the backend leg of the client leg of a Service connection held
    /// here ([`super::nat`]); `is_backend(cluster_ip, addr)` says which addresses are a
    /// Service's backends.
    pub fn backend_leg(
        &mut self,
        record: &FlowRecord,
        is_backend: impl Fn(IpAddr, IpAddr) -> bool,
    ) -> Option<BackendLeg> {
        if self.legs.is_empty() {
            return None;
        }
        self.legs.backend_leg(record, is_backend)
    }

    /// Gives flow `id` (a client leg whose backend became known) new attribution and verdicts.
    pub fn rebind(&mut self, id: &FlowId, peers: Attributed, verdicts: Option<Judged>) {
        if let Some(e) = self.entries.get_mut(id) {
            e.flow.peers = peers;
            e.flow.verdicts = verdicts;
        }
    }

    /// The flow a packet between these endpoints belongs to, whichever way it went.
    pub fn find_unoriented(&self, id: &FlowId) -> Option<FlowId> {
        self.unoriented.get(&id.unoriented()).copied()
    }

    /// Inserts a new flow `id` (replacing one with the same identity). Its drops, if any, are
    /// kept when the same flow is re-announced.
    pub fn insert(&mut self, id: FlowId, mut flow: StoredFlow, ended: bool) {
        self.clock += 1;
        if let Some(old) = self.entries.remove(&id) {
            self.order.remove(&old.touched);
            if flow.drops.is_none() {
                flow.drops = old.flow.drops;
            }
        }
        if self.entries.len() >= self.max {
            self.evict_one();
        }
        self.unoriented.insert(id.unoriented(), id);
        self.order.insert(self.clock, id);
        if flow.peers.service.is_some() {
            self.legs.note_client_leg(id);
        }
        self.entries.insert(
            id,
            Entry {
                flow,
                ended,
                touched: self.clock,
            },
        );
    }

    /// Refreshes the datapath fields (counters, state, times) of a known flow; returns false
    /// when the flow is unknown.
    pub fn update(&mut self, record: &FlowRecord, ended: bool) -> bool {
        let id = FlowId::of(record);
        self.clock += 1;
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        let f = &mut e.flow;
        f.state = record.state;
        f.first_seen = record.first_seen.or(f.first_seen);
        f.last_seen = record.last_seen.or(f.last_seen);
        f.packets = record.packets;
        f.bytes = record.bytes;
        e.ended |= ended;
        self.order.remove(&e.touched);
        e.touched = self.clock;
        self.order.insert(self.clock, id);
        true
    }

    /// Adds `count` drops for `reason` (with the explaining `policy`) to flow `id`.
    pub fn add_drops(&mut self, id: &FlowId, reason: &str, policy: &str, count: u64) {
        self.clock += 1;
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let d = e.flow.drops.get_or_insert_with(Box::default);
        *d.reasons.entry(reason.to_owned()).or_default() += count;
        let top = d
            .reasons
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(r, _)| r.clone());
        let total = d.reasons.values().sum();
        d.drops = Drops {
            count: total,
            reason: top,
            policy: Some(policy.to_owned()),
        };
        self.order.remove(&e.touched);
        e.touched = self.clock;
        self.order.insert(self.clock, *id);
    }

    /// Removes ended flows last seen before `cutoff`.
    pub fn expire(&mut self, cutoff: Timestamp) {
        let gone: HashSet<FlowId> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.ended
                    && e.flow
                        .last_seen
                        .or(e.flow.first_seen)
                        .is_none_or(|t| t < cutoff)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    fn remove(&mut self, id: &FlowId) {
        if let Some(e) = self.entries.remove(id) {
            self.unoriented.remove(&id.unoriented());
            self.order.remove(&e.touched);
            self.legs.forget(id);
        }
    }

    /// Removes the flow changed longest ago.
    fn evict_one(&mut self) {
        if let Some((_, id)) = self.order.pop_first() {
            self.entries.remove(&id);
            self.unoriented.remove(&id.unoriented());
            self.legs.forget(&id);
        }
    }

    /// The flows matching `query`, oldest change first (the most recent `limit` ones), their
    /// verdicts explained by `model` (the current one) where not yet.
    pub fn query(&self, query: &FlowQuery, model: Option<&Model>) -> Vec<ObservedFlow> {
        let mut hits: Vec<(&FlowId, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| query.matches_stored(&e.flow))
            .collect();
        hits.sort_by_key(|(_, e)| e.touched);
        if let Some(limit) = query.limit
            && hits.len() > limit
        {
            hits.drain(..hits.len() - limit);
        }
        let mut explained = Explained::default();
        hits.into_iter()
            .map(|(id, e)| e.flow.to_observed(id, model, &mut explained))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::peer::Peers,
        flow::{Endpoint, WorkloadRef},
    };

    fn flow(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ns: &str) -> (FlowId, StoredFlow) {
        let mut r = FlowRecord::new(Protocol::Tcp, src.into(), dst.into(), Some(dport));
        r.src = Endpoint {
            port: Some(sport),
            namespace: Some(ns.into()),
            workload: Some(WorkloadRef {
                kind: "Deployment".into(),
                name: "web".into(),
            }),
            ..Endpoint::bare(src.into(), Some(sport))
        };
        let mut peers = Peers::new(0);
        let a = Attributed::new(peers.unshared(&r.src), peers.unshared(&r.dst), None);
        (FlowId::of(&r), StoredFlow::new(&r, a, None, None))
    }

    #[test]
    fn bounded_and_finds_reverse_direction() {
        let mut s = FlowStore::new(2);
        let (id, f) = flow([10, 0, 0, 1], 1000, [10, 0, 0, 2], 80, "a");
        s.insert(id, f, true);
        let (id, f) = flow([10, 0, 0, 1], 1001, [10, 0, 0, 2], 80, "a");
        s.insert(id, f, false);
        let (id, f) = flow([10, 0, 0, 1], 1002, [10, 0, 0, 2], 80, "b");
        s.insert(id, f, false);
        assert_eq!(s.len(), 2);
        // The flow changed longest ago went first.
        let reverse = FlowId {
            protocol: Protocol::Tcp,
            src: ([10, 0, 0, 2].into(), 80),
            dst: ([10, 0, 0, 1].into(), 1001),
        };
        let id = s.find_unoriented(&reverse).unwrap();
        assert_eq!(id.src.1, 1001);
        assert!(
            s.find_unoriented(&flow([10, 0, 0, 1], 1000, [10, 0, 0, 2], 80, "a").0)
                .is_none()
        );
        s.add_drops(&id, "NETFILTER_DROP", "a/deny", 3);
        s.add_drops(&id, "NETFILTER_DROP", "a/deny", 2);
        let d = s.observed(&id, None).unwrap().flow.drops.unwrap();
        assert_eq!((d.count, d.reason.as_deref()), (5, Some("NETFILTER_DROP")));
        // Re-announcing the flow keeps its drops.
        let (same, f) = flow([10, 0, 0, 1], 1001, [10, 0, 0, 2], 80, "a");
        s.insert(same, f, false);
        assert_eq!(s.observed(&id, None).unwrap().flow.drops.unwrap().count, 5);
        let q = FlowQuery {
            namespace: Some("b".into()),
            ..FlowQuery::default()
        };
        let hits = s.query(&q, None);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].flow.src.port, Some(1002));
        assert_eq!(hits[0].flow.src.namespace.as_deref(), Some("b"));
        assert_eq!(
            s.query(
                &FlowQuery {
                    workload: Some("nope".into()),
                    ..FlowQuery::default()
                },
                None
            )
            .len(),
            0
        );
        assert_eq!(
            s.query(
                &FlowQuery {
                    workload: Some("web".into()),
                    ..FlowQuery::default()
                },
                None
            )
            .len(),
            2
        );
        // The served flow is the record it was stored from, attribution included.
        let (id, f) = flow([10, 0, 0, 3], 1003, [10, 0, 0, 4], 443, "c");
        let served = f.to_observed(&id, None, &mut Explained::default());
        assert_eq!(served.flow.src.workload.as_ref().unwrap().name, "web");
        assert_eq!(served.flow.dst.port, Some(443));
        assert_eq!(FlowId::of(&served.flow), id);
    }
}
