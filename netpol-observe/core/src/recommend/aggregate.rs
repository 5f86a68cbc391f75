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

use std::collections::HashSet;

use jiff::Timestamp;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    Recommender, RecordedFlows, RecordedVerdict,
    judge::{self, ConnectionKey},
    needs_attribution,
};
use crate::flow::{Directional, FlowRecord, FlowState};

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

#[derive(Debug)]
struct Group {
    /// The key of a record kept whole (the others' keys are in the index).
    whole: Option<GroupKey>,
    first: Volatile,
    records: u64,
    connections: u64,
    first_at: Option<Timestamp>,
    last_at: Option<Timestamp>,
}

impl Group {
    fn new(first: Volatile, whole: Option<GroupKey>) -> Self {
        let mut g = Group {
            whole,
            first_at: None,
            last_at: None,
            records: 0,
            connections: 0,
            first: first.clone(),
        };
        g.add(&first);
        g
    }

    fn add(&mut self, v: &Volatile) {
        self.records += 1;
        self.connections += v.connections.unwrap_or(1);
        if let Some(t) = v.first_seen.or(v.last_seen) {
            self.first_at = Some(self.first_at.map_or(t, |c| c.min(t)));
        }
        if let Some(t) = v.last_seen.or(v.first_seen) {
            self.last_at = Some(self.last_at.map_or(t, |c| c.max(t)));
        }
    }

    /// The record replayed for the group: its first record, with the group's times and
    /// connections when it stands for several.
    fn replayed(&self, key: &GroupKey) -> FlowRecord {
        let mut f = key.record.clone();
        self.first.put(&mut f);
        if self.records > 1 {
            f.first_seen = self.first_at;
            f.last_seen = self.last_at;
            f.connections = Some(self.connections);
        }
        f
    }

    fn first_record(&self, key: &GroupKey) -> FlowRecord {
        let mut f = key.record.clone();
        self.first.put(&mut f);
        f
    }
}

/// Folds records into a [`FlowAggregate`] as they are read ([`Recommender::aggregator`]).
#[derive(Debug)]
pub struct Aggregator<'r, 'i> {
    recommender: &'r Recommender<'i>,
    /// The instants pods were created or deleted, sorted.
    breakpoints: Vec<Timestamp>,
    /// Connections whose every record is kept whole (found denied by an earlier pass).
    keep_connections: FxHashSet<ConnectionKey>,
    /// Groups whose every record is kept whole (the inventory's policies deny them).
    keep_groups: HashSet<GroupKey>,
    index: FxHashMap<GroupKey, u32>,
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
            breakpoints,
            keep_connections: FxHashSet::default(),
            keep_groups: HashSet::new(),
            index: FxHashMap::default(),
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
    pub fn push(&mut self, mut f: FlowRecord, verdict: Option<RecordedVerdict>) {
        self.records += 1;
        let epoch = f.first_seen.or(f.last_seen).map(|t| {
            u32::try_from(self.breakpoints.partition_point(|b| *b <= t)).unwrap_or(u32::MAX)
        });
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
        if evidence || (!self.keep_groups.is_empty() && self.keep_groups.contains(&key)) {
            self.groups.push(Group::new(first, Some(key)));
            return;
        }
        if let Some(&i) = self.index.get(&key) {
            self.groups[i as usize].add(&first);
            return;
        }
        let i = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
        self.index.insert(key, i);
        self.groups.push(Group::new(first, None));
    }

    /// Ends the pass: the aggregate, or another pass when this one folded records of a
    /// connection it found denied.
    pub fn finish(self) -> Pass<'r, 'i> {
        let Aggregator {
            recommender,
            breakpoints,
            mut keep_connections,
            mut keep_groups,
            index,
            groups,
            records,
            pass,
        } = self;
        let mut keys: Vec<Option<GroupKey>> = vec![None; groups.len()];
        for (key, i) in index {
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
            out.weights.push(g.records);
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
                    found |= keep_groups.insert(key);
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
            breakpoints,
            keep_connections,
            keep_groups,
            index: FxHashMap::default(),
            groups: Vec::new(),
            records: 0,
            pass: pass + 1,
        })
    }
}
