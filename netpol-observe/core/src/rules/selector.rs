//! Label selectors: the literal matcher ([`label_selector_matches`]) and the compiled form used
//! by the engine (label keys and values interned to integers).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::SelectorError;

/// The operator of a selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

fn err(field: String, problem: impl Into<String>) -> SelectorError {
    SelectorError {
        field,
        problem: problem.into(),
    }
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_`, `.`, beginning and ending with an alphanumeric.
fn check_key(key: &str, field: String) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(err(
                field,
                format!("invalid label key {key:?}: bad prefix {p:?}"),
            ));
        }
    }
    if !is_label_name(name) || name.is_empty() {
        return Err(err(
            field,
            format!(
                "invalid label key {key:?}: the name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
            ),
        ));
    }
    Ok(())
}

/// A label value or key name: at most 63 characters, alphanumerics, `-`, `_`, `.`, beginning
/// and ending with an alphanumeric (empty is allowed for values).
fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn check_value(value: &str, field: String) -> Result<(), SelectorError> {
    if is_label_name(value) {
        Ok(())
    } else {
        Err(err(field, format!("invalid label value {value:?}")))
    }
}

/// A requirement as `(key, operator, values)`.
pub(crate) type Requirement<'a> = (&'a str, Op, Vec<&'a str>);

/// Validates a selector and returns its requirements as `(key, op, values)`.
pub(crate) fn requirements(
    selector: &LabelSelector,
) -> Result<Vec<Requirement<'_>>, SelectorError> {
    let mut out = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        check_key(k, format!("matchLabels[{k:?}]"))?;
        check_value(v, format!("matchLabels[{k:?}]"))?;
        out.push((k.as_str(), Op::In, vec![v.as_str()]));
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        check_key(&e.key, format!("matchExpressions[{i}].key"))?;
        let op = match e.operator.as_str() {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => {
                return Err(err(
                    format!("matchExpressions[{i}].operator"),
                    format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                ));
            }
        };
        let values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
        match op {
            Op::In | Op::NotIn if values.is_empty() => {
                return Err(err(
                    format!("matchExpressions[{i}].values"),
                    format!("must be non-empty for operator {}", e.operator),
                ));
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                return Err(err(
                    format!("matchExpressions[{i}].values"),
                    format!("must be empty for operator {}", e.operator),
                ));
            }
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            check_value(v, format!("matchExpressions[{i}].values[{j}]"))?;
        }
        out.push((e.key.as_str(), op, values));
    }
    Ok(out)
}

/// Whether `selector` selects an object with `labels`, with the Kubernetes semantics:
/// `matchLabels` and every `matchExpressions` requirement must hold; an empty selector selects
/// everything; `NotIn` and `DoesNotExist` hold when the key is missing. An invalid selector
/// (unknown operator, `In` without values, `Exists` with values, bad key or value) is an error.
pub fn label_selector_matches(
    selector: &LabelSelector,
    labels: &impl LabelLookup,
) -> Result<bool, SelectorError> {
    Ok(requirements(selector)?
        .into_iter()
        .all(|(key, op, values)| {
            let v = labels.label(key);
            match op {
                Op::In => v.is_some_and(|v| values.contains(&v)),
                Op::NotIn => v.is_none_or(|v| !values.contains(&v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        }))
}

/// Something labels can be read from by key: an ordinary map or the inventory's
/// [`Labels`](crate::inventory::Labels).
pub trait LabelLookup {
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Interns label keys and values to integers.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    pub(crate) fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(s.to_owned(), id);
        id
    }

    /// The id of `s`, if interned.
    pub(crate) fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// Interned labels, sorted by key id.
    pub(crate) fn labels<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = labels
            .into_iter()
            .map(|(k, v)| (self.id(k.as_ref()), self.id(v.as_ref())))
            .collect();
        out.sort_unstable();
        out
    }
}

/// One requirement with interned key and values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct InternedRequirement {
    key: u32,
    op: Op,
    values: Box<[u32]>,
}

/// A validated selector with interned keys and values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CompiledSelector {
    reqs: Box<[InternedRequirement]>,
}

impl CompiledSelector {
    /// Compiles (and validates) a selector.
    pub(crate) fn compile(
        selector: &LabelSelector,
        interner: &mut Interner,
    ) -> Result<Self, SelectorError> {
        let reqs = requirements(selector)?
            .into_iter()
            .map(|(k, op, values)| InternedRequirement {
                key: interner.id(k),
                op,
                values: values.into_iter().map(|v| interner.id(v)).collect(),
            })
            .collect();
        Ok(CompiledSelector { reqs })
    }

    /// The label keys the selector looks at.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.reqs.iter().map(|r| r.key)
    }

    /// Whether the selector selects everything (`{}`).
    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether interned `labels` (sorted by key) are selected.
    #[inline]
    pub(crate) fn matches(&self, labels: &[(u32, u32)]) -> bool {
        self.reqs.iter().all(|r| {
            let v = labels
                .binary_search_by_key(&r.key, |(k, _)| *k)
                .ok()
                .map(|i| labels[i].1);
            match r.op {
                Op::In => v.is_some_and(|v| r.values.contains(&v)),
                Op::NotIn => v.is_none_or(|v| !r.values.contains(&v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn sel(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(
                exprs
                    .iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: (!vs.is_empty())
                            .then(|| vs.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn literal_and_compiled_matchers_agree_on_every_operator() {
        let pod: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases: Vec<(LabelSelector, bool)> = vec![
            (LabelSelector::default(), true),
            (sel(&[("app", "web")], &[]), true),
            (sel(&[("app", "web"), ("tier", "back")], &[]), false),
            (sel(&[], &[("app", "In", &["api", "web"])]), true),
            (sel(&[], &[("app", "NotIn", &["web"])]), false),
            (sel(&[], &[("missing", "NotIn", &["x"])]), true),
            (sel(&[], &[("tier", "Exists", &[])]), true),
            (sel(&[], &[("missing", "Exists", &[])]), false),
            (sel(&[], &[("missing", "DoesNotExist", &[])]), true),
            (
                sel(&[("app", "web")], &[("tier", "DoesNotExist", &[])]),
                false,
            ),
        ];
        let mut interner = Interner::default();
        let interned = interner.labels(&pod);
        for (s, expected) in cases {
            assert_eq!(label_selector_matches(&s, &pod).unwrap(), expected, "{s:?}");
            assert_eq!(
                CompiledSelector::compile(&s, &mut interner)
                    .unwrap()
                    .matches(&interned),
                expected,
                "{s:?}"
            );
        }
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let pod = BTreeMap::new();
        let err = |s: LabelSelector| label_selector_matches(&s, &pod).unwrap_err().to_string();
        assert_eq!(
            err(sel(&[], &[("a", "Equals", &["x"])])),
            "field matchExpressions[0].operator: unknown operator \"Equals\" (expected In, NotIn, Exists or DoesNotExist)"
        );
        assert!(
            err(sel(&[], &[("a", "NotIn", &[])]))
                .starts_with("field matchExpressions[0].values: must be non-empty")
        );
        assert!(
            err(sel(&[], &[("a", "Exists", &["x"])]))
                .starts_with("field matchExpressions[0].values: must be empty")
        );
        assert!(
            err(sel(&[("a", "bad value!")], &[]))
                .starts_with("field matchLabels[\"a\"]: invalid label value")
        );
        assert!(err(sel(&[("-a", "x")], &[])).contains("invalid label key"));
        assert!(label_selector_matches(&sel(&[("example.com/app", "x")], &[]), &pod).is_ok());
    }

    /// Our matcher and kube-rs's `Selector` agree on every valid selector: the one place the
    /// Kubernetes semantics are written here (the engine compiles from the same requirements)
    /// is checked against the library the ecosystem uses. kube's type is not used directly:
    /// it matches only `BTreeMap`s (the inventory's labels are interned) and accepts what
    /// the API server refuses (`In` without values, `Exists` with values, bad keys).
    mod against_kube {
        use kube_core::{Selector, labels::SelectorExt};
        use proptest::prelude::*;

        use super::*;

        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["app", "tier", "example.com/team"]).prop_map(str::to_owned)
        }

        fn value() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned)
        }

        fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
            let op = prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]);
            (key(), op, prop::collection::btree_set(value(), 1..3)).prop_map(|(key, op, values)| {
                LabelSelectorRequirement {
                    key,
                    operator: op.to_owned(),
                    values: matches!(op, "In" | "NotIn").then(|| values.into_iter().collect()),
                }
            })
        }

        fn selector() -> impl Strategy<Value = LabelSelector> {
            (
                prop::option::of(prop::collection::btree_map(key(), value(), 0..3)),
                prop::option::of(prop::collection::vec(requirement(), 0..3)),
            )
                .prop_map(|(match_labels, match_expressions)| LabelSelector {
                    match_labels,
                    match_expressions,
                })
        }

        proptest! {
            #[test]
            fn same_answer_as_kube_rs(
                selector in selector(),
                labels in prop::collection::btree_map(key(), value(), 0..4),
            ) {
                let ours = label_selector_matches(&selector, &labels).unwrap();
                let kube = Selector::try_from(selector.clone()).unwrap().matches(&labels);
                prop_assert_eq!(ours, kube, "{:?} on {:?}", selector, labels);
            }
        }
    }
}
