//! `recommend --format cilium` and DNS names as evidence: named external peers become `toFQDNs`
//! (with the DNS-proxy rule) and the `netpol-observe.io/dns-names` annotation of the
//! NetworkPolicy output; the API server, nodes and a pod's own node become entities; every
//! output validates against Cilium's CRD schema (`../shared/schemas/cilium`), round-trips
//! through the typed structs, and keeps every observed flow under Cilium's semantics (the
//! scenario checker of `recommend_support` runs the Cilium checker on every scenario too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    policy::PolicyEngine,
    recommend::{
        DNS_NAMES, PolicyFormat,
        cilium::{
            check::{Checker, Side},
            types::{CiliumNetworkPolicy, EgressRule, Entity},
        },
        dns_names::parse_annotation,
        format::join_stream,
        render_objects,
    },
};
use recommend_support::*;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend")
        .join(name)
}

fn golden(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual, expected,
        "{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"
    );
}

fn egress(p: &CiliumNetworkPolicy) -> &[EgressRule] {
    p.spec.egress.as_deref().unwrap()
}

fn cilium_policy<'a>(
    list: &'a [CiliumNetworkPolicy],
    ns: &str,
    name: &str,
) -> &'a CiliumNetworkPolicy {
    list.iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no CiliumNetworkPolicy {ns}/{name}"))
}

#[test]
fn named_external_peers_become_fqdn_rules_and_evidence() {
    let s = saas_egress(false);
    let out = s.check();
    // NetworkPolicy: unchanged rules, the names as evidence on the policy.
    let np = policy(&out.policies, "shop", "checkout-np");
    let value = annotation(np, DNS_NAMES).unwrap();
    assert_eq!(
        value,
        r#"{"35.190.0.5/32":["hooks.slack.com"],"54.1.2.0/27":["api.stripe.com"]}"#
    );
    let parsed = parse_annotation(value).unwrap();
    assert_eq!(parsed.len(), 2);
    let blocks: Vec<String> = np.spec.as_ref().unwrap().egress.as_ref().unwrap()[1]
        .to
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.ip_block.as_ref().unwrap().cidr.clone())
        .collect();
    assert_eq!(blocks, ["35.190.0.5/32", "54.1.2.0/27"]);
    assert_eq!(
        annotation(policy(&out.policies, "shop", "default-deny"), DNS_NAMES),
        None
    );

    // Cilium: the named-only block becomes its name, the mixed block stays (its unnamed
    // address) and adds its name; the lookups go through the DNS proxy.
    let cnp = cilium_policy(&out.cilium, "shop", "checkout-np");
    let rules = serde_json::to_value(egress(cnp)).unwrap();
    assert_eq!(
        rules,
        json!([
            {"toCIDRSet": [{"cidr": "54.1.2.0/27"}],
             "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
            {"toFQDNs": [{"matchName": "api.stripe.com"}, {"matchName": "hooks.slack.com"}],
             "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
            {"toEndpoints": [{"matchLabels": {"k8s-app": "kube-dns", "k8s:io.kubernetes.pod.namespace": "kube-system"}}],
             "toPorts": [{"ports": [{"port": "53", "protocol": "TCP"}, {"port": "53", "protocol": "UDP"}],
                          "rules": {"dns": [{"matchPattern": "*"}]}}]}
        ])
    );
    assert_eq!(
        cnp.metadata.annotations.as_ref().unwrap().get(DNS_NAMES),
        Some(&value.to_owned())
    );
    let ingress = serde_json::to_value(cnp.spec.ingress.as_ref().unwrap()).unwrap();
    assert_eq!(ingress, json!([{}]), "nothing observed in: default deny");

    // Rotation: hooks.slack.com moved to 35.190.0.77. Cilium follows the name; the
    // NetworkPolicy's ipBlock does not (the agent's rotation alert reads the annotation).
    let inventory = &out.inventory;
    let attributor = Attributor::new(inventory, &Subnets::default());
    let engine = PolicyEngine::compile(&out.policies, inventory).unwrap();
    let checker = Checker::new(&out.cilium, inventory, &attributor);
    let pod = s
        .cluster
        .pods
        .iter()
        .find(|p| p.workload == "checkout")
        .unwrap()
        .ip;
    let mut verdicts = Vec::new();
    for (addr, port, names) in [
        ("35.190.0.77", 443, vec!["hooks.slack.com"]),
        ("35.190.0.77", 443, vec!["evil.example.com"]),
        ("35.190.0.5", 80, vec!["hooks.slack.com"]),
        ("54.1.2.21", 443, vec![]),
        ("54.1.2.40", 443, vec![]),
    ] {
        let mut f = tcp(pod, addr, port, 99);
        f.dst.dns_names = names.into_iter().map(str::to_owned).collect();
        attributor.attribute(&mut f);
        verdicts.push((
            format!("{addr}:{port}"),
            engine.evaluate_flow(&f).allowed,
            checker.evaluate(&f).allowed,
        ));
    }
    let v = |a: &str, np: bool, cilium: bool| (a.to_owned(), np, cilium);
    assert_eq!(
        verdicts,
        [
            v("35.190.0.77:443", false, true),
            v("35.190.0.77:443", false, false),
            v("35.190.0.5:80", false, false),
            v("54.1.2.21:443", true, true),
            v("54.1.2.40:443", false, false),
        ]
    );
    let (allowed, denied) = out.cilium_checked;
    assert_eq!(allowed, s.flows.len());
    assert!(denied > 0);
}

/// app/app reaches the API server (Service default/kubernetes, its endpoint 10.0.9.1:6443),
/// a hostNetwork port on its own node (node-1, 192.168.1.10:9100) and the kubelet of node-2
/// (192.168.1.11:10250); node-2 probes it.
fn platform_peers() -> Scenario {
    let mut c = Cluster::new();
    let app = c.deployment("app", "app", 1, &[("http", 8080, "TCP")]);
    c.deployment("app", "other", 1, &[("http", 8080, "TCP")]);
    let agent = c.deployment("app", "agent", 1, &[]);
    c.objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                 "ports": [{"name": "https", "port": 443, "targetPort": 6443, "protocol": "TCP"}]}
    }));
    c.objects.push(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.9.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    }));
    let mut s = Scenario::new(c);
    s.flows.push(tcp(app[0], "10.96.0.1", 443, 1));
    s.flows.push(tcp(app[0], "192.168.1.10", 9100, 2));
    s.flows.push(tcp(app[0], "192.168.1.11", 10250, 3));
    s.flows
        .push(tcp(ip("192.168.1.11"), &app[0].to_string(), 8080, 4));
    s.flows
        .push(tcp(ip("192.168.1.10"), &app[0].to_string(), 8080, 5));
    // agent's only traffic: the kubelet of its own node (node-1).
    s.flows.push(tcp(agent[0], "192.168.1.10", 10250, 6));
    s
}

