//! Shared helpers for Lethe's benchmarks and measurement tools.

pub mod sphinx_setup;

/// This thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`). On the shared build
/// machines (load ~10 on 2 cores) wall time mostly measures the scheduler; CPU time
/// measures the code. NaN if the clock is unavailable.
pub fn thread_cpu_ns() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
}
