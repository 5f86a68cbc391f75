//! The flow record — the JSON-lines contract of `../shared/DESIGN.md` ("Flow record").
//!
//! As output every field the agent knows is filled; as input (`evaluate`, `verify`,
//! `recommend`) only `src.ip`, `dst.ip`, `dst.port` and `protocol` are required, and the
//! attribution is filled from the inventory.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::names::{self, NameError, NameKind};

/// Transport protocol of a flow, spelled as Kubernetes spells it (`TCP`, `UDP`, `SCTP`) plus
/// `ICMP` and `ICMPv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (IP protocol 17).
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP (IP protocol 132).
    #[serde(rename = "SCTP")]
    Sctp,
    /// ICMP for IPv4 (IP protocol 1).
    #[serde(rename = "ICMP")]
    Icmp,
    /// ICMP for IPv6 (next header 58).
    #[serde(rename = "ICMPv6")]
    Icmpv6,
}

impl Protocol {
    /// The name used in flow records, NetworkPolicies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        }
    }

    /// The IP protocol number (IPv4 `protocol` / IPv6 `next header`).
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
        }
    }

    /// The protocol with this IP protocol number, if it is one we track.
    pub fn from_ip_number(n: u8) -> Option<Self> {
        Some(match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            _ => return None,
        })
    }

    /// Whether flows of this protocol have ports (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a protocol name that is not one of `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected TCP, UDP, SCTP, ICMP or ICMPv6)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "TCP" | "tcp" => Protocol::Tcp,
            "UDP" | "udp" => Protocol::Udp,
            "SCTP" | "sctp" => Protocol::Sctp,
            "ICMP" | "icmp" => Protocol::Icmp,
            "ICMPv6" | "icmpv6" | "ICMPV6" => Protocol::Icmpv6,
            other => return Err(UnknownProtocol(other.to_owned())),
        })
    }
}

/// Lifecycle state of a flow as the datapath saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// The initiator sent but never got an answer (e.g. a black-holed address or a drop).
    Attempted,
    /// TCP handshake completed and no close seen yet.
    Established,
    /// TCP connection closed with FIN.
    Closed,
    /// TCP connection reset after being established.
    Reset,
    /// TCP SYN answered by RST (closed port), or ICMP unreachable.
    Refused,
    /// UDP/ICMP/SCTP flow with traffic in at least one direction that got an answer.
    Active,
}

impl FlowState {
    /// The name used in flow records.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Attempted => "attempted",
            FlowState::Established => "established",
            FlowState::Closed => "closed",
            FlowState::Reset => "reset",
            FlowState::Refused => "refused",
            FlowState::Active => "active",
        }
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The controller that owns a pod (after following ReplicaSet→Deployment and Job→CronJob).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadRef {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `ReplicaSet` or `Pod`.
    pub kind: String,
    /// The controller's name (the pod's own name for a bare pod).
    pub name: String,
}

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

/// One end of a flow: an address, a port and what the address belongs to.
///
/// Exactly one attribution family is normally filled: pod fields (`namespace`, `pod`,
/// `workload`, `labels`), `node`, or `subnet` (`<named subnet>`, `private` or `world`).
// `repr(C)`: the fields in declaration order, so what attribution reads of every record (the
// address, the port, the pod's namespace and name) is in its first 120 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(C)]
pub struct Endpoint {
    /// The address as seen on the wire at the observation point (a ClusterIP for `dst` when the
    /// flow was to a Service and was observed before DNAT).
    pub ip: IpAddr,
    /// Transport port; absent for ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The Service the flow was addressed to (destination only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Namespace of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Owning workload of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// The workload's stable selector labels (never `pod-template-hash` and the like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Node name when the address is a node's (or a hostNetwork pod's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Named subnet, `private` or `world` for peers outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// DNS names the flow's client resolved to this address (destination only), from the DNS
    /// answers the node saw, sorted. Never a metric label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

impl Endpoint {
    /// An endpoint with only an address and port, before attribution.
    pub fn bare(ip: IpAddr, port: Option<u16>) -> Self {
        Endpoint {
            ip,
            port,
            service: None,
            namespace: None,
            pod: None,
            workload: None,
            labels: None,
            node: None,
            subnet: None,
            dns_names: Vec::new(),
        }
    }

