//! The live inventory: kube watchers/reflectors for exactly [`WATCHED_RESOURCES`], trimmed
//! objects, and an `Arc`-shared snapshot rebuilt after changes.
//!
//! Each resource has its own watch driven by `watcher(...).default_backoff()`: after an API
//! disconnect it resumes with exponential backoff while the last snapshot keeps being served.
//! Every resource but pods is kept in a kube reflector store; pods, the bulk of a large
//! cluster, are converted as their events arrive and kept only converted (one [`PodInfo`] per
//! pod, its strings and label sets shared), in inventory order, so that a snapshot costs a
//! copy of the pods and a pod change the changed pod. Snapshots are published on a [`tokio::sync::watch`] channel once every resource has been
//! listed, then again (debounced) after changes. Pods deleted since the previous snapshot are
//! kept for [`LiveOptions::tombstone_retention`] with their deletion time, so that flows seen
//! while a pod still held an IP are attributed to it even after the IP is reused.
//!
//! ClusterNetworkPolicies are optional: in a cluster without their CRD the API answers 404,
//! which counts as listed with none (said once in the log); the watch keeps retrying with its
//! backoff and picks them up when the CRD is installed.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        batch::v1::Job,
        core::v1::{Container, ContainerStatus, Namespace, Node, Pod, PodSpec, PodStatus, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use super::{Interner, Inventory, Name, PodInfo, WATCHED_RESOURCES, build};
use crate::policy::cluster::ClusterNetworkPolicy;

/// How the live inventory behaves.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Minimum time between two snapshots (changes in between are batched).
    pub debounce: Duration,
    /// How long deleted pods are kept (with their deletion time) for IP-reuse attribution.
    pub tombstone_retention: Duration,
    /// How often a resource whose watch failed is checked with a list of one object: when it
    /// answers, the resource is healthy again (its watch resumes by itself).
    pub probe_interval: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            debounce: Duration::from_millis(500),
            tombstone_retention: Duration::from_secs(600),
            probe_interval: Duration::from_secs(5),
        }
    }
}

/// Whether the live inventory can be trusted (for `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// Every watched resource has been listed at least once and a snapshot was published.
    pub synced: bool,
    /// Resources listed at least once, as `group/resource`.
    pub listed: Vec<String>,
    /// The last watch error per resource (cleared when the resource's watch works again).
    pub errors: Vec<(String, String)>,
}

impl SyncState {
    /// Whether the state is synced and no watch is currently failing.
    pub fn healthy(&self) -> bool {
        self.synced && self.errors.is_empty()
    }
}

/// A running live inventory: the latest snapshot and the sync state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveInventory {
    snapshot: watch::Receiver<Arc<Inventory>>,
    state: watch::Receiver<SyncState>,
}

impl LiveInventory {
    /// The latest snapshot (empty until the first sync).
    pub fn snapshot(&self) -> Arc<Inventory> {
        self.snapshot.borrow().clone()
    }

    /// A receiver notified at every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Inventory>> {
        self.snapshot.clone()
    }

    /// The current sync state.
    pub fn sync_state(&self) -> SyncState {
        self.state.borrow().clone()
    }

    /// A receiver notified at every sync-state change.
    pub(crate) fn subscribe_state(&self) -> watch::Receiver<SyncState> {
        self.state.clone()
    }

    /// Waits until the first snapshot is published.
    pub async fn wait_synced(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|s| s.synced).await;
    }
}

