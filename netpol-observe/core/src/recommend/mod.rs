//! The least-privilege recommender (pure: no I/O): attributed flows over an observation window
//! → NetworkPolicies that allow every observed flow and nothing else among known workloads,
//! apart from the documented aggregations.
//!
//! ```no_run
//! # use netpol_observe_core::{attribution::Subnets, inventory::Inventory, flow::FlowRecord};
//! # use netpol_observe_core::recommend::{Recommender, RecommendConfig, render_yaml};
//! # let (inventory, flows): (Inventory, Vec<FlowRecord>) = Default::default();
//! let rec = Recommender::new(&inventory, &Subnets::default(), RecommendConfig::default())
//!     .recommend(&flows);
//! print!("{}", render_yaml(&rec.policies).unwrap_or_default());
//! ```
//!
//! What the policies say (see `docs/design/recommend.md`):
//! - per namespace with observed workloads, `default-deny` (both directions, opt-out);
//! - per workload, `<name>-np` selecting it by its stable selector labels, with ingress and
//!   egress rules grouping peers that use the same ports (so a rule's peers × ports were all
//!   observed);
//! - peers in other namespaces: `namespaceSelector` on `kubernetes.io/metadata.name` AND
//!   `podSelector` in one entry; flows to a Service: the backend workload on the target port,
//!   by name when the container port has one;
//! - DNS lookups (kube-dns/CoreDNS, node-local DNS, link-local resolvers): 53/UDP and 53/TCP;
//! - outside the cluster: named subnets as their CIDRs; other addresses aggregated within a
//!   bound; more than `world_threshold` public addresses: `0.0.0.0/0` and `::/0` except
//!   private and cluster ranges, flagged by an annotation;
//! - traffic between a pod and its own node needs no rule; ICMP peers get every port;
//! - flows the policies in force denied that never got through (dropped, or attempted while a
//!   policy denied them) are not learned but reported for review, unless
//!   [`RecommendConfig::include_denied`] (see [`judge`](self::judge) for the exact rule).

pub mod aggregate;
mod annotations;
mod build;
pub mod cidr;
pub mod cilium;
pub mod cluster_policy;
pub mod diff;
pub mod dns_names;
pub mod format;
pub mod judge;
mod observe;
mod render;
pub mod rule_text;
pub mod sources;
pub mod verify;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use ipnet::IpNet;
use jiff::SignedDuration;
use serde::Serialize;

pub use aggregate::{Aggregator, FlowAggregate, Pass};
pub use annotations::{
    AGGREGATION, DENIED_IN_FORCE, FIRST_SEEN, FLOWS, LAST_SEEN, LEFT_OUT, PLATFORM, UNOBSERVED,
    WARNING, WINDOW, WORKLOAD,
};
pub use build::NAMESPACE_NAME_LABEL;
pub use dns_names::{DNS_NAMES, PolicyHints};
pub use format::{FormatError, PolicyFormat, RenderedObject, render_objects};
pub use judge::{DeniedInForce, DeniedOutcome, RecordedFlows, RecordedVerdict};
pub use observe::{CLOUD_METADATA, NODE_LOCAL_DNS};
pub use render::{RenderError, render_by_namespace, render_yaml};

use crate::{
    attribution::{Attributor, Subnets},
    flow::FlowRecord,
    flow::Protocol,
    inventory::{AddressEndpoints, ContainerPortInfo, Inventory, NetworkPolicy},
    policy::PolicyEngine,
};

