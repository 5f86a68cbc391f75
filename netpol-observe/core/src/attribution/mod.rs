//! Attribution (pure): IP → pod → workload, Service ClusterIP → backends, node IPs, named
//! subnets.
//!
//! Order for an address: a pod that held it when the flow was seen (not hostNetwork; those
//! share their node's address), a node address, a named subnet (most specific first), else
//! `private` (RFC 1918 / ULA) or `world`. A destination that is a Service ClusterIP gets
//! `service`, and the pod fields of the backend (the one named by the flow, else the
//! Service's first backend in [`Inventory::service_backends`] order).
//!
//! Attribution also makes what the policy engine evaluates ([`Attributor::connection`]): both
//! ends as peers (pod and node indices in the inventory's order, the engines' too) and, for a
//! flow to a ClusterIP, the backend pod at its address and the port it receives on.

mod connection;
mod subnets;

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use jiff::Timestamp;

pub use connection::{Connection, End, PeerId};
pub use subnets::{NamedSubnet, Subnets, is_private};

use crate::{
    flow::{Endpoint, FlowRecord, Protocol, ServiceRef},
    inventory::{AddressEndpoints, Inventory, PodDiff, PodInfo, ServiceInfo},
};

/// The attribution domain's errors (subnets files).
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// The subnets file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The subnets file nests too deeply to be parsed.
    #[error("{path}: {too_deep}")]
    TooDeep {
        /// The file.
        path: PathBuf,
        /// Where (in the message, not a source: it is the whole cause).
        too_deep: crate::yaml::TooDeep,
    },
    /// The subnets file is not a YAML mapping of names to CIDR lists.
    #[error("{path}: expected a mapping `name: [CIDRs]`")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        #[source]
        source: crate::yaml::Error,
    },
    /// A subnet name breaks the naming rule (label-value syntax: it becomes a label value and
    /// an annotation).
    #[error("{path}: subnet {subnet:?}")]
    Name {
        /// The file.
        path: PathBuf,
        /// The subnet name.
        subnet: String,
        /// What is wrong with it.
        #[source]
        source: crate::names::NameError,
    },
    /// A subnet name is given twice (YAML would keep only the last).
    #[error(
        "{path}: subnet {subnet:?} is defined twice ({first} and {second}): list all its CIDRs under one name"
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The subnet name.
        subnet: String,
        /// Where it is first defined (`line 3`, or `entry 2` when the line is not found).
        first: String,
        /// Where it is defined again.
        second: String,
    },
    /// An entry is not a CIDR.
    #[error("{path}: subnet {subnet:?}, entry {index}: {value:?} is not a CIDR (e.g. 10.0.2.0/24)")]
    Cidr {
        /// The file.
        path: PathBuf,
        /// The subnet name.
        subnet: String,
        /// 0-based entry in its list.
        index: usize,
        /// The bad value.
        value: String,
    },
}

/// The pods an [`Attributor`] indexes: its own copy, or the shared inventory snapshot.
#[derive(Debug, Clone)]
enum Pods {
    Owned(Vec<PodInfo>),
    Shared(Arc<Inventory>),
}

impl std::ops::Deref for Pods {
    type Target = [PodInfo];
    fn deref(&self) -> &[PodInfo] {
        match self {
            Pods::Owned(p) => p,
            Pods::Shared(inv) => &inv.pods,
        }
    }
}

/// What a bare address is attributed to ([`Attributor::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// The pod at this index of [`Attributor::pod`] (the inventory's pod order).
    Pod(usize),
    /// A node's address: its name and index in the inventory's node list.
    Node {
        /// The node's name.
        name: &'a str,
        /// Its index in the inventory's node list ([`PeerId::Node`]).
        index: usize,
    },
    /// Outside the cluster: a named subnet, `private` or `world`.
    Subnet(&'a str),
}

impl Resolved<'_> {
    /// The peer the policy engine evaluates for this attribution.
    pub fn peer(self) -> PeerId {
        match self {
            Resolved::Pod(i) => PeerId::Pod(i),
            Resolved::Node { index, .. } => PeerId::Node(index),
            Resolved::Subnet(_) => PeerId::External,
        }
    }
}

