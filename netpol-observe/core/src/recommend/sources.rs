//! Where `recommend` gets flows (pure parts; the HTTP calls are in the CLI): flow files and
//! agents' `/api/v1/flows` (JSON lines with the verdict under the policies in force, merged
//! and de-duplicated) and Prometheus' `netpol_observe_flows_total` series with their
//! `verdict`, `netpol_observe_drops_total` and `netpol_observe_unenforced_flows_total`
//! (turned into workload-level flows).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
};

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::{RecordedFlows, RecordedVerdict};
use crate::{
    attribution::Subnets,
    flow::{
        Drops, Endpoint, FlowRecord, Protocol, ServiceRef, Unenforced, WorkloadRef,
        jsonl::{self, FlowLineError, FlowLineWith},
    },
    inventory::{Inventory, PodInfo},
    policy::SideResult,
};

/// Errors of the flow sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A Prometheus answer that is not a successful instant-vector query result.
    #[error("{origin}: not a Prometheus instant-vector answer: {problem}")]
    Prometheus {
        /// Where the answer came from (URL).
        origin: String,
        /// What is wrong.
        problem: String,
    },
}

/// The verdict under the policies in force a flow line carries (`verdict`: the agent's
/// `/api/v1/flows`, `flows -o jsonl`, `evaluate`), if any: an object with `allowed` and,
/// optionally, the `ingress` and `egress` sides naming the isolating `policies` (the form of
/// [`crate::policy::Verdict`]). `staged_verdict` is not one.
pub(crate) fn recorded_verdict(line: &str) -> Result<Option<RecordedVerdict>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        verdict: Option<Recorded>,
    }
    #[derive(Deserialize)]
    struct Recorded {
        allowed: bool,
        #[serde(default)]
        ingress: Option<Side>,
        #[serde(default)]
        egress: Option<Side>,
    }
    #[derive(Deserialize)]
    struct Side {
        result: SideResult,
        #[serde(default)]
        policies: Vec<String>,
    }
    // A line without the word (nor an escape that could spell it) has no verdict: most lines
    // are read once, not twice.
    if !line.contains("verdict") && !line.contains('\\') {
        return Ok(None);
    }
    let Some(v) = serde_json::from_str::<Line>(line)?.verdict else {
        return Ok(None);
    };
    if v.allowed {
        return Ok(Some(RecordedVerdict::Allowed));
    }
    let denied = |s: Option<Side>| {
        s.filter(|s| s.result == SideResult::Denied)
            .map(|s| s.policies)
    };
    Ok(Some(RecordedVerdict::Denied(super::judge::denial_of(
        denied(v.egress),
        denied(v.ingress),
    ))))
}

/// The records of [`jsonl::read_lines_with`] / [`jsonl::read_file_with`] read with
/// [`recorded_verdict`], and the bad lines.
pub(crate) fn recorded_lines(
    lines: Vec<FlowLineWith<Option<RecordedVerdict>>>,
) -> (RecordedFlows, Vec<FlowLineError>) {
    let mut flows = RecordedFlows::default();
    let mut errors = Vec::new();
    for (_, line) in lines {
        match line {
            Ok((f, v)) => flows.push(f, v),
            Err(e) => errors.push(e),
        }
    }
    (flows, errors)
}

/// Reads a flow file (`-`: stdin) with the verdicts its lines carry.
pub fn read_flow_file(path: &Path) -> (RecordedFlows, Vec<FlowLineError>) {
    recorded_lines(jsonl::read_file_with(path, "verdict", recorded_verdict))
}

/// [`read_flow_file`] as a stream: `each` gets every record with its verdict, or the error of a
/// bad line (file and line number), as it is read; nothing is held.
pub fn stream_flow_file(
    path: &Path,
    mut each: impl FnMut(Result<(FlowRecord, Option<RecordedVerdict>), FlowLineError>),
) {
    jsonl::for_each_file_line_with(path, "verdict", recorded_verdict, |(_, line)| each(line));
}

/// [`stream_flow_file`] of an open reader; `path` names it in errors.
pub fn stream_flow_reader(
    path: &Path,
    reader: impl std::io::BufRead,
    mut each: impl FnMut(Result<(FlowRecord, Option<RecordedVerdict>), FlowLineError>),
) {
    jsonl::for_each_line_with(path, reader, "verdict", recorded_verdict, |(_, line)| {
        each(line)
    });
}

/// Reads an agent's `/api/v1/flows` body (JSON lines) with the verdict of each line. Bad lines
/// are returned as errors naming `origin` and the line; good ones are kept.
pub fn parse_agent_answer(body: &str, origin: &str) -> (RecordedFlows, Vec<FlowLineError>) {
    recorded_lines(jsonl::read_lines_with(
        Path::new(origin),
        body.as_bytes(),
        "verdict",
        recorded_verdict,
    ))
}

/// [`parse_agent_answer`] without the verdicts.
pub fn parse_agent_flows(body: &str, origin: &str) -> (Vec<FlowRecord>, Vec<FlowLineError>) {
    let (flows, errors) = parse_agent_answer(body, origin);
    (flows.flows, errors)
}

/// Merges the flows of several agents, dropping duplicates (same protocol, addresses, ports
/// and `first_seen`: an agent asked twice, or a flow between two nodes both agents stamped
/// alike). The first copy wins, except that a counted copy replaces one marked
/// `counted: false`, so the flow keeps its evidence count. Copies that differ (each agent
/// stamps the flow with its own clock) are all kept: the records of one flow from two nodes
/// differ in `counted`, and only the counted one counts as evidence.
pub fn merge_flows(sources: impl IntoIterator<Item = Vec<FlowRecord>>) -> Vec<FlowRecord> {
    merge_recorded(sources.into_iter().map(RecordedFlows::from)).flows
}

