//! A flow as the agent knows it apart from how it is stored: its identity ([`FlowId`], the key
//! of the store and of the Service legs) and the entry `/api/v1/flows` serves
//! ([`ObservedFlow`]). Below the model, the Service legs and the store, which all use them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    flow::{FlowRecord, Protocol},
    policy::Verdict,
};

/// One flow of `/api/v1/flows`: the flow record (attributed) with its verdict under the
/// policies in force and, with `--staged-policies`, under the drafts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFlow {
    /// The flow, attributed.
    #[serde(flatten)]
    pub flow: FlowRecord,
    /// Verdict under the policies in force (absent while the inventory is not loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Verdict under the staged (draft) policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_verdict: Option<Verdict>,
    /// A DNS rotation seen for this flow's client and destination: a name a policy in force
    /// allows resolved to this address, outside the policy's ipBlocks for the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_rotation: Option<super::dns::DnsRotation>,
}

/// The identity of a flow: protocol and both endpoints as oriented by the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    /// Protocol.
    pub protocol: Protocol,
    /// Initiator address and port.
    pub src: (IpAddr, u16),
    /// Responder address and port.
    pub dst: (IpAddr, u16),
}

impl FlowId {
    /// The identity of a record.
    pub fn of(r: &FlowRecord) -> FlowId {
        FlowId {
            protocol: r.protocol,
            src: (r.src.ip, r.src.port.unwrap_or(0)),
            dst: (r.dst.ip, r.dst.port.unwrap_or(0)),
        }
    }

    /// The identity without orientation (for matching a dropped packet going either way).
    pub(crate) fn unoriented(&self) -> FlowId {
        if self.src <= self.dst {
            *self
        } else {
            FlowId {
                protocol: self.protocol,
                src: self.dst,
                dst: self.src,
            }
        }
    }
}
