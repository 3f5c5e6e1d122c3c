//! Small statistics: summaries, a Gamma fit, Poisson probabilities and Student-t intervals.

use serde::Serialize;

/// Two-sided 95 % Student-t quantiles for 1..=30 degrees of freedom; past 30, 1.96.
const T_QUANTILE_95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];
const Z_QUANTILE_95: f64 = 1.96;

/// Mean, spread and percentiles of a sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub variance: f64,
    pub median: f64,
    pub p5: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// No values: every statistic NaN (so a mean over seeds leaves it out).
    pub fn empty() -> Summary {
        Summary {
            count: 0,
            mean: f64::NAN,
            variance: f64::NAN,
            median: f64::NAN,
            p5: f64::NAN,
            p95: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        }
    }

    /// Sorts `values` in place. NaNs are ignored.
    pub fn of(values: &mut Vec<f64>) -> Summary {
        values.retain(|v| !v.is_nan());
        if values.is_empty() {
            return Summary::empty();
        }
        values.sort_by(f64::total_cmp);
        let count = values.len() as f64;
        let mean = values.iter().sum::<f64>() / count;
        let variance = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0)
        } else {
            0.0
        };
        Summary {
            count: values.len() as u64,
            mean,
            variance,
            median: percentile_sorted(values, 0.5),
            p5: percentile_sorted(values, 0.05),
            p95: percentile_sorted(values, 0.95),
            p99: percentile_sorted(values, 0.99),
            max: values[values.len() - 1],
        }
    }
}

/// Nearest-rank percentile of sorted values (`q` in [0, 1]).
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A Gamma distribution fitted by the method of moments: shape = mean^2 / var, scale = var / mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GammaFit {
    pub shape: f64,
    pub scale: f64,
}

impl GammaFit {
    pub fn of(summary: &Summary) -> Option<GammaFit> {
        let positive = summary.mean > 0.0 && summary.variance > 0.0;
        positive.then(|| GammaFit {
            shape: summary.mean * summary.mean / summary.variance,
            scale: summary.variance / summary.mean,
        })
    }

    /// The density at `x` (0 for x <= 0).
    pub fn pdf(&self, x: f64) -> f64 {
        if x <= 0.0 || self.shape <= 0.0 || self.scale <= 0.0 {
            return 0.0;
        }
        let log_pdf = (self.shape - 1.0) * x.ln()
            - x / self.scale
            - ln_gamma(self.shape)
            - self.shape * self.scale.ln();
        log_pdf.exp()
    }

    /// P(X <= x): the regularised lower incomplete gamma P(shape, x / scale).
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= 0.0 || self.shape <= 0.0 || self.scale <= 0.0 {
            return 0.0;
        }
        lower_incomplete_gamma_regularised(self.shape, x / self.scale)
    }
}

/// Terms of the series or the continued fraction: both converge to 1e-14 well before this
/// for the shapes a latency has (a few layers); the bound keeps the loop finite.
const INCOMPLETE_GAMMA_TERMS_MAX: usize = 1_000;

