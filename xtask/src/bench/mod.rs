//! `cargo xtask bench <what>`: benchmarks, one module per subject.
//!
//! Every benchmark interleaves its A/B runs (alternating which goes first in each pair),
//! reports per-run figures, medians and the ratio of medians, and is recorded in
//! `docs/benchmarks.md`. Add a subject by adding a [`What`] variant and a module.

mod agent;
mod datapath;
mod dns_cost;
mod engine;
mod inventory;
mod recommend;
pub(crate) mod stats;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// What to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum What {
    /// The eBPF datapath: iperf3 throughput and TCP request/response between two namespaces,
    /// with nothing, a no-op program and the agent attached; then ns per program run.
    Datapath,
    /// The agent's userspace pipeline: new flows/s through attribution, verdicts, metrics and
    /// the store; RSS at 10k and 100k flows.
    Agent,
    /// The policy engine: 1M verdicts against 10 / 100 / 1k / 10k policies over 10k pods
    /// (`-- --before BIN`: interleaved with an earlier build, one round per process; `--after
    /// BIN`: a prebuilt binary instead of this tree).
    Engine,
    /// The recommender: 1M and 10M flow records over 5k workloads, streamed from a JSON-lines
    /// file as `recommend --flows` reads them (rounds = `--pairs`; `-- --before BIN`).
    Recommend,
    /// The inventory at cluster scale: 100k pods, 5k policies, 100 pod changes/s; full
    /// builds against incremental updates (CPU, change-to-verdict latency, RSS); `-- --before
    /// BIN`: incremental updates against an earlier build's; `--after BIN`: a prebuilt binary
    /// instead of this tree.
    Inventory,
}

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The subject.
    #[arg(value_enum)]
    pub what: What,
    /// Number of interleaved A/B pairs (datapath: rounds of its three arms).
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Seconds per measurement run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Extra arguments passed to the subject's own runner (e.g. `-- --policies 10,1000`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// Runs the benchmark named by `args`.
pub(crate) fn run(root: &Path, args: BenchArgs) -> Result<()> {
    match args.what {
        What::Datapath => datapath::run(root, args.pairs.max(1), args.seconds.max(1), &args.extra),
        What::Engine => engine::run(root, args.pairs.max(1), &args.extra),
        What::Recommend => recommend::run(root, args.pairs.max(1), &args.extra),
        What::Agent => agent::run(root, args.pairs.max(1)),
        What::Inventory => inventory::run(root, args.pairs.max(1), &args.extra),
    }
}

/// Builds the release `netpol-observe` binary and returns its path.
pub(crate) fn release_binary(root: &Path) -> Result<PathBuf> {
    crate::run(crate::cargo(root).args([
        "build",
        "--release",
        "--package",
        "netpol-observe",
        "--bin",
        "netpol-observe",
    ]))?;
    Ok(root.join("target/release/netpol-observe"))
}

/// Builds the release `netpol-observe-bench` binary (the development kit's benchmark runner)
/// and returns its path.
pub(crate) fn bench_binary(root: &Path) -> Result<PathBuf> {
    crate::run(crate::cargo(root).args([
        "build",
        "--release",
        "--package",
        "netpol-observe-devkit",
        "--bin",
        "netpol-observe-bench",
    ]))?;
    Ok(root.join("target/release/netpol-observe-bench"))
}

/// A command running `bin` pinned to CPU 1 with `taskset` when it exists (one core, as the
/// targets are stated), else unpinned.
pub(crate) fn pinned(bin: &Path) -> Command {
    let has_taskset = Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_taskset {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// The builds of a before/after run given on the command line: `--before BIN` (a
/// `netpol-observe-bench` built from an earlier commit) and `--after BIN` (one used instead of
/// building this tree: builds with other flags, or the `--before` binary itself for an A/A
/// run, whose ratios show the machine's noise floor).
#[derive(Debug, Default)]
pub(crate) struct Builds {
    /// The other arm of a before/after run.
    pub before: Option<PathBuf>,
    /// The measured arm, when not this tree's release build.
    pub after: Option<PathBuf>,
}

impl Builds {
    /// Splits `--before BIN` and `--after BIN` from the arguments meant for the subject's
    /// runner.
    pub(crate) fn take(extra: &[String]) -> Result<(Self, Vec<String>)> {
        let mut builds = Builds::default();
        let mut rest = Vec::new();
        let mut it = extra.iter();
        while let Some(a) = it.next() {
            let slot = match a.as_str() {
                "--before" => &mut builds.before,
                "--after" => &mut builds.after,
                _ => {
                    rest.push(a.clone());
                    continue;
                }
            };
            let bin = it
                .next()
                .with_context(|| format!("{a} needs the path of a netpol-observe-bench"))?;
            *slot = Some(PathBuf::from(bin));
        }
        Ok((builds, rest))
    }

    /// The measured binary: `--after`, else this tree's release build.
    pub(crate) fn after_binary(&self, root: &Path) -> Result<PathBuf> {
        match &self.after {
            Some(bin) => Ok(bin.clone()),
            None => bench_binary(root),
        }
    }
}

/// Runs `cmd` and parses what it printed as JSON (the runners' `--json` output).
pub(crate) fn json_output(cmd: &mut Command) -> Result<serde_json::Value> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{cmd:?} printed no JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_string()).collect()
    }

    #[test]
    fn builds_are_split_from_the_runners_arguments() {
        let args = strings(&[
            "--policies",
            "1000",
            "--after",
            "/a",
            "--before",
            "/b",
            "--json",
        ]);
        let (builds, rest) = Builds::take(&args).unwrap();
        assert_eq!(builds.after, Some(PathBuf::from("/a")));
        assert_eq!(builds.before, Some(PathBuf::from("/b")));
        assert_eq!(rest, strings(&["--policies", "1000", "--json"]));
        // A prebuilt `--after` is used as is, without building this tree.
        assert_eq!(
            builds.after_binary(Path::new("/nowhere")).unwrap(),
            PathBuf::from("/a")
        );
    }

    #[test]
    fn a_build_flag_without_a_path_is_an_error_naming_it() {
        let err = Builds::take(&strings(&["--policies", "10", "--after"])).unwrap_err();
        assert!(err.to_string().contains("--after needs"), "{err}");
    }
}
