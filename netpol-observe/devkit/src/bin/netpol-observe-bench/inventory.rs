//! `netpol-observe-bench inventory`: the inventory-at-scale benchmark behind
//! `cargo xtask bench inventory` (one run per process, so that the RSS is the run's own; the
//! cluster and its changes come from a second process, this binary with `--produce`).

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
    /// The live inventory's debounce, ms.
    #[arg(long, default_value_t = 500)]
    pub debounce_ms: u64,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
    /// Be the producer: write the cluster and its changes to stdout (what the measuring
    /// process starts).
    #[arg(long, hide = true)]
    pub produce: bool,
}

/// Runs one measurement and prints it.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config {
        pods: args.pods,
        policies: args.policies,
        namespaces: args.namespaces,
        rate: args.rate,
        seconds: args.seconds,
        mode: args.mode,
        seed: 1,
        debounce: std::time::Duration::from_millis(args.debounce_ms),
    };
    if args.produce {
        // Blocking, on the runtime's own thread: nothing else runs in this process.
        bench::produce(&config, std::io::stdout().lock(), std::io::stdin().lock())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut producer = std::process::Command::new(std::env::current_exe()?);
    producer.args([
        "inventory",
        "--produce",
        "--pods",
        &args.pods.to_string(),
        "--policies",
        &args.policies.to_string(),
        "--namespaces",
        &args.namespaces.to_string(),
        "--rate",
        &args.rate.to_string(),
        "--seconds",
        &args.seconds.to_string(),
    ]);
    let r = bench::run(config, producer).await?;
    if args.json {
        outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        outln!(
            "{:?}: {} pods, {} policies; initial build {:.1} s; {} changes, {} models (median {:.0} ms); CPU {:.3} core; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} unreflected); RSS {:.0} MiB, peak {:.0} MiB (first model: RSS {:.0}, peak {:.0}); heap MiB: stores ns+policies {:.1}, pods {:.1}, snapshot {:.1}, model {:.1} (pod table {:.1}, engine {:.1}, attributor {:.1}), end {:.1}",
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
            r.hwm_mib,
            r.rss_initial_mib,
            r.hwm_initial_mib,
            r.heap.stores_policies_mib,
            r.heap.store_pods_mib,
            r.heap.snapshot_mib,
            r.heap.model_mib,
            r.heap.pod_table_mib,
            r.heap.engine_mib,
            r.heap.attributor_mib,
            r.heap.end_mib,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
