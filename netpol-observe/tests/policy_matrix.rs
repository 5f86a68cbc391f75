//! NetworkPolicy semantics, written from the Kubernetes API documentation: a model of three
//! namespaces (x, y, z) × three pods (a, b, c), each serving TCP, UDP and SCTP on ports 80 and
//! 81 (named `serve-80-tcp`, ...), and full reachability matrices for many policies. Every
//! matrix is also checked against the literal reference evaluator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{
        Container, ContainerPort, Namespace, Node, NodeAddress, NodeStatus, Pod, PodIP, PodSpec,
        PodStatus,
    },
    networking::v1::NetworkPolicy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netpol_observe_core::{
    flow::{FlowRecord, Protocol},
    inventory::{Inventory, KubeObject},
    policy::{PolicyEngine, Reason, SideResult, reference},
};

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const NODE_IP: &str = "192.168.0.1";

fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    format!("10.0.{}.{}", ns + 1, pod + 1).parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn model() -> Inventory {
    let mut objects = vec![KubeObject::Node(Node {
        metadata: ObjectMeta {
            name: Some("node-1".into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                address: NODE_IP.into(),
                type_: "InternalIP".into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })];
    for (ni, ns) in NS.iter().enumerate() {
        objects.push(KubeObject::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(ns.to_string()),
                labels: Some(labels(&[("ns", ns)])),
                ..Default::default()
            },
            ..Default::default()
        }));
        for (pi, pod) in PODS.iter().enumerate() {
            let mut ports = Vec::new();
            for proto in ["TCP", "UDP", "SCTP"] {
                for port in [80, 81] {
                    ports.push(ContainerPort {
                        name: Some(format!("serve-{port}-{}", proto.to_lowercase())),
                        container_port: port,
                        protocol: Some(proto.into()),
                        ..Default::default()
                    });
                }
            }
            objects.push(KubeObject::Pod(Pod {
                metadata: ObjectMeta {
                    name: Some(pod.to_string()),
                    namespace: Some(ns.to_string()),
                    labels: Some(labels(&[("pod", pod)])),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        ports: Some(ports),
                        ..Default::default()
                    }],
                    node_name: Some("node-1".into()),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    pod_ips: Some(vec![PodIP {
                        ip: pod_ip(ni, pi).to_string(),
                    }]),
                    phase: Some("Running".into()),
                    ..Default::default()
                }),
            }));
        }
    }
    Inventory::from_objects(objects).unwrap()
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    // Empty documents are skipped.
    serde_saphyr::from_multiple(yaml).unwrap()
}

/// A pod of the model: (namespace, pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct P {
    ns: &'static str,
    pod: &'static str,
}

fn all_pods() -> Vec<(P, IpAddr)> {
    let mut out = Vec::new();
    for (ni, ns) in NS.iter().enumerate() {
        for (pi, pod) in PODS.iter().enumerate() {
            out.push((P { ns, pod }, pod_ip(ni, pi)));
        }
    }
    out
}

/// Checks the full 9×9 matrix for one port/protocol against `expected(src, dst)`, with both
/// the compiled engine and the reference evaluator.
#[track_caller]
fn assert_matrix(yaml: &str, port: u16, protocol: Protocol, expected: impl Fn(P, P) -> bool) {
    let inv = model();
    let pols = policies(yaml);
    let engine = PolicyEngine::compile(&pols, &inv).unwrap();
    let mut wrong = Vec::new();
    let mut grid = String::from("      x/a x/b x/c y/a y/b y/c z/a z/b z/c\n");
    for (s, sip) in all_pods() {
        grid.push_str(&format!("{}/{}  ", s.ns, s.pod));
        for (d, dip) in all_pods() {
            let flow = FlowRecord::new(protocol, sip, dip, Some(port));
            let v = engine.evaluate_flow(&flow);
            let r = reference::evaluate(&inv, &pols, &flow).unwrap();
            assert_eq!(v, r, "engine and reference disagree on {s:?} -> {d:?}");
            grid.push_str(if v.allowed { "  . " } else { "  X " });
            if v.allowed != expected(s, d) {
                eprintln!("{s:?} -> {d:?}: {v:?}");
                wrong.push(format!(
                    "{}/{} -> {}/{}: got allowed={}",
                    s.ns, s.pod, d.ns, d.pod, v.allowed
                ));
            }
        }
        grid.push('\n');
    }
    assert!(
        wrong.is_empty(),
        "{port}/{protocol}: wrong verdicts:\n{}\nmatrix (rows = from):\n{grid}",
        wrong.join("\n")
    );
}

