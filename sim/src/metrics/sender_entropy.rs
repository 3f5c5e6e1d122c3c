//! End-to-end sender entropy (Mixim) and Loopix's epsilon/delta, from the link-level view.
//!
//! Every packet a client sends starts as a one-hot vector over the clients (a mix's own loop
//! packet as one-hot over a "no client" slot). An honest mix sums the vectors of the packets it
//! holds; a departing packet carries that sum divided by the count, which then leaves the sum.
//! A corrupt mix does not mix: it tells the adversary which input left, so the vector passes
//! unchanged (this needs the lab column `in_packet_id` for the corrupt mixes). Gateways relay
//! a packet unchanged. At delivery, a real message's vector over the clients (the no-client
//! slot left out and the rest renormalised: the adversary knows a client sent it) gives its
//! entropy H = -sum p log2 p, and between two labelled senders S0, S1 the likelihood ratio
//! epsilon = |ln(p0 / p1)| (Loopix Eq. 3). Delta is the share of labelled messages one of
//! whose probabilities is 0 (epsilon infinite there).
//!
//! A delivery counts where its row names the class and the message: at the gateway in the
//! simulator; on a real run at the recipient, whose recorder names the packet by the id the
//! last mix sent it under (the exit gateway's own `deliver` row, class `unknown`, leaves the
//! vector in flight for it).

use std::collections::HashMap;

use serde::Serialize;

use crate::stats::{entropy_bits, Summary};
use crate::trace::{Class, Kind, Role, TraceEvent, TraceMeta};

/// Two senders whose messages the adversary tries to tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelledSenders {
    pub sender0: u32,
    pub sender1: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SenderEntropyReport {
    pub senders_count: u64,
    pub entropy_bits: Summary,
    /// Mean of 2^H: the effective number of possible senders.
    pub effective_senders_mean: f64,
    /// H / log2 N.
    pub degree_of_anonymity_mean: f64,
    pub epsilon: Summary,
    pub delta: f64,
    pub labelled_messages_count: u64,
}

#[derive(Debug, Default)]
struct MixPool {
    sum: Vec<f64>,
    count: u64,
}

impl MixPool {
    fn take_average(&mut self, width: usize) -> Option<Vec<f64>> {
        if self.count == 0 {
            return None;
        }
        let count = self.count as f64;
        let out: Vec<f64> = self.sum.iter().map(|w| w / count).collect();
        self.count -= 1;
        if self.count == 0 {
            self.sum = vec![0.0; width];
        } else {
            for (s, o) in self.sum.iter_mut().zip(&out) {
                *s = (*s - o).max(0.0);
            }
        }
        Some(out)
    }
}

#[derive(Debug)]
pub struct SenderEntropy {
    /// Vector slot of each node that is a client.
    slot_of_node: HashMap<u32, usize>,
    /// Slots: one per client, then the no-client slot.
    width: usize,
    roles: Vec<Role>,
    corrupt: Vec<bool>,
    labelled: Option<LabelledSenders>,
    in_flight: HashMap<u64, Vec<f64>>,
    pools: HashMap<u32, MixPool>,
    corrupt_held: HashMap<(u32, u64), Vec<f64>>,
    /// Real messages: their sender and whether they were sent inside the window.
    messages: HashMap<u64, (u32, bool)>,
    entropies_bits: Vec<f64>,
    epsilons: Vec<f64>,
    labelled_count: u64,
    labelled_infinite_count: u64,
    /// A corrupt mix's departure without the lab column: the metric cannot be computed.
    pub missing_lab_link: bool,
}

