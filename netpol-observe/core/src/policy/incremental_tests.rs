//! Pod changes applied incrementally ([`PodTable::update`], [`PolicyEngine::update_pods`],
//! [`Attributor::update_pods`]) give exactly the verdicts and attribution of a model built
//! from scratch from the final snapshot, over random sequences of adds, deletes, label and
//! address changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::{PodTable, PolicyEngine, synth};
use crate::{
    attribution::{Attributor, Subnets},
    inventory::{Inventory, PodDiff, build},
};

fn cluster(seed: u64) -> Inventory {
    let mut inv = synth::cluster(12, 1_000, seed);
    inv.network_policies = synth::policies(150, 12, seed);
    build::finish(&mut inv);
    inv
}

/// The model parts a snapshot is judged with.
struct Built {
    inventory: Arc<Inventory>,
    table: Arc<PodTable>,
    engine: PolicyEngine,
    attributor: Attributor,
}

fn from_scratch(inventory: Arc<Inventory>) -> Built {
    let table = PodTable::new(&inventory);
    let engine =
        PolicyEngine::compile_shared(&inventory.network_policies, &inventory, &table).unwrap();
    let attributor = Attributor::shared(Arc::clone(&inventory), &Subnets::default());
    Built {
        inventory,
        table,
        engine,
        attributor,
    }
}

/// The update of `old` to `new`: incremental when only pods changed and the engine can place
/// them, else from scratch. Returns whether the engine was updated incrementally.
fn update(old: &Built, new: Arc<Inventory>) -> (Built, bool) {
    let diff = PodDiff::between(&old.inventory, &new).expect("only pods changed");
    let table = old.table.update(&new, &diff);
    let attributor = old.attributor.update_pods(Arc::clone(&new), &diff);
    match old.engine.update_pods(&new, &diff, &table) {
        Some(engine) => (
            Built {
                inventory: new,
                table,
                engine,
                attributor,
            },
            true,
        ),
        None => {
            let mut b = from_scratch(new);
            b.attributor = attributor;
            (b, false)
        }
    }
}

/// The engine's pods are the attributor's, index for index (the inventory's order): a
/// connection made by attribution names the pods the engine compiled. Checked against the
/// engine's own table and against an attributor updated apart.
fn assert_same_pods(step: usize, built: &Built) {
    let engine_pods = built.engine.compiled_pod_count();
    assert_eq!(engine_pods, built.inventory.pods.len(), "step {step}");
    for attributor in [&built.attributor, built.table.attributor()] {
        assert_eq!(attributor.pod_count(), engine_pods, "step {step}");
        for i in 0..engine_pods {
            let (e, p) = (
                built.engine.compiled_pod(i).unwrap(),
                attributor.pod(i).unwrap(),
            );
            assert_eq!(
                (e.namespace, e.name, e.ips),
                (p.namespace.as_str(), p.name.as_str(), p.ips.as_slice()),
                "step {step}: pod {i}"
            );
        }
    }
}

fn assert_same(step: usize, a: &Built, b: &Built, seed: u64) {
    assert_same_pods(step, a);
    assert_same_pods(step, b);
    for flow in synth::flows(&b.inventory, 600, seed ^ step as u64) {
        assert_eq!(
            a.engine.evaluate_flow(&flow),
            b.engine.evaluate_flow(&flow),
            "step {step}: {flow:?}"
        );
        assert_eq!(
            a.engine.evaluate_flow_compact(&flow),
            b.engine.evaluate_flow_compact(&flow),
            "step {step}: {flow:?}"
        );
        // The connection attribution makes: the same whichever attributor makes it.
        let c = a.attributor.connection(&flow);
        assert_eq!(c, a.table.attributor().connection(&flow), "step {step}");
        assert_eq!(c, b.attributor.connection(&flow), "step {step}");
        assert_eq!(a.engine.evaluate(&c), b.engine.evaluate_flow(&flow));
        let (mut x, mut y) = (flow.clone(), flow.clone());
        a.attributor.attribute(&mut x);
        b.attributor.attribute(&mut y);
        assert_eq!(x, y, "step {step}: attribution of {flow:?}");
        // The attributed record is judged the same too (what the agent evaluates).
        assert_eq!(
            a.engine.evaluate_flow(&x),
            b.engine.evaluate_flow(&y),
            "step {step}: {x:?}"
        );
        assert_eq!(
            a.engine.policies_selecting(
                x.src.namespace.as_deref().unwrap_or(""),
                x.src.pod.as_deref().unwrap_or("")
            ),
            b.engine.policies_selecting(
                y.src.namespace.as_deref().unwrap_or(""),
                y.src.pod.as_deref().unwrap_or("")
            ),
            "step {step}"
        );
    }
}

#[test]
fn random_pod_changes_applied_incrementally_judge_as_a_model_built_from_scratch() {
    for seed in [1u64, 2, 3] {
        let mut rng = synth::Rng::new(seed);
        let mut inventory = cluster(seed);
        let mut model = from_scratch(Arc::new(inventory.clone()));
        let t0: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let (mut incremental, mut steps) = (0, 0);
        for step in 0..25 {
            // A batch of 1 to 8 changes, as the live inventory's debounce gathers them.
            for c in 0..1 + rng.below(8) {
                let now = t0
                    .checked_add(SignedDuration::from_secs((step * 10 + c) as i64))
                    .unwrap();
                synth::churn(&mut inventory, &mut rng, step * 100 + c, now);
            }
            let new = Arc::new(inventory.clone());
            let (updated, was_incremental) = update(&model, Arc::clone(&new));
            incremental += usize::from(was_incremental);
            steps += 1;
            assert_same(step, &updated, &from_scratch(new), seed);
            model = updated;
        }
        // Most batches are placed without compiling (new label sets are rare).
        assert!(incremental * 10 >= steps * 7, "{incremental} of {steps}");
    }
}

#[test]
fn a_diff_needs_a_full_build_when_anything_but_pods_changed() {
    let old = cluster(4);
    let mut new = old.clone();
    assert!(PodDiff::between(&old, &new).unwrap().is_empty());
    new.network_policies.pop();
    assert!(PodDiff::between(&old, &new).is_none());
    let mut new = old.clone();
    new.services.pop();
    assert!(PodDiff::between(&old, &new).is_none());
    let mut new = old.clone();
    new.pods.reverse();
    assert!(PodDiff::between(&old, &new).is_none());
}
