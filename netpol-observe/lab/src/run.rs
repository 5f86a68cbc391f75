//! The lab pipeline: build the node, write the inventory, start the agent in the node's
//! namespace, drive the traffic, collect the flows from the agent, recommend policies, verify
//! them against the flows, (enforce the policies and probe again, with the drops the agent
//! reported,) scrape the metrics, stop the agent, and always clean up — on success, on error,
//! and on Ctrl-C/SIGTERM (the agent handle and the topology are dropped with the pipeline
//! future: the agent gets SIGTERM, then the namespaces are removed).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;

use super::{
    agent::{AGENT_INTERVAL, AGENT_INVENTORY_DIR, AgentError, AgentHandle, AgentSource, Agents},
    control_plane::{self, ControlPlane, ControlPlaneError},
    enforce::{self, EnforceError},
    expect::{self, Coverage, Seen, drop_of, unenforced_of},
    inventory::{self, InventoryError},
    model::{LabModel, ProbeKind, ProbeModel},
    netns::NetnsError,
    prometheus::{self, Comparison, PrometheusError, PrometheusHandle},
    rotation::{self, RotationReport},
    topology::Topology,
    traffic::{self, Outcome, ProbeResult, Timeouts},
};

use crate::{
    attribution::Subnets,
    flow::FlowRecord,
    policy::{PolicyEngine, PolicyError},
    recommend::{RecommendConfig, Recommender, RenderError, render_yaml, verify::VerifyReport},
};

