//! Prometheus metrics (`netpol_observe_*`, OpenMetrics text) with a series budget.
//!
//! The agent owns one [`Metrics`], feeds it attributed flow records, verdicts, drops and its
//! own health, and serves [`Metrics::encode`] on `/metrics` with [`CONTENT_TYPE`]. Every
//! family and label is listed in `docs/metrics.md`.
//!
//! Cardinality stays bounded under any traffic: each flow-labelled family
//! (`flows`, `flow_bytes`, `flow_packets`, `drops`, `unenforced_flows`, `drift_flows`, `policy_verdicts`,
//! `staged_verdicts`)
//! admits at most [`MetricsConfig::series_budget`] distinct label sets; a label set beyond that
//! is recorded in the family's overflow bucket (every peer label `other`, see
//! [`labels`]) and counted in `netpol_observe_series_dropped_total{metric}`.
//!
//! ```
//! use netpol_observe_core::flow::{FlowRecord, Protocol};
//! use netpol_observe_agent::metrics::{Metrics, MetricsConfig, Verdict};
//!
//! let metrics = Metrics::new(MetricsConfig::default());
//! let flow = FlowRecord::new(Protocol::Tcp, "10.0.0.1".parse()?, "10.0.0.2".parse()?, Some(80));
//! metrics.record_flow(&flow, true, 3, 180, Verdict::NotIsolated);
//! let text = metrics.encode()?;
//! assert!(text.contains("netpol_observe_flows_total{"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod budget;
pub mod dns;
pub mod labels;
pub mod sample;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use rustc_hash::FxHashMap;

use crate::flow::{FlowRecord, Protocol};
use budget::Budget;
pub use labels::{
    Direction, DriftLabels, DropLabels, Enforcement, EnforcementLabels, ErrorLabels,
    EvictionLabels, FlowLabels, FlowVerdictLabels, MetricLabels, PeerLabels, PortLabel,
    ResourceLabels, UnenforcedLabels, UnprotectedLabels, Verdict, VerdictLabels,
};

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text 1.0.0).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of [`Metrics::encode_text`]'s output (Prometheus text format 0.0.4).
pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Default number of label sets each flow-labelled family may hold before collapsing into
/// `other`.
pub(crate) const DEFAULT_SERIES_BUDGET: usize = 2000;

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Writing the OpenMetrics text failed.
    #[error("cannot encode the metrics as OpenMetrics text")]
    Encode(#[from] std::fmt::Error),
}

/// How the agent's metrics are labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Maximum distinct label sets per flow-labelled family (0: everything goes to `other`).
    pub series_budget: usize,
    /// Add `src_pod`/`dst_pod` labels (much higher cardinality; off by default).
    pub pod_level: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            series_budget: DEFAULT_SERIES_BUDGET,
            pod_level: false,
        }
    }
}

/// A counter family with a series budget.
#[derive(Debug)]
struct Budgeted<L> {
    /// Full sample name, used as the `metric` label of `series_dropped_total`.
    name: &'static str,
    family: Family<L, Counter>,
    budget: Budget<L>,
    /// The `other` buckets already resolved, by the caller's key of the bucket (see
    /// [`Budgeted::series`]): an overflowing label set then costs no allocation for the
    /// bucket's labels and no second hashing.
    others: Mutex<FxHashMap<u32, Counter>>,
    /// This family's series of `series_dropped_total`, once resolved.
    dropped: OnceLock<Counter>,
}

