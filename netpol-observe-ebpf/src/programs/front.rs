//! The per-CPU front entries of established IPv4 TCP/UDP flows (`FLOW_CACHE`): a hit only
//! adds to its entry; everything else takes the `FLOWS` path and may take the entry over;
//! the flush moves pending counts into `FLOWS`.

use super::flows::{BPF_NOEXIST, EEXIST, FLOWS, KeyWords, ValueWords, count, count_n, flows_v4};
use super::local::{LEARN_LOCAL, is_local_v4, skip_local_v4};
use super::mem::{add64, bump, get, set};
use super::packet::{V4Headers, mapped_v4_word, size, v4_headers};
use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
};
use aya_ebpf::macros::map;
use aya_ebpf::maps::Array;
use aya_ebpf::programs::TcContext;
use netpol_observe_ebpf::{
    Counter, DIR_HI_TO_LO, DIR_LO_TO_HI, FAMILY_V4, FLOW_CACHE_SLOTS, FlowValue, INITIATOR_UNKNOWN,
    learned_bit, tcp_flag_bits, tcp_flags,
};

/// `BPF_F_MMAPABLE`: see [`FLOW_CACHE`].
pub(super) const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Each CPU's [`CpuState`]: element `c` belongs to CPU `c` (userspace sizes the map to
/// the possible CPUs). A plain array indexed by CPU rather than a per-CPU array: the
/// verifier inlines its lookup as an address computation, where a per-CPU array's also
/// loads the element's per-CPU pointer from the map (one more cache line per packet).
/// With `BPF_F_MMAPABLE` the kernel starts the values on a page boundary, so each 64-byte
/// part of an element is exactly one cache line (were it not, only speed would suffer).
#[map(name = "FLOW_CACHE")]
pub(super) static FLOW_CACHE: Array<CpuState> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// One CPU's state: its [`CpuLine`] and the front entries of `FLOWS` of the
/// established IPv4 TCP/UDP flows it counts often, direct-mapped by a multiplicative
/// hash of the flow, with the counts not yet added to their `FLOWS` entries. See
/// [`hot_v4`].
#[repr(C)]
pub(super) struct CpuState {
    line: CpuLine,
    entries: [FlowCache; FLOW_CACHE_SLOTS as usize],
}

/// Pending packets per direction an entry takes before the `FLOWS` path flushes it (so
/// the `u32` cannot overflow: one packet adds at most 65 535 GSO segments).
pub(super) const PACKETS_MAX: u32 = 0xffff_0000;
/// How long a [`FlowCache`] entry's flow must have been idle (coarse clock) before
/// another flow of its slot takes the entry over.
pub(super) const TAKEOVER_IDLE_NS: u64 = 10_000_000;
/// Bit 31 of an epoch tag: set in every valid [`CpuLine::local_src`].
pub(super) const TAG_VALID: u32 = 1 << 31;

/// One [`FLOW_CACHE`] entry, one cache line. Only programs running on the owning CPU
/// touch it; they can nest (the flush program runs in an IPI or in process context,
/// where a softirq can interrupt it, and a TC program can be interrupted by the flush's
/// IPI), so whoever changes it sets `busy` first and clears it last, and whoever finds
/// it set leaves the entry alone (a flush leaves its counts for the next one).
#[repr(C)]
pub(super) struct FlowCache {
    busy: u8,
    /// Bit `d` set: the sender of direction `d` was in `LOCAL_ENDPOINTS` at fill time,
    /// in the CPU's epoch `epoch` (see [`CpuLine`]).
    skip: u8,
    /// 1: learning was on at fill time; an ingress packet then needs its direction's
    /// learned bit in `flags` (else it takes the `FLOWS` path, which learns).
    learn: u8,
    _pad: u8,
    /// The low 32 bits (TCP flags of both directions, learned bits) of the `FLOWS`
    /// entry's flag word when the entry was filled: a packet with a flag bit not in here
    /// takes the `FLOWS` path (first SYN/FIN/RST of a direction, learning).
    flags: u32,
    /// The IPv4 addresses of the flow's lower (low word) and higher endpoint, as read
    /// from the packet (see [`pkt_u32`]).
    addrs: u64,
    /// Bytes 32..40 of the flow's key (ports, protocol, family); 0: the entry is empty.
    tail: u64,
    /// Pending counts per direction, not yet in `FLOWS`.
    packets: [u32; 2],
    bytes: [u64; 2],
    /// Coarse clock of the latest pending packet.
    last_seen_ns: u64,
    /// The CPU's epoch when `skip` was computed.
    epoch: u32,
    /// Low 32 bits of `jiffies` at the latest pending packet (see [`add_to_entry`]).
    last_jiffy: u32,
}