/// Tunables of the recommender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecommendConfig {
    /// Write a `default-deny` policy per namespace (on by default).
    pub default_deny: bool,
    /// Namespaces whose workloads get no policies (they still appear as peers).
    /// Default: `kube-system`.
    pub exclude_namespaces: Vec<String>,
    /// Widest IPv4 prefix observed addresses are aggregated into (default 24).
    pub aggregate_v4: u8,
    /// Widest IPv6 prefix observed addresses are aggregated into (default 64).
    pub aggregate_v6: u8,
    /// More distinct public addresses than this on one port → the whole Internet (default 16).
    pub world_threshold: usize,
    /// A workload whose flows span less than this (and less than half the window) gets a
    /// warning annotation (default 1 h).
    pub min_observation: SignedDuration,
    /// Cluster ranges (service CIDRs…) excluded from whole-Internet blocks, besides the node
    /// pod CIDRs of the inventory and the private ranges.
    pub cluster_ranges: Vec<IpNet>,
    /// Re-check the output with the policy engine (every observed flow allowed).
    pub self_check: bool,
    /// Who may reach a public entry point (a workload behind a LoadBalancer or NodePort
    /// Service) from outside the cluster (default: [`PublicIngress::Any`]).
    pub public_ingress: PublicIngress,
    /// Learn flows the policies in force denied that never got through, as if they were
    /// legitimate (default: false: they get no allow rule and are listed for review). See
    /// [`judge`](self::judge).
    pub include_denied: bool,
}

/// The rule for public entry points: workloads backing a `LoadBalancer` or `NodePort`
/// Service, on the Service's ports, when public clients were observed there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PublicIngress {
    /// Open to the whole Internet (`0.0.0.0/0`, `::/0` except private and cluster ranges):
    /// real users come from anywhere, the window only saw a few of them.
    #[default]
    Any,
    /// Only the observed public clients (aggregated within the bounds), like any other
    /// external peer.
    Observed,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            default_deny: true,
            exclude_namespaces: vec!["kube-system".to_owned()],
            aggregate_v4: 24,
            aggregate_v6: 64,
            world_threshold: 16,
            min_observation: SignedDuration::from_hours(1),
            cluster_ranges: Vec::new(),
            self_check: true,
            public_ingress: PublicIngress::Any,
            include_denied: false,
        }
    }
}

/// Counts describing a recommendation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecommendStats {
    /// Flow records read.
    pub flows: usize,
    /// Flows left out (not attributable, Service without backend or endpoint); see the notes.
    /// Like every flow count of the output, records marked `counted: false` (another agent
    /// counts the same flow) are not counted.
    pub skipped: u64,
    /// Flows needing no rule (a pod's traffic to itself or with its own node).
    pub implicit: u64,
    /// Of the left-out flows, those the recommended policies deny (listed in the notes and on
    /// the namespace's `default-deny`; the self-check evaluates every left-out flow).
    pub left_out_denied: u64,
    /// Flows the policies in force denied (drops, a recorded verdict, the inventory's
    /// policies; [`Recommendation::denied`]), learned or not.
    pub denied: u64,
    /// Of those, the flows not turned into allow rules (never got through; not with
    /// [`RecommendConfig::include_denied`]).
    pub denied_not_learned: u64,
    /// Distinct workload-level edges (client, server, port, protocol).
    pub edges: usize,
    /// Workloads seen.
    pub workloads: usize,
    /// Policies written.
    pub policies: usize,
    /// Edges the self-check found denied by the recommended policies (0 unless a bug).
    pub self_check_denied: usize,
    /// Why the self-check could not compile the recommended policies (`None` unless a bug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_check_error: Option<String>,
}

/// The recommended policies and what the reader should know about them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recommendation {
    /// The policies, sorted by namespace, `default-deny` first, then by name.
    pub policies: Vec<NetworkPolicy>,
    /// Human-readable notes (left-out flows, unselectable workloads, self-check findings,
    /// flows the policies in force denied).
    pub notes: Vec<String>,
    /// Counts.
    pub stats: RecommendStats,
    /// Flows the policies in force denied, per workload pair, port and outcome (learned or
    /// not), sorted.
    pub denied: Vec<DeniedInForce>,
    /// Per workload policy `(namespace, name)`: what other formats (`--format cilium`) need to
    /// write the same least privilege: DNS names behind its egress blocks, traffic to the
    /// pod's own node.
    pub hints: BTreeMap<(String, String), PolicyHints>,
    /// The namespaces left out ([`RecommendConfig::exclude_namespaces`]): other formats leave
    /// them out of cluster-wide defaults.
    pub excluded_namespaces: Vec<String>,
}

