//! Hostile and broken input (issue 19): names that would escape the output folder or that the
//! API server would reject, attribution trusted from input files and agents, through the CLI
//! binary and the library.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use axum::{Router, routing::get};
use netpol_observe_core::{attribution::Subnets, inventory::Inventory};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An attributed flow line from `src_ns`/`web` to `dst_ns`/`api` on 8080/TCP.
fn flow_line(src_ns: &str, src_labels: &str, dst_ns: &str) -> String {
    format!(
        r#"{{"protocol":"TCP","src":{{"ip":"10.244.1.5","namespace":{src_ns:?},"pod":"web-1","workload":{{"kind":"Deployment","name":"web"}},"labels":{src_labels}}},"dst":{{"ip":"10.244.1.9","port":8080,"namespace":{dst_ns:?},"pod":"api-1","workload":{{"kind":"Deployment","name":"api"}},"labels":{{"app":"api"}}}}}}"#
    )
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// A flow whose namespace is `../../../../var/x/escaped` must not make `recommend --write DIR/`
/// write `escaped.yaml` outside DIR: the line is rejected naming file:line and field, the other
/// flows are still used, the exit code says a line was bad.
#[test]
fn recommend_never_writes_outside_the_output_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // From root/1/2/3/out/, `../../../../var/x/escaped.yaml` is root/var/x/escaped.yaml.
    std::fs::create_dir_all(root.join("var/x")).unwrap();
    let out_dir = root.join("1/2/3/out");
    let flows = root.join("flows.jsonl");
    std::fs::write(
        &flows,
        [
            flow_line("shop", r#"{"app":"web"}"#, "shop"),
            flow_line("../../../../var/x/escaped", r#"{"app":"web"}"#, "shop"),
            flow_line("shop", r#"{"app":"web"}"#, "../../../../var/x/escaped"),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&flows)
        .arg("--write")
        .arg(format!("{}/", out_dir.display()))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for (line, field) in [(2, "src.namespace"), (3, "dst.namespace")] {
        assert!(
            err.contains(&format!(
                "{}:{line}: rejected flow record: field {field}: \"../../../../var/x/escaped\" is not a valid namespace name",
                flows.display()
            )),
            "{err}"
        );
    }
    assert_eq!(
        files_under(root),
        [
            PathBuf::from("1/2/3/out/shop.yaml"),
            PathBuf::from("flows.jsonl")
        ],
        "{err}"
    );
    let yaml = std::fs::read_to_string(out_dir.join("shop.yaml")).unwrap();
    assert!(!yaml.contains("escaped"), "{yaml}");
}

/// Names the API server would reject never reach a written policy: each such line is
/// rejected with its file:line and field, the valid flows still give their policies.
#[test]
fn recommend_rejects_names_the_api_server_would_reject() {
    let tmp = tempfile::tempdir().unwrap();
    let flows = tmp.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        [
            flow_line("shop", r#"{"app":"web"}"#, "shop"),
            flow_line("Bad_Name!", r#"{"app":"web"}"#, "shop"),
            flow_line("shop", r#"{"app":"Shop Space"}"#, "shop"),
            flow_line("shop", r#"{"-bad key":"web"}"#, "shop"),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&flows)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = flows.display();
    for expected in [
        format!("{f}:2: rejected flow record: field src.namespace: \"Bad_Name!\""),
        format!(
            "{f}:3: rejected flow record: field src.labels[\"app\"]: \"Shop Space\" is not a valid label value"
        ),
        format!(
            "{f}:4: rejected flow record: field src.labels[\"-bad key\"]: \"-bad key\" is not a valid label key"
        ),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in {err}");
    }
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("name: web-np"), "{yaml}");
    for bad in ["Bad_Name", "Shop Space", "bad key"] {
        assert!(!yaml.contains(bad), "{bad} in {yaml}");
    }
}

/// An agent's answer is input like a file: a flow with a traversal namespace is rejected,
/// named by the agent's URL and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_with_invalid_names_are_rejected() {
    let body = format!(
        "{}\n{}\n",
        flow_line("shop", r#"{"app":"web"}"#, "shop"),
        flow_line("../../../../var/x/escaped", r#"{"app":"web"}"#, "shop")
    );
    let app = Router::new().route("/api/v1/flows", get(move || async move { body.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("a/b/c/out");
    std::fs::create_dir_all(tmp.path().join("var/x")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_netpol-observe"))
        .args(["recommend", "--agent", &format!("http://{addr}"), "--write"])
        .arg(format!("{}/", out_dir.display()))
        .output()
        .await
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "http://{addr}/api/v1/flows:2: rejected flow record: field src.namespace"
        )),
        "{err}"
    );
    assert_eq!(
        files_under(tmp.path()),
        [PathBuf::from("a/b/c/out/shop.yaml")],
        "{err}"
    );
}

fn inventory_error(yaml: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("inv.yaml");
    std::fs::write(&file, yaml).unwrap();
    let err = Inventory::from_path(&file).unwrap_err().to_string();
    err.replace(&file.display().to_string(), "inv.yaml")
}

/// Names in inventory files are checked at load: the error names file, document, object and
/// field.
#[test]
fn inventory_files_with_invalid_names_are_rejected() {
    let pod = |meta: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n{meta}\nspec:\n  containers:\n  - name: c\n{spec}\nstatus:\n  podIP: 10.244.1.5\n"
        )
    };
    let cases = [
        (
            pod("  name: web-1\n  namespace: ../../x", ""),
            "inv.yaml, document 1: Pod ../../x/web-1: field metadata.namespace: \"../../x\" is not a valid namespace name",
        ),
        (
            pod("  name: Bad_Name!\n  namespace: shop", ""),
            "inv.yaml, document 1: Pod shop/Bad_Name!: field metadata.name: \"Bad_Name!\" is not a valid object name",
        ),
        (
            pod("  name: web-1\n  namespace: shop\n  labels:\n    \"-bad key\": x", ""),
            "inv.yaml, document 1: Pod shop/web-1: field metadata.labels[\"-bad key\"]: \"-bad key\" is not a valid label key",
        ),
        (
            pod("  name: web-1\n  namespace: shop\n  labels:\n    app: Shop Space", ""),
            "inv.yaml, document 1: Pod shop/web-1: field metadata.labels[\"app\"]: \"Shop Space\" is not a valid label value",
        ),
        (
            pod(
                "  name: web-1\n  namespace: shop\n  ownerReferences:\n  - {apiVersion: apps/v1, kind: ReplicaSet, name: ../web, uid: u}",
                "",
            ),
            "field metadata.ownerReferences[0].name: \"../web\" is not a valid object name",
        ),
        (
            pod(
                "  name: web-1\n  namespace: shop",
                "    ports:\n    - {name: Http Port, containerPort: 80}",
            ),
            "field spec.containers[0].ports[0].name: \"Http Port\" is not a valid port name",
        ),
        (
            pod("  namespace: shop", ""),
            "inv.yaml, document 1: Pod shop/<unnamed>: field metadata.name: missing",
        ),
        (
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: Shop Space}\n".to_owned(),
            "inv.yaml, document 2: Namespace Shop Space: field metadata.name: \"Shop Space\" is not a valid namespace name",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: \"a b\"}}\n  template: {}\n".to_owned(),
            "Deployment shop/web: field spec.selector.matchLabels[\"app\"]: \"a b\" is not a valid label value",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: api, namespace: shop}\n  spec:\n    selector: {app: \"x/y\"}\n".to_owned(),
            "inv.yaml, document 1, items[0]: Service shop/api: field spec.selector[\"app\"]: \"x/y\" is not a valid label value",
        ),
    ];
    for (yaml, expected) in cases {
        let err = inventory_error(&yaml);
        assert!(
            err.contains(expected),
            "expected {expected:?}\n got {err:?}"
        );
    }
}

/// Subnet names become label values and annotations: they follow the label-value rule.
#[test]
fn subnet_names_are_checked() {
    let err = Subnets::from_yaml_str("\"../db subnet\": [10.0.2.0/24]\n", Path::new("s.yaml"))
        .unwrap_err();
    // As the CLI prints it: the message, then its cause.
    let err = format!("{:#}", anyhow::Error::new(err));
    assert!(
        err.starts_with(
            "s.yaml: subnet \"../db subnet\": \"../db subnet\" is not a valid subnet name"
        ),
        "{err}"
    );
    assert!(Subnets::from_yaml_str("db-subnet: [10.0.2.0/24]\n", Path::new("s.yaml")).is_ok());
}

/// Two pods of namespace `shop`: web (10.244.1.5, app=web) and api (10.244.1.9, app=api).
const TWO_PODS: &str = "apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: shop, labels: {app: web}}, status: {podIP: 10.244.1.5}}
- {apiVersion: v1, kind: Pod, metadata: {name: api-1, namespace: shop, labels: {app: api}}, status: {podIP: 10.244.1.9}}
";

/// Flows to every odd port (32,768 ports, so the recommended rule cuts the port space into
/// 65,536 intervals): the self-check passes, port 65535 included.
#[test]
fn recommend_with_65536_port_intervals_passes_its_self_check() {
    use netpol_observe_core::{
        flow::{FlowRecord, Protocol},
        policy::PolicyEngine,
        recommend::{RecommendConfig, Recommender},
    };
    let inv = Inventory::from_yaml_str(TWO_PODS, "inv.yaml").unwrap();
    let web = "10.244.1.5".parse().unwrap();
    let api = "10.244.1.9".parse().unwrap();
    let flows: Vec<FlowRecord> = (1..=65535u16)
        .step_by(2)
        .map(|p| FlowRecord::new(Protocol::Tcp, web, api, Some(p)))
        .collect();
    let rec =
        Recommender::new(&inv, &Subnets::default(), RecommendConfig::default()).recommend(&flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    assert_eq!(rec.stats.self_check_denied, 0);
    let api_np = rec
        .policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("api-1-np"))
        .unwrap();
    let rules = api_np.spec.as_ref().unwrap().ingress.as_ref().unwrap();
    let ports: usize = rules.iter().map(|r| r.ports.as_ref().unwrap().len()).sum();
    assert_eq!(ports, 32_768);
    let engine = PolicyEngine::compile(&rec.policies, &inv).unwrap();
    assert!(
        engine
            .evaluate_flow(&FlowRecord::new(Protocol::Tcp, web, api, Some(65535)))
            .allowed
    );
    assert!(
        !engine
            .evaluate_flow(&FlowRecord::new(Protocol::Tcp, web, api, Some(65534)))
            .allowed
    );
}

/// A failed self-check (here: a flow whose attribution contradicts the inventory, so the
/// policies built from it deny the real pod) is an error: exit 2, a clear message, nothing
/// written.
#[test]
fn a_failed_self_check_exits_non_zero_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = tmp.path().join("inv.yaml");
    std::fs::write(&inv, TWO_PODS).unwrap();
    let flows = tmp.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        r#"{"protocol":"TCP","src":{"ip":"10.244.1.5","namespace":"shop","pod":"web-1","workload":{"kind":"Pod","name":"web-1"},"labels":{"app":"web"}},"dst":{"ip":"10.244.1.9","port":8080,"namespace":"shop","pod":"api-1","workload":{"kind":"Pod","name":"api-1"},"labels":{"app":"fake"}}}"#,
    )
    .unwrap();
    let out_file = tmp.path().join("out.yaml");
    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&flows)
        .arg("--inventory")
        .arg(&inv)
        .arg("--write")
        .arg(&out_file)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("note: self-check: the recommended policies deny an observed flow"),
        "{err}"
    );
    assert!(
        err.contains("error: self-check failed: the recommended policies deny 1 observed flow(s) (see the notes above); nothing was written"),
        "{err}"
    );
    assert!(!out_file.exists());
}

/// A flow file starting with a UTF-8 byte-order mark, with one line holding a byte that is not
/// UTF-8: line 1 (`web` → `api`) and line 3 (`web` → `db`) are good.
fn bom_and_bad_byte_file(dir: &Path) -> PathBuf {
    let line = |dst: &str, ip: &str| {
        format!(
            r#"{{"protocol":"TCP","src":{{"ip":"10.244.1.5","namespace":"shop","pod":"web-1","workload":{{"kind":"Deployment","name":"web"}},"labels":{{"app":"web"}}}},"dst":{{"ip":{ip:?},"port":8080,"namespace":"shop","pod":"{dst}-1","workload":{{"kind":"Deployment","name":{dst:?}}},"labels":{{"app":{dst:?}}}}}}}"#
        )
    };
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(line("api", "10.244.1.9").as_bytes());
    bytes.extend_from_slice(b"\n{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.244.1.5\"},\"dst\":{\"ip\":\"10.244.1.7\",\"port\":80,\"namespace\":\"sh\xF6p\"}}\n");
    bytes.extend_from_slice(line("db", "10.244.1.10").as_bytes());
    bytes.push(b'\n');
    let file = dir.join("flows.jsonl");
    std::fs::write(&file, bytes).unwrap();
    file
}

/// `flows --file`: the line that is not UTF-8 is reported as file:line and the others are
/// printed (the reading used to stop there and print nothing); the BOM costs no line.
#[test]
fn flows_file_reports_a_non_utf8_line_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let file = bom_and_bad_byte_file(tmp.path());
    let out = bin()
        .args(["flows", "--output", "jsonl", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "error: {}:2: not UTF-8 text (invalid byte at column",
            file.display()
        )),
        "{err}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pods: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["dst"]["pod"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(pods, ["api-1", "db-1"], "{err}");
}

/// `recommend --flows` and `verify --flows` use both good lines (the first one after the BOM
/// included) and report the bad one.
#[test]
fn recommend_and_verify_read_past_a_non_utf8_line_and_a_bom() {
    let tmp = tempfile::tempdir().unwrap();
    let file = bom_and_bad_byte_file(tmp.path());
    let out = bin()
        .args(["recommend", "--flows"])
        .arg(&file)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("error: {}:2: not UTF-8 text", file.display())),
        "{err}"
    );
    assert!(
        err.contains("error: 1 flow line(s) could not be read"),
        "{err}"
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("name: api-np") && yaml.contains("name: db-np"),
        "{yaml}"
    );

    let inv = tmp.path().join("inv.yaml");
    std::fs::write(&inv, TWO_PODS).unwrap();
    let out = bin()
        .args(["verify", "--output", "json", "--policies"])
        .arg(&inv)
        .arg("--inventory")
        .arg(&inv)
        .arg("--flows")
        .arg(&file)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("error: {}:2: not UTF-8 text", file.display())),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["flows"], 2, "{report}");
}

