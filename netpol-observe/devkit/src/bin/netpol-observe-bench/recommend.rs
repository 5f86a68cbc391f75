//! `netpol-observe-bench recommend`: one measurement of the recommender benchmark
//! behind `cargo xtask bench recommend`. Synthetic attributed flows over `--workloads`
//! workloads (`bench::recommend::synthetic`), then `Recommender::new` + `recommend` +
//! `render_yaml` on one thread; prints one JSON object with the time and the peak memory.

use crate::outln;
use std::{process::ExitCode, time::Instant};

use netpol_observe_core::{
    attribution::Subnets,
    recommend::{RecommendConfig, Recommender, render_yaml},
};
use netpol_observe_devkit::bench::recommend as bench;

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
}

/// Runs one measurement and prints it as JSON.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let result = tokio::task::spawn_blocking(move || measure(&args)).await??;
    outln!("{result}")?;
    Ok(ExitCode::SUCCESS)
}

fn measure(args: &Args) -> anyhow::Result<serde_json::Value> {
    let (inventory, flows) = bench::synthetic(args.workloads, args.flows);
    let input_rss_kb = status_kb("VmRSS:");
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let config = RecommendConfig {
        self_check: !args.no_self_check,
        ..RecommendConfig::default()
    };
    let recommender = Recommender::new(&inventory, &Subnets::default(), config);
    let rec = recommender.recommend(&flows);
    let recommend_ms = start.elapsed().as_secs_f64() * 1e3;
    let yaml = render_yaml(&rec.policies)?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = thread_cpu_ns().saturating_sub(cpu_start) as f64 / 1e6;
    Ok(serde_json::json!({
        "flows": flows.len(),
        "workloads": args.workloads,
        "edges": rec.stats.edges,
        "policies": rec.policies.len(),
        "yaml_bytes": yaml.len(),
        "recommend_ms": recommend_ms,
        "total_ms": total_ms,
        "cpu_ms": cpu_ms,
        "input_rss_kb": input_rss_kb,
        "peak_rss_kb": status_kb("VmHWM:"),
    }))
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
