//! Rule tables per policy group, built at compile time so that a verdict costs the same few
//! lookups whatever the number of policies.
//!
//! Pods selected by the same list of policies (per direction) form a *group*. For each group
//! and protocol the port space is cut into intervals at every boundary of the group's port
//! ranges; each interval (and each named port, and "no port") maps to a [`RuleSet`]: the
//! group's rules whose ports cover it, with the union of their peers pre-merged into one
//! peer condition.
//!
//! Peer conditions (which pod peer classes, which ipBlocks, or "every peer") are interned:
//! rules and rule sets sharing a condition share its id, and a condition is tested by one bit.
//! The tables hold them transposed — one row of condition bits per peer class and one per
//! address *region* ([`super::regions`]: the ipBlocks cut out of the address space at compile
//! time) — so that testing a condition for a peer is `class_row[c] | region_row[c]`, and the
//! conditions of one group's rules, numbered close together, sit in the same few words of the
//! two rows. Conditions live in two spaces: the merged conditions of rule sets (what a
//! decision tests; few, so their rows stay small and cached) and those of single rules (what
//! an explanation tests). Each group is one record in a flat array (see [`Tables`]): its
//! interval starts and slots (a slot holds its set's merged condition) side by side, so
//! deciding a direction is: the pod's group record, the interval (a handful of boundaries),
//! one bit of a set-condition row. The explanation reads the matched set's record (one flat
//! array: its distinct rule conditions, then its rules) and tests one bit per distinct
//! condition, not per rule; a set whose rules share one condition needs no test at all.
//! Rule sets are interned: groups share them.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use super::{
    Name, Names,
    names::{IdList, RuleNames},
    regions::{Block, Regions},
};
use crate::{
    flow::Protocol,
    rules::network_policy::{Peer, PortMatch, PortSpec, Rule},
};

/// A peer condition while the tables are built: which peers some rules allow. Normalised
/// (`all` has no classes or blocks; no class is an empty bitset) so that equal conditions
/// intern to one id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct CondSpec {
    /// Every peer (a rule without `from`/`to`).
    all: bool,
    /// The pod peer classes allowed (a bitset), empty when none.
    classes: Box<[u64]>,
    /// The ipBlocks allowed (ids into the builder's blocks), ascending.
    blocks: Box<[u32]>,
}

/// A compiled rule as the tables see it.
#[derive(Debug, Clone)]
pub(crate) struct RuleInfo {
    /// Index of the policy (in `ns/name` order).
    pub(crate) policy: u32,
    /// Its peer condition (in the rule condition space).
    cond: u32,
    /// `ns/name:ingress[i]`.
    pub(crate) label: Name,
    /// Its ports as compiled (`None`: every port and protocol), read by [`super::plan`].
    pub(crate) ports: Option<Box<[PortMatch]>>,
    /// Its ipBlocks (ids into [`Tables::block`], in the order the rule names them; `None`:
    /// the rule allows every peer), read by [`super::plan`].
    pub(crate) blocks: Option<Box<[u32]>>,
}

/// Rules (global ids, ascending = policy order then rule order) with their peers merged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuleSet {
    /// The union of the rules' peer conditions (in the set condition space).
    cond: u32,
    /// Offset of its record in [`Tables::set_flat`].
    at: u32,
}

/// The rule sets of one protocol with ports (TCP, UDP, SCTP) in a group, while the tables
/// are built; laid out in [`Tables::flat`] by [`TablesBuilder::finish`].
#[derive(Debug, Clone, Default)]
struct ProtoTable {
    /// Flows without a port: rules without ports and rules for every port of the protocol.
    no_port: u32,
    /// Interval starts (ascending, the first is 0).
    starts: Vec<u16>,
    /// The rule set of each interval.
    sets: Vec<u32>,
    /// Named ports (ids, see [`Tables::port_name`]; resolved against the destination pod)
    /// and their rule sets.
    named: Vec<(u32, u32)>,
}

/// The rule tables of a group while they are built.
#[derive(Debug, Clone)]
struct GroupTables {
    /// Protocols without ports (ICMP): the rules without ports.
    other: u32,
    /// TCP, UDP, SCTP.
    protos: [ProtoTable; 3],
}

/// The policies selecting a group of pods in one direction.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The selecting policies (indices, ascending).
    pub(crate) policies: Box<[u32]>,
    /// Their names: the explanation of a denial.
    pub(crate) denied: Names,
    /// Their rules in this direction (global ids: policy order, then rule order).
    pub(crate) rules: Box<[u32]>,
}

/// A group as pods refer to it: the offset of its record in [`Tables::flat`].
pub(crate) type GroupRef = u32;

/// The peer being checked: its class when it is a pod peer, and its address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerKey {
    /// Peer class of a (non-hostNetwork) pod peer.
    pub(crate) class: Option<u32>,
    /// The peer's address (ipBlocks match it, pod addresses included).
    pub(crate) ip: IpAddr,
}

/// The rows of a peer: its class row (the empty row for peers without a class) and its
/// address region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Rows {
    pub(crate) class: u32,
    pub(crate) region: u32,
}

