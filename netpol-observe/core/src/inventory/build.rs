//! From Kubernetes objects to the trimmed [`Inventory`]: owner resolution, stable selector
//! labels, parsing of addresses and ports, validation of NetworkPolicies.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    str::FromStr,
    sync::Arc,
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{ContainerPort, Namespace, Node, Pod, PodSpec, Service, ServiceSpec},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};

use super::{
    ContainerPortInfo, EndpointInfo, EndpointPortInfo, EndpointSliceInfo, Interner, Inventory,
    InventoryError, Labels, NamespaceInfo, NodeInfo, PodInfo, ServiceInfo, ServicePortInfo,
    ServiceType, TargetPort, Validation,
};
use crate::{
    flow::{Protocol, WorkloadRef},
    names::{self, NameKind},
};

/// One Kubernetes object of a kind the inventory knows.
///
/// Deployments, StatefulSets, DaemonSets and CronJobs are optional: when given (from files),
/// their selectors are used as the workload's stable labels; the live source does not watch
/// them and derives the labels from the pods.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum KubeObject {
    /// `v1/Namespace`.
    Namespace(Namespace),
    /// `v1/Pod`.
    Pod(Pod),
    /// `v1/Service`.
    Service(Service),
    /// `v1/Node`.
    Node(Node),
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice(EndpointSlice),
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy(NetworkPolicy),
    /// `policy.networking.k8s.io/v1alpha2/ClusterNetworkPolicy`.
    ClusterNetworkPolicy(crate::rules::cluster::ClusterNetworkPolicy),
    /// `apps/v1/ReplicaSet`.
    ReplicaSet(ReplicaSet),
    /// `apps/v1/Deployment`.
    Deployment(Deployment),
    /// `apps/v1/StatefulSet`.
    StatefulSet(StatefulSet),
    /// `apps/v1/DaemonSet`.
    DaemonSet(DaemonSet),
    /// `batch/v1/Job`.
    Job(Job),
    /// `batch/v1/CronJob`.
    CronJob(CronJob),
}

/// Labels that vary between pods of one workload or between revisions: never part of a
/// workload's stable selector labels.
pub(crate) const VOLATILE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
];

fn object_name(kind: &str, meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    match meta.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn invalid(object: String, field: impl Into<String>, problem: impl Into<String>) -> InventoryError {
    InventoryError::Invalid {
        origin: String::new(),
        object,
        field: field.into(),
        problem: problem.into(),
    }
}

impl KubeObject {
    /// Decodes an object from a YAML/JSON value by its `apiVersion` and `kind`; an unknown kind
    /// or a field of the wrong type is an error naming the object and the field path. Fields
    /// the Kubernetes types do not know are ignored: [`KubeObject::from_value_checked`]
    /// reports them.
    pub fn from_value(value: crate::yaml::Value) -> Result<KubeObject, InventoryError> {
        Self::from_value_checked(value, Validation::Ignore).map(|(o, _)| o)
    }

    /// [`KubeObject::from_value`], with the fields the Kubernetes types do not know (typos such
    /// as `spec.podSelectr`, or fields of a newer Kubernetes) handled as `validation` says:
    /// [`Validation::Strict`] makes them an [`InventoryError::UnknownFields`] naming every
    /// one, [`Validation::Warn`] returns them (field paths such as `spec.ingress[0].fromm`),
    /// [`Validation::Ignore`] drops them.
    pub(crate) fn from_value_checked(
        value: crate::yaml::Value,
        validation: Validation,
    ) -> Result<(KubeObject, Vec<String>), InventoryError> {
        let (api_version, kind, object) = identify(&value);
        let mut unknown = Vec::new();
        let obj = decode_kind(&api_version, &kind, value, &object, &mut unknown)?;
        match validation {
            Validation::Strict if !unknown.is_empty() => Err(InventoryError::UnknownFields {
                origin: String::new(),
                object,
                fields: unknown,
            }),
            Validation::Strict | Validation::Ignore => Ok((obj, Vec::new())),
            Validation::Warn => Ok((obj, unknown)),
        }
    }
}

/// An object's `apiVersion`, `kind` (empty when missing) and name as errors spell it
/// (`Kind ns/name`, `Kind name`, or `object name` without kind).
fn identify(value: &crate::yaml::Value) -> (String, String, String) {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let meta = value.get("metadata");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str());
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>");
    let object = match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None if kind.is_empty() => format!("object {name}"),
        None => format!("{kind} {name}"),
    };
    (api_version, kind, object)
}

