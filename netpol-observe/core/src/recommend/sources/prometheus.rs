//! Flows from Prometheus (`recommend --prometheus`, the lab): the PromQL queries over the
//! agents' flow, drop and unenforced-flow series, and their answers turned into workload-level
//! flows. The instant query gives each connection's counts over the window; the range query
//! gives, per connection, the times of its first and last increase, which become its
//! `first_seen`/`last_seen` ([`Seen`]) instead of the query window's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::SourceError;
use crate::{
    attribution::Subnets,
    flow::{Drops, Endpoint, FlowRecord, Protocol, ServiceRef, Unenforced, WorkloadRef},
    inventory::{Inventory, PodInfo},
    recommend::{RecordedFlows, RecordedVerdict},
};

/// The flow labels the Prometheus query keeps.
pub(crate) const FLOW_LABELS: &str = "src_namespace, src_kind, src_workload, dst_namespace, dst_kind, dst_workload, dst_port, protocol";

/// The PromQL instant query giving, per workload-level connection over `window`: the flows by
/// `verdict` under the policies in force (`netpol_observe_flows_total`), and, marked
/// `verdict="dropped"` and `verdict="unenforced"` with their `policy`, the packets a filter
/// dropped (`netpol_observe_drops_total`, without the `NO_SOCKET` and `IP_RPFILTER` reasons,
/// which no filter causes) and the denied flows delivered all the same
/// (`netpol_observe_unenforced_flows_total`).
///
/// `increase()` alone misses what a series counted before its first sample (the counter is
/// born at its first value, and Prometheus 2 has no zero sample before it: a workload pair
/// whose connections all fell between two scrapes never increases), so series that are
/// present now but were absent when the window began count with their whole value (every
/// flow they counted is in the window), the others with their increase.
pub fn prometheus_query(window: SignedDuration) -> String {
    let w = window.as_secs().max(1);
    let grown = |m: &str| format!("({m} unless {m} offset {w}s) or (increase({m}[{w}s]) > 0)");
    format!(
        "sum by ({FLOW_LABELS}, verdict) ({}) or label_replace(sum by ({FLOW_LABELS}, policy) ({}), \"verdict\", \"dropped\", \"\", \"\") or label_replace(sum by ({FLOW_LABELS}, policy) ({}), \"verdict\", \"unenforced\", \"\", \"\")",
        grown("netpol_observe_flows_total"),
        grown("netpol_observe_drops_total{reason!~\"NO_SOCKET|IP_RPFILTER\"}"),
        grown("netpol_observe_unenforced_flows_total"),
    )
}

/// A Prometheus HTTP API answer whose `result` holds `S`s.
#[derive(Deserialize)]
struct PromAnswer<S> {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default = "Option::default")]
    data: Option<PromData<S>>,
}

#[derive(Deserialize)]
struct PromData<S> {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<S>,
}

/// The `result` of a Prometheus answer from `origin`, which must be a success of
/// `result_type` (`vector` for a query, `matrix` for a range query).
pub(crate) fn prometheus_result<S: serde::de::DeserializeOwned>(
    body: &str,
    origin: &str,
    result_type: &str,
) -> Result<Vec<S>, SourceError> {
    let bad = |problem: String| SourceError::Prometheus {
        origin: origin.to_owned(),
        problem,
    };
    let answer: PromAnswer<S> = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
    if answer.status != "success" {
        return Err(bad(format!(
            "status {:?}: {}",
            answer.status,
            answer.error.unwrap_or_default()
        )));
    }
    let data = answer
        .data
        .ok_or_else(|| bad("no `data` field".to_owned()))?;
    if data.result_type != result_type {
        return Err(bad(format!(
            "resultType {:?}, expected {result_type:?}",
            data.result_type
        )));
    }
    Ok(data.result)
}

