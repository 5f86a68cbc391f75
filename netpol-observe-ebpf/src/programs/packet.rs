//! Reading packets: bounds-checked loads from the linear data (helper fallback for
//! non-linear skbs), single-instruction unaligned header loads, and the fast paths'
//! IPv4/IPv6 TCP/UDP header views.

use aya_ebpf::programs::TcContext;

/// Ethernet header length.
pub(super) const ETH_HLEN: usize = 14;
/// Ethertypes.
pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;

/// IP protocol numbers.
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;
pub(super) const IPPROTO_SCTP: u8 = 132;
pub(super) const IPPROTO_ICMP: u8 = 1;
pub(super) const IPPROTO_ICMPV6: u8 = 58;

/// Reads a `T` (at least 2 bytes) at `off`: directly from the linear packet data when it
/// is there (no helper call), else through `bpf_skb_load_bytes` (non-linear skbs).
#[inline(always)]
pub(super) fn ld<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off < 4096 && start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above.
        Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).map_err(|_| ())
    }
}

/// A big-endian `u16` at `off` (see [`ld`]).
#[inline(always)]
pub(super) fn be16(ctx: &TcContext, off: usize) -> Result<u16, ()> {
    ld::<u16>(ctx, off).map(u16::from_be)
}

/// One byte; read as two (a one-byte bounds check compiles to a form the verifier
/// rejects), falling back to the helper at the very end of the packet.
#[inline(always)]
pub(super) fn byte(ctx: &TcContext, off: usize) -> Result<u8, ()> {
    match ld::<[u8; 2]>(ctx, off) {
        Ok(b) => Ok(b[0]),
        Err(()) => ctx.load::<u8>(off).map_err(|_| ()),
    }
}

/// Writes the IPv4 address `raw` (as read from the packet: network byte order in memory,
/// see [`pkt_u32`]) into `out` as v4-mapped IPv6 (`::ffff:a.b.c.d`) with two 64-bit
/// stores: a plain `*out = [0; 16]` compiles to a call of the byte-loop `memset`, which
/// was a fifth of the program time. `out` must be 8-byte aligned: every caller passes an
/// address field of `Packet` (offsets 0 and 16 of an 8-aligned struct) or half of the
/// scratch value's `u64` counters.
#[inline(always)]
pub(super) fn map_v4(raw: u32, out: &mut [u8; 16]) {
    let hi = mapped_v4_word(raw);
    let p = out.as_mut_ptr() as *mut u64;
    // SAFETY: two aligned 8-byte stores within the 16-byte array (see above).
    unsafe {
        p.write(0);
        p.add(1).write(hi);
    }
}

/// The second half of the v4-mapped form of `raw` (`::ffff:a.b.c.d`; the first is 0):
/// bytes `00 00 ff ff a b c d` in memory.
#[inline(always)]
pub(super) fn mapped_v4_word(raw: u32) -> u64 {
    let b = raw.to_ne_bytes();
    u64::from_ne_bytes([0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]])
}

/// The IPv4 address at `off`, v4-mapped into `out` (see [`map_v4`]).
#[inline(always)]
pub(super) fn v4_mapped(ctx: &TcContext, off: usize, out: &mut [u8; 16]) -> Result<(), ()> {
    map_v4(u32::from_ne_bytes(ld(ctx, off)?), out);
    Ok(())
}

/// Length of the headers the IPv4 fast path reads: Ethernet, a 20-byte IPv4 header and
/// the first 20 bytes of the transport header.
pub(super) const FAST_V4_LEN: usize = ETH_HLEN + 20 + 20;

/// Length of the headers the IPv6 fast path reads: Ethernet, a 40-byte IPv6 header (no
/// extension header) and the first 20 bytes of the transport header.
pub(super) const FAST_V6_LEN: usize = ETH_HLEN + 40 + 20;

