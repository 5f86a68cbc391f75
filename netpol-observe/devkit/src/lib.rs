//! netpol-observe's development kit (not shipped): the benchmark harnesses behind
//! `cargo xtask bench` ([`bench`]) and the `netpol-observe-bench` binary that runs them. The
//! synthetic clusters they use live in the core behind its `testing` feature
//! (`netpol_observe_core::policy::synth`).

pub mod bench;