#[derive(Deserialize)]
struct PromSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Turns a Prometheus `/api/v1/query` answer to [`prometheus_query`] into workload-level
/// flows: pods are named from the inventory (a pod of the workload), subnets from `subnets`,
/// nodes from the inventory; `first_seen`/`last_seen` span `window` ending at the evaluation
/// time. A destination port that is a Service port of the destination workload becomes a flow
/// to that Service (so the target port is used). Series that cannot be placed are returned as
/// notes.
///
/// Per connection (the series with the same flow labels, positive values only): one flow for
/// the `allowed`/`not_isolated` series (recorded [`RecordedVerdict::Allowed`]) and the
/// `unknown` or unlabelled ones (no recorded verdict); one flow for the `denied` series
/// (recorded [`RecordedVerdict::Denied`], with `drops` from the `dropped` series and
/// `unenforced` from the `unenforced` ones, so the recommender learns it only if it was
/// delivered); drops on a connection without any flow series are a denied flow too.
pub fn parse_prometheus_recorded(
    body: &str,
    origin: &str,
    inventory: &Inventory,
    subnets: &Subnets,
    window: SignedDuration,
) -> Result<(RecordedFlows, Vec<String>), SourceError> {
    parse_prometheus_seen(body, &Seen::default(), origin, inventory, subnets, window)
}

/// [`parse_prometheus_recorded`] with the first and last increase of each connection's series
/// in the window ([`Seen`]): a connection found there gets them as its
/// `first_seen`/`last_seen`, the others span the window. Each record carries its connection
/// count ([`FlowRecord::connections`]: the increase of its series).
pub fn parse_prometheus_seen(
    body: &str,
    seen: &Seen,
    origin: &str,
    inventory: &Inventory,
    subnets: &Subnets,
    window: SignedDuration,
) -> Result<(RecordedFlows, Vec<String>), SourceError> {
    let result: Vec<PromSample> = prometheus_result(body, origin, "vector")?;
    // The series of each connection, in the order of their first series.
    let mut groups: Vec<Connection> = Vec::new();
    let mut index: HashMap<Vec<&str>, usize> = HashMap::new();
    for (i, s) in result.iter().enumerate() {
        let count: f64 = s.value.1.parse().unwrap_or(0.0);
        if count <= 0.0 {
            continue;
        }
        let key: Vec<&str> = FLOW_LABELS
            .split(", ")
            .map(|k| s.metric.get(k).map(String::as_str).unwrap_or_default())
            .collect();
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Connection {
                first: i,
                ..Connection::default()
            });
            groups.len() - 1
        });
        let g = &mut groups[g];
        let policy = s.metric.get("policy").filter(|p| !p.is_empty());
        match s.metric.get("verdict").map(String::as_str) {
            Some("allowed" | "not_isolated") => g.allowed += count,
            Some("denied") => g.denied += count,
            Some("dropped") => {
                g.dropped += count;
                g.drop_policies.extend(policy.cloned());
            }
            Some("unenforced") => {
                g.unenforced += count;
                g.unenforced_policies.extend(policy.cloned());
            }
            _ => g.unjudged += count,
        }
    }
    let mut flows = RecordedFlows::default();
    let mut notes = Vec::new();
    for g in &groups {
        let i = g.first;
        let s = &result[i];
        let Some(mut f) = place(s, i, origin, inventory, subnets, window, &mut notes) else {
            continue;
        };
        if let Some((first, last)) = seen.of(&s.metric) {
            f.first_seen = Some(first);
            f.last_seen = Some(last);
        }
        if g.allowed + g.unjudged > 0.0 {
            let v = (g.allowed > 0.0).then_some(RecordedVerdict::Allowed);
            let mut f = f.clone();
            f.connections = Some(connections(g.allowed + g.unjudged));
            flows.push(f, v);
        }
        let drops_only = g.denied <= 0.0 && g.allowed + g.unjudged <= 0.0 && g.dropped > 0.0;
        if g.denied > 0.0 || drops_only {
            let mut f = f;
            if g.denied > 0.0 {
                f.connections = Some(connections(g.denied));
            }
            let policies = |set: &BTreeSet<String>| {
                (!set.is_empty()).then(|| set.iter().cloned().collect::<Vec<_>>().join(","))
            };
            if g.dropped > 0.0 {
                f.drops = Some(Drops {
                    count: g.dropped as u64,
                    reason: None,
                    policy: policies(&g.drop_policies),
                });
            }
            if g.unenforced > 0.0 {
                f.unenforced = Some(Unenforced {
                    policy: policies(&g.unenforced_policies).unwrap_or_else(|| "unknown".into()),
                });
            }
            let v = (g.denied > 0.0).then(|| {
                let mut isolating = g.drop_policies.clone();
                isolating.extend(g.unenforced_policies.iter().cloned());
                isolating.remove("unknown");
                RecordedVerdict::Denied(match policies(&isolating) {
                    Some(p) => format!("verdict=\"denied\" in Prometheus, isolated by {p}"),
                    None => "verdict=\"denied\" in Prometheus".to_owned(),
                })
            });
            flows.push(f, v);
        }
    }
    Ok((flows, notes))
}

