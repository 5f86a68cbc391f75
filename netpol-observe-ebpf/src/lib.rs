//! Types, map names and program names shared between the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and `no_std`; the `user` feature adds `aya::Pod` impls.
//!
//! # Flow orientation
//!
//! One [`FlowKey`] serves IPv4 and IPv6: addresses are 16 bytes (IPv4 as v4-mapped IPv6,
//! `::ffff:a.b.c.d`). Both directions of a conversation hit the same entry because the key is
//! *canonical*: the endpoint `(address, port)` that compares lower (bytewise address, then
//! port) is stored as `lo`, the other as `hi`. Direction [`DIR_LO_TO_HI`] (index 0 of the
//! per-direction arrays of [`FlowValue`]) is a packet from `lo` to `hi`; [`DIR_HI_TO_LO`] the
//! reverse.
//!
//! ICMP echo uses the identifier as both ports (so request and reply share the entry);
//! other ICMP messages use ports 0. ICMP errors (destination unreachable) are matched to the
//! flow they quote and flag it with [`EVENT_ICMP_UNREACH`] instead of creating a flow.
#![no_std]

pub mod dns;
pub mod drop;
pub use dns::{
    DEFAULT_DNS_RINGBUF_BYTES, DNS_PAYLOAD_MAX, DNS_PROTO_TCP, DNS_PROTO_UDP, DnsEvent,
    GLOBAL_CAPTURE_DNS, MAP_DNS_EVENTS,
};
pub use drop::{DropKey, DropValue};

/// Name of the TC program attached to the ingress hook of pod interfaces (packets from the pod).
pub const PROG_TC_INGRESS: &str = "tc_flow_ingress";
/// Name of the TC program attached to the egress hook of pod interfaces (packets to the pod).
pub const PROG_TC_EGRESS: &str = "tc_flow_egress";
/// Name of a TC program that does nothing (returns "next"): the benchmark baseline for the
/// fixed cost of a tcx hook. Never attached by the agent.
pub const PROG_TC_NOOP: &str = "tc_noop";
/// The raw tracepoint program userspace runs on each CPU (`BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_RUN_ON_CPU`, never attached) before every sweep: it moves the counts pending
/// in that CPU's `FLOW_CACHE` slots (the programs' per-CPU front entries of the flow map,
/// internal to them) into the flow map.
pub const PROG_FLUSH_FLOW_CACHE: &str = "flush_flow_cache";
/// Name of the array of the programs' per-CPU state (internal to them): element `c` belongs
/// to CPU `c` (a line of its own, [`FLOW_CACHE_SLOTS`] IPv4 and [`FLOW_CACHE_V6_SLOTS`] IPv6
/// front entries of the flow map, in sets of two: 160 KiB); userspace sizes it to the number
/// of possible CPUs before loading.
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
/// IPv4 front entries of the flow map per CPU in [`MAP_FLOW_CACHE`] (a power of two; 64
/// bytes each; of 1,000 flows about 10 % find their set full).
pub const FLOW_CACHE_SLOTS: u32 = 2048;
/// IPv6 front entries of the flow map per CPU in [`MAP_FLOW_CACHE`] (a power of two; 128
/// bytes each).
pub const FLOW_CACHE_V6_SLOTS: u32 = 256;
/// Name of the LRU hash map `FlowKey → FlowValue`.
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the ring buffer carrying [`FlowEvent`]s.
pub const MAP_EVENTS: &str = "FLOW_EVENTS";
/// Name of the per-CPU `u64` array of kernel-side counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the hash map `[u8; 16]` address → [`LocalEndpoint`] of pods on this node.
pub const MAP_LOCAL_ENDPOINTS: &str = "LOCAL_ENDPOINTS";
/// Name of the one-slot `u32` array holding the generation of [`MAP_LOCAL_ENDPOINTS`]:
/// userspace increments it (modulo [`LOCAL_SRC_GEN_MASK`] + 1) after removing an address from
/// that map, which invalidates every entry of the egress programs' same-node skip cache.
pub const MAP_LOCAL_ENDPOINTS_GEN: &str = "LOCAL_ENDPOINTS_GEN";
/// The generation values of [`MAP_LOCAL_ENDPOINTS_GEN`] (31 bits; the 32nd marks a valid
/// cache entry in the kernel).
pub const LOCAL_SRC_GEN_MASK: u32 = 0x7fff_ffff;
/// Name of the global (`u8`, 0/1) telling the programs to learn local endpoints from the
/// source address of packets entering from a pod interface.
pub const GLOBAL_LEARN_LOCAL: &str = "LEARN_LOCAL";

