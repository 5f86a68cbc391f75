//! The lab on a real kernel: every shipped scenario end to end (the agent reports exactly the
//! traffic list, the recommended policies verify, enforcing them keeps the traffic and drops
//! the forbidden probes with the reason and policy the agent reports), the compiled nftables
//! rules agree with the policy engine on every pod pair and port, a killed lab's leftovers are
//! removed by the next run, and a bad scenario fails before touching the machine, naming the
//! line.

// A test binary: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use netpol_observe_core::{
    attribution::{Attributor, Subnets},
    flow::{Endpoint as FlowEndpoint, FlowRecord, Protocol},
    inventory::Inventory,
    policy::PolicyEngine,
};
use netpol_observe_lab::{
    dns, enforce,
    model::{LabModel, PeerRef, ProbeKind, ProbeModel},
    netns, scenario,
    topology::Topology,
    traffic::{self, Outcome, Timeouts},
};
use serde_json::Value;

/// Labs clear the leftovers of killed labs when they start: the tests that build labs run one
/// at a time so that the SIGKILL test sees its own leftovers before the next run removes them.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs the lab in the system's temp dir (so `--out` may be relative to it, as `cargo xtask
/// lab`'s `lab-out` is to the workspace).
fn lab(args: &[&str]) -> Output {
    Command::new(netpol_observe_e2e::bin())
        .current_dir(std::env::temp_dir())
        .arg("lab")
        .args(args)
        .env("NETPOL_OBSERVE_LOG", "info")
        .output()
        .expect("run netpol-observe lab")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read output")).expect("json")
}

/// One traffic entry as the agent must report it: (client, server, port, protocol, flows).
/// Clients and servers are spelled `ns/workload`, `svc/ns/name` or the subnet name (`world`
/// for anonymous public hosts).
type Entry = (&'static str, &'static str, u16, &'static str, usize);

/// How the test spells an endpoint of a flow record (independently of the lab's own code).
fn spell(ep: &FlowEndpoint) -> String {
    if let Some(s) = &ep.service {
        return format!("svc/{}/{}", s.namespace, s.name);
    }
    match (&ep.namespace, &ep.workload, &ep.subnet) {
        (Some(ns), Some(w), _) => format!("{ns}/{}", w.name),
        (_, _, Some(subnet)) => subnet.clone(),
        _ => ep.ip.to_string(),
    }
}

/// A dependency the agents must report as drift after the learning phase: (source,
/// destination, port/protocol, kind), peers as the metrics name them.
type DriftEdge = (&'static str, &'static str, &'static str, &'static str);

/// Runs a shipped scenario end to end twice — with inventory files and a standalone agent, and
/// with the objects in a real kube-apiserver and the agent in in-cluster mode (`--apiserver`;
/// skipped with a message where the binaries are absent, required under `CI=true`) — checks
/// every output of both against the scenario, and checks that both ways give the same
/// policies and the same enforcement results.
fn shipped_scenario(
    name: &str,
    entries: &[Entry],
    dns_lookups: usize,
    forbidden: usize,
    drift: &[DriftEdge],
) -> (tempfile::TempDir, String) {
    let (files, summary) = run_and_check(name, &[], entries, dns_lookups, forbidden, drift);
    let test = format!("{name} scenario with --apiserver");
    let Some(bins) = netpol_observe_e2e::apiserver::Binaries::find(&test) else {
        return (files, summary);
    };
    let apiserver = [
        "--apiserver",
        "--kube-apiserver",
        bins.apiserver.to_str().expect("path"),
        "--etcd",
        bins.etcd.to_str().expect("path"),
    ];
    let (api, _) = run_and_check(name, &apiserver, entries, dns_lookups, forbidden, drift);
    for log in per_node(api.path(), "agent", "log") {
        assert!(
            log.contains("in-cluster"),
            "every agent ran in-cluster:\n{log}"
        );
    }
    // The same policies (evidence timestamps aside) and the same enforcement both ways.
    let policies = |dir: &Path| -> Vec<NetworkPolicy> {
        let yaml = std::fs::read_to_string(dir.join("recommended.yaml")).expect("yaml");
        serde_saphyr::from_multiple::<NetworkPolicy>(&yaml)
            .expect("policies")
            .into_iter()
            .map(|mut p| {
                p.metadata.annotations = None;
                p
            })
            .collect()
    };
    assert_eq!(policies(files.path()), policies(api.path()));
    assert_eq!(
        read_json(&files.path().join("enforce.json")),
        read_json(&api.path().join("enforce.json"))
    );
    // The same rotation step, where the scenario has one.
    let rotation = files.path().join("rotation.json");
    if rotation.exists() {
        assert_eq!(
            read_json(&rotation),
            read_json(&api.path().join("rotation.json"))
        );
    }
    (files, summary)
}

/// The per-node files `<stem>.<ext>` (one node) or `<stem>-<node>.<ext>` (several) of a lab's
/// output folder, read.
fn per_node(out: &Path, stem: &str, ext: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("output folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name == format!("{stem}.{ext}")
                || (name.starts_with(&format!("{stem}-")) && name.ends_with(&format!(".{ext}")))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {stem} files in {}", out.display());
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect()
}

/// One run of a shipped scenario — agent, recommender, verification, enforcement of the
/// *recommended* policies — with every output checked against the scenario; the output folder
/// and the summary the lab printed.
fn run_and_check(
    name: &str,
    extra: &[&str],
    entries: &[Entry],
    dns_lookups: usize,
    forbidden: usize,
    drift: &[DriftEdge],
) -> (tempfile::TempDir, String) {
    let out = tempfile::tempdir().expect("tempdir");
    let scenario = repo(&format!("deploy/lab/{name}.yaml"));
    // A relative --out (in the temp dir, where the lab runs), as `cargo xtask lab` gives it:
    // every path the lab hands its servers must still work (Prometheus' file discovery once
    // did not).
    assert!(out.path().starts_with(std::env::temp_dir()));
    let relative = out.path().file_name().expect("name").to_owned();
    let mut args = vec![
        "--scenario",
        scenario.to_str().expect("path"),
        "--out",
        relative.to_str().expect("path"),
        "--enforce",
    ];
    args.extend_from_slice(extra);
    // With Prometheus the lab stays up (--keep-running) while the dashboards are checked
    // against it.
    let prometheus = prometheus_present(&format!("{name} scenario with Prometheus"));
    let result = if prometheus {
        args.push("--keep-running");
        lab_kept_running(&args, dashboards_show_data)
    } else {
        lab(&args)
    };
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        result.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("result: every probe as expected"),
        "{stdout}"
    );
    assert!(stdout.contains("enforcement ("), "{stdout}");
    assert!(
        stdout.contains("policies from recommended.yaml"),
        "{stdout}"
    );

    check_learning(out.path(), entries);
    let flows = check_flows(out.path(), entries, dns_lookups);
    let names = check_recommended(out.path(), entries, flows);
    let enforced = check_enforcement(out.path(), entries.len(), forbidden, &names);
    check_metrics_and_drift(out.path(), forbidden, drift, &enforced);
    if prometheus {
        check_prometheus(out.path(), &names, &stdout);
    }
    check_inventory(&scenario, out.path());
    check_cleanup(out.path(), &stdout);
    (out, stdout.into_owned())
}

/// `probes.json`: every traffic entry of the learning phase, every connection, went through.
fn check_learning(out: &Path, entries: &[Entry]) {
    // Learning phase: every traffic entry, every connection, went through (DNS + ClusterIP
    // DNAT for `svc/...` targets).
    let probes = read_json(&out.join("probes.json"));
    let probes = probes.as_array().expect("array");
    assert_eq!(probes.len(), entries.len());
    for p in probes {
        assert_eq!(p["observed"], "allowed", "{p}");
        assert_eq!(p["succeeded"], p["connections"], "{p}");
    }
}

/// `flows.jsonl`: the flows the agents counted are the traffic entries, plus at least
/// `dns_lookups` DNS lookups; returns how many flows it holds.
fn check_flows(out: &Path, entries: &[Entry], dns_lookups: usize) -> usize {
    // The flows the agents counted are exactly the traffic list, plus DNS lookups (a flow
    // between two nodes is also reported, uncounted, by the other node's agent).
    let text = std::fs::read_to_string(out.join("flows.jsonl")).expect("flows.jsonl");
    let flows: Vec<FlowRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a flow record"))
        .collect();
    let mut seen: BTreeMap<(String, String, u16, String), usize> = BTreeMap::new();
    let mut dns = 0;
    for f in flows.iter().filter(|f| f.counted) {
        let protocol = serde_json::to_value(f.protocol).expect("protocol");
        let protocol = protocol.as_str().expect("string").to_owned();
        let dst = spell(&f.dst);
        if dst == "svc/kube-system/kube-dns" && f.dst.port == Some(53) {
            dns += 1;
            continue;
        }
        *seen
            .entry((spell(&f.src), dst, f.dst.port.expect("port"), protocol))
            .or_default() += 1;
    }
    let expected: BTreeMap<(String, String, u16, String), usize> = entries
        .iter()
        .map(|(from, to, port, proto, n)| {
            (
                (from.to_string(), to.to_string(), *port, proto.to_string()),
                *n,
            )
        })
        .collect();
    assert_eq!(seen, expected, "flows.jsonl:\n{text}");
    // One lookup per connection to a Service from a pod (a retried lookup may add one).
    assert!(
        dns >= dns_lookups,
        "{dns} DNS flows, expected {dns_lookups}"
    );
    for f in &flows {
        assert!(
            f.first_seen.is_some() && f.packets.is_some_and(|p| p.sent > 0),
            "{f:?}"
        );
    }
    flows.len()
}

/// `recommended.yaml` and `verify.json`: the policies isolate every namespace of the
/// scenario and allow all `flows` observed flows; returns their `namespace/name`s.
fn check_recommended(out: &Path, entries: &[Entry], flows: usize) -> Vec<String> {
    // The recommended policies parse into Kubernetes types, isolate every namespace of the
    // scenario, and allow every observed flow.
    let yaml = std::fs::read_to_string(out.join("recommended.yaml")).expect("yaml");
    let policies: Vec<NetworkPolicy> = serde_saphyr::from_multiple(&yaml).expect("NetworkPolicies");
    let names: Vec<String> = policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().expect("namespace"),
                p.metadata.name.as_deref().expect("name")
            )
        })
        .collect();
    for (from, to, ..) in entries {
        for end in [from, to] {
            let ns = end
                .trim_start_matches("svc/")
                .split('/')
                .next()
                .expect("ns");
            // The API server's namespace holds no workload of the scenario: no policy there.
            if end.contains('/') && !end.starts_with("svc/default/") {
                assert!(
                    names.contains(&format!("{ns}/default-deny")),
                    "{ns}: {names:?}"
                );
            }
        }
    }
    let verify = read_json(&out.join("verify.json"));
    assert_eq!(verify["flows"], flows, "{verify}");
    assert_eq!(verify["denied_flows"], 0, "{verify}");
    names
}

