//! The agent's in-memory store of attributed flows with their verdicts and drops, served by
//! `/api/v1/flows`. Bounded: ended flows leave after the retention, and when the store is
//! full the flow changed longest ago goes first.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    flow::{Drops, FlowRecord, Protocol},
    policy::Verdict,
};

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

impl FlowQuery {
    /// Whether `f` passes every filter of the query (`limit` aside).
    pub fn matches(&self, f: &ObservedFlow) -> bool {
        let r = &f.flow;
        if let Some(ns) = &self.namespace
            && r.src.namespace.as_ref() != Some(ns)
            && r.dst.namespace.as_ref() != Some(ns)
        {
            return false;
        }
        if let Some(w) = &self.workload {
            let named = |ep: &crate::flow::Endpoint| {
                ep.workload.as_ref().is_some_and(|x| &x.name == w)
                    || ep.pod.as_ref() == Some(w)
                    || ep.subnet.as_ref() == Some(w)
                    || ep.node.as_ref() == Some(w)
            };
            if !named(&r.src) && !named(&r.dst) {
                return false;
            }
        }
        if let Some(v) = &self.verdict {
            let ok = match v.as_str() {
                "allowed" => f.verdict.as_ref().is_some_and(|v| v.allowed),
                "denied" => f.verdict.as_ref().is_some_and(|v| !v.allowed),
                "staged-allowed" => f.staged_verdict.as_ref().is_some_and(|v| v.allowed),
                "staged-denied" => f.staged_verdict.as_ref().is_some_and(|v| !v.allowed),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        if let Some(since) = self.since
            && r.last_seen.or(r.first_seen).is_some_and(|t| t < since)
        {
            return false;
        }
        true
    }
}

#[derive(Debug)]
struct Entry {
    flow: ObservedFlow,
    ended: bool,
    /// Order of the last change (for eviction and "most recent").
    touched: u64,
    /// Drop counts per reason (the record shows the most frequent).
    drop_reasons: HashMap<String, u64>,
}

/// The bounded store of observed flows.
#[derive(Debug)]
pub struct FlowStore {
    max: usize,
    entries: HashMap<FlowId, Entry>,
    unoriented: HashMap<FlowId, FlowId>,
    /// `touched` → flow, to find the least recently changed flow in O(log n).
    order: BTreeMap<u64, FlowId>,
    clock: u64,
}

impl FlowStore {
    /// A store holding at most `max` flows.
    pub fn new(max: usize) -> Self {
        FlowStore {
            max: max.max(1),
            entries: HashMap::new(),
            unoriented: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
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

    /// The flow with this identity.
    pub fn get(&self, id: &FlowId) -> Option<&ObservedFlow> {
        self.entries.get(id).map(|e| &e.flow)
    }

    /// The flow a packet between these endpoints belongs to, whichever way it went.
    pub fn find_unoriented(&self, id: &FlowId) -> Option<FlowId> {
        self.unoriented.get(&id.unoriented()).copied()
    }

    /// Inserts a new flow (replacing one with the same identity). Its drops, if any, are kept
    /// when the same flow is re-announced.
    pub fn insert(&mut self, mut flow: ObservedFlow, ended: bool) {
        let id = FlowId::of(&flow.flow);
        self.clock += 1;
        let mut drop_reasons = HashMap::new();
        if let Some(old) = self.entries.remove(&id) {
            self.order.remove(&old.touched);
            if flow.flow.drops.is_none() {
                flow.flow.drops = old.flow.flow.drops;
            }
            drop_reasons = old.drop_reasons;
        }
        if self.entries.len() >= self.max {
            self.evict_one();
        }
        self.unoriented.insert(id.unoriented(), id);
        self.order.insert(self.clock, id);
        self.entries.insert(
            id,
            Entry {
                flow,
                ended,
                touched: self.clock,
                drop_reasons,
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
        let f = &mut e.flow.flow;
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
        *e.drop_reasons.entry(reason.to_owned()).or_default() += count;
        let top = e
            .drop_reasons
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(r, _)| r.clone());
        let total = e.drop_reasons.values().sum();
        e.flow.flow.drops = Some(Drops {
            count: total,
            reason: top,
            policy: Some(policy.to_owned()),
        });
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
                        .flow
                        .last_seen
                        .or(e.flow.flow.first_seen)
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
        }
    }

    /// Removes the flow changed longest ago.
    fn evict_one(&mut self) {
        if let Some((_, id)) = self.order.pop_first() {
            self.entries.remove(&id);
            self.unoriented.remove(&id.unoriented());
        }
    }

    /// The flows matching `query`, oldest change first (the most recent `limit` ones).
    pub fn query(&self, query: &FlowQuery) -> Vec<ObservedFlow> {
        let mut hits: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| query.matches(&e.flow))
            .collect();
        hits.sort_by_key(|e| e.touched);
        if let Some(limit) = query.limit
            && hits.len() > limit
        {
            hits.drain(..hits.len() - limit);
        }
        hits.into_iter().map(|e| e.flow.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Endpoint, WorkloadRef};

    fn flow(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ns: &str) -> ObservedFlow {
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
        ObservedFlow {
            flow: r,
            verdict: None,
            staged_verdict: None,
        }
    }

    #[test]
    fn bounded_and_finds_reverse_direction() {
        let mut s = FlowStore::new(2);
        s.insert(flow([10, 0, 0, 1], 1000, [10, 0, 0, 2], 80, "a"), true);
        s.insert(flow([10, 0, 0, 1], 1001, [10, 0, 0, 2], 80, "a"), false);
        s.insert(flow([10, 0, 0, 1], 1002, [10, 0, 0, 2], 80, "b"), false);
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
            s.find_unoriented(&FlowId::of(
                &flow([10, 0, 0, 1], 1000, [10, 0, 0, 2], 80, "a").flow
            ))
            .is_none()
        );
        s.add_drops(&id, "NETFILTER_DROP", "a/deny", 3);
        s.add_drops(&id, "NETFILTER_DROP", "a/deny", 2);
        let d = s.get(&id).unwrap().flow.drops.clone().unwrap();
        assert_eq!((d.count, d.reason.as_deref()), (5, Some("NETFILTER_DROP")));
        let q = FlowQuery {
            namespace: Some("b".into()),
            ..FlowQuery::default()
        };
        let hits = s.query(&q);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].flow.src.port, Some(1002));
        assert_eq!(
            s.query(&FlowQuery {
                workload: Some("nope".into()),
                ..FlowQuery::default()
            })
            .len(),
            0
        );
    }
}
