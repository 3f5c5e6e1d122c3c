//! Pass or fail for a `run`: the thresholds given (`--max-loss`, `--max-p99-ms`,
//! `--max-rss-growth-pct`) and the rules that always hold. loadgen exits 1 on a failed
//! verdict (after printing the report), 2 on an error (no report), 0 on a pass.
//!
//! RSS growth is judged after the first window (the warm-up), less the change in the replay
//! filters a node states it holds: a run that ends inside a key rotation's overlap holds a
//! second filter, which is no leak (see `windows`).
//!
//! Always a failure, thresholds or not: nothing delivered; more than
//! [`DEFAULT_MAX_LOSS_PCT`] undelivered when no `--max-loss` is given (a network that loses
//! more than half is broken, not slow, and total loss must never pass); a local node
//! that exited or logged a panic; a run cut short (interrupted, or stopped by a node failure).

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::ThresholdArgs;
use crate::report::RunReport;
use crate::windows::ProcessReport;

/// The loss bound when no `--max-loss` is given, percent of offered packets.
pub const DEFAULT_MAX_LOSS_PCT: f64 = 50.0;

/// The bounds a run was judged against.
#[derive(Clone, Debug, Serialize)]
pub struct Thresholds {
    pub max_loss_pct: f64,
    /// True when `max_loss_pct` is the default rule, not a `--max-loss`.
    pub max_loss_pct_default: bool,
    pub max_p99_ms: Option<f64>,
    pub max_rss_growth_pct: Option<f64>,
}

impl Thresholds {
    pub fn from_args(args: &ThresholdArgs) -> Thresholds {
        Thresholds {
            max_loss_pct: args.max_loss.unwrap_or(DEFAULT_MAX_LOSS_PCT),
            max_loss_pct_default: args.max_loss.is_none(),
            max_p99_ms: args.max_p99_ms,
            max_rss_growth_pct: args.max_rss_growth_pct,
        }
    }
}

/// The verdict (the report's `verdict`).
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub thresholds: Thresholds,
    /// Offered packets not delivered (lost, never sent, or in failed writes), percent of
    /// offered: what `max_loss_pct` bounds.
    pub undelivered_pct: f64,
    pub p99_ms: Option<f64>,
    /// Largest RSS growth after the first window over all watched processes (loadgen's
    /// own included), less the replay filters a node says it added or dropped, percent, and
    /// the process that grew it.
    pub rss_growth_pct_max: Option<f64>,
    pub rss_growth_pct_max_process: Option<String>,
    /// One line per failed rule, each naming the rule and the figure.
    pub failures: Vec<String>,
    /// Rules that could not be applied, and why.
    pub not_judged: Vec<String>,
}

