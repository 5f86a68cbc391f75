//! The Cilium rendering of a scenario's recommendation (`recommend --format cilium`): written
//! as YAML, read back into the typed structs, and evaluated with Cilium's semantics
//! (`recommend::cilium::check`) next to the NetworkPolicy engine.

use netpol_observe_core::{
    attribution::Attributor,
    inventory::Inventory,
    recommend::{
        PolicyFormat, Recommendation,
        cilium::{check::Checker, types::CiliumNetworkPolicy},
        format::join_stream,
        render_objects,
    },
};

/// The CiliumNetworkPolicies of `rec`, rendered and read back (asserting the round trip and
/// one object per NetworkPolicy, same namespace and name, plus the own-node-only workloads').
pub(crate) fn cilium_policies(
    rec: &Recommendation,
    inventory: &Inventory,
) -> (Vec<CiliumNetworkPolicy>, String) {
    let objects = render_objects(PolicyFormat::Cilium, rec, inventory).unwrap();
    let yaml = join_stream(&objects);
    let policies: Vec<CiliumNetworkPolicy> = serde_saphyr::from_multiple(&yaml).unwrap();
    let again = join_stream(&render_objects(PolicyFormat::Cilium, rec, inventory).unwrap());
    assert_eq!(yaml, again, "deterministic");
    let rendered: Vec<String> = policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    let expected: Vec<String> = rec
        .policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    // One per NetworkPolicy, in order, plus one per workload whose only traffic is with its
    // own node (no NetworkPolicy needed; the hints name it).
    let extra: Vec<String> = rec
        .hints
        .iter()
        .filter(|(_, h)| h.selector.is_some())
        .map(|((ns, name), _)| format!("{ns}/{name}"))
        .collect();
    let (kept, added): (Vec<String>, Vec<String>) =
        rendered.iter().cloned().partition(|r| !extra.contains(r));
    assert_eq!(kept, expected);
    assert_eq!(added, extra);
    for p in &policies {
        assert_eq!(p.api_version, "cilium.io/v2");
        assert_eq!(p.kind, "CiliumNetworkPolicy");
    }
    let reparsed = netpol_observe_core::yaml::to_string(&policies[0]).unwrap();
    assert!(!reparsed.is_empty());
    (policies, yaml)
}

/// A checker over `policies`.
pub(crate) fn checker<'a>(
    policies: &'a [CiliumNetworkPolicy],
    inventory: &'a Inventory,
    attributor: &'a Attributor,
) -> Checker<'a> {
    Checker::new(policies, inventory, attributor)
}
