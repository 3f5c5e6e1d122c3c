//! Command line. Bare `loadgen` = `loadgen run`: a local testnet at the default load.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lethe_crypto::framing::PacketSize;

use crate::limits::{CLIENTS_MAX, GATEWAYS_MAX, MU_MS_MAX, NODES_PER_LAYER_MAX};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop load generator for Lethe (Nym-compatible) mixnets",
    long_about = "Open-loop load generator for Lethe (Nym-compatible) mixnets.\n\n\
        With no arguments: starts a local network with `lethe testnet up` (a directory, 2 \
        mixnodes per layer, 2 gateways), connects gateway clients as senders and receivers, \
        sends 4-hop Sphinx packets [L1, L2, L3, receiver's gateway] at --rate for --duration, \
        prints a report and stops the network. Latency is measured from each packet's \
        scheduled send time (coordinated omission corrected).\n\n\
        --target URL drives an existing network through its directory instead; --network \
        mixnet drives bare mixnodes with loadgen's own final hop (isolates the mix layer).\n\n\
        The testnet's gateways require bandwidth credentials: every sender obtains one from \
        the testnet's issuers before the run and spends it at its gateway (with --target: \
        --issuers, --threshold, --verification-key)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// The `lethe` binary for the embedded network (default: next to loadgen).
    #[arg(long, global = true, env = "LETHE_BIN")]
    pub lethe: Option<PathBuf>,
    /// Drive an existing network through its directory (http://host:port; several
    /// authorities comma-separated, tried in turn): gateway clients as senders and
    /// receivers, routes from the verified consensus.
    #[arg(long, global = true, value_name = "URL[,URL...]")]
    pub target: Option<String>,
    /// An authority's ed25519 public key (hex) to verify documents with; repeat (or
    /// comma-separate) for each: a document needs 2f+1 of their signatures, f = (n-1)/3.
    /// Without it (one directory only) the key is fetched from the directory itself (trust
    /// on first use; loadgen says so).
    #[arg(
        long,
        global = true,
        value_name = "HEX",
        value_delimiter = ',',
        requires = "target"
    )]
    pub directory_key: Vec<String>,
    /// With --target: credential issuers (comma-separated http://host:port) to obtain the
    /// senders' bandwidth credentials from, for gateways that require them. Without it the
    /// senders carry none (open admission). The local testnet's issuers are used by default.
    #[arg(long, global = true, value_delimiter = ',', value_name = "URLS",
          requires_all = ["target", "threshold", "verification_key"])]
    pub issuers: Option<Vec<String>>,
    /// With --target and no --issuers: run even though a gateway requires bandwidth
    /// credentials (every packet is then refused, NO_BANDWIDTH; the report counts the
    /// refusals). Without it loadgen asks the gateways first and stops (exit 2) with the
    /// flags to add.
    #[arg(long, global = true, requires = "target", conflicts_with = "issuers")]
    pub without_credentials: bool,
    /// Issuer shares a credential needs (t), with --issuers.
    #[arg(long, global = true, requires = "issuers")]
    pub threshold: Option<usize>,
    /// The issuers' aggregated verification key (`verification.key` from `lethe keygen`),
    /// with --issuers.
    #[arg(long, global = true, value_name = "PATH", requires = "issuers")]
    pub verification_key: Option<PathBuf>,
    /// What bare `loadgen` / `sweep` start: `testnet` (`lethe testnet up`: directory,
    /// mixnodes, gateways; loadgen's clients connect to the gateways) or `mixnet` (bare
    /// `lethe mixnode` processes and loadgen's own final hop: the mix layer alone).
    #[arg(long, global = true, value_enum, default_value_t = Network::Testnet)]
    pub network: Network,
    /// Start sending at this time (RFC 3339, e.g. 2026-12-07T05:45:00Z, or unix seconds), so
    /// that generators on several machines start together (their clocks synchronised, e.g. by
    /// NTP). The network is set up and the first packets built before; a time in the past
    /// is refused. Ramps: the first step starts then.
    #[arg(long, global = true, value_name = "TIME", value_parser = crate::env::parse_time)]
    pub start_at: Option<std::time::SystemTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Network {
    Testnet,
    Mixnet,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Drive the network once (the default).
    Run,
    /// Saturate one mixnode: 2-hop routes [node, loadgen], rate ramped until it no longer keeps up.
    Node {
        /// The mixnode's mixnet listen address.
        addr: SocketAddr,
        /// Its X25519 Sphinx public key, hex (keys/x25519_sphinx_primary.pub).
        #[arg(long, value_name = "HEX")]
        node_key: String,
        /// Its metrics address, for drop reasons and stage latencies.
        #[arg(long, value_name = "ADDR")]
        node_metrics: Option<SocketAddr>,
        #[command(flatten)]
        ramp: RampArgs,
    },
    /// Raise the rate step by step (on the local network or --target) until p99 or loss
    /// passes its bound.
    Sweep {
        #[command(flatten)]
        ramp: RampArgs,
    },
    /// Merge the runs written with --out into one report: counts summed, percentiles from
    /// the merged latency histograms (e.g. several generators started with --start-at).
    Merge {
        /// The runs' --out directories (summary.json, latency.hdr.b64, lateness.hdr.b64).
        #[arg(required = true, num_args = 1.., value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Packets per second, all senders together (for ramps: see --rate-start).
    #[arg(long, global = true, default_value_t = 500.0)]
    pub rate: f64,
    /// How long to send: seconds, or with a unit (500ms, 10s, 2m, 1h).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_seconds)]
    pub duration: f64,
    /// Senders, each with its own connection (gateway session, or TCP to a mixnode) and an
    /// equal share of the schedule.
    #[arg(long, global = true, default_value_t = 2)]
    pub clients: u32,
    /// Nym packet size.
    #[arg(long, global = true, value_enum, default_value_t = SizeArg::Regular)]
    pub packet_size: SizeArg,
    /// Mean per-hop mix delay in ms, exponential per hop as Nym (Nym's clients use 15).
    /// Default 0: latencies then show what the nodes add, not the mixing delay.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub mu: f64,
    /// No mix delay (same as --mu 0).
    #[arg(long, global = true)]
    pub zero_delay: bool,
    /// A packet handed to the kernel later than this after its scheduled time counts late.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub late_bound_ms: f64,
    /// Drain after the last send: 3 x expected mix delay + this margin, s.
    #[arg(long, global = true, default_value_t = 2.0)]
    pub drain_margin_s: f64,
    /// Seconds of packets built ahead of their scheduled time.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub lookahead_s: f64,
    /// Local network: mixnodes per layer (3 layers). Default 2 on the testnet, 1 with
    /// --network mixnet (where sender i enters at layer-1 node i % N).
    #[arg(long, global = true)]
    pub nodes_per_layer: Option<u32>,
    /// Local testnet: gateways (sender i connects to gateway i % N; one receiver each).
    #[arg(long, global = true, default_value_t = 2)]
    pub gateways: u32,
    /// Local testnet: its mixnodes and gateways write their packet events (trace format v1)
    /// to DIR/parts/ (`lethe testnet up --trace DIR`), and a single run writes loadgen's own
    /// part, DIR/parts/loadgen.csv: a `send` row per packet its senders sent and a `deliver`
    /// row per packet its receivers got. `lethe-sim metrics --trace DIR` reads them once the
    /// run has ended.
    #[arg(long, global = true, value_name = "DIR")]
    pub trace: Option<std::path::PathBuf>,
    /// No progress display (and no live view).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// No live view: without it, while a run sends and drains, a line a second on stderr
    /// (elapsed, offered and sent rate, sent, delivered, in flight, undelivered so far, the
    /// last second's p50/p99) when stderr is a terminal and the output is not --json.
    #[arg(long, global = true)]
    pub no_live: bool,
    /// Report delivered, lost, p50/p99 and every local node's RSS per window of this length
    /// (by scheduled send time; same units as --duration, e.g. 30s, 5m). Shorter runs have
    /// one window.
    #[arg(long, global = true, default_value = "5m", value_parser = parse_seconds)]
    pub window: f64,
    /// Gateway drivers: re-read the topology from the directory at least this often, s (0:
    /// never), and each epoch's document soon after it is due (voting authorities redraw the
    /// layers every epoch), so that new packets are routed only over nodes it still lists, in
    /// the layers the gateways check. One GET per refresh.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub topology_refresh_s: f64,
}

/// Pass/fail thresholds of a run (`run` only; ramps have their own bounds). A run fails, and
/// loadgen exits 1 after its report, when one is breached, when a local node exited or logged
/// a panic, or when the run was interrupted.
#[derive(Args, Debug, Clone, Default)]
pub struct ThresholdArgs {
    /// Most packets that may go undelivered (lost, never sent or in failed writes), percent
    /// of offered. Without it the run fails above 50 % (a network that delivers less than
    /// half is broken, not slow); the soak uses 0.1.
    #[arg(long, global = true, value_name = "PCT")]
    pub max_loss: Option<f64>,
    /// Highest end-to-end p99 latency allowed, ms (nothing delivered fails too).
    #[arg(long, global = true, value_name = "MS")]
    pub max_p99_ms: Option<f64>,
    /// Largest RSS growth allowed for any local node (and loadgen) from the end of the first
    /// window to the end of the run, percent of its RSS at the end of the first window.
    #[arg(long, global = true, value_name = "PCT")]
    pub max_rss_growth_pct: Option<f64>,
}

impl ThresholdArgs {
    pub fn any(&self) -> bool {
        self.max_loss.is_some() || self.max_p99_ms.is_some() || self.max_rss_growth_pct.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        let percent = |value: Option<f64>, flag: &str| match value {
            Some(v) if !(v.is_finite() && (0.0..=100.0).contains(&v)) => {
                Err(format!("{flag} must be a percentage between 0 and 100"))
            }
            _ => Ok(()),
        };
        percent(self.max_loss, "--max-loss")?;
        if let Some(v) = self.max_rss_growth_pct {
            if !(v.is_finite() && v >= 0.0) {
                return Err("--max-rss-growth-pct must be 0 or more".into());
            }
        }
        if let Some(v) = self.max_p99_ms {
            if !(v.is_finite() && v > 0.0) {
                return Err("--max-p99-ms must be more than 0".into());
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print exactly one JSON document (schema: loadgen/schema/report.schema.json).
    #[arg(long, global = true)]
    pub json: bool,
    /// Also write summary.json, timeseries.csv, the latency histogram and PNG plots here (and, on
    /// a local testnet, every node's log in DIR/logs/).
    #[arg(long, global = true, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RampArgs {
    /// First step's rate, packets/s.
    #[arg(long, default_value_t = 200.0)]
    pub rate_start: f64,
    /// Each step's rate is the previous one times this.
    #[arg(long, default_value_t = 1.5)]
    pub rate_factor: f64,
    /// Rising steps at most.
    #[arg(long, default_value_t = 12)]
    pub steps_max: u32,
    /// After the first failed step, this many steps between it and the last sustained one.
    #[arg(long, default_value_t = 2)]
    pub refine_steps: u32,
    /// Length of each step (same units as --duration).
    #[arg(long, default_value = "5s", value_parser = parse_seconds)]
    pub step_duration: f64,
    /// A step is sustained only while p99 stays at or under this (default 100 ms + 13.8 x mu).
    #[arg(long)]
    pub p99_bound_ms: Option<f64>,
    /// ... and the lost share of sent packets at or under this.
    #[arg(long, default_value_t = 0.001)]
    pub loss_max: f64,
    /// Trials per step: a step is sustained when the median of its trials' p99 is within
    /// --p99-bound-ms and the median loss within --loss-max (one short trial is noisy).
    #[arg(long, default_value_t = 3)]
    pub trials: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SizeArg {
    Regular,
    Ack,
    Ext8,
    Ext16,
    Ext32,
}

impl SizeArg {
    pub fn size(self) -> PacketSize {
        match self {
            SizeArg::Regular => PacketSize::Regular,
            SizeArg::Ack => PacketSize::Ack,
            SizeArg::Ext8 => PacketSize::Extended8,
            SizeArg::Ext16 => PacketSize::Extended16,
            SizeArg::Ext32 => PacketSize::Extended32,
        }
    }
}

/// The command-line name of a size.
pub fn size_name(size: PacketSize) -> &'static str {
    match size {
        PacketSize::Regular => "regular",
        PacketSize::Ack => "ack",
        PacketSize::Extended8 => "ext8",
        PacketSize::Extended16 => "ext16",
        PacketSize::Extended32 => "ext32",
        PacketSize::OutfoxRegular => "outfox-regular",
        PacketSize::OutfoxAck => "outfox-ack",
    }
}

/// `10`, `10s`, `500ms`, `2m`, `1h` → seconds.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 10, 10s, 500ms, 2m or 1h"))?;
    let seconds = value * scale;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text:?}: must be more than 0 and at most a day"));
    }
    Ok(seconds)
}

impl LoadArgs {
    /// Mean per-hop delay, ms, after --zero-delay.
    pub fn delay_ms_mean(&self) -> f64 {
        if self.zero_delay {
            0.0
        } else {
            self.mu
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err("--rate must be a positive number of packets per second".into());
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(format!("--clients must be between 1 and {CLIENTS_MAX}"));
        }
        if self
            .nodes_per_layer
            .is_some_and(|n| n == 0 || n > NODES_PER_LAYER_MAX)
        {
            return Err(format!(
                "--nodes-per-layer must be between 1 and {NODES_PER_LAYER_MAX}"
            ));
        }
        if self.gateways == 0 || self.gateways > GATEWAYS_MAX {
            return Err(format!("--gateways must be between 1 and {GATEWAYS_MAX}"));
        }
        if !(self.mu.is_finite() && self.mu >= 0.0 && self.mu <= MU_MS_MAX) {
            return Err(format!("--mu must be between 0 and {MU_MS_MAX} ms"));
        }
        if !(self.late_bound_ms.is_finite() && self.late_bound_ms >= 0.0) {
            return Err("--late-bound-ms must be 0 or more".into());
        }
        if !(self.drain_margin_s.is_finite() && (0.0..=3600.0).contains(&self.drain_margin_s)) {
            return Err("--drain-margin-s must be between 0 and 3600".into());
        }
        if !(self.lookahead_s.is_finite() && self.lookahead_s > 0.0 && self.lookahead_s <= 60.0) {
            return Err("--lookahead-s must be more than 0 and at most 60".into());
        }
        if self.window < 1.0 {
            return Err("--window must be at least 1 s".into());
        }
        if (self.duration / self.window).ceil() > crate::limits::WINDOWS_MAX as f64 {
            return Err(format!(
                "--duration / --window gives more than {} windows: use a longer --window",
                crate::limits::WINDOWS_MAX
            ));
        }
        if !(self.topology_refresh_s.is_finite()
            && (self.topology_refresh_s == 0.0
                || (1.0..=86_400.0).contains(&self.topology_refresh_s)))
        {
            return Err("--topology-refresh-s must be 0 (never) or between 1 and 86400".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parses() {
        Cli::command().debug_assert();
        assert_eq!(parse_seconds("500ms").unwrap(), 0.5);
        assert_eq!(parse_seconds("2m").unwrap(), 120.0);
        assert_eq!(parse_seconds("3").unwrap(), 3.0);
        assert_eq!(parse_seconds("30m").unwrap(), 1800.0);
        assert_eq!(parse_seconds("1h").unwrap(), 3600.0);
        assert!(parse_seconds("25h").is_err());
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("x").is_err());
        let cli = Cli::try_parse_from(["loadgen", "--rate", "50", "sweep", "--p99-bound-ms", "9"])
            .unwrap();
        assert_eq!(cli.load.rate, 50.0);
        assert!(matches!(cli.command, Some(Command::Sweep { .. })));
        assert_eq!(cli.load.window, 300.0);
        assert!(!cli.thresholds.any());
        let cli = Cli::try_parse_from([
            "loadgen",
            "--duration",
            "30m",
            "--window",
            "5m",
            "--max-loss",
            "0.1",
            "--max-p99-ms",
            "100",
        ])
        .unwrap();
        assert_eq!(cli.load.duration, 1800.0);
        assert_eq!(cli.thresholds.max_loss, Some(0.1));
        assert!(cli.load.validate().is_ok() && cli.thresholds.validate().is_ok());
        let cli = Cli::try_parse_from(["loadgen", "--duration", "1h", "--window", "1s"]).unwrap();
        assert!(cli.load.validate().is_err(), "3600 windows");
        let cli = Cli::try_parse_from(["loadgen", "--max-loss", "120"]).unwrap();
        assert!(cli.thresholds.validate().is_err());
        let cli = Cli::try_parse_from(["loadgen", "sweep"]).unwrap();
        match cli.command {
            Some(Command::Sweep { ramp }) => assert_eq!(ramp.trials, 3),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["loadgen", "--start-at", "2026-12-07T05:45:00Z"]).unwrap();
        assert!(cli.start_at.is_some());
        assert!(Cli::try_parse_from(["loadgen", "--start-at", "tomorrow"]).is_err());
        let cli = Cli::try_parse_from(["loadgen", "merge", "a", "b"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Merge { dirs }) if dirs.len() == 2));
        assert!(Cli::try_parse_from(["loadgen", "merge"]).is_err());
    }
}
