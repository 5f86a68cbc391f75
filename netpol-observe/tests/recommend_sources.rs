//! `recommend --agent` and `--prometheus` against a tiny local HTTP server serving recorded
//! answers; `recommend --diff` against the policies in the inventory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::Query, routing::get};
use netpol_observe::{
    attribution::Attributor,
    recommend::{
        FLOWS, RecommendConfig, Recommender, diff::DiffReport, render_yaml, sources::merge_flows,
    },
};
use recommend_support::*;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn bin(args: Vec<String>) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(args)
        .output()
        .await
        .unwrap()
}

fn files(s: &Scenario, dir: &std::path::Path) -> (String, String) {
    let inv = dir.join("inventory.yaml");
    std::fs::write(&inv, s.cluster.yaml()).unwrap();
    let subnets = dir.join("subnets.yaml");
    std::fs::write(&subnets, "db-subnet: 10.0.2.0/24\n").unwrap();
    (inv.display().to_string(), subnets.display().to_string())
}

/// Two agents; the flows between their nodes appear on both (same 5-tuple and first_seen) and
/// are counted once; agent lines may carry a `verdict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_merged_and_deduplicated() {
    let s = three_tier();
    let inv = s.cluster.inventory();
    let attributor = Attributor::new(&inv, &s.subnets);
    let attributed: Vec<_> = s
        .flows
        .iter()
        .cloned()
        .map(|mut f| {
            attributor.attribute(&mut f);
            f
        })
        .collect();
    let line = |f: &netpol_observe::flow::FlowRecord| {
        let mut v = serde_json::to_value(f).unwrap();
        v["verdict"] = serde_json::json!({"allowed": true});
        format!("{v}\n")
    };
    // Agent 1 has the first 10 flows, agent 2 flows 5.. (5 overlap).
    let a: String = attributed[..10].iter().map(line).collect();
    let b: String = attributed[5..].iter().map(line).collect();
    let url1 = serve(Router::new().route("/api/v1/flows", get(move || async move { a }))).await;
    let url2 = serve(Router::new().route("/api/v1/flows", get(move || async move { b }))).await;
    let dir = tempfile::tempdir().unwrap();
    let (inv_path, subnets) = files(&s, dir.path());
    let out = bin(vec![
        "recommend".into(),
        "--agent".into(),
        url1,
        format!("{url2}/"),
        "--inventory".into(),
        inv_path,
        "--subnets".into(),
        subnets,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = merge_flows([attributed[..10].to_vec(), attributed[5..].to_vec()]);
    assert_eq!(merged.len(), s.flows.len());
    let expected =
        Recommender::new(&inv, &s.subnets, RecommendConfig::default()).recommend(&s.flows);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, render_yaml(&expected.policies).unwrap());
    let web = parse_policies(&stdout)
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("web-np"))
        .unwrap();
    assert_eq!(annotation(&web, FLOWS), Some("8"));
}

