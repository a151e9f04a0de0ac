//! Giving a finished training's memory back to the system.
//!
//! The `atelier` binary keeps blocks up to 32 MiB and up to 256 MiB of free heap inside glibc's
//! malloc (`mallopt` in its `main`): a training step frees and re-allocates multi-MiB gradient
//! buffers every step, and handing them to the kernel each time cost ~6,000 page faults per
//! buffer. The price is that each thread's malloc arena keeps its training's peak after the job
//! ends, and job threads come and go: a server's RSS grew ~150 MB per finished training
//! (`bench/overload.py --trainings`). Trimming after a training ends returns those pages without
//! slowing the steps. (jemalloc was measured as the alternative: the RSS stayed flat, but it
//! zeroes large `calloc` blocks by purging their pages, 17 M page faults in 40 CUT steps against
//! 137 k, and the steps took 75 % longer.)

/// Returns free heap pages of every malloc arena to the kernel (glibc's `malloc_trim`); a no-op
/// on other platforms. Takes milliseconds; call it off the async runtime's threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks and returns free
    // pages to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the system (only glibc needs it; a no-op here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