/// What a reflector task reports.
#[derive(Debug)]
enum Report {
    /// The resource's initial list is done (or a relist).
    Listed(&'static str),
    /// Something changed (the watch works).
    Changed(&'static str),
    /// The watch failed (it retries with backoff).
    Error(&'static str, String),
    /// A pod watch event (trimmed): the builder keeps the pods ([`PodStore`]).
    Pod(Box<watcher::Event<Pod>>),
}

/// The stores of every watched resource.
#[derive(Debug, Clone)]
struct Stores {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    nodes: Store<Node>,
    endpoint_slices: Store<EndpointSlice>,
    network_policies: Store<NetworkPolicy>,
    replica_sets: Store<ReplicaSet>,
    jobs: Store<Job>,
    cluster_network_policies: Store<ClusterNetworkPolicy>,
}

/// The `group/resource` name of each watched resource, in [`WATCHED_RESOURCES`] order.
fn resource_name(group: &str, resource: &str) -> &'static str {
    WATCHED_RESOURCES
        .iter()
        .position(|(g, r)| *g == group && *r == resource)
        .map(|i| RESOURCE_NAMES[i])
        .unwrap_or("unknown")
}

const RESOURCE_NAMES: &[&str] = &[
    "namespaces",
    "pods",
    "services",
    "nodes",
    "discovery.k8s.io/endpointslices",
    "networking.k8s.io/networkpolicies",
    "apps/replicasets",
    "batch/jobs",
    "policy.networking.k8s.io/clusternetworkpolicies",
];

/// Resources a cluster may lack (a CRD): a 404 means none.
const OPTIONAL: &[&str] = &["policy.networking.k8s.io/clusternetworkpolicies"];

/// Starts the reflectors (one per [`WATCHED_RESOURCES`] entry) and the snapshot builder on the
/// current tokio runtime; they run until the runtime shuts down.
pub fn start(client: Client, options: LiveOptions) -> LiveInventory {
    let (tx, rx) = mpsc::channel(1024);
    let prober = Prober {
        client: client.clone(),
    };
    let stores = Stores {
        namespaces: spawn_reflector(
            Api::all(client.clone()),
            resource_name("", "namespaces"),
            trim_meta,
            tx.clone(),
        ),
        services: spawn_reflector(
            Api::all(client.clone()),
            resource_name("", "services"),
            trim_meta,
            tx.clone(),
        ),
        nodes: spawn_reflector(
            Api::all(client.clone()),
            resource_name("", "nodes"),
            trim_node,
            tx.clone(),
        ),
        endpoint_slices: spawn_reflector(
            Api::all(client.clone()),
            resource_name("discovery.k8s.io", "endpointslices"),
            trim_meta,
            tx.clone(),
        ),
        network_policies: spawn_reflector(
            Api::all(client.clone()),
            resource_name("networking.k8s.io", "networkpolicies"),
            trim_network_policy,
            tx.clone(),
        ),
        replica_sets: spawn_reflector(
            Api::all(client.clone()),
            resource_name("apps", "replicasets"),
            trim_replica_set,
            tx.clone(),
        ),
        jobs: spawn_reflector(
            Api::all(client.clone()),
            resource_name("batch", "jobs"),
            trim_job,
            tx.clone(),
        ),
        cluster_network_policies: spawn_reflector(
            Api::all(client.clone()),
            resource_name(
                crate::policy::cluster::GROUP,
                crate::policy::cluster::PLURAL,
            ),
            trim_meta,
            tx.clone(),
        ),
    };
    spawn_pod_watch(Api::all(client), tx);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Inventory::default()));
    let (state_tx, state_rx) = watch::channel(SyncState {
        synced: false,
        listed: Vec::new(),
        errors: Vec::new(),
    });
    tokio::spawn(builder(stores, prober, rx, snap_tx, state_tx, options));
    LiveInventory {
        snapshot: snap_rx,
        state: state_rx,
    }
}

/// The live inventory without an API server: the caller delivers the watch events the
/// reflectors would (trimmed the same way) to the same stores and snapshot builder as
/// [`start`]. For benchmarks and tests of the update path; the pod and NetworkPolicy
/// resources take events, every other resource is listed empty by [`Feed::list_others`].
#[derive(Debug)]
pub struct Feed {
    namespaces: reflector::store::Writer<Namespace>,
    network_policies: reflector::store::Writer<NetworkPolicy>,
    tx: mpsc::Sender<Report>,
}

/// Starts the snapshot builder on stores fed by the returned [`Feed`] (see [`start`]).
pub fn feed(client: Client, options: LiveOptions) -> (LiveInventory, Feed) {
    let (tx, rx) = mpsc::channel(1024);
    let (namespaces, namespaces_w) = reflector::store();
    let (network_policies, network_policies_w) = reflector::store();
    let stores = Stores {
        namespaces,
        services: reflector::store().0,
        nodes: reflector::store().0,
        endpoint_slices: reflector::store().0,
        network_policies,
        replica_sets: reflector::store().0,
        jobs: reflector::store().0,
        cluster_network_policies: reflector::store().0,
    };
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Inventory::default()));
    let (state_tx, state_rx) = watch::channel(SyncState {
        synced: false,
        listed: Vec::new(),
        errors: Vec::new(),
    });
    tokio::spawn(builder(
        stores,
        Prober { client },
        rx,
        snap_tx,
        state_tx,
        options,
    ));
    (
        LiveInventory {
            snapshot: snap_rx,
            state: state_rx,
        },
        Feed {
            namespaces: namespaces_w,
            network_policies: network_policies_w,
            tx,
        },
    )
}

impl Feed {
    /// A pod watch event, trimmed as the reflector trims it.
    pub async fn pod(&mut self, event: watcher::Event<Pod>) {
        let event = event.modify(trim_pod);
        let _ = self.tx.send(Report::Pod(Box::new(event))).await;
    }

    /// A namespace watch event.
    pub async fn namespace(&mut self, event: watcher::Event<Namespace>) {
        let event = event.modify(trim_meta);
        self.namespaces.apply_watcher_event(&event);
        self.report(&event, resource_name("", "namespaces")).await;
    }

