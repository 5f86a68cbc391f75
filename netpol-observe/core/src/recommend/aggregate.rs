//! The recommender's input as a stream: each record is folded into a [`FlowAggregate`] as it is
//! read, then dropped, so the memory depends on the distinct connections between workloads,
//! not on the number of records.
//!
//! Records that differ only in what the recommendation does not depend on are one group: the
//! source port, `first_seen`/`last_seen` within one *epoch* of the inventory (the times at
//! which pods were created or deleted cut time into epochs; every time-dependent lookup — a
//! pod by address or name, the policy engine's — compares a time with those instants only),
//! the connection count, packets, bytes and `state`. A group is replayed as one record: the
//! first record of the group with the earliest first seen, the latest last seen and the sum of
//! the connections, standing for the group's number of records (the left-out, implicit and
//! denied counts are counts of records). The groups keep the order of their first record, so
//! everything that takes "the first record such that…" (an edge's example, a workload's
//! selector, the first reason) takes the same record.
//!
//! The exception is the judgement of flows the policies in force denied: it joins the copies
//! of one connection (same protocol, addresses *and ports*) and reads their `state` and
//! packets. Records with such evidence (drops of a filter, a recorded denying verdict, the
//! inventory's policies denying their group) are kept whole, and so is every other record of
//! their connections: when a pass finds evidence it did not know of, the input is read again
//! ([`Pass::Again`]) with those connections known, until nothing new is found (at most a few
//! passes, and one when nothing was denied).

mod key;

use std::{
    io::BufRead,
    path::Path,
    sync::{PoisonError, RwLock},
};

use jiff::Timestamp;
use rustc_hash::FxHashSet;

use super::{
    Recommender, RecordedFlows, RecordedVerdict,
    judge::{self, ConnectionKey},
    needs_attribution,
    sources::recorded_verdict,
};
use crate::flow::{
    Directional, FlowRecord, FlowState,
    jsonl::{self, FlowLineError, TextLine},
};
use key::{KeyMap, LineKey, LineRef};

/// The input records of a recommendation, folded: what [`Recommender::recommend_aggregate`]
/// needs, in memory independent of the number of records for a given set of connections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowAggregate {
    /// One record per group, in the order of the groups' first records.
    pub(crate) flows: Vec<FlowRecord>,
    /// The verdict the source recorded (the same for the whole group).
    pub(crate) verdicts: Vec<Option<RecordedVerdict>>,
    /// The records each group stands for.
    pub(crate) weights: Vec<u64>,
    /// The first record of each group, as read.
    pub(crate) firsts: Vec<FlowRecord>,
    /// Records read.
    pub(crate) records: usize,
}

impl FlowAggregate {
    /// Records read (each counted once, however many are alike).
    pub fn records(&self) -> usize {
        self.records
    }

    /// Groups of records kept.
    pub fn groups(&self) -> usize {
        self.flows.len()
    }

    /// Each group's first record as read, with the number of records it stands for: for
    /// checks that evaluate every record against policies (`recommend --diff`, the
    /// ClusterNetworkPolicy self-check), which give every record of a group the same verdict.
    pub fn records_weighted(&self) -> impl Iterator<Item = (&FlowRecord, u64)> {
        self.firsts.iter().zip(self.weights.iter().copied())
    }
}

/// What a pass over the input gave ([`Aggregator::finish`]).
#[derive(Debug)]
pub enum Pass<'r, 'i> {
    /// The aggregate is complete.
    Done(FlowAggregate),
    /// The pass found denied connections it had folded: read the same input again into this
    /// aggregator (bad lines were already reported).
    Again(Aggregator<'r, 'i>),
}

/// The fields a group folds (those of its first record).
#[derive(Debug, Clone)]
struct Volatile {
    src_port: Option<u16>,
    first_seen: Option<Timestamp>,
    last_seen: Option<Timestamp>,
    connections: Option<u64>,
    packets: Option<Directional>,
    bytes: Option<Directional>,
    state: Option<FlowState>,
}

impl Volatile {
    /// Takes the folded fields out of `f`.
    fn take(f: &mut FlowRecord) -> Self {
        Volatile {
            src_port: f.src.port.take(),
            first_seen: f.first_seen.take(),
            last_seen: f.last_seen.take(),
            connections: f.connections.take(),
            packets: f.packets.take(),
            bytes: f.bytes.take(),
            state: f.state.take(),
        }
    }

