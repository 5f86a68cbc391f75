//! `cargo xtask bench engine`: the policy engine on one core — 1M verdicts against 10 / 100 /
//! 1k / 10k policies over 10k pods in 100 namespaces, interleaved rounds, medians (the work is
//! in `netpol_observe_devkit::bench::engine`, run through `netpol-observe-bench engine`).
//!
//! With `-- --before BIN` (a `netpol-observe-bench` built from an earlier commit) every pair
//! runs one round of each build, each in its own process, alternating which goes first, and
//! the table gives both builds' medians and min–max side by side, then each count's
//! after / before ratios per pair. `-- --after BIN` measures a prebuilt binary instead of this
//! tree (`--after X --before X`: an A/A run, the noise floor of the ratios).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::stats::{Arms, quantile, spread};

/// Builds the release binary and runs the benchmark pinned to one CPU when `taskset` exists.
pub(super) fn run(root: &Path, pairs: usize, extra: &[String]) -> Result<()> {
    let (builds, rest) = super::Builds::take(extra)?;
    let bin = builds.after_binary(root)?;
    let Some(before) = builds.before else {
        let mut cmd = super::pinned(&bin);
        cmd.current_dir(root).arg("engine").args(&rest);
        return crate::run(&mut cmd);
    };
    let arms: [(&str, PathBuf); 2] = [("after", bin), ("before", before)];
    // rows[arm]: every round's rows (one per policy count).
    let mut rows: [Vec<serde_json::Value>; 2] = Default::default();
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for a in order {
            let mut cmd = super::pinned(&arms[a].1);
            cmd.current_dir(root)
                .args(["engine", "--rounds", "1", "--json"])
                .args(&rest);
            let out = super::json_output(&mut cmd)?;
            let round = out
                .as_array()
                .with_context(|| format!("{} printed no rows", arms[a].0))?;
            eprintln!(
                "pair {} {}: {} policy counts",
                pair + 1,
                arms[a].0,
                round.len()
            );
            rows[a].extend(round.iter().cloned());
        }
    }
    println!(
        "| policies | build | explained and read, M/s (median, min–max) | compact, M/s (median, min–max) | compile (median) |"
    );
    println!("|---:|---|---:|---:|---:|");
    let mut counts: Vec<u64> = rows[0]
        .iter()
        .filter_map(|r| r["policies"].as_u64())
        .collect();
    counts.sort_unstable();
    counts.dedup();
    let mut read_medians = [Vec::new(), Vec::new()];
    for n in &counts {
        for (a, (arm, _)) in arms.iter().enumerate() {
            let field = |key: &str| -> Vec<f64> {
                rows[a]
                    .iter()
                    .filter(|r| r["policies"].as_u64() == Some(*n))
                    .filter_map(|r| r[key].as_f64())
                    .collect()
            };
            let (read, rlo, rhi) = spread(&field("read_verdicts_per_sec"));
            let (compact, clo, chi) = spread(&field("compact_verdicts_per_sec"));
            let (compile, _, _) = spread(&field("compile_ms"));
            read_medians[a].push(read);
            println!(
                "| {n} | {arm} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {compile:.1} ms |",
                read / 1e6,
                rlo / 1e6,
                rhi / 1e6,
                compact / 1e6,
                clo / 1e6,
                chi / 1e6,
            );
        }
    }
    print_pair_ratios(&counts, &rows);
    // The quality bar: explained-and-read verdicts at the largest count (10k by default), and
    // their slowdown from the smallest.
    for (a, (arm, _)) in arms.iter().enumerate() {
        if let (Some(first), Some(last)) = (read_medians[a].first(), read_medians[a].last()) {
            println!(
                "{arm}: explained and read at {} policies {:.2} M/s (target ≥ 1M/s), slowdown from {}: {:.2}× (target ≤ 3×)",
                counts.last().copied().unwrap_or(0),
                last / 1e6,
                counts.first().copied().unwrap_or(0),
                first / last.max(1e-9),
            );
        }
    }
    Ok(())
}

/// Each count's after / before ratios per pair: the two runs of a pair are adjacent, so the
/// machine's drift between pairs cancels out of them.
fn print_pair_ratios(counts: &[u64], rows: &[Vec<serde_json::Value>; 2]) {
    println!();
    println!(
        "| policies | compact, after / before per pair: median (interquartile, min–max) | explained and read, the same |"
    );
    println!("|---:|---:|---:|");
    for n in counts {
        let ratio = |key: &str| {
            let mut arms = Arms::new(key.to_owned(), &["after", "before"]);
            for (a, runs) in arms.runs.iter_mut().enumerate() {
                runs.extend(
                    rows[a]
                        .iter()
                        .filter(|r| r["policies"].as_u64() == Some(*n))
                        .filter_map(|r| r[key].as_f64()),
                );
            }
            let r = arms.round_ratios(0, 1);
            format!(
                "{:.3} ({:.3}–{:.3}, {:.3}–{:.3})",
                quantile(&r, 0.5),
                quantile(&r, 0.25),
                quantile(&r, 0.75),
                quantile(&r, 0.0),
                quantile(&r, 1.0)
            )
        };
        println!(
            "| {n} | {} | {} |",
            ratio("compact_verdicts_per_sec"),
            ratio("read_verdicts_per_sec")
        );
    }
}
