//! Installs what a fresh machine lacks. Every step checks first, so a second run is quick.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// The bpf-linker release that uses rustc's own LLVM (22) on this toolchain.
const BPF_LINKER_VERSION: &str = "0.10.2";

/// The cargo-deny release `cargo xtask test` runs (`deny.toml`); installed only when no
/// cargo-deny is present.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// Debian packages (package, a command it provides) the tests, the lab and the benchmarks use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("prometheus", "promtool"),
    ("kubernetes-client", "kubectl"),
    ("openssl", "openssl"),
    ("stress-ng", "stress-ng"),
    ("util-linux", "unshare"),
];

/// PyPI tools the `deploy/` tests use (package, version, a command it installs), installed into
/// the virtualenv [`DEPLOY_TOOLS_VENV`] (relative to the workspace root).
const PYPI_TOOLS: &[(&str, &str, &str)] = &[
    ("kubernetes-validate", "1.37.0", "kubernetes-validate"),
    ("checkov", "3.3.30", "checkov"),
];

/// Where the PyPI tools live; `tests/tests/deploy.rs` looks there first.
const DEPLOY_TOOLS_VENV: &str = "target/deploy-tools";

/// What a command needs installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `cargo xtask setup`: everything.
    All,
    /// `cargo xtask test`: everything (clippy, cargo-deny, the deploy validators, every tier).
    Test,
    /// `cargo xtask lab`: the eBPF build, and the lab's commands (`ip`, `nft`, `unshare`,
    /// `openssl` for `--apiserver`, Prometheus) — not cargo-deny, the PyPI validators or the
    /// benchmarks' tools.
    Lab,
    /// `cargo xtask soak`: the eBPF build and the namespaces' commands.
    Soak,
}

/// One setup step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    RustSrc,
    BpfLinker,
    CargoDeny,
    /// The Debian packages providing these commands.
    Debian(&'static [&'static str]),
    PypiTools,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::RustSrc => "nightly rust-src",
            Step::BpfLinker => "bpf-linker",
            Step::CargoDeny => "cargo-deny",
            Step::Debian(_) => "Debian packages",
            Step::PypiTools => "PyPI validators (deploy tests)",
        }
    }
}

/// Commands of [`DEBIAN_PACKAGES`] the lab runs.
const LAB_COMMANDS: &[&str] = &["ip", "nft", "unshare", "openssl", "promtool"];
/// Commands of [`DEBIAN_PACKAGES`] the soak tier runs.
const SOAK_COMMANDS: &[&str] = &["ip", "nft", "unshare"];
/// Every command of [`DEBIAN_PACKAGES`].
const ALL_COMMANDS: &[&str] = &[
    "ip",
    "nft",
    "iperf3",
    "bpftool",
    "promtool",
    "kubectl",
    "openssl",
    "stress-ng",
    "unshare",
];

/// The steps `purpose` needs, in order.
fn steps(purpose: Purpose) -> Vec<Step> {
    match purpose {
        Purpose::All | Purpose::Test => vec![
            Step::RustSrc,
            Step::BpfLinker,
            Step::CargoDeny,
            Step::Debian(ALL_COMMANDS),
            Step::PypiTools,
        ],
        Purpose::Lab => vec![Step::RustSrc, Step::BpfLinker, Step::Debian(LAB_COMMANDS)],
        Purpose::Soak => vec![Step::RustSrc, Step::BpfLinker, Step::Debian(SOAK_COMMANDS)],
    }
}

/// Runs every setup step.
pub(crate) fn all() -> Result<()> {
    run(Purpose::All)
}

/// Runs the steps `purpose` needs, one progress line each (`setup 2/3: bpf-linker`), then
/// what it installs, if anything.
pub(crate) fn run(purpose: Purpose) -> Result<()> {
    let steps = steps(purpose);
    let n = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        eprintln!("setup {}/{n}: {}", i + 1, step.name());
        match step {
            Step::RustSrc => rust_src()?,
            Step::BpfLinker => bpf_linker()?,
            Step::CargoDeny => cargo_deny()?,
            Step::Debian(commands) => debian_packages(commands)?,
            Step::PypiTools => pypi_tools(&crate::workspace_root())?,
        }
    }
    Ok(())
}