/// Decodes `value` as the Kubernetes type of `api_version`/`kind`; a missing `apiVersion` or
/// `kind`, or a kind not known, is an error naming `object`. The fields the type does not know
/// go to `unknown`.
fn decode_kind(
    api_version: &str,
    kind: &str,
    value: crate::yaml::Value,
    object: &str,
    u: &mut Vec<String>,
) -> Result<KubeObject, InventoryError> {
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => KubeObject::Namespace(decode(value, object, u)?),
        ("v1", "Pod") => KubeObject::Pod(decode(value, object, u)?),
        ("v1", "Service") => KubeObject::Service(decode(value, object, u)?),
        ("v1", "Node") => KubeObject::Node(decode(value, object, u)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            KubeObject::EndpointSlice(decode(value, object, u)?)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            KubeObject::NetworkPolicy(decode(value, object, u)?)
        }
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
            KubeObject::ClusterNetworkPolicy(decode(value, object, u)?)
        }
        ("apps/v1", "ReplicaSet") => KubeObject::ReplicaSet(decode(value, object, u)?),
        ("apps/v1", "Deployment") => KubeObject::Deployment(decode(value, object, u)?),
        ("apps/v1", "StatefulSet") => KubeObject::StatefulSet(decode(value, object, u)?),
        ("apps/v1", "DaemonSet") => KubeObject::DaemonSet(decode(value, object, u)?),
        ("batch/v1", "Job") => KubeObject::Job(decode(value, object, u)?),
        ("batch/v1", "CronJob") => KubeObject::CronJob(decode(value, object, u)?),
        ("", _) | (_, "") => {
            return Err(invalid(
                object.to_owned(),
                if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                },
                "missing: every object needs apiVersion and kind",
            ));
        }
        (av, k) => {
            return Err(invalid(
                object.to_owned(),
                "kind",
                format!(
                    "unknown kind {k:?} (apiVersion {av:?}); expected Namespace, Pod, Service, \
                     Node, EndpointSlice, NetworkPolicy, ClusterNetworkPolicy, ReplicaSet, Deployment, StatefulSet, \
                     DaemonSet, Job or CronJob"
                ),
            ));
        }
    })
}

/// Decodes `value` as `T`: a field of the wrong type is an error naming `object` and the field
/// path; the fields `T` does not know go to `unknown`.
fn decode<T: serde::de::DeserializeOwned>(
    value: crate::yaml::Value,
    object: &str,
    unknown: &mut Vec<String>,
) -> Result<T, InventoryError> {
    let mut track = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    let value: crate::yaml::ValueDeserializer<serde::de::value::Error> =
        serde::de::IntoDeserializer::into_deserializer(value);
    let de = serde_ignored::Deserializer::new(value, &mut track);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        invalid(
            object.to_owned(),
            if path == "." { "(object)".into() } else { path },
            e.into_inner().to_string(),
        )
    })
}

/// A field path as the errors spell it: `spec.ingress[0].from[1].podSelectr`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

