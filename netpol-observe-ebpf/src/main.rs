//! The eBPF programs of netpol-observe. Built for `bpfel-unknown-none` by `aya-build`
//! (see `netpol-observe/build.rs`); on the host this binary is an empty stub.
//!
//! `tc_flow_ingress` / `tc_flow_egress` run on the host side of pod interfaces (ingress =
//! packets from the pod, egress = packets to the pod). They parse Ethernet, IPv4/IPv6 (IPv6
//! extension headers within a bound) and TCP/UDP/SCTP/ICMP/ICMPv6, update the flow map and
//! announce new flows and first TCP FIN/RST on the ring buffer. They always return
//! `TCX_NEXT`, never drop or change a packet. `tc_noop` only returns `TCX_NEXT`: the
//! benchmark's baseline for the cost of the hooks themselves. `kfree_skb_drops` (module
//! `drops`) counts dropped packets by reason.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod drops;

#[cfg(target_arch = "bpf")]
mod programs;

/// The licence the kernel reads from the object's `license` section (aya-obj would otherwise
/// declare `GPL` for us). The kernel lets only programs with a GPL-compatible licence call
/// GPL-only helpers (`bpf_probe_read_kernel` in `drops`); `Dual MIT/GPL` is one of the strings
/// it accepts (`license_is_gpl_compatible`) and matches the crate's `MIT OR GPL-2.0-only`.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