/// A ClusterIP Service: the backend a flow not attributed to a pod goes to.
#[derive(Debug, Clone)]
struct ServiceEntry {
    info: ServiceInfo,
    /// The first backend pod (index): the newest live pod of the first backend's name.
    backend: Option<usize>,
    /// Without a backend pod: the first address endpoint (a Service without selector, e.g.
    /// the API server) and its ports ([`Inventory::address_endpoints`]).
    endpoints: Option<(IpAddr, AddressEndpoints)>,
}

impl ServiceEntry {
    fn new(inventory: &Inventory, info: &ServiceInfo, backend: Option<usize>) -> Self {
        ServiceEntry {
            info: info.clone(),
            backend,
            endpoints: backend
                .is_none()
                .then(|| inventory.address_endpoints(info))
                .flatten()
                .and_then(|e| Some((*e.addresses.first()?, e))),
        }
    }
}

/// Attributes flow endpoints from an inventory and named subnets. Build it once per inventory
/// snapshot; [`Attributor::attribute`] is cheap.
#[derive(Debug, Clone)]
pub struct Attributor {
    pods: Pods,
    /// The pods (not hostNetwork) that held each address: a run (start, length) of `ip_pods`.
    by_ip: HashMap<IpAddr, (u32, u32)>,
    /// The runs of `by_ip`, pod indices ascending within a run.
    ip_pods: Box<[u32]>,
    /// Every pod (index), sorted by namespace then name (ascending index within one name):
    /// the pods of one name are a contiguous run ([`Attributor::named`]).
    by_name: Box<[u32]>,
    /// Node names, in the inventory's order.
    node_names: Arc<[String]>,
    /// The node (index) of each node address.
    node_by_ip: Arc<HashMap<IpAddr, u32>>,
    /// The node (index) of each node name.
    node_ids: Arc<HashMap<String, u32>>,
    services: HashMap<IpAddr, ServiceEntry>,
    subnets: Subnets,
}

impl Attributor {
    /// Indexes `inventory` and `subnets`.
    pub fn new(inventory: &Inventory, subnets: &Subnets) -> Self {
        Self::index(Pods::Owned(inventory.pods.clone()), inventory, subnets)
    }

    /// Indexes a shared inventory snapshot without copying its pods (what the agent does:
    /// the snapshot is held anyway).
    pub fn shared(inventory: Arc<Inventory>, subnets: &Subnets) -> Self {
        Self::index(Pods::Shared(Arc::clone(&inventory)), &inventory, subnets)
    }

