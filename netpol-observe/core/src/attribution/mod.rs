//! Attribution (pure): IP → pod → workload, Service ClusterIP → backends, node IPs, named
//! subnets.
//!
//! Order for an address: a pod that held it when the flow was seen (not hostNetwork; those
//! share their node's address), a node address, a named subnet (most specific first), else
//! `private` (RFC 1918 / ULA) or `world`. A destination that is a Service ClusterIP gets
//! `service`, and the pod fields of the backend (the one named by the flow, else the
//! Service's first backend in [`Inventory::service_backends`] order).

mod subnets;

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use jiff::Timestamp;

pub use subnets::{NamedSubnet, Subnets, is_private};

use crate::{
    flow::{Endpoint, FlowRecord, ServiceRef},
    inventory::{Inventory, PodDiff, PodInfo, ServiceInfo},
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
    /// A node's address.
    Node(&'a str),
    /// Outside the cluster: a named subnet, `private` or `world`.
    Subnet(&'a str),
}

/// Attributes flow endpoints from an inventory and named subnets. Build it once per inventory
/// snapshot; [`Attributor::attribute`] is cheap.
#[derive(Debug, Clone)]
pub struct Attributor {
    pods: Pods,
    /// The pods (not hostNetwork) that held each address: a run (start, length) of `ip_pods`.
    by_ip: HashMap<IpAddr, (u32, u32)>,
    /// The runs of `by_ip`, pod indices ascending within a run.
    ip_pods: Box<[usize]>,
    /// Every pod (index), sorted by namespace then name (ascending index within one name):
    /// the pods of one name are a contiguous run ([`Attributor::named`]).
    by_name: Box<[u32]>,
    nodes: HashMap<IpAddr, String>,
    services: HashMap<IpAddr, (ServiceInfo, Option<usize>)>,
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
                ip_pods.extend_from_slice(&run);
                (ip, (start, u32::try_from(run.len()).unwrap_or(u32::MAX)))
            })
            .collect();
        let mut by_name: Vec<u32> = (0..u32::try_from(pods.len()).unwrap_or(u32::MAX)).collect();
        // Stable: pods of one name stay in ascending index order.
        by_name.sort_by(|a, b| {
            let (a, b) = (&pods[*a as usize], &pods[*b as usize]);
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        });
        let mut nodes = HashMap::default();
        for n in &inventory.nodes {
            for ip in &n.addresses {
                nodes.insert(*ip, n.name.clone());
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
            for ip in &svc.cluster_ips {
                services.insert(*ip, (svc.clone(), backend));
            }
        }
        Attributor {
            pods,
            by_ip,
            ip_pods: ip_pods.into_boxed_slice(),
            by_name: by_name.into_boxed_slice(),
            nodes,
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
        let (by_ip, ip_pods) =
            diff.update_ip_runs(&old_inv, &new, &self.by_ip, &self.ip_pods, |i| i, |i| i);
        let by_name: Box<[u32]> = (0..u32::try_from(new.pods.len()).unwrap_or(u32::MAX)).collect();
        let services = self
            .services
            .iter()
            .map(|(ip, (svc, backend))| {
                let kept = if diff.touches(&svc.namespace) {
                    None
                } else {
                    match backend {
                        None => Some(None),
                        Some(b) => diff.renumber(*b).map(Some),
                    }
                };
                let backend = match kept {
                    Some(b) => b,
                    None => PodDiff::first_backend(&new, svc).and_then(|b| {
                        named_run(&by_name, &new.pods, &b.namespace, &b.name)
                            .iter()
                            .rev()
                            .find(|i| new.pods[**i as usize].deleted.is_none())
                            .map(|i| *i as usize)
                    }),
                };
                (*ip, (svc.clone(), backend))
            })
            .collect();
        Attributor {
            pods: Pods::Shared(new),
            by_ip,
            ip_pods: ip_pods.into_boxed_slice(),
            by_name,
            nodes: self.nodes.clone(),
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
    fn at_ip(&self, ip: IpAddr) -> Option<&[usize]> {
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
        match self.nodes.get(&ip) {
            Some(node) => Resolved::Node(node),
            None => Resolved::Subnet(self.subnet_name(ip)),
        }
    }

    /// For a Service ClusterIP: the Service and the index of the backend pod a bare flow to it
    /// is attributed to (see [`Attributor::attribute`]).
    pub fn service(&self, ip: IpAddr) -> Option<(&ServiceInfo, Option<usize>)> {
        self.services.get(&ip).map(|(s, b)| (s, *b))
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

    fn pick(&self, candidates: &[usize], at: Option<Timestamp>) -> Option<&PodInfo> {
        self.pick_index(candidates, at)
            .and_then(|i| self.pods.get(i))
    }

    fn pick_index(&self, candidates: &[usize], at: Option<Timestamp>) -> Option<usize> {
        let pod = |i: &&usize| self.pods.get(**i);
        candidates
            .iter()
            .rev()
            .find(|i| pod(i).is_some_and(|p| p.alive_at(at)))
            .or_else(|| candidates.iter().max_by_key(|i| pod(i).map(|p| p.created)))
            .copied()
    }

    /// The Service with this ClusterIP.
    pub fn service_for_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.services.get(&ip).map(|(s, _)| s)
    }

    /// Fills the attribution of `record.src` and `record.dst` (fields already present are
    /// kept; missing pod details are completed from the inventory).
    pub fn attribute(&self, record: &mut FlowRecord) {
        let at = record.first_seen.or(record.last_seen);
        self.fill(&mut record.src, at);
        if let Some((svc, backend)) = self.services.get(&record.dst.ip) {
            record.dst.service.get_or_insert_with(|| ServiceRef {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
            });
            if record.dst.pod.is_none()
                && record.dst.node.is_none()
                && record.dst.subnet.is_none()
                && let Some(b) = backend
            {
                let pod = &self.pods[*b];
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
        } else if let Some(node) = self.nodes.get(&ep.ip) {
            ep.node = Some(node.clone());
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
        let (Some(ns), Some(name)) = (ep.namespace.as_deref(), ep.pod.as_deref()) else {
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
        let Some((svc, _)) = self.services.get(&record.dst.ip) else {
            return Some(port);
        };
        let at = record.first_seen.or(record.last_seen);
        let pod = record
            .dst
            .namespace
            .as_deref()
            .zip(record.dst.pod.as_deref())
            .and_then(|(ns, n)| self.pod_by_name(ns, n, at));
        Some(svc.backend_port(port, record.protocol, pod).unwrap_or(port))
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
