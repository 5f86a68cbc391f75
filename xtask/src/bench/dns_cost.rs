//! `cargo xtask bench datapath -- --dns-cost [--baseline-object PATH]`: the cost of the
//! DNS-answer capture per program run. `netpol-observe-bench hooks dns-cost` (the devkit) runs
//! the egress program through the kernel (`BPF_PROG_TEST_RUN`, 20,000 runs per measurement) on a
//! DNS answer (UDP from port 53) and on the same packet from port 5353, with the capture on and
//! off, and through another build's object (the before of a change), in an order rotating from
//! round to round; this prints the median, minimum and maximum ns per run of each arm.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Runs `rounds` × 3 rounds (each is short) and prints the summary.
pub(super) fn run(bin: &Path, rounds: usize, baseline_object: Option<&Path>) -> Result<()> {
    let mut cmd = super::pinned(bin);
    cmd.args(["hooks", "dns-cost", "--rounds"])
        .arg((rounds * 3).to_string());
    if let Some(p) = baseline_object {
        cmd.arg("--baseline-object").arg(p);
    }
    let out = cmd
        .output()
        .context("running netpol-observe-bench hooks dns-cost")?;
    if !out.status.success() {
        bail!(
            "netpol-observe-bench hooks dns-cost failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("DNS-answer capture, ns per run of the egress program (BPF_PROG_TEST_RUN):");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let arm: serde_json::Value = serde_json::from_str(line).context("an arm as JSON")?;
        let label = arm["label"].as_str().unwrap_or("?");
        let mut ns: Vec<f64> = arm["ns"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default();
        if ns.is_empty() {
            continue;
        }
        ns.sort_by(f64::total_cmp);
        let median = ns[ns.len() / 2];
        println!(
            "  {label:<42} median {median:>6.1}  min {:>6.1}  max {:>6.1}  (n={})",
            ns[0],
            ns[ns.len() - 1],
            ns.len()
        );
    }
    Ok(())
}