/// As [`pkt_u32`], 8 bytes (`ldxdw`).
///
/// # Safety
/// As [`pkt_u32`], for `p + OFF .. p + OFF + 8`.
#[inline(always)]
pub(super) unsafe fn pkt_u64<const OFF: i16>(p: usize) -> u64 {
    let v: u64;
    // SAFETY: see the function's contract; the instruction only reads packet memory.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({p} + {off})",
            v = lateout(reg) v,
            p = in(reg) p,
            off = const OFF,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v
}

/// One 4-byte load from packet memory at `p + OFF`, as a single BPF `ldxw` instruction;
/// the bytes in memory order (`u32::from_ne_bytes` of the 4 packet bytes).
///
/// Why inline assembly: packet headers are not aligned for their fields (`data` is where
/// the Ethernet header starts, so the IPv4 addresses at offset 26 are 2-aligned at best),
/// and a Rust read of a `u32` through a pointer that is not 4-aligned is undefined
/// behaviour whatever the hardware does; `read_unaligned` is sound, but this target has
/// no unaligned loads in LLVM's model, so it becomes four byte loads and shifts (about 40
/// instructions per packet for the addresses and ports). At the BPF level an unaligned
/// packet load is defined: the verifier accepts it (no `BPF_F_STRICT_ALIGNMENT`; C
/// programs read `iph->saddr` this way) and the x86-64 JIT emits one `mov`. The assembly
/// states exactly that instruction, so no Rust-level alignment promise is made.
///
/// # Safety
/// `p + OFF .. p + OFF + 4` must lie within the linear packet data (`p` is `data` and the
/// caller has checked `data + OFF + 4 <= data_end`, with the verifier seeing that check).
#[inline(always)]
pub(super) unsafe fn pkt_u32<const OFF: i16>(p: usize) -> u32 {
    let v: u64;
    // SAFETY: see the function's contract; the instruction only reads packet memory.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + {off})",
            v = lateout(reg) v,
            p = in(reg) p,
            off = const OFF,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v as u32
}

/// As [`pkt_u32`], 2 bytes (`ldxh`).
///
/// # Safety
/// As [`pkt_u32`], for `p + OFF .. p + OFF + 2`.
#[inline(always)]
pub(super) unsafe fn pkt_u16<const OFF: i16>(p: usize) -> u16 {
    let v: u64;
    // SAFETY: see the function's contract; the instruction only reads packet memory.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + {off})",
            v = lateout(reg) v,
            p = in(reg) p,
            off = const OFF,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v as u16
}

/// The headers of the common case: an unfragmented IPv4 TCP or UDP packet without IP
/// options whose headers are in the linear data, read after one bounds check.
pub(super) struct V4Headers {
    /// Source address, network byte order in memory (as [`pkt_u32`] returns it).
    pub(super) src: u32,
    /// Destination address, likewise.
    pub(super) dst: u32,
    pub(super) proto: u8,
    pub(super) sport: u16,
    pub(super) dport: u16,
    /// TCP flags (0 for UDP).
    pub(super) tcp_flags: u32,
    /// Transport header length.
    pub(super) l4_hdr_len: u64,
}

/// The packet's [`V4Headers`], or `None` for anything else (the general parser's case).
/// Six loads of 4 or 2 bytes (see [`pkt_u32`]); the words are little-endian views of
/// the packet bytes, so byte `k` of a word is bits `8k..8k+8`.
#[inline(always)]
pub(super) fn v4_headers(ctx: &TcContext) -> Option<V4Headers> {
    let p = ctx.data();
    if p + FAST_V4_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY (every load below): each reads within the first 48 < FAST_V4_LEN bytes,
    // checked against data_end above.
    // Bytes 12..16: ethertype (08 00), IPv4 version and header length (0x45), TOS.
    let w = unsafe { pkt_u32::<12>(p) };
    // Bytes 20..24: flags and fragment offset, TTL, protocol.
    let f = unsafe { pkt_u32::<20>(p) };
    let proto = (f >> 24) as u8;
    // Fragment offset 0 (the flag bits of byte 20 may be set: a first fragment is
    // handled like the general parser handles it, as a flow's packet).
    if w & 0x00ff_ffff != 0x0045_0008
        || f & 0xff1f != 0
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    {
        return None;
    }
    const L4: i16 = (ETH_HLEN + 20) as i16;
    let (tcp_flags, l4_hdr_len) = if proto == IPPROTO_TCP {
        // Bytes 46, 47: data offset, flags.
        let t = unsafe { pkt_u16::<{ L4 + 12 }>(p) };
        ((t >> 8) as u32, (((t & 0xff) >> 4) as u64) * 4)
    } else {
        (0, 8)
    };
    let ports = unsafe { pkt_u32::<L4>(p) };
    Some(V4Headers {
        src: unsafe { pkt_u32::<{ ETH_HLEN as i16 + 12 }>(p) },
        dst: unsafe { pkt_u32::<{ ETH_HLEN as i16 + 16 }>(p) },
        proto,
        sport: u16::from_be(ports as u16),
        dport: u16::from_be((ports >> 16) as u16),
        tcp_flags,
        l4_hdr_len,
    })
}

