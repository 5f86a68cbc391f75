//! Issue 20, "Recommendations that survive a real cluster": platform traffic (the API server
//! and other Services without selector, node-local DNS, cloud metadata), public entry points,
//! warnings a reviewer sees (workloads isolated without traffic, short windows, selectors that
//! match nothing), left-out flows re-checked, the evidence annotations' YAML.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    flow::FlowRecord,
    inventory::Inventory,
    policy::PolicyEngine,
    recommend::{
        AGGREGATION, FLOWS, LEFT_OUT, PLATFORM, PublicIngress, RecommendConfig, Recommender,
        UNOBSERVED, WARNING, diff, render_yaml,
        verify::{selects_nothing, verify},
    },
};
use recommend_support::*;
use serde_json::json;

/// `default/kubernetes` as the API server allocates it: no selector, ClusterIP 10.96.0.1:443,
/// an EndpointSlice with the control plane's address on 6443 (outside the pod network).
fn api_server(c: &mut Cluster, endpoint: &str) {
    c.namespace("default");
    c.objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "type": "ClusterIP",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
    }));
    c.objects.push(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    }));
}

fn attributed(inv: &Inventory, flows: &[FlowRecord]) -> Vec<FlowRecord> {
    let attributor = Attributor::new(inv, &Subnets::default());
    flows
        .iter()
        .cloned()
        .map(|mut f| {
            attributor.attribute(&mut f);
            f
        })
        .collect()
}

fn blocks(
    rules: &[Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>],
) -> Vec<String> {
    rules
        .iter()
        .flat_map(|r| r.iter().flat_map(|v| v.iter()))
        .filter_map(|p| p.ip_block.as_ref())
        .map(|b| b.cidr.clone())
        .collect()
}

/// Item 1: a namespace whose pods talk to the API server gets an egress rule to its endpoints
/// on their real port, named in an annotation; `verify` of the output denies nothing.
#[test]
fn api_server_egress_is_kept_and_verifies_clean() {
    let mut c = Cluster::new();
    api_server(&mut c, "172.18.0.2");
    let op = c.deployment("ops", "operator", 2, &[("metrics", 8080, "TCP")]);
    let web = c.deployment("ops", "web", 1, &[("http", 8080, "TCP")]);
    let mut s = Scenario::new(c);
    for (i, p) in op.iter().enumerate() {
        for m in 0..3 {
            s.flows.push(tcp(*p, "10.96.0.1", 443, (i * 3 + m) as i64));
        }
    }
    s.flows.push(tcp(op[0], &web[0].to_string(), 8080, 9));
    let out = s.check();
    assert_eq!(out.rec.stats.skipped, 0, "{:#?}", out.rec.notes);
    assert!(
        !out.rec.notes.iter().any(|n| n.contains("left out")),
        "{:#?}",
        out.rec.notes
    );
    let p = policy(&out.policies, "ops", "operator-np");
    let egress = p.spec.as_ref().unwrap().egress.as_ref().unwrap();
    let rule = egress
        .iter()
        .find(|r| {
            r.to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .is_some_and(|b| b.cidr == "172.18.0.2/32")
        })
        .expect("a rule to the API server's endpoint");
    let port = &rule.ports.as_ref().unwrap()[0];
    assert_eq!(
        port.port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6443))
    );
    let platform = annotation(p, PLATFORM).expect("platform annotation");
    assert!(
        platform.contains("the API server (Service default/kubernetes)"),
        "{platform}"
    );
    assert!(platform.contains("172.18.0.2"), "{platform}");

    // verify of the recommendation: 0 denied, the API server flows included.
    let flows = attributed(&out.inventory, &s.flows);
    let engine = PolicyEngine::compile(&out.policies, &out.inventory).unwrap();
    let report = verify(&engine, &flows);
    assert_eq!(report.flows, 7);
    assert_eq!(report.denied_flows, 0, "{}", report.to_text());
    // The same flows to a different endpoint port would be denied: the rule is the port.
    let mut other = tcp(op[0], "172.18.0.2", 443, 1);
    Attributor::new(&out.inventory, &Subnets::default()).attribute(&mut other);
    assert!(!engine.evaluate_flow(&other).allowed);
}