fn same(s: P, d: P) -> bool {
    s == d
}

#[test]
fn no_policy_allows_everything() {
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert_matrix("", 80, proto, |_, _| true);
    }
}

const DENY_INGRESS_X: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

#[test]
fn default_deny_ingress_isolates_the_namespace_only() {
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert_matrix(DENY_INGRESS_X, 81, proto, |s, d| d.ns != "x" || same(s, d));
    }
}

#[test]
fn empty_ingress_list_denies_but_one_empty_rule_allows_all() {
    // `ingress: []` without policyTypes: Ingress is inferred, no rule: deny all.
    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: []
"#;
    assert_matrix(deny, 80, Protocol::Tcp, |s, d| {
        !(d == P { ns: "x", pod: "a" }) || same(s, d)
    });
    // `ingress: [{}]`: one rule with no peers and no ports: allow everything.
    let allow = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
"#;
    assert_matrix(allow, 80, Protocol::Tcp, |_, _| true);
    // Both together: additive, the allow wins.
    assert_matrix(
        &format!("{}---{}", deny.replace("name: p", "name: p1"), allow),
        80,
        Protocol::Tcp,
        |_, _| true,
    );
}

#[test]
fn pod_selector_alone_means_same_namespace() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        !(d == P { ns: "x", pod: "a" }) || s == P { ns: "x", pod: "b" } || same(s, d)
    });
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_an_and() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        !(d == P { ns: "x", pod: "a" }) || s == P { ns: "y", pod: "b" } || same(s, d)
    });
}

#[test]
fn namespace_and_pod_selector_in_two_peers_is_an_or() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        !(d == P { ns: "x", pod: "a" }) || s.ns == "y" || s == P { ns: "x", pod: "b" } || same(s, d)
    });
}

#[test]
fn empty_namespace_selector_means_all_namespaces() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-ns, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {pod: c}}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        d.ns != "x" || s.pod == "c" || same(s, d)
    });
}

#[test]
fn match_expressions_in_notin_exists_doesnotexist() {
    // In on namespaces, NotIn on pods.
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: expr, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, z]}]}
      podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        !(d.ns == "x" && d.pod != "c") || (s.ns != "y" && s.pod != "c") || same(s, d)
    });
    // NotIn on a missing label matches every pod; Exists on a missing label matches none.
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: notin-missing, namespace: y}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: tier, operator: Exists}]}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| d.ns != "y" || same(s, d));
    // DoesNotExist on a missing label selects everything; on `pod` selects nothing.
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dne, namespace: z}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}
  ingress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dne2, namespace: y}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        d.ns != "y" || s.ns != "x" || same(s, d)
    });
}

#[test]
fn a_policy_selecting_nothing_changes_nothing() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nothing, namespace: x}
spec:
  podSelector: {matchLabels: {pod: nonexistent}}
  policyTypes: [Ingress, Egress]
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |_, _| true);
}

const PORT_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 80
    - {port: 81, protocol: UDP}
    - {port: serve-81-sctp, protocol: SCTP}
"#;

