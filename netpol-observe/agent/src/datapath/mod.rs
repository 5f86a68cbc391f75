//! Userspace datapath: loads the eBPF object, attaches it to pod interfaces, reads the ring
//! buffer and sweeps the flow map into [`crate::flow::FlowRecord`]s.
//!
//! ```no_run
//! # async fn demo() -> Result<(), netpol_observe_agent::datapath::DatapathError> {
//! use netpol_observe_agent::datapath::{Datapath, DatapathConfig};
//! let dp = Datapath::start(DatapathConfig::default()).await?;
//! let mut updates = dp.subscribe();
//! // ... later
//! let flows = dp.shutdown().await?; // final sweep, everything detached
//! # let _ = (updates.try_recv(), flows); Ok(()) }
//! ```
//!
//! Three tokio tasks run while the datapath lives: the netlink follower (attaches to matching
//! interfaces as they appear), the ring-buffer reader (new flows, TCP FIN/RST) and the
//! sweeper (batch-reads the flow map every `sweep_interval`, computes deltas, expires idle
//! flows). See `docs/design/datapath.md`.

mod attach;
pub mod btf;
mod config;
pub mod dns;
#[doc(hidden)]
pub mod dns_cost;
mod drops;
mod hooks;
mod kernel;
mod links;
pub mod sockets;
mod table;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    os::fd::AsFd,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
};
use netpol_observe_ebpf::{
    FlowEvent, FlowKey, FlowValue, GLOBAL_CAPTURE_DNS, GLOBAL_LEARN_LOCAL, LOCAL_SRC_GEN_MASK,
    LocalEndpoint, MAP_COUNTERS, MAP_DNS_EVENTS, MAP_EVENTS, MAP_FLOW_CACHE, MAP_FLOWS,
    MAP_LOCAL_ENDPOINTS, MAP_LOCAL_ENDPOINTS_GEN,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, watch},
    task::JoinHandle,
};

pub use attach::{AttachMode, AttachedInterface};
pub use config::{DEFAULT_EXCLUDE, DEFAULT_INCLUDE, DatapathConfig, InterfaceFilter};
pub use dns::DnsAnswer;
pub use drops::{
    DropSample, DropScope, DropTracer, DropsError, NetnsOffsets, SkbOffsets, kernel_drop_reasons,
    own_netns_inode,
};
pub use hooks::{HookStats, NoopHooks, tcx_stats};
pub use kernel::KernelCounters;
pub use netpol_observe_ebpf::Counter;
pub use table::{Clock, FlowTable, FlowUpdate, SweepAction, derive_state, monotonic_ns};

use crate::{flow::FlowRecord, report::Chain};

/// The eBPF object built by `build.rs` (aya-build), embedded in the binary.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpol-observe-ebpf"));

/// Capacity of the update channel of [`Datapath::subscribe`]; slow subscribers lag and are
/// told how many updates they missed.
pub(crate) const UPDATE_CHANNEL_CAPACITY: usize = 16_384;

/// What can go wrong in the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The configuration is unusable.
    #[error("invalid datapath configuration: {0}")]
    InvalidConfig(String),
    /// Loading the eBPF object, one of its programs, or what it needs failed.
    #[error("loading {what}{hint}")]
    Load {
        /// What was being loaded.
        what: String,
        /// What to do about it (the privileges needed), or nothing.
        hint: &'static str,
        /// Why.
        #[source]
        source: Cause,
    },
    /// A program or map is not in the eBPF object.
    #[error("{0} is missing from the eBPF object")]
    Missing(String),
    /// A map of the object cannot be used.
    #[error("eBPF map {name}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why.
        #[source]
        source: Cause,
    },
    /// Attaching to an interface failed.
    #[error("attaching to interface {interface} failed: {step}")]
    Attach {
        /// The interface.
        interface: String,
        /// The step that failed.
        step: String,
        /// What the kernel said.
        #[source]
        source: Cause,
    },
    /// A configured interface name (without wildcards) does not exist.
    #[error("interface {0} does not exist")]
    InterfaceNotFound(String),
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// Reading a kernel map failed.
    #[error("reading {what} from the kernel")]
    MapRead {
        /// What was read.
        what: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// Writing a kernel map failed.
    #[error("writing {what} to the kernel")]
    MapWrite {
        /// What was written.
        what: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// A background task failed.
    #[error("datapath task failed")]
    Task(#[source] tokio::task::JoinError),
    /// Asking the kernel which programs are attached (and their statistics) failed.
    #[error("querying {what}")]
    Query {
        /// What was asked.
        what: String,
        /// Why.
        #[source]
        source: Cause,
    },
}

/// The cause of a [`DatapathError`]: aya's, netlink's or the system's error.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl DatapathError {
    /// Loading `what` failed with `e`; names the privileges needed when the kernel said EPERM.
    fn load(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        let hint = if permission_denied(&e) {
            " (root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN are needed)"
        } else {
            ""
        };
        DatapathError::Load {
            what: what.into(),
            hint,
            source: Box::new(e),
        }
    }

    /// Map `name` cannot be used: `e`.
    fn map(name: &'static str, e: impl Into<Cause>) -> Self {
        DatapathError::Map {
            name,
            source: e.into(),
        }
    }
}

/// Counters of the datapath itself (userspace side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatapathStats {
    /// Capacity of the kernel flow map.
    pub flow_capacity: u32,
    /// Flows believed present in the kernel map.
    pub kernel_flows: usize,
    /// Flows in the userspace table (live and recently ended).
    pub table_flows: usize,
    /// Kernel entries lost to LRU eviction (the flow map is too small).
    pub evictions: u64,
    /// Sweeps done.
    pub sweeps: u64,
    /// Ring-buffer events read.
    pub events: u64,
}