/// Item 1: any Service without selector (a database registered by its address), and a Service
/// with neither backend nor endpoint: the first is kept, the second is listed — with the fact
/// that the output denies it — in the notes and on the namespace's default-deny.
#[test]
fn selectorless_services_are_kept_and_left_out_flows_are_rechecked() {
    let mut c = Cluster::new();
    c.namespace("shop");
    c.objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}
    }));
    c.objects.push(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.7.5"]}, {"addresses": ["10.0.7.6"]}],
        "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}]
    }));
    c.service(
        "shop",
        "gone",
        "10.96.0.51",
        json!({"app": "gone"}),
        &[(80, json!(8080), "TCP")],
    );
    let api = c.deployment("shop", "api", 1, &[("http", 8080, "TCP")]);
    let inv = c.inventory();
    let flows = vec![
        tcp(api[0], "10.96.0.50", 5432, 1),
        tcp(api[0], "10.96.0.50", 5432, 2),
        tcp(api[0], "10.96.0.51", 80, 3),
    ];
    let rec =
        Recommender::new(&inv, &Subnets::default(), RecommendConfig::default()).recommend(&flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    let p = policy(&rec.policies, "shop", "api-np");
    let egress = p.spec.as_ref().unwrap().egress.as_ref().unwrap();
    let to: Vec<Option<&Vec<_>>> = egress.iter().map(|r| r.to.as_ref()).collect();
    assert_eq!(blocks(&to), ["10.0.7.5/32", "10.0.7.6/32"]);
    let port = &egress[0].ports.as_ref().unwrap()[0];
    assert_eq!(
        port.port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15432))
    );
    assert!(
        annotation(p, PLATFORM)
            .unwrap()
            .contains("Service shop/db (no selector)")
    );
    // The flow to the Service without any backend: listed, with the verdict.
    assert_eq!(rec.stats.skipped, 1);
    assert_eq!(rec.stats.left_out_denied, 1);
    assert!(
        rec.notes.iter().any(|n| n.contains("left out and DENIED")
            && n.contains("Service shop/gone has no backend pod")),
        "{:#?}",
        rec.notes
    );
    let dd = policy(&rec.policies, "shop", "default-deny");
    assert!(annotation(dd, LEFT_OUT).unwrap().contains("shop/gone"));
    // Every flow is either allowed by the output or listed with its reason.
    let engine = PolicyEngine::compile(&rec.policies, &inv).unwrap();
    let report = verify(&engine, &attributed(&inv, &flows));
    assert_eq!(report.denied_flows, rec.stats.left_out_denied);
}

/// Item 1: a cloud metadata endpoint is kept as observed (never widened nor swallowed by a
/// whole-Internet block, whose except list holds 169.254/16) and named.
#[test]
fn metadata_endpoint_kept_only_when_observed() {
    let mut c = Cluster::new();
    let app = c.deployment("app", "app", 1, &[]);
    let other = c.deployment("app", "other", 1, &[]);
    let mut s = Scenario::new(c);
    s.flows.push(tcp(app[0], "169.254.169.254", 80, 1));
    for i in 0..20 {
        s.flows
            .push(tcp(app[0], &format!("198.51.100.{}", i + 1), 443, 2 + i));
        s.flows
            .push(tcp(other[0], &format!("198.51.100.{}", i + 1), 443, 2 + i));
    }
    let out = s.check();
    let p = policy(&out.policies, "app", "app-np");
    let to: Vec<_> = p
        .spec
        .as_ref()
        .unwrap()
        .egress
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.to.as_ref())
        .collect();
    assert!(
        blocks(&to).contains(&"169.254.169.254/32".to_owned()),
        "{:?}",
        blocks(&to)
    );
    assert!(
        annotation(p, PLATFORM)
            .unwrap()
            .contains("cloud metadata endpoint 169.254.169.254")
    );
    let o = policy(&out.policies, "app", "other-np");
    let to: Vec<_> = o
        .spec
        .as_ref()
        .unwrap()
        .egress
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.to.as_ref())
        .collect();
    assert!(!blocks(&to).contains(&"169.254.169.254/32".to_owned()));
    assert!(annotation(o, PLATFORM).is_none());
}

