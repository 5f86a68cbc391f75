//! The per-CPU front entries of established TCP/UDP flows (`FLOW_CACHE`), IPv4 and IPv6: a
//! hit only adds to its entry; everything else takes the `FLOWS` path and may take the entry
//! over; the flush moves pending counts into `FLOWS`.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
        bpf_loop,
    },
    macros::map,
    maps::Array,
    programs::TcContext,
};
use netpol_observe_ebpf::{
    Counter, DIR_HI_TO_LO, DIR_LO_TO_HI, FAMILY_V4, FAMILY_V6, FLOW_CACHE_SLOTS,
    FLOW_CACHE_V6_SLOTS, FlowValue, INITIATOR_UNKNOWN, learned_bit, tcp_flag_bits, tcp_flags,
};

use super::{
    flows::{BPF_NOEXIST, EEXIST, FLOWS, KeyWords, ValueWords, count, count_n, flows_path},
    local::{LEARN_LOCAL, LOCAL_ENDPOINTS, is_local_v4, skip_local_v4},
    mem::{add64, bump, get, set},
    packet::{Addr, V4Headers, V6Headers, map_v4, mapped_v4_word, size, v4_headers, v6_headers},
};

/// `BPF_F_MMAPABLE`: see [`FLOW_CACHE`].
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Each CPU's [`CpuState`]: element `c` belongs to CPU `c` (userspace sizes the map to
/// the possible CPUs). A plain array indexed by CPU rather than a per-CPU array: the
/// verifier inlines its lookup as an address computation, where a per-CPU array's also
/// loads the element's per-CPU pointer from the map (one more cache line per packet).
/// With `BPF_F_MMAPABLE` the kernel starts the values on a page boundary, so each 64-byte
/// part of an element is exactly one cache line (were it not, only speed would suffer).
#[map(name = "FLOW_CACHE")]
static FLOW_CACHE: Array<CpuState> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// One CPU's state: its [`CpuLine`] and the front entries of `FLOWS` of the established
/// TCP/UDP flows it counts often, per family in sets of [`WAYS`] entries chosen by a
/// multiplicative hash of the flow, with the counts not yet added to their `FLOWS`
/// entries. See [`hot`].
#[repr(C)]
pub(super) struct CpuState {
    line: CpuLine,
    v4: [Entry<V4Addrs>; FLOW_CACHE_SLOTS as usize],
    v6: [Entry<V6Addrs>; FLOW_CACHE_V6_SLOTS as usize],
}

/// Pending packets per direction an entry takes before the `FLOWS` path flushes it (so
/// the `u32` cannot overflow: one packet adds at most 65 535 GSO segments).
const PACKETS_MAX: u32 = 0xffff_0000;
/// How long an [`Entry`]'s flow must have been idle (coarse clock) before another flow of
/// its set takes the entry over: longer than the gaps between the packets of a flow that
/// counts often (a flow of a full set counts in `FLOWS` meanwhile; with 10 ms, flows of one
/// set recurring every few tens of ms took the entries from each other on every packet,
/// flushing and filling them). Every sweep's flush empties the entries anyway.
const TAKEOVER_IDLE_NS: u64 = 1_000_000_000;
/// Entries per set: a flow's front entry is one of the [`WAYS`] adjacent entries of its
/// set (two cache lines for IPv4), so that two flows of one set both have one.
const WAYS: usize = 2;
/// Bit 31 of an epoch tag: set in every valid [`CpuLine::local_src`].
const TAG_VALID: u32 = 1 << 31;

/// One [`FLOW_CACHE`] entry: one cache line for IPv4, two for IPv6 (`align(64)` rounds the
/// size up). Only programs running on the owning CPU touch it; they can nest (the flush
/// program runs in an IPI or in process context, where a softirq can interrupt it, and a TC
/// program can be interrupted by the flush's IPI), so whoever changes it sets `busy` first
/// and clears it last, and whoever finds it set leaves the entry alone (a flush leaves its
/// counts for the next one).
#[repr(C, align(64))]
pub(super) struct Entry<A> {
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
    /// The flow's addresses.
    addrs: A,
}

