//! The general path: every packet the fast paths leave (the first packet of a flow, ICMP,
//! options, extension headers, fragments, non-linear headers), parsed into the per-CPU
//! `SCRATCH` map; creates flows and announces them.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray, programs::TcContext};
use netpol_observe_ebpf::{
    Counter, DIR_HI_TO_LO, DIR_LO_TO_HI, EVENT_FIN, EVENT_ICMP_UNREACH, EVENT_NEW, EVENT_RST,
    FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, INITIATOR_UNKNOWN, event_bits, learned_bit,
    tcp_flag_bits, tcp_flags,
};

use super::{
    flows::{BPF_NOEXIST, EEXIST, FLOWS, count, emit, mark_close, update},
    local::{LEARN_LOCAL, LOCAL_ENDPOINTS, learn_endpoint},
    mem::{or64, set},
    packet::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
        IPPROTO_UDP, V4Headers, be16, byte, ld, map_v4, size, v4_headers, v4_mapped,
    },
};

/// Per-CPU scratch space: the parsed packet and keys do not fit the 512-byte BPF stack.
#[map(name = "SCRATCH")]
pub(super) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The general path's per-CPU working set: the parsed packet, a key and a value.
#[repr(C)]
pub(super) struct Scratch {
    pkt: Packet,
    key: FlowKey,
    value: FlowValue,
}

/// IPv6 extension headers skipped at most before the transport header.
pub(super) const MAX_V6_EXT: usize = 6;

/// A parsed packet, oriented as sent.
#[repr(C)]
pub(super) struct Packet {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
    family: u8,
    tcp_flags: u32,
    /// IP bytes, with GSO segment headers counted.
    bytes: u64,
    segs: u64,
    /// Initiator hint: 1 = the sender initiates, 2 = the receiver does, 0 = unknown.
    hint: u8,
    /// The packet is an ICMP error quoting another flow (the quoted flow's canonical
    /// key is in `quoted_*`, addresses in `src`/`dst` swapped back by `handle`).
    icmp_error: bool,
    quoted_off: u32,
}

/// What [`parse`] made of a packet.
pub(super) enum Parsed {
    Flow,
    Skip(Counter),
}

/// The general path: the first packet of a flow, IPv6, ICMP, options, fragments,
/// non-linear headers. Reads the fast path's headers again (cheaper than passing them).
#[inline(never)]
pub(super) fn observe_general(ctx: &TcContext, from_pod: bool) {
    let v4 = v4_headers(ctx);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by one program run at a time on this CPU.
    let scratch = unsafe { &mut *scratch };
    match parse(ctx, &mut scratch.pkt, v4.as_ref(), from_pod) {
        Ok(Parsed::Flow) => {
            count(Counter::Packets);
            handle(ctx, scratch, from_pod);
        }
        Ok(Parsed::Skip(c)) => count(c),
        Err(()) => count(Counter::ParseFailed),
    }
}

/// The general path's packet from the fast path's headers `h`: only the first packet of
/// a flow gets here ([`super::front::fast`] has already skipped packets sent by local pods).
#[inline(always)]
pub(super) fn parse_v4_fast(ctx: &TcContext, h: &V4Headers, pkt: &mut Packet) -> Parsed {
    map_v4(h.src, &mut pkt.src);
    map_v4(h.dst, &mut pkt.dst);
    pkt.proto = h.proto;
    pkt.family = FAMILY_V4;
    pkt.sport = h.sport;
    pkt.dport = h.dport;
    pkt.tcp_flags = h.tcp_flags;
    pkt.hint = if h.proto != IPPROTO_TCP {
        1
    } else if h.tcp_flags & tcp_flags::SYN == 0 {
        0
    } else if h.tcp_flags & tcp_flags::ACK == 0 {
        1
    } else {
        2
    };
    set_size(ctx, pkt, 20 + h.l4_hdr_len);
    Parsed::Flow
}

/// Sets the packet's segment count and IP byte count (GSO packets count the headers of
/// every segment; `hdr_len` is the IP + transport header length of one segment).
#[inline(always)]
pub(super) fn set_size(ctx: &TcContext, pkt: &mut Packet, hdr_len: u64) {
    (pkt.segs, pkt.bytes) = size(ctx, hdr_len);
}

