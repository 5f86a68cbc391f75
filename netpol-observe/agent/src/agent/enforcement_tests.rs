//! The enforcement check ("is my CNI enforcing?", [`AgentState::check_enforcement`]): agents
//! over an inventory with a deny policy are fed what their datapath and drop tracepoint report;
//! a flow the policies deny that was delivered, first seen after the grace, is counted once in
//! `netpol_observe_unenforced_flows_total` with the policy, marked on its record and turns the
//! node's state to `not_enforced`; denied flows that were dropped or never answered turn it
//! `enforced`; nothing else counts.

use std::{collections::BTreeMap, sync::Arc};

use jiff::{SignedDuration, Timestamp};

use super::config::DurationSetting;

use super::test_kit::{api_service, ip, node, pod, shop_namespace};
use super::*;
use crate::flow::{Directional, FlowState, Protocol};
use crate::{
    attribution::Subnets,
    datapath::{DropSample, FlowUpdate},
    flow::{Endpoint, FlowRecord},
    inventory::{Inventory, NetworkPolicy},
};

/// web and api on node-a; db and client on node-b.
const WEB: [u8; 4] = [10, 1, 0, 10];
const API: [u8; 4] = [10, 1, 0, 20];
const DB: [u8; 4] = [10, 2, 0, 30];
const CLIENT: [u8; 4] = [10, 2, 0, 40];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 20];
const INTERNET: [u8; 4] = [203, 0, 113, 7];

fn policy(value: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(value).unwrap()
}

/// `shop/api-np`: api admits only web, on TCP 9000 (9100, other clients, UDP: denied).
/// `shop/db-egress`: db may send nothing.
fn policies() -> Vec<NetworkPolicy> {
    vec![
        policy(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": "shop", "name": "api-np"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "api"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"protocol": "TCP", "port": 9000}]
                }]
            }
        })),
        policy(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": "shop", "name": "db-egress"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Egress"]
            }
        })),
    ]
}

fn inventory(policies: Vec<NetworkPolicy>) -> Arc<Inventory> {
    Arc::new(Inventory {
        namespaces: shop_namespace(),
        pods: vec![
            pod("api-0", "Deployment", "api", API, "node-a"),
            pod("client-0", "Deployment", "client", CLIENT, "node-b"),
            pod("db-0", "Deployment", "db", DB, "node-b"),
            pod("web-0", "Deployment", "web", WEB, "node-a"),
        ],
        services: vec![api_service(CLUSTER_IP, 9100)],
        nodes: vec![node("node-a", [10, 0, 0, 1]), node("node-b", [10, 0, 0, 2])],
        network_policies: policies,
        ..Inventory::default()
    })
}

/// When the agents' models came in use.
fn t0() -> Timestamp {
    "2026-05-04T10:00:00Z".parse().unwrap()
}

/// `t0` + `secs`.
fn at(secs: i64) -> Timestamp {
    t0().checked_add(SignedDuration::from_secs(secs)).unwrap()
}

/// An agent of `node` (default grace, 10 s) whose model is in use from `t0`.
fn agent(node: &str) -> AgentState {
    let state = AgentState::new(AgentConfig {
        node_name: Some(node.to_owned()),
        ..AgentConfig::default()
    });
    let model = Model::new(inventory(policies()), &Subnets::default(), None).unwrap();
    state.set_model_at(Arc::new(model), t0());
    state
}

/// One datapath update of a flow first seen at `first` (seconds after `t0`).
#[derive(Clone, Copy)]
struct Update {
    protocol: Protocol,
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    first: i64,
    state: FlowState,
    packets: (u64, u64),
    new: bool,
    ended: bool,
    opened: bool,
}

