//! `lethe testnet up|down|status`: a complete local network as separate processes — n
//! directory authorities (4 by default: f = 1 may fail or lie), 3 layers of mixnodes,
//! gateways and a service provider — on loopback, or with `--netns` each node in its own
//! network namespace joined by veth pairs to a bridge.
//!
//! The authorities each have their own key, SQLite state and the others pinned as peers;
//! they vote once per clock-aligned epoch, so the epoch is short by default (a joining node
//! is in the document within 1.5 epochs, and `up` waits for the first document listing
//! every node). Every node and every client command printed gets all their URLs and keys.
//!
//! With `--credentials true` (the default) it also runs `lethe keygen --threshold 2 --issuers
//! 3` and three `lethe issuer run` (on loopback, also with `--netns`: only clients talk to
//! them), starts the gateways with `--verification-key` (admission on), and the provider
//! obtains a credential at `client init`.
//!
//! State lives in one directory (see [`default_dir`]: `$XDG_STATE_HOME/lethe/testnet`, not the
//! working directory, so `up`, `status` and `down` find it from anywhere and nothing lands in a
//! checkout): a sub-directory per node (keys, config, databases, replay snapshots,
//! `stdout.log`, `stderr.log`), `testnet.json` (pids and addresses; present exactly while the
//! testnet runs) that `down`, `status` and `env` read, and a marker file that lets `up` reuse
//! the directory. Nodes print `key=value` lines on stdout at start; `up` waits for them.
//!
//! Lifecycle: `down` stops every node, then deletes what is bulky or secret (keys, databases,
//! replay snapshots: hundreds of MB) and keeps each node's logs for a post-mortem; `--purge`
//! deletes the whole directory. `up` on a directory of a stopped testnet starts afresh: new
//! keys, new addresses, the old logs deleted (a testnet's identities are worthless once its
//! processes are gone, and reusing them would mean a directory still listing the old nodes).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::node::runtime_config::Profile;

/// How long one node may take to print its addresses.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long `down` waits for SIGKILLed nodes to disappear before deleting their files.
const KILL_WAIT: Duration = Duration::from_secs(5);
const STATE_FILE: &str = "testnet.json";
/// Written by `up`: this directory is a testnet's, so `up` may clear it and `--purge` delete it.
const MARKER_FILE: &str = ".lethe-testnet";
/// Files of a node directory that `down` keeps (without `--purge`).
const KEPT_FILES: [&str; 2] = ["stdout.log", "stderr.log"];
/// `status`'s exit status when no testnet runs in the directory (LSB: "program is not
/// running"), so scripts can tell it from a testnet with failed nodes (1).
pub const EXIT_NOT_RUNNING: u8 = 3;
/// Network namespaces: names `lethe-<n>`, host bridge `lethe-br0` with BRIDGE_IP/24.
const NETNS_PREFIX: &str = "lethe-";
const BRIDGE: &str = "lethe-br0";
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Fixed ports inside namespaces (each node has its own address there).
const NETNS_MIX_PORT: u16 = 1789;
const NETNS_CLIENT_PORT: u16 = 9000;
const NETNS_METRICS_PORT: u16 = 9100;
const NETNS_DIRECTORY_PORT: u16 = 8080;
/// How long `up` waits for the authorities to certify a document listing every node, beyond
/// the epoch and a half that takes at most.
const FIRST_DOCUMENT_SLACK: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// State directory (created; must not hold a running testnet; a stopped testnet's is
    /// cleared and reused). Default: $XDG_STATE_HOME/lethe/testnet, i.e.
    /// ~/.local/state/lethe/testnet.
    #[arg(long, env = "LETHE_TESTNET_DIR")]
    pub dir: Option<PathBuf>,
    /// Mixnodes per layer (3 layers).
    #[arg(long, default_value_t = 2)]
    pub mixnodes_per_layer: usize,
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Directory authorities, each with its own key and state, all pinned by every node and
    /// client: n = 3f+1 tolerates f down or lying (a document needs 2f+1 signatures). 1: a
    /// lone directory.
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=crate::limits::AUTHORITIES_MAX as u64))]
    pub authorities: u64,
    /// Epoch length, seconds. The authorities vote once per epoch (aligned to the clock), so a
    /// node that joins, or dies and misses its heartbeats, is in or out of the document
    /// within 1.5 epochs; consumers fetch each epoch's document. Layers are kept for the
    /// authorities' layer period (an hour by default, 720 of these epochs). Short for a
    /// local network; `authority run` defaults to 3600.
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub epoch_s: u64,
    /// Seconds without a heartbeat after which the directory drops a node (a dead node
    /// leaves the next document then); nodes heartbeat three times per timeout.
    #[arg(long, default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=3_600))]
    pub heartbeat_timeout_s: u64,
    /// Run each node in its own network namespace (root only; needs `ip`).
    #[arg(long)]
    pub netns: bool,
    /// Also start a SOCKS5 service provider (a client that opens TCP connections for others).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub provider: bool,
    /// Hosts:ports the service provider may connect to (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:*,localhost:*")]
    pub allow: Vec<String>,
    /// Run 2-of-3 credential issuers and require bandwidth credentials at the gateways.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub credentials: bool,
    /// What the mixnodes and gateways are initialised with (`init --profile`): `small` (tens
    /// of MB each: a laptop holds the testnet) or `default` (production sizing: 1.8 GB of
    /// replay filter per node, every CPU per mixnode).
    #[arg(long, value_enum, default_value_t = Profile::Small)]
    pub profile: Profile,
    /// Every mixnode and gateway writes its packet events (trace format v1) to
    /// DIR/parts/<node>.csv; `lethe-sim metrics --trace DIR` merges and reads them (after
    /// `down`, which flushes them). DIR must not hold another run's parts.
    #[arg(long, value_name = "DIR")]
    pub trace: Option<PathBuf>,
    /// With --trace: also the lab ground truth (input -> output links; a `--features lab`
    /// build only).
    #[arg(long, requires = "trace")]
    pub trace_lab: bool,
}

/// Issuers of a testnet with credentials: t of n.
const ISSUER_THRESHOLD: usize = 2;
const ISSUER_COUNT: usize = 3;
/// The testnet issuers' per-IP rate limit: `issuer run`'s global defaults.
const ISSUER_RATE_PER_S: &str = "200";
const ISSUER_BURST: &str = "400";

#[derive(clap::Args, Debug, Clone)]
pub struct DirArgs {
    /// State directory of the testnet. Default: $XDG_STATE_HOME/lethe/testnet, i.e.
    /// ~/.local/state/lethe/testnet.
    #[arg(long, env = "LETHE_TESTNET_DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DownArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Delete the whole state directory, logs included (by default the logs are kept and
    /// the rest, keys, databases and replay snapshots, is deleted).
    #[arg(long)]
    pub purge: bool,
}

