//! `cargo xtask bench agent`: the agent's userspace pipeline (attribution, live and staged
//! verdicts, metrics, flow store) on one core — new flows per second and RSS at 10k and 100k
//! flows — through `netpol-observe-bench agent` (one child process per round and
//! view: random pairs with streamed inputs, the same with held inputs, repeated pairs).
//! `--pairs N` sets the number of rounds.

use std::path::Path;

use anyhow::Result;

/// Builds the release binary and runs the benchmark pinned to one CPU when `taskset` exists.
pub(super) fn run(root: &Path, rounds: usize) -> Result<()> {
    let bin = super::bench_binary(root)?;
    let mut cmd = super::pinned(&bin);
    cmd.current_dir(root)
        .args(["agent", "--rounds", &rounds.to_string()]);
    crate::run(&mut cmd)
}
