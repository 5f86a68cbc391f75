//! Checks of `deploy/`: the kustomize builds, Kubernetes schema validation
//! (`kubernetes-validate`), `checkov`, least privilege of the DaemonSet, RBAC against the
//! inventory's watches, and the Grafana dashboard against a metrics scrape.
//!
//! The PyPI tools are installed by `cargo xtask setup` into `target/deploy-tools`. Without a
//! tool these tests skip with a message, except under `CI=true`, where they fail.

// Test code: helpers panic with a message on broken fixtures, like the tests themselves.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{apps::v1::DaemonSet, rbac::v1::ClusterRole};
use netpol_observe_e2e::ci;

/// The Kubernetes version the manifests are validated against (bundled by kubernetes-validate).
const KUBERNETES_VERSION: &str = "1.33.0";

/// The kustomize entry points: the core base and the two Prometheus Operator variants.
const BUILDS: &[&str] = &["base", "servicemonitor", "podmonitor"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

/// A tool from `target/deploy-tools/bin` (installed by `cargo xtask setup`) or from `PATH`.
/// `None` (with a message) when missing outside CI; under `CI=true` a missing tool panics.
fn tool(test: &str, name: &str) -> Option<PathBuf> {
    let venv = root().join("target/deploy-tools/bin").join(name);
    if venv.is_file() {
        return Some(venv);
    }
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if on_path.is_none() {
        assert!(
            !ci(),
            "{test}: CI=true requires {name} (`cargo xtask setup` installs it)"
        );
        eprintln!("SKIPPED {test}: {name} not found; run `cargo xtask setup`");
    }
    on_path
}

/// `kubectl kustomize deploy/kubernetes/<build>`.
fn kustomize(kubectl: &Path, build: &str) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy().join("kubernetes").join(build))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {build}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).expect("rendered YAML parses")
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

#[test]
fn kustomize_builds_and_kubernetes_validate_accepts_every_manifest() {
    let test = "kustomize_builds_and_kubernetes_validate_accepts_every_manifest";
    let Some(kubectl) = tool(test, "kubectl") else {
        return;
    };
    let Some(validate) = tool(test, "kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for build in BUILDS {
        let rendered = kustomize(&kubectl, build);
        let docs = documents(&rendered);
        let kinds: BTreeSet<String> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "NetworkPolicy",
            "PriorityClass",
        ] {
            assert!(kinds.contains(kind), "{build}: no {kind} in {kinds:?}");
        }
        let monitor = match *build {
            "servicemonitor" => Some("ServiceMonitor"),
            "podmonitor" => Some("PodMonitor"),
            _ => None,
        };
        if let Some(m) = monitor {
            assert!(kinds.contains(m), "{build}: no {m}");
            // The alerting rules come with either monitor (../alerts).
            assert!(
                kinds.contains("PrometheusRule"),
                "{build}: no PrometheusRule"
            );
        }
        // Every namespaced object lands in the agent's namespace.
        for d in &docs {
            let kind = d["kind"].as_str().unwrap_or_default();
            if !matches!(
                kind,
                "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "PriorityClass"
            ) {
                assert_eq!(
                    d["metadata"]["namespace"], "netpol-observe",
                    "{build}: {kind} {:?}",
                    d["metadata"]["name"]
                );
            }
        }

        let file = dir.path().join(format!("{build}.yaml"));
        std::fs::write(&file, &rendered).expect("write rendered manifests");
        let out = Command::new(&validate)
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubernetes-validate {build}:\n{said}");
        // Only the Prometheus Operator's custom resources lack a bundled schema; nothing else
        // may slip through unvalidated.
        for line in said.lines().filter(|l| !l.starts_with("INFO")) {
            assert!(
                line.contains("api version monitoring.coreos.com/v1"),
                "kubernetes-validate {build}: {line}"
            );
        }
        let passed = said.lines().filter(|l| l.contains(" passed for ")).count();
        // The monitor and the PrometheusRule.
        let custom = if monitor.is_some() { 2 } else { 0 };
        assert_eq!(passed + custom, docs.len(), "{build}:\n{said}");
    }
}

