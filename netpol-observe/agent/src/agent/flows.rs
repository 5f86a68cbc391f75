//! The flow path: each datapath update or kernel drop attributed, judged, counted and stored,
//! under one lock ([`Flows`]) taken once per event.

use std::sync::Arc;

use jiff::Timestamp;

use super::{
    AgentState, FlowId, FlowQuery, FlowStore, Judged, Model, ObservedFlow, StoredFlow,
    dns::DnsState,
    enforcement::{NOT_POLICY_DROPS, UnenforcedLog},
    model::{self, Attributed, Sides},
    peer::Peers,
    series::SeriesCache,
};
use crate::{
    datapath::{DropSample, FlowUpdate},
    flow::{Directional, Endpoint, FlowRecord, Protocol},
    metrics::{Direction, Enforcement, FlowLabels},
};

/// What the flow path reads and writes together, behind one lock ([`AgentState::lock_flows`]):
/// written by the event loop (flow updates, drops, DNS answers, model installs, expiry), read by
/// the HTTP API in short pieces. The model lives here, so a compact verdict in the store is
/// always the current model's, and a reader copying flows gets the model that judged them.
#[derive(Debug)]
pub(super) struct Flows {
    /// The attributed flows.
    pub(super) store: FlowStore,
    /// The model in use (`None`: no inventory yet, flows stay unattributed).
    pub(super) model: Option<Arc<Model>>,
    /// The model's inventory knows this node ([`Model::knows_node`]): the counting rule
    /// applies ([`AgentState::counts`]).
    pub(super) node_known: bool,
    /// Since when the model's NetworkPolicy set is in use (kept while new models bring the
    /// same set): the enforcement check's timing rule.
    pub(super) policies_since: Option<Timestamp>,
    /// This node's enforcement state as seen from traffic.
    pub(super) enforcement: Enforcement,
    /// Metric series per workload pair.
    pub(super) series: SeriesCache,
    /// Peers of the flows seen while no model is loaded.
    pub(super) unattributed: Peers,
    /// DNS names of the pods' destinations and the rotation watch ([`super::dns`]).
    pub(super) dns: DnsState,
    /// Workload pairs whose unenforced flows were logged.
    pub(super) unenforced: UnenforcedLog,
}

impl Flows {
    /// Nothing seen yet, no model.
    pub(super) fn new(max_flows: usize, dns_grace: std::time::Duration) -> Flows {
        Flows {
            store: FlowStore::new(max_flows),
            model: None,
            node_known: false,
            policies_since: None,
            enforcement: Enforcement::Unknown,
            series: SeriesCache::default(),
            unattributed: Peers::new(0),
            dns: DnsState::new(dns_grace),
            unenforced: UnenforcedLog::default(),
        }
    }
}

impl AgentState {
    /// The flows matching `query` (`/api/v1/flows`).
    pub fn flows(&self, query: &FlowQuery) -> Vec<ObservedFlow> {
        let fl = self.lock_flows();
        fl.store.query(query, fl.model.as_deref())
    }

    /// Attributes, judges and records one datapath update.
    pub fn on_update(&self, u: &FlowUpdate) {
        let mut guard = self.lock_flows();
        let fl = &mut *guard;
        let delta_packets = u.delta_packets.sent + u.delta_packets.received;
        let delta_bytes = u.delta_bytes.sent + u.delta_bytes.received;
        let id = FlowId::of(&u.record);
        if !fl.store.contains(&id) && self.join_backend_leg(fl, &u.record) {
            return;
        }
        let known = !u.new && fl.store.update(&u.record, u.ended);
        if !known {
            let returning = if u.new {
                None
            } else {
                fl.store.take_evicted(&id)
            };
            let mut flow = self.stored(fl, &u.record);
            match returning {
                // A flow the store had to evict while it was active comes back: counted once,
                // and here only if it was counted here before; unenforced once.
                Some(evicted) => {
                    flow.counted = evicted.counted;
                    flow.unenforced = evicted.unenforced;
                    self.record_counters(
                        &mut fl.series,
                        &flow,
                        id.protocol,
                        delta_packets,
                        delta_bytes,
                    );
                }
                // One metrics call for the new flow and its first counters.
                None => self.record_new(
                    &mut fl.series,
                    fl.model.is_some(),
                    &flow,
                    id.protocol,
                    (delta_packets, delta_bytes),
                ),
            }
            fl.store.insert(id, flow, u.ended);
        } else if let Some(f) = fl.store.get(&id) {
            self.record_counters(&mut fl.series, f, id.protocol, delta_packets, delta_bytes);
        }
        self.check_enforcement(fl, &id, u.opened);
    }

