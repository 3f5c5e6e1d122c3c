//! The Prometheus text exposition format (0.0.4), written by every role that serves
//! `/metrics` (mixnode and gateway after the engine's own series, directory, issuer): one
//! writer, so every family gets its `# HELP` and `# TYPE` lines and label values are escaped
//! the same way everywhere. Also the series every role shares: build, process and uptime.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A family's type: counters only go up (until a restart), gauges go both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines; its samples follow with [`sample`].
pub fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    debug_assert!(name.starts_with("lethe_") || name.starts_with("process_"));
    debug_assert!(kind != Kind::Counter || name.ends_with("_total"));
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {}", kind.word());
}

/// Writes one sample line: `name{label="value",...} value`.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Value) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, text)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(text));
        }
        out.push('}');
    }
    out.push(' ');
    value.write(out);
    out.push('\n');
}

/// A family of one unlabelled counter.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, Kind::Counter, help);
    sample(out, name, &[], value);
}

/// A family of one unlabelled gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl Value) {
    family(out, name, Kind::Gauge, help);
    sample(out, name, &[], value);
}

/// A sample value: integers as they are, floats in Go's notation (`+Inf`, `NaN`).
pub trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// When this process started, on both clocks: the wall clock for
/// `process_start_time_seconds`, the monotonic one for `lethe_uptime_seconds`. The kernel's
/// record of the start where there is procfs (a mixnode may spend seconds allocating its
/// replay filter before anything here runs); else the first call, which every role makes
/// early ([`mark_start`]).
fn start() -> &'static (SystemTime, Instant) {
    static START: OnceLock<(SystemTime, Instant)> = OnceLock::new();
    START.get_or_init(|| {
        let (now_wall, now) = (SystemTime::now(), Instant::now());
        let started_wall = kernel_start_unix_s()
            .map(|s| UNIX_EPOCH + std::time::Duration::from_secs_f64(s))
            .filter(|started| *started <= now_wall)
            .unwrap_or(now_wall);
        let age = now_wall.duration_since(started_wall).unwrap_or_default();
        (started_wall, now.checked_sub(age).unwrap_or(now))
    })
}

/// The process's start from procfs: boot time (`btime` of `/proc/stat`) plus the start
/// time in clock ticks after boot (field 22 of `/proc/self/stat`).
fn kernel_start_unix_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_name
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|t| t.parse().ok())?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_s: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|t| t.trim().parse().ok())?;
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_s = u64::try_from(ticks_per_s).ok().filter(|t| *t > 0)?;
    Some(boot_s as f64 + ticks as f64 / ticks_per_s as f64)
}

/// Records the process's start time (idempotent: the first call wins).
pub fn mark_start() {
    let _ = start();
}

/// Seconds since the process started.
pub fn uptime_s() -> u64 {
    start().1.elapsed().as_secs()
}

/// The series every role publishes: `lethe_build_info` (version, commit, SIMD paths, role),
/// process start time, uptime and resident memory.
pub fn render_process(out: &mut String, role: &str) {
    let name = "lethe_build_info";
    family(
        out,
        name,
        Kind::Gauge,
        "Always 1: this binary's version, git commit, SIMD paths and node role.",
    );
    sample(
        out,
        name,
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", crate::ops::GIT_COMMIT),
            ("x25519", lethe_crypto::sphinx::batch::dh_path_name()),
            ("symmetric", lethe_crypto::simd::path_name()),
            ("role", role),
        ],
        1u64,
    );
    let (wall, _) = start();
    let started_s = wall
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge(
        out,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        started_s,
    );
    gauge(
        out,
        "lethe_uptime_seconds",
        "Seconds since the process started.",
        uptime_s(),
    );
    if let Some(bytes) = resident_memory_bytes() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes (/proc/self/statm).",
            bytes,
        );
    }
}

/// Resident set size: the second field of `/proc/self/statm` (pages) times the page size.
/// `None` where there is no procfs.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_bytes = u64::try_from(page_bytes).ok().filter(|b| *b > 0)?;
    Some(pages.saturating_mul(page_bytes))
}

