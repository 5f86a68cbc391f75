//! Rule tables per policy group, built at compile time so that a verdict costs the same few
//! lookups whatever the number of policies.
//!
//! Pods selected by the same list of policies (per direction) form a *group*. For each group
//! and protocol the port space is cut into intervals at every boundary of the group's port
//! ranges; each interval (and each named port, and "no port") maps to a [`RuleSet`]: the
//! group's rules whose ports cover it, with the union of their peers pre-merged into one
//! [`PeerCond`] (a bitset over peer classes, the ipBlocks, or "every peer"). Deciding a
//! direction is then: find the interval (binary search over a handful of boundaries), test one
//! class bit or a few ipBlocks. The explanation walks only the rules of the matched set.
//! Rule sets and class bitsets are interned: groups share them.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

use super::{
    Name, Names,
    compile::{PortSpec, Rule},
    names::RuleNames,
};
use crate::flow::Protocol;

/// Which peers some rules allow, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct PeerCond {
    /// Every peer (a rule without `from`/`to`).
    all: bool,
    /// The pod peer classes allowed (index into [`Tables::bitsets`]), if any.
    classes: Option<u32>,
    /// ipBlocks: `(cidr, except)`.
    blocks: Box<[(IpNet, Box<[IpNet]>)]>,
}

/// A compiled rule as the tables see it.
#[derive(Debug, Clone)]
pub(crate) struct RuleInfo {
    /// Index of the policy (in `ns/name` order).
    pub(crate) policy: u32,
    /// Its peers.
    cond: PeerCond,
    /// `ns/name:ingress[i]`.
    pub(crate) label: Name,
}

/// Rules (global ids, ascending = policy order then rule order) with their peers merged.
#[derive(Debug, Clone)]
pub(crate) struct RuleSet {
    cond: PeerCond,
    rules: Box<[u32]>,
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
    /// Named ports (resolved against the destination pod) and their rules.
    named: Box<[(Box<str>, u32)]>,
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

/// Every table of an engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tables {
    bitsets: Vec<Box<[u64]>>,
    rules: Vec<RuleInfo>,
    sets: Vec<RuleSet>,
    groups: Vec<Group>,
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

    /// The names of every rule, for lazy explanations; `policies` names every policy.
    pub(crate) fn rule_names(&self, policies: &[Name]) -> RuleNames {
        RuleNames {
            labels: self.rules.iter().map(|r| r.label.clone()).collect(),
            policy: self.rules.iter().map(|r| r.policy).collect(),
            policies: policies.into(),
        }
    }

    #[inline]
    fn cond_matches(&self, c: &PeerCond, peer: PeerKey) -> bool {
        c.all
            || (c.classes.is_some_and(|b| {
                peer.class.is_some_and(|k| {
                    self.bitsets[b as usize]
                        .get(k as usize / 64)
                        .is_some_and(|w| (w >> (k % 64)) & 1 == 1)
                })
            }))
            || c.blocks.iter().any(|(cidr, except)| {
                cidr.contains(&peer.ip) && !except.iter().any(|e| e.contains(&peer.ip))
            })
    }

