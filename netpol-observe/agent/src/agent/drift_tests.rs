//! Drift ([`crate::drift`], [`AgentState::observe_drift`]): an agent with a baseline counts
//! exactly the counted flows whose edge is outside it, by kind, lists them on `/api/v1/drift`,
//! learns and persists edges during a learning period, resumes it after a restart, picks up a
//! replaced baseline file, and refuses a corrupt one naming FILE:LINE.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use jiff::{SignedDuration, Timestamp};

use super::test_kit::{ip, node, pod, shop_namespace};
use super::*;
use crate::flow::{Directional, Protocol};
use crate::{
    attribution::Subnets,
    datapath::FlowUpdate,
    flow::{Endpoint, FlowRecord},
    inventory::Inventory,
};

const WEB: [u8; 4] = [10, 1, 0, 10];
const API: [u8; 4] = [10, 1, 0, 20];
const CACHE: [u8; 4] = [10, 1, 0, 30];
/// On node-b: its flows are counted by node-b's agent.
const CLIENT: [u8; 4] = [10, 2, 0, 40];
/// In the named subnet `db-subnet`.
const DB: [u8; 4] = [10, 50, 0, 5];

const WEB_API_9000: &str = r#"{"version":1,"src":{"namespace":"shop","kind":"Deployment","workload":"web"},"dst":{"namespace":"shop","kind":"Deployment","workload":"api"},"port":9000,"protocol":"TCP","first_seen":"2026-05-01T00:00:00Z"}"#;

fn model() -> Arc<Model> {
    let inventory = Inventory {
        namespaces: shop_namespace(),
        pods: vec![
            pod("web-0", "Deployment", "web", WEB, "node-a"),
            pod("api-0", "Deployment", "api", API, "node-a"),
            pod("cache-0", "Deployment", "cache", CACHE, "node-a"),
            pod("client-0", "Deployment", "client", CLIENT, "node-b"),
        ],
        nodes: vec![node("node-a", [10, 0, 0, 1]), node("node-b", [10, 0, 0, 2])],
        ..Inventory::default()
    };
    let subnets = Subnets::new([("db-subnet".to_owned(), "10.50.0.0/24".parse().unwrap())]);
    Arc::new(Model::new(Arc::new(inventory), &subnets, None).unwrap())
}

fn t0() -> Timestamp {
    "2026-05-04T10:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0().checked_add(SignedDuration::from_secs(secs)).unwrap()
}

/// node-a's agent with `baseline` as its drift baseline file, opened at `t0`.
fn agent(baseline: &Path, learn: SignedDuration) -> AgentState {
    let state = AgentState::new(AgentConfig {
        node_name: Some("node-a".to_owned()),
        drift_baseline: Some(baseline.to_owned()),
        drift_learn: learn.into(),
        ..AgentConfig::default()
    });
    state.set_model_at(model(), t0());
    state.open_drift(t0()).unwrap();
    state
}

/// A new TCP flow `src:sport → dst:dport` first seen at `first` seconds after `t0`.
fn flow(state: &AgentState, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, first: i64) {
    let mut r = FlowRecord::new(Protocol::Tcp, ip(src), ip(dst), Some(dport));
    r.src = Endpoint::bare(ip(src), Some(sport));
    r.first_seen = Some(at(first));
    r.last_seen = r.first_seen;
    let d = Directional {
        sent: 1,
        received: 1,
    };
    state.on_update(&FlowUpdate {
        record: r,
        new: true,
        delta_packets: d,
        delta_bytes: d,
        ended: false,
        opened: true,
    });
}

/// `netpol_observe_drift_flows_total` samples: (src, dst, port, kind) → value.
fn drift_samples(state: &AgentState) -> BTreeMap<(String, String, String, String), u64> {
    let text = state.metrics().encode_text().unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("netpol_observe_drift_flows_total{"))
    {
        let label = |name: &str| {
            let key = format!(",{name}=\"");
            let start = line.find(&key).unwrap() + key.len();
            line[start..][..line[start..].find('"').unwrap()].to_owned()
        };
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert(
            (
                label("src_workload"),
                label("dst_workload"),
                label("dst_port"),
                label("kind"),
            ),
            value,
        );
    }
    out
}