/// Inputs for every command that writes to stdout: (name, arguments).
fn output_commands(dir: &Path) -> Vec<(&'static str, Vec<std::ffi::OsString>)> {
    let inv = dir.join("inv.yaml");
    std::fs::write(&inv, TWO_PODS).unwrap();
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, flow_line("shop", r#"{"app":"web"}"#, "shop") + "\n").unwrap();
    let os = |v: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<std::ffi::OsString> {
        v.iter().map(|a| a.as_ref().to_owned()).collect()
    };
    vec![
        ("recommend", os(&[&"recommend", &"--flows", &flows])),
        (
            "recommend --diff",
            os(&[
                &"recommend",
                &"--flows",
                &flows,
                &"--inventory",
                &inv,
                &"--diff",
            ]),
        ),
        (
            "verify",
            os(&[
                &"verify",
                &"--policies",
                &inv,
                &"--inventory",
                &inv,
                &"--flows",
                &flows,
            ]),
        ),
        (
            "evaluate",
            os(&[&"evaluate", &"--inventory", &inv, &"--flows", &flows]),
        ),
        ("flows", os(&[&"flows", &"--file", &flows])),
        (
            "flows jsonl",
            os(&[&"flows", &"--output", &"jsonl", &"--file", &flows]),
        ),
    ]
}

/// stdout on a full disk (`> /dev/full`): a clear error, exit 2, never a panic (101).
#[test]
fn a_full_disk_on_stdout_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in output_commands(tmp.path()) {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = bin().args(&args).stdout(full).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("error: cannot write to stdout: No space left on device"),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

/// stdout closed by its reader (`… | head -c 0`): the command ends quietly with 141 (what a
/// shell reports for SIGPIPE), never a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in output_commands(tmp.path()) {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = bin()
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(141), "{name}: {err}");
        assert!(!err.contains("error"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

/// stderr closed by its reader: the notes, errors and logs that cannot be written are
/// dropped; the command still does its work and exits with its own status.
#[test]
fn a_closed_stderr_is_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let flows = tmp.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        format!(
            "{}\nnot json\n",
            flow_line("shop", r#"{"app":"web"}"#, "shop")
        ),
    )
    .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bin()
        .args(["recommend", "--log", "debug", "--flows"])
        .arg(&flows)
        .stderr(writer)
        .output()
        .unwrap();
    // 2: the bad line (its report could not be written).
    assert_eq!(out.status.code(), Some(2));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("name: web-np"), "{yaml}");
}

/// `--window 200000000000000d` overflowed the duration arithmetic (a panic): now a clear
/// usage error.
#[test]
fn a_huge_window_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let flows = tmp.path().join("flows.jsonl");
    std::fs::write(&flows, flow_line("shop", r#"{"app":"web"}"#, "shop")).unwrap();
    for flag in ["--window", "--min-observation"] {
        let out = bin()
            .args(["recommend", flag, "200000000000000d", "--flows"])
            .arg(&flows)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains("\"200000000000000d\" is too long: at most 36600d (100 years)"),
            "{flag}: {err}"
        );
    }
}

/// TWO_PODS and a NetworkPolicy meant to let web reach api on 8080, with two typos.
const TYPO_POLICY: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelectr: {matchLabels: {app: api}}
  ingres:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
";

fn load(
    yaml: &str,
    validation: netpol_observe_core::inventory::Validation,
) -> Result<netpol_observe_core::inventory::LoadedInventory, String> {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("inv.yaml");
    std::fs::write(&file, yaml).unwrap();
    Inventory::load(&file, validation)
        .map(|mut l| {
            for w in &mut l.warnings {
                *w = w.replace(&file.display().to_string(), "inv.yaml");
            }
            l
        })
        .map_err(|e| {
            netpol_observe_core::report::Chain(&e)
                .to_string()
                .replace(&file.display().to_string(), "inv.yaml")
        })
}

/// A typo in a NetworkPolicy (`podSelectr`, `ingres`) was dropped: the policy then selected
/// every pod and allowed nothing. It is an error naming file, document, object and fields,
/// as `kubectl --validate=strict` would; `warn` reports and ignores, `ignore` drops.
#[test]
fn unknown_fields_in_a_network_policy_are_an_error() {
    use netpol_observe_core::inventory::Validation;
    let yaml = format!("{TWO_PODS}{TYPO_POLICY}");
    let err = load(&yaml, Validation::Strict).unwrap_err();
    assert_eq!(
        err,
        "inv.yaml, document 2: NetworkPolicy shop/api: unknown fields spec.podSelectr, spec.ingres"
    );
    let warned = load(&yaml, Validation::Warn).unwrap();
    assert_eq!(
        warned.warnings,
        [
            "inv.yaml, document 2: NetworkPolicy shop/api: unknown field spec.podSelectr (ignored)",
            "inv.yaml, document 2: NetworkPolicy shop/api: unknown field spec.ingres (ignored)",
        ]
    );
    assert_eq!(warned.inventory.network_policies.len(), 1);
    let ignored = load(&yaml, Validation::Ignore).unwrap();
    assert!(ignored.warnings.is_empty());
    assert_eq!(ignored.inventory, warned.inventory);

    // Through the CLI: verify refuses the draft (exit 2), naming the field and the opt-out.
    let tmp = tempfile::tempdir().unwrap();
    let inv = tmp.path().join("inv.yaml");
    std::fs::write(&inv, TWO_PODS).unwrap();
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(&pol, TYPO_POLICY).unwrap();
    let flows = tmp.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        r#"{"protocol":"TCP","src":{"ip":"10.244.1.5"},"dst":{"ip":"10.244.1.9","port":8080}}"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        bin()
            .args(["verify", "--policies"])
            .arg(&pol)
            .arg("--inventory")
            .arg(&inv)
            .arg("--flows")
            .arg(&flows)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "error: cannot load the policies {p}: {p}, document 1: NetworkPolicy shop/api: unknown fields spec.podSelectr, spec.ingres (a typo, or a field of a newer Kubernetes: --validate=warn reports and ignores such fields)",
            p = pol.display()
        )),
        "{err}"
    );
    let out = run(&["--validate", "warn"]);
    let err = stderr(&out);
    assert!(
        err.contains("NetworkPolicy shop/api: unknown field spec.podSelectr (ignored)"),
        "{err}"
    );
    // What the typo meant: every pod isolated, nothing allowed.
    assert_eq!(out.status.code(), Some(1), "{err}");
    let out = run(&["--validate", "ignore"]);
    assert!(!stderr(&out).contains("unknown field"));
    assert_eq!(out.status.code(), Some(1));
}

