//! The inventory-at-scale benchmark (`cargo xtask bench inventory`, via
//! `netpol-observe-bench inventory`): a synthetic cluster (default 100k pods, 5k
//! NetworkPolicies) fed as watch events into the live inventory's stores and snapshot builder
//! ([`live::feed`]: the same code as the API watch), then a stream of pod changes (adds,
//! deletes, label and address changes) at a fixed rate; each snapshot becomes the agent's
//! model either incrementally ([`Model::next`]) or by a full build ([`Model::new`], what
//! every snapshot cost before).
//!
//! The cluster and its changes are made by a producer process ([`produce`], the same binary
//! re-run) and arrive as JSON lines on a pipe, as watch events arrive from the API server: the
//! measured process holds only what the agent holds (stores, snapshots, models) and pays for
//! parsing the events, so its RSS and CPU are the agent's. Reports the process CPU spent per
//! second of the stream (the upkeep's core fraction), the latency from a change's arrival to
//! the first model that reflects it, the RSS, and the heap each part holds (allocator bytes in
//! use, measured as each part is built).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use k8s_openapi::{
    api::{
        core::v1::{Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::runtime::watcher::Event;
use netpol_observe_agent::{
    agent::Model,
    host,
    inventory::{
        Inventory, PodInfo,
        live::{self, LiveOptions},
    },
};
use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    policy::{PodTable, PolicyEngine, synth},
};

/// How each snapshot becomes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    /// [`Model::new`] on every snapshot (the behaviour before incremental updates).
    Full,
    /// [`Model::next`]: pod changes update the previous model.
    Incremental,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pods.
    pub pods: usize,
    /// NetworkPolicies.
    pub policies: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pod changes per second.
    pub rate: usize,
    /// Seconds of changes.
    pub seconds: u64,
    /// Model path.
    pub mode: Mode,
    /// Seed.
    pub seed: u64,
    /// The live inventory's debounce.
    pub debounce: Duration,
}

/// The heap (allocator bytes in use) each part of the inventory holds, MiB: measured as the
/// difference before and after each part is built (stores, then the first snapshot, then the
/// first model), the model's parts by building each again on its own.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Heap {
    /// The namespace and NetworkPolicy stores (5k policies kept whole).
    pub stores_policies_mib: f64,
    /// The pod store (the reflector's trimmed pods).
    pub store_pods_mib: f64,
    /// The first snapshot and what the builder keeps between snapshots.
    pub snapshot_mib: f64,
    /// The first model (`Model::new`: pod table, engine, attributor).
    pub model_mib: f64,
    /// Of the model: the pod table (`PodTable::new`).
    pub pod_table_mib: f64,
    /// Of the model: the engine on that table (`PolicyEngine::compile_shared`).
    pub engine_mib: f64,
    /// Of the model: the attributor (`Attributor::shared`).
    pub attributor_mib: f64,
    /// Everything in use at the end of the stream.
    pub end_mib: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Model path.
    pub mode: Mode,
    /// Pods at the start.
    pub pods: usize,
    /// Policies.
    pub policies: usize,
    /// The initial lists (parsed from the pipe), the first snapshot and model, seconds.
    pub initial_build_s: f64,
    /// Changes delivered.
    pub changes: usize,
    /// Models built during the stream.
    pub models: usize,
    /// Median time to build one model from a snapshot during the stream, ms.
    pub model_ms_p50: f64,
    /// Process CPU seconds per second of the stream (the upkeep's core fraction: parsing the
    /// events, stores, snapshots, models; the producer is another process).
    pub cpu_fraction: f64,
    /// Latency from a change's arrival to the first model reflecting it, ms.
    pub latency_ms_p50: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// Maximum.
    pub latency_ms_max: f64,
    /// Changes not reflected by the end of the run (should be 0).
    pub unreflected: usize,
    /// `VmRSS` at the end, MiB.
    pub rss_mib: f64,
    /// `VmHWM` (peak RSS) during the stream of changes, MiB.
    pub hwm_mib: f64,
    /// `VmRSS` when the first model is built, MiB.
    pub rss_initial_mib: f64,
    /// `VmHWM` up to the first model (the initial lists and build), MiB.
    pub hwm_initial_mib: f64,
    /// The heap by part.
    pub heap: Heap,
}

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// The allocator's bytes in use (glibc `mallinfo2`: every arena and the mmapped blocks), MiB.
fn heap_mib() -> f64 {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks + m.hblkhd) as f64 / (1024.0 * 1024.0)
    }
    #[cfg(not(target_env = "gnu"))]
    {
        0.0
    }
}

