//! Verdicts: per direction, what the policies say and why (the DESIGN's `"verdict"` object).

use serde::{Deserialize, Serialize};

use super::Names;
use crate::flow::FlowRecord;

/// What one direction (the destination's ingress or the source's egress) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SideResult {
    /// No policy isolates the pod in this direction (or there is no pod on this side).
    NotIsolated,
    /// Isolated, and allowed by at least one rule (or by an always-allowed reason).
    Allowed,
    /// Isolated, and no rule allows it.
    Denied,
}

/// Why a direction is decided without looking at rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A pod's traffic to itself is always allowed.
    #[serde(rename = "self")]
    SelfTraffic,
    /// Traffic between a pod and its own node is always allowed.
    OwnNode,
    /// The pod uses the host network: outside NetworkPolicy scope.
    HostNetwork,
    /// This side is not a pod (a node, a subnet, the world): no policy applies to it.
    NotAPod,
}

/// The verdict of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideVerdict {
    /// Not isolated, allowed or denied.
    pub result: SideResult,
    /// `allowed`: the policies (`ns/name`) with a rule allowing the flow; `denied`: the
    /// policies isolating the pod in this direction. Sorted. Names are shared: cloning a
    /// verdict copies no names.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub policies: Names,
    /// `allowed`: the rules that allow the flow, as `ns/name:ingress[i]` / `ns/name:egress[i]`.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub rules: Names,
    /// Set when the direction is decided without rules (self, own node, hostNetwork, not a pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl SideVerdict {
    /// No policy isolates this side.
    pub fn not_isolated() -> Self {
        SideVerdict {
            result: SideResult::NotIsolated,
            policies: Names::default(),
            rules: Names::default(),
            reason: None,
        }
    }

    /// Decided by an always-applicable reason.
    pub(crate) fn by_reason(result: SideResult, reason: Reason) -> Self {
        SideVerdict {
            result,
            policies: Names::default(),
            rules: Names::default(),
            reason: Some(reason),
        }
    }

    /// Whether this side lets the flow through.
    pub fn passes(&self) -> bool {
        self.result != SideResult::Denied
    }
}

impl From<(SideResult, Reason)> for SideVerdict {
    fn from((result, reason): (SideResult, Reason)) -> Self {
        SideVerdict::by_reason(result, reason)
    }
}

/// The verdict of a flow: allowed when neither the destination's ingress nor the source's
/// egress denies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the flow is allowed (both directions pass).
    pub allowed: bool,
    /// The destination pod's ingress.
    pub ingress: SideVerdict,
    /// The source pod's egress.
    pub egress: SideVerdict,
}

impl Verdict {
    /// Combines the two directions.
    pub fn new(ingress: SideVerdict, egress: SideVerdict) -> Self {
        Verdict {
            allowed: ingress.passes() && egress.passes(),
            ingress,
            egress,
        }
    }
}

/// One output line of `netpol-observe evaluate`: the attributed flow with its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluatedFlow {
    /// The flow, attributed.
    #[serde(flatten)]
    pub flow: FlowRecord,
    /// Its verdict.
    pub verdict: Verdict,
}