    /// Adds the packets and bytes of a known flow's update to its series (nothing for a flow
    /// another node's agent counts).
    fn record_counters(
        &self,
        series: &mut SeriesCache,
        f: &StoredFlow,
        protocol: Protocol,
        packets: u64,
        bytes: u64,
    ) {
        if !f.counted {
            return;
        }
        let verdict = model::overall_label(f.verdict().as_ref());
        series.record_flow(
            &self.metrics,
            &f.peers,
            f.dst_port,
            protocol,
            false,
            packets,
            bytes,
            verdict,
        );
    }

    /// Whether `r` is the backend leg of a Service connection whose client leg is held
    /// ([`super::nat`]). Its packets are those of the client leg, counted there; the first
    /// time, the client leg is re-attributed to the backend pod the node's DNAT chose.
    fn join_backend_leg(&self, fl: &mut Flows, r: &FlowRecord) -> bool {
        let Some(m) = fl.model.clone() else {
            return false;
        };
        let Some(leg) = fl
            .store
            .backend_leg(r, |svc, addr| m.is_service_backend(svc, addr))
        else {
            return false;
        };
        if leg.first
            && let Some(client) = fl.store.get(&leg.client_leg)
        {
            let id = leg.client_leg;
            let mut record = FlowRecord::new(id.protocol, id.src.0, id.dst.0, client.dst_port);
            record.src = Endpoint::bare(id.src.0, client.src_port);
            record.first_seen = client.first_seen();
            record.last_seen = client.last_seen();
            let was_counted = client.counted;
            let (packets, bytes) = (
                client.packets().unwrap_or_default(),
                client.bytes().unwrap_or_default(),
            );
            let peers = m.attribute_with_backend(&record, leg.backend.0);
            let counted = self.counts(&peers, true, fl.node_known);
            let verdicts = m.judge(&record, &peers);
            let judged = Some(Judged::Compact(verdicts));
            if let Some(f) = fl.store.rebind(&id, peers, judged, counted)
                && f.counted
                && !was_counted
            {
                // Left to the backend's node while the backend was unknown (the initiator is
                // not a pod): the backend is this node's, so the flow is counted here, with
                // the packets it carried so far.
                self.record_new(
                    &mut fl.series,
                    true,
                    f,
                    id.protocol,
                    (packets.sent + packets.received, bytes.sent + bytes.received),
                );
            }
            // Its ingress side is known now (whether the datapath saw it open, from its own
            // updates).
            self.check_enforcement(fl, &id, false);
        }
        true
    }

    /// Whether this agent counts a flow attributed as `peers` by the current model in its
    /// metrics: the cluster-wide rule of [`Attributed::counted_on`] for this node, or always
    /// when there is no model or the inventory does not know the node's name (`--node-name`,
    /// else the host name; `node_known`: [`Flows::node_known`]).
    fn counts(&self, peers: &Attributed, backend_known: bool, node_known: bool) -> bool {
        match &self.node {
            Some(node) if node_known => peers.counted_on(node, backend_known),
            _ => true,
        }
    }

    /// The compact, attributed and judged form of a new flow's record, with the DNS names
    /// its client received for the destination.
    fn stored(&self, fl: &mut Flows, r: &FlowRecord) -> StoredFlow {
        let node = fl.store.node(r.node.as_deref());
        let mut f = match &fl.model {
            Some(m) => {
                let peers = m.attribute(r);
                let verdicts = m.judge(r, &peers);
                let counted = self.counts(&peers, false, fl.node_known);
                let mut f = StoredFlow::new(r, peers, Some(Judged::Compact(verdicts)), node);
                f.counted = counted;
                f
            }
            None => {
                let p = &mut fl.unattributed;
                let peers = Attributed::new(
                    p.unshared(&r.src),
                    p.unshared(&r.dst),
                    r.dst.service.clone().map(Arc::new),
                );
                StoredFlow::new(r, peers, None, node)
            }
        };
        f.dns = fl.dns.flow_dns(r.src.ip, r.dst.ip);
        f
    }