impl Update {
    fn tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), first: i64) -> Self {
        Update {
            protocol: Protocol::Tcp,
            src,
            dst,
            first,
            state: FlowState::Attempted,
            packets: (1, 0),
            new: true,
            ended: false,
            opened: false,
        }
    }

    /// The next update of the same flow, in `state` with these cumulative packets.
    fn then(&self, state: FlowState, packets: (u64, u64)) -> Self {
        Update {
            state,
            packets,
            new: false,
            opened: true,
            ..*self
        }
    }

    fn ended(self) -> Self {
        Update {
            ended: true,
            ..self
        }
    }

    fn send(&self, state: &AgentState) {
        let mut r = FlowRecord::new(self.protocol, ip(self.src.0), ip(self.dst.0), None);
        let ports = self.protocol.has_ports();
        r.src = Endpoint::bare(ip(self.src.0), ports.then_some(self.src.1));
        r.dst = Endpoint::bare(ip(self.dst.0), ports.then_some(self.dst.1));
        r.first_seen = Some(at(self.first));
        r.last_seen = Some(at(self.first + 1));
        r.state = Some(self.state);
        let (sent, received) = self.packets;
        r.packets = Some(Directional { sent, received });
        r.bytes = Some(Directional {
            sent: sent * 60,
            received: received * 60,
        });
        state.on_update(&FlowUpdate {
            record: r,
            new: self.new,
            delta_packets: Directional::default(),
            delta_bytes: Directional::default(),
            ended: self.ended,
            opened: self.opened,
        });
    }
}

/// A TCP connection as the datapath reports it: the SYN (new, attempted), then the handshake
/// completed, then its end (FIN).
fn connection(state: &AgentState, src: ([u8; 4], u16), dst: ([u8; 4], u16), first: i64) {
    let syn = Update::tcp(src, dst, first);
    syn.send(state);
    syn.then(FlowState::Established, (3, 2)).send(state);
    syn.then(FlowState::Closed, (6, 5)).ended().send(state);
}

/// `netpol_observe_unenforced_flows_total` samples: (src workload, dst workload, dst port,
/// protocol, policy) → value.
fn unenforced(state: &AgentState) -> BTreeMap<[String; 5], u64> {
    let text = state.metrics().encode_text().unwrap();
    let prefix = "netpol_observe_unenforced_flows_total{";
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let labels: BTreeMap<&str, &str> = labels
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k, v.trim_end_matches('"'))
                })
                .collect();
            let key = [
                "src_workload",
                "dst_workload",
                "dst_port",
                "protocol",
                "policy",
            ]
            .map(|k| labels[k].to_owned());
            (key, value.parse::<f64>().unwrap() as u64)
        })
        .collect()
}

fn series(entries: &[(&str, &str, &str, &str, &str, u64)]) -> BTreeMap<[String; 5], u64> {
    entries
        .iter()
        .map(|(s, d, p, proto, policy, n)| ([*s, *d, *p, *proto, *policy].map(str::to_owned), *n))
        .collect()
}

/// The `netpol_observe_policy_enforcement` state at 1 (and that exactly one is).
fn state_of(state: &AgentState) -> String {
    let text = state.metrics().encode_text().unwrap();
    let ones: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("netpol_observe_policy_enforcement{state=\""))
        .filter_map(|l| l.strip_suffix("\"} 1"))
        .map(str::to_owned)
        .collect();
    let all = text
        .lines()
        .filter(|l| l.starts_with("netpol_observe_policy_enforcement{"))
        .count();
    assert_eq!((ones.len(), all), (1, 3), "{text}");
    assert_eq!(ones[0], state.enforcement().as_str());
    ones[0].clone()
}

/// The `unenforced` field of the served record of the flow from `src_port`.
fn served(state: &AgentState, src_port: u16) -> (Option<String>, String) {
    let flows = state.flows(&FlowQuery::default());
    let o = flows
        .iter()
        .find(|o| o.flow.src.port == Some(src_port))
        .unwrap_or_else(|| panic!("no flow from port {src_port}"));
    let json = serde_json::to_string(o).unwrap();
    (o.flow.unenforced.as_ref().map(|u| u.policy.clone()), json)
}