fn time(t: jiff::Timestamp) -> Time {
    Time(t)
}

/// A watch object for a synthetic pod.
fn pod_object(p: &PodInfo, version: u64) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(p.name.to_string()),
            namespace: Some(p.namespace.to_string()),
            uid: Some(p.uid.to_string()),
            resource_version: Some(version.to_string()),
            creation_timestamp: p.created.map(time),
            labels: Some(
                p.labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: p.node_name.as_ref().map(|n| n.to_string()),
            host_network: Some(p.host_network),
            containers: vec![Container {
                name: "main".into(),
                ports: Some(
                    p.container_ports
                        .iter()
                        .map(|c| ContainerPort {
                            name: c.name.clone(),
                            container_port: i32::from(c.port),
                            protocol: Some(c.protocol.to_string().to_uppercase()),
                            ..ContainerPort::default()
                        })
                        .collect(),
                ),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: p.ips.first().map(|i| i.to_string()),
            pod_ips: Some(p.ips.iter().map(|i| PodIP { ip: i.to_string() }).collect()),
            ..PodStatus::default()
        }),
    }
}

/// One line of the producer's stream.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", content = "o")]
enum Wire {
    /// A namespace of the initial list.
    Namespace(Box<Namespace>),
    /// A NetworkPolicy of the initial list.
    Policy(Box<NetworkPolicy>),
    /// A pod of the initial list.
    Pod(Box<Pod>),
    /// The initial lists are complete; the producer waits for a line on its stdin.
    Listed,
    /// A pod added or changed.
    Apply(Box<Pod>),
    /// A pod deleted.
    Delete(Box<Pod>),
    /// The stream is over.
    Done,
}

fn write_line(out: &mut impl Write, line: &Wire) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// The producer: writes the synthetic cluster's initial lists to `out` as JSON lines, waits for
/// a line on `start`, then writes the stream of pod changes at the configured rate.
pub fn produce(config: &Config, out: impl Write, mut start: impl BufRead) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let mut version = 1u64;
    let mut objects = write_initial_lists(config, version, &mut out)?;
    write_line(&mut out, &Wire::Listed)?;
    out.flush()?;
    let mut go = String::new();
    start.read_line(&mut go)?;

    // The stream of changes, paced.
    let mut rng = synth::Rng::new(config.seed ^ 0xc4a2);
    let total = config.rate * config.seconds as usize;
    let mut live_uids: Vec<String> = objects.keys().cloned().collect();
    live_uids.sort();
    let period = Duration::from_secs_f64(1.0 / config.rate.max(1) as f64);
    let t0 = Instant::now();
    for serial in 0..total {
        let due = t0 + period * u32::try_from(serial).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        version += 1;
        let line = change(serial, version, &mut rng, &mut live_uids, &mut objects)?;
        write_line(&mut out, &line)?;
        out.flush()?;
    }
    write_line(&mut out, &Wire::Done)?;
    out.flush()?;
    Ok(())
}