/// Unknown fields are found in every kind of object, at any depth, and in a List itself.
#[test]
fn unknown_fields_in_any_inventory_object_are_named() {
    use netpol_observe_core::inventory::Validation;
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nstatus: {podIp: 10.244.1.5}\n",
            "inv.yaml, document 1: Pod shop/web-1: unknown field status.podIp",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80, protocl: TCP}]\n",
            "inv.yaml, document 1: Pod shop/web-1: unknown field spec.containers[0].ports[0].protocl",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: api, namespace: shop, lables: {a: b}}\n",
            "inv.yaml, document 1, items[0]: Service shop/api: unknown field metadata.lables",
        ),
        (
            "apiVersion: v1\nkind: List\nitem: []\nitems: []\n",
            "inv.yaml, document 1: List: unknown field item",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template: {}\n  replica: 2\n",
            "inv.yaml, document 1: Deployment shop/web: unknown field spec.replica",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}, namespaceSelectr: {}}]\n",
            "inv.yaml, document 1: NetworkPolicy shop/p: unknown field spec.ingress[0].from[0].namespaceSelectr",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nmetadata: {name: b}\n",
            "inv.yaml: document 1: invalid YAML: duplicate mapping key `metadata` is not allowed here at line 4, column 1",
        ),
    ];
    for (yaml, expected) in cases {
        let err = load(yaml, Validation::Strict).unwrap_err();
        assert!(
            err.contains(expected),
            "expected {expected:?}\n     got {err:?}"
        );
    }
}

