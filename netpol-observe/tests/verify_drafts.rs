//! `verify` against deliberately broken drafts: each names the observed flows it would break
//! and the isolating policies; the recommended draft passes. Library and CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recommend_support;

use std::process::Command;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use netpol_observe_core::{
    attribution::Attributor,
    flow::{FlowRecord, Protocol},
    policy::PolicyEngine,
    recommend::{
        Recommender, render_yaml,
        verify::{VerifyReport, verify},
    },
};
use recommend_support::*;

struct Fixture {
    scenario: Scenario,
    flows: Vec<FlowRecord>,
    draft: Vec<NetworkPolicy>,
}

fn fixture() -> Fixture {
    let scenario = three_tier();
    let inv = scenario.cluster.inventory();
    let attributor = Attributor::new(&inv, &scenario.subnets);
    let flows = scenario
        .flows
        .iter()
        .cloned()
        .map(|mut f| {
            attributor.attribute(&mut f);
            f
        })
        .collect();
    let draft = Recommender::new(&inv, &scenario.subnets, scenario.config.clone())
        .recommend(&scenario.flows)
        .policies;
    Fixture {
        scenario,
        flows,
        draft,
    }
}

fn run(fx: &Fixture, draft: &[NetworkPolicy]) -> VerifyReport {
    let inv = fx.scenario.cluster.inventory();
    let engine = PolicyEngine::compile(draft, &inv).unwrap();
    verify(&engine, &fx.flows)
}

fn find<'a>(draft: &'a mut [NetworkPolicy], ns: &str, name: &str) -> &'a mut NetworkPolicy {
    draft
        .iter_mut()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .unwrap()
}

/// (src, dst, port, protocol, count) of every denied group.
fn denied(r: &VerifyReport) -> Vec<(String, String, Option<u16>, Protocol, u64)> {
    r.denied
        .iter()
        .map(|d| (d.src.clone(), d.dst.clone(), d.port, d.protocol, d.count))
        .collect()
}

const WEB: &str = "frontend/Deployment/web";
const API_SVC: &str = "backend/Deployment/api via Service backend/api";
const DNS_SVC: &str = "kube-system/Deployment/coredns via Service kube-system/kube-dns";

#[test]
fn recommended_draft_passes() {
    let fx = fixture();
    let r = run(&fx, &fx.draft);
    assert!(r.is_clean(), "{}", r.to_text());
    assert_eq!(r.flows, fx.flows.len() as u64);
    let web = r.workloads.iter().find(|w| w.workload == WEB).unwrap();
    assert_eq!((web.flows_out, web.flows_in, web.denied_out), (4, 6, 0));
}

#[test]
fn wrong_namespace_is_caught() {
    let fx = fixture();
    let mut draft = fx.draft.clone();
    find(&mut draft, "backend", "api-np").metadata.namespace = Some("frontend".into());
    let r = run(&fx, &draft);
    assert_eq!(
        denied(&r),
        [
            (
                "backend/Deployment/api".into(),
                DNS_SVC.into(),
                Some(53),
                Protocol::Udp,
                2
            ),
            (
                "backend/Deployment/api".into(),
                "subnet/db-subnet".into(),
                Some(5432),
                Protocol::Tcp,
                2
            ),
            (
                "backend/Deployment/worker".into(),
                API_SVC.into(),
                Some(80),
                Protocol::Tcp,
                1
            ),
            (WEB.into(), API_SVC.into(), Some(80), Protocol::Tcp, 2),
        ]
    );
    assert_eq!(r.denied[3].ingress.policies, ["backend/default-deny"]);
    assert_eq!(r.denied_flows, 7);
    assert!(r.to_text().contains(
        "DENIED frontend/Deployment/web -> backend/Deployment/api via Service backend/api:80/TCP (2 flow(s)); ingress denied, isolated by backend/default-deny"
    ), "{}", r.to_text());
}

#[test]
fn selector_matching_nothing_is_caught() {
    let fx = fixture();
    let mut draft = fx.draft.clone();
    find(&mut draft, "frontend", "web-np")
        .spec
        .as_mut()
        .unwrap()
        .pod_selector = Some(LabelSelector {
        match_labels: Some(labels(&[("app", "wbe")])),
        match_expressions: None,
    });
    let r = run(&fx, &draft);
    let d = denied(&r);
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d.contains(&(WEB.into(), DNS_SVC.into(), Some(53), Protocol::Udp, 2)));
    assert!(d.contains(&(WEB.into(), API_SVC.into(), Some(80), Protocol::Tcp, 2)));
    assert!(d.contains(&(
        "subnet/world".into(),
        WEB.into(),
        Some(8080),
        Protocol::Tcp,
        4
    )));
    let web = r.workloads.iter().find(|w| w.workload == WEB).unwrap();
    assert_eq!(
        web.denied_by.iter().collect::<Vec<_>>(),
        ["frontend/default-deny"]
    );
    // kubelet probes from the own node stay allowed.
    assert_eq!(r.denied_flows, 8);
}

