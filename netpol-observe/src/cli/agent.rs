//! `netpol-observe agent`: the node agent (see [`crate::agent`]).
//!
//! Configuration: defaults, then `--config FILE` (YAML, camelCase names), then environment
//! variables (`NETPOL_OBSERVE_*`, `NODE_NAME`) and flags. On SIGINT, SIGTERM, SIGHUP, SIGQUIT
//! or after `--duration` it sweeps a last time, detaches, prints the flows it saw (`--output`)
//! and exits 0.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::out::OutputError;
use crate::{
    agent::{
        AgentConfig,
        config::{ConfigError, ConfigOverrides},
    },
    app,
    flow::jsonl,
};

/// Output format of the flows printed at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table for people.
    Table,
    /// One JSON line per flow: the flow record with its `verdict` (and `staged_verdict`).
    Jsonl,
    /// Nothing.
    None,
}

/// Arguments of `netpol-observe agent`. Unset flags take the configuration file's value, else
/// the default shown.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  netpol-observe agent                                   # in-cluster (DaemonSet)
  netpol-observe agent --listen 0.0.0.0:9965 --api-token-audiences netpol-observe   # as the DaemonSet
  netpol-observe agent --inventory cluster.yaml --subnets subnets.yaml  # standalone, API on 127.0.0.1:9965
  netpol-observe agent --inventory cluster/ --staged-policies drafts/   # what would the drafts block?
  netpol-observe agent --duration 30 --output jsonl > flows.jsonl
  netpol-observe agent --inventory cluster/ --drift-baseline baseline.jsonl --drift-learn 168h   # learn a week, then report new dependencies
  netpol-observe agent --interfaces 'veth*' 'cali*' --exclude 'veth-infra*'

Every flag has an environment variable (NETPOL_OBSERVE_<FLAG>, NODE_NAME for --node-name;
lists comma-separated, but --interfaces/--exclude take one glob there: '{veth*,cali*}'), and every setting of the agent (not --output and --duration, which are
about this run) a key in the --config file (camelCase: listen, inventory, stagedPolicies,
interfaces, flowMapCapacity, dropReasons, dropScope, enforcementGrace, driftBaseline, driftLearn,
apiAuth, apiTokenAudiences, metrics.seriesBudget, ...).

/metrics, /healthz and /readyz are open to whoever reaches --listen; /api/v1 needs, with
--api-auth kubernetes, `Authorization: Bearer <token>` of a user or ServiceAccount allowed `get`
on flows.netpol-observe.io (also for /api/v1/drift; recommendations.netpol-observe.io for
/api/v1/recommendations),
e.g. through the ClusterRole netpol-observe-reader (deploy/README.md).")]
pub struct Args {
    /// YAML configuration file (flags and environment variables override it).
    #[arg(long, env = "NETPOL_OBSERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's settings: each a flag, an environment variable and a file key.
    #[command(flatten)]
    pub settings: ConfigOverrides,
    /// Output format of the flows printed at the end (as kubectl's `-o`).
    #[arg(
        short = 'o',
        long,
        env = "NETPOL_OBSERVE_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: Output,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, env = "NETPOL_OBSERVE_DURATION", value_name = "SECS")]
    pub duration: Option<u64>,
}

impl Args {
    /// The configuration: defaults, then the file, then flags and environment variables.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        self.settings.resolve(self.config.as_deref())
    }
}