impl Recommendation {
    /// Whether the self-check ([`RecommendConfig::self_check`]) failed: the recommended
    /// policies deny an observed flow, or the engine cannot compile them. Either is a bug (or
    /// input whose attribution contradicts the inventory); such policies must not be applied.
    pub fn self_check_failed(&self) -> bool {
        self.stats.self_check_denied > 0 || self.stats.self_check_error.is_some()
    }
}

/// Builds NetworkPolicies from flows. Create once per inventory snapshot.
#[derive(Debug)]
pub struct Recommender<'i> {
    inventory: &'i Inventory,
    subnets: Subnets,
    attributor: Attributor,
    config: RecommendConfig,
    ports: HashMap<(String, String, String), Vec<ContainerPortInfo>>,
    cluster_ranges: Vec<IpNet>,
    endpoints: BTreeMap<(String, String), AddressEndpoints>,
    entry_points: HashMap<(String, String, String), Vec<build::EntryService>>,
    workloads_by_ns: BTreeMap<String, BTreeSet<String>>,
    /// The inventory's NetworkPolicies compiled (the policies in force), if it has any; the
    /// error when they do not compile.
    in_force: Option<Result<PolicyEngine, String>>,
}

/// The first words of the notes about flows the policies in force denied.
pub(crate) const DENIED_NOTE: &str = "denied by the policies in force";

/// At most this many denied connections are listed in the notes (all are in
/// [`Recommendation::denied`]) and on a `default-deny`.
const DENIED_LISTED: usize = 50;
const DENIED_ANNOTATED: usize = 20;

impl<'i> Recommender<'i> {
    /// Indexes the inventory (pods, Services, nodes) and the named subnets.
    pub fn new(inventory: &'i Inventory, subnets: &Subnets, config: RecommendConfig) -> Self {
        let mut ports: HashMap<(String, String, String), Vec<ContainerPortInfo>> = HashMap::new();
        for p in &inventory.pods {
            ports
                .entry((
                    p.namespace.to_string(),
                    p.workload.kind.clone(),
                    p.workload.name.clone(),
                ))
                .or_insert_with(|| p.container_ports.to_vec());
        }
        let mut cluster_ranges: Vec<IpNet> = inventory
            .nodes
            .iter()
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .chain(config.cluster_ranges.iter().copied())
            .collect();
        cluster_ranges.sort();
        cluster_ranges.dedup();
        let endpoints = inventory
            .services
            .iter()
            .filter_map(|svc| {
                let eps = inventory.address_endpoints(svc)?;
                Some(((svc.namespace.clone(), svc.name.clone()), eps))
            })
            .collect();
        let mut entry_points: HashMap<(String, String, String), Vec<build::EntryService>> =
            HashMap::new();
        for svc in inventory
            .services
            .iter()
            .filter(|s| s.service_type.is_entry_point())
        {
            for pod in inventory.service_backends(svc) {
                let key = (
                    pod.namespace.to_string(),
                    pod.workload.kind.clone(),
                    pod.workload.name.clone(),
                );
                let ports: BTreeSet<(Protocol, u16)> = svc
                    .ports
                    .iter()
                    .filter_map(|p| {
                        Some((p.protocol, svc.backend_port(p.port, p.protocol, Some(pod))?))
                    })
                    .collect();
                let list = entry_points.entry(key).or_default();
                let name = format!("{}/{}", svc.namespace, svc.name);
                match list.iter_mut().find(|e| e.service == name) {
                    Some(e) => e.ports.extend(ports),
                    None => list.push(build::EntryService {
                        service: name,
                        service_type: svc.service_type,
                        ports,
                    }),
                }
            }
        }
        let mut workloads_by_ns: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in inventory
            .pods
            .iter()
            .filter(|p| p.deleted.is_none() && !p.host_network)
        {
            workloads_by_ns
                .entry(p.namespace.to_string())
                .or_default()
                .insert(format!("{}/{}", p.workload.kind, p.workload.name));
        }
        let in_force = (!inventory.network_policies.is_empty()
            || !inventory.cluster_network_policies.is_empty())
        .then(|| {
            PolicyEngine::compile_with_cluster(
                &inventory.network_policies,
                &inventory.cluster_network_policies,
                inventory,
            )
            .map_err(|e| e.to_string())
        });
        Recommender {
            in_force,
            inventory,
            subnets: subnets.clone(),
            attributor: Attributor::new(inventory, subnets),
            config,
            ports,
            cluster_ranges,
            endpoints,
            entry_points,
            workloads_by_ns,
        }
    }