/// Installs the pinned PyPI tools into a virtualenv under `target/` (once; a second run only
/// checks the installed versions).
fn pypi_tools(root: &std::path::Path) -> Result<()> {
    let venv = root.join(DEPLOY_TOOLS_VENV);
    let pip = venv.join("bin/pip");
    let installed = Command::new(&pip)
        .args(["list", "--format=freeze"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
        .unwrap_or_default();
    let missing: Vec<String> = PYPI_TOOLS
        .iter()
        .filter(|(pkg, version, cmd)| {
            !installed.lines().any(|l| l == format!("{pkg}=={version}"))
                || !venv.join("bin").join(cmd).is_file()
        })
        .map(|(pkg, version, _)| format!("{pkg}=={version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !pip.is_file() {
        if Command::new("python3")
            .args(["-m", "venv", "--help"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("setup: installing python3-venv");
            crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
            crate::run(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(["python3", "python3-venv", "python3-pip"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        }
        eprintln!(
            "setup: creating the deploy tools virtualenv {}",
            venv.display()
        );
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    eprintln!(
        "setup: installing PyPI tools (about 400 MB, a few minutes, once): {}",
        missing.join(" ")
    );
    crate::run(
        Command::new(&pip)
            .args([
                "install",
                "--progress-bar",
                "on",
                "--disable-pip-version-check",
            ])
            .args(&missing),
    )
}

/// The LLVM major version bpf-linker 0.10.2 works with: the nightly's own LLVM must match it.
const NIGHTLY_LLVM_MAJOR: &str = "22";

/// Adds `rust-src` to the installed `nightly` toolchain. It never installs or updates the
/// toolchain itself: a newer nightly brings a newer LLVM that bpf-linker 0.10.2 cannot link for.
fn rust_src() -> Result<()> {
    let version = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("rustup is needed to build the eBPF programs")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("none");
    if llvm.split('.').next() != Some(NIGHTLY_LLVM_MAJOR) {
        bail!(
            "the eBPF build needs a `nightly` toolchain with LLVM {NIGHTLY_LLVM_MAJOR} (found LLVM \
             {llvm}); install the one this project is tested with: `rustup toolchain install \
             nightly-2026-05-20 --profile minimal -c rust-src` and make it the `nightly` toolchain"
        );
    }
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is needed to build the eBPF programs")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        crate::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !current.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (a few minutes, once)");
        crate::run(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

/// Installs cargo-deny from crates.io when it is missing (a present one, of any version, is
/// used as it is).
fn cargo_deny() -> Result<()> {
    // Asked the way the test runs it: cargo also finds subcommands in $CARGO_HOME/bin.
    let present = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deny {CARGO_DENY_VERSION} (a few minutes, once)");
    crate::run(Command::new("cargo").args([
        "install",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--locked",
    ]))
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Installs the packages of [`DEBIAN_PACKAGES`] whose command is one of `commands` and missing.
fn debian_packages(commands: &[&str]) -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, cmd)| commands.contains(cmd) && !has_command(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab installs neither cargo-deny nor the 400 MB of PyPI validators nor the
    /// benchmarks' tools; `test` and `setup` install everything; every command named is one
    /// of [`DEBIAN_PACKAGES`].
    #[test]
    fn each_command_installs_what_it_needs() {
        let lab = steps(Purpose::Lab);
        assert_eq!(
            lab,
            [
                Step::RustSrc,
                Step::BpfLinker,
                Step::Debian(&["ip", "nft", "unshare", "openssl", "promtool"])
            ]
        );
        assert!(!lab.contains(&Step::PypiTools) && !lab.contains(&Step::CargoDeny));
        assert_eq!(steps(Purpose::Test), steps(Purpose::All));
        assert!(steps(Purpose::Test).contains(&Step::PypiTools));
        assert!(!steps(Purpose::Soak).contains(&Step::PypiTools));
        let known: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(_, c)| *c).collect();
        assert_eq!(ALL_COMMANDS, known.as_slice());
        for purpose in [Purpose::Lab, Purpose::Soak] {
            for step in steps(purpose) {
                if let Step::Debian(commands) = step {
                    assert!(commands.iter().all(|c| known.contains(c)), "{commands:?}");
                }
            }
        }
    }
}