/// A denied TCP connection (client → api, only web is admitted) that completes its handshake
/// after the grace: counted once (at the update that shows it established, not again when it
/// closes), with the policy; its record says so on /api/v1/flows; the node is `not_enforced`.
#[test]
fn a_denied_connection_delivered_after_the_grace_is_counted_once() {
    let a = agent("node-a");
    assert_eq!(state_of(&a), "unknown");
    let syn = Update::tcp((WEB, 40001), (API, 9100), 20);
    syn.send(&a);
    assert_eq!(
        unenforced(&a),
        BTreeMap::new(),
        "a SYN alone proves nothing"
    );
    syn.then(FlowState::Established, (3, 2)).send(&a);
    let want = series(&[("web", "api", "9100", "TCP", "shop/api-np", 1)]);
    assert_eq!(unenforced(&a), want);
    assert_eq!(state_of(&a), "not_enforced");
    syn.then(FlowState::Closed, (6, 5)).ended().send(&a);
    assert_eq!(unenforced(&a), want, "counted once");
    let (policy, json) = served(&a, 40001);
    assert_eq!(policy.as_deref(), Some("shop/api-np"));
    assert!(
        json.contains(r#""unenforced":{"policy":"shop/api-np"}"#),
        "{json}"
    );
    // The served record parses back as a flow record with the field.
    let back: FlowRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back.unenforced.unwrap().policy, "shop/api-np");
    // An allowed connection of the same pair is never counted, nor marked.
    connection(&a, (WEB, 40002), (API, 9000), 30);
    assert_eq!(unenforced(&a), want);
    let (policy, json) = served(&a, 40002);
    assert_eq!(policy, None);
    assert!(!json.contains("unenforced"), "{json}");
}

/// The timing rule: the same denied connection first seen inside the grace (or before the
/// policy set came in use) is not judged, however it ends; the state stays `unknown`. With a
/// grace of 0 s it counts from the moment the set is in use.
#[test]
fn a_flow_first_seen_inside_the_grace_is_not_counted() {
    let a = agent("node-a");
    connection(&a, (WEB, 40001), (API, 9100), 5);
    connection(&a, (WEB, 40002), (API, 9100), -60);
    connection(&a, (WEB, 40003), (API, 9100), 9);
    assert_eq!(unenforced(&a), BTreeMap::new());
    assert_eq!(state_of(&a), "unknown");
    assert_eq!(served(&a, 40001).0, None);
    connection(&a, (WEB, 40004), (API, 9100), 10);
    assert_eq!(
        unenforced(&a),
        series(&[("web", "api", "9100", "TCP", "shop/api-np", 1)]),
        "first seen exactly at the end of the grace"
    );

    let zero = AgentState::new(AgentConfig {
        node_name: Some("node-a".to_owned()),
        enforcement_grace: DurationSetting::ZERO,
        ..AgentConfig::default()
    });
    let model = Model::new(inventory(policies()), &Subnets::default(), None).unwrap();
    zero.set_model_at(Arc::new(model), t0());
    connection(&zero, (WEB, 40001), (API, 9100), -1);
    connection(&zero, (WEB, 40002), (API, 9100), 0);
    assert_eq!(
        unenforced(&zero),
        series(&[("web", "api", "9100", "TCP", "shop/api-np", 1)])
    );
}

