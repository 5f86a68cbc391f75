//! Joins the two records one Service connection leaves on a node.
//!
//! A pod connecting to a Service ClusterIP on the same node as the chosen backend is seen
//! twice by the datapath: on the client's interface before the node's DNAT (the *client leg*,
//! `client:port → ClusterIP:port`, which carries both directions' counters), and on the
//! backend's interface after it (the *backend leg*, `client:port → backend:targetPort`; the
//! same-node rule only lets its reply packets be counted there, and they are already counted
//! on the client leg as the un-NATed replies). The backend leg may come oriented either way
//! (a UDP reply seen first looks like a flow from the backend).
//!
//! [`ServiceLegs`] remembers client legs by their client address and port, recognises a
//! backend leg of one of them, and tells the agent which backend the connection really reached,
//! so that the flow is reported once — to the Service, with the backend pod that served it —
//! and its packets are not counted twice.

use std::{collections::HashMap, net::IpAddr};

use crate::flow::{FlowRecord, Protocol};

use super::observed::FlowId;

/// A connection's client side: protocol, client address and port.
type Client = (Protocol, IpAddr, u16);

#[derive(Debug)]
struct ClientLeg {
    /// The client leg's flow.
    id: FlowId,
    /// The backend legs joined to it.
    backend_legs: Vec<FlowId>,
}

/// A backend leg recognised by [`ServiceLegs::backend_leg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendLeg {
    /// The client leg (the flow to the ClusterIP) it belongs to.
    pub client_leg: FlowId,
    /// The backend address and port the connection reached.
    pub backend: (IpAddr, u16),
    /// First time this backend leg is seen (the agent re-attributes the client leg then).
    pub first: bool,
}

/// Client legs of Service connections and the backend legs joined to them. Bounded by the
/// agent's flow store: a client leg is forgotten when the store drops it.
#[derive(Debug, Default)]
pub(crate) struct ServiceLegs {
    clients: HashMap<Client, ClientLeg>,
    joined: HashMap<FlowId, Client>,
}

impl ServiceLegs {
    /// Remembers the flow `id`, whose destination is a Service ClusterIP, as a client leg.
    pub(crate) fn note_client_leg(&mut self, id: FlowId) {
        if id.src.1 == 0 {
            return; // no client port (ICMP): nothing to join on
        }
        self.clients
            .entry((id.protocol, id.src.0, id.src.1))
            .or_insert_with(|| ClientLeg {
                id,
                backend_legs: Vec::new(),
            });
    }

    /// Whether `record` is the backend leg of a known client leg. `is_backend(cluster_ip,
    /// addr)` says whether `addr` is a backend of the Service at `cluster_ip`.
    pub(crate) fn backend_leg(
        &mut self,
        record: &FlowRecord,
        is_backend: impl Fn(IpAddr, IpAddr) -> bool,
    ) -> Option<BackendLeg> {
        let id = FlowId::of(record);
        if let Some(client) = self.joined.get(&id) {
            let leg = self.clients.get(client)?;
            return Some(BackendLeg {
                client_leg: leg.id,
                backend: backend_side(&id, client),
                first: false,
            });
        }
        // Forward (client → backend) or reply-first (backend → client) orientation.
        for (client, other) in [(id.src, id.dst), (id.dst, id.src)] {
            let key = (id.protocol, client.0, client.1);
            let Some(leg) = self.clients.get_mut(&key) else {
                continue;
            };
            if leg.id == id || !is_backend(leg.id.dst.0, other.0) {
                continue;
            }
            leg.backend_legs.push(id);
            self.joined.insert(id, key);
            return Some(BackendLeg {
                client_leg: leg.id,
                backend: other,
                first: true,
            });
        }
        None
    }

    /// Forgets the client leg `id` and the backend legs joined to it.
    pub(crate) fn forget(&mut self, id: &FlowId) {
        let key = (id.protocol, id.src.0, id.src.1);
        if self.clients.get(&key).is_some_and(|l| l.id == *id)
            && let Some(leg) = self.clients.remove(&key)
        {
            for b in leg.backend_legs {
                self.joined.remove(&b);
            }
        }
    }

    /// Whether `id` is a backend leg joined to a remembered client leg.
    pub(crate) fn is_joined(&self, id: &FlowId) -> bool {
        self.joined.contains_key(id)
    }