impl KubeObject {
    /// The object's kind and metadata.
    pub(crate) fn kind_and_meta(&self) -> (&'static str, &ObjectMeta) {
        match self {
            KubeObject::Namespace(o) => ("Namespace", &o.metadata),
            KubeObject::Pod(o) => ("Pod", &o.metadata),
            KubeObject::Service(o) => ("Service", &o.metadata),
            KubeObject::Node(o) => ("Node", &o.metadata),
            KubeObject::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            KubeObject::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata),
            KubeObject::ClusterNetworkPolicy(o) => ("ClusterNetworkPolicy", &o.metadata),
            KubeObject::ReplicaSet(o) => ("ReplicaSet", &o.metadata),
            KubeObject::Deployment(o) => ("Deployment", &o.metadata),
            KubeObject::StatefulSet(o) => ("StatefulSet", &o.metadata),
            KubeObject::DaemonSet(o) => ("DaemonSet", &o.metadata),
            KubeObject::Job(o) => ("Job", &o.metadata),
            KubeObject::CronJob(o) => ("CronJob", &o.metadata),
        }
    }

    /// Whether objects of this kind live in a namespace (all but Namespace and Node).
    pub(crate) fn is_namespaced(&self) -> bool {
        !matches!(
            self,
            KubeObject::Namespace(_) | KubeObject::Node(_) | KubeObject::ClusterNetworkPolicy(_)
        )
    }

    /// Checks every name of the object that reaches the inventory (and from there flows,
    /// labels and recommended policies) against the Kubernetes rules ([`crate::names`]):
    /// `metadata.name`, `metadata.namespace`, labels, owner references, selectors, node
    /// names and port names. Objects from the API server follow them; objects from files are
    /// checked at load. The error names the object and the field.
    pub fn check_names(&self) -> Result<(), InventoryError> {
        let (kind, meta) = self.kind_and_meta();
        let object = object_name(kind, meta);
        let name_kind = match self {
            KubeObject::Namespace(_) => NameKind::Namespace,
            KubeObject::Service(_) => NameKind::Service,
            _ => NameKind::Object,
        };
        match meta.name.as_deref() {
            None | Some("") => return Err(invalid(object, "metadata.name", "missing")),
            Some(name) => check_name(&object, name_kind, name, || "metadata.name".into())?,
        }
        if let Some(ns) = &meta.namespace {
            check_name(&object, NameKind::Namespace, ns, || {
                "metadata.namespace".into()
            })?;
        }
        check_label_map(meta.labels.as_ref(), &object, "metadata.labels")?;
        for (i, r) in meta.owner_references.iter().flatten().enumerate() {
            check_name(&object, NameKind::Kind, &r.kind, || {
                format!("metadata.ownerReferences[{i}].kind")
            })?;
            check_name(&object, NameKind::Object, &r.name, || {
                format!("metadata.ownerReferences[{i}].name")
            })?;
        }
        let selector = |sel: Option<&LabelSelector>, field| check_selector(sel, &object, field);
        match self {
            KubeObject::Pod(pod) => pod.spec.as_ref().map_or(Ok(()), |s| pod_names(s, &object)),
            KubeObject::Service(svc) => svc
                .spec
                .as_ref()
                .map_or(Ok(()), |s| service_names(s, &object)),
            KubeObject::EndpointSlice(es) => endpoint_slice_names(es, &object),
            KubeObject::ReplicaSet(o) => selector(Some(&o.spec.selector), "spec.selector"),
            KubeObject::Deployment(o) => selector(Some(&o.spec.selector), "spec.selector"),
            KubeObject::StatefulSet(o) => selector(Some(&o.spec.selector), "spec.selector"),
            KubeObject::DaemonSet(o) => selector(Some(&o.spec.selector), "spec.selector"),
            KubeObject::Job(o) => selector(
                o.spec.as_ref().and_then(|s| s.selector.as_ref()),
                "spec.selector",
            ),
            KubeObject::CronJob(o) => selector(
                o.spec
                    .job_template
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref()),
                "spec.jobTemplate.spec.selector",
            ),
            // Selectors and the rest are checked by `policy::validate`.
            KubeObject::NetworkPolicy(_)
            | KubeObject::ClusterNetworkPolicy(_)
            | KubeObject::Namespace(_)
            | KubeObject::Node(_) => Ok(()),
        }
    }
}

/// Checks `name` as a `kind` name; the error names `object` and the field (formatted only
/// then).
fn check_name(
    object: &str,
    kind: NameKind,
    name: &str,
    field: impl FnOnce() -> String,
) -> Result<(), InventoryError> {
    names::check(kind, name).map_err(|e| invalid(object.to_owned(), field(), e.to_string()))
}

