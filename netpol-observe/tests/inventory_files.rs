//! The file inventory from `kubectl get … -o yaml`-shaped fixtures, attribution over it, and
//! bad input: every error names the file, the document/object and the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use netpol_observe_core::report::Chain;
use std::{collections::BTreeMap, net::IpAddr, path::Path};

use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    flow::{FlowRecord, Protocol, WorkloadRef},
    inventory::{Inventory, Labels, TargetPort},
    policy::{PolicyEngine, Reason, SideResult},
};

fn fixture() -> Inventory {
    Inventory::from_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shop"))
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn workload(kind: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        kind: kind.into(),
        name: name.into(),
    }
}

#[test]
fn loads_a_directory_of_lists_and_multi_document_files() {
    let inv = fixture();
    assert_eq!(
        inv.namespaces.keys().collect::<Vec<_>>(),
        ["monitoring", "shop"]
    );
    assert_eq!(
        inv.namespace_labels("shop").unwrap(),
        &Labels::from(labels(&[
            ("kubernetes.io/metadata.name", "shop"),
            ("team", "web")
        ]))
    );
    assert_eq!(inv.pods.len(), 7);
    assert_eq!(inv.pods_in("shop").count(), 6);
    assert_eq!(inv.services.len(), 3);
    assert_eq!(inv.endpoint_slices.len(), 1);
    assert_eq!(inv.nodes.len(), 2);
    let names: Vec<_> = inv
        .network_policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["api-from-web", "default-deny"]);

    let node = inv.node("node-1").unwrap();
    assert_eq!(node.addresses, vec![ip("172.18.0.2")]);
    assert_eq!(node.pod_cidrs, vec!["10.244.1.0/24".parse().unwrap()]);

    let api = inv.service("shop", "api").unwrap();
    assert_eq!(api.cluster_ips, vec![ip("10.96.0.20")]);
    assert_eq!(api.ports[0].target_port, TargetPort::Name("api".into()));
    assert_eq!(api.ports[1].protocol, Protocol::Udp);
    assert_eq!(
        inv.service("shop", "web").unwrap().ports[0].target_port,
        TargetPort::Number(8080)
    );
    assert!(
        inv.service("shop", "db").unwrap().cluster_ips.is_empty(),
        "headless"
    );
}

#[test]
fn owners_resolve_to_workloads_with_stable_selector_labels() {
    let inv = fixture();
    let pod = |name: &str| inv.pods.iter().find(|p| p.name == name).unwrap();
    // ReplicaSet → Deployment (RS known): the RS selector without pod-template-hash.
    let web = pod("web-7d9c5b-x2abc");
    assert_eq!(*web.workload, workload("Deployment", "web"));
    assert_eq!(web.selector_labels, Labels::from(labels(&[("app", "web")])));
    assert_eq!(web.ips, vec![ip("10.244.1.5"), ip("fd00:10:244:1::5")]);
    assert_eq!(web.container_ports.len(), 2);
    assert_eq!(web.named_port("metrics", Protocol::Tcp), Some(9102));
    // ReplicaSet unknown: the Deployment is named from `<deployment>-<pod-template-hash>`.
    assert_eq!(
        *pod("api-5f6b7c-k1").workload,
        workload("Deployment", "api")
    );
    assert_eq!(
        pod("api-5f6b7c-k1").selector_labels,
        Labels::from(labels(&[("app", "api")]))
    );
    // StatefulSet: per-pod labels are not stable.
    assert_eq!(*pod("db-0").workload, workload("StatefulSet", "db"));
    assert_eq!(
        pod("db-0").selector_labels,
        Labels::from(labels(&[("app", "db")]))
    );
    // DaemonSet on the host network.
    let ne = pod("node-exporter-abcde");
    assert_eq!(*ne.workload, workload("DaemonSet", "node-exporter"));
    assert_eq!(
        ne.selector_labels,
        Labels::from(labels(&[("app", "node-exporter")]))
    );
    assert!(ne.host_network);
    // Job → CronJob; job-name and controller-uid are dropped.
    let backup = pod("backup-29400000-q8w7e");
    assert_eq!(*backup.workload, workload("CronJob", "backup"));
    assert_eq!(
        backup.selector_labels,
        Labels::from(labels(&[("app", "backup")]))
    );
    assert_eq!(
        backup.deleted,
        Some("2026-11-21T00:10:00Z".parse().unwrap()),
        "finished pods release their IP"
    );
    // A bare pod.
    assert_eq!(*pod("debug").workload, workload("Pod", "debug"));
}

fn subnets() -> Subnets {
    Subnets::from_yaml_str("db-subnet: [10.0.2.0/24]\ncorp: [10.0.0.0/8, \"2001:db8::/32\"]\ndb-primary: 10.0.2.10/32\n", Path::new("subnets.yaml")).unwrap()
}

