//! `netpol-observe-bench engine`: the policy engine benchmark behind
//! `cargo xtask bench engine`. Runs on one thread.

use crate::outln;
use std::process::ExitCode;

use netpol_observe_devkit::bench::engine::{self as bench, BenchConfig, BenchRow};

/// Arguments of `netpol-observe-bench engine`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Pods in the synthetic cluster.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// Policy counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1_000, 10_000])]
    pub policies: Vec<usize>,
    /// Verdicts per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub evaluations: usize,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark and prints the medians.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = BenchConfig {
        pods: args.pods,
        namespaces: args.namespaces,
        policy_counts: args.policies,
        evaluations: args.evaluations,
        rounds: args.rounds,
        ..BenchConfig::default()
    };
    // One core: the measurement runs on a single blocking thread.
    let rows = tokio::task::spawn_blocking(move || bench::run(&config)).await??;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let first = |f: fn(&BenchRow) -> f64| rows.first().map(f).unwrap_or(1.0);
    let base = first(|r| r.verdicts_per_sec);
    let base_read = first(|r| r.read_verdicts_per_sec);
    let base_compact = first(|r| r.compact_verdicts_per_sec);
    outln!(
        "| policies | compile (median) | verdicts/s, explained (median) | slowdown | verdicts/s, explained and read (median) | slowdown | verdicts/s, compact (median) | slowdown | allowed | rounds, explained (verdicts/s) |"
    )?;
    outln!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for r in &rows {
        let samples: Vec<String> = r
            .samples
            .iter()
            .map(|s| format!("{:.2}M", s / 1e6))
            .collect();
        outln!(
            "| {} | {:.1} ms | {:.2} M | {:.2}× | {:.2} M | {:.2}× | {:.2} M | {:.2}× | {:.0} % | {} |",
            r.policies,
            r.compile_ms,
            r.verdicts_per_sec / 1e6,
            base / r.verdicts_per_sec.max(1e-9),
            r.read_verdicts_per_sec / 1e6,
            base_read / r.read_verdicts_per_sec.max(1e-9),
            r.compact_verdicts_per_sec / 1e6,
            base_compact / r.compact_verdicts_per_sec.max(1e-9),
            r.allowed_share * 100.0,
            samples.join(" ")
        )?;
    }
    // The quality bar: explained-and-read verdicts at 10k policies, and their slowdown from
    // the first (smallest) count.
    if let (Some(first), Some(at_10k)) = (rows.first(), rows.iter().find(|r| r.policies == 10_000))
    {
        let (lo, hi) = spread(&at_10k.read_samples);
        outln!(
            "explained and read at 10k: {:.2} M/s (rounds {:.2}–{:.2} M), target ≥ 1M/s; slowdown {}→10k: {:.2}×, target ≤ 3×",
            at_10k.read_verdicts_per_sec / 1e6,
            lo / 1e6,
            hi / 1e6,
            first.policies,
            first.read_verdicts_per_sec / at_10k.read_verdicts_per_sec.max(1e-9),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The smallest and largest of `samples` (0 when there are none).
fn spread(samples: &[f64]) -> (f64, f64) {
    let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = samples.iter().copied().fold(0.0, f64::max);
    (if lo.is_finite() { lo } else { 0.0 }, hi)
}