/// Default capacity of [`MAP_FLOWS`] (userspace resizes it from configuration before loading).
pub const DEFAULT_FLOW_CAPACITY: u32 = 65_536;
/// Default size in bytes of [`MAP_EVENTS`].
pub const DEFAULT_RINGBUF_BYTES: u32 = 1 << 20;
/// Capacity of [`MAP_LOCAL_ENDPOINTS`].
pub const LOCAL_ENDPOINTS_CAPACITY: u32 = 16_384;
/// Number of slots in [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = 16;

/// Per-direction index: packet from `lo` to `hi`.
pub const DIR_LO_TO_HI: u8 = 0;
/// Per-direction index: packet from `hi` to `lo`.
pub const DIR_HI_TO_LO: u8 = 1;
/// [`FlowValue::initiator`] when the kernel could not tell (TCP picked up mid-stream).
pub const INITIATOR_UNKNOWN: u8 = 0xff;

/// Address family 4 in [`FlowKey::family`].
pub const FAMILY_V4: u8 = 4;
/// Address family 6 in [`FlowKey::family`].
pub const FAMILY_V6: u8 = 6;

/// [`FlowValue::events`] bit and [`FlowEvent::kind`]: the flow was created.
pub const EVENT_NEW: u32 = 1;
/// [`FlowValue::events`] bit and [`FlowEvent::kind`]: a TCP FIN was seen (first time).
pub const EVENT_FIN: u32 = 2;
/// [`FlowValue::events`] bit and [`FlowEvent::kind`]: a TCP RST was seen (first time).
pub const EVENT_RST: u32 = 4;
/// [`FlowValue::events`] bit: an ICMP destination-unreachable quoting this flow was seen.
pub const EVENT_ICMP_UNREACH: u32 = 8;

/// TCP flag bits as in the TCP header (byte 13).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u32 = 0x01;
    /// SYN.
    pub const SYN: u32 = 0x02;
    /// RST.
    pub const RST: u32 = 0x04;
    /// PSH.
    pub const PSH: u32 = 0x08;
    /// ACK.
    pub const ACK: u32 = 0x10;
}

/// Slots of the per-CPU counters array [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Inserting a new flow into the flow map failed (other than a concurrent insert).
    MapInsertFailed = 0,
    /// A ring-buffer event could not be reserved (buffer full).
    RingbufFull = 1,
    /// An IP packet whose headers could not be parsed (truncated, too many IPv6 extension
    /// headers).
    ParseFailed = 2,
    /// Flows created in the flow map.
    FlowsCreated = 3,
    /// Ring-buffer events sent.
    EventsSent = 4,
    /// IP packets counted into flows by the general path: first packets of flows, and
    /// packets other than TCP/UDP in IPv4 without options or IPv6 without extension headers,
    /// unfragmented. Packets of established flows of that kind take the fast paths, which
    /// count them only in the flow map (no per-CPU counter access per packet).
    Packets = 5,
    /// Packets not counted because the other pod's interface on this node counts them.
    SkippedLocal = 6,
    /// Packets that are not flows: not IPv4/IPv6 (ARP, ...) or ICMPv6 link plumbing (ND, MLD).
    NonIp = 7,
    /// Non-first IP fragments (no transport header), not counted.
    Fragments = 8,
    /// IP packets of a transport protocol that is not tracked (e.g. GRE).
    OtherProtocol = 9,
    /// DNS answers (packets to a pod from port 53 with a payload) copied to
    /// [`dns::MAP_DNS_EVENTS`].
    DnsAnswers = 10,
    /// DNS answers not copied: [`dns::MAP_DNS_EVENTS`] was full.
    DnsRingbufFull = 11,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 12] = [
        Counter::MapInsertFailed,
        Counter::RingbufFull,
        Counter::ParseFailed,
        Counter::FlowsCreated,
        Counter::EventsSent,
        Counter::Packets,
        Counter::SkippedLocal,
        Counter::NonIp,
        Counter::Fragments,
        Counter::OtherProtocol,
        Counter::DnsAnswers,
        Counter::DnsRingbufFull,
    ];

    /// Stable snake_case name (used in logs and metric labels).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::MapInsertFailed => "map_insert_failed",
            Counter::RingbufFull => "ringbuf_full",
            Counter::ParseFailed => "parse_failed",
            Counter::FlowsCreated => "flows_created",
            Counter::EventsSent => "events_sent",
            Counter::Packets => "packets",
            Counter::SkippedLocal => "skipped_local",
            Counter::NonIp => "non_ip",
            Counter::Fragments => "fragments",
            Counter::OtherProtocol => "other_protocol",
            Counter::DnsAnswers => "dns_answers",
            Counter::DnsRingbufFull => "dns_ringbuf_full",
        }
    }
}

