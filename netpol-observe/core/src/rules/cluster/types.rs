//! The `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy API (network-policy-api v0.2.0,
//! standard and experimental channels) as serde types. Field names and shapes follow the CRD;
//! fields these types do not know are reported by the loader as `--validate` says (the types
//! do not reject them themselves). [`super::validate`] checks what the CRD's schema and CEL
//! rules check.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// The API group and version.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// The kind.
pub const KIND: &str = "ClusterNetworkPolicy";
/// The API group.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The API version within the group.
pub const VERSION: &str = "v1alpha2";
/// The resource (what RBAC names).
pub const PLURAL: &str = "clusternetworkpolicies";

/// A cluster-wide network policy: a tier (Admin before NetworkPolicy, Baseline after), a
/// priority within it, the pods it applies to and ordered rules with an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    /// `policy.networking.k8s.io/v1alpha2`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// `ClusterNetworkPolicy`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Standard object metadata (cluster-scoped: no namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: ClusterNetworkPolicySpec,
    /// What the implementation reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ClusterNetworkPolicyStatus>,
}

fn api_version() -> String {
    API_VERSION.to_owned()
}

fn kind() -> String {
    KIND.to_owned()
}

impl ClusterNetworkPolicy {
    /// A policy named `name` with `spec`, apiVersion and kind set.
    pub fn new(name: impl Into<String>, spec: ClusterNetworkPolicySpec) -> Self {
        ClusterNetworkPolicy {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    /// The policy's name (`<unnamed>` when missing).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("<unnamed>")
    }

    /// How verdicts name the policy: `cnp/<name>` (as `kubectl get cnp/<name>` does).
    pub fn id(&self) -> String {
        format!("cnp/{}", self.name())
    }
}

/// `spec` of a ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// Admin (before NetworkPolicy) or Baseline (after it, only for pods no NetworkPolicy
    /// isolates in that direction).
    pub tier: Tier,
    /// 0-1000: lower numbers are evaluated first within the tier.
    pub priority: i32,
    /// The pods the policy applies to.
    pub subject: Subject,
    /// Ingress rules, in precedence order (the first matching rule decides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Egress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// The tier of a ClusterNetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    /// Evaluated before NetworkPolicies; cannot be overridden by them.
    Admin,
    /// Evaluated after NetworkPolicies, for pods no NetworkPolicy isolates.
    Baseline,
}

impl Tier {
    /// The name as in `spec.tier`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Allowed; no further ClusterNetworkPolicy or NetworkPolicy rule is looked at.
    Accept,
    /// Dropped; no further rule is looked at.
    Deny,
    /// The rest of this tier is skipped; the next tier decides.
    Pass,
}

impl Action {
    /// The name as in a rule's `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// `spec.subject`: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods selected by namespace and pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods selected by a namespace selector AND a pod selector (an empty selector selects all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// The namespaces (empty: all).
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pods in them (empty: all).
    pub pod_selector: LabelSelector,
}

/// One ingress rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// The rule's name (at most 100 characters), used in explanations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What a matching connection gets.
    pub action: Action,
    /// The sources (at least one; any of them matches).
    pub from: Vec<IngressPeer>,
    /// Destination ports (omitted: every port and protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// One egress rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// The rule's name (at most 100 characters), used in explanations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What a matching connection gets.
    pub action: Action,
    /// The destinations (at least one; any of them matches).
    pub to: Vec<EgressPeer>,
    /// Destination ports (omitted: every port and protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// A source of an ingress rule: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPeer {
    /// Every pod (not hostNetwork) of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods (not hostNetwork) by namespace and pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination of an egress rule: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPeer {
    /// Every pod (not hostNetwork) of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods (not hostNetwork) by namespace and pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes by label: their addresses (experimental channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (IPv4 or IPv6, at most 25); pod addresses are matched too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Domain names (`example.com`, `*.example.com`; at most 25), Accept rules only
    /// (experimental channel). Matched against the names the client resolved to the
    /// destination address (the flow's `dst.dns_names`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One entry of `protocols`: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMatch {
    /// TCP to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    /// UDP to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    /// SCTP to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    /// A named container port of the destination pod (its protocol is the port's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// The port part of a protocol match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    /// The destination port (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port number or a range: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// One port, 1-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    /// `start`..=`end`, `start` < `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// A contiguous range of ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// The first port.
    pub start: i32,
    /// The last port (greater than `start`).
    pub end: i32,
}

/// `status` of a ClusterNetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicyStatus {
    /// Conditions reported by the implementation.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl ProtocolMatch {
    /// TCP to one port.
    pub fn tcp(port: u16) -> Self {
        ProtocolMatch {
            tcp: Some(ProtocolPort::number(port)),
            ..Default::default()
        }
    }

    /// UDP to one port.
    pub fn udp(port: u16) -> Self {
        ProtocolMatch {
            udp: Some(ProtocolPort::number(port)),
            ..Default::default()
        }
    }
}

impl ProtocolPort {
    /// One destination port.
    pub fn number(port: u16) -> Self {
        ProtocolPort {
            destination_port: Some(Port {
                number: Some(i32::from(port)),
                range: None,
            }),
        }
    }
}

/// For the live inventory's watch (`Api::all`): a cluster-scoped resource
/// `clusternetworkpolicies` of `policy.networking.k8s.io/v1alpha2`.
impl kube_core::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        KIND.into()
    }

    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
