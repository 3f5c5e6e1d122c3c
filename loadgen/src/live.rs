//! The live view, as oha and k6 show one: once per second while a run sends and drains, one
//! line on stderr with the elapsed time, the offered and sent rates, what was sent and
//! delivered, what is in flight, what is undelivered so far and the last second's p50/p99.
//! Only when stderr is a terminal (and not with `--quiet`, `--no-live` or `--json`): a piped
//! or JSON run stays clean. [`line`] is the formatter (tested directly: tests run piped).

use std::io::IsTerminal as _;

/// Whether the live view is drawn: a human watches stderr, and asked for no silence.
pub fn enabled(quiet: bool, no_live: bool, json: bool) -> bool {
    !quiet && !no_live && !json && std::io::stderr().is_terminal()
}

/// What one live line shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub elapsed_s: f64,
    /// The schedule's rate (what the run offers).
    pub offered_rate_per_s: f64,
    /// Handed to the kernel in the last second, per second.
    pub sent_rate_per_s: f64,
    pub sent: u64,
    pub delivered: u64,
    /// Packets scheduled more than `horizon_s` ago (`due`) and how many of them have not
    /// arrived: what the report will count as lost if they never do (not sent included).
    pub due: u64,
    pub undelivered: u64,
    pub horizon_s: f64,
    /// The last whole second of arrivals: deliveries, p50 and p99 ms.
    pub last_second: Option<(u64, f64, f64)>,
}

/// One live line (no newline).
pub fn line(s: &Sample) -> String {
    let in_flight = s.sent.saturating_sub(s.delivered);
    let undelivered_pct = if s.due > 0 {
        s.undelivered as f64 * 100.0 / s.due as f64
    } else {
        0.0
    };
    let latency = match s.last_second {
        Some((n, p50, p99)) => format!("p50 {p50:.2} ms  p99 {p99:.2} ms (last 1 s, n={n})"),
        None => "p50 -  p99 - (nothing arrived in the last second)".to_string(),
    };
    format!(
        "{:>6.1}s  offered {:.0}/s  sent {} ({:.0}/s)  delivered {}  in flight {}  \
         undelivered {} ({undelivered_pct:.2}% of those due > {:.1} s ago)  {latency}",
        s.elapsed_s,
        s.offered_rate_per_s,
        s.sent,
        s.sent_rate_per_s,
        s.delivered,
        in_flight,
        s.undelivered,
        s.horizon_s,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_rates_counts_in_flight_undelivered_and_the_last_second() {
        let sample = Sample {
            elapsed_s: 12.04,
            offered_rate_per_s: 500.0,
            sent_rate_per_s: 499.6,
            sent: 6_000,
            delivered: 5_890,
            due: 4_000,
            undelivered: 2,
            horizon_s: 2.0,
            last_second: Some((498, 4.213, 9.8)),
        };
        let text = line(&sample);
        assert_eq!(
            text,
            "  12.0s  offered 500/s  sent 6000 (500/s)  delivered 5890  in flight 110  \
             undelivered 2 (0.05% of those due > 2.0 s ago)  p50 4.21 ms  p99 9.80 ms \
             (last 1 s, n=498)"
        );
        let quiet = Sample {
            due: 0,
            undelivered: 0,
            delivered: 7_000,
            last_second: None,
            ..sample
        };
        let text = line(&quiet);
        assert!(text.contains("in flight 0"), "{text}");
        assert!(text.contains("undelivered 0 (0.00%"), "{text}");
        assert!(
            text.contains("nothing arrived in the last second"),
            "{text}"
        );
    }
}
