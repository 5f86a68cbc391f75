//! YAML rendering: one multi-document stream, or one stream per namespace.

use std::collections::BTreeMap;

use crate::inventory::NetworkPolicy;

/// A policy that could not be rendered (never expected: the types are plain data).
#[derive(Debug, thiserror::Error)]
#[error("cannot render NetworkPolicy {policy} as YAML: {source}")]
pub struct RenderError {
    /// The policy, `ns/name`.
    pub policy: String,
    /// What serde_yaml said.
    #[source]
    pub source: serde_yaml::Error,
}

/// The policies as one multi-document YAML stream (`---` before each document), in the given
/// order. Same policies, same bytes.
pub fn render_yaml(policies: &[NetworkPolicy]) -> Result<String, RenderError> {
    let mut out = String::new();
    for p in policies {
        let doc = serde_yaml::to_string(p).map_err(|source| RenderError {
            policy: format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            ),
            source,
        })?;
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}

/// The policies grouped per namespace (`namespace → YAML stream`), for `-o DIR`
/// (`<namespace>.yaml`).
pub fn render_by_namespace(
    policies: &[NetworkPolicy],
) -> Result<BTreeMap<String, String>, RenderError> {
    let mut groups: BTreeMap<String, Vec<NetworkPolicy>> = BTreeMap::new();
    for p in policies {
        groups
            .entry(p.metadata.namespace.clone().unwrap_or_default())
            .or_default()
            .push(p.clone());
    }
    groups
        .into_iter()
        .map(|(ns, list)| Ok((ns, render_yaml(&list)?)))
        .collect()
}