/// The headers of an IPv6 TCP or UDP packet without extension headers whose headers are
/// in the linear data, read after one bounds check (the general parser's case otherwise).
pub(super) struct V6Headers {
    /// Source address: two words as read from the packet (memory order, see [`pkt_u64`]).
    pub(super) src: [u64; 2],
    /// Destination address, likewise.
    pub(super) dst: [u64; 2],
    pub(super) proto: u8,
    pub(super) sport: u16,
    pub(super) dport: u16,
    /// TCP flags (0 for UDP).
    pub(super) tcp_flags: u32,
    /// Transport header length.
    pub(super) l4_hdr_len: u64,
}

/// The packet's [`V6Headers`], or `None`. As [`v4_headers`]: little-endian views of the
/// packet bytes.
#[inline(always)]
pub(super) fn v6_headers(ctx: &TcContext) -> Option<V6Headers> {
    let p = ctx.data();
    if p + FAST_V6_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY (every load below): each reads within the first 68 < FAST_V6_LEN bytes,
    // checked against data_end above.
    // Bytes 12..16: ethertype (86 dd), version 6 (high nibble of byte 14).
    let w = unsafe { pkt_u32::<12>(p) };
    // Byte 20: next header, here the transport protocol.
    let proto = unsafe { pkt_u16::<20>(p) } as u8;
    if w & 0x00f0_ffff != 0x0060_dd86 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    const L4: i16 = (ETH_HLEN + 40) as i16;
    let (tcp_flags, l4_hdr_len) = if proto == IPPROTO_TCP {
        // Bytes 66, 67: data offset, flags.
        let t = unsafe { pkt_u16::<{ L4 + 12 }>(p) };
        ((t >> 8) as u32, (((t & 0xff) >> 4) as u64) * 4)
    } else {
        (0, 8)
    };
    let ports = unsafe { pkt_u32::<L4>(p) };
    const SRC: i16 = ETH_HLEN as i16 + 8;
    const DST: i16 = ETH_HLEN as i16 + 24;
    Some(V6Headers {
        src: unsafe { [pkt_u64::<SRC>(p), pkt_u64::<{ SRC + 8 }>(p)] },
        dst: unsafe { [pkt_u64::<DST>(p), pkt_u64::<{ DST + 8 }>(p)] },
        proto,
        sport: u16::from_be(ports as u16),
        dport: u16::from_be((ports >> 16) as u16),
        tcp_flags,
        l4_hdr_len,
    })
}

/// 16 bytes on the stack, 8-aligned (the verifier wants aligned stack accesses and
/// [`map_v4`] stores two `u64`s).
#[repr(C, align(8))]
pub(super) struct Addr(pub(super) [u8; 16]);

/// The packet's segment count and IP byte count (GSO packets count the headers of
/// every segment; `hdr_len` is the IP + transport header length of one segment).
#[inline(always)]
pub(super) fn size(ctx: &TcContext, hdr_len: u64) -> (u64, u64) {
    let ip_len = (ctx.len() as u64).saturating_sub(ETH_HLEN as u64);
    let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let segs = if segs > 1 { segs } else { 1 };
    (segs, ip_len + (segs - 1) * hdr_len)
}
