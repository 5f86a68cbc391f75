//! `recommend --format clusternetworkpolicy`: a Baseline default deny (DNS allowed) and Admin
//! `domainNames` Accept policies for named external peers, next to the namespaced
//! NetworkPolicies. The whole output keeps every observed flow under the engine's tiers
//! (scenarios and the lab's recorded flows, whose forbidden probes stay denied), validates
//! against the ClusterNetworkPolicy CRD schema (`../shared/schemas/network-policy-api`), and
//! round-trips through the typed structs (the strict loader).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use std::{path::PathBuf, process::Command};

use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    flow::FlowRecord,
    inventory::Inventory,
    policy::{
        PolicyEngine, SideResult,
        cluster::{Action, ClusterNetworkPolicy, Tier},
    },
    recommend::{
        PolicyFormat, RecommendConfig, Recommendation, Recommender, cluster_policy,
        format::join_stream, render_objects,
    },
};
use recommend_support::*;

struct Output {
    inventory: Inventory,
    rec: Recommendation,
    stream: String,
    cluster: Vec<ClusterNetworkPolicy>,
    engine: PolicyEngine,
    attributor: Attributor,
}

fn output(inventory: Inventory, subnets: &Subnets, flows: &[FlowRecord]) -> Output {
    let rec = Recommender::new(&inventory, subnets, RecommendConfig::default()).recommend(flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    let stream =
        join_stream(&render_objects(PolicyFormat::ClusterNetworkPolicy, &rec, &inventory).unwrap());
    // Read back with the strict loader: every object, typed.
    let back = Inventory::from_yaml_str(&stream, "output.yaml").unwrap();
    assert_eq!(back.network_policies.len(), rec.policies.len());
    let cluster = back.cluster_network_policies.clone();
    let mut rendered = cluster_policy::render(&rec, &inventory);
    rendered.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    assert_eq!(cluster, rendered, "round trip");
    let engine =
        PolicyEngine::compile_with_cluster(&back.network_policies, &cluster, &inventory).unwrap();
    let attributor = Attributor::new(&inventory, subnets);
    Output {
        inventory,
        rec,
        stream,
        cluster,
        engine,
        attributor,
    }
}

impl Output {
    fn judge(&self, f: &FlowRecord) -> netpol_observe_core::policy::Verdict {
        let mut f = f.clone();
        self.attributor.attribute(&mut f);
        self.engine.evaluate_flow(&f)
    }

    fn keeps_every_flow(&self, flows: &[FlowRecord]) {
        let mut attributed = flows.to_vec();
        for f in &mut attributed {
            self.attributor.attribute(f);
        }
        let denied =
            cluster_policy::check(&self.rec, &self.cluster, &self.inventory, &attributed).unwrap();
        assert!(denied.is_empty(), "{denied:#?}\n{}", self.stream);
        for f in &attributed {
            assert!(
                self.engine.evaluate_flow(f).allowed,
                "{f:?}\n{}",
                self.stream
            );
        }
    }

    fn policy(&self, name: &str) -> &ClusterNetworkPolicy {
        self.cluster
            .iter()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no ClusterNetworkPolicy {name}"))
    }
}

#[test]
fn named_external_peers_become_admin_domain_rules_and_the_baseline_closes_the_rest() {
    let s = saas_egress(true);
    let out = output(s.cluster.inventory(), &s.subnets, &s.flows);
    out.keeps_every_flow(&s.flows);
    let names: Vec<&str> = out.cluster.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["netpol-observe-baseline", "shop.checkout-np.domains"]
    );

    let domains = out.policy("shop.checkout-np.domains");
    assert_eq!(
        (domains.spec.tier, domains.spec.priority),
        (Tier::Admin, 500)
    );
    let subject = domains.spec.subject.pods.as_ref().unwrap();
    assert_eq!(
        serde_json::to_value(subject).unwrap(),
        serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                           "podSelector": {"matchLabels": {"app": "checkout"}}})
    );
    assert_eq!(domains.spec.egress.len(), 1);
    let rule = &domains.spec.egress[0];
    assert_eq!(rule.action, Action::Accept);
    assert_eq!(rule.name.as_deref(), Some("tcp-443"));
    assert_eq!(
        rule.to[0].domain_names.as_deref().unwrap(),
        ["api.stripe.com", "hooks.slack.com"]
    );
    assert_eq!(
        serde_json::to_value(rule.protocols.as_ref().unwrap()).unwrap(),
        serde_json::json!([{"tcp": {"destinationPort": {"number": 443}}}])
    );

    let checkout = out.inventory.pod("shop", "checkout-5f7c9d-p0").unwrap().ips[0];
    // A rotated address of a named API: the Admin Accept, though no ipBlock covers it.
    let mut rotated = tcp(checkout, "18.200.1.1", 443, 90);
    rotated.dst.dns_names = vec!["api.stripe.com".into()];
    let v = out.judge(&rotated);
    assert!(v.allowed);
    assert_eq!(
        v.egress.rules,
        ["shop.checkout-np.domains:egress[0]:tcp-443"].map(|r| format!("cnp/{r}"))
    );
    // Without the name, or on another port: the NetworkPolicy's egress decides (denied).
    let v = out.judge(&tcp(checkout, "18.200.1.1", 443, 91));
    assert_eq!(v.egress.result, SideResult::Denied);
    assert_eq!(v.egress.policies, ["shop/checkout-np", "shop/default-deny"]);
    rotated.dst.port = Some(80);
    assert_eq!(out.judge(&rotated).egress.result, SideResult::Denied);

    // The idle namespace has no NetworkPolicy: the Baseline denies its traffic but DNS.
    let sleeper = out.inventory.pod("idle", "sleeper-5f7c9d-p0").unwrap().ips[0];
    let v = out.judge(&tcp(sleeper, "35.190.0.5", 443, 92));
    assert_eq!(v.egress.result, SideResult::Denied);
    assert_eq!(
        v.egress.rules,
        ["cnp/netpol-observe-baseline:egress[1]:default-deny"]
    );
    let v = out.judge(&udp(sleeper, "10.96.0.10", 53, 93));
    assert!(v.allowed, "{v:?}");
    assert_eq!(
        v.egress.rules,
        ["cnp/netpol-observe-baseline:egress[0]:dns"]
    );
    // Into it from another pod: the Baseline ingress deny (the client's egress NetworkPolicy
    // denies too, and comes first).
    let coredns = out
        .inventory
        .pod("kube-system", "coredns-6d4b-p0")
        .unwrap()
        .ips[0];
    let v = out.judge(&tcp(coredns, &sleeper.to_string(), 8080, 94));
    assert_eq!(
        v.ingress.rules,
        ["cnp/netpol-observe-baseline:ingress[0]:default-deny"]
    );
    assert_eq!(
        v.egress.result,
        SideResult::NotIsolated,
        "kube-system is left out"
    );
}

