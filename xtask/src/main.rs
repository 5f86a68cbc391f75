//! `cargo xtask <verb>`: everything around the build that cargo alone does not do.
//!
//! - `setup`: installs what a fresh machine lacks (nightly `rust-src`, `bpf-linker` 0.10.2,
//!   `cargo-deny`, Debian packages used by the tests and the lab).
//! - `test`: setup, then formatting, clippy, cargo-deny and every test (the README's test
//!   command).
//! - `lab`: setup, build, then the embedded default lab scenario (the README's main command).
//! - `bench <what>`: benchmarks (see `docs/benchmarks.md`).

mod bench;
#[cfg(test)]
mod layers;
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
    /// Run every check and test: fmt, clippy, cargo-deny, unit, engine and real-kernel tests.
    Test {
        /// Run the tests with every CPU kept busy by `stress-ng` (the real-kernel tests must
        /// pass on a loaded machine: they wait for conditions, never for a fixed time).
        #[arg(long)]
        under_load: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the embedded default lab scenario end to end and show the result.
    Lab {
        /// Scenario file, relative to the current directory (default: the repository's
        /// deploy/lab/shop.yaml).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Output folder, relative to the current directory (default: lab-out in the
        /// repository).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The soak tier (root): the agent for N minutes under ~100k flows and inventory churn;
    /// fails on a lost flow, growing RSS or a slow exit (tests/tests/soak.rs).
    Soak {
        /// How long.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Flows over the run.
        #[arg(long, default_value_t = 100_000)]
        flows: u64,
    },
    /// The fuzzing tier: every parser of untrusted input under mutated inputs for N seconds
    /// per target (netpol-observe/tests/fuzz.rs; 2 s each in `test`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The mutation seed (vary it between runs; a failing run is repeated with its seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run a benchmark (interleaved A/B runs, medians, ratios); see docs/benchmarks.md.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.verb {
        Verb::Setup => setup::all(),
        Verb::Test { under_load, args } => test(&root, under_load, &args),
        Verb::Lab { scenario, out } => {
            // The lab runs from the repository root: paths the user gave are the user's.
            let given = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let out = out.map(given).unwrap_or_else(|| PathBuf::from("lab-out"));
            lab(&root, scenario.map(given), &out)
        }
        Verb::Soak { minutes, flows } => soak(&root, minutes, flows),
        Verb::Fuzz { seconds, seed } => {
            let mut cmd = cargo(&root);
            cmd.args([
                "test",
                "--release",
                "--package",
                "netpol-observe",
                "--test",
                "fuzz",
                "--",
                "--nocapture",
            ])
            .env("NETPOL_OBSERVE_FUZZ_SECONDS", seconds.to_string());
            if let Some(seed) = seed {
                cmd.env("NETPOL_OBSERVE_FUZZ_SEED", seed.to_string());
            }
            run(&mut cmd)
        }
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

/// A cargo command in `root`, without the variables cargo set for xtask itself
/// ([`inherited_cargo_vars`]).
pub(crate) fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    for (name, _) in inherited_cargo_vars(std::env::vars_os()) {
        cmd.env_remove(name);
    }
    cmd
}

/// The variables of `vars` that cargo sets for the program it runs (`cargo xtask` is `cargo
/// run -p xtask`): xtask's own `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `CARGO_CRATE_NAME`… Passed
/// on to a child cargo, build scripts that watch them (`rerun-if-env-changed`, `ring`'s among
/// them) see a changed environment and everything above them is rebuilt: `cargo build
/// --release` then `cargo xtask lab` rebuilt from `ring` up. Configuration (`CARGO_HOME`,
/// `CARGO_TARGET_DIR`, `CARGO_TERM_*`, `CARGO_BUILD_*`…) and `CARGO` itself are kept.
fn inherited_cargo_vars(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const SET_BY_CARGO: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    vars.into_iter()
        .filter(|(name, _)| {
            name.to_str()
                .is_some_and(|n| n.starts_with("CARGO_PKG_") || SET_BY_CARGO.contains(&n))
        })
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A CPU hog for `test --under-load`: `stress-ng` on every CPU, killed on drop.
struct Hog(std::process::Child);

impl Hog {
    fn start() -> Result<Hog> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        eprintln!("xtask: {cpus} stress-ng CPU workers run during the tests");
        let child = Command::new("stress-ng")
            // A bound even if this process is killed before it can stop the hog.
            .args(["--cpu", &cpus.to_string(), "--timeout", "2h", "--quiet"])
            .spawn()
            .context("starting stress-ng (cargo xtask setup installs it)")?;
        Ok(Hog(child))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        // SIGTERM: stress-ng stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn test(root: &Path, under_load: bool, extra: &[String]) -> Result<()> {
    setup::run(setup::Purpose::Test)?;
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
    // Licences, banned or duplicate crates, sources (deny.toml). Not `advisories`: its
    // database comes from GitHub, which the test machines cannot reach.
    run(cargo(root).args([
        "deny",
        "check",
        "--hide-inclusion-graph",
        "licenses",
        "bans",
        "sources",
    ]))
    .context("cargo-deny (cargo xtask setup installs it)")?;
    build_binary(root, "debug")?;
    let bin = root.join("target/debug/netpol-observe");
    let _hog = under_load.then(Hog::start).transpose()?;
    run(cargo(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("NETPOL_OBSERVE_BIN", &bin))?;
    Ok(())
}

/// Builds the `netpol-observe` binary in `profile` (`debug` or `release`): the agent the tests,
/// the soak tier and the lab run.
fn build_binary(root: &Path, profile: &str) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.arg("build");
    if profile == "release" {
        // The user's `cargo build --release`, exactly: the default members together (one
        // package alone unifies its dependencies' features differently, and that is a
        // rebuild of them), so after it this build has nothing to do.
        return run(cmd.arg("--release"));
    }
    run(cmd.args(["--package", "netpol-observe", "--bin", "netpol-observe"]))
}

fn soak(root: &Path, minutes: u64, flows: u64) -> Result<()> {
    setup::run(setup::Purpose::Soak)?;
    if !is_root() {
        bail!("the soak tier creates network namespaces and loads eBPF programs: run it as root");
    }
    build_binary(root, "debug")?;
    run(cargo(root)
        .args([
            "test",
            "--package",
            "netpol-observe-e2e",
            "--test",
            "soak",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "NETPOL_OBSERVE_BIN",
            root.join("target/debug/netpol-observe"),
        )
        .env("NETPOL_OBSERVE_SOAK_MINUTES", minutes.to_string())
        .env("NETPOL_OBSERVE_SOAK_FLOWS", flows.to_string()))
}

fn lab(root: &Path, scenario: Option<PathBuf>, out: &Path) -> Result<()> {
    setup::run(setup::Purpose::Lab)?;
    if !is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs: run it as root");
    }
    build_binary(root, "release")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The child cargo gets none of the variables cargo set for xtask (a test binary gets the
    /// same ones): only configuration and `CARGO` pass.
    #[test]
    fn the_child_cargo_gets_a_clean_environment() {
        let os = |s: &str| std::ffi::OsString::from(s);
        let vars = [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_TERM_COLOR",
            "CARGO_BUILD_JOBS",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_PKG_AUTHORS",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "PATH",
        ]
        .map(|n| (os(n), os("x")));
        let removed: Vec<String> = inherited_cargo_vars(vars)
            .into_iter()
            .map(|(n, _)| n.into_string().unwrap())
            .collect();
        assert_eq!(
            removed,
            [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_PKG_NAME",
                "CARGO_PKG_VERSION",
                "CARGO_PKG_AUTHORS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
        );
        // This test runs under cargo, which set xtask's CARGO_MANIFEST_DIR and CARGO_PKG_*:
        // the command removes them.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let cmd = cargo(Path::new("."));
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        for name in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION"] {
            assert!(
                envs.contains(&(name.to_owned(), None)),
                "{name} not removed: {envs:?}"
            );
        }
        assert!(envs.iter().all(|(k, v)| v.is_none() && k != "CARGO"));
    }
}
