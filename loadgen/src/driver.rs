//! What loadgen drives. A [`Driver`] says where packets go in, what route they take and where
//! they come out; the load run (`run.rs`) is the same for all of them.
//!
//! - [`EmbeddedMixnet`]: three `lethe mixnode` processes (one per layer) spawned in a temp dir,
//!   loadgen's [`StandInGateway`] as the gateway; packets enter at layer 1 as from an entry gateway.
//! - [`SingleNode`]: one existing mixnode, 2-hop routes [node, receiver].
//! - [`crate::gateway::GatewayNetwork`]: a real network read from its directory (the testnet
//!   `loadgen` starts, or `--target URL`); senders and receivers are gateway clients.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lethe_crypto::framing::{FrameHeader, PacketSize};
use lethe_crypto::sphinx::{address, Destination, RouteHop};
use serde::Serialize;

use crate::client_stats::ClientStats;
use crate::generator::{Exit, Topology, Wire};
use crate::limits::{NODE_OUTPUT_LINES_QUEUED, NODE_START_TIMEOUT_MS, NODE_WRITE_TIMEOUT_MS};
use crate::receiver::{ActiveRun, ReceiverStats, StandInGateway};
use crate::refresh::TopologyFeed;
use crate::windows::WatchedProcess;

/// A node the driver knows about (for the report and metrics scraping).
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub role: String,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// One sender's way into the network.
pub trait Injector: Send {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

/// A TCP connection speaking Nym framing (the caller frames).
pub struct TcpInjector {
    stream: TcpStream,
}

impl TcpInjector {
    pub fn connect(address: SocketAddr) -> Result<TcpInjector, String> {
        let stream =
            TcpStream::connect_timeout(&address, Duration::from_millis(NODE_START_TIMEOUT_MS))
                .map_err(|e| format!("connect {address}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| {
                stream.set_write_timeout(Some(Duration::from_millis(NODE_WRITE_TIMEOUT_MS)))
            })
            .map_err(|e| format!("connect {address}: {e}"))?;
        Ok(TcpInjector { stream })
    }
}

impl Injector for TcpInjector {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }
}

/// A network loadgen can drive.
pub trait Driver {
    /// `embedded-mixnet`, `single-node`, ...
    fn kind(&self) -> &'static str;
    fn nodes(&self) -> &[NodeInfo];
    /// The mix layers, the delivering hop and the destination.
    fn topology(&self) -> Topology;
    /// Opens sender `client`'s connection (to its first-layer node: `client % layer size`).
    fn connect(&self, client: u32) -> Result<Box<dyn Injector>, String>;
    /// Deliveries of `run` are counted from now on.
    fn set_run(&self, run: Option<ActiveRun>);
    fn receiver_stats(&self) -> ReceiverStats;
    /// An error if part of the network has died.
    fn check(&mut self) -> Result<(), String>;
    /// How packets of `size` go on the wire (default: Nym frames over TCP).
    fn wire(&self, size: PacketSize) -> Wire {
        Wire::Frame(FrameHeader::v7(size))
    }
    /// Gateway-client counters (gateway drivers only).
    fn client_stats(&self) -> Option<ClientStats> {
        None
    }
    /// The run's `clients` senders and the gateways, as loadgen's trace part names them
    /// (gateway drivers; `None`: loadgen cannot trace its packets on this driver).
    fn trace_clients(&self, _clients: u32) -> Option<crate::trace::TraceClients> {
        None
    }
    /// Bandwidth credentials the driver's clients obtained and spent (gateway drivers).
    fn credentials(&self) -> Option<crate::credentials::CredentialInfo> {
        None
    }
    /// The routes in use when the driver refreshes them from a directory (gateway drivers).
    fn topology_feed(&self) -> Option<Arc<TopologyFeed>> {
        None
    }
    /// How often the topology is refreshed, s (`None`: it is not).
    fn topology_refresh_s(&self) -> Option<f64> {
        None
    }
    /// The node processes loadgen started (their memory is sampled, their exit noticed).
    fn processes(&self) -> Vec<WatchedProcess> {
        Vec::new()
    }
}

/// Where the `lethe` binary is: `--lethe`, then `LETHE_BIN`, then next to this executable.
pub fn find_lethe(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = flag {
        return existing(path, "--lethe");
    }
    if let Some(path) = std::env::var_os("LETHE_BIN") {
        return existing(Path::new(&path), "LETHE_BIN");
    }
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("lethe"));
        // Test binaries live in target/<profile>/deps.
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join("lethe"));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "the `lethe` binary was not found next to {} (needed to start the embedded mixnodes).\n\
             Build it with:  cargo build --release -p lethe-nodes --bin lethe\n\
             or point to it with --lethe PATH or LETHE_BIN=PATH.",
            exe.display()
        )
    })
}