    /// A NetworkPolicy watch event.
    pub async fn network_policy(&mut self, event: watcher::Event<NetworkPolicy>) {
        let event = event.modify(trim_network_policy);
        self.network_policies.apply_watcher_event(&event);
        self.report(
            &event,
            resource_name("networking.k8s.io", "networkpolicies"),
        )
        .await;
    }

    /// Every other watched resource listed, with none.
    pub async fn list_others(&mut self) {
        for name in RESOURCE_NAMES {
            if !matches!(
                *name,
                "pods" | "namespaces" | "networking.k8s.io/networkpolicies"
            ) {
                let _ = self.tx.send(Report::Listed(name)).await;
            }
        }
    }

    async fn report<K>(&self, event: &watcher::Event<K>, name: &'static str) {
        let report = match event {
            watcher::Event::InitDone => Report::Listed(name),
            watcher::Event::Init | watcher::Event::InitApply(_) => return,
            _ => Report::Changed(name),
        };
        let _ = self.tx.send(report).await;
    }
}

/// Checks that failing resources can be listed again. A watch that resumes after an outage
/// (same resource version, nothing changed meanwhile) reports nothing, so without this a
/// recovered resource would stay marked as failing.
#[derive(Clone)]
struct Prober {
    client: Client,
}

impl Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

impl Prober {
    /// Lists one object of `resource` (`group/resource` as in [`RESOURCE_NAMES`]) with the
    /// agent's own identity: the same verb the reflector needs.
    async fn can_list(&self, resource: &str) -> Result<(), String> {
        let path = match resource.split_once('/') {
            Some((group, name)) if group == crate::policy::cluster::GROUP => format!(
                "/apis/{group}/{}/{name}?limit=1",
                crate::policy::cluster::VERSION
            ),
            Some((group, name)) => format!("/apis/{group}/v1/{name}?limit=1"),
            None => format!("/api/v1/{resource}?limit=1"),
        };
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        match self.client.request_text(request).await {
            Ok(_) => Ok(()),
            // An optional resource that is not served is listed, with none.
            Err(kube::Error::Api(s)) if s.code == 404 && OPTIONAL.contains(&resource) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    name: &'static str,
    trim: fn(&mut K),
    tx: mpsc::Sender<Report>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .modify(trim)
            .default_backoff(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // An optional resource the API server does not serve (404): listed, with none.
        let mut absent = false;
        while let Some(event) = stream.next().await {
            let report = match event {
                Ok(watcher::Event::InitDone) => {
                    if std::mem::take(&mut absent) {
                        tracing::info!(resource = name, "the resource is served now");
                    }
                    Report::Listed(name)
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => Report::Changed(name),
                Err(err) if OPTIONAL.contains(&name) && is_not_found(&err) => {
                    if absent {
                        continue;
                    }
                    absent = true;
                    tracing::info!(
                        resource = name,
                        "the API server does not serve this resource (its CRD is not installed): taken as none; checked again with the watch's backoff"
                    );
                    Report::Listed(name)
                }
                Err(err) => {
                    // A 404 after this (the API server back, still without the CRD) must
                    // report the resource listed again.
                    absent = false;
                    tracing::warn!(resource = name, error = %err, "watch failed; retrying with backoff");
                    Report::Error(name, describe(&err))
                }
            };
            if tx.send(report).await.is_err() {
                break;
            }
        }
    });
    reader
}

/// Whether a watch error is the API server's 404 (the resource is not served).
fn is_not_found(err: &watcher::Error) -> bool {
    matches!(
        err,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 404
    )
}

/// A watch error in a line: the API server's own message for API errors (it names the verb and
/// resource of a missing permission), else the client's.
fn describe(err: &watcher::Error) -> String {
    let client = match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        other => return other.to_string(),
    };
    match client {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// The pod watch: its events (trimmed) go to the snapshot builder, which keeps the pods
/// converted ([`PodStore`]); no watch object is stored.
fn spawn_pod_watch(api: Api<Pod>, tx: mpsc::Sender<Report>) {
    let name = resource_name("", "pods");
    let stream = watcher(api, watcher::Config::default())
        .modify(trim_pod)
        .default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let report = match event {
                Ok(event) => Report::Pod(Box::new(event)),
                Err(err) => {
                    tracing::warn!(resource = name, error = %err, "watch failed; retrying with backoff");
                    Report::Error(name, describe(&err))
                }
            };
            if tx.send(report).await.is_err() {
                break;
            }
        }
    });
}