fn load_balanced(kind: &str, rule: PublicIngress) -> (Scenario, Vec<std::net::IpAddr>) {
    let mut c = Cluster::new();
    let web = c.deployment("shop", "web", 1, &[("http", 8080, "TCP")]);
    let admin = c.deployment("shop", "admin", 1, &[("http", 8080, "TCP")]);
    c.objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.30", "type": kind, "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}
    }));
    let mut s = Scenario::new(c);
    s.config.public_ingress = rule;
    for (i, client) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        s.flows
            .push(tcp(ip(client), &web[0].to_string(), 8080, i as i64));
        s.flows
            .push(tcp(ip(client), &admin[0].to_string(), 8080, i as i64));
    }
    (s, vec![web[0], admin[0]])
}

/// Item 2: a workload behind a LoadBalancer (or NodePort) Service that saw 3 Internet clients
/// is open to the Internet on that port, with the reason; a ClusterIP-only workload with the
/// same clients keeps them, annotated with the real prefix; `observed` keeps them too.
#[test]
fn public_entry_points_are_open_to_the_internet() {
    for kind in ["LoadBalancer", "NodePort"] {
        let (s, _) = load_balanced(kind, PublicIngress::Any);
        let out = s.check();
        let web = policy(&out.policies, "shop", "web-np");
        let from: Vec<_> = web
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| r.from.as_ref())
            .collect();
        assert_eq!(blocks(&from), ["0.0.0.0/0", "::/0"], "{kind}");
        let block = web.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
            .from
            .as_ref()
            .unwrap()[0]
            .ip_block
            .clone()
            .unwrap();
        let except = block.except.unwrap();
        assert!(
            except.contains(&"10.0.0.0/8".to_owned())
                && except.contains(&"192.168.0.0/16".to_owned())
        );
        let why = annotation(web, AGGREGATION).unwrap();
        assert!(
            why.contains(&format!(
                "public entry point (backs {kind} Service shop/web"
            )),
            "{why}"
        );
        // Not an entry point: the observed clients, and the annotation names the prefix.
        let admin = policy(&out.policies, "shop", "admin-np");
        let from: Vec<_> = admin
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| r.from.as_ref())
            .collect();
        assert_eq!(blocks(&from), ["203.0.113.0/30"]);
        assert!(
            annotation(admin, AGGREGATION)
                .unwrap()
                .contains("written as 203.0.113.0/30")
        );
    }
    let (s, _) = load_balanced("LoadBalancer", PublicIngress::Observed);
    let out = s.check();
    let web = policy(&out.policies, "shop", "web-np");
    let from: Vec<_> = web
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.from.as_ref())
        .collect();
    assert_eq!(blocks(&from), ["203.0.113.0/30"]);
    let why = annotation(web, AGGREGATION).unwrap();
    assert!(
        why.contains("written as 203.0.113.0/30") && why.contains("--public-ingress observed"),
        "{why}"
    );
}