/// Writes the synthetic cluster's initial lists (namespaces, policies, live pods at resource
/// version `version`); returns the pods written by uid.
fn write_initial_lists(
    config: &Config,
    version: u64,
    out: &mut impl Write,
) -> anyhow::Result<HashMap<String, Pod>> {
    let mut inv = synth::cluster(config.namespaces, config.pods, config.seed);
    inv.network_policies = synth::policies(config.policies, config.namespaces, config.seed);
    netpol_observe_core::inventory::build::finish(&mut inv);
    for ns in inv.namespaces.values() {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.name.clone()),
                labels: Some(
                    ns.labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        write_line(out, &Wire::Namespace(Box::new(obj)))?;
    }
    for np in &inv.network_policies {
        write_line(out, &Wire::Policy(Box::new(np.clone())))?;
    }
    let mut objects: HashMap<String, Pod> = HashMap::new();
    for p in inv.pods.iter().filter(|p| p.deleted.is_none()) {
        let obj = pod_object(p, version);
        objects.insert(p.uid.to_string(), obj.clone());
        write_line(out, &Wire::Pod(Box::new(obj)))?;
    }
    Ok(objects)
}

/// Change number `serial` of the stream, at resource version `version`, on a live pod drawn
/// from `live_uids`: a new pod copied from it (one in four), its deletion, new labels, or a
/// new address; `live_uids` and `objects` follow.
fn change(
    serial: usize,
    version: u64,
    rng: &mut synth::Rng,
    live_uids: &mut Vec<String>,
    objects: &mut HashMap<String, Pod>,
) -> anyhow::Result<Wire> {
    let i = rng.below(live_uids.len());
    let ip = format!(
        "10.{}.{}.{}",
        200 + (serial >> 16) % 50,
        (serial >> 8) & 255,
        serial & 255
    );
    Ok(match rng.below(4) {
        0 => {
            let mut obj = objects[&live_uids[i]].clone();
            let uid = format!("churn-{serial}");
            obj.metadata.uid = Some(uid.clone());
            obj.metadata.name = Some(format!("churn-{serial}"));
            obj.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
            if let Some(s) = obj.status.as_mut() {
                s.pod_ip = Some(ip.clone());
                s.pod_ips = Some(vec![PodIP { ip }]);
            }
            obj.metadata.resource_version = Some(version.to_string());
            live_uids.push(uid.clone());
            objects.insert(uid, obj.clone());
            Wire::Apply(Box::new(obj))
        }
        1 => {
            let uid = live_uids.swap_remove(i);
            Wire::Delete(Box::new(objects.remove(&uid).unwrap_or_default()))
        }
        2 => {
            let uid = &live_uids[i];
            let obj = objects.get_mut(uid).context("a live pod")?;
            if let Some(l) = obj.metadata.labels.as_mut() {
                let app = rng.below(10);
                l.insert("app".into(), format!("app-{app}"));
                l.insert("tier".into(), ["web", "api", "db"][app % 3].into());
            }
            obj.metadata.resource_version = Some(version.to_string());
            Wire::Apply(Box::new(obj.clone()))
        }
        _ => {
            let uid = &live_uids[i];
            let obj = objects.get_mut(uid).context("a live pod")?;
            if let Some(s) = obj.status.as_mut() {
                s.pod_ip = Some(ip.clone());
                s.pod_ips = Some(vec![PodIP { ip }]);
            }
            obj.metadata.resource_version = Some(version.to_string());
            Wire::Apply(Box::new(obj.clone()))
        }
    })
}

/// What a pending change waits for in a model.
#[derive(Debug)]
struct Pending {
    arrived: Instant,
    namespace: String,
    name: String,
    /// `None`: deleted; else the pod's labels and first address.
    expect: Option<(BTreeMap<String, String>, Option<String>)>,
    /// A later change of the same pod arrived: this one is reflected when that one is (a
    /// model may never show this one's state).
    superseded: bool,
}

