//! Flows the policies in force denied: by default never turned into allow rules (a connection
//! the kernel dropped is not evidence of legitimate traffic — anyone can knock on a port while
//! the agent learns), reported apart for review.
//!
//! The rule (also in `docs/design/recommend.md`, *Denied flows*):
//! - **denied** — the flow has drops of a filter (`drops.count > 0` with a reason other than
//!   `NO_SOCKET` or `IP_RPFILTER`, which no filter causes), or its source recorded a verdict
//!   saying denied (an agent's `/api/v1/flows`, `evaluate`'s output, a `verdict="denied"`
//!   Prometheus series), or, without a recorded verdict, the inventory's NetworkPolicies deny
//!   it;
//! - **delivered** — the agent marked it `unenforced`, or a TCP flow completed its handshake
//!   (`established`, `closed`), or another protocol's responder answered (`active`), or a
//!   record without `state` has reply packets; **not delivered** — `attempted`, `refused`,
//!   TCP `reset` (a CNI rejecting with a RST looks alike), or packets without replies;
//!   **unknown** — no `state`, no `packets` (hand-written input).
//! - A denied flow that was delivered is real traffic the CNI did not block: learned as
//!   observed, and noted. A denied flow that was not delivered is not learned (unless
//!   [`RecommendConfig::include_denied`](super::RecommendConfig::include_denied)). When
//!   delivery is unknown: not learned if drops or a recorded verdict say denied; learned (and
//!   noted) if only the inventory's policies deny it, since those may not be the policies that
//!   were in force when the record was written.
//! - The copies of one connection (same protocol, addresses and ports: a flow between two
//!   nodes is recorded by the client's node, its drops by the server's) are judged together:
//!   denied if a copy says so, delivered if a copy was.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use super::verify::peer_name;
use crate::{
    flow::{FlowRecord, FlowState, Protocol},
    policy::{PolicyEngine, SideResult, SideVerdict, Verdict},
};

/// What the policies in force said of a flow when it was observed, as its source recorded it:
/// the `verdict` of an agent's `/api/v1/flows` line or of `evaluate`'s output, the `verdict`
/// label of a Prometheus series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordedVerdict {
    /// Allowed, or not isolated.
    Allowed,
    /// Denied; why, as `verify` says it (`egress denied, isolated by ns/name`).
    Denied(String),
}

impl RecordedVerdict {
    /// The recorded form of a verdict.
    pub fn of(v: &Verdict) -> Self {
        if v.allowed {
            RecordedVerdict::Allowed
        } else {
            RecordedVerdict::Denied(denial(v))
        }
    }
}

/// Flow records and, for each, the verdict its source recorded (if it did): the input of
/// [`Recommender::recommend_recorded`](super::Recommender::recommend_recorded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedFlows {
    /// The records.
    pub flows: Vec<FlowRecord>,
    /// `verdicts[i]` is what the source said of `flows[i]`; empty when no source said
    /// anything (missing entries are `None`).
    pub verdicts: Vec<Option<RecordedVerdict>>,
}

impl RecordedFlows {
    /// Appends a record.
    pub fn push(&mut self, flow: FlowRecord, verdict: Option<RecordedVerdict>) {
        if verdict.is_some() && self.verdicts.len() < self.flows.len() {
            self.verdicts.resize(self.flows.len(), None);
        }
        if verdict.is_some() || !self.verdicts.is_empty() {
            self.verdicts.push(verdict);
        }
        self.flows.push(flow);
    }

    /// The verdict recorded with `flows[i]`.
    pub fn verdict(&self, i: usize) -> Option<&RecordedVerdict> {
        self.verdicts.get(i)?.as_ref()
    }
}

impl From<Vec<FlowRecord>> for RecordedFlows {
    fn from(flows: Vec<FlowRecord>) -> Self {
        RecordedFlows {
            flows,
            verdicts: Vec::new(),
        }
    }
}

/// Why `v` denies, per denying side: `egress denied, isolated by a/b; ingress denied, isolated
/// by c/d` (the words of `verify`).
pub(crate) fn denial(v: &Verdict) -> String {
    let side = |s: &SideVerdict| {
        (s.result == SideResult::Denied).then(|| s.policies.iter().map(|n| n.to_string()).collect())
    };
    denial_of(side(&v.egress), side(&v.ingress))
}