/// The default state directory: `$XDG_STATE_HOME/lethe/testnet` (`~/.local/state/...`).
/// Not the working directory: `status` and `down` must find the testnet wherever they are
/// typed, and a running testnet holds hundreds of MB that do not belong in a checkout. Not
/// `$XDG_RUNTIME_DIR` or /tmp either: those are often RAM-backed, and the replay snapshots
/// would double the testnet's memory. Without `$HOME`, `./lethe-testnet`.
pub fn default_dir() -> PathBuf {
    let state_home = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local").join("state"))
        });
    match state_home {
        Some(base) => base.join("lethe").join("testnet"),
        None => PathBuf::from("lethe-testnet"),
    }
}

/// The state directory to use, absolute: paths in `testnet.json` and in the printed commands
/// then work from any working directory.
fn state_dir(given: Option<&Path>) -> PathBuf {
    let dir = given.map_or_else(default_dir, Path::to_path_buf);
    std::path::absolute(&dir).unwrap_or(dir)
}

/// `--issuers ... --threshold ... --verification-key ...` of the running local testnet one of
/// whose authorities is (one of) `directory_url` (a URL or a comma-separated list; the
/// testnet looked for where `testnet up` puts it by default, or `$LETHE_TESTNET_DIR`), for
/// messages that tell a client what to add.
pub fn credential_flags_for(directory_url: &str) -> Option<String> {
    let root = state_dir(
        std::env::var_os("LETHE_TESTNET_DIR")
            .map(PathBuf::from)
            .as_deref(),
    );
    let state = TestnetState::load(&root).ok()?;
    let same = |u: &str| u.trim_end_matches('/').to_string();
    let given: Vec<String> = split_list(directory_url).iter().map(|u| same(u)).collect();
    if !state
        .authority_urls()
        .iter()
        .any(|u| given.contains(&same(u)))
    {
        return None;
    }
    let vk = state.verification_key.as_ref()?;
    Some(format!(
        "--issuers {} --threshold {} --verification-key {}",
        state.issuers.join(","),
        state.threshold,
        crate::keyfile::shell_quote(&vk.to_string_lossy())
    ))
}

/// How the user invoked `lethe` (argv[0] when it is a path, e.g. `target/release/lethe`), for
/// commands printed to be pasted: `lethe` itself is often not on PATH.
pub fn invoked_as() -> String {
    match std::env::args_os().next() {
        Some(arg0) if Path::new(&arg0).components().count() > 1 => {
            crate::keyfile::shell_quote(&arg0.to_string_lossy())
        }
        _ => "lethe".to_string(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub role: String,
    pub pid: u32,
    pub dir: PathBuf,
    /// The `key=value` lines the node printed.
    pub info: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub netns: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestnetState {
    /// The authorities' URLs, comma-separated (n = 1: the directory's): as every `--directory`
    /// flag takes them.
    pub directory_url: String,
    /// Their keys, comma-separated, in the same order: as every `--directory-key` takes them.
    pub directory_key: String,
    pub nodes: Vec<NodeState>,
    pub netns: bool,
    /// Credential issuer URLs (empty: admission is open).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// The issuers' aggregated verification key.
    #[serde(default)]
    pub verification_key: Option<PathBuf>,
    /// Issuer shares a credential needs (t of the n issuers); 0 without issuers.
    #[serde(default)]
    pub threshold: usize,
    /// `--trace DIR` (absolute): where the nodes' parts go, and clients' with the same flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<PathBuf>,
}

impl TestnetState {
    pub fn load(dir: &Path) -> Result<TestnetState, String> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The authorities clients of this testnet pin.
    pub fn authorities(&self) -> Result<crate::directory::client::Authorities, String> {
        crate::directory::client::Authorities::from_hex(
            &self.authority_urls(),
            &self.authority_keys(),
        )
    }

    pub fn authority_urls(&self) -> Vec<String> {
        split_list(&self.directory_url)
    }

    pub fn authority_keys(&self) -> Vec<String> {
        split_list(&self.directory_key)
    }

    pub fn gateways(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.role == "gateway")
    }
}

/// Where the node's addresses live: loopback with ephemeral ports, or a namespace address.
#[derive(Clone, Copy)]
enum Placement {
    Loopback,
    Netns { index: u8 },
}

impl Placement {
    fn ip(self) -> IpAddr {
        match self {
            Placement::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Placement::Netns { index } => IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10 + index)),
        }
    }

    fn addr(self, netns_port: u16) -> SocketAddr {
        match self {
            Placement::Loopback => SocketAddr::new(self.ip(), 0),
            Placement::Netns { .. } => SocketAddr::new(self.ip(), netns_port),
        }
    }

    fn netns(self) -> Option<String> {
        match self {
            Placement::Loopback => None,
            Placement::Netns { index } => Some(format!("{NETNS_PREFIX}{index}")),
        }
    }
}

/// The `lethe` binary to start nodes with: this very executable.
fn lethe_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the lethe executable: {e}"))
}

fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `lethe ROLE init --dir DIR EXTRA`; returns what it printed (`authority init`: `key=HEX`).
fn init_node(exe: &Path, role: &str, dir: &Path, extra: &[&str]) -> Result<String, String> {
    let output = Command::new(exe)
        .args([role, "init", "--dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{role} init: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "lethe {role} init --dir {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A node process started and not yet known to be up.
struct Launched {
    child: std::process::Child,
    name: String,
    role: String,
    dir: PathBuf,
    keys: &'static [&'static str],
    placement: Placement,
}

/// One node to start: `lethe ARGS` with its files in `dir`, up once its stdout has every
/// one of `keys`.
struct Plan {
    name: String,
    role: &'static str,
    dir: PathBuf,
    args: Vec<String>,
    keys: &'static [&'static str],
    placement: Placement,
}

/// Starts `lethe ARGS` detached (own process group, output to files in `dir`), optionally in
/// a namespace; [`ready`] then waits for it.
fn launch(exe: &Path, plan: Plan) -> Result<Launched, String> {
    use std::os::unix::process::CommandExt;
    let Plan {
        name,
        role,
        dir,
        args,
        keys,
        placement,
    } = plan;
    let stdout_path = dir.join("stdout.log");
    let stderr_path = dir.join("stderr.log");
    let stdout =
        fs::File::create(&stdout_path).map_err(|e| format!("{}: {e}", stdout_path.display()))?;
    let stderr =
        fs::File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let mut command = match placement.netns() {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Each node's stderr.log in the format `testnet up` was asked for.
        .env("LETHE_LOG_FORMAT", crate::logging::format().as_str())
        .process_group(0);
    let child = command.spawn().map_err(|e| format!("{name}: {e}"))?;
    Ok(Launched {
        child,
        name,
        role: role.to_string(),
        dir,
        keys,
        placement,
    })
}

/// Waits (bounded) until a launched node has printed every one of its keys.
fn ready(mut node: Launched) -> Result<NodeState, String> {
    let stdout_path = node.dir.join("stdout.log");
    let stderr_path = node.dir.join("stderr.log");
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    loop {
        let info = read_info(&stdout_path);
        if node.keys.iter().all(|k| info.contains_key(*k)) {
            return Ok(NodeState {
                name: node.name,
                role: node.role,
                pid: node.child.id(),
                dir: node.dir,
                info,
                netns: node.placement.netns(),
            });
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            let log = fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(format!(
                "{} exited ({status}) before starting:\n{}",
                node.name,
                tail(&log, 20)
            ));
        }
        if Instant::now() > deadline {
            let _ = node.child.kill();
            return Err(format!(
                "{} did not print {:?} within {}s; see {}",
                node.name,
                node.keys,
                NODE_START_TIMEOUT.as_secs(),
                stderr_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for nodes launched together (they start in parallel), adding each to `nodes`; on
/// a failure the ones not yet up are killed too, since `up` stops only what `nodes` lists.
fn ready_all(launched: Vec<Launched>, nodes: &mut Vec<NodeState>) -> Result<(), String> {
    let mut pending = launched.into_iter();
    while let Some(node) = pending.next() {
        match ready(node) {
            Ok(state) => nodes.push(state),
            Err(e) => {
                for mut rest in pending {
                    let _ = rest.child.kill();
                    let _ = rest.child.wait();
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Launches `count` nodes, the `index`th as `plan(index)` says, then waits for them all (they
/// start in parallel) and returns them as added to `nodes`. A plan or launch that fails kills
/// the ones launched before it.
fn launch_all<'n>(
    exe: &Path,
    count: usize,
    nodes: &'n mut Vec<NodeState>,
    mut plan: impl FnMut(usize) -> Result<Plan, String>,
) -> Result<&'n [NodeState], String> {
    let mut launched = Vec::with_capacity(count);
    for index in 0..count {
        match plan(index).and_then(|p| launch(exe, p)) {
            Ok(node) => launched.push(node),
            Err(e) => {
                abandon(launched);
                return Err(e);
            }
        }
    }
    let first = nodes.len();
    ready_all(launched, nodes)?;
    Ok(&nodes[first..])
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_info(path: &Path) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            // `lethe issuer run` announces itself as `listening on ADDR`.
            match l.strip_prefix("listening on ") {
                Some(addr) => Some(("listen", addr)),
                None => l.split_once('='),
            }
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `ROLE run` flags of every mixnode and gateway (the sizes come from `init --profile`): its
/// dir, mix and metrics addresses, the authorities, a short shutdown, and three heartbeats
/// per timeout (one lost heartbeat is not a departure).
fn node_run_args(
    a: &UpArgs,
    role: &str,
    dir: &Path,
    place: Placement,
    directory_url: &str,
) -> Vec<String> {
    let mut run = args(&[role, "run", "--dir"]);
    run.push(path_arg(dir));
    run.extend(args(&["--listen"]));
    run.push(place.addr(NETNS_MIX_PORT).to_string());
    run.extend(args(&["--metrics-listen"]));
    run.push(place.addr(NETNS_METRICS_PORT).to_string());
    run.extend(args(&["--directory", directory_url]));
    run.extend(args(&["--shutdown-grace-ms", "2000", "--heartbeat-s"]));
    run.push((a.heartbeat_timeout_s / 3).max(1).to_string());
    run
}

pub fn up(a: &UpArgs) -> Result<(), String> {
    let root = state_dir(a.dir.as_deref());
    if root.join(STATE_FILE).exists() {
        // Its processes may be gone (a reboot, a kill): `down` still cleans up after them.
        let running = TestnetState::load(&root)
            .map(|s| s.nodes.iter().any(|n| pid_alive(n.pid)))
            .unwrap_or(true);
        return Err(format!(
            "{} holds a {} testnet: `{} testnet down --dir {}` first",
            root.display(),
            if running {
                "running"
            } else {
                "dead (no process left)"
            },
            invoked_as(),
            crate::keyfile::shell_quote(&root.to_string_lossy())
        ));
    }
    if a.mixnodes_per_layer == 0 || a.gateways == 0 {
        return Err("need at least one mixnode per layer and one gateway".into());
    }
    let node_count = usize::try_from(a.authorities).unwrap_or(usize::MAX)
        + 3 * a.mixnodes_per_layer
        + a.gateways;
    if a.netns && node_count > 200 {
        return Err("too many nodes for the 10.77.0.0/24 namespace network".into());
    }
    let trace_parts = match &a.trace {
        Some(dir) => Some(prepare_trace_dir(dir, a.trace_lab)?),
        None => None,
    };
    prepare_dir(&root)?;
    let exe = lethe_exe()?;
    let mut placements = (0..node_count as u8).map(|index| {
        if a.netns {
            Placement::Netns { index }
        } else {
            Placement::Loopback
        }
    });
    if a.netns {
        netns_setup(node_count)?;
    }
    let mut nodes: Vec<NodeState> = Vec::new();
    let result = start_all(
        a,
        &root,
        &exe,
        trace_parts.as_deref(),
        &mut placements,
        &mut nodes,
    );
    let state = match result {
        Ok(state) => state,
        Err(e) => {
            // Leave nothing running behind a failed start.
            stop_nodes(&nodes);
            if a.netns {
                netns_teardown();
            }
            return Err(e);
        }
    };
    state.save(&root)?;
    print_summary(&state, &root);
    Ok(())
}

/// `--trace DIR`: creates DIR/parts (absolute, since nodes run elsewhere) and refuses one
/// that already holds parts (a merge would mix two runs); a lab trace needs a lab build.
fn prepare_trace_dir(dir: &Path, lab: bool) -> Result<PathBuf, String> {
    if lab && !lethe_engine::runtime::trace::LAB_BUILT {
        return Err("--trace-lab needs a build with `--features lab`".into());
    }
    let parts = dir.join(lethe_sim::merge::PARTS_DIR);
    fs::create_dir_all(&parts).map_err(|e| format!("{}: {e}", parts.display()))?;
    let parts = fs::canonicalize(&parts).map_err(|e| format!("{}: {e}", parts.display()))?;
    let used = fs::read_dir(&parts)
        .map_err(|e| format!("{}: {e}", parts.display()))?
        .next()
        .is_some();
    if used {
        return Err(format!(
            "{} already holds a run's traces: give --trace a new directory",
            parts.display()
        ));
    }
    Ok(parts)
}

/// A node's `--trace` flags: its part under `parts`.
fn trace_args(parts: Option<&Path>, name: &str, lab: bool) -> Vec<String> {
    let Some(parts) = parts else {
        return Vec::new();
    };
    let mut out = vec!["--trace".to_string()];
    out.push(path_arg(&parts.join(format!("{name}.csv"))));
    if lab {
        out.push("--trace-lab".into());
    }
    out
}

/// Makes `root` an empty testnet directory: created if missing; a stopped testnet's (marked)
/// cleared; anything else refused, since clearing it could delete someone's files.
fn prepare_dir(root: &Path) -> Result<(), String> {
    let shown = root.display();
    match fs::read_dir(root) {
        Ok(mut entries) => {
            let empty = entries.next().is_none();
            if !empty {
                if !is_testnet_dir(root) {
                    return Err(format!(
                        "{shown} is not empty and is not a testnet's directory: pass another \
                         --dir, or empty it"
                    ));
                }
                // Not recursive into a symlink: remove_dir_all removes the link itself.
                for entry in fs::read_dir(root).map_err(|e| format!("{shown}: {e}"))? {
                    let path = entry.map_err(|e| format!("{shown}: {e}"))?.path();
                    remove_path(&path)?;
                }
                tracing::info!(
                    dir = %shown,
                    "the directory held a stopped testnet: cleared it (old keys and logs) to \
                     start afresh"
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    crate::keyfile::create_private_dir(root)?;
    let marker = root.join(MARKER_FILE);
    fs::write(
        &marker,
        "A `lethe testnet` state directory: `lethe testnet up` may clear it, `down --purge` \
         delete it.\n",
    )
    .map_err(|e| format!("{}: {e}", marker.display()))
}

/// A directory `up` made (its marker), or one made before markers existed (a directory node
/// and a first gateway).
fn is_testnet_dir(root: &Path) -> bool {
    root.join(MARKER_FILE).is_file()
        || (root.join("directory").is_dir() && root.join("gateway1").is_dir())
}

fn remove_path(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn start_all(
    a: &UpArgs,
    root: &Path,
    exe: &Path,
    trace_parts: Option<&Path>,
    placements: &mut impl Iterator<Item = Placement>,
    nodes: &mut Vec<NodeState>,
) -> Result<TestnetState, String> {
    let (urls, keys) = start_authorities(a, root, exe, &mut *placements, nodes)?;
    let directory_url = urls.join(",");
    let directory_key = keys.join(",");

    // Credential issuers (on loopback: only clients on this host talk to them).
    let (issuers, verification_key) = if a.credentials {
        let (urls, vk) = start_issuers(root, exe, nodes)?;
        (urls, Some(vk))
    } else {
        (Vec::new(), None)
    };

    // Mixnodes and gateways: initialised one by one, then started together.
    let mixnodes = 3 * a.mixnodes_per_layer;
    launch_all(exe, mixnodes + a.gateways, nodes, |index| {
        let place = placements.next().ok_or("placement")?;
        if index < mixnodes {
            plan_mixnode(a, root, exe, trace_parts, place, index, &directory_url)
        } else {
            plan_gateway(
                a,
                root,
                exe,
                trace_parts,
                place,
                index - mixnodes,
                (&directory_url, &directory_key),
                verification_key.as_deref(),
            )
        }
    })?;

    let mut state = TestnetState {
        directory_url: directory_url.clone(),
        directory_key: directory_key.clone(),
        nodes: nodes.clone(),
        netns: a.netns,
        issuers: issuers.clone(),
        verification_key: verification_key.clone(),
        threshold: if issuers.is_empty() {
            0
        } else {
            ISSUER_THRESHOLD
        },
        trace: trace_parts.and_then(Path::parent).map(Path::to_path_buf),
    };
    // A node registered during epoch E is in E+1's vote, certified in the middle of E+1.
    let bound = FIRST_DOCUMENT_SLACK + Duration::from_secs(a.epoch_s.saturating_mul(3) / 2);
    wait_for_topology(&state, 3 * a.mixnodes_per_layer, a.gateways, bound)?;

    // The service provider: a client of the first gateway, started once the network is up.
    if a.provider {
        let dir = root.join("provider");
        let gateway = state
            .gateways()
            .next()
            .and_then(|g| g.info.get("identity").cloned())
            .ok_or("no gateway identity")?;
        let mut init = args(&["client", "init", "--dir"]);
        init.push(path_arg(&dir));
        init.extend(args(&["--directory"]));
        init.push(directory_url.clone());
        init.extend(args(&["--directory-key"]));
        init.push(directory_key.clone());
        init.extend(args(&["--gateway"]));
        init.push(gateway);
        if let Some(vk) = &verification_key {
            init.extend(args(&["--issuers"]));
            init.push(issuers.join(","));
            init.extend(args(&["--threshold"]));
            init.push(ISSUER_THRESHOLD.to_string());
            init.extend(args(&["--verification-key"]));
            init.push(path_arg(vk));
        }
        let output = Command::new(exe)
            .args(&init)
            .output()
            .map_err(|e| format!("provider init: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "lethe client init (provider): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let mut run = args(&["provider", "run", "--dir"]);
        run.push(path_arg(&dir));
        run.extend(args(&["--allow"]));
        run.push(a.allow.join(","));
        if let Some(dir) = &state.trace {
            run.extend(args(&["--trace"]));
            run.push(path_arg(dir));
        }
        let provider = ready(launch(
            exe,
            Plan {
                name: "provider".to_string(),
                role: "provider",
                dir,
                args: run,
                keys: &["address"],
                placement: Placement::Loopback,
            },
        )?)?;
        nodes.push(provider);
        state.nodes = nodes.clone();
    }
    Ok(state)
}

/// Kills nodes launched but not yet up (a start that failed half-way).
fn abandon(launched: Vec<Launched>) {
    for mut node in launched {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
}

/// Initialises mixnode `mix<index + 1>` and plans its start.
fn plan_mixnode(
    a: &UpArgs,
    root: &Path,
    exe: &Path,
    trace_parts: Option<&Path>,
    place: Placement,
    index: usize,
    directory_url: &str,
) -> Result<Plan, String> {
    let name = format!("mix{}", index + 1);
    let dir = root.join(&name);
    init_node(exe, "mixnode", &dir, &["--profile", a.profile.name()])?;
    let mut run = node_run_args(a, "mixnode", &dir, place, directory_url);
    run.extend(trace_args(trace_parts, &name, a.trace_lab));
    Ok(Plan {
        name,
        role: "mixnode",
        dir,
        args: run,
        keys: &["listen", "metrics"],
        placement: place,
    })
}

/// Initialises gateway `gateway<index + 1>` and plans its start.
#[allow(clippy::too_many_arguments)]
fn plan_gateway(
    a: &UpArgs,
    root: &Path,
    exe: &Path,
    trace_parts: Option<&Path>,
    place: Placement,
    index: usize,
    (directory_url, directory_key): (&str, &str),
    verification_key: Option<&Path>,
) -> Result<Plan, String> {
    let name = format!("gateway{}", index + 1);
    let dir = root.join(&name);
    init_node(exe, "gateway", &dir, &["--profile", a.profile.name()])?;
    let mut run = node_run_args(a, "gateway", &dir, place, directory_url);
    run.extend(args(&["--client-listen"]));
    run.push(place.addr(NETNS_CLIENT_PORT).to_string());
    run.extend(args(&["--directory-key", directory_key]));
    if let Some(vk) = verification_key {
        run.extend(args(&["--verification-key"]));
        run.push(path_arg(vk));
    }
    run.extend(trace_args(trace_parts, &name, a.trace_lab));
    Ok(Plan {
        name,
        role: "gateway",
        dir,
        args: run,
        keys: &["listen", "client_url", "metrics", "identity"],
        placement: place,
    })
}

/// The authorities, `authority1..N`: each initialised (its key), then all started together,
/// each with every other one pinned as a peer (`--peer URL=KEY`). Returns their URLs and
/// keys (hex), in one order.
fn start_authorities(
    a: &UpArgs,
    root: &Path,
    exe: &Path,
    placements: &mut impl Iterator<Item = Placement>,
    nodes: &mut Vec<NodeState>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let count = usize::try_from(a.authorities).unwrap_or(usize::MAX);
    // (name, dir, placement, listen address, key)
    let mut planned = Vec::with_capacity(count);
    // Each peer's URL is a flag of the others, so every port is chosen before any starts:
    // held here until then (a lone directory takes port 0 itself).
    let mut held_ports = Vec::new();
    for index in 1..=count {
        let place = placements.next().ok_or("placement")?;
        let name = format!("authority{index}");
        let dir = root.join(&name);
        let printed = init_node(exe, "authority", &dir, &[])?;
        let key = printed
            .lines()
            .find_map(|l| l.trim().strip_prefix("key="))
            .ok_or_else(|| format!("lethe authority init printed no key=: {printed}"))?
            .to_string();
        let listen = match place {
            Placement::Loopback if count > 1 => {
                let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .map_err(|e| format!("choosing a port for {name}: {e}"))?;
                let addr = port.local_addr().map_err(|e| e.to_string())?;
                held_ports.push(port);
                addr
            }
            _ => place.addr(NETNS_DIRECTORY_PORT),
        };
        planned.push((name, dir, place, listen, key));
    }
    drop(held_ports);
    let started = launch_all(exe, count, nodes, |index| {
        let (name, dir, place, listen, _) = planned.get(index).ok_or("authority plan")?;
        let mut run = args(&["authority", "run", "--dir"]);
        run.push(path_arg(dir));
        run.extend(args(&["--listen"]));
        run.push(listen.to_string());
        run.extend(args(&["--epoch-s"]));
        run.push(a.epoch_s.to_string());
        run.extend(args(&["--heartbeat-timeout-s"]));
        run.push(a.heartbeat_timeout_s.to_string());
        // Every node is on loopback or a private namespace network, all on one host.
        run.extend(args(&["--private-network"]));
        for (peer, (_, _, _, peer_listen, peer_key)) in planned.iter().enumerate() {
            if peer != index {
                run.extend(args(&["--peer"]));
                run.push(format!("http://{peer_listen}={peer_key}"));
            }
        }
        Ok(Plan {
            name: name.clone(),
            role: "authority",
            dir: dir.clone(),
            args: run,
            keys: &["listen", "key"],
            placement: *place,
        })
    })?;
    Ok((
        started
            .iter()
            .map(|n| format!("http://{}", n.info["listen"]))
            .collect(),
        started.iter().map(|n| n.info["key"].clone()).collect(),
    ))
}

/// `lethe keygen` (2 of 3) in DIR/issuers and one `lethe issuer run` per key; returns the
/// issuer URLs and the verification key path.
fn start_issuers(
    dir: &Path,
    exe: &Path,
    nodes: &mut Vec<NodeState>,
) -> Result<(Vec<String>, PathBuf), String> {
    let keys = dir.join("issuers");
    let keys = std::path::absolute(&keys).unwrap_or(keys);
    let output = Command::new(exe)
        .args(["keygen", "--threshold"])
        .arg(ISSUER_THRESHOLD.to_string())
        .arg("--issuers")
        .arg(ISSUER_COUNT.to_string())
        .arg("--out")
        .arg(&keys)
        .output()
        .map_err(|e| format!("keygen: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "lethe keygen: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let started = launch_all(exe, ISSUER_COUNT, nodes, |slot| {
        let index = slot + 1;
        let name = format!("issuer{index}");
        let node_dir = dir.join(&name);
        fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
        let mut run = args(&["issuer", "run", "--listen", "127.0.0.1:0", "--key"]);
        run.push(path_arg(&keys.join(format!("issuer-{index}.key"))));
        // Every client of a testnet comes from this host (one IP): the per-IP limit is the
        // global one, so a batch of clients (loadgen's senders) obtains credentials at once.
        run.extend(args(&[
            "--rate-per-ip",
            ISSUER_RATE_PER_S,
            "--burst-per-ip",
            ISSUER_BURST,
        ]));
        Ok(Plan {
            name,
            role: "issuer",
            dir: node_dir,
            args: run,
            keys: &["listen"],
            placement: Placement::Loopback,
        })
    })?;
    let urls = started
        .iter()
        .map(|n| format!("http://{}", n.info["listen"]))
        .collect();
    Ok((urls, keys.join("verification.key")))
}

/// Waits (at most `bound`) until a consensus the clients accept lists every mixnode and
/// gateway, and every gateway holds that document or a later one: a gateway fetches it a
/// moment after it is certified and refuses first hops its own document does not list
/// (NOT_LAYER1), so a client started as soon as `up` returns would see packets refused.
fn wait_for_topology(
    state: &TestnetState,
    mixnodes: usize,
    gateways: usize,
    bound: Duration,
) -> Result<(), String> {
    let authorities = state.authorities()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let http = crate::directory::client::http_client();
    let deadline = Instant::now() + bound;
    let mut last = String::new();
    while Instant::now() < deadline {
        match runtime.block_on(crate::directory::client::fetch_consensus(
            &http,
            &authorities,
            None,
        )) {
            Ok(t) => {
                let m: usize = t.layers.iter().map(Vec::len).sum();
                if m >= mixnodes && t.gateways.len() >= gateways {
                    let waiting: Vec<&str> = state
                        .gateways()
                        .filter(|g| !runtime.block_on(gateway_holds_document(&http, g, t.epoch)))
                        .map(|g| g.name.as_str())
                        .collect();
                    if waiting.is_empty() {
                        return Ok(());
                    }
                    last = format!("certified, but {} hold no document yet", waiting.join(", "));
                } else {
                    last = format!("{m} mixnodes and {} gateways so far", t.gateways.len());
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "the authorities did not certify a document listing every node within {} s: {last}",
        bound.as_secs()
    ))
}

/// Whether gateway `node` holds a verified document of `epoch` or later (its
/// `lethe_gateway_consensus_epoch`): an earlier one may not list every node yet (the first
/// certified document can be empty), and the gateway refuses first hops it does not list.
async fn gateway_holds_document(http: &reqwest::Client, node: &NodeState, epoch: u64) -> bool {
    let Some(metrics) = node.info.get("metrics") else {
        return false;
    };
    let Ok(response) = http.get(format!("http://{metrics}/metrics")).send().await else {
        return false;
    };
    let Ok(text) = response.text().await else {
        return false;
    };
    text.lines()
        .filter_map(|line| line.strip_prefix("lethe_gateway_consensus_epoch "))
        .any(|value| value.trim().parse::<u64>().is_ok_and(|held| held >= epoch))
}

fn print_summary(state: &TestnetState, dir: &Path) {
    println!("directory={}", state.directory_url);
    println!("directory_key={}", state.directory_key);
    let authorities = state.authority_urls().len();
    println!("authorities={authorities}");
    for node in &state.nodes {
        let mut fields: Vec<String> = node.info.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fields.sort();
        println!(
            "node={} role={} pid={} {}",
            node.name,
            node.role,
            node.pid,
            fields.join(" ")
        );
    }
    let exe = invoked_as();
    let d = crate::keyfile::shell_quote(&dir.to_string_lossy());
    // Every value filled in, in the order they work: pasted as they are, they run.
    let credential = match &state.verification_key {
        Some(vk) => format!(
            " \\\n      --issuers {} --threshold {} --verification-key {}",
            state.issuers.join(","),
            state.threshold,
            crate::keyfile::shell_quote(&vk.to_string_lossy())
        ),
        None => String::new(),
    };
    let init = |name: &str| {
        format!(
            "{exe} client init --dir {name} --directory {url} --directory-key {key}{credential}",
            url = state.directory_url,
            key = state.directory_key,
        )
    };
    let needed = state
        .authorities()
        .map_or(authorities, |set| set.set().threshold());
    // A traced testnet's clients write their parts beside the nodes'.
    let trace = match &state.trace {
        Some(dir) => format!(
            " --trace {}",
            crate::keyfile::shell_quote(&dir.to_string_lossy())
        ),
        None => String::new(),
    };
    eprintln!(
        "\nA Lethe testnet is running (state in {d}), with {authorities} directory \
         authorities (a document needs {needed} of their signatures). Try it, in this order:\n\
         \n  {alice}\
         \n  {bob}\
         \n  {exe} client send --dir alice --to \"$(cat bob/address)\" --message hello --wait-acks{trace}\
         \n  {exe} client receive --dir bob --out bob-inbox --count 1{trace}\
         \n{socks}\
         \nThe same values as shell variables: eval \"$({exe} testnet env --dir {d})\"\
         \n\nCheck it with `{exe} testnet status --dir {d}`; stop it (last) with `{exe} testnet \
         down --dir {d}` (keeps the logs; --purge deletes everything).",
        alice = init("alice"),
        bob = init("bob  "),
        socks = if state.nodes.iter().any(|n| n.role == "provider") {
            format!(
                "\nSOCKS5: {exe} client socks5 --dir alice --provider \"$(cat \
                 {d}/provider/address)\" --listen 127.0.0.1:1080{trace}"
            )
        } else {
            String::new()
        },
    );
    if let Some(vk) = &state.verification_key {
        let issuers = state.issuers.join(",");
        println!("issuers={issuers}");
        println!("threshold={}", state.threshold);
        println!("verification_key={}", vk.display());
        eprintln!(
            "\nGateways require bandwidth credentials ({ISSUER_THRESHOLD} of {ISSUER_COUNT} \
             issuers): `client init --issuers ...` above obtains one, and `client init` \
             without them is refused. Or obtain one first and pass it with --credential:\
             \n\n  {exe} credential obtain --issuers {issuers} --threshold {ISSUER_THRESHOLD} \
             --verification-key {vk} --out alice.credential\
             \n  {exe} client init ... --credential alice.credential --verification-key {vk}\
             \n\nA client spends it when its gateway reports no bandwidth; top up by writing a \
             new one to DIR/credential.",
            vk = crate::keyfile::shell_quote(&vk.to_string_lossy()),
        );
    } else {
        eprintln!(
            "\nAdmission is open: the gateways require no credentials (--credentials false)."
        );
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `testnet status`'s view of the authorities: each one's own (a voting authority's epoch,
/// the nodes it sees alive and the document it serves, from its metrics; a lone directory's
/// from `/health`; and whether it signed the document it serves), then the document clients
/// accept and who signed it. Every line says what it could not read instead of failing.
fn print_authorities(state: &TestnetState) {
    use crate::directory::client;
    let Ok(authorities) = state.authorities() else {
        println!("consensus=unreadable (the state file's authority list is malformed)");
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let http = client::http_client();
    let names: Vec<(String, String)> = state
        .authority_urls()
        .iter()
        .zip(state.authority_keys())
        .map(|(url, key)| {
            let name = state
                .nodes
                .iter()
                .find(|n| {
                    n.info
                        .get("listen")
                        .is_some_and(|l| url.ends_with(l.as_str()))
                })
                .map_or_else(|| url.clone(), |n| n.name.clone());
            (name, key)
        })
        .collect();
    let name_of = |key: &[u8; 32]| {
        let hex = crate::keyfile::hex(key);
        names
            .iter()
            .find(|(_, k)| *k == hex)
            .map_or_else(|| hex[..16].to_string(), |(n, _)| n.clone())
    };
    let get_text = |url: String| {
        runtime.block_on(async {
            let response = http.get(url).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = response.bytes().await.ok()?;
            String::from_utf8(body.to_vec()).ok()
        })
    };
    for (url, (name, key)) in authorities.urls().iter().zip(&names) {
        let view = match get_text(format!("{url}/metrics")) {
            Some(text) => authority_view(&text).or_else(|| {
                let health = get_text(format!("{url}/health"))?;
                let h: serde_json::Value = serde_json::from_str(&health).ok()?;
                Some(format!("epoch={} nodes={}", h["epoch"], h["nodes"]))
            }),
            None => None,
        }
        .unwrap_or_else(|| "unreachable".to_string());
        let document = runtime.block_on(client::fetch_consensus_document(&http, url));
        let served = match document {
            Ok(doc) => {
                let epoch = serde_json::from_str::<crate::topology::Topology>(&doc.body)
                    .map_or_else(|_| "malformed".to_string(), |t| t.epoch.to_string());
                let own = crate::keyfile::unhex_32(key).and_then(|k| {
                    crate::topology::AuthoritySet::new(vec![k])
                        .ok()
                        .map(|set| !crate::topology::valid_signers(&doc, &set).is_empty())
                });
                format!(
                    "document_epoch={epoch} signatures={} signed_by_self={}",
                    doc.signatures.len(),
                    own.unwrap_or(false)
                )
            }
            Err(e) => format!("document=none ({e})"),
        };
        println!("authority={name} url={url} {view} {served}");
    }
    match runtime.block_on(client::fetch_consensus(&http, &authorities, None)) {
        Ok(topology) => {
            let mixnodes: usize = topology.layers.iter().map(Vec::len).sum();
            // Who signed it, as the first authority serving it has it.
            let signers = authorities.urls().iter().find_map(|url| {
                let doc = runtime
                    .block_on(client::fetch_consensus_document(&http, url))
                    .ok()?;
                let t: crate::topology::Topology = serde_json::from_str(&doc.body).ok()?;
                (t.epoch == topology.epoch)
                    .then(|| crate::topology::valid_signers(&doc, authorities.set()))
            });
            let signed_by = signers.map_or_else(
                || "unknown".to_string(),
                |keys| keys.iter().map(name_of).collect::<Vec<_>>().join(","),
            );
            println!(
                "consensus epoch={} mixnodes={mixnodes} gateways={} valid_until_s={} \
                 signed_by={signed_by} needed={} of={}",
                topology.epoch,
                topology.gateways.len(),
                topology.valid_until_s,
                authorities.set().threshold(),
                authorities.set().len()
            );
        }
        Err(e) => println!("consensus=none ({e})"),
    }
}

/// A voting authority's own view from its Prometheus text: its epoch, the nodes it sees
/// alive, the votes it holds, the epoch of the document it serves and whether that is this
/// epoch's (it is not during each epoch's first half). `None` for a lone directory (no
/// `lethe_authority_*` series).
fn authority_view(metrics: &str) -> Option<String> {
    let value = |series: &str| {
        metrics.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.trim().to_string())
        })
    };
    let epoch = value("lethe_authority_epoch")?;
    let unknown = || "unknown".to_string();
    let current = value("lethe_authority_consensus_current").is_some_and(|v| v == "1");
    Some(format!(
        "epoch={epoch} nodes={} votes={} serving_epoch={} serving_current={current}",
        value("lethe_authority_nodes{state=\"alive\"}").unwrap_or_else(unknown),
        value("lethe_authority_votes_held").unwrap_or_else(unknown),
        value("lethe_authority_consensus_epoch").unwrap_or_else(unknown),
    ))
}

/// `testnet status`: the exit status is 0 when every node runs, 1 when some have stopped,
/// [`EXIT_NOT_RUNNING`] when no testnet runs in the directory.
pub fn status(a: &DirArgs) -> Result<u8, String> {
    let root = state_dir(a.dir.as_deref());
    if !root.join(STATE_FILE).exists() {
        if is_testnet_dir(&root) {
            println!(
                "not running: the testnet in {} is stopped (its logs are kept there); start \
                 it with `{} testnet up --dir {}`",
                root.display(),
                invoked_as(),
                crate::keyfile::shell_quote(&root.to_string_lossy())
            );
        } else {
            println!("not running: no testnet in {}", root.display());
        }
        return Ok(EXIT_NOT_RUNNING);
    }
    let state = TestnetState::load(&root)?;
    println!("directory={}", state.directory_url);
    print_authorities(&state);
    let mut stopped = Vec::new();
    for node in &state.nodes {
        let alive = pid_alive(node.pid);
        println!(
            "node={} role={} pid={} alive={alive}",
            node.name, node.role, node.pid
        );
        if !alive {
            stopped.push(node.name.as_str());
        }
    }
    if stopped.is_empty() {
        println!("running: {} processes", state.nodes.len());
        return Ok(0);
    }
    println!(
        "degraded: {} of {} processes have stopped ({}); their logs: {}/<node>/stderr.log; \
         restart the testnet with `testnet down` then `testnet up`",
        stopped.len(),
        state.nodes.len(),
        stopped.join(", "),
        root.display()
    );
    Ok(1)
}

/// `testnet env`: the running testnet's values as shell assignments, for
/// `eval "$(lethe testnet env)"`.
pub fn env(a: &DirArgs) -> Result<(), String> {
    let root = state_dir(a.dir.as_deref());
    if !root.join(STATE_FILE).exists() {
        return Err(format!(
            "no testnet runs in {}: start one with `{} testnet up --dir {}`",
            root.display(),
            invoked_as(),
            crate::keyfile::shell_quote(&root.to_string_lossy())
        ));
    }
    let state = TestnetState::load(&root)?;
    let q = |text: &str| {
        if text.is_empty() {
            "''".to_string()
        } else {
            crate::keyfile::shell_quote(text)
        }
    };
    println!("TESTNET_DIR={}", q(&root.to_string_lossy()));
    println!("TESTNET_DIRECTORY={}", q(&state.directory_url));
    println!("TESTNET_DIRECTORY_KEY={}", q(&state.directory_key));
    println!("TESTNET_ISSUERS={}", q(&state.issuers.join(",")));
    println!("TESTNET_THRESHOLD={}", state.threshold);
    let path = |path: &Option<PathBuf>| {
        path.as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    println!(
        "TESTNET_VERIFICATION_KEY={}",
        q(&path(&state.verification_key))
    );
    let provider = state
        .nodes
        .iter()
        .find(|n| n.role == "provider")
        .and_then(|n| n.info.get("address"))
        .cloned()
        .unwrap_or_default();
    println!("TESTNET_PROVIDER={}", q(&provider));
    // Empty when the testnet is not traced: `--trace "$TESTNET_TRACE"` needs a value.
    println!("TESTNET_TRACE={}", q(&path(&state.trace)));
    Ok(())
}

/// `testnet down`: stops every node, then deletes the bulky and secret state (keys,
/// databases, replay snapshots) and keeps the logs, or with `--purge` the whole directory.
/// Without a running testnet it only cleans up, and says so: running it twice is fine.
pub fn down(a: &DownArgs) -> Result<(), String> {
    let root = state_dir(a.dir.dir.as_deref());
    let state_path = root.join(STATE_FILE);
    if state_path.exists() {
        let state = TestnetState::load(&root)?;
        stop_nodes(&state.nodes);
        if state.netns {
            netns_teardown();
        }
        fs::remove_file(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
        println!("stopped {} processes", state.nodes.len());
    } else if root.exists() {
        println!("not running: no testnet runs in {}", root.display());
    } else {
        println!("not running: {} does not exist", root.display());
        return Ok(());
    }
    if !is_testnet_dir(&root) {
        // Made by something else (or emptied by hand): nothing of ours to delete.
        return Ok(());
    }
    if a.purge {
        let bytes = disk_bytes(&root);
        remove_path(&root)?;
        println!(
            "deleted {} ({} MB, logs included)",
            root.display(),
            bytes.div_ceil(1 << 20)
        );
        return Ok(());
    }
    let freed = clear_state(&root)?;
    println!(
        "deleted {} MB of keys, databases and replay snapshots; kept the logs in {}/<node>/ \
         (`testnet down --purge` deletes them too)",
        freed.div_ceil(1 << 20),
        root.display()
    );
    Ok(())
}

/// Deletes everything under `root` but the marker and each node's logs; returns the bytes.
fn clear_state(root: &Path) -> Result<u64, String> {
    let mut freed = 0;
    let entries = fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", root.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            // A node's directory: its logs stay, the rest goes.
            let files = fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for file in files {
                let file = file.map_err(|e| format!("{}: {e}", path.display()))?.path();
                let keep = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| KEPT_FILES.contains(&n));
                if !keep {
                    freed += disk_bytes(&file);
                    remove_path(&file)?;
                }
            }
            // A directory without logs (the issuers' keys) goes entirely.
            if fs::read_dir(&path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
            {
                remove_path(&path)?;
            }
        } else if name != MARKER_FILE {
            freed += meta.len();
            remove_path(&path)?;
        }
    }
    Ok(freed)
}

/// Bytes of a file or a tree (symlinks not followed); unreadable parts count as 0.
fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| disk_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn pid_alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie of ours does not count as alive.
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// SIGTERM to every node's process group, then SIGKILL what is left after the grace period.
fn stop_nodes(nodes: &[NodeState]) {
    let signal_all = |signal: i32| {
        for node in nodes.iter().rev() {
            if let Ok(pid) = i32::try_from(node.pid) {
                if pid > 0 {
                    // SAFETY: signals a process group we created (negative pid).
                    unsafe { libc::kill(-pid, signal) };
                }
            }
        }
    };
    signal_all(libc::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && nodes.iter().any(|n| pid_alive(n.pid)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    signal_all(libc::SIGKILL);
    // Until the killed are gone (bounded): their files are deleted next.
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline && nodes.iter().any(|n| pid_alive(n.pid)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn netns_setup(count: usize) -> Result<(), String> {
    netns_teardown();
    run_quiet("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run_quiet(
        "ip",
        &["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE],
    )?;
    run_quiet("ip", &["link", "set", BRIDGE, "up"])?;
    for index in 0..count {
        let ns = format!("{NETNS_PREFIX}{index}");
        let host_end = format!("lethe-h{index}");
        let ip = Placement::Netns { index: index as u8 }.ip();
        run_quiet("ip", &["netns", "add", &ns])?;
        run_quiet(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run_quiet("ip", &["link", "set", &host_end, "master", BRIDGE])?;
        run_quiet("ip", &["link", "set", &host_end, "up"])?;
        run_quiet(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        run_quiet("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run_quiet("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run_quiet(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &BRIDGE_IP.to_string(),
            ],
        )?;
    }
    Ok(())
}

/// Removes every `lethe-*` namespace and the bridge; missing ones are fine.
fn netns_teardown() {
    if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(name) = line.split_whitespace().next() {
                if name.starts_with(NETNS_PREFIX) {
                    let _ = run_quiet("ip", &["netns", "del", name]);
                }
            }
        }
    }
    let _ = run_quiet("ip", &["link", "del", BRIDGE]);
}

#[derive(clap::Args, Debug, Clone)]
pub struct LinkArgs {
    /// State directory of the testnet (default as for `up`).
    #[arg(long, env = "LETHE_TESTNET_DIR")]
    pub dir: Option<PathBuf>,
    /// Node name as `status` prints it (e.g. `mix3`).
    #[arg(long)]
    pub node: String,
    /// `down` cuts the node's link, `up` restores it.
    #[arg(value_parser = ["up", "down"])]
    pub state: String,
}

/// Cuts (or restores) a node's link in `--netns` mode: for failure experiments.
pub fn link(a: &LinkArgs) -> Result<(), String> {
    let state = TestnetState::load(&state_dir(a.dir.as_deref()))?;
    let node = state
        .nodes
        .iter()
        .find(|n| n.name == a.node)
        .ok_or_else(|| format!("no node named {}", a.node))?;
    let ns = node
        .netns
        .as_deref()
        .ok_or("links can be cut only in a `--netns` testnet")?;
    let index = ns.trim_start_matches(NETNS_PREFIX);
    run_quiet(
        "ip",
        &["link", "set", &format!("lethe-h{index}"), a.state.as_str()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testnet_status_reads_an_authoritys_view_from_its_metrics() {
        let metrics = "# TYPE lethe_authority_epoch gauge\n\
                       lethe_authority_epoch 12\n\
                       lethe_authority_votes_held 3\n\
                       lethe_authority_consensus_epoch 11\n\
                       lethe_authority_consensus_current 0\n\
                       lethe_authority_nodes{state=\"alive\"} 8\n\
                       lethe_authority_nodes{state=\"consensus\"} 7\n";
        assert_eq!(
            authority_view(metrics).as_deref(),
            Some("epoch=12 nodes=8 votes=3 serving_epoch=11 serving_current=false")
        );
        // A lone directory has no authority series: `/health` is read instead.
        assert_eq!(authority_view("lethe_directory_epoch 3\n"), None);
    }
}