/// A pod's node name and container port names.
fn pod_names(spec: &PodSpec, object: &str) -> Result<(), InventoryError> {
    if let Some(node) = &spec.node_name {
        check_name(object, NameKind::Object, node, || "spec.nodeName".into())?;
    }
    for (field, p) in pod_ports(spec) {
        if let Some(n) = &p.name {
            check_name(object, NameKind::PortName, n, || format!("{field}.name"))?;
        }
    }
    Ok(())
}

/// Every container port of a pod (init containers too) with its field path
/// (`spec.containers[0].ports[1]`).
fn pod_ports(spec: &PodSpec) -> impl Iterator<Item = (String, &ContainerPort)> {
    let groups = [
        ("spec.containers", Some(&spec.containers)),
        ("spec.initContainers", spec.init_containers.as_ref()),
    ];
    groups.into_iter().flat_map(|(prefix, containers)| {
        containers
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(move |(ci, c)| {
                c.ports
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(move |(pi, p)| (format!("{prefix}[{ci}].ports[{pi}]"), p))
            })
    })
}

/// A Service's selector, port names and named target ports.
fn service_names(spec: &ServiceSpec, object: &str) -> Result<(), InventoryError> {
    check_label_map(spec.selector.as_ref(), object, "spec.selector")?;
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            check_name(object, NameKind::Service, n, || {
                format!("spec.ports[{i}].name")
            })?;
        }
        if let Some(IntOrString::String(t)) = &p.target_port
            && t.parse::<i32>().is_err()
            && !t.is_empty()
        {
            check_name(object, NameKind::PortName, t, || {
                format!("spec.ports[{i}].targetPort")
            })?;
        }
    }
    Ok(())
}

/// An EndpointSlice's target pods, node names and port names.
fn endpoint_slice_names(es: &EndpointSlice, object: &str) -> Result<(), InventoryError> {
    for (i, e) in es.endpoints.iter().flatten().enumerate() {
        if let Some(n) = e.target_ref.as_ref().and_then(|r| r.name.as_ref()) {
            check_name(object, NameKind::Object, n, || {
                format!("endpoints[{i}].targetRef.name")
            })?;
        }
        if let Some(n) = &e.node_name {
            check_name(object, NameKind::Object, n, || {
                format!("endpoints[{i}].nodeName")
            })?;
        }
    }
    for (i, p) in es.ports.iter().flatten().enumerate() {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            check_name(object, NameKind::Service, n, || format!("ports[{i}].name"))?;
        }
    }
    Ok(())
}

fn check_label_map(
    labels: Option<&BTreeMap<String, String>>,
    object: &str,
    field: &str,
) -> Result<(), InventoryError> {
    names::check_labels(labels.into_iter().flatten()).map_err(|(key, e)| {
        invalid(
            object.to_owned(),
            format!("{field}[{key:?}]"),
            e.to_string(),
        )
    })
}

/// The `matchLabels` of a workload selector (they become the workload's stable labels, and
/// so the selectors of recommended policies).
fn check_selector(
    selector: Option<&LabelSelector>,
    object: &str,
    field: &str,
) -> Result<(), InventoryError> {
    check_label_map(
        selector.and_then(|s| s.match_labels.as_ref()),
        object,
        &format!("{field}.matchLabels"),
    )
}

/// Builds an inventory from objects without a known origin.
pub(super) fn from_objects(
    objects: impl IntoIterator<Item = KubeObject>,
) -> Result<Inventory, InventoryError> {
    from_sourced(objects.into_iter().map(|o| (String::new(), o)))
}

/// Owner-resolution tables: controllers by `(namespace, name)`.
#[derive(Debug, Default)]
pub struct Owners {
    /// ReplicaSets: their controller and selector.
    pub replica_sets: HashMap<(String, String), (Option<OwnerReference>, Option<LabelSelector>)>,
    /// Jobs: their controller.
    pub jobs: HashMap<(String, String), Option<OwnerReference>>,
    /// Top-level controllers' selectors by `(namespace, kind, name)`.
    pub selectors: HashMap<(String, String, String), Option<LabelSelector>>,
}

