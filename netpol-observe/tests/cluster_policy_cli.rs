//! `evaluate` and `verify` with ClusterNetworkPolicies in the policy files (no root needed):
//! the Admin tier overrides the NetworkPolicies, `domainNames` match by the flow's DNS names,
//! verdicts and reports name `cnp/<name>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command};

use netpol_observe_core::policy::{EvaluatedFlow, SideResult};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shop")
}

const CNPS: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: db-to-api}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}
  ingress:
  - {name: from-db, action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}], protocols: [{destinationNamedPort: api}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: allow-names}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: shop}}}
  egress:
  - {action: Accept, to: [{domainNames: ["*.example.com"]}], protocols: [{tcp: {destinationPort: {number: 443}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-external}
spec:
  tier: Admin
  priority: 30
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: shop}}}
  egress:
  - {action: Deny, to: [{networks: [198.51.100.0/24]}]}
"#;

const FLOWS: &str = concat!(
    // db → api:9000, which the shop NetworkPolicies deny: the Admin Accept allows it.
    r#"{"protocol":"TCP","src":{"ip":"10.244.2.3"},"dst":{"ip":"10.244.1.9","port":9000}}"#,
    "\n",
    // api → a named external address on 443: allowed by its name.
    r#"{"protocol":"TCP","src":{"ip":"10.244.1.9"},"dst":{"ip":"198.51.100.7","port":443,"dns_names":["storage.example.com"]}}"#,
    "\n",
    // The same address without a name: the Admin deny.
    r#"{"protocol":"TCP","src":{"ip":"10.244.1.9"},"dst":{"ip":"198.51.100.7","port":443}}"#,
    "\n",
);

fn policies(dir: &Path) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(
        fixture().join("networkpolicies.yaml"),
        policies.join("networkpolicies.yaml"),
    )
    .unwrap();
    std::fs::write(policies.join("cluster.yaml"), CNPS).unwrap();
    policies
}

#[test]
fn evaluate_applies_the_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, FLOWS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["evaluate", "--inventory"])
        .arg(fixture())
        .arg("--policies")
        .arg(policies(dir.path()))
        .arg("--flows")
        .arg(&flows)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let lines: Vec<EvaluatedFlow> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].verdict.allowed);
    assert_eq!(lines[0].verdict.ingress.policies, ["cnp/db-to-api"]);
    assert_eq!(
        lines[0].verdict.ingress.rules,
        ["cnp/db-to-api:ingress[0]:from-db"]
    );
    assert!(lines[1].verdict.allowed);
    assert_eq!(lines[1].verdict.egress.result, SideResult::Allowed);
    assert_eq!(lines[1].verdict.egress.rules, ["cnp/allow-names:egress[0]"]);
    assert_eq!(lines[1].flow.dst.dns_names, ["storage.example.com"]);
    assert!(!lines[2].verdict.allowed);
    assert_eq!(lines[2].verdict.egress.result, SideResult::Denied);
    assert_eq!(lines[2].verdict.egress.policies, ["cnp/deny-external"]);
}

#[test]
fn verify_names_the_denying_cluster_policy() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, FLOWS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["verify", "--output", "json", "--inventory"])
        .arg(fixture())
        .arg("--policies")
        .arg(policies(dir.path()))
        .arg("--flows")
        .arg(&flows)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    assert!(text.contains("cnp/deny-external"), "{text}");
    assert!(!text.contains("cnp/db-to-api"), "{text}");
}

#[test]
fn a_bad_cluster_policy_is_an_error_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: bad}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{domainNames: [a.io]}]}]}\n",
    )
    .unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, FLOWS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["verify", "--inventory"])
        .arg(fixture())
        .arg("--policies")
        .arg(&bad)
        .arg("--flows")
        .arg(&flows)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{}, document 1: ClusterNetworkPolicy bad: field spec.egress[0].to[0].domainNames: domainNames are only supported in Accept rules",
            bad.display()
        )),
        "{stderr}"
    );
}