/// A series increase as a number of connections (Prometheus extrapolates `increase()`: not a
/// whole number; at least one).
fn connections(increase: f64) -> u64 {
    (increase.round() as u64).max(1)
}

/// [`parse_prometheus_recorded`] without the recorded verdicts.
pub fn parse_prometheus(
    body: &str,
    origin: &str,
    inventory: &Inventory,
    subnets: &Subnets,
    window: SignedDuration,
) -> Result<(Vec<FlowRecord>, Vec<String>), SourceError> {
    let (flows, notes) = parse_prometheus_recorded(body, origin, inventory, subnets, window)?;
    Ok((flows.flows, notes))
}

/// The series of one workload-level connection: their values summed by kind.
#[derive(Debug, Default)]
struct Connection {
    /// Index of its first series (naming it in notes; its labels place the flow).
    first: usize,
    allowed: f64,
    unjudged: f64,
    denied: f64,
    dropped: f64,
    drop_policies: BTreeSet<String>,
    unenforced: f64,
    unenforced_policies: BTreeSet<String>,
}

/// The workload-level flow of series `i` (`s`), or `None` with a note: its protocol and port,
/// its source and destination workloads (an unattributed destination as the only Service
/// without selector serving the port, a public peer as `world`), a destination reached
/// through a Service as that Service's ClusterIP.
fn place(
    s: &PromSample,
    i: usize,
    origin: &str,
    inventory: &Inventory,
    subnets: &Subnets,
    window: SignedDuration,
    notes: &mut Vec<String>,
) -> Option<FlowRecord> {
    let get = |k: &str| label(s, k);
    let Ok(protocol) = get("protocol").parse::<Protocol>() else {
        notes.push(format!(
            "{origin}: series {i}: protocol {:?} unknown, skipped",
            get("protocol")
        ));
        return None;
    };
    let port = get("dst_port").parse::<u16>().ok();
    let at = Timestamp::from_millisecond((s.value.0 * 1000.0) as i64).ok();
    let src = endpoint(
        inventory,
        subnets,
        get("src_namespace"),
        get("src_kind"),
        get("src_workload"),
    );
    let dst = endpoint(
        inventory,
        subnets,
        get("dst_namespace"),
        get("dst_kind"),
        get("dst_workload"),
    );
    let dst = dst.or_else(|| {
        address_destination(s, (i, origin), inventory, port, protocol, notes).map(|ep| (ep, None))
    });
    let dst = dst.or_else(|| world(s, "dst"));
    let src = src.or_else(|| world(s, "src"));
    let (Some(src), Some((mut dst, dst_pod))) = (src.map(|e| e.0), dst) else {
        notes.push(format!(
            "{origin}: series {i} ({}/{} -> {}/{}): peer not in the inventory or an unnamed subnet, skipped",
            get("src_namespace"),
            get("src_workload"),
            get("dst_namespace"),
            get("dst_workload")
        ));
        return None;
    };
    dst.port = port;
    if let (Some(pod), Some(p)) = (dst_pod, port) {
        through_service(&mut dst, pod, (protocol, p), inventory);
    }
    let mut f = FlowRecord::new(protocol, src.ip, dst.ip, port);
    f.src = src;
    f.dst = dst;
    f.last_seen = at;
    f.first_seen = at.and_then(|t| t.checked_sub(window).ok());
    Some(f)
}

