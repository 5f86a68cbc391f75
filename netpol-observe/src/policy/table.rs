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
//! two rows. Deciding a direction is then: find the interval (binary search over a handful of
//! boundaries), test one bit. The explanation tests one bit per rule of the matched set.
//! Rule sets are interned: groups share them.

use std::{collections::HashMap, net::IpAddr};

use super::{
    Name, Names,
    compile::{Peer, PortMatch, PortSpec, Rule},
    names::RuleNames,
    regions::{Block, Regions},
};
use crate::flow::Protocol;

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
    /// Its peer condition.
    cond: u32,
    /// `ns/name:ingress[i]`.
    pub(crate) label: Name,
}

/// Rules (global ids, ascending = policy order then rule order) with their peers merged.
#[derive(Debug, Clone)]
pub(crate) struct RuleSet {
    /// The union of the rules' peer conditions.
    cond: u32,
    /// Each rule and its peer condition.
    rules: Box<[(u32, u32)]>,
}

/// The rule sets of one protocol with ports (TCP, UDP, SCTP) in a group.
#[derive(Debug, Clone, Default)]
struct ProtoTable {
    /// Flows without a port: rules without ports and rules for every port of the protocol.
    no_port: u32,
    /// Interval starts (ascending, the first is 0).
    starts: Box<[u16]>,
    /// The rule set of each interval.
    sets: Box<[u32]>,
    /// Named ports (ids, see [`Tables::port_name`]; resolved against the destination pod)
    /// and their rules.
    named: Box<[(u32, u32)]>,
}

/// The policies selecting a group of pods in one direction, and their rule tables.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The selecting policies (indices, ascending).
    pub(crate) policies: Box<[u32]>,
    /// Their names: the explanation of a denial.
    pub(crate) denied: Names,
    /// Protocols without ports (ICMP): the rules without ports.
    other: u32,
    /// TCP, UDP, SCTP.
    protos: [ProtoTable; 3],
}

/// The peer being checked: its class when it is a pod peer, and its address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerKey {
    /// Peer class of a (non-hostNetwork) pod peer.
    pub(crate) class: Option<u32>,
    /// The peer's address (ipBlocks match it, pod addresses included).
    pub(crate) ip: IpAddr,
}

/// The two condition rows of a peer (word offsets into the class and region rows).
#[derive(Debug, Clone, Copy)]
struct Rows {
    class: usize,
    region: usize,
}

