//! YAML rendering: one multi-document stream, or one stream per namespace.

use std::collections::BTreeMap;

use crate::inventory::NetworkPolicy;

/// A policy that could not be rendered (never expected: the types are plain data).
#[derive(Debug, thiserror::Error)]
#[error("cannot render NetworkPolicy {policy} as YAML")]
pub struct RenderError {
    /// The policy, `ns/name`.
    pub policy: String,
    /// What the YAML writer said.
    #[source]
    pub source: serde_saphyr::SerializeError,
}

/// The policies as one multi-document YAML stream (`---` before each document), in the given
/// order. Same policies, same bytes.
pub fn render_yaml(policies: &[NetworkPolicy]) -> Result<String, RenderError> {
    let mut out = String::new();
    for p in policies {
        let doc = crate::yaml::to_string(p).map_err(|source| RenderError {
            policy: format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            ),
            source,
        })?;
        out.push_str("---\n");
        out.push_str(&quote_timestamps(&doc));
    }
    Ok(out)
}

/// The evidence annotations holding timestamps, double-quoted: a YAML 1.1 reader (PyYAML, older
/// Go YAML) turns a plain timestamp into a datetime, which Kubernetes rejects as an annotation
/// value. The writer already quotes a lone RFC 3339 instant; the window (`start/end`) is not a
/// timestamp to any reader, and is quoted all the same so that every evidence time reads alike.
pub(crate) fn quote_timestamps(doc: &str) -> String {
    use super::annotations::{FIRST_SEEN, LAST_SEEN, WINDOW};
    let mut out = String::with_capacity(doc.len() + 64);
    for line in doc.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let quoted = [FIRST_SEEN, LAST_SEEN, WINDOW].iter().find_map(|key| {
            let value = trimmed.strip_prefix(key)?.strip_prefix(": ")?;
            let value = value.trim_end_matches('\n');
            // Our values are RFC 3339 instants (and `start/end`): nothing to escape.
            let plain = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '+' | '.' | '/'));
            plain.then(|| format!("{indent}{key}: \"{value}\"\n"))
        });
        match quoted {
            Some(q) => out.push_str(&q),
            None => out.push_str(line),
        }
    }
    out
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
