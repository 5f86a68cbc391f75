//! The DNS-answer capture: packets to a pod whose transport source port is 53 (UDP, TCP
//! segments with data) have a bounded prefix of their payload copied to `DNS_EVENTS`. The
//! per-packet programs only compare the source port they already read; everything else is
//! in [`capture`], a subprogram of its own that only DNS answers reach.

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_ktime_get_ns, helpers::generated::bpf_skb_load_bytes,
    macros::map, maps::RingBuf, programs::TcContext,
};
use netpol_observe_ebpf::{
    Counter, DEFAULT_DNS_RINGBUF_BYTES, DNS_PAYLOAD_MAX, DnsEvent, FAMILY_V4, FAMILY_V6,
};

use super::{
    flows::count,
    packet::{ETH_HLEN, ld, map_v4},
};

/// DNS answers for userspace: at most one event per port-53 packet to a pod.
#[map(name = "DNS_EVENTS")]
pub(super) static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_DNS_RINGBUF_BYTES, 0);

/// Set to 0 by userspace to capture no DNS answers (1: capture).
#[unsafe(no_mangle)]
pub(super) static CAPTURE_DNS: u8 = 1;

/// The DNS source port.
pub(super) const DNS_PORT: u16 = 53;

/// Copies the DNS answer in the packet to a pod (IPv6 when `v6`, else IPv4 without options;
/// transport protocol `proto`, transport header `l4_hdr_len` bytes) to `DNS_EVENTS`: its
/// addresses and the first [`DNS_PAYLOAD_MAX`] bytes of its payload. A TCP segment without
/// data is left alone. Never changes the packet.
#[inline(never)]
pub(super) fn capture(ctx: &TcContext, v6: bool, proto: u8, l4_hdr_len: u64) {
    if unsafe { core::ptr::read_volatile(&CAPTURE_DNS) } == 0 {
        return;
    }
    let l3 = if v6 { 40 } else { 20 };
    let off = ETH_HLEN as u64 + l3 + l4_hdr_len;
    let len = u64::from(ctx.len());
    if len <= off || off > 1024 {
        return;
    }
    let payload = len - off;
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        count(Counter::DnsRingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let filled = if v6 {
        fill_v6(ctx, ev)
    } else {
        fill_v4(ctx, ev)
    };
    // 1..=DNS_PAYLOAD_MAX, in a form the verifier bounds: ((n - 1) & 511) + 1 in
    // assembly, which the compiler cannot fold away.
    let n = if payload > DNS_PAYLOAD_MAX as u64 {
        DNS_PAYLOAD_MAX as u64
    } else {
        payload
    };
    let mut size = n - 1;
    // SAFETY: arithmetic on a register only.
    unsafe {
        core::arch::asm!(
            "{n} &= 511",
            "{n} += 1",
            n = inout(reg) size,
            options(pure, nomem, nostack),
        );
    }
    // SAFETY: `ev` is the reserved record (DnsEvent, whose `data` holds DNS_PAYLOAD_MAX =
    // 512 bytes); `size` is 1..=512; the helper reads the packet and writes the record.
    let copied = filled.is_ok()
        && unsafe {
            let data = (&raw mut (*ev).data) as *mut core::ffi::c_void;
            bpf_skb_load_bytes(
                ctx.skb.skb as *const __sk_buff as *const _,
                off as u32,
                data,
                size as u32,
            )
        } == 0;
    if !copied {
        entry.discard(0);
        return;
    }
    // SAFETY: fields of the reserved record.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).payload_len = payload as u32;
        (*ev).captured = size as u16;
        (*ev).family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
        (*ev).proto = proto;
    }
    entry.submit(0);
    count(Counter::DnsAnswers);
}

/// The addresses of an IPv4 packet: the destination is the client.
#[inline(always)]
fn fill_v4(ctx: &TcContext, ev: *mut DnsEvent) -> Result<(), ()> {
    let src: u32 = ld(ctx, ETH_HLEN + 12)?;
    let dst: u32 = ld(ctx, ETH_HLEN + 16)?;
    // SAFETY: the address fields of the reserved record (8-aligned at offsets 0 and 16).
    unsafe {
        map_v4(dst, &mut (*ev).client);
        map_v4(src, &mut (*ev).server);
    }
    Ok(())
}

/// The addresses of an IPv6 packet.
#[inline(always)]
fn fill_v6(ctx: &TcContext, ev: *mut DnsEvent) -> Result<(), ()> {
    let src: [u64; 2] = ld(ctx, ETH_HLEN + 8)?;
    let dst: [u64; 2] = ld(ctx, ETH_HLEN + 24)?;
    // SAFETY: the address fields of the reserved record, written as two aligned words each.
    unsafe {
        let c = (&raw mut (*ev).client) as *mut u64;
        let s = (&raw mut (*ev).server) as *mut u64;
        c.write(dst[0]);
        c.add(1).write(dst[1]);
        s.write(src[0]);
        s.add(1).write(src[1]);
    }
    Ok(())
}