    fn index(pods: Pods, inventory: &Inventory, subnets: &Subnets) -> Self {
        let mut by_ip_runs: HashMap<IpAddr, Vec<usize>> = HashMap::default();
        for (i, p) in pods.iter().enumerate() {
            if !p.host_network {
                for ip in &p.ips {
                    by_ip_runs.entry(*ip).or_default().push(i);
                }
            }
        }
        let mut ip_pods = Vec::with_capacity(pods.len());
        let by_ip = by_ip_runs
            .into_iter()
            .map(|(ip, run)| {
                let start = u32::try_from(ip_pods.len()).unwrap_or(u32::MAX);
                ip_pods.extend(run.iter().map(|i| u32::try_from(*i).unwrap_or(u32::MAX)));
                (ip, (start, u32::try_from(run.len()).unwrap_or(u32::MAX)))
            })
            .collect();
        let mut by_name: Vec<u32> = (0..u32::try_from(pods.len()).unwrap_or(u32::MAX)).collect();
        // Stable: pods of one name stay in ascending index order.
        by_name.sort_by(|a, b| {
            let (a, b) = (&pods[*a as usize], &pods[*b as usize]);
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        });
        let mut node_by_ip = HashMap::default();
        let mut node_ids = HashMap::default();
        for (i, n) in inventory.nodes.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            node_ids.insert(n.name.clone(), i);
            for ip in &n.addresses {
                node_by_ip.insert(*ip, i);
            }
        }
        let mut services = HashMap::default();
        for svc in &inventory.services {
            let backend = inventory.service_backends(svc).first().and_then(|b| {
                named_run(&by_name, &pods, &b.namespace, &b.name)
                    .iter()
                    .rev()
                    .find(|i| pods[**i as usize].deleted.is_none())
                    .map(|i| *i as usize)
            });
            let entry = ServiceEntry::new(inventory, svc, backend);
            for ip in &svc.cluster_ips {
                services.insert(*ip, entry.clone());
            }
        }
        Attributor {
            pods,
            by_ip,
            ip_pods: ip_pods.into_boxed_slice(),
            by_name: by_name.into_boxed_slice(),
            node_names: inventory.nodes.iter().map(|n| n.name.clone()).collect(),
            node_by_ip: Arc::new(node_by_ip),
            node_ids: Arc::new(node_ids),
            services,
            subnets: subnets.clone(),
        }
    }

    /// This attributor for the snapshot `new` when only its pods differ from the one it
    /// indexes (`diff`, from that snapshot to `new`): the address runs of unchanged pods are
    /// renumbered, not rebuilt, and only the Services of namespaces with changed pods look
    /// for their backend again. Attributes as [`Attributor::shared`] on `new` does.
    pub fn update_pods(&self, new: Arc<Inventory>, diff: &PodDiff) -> Self {
        let old: &[PodInfo] = &self.pods;
        let old_inv = match &self.pods {
            Pods::Shared(inv) => Arc::clone(inv),
            Pods::Owned(pods) => Arc::new(Inventory {
                pods: pods.clone(),
                ..Inventory::default()
            }),
        };
        debug_assert_eq!(old.len(), old_inv.pods.len());
        let (by_ip, ip_pods) = diff.update_ip_runs(
            &old_inv,
            &new,
            &self.by_ip,
            &self.ip_pods,
            |i| i as usize,
            |i| u32::try_from(i).unwrap_or(u32::MAX),
        );
        let by_name: Box<[u32]> = (0..u32::try_from(new.pods.len()).unwrap_or(u32::MAX)).collect();
        let services = self
            .services
            .iter()
            .map(|(ip, e)| {
                let kept = if diff.touches(&e.info.namespace) {
                    None
                } else {
                    match e.backend {
                        None => Some(None),
                        Some(b) => diff.renumber(b).map(Some),
                    }
                };
                let entry = match kept {
                    Some(backend) => ServiceEntry {
                        info: e.info.clone(),
                        backend,
                        endpoints: e.endpoints.clone(),
                    },
                    None => {
                        let backend = PodDiff::first_backend(&new, &e.info).and_then(|b| {
                            named_run(&by_name, &new.pods, &b.namespace, &b.name)
                                .iter()
                                .rev()
                                .find(|i| new.pods[**i as usize].deleted.is_none())
                                .map(|i| *i as usize)
                        });
                        ServiceEntry::new(&new, &e.info, backend)
                    }
                };
                (*ip, entry)
            })
            .collect();
        Attributor {
            pods: Pods::Shared(new),
            by_ip,
            ip_pods: ip_pods.into_boxed_slice(),
            by_name,
            node_names: Arc::clone(&self.node_names),
            node_by_ip: Arc::clone(&self.node_by_ip),
            node_ids: Arc::clone(&self.node_ids),
            services,
            subnets: self.subnets.clone(),
        }
    }

    /// The pod that held `ip` at time `at` (hostNetwork pods excluded): the one alive then,
    /// else the newest.
    pub(crate) fn pod_for_ip(&self, ip: IpAddr, at: Option<Timestamp>) -> Option<&PodInfo> {
        self.pick(self.at_ip(ip)?, at)
    }

    /// The pods (indices, ascending) that held `ip`.
    #[inline]
    fn at_ip(&self, ip: IpAddr) -> Option<&[u32]> {
        let (start, len) = *self.by_ip.get(&ip)?;
        self.ip_pods
            .get(start as usize..start as usize + len as usize)
    }

    /// The pod at index `i` of the inventory's pod list ([`Resolved::Pod`]).
    pub fn pod(&self, i: usize) -> Option<&PodInfo> {
        self.pods.get(i)
    }

    /// Number of pods indexed.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// What a bare address seen at `at` belongs to: the same order as
    /// [`Attributor::attribute`] (a pod, a node, a subnet).
    pub fn resolve(&self, ip: IpAddr, at: Option<Timestamp>) -> Resolved<'_> {
        if let Some(i) = self.at_ip(ip).and_then(|c| self.pick_index(c, at)) {
            return Resolved::Pod(i);
        }
        match self.node_at(ip) {
            Some((name, index)) => Resolved::Node { name, index },
            None => Resolved::Subnet(self.subnet_name(ip)),
        }
    }

    /// The node (name, index) with address `ip`.
    fn node_at(&self, ip: IpAddr) -> Option<(&str, usize)> {
        let i = *self.node_by_ip.get(&ip)? as usize;
        Some((self.node_names.get(i)?.as_str(), i))
    }

    /// The index of node `name` in the inventory's node list.
    pub(crate) fn node_index(&self, name: &str) -> Option<usize> {
        self.node_ids.get(name).map(|i| *i as usize)
    }

    /// The pods (indices, ascending) named `namespace/name`.
    pub(crate) fn named(&self, namespace: &str, name: &str) -> &[u32] {
        named_run(&self.by_name, &self.pods, namespace, name)
    }

    /// For a Service ClusterIP: the Service and the index of the backend pod a bare flow to it
    /// is attributed to (see [`Attributor::attribute`]).
    pub fn service(&self, ip: IpAddr) -> Option<(&ServiceInfo, Option<usize>)> {
        self.services.get(&ip).map(|e| (&e.info, e.backend))
    }

    /// What the policy engine evaluates for `flow` ([`crate::policy::PolicyEngine::evaluate`]):
    /// both ends as peers, from the record's own attribution when it has some. An end is a
    /// pod that held its address when the flow was seen (the one the record names, if it
    /// names one), else the pod the record names, else a node by address, else the node the
    /// record names, else external. A flow to a ClusterIP goes to the backend pod (the one the
    /// record names, else the Service's first backend) at its address, on the target port it
    /// receives on ([`Attributor::service_destination`]).
    #[inline]
    pub fn connection<'f>(&self, flow: &'f FlowRecord) -> Connection<'f> {
        let at = SeenAt::Record(flow);
        // Both addresses are looked up before either end is resolved: the two lookups are
        // independent, so their cache misses (the flow's lines, the address table's buckets)
        // overlap instead of following one another.
        let src_held = self.at_ip(flow.src.ip);
        let service = self.services.get(&flow.dst.ip);
        let dst_held = match service {
            Some(_) => None,
            None => self.at_ip(flow.dst.ip),
        };
        let src = End {
            peer: self.endpoint_peer(&flow.src, src_held, at),
            ip: flow.src.ip,
        };
        let (dst, port) = match service {
            Some(svc) => {
                let backend = match flow.dst.pod_name() {
                    Some((ns, n)) => {
                        self.pick_among(self.named(ns, n).iter().map(|i| *i as usize), at)
                    }
                    None => svc.backend,
                };
                self.service_end(svc, backend, flow.dst.ip, flow.dst.port, flow.protocol, at)
            }
            None => (
                End {
                    peer: self.endpoint_peer(&flow.dst, dst_held, at),
                    ip: flow.dst.ip,
                },
                flow.dst.port,
            ),
        };
        Connection {
            src,
            dst,
            port,
            protocol: flow.protocol,
            dns_names: &flow.dst.dns_names,
        }
    }

    /// The destination of a connection to Service ClusterIP `ip` on `port` seen at `at`, and
    /// the port it receives on: the backend pod `backend` (the one the node's DNAT chose, or
    /// `None`: the Service's first backend) at its address (of `ip`'s family), on the Service's
    /// target port for that pod (a named target port resolved against its container ports);
    /// without a backend pod, the Service's first address endpoint on its endpoint port, else
    /// the ClusterIP itself. `None` when `ip` is no ClusterIP.
    pub fn service_destination(
        &self,
        ip: IpAddr,
        backend: Option<usize>,
        port: Option<u16>,
        protocol: Protocol,
        at: Option<Timestamp>,
    ) -> Option<(End, Option<u16>)> {
        let svc = self.services.get(&ip)?;
        let at = SeenAt::Time(at);
        Some(self.service_end(svc, backend.or(svc.backend), ip, port, protocol, at))
    }

    /// [`Attributor::service_destination`] for the backend `pod` of `svc`.
    fn service_end(
        &self,
        svc: &ServiceEntry,
        pod: Option<usize>,
        ip: IpAddr,
        port: Option<u16>,
        protocol: Protocol,
        at: SeenAt<'_>,
    ) -> (End, Option<u16>) {
        let Some((i, pod)) = pod.and_then(|i| Some((i, self.pods.get(i)?))) else {
            // No backend pod: an address endpoint (judged on its address and port, as the
            // node's DNAT sends the connection there), else the ClusterIP itself.
            if let Some((addr, eps)) = &svc.endpoints {
                let port = port.map(|p| eps.port_for(p, protocol).unwrap_or(p));
                let peer = self.resolve(*addr, at.time()).peer();
                return (End { peer, ip: *addr }, port);
            }
            let end = End {
                peer: PeerId::External,
                ip,
            };
            return (end, port);
        };
        let port = port.map(|p| svc.info.backend_port(p, protocol, Some(pod)).unwrap_or(p));
        let addr = pod
            .ips
            .iter()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
            .or_else(|| pod.ips.first())
            .copied()
            .unwrap_or(ip);
        (
            End {
                peer: PeerId::Pod(i),
                ip: addr,
            },
            port,
        )
    }

    /// One end of a record as the policy engine tells it ([`Attributor::connection`]), given
    /// the pods that held its address (`held`: [`Attributor::at_ip`] of `ep.ip`).
    #[inline]
    fn endpoint_peer(&self, ep: &Endpoint, held: Option<&[u32]>, at: SeenAt<'_>) -> PeerId {
        let names = ep.pod_name();
        let held = held.and_then(|c| match names {
            None => self.pick_among(c.iter().map(|i| *i as usize), at),
            Some((ns, n)) => self.pick_among(
                c.iter().map(|i| *i as usize).filter(|i| {
                    self.pods
                        .get(*i)
                        .is_some_and(|p| p.namespace.as_str() == ns && p.name.as_str() == n)
                }),
                at,
            ),
        });
        if let Some(i) = held {
            return PeerId::Pod(i);
        }
        if let Some((ns, n)) = names
            && let Some(i) = self.pick_among(self.named(ns, n).iter().map(|i| *i as usize), at)
        {
            return PeerId::Pod(i);
        }
        if let Some(n) = self.node_by_ip.get(&ep.ip) {
            return PeerId::Node(*n as usize);
        }
        if let Some(n) = ep.node.as_deref().and_then(|n| self.node_index(n)) {
            return PeerId::Node(n);
        }
        PeerId::External
    }

    /// Among pods (indices, ascending) that held an address or a name: the last one alive at
    /// `at`, else the newest.
    #[inline]
    fn pick_among<I>(&self, candidates: I, at: SeenAt<'_>) -> Option<usize>
    where
        I: DoubleEndedIterator<Item = usize> + Clone,
    {
        // One candidate (the common case): it is the answer whatever the time, without
        // touching the pod's entry.
        let mut few = candidates.clone();
        if let (Some(only), None) = (few.next(), few.next()) {
            return Some(only);
        }
        let at = at.time();
        let pod = |i: &usize| self.pods.get(*i);
        candidates
            .clone()
            .rev()
            .find(|i| pod(i).is_some_and(|p| p.alive_at(at)))
            .or_else(|| candidates.max_by_key(|i| pod(i).map(|p| p.created)))
    }

    /// The pod `namespace/name` alive at `at` (else the newest of that name).
    pub(crate) fn pod_by_name(
        &self,
        namespace: &str,
        name: &str,
        at: Option<Timestamp>,
    ) -> Option<&PodInfo> {
        let run = named_run(&self.by_name, &self.pods, namespace, name);
        let pod = |i: &&u32| self.pods.get(**i as usize);
        run.iter()
            .rev()
            .find(|i| pod(i).is_some_and(|p| p.alive_at(at)))
            .or_else(|| run.iter().max_by_key(|i| pod(i).map(|p| p.created)))
            .and_then(|i| self.pods.get(*i as usize))
    }

    fn pick(&self, candidates: &[u32], at: Option<Timestamp>) -> Option<&PodInfo> {
        self.pick_index(candidates, at)
            .and_then(|i| self.pods.get(i))
    }

    fn pick_index(&self, candidates: &[u32], at: Option<Timestamp>) -> Option<usize> {
        self.pick_among(candidates.iter().map(|i| *i as usize), SeenAt::Time(at))
    }

    /// The Service with this ClusterIP.
    pub fn service_for_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.services.get(&ip).map(|e| &e.info)
    }

    /// Fills the attribution of `record.src` and `record.dst` (fields already present are
    /// kept; missing pod details are completed from the inventory).
    pub fn attribute(&self, record: &mut FlowRecord) {
        let at = record.seen_at();
        self.fill(&mut record.src, at);
        if let Some(svc) = self.services.get(&record.dst.ip) {
            record.dst.service.get_or_insert_with(|| ServiceRef {
                namespace: svc.info.namespace.clone(),
                name: svc.info.name.clone(),
            });
            if record.dst.pod.is_none()
                && record.dst.node.is_none()
                && record.dst.subnet.is_none()
                && let Some(b) = svc.backend
            {
                let pod = &self.pods[b];
                set_pod(&mut record.dst, pod);
            }
            self.complete_pod(&mut record.dst, at);
            return;
        }
        self.fill(&mut record.dst, at);
    }

    fn fill(&self, ep: &mut Endpoint, at: Option<Timestamp>) {
        if ep.pod.is_some() {
            self.complete_pod(ep, at);
            return;
        }
        if ep.node.is_some() || ep.subnet.is_some() {
            return;
        }
        if let Some(pod) = self.pod_for_ip(ep.ip, at) {
            set_pod(ep, pod);
        } else if let Some((node, _)) = self.node_at(ep.ip) {
            ep.node = Some(node.to_owned());
        } else {
            ep.subnet = Some(self.subnet_name(ep.ip).to_owned());
        }
    }

    /// The subnet name for an address outside the cluster: a named subnet, `private` or `world`.
    pub(crate) fn subnet_name(&self, ip: IpAddr) -> &str {
        match self.subnets.lookup(ip) {
            Some(name) => name,
            None if is_private(ip) => "private",
            None => "world",
        }
    }

    fn complete_pod(&self, ep: &mut Endpoint, at: Option<Timestamp>) {
        let Some((ns, name)) = ep.pod_name() else {
            return;
        };
        if let Some(pod) = self.pod_by_name(ns, name, at) {
            if ep.workload.is_none() {
                ep.workload = Some((*pod.workload).clone());
            }
            if ep.labels.is_none() {
                ep.labels = Some(pod.selector_labels.to_map());
            }
        }
    }

    /// The port the destination pod receives a flow on: for a flow to a Service ClusterIP, the
    /// Service's target port resolved for the backend pod (named target ports per pod); else
    /// the flow's destination port. Call after [`Attributor::attribute`].
    pub fn backend_port(&self, record: &FlowRecord) -> Option<u16> {
        let port = record.dst.port?;
        let Some(svc) = self.services.get(&record.dst.ip).map(|e| &e.info) else {
            return Some(port);
        };
        let at = record.seen_at();
        let pod = record
            .dst
            .pod_name()
            .and_then(|(ns, n)| self.pod_by_name(ns, n, at));
        Some(svc.backend_port(port, record.protocol, pod).unwrap_or(port))
    }
}