/// [`merge_flows`], each kept record with its recorded verdict.
pub fn merge_recorded(sources: impl IntoIterator<Item = RecordedFlows>) -> RecordedFlows {
    type Key = (
        Protocol,
        IpAddr,
        Option<u16>,
        IpAddr,
        Option<u16>,
        Option<Timestamp>,
    );
    let mut seen: HashMap<Key, usize> = HashMap::new();
    let mut out = RecordedFlows::default();
    for list in sources {
        let mut verdicts = list.verdicts.into_iter();
        for f in list.flows {
            let v = verdicts.next().flatten();
            let key = (
                f.protocol,
                f.src.ip,
                f.src.port,
                f.dst.ip,
                f.dst.port,
                f.first_seen,
            );
            match seen.get(&key) {
                Some(&i) => {
                    if let Some(kept) = out.flows.get_mut(i)
                        && f.counted
                        && !kept.counted
                    {
                        *kept = f;
                        if v.is_some() || !out.verdicts.is_empty() {
                            out.verdicts.resize(out.flows.len(), None);
                            out.verdicts[i] = v;
                        }
                    }
                }
                None => {
                    seen.insert(key, out.flows.len());
                    out.push(f, v);
                }
            }
        }
    }
    out
}

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
    parse_prometheus_seen(
        body,
        &super::prometheus_seen::Seen::default(),
        origin,
        inventory,
        subnets,
        window,
    )
}

/// [`parse_prometheus_recorded`] with the first and last increase of each connection's series
/// in the window ([`super::prometheus_seen`]): a connection found there gets them as its
/// `first_seen`/`last_seen`, the others span the window. Each record carries its connection
/// count ([`FlowRecord::connections`]: the increase of its series).
pub fn parse_prometheus_seen(
    body: &str,
    seen: &super::prometheus_seen::Seen,
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

/// The workload-level flow of series `i` (`s`), or `None` with a note.
fn place(
    s: &PromSample,
    i: usize,
    origin: &str,
    inventory: &Inventory,
    subnets: &Subnets,
    window: SignedDuration,
    notes: &mut Vec<String>,
) -> Option<FlowRecord> {
    let get = |k: &str| s.metric.get(k).map(String::as_str).unwrap_or_default();
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
    // An unattributed destination is a ClusterIP without backend pods: when exactly one
    // selector-less Service of the inventory serves the port (the API server behind
    // `default/kubernetes`, a database registered as a Service), it is that Service.
    let dst = dst.or_else(|| {
        if get("dst_namespace").is_empty() && get("dst_kind") == "Unknown" {
            let (ep, svc) = address_service(inventory, port?, protocol)?;
            notes.push(format!(
                "{origin}: series {i}: unattributed destination port {} taken as Service {svc}, the only Service without selector serving it",
                port.unwrap_or_default()
            ));
            Some((ep, None))
        } else {
            None
        }
    });
    // A public peer (`world`, either side): its addresses are not in the series. The
    // unspecified address stands for them: the recommender allows the whole Internet except
    // private and cluster ranges for it, as for a public entry point (a workload behind a
    // NodePort/LoadBalancer Service) or more public addresses than `--world-threshold`, and
    // says so in `netpol-observe.io/aggregation`.
    let world = |side: &str| {
        (get(&format!("{side}_namespace")).is_empty()
            && get(&format!("{side}_kind")) == "Subnet"
            && get(&format!("{side}_workload")) == "world")
            .then(|| {
                let mut ep = Endpoint::bare(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), None);
                ep.subnet = Some("world".to_owned());
                (ep, None)
            })
    };
    let dst = dst.or_else(|| world("dst"));
    let src = src.or_else(|| world("src"));
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
    if let (Some(pod), Some(p)) = (dst_pod, port)
        && protocol.has_ports()
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
    let mut f = FlowRecord::new(protocol, src.ip, dst.ip, port);
    f.src = src;
    f.dst = dst;
    f.last_seen = at;
    f.first_seen = at.and_then(|t| t.checked_sub(window).ok());
    Some(f)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies of one flow from two agents: the counted one is kept, whichever agent came
    /// first; copies stamped differently are all kept (only the counted one is evidence).
    #[test]
    fn merging_keeps_the_counted_copy() {
        let t: Timestamp = "2026-05-04T10:00:00Z".parse().unwrap();
        let flow = |node: &str, counted: bool, first_seen: Timestamp| {
            let mut f = FlowRecord::new(
                Protocol::Tcp,
                "10.1.0.10".parse().unwrap(),
                "10.2.0.30".parse().unwrap(),
                Some(5432),
            );
            f.src.port = Some(40001);
            f.first_seen = Some(first_seen);
            f.node = Some(node.to_owned());
            f.counted = counted;
            f
        };
        let (a, b) = (flow("node-a", true, t), flow("node-b", false, t));
        for lists in [
            [vec![b.clone()], vec![a.clone()]],
            [vec![a.clone()], vec![b]],
        ] {
            assert_eq!(merge_flows(lists), vec![a.clone()]);
        }
        let later = flow(
            "node-b",
            false,
            t.checked_add(SignedDuration::from_millis(1)).unwrap(),
        );
        assert_eq!(
            merge_flows([vec![later.clone()], vec![a.clone()]]),
            vec![later, a]
        );
    }
}