struct Sweeper {
    map: BpfHashMap<MapData, FlowKey, FlowValue>,
    reader: kernel::FlowMapReader,
}

/// The userspace flow table and the counts of what fed it: the ring-buffer reader, the
/// sweeper and [`Datapath::stats`] take them together.
struct Table {
    flows: FlowTable,
    /// Ring-buffer events read.
    events: u64,
    /// Sweeps done.
    sweeps: u64,
}

/// The kernel's local-endpoint map and its generation (see [`MAP_LOCAL_ENDPOINTS_GEN`]), with
/// the addresses userspace put there ([`Datapath::set_local_endpoints`]; learned ones are the
/// programs').
struct LocalEndpoints {
    map: BpfHashMap<MapData, [u8; 16], LocalEndpoint>,
    generation: Array<MapData, u32>,
    user: HashSet<[u8; 16]>,
}

impl LocalEndpoints {
    /// Increments the generation: the egress programs' same-node skip cache forgets every
    /// entry. Called after addresses were removed from the map.
    fn invalidate_cache(&mut self) -> Result<(), DatapathError> {
        let g = self
            .generation
            .get(&0, 0)
            .map_err(|e| DatapathError::MapWrite {
                what: "the endpoint generation".into(),
                source: e.into(),
            })?;
        self.generation
            .set(0, g.wrapping_add(1) & LOCAL_SRC_GEN_MASK, 0)
            .map_err(|e| DatapathError::MapWrite {
                what: "the endpoint generation".into(),
                source: e.into(),
            })
    }
}

/// What the datapath's tasks share. Four locks, one per writer's domain; the order is
/// `sweeper` or `local` first, then `table` or `attacher`, which are leaves: nothing is locked
/// while either is held (the DNS ring's own lock aside, a leaf too).
/// - `table`: the flow table, fed by the ring-buffer reader and the sweeper;
/// - `sweeper`: the flow map's reader, held for a whole sweep (sweeps do not overlap);
/// - `local`: the local-endpoint map and the addresses userspace put there;
/// - `attacher`: the attached interfaces and the loaded object (the flush program).
struct Shared {
    config: DatapathConfig,
    /// `config`'s interface patterns, compiled.
    interfaces: InterfaceFilter,
    table: Mutex<Table>,
    updates: broadcast::Sender<FlowUpdate>,
    /// DNS answers to pods ([`Datapath::subscribe_dns`]).
    dns: broadcast::Sender<DnsAnswer>,
    /// Their ring buffer, drained before flow updates are broadcast.
    dns_ring: Arc<dns::DnsRing>,
    attacher: Mutex<attach::Attacher>,
    sweeper: Mutex<Sweeper>,
    flusher: kernel::CacheFlusher,
    /// The programs' counters (read only: per-CPU lookups need no lock).
    counters: PerCpuArray<MapData, u64>,
    local: Mutex<LocalEndpoints>,
}