/// The first element of each CPU's share of [`FLOW_CACHE`]: the same-node skip of IPv4
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
    /// Packets an egress program skipped by `local_src` or an entry's `skip` (never reset).
    skipped: u64,
    /// The part of `skipped` the flush has added to `COUNTERS`.
    reported: u64,
    /// As `local_src` for IPv6: `epoch | TAG_VALID` when `local_src6` is valid (a writer
    /// clears it first and sets it last).
    local_src6_tag: u64,
    /// The IPv6 source (two words, as read from the packet) of the latest packet an
    /// ingress program counted whose sender is local.
    local_src6: [u64; 2],
    _rest: u64,
}

const _: () = assert!(core::mem::size_of::<Entry<V4Addrs>>() == 64);
const _: () = assert!(core::mem::size_of::<Entry<V6Addrs>>() == 128);
const _: () = assert!(core::mem::size_of::<CpuLine>() == 64);

/// The addresses of an IPv4 flow: the lower endpoint's (low word) and the higher's, each
/// as read from the packet (see [`super::packet::pkt_u32`]).
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct V4Addrs(u64);

/// The addresses of an IPv6 flow: the lower endpoint's two words, then the higher's, as
/// read from the packet (see [`super::packet::pkt_u64`]).
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct V6Addrs([u64; 4]);

/// What the front entries need of a family's addresses.
pub(super) trait Addrs: Copy + Sized {
    /// log2 of the family's entries per CPU.
    const SLOT_BITS: u32;
    /// This CPU's line and its entry `slot` (taken modulo `1 << SLOT_BITS`).
    fn entry(st: &mut CpuState, slot: usize) -> (&mut CpuLine, &mut Entry<Self>);
    /// Whether `stored`, an entry's addresses, are these (volatile loads, word by word: an
    /// array comparison could become a `bcmp` call).
    fn stored_in(&self, stored: &Self) -> bool;
    /// Reads an entry's addresses (volatile, word by word).
    fn load(stored: &Self) -> Self;
    /// Writes these addresses into an entry (volatile, word by word: an aggregate store
    /// could become a `memcpy` call).
    fn store(&self, into: &mut Self);
    /// The addresses folded into one word for the set hash.
    fn fold(&self) -> u64;
    /// The `FLOWS` key of the flow with these addresses and the key's last word `tail`.
    fn key_words(&self, tail: u64) -> KeyWords;
    /// The address (16 bytes, IPv4 v4-mapped) of the sender of direction `dir`.
    fn sender(&self, dir: u8) -> Addr;
    /// Whether the sender of direction `dir` of a packet to a pod is a local endpoint.
    fn sender_local(&self, ctx: &TcContext, dir: u8) -> bool;
    /// Bit 0: the lower endpoint is a local endpoint; bit 1: the higher one (`LOCAL_ENDPOINTS`
    /// itself, not a cache of it: the answer is kept in an entry for a whole epoch).
    fn local_bits(&self, ctx: &TcContext) -> u8;
    /// After an ingress packet counted in entry `e` (direction index `d`): tells the egress
    /// program that runs next on this CPU when its sender is local (see [`CpuLine`]).
    fn record_sender(&self, line: &mut CpuLine, e: &Entry<Self>, d: usize);
}

impl Addrs for V4Addrs {
    const SLOT_BITS: u32 = FLOW_CACHE_SLOTS.trailing_zeros();

    #[inline(always)]
    fn entry(st: &mut CpuState, slot: usize) -> (&mut CpuLine, &mut Entry<Self>) {
        (
            &mut st.line,
            &mut st.v4[slot & (FLOW_CACHE_SLOTS as usize - 1)],
        )
    }

    #[inline(always)]
    fn stored_in(&self, stored: &Self) -> bool {
        get(&stored.0) == self.0
    }

    #[inline(always)]
    fn load(stored: &Self) -> Self {
        V4Addrs(get(&stored.0))
    }