    /// The namespace and name of the pod this end names, if it names one.
    pub(crate) fn pod_name(&self) -> Option<(&str, &str)> {
        // The pod field is read only when there is a namespace: an unattributed record's
        // pod field sits on a cache line nothing else reads.
        let namespace = self.namespace.as_deref()?;
        Some((namespace, self.pod.as_deref()?))
    }

    /// Whether any attribution field is set.
    pub(crate) fn is_attributed(&self) -> bool {
        self.namespace.is_some() || self.node.is_some() || self.subnet.is_some()
    }
}

/// A name in a flow record that breaks the Kubernetes rules ([`FlowRecord::check_names`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}")]
pub struct FlowNameError {
    /// The field, e.g. `src.namespace` or `dst.labels["app"]`.
    pub field: String,
    /// What is wrong with the name.
    #[source]
    pub source: NameError,
}

impl Endpoint {
    /// Checks every name of this endpoint (`side` is `src` or `dst` in the error's field).
    fn check_names(&self, side: &str) -> Result<(), FlowNameError> {
        // The field's name is formatted only for an error: this runs on every record read.
        let fail = |field: &'static str| {
            move |source| FlowNameError {
                field: format!("{side}.{field}"),
                source,
            }
        };
        if let Some(ns) = &self.namespace {
            names::check(NameKind::Namespace, ns).map_err(fail("namespace"))?;
        }
        if let Some(pod) = &self.pod {
            names::check(NameKind::Object, pod).map_err(fail("pod"))?;
        }
        if let Some(w) = &self.workload {
            names::check(NameKind::Kind, &w.kind).map_err(fail("workload.kind"))?;
            names::check(NameKind::Object, &w.name).map_err(fail("workload.name"))?;
        }
        if let Some(labels) = &self.labels {
            names::check_labels(labels).map_err(|(key, source)| FlowNameError {
                field: format!("{side}.labels[{key:?}]"),
                source,
            })?;
        }
        if let Some(svc) = &self.service {
            names::check(NameKind::Namespace, &svc.namespace).map_err(fail("service.namespace"))?;
            names::check(NameKind::Service, &svc.name).map_err(fail("service.name"))?;
        }
        if let Some(node) = &self.node {
            names::check(NameKind::Object, node).map_err(fail("node"))?;
        }
        if let Some(subnet) = &self.subnet {
            names::check(NameKind::Subnet, subnet).map_err(fail("subnet"))?;
        }
        Ok(())
    }
}

/// A counter pair from the initiator's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Directional {
    /// Sent by `src` (the initiator).
    pub sent: u64,
    /// Received by `src` (sent by `dst`).
    pub received: u64,
}

/// Packets of this flow the kernel dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Drops {
    /// Number of dropped packets.
    pub count: u64,
    /// Kernel drop reason name (`enum skb_drop_reason` without the `SKB_DROP_REASON_` prefix)
    /// of the most frequent reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The NetworkPolicy (`ns/name`) that explains the drop, or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A flow the policies in force deny that was nevertheless delivered: proof that this node
/// does not enforce them (see `docs/metrics.md`, *Is the CNI enforcing?*).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unenforced {
    /// The isolating NetworkPolicies (`ns/name`, `,`-joined, sorted) of the denying side(s)
    /// this node should have enforced, or `unknown`.
    pub policy: String,
}

