//! Which observed flows belong to which traffic entry or probe (pure, no I/O).
//!
//! The agent counts a flow once, at the client's interface, so a flow to a Service is seen
//! with the ClusterIP and the Service port as destination; a packet dropped after the
//! Service DNAT is reported on the backend's address and target port (see
//! [`matches_backend`]).

use std::{collections::BTreeMap, fmt::Write, net::IpAddr};

use jiff::Timestamp;
use netpol_observe_agent::agent::ObservedFlow;
use serde::Serialize;

use super::{
    model::{LabModel, PeerRef, ProbeKind, ProbeModel, protocol_name},
    traffic::{Outcome, ProbeResult},
};
use crate::flow::{Endpoint, FlowRecord, Protocol};

fn pod_ips(model: &LabModel, workload: usize) -> impl Iterator<Item = IpAddr> + '_ {
    model.workloads[workload]
        .pods
        .iter()
        .map(|&p| IpAddr::V4(model.pods[p].ip))
}

/// Whether endpoint `ep` is the peer `peer` of the lab (a pod of the workload, with its
/// attribution; a host of the external subnet, named when the subnet is not anonymous).
pub(crate) fn endpoint_is(model: &LabModel, peer: PeerRef, ep: &Endpoint) -> bool {
    match peer {
        PeerRef::Workload(w) => {
            let wl = &model.workloads[w];
            pod_ips(model, w).any(|ip| ip == ep.ip)
                && ep.namespace.as_deref() == Some(wl.namespace.as_str())
                && ep.workload.as_ref().is_some_and(|r| r.name == wl.name)
        }
        PeerRef::External(e) => {
            let ext = &model.externals[e];
            let inside = match ep.ip {
                IpAddr::V4(v4) => ext.cidr.contains(&v4),
                IpAddr::V6(_) => false,
            };
            inside && (ext.anonymous || ep.subnet.as_deref() == Some(ext.name.as_str()))
        }
        PeerRef::Service(s) => {
            let svc = &model.services[s];
            ep.ip == IpAddr::V4(svc.cluster_ip)
                && ep
                    .service
                    .as_ref()
                    .is_some_and(|r| r.namespace == svc.namespace && r.name == svc.name)
        }
    }
}

/// Whether `flow` is one connection of `probe`, as the agent reports it: same protocol, the
/// probe's client as `src`, its target (for a Service: the ClusterIP) and port as `dst`.
pub fn matches(model: &LabModel, probe: &ProbeModel, flow: &FlowRecord) -> bool {
    flow.protocol == probe.protocol
        && endpoint_is(model, probe.source, &flow.src)
        && endpoint_is(model, probe.target, &flow.dst)
        && flow.dst.port == Some(probe.port)
}

/// Whether `flow` is a connection of a `probe` to a Service seen after the DNAT: the client
/// to one of the Service's backends on its target port.
pub(crate) fn matches_backend(model: &LabModel, probe: &ProbeModel, flow: &FlowRecord) -> bool {
    let PeerRef::Service(s) = probe.target else {
        return false;
    };
    let svc = &model.services[s];
    let Some(sp) = svc
        .ports
        .iter()
        .find(|p| p.port == probe.port && p.protocol == probe.protocol)
    else {
        return false;
    };
    let to_address_endpoint = svc.external.is_some_and(|e| {
        model.externals[e]
            .hosts
            .iter()
            .any(|h| flow.dst.ip == IpAddr::V4(*h))
            && flow.dst.port == Some(sp.target_number())
    });
    flow.protocol == probe.protocol
        && endpoint_is(model, probe.source, &flow.src)
        && (to_address_endpoint
            || svc.backends.iter().any(|&b| {
                let pod = &model.pods[b];
                flow.dst.ip == IpAddr::V4(pod.ip) && flow.dst.port == sp.target_on(pod)
            }))
}