impl<L> Budgeted<L>
where
    L: Clone + std::hash::Hash + Eq + prometheus_client::encoding::EncodeLabelSet,
    L: Send + Sync + std::fmt::Debug + 'static,
{
    fn new(name: &'static str, limit: usize) -> Self {
        Budgeted {
            name,
            family: Family::default(),
            budget: Budget::new(limit),
            others: Mutex::new(FxHashMap::default()),
            dropped: OnceLock::new(),
        }
    }

    /// Adds `v` to `labels`' series, or to `other()`'s when the budget is spent.
    fn add(
        &self,
        labels: L,
        other: impl FnOnce() -> L,
        v: u64,
        dropped: &Family<MetricLabels, Counter>,
    ) {
        self.series(&labels, None, other, dropped).inc_by(v);
    }

    /// The series of `labels`: its own when admitted, else `other()`'s (counting each
    /// observation in `dropped`). `other_key`, when given, identifies `other()`'s label set
    /// among this family's overflow buckets (the same key must always mean the same label
    /// set), so that it is built and resolved once.
    fn series(
        &self,
        labels: &L,
        other_key: Option<u32>,
        other: impl FnOnce() -> L,
        dropped: &Family<MetricLabels, Counter>,
    ) -> Series {
        if self.budget.admit(labels) {
            return Series {
                counter: self.family.get_or_create(labels).clone(),
                dropped: None,
            };
        }
        let counter = match other_key {
            Some(key) => {
                let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
                others
                    .entry(key)
                    .or_insert_with(|| self.family.get_or_create(&other()).clone())
                    .clone()
            }
            None => self.family.get_or_create(&other()).clone(),
        };
        let dropped = self.dropped.get_or_init(|| {
            dropped
                .get_or_create(&MetricLabels {
                    metric: self.name.to_owned(),
                })
                .clone()
        });
        Series {
            counter,
            dropped: Some(dropped.clone()),
        }
    }
}

/// The key of a flow-labelled family's `other` bucket for `protocol` and `detail` (a
/// verdict's discriminant, or 0): the bucket's labels depend on nothing else.
fn other_key(protocol: Protocol, detail: u32) -> u32 {
    ((protocol as u32) << 8) | detail
}

/// One series of a budgeted family, resolved once: its own counter when its label set was
/// admitted, else the family's `other` bucket (each observation then also counts in
/// `netpol_observe_series_dropped_total`). A label set's admission never changes, so a
/// caller may keep a `Series` and record through it instead of resolving the labels again.
#[derive(Debug, Clone)]
pub struct Series {
    counter: Counter,
    dropped: Option<Counter>,
}

impl Series {
    /// Records one observation of `v`.
    pub(crate) fn inc_by(&self, v: u64) {
        self.counter.inc_by(v);
        if let Some(d) = &self.dropped {
            d.inc();
        }
    }
}

/// Turns cumulative kernel counters into counter increments.
#[derive(Debug, Default)]
struct Cumulative {
    last: Mutex<HashMap<String, u64>>,
}

impl Cumulative {
    /// The increment from the last seen total of `key` to `total`. A total below the last one
    /// means the kernel counters restarted (maps re-created): the whole total is new.
    fn delta(&self, key: &str, total: u64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let prev = last.insert(key.to_owned(), total).unwrap_or(0);
        if total >= prev { total - prev } else { total }
    }
}

/// Every `netpol_observe_*` family, registered and ready to encode.
#[derive(Debug)]
pub struct Metrics {
    config: MetricsConfig,
    registry: Registry,
    flows: Budgeted<FlowVerdictLabels>,
    flow_bytes: Budgeted<FlowLabels>,
    flow_packets: Budgeted<FlowLabels>,
    drops: Budgeted<DropLabels>,
    unenforced: Budgeted<UnenforcedLabels>,
    drift: Budgeted<DriftLabels>,
    enforcement: Family<EnforcementLabels, Gauge>,
    policy_verdicts: Budgeted<VerdictLabels>,
    staged_verdicts: Budgeted<FlowVerdictLabels>,
    unprotected: Family<UnprotectedLabels, Gauge>,
    flow_table_entries: Gauge,
    flow_table_capacity: Gauge,
    ringbuf_lost: Counter,
    kernel_errors: Family<ErrorLabels, Counter>,
    attached_interfaces: Gauge,
    inventory_synced: Family<ResourceLabels, Gauge>,
    inventory_objects: Family<ResourceLabels, Gauge>,
    evictions: Family<EvictionLabels, Counter>,
    series_dropped: Family<MetricLabels, Counter>,
    dns: dns::DnsMetrics,
    cumulative: Cumulative,
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new(config: MetricsConfig) -> Self {
        let b = config.series_budget;
        let m = Metrics {
            flows: Budgeted::new("netpol_observe_flows_total", b),
            flow_bytes: Budgeted::new("netpol_observe_flow_bytes_total", b),
            flow_packets: Budgeted::new("netpol_observe_flow_packets_total", b),
            drops: Budgeted::new("netpol_observe_drops_total", b),
            unenforced: Budgeted::new("netpol_observe_unenforced_flows_total", b),
            drift: Budgeted::new("netpol_observe_drift_flows_total", b),
            enforcement: Family::default(),
            policy_verdicts: Budgeted::new("netpol_observe_policy_verdicts_total", b),
            staged_verdicts: Budgeted::new("netpol_observe_staged_verdicts_total", b),
            unprotected: Family::default(),
            flow_table_entries: Gauge::default(),
            flow_table_capacity: Gauge::default(),
            ringbuf_lost: Counter::default(),
            kernel_errors: Family::default(),
            attached_interfaces: Gauge::default(),
            inventory_synced: Family::default(),
            inventory_objects: Family::default(),
            evictions: Family::default(),
            series_dropped: Family::default(),
            dns: dns::DnsMetrics::default(),
            cumulative: Cumulative::default(),
            registry: Registry::with_prefix("netpol_observe"),
            config,
        };
        m.set_enforcement(Enforcement::Unknown);
        m.register()
    }

