//! The inventory-at-scale benchmark (`cargo xtask bench inventory`, via
//! `netpol-observe-bench inventory`): a synthetic cluster (default 100k pods, 5k
//! NetworkPolicies) fed as watch events into the live inventory's stores and snapshot builder
//! ([`live::feed`]: the same code as the API watch), then a stream of pod changes (adds,
//! deletes, label and address changes) at a fixed rate; each snapshot becomes the agent's
//! model either incrementally ([`Model::next`]) or by a full build ([`Model::new`], what
//! every snapshot cost before). Reports the process CPU spent per second of the stream (the
//! upkeep's core fraction), the latency from a change's watch event to the first model that
//! reflects it, and the RSS.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::runtime::watcher::Event;
use netpol_observe_agent::{
    agent::Model,
    inventory::{
        Inventory, PodInfo,
        live::{self, LiveOptions},
    },
};
use netpol_observe_core::{attribution::Subnets, policy::synth};

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
    /// The first snapshot and model (full build), seconds.
    pub initial_build_s: f64,
    /// Changes delivered.
    pub changes: usize,
    /// Models built during the stream.
    pub models: usize,
    /// Median time to build one model from a snapshot during the stream, ms.
    pub model_ms_p50: f64,
    /// Process CPU seconds per second of the stream (the upkeep's core fraction; the change
    /// generator's own work is included).
    pub cpu_fraction: f64,
    /// Latency from a change's watch event to the first model reflecting it, ms.
    pub latency_ms_p50: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// Maximum.
    pub latency_ms_max: f64,
    /// Changes not reflected by the end of the run (should be 0).
    pub unreflected: usize,
    /// `VmRSS` at the end, MiB.
    pub rss_mib: f64,
    /// `VmHWM` (peak RSS), MiB.
    pub hwm_mib: f64,
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

/// Process CPU seconds (user + system) from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime), counted from the state (field 3) at index 0.
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    ticks / 100.0
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

