//! A small cluster to test ClusterNetworkPolicies on (the core's tests and the agent's).

use std::net::IpAddr;

use crate::{
    flow::{FlowRecord, Protocol},
    inventory::Inventory,
};

/// A small cluster: `shop/web` (node-1), `backend/api` (node-2, ports api 9000, metrics 9100,
/// a Service on 80 → api), `sensitive/vault` (node-1), `kube-system/coredns` (node-1, dns
/// 53/UDP), a hostNetwork agent on node-2; node-2 is labelled role=infra. One NetworkPolicy:
/// backend/api-np lets shop's web pods reach api on 9000 (and isolates api for ingress).
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: backend, labels: {team: core}}
---
apiVersion: v1
kind: Namespace
metadata: {name: sensitive, labels: {security: high}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: backend, labels: {app: api}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{name: api, containerPort: 9000}, {name: metrics, containerPort: 9100}]}]
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: vault, namespace: sensitive, labels: {app: vault}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 8200}]}]}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.0.1.4}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system, labels: {app: agent}}
spec: {nodeName: node-2, hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: backend}
spec: {clusterIP: 10.96.0.10, selector: {app: api}, ports: [{port: 80, targetPort: 9000}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-np, namespace: backend}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: web}}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 9000}]
"#;

/// Addresses of the cluster's pods, Service and node.
pub const WEB: [u8; 4] = [10, 0, 1, 1];
pub const API: [u8; 4] = [10, 0, 1, 2];
pub const VAULT: [u8; 4] = [10, 0, 1, 3];
pub const DNS: [u8; 4] = [10, 0, 1, 4];
pub const API_SVC: [u8; 4] = [10, 96, 0, 10];
pub const NODE_2: [u8; 4] = [192, 168, 0, 2];

/// The cluster with `cnps` (YAML documents) added; panics on YAML that does not load (a
/// test fixture).
#[expect(
    clippy::unwrap_used,
    reason = "a test fixture: bad YAML is a broken test"
)]
pub fn cluster(cnps: &str) -> Inventory {
    Inventory::from_yaml_str(&format!("{CLUSTER}\n---\n{cnps}"), "test.yaml").unwrap()
}

/// A TCP flow from `src` to `dst:port`.
pub fn flow(src: [u8; 4], dst: [u8; 4], port: u16) -> FlowRecord {
    FlowRecord::new(
        Protocol::Tcp,
        IpAddr::from(src),
        IpAddr::from(dst),
        Some(port),
    )
}