/// Nesting as deep as the parser allows is read and its unknown field named (on a test thread's
/// 2 MB stack, debug build); one level more, or an alias bomb, is an error naming the file, the
/// document and the line, never a crash.
#[test]
fn deep_or_exploding_yaml_is_an_error_naming_its_place() {
    use netpol_observe_core::{inventory::Validation, yaml::MAX_DEPTH};
    let head = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\n";
    // The document is level 1, `status` level 2.
    let nested = |levels: usize| -> String {
        let mut text = format!("{head}status:\n");
        for i in 0..levels {
            text.push_str(&format!("{}k:\n", "  ".repeat(i + 1)));
        }
        text.push_str(&format!("{}x: 1\n", "  ".repeat(levels + 1)));
        text
    };
    let err = load(&nested(MAX_DEPTH - 2), Validation::Strict).unwrap_err();
    assert_eq!(
        err,
        "inv.yaml, document 2: Pod shop/web-1: unknown field status.k"
    );
    let err = load(&nested(MAX_DEPTH - 1), Validation::Strict).unwrap_err();
    assert!(
        err.starts_with("inv.yaml: document 2: invalid YAML: ") && err.contains("at line 72,"),
        "{err}"
    );
    let mut bomb =
        format!("{head}metadata:\n  name: web-1\n  labels:\n    a: &a [x, x, x, x, x, x, x, x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!(
            "    {name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 8].join(", ")
        ));
    }
    let bomb = bomb.replace("metadata: {name: web-1, namespace: shop}\n", "");
    let err = load(&bomb, Validation::Strict).unwrap_err();
    assert!(
        err.starts_with(
            "inv.yaml: document 2: invalid YAML: YAML document too large or too complex"
        ),
        "{err}"
    );
}