impl SenderEntropy {
    pub fn new(meta: &TraceMeta, labelled: Option<LabelledSenders>) -> SenderEntropy {
        let clients = meta
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Client);
        let slot_of_node: HashMap<u32, usize> = clients
            .enumerate()
            .map(|(slot, (i, _))| (i as u32, slot))
            .collect();
        SenderEntropy {
            width: slot_of_node.len() + 1,
            slot_of_node,
            roles: meta.nodes.iter().map(|n| n.role).collect(),
            corrupt: meta.nodes.iter().map(|n| n.corrupt).collect(),
            labelled,
            in_flight: HashMap::new(),
            pools: HashMap::new(),
            corrupt_held: HashMap::new(),
            messages: HashMap::new(),
            entropies_bits: Vec::new(),
            epsilons: Vec::new(),
            labelled_count: 0,
            labelled_infinite_count: 0,
            missing_lab_link: false,
        }
    }

    fn one_hot(&self, node: u32) -> Vec<f64> {
        let mut v = vec![0.0; self.width];
        let slot = self
            .slot_of_node
            .get(&node)
            .copied()
            .unwrap_or(self.width - 1);
        v[slot] = 1.0;
        v
    }

    fn role(&self, node: u32) -> Option<Role> {
        self.roles.get(node as usize).copied()
    }

    fn is_corrupt(&self, node: u32) -> bool {
        self.corrupt.get(node as usize).copied().unwrap_or(false)
    }

    pub fn observe(&mut self, event: &TraceEvent, in_window: bool) {
        let role = self.role(event.node);
        match (event.kind, role) {
            (Kind::Send, _) => {
                if let (Class::Real, Some(id)) = (event.class, event.message_id) {
                    self.messages.insert(id, (event.node, in_window));
                }
                // A mix's own loop enters its pool: it shows as an arrival there next.
                let v = self.one_hot(event.node);
                self.in_flight.insert(event.packet_id, v);
            }
            (Kind::Arrive, Some(Role::Mix)) => {
                let Some(v) = self.in_flight.remove(&event.packet_id) else {
                    return;
                };
                if self.is_corrupt(event.node) {
                    self.corrupt_held.insert((event.node, event.packet_id), v);
                    return;
                }
                let width = self.width;
                let pool = self.pools.entry(event.node).or_insert_with(|| MixPool {
                    sum: vec![0.0; width],
                    count: 0,
                });
                for (s, w) in pool.sum.iter_mut().zip(&v) {
                    *s += w;
                }
                pool.count += 1;
            }
            (Kind::Depart, Some(Role::Mix)) => self.mix_departure(event),
            (Kind::Drop, Some(Role::Mix)) => {
                if self.is_corrupt(event.node) {
                    self.corrupt_held.remove(&(event.node, event.packet_id));
                } else if let Some(pool) = self.pools.get_mut(&event.node) {
                    pool.take_average(self.width);
                }
            }
            (Kind::Drop, _) => {
                self.in_flight.remove(&event.packet_id);
            }
            // A node's delivery (a real gateway's: it cannot tell the class) leaves the vector
            // in flight for the recipient's own row, which names the message.
            (Kind::Deliver, _) if event.class == Class::Unknown => {}
            (Kind::Deliver, _) => {
                if let Some(v) = self.in_flight.remove(&event.packet_id) {
                    self.delivered(event, &v);
                }
            }
            // Gateways relay under the same packet id: the vector stays in flight.
            _ => {}
        }
    }

    fn mix_departure(&mut self, event: &TraceEvent) {
        let out = if self.is_corrupt(event.node) {
            let Some(input) = event.lab.in_packet_id else {
                self.missing_lab_link = true;
                return;
            };
            self.corrupt_held.remove(&(event.node, input))
        } else {
            let width = self.width;
            self.pools
                .get_mut(&event.node)
                .and_then(|p| p.take_average(width))
        };
        if let Some(out) = out {
            self.in_flight.insert(event.packet_id, out);
        }
    }

    fn delivered(&mut self, event: &TraceEvent, v: &[f64]) {
        if event.class != Class::Real {
            return;
        }
        let Some(&(sender, in_window)) = event.message_id.and_then(|id| self.messages.get(&id))
        else {
            return;
        };
        if !in_window {
            return;
        }
        let clients = &v[..self.width - 1];
        let total: f64 = clients.iter().sum();
        if total <= 0.0 {
            return;
        }
        self.entropies_bits.push(entropy_bits(clients, total));
        let Some(labelled) = self.labelled else {
            return;
        };
        if sender != labelled.sender0 && sender != labelled.sender1 {
            return;
        }
        let p = |node: u32| {
            let slot = self.slot_of_node.get(&node).copied();
            slot.map(|s| clients[s] / total).unwrap_or(0.0)
        };
        let (p0, p1) = (p(labelled.sender0), p(labelled.sender1));
        self.labelled_count += 1;
        // Below this a probability is a rounding residue of the running sums, not mass.
        const PROBABILITY_ZERO: f64 = 1e-12;
        if p0 <= PROBABILITY_ZERO || p1 <= PROBABILITY_ZERO {
            self.labelled_infinite_count += 1;
        } else {
            self.epsilons.push((p0 / p1).ln().abs());
        }
    }

    pub fn report(&self) -> SenderEntropyReport {
        let senders_count = (self.width - 1) as u64;
        let mut entropies = self.entropies_bits.clone();
        let entropy_bits = Summary::of(&mut entropies);
        let count = entropies.len().max(1) as f64;
        let effective = entropies.iter().map(|h| h.exp2()).sum::<f64>() / count;
        let log_n = (senders_count.max(1) as f64).log2();
        let degree = if log_n > 0.0 {
            entropy_bits.mean / log_n
        } else {
            f64::NAN
        };
        let delta = if self.labelled_count > 0 {
            self.labelled_infinite_count as f64 / self.labelled_count as f64
        } else {
            f64::NAN
        };
        SenderEntropyReport {
            senders_count,
            entropy_bits,
            effective_senders_mean: effective,
            degree_of_anonymity_mean: degree,
            epsilon: Summary::of(&mut self.epsilons.clone()),
            delta,
            labelled_messages_count: self.labelled_count,
        }
    }
}