#[test]
fn api_server_and_nodes_become_entities() {
    let s = platform_peers();
    let out = s.check();
    let cnp = cilium_policy(&out.cilium, "app", "app-np");
    assert_eq!(
        serde_json::to_value(egress(cnp)).unwrap(),
        json!([
            {"toEntities": ["remote-node"], "toPorts": [{"ports": [{"port": "10250", "protocol": "TCP"}]}]},
            {"toEntities": ["host"], "toPorts": [{"ports": [{"port": "10250", "protocol": "TCP"},
                                                            {"port": "9100", "protocol": "TCP"}]}]},
            {"toEntities": ["kube-apiserver"], "toPorts": [{"ports": [{"port": "6443", "protocol": "TCP"}]}]}
        ])
    );
    assert_eq!(
        serde_json::to_value(cnp.spec.ingress.as_ref().unwrap()).unwrap(),
        json!([{"fromEntities": ["host", "remote-node"],
                "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}])
    );
    // The own-node egress is implicit for NetworkPolicy: only the Cilium rule names it.
    let np = policy(&out.policies, "app", "app-np");
    let np_egress = np.spec.as_ref().unwrap().egress.as_ref().unwrap();
    assert_eq!(np_egress.len(), 2);
    // Without the host rule, Cilium would deny it: the checker says so.
    let inventory = &out.inventory;
    let attributor = Attributor::new(inventory, &Subnets::default());
    let mut without = out.cilium.clone();
    for p in &mut without {
        if let Some(rules) = p.spec.egress.as_mut() {
            rules.retain(|r| r.to_entities.as_deref() != Some(&[Entity::Host][..]));
        }
    }
    let checker = Checker::new(&without, inventory, &attributor);
    let mut f = s.flows[1].clone();
    attributor.attribute(&mut f);
    let v = checker.evaluate(&f);
    assert_eq!(
        v.egress,
        Side::Denied(vec!["app/app-np".to_owned(), "app/default-deny".to_owned()])
    );
    assert_eq!(v.ingress, Side::NotEnforced);
    assert_eq!(out.cilium_checked.0, s.flows.len());
    // agent has no NetworkPolicy (its traffic is implicit there) but a Cilium policy allowing
    // exactly that traffic, which the namespace's default deny would block.
    let names: Vec<&str> = out
        .cilium
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "app-np", "agent-np"]);
    let nps: Vec<&str> = out
        .policies
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(nps, ["default-deny", "app-np"]);
    let agent = cilium_policy(&out.cilium, "app", "agent-np");
    assert_eq!(
        serde_json::to_value(&agent.spec).unwrap(),
        json!({"endpointSelector": {"matchLabels": {"app": "agent"}},
               "egress": [{"toEntities": ["host"],
                           "toPorts": [{"ports": [{"port": "10250", "protocol": "TCP"}]}]}]})
    );
}

/// Every scenario's Cilium output, in one stream (the golden file, also applied to a real API
/// server by `tests/tests/policy_formats.rs`).
fn all_outputs() -> String {
    let mut stream = String::new();
    for s in [three_tier(), saas_egress(false), platform_peers()] {
        let inventory = s.cluster.inventory();
        let rec = netpol_observe_core::recommend::Recommender::new(
            &inventory,
            &s.subnets,
            s.config.clone(),
        )
        .recommend(&s.flows);
        stream.push_str(&join_stream(
            &render_objects(PolicyFormat::Cilium, &rec, &inventory).unwrap(),
        ));
    }
    stream
}

#[test]
fn cilium_output_is_stable() {
    golden("cilium.yaml", &all_outputs());
}

/// Validates every document of a YAML stream (argument 2) against the CRD (argument 1) and
/// prints the number of documents.
const VALIDATE: &str = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
n = 0
for obj in yaml.safe_load_all(open(sys.argv[2])):
    assert obj["kind"] == crd["spec"]["names"]["kind"], obj["kind"]
    version = obj["apiVersion"].split("/")[1]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}: {list(e.path)}: {e.message}" for e in errors)
    n += 1