/// Judges `run` against `thresholds`.
pub fn judge(run: &RunReport, thresholds: Thresholds) -> Verdict {
    let mut failures = Vec::new();
    let mut not_judged = Vec::new();
    if run.interrupted {
        failures.push(format!(
            "interrupted: the run stopped after {:.1} s of sending and did not complete",
            run.times.send_window_s
        ));
    }
    match &run.network_failure {
        Some(failure) => failures.push(format!(
            "node failure: {}",
            failure.lines().next().unwrap_or("the network failed")
        )),
        None => {
            for process in &run.processes {
                if !process.running_at_end {
                    failures.push(format!(
                        "node failure: {} (pid {}) was not running at the end of the run",
                        process.name, process.pid
                    ));
                }
            }
        }
    }
    for process in &run.processes {
        if process.panics_logged > 0 {
            failures.push(format!(
                "panic: {} logged {} panic(s) (its log holds the message)",
                process.name, process.panics_logged
            ));
        }
    }
    let offered = run.offered.packets;
    let delivered = run.delivered.packets;
    let undelivered_pct = if offered > 0 {
        offered.saturating_sub(delivered) as f64 * 100.0 / offered as f64
    } else {
        0.0
    };
    let rule = if thresholds.max_loss_pct_default {
        format!(
            "the default bound of {}% (no --max-loss given)",
            thresholds.max_loss_pct
        )
    } else {
        format!("--max-loss {}%", thresholds.max_loss_pct)
    };
    if delivered == 0 {
        failures.push(format!(
            "loss: nothing was delivered ({} offered, {} sent)",
            offered, run.sent.packets
        ));
    } else if undelivered_pct > thresholds.max_loss_pct {
        failures.push(format!(
            "loss: {undelivered_pct:.3}% of offered packets undelivered (lost {}, not sent {}, \
             failed {} of {offered}) > {rule}",
            run.delivered.lost, run.sent.not_sent, run.sent.failed
        ));
    }
    let p99_ms = run.latency_ms.p99;
    if let Some(bound) = thresholds.max_p99_ms {
        match p99_ms {
            Some(p99) if p99 > bound => failures.push(format!(
                "p99: {p99:.2} ms end to end > --max-p99-ms {bound} ms"
            )),
            Some(_) => {}
            None => failures.push(format!(
                "p99: no latency measured (nothing delivered); --max-p99-ms {bound} ms"
            )),
        }
    }
    // Loadgen is judged like the nodes: what it keeps per run is allocated when the run
    // starts (see `tracker`), so growth after the first window is a leak there too. A node's
    // growth is judged less the replay filters it says it added (a key rotation's overlap):
    // memory it accounts for and gives back when the overlap ends.
    let growths: Vec<(&ProcessReport, i64, f64)> = run
        .processes
        .iter()
        .filter_map(|p| {
            Some((
                p,
                p.rss_growth_unaccounted_kib?,
                p.rss_growth_unaccounted_pct?,
            ))
        })
        .collect();
    let largest = growths
        .iter()
        .copied()
        .reduce(|a, b| if b.2 > a.2 { b } else { a });
    let rss_growth_pct_max = largest.map(|(_, _, pct)| pct);
    let rss_growth_pct_max_process = largest.map(|(p, _, _)| p.name.clone());
    if let Some(bound) = thresholds.max_rss_growth_pct {
        if growths.is_empty() {
            not_judged.push(if run.windows.len() < 2 {
                "RSS growth: the run has a single window, so there is no warm-up to leave \
                 out (use a --window shorter than --duration)"
                    .to_string()
            } else {
                "RSS growth: no process was sampled at the end of the first window and at \
                 the end of the run"
                    .to_string()
            });
        }
        for (p, kib, pct) in &growths {
            if *pct > bound {
                failures.push(format!(
                    "RSS: {} grew {pct:.1}% ({:+.1} MiB) from the end of the first window \
                     to the end of the run{} > --max-rss-growth-pct {bound}%",
                    p.name,
                    *kib as f64 / 1024.0,
                    replay_note(p)
                ));
            }
        }
    }
    Verdict {
        passed: failures.is_empty(),
        thresholds,
        undelivered_pct,
        p99_ms,
        rss_growth_pct_max,
        rss_growth_pct_max_process,
        failures,
        not_judged,
    }
}

/// What a node's replay filters changed by, when they did: `, beyond its replay filters
/// (+40.7 MiB: a key rotation's overlap)`.
fn replay_note(p: &ProcessReport) -> String {
    let (Some(growth), Some(unaccounted)) =
        (p.rss_growth_after_warmup_kib, p.rss_growth_unaccounted_kib)
    else {
        return String::new();
    };
    match growth - unaccounted {
        0 => String::new(),
        change => format!(
            ", beyond its replay filters ({:+.1} MiB: {})",
            change as f64 / 1024.0,
            if change > 0 {
                "a key rotation's overlap"
            } else {
                "an overlap that ended"
            }
        ),
    }
}