/// Validates the Prometheus Operator objects against the upstream CRD schemas (arguments: CRD
/// file, object file, …) and prints the objects as a JSON array. The schemas' Go regexes are
/// not all valid Python ones, so the schema itself is not checked (only patterns of fields an
/// object sets are compiled).
const VALIDATE_CUSTOM_RESOURCES: &str = r#"
import json, sys, yaml, jsonschema
out = []
for crd_path, obj_path in zip(sys.argv[1::2], sys.argv[2::2]):
    crd = yaml.safe_load(open(crd_path))
    obj = yaml.safe_load(open(obj_path))
    assert obj["kind"] == crd["spec"]["names"]["kind"], (obj_path, crd_path)
    version = obj["apiVersion"].split("/")[1]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{obj_path}: {list(e.path)}: {e.message}" for e in errors)
    out.append(obj)
print(json.dumps(out))
"#;

/// The monitoring objects (the PrometheusRule with the alerts, the ServiceMonitor, the
/// PodMonitor) are valid against the upstream CRD schemas (`../shared/schemas`, which
/// `kubernetes-validate` does not have); the alerting rules pass `promtool check rules`, query
/// only metrics the agent exports, and `promtool test rules` shows
/// `NetpolObserveUnenforcedFlows` firing per node and namespace pair for a node's first
/// unenforced flow (a series born in the window) and for more (an older series growing), and
/// not for flows older than 10 minutes; `NetpolObserveNewDependencies` fires for a workload's
/// first flow outside the drift baseline, not for old drift.
// One rule file: rendered, checked, then tested with promtool against the series written for it.
#[test]
fn alerting_rules_are_valid_and_fire_on_unenforced_flows() {
    let test = "alerting_rules_are_valid_and_fire_on_unenforced_flows";
    let Some(python) = tool(test, "python") else {
        return;
    };
    let Some(promtool) = tool(test, "promtool") else {
        return;
    };
    let schemas = root().join("../shared/schemas/prometheus-operator");
    let modules = Command::new(&python)
        .args(["-c", "import jsonschema, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !schemas.is_dir() || !modules {
        assert!(
            !ci(),
            "{test}: CI=true requires {} and jsonschema + pyyaml in {} (`cargo xtask setup`)",
            schemas.display(),
            python.display()
        );
        eprintln!(
            "SKIPPED {test}: no {} or no jsonschema/pyyaml",
            schemas.display()
        );
        return;
    }
    let k = deploy().join("kubernetes");
    let out = Command::new(&python)
        .args(["-c", VALIDATE_CUSTOM_RESOURCES])
        .arg(schemas.join("monitoring.coreos.com_prometheusrules.yaml"))
        .arg(k.join("alerts/prometheusrule.yaml"))
        .arg(schemas.join("monitoring.coreos.com_servicemonitors.yaml"))
        .arg(k.join("servicemonitor/servicemonitor.yaml"))
        .arg(schemas.join("monitoring.coreos.com_podmonitors.yaml"))
        .arg(k.join("podmonitor/podmonitor.yaml"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "CRD schema validation: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("validated objects as JSON");
    let rule = &objects[0];
    assert_eq!(rule["metadata"]["namespace"], "netpol-observe");

    // The rule file Prometheus would load (JSON is YAML).
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = serde_json::json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).expect("write rules");
    let check = Command::new(&promtool)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run promtool check rules");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS: 3 rules found"), "{said}");
    let exported = sample_names(&scrape());
    for r in rules["groups"][0]["rules"].as_array().expect("rules") {
        let expr = r["expr"].as_str().expect("expr");
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(exported.contains(&name), "the rule queries {name}: {expr}");
        }
    }

    let series = |node: &str, src: &str| {
        format!(
            r#"netpol_observe_unenforced_flows_total{{node="{node}",src_namespace="{src}",dst_namespace="backend",dst_workload="api",policy="backend/api-np"}}"#
        )
    };
    let alert = |node: &str, src: &str, n: u32| {
        let mut labels = serde_json::json!({
            "severity": "warning", "node": node, "dst_namespace": "backend",
        });
        // An empty label is no label.
        if !src.is_empty() {
            labels["src_namespace"] = src.into();
        }
        serde_json::json!({
            "exp_labels": labels,
            "exp_annotations": {
                "summary": format!("NetworkPolicies not enforced on node {node}"),
                "description": format!(
                    "{n} flows from namespace \"{src}\" to namespace \"backend\" (\"\": outside \
                     the cluster) that the NetworkPolicies in force deny were delivered on node \
                     {node} in the last 10 minutes: its CNI does not enforce them. The policies: \
                     the `policy` label of netpol_observe_unenforced_flows_total; the flows: the \
                     agent's /api/v1/flows (\"unenforced\")."
                ),
            },
        })
    };
    let dns_alert = |n: u32| {
        serde_json::json!({
            "exp_labels": {
                "severity": "warning", "policy": "shop/web-egress", "kind": "Deployment",
                "workload": "web",
            },
            "exp_annotations": {
                "summary": "A DNS name shop/web-egress allows moved outside its ipBlocks",
                "description": format!(
                    "{n} times in the last 10 minutes a name that NetworkPolicy shop/web-egress \
                     allows by name resolved, for Deployment web, to an address outside the \
                     policy's ipBlocks for it: its connections there will be denied. The name \
                     and address: the agent's log (\"DNS rotation\") and \"dns_rotation\" on \
                     the flows in /api/v1/flows."
                ),
            },
        })
    };
    let at = |minutes: u32, alerts: Vec<serde_json::Value>| {
        serde_json::json!({
            "eval_time": format!("{minutes}m"),
            "alertname": "NetpolObserveUnenforcedFlows",
            "exp_alerts": alerts,
        })
    };
    let unit = serde_json::json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // node-1: its first unenforced flow (world → api) at 20 min.
                {"series": series("node-1", ""), "values": "_x20 1x40"},
                // node-2: 5 before, one more at 21 min.
                {"series": series("node-2", "frontend"), "values": "5x20 6x40"},
                // node-3: old ones only.
                {"series": series("node-3", "frontend"), "values": "3x60"},
            ],
            "alert_rule_test": [
                at(15, vec![]),
                at(25, vec![alert("node-1", "", 1), alert("node-2", "frontend", 1)]),
                at(45, vec![]),
            ],
        }, {
            "interval": "1m",
            "input_series": [
                // web's first flow to db-subnet outside the baseline at 20 min; api's old
                // drift only.
                {"series": r#"netpol_observe_drift_flows_total{src_namespace="frontend",src_workload="web",dst_namespace="",dst_workload="db-subnet",dst_port="5432",protocol="TCP",kind="new_destination"}"#,
                 "values": "_x20 1x40"},
                {"series": r#"netpol_observe_drift_flows_total{src_namespace="backend",src_workload="api",dst_namespace="backend",dst_workload="cache",dst_port="6380",protocol="TCP",kind="new_port"}"#,
                 "values": "4x60"},
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "NetpolObserveNewDependencies", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "NetpolObserveNewDependencies", "exp_alerts": [{
                    "exp_labels": {
                        "severity": "info", "src_namespace": "frontend", "src_workload": "web",
                        "dst_workload": "db-subnet", "kind": "new_destination",
                    },
                    "exp_annotations": {
                        "summary": "New dependency web -> db-subnet (new_destination)",
                        "description": "1 flows from frontend/web to /db-subnet in the last 10 \
                            minutes are outside the drift baseline (new_destination). The edges: \
                            the agents' /api/v1/drift.",
                    },
                }]},
                {"eval_time": "45m", "alertname": "NetpolObserveNewDependencies", "exp_alerts": []},
            ],
        }, {
            "interval": "1m",
            "input_series": [
                // web's first rotation at 20 min, a second at 30 min; api's old one only.
                {"series": r#"netpol_observe_dns_rotations_total{namespace="shop",kind="Deployment",workload="web",policy="shop/web-egress"}"#,
                 "values": "_x20 1x10 2x30"},
                {"series": r#"netpol_observe_dns_rotations_total{namespace="shop",kind="Deployment",workload="api",policy="shop/api-egress"}"#,
                 "values": "1x60"},
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "NetpolObserveDnsRotation", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "NetpolObserveDnsRotation", "exp_alerts": [dns_alert(1)]},
                {"eval_time": "35m", "alertname": "NetpolObserveDnsRotation", "exp_alerts": [dns_alert(1)]},
                {"eval_time": "55m", "alertname": "NetpolObserveDnsRotation", "exp_alerts": []},
            ],
        }],
    });
    std::fs::write(dir.path().join("test.yaml"), unit.to_string()).expect("write test");
    let run = Command::new(&promtool)
        .args(["test", "rules", "test.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run promtool test rules");
    assert!(
        run.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn checkov_passes_except_annotated_exceptions() {
    let test = "checkov_passes_except_annotated_exceptions";
    let Some(kubectl) = tool(test, "kubectl") else {
        return;
    };
    let Some(checkov) = tool(test, "checkov") else {
        return;
    };
    // Not a dot-directory (tempfile's default `.tmp…`): checkov ignores hidden directories.
    let dir = tempfile::Builder::new()
        .prefix("netpol-observe-checkov-")
        .tempdir()
        .expect("tempdir");
    // base is contained in both variants; scan the variants (every object, both monitors).
    for build in ["servicemonitor", "podmonitor"] {
        std::fs::write(
            dir.path().join(format!("{build}.yaml")),
            kustomize(&kubectl, build),
        )
        .expect("write rendered manifests");
    }
    let out = Command::new(&checkov)
        .arg("-d")
        .arg(dir.path())
        .args(["--framework", "kubernetes", "--skip-download", "-o", "json"])
        .output()
        .expect("run checkov");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let summary = &report["summary"];
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {} {}", c["check_id"], c["resource"], c["check_name"]))
        .collect();
    assert!(failed.is_empty(), "checkov failed checks: {failed:#?}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(summary["passed"].as_u64().unwrap_or(0) > 100, "{summary}");
    assert!(out.status.success(), "checkov exit status {}", out.status);
    // Every skipped check is one of the DaemonSet's annotated exceptions, with its reason.
    let daemonset = std::fs::read_to_string(deploy().join("kubernetes/base/daemonset.yaml"))
        .expect("read daemonset.yaml");
    for skipped in report["results"]["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let id = skipped["check_id"].as_str().unwrap_or_default();
        assert!(
            daemonset
                .lines()
                .any(|l| l.contains("checkov.io/skip") && l.contains(&format!("\"{id}="))),
            "checkov skipped {id} without an annotated reason"
        );
    }
}

#[test]
fn daemonset_is_least_privilege() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/base/daemonset.yaml"))
        .expect("read daemonset.yaml");
    let ds: DaemonSet = serde_saphyr::from_str(&text).expect("daemonset.yaml is a DaemonSet");
    let pod = ds.spec.template.spec.expect("pod template spec");
    assert_eq!(
        pod.host_network,
        Some(true),
        "hostNetwork (documented need)"
    );
    assert_eq!(pod.host_pid, None);
    assert_eq!(pod.host_ipc, None);
    assert_eq!(
        pod.tolerations.as_deref().map(|t| t
            .iter()
            .map(|t| t.operator.as_deref().unwrap_or_default())
            .collect::<Vec<_>>()),
        Some(vec!["Exists"]),
        "tolerates every taint"
    );
    assert!(pod.priority_class_name.is_some());
    let [c] = pod.containers.as_slice() else {
        panic!("one container expected");
    };
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "PERFMON", "NET_ADMIN"]));

    // hostPaths: only the BTF directory, mounted read-only.
    let volumes = pod.volumes.unwrap_or_default();
    let host_paths: Vec<(&str, &str)> = volumes
        .iter()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.as_str(), h.path.as_str()))
        })
        .collect();
    assert_eq!(host_paths, vec![("btf", "/sys/kernel/btf")]);
    for m in c.volume_mounts.iter().flatten() {
        if host_paths.iter().any(|(n, _)| *n == m.name) {
            assert_eq!(m.read_only, Some(true), "hostPath {} is read-only", m.name);
        }
    }

    // NODE_NAME from the downward API, probes on /healthz and /readyz, limits set.
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    let res = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(res.requests.as_ref().is_some_and(|r| r.contains_key(key)));
        assert!(res.limits.as_ref().is_some_and(|r| r.contains_key(key)));
    }
}

