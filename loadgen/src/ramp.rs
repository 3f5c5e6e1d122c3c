//! Ramps (`loadgen node`, `loadgen sweep`): steps of rising rate until a step is not
//! sustained, then a few steps between the last sustained rate and the first failed one.

use crate::cli::RampArgs;
use crate::driver::Driver;
use crate::limits::QUEUED_BYTES_MAX;
use crate::report::{self, Ramp, Step};
use crate::run::{fits_prebuilt, run_load, LoadParams, RunOutcome};

/// What the ramp found, and the run to show in detail.
pub struct RampResult {
    pub ramp: Ramp,
    pub detail: RunOutcome,
}

/// The default p99 bound: 100 ms, plus room for the mix delays (the p99 of one hop's
/// exponential delay is 4.6 mu; three hops' sum stays under 3 x that).
pub fn p99_bound_ms(args: &RampArgs, delay_ms_mean: f64) -> f64 {
    args.p99_bound_ms.unwrap_or(100.0 + 13.8 * delay_ms_mean)
}

struct Bounds {
    loss_max: f64,
    p99_ms_max: f64,
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
/// Infinite values sort last (a trial that delivered nothing has an infinite p99).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => {
            let (a, b) = (sorted.get(n / 2 - 1)?, sorted.get(n / 2)?);
            // Two infinite middles stay infinite (their mean would be NaN only for +inf - inf).
            Some(if a.is_infinite() || b.is_infinite() {
                a.max(*b)
            } else {
                (a + b) / 2.0
            })
        }
    }
}

/// One trial's figures that the step's rule reads.
struct Trial {
    loss_ratio: f64,
    delivered_share: f64,
    /// Infinite when nothing was delivered.
    p99_ms: f64,
    p50_ms: f64,
    sent_rate_per_s: f64,
    delivered_rate_per_s: f64,
    late: u64,
    dropped_by_nodes: u64,
    delivered: u64,
}

/// The rule a step passes by, as the report states it.
fn rule(bounds: &Bounds, trials: u32) -> String {
    format!(
        "a step is sustained when, over its {trials} trial(s), the median loss (lost / sent) is \
         at most {:.3}%, the median delivered share of offered at least {:.3}%, and the median \
         p99 at most {} ms",
        bounds.loss_max * 100.0,
        (1.0 - bounds.loss_max) * 100.0,
        bounds.p99_ms_max
    )
}