pub fn key(meta: &ObjectMeta) -> (String, String) {
    (namespace_of(meta), meta.name.clone().unwrap_or_default())
}

pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = meta.owner_references.as_ref()?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// Builds an inventory from objects, each with its origin for error messages.
pub(super) fn from_sourced(
    objects: impl IntoIterator<Item = (String, KubeObject)>,
) -> Result<Inventory, InventoryError> {
    let mut owners = Owners::default();
    let mut rest = Vec::new();
    for (origin, obj) in objects {
        match obj {
            KubeObject::ReplicaSet(rs) => {
                let sel = Some(rs.spec.selector.clone());
                owners.replica_sets.insert(
                    key(&rs.metadata),
                    (controller_of(&rs.metadata).cloned(), sel),
                );
            }
            KubeObject::Job(job) => {
                owners
                    .jobs
                    .insert(key(&job.metadata), controller_of(&job.metadata).cloned());
            }
            KubeObject::Deployment(d) => {
                let (ns, name) = key(&d.metadata);
                let sel = Some(d.spec.selector);
                owners
                    .selectors
                    .insert((ns, "Deployment".into(), name), sel);
            }
            KubeObject::StatefulSet(d) => {
                let (ns, name) = key(&d.metadata);
                let sel = Some(d.spec.selector);
                owners
                    .selectors
                    .insert((ns, "StatefulSet".into(), name), sel);
            }
            KubeObject::DaemonSet(d) => {
                let (ns, name) = key(&d.metadata);
                let sel = Some(d.spec.selector);
                owners.selectors.insert((ns, "DaemonSet".into(), name), sel);
            }
            KubeObject::CronJob(c) => {
                let (ns, name) = key(&c.metadata);
                let sel = c.spec.job_template.spec.and_then(|s| s.selector);
                owners.selectors.insert((ns, "CronJob".into(), name), sel);
            }
            other => rest.push((origin, other)),
        }
    }
    let mut inv = Inventory::default();
    let mut interner = Interner::default();
    for (origin, obj) in rest {
        let res = match obj {
            KubeObject::Namespace(ns) => {
                let info = namespace_info(&ns, &mut interner);
                inv.namespaces.insert(info.name.clone(), info);
                Ok(())
            }
            KubeObject::Pod(pod) => {
                pod_info(&pod, &owners, &mut interner).map(|p| inv.pods.push(p))
            }
            KubeObject::Service(svc) => {
                service_info(&svc, &mut interner).map(|s| inv.services.push(s))
            }
            KubeObject::Node(node) => node_info(&node, &mut interner).map(|n| inv.nodes.push(n)),
            KubeObject::EndpointSlice(es) => {
                endpoint_slice_info(&es).map(|e| inv.endpoint_slices.push(e))
            }
            KubeObject::NetworkPolicy(np) => crate::rules::validate(&np)
                .map(|()| inv.network_policies.push(np))
                .map_err(|source| InventoryError::Policy {
                    origin: String::new(),
                    source,
                }),
            KubeObject::ClusterNetworkPolicy(cnp) => crate::rules::cluster::validate(&cnp)
                .map(|()| inv.cluster_network_policies.push(cnp))
                .map_err(|source| InventoryError::Policy {
                    origin: String::new(),
                    source,
                }),
            KubeObject::ReplicaSet(_)
            | KubeObject::Job(_)
            | KubeObject::Deployment(_)
            | KubeObject::StatefulSet(_)
            | KubeObject::DaemonSet(_)
            | KubeObject::CronJob(_) => Ok(()),
        };
        res.map_err(|e| e.with_origin(&origin))?;
    }
    finish(&mut inv);
    Ok(inv)
}

