//! Builders shared by the agent's multi-node test modules (`cluster_tests`,
//! `enforcement_tests`, `drift_tests`): addresses, pods and nodes of a `shop` namespace.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use crate::{
    flow::{Protocol, WorkloadRef},
    inventory::{
        Labels, NamespaceInfo, NodeInfo, PodInfo, ServiceInfo, ServicePortInfo, ServiceType,
        TargetPort,
    },
};

/// The address `a`.
pub(super) fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// Pod `name` of workload `kind`/`workload` in namespace `shop` at `addr` on `node`, labelled
/// (and selected) `app: <workload>`.
pub(super) fn pod(name: &str, kind: &str, workload: &str, addr: [u8; 4], node: &str) -> PodInfo {
    let app: Labels = [("app", workload)].into();
    PodInfo {
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("uid-{name}").into(),
        labels: app.clone(),
        ips: vec![ip(addr)],
        host_network: false,
        node_name: Some(node.into()),
        workload: Arc::new(WorkloadRef {
            kind: kind.to_owned(),
            name: workload.to_owned(),
        }),
        selector_labels: app,
        container_ports: Arc::from(Vec::new()),
        created: None,
        deleted: None,
    }
}

/// Node `name` with InternalIP `addr`.
pub(super) fn node(name: &str, addr: [u8; 4]) -> NodeInfo {
    NodeInfo {
        name: name.to_owned(),
        addresses: vec![ip(addr)],
        pod_cidrs: Vec::new(),
        labels: Labels::default(),
    }
}

/// The namespace `shop` (with its `kubernetes.io/metadata.name` label).
pub(super) fn shop_namespace() -> BTreeMap<String, NamespaceInfo> {
    BTreeMap::from([(
        "shop".to_owned(),
        NamespaceInfo {
            name: "shop".to_owned(),
            labels: [("kubernetes.io/metadata.name", "shop")].into(),
        },
    )])
}

/// Service `shop/api` (`app: api`) at `cluster_ip`, TCP 80 → `target`.
pub(super) fn api_service(cluster_ip: [u8; 4], target: u16) -> ServiceInfo {
    ServiceInfo {
        namespace: "shop".to_owned(),
        name: "api".to_owned(),
        cluster_ips: vec![ip(cluster_ip)],
        selector: Some([("app", "api")].into()),
        ports: vec![ServicePortInfo {
            name: None,
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(target),
        }],
        service_type: ServiceType::ClusterIP,
    }
}