/// The first element of each CPU's share of [`FLOW_CACHE`]: the same-node skip of
/// packets to pods, answered in the one line the sender's ingress program has just
/// written on this CPU (veth delivery runs the sender's ingress and the receiver's egress
/// program back to back on one CPU).
///
/// An ingress program whose flow entry says the sender is local (`skip` of the current
/// epoch) writes the packet's source address in `local_src`, tagged with the epoch; an
/// egress program whose packet's source equals it skips the packet. The rule stays
/// "the source address is in `LOCAL_ENDPOINTS`" ([`skip_local_v4`], which decides
/// whenever this line does not): only a source some entry has found local is recorded.
/// `flush_flow_cache` increments `epoch` — userspace runs it on every CPU after each
/// change of `LOCAL_ENDPOINTS` — so nothing recorded or computed before the change
/// matches after it, including what an interrupted program writes when it resumes (its
/// tag carries the epoch it read before deciding).
#[repr(C)]
pub(super) struct CpuLine {
    /// 31 bits, incremented by every flush on this CPU.
    epoch: u32,
    _pad: u32,
    /// The IPv4 source (low word, as read from the packet) of the latest packet an
    /// ingress program counted whose sender is local; the high word is
    /// `epoch | TAG_VALID` then.
    local_src: u64,
    /// Packets an egress program skipped by `local_src` (never reset).
    skipped: u64,
    /// The part of `skipped` the flush has added to `COUNTERS`.
    reported: u64,
    _rest: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<FlowCache>() == 64);
const _: () = assert!(core::mem::size_of::<CpuLine>() == 64);

/// This CPU's [`CpuState`].
#[inline(always)]
pub(super) fn cpu_state() -> Option<&'static mut CpuState> {
    let p = FLOW_CACHE.get_ptr_mut(unsafe { bpf_get_smp_processor_id() })?;
    // SAFETY: this CPU's element; only programs on this CPU use it (see `FlowCache` and
    // `CpuLine` for their nesting).
    Some(unsafe { &mut *p })
}

/// Moves the counts pending in this CPU's entries into `FLOWS` (and its skipped packets
/// into `COUNTERS`) and starts a new epoch of its [`CpuLine`]; returns the number of busy
/// entries, left for the next flush. The body of `flush_flow_cache`.
#[inline(always)]
pub(super) fn flush_cpu() -> i32 {
    let Some(st) = cpu_state() else {
        return 0;
    };
    let line = &mut st.line;
    let epoch = get(&line.epoch).wrapping_add(1) & !TAG_VALID;
    set(&mut line.epoch, epoch);
    let skipped = get(&line.skipped);
    count_n(Counter::SkippedLocal, skipped - get(&line.reported));
    set(&mut line.reported, skipped);
    let mut busy = 0;
    for e in st.entries.iter_mut() {
        if get(&e.busy) != 0 {
            busy += 1;
            continue;
        }
        set(&mut e.busy, 1);
        flush_cache(e);
        set(&mut e.busy, 0);
    }
    busy
}

/// The per-packet fast path of every program: the egress same-node skip from this CPU's
/// line, then the hit of an established IPv4 TCP/UDP flow's front entry ([`hot_v4`]).
/// Returns false, having changed nothing, for every other packet.
#[inline(always)]
pub(super) fn observe_hot(ctx: &TcContext, from_pod: bool) -> bool {
    let Some(h) = v4_headers(ctx) else {
        return false;
    };
    let Some(st) = cpu_state() else {
        return false;
    };
    let line = &mut st.line;
    if !from_pod && get(&line.local_src) == local_src_tag(h.src, get(&line.epoch)) {
        // The sender's ingress program has just counted a packet from this source and
        // found it local (see `CpuLine`).
        bump(&mut line.skipped);
        return true;
    }
    let flow = FlowV4::new(&h);
    let e = &mut st.entries[flow.slot()];
    if get(&e.busy) != 0 {
        return false;
    }
    // Set before the entry is read: a flush that interrupts us from here on sees it. Every
    // access to the entry is volatile (`get` / `set`), so the compiler keeps them in
    // program order between setting and clearing `busy`.
    set(&mut e.busy, 1);
    let done = hot_v4(ctx, &h, from_pod, &flow, e, line);
    set(&mut e.busy, 0);
    done
}

