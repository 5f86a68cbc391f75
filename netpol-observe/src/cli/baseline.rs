//! `netpol-observe baseline`: a drift baseline from recorded flows.

use crate::report::Chain;
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use super::{
    inputs,
    out::{self, errln},
};
use crate::{
    attribution::{Attributor, Subnets},
    drift::Baseline,
    flow::jsonl,
    inventory::{Inventory, Validation},
};

/// Arguments of `netpol-observe baseline`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe baseline --flows lab-out/flows.jsonl --write baseline.jsonl
  netpol-observe agent --duration 86400 -o jsonl > day.jsonl   # a recorded learning period
  netpol-observe baseline --flows day.jsonl --inventory cluster/ --subnets subnets.yaml --write baseline.jsonl

Writes the edges (source workload, destination workload, destination port, protocol; peers
named as the metrics name them: pods by namespace, workload kind and workload, a Service by
its backend workload, outside peers by subnet name or private/world, nodes by name) of the
flows, one JSON line each with its earliest first_seen, for `agent --drift-baseline`, to the
--write file (stdout without it).
Records an agent already attributed keep their attribution; --inventory and --subnets
attribute the others (as recommend does). Records marked \"counted\": false (another node's
view of a connection its own agent counts) are left out, as the agents' drift check leaves
them. A bad flow line is an error naming FILE:LINE (exit 2, nothing written).")]
pub struct Args {
    /// Flow records, JSON lines (`-` for stdin), e.g. an agent's `-o jsonl`, `flows -o
    /// jsonl`, or the lab's flows.jsonl.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub flows: Vec<PathBuf>,
    /// Kubernetes objects (a file or a directory of YAML files) to attribute bare records.
    #[arg(long, value_name = "PATH")]
    pub inventory: Option<PathBuf>,
    /// Named subnets, YAML `name: [CIDRs]`.
    #[arg(long, value_name = "FILE")]
    pub subnets: Option<PathBuf>,
    /// The baseline file to write (`-` or absent: stdout).
    #[arg(long = "write", value_name = "PATH", default_value = "-")]
    pub write: PathBuf,
    /// How unknown fields in inventory files are treated.
    #[arg(long, value_enum, value_name = "MODE", default_value = "strict", long_help = inputs::VALIDATE_HELP)]
    pub validate: Validation,
}

/// Runs `netpol-observe baseline`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let inventory = match &args.inventory {
        Some(p) => inputs::load(p, args.validate, "the inventory")?,
        None => Inventory::default(),
    };
    let subnets = match &args.subnets {
        Some(path) => Subnets::from_path(path)?,
        None => Subnets::default(),
    };
    let attributor = Attributor::new(&inventory, &subnets);
    let mut baseline = Baseline::default();
    let (mut bad, mut flows, mut skipped) = (0usize, 0usize, 0usize);
    for path in &args.flows {
        for (_, line) in jsonl::read_file(path) {
            match line {
                Ok(f) if baseline.insert_record(&f, &attributor) => flows += 1,
                Ok(_) => skipped += 1,
                Err(e) => {
                    bad += 1;
                    errln!("error: {}", Chain(&e));
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} flow line(s) could not be read; no baseline written");
    }
    if args.write == std::path::Path::new("-") {
        let mut text = Vec::new();
        baseline.write(&mut text)?;
        out::stdout(String::from_utf8(text)?)?;
    } else {
        baseline
            .save(&args.write)
            .with_context(|| format!("writing {}", args.write.display()))?;
    }
    errln!(
        "{} edges from {flows} flows ({skipped} counted:false records left out) written to {}",
        baseline.len(),
        match args.write.to_str() {
            Some("-") => "stdout".to_owned(),
            _ => args.write.display().to_string(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