/// What a pending change waits for in a model.
#[derive(Debug)]
struct Pending {
    sent: Instant,
    namespace: String,
    name: String,
    /// `None`: deleted; else the pod's labels and first address.
    expect: Option<(BTreeMap<String, String>, Option<String>)>,
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

/// Runs one measurement.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let mut inv = synth::cluster(config.namespaces, config.pods, config.seed);
    inv.network_policies = synth::policies(config.policies, config.namespaces, config.seed);
    netpol_observe_core::inventory::build::finish(&mut inv);
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse()?))?;
    let (live_inv, mut feed) = live::feed(client, LiveOptions::default());
    // The initial lists.
    let start = Instant::now();
    feed.namespace(Event::Init).await;
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
        feed.namespace(Event::InitApply(obj)).await;
    }
    feed.namespace(Event::InitDone).await;
    feed.network_policy(Event::Init).await;
    for np in &inv.network_policies {
        feed.network_policy(Event::InitApply(np.clone())).await;
    }
    feed.network_policy(Event::InitDone).await;
    let mut version = 1u64;
    let mut objects: HashMap<String, Pod> = HashMap::new();
    feed.pod(Event::Init).await;
    for p in inv.pods.iter().filter(|p| p.deleted.is_none()) {
        let obj = pod_object(p, version);
        objects.insert(p.uid.to_string(), obj.clone());
        feed.pod(Event::InitApply(obj)).await;
    }
    feed.pod(Event::InitDone).await;
    feed.list_others().await;
    live_inv.wait_synced().await;
    let subnets = Subnets::default();
    let mut snapshots = live_inv.subscribe();
    let first = snapshots.borrow_and_update().clone();
    let model = Model::new(first, &subnets, None)?;
    let initial_build_s = start.elapsed().as_secs_f64();
    drop(inv);

    // The model side: every snapshot becomes a model; pending changes are checked against it.
    let pending: Arc<std::sync::Mutex<Vec<Pending>>> = Arc::default();
    let pending_m = Arc::clone(&pending);
    let mode = config.mode;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let modeler = tokio::spawn(async move {
        let mut model = Arc::new(model);
        let mut latencies = Vec::new();
        let mut build_ms = Vec::new();
        loop {
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { break },
                _ = &mut stop_rx => break,
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
            let now = Instant::now();
            let mut p = pending_m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.retain(|c| {
                if reflected(&model.inventory, c) {
                    latencies.push((now - c.sent).as_secs_f64() * 1e3);
                    false
                } else {
                    true
                }
            });
        }
        (latencies, build_ms)
    });

    // The stream of changes, paced.
    let mut rng = synth::Rng::new(config.seed ^ 0xc4a2);
    let total = config.rate * config.seconds as usize;
    let mut live_uids: Vec<String> = objects.keys().cloned().collect();
    live_uids.sort();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for serial in 0..total {
        tick.tick().await;
        version += 1;
        let i = rng.below(live_uids.len());
        let (event, expect, uid) = match rng.below(4) {
            0 => {
                let mut obj = objects[&live_uids[i]].clone();
                let uid = format!("churn-{serial}");
                obj.metadata.uid = Some(uid.clone());
                obj.metadata.name = Some(format!("churn-{serial}"));
                obj.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
                let ip = format!(
                    "10.{}.{}.{}",
                    200 + (serial >> 16) % 50,
                    (serial >> 8) & 255,
                    serial & 255
                );
                if let Some(s) = obj.status.as_mut() {
                    s.pod_ip = Some(ip.clone());
                    s.pod_ips = Some(vec![PodIP { ip }]);
                }
                live_uids.push(uid.clone());
                (Event::Apply(obj), true, uid)
            }
            1 => {
                let uid = live_uids.swap_remove(i);
                let obj = objects.remove(&uid).unwrap_or_default();
                (Event::Delete(obj), false, uid)
            }
            2 => {
                let uid = live_uids[i].clone();
                let mut obj = objects[&uid].clone();
                if let Some(l) = obj.metadata.labels.as_mut() {
                    let app = rng.below(10);
                    l.insert("app".into(), format!("app-{app}"));
                    l.insert("tier".into(), ["web", "api", "db"][app % 3].into());
                }
                (Event::Apply(obj), true, uid)
            }
            _ => {
                let uid = live_uids[i].clone();
                let mut obj = objects[&uid].clone();
                let ip = format!(
                    "10.{}.{}.{}",
                    200 + (serial >> 16) % 50,
                    (serial >> 8) & 255,
                    serial & 255
                );
                if let Some(s) = obj.status.as_mut() {
                    s.pod_ip = Some(ip.clone());
                    s.pod_ips = Some(vec![PodIP { ip }]);
                }
                (Event::Apply(obj), true, uid)
            }
        };
        let mut event = event;
        if let Event::Apply(obj) = &mut event {
            obj.metadata.resource_version = Some(version.to_string());
            objects.insert(uid.clone(), obj.clone());
        }
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
        pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Pending {
                sent: Instant::now(),
                namespace,
                name,
                expect,
            });
        feed.pod(event).await;
    }
    // Let the last batch through (debounce + build), then stop.
    let wait = Instant::now();
    while !pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
        && wait.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let unreflected = pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len();
    let (rss_mib, hwm_mib) = (status_mib("VmRSS:"), status_mib("VmHWM:"));
    let _ = stop_tx.send(());
    let (mut latencies, mut build_ms) = modeler.await?;
    drop(feed);
    drop(live_inv);
    latencies.sort_by(f64::total_cmp);
    build_ms.sort_by(f64::total_cmp);
    Ok(Report {
        mode: config.mode,
        pods: config.pods,
        policies: config.policies,
        initial_build_s,
        changes: total,
        models: build_ms.len(),
        model_ms_p50: percentile(&build_ms, 0.5),
        cpu_fraction: cpu / wall.max(1e-9),
        latency_ms_p50: percentile(&latencies, 0.5),
        latency_ms_p99: percentile(&latencies, 0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(0.0),
        unreflected,
        rss_mib,
        hwm_mib,
    })
}