/// Parses the packet into `pkt` (from the fast path's headers `v4` when it read them):
/// a flow's packet, or one to skip with the counter to bump (non-IP, fragments, other
/// protocols, a local sender's packet to a pod); `Err` when the headers are cut short.
pub(super) fn parse(
    ctx: &TcContext,
    pkt: &mut Packet,
    v4: Option<&V4Headers>,
    from_pod: bool,
) -> Result<Parsed, ()> {
    set(&mut pkt.icmp_error, false);
    if let Some(h) = v4 {
        return Ok(parse_v4_fast(ctx, h, pkt));
    }
    set(&mut pkt.sport, 0);
    set(&mut pkt.dport, 0);
    set(&mut pkt.tcp_flags, 0);
    set(&mut pkt.hint, 0);
    let l4 = match parse_ip(ctx, pkt)? {
        Ok(l4) => l4,
        Err(skip) => return Ok(Parsed::Skip(skip)),
    };
    if !from_pod && LOCAL_ENDPOINTS.get_ptr(&pkt.src).is_some() {
        // The sender is a pod of this node: its own interface counts the packet. Checked
        // before the transport header is read, to keep the skip path short.
        return Ok(Parsed::Skip(Counter::SkippedLocal));
    }
    let l4_hdr_len = match parse_transport(ctx, pkt, l4)? {
        Ok(len) => len,
        Err(skip) => return Ok(Parsed::Skip(skip)),
    };
    set_size(ctx, pkt, (l4 - ETH_HLEN) as u64 + l4_hdr_len);
    Ok(Parsed::Flow)
}

/// Reads the IP header (IPv4, or IPv6 and its extension headers) into `pkt`'s family,
/// addresses and protocol; the offset of the transport header, or the counter of a packet
/// that is no flow's (non-IP, a fragment).
#[inline(always)]
fn parse_ip(ctx: &TcContext, pkt: &mut Packet) -> Result<Result<usize, Counter>, ()> {
    let l3 = ETH_HLEN;
    match be16(ctx, 12)? {
        ETH_P_IP => {
            let vihl = byte(ctx, l3)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(());
            }
            let frag = be16(ctx, l3 + 6)?;
            if frag & 0x1fff != 0 {
                return Ok(Err(Counter::Fragments));
            }
            pkt.proto = byte(ctx, l3 + 9)?;
            v4_mapped(ctx, l3 + 12, &mut pkt.src)?;
            v4_mapped(ctx, l3 + 16, &mut pkt.dst)?;
            pkt.family = FAMILY_V4;
            Ok(Ok(l3 + ihl))
        }
        ETH_P_IPV6 => {
            let next: u8 = byte(ctx, l3 + 6)?;
            pkt.src = ld(ctx, l3 + 8)?;
            pkt.dst = ld(ctx, l3 + 24)?;
            pkt.family = FAMILY_V6;
            Ok(v6_extensions(ctx, l3 + 40, next)?.map(|(proto, l4)| {
                pkt.proto = proto;
                l4
            }))
        }
        _ => Ok(Err(Counter::NonIp)),
    }
}

/// Walks the IPv6 extension headers from `off` (the first one's type is `next`, at most
/// [`MAX_V6_EXT`] of them): the transport protocol and its header's offset, or
/// [`Counter::Fragments`] for a fragment that is not the first.
#[inline(always)]
fn v6_extensions(
    ctx: &TcContext,
    mut off: usize,
    mut next: u8,
) -> Result<Result<(u8, usize), Counter>, ()> {
    for _ in 0..MAX_V6_EXT {
        match next {
            // hop-by-hop, routing, destination options
            0 | 43 | 60 => {
                let n = byte(ctx, off)?;
                let len = byte(ctx, off + 1)? as usize;
                next = n;
                off += (len + 1) * 8;
            }
            // fragment header
            44 => {
                let n = byte(ctx, off)?;
                let fo = be16(ctx, off + 2)?;
                if fo & 0xfff8 != 0 {
                    return Ok(Err(Counter::Fragments));
                }
                next = n;
                off += 8;
            }
            // authentication header
            51 => {
                let n = byte(ctx, off)?;
                let len = byte(ctx, off + 1)? as usize;
                next = n;
                off += (len + 2) * 4;
            }
            _ => return Ok(Ok((next, off))),
        }
    }
    Err(())
}

