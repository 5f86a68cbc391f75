//! The agents in the lab: one `netpol-observe agent` per node, started inside the node's
//! network namespace (where its pods' `veth*` links are), as the DaemonSet runs one per node,
//! and a small HTTP client that reaches its API (`/readyz`, `/api/v1/flows`, `/metrics`) on
//! the node's address through sockets made in that namespace.
//!
//! The agent reads its inventory from a directory ([`AGENT_INVENTORY_DIR`] in the output
//! folder): the lab's objects, plus the enforced NetworkPolicies once `--enforce` applies them,
//! so the agent judges the enforcement-phase flows against the policies in force and names the
//! isolating policy of each drop.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use super::{
    netns::NetnsError,
    servers,
    topology::{LabProcess, Topology},
};
use netpol_observe_agent::agent::ObservedFlow;

/// The port an agent listens on, on its node's address (where the lab's Prometheus, on the
/// first node, scrapes it).
pub(crate) const AGENT_PORT: u16 = 9965;

/// The agent's inventory directory inside the output folder.
pub(crate) const AGENT_INVENTORY_DIR: &str = "agent-inventory";

/// The agent's sweep and inventory poll interval in the lab.
pub(crate) const AGENT_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the lab's agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent process could not be started.
    #[error("cannot start the agent {program}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: NetnsError,
    },
    /// The agent log file could not be created.
    #[error("cannot create the agent log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The drift baseline could not be written for the agents.
    #[error("cannot write the drift baseline {path}")]
    Baseline {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::drift::BaselineError,
    },
    /// The agent exited.
    #[error("the agent exited ({status}); see {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// Its log.
        log: PathBuf,
    },
    /// The agent did not become ready in time.
    #[error("the agent was not ready within {timeout:?} (last answer: {last}); see {log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The last `/readyz` answer or connection error.
        last: String,
        /// Its log.
        log: PathBuf,
    },
    /// An HTTP request to the agent failed.
    #[error("GET {path} from the agent: {message}")]
    Http {
        /// The request path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Where the lab's agent gets its inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// Standalone: the inventory files in this directory.
    Files(PathBuf),
    /// In-cluster, as the DaemonSet runs it: the API server and the ServiceAccount files.
    InCluster(super::control_plane::InCluster),
}

/// A running agent: the child process in its node's namespace and its log file.
#[derive(Debug)]
pub struct AgentHandle {
    process: LabProcess,
    node: String,
    netns: String,
    listen: SocketAddr,
    log: PathBuf,
    drift_baseline: PathBuf,
}