#[test]
fn ports_protocol_defaults_to_tcp_numeric_and_named() {
    let into_x = |d: P| d.ns == "x";
    assert_matrix(PORT_POLICY, 80, Protocol::Tcp, |_, _| true);
    assert_matrix(PORT_POLICY, 81, Protocol::Tcp, |s, d| {
        !into_x(d) || same(s, d)
    });
    assert_matrix(PORT_POLICY, 80, Protocol::Udp, |s, d| {
        !into_x(d) || same(s, d)
    });
    assert_matrix(PORT_POLICY, 81, Protocol::Udp, |_, _| true);
    assert_matrix(PORT_POLICY, 80, Protocol::Sctp, |s, d| {
        !into_x(d) || same(s, d)
    });
    assert_matrix(PORT_POLICY, 81, Protocol::Sctp, |_, _| true);
}

#[test]
fn named_port_with_a_different_protocol_does_not_match() {
    // `serve-80-tcp` is a TCP port: asked for with protocol UDP it resolves to nothing.
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-udp, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-80-tcp, protocol: UDP}]
"#;
    for proto in [Protocol::Tcp, Protocol::Udp] {
        assert_matrix(yaml, 80, proto, |s, d| d.ns != "x" || same(s, d));
    }
    let yaml = yaml.replace("protocol: UDP", "protocol: TCP");
    assert_matrix(&yaml, 80, Protocol::Tcp, |_, _| true);
    assert_matrix(&yaml, 81, Protocol::Tcp, |s, d| d.ns != "x" || same(s, d));
}

#[test]
fn end_port_ranges() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81, endPort: 90}]
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| d.ns != "x" || same(s, d));
    assert_matrix(yaml, 81, Protocol::Tcp, |_, _| true);
    // The model only serves 80/81; check the range bounds directly.
    let inv = model();
    let engine = PolicyEngine::compile(&policies(yaml), &inv).unwrap();
    let check = |port| {
        engine
            .evaluate_flow(&FlowRecord::new(
                Protocol::Tcp,
                pod_ip(1, 0),
                pod_ip(0, 0),
                Some(port),
            ))
            .allowed
    };
    assert!(check(90) && check(85) && !check(91) && !check(80));
}

#[test]
fn ip_block_with_except() {
    // Allow from 10.0.0.0/16 except y's /24 and one z pod (10.0.3.2/32 = z/b).
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24, 10.0.3.2/32]}
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        !(d == P { ns: "x", pod: "a" }) || !(s.ns == "y" || s == P { ns: "z", pod: "b" })
    });
}

#[test]
fn default_deny_egress_and_allow_to_a_namespace() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}
    ports: [{port: 80, protocol: UDP}]
"#;
    // Surprise: `egress-to-z` omits policyTypes and has egress rules, so it is inferred as
    // Ingress + Egress: it also isolates x/a for ingress, with no ingress rule.
    let xa = P { ns: "x", pod: "a" };
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        same(s, d) || (s.ns != "x" && d != xa)
    });
    assert_matrix(yaml, 80, Protocol::Udp, |s, d| {
        same(s, d) || ((s.ns != "x" || (s == xa && d.ns == "z")) && d != xa)
    });
}

#[test]
fn ingress_rules_without_the_ingress_type_do_nothing() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: nobody}}}]}]
  egress: [{}]
"#;
    assert_matrix(yaml, 80, Protocol::Tcp, |_, _| true);
}

#[test]
fn both_ingress_and_egress_are_needed() {
    // y allows ingress only from x/a; x/a may only send to z. So x/a -> y is denied by egress.
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-xa, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
"#;
    let xa = P { ns: "x", pod: "a" };
    assert_matrix(yaml, 80, Protocol::Tcp, |s, d| {
        if same(s, d) {
            return true;
        }
        let egress_ok = s != xa || d.ns == "z";
        let ingress_ok = d.ns != "y" || s == xa;
        egress_ok && ingress_ok
    });
}

