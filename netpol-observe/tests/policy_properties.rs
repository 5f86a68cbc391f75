//! Properties of the policy engine (proptest over synthetic clusters, policies and flows) and
//! its agreement with the literal reference evaluator on 100k random flows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicySpec},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use netpol_observe_core::policy::{
    PolicyEngine, SideResult, SideVerdict,
    reference::Reference,
    synth::{self, Rng},
};
use proptest::prelude::*;

#[test]
fn engine_agrees_with_the_reference_on_100k_random_flows() {
    let inv = synth::cluster(20, 400, 7);
    let pols = synth::policies(150, 20, 7);
    let flows = synth::flows(&inv, 100_000, 7);
    let engine = PolicyEngine::compile(&pols, &inv).unwrap();
    let reference = Reference::new(&inv, &pols).unwrap();
    let (mut allowed, mut denied_ingress, mut denied_egress, mut reasons) = (0, 0, 0, 0);
    for flow in &flows {
        let v = engine.evaluate_flow(flow);
        assert_eq!(v, reference.evaluate(flow), "disagreement on {flow:?}");
        let c = engine.evaluate_flow_compact(flow);
        assert_eq!(
            (c.allowed, c.ingress.result, c.egress.result),
            (v.allowed, v.ingress.result, v.egress.result)
        );
        assert_eq!(
            (c.ingress.reason, c.egress.reason),
            (v.ingress.reason, v.egress.reason)
        );
        allowed += usize::from(v.allowed);
        denied_ingress += usize::from(v.ingress.result == SideResult::Denied);
        denied_egress += usize::from(v.egress.result == SideResult::Denied);
        reasons += usize::from(v.ingress.reason.is_some());
    }
    // The sample exercises every outcome, not just one.
    assert!(allowed > 10_000 && allowed < 90_000, "allowed {allowed}");
    assert!(denied_ingress > 5_000, "denied ingress {denied_ingress}");
    assert!(denied_egress > 1_000, "denied egress {denied_egress}");
    assert!(reasons > 1_000, "decided by a reason {reasons}");
}

fn default_deny(ns: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..Default::default()
        }),
    }
}

fn still_passes(before: &SideVerdict, after: &SideVerdict) -> bool {
    before.result != SideResult::Allowed || after.result == SideResult::Allowed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Adding a policy never denies a direction some selecting policy already allowed.
    #[test]
    fn adding_a_policy_never_denies_what_a_selecting_policy_allowed(seed in any::<u64>(), n in 1usize..40) {
        let inv = synth::cluster(6, 90, seed);
        let mut pols = synth::policies(n, 6, seed);
        let flows = synth::flows(&inv, 400, seed);
        let before = PolicyEngine::compile(&pols, &inv).unwrap();
        let mut extra = synth::policies(3, 6, seed.wrapping_add(1));
        for (i, p) in extra.iter_mut().enumerate() {
            p.metadata.name = Some(format!("extra-{i}"));
        }
        pols.extend(extra);
        let after = PolicyEngine::compile(&pols, &inv).unwrap();
        for f in &flows {
            let (b, a) = (before.evaluate_flow(f), after.evaluate_flow(f));
            prop_assert!(still_passes(&b.ingress, &a.ingress), "{f:?}\n{b:?}\n{a:?}");
            prop_assert!(still_passes(&b.egress, &a.egress), "{f:?}\n{b:?}\n{a:?}");
            // The policies allowing before still allow after.
            for side in [(&b.ingress, &a.ingress), (&b.egress, &a.egress)] {
                if side.0.result == SideResult::Allowed {
                    for p in &side.0.policies {
                        prop_assert!(side.1.policies.contains(p));
                    }
                }
            }
        }
    }

    /// A default-deny policy never allows anything: alone it denies every pod-to-pod flow into
    /// (and out of) its namespace except the always-allowed cases, and it is never named as
    /// allowing.
    #[test]
    fn default_deny_never_allows(seed in any::<u64>(), n in 0usize..30) {
        let inv = synth::cluster(6, 90, seed);
        let flows = synth::flows(&inv, 400, seed);
        let alone = PolicyEngine::compile(&[default_deny("ns-1", "zz-deny")], &inv).unwrap();
        let mut pols = synth::policies(n, 6, seed);
        pols.push(default_deny("ns-1", "zz-deny"));
        let mixed = PolicyEngine::compile(&pols, &inv).unwrap();
        for f in &flows {
            let v = alone.evaluate_flow(f);
            for side in [&v.ingress, &v.egress] {
                prop_assert!(side.result != SideResult::Allowed || side.reason.is_some(), "{f:?} {v:?}");
            }
            let v = mixed.evaluate_flow(f);
            for side in [&v.ingress, &v.egress] {
                if side.result == SideResult::Allowed {
                    prop_assert!(!side.policies.iter().any(|p| p == "ns-1/zz-deny"), "{f:?} {v:?}");
                }
            }
        }
    }

    /// The order of the policies never changes a verdict.
    #[test]
    fn evaluation_order_does_not_matter(seed in any::<u64>(), n in 1usize..50) {
        let inv = synth::cluster(6, 90, seed);
        let pols = synth::policies(n, 6, seed);
        let mut shuffled = pols.clone();
        let mut rng = Rng::new(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        let a = PolicyEngine::compile(&pols, &inv).unwrap();
        let b = PolicyEngine::compile(&shuffled, &inv).unwrap();
        for f in &synth::flows(&inv, 400, seed) {
            prop_assert_eq!(a.evaluate_flow(f), b.evaluate_flow(f));
        }
    }
}
