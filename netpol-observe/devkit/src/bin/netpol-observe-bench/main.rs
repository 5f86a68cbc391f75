//! `netpol-observe-bench`: the benchmark runs behind `cargo xtask bench` (one process per
//! measurement, so that memory figures are the process's own). Not shipped with the product.

mod agent;
mod engine;
mod hooks;
mod inventory;
mod recommend;

use std::{io::Write, process::ExitCode};

use clap::{Parser, Subcommand};

/// Writes a line to stdout; an error (a closed pipe) is returned, not a panic.
macro_rules! outln {
    () => {
        std::io::Write::write_all(&mut std::io::stdout().lock(), b"\n")
    };
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )
    };
}
pub(crate) use outln;

/// netpol-observe's benchmarks (run by `cargo xtask bench …`).
#[derive(Debug, Parser)]
#[command(name = "netpol-observe-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Policy engine benchmark (`cargo xtask bench engine`).
    Engine(engine::Args),
    /// Recommender benchmark (`cargo xtask bench recommend`).
    Recommend(recommend::Args),
    /// Agent pipeline benchmark (`cargo xtask bench agent`).
    Agent(agent::Args),
    /// Inventory at cluster scale: pod churn through the live inventory into models
    /// (`cargo xtask bench inventory`).
    Inventory(inventory::Args),
    /// Datapath hook helpers (`cargo xtask bench datapath`).
    Hooks(hooks::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs to stderr ("datapath attached" is what `cargo xtask bench datapath` waits for).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {err}"
            );
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Engine(args) => engine::run(args).await,
            Command::Recommend(args) => recommend::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Hooks(args) => hooks::run(args).await,
            Command::Inventory(args) => inventory::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(2)
        }
    }
}