/// A lab run that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Building or changing the node failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The control plane (`--apiserver`) failed.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// The inventory could not be written.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The written inventory could not be read back (a bug of the lab's inventory writer).
    #[error("the lab's inventory does not load")]
    Cluster(#[from] netpol_observe_agent::inventory::InventoryError),
    /// The policies could not be compiled.
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The policies to verify do not compile in the policy engine.
    #[error("policies")]
    Policy(#[from] PolicyError),
    /// The recommended policies could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// An output file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The lab's Prometheus failed.
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
    /// Prometheus' answer to the query of `recommend --prometheus` is not usable.
    #[error(transparent)]
    Source(#[from] crate::recommend::sources::SourceError),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted by {0}; the lab was removed")]
    Interrupted(&'static str),
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Output folder (created).
    pub out: PathBuf,
    /// Enforce policies and probe again.
    pub enforce: bool,
    /// Policies to enforce (default: the recommended ones).
    pub policies: Option<Vec<NetworkPolicy>>,
    /// Probe timeouts.
    pub timeouts: Timeouts,
    /// The `netpol-observe` binary run as the agent (normally this very executable).
    pub agent_program: PathBuf,
    /// How long to wait for the agent to be ready, and for the flows of the traffic.
    pub agent_timeout: Duration,
    /// `--apiserver`: keep the lab's objects in a real kube-apiserver (these binaries) and run
    /// the agent in in-cluster mode; `None`: inventory files, standalone agent.
    pub apiserver: Option<control_plane::Binaries>,
    /// The `prometheus` binary: run one Prometheus scraping the agent and compare
    /// `recommend --prometheus` with `recommend --agent`; `None`: no Prometheus.
    pub prometheus: Option<PathBuf>,
}

/// One line of `enforce.json` (DESIGN contract, plus `connections`, `succeeded`, `error`).
#[derive(Debug, Clone, Serialize)]
pub struct EnforceProbe {
    /// `traffic` or `forbidden`.
    pub kind: ProbeKind,
    /// `from` as written.
    pub from: String,
    /// `to` as written.
    pub to: String,
    /// Port as addressed.
    pub port: u16,
    /// `TCP`/`UDP`.
    pub protocol: String,
    /// `allowed` for traffic, `denied` for forbidden probes.
    pub expected: Seen,
    /// What happened.
    pub observed: Seen,
    /// The kernel drop reason the agent reported for the probe's flows (e.g.
    /// `NETFILTER_DROP`), null when nothing was dropped.
    pub drop_reason: Option<String>,
    /// The isolating policy (`ns/name`, comma-separated when several) the agent named for
    /// the drop, `unknown` when it could not name one, null when nothing was dropped.
    pub policy: Option<String>,
    /// For a probe the policies deny that got through: the policies the agents said were not
    /// enforced (the flow record's `unenforced`, on a node whose CNI does not enforce), null
    /// otherwise.
    pub unenforced: Option<String>,
    /// Connections attempted.
    pub connections: u32,
    /// Connections that went through.
    pub succeeded: u32,
    /// The first failure, if any.
    pub error: Option<String>,
}

impl EnforceProbe {
    /// Whether the probe did what it should, and a dropped forbidden probe was reported by
    /// the agent with its reason.
    pub fn ok(&self) -> bool {
        self.expected == self.observed
            && (self.kind != ProbeKind::Forbidden || self.drop_reason.is_some())
    }
}

/// A drift edge an agent reported: `node: src → dst port/protocol kind (N flows)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftLine {
    /// The agent's node.
    pub node: String,
    /// Source peer (`ns/workload` or subnet).
    pub src: String,
    /// Destination peer.
    pub dst: String,
    /// `port/protocol`.
    pub port: String,
    /// `new_pair`, `new_port` or `new_destination`.
    pub kind: String,
    /// Flows.
    pub flows: u64,
}

impl DriftLine {
    fn of(node: &str, e: &serde_json::Value) -> DriftLine {
        let peer = |p: &serde_json::Value| match p["namespace"].as_str() {
            Some(ns) if !ns.is_empty() => {
                format!("{ns}/{}", p["workload"].as_str().unwrap_or_default())
            }
            _ => p["workload"].as_str().unwrap_or_default().to_owned(),
        };
        DriftLine {
            node: node.to_owned(),
            src: peer(&e["src"]),
            dst: peer(&e["dst"]),
            port: format!(
                "{}/{}",
                e["port"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                e["protocol"].as_str().unwrap_or_default()
            ),
            kind: e["kind"].as_str().unwrap_or_default().to_owned(),
            flows: e["flows"].as_u64().unwrap_or_default(),
        }
    }
}

/// The recommendation the lab wrote.
#[derive(Debug, Clone, Default)]
pub struct Recommended {
    /// The policies (`recommended.yaml`).
    pub policies: Vec<NetworkPolicy>,
    /// The recommender's notes.
    pub notes: Vec<String>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct LabReport {
    /// The learning-phase traffic.
    pub learning: Vec<ProbeResult>,
    /// The flows the agent reported for the learning phase (`flows.jsonl`).
    pub flows: Vec<FlowRecord>,
    /// The flows sorted against the traffic entries.
    pub coverage: Coverage,
    /// The traffic entries whose flows the agent did not report (see [`Coverage::missing`]).
    pub missing: Vec<String>,
    /// The recommended policies.
    pub recommended: Recommended,
    /// The verification of the recommended policies against the flows (`verify.json`).
    pub verify: VerifyReport,
    /// Where the enforced policies came from (`recommended.yaml` or `--policies`).
    pub enforced_policies: Option<String>,
    /// The enforcement probes (with `--enforce`).
    pub enforced: Option<Vec<EnforceProbe>>,
    /// `recommend --prometheus` against `recommend --agent` (`prometheus.json`), when the
    /// lab ran Prometheus.
    pub prometheus: Option<Comparison>,
    /// The dependencies the agents reported as drift after the learning phase (`drift.json`):
    /// with `--enforce`, the forbidden probes; never a traffic entry.
    pub drift: Vec<DriftLine>,
    /// The rotation steps (`rotation.json`; with `--enforce`, externals with `rotateTo`).
    pub rotations: Vec<RotationReport>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Run id (names the namespaces `npo-lab-<id>-*`).
    pub run_id: String,
}

impl LabReport {
    /// Whether everything did what it should: every traffic entry went through and was
    /// reported by the agent, the recommended policies allow every observed flow, and with
    /// `--enforce` every probe did what it should (forbidden probes dropped and reported), and
    /// with Prometheus `recommend --prometheus` gave the policies of `recommend --agent`.
    pub fn ok(&self) -> bool {
        self.learning.iter().all(ProbeResult::as_expected)
            && self.prometheus.iter().all(|c| c.equal)
            && self.missing.is_empty()
            && self.verify.is_clean()
            && self.enforced.iter().flatten().all(EnforceProbe::ok)
            && self.rotations.iter().all(RotationReport::ok)
    }
}

fn write(path: &Path, contents: &[u8], files: &mut Vec<PathBuf>) -> Result<(), LabError> {
    std::fs::write(path, contents).map_err(|source| LabError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    files.push(path.to_path_buf());
    Ok(())
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

async fn shutdown_signal() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term => "SIGTERM",
    }
}

/// Runs the lab for `model` (root). Everything created is removed before this returns, also
/// when it fails or is interrupted by Ctrl-C/SIGTERM.
pub async fn run(model: &LabModel, opts: &LabOptions) -> Result<LabReport, LabError> {
    let (report, running) = start(model, opts).await?;
    running.finish().await?;
    Ok(report)
}

/// Runs the pipeline for `model` (root) and leaves the node, the agent and Prometheus running
/// (for `--keep-running`): [`Running::finish`] removes them, as does dropping it. On error and
/// on Ctrl-C/SIGTERM during the pipeline everything created is removed before this returns.
pub async fn start(model: &LabModel, opts: &LabOptions) -> Result<(LabReport, Running), LabError> {
    std::fs::create_dir_all(&opts.out).map_err(|source| LabError::Write {
        path: opts.out.clone(),
        source,
    })?;
    tokio::select! {
        r = pipeline(model, opts) => r,
        why = shutdown_signal() => Err(LabError::Interrupted(why)),
    }
}

/// Waits for Ctrl-C or SIGTERM and names it (`--keep-running`).
pub async fn wait_for_signal() -> &'static str {
    shutdown_signal().await
}

/// A lab whose pipeline is done but whose node, agent, Prometheus and control plane still run.
#[derive(Debug)]
pub struct Running {
    agents: Agents,
    prometheus: Option<PrometheusHandle>,
    control_plane: Option<ControlPlane>,
    topo: Topology,
}

impl Running {
    /// The lab's Prometheus, when it runs one.
    pub fn prometheus(&self) -> Option<&PrometheusHandle> {
        self.prometheus.as_ref()
    }

    /// The agents, one per node.
    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// The first node's network namespace, from which every agent is reachable on its node's
    /// address.
    pub fn first_node_netns(&self) -> &str {
        self.topo.node_netns()
    }

    /// Stops the agent and Prometheus (SIGTERM), removes the control plane's data and tears
    /// the node down.
    pub async fn finish(self) -> Result<(), LabError> {
        let Running {
            agents,
            prometheus,
            control_plane,
            mut topo,
        } = self;
        agents.stop().await;
        if let Some(p) = prometheus {
            p.stop().await;
        }
        if let Some(cp) = &control_plane {
            cp.remove_data();
        }
        topo.teardown()?;
        drop(control_plane);
        Ok(())
    }
}

/// The `netpol-observe.io/flows` evidence of each policy, by `ns/name`.
fn evidence_flows(ps: &[NetworkPolicy]) -> std::collections::BTreeMap<String, String> {
    ps.iter()
        .filter_map(|p| {
            let n = p
                .metadata
                .annotations
                .as_ref()?
                .get(crate::recommend::FLOWS)?;
            Some((policy_key(p), n.clone()))
        })
        .collect()
}

/// `ns/name` of a policy.
fn policy_key(p: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Compares two policy sets by name and content, evidence annotations aside: the names of
/// each and the names that differ.
fn compare_policies(
    a: &[NetworkPolicy],
    b: &[NetworkPolicy],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let keyed = |ps: &[NetworkPolicy]| -> std::collections::BTreeMap<String, serde_json::Value> {
        ps.iter()
            .map(|p| {
                let mut p = p.clone();
                p.metadata.annotations = None;
                (policy_key(&p), serde_json::to_value(&p).unwrap_or_default())
            })
            .collect()
    };
    let (ka, kb) = (keyed(a), keyed(b));
    let differing = ka
        .keys()
        .chain(kb.keys())
        .filter(|k| ka.get(*k) != kb.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    (
        ka.into_keys().collect(),
        kb.into_keys().collect(),
        differing,
    )
}

/// `recommend --agent` (every agent's `/api/v1/flows` as `recommend` reads and merges them) against
/// `recommend --prometheus` (the instant query over the time Prometheus ran, plus a minute),
/// both with the lab's recommender configuration. Prometheus is asked again every scrape
/// interval until both agree or `timeout` passes (its last scrape may predate the agent's
/// last sweep).
async fn compare_sources(
    agents: &Agents,
    prom: &PrometheusHandle,
    cluster: &netpol_observe_agent::inventory::Inventory,
    subnets: &Subnets,
    config: &RecommendConfig,
    timeout: Duration,
) -> Result<Comparison, LabError> {
    use crate::recommend::sources;
    let mut per_agent = Vec::new();
    for agent in agents.each() {
        let body = match agent.get("/api/v1/flows").await? {
            (200, body) => body,
            (code, body) => {
                return Err(AgentError::Http {
                    path: "/api/v1/flows".into(),
                    message: format!("status {code}: {}", body.trim()),
                }
                .into());
            }
        };
        let origin = format!("agent {} /api/v1/flows", agent.listen());
        let (flows, errors) = sources::parse_agent_flows(&body, &origin);
        for e in &errors {
            tracing::warn!("{e}");
        }
        per_agent.push(flows);
    }
    let agent_flows = sources::merge_flows(per_agent);
    let from_agent = Recommender::new(cluster, subnets, config.clone())
        .recommend(&agent_flows)
        .policies;
    let url = format!("http://{}", prometheus::PROMETHEUS_LISTEN);
    let deadline = Instant::now() + timeout;
    loop {
        let window = jiff::SignedDuration::try_from(prom.uptime() + Duration::from_secs(60))
            .unwrap_or(jiff::SignedDuration::from_hours(1));
        let body = prom
            .query(&sources::prometheus::prometheus_query(window))
            .await?;
        let (flows, notes) = sources::prometheus::parse_prometheus(
            &body,
            &format!("{url}/api/v1/query"),
            cluster,
            subnets,
            window,
        )?;
        let from_prometheus = Recommender::new(cluster, subnets, config.clone())
            .recommend(&flows)
            .policies;
        let (agent_names, prometheus_names, differing) =
            compare_policies(&from_agent, &from_prometheus);
        let (agent_flows, prometheus_flows) = (
            evidence_flows(&from_agent),
            evidence_flows(&from_prometheus),
        );
        let done =
            (differing.is_empty() && agent_flows == prometheus_flows) || Instant::now() > deadline;
        if done {
            return Ok(Comparison {
                url,
                netns: prom.netns().to_string(),
                window_seconds: window.as_secs(),
                agent: agent_names,
                prometheus: prometheus_names,
                equal: differing.is_empty(),
                differing,
                agent_flows,
                prometheus_flows,
                notes,
            });
        }
        tokio::time::sleep(prometheus::SCRAPE_INTERVAL).await;
    }
}

fn subnets_of(model: &LabModel) -> Subnets {
    Subnets::new(
        model
            .externals
            .iter()
            .filter(|e| !e.anonymous)
            .map(|e| (e.name.clone(), ipnet::IpNet::V4(e.cidr))),
    )
}

/// Polls the agents until every traffic entry's flows are there (or `timeout`), then waits one
/// more sweep so the counters and states are final. Returns every agent's flows as reported,
/// sorted by first seen.
async fn collect_flows(
    model: &LabModel,
    agents: &Agents,
    timeout: Duration,
) -> Result<Vec<FlowRecord>, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let flows: Vec<FlowRecord> = agents.flows().await?.into_iter().map(|f| f.flow).collect();
        let coverage = Coverage::of(model, &flows);
        if coverage.complete() {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                missing = ?coverage.missing(model),
                "the agent did not report every traffic entry within {timeout:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(AGENT_INTERVAL + Duration::from_millis(300)).await;
    let mut flows: Vec<FlowRecord> = agents.flows().await?.into_iter().map(|f| f.flow).collect();
    flows.sort_by(|a, b| {
        (
            a.first_seen,
            a.src.ip,
            a.src.port,
            a.dst.ip,
            a.dst.port,
            &a.node,
        )
            .cmp(&(
                b.first_seen,
                b.src.ip,
                b.src.port,
                b.dst.ip,
                b.dst.port,
                &b.node,
            ))
    });
    Ok(flows)
}

fn jsonl(flows: &[FlowRecord]) -> Vec<u8> {
    let mut text = Vec::new();
    for f in flows {
        // Writing into a Vec does not fail.
        let _ = crate::flow::jsonl::write_line(&mut text, f);
    }
    text
}

/// The agent's `netpol_observe_inventory_objects` gauge for NetworkPolicies (set once a model
/// with them is in use).
async fn policies_in_use(agent: &AgentHandle) -> Result<Option<usize>, LabError> {
    let metrics = agent.metrics().await?;
    Ok(metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "netpol_observe_inventory_objects{resource=\"networking.k8s.io/networkpolicies\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}

/// Gives the agents the policies about to be enforced — through the API server
/// (`--apiserver`), else as a file in their inventory directory (renamed into place) — and
/// waits until every agent's model uses them.
async fn hand_policies_to_agents(
    agents: &Agents,
    control_plane: Option<&mut ControlPlane>,
    dir: &Path,
    out: &Path,
    policies: &[NetworkPolicy],
) -> Result<(), LabError> {
    // Every agent reads the same objects: the first one's count stands for all.
    let before = policies_in_use(&agents.each()[0]).await?.unwrap_or(0);
    match control_plane {
        Some(cp) => cp.apply_policies(policies).await?,
        None => {
            let staging = out.join(".enforced-policies.yaml");
            let target = dir.join("enforced-policies.yaml");
            std::fs::write(&staging, render_yaml(policies)?).map_err(|source| LabError::Write {
                path: staging.clone(),
                source,
            })?;
            std::fs::rename(&staging, &target).map_err(|source| LabError::Write {
                path: target.clone(),
                source,
            })?;
        }
    }
    let want = before + policies.len();
    let deadline = Instant::now() + AGENT_INTERVAL * 20;
    for agent in agents.each() {
        while policies_in_use(agent).await? != Some(want) {
            if Instant::now() > deadline {
                tracing::warn!(
                    log = %agent.log().display(),
                    want,
                    "the agent does not use the enforced policies yet: drops may name no policy"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// What the agents said about the enforcement probes: per probe, its drop (reason, policy)
/// and, for a forbidden probe that got through, the policies they reported not enforced.
type ProbeReports = Vec<(Option<(String, Option<String>)>, Option<String>)>;

/// Waits (up to a few drop-reading ticks) until the agents reported a drop for every probe
/// that was denied and an unenforced flow for every forbidden probe that got through, and
/// returns per probe what they reported.
async fn probe_reports(
    model: &LabModel,
    agents: &Agents,
    probes: &[&ProbeModel],
    results: &[ProbeResult],
    since: Timestamp,
) -> Result<ProbeReports, LabError> {
    let deadline = Instant::now() + AGENT_INTERVAL * 5;
    loop {
        let flows = agents.flows().await?;
        let found: ProbeReports = probes
            .iter()
            .map(|p| {
                (
                    drop_of(model, p, &flows, since),
                    unenforced_of(model, p, &flows, since),
                )
            })
            .collect();
        let complete = found
            .iter()
            .zip(results)
            .all(|((d, u), r)| match r.observed {
                Outcome::Allowed => r.kind != ProbeKind::Forbidden || u.is_some(),
                _ => d.is_some(),
            });
        if complete || Instant::now() > deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `<stem>.<ext>` in a one-node lab, `<stem>-<node>.<ext>` with several nodes (agent logs,
/// metrics scrapes).
fn per_node_file(model: &LabModel, stem: &str, node: &str, ext: &str) -> String {
    match model.nodes.len() {
        1 => format!("{stem}.{ext}"),
        _ => format!("{stem}-{node}.{ext}"),
    }
}

/// The pipeline, stage by stage. The node, the control plane, the agents and Prometheus are
/// locals here, declared in this order, so that on error they are dropped (stopped) in the
/// reverse order: Prometheus and the agents before the control plane, the node last.
async fn pipeline(model: &LabModel, opts: &LabOptions) -> Result<(LabReport, Running), LabError> {
    let mut files = Vec::new();
    tracing::info!(
        pods = model.pods.len(),
        services = model.services.len(),
        externals = model.externals.len(),
        "building the lab node"
    );
    let mut topo = Topology::create(model)?;
    topo.start_servers(model)?;

    let inputs = write_inputs(model, opts, &mut files)?;
    let cluster = netpol_observe_agent::inventory::Inventory::from_path(&inputs.inventory)?;
    let (source, mut control_plane) =
        agent_source(model, opts, &topo, &inputs.agent_dir, &mut files).await?;
    let agents = start_agents(model, opts, &topo, &source, &inputs.subnets, &mut files).await?;
    let prometheus = match &opts.prometheus {
        Some(program) => Some(start_prometheus(opts, &topo, &agents, program, &mut files).await?),
        None => None,
    };

    let learned = learn(model, opts, &topo, &agents, &cluster, &mut files).await?;

    let (recommended, config) = recommend(model, &cluster, &learned.flows, opts, &mut files)?;
    let comparison = match &prometheus {
        Some(prom) => Some(
            compare_with_prometheus(&agents, prom, model, opts, &cluster, &config, &mut files)
                .await?,
        ),
        None => None,
    };
    let engine = PolicyEngine::compile(&recommended.policies, &cluster)?;
    let mut verify = crate::recommend::verify::verify(&engine, &learned.flows);
    verify.selects_nothing =
        crate::recommend::verify::selects_nothing(&recommended.policies, &cluster);
    write(&opts.out.join("verify.json"), &json(&verify), &mut files)?;

    let enforcement = if opts.enforce {
        let (policies, from) = match &opts.policies {
            Some(p) => (p.clone(), "--policies"),
            None => (recommended.policies.clone(), "recommended.yaml"),
        };
        let stage = EnforceStage {
            model,
            opts,
            topo: &topo,
            agents: &agents,
            agent_dir: &inputs.agent_dir,
        };
        stage
            .run(policies, from, control_plane.as_mut(), &mut files)
            .await?
    } else {
        Enforcement::default()
    };

    let drift = write_drift_and_metrics(model, opts, &agents, &mut files).await?;
    let report = LabReport {
        learning: learned.learning,
        flows: learned.flows,
        coverage: learned.coverage,
        missing: learned.missing,
        recommended,
        verify,
        enforced_policies: enforcement.policies,
        enforced: enforcement.probes,
        prometheus: comparison,
        drift,
        rotations: enforcement.rotations,
        files,
        run_id: topo.run_id().to_string(),
    };
    let running = Running {
        agents,
        prometheus,
        control_plane,
        topo,
    };
    Ok((report, running))
}

/// The files the lab writes before starting anything else.
struct Inputs {
    /// `inventory.yaml`: the lab's objects.
    inventory: PathBuf,
    /// `subnets.yaml`: the named externals.
    subnets: PathBuf,
    /// The agents' inventory folder ([`AGENT_INVENTORY_DIR`]), emptied.
    agent_dir: PathBuf,
}

/// Writes `inventory.yaml` and `subnets.yaml` and empties the agents' inventory folder (the
/// lab's objects go there, later also the enforced policies).
fn write_inputs(
    model: &LabModel,
    opts: &LabOptions,
    files: &mut Vec<PathBuf>,
) -> Result<Inputs, LabError> {
    let inventory_path = opts.out.join("inventory.yaml");
    inventory::write(model, &inventory_path)?;
    files.push(inventory_path.clone());
    let subnets: std::collections::BTreeMap<&str, String> = model
        .externals
        .iter()
        .filter(|e| !e.anonymous)
        .map(|e| (e.name.as_str(), e.cidr.to_string()))
        .collect();
    let subnets_path = opts.out.join("subnets.yaml");
    write(
        &subnets_path,
        crate::yaml::to_string(&subnets)
            .unwrap_or_default()
            .as_bytes(),
        files,
    )?;
    let agent_dir = opts.out.join(AGENT_INVENTORY_DIR);
    if agent_dir.exists() {
        std::fs::remove_dir_all(&agent_dir).map_err(|source| LabError::Write {
            path: agent_dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&agent_dir).map_err(|source| LabError::Write {
        path: agent_dir.clone(),
        source,
    })?;
    Ok(Inputs {
        inventory: inventory_path,
        subnets: subnets_path,
        agent_dir,
    })
}

/// Where the agents read the cluster from: without `--apiserver`, the lab's objects written
/// into `agent_dir`; with it, a control plane started in the node's namespace, holding the
/// lab's objects, with a service account for the agents (returned, to be stopped later).
async fn agent_source(
    model: &LabModel,
    opts: &LabOptions,
    topo: &Topology,
    agent_dir: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<(AgentSource, Option<ControlPlane>), LabError> {
    let Some(bins) = &opts.apiserver else {
        inventory::write(model, &agent_dir.join("inventory.yaml"))?;
        return Ok((AgentSource::Files(agent_dir.to_path_buf()), None));
    };
    tracing::info!("starting etcd and kube-apiserver in the node's namespace");
    let dir = opts.out.join("apiserver");
    let mut cp = ControlPlane::start(
        topo,
        bins,
        &dir,
        model.nodes[0].ip,
        model.service_cidr,
        opts.agent_timeout * 4,
    )
    .await?;
    files.push(dir.join("kube-apiserver.log"));
    cp.create_objects(&inventory::objects(model)?).await?;
    let sa = dir.join("serviceaccount");
    cp.agent_identity(&sa).await?;
    let source = AgentSource::InCluster(control_plane::InCluster {
        service_account_dir: sa,
        api: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, control_plane::API_PORT)),
    });
    Ok((source, Some(cp)))
}

/// Starts one agent per node, each logging to `agent[-<node>].log`.
async fn start_agents(
    model: &LabModel,
    opts: &LabOptions,
    topo: &Topology,
    source: &AgentSource,
    subnets_path: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<Agents, LabError> {
    tracing::info!(nodes = model.nodes.len(), "starting one agent per node");
    let agent_logs: Vec<PathBuf> = model
        .nodes
        .iter()
        .map(|n| opts.out.join(per_node_file(model, "agent", &n.name, "log")))
        .collect();
    let agents = Agents::start(
        topo,
        model,
        &opts.agent_program,
        source,
        Some(SocketAddr::from((
            model.nodes[0].ip,
            control_plane::API_PORT,
        ))),
        subnets_path,
        &agent_logs,
        opts.agent_timeout,
    )
    .await?;
    files.extend(agent_logs);
    Ok(agents)
}

/// Starts Prometheus (`program`) in the node's namespace, scraping every agent.
async fn start_prometheus(
    opts: &LabOptions,
    topo: &Topology,
    agents: &Agents,
    program: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<PrometheusHandle, LabError> {
    tracing::info!("starting Prometheus in the node's namespace");
    let dir = opts.out.join(prometheus::PROMETHEUS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Write {
        path: dir.clone(),
        source,
    })?;
    let p = PrometheusHandle::start(
        topo,
        program,
        &dir,
        &agents
            .each()
            .iter()
            .map(|a| (a.listen(), a.node()))
            .collect::<Vec<_>>(),
        opts.agent_timeout,
    )
    .await?;
    files.push(p.log().to_path_buf());
    Ok(p)
}

/// What the learning phase produced (see the fields of the same names in [`LabReport`]).
struct Learned {
    learning: Vec<ProbeResult>,
    flows: Vec<FlowRecord>,
    coverage: Coverage,
    missing: Vec<String>,
}

/// The learning phase: drives the traffic entries, collects the agents' flows (sorted against
/// the entries), and ends the agents' drift learning with what they counted as the baseline.
async fn learn(
    model: &LabModel,
    opts: &LabOptions,
    topo: &Topology,
    agents: &Agents,
    cluster: &netpol_observe_agent::inventory::Inventory,
    files: &mut Vec<PathBuf>,
) -> Result<Learned, LabError> {
    tracing::info!(
        entries = model
            .probes
            .iter()
            .filter(|p| p.kind == ProbeKind::Traffic)
            .count(),
        "driving the traffic"
    );
    let learning = traffic::run_all(model, topo, &[ProbeKind::Traffic], opts.timeouts).await;
    write(&opts.out.join("probes.json"), &json(&learning), files)?;

    tracing::info!("waiting for the agents to report every traffic entry");
    let mut flows = collect_flows(model, agents, opts.agent_timeout).await?;
    // The learning phase is the baseline: what the agents counted (as they saw it) is every
    // node's baseline from now on, and any new dependency is drift.
    let mut baseline = crate::drift::Baseline::default();
    let attributor = crate::attribution::Attributor::new(cluster, &subnets_of(model));
    for f in &flows {
        baseline.insert_record(f, &attributor);
    }
    expect::attribute_entries(model, &mut flows);
    let coverage = Coverage::of(model, &flows);
    agents
        .end_drift_learning(&baseline, opts.agent_timeout)
        .await?;
    write(&opts.out.join("flows.jsonl"), &jsonl(&flows), files)?;
    let missing = coverage.missing(model);
    Ok(Learned {
        learning,
        flows,
        coverage,
        missing,
    })
}

/// Recommends policies from the learning phase's `flows` (`recommended.yaml`), with the
/// lab's recommender configuration (returned, for the comparison with Prometheus).
fn recommend(
    model: &LabModel,
    cluster: &netpol_observe_agent::inventory::Inventory,
    flows: &[FlowRecord],
    opts: &LabOptions,
    files: &mut Vec<PathBuf>,
) -> Result<(Recommended, RecommendConfig), LabError> {
    tracing::info!(flows = flows.len(), "recommending policies");
    let subnets = subnets_of(model);
    let config = RecommendConfig {
        // The lab's traffic list is the whole legitimate traffic: no "observed too briefly".
        min_observation: jiff::SignedDuration::ZERO,
        cluster_ranges: vec![ipnet::IpNet::V4(model.service_cidr)],
        ..RecommendConfig::default()
    };
    let rec = Recommender::new(cluster, &subnets, config.clone()).recommend(flows);
    write(
        &opts.out.join("recommended.yaml"),
        render_yaml(&rec.policies)?.as_bytes(),
        files,
    )?;
    let recommended = Recommended {
        policies: rec.policies,
        notes: rec.notes,
    };
    Ok((recommended, config))
}

/// Compares `recommend --prometheus` with `recommend --agent` (see [`compare_sources`]) and
/// writes `prometheus.json`.
async fn compare_with_prometheus(
    agents: &Agents,
    prom: &PrometheusHandle,
    model: &LabModel,
    opts: &LabOptions,
    cluster: &netpol_observe_agent::inventory::Inventory,
    config: &RecommendConfig,
    files: &mut Vec<PathBuf>,
) -> Result<Comparison, LabError> {
    tracing::info!("comparing recommend --prometheus with recommend --agent");
    let c = compare_sources(
        agents,
        prom,
        cluster,
        &subnets_of(model),
        config,
        opts.agent_timeout,
    )
    .await?;
    if !c.equal {
        tracing::warn!(differing = ?c.differing, notes = ?c.notes, "recommend --prometheus and --agent differ");
    }
    write(&opts.out.join("prometheus.json"), &json(&c), files)?;
    Ok(c)
}

/// What the enforcement stage produced (see [`LabReport::enforced_policies`],
/// [`LabReport::enforced`], [`LabReport::rotations`]); empty without `--enforce`.
#[derive(Default)]
struct Enforcement {
    policies: Option<String>,
    probes: Option<Vec<EnforceProbe>>,
    rotations: Vec<RotationReport>,
}

/// What the enforcement stage works on.
struct EnforceStage<'a> {
    model: &'a LabModel,
    opts: &'a LabOptions,
    topo: &'a Topology,
    agents: &'a Agents,
    agent_dir: &'a Path,
}

impl EnforceStage<'_> {
    /// `--enforce`: compiles `policies` (read from `from`) into nft scripts, hands
    /// them to the agents, applies them on the nodes, probes every traffic entry and forbidden
    /// probe again with the drops the agents reported, then runs the rotation step.
    async fn run(
        &self,
        policies: Vec<NetworkPolicy>,
        from: &str,
        control_plane: Option<&mut ControlPlane>,
        files: &mut Vec<PathBuf>,
    ) -> Result<Enforcement, LabError> {
        let (model, opts) = (self.model, self.opts);
        let described = format!("{} policies from {from}", policies.len());
        let scripts = enforce::compile(model, &policies)?;
        let mut text = String::new();
        for (node, script) in model.nodes.iter().zip(&scripts) {
            if model.nodes.len() > 1 {
                text.push_str(&format!("# node {}\n", node.name));
            }
            text.push_str(script);
        }
        write(&opts.out.join("enforce.nft"), text.as_bytes(), files)?;
        hand_policies_to_agents(
            self.agents,
            control_plane,
            self.agent_dir,
            &opts.out,
            &policies,
        )
        .await?;
        tracing::info!(
            policies = policies.len(),
            "enforcing the policies on the node"
        );
        enforce::apply(self.topo, &scripts)?;
        let probes = self.probe_again().await?;
        write(&opts.out.join("enforce.json"), &json(&probes), files)?;
        // The rotation step: names move, the policies written for the old address drop.
        let rotations = rotation::run(
            model,
            self.topo,
            self.agents,
            opts.timeouts,
            opts.agent_timeout,
        )
        .await?;
        if !rotations.is_empty() {
            write(&opts.out.join("rotation.json"), &json(&rotations), files)?;
        }
        Ok(Enforcement {
            policies: Some(described),
            probes: Some(probes),
            rotations,
        })
    }

    /// Probes every traffic entry and forbidden probe with the policies enforced, and pairs
    /// each result with the drop (or unenforced policy) the agents reported for it.
    async fn probe_again(&self) -> Result<Vec<EnforceProbe>, LabError> {
        let model = self.model;
        // Flow timestamps have second precision at best: a margin, never the learning flows
        // (they ended a sweep ago).
        let since = Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_millis(500))
            .unwrap_or_else(|_| Timestamp::now());
        let kinds = [ProbeKind::Traffic, ProbeKind::Forbidden];
        let results = traffic::run_all(model, self.topo, &kinds, self.opts.timeouts).await;
        let probes: Vec<&ProbeModel> = model
            .probes
            .iter()
            .filter(|p| kinds.contains(&p.kind))
            .collect();
        tracing::info!("waiting for the agents to report the drops");
        let reports = probe_reports(model, self.agents, &probes, &results, since).await?;
        Ok(results
            .into_iter()
            .zip(reports)
            .map(|(r, (d, unenforced))| enforce_probe(r, d, unenforced))
            .collect())
    }
}

/// One line of `enforce.json`: a probe's result with the drop `d` (reason, policy) and the
/// policy not enforced the agents reported for it, each kept only where the probe's outcome
/// shows it (a drop where connections failed, an unenforced policy where it got through).
fn enforce_probe(
    r: ProbeResult,
    d: Option<(String, Option<String>)>,
    unenforced: Option<String>,
) -> EnforceProbe {
    let observed = Seen::of(&r);
    let (drop_reason, policy) = match d {
        Some((reason, policy)) if observed == Seen::Denied || r.succeeded < r.connections => {
            (Some(reason), policy)
        }
        _ => (None, None),
    };
    EnforceProbe {
        kind: r.kind,
        from: r.from,
        to: r.to,
        port: r.port,
        protocol: r.protocol,
        expected: match r.expected {
            Outcome::Allowed => Seen::Allowed,
            _ => Seen::Denied,
        },
        observed,
        drop_reason,
        policy,
        unenforced: unenforced.filter(|_| observed == Seen::Allowed),
        connections: r.connections,
        succeeded: r.succeeded,
        error: r.error,
    }
}

/// Writes `drift.json` (what came after the learning phase and is not in its baseline: the
/// probes only) and every agent's metrics; returns the drift as report lines.
async fn write_drift_and_metrics(
    model: &LabModel,
    opts: &LabOptions,
    agents: &Agents,
    files: &mut Vec<PathBuf>,
) -> Result<Vec<DriftLine>, LabError> {
    let drift = agents.drift().await?;
    let drift_file = serde_json::Value::Object(
        drift
            .iter()
            .map(|(node, report)| (node.clone(), report.clone()))
            .collect(),
    );
    write(&opts.out.join("drift.json"), &json(&drift_file), files)?;
    for agent in agents.each() {
        let metrics = agent.metrics().await?;
        let name = per_node_file(model, "metrics", agent.node(), "txt");
        write(&opts.out.join(name), metrics.as_bytes(), files)?;
    }
    Ok(drift
        .iter()
        .flat_map(|(node, report)| {
            report["drift"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |e| DriftLine::of(node, e))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(expected: Outcome, observed: Outcome, succeeded: u32) -> ProbeResult {
        ProbeResult {
            kind: if expected == Outcome::Allowed {
                ProbeKind::Traffic
            } else {
                ProbeKind::Forbidden
            },
            from: "a/web".into(),
            to: "a/api".into(),
            port: 80,
            protocol: "TCP".into(),
            expected,
            observed,
            connections: 2,
            succeeded,
            line: 1,
            error: None,
        }
    }

    #[test]
    fn a_mixed_outcome_counts_as_the_unexpected_one() {
        use Outcome::*;
        assert_eq!(Seen::of(&result(Allowed, Allowed, 2)), Seen::Allowed);
        assert_eq!(Seen::of(&result(Denied, Denied, 0)), Seen::Denied);
        // A traffic entry that failed once was denied; a forbidden probe through once, allowed.
        assert_eq!(Seen::of(&result(Allowed, Partial, 1)), Seen::Denied);
        assert_eq!(Seen::of(&result(Denied, Partial, 1)), Seen::Allowed);
    }

    #[test]
    fn a_forbidden_probe_is_ok_only_when_dropped_and_reported() {
        let probe = |observed, drop_reason: Option<&str>| EnforceProbe {
            kind: ProbeKind::Forbidden,
            from: "a/web".into(),
            to: "db".into(),
            port: 5432,
            protocol: "TCP".into(),
            expected: Seen::Denied,
            observed,
            drop_reason: drop_reason.map(str::to_owned),
            policy: None,
            unenforced: None,
            connections: 1,
            succeeded: 0,
            error: None,
        };
        assert!(probe(Seen::Denied, Some("NETFILTER_DROP")).ok());
        assert!(!probe(Seen::Denied, None).ok());
        assert!(!probe(Seen::Allowed, None).ok());
        let json = serde_json::to_value(probe(Seen::Denied, Some("NETFILTER_DROP"))).unwrap();
        assert_eq!(json["observed"], "denied");
        assert_eq!(json["expected"], "denied");
        assert_eq!(json["kind"], "forbidden");
        assert_eq!(json["policy"], serde_json::Value::Null);
    }
}
