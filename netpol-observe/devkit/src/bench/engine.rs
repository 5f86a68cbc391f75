//! The engine benchmark (`cargo xtask bench engine`, via `netpol-observe-bench engine`): verdicts per second and compile time against growing policy counts over a
//! synthetic cluster ([`synth`]), on one thread, with interleaved rounds and medians.

use std::{hint::black_box, time::Instant};

use super::median;

use netpol_observe_core::{
    flow::FlowRecord,
    policy::{PolicyEngine, PolicyError, SideVerdict, synth},
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Pods in the synthetic cluster.
    pub pods: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Policy counts to compare (each is one configuration).
    pub policy_counts: Vec<usize>,
    /// Verdicts per measurement.
    pub evaluations: usize,
    /// Distinct flows (evaluated in a cycle until `evaluations` are done).
    pub distinct_flows: usize,
    /// Interleaved rounds (every configuration once per round).
    pub rounds: usize,
    /// Seed of the synthetic inputs.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            pods: 10_000,
            namespaces: 100,
            policy_counts: vec![10, 100, 1_000, 10_000],
            evaluations: 1_000_000,
            distinct_flows: 100_000,
            rounds: 5,
            seed: 1,
        }
    }
}

/// The result for one policy count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// Number of policies.
    pub policies: usize,
    /// Median compile time, milliseconds.
    pub compile_ms: f64,
    /// Median verdicts per second of [`PolicyEngine::evaluate_flow`] (the record attributed
    /// into a connection, then explained: every allowing rule found and its name listed; the
    /// names are not read).
    pub verdicts_per_sec: f64,
    /// Every round's verdicts per second, in round order.
    pub samples: Vec<f64>,
    /// Median verdicts per second of [`PolicyEngine::evaluate_flow`] with both explanations read
    /// (every rule and policy name touched): what printing costs, the output aside. Since
    /// explanations are values (made by `evaluate`), reading adds only the names' loads.
    pub read_verdicts_per_sec: f64,
    /// Every round's explained-and-read verdicts per second, in round order.
    pub read_samples: Vec<f64>,
    /// Median verdicts per second of [`PolicyEngine::evaluate_flow_compact`] (no explanation).
    pub compact_verdicts_per_sec: f64,
    /// Every round's compact verdicts per second, in round order.
    pub compact_samples: Vec<f64>,
    /// Share of allowed verdicts (sanity: the workload is not trivial).
    pub allowed_share: f64,
}

/// Runs the benchmark on the calling thread.
pub fn run(config: &BenchConfig) -> Result<Vec<BenchRow>, PolicyError> {
    let inventory = synth::cluster(config.namespaces, config.pods, config.seed);
    let flows = synth::flows(&inventory, config.distinct_flows.max(1), config.seed);
    let policy_sets: Vec<_> = config
        .policy_counts
        .iter()
        .map(|n| synth::policies(*n, config.namespaces, config.seed))
        .collect();
    let mut compile = vec![Vec::new(); policy_sets.len()];
    let mut speed = vec![Vec::new(); policy_sets.len()];
    let mut read = vec![Vec::new(); policy_sets.len()];
    let mut compact = vec![Vec::new(); policy_sets.len()];
    let mut allowed_share = vec![0.0; policy_sets.len()];
    let measure = |judge: &dyn Fn(&FlowRecord) -> bool| {
        let mut allowed = 0usize;
        let start = Instant::now();
        for flow in flows.iter().cycle().take(config.evaluations) {
            allowed += usize::from(judge(black_box(flow)));
        }
        let secs = start.elapsed().as_secs_f64();
        (config.evaluations as f64 / secs.max(1e-9), allowed)
    };
    // Reads an explanation as printing it would: every rule and policy name.
    let read_side = |s: &SideVerdict| s.rules.iter().chain(s.policies.iter()).count();
    for _round in 0..config.rounds.max(1) {
        for (i, policies) in policy_sets.iter().enumerate() {
            let start = Instant::now();
            let engine = PolicyEngine::compile(policies, &inventory)?;
            compile[i].push(start.elapsed().as_secs_f64() * 1e3);
            let (rate, allowed) = measure(&|f| black_box(engine.evaluate_flow(f)).allowed);
            speed[i].push(rate);
            allowed_share[i] = allowed as f64 / config.evaluations.max(1) as f64;
            let (rate, allowed_read) = measure(&|f| {
                let v = engine.evaluate_flow(f);
                black_box(read_side(&v.ingress) + read_side(&v.egress));
                v.allowed
            });
            read[i].push(rate);
            let (rate, allowed_compact) =
                measure(&|f| black_box(engine.evaluate_flow_compact(f)).allowed);
            compact[i].push(rate);
            debug_assert_eq!(allowed, allowed_compact);
            debug_assert_eq!(allowed, allowed_read);
        }
    }
    Ok(config
        .policy_counts
        .iter()
        .enumerate()
        .map(|(i, n)| BenchRow {
            policies: *n,
            compile_ms: median(&compile[i]),
            verdicts_per_sec: median(&speed[i]),
            samples: speed[i].clone(),
            read_verdicts_per_sec: median(&read[i]),
            read_samples: read[i].clone(),
            compact_verdicts_per_sec: median(&compact[i]),
            compact_samples: compact[i].clone(),
            allowed_share: allowed_share[i],
        })
        .collect())
}
