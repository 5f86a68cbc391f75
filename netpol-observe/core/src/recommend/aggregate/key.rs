//! Group keys without owning them: a flow line read into borrowed strings ([`LineRef`]), its
//! key hashed and compared with the owned keys of the groups ([`KeyMap`]), so that a record of
//! a group already seen costs no allocation of the record's strings.
//!
//! A [`LineRef`] is exactly as strict as [`FlowRecord`]'s own reading but for strings with
//! escapes, which it cannot borrow: such a line fails here and is read the owned way.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    net::IpAddr,
};

use jiff::Timestamp;
use rustc_hash::{FxHashMap, FxHasher};
use serde::Deserialize;

use super::GroupKey;
use crate::{
    flow::{Directional, Drops, Endpoint, FlowRecord, FlowState, Protocol},
    recommend::{RecordedVerdict, judge::ConnectionKey},
};

/// A flow line read with borrowed strings: the fields of [`FlowRecord`], the same types but for
/// strings (`&str`) and the nested objects made of them.
#[derive(Debug, Deserialize)]
pub(super) struct LineRef<'a> {
    protocol: Protocol,
    #[serde(borrow)]
    src: EndpointRef<'a>,
    #[serde(borrow)]
    dst: EndpointRef<'a>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be as strict as `FlowRecord`")]
    state: Option<FlowState>,
    #[serde(default)]
    pub(super) first_seen: Option<Timestamp>,
    #[serde(default)]
    pub(super) last_seen: Option<Timestamp>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be as strict as `FlowRecord`")]
    packets: Option<Directional>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be as strict as `FlowRecord`")]
    bytes: Option<Directional>,
    #[serde(default)]
    pub(super) drops: Option<Drops>,
    #[serde(default, borrow)]
    unenforced: Option<UnenforcedRef<'a>>,
    #[serde(default, borrow)]
    node: Option<&'a str>,
    #[serde(default = "yes")]
    counted: bool,
    #[serde(default)]
    pub(super) connections: Option<u64>,
}

fn yes() -> bool {
    true
}

/// [`crate::flow::Endpoint`] with borrowed strings.
#[derive(Debug, Deserialize)]
struct EndpointRef<'a> {
    ip: IpAddr,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default, borrow)]
    service: Option<PairRef<'a>>,
    #[serde(default, borrow)]
    namespace: Option<&'a str>,
    #[serde(default, borrow)]
    pod: Option<&'a str>,
    #[serde(default, borrow)]
    workload: Option<WorkloadRefRef<'a>>,
    #[serde(default, borrow)]
    labels: Option<BTreeMap<&'a str, &'a str>>,
    #[serde(default, borrow)]
    node: Option<&'a str>,
    #[serde(default, borrow)]
    subnet: Option<&'a str>,
    #[serde(default, borrow)]
    dns_names: Vec<&'a str>,
}

/// [`crate::flow::ServiceRef`] with borrowed strings.
#[derive(Debug, Deserialize)]
struct PairRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// [`crate::flow::WorkloadRef`] with borrowed strings.
#[derive(Debug, Deserialize)]
struct WorkloadRefRef<'a> {
    kind: &'a str,
    name: &'a str,
}

/// [`crate::flow::Unenforced`] with borrowed strings.
#[derive(Debug, Deserialize)]
struct UnenforcedRef<'a> {
    policy: &'a str,
}

impl LineRef<'_> {
    /// [`crate::recommend::judge::connection_key`] of the record.
    pub(super) fn connection_key(&self) -> ConnectionKey {
        (
            self.protocol,
            self.src.ip,
            self.src.port,
            self.dst.ip,
            self.dst.port,
        )
    }
}

/// The labels of an owned or a borrowed endpoint, compared and hashed pair by pair (both maps
/// are sorted by key, one value per key).
#[derive(Debug, Clone, Copy)]
enum Labels<'a> {
    Owned(Option<&'a BTreeMap<String, String>>),
    Borrowed(Option<&'a BTreeMap<&'a str, &'a str>>),
}

impl<'a> Labels<'a> {
    fn pairs(self) -> Option<Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>> {
        match self {
            Labels::Owned(m) => {
                m.map(|m| Box::new(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))) as Box<_>)
            }
            Labels::Borrowed(m) => m.map(|m| Box::new(m.iter().map(|(k, v)| (*k, *v))) as Box<_>),
        }
    }

    fn len(self) -> usize {
        match self {
            Labels::Owned(m) => m.map_or(0, BTreeMap::len),
            Labels::Borrowed(m) => m.map_or(0, BTreeMap::len),
        }
    }
}

