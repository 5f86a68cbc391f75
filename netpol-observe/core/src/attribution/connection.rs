//! What attribution makes of a flow and the policy engine evaluates: a connection between two
//! resolved peers ([`super::Attributor::connection`]), not a flow record (the record is the
//! wire format; its addresses are looked up once, here).

use std::net::IpAddr;

use crate::flow::Protocol;

/// One end of a connection as the policy engine tells peers apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerId {
    /// The pod at this index of the inventory's pod list (the order the attributor and the
    /// engines compiled against the same inventory share).
    Pod(usize),
    /// The node at this index of the inventory's node list.
    Node(usize),
    /// Anything else (a subnet, the world, an address nothing is known about): only its
    /// address matters (ipBlocks).
    External,
}

/// One end of a connection: the peer and its address (what ipBlocks match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct End {
    /// The peer.
    pub peer: PeerId,
    /// Its address.
    pub ip: IpAddr,
}

/// A connection to judge: both ends resolved, the destination as the connection reaches it
/// (for a flow to a Service ClusterIP, the backend pod at its address), the port as the
/// destination sees it (the Service's target port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// The initiator.
    pub src: End,
    /// The responder.
    pub dst: End,
    /// The destination port as the destination sees it (`None`: a protocol without ports).
    pub port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
    /// The names the client resolved the destination from (ClusterNetworkPolicy
    /// `domainNames`).
    pub dns_names: &'a [String],
}
