//! `netpol-observe-bench agent`: the agent pipeline benchmark behind
//! `cargo xtask bench agent`. Each round runs every view (random traffic with streamed
//! inputs, the same with held inputs, repeated traffic) in fresh child processes, interleaved,
//! so RSS figures do not carry over and machine load hits every view alike; the parent prints
//! per-round figures and medians per view.

use crate::outln;
use std::process::ExitCode;

use anyhow::Context;

use netpol_observe_devkit::bench::{
    agent::{self as bench, Inputs, Traffic},
    median,
};

/// Arguments of `netpol-observe-bench agent`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Rounds (each runs every view in its own child process).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// New flows per round.
    #[arg(long, default_value_t = 100_000)]
    pub flows: usize,
    /// Run one round in this process and print it as JSON (used by the parent).
    #[arg(long)]
    pub child: bool,
    /// The child's traffic.
    #[arg(long, value_enum, default_value_t = Traffic::Random)]
    pub traffic: Traffic,
    /// The child's input handling.
    #[arg(long, value_enum, default_value_t = Inputs::Streamed)]
    pub inputs: Inputs,
}

/// The views every round runs, in order.
const VIEWS: [(Traffic, Inputs, &str); 3] = [
    (
        Traffic::Random,
        Inputs::Streamed,
        "random pairs, streamed inputs",
    ),
    (
        Traffic::Random,
        Inputs::Held,
        "random pairs, held inputs (first method)",
    ),
    (
        Traffic::Repeated,
        Inputs::Streamed,
        "repeated pairs, streamed inputs",
    ),
];

/// Figures of one child: flows/s, RSS at 10k and at the end, inputs, model.
type Figures = [f64; 5];

fn line(label: &str, r: &Figures, flows: usize) -> String {
    format!(
        "{label}: {:>9.0} new flows/s   RSS {:>6.1} MiB at 10k flows, {:>6.1} MiB at {flows} flows \
         (harness inputs {:.1} MiB, + model {:.1} MiB; agent over inputs {:.1} / {:.1} MiB)",
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[1] - r[3],
        r[2] - r[3],
    )
}

fn child(
    exe: &std::path::Path,
    args: &Args,
    traffic: Traffic,
    inputs: Inputs,
) -> anyhow::Result<Figures> {
    let out = std::process::Command::new(exe)
        .args(["agent", "--child", "--flows", &args.flows.to_string()])
        .args(["--traffic", &value(&traffic), "--inputs", &value(&inputs)])
        .output()
        .context("running a round")?;
    anyhow::ensure!(
        out.status.success(),
        "round failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let get = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok([
        get("new_flows_per_sec"),
        get("rss_10k_mib"),
        get("rss_100k_mib"),
        get("rss_inputs_mib"),
        get("rss_model_mib"),
    ])
}

/// The command-line spelling of a value.
fn value(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// Runs `netpol-observe-bench agent`.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.child {
        let inventory = bench::cluster(42);
        let r = bench::round(&inventory, args.flows, args.traffic, args.inputs, 42);
        outln!("{}", serde_json::to_string(&r)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("locating the binary")?;
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); VIEWS.len()];
    for i in 0..args.rounds.max(1) {
        for (v, (traffic, inputs, name)) in VIEWS.iter().enumerate() {
            let r = child(&exe, &args, *traffic, *inputs)
                .with_context(|| format!("round {i}, {name}"))?;
            outln!("{}", line(&format!("round {i} [{name}]"), &r, args.flows))?;
            figures[v].push(r);
        }
    }
    outln!()?;
    for (v, (_, _, name)) in VIEWS.iter().enumerate() {
        let rounds = &figures[v];
        let mut m = [0.0; 5];
        for (k, slot) in m.iter_mut().enumerate() {
            *slot = median(&rounds.iter().map(|r| r[k]).collect::<Vec<_>>());
        }
        outln!("{}", line(&format!("median [{name}]"), &m, args.flows))?;
    }
    Ok(ExitCode::SUCCESS)
}
