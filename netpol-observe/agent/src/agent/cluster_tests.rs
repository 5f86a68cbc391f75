//! Counting across nodes: every flow is counted by exactly one agent
//! ([`super::model::Attributed::counted_on`]). Two agents (node-a, node-b) over one inventory
//! are fed what each node's datapath sees of a set of connections; the sums of their scrapes
//! are the real connections, packets and bytes per workload pair, and their merged records
//! recommend exactly what one node seeing everything recommends.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use jiff::{SignedDuration, Timestamp};

use super::test_kit::{api_service, ip, node, pod};
use super::*;
use crate::{
    attribution::Subnets,
    datapath::{DropSample, FlowUpdate},
    flow::{Endpoint, FlowRecord},
    inventory::Inventory,
};
use crate::{
    flow::{Directional, FlowState, Protocol},
    recommend::{RecommendConfig, Recommender, render_yaml, sources::merge_flows},
};

const WEB: [u8; 4] = [10, 1, 0, 10];
const API_A: [u8; 4] = [10, 1, 0, 20];
const API_B: [u8; 4] = [10, 2, 0, 20];
const DB: [u8; 4] = [10, 2, 0, 30];
const NODE_A: [u8; 4] = [10, 0, 0, 1];
const NODE_B: [u8; 4] = [10, 0, 0, 2];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 20];
/// A pod of node-a the inventory does not know yet.
const UNKNOWN: [u8; 4] = [10, 1, 9, 9];
const INTERNET: [u8; 4] = [203, 0, 113, 7];

/// web on node-a; api with one replica per node (`api-…-aaaaa`, the Service's first
/// backend, on node-a; `api-…-bbbbb` on node-b) behind Service shop/api (80 → 9000); db on
/// node-b.
fn inventory() -> Arc<Inventory> {
    Arc::new(Inventory {
        pods: vec![
            pod("api-7c9d-aaaaa", "Deployment", "api", API_A, "node-a"),
            pod("api-7c9d-bbbbb", "Deployment", "api", API_B, "node-b"),
            pod("db-0", "StatefulSet", "db", DB, "node-b"),
            pod("web-6f4b-xxxxx", "Deployment", "web", WEB, "node-a"),
        ],
        services: vec![api_service(CLUSTER_IP, 9000)],
        nodes: vec![node("node-a", NODE_A), node("node-b", NODE_B)],
        ..Inventory::default()
    })
}

/// The two updates of one datapath flow: new with the first half of its counters, then ended
/// with the rest. `packets`/`bytes`: (sent, received) by the initiator, in total.
fn updates(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    packets: (u64, u64),
    bytes: (u64, u64),
    t: Timestamp,
) -> [FlowUpdate; 2] {
    let half = |(s, r): (u64, u64)| Directional {
        sent: s - s / 2,
        received: r - r / 2,
    };
    let rest = |(s, r): (u64, u64)| Directional {
        sent: s / 2,
        received: r / 2,
    };
    let total = |(sent, received)| Directional { sent, received };
    let record = |p: Directional, b: Directional, state, last: i64| {
        let mut r = FlowRecord::new(Protocol::Tcp, ip(src.0), ip(dst.0), Some(dst.1));
        r.src = Endpoint::bare(ip(src.0), Some(src.1));
        r.first_seen = Some(t);
        r.last_seen = t.checked_add(SignedDuration::from_secs(last)).ok();
        r.state = Some(state);
        r.packets = Some(p);
        r.bytes = Some(b);
        r
    };
    [
        FlowUpdate {
            record: record(half(packets), half(bytes), FlowState::Established, 1),
            new: true,
            delta_packets: half(packets),
            delta_bytes: half(bytes),
            ended: false,
            opened: true,
        },
        FlowUpdate {
            record: record(total(packets), total(bytes), FlowState::Closed, 2),
            new: false,
            delta_packets: rest(packets),
            delta_bytes: rest(bytes),
            ended: true,
            opened: true,
        },
    ]
}