/// When a flow was seen, for choosing among the pods that held an address or a name. From a
/// record it is read only when there is a choice: most addresses had one pod, and the record's
/// `last_seen` is on a cache line the rest of attribution does not read.
#[derive(Clone, Copy)]
enum SeenAt<'a> {
    /// A time already read (or none).
    Time(Option<Timestamp>),
    /// The record's first sighting, else its last.
    Record(&'a FlowRecord),
}

impl SeenAt<'_> {
    fn time(self) -> Option<Timestamp> {
        match self {
            SeenAt::Time(at) => at,
            SeenAt::Record(flow) => flow.seen_at(),
        }
    }
}

/// The run of `by_name` (pod indices sorted by namespace then name) naming pod `ns/name`.
fn named_run<'a>(by_name: &'a [u32], pods: &[PodInfo], ns: &str, name: &str) -> &'a [u32] {
    let key = |i: &u32| {
        let p = &pods[*i as usize];
        (p.namespace.as_str(), p.name.as_str())
    };
    let lo = by_name.partition_point(|i| key(i) < (ns, name));
    let hi = lo + by_name[lo..].partition_point(|i| key(i) == (ns, name));
    &by_name[lo..hi]
}

fn set_pod(ep: &mut Endpoint, pod: &PodInfo) {
    ep.namespace = Some(pod.namespace.to_string());
    ep.pod = Some(pod.name.to_string());
    ep.workload = Some((*pod.workload).clone());
    ep.labels = Some(pod.selector_labels.to_map());
}