/// Peer conditions stored transposed: per peer class and per address region, one bit per
/// condition.
#[derive(Debug, Clone, Default)]
struct CondRows {
    /// Words per row.
    words: usize,
    /// Per peer class (then the empty row): bit `c` = condition `c` allows pods of the class.
    class: Box<[u64]>,
    /// Per address region: bit `c` = condition `c` allows every peer or has an ipBlock
    /// containing the region.
    region: Box<[u64]>,
}

impl CondRows {
    /// Whether condition `cond` allows the peer of `rows`.
    #[inline]
    fn hit(&self, rows: Rows, cond: u32) -> bool {
        let w = cond as usize / 64;
        let class = self
            .class
            .get(rows.class as usize * self.words + w)
            .copied()
            .unwrap_or(0);
        let region = self
            .region
            .get(rows.region as usize * self.words + w)
            .copied()
            .unwrap_or(0);
        ((class | region) >> (cond % 64)) & 1 == 1
    }

    /// Whether condition `cond` allows pods of peer class `class` (by a pod peer; ipBlocks and
    /// "every peer" aside).
    fn class_hit(&self, class: u32, cond: u32) -> bool {
        self.class
            .get(class as usize * self.words + cond as usize / 64)
            .is_some_and(|w| (w >> (cond % 64)) & 1 == 1)
    }
}

/// Where the rule set(s) of a flow are in [`Tables::flat`]: the slot of the set matched by
/// protocol and port, and the named-port entries to try.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    /// Index of the slot (its set condition in `flat`, its set record in `flat_sets`).
    slot: usize,
    /// Named-port entries: `(name id, slot)` pairs from this index.
    named: usize,
    /// Their number.
    named_len: usize,
}

// Layout of a group's record in `Tables::flat` (u32 words, offset `o`):
//   o + 0           group id (index into `Tables::groups`)
//   o + 1           slot: port-less protocols (ICMP)
//   o + 2 + 4p      slot: protocol p (TCP, UDP, SCTP) without a port
//   o + 3 + 4p      number of intervals n of protocol p (up to 65,536: one per port)
//   o + 4 + 4p      number of named ports m of protocol p
//   o + 5 + 4p      offset b of protocol p's body
// and each protocol's body right after the header:
//   b .. b+n        interval starts (ports)
//   b+n .. b+2n     slots: the set of each interval
//   b+2n .. b+2n+2m named ports: name id, slot
// A slot holds the set's condition (set condition space); `flat_sets` holds the set record at
// the same index. So a decision reads the pod's group record (a few adjacent words) and one
// word of a condition row.
const HEADER: usize = 14;

/// Every table of an engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tables {
    rules: Vec<RuleInfo>,
    sets: Vec<RuleSet>,
    /// Each rule set's record, for explanations, at [`RuleSet::at`]: `k` the number of
    /// distinct peer conditions of its rules (rule condition space, in order of first use),
    /// `n` the number of rules, the `k` conditions, then per rule (ascending) its global id
    /// and the index of its condition among the `k`. One contiguous record, so that
    /// explaining reads one or two cache lines and tests each distinct condition once.
    set_flat: Box<[u32]>,
    groups: Vec<Group>,
    /// The groups' records (layout above).
    flat: Box<[u32]>,
    /// Parallel to `flat`: the record offset ([`RuleSet::at`]) of each slot's set.
    flat_sets: Box<[u32]>,
    /// Named ports used by the rules: name → id.
    port_names: HashMap<Box<str>, u32>,
    /// Peer classes; row `classes` is the empty row of peers without a class.
    classes: usize,
    /// The merged conditions of rule sets (what a decision tests): few, small rows.
    set_rows: CondRows,
    /// The conditions of single rules (what an explanation tests).
    rule_rows: CondRows,
    regions: Regions,
    /// The distinct ipBlocks, by id (read by [`super::plan`]).
    blocks: Box<[Block]>,
}

fn proto_index(p: Protocol) -> Option<usize> {
    match p {
        Protocol::Tcp => Some(0),
        Protocol::Udp => Some(1),
        Protocol::Sctp => Some(2),
        Protocol::Icmp | Protocol::Icmpv6 => None,
    }
}

const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

impl Tables {
    /// The group whose record is at `g`.
    #[inline]
    pub(crate) fn group(&self, g: GroupRef) -> Option<&Group> {
        let id = self.flat.get(g as usize)?;
        self.groups.get(*id as usize)
    }

    /// The id of a named port used by some rule (`None`: no rule names it).
    pub(crate) fn port_name(&self, name: &str) -> Option<u32> {
        self.port_names.get(name).copied()
    }

    /// The names of every rule, for explanations; `policies` names every policy.
    pub(crate) fn rule_names(&self, policies: &[Name]) -> RuleNames {
        RuleNames::new(
            self.rules.iter().map(|r| r.label.clone()).collect(),
            self.rules.iter().map(|r| r.policy).collect(),
            policies,
        )
    }