/// What a node's datapath and drop tracepoint report, in order.
#[derive(Default)]
struct Seen {
    /// Updates of each flow, its first update in the first phase, its last in the second.
    flows: Vec<[FlowUpdate; 2]>,
    drops: Vec<DropSample>,
}

impl Seen {
    fn flow(
        &mut self,
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        packets: (u64, u64),
        bytes: (u64, u64),
        t: Timestamp,
    ) {
        self.flows.push(updates(src, dst, packets, bytes, t));
    }

    /// Feeds an agent: every flow's first update, the drops, then every flow's last update.
    fn feed(&self, state: &AgentState) {
        for [first, _] in &self.flows {
            state.on_update(first);
        }
        for d in &self.drops {
            state.on_drop(d);
        }
        for [_, last] in &self.flows {
            state.on_update(last);
        }
    }

    /// The datapath's records at shutdown (the last of each flow).
    fn records(&self) -> Vec<FlowRecord> {
        self.flows.iter().map(|[_, l]| l.record.clone()).collect()
    }
}

/// One connection: who initiated it to what (a ClusterIP for a Service), where the node's
/// DNAT sent it, its counters, and whether it was dropped on the responder's node.
struct Conn {
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    backend: Option<([u8; 4], u16)>,
    packets: (u64, u64),
    bytes: (u64, u64),
    dropped: u64,
    /// Workload pair in metric labels: (src namespace, src workload, dst namespace, dst
    /// workload).
    pair: (&'static str, &'static str, &'static str, &'static str),
}

const fn conn(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    backend: Option<([u8; 4], u16)>,
    packets: (u64, u64),
    bytes: (u64, u64),
    pair: (&'static str, &'static str, &'static str, &'static str),
) -> Conn {
    Conn {
        src,
        dst,
        backend,
        packets,
        bytes,
        dropped: 0,
        pair,
    }
}

/// The connections, in order.
fn connections() -> Vec<Conn> {
    let svc = (CLUSTER_IP, 80);
    vec![
        // Cross-node pod → pod: seen at web's interface (node-a) and at db's (node-b).
        conn(
            (WEB, 40001),
            (DB, 5432),
            None,
            (10, 8),
            (1000, 4000),
            ("shop", "web", "shop", "db"),
        ),
        // Cross-node Service connection: client leg on node-a (to the ClusterIP; no backend
        // leg there), backend leg on node-b.
        conn(
            (WEB, 40002),
            svc,
            Some((API_B, 9000)),
            (6, 5),
            (600, 2500),
            ("shop", "web", "shop", "api"),
        ),
        // Same-node Service connection on node-a: both legs there, joined.
        conn(
            (WEB, 40003),
            svc,
            Some((API_A, 9000)),
            (7, 6),
            (700, 3000),
            ("shop", "web", "shop", "api"),
        ),
        // Same-node pod → pod on node-b.
        conn(
            (API_B, 40004),
            (DB, 5432),
            None,
            (4, 4),
            (400, 800),
            ("shop", "api", "shop", "db"),
        ),
        // From outside the cluster to a pod of node-a.
        conn(
            (INTERNET, 50000),
            (WEB, 8080),
            None,
            (5, 5),
            (500, 5000),
            ("", "world", "shop", "web"),
        ),
        // From node-a's address (a node, or a hostNetwork pod) to a pod of node-b.
        conn(
            (NODE_A, 50001),
            (DB, 5432),
            None,
            (2, 2),
            (120, 120),
            ("", "node-a", "shop", "db"),
        ),
        // A pod of node-a not in the inventory yet, through the Service to node-b's backend.
        conn(
            (UNKNOWN, 40007),
            svc,
            Some((API_B, 9000)),
            (3, 3),
            (300, 300),
            ("", "private", "shop", "api"),
        ),
        // Cross-node, dropped by node-b's kernel before db's interface.
        Conn {
            dropped: 3,
            ..conn(
                (WEB, 40008),
                (DB, 5433),
                None,
                (3, 0),
                (180, 0),
                ("shop", "web", "shop", "db"),
            )
        },
    ]
}

