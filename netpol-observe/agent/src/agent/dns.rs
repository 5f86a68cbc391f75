//! DNS names on flows: the DNS answers the pods of this node receive (captured by the
//! datapath, [`crate::datapath::DnsAnswer`]) are parsed ([`parse_answer`]) into address →
//! names resolutions kept per pod ([`DnsCache`]: record TTL plus a grace period, bounded per
//! pod and in total, least recently used evicted first), which name the destination of the
//! pod's later flows (`dst.dns_names`). [`DnsPolicies`] watches the names the policies in
//! force allow by their `netpol-observe.io/dns-names` annotation and reports a name that now
//! resolves outside every ipBlock the policy lists it for (a *rotation*), when the answer
//! arrives, before the connection is even tried.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Header, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record},
    serialize::binary::{BinDecodable, BinDecoder},
};
use ipnet::IpNet;

use crate::inventory::Inventory;

/// The annotation naming the DNS names behind a NetworkPolicy's ipBlocks: a JSON object
/// `{"<cidr>": ["name", …]}` (written by `recommend`'s NetworkPolicy output).
pub const DNS_NAMES_ANNOTATION: &str = "netpol-observe.io/dns-names";

/// Default grace period after a record's TTL during which its names still name flows
/// (clients keep using an address a little after its TTL; resolvers cache).
pub const DEFAULT_DNS_GRACE: Duration = Duration::from_secs(300);
/// Default bound of addresses remembered per pod.
pub const DEFAULT_DNS_PER_POD: usize = 1024;
/// Default bound of (pod, address) entries in total.
pub const DEFAULT_DNS_ENTRIES: usize = 65_536;
/// Names kept per (pod, address) at most (the most recently answered win).
pub(crate) const MAX_NAMES_PER_ADDRESS: usize = 16;
/// CNAME links followed from the question at most.
const MAX_CNAME_CHAIN: usize = 16;

/// Why a captured DNS answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DnsParseError {
    /// Shorter than a DNS header (or a TCP length prefix).
    #[error("DNS message too short: {len} bytes")]
    Short {
        /// Bytes available.
        len: usize,
    },
    /// A part of the message does not decode.
    #[error("DNS message: cannot decode the {part}")]
    Wire {
        /// `header`, `question`, `answer record`.
        part: &'static str,
        /// What the decoder said.
        #[source]
        source: hickory_proto::ProtoError,
    },
}

/// What one DNS answer says: the addresses the asked name resolves to, each with every name
/// of its CNAME chain (the question first) and the TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The name asked (lower case, no trailing dot).
    pub question: String,
    /// Each address: the names that lead to it (question and CNAME names, sorted) and the
    /// smallest TTL along the chain, seconds.
    pub addresses: Vec<(IpAddr, Vec<String>, u32)>,
}

/// A name as flows carry it: lower case, without the trailing dot.
fn name_str(n: &Name) -> String {
    let s = n.to_lowercase().to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_owned()
}

/// Parses a captured DNS payload (`tcp`: one TCP segment, which starts with the message's
/// 2-byte length; `payload_len`: the payload's length in the packet, more than
/// `payload.len()` when the capture cut it). `Ok(None)`: not an answer with addresses
/// (a query, an error code, no question, no A/AAAA record, a TCP segment holding only the
/// length; a TCP segment holding a whole message without its length, sent after the length
/// alone, is read too). A message cut by the capture
/// keeps the records before the cut; anything else malformed is an error. Never panics.
pub fn parse_answer(
    payload: &[u8],
    tcp: bool,
    payload_len: u32,
) -> Result<Option<Resolution>, DnsParseError> {
    if !tcp {
        return parse_message(payload, false, payload_len);
    }
    // A server that writes the length and the message separately sends the length alone in
    // a segment, then the message without it.
    if payload.len() == 2 && payload_len == 2 {
        return Ok(None);
    }
    // The length the segment would start with: a whole message (or more) in the segment is
    // read with its length first; a longer one is a message continuing in later segments, or
    // a message without its length. Either reading that finds addresses wins.
    let declared = payload
        .get(..2)
        .map_or(0, |b| u32::from(u16::from_be_bytes([b[0], b[1]])));
    let prefixed_first = declared + 2 <= payload_len;
    let first = parse_message(payload, prefixed_first, payload_len);
    if matches!(first, Ok(Some(_))) {
        return first;
    }
    match parse_message(payload, !prefixed_first, payload_len) {
        Ok(Some(r)) => Ok(Some(r)),
        _ => first,
    }
}