fn key(src: &str, dst: &str, port: &str, kind: &str) -> (String, String, String, String) {
    (src.into(), dst.into(), port.into(), kind.into())
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// web → api:9000 is the baseline: that flow is no drift; 9100 is a new port, db-subnet a new
/// destination, cache → api a new pair; a flow node-b counts is not judged here. Counts are
/// per flow, the API lists each edge once with its first and last flow and count.
#[tokio::test]
async fn flows_outside_the_baseline_are_counted_by_kind_and_listed() {
    let d = dir();
    let path = d.path().join("baseline.jsonl");
    std::fs::write(&path, format!("{WEB_API_9000}\n")).unwrap();
    let state = Arc::new(agent(&path, SignedDuration::ZERO));
    flow(&state, WEB, 40000, API, 9000, 1);
    flow(&state, WEB, 40001, API, 9100, 2);
    flow(&state, WEB, 40002, API, 9100, 5);
    flow(&state, WEB, 40003, DB, 5432, 3);
    flow(&state, CACHE, 40004, API, 9000, 4);
    flow(&state, CLIENT, 40005, API, 9999, 4);
    assert_eq!(
        drift_samples(&state),
        BTreeMap::from([
            (key("web", "api", "9100", "new_port"), 2),
            (key("web", "db-subnet", "5432", "new_destination"), 1),
            (key("cache", "api", "9000", "new_pair"), 1),
        ])
    );

    let router = crate::http::router(
        Arc::clone(&state),
        Arc::new(crate::http::auth::ApiGuard::open()),
    );
    let resp = tower::ServiceExt::oneshot(
        router,
        http::Request::builder()
            .uri("/api/v1/drift")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["baseline_edges"], 1);
    assert_eq!(report["learning"], false);
    assert_eq!(report["overflow"], 0);
    let listed: Vec<(String, String, u64, String, String, String, u64)> = report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["src"]["workload"].as_str().unwrap().to_owned(),
                e["dst"]["workload"].as_str().unwrap().to_owned(),
                e["port"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_owned(),
                e["first_seen"].as_str().unwrap().to_owned(),
                e["last_seen"].as_str().unwrap().to_owned(),
                e["flows"].as_u64().unwrap(),
            )
        })
        .collect();
    let ts = |s| at(s).to_string();
    assert_eq!(
        listed,
        vec![
            (
                "web".into(),
                "api".into(),
                9100,
                "new_port".into(),
                ts(2),
                ts(5),
                2
            ),
            (
                "web".into(),
                "db-subnet".into(),
                5432,
                "new_destination".into(),
                ts(3),
                ts(3),
                1
            ),
            (
                "cache".into(),
                "api".into(),
                9000,
                "new_pair".into(),
                ts(4),
                ts(4),
                1
            ),
        ]
    );
    assert_eq!(report["drift"][1]["dst"]["kind"], "Subnet");
    assert!(report["drift"][1]["dst"].get("namespace").is_none());
}

/// Without --drift-baseline nothing is judged and /api/v1/drift says drift detection is off.
#[tokio::test]
async fn no_baseline_no_drift() {
    let state = Arc::new(AgentState::new(AgentConfig {
        node_name: Some("node-a".to_owned()),
        ..AgentConfig::default()
    }));
    state.set_model_at(model(), t0());
    state.open_drift(t0()).unwrap();
    flow(&state, CACHE, 40004, API, 9000, 4);
    assert!(drift_samples(&state).is_empty());
    let router = crate::http::router(
        Arc::clone(&state),
        Arc::new(crate::http::auth::ApiGuard::open()),
    );
    let resp = tower::ServiceExt::oneshot(
        router,
        http::Request::builder()
            .uri("/api/v1/drift")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

/// A missing baseline with a learning period of 60 s: edges seen in it are learned (no drift)
/// and written to the file with the period's start; after it, new edges are drift. A restart
/// within the period resumes it (the file says when it began) with the learned edges.
#[test]
fn learning_adds_edges_persists_them_and_a_restart_resumes() {
    let d = dir();
    let path = d.path().join("learned.jsonl");
    let learn = SignedDuration::from_secs(60);
    let state = agent(&path, learn);
    flow(&state, WEB, 40000, API, 9000, 1);
    flow(&state, WEB, 40001, DB, 5432, 2);
    flow(&state, WEB, 40002, API, 9000, 3);
    assert!(drift_samples(&state).is_empty());
    state.poll_drift(at(4));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["learning_since"], t0().to_string());
    assert!(lines.iter().all(|l| l["version"] == 1));
    let edges: Vec<(&str, &str, u64, &str)> = lines[1..]
        .iter()
        .map(|l| {
            (
                l["src"]["workload"].as_str().unwrap(),
                l["dst"]["workload"].as_str().unwrap(),
                l["port"].as_u64().unwrap(),
                l["first_seen"].as_str().unwrap(),
            )
        })
        .collect();
    let (t1, t2) = (at(1).to_string(), at(2).to_string());
    assert_eq!(
        edges,
        // Sorted by source, then destination (namespace first: a subnet's is empty).
        vec![
            ("web", "db-subnet", 5432, t2.as_str()),
            ("web", "api", 9000, t1.as_str()),
        ]
    );
    // A learned edge written, then one more before the shutdown write.
    flow(&state, CACHE, 40003, API, 9000, 10);
    state.persist_drift(at(11));
    drop(state);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);

    // Restart at t0 + 30 s: the period (until t0 + 60 s) goes on.
    let restarted = AgentState::new(AgentConfig {
        node_name: Some("node-a".to_owned()),
        drift_baseline: Some(path.clone()),
        drift_learn: learn.into(),
        ..AgentConfig::default()
    });
    restarted.set_model_at(model(), at(30));
    restarted.open_drift(at(30)).unwrap();
    let report = restarted.drift_report().unwrap();
    assert_eq!(report.baseline_edges, 3);
    assert_eq!(report.learning_until, Some(at(60)));
    flow(&restarted, CACHE, 40004, API, 9000, 31); // known
    flow(&restarted, CACHE, 40005, API, 6379, 40); // learned
    flow(&restarted, CACHE, 40006, API, 6380, 61); // after the period: drift
    flow(&restarted, WEB, 40007, API, 9000, 62); // known
    assert_eq!(
        drift_samples(&restarted),
        BTreeMap::from([(key("cache", "api", "6380", "new_port"), 1)])
    );
    restarted.persist_drift(at(63));
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
}