    #[inline(always)]
    fn store(&self, into: &mut Self) {
        set(&mut into.0, self.0);
    }

    #[inline(always)]
    fn fold(&self) -> u64 {
        self.0
    }

    #[inline(always)]
    fn key_words(&self, tail: u64) -> KeyWords {
        KeyWords([
            0,
            mapped_v4_word(self.0 as u32),
            0,
            mapped_v4_word((self.0 >> 32) as u32),
            tail,
        ])
    }

    #[inline(always)]
    fn sender(&self, dir: u8) -> Addr {
        // Written whatever the caller needs: two stores. A zeroed array overwritten only
        // when needed compiles to a call of the byte-loop `memset` on every packet (the
        // datapath's `per_packet_path_calls_no_memset` test checks the object).
        let mut a = Addr([0; 16]);
        map_v4(self.sender_word(dir), &mut a.0);
        a
    }

    #[inline(always)]
    fn sender_local(&self, ctx: &TcContext, dir: u8) -> bool {
        skip_local_v4(ctx, self.sender_word(dir))
    }

    #[inline(always)]
    fn local_bits(&self, _ctx: &TcContext) -> u8 {
        u8::from(is_local_v4(self.0 as u32)) | u8::from(is_local_v4((self.0 >> 32) as u32)) << 1
    }

    #[inline(always)]
    fn record_sender(&self, line: &mut CpuLine, e: &Entry<Self>, d: usize) {
        if get(&e.skip) & (1 << d) == 0 {
            return;
        }
        let epoch = get(&line.epoch);
        if get(&e.epoch) != epoch {
            return;
        }
        let tag = local_src_tag(self.sender_word(d as u8), epoch);
        if get(&line.local_src) != tag {
            set(&mut line.local_src, tag);
        }
    }
}

impl V4Addrs {
    /// The IPv4 address of the sender of direction `dir` (as read from the packet).
    #[inline(always)]
    fn sender_word(&self, dir: u8) -> u32 {
        (self.0 >> (32 * u64::from(dir & 1))) as u32
    }
}

impl Addrs for V6Addrs {
    const SLOT_BITS: u32 = FLOW_CACHE_V6_SLOTS.trailing_zeros();

    #[inline(always)]
    fn entry(st: &mut CpuState, slot: usize) -> (&mut CpuLine, &mut Entry<Self>) {
        (
            &mut st.line,
            &mut st.v6[slot & (FLOW_CACHE_V6_SLOTS as usize - 1)],
        )
    }

    #[inline(always)]
    fn load(stored: &Self) -> Self {
        V6Addrs([
            get(&stored.0[0]),
            get(&stored.0[1]),
            get(&stored.0[2]),
            get(&stored.0[3]),
        ])
    }

    #[inline(always)]
    fn store(&self, into: &mut Self) {
        for i in 0..4 {
            set(&mut into.0[i], self.0[i]);
        }
    }

    #[inline(always)]
    fn stored_in(&self, stored: &Self) -> bool {
        get(&stored.0[0]) == self.0[0]
            && get(&stored.0[1]) == self.0[1]
            && get(&stored.0[2]) == self.0[2]
            && get(&stored.0[3]) == self.0[3]
    }

    #[inline(always)]
    fn fold(&self) -> u64 {
        self.0[0] ^ self.0[1].rotate_left(16) ^ self.0[2].rotate_left(32) ^ self.0[3]
    }

    #[inline(always)]
    fn key_words(&self, tail: u64) -> KeyWords {
        KeyWords([self.0[0], self.0[1], self.0[2], self.0[3], tail])
    }

    #[inline(always)]
    fn sender(&self, dir: u8) -> Addr {
        let i = usize::from(dir & 1) * 2;
        let mut a = Addr([0; 16]);
        // SAFETY: two aligned 8-byte stores within the 16-byte, 8-aligned array.
        unsafe {
            let w = a.0.as_mut_ptr() as *mut u64;
            core::ptr::write_volatile(w, self.0[i]);
            core::ptr::write_volatile(w.add(1), self.0[i + 1]);
        }
        a
    }

