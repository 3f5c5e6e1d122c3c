//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
/// No test run may take longer than this.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The `lethe` binary beside `loadgen`, built first (with the same profile) if it is missing.
pub fn lethe() -> PathBuf {
    let dir = Path::new(LOADGEN).parent().unwrap();
    let lethe = dir.join("lethe");
    if !lethe.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "lethe-nodes", "--bin", "lethe"]);
        // The profile's directory is named for it (`dev` builds into `debug`).
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building lethe failed");
    }
    assert!(lethe.is_file(), "no lethe binary at {}", lethe.display());
    lethe
}

/// Runs loadgen with `args`, killing it after [`RUN_TIMEOUT`].
pub fn loadgen(args: &[&str]) -> Output {
    let mut child = Command::new(LOADGEN)
        .args(args)
        .env("LETHE_BIN", lethe())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "loadgen {args:?} did not finish in {RUN_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn schema() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/report.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn assert_valid(report: &serde_json::Value) {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "report does not match the schema: {errors:#?}"
    );
}

pub fn check_success(output: &Output) {
    assert!(
        output.status.success(),
        "loadgen failed ({}); stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `lethe mixnode run` started by a test; killed on drop.
pub struct Mixnode {
    pub child: std::process::Child,
    pub listen: String,
    pub metrics: String,
    pub key: String,
    pub dir: PathBuf,
}

impl Mixnode {
    pub fn start(name: &str) -> Mixnode {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new(lethe())
            .args(["mixnode", "init", "--dir", dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = Command::new(lethe())
            .args(["mixnode", "run", "--dir", dir.to_str().unwrap()])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--cores",
                "1",
            ])
            .args([
                "--replay-packets-per-s",
                "200",
                "--replay-key-lifetime-s",
                "3600",
            ])
            .args(["--shutdown-grace-ms", "0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let (mut listen, mut metrics) = (String::new(), String::new());
        for _ in 0..16 {
            if !listen.is_empty() && !metrics.is_empty() {
                break;
            }
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(v) = line.trim().strip_prefix("listen=") {
                listen = v.to_string();
            } else if let Some(v) = line.trim().strip_prefix("metrics=") {
                metrics = v.to_string();
            }
        }
        assert!(
            !listen.is_empty() && !metrics.is_empty(),
            "mixnode did not start"
        );
        let key = std::fs::read_to_string(dir.join("keys/x25519_sphinx_primary.pub"))
            .unwrap()
            .trim()
            .to_string();
        Mixnode {
            child,
            listen,
            metrics,
            key,
            dir,
        }
    }
}

impl Drop for Mixnode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pids of processes whose command line mentions `dir` (a testnet's state directory).
pub fn testnet_processes(dir: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(dir) && !cmdline.contains("testnet down") {
            pids.push(pid);
        }
    }
    pids
}

/// A `lethe testnet up` started by a test (a lone directory, 1 mixnode per layer, 1 gateway, no
/// provider, 2-of-3 credential issuers: the gateway requires bandwidth credentials); `testnet
/// down` on drop. A lone directory keeps the layers put, so a test sees only the changes it
/// makes (voting authorities redraw them every epoch); bare `loadgen` covers the 4.
pub struct TestnetGuard {
    pub dir: PathBuf,
    pub url: String,
    pub key: String,
    /// What `loadgen --target` needs to obtain credentials: the issuer URLs (comma
    /// separated), the threshold and the verification key path.
    pub issuers: String,
    pub threshold: String,
    pub verification_key: String,
    /// The gateway's metrics address (`host:port`).
    pub gateway_metrics: String,
}

impl TestnetGuard {
    pub fn up(name: &str) -> TestnetGuard {
        TestnetGuard::up_with(name, 1)
    }

    /// A testnet with `mixnodes_per_layer` mixnodes in each of the 3 layers.
    pub fn up_with(name: &str, mixnodes_per_layer: u32) -> TestnetGuard {
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let output = Command::new(lethe())
            .args(["testnet", "up", "--dir", dir.to_str().unwrap()])
            .args([
                "--mixnodes-per-layer",
                &mixnodes_per_layer.to_string(),
                "--gateways",
                "1",
                "--provider",
                "false",
                "--authorities",
                "1",
            ])
            .output()
            .unwrap();
        let mut guard = TestnetGuard {
            dir,
            url: String::new(),
            key: String::new(),
            issuers: String::new(),
            threshold: String::new(),
            verification_key: String::new(),
            gateway_metrics: String::new(),
        };
        assert!(
            output.status.success(),
            "testnet up: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .trim()
                .to_string()
        };
        guard.url = field("directory=");
        guard.key = field("directory_key=");
        guard.issuers = field("issuers=");
        guard.threshold = field("threshold=");
        guard.verification_key = field("verification_key=");
        guard.gateway_metrics = stdout
            .lines()
            .filter(|l| l.contains("role=gateway"))
            .flat_map(str::split_whitespace)
            .find_map(|f| f.strip_prefix("metrics="))
            .unwrap()
            .to_string();
        guard
    }

    /// The `--issuers ... --threshold ... --verification-key ...` arguments for loadgen.
    pub fn credential_args(&self) -> Vec<&str> {
        vec![
            "--issuers",
            &self.issuers,
            "--threshold",
            &self.threshold,
            "--verification-key",
            &self.verification_key,
        ]
    }

    /// A one-second `loadgen --target` run against this network at `rate` packets/s, its key
    /// pinned, with credentials or with `--without-credentials`: the JSON report (checked against the schema),
    /// stderr and the exit code.
    pub fn target_report(
        &self,
        rate: &str,
        with_credentials: bool,
    ) -> (serde_json::Value, String, Option<i32>) {
        let mut args = vec![
            "--json",
            "--quiet",
            "--target",
            &self.url,
            "--directory-key",
            &self.key,
            "--duration",
            "1",
            "--rate",
            rate,
        ];
        if with_credentials {
            args.extend(self.credential_args());
        } else {
            // Without it loadgen stops before the run (the gateway requires credentials).
            args.push("--without-credentials");
        }
        let output = loadgen(&args);
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "no JSON report ({e}; {}); stderr:\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        assert_valid(&report);
        (
            report,
            String::from_utf8_lossy(&output.stderr).into_owned(),
            output.status.code(),
        )
    }

    /// The pid `lethe testnet up` recorded for the node listening on `mix_address`, and its
    /// name.
    pub fn node_at(&self, mix_address: &str) -> (u32, String) {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("testnet.json")).unwrap())
                .unwrap();
        let node = state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["info"]["listen"] == mix_address)
            .unwrap_or_else(|| panic!("no testnet node listens on {mix_address}: {state:#}"));
        (
            node["pid"].as_u64().unwrap() as u32,
            node["name"].as_str().unwrap().to_string(),
        )
    }

    /// The pid and name of the first node `lethe testnet up` started in `role`.
    pub fn node_at_role(&self, role: &str) -> (u32, String) {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("testnet.json")).unwrap())
                .unwrap();
        let node = state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["role"] == role)
            .unwrap_or_else(|| panic!("no testnet node in role {role}: {state:#}"));
        (
            node["pid"].as_u64().unwrap() as u32,
            node["name"].as_str().unwrap().to_string(),
        )
    }

    /// The directory's current topology (the signed body, not verified: tests only).
    pub fn topology(&self) -> serde_json::Value {
        let authority = self.url.trim_start_matches("http://");
        let body = http_get(authority, "/v1/topology");
        let signed: serde_json::Value = serde_json::from_str(&body).unwrap();
        serde_json::from_str(signed["body"].as_str().unwrap()).unwrap()
    }

    /// The value of metric `name` (summed over its label sets) on the gateway.
    pub fn gateway_metric(&self, name: &str) -> u64 {
        let text = http_get(&self.gateway_metrics, "/metrics");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// The body of `GET path` on `authority` (`host:port`), HTTP/1.1 with `Connection: close`
/// and no chunking (what the nodes' small HTTP servers answer).
pub fn http_get(authority: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => text,
    }
}