impl Shared {
    /// Runs the flush program on every CPU ([`kernel::CacheFlusher`]). The program is part of
    /// the object the attacher owns, so the attacher's lock is held for the runs (a leaf: the
    /// only lock this path takes while `sweeper` or `local` is held).
    fn flush_flow_cache(&self) -> std::io::Result<u32> {
        self.flusher.flush(lock(&self.attacher).ebpf())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent-enough data for counters and tables.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running datapath. Dropping it without [`Datapath::shutdown`] stops its tasks and
/// thereby detaches the programs (aya closes the links once the last task ends), but skips
/// the final sweep.
pub struct Datapath {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    ring_task: Option<JoinHandle<Option<AsyncFd<RingBuf<MapData>>>>>,
    tasks: Vec<JoinHandle<()>>,
    netlink: rtnetlink::Handle,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs, attaches to every matching interface and starts following
    /// interfaces, reading events and sweeping. Must run inside a tokio runtime.
    pub async fn start(config: DatapathConfig) -> Result<Datapath, DatapathError> {
        config.validate().map_err(DatapathError::InvalidConfig)?;
        let interfaces = config
            .interface_filter()
            .map_err(DatapathError::InvalidConfig)?;
        let mut ebpf = load_object(&config)?;
        let maps = Maps::take(&mut ebpf)?;
        let flusher = kernel::CacheFlusher::load(&mut ebpf)?;
        let mut attacher = attach::Attacher::new(
            ebpf,
            config
                .attach_mode
                .unwrap_or_else(AttachMode::for_this_kernel),
        )?;
        let logger = config
            .ebpf_log
            .then(|| ebpf_logger(&mut attacher))
            .flatten();
        // Sockets first: connections older than the attach are oriented by who listens.
        let sockets = scan_sockets().await;
        let (messages, netlink) = attach_present(&config, &interfaces, &mut attacher).await?;

        let node = config.node_name.clone().or_else(crate::host::hostname);
        let (updates, _) = broadcast::channel(UPDATE_CHANNEL_CAPACITY);
        let (dns_tx, _) = broadcast::channel(dns::DNS_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            dns_ring: Arc::new(dns::DnsRing::new(maps.dns_ring, dns_tx.clone())),
            dns: dns_tx,
            table: Mutex::new(Table {
                flows: {
                    let mut t = FlowTable::new(Clock::now(), node);
                    t.set_sockets(sockets);
                    t
                },
                events: 0,
                sweeps: 0,
            }),
            updates,
            attacher: Mutex::new(attacher),
            sweeper: Mutex::new(Sweeper {
                map: maps.flows,
                reader: kernel::FlowMapReader::new(maps.flows_fd, config.flow_capacity),
            }),
            flusher,
            counters: maps.counters,
            local: Mutex::new(LocalEndpoints {
                map: maps.local,
                generation: maps.generation,
                user: HashSet::new(),
            }),
            config,
            interfaces,
        });
        let (stop, stop_rx) = watch::channel(false);
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let ring = unsafe { AsyncFd::register(maps.ring) }
            .map_err(|e| DatapathError::map(MAP_EVENTS, e))?;
        let ring_task = tokio::spawn(read_events(Arc::clone(&shared), ring, stop_rx.clone()));
        let mut tasks = vec![
            tokio::spawn(sweep_loop(Arc::clone(&shared), stop_rx.clone())),
            tokio::spawn(follow_links(Arc::clone(&shared), messages, stop_rx.clone())),
        ];
        tasks.push(tokio::spawn(dns::read_answers(
            Arc::clone(&shared.dns_ring),
            stop_rx.clone(),
        )));
        if let Some(logger) = logger {
            tasks.push(tokio::spawn(forward_logs(logger, stop_rx)));
        }
        Ok(Datapath {
            shared,
            stop,
            ring_task: Some(ring_task),
            tasks,
            netlink,
        })
    }

    /// Replaces the pod addresses of this node given by userspace (learned ones stay). A
    /// packet to a local pod from another local pod is counted only at the sender's interface.
    pub fn set_local_endpoints(&self, ips: &[IpAddr]) -> Result<(), DatapathError> {
        let wanted: HashSet<[u8; 16]> = ips.iter().map(ip16).collect();
        let mut local = lock(&self.shared.local);
        let local = &mut *local;
        let mut removed = false;
        let added = wanted.difference(&local.user).next().is_some();
        for old in local.user.difference(&wanted) {
            match local.map.remove(old) {
                Ok(()) => removed = true,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(DatapathError::MapWrite {
                        what: "a local endpoint".into(),
                        source: e.into(),
                    });
                }
            }
        }
        if removed {
            // After the removals, so that no cache entry made before them still matches.
            local.invalidate_cache()?;
        }
        for ip in &wanted {
            local
                .map
                .insert(ip, LocalEndpoint::default(), 0)
                .map_err(|e| DatapathError::MapWrite {
                    what: "a local endpoint".into(),
                    source: e.into(),
                })?;
        }
        local.user = wanted;
        if removed || added {
            // The programs' front entries of the flow map remember which endpoints were
            // local when they were filled: the flush empties them all.
            self.shared
                .flush_flow_cache()
                .map_err(|e| DatapathError::MapWrite {
                    what: "the per-CPU flow cache's flush after a local endpoint change".into(),
                    source: e.into(),
                })?;
        }
        Ok(())
    }

