//! The agent with ClusterNetworkPolicies: its drop labels and model.

/// The agent's drop `policy` label and its unenforced policy name the ClusterNetworkPolicy
/// that denied (the egress side first, as the packet meets it first); the agent's model
/// compiles the inventory's ClusterNetworkPolicies.
#[test]
fn drop_labels_name_the_cluster_policy() {
    use crate::{
        agent::model::{Model, Sides, drop_policy, unenforced_policy},
        attribution::Subnets,
    };
    use netpol_observe_core::policy::{
        PolicyEngine,
        cluster::fixtures::{VAULT, WEB, cluster, flow},
    };
    let inv = cluster(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-vault}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: web}}}
  egress:
  - {action: Deny, to: [{namespaces: {matchLabels: {security: high}}}]}
"#,
    );
    let engine = PolicyEngine::compile_with_cluster(
        &inv.network_policies,
        &inv.cluster_network_policies,
        &inv,
    )
    .unwrap();
    let v = engine.evaluate_flow(&flow(WEB, VAULT, 8200));
    assert_eq!(drop_policy(Some(&v)).as_deref(), Some("cnp/no-vault"));
    assert_eq!(
        unenforced_policy(&v, Sides::denying(&crate::agent::model::compact(&v))).as_deref(),
        Some("cnp/no-vault")
    );
    // The model's engines hold them (and its fingerprint differs from the same
    // NetworkPolicies without them).
    let with = Model::new(std::sync::Arc::new(inv.clone()), &Subnets::default(), None).unwrap();
    let mut without = inv;
    without.cluster_network_policies.clear();
    let without = Model::new(std::sync::Arc::new(without), &Subnets::default(), None).unwrap();
    assert_ne!(with.policy_fingerprint(), without.policy_fingerprint());
}
