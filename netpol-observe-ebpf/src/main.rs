//! The eBPF programs of netpol-observe. Built for `bpfel-unknown-none` by `aya-build`
//! (see `netpol-observe/build.rs`); on the host this binary is an empty stub.
//!
//! `tc_flow_ingress` / `tc_flow_egress` run on the host side of pod interfaces (ingress =
//! packets from the pod, egress = packets to the pod). They parse Ethernet, IPv4/IPv6 (IPv6
//! extension headers within a bound) and TCP/UDP/SCTP/ICMP/ICMPv6, update the flow map and
//! announce new flows and first TCP FIN/RST on the ring buffer. They always return
//! [`NEXT`], never drop or change a packet. `tc_noop` only returns [`NEXT`]: the
//! benchmark's baseline for the cost of the hooks themselves.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod drops;

#[cfg(target_arch = "bpf")]
mod programs {
    use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};

    use aya_ebpf::{
        bindings::tcx_action_base::TCX_NEXT,
        helpers::{
            bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
        },
        macros::{classifier, map, raw_tracepoint},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::{RawTracePointContext, TcContext},
    };
    use netpol_observe_ebpf::{
        COUNTERS_LEN, Counter, DEFAULT_FLOW_CAPACITY, DEFAULT_RINGBUF_BYTES, DIR_HI_TO_LO,
        DIR_LO_TO_HI, EVENT_FIN, EVENT_ICMP_UNREACH, EVENT_NEW, EVENT_RST, FAMILY_V4, FAMILY_V6,
        FLOW_CACHE_SLOTS, FlowEvent, FlowKey, FlowValue, INITIATOR_UNKNOWN,
        LOCAL_ENDPOINTS_CAPACITY, LOCAL_SRC_GEN_MASK, LocalEndpoint, event_bits, learned_bit,
        tcp_flag_bits, tcp_flags,
    };

    #[map(name = "FLOWS")]
    static FLOWS: LruHashMap<FlowKey, FlowValue> =
        LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

    #[map(name = "FLOW_EVENTS")]
    static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

    #[map(name = "COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

    #[map(name = "LOCAL_ENDPOINTS")]
    static LOCAL_ENDPOINTS: HashMap<[u8; 16], LocalEndpoint> =
        HashMap::with_max_entries(LOCAL_ENDPOINTS_CAPACITY, 0);

    /// Generation of `LOCAL_ENDPOINTS` (slot 0), incremented by userspace after it removes
    /// an address: see [`skip_local_v4`].
    #[map(name = "LOCAL_ENDPOINTS_GEN")]
    static LOCAL_ENDPOINTS_GEN: Array<u32> = Array::with_max_entries(1, 0);

    /// Number of slots of `LOCAL_SRC_CACHE` (a power of two).
    const LOCAL_SRC_CACHE_SLOTS: u32 = 4096;

    /// The egress programs' same-node skip cache: slot `ingress_ifindex % SLOTS` holds, in
    /// one `u64`, an IPv4 source address (low word, as read from the packet) found in
    /// `LOCAL_ENDPOINTS` and, in the high word, the generation of that map then with bit 31
    /// set. See [`skip_local_v4`].
    #[map(name = "LOCAL_SRC_CACHE")]
    static LOCAL_SRC_CACHE: Array<u64> = Array::with_max_entries(LOCAL_SRC_CACHE_SLOTS, 0);

    /// Per-CPU scratch space: the parsed packet and keys do not fit the 512-byte BPF stack.
    #[map(name = "SCRATCH")]
    static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

    #[repr(C)]
    struct Scratch {
        pkt: Packet,
        key: FlowKey,
        value: FlowValue,
    }

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

    /// One CPU's state: its [`CpuLine`] and the front entries of `FLOWS` of the
    /// established IPv4 TCP/UDP flows it counts often, direct-mapped by a multiplicative
    /// hash of the flow, with the counts not yet added to their `FLOWS` entries. See
    /// [`hot_v4`].
    #[repr(C)]
    struct CpuState {
        line: CpuLine,
        entries: [FlowCache; FLOW_CACHE_SLOTS as usize],
    }

    /// Pending packets per direction an entry takes before the `FLOWS` path flushes it (so
    /// the `u32` cannot overflow: one packet adds at most 65 535 GSO segments).
    const PACKETS_MAX: u32 = 0xffff_0000;
    /// How long a [`FlowCache`] entry's flow must have been idle (coarse clock) before
    /// another flow of its slot takes the entry over.
    const TAKEOVER_IDLE_NS: u64 = 10_000_000;
    /// Bit 31 of an epoch tag: set in every valid [`CpuLine::local_src`].
    const TAG_VALID: u32 = 1 << 31;

    /// One [`FLOW_CACHE`] entry, one cache line. Only programs running on the owning CPU
    /// touch it; they can nest (the flush program runs in an IPI or in process context,
    /// where a softirq can interrupt it, and a TC program can be interrupted by the flush's
    /// IPI), so whoever changes it sets `busy` first and clears it last, and whoever finds
    /// it set leaves the entry alone (a flush leaves its counts for the next one).
    #[repr(C)]
    struct FlowCache {
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
    struct CpuLine {
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
    fn cpu_state() -> Option<&'static mut CpuState> {
        let p = FLOW_CACHE.get_ptr_mut(unsafe { bpf_get_smp_processor_id() })?;
        // SAFETY: this CPU's element; only programs on this CPU use it (see `FlowCache` and
        // `CpuLine` for their nesting).
        Some(unsafe { &mut *p })
    }

    /// Set to 1 by userspace to learn local endpoints from packets leaving pods.
    #[unsafe(no_mangle)]
    static LEARN_LOCAL: u8 = 0;

    const ETH_HLEN: usize = 14;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    const MAX_V6_EXT: usize = 6;
    const BPF_NOEXIST: u64 = 1;
    const EEXIST: i32 = 17;

    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_SCTP: u8 = 132;
    const IPPROTO_ICMP: u8 = 1;
    const IPPROTO_ICMPV6: u8 = 58;

    /// The verdict of every TC program: `TCX_NEXT` (= `TC_ACT_UNSPEC`), "no opinion", which
    /// runs the next program of a tcx chain and the next classic filter alike. Any other
    /// value ends a tcx chain (`TC_ACT_PIPE` too), so programs attached after ours — another
    /// tool's, or a second agent's during a rolling update — would never run.
    const NEXT: i32 = TCX_NEXT;

    /// Packets from the pod.
    #[classifier]
    pub fn tc_flow_ingress(ctx: TcContext) -> i32 {
        observe(&ctx, true);
        NEXT
    }

    /// Packets to the pod.
    #[classifier]
    pub fn tc_flow_egress(ctx: TcContext) -> i32 {
        observe(&ctx, false);
        NEXT
    }

    /// Does nothing: the benchmark baseline for the fixed cost of a tcx hook
    /// (`cargo xtask bench datapath`); never attached by the agent.
    #[classifier]
    pub fn tc_noop(_ctx: TcContext) -> i32 {
        NEXT
    }

    /// Moves the counts pending in this CPU's [`FLOW_CACHE`] entries into `FLOWS` (and its
    /// skipped packets into `COUNTERS`), and starts a new epoch of its [`CpuLine`]. Never
    /// attached: userspace runs it on every CPU (`BPF_PROG_TEST_RUN` with
    /// `BPF_F_TEST_RUN_ON_CPU`) before each sweep, so a sweep sees every packet counted
    /// before it, and after each change of `LOCAL_ENDPOINTS`. Returns the number of busy
    /// entries (an interrupted program on this CPU is changing them: their counts wait for
    /// the next sweep).
    #[raw_tracepoint]
    pub fn flush_flow_cache(_ctx: RawTracePointContext) -> i32 {
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

    /// Adds the counts pending in `e` to the flow's `FLOWS` entry (re-creating the entry if
    /// the LRU evicted it or userspace expired it meanwhile) and empties `e`. The caller
    /// holds `e.busy`.
    #[inline(never)]
    fn flush_cache(e: &mut FlowCache) {
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

    #[inline(always)]
    fn count(c: Counter) {
        count_n(c, 1);
    }

    #[inline(always)]
    fn count_n(c: Counter, n: u64) {
        if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
            // Per-CPU slot: no other CPU writes it.
            unsafe { *p += n };
        }
    }

    /// Reads a `T` (at least 2 bytes) at `off`: directly from the linear packet data when it
    /// is there (no helper call), else through `bpf_skb_load_bytes` (non-linear skbs).
    #[inline(always)]
    fn ld<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
        let start = ctx.data();
        let end = ctx.data_end();
        if off < 4096 && start + off + core::mem::size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above.
            Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
        } else {
            ctx.load::<T>(off).map_err(|_| ())
        }
    }

    #[inline(always)]
    fn be16(ctx: &TcContext, off: usize) -> Result<u16, ()> {
        ld::<u16>(ctx, off).map(u16::from_be)
    }

    /// One byte; read as two (a one-byte bounds check compiles to a form the verifier
    /// rejects), falling back to the helper at the very end of the packet.
    #[inline(always)]
    fn byte(ctx: &TcContext, off: usize) -> Result<u8, ()> {
        match ld::<[u8; 2]>(ctx, off) {
            Ok(b) => Ok(b[0]),
            Err(()) => ctx.load::<u8>(off).map_err(|_| ()),
        }
    }

    /// A parsed packet, oriented as sent.
    #[repr(C)]
    struct Packet {
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

    enum Parsed {
        Flow,
        Skip(Counter),
    }

    /// The per-packet entry, inlined into each program so that `from_pod` is a constant
    /// there: an established IPv4 TCP/UDP flow's packet (or an egress packet from a local
    /// sender) is handled by [`fast_v4`] without a BPF-to-BPF call; everything else goes to
    /// [`observe_general`], one shared subprogram.
    #[inline(always)]
    fn observe(ctx: &TcContext, from_pod: bool) {
        if let Some(h) = v4_headers(ctx)
            && let Some(st) = cpu_state()
        {
            let line = &mut st.line;
            if !from_pod && get(&line.local_src) == local_src_tag(h.src, get(&line.epoch)) {
                // The sender's ingress program has just counted a packet from this source
                // and found it local (see `CpuLine`).
                bump(&mut line.skipped);
                return;
            }
            let flow = FlowV4::new(&h);
            let e = &mut st.entries[flow.slot()];
            if get(&e.busy) == 0 {
                // Set before the entry is read: a flush that interrupts us from here on sees
                // it. Every access to the entry is volatile (`get` / `set`), so the compiler
                // keeps them in program order between setting and clearing `busy`.
                set(&mut e.busy, 1);
                let done = hot_v4(ctx, &h, from_pod, &flow, e, line);
                set(&mut e.busy, 0);
                if done {
                    return;
                }
            }
        }
        observe_slow(ctx, from_pod);
    }

    /// Everything [`observe`] leaves: IPv4 TCP/UDP packets that are not simple hits of
    /// their front entry ([`fast_v4`]), IPv6 TCP/UDP packets of established flows
    /// ([`fast_v6`]), and the general path. A subprogram of its own, so that the programs'
    /// per-packet code keeps a small frame and few registers.
    #[inline(never)]
    fn observe_slow(ctx: &TcContext, from_pod: bool) {
        if let Some(h) = v4_headers(ctx)
            && fast_v4(ctx, &h, from_pod, cpu_state())
        {
            return;
        }
        if let Some(h) = v6_headers(ctx)
            && fast_v6(ctx, &h, from_pod)
        {
            return;
        }
        observe_general(ctx, from_pod);
    }

    /// [`CpuLine::local_src`] for the IPv4 source `src` in epoch `epoch`.
    #[inline(always)]
    fn local_src_tag(src: u32, epoch: u32) -> u64 {
        u64::from(src) | u64::from(epoch | TAG_VALID) << 32
    }

    /// The general path: the first packet of a flow, IPv6, ICMP, options, fragments,
    /// non-linear headers. Reads the fast path's headers again (cheaper than passing them).
    #[inline(never)]
    fn observe_general(ctx: &TcContext, from_pod: bool) {
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

    /// Writes the IPv4 address `raw` (as read from the packet: network byte order in memory,
    /// see [`pkt_u32`]) into `out` as v4-mapped IPv6 (`::ffff:a.b.c.d`) with two 64-bit
    /// stores: a plain `*out = [0; 16]` compiles to a call of the byte-loop `memset`, which
    /// was a fifth of the program time. `out` must be 8-byte aligned: every caller passes an
    /// address field of `Packet` (offsets 0 and 16 of an 8-aligned struct) or half of the
    /// scratch value's `u64` counters.
    #[inline(always)]
    fn map_v4(raw: u32, out: &mut [u8; 16]) {
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
    fn mapped_v4_word(raw: u32) -> u64 {
        let b = raw.to_ne_bytes();
        u64::from_ne_bytes([0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]])
    }

    #[inline(always)]
    fn v4_mapped(ctx: &TcContext, off: usize, out: &mut [u8; 16]) -> Result<(), ()> {
        map_v4(u32::from_ne_bytes(ld(ctx, off)?), out);
        Ok(())
    }

    /// Length of the headers the IPv4 fast path reads: Ethernet, a 20-byte IPv4 header and
    /// the first 20 bytes of the transport header.
    const FAST_V4_LEN: usize = ETH_HLEN + 20 + 20;

    /// Length of the headers the IPv6 fast path reads: Ethernet, a 40-byte IPv6 header (no
    /// extension header) and the first 20 bytes of the transport header.
    const FAST_V6_LEN: usize = ETH_HLEN + 40 + 20;

    /// As [`pkt_u32`], 8 bytes (`ldxdw`).
    ///
    /// # Safety
    /// As [`pkt_u32`], for `p + OFF .. p + OFF + 8`.
    #[inline(always)]
    unsafe fn pkt_u64<const OFF: i16>(p: usize) -> u64 {
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
    unsafe fn pkt_u32<const OFF: i16>(p: usize) -> u32 {
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
    unsafe fn pkt_u16<const OFF: i16>(p: usize) -> u16 {
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
    struct V4Headers {
        /// Source address, network byte order in memory (as [`pkt_u32`] returns it).
        src: u32,
        /// Destination address, likewise.
        dst: u32,
        proto: u8,
        sport: u16,
        dport: u16,
        /// TCP flags (0 for UDP).
        tcp_flags: u32,
        /// Transport header length.
        l4_hdr_len: u64,
    }

    /// The packet's [`V4Headers`], or `None` for anything else (the general parser's case).
    /// Six loads of 4 or 2 bytes (see [`pkt_u32`]); the words are little-endian views of
    /// the packet bytes, so byte `k` of a word is bits `8k..8k+8`.
    #[inline(always)]
    fn v4_headers(ctx: &TcContext) -> Option<V4Headers> {
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
    struct V6Headers {
        /// Source address: two words as read from the packet (memory order, see [`pkt_u64`]).
        src: [u64; 2],
        /// Destination address, likewise.
        dst: [u64; 2],
        proto: u8,
        sport: u16,
        dport: u16,
        /// TCP flags (0 for UDP).
        tcp_flags: u32,
        /// Transport header length.
        l4_hdr_len: u64,
    }

    /// The packet's [`V6Headers`], or `None`. As [`v4_headers`]: little-endian views of the
    /// packet bytes.
    #[inline(always)]
    fn v6_headers(ctx: &TcContext) -> Option<V6Headers> {
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

    /// An IPv6 TCP/UDP packet (headers `h`) of an established flow: the same-node skip, then
    /// the `FLOWS` path (one lookup, the atomic update), as the general path does it without
    /// its parser and scratch map. Returns false, having changed nothing, for the first
    /// packet of a flow: the general path creates it.
    #[inline(always)]
    fn fast_v6(ctx: &TcContext, h: &V6Headers, from_pod: bool) -> bool {
        let mut src = Addr([0; 16]);
        // SAFETY: two aligned 8-byte stores within the 16-byte, 8-aligned array.
        unsafe {
            let w = src.0.as_mut_ptr() as *mut u64;
            core::ptr::write_volatile(w, h.src[0]);
            core::ptr::write_volatile(w.add(1), h.src[1]);
        }
        if !from_pod && LOCAL_ENDPOINTS.get_ptr(&src.0).is_some() {
            count(Counter::SkippedLocal);
            return true;
        }
        // The order of `canonical`: the addresses bytewise (big-endian words), then the ports.
        let (s0, d0) = (u64::from_be(h.src[0]), u64::from_be(h.dst[0]));
        let (s1, d1) = (u64::from_be(h.src[1]), u64::from_be(h.dst[1]));
        let src_lower = if s0 != d0 {
            s0 < d0
        } else if s1 != d1 {
            s1 < d1
        } else {
            h.sport <= h.dport
        };
        let (lo, lo_port, hi, hi_port, dir) = if src_lower {
            (h.src, h.sport, h.dst, h.dport, DIR_LO_TO_HI)
        } else {
            (h.dst, h.dport, h.src, h.sport, DIR_HI_TO_LO)
        };
        let words = KeyWords([
            lo[0],
            lo[1],
            hi[0],
            hi[1],
            u64::from(lo_port)
                | u64::from(hi_port) << 16
                | u64::from(h.proto) << 32
                | u64::from(FAMILY_V6) << 40,
        ]);
        let key = words.as_key();
        let Some(v) = FLOWS.get_ptr_mut(key) else {
            return false;
        };
        let learn = from_pod && unsafe { core::ptr::read_volatile(&LEARN_LOCAL) } != 0;
        let (segs, bytes) = size(ctx, 40 + h.l4_hdr_len);
        update(ctx, v, key, segs, bytes, h.tcp_flags, &src.0, dir, learn);
        true
    }

    /// The general path's packet from the fast path's headers `h`: only the first packet of
    /// a flow gets here ([`fast_v4`] has already skipped packets sent by local pods).
    #[inline(always)]
    fn parse_v4_fast(ctx: &TcContext, h: &V4Headers, pkt: &mut Packet) -> Parsed {
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

    /// 16 bytes on the stack, 8-aligned (the verifier wants aligned stack accesses and
    /// [`map_v4`] stores two `u64`s).
    #[repr(C, align(8))]
    struct Addr([u8; 16]);

    /// A flow key on the stack, 8-aligned, built with five 64-bit stores.
    #[repr(C, align(8))]
    struct KeyWords([u64; 5]);

    impl KeyWords {
        #[inline(always)]
        fn as_key(&self) -> &FlowKey {
            // SAFETY: FlowKey is 40 bytes of integers (layout checked by the crate's tests);
            // KeyWords has its size and a larger alignment.
            unsafe { &*((self as *const KeyWords) as *const FlowKey) }
        }
    }

    /// A flow value on the stack, built with eight 64-bit stores (no `memset`).
    #[repr(C, align(8))]
    struct ValueWords([u64; 8]);

    impl ValueWords {
        #[inline(always)]
        fn as_value(&self) -> &FlowValue {
            // SAFETY: FlowValue is 64 bytes of integers, `initiator` and zero padding last
            // (layout checked by the crate's tests); ValueWords has its size and alignment.
            unsafe { &*((self as *const ValueWords) as *const FlowValue) }
        }
    }

    /// An IPv4 TCP/UDP flow as the fast path identifies it.
    struct FlowV4 {
        /// As [`FlowCache::addrs`].
        addrs: u64,
        /// As [`FlowCache::tail`].
        tail: u64,
        /// Direction index of the packet.
        dir: u8,
    }

    impl FlowV4 {
        /// The flow of a packet with headers `h`.
        #[inline(always)]
        fn new(h: &V4Headers) -> FlowV4 {
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
        fn slot(&self) -> usize {
            ((self.addrs ^ self.tail.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as usize
                & (FLOW_CACHE_SLOTS as usize - 1)
        }

        /// The flow's `FLOWS` key.
        #[inline(always)]
        fn key_words(&self) -> KeyWords {
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
    fn hot_v4(
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
    fn fast_v4(
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
    fn uncached_v4(ctx: &TcContext, h: &V4Headers, from_pod: bool, flow: &FlowV4) -> bool {
        if !from_pod && skip_local_v4(ctx, h.src) {
            count(Counter::SkippedLocal);
            return true;
        }
        let (segs, bytes) = size(ctx, 20 + h.l4_hdr_len);
        flows_v4(ctx, h, from_pod, flow, segs, bytes).is_some()
    }

    /// [`fast_v4`] with this CPU's entry `e` of the flow's slot, `busy` held.
    #[inline(always)]
    fn cached_v4(
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
    fn entry_takes(h: &V4Headers, from_pod: bool, dir: u8, e: &FlowCache) -> bool {
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
    fn add_to_entry(e: &mut FlowCache, d: usize, segs: u64, bytes: u64) {
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
    fn record_local_src(line: &mut CpuLine, e: &FlowCache, d: usize, src: u32) {
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
    fn fill(e: &mut FlowCache, flow: &FlowV4, v: *mut FlowValue, now: u64, epoch: u32) {
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

    /// The `FLOWS` path of an established IPv4 TCP/UDP packet: one flow-map lookup and the
    /// atomic counter update. Returns the flow's entry, or `None` when the flow is not in the
    /// map (the general path creates it).
    #[inline(always)]
    fn flows_v4(
        ctx: &TcContext,
        h: &V4Headers,
        from_pod: bool,
        flow: &FlowV4,
        segs: u64,
        bytes: u64,
    ) -> Option<*mut FlowValue> {
        let words = flow.key_words();
        let key = words.as_key();
        let v = FLOWS.get_ptr_mut(key)?;
        let learn = from_pod && unsafe { core::ptr::read_volatile(&LEARN_LOCAL) } != 0;
        // Written whatever `learn` is: two stores. A zeroed array overwritten only when
        // `learn` compiles to a call of the byte-loop `memset` on every packet (the datapath's
        // `per_packet_path_calls_no_memset` test checks the object).
        let mut src = Addr([0; 16]);
        map_v4(h.src, &mut src.0);
        update(
            ctx,
            v,
            key,
            segs,
            bytes,
            h.tcp_flags,
            &src.0,
            flow.dir,
            learn,
        );
        Some(v)
    }

    /// Whether the IPv4 source `src` (network order in memory) of a packet to a pod is a
    /// local endpoint (in `LOCAL_ENDPOINTS`): the same-node rule, "a flow between two pods
    /// of this node is counted once, at the sender's interface".
    ///
    /// The answer is exactly that map's, only cheaper on repeat: `LOCAL_SRC_CACHE` remembers
    /// a positive answer in the slot of the packet's `ingress_ifindex` (the interface it
    /// entered the host on; a local pod's packets enter through its own host-side veth, so
    /// the slot mostly holds that pod's address), and an array lookup of a constant-size map
    /// is inlined by the verifier, unlike the hash lookup (jhash of 16 bytes and a key
    /// compare). The interface only picks the slot: the decision is still "the source
    /// address is in `LOCAL_ENDPOINTS`" — not "the packet came from a pod interface", which
    /// differs for a Service connection's reply (the source is the ClusterIP after the
    /// un-DNAT although the packet came from the backend pod's veth: it must be counted on
    /// the client leg) and for pod traffic routed through the bridge device (entered on the
    /// bridge: it must be skipped).
    ///
    /// Staleness: an entry carries the `LOCAL_ENDPOINTS_GEN` generation read *before* its
    /// hash lookup, and matches only under the same generation. Userspace increments the
    /// generation after it removes an address, so an entry that might hold a removed address
    /// no longer matches (a lookup after the removal does not find it; one before it carries
    /// the older generation). Insertions need no invalidation: the cache holds only
    /// positive answers. The slot is one `u64`, written and read whole.
    #[inline(always)]
    fn skip_local_v4(ctx: &TcContext, src: u32) -> bool {
        let generation = match LOCAL_ENDPOINTS_GEN.get_ptr(0) {
            // SAFETY: a valid map value pointer; userspace may write it concurrently.
            Some(g) => unsafe { core::ptr::read_volatile(g) },
            None => return is_local_v4(src),
        };
        let tag = u64::from(src) | u64::from((generation & LOCAL_SRC_GEN_MASK) | 1 << 31) << 32;
        // SAFETY: reading a field of the program's context.
        let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
        let slot = LOCAL_SRC_CACHE.get_ptr_mut(iif & (LOCAL_SRC_CACHE_SLOTS - 1));
        if let Some(slot) = slot
            && unsafe { core::ptr::read_volatile(slot) } == tag
        {
            return true;
        }
        if !is_local_v4(src) {
            return false;
        }
        if let Some(slot) = slot {
            // SAFETY: a valid map value pointer; an aligned 8-byte store is atomic.
            unsafe { core::ptr::write_volatile(slot, tag) };
        }
        true
    }

    /// Whether the IPv4 address `src` (network order in memory) is in `LOCAL_ENDPOINTS`.
    #[inline(always)]
    fn is_local_v4(src: u32) -> bool {
        let mut a = Addr([0; 16]);
        map_v4(src, &mut a.0);
        LOCAL_ENDPOINTS.get_ptr(&a.0).is_some()
    }

    /// The packet's segment count and IP byte count (GSO packets count the headers of
    /// every segment; `hdr_len` is the IP + transport header length of one segment).
    #[inline(always)]
    fn size(ctx: &TcContext, hdr_len: u64) -> (u64, u64) {
        let ip_len = (ctx.len() as u64).saturating_sub(ETH_HLEN as u64);
        let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
        let segs = if segs > 1 { segs } else { 1 };
        (segs, ip_len + (segs - 1) * hdr_len)
    }

    /// Sets the packet's segment count and IP byte count (GSO packets count the headers of
    /// every segment; `hdr_len` is the IP + transport header length of one segment).
    #[inline(always)]
    fn set_size(ctx: &TcContext, pkt: &mut Packet, hdr_len: u64) {
        (pkt.segs, pkt.bytes) = size(ctx, hdr_len);
    }

    /// `*p += 1` with a volatile load and store.
    #[inline(always)]
    fn bump(p: &mut u64) {
        let v = get(p) + 1;
        set(p, v);
    }

    /// `*p` as a volatile load (see [`set`]).
    #[inline(always)]
    fn get<T: Copy>(p: &T) -> T {
        // SAFETY: `p` is a valid reference.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// `*p = v` as a volatile store: LLVM merges runs of plain constant stores into a call of
    /// the byte-loop `memset` on this target; and the [`FlowCache`] entries keep their
    /// accesses in program order with it.
    #[inline(always)]
    fn set<T>(p: &mut T, v: T) {
        // SAFETY: `p` is a valid, exclusive reference.
        unsafe { core::ptr::write_volatile(p, v) }
    }

    fn parse(
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
        let ethertype = be16(ctx, 12)?;
        let l3 = ETH_HLEN;
        let l4;
        let l3_hdr_len;
        match ethertype {
            ETH_P_IP => {
                let vihl = byte(ctx, l3)?;
                let ihl = ((vihl & 0x0f) as usize) * 4;
                if ihl < 20 {
                    return Err(());
                }
                let frag = be16(ctx, l3 + 6)?;
                if frag & 0x1fff != 0 {
                    return Ok(Parsed::Skip(Counter::Fragments));
                }
                pkt.proto = byte(ctx, l3 + 9)?;
                v4_mapped(ctx, l3 + 12, &mut pkt.src)?;
                v4_mapped(ctx, l3 + 16, &mut pkt.dst)?;
                pkt.family = FAMILY_V4;
                l4 = l3 + ihl;
                l3_hdr_len = ihl as u64;
            }
            ETH_P_IPV6 => {
                let mut next: u8 = byte(ctx, l3 + 6)?;
                pkt.src = ld(ctx, l3 + 8)?;
                pkt.dst = ld(ctx, l3 + 24)?;
                pkt.family = FAMILY_V6;
                let mut off = l3 + 40;
                let mut done = false;
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
                                return Ok(Parsed::Skip(Counter::Fragments));
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
                        _ => {
                            done = true;
                            break;
                        }
                    }
                }
                if !done {
                    return Err(());
                }
                pkt.proto = next;
                l4 = off;
                l3_hdr_len = (off - l3) as u64;
            }
            _ => return Ok(Parsed::Skip(Counter::NonIp)),
        }
        if !from_pod && LOCAL_ENDPOINTS.get_ptr(&pkt.src).is_some() {
            // The sender is a pod of this node: its own interface counts the packet. Checked
            // before the transport header is read, to keep the skip path short.
            return Ok(Parsed::Skip(Counter::SkippedLocal));
        }
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
                    return Ok(Parsed::Skip(Counter::NonIp));
                } else {
                    pkt.hint = 1;
                }
            }
            _ => return Ok(Parsed::Skip(Counter::OtherProtocol)),
        }
        set_size(ctx, pkt, l3_hdr_len + l4_hdr_len);
        Ok(Parsed::Flow)
    }

    /// Builds in `key` the canonical key of the flow an ICMP error quotes (inner IP header at
    /// `off`); `tmp` is scratch space for the inner addresses.
    fn quoted_key(
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
    fn canonical(
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

    fn handle(ctx: &TcContext, scratch: &mut Scratch, from_pod: bool) {
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

    #[inline(always)]
    fn mark_close(key: &FlowKey, kind: u32, initiator: u8, dir: u8, now: u64) {
        if let Some(v) = FLOWS.get_ptr_mut(key) {
            let bits = event_bits(kind);
            if unsafe { or64(&raw mut (*v).flags, bits) } & bits == 0 {
                emit(key, now, kind, initiator, dir);
            }
        }
    }

    /// Records `src` (the sender of a packet leaving a pod) as a local endpoint; says whether
    /// it is one now (false only when the map is full).
    #[inline(always)]
    fn learn_endpoint(ctx: &TcContext, src: &[u8; 16]) -> bool {
        if LOCAL_ENDPOINTS.get_ptr(src).is_some() {
            return true;
        }
        let ep = LocalEndpoint {
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
            learned: 1,
        };
        match LOCAL_ENDPOINTS.insert(src, &ep, BPF_NOEXIST) {
            Ok(()) => true,
            Err(e) => e == -EEXIST,
        }
    }

    /// A packet of an existing flow: atomic adds on the counters; every other write only
    /// when it changes something (`last_seen` moves once per clock tick, flag bits once).
    #[inline(always)]
    fn update(
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

    /// Atomic `*p += v`.
    #[inline(always)]
    unsafe fn add64(p: *mut u64, v: u64) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
    }

    /// Atomic `*p |= bits`, returning the previous value.
    #[inline(always)]
    unsafe fn or64(p: *mut u64, bits: u64) -> u64 {
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(p, bits) }
    }

    #[inline(always)]
    fn emit(key: &FlowKey, now: u64, kind: u32, initiator: u8, dir: u8) {
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

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
