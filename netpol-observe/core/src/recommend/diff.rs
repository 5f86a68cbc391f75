//! `recommend --diff`: the policies in force against the observed traffic — flows they deny,
//! and rules never exercised in the window (candidates for tightening).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    DENIED_NOTE, DeniedInForce,
    verify::{VerifyReport, verify_with},
};
use crate::{
    flow::FlowRecord,
    inventory::{Inventory, NetworkPolicy},
    policy::PolicyEngine,
};

/// What the current policies say about the observed flows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    /// Number of current policies.
    pub current_policies: usize,
    /// The observed flows the current policies deny.
    pub denied: VerifyReport,
    /// Rules (`ns/name:ingress[i]`, `ns/name:egress[i]`) no observed flow used, sorted.
    pub unused_rules: Vec<String>,
    /// What each unused rule allows, by rule (`to app=api TCP 8080`,
    /// [`rule_text`](super::rule_text)): NetworkPolicy rules have no names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unused_rule_descriptions: BTreeMap<String, String>,
    /// Policies and rule peers whose selectors match no pod
    /// ([`selects_nothing`](super::verify::selects_nothing)): not merely unexercised, they
    /// cannot match anything in the cluster as it is.
    #[serde(default)]
    pub selects_nothing: Vec<String>,
    /// The flows the policies in force denied, as the recommendation judged them
    /// ([`Recommendation::denied`](super::Recommendation::denied), set by `recommend --diff`):
    /// those not learned get no allow rule in the recommended policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_in_force: Vec<DeniedInForce>,
}

impl DiffReport {
    /// The human summary.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "current policies: {}\n\nobserved flows the current policies deny:\n",
            self.current_policies
        );
        if self.denied.denied.is_empty() {
            s.push_str("  none\n");
        }
        for d in &self.denied.denied {
            let port = d.port.map(|p| format!(":{p}")).unwrap_or_default();
            s.push_str(&format!(
                "  {} -> {}{port}/{} ({} flow(s))\n",
                d.src, d.dst, d.protocol, d.count
            ));
        }
        if !self.denied_in_force.is_empty() {
            s.push_str(&format!(
                "\n{DENIED_NOTE} — review (those not learned get no allow rule in the recommended policies):\n"
            ));
            for d in &self.denied_in_force {
                s.push_str(&format!("  {}\n", d.note()));
            }
        }
        s.push_str("\nrules never exercised in the window (candidates for tightening):\n");
        if self.unused_rules.is_empty() {
            s.push_str("  none\n");
        }
        for r in &self.unused_rules {
            let prefix = format!("{r} ");
            let empty = self
                .selects_nothing
                .iter()
                .any(|w| w.starts_with(&prefix) || w.starts_with(&format!("{r}:")));
            let mut what: Vec<&str> = self
                .unused_rule_descriptions
                .get(r)
                .map(String::as_str)
                .into_iter()
                .collect();
            if empty {
                what.push("selects no pod");
            }
            match what.as_slice() {
                [] => s.push_str(&format!("  {r}\n")),
                what => s.push_str(&format!("  {r} ({})\n", what.join("; "))),
            }
        }
        s.push_str("\nselectors that match no pod (a typo in a label or namespace?):\n");
        if self.selects_nothing.is_empty() {
            s.push_str("  none\n");
        }
        for w in &self.selects_nothing {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s
    }
}

/// Compares `current` (compiled in `engine` against `inventory`) with the attributed `flows`.
pub fn diff(
    current: &[NetworkPolicy],
    inventory: &Inventory,
    engine: &PolicyEngine,
    flows: &[FlowRecord],
) -> DiffReport {
    diff_weighted(current, inventory, engine, flows.iter().map(|f| (f, 1)))
}

/// [`diff`] of attributed flows each standing for a number of records (the groups of a
/// [`FlowAggregate`](super::FlowAggregate), [`records_weighted`](super::FlowAggregate::records_weighted)):
/// the same report as from the records themselves.
pub fn diff_weighted<'f>(
    current: &[NetworkPolicy],
    inventory: &Inventory,
    engine: &PolicyEngine,
    flows: impl IntoIterator<Item = (&'f FlowRecord, u64)>,
) -> DiffReport {
    let mut used: BTreeSet<String> = BTreeSet::new();
    let denied = verify_with(engine, flows, |v| {
        for side in [&v.ingress, &v.egress] {
            for r in &side.rules {
                if !used.contains(&**r) {
                    used.insert(r.to_string());
                }
            }
        }
    });
    let mut unused = Vec::new();
    let mut descriptions = BTreeMap::new();
    for p in current {
        let id = crate::policy::policy_id(p);
        let Some(spec) = &p.spec else { continue };
        let types = crate::policy::policy_types(p);
        let n_in = spec.ingress.as_ref().map_or(0, Vec::len);
        let n_out = spec.egress.as_ref().map_or(0, Vec::len);
        for (dir, n, on) in [("ingress", n_in, types.0), ("egress", n_out, types.1)] {
            for i in 0..n {
                let label = format!("{id}:{dir}[{i}]");
                if on && !used.contains(&label) {
                    let text = match dir {
                        "ingress" => spec
                            .ingress
                            .as_ref()
                            .and_then(|r| r.get(i))
                            .map(super::rule_text::ingress),
                        _ => spec
                            .egress
                            .as_ref()
                            .and_then(|r| r.get(i))
                            .map(super::rule_text::egress),
                    };
                    if let Some(text) = text {
                        descriptions.insert(label.clone(), text);
                    }
                    unused.push(label);
                }
            }
        }
    }
    unused.sort();
    let selects_nothing = super::verify::selects_nothing(current, inventory);
    DiffReport {
        current_policies: current.len(),
        denied,
        unused_rules: unused,
        unused_rule_descriptions: descriptions,
        selects_nothing,
        denied_in_force: Vec::new(),
    }
}