/// Sorts everything and adds the namespaces that objects refer to but that were not given
/// (with only their `kubernetes.io/metadata.name` label, as the API server sets it).
pub fn finish(inv: &mut Inventory) {
    let referenced: Vec<String> = inv
        .pods
        .iter()
        .map(|p| p.namespace.to_string())
        .chain(inv.services.iter().map(|s| s.namespace.clone()))
        .chain(
            inv.network_policies
                .iter()
                .filter_map(|p| p.metadata.namespace.clone()),
        )
        .collect();
    for ns in referenced {
        inv.namespaces
            .entry(ns.clone())
            .or_insert_with(|| NamespaceInfo {
                labels: Labels::from([(METADATA_NAME, ns.as_str())]),
                name: ns,
            });
    }
    inv.pods.sort_by(|a, b| {
        (&a.namespace, &a.name, a.created).cmp(&(&b.namespace, &b.name, b.created))
    });
    inv.services
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    inv.endpoint_slices
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    inv.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    inv.network_policies.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    inv.cluster_network_policies
        .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
}

/// The label the API server puts on every namespace.
pub(crate) const METADATA_NAME: &str = "kubernetes.io/metadata.name";

pub fn namespace_info(ns: &Namespace, interner: &mut Interner) -> NamespaceInfo {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels
        .entry(METADATA_NAME.to_owned())
        .or_insert_with(|| name.clone());
    NamespaceInfo {
        name,
        labels: interner.labels_of(&labels),
    }
}

pub(super) fn parse_protocol(
    value: Option<&str>,
    object: &str,
    field: &str,
) -> Result<Protocol, InventoryError> {
    match value {
        None => Ok(Protocol::Tcp),
        Some(s) => match Protocol::from_str(s) {
            Ok(p @ (Protocol::Tcp | Protocol::Udp | Protocol::Sctp)) => Ok(p),
            _ => Err(invalid(
                object.to_owned(),
                field,
                format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"),
            )),
        },
    }
}

fn parse_port(value: i32, object: &str, field: &str) -> Result<u16, InventoryError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            invalid(
                object.to_owned(),
                field,
                format!("port {value} is not in 1-65535"),
            )
        })
}

fn parse_ip(value: &str, object: &str, field: &str) -> Result<IpAddr, InventoryError> {
    value.parse().map_err(|_| {
        invalid(
            object.to_owned(),
            field,
            format!("{value:?} is not an IP address"),
        )
    })
}

