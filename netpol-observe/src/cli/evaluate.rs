//! `netpol-observe evaluate`: each input flow, attributed, with its verdict, as JSON lines.

use crate::report::Chain;
use std::{
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use super::{
    inputs,
    out::{OutputError, errln},
};
use crate::{
    attribution::{Attributor, Subnets},
    flow::jsonl,
    inventory::Validation,
    policy::{EvaluatedFlow, PodTable, PolicyEngine},
};

/// Output format of `evaluate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One JSON line per input line (streamed).
    Jsonl,
    /// One JSON array of the evaluated flows.
    Json,
    /// The table of `flows`, for people.
    Table,
}

/// Arguments of `netpol-observe evaluate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe evaluate --inventory cluster.yaml --flows flows.jsonl
  netpol-observe evaluate --inventory inventory/ --policies policies/ --flows - --subnets subnets.yaml
  netpol-observe evaluate --inventory cluster.yaml --flows flows.jsonl -o table

One JSON line per input line, in input order: the flow (attributed) with a \"verdict\"
(-o json: one JSON array of them, -o table: the table of `flows`).
A bad line is reported on stderr (file:line) and the others are still evaluated; the exit
code is then 2.

Kubernetes objects are checked strictly: a field their type does not know (a typo such as
podSelectr, or a field of a newer Kubernetes) is an error naming file, document, object and
field; --validate=warn reports and ignores such fields, --validate=ignore drops them. A
namespaced object without metadata.namespace is taken as \"default\" with a warning.")]
pub struct Args {
    /// Kubernetes objects (a file or a directory of YAML files, `kubectl get … -o yaml`).
    #[arg(long, value_name = "PATH")]
    pub inventory: PathBuf,
    /// NetworkPolicies and ClusterNetworkPolicies to evaluate instead of the inventory's (a
    /// file or a directory).
    #[arg(long, value_name = "PATH")]
    pub policies: Option<PathBuf>,
    /// Flow records, JSON lines (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub flows: PathBuf,
    /// Named subnets, YAML `name: [CIDRs]`.
    #[arg(long, value_name = "FILE")]
    pub subnets: Option<PathBuf>,
    /// Output format (as kubectl's `-o`).
    #[arg(
        short = 'o',
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "jsonl"
    )]
    pub output: Output,
    /// How unknown fields in inventory and policy files are treated.
    #[arg(long, value_enum, value_name = "MODE", default_value = "strict", long_help = inputs::VALIDATE_HELP)]
    pub validate: Validation,
}

/// Runs `netpol-observe evaluate`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let inventory = inputs::load(&args.inventory, args.validate, "the inventory")?;
    // `--policies` replaces the inventory's policies, ClusterNetworkPolicies included.
    let (policies, cluster) = match &args.policies {
        Some(path) => {
            let loaded = inputs::load(path, args.validate, "the policies")?;
            (loaded.network_policies, loaded.cluster_network_policies)
        }
        None => (
            inventory.network_policies.clone(),
            inventory.cluster_network_policies.clone(),
        ),
    };
    let subnets = match &args.subnets {
        Some(path) => Subnets::from_path(path)?,
        None => Subnets::default(),
    };
    // One index of the inventory: attribution makes the connections the engine evaluates.
    let table = PodTable::with_attributor(Attributor::new(&inventory, &subnets));
    let engine =
        PolicyEngine::compile_shared_with_cluster(&policies, &cluster, &inventory, &table)?;
    let attributor = table.attributor();
    tracing::info!(
        pods = inventory.pods.len(),
        policies = engine.policy_count(),
        cluster_policies = engine.cluster_policy_count(),
        "evaluating flows"
    );
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut bad = 0usize;
    let mut held = Vec::new();
    for (_, line) in jsonl::read_file(&args.flows) {
        match line {
            Ok(mut flow) => {
                attributor.attribute(&mut flow);
                let verdict = engine.evaluate(&attributor.connection(&flow));
                let evaluated = EvaluatedFlow { flow, verdict };
                match args.output {
                    Output::Jsonl => {
                        jsonl::write_line(&mut out, &evaluated).map_err(OutputError::from)?
                    }
                    Output::Json | Output::Table => held.push(evaluated),
                }
            }
            Err(err) => {
                bad += 1;
                errln!("error: {}", Chain(&err));
            }
        }
    }
    match args.output {
        Output::Jsonl => {}
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &held)
                .map_err(|e| OutputError::from(std::io::Error::from(e)))?;
            out.write_all(b"\n").map_err(OutputError::from)?;
        }
        Output::Table => {
            let observed = held
                .into_iter()
                .map(|e| crate::agent::ObservedFlow {
                    flow: e.flow,
                    verdict: Some(e.verdict),
                    staged_verdict: None,
                    dns_rotation: None,
                })
                .collect();
            out.write_all(super::flows::observed_table(observed).as_bytes())
                .map_err(OutputError::from)?;
        }
    }
    out.flush().map_err(OutputError::from)?;
    if bad > 0 {
        errln!("error: {bad} flow line(s) could not be read");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