/// `enforce.json`: the `entries` traffic entries still work and the `forbidden` probes were
/// dropped, with the kernel's reason and a recommended policy (one of `names`); returns the
/// probes.
fn check_enforcement(out: &Path, entries: usize, forbidden: usize, names: &[String]) -> Vec<Value> {
    // Enforcement of the recommended policies: traffic still works, forbidden probes are
    // dropped, and the agent reported the kernel's drop reason and a recommended policy.
    let enforced = read_json(&out.join("enforce.json"));
    let enforced = enforced.as_array().expect("array").clone();
    assert_eq!(enforced.len(), entries + forbidden);
    let mut dropped = 0;
    for p in &enforced {
        if p["kind"] == "traffic" {
            assert_eq!(p["expected"], "allowed", "{p}");
            assert_eq!(p["observed"], "allowed", "{p}");
            assert_eq!(p["drop_reason"], Value::Null, "{p}");
            continue;
        }
        assert_eq!(p["kind"], "forbidden", "{p}");
        assert_eq!(p["expected"], "denied", "{p}");
        assert_eq!(p["observed"], "denied", "{p}");
        assert_eq!(p["succeeded"], 0, "{p}");
        assert_eq!(p["drop_reason"], "NETFILTER_DROP", "{p}");
        let policy = p["policy"].as_str().expect("policy named");
        for part in policy.split(',') {
            assert!(names.iter().any(|n| n == part), "{p}: {names:?}");
        }
        dropped += 1;
    }
    assert_eq!(dropped, forbidden);
    enforced
}

