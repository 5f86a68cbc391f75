//! The agent's userspace pipeline benchmark (behind `cargo xtask bench agent`): new flows per
//! second through attribution, both verdicts (in force and staged), metrics and the store, on
//! one thread, and the process RSS with 10k and 100k flows held. Synthetic cluster:
//! `policy::synth` (10k pods, 100 namespaces, 1k policies; 1k staged).
//!
//! Input records are generated in batches of [`BATCH`] outside the timed section and dropped
//! once fed ([`Inputs::Streamed`]), as a real agent receives them from the datapath one by
//! one; [`Inputs::Held`] generates the same records up front and holds them all (the method
//! of the first version of this benchmark, whose RSS includes ~60 MiB of input records).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use netpol_observe_agent::{
    agent::{AgentConfig, AgentState, Model},
    datapath::FlowUpdate,
};
use netpol_observe_core::{
    attribution::Subnets,
    flow::{Directional, FlowRecord},
    inventory::Inventory,
    policy::synth,
};

/// Records generated (and fed) at a time.
pub const BATCH: usize = 1_000;

/// Distinct (source, destination, port, protocol) combinations of [`Traffic::Repeated`].
pub const REPEATED_PAIRS: usize = 500;

/// Which flows the benchmark feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Traffic {
    /// Every flow between a random pair of addresses (pods, Services, nodes, outside): almost
    /// no two flows share a pod pair. The worst case for any per-pair cache.
    Random,
    /// [`REPEATED_PAIRS`] random (source, destination, port) combinations, each repeated with
    /// new source ports (~200 connections per combination over 100k flows): what real
    /// traffic between a fixed set of workloads looks like.
    Repeated,
}

/// Whether the harness holds every input record or generates them as fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Inputs {
    /// Batches of [`BATCH`] records, generated outside the timed section and dropped once fed.
    Streamed,
    /// All records generated before the timed section and held until the end (RSS includes
    /// them).
    Held,
}

/// One round's figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Round {
    /// New flows processed per second (one thread).
    pub new_flows_per_sec: f64,
    /// Process RSS in MiB with 10k flows in the store.
    pub rss_10k_mib: f64,
    /// Process RSS in MiB with 100k flows in the store.
    pub rss_100k_mib: f64,
    /// Process RSS in MiB before the model is built: the synthetic inventory, the staged
    /// policies and (with [`Inputs::Held`]) the input records.
    pub rss_inputs_mib: f64,
    /// Process RSS in MiB with the model built (attributor, both engines) and no flow yet:
    /// the agent's baseline for this cluster.
    pub rss_model_mib: f64,
}

/// The process's resident set size in MiB (`/proc/self/status` `VmRSS`).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// The synthetic cluster: 10k pods in 100 namespaces, 1k policies in force.
pub fn cluster(seed: u64) -> Arc<Inventory> {
    let mut inventory = synth::cluster(100, 10_000, seed);
    inventory.network_policies = synth::policies(1_000, 100, 7);
    Arc::new(inventory)
}

/// Generates the input records `start..start + n` (distinct 5-tuples: the source port
/// follows the record's index).
struct Generator {
    traffic: Traffic,
    seed: u64,
    /// The combinations [`Traffic::Repeated`] cycles through.
    pairs: Vec<FlowRecord>,
}

impl Generator {
    fn new(inventory: &Inventory, traffic: Traffic, seed: u64) -> Self {
        let pairs = match traffic {
            Traffic::Random => Vec::new(),
            Traffic::Repeated => synth::flows(inventory, REPEATED_PAIRS, seed),
        };
        Generator {
            traffic,
            seed,
            pairs,
        }
    }

    fn batch(&self, inventory: &Inventory, start: usize, n: usize) -> Vec<FlowRecord> {
        let mut flows = match self.traffic {
            Traffic::Random => synth::flows(inventory, n, self.seed ^ (start as u64 + 1)),
            Traffic::Repeated => (start..start + n)
                .filter_map(|i| self.pairs.get(i % REPEATED_PAIRS.max(1)).cloned())
                .collect(),
        };
        for (k, f) in flows.iter_mut().enumerate() {
            let i = start + k;
            let port = match self.traffic {
                Traffic::Random => i % 60_000,
                Traffic::Repeated => (i / REPEATED_PAIRS.max(1)) % 60_000,
            };
            f.src.port = Some(1024 + port as u16);
            f.packets = Some(Directional {
                sent: 3,
                received: 2,
            });
        }
        flows
    }
}

/// Runs one round: a fresh agent state, `count` new flows.
pub fn round(
    inventory: &Arc<Inventory>,
    count: usize,
    traffic: Traffic,
    inputs: Inputs,
    seed: u64,
) -> Round {
    let staged = synth::policies(1_000, 100, 8);
    let generator = Generator::new(inventory, traffic, seed);
    let held: Vec<Vec<FlowRecord>> = match inputs {
        Inputs::Streamed => Vec::new(),
        Inputs::Held => (0..count)
            .step_by(BATCH)
            .map(|start| generator.batch(inventory, start, BATCH.min(count - start)))
            .collect(),
    };
    let rss_inputs = rss_mib();
    // The agent shares the inventory snapshot (no copy), as it does with a loaded one.
    let inv = Arc::clone(inventory);
    let state = AgentState::new(AgentConfig {
        max_flows: count,
        node_name: Some("node-1".into()),
        ..AgentConfig::default()
    });
    let model = Model::new(inv, &Subnets::default(), Some(&staged));
    let Ok(model) = model else {
        return Round {
            new_flows_per_sec: 0.0,
            rss_10k_mib: 0.0,
            rss_100k_mib: 0.0,
            rss_inputs_mib: rss_inputs,
            rss_model_mib: 0.0,
        };
    };
    state.set_model(Arc::new(model));
    let rss_model = rss_mib();
    let mut rss_10k = 0.0;
    let mut busy = Duration::ZERO;
    let mut fed = 0;
    for (b, start) in (0..count).step_by(BATCH).enumerate() {
        let generated;
        let batch: &[FlowRecord] = match inputs {
            Inputs::Held => held.get(b).map(Vec::as_slice).unwrap_or_default(),
            Inputs::Streamed => {
                generated = generator.batch(inventory, start, BATCH.min(count - start));
                &generated
            }
        };
        let t = Instant::now();
        for f in batch {
            state.on_update(&FlowUpdate {
                record: f.clone(),
                new: true,
                delta_packets: Directional {
                    sent: 3,
                    received: 2,
                },
                delta_bytes: Directional {
                    sent: 300,
                    received: 200,
                },
                ended: false,
                opened: true,
            });
        }
        busy += t.elapsed();
        fed += batch.len();
        if fed == 10_000 {
            rss_10k = rss_mib();
        }
    }
    let secs = busy.as_secs_f64().max(1e-9);
    Round {
        new_flows_per_sec: fed as f64 / secs,
        rss_10k_mib: rss_10k,
        rss_100k_mib: rss_mib(),
        rss_inputs_mib: rss_inputs,
        rss_model_mib: rss_model,
    }
}
