//! Long runs (soaks): the run cut into windows of scheduled send time, and the memory of every
//! local node process (and loadgen's own) sampled at the start, at the end of each window and
//! at the end of the run, from `/proc/PID/status` (VmRSS).
//!
//! Memory is judged after warm-up: the growth reported is from the end of the first window to
//! the end of the run, so the pools, filters and caches a node fills while it warms up are not
//! mistaken for a leak.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::limits::{LOG_SCAN_BYTES_MAX, WINDOWS_MAX};
use serde::Serialize;

/// What the Rust runtime writes when a thread panics.
const PANIC_MARK: &str = "panicked at";

/// A local process whose memory and life the run watches.
#[derive(Clone, Debug)]
pub struct WatchedProcess {
    pub name: String,
    pub pid: u32,
    /// Its stderr log, scanned for panics at the end of the run.
    pub log: Option<PathBuf>,
}

/// Resident memory of `pid`, KiB; `None` once it has exited (or is a zombie).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Lines of `log` (its first [`LOG_SCAN_BYTES_MAX`] bytes) that report a panic.
pub fn panics_logged(log: &Path) -> u64 {
    let Ok(file) = std::fs::File::open(log) else {
        return 0;
    };
    BufReader::new(file.take(LOG_SCAN_BYTES_MAX))
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|line| {
            line.windows(PANIC_MARK.len())
                .any(|w| w == PANIC_MARK.as_bytes())
        })
        .count() as u64
}

/// True while `pid` runs: it exists and is not a zombie (the testnet's nodes are not
/// loadgen's children; whoever reaps them may be slow, or not reap at all).
pub fn running(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("State:"))
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// One RSS sample of every watched process, in their order.
pub fn sample(processes: &[WatchedProcess]) -> Vec<Option<u64>> {
    processes.iter().map(|p| rss_kib(p.pid)).collect()
}

/// Memory of one process over the run (the report's `result.processes[]`).
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub name: String,
    pub pid: u32,
    /// `null` when it was not running at that moment.
    pub rss_kib_start: Option<u64>,
    pub rss_kib_first_window_end: Option<u64>,
    pub rss_kib_end: Option<u64>,
    /// From the end of the first window to the end of the run; `null` with a single window
    /// (no warm-up to leave out) or when it was not running at either moment.
    pub rss_growth_after_warmup_kib: Option<i64>,
    pub rss_growth_after_warmup_pct: Option<f64>,
    /// Still running after the run (loadgen itself always is).
    pub running_at_end: bool,
    /// Lines of its log that report a panic (0 when it has no log).
    pub panics_logged: u64,
}

/// Memory of every process from the samples: `start`, one per window end (`windows[i][p]`),
/// and `end`.
pub fn process_reports(
    processes: &[WatchedProcess],
    start: &[Option<u64>],
    windows: &[Vec<Option<u64>>],
    end: &[Option<u64>],
) -> Vec<ProcessReport> {
    processes
        .iter()
        .enumerate()
        .map(|(index, process)| {
            let at = |samples: &[Option<u64>]| samples.get(index).copied().flatten();
            let first_window_end = windows.first().and_then(|w| at(w));
            let end_kib = at(end);
            let growth = if windows.len() >= 2 {
                first_window_end
                    .zip(end_kib)
                    .map(|(first, last)| last as i64 - first as i64)
            } else {
                None
            };
            let growth_pct = growth
                .zip(first_window_end)
                .filter(|(_, first)| *first > 0)
                .map(|(growth, first)| growth as f64 * 100.0 / first as f64);
            ProcessReport {
                name: process.name.clone(),
                pid: process.pid,
                rss_kib_start: at(start),
                rss_kib_first_window_end: first_window_end,
                rss_kib_end: end_kib,
                rss_growth_after_warmup_kib: growth,
                rss_growth_after_warmup_pct: growth_pct,
                running_at_end: end_kib.is_some(),
                panics_logged: process.log.as_deref().map_or(0, panics_logged),
            }
        })
        .collect()
}

/// Window `index` of `window_ns` within a run whose schedule ends at `end_ns` (the last
/// window is cut at the end of the run): `[start, end)` in ns after the start.
pub fn bounds_ns(index: usize, window_ns: u64, run_ns: u64) -> (u64, u64) {
    let start = (index as u64).saturating_mul(window_ns);
    let end = start.saturating_add(window_ns).min(run_ns.max(start));
    (start, end)
}

/// Windows of `window_ns` covering `run_ns` (at least one).
pub fn count(window_ns: u64, run_ns: u64) -> usize {
    if window_ns == 0 {
        return 1;
    }
    (run_ns.div_ceil(window_ns) as usize).clamp(1, WINDOWS_MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_read_and_a_dead_pid_has_none() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(running(std::process::id()));
        assert!(!running(u32::MAX - 1));
        // Pid numbers stop far below this (pid_max is at most 2^22).
        assert_eq!(rss_kib(u32::MAX - 1), None);
    }

    #[test]
    fn growth_is_measured_after_the_first_window() {
        let processes = vec![
            WatchedProcess {
                name: "a".into(),
                pid: 1,
                log: None,
            },
            WatchedProcess {
                name: "b".into(),
                pid: 2,
                log: None,
            },
        ];
        let start = vec![Some(100), Some(50)];
        let windows = vec![vec![Some(200), Some(80)], vec![Some(210), None]];
        let end = vec![Some(220), None];
        let reports = process_reports(&processes, &start, &windows, &end);
        assert_eq!(reports[0].rss_growth_after_warmup_kib, Some(20));
        assert_eq!(reports[0].rss_growth_after_warmup_pct, Some(10.0));
        assert!(reports[0].running_at_end);
        assert_eq!(reports[1].rss_growth_after_warmup_kib, None);
        assert!(!reports[1].running_at_end);
        // One window: nothing after the warm-up to judge.
        let single = process_reports(&processes, &start, &windows[..1], &end);
        assert_eq!(single[0].rss_growth_after_warmup_kib, None);
    }

    #[test]
    fn panics_are_counted_in_logs() {
        let path = std::env::temp_dir().join(format!("loadgen-panic-{}.log", std::process::id()));
        std::fs::write(
            &path,
            "started\nthread 'main' panicked at src/x.rs:1:1:\nboom\nthread 'w' panicked at y\n",
        )
        .unwrap();
        assert_eq!(panics_logged(&path), 2);
        std::fs::write(&path, "all fine\n").unwrap();
        assert_eq!(panics_logged(&path), 0);
        let _ = std::fs::remove_file(&path);
        assert_eq!(panics_logged(&path), 0);
    }

    #[test]
    fn windows_cover_the_run_and_the_last_is_cut() {
        let s = 1_000_000_000;
        assert_eq!(count(300 * s, 1_800 * s), 6);
        assert_eq!(count(300 * s, 10 * s), 1);
        assert_eq!(count(30 * s, 100 * s), 4);
        assert_eq!(bounds_ns(3, 30 * s, 100 * s), (90 * s, 100 * s));
        assert_eq!(bounds_ns(0, 300 * s, 10 * s), (0, 10 * s));
    }
}
