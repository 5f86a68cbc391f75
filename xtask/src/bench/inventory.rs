//! `cargo xtask bench inventory`: the agent's inventory upkeep on a large cluster (100k pods,
//! 5k NetworkPolicies, 100 pod changes/s by default) through `netpol-observe-bench
//! inventory`, one process per run, pinned to one CPU when `taskset` exists, interleaved
//! (alternating which arm goes first). Arms: full builds (every snapshot compiled anew) and
//! incremental updates; with `-- --before BIN` (a `netpol-observe-bench` built from an
//! earlier commit), this build's incremental updates and the earlier build's (`--after BIN`:
//! a prebuilt binary stands for this build). `--pairs N` sets
//! the number of pairs; other extra arguments go to the runner (e.g. `-- --seconds 10`). Each
//! run's line is printed as it ends, then medians and min–max per arm.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::stats::spread;

/// The figures summarised per arm: JSON field, column title, scale.
const FIGURES: [(&str, &str, f64); 7] = [
    ("cpu_fraction", "upkeep, core", 1.0),
    ("latency_ms_p50", "latency p50, s", 1e-3),
    ("latency_ms_p99", "latency p99, s", 1e-3),
    ("model_ms_p50", "model, ms", 1.0),
    ("rss_initial_mib", "RSS first model, MiB", 1.0),
    ("rss_mib", "RSS end, MiB", 1.0),
    ("hwm_mib", "peak RSS, MiB", 1.0),
];

/// Builds the release runner and runs the interleaved pairs.
pub(super) fn run(root: &Path, pairs: usize, extra: &[String]) -> Result<()> {
    let (builds, rest) = super::Builds::take(extra)?;
    let bin = builds.after_binary(root)?;
    let arms: Vec<(&str, PathBuf, &str)> = match builds.before {
        Some(b) => vec![("after", bin, "incremental"), ("before", b, "incremental")],
        None => vec![
            ("full", bin.clone(), "full"),
            ("incremental", bin, "incremental"),
        ],
    };
    let mut reports = vec![Vec::new(); arms.len()];
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for a in order {
            let (arm, bin, mode) = &arms[a];
            let mut cmd = super::pinned(bin);
            cmd.current_dir(root)
                .args(["inventory", "--json", "--mode", mode])
                .args(&rest);
            let report = super::json_output(&mut cmd)?;
            eprintln!("pair {} {arm}: {report}", pair + 1);
            reports[a].push(report);
        }
    }
    let titles: Vec<&str> = FIGURES.iter().map(|f| f.1).collect();
    println!("| arm | {} |", titles.join(" | "));
    println!("|---|{}", "---:|".repeat(FIGURES.len()));
    for (a, (arm, _, _)) in arms.iter().enumerate() {
        let cells: Vec<String> = FIGURES
            .iter()
            .map(|(key, _, scale)| {
                let v: Vec<f64> = reports[a]
                    .iter()
                    .filter_map(|r| r[*key].as_f64())
                    .map(|x| x * scale)
                    .collect();
                let (m, lo, hi) = spread(&v);
                format!("{m:.2} ({lo:.2}–{hi:.2})")
            })
            .collect();
        println!("| {arm} | {} |", cells.join(" | "));
    }
    Ok(())
}