/// [`parse_answer`] of one message (`tcp`: after its 2-byte length).
fn parse_message(
    payload: &[u8],
    tcp: bool,
    payload_len: u32,
) -> Result<Option<Resolution>, DnsParseError> {
    let mut cut = payload_len as usize > payload.len();
    let msg = if tcp {
        if payload.len() < 2 {
            return Err(DnsParseError::Short { len: payload.len() });
        }
        let declared = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
        let rest = &payload[2..];
        if declared < rest.len() {
            &rest[..declared]
        } else {
            cut |= declared > rest.len();
            rest
        }
    } else {
        payload
    };
    if msg.len() < 12 {
        return Err(DnsParseError::Short { len: msg.len() });
    }
    let mut d = BinDecoder::new(msg);
    let header = Header::read(&mut d).map_err(|source| DnsParseError::Wire {
        part: "header",
        source,
    })?;
    if header.message_type() != MessageType::Response
        || header.op_code() != OpCode::Query
        || header.response_code() != ResponseCode::NoError
        || header.query_count() == 0
    {
        return Ok(None);
    }
    let mut question = None;
    for _ in 0..header.query_count() {
        let q = Query::read(&mut d).map_err(|source| DnsParseError::Wire {
            part: "question",
            source,
        })?;
        question.get_or_insert_with(|| name_str(q.name()));
    }
    let Some(question) = question else {
        return Ok(None);
    };
    let mut records = Vec::new();
    for _ in 0..header.answer_count() {
        match Record::<RData>::read(&mut d) {
            Ok(r) => records.push(r),
            // The capture cut the message: what was read stands.
            Err(_) if cut => break,
            Err(source) => {
                return Err(DnsParseError::Wire {
                    part: "answer record",
                    source,
                });
            }
        }
    }
    Ok(resolve(question, &records))
}

/// Follows the CNAME chain from `question` through `records` and collects its addresses.
fn resolve(question: String, records: &[Record<RData>]) -> Option<Resolution> {
    let mut cnames: HashMap<String, (String, u32)> = HashMap::new();
    let mut addrs: HashMap<String, Vec<(IpAddr, u32)>> = HashMap::new();
    for r in records {
        let owner = name_str(r.name());
        match r.data() {
            RData::CNAME(c) => {
                cnames
                    .entry(owner)
                    .or_insert_with(|| (name_str(&c.0), r.ttl()));
            }
            RData::A(a) => addrs
                .entry(owner)
                .or_default()
                .push((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => addrs
                .entry(owner)
                .or_default()
                .push((IpAddr::V6(a.0), r.ttl())),
            _ => {}
        }
    }
    let mut chain = vec![question.clone()];
    let mut ttl = u32::MAX;
    let mut at = question.clone();
    let mut out: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for _ in 0..=MAX_CNAME_CHAIN {
        for (ip, t) in addrs.get(&at).into_iter().flatten() {
            let t = (*t).min(ttl);
            let e = out.entry(*ip).or_insert(t);
            *e = (*e).min(t);
        }
        match cnames.get(&at) {
            Some((next, t)) if !chain.contains(next) => {
                ttl = ttl.min(*t);
                chain.push(next.clone());
                at = next.clone();
            }
            _ => break,
        }
    }
    if out.is_empty() {
        return None;
    }
    let mut names = chain;
    names.sort();
    names.dedup();
    names.truncate(MAX_NAMES_PER_ADDRESS);
    Some(Resolution {
        question,
        addresses: out
            .into_iter()
            .map(|(ip, t)| (ip, names.clone(), t))
            .collect(),
    })
}

/// A rotation: a name a policy allows resolved, for a pod it selects, to an address outside
/// every ipBlock the policy lists the name for. Served on the pod's flows to that address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DnsRotation {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The name.
    pub name: String,
}

/// What the DNS answers say of a flow's destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowDns {
    /// The names the client resolved to the address (sorted, unique).
    pub names: Vec<String>,
    /// A rotation seen for this client and address.
    pub rotation: Option<DnsRotation>,
}