/// The agent's ClusterRole grants `get`/`list`/`watch` on exactly the inventory's watches and
/// `create` on exactly the reviews that check callers of `/api/v1`; nothing else.
#[test]
fn rbac_grants_exactly_the_inventory_watches() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/base/clusterrole.yaml"))
        .expect("read clusterrole.yaml");
    let role: ClusterRole =
        serde_saphyr::from_str(&text).expect("clusterrole.yaml is a ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "unexpected rule {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> =
        netpol_observe_core::inventory::WATCHED_RESOURCES
            .iter()
            .flat_map(|(g, r)| {
                ["get", "list", "watch"]
                    .into_iter()
                    .map(move |v| ((*g).to_owned(), (*r).to_owned(), v.to_owned()))
            })
            .chain(
                netpol_observe_agent::http::auth::REVIEW_PERMISSIONS
                    .iter()
                    .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned())),
            )
            .collect();
    assert_eq!(granted, wanted);
}

/// The reader role grants `get` on the agent's two virtual resources (what its
/// SubjectAccessReviews ask) and nothing else; the agent's ServiceAccount is not bound to it.
#[test]
fn reader_role_grants_exactly_the_api_resources() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/base/clusterrole-reader.yaml"))
        .expect("read clusterrole-reader.yaml");
    let role: ClusterRole =
        serde_saphyr::from_str(&text).expect("clusterrole-reader.yaml is a ClusterRole");
    assert_eq!(role.metadata.name.as_deref(), Some("netpol-observe-reader"));
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let group = netpol_observe_agent::http::auth::API_GROUP.to_owned();
    let wanted: BTreeSet<(String, String, String)> = [
        netpol_observe_agent::http::auth::ApiResource::Flows,
        netpol_observe_agent::http::auth::ApiResource::Recommendations,
    ]
    .iter()
    .map(|r| (group.clone(), r.name().to_owned(), "get".to_owned()))
    .collect();
    assert_eq!(granted, wanted);
    let binding = std::fs::read_to_string(deploy().join("kubernetes/base/clusterrolebinding.yaml"))
        .expect("read clusterrolebinding.yaml");
    assert!(!binding.contains("netpol-observe-reader"));
}