/// A new model with the same policies (a pod came, a label changed) keeps the time the set came
/// in use; a model whose policies differ restarts the grace.
#[test]
fn only_a_change_of_the_policies_restarts_the_grace() {
    let a = agent("node-a");
    // Same policies, another pod: the set is in use since t0 still.
    let mut inv = (*inventory(policies())).clone();
    inv.pods
        .push(pod("web-1", "Deployment", "web", [10, 1, 0, 11], "node-a"));
    let same = Model::new(Arc::new(inv.clone()), &Subnets::default(), None).unwrap();
    a.set_model_at(Arc::new(same), at(100));
    connection(&a, (WEB, 40001), (API, 9100), 20);
    assert_eq!(unenforced(&a).values().sum::<u64>(), 1);
    // The same policies in another order and with another resourceVersion: still the same set.
    let mut reordered = policies();
    reordered.reverse();
    reordered[0].metadata.resource_version = Some("42".to_owned());
    inv.network_policies = reordered;
    let same = Model::new(Arc::new(inv.clone()), &Subnets::default(), None).unwrap();
    a.set_model_at(Arc::new(same), at(200));
    connection(&a, (WEB, 40002), (API, 9100), 150);
    assert_eq!(unenforced(&a).values().sum::<u64>(), 2);
    // A changed spec (api admits 9200 too): in use from t0 + 300, judged from t0 + 310.
    let mut changed = policies();
    changed[0].spec.as_mut().unwrap().ingress.as_mut().unwrap()[0]
        .ports
        .as_mut()
        .unwrap()
        .push(
            serde_json::from_value(serde_json::json!({"protocol": "TCP", "port": 9200})).unwrap(),
        );
    inv.network_policies = changed;
    let other = Model::new(Arc::new(inv), &Subnets::default(), None).unwrap();
    a.set_model_at(Arc::new(other), at(300));
    connection(&a, (WEB, 40003), (API, 9100), 305);
    assert_eq!(
        unenforced(&a).values().sum::<u64>(),
        2,
        "inside the new grace"
    );
    connection(&a, (WEB, 40004), (API, 9100), 310);
    assert_eq!(unenforced(&a).values().sum::<u64>(), 3);
}

/// Denied flows that never got through: a TCP connection that ended `attempted` (no answer)
/// turns the state `enforced`; one with drops joined counts as drops only. Neither is counted
/// unenforced. A later delivered one still turns the state `not_enforced`.
#[test]
fn denied_flows_dropped_or_unanswered_mean_enforced() {
    let a = agent("node-a");
    let syn = Update::tcp((WEB, 40001), (API, 9100), 20);
    syn.send(&a);
    assert_eq!(state_of(&a), "unknown", "not ended yet");
    syn.then(FlowState::Attempted, (3, 0)).ended().send(&a);
    assert_eq!(state_of(&a), "enforced");
    assert_eq!(unenforced(&a), BTreeMap::new());

    // Dropped by this node's kernel (the drop joined), even if replies show up afterwards.
    let b = agent("node-a");
    let syn = Update::tcp((WEB, 40002), (API, 9100), 20);
    syn.send(&b);
    b.on_drop(&DropSample {
        protocol: Protocol::Tcp,
        src: ip(WEB),
        src_port: 40002,
        dst: ip(API),
        dst_port: 9100,
        reason: "NETFILTER_DROP".to_owned(),
        packets: 2,
    });
    assert_eq!(state_of(&b), "enforced");
    syn.then(FlowState::Established, (3, 1)).send(&b);
    assert_eq!(unenforced(&b), BTreeMap::new(), "drops only");
    // A drop of a closed port is not enforcement.
    let c = agent("node-a");
    let syn = Update::tcp((WEB, 40003), (API, 9100), 20);
    syn.send(&c);
    c.on_drop(&DropSample {
        protocol: Protocol::Tcp,
        src: ip(WEB),
        src_port: 40003,
        dst: ip(API),
        dst_port: 9100,
        reason: "NO_SOCKET".to_owned(),
        packets: 1,
    });
    assert_eq!(state_of(&c), "unknown");

    // Not enforced wins, for the agent's lifetime.
    connection(&a, (WEB, 40004), (API, 9100), 30);
    assert_eq!(state_of(&a), "not_enforced");
    let syn = Update::tcp((WEB, 40005), (API, 9100), 40);
    syn.send(&a);
    syn.then(FlowState::Attempted, (3, 0)).ended().send(&a);
    assert_eq!(state_of(&a), "not_enforced");
}