/// Adds the counts pending in `e` to the flow's `FLOWS` entry (re-creating the entry if
/// the LRU evicted it or userspace expired it meanwhile) and empties `e`. The caller
/// holds `e.busy`.
#[inline(never)]
pub(super) fn flush_cache(e: &mut FlowCache) {
    let tail = get(&e.tail);
    if tail == 0 {
        return;
    }
    set(&mut e.tail, 0);
    let (p0, p1) = (u64::from(get(&e.packets[0])), u64::from(get(&e.packets[1])));
    let (b0, b1) = (get(&e.bytes[0]), get(&e.bytes[1]));
    if p0 | p1 == 0 {
        return;
    }
    let last = get(&e.last_seen_ns);
    let addrs = get(&e.addrs);
    let words = KeyWords([
        0,
        mapped_v4_word(addrs as u32),
        0,
        mapped_v4_word((addrs >> 32) as u32),
        tail,
    ]);
    let key = words.as_key();
    for _ in 0..2 {
        if let Some(v) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a valid map value pointer; the counters are updated atomically.
            unsafe {
                add64(&raw mut (*v).packets[0], p0);
                add64(&raw mut (*v).packets[1], p1);
                add64(&raw mut (*v).bytes[0], b0);
                add64(&raw mut (*v).bytes[1], b1);
                if (*v).last_seen_ns < last {
                    (*v).last_seen_ns = last;
                }
            }
            return;
        }
        // On the stack: the flush may interrupt a program that is using the scratch map.
        let now = unsafe { bpf_ktime_get_ns() };
        let words = ValueWords([p0, p1, b0, b1, now, now, 0, u64::from(INITIATOR_UNKNOWN)]);
        let value = words.as_value();
        match FLOWS.insert(key, value, BPF_NOEXIST) {
            Ok(()) => {
                count(Counter::FlowsCreated);
                return;
            }
            Err(e) if e == -EEXIST => continue,
            Err(_) => {
                count(Counter::MapInsertFailed);
                return;
            }
        }
    }
}

/// [`CpuLine::local_src`] for the IPv4 source `src` in epoch `epoch`.
#[inline(always)]
pub(super) fn local_src_tag(src: u32, epoch: u32) -> u64 {
    u64::from(src) | u64::from(epoch | TAG_VALID) << 32
}

/// An IPv4 TCP/UDP flow as the fast path identifies it.
pub(super) struct FlowV4 {
    /// As [`FlowCache::addrs`].
    pub(super) addrs: u64,
    /// As [`FlowCache::tail`].
    pub(super) tail: u64,
    /// Direction index of the packet.
    pub(super) dir: u8,
}

impl FlowV4 {
    /// The flow of a packet with headers `h`.
    #[inline(always)]
    pub(super) fn new(h: &V4Headers) -> FlowV4 {
        let (sport, dport) = (h.sport, h.dport);
        let (s, d) = (u32::from_be(h.src), u32::from_be(h.dst));
        // The v4-mapped prefixes are equal: the canonical order is that of the IPv4
        // addresses, then of the ports (as `canonical`).
        let src_lower = if s != d { s < d } else { sport <= dport };
        let (lo, lo_port, hi, hi_port, dir) = if src_lower {
            (h.src, sport, h.dst, dport, DIR_LO_TO_HI)
        } else {
            (h.dst, dport, h.src, sport, DIR_HI_TO_LO)
        };
        FlowV4 {
            addrs: u64::from(lo) | u64::from(hi) << 32,
            // lo_port, hi_port, proto, family, _pad: bytes 32..40 of the key (little
            // endian).
            tail: u64::from(lo_port)
                | u64::from(hi_port) << 16
                | u64::from(h.proto) << 32
                | u64::from(FAMILY_V4) << 40,
            dir,
        }
    }

