//! The enforcement check: whether this node enforces the NetworkPolicies in force, as seen
//! from traffic. Runs on the flow path, under the flows lock ([`Flows`]).

use std::{collections::HashSet, sync::Arc};

use jiff::Timestamp;

use super::{
    AgentState, FlowId, Flows,
    model::{self, Sides},
    peer::Peer,
    store::StoredFlow,
};
use crate::{
    flow::{Directional, FlowState, Protocol},
    metrics::{Enforcement, FlowLabels, PeerLabels},
};

/// The workload pairs whose unenforced flows were logged: one warning per pair, at most
/// [`UnenforcedLog::MAX`] pairs (then one line saying the rest are only counted).
#[derive(Debug, Default)]
pub(super) struct UnenforcedLog {
    pairs: HashSet<(Arc<PeerLabels>, Arc<PeerLabels>)>,
    full: bool,
}

impl UnenforcedLog {
    const MAX: usize = 1024;
}

/// Drop reasons that do not come from a filter: such a drop of a denied flow says nothing about
/// the node enforcing policies (UDP to a closed port, the reverse-path filter).
pub(super) const NOT_POLICY_DROPS: [&str; 2] = ["NO_SOCKET", "IP_RPFILTER"];

/// Whether a flow was delivered to its responder: TCP, the handshake completed (`established`
/// or `closed`, replies seen; not `refused` or `reset`: a CNI rejecting with a RST cannot be
/// told from the server); the other protocols, the responder sent packets back.
fn delivered(protocol: Protocol, state: Option<FlowState>, packets: Option<Directional>) -> bool {
    let replied = packets.is_some_and(|p| p.received > 0);
    match protocol {
        Protocol::Tcp => {
            replied && matches!(state, Some(FlowState::Established | FlowState::Closed))
        }
        _ => replied && state != Some(FlowState::Refused),
    }
}

impl AgentState {
    /// The enforcement check of flow `id` after a change (`opened`: the datapath saw it open,
    /// [`crate::datapath::FlowUpdate::opened`]). A flow the policies in force deny, first seen
    /// at least `enforcementGrace` after their set came in use ([`AgentState::eligible`]),
    /// whose denying side is a pod of this node ([`AgentState::sides_here`]):
    /// - delivered ([`delivered`]; TCP: opened under the datapath's eyes, without drops
    ///   joined) proves that this node does not enforce that side's policies: it is marked
    ///   once, counted in `unenforced_flows_total` with their names, logged once per workload
    ///   pair, and the node's state becomes `not_enforced`;
    /// - ended `attempted` (TCP, SCTP: no answer at all), every denying side being this
    ///   node's, is evidence that it does (`unknown` → `enforced`). UDP and ICMP are not: a
    ///   responder may never answer.
    pub(super) fn check_enforcement(&self, fl: &mut Flows, id: &FlowId, opened: bool) {
        let Some(f) = fl.store.get(id) else {
            return;
        };
        if !f.unenforced.is_empty() || f.drops.is_some() {
            return;
        }
        let Some(v) = f.verdict().filter(|v| !v.allowed) else {
            return;
        };
        if opened && !f.opened {
            fl.store.mark_opened(id);
        }
        let Some(f) = fl.store.get(id) else {
            return;
        };
        let denying = Sides::denying(&v);
        let here = self.sides_here(f, denying, fl.node_known);
        if here.is_empty() {
            return;
        }
        let was_delivered = delivered(id.protocol, f.state, f.packets());
        let attempted = f.state == Some(FlowState::Attempted)
            && matches!(id.protocol, Protocol::Tcp | Protocol::Sctp)
            && fl.store.ended(id);
        if !(was_delivered || attempted) || !self.eligible(fl.policies_since, f.first_seen()) {
            return;
        }
        // TCP picked up mid-stream was opened before the datapath watched (before the agent
        // started, or before its table entry idled out): perhaps before the policies came in
        // force, and the CNI's conntrack lets such connections finish.
        if id.protocol == Protocol::Tcp && !f.opened {
            return;
        }
        if attempted {
            if here == denying {
                self.note_enforcement(&mut fl.enforcement, Enforcement::Enforced);
            }
            return;
        }
        let explained = f.explained(id, fl.model.as_deref(), &mut Default::default());
        let policy = explained.and_then(|v| model::unenforced_policy(&v.verdict, here));
        let labels = fl
            .series
            .labels(&self.metrics, &f.peers, f.dst_port, id.protocol);
        let (src, dst) = (Arc::clone(&f.peers.src), Arc::clone(&f.peers.dst));
        if !fl.store.mark_unenforced(id, here) {
            return;
        }
        self.metrics
            .record_unenforced(labels.clone(), policy.as_deref());
        self.note_enforcement(&mut fl.enforcement, Enforcement::NotEnforced);
        fl.unenforced
            .log(&labels, &src, &dst, id, policy.as_deref());
    }