/// TCP answered by a RST (`refused`: a rejecting CNI looks like a closed port), reset, or
/// picked up mid-stream (the datapath never saw its SYN: opened before the agent watched,
/// perhaps before the policy, and kept by conntrack), and an allowed flow: none is counted.
#[test]
fn refused_reset_mid_stream_and_allowed_flows_are_not_counted() {
    let a = agent("node-a");
    let syn = Update::tcp((WEB, 40001), (API, 9100), 20);
    syn.send(&a);
    syn.then(FlowState::Refused, (1, 1)).ended().send(&a);
    let syn = Update::tcp((WEB, 40002), (API, 9100), 20);
    syn.send(&a);
    syn.then(FlowState::Reset, (3, 2)).ended().send(&a);
    let mid = Update::tcp((WEB, 40003), (API, 9100), 20);
    for u in [
        mid.then(FlowState::Established, (3, 2)),
        mid.then(FlowState::Closed, (6, 4)).ended(),
    ] {
        Update { opened: false, ..u }.send(&a);
    }
    connection(&a, (WEB, 40004), (API, 9000), 20);
    assert_eq!(unenforced(&a), BTreeMap::new());
    assert_eq!(state_of(&a), "unknown");
}

/// UDP (and the other protocols without a handshake): delivered when the responder answered.
/// A denied UDP exchange with a reply is counted; one without a reply proves nothing either
/// way (a responder may never answer: not `enforced`).
#[test]
fn udp_with_a_reply_is_counted() {
    let a = agent("node-a");
    let udp = |port, packets: (u64, u64)| Update {
        protocol: Protocol::Udp,
        state: if packets.1 > 0 {
            FlowState::Active
        } else {
            FlowState::Attempted
        },
        packets,
        opened: true,
        ..Update::tcp((WEB, port), (API, 5353), 20)
    };
    udp(40001, (1, 0)).send(&a);
    udp(40002, (1, 0)).ended().send(&a);
    assert_eq!(unenforced(&a), BTreeMap::new());
    assert_eq!(state_of(&a), "unknown");
    let first = udp(40001, (1, 0));
    first.then(FlowState::Active, (2, 1)).send(&a);
    assert_eq!(
        unenforced(&a),
        series(&[("web", "api", "5353", "UDP", "shop/api-np", 1)])
    );
    assert_eq!(state_of(&a), "not_enforced");
}

