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
//!
//! The state, by who writes it: the flow path's (`flows`: store, model, series, DNS,
//! enforcement) behind one lock; readiness (`readiness`) and drift detection (`drift_watch`)
//! behind a leaf lock each. The event loop (`run`) writes them; the model builder (`rebuild`)
//! and the inventory's source (`source`) feed it.

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
mod drift_watch;
mod enforcement;
#[cfg(test)]
mod enforcement_tests;
mod flows;
pub mod model;
pub mod nat;
mod observed;
pub mod peer;
#[cfg(test)]
mod pipeline_tests;
mod readiness;
mod rebuild;
mod run;
mod series;
mod source;
pub mod store;
#[cfg(test)]
mod test_kit;

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard, PoisonError},
};

pub use capture::{Capture, CaptureEnd, KernelCapture};
pub use config::{AgentConfig, ConfigError, DEFAULT_DROP_REASONS, MetricsSettings};
pub use model::Model;
pub use run::Agent;
pub use store::{Evicted, FlowId, FlowQuery, FlowStore, Judged, ObservedFlow, StoredFlow};

use crate::{
    attribution::AttributionError,
    datapath::{DatapathError, DropsError},
    inventory::InventoryError,
    metrics::Metrics,
    policy::PolicyError,
};
use flows::Flows;

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

/// The agent's shared state: what the HTTP API reads and the event loop writes.
///
/// Three locks, none ever taken while another is held except `drift` under `flows`:
/// - `flows`: everything the flow path mutates together (the flow store, the model in use,
///   metric series, DNS names, the enforcement state), taken once per update, drop, DNS answer
///   or model install; HTTP readers take it per chunk of flows and release it;
/// - `readiness`: `/readyz`, a leaf;
/// - `drift`: drift detection, a leaf reached only through a closure over it.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    node: Option<String>,
    metrics: Metrics,
    flows: Mutex<Flows>,
    readiness: Mutex<readiness::Readiness>,
    drift: drift_watch::DriftLock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AgentState {
    /// A state for `config` (no inventory, nothing attached yet).
    pub fn new(config: AgentConfig) -> AgentState {
        let node = config.node_name.clone().or_else(crate::host::hostname);
        crate::host::fix_mmap_threshold();
        AgentState {
            metrics: Metrics::new(config.metrics_config()),
            flows: Mutex::new(Flows::new(config.max_flows, config.dns_grace.unsigned())),
            readiness: Mutex::default(),
            drift: drift_watch::DriftLock::new(),
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

    /// The flow path's state ([`Flows`]), locked.
    fn lock_flows(&self) -> MutexGuard<'_, Flows> {
        lock(&self.flows)
    }
}