    fn put(&self, f: &mut FlowRecord) {
        f.src.port = self.src_port;
        f.first_seen = self.first_seen;
        f.last_seen = self.last_seen;
        f.connections = self.connections;
        f.packets = self.packets;
        f.bytes = self.bytes;
        f.state = self.state;
    }
}

/// What identifies a group: the record without its folded fields, the epoch of its time and
/// the recorded verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    record: FlowRecord,
    epoch: Option<u32>,
    verdict: Option<RecordedVerdict>,
}

/// What a group adds up of its records: commutative and associative, so the records of a
/// group may be added up in parts (on the workers of [`Aggregator::fold_reader`]) and the parts
/// added in any order.
#[derive(Debug, Clone, Copy)]
struct Tally {
    records: u64,
    connections: u64,
    first_at: Option<Timestamp>,
    last_at: Option<Timestamp>,
}

impl Tally {
    /// The tally of one record.
    fn of(v: &Volatile) -> Self {
        Tally::new(v.connections, v.first_seen, v.last_seen)
    }

    /// The tally of one record of these fields.
    fn new(
        connections: Option<u64>,
        first_seen: Option<Timestamp>,
        last_seen: Option<Timestamp>,
    ) -> Self {
        Tally {
            records: 1,
            connections: connections.unwrap_or(1),
            first_at: first_seen.or(last_seen),
            last_at: last_seen.or(first_seen),
        }
    }

    fn add(&mut self, o: &Tally) {
        self.records += o.records;
        self.connections += o.connections;
        if let Some(t) = o.first_at {
            self.first_at = Some(self.first_at.map_or(t, |c| c.min(t)));
        }
        if let Some(t) = o.last_at {
            self.last_at = Some(self.last_at.map_or(t, |c| c.max(t)));
        }
    }
}

#[derive(Debug)]
struct Group {
    /// The key of a record kept whole (the others' keys are in the index).
    whole: Option<GroupKey>,
    first: Volatile,
    tally: Tally,
}

impl Group {
    fn new(first: Volatile, whole: Option<GroupKey>) -> Self {
        Group {
            whole,
            tally: Tally::of(&first),
            first,
        }
    }

    /// The record replayed for the group: its first record, with the group's times and
    /// connections when it stands for several.
    fn replayed(&self, key: &GroupKey) -> FlowRecord {
        let mut f = key.record.clone();
        self.first.put(&mut f);
        if self.tally.records > 1 {
            f.first_seen = self.tally.first_at;
            f.last_seen = self.tally.last_at;
            f.connections = Some(self.tally.connections);
        }
        f
    }

    fn first_record(&self, key: &GroupKey) -> FlowRecord {
        let mut f = key.record.clone();
        self.first.put(&mut f);
        f
    }
}

/// What the readers of one pass share: read only, but for the index, which only the folding
/// thread writes ([`Aggregator::fold_reader`]'s workers read it).
#[derive(Debug)]
struct Shared {
    /// The instants pods were created or deleted, sorted.
    breakpoints: Vec<Timestamp>,
    /// Connections whose every record is kept whole (found denied by an earlier pass).
    keep_connections: FxHashSet<ConnectionKey>,
    /// Groups whose every record is kept whole (the inventory's policies deny them).
    keep_groups: KeyMap<()>,
    /// The group of each key (but the groups kept whole).
    index: RwLock<KeyMap<u32>>,
}

impl Shared {
    /// The key of a record, the fields the group folds, and whether the record is kept whole.
    fn key(
        &self,
        mut f: FlowRecord,
        verdict: Option<RecordedVerdict>,
    ) -> (GroupKey, Volatile, bool) {
        let epoch = self.epoch(f.seen_at());
        let evidence = matches!(verdict, Some(RecordedVerdict::Denied(_)))
            || judge::dropped(&f).is_some()
            || (!self.keep_connections.is_empty()
                && self.keep_connections.contains(&judge::connection_key(&f)));
        let first = Volatile::take(&mut f);
        let key = GroupKey {
            record: f,
            epoch,
            verdict,
        };
        let whole = evidence
            || (!self.keep_groups.is_empty()
                && self.keep_groups.get(key::hash_key(&key), &key).is_some());
        (key, first, whole)
    }

