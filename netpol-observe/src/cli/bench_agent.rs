//! `netpol-observe bench-agent` (hidden): the agent pipeline benchmark behind
//! `cargo xtask bench agent`. Each round runs in a fresh child process so RSS figures do not
//! carry over; the parent prints per-round figures and medians.

use std::process::ExitCode;

use anyhow::Context;

use crate::agent::bench;

/// Arguments of `netpol-observe bench-agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds (child processes).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// New flows per round.
    #[arg(long, default_value_t = 100_000)]
    pub flows: usize,
    /// Run one round in this process and print it as JSON (used by the parent).
    #[arg(long)]
    pub child: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `netpol-observe bench-agent`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.child {
        let (inv, flows) = bench::flows(args.flows, 42);
        let r = bench::round(&inv, &flows);
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("locating the binary")?;
    let mut rounds = Vec::new();
    for i in 0..args.rounds.max(1) {
        let out = std::process::Command::new(&exe)
            .args(["bench-agent", "--child", "--flows", &args.flows.to_string()])
            .output()
            .context("running a round")?;
        anyhow::ensure!(
            out.status.success(),
            "round {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let get = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let r = (
            get("new_flows_per_sec"),
            get("rss_10k_mib"),
            get("rss_100k_mib"),
            get("rss_inputs_mib"),
            get("rss_model_mib"),
        );
        println!(
            "round {i}: {:>10.0} new flows/s   RSS {:>6.1} MiB at 10k flows, {:>6.1} MiB at {} flows \
             (harness inputs {:.1} MiB, + model {:.1} MiB)",
            r.0, r.1, r.2, args.flows, r.3, r.4
        );
        rounds.push(r);
    }
    println!(
        "median:  {:>10.0} new flows/s   RSS {:>6.1} MiB at 10k flows, {:>6.1} MiB at {} flows \
         (harness inputs {:.1} MiB, + model {:.1} MiB)",
        median(rounds.iter().map(|r| r.0).collect()),
        median(rounds.iter().map(|r| r.1).collect()),
        median(rounds.iter().map(|r| r.2).collect()),
        args.flows,
        median(rounds.iter().map(|r| r.3).collect()),
        median(rounds.iter().map(|r| r.4).collect()),
    );
    Ok(ExitCode::SUCCESS)
}
