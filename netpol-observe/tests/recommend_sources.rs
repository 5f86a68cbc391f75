//! `recommend --agent` and `--prometheus` against a tiny local HTTP server serving recorded
//! answers; `recommend --diff` against the policies in the inventory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::Query, routing::get};
use netpol_observe_core::{
    attribution::Attributor,
    policy::PolicyEngine,
    recommend::{
        DENIED_IN_FORCE, DeniedOutcome, FLOWS, RecommendConfig, Recommender, diff::DiffReport,
        render_yaml, sources::merge_flows,
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
    let line = |f: &netpol_observe_core::flow::FlowRecord| {
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

/// A Prometheus answering every instant query with `answer` (and no range query); the URL
/// and the queries asked.
async fn fake_prometheus(answer: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    fake_prometheus_with_range(answer, None).await
}

/// A Prometheus answering every instant query with `answer` and every range query with
/// `range` (`None`: 404, as a store without range queries); the URL and the queries asked
/// (range queries prefixed `range:`).
async fn fake_prometheus_with_range(
    answer: &'static str,
    range: Option<&'static str>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let queries: Arc<Mutex<Vec<String>>> = Arc::default();
    let asked = Arc::clone(&queries);
    let asked_range = Arc::clone(&queries);
    let mut app = Router::new().route(
        "/api/v1/query",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let asked = Arc::clone(&asked);
            async move {
                asked
                    .lock()
                    .unwrap()
                    .push(q.get("query").cloned().unwrap_or_default());
                answer
            }
        }),
    );
    if let Some(range) = range {
        app = app.route(
            "/api/v1/query_range",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let asked = Arc::clone(&asked_range);
                async move {
                    asked.lock().unwrap().push(format!(
                        "range:{} step={}",
                        q.get("query").cloned().unwrap_or_default(),
                        q.get("step").cloned().unwrap_or_default()
                    ));
                    range
                }
            }),
        );
    }
    (serve(app).await, queries)
}

const PROM_ANSWER: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"80","protocol":"TCP"},"value":[1795000000,"42"]},
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"kube-system","dst_kind":"Deployment","dst_workload":"coredns","dst_port":"53","protocol":"UDP"},"value":[1795000000,"310.5"]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"api","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db-subnet","dst_port":"5432","protocol":"TCP"},"value":[1795000000,"12"]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"worker","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"9000","protocol":"TCP"},"value":[1795000000,"0"]},
 {"metric":{"src_namespace":"","src_kind":"Subnet","src_workload":"world","dst_namespace":"frontend","dst_kind":"Deployment","dst_workload":"web","dst_port":"8080","protocol":"TCP"},"value":[1795000000,"7"]}
]}}"#;

