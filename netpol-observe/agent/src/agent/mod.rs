//! The node agent: datapath updates → attribution → verdicts (policies in force and staged
//! drafts) → metrics and an in-memory store of attributed flows, with kernel drops joined to
//! their flows. [`AgentState`] is what the HTTP API ([`crate::http`]) reads; [`Agent::run`]
//! is the loop that writes it, fed by a [`Capture`] (the kernel's, [`KernelCapture`], or a
//! fake in tests). [`crate::app`] runs both under one cancellation token.
//!
//! Order of start: the configured files (a bad file stops the agent before anything is
//! attached), then the capture (datapath and drop tracepoint) and the inventory; `/readyz`
//! turns 200 once the datapath is attached and the inventory loaded (standalone) or synced
//! (in-cluster).

mod capture;
#[cfg(test)]
mod capture_tests;
#[cfg(test)]
mod cluster_policy_tests;
#[cfg(test)]
mod cluster_tests;
pub mod config;
pub mod dns;
#[cfg(test)]
mod drift_tests;
#[cfg(test)]
mod enforcement_tests;
pub mod model;
pub mod nat;
mod observed;
pub mod peer;
mod series;
pub mod store;
#[cfg(test)]
mod test_kit;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, SystemTime},
};

use jiff::Timestamp;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use capture::{Capture, CaptureEnd, KernelCapture};
pub use config::{AgentConfig, ConfigError, DEFAULT_DROP_REASONS, MetricsSettings};
pub use model::Model;
pub use store::{Evicted, FlowId, FlowQuery, FlowStore, Judged, ObservedFlow, StoredFlow};

use crate::{
    attribution::{AttributionError, Subnets},
    datapath::{Counter, DatapathError, DropSample, DropsError, FlowUpdate},
    flow::{Directional, Endpoint, FlowRecord, FlowState, Protocol},
    inventory::{
        Inventory, InventoryError, NetworkPolicy, Validation, WATCHED_RESOURCES,
        kubeapi::{self, KubeAccess},
        live,
    },
    metrics::{Direction, Enforcement, FlowLabels, Metrics, PeerLabels},
    policy::PolicyError,
    report::Chain,
};
use model::{Attributed, Sides};
use peer::{Peer, Peers};
use series::SeriesCache;

