//! Memory access helpers: volatile loads and stores (program order within a front entry,
//! and no `memset` from merged constant stores) and relaxed atomics on map values.

use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};

/// `*p += 1` with a volatile load and store.
#[inline(always)]
pub(super) fn bump(p: &mut u64) {
    let v = get(p) + 1;
    set(p, v);
}

/// `*p` as a volatile load (see [`set`]).
#[inline(always)]
pub(super) fn get<T: Copy>(p: &T) -> T {
    // SAFETY: `p` is a valid reference.
    unsafe { core::ptr::read_volatile(p) }
}

/// `*p = v` as a volatile store: LLVM merges runs of plain constant stores into a call of
/// the byte-loop `memset` on this target; and the [`FlowCache`] entries keep their
/// accesses in program order with it.
#[inline(always)]
pub(super) fn set<T>(p: &mut T, v: T) {
    // SAFETY: `p` is a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Atomic `*p += v`.
#[inline(always)]
pub(super) unsafe fn add64(p: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Atomic `*p |= bits`, returning the previous value.
#[inline(always)]
pub(super) unsafe fn or64(p: *mut u64, bits: u64) -> u64 {
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(p, bits) }
}