/// Reports the connections of clients outside the cluster through a Service to the Service,
/// as the agent reports a pod's: the agent sees them only at the backend, after the node's
/// DNAT (client → pod:targetPort), but the lab set that DNAT up and knows the original
/// destination (what the node's conntrack holds). Each such flow gets the Service's address,
/// port and reference, keeping the backend pod's attribution.
pub(crate) fn attribute_entries(model: &LabModel, flows: &mut [FlowRecord]) {
    for f in flows.iter_mut() {
        if f.dst.service.is_some() {
            continue;
        }
        let probe = model
            .probes
            .iter()
            .find(|p| matches!(p.source, PeerRef::External(_)) && matches_backend(model, p, f));
        if let Some(PeerRef::Service(s)) = probe.map(|p| p.target) {
            let svc = &model.services[s];
            f.dst.ip = IpAddr::V4(svc.cluster_ip);
            f.dst.port = probe.map(|p| p.port);
            f.dst.service = Some(crate::flow::ServiceRef {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
            });
        }
    }
}

/// Whether `flow` is a DNS lookup to kube-dns (its ClusterIP or its pods, port 53).
pub fn is_dns(model: &LabModel, flow: &FlowRecord) -> bool {
    let dns = model.dns_service();
    let to_dns = flow.dst.ip == IpAddr::V4(dns.cluster_ip)
        || dns
            .backends
            .iter()
            .any(|&b| flow.dst.ip == IpAddr::V4(model.pods[b].ip));
    to_dns && flow.dst.port == Some(53) && matches!(flow.protocol, Protocol::Udp | Protocol::Tcp)
}

/// The learning-phase flows sorted by traffic entry. A flow counts for an entry when it
/// [`matches`] it or, for a Service, [`matches_backend`] (a client outside the cluster is seen
/// only at the backend, after the DNAT; a pod's connection is reported once, to the Service,
/// the agent joining its two legs).
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// Per traffic entry (in scenario order): (entry index in [`LabModel::probes`], matching
    /// flows, connections expected).
    pub entries: Vec<(usize, usize, u32)>,
    /// DNS lookups (counted records).
    pub dns: usize,
    /// Flows that belong to no traffic entry and are not DNS.
    pub unexpected: Vec<FlowRecord>,
}

impl Coverage {
    /// Sorts `flows` against the traffic entries of `model`.
    pub fn of(model: &LabModel, flows: &[FlowRecord]) -> Coverage {
        let traffic: Vec<usize> = model
            .probes
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == ProbeKind::Traffic)
            .map(|(i, _)| i)
            .collect();
        let mut counts = vec![0usize; traffic.len()];
        let mut cov = Coverage::default();
        for f in flows {
            match traffic.iter().position(|&i| {
                let p = &model.probes[i];
                matches(model, p, f) || matches_backend(model, p, f)
            }) {
                // A cross-node connection's other copy (`counted: false`) is not one more.
                Some(k) if f.counted => counts[k] += 1,
                Some(_) => {}
                None if is_dns(model, f) => cov.dns += usize::from(f.counted),
                None => cov.unexpected.push(f.clone()),
            }
        }
        cov.entries = traffic
            .iter()
            .zip(counts)
            .map(|(&i, n)| (i, n, model.probes[i].connections))
            .collect();
        cov
    }

    /// Whether every traffic entry was seen with at least as many flows as connections.
    pub fn complete(&self) -> bool {
        self.entries
            .iter()
            .all(|&(_, seen, want)| seen >= want as usize)
    }

    /// The entries seen with fewer flows than connections, as `from -> to:port/PROTO (n of m)`.
    pub fn missing(&self, model: &LabModel) -> Vec<String> {
        self.entries
            .iter()
            .filter(|&&(_, seen, want)| seen < want as usize)
            .map(|&(i, seen, want)| {
                let p = &model.probes[i];
                format!(
                    "{} -> {}:{}/{} ({seen} of {want} flows)",
                    p.from,
                    p.to,
                    p.port,
                    protocol_name(p.protocol)
                )
            })
            .collect()
    }
}

