//! The cluster model (Namespaces, Pods, Services, EndpointSlices, NetworkPolicies, Nodes and
//! owners), built from the live API ([`live`]) or from files of ordinary Kubernetes objects
//! ([`Inventory::from_path`]). Both sources go through [`Inventory::from_objects`], so the code
//! after loading is the same.
//!
//! Pods are trimmed to what attribution and policy need ([`PodInfo`]) so that 100k pods fit
//! comfortably; NetworkPolicies are kept whole.

pub mod build;
mod diff;
mod error;
mod files;
mod intern;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use jiff::Timestamp;
pub use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use build::KubeObject;
pub use diff::PodDiff;
pub use error::InventoryError;
pub use files::{LoadedInventory, Validation};
pub use intern::{Interner, Labels, Name};

use crate::flow::{Protocol, WorkloadRef};

/// The API resources the live inventory watches, as `(apiGroup, resource)`. The ClusterRole in
/// `deploy/` grants get/list/watch on exactly these (a test compares the two).
pub const WATCHED_RESOURCES: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("", "nodes"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.k8s.io", "networkpolicies"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    // Optional: a cluster without the CRD has none (see `live`).
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
];

/// One model of the cluster: plain data, no client, cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Pods (trimmed), sorted by namespace then name (then creation time for reused names).
    pub pods: Vec<PodInfo>,
    /// Services, sorted by namespace then name.
    pub services: Vec<ServiceInfo>,
    /// EndpointSlices, sorted by namespace then name.
    pub endpoint_slices: Vec<EndpointSliceInfo>,
    /// Nodes, sorted by name.
    pub nodes: Vec<NodeInfo>,
    /// NetworkPolicies as the API serves them, sorted by namespace then name.
    pub network_policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`), sorted by name.
    pub cluster_network_policies: Vec<crate::rules::cluster::ClusterNetworkPolicy>,
}

/// A Namespace: its name and labels (what `namespaceSelector` matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name of the namespace.
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name` (added when missing, as the API does).
    pub labels: Labels,
}

/// A container port of a pod (what named ports in NetworkPolicies and Services resolve to).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerPortInfo {
    /// The port name (`http`), if any.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// The protocol (TCP when omitted).
    pub protocol: Protocol,
}

/// A pod, trimmed to what attribution and policy need. The parts that pods share (namespace,
/// node, workload, label sets, container-port lists) are shared values from the build's
/// [`Interner`], so a pod costs a few hundred bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace of the pod (shared).
    pub namespace: Name,
    /// Name of the pod.
    pub name: Name,
    /// UID (distinguishes two pods that had the same name over time).
    pub uid: Name,
    /// All labels of the pod (what `podSelector` matches; the set is shared).
    pub labels: Labels,
    /// Pod IPs (`status.podIPs`, or `status.podIP`); the node's IPs for hostNetwork pods.
    pub ips: Vec<IpAddr>,
    /// Whether the pod uses the node's network namespace (outside NetworkPolicy scope).
    pub host_network: bool,
    /// Node the pod is scheduled on (shared).
    pub node_name: Option<Name>,
    /// The owning workload after following ReplicaSet→Deployment and Job→CronJob (shared).
    pub workload: Arc<WorkloadRef>,
    /// The workload's stable selector labels (never `pod-template-hash` and the like; shared).
    pub selector_labels: Labels,
    /// Container ports of every container (init containers included, as Kubernetes does for
    /// named-port resolution); the list is shared.
    pub container_ports: Arc<[ContainerPortInfo]>,
    /// When the pod was created (`metadata.creationTimestamp`).
    pub created: Option<Timestamp>,
    /// When the pod stopped holding its IP: `metadata.deletionTimestamp`, or for a finished pod
    /// (`Succeeded`/`Failed`) the last container finish time.
    pub deleted: Option<Timestamp>,
}

impl PodInfo {
    /// Whether this pod held its IPs at time `at` (always true when `at` is unknown).
    pub(crate) fn alive_at(&self, at: Option<Timestamp>) -> bool {
        let Some(at) = at else {
            return self.deleted.is_none();
        };
        self.created.is_none_or(|c| c <= at) && self.deleted.is_none_or(|d| at < d)
    }

