//! The host the agent runs on: its name, and the allocator's tuning the agent (and the
//! devkit's inventory bench, which measures as the agent runs) relies on.

/// Returns the allocator's free memory to the operating system (glibc keeps freed memory in
/// its arenas; a model build frees tens of MiB of temporaries).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's mmap threshold at its default (128 KiB). Left dynamic, glibc raises it to
/// the size of the largest mmapped block freed (up to 32 MiB): after a model build has freed
/// its large temporaries, the agent's growing tables (store slab, caches, metric families)
/// then come from the heap, and each table outgrown by doubling stays resident as free
/// memory. Fixed, every block of 128 KiB or more is its own mapping, returned to the system
/// when freed (−3 MiB at 10k flows in `cargo xtask bench agent`).
pub fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only changes a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), the node name when none is configured.
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