impl AgentHandle {
    /// Starts `program agent --subnets <subnets> …` inside the namespace of node `node`
    /// (index in [`LabModel::nodes`](super::model::LabModel::nodes)), standalone
    /// (`--inventory DIR`) or in-cluster (the ServiceAccount files bind-mounted where a pod has
    /// them, in the agent's own mount namespace, and `KUBERNETES_SERVICE_HOST`/`PORT`), logging
    /// to `log`, and waits (up to `timeout`) until `/readyz` is 200.
    pub async fn start(
        topo: &Topology,
        node: (usize, &super::model::NodeModel),
        program: &Path,
        source: &AgentSource,
        subnets: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<AgentHandle, AgentError> {
        let (index, node) = node;
        let listen = SocketAddr::from((node.ip, AGENT_PORT));
        let netns = topo.node_netns_of(index).to_string();
        // Next to the log: the node's drift baseline, learned during the learning phase.
        let drift_baseline = log.with_file_name(format!("drift-baseline-{}.jsonl", node.name));
        let _ = std::fs::remove_file(&drift_baseline);
        let (log_file, err_file) = log_files(log)?;
        let args = agent_args(listen, &node.name, subnets, &drift_baseline);
        let (program, args) = match source {
            AgentSource::Files(dir) => {
                let mut args = args;
                args.extend(["--inventory".into(), dir.into()]);
                (program.as_os_str().to_owned(), args)
            }
            AgentSource::InCluster(c) => in_cluster(c, program.as_os_str().to_owned(), args)?,
        };
        let child = topo
            .spawn_logged_in(
                &netns,
                Path::new(&program),
                &args,
                Stdio::from(log_file),
                Stdio::from(err_file),
            )
            .map_err(|source| AgentError::Spawn {
                program: PathBuf::from(&program),
                source,
            })?;
        let mut handle = AgentHandle {
            process: LabProcess::new(child, "the agent"),
            node: node.name.clone(),
            netns,
            listen,
            log: log.to_path_buf(),
            drift_baseline,
        };
        handle.wait_ready(timeout).await?;
        Ok(handle)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                return Err(AgentError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                });
            }
            let last = match self.get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(AgentError::NotReady {
                    timeout,
                    last,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where it listens (its node's address).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// `GET path` on the agent: status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), AgentError> {
        servers::http_get(&self.netns, self.listen, path)
            .await
            .map_err(|e| AgentError::Http {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    /// `GET path`, requiring 200.
    async fn get_ok(&self, path: &str) -> Result<String, AgentError> {
        match self.get(path).await? {
            (200, body) => Ok(body),
            (code, body) => Err(AgentError::Http {
                path: path.to_owned(),
                message: format!("status {code}: {}", body.trim()),
            }),
        }
    }

    /// Every flow the agent holds (`/api/v1/flows`), attributed, with verdicts and drops.
    /// A line that does not parse is an error naming the line.
    pub async fn flows(&self) -> Result<Vec<ObservedFlow>, AgentError> {
        let body = self.get_ok("/api/v1/flows").await?;
        let mut flows = Vec::new();
        for (n, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let flow: ObservedFlow = serde_json::from_str(line).map_err(|e| AgentError::Http {
                path: "/api/v1/flows".into(),
                message: format!("line {}: {e}", n + 1),
            })?;
            flows.push(flow);
        }
        Ok(flows)
    }

    /// A scrape of `/metrics` (Prometheus text format).
    pub async fn metrics(&self) -> Result<String, AgentError> {
        self.get_ok("/metrics").await
    }

    /// Stops the agent with SIGTERM (it sweeps a last time and detaches), waiting up to 5 s
    /// before killing it.
    pub async fn stop(self) {
        self.process.stop().await;
    }
}

/// The lab's agents, one per node (in [`LabModel::nodes`](super::model::LabModel::nodes)
/// order), as the DaemonSet runs them.
#[derive(Debug)]
pub struct Agents(Vec<AgentHandle>);

impl Agents {
    /// Starts one agent per node of `model` (see [`AgentHandle::start`]), node `n` logging to
    /// `logs[n]`; every node's agent uses `source` (the other nodes reach an in-cluster API
    /// server at `remote_api`, the first node's address).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        topo: &Topology,
        model: &super::model::LabModel,
        program: &Path,
        source: &AgentSource,
        remote_api: Option<SocketAddr>,
        subnets: &Path,
        logs: &[PathBuf],
        timeout: Duration,
    ) -> Result<Agents, AgentError> {
        let mut agents = Vec::with_capacity(model.nodes.len());
        for (n, node) in model.nodes.iter().enumerate() {
            let source = match (source, remote_api) {
                (AgentSource::InCluster(c), Some(api)) if n > 0 => {
                    AgentSource::InCluster(super::control_plane::InCluster { api, ..c.clone() })
                }
                _ => source.clone(),
            };
            agents.push(
                AgentHandle::start(
                    topo,
                    (n, node),
                    program,
                    &source,
                    subnets,
                    &logs[n],
                    timeout,
                )
                .await?,
            );
        }
        Ok(Agents(agents))
    }

    /// Each node's agent.
    pub fn each(&self) -> &[AgentHandle] {
        &self.0
    }

    /// Every flow of every agent (each record names its node), in node order.
    pub async fn flows(&self) -> Result<Vec<ObservedFlow>, AgentError> {
        let mut all = Vec::new();
        for a in &self.0 {
            all.extend(a.flows().await?);
        }
        Ok(all)
    }

    /// Ends the agents' drift learning: every node's baseline file becomes `baseline` (the
    /// dependencies the whole cluster learned, without a learning period), and waits (up to
    /// `timeout`) until every agent has reloaded it. From then on, a new dependency is drift.
    pub(crate) async fn end_drift_learning(
        &self,
        baseline: &crate::drift::Baseline,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        for a in &self.0 {
            baseline
                .save(&a.drift_baseline)
                .map_err(|source| AgentError::Baseline {
                    path: a.drift_baseline.clone(),
                    source,
                })?;
        }
        let deadline = Instant::now() + timeout;
        for a in &self.0 {
            loop {
                let report: serde_json::Value =
                    serde_json::from_str(&a.get_ok("/api/v1/drift").await?).map_err(|e| {
                        AgentError::Http {
                            path: "/api/v1/drift".into(),
                            message: e.to_string(),
                        }
                    })?;
                if report["learning"] == false && report["baseline_edges"] == baseline.len() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(AgentError::Http {
                        path: "/api/v1/drift".into(),
                        message: format!(
                            "the agent on {} did not load the drift baseline within {timeout:?}: {report}",
                            a.node
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Every agent's `/api/v1/drift`, by node.
    pub async fn drift(&self) -> Result<Vec<(String, serde_json::Value)>, AgentError> {
        let mut all = Vec::new();
        for a in &self.0 {
            let report = serde_json::from_str(&a.get_ok("/api/v1/drift").await?).map_err(|e| {
                AgentError::Http {
                    path: "/api/v1/drift".into(),
                    message: e.to_string(),
                }
            })?;
            all.push((a.node.clone(), report));
        }
        Ok(all)
    }

    /// Stops every agent (see [`AgentHandle::stop`]).
    pub async fn stop(self) {
        for a in self.0 {
            a.stop().await;
        }
    }
}

/// The agent's log file, opened twice: its standard output and its standard error.
fn log_files(log: &Path) -> Result<(std::fs::File, std::fs::File), AgentError> {
    let log_file = std::fs::File::create(log).map_err(|source| AgentError::Log {
        path: log.to_path_buf(),
        source,
    })?;
    let err_file = log_file.try_clone().map_err(|source| AgentError::Log {
        path: log.to_path_buf(),
        source,
    })?;
    Ok((log_file, err_file))
}

/// The lab agent's arguments (without its inventory source): listening on `listen`, node
/// `node_name`, the lab's settings for drops, enforcement, drift learning into
/// `drift_baseline`, intervals, output and API.
fn agent_args(
    listen: SocketAddr,
    node_name: &str,
    subnets: &Path,
    drift_baseline: &Path,
) -> Vec<OsString> {
    let secs = format!("{}s", AGENT_INTERVAL.as_secs());
    vec![
        "agent".into(),
        "--subnets".into(),
        subnets.into(),
        "--listen".into(),
        listen.to_string().into(),
        "--node-name".into(),
        node_name.to_owned().into(),
        "--interfaces".into(),
        "veth*".into(),
        // Every node of the lab shares the machine's kernel: each agent reports the drops
        // of its own node (namespace), as on separate machines.
        "--drop-scope".into(),
        "netns".into(),
        // The lab hands the agents the policies before it loads their rules and probes
        // only after: a denied flow first seen after that is judged at once.
        "--enforcement-grace".into(),
        "0s".into(),
        // The agents learn the dependencies of the learning phase; the lab then ends the
        // learning (`Agents::end_drift_learning`) and what comes after is drift.
        "--drift-baseline".into(),
        drift_baseline.into(),
        "--drift-learn".into(),
        "24h".into(),
        "--sweep-interval".into(),
        secs.clone().into(),
        "--inventory-poll-interval".into(),
        secs.into(),
        "--output".into(),
        "none".into(),
        // The lab reads /api/v1 itself, on the node's address (only the lab's namespaces
        // reach it).
        "--api-auth".into(),
        "none".into(),
        "--allow-unauthenticated-remote-api".into(),
    ]
}

/// The in-cluster agent's command: `program args` run through `env` (the API server's
/// `KUBERNETES_SERVICE_HOST`/`PORT`, no `KUBECONFIG`) and `unshare --mount`, which bind-mounts
/// the ServiceAccount files where a pod has them (the directory is created first).
fn in_cluster(
    c: &super::control_plane::InCluster,
    program: OsString,
    mut args: Vec<OsString>,
) -> Result<(OsString, Vec<OsString>), AgentError> {
    let sa = Path::new(netpol_observe_agent::inventory::kubeapi::SERVICE_ACCOUNT_DIR);
    std::fs::create_dir_all(sa).map_err(|source| AgentError::Log {
        path: sa.to_owned(),
        source,
    })?;
    let mut wrapped: Vec<OsString> = vec![
        "-u".into(),
        "KUBECONFIG".into(),
        format!("KUBERNETES_SERVICE_HOST={}", c.api.ip()).into(),
        format!("KUBERNETES_SERVICE_PORT={}", c.api.port()).into(),
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!("mount --bind \"$0\" {} && exec \"$@\"", sa.display()).into(),
        c.service_account_dir.as_os_str().to_owned(),
        program,
    ];
    wrapped.append(&mut args);
    Ok(("env".into(), wrapped))
}