    /// The attributor used for input flows that lack attribution.
    pub fn attributor(&self) -> &Attributor {
        &self.attributor
    }

    /// Recommends policies for `flows` (attributed or not: missing attribution is filled from
    /// the inventory). Deterministic: the same flows in any order give the same policies.
    /// Flows the policies in force denied (drops, the inventory's policies) are judged as
    /// [`Self::recommend_recorded`] does, without recorded verdicts.
    pub fn recommend(&self, flows: &[FlowRecord]) -> Recommendation {
        self.recommend_with(flows, &[], &[], flows.len())
    }

    /// [`Self::recommend`] for records whose source also said what the policies in force did
    /// with them (an agent's or `evaluate`'s `verdict`, a Prometheus series' `verdict` label):
    /// that verdict replaces the inventory's policies in the judgement of denied flows.
    pub fn recommend_recorded(&self, input: &RecordedFlows) -> Recommendation {
        self.recommend_with(&input.flows, &input.verdicts, &[], input.flows.len())
    }

    /// [`Self::recommend_recorded`] for records folded into a [`FlowAggregate`] as they were
    /// read ([`Self::aggregate`]): the same recommendation as from the records themselves,
    /// in memory that depends on the distinct connections, not on the number of records.
    pub fn recommend_aggregate(&self, input: &FlowAggregate) -> Recommendation {
        self.recommend_with(&input.flows, &input.verdicts, &input.weights, input.records)
    }

    /// `weights[i]`: the records `flows[i]` stands for (empty: one each); `records`: how many
    /// records were read.
    fn recommend_with(
        &self,
        flows: &[FlowRecord],
        recorded: &[Option<RecordedVerdict>],
        weights: &[u64],
        records: usize,
    ) -> Recommendation {
        let flows = self.attributed(flows);
        let flows: &[FlowRecord] = &flows;
        let has_endpoints = |ns: &str, name: &str| {
            self.endpoints
                .contains_key(&(ns.to_owned(), name.to_owned()))
        };
        let mut notes = Vec::new();
        let mut judged = judge::judge(
            flows,
            recorded,
            weights,
            self.policies_in_force(&mut notes),
            self.config.include_denied,
        );
        let obs = observe::Observations::collect(
            flows,
            &judged.excluded,
            weights,
            &self.attributor,
            &has_endpoints,
        );
        let mut built = build::build(
            &obs,
            &build::Context {
                config: &self.config,
                subnets: &self.subnets,
                ports: &self.ports,
                cluster_ranges: &self.cluster_ranges,
                endpoints: &self.endpoints,
                entry_points: &self.entry_points,
                workloads_by_ns: &self.workloads_by_ns,
            },
        );
        notes.append(&mut built.notes);
        for (reason, n) in &obs.implicit {
            notes.push(format!("{n} flow(s) need no rule: {reason}"));
        }
        let mut stats = RecommendStats {
            flows: records,
            skipped: obs.skipped.values().sum(),
            implicit: obs.implicit.values().sum(),
            left_out_denied: 0,
            edges: obs.edges.len(),
            workloads: obs.workloads.len(),
            policies: built.policies.len(),
            self_check_denied: 0,
            self_check_error: None,
            denied: judged.denied.iter().map(|d| d.flows).sum(),
            denied_not_learned: judged
                .denied
                .iter()
                .filter(|d| !d.outcome.learned())
                .map(|d| d.flows)
                .sum(),
        };
        let engine = self.self_check(&built.policies, &obs, flows, &mut stats, &mut notes);
        let denied_reasons = left_out_notes(&obs, flows, engine.as_ref(), &mut stats, &mut notes);
        build::annotate_left_out(&mut built.policies, &obs.skipped, &denied_reasons);
        // Denied flows not learned: would the recommended policies allow them all the same?
        if let Some(engine) = &engine {
            for d in judged.denied.iter_mut().filter(|d| !d.outcome.learned()) {
                d.recommended_allows = Some(engine.evaluate_flow(&flows[d.example]).allowed);
            }
        }
        notes.extend(denied_notes(&judged.denied, &stats));
        annotate_denied(&mut built.policies, &judged.denied, flows);
        stats.policies = built.policies.len();
        notes.sort();
        notes.dedup();
        Recommendation {
            policies: built.policies,
            notes,
            stats,
            denied: judged.denied,
            hints: built.hints,
            excluded_namespaces: self.config.exclude_namespaces.clone(),
        }
    }