/// Turns the watches' reports into snapshots and the sync state: each report is handled as it
/// arrives (pod events update the pod store); a snapshot waits for the debounce, and what
/// arrives meanwhile is batched into it.
async fn builder(
    stores: Stores,
    prober: Prober,
    mut rx: mpsc::Receiver<Report>,
    snap_tx: watch::Sender<Arc<Inventory>>,
    state_tx: watch::Sender<SyncState>,
    options: LiveOptions,
) {
    let mut probe = tokio::time::interval_at(
        tokio::time::Instant::now() + options.probe_interval,
        options.probe_interval,
    );
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut b = Builder {
        stores,
        snap_tx,
        state_tx,
        options,
        tombstones: Vec::new(),
        pods: PodStore::default(),
        dirty: false,
        failed_at: HashMap::new(),
    };
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => break },
            _ = probe.tick() => {
                b.probe(&prober).await;
                continue;
            }
        };
        b.handle(first);
        // Debounce: gather what arrives shortly after.
        let deadline = tokio::time::sleep(b.options.debounce);
        let mut deadline = std::pin::pin!(deadline);
        if b.state_tx.borrow().synced {
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    r = rx.recv() => match r { Some(r) => b.handle(r), None => break },
                }
            }
        } else {
            while let Ok(r) = rx.try_recv() {
                b.handle(r);
            }
        }
        b.publish();
    }
}

/// The state of [`builder`] between reports.
struct Builder {
    stores: Stores,
    snap_tx: watch::Sender<Arc<Inventory>>,
    state_tx: watch::Sender<SyncState>,
    options: LiveOptions,
    /// Deleted pods kept for the retention (flows seen just before a deletion still attribute).
    tombstones: Vec<PodInfo>,
    pods: PodStore,
    /// Something changed since the last snapshot.
    dirty: bool,
    /// When each failing resource last reported an error: the probe clears only errors older
    /// than one probe interval, so the watch has had its own chance to retry (and to fail
    /// again).
    failed_at: HashMap<&'static str, tokio::time::Instant>,
}

impl Builder {
    /// Probes the resources failing for longer than a probe interval; one that lists again
    /// (and was listed before: its watch resumes where it was, or relists) is no longer
    /// failing.
    async fn probe(&mut self, prober: &Prober) {
        let failing: Vec<&'static str> = self
            .failed_at
            .iter()
            .filter(|(_, at)| at.elapsed() >= self.options.probe_interval)
            .map(|(r, _)| *r)
            .collect();
        for resource in failing {
            match prober.can_list(resource).await {
                Ok(()) if self.state_tx.borrow().listed.iter().any(|l| l == resource) => {
                    self.failed_at.remove(resource);
                    self.state_tx
                        .send_modify(|s| s.errors.retain(|(r, _)| r != resource));
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(resource, error = %e, "still failing"),
            }
        }
    }

    /// Handles one report: the sync state now, the snapshot at the next [`Builder::publish`].
    fn handle(&mut self, report: Report) {
        match report {
            Report::Listed(name) => {
                self.working(name);
                self.pods.touched(name);
                self.state_tx.send_modify(|s| {
                    listed(s, name);
                });
            }
            Report::Changed(name) => {
                self.working(name);
                self.pods.touched(name);
                self.state_tx.send_if_modified(|s| recovered(s, name));
            }
            Report::Error(name, err) => {
                self.failed_at.insert(name, tokio::time::Instant::now());
                self.state_tx.send_modify(|s| {
                    s.errors.retain(|(r, _)| r != name);
                    s.errors.push((name.to_owned(), err));
                });
            }
            Report::Pod(event) => {
                let name = resource_name("", "pods");
                let listed_now = match &*event {
                    watcher::Event::InitDone => Some(true),
                    watcher::Event::Init | watcher::Event::InitApply(_) => None,
                    _ => Some(false),
                };
                self.pods.apply(*event, &self.stores);
                if let Some(is_listed) = listed_now {
                    self.working(name);
                    self.state_tx.send_if_modified(|s| match is_listed {
                        true => listed(s, name),
                        false => recovered(s, name),
                    });
                }
            }
        }
    }

    /// `name` reported a list or a change: the snapshot is out of date and `name` works.
    fn working(&mut self, name: &'static str) {
        self.dirty = true;
        self.failed_at.remove(name);
    }

    /// Publishes a snapshot when something changed and every resource has been listed.
    fn publish(&mut self) {
        let all_listed = self.state_tx.borrow().listed.len() == WATCHED_RESOURCES.len();
        if !self.dirty || !all_listed {
            return;
        }
        self.dirty = false;
        let previous = self.snap_tx.borrow().clone();
        let inventory = snapshot(
            &self.stores,
            &previous,
            &mut self.tombstones,
            &mut self.pods,
            self.options.tombstone_retention,
        );
        drop(previous);
        tracing::debug!(pods = inventory.pods.len(), "inventory snapshot");
        self.snap_tx.send_replace(Arc::new(inventory));
        self.state_tx
            .send_if_modified(|s| !std::mem::replace(&mut s.synced, true));
    }
}

/// Records that `name` is listed and not failing; whether the state changed.
fn listed(s: &mut SyncState, name: &str) -> bool {
    let new = !s.listed.iter().any(|l| l == name);
    if new {
        s.listed.push(name.to_owned());
    }
    recovered(s, name) || new
}

/// Clears `name`'s error; whether there was one.
fn recovered(s: &mut SyncState, name: &str) -> bool {
    let before = s.errors.len();
    s.errors.retain(|(r, _)| r != name);
    before != s.errors.len()
}

/// The store key of a pod (as the reflector stores key objects): namespace and name.
type PodKey = (Name, Name);

/// A pod as the live inventory keeps it: converted when its watch event arrives.
#[derive(Debug)]
struct StoredPod {
    uid: Name,
    /// The conversion ([`build::pod_info`]); `None` when the pod does not convert (logged).
    info: Option<PodInfo>,
    /// The owner the pod names (controller, else the first), `(kind, name)`: to resolve its
    /// workload again when the owner tables change.
    owner: Option<(Name, Name)>,
}

/// The pods, each converted once per watch event (not per snapshot), in inventory order
/// (namespace, name), with the owner tables the conversions used: a pod change costs the
/// changed pod, and only the converted pod is kept (not the watch object).
#[derive(Debug, Default)]
struct PodStore {
    pods: BTreeMap<PodKey, StoredPod>,
    /// During a (re)list: the pods listed so far; they replace `pods` when the list is done.
    buffer: Option<BTreeMap<PodKey, StoredPod>>,
    /// Pods removed since the last snapshot, with their uid (tombstone candidates).
    gone: Vec<(PodKey, Name)>,
    /// The owner tables (rebuilt from the stores when ReplicaSets or Jobs changed).
    owners: Option<build::Owners>,
    /// ReplicaSets or Jobs changed since the owner tables were built.
    owners_changed: bool,
    /// The owner tables differ from those some conversions used: resolve every pod's owner
    /// again before the next snapshot.
    stale: bool,
    /// Shares the pods' strings, label sets, workloads and port lists (pruned as pods go).
    interner: Interner,
    /// The interner's size after its last pruning.
    pruned_at: usize,
}

impl PodStore {
    /// Resource `name` changed: owner changes make the owner tables be rebuilt.
    fn touched(&mut self, name: &str) {
        if name == "apps/replicasets" || name == "batch/jobs" {
            self.owners_changed = true;
        }
    }

