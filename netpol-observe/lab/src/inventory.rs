//! `inventory.yaml`: what the lab built, as ordinary Kubernetes objects (k8s-openapi types)
//! in a `v1 List`, the way `kubectl get ... -o yaml` prints them: Namespaces, Deployments /
//! StatefulSets / DaemonSets, ReplicaSets, Pods (IPs, labels with `pod-template-hash`, owner
//! references, container ports), Services, EndpointSlices and the Node.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::{
    api::{
        apps::v1::{
            DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec,
            StatefulSet, StatefulSetSpec,
        },
        batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec},
        core::v1::{
            Container, ContainerPort, Namespace, Node, NodeAddress, NodeSpec, NodeStatus,
            ObjectReference, Pod, PodIP, PodSpec, PodStatus, PodTemplateSpec, Service, ServicePort,
            ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use serde_json::Value;

use super::{
    model::{
        ExternalModel, LabModel, NodeModel, PodModel, ServiceModel, WorkloadModel, job_name,
        protocol_name,
    },
    scenario::{PortRef, WorkloadKind},
};

/// Failure to write the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// An object could not be serialized.
    #[error("cannot serialize the inventory: {0}")]
    Serialize(String),
    /// The file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn uid(kind: &str, namespace: &str, name: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in format!("{kind}/{namespace}/{name}").bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let s = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

fn meta(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        uid: Some(uid(kind, namespace.unwrap_or(""), name)),
        labels: (!labels.is_empty()).then_some(labels),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner(api_version: &str, kind: &str, namespace: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid(kind, namespace, name),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn template(w: &WorkloadModel, labels: BTreeMap<String, String>) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(w, None)),
    }
}

fn pod_spec(w: &WorkloadModel, node: Option<&str>) -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: w.name.clone(),
            image: Some("netpol-observe/lab-echo:latest".into()),
            ports: Some(
                w.ports
                    .iter()
                    .map(|p| ContainerPort {
                        container_port: i32::from(p.port),
                        name: p.name.clone(),
                        protocol: Some(protocol_name(p.protocol)),
                        ..ContainerPort::default()
                    })
                    .collect(),
            ),
            ..Container::default()
        }],
        node_name: node.map(str::to_string),
        ..PodSpec::default()
    }
}

fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

fn to_value<T: serde::Serialize>(object: &T) -> Result<Value, InventoryError> {
    serde_json::to_value(object).map_err(|e| InventoryError::Serialize(e.to_string()))
}

fn workload_objects(w: &WorkloadModel) -> Result<Vec<Value>, InventoryError> {
    let ns = w.namespace.as_str();
    let replicas = Some(i32::try_from(w.pods.len()).unwrap_or(i32::MAX));
    let mut out = Vec::new();
    match w.kind {
        WorkloadKind::Deployment => {
            out.push(to_value(&Deployment {
                metadata: meta("Deployment", Some(ns), &w.name, w.labels.clone(), None),
                spec: DeploymentSpec {
                    replicas,
                    selector: selector(&w.labels),
                    template: template(w, w.labels.clone()),
                    ..DeploymentSpec::default()
                },
                status: None,
            })?);
            let rs_name = format!("{}-{}", w.name, w.template_hash);
            let mut rs_labels = w.labels.clone();
            rs_labels.insert("pod-template-hash".into(), w.template_hash.clone());
            out.push(to_value(&ReplicaSet {
                metadata: meta(
                    "ReplicaSet",
                    Some(ns),
                    &rs_name,
                    rs_labels.clone(),
                    Some(owner("apps/v1", "Deployment", ns, &w.name)),
                ),
                spec: ReplicaSetSpec {
                    replicas,
                    selector: selector(&rs_labels),
                    template: Some(template(w, rs_labels.clone())),
                    ..ReplicaSetSpec::default()
                },
                status: None,
            })?);
        }
        WorkloadKind::StatefulSet => out.push(to_value(&StatefulSet {
            metadata: meta("StatefulSet", Some(ns), &w.name, w.labels.clone(), None),
            spec: StatefulSetSpec {
                replicas,
                selector: selector(&w.labels),
                service_name: Some(w.name.clone()),
                template: template(w, w.labels.clone()),
                ..StatefulSetSpec::default()
            },
            status: None,
        })?),
        WorkloadKind::DaemonSet => out.push(to_value(&DaemonSet {
            metadata: meta("DaemonSet", Some(ns), &w.name, w.labels.clone(), None),
            spec: DaemonSetSpec {
                selector: selector(&w.labels),
                template: template(w, w.labels.clone()),
                ..DaemonSetSpec::default()
            },
            status: None,
        })?),
        WorkloadKind::Job | WorkloadKind::CronJob => {
            let job = job_name(w.kind, &w.name, &w.template_hash);
            let owner_ref = match w.kind {
                WorkloadKind::CronJob => {
                    out.push(to_value(&CronJob {
                        metadata: meta("CronJob", Some(ns), &w.name, w.labels.clone(), None),
                        spec: CronJobSpec {
                            schedule: "*/5 * * * *".into(),
                            job_template: JobTemplateSpec {
                                metadata: None,
                                spec: Some(job_spec(w, replicas)),
                            },
                            ..CronJobSpec::default()
                        },
                        status: None,
                    })?);
                    Some(owner("batch/v1", "CronJob", ns, &w.name))
                }
                _ => None,
            };
            out.push(to_value(&Job {
                metadata: meta("Job", Some(ns), &job, w.labels.clone(), owner_ref),
                spec: Some(job_spec(w, replicas)),
                status: None,
            })?);
        }
        WorkloadKind::Pod => {}
    }
    Ok(out)
}