    /// The condition rows of a peer.
    #[inline]
    pub(crate) fn rows(&self, peer: PeerKey) -> Rows {
        let class = peer
            .class
            .map_or(self.classes, |k| (k as usize).min(self.classes));
        Rows {
            class: u32::try_from(class).unwrap_or(u32::MAX),
            region: self.regions.region(peer.ip),
        }
    }

    /// Rule `r` (global id).
    pub(crate) fn rule(&self, r: u32) -> Option<&RuleInfo> {
        self.rules.get(r as usize)
    }

    /// ipBlock `b` (an id of [`RuleInfo::blocks`]).
    pub(crate) fn block(&self, b: u32) -> Option<&Block> {
        self.blocks.get(b as usize)
    }

    /// Whether rule `r` allows pods of peer class `class` by one of its pod peers.
    pub(crate) fn rule_allows_class(&self, r: u32, class: u32) -> bool {
        self.rule(r)
            .is_some_and(|info| self.rule_rows.class_hit(class, info.cond))
    }

    /// Whether rule `r` allows the peer of `rows` ([`Tables::rows`]): what an explanation
    /// tests.
    pub(crate) fn rule_allows(&self, r: u32, rows: Rows) -> bool {
        self.rule(r)
            .is_some_and(|info| self.rule_rows.hit(rows, info.cond))
    }

    #[inline]
    fn word(&self, i: usize) -> u32 {
        self.flat.get(i).copied().unwrap_or(0)
    }

    /// Whether the set in slot `slot` has a rule allowing the peer of `rows`.
    #[inline]
    fn slot_hit(&self, rows: Rows, slot: usize) -> bool {
        self.flat
            .get(slot)
            .is_some_and(|cond| self.set_rows.hit(rows, *cond))
    }

    /// The slot(s) for the flow's protocol and port in the record of group `g`.
    #[inline]
    fn lookup(&self, g: GroupRef, protocol: Protocol, port: Option<u16>) -> Lookup {
        let o = g as usize;
        let Some(p) = proto_index(protocol) else {
            return Lookup {
                slot: o + 1,
                named: 0,
                named_len: 0,
            };
        };
        let no_port = Lookup {
            slot: o + 2 + 4 * p,
            named: 0,
            named_len: 0,
        };
        let Some(port) = port else {
            return no_port;
        };
        let n = self.word(o + 3 + 4 * p) as usize;
        let m = self.word(o + 4 + 4 * p) as usize;
        let b = self.word(o + 5 + 4 * p) as usize;
        let Some(starts) = self.flat.get(b..b + n) else {
            return no_port;
        };
        let at = starts
            .partition_point(|s| *s <= u32::from(port))
            .saturating_sub(1);
        Lookup {
            slot: b + n + at,
            named: b + 2 * n,
            named_len: m,
        }
    }

    /// The named-port entries of a lookup: (name id, slot).
    #[inline]
    fn named(&self, l: Lookup) -> impl Iterator<Item = (u32, usize)> + '_ {
        (0..l.named_len).map(move |i| {
            let at = l.named + 2 * i;
            (self.word(at), at + 1)
        })
    }

    /// Whether some rule of group `g` allows the flow (protocol, destination port, the named
    /// ports of the destination pod via `named_port`, by name id) from/to the peer of `rows`
    /// ([`Tables::rows`]).
    #[inline]
    pub(crate) fn allows(
        &self,
        g: GroupRef,
        protocol: Protocol,
        port: Option<u16>,
        rows: Rows,
        named_port: impl Fn(u32) -> Option<u16>,
    ) -> bool {
        let l = self.lookup(g, protocol, port);
        if self.slot_hit(rows, l.slot) {
            return true;
        }
        // The condition first (in cache), the destination pod's ports only if it hits.
        port.is_some_and(|p| {
            self.named(l)
                .any(|(name, slot)| self.slot_hit(rows, slot) && named_port(name) == Some(p))
        })
    }

    /// Appends to `out` the rules (ascending) of the set whose record is at `at` allowing the
    /// peer of `rows`, given that the set's merged condition does.
    #[inline]
    fn set_allowing(&self, at: usize, rows: Rows, out: &mut IdList) {
        let (Some(k), Some(n)) = (self.set_flat.get(at), self.set_flat.get(at + 1)) else {
            return;
        };
        let (k, n) = (*k as usize, *n as usize);
        let Some(conds) = self.set_flat.get(at + 2..at + 2 + k) else {
            return;
        };
        let Some(rules) = self.set_flat.get(at + 2 + k..at + 2 + k + 2 * n) else {
            return;
        };
        let pairs = rules.chunks_exact(2);
        match k {
            // The merged condition is this one: every rule allows the peer.
            1 => out.extend(pairs.map(|p| p[0])),
            k if k <= 64 => {
                let mut hits = 0u64;
                for (i, c) in conds.iter().enumerate() {
                    hits |= u64::from(self.rule_rows.hit(rows, *c)) << i;
                }
                out.extend(
                    pairs
                        .filter(|p| (hits >> (p[1] % 64)) & 1 == 1)
                        .map(|p| p[0]),
                );
            }
            _ => out.extend(
                pairs
                    .filter(|p| {
                        conds
                            .get(p[1] as usize)
                            .is_some_and(|c| self.rule_rows.hit(rows, *c))
                    })
                    .map(|p| p[0]),
            ),
        }
    }

    /// Every rule of group `g` allowing the flow from/to the peer of `rows` (global ids,
    /// ascending): the explanation. Empty when the flow is denied. Usually no allocation:
    /// the sets and rules are kept inline up to [`IdList`]'s inline size.
    pub(crate) fn allowing_rules(
        &self,
        g: GroupRef,
        protocol: Protocol,
        port: Option<u16>,
        rows: Rows,
        named_port: impl Fn(u32) -> Option<u16>,
    ) -> IdList {
        let l = self.lookup(g, protocol, port);
        let mut sets = IdList::default();
        if self.slot_hit(rows, l.slot) {
            sets.extend(self.flat_sets.get(l.slot).copied());
        }
        if let Some(p) = port {
            for (name, slot) in self.named(l) {
                if self.slot_hit(rows, slot) && named_port(name) == Some(p) {
                    sets.extend(self.flat_sets.get(slot).copied());
                }
            }
        }
        let mut out = IdList::default();
        for at in sets.iter() {
            self.set_allowing(*at as usize, rows, &mut out);
        }
        if sets.len() > 1 {
            out.sort_dedup();
        }
        out
    }
}

