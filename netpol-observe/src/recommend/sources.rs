//! Where `recommend` gets flows besides files (pure parts; the HTTP calls are in the CLI):
//! agents' `/api/v1/flows` (JSON lines, merged and de-duplicated) and Prometheus'
//! `netpol_observe_flows_total` series (turned into workload-level flows).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
};

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use crate::{
    attribution::Subnets,
    flow::{
        Endpoint, FlowRecord, Protocol, ServiceRef, WorkloadRef,
        jsonl::{self, FlowLineError},
    },
    inventory::{Inventory, PodInfo},
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

/// Reads an agent's `/api/v1/flows` body (JSON lines; extra fields such as `verdict` are
/// ignored). Bad lines are returned as errors naming `origin` and the line; good ones are kept.
pub fn parse_agent_flows(body: &str, origin: &str) -> (Vec<FlowRecord>, Vec<FlowLineError>) {
    let mut flows = Vec::new();
    let mut errors = Vec::new();
    for (_, line) in jsonl::read_lines(Path::new(origin), body.as_bytes()) {
        match line {
            Ok(f) => flows.push(f),
            Err(e) => errors.push(e),
        }
    }
    (flows, errors)
}

/// Merges the flows of several agents, dropping duplicates (same protocol, addresses, ports
/// and `first_seen`: an agent asked twice, or a flow between two nodes both agents stamped
/// alike). The first copy wins, except that a counted copy replaces one marked
/// `counted: false`, so the flow keeps its evidence count. Copies that differ (each agent
/// stamps the flow with its own clock) are all kept: the records of one flow from two nodes
/// differ in `counted`, and only the counted one counts as evidence.
pub fn merge_flows(sources: impl IntoIterator<Item = Vec<FlowRecord>>) -> Vec<FlowRecord> {
    type Key = (
        Protocol,
        IpAddr,
        Option<u16>,
        IpAddr,
        Option<u16>,
        Option<Timestamp>,
    );
    let mut seen: HashMap<Key, usize> = HashMap::new();
    let mut out: Vec<FlowRecord> = Vec::new();
    for list in sources {
        for f in list {
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
                    if let Some(kept) = out.get_mut(i)
                        && f.counted
                        && !kept.counted
                    {
                        *kept = f;
                    }
                }
                None => {
                    seen.insert(key, out.len());
                    out.push(f);
                }
            }
        }
    }
    out
}

/// The PromQL instant query giving the flows per workload-level connection over `window`.
///
/// `increase()` alone misses every series that appeared during the window and never grew
/// after its first scrape (a workload pair whose connections all fell between two scrapes: the
/// counter is born at its final value, and Prometheus 2 has no zero sample before it), so
/// series that are present now but were absent when the window began count with their whole
/// value.
pub fn prometheus_query(window: SignedDuration) -> String {
    let w = window.as_secs().max(1);
    format!(
        "sum by (src_namespace, src_kind, src_workload, dst_namespace, dst_kind, dst_workload, dst_port, protocol) ((increase(netpol_observe_flows_total[{w}s]) > 0) or (netpol_observe_flows_total unless netpol_observe_flows_total offset {w}s))"
    )
}

#[derive(Deserialize)]
struct PromAnswer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<PromData>,
}

#[derive(Deserialize)]
struct PromData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<PromSample>,
}

#[derive(Deserialize)]
struct PromSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Turns a Prometheus `/api/v1/query` answer to [`prometheus_query`] into one workload-level
/// flow per series with a positive value: pods are named from the inventory (a pod of the
/// workload), subnets from `subnets`, nodes from the inventory; `first_seen`/`last_seen` span
/// `window` ending at the evaluation time. A destination port that is a Service port of the
/// destination workload becomes a flow to that Service (so the target port is used). Series
/// that cannot be placed are returned as notes.
pub fn parse_prometheus(
    body: &str,
    origin: &str,
    inventory: &Inventory,
    subnets: &Subnets,
    window: SignedDuration,
) -> Result<(Vec<FlowRecord>, Vec<String>), SourceError> {
    let bad = |problem: String| SourceError::Prometheus {
        origin: origin.to_owned(),
        problem,
    };
    let answer: PromAnswer = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
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
    if data.result_type != "vector" {
        return Err(bad(format!(
            "resultType {:?}, expected \"vector\"",
            data.result_type
        )));
    }
    let mut flows = Vec::new();
    let mut notes = Vec::new();
    for (i, s) in data.result.iter().enumerate() {
        let count: f64 = s.value.1.parse().unwrap_or(0.0);
        if count <= 0.0 {
            continue;
        }
        let get = |k: &str| s.metric.get(k).map(String::as_str).unwrap_or_default();
        let Ok(protocol) = get("protocol").parse::<Protocol>() else {
            notes.push(format!(
                "{origin}: series {i}: protocol {:?} unknown, skipped",
                get("protocol")
            ));
            continue;
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
        // A public client (its addresses are not in the series) of a workload behind a
        // NodePort/LoadBalancer Service: a public entry point, for which the recommender
        // allows the whole Internet (`--public-ingress any`), so a placeholder address keeps
        // the peer. Anywhere else the addresses would matter: skipped with a note.
        let src = src.or_else(|| {
            let (_, Some(pod)) = dst.as_ref()? else {
                return None;
            };
            let public = get("src_namespace").is_empty()
                && get("src_kind") == "Subnet"
                && get("src_workload") == "world"
                && is_public_entry(inventory, pod);
            public.then(|| {
                let mut ep = Endpoint::bare(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), None);
                ep.subnet = Some("world".to_owned());
                (ep, None)
            })
        });
        let (Some(src), Some((mut dst, dst_pod))) = (src.map(|e| e.0), dst) else {
            notes.push(format!(
                "{origin}: series {i} ({}/{} -> {}/{}): peer not in the inventory or an unnamed subnet, skipped",
                get("src_namespace"),
                get("src_workload"),
                get("dst_namespace"),
                get("dst_workload")
            ));
            continue;
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
        flows.push(f);
    }
    Ok((flows, notes))
}

/// Whether a NodePort or LoadBalancer Service selects `pod`.
fn is_public_entry(inventory: &Inventory, pod: &PodInfo) -> bool {
    inventory.services.iter().any(|svc| {
        svc.namespace == pod.namespace
            && matches!(
                svc.service_type,
                crate::inventory::ServiceType::NodePort
                    | crate::inventory::ServiceType::LoadBalancer
            )
            && svc
                .selector
                .as_ref()
                .is_some_and(|sel| sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
    })
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
            [vec![a.clone()], vec![b.clone()]],
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