impl PartialEq for Labels<'_> {
    fn eq(&self, other: &Self) -> bool {
        if self.len() != other.len() {
            return false;
        }
        match (self.pairs(), other.pairs()) {
            (None, None) => true,
            (Some(a), Some(b)) => a.eq(b),
            _ => false,
        }
    }
}

impl Hash for Labels<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.len().hash(state);
        if let Some(pairs) = self.pairs() {
            for pair in pairs {
                pair.hash(state);
            }
        }
    }
}

/// The DNS names of an owned or a borrowed endpoint, compared and hashed one by one.
#[derive(Debug, Clone, Copy)]
enum Names<'a> {
    Owned(&'a [String]),
    Borrowed(&'a [&'a str]),
}

impl<'a> Names<'a> {
    fn get(self, i: usize) -> Option<&'a str> {
        match self {
            Names::Owned(n) => n.get(i).map(String::as_str),
            Names::Borrowed(n) => n.get(i).copied(),
        }
    }

    fn len(self) -> usize {
        match self {
            Names::Owned(n) => n.len(),
            Names::Borrowed(n) => n.len(),
        }
    }
}

impl PartialEq for Names<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i))
    }
}

impl Hash for Names<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.len().hash(state);
        for i in 0..self.len() {
            self.get(i).hash(state);
        }
    }
}

/// What identifies a group, borrowed from an owned [`GroupKey`] or from a [`LineRef`]: every
/// field of the record but the folded ones ([`super::Volatile`]).
#[derive(Debug, PartialEq, Hash)]
struct RecordKey<'a> {
    protocol: Protocol,
    src: EndpointKey<'a>,
    dst: EndpointKey<'a>,
    drops: Option<&'a Drops>,
    unenforced: Option<&'a str>,
    node: Option<&'a str>,
    counted: bool,
}

#[derive(Debug, PartialEq, Hash)]
struct EndpointKey<'a> {
    ip: IpAddr,
    port: Option<u16>,
    service: Option<(&'a str, &'a str)>,
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
    workload: Option<(&'a str, &'a str)>,
    labels: Labels<'a>,
    node: Option<&'a str>,
    subnet: Option<&'a str>,
    dns_names: Names<'a>,
}

impl<'a> RecordKey<'a> {
    /// The key of an owned record (its folded fields already taken out: they are `None`).
    fn owned(f: &'a FlowRecord) -> Self {
        // Every field named: a new field of the record must be placed here.
        let FlowRecord {
            protocol,
            src,
            dst,
            state: _,
            first_seen: _,
            last_seen: _,
            packets: _,
            bytes: _,
            drops,
            unenforced,
            node,
            counted,
            connections: _,
        } = f;
        RecordKey {
            protocol: *protocol,
            src: EndpointKey::owned(src),
            dst: EndpointKey::owned(dst),
            drops: drops.as_ref(),
            unenforced: unenforced.as_ref().map(|u| u.policy.as_str()),
            node: node.as_deref(),
            counted: *counted,
        }
    }

    /// The key of a line: as [`Self::owned`] of the record it reads as, once its folded fields
    /// are taken out (the source port among them).
    fn line(l: &'a LineRef<'a>) -> Self {
        let LineRef {
            protocol,
            src,
            dst,
            state: _,
            first_seen: _,
            last_seen: _,
            packets: _,
            bytes: _,
            drops,
            unenforced,
            node,
            counted,
            connections: _,
        } = l;
        RecordKey {
            protocol: *protocol,
            src: EndpointKey {
                port: None,
                ..EndpointKey::line(src)
            },
            dst: EndpointKey::line(dst),
            drops: drops.as_ref(),
            unenforced: unenforced.as_ref().map(|u| u.policy),
            node: *node,
            counted: *counted,
        }
    }
}

impl<'a> EndpointKey<'a> {
    fn owned(e: &'a Endpoint) -> Self {
        let Endpoint {
            ip,
            port,
            service,
            namespace,
            pod,
            workload,
            labels,
            node,
            subnet,
            dns_names,
        } = e;
        EndpointKey {
            ip: *ip,
            port: *port,
            service: service
                .as_ref()
                .map(|s| (s.namespace.as_str(), s.name.as_str())),
            namespace: namespace.as_deref(),
            pod: pod.as_deref(),
            workload: workload
                .as_ref()
                .map(|w| (w.kind.as_str(), w.name.as_str())),
            labels: Labels::Owned(labels.as_ref()),
            node: node.as_deref(),
            subnet: subnet.as_deref(),
            dns_names: Names::Owned(dns_names),
        }
    }

