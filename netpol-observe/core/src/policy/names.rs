//! Names in verdict explanations (`ns/name`, `ns/name:ingress[i]`), shared rather than copied:
//! the engine interns every policy and rule name once at compile time and a verdict holds
//! reference-counted handles to them, so explaining a verdict costs no string copies. They
//! serialise exactly as the plain strings and string lists they replace.
//!
//! An "allowed" explanation is kept lazy: the verdict holds the question (which rule group,
//! peer, port; [`Names::pending`]) and the allowing rules are found, and their names looked
//! up, the first time the list is read (compared, iterated, printed, serialised), so a
//! verdict costs the same whether it names one rule or a hundred. Until then it keeps the
//! engine's tables alive; [`Names::settle`] resolves it and lets them go.

use std::{
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
    sync::{Arc, OnceLock},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::engine::Pending;
/// One name in an explanation: the inventory's shared string (cloning it copies no bytes).
pub use crate::inventory::Name;

/// The names of every rule of an engine and the policy each belongs to: what lazy
/// explanations ([`Names::pending`]) resolve against.
#[derive(Debug, Default)]
pub(crate) struct RuleNames {
    /// Rule labels (`ns/name:ingress[i]`) by global rule id.
    pub(crate) labels: Box<[Name]>,
    /// The policy (index) of each rule.
    pub(crate) policy: Box<[u32]>,
    /// Policy names by index.
    pub(crate) policies: Box<[Name]>,
}

/// Ids kept inline when there are few ([`IdList::INLINE`] or fewer), else on the heap.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdList {
    len: usize,
    inline: [u32; IdList::INLINE],
    heap: Vec<u32>,
}

impl IdList {
    /// Ids held without an allocation.
    pub(crate) const INLINE: usize = 14;

    /// Appends `id`.
    #[inline]
    pub(crate) fn push(&mut self, id: u32) {
        if self.len < Self::INLINE {
            if let Some(slot) = self.inline.get_mut(self.len) {
                *slot = id;
            }
        } else {
            if self.heap.is_empty() {
                self.heap.reserve(2 * Self::INLINE);
                self.heap.extend_from_slice(&self.inline);
            }
            self.heap.push(id);
        }
        self.len += 1;
    }

    /// The ids.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u32] {
        if self.len > Self::INLINE {
            &self.heap
        } else {
            self.inline.get(..self.len).unwrap_or(&[])
        }
    }

    /// Sorts and removes duplicates.
    pub(crate) fn sort_dedup(&mut self) {
        let slice: &mut [u32] = if self.len > Self::INLINE {
            &mut self.heap
        } else {
            self.inline.get_mut(..self.len).unwrap_or(&mut [])
        };
        slice.sort_unstable();
        let mut kept = 0;
        for i in 0..slice.len() {
            if kept == 0 || slice[i] != slice[kept - 1] {
                slice[kept] = slice[i];
                kept += 1;
            }
        }
        if self.len > Self::INLINE {
            self.heap.truncate(kept);
            if kept <= Self::INLINE {
                self.inline[..kept].copy_from_slice(&self.heap);
                self.heap = Vec::new();
            }
        }
        self.len = kept;
    }
}

impl Deref for IdList {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        self.as_slice()
    }
}

impl Extend<u32> for IdList {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, iter: I) {
        for id in iter {
            self.push(id);
        }
    }
}

/// The names of a pending list once read (boxed, so that a pending list stays small).
#[derive(Debug, Clone)]
struct Resolved(Box<[Name]>);

/// Which list of an allowed direction's explanation a pending [`Names`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    /// The labels of the allowing rules.
    Rules,
    /// The distinct policies of the allowing rules.
    Policies,
}

#[derive(Clone)]
enum Repr {
    Empty,
    Shared(Arc<[Name]>),
    /// The rule labels or the distinct policies ([`Pending::list`]) of the rules allowing a
    /// pending direction, resolved on first read.
    Pending(Pending, OnceLock<Box<Resolved>>),
}

/// The labels of the rules allowing `p` (ascending rule ids).
fn rule_labels(p: &Pending) -> Box<Resolved> {
    let names = p.names();
    Box::new(Resolved(
        p.rules()
            .iter()
            .filter_map(|r| names.labels.get(*r as usize).cloned())
            .collect(),
    ))
}

/// The distinct policies of the rules allowing `p` (rule ids ascend within policy order, so
/// equal policies are adjacent).
fn rule_policies(p: &Pending) -> Box<Resolved> {
    let names = p.names();
    let mut out: Vec<Name> = Vec::new();
    let mut last = u32::MAX;
    for r in p.rules().iter() {
        let Some(pi) = names.policy.get(*r as usize).copied() else {
            continue;
        };
        if pi != last
            && let Some(n) = names.policies.get(pi as usize)
        {
            out.push(n.clone());
            last = pi;
        }
    }
    Box::new(Resolved(out.into_boxed_slice()))
}

/// A list of [`Name`]s, shared: cloning it copies no names (the engine hands out the same
/// list, e.g. the policies isolating a group of pods, to every verdict that needs it, and
/// resolves the names of allowing rules only when the list is read). Reads as a slice
/// (`iter`, `len`, `contains`, indexing), compares with `Vec`s, arrays and slices of strings,
/// and serialises as a JSON array of strings.
#[derive(Clone)]
pub struct Names(Repr);