    /// The owner tables, rebuilt from the stores when ReplicaSets or Jobs changed (the
    /// conversions are then stale when the tables differ).
    fn owners(&mut self, stores: &Stores) -> &build::Owners {
        if std::mem::take(&mut self.owners_changed) || self.owners.is_none() {
            let mut owners = build::Owners::default();
            for rs in stores.replica_sets.state() {
                owners.replica_sets.insert(
                    build::key(&rs.metadata),
                    (
                        build::controller_of(&rs.metadata).cloned(),
                        Some(rs.spec.selector.clone()),
                    ),
                );
            }
            for job in stores.jobs.state() {
                owners.jobs.insert(
                    build::key(&job.metadata),
                    build::controller_of(&job.metadata).cloned(),
                );
            }
            let same = self.owners.as_ref().is_some_and(|o| {
                o.replica_sets == owners.replica_sets
                    && o.jobs == owners.jobs
                    && o.selectors == owners.selectors
            });
            if !same {
                // Conversions made with the previous tables are stale.
                self.stale = self.stale
                    || !self.pods.is_empty()
                    || self.buffer.as_ref().is_some_and(|b| !b.is_empty());
                self.owners = Some(owners);
            }
        }
        self.owners.get_or_insert_with(build::Owners::default)
    }

    /// The store key of `pod`: its namespace and name, shared with its conversion.
    fn key(pod: &Pod, stored: &StoredPod) -> PodKey {
        let meta = &pod.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        match &stored.info {
            Some(info) if info.namespace == namespace && info.name == name => {
                (info.namespace.clone(), info.name.clone())
            }
            _ => (Name::from(namespace), Name::from(name)),
        }
    }

    /// Converts a pod with the current owner tables.
    fn convert(&mut self, pod: &Pod, stores: &Stores) -> (PodKey, StoredPod) {
        self.owners(stores);
        let owners = self.owners.take().unwrap_or_default();
        let info = match build::pod_info(pod, &owners, &mut self.interner) {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::warn!(error = %err, "skipping pod");
                None
            }
        };
        self.owners = Some(owners);
        let owner = build::controller_of(&pod.metadata)
            .map(|o| (self.interner.name(&o.kind), self.interner.name(&o.name)));
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let stored = StoredPod {
            uid: match &info {
                Some(info) if info.uid == uid => info.uid.clone(),
                _ => Name::from(uid),
            },
            info,
            owner,
        };
        (Self::key(pod, &stored), stored)
    }

