//! Process-wide allocator settings for binaries that run the model, and the process's memory
//! figures their benchmarks and tests report.

// Unsafe: one libc call tuning the allocator (mallopt).
#![allow(unsafe_code)]

/// Keeps freed activation buffers in the heap for reuse instead of handing them back to the
/// kernel. glibc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with
/// fresh mappings and trims the heap top above 128 KiB, so every forward and backward pass
/// re-faults and zero-fills the pages of its activations: 16% of a LoRA training step was
/// `clear_page` in the kernel (perf, 2026-12-02). With the threshold at its 32 MiB maximum and
/// trimming off, the step bench went from 7.9 s to 6.1 s with peak RSS +1%
/// (docs/performance.md). One arena serves every thread: with one per thread, the training
/// step's original-state thread kept freed activations the main thread could not reuse, and
/// its peak was 3.9 GB instead of 2.4 GB in 3 of 16 runs (0 of 13 with one arena, at the same
/// step, prefill and generation speed). Call first thing in `main`; a no-op outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the heap's free memory back to the kernel now (glibc's `malloc_trim`), which
/// [`keep_freed_memory`] otherwise keeps for good. Called where a phase that frees much more
/// than the next one reuses has ended: a model load (the tokenizer's JSON, the per-tensor
/// buffers of the weights' conversion). Without it, 0.2 GB of a Qwen load's free heap stayed
/// resident under every later allocation and raised the process's peak by as much.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A memory figure of this process from `/proc/self/status` in bytes (`VmHWM`: peak
/// resident, `VmRSS`: resident now); 0 where the file or field is missing (not Linux).
pub fn process_bytes(field: &str) -> u64 {
    let kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
            l.split_whitespace().next()?.parse::<u64>().ok()
        });
    kb.unwrap_or(0) * 1024
}
