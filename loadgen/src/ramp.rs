//! Ramps (`loadgen node`, `loadgen sweep`): steps of rising rate until a step is not sustained.

use crate::cli::RampArgs;
use crate::driver::Driver;
use crate::report::{self, Ramp, Step};
use crate::run::{run_load, LoadParams, RunOutcome};

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
    let p99_max = p99_bound_ms(args, base.delay_ms_mean);
    let mut steps = Vec::new();
    let mut best: Option<RunOutcome> = None;
    let mut first: Option<RunOutcome> = None;
    let mut rate = args.rate_start;
    let mut stop_reason = format!("reached --steps-max {}", args.steps_max);
    let rate_max = capacity_per_s * report::CAPACITY_WARN_RATIO;
    for index in 0..args.steps_max.max(1) {
        if rate > rate_max {
            if index > 0 && best.is_some() && rate / args.rate_factor >= rate_max * 0.99 {
                stop_reason = format!(
                    "stopped below the generator's limit ({:.0}% of its {capacity_per_s:.0}/s \
                     capacity): higher steps would measure loadgen",
                    report::CAPACITY_WARN_RATIO * 100.0
                );
                break;
            }
            rate = rate_max;
        }
        let params = LoadParams {
            rate_per_s: rate,
            duration_s: args.step_duration,
            run_id: index + 1,
            label: format!("step {} @ {rate:.0}/s", index + 1),
            ..base.clone()
        };
        let outcome = run_load(driver, &params)?;
        let run = report::run_report(&outcome, capacity_per_s);
        let offered = run.offered.packets.max(1) as f64;
        let delivered_share = run.delivered.packets as f64 / offered;
        let p99 = run.latency_ms.p99;
        let loss_ok =
            run.delivered.loss_ratio <= args.loss_max && delivered_share >= 1.0 - args.loss_max;
        let p99_ok = p99.is_some_and(|p| p <= p99_max);
        let sustained = loss_ok && p99_ok;
        steps.push(Step {
            rate_per_s: rate,
            sent_rate_per_s: run.sent.rate_per_s,
            delivered_rate_per_s: run.delivered.rate_per_s,
            loss_ratio: run.delivered.loss_ratio,
            late: run.sent.late,
            p50_ms: run.latency_ms.p50,
            p99_ms: p99,
            dropped_by_nodes: run.dropped_by_nodes.total,
            sustained,
        });
        if !sustained {
            stop_reason = if loss_ok {
                format!("p99 passed {p99_max} ms at {rate:.0}/s")
            } else {
                format!(
                    "delivered {:.2}% of offered at {rate:.0}/s (loss bound {:.3}%)",
                    delivered_share * 100.0,
                    args.loss_max * 100.0
                )
            };
            if first.is_none() && best.is_none() {
                first = Some(outcome);
            }
            break;
        }
        best = Some(outcome);
        rate *= args.rate_factor;
        // Let the previous step's stragglers clear.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let highest = best.as_ref().map(|b| b.params.rate_per_s);
    let detail = best.or(first).ok_or("the ramp ran no step")?;
    Ok(RampResult {
        ramp: Ramp {
            loss_ratio_max: args.loss_max,
            p99_ms_max: p99_max,
            step_duration_s: args.step_duration,
            steps,
            highest_sustained_rate_per_s: highest,
            stop_reason,
        },
        detail,
    })
}
