//! netpol-observe: an eBPF-backed flow observer and NetworkPolicy recommender for Kubernetes.
//!
//! See `docs/architecture.md` for how the modules fit together. The engine modules
//! ([`policy`], [`recommend`], [`attribution`]) are pure: no I/O, fed by plain data.

pub mod agent;
pub mod attribution;
pub mod cli;
pub mod datapath;
pub mod drift;
pub mod flow;
pub mod http;
pub mod inventory;
pub mod lab;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod recommend;
pub mod tls;
pub mod yaml;