    #[inline(always)]
    fn sender_local(&self, _ctx: &TcContext, dir: u8) -> bool {
        LOCAL_ENDPOINTS.get_ptr(&self.sender(dir).0).is_some()
    }

    #[inline(always)]
    fn local_bits(&self, ctx: &TcContext) -> u8 {
        u8::from(self.sender_local(ctx, DIR_LO_TO_HI))
            | u8::from(self.sender_local(ctx, DIR_HI_TO_LO)) << 1
    }

    #[inline(always)]
    fn record_sender(&self, line: &mut CpuLine, e: &Entry<Self>, d: usize) {
        if get(&e.skip) & (1 << d) == 0 {
            return;
        }
        let epoch = get(&line.epoch);
        if get(&e.epoch) != epoch {
            return;
        }
        let tag = u64::from(epoch | TAG_VALID);
        let (w0, w1) = (self.0[d * 2], self.0[d * 2 + 1]);
        if get(&line.local_src6_tag) != tag
            || get(&line.local_src6[0]) != w0
            || get(&line.local_src6[1]) != w1
        {
            // Invalid while the words change: a reader never pairs the tag with
            // half-written words.
            set(&mut line.local_src6_tag, 0);
            set(&mut line.local_src6[0], w0);
            set(&mut line.local_src6[1], w1);
            set(&mut line.local_src6_tag, tag);
        }
    }
}

/// An established TCP/UDP flow as the fast paths identify it.
pub(super) struct Flow<A> {
    addrs: A,
    /// As [`Entry::tail`].
    tail: u64,
    /// Direction of the packet.
    dir: u8,
}

/// The key's last word: lo_port, hi_port, proto, family, padding (bytes 32..40 of the key,
/// little endian).
#[inline(always)]
fn key_tail(lo_port: u16, hi_port: u16, proto: u8, family: u8) -> u64 {
    u64::from(lo_port) | u64::from(hi_port) << 16 | u64::from(proto) << 32 | u64::from(family) << 40
}

/// The fast paths' view of a packet's headers (IPv4 or IPv6 TCP/UDP).
pub(super) trait FastHeaders {
    /// The family's addresses.
    type Addrs: Addrs;
    /// The packet's flow.
    fn flow(&self) -> Flow<Self::Addrs>;
    /// What the front entries need of the packet besides its flow.
    fn pkt(&self) -> Pkt;
    /// Whether this CPU's line records the packet's source as a local sender (see
    /// [`CpuLine`]): an egress program skips the packet then.
    fn sent_by_recorded(&self, line: &CpuLine) -> bool;
}

impl FastHeaders for V4Headers {
    type Addrs = V4Addrs;

    #[inline(always)]
    fn flow(&self) -> Flow<V4Addrs> {
        let (sport, dport) = (self.sport, self.dport);
        let (s, d) = (u32::from_be(self.src), u32::from_be(self.dst));
        // The v4-mapped prefixes are equal: the canonical order is that of the IPv4
        // addresses, then of the ports (as `canonical`).
        let src_lower = if s != d { s < d } else { sport <= dport };
        let (lo, lo_port, hi, hi_port, dir) = if src_lower {
            (self.src, sport, self.dst, dport, DIR_LO_TO_HI)
        } else {
            (self.dst, dport, self.src, sport, DIR_HI_TO_LO)
        };
        Flow {
            addrs: V4Addrs(u64::from(lo) | u64::from(hi) << 32),
            tail: key_tail(lo_port, hi_port, self.proto, FAMILY_V4),
            dir,
        }
    }

    #[inline(always)]
    fn pkt(&self) -> Pkt {
        Pkt {
            tcp_flags: self.tcp_flags,
            hdr_len: 20 + self.l4_hdr_len,
        }
    }

    #[inline(always)]
    fn sent_by_recorded(&self, line: &CpuLine) -> bool {
        get(&line.local_src) == local_src_tag(self.src, get(&line.epoch))
    }
}

