//! Synthetic inputs for the recommender benchmark (`cargo xtask bench recommend`, via `netpol-observe-bench recommend`):
//! an inventory of `workloads` Deployments (two pods each, 100 per namespace) and `flows`
//! attributed flow records over a few thousand workload-level edges, as agents write them.
//! Not part of the supported API.

use std::net::IpAddr;

use jiff::Timestamp;

use netpol_observe_core::{
    flow::{Endpoint, FlowRecord, FlowState, Protocol},
    inventory::{ContainerPortInfo, Interner, Inventory, NamespaceInfo, PodInfo},
};

/// A deterministic inventory of `workloads` Deployments and `flows` attributed flows.
pub fn synthetic(workloads: usize, flows: usize) -> (Inventory, Vec<FlowRecord>) {
    let inv = synthetic_inventory(workloads);
    let out = synthetic_flows(&inv, workloads, flows).collect();
    (inv, out)
}

/// The inventory of [`synthetic`].
pub fn synthetic_inventory(workloads: usize) -> Inventory {
    let mut inv = Inventory::default();
    let mut interner = Interner::default();
    for w in 0..workloads {
        let ns = format!("ns-{}", w / 100);
        inv.namespaces
            .entry(ns.clone())
            .or_insert_with(|| NamespaceInfo {
                name: ns.clone(),
                labels: [("kubernetes.io/metadata.name".to_owned(), ns.clone())].into(),
            });
        let name = format!("app-{w}");
        let labels = interner.labels([("app", name.as_str())]);
        for r in 0..2 {
            let n = w * 2 + r;
            let ip = IpAddr::from([10, 244, (n / 250) as u8, (n % 250) as u8 + 1]);
            inv.pods.push(PodInfo {
                namespace: interner.name(&ns),
                name: format!("{name}-{r}").into(),
                uid: format!("uid-{n}").into(),
                labels: labels.clone(),
                ips: vec![ip],
                host_network: false,
                node_name: Some(interner.name(&format!("node-{}", n % 10))),
                workload: interner.workload("Deployment", &name),
                selector_labels: labels.clone(),
                container_ports: interner.ports(vec![ContainerPortInfo {
                    name: Some("http".to_owned()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }]),
                created: None,
                deleted: None,
            });
        }
    }
    inv
}

/// The flows of [`synthetic`], generated one by one (nothing held): `inv` is
/// [`synthetic_inventory`]`(workloads)`.
pub fn synthetic_flows(
    inv: &Inventory,
    workloads: usize,
    flows: usize,
) -> impl Iterator<Item = FlowRecord> + '_ {
    // The pods of workload `w` are `2w` and `2w + 1`.
    let pods_of = |w: usize| [w * 2, w * 2 + 1];
    let start = Timestamp::from_second(1_790_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..flows).map(move |i| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let client = i % workloads.max(1);
        // Each client talks to 3 servers; one in 16 flows goes outside the cluster.
        let server = (client * 7 + 1 + (x as usize % 3) * 13) % workloads.max(1);
        let src_pod = &inv.pods[pods_of(client)[i % 2]];
        let mut src = Endpoint::bare(src_pod.ips[0], Some(30000 + (i % 30000) as u16));
        src.namespace = Some(src_pod.namespace.to_string());
        src.pod = Some(src_pod.name.to_string());
        src.workload = Some((*src_pod.workload).clone());
        src.labels = Some(src_pod.selector_labels.to_map());
        let dst = if x.is_multiple_of(16) {
            let mut d = Endpoint::bare(
                IpAddr::from([203, 0, 113, (x >> 8) as u8 % 8 + 1]),
                Some(443),
            );
            d.subnet = Some("world".to_owned());
            d
        } else {
            let dst_pod = &inv.pods[pods_of(server)[(i / 2) % 2]];
            let mut d = Endpoint::bare(dst_pod.ips[0], Some(8080));
            d.namespace = Some(dst_pod.namespace.to_string());
            d.pod = Some(dst_pod.name.to_string());
            d.workload = Some((*dst_pod.workload).clone());
            d.labels = Some(dst_pod.selector_labels.to_map());
            d
        };
        let t = start
            .checked_add(jiff::SignedDuration::from_secs((i / 100) as i64))
            .unwrap_or(start);
        FlowRecord {
            protocol: Protocol::Tcp,
            src,
            dst,
            state: Some(FlowState::Closed),
            first_seen: Some(t),
            last_seen: Some(t),
            packets: None,
            bytes: None,
            drops: None,
            unenforced: None,
            node: None,
            counted: true,
            connections: None,
        }
    })
}