/// The agents' final scrapes and `drift.json`: the drops counted, the drift exactly the
/// forbidden probes' dependencies, every node enforcing (`enforced`: the probes), and
/// promtool content.
fn check_metrics_and_drift(out: &Path, forbidden: usize, drift: &[DriftEdge], enforced: &[Value]) {
    // The final scrapes count those drops (and a rotation step's, checked by its own test), by
    // reason and policy, each on the node that dropped it.
    let scrapes = per_node(out, "metrics", "txt");
    let metrics = scrapes.join("");
    let drop_series: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("netpol_observe_drops_total{") && l.contains("reason=\"NETFILTER_DROP\"")
        })
        .collect();
    let rotated = match out.join("rotation.json") {
        p if p.exists() => read_json(&p)
            .as_array()
            .expect("rotations")
            .iter()
            .map(|r| r["probes"].as_array().expect("probes").len())
            .sum(),
        _ => 0,
    };
    assert_eq!(drop_series.len(), forbidden + rotated, "{metrics}");
    for line in &drop_series {
        assert!(!line.contains("policy=\"unknown\""), "{line}");
    }
    assert!(metrics.contains("netpol_observe_flows_total{"), "{metrics}");
    // Drift: the learning phase is every agent's baseline, so exactly the forbidden probes'
    // dependencies are new afterwards — the traffic entries, run again, never are.
    let report = read_json(&out.join("drift.json"));
    let mut seen_drift = std::collections::BTreeSet::new();
    for (node, r) in report.as_object().expect("by node") {
        assert_eq!(r["learning"], false, "{node}: {r}");
        for e in r["drift"].as_array().expect("drift") {
            let peer = |p: &Value| match p["namespace"].as_str() {
                Some(ns) => format!("{ns}/{}", p["workload"].as_str().expect("workload")),
                None => p["workload"].as_str().expect("workload").to_owned(),
            };
            seen_drift.insert((
                peer(&e["src"]),
                peer(&e["dst"]),
                format!(
                    "{}/{}",
                    e["port"],
                    e["protocol"].as_str().expect("protocol")
                ),
                e["kind"].as_str().expect("kind").to_owned(),
            ));
        }
    }
    let expected_drift: std::collections::BTreeSet<_> = drift
        .iter()
        .map(|(a, b, p, k)| (a.to_string(), b.to_string(), p.to_string(), k.to_string()))
        .collect();
    assert_eq!(seen_drift, expected_drift, "{report}");
    // Every node enforces: no flow the policies deny was delivered, no node says otherwise.
    assert!(
        !metrics.contains("netpol_observe_unenforced_flows_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netpol_observe_policy_enforcement{state=\"not_enforced\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("netpol_observe_policy_enforcement{state=\"not_enforced\"} 1"),
        "{metrics}"
    );
    for p in enforced {
        assert_eq!(p["unenforced"], Value::Null, "{p}");
    }
    // promtool (installed by `cargo xtask setup` with the deploy tools) has nothing to say.
    for metrics in &scrapes {
        if let Ok(mut check) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write;
            check
                .stdin
                .take()
                .expect("stdin")
                .write_all(metrics.as_bytes())
                .expect("write");
            let out = check.wait_with_output().expect("promtool");
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `prometheus.json`: `recommend --prometheus` gave the policies (`names`) of
/// `recommend --agent`, and the summary (`stdout`) says so.
fn check_prometheus(out: &Path, names: &[String], stdout: &str) {
    // recommend --prometheus (the lab's Prometheus, scraping the agent) gave the policies of
    // recommend --agent.
    let cmp = read_json(&out.join("prometheus.json"));
    assert_eq!(cmp["equal"], true, "{cmp}");
    // Real flow counts from Prometheus: the evidence of every policy is the agents'.
    assert_eq!(cmp["prometheus_flows"], cmp["agent_flows"], "{cmp}");
    assert!(
        cmp["agent_flows"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "{cmp}"
    );
    assert_eq!(cmp["agent"], cmp["prometheus"], "{cmp}");
    assert_eq!(
        cmp["agent"].as_array().expect("names").len(),
        names.len(),
        "{cmp}"
    );
    assert!(
        stdout.contains("recommend --prometheus == recommend --agent"),
        "{stdout}"
    );
}

/// `inventory.yaml` parses into Kubernetes types and names every pod of `scenario` with its IP.
fn check_inventory(scenario: &Path, out: &Path) {
    // The inventory parses into Kubernetes types and names every pod with its IP.
    let inventory: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(out.join("inventory.yaml")).expect("inventory"),
    )
    .expect("yaml");
    let pods: Vec<Pod> = inventory["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["kind"] == "Pod")
        .map(|i| serde_json::from_value(i.clone()).expect("a Pod"))
        .collect();
    let (spec, text) = scenario::load(scenario).expect("scenario");
    let model = LabModel::build(scenario, &text, &spec).expect("model");
    assert_eq!(pods.len(), model.pods.len());
    for pod in &pods {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .expect("pod IP");
        assert!(ip.starts_with("10.244."), "{ip}");
    }
}

/// Nothing of the run (named in the summary, `stdout`) is left, and every agent was stopped.
fn check_cleanup(out: &Path, stdout: &str) {
    // Nothing of this run is left, and the agent is gone.
    let run = stdout
        .split("(run ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("run id in the summary");
    assert!(netns::list(&format!("npo-lab-{run}-")).is_empty());
    for log in per_node(out, "agent", "log") {
        assert!(
            log.contains("SIGTERM"),
            "every agent was stopped by SIGTERM:\n{log}"
        );
    }
}

/// Whether a `prometheus` binary is there for the lab (`$NETPOL_OBSERVE_PROMETHEUS` or `PATH`,
/// as the lab finds it): required under `CI=true`, else a missing one skips with a message.
fn prometheus_present(test: &str) -> bool {
    match netpol_observe_lab::prometheus::find(None) {
        Ok(Some(_)) => true,
        other => {
            assert!(
                !netpol_observe_e2e::ci(),
                "{test}: CI=true requires prometheus (cargo xtask setup installs it): {other:?}"
            );
            eprintln!("SKIPPED {test}: no prometheus binary (PATH, NETPOL_OBSERVE_PROMETHEUS)");
            false
        }
    }
}

/// Runs `lab … --keep-running`, calls `while_up(out)` once the lab waits (its output folder
/// complete, Prometheus up), then interrupts it with SIGINT and returns its output.
fn lab_kept_running(args: &[&str], while_up: impl FnOnce(&Path)) -> Output {
    use std::io::{BufRead, Read};
    let out = args
        .iter()
        .position(|a| *a == "--out")
        .map(|i| std::env::temp_dir().join(args[i + 1]))
        .expect("--out");
    let mut child = Command::new(netpol_observe_e2e::bin())
        .current_dir(std::env::temp_dir())
        .arg("lab")
        .args(args)
        .env("NETPOL_OBSERVE_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run netpol-observe lab");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut text = String::new();
    let mut waiting = false;
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).expect("read stdout") == 0 {
            break;
        }
        text.push_str(&line);
        if line.contains("press Ctrl-C to remove it") {
            waiting = true;
            break;
        }
    }
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if waiting {
            while_up(&out);
        }
    }));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = stdout.read_to_string(&mut text);
    let status = child.wait().expect("wait for the lab");
    let stderr = errors.join().expect("stderr reader");
    if let Err(panic) = checked {
        eprintln!(
            "lab stdout:\n{text}\nlab stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
        std::panic::resume_unwind(panic);
    }
    if status.success() {
        assert!(waiting, "the lab never waited with --keep-running:\n{text}");
        assert!(text.contains("ip netns exec npo-lab-"), "{text}");
    }
    Output {
        status,
        stdout: text.into_bytes(),
        stderr,
    }
}

/// Panels of `deploy/grafana/*.json` that show data only in a situation the lab does not
/// create (each documented in the panel's description and docs/metrics.md): title, situation.
const SITUATIONAL_PANELS: [(&str, &str); 4] = [
    (
        "Staged policies: flows the drafts would deny",
        "the agent runs with --staged-policies",
    ),
    (
        "Flows the policies deny that were delivered (CNI not enforcing)",
        "a node does not enforce the policies",
    ),
    (
        "New dependencies (drift)",
        "the agents run with --drift-baseline and see a flow outside it",
    ),
    (
        "Flow table LRU evictions and series over budget",
        "the kernel flow table was full or a series budget was spent",
    ),
];

/// Grafana's substitutions: `$__rate_interval`, `$__interval`, `$__range`, the data source, and
/// every template variable of `templating.list` as "All" (its `allValue`, else `.*`).
fn grafana_expr(expr: &str, dashboard: &Value) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "10m");
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().expect("variable name");
        let all = var["allValue"].as_str().unwrap_or(".*");
        e = e
            .replace(&format!("${{{name}}}"), all)
            .replace(&format!("${name}"), all);
    }
    e
}

/// Every panel query of every dashboard in `deploy/grafana`, asked of the lab's Prometheus as
/// Grafana would (a range query over the last 10 minutes): every panel but the documented
/// situational ones shows data.
fn dashboards_show_data(out: &Path) {
    use netpol_observe_lab::{prometheus, servers};
    let cmp = read_json(&out.join("prometheus.json"));
    let netns = cmp["netns"].as_str().expect("netns").to_owned();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut empty = Vec::new();
    let mut panels = 0;
    for entry in std::fs::read_dir(repo("deploy/grafana")).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard = read_json(&path);
        for panel in dashboard["panels"].as_array().expect("panels") {
            let Some(targets) = panel["targets"].as_array() else {
                continue;
            };
            let title = panel["title"].as_str().expect("title");
            panels += 1;
            // Counters the last phase created need two scrapes before rate()/increase() give
            // a value: a panel without data is asked again for up to 20 s.
            let situational = SITUATIONAL_PANELS.iter().find(|(t, _)| *t == title);
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut data = false;
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("time")
                    .as_secs();
                for target in targets {
                    let expr = grafana_expr(target["expr"].as_str().expect("expr"), &dashboard);
                    let query = format!(
                        "/api/v1/query_range?query={}&start={}&end={now}&step=5",
                        prometheus::encode(&expr),
                        now - 600
                    );
                    let (status, body) = rt
                        .block_on(servers::http_get(
                            &netns,
                            prometheus::PROMETHEUS_LISTEN,
                            &query,
                        ))
                        .expect("query prometheus");
                    assert_eq!(status, 200, "{title}: {expr}: {body}");
                    let answer: Value = serde_json::from_str(&body).expect("json");
                    assert_eq!(answer["status"], "success", "{title}: {expr}: {body}");
                    data |= answer["data"]["result"].as_array().is_some_and(|r| {
                        r.iter()
                            .any(|s| s["values"].as_array().is_some_and(|v| !v.is_empty()))
                    });
                }
                if data || situational.is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            if let Some((_, when)) = situational {
                let description = panel["description"].as_str().unwrap_or_default();
                assert!(
                    description.contains("Shows data only"),
                    "{title}: shows data only when {when}; its description must say so"
                );
            } else if !data {
                empty.push(format!("{}: {title}", path.display()));
            }
        }
    }
    assert!(panels >= 10, "{panels} panels");
    assert!(
        empty.is_empty(),
        "panels without data after the lab: {empty:#?}"
    );
    pair_panels_filter_both_sides(&rt, &netns);
}

