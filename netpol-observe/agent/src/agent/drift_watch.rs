//! Drift detection on the agent (`driftBaseline`, [`crate::drift`]): the [`Drift`] behind a
//! leaf lock. It is only reached through [`AgentState::with_drift`], whose closure sees the
//! `Drift` alone: nothing else can be locked while it is held, so taking it under the flows
//! lock (the flow path) or alone (the event loop's poll, the HTTP API) cannot deadlock.

use std::sync::{Mutex, OnceLock};

use jiff::Timestamp;

use super::{AgentError, AgentState, StoredFlow, lock, series::SeriesCache};
use crate::{
    drift::{Drift, DriftReport, Edge, Observed},
    flow::Protocol,
    report::Chain,
};

/// The drift state of an agent: set once, by [`AgentState::open_drift`].
pub(super) type DriftLock = OnceLock<Mutex<Drift>>;

impl AgentState {
    /// Runs `f` on the drift state (`None`: drift detection is off).
    fn with_drift<R>(&self, f: impl FnOnce(&mut Drift) -> R) -> Option<R> {
        self.drift.get().map(|d| f(&mut lock(d)))
    }

    /// Loads the drift baseline (`driftBaseline`) at time `now`, starting or resuming a
    /// learning period (`driftLearn`): nothing without `driftBaseline`. A bad file is an error
    /// naming `FILE:LINE`. Once per state.
    pub(crate) fn open_drift(&self, now: Timestamp) -> Result<(), AgentError> {
        let Some(path) = &self.config.drift_baseline else {
            return Ok(());
        };
        let drift = Drift::open(path, self.config.drift_learn.get(), now)?;
        let _ = self.drift.set(Mutex::new(drift));
        Ok(())
    }

    /// The `/api/v1/drift` answer (`None`: drift detection is off).
    pub(crate) fn drift_report(&self) -> Option<DriftReport> {
        self.with_drift(|d| d.report(Timestamp::now()))
    }

    /// Reloads the drift baseline if its file changed (a bad file: a warning, the baseline in
    /// use is kept), then writes the edges learned since the last write.
    pub(crate) fn poll_drift(&self, now: Timestamp) {
        self.with_drift(|d| {
            if let Some(Err(e)) = d.reload_if_changed(now) {
                tracing::warn!(
                    "drift baseline reload failed, keeping the baseline in use: {}",
                    Chain(&e)
                );
            }
            d.persist(now);
        });
    }

    /// Writes the edges learned since the last write (at shutdown).
    pub(super) fn persist_drift(&self, now: Timestamp) {
        self.with_drift(|d| d.persist(now));
    }

    /// Judges a new counted, attributed flow's edge against the drift baseline: learned,
    /// known, or counted in `drift_flows_total` (logged the first time, bounded). `series`: the
    /// flow path's ([`super::Flows::series`]).
    pub(super) fn observe_drift(
        &self,
        series: &mut SeriesCache,
        f: &StoredFlow,
        protocol: Protocol,
    ) {
        if self.drift.get().is_none() {
            return;
        }
        let edge = Edge::new(
            &f.peers.src.metric,
            &f.peers.dst.metric,
            f.dst_port,
            protocol,
        );
        let at = f.first_seen().unwrap_or_else(Timestamp::now);
        let observed = self.with_drift(|d| match d.observe(edge.clone(), at) {
            Observed::Drift { kind, first } => Some((kind, first && d.should_log())),
            _ => None,
        });
        let Some(Some((kind, log))) = observed else {
            return;
        };
        let labels = series.labels(&self.metrics, &f.peers, f.dst_port, protocol);
        self.metrics.record_drift(labels, kind);
        if log {
            let port = match edge.port {
                Some(p) => format!("{p}/{protocol}"),
                None => protocol.to_string(),
            };
            tracing::warn!(
                src = %Edge::peer_name(&edge.src),
                dst = %Edge::peer_name(&edge.dst),
                port = %port,
                kind = kind.as_str(),
                "new dependency outside the drift baseline (logged once per edge; every such flow counts in netpol_observe_drift_flows_total)"
            );
        }
    }
}
