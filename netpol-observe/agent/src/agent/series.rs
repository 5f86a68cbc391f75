//! The agent's cache of metric series per workload pair: a new flow between two workloads
//! already seen (same port and protocol) records through counter handles resolved once,
//! without building and hashing its label strings again. Bounded: it starts over when full.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{model::Attributed, peer::Peer};
use crate::{
    flow::Protocol,
    metrics::{Direction, FlowLabels, Metrics, PortLabel, Series, Verdict},
};

/// At most this many workload pairs (or workloads, for verdict series) are cached: 7/8 of
/// 4,096, what a hash table of 4,096 buckets holds (one more entry would double it to 8,192
/// buckets, ~1 MiB more for the pairs).
const MAX_ENTRIES: usize = 3584;

/// The identity of a flow's label set: both peers' metric labels (shared per workload, or
/// the peers themselves with pod-level labels), the destination port and the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PairKey {
    src: usize,
    dst: usize,
    dst_port: Option<u16>,
    protocol: Protocol,
}

/// The series of one label set, resolved on first use.
#[derive(Debug)]
struct PairSeries {
    /// Keep the peers (and so the keyed addresses) alive while cached.
    _src: Arc<Peer>,
    _dst: Arc<Peer>,
    labels: FlowLabels,
    flows: [Option<Series>; 4],
    staged: [Option<Series>; 4],
    packets: Option<Series>,
    bytes: Option<Series>,
}

/// One pod's `policy_verdicts` series, per direction and verdict.
#[derive(Debug)]
struct PeerSeries {
    _peer: Arc<Peer>,
    series: [[Option<Series>; 4]; 2],
}

/// Cached series of the flow-labelled families.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    pairs: FxHashMap<PairKey, PairSeries>,
    peers: FxHashMap<usize, PeerSeries>,
}

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allowed => 0,
        Verdict::Denied => 1,
        Verdict::NotIsolated => 2,
        Verdict::Unknown => 3,
    }
}

fn resolve(slot: &mut Option<Series>, make: impl FnOnce() -> Series) -> &Series {
    slot.get_or_insert_with(make)
}

impl SeriesCache {
    fn pair(
        &mut self,
        metrics: &Metrics,
        peers: &Attributed,
        dst_port: Option<u16>,
        protocol: Protocol,
    ) -> &mut PairSeries {
        let pod_level = metrics.config().pod_level;
        let id = |p: &Arc<Peer>| {
            if pod_level {
                Arc::as_ptr(p) as usize
            } else {
                Arc::as_ptr(&p.metric) as usize
            }
        };
        let key = PairKey {
            src: id(&peers.src),
            dst: id(&peers.dst),
            dst_port,
            protocol,
        };
        if self.pairs.len() >= MAX_ENTRIES && !self.pairs.contains_key(&key) {
            self.pairs.clear();
        }
        self.pairs.entry(key).or_insert_with(|| PairSeries {
            _src: Arc::clone(&peers.src),
            _dst: Arc::clone(&peers.dst),
            labels: FlowLabels {
                src: peers.src.metric_labels(pod_level),
                dst: peers.dst.metric_labels(pod_level),
                dst_port: PortLabel::from(dst_port),
                protocol,
            },
            flows: Default::default(),
            staged: Default::default(),
            packets: None,
            bytes: None,
        })
    }

    /// The labels of a flow between `peers`.
    pub(super) fn labels(
        &mut self,
        metrics: &Metrics,
        peers: &Attributed,
        dst_port: Option<u16>,
        protocol: Protocol,
    ) -> FlowLabels {
        self.pair(metrics, peers, dst_port, protocol).labels.clone()
    }

    /// [`Metrics::record_flow`] for a flow between `peers`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_flow(
        &mut self,
        metrics: &Metrics,
        peers: &Attributed,
        dst_port: Option<u16>,
        protocol: Protocol,
        new: bool,
        delta_packets: u64,
        delta_bytes: u64,
        verdict: Verdict,
    ) {
        let p = self.pair(metrics, peers, dst_port, protocol);
        let labels = &p.labels;
        if new {
            resolve(&mut p.flows[verdict_index(verdict)], || {
                metrics.flows_series(labels, verdict)
            })
            .inc_by(1);
        }
        if delta_packets > 0 {
            resolve(&mut p.packets, || metrics.packets_series(labels)).inc_by(delta_packets);
        }
        if delta_bytes > 0 {
            resolve(&mut p.bytes, || metrics.bytes_series(labels)).inc_by(delta_bytes);
        }
    }

    /// [`Metrics::record_staged`] for a flow between `peers`.
    pub(crate) fn record_staged(
        &mut self,
        metrics: &Metrics,
        peers: &Attributed,
        dst_port: Option<u16>,
        protocol: Protocol,
        verdict: Verdict,
    ) {
        let p = self.pair(metrics, peers, dst_port, protocol);
        let labels = &p.labels;
        resolve(&mut p.staged[verdict_index(verdict)], || {
            metrics.staged_series(labels, verdict)
        })
        .inc_by(1);
    }

    /// [`Metrics::record_verdict`] for the pod `peer`.
    pub(crate) fn record_verdict(
        &mut self,
        metrics: &Metrics,
        peer: &Arc<Peer>,
        direction: Direction,
        verdict: Verdict,
    ) {
        let key = Arc::as_ptr(&peer.metric) as usize;
        if self.peers.len() >= MAX_ENTRIES && !self.peers.contains_key(&key) {
            self.peers.clear();
        }
        let p = self.peers.entry(key).or_insert_with(|| PeerSeries {
            _peer: Arc::clone(peer),
            series: Default::default(),
        });
        let d = match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        resolve(&mut p.series[d][verdict_index(verdict)], || {
            metrics.verdict_series(&peer.metric, direction, verdict)
        })
        .inc_by(1);
    }
}
