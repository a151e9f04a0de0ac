//! The `atelier` binary: a thin shell over the library crates.

use std::process::ExitCode;

mod cli;
mod cmd;

fn main() -> ExitCode {
    tune_allocator();
    match cmd::run() {
        Ok(code) => code,
        Err(err) => {
            // One line, the whole cause chain.
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}

/// glibc's malloc hands every freed block above its adaptive mmap threshold back to the
/// kernel, so a training step's multi-MiB gradient buffers came back as fresh pages each time:
/// ~6000 page faults (and zeroed pages) per weight gradient of a 256→512 4×4 layer, a third of
/// that kernel's time. Blocks up to 32 MiB now stay on the heap, and up to 256 MiB of free heap
/// stays mapped; larger maps (a 1024² activation) are still mapped and unmapped directly.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; this runs first in `main`, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