fn reflected(inv: &Inventory, c: &Pending) -> bool {
    let lo = inv
        .pods
        .partition_point(|p| (p.namespace.as_str(), p.name.as_str()) < (&c.namespace, &c.name));
    let pod = inv.pods[lo..]
        .iter()
        .take_while(|p| p.namespace.as_str() == c.namespace && p.name.as_str() == c.name)
        .last();
    match (&c.expect, pod) {
        (None, None) => true,
        (None, Some(p)) => p.deleted.is_some(),
        (Some(_), None) => false,
        (Some((labels, ip)), Some(p)) => {
            p.deleted.is_none()
                && p.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| p.labels.get(k) == Some(v.as_str()))
                && p.ips.first().map(|i| i.to_string()) == *ip
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The lines of the producer's stdout, parsed on a thread of their own (the measured process
/// parses the events, as the agent parses the API server's).
fn reader(stdout: std::process::ChildStdout) -> Lines {
    // A short queue: the measured heap holds at most a few parsed objects in flight.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::with_capacity(1 << 16, stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let parsed = serde_json::from_str::<Wire>(&line).map_err(anyhow::Error::from);
                    if tx.blocking_send(parsed).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.into()));
                    break;
                }
            }
        }
    });
    rx
}

/// The producer's parsed lines.
type Lines = tokio::sync::mpsc::Receiver<anyhow::Result<Wire>>;

/// The changes not yet reflected in a model, shared by the stream and the model side.
#[derive(Debug, Default, Clone)]
struct Pendings(Arc<std::sync::Mutex<Vec<Pending>>>);

impl Pendings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes out the changes `inventory` reflects (a superseded one with the change that
    /// superseded it); their latencies from `now`, ms.
    fn reflected_in(&self, inventory: &Inventory, now: Instant) -> Vec<f64> {
        let mut p = self.lock();
        let mut latencies = Vec::new();
        let mut done: std::collections::HashSet<(String, String)> = Default::default();
        p.retain(|c| {
            if !c.superseded && reflected(inventory, c) {
                latencies.push((now - c.arrived).as_secs_f64() * 1e3);
                done.insert((c.namespace.clone(), c.name.clone()));
                false
            } else {
                true
            }
        });
        p.retain(|c| {
            if c.superseded && done.contains(&(c.namespace.clone(), c.name.clone())) {
                latencies.push((now - c.arrived).as_secs_f64() * 1e3);
                false
            } else {
                true
            }
        });
        latencies
    }
}

/// Runs one measurement; `producer` is the command that runs [`produce`] with the same
/// configuration (its stdin and stdout are piped here).
pub async fn run(config: Config, mut producer: std::process::Command) -> anyhow::Result<Report> {
    // As the agent does: the mmap threshold fixed at its default, free memory returned
    // after each model is installed.
    host::fix_mmap_threshold();
    let mut child = producer
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the producer")?;
    let mut child_in = child.stdin.take().context("the producer's stdin")?;
    let mut lines = reader(child.stdout.take().context("the producer's stdout")?);
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse()?))?;
    let (live_inv, mut feed) = live::feed(
        client,
        LiveOptions {
            debounce: config.debounce,
            ..LiveOptions::default()
        },
    );
    let mut heap = Heap::default();
    let start = Instant::now();
    let listed = initial_lists(&mut feed, &mut lines, &mut heap).await?;
    feed.pod(Event::InitDone).await;
    live_inv.wait_synced().await;
    let subnets = Subnets::default();
    let mut snapshots = live_inv.subscribe();
    let first = snapshots.borrow_and_update().clone();
    let synced = heap_mib();
    heap.snapshot_mib = synced - listed;
    let model = Model::new(Arc::clone(&first), &subnets, None)?;
    let initial_build_s = start.elapsed().as_secs_f64();
    heap.model_mib = heap_mib() - synced;
    let hwm_initial_mib = status_mib("VmHWM:");
    model_parts(&first, &subnets, &mut heap)?;
    drop(first);
    host::release_free_memory();
    let rss_initial_mib = status_mib("VmRSS:");
    // The stream's own peak from here (`5`: reset the peak RSS).
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let pending = Pendings::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let modeler = tokio::spawn(modeler(
        model,
        snapshots,
        subnets,
        config.mode,
        pending.clone(),
        stop_rx,
    ));

    // The stream of changes.
    writeln!(child_in, "go")?;
    child_in.flush()?;
    let cpu0 = super::process_cpu_seconds();
    let t0 = Instant::now();
    let changes = stream(&mut feed, &mut lines, &pending).await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = super::process_cpu_seconds() - cpu0;
    // Let the last batch through (debounce + build), then stop.
    let wait = Instant::now();
    while !pending.lock().is_empty() && wait.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unreflected = pending.lock().len();
    // While the last model is held.
    let (rss_mib, hwm_mib) = (status_mib("VmRSS:"), status_mib("VmHWM:"));
    heap.end_mib = heap_mib();
    let _ = stop_tx.send(());
    let (mut latencies, mut build_ms) = modeler.await?;
    drop(feed);
    drop(live_inv);
    let _ = child.wait();
    latencies.sort_by(f64::total_cmp);
    build_ms.sort_by(f64::total_cmp);
    Ok(Report {
        mode: config.mode,
        pods: config.pods,
        policies: config.policies,
        initial_build_s,
        changes,
        models: build_ms.len(),
        model_ms_p50: percentile(&build_ms, 0.5),
        cpu_fraction: cpu / wall.max(1e-9),
        latency_ms_p50: percentile(&latencies, 0.5),
        latency_ms_p99: percentile(&latencies, 0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(0.0),
        unreflected,
        rss_mib,
        hwm_mib,
        rss_initial_mib,
        hwm_initial_mib,
        heap,
    })
}

