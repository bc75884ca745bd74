//! Gives the C heap's free memory back to the system.
//!
//! glibc's allocator keeps pages freed in the middle of its heaps (and of
//! each thread's arena) mapped: after a burst of connections closes, a
//! process's RSS stays at its peak although the memory is free.
//! `malloc_trim(0)` returns every whole free page of every arena to the
//! kernel (`madvise(MADV_DONTNEED)`). meshid's crate forbids `unsafe`; this
//! crate holds its one foreign call, so that it is reviewed on its own.

/// Returns the C heap's free pages to the system; `true` when some memory
/// was released. Does nothing (and returns `false`) where the C library is
/// not glibc. It walks every arena under its locks: call it from a blocking
/// thread, not from an async task.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a padding size and touches only the
        // allocator's own free lists, under the allocator's locks; it is
        // safe to call from any thread at any time.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released != 0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Stops the C heap from giving free memory back on its own (glibc trims
/// the top of a heap past 128 KiB of free memory on every `free`, so a
/// buffer freed and allocated again in a loop faults its pages in anew each
/// time: measured at 12-15 % of a proxy's CPU in bulk transfers). Memory is
/// then given back only by [`release_free_memory`], which the caller runs
/// when it has freed much (connections closed). `true` when applied.
pub fn trim_only_on_release() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 1 GiB: no automatic trim; mmap for blocks of 4 MiB and more only,
        // so that the threshold stays fixed (glibc otherwise raises it and
        // the trim threshold with it as blocks are freed).
        // SAFETY: mallopt sets allocator parameters under the allocator's
        // lock; it is safe to call at any time from any thread.
        #[allow(unsafe_code)]
        let applied = unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) == 1
        };
        applied
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks freed between blocks still in use (the heap cannot shrink
    /// from its top) are given back by trimming.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_pages_between_live_blocks_are_given_back() {
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1000]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(200).collect();
        assert!(
            release_free_memory(),
            "malloc_trim released nothing after ~20 MB was freed between live blocks"
        );
        assert_eq!(kept.len(), 100);
    }
}