print(n)
"#;

#[test]
fn cilium_output_validates_against_the_crd_schema() {
    let test = "cilium_output_validates_against_the_crd_schema";
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let crd = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/schemas/cilium/ciliumnetworkpolicies.yaml");
    let python_ok = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !crd.is_file() || !python_ok {
        assert!(
            !ci,
            "{test}: CI=true requires {} and python3 with jsonschema + pyyaml",
            crd.display()
        );
        eprintln!(
            "SKIPPED {test}: no {} or no python3 jsonschema/pyyaml",
            crd.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cilium.yaml");
    let stream = all_outputs();
    std::fs::write(&file, &stream).unwrap();
    let out = Command::new("python3")
        .args(["-c", VALIDATE])
        .arg(&crd)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CRD schema validation: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = stream.matches("---\n").count();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        docs.to_string()
    );
    // And they round-trip through the typed structs (unknown fields refused).
    let typed: Vec<CiliumNetworkPolicy> = serde_saphyr::from_multiple(&stream).unwrap();
    assert_eq!(typed.len(), docs);
    assert_eq!(docs, 10);
}

#[test]
fn cli_writes_cilium_policies_per_namespace() {
    let s = saas_egress(false);
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, s.cluster.yaml()).unwrap();
    let flows = dir.path().join("flows.jsonl");
    let text: String = s
        .flows
        .iter()
        .map(|f| format!("{}\n", serde_json::to_string(f).unwrap()))
        .collect();
    std::fs::write(&flows, text).unwrap();
    let out_dir = dir.path().join("out/");
    let out = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["recommend", "--format", "cilium", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .arg("--write")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["shop.yaml"]);
    let text = std::fs::read_to_string(out_dir.join("shop.yaml")).unwrap();
    let typed: Vec<CiliumNetworkPolicy> = serde_saphyr::from_multiple(&text).unwrap();
    let names: Vec<&str> = typed
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["default-deny", "checkout-np"]);
    let fqdns: BTreeMap<&str, usize> = typed
        .iter()
        .flat_map(|p| p.spec.egress.iter().flatten())
        .flat_map(|r| r.to_fqdns.iter().flatten())
        .map(|q| (q.match_name.as_deref().unwrap(), 1))
        .collect();
    assert_eq!(
        fqdns.keys().copied().collect::<Vec<_>>(),
        ["api.stripe.com", "hooks.slack.com"]
    );
    // Stdout and the default format: NetworkPolicies, as before.
    let np = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["recommend", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .output()
        .unwrap();
    assert!(np.status.success());
    let policies = parse_policies(&String::from_utf8(np.stdout).unwrap());
    assert_eq!(policies.len(), 2);
    // -o json: one List of the same objects.
    let json = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["recommend", "--format", "cilium", "-o", "json", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .output()
        .unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let items: Vec<CiliumNetworkPolicy> = serde_json::from_value(list["items"].clone()).unwrap();
    assert_eq!(items, typed);
}

/// What [`lab_flows_under_cilium`] found: the Cilium policies and, per forbidden probe, the
/// denying side and policies.
struct LabCheck {
    cilium: Vec<CiliumNetworkPolicy>,
    denied: Vec<String>,
}

/// The flows the agents recorded in a run of a shipped lab scenario (`cargo xtask lab`: its
/// `flows.jsonl`, `inventory.yaml`, `subnets.yaml` in `tests/fixtures/<dir>`): every flow is
/// allowed by the recommended NetworkPolicies and by their Cilium form; each `forbidden` probe
/// is denied by both.
fn lab_flows_under_cilium(
    dir: &str,
    flows_expected: usize,
    forbidden: &[netpol_observe_core::flow::FlowRecord],
) -> LabCheck {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let inventory = netpol_observe_core::inventory::Inventory::from_yaml_str(
        &std::fs::read_to_string(dir.join("inventory.yaml")).unwrap(),
        "inventory.yaml",
    )
    .unwrap();
    let subnets = Subnets::from_path(&dir.join("subnets.yaml")).unwrap();
    let flows: Vec<netpol_observe_core::flow::FlowRecord> =
        std::fs::read_to_string(dir.join("flows.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(flows.len(), flows_expected);
    let rec = netpol_observe_core::recommend::Recommender::new(
        &inventory,
        &subnets,
        netpol_observe_core::recommend::RecommendConfig::default(),
    )
    .recommend(&flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    let stream = join_stream(&render_objects(PolicyFormat::Cilium, &rec, &inventory).unwrap());
    let cilium: Vec<CiliumNetworkPolicy> = serde_saphyr::from_multiple(&stream).unwrap();
    let attributor = Attributor::new(&inventory, &subnets);
    let engine = PolicyEngine::compile(&rec.policies, &inventory).unwrap();
    let checker = Checker::new(&cilium, &inventory, &attributor);
    for f in &flows {
        let mut f = f.clone();
        attributor.attribute(&mut f);
        assert!(engine.evaluate_flow(&f).allowed, "{f:?}");
        let v = checker.evaluate(&f);
        assert!(v.allowed, "{f:?}\n{v:?}\n{stream}");
    }
    let mut denied = Vec::new();
    for f in forbidden {
        let mut f = f.clone();
        attributor.attribute(&mut f);
        assert!(!engine.evaluate_flow(&f).allowed, "{f:?}");
        let v = checker.evaluate(&f);
        assert!(
            !v.allowed,
            "forbidden probe allowed by the Cilium policies: {f:?}\n{v:?}\n{stream}"
        );
        denied.push(match (&v.egress, &v.ingress) {
            (Side::Denied(p), _) => format!("egress {}", p.join(",")),
            (_, Side::Denied(p)) => format!("ingress {}", p.join(",")),
            _ => unreachable!(),
        });
    }
    LabCheck { cilium, denied }
}

/// `deploy/lab/shop.yaml` (two nodes): all 23 recorded flows kept (API server as
/// kube-apiserver, DNS, Services by their backends, the database subnet, the public entry
/// point), the six forbidden probes denied by the policies the lab's enforcement names.
#[test]
fn lab_shop_flows_under_cilium() {
    let (web, cache) = (ip("10.244.0.11"), ip("10.244.0.12"));
    let out = lab_flows_under_cilium(
        "lab-shop",
        23,
        &[
            tcp(web, "10.0.2.1", 5432, 1),
            tcp(ip("203.0.113.1"), "10.244.1.11", 9000, 2),
            tcp(web, "10.244.0.12", 6379, 3),
            tcp(web, "10.244.1.11", 9100, 4),
            tcp(web, "10.96.0.1", 443, 5),
            tcp(cache, "10.96.0.21", 80, 6),
        ],
    );
    assert_eq!(out.cilium.len(), 5);
    assert_eq!(
        out.denied,
        [
            "egress frontend/default-deny,frontend/web-np",
            "ingress backend/api-np,backend/default-deny",
            "egress frontend/default-deny,frontend/web-np",
            "egress frontend/default-deny,frontend/web-np",
            "egress frontend/default-deny,frontend/web-np",
            "egress backend/cache-np,backend/default-deny",
        ]
    );
    // The API server is reached as the entity.
    let api_np = cilium_policy(&out.cilium, "backend", "api-np");
    assert!(
        egress(api_np)
            .iter()
            .any(|r| r.to_entities.as_deref() == Some(&[Entity::KubeApiserver][..]))
    );
}

/// `deploy/lab/voting.yaml` (one node): all 15 recorded flows kept (clients through the load
/// balancer, Services, the UDP statsd subnet), the four forbidden probes denied.
#[test]
fn lab_voting_flows_under_cilium() {
    let ui = ip("10.244.0.11");
    let out = lab_flows_under_cilium(
        "lab-voting",
        15,
        &[
            tcp(ui, "10.244.0.14", 5432, 1),
            tcp(ui, "10.96.0.23", 6379, 2),
            tcp(ip("198.51.100.1"), "10.244.0.13", 8000, 3),
            udp(ui, "192.0.2.1", 8125, 4),
        ],
    );
    assert_eq!(out.cilium.len(), 5);
    assert_eq!(
        out.denied,
        [
            "egress vote/default-deny,vote/ui-np",
            "egress vote/default-deny,vote/ui-np",
            "ingress vote/appserver-np,vote/default-deny",
            "egress vote/default-deny,vote/ui-np",
        ]
    );
    let appserver = cilium_policy(&out.cilium, "vote", "appserver-np");
    assert!(egress(appserver).iter().any(|r| {
        r.to_cidr_set
            .iter()
            .flatten()
            .any(|c| c.cidr == "192.0.2.0/28")
    }));
}

/// Lookups through node-local DNS (169.254.20.10): Cilium never sees that address (the cache is
/// a hostNetwork DaemonSet, or pods behind a Local Redirect Policy), so the rule names the host
/// and the node-local-dns pods, with the DNS-proxy rule when names are followed.
#[test]
fn node_local_dns_is_the_host_or_its_pods() {
    let mut c = Cluster::new();
    let app = c.deployment("app", "app", 2, &[]);
    let mut s = Scenario::new(c);
    for (i, p) in app.iter().enumerate() {
        let m = i64::try_from(i).unwrap() * 10;
        s.flows.push(udp(*p, "169.254.20.10", 53, m + 1));
        let mut f = tcp(*p, "35.190.0.5", 443, m + 2);
        f.dst.dns_names = vec!["hooks.slack.com".to_owned()];
        s.flows.push(f);
    }
    let out = s.check();
    let cnp = cilium_policy(&out.cilium, "app", "app-np");
    assert_eq!(
        serde_json::to_value(egress(cnp)).unwrap(),
        json!([
            {"toFQDNs": [{"matchName": "hooks.slack.com"}],
             "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
            {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                              "k8s:k8s-app": "node-local-dns"}}],
             "toEntities": ["host"],
             "toPorts": [{"ports": [{"port": "53", "protocol": "TCP"}, {"port": "53", "protocol": "UDP"}],
                          "rules": {"dns": [{"matchPattern": "*"}]}}]}
        ])
    );
    assert_eq!(out.cilium_checked.0, s.flows.len());
}