/// Interned peer conditions of one space (rules or sets).
#[derive(Debug, Default)]
struct CondSpace {
    conds: Vec<CondSpec>,
    ids: HashMap<CondSpec, u32>,
}

impl CondSpace {
    fn intern(&mut self, mut cond: CondSpec) -> u32 {
        if cond.all {
            cond.classes = Box::default();
            cond.blocks = Box::default();
        } else if cond.classes.iter().all(|w| *w == 0) {
            cond.classes = Box::default();
        }
        if let Some(id) = self.ids.get(&cond) {
            return *id;
        }
        let id = to_u32(self.conds.len());
        self.conds.push(cond.clone());
        self.ids.insert(cond, id);
        id
    }

    /// The transposed rows of these conditions.
    fn rows(&self, classes: usize, regions: &Regions, block_regions: &[Vec<usize>]) -> CondRows {
        let words = self.conds.len().div_ceil(64).max(1);
        let mut class_rows = vec![0u64; (classes + 1) * words];
        let mut region_rows = vec![0u64; regions.len() * words];
        let set = |rows: &mut [u64], row: usize, c: usize| {
            if let Some(w) = rows.get_mut(row * words + c / 64) {
                *w |= 1 << (c % 64);
            }
        };
        for (c, cond) in self.conds.iter().enumerate() {
            if cond.all {
                for r in 0..regions.len() {
                    set(&mut region_rows, r, c);
                }
                continue;
            }
            for (i, word) in cond.classes.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let k = i * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if k < classes {
                        set(&mut class_rows, k, c);
                    }
                }
            }
            for b in cond.blocks.iter() {
                for r in block_regions.get(*b as usize).into_iter().flatten() {
                    set(&mut region_rows, *r, c);
                }
            }
        }
        CondRows {
            words,
            class: class_rows.into_boxed_slice(),
            region: region_rows.into_boxed_slice(),
        }
    }
}

/// Builds [`Tables`]: rules first (in global order), then groups, then the condition rows.
#[derive(Debug)]
pub(crate) struct TablesBuilder<'a> {
    tables: Tables,
    /// Each global rule's ports.
    ports: Vec<Option<&'a [PortMatch]>>,
    /// Interned peer conditions of rules and of rule sets (two spaces), and ipBlocks.
    rule_conds: CondSpace,
    set_conds: CondSpace,
    blocks: Vec<Block>,
    block_ids: HashMap<Block, u32>,
    set_ids: HashMap<Box<[u32]>, u32>,
    group_ids: HashMap<(bool, Box<[u32]>), GroupRef>,
    /// The group records (see [`Tables::flat`]) and the set of each slot.
    flat: Vec<u32>,
    flat_sets: Vec<u32>,
    /// The rule sets' records (see [`Tables::set_flat`]).
    set_flat: Vec<u32>,
    words: usize,
}

impl<'a> TablesBuilder<'a> {
    /// A builder for bitsets over `classes` peer classes.
    pub(crate) fn new(classes: usize) -> Self {
        let mut b = TablesBuilder {
            tables: Tables {
                classes,
                ..Tables::default()
            },
            ports: Vec::new(),
            rule_conds: CondSpace::default(),
            set_conds: CondSpace::default(),
            blocks: Vec::new(),
            block_ids: HashMap::new(),
            set_ids: HashMap::new(),
            group_ids: HashMap::new(),
            flat: Vec::new(),
            flat_sets: Vec::new(),
            set_flat: Vec::new(),
            words: classes.div_ceil(64),
        };
        // Set 0: no rule, allows nothing.
        b.intern_set(Vec::new());
        b
    }

