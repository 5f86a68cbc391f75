//! The live inventory against a test double of the API server's HTTP (kube's `tower-test`
//! pattern) serving recorded list and watch responses: it opens exactly the watched
//! resources, builds the same inventory as the file source, keeps serving the last known state
//! while a watch fails, resumes with backoff, and keeps deleted pods as tombstones for IP
//! reuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use netpol_observe_agent::inventory::{
    WATCHED_RESOURCES,
    live::{self, LiveOptions},
};
use netpol_observe_core::flow::WorkloadRef;
use tokio::sync::oneshot;

fn recorded(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/api")
            .join(name),
    )
    .unwrap()
}

/// `(group, resource)` of an API path: `/api/v1/pods` or `/apis/apps/v1/replicasets`.
fn resource_of(path: &str) -> (String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", _v, res, ..] => (String::new(), res.to_string()),
        ["apis", group, _v, res, ..] => (group.to_string(), res.to_string()),
        _ => panic!("unexpected path {path}"),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn live_inventory_from_recorded_api_responses() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let requested: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let seen = Arc::clone(&requested);
    let server = tokio::spawn(async move {
        let mut release = Some(release_rx);
        let mut pod_watches = 0;
        let mut held = Vec::new(); // watches left open
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            let (group, res) = resource_of(&path);
            seen.lock().unwrap().insert((group, res.clone()));
            if !query.contains("watch=true") {
                let body = recorded(&format!("{res}.json"));
                send.send_response(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(body))
                        .unwrap(),
                );
                continue;
            }
            if res != "pods" {
                held.push(send);
                continue;
            }
            pod_watches += 1;
            match pod_watches {
                // The first pod watch fails: an API disconnect.
                1 => send.send_response(
                    Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Body::from(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"apiserver is shutting down","reason":"ServiceUnavailable","code":503}"#.to_vec()))
                        .unwrap(),
                ),
                // The retry answers once the test has checked the degraded state.
                2 => {
                    if let Some(rx) = release.take() {
                        let _ = rx.await;
                    }
                    assert!(query.contains("resourceVersion=1000"), "resumes from the list's version: {query}");
                    send.send_response(Response::builder().status(StatusCode::OK).body(Body::from(recorded("pods-watch.jsonl"))).unwrap());
                }
                _ => held.push(send),
            }
        }
    });

    let client = Client::new(service, "default");
    let inv = live::start(
        client,
        LiveOptions {
            debounce: Duration::from_millis(20),
            tombstone_retention: Duration::from_secs(60),
            ..LiveOptions::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(10), inv.wait_synced())
        .await
        .expect("synced");

    let snap = inv.snapshot();
    let names: Vec<_> = snap.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["old-1", "web-abc12-x1"]);
    let web = snap.pod("shop", "web-abc12-x1").unwrap();
    assert_eq!(
        *web.workload,
        WorkloadRef {
            kind: "Deployment".into(),
            name: "web".into()
        }
    );
    assert_eq!(web.selector_labels.len(), 1);
    assert_eq!(
        web.named_port("http", netpol_observe_core::flow::Protocol::Tcp),
        Some(8080)
    );
    assert_eq!(
        snap.namespace_labels("shop").unwrap().get("team"),
        Some("web")
    );
    assert_eq!(
        snap.nodes[0].addresses,
        vec!["172.18.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(snap.services[0].name, "api");
    assert_eq!(snap.network_policies.len(), 1);
    let names: Vec<_> = snap
        .cluster_network_policies
        .iter()
        .map(|p| p.name())
        .collect();
    assert_eq!(names, ["baseline-deny"]);

    // The failed pod watch is reported, and the last known state is still served.
    wait_for("the pod watch error", || {
        inv.sync_state().errors.iter().any(|(r, _)| r == "pods")
    })
    .await;
    assert!(inv.sync_state().synced);
    assert!(!inv.sync_state().healthy());
    assert_eq!(inv.snapshot().pods.len(), 2);

    // The watch resumes (with backoff) and applies the recorded events.
    release_tx.send(()).unwrap();
    wait_for("the api-1 pod", || {
        inv.snapshot().pod("shop", "api-1").is_some()
    })
    .await;
    wait_for("a healthy state", || inv.sync_state().healthy()).await;
    let snap = inv.snapshot();
    let old = snap
        .pod("shop", "old-1")
        .expect("deleted pods are kept as tombstones");
    assert!(old.deleted.is_some());
    let api = snap.pod("shop", "api-1").unwrap();
    assert!(api.deleted.is_none());
    assert_eq!(api.ips, old.ips, "the IP was reused");

    // Exactly the watched resources were opened.
    let expected: BTreeSet<(String, String)> = WATCHED_RESOURCES
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert_eq!(*requested.lock().unwrap(), expected);
    server.abort();
}

/// A cluster without the ClusterNetworkPolicy CRD answers 404 for them: the inventory syncs
/// with none (the other resources as usual), and the state is healthy.
#[tokio::test]
async fn a_missing_cluster_network_policy_crd_counts_as_none() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cnp_requests = Arc::new(Mutex::new(0usize));
    let counted = Arc::clone(&cnp_requests);
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            let (_, res) = resource_of(&path);
            if res == "clusternetworkpolicies" {
                *counted.lock().unwrap() += 1;
                send.send_response(
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Body::from(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#.to_vec()))
                        .unwrap(),
                );
                continue;
            }
            if query.contains("watch=true") {
                held.push(send);
                continue;
            }
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(recorded(&format!("{res}.json"))))
                    .unwrap(),
            );
        }
    });
    let inv = live::start(
        Client::new(service, "default"),
        LiveOptions {
            debounce: Duration::from_millis(20),
            ..LiveOptions::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(10), inv.wait_synced())
        .await
        .expect("synced without the CRD");
    let state = inv.sync_state();
    assert!(state.healthy(), "{state:?}");
    assert!(
        state
            .listed
            .iter()
            .any(|r| r == "policy.networking.k8s.io/clusternetworkpolicies"),
        "{state:?}"
    );
    let snap = inv.snapshot();
    assert!(snap.cluster_network_policies.is_empty());
    assert_eq!(snap.network_policies.len(), 1);
    assert_eq!(snap.pods.len(), 2);
    assert!(*cnp_requests.lock().unwrap() >= 1);
    server.abort();
}