    /// Every flow known (live and ended within `retention`), unattributed, oldest first.
    pub fn snapshot(&self) -> Vec<FlowRecord> {
        lock(&self.shared.table).flows.snapshot()
    }

    /// A stream of flow updates (new flows, deltas after each sweep, ends).
    pub fn subscribe(&self) -> broadcast::Receiver<FlowUpdate> {
        self.shared.updates.subscribe()
    }

    /// A stream of the DNS answers the pods receive (empty unless
    /// [`DatapathConfig::capture_dns`]).
    pub fn subscribe_dns(&self) -> broadcast::Receiver<DnsAnswer> {
        self.shared.dns.subscribe()
    }

    /// The kernel-side counters summed over CPUs.
    pub fn kernel_counters(&self) -> Result<KernelCounters, DatapathError> {
        KernelCounters::read(&self.shared.counters)
    }

    /// Userspace counters: evictions, table sizes, sweeps.
    pub fn stats(&self) -> DatapathStats {
        let table = lock(&self.shared.table);
        DatapathStats {
            flow_capacity: self.shared.config.flow_capacity,
            kernel_flows: table.flows.live(),
            table_flows: table.flows.len(),
            evictions: table.flows.evictions(),
            sweeps: table.sweeps,
            events: table.events,
        }
    }

    /// The interfaces attached now.
    pub fn attached_interfaces(&self) -> Vec<AttachedInterface> {
        lock(&self.shared.attacher).interfaces()
    }

    /// Sweeps the flow map now (in addition to the periodic sweeps).
    pub fn sweep_now(&self) -> Result<(), DatapathError> {
        sweep(&self.shared)
    }

    /// Stops the tasks, detaches from every interface (deleting clsact qdiscs it added),
    /// reads the last events, sweeps a final time and returns every flow.
    pub async fn shutdown(mut self) -> Result<Vec<FlowRecord>, DatapathError> {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let ring = match self.ring_task.take() {
            Some(t) => t.await.map_err(DatapathError::Task)?,
            None => None,
        };
        let qdiscs = lock(&self.shared.attacher).detach_all();
        for (ifindex, name) in qdiscs {
            if let Err(e) = links::delete_clsact(&self.netlink, ifindex).await {
                tracing::warn!(interface = %name, "{}", Chain(&e));
            }
        }
        if let Some(mut ring) = ring {
            drain(&self.shared, ring.get_mut());
        }
        let swept = sweep(&self.shared);
        let mut table = lock(&self.shared.table);
        table.flows.end_all();
        broadcast_updates(&self.shared, &mut table.flows);
        swept?;
        Ok(table.flows.snapshot())
    }
}

impl Drop for Datapath {
    /// Without [`Datapath::shutdown`]: stops the tasks so the last reference to the loaded
    /// object goes away and aya detaches the programs (no final sweep).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        if let Some(t) = &self.ring_task {
            t.abort();
        }
    }
}

/// The logger of the programs' `aya_log` lines (`--ebpf-log`); unavailable: a warning.
fn ebpf_logger(
    attacher: &mut attach::Attacher,
) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
    match aya_log::EbpfLogger::init(attacher.ebpf_mut()) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("eBPF logging unavailable: {e}");
            None
        }
    }
}