    /// Counts a new flow (`flows_total`, its first packets and bytes, verdict and staged
    /// series; `attributed`: a model judged it, so drift detection sees it); nothing for a
    /// flow another node's agent counts.
    fn record_new(
        &self,
        series: &mut SeriesCache,
        attributed: bool,
        f: &StoredFlow,
        protocol: Protocol,
        (delta_packets, delta_bytes): (u64, u64),
    ) {
        if !f.counted {
            return;
        }
        if attributed {
            self.observe_drift(series, f, protocol);
        }
        let verdicts = f.verdicts.as_ref().map(|v| (v.verdict(), v.staged()));
        let verdict = model::overall_label(verdicts.as_ref().map(|(live, _)| live));
        let m = &self.metrics;
        series.record_flow(
            m,
            &f.peers,
            f.dst_port,
            protocol,
            true,
            delta_packets,
            delta_bytes,
            verdict,
        );
        let Some((live, staged)) = verdicts else {
            return;
        };
        let (src, dst) = (&f.peers.src, &f.peers.dst);
        if model::side_is_pod(live.egress.reason) && src.pod.is_some() {
            let label = model::side_label(live.egress.result);
            series.record_verdict(m, src, Direction::Egress, label);
        }
        if model::side_is_pod(live.ingress.reason) && dst.pod.is_some() {
            let label = model::side_label(live.ingress.result);
            series.record_verdict(m, dst, Direction::Ingress, label);
        }
        if let Some(s) = &staged {
            series.record_staged(
                m,
                &f.peers,
                f.dst_port,
                protocol,
                model::overall_label(Some(s)),
            );
        }
    }

    /// Joins kernel drops to their flow (creating the flow when the datapath did not see it)
    /// and records them, naming the isolating policy when the flow is denied.
    pub(crate) fn on_drop(&self, d: &DropSample) {
        let mut guard = self.lock_flows();
        let fl = &mut *guard;
        let probe = FlowId {
            protocol: d.protocol,
            src: (d.src, d.src_port),
            dst: (d.dst, d.dst_port),
        };
        let id = match fl.store.find_unoriented(&probe) {
            Some(id) => id,
            // A drop of a flow the datapath never saw is kept only when it involves a pod of
            // this node: the tracepoint sees the whole host, including traffic that is none
            // of this agent's business.
            None if !self.is_local(fl, d.src) && !self.is_local(fl, d.dst) => return,
            None => {
                let mut r = FlowRecord::new(d.protocol, d.src, d.dst, None);
                let ports = d.protocol.has_ports();
                r.src = Endpoint::bare(d.src, ports.then_some(d.src_port));
                r.dst = Endpoint::bare(d.dst, ports.then_some(d.dst_port));
                r.first_seen = Some(Timestamp::now());
                r.last_seen = r.first_seen;
                r.node = self.node.clone();
                let flow = self.stored(fl, &r);
                let id = FlowId::of(&r);
                // Counted in `flows_total` only if this node counts it (the drop itself is
                // counted below in any case: this node's kernel dropped it).
                let attributed = fl.model.is_some();
                self.record_new(&mut fl.series, attributed, &flow, r.protocol, (0, 0));
                fl.store.insert(id, flow, false);
                id
            }
        };
        let Some(f) = fl.store.get(&id) else {
            return;
        };
        let explained = match f.verdict() {
            // Only a denied flow names a policy: explain it then.
            Some(v) if !v.allowed => f.explained(&id, fl.model.as_deref(), &mut Default::default()),
            _ => None,
        };
        let policy = model::drop_policy(explained.as_ref().map(|v| &v.verdict));
        // This kernel dropped a flow the policies deny, on a side this node enforces: evidence
        // that it does (a filter's drop, not a closed port's or the reverse-path filter's).
        if let Some(v) = f.verdict().filter(|v| !v.allowed)
            && !NOT_POLICY_DROPS.contains(&d.reason.as_str())
            && !self
                .sides_here(f, Sides::denying(&v), fl.node_known)
                .is_empty()
        {
            self.note_enforcement(&mut fl.enforcement, Enforcement::Enforced);
        }
        let labels: FlowLabels = fl
            .series
            .labels(&self.metrics, &f.peers, f.dst_port, id.protocol);
        self.metrics
            .record_drop_labelled(labels, &d.reason, policy.as_deref(), d.packets);
        let label = policy.unwrap_or_else(|| "unknown".to_owned());
        fl.store.add_drops(&id, &d.reason, &label, d.packets);
    }