/// Across nodes, a delivered denied flow is counted by the node whose pod's policy denies it
/// (the node that failed to enforce), once: client (node-b) → api (node-a), denied only by
/// api's ingress, counts on node-a although node-b counts the flow itself; db (node-b) →
/// api (node-a), denied by db's egress and by api's ingress, counts on both (each node failed
/// its own policy); web (node-a) → db (node-b) 5432 is allowed by db (no ingress policy) and
/// counts nowhere. A flow from the internet to api counts on node-a.
#[test]
fn a_flow_counts_on_the_node_that_did_not_enforce() {
    let (a, b) = (agent("node-a"), agent("node-b"));
    for agent in [&a, &b] {
        connection(agent, (CLIENT, 40001), (API, 9000), 20);
        connection(agent, (DB, 40002), (API, 9000), 20);
        connection(agent, (WEB, 40003), (DB, 5432), 20);
    }
    connection(&a, (INTERNET, 50000), (API, 9000), 20);
    assert_eq!(
        unenforced(&a),
        series(&[
            ("client", "api", "9000", "TCP", "shop/api-np", 1),
            ("db", "api", "9000", "TCP", "shop/api-np", 1),
            ("world", "api", "9000", "TCP", "shop/api-np", 1),
        ])
    );
    assert_eq!(
        unenforced(&b),
        series(&[("db", "api", "9000", "TCP", "shop/db-egress", 1)])
    );
    assert_eq!(
        (state_of(&a), state_of(&b)),
        ("not_enforced".into(), "not_enforced".into())
    );
    // client → api: node-b counts the flow (its initiator is there), node-a the unenforced
    // policy; both records say what each node did.
    let (policy, json) = served(&a, 40001);
    assert_eq!(policy.as_deref(), Some("shop/api-np"));
    assert!(json.contains(r#""counted":false"#), "{json}");
    let (policy, json) = served(&b, 40001);
    assert_eq!(policy, None);
    assert!(!json.contains("counted"), "{json}");

    // Only node-a does not enforce: client → api is delivered (node-b sees it, not its
    // business), db → api is stopped by node-b (db's egress).
    let (a, b) = (agent("node-a"), agent("node-b"));
    connection(&a, (CLIENT, 40001), (API, 9000), 20);
    connection(&b, (CLIENT, 40001), (API, 9000), 20);
    let syn = Update::tcp((DB, 40002), (API, 9000), 20);
    syn.send(&b);
    syn.then(FlowState::Attempted, (3, 0)).ended().send(&b);
    assert_eq!(unenforced(&b), BTreeMap::new());
    assert_eq!(state_of(&a), "not_enforced");
    // db → api is also denied on node-a (api's ingress): its not being answered may be
    // node-a's doing, so it says nothing about node-b. db → client, denied by db's egress
    // alone, unanswered: node-b enforces.
    assert_eq!(state_of(&b), "unknown");
    let syn = Update::tcp((DB, 40003), (CLIENT, 8080), 20);
    syn.send(&b);
    syn.then(FlowState::Attempted, (3, 0)).ended().send(&b);
    assert_eq!(state_of(&b), "enforced");
}

/// A connection to a Service whose backend is on this node: the client leg (to the ClusterIP,
/// seen first) has the Service's first backend as destination until its backend leg shows the
/// backend reached; api's ingress denies web on 9100 (the Service's target port), so it is
/// counted once that backend is known, with api's policy.
#[test]
fn a_service_connection_counts_once_its_backend_is_known() {
    let a = agent("node-a");
    let client = Update::tcp((WEB, 40001), (CLUSTER_IP, 80), 20);
    client.send(&a);
    client.then(FlowState::Established, (3, 2)).send(&a);
    assert_eq!(
        unenforced(&a),
        BTreeMap::new(),
        "the backend is not known yet"
    );
    let backend = Update {
        packets: (0, 2),
        ..Update::tcp((WEB, 40001), (API, 9100), 20)
    };
    backend.send(&a);
    let want = series(&[("web", "api", "80", "TCP", "shop/api-np", 1)]);
    assert_eq!(unenforced(&a), want);
    client.then(FlowState::Closed, (6, 5)).ended().send(&a);
    backend.then(FlowState::Closed, (0, 5)).ended().send(&a);
    assert_eq!(unenforced(&a), want);
    assert_eq!(a.flows(&FlowQuery::default()).len(), 1);
    assert_eq!(served(&a, 40001).0.as_deref(), Some("shop/api-np"));
}

/// A flow the store evicts while active (store full) and that comes back is not counted a
/// second time.
#[test]
fn an_evicted_flow_is_not_counted_twice() {
    let a = AgentState::new(AgentConfig {
        node_name: Some("node-a".to_owned()),
        max_flows: 1,
        ..AgentConfig::default()
    });
    let model = Model::new(inventory(policies()), &Subnets::default(), None).unwrap();
    a.set_model_at(Arc::new(model), t0());
    let first = Update::tcp((WEB, 40001), (API, 9100), 20);
    first.send(&a);
    first.then(FlowState::Established, (3, 2)).send(&a);
    let other = Update::tcp((WEB, 40002), (API, 9000), 20);
    other.send(&a); // evicts the first
    first.then(FlowState::Established, (5, 4)).send(&a);
    first.then(FlowState::Closed, (6, 5)).ended().send(&a);
    assert_eq!(
        unenforced(&a),
        series(&[("web", "api", "9100", "TCP", "shop/api-np", 1)])
    );
}