/// Bounds and grace of a [`DnsCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsCacheLimits {
    /// How long after a record's TTL its names still name flows.
    pub grace: Duration,
    /// Addresses per pod.
    pub per_pod: usize,
    /// (pod, address) entries in total.
    pub total: usize,
}

impl Default for DnsCacheLimits {
    fn default() -> Self {
        DnsCacheLimits {
            grace: DEFAULT_DNS_GRACE,
            per_pod: DEFAULT_DNS_PER_POD,
            total: DEFAULT_DNS_ENTRIES,
        }
    }
}

/// One (pod, address) entry: names with the instant each stops naming flows (TTL + grace).
#[derive(Debug)]
struct Entry {
    names: Vec<(String, Instant)>,
    rotation: Option<DnsRotation>,
    tick: u64,
}

/// One pod's entries, with their order of use.
#[derive(Debug, Default)]
struct Client {
    addrs: HashMap<IpAddr, Entry>,
    lru: BTreeMap<u64, IpAddr>,
}

/// Per pod (client address): address → names, bounded, least recently used evicted first.
#[derive(Debug)]
pub struct DnsCache {
    limits: DnsCacheLimits,
    clients: HashMap<IpAddr, Client>,
    /// Every entry by last use: tick → (client, address).
    lru: BTreeMap<u64, (IpAddr, IpAddr)>,
    tick: u64,
    evictions: u64,
}

impl DnsCache {
    /// An empty cache.
    pub fn new(limits: DnsCacheLimits) -> DnsCache {
        DnsCache {
            limits: DnsCacheLimits {
                per_pod: limits.per_pod.max(1),
                total: limits.total.max(1),
                ..limits
            },
            clients: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            evictions: 0,
        }
    }

    /// (pod, address) entries held.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Entries evicted to stay within the bounds so far (expiry is not eviction).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Records that `client` resolved `names` to `addr` with `ttl` seconds at `now`.
    pub fn insert(
        &mut self,
        client: IpAddr,
        addr: IpAddr,
        names: &[String],
        ttl: u32,
        now: Instant,
    ) {
        let until = now + Duration::from_secs(u64::from(ttl)) + self.limits.grace;
        let tick = self.next_tick();
        let c = self.clients.entry(client).or_default();
        let e = c.addrs.entry(addr).or_insert_with(|| Entry {
            names: Vec::new(),
            rotation: None,
            tick: 0,
        });
        if e.tick != 0 {
            c.lru.remove(&e.tick);
            self.lru.remove(&e.tick);
        }
        e.tick = tick;
        c.lru.insert(tick, addr);
        self.lru.insert(tick, (client, addr));
        for n in names {
            match e.names.iter_mut().find(|(have, _)| have == n) {
                Some((_, u)) => *u = (*u).max(until),
                None => e.names.push((n.clone(), until)),
            }
        }
        if e.names.len() > MAX_NAMES_PER_ADDRESS {
            e.names.sort_by_key(|(_, u)| std::cmp::Reverse(*u));
            e.names.truncate(MAX_NAMES_PER_ADDRESS);
        }
        let over_pod = c.addrs.len() > self.limits.per_pod;
        if over_pod && let Some((&t, &a)) = c.lru.iter().next() {
            self.remove(client, a, t);
            self.evictions += 1;
        }
        while self.lru.len() > self.limits.total {
            let Some((&t, &(c, a))) = self.lru.iter().next() else {
                break;
            };
            self.remove(c, a, t);
            self.evictions += 1;
        }
    }