/// Most distinct (endpoint, status) pairs counted: the endpoints are a fixed list and the
/// status codes a server sends are few, so this is a guard, not a working limit.
const REQUEST_SERIES_MAX: usize = 256;

/// HTTP requests by endpoint and status, for the axum services (directory, issuer). The
/// endpoint label is one of the service's routes or `other`: a peer choosing paths cannot
/// grow the series.
pub struct RequestCounts {
    endpoints: &'static [&'static str],
    counts: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl RequestCounts {
    pub fn new(endpoints: &'static [&'static str]) -> RequestCounts {
        RequestCounts {
            endpoints,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one answered request.
    pub fn record(&self, path: &str, status: u16) {
        let endpoint = self
            .endpoints
            .iter()
            .find(|e| **e == path)
            .copied()
            .unwrap_or("other");
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let full = counts.len() >= REQUEST_SERIES_MAX;
        if let Some(count) = counts.get_mut(&(endpoint, status)) {
            *count = count.saturating_add(1);
        } else if !full {
            counts.insert((endpoint, status), 1);
        }
    }

    pub fn render(&self, out: &mut String) {
        let name = "lethe_http_requests_total";
        family(
            out,
            name,
            Kind::Counter,
            "HTTP requests answered, by endpoint and status.",
        );
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for ((endpoint, status), count) in counts.iter() {
            let status = status.to_string();
            sample(
                out,
                name,
                &[("endpoint", endpoint), ("status", &status)],
                *count,
            );
        }
    }
}

/// Checks a scrape the way a Prometheus server would need it: every sample's family has a
/// `# TYPE` line before it, counters end in `_total`, and every value parses. Returns the
/// families by name and type. Used by the tests of every role.
pub fn check_exposition(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                return Err(format!("malformed TYPE line: {line}"));
            };
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("family {name} typed twice"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("counter {name} does not end in _total"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("no value: {line}"))?;
        let name = &line[..name_end];
        let value = line.rsplit(' ').next().unwrap_or("");
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            return Err(format!("value does not parse: {line}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("sample of {name} without a TYPE line before it"));
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_samples_and_escapes() {
        let mut out = String::new();
        counter(&mut out, "lethe_x_total", "An x.", 3);
        family(&mut out, "lethe_y", Kind::Gauge, "A y.");
        sample(&mut out, "lethe_y", &[("a", "q\"\\\n")], f64::INFINITY);
        assert_eq!(
            out,
            "# HELP lethe_x_total An x.\n# TYPE lethe_x_total counter\nlethe_x_total 3\n\
             # HELP lethe_y A y.\n# TYPE lethe_y gauge\nlethe_y{a=\"q\\\"\\\\\\n\"} +Inf\n"
        );
        let types = check_exposition(&out).unwrap();
        assert_eq!(types["lethe_y"], "gauge");
    }

    #[test]
    fn process_series_parse_and_uptime_is_a_gauge() {
        mark_start();
        let mut out = String::new();
        render_process(&mut out, "mixnode");
        let types = check_exposition(&out).unwrap();
        assert_eq!(types["lethe_uptime_seconds"], "gauge");
        assert_eq!(types["lethe_build_info"], "gauge");
        assert!(out.contains("role=\"mixnode\"} 1\n"));
        assert!(resident_memory_bytes().is_some_and(|b| b > 0));
        // The kernel's start of this test process: in the past, and not long ago.
        let started = kernel_start_unix_s().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} {now}"
        );
    }

    #[test]
    fn check_refuses_untyped_samples() {
        assert!(check_exposition("lethe_x 1\n").is_err());
        assert!(check_exposition("# TYPE lethe_x counter\nlethe_x 1\n").is_err());
        assert!(check_exposition("# TYPE lethe_x_total counter\nlethe_x_total one\n").is_err());
    }

    #[test]
    fn request_endpoints_are_bounded() {
        let counts = RequestCounts::new(&["/v1/key"]);
        counts.record("/v1/key", 200);
        counts.record("/anything", 404);
        counts.record("/else", 404);
        let mut out = String::new();
        counts.render(&mut out);
        assert!(out.contains("endpoint=\"other\",status=\"404\"} 2\n"));
        assert!(out.contains("endpoint=\"/v1/key\",status=\"200\"} 1\n"));
    }
}
