//! `cargo xtask bench recommend [--pairs ROUNDS] [-- --sizes N,N… --before BIN --before-max N]`:
//! the recommender on one core — 1M and 10M attributed flow records over 5k workloads. Each
//! measurement is its own process (`netpol-observe-bench recommend`, pinned to one CPU when
//! `taskset` exists) so that the peak memory (VmHWM) is per run; runs are interleaved round by
//! round. Arms: `jsonl` (the records written once to a JSON-lines file under `target/`, then
//! read and folded as `recommend --flows FILE` does), `streamed` (generated one by one into
//! the aggregate: no parsing), and with `--before BIN` (a `netpol-observe-bench` built from an
//! earlier commit) `before` — its own default, the records held in memory — for sizes up to
//! `--before-max` (default 1M: 10M held records need more than 20 GB). Medians and min–max are
//! printed as a Markdown table for `docs/benchmarks.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::stats::spread;

/// Builds the release binary, writes the inputs and runs the interleaved rounds.
pub(super) fn run(root: &Path, rounds: usize, extra: &[String]) -> Result<()> {
    let mut sizes: Vec<usize> = vec![1_000_000, 10_000_000];
    let mut before: Option<PathBuf> = None;
    let mut before_max = 1_000_000;
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => {
                sizes = value()?
                    .split(',')
                    .map(|s| s.parse().with_context(|| format!("size {s:?}")))
                    .collect::<Result<_>>()?
            }
            "--before" => before = Some(PathBuf::from(value()?)),
            "--before-max" => before_max = value()?.parse().context("--before-max")?,
            other => bail!("unknown argument {other:?} (--sizes, --before, --before-max)"),
        }
    }
    let bin = super::bench_binary(root)?;
    let dir = root.join("target/bench-recommend");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut files = Vec::new();
    for size in &sizes {
        let file = dir.join(format!("flows-{size}.jsonl"));
        measure(
            &bin,
            &[
                "--flows",
                &size.to_string(),
                "--write-jsonl",
                &file.display().to_string(),
            ],
        )?;
        files.push(file);
    }
    let mut arms: Vec<(&str, PathBuf)> = vec![("jsonl", bin.clone()), ("streamed", bin)];
    if let Some(b) = &before {
        arms.insert(0, ("before", b.clone()));
    }
    let mut samples: Vec<Vec<Vec<serde_json::Value>>> =
        vec![vec![Vec::new(); arms.len()]; sizes.len()];
    for round in 0..rounds {
        for (s, size) in sizes.iter().enumerate() {
            for (a, (arm, b)) in arms.iter().enumerate() {
                let n = size.to_string();
                let file = files[s].display().to_string();
                let args: Vec<&str> = match *arm {
                    "before" if *size > before_max => continue,
                    "before" => vec!["--flows", &n],
                    "streamed" => vec!["--flows", &n, "--input", "streamed"],
                    _ => vec!["--flows", &n, "--input", "jsonl", "--file", &file],
                };
                let v = measure(b, &args)?;
                eprintln!("round {} size {size} {arm}: {v}", round + 1);
                samples[s][a].push(v);
            }
        }
    }
    for file in &files {
        let _ = std::fs::remove_file(file);
    }
    println!(
        "| records | arm | groups | policies | wall (median, min–max) | on-CPU (median) | µs per record (on-CPU) | CPU, all threads (median) | peak RSS (median, min–max) | YAML |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (s, size) in sizes.iter().enumerate() {
        for (a, (arm, _)) in arms.iter().enumerate() {
            let runs = &samples[s][a];
            let Some(first) = runs.first() else { continue };
            let field =
                |key: &str| -> Vec<f64> { runs.iter().filter_map(|v| v[key].as_f64()).collect() };
            let (wall, wmin, wmax) = spread(&field("total_ms"));
            let (cpu, _, _) = spread(&field("cpu_ms"));
            // Builds before the parallel flow-file reader do not report it.
            let process = field("process_cpu_ms");
            let process = match process.is_empty() {
                true => "–".to_owned(),
                false => format!("{:.2} s", spread(&process).0 / 1e3),
            };
            let rss: Vec<f64> = field("peak_rss_kb").iter().map(|k| k / 1024.0).collect();
            let (rss, rmin, rmax) = spread(&rss);
            println!(
                "| {size} | {arm} | {} | {} | {:.2} s ({:.2}–{:.2}) | {:.2} s | {:.2} | {process} | {rss:.0} MiB ({rmin:.0}–{rmax:.0}) | {} |",
                first["groups"].as_u64().unwrap_or(0),
                first["policies"].as_u64().unwrap_or(0),
                wall / 1e3,
                wmin / 1e3,
                wmax / 1e3,
                cpu / 1e3,
                cpu * 1e3 / *size as f64,
                first["yaml_sha"].as_str().unwrap_or("–"),
            );
        }
    }
    Ok(())
}

/// One pinned `netpol-observe-bench recommend` run: its JSON line.
fn measure(bin: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = super::pinned(bin);
    cmd.args(["recommend", "--workloads", "5000"]).args(args);
    super::json_output(&mut cmd)
}