    /// Resolves a named port of this pod (`name`, `protocol`) to its number.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.container_ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A Service's `targetPort`: a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per backend pod.
    Name(String),
}

/// A port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The port name, if any.
    pub name: Option<String>,
    /// The Service port (what clients connect to on the ClusterIP).
    pub port: u16,
    /// The protocol (TCP when omitted).
    pub protocol: Protocol,
    /// The backend port (defaults to `port`).
    pub target_port: TargetPort,
}

/// The `spec.type` of a Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceType {
    /// Reachable on its ClusterIP inside the cluster only (the default).
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through a cloud load balancer (and a node port).
    LoadBalancer,
    /// A DNS alias (no proxying).
    ExternalName,
}

impl ServiceType {
    /// Whether clients outside the cluster reach the Service's backends through it
    /// (`NodePort`, `LoadBalancer`): a public entry point.
    pub(crate) fn is_entry_point(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }

    /// The name as in `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

/// The endpoints of a Service that are not pods (a Service without selector whose
/// EndpointSlices list addresses outside the pod network, e.g. `default/kubernetes`: the API
/// server). See [`Inventory::address_endpoints`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressEndpoints {
    /// The endpoint addresses (ready ones first, then sorted), without duplicates.
    pub addresses: Vec<IpAddr>,
    /// Per Service port `(port, protocol)`: the port the endpoints receive on (the
    /// EndpointSlice port of the same name, else a numeric `targetPort`, else the port).
    pub ports: Vec<(u16, Protocol, u16)>,
}

impl AddressEndpoints {
    /// The endpoint port for a connection to Service port `port`/`protocol`.
    pub fn port_for(&self, port: u16, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|(p, proto, _)| *p == port && *proto == protocol)
            .map(|(_, _, n)| *n)
    }
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// ClusterIPs (empty for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    /// The pod selector (`None` for Services without one, backed by EndpointSlices only).
    pub selector: Option<Labels>,
    /// Ports.
    pub ports: Vec<ServicePortInfo>,
    /// `spec.type` (ClusterIP when omitted).
    pub service_type: ServiceType,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Addresses of the endpoint.
    pub addresses: Vec<IpAddr>,
    /// The pod behind it (`targetRef` of kind Pod), as its name in the slice's namespace.
    pub pod: Option<String>,
    /// Whether the endpoint is ready (missing means ready).
    pub ready: bool,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPortInfo {
    /// Port name (matches the Service port name).
    pub name: Option<String>,
    /// The backend port number.
    pub port: Option<u16>,
    /// The protocol (TCP when omitted).
    pub protocol: Protocol,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    /// Namespace of the slice.
    pub namespace: String,
    /// Name of the slice.
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Option<String>,
    /// Endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Ports.
    pub ports: Vec<EndpointPortInfo>,
}

/// A Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Addresses (`status.addresses` of type InternalIP/ExternalIP).
    pub addresses: Vec<IpAddr>,
    /// Pod CIDRs (`spec.podCIDRs`, or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// Labels of the node.
    pub labels: Labels,
}

impl Inventory {
    /// The pods of namespace `ns`.
    pub fn pods_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.iter().filter(move |p| p.namespace == *ns)
    }

    /// The labels of namespace `ns`, if known.
    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// The pod `ns/name` (the newest if the name was reused).
    pub fn pod(&self, ns: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .filter(|p| p.namespace == ns && p.name == name)
            .max_by_key(|p| p.created)
    }

    /// The Service `ns/name`.
    pub fn service(&self, ns: &str, name: &str) -> Option<&ServiceInfo> {
        self.services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
    }

    /// The Node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The NetworkPolicies of namespace `ns`.
    pub fn policies_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.network_policies
            .iter()
            .filter(move |p| p.metadata.namespace.as_deref() == Some(ns))
    }

    /// Builds an inventory from Kubernetes objects: resolves pod owners through the ReplicaSets,
    /// Jobs and controllers given, trims pods, validates NetworkPolicies. Errors name the object
    /// and the field at fault.
    pub fn from_objects(
        objects: impl IntoIterator<Item = KubeObject>,
    ) -> Result<Inventory, InventoryError> {
        build::from_objects(objects)
    }

    /// Reads a file or a directory of YAML/JSON files holding Kubernetes objects (`List`s,
    /// multi-document YAML, or single objects, exactly as `kubectl get … -o yaml` prints them).
    /// Errors name the file, the document and object, and the field.
    pub fn from_path(path: &std::path::Path) -> Result<Inventory, InventoryError> {
        files::from_path(path)
    }

    /// Reads Kubernetes objects from YAML text (`origin` names it in errors).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let objects = files::parse_yaml(text, std::path::Path::new(origin))?;
        build::from_objects(objects)
    }
}

