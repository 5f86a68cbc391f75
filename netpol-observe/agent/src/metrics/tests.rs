use std::{collections::BTreeMap, io::Write, process::Command};

use super::*;
use crate::flow::{Endpoint, Protocol, WorkloadRef};

/// `series → value` of every sample line of an OpenMetrics text.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Sample lines of one family (`name` is the full sample name, e.g. `..._flows_total`).
fn series_of(text: &str, name: &str) -> Vec<String> {
    samples(text)
        .into_keys()
        .filter(|s| s == name || s.starts_with(&format!("{name}{{")))
        .collect()
}

fn pod(ip: &str, port: Option<u16>, ns: &str, workload: &str) -> Endpoint {
    let mut ep = Endpoint::bare(ip.parse().unwrap(), port);
    ep.namespace = Some(ns.into());
    ep.pod = Some(format!("{workload}-0"));
    ep.workload = Some(WorkloadRef {
        kind: "Deployment".into(),
        name: workload.into(),
    });
    ep
}

fn flow(src: Endpoint, dst: Endpoint, protocol: Protocol) -> FlowRecord {
    let mut r = FlowRecord::new(protocol, src.ip, dst.ip, dst.port);
    r.src = src;
    r.dst = dst;
    r
}

const WEB_API: &str = r#"src_namespace="shop",src_kind="Deployment",src_workload="web",dst_namespace="shop",dst_kind="Deployment",dst_workload="api",dst_port="9000",protocol="TCP""#;

const WEB_DB: &str = r#"src_namespace="shop",src_kind="Deployment",src_workload="web",dst_namespace="",dst_kind="Subnet",dst_workload="db-subnet",dst_port="5432",protocol="TCP""#;

