//! The parts of `cilium.io/v2` CiliumNetworkPolicy that `recommend --format cilium` writes,
//! as typed structs (field names as in the CRD). Unknown fields are refused when reading, so a
//! round trip proves the output holds nothing else.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
use serde::{Deserialize, Serialize};

/// `apiVersion` of CiliumNetworkPolicy.
pub const API_VERSION: &str = "cilium.io/v2";
/// `kind` of CiliumNetworkPolicy.
pub const KIND: &str = "CiliumNetworkPolicy";
/// The label Cilium gives every endpoint with its pod's namespace (source `k8s`).
pub(crate) const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

/// A CiliumNetworkPolicy (namespaced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumNetworkPolicy {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy`.
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: ObjectMeta,
    /// The rule.
    pub spec: Spec,
}

/// `spec`: the endpoints it selects and what they may receive and send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// The endpoints (pods of the policy's namespace) the policy applies to.
    pub endpoint_selector: EndpointSelector,
    /// Allowed ingress; an empty rule (`{}`) allows nothing but puts the endpoints in default
    /// deny for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Allowed egress; an empty rule (`{}`) as for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// A label selector over endpoint labels (`k8s:`-prefixed keys name the source; keys without a
/// source match any). Without namespace label, a selector in a rule means the policy's own
/// namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Further requirements (never written by the recommender; read for completeness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<Requirement>>,
}

/// A `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// The values of `In`/`NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

impl From<&LabelSelectorRequirement> for Requirement {
    fn from(r: &LabelSelectorRequirement) -> Self {
        Requirement {
            key: r.key.clone(),
            operator: r.operator.clone(),
            values: r.values.clone(),
        }
    }
}

/// An ingress rule: its peers (any of the lists) on its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    /// Addresses outside the cluster.
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Entities (`host`, `remote-node`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// Ports; absent: every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
}

/// An egress rule: its peers on its ports. `toFQDNs` stands alone in its rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    /// Addresses outside the cluster.
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities (`kube-apiserver`, `host`, `remote-node`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    /// DNS names: the addresses the endpoint's lookups of these names returned.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Ports; absent: every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
}

/// An address block with exceptions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    /// The block.
    pub cidr: String,
    /// Blocks inside it that are not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// Cilium's entities (the ones the recommender writes, and the common others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// The local node (and its hostNetwork pods).
    Host,
    /// Every other node of the cluster (and their hostNetwork pods).
    RemoteNode,
    /// The Kubernetes API server, wherever it runs.
    KubeApiserver,
    /// Everything outside the cluster.
    World,
    /// Everything in the cluster.
    Cluster,
    /// Everything.
    All,
}

impl Entity {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::KubeApiserver => "kube-apiserver",
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::All => "all",
        }
    }
}

/// A DNS name or pattern (`toFQDNs`, and the DNS rules of a port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    /// A literal name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A pattern (`*` for any name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// Ports of a rule, with optional L7 rules on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// The ports (at most 40).
    pub ports: Vec<PortProtocol>,
    /// L7 rules (here only DNS: the lookups allowed through Cilium's DNS proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

/// A port (number or container port name) and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A number, or a container port name.
    pub port: String,
    /// `TCP`, `UDP`, `SCTP` (absent or `ANY`: any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// L7 rules of a port rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    /// DNS lookups allowed.
    pub dns: Vec<FqdnSelector>,
}
