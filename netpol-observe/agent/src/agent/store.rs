//! The agent's in-memory store of attributed flows with their verdicts and drops, served by
//! `/api/v1/flows`. Bounded: ended flows leave after the retention, and when the store is
//! full the flow changed longest ago goes first.
//!
//! A stored flow is compact ([`StoredFlow`]): its addresses and ports, counters, times and
//! state, and shared handles to the attribution of each end ([`super::peer::Peer`], one per
//! pod, node or subnet) and its verdicts ([`Judged`]: compact while the model that judged it
//! is current, explained when that model is replaced). The full [`ObservedFlow`] is rebuilt,
//! and its verdicts explained, only when served.

use std::{collections::HashMap, hash::BuildHasher, net::IpAddr, sync::Arc};

use hashbrown::{HashTable, hash_table};
use jiff::Timestamp;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

pub use super::observed::{FlowId, ObservedFlow};
use super::{
    model::{Attributed, CompactVerdicts, Explained, Model, Sides, Verdicts},
    nat::{BackendLeg, ServiceLegs},
    peer::Peer,
};
use crate::{
    flow::{Directional, Drops, Endpoint, FlowRecord, FlowState, Unenforced},
    policy::CompactVerdict,
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
            f.last_seen().or_else(|| f.first_seen()),
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

/// A time as nanoseconds since the Unix epoch, 8 bytes instead of an `Option<Timestamp>`'s
/// 24. Covers 1678–2262; a time outside that range (or `None`) is kept as "no time".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactTime(i64);

impl CompactTime {
    const NONE: CompactTime = CompactTime(i64::MIN);

    /// The compact form of `t`.
    pub(crate) fn new(t: Option<Timestamp>) -> Self {
        t.and_then(|t| i64::try_from(t.as_nanosecond()).ok())
            .filter(|&n| n != i64::MIN)
            .map_or(Self::NONE, CompactTime)
    }

    /// The time, if any.
    pub(crate) fn get(self) -> Option<Timestamp> {
        if self == Self::NONE {
            return None;
        }
        Timestamp::from_nanosecond(i128::from(self.0)).ok()
    }
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
    /// Whether the record had packet and byte counters (`packets`, `bytes`).
    has_packets: bool,
    has_bytes: bool,
    first_seen: CompactTime,
    last_seen: CompactTime,
    packets: Directional,
    bytes: Directional,
    /// The node whose agent observed the flow.
    pub node: Option<Arc<str>>,
    /// Drops joined to the flow.
    pub drops: Option<Box<DropState>>,
    /// Verdicts (absent while no inventory was loaded).
    pub verdicts: Option<Judged>,
    /// Whether this agent counts the flow in its metrics
    /// ([`super::model::Attributed::counted_on`]); served as the record's `counted`.
    pub counted: bool,
    /// For a flow to a Service (a client leg): the destination is the backend the node's DNAT
    /// chose ([`FlowStore::rebind`]), not the Service's first backend.
    pub backend_known: bool,
    /// The datapath saw the flow open ([`crate::datapath::FlowUpdate::opened`]); noted only for
    /// denied flows, by the enforcement check ([`FlowStore::mark_opened`]).
    pub opened: bool,
    /// The denying sides this agent found unenforced: the flow was delivered although they
    /// deny it (marked once, [`FlowStore::mark_unenforced`]); served as the record's
    /// `unenforced`.
    pub unenforced: Sides,
    /// What the client's DNS answers said of the destination when the flow was first seen.
    pub dns: Option<Arc<super::dns::FlowDns>>,
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
        let mut f = StoredFlow {
            src_port: record.src.port,
            dst_port: record.dst.port,
            peers,
            state: None,
            has_packets: false,
            has_bytes: false,
            first_seen: CompactTime::NONE,
            last_seen: CompactTime::NONE,
            packets: Directional::default(),
            bytes: Directional::default(),
            node,
            drops: None,
            verdicts,
            counted: true,
            backend_known: false,
            opened: false,
            unenforced: Sides::NONE,
            dns: None,
        };
        f.refresh(record);
        f
    }

    /// Takes the datapath fields (counters, state, times) of a newer record of this flow;
    /// times the record lacks are kept.
    fn refresh(&mut self, record: &FlowRecord) {
        self.state = record.state;
        if record.first_seen.is_some() {
            self.first_seen = CompactTime::new(record.first_seen);
        }
        if record.last_seen.is_some() {
            self.last_seen = CompactTime::new(record.last_seen);
        }
        self.has_packets = record.packets.is_some();
        self.packets = record.packets.unwrap_or_default();
        self.has_bytes = record.bytes.is_some();
        self.bytes = record.bytes.unwrap_or_default();
    }

    /// First packet seen.
    pub fn first_seen(&self) -> Option<Timestamp> {
        self.first_seen.get()
    }

    /// Last packet seen.
    pub fn last_seen(&self) -> Option<Timestamp> {
        self.last_seen.get()
    }

    /// Packets sent/received by the initiator.
    pub fn packets(&self) -> Option<Directional> {
        self.has_packets.then_some(self.packets)
    }

    /// Bytes sent/received by the initiator.
    pub fn bytes(&self) -> Option<Directional> {
        self.has_bytes.then_some(self.bytes)
    }

    /// The verdict under the policies in force, without explanation.
    pub fn verdict(&self) -> Option<CompactVerdict> {
        self.verdicts.as_ref().map(Judged::verdict)
    }

    /// The record of flow `id` as served, without verdicts.
    pub(crate) fn to_record(&self, id: &FlowId) -> FlowRecord {
        let p = &self.peers;
        let mut dst = p
            .dst
            .endpoint(id.dst.0, self.dst_port, p.service.as_deref());
        if let Some(d) = &self.dns {
            dst.dns_names = d.names.clone();
        }
        FlowRecord {
            protocol: id.protocol,
            src: p.src.endpoint(id.src.0, self.src_port, None),
            dst,
            state: self.state,
            first_seen: self.first_seen(),
            last_seen: self.last_seen(),
            packets: self.packets(),
            bytes: self.bytes(),
            drops: self.drops.as_ref().map(|d| d.drops.clone()),
            // Named from the explained verdict, when served ([`StoredFlow::to_observed`]).
            unenforced: None,
            node: self.node.as_deref().map(str::to_owned),
            counted: self.counted,
            connections: None,
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
            Judged::Explained(v) => Some(Arc::clone(v)),
            Judged::Compact(_) => {
                let m = model?;
                Some(m.explain(&self.to_record(id), &self.peers, explained))
            }
        }
    }

    /// The full flow (flow `id`) as served, its verdicts explained by `model` (the current
    /// one) if not yet.
    pub(crate) fn to_observed(
        &self,
        id: &FlowId,
        model: Option<&Model>,
        explained: &mut Explained,
    ) -> ObservedFlow {
        let mut flow = self.to_record(id);
        let v = match &self.verdicts {
            Some(Judged::Explained(v)) => Some(Arc::clone(v)),
            Some(Judged::Compact(_)) => model.map(|m| m.explain(&flow, &self.peers, explained)),
            None => None,
        };
        if !self.unenforced.is_empty() {
            let policy = v
                .as_ref()
                .and_then(|v| super::model::unenforced_policy(&v.verdict, self.unenforced));
            flow.unenforced = Some(Unenforced {
                policy: policy.unwrap_or_else(|| "unknown".to_owned()),
            });
        }
        ObservedFlow {
            flow,
            verdict: v.as_ref().map(|v| v.verdict.clone()),
            staged_verdict: v.and_then(|v| v.staged.clone()),
            dns_rotation: self.dns.as_ref().and_then(|d| d.rotation.clone()),
        }
    }
}

