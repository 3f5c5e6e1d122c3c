//! Where and with what a run was made (the report's `environment`), and the wall-clock times
//! loadgen reads and writes (RFC 3339, UTC): a figure means little without the machine, the
//! code and the command that produced it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What the report says when something could not be found out.
pub const UNKNOWN: &str = "unknown";

/// The run's environment: time, machine, code, command.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    /// When loadgen started (RFC 3339, UTC) and the same in unix seconds.
    pub started_at: String,
    pub started_at_unix_s: f64,
    pub host: String,
    pub os: String,
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The git commit loadgen was built from (build time; "unknown" outside a checkout).
    pub git_commit: String,
    /// The SIMD paths lethe_crypto chose at run time for loadgen's own packet creation.
    pub simd: SimdPaths,
    /// The SIMD paths of the nodes loadgen scraped, by node name ("unknown" when a node does
    /// not publish them; see `nodes_simd_note`).
    pub nodes_simd: Vec<NodeSimd>,
    pub nodes_simd_note: Option<String>,
    /// The command line, as given.
    pub command_line: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimdPaths {
    /// The X25519 path behind Sphinx batches (`lethe_crypto::sphinx::batch::dh_path_name`).
    pub x25519: String,
    /// The symmetric (ChaCha20, Lioness) path (`lethe_crypto::simd::path_name`).
    pub symmetric: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSimd {
    pub name: String,
    pub x25519: String,
    pub symmetric: String,
}

/// Loadgen's own paths (detected once, cached by lethe_crypto).
pub fn own_simd() -> SimdPaths {
    SimdPaths {
        x25519: lethe_crypto::sphinx::batch::dh_path_name().to_string(),
        symmetric: lethe_crypto::simd::path_name().to_string(),
    }
}

/// The environment of this process now; `nodes_simd` is filled in after the nodes' scrape.
pub fn collect() -> Environment {
    let now = SystemTime::now();
    Environment {
        started_at: rfc3339(now),
        started_at_unix_s: unix_s(now),
        host: host(),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        cpu_model: cpu_model(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        git_commit: lethe_nodes::ops::GIT_COMMIT.to_string(),
        simd: own_simd(),
        nodes_simd: Vec::new(),
        nodes_simd_note: None,
        command_line: std::env::args().collect(),
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| UNKNOWN.into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model_from(&text))
        .unwrap_or_else(|| UNKNOWN.into())
}

/// `model name` (x86), else `Model` or `Hardware` (ARM) from /proc/cpuinfo.
fn cpu_model_from(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu model"] {
        let found = cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        });
        if let Some(model) = found.filter(|m| !m.is_empty()) {
            return Some(model);
        }
    }
    None
}

pub fn unix_s(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `time` as RFC 3339 in UTC with milliseconds, e.g. `2026-12-07T05:45:00.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01 (the inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `--start-at`: unix seconds (`1796000000`, `1796000000.5`) or RFC 3339
/// (`2026-12-07T05:45:00Z`, `2026-12-07T06:45:00.250+01:00`; `T` or a space) → the time.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "{text:?}: expected unix seconds (1796000000) or RFC 3339 (2026-12-07T05:45:00Z, \
             with a Z or +HH:MM offset)"
        )
    };
    let number = |s: &str| -> Result<i64, String> {
        if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    // Nanoseconds from the digits after a decimal point (exact, unlike a float).
    let nanos_of = |fraction: &str| -> Result<u32, String> {
        if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let digits: String = fraction
            .chars()
            .chain(std::iter::repeat('0'))
            .take(9)
            .collect();
        digits.parse::<u32>().map_err(|_| bad())
    };
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let secs = u64::try_from(number(whole)?).map_err(|_| bad())?;
        let nanos = if fraction.is_empty() {
            0
        } else {
            nanos_of(fraction)?
        };
        if secs >= 100_000_000_000 {
            return Err(bad());
        }
        return Ok(UNIX_EPOCH + Duration::new(secs, nanos));
    }
    let (date, rest) = text.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut fields = date.split('-');
    let (Some(y), Some(mo), Some(d), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let (year, month, day) = (number(y)?, number(mo)?, number(d)?);
    // The offset: Z, or +HH:MM / -HH:MM after the time.
    let (clock, offset_s) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (clock, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':').ok_or_else(bad)?;
        let (h, m) = (number(h)?, number(m)?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        (clock, sign * (h * 3600 + m * 60))
    };
    let (whole, fraction) = match clock.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (clock, None),
    };
    let mut parts = whole.split(':');
    let (Some(h), Some(mi), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (hour, minute, second) = (number(h)?, number(mi)?, number(s)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1970..=5000).contains(&year)
        || !(1..=days_in_month).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let nanos = match fraction {
        Some(f) => nanos_of(f)?,
        None => 0,
    };
    let secs = days_from_civil(year, month as u32, day as u32) * 86_400
        + hour * 3600
        + minute * 60
        + second
        - offset_s;
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A `--start-at` time must lie ahead (a synchronised start that already passed would start
/// the generators apart), and within a day (a typo in the date should not park loadgen).
pub fn check_start_at(at: SystemTime, now: SystemTime) -> Result<(), String> {
    match at.duration_since(now) {
        Err(past) => Err(format!(
            "--start-at {} is {:.1} s in the past (now {})",
            rfc3339(at),
            past.duration().as_secs_f64(),
            rfc3339(now)
        )),
        Ok(ahead) if ahead > Duration::from_secs(86_400) => Err(format!(
            "--start-at {} is more than a day ahead (now {})",
            rfc3339(at),
            rfc3339(now)
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_and_parses_rfc3339() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2026-12-07T05:45:00Z
        let t = at(1_796_622_300, 123_000_000);
        assert_eq!(rfc3339(t), "2026-12-07T05:45:00.123Z");
        assert_eq!(parse_time("2026-12-07T05:45:00.123Z").unwrap(), t);
        assert_eq!(parse_time("2026-12-07T06:45:00.123+01:00").unwrap(), t);
        assert_eq!(parse_time("2026-12-07 03:15:00.123-02:30").unwrap(), t);
        assert_eq!(parse_time("1796622300.123").unwrap(), t);
        assert_eq!(parse_time("1796622300").unwrap(), at(1_796_622_300, 0));
        // A leap day and the turn of a century.
        let leap = parse_time("2028-02-29T00:00:00Z").unwrap();
        assert_eq!(rfc3339(leap), "2028-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339(parse_time("2100-03-01T00:00:00Z").unwrap()),
            "2100-03-01T00:00:00.000Z"
        );
        for bad in [
            "",
            "soon",
            "2026-12-07",
            "2026-12-07T05:45:00",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T05:45Z",
            "2026-12-07T05:45:00+1:00x",
            "-5",
            "1e20",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_start_in_the_past_or_far_ahead_is_refused() {
        let now = at(1_796_622_300, 0);
        assert!(check_start_at(at(1_796_622_299, 0), now).is_err());
        assert!(check_start_at(at(1_796_622_310, 0), now).is_ok());
        assert!(check_start_at(at(1_796_622_300 + 90_000, 0), now).is_err());
    }

    #[test]
    fn cpu_model_lines() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R)\n";
        assert_eq!(cpu_model_from(x86).unwrap(), "Intel(R) Xeon(R)");
        assert_eq!(cpu_model_from("Hardware\t: BCM2835\n").unwrap(), "BCM2835");
        assert!(cpu_model_from("processor : 0\n").is_none());
    }
}