/// A Job's spec: `parallelism` = `completions` = the replicas, the pod template.
fn job_spec(w: &WorkloadModel, replicas: Option<i32>) -> JobSpec {
    JobSpec {
        parallelism: replicas,
        completions: replicas,
        template: template(w, w.labels.clone()),
        ..JobSpec::default()
    }
}

fn pod_object(model: &LabModel, pod: &PodModel) -> Pod {
    let w = model.workload_of(pod);
    let ns = pod.namespace.as_str();
    let owner_ref = match w.kind {
        WorkloadKind::Deployment => Some(owner(
            "apps/v1",
            "ReplicaSet",
            ns,
            &format!("{}-{}", w.name, w.template_hash),
        )),
        WorkloadKind::StatefulSet => Some(owner("apps/v1", "StatefulSet", ns, &w.name)),
        WorkloadKind::DaemonSet => Some(owner("apps/v1", "DaemonSet", ns, &w.name)),
        WorkloadKind::Job | WorkloadKind::CronJob => Some(owner(
            "batch/v1",
            "Job",
            ns,
            &job_name(w.kind, &w.name, &w.template_hash),
        )),
        WorkloadKind::Pod => None,
    };
    Pod {
        metadata: meta("Pod", Some(ns), &pod.name, pod.labels.clone(), owner_ref),
        spec: Some(pod_spec(w, Some(&model.nodes[pod.node].name))),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(pod.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: pod.ip.to_string(),
            }]),
            host_ip: Some(model.nodes[pod.node].ip.to_string()),
            ..PodStatus::default()
        }),
    }
}

/// Every object of the lab, in dependency order.
pub fn objects(model: &LabModel) -> Result<Vec<Value>, InventoryError> {
    let mut out = Vec::new();
    for node in &model.nodes {
        out.push(to_value(&node_object(node))?);
    }
    for ns in &model.namespaces {
        out.push(to_value(&Namespace {
            metadata: meta("Namespace", None, &ns.name, ns.labels.clone(), None),
            ..Namespace::default()
        })?);
    }
    for w in &model.workloads {
        out.extend(workload_objects(w)?);
    }
    for pod in &model.pods {
        out.push(to_value(&pod_object(model, pod))?);
    }
    for svc in &model.services {
        out.push(to_value(&service_object(svc))?);
        for slice in endpoint_slices(model, svc) {
            out.push(to_value(&slice)?);
        }
    }
    Ok(out)
}

