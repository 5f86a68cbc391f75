//! `netpol-observe-bench inventory`: the inventory-at-scale benchmark behind
//! `cargo xtask bench inventory` (one run per process, so that the RSS is the run's own).

use crate::outln;
use std::process::ExitCode;

use netpol_observe_devkit::bench::inventory::{self as bench, Config, Mode};

/// Arguments of `netpol-observe-bench inventory`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Pods in the synthetic cluster.
    #[arg(long, default_value_t = 100_000)]
    pub pods: usize,
    /// NetworkPolicies.
    #[arg(long, default_value_t = 5_000)]
    pub policies: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 500)]
    pub namespaces: usize,
    /// Pod changes per second.
    #[arg(long, default_value_t = 100)]
    pub rate: usize,
    /// Seconds of changes.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// How snapshots become models: `full` (every snapshot compiled anew, as before) or
    /// `incremental`.
    #[arg(long, value_enum, default_value_t = Mode::Incremental)]
    pub mode: Mode,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// Runs one measurement and prints it.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let r = bench::run(Config {
        pods: args.pods,
        policies: args.policies,
        namespaces: args.namespaces,
        rate: args.rate,
        seconds: args.seconds,
        mode: args.mode,
        seed: 1,
    })
    .await?;
    if args.json {
        outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        outln!(
            "{:?}: {} pods, {} policies; initial build {:.1} s; {} changes, {} models (median {:.0} ms); CPU {:.3} core; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} unreflected); RSS {:.0} MiB, peak {:.0} MiB",
            r.mode,
            r.pods,
            r.policies,
            r.initial_build_s,
            r.changes,
            r.models,
            r.model_ms_p50,
            r.cpu_fraction,
            r.latency_ms_p50,
            r.latency_ms_p99,
            r.latency_ms_max,
            r.unreflected,
            r.rss_mib,
            r.hwm_mib
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