/// [`denial`] from the isolating policies of each denying side (`None`: the side passes).
pub(crate) fn denial_of(egress: Option<Vec<String>>, ingress: Option<Vec<String>>) -> String {
    let side = |name: &str, policies: Option<Vec<String>>| {
        policies.map(|p| {
            if p.is_empty() {
                format!("{name} denied")
            } else {
                format!("{name} denied, isolated by {}", p.join(","))
            }
        })
    };
    let parts: Vec<String> = [side("egress", egress), side("ingress", ingress)]
        .into_iter()
        .flatten()
        .collect();
    if parts.is_empty() {
        "denied".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Whether a flow got through, as far as its record tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Marked `unenforced`, handshake completed, or answered.
    Delivered,
    /// `attempted`, `refused`, TCP `reset`, or no reply packets.
    NotDelivered,
    /// Neither `state` nor `packets` (hand-written input).
    Unknown,
}

/// The delivery of `f` (the agent's own rule for `unenforced`, without its timing).
pub(crate) fn delivery(f: &FlowRecord) -> Delivery {
    if f.unenforced.is_some() {
        return Delivery::Delivered;
    }
    let by_state = match (f.protocol, f.state) {
        (Protocol::Tcp, Some(FlowState::Established | FlowState::Closed)) => {
            Some(Delivery::Delivered)
        }
        (Protocol::Tcp, Some(FlowState::Attempted | FlowState::Refused | FlowState::Reset)) => {
            Some(Delivery::NotDelivered)
        }
        (_, Some(FlowState::Active)) => Some(Delivery::Delivered),
        (_, Some(FlowState::Attempted | FlowState::Refused)) => Some(Delivery::NotDelivered),
        _ => None,
    };
    by_state.unwrap_or(match f.packets {
        Some(p) if p.received > 0 => Delivery::Delivered,
        Some(_) => Delivery::NotDelivered,
        None => Delivery::Unknown,
    })
}

/// Drop reasons no filter causes (nothing listens on the port; the reverse-path check).
const NOT_A_FILTER: &[&str] = &["NO_SOCKET", "IP_RPFILTER"];

/// `dropped by the kernel (REASON), policy P` when a filter dropped packets of `f`.
pub(crate) fn dropped(f: &FlowRecord) -> Option<String> {
    let d = f.drops.as_ref().filter(|d| d.count > 0)?;
    let reason = d.reason.as_deref();
    if reason.is_some_and(|r| NOT_A_FILTER.contains(&r)) {
        return None;
    }
    let mut s = format!("{} packet(s) dropped", d.count);
    if let Some(r) = reason {
        s.push_str(&format!(" ({r})"));
    }
    match d.policy.as_deref() {
        Some(p) if p != "unknown" => s.push_str(&format!(" by {p}")),
        _ => s.push_str(", no policy explains it"),
    }
    Some(s)
}

/// At most this many distinct reasons per connection, each at most [`MAX_REASON`] bytes: the
/// policy names come from the input, and the reasons go into notes and an annotation.
const MAX_REASONS: usize = 8;
const MAX_REASON: usize = 300;

/// `why`, cut at [`MAX_REASON`] bytes (on a character boundary) with `…`.
fn bounded(mut why: String) -> String {
    if why.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why.truncate(end);
        why.push('…');
    }
    why
}

/// What becomes of a denied flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeniedOutcome {
    /// Never got through: no allow rule is written for it (the default). Review.
    NotLearned,
    /// Got through all the same (the CNI did not enforce the policies): real traffic, learned
    /// as observed.
    Delivered,
    /// Only the inventory's policies deny it and the record says nothing of its delivery (no
    /// `state`, no `packets`): learned as observed.
    Unverified,
    /// Never got through, learned because of `include_denied` (`--include-denied`).
    Included,
}

impl DeniedOutcome {
    /// Whether the flows are turned into allow rules.
    pub fn learned(self) -> bool {
        self != DeniedOutcome::NotLearned
    }
}

/// Flows the policies in force denied, per workload pair, port and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedInForce {
    /// The client: `ns/Kind/name`, `node/<name>`, `subnet/<name>` or the address (as `verify`).
    pub src: String,
    /// The server, same spelling (with `via Service ns/name` for flows to a Service).
    pub dst: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port as observed (the Service port for flows to a Service).
    pub port: Option<u16>,
    /// Flows (counted records only, as every evidence count).
    pub flows: u64,
    /// Why they were denied: the denying sides and their isolating policies, drops; distinct
    /// reasons joined by ` | `.
    pub denied_by: String,
    /// What the recommendation does with them.
    pub outcome: DeniedOutcome,
    /// For flows not learned: whether the recommended policies allow such a flow all the same
    /// (the same workload pair and port was also observed allowed). `None` without self-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_allows: Option<bool>,
    /// One of the flows (its index in the input), for the self-check.
    #[serde(skip)]
    pub(crate) example: usize,
}

