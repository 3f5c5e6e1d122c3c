//! The local network bare `loadgen` drives: `lethe testnet up` in a temp dir (the same network
//! the `lethe` binary makes for people, credential issuers included: its gateways admit only
//! clients with bandwidth credentials), always `lethe testnet down` afterwards.
//!
//! `down` runs when the [`Testnet`] is dropped (normal end, error, first Ctrl-C). For the
//! cases where loadgen cannot run it (a second Ctrl-C exits at once, SIGKILL), a small reaper
//! process started with the testnet waits for loadgen to die and then runs `down` itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use lethe_nodes::testnet::TestnetState;

use crate::credentials::IssuerConfig;
use crate::windows::WatchedProcess;

/// The shape of the network.
#[derive(Clone, Debug)]
pub struct TestnetOptions {
    pub lethe: PathBuf,
    pub mixnodes_per_layer: u32,
    pub gateways: u32,
    /// `lethe testnet up --trace DIR`.
    pub trace: Option<PathBuf>,
    /// Where the nodes' logs are copied when the testnet goes down (`--out DIR`: DIR/logs/),
    /// so a failed soak can be read after its state directory is gone.
    pub logs_to: Option<PathBuf>,
}

/// A running testnet; dropping it stops it and removes its directory.
pub struct Testnet {
    lethe: PathBuf,
    root: PathBuf,
    dir: PathBuf,
    reaper: Option<Child>,
    pub directory_url: String,
    pub directory_key: String,
    /// The credential issuers (`None`: the gateways admit every client).
    pub issuers: Option<IssuerConfig>,
    /// (name, pid, state directory, metrics address) of every node.
    pids: Vec<(String, u32, PathBuf, Option<SocketAddr>)>,
    /// Node names by mix listen address.
    names: HashMap<String, String>,
    logs_to: Option<PathBuf>,
}

impl Testnet {
    pub fn up(options: &TestnetOptions) -> Result<Testnet, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "loadgen-testnet-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut testnet = Testnet {
            lethe: options.lethe.clone(),
            dir: root.join("net"),
            root,
            reaper: None,
            directory_url: String::new(),
            directory_key: String::new(),
            issuers: None,
            pids: Vec::new(),
            names: HashMap::new(),
            logs_to: options.logs_to.clone(),
        };
        testnet.reaper = testnet.spawn_reaper().ok();
        let mut up = Command::new(&options.lethe);
        up.args(["testnet", "up", "--dir"]).arg(&testnet.dir);
        if let Some(trace) = &options.trace {
            up.arg("--trace").arg(trace);
        }
        let output = up
            .args([
                "--mixnodes-per-layer",
                &options.mixnodes_per_layer.to_string(),
                "--gateways",
                &options.gateways.to_string(),
                "--provider",
                "false",
            ])
            .stdin(Stdio::null())
            // Own process group: a Ctrl-C at the terminal reaches loadgen only, which then
            // stops the whole testnet itself (a half-started `up` would leave nodes behind).
            .process_group(0)
            .output()
            .map_err(|e| format!("{} testnet up: {e}", options.lethe.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} testnet up failed ({}):\n{}",
                options.lethe.display(),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 20)
            ));
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(url) = line.strip_prefix("directory=") {
                testnet.directory_url = url.trim().to_string();
            } else if let Some(key) = line.strip_prefix("directory_key=") {
                testnet.directory_key = key.trim().to_string();
            }
        }
        if testnet.directory_url.is_empty() || testnet.directory_key.is_empty() {
            return Err("lethe testnet up printed no directory= / directory_key= lines".into());
        }
        let state = TestnetState::load(&testnet.dir)?;
        testnet.issuers = issuer_config(&state)?;
        for node in &state.nodes {
            let metrics = node.info.get("metrics").and_then(|m| m.parse().ok());
            testnet
                .pids
                .push((node.name.clone(), node.pid, node.dir.clone(), metrics));
            if let Some(listen) = node.info.get("listen") {
                testnet.names.insert(listen.clone(), node.name.clone());
            }
        }
        Ok(testnet)
    }

    /// `sh` polls for loadgen's pid and runs `down` once it is gone.
    fn spawn_reaper(&self) -> Result<Child, String> {
        Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
                 if [ -f \"$3/testnet.json\" ]; then \"$2\" testnet down --dir \"$3\"; fi; \
                 rm -rf \"$4\"",
            )
            .arg("loadgen-testnet-reaper")
            .arg(std::process::id().to_string())
            .arg(&self.lethe)
            .arg(&self.dir)
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("reaper: {e}"))
    }

    /// Node names by mix listen address.
    pub fn names(&self) -> HashMap<String, String> {
        self.names.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every node process (directory, issuers, mixnodes, gateways) and its log.
    pub fn processes(&self) -> Vec<WatchedProcess> {
        self.pids
            .iter()
            .map(|(name, pid, dir, metrics)| WatchedProcess {
                name: name.clone(),
                pid: *pid,
                log: Some(dir.join("stderr.log")),
                metrics: *metrics,
            })
            .collect()
    }

    /// Copies every node's stderr log to `out/logs/<node>.log` (best effort: says what failed).
    fn copy_logs(&self, out: &std::path::Path) {
        let logs = out.join("logs");
        if let Err(e) = std::fs::create_dir_all(&logs) {
            eprintln!(
                "loadgen: the nodes' logs were not kept: {}: {e}",
                logs.display()
            );
            return;
        }
        for (name, _, dir, _) in &self.pids {
            let from = dir.join("stderr.log");
            if let Err(e) = std::fs::copy(&from, logs.join(format!("{name}.log"))) {
                eprintln!("loadgen: {} not kept: {e}", from.display());
            }
        }
    }

    /// An error naming a node that is no longer running.
    pub fn check(&self) -> Result<(), String> {
        for (name, pid, dir, _) in &self.pids {
            if !crate::windows::running(*pid) {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                return Err(format!(
                    "testnet node {name} (pid {pid}) has exited; its log:\n{}",
                    tail(&log, 20)
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        if self.dir.join("testnet.json").exists() {
            let _ = Command::new(&self.lethe)
                .args(["testnet", "down", "--dir"])
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .status();
        }
        if let Some(out) = &self.logs_to {
            self.copy_logs(out);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The issuers `testnet up` started (recorded in its testnet.json), if any.
fn issuer_config(state: &TestnetState) -> Result<Option<IssuerConfig>, String> {
    let Some(verification_key) = state.verification_key.clone() else {
        return Ok(None);
    };
    if state.issuers.is_empty() || state.threshold == 0 {
        return Err(
            "the testnet has a verification key but its testnet.json names no issuers or \
             threshold (is `lethe` older than loadgen?)"
                .into(),
        );
    }
    Ok(Some(IssuerConfig {
        issuers: state.issuers.clone(),
        threshold: state.threshold,
        verification_key,
    }))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