/// Item 3: a workload with no observed traffic in a namespace that gets default-deny is named
/// on the policy and in a warning; a short window warns on every policy and in the notes.
#[test]
fn silent_isolation_and_short_windows_are_warned() {
    let mut c = Cluster::new();
    let web = c.deployment("shop", "web", 1, &[("http", 8080, "TCP")]);
    let api = c.deployment("shop", "api", 1, &[("http", 8080, "TCP")]);
    c.deployment("shop", "batch", 1, &[]);
    c.statefulset("shop", "ledger", 1, &[]);
    let inv = c.inventory();
    let flows = vec![
        tcp(web[0], &api[0].to_string(), 8080, 0),
        tcp(web[0], &api[0].to_string(), 8080, 5),
    ];
    let rec =
        Recommender::new(&inv, &Subnets::default(), RecommendConfig::default()).recommend(&flows);
    let dd = policy(&rec.policies, "shop", "default-deny");
    assert_eq!(
        annotation(dd, UNOBSERVED),
        Some("Deployment/batch, StatefulSet/ledger")
    );
    let warning = annotation(dd, WARNING).unwrap();
    assert!(
        warning.contains("isolates 2 workload(s) with no observed flow"),
        "{warning}"
    );
    assert!(
        rec.notes
            .iter()
            .any(|n| n.starts_with("warning: shop/default-deny isolates 2")),
        "{:#?}",
        rec.notes
    );
    // A 5-minute window: every policy says so, and so do the notes.
    assert!(
        rec.notes
            .iter()
            .any(|n| n.starts_with("warning: the observation window is 302s")),
        "{:#?}",
        rec.notes
    );
    for p in &rec.policies {
        assert!(
            annotation(p, WARNING)
                .unwrap()
                .contains("observation window is 302s, shorter than 3600s"),
            "{:?}",
            p.metadata.name
        );
    }
}

/// Item 4: the default-deny counts each flow once (not once per end), the timestamps are
/// quoted YAML strings (a YAML 1.1 reader would make them datetimes).
#[test]
fn default_deny_counts_flows_once_and_timestamps_are_quoted() {
    let s = three_tier();
    let out = s.check();
    let backend_flows = s
        .flows
        .iter()
        .filter(|f| {
            let mut f = (*f).clone();
            Attributor::new(&out.inventory, &s.subnets).attribute(&mut f);
            f.src.namespace.as_deref() == Some("backend")
                || f.dst.namespace.as_deref() == Some("backend")
        })
        .count();
    let dd = policy(&out.policies, "backend", "default-deny");
    assert_eq!(
        annotation(dd, FLOWS),
        Some(backend_flows.to_string().as_str())
    );
    let yaml = render_yaml(&out.policies).unwrap();
    for key in ["first-seen", "last-seen", "observation-window"] {
        for line in yaml
            .lines()
            .filter(|l| l.contains(&format!("netpol-observe.io/{key}:")))
        {
            assert!(line.contains(": \"20"), "{line}");
        }
    }
}

/// Item 4: `verify` and `--diff` name the policies and rule peers whose selectors match no
/// pod, instead of only "never exercised".
#[test]
fn selectors_matching_nothing_are_reported() {
    let s = three_tier();
    let inv = s.cluster.inventory();
    let policies = parse_policies(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: backend}
spec:
  podSelector: {matchLabels: {app: apii}}
  ingress: [{from: [{podSelector: {matchLabels: {app: worker}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: backend}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: frontnd}}, podSelector: {matchLabels: {app: web}}}]
  - from: [{podSelector: {matchLabels: {app: worker}}}, {ipBlock: {cidr: 10.9.0.0/16}}]
",
    );
    let found = selects_nothing(&policies, &inv);
    assert_eq!(
        found,
        [
            "backend/api:ingress[0] from[0]: namespaceSelector {kubernetes.io/metadata.name=frontnd} AND podSelector {app=web} matches no pod (the peer allows nothing)",
            "backend/typo: podSelector selects no pod in namespace backend (the policy has no effect)",
        ]
    );
    let engine = PolicyEngine::compile(&policies, &inv).unwrap();
    let flows = attributed(&inv, &s.flows);
    let report = diff::diff(&policies, &inv, &engine, &flows);
    assert_eq!(report.selects_nothing, found);
    let text = report.to_text();
    assert!(
        text.contains(
            "backend/api:ingress[0] (from app=web in namespace frontnd any port; selects no pod)"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: backend/typo: podSelector selects no pod"),
        "{text}"
    );
}