/// Subscribes to the link changes and attaches to every present interface `interfaces`
/// matches; an interface named literally in `--include` must be present.
async fn attach_present(
    config: &DatapathConfig,
    interfaces: &InterfaceFilter,
    attacher: &mut attach::Attacher,
) -> Result<(links::LinkMessages, rtnetlink::Handle), DatapathError> {
    let (present, messages, netlink) = links::subscribe().await?;
    for pattern in &config.include {
        if InterfaceFilter::is_literal(pattern) && !present.iter().any(|(_, n)| n == pattern) {
            return Err(DatapathError::InterfaceNotFound(pattern.clone()));
        }
    }
    for (index, name) in &present {
        if interfaces.matches(name) {
            attacher.attach(*index, name)?;
        }
    }
    Ok((messages, netlink))
}

/// Loads the eBPF object with the maps sized and the globals set as `config` says.
fn load_object(config: &DatapathConfig) -> Result<aya::Ebpf, DatapathError> {
    let learn: u8 = config.learn_local_endpoints.into();
    let capture_dns: u8 = config.capture_dns.into();
    EbpfLoader::new()
        .map_max_entries(MAP_FLOWS, config.flow_capacity)
        .map_max_entries(MAP_FLOW_CACHE, flow_cache_entries()?)
        .map_max_entries(MAP_EVENTS, config.ringbuf_bytes)
        .map_max_entries(MAP_DNS_EVENTS, config.dns_ringbuf_bytes)
        .override_global(GLOBAL_LEARN_LOCAL, &learn, true)
        .override_global(GLOBAL_CAPTURE_DNS, &capture_dns, true)
        .load(EBPF_OBJECT)
        .map_err(|e| DatapathError::load("the eBPF object", e))
}

/// The maps userspace works with, taken out of the loaded object.
struct Maps {
    flows: BpfHashMap<MapData, FlowKey, FlowValue>,
    /// A second descriptor of the flow map, for the batch reader.
    flows_fd: std::os::fd::OwnedFd,
    ring: RingBuf<MapData>,
    dns_ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    local: BpfHashMap<MapData, [u8; 16], LocalEndpoint>,
    generation: Array<MapData, u32>,
}

impl Maps {
    fn take(ebpf: &mut aya::Ebpf) -> Result<Maps, DatapathError> {
        let flows: aya::maps::Map = take_map(ebpf, MAP_FLOWS)?;
        let flows_fd = match &flows {
            aya::maps::Map::LruHashMap(data) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| DatapathError::map(MAP_FLOWS, e))?,
            _ => return Err(DatapathError::map(MAP_FLOWS, "not an LRU hash map")),
        };
        Ok(Maps {
            flows: flows
                .try_into()
                .map_err(|e: aya::maps::MapError| DatapathError::map(MAP_FLOWS, e))?,
            flows_fd,
            ring: take_map(ebpf, MAP_EVENTS)?,
            dns_ring: take_map(ebpf, MAP_DNS_EVENTS)?,
            counters: take_map(ebpf, MAP_COUNTERS)?,
            local: take_map(ebpf, MAP_LOCAL_ENDPOINTS)?,
            generation: take_map(ebpf, MAP_LOCAL_ENDPOINTS_GEN)?,
        })
    }
}

/// Takes map `name` out of the object as the map type `M`.
fn take_map<M>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<M, DatapathError>
where
    M: TryFrom<aya::maps::Map>,
    M::Error: Into<Cause>,
{
    ebpf.take_map(name)
        .ok_or_else(|| DatapathError::Missing(format!("map {name}")))?
        .try_into()
        .map_err(|e| DatapathError::map(name, e))
}

/// An address as the 16-byte key the kernel uses (IPv4 v4-mapped).
pub(crate) fn ip16(ip: &IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Sends a batch of updates in the order the flows started: a flow seen after the node
/// rewrote a packet (the backend leg of a Service connection) comes after the flow it
/// continues, which the agent needs to join them.
///
/// The DNS answers already in their ring buffer are broadcast first: a client's answer precedes
/// the connection it opens, so a subscriber to both sees the names before the flow.
fn broadcast_updates(shared: &Shared, table: &mut FlowTable) {
    let mut updates = table.take_updates();
    if shared.updates.receiver_count() == 0 {
        return;
    }
    if !updates.is_empty() {
        shared.dns_ring.drain();
    }
    updates.sort_by_key(|u| u.record.first_seen);
    for u in updates {
        let _ = shared.updates.send(u);
    }
}

fn drain(shared: &Shared, ring: &mut RingBuf<MapData>) -> usize {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<FlowEvent>() {
            // SAFETY: the kernel wrote a `FlowEvent` (plain `#[repr(C)]` data) here;
            // `read_unaligned` copes with any alignment.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
            events.push(ev);
        }
    }
    if events.is_empty() {
        return 0;
    }
    let mut table = lock(&shared.table);
    for ev in &events {
        table
            .flows
            .on_event(&ev.key, ev.kind, ev.ts_ns, ev.initiator, ev.dir);
    }
    table.flows.publish();
    table.events += events.len() as u64;
    broadcast_updates(shared, &mut table.flows);
    events.len()
}

