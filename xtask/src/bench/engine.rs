//! `cargo xtask bench engine`: the policy engine on one core — 1M verdicts against 10 / 100 /
//! 1k / 10k policies over 10k pods in 100 namespaces, interleaved rounds, medians (the work is
//! in `netpol_observe_devkit::bench::engine`, run through `netpol-observe-bench engine`).

use std::path::Path;

use anyhow::Result;

/// Builds the release binary and runs the benchmark pinned to one CPU when `taskset` exists.
pub(super) fn run(root: &Path, args: &[String]) -> Result<()> {
    let bin = super::bench_binary(root)?;
    let mut cmd = super::pinned(&bin);
    cmd.current_dir(root).arg("engine").args(args);
    crate::run(&mut cmd)
}