/// The missing dash: `- podSelector: worker` and `- namespaceSelector: frontend` (two peers,
/// OR) written as one peer (AND), which matches nothing that talks to api.
#[test]
fn and_or_dash_mistake_is_caught() {
    let fx = fixture();
    let mut draft = fx.draft.clone();
    let peer: NetworkPolicyPeer = serde_saphyr::from_str(
        "namespaceSelector:\n  matchLabels:\n    kubernetes.io/metadata.name: frontend\npodSelector:\n  matchLabels:\n    app: worker\n",
    )
    .unwrap();
    find(&mut draft, "backend", "api-np")
        .spec
        .as_mut()
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()[0]
        .from = Some(vec![peer]);
    let r = run(&fx, &draft);
    assert_eq!(
        denied(&r),
        [
            (
                "backend/Deployment/worker".into(),
                API_SVC.into(),
                Some(80),
                Protocol::Tcp,
                1
            ),
            (WEB.into(), API_SVC.into(), Some(80), Protocol::Tcp, 2),
        ]
    );
    assert_eq!(
        r.denied[1].ingress.policies,
        ["backend/api-np", "backend/default-deny"]
    );
    assert!(r.denied[1].egress.passes());
}

#[test]
fn forgotten_dns_is_caught() {
    let fx = fixture();
    let mut draft = fx.draft.clone();
    find(&mut draft, "frontend", "web-np")
        .spec
        .as_mut()
        .unwrap()
        .egress
        .as_mut()
        .unwrap()
        .retain(|r| {
            !netpol_observe_core::yaml::to_string(r)
                .unwrap()
                .contains("port: 53")
        });
    let r = run(&fx, &draft);
    assert_eq!(
        denied(&r),
        [(WEB.into(), DNS_SVC.into(), Some(53), Protocol::Udp, 2)]
    );
    assert_eq!(
        r.denied[0].egress.policies,
        ["frontend/default-deny", "frontend/web-np"]
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
}

fn write_flows(path: &std::path::Path, flows: &[FlowRecord]) {
    let mut s = String::new();
    for f in flows {
        s.push_str(&serde_json::to_string(f).unwrap());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn cli_recommend_then_verify() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, fx.scenario.cluster.yaml()).unwrap();
    let subnets = dir.path().join("subnets.yaml");
    std::fs::write(&subnets, "db-subnet: [10.0.2.0/24]\n").unwrap();
    // Unattributed input, as a user would write it.
    let flows = dir.path().join("flows.jsonl");
    write_flows(&flows, &fx.scenario.flows);

    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .arg("--subnets")
        .arg(&subnets)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, render_yaml(&fx.draft).unwrap());

    // --write DIR: one file per namespace.
    let pdir = dir.path().join("policies/");
    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .arg("--subnets")
        .arg(&subnets)
        .arg("--write")
        .arg(&pdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["backend.yaml", "frontend.yaml"]);

    let verify_cmd = |policies: &std::path::Path, json: bool| {
        let mut c = bin();
        c.args(["verify", "--policies"])
            .arg(policies)
            .arg("--flows")
            .arg(&flows)
            .arg("--inventory")
            .arg(&inv)
            .arg("--subnets")
            .arg(&subnets);
        if json {
            c.args(["--output", "json"]);
        }
        c.output().unwrap()
    };
    let ok = verify_cmd(&pdir, false);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("0 of 15 observed flow(s) would be denied")
    );

    // DNS forgotten in the draft: exit 1, the flows named.
    let mut draft = fx.draft;
    find(&mut draft, "frontend", "web-np")
        .spec
        .as_mut()
        .unwrap()
        .egress
        .as_mut()
        .unwrap()
        .retain(|r| {
            !netpol_observe_core::yaml::to_string(r)
                .unwrap()
                .contains("port: 53")
        });
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, render_yaml(&draft).unwrap()).unwrap();
    let bad = verify_cmd(&broken, false);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains(&format!("DENIED {WEB} -> {DNS_SVC}:53/UDP (2 flow(s)); egress denied, isolated by frontend/default-deny,frontend/web-np")), "{text}");
    let json = verify_cmd(&broken, true);
    assert_eq!(json.status.code(), Some(1));
    let report: VerifyReport = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report.denied_flows, 2);
}