/// Feeds the initial lists (namespaces and policies, then pods) up to the producer's
/// `Listed`, recording the stores' heap; the heap once listed, MiB.
async fn initial_lists(
    feed: &mut live::Feed,
    lines: &mut Lines,
    heap: &mut Heap,
) -> anyhow::Result<f64> {
    let base = heap_mib();
    feed.namespace(Event::Init).await;
    feed.network_policy(Event::Init).await;
    feed.pod(Event::Init).await;
    let mut others_done = false;
    let mut before_pods = base;
    loop {
        let line = lines.recv().await.context("the producer ended early")??;
        match line {
            Wire::Namespace(ns) => feed.namespace(Event::InitApply(*ns)).await,
            Wire::Policy(np) => feed.network_policy(Event::InitApply(*np)).await,
            Wire::Pod(pod) => {
                if !others_done {
                    others_done = true;
                    feed.namespace(Event::InitDone).await;
                    feed.network_policy(Event::InitDone).await;
                    feed.list_others().await;
                    before_pods = heap_mib();
                }
                feed.pod(Event::InitApply(*pod)).await;
            }
            Wire::Listed => break,
            other => anyhow::bail!("unexpected line before the lists' end: {other:?}"),
        }
    }
    let listed = heap_mib();
    heap.stores_policies_mib = before_pods - base;
    heap.store_pods_mib = listed - before_pods;
    Ok(listed)
}

/// The heap of the model's parts, each built again on its own from `first`.
fn model_parts(first: &Arc<Inventory>, subnets: &Subnets, heap: &mut Heap) -> anyhow::Result<()> {
    let h = heap_mib();
    let table = PodTable::new(first);
    let h1 = heap_mib();
    let engine = PolicyEngine::compile_shared(&first.network_policies, first, &table)?;
    let h2 = heap_mib();
    let attributor = Attributor::shared(Arc::clone(first), subnets);
    let h3 = heap_mib();
    heap.pod_table_mib = h1 - h;
    heap.engine_mib = h2 - h1;
    heap.attributor_mib = h3 - h2;
    drop((table, engine, attributor));
    Ok(())
}

/// The model side: every snapshot becomes a model (as `mode` says) and the pending changes
/// it reflects are taken out. Returns the latencies and the build times, ms.
async fn modeler(
    model: Model,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Inventory>>,
    subnets: Subnets,
    mode: Mode,
    pending: Pendings,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (Vec<f64>, Vec<f64>) {
    let mut model = Arc::new(model);
    let mut latencies = Vec::new();
    let mut build_ms = Vec::new();
    loop {
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { break },
            _ = &mut stop => break,
        }
        let inv = snapshots.borrow_and_update().clone();
        let (m, ms) = tokio::task::block_in_place(|| {
            let t = Instant::now();
            let m = match mode {
                Mode::Full => Model::new(inv, &subnets, None),
                Mode::Incremental => model.next(inv, &subnets, None),
            };
            (m, t.elapsed().as_secs_f64() * 1e3)
        });
        let Ok(m) = m else { continue };
        build_ms.push(ms);
        model = Arc::new(m);
        latencies.extend(pending.reflected_in(&model.inventory, Instant::now()));
        // As the agent after installing a model.
        host::release_free_memory();
    }
    (latencies, build_ms)
}