/// The `namespace` variable lists the namespaces of both ends of the flows (`kube-system`,
/// only ever a destination, too), and each pair panel (flows, bytes, packets) shows data with
/// each of them chosen: the variables filter both sides.
fn pair_panels_filter_both_sides(rt: &tokio::runtime::Runtime, netns: &str) {
    use netpol_observe_lab::{prometheus, servers};
    let ask = |path: String| -> Value {
        let (status, body) = rt
            .block_on(servers::http_get(
                netns,
                prometheus::PROMETHEUS_LISTEN,
                &path,
            ))
            .expect("query prometheus");
        assert_eq!(status, 200, "{path}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(answer["status"], "success", "{path}: {body}");
        answer
    };
    let labels = |promql: &str, label: &str| -> std::collections::BTreeSet<String> {
        let answer = ask(format!(
            "/api/v1/query?query={}",
            prometheus::encode(promql)
        ));
        answer["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .filter_map(|s| s["metric"][label].as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let dashboard = read_json(&repo("deploy/grafana/netpol-observe.json"));
    let var = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == "namespace")
        .expect("the namespace variable");
    let query = var["query"]["query"].as_str().expect("query");
    let promql = query
        .strip_prefix("query_result(")
        .and_then(|q| q.strip_suffix(')'))
        .expect("a query_result variable");
    let listed = labels(promql, "namespace");
    let mut ends = labels(
        "group by (src_namespace) (netpol_observe_flows_total)",
        "src_namespace",
    );
    let dst_only: std::collections::BTreeSet<String> = labels(
        "group by (dst_namespace) (netpol_observe_flows_total)",
        "dst_namespace",
    )
    .difference(&ends)
    .cloned()
    .collect();
    ends.extend(dst_only.iter().cloned());
    assert_eq!(listed, ends, "the namespace variable lists both ends");
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        if !title.ends_with("by workload pair") && !title.starts_with("Flows by workload pair") {
            continue;
        }
        for ns in &listed {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_secs();
            let data = panel["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .any(|t| {
                    let expr = t["expr"]
                        .as_str()
                        .expect("expr")
                        .replace("$__rate_interval", "1m")
                        .replace("$namespace", ns)
                        .replace("$workload", ".*");
                    let answer = ask(format!(
                        "/api/v1/query_range?query={}&start={}&end={now}&step=5",
                        prometheus::encode(&expr),
                        now - 600
                    ));
                    answer["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
                });
            if !data {
                empty.push(format!("{title} with namespace {ns}"));
            }
        }
    }
    assert!(
        empty.is_empty(),
        "pair panels without data for a namespace of the variable (destination-only: {dst_only:?}): {empty:#?}"
    );
}

#[test]
fn shop_scenario_end_to_end() {
    if !netpol_observe_e2e::require_root("shop_scenario_end_to_end") {
        return;
    }
    let _serial = serial();
    shipped_scenario(
        "shop",
        &[
            // Through the LoadBalancer Service: reported to it (the lab knows its DNAT).
            ("world", "svc/frontend/web", 80, "TCP", 2),
            ("frontend/web", "svc/backend/api", 80, "TCP", 3),
            ("backend/api", "svc/backend/cache", 6379, "TCP", 2),
            ("backend/api", "db-subnet", 5432, "TCP", 1),
            // The API server: a Service without selector, its endpoint outside the pod network.
            ("backend/api", "svc/default/kubernetes", 443, "TCP", 1),
        ],
        6,
        6,
        &[
            ("frontend/web", "db-subnet", "5432/TCP", "new_destination"),
            ("world", "backend/api", "9000/TCP", "new_pair"),
            ("frontend/web", "backend/cache", "6379/TCP", "new_pair"),
            ("frontend/web", "backend/api", "9100/TCP", "new_port"),
            // web → the API server: its ClusterIP (unknown in metrics), and the dropped
            // packet's DNATed address (the control-plane subnet).
            ("frontend/web", "unknown", "443/TCP", "new_pair"),
            (
                "frontend/web",
                "control-plane",
                "6443/TCP",
                "new_destination",
            ),
            // cache's DNS lookup for svc/backend/api, dropped.
            ("backend/cache", "kube-system/coredns", "53/UDP", "new_pair"),
        ],
    );
}

/// Sums `series` over Prometheus text scrapes by (src namespace/workload, dst
/// namespace/workload), spelled `ns/workload` (`subnet` for external peers).
fn sum_by_pair(scrapes: &[String], series: &str) -> BTreeMap<(String, String), u64> {
    let label = |line: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        line.split(&key)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("label")
            .to_owned()
    };
    let spell = |ns: String, workload: String| match ns.is_empty() {
        true => workload,
        false => format!("{ns}/{workload}"),
    };
    let mut sums = BTreeMap::new();
    for scrape in scrapes {
        for line in scrape
            .lines()
            .filter(|l| l.starts_with(&format!("{series}{{")))
        {
            let value: f64 = line
                .rsplit(' ')
                .next()
                .expect("value")
                .parse()
                .expect("number");
            let pair = (
                spell(label(line, "src_namespace"), label(line, "src_workload")),
                spell(label(line, "dst_namespace"), label(line, "dst_workload")),
            );
            *sums.entry(pair).or_default() += value as u64;
        }
    }
    sums
}

/// The policies of a YAML file, annotations aside but `netpol-observe.io/flows` (each flow is
/// evidence once; times and the short-observation warning differ between runs).
fn policies_in(path: &Path) -> Vec<NetworkPolicy> {
    let yaml = std::fs::read_to_string(path).expect("policies");
    serde_saphyr::from_multiple::<NetworkPolicy>(&yaml)
        .expect("policies")
        .into_iter()
        .map(|mut p| {
            if let Some(a) = p.metadata.annotations.as_mut() {
                a.retain(|k, _| k == "netpol-observe.io/flows");
            }
            p
        })
        .collect()
}

