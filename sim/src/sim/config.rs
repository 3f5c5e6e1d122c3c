//! What a simulation runs: topology, traffic, links, failures, corrupt nodes. Loaded from JSON
//! by the CLI (`lethe-sim run --config FILE`); every limit is a named constant here.

use serde::{Deserialize, Serialize};

/// Sphinx routes hold at most 5 hops (`lethe_crypto::sphinx::constants::MAX_PATH_LENGTH`):
/// the mix layers and the exit gateway.
/// Mix layers: 1 to what the real client's topology allows (Sphinx's hop maximum less the
/// exit gateway); Nym runs 3.
pub const LAYERS_MAX: u64 = lethe_proto::topology::LAYERS_MAX as u64;
pub const MIXES_PER_LAYER_MAX: u32 = 64;
pub const GATEWAYS_MAX: u32 = 64;
pub const CLIENTS_MAX: u32 = 10_000;
pub const DURATION_MS_MAX: u64 = 24 * 3_600 * 1_000;
/// Mean per-hop delays above the engine's cap would be clamped, not drawn.
pub const DELAY_MS_MEAN_MAX: f64 = 2_000.0;
pub const RATE_PER_S_MAX: f64 = 10_000.0;
/// A mix's packet rate when `mix_capacity_pps` is set (a core of a fast engine does about a
/// million: `node-efficiency`).
pub const MIX_CAPACITY_PPS_MAX: f64 = 100_000_000.0;
pub const LINK_LATENCY_US_MAX: u64 = 10_000_000;
/// Events processed before a run gives up (a bound on the event loop).
pub const EVENTS_MAX: u64 = 500_000_000;

// The route is the mix layers and the exit gateway.
const _: () = assert!(LAYERS_MAX < lethe_crypto::sphinx::constants::MAX_PATH_LENGTH as u64);

/// Loopix cover streams of one client (all Poisson). The payload and loop streams are the
/// real client's schedule (`lethe_proto::loopix::schedule`): real messages wait for a payload
/// slot, which sends drop cover when none waits. The drop stream is Loopix's separate one
/// (the Lethe client has none: 0 matches it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverRates {
    pub payload_rate_per_s: f64,
    pub loop_rate_per_s: f64,
    pub drop_rate_per_s: f64,
}

/// One-way link latency: `latency_us` (or the matrix's entry, indexed by node index: clients,
/// then gateways, then mixes layer by layer), plus uniform jitter in [0, `jitter_us`]. A
/// link delivers in order (a packet never overtakes the one before it, as on TCP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkModel {
    pub latency_us: u64,
    #[serde(default)]
    pub jitter_us: u64,
    #[serde(default)]
    pub latency_us_matrix: Option<Vec<Vec<u64>>>,
}

/// A node down from `from_ms` until `until_ms`: what reaches it, or would leave it, is lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFailure {
    pub node: String,
    pub from_ms: u64,
    pub until_ms: u64,
}

/// What the packets are. `real`: Sphinx packets that clients build and engine cores unwrap,
/// sealed end-to-end content, encrypted client-gateway sessions. `cost_model`: the same
/// routes, delays, payloads and sizes in the clear (`lethe_proto::loopix::clear`), unwrapped
/// by the simulator and handed to the engine core as decoded hops
/// (`Core::handle_decoded`), and the sessions carried as in-order messages: no X25519, AES
/// or ChaCha runs. A mix's processing time is `mix_capacity_pps` in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SphinxMode {
    #[default]
    Real,
    CostModel,
}

