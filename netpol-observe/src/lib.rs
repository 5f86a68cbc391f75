//! netpol-observe: an eBPF-backed flow observer and NetworkPolicy recommender for Kubernetes.
//! This crate is the command line on top of the core ([`netpol_observe_core`]: model and
//! engine), the agent ([`netpol_observe_agent`]) and the lab ([`netpol_observe_lab`]). See
//! `docs/architecture.md`.

// The other crates' modules under their short names, as the command line's code reads them.
use netpol_observe_agent::{agent, app, drift, http, inventory, tls};
use netpol_observe_core::{attribution, flow, names, policy, recommend, report, yaml};
use netpol_observe_lab as lab;

pub mod cli;