async fn read_events(
    shared: Arc<Shared>,
    mut ring: AsyncFd<RingBuf<MapData>>,
    mut stop: watch::Receiver<bool>,
) -> Option<AsyncFd<RingBuf<MapData>>> {
    loop {
        tokio::select! {
            _ = stop.changed() => return Some(ring),
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!("ring buffer: {e}");
                        return None;
                    }
                };
                drain(&shared, guard.get_inner_mut());
                guard.clear_ready();
            }
        }
    }
}

async fn sweep_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                let s = Arc::clone(&shared);
                match tokio::task::spawn_blocking(move || sweep(&s)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("sweep: {}", Chain(&e)),
                    Err(e) => tracing::error!("sweep task: {e}"),
                }
            }
        }
    }
}

/// Elements of the programs' `FLOW_CACHE`: one for each CPU id the kernel can have (a CPU
/// beyond the map would only go without its front entries).
fn flow_cache_entries() -> Result<u32, DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| DatapathError::load(path, e))?;
    let online_max = aya::util::online_cpus()
        .map_err(|(path, e)| DatapathError::load(path, e))?
        .into_iter()
        .max()
        .map_or(0, |c| c as usize + 1);
    Ok(cpus.max(online_max) as u32)
}

/// Reads the whole flow map, merges it into the table, expires idle entries, publishes.
fn sweep(shared: &Shared) -> Result<(), DatapathError> {
    let idle_ns = shared.config.idle_timeout.as_nanos() as u64;
    let retention_ns = shared.config.retention.as_nanos() as u64;
    let mut sweeper = lock(&shared.sweeper);
    let Sweeper { map, reader } = &mut *sweeper;
    let start = monotonic_ns();
    // The counts the programs keep per CPU go into the flow map first.
    match shared.flush_flow_cache() {
        Ok(0) => {}
        Ok(busy) => tracing::debug!(busy, "flow cache busy on some CPUs: flushed next sweep"),
        Err(e) => tracing::warn!("flushing the per-CPU flow cache: {e}"),
    }
    let mut entries = Vec::new();
    reader.for_each(map, |k, v| entries.push((*k, *v)))?;
    let now = monotonic_ns();
    let mut seen = HashMap::with_capacity(entries.len());
    let mut expire = Vec::new();
    {
        let mut table = lock(&shared.table);
        for (k, v) in &entries {
            seen.insert(*k, v.first_seen_ns);
            if table.flows.on_sweep(k, v, now, idle_ns) == SweepAction::Expire {
                expire.push(*k);
            }
        }
    }
    let mut expired = Vec::with_capacity(expire.len());
    for k in expire {
        // Re-check: a packet may have arrived since the read.
        let still_idle = map
            .get(&k, 0)
            .map(|v| now.saturating_sub(v.last_seen_ns) >= idle_ns)
            .unwrap_or(true);
        if still_idle {
            match map.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => expired.push(k),
                Err(e) => tracing::warn!("expiring a flow: {e}"),
            }
        }
    }
    drop(sweeper);
    let mut table = lock(&shared.table);
    table
        .flows
        .finish_sweep(&seen, &expired, start, now, idle_ns, retention_ns);
    table.sweeps += 1;
    broadcast_updates(shared, &mut table.flows);
    Ok(())
}

async fn follow_links(
    shared: Arc<Shared>,
    mut messages: links::LinkMessages,
    mut stop: watch::Receiver<bool>,
) {
    use futures::StreamExt;
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return,
            m = messages.next() => m,
        };
        let Some((msg, _)) = msg else {
            tracing::warn!("netlink notifications ended; new interfaces are no longer followed");
            return;
        };
        match links::change(msg) {
            Some(links::LinkChange::Present(index, name)) => {
                let attached = {
                    let mut a = lock(&shared.attacher);
                    if shared.interfaces.matches(&name) && !a.is_attached(index) {
                        match a.attach(index, &name) {
                            Ok(()) => true,
                            Err(e) => {
                                // Interfaces can vanish right after appearing; not fatal.
                                tracing::warn!("{}", Chain(&e));
                                false
                            }
                        }
                    } else {
                        false
                    }
                };
                if attached {
                    // A new pod (or one moved here): refresh who listens, in the background.
                    let s = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let sockets = scan_sockets().await;
                        lock(&s.table).flows.set_sockets(sockets);
                    });
                }
            }
            Some(links::LinkChange::Removed(index)) => {
                let _ = lock(&shared.attacher).detach(index, true);
            }
            None => {}
        }
    }
}

