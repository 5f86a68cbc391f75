//! `recommend --format cilium` against a real kube-apiserver: Cilium's CRD
//! (`../shared/schemas/cilium/ciliumnetworkpolicies.yaml`) installed, the recommender's Cilium
//! output (`netpol-observe/tests/fixtures/recommend/cilium.yaml`, the golden file of the
//! recommend scenarios, kept current by `recommend_cilium`) created, and read back unchanged:
//! the API server's validation (structural schema, its CEL rules, enums and patterns) accepts
//! every object and prunes no field. Stronger than the jsonschema check of `recommend_cilium`.
//!
//! Needs the kube-apiserver and etcd binaries (skipped with a message without them, failing
//! under `CI=true`) and kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use netpol_observe_core::recommend::cilium::types::CiliumNetworkPolicy;
use netpol_observe_e2e::apiserver::{ApiServer, Binaries, as_sent};

/// Generous: the API server serves a new CRD within a second or two; a loaded CI machine may
/// take much longer, and the loop stops as soon as it is served.
const CRD_BOUND: Duration = Duration::from_secs(300);

#[test]
fn cilium_policies_are_accepted_by_the_api_server() {
    let test = "cilium_policies_are_accepted_by_the_api_server";
    let Some(bins) = Binaries::find(test) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crd = root.join("../shared/schemas/cilium/ciliumnetworkpolicies.yaml");
    assert!(crd.is_file(), "{test}: {} missing", crd.display());
    let golden =
        std::fs::read_to_string(root.join("netpol-observe/tests/fixtures/recommend/cilium.yaml"))
            .unwrap();
    let sent: Vec<CiliumNetworkPolicy> = serde_saphyr::from_multiple(&golden).unwrap();
    assert!(sent.len() >= 9, "{} objects", sent.len());

    let api = ApiServer::start(&bins, "cilium-policies").unwrap();
    // `create`, not `apply`: the CRD is too large for the last-applied annotation.
    api.kubectl_ok(&["create", "-f", &crd.display().to_string()], None)
        .unwrap();
    let namespaces: BTreeSet<&str> = sent
        .iter()
        .filter_map(|p| p.metadata.namespace.as_deref())
        .collect();
    for ns in &namespaces {
        api.kubectl_ok(&["create", "namespace", ns], None).unwrap();
    }
    // Wait until the new kind is served (Established, then discovery), then create.
    let start = Instant::now();
    loop {
        let out = api.kubectl(&["create", "-f", "-"], Some(&golden)).unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("no matches for kind") || err.contains("the server could not find"),
            "the API server refused the Cilium policies:\n{err}"
        );
        assert!(
            start.elapsed() < CRD_BOUND,
            "CiliumNetworkPolicy not served after {CRD_BOUND:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{test}: {} CiliumNetworkPolicies created {:?} after the CRD",
        sent.len(),
        start.elapsed()
    );

    let got = api
        .kubectl_ok(
            &["get", "ciliumnetworkpolicies.cilium.io", "-A", "-o", "json"],
            None,
        )
        .unwrap();
    let mut back: Vec<CiliumNetworkPolicy> = as_sent(&got).unwrap();
    let key = |p: &CiliumNetworkPolicy| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    back.sort_by_key(key);
    let mut sent = sent;
    sent.sort_by_key(key);
    assert_eq!(back.len(), sent.len());
    for (b, s) in back.iter().zip(&sent) {
        assert_eq!(b, s, "read back differs (a pruned or defaulted field)");
    }
}