    /// Applies a watch event as the reflector store does (a relist replaces the pods when done).
    fn apply(&mut self, event: watcher::Event<Pod>, stores: &Stores) {
        match event {
            watcher::Event::Apply(pod) => {
                let (key, stored) = self.convert(&pod, stores);
                if let Some(old) = self.pods.insert(key.clone(), stored)
                    && !self.holds(&key, &old.uid)
                {
                    self.gone.push((key, old.uid));
                }
            }
            watcher::Event::Delete(pod) => {
                let meta = &pod.metadata;
                let key = (
                    Name::from(meta.namespace.as_deref().unwrap_or_default()),
                    Name::from(meta.name.as_deref().unwrap_or_default()),
                );
                if let Some(old) = self.pods.remove(&key) {
                    self.gone.push((key, old.uid));
                }
            }
            watcher::Event::Init => self.buffer = Some(BTreeMap::new()),
            watcher::Event::InitApply(pod) => {
                let (key, stored) = self.convert(&pod, stores);
                self.buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, stored);
            }
            watcher::Event::InitDone => {
                let listed = self.buffer.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.pods, listed);
                for (key, stored) in old {
                    if !self.holds(&key, &stored.uid) {
                        self.gone.push((key, stored.uid));
                    }
                }
            }
        }
    }

    /// Whether the pod `key` with `uid` is in the store, converted (in the snapshots).
    fn holds(&self, key: &PodKey, uid: &str) -> bool {
        self.pods
            .get(key)
            .is_some_and(|s| s.uid == *uid && s.info.is_some())
    }

    /// Resolves every pod's owner again when the owner tables changed since the conversions.
    fn refresh(&mut self, stores: &Stores) {
        self.owners(stores);
        if !std::mem::take(&mut self.stale) {
            return;
        }
        let owners = self.owners.take().unwrap_or_default();
        for map in std::iter::once(&mut self.pods).chain(self.buffer.as_mut()) {
            for stored in map.values_mut() {
                let Some(info) = stored.info.as_mut() else {
                    continue;
                };
                let meta = ObjectMeta {
                    namespace: Some(info.namespace.to_string()),
                    name: Some(info.name.to_string()),
                    labels: Some(info.labels.to_map()),
                    owner_references: stored.owner.as_ref().map(|(kind, name)| {
                        vec![OwnerReference {
                            kind: kind.to_string(),
                            name: name.to_string(),
                            controller: Some(true),
                            ..OwnerReference::default()
                        }]
                    }),
                    ..ObjectMeta::default()
                };
                (info.workload, info.selector_labels) =
                    build::pod_owner(&meta, &owners, &mut self.interner);
            }
        }
        self.owners = Some(owners);
    }

    /// Forgets the interned values no pod holds any more, once the interner has doubled.
    fn prune(&mut self) {
        if self.interner.len() > 2 * self.pruned_at + 1024 {
            self.interner.prune();
            self.pruned_at = self.interner.len();
        }
    }
}