/// Every table of an engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tables {
    rules: Vec<RuleInfo>,
    sets: Vec<RuleSet>,
    groups: Vec<Group>,
    /// Named ports used by the rules: name → id.
    port_names: HashMap<Box<str>, u32>,
    /// Peer classes; row `classes` is the empty row of peers without a class.
    classes: usize,
    /// Words per row (one bit per interned condition).
    row_words: usize,
    /// Per peer class (then the empty row): bit `c` = condition `c` allows pods of the class.
    class_rows: Box<[u64]>,
    /// Per address region: bit `c` = condition `c` allows every peer or has an ipBlock
    /// containing the region.
    region_rows: Box<[u64]>,
    regions: Regions,
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
    /// A group by index.
    #[inline]
    pub(crate) fn group(&self, g: u32) -> &Group {
        &self.groups[g as usize]
    }

    /// The id of a named port used by some rule (`None`: no rule names it).
    pub(crate) fn port_name(&self, name: &str) -> Option<u32> {
        self.port_names.get(name).copied()
    }

    /// The names of every rule, for lazy explanations; `policies` names every policy.
    pub(crate) fn rule_names(&self, policies: &[Name]) -> RuleNames {
        RuleNames {
            labels: self.rules.iter().map(|r| r.label.clone()).collect(),
            policy: self.rules.iter().map(|r| r.policy).collect(),
            policies: policies.into(),
        }
    }

    /// The condition rows of a peer.
    #[inline]
    fn rows(&self, peer: PeerKey) -> Rows {
        let class = peer
            .class
            .map_or(self.classes, |k| (k as usize).min(self.classes));
        Rows {
            class: class * self.row_words,
            region: self.regions.region(peer.ip) as usize * self.row_words,
        }
    }

    /// Whether condition `cond` allows the peer of `rows`.
    #[inline]
    fn hit(&self, rows: Rows, cond: u32) -> bool {
        let w = cond as usize / 64;
        let class = self.class_rows.get(rows.class + w).copied().unwrap_or(0);
        let region = self.region_rows.get(rows.region + w).copied().unwrap_or(0);
        ((class | region) >> (cond % 64)) & 1 == 1
    }

    /// Whether some rule of set `set` allows the peer of `rows`.
    #[inline]
    fn set_hit(&self, rows: Rows, set: u32) -> bool {
        self.sets
            .get(set as usize)
            .is_some_and(|s| self.hit(rows, s.cond))
    }

    /// The rule set for the flow's protocol and port, and the named ports to try.
    #[inline]
    fn lookup<'a>(
        &self,
        g: &'a Group,
        protocol: Protocol,
        port: Option<u16>,
    ) -> (u32, &'a [(u32, u32)]) {
        let Some(i) = proto_index(protocol) else {
            return (g.other, &[]);
        };
        let t = &g.protos[i];
        match port {
            None => (t.no_port, &[]),
            Some(p) => {
                let at = t.starts.partition_point(|s| *s <= p).saturating_sub(1);
                (t.sets.get(at).copied().unwrap_or(t.no_port), &t.named)
            }
        }
    }

    /// Whether some rule of group `g` allows the flow (protocol, destination port, the named
    /// ports of the destination pod via `named_port`, by name id) from/to `peer`.
    #[inline]
    pub(crate) fn allows(
        &self,
        g: u32,
        protocol: Protocol,
        port: Option<u16>,
        peer: PeerKey,
        named_port: impl Fn(u32) -> Option<u16>,
    ) -> bool {
        let group = self.group(g);
        let (set, named) = self.lookup(group, protocol, port);
        let rows = self.rows(peer);
        if self.set_hit(rows, set) {
            return true;
        }
        port.is_some_and(|p| {
            named
                .iter()
                .any(|(name, s)| named_port(*name) == Some(p) && self.set_hit(rows, *s))
        })
    }

    /// Every rule of group `g` allowing the flow (global ids, ascending): the explanation.
    /// Empty when the flow is denied.
    pub(crate) fn allowing_rules(
        &self,
        g: u32,
        protocol: Protocol,
        port: Option<u16>,
        peer: PeerKey,
        named_port: impl Fn(u32) -> Option<u16>,
    ) -> Vec<u32> {
        let group = self.group(g);
        let (set, named) = self.lookup(group, protocol, port);
        let rows = self.rows(peer);
        let mut out = Vec::new();
        self.push_allowing(rows, set, &mut out);
        let mut extra = false;
        if let Some(p) = port {
            for (name, s) in named {
                if named_port(*name) == Some(p) {
                    extra |= self.push_allowing(rows, *s, &mut out);
                }
            }
        }
        if extra {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// Appends the rules of set `set` allowing the peer of `rows`; whether there was one.
    #[inline]
    fn push_allowing(&self, rows: Rows, set: u32, out: &mut Vec<u32>) -> bool {
        let Some(s) = self.sets.get(set as usize) else {
            return false;
        };
        // The set's condition is the union of its rules': no hit, no rule to test.
        if !self.hit(rows, s.cond) {
            return false;
        }
        out.reserve(s.rules.len());
        out.extend(
            s.rules
                .iter()
                .filter(|(_, c)| self.hit(rows, *c))
                .map(|(r, _)| *r),
        );
        true
    }
}

/// Builds [`Tables`]: rules first (in global order), then groups, then the condition rows.
#[derive(Debug)]
pub(crate) struct TablesBuilder<'a> {
    tables: Tables,
    /// Each global rule's ports.
    ports: Vec<Option<&'a [PortMatch]>>,
    /// Interned peer conditions and ipBlocks.
    conds: Vec<CondSpec>,
    cond_ids: HashMap<CondSpec, u32>,
    blocks: Vec<Block>,
    block_ids: HashMap<Block, u32>,
    set_ids: HashMap<Box<[u32]>, u32>,
    group_ids: HashMap<(bool, Box<[u32]>), u32>,
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
            conds: Vec::new(),
            cond_ids: HashMap::new(),
            blocks: Vec::new(),
            block_ids: HashMap::new(),
            set_ids: HashMap::new(),
            group_ids: HashMap::new(),
            words: classes.div_ceil(64),
        };
        // Set 0: no rule, allows nothing.
        b.intern_set(Vec::new());
        b
    }

    fn intern_cond(&mut self, mut cond: CondSpec) -> u32 {
        if cond.all {
            cond.classes = Box::default();
            cond.blocks = Box::default();
        } else if cond.classes.iter().all(|w| *w == 0) {
            cond.classes = Box::default();
        }
        if let Some(id) = self.cond_ids.get(&cond) {
            return *id;
        }
        let id = to_u32(self.conds.len());
        self.conds.push(cond.clone());
        self.cond_ids.insert(cond, id);
        id
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
                blocks.sort_unstable();
                blocks.dedup();
                CondSpec {
                    all: false,
                    classes,
                    blocks: blocks.into_boxed_slice(),
                }
            }
        };
        let cond = self.intern_cond(cond);
        let id = to_u32(self.tables.rules.len());
        self.tables.rules.push(RuleInfo {
            policy,
            cond,
            label,
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
        for r in &rules {
            let Some(info) = self.tables.rules.get(*r as usize) else {
                continue;
            };
            pairs.push((*r, info.cond));
            let Some(c) = self.conds.get(info.cond as usize) else {
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
        let cond = self.intern_cond(CondSpec {
            all,
            classes,
            blocks: blocks.into_boxed_slice(),
        });
        let id = to_u32(self.tables.sets.len());
        self.tables.sets.push(RuleSet {
            cond,
            rules: pairs.into_boxed_slice(),
        });
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
    ) -> u32 {
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
        let group = Group {
            policies: key.1.clone(),
            denied: policies
                .iter()
                .filter_map(|p| names.get(*p as usize).cloned())
                .collect(),
            other,
            protos,
        };
        let id = to_u32(self.tables.groups.len());
        self.tables.groups.push(group);
        self.group_ids.insert(key, id);
        id
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
        let mut starts = Vec::with_capacity(bounds.len());
        let mut sets: Vec<u32> = Vec::with_capacity(bounds.len());
        for s in bounds {
            let mut list = base.clone();
            list.extend(
                ranges
                    .iter()
                    .filter(|(a, b, _)| *a <= s && s <= *b)
                    .map(|(_, _, r)| *r),
            );
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
            starts: starts.into_boxed_slice(),
            sets: sets.into_boxed_slice(),
            named: named_sets.into_boxed_slice(),
        }
    }

    /// The finished tables: the address regions of the ipBlocks and the condition rows.
    pub(crate) fn finish(self) -> Tables {
        let mut tables = self.tables;
        let regions = Regions::build(&self.blocks);
        let words = self.conds.len().div_ceil(64).max(1);
        let classes = tables.classes;
        let mut class_rows = vec![0u64; (classes + 1) * words];
        let mut region_rows = vec![0u64; regions.len() * words];
        // The regions inside each block.
        let mut block_regions: Vec<Vec<usize>> = vec![Vec::new(); self.blocks.len()];
        for r in 0..regions.len() {
            for b in regions.members(r) {
                if let Some(list) = block_regions.get_mut(*b as usize) {
                    list.push(r);
                }
            }
        }
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
        tables.row_words = words;
        tables.class_rows = class_rows.into_boxed_slice();
        tables.region_rows = region_rows.into_boxed_slice();
        tables.regions = regions;
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
            let v = engine.evaluate(flow);
            assert_eq!(v, reference.evaluate(flow), "disagreement on {flow:?}");
            let c = engine.evaluate_compact(flow);
            assert_eq!(c.allowed, v.allowed);
            multi_rule += usize::from(v.ingress.rules.len() > 3);
            denied += usize::from(v.ingress.result == SideResult::Denied);
        }
        // Dense indeed: many verdicts are explained by several rules, some are denied.
        assert!(multi_rule > 500, "{multi_rule}");
        assert!(denied > 5, "{denied}");
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
            let v = engine.evaluate(flow);
            assert_eq!(v, reference.evaluate(flow), "disagreement on {flow:?}");
            let c = engine.evaluate_compact(flow);
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
