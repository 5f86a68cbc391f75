//! `cargo xtask <verb>`: everything around the build that cargo alone does not do.
//!
//! - `setup`: installs what a fresh machine lacks (nightly `rust-src`, `bpf-linker` 0.10.2,
//!   Debian packages used by the tests and the lab).
//! - `test`: setup, then formatting, clippy and every test (the README's test command).
//! - `lab`: setup, build, then the embedded default lab scenario (the README's main command).
//! - `bench <what>`: benchmarks (see `docs/benchmarks.md`).

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Install the prerequisites a fresh machine lacks (idempotent).
    Setup,
    /// Run every check and test: fmt, clippy, unit, engine and real-kernel tests.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the embedded default lab scenario end to end and show the result.
    Lab {
        /// Scenario file (default: deploy/lab/shop.yaml).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Output folder.
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
    },
    /// Run a benchmark (interleaved A/B runs, medians, ratios); see docs/benchmarks.md.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.verb {
        Verb::Setup => setup::all(),
        Verb::Test { args } => test(&root, &args),
        Verb::Lab { scenario, out } => lab(&root, scenario, &out),
        Verb::Bench(args) => bench::run(&root, args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing with its command line when it does not succeed.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

pub(crate) fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    setup::all()?;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci && !is_root() {
        bail!("CI=true: the real-kernel tests need root, and this is not root");
    }
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo(root).args([
        "build",
        "--package",
        "netpol-observe",
        "--bin",
        "netpol-observe",
    ]))?;
    let bin = root.join("target/debug/netpol-observe");
    run(cargo(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("NETPOL_OBSERVE_BIN", &bin))?;
    Ok(())
}

fn lab(root: &Path, scenario: Option<PathBuf>, out: &Path) -> Result<()> {
    setup::all()?;
    if !is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs: run it as root");
    }
    run(cargo(root).args([
        "build",
        "--release",
        "--package",
        "netpol-observe",
        "--bin",
        "netpol-observe",
    ]))?;
    let scenario = scenario.unwrap_or_else(|| root.join("deploy/lab/shop.yaml"));
    // The main command: the agent observes the scenario's traffic, the recommender writes the
    // policies, and those recommended policies are enforced and probed.
    run(Command::new(root.join("target/release/netpol-observe"))
        .current_dir(root)
        .arg("lab")
        .arg("--scenario")
        .arg(&scenario)
        .arg("--out")
        .arg(out)
        .arg("--enforce"))
}
