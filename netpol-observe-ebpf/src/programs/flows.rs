//! The flow map `FLOWS`: the established-flow lookups of both fast paths, the per-packet
//! update (atomic counters, flag bits, close events), the ring-buffer events and the
//! kernel-side failure counters.

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use netpol_observe_ebpf::{
    COUNTERS_LEN, Counter, DEFAULT_FLOW_CAPACITY, DEFAULT_RINGBUF_BYTES, EVENT_FIN, EVENT_RST,
    FlowEvent, FlowKey, FlowValue, event_bits, learned_bit, tcp_flag_bits, tcp_flags,
};

use super::{
    local::{LEARN_LOCAL, learn_endpoint},
    mem::{add64, or64},
    packet::Addr,
};

/// The flow map: one entry per flow (canonical key), cumulative counts per direction.
#[map(name = "FLOWS")]
pub(super) static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// New flows and first FIN/RST, for userspace (never one event per packet).
#[map(name = "FLOW_EVENTS")]
pub(super) static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Kernel-side counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
pub(super) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
/// Map update flag: insert only if the key is absent.
pub(super) const BPF_NOEXIST: u64 = 1;
/// The errno an insert with [`BPF_NOEXIST`] returns (negated) when the key exists.
pub(super) const EEXIST: i32 = 17;

/// Adds 1 to counter `c` on this CPU.
#[inline(always)]
pub(super) fn count(c: Counter) {
    count_n(c, 1);
}

/// Adds `n` to counter `c` on this CPU.
#[inline(always)]
pub(super) fn count_n(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *p += n };
    }
}

/// A flow key on the stack, 8-aligned, built with five 64-bit stores.
#[repr(C, align(8))]
pub(super) struct KeyWords(pub(super) [u64; 5]);

impl KeyWords {
    #[inline(always)]
    pub(super) fn as_key(&self) -> &FlowKey {
        // SAFETY: FlowKey is 40 bytes of integers (layout checked by the crate's tests);
        // KeyWords has its size and a larger alignment.
        unsafe { &*((self as *const KeyWords) as *const FlowKey) }
    }
}

/// A flow value on the stack, built with eight 64-bit stores (no `memset`).
#[repr(C, align(8))]
pub(super) struct ValueWords(pub(super) [u64; 8]);

impl ValueWords {
    #[inline(always)]
    pub(super) fn as_value(&self) -> &FlowValue {
        // SAFETY: FlowValue is 64 bytes of integers, `initiator` and zero padding last
        // (layout checked by the crate's tests); ValueWords has its size and alignment.
        unsafe { &*((self as *const ValueWords) as *const FlowValue) }
    }
}

/// The `FLOWS` path of an established flow's packet (`segs` segments, `bytes` IP bytes,
/// TCP flags `tcp_flags`, direction `dir`, from `sender`): one lookup of `key` and the
/// atomic counter update, learning the sender when the packet leaves a pod. Returns the
/// flow's entry, or `None` when the flow is not in the map (the general path creates it).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn flows_path(
    ctx: &TcContext,
    key: &FlowKey,
    sender: &Addr,
    dir: u8,
    tcp_flags: u32,
    from_pod: bool,
    segs: u64,
    bytes: u64,
) -> Option<*mut FlowValue> {
    let v = FLOWS.get_ptr_mut(key)?;
    let learn = from_pod && unsafe { core::ptr::read_volatile(&LEARN_LOCAL) } != 0;
    update(ctx, v, key, segs, bytes, tcp_flags, &sender.0, dir, learn);
    Some(v)
}

/// Sets the close event bit `kind` of the flow `key` (just created by a FIN/RST packet) and
/// announces it, once.
#[inline(always)]
pub(super) fn mark_close(key: &FlowKey, kind: u32, initiator: u8, dir: u8, now: u64) {
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        let bits = event_bits(kind);
        if unsafe { or64(&raw mut (*v).flags, bits) } & bits == 0 {
            emit(key, now, kind, initiator, dir);
        }
    }
}

/// A packet of an existing flow: atomic adds on the counters; every other write only
/// when it changes something (`last_seen` moves once per clock tick, flag bits once).
#[inline(always)]
pub(super) fn update(
    ctx: &TcContext,
    v: *mut FlowValue,
    key: &FlowKey,
    segs: u64,
    bytes: u64,
    f: u32,
    src: &[u8; 16],
    dir: u8,
    learn: bool,
) {
    let d = (dir & 1) as usize;
    unsafe {
        add64(&raw mut (*v).packets[d], segs);
        add64(&raw mut (*v).bytes[d], bytes);
        // The coarse clock (last timer tick) is enough for idleness and much cheaper; it
        // may lag first_seen by less than a tick, hence the comparison.
        let now = bpf_ktime_get_coarse_ns();
        if (*v).last_seen_ns < now {
            (*v).last_seen_ns = now;
        }
    }
    let close = if f & tcp_flags::RST != 0 {
        EVENT_RST
    } else if f & tcp_flags::FIN != 0 {
        EVENT_FIN
    } else {
        0
    };
    let mut bits = tcp_flag_bits(dir, f) | event_bits(close);
    if learn {
        bits |= learned_bit(dir);
    }
    if bits == 0 {
        return;
    }
    let cur = unsafe { core::ptr::read_volatile(&raw const (*v).flags) };
    if cur & bits == bits {
        return;
    }
    if learn && cur & learned_bit(dir) == 0 && !learn_endpoint(ctx, src) {
        // The endpoint map is full: try again with the next packet.
        bits &= !learned_bit(dir);
    }
    let prev = unsafe { or64(&raw mut (*v).flags, bits) };
    if close != 0 && prev & event_bits(close) == 0 {
        let initiator = unsafe { (*v).initiator };
        emit(key, unsafe { bpf_ktime_get_ns() }, close, initiator, dir);
    }
}

/// Puts a [`FlowEvent`] on the ring buffer (counting it, or a full ring buffer).
#[inline(always)]
pub(super) fn emit(key: &FlowKey, now: u64, kind: u32, initiator: u8, dir: u8) {
    match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                key: *key,
                ts_ns: now,
                kind,
                initiator,
                dir,
                _pad: [0; 2],
            });
            entry.submit(0);
            count(Counter::EventsSent);
        }
        None => count(Counter::RingbufFull),
    }
}
