//! The drop tracepoint: a `tp_btf` program on `skb:kfree_skb`.
//!
//! For each freed `sk_buff` whose drop reason is enabled in `DROP_REASONS`, it reads the IP
//! header (at `head + network_header`, offsets of `struct sk_buff` resolved by userspace from
//! the kernel's BTF and passed in the `SKB_OFF_*` globals) and the transport ports, and adds
//! the packet to the `DROPS` map keyed by (flow as the packet went, reason). Nothing per
//! kernel version is hard-coded: reason values and names come from BTF in userspace.
//!
//! `DROP_NETNS_INUM` (0: every namespace) limits the count to drops whose device
//! (`skb->dev->nd_net.net->ns.inum`, offsets from BTF in the `*_OFF_*` globals) is in that
//! network namespace: several simulated nodes on one kernel each count their own.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, map},
    maps::{Array, LruHashMap},
    programs::BtfTracePointContext,
};
use netpol_observe_ebpf::{
    DropKey, DropValue, FAMILY_V4, FAMILY_V6,
    drop::{DEFAULT_DROPS_CAPACITY, DROP_REASONS_LEN},
};

#[map(name = "DROPS")]
static DROPS: LruHashMap<DropKey, DropValue> =
    LruHashMap::with_max_entries(DEFAULT_DROPS_CAPACITY, 0);

#[map(name = "DROP_REASONS")]
static DROP_REASONS: Array<u32> = Array::with_max_entries(DROP_REASONS_LEN, 0);

#[unsafe(no_mangle)]
static SKB_OFF_HEAD: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFF_NETWORK_HEADER: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFF_LEN: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFFSETS_SET: u32 = 0;
#[unsafe(no_mangle)]
static DROP_NETNS_INUM: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFF_DEV: u32 = 0;
#[unsafe(no_mangle)]
static NET_DEVICE_OFF_NET: u32 = 0;
#[unsafe(no_mangle)]
static NET_OFF_NS_INUM: u32 = 0;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_drops(ctx: BtfTracePointContext) -> i32 {
    let _ = try_drop(&ctx);
    0
}

#[inline(always)]
fn global(v: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn read<T>(p: *const u8) -> Result<T, ()> {
    unsafe { bpf_probe_read_kernel(p as *const T).map_err(|_| ()) }
}

fn try_drop(ctx: &BtfTracePointContext) -> Result<(), ()> {
    if global(&SKB_OFFSETS_SET) == 0 {
        return Ok(());
    }
    // kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)
    let skb: *const c_void = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason >= DROP_REASONS_LEN {
        return Ok(());
    }
    match DROP_REASONS.get(reason) {
        Some(v) if *v != 0 => {}
        _ => return Ok(()),
    }
    let skb = skb as *const u8;
    // The namespace filter: one global read when it is off.
    let netns = global(&DROP_NETNS_INUM);
    if netns != 0 && !in_netns(skb, netns)? {
        return Ok(());
    }
    let head: u64 = read(skb.wrapping_add(global(&SKB_OFF_HEAD) as usize))?;
    let nh: u16 = read(skb.wrapping_add(global(&SKB_OFF_NETWORK_HEADER) as usize))?;
    let len: u32 = read(skb.wrapping_add(global(&SKB_OFF_LEN) as usize))?;
    if head == 0 || nh == 0xffff {
        return Ok(());
    }
    let ip = (head + nh as u64) as *const u8;
    let first: u8 = read(ip)?;
    let mut key = DropKey {
        reason,
        ..DropKey::default()
    };
    let l4: *const u8;
    match first >> 4 {
        4 => {
            let ihl = ((first & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Ok(());
            }
            let frag: u16 = read(ip.wrapping_add(6))?;
            key.proto = read(ip.wrapping_add(9))?;
            let s: [u8; 4] = read(ip.wrapping_add(12))?;
            let d: [u8; 4] = read(ip.wrapping_add(16))?;
            key.src[10] = 0xff;
            key.src[11] = 0xff;
            key.src[12..].copy_from_slice(&s);
            key.dst[10] = 0xff;
            key.dst[11] = 0xff;
            key.dst[12..].copy_from_slice(&d);
            key.family = FAMILY_V4;
            // Non-first fragments carry no transport header.
            if u16::from_be(frag) & 0x1fff != 0 {
                return count(&key, len);
            }
            l4 = ip.wrapping_add(ihl);
        }
        6 => {
            key.proto = read(ip.wrapping_add(6))?;
            key.src = read(ip.wrapping_add(8))?;
            key.dst = read(ip.wrapping_add(24))?;
            key.family = FAMILY_V6;
            l4 = ip.wrapping_add(40);
        }
        _ => return Ok(()),
    }
    match key.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u8; 4] = read(l4)?;
            key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Echo request/reply: the identifier on both sides, as the flow programs do.
            let hdr: [u8; 6] = read(l4)?;
            let echo = matches!(hdr[0], 0 | 8 | 128 | 129);
            if echo {
                let id = u16::from_be_bytes([hdr[4], hdr[5]]);
                key.src_port = id;
                key.dst_port = id;
            }
        }
        _ => {}
    }
    count(&key, len)
}

/// Whether `skb->dev` is in the network namespace of inode `inum` (no device: no).
#[inline(always)]
fn in_netns(skb: *const u8, inum: u32) -> Result<bool, ()> {
    let dev: u64 = read(skb.wrapping_add(global(&SKB_OFF_DEV) as usize))?;
    if dev == 0 {
        return Ok(false);
    }
    let net: u64 = read((dev as *const u8).wrapping_add(global(&NET_DEVICE_OFF_NET) as usize))?;
    if net == 0 {
        return Ok(false);
    }
    let ns: u32 = read((net as *const u8).wrapping_add(global(&NET_OFF_NS_INUM) as usize))?;
    Ok(ns == inum)
}

#[inline(always)]
fn count(key: &DropKey, len: u32) -> Result<(), ()> {
    if let Some(v) = DROPS.get_ptr_mut(key) {
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).packets, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).bytes, len as u64);
        }
        return Ok(());
    }
    let v = DropValue {
        packets: 1,
        bytes: len as u64,
    };
    // A concurrent insert of the same key loses one packet at most; acceptable for drops.
    DROPS.insert(key, &v, 0).map_err(|_| ())
}