/// A namespaced object without `metadata.namespace` is taken as `default` with a warning
/// naming it and its file; the CLI prints it.
#[test]
fn a_missing_namespace_is_a_warning() {
    use netpol_observe_core::inventory::Validation;
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, labels: {app: web}}\nstatus: {podIP: 10.244.1.5}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n";
    let loaded = load(yaml, Validation::Strict).unwrap();
    assert_eq!(
        loaded.warnings,
        ["inv.yaml, document 1: Pod web-1: no metadata.namespace, taken as \"default\""]
    );
    assert_eq!(loaded.inventory.pods[0].namespace.to_string(), "default");

    let tmp = tempfile::tempdir().unwrap();
    let inv = tmp.path().join("inv.yaml");
    std::fs::write(&inv, yaml).unwrap();
    let flows = tmp.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        r#"{"protocol":"TCP","src":{"ip":"10.0.0.1"},"dst":{"ip":"10.244.1.5","port":80}}"#,
    )
    .unwrap();
    let out = bin()
        .args(["evaluate", "--inventory"])
        .arg(&inv)
        .arg("--flows")
        .arg(&flows)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}, document 1: Pod web-1: no metadata.namespace, taken as \"default\"",
            inv.display()
        )),
        "{err}"
    );
}

/// A subnet name given twice dropped the first one's CIDRs: now an error naming both lines.
#[test]
fn duplicate_subnet_names_are_an_error() {
    let err = Subnets::from_yaml_str(
        "db-subnet: [10.0.2.0/24]\nweb: 10.0.3.0/24\n\"db-subnet\": 10.0.9.0/24\n",
        Path::new("s.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "s.yaml: subnet \"db-subnet\" is defined twice (line 1 and line 3): list all its CIDRs under one name"
    );
    let ok = Subnets::from_yaml_str(
        "db-subnet: [10.0.2.0/24, 10.0.9.0/24]\nweb: 10.0.3.0/24\n",
        Path::new("s.yaml"),
    )
    .unwrap();
    assert_eq!(ok.entries().len(), 3);
}

/// The lab's `--policies`, its scenario and the agent's configuration are strict too.
#[test]
fn lab_policies_scenarios_and_agent_config_reject_unknown_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = tmp.path().join("p.yaml");
    std::fs::write(&pol, TYPO_POLICY).unwrap();
    let err = netpol_observe_lab::enforce::load_policies(&pol)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown fields spec.podSelectr, spec.ingres"),
        "{err}"
    );
    let err = netpol_observe_lab::scenario::parse(
        Path::new("s.yaml"),
        "name: t\nnamespaces: []\nworkload: []\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `workload`"), "{err}");
    let err = netpol_observe_agent::agent::AgentConfig::from_yaml_str(
        "metrics:\n  seriesBudgt: 3\n",
        Path::new("a.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("seriesBudgt"), "{err}");
}