fn on_node_a(a: [u8; 4]) -> bool {
    [WEB, API_A, UNKNOWN].contains(&a)
}

/// What each node sees of the connections: `(node-a, node-b, one node running every pod)`.
fn observe() -> (Seen, Seen, Seen) {
    let t0: Timestamp = "2026-05-04T10:00:00Z".parse().unwrap();
    let (mut a, mut b, mut single) = (Seen::default(), Seen::default(), Seen::default());
    for (i, c) in connections().iter().enumerate() {
        let t = t0
            .checked_add(SignedDuration::from_secs(10 * i as i64))
            .unwrap();
        let server = c.backend.unwrap_or(c.dst);
        let drop = DropSample {
            protocol: Protocol::Tcp,
            src: ip(c.src.0),
            src_port: c.src.1,
            dst: ip(server.0),
            dst_port: server.1,
            reason: "NETFILTER_DROP".to_owned(),
            packets: c.dropped,
        };
        let src_pod = [WEB, API_A, API_B, DB, UNKNOWN].contains(&c.src.0);
        let node = |addr| if on_node_a(addr) { "a" } else { "b" };
        // A pod initiator's node sees the flow leave its interface (to the ClusterIP for a
        // Service, before the DNAT).
        if src_pod {
            let n = if node(c.src.0) == "a" { &mut a } else { &mut b };
            n.flow(c.src, c.dst, c.packets, c.bytes, t);
        }
        // The server's node sees it enter the server's interface, after the DNAT: the whole
        // flow when it comes from elsewhere; for a same-node Service connection the backend
        // leg, where only the replies count; nothing more for a same-node pod → pod flow. A
        // dropped packet never gets there: the server node's kernel reports the drop.
        let same_node = src_pod && node(c.src.0) == node(server.0);
        let n = if node(server.0) == "a" {
            &mut a
        } else {
            &mut b
        };
        if c.dropped > 0 {
            n.drops.push(drop.clone());
        } else if !same_node {
            n.flow(c.src, server, c.packets, c.bytes, t);
        } else if c.backend.is_some() {
            n.flow(c.src, server, (0, c.packets.1), (0, c.bytes.1), t);
        }
        // One node running every pod: every flow once, a Service connection's two legs.
        single.flow(c.src, c.dst, c.packets, c.bytes, t);
        if let Some(backend) = c.backend {
            single.flow(c.src, backend, (0, c.packets.1), (0, c.bytes.1), t);
        }
        if c.dropped > 0 {
            single.drops.push(drop);
        }
    }
    (a, b, single)
}

fn agent(node: &str) -> AgentState {
    let state = AgentState::new(AgentConfig {
        node_name: Some(node.to_owned()),
        ..AgentConfig::default()
    });
    let model = Model::new(inventory(), &Subnets::default(), None).unwrap();
    state.set_model(Arc::new(model));
    state
}

type Pair = (String, String, String, String);

/// The samples of `family` in a scrape, as label maps and values.
fn samples(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    let prefix = format!("{family}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let labels = labels
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (labels, value.parse::<f64>().unwrap() as u64)
        })
        .collect()
}

/// The sum of `family` over the agents' scrapes by workload pair: `sum by (src_namespace,
/// src_workload, dst_namespace, dst_workload)`, as the docs' cluster-wide query.
fn by_pair(agents: &[&AgentState], family: &str) -> BTreeMap<Pair, u64> {
    let mut out = BTreeMap::new();
    for a in agents {
        for (l, v) in samples(&a.metrics().encode_text().unwrap(), family) {
            let pair = (
                l["src_namespace"].clone(),
                l["src_workload"].clone(),
                l["dst_namespace"].clone(),
                l["dst_workload"].clone(),
            );
            *out.entry(pair).or_default() += v;
        }
    }
    out
}

/// The sum of `family` over the agents' scrapes by the given labels.
fn by_labels(agents: &[&AgentState], family: &str, keys: &[&str]) -> BTreeMap<Vec<String>, u64> {
    let mut out = BTreeMap::new();
    for a in agents {
        for (l, v) in samples(&a.metrics().encode_text().unwrap(), family) {
            let key = keys.iter().map(|k| l[*k].clone()).collect();
            *out.entry(key).or_default() += v;
        }
    }
    out
}