/// Runs `netpol-observe agent`.
pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.resolve()?;
    // Every signal that ends a process by default ends the agent cleanly: a last sweep, the
    // programs detached, the final flows written (SIGKILL cannot be caught).
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = Vec::new();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::quit(), "SIGQUIT"),
    ] {
        let s = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        signals.push((s, name));
    }
    let stop = CancellationToken::new();
    let duration = args.duration;
    let trigger = stop.clone();
    tokio::spawn(async move {
        let until = async {
            match duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let any_signal = futures::future::select_all(
            signals
                .iter_mut()
                .map(|(s, name)| Box::pin(async move { s.recv().await.map(|_| *name) })),
        );
        tokio::select! {
            (name, _, _) = any_signal => tracing::info!("{}: stopping", name.unwrap_or("signal")),
            _ = until => tracing::info!("duration elapsed: stopping"),
        }
        trigger.cancel();
    });
    let flows = app::run(config, stop).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::None => {}
        Output::Table => {
            out.write_all(super::flows::observed_table(flows).as_bytes())
                .map_err(OutputError::from)?;
        }
        Output::Jsonl => {
            for f in &flows {
                jsonl::write_line(&mut out, f).map_err(OutputError::from)?;
            }
        }
    }
    out.flush().map_err(OutputError::from)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    /// `--help` says every flag has an environment variable: it does.
    #[test]
    fn every_flag_has_an_environment_variable() {
        let cmd = <super::Args as clap::Args>::augment_args(clap::Command::new("agent"));
        let missing: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_env().is_none())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "flags without environment variable: {missing:?}"
        );
    }

    fn resolve(args: &[&str]) -> anyhow::Result<crate::agent::AgentConfig> {
        let cli = Cli::try_parse_from(["netpol-observe", "agent"].iter().chain(args))?;
        match cli.command {
            Command::Agent(a) => Ok(a.resolve()?),
            other => panic!("{other:?}"),
        }
    }

    /// List flags take a comma-separated value (as their environment variables do) as well as
    /// several values; interface patterns keep their commas (glob alternatives).
    #[test]
    fn list_flags_split_on_commas_but_globs_keep_theirs() {
        let c = resolve(&[
            "--drop-reasons",
            "NETFILTER_DROP,TC_INGRESS",
            "--exclude",
            "{veth-infra*,lo}",
            "--interfaces",
            "veth*",
            "cali*",
        ])
        .unwrap();
        assert_eq!(c.drop_reasons, ["NETFILTER_DROP", "TC_INGRESS"]);
        assert_eq!(c.exclude, ["{veth-infra*,lo}"]);
        assert_eq!(c.interfaces, ["veth*", "cali*"]);
    }

    /// The layers: defaults, the file, then flags; a flag not given leaves the file's value,
    /// including booleans and lists.
    #[test]
    fn flags_override_the_file_and_only_where_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "ebpfLog: true\ndrops: false\nsweepInterval: 3s\nmaxFlows: 7\n\
             interfaces: [\"cali*\"]\nmetrics:\n  podLevel: true\n  seriesBudget: 9\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = resolve(&["--config", path]).unwrap();
        assert!(c.ebpf_log && !c.drops && c.metrics.pod_level);
        assert_eq!(c.sweep_interval.get(), jiff::SignedDuration::from_secs(3));
        assert_eq!((c.max_flows, c.metrics.series_budget), (7, 9));
        assert_eq!(c.interfaces, ["cali*"]);
        assert_eq!(
            c.flow_retention.get(),
            jiff::SignedDuration::from_mins(10),
            "default"
        );
        let c = resolve(&[
            "--config",
            path,
            "--ebpf-log=false",
            "--drops=true",
            "--sweep-interval",
            "500ms",
            "--metrics-series-budget",
            "11",
            "--interfaces",
            "veth*",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            c.contains("--sweep-interval") && c.contains("sweepInterval"),
            "{c}"
        );
        let c = resolve(&[
            "--config",
            path,
            "--ebpf-log=false",
            "--drops=true",
            "--sweep-interval",
            "1m",
            "--metrics-series-budget",
            "11",
            "--metrics-pod-level",
            "--interfaces",
            "veth*",
        ])
        .unwrap();
        assert!(!c.ebpf_log && c.drops && c.metrics.pod_level);
        assert_eq!(c.sweep_interval.get(), jiff::SignedDuration::from_mins(1));
        assert_eq!((c.max_flows, c.metrics.series_budget), (7, 11));
        assert_eq!(c.interfaces, ["veth*"]);
        let err = resolve(&["--sweep-interval", "5"]).unwrap_err().to_string();
        assert!(err.contains("no unit"), "{err}");
    }

    /// `--enforcement-grace` overrides the configuration's `enforcementGrace` (default 10s);
    /// `0s` is allowed, a negative or malformed duration is refused.
    #[test]
    fn enforcement_grace_flag() {
        let c = resolve(&[]).unwrap();
        assert_eq!(
            c.enforcement_grace.get(),
            jiff::SignedDuration::from_secs(10)
        );
        let c = resolve(&["--enforcement-grace", "45s"]).unwrap();
        assert_eq!(
            c.enforcement_grace.get(),
            jiff::SignedDuration::from_secs(45)
        );
        let c = resolve(&["--enforcement-grace", "0s"]).unwrap();
        assert_eq!(c.enforcement_grace.get(), jiff::SignedDuration::ZERO);
        for bad in ["-1s", "later", "2d"] {
            let err = resolve(&[&format!("--enforcement-grace={bad}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("enforcement-grace"), "{bad}: {err}");
        }
    }
}