/// One step of `trials` runs at `params`' rate (run ids from `*run_id + 1`): its summary, the
/// run to show (the trial whose p99 is the median), and why it was not sustained (`None` if
/// it was). Medians, because one short trial on a shared machine is noisy: a single slow
/// second could fail a rate the network sustains, or a lucky one pass it.
fn step(
    driver: &mut dyn Driver,
    params: &dyn Fn(u32) -> LoadParams,
    trials: u32,
    run_id: &mut u32,
    bounds: &Bounds,
    capacity_per_s: f64,
) -> Result<(Step, RunOutcome, Option<String>), String> {
    let mut done: Vec<(Trial, RunOutcome)> = Vec::new();
    let mut rate = 0.0;
    for _ in 0..trials.max(1) {
        *run_id += 1;
        let trial_params = params(*run_id);
        rate = trial_params.rate_per_s;
        let outcome = run_load(driver, &trial_params)?;
        if let Some(failure) = &outcome.network_failure {
            // A ramp measures a working network: a dead node ends it.
            return Err(failure.clone());
        }
        let run = report::run_report(&outcome, capacity_per_s);
        let trial = Trial {
            loss_ratio: run.delivered.loss_ratio,
            delivered_share: run.delivered.packets as f64 / run.offered.packets.max(1) as f64,
            p99_ms: run.latency_ms.p99.unwrap_or(f64::INFINITY),
            p50_ms: run.latency_ms.p50.unwrap_or(f64::INFINITY),
            sent_rate_per_s: run.sent.rate_per_s,
            delivered_rate_per_s: run.delivered.rate_per_s,
            late: run.sent.late,
            dropped_by_nodes: run.dropped_by_nodes.total,
            delivered: run.delivered.packets,
        };
        done.push((trial, outcome));
        // Let the trial's stragglers clear before the next one.
        std::thread::sleep(std::time::Duration::from_millis(
            crate::limits::RAMP_TRIAL_PAUSE_MS,
        ));
        if crate::run::interrupted() {
            break;
        }
    }
    let pick = |f: fn(&Trial) -> f64| -> Vec<f64> { done.iter().map(|(t, _)| f(t)).collect() };
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    let loss = median(&pick(|t| t.loss_ratio)).unwrap_or(1.0);
    let delivered_share = median(&pick(|t| t.delivered_share)).unwrap_or(0.0);
    let p99_ms = finite(median(&pick(|t| t.p99_ms)));
    let loss_ok = loss <= bounds.loss_max && delivered_share >= 1.0 - bounds.loss_max;
    let p99_ok = p99_ms.is_some_and(|p| p <= bounds.p99_ms_max);
    let n = done.len();
    let failure = if !loss_ok {
        Some(format!(
            "median over {n} trial(s): delivered {:.2}% of offered, lost {:.3}% of sent at \
             {rate:.0}/s (loss bound {:.3}%)",
            delivered_share * 100.0,
            loss * 100.0,
            bounds.loss_max * 100.0
        ))
    } else if !p99_ok {
        Some(format!(
            "median p99 over {n} trial(s) passed {} ms at {rate:.0}/s",
            bounds.p99_ms_max
        ))
    } else {
        None
    };
    let summary = Step {
        rate_per_s: rate,
        sent_rate_per_s: median(&pick(|t| t.sent_rate_per_s)).unwrap_or(0.0),
        delivered_rate_per_s: median(&pick(|t| t.delivered_rate_per_s)).unwrap_or(0.0),
        loss_ratio: loss,
        late: done.iter().map(|(t, _)| t.late).sum(),
        p50_ms: finite(median(&pick(|t| t.p50_ms))),
        p99_ms,
        dropped_by_nodes: done.iter().map(|(t, _)| t.dropped_by_nodes).sum(),
        sustained: failure.is_none(),
        trial_loss_ratios: pick(|t| t.loss_ratio),
        trial_p99_ms: done.iter().map(|(t, _)| finite(Some(t.p99_ms))).collect(),
        trial_p50_ms: done.iter().map(|(t, _)| finite(Some(t.p50_ms))).collect(),
        trial_delivered_rates_per_s: pick(|t| t.delivered_rate_per_s),
        p99_n_too_small: done
            .iter()
            .any(|(t, _)| t.delivered < report::quantile_n_min(0.99)),
    };
    // The run shown in detail: the trial at the median p99 (the lower middle for an even
    // count), a real run rather than a blend of several.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| done[a].0.p99_ms.total_cmp(&done[b].0.p99_ms));
    let middle = order.get(n.saturating_sub(1) / 2).copied().unwrap_or(0);
    let outcome = done
        .into_iter()
        .nth(middle)
        .map(|(_, outcome)| outcome)
        .ok_or("the step ran no trial")?;
    Ok((summary, outcome, failure))
}

