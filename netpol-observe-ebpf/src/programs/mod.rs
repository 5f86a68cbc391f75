//! The programs and their per-packet entry. `tc_flow_ingress` / `tc_flow_egress` take a
//! packet through, in order: the per-CPU front entries of established flows and their
//! `FLOWS` path ([`front`]: [`front::observe_hot`], [`front::fast`])
//! and the general path
//! ([`general`]); the same-node rule ([`local`]) decides which egress packets are skipped.

mod dns;
mod flows;
mod front;
mod general;
mod local;
mod mem;
mod packet;

use aya_ebpf::{
    bindings::tcx_action_base::TCX_NEXT,
    macros::{classifier, raw_tracepoint},
    programs::{RawTracePointContext, TcContext},
};

use self::{
    front::{cpu_state, fast, flush_cpu, observe_hot},
    general::observe_general,
    packet::{v4_headers, v6_headers},
};

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

/// Moves the counts pending in this CPU's front entries into `FLOWS` (and its skipped
/// packets into `COUNTERS`), and starts a new epoch of its line ([`front::flush_cpu`]).
/// Never attached: userspace runs it on every CPU (`BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_RUN_ON_CPU`) before each sweep, so a sweep sees every packet counted before
/// it, and after each change of `LOCAL_ENDPOINTS`. Returns the number of busy entries (an
/// interrupted program on this CPU is changing them: their counts wait for the next sweep).
#[raw_tracepoint]
pub fn flush_flow_cache(_ctx: RawTracePointContext) -> i32 {
    flush_cpu()
}

/// The per-packet entry, inlined into each program so that `from_pod` is a constant
/// there: the hit of an established TCP/UDP flow's front entry (or an egress packet from
/// a local sender) is handled by [`observe_hot`] without a BPF-to-BPF call;
/// everything else goes to [`observe_slow`], one shared subprogram.
#[inline(always)]
fn observe(ctx: &TcContext, from_pod: bool) {
    if !observe_hot(ctx, from_pod) {
        observe_slow(ctx, from_pod);
    }
}

/// Everything [`observe_hot`] leaves: TCP/UDP packets that are not simple hits of their
/// front entry ([`fast`]), and the general path. A subprogram of its own, so that the programs'
/// per-packet code keeps a small frame and few registers.
#[inline(never)]
fn observe_slow(ctx: &TcContext, from_pod: bool) {
    if let Some(h) = v4_headers(ctx)
        && fast(ctx, &h, from_pod, cpu_state())
    {
        return;
    }
    // DNS answers (IPv4 and IPv6) were copied in `observe_hot`.
    if let Some(h) = v6_headers(ctx)
        && fast(ctx, &h, from_pod, cpu_state())
    {
        return;
    }
    observe_general(ctx, from_pod);
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
