//! Per-mix entropy, Loopix Appendix A (Eq. 5), from the link-level view of one mix.
//!
//! Between two outputs the mix takes `l` new inputs; `k` messages remain from before. The next
//! output is one of the new inputs with probability l/(k+l), uniformly (Thm 1: 1/(l+k) each),
//! else one of the older messages, whose distribution the previous output's entropy stands for:
//!
//! H_t = H(k/(k+l), l/(k+l)) + (l/(k+l)) log2 l + (k/(k+l)) H_{t-1}
//!
//! A mix's own loop packets enter its pool like any input (they show as arrivals at the mix),
//! which is how Loopix's Thm 2 counts them. A packet dropped inside the mix leaves the pool
//! without an output: it is taken from the new inputs first.

use std::collections::HashMap;

use crate::stats::{entropy_bits, Summary};
use crate::views::{LinkEnd, LinkObservation};

/// One mix's state.
#[derive(Clone, Debug, Default)]
struct Pool {
    /// Messages left from before the previous output.
    k: u64,
    /// Inputs since the previous output.
    l: u64,
    entropy_bits_previous: f64,
}

impl Pool {
    /// The entropy of the output leaving now, and the pool after it.
    fn output(&mut self) -> Option<f64> {
        let held = self.k + self.l;
        if held == 0 {
            return None;
        }
        let (k, l) = (self.k as f64, self.l as f64);
        let total = k + l;
        let mut h = entropy_bits(&[k, l], total) + (k / total) * self.entropy_bits_previous;
        if self.l > 0 {
            h += (l / total) * l.log2();
        }
        self.entropy_bits_previous = h;
        self.k = held - 1;
        self.l = 0;
        Some(h)
    }

    fn lose_one(&mut self) {
        if self.l > 0 {
            self.l -= 1;
        } else {
            self.k = self.k.saturating_sub(1);
        }
    }
}

/// Per-mix entropy of every output inside the measurement window.
#[derive(Debug, Default)]
pub struct MixEntropy {
    pools: HashMap<u32, Pool>,
    per_mix: HashMap<u32, Vec<f64>>,
}

impl MixEntropy {
    /// `is_mix` selects the nodes measured; `in_window` says whether the output counts.
    pub fn observe(&mut self, observation: &LinkObservation, in_window: bool) {
        let pool = self.pools.entry(observation.node).or_default();
        match observation.end {
            LinkEnd::Arrive => pool.l += 1,
            LinkEnd::Depart => {
                if let Some(h) = pool.output() {
                    if in_window {
                        self.per_mix.entry(observation.node).or_default().push(h);
                    }
                }
            }
        }
    }

    /// A packet the mix lost (dropped after it arrived).
    pub fn observe_loss(&mut self, node: u32) {
        if let Some(pool) = self.pools.get_mut(&node) {
            pool.lose_one();
        }
    }

    /// Per mix (by node index): the summary of its outputs' entropies.
    pub fn per_mix(&self) -> Vec<(u32, Summary)> {
        let mut out: Vec<(u32, Summary)> = self
            .per_mix
            .iter()
            .map(|(node, values)| (*node, Summary::of(&mut values.clone())))
            .collect();
        out.sort_by_key(|(node, _)| *node);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_inputs_then_one_more() {
        let mut pool = Pool {
            l: 2,
            ..Pool::default()
        };
        // Two fresh inputs, one output: 1 bit.
        assert!((pool.output().unwrap() - 1.0).abs() < 1e-12);
        pool.l += 1;
        // 1/2 the new input, 1/4 each old one: 1.5 bits.
        assert!((pool.output().unwrap() - 1.5).abs() < 1e-12);
        assert_eq!((pool.k, pool.l), (1, 0));
    }
}
