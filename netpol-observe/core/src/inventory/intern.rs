//! Shared, immutable pieces of the inventory: [`Name`] (a shared string), [`Labels`] (a sorted,
//! shared label set) and the [`Interner`] an inventory build uses so that identical strings,
//! label sets, workloads and container-port lists are stored once.
//!
//! Pods of one workload differ only in a few labels (`pod-template-hash`, the StatefulSet pod
//! name), so whole label sets are interned, as are the workload's selector labels, the
//! namespace, node and workload names, label keys and values, and the container-port lists.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    fmt,
    hash::Hash,
    ops::Deref,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::ContainerPortInfo;
use crate::flow::WorkloadRef;

/// A shared immutable string (namespace, pod, node name…): one pointer and a length, the text
/// shared between every holder. Compares, hashes and orders as its text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(Arc<str>);

impl Name {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Arc::from(s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name(Arc::from(s.as_str()))
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

/// Labels as Kubernetes stores them (a map of keys to values), immutable and shared: pairs
/// sorted by key, keys unique, behind one `Arc` (cloning is a reference count). Compares,
/// hashes and orders by content.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Arc<[(Name, Name)]>);

impl Default for Labels {
    fn default() -> Self {
        Labels(Arc::from(Vec::new()))
    }
}

impl crate::rules::LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl Labels {
    /// Labels from pairs that are already sorted by key with unique keys.
    fn from_sorted(pairs: Vec<(Name, Name)>) -> Self {
        Labels(Arc::from(pairs))
    }

    /// Labels from pairs in any order; for a repeated key the last value wins (as inserting
    /// into a map would).
    fn from_pairs(mut pairs: Vec<(Name, Name)>) -> Self {
        // Stable sort keeps insertion order among equal keys; keep the last of each run.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Name, Name)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Labels::from_sorted(out)
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Whether label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The labels as `(key, value)`, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The label keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as an ordinary map (for Kubernetes objects, e.g. a generated selector).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// These labels with `key` set to `value` (a new set; the original is unchanged).
    pub fn with(&self, key: &str, value: &str) -> Labels {
        let mut pairs = self.0.to_vec();
        pairs.push((Name::from(key), Name::from(value)));
        Labels::from_pairs(pairs)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Name, Name)>,
        fn(&'a (Name, Name)) -> (&'a str, &'a str),
    >;
    fn into_iter(self) -> Self::IntoIter {
        fn pair(p: &(Name, Name)) -> (&str, &str) {
            (p.0.as_str(), p.1.as_str())
        }
        self.0.iter().map(pair)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Labels::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (Name::from(k.as_ref()), Name::from(v.as_ref())))
                .collect(),
        )
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Labels {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.iter().collect()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        map.iter().collect()
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Labels::from)
    }
}

/// Interns the pieces of one inventory build: identical strings, label sets, workloads and
/// container-port lists come out as clones of one shared value. Owned by the build (files or
/// live snapshot); dropping it frees nothing the inventory still holds.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Name>,
    label_sets: HashSet<Labels>,
    workloads: HashSet<Arc<WorkloadRef>>,
    ports: HashSet<Arc<[ContainerPortInfo]>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn name(&mut self, s: &str) -> Name {
        if let Some(n) = self.strings.get(s) {
            return n.clone();
        }
        let n = Name::from(s);
        self.strings.insert(n.clone());
        n
    }

    /// The shared copy of the label set `pairs` (any order; the last value of a repeated key
    /// wins), keys and values interned too.
    pub fn labels<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
        let pairs: Vec<(Name, Name)> = pairs
            .into_iter()
            .map(|(k, v)| (self.name(k), self.name(v)))
            .collect();
        self.intern_labels(Labels::from_pairs(pairs))
    }

