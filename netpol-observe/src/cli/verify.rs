//! `netpol-observe verify`: the dry run of a draft against observed traffic.

use crate::report::Chain;
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use super::{
    inputs,
    out::{self, errln},
};
use crate::{
    attribution::{Attributor, Subnets},
    flow::jsonl,
    inventory::Validation,
    policy::PolicyEngine,
    recommend::verify::verify,
};

/// Output format of `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human summary: denied flows and a table per workload.
    Text,
    /// The report as one JSON object (what the lab writes as `verify.json`).
    Json,
}

/// Arguments of `netpol-observe verify`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe verify --policies draft.yaml --flows flows.jsonl --inventory cluster.yaml
  netpol-observe verify --policies policies/ --flows flows.jsonl --inventory inv/ -o json

Checks every observed flow against the given policies only (the draft replaces the
inventory's policies; ClusterNetworkPolicies in it are evaluated in their tiers: Admin
before the NetworkPolicies, Baseline after) and names the flows it would deny with the isolating policies.
Exit code: 0 nothing denied, 1 some observed flow would be denied, 2 an error.

Kubernetes objects are checked strictly: a field their type does not know (a typo such as
podSelectr, or a field of a newer Kubernetes) is an error naming file, document, object and
field; --validate=warn reports and ignores such fields, --validate=ignore drops them. A
namespaced object without metadata.namespace is taken as \"default\" with a warning.")]
pub struct Args {
    /// The NetworkPolicies and ClusterNetworkPolicies to check (a file or a directory of YAML
    /// files).
    #[arg(long, value_name = "PATH")]
    pub policies: PathBuf,
    /// Flow records, JSON lines (`-` for stdin).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub flows: Vec<PathBuf>,
    /// Kubernetes objects (a file or a directory of YAML files).
    #[arg(long, value_name = "PATH")]
    pub inventory: PathBuf,
    /// Named subnets, YAML `name: [CIDRs]`.
    #[arg(long, value_name = "FILE")]
    pub subnets: Option<PathBuf>,
    /// Output format (as kubectl's `-o`).
    #[arg(
        short = 'o',
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub output: Format,
    /// How unknown fields in inventory and policy files are treated.
    #[arg(long, value_enum, value_name = "MODE", default_value = "strict", long_help = inputs::VALIDATE_HELP)]
    pub validate: Validation,
}

/// Runs `netpol-observe verify`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let inventory = inputs::load(&args.inventory, args.validate, "the inventory")?;
    let draft = inputs::load(&args.policies, args.validate, "the policies")?;
    let subnets = match &args.subnets {
        Some(path) => Subnets::from_path(path)?,
        None => Subnets::default(),
    };
    let engine = PolicyEngine::compile_with_cluster(
        &draft.network_policies,
        &draft.cluster_network_policies,
        &inventory,
    )
    .with_context(|| format!("in {}", args.policies.display()))?;
    let attributor = Attributor::new(&inventory, &subnets);
    let mut flows = Vec::new();
    let mut bad = 0usize;
    for path in &args.flows {
        for (_, line) in jsonl::read_file(path) {
            match line {
                Ok(mut f) => {
                    attributor.attribute(&mut f);
                    flows.push(f);
                }
                Err(e) => {
                    bad += 1;
                    errln!("error: {}", Chain(&e));
                }
            }
        }
    }
    let mut report = verify(&engine, &flows);
    report.selects_nothing =
        crate::recommend::verify::selects_nothing(&draft.network_policies, &inventory);
    match args.output {
        Format::Text => out::stdout(report.to_text())?,
        Format::Json => out::stdout(serde_json::to_string_pretty(&report)? + "\n")?,
    }
    if bad > 0 {
        errln!("error: {bad} flow line(s) could not be read");
        return Ok(ExitCode::from(2));
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
