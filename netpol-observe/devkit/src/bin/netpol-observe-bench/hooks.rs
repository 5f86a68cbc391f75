//! `netpol-observe-bench hooks`: helpers of `cargo xtask bench datapath` — attach
//! the no-op program like the agent attaches its flow programs (the baseline arm), and print
//! the run statistics of the programs attached to interfaces.

use crate::outln;
use std::process::ExitCode;

use anyhow::Context;

use netpol_observe_agent::datapath::{InterfaceFilter, NoopHooks, tcx_stats};

/// Arguments of `netpol-observe-bench hooks`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: HooksCommand,
}

/// The `hooks` commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum HooksCommand {
    /// Attach the no-op program (tcx ingress + egress) to matching interfaces until SIGINT or
    /// SIGTERM; logs "datapath attached" once attached.
    Noop {
        /// Interface glob patterns.
        #[arg(long, value_delimiter = ',', required = true)]
        interfaces: Vec<String>,
    },
    /// Print, as JSON lines, the ns per run of the egress program on a DNS answer and on
    /// another UDP packet, with the DNS capture on and off (and through `--baseline-object`),
    /// interleaved (`BPF_PROG_TEST_RUN`).
    DnsCost {
        /// Rounds of every arm.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Program runs per measurement.
        #[arg(long, default_value_t = 20_000)]
        repeat: u32,
        /// Another build's eBPF object (the before of a change).
        #[arg(long, value_name = "PATH")]
        baseline_object: Option<std::path::PathBuf>,
    },
    /// Print, as JSON, the tcx programs attached to these interfaces with their run counts and
    /// run times (counted only while `kernel.bpf_stats_enabled` is 1).
    Stats {
        /// Interface names.
        #[arg(required = true)]
        interfaces: Vec<String>,
    },
}

/// Runs `netpol-observe-bench hooks`.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        HooksCommand::Noop { interfaces } => {
            let filter =
                InterfaceFilter::new(&interfaces, &[] as &[&str]).map_err(anyhow::Error::msg)?;
            let (hooks, names) = NoopHooks::attach(|name| filter.matches(name)).await?;
            tracing::info!(interfaces = ?names, "datapath attached (no-op program)");
            wait_for_signal().await?;
            hooks.detach().await?;
        }
        HooksCommand::DnsCost {
            rounds,
            repeat,
            baseline_object,
        } => {
            let arms = netpol_observe_agent::datapath::dns_cost::dns_capture_cost(
                rounds,
                repeat,
                baseline_object.as_deref(),
            )?;
            for a in arms {
                outln!("{}", serde_json::to_string(&a)?)?;
            }
        }
        HooksCommand::Stats { interfaces } => {
            let mut all = Vec::new();
            for i in &interfaces {
                all.extend(tcx_stats(i)?);
            }
            outln!("{}", serde_json::to_string(&all)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("SIGINT handler")?,
        _ = term.recv() => {}
    }
    Ok(())
}