/// The samples of the range query: web → api grew at 1794950000 and 1794990000 (first and
/// last seen), api → db-subnet once at 1794960000; world → web was born in the window's
/// middle (the range began before its first sample).
const PROM_RANGE: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"80","protocol":"TCP"},"values":[[1794913600,"100"],[1794950000,"120"],[1794990000,"142"],[1795000000,"142"]]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"api","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db-subnet","dst_port":"5432","protocol":"TCP"},"values":[[1794913600,"3"],[1794960000,"15"],[1795000000,"15"]]}
]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_series_become_workload_flows() {
    let s = three_tier();
    let (url, queries) = fake_prometheus_with_range(PROM_ANSWER, Some(PROM_RANGE)).await;
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
    assert_eq!(q.len(), 2);
    assert!(
        q[0].contains("increase(netpol_observe_flows_total[86400s])"),
        "{q:?}"
    );
    assert!(
        q[1].starts_with("range:sum by (src_namespace, src_kind, src_workload, dst_namespace, dst_kind, dst_workload, dst_port, protocol) (netpol_observe_flows_total)")
            && q[1].ends_with(" step=87s"),
        "{q:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("world"),
        "no world peer left out: {stderr}"
    );
    let policies = parse_policies(&String::from_utf8(out.stdout).unwrap());
    let names: Vec<_> = policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "api-np", "default-deny", "web-np"]);
    let api = policy(&policies, "backend", "api-np");
    let yaml = netpol_observe_core::yaml::to_string(api).unwrap();
    // The Service port 80 became the backend's named target port.
    assert!(yaml.contains("port: api"), "{yaml}");
    assert!(
        yaml.contains("kubernetes.io/metadata.name: frontend"),
        "{yaml}"
    );
    assert!(yaml.contains("cidr: 10.0.2.0/24"), "{yaml}");
    assert_eq!(
        annotation(api, netpol_observe_core::recommend::WINDOW),
        Some("2026-11-17T11:06:40Z/2026-11-18T11:06:40Z")
    );
    // Evidence: real flow counts (the series' increases: web → api 42 + api → db-subnet 12),
    // first and last seen from the samples (the first and last increase), not the window.
    assert_eq!(annotation(api, FLOWS), Some("54"));
    assert_eq!(
        annotation(api, netpol_observe_core::recommend::FIRST_SEEN),
        Some("2026-11-17T21:13:20Z")
    );
    assert_eq!(
        annotation(api, netpol_observe_core::recommend::LAST_SEEN),
        Some("2026-11-18T08:20:00Z")
    );
    let web_np = policy(&policies, "frontend", "web-np");
    let web = netpol_observe_core::yaml::to_string(web_np).unwrap();
    assert!(web.contains("k8s-app: kube-dns"), "{web}");
    // 42 + 311 (310.5: Prometheus extrapolates) + 7.
    assert_eq!(annotation(web_np, FLOWS), Some("360"));
    // Internet ingress (a `world` series): kept, as the whole Internet on the port.
    let ingress = web_np.spec.as_ref().unwrap().ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1, "{web}");
    let cidrs: Vec<&str> = ingress[0]
        .from
        .iter()
        .flatten()
        .filter_map(|p| p.ip_block.as_ref().map(|b| b.cidr.as_str()))
        .collect();
    assert_eq!(cidrs, ["0.0.0.0/0", "::/0"], "{web}");
    assert!(
        annotation(web_np, netpol_observe_core::recommend::AGGREGATION)
            .is_some_and(|a| a.contains("Prometheus series say only `world`")),
        "{web}"
    );
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
        "-o".into(),
        "json".into(),
        "--write".into(),
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
    // Named by index, with what the rule allows (NetworkPolicy rules have no names).
    assert_eq!(
        report.unused_rule_descriptions,
        std::collections::BTreeMap::from([(
            "backend/api-allow:ingress[0]".to_owned(),
            "from app=web any port".to_owned()
        )])
    );
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
    // The same flows, as the recommendation judged them: the records (hand-written: no state,
    // no packets) say nothing of their delivery, so they are learned, and listed.
    let judged: Vec<(&str, DeniedOutcome)> = report
        .denied_in_force
        .iter()
        .map(|d| (d.src.as_str(), d.outcome))
        .collect();
    assert_eq!(
        judged,
        [
            ("backend/Deployment/worker", DeniedOutcome::Unverified),
            ("frontend/Deployment/web", DeniedOutcome::Unverified),
            ("frontend/Deployment/web", DeniedOutcome::Unverified),
            ("subnet/world", DeniedOutcome::Unverified),
        ]
    );
    // The recommendation was still written.
    assert_eq!(
        parse_policies(&std::fs::read_to_string(&out_file).unwrap()).len(),
        5
    );
}

/// The recommended policies (YAML) against the inventory: whether each flow is allowed.
fn allows(yaml: &str, s: &Scenario, flows: &[&netpol_observe_core::flow::FlowRecord]) -> Vec<bool> {
    let inv = s.cluster.inventory();
    let attributor = Attributor::new(&inv, &s.subnets);
    let engine = PolicyEngine::compile(&parse_policies(yaml), &inv).unwrap();
    flows
        .iter()
        .map(|f| {
            let mut f = (*f).clone();
            attributor.attribute(&mut f);
            engine.evaluate_flow(&f).allowed
        })
        .collect()
}

/// The knocked shop's verdict of `i` under the policies in force, as agents and `evaluate`
/// write it: web → db and the knock on api denied (by shop/db-np, shop/api-np).
fn shop_verdict(s: &Scenario, i: usize, knock: usize) -> serde_json::Value {
    let denied = |policy: &str| {
        serde_json::json!({"allowed": false,
            "ingress": {"result": "denied", "policies": [policy]},
            "egress": {"result": "not-isolated", "reason": "not-a-pod"}})
    };
    match s.flows[i].dst.port {
        _ if i == knock => denied("shop/api-np"),
        Some(5432) => denied("shop/db-np"),
        _ => serde_json::json!({"allowed": true,
            "ingress": {"result": "allowed", "policies": ["shop/api-np"], "rules": ["shop/api-np:ingress[0]"]},
            "egress": {"result": "not-isolated"}}),
    }
}

