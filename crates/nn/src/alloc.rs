//! Process-wide allocator tuning for CPU inference, opt-in for applications.
//!
//! CPU backends allocate a fresh buffer for every op's output. With glibc's defaults, buffers above the dynamic
//! mmap threshold (128 KiB at first) are fresh `mmap`s, so every large activation pays for page faults and the
//! kernel zeroing its pages, and freed heap memory is trimmed back to the OS between ops. On ViT-g (flex, f32,
//! 2-core EPYC) that cost 16% of the forward time: 502 ms against 423 ms for 6 layers at batch 1. torch's own
//! CPU forward was unaffected by the same setting (433 against 431 ms), so it is our cost, not the machine's.

/// Raises glibc's mmap threshold to its maximum (32 MiB) and its trim threshold to 1 GiB, so that activation
/// buffers are recycled from the heap instead of being mapped and zeroed for every op. Call it once, early, from
/// an application (the `blip2` CLI and the benches do); libraries must not change process-wide settings.
///
/// Returns whether the settings were applied: always `false` off glibc (musl, macOS, Windows), where the
/// allocators behave differently and nothing is changed. The same effect is available without code through the
/// environment: `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824`.
pub fn tune_malloc_for_inference() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; both values are in the ranges glibc accepts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands the allocator's free memory back to the OS (glibc's `malloc_trim(0)`, which also releases free pages
/// inside the heap, not only at its top). The loaders call it after each quantized tensor and at the end of each
/// part: the temporary f32 copies made while loading would otherwise stay resident under the 1 GiB trim
/// threshold that [`tune_malloc_for_inference`] sets. Does nothing off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}