/// Key of the flow map: a canonical 5-tuple (see the crate docs for the orientation).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// The lower endpoint's address (v4-mapped for IPv4).
    pub lo_addr: [u8; 16],
    /// The higher endpoint's address.
    pub hi_addr: [u8; 16],
    /// The lower endpoint's port (host byte order; ICMP: see crate docs).
    pub lo_port: u16,
    /// The higher endpoint's port.
    pub hi_port: u16,
    /// IP protocol number (6, 17, 132, 1, 58).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

/// Value of the flow map: cumulative counters since the entry was created.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Packets per direction ([`DIR_LO_TO_HI`], [`DIR_HI_TO_LO`]); GSO packets count their
    /// segments.
    pub packets: [u64; 2],
    /// IP bytes per direction (GSO packets count the headers of every segment).
    pub bytes: [u64; 2],
    /// `bpf_ktime_get_ns` of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns` of the latest packet.
    pub last_seen_ns: u64,
    /// One word updated atomically: bits 0–7 the union of TCP flags sent in direction 0,
    /// bits 8–15 those of direction 1, bits 16–17 kernel bookkeeping ([`learned_bit`]), bits
    /// 32–63 the `EVENT_*` bits already announced or observed. Read it with
    /// [`FlowValue::tcp_flags`] and [`FlowValue::events`].
    pub flags: u64,
    /// Direction index of the initiator's packets, or [`INITIATOR_UNKNOWN`].
    pub initiator: u8,
    /// Zero.
    pub _pad: [u8; 7],
}

/// Bit position of direction `dir`'s TCP flags in [`FlowValue::flags`] is `dir * 8`.
pub const FLAGS_DIR_BITS: u32 = 8;
/// Bit position of the `EVENT_*` bits in [`FlowValue::flags`].
pub const FLAGS_EVENTS_SHIFT: u32 = 32;

/// The [`FlowValue::flags`] bits for TCP flags `f` sent in direction `dir`.
pub const fn tcp_flag_bits(dir: u8, f: u32) -> u64 {
    ((f & 0xff) as u64) << ((dir as u32 & 1) * FLAGS_DIR_BITS)
}

/// Bit position of the "sender learned" bits in [`FlowValue::flags`].
pub const FLAGS_LEARNED_SHIFT: u32 = 16;

/// The [`FlowValue::flags`] bit the kernel sets once it has recorded the sender of direction
/// `dir` in [`MAP_LOCAL_ENDPOINTS`] (learning on): learning then costs a map lookup once per
/// flow and direction instead of once per packet.
pub const fn learned_bit(dir: u8) -> u64 {
    1 << (FLAGS_LEARNED_SHIFT + (dir as u32 & 1))
}