    /// Number of client legs remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client leg is remembered.
    pub(crate) fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The backend's end of a joined backend leg `id` whose client side is `client`.
fn backend_side(id: &FlowId, client: &Client) -> (IpAddr, u16) {
    if (id.src.0, id.src.1) == (client.1, client.2) {
        id.dst
    } else {
        id.src
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Endpoint;

    const CLIENT: &str = "10.244.0.5";
    const CLUSTER_IP: &str = "10.96.0.20";
    const BACKEND: &str = "10.244.0.9";
    const OTHER_POD: &str = "10.244.0.7";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn record(p: Protocol, src: (&str, u16), dst: (&str, u16)) -> FlowRecord {
        let mut r = FlowRecord::new(p, ip(src.0), ip(dst.0), Some(dst.1));
        r.src = Endpoint::bare(ip(src.0), Some(src.1));
        r
    }

    fn is_backend(cluster: IpAddr, addr: IpAddr) -> bool {
        cluster == ip(CLUSTER_IP) && addr == ip(BACKEND)
    }

    fn legs_with_client(p: Protocol) -> (ServiceLegs, FlowId) {
        let mut legs = ServiceLegs::default();
        let client_leg = FlowId::of(&record(p, (CLIENT, 40000), (CLUSTER_IP, 80)));
        legs.note_client_leg(client_leg);
        (legs, client_leg)
    }

    #[test]
    fn joins_a_forward_backend_leg_once_then_recognises_its_updates() {
        let (mut legs, client_leg) = legs_with_client(Protocol::Tcp);
        let backend = record(Protocol::Tcp, (CLIENT, 40000), (BACKEND, 8080));
        let first = legs.backend_leg(&backend, is_backend);
        assert_eq!(
            first,
            Some(BackendLeg {
                client_leg,
                backend: (ip(BACKEND), 8080),
                first: true
            })
        );
        let again = legs.backend_leg(&backend, is_backend).unwrap();
        assert!(!again.first);
        assert_eq!(again.backend, (ip(BACKEND), 8080));
    }

    #[test]
    fn joins_a_reply_first_backend_leg() {
        let (mut legs, client_leg) = legs_with_client(Protocol::Udp);
        let reply = record(Protocol::Udp, (BACKEND, 53), (CLIENT, 40000));
        let leg = legs.backend_leg(&reply, is_backend).unwrap();
        assert_eq!(leg.client_leg, client_leg);
        assert_eq!(leg.backend, (ip(BACKEND), 53));
        assert!(!legs.backend_leg(&reply, is_backend).unwrap().first);
    }

    #[test]
    fn leaves_other_flows_alone() {
        let (mut legs, _) = legs_with_client(Protocol::Tcp);
        // Same client port, but not a backend of the Service.
        let other = record(Protocol::Tcp, (CLIENT, 40000), (OTHER_POD, 8080));
        assert_eq!(legs.backend_leg(&other, is_backend), None);
        // Another client port, another protocol, the client leg itself.
        let port = record(Protocol::Tcp, (CLIENT, 40001), (BACKEND, 8080));
        assert_eq!(legs.backend_leg(&port, is_backend), None);
        let proto = record(Protocol::Udp, (CLIENT, 40000), (BACKEND, 8080));
        assert_eq!(legs.backend_leg(&proto, is_backend), None);
        let itself = record(Protocol::Tcp, (CLIENT, 40000), (CLUSTER_IP, 80));
        assert_eq!(legs.backend_leg(&itself, is_backend), None);
    }

    #[test]
    fn forgetting_the_client_leg_forgets_its_backend_legs() {
        let (mut legs, client_leg) = legs_with_client(Protocol::Tcp);
        let backend = record(Protocol::Tcp, (CLIENT, 40000), (BACKEND, 8080));
        assert!(legs.backend_leg(&backend, is_backend).is_some());
        legs.forget(&client_leg);
        assert!(legs.is_empty());
        assert_eq!(legs.backend_leg(&backend, is_backend), None);
    }

    #[test]
    fn icmp_is_never_a_client_leg() {
        let mut legs = ServiceLegs::default();
        let mut r = FlowRecord::new(Protocol::Icmp, ip(CLIENT), ip(CLUSTER_IP), None);
        r.src = Endpoint::bare(ip(CLIENT), None);
        legs.note_client_leg(FlowId::of(&r));
        assert_eq!(legs.len(), 0);
    }
}
