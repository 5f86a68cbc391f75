//! Label sets of the `netpol_observe_*` families and how a [`FlowRecord`] maps onto them.
//!
//! Peer convention (see `docs/metrics.md`): a pod peer is named by its `namespace`, its
//! workload `kind` (`Deployment`, `StatefulSet`, …, `Pod` for a bare pod) and the workload
//! name. Everything that is not a pod has an empty namespace and a kind saying what it is:
//! `Subnet` (workload = the named subnet, `private` or `world`), `Node` (workload = the node
//! name), `Unknown` (workload = `unknown`, an address the agent could not attribute). Kubernetes
//! kinds start with an upper-case letter and namespaces are never empty, so no pod peer can be
//! mistaken for one of these. The budget's overflow bucket is kind `Other` with every other
//! peer label `other`.

use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelKey, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use serde::{Deserialize, Serialize};

use crate::flow::{Endpoint, FlowRecord, Protocol};

/// The value of every collapsed peer label in the budget's overflow bucket.
pub(crate) const OTHER: &str = "other";

/// Kind of a peer collapsed into the overflow bucket.
pub(crate) const KIND_OTHER: &str = "Other";
/// Kind of a peer outside the cluster (workload = subnet name, `private` or `world`).
pub(crate) const KIND_SUBNET: &str = "Subnet";
/// Kind of a node address (or a hostNetwork pod).
pub(crate) const KIND_NODE: &str = "Node";
/// Kind of an address nothing could be attributed to.
pub(crate) const KIND_UNKNOWN: &str = "Unknown";
/// Kind of a pod without a known owner.
pub(crate) const KIND_POD: &str = "Pod";

/// A policy verdict, as the `verdict` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Policies isolate the pod and one of them allows the traffic.
    Allowed,
    /// Policies isolate the pod and none allows the traffic.
    Denied,
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// The verdict could not be computed (e.g. the inventory is not synced yet).
    Unknown,
}

impl Verdict {
    /// Every verdict, in label order.
    pub const ALL: [Verdict; 4] = [
        Verdict::Allowed,
        Verdict::Denied,
        Verdict::NotIsolated,
        Verdict::Unknown,
    ];

    /// The label value: `allowed`, `denied`, `not_isolated` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::NotIsolated => "not_isolated",
            Verdict::Unknown => "unknown",
        }
    }

    /// The verdict of a whole flow from its egress (source side) and ingress (destination
    /// side) verdicts: denied if either side denies, unknown if either is unknown, allowed if
    /// at least one side is isolated and allows, not isolated if neither side is isolated.
    pub fn overall(egress: Verdict, ingress: Verdict) -> Verdict {
        use Verdict::*;
        match (egress, ingress) {
            (Denied, _) | (_, Denied) => Denied,
            (Unknown, _) | (_, Unknown) => Unknown,
            (Allowed, _) | (_, Allowed) => Allowed,
            (NotIsolated, NotIsolated) => NotIsolated,
        }
    }
}

impl EncodeLabelValue for Verdict {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// How a flow outside the baseline is new (the `kind` label of
/// `netpol_observe_drift_flows_total`; the drift detector's classification, [`crate::drift`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The source never talked to this destination (a workload, node or unknown address).
    NewPair,
    /// The pair is known, this port or protocol is not.
    NewPort,
    /// The destination is outside the cluster (a subnet, `private`, `world`) and this source
    /// never talked to it.
    NewDestination,
}

impl DriftKind {
    /// The label value: `new_pair`, `new_port`, `new_destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::NewPair => "new_pair",
            DriftKind::NewPort => "new_port",
            DriftKind::NewDestination => "new_destination",
        }
    }
}

impl EncodeLabelValue for DriftKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// A policy direction, as the `direction` label spells it (`ingress`, `egress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic into the destination pod.
    Ingress,
    /// Traffic out of the source pod.
    Egress,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// One peer of a flow at workload level (plus the pod name when pod-level detail is on).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerLabels {
    /// Pod namespace; empty for a peer that is not a pod.
    pub namespace: String,
    /// Workload kind, or `Subnet`/`Node`/`Unknown`/`Other` (see the module docs).
    pub kind: String,
    /// Workload, subnet or node name.
    pub workload: String,
    /// Pod name, only with pod-level detail (`None` otherwise: the label is then absent).
    pub pod: Option<String>,
}