/// A cluster counts every flow once. The shipped shop scenario runs on two nodes (an agent
/// each, cross-node Service backends and DNS) and, rewritten without nodes, on one. The sum
/// over both agents of `netpol_observe_flows_total` is exactly the connections the scenario
/// made per workload pair (and what the one node counted), every packet is counted once, the
/// records of both nodes are kept (the other node's marked `counted: false`), and
/// `recommend --agent` over both running agents, `recommend --flows` of the merged records and
/// the one-node lab give the same policies.
// One scenario: every check reads the outputs of one two-node lab run (kept running for
// `recommend --agent`).
#[test]
fn a_cluster_counts_every_flow_once() {
    if !netpol_observe_e2e::require_root("a_cluster_counts_every_flow_once") {
        return;
    }
    let _serial = serial();
    let shop = std::fs::read_to_string(repo("deploy/lab/shop.yaml")).expect("shop");
    assert!(shop.contains("\nnodes: [{name: node-1}, {name: node-2}]\n"));
    let one_node = shop
        .replace("\nnodes: [{name: node-1}, {name: node-2}]\n", "\n")
        .replace(", node: node-1}", "}")
        .replace(", node: node-2}", "}");
    assert!(!one_node.contains("\nnodes:") && !one_node.contains(", node: "));
    let dir = tempfile::tempdir().expect("tempdir");
    let single_scenario = dir.path().join("shop-one-node.yaml");
    std::fs::write(&single_scenario, one_node).expect("write");
    let single_out = dir.path().join("single");
    let multi_out = dir.path().join("multi");
    let single = lab(&[
        "--scenario",
        single_scenario.to_str().expect("path"),
        "--out",
        single_out.to_str().expect("path"),
    ]);
    assert_eq!(
        single.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&single.stdout),
        String::from_utf8_lossy(&single.stderr)
    );

    // The two-node run; `recommend --agent` over both agents while it keeps running.
    let from_agents = dir.path().join("from-agents.yaml");
    let shop_path = repo("deploy/lab/shop.yaml");
    let multi = lab_kept_running(
        &[
            "--scenario",
            shop_path.to_str().expect("path"),
            "--out",
            multi_out.to_str().expect("path"),
            "--keep-running",
        ],
        |out| {
            let agents = read_json(&out.join("prometheus").join("targets.json"));
            let urls: Vec<String> = agents
                .as_array()
                .map(|groups| {
                    groups
                        .iter()
                        .map(|g| format!("http://{}", g["targets"][0].as_str().expect("target")))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(urls.len(), 2, "{agents}");
            let first = read_json(&out.join("prometheus.json"))["netns"]
                .as_str()
                .expect("first node's netns")
                .to_owned();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &first])
                .arg(netpol_observe_e2e::bin())
                .args(["recommend", "--cluster-range", "10.96.0.0/16"])
                .arg("--agent")
                .args(&urls)
                .arg("--inventory")
                .arg(out.join("inventory.yaml"))
                .arg("--subnets")
                .arg(out.join("subnets.yaml"))
                .arg("--write")
                .arg(&from_agents);
            let done = cmd.output().expect("recommend --agent");
            assert!(
                done.status.success(),
                "{}",
                String::from_utf8_lossy(&done.stderr)
            );
        },
    );
    assert_eq!(
        multi.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&multi.stdout),
        String::from_utf8_lossy(&multi.stderr)
    );
    assert!(
        from_agents.exists(),
        "recommend --agent ran while the lab was up"
    );

    // Exactly the connections of the scenario, per workload pair, summed over the agents: the
    // traffic entries, and one DNS lookup per connection to a Service from a pod.
    let scrape = |path: PathBuf| std::fs::read_to_string(path).expect("metrics");
    let cluster = vec![
        scrape(multi_out.join("metrics-node-1.txt")),
        scrape(multi_out.join("metrics-node-2.txt")),
    ];
    let expected: BTreeMap<(String, String), u64> = [
        ("world", "frontend/web", 2),
        ("frontend/web", "backend/api", 3),
        ("frontend/web", "kube-system/coredns", 3),
        ("backend/api", "backend/cache", 2),
        ("backend/api", "kube-system/coredns", 3),
        ("backend/api", "db-subnet", 1),
        // The API server's ClusterIP: a Service without selector, whose flows are labelled
        // `unknown` in metrics (docs/metrics.md).
        ("backend/api", "unknown", 1),
    ]
    .into_iter()
    .map(|(a, b, n)| ((a.to_owned(), b.to_owned()), n))
    .collect();
    let flows_total = sum_by_pair(&cluster, "netpol_observe_flows_total");
    assert_eq!(flows_total, expected, "{cluster:#?}");
    let one = vec![scrape(single_out.join("metrics.txt"))];
    assert_eq!(sum_by_pair(&one, "netpol_observe_flows_total"), expected);

    // Both nodes' records are there; each record one node did not count is the other node's
    // view of a connection the other node counted (same client address and port).
    let records: Vec<FlowRecord> = std::fs::read_to_string(multi_out.join("flows.jsonl"))
        .expect("flows")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let nodes: std::collections::BTreeSet<_> =
        records.iter().filter_map(|r| r.node.clone()).collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let uncounted: Vec<&FlowRecord> = records.iter().filter(|r| !r.counted).collect();
    assert!(!uncounted.is_empty(), "cross-node flows are seen twice");
    for r in &uncounted {
        assert!(
            records.iter().any(|c| c.counted
                && c.node != r.node
                && c.protocol == r.protocol
                && c.src.ip == r.src.ip
                && c.src.port == r.src.port),
            "{r:?}"
        );
    }
    // Every packet once: the agents' packet counters are the counted records' packets.
    let packets: u64 = records
        .iter()
        .filter(|r| r.counted)
        .filter_map(|r| r.packets)
        .map(|p| p.sent + p.received)
        .sum();
    let counted_packets: u64 = sum_by_pair(&cluster, "netpol_observe_flow_packets_total")
        .values()
        .sum();
    assert_eq!(counted_packets, packets);

    // The same policies from the merged records (as `recommend --flows` reads them), from the
    // running agents and from one node.
    let from_files = dir.path().join("from-files.yaml");
    let done = Command::new(netpol_observe_e2e::bin())
        .args(["recommend", "--cluster-range", "10.96.0.0/16"])
        .arg("--flows")
        .arg(multi_out.join("flows.jsonl"))
        .arg("--inventory")
        .arg(multi_out.join("inventory.yaml"))
        .arg("--subnets")
        .arg(multi_out.join("subnets.yaml"))
        .arg("--write")
        .arg(&from_files)
        .output()
        .expect("recommend --flows");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let one_node = policies_in(&single_out.join("recommended.yaml"));
    assert!(one_node.len() >= 5);
    assert_eq!(policies_in(&multi_out.join("recommended.yaml")), one_node);
    assert_eq!(policies_in(&from_files), one_node);
    assert_eq!(policies_in(&from_agents), one_node);
}