/// A loadgen run in the background: its stderr lines as they come, its stdout at the end.
pub struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    pub fn start(args: &[&str]) -> Background {
        use std::io::{BufRead, Read};
        let mut child = Command::new(LOADGEN)
            .args(args)
            .env("LETHE_BIN", lethe())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let all = std::sync::Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            bytes
        });
        Background {
            child,
            lines,
            stderr,
            stdout: Some(stdout),
        }
    }

    /// Loadgen's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text` (failing the test after `timeout`).
    pub fn wait_for(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stderr line with {text:?} within {timeout:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits for loadgen to exit (killing it after `timeout`): exit code, stdout, stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<u8>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "loadgen did not finish in {timeout:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        // The stderr reader ends with the pipe; give it a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        (status.code(), stdout, stderr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL to `pid`.
pub fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

impl Drop for TestnetGuard {
    fn drop(&mut self) {
        let _ = Command::new(lethe())
            .args(["testnet", "down", "--dir", self.dir.to_str().unwrap()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The plots' size (loadgen/src/plot.rs).
pub const PLOT_WIDTH: u32 = 1000;
pub const PLOT_HEIGHT: u32 = 600;

/// A plot loadgen wrote: decodes as a PNG of the plots' size, is not blank (the pixels vary),
/// and has text where the title goes (dark pixels in the header's top left).
pub fn check_plot(path: &Path) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let name = path.display();
    assert_eq!(
        (info.width, info.height),
        (PLOT_WIDTH, PLOT_HEIGHT),
        "{name}"
    );
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{name}: {:?}", info.color_type);
    let luminance = |x: u32, y: u32| {
        let i = ((y * info.width + x) as usize) * channels;
        (u32::from(pixels[i]) + u32::from(pixels[i + 1]) + u32::from(pixels[i + 2])) / 3
    };
    let count = f64::from(info.width * info.height);
    let (mut sum, mut squares) = (0.0, 0.0);
    for y in 0..info.height {
        for x in 0..info.width {
            let l = f64::from(luminance(x, y));
            sum += l;
            squares += l * l;
        }
    }
    let mean = sum / count;
    let variance = squares / count - mean * mean;
    assert!(
        variance > 100.0,
        "{name} is nearly blank (variance {variance:.1})"
    );
    // The title: rows 8..34, from x = 16 on; rendered text leaves dark pixels there.
    let dark = (8..34)
        .flat_map(|y| (16..500).map(move |x| (x, y)))
        .filter(|&(x, y)| luminance(x, y) < 100)
        .count();
    assert!(dark > 100, "{name}: no title text ({dark} dark pixels)");
}