impl DeniedInForce {
    /// `src -> dst:port/PROTO`.
    pub fn connection(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{} -> {}{port}/{}", self.src, self.dst, self.protocol)
    }

    /// The note line (without the common prefix).
    pub(crate) fn note(&self) -> String {
        let what = match (self.outcome, self.recommended_allows) {
            (DeniedOutcome::NotLearned, Some(true)) => {
                "not learned, though the rules of the same observed connection allow it"
            }
            (DeniedOutcome::NotLearned, _) => {
                "not learned: no allow rule written (--include-denied to learn it)"
            }
            (DeniedOutcome::Delivered, _) => {
                "delivered all the same (the CNI did not enforce the policy): kept as observed traffic"
            }
            (DeniedOutcome::Unverified, _) => {
                "the records say nothing of delivery (no state, no packets): kept as observed traffic"
            }
            (DeniedOutcome::Included, _) => "never got through; learned (--include-denied)",
        };
        format!(
            "{} ({} flow(s); {}): {what}",
            self.connection(),
            self.flows,
            self.denied_by
        )
    }
}

/// The judgement of every flow: which are learned, and the denied ones grouped.
#[derive(Debug, Default)]
pub(crate) struct Judgement {
    /// `excluded[i]`: `flows[i]` is not turned into rules (empty: none excluded).
    pub(crate) excluded: Vec<bool>,
    /// The denied flows, sorted by source, destination, protocol, port, outcome.
    pub(crate) denied: Vec<DeniedInForce>,
}

/// What one record says of the denial of its connection.
#[derive(Debug, Default)]
struct Evidence {
    /// A denying verdict (recorded, or the inventory's policies): why.
    policy: Option<String>,
    /// The denying verdict is the inventory's (no recorded verdict).
    by_inventory: bool,
    /// Drops of a filter: which.
    drop: Option<String>,
}

/// What the copies of one connection say together.
#[derive(Debug)]
struct Connection {
    policy: Option<String>,
    /// Every denying verdict among the copies is the inventory's.
    by_inventory: bool,
    drop: Option<String>,
    delivery: Delivery,
}

/// The identity of a connection, as the records of several agents share it (a flow between
/// pods of two nodes: the client's node records it, the server's node the drops its kernel
/// saw).
pub(crate) type ConnectionKey = (Protocol, IpAddr, Option<u16>, IpAddr, Option<u16>);

pub(crate) fn connection_key(f: &FlowRecord) -> ConnectionKey {
    (f.protocol, f.src.ip, f.src.port, f.dst.ip, f.dst.port)
}

/// What each flow says of itself: the verdict its agent recorded (else the policies in
/// force, when they deny it) and its drops.
fn evidence(
    flows: &[FlowRecord],
    recorded: &[Option<RecordedVerdict>],
    in_force: Option<&PolicyEngine>,
) -> Vec<Evidence> {
    flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (policy, by_inventory) = match recorded.get(i).and_then(Option::as_ref) {
                Some(RecordedVerdict::Denied(why)) => (Some(why.clone()), false),
                Some(RecordedVerdict::Allowed) => (None, false),
                None => match in_force {
                    Some(e) if !e.evaluate_flow_compact(f).allowed => {
                        (Some(denial(&e.evaluate_flow(f))), true)
                    }
                    _ => (None, false),
                },
            };
            Evidence {
                policy,
                by_inventory,
                drop: dropped(f),
            }
        })
        .collect()
}

/// The copies of each connection judged together: denied if a copy says so (by the
/// inventory only if every denying copy is), its first drop, delivered if a copy was.
fn connections(flows: &[FlowRecord], evidence: &[Evidence]) -> HashMap<ConnectionKey, Connection> {
    let mut connections: HashMap<ConnectionKey, Connection> = HashMap::new();
    for (f, e) in flows.iter().zip(evidence) {
        let c = connections.entry(connection_key(f)).or_insert(Connection {
            policy: None,
            by_inventory: true,
            drop: None,
            delivery: Delivery::Unknown,
        });
        if let Some(p) = &e.policy {
            c.policy.get_or_insert_with(|| p.clone());
            c.by_inventory &= e.by_inventory;
        }
        if let Some(d) = &e.drop {
            c.drop.get_or_insert_with(|| d.clone());
        }
        c.delivery = match (c.delivery, delivery(f)) {
            (Delivery::Delivered, _) | (_, Delivery::Delivered) => Delivery::Delivered,
            (Delivery::NotDelivered, _) | (_, Delivery::NotDelivered) => Delivery::NotDelivered,
            _ => Delivery::Unknown,
        };
    }
    connections
}