/// The scrape the dashboard is checked against: the metrics module's encoding of a fully
/// populated registry. When the agent can run here, feed a real `/metrics` scrape instead.
fn scrape() -> String {
    netpol_observe_agent::metrics::sample::populated_scrape().expect("encode the populated metrics")
}

/// Sample names (without labels) of an OpenMetrics or Prometheus text scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every PromQL string of a dashboard: panel target `expr`s and variable queries.
fn promql(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("netpol_observe_") => {
                        out.push(s.clone())
                    }
                    _ => promql(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| promql(v, out)),
        _ => {}
    }
}

/// The `netpol_observe_*` metric names used in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("netpol_observe_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_queries_only_metrics_the_agent_exports() {
    let path = deploy().join("grafana/netpol-observe.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    promql(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 15,
        "only {} PromQL expressions found",
        exprs.len()
    );

    let exported = sample_names(&scrape());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "expression without a netpol_observe metric: {expr}"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "dashboard queries {name}, which the scrape does not have (in: {expr})"
            );
            used.insert(name);
        }
    }
    // The dashboard covers what the issue asks for.
    for name in [
        "netpol_observe_flows_total",
        "netpol_observe_drops_total",
        "netpol_observe_unprotected_workloads",
        "netpol_observe_staged_verdicts_total",
        "netpol_observe_flow_table_entries",
        "netpol_observe_flow_table_capacity",
        "netpol_observe_ringbuf_events_lost_total",
        "netpol_observe_kernel_errors_total",
        "netpol_observe_inventory_synced",
        "netpol_observe_unenforced_flows_total",
        "netpol_observe_policy_enforcement",
    ] {
        assert!(used.contains(name), "the dashboard has no panel on {name}");
    }
    let vars: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        vars,
        BTreeSet::from(["datasource", "namespace", "workload"])
    );
}

#[test]
fn dashboard_configmap_carries_the_dashboard_for_the_sidecar() {
    let test = "dashboard_configmap_carries_the_dashboard_for_the_sidecar";
    let Some(kubectl) = tool(test, "kubectl") else {
        return;
    };
    let docs = documents(&kustomize(&kubectl, "base"));
    let cm = find(&docs, "ConfigMap", "netpol-observe-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded: serde_json::Value =
        serde_json::from_str(cm["data"]["netpol-observe.json"].as_str().expect("data"))
            .expect("embedded dashboard is JSON");
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/netpol-observe.json")).expect("read"),
    )
    .expect("dashboard JSON");
    assert_eq!(embedded, file);
}