/// What can stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP listener cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The inventory files are unusable at start.
    #[error("inventory")]
    Inventory(#[from] InventoryError),
    /// The staged policies are unusable at start.
    #[error("staged policies {path}")]
    Staged {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<InventoryError>,
    },
    /// A policy does not compile.
    #[error("policies")]
    Policy(#[from] PolicyError),
    /// The subnets file is unusable.
    #[error(transparent)]
    Subnets(#[from] AttributionError),
    /// The datapath failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The drop tracepoint failed.
    #[error(transparent)]
    Drops(#[from] DropsError),
    /// The drift baseline is unusable at start.
    #[error(transparent)]
    Drift(#[from] crate::drift::BaselineError),
}

/// Why the agent is not ready (for `/readyz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Readiness {
    datapath: bool,
    /// A model is installed.
    inventory: bool,
    /// Why the last model could not be built (cleared by the next model).
    inventory_error: Option<String>,
    /// What is wrong with the inventory's source now (API watches failing, a file that does not
    /// load): the model in use may be stale. Cleared when the source works again.
    source_problem: Option<String>,
    /// `source_problem` is a failure (not a first sync in progress).
    source_failed: bool,
}

/// The agent's shared state: what the HTTP API reads and the event loop writes.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    node: Option<String>,
    metrics: Metrics,
    store: Mutex<FlowStore>,
    /// Metric series per workload pair (locked after `store`).
    series: Mutex<SeriesCache>,
    /// Peers of the flows seen while no model is loaded.
    unattributed: Mutex<Peers>,
    model: RwLock<Option<Arc<Model>>>,
    /// The current model's inventory knows `node` ([`Model::knows_node`]): the counting rule
    /// applies ([`AgentState::counts`]). Set with the model, under the store lock.
    node_known: std::sync::atomic::AtomicBool,
    readiness: Mutex<Readiness>,
    evictions_seen: std::sync::atomic::AtomicU64,
    /// Since when the NetworkPolicy set of the current model is in use (set with the model,
    /// under the store lock; kept while new models bring the same set): the enforcement check's
    /// timing rule ([`AgentState::eligible`]).
    policies_since: Mutex<Option<Timestamp>>,
    /// This node's enforcement state as seen from traffic ([`Enforcement`] as `u8`).
    enforcement: std::sync::atomic::AtomicU8,
    /// Workload pairs whose unenforced flows were logged (once each, bounded).
    unenforced_logged: Mutex<UnenforcedLog>,
    /// Drift detection, with `driftBaseline` ([`AgentState::open_drift`]; locked after
    /// `store` and `series`).
    drift: std::sync::OnceLock<Mutex<crate::drift::Drift>>,
    /// DNS names of the pods' destinations and the rotation watch ([`dns`]; locked after
    /// `store`).
    dns: Mutex<dns::DnsState>,
}

/// The workload pairs whose unenforced flows were logged: one warning per pair, at most
/// [`UnenforcedLog::MAX`] pairs (then one line saying the rest are only counted).
#[derive(Debug, Default)]
struct UnenforcedLog {
    pairs: std::collections::HashSet<(Arc<PeerLabels>, Arc<PeerLabels>)>,
    full: bool,
}

impl UnenforcedLog {
    const MAX: usize = 1024;
}

/// Drop reasons that do not come from a filter: such a drop of a denied flow says nothing about
/// the node enforcing policies (UDP to a closed port, the reverse-path filter).
const NOT_POLICY_DROPS: [&str; 2] = ["NO_SOCKET", "IP_RPFILTER"];

/// Whether a flow was delivered to its responder: TCP, the handshake completed (`established`
/// or `closed`, replies seen; not `refused` or `reset`: a CNI rejecting with a RST cannot be
/// told from the server); the other protocols, the responder sent packets back.
fn delivered(protocol: Protocol, state: Option<FlowState>, packets: Option<Directional>) -> bool {
    let replied = packets.is_some_and(|p| p.received > 0);
    match protocol {
        Protocol::Tcp => {
            replied && matches!(state, Some(FlowState::Established | FlowState::Closed))
        }
        _ => replied && state != Some(FlowState::Refused),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AgentState {
    /// A state for `config` (no inventory, nothing attached yet).
    pub fn new(config: AgentConfig) -> AgentState {
        let node = config.node_name.clone().or_else(hostname);
        fix_mmap_threshold();
        AgentState {
            metrics: Metrics::new(config.metrics_config()),
            store: Mutex::new(FlowStore::new(config.max_flows)),
            series: Mutex::new(SeriesCache::default()),
            unattributed: Mutex::new(Peers::new(0)),
            model: RwLock::new(None),
            node_known: std::sync::atomic::AtomicBool::new(false),
            readiness: Mutex::new(Readiness::default()),
            evictions_seen: std::sync::atomic::AtomicU64::new(0),
            policies_since: Mutex::new(None),
            enforcement: std::sync::atomic::AtomicU8::new(Enforcement::Unknown as u8),
            unenforced_logged: Mutex::new(UnenforcedLog::default()),
            drift: std::sync::OnceLock::new(),
            dns: Mutex::new(dns::DnsState::new(config.dns_grace.unsigned_abs())),
            node,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The metrics served on `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The flows matching `query` (`/api/v1/flows`).
    pub fn flows(&self, query: &FlowQuery) -> Vec<ObservedFlow> {
        let store = lock(&self.store);
        store.query(query, self.model().as_deref())
    }

    /// Loads the drift baseline (`driftBaseline`) at time `now`, starting or resuming a
    /// learning period (`driftLearn`): nothing without `driftBaseline`. A bad file is an error
    /// naming `FILE:LINE`. Once per state.
    pub(crate) fn open_drift(&self, now: Timestamp) -> Result<(), AgentError> {
        let Some(path) = &self.config.drift_baseline else {
            return Ok(());
        };
        let drift = crate::drift::Drift::open(path, self.config.drift_learn, now)?;
        let _ = self.drift.set(Mutex::new(drift));
        Ok(())
    }

    /// The `/api/v1/drift` answer (`None`: drift detection is off).
    pub(crate) fn drift_report(&self) -> Option<crate::drift::DriftReport> {
        self.drift.get().map(|d| lock(d).report(Timestamp::now()))
    }

    /// Reloads the drift baseline if its file changed (a bad file: a warning, the baseline in
    /// use is kept), then writes the edges learned since the last write.
    pub(crate) fn poll_drift(&self, now: Timestamp) {
        let Some(d) = self.drift.get() else {
            return;
        };
        let mut d = lock(d);
        if let Some(Err(e)) = d.reload_if_changed(now) {
            tracing::warn!(
                "drift baseline reload failed, keeping the baseline in use: {}",
                Chain(&e)
            );
        }
        d.persist(now);
    }

    /// Writes the edges learned since the last write (at shutdown).
    fn persist_drift(&self, now: Timestamp) {
        if let Some(d) = self.drift.get() {
            lock(d).persist(now);
        }
    }

    /// Judges a new counted flow's edge against the drift baseline: learned, known, or
    /// counted in `drift_flows_total` (logged the first time, bounded). Flows without a model
    /// (unattributed: every peer `unknown`) are not judged.
    fn observe_drift(&self, f: &StoredFlow, protocol: Protocol) {
        let Some(drift) = self.drift.get() else {
            return;
        };
        if self.model().is_none() {
            return;
        }
        let edge = crate::drift::Edge::new(
            &f.peers.src.metric,
            &f.peers.dst.metric,
            f.dst_port,
            protocol,
        );
        let at = f.first_seen().unwrap_or_else(Timestamp::now);
        let mut d = lock(drift);
        let crate::drift::Observed::Drift { kind, first } = d.observe(edge.clone(), at) else {
            return;
        };
        let log = first && d.should_log();
        drop(d);
        let labels = lock(&self.series).labels(&self.metrics, &f.peers, f.dst_port, protocol);
        self.metrics.record_drift(labels, kind);
        if log {
            let port = match edge.port {
                Some(p) => format!("{p}/{protocol}"),
                None => protocol.to_string(),
            };
            tracing::warn!(
                src = %crate::drift::Edge::peer_name(&edge.src),
                dst = %crate::drift::Edge::peer_name(&edge.dst),
                port = %port,
                kind = kind.as_str(),
                "new dependency outside the drift baseline (logged once per edge; every such flow counts in netpol_observe_drift_flows_total)"
            );
        }
    }

    /// The current model, if an inventory is loaded.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.model
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
        {
            // Under the store lock: a compact verdict is always the current model's, and new
            // flows are counted by the rule of the model that attributed them.
            let mut store = lock(&self.store);
            let old = self.model();
            if let Some(old) = &old {
                store.explain_all(old);
            }
            let same_policies = old
                .as_ref()
                .is_some_and(|o| o.policy_fingerprint() == model.policy_fingerprint());
            let mut since = lock(&self.policies_since);
            if !same_policies || since.is_none() {
                *since = Some(now);
                let grace = self.config.enforcement_grace;
                tracing::info!(
                    policies = model.inventory.network_policies.len(),
                    "NetworkPolicy set in use; the enforcement check judges flows first seen from {} on (enforcementGrace {grace:#})",
                    now.checked_add(grace).unwrap_or(now)
                );
            }
            drop(since);
            *self
                .model
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(model);
            self.node_known
                .store(node_known, std::sync::atomic::Ordering::Relaxed);
        }
        // After the model is in use: a reader seeing the new counts gets the new verdicts.
        if let Some(m) = self.model() {
            self.metrics.set_inventory_objects(&m.inventory);
        }
        let mut r = lock(&self.readiness);
        r.inventory = true;
        r.inventory_error = None;
        drop(r);
        // Building a model (and the explanations above) frees much more than it keeps.
        release_free_memory();
    }

    /// `Ok` when ready; else what is missing (`/readyz`).
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let r = lock(&self.readiness);
        let mut missing = Vec::new();
        if !r.datapath {
            missing.push("datapath and drop tracepoint not attached yet".to_owned());
        }
        if !r.inventory && (r.source_problem.is_none() || r.inventory_error.is_some()) {
            missing.push(match &r.inventory_error {
                Some(e) => format!("inventory not loaded: {e}"),
                None => "inventory not synced yet".to_owned(),
            });
        }
        if let Some(p) = &r.source_problem {
            missing.push(p.clone());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    fn set_datapath_ready(&self) {
        lock(&self.readiness).datapath = true;
    }

    fn set_inventory_error(&self, e: String) {
        lock(&self.readiness).inventory_error = Some(e);
    }

    /// Records what is wrong with the inventory's source (`None`: it works; `failing`: an error,
    /// not only a sync in progress), logging changes.
    fn set_source_problem(&self, problem: Option<String>, failing: bool) {
        let mut r = lock(&self.readiness);
        if r.source_problem != problem {
            match &problem {
                Some(p) if failing => tracing::warn!("not ready: {p}"),
                Some(p) => tracing::debug!("not ready: {p}"),
                None if r.source_problem.as_ref().is_some_and(|_| r.source_failed) => {
                    tracing::info!("inventory source healthy again")
                }
                None => tracing::info!("inventory synced"),
            }
            r.source_problem = problem;
            r.source_failed = failing;
        }
    }

    /// Attributes, judges and records one datapath update.
    pub fn on_update(&self, u: &FlowUpdate) {
        let delta_packets = u.delta_packets.sent + u.delta_packets.received;
        let delta_bytes = u.delta_bytes.sent + u.delta_bytes.received;
        let mut store = lock(&self.store);
        let id = FlowId::of(&u.record);
        if !store.contains(&id) && self.join_backend_leg(&mut store, &u.record) {
            return;
        }
        let known = !u.new && store.update(&u.record, u.ended);
        if !known {
            let returning = if u.new { None } else { store.take_evicted(&id) };
            let mut flow = self.stored(&mut store, &u.record);
            match returning {
                // A flow the store had to evict while it was active comes back: counted once,
                // and here only if it was counted here before; unenforced once.
                Some(evicted) => {
                    flow.counted = evicted.counted;
                    flow.unenforced = evicted.unenforced;
                    self.record_counters(&flow, id.protocol, delta_packets, delta_bytes);
                }
                // One metrics call for the new flow and its first counters.
                None => self.record_new(&flow, id.protocol, delta_packets, delta_bytes),
            }
            store.insert(id, flow, u.ended);
        } else if let Some(f) = store.get(&id) {
            self.record_counters(f, id.protocol, delta_packets, delta_bytes);
        }
        self.check_enforcement(&mut store, &id, u.opened);
    }

    /// The enforcement check of flow `id` after a change (`opened`: the datapath saw it open,
    /// [`FlowUpdate::opened`]). A flow the policies in force deny, first seen at least
    /// `enforcementGrace` after their set came in use ([`AgentState::eligible`]), whose
    /// denying side is a pod of this node ([`AgentState::sides_here`]):
    /// - delivered ([`delivered`]; TCP: opened under the datapath's eyes, without drops
    ///   joined) proves that this node does not enforce that side's policies: it is marked
    ///   once, counted in `unenforced_flows_total` with their names, logged once per workload
    ///   pair, and the node's state becomes `not_enforced`;
    /// - ended `attempted` (TCP, SCTP: no answer at all), every denying side being this
    ///   node's, is evidence that it does (`unknown` → `enforced`). UDP and ICMP are not: a
    ///   responder may never answer.
    fn check_enforcement(&self, store: &mut FlowStore, id: &FlowId, opened: bool) {
        let Some(f) = store.get(id) else {
            return;
        };
        if !f.unenforced.is_empty() || f.drops.is_some() {
            return;
        }
        let Some(v) = f.verdict().filter(|v| !v.allowed) else {
            return;
        };
        if opened && !f.opened {
            store.mark_opened(id);
        }
        let Some(f) = store.get(id) else {
            return;
        };
        let denying = Sides::denying(&v);
        let here = self.sides_here(f, denying);
        if here.is_empty() {
            return;
        }
        let was_delivered = delivered(id.protocol, f.state, f.packets());
        let attempted = f.state == Some(FlowState::Attempted)
            && matches!(id.protocol, Protocol::Tcp | Protocol::Sctp)
            && store.ended(id);
        if !(was_delivered || attempted) || !self.eligible(f.first_seen()) {
            return;
        }
        // TCP picked up mid-stream was opened before the datapath watched (before the agent
        // started, or before its table entry idled out): perhaps before the policies came in
        // force, and the CNI's conntrack lets such connections finish.
        if id.protocol == Protocol::Tcp && !f.opened {
            return;
        }
        if attempted {
            if here == denying {
                self.note_enforcement(Enforcement::Enforced);
            }
            return;
        }
        let model = self.model();
        let explained = f.explained(id, model.as_deref(), &mut Default::default());
        let policy = explained.and_then(|v| model::unenforced_policy(&v.verdict, here));
        let labels = lock(&self.series).labels(&self.metrics, &f.peers, f.dst_port, id.protocol);
        let (src, dst) = (Arc::clone(&f.peers.src), Arc::clone(&f.peers.dst));
        if !store.mark_unenforced(id, here) {
            return;
        }
        self.metrics
            .record_unenforced(labels.clone(), policy.as_deref());
        self.note_enforcement(Enforcement::NotEnforced);
        self.log_unenforced(&labels, &src, &dst, id, policy.as_deref());
    }

    /// The sides of `denying` whose pod is on this node (all of them when the inventory does
    /// not know this node: one agent then sees everything). The ingress side of a flow to a
    /// Service is known only once the backend the DNAT chose is ([`StoredFlow::backend_known`]):
    /// until then the destination is the Service's first backend, perhaps another node's pod.
    fn sides_here(&self, f: &StoredFlow, denying: Sides) -> Sides {
        let node = match &self.node {
            Some(n) if self.node_known.load(std::sync::atomic::Ordering::Relaxed) => Some(n),
            _ => None,
        };
        let here = |p: &Peer| node.is_none_or(|n| p.pod_node.as_deref() == Some(n.as_str()));
        let mut s = Sides::NONE;
        if denying.egress() && here(&f.peers.src) {
            s = s.union(Sides::EGRESS);
        }
        if denying.ingress() && (f.peers.service.is_none() || f.backend_known) && here(&f.peers.dst)
        {
            s = s.union(Sides::INGRESS);
        }
        s
    }

    /// The timing rule of the enforcement check: a flow counts only when first seen at least
    /// `enforcementGrace` after the NetworkPolicy set in force came in use here. A policy
    /// applied mid-flow, a connection the CNI lets finish, the CNI's delay in programming a
    /// change: all are flows first seen before that.
    fn eligible(&self, first_seen: Option<Timestamp>) -> bool {
        let (Some(t), Some(since)) = (first_seen, *lock(&self.policies_since)) else {
            return false;
        };
        since
            .checked_add(self.config.enforcement_grace)
            .is_ok_and(|start| t >= start)
    }

    /// Moves this node's enforcement state: `not_enforced` once a denied flow was delivered
    /// (for the agent's lifetime), `enforced` from `unknown` on evidence of enforcement.
    fn note_enforcement(&self, seen: Enforcement) {
        use std::sync::atomic::Ordering;
        let prev = self.enforcement.fetch_max(seen as u8, Ordering::Relaxed);
        if prev < seen as u8 {
            self.metrics.set_enforcement(seen);
            match seen {
                Enforcement::NotEnforced => tracing::warn!(
                    "this node delivers flows its NetworkPolicies deny: enforcement is missing (netpol_observe_policy_enforcement{{state=\"not_enforced\"}})"
                ),
                _ => {
                    tracing::info!(
                        "this node enforces NetworkPolicies: a denied flow was dropped or never answered"
                    )
                }
            }
        }
    }

    /// The enforcement state of this node ([`Metrics::set_enforcement`]).
    pub fn enforcement(&self) -> Enforcement {
        match self.enforcement.load(std::sync::atomic::Ordering::Relaxed) {
            2 => Enforcement::NotEnforced,
            1 => Enforcement::Enforced,
            _ => Enforcement::Unknown,
        }
    }

    /// Logs an unenforced flow, once per workload pair (at most [`UnenforcedLog::MAX`] pairs).
    fn log_unenforced(
        &self,
        labels: &FlowLabels,
        src: &Peer,
        dst: &Peer,
        id: &FlowId,
        policy: Option<&str>,
    ) {
        let mut logged = lock(&self.unenforced_logged);
        let pair = (Arc::clone(&labels.src), Arc::clone(&labels.dst));
        if logged.pairs.contains(&pair) {
            return;
        }
        if logged.pairs.len() >= UnenforcedLog::MAX {
            if !logged.full {
                logged.full = true;
                tracing::warn!(
                    "unenforced flows of more than {} workload pairs: the others are only counted in netpol_observe_unenforced_flows_total",
                    UnenforcedLog::MAX
                );
            }
            return;
        }
        logged.pairs.insert(pair);
        let name = |p: &Peer, l: &PeerLabels| match &p.pod {
            Some(pod) => format!("{}/{} (pod {pod})", l.namespace, l.workload),
            None => l.workload.clone(),
        };
        let port = id.dst.1;
        tracing::warn!(
            src = %name(src, &labels.src),
            dst = %name(dst, &labels.dst),
            port = %format!("{port}/{}", id.protocol),
            policy = policy.unwrap_or("unknown"),
            "NetworkPolicy not enforced on this node: a flow the policy denies was delivered (logged once per workload pair; every such flow counts in netpol_observe_unenforced_flows_total)"
        );
    }

    /// Adds the packets and bytes of a known flow's update to its series (nothing for a flow
    /// another node's agent counts).
    fn record_counters(&self, f: &StoredFlow, protocol: Protocol, packets: u64, bytes: u64) {
        if !f.counted {
            return;
        }
        let verdict = model::overall_label(f.verdict().as_ref());
        lock(&self.series).record_flow(
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
    /// ([`nat`]). Its packets are those of the client leg, counted there; the first time, the
    /// client leg is re-attributed to the backend pod the node's DNAT chose.
    fn join_backend_leg(&self, store: &mut FlowStore, r: &FlowRecord) -> bool {
        let Some(m) = self.model() else {
            return false;
        };
        let Some(leg) = store.backend_leg(r, |svc, addr| m.is_service_backend(svc, addr)) else {
            return false;
        };
        if leg.first
            && let Some(client) = store.get(&leg.client_leg)
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
            let counted = self.counts(&peers, true);
            let verdicts = m.judge(&record, &peers);
            let judged = Some(Judged::Compact(verdicts));
            if let Some(f) = store.rebind(&id, peers, judged, counted)
                && f.counted
                && !was_counted
            {
                // Left to the backend's node while the backend was unknown (the initiator is
                // not a pod): the backend is this node's, so the flow is counted here, with
                // the packets it carried so far.
                self.record_new(
                    f,
                    id.protocol,
                    packets.sent + packets.received,
                    bytes.sent + bytes.received,
                );
            }
            // Its ingress side is known now (whether the datapath saw it open, from its own
            // updates).
            self.check_enforcement(store, &id, false);
        }
        true
    }

    /// Whether this agent counts a flow attributed as `peers` by the current model in its
    /// metrics: the cluster-wide rule of [`Attributed::counted_on`] for this node, or always
    /// when there is no model or the inventory does not know the node's name (`--node-name`,
    /// else the host name).
    fn counts(&self, peers: &Attributed, backend_known: bool) -> bool {
        match &self.node {
            Some(node) if self.node_known.load(std::sync::atomic::Ordering::Relaxed) => {
                peers.counted_on(node, backend_known)
            }
            _ => true,
        }
    }

    /// The compact, attributed and judged form of a new flow's record.
    fn stored(&self, store: &mut FlowStore, r: &FlowRecord) -> StoredFlow {
        let mut f = self.stored_peers(store, r);
        f.dns = self.flow_dns(r.src.ip, r.dst.ip);
        f
    }

    /// [`AgentState::stored`] without the DNS names.
    fn stored_peers(&self, store: &mut FlowStore, r: &FlowRecord) -> StoredFlow {
        let node = store.node(r.node.as_deref());
        match self.model() {
            Some(m) => {
                let peers = m.attribute(r);
                let verdicts = m.judge(r, &peers);
                let counted = self.counts(&peers, false);
                let mut f = StoredFlow::new(r, peers, Some(Judged::Compact(verdicts)), node);
                f.counted = counted;
                f
            }
            None => {
                let mut p = lock(&self.unattributed);
                let peers = Attributed::new(
                    p.unshared(&r.src),
                    p.unshared(&r.dst),
                    r.dst.service.clone().map(Arc::new),
                );
                StoredFlow::new(r, peers, None, node)
            }
        }
    }

    /// Counts a new flow (`flows_total`, its first packets and bytes, verdict and staged
    /// series); nothing for a flow another node's agent counts.
    fn record_new(&self, f: &StoredFlow, protocol: Protocol, delta_packets: u64, delta_bytes: u64) {
        if !f.counted {
            return;
        }
        self.observe_drift(f, protocol);
        let verdicts = f.verdicts.as_ref().map(|v| (v.verdict(), v.staged()));
        let verdict = model::overall_label(verdicts.as_ref().map(|(live, _)| live));
        let mut series = lock(&self.series);
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
        let mut store = lock(&self.store);
        let probe = FlowId {
            protocol: d.protocol,
            src: (d.src, d.src_port),
            dst: (d.dst, d.dst_port),
        };
        let id = match store.find_unoriented(&probe) {
            Some(id) => id,
            // A drop of a flow the datapath never saw is kept only when it involves a pod of
            // this node: the tracepoint sees the whole host, including traffic that is none
            // of this agent's business.
            None if !self.is_local(d.src) && !self.is_local(d.dst) => return,
            None => {
                let mut r = FlowRecord::new(d.protocol, d.src, d.dst, None);
                let ports = d.protocol.has_ports();
                r.src = Endpoint::bare(d.src, ports.then_some(d.src_port));
                r.dst = Endpoint::bare(d.dst, ports.then_some(d.dst_port));
                r.first_seen = Some(Timestamp::now());
                r.last_seen = r.first_seen;
                r.node = self.node.clone();
                let flow = self.stored(&mut store, &r);
                let id = FlowId::of(&r);
                // Counted in `flows_total` only if this node counts it (the drop itself is
                // counted below in any case: this node's kernel dropped it).
                self.record_new(&flow, r.protocol, 0, 0);
                store.insert(id, flow, false);
                id
            }
        };
        let Some(f) = store.get(&id) else {
            return;
        };
        let explained = match f.verdict() {
            // Only a denied flow names a policy: explain it then.
            Some(v) if !v.allowed => {
                f.explained(&id, self.model().as_deref(), &mut Default::default())
            }
            _ => None,
        };
        let policy = model::drop_policy(explained.as_ref().map(|v| &v.verdict));
        // This kernel dropped a flow the policies deny, on a side this node enforces: evidence
        // that it does (a filter's drop, not a closed port's or the reverse-path filter's).
        if let Some(v) = f.verdict().filter(|v| !v.allowed)
            && !NOT_POLICY_DROPS.contains(&d.reason.as_str())
            && !self.sides_here(f, Sides::denying(&v)).is_empty()
        {
            self.note_enforcement(Enforcement::Enforced);
        }
        let labels: FlowLabels =
            lock(&self.series).labels(&self.metrics, &f.peers, f.dst_port, id.protocol);
        self.metrics
            .record_drop_labelled(labels, &d.reason, policy.as_deref(), d.packets);
        let label = policy.unwrap_or_else(|| "unknown".to_owned());
        store.add_drops(&id, &d.reason, &label, d.packets);
    }

    fn is_local(&self, ip: std::net::IpAddr) -> bool {
        match (self.model(), &self.node) {
            (Some(m), Some(node)) => m.is_local_pod_ip(node, ip),
            _ => false,
        }
    }

    fn expire(&self) {
        let cutoff = Timestamp::now()
            .checked_sub(self.config.flow_retention)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        lock(&self.store).expire(cutoff);
    }

    /// The flows of the store with the final datapath records folded in (shutdown output):
    /// exactly what `/api/v1/flows` serves then. Each final record goes the way of a datapath
    /// update (an ended one without new counters): a Service connection's backend leg joins
    /// its client leg (reported once, to the Service), a known flow takes its last counters
    /// and state, a flow the store no longer held (evicted while active, or expired) comes back
    /// as it would on an update. Drop-only flows are the store's like any other.
    fn final_flows(&self, records: Vec<FlowRecord>) -> Vec<ObservedFlow> {
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
}

/// Returns the allocator's free memory to the operating system (glibc keeps freed memory in
/// its arenas; a model build frees tens of MiB of temporaries).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's mmap threshold at its default (128 KiB). Left dynamic, glibc raises it to
/// the size of the largest mmapped block freed (up to 32 MiB): after a model build has freed
/// its large temporaries, the agent's growing tables (store slab, caches, metric families)
/// then come from the heap, and each table outgrown by doubling stays resident as free
/// memory. Fixed, every block of 128 KiB or more is its own mapping, returned to the system
/// when freed (−3 MiB at 10k flows in `cargo xtask bench agent`).
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only changes a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A cheap fingerprint of a file or directory (names, sizes, modification times) to notice
/// changes.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (p.to_owned(), m.len(), m.modified().ok()))
            .unwrap_or_else(|_| (p.to_owned(), 0, None))
    };
    let mut out = vec![stat(path)];
    if let Ok(dir) = std::fs::read_dir(path) {
        let mut entries: Vec<_> = dir.flatten().map(|e| stat(&e.path())).collect();
        entries.sort();
        out.extend(entries);
    }
    out
}

/// Loads inventory files as `validation` says, logging its warnings.
fn load_inventory(path: &Path, validation: Validation) -> Result<Inventory, InventoryError> {
    let loaded = Inventory::load(path, validation)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.inventory)
}

fn load_staged(path: &Path, validation: Validation) -> Result<Vec<NetworkPolicy>, AgentError> {
    load_inventory(path, validation)
        .map(|i| i.network_policies)
        .map_err(|source| AgentError::Staged {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// Where the inventory comes from.
enum Source {
    /// Standalone: files, polled for changes.
    Files(PathBuf),
    /// In-cluster: the live inventory.
    Live(live::LiveInventory),
    /// Neither could be set up: flows stay unattributed.
    None,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Runs the agent on `state` until `stop` is cancelled: loads the configured files,
    /// starts the capture with `start` (after the files: a bad file stops the agent before
    /// anything is attached), follows the inventory and feeds every update to `state`. On stop:
    /// the capture's last sweep, and the flows seen (attributed, with verdicts) are returned.
    // Long: one `select!` loop over the agent's event sources, whose branches share its state.
    pub async fn run<C: Capture>(
        state: Arc<AgentState>,
        start: impl AsyncFnOnce(&AgentConfig) -> Result<C, AgentError>,
        stop: CancellationToken,
    ) -> Result<Vec<ObservedFlow>, AgentError> {
        let config = state.config().clone();
        let Files {
            subnets,
            staged,
            inventory,
            mut source,
        } = load_files(&state, &config)?;

        // The drop tracepoint starts with the datapath: ready only once drops are traced
        // too, so no early drop goes unseen.
        let mut dp = start(&config).await?;
        let mut updates = dp.subscribe();
        let mut dns_answers = dp.subscribe_dns();
        let names = dp.interfaces();
        // `cargo xtask bench datapath` waits for this line.
        tracing::info!(interfaces = ?names, "datapath attached");
        state.metrics.set_attached_interfaces(names.len() as u64);
        state.set_datapath_ready();

        if config.inventory.is_none() {
            source = connect_live(&state, &config).await;
        }
        if let Some(m) = state.model()
            && let Some(node) = &state.node
        {
            set_local(&dp, &m, node);
        }

        let mut live_snapshots = match &source {
            Source::Live(l) => Some(l.subscribe()),
            _ => None,
        };
        let mut live_state = match &source {
            Source::Live(l) => Some(l.subscribe_state()),
            _ => None,
        };
        let mut prints = Fingerprints::new(&source, &config);
        // Loading files and building models can take seconds at cluster scale: a thread of
        // its own does it, so flows keep being recorded and a signal is answered at once.
        let (rebuilt_tx, mut rebuilt) = tokio::sync::mpsc::unbounded_channel();
        let rebuild = spawn_rebuilder(subnets, config.validate, inventory, staged, rebuilt_tx);

        let mut poll = tokio::time::interval(config.inventory_poll_interval.unsigned_abs());
        let mut health = tokio::time::interval(config.sweep_interval.unsigned_abs());
        let mut drop_tick = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut poll, &mut health, &mut drop_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            // A change of the file source's health: Some(None) healthy again, Some(Some(why)).
            let mut problem: Option<Option<String>> = None;
            tokio::select! {
                () = stop.cancelled() => break,
                u = updates.recv() => match u {
                    Ok(u) => {
                        // The answers the pods received before this flow began name it.
                        drain_dns(&state, &mut dns_answers);
                        state.on_update(&u);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "flow updates lagged; their flows are picked up at the next sweep");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                a = dns_answers.recv() => match a {
                    Ok(a) => state.on_dns(&a),
                    Err(broadcast::error::RecvError::Lagged(n)) => state.metrics.dns().lost(n),
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = drop_tick.tick() => read_drops(&state, &mut dp),
                _ = health.tick() => {
                    report_health(&state, &dp);
                    state.expire();
                    state.expire_dns();
                }
                _ = poll.tick() => {
                    prints.reload_changed(&source, &config, &rebuild);
                    state.poll_drift(Timestamp::now());
                }
                Some(()) = changed(&mut live_snapshots) => {
                    if let Some(rx) = &live_snapshots
                        && live_state.as_ref().is_some_and(|s| s.borrow().synced)
                    {
                        let _ = rebuild.send(Rebuild::Snapshot(rx.borrow().clone()));
                    }
                }
                Some(()) = changed(&mut live_state) => {
                    if let Some(rx) = &live_state {
                        let s = rx.borrow().clone();
                        on_live_state(&state, &s, &source, &rebuild);
                    }
                }
                Some(r) = rebuilt.recv() => problem = install(&state, &dp, r),
            }
            if let Some(p) = problem {
                set_source_health(&state, p);
            }
        }
        stop_capture(&state, dp, updates).await
    }
}

/// The file source's health changed: `None` healthy again, `Some(why)` failing.
fn set_source_health(state: &AgentState, problem: Option<String>) {
    for (group, resource) in WATCHED_RESOURCES {
        state
            .metrics
            .set_inventory_synced(&resource_label(group, resource), problem.is_none());
    }
    let failing = problem.is_some();
    state.set_source_problem(problem, failing);
}

/// On stop: the capture's last sweep and detach; the updates still queued and the last
/// drops are recorded, the drift baseline is saved, and the flows seen are returned.
async fn stop_capture<C: Capture>(
    state: &AgentState,
    dp: C,
    mut updates: broadcast::Receiver<FlowUpdate>,
) -> Result<Vec<ObservedFlow>, AgentError> {
    tracing::info!("stopping: final sweep and detach");
    let end = dp.shutdown().await?;
    while let Ok(u) = updates.try_recv() {
        state.on_update(&u);
    }
    for d in &end.drops {
        state.on_drop(d);
    }
    state.metrics.set_attached_interfaces(0);
    state.persist_drift(Timestamp::now());
    Ok(state.final_flows(end.records))
}

/// The fingerprints of the inventory files (standalone) and of the staged policies, polled
/// for changes.
struct Fingerprints {
    inventory: Vec<(PathBuf, u64, Option<SystemTime>)>,
    staged: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

impl Fingerprints {
    fn new(source: &Source, config: &AgentConfig) -> Self {
        Fingerprints {
            inventory: match source {
                Source::Files(p) => fingerprint(p),
                _ => Vec::new(),
            },
            staged: config
                .staged_policies
                .as_deref()
                .map(fingerprint)
                .unwrap_or_default(),
        }
    }

    /// Asks `rebuild` to load again the files whose fingerprint changed.
    fn reload_changed(
        &mut self,
        source: &Source,
        config: &AgentConfig,
        rebuild: &std::sync::mpsc::Sender<Rebuild>,
    ) {
        if let Source::Files(p) = source {
            let now = fingerprint(p);
            if now != self.inventory {
                self.inventory = now;
                let _ = rebuild.send(Rebuild::LoadInventory(p.clone()));
            }
        }
        if let Some(p) = &config.staged_policies {
            let now = fingerprint(p);
            if now != self.staged {
                self.staged = now;
                let _ = rebuild.send(Rebuild::LoadStaged(p.clone()));
            }
        }
    }
}

/// What the agent reads from files at start.
struct Files {
    subnets: Subnets,
    staged: Option<Vec<NetworkPolicy>>,
    /// The inventory files' objects (standalone).
    inventory: Option<Arc<Inventory>>,
    source: Source,
}

/// Loads subnets, staged policies, the drift baseline and, standalone, the inventory files,
/// and installs the first model: a bad file is an error before anything is attached.
fn load_files(state: &AgentState, config: &AgentConfig) -> Result<Files, AgentError> {
    let subnets = match &config.subnets {
        Some(p) => Subnets::from_path(p)?,
        None => Subnets::default(),
    };
    let staged = match &config.staged_policies {
        Some(p) => Some(load_staged(p, config.validate)?),
        None => None,
    };
    state.open_drift(Timestamp::now())?;
    let Some(path) = &config.inventory else {
        return Ok(Files {
            subnets,
            staged,
            inventory: None,
            source: Source::None,
        });
    };
    let inv = Arc::new(load_inventory(path, config.validate)?);
    for (group, resource) in WATCHED_RESOURCES {
        state
            .metrics
            .set_inventory_synced(&resource_label(group, resource), true);
    }
    let model = Model::new(Arc::clone(&inv), &subnets, staged.as_deref())?;
    state.set_model(Arc::new(model));
    Ok(Files {
        subnets,
        staged,
        inventory: Some(inv),
        source: Source::Files(path.clone()),
    })
}

/// In-cluster: the live inventory from the API server, or none (flows stay unattributed,
/// `/readyz` says why).
async fn connect_live(state: &AgentState, config: &AgentConfig) -> Source {
    let access = KubeAccess::infer(config.kubeconfig.clone());
    match kubeapi::client(&access).await {
        Ok((client, connected)) => {
            tracing::info!(server = %connected.server, via = %connected.via, "watching the API server");
            Source::Live(live::start(client, live::LiveOptions::default()))
        }
        Err(e) => {
            let msg = format!("no --inventory and {}; flows stay unattributed", Chain(&e));
            tracing::warn!("{msg}");
            state.set_inventory_error(msg);
            Source::None
        }
    }
}

/// A change of the live inventory's health: the synced gauges, `/readyz`, and the first model
/// once everything is listed.
fn on_live_state(
    state: &AgentState,
    s: &live::SyncState,
    source: &Source,
    rebuild: &std::sync::mpsc::Sender<Rebuild>,
) {
    for (group, resource) in WATCHED_RESOURCES {
        let name = resource_label(group, resource);
        let ok = s.listed.contains(&name) && !s.errors.iter().any(|(r, _)| *r == name);
        state.metrics.set_inventory_synced(&name, ok);
    }
    state.set_source_problem(live_problem(s), !s.errors.is_empty());
    if s.synced
        && state.model().is_none()
        && let Source::Live(l) = source
    {
        let _ = rebuild.send(Rebuild::Snapshot(l.snapshot()));
    }
}

/// Installs what the model builder made (telling the capture this node's pods); returns the
/// file source's health change, if the batch reloaded the inventory files: `Some(None)`
/// healthy again, `Some(Some(why))`.
fn install(state: &AgentState, dp: &impl Capture, r: Rebuilt) -> Option<Option<String>> {
    match r.model {
        Some(Ok(m)) => {
            if let Some(node) = &state.node {
                set_local(dp, &m, node);
            }
            state.set_model(m);
        }
        Some(Err(e)) => state.set_inventory_error(e),
        None => {}
    }
    r.inventory_load.map(Result::err)
}

/// Takes the DNS answers waiting in `rx`.
fn drain_dns(state: &AgentState, rx: &mut broadcast::Receiver<crate::datapath::DnsAnswer>) {
    loop {
        match rx.try_recv() {
            Ok(a) => state.on_dns(&a),
            Err(broadcast::error::TryRecvError::Lagged(n)) => state.metrics.dns().lost(n),
            Err(_) => return,
        }
    }
}

/// What keeps a live inventory from being trusted (`None`: synced and every watch works).
fn live_problem(s: &live::SyncState) -> Option<String> {
    // One line per distinct error (an outage fails every watch the same way).
    let mut by_error: Vec<(&str, Vec<&str>)> = Vec::new();
    for (resource, e) in &s.errors {
        match by_error.iter_mut().find(|(m, _)| *m == e.as_str()) {
            Some((_, rs)) => rs.push(resource),
            None => by_error.push((e, vec![resource])),
        }
    }
    let failing = by_error
        .iter()
        .map(|(e, rs)| format!("{}: {e}", rs.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    if !s.synced {
        let waiting: Vec<String> = WATCHED_RESOURCES
            .iter()
            .map(|(g, r)| resource_label(g, r))
            .filter(|name| !s.listed.contains(name))
            .collect();
        let mut why = if waiting.is_empty() {
            "inventory not synced: building the first snapshot".to_owned()
        } else {
            format!(
                "inventory not synced: waiting for the first list of {}",
                waiting.join(", ")
            )
        };
        if !failing.is_empty() {
            why.push_str(&format!(" (failing: {failing})"));
        }
        return Some(why);
    }
    (!failing.is_empty())
        .then(|| format!("API server watches failing, the inventory may be stale: {failing}"))
}

/// A request to the model builder thread ([`spawn_rebuilder`]).
enum Rebuild {
    /// Reload the inventory files at this path.
    LoadInventory(PathBuf),
    /// A new snapshot of the live inventory.
    Snapshot(Arc<Inventory>),
    /// Reload the staged policies at this path.
    LoadStaged(PathBuf),
}

/// What the model builder thread reports for a batch of requests.
struct Rebuilt {
    /// The new model, or why it does not compile; `None` when there is nothing to build.
    model: Option<Result<Arc<Model>, String>>,
    /// The outcome of an inventory file reload in the batch (the error names file and field).
    inventory_load: Option<Result<(), String>>,
}

/// Starts the thread that loads files and builds models; requests that queue up while it
/// works are handled together (one model for the lot). It ends when the sender is dropped or
/// the receiver is gone; nobody waits for it at shutdown.
fn spawn_rebuilder(
    subnets: Subnets,
    validation: Validation,
    mut inventory: Option<Arc<Inventory>>,
    mut staged: Option<Vec<NetworkPolicy>>,
    out: tokio::sync::mpsc::UnboundedSender<Rebuilt>,
) -> std::sync::mpsc::Sender<Rebuild> {
    let (tx, rx) = std::sync::mpsc::channel::<Rebuild>();
    let spawned = std::thread::Builder::new()
        .name("model-builder".into())
        .spawn(move || {
            // The last model built: a batch of live snapshots alone updates it for the pods
            // that changed (`Model::next`); anything else builds anew.
            let mut last: Option<Arc<Model>> = None;
            while let Ok(first) = rx.recv() {
                let mut inventory_load = None;
                let mut changed = false;
                let mut snapshots_only = true;
                for request in std::iter::once(first).chain(rx.try_iter()) {
                    snapshots_only &= matches!(request, Rebuild::Snapshot(_));
                    match request {
                        Rebuild::LoadInventory(p) => match load_inventory(&p, validation) {
                            Ok(inv) => {
                                tracing::info!(path = %p.display(), pods = inv.pods.len(), "inventory reloaded");
                                inventory = Some(Arc::new(inv));
                                inventory_load = Some(Ok(()));
                                changed = true;
                            }
                            Err(e) => {
                                tracing::error!("inventory reload failed, keeping the previous one: {}", Chain(&e));
                                inventory_load = Some(Err(format!(
                                    "inventory reload failed (the previous one is in use): {}",
                                    Chain(&e)
                                )));
                            }
                        },
                        Rebuild::Snapshot(inv) => {
                            inventory = Some(inv);
                            changed = true;
                        }
                        Rebuild::LoadStaged(p) => match load_staged(&p, validation) {
                            Ok(s) => {
                                tracing::info!(path = %p.display(), policies = s.len(), "staged policies reloaded");
                                staged = Some(s);
                                changed = true;
                            }
                            Err(e) => tracing::error!(
                                "staged policies reload failed, keeping the previous ones: {}",
                                Chain(&e)
                            ),
                        },
                    }
                }
                let model = inventory.as_ref().filter(|_| changed).map(|inv| {
                    let built = match last.as_ref().filter(|_| snapshots_only) {
                        Some(prev) => prev.next(Arc::clone(inv), &subnets, staged.as_deref()),
                        None => Model::new(Arc::clone(inv), &subnets, staged.as_deref()),
                    };
                    built
                        .map(Arc::new)
                        .inspect(|m| last = Some(Arc::clone(m)))
                        .map_err(|e| {
                            tracing::error!("policies do not compile, keeping the previous model: {}", Chain(&e));
                            Chain(&e).to_string()
                        })
                });
                if out.send(Rebuilt { model, inventory_load }).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the model builder thread: {e}; the inventory is not reloaded"
        );
    }
    tx
}

/// Waits for a change on an optional watch receiver (`None` when absent or closed).
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) -> Option<()> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

fn set_local(dp: &impl Capture, model: &Model, node: &str) {
    let ips = model.local_pod_ips(node);
    if ips.is_empty() {
        return;
    }
    if let Err(e) = dp.set_local_endpoints(&ips) {
        tracing::warn!("local endpoints: {}", Chain(&e));
    }
}

fn read_drops(state: &AgentState, capture: &mut impl Capture) {
    match capture.read_drops() {
        Ok(samples) => {
            for d in &samples {
                state.on_drop(d);
            }
        }
        Err(e) => tracing::warn!("{}", Chain(&e)),
    }
}

fn report_health(state: &AgentState, dp: &impl Capture) {
    let stats = dp.stats();
    let m = &state.metrics;
    m.set_flow_table(stats.kernel_flows as u64, u64::from(stats.flow_capacity));
    m.set_attached_interfaces(dp.interfaces().len() as u64);
    match dp.kernel_counters() {
        Ok(c) => {
            m.set_ringbuf_lost_total(c.get(Counter::RingbufFull));
            m.set_kernel_error_total("map_insert_failed", c.get(Counter::MapInsertFailed));
            m.set_kernel_error_total("parse_failed", c.get(Counter::ParseFailed));
            m.dns()
                .set_kernel_lost_total(c.get(Counter::DnsRingbufFull));
        }
        Err(e) => tracing::warn!("kernel counters: {}", Chain(&e)),
    }
    // Evictions are cumulative in the datapath; feed the difference.
    let now = stats.evictions;
    let prev = state
        .evictions_seen
        .swap(now, std::sync::atomic::Ordering::Relaxed);
    if now > prev {
        m.record_evictions("lru", now - prev);
    }
}

/// The `resource` label of a watched resource: `pods`, `networking.k8s.io/networkpolicies`.
fn resource_label(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{group}/{resource}")
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::*;
    use crate::{
        flow::{Directional, Protocol, WorkloadRef},
        inventory::{Labels, PodInfo},
    };

    fn pod(i: usize) -> PodInfo {
        PodInfo {
            namespace: format!("ns{}", i % 10).into(),
            name: format!("w{i}-0").into(),
            uid: format!("uid-{i}").into(),
            labels: [("app", format!("w{i}"))].into(),
            ips: vec![IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1])],
            host_network: false,
            node_name: Some("node-1".into()),
            workload: Arc::new(WorkloadRef {
                kind: "Deployment".to_owned(),
                name: format!("w{i}"),
            }),
            selector_labels: Labels::default(),
            container_ports: Arc::from(Vec::new()),
            created: None,
            deleted: None,
        }
    }

    /// A same-node connection to a Service leaves a client leg (to the ClusterIP) and a
    /// backend leg (after the DNAT, here to the Service's *second* backend): the agent keeps
    /// one flow, to the Service, attributed to the backend really reached; later updates of
    /// the backend leg are not counted; a direct connection to that backend stays its own flow.
    #[test]
    fn a_service_connection_is_reported_once_with_the_backend_reached() {
        use crate::inventory::{ServiceInfo, ServicePortInfo, TargetPort};
        let api = |i| {
            let mut p = pod(i);
            p.labels = [("app", "api")].into();
            Arc::make_mut(&mut p.workload).name = "api".to_owned();
            p
        };
        let (web, first, second) = (pod(0), api(10), api(20));
        let cluster_ip: IpAddr = "10.96.0.20".parse().unwrap();
        let inventory = Inventory {
            pods: vec![web.clone(), first, second.clone()],
            services: vec![ServiceInfo {
                namespace: "ns0".to_owned(),
                name: "api".to_owned(),
                cluster_ips: vec![cluster_ip],
                selector: Some([("app", "api")].into()),
                ports: vec![ServicePortInfo {
                    name: None,
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(9000),
                }],
                service_type: Default::default(),
            }],
            ..Inventory::default()
        };
        let state = AgentState::new(AgentConfig {
            node_name: Some("node-1".to_owned()),
            ..AgentConfig::default()
        });
        let model = Model::new(Arc::new(inventory), &Subnets::default(), None).unwrap();
        state.set_model(Arc::new(model));
        let update = |src: (IpAddr, u16), dst: (IpAddr, u16), new: bool, sent: u64| {
            let mut r = FlowRecord::new(Protocol::Tcp, src.0, dst.0, Some(dst.1));
            r.src = Endpoint::bare(src.0, Some(src.1));
            r.first_seen = Some(Timestamp::now());
            let d = Directional { sent, received: 4 };
            r.packets = Some(d);
            FlowUpdate {
                record: r,
                new,
                delta_packets: d,
                delta_bytes: d,
                ended: false,
                opened: true,
            }
        };
        let (web_ip, backend_ip) = (web.ips[0], second.ips[0]);
        state.on_update(&update((web_ip, 40000), (cluster_ip, 80), true, 6));
        state.on_update(&update((web_ip, 40000), (backend_ip, 9000), true, 0));
        state.on_update(&update((web_ip, 40000), (backend_ip, 9000), false, 0));
        state.on_update(&update((web_ip, 40001), (backend_ip, 9000), true, 6));

        let flows = state.flows(&FlowQuery::default());
        let seen: Vec<(u16, IpAddr, Option<&str>, Option<&str>)> = flows
            .iter()
            .map(|f| {
                (
                    f.flow.src.port.unwrap(),
                    f.flow.dst.ip,
                    f.flow.dst.service.as_ref().map(|s| s.name.as_str()),
                    f.flow.dst.pod.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (40000, cluster_ip, Some("api"), Some(second.name.as_str())),
                (40001, backend_ip, None, Some(second.name.as_str())),
            ]
        );
        assert!(
            flows
                .iter()
                .all(|f| f.verdict.as_ref().is_some_and(|v| v.allowed))
        );
        let text = state.metrics().encode().unwrap();
        let total = |family: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(family))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        // Two connections, 6 + 4 packets each: the backend leg's 4 + 4 are not added.
        assert_eq!(total("netpol_observe_flows_total{"), 2.0);
        assert_eq!(total("netpol_observe_flow_packets_total{"), 20.0);
    }

    /// 1,000 workloads, each talking to the next 100 (100,000 workload pairs, 200× the budget)
    /// through the agent: every flow-labelled family stays at budget + one overflow series and
    /// nothing is lost. (The full 1,000 × 999 all-to-all is checked at the metrics layer in
    /// `metrics::tests`; through the agent it takes ~45 s in a debug build.)
    #[test]
    fn cardinality_stays_within_the_budget_with_1000_workloads() {
        const N: usize = 1000;
        const BUDGET: usize = 500;
        let inventory = Inventory {
            pods: (0..N).map(pod).collect(),
            ..Inventory::default()
        };
        let config = AgentConfig {
            max_flows: 10_000,
            node_name: Some("node-1".to_owned()),
            metrics: MetricsSettings {
                series_budget: BUDGET,
                pod_level: false,
            },
            ..AgentConfig::default()
        };
        let state = AgentState::new(config);
        let model = Model::new(Arc::new(inventory), &Subnets::default(), None).unwrap();
        state.set_model(Arc::new(model));
        let ips: Vec<IpAddr> = (0..N).map(|i| pod(i).ips[0]).collect();
        const PEERS: usize = 100;
        for (s, src) in ips.iter().enumerate() {
            for k in 1..=PEERS {
                let dst = &ips[(s + k) % N];
                let mut r = FlowRecord::new(Protocol::Tcp, *src, *dst, Some(8080));
                r.src.port = Some(40000);
                state.on_update(&FlowUpdate {
                    record: r,
                    new: true,
                    delta_packets: Directional {
                        sent: 1,
                        received: 1,
                    },
                    delta_bytes: Directional {
                        sent: 60,
                        received: 40,
                    },
                    ended: false,
                    opened: true,
                });
            }
        }
        let text = state.metrics().encode_text().unwrap();
        let flows = N * PEERS;
        for (family, per_flow) in [
            ("netpol_observe_flows_total{", 1),
            ("netpol_observe_flow_packets_total{", 2),
            ("netpol_observe_flow_bytes_total{", 100),
        ] {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
            assert_eq!(lines.len(), BUDGET + 1, "{family}");
            let sum: u64 = lines
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum();
            assert_eq!(sum, (flows * per_flow) as u64, "{family}");
        }
        assert_eq!(state.flows(&FlowQuery::default()).len(), 10_000);
        assert!(text.contains(
            "netpol_observe_series_dropped_total{metric=\"netpol_observe_flows_total\"} 99500"
        ));
    }

    /// The agent's cached series record exactly what the record-based metric calls do
    /// (same series, same values, same overflow), on a synthetic cluster whose flows overflow
    /// a small budget; known flows' counters go to the same series as their first ones.
    /// Flows keep the verdicts of the model that judged them: served before a model swap
    /// (explained lazily) and after it (explained by the outgoing model at the swap), they
    /// equal the full evaluation under the first model, policy names included; new flows get
    /// the new model's verdicts.
    #[test]
    fn flows_keep_their_explained_verdicts_across_a_model_swap() {
        use crate::policy::synth;
        let mut inv = synth::cluster(10, 1_000, 5);
        inv.network_policies = synth::policies(100, 10, 7);
        let staged = synth::policies(100, 10, 8);
        let first = Arc::new(
            Model::new(Arc::new(inv.clone()), &Subnets::default(), Some(&staged)).unwrap(),
        );
        inv.network_policies.clear();
        let second =
            Arc::new(Model::new(Arc::new(inv.clone()), &Subnets::default(), None).unwrap());
        let state = AgentState::new(AgentConfig {
            node_name: Some("node-1".to_owned()),
            ..AgentConfig::default()
        });
        state.set_model(Arc::clone(&first));
        let flows = synth::flows(&inv, 2_000, 9);
        let update = |record: FlowRecord| FlowUpdate {
            record,
            new: true,
            delta_packets: Directional::default(),
            delta_bytes: Directional::default(),
            ended: false,
            opened: true,
        };
        for f in &flows {
            state.on_update(&update(f.clone()));
        }
        let want: BTreeMap<FlowId, ObservedFlow> = flows
            .iter()
            .map(|f| (FlowId::of(f), first.observe(f.clone())))
            .collect();
        // (A flow taken for the backend leg of a Service connection is not stored.)
        let check = |served: Vec<ObservedFlow>| {
            assert!(served.len() > want.len() * 9 / 10, "{} flows", served.len());
            for o in served {
                let w = &want[&FlowId::of(&o.flow)];
                assert_eq!(
                    (&o.verdict, &o.staged_verdict),
                    (&w.verdict, &w.staged_verdict)
                );
            }
        };
        let denied = want
            .values()
            .filter(|o| !o.verdict.as_ref().unwrap().allowed)
            .count();
        assert!(denied > 100, "{denied} denied flows");
        check(state.flows(&FlowQuery::default()));
        state.set_model(Arc::clone(&second));
        check(state.flows(&FlowQuery::default()));
        // A new flow is judged by the new model: no policy, allowed, no staged verdict.
        let mut late = flows[0].clone();
        late.src.port = Some(9);
        state.on_update(&update(late.clone()));
        let served = state.flows(&FlowQuery::default());
        let o = served
            .iter()
            .find(|o| FlowId::of(&o.flow) == FlowId::of(&late))
            .unwrap();
        assert_eq!(o.verdict, second.observe(late).verdict);
        assert!(o.verdict.as_ref().unwrap().allowed);
        assert_eq!(o.staged_verdict, None);
    }

    #[test]
    fn cached_series_match_the_record_based_calls() {
        use crate::{metrics::MetricsConfig, policy::synth};
        const BUDGET: usize = 300;
        let mut inv = synth::cluster(10, 1_000, 11);
        inv.network_policies = synth::policies(100, 10, 7);
        let inv = Arc::new(inv);
        let staged = synth::policies(100, 10, 8);
        let config = AgentConfig {
            node_name: Some("node-1".to_owned()),
            metrics: MetricsSettings {
                series_budget: BUDGET,
                pod_level: false,
            },
            ..AgentConfig::default()
        };
        let state = AgentState::new(config);
        let model =
            Arc::new(Model::new(Arc::clone(&inv), &Subnets::default(), Some(&staged)).unwrap());
        state.set_model(Arc::clone(&model));
        let reference = Metrics::new(MetricsConfig {
            series_budget: BUDGET,
            pod_level: false,
        });
        reference.set_inventory_objects(&model.inventory);
        reference.set_unprotected(
            model
                .unprotected(Some("node-1"))
                .iter()
                .map(|(ns, dir, n)| (ns.as_str(), *dir, *n)),
        );
        let mut flows = synth::flows(&inv, 3_000, 5);
        for (i, f) in flows.iter_mut().enumerate() {
            f.src.port = Some(1024 + i as u16);
        }
        // This agent (node-1) counts the flows the cluster-wide rule gives it; the reference
        // records those.
        let here = |f: &FlowRecord| model.attribute(f).counted_on("node-1", false);
        let counted_here = flows.iter().filter(|f| here(f)).count();
        assert!(
            (100..2_000).contains(&counted_here),
            "{counted_here} of {} flows counted on node-1",
            flows.len()
        );
        for (round, new) in [(0, true), (1, false)] {
            for f in &flows {
                state.on_update(&FlowUpdate {
                    record: f.clone(),
                    new,
                    delta_packets: Directional {
                        sent: 2,
                        received: round,
                    },
                    delta_bytes: Directional {
                        sent: 100,
                        received: 7,
                    },
                    ended: false,
                    opened: true,
                });
                if !here(f) {
                    continue;
                }
                let o = model.observe(f.clone());
                let verdict = model::overall_label(o.verdict.as_ref().map(model::compact).as_ref());
                reference.record_flow(&o.flow, new, 2 + round, 107, verdict);
                if !new {
                    continue;
                }
                let v = o.verdict.as_ref().unwrap();
                if model::side_is_pod(v.egress.reason) && o.flow.src.pod.is_some() {
                    reference.record_verdict(
                        &o.flow,
                        Direction::Egress,
                        model::side_label(v.egress.result),
                    );
                }
                if model::side_is_pod(v.ingress.reason) && o.flow.dst.pod.is_some() {
                    reference.record_verdict(
                        &o.flow,
                        Direction::Ingress,
                        model::side_label(v.ingress.result),
                    );
                }
                let s = o.staged_verdict.as_ref().map(model::compact);
                reference.record_staged(&o.flow, model::overall_label(s.as_ref()));
            }
        }
        let sorted = |text: String| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        let got = sorted(state.metrics().encode().unwrap());
        let want = sorted(reference.encode().unwrap());
        assert!(
            got.iter()
                .any(|l| l.starts_with("netpol_observe_series_dropped_total{"))
        );
        assert_eq!(got, want);
    }
    /// A store full of active flows evicts some; their later updates are the same flows:
    /// `flows_total` counts every flow once whatever the store's bound.
    #[test]
    fn flows_evicted_while_active_are_not_counted_again() {
        let state = AgentState::new(AgentConfig {
            max_flows: 2,
            ..AgentConfig::default()
        });
        let update = |port: u16, new: bool, ended: bool| {
            let mut r = FlowRecord::new(
                Protocol::Udp,
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                Some(53),
            );
            r.src.port = Some(port);
            FlowUpdate {
                record: r,
                new,
                delta_packets: Directional {
                    sent: 1,
                    received: 0,
                },
                delta_bytes: Directional {
                    sent: 50,
                    received: 0,
                },
                ended,
                opened: true,
            }
        };
        for port in [1000, 1001, 1002] {
            state.on_update(&update(port, true, false));
        }
        // 1000 was evicted while active; its next updates (a delta, then its end) come back.
        state.on_update(&update(1000, false, false));
        state.on_update(&update(1000, false, true));
        let text = state.metrics().encode().unwrap();
        let sum = |family: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(family))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert_eq!(sum("netpol_observe_flows_total{"), 3.0, "{text}");
        assert_eq!(sum("netpol_observe_flow_packets_total{"), 5.0, "{text}");
    }
}