impl FastHeaders for V6Headers {
    type Addrs = V6Addrs;

    #[inline(always)]
    fn flow(&self) -> Flow<V6Addrs> {
        // The order of `canonical`: the addresses bytewise (big-endian words), then the
        // ports.
        let (s0, d0) = (u64::from_be(self.src[0]), u64::from_be(self.dst[0]));
        let (s1, d1) = (u64::from_be(self.src[1]), u64::from_be(self.dst[1]));
        let src_lower = if s0 != d0 {
            s0 < d0
        } else if s1 != d1 {
            s1 < d1
        } else {
            self.sport <= self.dport
        };
        let (lo, lo_port, hi, hi_port, dir) = if src_lower {
            (self.src, self.sport, self.dst, self.dport, DIR_LO_TO_HI)
        } else {
            (self.dst, self.dport, self.src, self.sport, DIR_HI_TO_LO)
        };
        Flow {
            addrs: V6Addrs([lo[0], lo[1], hi[0], hi[1]]),
            tail: key_tail(lo_port, hi_port, self.proto, FAMILY_V6),
            dir,
        }
    }

    #[inline(always)]
    fn pkt(&self) -> Pkt {
        Pkt {
            tcp_flags: self.tcp_flags,
            hdr_len: 40 + self.l4_hdr_len,
        }
    }

    #[inline(always)]
    fn sent_by_recorded(&self, line: &CpuLine) -> bool {
        get(&line.local_src6_tag) == u64::from(get(&line.epoch) | TAG_VALID)
            && get(&line.local_src6[0]) == self.src[0]
            && get(&line.local_src6[1]) == self.src[1]
    }
}

impl<A: Addrs> Flow<A> {
    /// The first of the flow's set's entries among its family's (the others follow it).
    #[inline(always)]
    fn set_start(&self) -> usize {
        let set = (self.addrs.fold() ^ self.tail.rotate_left(29))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (64 - (A::SLOT_BITS - WAYS.trailing_zeros()));
        set as usize * WAYS
    }

    /// Whether entry `e` holds this flow.
    #[inline(always)]
    fn holds(&self, e: &Entry<A>) -> bool {
        get(&e.tail) == self.tail && self.addrs.stored_in(&e.addrs)
    }
}

/// What the front entries need of a packet besides its flow.
pub(super) struct Pkt {
    /// TCP flags (0 for UDP).
    tcp_flags: u32,
    /// IP header and transport header length of one segment.
    hdr_len: u64,
}

/// This CPU's [`CpuState`].
#[inline(always)]
pub(super) fn cpu_state() -> Option<&'static mut CpuState> {
    let p = FLOW_CACHE.get_ptr_mut(unsafe { bpf_get_smp_processor_id() })?;
    // SAFETY: this CPU's element; only programs on this CPU use it (see `Entry` and
    // `CpuLine` for their nesting).
    Some(unsafe { &mut *p })
}

/// Moves the counts pending in this CPU's entries into `FLOWS` (and its skipped packets
/// into `COUNTERS`) and starts a new epoch of its [`CpuLine`]; returns the number of busy
/// entries, left for the next flush. The body of `flush_flow_cache`.
///
/// The entries are walked with `bpf_loop` (Linux >= 5.17): the verifier checks the
/// callback once, where a loop in the program is checked per iteration and passes its
/// 1M-instruction limit beyond a few thousand entries.
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
    let mut walk = FlushWalk { busy: 0 };
    let ctx = (&raw mut walk).cast::<c_void>();
    // SAFETY: the callbacks take `ctx` as a `FlushWalk` on this stack; a failing call
    // (never, for these counts) flushes nothing, and the next flush retries.
    unsafe {
        bpf_loop(
            FLOW_CACHE_SLOTS,
            flush_slot::<V4Addrs> as *mut c_void,
            ctx,
            0,
        );
        bpf_loop(
            FLOW_CACHE_V6_SLOTS,
            flush_slot::<V6Addrs> as *mut c_void,
            ctx,
            0,
        );
    }
    get(&walk.busy) as i32
}