/// One flow (a connection for TCP/SCTP, a 5-tuple conversation for UDP/ICMP).
// `repr(C)`, as `Endpoint`: the protocol and both ends' addresses, ports and pod names (what
// attribution reads of every record) are in the first four of its cache lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(C)]
pub struct FlowRecord {
    /// Transport protocol.
    pub protocol: Protocol,
    /// The initiator (TCP: the SYN sender).
    pub src: Endpoint,
    /// The responder.
    pub dst: Endpoint,
    /// Lifecycle state; absent on input records that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<FlowState>,
    /// First packet seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    /// Last packet seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// Packets sent/received by the initiator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<Directional>,
    /// Bytes (IP length) sent/received by the initiator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Directional>,
    /// Drops attributed to this flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops: Option<Drops>,
    /// Set by the agent of `node` when the policies in force deny the flow and it was
    /// delivered all the same (TCP: handshake completed; other protocols: the responder
    /// answered), first seen at least the enforcement grace after the policy set in force
    /// changed, and a denying side is a pod of `node`. Omitted otherwise (so records without
    /// it read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unenforced: Option<Unenforced>,
    /// The node whose agent observed the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Whether the agent of `node` counted this flow in its metrics (`flows_total`, packets,
    /// bytes, verdict series). A flow between two nodes is seen by both agents and counted by
    /// one: the agent of the node running the initiating pod (`src`), or, when the initiator
    /// is not a pod of the cluster, the agent of the responding pod's node. `false` (written
    /// `"counted":false`) on the other node's record, which is still served; the field is
    /// omitted when true, so records without it (older files, input written by hand) are
    /// counted. The recommender counts evidence (`netpol-observe.io/flows`, left-out counts)
    /// from counted records only; every record contributes its rules.
    #[serde(default = "counted_default", skip_serializing_if = "is_counted")]
    pub counted: bool,
    /// How many connections this record stands for; absent: one (every record of an agent).
    /// A workload-level record made from Prometheus series (`recommend --prometheus`) carries
    /// the increase of `netpol_observe_flows_total` in the window, so the evidence counts
    /// (`netpol-observe.io/flows`) are real flow counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

fn counted_default() -> bool {
    true
}

fn is_counted(counted: &bool) -> bool {
    *counted
}

impl FlowRecord {
    /// When the flow was seen: its first sighting, else its last. The time its ends are
    /// attributed at (which pod held an address then) and its window and epoch are counted by.
    pub fn seen_at(&self) -> Option<Timestamp> {
        self.first_seen.or(self.last_seen)
    }

