//! `verify`: the dry run of a draft against real traffic. Every observed flow the policies
//! would deny, grouped by workload-level connection, with the isolating policies, and a
//! summary per workload.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    flow::{Endpoint, FlowRecord, Protocol},
    policy::{PolicyEngine, SideResult, SideVerdict, Verdict},
};

/// Observed flows the policies would deny, grouped by (source, destination, port, protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedFlow {
    /// The client: `ns/Kind/name`, `node/<name>`, `subnet/<name>` or the address.
    pub src: String,
    /// The server, same spelling (with `via Service ns/name` for flows to a Service).
    pub dst: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port as observed (the Service port for flows to a Service).
    pub port: Option<u16>,
    /// How many observed flows.
    pub count: u64,
    /// The destination's ingress verdict (of the first such flow).
    pub ingress: SideVerdict,
    /// The source's egress verdict (of the first such flow).
    pub egress: SideVerdict,
    /// The first such flow, attributed.
    pub example: FlowRecord,
}

/// Per workload: its flows and how many the policies would deny.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    /// `ns/Kind/name`.
    pub workload: String,
    /// Flows it initiated.
    pub flows_out: u64,
    /// Flows it received.
    pub flows_in: u64,
    /// Of its outgoing flows, denied (by its egress or the peer's ingress).
    pub denied_out: u64,
    /// Of its incoming flows, denied.
    pub denied_in: u64,
    /// The policies (`ns/name`) isolating a side of its denied flows.
    pub denied_by: BTreeSet<String>,
}

/// The outcome of [`verify`], written by the lab as `verify.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Flows checked.
    pub flows: u64,
    /// Flows denied.
    pub denied_flows: u64,
    /// The denied flows, grouped, sorted by source then destination.
    pub denied: Vec<DeniedFlow>,
    /// Every pod workload seen in the flows, sorted.
    pub workloads: Vec<WorkloadSummary>,
}

impl VerifyReport {
    /// Whether no observed flow would be denied.
    pub fn is_clean(&self) -> bool {
        self.denied_flows == 0
    }

    /// The human summary `verify` prints.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for d in &self.denied {
            let port = d.port.map(|p| format!(":{p}")).unwrap_or_default();
            let _ = writeln!(
                s,
                "DENIED {} -> {}{port}/{} ({} flow(s)){}{}",
                d.src,
                d.dst,
                d.protocol,
                d.count,
                side_text("egress", &d.egress),
                side_text("ingress", &d.ingress),
            );
        }
        if !self.denied.is_empty() {
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "{:<40} {:>9} {:>8} {:>10} {:>9}  denied by",
            "WORKLOAD", "FLOWS OUT", "FLOWS IN", "DENIED OUT", "DENIED IN"
        );
        for w in &self.workloads {
            let by: Vec<&str> = w.denied_by.iter().map(String::as_str).collect();
            let _ = writeln!(
                s,
                "{:<40} {:>9} {:>8} {:>10} {:>9}  {}",
                w.workload,
                w.flows_out,
                w.flows_in,
                w.denied_out,
                w.denied_in,
                by.join(",")
            );
        }
        let _ = writeln!(
            s,
            "\n{} of {} observed flow(s) would be denied",
            self.denied_flows, self.flows
        );
        s
    }
}

fn side_text(name: &str, v: &SideVerdict) -> String {
    if v.result == SideResult::Denied {
        format!("; {name} denied, isolated by {}", v.policies.join(","))
    } else {
        String::new()
    }
}

/// A peer's name in reports: `ns/Kind/name`, `node/<name>`, `subnet/<name>` or the address.
pub fn peer_name(ep: &Endpoint) -> String {
    if let Some(ns) = &ep.namespace {
        return match (&ep.workload, &ep.pod) {
            (Some(w), _) => format!("{ns}/{}/{}", w.kind, w.name),
            (None, Some(p)) => format!("{ns}/Pod/{p}"),
            (None, None) => format!("{ns}/{}", ep.ip),
        };
    }
    if let Some(n) = &ep.node {
        return format!("node/{n}");
    }
    if let Some(s) = &ep.subnet {
        return format!("subnet/{s}");
    }
    ep.ip.to_string()
}

/// Checks every (attributed) flow against `engine`.
pub fn verify(engine: &PolicyEngine, flows: &[FlowRecord]) -> VerifyReport {
    verify_with(engine, flows, |_| {})
}

/// [`verify`], calling `each` with every verdict (the diff collects exercised rules).
pub(crate) fn verify_with(
    engine: &PolicyEngine,
    flows: &[FlowRecord],
    mut each: impl FnMut(&Verdict),
) -> VerifyReport {
    type Key = (String, String, Protocol, Option<u16>);
    let mut denied: BTreeMap<Key, DeniedFlow> = BTreeMap::new();
    let mut workloads: BTreeMap<String, WorkloadSummary> = BTreeMap::new();
    let mut report = VerifyReport::default();
    for f in flows {
        let v = engine.evaluate(f);
        each(&v);
        report.flows += 1;
        let src = peer_name(&f.src);
        let mut dst = peer_name(&f.dst);
        if let Some(svc) = &f.dst.service {
            dst = format!("{dst} via Service {}/{}", svc.namespace, svc.name);
        }
        let mut by = BTreeSet::new();
        for side in [&v.ingress, &v.egress] {
            if side.result == SideResult::Denied {
                by.extend(side.policies.iter().cloned());
            }
        }
        if f.src.namespace.is_some() {
            let w = workloads.entry(src.clone()).or_default();
            w.flows_out += 1;
            if !v.allowed {
                w.denied_out += 1;
                w.denied_by.extend(by.iter().map(|n| n.to_string()));
            }
        }
        if f.dst.namespace.is_some() {
            let w = workloads.entry(peer_name(&f.dst)).or_default();
            w.flows_in += 1;
            if !v.allowed {
                w.denied_in += 1;
                w.denied_by.extend(by.iter().map(|n| n.to_string()));
            }
        }
        if !v.allowed {
            report.denied_flows += 1;
            denied
                .entry((src.clone(), dst.clone(), f.protocol, f.dst.port))
                .and_modify(|d| d.count += 1)
                .or_insert_with(|| DeniedFlow {
                    src,
                    dst,
                    protocol: f.protocol,
                    port: f.dst.port,
                    count: 1,
                    ingress: v.ingress.clone(),
                    egress: v.egress.clone(),
                    example: f.clone(),
                });
        }
    }
    report.denied = denied.into_values().collect();
    report.workloads = workloads
        .into_iter()
        .map(|(name, mut w)| {
            w.workload = name;
            w
        })
        .collect();
    report
}