    /// The epoch of a record first (or last) seen at `t`.
    fn epoch(&self, t: Option<Timestamp>) -> Option<u32> {
        t.map(|t| u32::try_from(self.breakpoints.partition_point(|b| *b <= t)).unwrap_or(u32::MAX))
    }

    /// A worker's part of [`Aggregator::fold_reader`]: one batch of lines read and keyed, and
    /// the groups the index already has looked up.
    ///
    /// A line is first read with borrowed strings ([`LineRef`]): when its key is a group of the
    /// index, that is all (the names of a key in the index were checked). The others — a new
    /// group, a record kept whole (drops, a denying verdict, a connection found denied), a
    /// line with escaped strings or a bad line — are read again as records, as
    /// [`Aggregator::push`] reads them, their names checked.
    fn fold_batch(&self, path: &Path, lines: Vec<TextLine>) -> Vec<Folded> {
        let lines: Vec<TextLine> = lines
            .into_iter()
            .filter(|(_, l)| l.as_ref().map_or(true, |t| !t.trim().is_empty()))
            .collect();
        // The lines that may be records of a group already seen, read with borrowed strings.
        let read: Vec<Option<(LineRef<'_>, Option<RecordedVerdict>)>> = lines
            .iter()
            .map(|(_, line)| {
                let text = line.as_ref().ok()?;
                let r: LineRef<'_> = serde_json::from_str(text).ok()?;
                let v = recorded_verdict(text).ok()?;
                let evidence = r.drops.is_some()
                    || matches!(v, Some(RecordedVerdict::Denied(_)))
                    || (!self.keep_connections.is_empty()
                        && self.keep_connections.contains(&r.connection_key()));
                (!evidence).then_some((r, v))
            })
            .collect();
        let keys: Vec<Option<LineKey<'_>>> = read
            .iter()
            .map(|r| {
                r.as_ref().map(|(r, v)| {
                    LineKey::new(r, self.epoch(r.first_seen.or(r.last_seen)), v.as_ref())
                })
            })
            .collect();
        // One read of the index for the batch. A key in the index is not one of the groups kept
        // whole: a key enters the index only from a record `Self::key` did not keep whole.
        let found: Vec<Option<u32>> = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            keys.iter()
                .map(|k| match k {
                    Some(k) if !index.is_empty() => index.get_line(k).copied(),
                    _ => None,
                })
                .collect()
        };
        let hits: Vec<Option<(u32, Tally)>> = found
            .into_iter()
            .zip(&read)
            .map(|(found, r)| {
                let (r, _) = r.as_ref()?;
                Some((found?, Tally::new(r.connections, r.first_seen, r.last_seen)))
            })
            .collect();
        drop(keys);
        drop(read);
        lines
            .into_iter()
            .zip(hits)
            .filter_map(|(line, hit)| {
                if let Some((i, tally)) = hit {
                    return Some(Folded::Hit(i, tally));
                }
                let (number, line) =
                    jsonl::parse_text_line_unchecked(path, "verdict", &recorded_verdict, line)?;
                let (key, first, whole) = match line {
                    Ok((f, v)) => self.key(f, v),
                    Err(e) => return Some(Folded::Bad(e)),
                };
                Some(match jsonl::check_line_names(path, number, &key.record) {
                    Err(e) => Folded::Bad(e),
                    Ok(()) if whole => Folded::Whole(key, first),
                    Ok(()) => Folded::New(key, first),
                })
            })
            .collect()
    }
}

/// One line of a batch, as a worker of [`Aggregator::fold_reader`] left it.
#[derive(Debug)]
enum Folded {
    /// A record of the group with this index.
    Hit(u32, Tally),
    /// A record whose key the index did not have when the worker looked.
    New(GroupKey, Volatile),
    /// A record kept whole.
    Whole(GroupKey, Volatile),
    /// A bad line.
    Bad(FlowLineError),
}

/// Adds a record to the group of its key, or makes the key a new group.
fn add_keyed(groups: &mut Vec<Group>, index: &mut KeyMap<u32>, key: GroupKey, first: Volatile) {
    let hash = key::hash_key(&key);
    if let Some(&i) = index.get(hash, &key) {
        if let Some(g) = groups.get_mut(i as usize) {
            g.tally.add(&Tally::of(&first));
        }
        return;
    }
    let i = u32::try_from(groups.len()).unwrap_or(u32::MAX);
    index.insert_new(hash, key, i);
    groups.push(Group::new(first, None));
}

