//! What the agent knows about the cluster at one time: the attributor and the compiled policy
//! engines (in force, staged), built from one inventory snapshot. Rebuilt whenever the
//! inventory or the staged policies change; flows keep the verdict they got when first seen.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use crate::{
    attribution::{Attributor, Subnets},
    flow::FlowRecord,
    inventory::{Inventory, NetworkPolicy},
    metrics::{self, Direction},
    policy::{PolicyEngine, PolicyError, Reason, SideResult, SideVerdict, Verdict},
};

use super::store::ObservedFlow;

/// The cluster model used to attribute and judge flows.
#[derive(Debug)]
pub struct Model {
    /// The inventory snapshot.
    pub inventory: Arc<Inventory>,
    subnets: Subnets,
    attributor: Attributor,
    engine: PolicyEngine,
    staged: Option<PolicyEngine>,
}

impl Model {
    /// Compiles the inventory's policies (and the staged ones, if any) against `inventory`.
    /// Errors name the policy and field at fault.
    pub fn new(
        inventory: Arc<Inventory>,
        subnets: &Subnets,
        staged: Option<&[NetworkPolicy]>,
    ) -> Result<Model, PolicyError> {
        let engine = PolicyEngine::compile(&inventory.network_policies, &inventory)?;
        let staged = match staged {
            Some(p) => Some(PolicyEngine::compile(p, &inventory)?),
            None => None,
        };
        Ok(Model {
            attributor: Attributor::new(&inventory, subnets),
            subnets: subnets.clone(),
            inventory,
            engine,
            staged,
        })
    }

    /// Attributes a datapath record and computes its verdicts.
    pub fn observe(&self, mut flow: FlowRecord) -> ObservedFlow {
        self.attributor.attribute(&mut flow);
        let verdict = self.engine.evaluate(&flow);
        let staged_verdict = self.staged.as_ref().map(|e| e.evaluate(&flow));
        ObservedFlow {
            flow,
            verdict: Some(verdict),
            staged_verdict,
        }
    }

    /// The named subnets the model attributes external peers with.
    pub fn subnets(&self) -> &Subnets {
        &self.subnets
    }

    /// Whether staged policies are loaded.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// The IPs of the (non-hostNetwork) pods on node `node`.
    pub fn local_pod_ips(&self, node: &str) -> Vec<IpAddr> {
        self.inventory
            .pods
            .iter()
            .filter(|p| {
                !p.host_network && p.deleted.is_none() && p.node_name.as_deref() == Some(node)
            })
            .flat_map(|p| p.ips.iter().copied())
            .collect()
    }

    /// Whether `ip` belongs to a (non-hostNetwork, live) pod of node `node`.
    pub fn is_local_pod_ip(&self, node: &str, ip: IpAddr) -> bool {
        self.inventory.pods.iter().any(|p| {
            !p.host_network
                && p.deleted.is_none()
                && p.node_name.as_deref() == Some(node)
                && p.ips.contains(&ip)
        })
    }

    /// Workloads no policy isolates, per namespace and direction: `(namespace, direction,
    /// count)`. Restricted to the pods of `node` when the inventory places any pod there
    /// (each agent then reports its own node), else every pod.
    pub fn unprotected(&self, node: Option<&str>) -> Vec<(String, Direction, u64)> {
        let on_node =
            |p: &crate::inventory::PodInfo| node.is_some_and(|n| p.node_name.as_deref() == Some(n));
        let restrict = self.inventory.pods.iter().any(on_node);
        let workloads: BTreeMap<(&str, &str), (&str, &str)> = self
            .inventory
            .pods
            .iter()
            .filter(|p| !restrict || on_node(p))
            .map(|p| {
                (
                    (p.namespace.as_str(), p.name.as_str()),
                    (p.workload.kind.as_str(), p.workload.name.as_str()),
                )
            })
            .collect();
        // (namespace, direction) → workloads with at least one unisolated pod.
        let mut open: BTreeMap<(String, Direction), BTreeSet<(String, String)>> = BTreeMap::new();
        let mut namespaces = BTreeSet::new();
        for (ns, name, ingress, egress) in self.engine.pod_isolation() {
            let Some((kind, wl)) = workloads.get(&(ns, name)) else {
                continue;
            };
            namespaces.insert(ns.to_owned());
            for (dir, isolated) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
                let set = open.entry((ns.to_owned(), dir)).or_default();
                if !isolated {
                    set.insert(((*kind).to_owned(), (*wl).to_owned()));
                }
            }
        }
        open.into_iter()
            .map(|((ns, dir), set)| (ns, dir, set.len() as u64))
            .collect()
    }
}

/// A side's verdict as the metrics label it.
pub fn side_label(side: &SideVerdict) -> metrics::Verdict {
    match side.result {
        SideResult::Allowed => metrics::Verdict::Allowed,
        SideResult::Denied => metrics::Verdict::Denied,
        SideResult::NotIsolated => metrics::Verdict::NotIsolated,
    }
}

/// The overall verdict label of a flow (`unknown` without a verdict).
pub fn overall_label(v: Option<&Verdict>) -> metrics::Verdict {
    match v {
        Some(v) => metrics::Verdict::overall(side_label(&v.egress), side_label(&v.ingress)),
        None => metrics::Verdict::Unknown,
    }
}

/// Whether a side concerns a pod (so a per-pod verdict series makes sense).
pub fn side_is_pod(side: &SideVerdict) -> bool {
    !matches!(side.reason, Some(Reason::NotAPod | Reason::HostNetwork))
}

/// The policy that explains a drop of a flow with this verdict: the isolating policies of the
/// denying side (ingress first, `,`-joined), or `None` when the policies allow the flow.
pub fn drop_policy(v: Option<&Verdict>) -> Option<String> {
    let v = v?;
    if v.allowed {
        return None;
    }
    let side = if v.ingress.result == SideResult::Denied {
        &v.ingress
    } else {
        &v.egress
    };
    if side.policies.is_empty() {
        None
    } else {
        Some(side.policies.join(","))
    }
}