impl PeerLabels {
    /// The labels of one endpoint of an attributed flow record.
    pub(crate) fn from_endpoint(ep: &Endpoint, pod_level: bool) -> Self {
        let pod = if pod_level {
            Some(ep.pod.clone().unwrap_or_default())
        } else {
            None
        };
        if let Some(namespace) = &ep.namespace {
            let (kind, workload) = match (&ep.workload, &ep.pod) {
                (Some(w), _) => (w.kind.clone(), w.name.clone()),
                (None, Some(p)) => (KIND_POD.to_owned(), p.clone()),
                (None, None) => (KIND_POD.to_owned(), "unknown".to_owned()),
            };
            return PeerLabels {
                namespace: namespace.clone(),
                kind,
                workload,
                pod,
            };
        }
        let (kind, workload) = if let Some(node) = &ep.node {
            (KIND_NODE, node.clone())
        } else if let Some(subnet) = &ep.subnet {
            (KIND_SUBNET, subnet.clone())
        } else {
            (KIND_UNKNOWN, "unknown".to_owned())
        };
        PeerLabels {
            namespace: String::new(),
            kind: kind.to_owned(),
            workload,
            pod,
        }
    }

    /// The overflow bucket's peer.
    pub fn other(pod_level: bool) -> Self {
        PeerLabels {
            namespace: OTHER.to_owned(),
            kind: KIND_OTHER.to_owned(),
            workload: OTHER.to_owned(),
            pod: pod_level.then(|| OTHER.to_owned()),
        }
    }

    /// Whether this is the overflow bucket's peer.
    pub fn is_other(&self) -> bool {
        self.kind == KIND_OTHER
    }
}

/// The workload-level labels of a flow: `src_namespace`, `src_kind`, `src_workload`,
/// `dst_namespace`, `dst_kind`, `dst_workload`, `dst_port`, `protocol`, and with pod-level
/// detail `src_pod` and `dst_pod`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowLabels {
    /// The initiator (shared: the agent keeps one copy per workload, and every series of
    /// every family labelled with it holds a handle).
    pub src: Arc<PeerLabels>,
    /// The responder (shared likewise).
    pub dst: Arc<PeerLabels>,
    /// Destination port (decimal; empty for ICMP, `other` in the overflow bucket).
    pub dst_port: PortLabel,
    /// `TCP`, `UDP`, `SCTP`, `ICMP` or `ICMPv6`.
    pub protocol: Protocol,
}

impl FlowLabels {
    /// The labels of an attributed flow record.
    pub(crate) fn from_record(record: &FlowRecord, pod_level: bool) -> Self {
        FlowLabels {
            src: Arc::new(PeerLabels::from_endpoint(&record.src, pod_level)),
            dst: Arc::new(PeerLabels::from_endpoint(&record.dst, pod_level)),
            dst_port: PortLabel::from(record.dst.port),
            protocol: record.protocol,
        }
    }

    /// The overflow bucket for flows of this protocol: every peer label and the port `other`.
    pub fn other(protocol: Protocol, pod_level: bool) -> Self {
        FlowLabels {
            src: Arc::new(PeerLabels::other(pod_level)),
            dst: Arc::new(PeerLabels::other(pod_level)),
            dst_port: PortLabel::Other,
            protocol,
        }
    }
}

/// The `dst_port` label: a port number held as such (no string per label set), written as
/// the decimal number, empty for a flow without ports (ICMP), `other` in the overflow bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortLabel {
    /// No port (ICMP): the empty value.
    None,
    /// A destination port.
    Port(u16),
    /// The overflow bucket: `other`.
    Other,
}

impl From<Option<u16>> for PortLabel {
    fn from(port: Option<u16>) -> Self {
        port.map_or(PortLabel::None, PortLabel::Port)
    }
}