/// Folds records into a [`FlowAggregate`] as they are read ([`Recommender::aggregator`]).
#[derive(Debug)]
pub struct Aggregator<'r, 'i> {
    recommender: &'r Recommender<'i>,
    shared: Shared,
    groups: Vec<Group>,
    records: usize,
    pass: u32,
}

impl<'i> Recommender<'i> {
    /// A new aggregator of this recommender's input.
    pub fn aggregator(&self) -> Aggregator<'_, 'i> {
        let mut breakpoints: Vec<Timestamp> = self
            .inventory
            .pods
            .iter()
            .flat_map(|p| [p.created, p.deleted])
            .flatten()
            .collect();
        breakpoints.sort_unstable();
        breakpoints.dedup();
        Aggregator {
            recommender: self,
            shared: Shared {
                breakpoints,
                keep_connections: FxHashSet::default(),
                keep_groups: KeyMap::default(),
                index: RwLock::default(),
            },
            groups: Vec::new(),
            records: 0,
            pass: 0,
        }
    }

    /// Folds the records `feed` pushes into an aggregator, calling it again for each further
    /// pass [`Aggregator::finish`] asks for (`feed` reads the same input each time; on passes
    /// after the first, [`Aggregator::pass`] > 0, it need not report bad input again).
    pub fn aggregate<E>(
        &self,
        mut feed: impl FnMut(&mut Aggregator<'_, 'i>) -> Result<(), E>,
    ) -> Result<FlowAggregate, E> {
        let mut agg = self.aggregator();
        loop {
            feed(&mut agg)?;
            match agg.finish() {
                Pass::Done(a) => return Ok(a),
                Pass::Again(next) => agg = next,
            }
        }
    }

    /// Records held in memory, folded ([`Self::aggregate`]).
    pub fn aggregate_recorded(&self, input: &RecordedFlows) -> FlowAggregate {
        let result: Result<_, std::convert::Infallible> = self.aggregate(|agg| {
            for (i, f) in input.flows.iter().enumerate() {
                agg.push(f.clone(), input.verdict(i).cloned());
            }
            Ok(())
        });
        match result {
            Ok(a) => a,
            Err(never) => match never {},
        }
    }
}

impl<'r, 'i> Aggregator<'r, 'i> {
    /// Which pass over the input this is (0: the first).
    pub fn pass(&self) -> u32 {
        self.pass
    }

    /// Folds one record, with the verdict its source recorded.
    pub fn push(&mut self, f: FlowRecord, verdict: Option<RecordedVerdict>) {
        self.records += 1;
        let (key, first, whole) = self.shared.key(f, verdict);
        if whole {
            self.groups.push(Group::new(first, Some(key)));
            return;
        }
        let index = self
            .shared
            .index
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        add_keyed(&mut self.groups, index, key, first);
    }

    /// Folds the flow lines of `reader` (JSON lines, with the verdicts they carry, read as
    /// [`super::sources::read_flow_file`] reads them) as [`Self::push`] would fold them in
    /// order; `bad` gets the error of each bad line, in order. `path` names the input in
    /// errors.
    ///
    /// The lines are parsed, keyed and looked up in the index on [`jsonl::for_each_batch`]'s
    /// workers; this thread adds each batch up in the order of the input (the groups, their
    /// order and first records are those of [`Self::push`]).
    pub fn fold_reader(
        &mut self,
        path: &Path,
        reader: impl BufRead,
        bad: impl FnMut(FlowLineError),
    ) {
        let (shared, mut merge) = self.parts(bad);
        jsonl::for_each_batch(
            path,
            reader,
            |lines| shared.fold_batch(path, lines),
            &mut merge,
        );
    }

    /// [`Self::fold_reader`] of the file `path` (`-`: stdin); a file that cannot be opened is
    /// one bad line.
    pub fn fold_file(&mut self, path: &Path, bad: impl FnMut(FlowLineError)) {
        let (shared, mut merge) = self.parts(bad);
        jsonl::for_each_file_batch(path, |lines| shared.fold_batch(path, lines), &mut merge);
    }

