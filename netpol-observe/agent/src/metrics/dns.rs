//! The DNS-capture families: answers seen, parse errors, ring-buffer losses, the per-pod name
//! cache, and rotations of names the policies in force allow. DNS names are never labels.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{Cumulative, saturating_i64};

/// Labels of `netpol_observe_dns_rotations_total`: the workload of the pod that resolved the
/// name (`namespace`, `kind`, `workload`, as `policy_verdicts_total`) and the policy, `ns/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RotationLabels {
    /// Namespace of the pod.
    pub namespace: Arc<str>,
    /// Workload kind.
    pub kind: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// The policy allowing the name, `namespace/name`.
    pub policy: String,
}

impl EncodeLabelSet for RotationLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("namespace", &*self.namespace).encode(encoder.encode_label())?;
        ("kind", &*self.kind).encode(encoder.encode_label())?;
        ("workload", &*self.workload).encode(encoder.encode_label())?;
        ("policy", self.policy.as_str()).encode(encoder.encode_label())
    }
}

/// The DNS-capture families (registered by [`super::Metrics::new`]).
#[derive(Debug, Default)]
pub struct DnsMetrics {
    answers: Counter,
    parse_errors: Counter,
    lost: Counter,
    cache_entries: Gauge,
    cache_evictions: Counter,
    rotations: Family<RotationLabels, Counter>,
    cumulative: Cumulative,
}

impl DnsMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "dns_answers",
            "DNS answers to this node's pods the agent read (captured by the datapath: packets from port 53)",
            self.answers.clone(),
        );
        r.register(
            "dns_parse_errors",
            "Captured DNS answers that could not be parsed",
            self.parse_errors.clone(),
        );
        r.register(
            "dns_answers_lost",
            "DNS answers the kernel could not put on the DNS ring buffer (full) or the agent read too late",
            self.lost.clone(),
        );
        r.register(
            "dns_cache_entries",
            "(pod, address) entries in the DNS name cache",
            self.cache_entries.clone(),
        );
        r.register(
            "dns_cache_evictions",
            "DNS name cache entries evicted to stay within its bounds (least recently used first)",
            self.cache_evictions.clone(),
        );
        r.register(
            "dns_rotations",
            "Names a policy in force allows (netpol-observe.io/dns-names) that resolved, for a pod it selects, to an address outside the policy's ipBlocks for the name; once per workload, policy, name and address",
            self.rotations.clone(),
        );
    }

    /// Counts one answer read.
    pub fn answer(&self) {
        self.answers.inc();
    }

    /// Counts one answer that does not parse.
    pub fn parse_error(&self) {
        self.parse_errors.inc();
    }

    /// Counts `n` answers the agent missed (its channel lagged).
    pub fn lost(&self, n: u64) {
        self.lost.inc_by(n);
    }

    /// Feeds the kernel's cumulative count of answers the DNS ring buffer had no room for.
    pub fn set_kernel_lost_total(&self, total: u64) {
        self.lost
            .inc_by(self.cumulative.delta("dns_ringbuf", total));
    }

    /// Sets the cache's size and feeds its cumulative evictions.
    pub fn set_cache(&self, entries: usize, evictions_total: u64) {
        self.cache_entries.set(saturating_i64(entries as u64));
        self.cache_evictions
            .inc_by(self.cumulative.delta("dns_evictions", evictions_total));
    }

    /// Counts one rotation.
    pub fn rotation(&self, labels: RotationLabels) {
        self.rotations.get_or_create(&labels).inc();
    }
}