/// Reads the transport header at `l4` into `pkt`'s ports (an ICMP echo's id as both),
/// TCP flags and direction hint; its length, or the counter of a packet that is no flow's
/// (neighbour discovery, other protocols).
#[inline(always)]
fn parse_transport(
    ctx: &TcContext,
    pkt: &mut Packet,
    l4: usize,
) -> Result<Result<u64, Counter>, ()> {
    let l4_hdr_len: u64;
    match pkt.proto {
        IPPROTO_TCP => {
            pkt.sport = be16(ctx, l4)?;
            pkt.dport = be16(ctx, l4 + 2)?;
            let doff = byte(ctx, l4 + 12)?;
            pkt.tcp_flags = byte(ctx, l4 + 13)? as u32;
            l4_hdr_len = ((doff >> 4) as u64) * 4;
            let f = pkt.tcp_flags;
            if f & tcp_flags::SYN != 0 {
                pkt.hint = if f & tcp_flags::ACK == 0 { 1 } else { 2 };
            }
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            pkt.sport = be16(ctx, l4)?;
            pkt.dport = be16(ctx, l4 + 2)?;
            l4_hdr_len = 8;
            pkt.hint = 1;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let ty = byte(ctx, l4)?;
            l4_hdr_len = 8;
            let v6 = pkt.proto == IPPROTO_ICMPV6;
            let (echo_req, echo_rep) = if v6 { (128, 129) } else { (8, 0) };
            let unreach = if v6 { ty == 1 } else { ty == 3 };
            if ty == echo_req || ty == echo_rep {
                let id = be16(ctx, l4 + 4)?;
                pkt.sport = id;
                pkt.dport = id;
                pkt.hint = if ty == echo_req { 1 } else { 2 };
            } else if unreach {
                pkt.icmp_error = true;
                pkt.quoted_off = (l4 + 8) as u32;
                pkt.hint = 2;
            } else if v6 && (130..=143).contains(&ty) {
                // MLD and neighbour/router discovery: link plumbing, not flows.
                return Ok(Err(Counter::NonIp));
            } else {
                pkt.hint = 1;
            }
        }
        _ => return Ok(Err(Counter::OtherProtocol)),
    }
    Ok(Ok(l4_hdr_len))
}

/// Builds in `key` the canonical key of the flow an ICMP error quotes (inner IP header at
/// `off`); `tmp` is scratch space for the inner addresses.
pub(super) fn quoted_key(
    ctx: &TcContext,
    off: usize,
    v6: bool,
    key: &mut FlowKey,
    tmp: &mut FlowValue,
) -> Result<(), ()> {
    // Reuse the 32 bytes of packets+bytes of the scratch value for the two addresses.
    // SAFETY: [u64; 4] and [[u8; 16]; 2] have the same size; u8 has no alignment needs.
    let addrs = unsafe { &mut *((&raw mut tmp.packets) as *mut [[u8; 16]; 2]) };
    let (proto, l4);
    if v6 {
        proto = byte(ctx, off + 6)?;
        addrs[0] = ctx.load(off + 8).map_err(|_| ())?;
        addrs[1] = ctx.load(off + 24).map_err(|_| ())?;
        l4 = off + 40;
    } else {
        let ihl = ((byte(ctx, off)? & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(());
        }
        proto = byte(ctx, off + 9)?;
        v4_mapped(ctx, off + 12, &mut addrs[0])?;
        v4_mapped(ctx, off + 16, &mut addrs[1])?;
        l4 = off + ihl;
    }
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => (be16(ctx, l4)?, be16(ctx, l4 + 2)?),
        _ => return Err(()),
    };
    let family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
    let _ = canonical(key, &addrs[0], sport, &addrs[1], dport, proto, family);
    Ok(())
}

