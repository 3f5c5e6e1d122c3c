//! Ramps (`loadgen node`, `loadgen sweep`): steps of rising rate until a step is not
//! sustained, then a few steps between the last sustained rate and the first failed one.

use crate::cli::RampArgs;
use crate::driver::Driver;
use crate::report::{self, Ramp, Step};
use crate::run::{fits_prebuilt, run_load, LoadParams, RunOutcome, QUEUED_BYTES_MAX};

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

/// One step: its summary, its run, and why it was not sustained (`None` if it was).
fn step(
    driver: &mut dyn Driver,
    params: &LoadParams,
    bounds: &Bounds,
    capacity_per_s: f64,
) -> Result<(Step, RunOutcome, Option<String>), String> {
    let outcome = run_load(driver, params)?;
    if let Some(failure) = &outcome.network_failure {
        // A ramp measures a working network: a dead node ends it.
        return Err(failure.clone());
    }
    let run = report::run_report(&outcome, capacity_per_s);
    let rate = params.rate_per_s;
    let delivered_share = run.delivered.packets as f64 / run.offered.packets.max(1) as f64;
    let p99 = run.latency_ms.p99;
    let loss_ok =
        run.delivered.loss_ratio <= bounds.loss_max && delivered_share >= 1.0 - bounds.loss_max;
    let p99_ok = p99.is_some_and(|p| p <= bounds.p99_ms_max);
    let failure = if !loss_ok {
        Some(format!(
            "delivered {:.2}% of offered at {rate:.0}/s (loss bound {:.3}%)",
            delivered_share * 100.0,
            bounds.loss_max * 100.0
        ))
    } else if !p99_ok {
        Some(format!(
            "p99 passed {} ms at {rate:.0}/s",
            bounds.p99_ms_max
        ))
    } else {
        None
    };
    let summary = Step {
        rate_per_s: rate,
        sent_rate_per_s: run.sent.rate_per_s,
        delivered_rate_per_s: run.delivered.rate_per_s,
        loss_ratio: run.delivered.loss_ratio,
        late: run.sent.late,
        p50_ms: run.latency_ms.p50,
        p99_ms: p99,
        dropped_by_nodes: run.dropped_by_nodes.total,
        sustained: failure.is_none(),
    };
    // Let the step's stragglers clear before the next one.
    std::thread::sleep(std::time::Duration::from_millis(500));
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
    let bounds = Bounds {
        loss_max: args.loss_max,
        p99_ms_max: p99_bound_ms(args, base.delay_ms_mean),
    };
    // Build each step's packets before its clock starts (when they fit in memory), so that
    // packet creation neither limits the rate nor competes with the nodes for CPU.
    let params = |rate: f64, run_id: u32| LoadParams {
        rate_per_s: rate,
        duration_s: args.step_duration,
        lookahead_s: base.lookahead_s.max(args.step_duration),
        run_id,
        label: format!("step {run_id} @ {rate:.0}/s"),
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
        run_id += 1;
        let (summary, outcome, failure) =
            step(driver, &params(rate, run_id), &bounds, capacity_per_s)?;
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
            run_id += 1;
            let (summary, outcome, failure) =
                step(driver, &params(middle, run_id), &bounds, capacity_per_s)?;
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
            steps,
            highest_sustained_rate_per_s: highest,
            stop_reason,
        },
        detail,
    })
}
