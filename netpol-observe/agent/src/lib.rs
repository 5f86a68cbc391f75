//! The netpol-observe node agent: the eBPF datapath ([`datapath`]), the live inventory
//! ([`inventory`]), the flow store and verdicts ([`agent`]), Prometheus metrics ([`metrics`]) and
//! the HTTP API ([`http`]), composed by [`app`]. See `docs/architecture.md`.

// The core's modules under their short names, as the agent's code reads them.
use netpol_observe_core::{attribution, flow, policy, recommend, report, yaml};

pub mod agent;
pub mod app;
pub mod datapath;
pub mod drift;
pub mod host;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod tls;
