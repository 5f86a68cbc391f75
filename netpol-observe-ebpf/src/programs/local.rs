//! The same-node rule: `LOCAL_ENDPOINTS` (the pods of this node), its generation and the
//! egress programs' cache of positive answers, and learning local endpoints from packets
//! leaving pods.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};
use netpol_observe_ebpf::{LOCAL_ENDPOINTS_CAPACITY, LOCAL_SRC_GEN_MASK, LocalEndpoint};

use super::{
    flows::{BPF_NOEXIST, EEXIST},
    packet::{Addr, map_v4},
};

/// The pods of this node (address, v4-mapped for IPv4 → interface), from userspace and
/// learned from packets leaving pods.
#[map(name = "LOCAL_ENDPOINTS")]
pub(super) static LOCAL_ENDPOINTS: HashMap<[u8; 16], LocalEndpoint> =
    HashMap::with_max_entries(LOCAL_ENDPOINTS_CAPACITY, 0);

/// Generation of `LOCAL_ENDPOINTS` (slot 0), incremented by userspace after it removes
/// an address: see [`skip_local_v4`].
#[map(name = "LOCAL_ENDPOINTS_GEN")]
pub(super) static LOCAL_ENDPOINTS_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Number of slots of `LOCAL_SRC_CACHE` (a power of two).
pub(super) const LOCAL_SRC_CACHE_SLOTS: u32 = 4096;

/// The egress programs' same-node skip cache: slot `ingress_ifindex % SLOTS` holds, in
/// one `u64`, an IPv4 source address (low word, as read from the packet) found in
/// `LOCAL_ENDPOINTS` and, in the high word, the generation of that map then with bit 31
/// set. See [`skip_local_v4`].
#[map(name = "LOCAL_SRC_CACHE")]
pub(super) static LOCAL_SRC_CACHE: Array<u64> = Array::with_max_entries(LOCAL_SRC_CACHE_SLOTS, 0);

/// Set to 1 by userspace to learn local endpoints from packets leaving pods.
#[unsafe(no_mangle)]
pub(super) static LEARN_LOCAL: u8 = 0;

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
pub(super) fn skip_local_v4(ctx: &TcContext, src: u32) -> bool {
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
pub(super) fn is_local_v4(src: u32) -> bool {
    let mut a = Addr([0; 16]);
    map_v4(src, &mut a.0);
    LOCAL_ENDPOINTS.get_ptr(&a.0).is_some()
}

/// Records `src` (the sender of a packet leaving a pod) as a local endpoint; says whether
/// it is one now (false only when the map is full).
#[inline(always)]
pub(super) fn learn_endpoint(ctx: &TcContext, src: &[u8; 16]) -> bool {
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
