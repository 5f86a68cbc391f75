//! The NetworkPolicy engine (pure): the whole `networking.k8s.io/v1` semantics, compiled once
//! ([`PolicyEngine::compile`]) and evaluated many times ([`PolicyEngine::evaluate`]), every
//! verdict explained ([`Verdict`]: which policies isolate, which rules allow). The engine
//! evaluates a [`Connection`] between peers that attribution resolved, once
//! ([`crate::attribution::Attributor::connection`]).
//!
//! Semantics (Kubernetes API documentation):
//! - a policy selects pods of its namespace by `podSelector` (`{}` = all); policies are
//!   additive; a pod selected by a policy with the Ingress (Egress) type is isolated for
//!   ingress (egress) and then only what some rule of some selecting policy allows passes;
//! - `policyTypes` omitted: Ingress, plus Egress when the policy has egress rules;
//! - rule `from`/`to` omitted or empty = every peer; `ports` omitted or empty = every port;
//!   `ingress: []` (or omitted) with the Ingress type allows nothing, `ingress: [{}]` allows all;
//! - a peer with `namespaceSelector` and `podSelector` is an AND; separate peers are an OR;
//!   `podSelector` alone means the policy's namespace; `ipBlock` (with `except`, IPv4 or IPv6)
//!   matches the peer's address (pod addresses included);
//! - port `protocol` defaults to TCP; named ports resolve against the destination pod's
//!   container ports with the same protocol; `endPort` makes a range;
//! - a connection needs the destination's ingress and the source's egress; a pod's traffic to
//!   itself and traffic between a pod and its own node are always allowed; hostNetwork pods are
//!   outside policy scope (never selected; as peers they are their node's address).
//!
//! ClusterNetworkPolicies ([`cluster`]) add an Admin tier before these rules and a Baseline
//! tier after them ([`PolicyEngine::compile_with_cluster`]).
//!
//! [`PolicyEngine::plan`] is a read-only view of what the engine compiled (per pod and
//! direction: isolation, rules with their peers and ports resolved), from which an enforcer
//! (the lab's nftables) writes its rules: one semantics.
//!
//! `reference` (tests only: the core's own and, with the `reference` feature, other crates'
//! tests) is a slow literal evaluator kept to check the engine.

pub mod cluster;
mod engine;
#[cfg(test)]
mod incremental_tests;
mod names;
pub mod plan;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
mod regions;
#[cfg(any(test, feature = "testing"))]
pub mod synth;
mod table;
mod verdict;

pub use crate::attribution::{Connection, End, PeerId};
pub use crate::rules::{
    PolicyError, SelectorError, label_selector_matches, policy_id, policy_types, validate,
};
pub use engine::{CompactSide, CompactVerdict, PodPolicies, PodTable, PolicyEngine};
pub use names::{Name, Names};
pub use plan::Plan;
pub use verdict::{EvaluatedFlow, Reason, SideResult, SideVerdict, Verdict};