fn existing(path: &Path, source: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "{source}: {} is not a file (build it with: cargo build --release -p lethe-nodes --bin lethe)",
            path.display()
        ))
    }
}

/// A 32-byte key from hex text.
pub fn parse_key_hex(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return Err(format!(
            "expected 64 hex digits for an X25519 public key, got {} characters",
            text.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).unwrap_or("");
        *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("not hex: {pair:?}"))?;
    }
    Ok(out)
}

fn hop(address: SocketAddr, public_key: [u8; 32]) -> RouteHop {
    RouteHop {
        address: address::encode(&address),
        public_key,
    }
}

fn receiver_exit(receiver: &StandInGateway) -> Exit {
    Exit {
        hop: hop(receiver.address, receiver.public_key),
        destination: Destination {
            address: receiver.destination,
            identifier: [0; 16],
        },
    }
}

/// One spawned `lethe mixnode run`.
struct MixProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for MixProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for the embedded network's nodes.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub lethe: PathBuf,
    pub layers: u32,
    pub nodes_per_layer: u32,
    /// Extra `lethe mixnode run` arguments.
    pub extra_args: Vec<String>,
}

/// Local mixnodes (by default three, one per layer) and loadgen's receiver.
pub struct EmbeddedMixnet {
    // Field order matters: processes stop before the directory is removed.
    processes: Vec<MixProcess>,
    nodes: Vec<NodeInfo>,
    keys: Vec<[u8; 32]>,
    /// 0-based layer of each node.
    layer_of: Vec<usize>,
    receiver: StandInGateway,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl EmbeddedMixnet {
    pub fn start(options: &EmbeddedOptions) -> Result<EmbeddedMixnet, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("loadgen-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = TempDir(path);
        let receiver = StandInGateway::start(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let mut processes = Vec::new();
        let mut nodes = Vec::new();
        let mut keys = Vec::new();
        let mut layer_of = Vec::new();
        for layer in 1..=options.layers {
            for index in 1..=options.nodes_per_layer.max(1) {
                let name = if options.nodes_per_layer > 1 {
                    format!("mix-l{layer}-{index}")
                } else {
                    format!("mix-l{layer}")
                };
                let node_dir = dir.0.join(&name);
                init_node(&options.lethe, &node_dir)?;
                let (process, listen, metrics) = run_node(options, &node_dir, &name)?;
                processes.push(process);
                keys.push(read_public_key(&node_dir)?);
                layer_of.push(layer as usize - 1);
                nodes.push(NodeInfo {
                    name,
                    role: format!("mixnode layer {layer}"),
                    listen,
                    metrics: Some(metrics),
                });
            }
        }
        Ok(EmbeddedMixnet {
            processes,
            nodes,
            keys,
            layer_of,
            receiver,
            _dir: dir,
        })
    }
}

fn init_node(lethe: &Path, dir: &Path) -> Result<(), String> {
    let output = Command::new(lethe)
        .arg("mixnode")
        .arg("init")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} mixnode init: {e}", lethe.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} mixnode init --dir {} failed ({}): {}",
            lethe.display(),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

fn run_node(
    options: &EmbeddedOptions,
    dir: &Path,
    name: &str,
) -> Result<(MixProcess, SocketAddr, SocketAddr), String> {
    let log = dir.with_extension("log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = Command::new(&options.lethe);
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe. The node gets SIGTERM if loadgen dies without stopping it (it is
    // in its own process group, so a terminal's signals no longer reach it).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .arg("mixnode")
        .arg("run")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        // One core each, and a small replay filter: the default sizing allocates GBs.
        .args(["--cores", "1", "--replay-packets-per-s", "200"])
        .args([
            "--replay-key-lifetime-s",
            "3600",
            "--shutdown-grace-ms",
            "0",
        ])
        .args(&options.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        // Own process group: a terminal's Ctrl-C reaches loadgen, which then reports and
        // stops the nodes itself.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{} mixnode run: {e}", options.lethe.display()))?;
    let stdout = child.stdout.take();
    let mut process = MixProcess { child, log };
    let Some(stdout) = stdout else {
        return Err("mixnode stdout not captured".into());
    };
    let (lines_tx, lines_rx) = mpsc::sync_channel::<String>(NODE_OUTPUT_LINES_QUEUED);
    std::thread::Builder::new()
        .name(format!("{name}-stdout"))
        .spawn(move || {
            // Reads until the node exits; lines after the first two are dropped.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.try_send(line);
            }
        })
        .map_err(|e| format!("thread: {e}"))?;
    let mut listen = None;
    let mut metrics = None;
    while listen.is_none() || metrics.is_none() {
        let line = match lines_rx.recv_timeout(Duration::from_millis(NODE_START_TIMEOUT_MS)) {
            Ok(line) => line,
            Err(_) => {
                let _ = process.child.kill();
                return Err(format!(
                    "{name} did not start within {}s; its log ({}):\n{}",
                    NODE_START_TIMEOUT_MS / 1_000,
                    process.log.display(),
                    log_tail(&process.log)
                ));
            }
        };
        if let Some(value) = line.strip_prefix("listen=") {
            listen = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("metrics=") {
            metrics = value.trim().parse().ok();
        }
    }
    match (listen, metrics) {
        (Some(listen), Some(metrics)) => Ok((process, listen, metrics)),
        _ => Err("mixnode printed unparsable addresses".into()),
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn read_public_key(dir: &Path) -> Result<[u8; 32], String> {
    let path = dir.join("keys/x25519_sphinx_primary.pub");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_key_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Driver for EmbeddedMixnet {
    fn kind(&self) -> &'static str {
        "embedded-mixnet"
    }

    fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn topology(&self) -> Topology {
        let layers_count = self.layer_of.iter().max().map_or(0, |max| max + 1);
        let mut layers: Vec<Vec<RouteHop>> = vec![Vec::new(); layers_count];
        for ((node, key), layer) in self.nodes.iter().zip(&self.keys).zip(&self.layer_of) {
            if let Some(nodes) = layers.get_mut(*layer) {
                nodes.push(hop(node.listen, *key));
            }
        }
        Topology {
            layers,
            exits: vec![receiver_exit(&self.receiver)],
            entry_per_client: true,
        }
    }

    fn connect(&self, client: u32) -> Result<Box<dyn Injector>, String> {
        let entries: Vec<&NodeInfo> = self
            .nodes
            .iter()
            .zip(&self.layer_of)
            .filter(|(_, layer)| **layer == 0)
            .map(|(node, _)| node)
            .collect();
        let count = entries.len().max(1);
        let entry = entries
            .get(client as usize % count)
            .ok_or("no first-layer node")?;
        Ok(Box::new(TcpInjector::connect(entry.listen)?))
    }

    fn set_run(&self, run: Option<ActiveRun>) {
        self.receiver.set_run(run);
    }

    fn receiver_stats(&self) -> ReceiverStats {
        self.receiver.stats()
    }

    fn processes(&self) -> Vec<WatchedProcess> {
        self.processes
            .iter()
            .zip(&self.nodes)
            .map(|(process, node)| WatchedProcess {
                name: node.name.clone(),
                pid: process.child.id(),
                log: Some(process.log.clone()),
                metrics: node.metrics,
            })
            .collect()
    }

    fn check(&mut self) -> Result<(), String> {
        for (process, node) in self.processes.iter_mut().zip(&self.nodes) {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}); its log ({}):\n{}",
                    node.name,
                    process.log.display(),
                    log_tail(&process.log)
                ));
            }
        }
        Ok(())
    }
}

/// One existing mixnode: routes [node, receiver].
pub struct SingleNode {
    nodes: Vec<NodeInfo>,
    key: [u8; 32],
    receiver: StandInGateway,
}

impl SingleNode {
    pub fn new(
        listen: SocketAddr,
        key: [u8; 32],
        metrics: Option<SocketAddr>,
    ) -> Result<SingleNode, String> {
        // The node must be able to reach the receiver: bind where the node is reachable.
        let bind = if listen.ip().is_loopback() {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let receiver = StandInGateway::start(bind)?;
        Ok(SingleNode {
            nodes: vec![NodeInfo {
                name: "node".into(),
                role: "mixnode under test".into(),
                listen,
                metrics,
            }],
            key,
            receiver,
        })
    }
}

impl Driver for SingleNode {
    fn kind(&self) -> &'static str {
        "single-node"
    }

    fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn topology(&self) -> Topology {
        let exit = receiver_exit(&self.receiver);
        let mut address = self.receiver.address;
        if address.ip().is_unspecified() {
            // Tell the node a concrete address: the one we reach it from.
            if let Ok(stream) = TcpStream::connect_timeout(
                &self.nodes[0].listen,
                Duration::from_millis(NODE_START_TIMEOUT_MS),
            ) {
                if let Ok(local) = stream.local_addr() {
                    address.set_ip(local.ip());
                }
            }
        }
        let exit = Exit {
            hop: RouteHop {
                address: address::encode(&address),
                ..exit.hop
            },
            ..exit
        };
        Topology {
            layers: vec![vec![hop(self.nodes[0].listen, self.key)]],
            exits: vec![exit],
            entry_per_client: true,
        }
    }

    fn connect(&self, _client: u32) -> Result<Box<dyn Injector>, String> {
        Ok(Box::new(TcpInjector::connect(self.nodes[0].listen)?))
    }

    fn set_run(&self, run: Option<ActiveRun>) {
        self.receiver.set_run(run);
    }

    fn receiver_stats(&self) -> ReceiverStats {
        self.receiver.stats()
    }

    fn check(&mut self) -> Result<(), String> {
        Ok(())
    }
}