/// The value of label `k` of a series (empty when it has none).
fn label<'s>(s: &'s PromSample, k: &str) -> &'s str {
    s.metric.get(k).map(String::as_str).unwrap_or_default()
}

/// An unattributed destination is a ClusterIP without backend pods: when exactly one
/// selector-less Service of the inventory serves the port (the API server behind
/// `default/kubernetes`, a database registered as a Service), it is that Service (noted, the
/// series named by `(i, origin)`).
fn address_destination(
    s: &PromSample,
    (i, origin): (usize, &str),
    inventory: &Inventory,
    port: Option<u16>,
    protocol: Protocol,
    notes: &mut Vec<String>,
) -> Option<Endpoint> {
    if label(s, "dst_namespace").is_empty() && label(s, "dst_kind") == "Unknown" {
        let (ep, svc) = address_service(inventory, port?, protocol)?;
        notes.push(format!(
            "{origin}: series {i}: unattributed destination port {} taken as Service {svc}, the only Service without selector serving it",
            port.unwrap_or_default()
        ));
        Some(ep)
    } else {
        None
    }
}

/// A public peer (`world`) on `side` (`src` or `dst`): its addresses are not in the series.
/// The unspecified address stands for them: the recommender allows the whole Internet except
/// private and cluster ranges for it, as for a public entry point (a workload behind a
/// NodePort/LoadBalancer Service) or more public addresses than `--world-threshold`, and says
/// so in `netpol-observe.io/aggregation`.
fn world<'i>(s: &PromSample, side: &str) -> Option<(Endpoint, Option<&'i PodInfo>)> {
    (label(s, &format!("{side}_namespace")).is_empty()
        && label(s, &format!("{side}_kind")) == "Subnet"
        && label(s, &format!("{side}_workload")) == "world")
        .then(|| {
            let mut ep = Endpoint::bare(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), None);
            ep.subnet = Some("world".to_owned());
            (ep, None)
        })
}

/// A destination pod reached on a port none of its containers declares went through a
/// Service: the first Service of its namespace with a ClusterIP, that port and a selector
/// matching the pod becomes the destination (its first ClusterIP).
fn through_service(
    dst: &mut Endpoint,
    pod: &PodInfo,
    (protocol, p): (Protocol, u16),
    inventory: &Inventory,
) {
    if protocol.has_ports()
        && !pod
            .container_ports
            .iter()
            .any(|c| c.port == p && c.protocol == protocol)
        && let Some(svc) = inventory.services.iter().find(|svc| {
            svc.namespace == pod.namespace
                && !svc.cluster_ips.is_empty()
                && svc
                    .ports
                    .iter()
                    .any(|sp| sp.port == p && sp.protocol == protocol)
                && svc
                    .selector
                    .as_ref()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
        })
        && let Some(ip) = svc.cluster_ips.first()
    {
        dst.ip = *ip;
        dst.service = Some(ServiceRef {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        });
    }
}

/// The only Service without selector (address endpoints) with a ClusterIP serving
/// `port`/`protocol`, as a flow destination (its first ClusterIP) and its `ns/name`.
fn address_service(
    inventory: &Inventory,
    port: u16,
    protocol: Protocol,
) -> Option<(Endpoint, String)> {
    let mut found = inventory.services.iter().filter(|svc| {
        svc.selector.is_none()
            && !svc.cluster_ips.is_empty()
            && svc
                .ports
                .iter()
                .any(|sp| sp.port == port && sp.protocol == protocol)
    });
    let svc = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let mut ep = Endpoint::bare(*svc.cluster_ips.first()?, Some(port));
    ep.service = Some(ServiceRef {
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
    });
    Some((ep, format!("{}/{}", svc.namespace, svc.name)))
}