impl EncodeLabelValue for PortLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            PortLabel::None => EncodeLabelValue::encode(&"", encoder),
            PortLabel::Port(p) => EncodeLabelValue::encode(p, encoder),
            PortLabel::Other => EncodeLabelValue::encode(&OTHER, encoder),
        }
    }
}

/// Writes one `key="value"` label.
fn label(
    encoder: &mut LabelSetEncoder<'_>,
    key: &str,
    value: &impl EncodeLabelValue,
) -> Result<(), std::fmt::Error> {
    let mut label = encoder.encode_label();
    let mut key_encoder = label.encode_label_key()?;
    EncodeLabelKey::encode(&key, &mut key_encoder)?;
    let mut value_encoder = key_encoder.encode_label_value()?;
    EncodeLabelValue::encode(value, &mut value_encoder)?;
    value_encoder.finish()
}

impl EncodeLabelSet for FlowLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        label(encoder, "src_namespace", &self.src.namespace.as_str())?;
        label(encoder, "src_kind", &self.src.kind.as_str())?;
        label(encoder, "src_workload", &self.src.workload.as_str())?;
        if let Some(pod) = &self.src.pod {
            label(encoder, "src_pod", &pod.as_str())?;
        }
        label(encoder, "dst_namespace", &self.dst.namespace.as_str())?;
        label(encoder, "dst_kind", &self.dst.kind.as_str())?;
        label(encoder, "dst_workload", &self.dst.workload.as_str())?;
        if let Some(pod) = &self.dst.pod {
            label(encoder, "dst_pod", &pod.as_str())?;
        }
        label(encoder, "dst_port", &self.dst_port)?;
        label(encoder, "protocol", &self.protocol.as_str())
    }
}

/// Labels of `netpol_observe_flows_total` and `netpol_observe_staged_verdicts_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct FlowVerdictLabels {
    /// The flow's peers, port and protocol.
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// The flow's overall verdict ([`Verdict::overall`]).
    pub verdict: Verdict,
}

/// Labels of `netpol_observe_drops_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct DropLabels {
    /// The flow's peers, port and protocol.
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// Kernel drop reason name (`enum skb_drop_reason` without `SKB_DROP_REASON_`).
    pub reason: String,
    /// The isolating NetworkPolicy `ns/name`, `unknown` when none explains the drop, `other`
    /// in the overflow bucket.
    pub policy: String,
}

/// Labels of `netpol_observe_drift_flows_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct DriftLabels {
    /// The flow's peers, port and protocol.
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// How the flow's edge is outside the baseline: `new_pair`, `new_port`, `new_destination`
    /// (kept in the overflow bucket).
    pub kind: DriftKind,
}

/// Labels of `netpol_observe_unenforced_flows_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct UnenforcedLabels {
    /// The flow's peers, port and protocol.
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// The isolating NetworkPolicies (`ns/name`, `,`-joined) of the denying side(s) this node
    /// did not enforce, `unknown` when none is named, `other` in the overflow bucket.
    pub policy: String,
}

/// Whether this node enforces the NetworkPolicies in force, as the agent sees it from traffic
/// (`netpol_observe_policy_enforcement{state}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Enforcement {
    /// No evidence yet: no denied flow judged since the agent started.
    Unknown,
    /// Denied flows were seen, and every one was dropped (or never answered).
    Enforced,
    /// A denied flow was delivered (`netpol_observe_unenforced_flows_total`).
    NotEnforced,
}

impl Enforcement {
    /// Every state, in label order.
    pub const ALL: [Enforcement; 3] = [
        Enforcement::Unknown,
        Enforcement::Enforced,
        Enforcement::NotEnforced,
    ];

    /// The label value: `unknown`, `enforced` or `not_enforced`.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Unknown => "unknown",
            Enforcement::Enforced => "enforced",
            Enforcement::NotEnforced => "not_enforced",
        }
    }
}

