//! ClusterNetworkPolicy semantics on the reachability model of `policy_matrix.rs` (and of the
//! network-policy-api conformance suite): namespaces x, y, z (label `ns`) × pods a, b, c (label
//! `pod`), TCP 80. Each matrix is written from the API's documentation of tiers and actions and
//! checked with the engine and the literal reference evaluator, which must agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use netpol_observe_core::{
    flow::{FlowRecord, Protocol},
    inventory::Inventory,
    policy::{PolicyEngine, reference::Reference},
};

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    format!("10.0.{}.{}", ns + 1, pod + 1).parse().unwrap()
}

/// The model plus `policies` (YAML documents: NetworkPolicies and ClusterNetworkPolicies).
fn model(policies: &str) -> Inventory {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n",
    );
    for (ni, ns) in NS.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        ));
        for (pi, pod) in PODS.iter().enumerate() {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\nspec: {{nodeName: node-1, containers: [{{name: c, ports: [{{name: serve-80-tcp, containerPort: 80}}]}}]}}\nstatus: {{podIP: {}}}\n",
                pod_ip(ni, pi)
            ));
        }
    }
    yaml.push_str("---\n");
    yaml.push_str(policies);
    Inventory::from_yaml_str(&yaml, "model.yaml").unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct P {
    ns: &'static str,
    pod: &'static str,
}

#[track_caller]
fn assert_matrix(policies: &str, expected: impl Fn(P, P) -> bool) {
    let inv = model(policies);
    let engine = PolicyEngine::compile_with_cluster(
        &inv.network_policies,
        &inv.cluster_network_policies,
        &inv,
    )
    .unwrap();
    let reference =
        Reference::with_cluster(&inv, &inv.network_policies, &inv.cluster_network_policies)
            .unwrap();
    let mut wrong = Vec::new();
    let mut grid = String::from("      x/a x/b x/c y/a y/b y/c z/a z/b z/c\n");
    for (si, sns) in NS.iter().enumerate() {
        for (sp, spod) in PODS.iter().enumerate() {
            let s = P { ns: sns, pod: spod };
            grid.push_str(&format!("{sns}/{spod}  "));
            for (di, dns) in NS.iter().enumerate() {
                for (dp, dpod) in PODS.iter().enumerate() {
                    let d = P { ns: dns, pod: dpod };
                    let flow =
                        FlowRecord::new(Protocol::Tcp, pod_ip(si, sp), pod_ip(di, dp), Some(80));
                    let v = engine.evaluate_flow(&flow);
                    assert_eq!(v, reference.evaluate(&flow), "{s:?} -> {d:?}");
                    grid.push_str(if v.allowed { "  . " } else { "  X " });
                    if v.allowed != expected(s, d) {
                        wrong.push(format!("{s:?} -> {d:?}: {v:?}"));
                    }
                }
            }
            grid.push('\n');
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong verdicts:\n{}\nmatrix (rows = from):\n{grid}",
        wrong.join("\n")
    );
}

const CNP: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n";

/// An Admin Deny from y into x wins over a NetworkPolicy in x allowing everything.
#[test]
fn admin_deny_overrides_an_allow_all_network_policy() {
    let policies = format!(
        "{CNP}metadata: {{name: deny-y-to-x}}\nspec: {{tier: Admin, priority: 10, subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-all, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    );
    assert_matrix(&policies, |s, d| !(d.ns == "x" && s.ns == "y"));
}

/// An Admin Accept from y into x wins over a NetworkPolicy in x denying everything.
#[test]
fn admin_accept_overrides_a_deny_all_network_policy() {
    let policies = format!(
        "{CNP}metadata: {{name: accept-y-to-x}}\nspec: {{tier: Admin, priority: 10, subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}, ingress: [{{action: Accept, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-all, namespace: x}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n"
    );
    assert_matrix(&policies, |s, d| d.ns != "x" || s.ns == "y" || s == d);
}

/// Admin Pass for traffic from z, then an Admin Deny of everything: z's traffic goes on to
/// the NetworkPolicies (x/a admits only x), the rest is denied (self-traffic is always
/// allowed).
#[test]
fn pass_then_deny() {
    let policies = format!(
        "{CNP}metadata: {{name: pass-z}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, ingress: [{{action: Pass, from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]}}]}}\n---\n{CNP}metadata: {{name: deny-all}}\nspec: {{tier: Admin, priority: 2, subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-from-x, namespace: x}}\nspec: {{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{podSelector: {{}}}}]}}]}}\n"
    );
    assert_matrix(&policies, |s, d| {
        s == d || (s.ns == "z" && !(d.ns == "x" && d.pod == "a"))
    });
}

/// A Baseline deny of all ingress applies only to pods no NetworkPolicy isolates: y/b has one
/// admitting pods of y.
#[test]
fn baseline_deny_yields_to_network_policies() {
    let policies = format!(
        "{CNP}metadata: {{name: baseline-deny}}\nspec: {{tier: Baseline, priority: 1, subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b-from-y, namespace: y}}\nspec: {{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{{from: [{{podSelector: {{}}}}]}}]}}\n"
    );
    assert_matrix(&policies, |s, d| {
        s == d || (d.ns == "y" && d.pod == "b" && s.ns == "y")
    });
}

/// Egress: pods a of every namespace may not reach the CIDR of namespace z's pods, except
/// z/c by an earlier rule of the same policy; x is passed to its (absent) NetworkPolicies and
/// so keeps everything.
#[test]
fn egress_networks_with_rule_order_and_priorities() {
    let policies = format!(
        "{CNP}metadata: {{name: guard}}\nspec: {{tier: Admin, priority: 20, subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}, egress: [{{action: Accept, to: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: z}}}}, podSelector: {{matchLabels: {{pod: c}}}}}}}}]}}, {{action: Deny, to: [{{networks: [10.0.3.0/24]}}]}}]}}\n---\n{CNP}metadata: {{name: x-passes}}\nspec: {{tier: Admin, priority: 10, subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}, egress: [{{action: Pass, to: [{{networks: [0.0.0.0/0]}}]}}]}}\n"
    );
    assert_matrix(&policies, |s, d| {
        !(s.pod == "a" && s.ns != "x" && d.ns == "z" && d.pod != "c" && s != d)
    });
}