fn endpoint<'i>(
    inventory: &'i Inventory,
    subnets: &Subnets,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Option<(Endpoint, Option<&'i PodInfo>)> {
    if !namespace.is_empty() {
        let pod = inventory
            .pods
            .iter()
            .filter(|p| {
                p.namespace == namespace
                    && p.workload.name == name
                    && (kind.is_empty() || p.workload.kind == kind)
                    && !p.ips.is_empty()
            })
            .min_by_key(|p| (p.deleted.is_some(), &p.name))?;
        let mut ep = Endpoint::bare(*pod.ips.first()?, None);
        ep.namespace = Some(pod.namespace.to_string());
        ep.pod = Some(pod.name.to_string());
        ep.workload = Some(WorkloadRef {
            kind: pod.workload.kind.clone(),
            name: pod.workload.name.clone(),
        });
        ep.labels = Some(pod.selector_labels.to_map());
        return Some((ep, Some(pod)));
    }
    match kind {
        "Node" => {
            let node = inventory.node(name)?;
            let mut ep = Endpoint::bare(*node.addresses.first()?, None);
            ep.node = Some(node.name.clone());
            Some((ep, None))
        }
        _ => {
            let net = subnets.entries().iter().find(|e| e.name == name)?.net;
            let mut ep = Endpoint::bare(net.network(), None);
            ep.subnet = Some(name.to_owned());
            Some((ep, None))
        }
    }
}

/// Most steps one range query asks for (Prometheus refuses more than 11,000 points per
/// series).
const MAX_STEPS: i64 = 1000;

/// The PromQL range query: per connection (the flow labels of
/// [`prometheus_query`]), its flows, or for a connection only ever dropped its
/// filter drops.
pub fn range_query() -> String {
    format!(
        "sum by ({FLOW_LABELS}) (netpol_observe_flows_total) or sum by ({FLOW_LABELS}) (netpol_observe_drops_total{{reason!~\"NO_SOCKET|IP_RPFILTER\"}})"
    )
}

/// The resolution of the range query over `window`: at most [`MAX_STEPS`] steps, at least
/// one second.
pub fn step(window: SignedDuration) -> SignedDuration {
    let secs = window.as_secs().max(1);
    SignedDuration::from_secs(((secs + MAX_STEPS - 1) / MAX_STEPS).max(1))
}

/// The `query_range` parameters (`query`, `start`, `end`, `step`, times in Unix seconds) for
/// `window` ending at `end`.
pub fn range_params(window: SignedDuration, end: Timestamp) -> Vec<(&'static str, String)> {
    let end_s = end.as_second();
    vec![
        ("query", range_query()),
        ("start", (end_s - window.as_secs().max(1)).to_string()),
        ("end", end_s.to_string()),
        ("step", format!("{}s", step(window).as_secs())),
    ]
}

/// First and last increase per connection, by the values of its flow labels.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    by: HashMap<Vec<String>, (Timestamp, Timestamp)>,
}

impl Seen {
    /// The first and last increase of the connection of a series with these labels.
    pub fn of(&self, metric: &BTreeMap<String, String>) -> Option<(Timestamp, Timestamp)> {
        self.by.get(&key(metric)).copied()
    }

    /// Number of connections with an increase.
    pub fn len(&self) -> usize {
        self.by.len()
    }

    /// Whether no connection increased.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }
}

