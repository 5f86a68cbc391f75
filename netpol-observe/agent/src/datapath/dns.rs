//! The userspace end of the DNS-answer capture: reads `DNS_EVENTS` (the kernel's copies of
//! packets to pods from port 53, see [`netpol_observe_ebpf::dns`]) and broadcasts them as
//! [`DnsAnswer`]s. Parsing and the per-pod name cache are the agent's (`agent::dns`).

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use netpol_observe_ebpf::{DNS_PROTO_TCP, DnsEvent, FAMILY_V4};
use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, watch},
};

/// Capacity of the channel of [`super::Datapath::subscribe_dns`]; a subscriber that lags is
/// told how many answers it missed.
pub(crate) const DNS_CHANNEL_CAPACITY: usize = 4096;

/// One DNS answer (or TCP segment from port 53 with data) the kernel copied on its way to a
/// pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The pod that receives it (the client that asked).
    pub client: IpAddr,
    /// The server that answered.
    pub server: IpAddr,
    /// Over TCP: `payload` is one segment's data, a message starts with its 2-byte length.
    pub tcp: bool,
    /// Bytes of transport payload in the packet (can exceed `payload.len()`).
    pub payload_len: u32,
    /// The copied prefix of the payload (at most [`netpol_observe_ebpf::DNS_PAYLOAD_MAX`]).
    pub payload: Arc<[u8]>,
}

impl DnsAnswer {
    /// The answer in a kernel event.
    pub(crate) fn from_event(ev: &DnsEvent) -> DnsAnswer {
        DnsAnswer {
            client: addr(&ev.client, ev.family),
            server: addr(&ev.server, ev.family),
            tcp: ev.proto == DNS_PROTO_TCP,
            payload_len: ev.payload_len,
            payload: Arc::from(ev.payload()),
        }
    }
}

/// A 16-byte kernel address (v4-mapped for IPv4) as an [`IpAddr`].
fn addr(a: &[u8; 16], family: u8) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*a);
    match (family, v6.to_ipv4_mapped()) {
        (FAMILY_V4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// The DNS answers' ring buffer, shared by its reader task and the flow events' reader: before
/// a flow update is broadcast, the answers already in the ring are (the kernel wrote a client's
/// answer before the packets of the connection it then opened), so the agent knows a flow's
/// names when it sees the flow ([`DnsRing::drain`]).
pub(super) struct DnsRing {
    ring: Mutex<RingBuf<MapData>>,
    fd: RawFd,
    tx: broadcast::Sender<DnsAnswer>,
}

impl AsRawFd for DnsRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl DnsRing {
    /// The ring buffer, whose answers go to `tx`.
    pub(super) fn new(ring: RingBuf<MapData>, tx: broadcast::Sender<DnsAnswer>) -> Self {
        DnsRing {
            fd: ring.as_raw_fd(),
            ring: Mutex::new(ring),
            tx,
        }
    }

    /// Reads every answer in the ring buffer now and broadcasts them; returns how many.
    pub(super) fn drain(&self) -> usize {
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        while let Some(item) = ring.next() {
            if item.len() < size_of::<DnsEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a `DnsEvent` (plain `#[repr(C)]` data) here;
            // `read_unaligned` copes with any alignment.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DnsEvent>()) };
            n += 1;
            let _ = self.tx.send(DnsAnswer::from_event(&ev));
        }
        n
    }
}

/// The reader task: drains the ring buffer whenever the kernel says it is readable, until
/// `stop`.
pub(super) async fn read_answers(ring: Arc<DnsRing>, mut stop: watch::Receiver<bool>) {
    // SAFETY: the `DnsRing` owns the ring buffer, whose descriptor stays open and the same
    // while the `Arc` the `AsyncFd` holds lives.
    let ring = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("DNS ring buffer: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => {
                ring.get_ref().drain();
                return;
            }
            guard = ring.readable() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!("DNS ring buffer: {e}");
                        return;
                    }
                };
                guard.get_inner().drain();
                guard.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_answers() {
        let mut ev = DnsEvent {
            family: FAMILY_V4,
            proto: DNS_PROTO_TCP,
            captured: 4,
            payload_len: 600,
            ..DnsEvent::default()
        };
        ev.client = std::net::Ipv4Addr::new(10, 0, 0, 2)
            .to_ipv6_mapped()
            .octets();
        ev.server = std::net::Ipv4Addr::new(169, 254, 20, 10)
            .to_ipv6_mapped()
            .octets();
        ev.data[..4].copy_from_slice(&[0, 2, 0xab, 0xcd]);
        let a = DnsAnswer::from_event(&ev);
        assert_eq!(a.client, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(a.server, "169.254.20.10".parse::<IpAddr>().unwrap());
        assert!(a.tcp);
        assert_eq!(a.payload_len, 600);
        assert_eq!(&a.payload[..], &[0, 2, 0xab, 0xcd]);
    }
}