    /// `flows` with their ends attributed by the inventory, when some are not yet (a copy);
    /// else `flows` themselves.
    fn attributed<'f>(&self, flows: &'f [FlowRecord]) -> Cow<'f, [FlowRecord]> {
        if !flows.iter().any(needs_attribution) {
            return Cow::Borrowed(flows);
        }
        Cow::Owned(
            flows
                .iter()
                .cloned()
                .map(|mut f| {
                    self.attributor.attribute(&mut f);
                    f
                })
                .collect(),
        )
    }

    /// The inventory's policies, to judge the flows with; a warning note when they do not
    /// compile.
    fn policies_in_force(&self, notes: &mut Vec<String>) -> Option<&PolicyEngine> {
        match &self.in_force {
            Some(Ok(engine)) => Some(engine),
            Some(Err(err)) => {
                notes.push(format!(
                    "warning: the inventory's NetworkPolicies do not compile ({err}): flows are not checked against the policies in force"
                ));
                None
            }
            None => None,
        }
    }

    /// The self-check (unless disabled): compiles the recommended `policies` and evaluates one
    /// flow per edge, which stands for all of its flows (they differ only in pods of the same
    /// workload), noting every one they deny. Returns the compiled policies.
    fn self_check(
        &self,
        policies: &[NetworkPolicy],
        obs: &observe::Observations<'_>,
        flows: &[FlowRecord],
        stats: &mut RecommendStats,
        notes: &mut Vec<String>,
    ) -> Option<PolicyEngine> {
        if !self.config.self_check {
            return None;
        }
        let engine = match PolicyEngine::compile(policies, self.inventory) {
            Ok(engine) => engine,
            Err(err) => {
                notes.push(format!("self-check: {err}"));
                stats.self_check_error = Some(err.to_string());
                return None;
            }
        };
        let mut examples: Vec<usize> = obs.edges.values().map(|e| e.example).collect();
        examples.sort_unstable();
        for i in examples {
            let v = engine.evaluate_flow(&flows[i]);
            if !v.allowed {
                stats.self_check_denied += 1;
                notes.push(format!(
                    "self-check: the recommended policies deny an observed flow {} {}:{:?} -> {}:{:?} (ingress {:?}, egress {:?})",
                    flows[i].protocol,
                    flows[i].src.ip,
                    flows[i].src.port,
                    flows[i].dst.ip,
                    flows[i].dst.port,
                    v.ingress.result,
                    v.egress.result
                ));
            }
        }
        Some(engine)
    }
}

/// The notes about the left-out and implicit flows: each reason is stated with what the
/// recommended policies (`engine`, when self-checked) do to its flows (every distinct one is
/// evaluated). Returns per left-out reason the namespaces of the flows they deny.
fn left_out_notes<'o>(
    obs: &'o observe::Observations<'_>,
    flows: &[FlowRecord],
    engine: Option<&PolicyEngine>,
    stats: &mut RecommendStats,
    notes: &mut Vec<String>,
) -> BTreeMap<&'o str, BTreeSet<String>> {
    let mut denied_reasons: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut denied_count: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, reason) in &obs.unruled {
        let f = &flows[*i];
        let denied = engine.is_some_and(|e| !e.evaluate_flow(f).allowed);
        if denied {
            *denied_count.entry(reason.as_str()).or_default() += 1;
            for ep in [&f.src, &f.dst] {
                if let Some(ns) = &ep.namespace {
                    denied_reasons
                        .entry(reason.as_str())
                        .or_default()
                        .insert(ns.clone());
                }
            }
        }
    }
    for (reason, n) in &obs.skipped {
        match denied_count.get(reason.as_str()) {
            Some(d) => {
                stats.left_out_denied += n;
                notes.push(format!(
                    "{n} flow(s) left out and DENIED by the recommended policies ({d} distinct): {reason}"
                ));
            }
            None if engine.is_some() => notes.push(format!(
                "{n} flow(s) left out (allowed by the recommended policies): {reason}"
            )),
            None => notes.push(format!("{n} flow(s) left out: {reason}")),
        }
    }
    for reason in obs.implicit.keys() {
        if denied_count.contains_key(reason) {
            stats.self_check_denied += 1;
            notes.push(format!(
                "self-check: the recommended policies deny flows that are always allowed: {reason}"
            ));
        }
    }
    denied_reasons
}