const KNOCK_NOTES: [&str; 2] = [
    "note: denied by the policies in force — review: shop/Deployment/web -> shop/StatefulSet/db:5432/TCP (5 flow(s); ",
    "note: denied by the policies in force — review: subnet/world -> shop/Deployment/api:9000/TCP (1 flow(s); ingress denied, isolated by shop/api-np): not learned: no allow rule written (--include-denied to learn it)\n",
];

/// `recommend --flows`: web's connections to db the kernel dropped (drops in the records) and
/// the knock on api (a `verdict` from `evaluate` says denied; the inventory holds no policy)
/// get no allow rule and are listed for review; `--include-denied` learns them. A `verdict`
/// that is not one is a bad line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_files_denied_flows_are_not_learned() {
    let (s, knock) = knocked_shop(false);
    let dir = tempfile::tempdir().unwrap();
    let (inv_path, _) = files(&s, dir.path());
    let flows = dir.path().join("flows.jsonl");
    let text: String = s
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut v = serde_json::to_value(f).unwrap();
            if i == knock {
                v["verdict"] = shop_verdict(&s, i, knock);
            }
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&flows, &text).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "recommend".to_owned(),
            "--flows".into(),
            flows.display().to_string(),
            "--inventory".into(),
            inv_path.clone(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        bin(args)
    };
    let (legit, db, world) = (&s.flows[0], &s.flows[6], &s.flows[knock]);
    let out = run(&[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for want in KNOCK_NOTES {
        assert!(stderr.contains(want), "{want}\n{stderr}");
    }
    assert!(
        stderr.contains(
            "(5 flow(s); 2 packet(s) dropped (NETFILTER_DROP) by shop/db-np): not learned"
        ),
        "{stderr}"
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(allows(&yaml, &s, &[legit, db, world]), [true, false, false]);
    let deny = policy(&parse_policies(&yaml), "shop", "default-deny").clone();
    let annotated = annotation(&deny, DENIED_IN_FORCE).unwrap();
    assert!(
        annotated.contains("1 flow(s) subnet/world -> shop/Deployment/api:9000/TCP"),
        "{annotated}"
    );

    let out = run(&["--include-denied"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("subnet/world -> shop/Deployment/api:9000/TCP (1 flow(s); ingress denied, isolated by shop/api-np): never got through; learned (--include-denied)"),
        "{stderr}"
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(allows(&yaml, &s, &[legit, db, world]), [true, true, true]);

    // A verdict that is not one: the line is bad (exit 2), the others are used.
    std::fs::write(
        &flows,
        text.replacen(
            "\"verdict\":{\"allowed\":false",
            "\"verdict\":{\"allowed\":\"maybe\"",
            1,
        ),
    )
    .unwrap();
    let out = run(&[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {}:{}: invalid verdict: ",
            flows.display(),
            knock + 1
        )),
        "{stderr}"
    );
}

/// `recommend --agent`: the agents' answers carry the verdict under the policies in force;
/// the knock on api (no drop seen) is denied only there. The dropped and the denied flows get
/// no allow rule and are listed; `--include-denied` learns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_denied_flows_are_not_learned() {
    let (s, knock) = knocked_shop(false);
    let inv = s.cluster.inventory();
    let attributor = Attributor::new(&inv, &s.subnets);
    let body: String = s
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            attributor.attribute(&mut f);
            f.node = Some("node-1".into());
            let mut v = serde_json::to_value(&f).unwrap();
            v["verdict"] = shop_verdict(&s, i, knock);
            format!("{v}\n")
        })
        .collect();
    let url = serve(Router::new().route("/api/v1/flows", get(move || async move { body }))).await;
    let dir = tempfile::tempdir().unwrap();
    let (inv_path, _) = files(&s, dir.path());
    let run = |extra: Option<&str>| {
        let mut args = vec![
            "recommend".to_owned(),
            "--agent".into(),
            url.clone(),
            "--inventory".into(),
            inv_path.clone(),
        ];
        args.extend(extra.map(str::to_owned));
        bin(args)
    };
    let (legit, db, world) = (&s.flows[0], &s.flows[6], &s.flows[knock]);
    let out = run(None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for want in KNOCK_NOTES {
        assert!(stderr.contains(want), "{want}\n{stderr}");
    }
    assert!(
        stderr.contains("(5 flow(s); ingress denied, isolated by shop/db-np; 2 packet(s) dropped (NETFILTER_DROP) by shop/db-np): not learned"),
        "{stderr}"
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(allows(&yaml, &s, &[legit, db, world]), [true, false, false]);
    let out = run(Some("--include-denied")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(allows(&yaml, &s, &[legit, db, world]), [true, true, true]);
}

const PROM_DENIED: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"80","protocol":"TCP","verdict":"allowed"},"value":[1795000000,"42"]},
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db-subnet","dst_port":"5432","protocol":"TCP","verdict":"denied"},"value":[1795000000,"5"]},
 {"metric":{"src_namespace":"frontend","src_kind":"Deployment","src_workload":"web","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db-subnet","dst_port":"5432","protocol":"TCP","verdict":"dropped","policy":"frontend/web-np"},"value":[1795000000,"10"]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"worker","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"80","protocol":"TCP","verdict":"denied"},"value":[1795000000,"3"]},
 {"metric":{"src_namespace":"backend","src_kind":"Deployment","src_workload":"worker","dst_namespace":"backend","dst_kind":"Deployment","dst_workload":"api","dst_port":"80","protocol":"TCP","verdict":"unenforced","policy":"backend/api-np"},"value":[1795000000,"3"]}
]}}"#;