/// A node whose CNI does not enforce NetworkPolicy: shop with node-2 `enforce: false`. The
/// recommended policies are given to both agents but loaded only on node-1, so the one forbidden
/// probe whose denying side is a pod of node-2 (internet → api, api's ingress) gets through:
/// the lab fails, and node-2's agent reports exactly that flow as unenforced with the isolating
/// policies; node-1's agent, whose denied flows were all dropped, says it enforces.
#[test]
fn a_node_that_does_not_enforce_is_reported() {
    if !netpol_observe_e2e::require_root("a_node_that_does_not_enforce_is_reported") {
        return;
    }
    let _serial = serial();
    let shop = std::fs::read_to_string(repo("deploy/lab/shop.yaml")).expect("shop");
    let nodes = "nodes: [{name: node-1}, {name: node-2}]";
    assert!(shop.contains(nodes));
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("shop-node-2-not-enforcing.yaml");
    std::fs::write(
        &scenario,
        shop.replace(
            nodes,
            "nodes: [{name: node-1}, {name: node-2, enforce: false}]",
        ),
    )
    .expect("write");
    let out = dir.path().join("out");
    let result = lab(&[
        "--scenario",
        scenario.to_str().expect("path"),
        "--out",
        out.to_str().expect("path"),
        "--enforce",
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(
        result.status.code(),
        Some(1),
        "a forbidden probe got through: {stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("not enforced on node-2"), "{stdout}");
    let enforced = read_json(&out.join("enforce.json"));
    let through: Vec<&Value> = enforced
        .as_array()
        .expect("array")
        .iter()
        .filter(|p| p["kind"] == "forbidden" && p["observed"] == "allowed")
        .collect();
    assert_eq!(through.len(), 1, "{enforced}");
    assert_eq!(through[0]["from"], "internet");
    assert_eq!(through[0]["to"], "backend/api");
    assert_eq!(
        through[0]["unenforced"], "backend/api-np,backend/default-deny",
        "{enforced}"
    );
    for p in enforced.as_array().expect("array") {
        if p["observed"] == "denied" {
            assert_eq!(p["unenforced"], Value::Null, "{p}");
        }
        // Both sides deny web → cache: the packet met web's egress rules first, on node-1.
        if p["from"] == "frontend/web" && p["to"] == "backend/cache" {
            assert_eq!(p["policy"], "frontend/default-deny,frontend/web-np", "{p}");
        }
    }
    let node1 = std::fs::read_to_string(out.join("metrics-node-1.txt")).expect("node-1");
    let node2 = std::fs::read_to_string(out.join("metrics-node-2.txt")).expect("node-2");
    let unenforced: Vec<&str> = node2
        .lines()
        .filter(|l| l.starts_with("netpol_observe_unenforced_flows_total{"))
        .collect();
    assert_eq!(unenforced.len(), 1, "{node2}");
    assert!(
        unenforced[0].contains("src_workload=\"world\"")
            && unenforced[0].contains("dst_workload=\"api\"")
            && unenforced[0].contains("policy=\"backend/api-np,backend/default-deny\"")
            && unenforced[0].ends_with(" 1"),
        "{}",
        unenforced[0]
    );
    assert!(node2.contains("netpol_observe_policy_enforcement{state=\"not_enforced\"} 1"));
    assert!(
        !node1.contains("netpol_observe_unenforced_flows_total{"),
        "{node1}"
    );
    assert!(node1.contains("netpol_observe_policy_enforcement{state=\"enforced\"} 1"));
}

#[test]
fn voting_scenario_end_to_end() {
    if !netpol_observe_e2e::require_root("voting_scenario_end_to_end") {
        return;
    }
    let _serial = serial();
    shipped_scenario(
        "voting",
        &[
            // Clients outside the cluster reach the ui's LoadBalancer Service; the agent sees
            // them at the backend, the lab reports them to the Service whose DNAT it set up.
            ("world", "svc/vote/ui", 80, "TCP", 4),
            ("vote/ui", "svc/vote/appserver", 8000, "TCP", 2),
            ("vote/appserver", "svc/vote/redis", 6379, "TCP", 2),
            ("vote/appserver", "svc/vote/postgres", 5432, "TCP", 1),
            ("vote/appserver", "monitoring", 8125, "UDP", 1),
        ],
        5,
        4,
        &[
            ("vote/ui", "vote/postgres", "5432/TCP", "new_pair"),
            ("vote/ui", "monitoring", "8125/UDP", "new_destination"),
            ("vote/ui", "vote/redis", "6379/TCP", "new_pair"),
            ("world", "vote/appserver", "8000/TCP", "new_pair"),
        ],
    );
}

/// Egress by DNS name, with a rotation (`deploy/lab/egress.yaml`): the agents put exactly the
/// names each client resolved on its flows (`dst.dns_names`, from the real DNS answers on the
/// pods' veths), the recommended policy keeps the named peers, and after the enforcement the
/// payment API's name moves to its other address: the client's lookup answers it, the agents
/// count the rotation exactly once (on checkout's node, for checkout's policy) before the
/// connection, and the connection is dropped by the policy written for the old address.
// One scenario: every check reads the outputs of one lab run (names learned, then rotated).
#[test]
fn egress_by_name_and_rotation() {
    if !netpol_observe_e2e::require_root("egress_by_name_and_rotation") {
        return;
    }
    let _serial = serial();
    let (out, summary) = shipped_scenario(
        "egress",
        &[
            ("shop/web", "svc/shop/checkout", 80, "TCP", 2),
            // A public API and a private endpoint, named subnets, both by DNS name.
            ("shop/checkout", "payments", 443, "TCP", 2),
            ("shop/checkout", "receipts", 443, "TCP", 1),
        ],
        5,
        2,
        &[
            ("shop/web", "payments", "443/TCP", "new_destination"),
            ("shop/web", "receipts", "443/TCP", "new_destination"),
            // The connection after the rotation: to the provider's new range.
            ("shop/checkout", "world", "443/TCP", "new_destination"),
        ],
    );
    let out = out.path();

    // Names on flows: each counted flow carries exactly the name its client resolved.
    let text = std::fs::read_to_string(out.join("flows.jsonl")).expect("flows.jsonl");
    let mut named: BTreeMap<(String, String), (Vec<String>, usize)> = BTreeMap::new();
    for f in text
        .lines()
        .map(|l| serde_json::from_str::<FlowRecord>(l).expect("a flow record"))
        .filter(|f| f.counted)
    {
        // The lookups themselves go to kube-dns by address: no name (their number is
        // checked by the run: a retry may add one).
        if spell(&f.dst) == "svc/kube-system/kube-dns" {
            assert!(f.dst.dns_names.is_empty(), "{f:?}");
            continue;
        }
        let e = named
            .entry((spell(&f.src), spell(&f.dst)))
            .or_insert_with(|| (f.dst.dns_names.clone(), 0));
        assert_eq!(e.0, f.dst.dns_names, "one set of names per pair: {f:?}");
        e.1 += 1;
    }
    let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let expected: BTreeMap<(String, String), (Vec<String>, usize)> = [
        (
            ("shop/web", "svc/shop/checkout"),
            (names(&["checkout.shop.svc.cluster.local"]), 2),
        ),
        (
            ("shop/checkout", "payments"),
            (names(&["api.payments.example"]), 2),
        ),
        (
            ("shop/checkout", "receipts"),
            (names(&["receipts.blob.example"]), 1),
        ),
    ]
    .into_iter()
    .map(|((a, b), v)| ((a.to_string(), b.to_string()), v))
    .collect();
    assert_eq!(named, expected, "flows.jsonl:\n{text}");

    // The recommended policy keeps both named peers as their subnets.
    let policies = policies_in(&out.join("recommended.yaml"));
    let checkout = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("checkout-np"))
        .expect("checkout-np");
    let mut blocks: Vec<String> = checkout
        .spec
        .as_ref()
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.to.iter().flatten())
        .filter_map(|peer| peer.ip_block.as_ref().map(|b| b.cidr.clone()))
        .collect();
    blocks.sort();
    assert_eq!(blocks, ["10.0.3.0/24", "198.51.100.0/28"], "{checkout:?}");

    // The names are the evidence of their ipBlocks (netpol-observe.io/dns-names, the contract
    // the agents' rotation check reads).
    let yaml = std::fs::read_to_string(out.join("recommended.yaml")).expect("yaml");
    let checkout = serde_saphyr::from_multiple::<NetworkPolicy>(&yaml)
        .expect("policies")
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("checkout-np"))
        .expect("checkout-np");
    let evidence: Value = serde_json::from_str(
        checkout
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("netpol-observe.io/dns-names"))
            .expect("dns-names annotation"),
    )
    .expect("json");
    assert_eq!(
        evidence,
        serde_json::json!({
            "10.0.3.0/24": ["receipts.blob.example"],
            "198.51.100.0/28": ["api.payments.example"],
        })
    );
    // `recommend --format cilium` over the lab's flows: checkout's egress by name (toFQDNs).
    let cilium = Command::new(netpol_observe_e2e::bin())
        .arg("recommend")
        .arg("--flows")
        .arg(out.join("flows.jsonl"))
        .arg("--inventory")
        .arg(out.join("inventory.yaml"))
        .arg("--subnets")
        .arg(out.join("subnets.yaml"))
        .args(["--format", "cilium"])
        .output()
        .expect("recommend --format cilium");
    assert!(
        cilium.status.success(),
        "{}",
        String::from_utf8_lossy(&cilium.stderr)
    );
    let cnps: Vec<netpol_observe_core::recommend::cilium::types::CiliumNetworkPolicy> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&cilium.stdout))
            .expect("CiliumNetworkPolicies");
    let mut fqdns: Vec<(String, String)> = cnps
        .iter()
        .flat_map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            p.spec
                .egress
                .iter()
                .flatten()
                .flat_map(|r| r.to_fqdns.iter().flatten())
                .filter_map(move |f| f.match_name.clone().map(|m| (name.clone(), m)))
        })
        .collect();
    fqdns.sort();
    assert_eq!(
        fqdns,
        [
            ("checkout-np".to_owned(), "api.payments.example".to_owned()),
            ("checkout-np".to_owned(), "receipts.blob.example".to_owned()),
        ],
        "{}",
        String::from_utf8_lossy(&cilium.stdout)
    );

    // The rotation: the name moved to the provider's new range, the client's lookup answered
    // it, the agents counted it once before the connection, the policy for the old range
    // dropped the connection.
    let rotation = read_json(&out.join("rotation.json"));
    let rotation = rotation.as_array().expect("rotations");
    assert_eq!(rotation.len(), 1, "{rotation:?}");
    let r = &rotation[0];
    assert_eq!(r["external"], "payments", "{r}");
    assert_eq!(
        r["names"],
        serde_json::json!(["api.payments.example"]),
        "{r}"
    );
    assert_eq!(r["ttl"], 5, "{r}");
    assert_eq!(r["from_address"], "198.51.100.1", "{r}");
    assert_eq!(r["to_address"], "198.51.100.17", "{r}");
    assert_eq!(r["to_external"], "payments-new", "{r}");
    let probes = r["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1, "{r}");
    let p = &probes[0];
    assert_eq!(p["from"], "shop/checkout", "{p}");
    assert_eq!(p["to"], "api.payments.example", "{p}");
    assert_eq!(p["answered"], "198.51.100.17", "{p}");
    assert_eq!(p["observed"], "denied", "{p}");
    assert_eq!(p["succeeded"], 0, "{p}");
    assert_eq!(p["drop_reason"], "NETFILTER_DROP", "{p}");
    assert_eq!(p["policy"], "shop/checkout-np,shop/default-deny", "{p}");
    assert_eq!(p["alerts_before_connect"], 1, "{p}");
    assert_eq!(p["alerts"], 1, "{p}");
    assert_eq!(p["expected_alerts"], 1, "{p}");
    // The agents' final scrapes: exactly one rotation, on checkout's node (node-2), for
    // checkout and its policy.
    let scrapes = per_node(out, "metrics", "txt");
    let series: Vec<(usize, &str)> = scrapes
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.lines()
                .filter(|l| l.starts_with("netpol_observe_dns_rotations_total{"))
                .map(move |l| (i, l))
        })
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    let (node, line) = series[0];
    assert_eq!(node, 1, "counted on node-2: {line}");
    assert!(line.ends_with(" 1"), "{line}");
    for label in [
        "namespace=\"shop\"",
        "workload=\"checkout\"",
        "policy=\"shop/checkout-np\"",
    ] {
        assert!(line.contains(label), "{label}: {line}");
    }
    // The summary says so: the names on the outside destinations, the rotation and its count.
    for said in [
        "  by name: shop/checkout -> payments 443/TCP: api.payments.example\n",
        "  by name: shop/checkout -> receipts 443/TCP: receipts.blob.example\n",
        "dns rotation (rotation.json): api.payments.example of payments moved 198.51.100.1 -> 198.51.100.17 (payments-new; ttl 5 s)\n",
        "1 of 1 expected, 1 before connecting\n",
    ] {
        assert!(summary.contains(said), "{said}{summary}");
    }
}

