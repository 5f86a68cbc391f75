//! `cargo xtask bench recommend [ROUNDS]`: the recommender on one core — 10k, 100k and 1M
//! attributed flow records over 5k workloads. Each measurement is its own process
//! (`netpol-observe-bench recommend`, pinned to one CPU when `taskset` exists) so that the
//! peak memory (VmHWM) is per size; sizes are interleaved round by round; medians are printed
//! as a Markdown table for `docs/benchmarks.md`.

use std::path::Path;

use anyhow::{Context, Result, bail};

const SIZES: &[usize] = &[10_000, 100_000, 1_000_000];

/// Builds the release binary and runs the interleaved rounds.
pub(super) fn run(root: &Path, args: &[String]) -> Result<()> {
    let rounds: usize = match args.first() {
        Some(n) => n
            .parse()
            .with_context(|| format!("rounds {n:?} is not a number"))?,
        None => 5,
    };
    let bin = super::bench_binary(root)?;
    let mut samples: Vec<Vec<serde_json::Value>> = vec![Vec::new(); SIZES.len()];
    for round in 0..rounds {
        for (i, size) in SIZES.iter().enumerate() {
            let mut cmd = super::pinned(&bin);
            cmd.args(["recommend", "--workloads", "5000", "--flows"])
                .arg(size.to_string());
            let out = cmd
                .output()
                .with_context(|| format!("cannot run {cmd:?}"))?;
            if !out.status.success() {
                bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("{cmd:?} printed no JSON"))?;
            eprintln!("round {} size {size}: {v}", round + 1);
            samples[i].push(v);
        }
    }
    println!(
        "| flows | edges | policies | wall (median) | on-CPU (median) | flows/s (on-CPU) | on-CPU ratio vs previous size | peak RSS (median) | of which input |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut prev: Option<f64> = None;
    for (i, size) in SIZES.iter().enumerate() {
        let med = |key: &str| {
            let v: Vec<f64> = samples[i].iter().filter_map(|v| v[key].as_f64()).collect();
            super::stats::median(&v)
        };
        let wall = med("total_ms");
        let ms = med("cpu_ms");
        let first = samples[i].first();
        println!(
            "| {size} | {} | {} | {wall:.0} ms | {ms:.0} ms | {:.2} M | {} | {:.0} MB | {:.0} MB |",
            first.map_or(0, |v| v["edges"].as_u64().unwrap_or(0)),
            first.map_or(0, |v| v["policies"].as_u64().unwrap_or(0)),
            *size as f64 / (ms / 1e3) / 1e6,
            prev.map_or_else(|| "–".to_owned(), |p| format!("{:.1}×", ms / p)),
            med("peak_rss_kb") / 1024.0,
            med("input_rss_kb") / 1024.0,
        );
        prev = Some(ms);
    }
    Ok(())
}
