//! The policy domain's errors: each names the policy (`ns/name`) and the field path.

/// A NetworkPolicy that is not valid `networking.k8s.io/v1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {policy}: field {field}: {problem}")]
pub struct PolicyError {
    /// The policy, as `namespace/name`.
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

impl SelectorError {
    /// Turns this into a [`PolicyError`] for `policy`, prefixing the field with `prefix`.
    pub fn in_policy(self, policy: &str, prefix: &str) -> PolicyError {
        PolicyError {
            policy: policy.to_owned(),
            field: format!("{prefix}.{}", self.field),
            problem: self.problem,
        }
    }
}
