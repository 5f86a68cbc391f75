//! `netpol-observe baseline`: edges from recorded flows (attributed records kept as they are,
//! bare ones attributed with --inventory/--subnets, `counted: false` left out), readable as a
//! drift baseline; a bad line is an error naming FILE:LINE and nothing is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command, sync::Arc};

use netpol_observe_agent::{
    drift::{Baseline, DriftKind, Edge},
    metrics::PeerLabels,
};
use netpol_observe_core::flow::Protocol;

const INVENTORY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: web-0, labels: {app: web}}
spec: {nodeName: node-1}
status: {podIP: 10.1.0.10, podIPs: [{ip: 10.1.0.10}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: api-0, labels: {app: api}}
spec: {nodeName: node-1}
status: {podIP: 10.1.0.20, podIPs: [{ip: 10.1.0.20}]}
"#;

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .current_dir(dir)
        .arg("baseline")
        .args(args)
        .output()
        .unwrap()
}

fn peer(ns: &str, kind: &str, w: &str) -> Arc<PeerLabels> {
    Arc::new(PeerLabels {
        namespace: ns.into(),
        kind: kind.into(),
        workload: w.into(),
        pod: None,
    })
}

#[test]
fn baseline_from_recorded_flows() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("inventory.yaml"), INVENTORY).unwrap();
    std::fs::write(d.path().join("subnets.yaml"), "db-subnet: 10.50.0.0/24\n").unwrap();
    let flows = [
        // Bare: attributed with the inventory and subnets.
        r#"{"protocol":"TCP","src":{"ip":"10.1.0.10","port":40000},"dst":{"ip":"10.1.0.20","port":9000},"first_seen":"2026-05-04T10:00:05Z"}"#,
        r#"{"protocol":"TCP","src":{"ip":"10.1.0.10","port":40001},"dst":{"ip":"10.1.0.20","port":9000},"first_seen":"2026-05-04T10:00:01Z"}"#,
        r#"{"protocol":"TCP","src":{"ip":"10.1.0.20","port":40002},"dst":{"ip":"10.50.0.5","port":5432},"first_seen":"2026-05-04T10:00:02Z"}"#,
        // Attributed by an agent: kept.
        r#"{"protocol":"UDP","src":{"ip":"10.9.0.1","port":5000,"namespace":"batch","pod":"job-x","workload":{"kind":"CronJob","name":"report"}},"dst":{"ip":"8.8.8.8","port":53,"subnet":"world"},"first_seen":"2026-05-04T10:00:03Z"}"#,
        // Another node's view: left out.
        r#"{"protocol":"TCP","src":{"ip":"10.1.0.20","port":40003},"dst":{"ip":"10.1.0.10","port":8080},"counted":false}"#,
    ];
    std::fs::write(d.path().join("flows.jsonl"), flows.join("\n") + "\n").unwrap();
    let out = run(
        d.path(),
        &[
            "--flows",
            "flows.jsonl",
            "--inventory",
            "inventory.yaml",
            "--subnets",
            "subnets.yaml",
            "--write",
            "baseline.jsonl",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 edges from 4 flows (1 counted:false"),
        "{stderr}"
    );
    let path = d.path().join("baseline.jsonl");
    let b = Baseline::load(&path).unwrap();
    let (web, api) = (peer("shop", "Pod", "web-0"), peer("shop", "Pod", "api-0"));
    let db = peer("", "Subnet", "db-subnet");
    let report = peer("batch", "CronJob", "report");
    let world = peer("", "Subnet", "world");
    let edges: Vec<(Edge, Option<String>)> = b
        .edges()
        .into_iter()
        .map(|(e, t)| (e.clone(), t.map(|t| t.to_string())))
        .collect();
    let ts = |s: &str| Some(format!("2026-05-04T10:00:0{s}Z"));
    assert_eq!(
        edges,
        vec![
            (Edge::new(&report, &world, Some(53), Protocol::Udp), ts("3")),
            (Edge::new(&api, &db, Some(5432), Protocol::Tcp), ts("2")),
            (Edge::new(&web, &api, Some(9000), Protocol::Tcp), ts("1")),
        ]
    );
    assert_eq!(
        b.classify(&Edge::new(&web, &api, Some(9100), Protocol::Tcp)),
        Some(DriftKind::NewPort)
    );
    assert_eq!(
        b.classify(&Edge::new(&api, &web, Some(8080), Protocol::Tcp)),
        Some(DriftKind::NewPair)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines().all(|l| l.starts_with(r#"{"version":1,"#)),
        "{text}"
    );

    // A bad line: FILE:LINE, exit 2, the old baseline untouched.
    std::fs::write(
        d.path().join("bad.jsonl"),
        format!("{}\n{{\"protocol\":\n", flows[0]),
    )
    .unwrap();
    let out = run(
        d.path(),
        &["--flows", "bad.jsonl", "--write", "baseline.jsonl"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.jsonl:2:"), "{stderr}");
    assert!(stderr.contains("no baseline written"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}