    /// Checks every name the record carries (namespaces, pods, workloads, labels, Services,
    /// nodes, subnets) against the Kubernetes rules ([`crate::names`]): attribution given in
    /// input is used as is, so a name the API server would reject (or one holding path syntax
    /// such as `../x`) must not reach a file name, a label or a policy.
    pub fn check_names(&self) -> Result<(), FlowNameError> {
        self.src.check_names("src")?;
        self.dst.check_names("dst")?;
        if let Some(node) = &self.node {
            names::check(NameKind::Object, node).map_err(|source| FlowNameError {
                field: "node".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// A minimal record: protocol, source and destination address and destination port.
    pub fn new(protocol: Protocol, src: IpAddr, dst: IpAddr, dst_port: Option<u16>) -> Self {
        FlowRecord {
            protocol,
            src: Endpoint::bare(src, None),
            dst: Endpoint::bare(dst, dst_port),
            state: None,
            first_seen: None,
            last_seen: None,
            packets: None,
            bytes: None,
            drops: None,
            unenforced: None,
            node: None,
            counted: true,
            connections: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_round_trips() {
        let line = r#"{"protocol":"TCP","src":{"ip":"10.244.1.5","port":51234,"namespace":"shop","pod":"web-7d9c-x2","workload":{"kind":"Deployment","name":"web"},"labels":{"app":"web"}},"dst":{"ip":"10.96.0.20","port":80,"service":{"namespace":"shop","name":"api"},"namespace":"shop","pod":"api-5f-k1","workload":{"kind":"Deployment","name":"api"},"labels":{"app":"api"}},"state":"established","first_seen":"2026-11-22T15:00:00Z","last_seen":"2026-11-22T15:00:03Z","packets":{"sent":12,"received":10},"bytes":{"sent":1840,"received":5120},"drops":{"count":0},"node":"node-1"}"#;
        let rec: FlowRecord = serde_json::from_str(line).unwrap();
        assert_eq!(rec.protocol, Protocol::Tcp);
        assert_eq!(rec.dst.service.as_ref().unwrap().name, "api");
        assert_eq!(rec.state, Some(FlowState::Established));
        assert_eq!(rec.packets.unwrap().received, 10);
        let again: FlowRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(rec, again);
    }

    #[test]
    fn names_in_records_are_checked() {
        let line = r#"{"protocol":"TCP","src":{"ip":"10.0.0.1","namespace":"shop","labels":{"app":"web"}},"dst":{"ip":"10.0.0.2","port":80,"namespace":"shop","pod":"api-1","workload":{"kind":"Deployment","name":"api"},"service":{"namespace":"shop","name":"api"}},"node":"node-1"}"#;
        let rec: FlowRecord = serde_json::from_str(line).unwrap();
        assert_eq!(rec.check_names(), Ok(()));
        let bad = [
            (
                r#""namespace":"shop","labels""#,
                r#""namespace":"../../../../var/x/escaped","labels""#,
                "src.namespace",
            ),
            (
                r#""app":"web""#,
                r#""-bad key":"web""#,
                r#"src.labels["-bad key"]"#,
            ),
            (
                r#""app":"web""#,
                r#""app":"Shop Space""#,
                r#"src.labels["app"]"#,
            ),
            (r#""pod":"api-1""#, r#""pod":"Bad_Name!""#, "dst.pod"),
            (
                r#""kind":"Deployment""#,
                r#""kind":"De ploy""#,
                "dst.workload.kind",
            ),
            (r#""name":"api"}}"#, r#""name":"a/b"}}"#, "dst.service.name"),
            (r#""node":"node-1""#, r#""node":"node 1""#, "node"),
        ];
        for (from, to, field) in bad {
            assert!(line.contains(from), "{from}");
            let rec: FlowRecord = serde_json::from_str(&line.replacen(from, to, 1)).unwrap();
            let err = rec.check_names().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            let text = crate::report::Chain(&err).to_string();
            assert!(text.starts_with(&format!("field {field}: ")), "{text}");
        }
    }

    /// `counted` is written only when false, and a record without it is counted: existing
    /// files and records read and write as before.
    #[test]
    fn counted_is_omitted_when_true() {
        let line = r#"{"protocol":"TCP","src":{"ip":"10.0.0.1","port":40000},"dst":{"ip":"10.0.0.2","port":80},"node":"node-b"}"#;
        let mut rec: FlowRecord = serde_json::from_str(line).unwrap();
        assert!(rec.counted);
        assert_eq!(serde_json::to_string(&rec).unwrap(), line);
        rec.counted = false;
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            text,
            line.replace(r#""node":"node-b"}"#, r#""node":"node-b","counted":false}"#)
        );
        let again: FlowRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(again, rec);
        let explicit: FlowRecord = serde_json::from_str(
            &line.replace(r#""node":"node-b"}"#, r#""node":"node-b","counted":true}"#),
        )
        .unwrap();
        assert!(explicit.counted);
    }

    /// `unenforced` is written only when set; records without it (every older one) read as
    /// before.
    #[test]
    fn unenforced_is_omitted_unless_set() {
        let line = r#"{"protocol":"TCP","src":{"ip":"10.0.0.1","port":40000},"dst":{"ip":"10.0.0.2","port":80},"state":"established","node":"node-a"}"#;
        let mut rec: FlowRecord = serde_json::from_str(line).unwrap();
        assert_eq!(rec.unenforced, None);
        assert_eq!(serde_json::to_string(&rec).unwrap(), line);
        rec.unenforced = Some(Unenforced {
            policy: "shop/api-np,shop/default-deny".into(),
        });
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            text,
            line.replace(
                r#""node":"node-a"}"#,
                r#""unenforced":{"policy":"shop/api-np,shop/default-deny"},"node":"node-a"}"#
            )
        );
        let again: FlowRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(again, rec);
    }

    #[test]
    fn minimal_input_record() {
        let rec: FlowRecord = serde_json::from_str(
            r#"{"protocol":"UDP","src":{"ip":"10.0.0.1"},"dst":{"ip":"10.0.0.2","port":53}}"#,
        )
        .unwrap();
        assert_eq!(rec.dst.port, Some(53));
        assert!(!rec.src.is_attributed());
    }
}