/// `recommend --prometheus`: the query asks for the verdict of `netpol_observe_flows_total`,
/// the drops and the unenforced flows. web → db-subnet (`denied` series, dropped by
/// frontend/web-np) is not learned; worker → api (`denied`, but `unenforced`: delivered all the
/// same) is learned and noted; `--include-denied` learns web → db-subnet too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_denied_series_are_not_learned() {
    let s = three_tier();
    let (url, queries) = fake_prometheus(PROM_DENIED).await;
    let dir = tempfile::tempdir().unwrap();
    let (inv_path, subnets) = files(&s, dir.path());
    let run = |extra: Option<&str>| {
        let mut args = vec![
            "recommend".to_owned(),
            "--prometheus".into(),
            url.clone(),
            "--inventory".into(),
            inv_path.clone(),
            "--subnets".into(),
            subnets.clone(),
        ];
        args.extend(extra.map(str::to_owned));
        bin(args)
    };
    // The flows the series stand for (web and worker pods, api's Service, the database).
    let web = s
        .cluster
        .pods
        .iter()
        .find(|p| p.workload == "web")
        .unwrap()
        .ip;
    let worker = s
        .cluster
        .pods
        .iter()
        .find(|p| p.workload == "worker")
        .unwrap()
        .ip;
    let legit = tcp(web, "10.96.0.20", 80, 0);
    let db = tcp(web, "10.0.2.10", 5432, 0);
    let delivered = tcp(worker, "10.96.0.20", 80, 0);

    let out = run(None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let q = queries.lock().unwrap().clone();
    for want in [
        "sum by (src_namespace, src_kind, src_workload, dst_namespace, dst_kind, dst_workload, dst_port, protocol, verdict) ((netpol_observe_flows_total unless netpol_observe_flows_total offset 86400s) or (increase(netpol_observe_flows_total[86400s]) > 0))",
        "increase(netpol_observe_drops_total{reason!~\"NO_SOCKET|IP_RPFILTER\"}[86400s])",
        "\"verdict\", \"dropped\"",
        "increase(netpol_observe_unenforced_flows_total[86400s])",
        "\"verdict\", \"unenforced\"",
    ] {
        assert!(q[0].contains(want), "{want}\n{q:?}");
    }
    for want in [
        "note: denied by the policies in force — review: frontend/Deployment/web -> subnet/db-subnet:5432/TCP (1 flow(s); verdict=\"denied\" in Prometheus, isolated by frontend/web-np; 10 packet(s) dropped by frontend/web-np): not learned: no allow rule written (--include-denied to learn it)\n",
        "note: denied by the policies in force — review: backend/Deployment/worker -> backend/Deployment/api via Service backend/api:80/TCP (1 flow(s); verdict=\"denied\" in Prometheus, isolated by backend/api-np): delivered all the same (the CNI did not enforce the policy): kept as observed traffic\n",
    ] {
        assert!(stderr.contains(want), "{want}\n{stderr}");
    }
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        allows(&yaml, &s, &[&legit, &db, &delivered]),
        [true, false, true]
    );
    let out = run(Some("--include-denied")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        allows(&yaml, &s, &[&legit, &db, &delivered]),
        [true, true, true]
    );
}