/// The notes about flows the policies in force denied: a summary, then one line per
/// connection (the first [`DENIED_LISTED`]). Every line starts with [`DENIED_NOTE`], so the
/// sorted notes keep them together, the summary first.
fn denied_notes(denied: &[DeniedInForce], stats: &RecommendStats) -> Vec<String> {
    if denied.is_empty() {
        return Vec::new();
    }
    let mut notes = Vec::new();
    let learned = stats.denied - stats.denied_not_learned;
    notes.push(format!(
        "{DENIED_NOTE} — {} flow(s): {} not turned into allow rules (never got through; --include-denied learns them), {learned} learned; review the list",
        stats.denied, stats.denied_not_learned
    ));
    // Not learned first: those are what the reader must review.
    let mut ordered: Vec<&DeniedInForce> = denied.iter().collect();
    ordered.sort_by_key(|d| d.outcome.learned());
    for d in ordered.iter().take(DENIED_LISTED) {
        notes.push(format!("{DENIED_NOTE} — review: {}", d.note()));
    }
    if ordered.len() > DENIED_LISTED {
        notes.push(format!(
            "{DENIED_NOTE} — review: … and {} more connection(s) not listed",
            ordered.len() - DENIED_LISTED
        ));
    }
    notes
}

/// [`DENIED_IN_FORCE`] on the `default-deny` of each namespace with a pod end of a denied
/// connection that was not learned (what the output blocks, for review).
fn annotate_denied(policies: &mut [NetworkPolicy], denied: &[DeniedInForce], flows: &[FlowRecord]) {
    let mut per_ns: BTreeMap<&str, Vec<&DeniedInForce>> = BTreeMap::new();
    for d in denied.iter().filter(|d| !d.outcome.learned()) {
        let f = &flows[d.example];
        let mut namespaces: Vec<&str> = [&f.src.namespace, &f.dst.namespace]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        namespaces.dedup();
        for ns in namespaces {
            per_ns.entry(ns).or_default().push(d);
        }
    }
    for p in policies
        .iter_mut()
        .filter(|p| p.metadata.name.as_deref() == Some("default-deny"))
    {
        let Some(list) = per_ns.get(p.metadata.namespace.as_deref().unwrap_or_default()) else {
            continue;
        };
        let mut lines: Vec<String> = list
            .iter()
            .take(DENIED_ANNOTATED)
            .map(|d| format!("{} flow(s) {} ({})", d.flows, d.connection(), d.denied_by))
            .collect();
        if list.len() > DENIED_ANNOTATED {
            lines.push(format!("and {} more", list.len() - DENIED_ANNOTATED));
        }
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(DENIED_IN_FORCE.to_owned(), lines.join("; "));
    }
}

/// Whether `f` lacks attribution the recommender fills from the inventory (then every input
/// record is attributed).
pub(crate) fn needs_attribution(f: &FlowRecord) -> bool {
    !f.src.is_attributed() || !f.dst.is_attributed() || needs_labels(f)
}

fn needs_labels(f: &FlowRecord) -> bool {
    (f.src.namespace.is_some() && f.src.labels.is_none())
        || (f.dst.namespace.is_some() && f.dst.labels.is_none())
}