    /// The flow's [`FlowCache`] slot.
    #[inline(always)]
    pub(super) fn slot(&self) -> usize {
        ((self.addrs ^ self.tail.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as usize
            & (FLOW_CACHE_SLOTS as usize - 1)
    }

    /// The flow's `FLOWS` key.
    #[inline(always)]
    pub(super) fn key_words(&self) -> KeyWords {
        KeyWords([
            0,
            mapped_v4_word(self.addrs as u32),
            0,
            mapped_v4_word((self.addrs >> 32) as u32),
            self.tail,
        ])
    }
}

/// The hit of an established IPv4 TCP/UDP flow (headers `h` read by [`v4_headers`]) in
/// its front entry `e` on this CPU (`busy` held): the flow holds the entry, the packet
/// has no TCP flag bit the flow's `FLOWS` entry lacks and no FIN/RST. Adds to the entry
/// (one cache line, plain stores: measured on the real path, docs/benchmarks.md, the
/// cost of these programs is the cache lines and atomic operations per packet), or
/// skips an egress packet whose sender the entry knows as local. Returns false, having
/// changed nothing, for every other packet: [`fast_v4`] handles those.
#[inline(always)]
pub(super) fn hot_v4(
    ctx: &TcContext,
    h: &V4Headers,
    from_pod: bool,
    flow: &FlowV4,
    e: &mut FlowCache,
    line: &mut CpuLine,
) -> bool {
    if get(&e.addrs) != flow.addrs || get(&e.tail) != flow.tail {
        return false;
    }
    let d = (flow.dir & 1) as usize;
    if !from_pod && get(&e.skip) & (1 << d) != 0 {
        if get(&e.epoch) != get(&line.epoch) {
            return false;
        }
        bump(&mut line.skipped);
        return true;
    }
    if !entry_takes(h, from_pod, flow.dir, e) {
        return false;
    }
    let (segs, bytes) = size(ctx, 20 + h.l4_hdr_len);
    add_to_entry(e, d, segs, bytes);
    if from_pod {
        record_local_src(line, e, d, h.src);
    }
    true
}

/// The per-packet path of an established IPv4 TCP/UDP flow that is not a hit of
/// [`hot_v4`] (`state`: this CPU's). Takes the `FLOWS` path ([`flows_v4`]) and may then
/// make the flow's front entry its own, flushing the entry's previous flow's counts into
/// `FLOWS`; userspace flushes every entry before each sweep (`flush_flow_cache`).
/// Returns false for the first packet of a flow, which the general path handles
/// (creation, events and learning).
#[inline(always)]
pub(super) fn fast_v4(
    ctx: &TcContext,
    h: &V4Headers,
    from_pod: bool,
    state: Option<&'static mut CpuState>,
) -> bool {
    let flow = FlowV4::new(h);
    let Some(st) = state else {
        return uncached_v4(ctx, h, from_pod, &flow);
    };
    let e = &mut st.entries[flow.slot()];
    if get(&e.busy) != 0 {
        return uncached_v4(ctx, h, from_pod, &flow);
    }
    set(&mut e.busy, 1);
    let handled = cached_v4(ctx, h, from_pod, &flow, e, &mut st.line);
    set(&mut e.busy, 0);
    handled
}

/// [`fast_v4`] without an entry (its slot is held by an interrupted program).
#[inline(always)]
pub(super) fn uncached_v4(ctx: &TcContext, h: &V4Headers, from_pod: bool, flow: &FlowV4) -> bool {
    if !from_pod && skip_local_v4(ctx, h.src) {
        count(Counter::SkippedLocal);
        return true;
    }
    let (segs, bytes) = size(ctx, 20 + h.l4_hdr_len);
    flows_v4(ctx, h, from_pod, flow, segs, bytes).is_some()
}

/// [`fast_v4`] with this CPU's entry `e` of the flow's slot, `busy` held.
#[inline(always)]
pub(super) fn cached_v4(
    ctx: &TcContext,
    h: &V4Headers,
    from_pod: bool,
    flow: &FlowV4,
    e: &mut FlowCache,
    line: &mut CpuLine,
) -> bool {
    let d = (flow.dir & 1) as usize;
    let mine = get(&e.addrs) == flow.addrs && get(&e.tail) == flow.tail;
    if !from_pod {
        // The same-node rule: the entry knows its senders (in this epoch), else the
        // endpoint map decides.
        let local = if mine && get(&e.epoch) == get(&line.epoch) {
            get(&e.skip) & (1 << d) != 0
        } else {
            skip_local_v4(ctx, h.src)
        };
        if local {
            bump(&mut line.skipped);
            return true;
        }
    }
    let (segs, bytes) = size(ctx, 20 + h.l4_hdr_len);
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if mine && entry_takes(h, from_pod, flow.dir, e) {
        // As `hot_v4` (an egress packet it left to the endpoint map's answer).
        add_to_entry(e, d, segs, bytes);
        if from_pod {
            record_local_src(line, e, d, h.src);
        }
        return true;
    }
    let Some(v) = flows_v4(ctx, h, from_pod, flow, segs, bytes) else {
        return false;
    };
    // The flow takes the entry if it is its own (new flag bits), empty, or idle for
    // `TAKEOVER_IDLE_NS`: flows that share a slot do not evict each other on every
    // packet (a takeover costs a second `FLOWS` lookup, for the previous flow's counts).
    if mine || get(&e.tail) == 0 || get(&e.last_seen_ns) + TAKEOVER_IDLE_NS < now {
        flush_cache(e);
        fill(e, flow, v, now, get(&line.epoch));
        if from_pod {
            record_local_src(line, e, d, h.src);
        }
    }
    true
}

/// Whether a packet of the flow that holds entry `e` (headers `h`, direction `dir`) may
/// only add to it: no FIN/RST, no TCP flag bit (nor, learning on, learned bit) the
/// entry's `FLOWS` flags lack, and room in its pending packet count.
#[inline(always)]
pub(super) fn entry_takes(h: &V4Headers, from_pod: bool, dir: u8, e: &FlowCache) -> bool {
    let f = h.tcp_flags;
    let need = tcp_flag_bits(dir, f)
        | if from_pod && get(&e.learn) != 0 {
            learned_bit(dir)
        } else {
            0
        };
    f & (tcp_flags::FIN | tcp_flags::RST) == 0
        && need & !u64::from(get(&e.flags)) == 0
        && get(&e.packets[(dir & 1) as usize]) < PACKETS_MAX
}

/// Adds a packet (`segs` segments, `bytes` IP bytes, direction index `d`) to the pending
/// counts of entry `e`, which must be below [`PACKETS_MAX`], and moves its last-seen time.
/// Plain adds: only this CPU writes the entry.
#[inline(always)]
pub(super) fn add_to_entry(e: &mut FlowCache, d: usize, segs: u64, bytes: u64) {
    let (p, b) = (get(&e.packets[d]) + segs as u32, get(&e.bytes[d]) + bytes);
    set(&mut e.packets[d], p);
    set(&mut e.bytes[d], b);
    // The coarse clock moves with the tick, and so do the jiffies, which the verifier
    // inlines as one load (the clock is a call): read it once per tick and entry.
    let j = unsafe { bpf_jiffies64() } as u32;
    if get(&e.last_jiffy) != j {
        set(&mut e.last_jiffy, j);
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if get(&e.last_seen_ns) < now {
            set(&mut e.last_seen_ns, now);
        }
    }
}

/// An ingress packet from `src`, sent in direction `d` of the flow of entry `e`: when
/// the entry says that sender is local (in the current epoch), tells the egress program
/// that runs next on this CPU (see [`CpuLine`]).
#[inline(always)]
pub(super) fn record_local_src(line: &mut CpuLine, e: &FlowCache, d: usize, src: u32) {
    if get(&e.skip) & (1 << d) == 0 {
        return;
    }
    let epoch = get(&line.epoch);
    if get(&e.epoch) != epoch {
        return;
    }
    let tag = local_src_tag(src, epoch);
    if get(&line.local_src) != tag {
        set(&mut line.local_src, tag);
    }
}

/// Makes the empty entry `e` the front entry of `flow`, whose `FLOWS` entry is `v`;
/// `epoch` is the CPU's epoch, read before this call.
#[inline(always)]
pub(super) fn fill(e: &mut FlowCache, flow: &FlowV4, v: *mut FlowValue, now: u64, epoch: u32) {
    // Whichever program fills the entry: the ingress packets of a flow an egress program
    // put here must still learn their sender.
    let learn = unsafe { core::ptr::read_volatile(&LEARN_LOCAL) } != 0;
    set(&mut e.addrs, flow.addrs);
    set(&mut e.tail, flow.tail);
    for i in 0..2 {
        set(&mut e.packets[i], 0);
        set(&mut e.bytes[i], 0);
    }
    set(&mut e.last_seen_ns, now);
    set(&mut e.last_jiffy, unsafe { bpf_jiffies64() } as u32);
    set(&mut e.learn, u8::from(learn));
    // SAFETY: a valid map value pointer, read once.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*v).flags) };
    set(&mut e.flags, flags as u32);
    // After the flags: a learned bit in them means its endpoint is already in
    // LOCAL_ENDPOINTS (`update` inserts it before setting the bit).
    let skip = u8::from(is_local_v4(flow.addrs as u32))
        | u8::from(is_local_v4((flow.addrs >> 32) as u32)) << 1;
    set(&mut e.skip, skip);
    set(&mut e.epoch, epoch);
}