    fn line(e: &'a EndpointRef<'a>) -> Self {
        let EndpointRef {
            ip,
            port,
            service,
            namespace,
            pod,
            workload,
            labels,
            node,
            subnet,
            dns_names,
        } = e;
        EndpointKey {
            ip: *ip,
            port: *port,
            service: service.as_ref().map(|s| (s.namespace, s.name)),
            namespace: *namespace,
            pod: *pod,
            workload: workload.as_ref().map(|w| (w.kind, w.name)),
            labels: Labels::Borrowed(labels.as_ref()),
            node: *node,
            subnet: *subnet,
            dns_names: Names::Borrowed(dns_names),
        }
    }
}

/// The hash of a key.
fn hash_of(record: &RecordKey<'_>, epoch: Option<u32>, verdict: Option<&RecordedVerdict>) -> u64 {
    let mut h = FxHasher::default();
    record.hash(&mut h);
    epoch.hash(&mut h);
    verdict.hash(&mut h);
    h.finish()
}

/// The hash of an owned key, as [`KeyMap`] hashes it.
pub(super) fn hash_key(key: &GroupKey) -> u64 {
    hash_of(
        &RecordKey::owned(&key.record),
        key.epoch,
        key.verdict.as_ref(),
    )
}

/// A line's key: what it is compared and hashed by.
#[derive(Debug)]
pub(super) struct LineKey<'a> {
    record: RecordKey<'a>,
    epoch: Option<u32>,
    verdict: Option<&'a RecordedVerdict>,
    hash: u64,
}

impl<'a> LineKey<'a> {
    /// The key of `line`, in `epoch`, with the recorded `verdict`.
    pub(super) fn new(
        line: &'a LineRef<'a>,
        epoch: Option<u32>,
        verdict: Option<&'a RecordedVerdict>,
    ) -> Self {
        let record = RecordKey::line(line);
        let hash = hash_of(&record, epoch, verdict);
        LineKey {
            record,
            epoch,
            verdict,
            hash,
        }
    }

    fn is(&self, key: &GroupKey) -> bool {
        self.epoch == key.epoch
            && self.verdict == key.verdict.as_ref()
            && self.record == RecordKey::owned(&key.record)
    }
}

/// Owned group keys, each with a value, found by an owned key or a line's ([`LineKey`]).
#[derive(Debug)]
pub(super) struct KeyMap<V> {
    /// The first entry of each hash.
    first: FxHashMap<u64, u32>,
    /// Each key, its value and the next entry of the same hash (`u32::MAX`: none).
    entries: Vec<(GroupKey, V, u32)>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            first: FxHashMap::default(),
            entries: Vec::new(),
        }
    }
}