impl Default for Names {
    fn default() -> Self {
        Names(Repr::Empty)
    }
}

impl Names {
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Repr::Empty => true,
            Repr::Shared(n) => n.is_empty(),
            // Only an allowed direction is pending, and it has an allowing rule.
            Repr::Pending(..) => false,
        }
    }

    /// Resolves a pending explanation into a plain list of names, releasing the engine's
    /// tables it kept alive: for verdicts that are stored.
    pub fn settle(&mut self) {
        if let Repr::Pending(..) = self.0 {
            let names: Vec<Name> = self.iter().cloned().collect();
            *self = Names::from(names);
        }
    }

    /// The names as owned strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(|n| n.as_str().to_owned()).collect()
    }

    /// The explanation of an allowed direction, found when first read: the rule labels and
    /// the distinct policies of the rules `pending` finds, resolved against its names. Each
    /// list holds the question inline (no allocation until it is read) and one reference to
    /// the engine's tables. Returns (policies, rules).
    pub(crate) fn pending(pending: Pending) -> (Names, Names) {
        let mut policies = pending.clone();
        policies.list = List::Policies;
        let mut rules = pending;
        rules.list = List::Rules;
        (
            Names(Repr::Pending(policies, OnceLock::new())),
            Names(Repr::Pending(rules, OnceLock::new())),
        )
    }
}

impl Deref for Names {
    type Target = [Name];
    fn deref(&self) -> &[Name] {
        match &self.0 {
            Repr::Empty => &[],
            Repr::Shared(n) => n,
            Repr::Pending(p, r) => {
                &r.get_or_init(|| match p.list {
                    List::Rules => rule_labels(p),
                    List::Policies => rule_policies(p),
                })
                .0
            }
        }
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        **self == **other
    }
}

impl Eq for Names {}

impl Hash for Names {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a Name;
    type IntoIter = std::slice::Iter<'a, Name>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<Name> for Names {
    fn from_iter<I: IntoIterator<Item = Name>>(iter: I) -> Self {
        let v: Vec<Name> = iter.into_iter().collect();
        Names::from(v)
    }
}

impl From<Vec<Name>> for Names {
    fn from(v: Vec<Name>) -> Self {
        if v.is_empty() {
            Names(Repr::Empty)
        } else {
            Names(Repr::Shared(v.into()))
        }
    }
}

impl From<Vec<String>> for Names {
    fn from(v: Vec<String>) -> Self {
        v.into_iter().map(Name::from).collect()
    }
}

impl From<Vec<&str>> for Names {
    fn from(v: Vec<&str>) -> Self {
        v.into_iter().map(Name::from).collect()
    }
}

impl<T: AsRef<str>> PartialEq<[T]> for Names {
    fn eq(&self, other: &[T]) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other)
                .all(|(a, b)| a.as_str() == b.as_ref())
    }
}

impl<T: AsRef<str>> PartialEq<&[T]> for Names {
    fn eq(&self, other: &&[T]) -> bool {
        *self == **other
    }
}

impl<T: AsRef<str>> PartialEq<Vec<T>> for Names {
    fn eq(&self, other: &Vec<T>) -> bool {
        *self == **other
    }
}

impl<T: AsRef<str>, const N: usize> PartialEq<[T; N]> for Names {
    fn eq(&self, other: &[T; N]) -> bool {
        *self == other[..]
    }
}

impl Serialize for Names {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Name>::deserialize(deserializer).map(Names::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_hold_few_inline_and_many_on_the_heap() {
        for n in [0usize, 1, 13, 14, 15, 40] {
            let mut l = IdList::default();
            // Every id twice, descending: sorted and deduplicated to 0..n.
            l.extend((0..n as u32).rev().flat_map(|i| [i, i]));
            assert_eq!(l.len(), 2 * n);
            l.sort_dedup();
            assert_eq!(
                l.as_slice(),
                (0..n as u32).collect::<Vec<_>>().as_slice(),
                "{n}"
            );
            l.push(99);
            assert_eq!(l.last(), Some(&99));
            assert_eq!(l.len(), n + 1);
        }
    }

    #[test]
    fn names_compare_and_serialise_as_strings() {
        let n = Names::from(vec!["a/x", "b/y"]);
        assert_eq!(n, vec!["a/x", "b/y"]);
        assert_eq!(n, ["a/x".to_string(), "b/y".to_string()]);
        assert_ne!(n, ["a/x"]);
        assert!(n.iter().any(|p| p == "b/y"));
        assert!(n.contains(&Name::from("a/x")));
        assert_eq!(serde_json::to_string(&n).unwrap(), r#"["a/x","b/y"]"#);
        let back: Names = serde_json::from_str(r#"["a/x","b/y"]"#).unwrap();
        assert_eq!(back, n);
        assert_eq!(format!("{n:?}"), r#"["a/x", "b/y"]"#);
        assert!(Names::default().is_empty());
        assert_eq!(Names::from(Vec::<String>::new()), Names::default());
        assert_eq!(n.join(","), "a/x,b/y");
    }
}