/// Judges every attributed flow (see the module documentation). `in_force`: the inventory's
/// policies, compiled. The copies of one connection (same protocol, addresses and ports: the
/// records several agents made of it) are judged together: denied if a copy says so, delivered
/// if a copy was. `weights[i]`: the records `flows[i]` stands for (empty: one each).
pub(crate) fn judge(
    flows: &[FlowRecord],
    recorded: &[Option<RecordedVerdict>],
    weights: &[u64],
    in_force: Option<&PolicyEngine>,
    include_denied: bool,
) -> Judgement {
    let evidence = evidence(flows, recorded, in_force);
    if evidence
        .iter()
        .all(|e| e.policy.is_none() && e.drop.is_none())
    {
        return Judgement::default();
    }
    let connections = connections(flows, &evidence);
    type Key = (String, String, Protocol, Option<u16>, DeniedOutcome);
    let mut groups: BTreeMap<Key, (DeniedInForce, BTreeSet<String>)> = BTreeMap::new();
    let mut excluded = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let Some(c) = connections.get(&connection_key(f)) else {
            continue;
        };
        let outcome = match (c.delivery, &c.policy, &c.drop) {
            (_, None, None) => continue,
            // Drops of a delivered flow without a denying verdict: packets lost on the way.
            (Delivery::Delivered, None, Some(_)) => continue,
            (Delivery::Delivered, Some(_), _) => DeniedOutcome::Delivered,
            (Delivery::Unknown, Some(_), None) if c.by_inventory => DeniedOutcome::Unverified,
            _ if include_denied => DeniedOutcome::Included,
            _ => DeniedOutcome::NotLearned,
        };
        if !outcome.learned() {
            if excluded.is_empty() {
                excluded.resize(flows.len(), false);
            }
            excluded[i] = true;
        }
        let why = match (&c.policy, &c.drop) {
            (Some(p), Some(d)) => format!("{p}; {d}"),
            (Some(p), None) => p.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => continue,
        };
        let src = peer_name(&f.src);
        let mut dst = peer_name(&f.dst);
        if let Some(svc) = &f.dst.service {
            dst = format!("{dst} via Service {}/{}", svc.namespace, svc.name);
        }
        let (entry, whys) = groups
            .entry((src.clone(), dst.clone(), f.protocol, f.dst.port, outcome))
            .or_insert_with(|| {
                (
                    DeniedInForce {
                        src,
                        dst,
                        protocol: f.protocol,
                        port: f.dst.port,
                        flows: 0,
                        denied_by: String::new(),
                        outcome,
                        recommended_allows: None,
                        example: i,
                    },
                    BTreeSet::new(),
                )
            });
        entry.flows += u64::from(f.counted) * weights.get(i).copied().unwrap_or(1);
        if whys.len() < MAX_REASONS {
            whys.insert(bounded(why));
        }
    }
    let denied = groups
        .into_values()
        .map(|(mut d, whys)| {
            d.denied_by = whys.into_iter().collect::<Vec<_>>().join(" | ");
            d
        })
        .collect();
    Judgement { excluded, denied }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Directional, Drops, Unenforced};

    fn tcp(state: Option<FlowState>, received: Option<u64>) -> FlowRecord {
        use std::sync::atomic::{AtomicU16, Ordering};
        static PORT: AtomicU16 = AtomicU16::new(40000);
        let mut f = FlowRecord::new(
            Protocol::Tcp,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            Some(5432),
        );
        f.src.port = Some(PORT.fetch_add(1, Ordering::Relaxed));
        f.state = state;
        f.packets = received.map(|received| Directional { sent: 2, received });
        f
    }

    #[test]
    fn delivery_follows_the_agents_rule() {
        use Delivery::*;
        let cases = [
            (Some(FlowState::Established), Some(0), Delivered),
            (Some(FlowState::Closed), Some(5), Delivered),
            (Some(FlowState::Attempted), Some(0), NotDelivered),
            // A RST answers a SYN: the server's, or a CNI rejecting.
            (Some(FlowState::Refused), Some(1), NotDelivered),
            (Some(FlowState::Reset), Some(3), NotDelivered),
            (None, Some(2), Delivered),
            (None, Some(0), NotDelivered),
            (None, None, Unknown),
        ];
        for (state, received, want) in cases {
            assert_eq!(
                delivery(&tcp(state, received)),
                want,
                "{state:?} {received:?}"
            );
        }
        let mut f = tcp(Some(FlowState::Attempted), Some(0));
        f.unenforced = Some(Unenforced {
            policy: "a/b".into(),
        });
        assert_eq!(delivery(&f), Delivered);
        let mut udp = tcp(Some(FlowState::Active), Some(1));
        udp.protocol = Protocol::Udp;
        assert_eq!(delivery(&udp), Delivered);
        udp.state = Some(FlowState::Attempted);
        assert_eq!(delivery(&udp), NotDelivered);
    }

    #[test]
    fn drops_and_verdicts_decide_what_is_learned() {
        let drops = |reason: &str| Drops {
            count: 3,
            reason: Some(reason.into()),
            policy: Some("data/db-np".into()),
        };
        let mut knock = tcp(Some(FlowState::Attempted), Some(0));
        knock.drops = Some(drops("NETFILTER_DROP"));
        let mut no_socket = tcp(Some(FlowState::Attempted), Some(0));
        no_socket.drops = Some(drops("NO_SOCKET"));
        let mut lossy = tcp(Some(FlowState::Closed), Some(9));
        lossy.drops = Some(drops("NETFILTER_DROP"));
        let delivered = tcp(Some(FlowState::Closed), Some(9));
        let verdict_only = tcp(Some(FlowState::Attempted), Some(0));
        let hand_written = tcp(None, None);
        let flows = [
            knock,
            no_socket,
            lossy,
            delivered,
            verdict_only,
            hand_written,
        ];
        let denied = Some(RecordedVerdict::Denied(
            "ingress denied, isolated by data/db-np".into(),
        ));
        let recorded = [None, None, None, denied.clone(), denied.clone(), denied];
        let j = judge(&flows, &recorded, &[], None, false);
        assert_eq!(j.excluded, [true, false, false, false, true, true]);
        let outcomes: Vec<_> = j.denied.iter().map(|d| (d.outcome, d.flows)).collect();
        // One workload pair and port: the not-learned flows together, the delivered one apart.
        assert_eq!(
            outcomes,
            [
                (DeniedOutcome::NotLearned, 3),
                (DeniedOutcome::Delivered, 1)
            ]
        );
        assert_eq!(
            j.denied[0].denied_by,
            "3 packet(s) dropped (NETFILTER_DROP) by data/db-np | ingress denied, isolated by data/db-np"
        );
        let j = judge(&flows, &recorded, &[], None, true);
        assert!(j.excluded.is_empty());
        let outcomes: Vec<_> = j.denied.iter().map(|d| (d.outcome, d.flows)).collect();
        assert_eq!(
            outcomes,
            [(DeniedOutcome::Delivered, 1), (DeniedOutcome::Included, 3)]
        );
    }

    /// A connection between two nodes: the client's node records it (`attempted`, no drop),
    /// the server's node the drops its kernel saw (a drop-only copy, not counted). Judged
    /// together: dropped, never got through, so neither copy is learned. Had the client's copy
    /// completed its handshake, the drops would be packets lost on the way.
    #[test]
    fn the_copies_of_a_connection_are_judged_together() {
        let client = tcp(Some(FlowState::Attempted), Some(0));
        let mut server = client.clone();
        server.state = None;
        server.packets = None;
        server.counted = false;
        server.drops = Some(Drops {
            count: 3,
            reason: Some("NETFILTER_DROP".into()),
            policy: None,
        });
        let j = judge(&[client.clone(), server.clone()], &[], &[], None, false);
        assert_eq!(j.excluded, [true, true]);
        assert_eq!(j.denied.len(), 1);
        assert_eq!(j.denied[0].flows, 1);
        assert_eq!(
            j.denied[0].denied_by,
            "3 packet(s) dropped (NETFILTER_DROP), no policy explains it"
        );
        let mut delivered = client;
        delivered.state = Some(FlowState::Closed);
        let j = judge(&[delivered, server], &[], &[], None, false);
        assert!(j.excluded.is_empty() && j.denied.is_empty());
    }
}
