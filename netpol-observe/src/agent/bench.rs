//! The agent's userspace pipeline benchmark (behind `cargo xtask bench agent`): new flows per
//! second through attribution, both verdicts (in force and staged), metrics and the store, on
//! one thread, and the process RSS with 10k and 100k flows held. Synthetic cluster:
//! `policy::synth` (10k pods, 100 namespaces, 1k policies; 1k staged).

use std::{sync::Arc, time::Instant};

use crate::{
    attribution::Subnets,
    datapath::FlowUpdate,
    flow::{Directional, FlowRecord},
    policy::synth,
};

use super::{AgentConfig, AgentState, Model};

/// One round's figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Round {
    /// New flows processed per second (one thread).
    pub new_flows_per_sec: f64,
    /// Process RSS in MiB with 10k flows in the store.
    pub rss_10k_mib: f64,
    /// Process RSS in MiB with 100k flows in the store.
    pub rss_100k_mib: f64,
    /// Process RSS in MiB before the model is built (the synthetic inventory and the input
    /// records the harness holds).
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

/// A synthetic cluster (10k pods, 1k policies in force) and flows with distinct 5-tuples.
pub fn flows(count: usize, seed: u64) -> (Arc<crate::inventory::Inventory>, Vec<FlowRecord>) {
    let mut inventory = synth::cluster(100, 10_000, seed);
    inventory.network_policies = synth::policies(1_000, 100, 7);
    let mut flows = synth::flows(&inventory, count, seed);
    for (i, f) in flows.iter_mut().enumerate() {
        f.src.port = Some(1024 + (i % 60_000) as u16);
        f.packets = Some(Directional {
            sent: 3,
            received: 2,
        });
    }
    (Arc::new(inventory), flows)
}

/// Runs one round: a fresh agent state, 100k new flows.
pub fn round(inventory: &Arc<crate::inventory::Inventory>, flows: &[FlowRecord]) -> Round {
    let staged = synth::policies(1_000, 100, 8);
    let rss_inputs = rss_mib();
    // The agent shares the inventory snapshot (no copy), as it does with a loaded one.
    let inv = inventory.clone();
    let state = AgentState::new(AgentConfig {
        max_flows: flows.len(),
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
    let start = Instant::now();
    for (i, f) in flows.iter().enumerate() {
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
        });
        if i + 1 == 10_000 {
            rss_10k = rss_mib();
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Round {
        new_flows_per_sec: flows.len() as f64 / secs,
        rss_10k_mib: rss_10k,
        rss_100k_mib: rss_mib(),
        rss_inputs_mib: rss_inputs,
        rss_model_mib: rss_model,
    }
}
