//! `netpol-observe-bench recommend`: one measurement of the recommender benchmark
//! behind `cargo xtask bench recommend`. Synthetic attributed flows over `--workloads`
//! workloads (`bench::recommend::synthetic`), then `Recommender::new` + `recommend` +
//! `render_yaml` on one thread; prints one JSON object with the time and the peak memory.

use crate::outln;
use std::{process::ExitCode, time::Instant};

use anyhow::Context;
use netpol_observe_core::{
    attribution::Subnets,
    flow::jsonl,
    recommend::{RecommendConfig, Recommender, render_yaml},
};
use netpol_observe_devkit::bench::{process_cpu_seconds, recommend as bench};

/// Arguments of `netpol-observe-bench recommend`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Workloads (Deployments of two pods, 100 per namespace).
    #[arg(long, default_value_t = 5_000)]
    pub workloads: usize,
    /// Flow records.
    #[arg(long, default_value_t = 1_000_000)]
    pub flows: usize,
    /// Skip the self-check (the recommended policies evaluated against every edge).
    #[arg(long)]
    pub no_self_check: bool,
    /// How the records reach the recommender: `held` (generated into memory first, then
    /// `recommend`), `streamed` (generated one by one into `Recommender::aggregate`, timed),
    /// `jsonl` (read from `--file` as `recommend --flows FILE` reads it: streamed).
    #[arg(long, value_enum, default_value = "held")]
    pub input: Input,
    /// The JSON-lines file of `--input jsonl`.
    #[arg(long, value_name = "FILE", required_if_eq("input", "jsonl"))]
    pub file: Option<std::path::PathBuf>,
    /// Only write the `--flows` synthetic records to this file as JSON lines (for `--input
    /// jsonl`), then exit.
    #[arg(long, value_name = "FILE")]
    pub write_jsonl: Option<std::path::PathBuf>,
}

/// How the records reach the recommender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Input {
    /// All in memory first.
    Held,
    /// Generated one by one, folded as they come.
    Streamed,
    /// Read from a JSON-lines file, folded as they are read.
    Jsonl,
}

/// Runs one measurement and prints it as JSON.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let result = tokio::task::spawn_blocking(move || measure(&args)).await??;
    outln!("{result}")?;
    Ok(ExitCode::SUCCESS)
}

fn measure(args: &Args) -> anyhow::Result<serde_json::Value> {
    if let Some(path) = &args.write_jsonl {
        let inventory = bench::synthetic_inventory(args.workloads);
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        for f in bench::synthetic_flows(&inventory, args.workloads, args.flows) {
            jsonl::write_line(&mut out, &f)?;
        }
        std::io::Write::flush(&mut out)?;
        return Ok(serde_json::json!({ "written": args.flows, "file": path }));
    }
    let (inventory, held) = match args.input {
        Input::Held => bench::synthetic(args.workloads, args.flows),
        _ => (bench::synthetic_inventory(args.workloads), Vec::new()),
    };
    let input_rss_kb = status_kb("VmRSS:");
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let process_cpu_start = process_cpu_seconds();
    let config = RecommendConfig {
        self_check: !args.no_self_check,
        ..RecommendConfig::default()
    };
    let recommender = Recommender::new(&inventory, &Subnets::default(), config);
    let mut passes = 0;
    let mut bad = 0;
    let (rec, records, groups) = match args.input {
        Input::Held => (recommender.recommend(&held), held.len(), held.len()),
        Input::Streamed => {
            let agg = recommender.aggregate(|agg| {
                passes += 1;
                for f in bench::synthetic_flows(&inventory, args.workloads, args.flows) {
                    agg.push(f, None);
                }
                anyhow::Ok(())
            })?;
            let rec = recommender.recommend_aggregate(&agg);
            (rec, agg.records(), agg.groups())
        }
        Input::Jsonl => {
            let path = args.file.as_deref().context("--input jsonl needs --file")?;
            let agg = recommender.aggregate(|agg| {
                passes += 1;
                agg.fold_file(path, |_| bad += 1);
                anyhow::Ok(())
            })?;
            let rec = recommender.recommend_aggregate(&agg);
            (rec, agg.records(), agg.groups())
        }
    };
    let recommend_ms = start.elapsed().as_secs_f64() * 1e3;
    let yaml = render_yaml(&rec.policies)?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = thread_cpu_ns().saturating_sub(cpu_start) as f64 / 1e6;
    let process_cpu_ms = (process_cpu_seconds() - process_cpu_start) * 1e3;
    Ok(serde_json::json!({
        "input": format!("{:?}", args.input).to_lowercase(),
        "records": records,
        "groups": groups,
        "passes": passes,
        "bad_lines": bad,
        "yaml_sha": fnv(yaml.as_bytes()),
        "flows": records,
        "workloads": args.workloads,
        "edges": rec.stats.edges,
        "policies": rec.policies.len(),
        "yaml_bytes": yaml.len(),
        "recommend_ms": recommend_ms,
        "total_ms": total_ms,
        "cpu_ms": cpu_ms,
        "process_cpu_ms": process_cpu_ms,
        "input_rss_kb": input_rss_kb,
        "peak_rss_kb": status_kb("VmHWM:"),
    }))
}

/// FNV-1a of the YAML, in hex: the same input must give the same bytes in every mode.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Time this thread spent on a CPU, in ns (`/proc/thread-self/schedstat`; 0 where
/// unavailable): unlike wall time, not inflated when other processes share the core.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// A `kB` field of `/proc/self/status` (0 where unavailable).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
