//! netpol-observe's development kit (not shipped): the benchmark harnesses behind
//! `cargo xtask bench` ([`bench`]) and the `netpol-observe-bench` binary that runs them. The
//! synthetic clusters they use and the reference evaluator the engine is checked against live in
//! the core behind its `testing` feature (`netpol_observe_core::policy::{synth, reference}`).

pub mod bench;