    fn is_local(&self, fl: &Flows, ip: std::net::IpAddr) -> bool {
        match (&fl.model, &self.node) {
            (Some(m), Some(node)) => m.is_local_pod_ip(node, ip),
            _ => false,
        }
    }

    /// Forgets the ended flows older than `flowRetention`.
    pub(super) fn expire(&self) {
        let cutoff = Timestamp::now()
            .checked_sub(self.config.flow_retention.get())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        self.lock_flows().store.expire(cutoff);
    }

    /// The flows of the store with the final datapath records folded in (shutdown output):
    /// exactly what `/api/v1/flows` serves then. Each final record goes the way of a datapath
    /// update (an ended one without new counters): a Service connection's backend leg joins
    /// its client leg (reported once, to the Service), a known flow takes its last counters
    /// and state, a flow the store no longer held (evicted while active, or expired) comes back
    /// as it would on an update. Drop-only flows are the store's like any other.
    pub(super) fn final_flows(&self, records: Vec<FlowRecord>) -> Vec<ObservedFlow> {
        let mut records = records;
        records.sort_by_key(|r| r.first_seen);
        for record in records {
            self.on_update(&FlowUpdate {
                record,
                new: false,
                delta_packets: Directional::default(),
                delta_bytes: Directional::default(),
                ended: true,
                opened: false,
            });
        }
        self.flows(&FlowQuery::default())
    }

    /// The current model, if an inventory is loaded.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.lock_flows().model.clone()
    }

    /// Installs a new model (new flows are judged with it). The flows the previous model
    /// judged get their explained verdicts from it first (they keep their verdict).
    pub fn set_model(&self, model: Arc<Model>) {
        self.set_model_at(model, Timestamp::now());
    }

    /// [`AgentState::set_model`] at time `now`: when the model's NetworkPolicy set differs
    /// from the previous model's ([`Model::policy_fingerprint`]), or there was none, the set
    /// is in use from `now` (the enforcement check's timing rule).
    pub(crate) fn set_model_at(&self, model: Arc<Model>, now: Timestamp) {
        self.metrics.set_unprotected(
            model
                .unprotected(self.node.as_deref())
                .iter()
                .map(|(ns, dir, n)| (ns.as_str(), *dir, *n)),
        );
        let node_known = self.node.as_deref().is_some_and(|n| model.knows_node(n));
        let old = {
            // One lock: a compact verdict is always the current model's, and new flows are
            // counted by the rule of the model that attributed them.
            let mut guard = self.lock_flows();
            let fl = &mut *guard;
            if let Some(old) = &fl.model {
                fl.store.explain_all(old);
            }
            let same_policies = fl
                .model
                .as_ref()
                .is_some_and(|o| o.policy_fingerprint() == model.policy_fingerprint());
            if !same_policies || fl.policies_since.is_none() {
                fl.policies_since = Some(now);
                let grace = self.config.enforcement_grace.get();
                tracing::info!(
                    policies = model.inventory.network_policies.len(),
                    "NetworkPolicy set in use; the enforcement check judges flows first seen from {} on (enforcementGrace {grace:#})",
                    now.checked_add(grace).unwrap_or(now)
                );
            }
            fl.node_known = node_known;
            fl.model.replace(Arc::clone(&model))
        };
        // Freed outside the lock.
        drop(old);
        // After the model is in use: a reader seeing the new counts gets the new verdicts.
        self.metrics.set_inventory_objects(&model.inventory);
        self.set_inventory_ready();
        // Building a model (and the explanations above) frees much more than it keeps.
        crate::host::release_free_memory();
    }
}
