//! io_uring needs locked memory (glommio: at least 512 KiB per executor, plus the I/O memory
//! it registers). Checked before any executor starts, with an actionable message.

/// What one executor needs locked: rings plus the registered I/O memory.
pub fn required_bytes(cores: u32, io_memory_bytes: usize) -> u64 {
    u64::from(cores) * (512 * 1024 + io_memory_bytes as u64)
}

/// The soft RLIMIT_MEMLOCK in bytes (`None` = unlimited or unknown).
pub fn limit_bytes() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// The operator-facing explanation of a too-low limit.
pub fn advice(cores: u32, required: u64, limit: Option<u64>) -> String {
    let have = match limit {
        Some(bytes) => format!("{} KiB", bytes / 1024),
        None => "unknown".to_string(),
    };
    format!(
        "io_uring needs about {} KiB of locked memory for {cores} core(s), but RLIMIT_MEMLOCK is \
         {have}. Raise it: `ulimit -l {}` (or `unlimited`) in the shell that starts the node, \
         `LimitMEMLOCK={}K` (or `infinity`) in the systemd unit, or `memlock` in \
         /etc/security/limits.conf; or run fewer cores (`--cores`).",
        required / 1024,
        required.div_ceil(1024),
        required.div_ceil(1024),
    )
}

/// `Err(advice)` if the limit is known to be too low.
pub fn check(cores: u32, io_memory_bytes: usize) -> Result<(), String> {
    let required = required_bytes(cores, io_memory_bytes);
    match limit_bytes() {
        Some(limit) if limit < required => Err(advice(cores, required, Some(limit))),
        _ => Ok(()),
    }
}
