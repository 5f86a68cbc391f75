//! Shared types of the DNS-answer capture: map and global names and the `#[repr(C)]` event.
//!
//! The egress programs (packets *to* a pod) copy a bounded prefix of the payload of every
//! packet whose transport source port is 53 (UDP, and TCP segments that carry data) into a
//! dedicated ring buffer, [`MAP_DNS_EVENTS`], with the pod's address (the client that asked):
//! DNS answers only, matched by port (a node-local DNS cache on a link-local address
//! included), never one event per data packet. Userspace parses them (`agent::dns`). Nothing
//! is dropped or changed; an answer that does not fit the ring buffer is counted
//! ([`crate::Counter::DnsRingbufFull`]).

/// Name of the ring buffer carrying [`DnsEvent`]s.
pub const MAP_DNS_EVENTS: &str = "DNS_EVENTS";
/// Default size in bytes of [`MAP_DNS_EVENTS`] (a power of two: about 460 answers of
/// [`DnsEvent`]'s 568 bytes with the kernel's 8-byte record header).
pub const DEFAULT_DNS_RINGBUF_BYTES: u32 = 1 << 18;
/// Global (`u8`, 0/1): capture DNS answers (1, the default) or not.
pub const GLOBAL_CAPTURE_DNS: &str = "CAPTURE_DNS";
/// Bytes of DNS payload copied per answer at most (TCP: the 2-byte length prefix included).
/// 512 is the classic UDP DNS message limit; longer answers are parsed as far as the prefix
/// goes.
pub const DNS_PAYLOAD_MAX: usize = 512;

/// [`DnsEvent::proto`]: UDP.
pub const DNS_PROTO_UDP: u8 = 17;
/// [`DnsEvent::proto`]: TCP (the payload of one segment, which starts with the message's
/// 2-byte length when it is the first segment of a response).
pub const DNS_PROTO_TCP: u8 = 6;

/// One captured DNS answer (or TCP segment from port 53 with data) to a pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsEvent {
    /// The pod that receives the answer: the packet's destination (v4-mapped for IPv4).
    pub client: [u8; 16],
    /// The DNS server that answered: the packet's source.
    pub server: [u8; 16],
    /// `bpf_ktime_get_ns` when the answer passed.
    pub ts_ns: u64,
    /// Bytes of transport payload in the packet (can exceed [`DnsEvent::captured`]).
    pub payload_len: u32,
    /// Bytes of `data` filled (at most [`DNS_PAYLOAD_MAX`]).
    pub captured: u16,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// [`DNS_PROTO_UDP`] or [`DNS_PROTO_TCP`].
    pub proto: u8,
    /// The first `captured` bytes of the transport payload.
    pub data: [u8; DNS_PAYLOAD_MAX],
}

impl Default for DnsEvent {
    fn default() -> Self {
        DnsEvent {
            client: [0; 16],
            server: [0; 16],
            ts_ns: 0,
            payload_len: 0,
            captured: 0,
            family: 0,
            proto: 0,
            data: [0; DNS_PAYLOAD_MAX],
        }
    }
}

impl DnsEvent {
    /// The captured payload (`data[..captured]`, bounded by the array).
    pub fn payload(&self) -> &[u8] {
        let n = usize::from(self.captured).min(DNS_PAYLOAD_MAX);
        &self.data[..n]
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn dns_event_layout() {
        assert_eq!(size_of::<DnsEvent>(), 48 + DNS_PAYLOAD_MAX);
        assert_eq!(align_of::<DnsEvent>(), 8);
        assert_eq!(offset_of!(DnsEvent, server), 16);
        assert_eq!(offset_of!(DnsEvent, ts_ns), 32);
        assert_eq!(offset_of!(DnsEvent, payload_len), 40);
        assert_eq!(offset_of!(DnsEvent, captured), 44);
        assert_eq!(offset_of!(DnsEvent, family), 46);
        assert_eq!(offset_of!(DnsEvent, proto), 47);
        assert_eq!(offset_of!(DnsEvent, data), 48);
    }

    #[test]
    fn payload_is_bounded() {
        let mut e = DnsEvent {
            captured: 3,
            ..DnsEvent::default()
        };
        assert_eq!(e.payload().len(), 3);
        e.captured = u16::MAX;
        assert_eq!(e.payload().len(), DNS_PAYLOAD_MAX);
    }
}