/// Builds a snapshot from the stores; objects that do not convert are logged and skipped.
/// Pods come converted from the pod store.
fn snapshot(
    stores: &Stores,
    previous: &Inventory,
    tombstones: &mut Vec<PodInfo>,
    pods: &mut PodStore,
    retention: Duration,
) -> Inventory {
    pods.refresh(stores);
    let mut inv = Inventory::default();
    // The other resources' conversions share their strings within the snapshot.
    let mut interner = Interner::default();
    for ns in stores.namespaces.state() {
        let info = build::namespace_info(&ns, &mut interner);
        inv.namespaces.insert(info.name.clone(), info);
    }
    inv.pods.reserve(pods.pods.len() + tombstones.len());
    inv.pods
        .extend(pods.pods.values().filter_map(|s| s.info.clone()));
    for svc in stores.services.state() {
        match build::service_info(&svc, &mut interner) {
            Ok(s) => inv.services.push(s),
            Err(err) => tracing::warn!(error = %err, "skipping service"),
        }
    }
    for node in stores.nodes.state() {
        match build::node_info(&node, &mut interner) {
            Ok(n) => inv.nodes.push(n),
            Err(err) => tracing::warn!(error = %err, "skipping node"),
        }
    }
    for es in stores.endpoint_slices.state() {
        match build::endpoint_slice_info(&es) {
            Ok(e) => inv.endpoint_slices.push(e),
            Err(err) => tracing::warn!(error = %err, "skipping endpoint slice"),
        }
    }
    for np in stores.network_policies.state() {
        match crate::policy::validate(&np) {
            Ok(()) => inv.network_policies.push((*np).clone()),
            Err(err) => tracing::warn!(error = %err, "skipping network policy"),
        }
    }
    for cnp in stores.cluster_network_policies.state() {
        match crate::policy::cluster::validate(&cnp) {
            Ok(()) => inv.cluster_network_policies.push((*cnp).clone()),
            Err(err) => tracing::warn!(error = %err, "skipping cluster network policy"),
        }
    }
    // Tombstones: pods of the previous snapshot that are gone now (as they were in it).
    let now = Timestamp::now();
    let mut gone = std::mem::take(&mut pods.gone);
    gone.sort();
    gone.dedup();
    for (key, uid) in gone {
        if pods.holds(&key, &uid) {
            continue;
        }
        let lo = previous
            .pods
            .partition_point(|p| (&p.namespace, &p.name) < (&key.0, &key.1));
        let was = previous.pods[lo..]
            .iter()
            .take_while(|p| p.namespace == key.0 && p.name == key.1)
            .find(|p| p.uid == uid && p.deleted.is_none());
        if let Some(p) = was {
            let mut t = p.clone();
            t.deleted = Some(now);
            tombstones.push(t);
        }
    }
    let cutoff = now
        .checked_sub(jiff::SignedDuration::try_from(retention).unwrap_or_default())
        .unwrap_or(now);
    tombstones.retain(|t| {
        t.deleted.is_some_and(|d| d >= cutoff)
            && !pods.holds(&(t.namespace.clone(), t.name.clone()), &t.uid)
    });
    inv.pods.extend(tombstones.iter().cloned());
    build::finish(&mut inv);
    pods.prune();
    inv
}

fn trim_meta<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A NetworkPolicy keeps one annotation: `netpol-observe.io/dns-names`, the names its
/// ipBlocks were written for, which the agent's DNS rotation check reads.
fn trim_network_policy(np: &mut NetworkPolicy) {
    let names = np
        .metadata
        .annotations
        .as_mut()
        .and_then(|a| a.remove(crate::recommend::dns_names::DNS_NAMES));
    trim_meta(np);
    if let Some(names) = names {
        np.metadata.annotations = Some(BTreeMap::from([(
            crate::recommend::dns_names::DNS_NAMES.to_owned(),
            names,
        )]));
    }
}

/// Keeps only what [`build::pod_info`] reads: 100k trimmed pods fit in a few hundred MB less.
fn trim_pod(pod: &mut Pod) {
    trim_meta(pod);
    if let Some(spec) = pod.spec.take() {
        let keep = |c: Vec<Container>| -> Vec<Container> {
            c.into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Container::default()
                })
                .collect()
        };
        pod.spec = Some(PodSpec {
            containers: keep(spec.containers),
            init_containers: spec.init_containers.map(keep),
            host_network: spec.host_network,
            node_name: spec.node_name,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        // Container statuses only matter for finished pods (when their IP was released).
        let container_statuses = status.container_statuses.filter(|_| finished).map(|list| {
            list.into_iter()
                .map(|cs| ContainerStatus {
                    name: cs.name,
                    state: cs.state,
                    ..ContainerStatus::default()
                })
                .collect()
        });
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            container_statuses,
            ..PodStatus::default()
        });
    }
}

fn trim_node(node: &mut Node) {
    trim_meta(node);
    if let Some(status) = node.status.as_mut() {
        let addresses = status.addresses.take();
        *status = Default::default();
        status.addresses = addresses;
    }
}

fn trim_replica_set(rs: &mut ReplicaSet) {
    trim_meta(rs);
    rs.spec.template = None;
    rs.status = None;
}

fn trim_job(job: &mut Job) {
    trim_meta(job);
    job.spec = None;
    job.status = None;
}

#[cfg(test)]
mod trim_tests {
    use super::*;

    #[test]
    fn a_network_policy_keeps_only_its_dns_names_annotation() {
        let mut np = NetworkPolicy::default();
        np.metadata.annotations = Some(BTreeMap::from([
            (
                crate::recommend::dns_names::DNS_NAMES.to_owned(),
                r#"{"198.51.100.0/28":["api.payments.example"]}"#.to_owned(),
            ),
            ("netpol-observe.io/flows".to_owned(), "12".to_owned()),
        ]));
        trim_network_policy(&mut np);
        assert_eq!(
            np.metadata.annotations,
            Some(BTreeMap::from([(
                crate::recommend::dns_names::DNS_NAMES.to_owned(),
                r#"{"198.51.100.0/28":["api.payments.example"]}"#.to_owned(),
            )]))
        );
        let mut bare = NetworkPolicy::default();
        bare.metadata.annotations = Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]));
        trim_network_policy(&mut bare);
        assert_eq!(bare.metadata.annotations, None);
    }
}