/// The baseline file replaced while the agent runs is picked up at the next poll: drift edges
/// it now holds leave the list, new flows are judged by it. A corrupt replacement is a warning
/// and the baseline in use stays.
#[test]
fn a_replaced_baseline_is_picked_up_and_a_corrupt_one_is_ignored() {
    let d = dir();
    let path = d.path().join("baseline.jsonl");
    std::fs::write(&path, format!("{WEB_API_9000}\n")).unwrap();
    let state = agent(&path, SignedDuration::ZERO);
    flow(&state, CACHE, 40000, API, 9000, 1);
    assert_eq!(state.drift_report().unwrap().drift.len(), 1);

    // Replaced (as a ConfigMap update does: a new file renamed over the old one).
    let cache_api = WEB_API_9000.replace("\"web\"", "\"cache\"");
    let tmp = d.path().join("new.jsonl");
    std::fs::write(&tmp, format!("{WEB_API_9000}\n{cache_api}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    state.poll_drift(at(2));
    let report = state.drift_report().unwrap();
    assert_eq!(report.baseline_edges, 2);
    assert!(report.drift.is_empty(), "{report:?}");
    flow(&state, CACHE, 40001, API, 9000, 3);
    flow(&state, CACHE, 40002, API, 9001, 4);
    assert_eq!(
        drift_samples(&state),
        BTreeMap::from([
            (key("cache", "api", "9000", "new_pair"), 1),
            (key("cache", "api", "9001", "new_port"), 1),
        ])
    );

    // Corrupt: the baseline in use stays (cache → api:9000 is still known).
    let tmp = d.path().join("bad.jsonl");
    std::fs::write(&tmp, format!("{WEB_API_9000}\n{{not json\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    state.poll_drift(at(5));
    assert_eq!(state.drift_report().unwrap().baseline_edges, 2);
    flow(&state, CACHE, 40003, API, 9000, 6);
    assert_eq!(
        drift_samples(&state)[&key("cache", "api", "9000", "new_pair")],
        1
    );
}

/// A corrupt baseline at start is an error naming the file and line.
#[test]
fn a_corrupt_baseline_at_start_names_file_and_line() {
    let d = dir();
    let path = d.path().join("baseline.jsonl");
    std::fs::write(
        &path,
        format!(
            "{WEB_API_9000}\n\n{}\n",
            r#"{"version":1,"src":{"namespace":"shop","kind":"Deployment","workload":"web"}}"#
        ),
    )
    .unwrap();
    let state = AgentState::new(AgentConfig {
        drift_baseline: Some(path.clone()),
        ..AgentConfig::default()
    });
    let err = state.open_drift(t0()).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:3: ", path.display())), "{err}");
    assert!(err.contains("`dst`"), "{err}");
}