/// How an endpoint reads in the flow table: `ns/workload`, `svc/ns/name`, the subnet name,
/// `node/<name>`, else the address.
pub(crate) fn endpoint_label(ep: &Endpoint) -> String {
    if let Some(s) = &ep.service {
        return format!("svc/{}/{}", s.namespace, s.name);
    }
    if let (Some(ns), Some(w)) = (&ep.namespace, &ep.workload) {
        return format!("{ns}/{}", w.name);
    }
    if let Some(n) = &ep.node {
        return format!("node/{n}");
    }
    if let Some(s) = &ep.subnet {
        return s.clone();
    }
    ep.ip.to_string()
}

/// The flow table by workload pair: `from  to  port/PROTO  flows  state(s)`, sorted.
pub fn flow_table(flows: &[FlowRecord]) -> String {
    type Row = (usize, BTreeMap<String, usize>, BTreeMap<String, usize>);
    let mut rows: BTreeMap<(String, String, String), Row> = BTreeMap::new();
    let several_nodes = flows
        .iter()
        .filter_map(|f| f.node.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    for f in flows {
        let port = match f.dst.port {
            Some(p) => format!("{p}/{}", protocol_name(f.protocol)),
            None => protocol_name(f.protocol),
        };
        let row = rows
            .entry((endpoint_label(&f.src), endpoint_label(&f.dst), port))
            .or_default();
        row.0 += 1;
        let state = serde_json::to_value(f.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *row.1.entry(state).or_default() += 1;
        // `*`: seen on that node, counted by the other node's agent.
        let star = if f.counted { "" } else { "*" };
        *row.2
            .entry(format!("{}{star}", f.node.as_deref().unwrap_or_default()))
            .or_default() += 1;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<26} {:<26} {:<10} {:>5}  states{}",
        "from",
        "to",
        "port",
        "flows",
        if several_nodes {
            " (seen on; * counted by the other node)"
        } else {
            ""
        }
    );
    for ((from, to, port), (n, states, nodes)) in rows {
        let states: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let nodes = match several_nodes {
            true => format!(
                " ({})",
                nodes
                    .iter()
                    .map(|(k, v)| match k.strip_suffix('*') {
                        Some(node) => format!("{node} {v}*"),
                        None => format!("{k} {v}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            false => String::new(),
        };
        let _ = writeln!(
            s,
            "  {from:<26} {to:<26} {port:<10} {n:>5}  {}{nodes}",
            states.join(", ")
        );
    }
    s
}

/// The outside destinations the flows reached by name: `from -> to port/PROTO: names` per
/// workload pair, port and set of names (`dst.dns_names` of flows to a subnet peer; Services'
/// names left out), sorted.
pub fn named_destinations(flows: &[FlowRecord]) -> Vec<String> {
    let lines: std::collections::BTreeSet<String> = flows
        .iter()
        .filter(|f| {
            f.dst.subnet.is_some() && f.dst.service.is_none() && !f.dst.dns_names.is_empty()
        })
        .map(|f| {
            format!(
                "{} -> {} {}/{}: {}",
                endpoint_label(&f.src),
                endpoint_label(&f.dst),
                f.dst.port.map(|p| p.to_string()).unwrap_or_default(),
                protocol_name(f.protocol),
                f.dst.dns_names.join(", ")
            )
        })
        .collect();
    lines.into_iter().collect()
}

/// What an enforcement probe did: `observed` in `enforce.json` (DESIGN: allowed or denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seen {
    /// Got through.
    Allowed,
    /// Did not.
    Denied,
}

impl Seen {
    /// What a probe's result counts as: every connection through is `allowed`, none is
    /// `denied`, and a mix counts as whatever was *not* expected (a forbidden probe that got
    /// through once was allowed; a traffic entry that failed once was denied). The counts are
    /// in [`EnforceProbe::connections`]/[`EnforceProbe::succeeded`].
    pub fn of(r: &ProbeResult) -> Seen {
        match (r.observed, r.expected) {
            (Outcome::Allowed, _) => Seen::Allowed,
            (Outcome::Denied, _) => Seen::Denied,
            (Outcome::Partial, Outcome::Allowed) => Seen::Denied,
            (Outcome::Partial, _) => Seen::Allowed,
        }
    }
}

fn is_probe_flow(model: &LabModel, probe: &ProbeModel, f: &ObservedFlow, since: Timestamp) -> bool {
    f.flow.first_seen.is_some_and(|t| t >= since)
        && (matches(model, probe, &f.flow) || matches_backend(model, probe, &f.flow))
}

/// The drop reason and policy the agent reported for the flows of `probe` since `since`.
pub(crate) fn drop_of(
    model: &LabModel,
    probe: &ProbeModel,
    flows: &[ObservedFlow],
    since: Timestamp,
) -> Option<(String, Option<String>)> {
    let dropped = |f: &ObservedFlow| {
        f.flow
            .drops
            .as_ref()
            .filter(|d| d.count > 0)
            .and_then(|d| d.reason.clone().map(|r| (r, d.policy.clone())))
    };
    flows
        .iter()
        .filter(|f| is_probe_flow(model, probe, f, since))
        .find_map(dropped)
        .or_else(|| {
            // A probe to `svc/…` whose DNS lookup was dropped never reached the Service: the
            // drop is its lookup's, from the same pod.
            if !matches!(probe.target, PeerRef::Service(_)) {
                return None;
            }
            flows
                .iter()
                .filter(|f| {
                    f.flow.first_seen.is_some_and(|t| t >= since)
                        && is_dns(model, &f.flow)
                        && endpoint_is(model, probe.source, &f.flow.src)
                })
                .find_map(dropped)
        })
}

/// The policies the agents reported not enforced for the flows of `probe` since `since`.
pub(crate) fn unenforced_of(
    model: &LabModel,
    probe: &ProbeModel,
    flows: &[ObservedFlow],
    since: Timestamp,
) -> Option<String> {
    flows
        .iter()
        .filter(|f| is_probe_flow(model, probe, f, since))
        .find_map(|f| f.flow.unenforced.as_ref().map(|u| u.policy.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow::{ServiceRef, WorkloadRef},
        scenario,
    };
    use std::path::Path;

    #[test]
    fn named_destinations_list_outside_peers_reached_by_name() {
        let client = || {
            let mut src = Endpoint::bare("10.244.1.10".parse().unwrap(), Some(40000));
            src.namespace = Some("shop".into());
            src.workload = Some(WorkloadRef {
                kind: "Deployment".into(),
                name: "checkout".into(),
            });
            src
        };
        let mut to_api = Endpoint::bare("198.51.100.1".parse().unwrap(), Some(443));
        to_api.subnet = Some("payments".into());
        to_api.dns_names = vec!["api.payments.example".into()];
        let mut to_svc = Endpoint::bare("10.96.0.20".parse().unwrap(), Some(80));
        to_svc.service = Some(ServiceRef {
            namespace: "shop".into(),
            name: "checkout".into(),
        });
        to_svc.dns_names = vec!["checkout.shop.svc.cluster.local".into()];
        let mut by_address = Endpoint::bare("10.0.2.1".parse().unwrap(), Some(5432));
        by_address.subnet = Some("db".into());
        let flows: Vec<FlowRecord> = [to_api.clone(), to_api, to_svc, by_address]
            .into_iter()
            .map(|dst| {
                let mut f = FlowRecord::new(Protocol::Tcp, client().ip, dst.ip, dst.port);
                f.src = client();
                f.dst = dst;
                f
            })
            .collect();
        assert_eq!(
            named_destinations(&flows),
            ["shop/checkout -> payments 443/TCP: api.payments.example"]
        );
    }

    const TEXT: &str = "name: t
namespaces: [{name: a}]
workloads:
  - {namespace: a, name: web, ports: [{name: http, port: 8080}]}
  - {namespace: a, name: api, replicas: 2, labels: {app: api}, ports: [{name: api, port: 9000}]}
services:
  - {namespace: a, name: api, selector: {app: api}, ports: [{port: 80, targetPort: api}]}
externals:
  - {name: db, cidr: 10.0.2.0/24, ports: [{port: 5432}]}
traffic:
  - {from: a/web, to: svc/a/api, port: 80, connections: 2}
  - {from: a/api, to: db, port: 5432}
forbidden:
  - {from: a/web, to: db, port: 5432}
";

    fn model() -> LabModel {
        let path = Path::new("t.yaml");
        let s = scenario::parse(path, TEXT).unwrap();
        LabModel::build(path, TEXT, &s).unwrap()
    }

    fn pod_ep(model: &LabModel, workload: &str, n: usize) -> Endpoint {
        let w = model.workloads.iter().find(|w| w.name == workload).unwrap();
        let pod = &model.pods[w.pods[n]];
        let mut ep = Endpoint::bare(IpAddr::V4(pod.ip), Some(40000));
        ep.namespace = Some(pod.namespace.clone());
        ep.pod = Some(pod.name.clone());
        ep.workload = Some(WorkloadRef {
            kind: "Deployment".into(),
            name: w.name.clone(),
        });
        ep
    }

    fn flow(src: Endpoint, dst: Endpoint) -> FlowRecord {
        let mut f = FlowRecord::new(Protocol::Tcp, src.ip, dst.ip, None);
        f.src = src;
        f.dst = dst;
        f
    }

    #[test]
    fn service_flows_count_for_their_entry_and_dns_is_set_apart() {
        let m = model();
        let svc = &m.services[1];
        let mut to_svc = Endpoint::bare(IpAddr::V4(svc.cluster_ip), Some(80));
        to_svc.service = Some(ServiceRef {
            namespace: "a".into(),
            name: "api".into(),
        });
        let web = pod_ep(&m, "web", 0);
        let one = flow(web.clone(), to_svc);
        let mut wrong_port = one.clone();
        wrong_port.dst.port = Some(81);
        let mut db = Endpoint::bare("10.0.2.1".parse().unwrap(), Some(5432));
        db.subnet = Some("db".into());
        let to_db = flow(pod_ep(&m, "api", 1), db.clone());
        let forbidden = flow(web.clone(), db);
        let dns_ip = m.dns_service().cluster_ip;
        let mut dns = flow(web, Endpoint::bare(IpAddr::V4(dns_ip), Some(53)));
        dns.protocol = Protocol::Udp;

        let cov = Coverage::of(
            &m,
            &[
                one.clone(),
                wrong_port.clone(),
                to_db.clone(),
                dns,
                forbidden.clone(),
            ],
        );
        assert_eq!(cov.entries, vec![(0, 1, 2), (1, 1, 1)]);
        assert_eq!(cov.dns, 1);
        assert_eq!(cov.unexpected, vec![wrong_port, forbidden]);
        assert!(!cov.complete());
        assert_eq!(
            cov.missing(&m),
            vec!["a/web -> svc/a/api:80/TCP (1 of 2 flows)"]
        );
        let cov = Coverage::of(&m, &[one.clone(), one, to_db]);
        assert!(cov.complete() && cov.unexpected.is_empty());
    }

    #[test]
    fn drops_after_dnat_match_the_backend_on_the_target_port() {
        let m = model();
        let probe = &m.probes[0];
        let web = pod_ep(&m, "web", 0);
        let mut backend = pod_ep(&m, "api", 1);
        backend.port = Some(9000);
        assert!(matches_backend(
            &m,
            probe,
            &flow(web.clone(), backend.clone())
        ));
        backend.port = Some(80);
        assert!(!matches_backend(&m, probe, &flow(web.clone(), backend)));
        // Not for targets that are not Services.
        let mut db = Endpoint::bare("10.0.2.1".parse().unwrap(), Some(5432));
        db.subnet = Some("db".into());
        assert!(!matches_backend(&m, &m.probes[2], &flow(web, db)));
    }

    #[test]
    fn flow_table_groups_by_workload_pair() {
        let m = model();
        let mut db = Endpoint::bare("10.0.2.1".parse().unwrap(), Some(5432));
        db.subnet = Some("db".into());
        let a = flow(pod_ep(&m, "api", 0), db.clone());
        let b = flow(pod_ep(&m, "api", 1), db);
        let table = flow_table(&[a, b]);
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("a/api") && row.contains("db") && row.contains("5432/TCP"));
        assert!(row.contains("  2  "), "{table}");
        assert_eq!(table.lines().count(), 2);
    }
}
