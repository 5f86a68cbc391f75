//! `netpol-observe evaluate` end to end (no root needed): JSON lines in input order, bad lines
//! reported with file:line while the others are still evaluated, exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command};

use netpol_observe_core::policy::{EvaluatedFlow, SideResult};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shop")
}

#[test]
fn evaluates_each_line_in_order_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        concat!(
            r#"{"protocol":"TCP","src":{"ip":"10.244.1.5","port":40000},"dst":{"ip":"10.96.0.20","port":80}}"#, "\n",
            "this is not json\n",
            r#"{"protocol":"TCP","src":{"ip":"10.244.2.3"},"dst":{"ip":"10.244.1.9","port":9000},"state":"attempted"}"#, "\n",
            "\n",
            r#"{"protocol":"UDP","src":{"ip":"10.244.1.9"},"dst":{"ip":"10.0.2.10","port":53}}"#, "\n",
        ),
    )
    .unwrap();
    let subnets = dir.path().join("subnets.yaml");
    std::fs::write(&subnets, "db-subnet: [10.0.2.0/24]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["evaluate", "--inventory"])
        .arg(fixture())
        .arg("--flows")
        .arg(&flows)
        .arg("--subnets")
        .arg(&subnets)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{}:2: invalid flow record", flows.display())),
        "{stderr}"
    );
    let lines: Vec<EvaluatedFlow> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    // web → svc/api: allowed by api-from-web, attributed.
    assert!(lines[0].verdict.allowed);
    assert_eq!(lines[0].verdict.ingress.policies, ["shop/api-from-web"]);
    assert_eq!(lines[0].flow.src.pod.as_deref(), Some("web-7d9c5b-x2abc"));
    assert_eq!(lines[0].flow.dst.service.as_ref().unwrap().name, "api");
    // db → api: denied by both isolating policies.
    assert!(!lines[1].verdict.allowed);
    assert_eq!(lines[1].verdict.ingress.result, SideResult::Denied);
    assert_eq!(
        lines[1].verdict.ingress.policies,
        ["shop/api-from-web", "shop/default-deny"]
    );
    // api → db-subnet: egress not isolated.
    assert!(lines[2].verdict.allowed);
    assert_eq!(lines[2].flow.dst.subnet.as_deref(), Some("db-subnet"));
}

#[test]
fn policies_override_the_inventory_and_bad_policies_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        r#"{"protocol":"TCP","src":{"ip":"10.244.2.3"},"dst":{"ip":"10.244.1.9","port":9000}}"#,
    )
    .unwrap();
    // With an empty policy set, the denied flow passes.
    let none = dir.path().join("none.yaml");
    std::fs::write(&none, "").unwrap();
    let run = |policies: &Path| {
        Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
            .args(["evaluate", "--inventory"])
            .arg(fixture())
            .arg("--policies")
            .arg(policies)
            .arg("--flows")
            .arg(&flows)
            .output()
            .unwrap()
    };
    let out = run(&none);
    assert_eq!(out.status.code(), Some(0));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["verdict"]["allowed"], true);
    assert_eq!(line["verdict"]["ingress"]["result"], "not-isolated");
    // A bad policy: an error naming the file, document, policy and field; no output.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: in, values: [x]}]}\n").unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml, document 1: NetworkPolicy shop/p: field spec.podSelector.matchExpressions[0].operator: unknown operator \"in\""),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