    /// Registers every family with its help text in the registry.
    // Long because: a flat table of registrations, one per family; splitting it would only
    // scatter the list of what is exported.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "flows",
            "New flows (connections, or UDP/ICMP conversations) observed, by workload pair and overall policy verdict",
            self.flows.family.clone(),
        );
        r.register(
            "flow_bytes",
            "Bytes (IP length) of observed flows, both directions, by workload pair",
            self.flow_bytes.family.clone(),
        );
        r.register(
            "flow_packets",
            "Packets of observed flows, both directions, by workload pair",
            self.flow_packets.family.clone(),
        );
        r.register(
            "drops",
            "Packets of observed flows dropped by the kernel, by drop reason and isolating policy",
            self.drops.family.clone(),
        );
        r.register(
            "unenforced_flows",
            "Flows the NetworkPolicies in force deny that were delivered all the same (this node did not enforce them), by isolating policy",
            self.unenforced.family.clone(),
        );
        r.register(
            "drift_flows",
            "Counted flows whose edge (workload pair, port, protocol) is outside the drift baseline, by how it is new",
            self.drift.family.clone(),
        );
        r.register(
            "policy_enforcement",
            "1 for this node's NetworkPolicy enforcement state as seen from traffic (unknown, enforced, not_enforced), 0 for the others",
            self.enforcement.clone(),
        );
        r.register(
            "policy_verdicts",
            "Policy verdicts on new flows, per direction, for the pod the direction applies to",
            self.policy_verdicts.family.clone(),
        );
        r.register(
            "staged_verdicts",
            "Verdicts of the staged (draft) policies on new flows, by workload pair",
            self.staged_verdicts.family.clone(),
        );
        r.register(
            "unprotected_workloads",
            "Workloads that no NetworkPolicy isolates, per namespace and direction",
            self.unprotected.clone(),
        );
        r.register(
            "flow_table_entries",
            "Entries in the kernel flow table at the last sweep",
            self.flow_table_entries.clone(),
        );
        r.register(
            "flow_table_capacity",
            "Capacity (max entries) of the kernel flow table",
            self.flow_table_capacity.clone(),
        );
        r.register(
            "ringbuf_events_lost",
            "Flow events the kernel could not put on the ring buffer (buffer full)",
            self.ringbuf_lost.clone(),
        );
        r.register(
            "kernel_errors",
            "Kernel-side error counters of the eBPF programs, by error",
            self.kernel_errors.clone(),
        );
        r.register(
            "attached_interfaces",
            "Interfaces the flow programs are attached to",
            self.attached_interfaces.clone(),
        );
        r.register(
            "inventory_synced",
            "1 when the inventory of this resource is synced with the API (or loaded from files), else 0",
            self.inventory_synced.clone(),
        );
        r.register(
            "inventory_objects",
            "Objects of this resource in the inventory the verdicts are computed with",
            self.inventory_objects.clone(),
        );
        r.register(
            "flow_evictions",
            "Flows removed from the kernel flow table, by reason",
            self.evictions.clone(),
        );
        r.register(
            "series_dropped",
            "Observations collapsed into the other bucket because their family's series budget was spent",
            self.series_dropped.clone(),
        );
        self.dns.register(r);
        self
    }

    /// The DNS-capture families.
    pub fn dns(&self) -> &dns::DnsMetrics {
        &self.dns
    }

    /// The configuration the metrics were created with.
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    fn flow_labels(&self, record: &FlowRecord) -> FlowLabels {
        FlowLabels::from_record(record, self.config.pod_level)
    }

    /// The `netpol_observe_flows_total` series of a flow labelled `labels` with `verdict`.
    pub(crate) fn flows_series(&self, labels: &FlowLabels, verdict: Verdict) -> Series {
        self.verdict_flow_series(&self.flows, labels, verdict)
    }

    /// The `netpol_observe_flow_packets_total` series of a flow labelled `labels`.
    pub(crate) fn packets_series(&self, labels: &FlowLabels) -> Series {
        self.counter_series(&self.flow_packets, labels)
    }

    /// The `netpol_observe_flow_bytes_total` series of a flow labelled `labels`.
    pub(crate) fn bytes_series(&self, labels: &FlowLabels) -> Series {
        self.counter_series(&self.flow_bytes, labels)
    }

    /// The series of `family` (flow-labelled, no verdict) for a flow labelled `labels`.
    fn counter_series(&self, family: &Budgeted<FlowLabels>, labels: &FlowLabels) -> Series {
        let pod_level = self.config.pod_level;
        family.series(
            labels,
            Some(other_key(labels.protocol, 0)),
            || FlowLabels::other(labels.protocol, pod_level),
            &self.series_dropped,
        )
    }

    /// The `netpol_observe_staged_verdicts_total` series of a flow labelled `labels` with
    /// `verdict` (under the staged policies).
    pub(crate) fn staged_series(&self, labels: &FlowLabels, verdict: Verdict) -> Series {
        self.verdict_flow_series(&self.staged_verdicts, labels, verdict)
    }

    /// The series of `family` (flow-labelled, with a verdict) for a flow labelled `labels`
    /// with `verdict`.
    fn verdict_flow_series(
        &self,
        family: &Budgeted<FlowVerdictLabels>,
        labels: &FlowLabels,
        verdict: Verdict,
    ) -> Series {
        let pod_level = self.config.pod_level;
        family.series(
            &FlowVerdictLabels {
                flow: labels.clone(),
                verdict,
            },
            Some(other_key(labels.protocol, verdict as u32)),
            || FlowVerdictLabels {
                flow: FlowLabels::other(labels.protocol, pod_level),
                verdict,
            },
            &self.series_dropped,
        )
    }

    /// The `netpol_observe_policy_verdicts_total` series of the pod `peer` (workload-level
    /// labels), `direction` and `verdict`.
    pub(crate) fn verdict_series(
        &self,
        peer: &Arc<PeerLabels>,
        direction: Direction,
        verdict: Verdict,
    ) -> Series {
        // Workload-level: a peer carrying a pod name is labelled without it.
        let peer = if peer.pod.is_some() {
            Arc::new(PeerLabels {
                pod: None,
                ..(**peer).clone()
            })
        } else {
            Arc::clone(peer)
        };
        self.policy_verdicts.series(
            &VerdictLabels {
                peer,
                direction,
                verdict,
            },
            Some(((direction as u32) << 8) | verdict as u32),
            || VerdictLabels {
                peer: Arc::new(PeerLabels::other(false)),
                direction,
                verdict,
            },
            &self.series_dropped,
        )
    }

    /// Records traffic of an attributed flow: `new` counts it once in
    /// `netpol_observe_flows_total{verdict}`; the packet and byte deltas (both directions, since
    /// the last call for this flow) go to `flow_packets_total` and `flow_bytes_total`.
    pub fn record_flow(
        &self,
        record: &FlowRecord,
        new: bool,
        delta_packets: u64,
        delta_bytes: u64,
        verdict: Verdict,
    ) {
        let labels = self.flow_labels(record);
        if new {
            self.flows_series(&labels, verdict).inc_by(1);
        }
        if delta_packets > 0 {
            self.packets_series(&labels).inc_by(delta_packets);
        }
        if delta_bytes > 0 {
            self.bytes_series(&labels).inc_by(delta_bytes);
        }
    }

    /// Records `count` packets of a flow dropped by the kernel for `reason` (the kernel's drop
    /// reason name); `policy` is the isolating policy `ns/name` that explains it, if any
    /// (`unknown` otherwise).
    pub(crate) fn record_drop(
        &self,
        record: &FlowRecord,
        reason: &str,
        policy: Option<&str>,
        count: u64,
    ) {
        self.record_drop_labelled(self.flow_labels(record), reason, policy, count);
    }

    /// [`Metrics::record_drop`] for a flow already labelled.
    pub(crate) fn record_drop_labelled(
        &self,
        flow: FlowLabels,
        reason: &str,
        policy: Option<&str>,
        count: u64,
    ) {
        if count == 0 {
            return;
        }
        let protocol = flow.protocol;
        let labels = DropLabels {
            flow,
            reason: reason.to_owned(),
            policy: policy.unwrap_or("unknown").to_owned(),
        };
        let pod_level = self.config.pod_level;
        self.drops.add(
            labels,
            || DropLabels {
                flow: FlowLabels::other(protocol, pod_level),
                reason: reason.to_owned(),
                policy: labels::OTHER.to_owned(),
            },
            count,
            &self.series_dropped,
        );
    }

    /// Counts one flow the policies in force deny that was delivered (`policy`: the isolating
    /// policies of the denying side(s) not enforced, `unknown` when none is named).
    pub(crate) fn record_unenforced(&self, flow: FlowLabels, policy: Option<&str>) {
        let protocol = flow.protocol;
        let labels = UnenforcedLabels {
            flow,
            policy: policy.unwrap_or("unknown").to_owned(),
        };
        let pod_level = self.config.pod_level;
        self.unenforced.add(
            labels,
            || UnenforcedLabels {
                flow: FlowLabels::other(protocol, pod_level),
                policy: labels::OTHER.to_owned(),
            },
            1,
            &self.series_dropped,
        );
    }

    /// Counts one flow outside the drift baseline (`kind`: how its edge is new).
    pub(crate) fn record_drift(&self, flow: FlowLabels, kind: labels::DriftKind) {
        let protocol = flow.protocol;
        let pod_level = self.config.pod_level;
        self.drift.add(
            DriftLabels { flow, kind },
            || DriftLabels {
                flow: FlowLabels::other(protocol, pod_level),
                kind,
            },
            1,
            &self.series_dropped,
        );
    }

    /// Sets `netpol_observe_policy_enforcement`: 1 for `state`, 0 for the other states.
    pub(crate) fn set_enforcement(&self, state: Enforcement) {
        for s in Enforcement::ALL {
            self.enforcement
                .get_or_create(&EnforcementLabels { state: s })
                .set(i64::from(s == state));
        }
    }

    /// Records the verdict of one direction of a new flow, labelled with the pod it applies
    /// to (the source for egress, the destination for ingress).
    pub(crate) fn record_verdict(
        &self,
        record: &FlowRecord,
        direction: Direction,
        verdict: Verdict,
    ) {
        let ep = match direction {
            Direction::Egress => &record.src,
            Direction::Ingress => &record.dst,
        };
        let peer = Arc::new(PeerLabels::from_endpoint(ep, false));
        self.verdict_series(&peer, direction, verdict).inc_by(1);
    }

    /// Records the overall verdict the staged (draft) policies give a new flow
    /// (`--staged-policies`).
    pub(crate) fn record_staged(&self, record: &FlowRecord, verdict: Verdict) {
        self.staged_series(&self.flow_labels(record), verdict)
            .inc_by(1);
    }

    /// Replaces every `netpol_observe_unprotected_workloads` series with these
    /// `(namespace, direction, workloads)` counts (namespaces absent now disappear).
    pub(crate) fn set_unprotected<'a>(
        &self,
        counts: impl IntoIterator<Item = (&'a str, Direction, u64)>,
    ) {
        self.unprotected.clear();
        for (namespace, direction, n) in counts {
            self.unprotected
                .get_or_create(&UnprotectedLabels {
                    namespace: namespace.to_owned(),
                    direction,
                })
                .set(saturating_i64(n));
        }
    }

    /// Sets the flow table fill (`entries`) and size (`capacity`).
    pub(crate) fn set_flow_table(&self, entries: u64, capacity: u64) {
        self.flow_table_entries.set(saturating_i64(entries));
        self.flow_table_capacity.set(saturating_i64(capacity));
    }

    /// Feeds the kernel's cumulative count of ring-buffer events lost (summed over CPUs); the
    /// counter grows by the difference from the previous call.
    pub(crate) fn set_ringbuf_lost_total(&self, total: u64) {
        self.ringbuf_lost
            .inc_by(self.cumulative.delta("\0ringbuf", total));
    }

    /// Feeds the kernel's cumulative count of one error counter (summed over CPUs), e.g.
    /// `flow_map_full`, `parse_error`; the counter grows by the difference from the previous
    /// call for this error.
    pub(crate) fn set_kernel_error_total(&self, error: &str, total: u64) {
        let delta = self.cumulative.delta(error, total);
        self.kernel_errors
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc_by(delta);
    }

    /// Sets how many interfaces the flow programs are attached to.
    pub(crate) fn set_attached_interfaces(&self, n: u64) {
        self.attached_interfaces.set(saturating_i64(n));
    }

    /// Sets whether the inventory of `resource` (e.g. `pods`) is synced.
    pub(crate) fn set_inventory_synced(&self, resource: &str, synced: bool) {
        self.inventory_synced
            .get_or_create(&ResourceLabels {
                resource: resource.to_owned(),
            })
            .set(i64::from(synced));
    }

    /// Sets how many objects of each resource the inventory in use holds.
    pub(crate) fn set_inventory_objects(&self, inv: &crate::inventory::Inventory) {
        let counts = [
            ("namespaces", inv.namespaces.len()),
            (
                "pods",
                inv.pods.iter().filter(|p| p.deleted.is_none()).count(),
            ),
            ("services", inv.services.len()),
            ("nodes", inv.nodes.len()),
            ("discovery.k8s.io/endpointslices", inv.endpoint_slices.len()),
            (
                "networking.k8s.io/networkpolicies",
                inv.network_policies.len(),
            ),
        ];
        for (resource, n) in counts {
            self.inventory_objects
                .get_or_create(&ResourceLabels {
                    resource: resource.to_owned(),
                })
                .set(saturating_i64(n as u64));
        }
    }

    /// Counts `n` flows removed from the flow table for `reason` (`idle`, `closed`, `lru`, …).
    pub(crate) fn record_evictions(&self, reason: &str, n: u64) {
        self.evictions
            .get_or_create(&EvictionLabels {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// The whole registry as OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The whole registry in the Prometheus text format 0.0.4, for clients that do not ask
    /// for OpenMetrics (`curl`, `promtool check metrics`). Same samples as [`Self::encode`].
    pub(crate) fn encode_text(&self) -> Result<String, MetricsError> {
        Ok(openmetrics_to_text(&self.encode()?))
    }

    /// Content negotiation for `/metrics`: OpenMetrics when the `Accept` header asks for
    /// `application/openmetrics-text` (as Prometheus does), else the Prometheus text format.
    /// Returns the `Content-Type` and the body.
    pub(crate) fn negotiate(
        &self,
        accept: Option<&str>,
    ) -> Result<(&'static str, String), MetricsError> {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Ok((CONTENT_TYPE, self.encode()?))
        } else {
            Ok((TEXT_CONTENT_TYPE, self.encode_text()?))
        }
    }
}

/// Rewrites OpenMetrics text into the Prometheus text format: a counter family `x` is
/// described as `x_total` (the name of its samples), and `# UNIT` and `# EOF` go away.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some((name, "counter")) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match described.and_then(|(p, rest)| rest.split_once(' ').map(|(n, r)| (p, n, r))) {
            Some((p, name, rest)) if counters.contains(name) => {
                out.push_str(p);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
