//! The policy domain's errors: each names the policy (`ns/name`) and the field path.

/// A NetworkPolicy that is not valid `networking.k8s.io/v1` (or a ClusterNetworkPolicy that is
/// not valid `policy.networking.k8s.io/v1alpha2`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {policy}: field {field}: {problem}")]
pub struct PolicyError {
    /// The kind: [`PolicyError::NETWORK_POLICY`] or [`PolicyError::CLUSTER_NETWORK_POLICY`].
    pub kind: &'static str,
    /// The policy, as `namespace/name` (a ClusterNetworkPolicy: its name).
    pub policy: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// A label selector that is not valid (unknown operator, missing or extra values, bad key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {problem}")]
pub struct SelectorError {
    /// Field path inside the selector, e.g. `matchExpressions[1].operator`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl PolicyError {
    /// The kind of a NetworkPolicy error.
    pub(crate) const NETWORK_POLICY: &'static str = "NetworkPolicy";
    /// The kind of a ClusterNetworkPolicy error.
    pub(crate) const CLUSTER_NETWORK_POLICY: &'static str = "ClusterNetworkPolicy";
}

impl SelectorError {
    /// Turns this into a [`PolicyError`] for `policy`, prefixing the field with `prefix`.
    pub(crate) fn in_policy(self, policy: &str, prefix: &str) -> PolicyError {
        PolicyError {
            kind: PolicyError::NETWORK_POLICY,
            policy: policy.to_owned(),
            field: format!("{prefix}.{}", self.field),
            problem: self.problem,
        }
    }
}