    fn remove(&mut self, client: IpAddr, addr: IpAddr, tick: u64) {
        self.lru.remove(&tick);
        if let Some(c) = self.clients.get_mut(&client) {
            c.lru.remove(&tick);
            c.addrs.remove(&addr);
            if c.addrs.is_empty() {
                self.clients.remove(&client);
            }
        }
    }

    /// Marks a rotation on `client`'s entry of `addr` (kept while the entry lives).
    pub fn set_rotation(&mut self, client: IpAddr, addr: IpAddr, rotation: DnsRotation) {
        if let Some(e) = self
            .clients
            .get_mut(&client)
            .and_then(|c| c.addrs.get_mut(&addr))
        {
            e.rotation.get_or_insert(rotation);
        }
    }

    /// What `client`'s DNS answers say of `addr` at `now` (names whose TTL plus grace has not
    /// passed, sorted); `None` when nothing.
    pub fn lookup(&self, client: IpAddr, addr: IpAddr, now: Instant) -> Option<FlowDns> {
        let e = self.clients.get(&client)?.addrs.get(&addr)?;
        let names: BTreeSet<&String> = e
            .names
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(n, _)| n)
            .collect();
        if names.is_empty() {
            return None;
        }
        Some(FlowDns {
            names: names.into_iter().cloned().collect(),
            rotation: e.rotation.clone(),
        })
    }

    /// Whether `client` has any entry (a cheap test before [`DnsCache::lookup`]).
    pub fn knows_client(&self, client: IpAddr) -> bool {
        self.clients.contains_key(&client)
    }

    /// Drops names whose TTL plus grace has passed at `now`, and entries left without names.
    pub fn expire(&mut self, now: Instant) {
        let mut gone = Vec::new();
        for (client, c) in &mut self.clients {
            for (addr, e) in &mut c.addrs {
                e.names.retain(|(_, until)| *until > now);
                if e.names.is_empty() {
                    gone.push((*client, *addr, e.tick));
                }
            }
        }
        for (c, a, t) in gone {
            self.remove(c, a, t);
        }
    }
}

/// The pods (by address) that one annotated policy selects, and the ipBlocks it lists per
/// name.
#[derive(Debug)]
struct Watched {
    /// `namespace/name`.
    policy: String,
    /// Name → the CIDRs of the annotation that list it.
    names: HashMap<String, Vec<IpNet>>,
}

/// The workload of a watched pod, as the rotation counter labels it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchedPod {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Workload kind.
    pub kind: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
}

/// A rotation found by [`DnsPolicies::check`], to count and mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRotation {
    /// The pod's workload.
    pub pod: WatchedPod,
    /// Policy and name.
    pub rotation: DnsRotation,
    /// The address outside the policy's ipBlocks for the name.
    pub addr: IpAddr,
}

/// Rotations counted once each: (workload, policy, name, address), bounded.
const MAX_ROTATIONS_REMEMBERED: usize = 65_536;

/// The policies in force with a `netpol-observe.io/dns-names` annotation, by the addresses
/// of the pods they select.
#[derive(Debug, Default)]
pub struct DnsPolicies {
    by_pod: HashMap<IpAddr, (WatchedPod, Vec<Arc<Watched>>)>,
    seen: HashSet<(WatchedPod, String, String, IpAddr)>,
}

/// A policy's annotation that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("NetworkPolicy {policy}: annotation {DNS_NAMES_ANNOTATION}: {reason}")]
pub struct AnnotationError {
    /// `namespace/name`.
    pub policy: String,
    /// What is wrong.
    pub reason: String,
}

