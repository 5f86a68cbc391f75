//! Shared harness of the end-to-end tests: privilege checks, the agent binary, and network
//! namespaces as pods.

use std::path::PathBuf;

pub mod apiserver;
pub mod dns;
pub mod http;
pub mod netns;
pub mod tcx;
pub mod traffic;

/// Whether the real-kernel tests must run: under `CI=true` they must, and a missing privilege
/// is a failure; elsewhere they skip with a message.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns true when this process may create namespaces and load eBPF programs.
///
/// Outside CI a non-root run prints why the test is skipped and returns false; under
/// `CI=true` it panics, so a CI machine that cannot run the kernel tests fails loudly.
pub fn require_root(test: &str) -> bool {
    let root = nix_uid_is_root();
    if root {
        return true;
    }
    if ci() {
        panic!("{test}: CI=true requires root to run the real-kernel tests");
    }
    eprintln!(
        "SKIPPED {test}: needs root (network namespaces, eBPF); run as root or under CI=true"
    );
    false
}

fn nix_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Path of the `netpol-observe` binary: `$NETPOL_OBSERVE_BIN` (set by `cargo xtask test`), else
/// `target/debug/netpol-observe` next to this test binary.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPOL_OBSERVE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> → target/debug/netpol-observe
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("netpol-observe"))
        .unwrap_or_else(|| PathBuf::from("target/debug/netpol-observe"))
}
