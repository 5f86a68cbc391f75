//! Attribution shared between flows: what one end of a flow belongs to (a pod with its
//! workload and labels, a node, a subnet), built once per pod, node or subnet of a
//! [`super::Model`] and held by every stored flow of that peer through an `Arc`. The full
//! [`Endpoint`] is rebuilt only when a flow is served.

use std::{net::IpAddr, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use crate::{
    flow::{Endpoint, ServiceRef, WorkloadRef},
    inventory::{Labels, Name, PodInfo},
    metrics::PeerLabels,
    policy::PeerId,
};

/// The attribution of one end of a flow (an [`Endpoint`] without its address, port and
/// Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Namespace of the pod (for a pod, the inventory's shared name).
    pub namespace: Option<Name>,
    /// Name of the pod (for a pod, the inventory's).
    pub pod: Option<Name>,
    /// Owning workload of the pod (for a pod, the inventory's interned one).
    pub workload: Option<Arc<WorkloadRef>>,
    /// The workload's selector labels (for a pod, the inventory's interned set, shared by
    /// every pod of the workload).
    pub labels: Option<Labels>,
    /// Node name (a node address or a hostNetwork pod).
    pub node: Option<String>,
    /// Named subnet, `private` or `world`.
    pub subnet: Option<String>,
    /// The node running the pod (`spec.nodeName`), for a pod of the model's inventory: which
    /// agent counts the flow ([`super::model::Attributed::counted_on`]). `None` for any other
    /// peer, and for a peer taken from a record's own attribution.
    pub pod_node: Option<Name>,
    /// The workload-level metric labels of this peer, shared by every peer with the same
    /// labels (every pod of a workload): what the agent's metric series are cached by.
    pub metric: Arc<PeerLabels>,
    /// The peer the policy engines evaluate, for a peer of the model's attribution
    /// ([`Peers`]); `None` for a peer taken from a record's own attribution.
    pub policy: Option<PeerId>,
}

impl Peer {
    /// The attribution of an endpoint (its address, port and Service aside); `metric` is
    /// interned through `workloads`.
    pub(crate) fn from_endpoint(ep: &Endpoint, workloads: &mut Workloads) -> Peer {
        Peer {
            namespace: ep.namespace.as_deref().map(Name::from),
            pod: ep.pod.as_deref().map(Name::from),
            workload: ep.workload.clone().map(Arc::new),
            labels: ep.labels.as_ref().map(Labels::from),
            node: ep.node.clone(),
            subnet: ep.subnet.clone(),
            pod_node: None,
            metric: workloads.intern(PeerLabels::from_endpoint(ep, false)),
            policy: None,
        }
    }

    /// The endpoint of this peer at `ip`, `port`, addressed through `service`.
    pub fn endpoint(
        &self,
        ip: IpAddr,
        port: Option<u16>,
        service: Option<&ServiceRef>,
    ) -> Endpoint {
        Endpoint {
            ip,
            port,
            service: service.cloned(),
            namespace: self.namespace.as_deref().map(str::to_owned),
            pod: self.pod.as_deref().map(str::to_owned),
            workload: self.workload.as_deref().cloned(),
            labels: self.labels.as_ref().map(Labels::to_map),
            node: self.node.clone(),
            subnet: self.subnet.clone(),
            dns_names: Vec::new(),
        }
    }

    /// The metric labels of this peer, with the pod name when `pod_level`.
    /// Without `pod_level` this is the shared workload-level copy.
    pub(crate) fn metric_labels(&self, pod_level: bool) -> Arc<PeerLabels> {
        if !pod_level {
            return Arc::clone(&self.metric);
        }
        Arc::new(PeerLabels {
            pod: Some(self.pod.as_deref().unwrap_or_default().to_owned()),
            ..(*self.metric).clone()
        })
    }
}

/// Interned workload-level metric labels.
#[derive(Debug, Default)]
pub struct Workloads(HashMap<PeerLabels, Arc<PeerLabels>>);

impl Workloads {
    /// The shared copy of `labels`.
    pub fn intern(&mut self, labels: PeerLabels) -> Arc<PeerLabels> {
        Arc::clone(
            self.0
                .entry(labels)
                .or_insert_with_key(|l| Arc::new(l.clone())),
        )
    }
}