pub fn ramp(
    driver: &mut dyn Driver,
    base: &LoadParams,
    args: &RampArgs,
    capacity_per_s: f64,
) -> Result<RampResult, String> {
    if !(args.rate_start.is_finite() && args.rate_start > 0.0) {
        return Err("--rate-start must be positive".into());
    }
    if !(args.rate_factor.is_finite() && args.rate_factor > 1.0) {
        return Err("--rate-factor must be more than 1".into());
    }
    if !(1..=crate::limits::RAMP_TRIALS_MAX).contains(&args.trials) {
        return Err(format!(
            "--trials must be between 1 and {}",
            crate::limits::RAMP_TRIALS_MAX
        ));
    }
    let bounds = Bounds {
        loss_max: args.loss_max,
        p99_ms_max: p99_bound_ms(args, base.delay_ms_mean),
    };
    // Build each step's packets before its clock starts (when they fit in memory), so that
    // packet creation neither limits the rate nor competes with the nodes for CPU.
    // Only the first run waits for --start-at: the steps after it follow on.
    let params = |rate: f64, run_id: u32| LoadParams {
        rate_per_s: rate,
        duration_s: args.step_duration,
        lookahead_s: base.lookahead_s.max(args.step_duration),
        run_id,
        label: format!("run {run_id} @ {rate:.0}/s"),
        start_at: base.start_at.filter(|_| run_id == 1),
        ..base.clone()
    };
    let frame_bytes = base.size.packet_len() + lethe_crypto::framing::HEADER_MAX_LEN;
    // Above this rate a step no longer fits in the queues whole, and the generator (building
    // while sending) must keep its headroom.
    let rate_prebuilt_max = QUEUED_BYTES_MAX as f64 / frame_bytes as f64 / args.step_duration;
    let rate_max = rate_prebuilt_max.max(capacity_per_s * report::CAPACITY_WARN_RATIO);
    debug_assert!(fits_prebuilt(
        rate_prebuilt_max * 0.999,
        args.step_duration,
        frame_bytes
    ));
    let mut steps = Vec::new();
    let mut best: Option<RunOutcome> = None;
    let mut first_failed: Option<RunOutcome> = None;
    let mut rate = args.rate_start.min(rate_max);
    let mut stop_reason = format!("reached --steps-max {}", args.steps_max);
    let mut run_id = 0u32;
    for _ in 0..args.steps_max.max(1) {
        let (summary, outcome, failure) = step(
            driver,
            &|id| params(rate, id),
            args.trials,
            &mut run_id,
            &bounds,
            capacity_per_s,
        )?;
        if crate::run::interrupted() {
            // A cut step counts as not sustained.
            steps.push(Step {
                sustained: false,
                ..summary
            });
            stop_reason = "interrupted".into();
            if best.is_none() {
                first_failed = Some(outcome);
            }
            break;
        }
        steps.push(summary);
        if let Some(reason) = failure {
            stop_reason = reason;
            first_failed = Some(outcome);
            break;
        }
        best = Some(outcome);
        if rate >= rate_max * 0.999 {
            stop_reason = format!(
                "stopped at {rate_max:.0}/s: higher steps neither fit in memory pre-built nor \
                 stay under {:.0}% of the generator's capacity ({capacity_per_s:.0}/s)",
                report::CAPACITY_WARN_RATIO * 100.0
            );
            break;
        }
        rate = (rate * args.rate_factor).min(rate_max);
    }
    // Narrow the gap between the last sustained and the first failed rate.
    if let (Some(good), Some(_)) = (&best, &first_failed) {
        let mut low = good.params.rate_per_s;
        let mut high = rate;
        for _ in 0..args.refine_steps {
            if high / low < 1.05 || crate::run::interrupted() {
                break;
            }
            let middle = (low * high).sqrt();
            let (summary, outcome, failure) = step(
                driver,
                &|id| params(middle, id),
                args.trials,
                &mut run_id,
                &bounds,
                capacity_per_s,
            )?;
            steps.push(summary);
            match failure {
                None => {
                    low = middle;
                    best = Some(outcome);
                }
                Some(reason) => {
                    high = middle;
                    stop_reason = reason;
                }
            }
        }
    }
    let highest = best.as_ref().map(|b| b.params.rate_per_s);
    let detail = best.or(first_failed).ok_or("the ramp ran no step")?;
    Ok(RampResult {
        ramp: Ramp {
            loss_ratio_max: bounds.loss_max,
            p99_ms_max: bounds.p99_ms_max,
            step_duration_s: args.step_duration,
            trials: args.trials,
            rule: rule(&bounds, args.trials),
            steps,
            highest_sustained_rate_per_s: highest,
            stop_reason,
        },
        detail,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[9.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // A trial that delivered nothing (infinite p99) does not decide alone.
        assert_eq!(median(&[f64::INFINITY, 5.0, 7.0]), Some(7.0));
        assert_eq!(
            median(&[f64::INFINITY, f64::INFINITY, 5.0]),
            Some(f64::INFINITY)
        );
        assert_eq!(median(&[f64::INFINITY, 5.0]), Some(f64::INFINITY));
    }
}