/// The [`FlowValue::flags`] bits for `EVENT_*` bits `e`.
pub const fn event_bits(e: u32) -> u64 {
    (e as u64) << FLAGS_EVENTS_SHIFT
}

impl FlowValue {
    /// Union of the TCP flags sent in direction `dir`.
    pub const fn tcp_flags(&self, dir: u8) -> u32 {
        ((self.flags >> ((dir as u32 & 1) * FLAGS_DIR_BITS)) & 0xff) as u32
    }

    /// `EVENT_*` bits announced or observed.
    pub const fn events(&self) -> u32 {
        (self.flags >> FLAGS_EVENTS_SHIFT) as u32
    }
}

/// A ring-buffer event: a flow was created, or a TCP flow saw its first FIN or RST.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// The flow.
    pub key: FlowKey,
    /// `bpf_ktime_get_ns` of the packet that caused the event.
    pub ts_ns: u64,
    /// [`EVENT_NEW`], [`EVENT_FIN`] or [`EVENT_RST`].
    pub kind: u32,
    /// Direction index of the initiator, or [`INITIATOR_UNKNOWN`].
    pub initiator: u8,
    /// Direction index of the packet that caused the event.
    pub dir: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

/// Value of [`MAP_LOCAL_ENDPOINTS`]: a pod address on this node.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalEndpoint {
    /// Host-side interface index of the pod, 0 when userspace did not say.
    pub ifindex: u32,
    /// 1 when learned by the kernel, 0 when set by userspace.
    pub learned: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data without padding holes that carry meaning; every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::dns::DnsEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::drop::DropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::drop::DropValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn flow_key_layout() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(align_of::<FlowKey>(), 2);
        assert_eq!(offset_of!(FlowKey, hi_addr), 16);
        assert_eq!(offset_of!(FlowKey, lo_port), 32);
        assert_eq!(offset_of!(FlowKey, hi_port), 34);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(FlowKey, family), 37);
    }

    #[test]
    fn flow_value_layout() {
        assert_eq!(size_of::<FlowValue>(), 64);
        assert_eq!(offset_of!(FlowValue, bytes), 16);
        assert_eq!(offset_of!(FlowValue, first_seen_ns), 32);
        assert_eq!(offset_of!(FlowValue, last_seen_ns), 40);
        assert_eq!(offset_of!(FlowValue, flags), 48);
        assert_eq!(offset_of!(FlowValue, initiator), 56);
    }

    #[test]
    fn flow_event_layout() {
        assert_eq!(size_of::<FlowEvent>(), 56);
        assert_eq!(offset_of!(FlowEvent, ts_ns), 40);
        assert_eq!(offset_of!(FlowEvent, kind), 48);
        assert_eq!(offset_of!(FlowEvent, initiator), 52);
        assert_eq!(size_of::<LocalEndpoint>(), 8);
    }

    #[test]
    fn flag_word_round_trips() {
        let v = FlowValue {
            flags: tcp_flag_bits(DIR_LO_TO_HI, tcp_flags::SYN)
                | tcp_flag_bits(DIR_HI_TO_LO, tcp_flags::RST | tcp_flags::ACK)
                | event_bits(EVENT_NEW | EVENT_RST),
            ..FlowValue::default()
        };
        assert_eq!(v.tcp_flags(DIR_LO_TO_HI), tcp_flags::SYN);
        assert_eq!(v.tcp_flags(DIR_HI_TO_LO), tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(v.events(), EVENT_NEW | EVENT_RST);
        // The learned bits touch neither the TCP flags nor the events.
        let l = FlowValue {
            flags: v.flags | learned_bit(DIR_LO_TO_HI) | learned_bit(DIR_HI_TO_LO),
            ..v
        };
        assert_eq!(l.tcp_flags(DIR_LO_TO_HI), tcp_flags::SYN);
        assert_eq!(l.tcp_flags(DIR_HI_TO_LO), tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(l.events(), EVENT_NEW | EVENT_RST);
    }

    #[test]
    fn counters_fit_and_are_in_slot_order() {
        assert!(Counter::ALL.len() as u32 <= COUNTERS_LEN);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
        }
    }
}