#[test]
fn attribution_of_pods_services_nodes_and_subnets() {
    let inv = fixture();
    let attr = Attributor::new(&inv, &subnets());
    let t = |s: &str| Some(s.parse().unwrap());

    // Pod to a Service ClusterIP: the service, its backend, the named target port resolved.
    let mut f = FlowRecord::new(Protocol::Tcp, ip("10.244.1.5"), ip("10.96.0.20"), Some(80));
    f.first_seen = t("2026-11-22T10:00:00Z");
    attr.attribute(&mut f);
    assert_eq!(f.src.namespace.as_deref(), Some("shop"));
    assert_eq!(f.src.pod.as_deref(), Some("web-7d9c5b-x2abc"));
    assert_eq!(f.src.workload, Some(workload("Deployment", "web")));
    assert_eq!(f.src.labels, Some(labels(&[("app", "web")])));
    assert_eq!(f.dst.service.as_ref().unwrap().name, "api");
    assert_eq!(f.dst.pod.as_deref(), Some("api-5f6b7c-k1"));
    assert_eq!(attr.backend_port(&f), Some(9000));
    let mut u = FlowRecord::new(Protocol::Udp, ip("10.244.1.5"), ip("10.96.0.20"), Some(81));
    attr.attribute(&mut u);
    assert_eq!(attr.backend_port(&u), Some(9000));

    // Node IPs, hostNetwork pods (they share the node's IP) → node.
    let mut f = FlowRecord::new(
        Protocol::Tcp,
        ip("172.18.0.2"),
        ip("172.18.0.3"),
        Some(10250),
    );
    attr.attribute(&mut f);
    assert_eq!(f.src.node.as_deref(), Some("node-1"));
    assert!(f.src.pod.is_none());
    assert_eq!(f.dst.node.as_deref(), Some("node-2"));

    // Subnets: most specific wins; else private or world.
    let cases = [
        ("10.0.2.10", "db-primary"),
        ("10.0.2.11", "db-subnet"),
        ("10.9.9.9", "corp"),
        ("2001:db8::1", "corp"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("8.8.8.8", "world"),
    ];
    for (addr, name) in cases {
        let mut f = FlowRecord::new(Protocol::Tcp, ip("10.244.2.3"), ip(addr), Some(443));
        attr.attribute(&mut f);
        assert_eq!(f.dst.subnet.as_deref(), Some(name), "{addr}");
        assert_eq!(f.src.pod.as_deref(), Some("db-0"));
    }
}

#[test]
fn a_reused_ip_is_attributed_to_the_pod_that_held_it_then() {
    let inv = fixture();
    let attr = Attributor::new(&inv, &Subnets::default());
    let at = |time: &str| {
        let mut f = FlowRecord::new(
            Protocol::Tcp,
            ip("10.244.1.20"),
            ip("10.0.2.10"),
            Some(5432),
        );
        f.first_seen = Some(time.parse().unwrap());
        attr.attribute(&mut f);
        (f.src.pod.unwrap(), f.src.workload.unwrap().kind)
    };
    assert_eq!(
        at("2026-11-21T00:05:00Z"),
        ("backup-29400000-q8w7e".to_string(), "CronJob".to_string())
    );
    assert_eq!(
        at("2026-11-21T13:00:00Z"),
        ("debug".to_string(), "Pod".to_string())
    );
    // Without a time: the pod holding it now.
    let mut f = FlowRecord::new(
        Protocol::Tcp,
        ip("10.244.1.20"),
        ip("10.0.2.10"),
        Some(5432),
    );
    attr.attribute(&mut f);
    assert_eq!(f.src.pod.as_deref(), Some("debug"));
}

#[test]
fn fixture_policies_through_a_service_and_host_network() {
    let inv = fixture();
    let engine = PolicyEngine::compile(&inv.network_policies, &inv).unwrap();
    let attr = Attributor::new(&inv, &Subnets::default());
    let eval = |src: &str, dst: &str, port: u16, proto: Protocol| {
        let mut f = FlowRecord::new(proto, ip(src), ip(dst), Some(port));
        attr.attribute(&mut f);
        engine.evaluate_flow(&f)
    };
    // web → svc/api:80 → api pod at named port `api` (9000): allowed by api-from-web.
    let v = eval("10.244.1.5", "10.96.0.20", 80, Protocol::Tcp);
    assert!(v.allowed, "{v:?}");
    assert_eq!(v.ingress.policies, ["shop/api-from-web"]);
    // The same on UDP: the named port `api` is TCP only → denied.
    let v = eval("10.244.1.5", "10.96.0.20", 81, Protocol::Udp);
    assert!(!v.allowed);
    assert_eq!(
        v.ingress.policies,
        ["shop/api-from-web", "shop/default-deny"]
    );
    // db → api directly: denied.
    assert!(!eval("10.244.2.3", "10.244.1.9", 9000, Protocol::Tcp).allowed);
    // The hostNetwork node-exporter on node-1 → api (node-1): own node, allowed.
    let v = eval("172.18.0.2", "10.244.1.9", 9000, Protocol::Tcp);
    assert!(v.allowed);
    assert_eq!(v.ingress.reason, Some(Reason::OwnNode));
    // node-2 → api on node-1: not its own node, denied.
    assert_eq!(
        eval("172.18.0.3", "10.244.1.9", 9000, Protocol::Tcp)
            .ingress
            .result,
        SideResult::Denied
    );
    // Anything → node-exporter's port on node-1: a node address, outside policy.
    let v = eval("10.244.1.9", "172.18.0.2", 9100, Protocol::Tcp);
    assert!(v.allowed);
    assert_eq!(v.ingress.reason, Some(Reason::NotAPod));
    // The selecting policies are exposed.
    let sel = engine.policies_selecting("shop", "api-5f6b7c-k1").unwrap();
    assert_eq!(sel.ingress, ["shop/api-from-web", "shop/default-deny"]);
    assert!(sel.egress.is_empty());
    assert!(
        engine
            .policies_selecting("monitoring", "node-exporter-abcde")
            .unwrap()
            .ingress
            .is_empty()
    );
}

fn load_err(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let err = Chain(&Inventory::from_path(&path).unwrap_err()).to_string();
    err.replace(&dir.path().display().to_string(), "DIR")
}

const POLICY_HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  podSelector: {}\n";

#[test]
fn bad_input_errors_name_file_object_and_field() {
    let cases: Vec<(String, &str)> = vec![
        (
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: a}\n".into(),
            "DIR/bad.yaml, document 2: ConfigMap a/cm: field kind: unknown kind \"ConfigMap\"",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: a}\n  status: {podIP: 10.0.0.300}\n".into(),
            "DIR/bad.yaml, document 1, items[0]: Pod a/p: field status.podIP: \"10.0.0.300\" is not an IP address",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec:\n  containers:\n  - name: c\n    ports:\n    - {containerPort: http}\n".into(),
            "DIR/bad.yaml, document 1: Pod a/p: field spec.containers[0].ports[0].containerPort: invalid type",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec:\n  containers:\n  - name: c\n    ports:\n    - {containerPort: 80, protocol: HTTP}\n".into(),
            "Pod a/p: field spec.containers[0].ports[0].protocol: unknown protocol \"HTTP\"",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{{key: app, operator: Equals, values: [a]}}]\n"),
            "DIR/bad.yaml, document 1: NetworkPolicy shop/bad: field spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: unknown operator \"Equals\"",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{{key: app, operator: In}}]\n"),
            "field spec.ingress[0].from[0].podSelector.matchExpressions[0].values: must be non-empty for operator In",
        ),
        (
            format!("{POLICY_HEAD}  egress:\n  - to:\n    - ipBlock: {{cidr: 10.0.0.0/33}}\n"),
            "NetworkPolicy shop/bad: field spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            format!("{POLICY_HEAD}  egress:\n  - to:\n    - ipBlock: {{cidr: 10.0.0.0/16, except: [10.0.0.0/24, 10.1.0.0/24]}}\n"),
            "field spec.egress[0].to[0].ipBlock.except[1]: 10.1.0.0/24 must be a strict subset of cidr 10.0.0.0/16",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - ports: [{{port: 70000}}]\n"),
            "field spec.ingress[0].ports[0].port: port 70000 is not in 1-65535",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - ports: [{{port: 90, endPort: 80}}]\n"),
            "field spec.ingress[0].ports[0].endPort: endPort 80 is less than port 90",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - ports: [{{port: http, endPort: 80}}]\n"),
            "field spec.ingress[0].ports[0].endPort: endPort requires a numeric port",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - ports: [{{port: 80, protocol: ICMP}}]\n"),
            "field spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\"",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - from:\n    - {{}}\n"),
            "field spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/8}}\n      podSelector: {{}}\n"),
            "field spec.ingress[0].from[0].ipBlock: ipBlock cannot be combined",
        ),
        (
            format!("{POLICY_HEAD}  policyTypes: [Inbound]\n"),
            "field spec.policyTypes[0]: unknown policy type \"Inbound\"",
        ),
        (
            format!("{POLICY_HEAD}  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{\"bad key!\": x}}}}\n"),
            "field spec.ingress[0].from[0].podSelector.matchLabels[\"bad key!\"]: invalid label key",
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: [oops\n".into(), "DIR/bad.yaml: document 1: invalid YAML"),
        ("metadata: {name: x}\n".into(), "object x: field apiVersion: missing"),
    ];
    for (yaml, expected) in cases {
        let err = load_err(&yaml);
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
    let err =
        Chain(&Inventory::from_path(Path::new("/nonexistent/inventory")).unwrap_err()).to_string();
    assert!(
        err.starts_with("cannot read /nonexistent/inventory: "),
        "{err}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn bad_subnets_name_file_subnet_and_entry() {
    let err = Subnets::from_yaml_str("db: [10.0.2.0/24, 10.0.3.0]\n", Path::new("s.yaml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "s.yaml: subnet \"db\", entry 1: \"10.0.3.0\" is not a CIDR (e.g. 10.0.2.0/24)"
    );
    let err = Subnets::from_yaml_str("- 10.0.0.0/8\n", Path::new("s.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("s.yaml: expected a mapping"), "{err}");
}
