//! The command line (`netpol-observe <command>`), the DESIGN contract.
//!
//! Each command lives in its own module with its `Args` and `run`; this module only dispatches
//! and sets up logging. Errors are reported here, once, with their whole chain.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;

mod baseline;
#[cfg(test)]
mod config_docs;
mod evaluate;
mod flows;
#[cfg(test)]
mod help_examples;
mod inputs;
mod lab;
mod out;
mod recommend;
mod recommend_output;
mod verify;

/// eBPF-backed flow observer and NetworkPolicy recommender for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "netpol-observe", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `netpol_observe=debug`.
    #[arg(
        long,
        global = true,
        env = "NETPOL_OBSERVE_LOG",
        default_value = "info"
    )]
    pub log: String,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (the DaemonSet process).
    Agent(Box<agent::Args>),
    /// Print attributed flows from a running agent or a file.
    Flows(flows::Args),
    /// Evaluate flows against NetworkPolicies: each flow with its verdict, as JSON lines.
    Evaluate(evaluate::Args),
    /// Recommend least-privilege NetworkPolicies from observed flows.
    Recommend(recommend::Args),
    /// Check policies against observed flows; exit 1 if any observed flow would be denied.
    Verify(verify::Args),
    /// Build a drift baseline (agent --drift-baseline) from recorded flows.
    Baseline(baseline::Args),
    /// Simulate a Kubernetes node from a scenario file and run the whole product on it (root).
    Lab(lab::Args),
}

/// Parses the command line, runs the command and maps the outcome to an exit code:
/// 0 success, 1 a negative answer (`verify` found denied flows), 2 an error, 141 stdout closed
/// by its reader (see [`out`]).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    crate::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            out::errln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent::run(*args).await,
            Command::Flows(args) => flows::run(args).await,
            Command::Evaluate(args) => evaluate::run(args).await,
            Command::Recommend(args) => recommend::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Baseline(args) => baseline::run(args).await,
            Command::Lab(args) => lab::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        // `… | head`: the reader has what it wanted; end quietly, as a SIGPIPE would.
        Err(err) if out::is_closed_stdout(&err) => ExitCode::from(out::CLOSED_PIPE_STATUS),
        Err(err) => {
            out::errln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

/// `err` and its causes joined by `: `, each cause left out when the message before it already
/// ends with it (many messages name their cause, e.g. `cannot read FILE: <io error>`), so a
/// cause is printed once.
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.ends_with(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr so that stdout stays machine-readable (JSON lines, YAML).
    // A log line that cannot be written is dropped: the default would `eprintln!` about it,
    // which panics when stderr is a closed pipe.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .log_internal_errors(false)
        .try_init();
}

/// Whether log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>) — never in files, pipes or `kubectl logs`.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(std::ffi::OsStr::new(""))));
        assert!(!colour(true, Some(std::ffi::OsStr::new("1"))));
        assert!(!colour(false, None));
    }

    /// A cause is printed once, whether or not the message above it repeats it.
    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let inventory = crate::inventory::InventoryError::Io {
            path: "/nonexistent".into(),
            source: io,
        };
        let err = anyhow::Error::new(inventory).context("agent");
        let text = error_chain(&err);
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        assert!(text.starts_with("agent: "), "{text}");
        let plain = anyhow::anyhow!("outer").context("top");
        assert_eq!(error_chain(&plain), "top: outer");
    }
}