    fn intern_block(&mut self, block: Block) -> u32 {
        if let Some(id) = self.block_ids.get(&block) {
            return *id;
        }
        let id = to_u32(self.blocks.len());
        self.blocks.push(block.clone());
        self.block_ids.insert(block, id);
        id
    }

    /// Adds rule `rule` of policy `policy` whose pod peers allow the class bitsets `pod_sets`.
    /// Rules must be added in policy order, then rule order. Returns its global id.
    pub(crate) fn add_rule(
        &mut self,
        policy: u32,
        rule: &'a Rule,
        pod_sets: &[&[u64]],
        label: Name,
    ) -> u32 {
        let mut named_blocks = None;
        let cond = match &rule.peers {
            None => CondSpec {
                all: true,
                ..CondSpec::default()
            },
            Some(peers) => {
                let mut classes = vec![0u64; self.words].into_boxed_slice();
                for set in pod_sets {
                    for (w, s) in classes.iter_mut().zip(set.iter()) {
                        *w |= s;
                    }
                }
                let mut blocks: Vec<u32> = Vec::new();
                for p in peers {
                    if let Peer::IpBlock { cidr, except } = p {
                        blocks.push(self.intern_block((*cidr, except.clone().into_boxed_slice())));
                    }
                }
                let mut in_order: Vec<u32> = Vec::with_capacity(blocks.len());
                for b in &blocks {
                    if !in_order.contains(b) {
                        in_order.push(*b);
                    }
                }
                named_blocks = Some(in_order.into_boxed_slice());
                blocks.sort_unstable();
                blocks.dedup();
                CondSpec {
                    all: false,
                    classes,
                    blocks: blocks.into_boxed_slice(),
                }
            }
        };
        let cond = self.rule_conds.intern(cond);
        let id = to_u32(self.tables.rules.len());
        self.tables.rules.push(RuleInfo {
            policy,
            cond,
            label,
            ports: rule.ports.as_deref().map(Box::from),
            blocks: named_blocks,
        });
        self.ports.push(rule.ports.as_deref());
        id
    }

    /// The rule set of `rules` (sorted, deduplicated here), interned.
    fn intern_set(&mut self, mut rules: Vec<u32>) -> u32 {
        rules.sort_unstable();
        rules.dedup();
        if let Some(id) = self.set_ids.get(rules.as_slice()) {
            return *id;
        }
        let mut all = false;
        let mut classes = vec![0u64; self.words].into_boxed_slice();
        let mut blocks: Vec<u32> = Vec::new();
        let mut pairs = Vec::with_capacity(rules.len());
        let mut conds: Vec<u32> = Vec::new();
        for r in &rules {
            let Some(info) = self.tables.rules.get(*r as usize) else {
                continue;
            };
            let local = match conds.iter().position(|c| *c == info.cond) {
                Some(i) => i,
                None => {
                    conds.push(info.cond);
                    conds.len() - 1
                }
            };
            pairs.push((*r, to_u32(local)));
            let Some(c) = self.rule_conds.conds.get(info.cond as usize) else {
                continue;
            };
            all |= c.all;
            for (w, s) in classes.iter_mut().zip(c.classes.iter()) {
                *w |= s;
            }
            blocks.extend(c.blocks.iter().copied());
        }
        blocks.sort_unstable();
        blocks.dedup();
        let cond = self.set_conds.intern(CondSpec {
            all,
            classes,
            blocks: blocks.into_boxed_slice(),
        });
        let id = to_u32(self.tables.sets.len());
        let at = to_u32(self.set_flat.len());
        self.set_flat.push(to_u32(conds.len()));
        self.set_flat.push(to_u32(pairs.len()));
        self.set_flat.extend_from_slice(&conds);
        for (r, local) in &pairs {
            self.set_flat.push(*r);
            self.set_flat.push(*local);
        }
        self.tables.sets.push(RuleSet { cond, at });
        self.set_ids.insert(rules.into_boxed_slice(), id);
        id
    }

    /// The group of pods selected by `policies` (ascending) in one direction (`ingress`),
    /// whose rules in that direction are `rules` (global ids, ascending); `names` names every
    /// policy. Interned: the same list gives the same group.
    pub(crate) fn group(
        &mut self,
        ingress: bool,
        policies: &[u32],
        rules: impl Fn(u32) -> Vec<u32>,
        names: &[Name],
    ) -> GroupRef {
        let key = (ingress, Box::<[u32]>::from(policies));
        if let Some(id) = self.group_ids.get(&key) {
            return *id;
        }
        let all_rules: Vec<u32> = policies.iter().flat_map(|p| rules(*p)).collect();
        let portless: Vec<u32> = all_rules
            .iter()
            .copied()
            .filter(|r| self.ports.get(*r as usize).is_some_and(Option::is_none))
            .collect();
        let other = self.intern_set(portless.clone());
        let protos = PROTOS.map(|p| self.proto_table(p, &all_rules, &portless));
        let id = to_u32(self.tables.groups.len());
        self.tables.groups.push(Group {
            policies: key.1.clone(),
            denied: policies
                .iter()
                .filter_map(|p| names.get(*p as usize).cloned())
                .collect(),
            rules: all_rules.into_boxed_slice(),
        });
        let at = self.lay_out(id, &GroupTables { other, protos });
        self.group_ids.insert(key, at);
        at
    }