    /// The part of the aggregator the workers read, and what adds up their batches here.
    fn parts(&mut self, mut bad: impl FnMut(FlowLineError)) -> (&Shared, impl FnMut(Vec<Folded>)) {
        let Aggregator {
            shared,
            groups,
            records,
            ..
        } = self;
        let shared = &*shared;
        let merge = move |batch: Vec<Folded>| {
            let mut index = None;
            for item in batch {
                match item {
                    Folded::Bad(e) => {
                        bad(e);
                        continue;
                    }
                    Folded::Hit(i, t) => {
                        if let Some(g) = groups.get_mut(i as usize) {
                            g.tally.add(&t);
                        }
                    }
                    Folded::Whole(key, first) => groups.push(Group::new(first, Some(key))),
                    Folded::New(key, first) => {
                        let index = index.get_or_insert_with(|| {
                            shared.index.write().unwrap_or_else(PoisonError::into_inner)
                        });
                        add_keyed(groups, index, key, first);
                    }
                }
                *records += 1;
            }
        };
        (shared, merge)
    }

    /// Ends the pass: the aggregate, or another pass when this one folded records of a
    /// connection it found denied.
    pub fn finish(self) -> Pass<'r, 'i> {
        let Aggregator {
            recommender,
            shared:
                Shared {
                    breakpoints,
                    mut keep_connections,
                    mut keep_groups,
                    index,
                },
            groups,
            records,
            pass,
        } = self;
        let index = index.into_inner().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<Option<GroupKey>> = vec![None; groups.len()];
        for (key, i) in index.into_entries() {
            if let Some(slot) = keys.get_mut(i as usize) {
                *slot = Some(key);
            }
        }
        let mut out = FlowAggregate {
            records,
            ..FlowAggregate::default()
        };
        // The folded groups (index in `out`, key), and whether this pass found a denied
        // connection it did not keep whole from the start.
        let mut grouped: Vec<(usize, GroupKey)> = Vec::new();
        let mut found = false;
        for (mut g, key) in groups.into_iter().zip(keys) {
            let whole = g.whole.is_some();
            let Some(key) = g.whole.take().or(key) else {
                continue;
            };
            let first = g.first_record(&key);
            if whole {
                found |= keep_connections.insert(judge::connection_key(&first));
            }
            out.flows.push(g.replayed(&key));
            out.verdicts.push(key.verdict.clone());
            out.weights.push(g.tally.records);
            out.firsts.push(first);
            if !whole {
                grouped.push((out.flows.len() - 1, key));
            }
        }
        // A group the inventory's policies deny (without a recorded verdict, which replaces
        // theirs) is evidence too: every record of the group gets the same verdict (same
        // fields, same epoch), so the group is kept whole by the next pass.
        if let Some(Ok(engine)) = &recommender.in_force {
            let needs = out.flows.iter().any(needs_attribution);
            for (i, key) in grouped {
                let (Some(f), Some(None)) = (out.flows.get(i), out.verdicts.get(i)) else {
                    continue;
                };
                let allowed = if needs {
                    let mut a = f.clone();
                    recommender.attributor.attribute(&mut a);
                    engine.evaluate_flow_compact(&a).allowed
                } else {
                    engine.evaluate_flow_compact(f).allowed
                };
                if !allowed {
                    found |= keep_groups.insert(key, ());
                }
            }
        }
        if !found {
            return Pass::Done(out);
        }
        tracing::debug!(
            pass,
            connections = keep_connections.len(),
            groups = keep_groups.len(),
            "denied connections found: reading the flows again"
        );
        Pass::Again(Aggregator {
            recommender,
            shared: Shared {
                breakpoints,
                keep_connections,
                keep_groups,
                index: RwLock::default(),
            },
            groups: Vec::new(),
            records: 0,
            pass: pass + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::Subnets,
        inventory::Inventory,
        recommend::{RecommendConfig, sources},
    };

    /// Lines of many batches: groups that recur (other source ports, times, connection
    /// counts), blank, corrupt and badly named lines (in a new group, and again later), a
    /// verdict that denies, a bad verdict, drops of a connection whose other records came
    /// first (another pass), a string with an escape.
    fn lines() -> String {
        let mut text = String::new();
        for i in 0..(jsonl_batch() * 7 + 333) {
            let line = match i % 97 {
                5 => "   ".to_owned(),
                6 => "not json".to_owned(),
                7 => format!(
                    "{{\"protocol\":\"TCP\",\"src\":{{\"ip\":\"10.0.0.1\",\"namespace\":\"Bad{}\"}},\"dst\":{{\"ip\":\"10.0.0.2\",\"port\":80}}}}",
                    i % 3
                ),
                8 => "{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\",\"namespace\":\"Bad\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80},\"verdict\":3}".to_owned(),
                9 => "{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.3\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80},\"verdict\":{\"allowed\":false,\"ingress\":{\"result\":\"denied\",\"policies\":[\"a/b\"]}}}".to_owned(),
                // The same node, spelled with an escape or not: one group.
                11 | 12 => format!(
                    "{{\"protocol\":\"UDP\",\"src\":{{\"ip\":\"10.0.1.1\",\"port\":{}}},\"dst\":{{\"ip\":\"10.0.9.9\",\"port\":53}},\"node\":\"{}\"}}",
                    i % 1000,
                    if i % 97 == 11 { "n\\u002d1" } else { "n-1" }
                ),
                10 if i > 3000 => "{\"protocol\":\"UDP\",\"src\":{\"ip\":\"10.0.1.7\",\"port\":4007},\"dst\":{\"ip\":\"10.0.9.9\",\"port\":53},\"drops\":{\"count\":2,\"reason\":\"NETFILTER_DROP\"},\"counted\":false}".to_owned(),
                _ => format!(
                    "{{\"protocol\":\"UDP\",\"src\":{{\"ip\":\"10.0.1.{}\",\"port\":{}}},\"dst\":{{\"ip\":\"10.0.9.{}\",\"port\":53}},\"first_seen\":\"2026-12-06T10:{:02}:00Z\",\"last_seen\":\"2026-12-06T10:{:02}:30Z\",\"connections\":{},\"state\":\"active\"}}",
                    i % 11,
                    4000 + i % 13,
                    9 + i % 5,
                    (i * 7) % 60,
                    (i * 3) % 60,
                    1 + i % 4
                ),
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    fn jsonl_batch() -> usize {
        1024
    }

    /// Folding a file on the workers gives the aggregate of its records pushed in order, the
    /// same bad lines in the same order, and the same passes.
    #[test]
    fn folding_on_workers_is_pushing_in_order() {
        let text = lines();
        let path = Path::new("f.jsonl");
        let inventory = Inventory::default();
        let recommender =
            Recommender::new(&inventory, &Subnets::default(), RecommendConfig::default());
        let (mut pushed_passes, mut pushed_bad) = (0, Vec::new());
        let pushed = recommender
            .aggregate(|agg| {
                pushed_passes += 1;
                let (flows, errors) = sources::parse_agent_answer(&text, "f.jsonl");
                for (i, f) in flows.flows.iter().enumerate() {
                    agg.push(f.clone(), flows.verdict(i).cloned());
                }
                pushed_bad.extend(errors.iter().map(|e| crate::report::Chain(e).to_string()));
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        let (mut folded_passes, mut folded_bad) = (0, Vec::new());
        let folded = recommender
            .aggregate(|agg| {
                folded_passes += 1;
                agg.fold_reader(path, text.as_bytes(), |e| {
                    folded_bad.push(crate::report::Chain(&e).to_string())
                });
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        assert_eq!(pushed_passes, 2, "the drops come after their connection");
        assert_eq!(folded_passes, pushed_passes);
        assert_eq!(folded_bad, pushed_bad);
        let count = |k: usize| (0..jsonl_batch() * 7 + 333).filter(|i| i % 97 == k).count();
        assert_eq!(pushed_bad.len(), 2 * (count(6) + count(7) + count(8)));
        assert!(
            pushed_bad
                .iter()
                .any(|e| e.contains("rejected flow record: field src.namespace")),
            "{pushed_bad:?}"
        );
        assert_eq!(folded.records(), pushed.records());
        assert!(folded.groups() > 100 && folded.groups() < folded.records() / 4);
        assert_eq!(folded, pushed);
    }

    /// A file that cannot be opened is one bad line.
    #[test]
    fn a_missing_file_is_one_bad_line() {
        let inventory = Inventory::default();
        let recommender =
            Recommender::new(&inventory, &Subnets::default(), RecommendConfig::default());
        let mut bad = Vec::new();
        let agg = recommender
            .aggregate(|agg| {
                agg.fold_file(Path::new("/nonexistent/f.jsonl"), |e| {
                    bad.push(crate::report::Chain(&e).to_string())
                });
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        assert_eq!(agg.records(), 0);
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].starts_with("cannot read /nonexistent/f.jsonl: "),
            "{bad:?}"
        );
    }
}