const PROM_ANSWER: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"80","protocol":"TCP"},"value":[1795000000,"42"]},
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"kube-system","dst_kind":"Deployment","dst_workload":"coredns","dst_port":"53","protocol":"UDP"},"value":[1795000000,"310.5"]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"api","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db-subnet","dst_port":"5432","protocol":"TCP"},"value":[1795000000,"12"]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"worker","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"9000","protocol":"TCP"},"value":[1795000000,"0"]},
 {"metric":{"src_namespace":"","src_kind":"Subnet","src_workload":"world","dst_namespace":"frontend","dst_kind":"Deployment","dst_workload":"web","dst_port":"8080","protocol":"TCP"},"value":[1795000000,"7"]}
]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_series_become_workload_flows() {
    let s = three_tier();
    let queries: Arc<Mutex<Vec<String>>> = Arc::default();
    let q2 = queries.clone();
    let url = serve(Router::new().route(
        "/api/v1/query",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let q2 = q2.clone();
            async move {
                q2.lock()
                    .unwrap()
                    .push(q.get("query").cloned().unwrap_or_default());
                PROM_ANSWER
            }
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (inv_path, subnets) = files(&s, dir.path());
    let out = bin(vec![
        "recommend".into(),
        "--prometheus".into(),
        url,
        "--window".into(),
        "1d".into(),
        "--inventory".into(),
        inv_path,
        "--subnets".into(),
        subnets,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = queries.lock().unwrap().clone();
    assert_eq!(q.len(), 1);
    assert!(
        q[0].contains("increase(netpol_observe_flows_total[86400s])"),
        "{q:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("series 4 (/world -> frontend/web)"),
        "{stderr}"
    );
    let policies = parse_policies(&String::from_utf8(out.stdout).unwrap());
    let names: Vec<_> = policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "api-np", "default-deny", "web-np"]);
    let api = policy(&policies, "backend", "api-np");
    let yaml = netpol_observe::yaml::to_string(api).unwrap();
    // The Service port 80 became the backend's named target port.
    assert!(yaml.contains("port: api"), "{yaml}");
    assert!(
        yaml.contains("kubernetes.io/metadata.name: frontend"),
        "{yaml}"
    );
    assert!(yaml.contains("cidr: 10.0.2.0/24"), "{yaml}");
    assert_eq!(
        annotation(api, netpol_observe::recommend::WINDOW),
        Some("2026-11-17T11:06:40Z/2026-11-18T11:06:40Z")
    );
    let web = netpol_observe::yaml::to_string(policy(&policies, "frontend", "web-np")).unwrap();
    assert!(web.contains("k8s-app: kube-dns"), "{web}");
    assert!(!web.contains("ingress:"), "{web}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_error_answer_is_a_clear_error() {
    let url = serve(Router::new().route(
        "/api/v1/query",
        get(|| async { r#"{"status":"error","errorType":"bad_data","error":"parse error"}"# }),
    ))
    .await;
    let out = bin(vec!["recommend".into(), "--prometheus".into(), url.clone()]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{url}/api/v1/query: not a Prometheus instant-vector answer: status \"error\": parse error")),
        "{stderr}"
    );
}

/// `--diff`: the current policies deny web's traffic (a default-deny left without allows)
/// and one rule is never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_against_current_policies() {
    let mut s = three_tier();
    s.cluster.objects.push(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": "frontend"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    }));
    s.cluster.objects.push(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "api-allow", "namespace": "backend"},
        "spec": {"podSelector": {"matchLabels": {"app": "api"}},
                 "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}}]}
                 ]}
    }));
    let dir = tempfile::tempdir().unwrap();
    let (inv_path, subnets) = files(&s, dir.path());
    let flows = dir.path().join("flows.jsonl");
    let text: String = s
        .flows
        .iter()
        .map(|f| format!("{}\n", serde_json::to_string(f).unwrap()))
        .collect();
    std::fs::write(&flows, text).unwrap();
    let out_file = dir.path().join("recommended.yaml");
    let out = bin(vec![
        "recommend".into(),
        "--flows".into(),
        flows.display().to_string(),
        "--inventory".into(),
        inv_path,
        "--subnets".into(),
        subnets,
        "--diff".into(),
        "--format".into(),
        "json".into(),
        "-o".into(),
        out_file.display().to_string(),
    ])
    .await;
    // Observed flows the current policies deny: exit 1, as `verify`.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: DiffReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.current_policies, 2);
    assert_eq!(report.unused_rules, ["backend/api-allow:ingress[0]"]);
    let denied: Vec<(String, String)> = report
        .denied
        .denied
        .iter()
        .map(|d| (d.src.clone(), d.dst.clone()))
        .collect();
    assert_eq!(
        denied,
        [
            (
                "backend/Deployment/worker".to_owned(),
                "backend/Deployment/api via Service backend/api".to_owned()
            ),
            (
                "frontend/Deployment/web".to_owned(),
                "backend/Deployment/api via Service backend/api".to_owned()
            ),
            (
                "frontend/Deployment/web".to_owned(),
                "kube-system/Deployment/coredns via Service kube-system/kube-dns".to_owned()
            ),
            (
                "subnet/world".to_owned(),
                "frontend/Deployment/web".to_owned()
            ),
        ]
    );
    // The recommendation was still written.
    assert_eq!(
        parse_policies(&std::fs::read_to_string(&out_file).unwrap()).len(),
        5
    );
}
