//! `cargo xtask bench inventory`: the agent's inventory upkeep on a large cluster (100k pods,
//! 5k NetworkPolicies, 100 pod changes/s by default) through `netpol-observe-bench
//! inventory`: full builds (every snapshot compiled anew, as before) and incremental updates,
//! interleaved (alternating which goes first), one process per run, pinned to one CPU when
//! `taskset` exists. `--pairs N` sets the number of pairs; extra arguments go to the runner
//! (e.g. `-- --seconds 10`).

use std::path::Path;

use anyhow::Result;

/// Builds the release runner and runs the interleaved pairs.
pub(super) fn run(root: &Path, pairs: usize, extra: &[String]) -> Result<()> {
    let bin = super::bench_binary(root)?;
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            ["full", "incremental"]
        } else {
            ["incremental", "full"]
        };
        for mode in order {
            let mut cmd = super::pinned(&bin);
            cmd.current_dir(root)
                .args(["inventory", "--mode", mode])
                .args(extra);
            crate::run(&mut cmd)?;
        }
    }
    Ok(())
}
