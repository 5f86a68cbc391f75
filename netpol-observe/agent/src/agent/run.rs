//! The agent's event loop ([`Agent::run`]): one task over the capture's updates, DNS answers
//! and drops, the health and poll ticks, the live inventory and the model builder.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{
    AgentConfig, AgentError, AgentState, Capture, Model, ObservedFlow,
    rebuild::{Rebuild, Rebuilt, spawn_rebuilder},
    source::{
        Files, Fingerprints, Source, connect_live, load_files, on_live_state, set_source_health,
    },
};
use crate::{
    datapath::{Counter, FlowUpdate},
    inventory::{Inventory, live::SyncState},
    report::Chain,
};

/// The running agent.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Runs the agent on `state` until `stop` is cancelled: loads the configured files,
    /// starts the capture with `start` (after the files: a bad file stops the agent before
    /// anything is attached), follows the inventory and feeds every update to `state`. On stop:
    /// the capture's last sweep, and the flows seen (attributed, with verdicts) are returned.
    // Long because: one `select!` loop over the agent's event sources, whose branches share
    // its state; the setup before it is split out.
    pub async fn run<C: Capture>(
        state: Arc<AgentState>,
        start: impl AsyncFnOnce(&AgentConfig) -> Result<C, AgentError>,
        stop: CancellationToken,
    ) -> Result<Vec<ObservedFlow>, AgentError> {
        let config = state.config().clone();
        let Files {
            subnets,
            staged,
            inventory,
            mut source,
        } = load_files(&state, &config)?;

        // The drop tracepoint starts with the datapath: ready only once drops are traced
        // too, so no early drop goes unseen.
        let mut dp = start(&config).await?;
        let mut updates = dp.subscribe();
        let mut dns_answers = dp.subscribe_dns();
        announce_attached(&state, &dp);

        if config.inventory.is_none() {
            source = connect_live(&state, &config).await;
        }
        if let Some(m) = state.model()
            && let Some(node) = &state.node
        {
            set_local(&dp, &m, node);
        }

        let (mut live_snapshots, mut live_state) = live_receivers(&source);
        let mut prints = Fingerprints::new(&source, &config);
        // Loading files and building models can take seconds at cluster scale: a thread of
        // its own does it, so flows keep being recorded and a signal is answered at once.
        let (rebuilt_tx, mut rebuilt) = tokio::sync::mpsc::unbounded_channel();
        let rebuild = spawn_rebuilder(subnets, config.validate, inventory, staged, rebuilt_tx);

        let [mut poll, mut health, mut drop_tick] = ticks(&config);
        // The datapath's evictions are cumulative: the metric is fed the difference.
        let mut evictions_seen = 0;
        loop {
            // A change of the file source's health: Some(None) healthy again, Some(Some(why)).
            let mut problem: Option<Option<String>> = None;
            tokio::select! {
                () = stop.cancelled() => break,
                u = updates.recv() => match u {
                    Ok(u) => {
                        // The answers the pods received before this flow began name it.
                        drain_dns(&state, &mut dns_answers);
                        state.on_update(&u);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "flow updates lagged; their flows are picked up at the next sweep");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                a = dns_answers.recv() => match a {
                    Ok(a) => state.on_dns(&a),
                    Err(broadcast::error::RecvError::Lagged(n)) => state.metrics.dns().lost(n),
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = drop_tick.tick() => read_drops(&state, &mut dp),
                _ = health.tick() => {
                    report_health(&state, &dp, &mut evictions_seen);
                    state.expire();
                    state.expire_dns();
                }
                _ = poll.tick() => {
                    prints.reload_changed(&source, &config, &rebuild);
                    state.poll_drift(Timestamp::now());
                }
                Some(()) = changed(&mut live_snapshots) => {
                    if let Some(rx) = &live_snapshots
                        && live_state.as_ref().is_some_and(|s| s.borrow().synced)
                    {
                        let _ = rebuild.send(Rebuild::Snapshot(rx.borrow().clone()));
                    }
                }
                Some(()) = changed(&mut live_state) => {
                    if let Some(rx) = &live_state {
                        let s = rx.borrow().clone();
                        on_live_state(&state, &s, &source, &rebuild);
                    }
                }
                Some(r) = rebuilt.recv() => problem = install(&state, &dp, r),
            }
            if let Some(p) = problem {
                set_source_health(&state, p);
            }
        }
        stop_capture(&state, dp, updates).await
    }
}

/// Logs the interfaces the datapath attached to (`cargo xtask bench datapath` waits for this
/// line), counts them, and marks the datapath ready.
fn announce_attached<C: Capture>(state: &AgentState, dp: &C) {
    let names = dp.interfaces();
    tracing::info!(interfaces = ?names, "datapath attached");
    state.metrics.set_attached_interfaces(names.len() as u64);
    state.set_datapath_ready();
}

/// The live inventory's snapshot and sync-state receivers (`None`, `None` with a file source).
fn live_receivers(
    source: &Source,
) -> (
    Option<watch::Receiver<Arc<Inventory>>>,
    Option<watch::Receiver<SyncState>>,
) {
    match source {
        Source::Live(l) => (Some(l.subscribe()), Some(l.subscribe_state())),
        _ => (None, None),
    }
}

/// The loop's ticks: the inventory poll, health (every sweep interval) and drops (every
/// second); a missed tick is delayed, not made up in a burst.
fn ticks(config: &AgentConfig) -> [tokio::time::Interval; 3] {
    let mut ticks = [
        tokio::time::interval(config.inventory_poll_interval.unsigned()),
        tokio::time::interval(config.sweep_interval.unsigned()),
        tokio::time::interval(Duration::from_secs(1)),
    ];
    for t in &mut ticks {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    ticks
}

/// On stop: the capture's last sweep and detach; the updates still queued and the last
/// drops are recorded, the drift baseline is saved, and the flows seen are returned.
async fn stop_capture<C: Capture>(
    state: &AgentState,
    dp: C,
    mut updates: broadcast::Receiver<FlowUpdate>,
) -> Result<Vec<ObservedFlow>, AgentError> {
    tracing::info!("stopping: final sweep and detach");
    let end = dp.shutdown().await?;
    while let Ok(u) = updates.try_recv() {
        state.on_update(&u);
    }
    for d in &end.drops {
        state.on_drop(d);
    }
    state.metrics.set_attached_interfaces(0);
    state.persist_drift(Timestamp::now());
    Ok(state.final_flows(end.records))
}

/// Installs what the model builder made (telling the capture this node's pods); returns the
/// file source's health change, if the batch reloaded the inventory files: `Some(None)`
/// healthy again, `Some(Some(why))`.
fn install(state: &AgentState, dp: &impl Capture, r: Rebuilt) -> Option<Option<String>> {
    match r.model {
        Some(Ok(m)) => {
            if let Some(node) = &state.node {
                set_local(dp, &m, node);
            }
            state.set_model(m);
        }
        Some(Err(e)) => state.set_inventory_error(e),
        None => {}
    }
    r.inventory_load.map(Result::err)
}

/// Takes the DNS answers waiting in `rx`.
fn drain_dns(state: &AgentState, rx: &mut broadcast::Receiver<crate::datapath::DnsAnswer>) {
    loop {
        match rx.try_recv() {
            Ok(a) => state.on_dns(&a),
            Err(broadcast::error::TryRecvError::Lagged(n)) => state.metrics.dns().lost(n),
            Err(_) => return,
        }
    }
}

/// Waits for a change on an optional watch receiver (`None` when absent or closed).
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) -> Option<()> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

fn set_local(dp: &impl Capture, model: &Model, node: &str) {
    let ips = model.local_pod_ips(node);
    if ips.is_empty() {
        return;
    }
    if let Err(e) = dp.set_local_endpoints(&ips) {
        tracing::warn!("local endpoints: {}", Chain(&e));
    }
}

fn read_drops(state: &AgentState, capture: &mut impl Capture) {
    match capture.read_drops() {
        Ok(samples) => {
            for d in &samples {
                state.on_drop(d);
            }
        }
        Err(e) => tracing::warn!("{}", Chain(&e)),
    }
}

fn report_health(state: &AgentState, dp: &impl Capture, evictions_seen: &mut u64) {
    let stats = dp.stats();
    let m = &state.metrics;
    m.set_flow_table(stats.kernel_flows as u64, u64::from(stats.flow_capacity));
    m.set_attached_interfaces(dp.interfaces().len() as u64);
    match dp.kernel_counters() {
        Ok(c) => {
            m.set_ringbuf_lost_total(c.get(Counter::RingbufFull));
            m.set_kernel_error_total("map_insert_failed", c.get(Counter::MapInsertFailed));
            m.set_kernel_error_total("parse_failed", c.get(Counter::ParseFailed));
            m.dns()
                .set_kernel_lost_total(c.get(Counter::DnsRingbufFull));
        }
        Err(e) => tracing::warn!("kernel counters: {}", Chain(&e)),
    }
    // Evictions are cumulative in the datapath; feed the difference.
    let now = stats.evictions;
    let prev = std::mem::replace(evictions_seen, now);
    if now > prev {
        m.record_evictions("lru", now - prev);
    }
}