#[test]
fn cli_bad_lines_are_reported_and_the_rest_is_used() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, fx.scenario.cluster.yaml()).unwrap();
    let flows = dir.path().join("flows.jsonl");
    write_flows(&flows, &fx.scenario.flows);
    let mut text = std::fs::read_to_string(&flows).unwrap();
    text.push_str(
        "{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.300\"},\"dst\":{\"ip\":\"10.0.0.1\"}}\n",
    );
    std::fs::write(&flows, text).unwrap();
    let out_file = dir.path().join("out.yaml");
    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .arg("--write")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flows.jsonl:16: invalid flow record"),
        "{stderr}"
    );
    let written = parse_policies(&std::fs::read_to_string(&out_file).unwrap());
    assert_eq!(written.len(), 5);
}

/// `-o` is the format, as kubectl's (issue 26, item 6): `-o yaml` prints the YAML stream,
/// `-o json` one `List` of the same policies, nothing is written to a file named `yaml` or
/// `json`; a path given to `-o` is an error pointing at `--write`, which takes the path (a
/// directory gets `<namespace>.json` files with `-o json`).
#[test]
fn recommend_o_is_the_format_and_write_the_path() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, fx.scenario.cluster.yaml()).unwrap();
    let subnets = dir.path().join("subnets.yaml");
    std::fs::write(&subnets, "db-subnet: [10.0.2.0/24]\n").unwrap();
    let flows = dir.path().join("flows.jsonl");
    write_flows(&flows, &fx.scenario.flows);
    let run = |args: &[&str]| {
        bin()
            .current_dir(dir.path())
            .args(["recommend", "--flows"])
            .arg(&flows)
            .arg("--inventory")
            .arg(&inv)
            .arg("--subnets")
            .arg(&subnets)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let yaml = ok(run(&["-o", "yaml"]));
    assert_eq!(yaml, ok(run(&[])), "yaml is the default");
    let from_yaml = parse_policies(&yaml);
    let list: serde_json::Value = serde_json::from_str(&ok(run(&["-o", "json"]))).unwrap();
    assert_eq!(list["kind"], "List");
    let from_json: Vec<NetworkPolicy> = serde_json::from_value(list["items"].clone()).unwrap();
    assert_eq!(from_json, from_yaml);
    assert_eq!(from_json, fx.draft);
    assert!(!dir.path().join("yaml").exists() && !dir.path().join("json").exists());

    let out = run(&["-o", "policies/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--write policies/"), "{err}");
    assert!(!dir.path().join("policies").exists());

    ok(run(&["-o", "json", "--write", "policies/"]));
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["backend.json", "frontend.json"]);
    let mut written = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(dir.path().join("policies").join(f)).unwrap();
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        let items: Vec<NetworkPolicy> = serde_json::from_value(list["items"].clone()).unwrap();
        written.extend(items);
    }
    written.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    let mut want = from_yaml;
    want.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    assert_eq!(written, want);
    // -o text is the --diff report's format.
    let out = run(&["-o", "text"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `flows --file`: `--since` takes a duration, `-n` keeps the most recent, the table has a
/// verdict column, and `--verdict` on records without verdicts is an error, not an empty table.
#[test]
fn flows_filters_and_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    let now = jiff::Timestamp::now();
    let line = |ip: &str, ago: i64, verdict: &str| {
        let t = now
            .checked_sub(jiff::SignedDuration::from_mins(ago))
            .unwrap();
        format!(
            "{{\"protocol\":\"TCP\",\"src\":{{\"ip\":\"{ip}\"}},\"dst\":{{\"ip\":\"10.0.0.9\",\"port\":80}},\"first_seen\":\"{t}\",\"last_seen\":\"{t}\"{verdict}}}\n"
        )
    };
    let denied = ",\"verdict\":{\"allowed\":false,\"ingress\":{\"result\":\"denied\"},\"egress\":{\"result\":\"not-isolated\"}}";
    std::fs::write(
        &flows,
        line("10.0.0.1", 60, "") + &line("10.0.0.2", 2, denied) + &line("10.0.0.3", 1, ""),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = bin()
            .args(["flows", "--file"])
            .arg(&flows)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, table, err) = run(&["--since", "5m"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !table.contains("10.0.0.1") && table.contains("10.0.0.2"),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains("VERDICT"), "{table}");
    assert!(table.contains("denied"), "{table}");
    let (code, table, _) = run(&["-n", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("10.0.0.3"), "{table}");
    let (code, _, err) = run(&["--since", "yesterday"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--since"), "{err}");
    std::fs::write(&flows, line("10.0.0.1", 1, "")).unwrap();
    let (code, _, err) = run(&["--verdict", "allowed"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("carry no verdict"), "{err}");
}