fn stable_labels(
    labels: &BTreeMap<String, String>,
    selector: Option<&LabelSelector>,
    interner: &mut Interner,
) -> Labels {
    let from_selector: Vec<(&str, &str)> = selector
        .and_then(|s| s.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .filter(|(k, v)| {
                    !VOLATILE_LABELS.contains(&k.as_str()) && labels.get(*k) == Some(*v)
                })
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if !from_selector.is_empty() {
        return interner.labels(from_selector);
    }
    interner.labels(
        labels
            .iter()
            .filter(|(k, _)| !VOLATILE_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// A pod's workload and the workload's stable selector labels, from the pod's metadata (its
/// namespace, name, labels and controller) and the owner tables: what [`pod_info`] puts in
/// [`PodInfo::workload`] and [`PodInfo::selector_labels`].
pub fn pod_owner(
    meta: &ObjectMeta,
    owners: &Owners,
    interner: &mut Interner,
) -> (Arc<WorkloadRef>, Labels) {
    let ns = namespace_of(meta);
    let pod_name = meta.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let Some(owner) = controller_of(meta) else {
        let l = stable_labels(labels, None, interner);
        return (interner.workload("Pod", &pod_name), l);
    };
    let lookup = |kind: &str, name: &str| -> Option<&LabelSelector> {
        owners
            .selectors
            .get(&(ns.clone(), kind.to_owned(), name.to_owned()))
            .and_then(|s| s.as_ref())
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let rs = owners.replica_sets.get(&(ns.clone(), owner.name.clone()));
            let deployment = match rs {
                Some((Some(parent), _)) if parent.kind == "Deployment" => Some(parent.name.clone()),
                Some(_) => None,
                // Without the ReplicaSet, a Deployment's ReplicaSet is named
                // `<deployment>-<pod-template-hash>`.
                None => labels.get("pod-template-hash").and_then(|hash| {
                    owner
                        .name
                        .strip_suffix(hash.as_str())
                        .and_then(|n| n.strip_suffix('-'))
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                }),
            };
            match deployment {
                Some(d) => {
                    let sel = lookup("Deployment", &d).or_else(|| rs.and_then(|(_, s)| s.as_ref()));
                    (
                        interner.workload("Deployment", &d),
                        stable_labels(labels, sel, interner),
                    )
                }
                None => (
                    interner.workload("ReplicaSet", &owner.name),
                    stable_labels(labels, rs.and_then(|(_, s)| s.as_ref()), interner),
                ),
            }
        }
        "Job" => {
            let parent = owners
                .jobs
                .get(&(ns.clone(), owner.name.clone()))
                .and_then(|p| p.as_ref())
                .filter(|p| p.kind == "CronJob");
            match parent {
                Some(cj) => (
                    interner.workload("CronJob", &cj.name),
                    stable_labels(labels, lookup("CronJob", &cj.name), interner),
                ),
                None => (
                    interner.workload("Job", &owner.name),
                    stable_labels(labels, None, interner),
                ),
            }
        }
        kind => (
            interner.workload(kind, &owner.name),
            stable_labels(labels, lookup(kind, &owner.name), interner),
        ),
    }
}

pub fn pod_info(
    pod: &Pod,
    owners: &Owners,
    interner: &mut Interner,
) -> Result<PodInfo, InventoryError> {
    let meta = &pod.metadata;
    let object = object_name("Pod", meta);
    let status = pod.status.as_ref();
    let mut ips = Vec::new();
    if let Some(list) = status.and_then(|s| s.pod_ips.as_ref())
        && !list.is_empty()
    {
        for (i, ip) in list.iter().enumerate() {
            ips.push(parse_ip(
                &ip.ip,
                &object,
                &format!("status.podIPs[{i}].ip"),
            )?);
        }
    } else if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
        && !ip.is_empty()
    {
        ips.push(parse_ip(ip, &object, "status.podIP")?);
    }
    let spec = pod.spec.as_ref();
    let mut container_ports = Vec::new();
    if let Some(spec) = spec {
        for (field, p) in pod_ports(spec) {
            container_ports.push(ContainerPortInfo {
                name: p.name.clone(),
                port: parse_port(p.container_port, &object, &format!("{field}.containerPort"))?,
                protocol: parse_protocol(
                    p.protocol.as_deref(),
                    &object,
                    &format!("{field}.protocol"),
                )?,
            });
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    let finished = if matches!(phase, Some("Succeeded" | "Failed")) {
        status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
            .map(|t| t.0)
            .max()
    } else {
        None
    };
    let deleted: Option<Timestamp> = match (meta.deletion_timestamp.as_ref().map(|t| t.0), finished)
    {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (workload, selector_labels) = pod_owner(&pod.metadata, owners, interner);
    let labels = match &meta.labels {
        Some(map) => interner.labels_of(map),
        None => interner.intern_labels(Labels::default()),
    };
    Ok(PodInfo {
        namespace: interner.name(meta.namespace.as_deref().unwrap_or("default")),
        name: meta.name.as_deref().unwrap_or_default().into(),
        uid: meta.uid.as_deref().unwrap_or_default().into(),
        labels,
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        node_name: spec
            .and_then(|s| s.node_name.as_deref())
            .map(|n| interner.name(n)),
        workload,
        selector_labels,
        container_ports: interner.ports(container_ports),
        created: meta.creation_timestamp.as_ref().map(|t| t.0),
        deleted,
    })
}

pub fn service_info(svc: &Service, interner: &mut Interner) -> Result<ServiceInfo, InventoryError> {
    let meta = &svc.metadata;
    let object = object_name("Service", meta);
    let spec = svc.spec.clone().unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let list: Vec<(String, String)> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.clone()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_owned(), ip.clone()))
            .collect(),
    };
    for (field, ip) in list {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        cluster_ips.push(parse_ip(&ip, &object, &field)?);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = parse_port(p.port, &object, &format!("{field}.port"))?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(parse_port(*n, &object, &format!("{field}.targetPort"))?)
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => {
                    TargetPort::Number(parse_port(n, &object, &format!("{field}.targetPort"))?)
                }
                Err(_) if !s.is_empty() => TargetPort::Name(s.clone()),
                Err(_) => TargetPort::Number(port),
            },
        };
        ports.push(ServicePortInfo {
            name: p.name.clone(),
            port,
            protocol: parse_protocol(p.protocol.as_deref(), &object, &format!("{field}.protocol"))?,
            target_port,
        });
    }
    Ok(ServiceInfo {
        namespace: namespace_of(meta),
        name: meta.name.clone().unwrap_or_default(),
        cluster_ips,
        selector: spec
            .selector
            .filter(|s| !s.is_empty())
            .map(|s| interner.labels_of(&s)),
        ports,
        service_type: match spec.type_.as_deref() {
            None | Some("" | "ClusterIP") => ServiceType::ClusterIP,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                return Err(invalid(
                    object,
                    "spec.type".to_owned(),
                    format!(
                        "{other:?} is not a Service type (ClusterIP, NodePort, LoadBalancer, ExternalName)"
                    ),
                ));
            }
        },
    })
}