impl ServiceInfo {
    /// The backend port for a connection to `port`/`protocol` on this Service's ClusterIP,
    /// landing on `pod`: the numeric `targetPort`, or the named one resolved against the pod's
    /// container ports. `None` when the Service has no such port or the name does not resolve.
    pub fn backend_port(
        &self,
        port: u16,
        protocol: Protocol,
        pod: Option<&PodInfo>,
    ) -> Option<u16> {
        let sp = self
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)?;
        match &sp.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => pod?.named_port(name, protocol),
        }
    }
}

impl Inventory {
    /// The Service with this ClusterIP, if any.
    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.services.iter().find(|s| s.cluster_ips.contains(&ip))
    }

    /// The backend pods of a Service, in a stable order: the live pods (not deleted, with an
    /// IP) its selector matches, sorted by name; for a Service without selector, the pods its
    /// EndpointSlices name (ready ones first).
    pub fn service_backends<'a>(&'a self, svc: &'a ServiceInfo) -> Vec<&'a PodInfo> {
        match &svc.selector {
            Some(sel) => self
                .pods_in(&svc.namespace)
                .filter(|p| {
                    p.deleted.is_none()
                        && !p.ips.is_empty()
                        && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect(),
            None => {
                let mut named: Vec<(bool, &str)> = self
                    .endpoint_slices
                    .iter()
                    .filter(|s| {
                        s.namespace == svc.namespace && s.service.as_deref() == Some(&svc.name)
                    })
                    .flat_map(|s| s.endpoints.iter())
                    .filter_map(|e| e.pod.as_deref().map(|p| (!e.ready, p)))
                    .collect();
                named.sort();
                named.dedup();
                named
                    .into_iter()
                    .filter_map(|(_, name)| self.pod(&svc.namespace, name))
                    .collect()
            }
        }
    }
}

impl Inventory {
    /// The endpoints of `svc` that are not pods: for a Service without selector, the
    /// addresses of its EndpointSlices' endpoints that name no pod (the API server behind
    /// `default/kubernetes`, a database outside the cluster…) with the port each Service port
    /// reaches. `None` when the Service has a selector or no such endpoint.
    pub fn address_endpoints(&self, svc: &ServiceInfo) -> Option<AddressEndpoints> {
        if svc.selector.is_some() {
            return None;
        }
        let slices: Vec<&EndpointSliceInfo> = self
            .endpoint_slices
            .iter()
            .filter(|s| s.namespace == svc.namespace && s.service.as_deref() == Some(&svc.name))
            .collect();
        let mut addrs: Vec<(bool, IpAddr)> = slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.pod.is_none())
            .flat_map(|e| e.addresses.iter().map(move |a| (!e.ready, *a)))
            .collect();
        addrs.sort();
        let mut addresses: Vec<IpAddr> = Vec::new();
        for (_, a) in addrs {
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        if addresses.is_empty() {
            return None;
        }
        let ports = svc
            .ports
            .iter()
            .map(|sp| {
                let named = slices
                    .iter()
                    .flat_map(|s| s.ports.iter())
                    .find(|ep| {
                        ep.protocol == sp.protocol
                            && ep.name.as_deref().unwrap_or_default()
                                == sp.name.as_deref().unwrap_or_default()
                    })
                    .and_then(|ep| ep.port);
                let n = named.unwrap_or(match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(_) => sp.port,
                });
                (sp.port, sp.protocol, n)
            })
            .collect();
        Some(AddressEndpoints { addresses, ports })
    }
}