/// The verdict's lines in the text report.
pub fn render(out: &mut String, verdict: &Verdict) {
    for line in &verdict.not_judged {
        let _ = writeln!(out, "  NOT JUDGED: {line}");
    }
    if verdict.passed {
        let t = &verdict.thresholds;
        let _ = writeln!(
            out,
            "PASS: undelivered {:.3}% <= {}%{}{}",
            verdict.undelivered_pct,
            t.max_loss_pct,
            match (t.max_p99_ms, verdict.p99_ms) {
                (Some(bound), Some(p99)) => format!(", p99 {p99:.2} ms <= {bound} ms"),
                _ => String::new(),
            },
            match (t.max_rss_growth_pct, verdict.rss_growth_pct_max) {
                (Some(bound), Some(growth)) => format!(
                    ", RSS growth after window 1 at most {growth:.1}% ({}) <= {bound}%",
                    verdict.rss_growth_pct_max_process.as_deref().unwrap_or("?")
                ),
                _ => String::new(),
            }
        );
    } else {
        for failure in &verdict.failures {
            let _ = writeln!(out, "FAIL: {failure}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::report::{
        Delivered, DroppedByNodes, Generator, Ladder, Offered, Receiver, Sent, Times,
    };

    fn ladder(p99: Option<f64>) -> Ladder {
        Ladder {
            count: 0,
            min: None,
            mean: None,
            p50: None,
            p90: None,
            p99,
            p999: None,
            p9999: None,
            max: None,
            n_too_small: Vec::new(),
        }
    }

    /// A run of `offered` packets, all sent, `delivered` of them delivered, p99 `p99_ms`; the
    /// fields the rules do not read are empty.
    fn run(offered: u64, delivered: u64, p99_ms: Option<f64>) -> RunReport {
        RunReport {
            run_id: 1,
            interrupted: false,
            offered: Offered {
                packets: offered,
                rate_per_s: 100.0,
            },
            sent: Sent {
                packets: offered,
                rate_per_s: 100.0,
                late: 0,
                late_ratio: 0.0,
                not_sent: 0,
                failed: 0,
                lateness_ms: ladder(None),
            },
            delivered: Delivered {
                packets: delivered,
                rate_per_s: 100.0,
                lost: offered - delivered,
                loss_ratio: 0.0,
                duplicates: 0,
                rejected_at_receiver: 0,
            },
            latency_ms: ladder(p99_ms),
            dropped_by_nodes: DroppedByNodes {
                total: 0,
                by_reason: Default::default(),
            },
            nodes: Vec::new(),
            generator: Generator {
                capacity_per_s: 1.0,
                achieved_over_capacity: 0.0,
                created: 0,
                prebuilt: 0,
                errors: 0,
                busy_ratio: 0.0,
                ahead_wait_s: 0.0,
                sender_busy_ratio: 0.0,
            },
            receiver: Receiver {
                stats: Default::default(),
                busy_ratio: 0.0,
            },
            gateway_clients: None,
            timeseries: Vec::new(),
            times: Times {
                expected_mix_delay_ms: 0.0,
                send_window_s: 1.0,
                drain_s: 0.0,
                wall_s: 1.0,
            },
            network_failure: None,
            windows: Vec::new(),
            processes: Vec::new(),
            topology: None,
            start: None,
            node_traffic: Vec::new(),
            breakdown: None,
        }
    }

    fn none() -> Thresholds {
        Thresholds::from_args(&ThresholdArgs::default())
    }

    fn process(name: &str, first: u64, end: Option<u64>) -> ProcessReport {
        let growth = end.map(|e| e as i64 - first as i64);
        let pct = end.map(|e| (e as f64 - first as f64) * 100.0 / first as f64);
        ProcessReport {
            name: name.into(),
            pid: 7,
            rss_kib_start: Some(first),
            rss_kib_first_window_end: Some(first),
            rss_kib_end: end,
            rss_growth_after_warmup_kib: growth,
            rss_growth_after_warmup_pct: pct,
            replay_filters_kib_first_window_end: None,
            replay_filters_kib_end: None,
            rss_growth_unaccounted_kib: growth,
            rss_growth_unaccounted_pct: pct,
            memory_kib_max_stated: None,
            running_at_end: end.is_some(),
            panics_logged: 0,
        }
    }

    /// Late packets are warned about only when they can distort the p99: more than 1 % late
    /// and their lateness p99 more than 10 % of the end-to-end p99. The default run's 92 late
    /// of 5,000, 1 ms late against a 12 ms p99, are not.
    #[test]
    fn late_packets_warn_only_when_they_can_move_the_p99() {
        let mut r = run(5000, 5000, Some(12.0));
        r.sent.late = 92;
        r.sent.late_ratio = 92.0 / 5000.0;
        r.sent.lateness_ms.p99 = Some(1.06);
        assert!(crate::report::warnings(&r, 1.0, (0, 0)).is_empty());
        r.sent.lateness_ms.p99 = Some(5.0);
        let warnings = crate::report::warnings(&r, 1.0, (0, 0));
        assert!(
            warnings.iter().any(|w| w.contains("92 packets")),
            "{warnings:?}"
        );
        r.sent.late = 40;
        r.sent.late_ratio = 40.0 / 5000.0;
        assert!(crate::report::warnings(&r, 1.0, (0, 0)).is_empty());
    }

    #[test]
    fn without_thresholds_total_loss_fails_and_a_working_run_passes() {
        let v = judge(&run(1000, 0, None), none());
        assert!(!v.passed);
        assert!(
            v.failures[0].starts_with("loss: nothing was delivered"),
            "{v:?}"
        );
        let v = judge(&run(1000, 400, Some(5.0)), none());
        assert!(!v.passed);
        assert!(v.failures[0].contains("60.000%"), "{v:?}");
        assert!(v.failures[0].contains("default bound of 50%"), "{v:?}");
        let v = judge(&run(1000, 999, Some(5.0)), none());
        assert!(v.passed, "{v:?}");
        assert_eq!(v.undelivered_pct, 0.1);
    }

    #[test]
    fn thresholds_name_the_rule_and_the_figure() {
        let args = ThresholdArgs {
            max_loss: Some(0.1),
            max_p99_ms: Some(100.0),
            max_rss_growth_pct: Some(10.0),
        };
        let mut report = run(10_000, 9_980, Some(150.0));
        report.windows = Vec::new();
        report.processes = vec![
            process("mix1", 1000, Some(1200)),
            process("mix2", 1000, Some(1050)),
        ];
        let v = judge(&report, Thresholds::from_args(&args));
        assert!(!v.passed);
        assert_eq!(v.failures.len(), 3, "{v:?}");
        assert!(v.failures[0].contains("0.200%") && v.failures[0].contains("--max-loss 0.1%"));
        assert!(v.failures[1].contains("150.00 ms") && v.failures[1].contains("--max-p99-ms 100"));
        assert!(v.failures[2].starts_with("RSS: mix1 grew 20.0%"), "{v:?}");
        assert_eq!(v.rss_growth_pct_max, Some(20.0));
        let mut text = String::new();
        render(&mut text, &v);
        assert_eq!(text.lines().filter(|l| l.starts_with("FAIL: ")).count(), 3);
    }

    #[test]
    fn a_dead_node_a_panic_or_an_interruption_fails_the_run() {
        let mut report = run(1000, 1000, Some(5.0));
        report.processes = vec![process("mix1", 1000, None)];
        let v = judge(&report, none());
        assert!(
            v.failures[0].contains("mix1 (pid 7) was not running"),
            "{v:?}"
        );
        report.network_failure = Some("testnet node mix1 (pid 7) has exited; its log:\n...".into());
        let v = judge(&report, none());
        assert_eq!(v.failures.len(), 1, "one line for one death: {v:?}");
        assert_eq!(
            v.failures[0],
            "node failure: testnet node mix1 (pid 7) has exited; its log:"
        );
        let mut report = run(1000, 1000, Some(5.0));
        report.processes = vec![process("mix1", 1000, Some(1000))];
        report.processes[0].panics_logged = 2;
        report.interrupted = true;
        let v = judge(&report, none());
        assert_eq!(v.failures.len(), 2, "{v:?}");
        assert!(v.failures[0].starts_with("interrupted"));
        assert!(v.failures[1].starts_with("panic: mix1 logged 2"));
    }

    #[test]
    fn loadgen_is_judged_like_the_nodes_and_the_largest_grower_is_named() {
        let args = ThresholdArgs {
            max_rss_growth_pct: Some(20.0),
            ..ThresholdArgs::default()
        };
        let mut report = run(1000, 1000, Some(5.0));
        report.processes = vec![
            process("mix1", 1000, Some(1100)),
            process("loadgen", 11_000, Some(18_000)),
        ];
        let v = judge(&report, Thresholds::from_args(&args));
        assert!(!v.passed);
        assert!(
            v.failures[0].starts_with("RSS: loadgen grew 63.6%"),
            "{v:?}"
        );
        assert_eq!(v.rss_growth_pct_max_process.as_deref(), Some("loadgen"));
        report.processes[1] = process("loadgen", 11_000, Some(11_200));
        let v = judge(&report, Thresholds::from_args(&args));
        assert!(v.passed, "{v:?}");
        assert_eq!(v.rss_growth_pct_max_process.as_deref(), Some("mix1"));
        let mut text = String::new();
        render(&mut text, &v);
        assert!(text.contains("at most 10.0% (mix1) <= 20%"), "{text}");
    }

    #[test]
    fn rss_growth_needs_two_windows() {
        let args = ThresholdArgs {
            max_rss_growth_pct: Some(10.0),
            ..ThresholdArgs::default()
        };
        let mut report = run(1000, 1000, Some(5.0));
        let mut single = process("mix1", 1000, Some(5000));
        single.rss_growth_after_warmup_kib = None;
        single.rss_growth_after_warmup_pct = None;
        single.rss_growth_unaccounted_kib = None;
        single.rss_growth_unaccounted_pct = None;
        report.processes = vec![single];
        let v = judge(&report, Thresholds::from_args(&args));
        assert!(v.passed, "{v:?}");
        assert_eq!(v.not_judged.len(), 1);
        assert!(v.not_judged[0].contains("single window"));
    }

    /// Samples of a mixnode from loadgen's windows: a run that ends inside a key rotation's
    /// overlap (a second 41.7 MiB filter, as the soak's testnet sizes it) passes; the same node
    /// growing as much with no filter to account for it fails, and so does a leak hidden
    /// behind an overlap that ended.
    #[test]
    fn a_rotation_overlap_is_no_leak_and_a_leak_still_fails() {
        use crate::windows::{process_reports, MemorySample, WatchedProcess};
        let args = ThresholdArgs {
            max_rss_growth_pct: Some(20.0),
            ..ThresholdArgs::default()
        };
        let filter_kib = 41_700;
        let node = |rss_kib, filters: u64| {
            Some(MemorySample {
                rss_kib,
                replay_filters_kib: Some(filters * filter_kib),
                stated_max_kib: Some(2 * filter_kib + 16_400),
            })
        };
        let judge_samples = |windows: Vec<Vec<Option<MemorySample>>>| {
            let watched = [WatchedProcess {
                name: "mix1".into(),
                pid: 7,
                log: None,
                metrics: None,
            }];
            let end = windows.last().unwrap().clone();
            let mut report = run(1000, 1000, Some(5.0));
            report.processes = process_reports(&watched, &windows[0], &windows, &end);
            judge(&report, Thresholds::from_args(&args))
        };
        // 30 minutes in 5-minute windows; the rotation comes at 25 minutes: +83 % RSS.
        let mut windows: Vec<_> = (0..5).map(|w| vec![node(50_300 + w * 20, 1)]).collect();
        windows.push(vec![node(92_100, 2)]);
        let v = judge_samples(windows.clone());
        assert!(v.passed, "{v:?}");
        let growth = v.rss_growth_pct_max.unwrap();
        assert!(growth < 1.0, "{growth}");
        let mut text = String::new();
        render(&mut text, &v);
        assert!(text.starts_with("PASS: "), "{text}");

        // The same RSS with one filter stated: a leak.
        windows[5] = vec![node(92_100, 1)];
        let v = judge_samples(windows.clone());
        assert!(!v.passed, "{v:?}");
        assert!(v.failures[0].starts_with("RSS: mix1 grew 83.1%"), "{v:?}");
        assert!(!v.failures[0].contains("replay filters"), "{v:?}");

        // Window 1 ends inside an overlap, the run after it, and 23 MiB leaked meanwhile: the
        // filter given back does not hide it.
        let mut windows = vec![vec![node(92_000, 2)]];
        windows.extend((0..5).map(|w| vec![node(50_300 + w * 6_000, 1)]));
        let v = judge_samples(windows);
        assert!(!v.passed, "{v:?}");
        assert!(
            v.failures[0].contains("beyond its replay filters (-40.7 MiB: an overlap that ended)"),
            "{v:?}"
        );
    }
}