/// Fills `key` canonically; returns the direction index of a packet from `src`.
#[inline(always)]
pub(super) fn canonical(
    key: &mut FlowKey,
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
    proto: u8,
    family: u8,
) -> u8 {
    // Bytewise order of the addresses, as two big-endian words, then the ports.
    let word = |a: &[u8; 16], i: usize| -> u64 {
        // SAFETY: i is 0 or 8: the 8 bytes lie within the 16-byte array.
        u64::from_be(unsafe { core::ptr::read_unaligned(a.as_ptr().add(i) as *const u64) })
    };
    let (s0, d0) = (word(src, 0), word(dst, 0));
    let (s1, d1) = (word(src, 8), word(dst, 8));
    let src_lower = if s0 != d0 {
        s0 < d0
    } else if s1 != d1 {
        s1 < d1
    } else {
        sport <= dport
    };
    key.proto = proto;
    key.family = family;
    if src_lower {
        key.lo_addr = *src;
        key.lo_port = sport;
        key.hi_addr = *dst;
        key.hi_port = dport;
        DIR_LO_TO_HI
    } else {
        key.lo_addr = *dst;
        key.lo_port = dport;
        key.hi_addr = *src;
        key.hi_port = sport;
        DIR_HI_TO_LO
    }
}

/// Counts the parsed packet of `scratch`: into the flow an ICMP error quotes, or into its
/// own flow, creating it (and announcing it, and a FIN/RST it carries) when it is new.
pub(super) fn handle(ctx: &TcContext, scratch: &mut Scratch, from_pod: bool) {
    let Scratch { pkt, key, value } = scratch;
    let pkt = &*pkt;
    // Learning costs one LOCAL_ENDPOINTS lookup per flow and direction (the flow's
    // learned bit), not one per packet.
    let learn = from_pod && unsafe { core::ptr::read_volatile(&LEARN_LOCAL) } != 0;

    if pkt.icmp_error {
        if learn {
            learn_endpoint(ctx, &pkt.src);
        }
        let v6 = pkt.family == FAMILY_V6;
        if quoted_key(ctx, pkt.quoted_off as usize, v6, key, value).is_ok() {
            if let Some(v) = FLOWS.get_ptr_mut(&*key) {
                unsafe { or64(&raw mut (*v).flags, event_bits(EVENT_ICMP_UNREACH)) };
                return;
            }
        }
    }

    key._pad = [0; 2];
    let dir = canonical(
        key, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto, pkt.family,
    );
    let mut tries = 0;
    while tries < 2 {
        tries += 1;
        if let Some(v) = FLOWS.get_ptr_mut(&*key) {
            update(
                ctx,
                v,
                key,
                pkt.segs,
                pkt.bytes,
                pkt.tcp_flags,
                &pkt.src,
                dir,
                learn,
            );
            return;
        }
        let now = unsafe { bpf_ktime_get_ns() };
        let initiator = match pkt.hint {
            1 => dir,
            2 => dir ^ 1,
            _ => INITIATOR_UNKNOWN,
        };
        value.first_seen_ns = now;
        value.last_seen_ns = now;
        // initiator and the 7 padding bytes in one store (no memset call)
        // SAFETY: `initiator` and `_pad` are the last 8 bytes of the 8-aligned value
        // (checked by the layout test).
        unsafe {
            let base = (&raw mut *value) as *mut u8;
            let tail = base.add(core::mem::offset_of!(FlowValue, initiator)) as *mut u64;
            core::ptr::write_volatile(tail, u64::from(initiator));
        }
        value.flags = event_bits(EVENT_NEW) | tcp_flag_bits(dir, pkt.tcp_flags);
        if learn && learn_endpoint(ctx, &pkt.src) {
            value.flags |= learned_bit(dir);
        }
        let d = (dir & 1) as usize;
        for i in 0..2 {
            set(&mut value.packets[i], if i == d { pkt.segs } else { 0 });
            set(&mut value.bytes[i], if i == d { pkt.bytes } else { 0 });
        }
        match FLOWS.insert(&*key, &*value, BPF_NOEXIST) {
            Ok(()) => {
                count(Counter::FlowsCreated);
                emit(key, now, EVENT_NEW, initiator, dir);
                let f = pkt.tcp_flags;
                if f & tcp_flags::RST != 0 {
                    mark_close(key, EVENT_RST, initiator, dir, now);
                } else if f & tcp_flags::FIN != 0 {
                    mark_close(key, EVENT_FIN, initiator, dir, now);
                }
                return;
            }
            Err(e) if e == -EEXIST => continue,
            Err(e) => {
                count(Counter::MapInsertFailed);
                // Cold path only: aya-log is never used per packet.
                aya_log_ebpf::debug!(ctx, "flow map insert failed: {}", e);
                return;
            }
        }
    }
}