/// "No slot": the end of the LRU list.
const NIL: u32 = u32::MAX;

/// One held flow in the store's slab, linked into the LRU list.
#[derive(Debug)]
struct Slot {
    id: FlowId,
    flow: StoredFlow,
    ended: bool,
    /// The slot changed just before this one ([`NIL`]: this is the oldest).
    prev: u32,
    /// The slot changed just after this one ([`NIL`]: this is the newest).
    next: u32,
}

/// The bounded store of observed flows.
///
/// Flows live in one slab (a `Vec` of slots with a free list), linked in a doubly linked
/// list by order of their last change (oldest first: the next to evict, and the order
/// queries return). Two hash tables of slot indices find a flow by its identity and by its
/// unoriented identity; they hash the identity but store only the 4-byte index.
#[derive(Debug)]
pub struct FlowStore {
    max: usize,
    slots: Vec<Option<Slot>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// Slot of each flow, by [`FlowId`].
    by_id: HashTable<u32>,
    /// Slot of the flow of each [`FlowId::unoriented`] identity.
    by_unoriented: HashTable<u32>,
    /// Oldest and newest slot of the LRU list.
    head: u32,
    tail: u32,
    len: usize,
    /// The last node name seen, shared by the flows that carry it.
    node: Option<Arc<str>>,
    /// Client legs of Service connections held here, and their joined backend legs.
    legs: ServiceLegs,
    /// Flows evicted while still active (the store was full of active flows), with whether
    /// they were counted here and found unenforced: their later updates are the same flows,
    /// not new ones. An entry leaves when the flow comes back (its next update, the last one at
    /// its end), so the map is bounded by the active flows.
    evicted_active: rustc_hash::FxHashMap<FlowId, Evicted>,
}