/// What [`flush_cpu`]'s callbacks share: the busy entries found so far.
#[repr(C)]
struct FlushWalk {
    busy: u64,
}

/// The `bpf_loop` callback of [`flush_cpu`]: flushes entry `index` of family `A` on this CPU
/// unless it is busy (then counts it in the [`FlushWalk`] at `ctx`). Returns 0: go on.
#[inline(never)]
extern "C" fn flush_slot<A: Addrs>(index: u64, ctx: *mut c_void) -> i64 {
    let Some(st) = cpu_state() else {
        return 1;
    };
    let (_, e) = A::entry(st, index as usize);
    if get(&e.busy) != 0 {
        // SAFETY: `ctx` is the caller's `FlushWalk` (see `flush_cpu`).
        let walk = unsafe { &mut *ctx.cast::<FlushWalk>() };
        bump(&mut walk.busy);
        return 0;
    }
    set(&mut e.busy, 1);
    flush_cache(e);
    set(&mut e.busy, 0);
    0
}

/// The per-packet fast path of every program: the egress same-node skip from this CPU's
/// line, then the hit of an established TCP/UDP flow's front entry ([`hot`]), IPv4 or
/// IPv6 (without extension headers). Returns false, having changed nothing, for every
/// other packet.
#[inline(always)]
pub(super) fn observe_hot(ctx: &TcContext, from_pod: bool) -> bool {
    if let Some(h) = v4_headers(ctx) {
        if !from_pod && h.sport == super::dns::DNS_PORT {
            // A DNS answer to a pod: copied (only port-53 packets pay more than this
            // comparison), then counted as any packet.
            super::dns::capture(ctx, false, h.proto, h.l4_hdr_len);
        }
        return hot_headers(ctx, &h, from_pod);
    }
    if from_pod {
        observe_hot_v6::<true>(ctx)
    } else {
        observe_hot_v6::<false>(ctx)
    }
}

/// [`observe_hot`] for IPv6: a subprogram of its own (one per direction), so that the
/// programs' own frame stays as small as the IPv4 path needs (the verifier bounds the
/// combined stack of a call chain to 512 bytes, and the general path's chain starts there).
#[inline(never)]
fn observe_hot_v6<const FROM_POD: bool>(ctx: &TcContext) -> bool {
    let Some(h) = v6_headers(ctx) else {
        return false;
    };
    if !FROM_POD && h.sport == super::dns::DNS_PORT {
        super::dns::capture(ctx, true, h.proto, h.l4_hdr_len);
    }
    hot_headers(ctx, &h, FROM_POD)
}

/// [`observe_hot`] for a packet with fast-path headers `h`.
#[inline(always)]
fn hot_headers<H: FastHeaders>(ctx: &TcContext, h: &H, from_pod: bool) -> bool {
    let Some(st) = cpu_state() else {
        return false;
    };
    let line = &mut st.line;
    if !from_pod && h.sent_by_recorded(line) {
        // The sender's ingress program has just counted a packet from this source and
        // found it local (see `CpuLine`).
        bump(&mut line.skipped);
        return true;
    }
    let flow = h.flow();
    let start = flow.set_start();
    for way in 0..WAYS {
        let (line, e) = H::Addrs::entry(st, start + way);
        // Read without `busy` to find the flow's entry (nothing is written to the others);
        // `hot` checks again with `busy` held.
        if !flow.holds(e) {
            continue;
        }
        if get(&e.busy) != 0 {
            return false;
        }
        // Set before the entry is read again: a flush that interrupts us from here on sees
        // it. Every access to the entry is volatile (`get` / `set`), so the compiler keeps
        // them in program order between setting and clearing `busy`.
        set(&mut e.busy, 1);
        let done = hot(ctx, &h.pkt(), from_pod, &flow, e, line);
        set(&mut e.busy, 0);
        return done;
    }
    false
}