fn key(metric: &BTreeMap<String, String>) -> Vec<String> {
    FLOW_LABELS
        .split(", ")
        .map(|k| metric.get(k).cloned().unwrap_or_default())
        .collect()
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Reads a `query_range` answer to [`range_query`] whose range began at `start`: a sample
/// counts as an increase when its value is above the previous one's, or below it but
/// positive (the counter was reset by an agent restart and counted again), or when it is a
/// series' first sample after `start` (the series was born in the window).
pub fn parse_range(body: &str, origin: &str, start: Timestamp) -> Result<Seen, SourceError> {
    let result: Vec<Series> = prometheus_result(body, origin, "matrix")?;
    let start_ms = start.as_millisecond();
    let mut seen = Seen::default();
    for s in &result {
        let mut prev: Option<f64> = None;
        let mut span: Option<(Timestamp, Timestamp)> = None;
        for (t, v) in &s.values {
            let Ok(v) = v.parse::<f64>() else { continue };
            let ms = (t * 1000.0).round() as i64;
            let Ok(at) = Timestamp::from_millisecond(ms) else {
                continue;
            };
            let increased = match prev {
                None => ms > start_ms && v > 0.0,
                Some(p) => v > p || (v < p && v > 0.0),
            };
            prev = Some(v);
            if increased {
                span = Some(span.map_or((at, at), |(first, _)| (first, at)));
            }
        }
        if let Some((first, last)) = span {
            let e = seen.by.entry(key(&s.metric)).or_insert((first, last));
            e.0 = e.0.min(first);
            e.1 = e.1.max(last);
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod seen_tests {
    use super::*;

    #[test]
    fn first_and_last_increase_not_the_window() {
        // Range 1000..=1060 s, step 10 s. web → api: 3 at the start, +2 at 1020, +1 at
        // 1040, then flat: first 1020, last 1040. db: born at 1030 with 4, reset at 1050 to 1
        // (an agent restart): 1030 and 1050. cache: flat all along: no increase.
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
          {"metric":{"src_namespace":"shop","src_kind":"Deployment","src_workload":"web","dst_namespace":"shop","dst_kind":"Deployment","dst_workload":"api","dst_port":"9000","protocol":"TCP"},
           "values":[[1000,"3"],[1010,"3"],[1020,"5"],[1030,"5"],[1040,"6"],[1050,"6"],[1060,"6"]]},
          {"metric":{"src_namespace":"shop","src_kind":"Deployment","src_workload":"api","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db","dst_port":"5432","protocol":"TCP"},
           "values":[[1030,"4"],[1040,"4"],[1050,"1"],[1060,"1"]]},
          {"metric":{"src_namespace":"shop","src_kind":"Deployment","src_workload":"api","dst_namespace":"shop","dst_kind":"StatefulSet","dst_workload":"cache","dst_port":"6379","protocol":"TCP"},
           "values":[[1000,"2"],[1060,"2"]]}]}}"#;
        let start = Timestamp::from_second(1000).unwrap();
        let seen = parse_range(body, "test", start).unwrap();
        assert_eq!(seen.len(), 2);
        let t = |s| Timestamp::from_second(s).unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let web_api = labels(&[
            ("src_namespace", "shop"),
            ("src_kind", "Deployment"),
            ("src_workload", "web"),
            ("dst_namespace", "shop"),
            ("dst_kind", "Deployment"),
            ("dst_workload", "api"),
            ("dst_port", "9000"),
            ("protocol", "TCP"),
            ("verdict", "allowed"),
        ]);
        assert_eq!(seen.of(&web_api), Some((t(1020), t(1040))));
        let db = labels(&[
            ("src_namespace", "shop"),
            ("src_kind", "Deployment"),
            ("src_workload", "api"),
            ("dst_kind", "Subnet"),
            ("dst_workload", "db"),
            ("dst_port", "5432"),
            ("protocol", "TCP"),
        ]);
        assert_eq!(seen.of(&db), Some((t(1030), t(1050))));
        assert!(
            parse_range(
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                "x",
                start
            )
            .is_err()
        );
    }

    #[test]
    fn the_step_bounds_the_points() {
        assert_eq!(step(SignedDuration::from_hours(24)).as_secs(), 87);
        assert_eq!(step(SignedDuration::from_secs(30)).as_secs(), 1);
    }
}