/// Feeds the producer's changes up to its `Done`, each recorded as pending (superseding the
/// same pod's earlier ones); the number of changes.
async fn stream(
    feed: &mut live::Feed,
    lines: &mut Lines,
    pending: &Pendings,
) -> anyhow::Result<usize> {
    let mut changes = 0;
    loop {
        let line = lines.recv().await.context("the producer ended early")??;
        let (event, expect) = match line {
            Wire::Apply(pod) => (Event::Apply(*pod), true),
            Wire::Delete(pod) => (Event::Delete(*pod), false),
            Wire::Done => return Ok(changes),
            other => anyhow::bail!("unexpected line in the stream: {other:?}"),
        };
        let arrived = Instant::now();
        changes += 1;
        let (namespace, name, expect) = match &event {
            Event::Apply(o) | Event::Delete(o) => (
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default(),
                expect.then(|| {
                    (
                        o.metadata.labels.clone().unwrap_or_default(),
                        o.status.as_ref().and_then(|s| s.pod_ip.clone()),
                    )
                }),
            ),
            _ => continue,
        };
        {
            let mut p = pending.lock();
            for c in p
                .iter_mut()
                .filter(|c| c.namespace == namespace && c.name == name)
            {
                c.superseded = true;
            }
            p.push(Pending {
                arrived,
                namespace,
                name,
                expect,
                superseded: false,
            });
        }
        feed.pod(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The producer's stream: the initial lists, `Listed`, then `rate × seconds` changes drawn
    /// from the seed, then `Done` — the same stream for the same seed (creation times aside).
    #[test]
    fn the_stream_is_the_lists_then_the_seeded_changes() {
        let config = Config {
            pods: 40,
            policies: 4,
            namespaces: 3,
            rate: 400,
            seconds: 1,
            mode: Mode::Incremental,
            seed: 7,
            debounce: Duration::ZERO,
        };
        let stream = || {
            let mut out = Vec::new();
            produce(&config, &mut out, &b"go\n"[..]).unwrap();
            let lines: Vec<Wire> = String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            lines
        };
        let lines = stream();
        let kind = |w: &Wire| match w {
            Wire::Namespace(_) => "namespace",
            Wire::Policy(_) => "policy",
            Wire::Pod(_) => "pod",
            Wire::Listed => "listed",
            Wire::Apply(_) => "apply",
            Wire::Delete(_) => "delete",
            Wire::Done => "done",
        };
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for l in &lines {
            *counts.entry(kind(l)).or_default() += 1;
        }
        let listed = lines.iter().position(|l| matches!(l, Wire::Listed));
        assert_eq!(
            listed,
            Some(counts["namespace"] + counts["policy"] + counts["pod"])
        );
        assert_eq!(counts["policy"], 4);
        assert_eq!(counts["apply"] + counts["delete"], 400);
        assert!(matches!(lines.last(), Some(Wire::Done)));
        // The same seed, the same stream (the new pods' creation times aside).
        let names = |lines: &[Wire]| -> Vec<(String, Option<String>, Option<String>)> {
            lines
                .iter()
                .map(|l| match l {
                    Wire::Pod(p) | Wire::Apply(p) | Wire::Delete(p) => (
                        kind(l).to_owned(),
                        p.metadata.name.clone(),
                        p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                    ),
                    other => (kind(other).to_owned(), None, None),
                })
                .collect()
        };
        assert_eq!(names(&lines), names(&stream()));
    }
}
