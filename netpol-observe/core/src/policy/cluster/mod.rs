//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, network-policy-api v0.2.0): the
//! tiers the engine evaluates around NetworkPolicies. The typed API and its validation are
//! [`crate::rules::cluster`]'s, re-exported here.
//!
//! Semantics (the CRD's field documentation), per direction of a pod (the destination's
//! ingress, the source's egress):
//! 1. the **Admin** tier: the policies whose `subject` selects the pod and that have rules in
//!    this direction, by `priority` (lower first; equal priorities by name here, which the API
//!    leaves to the implementation), each policy's rules in order; the first matching rule
//!    decides: `Accept` allows and `Deny` denies (nothing further is looked at), `Pass` skips
//!    the rest of the tier;
//! 2. NetworkPolicies: when one isolates the pod in this direction, they decide;
//! 3. the **Baseline** tier, as the Admin tier, only for pods no NetworkPolicy isolates;
//! 4. else the pod is not isolated (allowed).
//!
//! A rule matches when one of its peers and one of its `protocols` (omitted: all) match.
//! Peers: `namespaces` and `pods` (never hostNetwork pods), `nodes` (the nodes' addresses, and
//! hostNetwork pods on them), `networks` (CIDRs, pod addresses included), `domainNames`
//! (egress, Accept rules only: `example.com` exactly, `*.example.com` one or more labels
//! before it, case-insensitive) against the names the client resolved to the destination
//! (the flow's `dst.dns_names`). A connection to a Service is judged at its backend, as for
//! NetworkPolicies. A pod's traffic to itself and to and from its own node stay always allowed,
//! hostNetwork pods outside policy scope. Verdicts name a decision by ClusterNetworkPolicy as
//! the policy `cnp/<name>` and the rule `cnp/<name>:egress[i]` (`:<rule name>` appended when
//! the rule has a name).

#[cfg(any(test, feature = "reference"))]
pub(crate) mod reference;
pub(crate) mod tiers;

pub use crate::rules::cluster::{
    API_VERSION, Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec,
    ClusterNetworkPolicyStatus, EgressPeer, EgressRule, GROUP, IngressPeer, IngressRule, KIND,
    NamespacedPod, PLURAL, Port, PortRange, ProtocolMatch, ProtocolPort, Subject, Tier, VERSION,
    types, validate,
};

#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
#[cfg(test)]
mod tests;