impl EncodeLabelValue for Enforcement {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `netpol_observe_policy_enforcement`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct EnforcementLabels {
    /// `unknown`, `enforced` or `not_enforced`.
    pub state: Enforcement,
}

/// Labels of `netpol_observe_policy_verdicts_total`: the pod the verdict applies to (the
/// source for egress, the destination for ingress), as `namespace`, `kind`, `workload`,
/// `direction`, `verdict`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictLabels {
    /// The workload of the pod the verdict applies to (workload-level: its `pod` is not
    /// written; shared, as in [`FlowLabels`]).
    pub peer: Arc<PeerLabels>,
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// `allowed`, `denied`, `not_isolated` or `unknown`.
    pub verdict: Verdict,
}

impl EncodeLabelSet for VerdictLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        label(encoder, "namespace", &self.peer.namespace.as_str())?;
        label(encoder, "kind", &self.peer.kind.as_str())?;
        label(encoder, "workload", &self.peer.workload.as_str())?;
        label(encoder, "direction", &self.direction)?;
        label(encoder, "verdict", &self.verdict)
    }
}

/// Labels of `netpol_observe_unprotected_workloads`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct UnprotectedLabels {
    /// Namespace of the workloads.
    pub namespace: String,
    /// The direction no policy isolates.
    pub direction: Direction,
}

/// A single free-form label (`error`, `reason`, `resource`, `metric`), used by the health
/// families whose values are bounded by the agent itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Kernel-side error counter name.
    pub error: String,
}

/// Labels of `netpol_observe_flow_evictions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct EvictionLabels {
    /// Why the flow left the table (`idle`, `closed`, `lru`, …).
    pub reason: String,
}

/// Labels of `netpol_observe_inventory_synced`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The watched resource (`pods`, `networkpolicies`, …).
    pub resource: String,
}

/// Labels of `netpol_observe_series_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct MetricLabels {
    /// The family whose label set was collapsed into `other` (full sample name).
    pub metric: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::WorkloadRef;

    fn pod(ns: &str, kind: &str, name: &str, pod: &str) -> Endpoint {
        let mut ep = Endpoint::bare("10.244.0.5".parse().unwrap(), None);
        ep.namespace = Some(ns.into());
        ep.pod = Some(pod.into());
        ep.workload = Some(WorkloadRef {
            kind: kind.into(),
            name: name.into(),
        });
        ep
    }

    #[test]
    fn peers_follow_the_convention() {
        let p = PeerLabels::from_endpoint(&pod("shop", "Deployment", "web", "web-1"), false);
        assert_eq!(
            (p.namespace.as_str(), p.kind.as_str(), p.workload.as_str()),
            ("shop", "Deployment", "web")
        );
        assert_eq!(p.pod, None);
        let p = PeerLabels::from_endpoint(&pod("shop", "Deployment", "web", "web-1"), true);
        assert_eq!(p.pod.as_deref(), Some("web-1"));

        let mut ext = Endpoint::bare("10.0.2.4".parse().unwrap(), Some(5432));
        ext.subnet = Some("db-subnet".into());
        let p = PeerLabels::from_endpoint(&ext, false);
        assert_eq!(
            (p.namespace.as_str(), p.kind.as_str(), p.workload.as_str()),
            ("", "Subnet", "db-subnet")
        );

        let mut node = Endpoint::bare("192.168.1.4".parse().unwrap(), None);
        node.node = Some("node-1".into());
        let p = PeerLabels::from_endpoint(&node, false);
        assert_eq!((p.kind.as_str(), p.workload.as_str()), ("Node", "node-1"));

        let bare = Endpoint::bare("1.2.3.4".parse().unwrap(), None);
        let p = PeerLabels::from_endpoint(&bare, false);
        assert_eq!(
            (p.kind.as_str(), p.workload.as_str()),
            ("Unknown", "unknown")
        );
    }

    #[test]
    fn overall_verdict() {
        use Verdict::*;
        assert_eq!(Verdict::overall(NotIsolated, NotIsolated), NotIsolated);
        assert_eq!(Verdict::overall(Allowed, NotIsolated), Allowed);
        assert_eq!(Verdict::overall(NotIsolated, Denied), Denied);
        assert_eq!(Verdict::overall(Allowed, Denied), Denied);
        assert_eq!(Verdict::overall(Unknown, Allowed), Unknown);
        assert_eq!(Verdict::overall(Unknown, Denied), Denied);
    }
}