impl SphinxMode {
    fn is_real(&self) -> bool {
        *self == SphinxMode::Real
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub seed: u64,
    /// Clients send for this long; the run then drains what is in flight.
    pub duration_ms: u64,
    pub layers: u32,
    pub mixes_per_layer: u32,
    pub gateways: u32,
    pub clients: u32,
    /// Mean of the exponential delay a client draws for each mix hop.
    pub delay_ms_mean: f64,
    /// Real messages per client (Poisson). Client `c` writes to client `c + 1` (mod count).
    pub message_rate_per_s: f64,
    #[serde(default)]
    pub cover: Option<CoverRates>,
    /// Each mix's own loop packets (Poisson), through every layer and back to it.
    #[serde(default)]
    pub mix_loop_rate_per_s: f64,
    pub link: LinkModel,
    /// `regular` (2 KiB payload) or `ack` (the small SURB-ACK size: cheaper to simulate).
    pub packet_size: String,
    /// Node names (`m1.0`, `g0`) whose mixing the adversary knows.
    #[serde(default)]
    pub corrupt: Vec<String>,
    #[serde(default)]
    pub failures: Vec<NodeFailure>,
    /// Record the input -> output links (needs a `lab` build).
    #[serde(default)]
    pub lab: bool,
    /// Packets per second one mix processes (its engine on one core, as `node-efficiency`
    /// measures it): packets wait in arrival order for 1/capacity s each before the engine
    /// takes them, and one arriving behind `ENGINE_BUFFERS_PER_NODE` waiting is dropped
    /// (`overload`). None: processing takes no simulated time.
    #[serde(default)]
    pub mix_capacity_pps: Option<f64>,
    /// Real Sphinx or the cost model. Left out of the JSON when real, so the hash of a
    /// config written before the switch stays the same.
    #[serde(default, skip_serializing_if = "SphinxMode::is_real")]
    pub sphinx: SphinxMode,
}

impl SimConfig {
    /// A small network: 3 layers of 2 mixes, 2 gateways, 6 clients, 10 s of traffic.
    pub fn small(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            duration_ms: 10_000,
            layers: 3,
            mixes_per_layer: 2,
            gateways: 2,
            clients: 6,
            delay_ms_mean: 50.0,
            message_rate_per_s: 5.0,
            cover: None,
            mix_loop_rate_per_s: 0.0,
            link: LinkModel {
                latency_us: 1_000,
                jitter_us: 0,
                latency_us_matrix: None,
            },
            packet_size: "ack".to_string(),
            corrupt: Vec::new(),
            failures: Vec::new(),
            lab: false,
            mix_capacity_pps: None,
            sphinx: SphinxMode::Real,
        }
    }

    pub fn nodes_count(&self) -> u32 {
        self.clients + self.gateways + self.layers * self.mixes_per_layer
    }

    pub fn validate(&self) -> Result<(), String> {
        let range = |name: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                return Err(format!("{name} = {value} is outside [{min}, {max}]"));
            }
            Ok(())
        };
        range("layers", self.layers.into(), 1, LAYERS_MAX)?;
        range(
            "mixes_per_layer",
            self.mixes_per_layer.into(),
            1,
            MIXES_PER_LAYER_MAX.into(),
        )?;
        range("gateways", self.gateways.into(), 1, GATEWAYS_MAX.into())?;
        range("clients", self.clients.into(), 2, CLIENTS_MAX.into())?;
        range("duration_ms", self.duration_ms, 1, DURATION_MS_MAX)?;
        range(
            "link.latency_us",
            self.link.latency_us,
            0,
            LINK_LATENCY_US_MAX,
        )?;
        range(
            "link.jitter_us",
            self.link.jitter_us,
            0,
            LINK_LATENCY_US_MAX,
        )?;
        let rate = |name: &str, value: f64, max: f64| {
            // Written positively so NaN fails.
            if value >= 0.0 && value <= max {
                return Ok(());
            }
            Err(format!("{name} = {value} is outside [0, {max}]"))
        };
        rate("delay_ms_mean", self.delay_ms_mean, DELAY_MS_MEAN_MAX)?;
        rate(
            "message_rate_per_s",
            self.message_rate_per_s,
            RATE_PER_S_MAX,
        )?;
        rate(
            "mix_loop_rate_per_s",
            self.mix_loop_rate_per_s,
            RATE_PER_S_MAX,
        )?;
        if let Some(capacity) = self.mix_capacity_pps {
            // Written positively so NaN fails; 0 would never serve.
            if !(capacity > 0.0 && capacity <= MIX_CAPACITY_PPS_MAX) {
                return Err(format!(
                    "mix_capacity_pps = {capacity} is outside (0, {MIX_CAPACITY_PPS_MAX}]"
                ));
            }
        }
        if let Some(cover) = &self.cover {
            rate(
                "cover.payload_rate_per_s",
                cover.payload_rate_per_s,
                RATE_PER_S_MAX,
            )?;
            rate(
                "cover.loop_rate_per_s",
                cover.loop_rate_per_s,
                RATE_PER_S_MAX,
            )?;
            rate(
                "cover.drop_rate_per_s",
                cover.drop_rate_per_s,
                RATE_PER_S_MAX,
            )?;
        }
        if let Some(matrix) = &self.link.latency_us_matrix {
            let n = self.nodes_count() as usize;
            if matrix.len() != n || matrix.iter().any(|row| row.len() != n) {
                return Err(format!("link.latency_us_matrix must be {n} x {n}"));
            }
            if matrix.iter().flatten().any(|&v| v > LINK_LATENCY_US_MAX) {
                return Err(format!("a latency above {LINK_LATENCY_US_MAX} us"));
            }
        }
        if self.packet_size != "regular" && self.packet_size != "ack" {
            return Err(format!(
                "packet_size {:?}: regular or ack",
                self.packet_size
            ));
        }
        for failure in &self.failures {
            if failure.from_ms >= failure.until_ms {
                return Err(format!("failure of {}: from_ms >= until_ms", failure.node));
            }
        }
        Ok(())
    }
}