/// Two nodes: web (and kube-dns) on n1, api and cli on n2, so pairs cross nodes both ways and
/// stay on one; each node enforces its own pods' sides.
const MATRIX: &str = "name: matrix
nodes: [{name: n1}, {name: n2}]
namespaces: [{name: a, labels: {team: a}}, {name: b, labels: {team: b}}]
workloads:
  - {namespace: a, name: web, labels: {app: web}, ports: [{name: http, port: 8080}, {name: stats, port: 5353, protocol: UDP}]}
  - {namespace: a, name: api, labels: {app: api}, ports: [{name: http, port: 9000}, {name: admin, port: 9090}], node: n2}
  - {namespace: b, name: cli, labels: {app: cli}, ports: [{name: http, port: 8080}], node: n2}
services:
  - {namespace: a, name: api, selector: {app: api}, ports: [{port: 80, targetPort: http}]}
externals:
  - {name: ext, cidr: 192.168.50.0/24, ports: [{port: 443}]}
";

const MATRIX_POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: a}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  - from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: cli}}}]
    ports: [{port: 9090, endPort: 9095}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 192.168.50.0/24, except: [192.168.50.128/25]}}]
  - to: [{podSelector: {}}]
    ports: [{port: http}]
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cli, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: 192.168.50.0/24}}, {namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a]}]}}]
    ports: [{port: 8080, protocol: TCP}]
";

/// One probe per (client, server, port) of the matrix lab: every workload (kube-dns too) and
/// the external host as client; every other workload on each declared port, the external
/// host, and the Service as server.
fn all_pairs(model: &LabModel) -> Vec<ProbeModel> {
    let mut sources: Vec<(String, PeerRef)> = model
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("{}/{}", w.namespace, w.name), PeerRef::Workload(i)))
        .collect();
    sources.extend(
        model
            .externals
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), PeerRef::External(i))),
    );
    let mut targets: Vec<(String, PeerRef, u16, Protocol)> = Vec::new();
    // kube-dns answers DNS queries, not the probes' echo: a client, never a probed server.
    for (i, w) in model.workloads.iter().enumerate().skip(1) {
        for p in &w.ports {
            let name = format!("{}/{}", w.namespace, w.name);
            targets.push((name, PeerRef::Workload(i), p.port, p.protocol));
        }
    }
    for (i, e) in model.externals.iter().enumerate() {
        for p in &e.ports {
            targets.push((e.name.clone(), PeerRef::External(i), p.port, p.protocol));
        }
    }
    for (i, s) in model.services.iter().enumerate().skip(1) {
        for p in &s.ports {
            let name = format!("svc/{}/{}", s.namespace, s.name);
            targets.push((name, PeerRef::Service(i), p.port, p.protocol));
        }
    }
    let mut probes = Vec::new();
    for (from, source) in &sources {
        for (to, target, port, protocol) in &targets {
            // Self-traffic never crosses the node; external to external is not the cluster's.
            if from == to
                || matches!(
                    (source, target),
                    (PeerRef::External(_), PeerRef::External(_))
                )
            {
                continue;
            }
            // Clients outside the cluster reach pods, not ClusterIPs, in this lab.
            if matches!(
                (source, target),
                (PeerRef::External(_), PeerRef::Service(_))
            ) {
                continue;
            }
            probes.push(ProbeModel {
                kind: ProbeKind::Traffic,
                from: from.clone(),
                to: to.clone(),
                source: *source,
                target: *target,
                port: *port,
                protocol: *protocol,
                connections: 1,
                line: 0,
            });
        }
    }
    probes
}

/// The address a probe's first connection uses at each end.
fn first_addr(model: &LabModel, peer: PeerRef) -> std::net::IpAddr {
    std::net::IpAddr::V4(match peer {
        PeerRef::Workload(w) => model.pods[model.workloads[w].pods[0]].ip,
        PeerRef::External(e) => model.externals[e].hosts[0],
        PeerRef::Service(s) => model.services[s].cluster_ip,
    })
}

#[test]
fn compiled_policies_agree_with_the_policy_engine_on_the_kernel() {
    if !netpol_observe_e2e::require_root(
        "compiled_policies_agree_with_the_policy_engine_on_the_kernel",
    ) {
        return;
    }
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(engine_agreement());
}