impl DnsPolicies {
    /// The annotated policies of `inventory` and the pods they select; a policy whose
    /// annotation or selector does not parse is left out, with its error.
    pub fn new(inventory: &Inventory) -> (DnsPolicies, Vec<AnnotationError>) {
        let mut out = DnsPolicies::default();
        let mut errors = Vec::new();
        for np in &inventory.network_policies {
            let Some(text) = np
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DNS_NAMES_ANNOTATION))
            else {
                continue;
            };
            let ns = np.metadata.namespace.as_deref().unwrap_or("default");
            let policy = format!("{ns}/{}", np.metadata.name.as_deref().unwrap_or(""));
            let fail = |reason: String| AnnotationError {
                policy: policy.clone(),
                reason,
            };
            let parsed: BTreeMap<String, Vec<String>> = match serde_json::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(fail(format!("not a JSON object of CIDR → names: {e}")));
                    continue;
                }
            };
            let mut names: HashMap<String, Vec<IpNet>> = HashMap::new();
            let mut bad = None;
            for (cidr, list) in parsed {
                let net = match cidr.parse::<IpNet>() {
                    Ok(n) => n,
                    Err(_) => match cidr.parse::<IpAddr>() {
                        Ok(ip) => IpNet::from(ip),
                        Err(e) => {
                            bad = Some(format!("key {cidr:?} is not a CIDR: {e}"));
                            break;
                        }
                    },
                };
                for n in list {
                    let n = n.trim_end_matches('.').to_ascii_lowercase();
                    names.entry(n).or_default().push(net);
                }
            }
            if let Some(b) = bad {
                errors.push(fail(b));
                continue;
            }
            let Some(spec) = &np.spec else {
                continue;
            };
            let watched = Arc::new(Watched {
                policy: policy.clone(),
                names,
            });
            for pod in inventory.pods_in(ns) {
                if pod.host_network || pod.deleted.is_some() {
                    continue;
                }
                let all = Default::default();
                let selector = spec.pod_selector.as_ref().unwrap_or(&all);
                match crate::policy::label_selector_matches(selector, &pod.labels) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        errors.push(fail(format!("podSelector: {e}")));
                        break;
                    }
                }
                let w = WatchedPod {
                    namespace: Arc::from(&*pod.namespace),
                    kind: Arc::from(pod.workload.kind.as_str()),
                    workload: Arc::from(pod.workload.name.as_str()),
                };
                for ip in &pod.ips {
                    out.by_pod
                        .entry(*ip)
                        .or_insert_with(|| (w.clone(), Vec::new()))
                        .1
                        .push(Arc::clone(&watched));
                }
            }
        }
        (out, errors)
    }

    /// Whether no pod is watched.
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// The rotations in `client`'s resolution of `names` to `addr` not reported before: per
    /// policy selecting the client that lists one of the names, the address outside every
    /// CIDR listing it. Each (workload, policy, name, address) is reported once.
    pub fn check(&mut self, client: IpAddr, addr: IpAddr, names: &[String]) -> Vec<FoundRotation> {
        let Some((pod, policies)) = self.by_pod.get(&client) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for w in policies {
            for n in names {
                let Some(nets) = w.names.get(n) else {
                    continue;
                };
                if nets.iter().any(|net| net.contains(&addr)) {
                    continue;
                }
                let key = (pod.clone(), w.policy.clone(), n.clone(), addr);
                if self.seen.contains(&key) {
                    continue;
                }
                if self.seen.len() >= MAX_ROTATIONS_REMEMBERED {
                    self.seen.clear();
                }
                self.seen.insert(key);
                found.push(FoundRotation {
                    pod: pod.clone(),
                    rotation: DnsRotation {
                        policy: w.policy.clone(),
                        name: n.clone(),
                    },
                    addr,
                });
            }
        }
        found
    }

    /// Takes over what `old` already reported (a new model keeps the once-only rule).
    pub fn keep_seen(&mut self, old: &mut DnsPolicies) {
        self.seen = std::mem::take(&mut old.seen);
    }
}

