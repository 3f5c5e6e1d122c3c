//! The client's Loopix and reliability parameters, as `client.toml` spells them.

use serde::{Deserialize, Serialize};

/// Loopix and reliability parameters (Nym's defaults, `client-core` `Traffic`/`Acknowledgements`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopixParams {
    /// Mean exponential per-hop delay of forward packets (mu), ms.
    pub average_packet_delay_ms: f64,
    /// Mean per-hop delay of ACK packets and reply SURBs, ms.
    pub average_ack_delay_ms: f64,
    /// Mean delay between packets of the Poisson real/drop-cover stream (1/lambda), ms. Zero:
    /// real packets leave as soon as they are queued, and no drop cover is sent.
    pub message_sending_average_delay_ms: f64,
    /// Mean delay between loop-cover packets, ms.
    pub loop_cover_average_delay_ms: f64,
    /// Send no drop cover (the Poisson stream only carries real packets).
    pub disable_drop_cover: bool,
    /// Send no loop cover.
    pub disable_loop_cover: bool,
    /// Retransmission timeout = expected RTT × multiplier + addition.
    pub ack_wait_multiplier: f64,
    pub ack_wait_addition_ms: u64,
    /// Retransmissions of a fragment before giving up (absent: unlimited).
    pub max_retransmissions: Option<u32>,
    pub topology_refresh_s: u64,
    /// How long we keep the recovery records of reply SURBs we handed out.
    pub reply_surb_lifetime_s: u64,
}

impl Default for LoopixParams {
    fn default() -> Self {
        LoopixParams {
            average_packet_delay_ms: 15.0,
            average_ack_delay_ms: 15.0,
            message_sending_average_delay_ms: 20.0,
            loop_cover_average_delay_ms: 200.0,
            disable_drop_cover: false,
            disable_loop_cover: false,
            ack_wait_multiplier: 1.5,
            ack_wait_addition_ms: 1500,
            max_retransmissions: Some(10),
            topology_refresh_s: 300,
            reply_surb_lifetime_s: 24 * 3600,
        }
    }
}

impl LoopixParams {
    /// No cover traffic at all (tests, benchmarks).
    pub fn without_cover(mut self) -> LoopixParams {
        self.disable_drop_cover = true;
        self.disable_loop_cover = true;
        self
    }
}