impl<V> KeyMap<V> {
    /// Whether the map is empty.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, hash: u64, mut is: impl FnMut(&GroupKey) -> bool) -> Option<&V> {
        let mut i = *self.first.get(&hash)?;
        while let Some((key, v, next)) = self.entries.get(i as usize) {
            if is(key) {
                return Some(v);
            }
            i = *next;
        }
        None
    }

    /// The value of an owned key (`hash`: its [`hash_key`]).
    pub(super) fn get(&self, hash: u64, key: &GroupKey) -> Option<&V> {
        self.find(hash, |k| k == key)
    }

    /// The value of a line's key.
    pub(super) fn get_line(&self, key: &LineKey<'_>) -> Option<&V> {
        self.find(key.hash, |k| key.is(k))
    }

    /// Adds a key not in the map (`hash`: its [`hash_key`]).
    pub(super) fn insert_new(&mut self, hash: u64, key: GroupKey, v: V) {
        let i = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        let next = self.first.insert(hash, i).unwrap_or(u32::MAX);
        self.entries.push((key, v, next));
    }

    /// Adds a key unless the map has it; whether it was added.
    pub(super) fn insert(&mut self, key: GroupKey, v: V) -> bool {
        let hash = hash_key(&key);
        if self.get(hash, &key).is_some() {
            return false;
        }
        self.insert_new(hash, key, v);
        true
    }

    /// The keys and values, in the order they were added.
    pub(super) fn into_entries(self) -> impl Iterator<Item = (GroupKey, V)> {
        self.entries.into_iter().map(|(k, v, _)| (k, v))
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line's key is the key of the record it reads as, once the folded fields are out: the
    /// same hash, equal; and a record that differs in any other field is another key.
    #[test]
    fn a_line_key_is_its_record_key() {
        let line = r#"{"protocol":"TCP","src":{"ip":"10.244.1.5","port":51234,"namespace":"shop","pod":"web-7d9c-x2","workload":{"kind":"Deployment","name":"web"},"labels":{"b":"2","app":"web","b":"3"}},"dst":{"ip":"10.96.0.20","port":80,"service":{"namespace":"shop","name":"api"},"namespace":"shop","pod":"api-5f-k1","workload":{"kind":"Deployment","name":"api"},"labels":{"app":"api"},"dns_names":["a.example","b.example"]},"state":"established","first_seen":"2026-11-22T15:00:00Z","last_seen":"2026-11-22T15:00:03Z","packets":{"sent":12,"received":10},"bytes":{"sent":1840,"received":5120},"unenforced":{"policy":"shop/x"},"node":"node-1","counted":false,"connections":3}"#;
        let key_of = |text: &str| {
            let mut f: FlowRecord = serde_json::from_str(text).unwrap();
            super::super::Volatile::take(&mut f);
            GroupKey {
                record: f,
                epoch: Some(2),
                verdict: Some(RecordedVerdict::Allowed),
            }
        };
        let key = key_of(line);
        let parsed: LineRef<'_> = serde_json::from_str(line).unwrap();
        let lk = LineKey::new(&parsed, Some(2), Some(&RecordedVerdict::Allowed));
        assert_eq!(lk.hash, hash_key(&key));
        assert!(lk.is(&key));
        let mut map = KeyMap::default();
        assert!(map.insert(key_of(line), 7));
        assert!(!map.insert(key_of(line), 8));
        assert_eq!(map.get_line(&lk), Some(&7));
        // The folded fields do not matter.
        let other_port = line
            .replace("51234", "4000")
            .replace("15:00:03", "16:00:00");
        let parsed: LineRef<'_> = serde_json::from_str(&other_port).unwrap();
        let lk = LineKey::new(&parsed, Some(2), Some(&RecordedVerdict::Allowed));
        assert_eq!(map.get_line(&lk), Some(&7));
        // Any other field does.
        for (from, to) in [
            ("\"app\":\"web\"", "\"app\":\"web2\""),
            ("\"b\":\"3\"", "\"b\":\"2\""),
            ("\"b.example\"", "\"c.example\""),
            (
                "\"dns_names\":[\"a.example\",\"b.example\"]",
                "\"dns_names\":[]",
            ),
            ("\"policy\":\"shop/x\"", "\"policy\":\"shop/y\""),
            ("\"counted\":false", "\"counted\":true"),
            ("\"node\":\"node-1\"", "\"node\":\"node-2\""),
            ("\"port\":80", "\"port\":81"),
            ("\"name\":\"api\"}", "\"name\":\"apj\"}"),
            (
                "\"kind\":\"Deployment\",\"name\":\"web\"",
                "\"kind\":\"StatefulSet\",\"name\":\"web\"",
            ),
            ("\"pod\":\"api-5f-k1\"", "\"pod\":\"api-5f-k2\""),
            ("\"ip\":\"10.96.0.20\"", "\"ip\":\"10.96.0.21\""),
            ("\"TCP\"", "\"UDP\""),
        ] {
            assert!(line.contains(from), "{from}");
            let text = line.replacen(from, to, 1);
            let parsed: LineRef<'_> = serde_json::from_str(&text).unwrap();
            let lk = LineKey::new(&parsed, Some(2), Some(&RecordedVerdict::Allowed));
            assert_eq!(map.get_line(&lk), None, "{from} -> {to}");
            assert!(map.insert(key_of(&text), 0), "{from} -> {to}");
            assert_eq!(lk.hash, hash_key(&key_of(&text)), "{from} -> {to}");
        }
        let parsed: LineRef<'_> = serde_json::from_str(line).unwrap();
        for (epoch, verdict) in [(Some(1), Some(RecordedVerdict::Allowed)), (Some(2), None)] {
            let lk = LineKey::new(&parsed, epoch, verdict.as_ref());
            assert_eq!(map.get_line(&lk), None);
        }
        // A string with an escape is not borrowed: such a line is read the owned way.
        let escaped = line.replace("\"shop/x\"", "\"shop\\/x\"");
        assert!(serde_json::from_str::<LineRef<'_>>(&escaped).is_err());
    }
}