    /// Appends a slot for set `set` (its condition; its id alongside).
    fn push_slot(&mut self, set: u32) {
        let (cond, at) = self
            .tables
            .sets
            .get(set as usize)
            .map_or((0, u32::MAX), |s| (s.cond, s.at));
        self.flat.push(cond);
        self.flat_sets.push(at);
    }

    fn push_word(&mut self, w: u32) {
        self.flat.push(w);
        self.flat_sets.push(u32::MAX);
    }

    /// Appends the record of group `id` to the flat tables (layout: see [`Tables`]); returns
    /// its offset.
    fn lay_out(&mut self, id: u32, g: &GroupTables) -> GroupRef {
        let o = self.flat.len();
        self.push_word(id);
        self.push_slot(g.other);
        let mut body = o + HEADER;
        // The counts get a word each: there can be 65,536 intervals (one per port), which
        // does not fit the 16 bits they once shared a word in.
        for t in &g.protos {
            let (n, m) = (t.starts.len(), t.named.len());
            self.push_slot(t.no_port);
            self.push_word(to_u32(n));
            self.push_word(to_u32(m));
            self.push_word(to_u32(body));
            body += 2 * n + 2 * m;
        }
        for t in &g.protos {
            for s in &t.starts {
                self.push_word(u32::from(*s));
            }
            for set in &t.sets {
                self.push_slot(*set);
            }
            for (name, set) in &t.named {
                self.push_word(*name);
                self.push_slot(*set);
            }
        }
        to_u32(o)
    }

    fn port_name_id(&mut self, name: &str) -> u32 {
        let next = to_u32(self.tables.port_names.len());
        *self.tables.port_names.entry(name.into()).or_insert(next)
    }

    fn proto_table(&mut self, proto: Protocol, rules: &[u32], portless: &[u32]) -> ProtoTable {
        let mut base = portless.to_vec();
        let mut ranges: Vec<(u16, u16, u32)> = Vec::new();
        let mut named: Vec<(&str, u32)> = Vec::new();
        for r in rules {
            for pm in self
                .ports
                .get(*r as usize)
                .copied()
                .flatten()
                .into_iter()
                .flatten()
            {
                if pm.protocol != proto {
                    continue;
                }
                match &pm.port {
                    PortSpec::Any => base.push(*r),
                    PortSpec::Range(a, b) => ranges.push((*a, *b, *r)),
                    PortSpec::Named(n) => named.push((n.as_str(), *r)),
                }
            }
        }
        let no_port = self.intern_set(base.clone());
        let mut bounds: Vec<u16> = vec![0];
        for (a, b, _) in &ranges {
            bounds.push(*a);
            if let Some(end) = b.checked_add(1) {
                bounds.push(end);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        // A sweep over the bounds: the rules whose ranges cover the current interval, with
        // how many of their ranges do (a rule may list overlapping ranges). Linear in bounds
        // and ranges, so a rule with tens of thousands of ports compiles quickly.
        let mut opens: Vec<(u16, u32)> = ranges.iter().map(|(a, _, r)| (*a, *r)).collect();
        let mut closes: Vec<(u32, u32)> = ranges
            .iter()
            .map(|(_, b, r)| (u32::from(*b) + 1, *r))
            .collect();
        opens.sort_unstable();
        closes.sort_unstable();
        let (mut open, mut close) = (opens.iter().peekable(), closes.iter().peekable());
        let mut active: BTreeMap<u32, usize> = BTreeMap::new();
        let mut starts = Vec::with_capacity(bounds.len());
        let mut sets: Vec<u32> = Vec::with_capacity(bounds.len());
        for s in bounds {
            while let Some((_, r)) = open.next_if(|(a, _)| *a <= s) {
                *active.entry(*r).or_default() += 1;
            }
            while let Some((_, r)) = close.next_if(|(end, _)| *end <= u32::from(s)) {
                if let Some(n) = active.get_mut(r) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(r);
                    }
                }
            }
            let mut list = base.clone();
            list.extend(active.keys().copied());
            let id = self.intern_set(list);
            if sets.last() != Some(&id) {
                starts.push(s);
                sets.push(id);
            }
        }
        named.sort_unstable();
        let mut named_sets: Vec<(u32, u32)> = Vec::new();
        let mut i = 0;
        while i < named.len() {
            let name = named[i].0;
            let mut list = Vec::new();
            while i < named.len() && named[i].0 == name {
                list.push(named[i].1);
                i += 1;
            }
            let id = self.intern_set(list);
            named_sets.push((self.port_name_id(name), id));
        }
        ProtoTable {
            no_port,
            starts,
            sets,
            named: named_sets,
        }
    }

    /// The groups made so far, by direction (ingress) and list of selecting policies.
    pub(crate) fn groups(&self) -> HashMap<(bool, Box<[u32]>), GroupRef> {
        self.group_ids.clone()
    }