#[test]
fn the_three_tier_scenario_keeps_every_flow_and_has_no_domain_policy() {
    let s = three_tier();
    let out = output(s.cluster.inventory(), &s.subnets, &s.flows);
    out.keeps_every_flow(&s.flows);
    assert_eq!(
        out.cluster.len(),
        1,
        "only the Baseline without named peers"
    );
    let baseline = out.policy("netpol-observe-baseline");
    assert_eq!(baseline.spec.tier, Tier::Baseline);
    assert_eq!(
        serde_json::to_value(&baseline.spec.subject).unwrap(),
        serde_json::json!({"namespaces": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}})
    );
}

/// The flows of a recorded lab run (`tests/fixtures/<dir>`): all kept by the whole output, the
/// forbidden probes still denied.
fn lab(dir: &str, flows_expected: usize, forbidden: &[FlowRecord]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let inventory = Inventory::from_yaml_str(
        &std::fs::read_to_string(dir.join("inventory.yaml")).unwrap(),
        "inventory.yaml",
    )
    .unwrap();
    let subnets = Subnets::from_path(&dir.join("subnets.yaml")).unwrap();
    let flows: Vec<FlowRecord> = std::fs::read_to_string(dir.join("flows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(flows.len(), flows_expected);
    let out = output(inventory, &subnets, &flows);
    out.keeps_every_flow(&flows);
    for f in forbidden {
        assert!(!out.judge(f).allowed, "forbidden probe allowed: {f:?}");
    }
}

#[test]
fn lab_shop_flows_are_kept() {
    let (web, cache) = (ip("10.244.0.11"), ip("10.244.0.12"));
    lab(
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
}

#[test]
fn lab_voting_flows_are_kept() {
    let ui = ip("10.244.0.11");
    lab(
        "lab-voting",
        15,
        &[
            tcp(ui, "10.244.0.14", 5432, 1),
            tcp(ui, "10.96.0.23", 6379, 2),
            tcp(ip("198.51.100.1"), "10.244.0.13", 8000, 3),
            udp(ui, "192.0.2.1", 8125, 4),
        ],
    );
}

/// Validates every ClusterNetworkPolicy of a YAML stream (argument 2) against the CRD
/// (argument 1); prints how many.
const VALIDATE: &str = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
n = 0
for obj in yaml.safe_load_all(open(sys.argv[2])):
    if obj["kind"] != crd["spec"]["names"]["kind"]:
        continue
    version = obj["apiVersion"].split("/")[1]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{obj['metadata']['name']}: {list(e.path)}: {e.message}" for e in errors)
    n += 1
print(n)
"#;

#[test]
fn output_validates_against_the_crd_schema() {
    let test = "output_validates_against_the_crd_schema";
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // domainNames are in the experimental channel.
    let crd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/schemas/network-policy-api/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml",
    );
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
    let s = saas_egress(true);
    let out = output(s.cluster.inventory(), &s.subnets, &s.flows);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.yaml");
    std::fs::write(&file, &out.stream).unwrap();
    let run = Command::new("python3")
        .args(["-c", VALIDATE])
        .arg(&crd)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "CRD schema validation: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        out.stream
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "2");
}

#[test]
fn cli_writes_the_cluster_policies_and_checks_them() {
    let s = saas_egress(true);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inventory.yaml"), s.cluster.yaml()).unwrap();
    let flows: String = s
        .flows
        .iter()
        .map(|f| serde_json::to_string(f).unwrap() + "\n")
        .collect();
    std::fs::write(dir.path().join("flows.jsonl"), flows).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .current_dir(dir.path())
        .args([
            "recommend",
            "--flows",
            "flows.jsonl",
            "--inventory",
            "inventory.yaml",
            "--format",
            "clusternetworkpolicy",
            "--write",
            "out/",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = std::fs::read_to_string(dir.path().join("out/_cluster.yaml")).unwrap();
    let back = Inventory::from_yaml_str(&cluster, "_cluster.yaml").unwrap();
    let names: Vec<&str> = back
        .cluster_network_policies
        .iter()
        .map(|p| p.name())
        .collect();
    assert_eq!(
        names,
        ["netpol-observe-baseline", "shop.checkout-np.domains"]
    );
    let shop = std::fs::read_to_string(dir.path().join("out/shop.yaml")).unwrap();
    assert_eq!(
        Inventory::from_yaml_str(&shop, "shop.yaml")
            .unwrap()
            .network_policies
            .len(),
        2
    );
}