/// What the store remembers of a flow evicted while active, until it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// It was counted here ([`StoredFlow::counted`]).
    pub counted: bool,
    /// Its unenforced sides ([`StoredFlow::unenforced`]): it is not counted unenforced twice.
    pub unenforced: Sides,
}

fn hash_of(id: &FlowId) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl FlowStore {
    /// A store holding at most `max` flows.
    pub fn new(max: usize) -> Self {
        FlowStore {
            max: max.clamp(1, (NIL - 1) as usize),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashTable::new(),
            by_unoriented: HashTable::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            node: None,
            legs: ServiceLegs::default(),
            evicted_active: rustc_hash::FxHashMap::default(),
        }
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shared copy of a node name (flows of one agent all carry the same).
    pub fn node(&mut self, name: Option<&str>) -> Option<Arc<str>> {
        let name = name?;
        match &self.node {
            Some(n) if **n == *name => Some(Arc::clone(n)),
            _ => {
                let n: Arc<str> = name.into();
                self.node = Some(Arc::clone(&n));
                Some(n)
            }
        }
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// The slot of flow `id`.
    fn index(&self, id: &FlowId) -> Option<u32> {
        let slots = &self.slots;
        self.by_id
            .find(hash_of(id), |&i| {
                slots
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.id == *id)
            })
            .copied()
    }

    /// The flow with this identity.
    pub fn get(&self, id: &FlowId) -> Option<&StoredFlow> {
        self.index(id).and_then(|i| self.slot(i)).map(|s| &s.flow)
    }

    /// The flow with this identity, as served (`model`: the current one).
    pub fn observed(&self, id: &FlowId, model: Option<&Model>) -> Option<ObservedFlow> {
        self.get(id)
            .map(|f| f.to_observed(id, model, &mut Explained::default()))
    }

    /// Explains the verdicts of every flow judged by `model` (which is being replaced), so
    /// each flow keeps the verdict it got when first seen.
    pub(crate) fn explain_all(&mut self, model: &Model) {
        let mut explained = Explained::default();
        for s in self.slots.iter_mut().flatten() {
            if let Some(Judged::Compact(_)) = s.flow.verdicts {
                let v = model.explain(&s.flow.to_record(&s.id), &s.flow.peers, &mut explained);
                s.flow.verdicts = Some(Judged::Explained(v));
            }
        }
    }

    /// Whether flow `id` is held.
    pub fn contains(&self, id: &FlowId) -> bool {
        self.index(id).is_some()
    }

    /// Whether `record` is the backend leg of the client leg of a Service connection held
    /// here ([`super::nat`]); `is_backend(cluster_ip, addr)` says which addresses are a
    /// Service's backends.
    pub(crate) fn backend_leg(
        &mut self,
        record: &FlowRecord,
        is_backend: impl Fn(IpAddr, IpAddr) -> bool,
    ) -> Option<BackendLeg> {
        if self.legs.is_empty() {
            return None;
        }
        self.legs.backend_leg(record, is_backend)
    }

    /// Gives flow `id` (a client leg whose backend became known) new attribution and
    /// verdicts, and marks it counted when `counted` (a flow once counted stays counted, so its
    /// counters never stop halfway) and its backend known. Returns the flow.
    pub(crate) fn rebind(
        &mut self,
        id: &FlowId,
        peers: Attributed,
        verdicts: Option<Judged>,
        counted: bool,
    ) -> Option<&StoredFlow> {
        let s = self.index(id).and_then(|i| self.slot_mut(i))?;
        s.flow.peers = peers;
        s.flow.verdicts = verdicts;
        s.flow.counted |= counted;
        s.flow.backend_known = true;
        Some(&s.flow)
    }

    /// Marks flow `id` unenforced on `sides` (once: false when it already was, or is not held).
    pub(crate) fn mark_unenforced(&mut self, id: &FlowId, sides: Sides) -> bool {
        match self.index(id).and_then(|i| self.slot_mut(i)) {
            Some(s) if s.flow.unenforced.is_empty() && !sides.is_empty() => {
                s.flow.unenforced = sides;
                true
            }
            _ => false,
        }
    }

    /// Notes that the datapath saw flow `id` open.
    pub(crate) fn mark_opened(&mut self, id: &FlowId) {
        if let Some(s) = self.index(id).and_then(|i| self.slot_mut(i)) {
            s.flow.opened = true;
        }
    }

    /// Whether flow `id` is held and has ended.
    pub fn ended(&self, id: &FlowId) -> bool {
        self.index(id)
            .and_then(|i| self.slot(i))
            .is_some_and(|s| s.ended)
    }

    /// Whether `id` is a backend leg joined to a client leg held here ([`super::nat`]).
    pub fn is_joined_backend_leg(&self, id: &FlowId) -> bool {
        self.legs.is_joined(id)
    }

    /// The flow a packet between these endpoints belongs to, whichever way it went.
    pub(crate) fn find_unoriented(&self, id: &FlowId) -> Option<FlowId> {
        let key = id.unoriented();
        let slots = &self.slots;
        self.by_unoriented
            .find(hash_of(&key), |&i| {
                slots
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.id.unoriented() == key)
            })
            .and_then(|&i| self.slot(i))
            .map(|s| s.id)
    }

    /// Takes slot `i` out of the LRU list.
    fn unlink(&mut self, i: u32) {
        let Some((prev, next)) = self.slot(i).map(|s| (s.prev, s.next)) else {
            return;
        };
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    /// Puts slot `i` at the newest end of the LRU list.
    fn push_newest(&mut self, i: u32) {
        let tail = self.tail;
        if let Some(s) = self.slot_mut(i) {
            s.prev = tail;
            s.next = NIL;
        }
        match self.slot_mut(tail) {
            Some(t) => t.next = i,
            None => self.head = i,
        }
        self.tail = i;
    }

    /// Marks slot `i` as the most recently changed.
    fn touch(&mut self, i: u32) {
        if self.tail != i {
            self.unlink(i);
            self.push_newest(i);
        }
    }

    /// Inserts a new flow `id` (replacing one with the same identity). Its drops, if any, are
    /// kept when the same flow is re-announced.
    pub fn insert(&mut self, id: FlowId, mut flow: StoredFlow, ended: bool) {
        if flow.peers.service.is_some() {
            self.legs.note_client_leg(id);
        }
        if let Some(i) = self.index(&id) {
            if let Some(s) = self.slot_mut(i) {
                if flow.drops.is_none() {
                    flow.drops = s.flow.drops.take();
                }
                s.flow = flow;
                s.ended = ended;
            }
            self.touch(i);
            return;
        }
        if self.len >= self.max {
            self.evict_one();
        }
        let slot = Slot {
            id,
            flow,
            ended,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                // Grow by doubling, but never past the store's bound.
                if self.slots.len() == self.slots.capacity() {
                    let more = self.slots.len().max(16).min(self.max - self.slots.len());
                    self.slots.reserve_exact(more.max(1));
                }
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        self.push_newest(i);
        let slots = &self.slots;
        let rehash = |&j: &u32| {
            slots
                .get(j as usize)
                .and_then(Option::as_ref)
                .map_or(0, |s| hash_of(&s.id))
        };
        self.by_id.insert_unique(hash_of(&id), i, rehash);
        let key = id.unoriented();
        let same = |&j: &u32| {
            slots
                .get(j as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.id.unoriented() == key)
        };
        let rehash = |&j: &u32| {
            slots
                .get(j as usize)
                .and_then(Option::as_ref)
                .map_or(0, |s| hash_of(&s.id.unoriented()))
        };
        match self.by_unoriented.entry(hash_of(&key), same, rehash) {
            hash_table::Entry::Occupied(mut e) => *e.get_mut() = i,
            hash_table::Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }

    /// Refreshes the datapath fields (counters, state, times) of a known flow; returns false
    /// when the flow is unknown.
    pub fn update(&mut self, record: &FlowRecord, ended: bool) -> bool {
        let id = FlowId::of(record);
        let Some(i) = self.index(&id) else {
            return false;
        };
        if let Some(s) = self.slot_mut(i) {
            s.flow.refresh(record);
            s.ended |= ended;
        }
        self.touch(i);
        true
    }

    /// Adds `count` drops for `reason` (with the explaining `policy`) to flow `id`.
    pub(crate) fn add_drops(&mut self, id: &FlowId, reason: &str, policy: &str, count: u64) {
        let Some(i) = self.index(id) else {
            return;
        };
        if let Some(s) = self.slot_mut(i) {
            let d = s.flow.drops.get_or_insert_with(Box::default);
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
        }
        self.touch(i);
    }

    /// Removes ended flows last seen before `cutoff`.
    pub fn expire(&mut self, cutoff: Timestamp) {
        let gone: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let old = s.ended
                    && s.flow
                        .last_seen()
                        .or_else(|| s.flow.first_seen())
                        .is_none_or(|t| t < cutoff);
                old.then_some(i as u32)
            })
            .collect();
        for i in gone {
            self.remove_slot(i);
        }
    }

    /// Removes the flow in slot `i` from the list, both indexes and the slab.
    fn remove_slot(&mut self, i: u32) {
        let Some(id) = self.slot(i).map(|s| s.id) else {
            return;
        };
        self.unlink(i);
        if let Ok(e) = self.by_id.find_entry(hash_of(&id), |&j| j == i) {
            e.remove();
        }
        if let Ok(e) = self
            .by_unoriented
            .find_entry(hash_of(&id.unoriented()), |&j| j == i)
        {
            e.remove();
        }
        if let Some(s) = self.slots.get_mut(i as usize) {
            *s = None;
        }
        self.free.push(i);
        self.len -= 1;
        self.legs.forget(&id);
    }

    /// Removes the flow changed longest ago.
    fn evict_one(&mut self) {
        if let Some(s) = self.slot(self.head)
            && !s.ended
        {
            let evicted = Evicted {
                counted: s.flow.counted,
                unenforced: s.flow.unenforced,
            };
            self.evicted_active.insert(s.id, evicted);
        }
        self.remove_slot(self.head);
    }

    /// Whether `id` was evicted while active (and forgets it): its update is not a new flow.
    /// `Some`: it was, with what the store knew of it.
    pub(crate) fn take_evicted(&mut self, id: &FlowId) -> Option<Evicted> {
        self.evicted_active.remove(id)
    }

    /// Whether `id` was evicted while active, and was counted here then (without forgetting
    /// it).
    pub fn evicted_counted(&self, id: &FlowId) -> Option<bool> {
        self.evicted_active.get(id).map(|e| e.counted)
    }

    /// The identities of the flows matching `query`, oldest change first (the most recent
    /// `limit` ones, all without a limit), and whether more flows matched than `limit`. One walk
    /// of the list, nothing copied but the identities: the flows lock is held briefly.
    pub fn select(&self, query: &FlowQuery) -> (Vec<FlowId>, bool) {
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut hits = Vec::new();
        let mut truncated = false;
        let mut i = self.tail;
        while let Some(s) = self.slot(i) {
            if query.matches_stored(&s.flow) {
                if hits.len() == limit {
                    truncated = true;
                    break;
                }
                hits.push(s.id);
            }
            i = s.prev;
        }
        hits.reverse();
        (hits, truncated)
    }

    /// Copies of the flows of `ids` still held and still matching `query`, in that order (a
    /// stored flow is small: its attribution and verdicts are shared handles).
    pub fn snapshot(&self, ids: &[FlowId], query: &FlowQuery) -> Vec<(FlowId, StoredFlow)> {
        ids.iter()
            .filter_map(|id| {
                let f = self.get(id)?;
                query.matches_stored(f).then(|| (*id, f.clone()))
            })
            .collect()
    }

    /// The flows matching `query`, oldest change first (the most recent `limit` ones), their
    /// verdicts explained by `model` (the current one) where not yet.
    pub fn query(&self, query: &FlowQuery, model: Option<&Model>) -> Vec<ObservedFlow> {
        let limit = query.limit.unwrap_or(usize::MAX);
        // Newest first, up to `limit`, then oldest first.
        let mut hits: Vec<&Slot> = Vec::new();
        let mut i = self.tail;
        while hits.len() < limit
            && let Some(s) = self.slot(i)
        {
            if query.matches_stored(&s.flow) {
                hits.push(s);
            }
            i = s.prev;
        }
        let mut explained = Explained::default();
        hits.into_iter()
            .rev()
            .map(|s| s.flow.to_observed(&s.id, model, &mut explained))
            .collect()
    }
}

/// Reading the store in pieces, for `/api/v1/flows` and `/api/v1/recommendations`: the
/// identities first, then the flows chunk by chunk, each chunk copied under the flows lock and
/// explained and serialised outside it, so the event loop never waits for a whole answer.
impl super::AgentState {
    /// The identities of the flows matching `query` (oldest change first, the most recent
    /// `limit`) and whether more matched ([`FlowStore::select`]).
    pub(crate) fn select_flows(&self, query: &FlowQuery) -> (Vec<FlowId>, bool) {
        self.lock_flows().store.select(query)
    }

    /// The flows of `ids` still held and matching `query`, as served: verdicts explained by
    /// the model that judged them, outside the flows lock.
    pub(crate) fn observe_flows(&self, ids: &[FlowId], query: &FlowQuery) -> Vec<ObservedFlow> {
        // The model is read under the same lock: models are swapped under it (after the
        // outgoing one explained its flows), so every compact verdict copied here is the
        // current model's.
        let (model, flows) = {
            let fl = self.lock_flows();
            (fl.model.clone(), fl.store.snapshot(ids, query))
        };
        let mut explained = Explained::default();
        flows
            .iter()
            .map(|(id, f)| f.to_observed(id, model.as_deref(), &mut explained))
            .collect()
    }

    /// The flow records of `ids` still held (attribution, no verdicts).
    pub(crate) fn flow_records(&self, ids: &[FlowId]) -> Vec<FlowRecord> {
        let flows = self.lock_flows().store.snapshot(ids, &FlowQuery::default());
        flows.iter().map(|(id, f)| f.to_record(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::peer::Peers,
        flow::{Endpoint, Protocol, WorkloadRef},
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

    /// The store holds up to `maxFlows` (100,000 by default) of these: the enforcement check's
    /// flags (`backend_known`, `opened`, `unenforced`) live in what was padding; the DNS
    /// names are one shared pointer (8 bytes, 0.8 MB at 100,000 flows).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_stored_flow_stays_compact() {
        assert_eq!(size_of::<StoredFlow>(), 144);
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

    #[test]
    fn evicts_least_recently_changed_and_reuses_slots() {
        let mut s = FlowStore::new(3);
        let ids: Vec<FlowId> = (0..3)
            .map(|k| {
                let (id, f) = flow([10, 0, 0, 1], 2000 + k, [10, 0, 0, 2], 80, "a");
                s.insert(id, f, k == 2);
                id
            })
            .collect();
        // Touch the oldest: the second becomes the next to go.
        let (_, f) = flow([10, 0, 0, 1], 2000, [10, 0, 0, 2], 80, "a");
        assert!(s.update(&f.to_record(&ids[0]), false));
        let (id3, f) = flow([10, 0, 0, 1], 2003, [10, 0, 0, 2], 80, "a");
        s.insert(id3, f, false);
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&ids[1]));
        assert!(s.contains(&ids[0]) && s.contains(&ids[2]) && s.contains(&id3));
        // The evicted flow's slot was reused: the slab did not grow past the bound.
        assert_eq!(s.slots.len(), 3);
        // Queries come oldest change first; `limit` keeps the most recent.
        let ports = |s: &FlowStore, limit| -> Vec<Option<u16>> {
            s.query(
                &FlowQuery {
                    limit,
                    ..FlowQuery::default()
                },
                None,
            )
            .iter()
            .map(|o| o.flow.src.port)
            .collect()
        };
        assert_eq!(ports(&s, None), [Some(2002), Some(2000), Some(2003)]);
        assert_eq!(ports(&s, Some(2)), [Some(2000), Some(2003)]);
        assert_eq!(ports(&s, Some(0)), Vec::<Option<u16>>::new());
        // `select` + `snapshot` give the same flows in the same order, and say when `limit`
        // cut some off.
        let selected = |limit| {
            let q = FlowQuery {
                limit,
                ..FlowQuery::default()
            };
            let (ids, truncated) = s.select(&q);
            let snap: Vec<Option<u16>> = s
                .snapshot(&ids, &q)
                .iter()
                .map(|(id, f)| f.to_record(id).src.port)
                .collect();
            (snap, truncated)
        };
        assert_eq!(selected(None), (ports(&s, None), false));
        assert_eq!(selected(Some(2)), (ports(&s, Some(2)), true));
        assert_eq!(selected(Some(3)), (ports(&s, None), false));
        assert_eq!(selected(Some(0)), (Vec::new(), true));
        // Drops touch the flow too.
        s.add_drops(&ids[2], "NETFILTER_DROP", "a/deny", 1);
        assert_eq!(ports(&s, None), [Some(2000), Some(2003), Some(2002)]);
        // Only ended flows expire (the one ended at insert has no times: expired).
        s.expire(Timestamp::UNIX_EPOCH);
        assert_eq!(ports(&s, None), [Some(2000), Some(2003)]);
        assert!(s.find_unoriented(&ids[2]).is_none());
        assert_eq!(s.find_unoriented(&id3), Some(id3));
        let (id4, f) = flow([10, 0, 0, 1], 2004, [10, 0, 0, 2], 80, "a");
        s.insert(id4, f, false);
        assert_eq!((s.len(), s.slots.len()), (3, 3));
        assert_eq!(ports(&s, None), [Some(2000), Some(2003), Some(2004)]);
    }
}