    /// The finished tables: the group records, the address regions of the ipBlocks and the
    /// condition rows.
    pub(crate) fn finish(self) -> Tables {
        let mut tables = self.tables;
        let regions = Regions::build(&self.blocks);
        // The regions inside each block.
        let mut block_regions: Vec<Vec<usize>> = vec![Vec::new(); self.blocks.len()];
        for r in 0..regions.len() {
            for b in regions.members(r) {
                if let Some(list) = block_regions.get_mut(*b as usize) {
                    list.push(r);
                }
            }
        }
        tables.set_rows = self
            .set_conds
            .rows(tables.classes, &regions, &block_regions);
        tables.rule_rows = self
            .rule_conds
            .rows(tables.classes, &regions, &block_regions);
        tables.flat = self.flat.into_boxed_slice();
        tables.flat_sets = self.flat_sets.into_boxed_slice();
        tables.set_flat = self.set_flat.into_boxed_slice();
        tables.regions = regions;
        tables.blocks = self.blocks.into_boxed_slice();
        tables
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use k8s_openapi::{api::networking::v1::IPBlock, apimachinery::pkg::util::intstr::IntOrString};

    use crate::policy::{PolicyEngine, SideResult, reference::Reference, synth};

    /// A rule listing every odd port (32,768 entries) cuts the TCP port space into 65,536
    /// intervals, one per port: every port gets its own verdict, 65535 included. (The interval
    /// count was packed in 16 bits: the last interval was lost and port 65535 denied.)
    #[test]
    fn a_rule_with_65536_port_intervals_decides_every_port() {
        let inv = crate::inventory::Inventory::from_yaml_str(
            "apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: shop, labels: {app: web}}, status: {podIP: 10.0.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: api, namespace: shop, labels: {app: api}}, status: {podIP: 10.0.0.2}}
",
            "inv.yaml",
        )
        .unwrap();
        let ports: Vec<serde_json::Value> = (1..=65535u32)
            .step_by(2)
            .map(|p| serde_json::json!({"port": p}))
            .collect();
        assert_eq!(ports.len(), 32_768);
        let policy: crate::inventory::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "odd-ports", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "ingress": [{"ports": ports}]}
        }))
        .unwrap();
        let pols = [policy];
        let engine = PolicyEngine::compile(&pols, &inv).unwrap();
        let flow = |port: u16| {
            crate::flow::FlowRecord::new(
                crate::flow::Protocol::Tcp,
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                Some(port),
            )
        };
        for port in 0..=u16::MAX {
            let c = engine.evaluate_flow_compact(&flow(port));
            assert_eq!(c.allowed, port % 2 == 1, "port {port}");
        }
        let reference = Reference::new(&inv, &pols).unwrap();
        for port in [0, 1, 2, 32_767, 32_768, 65_533, 65_534, 65_535] {
            let v = engine.evaluate_flow(&flow(port));
            assert_eq!(v, reference.evaluate(&flow(port)), "port {port}");
        }
        let last = engine.evaluate_flow(&flow(65_535));
        assert_eq!(last.ingress.result, SideResult::Allowed);
        assert_eq!(last.ingress.rules, ["shop/odd-ports:ingress[0]"]);
    }

    /// Dense policies (dozens selecting each pod, so groups merge many rules with overlapping
    /// port ranges, named ports and ipBlocks): the merged tables must agree with the literal
    /// reference, explanation included.
    #[test]
    fn dense_groups_agree_with_the_reference() {
        let inv = synth::cluster(4, 300, 11);
        let pols = synth::policies(400, 4, 11);
        let flows = synth::flows(&inv, 4_000, 11);
        let engine = PolicyEngine::compile(&pols, &inv).unwrap();
        let reference = Reference::new(&inv, &pols).unwrap();
        let mut multi_rule = 0;
        let mut denied = 0;
        for flow in &flows {
            let v = engine.evaluate_flow(flow);
            assert_eq!(v, reference.evaluate(flow), "disagreement on {flow:?}");
            let c = engine.evaluate_flow_compact(flow);
            assert_eq!(c.allowed, v.allowed);
            multi_rule += usize::from(v.ingress.rules.len() > 3);
            denied += usize::from(v.ingress.result == SideResult::Denied);
        }
        // Dense indeed: many verdicts are explained by several rules, some are denied.
        assert!(multi_rule > 500, "{multi_rule}");
        assert!(denied > 5, "{denied}");
    }

    /// Named ports that differ between destination pods (the same name on different ports,
    /// two names on one port, so that one, two or three rule sets of a group allow a flow):
    /// both verdict forms agree with the literal reference, explanations included.
    #[test]
    fn named_ports_by_destination_agree_with_the_reference() {
        let mut inv = synth::cluster(4, 300, 11);
        for (i, pod) in inv.pods.iter_mut().enumerate() {
            let mut ports = pod.container_ports.to_vec();
            for port in &mut ports {
                match (i % 3, port.name.as_deref()) {
                    (1, Some("http")) => port.port = 9050,
                    (2, Some("metrics")) => port.port = 8080,
                    _ => {}
                }
            }
            pod.container_ports = ports.into();
        }
        let pols = synth::policies(400, 4, 11);
        let flows = synth::flows(&inv, 3_000, 11);
        let reference = Reference::new(&inv, &pols).unwrap();
        let expected: Vec<_> = flows.iter().map(|f| reference.evaluate(f)).collect();
        let engine = PolicyEngine::compile(&pols, &inv).unwrap();
        let mut multi_named = 0;
        for (flow, want) in flows.iter().zip(&expected) {
            let v = engine.evaluate_flow(flow);
            assert_eq!(&v, want, "disagreement on {flow:?}");
            assert_eq!(engine.evaluate_flow_compact(flow).allowed, want.allowed);
            multi_named += usize::from(v.ingress.rules.len() > 1);
        }
        assert!(multi_named > 100, "{multi_named}");
    }

    /// Many distinct, overlapping ipBlocks with excepts (cut into address regions at compile
    /// time) over the pods' own addresses and the outside, and named ports resolved by id:
    /// both verdict forms agree with the literal reference, which tests each CIDR and looks
    /// each port name up on the destination pod.
    #[test]
    fn ipblock_regions_agree_with_the_reference() {
        let inv = synth::cluster(4, 300, 5);
        let mut pols = synth::policies(300, 4, 5);
        let mut rng = synth::Rng::new(5);
        // Pod addresses are 10.128.0.0-10.128.1.43; flows also go to 10.1.2.x, 203.0.113.x
        // and the nodes (192.168.0.x).
        let random_block = |rng: &mut synth::Rng| {
            if rng.chance(10) {
                // Another family: never contains an IPv4 peer.
                return IPBlock {
                    cidr: "::/0".into(),
                    except: Some(vec!["fd00::/8".into()]),
                };
            }
            let base: u32 = match rng.below(4) {
                0 => 0x0a01_0200,
                1 => 0xcb00_7100,
                2 => 0xc0a8_0000,
                _ => 0x0a80_0000 | ((rng.below(2) as u32) << 8),
            };
            let mask = |p: u32| u32::MAX.checked_shl(32 - p).unwrap_or(0);
            let prefix = 22 + rng.below(9) as u32;
            let net = (base | rng.below(256) as u32) & mask(prefix);
            let except: Vec<String> = (0..rng.below(3))
                .map(|_| {
                    let sub = prefix + 1 + rng.below((32 - prefix) as usize) as u32;
                    let addr = (net | (rng.next_u64() as u32 & !mask(prefix))) & mask(sub);
                    format!("{}/{sub}", Ipv4Addr::from(addr))
                })
                .collect();
            IPBlock {
                cidr: format!("{}/{prefix}", Ipv4Addr::from(net)),
                except: (!except.is_empty()).then_some(except),
            }
        };
        let mut blocks = 0;
        for p in &mut pols {
            let Some(spec) = p.spec.as_mut() else {
                continue;
            };
            let peers = spec
                .ingress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.from.iter_mut().flatten())
                .chain(
                    spec.egress
                        .iter_mut()
                        .flatten()
                        .flat_map(|r| r.to.iter_mut().flatten()),
                );
            for peer in peers {
                if peer.ip_block.is_some() {
                    peer.ip_block = Some(random_block(&mut rng));
                    blocks += 1;
                }
            }
        }
        // Named ports of every kind: on the pod with this protocol, on the pod with another
        // protocol, on no pod.
        let mut named = 0;
        for p in &mut pols {
            let Some(spec) = p.spec.as_mut() else {
                continue;
            };
            let ports = spec
                .ingress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.ports.iter_mut().flatten())
                .chain(
                    spec.egress
                        .iter_mut()
                        .flatten()
                        .flat_map(|r| r.ports.iter_mut().flatten()),
                );
            for port in ports {
                if let Some(IntOrString::String(name)) = &mut port.port {
                    *name = (*rng.pick(&["http", "metrics", "dns", "diameter", "nope"])).into();
                    port.protocol = rng
                        .pick(&[None, Some("TCP"), Some("UDP"), Some("SCTP")])
                        .map(str::to_owned);
                    named += 1;
                }
            }
        }
        assert!(blocks > 100 && named > 50, "{blocks} {named}");
        let flows = synth::flows(&inv, 20_000, 5);
        let engine = PolicyEngine::compile(&pols, &inv).unwrap();
        let reference = Reference::new(&inv, &pols).unwrap();
        let (mut allowed, mut denied) = (0, 0);
        for flow in &flows {
            let v = engine.evaluate_flow(flow);
            assert_eq!(v, reference.evaluate(flow), "disagreement on {flow:?}");
            let c = engine.evaluate_flow_compact(flow);
            assert_eq!(
                (c.allowed, c.ingress.result, c.egress.result),
                (v.allowed, v.ingress.result, v.egress.result)
            );
            allowed += usize::from(v.ingress.result == SideResult::Allowed);
            denied += usize::from(v.ingress.result == SideResult::Denied);
        }
        assert!(allowed > 1_000 && denied > 100, "{allowed} {denied}");
    }
}