async fn engine_agreement() {
    let path = Path::new("matrix.yaml");
    let parsed = scenario::parse(path, MATRIX).expect("scenario");
    let mut model = LabModel::build(path, MATRIX, &parsed).expect("model");
    model.probes = all_pairs(&model);
    let policies: Vec<NetworkPolicy> =
        serde_saphyr::from_multiple(MATRIX_POLICIES).expect("policies");
    let scripts = enforce::compile(&model, &policies).expect("compile");
    assert_eq!(scripts.len(), 2);

    // The engine's verdict for each probe's first connection, on the lab's own inventory.
    let inventory = Inventory::from_yaml_str(
        &netpol_observe_lab::inventory::to_yaml(&model).expect("inventory"),
        "inventory.yaml",
    )
    .expect("the lab's inventory loads");
    let engine = PolicyEngine::compile(&policies, &inventory).expect("engine");
    let attributor = Attributor::new(&inventory, &Subnets::default());
    let engine_says: Vec<bool> = model
        .probes
        .iter()
        .map(|p| {
            let mut flow = FlowRecord::new(
                p.protocol,
                first_addr(&model, p.source),
                first_addr(&model, p.target),
                Some(p.port),
            );
            attributor.attribute(&mut flow);
            engine.evaluate_flow(&flow).allowed
        })
        .collect();
    // The set is a real test of the compiler: both verdicts occur, on every kind of target.
    assert!(engine_says.iter().filter(|a| **a).count() >= 5);
    assert!(engine_says.iter().filter(|a| !**a).count() >= 5);
    assert!(model.probes.len() >= 25, "{}", model.probes.len());

    let mut topo = Topology::create(&model).expect("topology");
    topo.start_servers(&model).expect("servers");
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        dns: Duration::from_millis(400),
    };

    // kube-dns answers from a pod's namespace: services resolve, unknown names do not.
    let web = model
        .workloads
        .iter()
        .find(|w| w.name == "web")
        .expect("web")
        .pods[0];
    let socket =
        netpol_observe_lab::servers::udp_client_socket(topo.pod_netns(web)).expect("socket");
    let server = std::net::SocketAddr::from((model.dns_service().cluster_ip, 53));
    let api_ip = dns::resolve(&socket, server, "api.a.svc.cluster.local", timeouts.dns)
        .await
        .expect("resolve api");
    assert_eq!(api_ip, model.services[1].cluster_ip);
    let unknown = dns::resolve(&socket, server, "nope.a.svc.cluster.local", timeouts.dns).await;
    assert!(
        matches!(unknown, Err(dns::DnsError::NoAddress { .. })),
        "{unknown:?}"
    );

    // Without policies everything goes through.
    let open = traffic::run_all(&model, &topo, &[ProbeKind::Traffic], timeouts).await;
    for r in &open {
        assert_eq!(r.observed, Outcome::Allowed, "{r:?}");
    }
    // With the policies, exactly what the engine says.
    enforce::apply(&topo, &scripts).expect("apply");
    let enforced = traffic::run_all(&model, &topo, &[ProbeKind::Traffic], timeouts).await;
    let mut mismatches = Vec::new();
    for (r, allowed) in enforced.iter().zip(&engine_says) {
        let expected = if *allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        if r.observed != expected {
            mismatches.push(format!(
                "{} -> {}:{}/{}: engine {expected:?}, kernel {:?} ({:?})",
                r.from, r.to, r.port, r.protocol, r.observed, r.error
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n{}",
        mismatches.join("\n"),
        scripts.join("\n")
    );
    // Removing the policies opens everything again.
    enforce::remove(&topo).expect("remove");
    let reopened = traffic::run_all(&model, &topo, &[ProbeKind::Traffic], timeouts).await;
    assert!(reopened.iter().all(|r| r.observed == Outcome::Allowed));
    let prefix = format!("npo-lab-{}-", topo.run_id());
    topo.teardown().expect("teardown");
    assert!(netns::list(&prefix).is_empty());
}

/// Starts a shop lab whose enforcement probes hang (deny-all policy, long timeout) and waits
/// until the policies are enforced; returns the child and the prefix of its namespaces.
fn start_hanging_lab(dir: &Path) -> (std::process::Child, String) {
    let deny = dir.join("deny.yaml");
    std::fs::write(
        &deny,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: frontend}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
    )
    .expect("write");
    let mut child = Command::new(netpol_observe_e2e::bin())
        .args(["lab", "--scenario"])
        .arg(repo("deploy/lab/shop.yaml"))
        .arg("--out")
        .arg(dir.join("out1"))
        .args(["--enforce", "--timeout-ms", "30000", "--policies"])
        .arg(&deny)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn lab");
    let prefix = format!("npo-lab-{}n", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A node's namespace: `…-node` (one node) or `…-node-<name>`.
        let node = netns::list(&prefix)
            .into_iter()
            .find(|n| n.contains("-node"));
        if let Some(node) = node {
            let tables = Command::new("ip")
                .args(["netns", "exec", &node, "nft", "list", "tables"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if tables.contains(enforce::TABLE) {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the lab never reached enforcement");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, prefix)
}

#[test]
fn killed_lab_leftovers_are_removed_by_the_next_run() {
    if !netpol_observe_e2e::require_root("killed_lab_leftovers_are_removed_by_the_next_run") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, prefix) = start_hanging_lab(dir.path());
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let leftovers = netns::list(&prefix);
    assert!(
        leftovers.len() >= 8,
        "SIGKILL leaves the namespaces: {leftovers:?}"
    );
    // But not the agents: they get SIGTERM when the lab dies, detach and exit by themselves.
    let nodes: Vec<&String> = leftovers.iter().filter(|n| n.contains("-node")).collect();
    assert_eq!(nodes.len(), 2, "the shop's two nodes: {leftovers:?}");
    for node in nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pids = Command::new("ip")
                .args(["netns", "pids", node])
                .output()
                .expect("ip netns pids");
            if pids.stdout.trim_ascii().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes left in {node} after the lab was killed: {}",
                String::from_utf8_lossy(&pids.stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The next run clears them first.
    let scenario = repo("deploy/lab/shop.yaml");
    let result = lab(&[
        "--scenario",
        scenario.to_str().expect("path"),
        "--out",
        dir.path().join("out2").to_str().expect("path"),
    ]);
    assert_eq!(
        result.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        netns::list(&prefix).is_empty(),
        "leftovers: {:?}",
        netns::list(&prefix)
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("npo_lab"));
}

#[test]
fn interrupted_lab_removes_everything() {
    if !netpol_observe_e2e::require_root("interrupted_lab_removes_everything") {
        return;
    }
    let _serial = serial();
    for signal in ["-INT", "-TERM"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, prefix) = start_hanging_lab(dir.path());
        let sent = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{signal}: {stderr}");
        assert!(stderr.contains("interrupted by"), "{signal}: {stderr}");
        assert!(
            netns::list(&prefix).is_empty(),
            "{signal}: left {:?}",
            netns::list(&prefix)
        );
    }
}

#[test]
fn teardown_kills_processes_started_in_the_lab() {
    if !netpol_observe_e2e::require_root("teardown_kills_processes_started_in_the_lab") {
        return;
    }
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let text = "name: procs\nnamespaces: [{name: a}]\nworkloads: [{namespace: a, name: w}]\n";
        let path = Path::new("procs.yaml");
        let parsed = scenario::parse(path, text).expect("scenario");
        let model = LabModel::build(path, text, &parsed).expect("model");
        let mut topo = Topology::create(&model).expect("topology");
        let node = topo.node_netns().to_string();
        let mut child = topo
            .spawn_in(&node, Path::new("sleep"), &["30".as_ref()])
            .expect("spawn");
        let pid = child.id().expect("pid");
        // The process runs inside the node's namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = Command::new("ip")
                .args(["netns", "pids", &node])
                .output()
                .expect("ip");
            if String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .any(|p| p == pid.to_string())
            {
                break;
            }
            assert!(Instant::now() < deadline, "sleep never appeared in {node}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        topo.teardown().expect("teardown");
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("the process was not killed")
            .expect("wait");
        assert!(!status.success(), "killed, not finished: {status:?}");
        assert!(netns::list(&node).is_empty());
    });
}

#[test]
fn bad_scenarios_fail_before_touching_the_machine_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = std::fs::read_to_string(repo("deploy/lab/shop.yaml")).expect("shop");
    let cases: BTreeMap<&str, (String, &str)> = BTreeMap::from([
        (
            "unknown workload",
            (
                format!("{base}  - {{from: frontend/wbe, to: backend/api, port: 9000}}\n"),
                "forbidden[6]: unknown workload `frontend/wbe`",
            ),
        ),
        (
            "undeclared port",
            (
                format!("{base}  - {{from: frontend/web, to: backend/api, port: 9999}}\n"),
                "forbidden[6]: port 9999/TCP is not declared by `backend/api`",
            ),
        ),
        (
            "overlapping cidrs",
            (
                base.replace(
                    "externals:\n",
                    "externals:\n  - {name: clash, cidr: 10.0.0.0/16}\n",
                ),
                "externals[1]: CIDR 10.0.2.0/24 overlaps 10.0.0.0/16",
            ),
        ),
        (
            "unknown node",
            (
                base.replace("node: node-2}", "node: node-3}"),
                "workloads[1]: unknown node `node-3` (declared: node-1, node-2)",
            ),
        ),
    ]);
    for (what, (text, message)) in cases {
        let file = dir.path().join(format!("{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, &text).expect("write");
        // The line of the offending entry, found independently.
        let needle = message.split(':').next().expect("entry");
        let line = match needle {
            "externals[1]" => {
                text.lines()
                    .position(|l| l.contains("name: db-subnet"))
                    .expect("line")
                    + 1
            }
            "workloads[1]" => {
                text.lines()
                    .position(|l| l.contains("name: api, kind"))
                    .expect("line")
                    + 1
            }
            _ => text.lines().count(),
        };
        let result = lab(&[
            "--scenario",
            file.to_str().expect("path"),
            "--out",
            dir.path().join("out").to_str().expect("path"),
        ]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{what}: {stderr}");
        let expected = format!("{}:{line}: {message}", file.display());
        assert!(
            stderr.contains(&expected),
            "{what}: expected `{expected}` in:\n{stderr}"
        );
        assert!(
            !stderr.contains("building the lab node"),
            "{what}: touched the machine:\n{stderr}"
        );
        assert!(!dir.path().join("out").exists(), "{what}: wrote output");
    }
}