/// The agent's DNS state: the name cache and the watched policies of the current model.
#[derive(Debug)]
pub struct DnsState {
    cache: DnsCache,
    policies: DnsPolicies,
    /// The model `policies` were built from (a weak reference: its address stays its own
    /// while held, so a new model is never taken for it).
    model: std::sync::Weak<super::Model>,
}

impl DnsState {
    /// An empty state with `grace` after each TTL and the default bounds.
    pub fn new(grace: Duration) -> DnsState {
        DnsState {
            cache: DnsCache::new(DnsCacheLimits {
                grace,
                ..DnsCacheLimits::default()
            }),
            policies: DnsPolicies::default(),
            model: std::sync::Weak::new(),
        }
    }
}

impl DnsState {
    /// What the DNS answers `client` received say of `addr` now.
    pub(super) fn flow_dns(&self, client: IpAddr, addr: IpAddr) -> Option<Arc<FlowDns>> {
        if !self.cache.knows_client(client) {
            return None;
        }
        self.cache
            .lookup(client, addr, Instant::now())
            .map(Arc::new)
    }
}

impl super::AgentState {
    /// Takes one DNS answer the datapath captured: parsed into the client's name cache, and
    /// checked against the names the policies in force allow (a rotation is counted, logged
    /// and marked on the client's later flows to the address).
    pub fn on_dns(&self, answer: &crate::datapath::DnsAnswer) {
        self.on_dns_at(answer, Instant::now());
    }

    /// [`super::AgentState::on_dns`] at `now`.
    pub fn on_dns_at(&self, answer: &crate::datapath::DnsAnswer, now: Instant) {
        let m = self.metrics.dns();
        m.answer();
        let resolution = match parse_answer(&answer.payload, answer.tcp, answer.payload_len) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                m.parse_error();
                tracing::debug!(client = %answer.client, server = %answer.server, "DNS answer: {e}");
                return;
            }
        };
        let mut flows = self.lock_flows();
        let model = flows.model.clone();
        let st = &mut flows.dns;
        let current = model
            .as_ref()
            .map_or_else(std::sync::Weak::new, Arc::downgrade);
        if !st.model.ptr_eq(&current) {
            let (mut policies, errors) = match &model {
                Some(m) => DnsPolicies::new(&m.inventory),
                None => (DnsPolicies::default(), Vec::new()),
            };
            for e in errors {
                tracing::warn!("{e}");
            }
            policies.keep_seen(&mut st.policies);
            st.policies = policies;
            st.model = current;
        }
        for (addr, names, ttl) in &resolution.addresses {
            st.cache.insert(answer.client, *addr, names, *ttl, now);
            for found in st.policies.check(answer.client, *addr, names) {
                tracing::warn!(
                    namespace = %found.pod.namespace,
                    workload = %found.pod.workload,
                    policy = %found.rotation.policy,
                    name = %found.rotation.name,
                    address = %found.addr,
                    "DNS rotation: a name the policy allows resolved to an address outside its ipBlocks for the name"
                );
                m.rotation(crate::metrics::dns::RotationLabels {
                    namespace: Arc::clone(&found.pod.namespace),
                    kind: Arc::clone(&found.pod.kind),
                    workload: Arc::clone(&found.pod.workload),
                    policy: found.rotation.policy.clone(),
                });
                st.cache.set_rotation(answer.client, *addr, found.rotation);
            }
        }
        m.set_cache(st.cache.len(), st.cache.evictions());
    }

    /// What the DNS answers `client` received say of `addr` now.
    #[cfg(test)]
    pub(super) fn flow_dns(&self, client: IpAddr, addr: IpAddr) -> Option<Arc<FlowDns>> {
        self.lock_flows().dns.flow_dns(client, addr)
    }

    /// Forgets expired names (every sweep interval) and updates the cache gauges.
    pub(super) fn expire_dns(&self) {
        let mut flows = self.lock_flows();
        let st = &mut flows.dns;
        st.cache.expire(Instant::now());
        self.metrics
            .dns()
            .set_cache(st.cache.len(), st.cache.evictions());
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