/// P(a, x) for a > 0, x >= 0: the series below x = a + 1, the continued fraction (Lentz)
/// above it, where each converges fast (Numerical Recipes, 6.2).
pub fn lower_incomplete_gamma_regularised(a: f64, x: f64) -> f64 {
    if x <= 0.0 || a <= 0.0 {
        return 0.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let mut term = 1.0 / a;
        let mut sum = term;
        for n in 1..INCOMPLETE_GAMMA_TERMS_MAX {
            term *= x / (a + n as f64);
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        return (sum * log_prefix.exp()).clamp(0.0, 1.0);
    }
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..INCOMPLETE_GAMMA_TERMS_MAX {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    (1.0 - log_prefix.exp() * h).clamp(0.0, 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (i, c) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Pois(k; mean).
pub fn poisson_pmf(k: u64, mean: f64) -> f64 {
    if mean <= 0.0 {
        return if k == 0 { 1.0 } else { 0.0 };
    }
    let k_f = k as f64;
    (k_f * mean.ln() - mean - ln_gamma(k_f + 1.0)).exp()
}

/// A mean over seeds and its 95 % Student-t interval (half-width 0 for one seed).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub ci95_half_width: f64,
    pub per_seed: Vec<f64>,
}

impl Interval {
    /// NaN per-seed values (a metric a seed could not compute) are left out of the mean.
    pub fn over_seeds(per_seed: Vec<f64>) -> Interval {
        let values: Vec<f64> = per_seed.iter().copied().filter(|v| !v.is_nan()).collect();
        let n = values.len();
        if n == 0 {
            return Interval {
                mean: f64::NAN,
                ci95_half_width: f64::NAN,
                per_seed,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let half_width = if n > 1 {
            let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let t = T_QUANTILE_95.get(n - 2).copied().unwrap_or(Z_QUANTILE_95);
            t * (variance / n as f64).sqrt()
        } else {
            0.0
        };
        Interval {
            mean,
            ci95_half_width: half_width,
            per_seed,
        }
    }
}

/// Shannon entropy (bits) of a probability vector that sums to `total` (normalised here).
pub fn entropy_bits(weights: &[f64], total: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    let mut h = 0.0;
    for &w in weights {
        if w > 0.0 {
            let p = w / total;
            h -= p * p.log2();
        }
    }
    h.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        for (n, factorial) in [(1.0, 1.0), (2.0, 1.0), (5.0, 24.0), (11.0, 3_628_800.0f64)] {
            assert!((ln_gamma(n) - factorial.ln()).abs() < 1e-10, "{n}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-10);
    }

    #[test]
    fn poisson_sums_to_one_and_has_its_mean() {
        let mean = 7.5;
        let total: f64 = (0..100).map(|k| poisson_pmf(k, mean)).sum();
        let first_moment: f64 = (0..100).map(|k| k as f64 * poisson_pmf(k, mean)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!((first_moment - mean).abs() < 1e-9);
    }

    #[test]
    fn t_interval_widens_with_spread_and_shrinks_with_seeds() {
        let narrow = Interval::over_seeds(vec![1.0, 1.1, 0.9]);
        let wide = Interval::over_seeds(vec![0.0, 1.0, 2.0]);
        assert!((narrow.mean - 1.0).abs() < 1e-12);
        assert!(wide.ci95_half_width > narrow.ci95_half_width);
        // 3 seeds: t(2) = 4.303, s = 0.1, half-width = 4.303 * 0.1 / sqrt(3).
        let expected = 4.303 * 0.1 / 3f64.sqrt();
        assert!((narrow.ci95_half_width - expected).abs() < 1e-9);
        assert_eq!(Interval::over_seeds(vec![2.0]).ci95_half_width, 0.0);
    }

    #[test]
    fn gamma_fit_recovers_moments() {
        let mut values: Vec<f64> = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        let summary = Summary::of(&mut values);
        let fit = GammaFit::of(&summary).unwrap();
        assert!((fit.shape * fit.scale - 3.0).abs() < 1e-12);
        assert!((fit.shape * fit.scale * fit.scale - 2.5).abs() < 1e-12);
    }

    #[test]
    fn gamma_cdf_matches_closed_forms() {
        // Shape 1 is the exponential: 1 - e^(-x/scale).
        let exponential = GammaFit {
            shape: 1.0,
            scale: 2.0,
        };
        // Shape 3 (Erlang): 1 - e^(-y) (1 + y + y^2/2), y = x / scale.
        let erlang = GammaFit {
            shape: 3.0,
            scale: 0.5,
        };
        for x in [0.01, 0.3, 1.0, 2.0, 5.0, 20.0] {
            let want = 1.0 - (-x / 2.0f64).exp();
            assert!((exponential.cdf(x) - want).abs() < 1e-12, "{x}");
            let y = x / 0.5;
            let want = 1.0 - (-y).exp() * (1.0 + y + y * y / 2.0);
            assert!((erlang.cdf(x) - want).abs() < 1e-12, "{x}");
        }
        assert_eq!(erlang.cdf(0.0), 0.0);
        assert_eq!(erlang.cdf(-1.0), 0.0);
    }
}