#[test]
fn verdicts_explain_themselves() {
    let inv = model();
    let yaml = format!(
        "{DENY_INGRESS_X}---{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
"#
    );
    let engine = PolicyEngine::compile(&policies(&yaml), &inv).unwrap();
    let v = engine.evaluate_flow(&FlowRecord::new(
        Protocol::Tcp,
        pod_ip(1, 0),
        pod_ip(0, 0),
        Some(80),
    ));
    assert!(v.allowed);
    assert_eq!(v.ingress.result, SideResult::Allowed);
    assert_eq!(v.ingress.policies, vec!["x/allow-y"]);
    assert_eq!(v.ingress.rules, vec!["x/allow-y:ingress[1]"]);
    assert_eq!(v.egress.result, SideResult::NotIsolated);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"allowed": true,
            "ingress": {"result": "allowed", "policies": ["x/allow-y"], "rules": ["x/allow-y:ingress[1]"]},
            "egress": {"result": "not-isolated"}})
    );
    let v = engine.evaluate_flow(&FlowRecord::new(
        Protocol::Tcp,
        pod_ip(1, 0),
        pod_ip(0, 1),
        Some(80),
    ));
    assert!(!v.allowed);
    assert_eq!(v.ingress.result, SideResult::Denied);
    assert_eq!(v.ingress.policies, vec!["x/deny-all"]);
    // x/a is isolated by both; both are listed when denied.
    let v = engine.evaluate_flow(&FlowRecord::new(
        Protocol::Tcp,
        pod_ip(0, 1),
        pod_ip(0, 0),
        Some(80),
    ));
    assert_eq!(v.ingress.policies, vec!["x/allow-y", "x/deny-all"]);
    // Self traffic and own node are always allowed.
    let v = engine.evaluate_flow(&FlowRecord::new(
        Protocol::Tcp,
        pod_ip(0, 0),
        pod_ip(0, 0),
        Some(80),
    ));
    assert!(v.allowed);
    assert_eq!(v.ingress.reason, Some(Reason::SelfTraffic));
    let v = engine.evaluate_flow(&FlowRecord::new(
        Protocol::Tcp,
        NODE_IP.parse().unwrap(),
        pod_ip(0, 0),
        Some(80),
    ));
    assert!(v.allowed);
    assert_eq!(v.ingress.reason, Some(Reason::OwnNode));
    assert_eq!(v.egress.reason, Some(Reason::NotAPod));
    // The outside world is denied into x.
    let v = engine.evaluate_flow(&FlowRecord::new(
        Protocol::Tcp,
        "203.0.113.9".parse().unwrap(),
        pod_ip(0, 2),
        Some(80),
    ));
    assert!(!v.allowed);
}

#[test]
fn ipv6_ip_blocks_and_icmp() {
    let inv = model();
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 443}]
"#;
    let pols = policies(yaml);
    let engine = PolicyEngine::compile(&pols, &inv).unwrap();
    let xa = pod_ip(0, 0);
    let cases = [
        ("2001:db8:2::1", Protocol::Tcp, Some(22), true),
        ("2001:db8:1::1", Protocol::Tcp, Some(22), false),
        ("2001:db9::1", Protocol::Tcp, Some(443), false), // v4 block never matches v6
        ("2001:db8::1", Protocol::Icmpv6, None, true),    // no ports: every protocol
        ("198.51.100.1", Protocol::Tcp, Some(443), true),
        ("198.51.100.1", Protocol::Udp, Some(443), false),
        ("198.51.100.1", Protocol::Icmp, None, false), // a port rule never matches ICMP
    ];
    for (dst, proto, port, allowed) in cases {
        let flow = FlowRecord::new(proto, xa, dst.parse().unwrap(), port);
        let v = engine.evaluate_flow(&flow);
        assert_eq!(v.allowed, allowed, "{dst} {proto} {port:?}: {v:?}");
        assert_eq!(v, reference::evaluate(&inv, &pols, &flow).unwrap());
    }
}
