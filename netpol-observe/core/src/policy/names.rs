//! Names in verdict explanations (`ns/name`, `ns/name:ingress[i]`), shared rather than copied:
//! the engine interns every policy and rule name once at compile time and a verdict holds
//! reference-counted handles to them, so explaining a verdict costs no string copies. They
//! serialise exactly as the plain strings and string lists they replace.
//!
//! An explanation is a value: it is complete when the verdict is made and holds nothing of
//! the engine. The commonest lists (one allowing rule, one policy, every policy of the group)
//! are lists the engine made at compile time and shares ([`RuleNames::explain`]).

use std::{
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One name in an explanation: the inventory's shared string (cloning it copies no bytes).
pub use crate::inventory::Name;

/// The names of every rule of an engine and the policy each belongs to, and the one-name
/// lists an explanation shares ([`RuleNames::explain`]).
#[derive(Debug, Default)]
pub(crate) struct RuleNames {
    /// Rule labels (`ns/name:ingress[i]`) by global rule id.
    labels: Box<[Name]>,
    /// Per rule, the list of its label alone.
    label_lists: Box<[Names]>,
    /// The policy (index) of each rule.
    policy: Box<[u32]>,
    /// Per policy (index), the list of its name alone.
    policy_lists: Box<[Names]>,
}

impl RuleNames {
    /// The names of rules labelled `labels` (by global id) of policies `policy` (per rule,
    /// an index into `policies`, the policy names).
    pub(crate) fn new(labels: Box<[Name]>, policy: Box<[u32]>, policies: &[Name]) -> Self {
        RuleNames {
            label_lists: labels.iter().map(|l| Names::one(l.clone())).collect(),
            labels,
            policy,
            policy_lists: policies.iter().map(|p| Names::one(p.clone())).collect(),
        }
    }

    /// The explanation of an allowed direction, as (policies, rules): the labels of the
    /// allowing rules `rules` (global ids, ascending) and their distinct policies. `group`
    /// lists every policy of the direction's group (sorted): shared when all of them allow,
    /// as one rule's label or one policy's name is shared when it is alone.
    pub(crate) fn explain(&self, rules: &[u32], group: &Names) -> (Names, Names) {
        let rule_names = match rules {
            [] => Names::default(),
            [r] => self
                .label_lists
                .get(*r as usize)
                .cloned()
                .unwrap_or_default(),
            // Ids come from the engine's tables: every one is a rule (one allocation).
            many => Names(Repr::Shared(
                many.iter()
                    .map(|r| self.labels[*r as usize].clone())
                    .collect(),
            )),
        };
        // Rule ids ascend within policy order: equal policies are adjacent.
        let policy_of = |r: &u32| self.policy.get(*r as usize).copied();
        let mut distinct = 0usize;
        let mut last = None;
        for p in rules.iter().map(policy_of) {
            if p != last {
                distinct += 1;
                last = p;
            }
        }
        let policies = if distinct == 1 {
            last.and_then(|p| self.policy_lists.get(p as usize).cloned())
                .unwrap_or_default()
        } else if distinct == group.len() {
            group.clone()
        } else {
            let mut out = Vec::with_capacity(distinct);
            let mut last = None;
            for p in rules.iter().filter_map(policy_of) {
                if Some(p) != last
                    && let Some(n) = self.policy_lists.get(p as usize).and_then(|l| l.first())
                {
                    out.push(n.clone());
                    last = Some(p);
                }
            }
            Names::from(out)
        };
        (policies, rule_names)
    }
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

#[derive(Clone)]
enum Repr {
    Empty,
    Shared(Arc<[Name]>),
}

/// A list of [`Name`]s, shared: cloning it copies no names (the engine hands out the same
/// list, e.g. the policies isolating a group of pods, to every verdict that needs it). Reads as a slice
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
        }
    }

    /// The names as owned strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(|n| n.as_str().to_owned()).collect()
    }

    /// The list of `name` alone.
    pub(crate) fn one(name: Name) -> Names {
        Names(Repr::Shared(Arc::from([name])))
    }
}

impl Deref for Names {
    type Target = [Name];
    fn deref(&self) -> &[Name] {
        match &self.0 {
            Repr::Empty => &[],
            Repr::Shared(n) => n,
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
