//! `verify`: the dry run of a draft against real traffic. Every observed flow the policies
//! would deny, grouped by workload-level connection, with the isolating policies, and a
//! summary per workload.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use k8s_openapi::{
    api::networking::v1::NetworkPolicyPeer, apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use crate::{
    flow::{Endpoint, FlowRecord, Protocol},
    inventory::{Inventory, NetworkPolicy},
    policy::{
        PolicyEngine, SideResult, SideVerdict, Verdict, label_selector_matches, policy_id,
        policy_types,
    },
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
    /// Policies and rule peers whose selectors match no pod of the inventory
    /// ([`selects_nothing`]): a policy that isolates nothing, or a rule that allows nothing —
    /// usually a typo in a label or a namespace name. Filled by the callers that have the
    /// inventory (`verify`, the lab); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selects_nothing: Vec<String>,
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
        if !self.selects_nothing.is_empty() {
            let _ = writeln!(s, "\nselectors that match no pod:");
            for w in &self.selects_nothing {
                let _ = writeln!(s, "  warning: {w}");
            }
        }
        let _ = writeln!(
            s,
            "\n{} of {} observed flow(s) would be denied",
            self.denied_flows, self.flows
        );
        s
    }
}

/// The policies (`ns/name: …`) whose `podSelector` selects no pod of `inventory`, and the
/// rule peers (`ns/name:ingress[i] from[j]: …`) whose namespace/pod selectors match no pod
/// (peers with an `ipBlock` are addresses and never reported). Live pods only; hostNetwork
/// pods are outside policy scope. Sorted.
pub fn selects_nothing(policies: &[NetworkPolicy], inventory: &Inventory) -> Vec<String> {
    let live = |p: &&crate::inventory::PodInfo| p.deleted.is_none() && !p.host_network;
    let selects = |sel: &LabelSelector, labels: &crate::inventory::Labels| {
        label_selector_matches(sel, labels).unwrap_or(false)
    };
    let mut out = Vec::new();
    for p in policies {
        let id = policy_id(p);
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let Some(spec) = &p.spec else { continue };
        let default_selector = LabelSelector::default();
        let pod_selector = spec.pod_selector.as_ref().unwrap_or(&default_selector);
        if !inventory
            .pods_in(ns)
            .filter(live)
            .any(|pod| selects(pod_selector, &pod.labels))
        {
            out.push(format!(
                "{id}: podSelector selects no pod in namespace {ns} (the policy has no effect)"
            ));
        }
        let (ingress_on, egress_on) = policy_types(p);
        let peers = |rules: Vec<Option<&Vec<NetworkPolicyPeer>>>, dir: &str, field: &str| {
            let mut found = Vec::new();
            for (i, list) in rules.into_iter().enumerate() {
                for (j, peer) in list.into_iter().flatten().enumerate() {
                    if peer.ip_block.is_some()
                        || (peer.pod_selector.is_none() && peer.namespace_selector.is_none())
                    {
                        continue;
                    }
                    let namespaces: Vec<&str> = match &peer.namespace_selector {
                        None => vec![ns],
                        Some(sel) => inventory
                            .namespaces
                            .values()
                            .filter(|n| selects(sel, &n.labels))
                            .map(|n| n.name.as_str())
                            .collect(),
                    };
                    let any = namespaces.iter().any(|n| {
                        inventory.pods_in(n).filter(live).any(|pod| {
                            peer.pod_selector
                                .as_ref()
                                .is_none_or(|sel| selects(sel, &pod.labels))
                        })
                    });
                    if !any {
                        found.push(format!(
                            "{id}:{dir}[{i}] {field}[{j}]: {} matches no pod (the peer allows nothing)",
                            peer_text(peer)
                        ));
                    }
                }
            }
            found
        };
        if ingress_on {
            let rules = spec
                .ingress
                .iter()
                .flatten()
                .map(|r| r.from.as_ref())
                .collect();
            out.extend(peers(rules, "ingress", "from"));
        }
        if egress_on {
            let rules = spec
                .egress
                .iter()
                .flatten()
                .map(|r| r.to.as_ref())
                .collect();
            out.extend(peers(rules, "egress", "to"));
        }
    }
    out.sort();
    out
}

fn peer_text(peer: &NetworkPolicyPeer) -> String {
    let sel = |s: &LabelSelector| {
        let mut parts: Vec<String> = s
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in s.match_expressions.iter().flatten() {
            parts.push(format!(
                "{} {} ({})",
                e.key,
                e.operator,
                e.values
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        format!("{{{}}}", parts.join(", "))
    };
    match (&peer.namespace_selector, &peer.pod_selector) {
        (Some(n), Some(p)) => format!("namespaceSelector {} AND podSelector {}", sel(n), sel(p)),
        (Some(n), None) => format!("namespaceSelector {}", sel(n)),
        (None, Some(p)) => format!("podSelector {}", sel(p)),
        (None, None) => "peer".to_owned(),
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
    verify_with(engine, flows.iter().map(|f| (f, 1)), |_| {})
}

/// [`verify`], calling `each` with every verdict (the diff collects exercised rules); each
/// flow comes with the number of records it stands for (every record of a
/// [`FlowAggregate`](super::FlowAggregate) group gets the same verdict).
pub(crate) fn verify_with<'f>(
    engine: &PolicyEngine,
    flows: impl IntoIterator<Item = (&'f FlowRecord, u64)>,
    mut each: impl FnMut(&Verdict),
) -> VerifyReport {
    type Key = (String, String, Protocol, Option<u16>);
    let mut denied: BTreeMap<Key, DeniedFlow> = BTreeMap::new();
    let mut workloads: BTreeMap<String, WorkloadSummary> = BTreeMap::new();
    let mut report = VerifyReport::default();
    for (f, n) in flows {
        let v = engine.evaluate_flow(f);
        each(&v);
        report.flows += n;
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
            w.flows_out += n;
            if !v.allowed {
                w.denied_out += n;
                w.denied_by.extend(by.iter().map(|n| n.to_string()));
            }
        }
        if f.dst.namespace.is_some() {
            let w = workloads.entry(peer_name(&f.dst)).or_default();
            w.flows_in += n;
            if !v.allowed {
                w.denied_in += n;
                w.denied_by.extend(by.iter().map(|n| n.to_string()));
            }
        }
        if !v.allowed {
            report.denied_flows += n;
            denied
                .entry((src.clone(), dst.clone(), f.protocol, f.dst.port))
                .and_modify(|d| d.count += n)
                .or_insert_with(|| DeniedFlow {
                    src,
                    dst,
                    protocol: f.protocol,
                    port: f.dst.port,
                    count: n,
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