    /// The shared copy of a label map.
    pub(crate) fn labels_of(&mut self, map: &BTreeMap<String, String>) -> Labels {
        self.labels(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The shared copy of a label set already built.
    pub(crate) fn intern_labels(&mut self, labels: Labels) -> Labels {
        if let Some(l) = self.label_sets.get(&labels) {
            return l.clone();
        }
        // Keys and values through the string pool, so that sets that differ in one label
        // still share the others' text.
        let pairs: Vec<(Name, Name)> = labels
            .0
            .iter()
            .map(|(k, v)| (self.name(k), self.name(v)))
            .collect();
        let labels = Labels::from_sorted(pairs);
        self.label_sets.insert(labels.clone());
        labels
    }

    /// The shared copy of workload `kind`/`name`.
    pub fn workload(&mut self, kind: &str, name: &str) -> Arc<WorkloadRef> {
        let w = WorkloadRef {
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        if let Some(shared) = self.workloads.get(&w) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(w);
        self.workloads.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets the values that only the interner still holds, so that a long-lived interner
    /// keeps only what is in use (label sets first: the strings they held are then free).
    pub fn prune(&mut self) {
        self.label_sets.retain(|l| Arc::strong_count(&l.0) > 1);
        self.workloads.retain(|w| Arc::strong_count(w) > 1);
        self.ports.retain(|p| Arc::strong_count(p) > 1);
        self.strings.retain(|s| Arc::strong_count(&s.0) > 1);
    }

    /// How many values the interner holds.
    pub fn len(&self) -> usize {
        self.strings.len() + self.label_sets.len() + self.workloads.len() + self.ports.len()
    }

    /// Whether the interner holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shared copy of a container-port list.
    pub fn ports(&mut self, ports: Vec<ContainerPortInfo>) -> Arc<[ContainerPortInfo]> {
        if let Some(shared) = self.ports.get(ports.as_slice()) {
            return Arc::clone(shared);
        }
        let shared: Arc<[ContainerPortInfo]> = Arc::from(ports);
        self.ports.insert(Arc::clone(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_behave_as_a_map() {
        let l: Labels = [("b", "2"), ("a", "1"), ("b", "3")].into();
        assert_eq!(l.len(), 2);
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("c"), None);
        assert!(l.contains_key("a"));
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "3")]);
        let map = BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".into(), "3".into())]);
        assert_eq!(Labels::from(&map), l);
        assert_eq!(l.to_map(), map);
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"a":"1","b":"3"}"#);
        assert_eq!(
            serde_json::from_str::<Labels>(r#"{"b":"3","a":"1"}"#).unwrap(),
            l
        );
        assert_eq!(l.with("c", "4").get("c"), Some("4"));
        assert!(Labels::default().is_empty());
    }

    #[test]
    fn the_interner_shares_identical_sets_and_strings() {
        let mut i = Interner::default();
        let a = i.labels([("app", "web"), ("tier", "front")]);
        let b = i.labels([("tier", "front"), ("app", "web")]);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let c = i.labels([("app", "web")]);
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        assert!(Arc::ptr_eq(&a.0[0].1.0, &c.0[0].1.0));
        let n1 = i.name("ns-1");
        let n2 = i.name("ns-1");
        assert!(Arc::ptr_eq(&n1.0, &n2.0));
        let w1 = i.workload("Deployment", "web");
        let w2 = i.workload("Deployment", "web");
        assert!(Arc::ptr_eq(&w1, &w2));
    }

    #[test]
    fn pruning_keeps_exactly_what_is_held_elsewhere() {
        let mut i = Interner::default();
        let kept = i.labels([("app", "web")]);
        let gone = i.labels([("app", "db"), ("tier", "back")]);
        let w = i.workload("Deployment", "web");
        let p = i.ports(vec![]);
        drop(i.ports(vec![ContainerPortInfo {
            name: None,
            port: 80,
            protocol: crate::flow::Protocol::Tcp,
        }]));
        drop(i.workload("Job", "once"));
        drop(gone);
        // app, web, db, tier, back; 2 sets; 2 workloads; 2 port lists.
        assert_eq!(i.len(), 11);
        i.prune();
        // app, web; 1 set; 1 workload; 1 port list.
        assert_eq!(i.len(), 5);
        assert!(Arc::ptr_eq(&i.labels([("app", "web")]).0, &kept.0));
        assert!(Arc::ptr_eq(&i.workload("Deployment", "web"), &w));
        assert!(Arc::ptr_eq(&i.ports(vec![]), &p));
        assert!(!i.is_empty());
    }
}