/// A node: its pod range, its address and host name.
fn node_object(node: &NodeModel) -> Node {
    Node {
        metadata: meta(
            "Node",
            None,
            &node.name,
            BTreeMap::from([("kubernetes.io/hostname".to_string(), node.name.clone())]),
            None,
        ),
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_cidr.to_string()),
            pod_cidrs: Some(vec![node.pod_cidr.to_string()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    address: node.ip.to_string(),
                    type_: "InternalIP".into(),
                },
                NodeAddress {
                    address: node.name.clone(),
                    type_: "Hostname".into(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

/// A Service: its type, cluster IP, selector and ports.
fn service_object(svc: &ServiceModel) -> Service {
    Service {
        metadata: meta(
            "Service",
            Some(svc.namespace.as_str()),
            &svc.name,
            BTreeMap::new(),
            None,
        ),
        spec: Some(ServiceSpec {
            type_: Some(svc.service_type.as_str().into()),
            cluster_ip: Some(svc.cluster_ip.to_string()),
            cluster_ips: Some(vec![svc.cluster_ip.to_string()]),
            selector: (!svc.selector.is_empty()).then(|| svc.selector.clone()),
            ports: Some(
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: i32::from(p.port),
                        protocol: Some(protocol_name(p.protocol)),
                        target_port: Some(match &p.target {
                            PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
                            PortRef::Name(n) => IntOrString::String(n.clone()),
                        }),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The EndpointSlices of a Service: an external's (without selector), then one per distinct
/// resolution of the target ports on its backends (named ports may differ); an empty one for
/// a Service with neither.
fn endpoint_slices(model: &LabModel, svc: &ServiceModel) -> Vec<EndpointSlice> {
    let mut groups: BTreeMap<Vec<Option<u16>>, Vec<usize>> = BTreeMap::new();
    for &b in &svc.backends {
        let key = svc
            .ports
            .iter()
            .map(|p| p.target_on(&model.pods[b]))
            .collect();
        groups.entry(key).or_default().push(b);
    }
    if groups.is_empty() && svc.external.is_none() {
        groups.insert(vec![], vec![]);
    }
    let mut out = Vec::new();
    if let Some(e) = svc.external {
        out.push(external_slice(svc, &model.externals[e]));
    }
    for (k, (ports, backends)) in groups.iter().enumerate() {
        out.push(backend_slice(model, svc, k, ports, backends));
    }
    out
}

/// The `k`-th EndpointSlice of a Service: its `backends` (pod indices) with the target
/// ports resolved on them (`ports`, in the Service's port order).
fn backend_slice(
    model: &LabModel,
    svc: &ServiceModel,
    k: usize,
    ports: &[Option<u16>],
    backends: &[usize],
) -> EndpointSlice {
    let ns = svc.namespace.as_str();
    let name = format!(
        "{}-{}",
        svc.name,
        &uid("EndpointSlice", ns, &format!("{}{k}", svc.name))[..5]
    );
    let mut metadata = meta(
        "EndpointSlice",
        Some(ns),
        &name,
        BTreeMap::from([
            ("kubernetes.io/service-name".to_string(), svc.name.clone()),
            (
                "endpointslice.kubernetes.io/managed-by".to_string(),
                "endpointslice-controller.k8s.io".to_string(),
            ),
        ]),
        Some(owner("v1", "Service", ns, &svc.name)),
    );
    if let Some(refs) = metadata.owner_references.as_mut() {
        for r in refs {
            r.block_owner_deletion = Some(true);
        }
    }
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Some(
            backends
                .iter()
                .map(|&b| {
                    let pod = &model.pods[b];
                    Endpoint {
                        addresses: vec![pod.ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        node_name: Some(model.nodes[pod.node].name.clone()),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            namespace: Some(pod.namespace.clone()),
                            name: Some(pod.name.clone()),
                            uid: Some(uid("Pod", &pod.namespace, &pod.name)),
                            ..ObjectReference::default()
                        }),
                        ..Endpoint::default()
                    }
                })
                .collect(),
        ),
        ports: Some(
            svc.ports
                .iter()
                .zip(ports.iter().chain(std::iter::repeat(&None)))
                .map(|(p, n)| EndpointPort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: n.map(i32::from),
                    protocol: Some(protocol_name(p.protocol)),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// The EndpointSlice of a Service without selector whose endpoints are an external's hosts
/// (no `targetRef`, numeric ports), as the API server writes `default/kubernetes`'s.
fn external_slice(svc: &ServiceModel, ext: &ExternalModel) -> EndpointSlice {
    let ns = svc.namespace.as_str();
    EndpointSlice {
        metadata: meta(
            "EndpointSlice",
            Some(ns),
            &svc.name,
            BTreeMap::from([
                ("kubernetes.io/service-name".to_string(), svc.name.clone()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_string(),
                    "netpol-observe-lab".to_string(),
                ),
            ]),
            None,
        ),
        address_type: "IPv4".into(),
        endpoints: Some(
            ext.hosts
                .iter()
                .map(|h| Endpoint {
                    addresses: vec![h.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(
            svc.ports
                .iter()
                .map(|p| EndpointPort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: Some(i32::from(p.target_number())),
                    protocol: Some(protocol_name(p.protocol)),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// The inventory as YAML: a `v1 List` of every object.
pub fn to_yaml(model: &LabModel) -> Result<String, InventoryError> {
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": objects(model)?,
    });
    crate::yaml::to_string(&list).map_err(|e| InventoryError::Serialize(e.to_string()))
}

/// Writes the inventory to `path`.
pub fn write(model: &LabModel, path: &Path) -> Result<(), InventoryError> {
    std::fs::write(path, to_yaml(model)?).map_err(|source| InventoryError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    /// Job and CronJob workloads: their pods are attributed to the Job and, through the Job
    /// of its current run, to the CronJob, with their own labels as selector labels.
    #[test]
    fn jobs_and_cronjobs_are_their_pods_workloads() {
        let text = "name: t
namespaces: [{name: ops}]
workloads:
  - {namespace: ops, name: backup, kind: CronJob, replicas: 2, labels: {app: backup}}
  - {namespace: ops, name: migrate, kind: Job, labels: {app: migrate}}
";
        let s = parse(Path::new("t"), text).unwrap();
        let m = LabModel::build(Path::new("t"), text, &s).unwrap();
        let inv =
            netpol_observe_agent::inventory::Inventory::from_yaml_str(&to_yaml(&m).unwrap(), "lab")
                .unwrap();
        let kinds: Vec<(String, String, String)> = inv
            .pods
            .iter()
            .filter(|p| &*p.namespace == "ops")
            .map(|p| {
                (
                    p.name.to_string(),
                    p.workload.kind.to_string(),
                    p.workload.name.to_string(),
                )
            })
            .collect();
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        for (pod, kind, name) in &kinds {
            if pod.starts_with("backup-") {
                assert_eq!(
                    (kind.as_str(), name.as_str()),
                    ("CronJob", "backup"),
                    "{pod}"
                );
            } else {
                assert!(pod.starts_with("migrate-"), "{pod}");
                assert_eq!((kind.as_str(), name.as_str()), ("Job", "migrate"));
            }
        }
    }

    #[test]
    fn parses_back_into_kubernetes_types() {
        let text = "name: t
namespaces: [{name: shop, labels: {team: web}}]
workloads:
  - {namespace: shop, name: web, replicas: 2, labels: {app: web}, ports: [{name: http, port: 8080}]}
  - {namespace: shop, name: db, kind: StatefulSet, labels: {app: db}, ports: [{port: 5432}]}
services:
  - {namespace: shop, name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
";
        let s = parse(Path::new("t"), text).unwrap();
        let m = LabModel::build(Path::new("t"), text, &s).unwrap();
        let yaml = to_yaml(&m).unwrap();
        let list: Value = crate::yaml::from_str(&yaml).unwrap();
        assert_eq!(list["kind"], "List");
        let items = list["items"].as_array().unwrap();
        let of_kind = |k: &'static str| items.iter().filter(move |i| i["kind"] == k).cloned();
        let pods: Vec<Pod> = of_kind("Pod")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        assert_eq!(pods.len(), 4); // coredns, 2 web, db
        let web = pods
            .iter()
            .find(|p| p.metadata.name.as_deref().unwrap().starts_with("web-"))
            .unwrap();
        let hash = &m.workloads[1].template_hash;
        assert_eq!(
            web.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            *hash
        );
        let rs_ref = &web.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (rs_ref.kind.as_str(), rs_ref.name.clone()),
            ("ReplicaSet", format!("web-{hash}"))
        );
        assert_eq!(
            web.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.0.11")
        );
        let port = &web.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (port.container_port, port.name.as_deref()),
            (8080, Some("http"))
        );
        let rss: Vec<ReplicaSet> = of_kind("ReplicaSet")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let rs = rss
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&format!("web-{hash}")))
            .unwrap();
        assert_eq!(
            rs.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Deployment"
        );
        assert_eq!(
            rs.metadata.owner_references.as_ref().unwrap()[0].uid,
            uid("Deployment", "shop", "web")
        );
        let _: Vec<Deployment> = of_kind("Deployment")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let sts: Vec<StatefulSet> = of_kind("StatefulSet")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        assert_eq!(sts.len(), 1);
        let nss: Vec<Namespace> = of_kind("Namespace")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let shop = nss
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some("shop"))
            .unwrap();
        assert_eq!(
            shop.metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "shop"
        );
        assert_eq!(shop.metadata.labels.as_ref().unwrap()["team"], "web");
        let svcs: Vec<Service> = of_kind("Service")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let dns = svcs
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("kube-dns"))
            .unwrap();
        assert_eq!(
            dns.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
        let slices: Vec<EndpointSlice> = of_kind("EndpointSlice")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let web_slice = slices
            .iter()
            .find(|s| s.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"] == "web")
            .unwrap();
        assert_eq!(web_slice.endpoints.as_ref().unwrap().len(), 2);
        assert_eq!(web_slice.ports.as_ref().unwrap()[0].port, Some(8080));
        let nodes: Vec<Node> = of_kind("Node")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let addr = &nodes[0]
            .status
            .as_ref()
            .unwrap()
            .addresses
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (addr.type_.as_str(), addr.address.as_str()),
            ("InternalIP", "172.31.0.1")
        );
    }
}