pub fn node_info(node: &Node, interner: &mut Interner) -> Result<NodeInfo, InventoryError> {
    let meta = &node.metadata;
    let object = object_name("Node", meta);
    let mut addresses = Vec::new();
    if let Some(list) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for (i, a) in list.iter().enumerate() {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                let ip = parse_ip(
                    &a.address,
                    &object,
                    &format!("status.addresses[{i}].address"),
                )?;
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
        }
    }
    let mut pod_cidrs = Vec::new();
    let spec = node.spec.as_ref();
    let cidrs: Vec<(String, String)> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c.clone()))
            .collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.clone())
            .map(|c| vec![("spec.podCIDR".to_owned(), c)])
            .unwrap_or_default(),
    };
    for (field, c) in cidrs {
        pod_cidrs.push(
            c.parse()
                .map_err(|_| invalid(object.clone(), field, format!("{c:?} is not a CIDR")))?,
        );
    }
    Ok(NodeInfo {
        name: meta.name.clone().unwrap_or_default(),
        addresses,
        pod_cidrs,
        labels: meta
            .labels
            .as_ref()
            .map(|l| interner.labels_of(l))
            .unwrap_or_default(),
    })
}

pub fn endpoint_slice_info(es: &EndpointSlice) -> Result<EndpointSliceInfo, InventoryError> {
    let meta = &es.metadata;
    let object = object_name("EndpointSlice", meta);
    let is_ip = matches!(es.address_type.as_str(), "IPv4" | "IPv6");
    let mut endpoints = Vec::new();
    for (i, e) in es.endpoints.iter().flatten().enumerate() {
        let mut addresses = Vec::new();
        if is_ip {
            for (j, a) in e.addresses.iter().enumerate() {
                addresses.push(parse_ip(
                    a,
                    &object,
                    &format!("endpoints[{i}].addresses[{j}]"),
                )?);
            }
        }
        endpoints.push(EndpointInfo {
            addresses,
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone()),
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        });
    }
    let mut ports = Vec::new();
    for (i, p) in es.ports.iter().flatten().enumerate() {
        ports.push(EndpointPortInfo {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: p
                .port
                .map(|n| parse_port(n, &object, &format!("ports[{i}].port")))
                .transpose()?,
            protocol: parse_protocol(
                p.protocol.as_deref(),
                &object,
                &format!("ports[{i}].protocol"),
            )?,
        });
    }
    Ok(EndpointSliceInfo {
        namespace: namespace_of(meta),
        name: meta.name.clone().unwrap_or_default(),
        service: meta
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name").cloned()),
        endpoints,
        ports,
    })
}

/// The namespace of a namespaced object; `default` when omitted (as `kubectl apply` would put
/// it, and as `policy::policy_id` assumes).
fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}