/// The peers of one model, built on first use: per pod (by inventory index), per node and
/// per subnet name.
#[derive(Debug)]
pub struct Peers {
    pods: Vec<Option<Arc<Peer>>>,
    nodes: HashMap<String, Arc<Peer>>,
    subnets: HashMap<String, Arc<Peer>>,
    /// An address nothing is known about (no inventory, or a Service without a backend).
    bare: Arc<Peer>,
    workloads: Workloads,
}

impl Peers {
    /// An empty table for `pods` pods.
    pub fn new(pods: usize) -> Self {
        let mut workloads = Workloads::default();
        let bare = Arc::new(Peer {
            policy: Some(PeerId::External),
            ..Peer::from_endpoint(
                &Endpoint::bare(IpAddr::from([0, 0, 0, 0]), None),
                &mut workloads,
            )
        });
        Peers {
            pods: vec![None; pods],
            nodes: HashMap::default(),
            subnets: HashMap::default(),
            bare,
            workloads,
        }
    }

    /// The peer of pod `index` (`pod` is its inventory entry).
    pub fn pod(&mut self, index: usize, pod: &PodInfo) -> Arc<Peer> {
        if let Some(Some(p)) = self.pods.get(index) {
            return Arc::clone(p);
        }
        // Workload-level labels, as `PeerLabels::from_endpoint` makes them for a pod.
        let metric = PeerLabels {
            namespace: pod.namespace.to_string(),
            kind: pod.workload.kind.clone(),
            workload: pod.workload.name.clone(),
            pod: None,
        };
        // The inventory's shared names, workload and selector labels: no copy per pod.
        let peer = Arc::new(Peer {
            namespace: Some(pod.namespace.clone()),
            pod: Some(pod.name.clone()),
            workload: Some(Arc::clone(&pod.workload)),
            labels: Some(pod.selector_labels.clone()),
            node: None,
            subnet: None,
            pod_node: pod.node_name.clone(),
            metric: self.workloads.intern(metric),
            policy: Some(PeerId::Pod(index)),
        });
        if let Some(slot) = self.pods.get_mut(index) {
            *slot = Some(Arc::clone(&peer));
        }
        peer
    }

    /// The peer of node `name`, at `index` in the inventory's node list.
    pub fn node(&mut self, name: &str, index: usize) -> Arc<Peer> {
        named(
            &mut self.nodes,
            &mut self.workloads,
            name,
            PeerId::Node(index),
            |ep| {
                ep.node = Some(name.to_owned());
            },
        )
    }

    /// The peer of subnet `name`.
    pub fn subnet(&mut self, name: &str) -> Arc<Peer> {
        named(
            &mut self.subnets,
            &mut self.workloads,
            name,
            PeerId::External,
            |ep| {
                ep.subnet = Some(name.to_owned());
            },
        )
    }

    /// The peer of an address nothing is known about.
    pub fn bare(&self) -> Arc<Peer> {
        Arc::clone(&self.bare)
    }

    /// A peer for an endpoint attributed some other way (not shared with other flows; its
    /// metric labels are).
    pub(crate) fn unshared(&mut self, ep: &Endpoint) -> Arc<Peer> {
        Arc::new(Peer::from_endpoint(ep, &mut self.workloads))
    }
}

/// The peer called `name` in `peers` (the engines' `policy`), built on first use from an
/// endpoint `set` names.
fn named(
    peers: &mut HashMap<String, Arc<Peer>>,
    workloads: &mut Workloads,
    name: &str,
    policy: PeerId,
    set: impl FnOnce(&mut Endpoint),
) -> Arc<Peer> {
    if let Some(p) = peers.get(name) {
        return Arc::clone(p);
    }
    let mut ep = Endpoint::bare(IpAddr::from([0, 0, 0, 0]), None);
    set(&mut ep);
    let peer = Arc::new(Peer {
        policy: Some(policy),
        ..Peer::from_endpoint(&ep, workloads)
    });
    peers.insert(name.to_owned(), Arc::clone(&peer));
    peer
}