#[cfg(test)]
mod pod_store_tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;

    fn pod(name: &str, uid: &str, ip: &str, owner: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": uid,
                "creationTimestamp": "2026-11-20T08:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "abc12"},
                "ownerReferences": owner.map(|o| vec![serde_json::json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "uid": "rs-1",
                    "controller": true,
                })]),
            },
            "spec": {"containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap()
    }

    fn stores() -> (Stores, reflector::store::Writer<ReplicaSet>) {
        let (replica_sets, writer) = reflector::store();
        let stores = Stores {
            namespaces: reflector::store().0,
            services: reflector::store().0,
            nodes: reflector::store().0,
            endpoint_slices: reflector::store().0,
            network_policies: reflector::store().0,
            replica_sets,
            jobs: reflector::store().0,
            cluster_network_policies: reflector::store().0,
        };
        (stores, writer)
    }

    /// The conversion the file source makes of `pod` with the ReplicaSets `rs`.
    fn converted(pod: &Pod, rs: &[ReplicaSet]) -> PodInfo {
        let mut owners = build::Owners::default();
        for r in rs {
            owners.replica_sets.insert(
                build::key(&r.metadata),
                (
                    build::controller_of(&r.metadata).cloned(),
                    Some(r.spec.selector.clone()),
                ),
            );
        }
        build::pod_info(pod, &owners, &mut Interner::default()).unwrap()
    }

    /// Pods converted on arrival are resolved again when a ReplicaSet naming their Deployment
    /// arrives after them; a removed pod of the previous snapshot becomes a tombstone (as it
    /// was in that snapshot), a relist drops the pods it does not list.
    #[test]
    fn the_pod_store_converts_as_the_file_source_does() {
        let (stores, mut rs_writer) = stores();
        let mut pods = PodStore::default();
        let web = pod("web-abc12-x1", "pod-1", "10.0.0.1", Some("web-abc12"));
        let other = pod("lone", "pod-2", "10.0.0.2", None);
        pods.apply(watcher::Event::Init, &stores);
        pods.apply(watcher::Event::InitApply(web.clone()), &stores);
        pods.apply(watcher::Event::InitApply(other.clone()), &stores);
        pods.apply(watcher::Event::InitDone, &stores);
        let mut tombstones = Vec::new();
        let retention = Duration::from_secs(60);
        let first = snapshot(
            &stores,
            &Inventory::default(),
            &mut tombstones,
            &mut pods,
            retention,
        );
        // Without the ReplicaSet: the Deployment from the pod-template-hash.
        assert_eq!(
            first.pods,
            vec![converted(&other, &[]), converted(&web, &[])]
        );
        assert_eq!(first.pods[1].workload.name, "web");

        // The ReplicaSet belongs to Deployment `frontend`.
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc12".into()),
                namespace: Some("shop".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "frontend".into(),
                    uid: "d-1".into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec::default(),
            status: None,
        };
        rs_writer.apply_watcher_event(&watcher::Event::Apply(rs.clone()));
        pods.touched("apps/replicasets");
        let second = snapshot(&stores, &first, &mut tombstones, &mut pods, retention);
        assert_eq!(
            second.pods,
            vec![
                converted(&other, std::slice::from_ref(&rs)),
                converted(&web, std::slice::from_ref(&rs))
            ]
        );
        assert_eq!(second.pods[1].workload.name, "frontend");

        // A delete: the pod as it was in the previous snapshot, deleted now.
        pods.apply(watcher::Event::Delete(other), &stores);
        let third = snapshot(&stores, &second, &mut tombstones, &mut pods, retention);
        assert_eq!(third.pods.len(), 2);
        let gone = third.pod("shop", "lone").unwrap();
        assert!(gone.deleted.is_some());
        assert_eq!(
            PodInfo {
                deleted: None,
                ..gone.clone()
            },
            second.pods[0]
        );

        // A relist without `web`: it is gone too; a pod recreated under the same name is new.
        let again = pod("lone", "pod-3", "10.0.0.3", None);
        pods.apply(watcher::Event::Init, &stores);
        pods.apply(watcher::Event::InitApply(again), &stores);
        pods.apply(watcher::Event::InitDone, &stores);
        let fourth = snapshot(&stores, &third, &mut tombstones, &mut pods, retention);
        let names: Vec<(&str, &str, bool)> = fourth
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.uid.as_str(), p.deleted.is_some()))
            .collect();
        assert_eq!(
            names,
            // Same name and creation time: the live pod first, then the tombstone (as before).
            [
                ("lone", "pod-3", false),
                ("lone", "pod-2", true),
                ("web-abc12-x1", "pod-1", true)
            ]
        );
    }
}