    /// The sides of `denying` whose pod is on this node (all of them when the inventory does
    /// not know this node: one agent then sees everything). The ingress side of a flow to a
    /// Service is known only once the backend the DNAT chose is ([`StoredFlow::backend_known`]):
    /// until then the destination is the Service's first backend, perhaps another node's pod.
    /// `node_known`: [`Flows::node_known`].
    pub(super) fn sides_here(&self, f: &StoredFlow, denying: Sides, node_known: bool) -> Sides {
        let node = match &self.node {
            Some(n) if node_known => Some(n),
            _ => None,
        };
        let here = |p: &Peer| node.is_none_or(|n| p.pod_node.as_deref() == Some(n.as_str()));
        let mut s = Sides::NONE;
        if denying.egress() && here(&f.peers.src) {
            s = s.union(Sides::EGRESS);
        }
        if denying.ingress() && (f.peers.service.is_none() || f.backend_known) && here(&f.peers.dst)
        {
            s = s.union(Sides::INGRESS);
        }
        s
    }

    /// The timing rule of the enforcement check: a flow counts only when first seen at least
    /// `enforcementGrace` after the NetworkPolicy set in force came in use here. A policy
    /// applied mid-flow, a connection the CNI lets finish, the CNI's delay in programming a
    /// change: all are flows first seen before that. `policies_since`:
    /// [`Flows::policies_since`].
    fn eligible(&self, policies_since: Option<Timestamp>, first_seen: Option<Timestamp>) -> bool {
        let (Some(t), Some(since)) = (first_seen, policies_since) else {
            return false;
        };
        since
            .checked_add(self.config.enforcement_grace.get())
            .is_ok_and(|start| t >= start)
    }

    /// Moves this node's enforcement state: `not_enforced` once a denied flow was delivered
    /// (for the agent's lifetime), `enforced` from `unknown` on evidence of enforcement.
    /// `state`: [`Flows::enforcement`].
    pub(super) fn note_enforcement(&self, state: &mut Enforcement, seen: Enforcement) {
        if *state < seen {
            *state = seen;
            self.metrics.set_enforcement(seen);
            match seen {
                Enforcement::NotEnforced => tracing::warn!(
                    "this node delivers flows its NetworkPolicies deny: enforcement is missing (netpol_observe_policy_enforcement{{state=\"not_enforced\"}})"
                ),
                _ => {
                    tracing::info!(
                        "this node enforces NetworkPolicies: a denied flow was dropped or never answered"
                    )
                }
            }
        }
    }

    /// The enforcement state of this node ([`Metrics::set_enforcement`]).
    pub fn enforcement(&self) -> Enforcement {
        self.lock_flows().enforcement
    }
}

impl UnenforcedLog {
    /// Logs an unenforced flow, once per workload pair (at most [`UnenforcedLog::MAX`] pairs).
    fn log(
        &mut self,
        labels: &FlowLabels,
        src: &Peer,
        dst: &Peer,
        id: &FlowId,
        policy: Option<&str>,
    ) {
        let logged = self;
        let pair = (Arc::clone(&labels.src), Arc::clone(&labels.dst));
        if logged.pairs.contains(&pair) {
            return;
        }
        if logged.pairs.len() >= UnenforcedLog::MAX {
            if !logged.full {
                logged.full = true;
                tracing::warn!(
                    "unenforced flows of more than {} workload pairs: the others are only counted in netpol_observe_unenforced_flows_total",
                    UnenforcedLog::MAX
                );
            }
            return;
        }
        logged.pairs.insert(pair);
        let name = |p: &Peer, l: &PeerLabels| match &p.pod {
            Some(pod) => format!("{}/{} (pod {pod})", l.namespace, l.workload),
            None => l.workload.clone(),
        };
        let port = id.dst.1;
        tracing::warn!(
            src = %name(src, &labels.src),
            dst = %name(dst, &labels.dst),
            port = %format!("{port}/{}", id.protocol),
            policy = policy.unwrap_or("unknown"),
            "NetworkPolicy not enforced on this node: a flow the policy denies was delivered (logged once per workload pair; every such flow counts in netpol_observe_unenforced_flows_total)"
        );
    }
}