/// The real connections, packets and bytes per workload pair.
fn expected() -> [BTreeMap<Pair, u64>; 3] {
    let mut out: [BTreeMap<Pair, u64>; 3] = Default::default();
    for c in connections() {
        let (a, b, x, y) = c.pair;
        let pair = (a.to_owned(), b.to_owned(), x.to_owned(), y.to_owned());
        for (map, n) in out
            .iter_mut()
            .zip([1, c.packets.0 + c.packets.1, c.bytes.0 + c.bytes.1])
        {
            *map.entry(pair.clone()).or_default() += n;
        }
    }
    out
}

const FAMILIES: [&str; 3] = [
    "netpol_observe_flows_total",
    "netpol_observe_flow_packets_total",
    "netpol_observe_flow_bytes_total",
];

/// Two agents over one inventory, each fed what its node sees: summed over both scrapes,
/// `flows_total`, packets and bytes per workload pair are the real connections, packets and
/// bytes (as one node seeing everything counts them), and so are the per-pod verdict series;
/// the drop is counted once, by the node whose kernel dropped it. Both nodes serve their
/// records, the one not counted here marked `"counted":false`. Without the rule (agents whose
/// node the inventory does not know count everything) the sums are too high.
#[test]
fn two_agents_count_every_flow_once() {
    let (seen_a, seen_b, seen_single) = observe();
    let (a, b) = (agent("node-a"), agent("node-b"));
    seen_a.feed(&a);
    seen_b.feed(&b);
    // One node running every pod: a name the inventory does not know, so it counts all.
    let single = agent("single-node");
    seen_single.feed(&single);

    let want = expected();
    for (family, want) in FAMILIES.iter().zip(&want) {
        assert_eq!(
            &by_pair(&[&a, &b], family),
            want,
            "{family} over both agents"
        );
        assert_eq!(&by_pair(&[&single], family), want, "{family} on one node");
    }
    assert_eq!(
        want[0].values().sum::<u64>(),
        connections().len() as u64,
        "one flow per connection"
    );
    let verdicts = "netpol_observe_policy_verdicts_total";
    let keys = ["namespace", "workload", "direction", "verdict"];
    assert_eq!(
        by_labels(&[&a, &b], verdicts, &keys),
        by_labels(&[&single], verdicts, &keys)
    );
    // web → db egress: C1 and the dropped C8; api's ingress: C2, C3 and the unknown client.
    let v = by_labels(&[&a, &b], verdicts, &keys);
    let get = |w: &str, d: &str| v[&vec!["shop".into(), w.into(), d.into(), "not_isolated".into()]];
    assert_eq!(
        (
            get("web", "egress"),
            get("api", "ingress"),
            get("db", "ingress")
        ),
        (4, 3, 4)
    );
    let drops = "netpol_observe_drops_total";
    let dkeys = ["src_workload", "dst_workload", "dst_port", "reason"];
    let dropped = |agents: &[&AgentState]| by_labels(agents, drops, &dkeys);
    let one = BTreeMap::from([(
        vec![
            "web".to_owned(),
            "db".to_owned(),
            "5433".to_owned(),
            "NETFILTER_DROP".to_owned(),
        ],
        3,
    )]);
    assert_eq!(dropped(&[&b]), one, "the drop, on node-b");
    assert_eq!(dropped(&[&a]), BTreeMap::new());

    // Records: each node serves what it saw; the copy another node counts is marked.
    let counted = |s: &AgentState| -> Vec<(u16, IpAddr, bool)> {
        let mut seen: Vec<_> = s
            .flows(&FlowQuery::default())
            .iter()
            .map(|o| (o.flow.src.port.unwrap(), o.flow.dst.ip, o.flow.counted))
            .collect();
        seen.sort_by_key(|(port, _, _)| *port);
        seen
    };
    let svc = ip(CLUSTER_IP);
    assert_eq!(
        counted(&a),
        vec![
            (40001, ip(DB), true),
            (40002, svc, true),
            (40003, svc, true),
            (40007, svc, false),
            (40008, ip(DB), true),
            (50000, ip(WEB), true),
        ]
    );
    assert_eq!(
        counted(&b),
        vec![
            (40001, ip(DB), false),
            (40002, ip(API_B), false),
            (40004, ip(DB), true),
            (40007, ip(API_B), true),
            (40008, ip(DB), false),
            (50001, ip(DB), true),
        ]
    );
    // The client leg whose backend is on node-b names a backend of the Service (its first,
    // api-…-aaaaa): the same workload as the backend reached.
    let flows_a = a.flows(&FlowQuery::default());
    let leg = &flows_a[1].flow;
    assert_eq!(leg.dst.pod.as_deref(), Some("api-7c9d-aaaaa"));
    assert_eq!(leg.dst.workload.as_ref().unwrap().name, "api");
    // As served on /api/v1/flows: `"counted":false` on node-b's copy, nothing on node-a's.
    let json = |s: &AgentState, i: usize| {
        serde_json::to_string(&s.flows(&FlowQuery::default())[i]).unwrap()
    };
    assert!(
        json(&b, 0).contains(r#""counted":false"#),
        "{}",
        json(&b, 0)
    );
    assert!(!json(&a, 0).contains("counted"), "{}", json(&a, 0));
    // The shutdown output (`--output jsonl`) is what /api/v1/flows serves: the joined backend
    // leg of the same-node Service connection is not a record of its own there either.
    let served = a.flows(&FlowQuery::default());
    let out = a.final_flows(seen_a.records());
    assert_eq!(out, served);
    assert!(
        !out.iter()
            .any(|o| o.flow.src.port == Some(40003) && o.flow.dst.ip == ip(API_A))
    );
    assert_eq!(out.iter().filter(|o| o.flow.counted).count(), 5);

    // Without the rule both agents count the cross-node flows: 11 flows for 8 connections
    // (the drop, of no local pod for a node name the inventory does not know, is ignored).
    let (a2, b2) = (agent("elsewhere-a"), agent("elsewhere-b"));
    seen_a.feed(&a2);
    seen_b.feed(&b2);
    let doubled = by_pair(&[&a2, &b2], FAMILIES[0]);
    assert_eq!(doubled.values().sum::<u64>(), 11);
}

/// The records of both agents, merged (as `recommend --agent A --agent B`) or concatenated
/// (as `recommend --flows a.jsonl b.jsonl`), give exactly the policies of the records one node
/// seeing everything produced, evidence annotations included: the copies marked
/// `counted:false` add their rules (the same) and no evidence. Counted as evidence, they
/// would raise the counts.
#[test]
fn merged_records_of_two_agents_recommend_as_one_node() {
    let (seen_a, seen_b, seen_single) = observe();
    let (a, b, single) = (agent("node-a"), agent("node-b"), agent("single-node"));
    seen_a.feed(&a);
    seen_b.feed(&b);
    seen_single.feed(&single);
    let records = |s: &AgentState| -> Vec<FlowRecord> {
        s.flows(&FlowQuery::default())
            .into_iter()
            .map(|o| o.flow)
            .collect()
    };
    let config = RecommendConfig {
        min_observation: SignedDuration::ZERO,
        ..RecommendConfig::default()
    };
    let inv = inventory();
    let recommender = Recommender::new(&inv, &Subnets::default(), config);
    let recommend = |flows: &[FlowRecord]| {
        let r = recommender.recommend(flows);
        assert!(!r.self_check_failed(), "{:?}", r.notes);
        (render_yaml(&r.policies).unwrap(), r.notes)
    };
    let one = recommend(&records(&single));
    // node-b first: its copy of web → db (same times as node-a's) is replaced by the counted one.
    let merged = merge_flows([records(&b), records(&a)]);
    assert_eq!(merged.len(), 11, "web → db:5432 is one flow");
    assert_eq!(recommend(&merged), one);
    let concatenated: Vec<FlowRecord> = records(&a).into_iter().chain(records(&b)).collect();
    assert_eq!(concatenated.len(), 12);
    assert_eq!(recommend(&concatenated), one);
    // Evidence: 8 connections in the namespace (default-deny), web in 5, api and db in 4.
    let flows: Vec<&str> = one
        .0
        .lines()
        .filter_map(|l| l.trim().strip_prefix("netpol-observe.io/flows: "))
        .collect();
    assert_eq!(flows, ["\"8\"", "\"4\"", "\"4\"", "\"5\""], "{}", one.0);
    for want in ["name: api-np", "name: db-np", "name: web-np", "port: 9000"] {
        assert!(one.0.contains(want), "{want}\n{}", one.0);
    }
    // The not-counted copies as evidence: more flows than connections.
    let all_counted: Vec<FlowRecord> = concatenated
        .into_iter()
        .map(|mut f| {
            f.counted = true;
            f
        })
        .collect();
    assert_ne!(recommend(&all_counted).0, one.0);
}

/// A flow not counted here that the store evicts while active, and that comes back, is still
/// not counted; a counted one keeps counting.
#[test]
fn a_returning_flow_keeps_its_counting() {
    let state = AgentState::new(AgentConfig {
        node_name: Some("node-b".to_owned()),
        max_flows: 1,
        ..AgentConfig::default()
    });
    state.set_model(Arc::new(
        Model::new(inventory(), &Subnets::default(), None).unwrap(),
    ));
    let t: Timestamp = "2026-05-04T10:00:00Z".parse().unwrap();
    // web (node-a) → db: node-a counts it; api-b → db: node-b does.
    let [web_new, web_end] = updates((WEB, 40001), (DB, 5432), (4, 4), (400, 400), t);
    let [api_new, api_end] = updates((API_B, 40004), (DB, 5432), (2, 2), (200, 200), t);
    for u in [&web_new, &api_new, &web_end, &api_end] {
        state.on_update(u); // each evicts the other (max_flows 1)
    }
    let pairs = by_pair(&[&state], "netpol_observe_flow_packets_total");
    let api_db = ("shop", "api", "shop", "db");
    let key = (
        api_db.0.to_owned(),
        api_db.1.to_owned(),
        api_db.2.to_owned(),
        api_db.3.to_owned(),
    );
    assert_eq!(pairs, BTreeMap::from([(key.clone(), 4)]));
    assert_eq!(
        by_pair(&[&state], "netpol_observe_flows_total"),
        BTreeMap::from([(key, 1)])
    );
    let served = state.flows(&FlowQuery::default());
    assert_eq!(served.len(), 1);
    assert!(served[0].flow.counted);
}

/// A Service connection from a client that is not a pod of the inventory is counted by the
/// backend's node: on the client's node the client leg waits until its backend leg shows the
/// backend reached is a pod of this node, then counts with the packets it carried so far.
#[test]
fn a_client_leg_from_outside_the_inventory_is_counted_once_its_backend_is_here() {
    let a = agent("node-a");
    let t: Timestamp = "2026-05-04T10:00:00Z".parse().unwrap();
    // The Service's first backend is node-a's api pod: not enough, the DNAT may pick another.
    let [client_new, client_end] =
        updates((UNKNOWN, 40009), (CLUSTER_IP, 80), (6, 4), (600, 400), t);
    let [backend_new, backend_end] = updates((UNKNOWN, 40009), (API_A, 9000), (0, 4), (0, 400), t);
    let sums = |s: &AgentState| -> Vec<u64> {
        FAMILIES
            .iter()
            .map(|f| by_pair(&[s], f).values().sum())
            .collect()
    };
    a.on_update(&client_new);
    assert_eq!(sums(&a), [0, 0, 0]);
    assert!(!a.flows(&FlowQuery::default())[0].flow.counted);
    a.on_update(&backend_new);
    assert_eq!(sums(&a), [1, 5, 500], "counted with its first counters");
    a.on_update(&client_end);
    a.on_update(&backend_end);
    assert_eq!(sums(&a), [1, 10, 1000], "the client leg's counters, once");
    let served = a.flows(&FlowQuery::default());
    assert_eq!(served.len(), 1);
    assert!(served[0].flow.counted);
    assert_eq!(served[0].flow.dst.pod.as_deref(), Some("api-7c9d-aaaaa"));
    let pair = by_pair(&[&a], FAMILIES[0]);
    let key = ("", "private", "shop", "api");
    assert_eq!(
        pair.keys()
            .next()
            .map(|(a, b, c, d)| (&**a, &**b, &**c, &**d)),
        Some(key)
    );
    // The same connection reaching node-b's backend: no backend leg here, never counted here
    // (node-b counts it from its backend leg).
    let a = agent("node-a");
    let [client_new, client_end] =
        updates((UNKNOWN, 40010), (CLUSTER_IP, 80), (6, 4), (600, 400), t);
    a.on_update(&client_new);
    a.on_update(&client_end);
    assert_eq!(sums(&a), [0, 0, 0]);
}

/// One flow view (issue 26, item 3): the agent's shutdown output (`--output jsonl`) holds
/// exactly the records `/api/v1/flows` serves after the final sweep. A same-node Service
/// connection is one record to the Service (its backend leg, `sent 0`, is not a record of its
/// own), a drop of a flow the datapath never saw is a drop-only record in both, and a flow
/// whose last update the agent missed gets its final counters from the datapath's last record.
#[test]
fn the_shutdown_output_is_what_the_api_serves() {
    let a = agent("node-a");
    let t: Timestamp = "2026-05-04T10:00:00Z".parse().unwrap();
    let [client_new, client_end] = updates((WEB, 40003), (CLUSTER_IP, 80), (7, 6), (700, 3000), t);
    let [backend_new, backend_end] = updates((WEB, 40003), (API_A, 9000), (0, 6), (0, 3000), t);
    let [db_new, db_end] = updates((WEB, 40001), (DB, 5432), (10, 8), (1000, 4000), t);
    for u in [
        &client_new,
        &backend_new,
        &db_new,
        &client_end,
        &backend_end,
    ] {
        a.on_update(u);
    }
    // web → db:5433, dropped before the datapath saw it.
    a.on_drop(&DropSample {
        protocol: Protocol::Tcp,
        src: ip(WEB),
        src_port: 40008,
        dst: ip(DB),
        dst_port: 5433,
        reason: "NETFILTER_DROP".to_owned(),
        packets: 3,
    });
    // db_end never arrived as an update: only the datapath's last records carry it.
    let records = vec![client_end.record, backend_end.record, db_end.record];
    let out = a.final_flows(records);
    let served = a.flows(&FlowQuery::default());
    assert_eq!(out, served, "the shutdown output is the API's answer");
    let mut summary: Vec<_> = out
        .iter()
        .map(|o| {
            let f = &o.flow;
            (
                f.src.port.unwrap(),
                f.dst.ip,
                f.dst.service.as_ref().map(|s| s.name.clone()),
                f.packets.map(|p| (p.sent, p.received)),
                f.drops.as_ref().map(|d| d.count),
            )
        })
        .collect();
    summary.sort_by_key(|s| s.0);
    assert_eq!(
        summary,
        vec![
            (40001, ip(DB), None, Some((10, 8)), None),
            (
                40003,
                ip(CLUSTER_IP),
                Some("api".to_owned()),
                Some((7, 6)),
                None
            ),
            (40008, ip(DB), None, None, Some(3)),
        ]
    );
    // The Service connection names the backend the DNAT chose.
    let svc = out.iter().find(|o| o.flow.src.port == Some(40003)).unwrap();
    assert_eq!(svc.flow.dst.pod.as_deref(), Some("api-7c9d-aaaaa"));
    assert_eq!(svc.flow.state, Some(FlowState::Closed));
    let db = out.iter().find(|o| o.flow.src.port == Some(40001)).unwrap();
    assert_eq!(db.flow.state, Some(FlowState::Closed));
}