    /// The rule set for the flow's protocol and port, and the named ports to try.
    #[inline]
    fn lookup<'a>(
        &self,
        g: &'a Group,
        protocol: Protocol,
        port: Option<u16>,
    ) -> (u32, &'a [(Box<str>, u32)]) {
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
    /// ports of the destination pod via `named_port`) from/to `peer`.
    #[inline]
    pub(crate) fn allows(
        &self,
        g: u32,
        protocol: Protocol,
        port: Option<u16>,
        peer: PeerKey,
        named_port: impl Fn(&str) -> Option<u16>,
    ) -> bool {
        let group = self.group(g);
        let (set, named) = self.lookup(group, protocol, port);
        if self.cond_matches(&self.sets[set as usize].cond, peer) {
            return true;
        }
        named.iter().any(|(name, s)| {
            port.is_some()
                && named_port(name) == port
                && self.cond_matches(&self.sets[*s as usize].cond, peer)
        })
    }

    /// Every rule of group `g` allowing the flow (global ids, ascending): the explanation.
    pub(crate) fn allowing_rules(
        &self,
        g: u32,
        protocol: Protocol,
        port: Option<u16>,
        peer: PeerKey,
        named_port: impl Fn(&str) -> Option<u16>,
    ) -> Vec<u32> {
        let group = self.group(g);
        let (set, named) = self.lookup(group, protocol, port);
        let mut out: Vec<u32> = self.sets[set as usize]
            .rules
            .iter()
            .copied()
            .filter(|r| self.cond_matches(&self.rules[*r as usize].cond, peer))
            .collect();
        let mut extra = false;
        for (name, s) in named {
            if port.is_some() && named_port(name) == port {
                for r in self.sets[*s as usize].rules.iter() {
                    if self.cond_matches(&self.rules[*r as usize].cond, peer) {
                        out.push(*r);
                        extra = true;
                    }
                }
            }
        }
        if extra {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// Builds [`Tables`]: rules first (in global order), then groups.
#[derive(Debug)]
pub(crate) struct TablesBuilder<'a> {
    tables: Tables,
    /// Each global rule's ports.
    ports: Vec<Option<&'a [super::compile::PortMatch]>>,
    bitset_ids: HashMap<Box<[u64]>, u32>,
    set_ids: HashMap<Box<[u32]>, u32>,
    group_ids: HashMap<(bool, Box<[u32]>), u32>,
    words: usize,
}

impl<'a> TablesBuilder<'a> {
    /// A builder for bitsets over `classes` peer classes.
    pub(crate) fn new(classes: usize) -> Self {
        let mut b = TablesBuilder {
            tables: Tables::default(),
            ports: Vec::new(),
            bitset_ids: HashMap::new(),
            set_ids: HashMap::new(),
            group_ids: HashMap::new(),
            words: classes.div_ceil(64),
        };
        // Set 0: no rule, allows nothing.
        b.intern_set(Vec::new());
        b
    }

    fn intern_bitset(&mut self, bits: Box<[u64]>) -> Option<u32> {
        if bits.iter().all(|w| *w == 0) {
            return None;
        }
        if let Some(id) = self.bitset_ids.get(&bits) {
            return Some(*id);
        }
        let id = to_u32(self.tables.bitsets.len());
        self.tables.bitsets.push(bits.clone());
        self.bitset_ids.insert(bits, id);
        Some(id)
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
            None => PeerCond {
                all: true,
                ..PeerCond::default()
            },
            Some(peers) => {
                let mut bits = vec![0u64; self.words].into_boxed_slice();
                for set in pod_sets {
                    for (w, s) in bits.iter_mut().zip(set.iter()) {
                        *w |= s;
                    }
                }
                let mut blocks: Vec<(IpNet, Box<[IpNet]>)> = peers
                    .iter()
                    .filter_map(|p| match p {
                        super::compile::Peer::IpBlock { cidr, except } => {
                            Some((*cidr, except.clone().into_boxed_slice()))
                        }
                        super::compile::Peer::Pods { .. } => None,
                    })
                    .collect();
                blocks.sort();
                blocks.dedup();
                PeerCond {
                    all: false,
                    classes: self.intern_bitset(bits),
                    blocks: blocks.into_boxed_slice(),
                }
            }
        };
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
        let mut bits = vec![0u64; self.words].into_boxed_slice();
        let mut blocks: Vec<(IpNet, Box<[IpNet]>)> = Vec::new();
        for r in &rules {
            let c = &self.tables.rules[*r as usize].cond;
            all |= c.all;
            if let Some(b) = c.classes {
                for (w, s) in bits.iter_mut().zip(self.tables.bitsets[b as usize].iter()) {
                    *w |= s;
                }
            }
            blocks.extend(c.blocks.iter().cloned());
        }
        let cond = if all {
            PeerCond {
                all: true,
                ..PeerCond::default()
            }
        } else {
            blocks.sort();
            blocks.dedup();
            PeerCond {
                all: false,
                classes: self.intern_bitset(bits),
                blocks: blocks.into_boxed_slice(),
            }
        };
        let id = to_u32(self.tables.sets.len());
        let rules: Box<[u32]> = rules.into_boxed_slice();
        self.tables.sets.push(RuleSet {
            cond,
            rules: rules.clone(),
        });
        self.set_ids.insert(rules, id);
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
            .filter(|r| self.ports[*r as usize].is_none())
            .collect();
        let other = self.intern_set(portless.clone());
        let protos = PROTOS.map(|p| self.proto_table(p, &all_rules, &portless));
        let group = Group {
            policies: key.1.clone(),
            denied: policies
                .iter()
                .map(|p| names[*p as usize].clone())
                .collect(),
            other,
            protos,
        };
        let id = to_u32(self.tables.groups.len());
        self.tables.groups.push(group);
        self.group_ids.insert(key, id);
        id
    }

    fn proto_table(&mut self, proto: Protocol, rules: &[u32], portless: &[u32]) -> ProtoTable {
        let mut base = portless.to_vec();
        let mut ranges: Vec<(u16, u16, u32)> = Vec::new();
        let mut named: Vec<(&str, u32)> = Vec::new();
        for r in rules {
            for pm in self.ports[*r as usize].into_iter().flatten() {
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
        let mut named_sets: Vec<(Box<str>, u32)> = Vec::new();
        let mut i = 0;
        while i < named.len() {
            let name = named[i].0;
            let mut list = Vec::new();
            while i < named.len() && named[i].0 == name {
                list.push(named[i].1);
                i += 1;
            }
            let id = self.intern_set(list);
            named_sets.push((name.into(), id));
        }
        ProtoTable {
            no_port,
            starts: starts.into_boxed_slice(),
            sets: sets.into_boxed_slice(),
            named: named_sets.into_boxed_slice(),
        }
    }

    /// The finished tables.
    pub(crate) fn finish(self) -> Tables {
        self.tables
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
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
}