/// Scans the node's network namespaces for listening and connected sockets (on a blocking
/// thread); namespaces that cannot be scanned are logged and skipped.
async fn scan_sockets() -> sockets::Sockets {
    match tokio::task::spawn_blocking(sockets::scan).await {
        Ok((found, errors)) => {
            for e in &errors {
                tracing::debug!("sockets: {}", Chain(e));
            }
            let (namespaces, listening, connected) = found.counts();
            tracing::info!(
                namespaces,
                listening,
                connected_udp = connected,
                unreadable = errors.len(),
                "sockets scanned to orient flows picked up mid-stream"
            );
            found
        }
        Err(e) => {
            tracing::warn!("socket scan task: {e}");
            sockets::Sockets::default()
        }
    }
}

async fn forward_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the logger owns its ring-buffer descriptor and keeps it open while registered.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("eBPF logging unavailable: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            guard = fd.readable_mut() => match guard {
                Ok(mut g) => {
                    g.get_inner_mut().flush();
                    g.clear_ready();
                }
                Err(_) => return,
            }
        }
    }
}

/// Runs a `BPF_PROG_LOAD` (`load`) with this thread's signals blocked, retrying while the
/// kernel answers `EAGAIN`.
///
/// The verifier gives up with `EAGAIN` when a signal is pending for the loading thread: a
/// long verification (the flush program's loop) in a process whose children keep exiting
/// (`SIGCHLD`) failed five tries in a row on a busy machine. With the signals blocked here,
/// the kernel delivers process-wide signals to another thread, and those sent to this one
/// wait until the load is done. A few retries remain, as libbpf does.
pub(crate) fn retry_interrupted_load(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    const ATTEMPTS: usize = 10;
    let mut previous = SigSet::empty();
    let blocked = pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )
    .is_ok();
    let mut attempt = 1;
    let result = loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                tracing::debug!(attempt, "program load interrupted (EAGAIN), retrying");
                attempt += 1;
            }
            other => break other,
        }
    };
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    }
    result
}

/// Whether `e` or one of its causes is the kernel's EPERM.
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod object_tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    use super::EBPF_OBJECT;

    /// The names of the symbols the TC programs' section (`classifier`: both programs'
    /// per-packet parts, inlined) calls or references, one per relocation.
    fn classifier_relocation_targets() -> Vec<String> {
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        let section = file
            .section_by_name("classifier")
            .expect("the object has a classifier section");
        section
            .relocations()
            .filter_map(|(_, r)| match r.target() {
                RelocationTarget::Symbol(i) => file.symbol_by_index(i).ok(),
                _ => None,
            })
            .map(|s| s.name().unwrap_or("?").to_owned())
            .collect()
    }

    /// The object declares a GPL-compatible licence (the drop tracepoint calls GPL-only
    /// helpers) that matches the eBPF crate's `MIT OR GPL-2.0-only`.
    #[test]
    fn object_declares_dual_mit_gpl_license() {
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        let section = file
            .section_by_name("license")
            .expect("the object has a license section");
        assert_eq!(
            section.data().expect("the license section is readable"),
            b"Dual MIT/GPL\0"
        );
    }

    /// `memset` on this target is a byte loop in a BPF subprogram: a zeroed local that is
    /// only partly overwritten calls it, and on the per-packet path that cost as much as a
    /// third of the ingress program. The per-packet hit path (the programs' own section,
    /// which uses the per-CPU `FLOW_CACHE`) must not; everything else (`observe_slow`, the
    /// general path) lives in `.text` and may.
    #[test]
    fn per_packet_path_calls_no_memset() {
        let targets = classifier_relocation_targets();
        assert!(
            targets.iter().any(|t| t == "FLOW_CACHE"),
            "relocations read: {targets:?}"
        );
        assert!(
            !targets.iter().any(|t| t == "memset"),
            "the TC programs call memset: {targets:?}"
        );
    }
}
