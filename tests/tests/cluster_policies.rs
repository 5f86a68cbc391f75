//! ClusterNetworkPolicies against a real kube-apiserver: the live inventory syncs before their
//! CRD exists (404: none) and picks them up once the CRD
//! (`../shared/schemas/network-policy-api/experimental/…clusternetworkpolicies.yaml`, v0.2.0)
//! is installed; the recommender's `--format clusternetworkpolicy` output (a Baseline default
//! deny and an Admin `domainNames` policy) is created and read back unchanged — the API
//! server's validation (structural schema, CEL rules, enums, patterns) accepts every object
//! and prunes no field — and the engine then judges flows by what the live inventory holds.
//!
//! Needs the kube-apiserver and etcd binaries (skipped with a message without them, failing
//! under `CI=true`) and kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use netpol_observe_agent::inventory::{
    Inventory,
    kubeapi::{KubeAccess, client},
    live::{self, LiveOptions},
};
use netpol_observe_core::{
    attribution::Subnets,
    flow::{FlowRecord, Protocol},
    policy::{PolicyEngine, SideResult, cluster::ClusterNetworkPolicy},
    recommend::{PolicyFormat, RecommendConfig, Recommender, render_objects},
};
use netpol_observe_e2e::apiserver::{ApiServer, Binaries, as_sent};

/// Generous: the API server serves a new CRD within a second or two; a loaded CI machine may
/// take much longer, and the loops stop as soon as the condition holds.
const BOUND: Duration = Duration::from_secs(300);

const INVENTORY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata:
  name: checkout-5f7c9d-a
  namespace: shop
  labels: {app: checkout, pod-template-hash: 5f7c9d}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: checkout-5f7c9d, uid: u1, controller: true}]
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata:
  name: coredns-6d4b-a
  namespace: kube-system
  labels: {k8s-app: kube-dns, pod-template-hash: 6d4b}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: coredns-6d4b, uid: u2, controller: true}]
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.10, selector: {k8s-app: kube-dns}, ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53}]}
"#;

fn flow(proto: Protocol, src: &str, dst: &str, port: u16, names: &[&str]) -> FlowRecord {
    let mut f = FlowRecord::new(
        proto,
        src.parse::<IpAddr>().unwrap(),
        dst.parse::<IpAddr>().unwrap(),
        Some(port),
    );
    f.dst.dns_names = names.iter().map(|n| (*n).to_owned()).collect();
    f
}

#[test]
fn cluster_policies_live_and_recommended_against_the_api_server() {
    let test = "cluster_policies_live_and_recommended_against_the_api_server";
    let Some(bins) = Binaries::find(test) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crd = root.join(
        "../shared/schemas/network-policy-api/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml",
    );
    assert!(crd.is_file(), "{test}: {} missing", crd.display());

    // The recommender's output for checkout's named SaaS API and its lookups.
    let inventory = Inventory::from_yaml_str(INVENTORY, "inventory.yaml").unwrap();
    let flows = vec![
        flow(Protocol::Udp, "10.244.0.5", "10.96.0.10", 53, &[]),
        flow(
            Protocol::Tcp,
            "10.244.0.5",
            "54.1.2.3",
            443,
            &["api.stripe.com"],
        ),
    ];
    let rec = Recommender::new(&inventory, &Subnets::default(), RecommendConfig::default())
        .recommend(&flows);
    assert!(!rec.self_check_failed(), "{:#?}", rec.notes);
    let objects = render_objects(PolicyFormat::ClusterNetworkPolicy, &rec, &inventory).unwrap();
    let cluster_yaml: String = objects
        .iter()
        .filter(|o| o.namespace.is_none())
        .map(|o| format!("---\n{}", o.yaml))
        .collect();
    let mut sent = Inventory::from_yaml_str(&cluster_yaml, "sent.yaml")
        .unwrap()
        .cluster_network_policies;
    let names: Vec<&str> = sent.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["netpol-observe-baseline", "shop.checkout-np.domains"]
    );

    let api = ApiServer::start(&bins, "cluster-policies").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (kube, _) = rt
        .block_on(client(&KubeAccess::infer(Some(api.kubeconfig()))))
        .unwrap();
    let live = rt.block_on(async {
        live::start(
            kube,
            LiveOptions {
                debounce: Duration::from_millis(50),
                ..LiveOptions::default()
            },
        )
    });

    // Without the CRD: synced and healthy, none.
    let start = Instant::now();
    while !live.sync_state().healthy() {
        assert!(
            start.elapsed() < BOUND,
            "not synced without the CRD: {:?}",
            live.sync_state()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(live.snapshot().cluster_network_policies.is_empty());
    eprintln!("{test}: synced without the CRD after {:?}", start.elapsed());

    // The CRD, then the recommended ClusterNetworkPolicies once the kind is served.
    api.kubectl_ok(&["create", "-f", &crd.display().to_string()], None)
        .unwrap();
    let start = Instant::now();
    loop {
        let out = api
            .kubectl(&["create", "-f", "-"], Some(&cluster_yaml))
            .unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("no matches for kind") || err.contains("the server could not find"),
            "the API server refused the ClusterNetworkPolicies:\n{err}\n{cluster_yaml}"
        );
        assert!(start.elapsed() < BOUND, "not served after {BOUND:?}: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Read back unchanged.
    let got = api
        .kubectl_ok(
            &[
                "get",
                "clusternetworkpolicies.policy.networking.k8s.io",
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    let mut back: Vec<ClusterNetworkPolicy> = as_sent(&got).unwrap();
    back.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    sent.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    assert_eq!(
        back, sent,
        "read back differs (a pruned or defaulted field)"
    );

    // The live inventory follows (the watch retried after the 404 and lists them now).
    let start = Instant::now();
    while live.snapshot().cluster_network_policies.len() != 2 {
        assert!(
            start.elapsed() < BOUND,
            "the live inventory did not pick the ClusterNetworkPolicies up: {:?}",
            live.sync_state()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{test}: the live inventory holds them {:?} after creation",
        start.elapsed()
    );
    let mut held = live.snapshot().cluster_network_policies.clone();
    held.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for (h, s) in held.iter().zip(&sent) {
        assert_eq!(h.spec, s.spec);
    }

    // Judged with what the live inventory holds (the file inventory's pods).
    let engine = PolicyEngine::compile_with_cluster(&rec.policies, &held, &inventory).unwrap();
    let rotated = flow(
        Protocol::Tcp,
        "10.244.0.5",
        "54.9.9.9",
        443,
        &["api.stripe.com"],
    );
    let v = engine.evaluate_flow(&rotated);
    assert!(v.allowed);
    assert_eq!(v.egress.policies, ["cnp/shop.checkout-np.domains"]);
    let unnamed = flow(Protocol::Tcp, "10.244.0.5", "54.9.9.9", 443, &[]);
    assert_eq!(
        engine.evaluate_flow(&unnamed).egress.result,
        SideResult::Denied
    );
    drop(live);
    drop(rt);
}