#[test]
fn exact_values_after_recorded_flows() {
    let m = Metrics::new(MetricsConfig::default());
    let f = flow(
        pod("10.244.0.5", Some(40000), "shop", "web"),
        pod("10.244.0.9", Some(9000), "shop", "api"),
        Protocol::Tcp,
    );
    m.record_flow(&f, true, 10, 1000, Verdict::Allowed);
    m.record_flow(&f, false, 5, 500, Verdict::Allowed);
    m.record_flow(&f, true, 1, 60, Verdict::Denied);
    let mut ext = f.clone();
    ext.dst = Endpoint::bare("10.0.2.4".parse().unwrap(), Some(5432));
    ext.dst.subnet = Some("db-subnet".into());
    m.record_flow(&ext, true, 2, 120, Verdict::NotIsolated);
    m.record_drop(&f, "NETFILTER_DROP", Some("shop/deny-all"), 4);
    m.record_drop(&f, "NETFILTER_DROP", None, 1);
    let labels = FlowLabels::from_record(&f, false);
    m.record_unenforced(labels.clone(), Some("shop/deny-all"));
    m.record_unenforced(labels.clone(), Some("shop/deny-all"));
    m.record_unenforced(labels, None);
    m.set_enforcement(Enforcement::Enforced);
    m.set_enforcement(Enforcement::NotEnforced);
    m.record_verdict(&f, Direction::Egress, Verdict::NotIsolated);
    m.record_verdict(&f, Direction::Ingress, Verdict::Allowed);
    m.record_staged(&f, Verdict::Denied);
    m.set_unprotected([("shop", Direction::Egress, 2)]);
    m.set_flow_table(12, 65536);
    m.set_ringbuf_lost_total(3);
    m.set_ringbuf_lost_total(5);
    m.set_kernel_error_total("parse_error", 7);
    m.set_kernel_error_total("parse_error", 9);
    m.set_attached_interfaces(4);
    let dns = m.dns();
    dns.answer();
    dns.answer();
    dns.parse_error();
    dns.set_kernel_lost_total(2);
    dns.set_kernel_lost_total(3);
    dns.lost(1);
    dns.set_cache(7, 1);
    dns.set_cache(5, 4);
    for _ in 0..2 {
        dns.rotation(dns::RotationLabels {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            workload: "web".into(),
            policy: "shop/web-egress".to_owned(),
        });
    }
    m.set_inventory_synced("pods", true);
    m.set_inventory_synced("nodes", false);
    m.record_evictions("idle", 6);

    let s = samples(&m.encode().unwrap());
    let p = "netpol_observe_";
    let expect = [
        (
            format!(r#"{p}flows_total{{{WEB_API},verdict="allowed"}}"#),
            1.0,
        ),
        (
            format!(r#"{p}flows_total{{{WEB_API},verdict="denied"}}"#),
            1.0,
        ),
        (
            format!(r#"{p}flows_total{{{WEB_DB},verdict="not_isolated"}}"#),
            1.0,
        ),
        (format!("{p}flow_packets_total{{{WEB_API}}}"), 16.0),
        (format!("{p}flow_bytes_total{{{WEB_API}}}"), 1560.0),
        (format!("{p}flow_packets_total{{{WEB_DB}}}"), 2.0),
        (format!("{p}flow_bytes_total{{{WEB_DB}}}"), 120.0),
        (
            format!(
                r#"{p}drops_total{{{WEB_API},reason="NETFILTER_DROP",policy="shop/deny-all"}}"#
            ),
            4.0,
        ),
        (
            format!(r#"{p}drops_total{{{WEB_API},reason="NETFILTER_DROP",policy="unknown"}}"#),
            1.0,
        ),
        (
            format!(r#"{p}unenforced_flows_total{{{WEB_API},policy="shop/deny-all"}}"#),
            2.0,
        ),
        (
            format!(r#"{p}unenforced_flows_total{{{WEB_API},policy="unknown"}}"#),
            1.0,
        ),
        (format!(r#"{p}policy_enforcement{{state="unknown"}}"#), 0.0),
        (format!(r#"{p}policy_enforcement{{state="enforced"}}"#), 0.0),
        (
            format!(r#"{p}policy_enforcement{{state="not_enforced"}}"#),
            1.0,
        ),
        (
            format!(
                r#"{p}policy_verdicts_total{{namespace="shop",kind="Deployment",workload="web",direction="egress",verdict="not_isolated"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"{p}policy_verdicts_total{{namespace="shop",kind="Deployment",workload="api",direction="ingress",verdict="allowed"}}"#
            ),
            1.0,
        ),
        (
            format!(r#"{p}staged_verdicts_total{{{WEB_API},verdict="denied"}}"#),
            1.0,
        ),
        (
            format!(r#"{p}unprotected_workloads{{namespace="shop",direction="egress"}}"#),
            2.0,
        ),
        (format!("{p}flow_table_entries"), 12.0),
        (format!("{p}flow_table_capacity"), 65536.0),
        (format!("{p}ringbuf_events_lost_total"), 5.0),
        (
            format!(r#"{p}kernel_errors_total{{error="parse_error"}}"#),
            9.0,
        ),
        (format!("{p}attached_interfaces"), 4.0),
        (format!(r#"{p}inventory_synced{{resource="pods"}}"#), 1.0),
        (format!(r#"{p}inventory_synced{{resource="nodes"}}"#), 0.0),
        (format!(r#"{p}flow_evictions_total{{reason="idle"}}"#), 6.0),
        (format!("{p}dns_answers_total"), 2.0),
        (format!("{p}dns_parse_errors_total"), 1.0),
        (format!("{p}dns_answers_lost_total"), 4.0),
        (format!("{p}dns_cache_entries"), 5.0),
        (format!("{p}dns_cache_evictions_total"), 4.0),
        (
            format!(
                r#"{p}dns_rotations_total{{namespace="shop",kind="Deployment",workload="web",policy="shop/web-egress"}}"#
            ),
            2.0,
        ),
    ];
    for (series, value) in &expect {
        assert_eq!(s.get(series), Some(value), "{series}\nin {s:#?}");
    }
    // Nothing else: every sample is one of the expected ones.
    assert_eq!(s.len(), expect.len(), "{s:#?}");
}

#[test]
fn kernel_counter_restart_counts_the_new_total() {
    let m = Metrics::new(MetricsConfig::default());
    m.set_kernel_error_total("flow_map_full", 10);
    m.set_kernel_error_total("flow_map_full", 2); // maps re-created: 2 new errors
    let s = samples(&m.encode().unwrap());
    assert_eq!(
        s[r#"netpol_observe_kernel_errors_total{error="flow_map_full"}"#],
        12.0
    );
}

#[test]
fn pod_level_adds_pod_labels() {
    let m = Metrics::new(MetricsConfig {
        series_budget: 10,
        pod_level: true,
    });
    let f = flow(
        pod("10.244.0.5", None, "shop", "web"),
        pod("10.244.0.9", Some(9000), "shop", "api"),
        Protocol::Tcp,
    );
    m.record_flow(&f, true, 0, 0, Verdict::Allowed);
    let s = samples(&m.encode().unwrap());
    let key = r#"netpol_observe_flows_total{src_namespace="shop",src_kind="Deployment",src_workload="web",src_pod="web-0",dst_namespace="shop",dst_kind="Deployment",dst_workload="api",dst_pod="api-0",dst_port="9000",protocol="TCP",verdict="allowed"}"#;
    assert_eq!(s.get(key), Some(&1.0), "{s:#?}");
}

#[test]
fn budget_bounds_series_under_all_to_all_traffic() {
    const WORKLOADS: usize = 1000;
    const BUDGET: usize = 500;
    let m = Metrics::new(MetricsConfig {
        series_budget: BUDGET,
        pod_level: false,
    });
    let eps: Vec<Endpoint> = (0..WORKLOADS)
        .map(|i| {
            pod(
                &format!("10.{}.{}.1", i / 256, i % 256),
                Some(8080),
                &format!("ns{}", i % 10),
                &format!("w{i}"),
            )
        })
        .collect();
    let mut total = 0u64;
    for src in &eps {
        for dst in &eps {
            let f = flow(src.clone(), dst.clone(), Protocol::Tcp);
            m.record_flow(&f, true, 1, 100, Verdict::Allowed);
            total += 1;
        }
    }
    let text = m.encode().unwrap();
    let s = samples(&text);
    for name in [
        "netpol_observe_flows_total",
        "netpol_observe_flow_packets_total",
        "netpol_observe_flow_bytes_total",
    ] {
        let series = series_of(&text, name);
        // BUDGET admitted label sets plus the one `other` bucket (one protocol, one verdict).
        assert_eq!(series.len(), BUDGET + 1, "{name}");
        let sum: f64 = series.iter().map(|k| s[k]).sum();
        let per_flow = match name {
            "netpol_observe_flow_bytes_total" => 100.0,
            _ => 1.0,
        };
        assert_eq!(
            sum,
            total as f64 * per_flow,
            "{name}: no observation is lost"
        );
    }
    let other = r#"netpol_observe_flows_total{src_namespace="other",src_kind="Other",src_workload="other",dst_namespace="other",dst_kind="Other",dst_workload="other",dst_port="other",protocol="TCP",verdict="allowed"}"#;
    let collapsed = total as f64 - BUDGET as f64;
    assert_eq!(s[other], collapsed);
    assert_eq!(
        s[r#"netpol_observe_series_dropped_total{metric="netpol_observe_flows_total"}"#],
        collapsed
    );
}

/// `unenforced_flows_total` has a series budget like every flow-labelled family: label sets
/// beyond it go to the `other` bucket (policy `other` too), counted in `series_dropped_total`,
/// nothing lost; the enforcement state is one gauge per state, exactly one of them 1.
#[test]
fn unenforced_flows_respect_the_budget() {
    let m = Metrics::new(MetricsConfig {
        series_budget: 2,
        pod_level: false,
    });
    let text = m.encode().unwrap();
    let s = samples(&text);
    let state = |s: &BTreeMap<String, f64>, st: &str| {
        s[&format!(r#"netpol_observe_policy_enforcement{{state="{st}"}}"#)]
    };
    assert_eq!(
        ["unknown", "enforced", "not_enforced"].map(|st| state(&s, st)),
        [1.0, 0.0, 0.0],
        "unknown until told"
    );
    for i in 0..5 {
        let f = flow(
            pod("10.244.0.5", Some(40000), "shop", "web"),
            pod("10.244.0.9", Some(9000 + i), "shop", "api"),
            Protocol::Tcp,
        );
        m.record_unenforced(FlowLabels::from_record(&f, false), Some("shop/api-np"));
    }
    let text = m.encode().unwrap();
    let s = samples(&text);
    let series = series_of(&text, "netpol_observe_unenforced_flows_total");
    assert_eq!(series.len(), 3, "{series:#?}");
    assert_eq!(series.iter().map(|k| s[k]).sum::<f64>(), 5.0);
    let other = r#"netpol_observe_unenforced_flows_total{src_namespace="other",src_kind="Other",src_workload="other",dst_namespace="other",dst_kind="Other",dst_workload="other",dst_port="other",protocol="TCP",policy="other"}"#;
    assert_eq!(s[other], 3.0);
    assert_eq!(
        s[r#"netpol_observe_series_dropped_total{metric="netpol_observe_unenforced_flows_total"}"#],
        3.0
    );
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is missing outside CI.
fn promtool_check(text: &str) -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !ci => {
            eprintln!(
                "SKIPPED promtool check: cannot run promtool ({e}); `cargo xtask setup` installs it"
            );
            return None;
        }
        Err(e) => panic!("CI=true: promtool is required: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {said}");
    Some(said)
}

#[test]
fn promtool_finds_nothing_to_say() {
    let metrics = sample::populated();
    let text = metrics.encode_text().unwrap();
    // Every family really is populated (a `# TYPE` line alone would not exercise the labels).
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "{name} has no sample in the populated scrape"
        );
    }
    if let Some(said) = promtool_check(&text) {
        assert_eq!(said, "", "promtool check metrics:\n{said}\non:\n{text}");
    }
}

#[test]
fn docs_list_every_family() {
    let docs = include_str!("../../../../docs/metrics.md");
    let text = sample::populated_scrape().unwrap();
    let mut names: Vec<String> = samples(&text)
        .into_keys()
        .map(|s| s.split('{').next().unwrap().to_owned())
        .collect();
    names.dedup();
    for name in &names {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/metrics.md does not list `{name}`"
        );
    }
    // And the docs list nothing that does not exist.
    for word in docs
        .split('`')
        .filter(|w| w.starts_with("netpol_observe_") && *w != "netpol_observe_")
    {
        let base = word
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap();
        assert!(
            names.iter().any(|n| n == base),
            "docs/metrics.md lists `{word}`, which no scrape has"
        );
    }
}

#[test]
fn text_format_has_the_same_samples_and_counter_names() {
    let m = sample::populated();
    let om = m.encode().unwrap();
    let text = m.encode_text().unwrap();
    assert_eq!(samples(&om), samples(&text));
    assert!(om.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE netpol_observe_flows_total counter\n"));
    assert!(text.contains("# TYPE netpol_observe_flow_table_entries gauge\n"));
    let (ct, body) = m
        .negotiate(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        ))
        .unwrap();
    assert_eq!((ct, body.as_str()), (CONTENT_TYPE, om.as_str()));
    let (ct, body) = m.negotiate(None).unwrap();
    assert_eq!((ct, body.as_str()), (TEXT_CONTENT_TYPE, text.as_str()));
}