/// Adds the counts pending in `e` to the flow's `FLOWS` entry (re-creating the entry if
/// the LRU evicted it or userspace expired it meanwhile) and empties `e`. The caller
/// holds `e.busy`.
#[inline(never)]
fn flush_cache<A: Addrs>(e: &mut Entry<A>) {
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
    let addrs = A::load(&e.addrs);
    let words = addrs.key_words(tail);
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
fn local_src_tag(src: u32, epoch: u32) -> u64 {
    u64::from(src) | u64::from(epoch | TAG_VALID) << 32
}

/// The hit of an established flow's packet in its front entry `e` on this CPU (`busy`
/// held; checked again here): the flow holds the entry, the packet has no TCP flag bit the flow's `FLOWS`
/// entry lacks and no FIN/RST. Adds to the entry (one cache line for IPv4, plain stores:
/// measured on the real path, docs/benchmarks.md, the cost of these programs is the cache
/// lines and atomic operations per packet), or skips an egress packet whose sender the
/// entry knows as local. Returns false, having changed nothing, for every other packet:
/// [`fast`] handles those.
#[inline(always)]
fn hot<A: Addrs>(
    ctx: &TcContext,
    pkt: &Pkt,
    from_pod: bool,
    flow: &Flow<A>,
    e: &mut Entry<A>,
    line: &mut CpuLine,
) -> bool {
    if !flow.holds(e) {
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
    if !entry_takes(pkt.tcp_flags, from_pod, flow.dir, e) {
        return false;
    }
    let (segs, bytes) = size(ctx, pkt.hdr_len);
    add_to_entry(e, d, segs, bytes);
    if from_pod {
        flow.addrs.record_sender(line, e, d);
    }
    true
}

/// The per-packet path of an established TCP/UDP flow's packet (headers `h`; `state`:
/// this CPU's) that is not a hit of [`observe_hot`]. A hit of its front entry, else the `FLOWS`
/// path ([`flows_path`]), after which the flow may make its front entry its own, flushing
/// the entry's previous flow's counts into `FLOWS`; userspace flushes every entry before
/// each sweep (`flush_flow_cache`). Returns false for the first packet of a flow, which the
/// general path handles (creation, events and learning).
#[inline(always)]
pub(super) fn fast<H: FastHeaders>(
    ctx: &TcContext,
    h: &H,
    from_pod: bool,
    state: Option<&'static mut CpuState>,
) -> bool {
    let (pkt, flow) = (&h.pkt(), &h.flow());
    let Some(st) = state else {
        return uncached(ctx, pkt, from_pod, flow);
    };
    let way = pick_way(st, flow);
    let (line, e) = H::Addrs::entry(st, way);
    if get(&e.busy) != 0 {
        return uncached(ctx, pkt, from_pod, flow);
    }
    set(&mut e.busy, 1);
    let handled = cached(ctx, pkt, from_pod, flow, e, line);
    set(&mut e.busy, 0);
    handled
}

/// The entry of `flow`'s set that [`fast`] uses: the one holding the flow, else an empty
/// one, else the one idle longest (which [`cached`] takes over only when idle for
/// [`TAKEOVER_IDLE_NS`]). Read without `busy`: [`cached`] checks again with it held.
#[inline(always)]
fn pick_way<A: Addrs>(st: &mut CpuState, flow: &Flow<A>) -> usize {
    let start = flow.set_start();
    let mut pick = start;
    let mut oldest = u64::MAX;
    for way in 0..WAYS {
        let (_, e) = A::entry(st, start + way);
        if flow.holds(e) {
            return start + way;
        }
        let seen = if get(&e.tail) == 0 {
            0
        } else {
            get(&e.last_seen_ns)
        };
        if seen < oldest {
            oldest = seen;
            pick = start + way;
        }
    }
    pick
}

/// [`fast`] without an entry (it is held by an interrupted program).
#[inline(always)]
fn uncached<A: Addrs>(ctx: &TcContext, pkt: &Pkt, from_pod: bool, flow: &Flow<A>) -> bool {
    if !from_pod && flow.addrs.sender_local(ctx, flow.dir) {
        count(Counter::SkippedLocal);
        return true;
    }
    let (segs, bytes) = size(ctx, pkt.hdr_len);
    to_flows(ctx, pkt, from_pod, flow, segs, bytes).is_some()
}

/// The `FLOWS` path of the packet: see [`flows_path`].
#[inline(always)]
fn to_flows<A: Addrs>(
    ctx: &TcContext,
    pkt: &Pkt,
    from_pod: bool,
    flow: &Flow<A>,
    segs: u64,
    bytes: u64,
) -> Option<*mut FlowValue> {
    let words = flow.addrs.key_words(flow.tail);
    let sender = flow.addrs.sender(flow.dir);
    flows_path(
        ctx,
        words.as_key(),
        &sender,
        flow.dir,
        pkt.tcp_flags,
        from_pod,
        segs,
        bytes,
    )
}

/// [`fast`] with this CPU's entry `e` of the flow's set, `busy` held.
#[inline(always)]
fn cached<A: Addrs>(
    ctx: &TcContext,
    pkt: &Pkt,
    from_pod: bool,
    flow: &Flow<A>,
    e: &mut Entry<A>,
    line: &mut CpuLine,
) -> bool {
    let d = (flow.dir & 1) as usize;
    let mine = flow.holds(e);
    if !from_pod {
        // The same-node rule: the entry knows its senders (in this epoch), else the
        // endpoint map decides.
        let local = if mine && get(&e.epoch) == get(&line.epoch) {
            get(&e.skip) & (1 << d) != 0
        } else {
            flow.addrs.sender_local(ctx, flow.dir)
        };
        if local {
            bump(&mut line.skipped);
            return true;
        }
    }
    let (segs, bytes) = size(ctx, pkt.hdr_len);
    if mine && entry_takes(pkt.tcp_flags, from_pod, flow.dir, e) {
        // As `hot` (an egress packet it left to the endpoint map's answer).
        add_to_entry(e, d, segs, bytes);
        if from_pod {
            flow.addrs.record_sender(line, e, d);
        }
        return true;
    }
    let Some(v) = to_flows(ctx, pkt, from_pod, flow, segs, bytes) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The flow takes the entry if it is its own (new flag bits), empty, or idle for
    // `TAKEOVER_IDLE_NS`: flows of a full set do not evict each other on every packet (a
    // takeover costs a second `FLOWS` lookup, for the previous flow's counts).
    if mine || get(&e.tail) == 0 || get(&e.last_seen_ns) + TAKEOVER_IDLE_NS < now {
        flush_cache(e);
        fill(ctx, e, flow, v, now, get(&line.epoch));
        if from_pod {
            flow.addrs.record_sender(line, e, d);
        }
    }
    true
}

/// Whether a packet (TCP flags `f`, direction `dir`) of the flow that holds entry `e` may
/// only add to it: no FIN/RST, no TCP flag bit (nor, learning on, learned bit) the entry's
/// `FLOWS` flags lack, and room in its pending packet count.
#[inline(always)]
fn entry_takes<A>(f: u32, from_pod: bool, dir: u8, e: &Entry<A>) -> bool {
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
fn add_to_entry<A>(e: &mut Entry<A>, d: usize, segs: u64, bytes: u64) {
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

/// Makes the empty entry `e` the front entry of `flow`, whose `FLOWS` entry is `v`;
/// `epoch` is the CPU's epoch, read before this call.
#[inline(always)]
fn fill<A: Addrs>(
    ctx: &TcContext,
    e: &mut Entry<A>,
    flow: &Flow<A>,
    v: *mut FlowValue,
    now: u64,
    epoch: u32,
) {
    // Whichever program fills the entry: the ingress packets of a flow an egress program
    // put here must still learn their sender.
    let learn = unsafe { core::ptr::read_volatile(&LEARN_LOCAL) } != 0;
    flow.addrs.store(&mut e.addrs);
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
    set(&mut e.skip, flow.addrs.local_bits(ctx));
    set(&mut e.epoch, epoch);
}
