//! Shared by the multi-process node tests: `lethe` child processes that announce their
//! addresses on stdout, scratch directories, and Prometheus scrapes. Waits are bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod client;
pub mod gateway;
pub mod http;
pub mod socks;
pub mod testnet;

pub const LETHE: &str = env!("CARGO_BIN_EXE_lethe");
/// Upper bound for any single wait: generous, so a loaded machine is slow, never wrong.
pub const WAIT_MAX: Duration = Duration::from_secs(90);

/// A running `lethe` subcommand, killed when dropped.
pub struct Process {
    pub child: Child,
    /// `key=value` lines it printed at start (`listening on ADDR` is kept as `listening`).
    pub lines: HashMap<String, String>,
    /// Drains the rest of its stdout (into the copy, if any) until it closes.
    pub drain: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `lethe ARGS` (stderr inherited) and reads stdout until every key in `keys` was
    /// printed; stdout is drained afterwards so the child never blocks on a full pipe.
    pub fn start(args: &[&str], keys: &[&str]) -> Process {
        let mut command = Command::new(LETHE);
        command.args(args).stderr(Stdio::inherit());
        Process::start_command(command, keys, None)
    }

    /// [`Process::start`] for a prepared `command` (its environment, its stderr); with
    /// `stdout_copy`, everything it prints on stdout is also written to that file.
    pub fn start_command(
        mut command: Command,
        keys: &[&str],
        stdout_copy: Option<&Path>,
    ) -> Process {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut copy = stdout_copy.map(|path| std::fs::File::create(path).unwrap());
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut lines = HashMap::new();
        for _ in 0..32 {
            if keys.iter().all(|k| lines.contains_key(*k)) {
                break;
            }
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("{command:?} exited before printing {keys:?}");
            }
            if let Some(copy) = copy.as_mut() {
                copy.write_all(line.as_bytes()).unwrap();
            }
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("listening on ") {
                lines.insert("listening".to_string(), addr.to_string());
            } else if let Some((k, v)) = line.split_once('=') {
                lines.insert(k.to_string(), v.to_string());
            }
        }
        assert!(
            keys.iter().all(|k| lines.contains_key(*k)),
            "{command:?} did not print {keys:?}"
        );
        let drain = std::thread::spawn(move || match copy.as_mut() {
            Some(copy) => {
                let _ = std::io::copy(&mut reader, copy);
            }
            None => {
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            }
        });
        Process {
            child,
            lines,
            drain: Some(drain),
        }
    }

    pub fn get(&self, key: &str) -> &str {
        &self.lines[key]
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.lines[key].parse().unwrap()
    }

    pub fn signal(&mut self, signal: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then waits (bounded) for a clean exit and for the last of its stdout.
    pub fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + WAIT_MAX;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "process exited with {status}");
                // Its stdout closes with it, unless a child of its own still holds it.
                if let Some(drain) = self.drain.take() {
                    while !drain.is_finished() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process did not stop after SIGTERM");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// `VmRSS` or `VmHWM` (peak) of the process, in bytes.
    pub fn memory_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field}"));
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An empty scratch directory (not created) named for this test binary, process and `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let test = env!("CARGO_CRATE_NAME");
    let dir = std::env::temp_dir().join(format!("lethe-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The response (head and body) to a plain HTTP/1.1 GET.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT_MAX)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: lethe\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The value of the metric line `name` (with its labels) at a node's metrics address.
pub fn metric(metrics: SocketAddr, name: &str) -> u64 {
    let body = http_get(metrics, "/metrics");
    let line = body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no metric {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until a counter reaches `value`, then checks it did not overshoot.
pub fn wait_metric(metrics: SocketAddr, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    let mut last = 0;
    while Instant::now() < deadline {
        last = metric(metrics, name);
        if last >= value {
            assert_eq!(last, value, "{name}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} stayed at {last}, expected {value}");
}

/// Waits until a gauge reads exactly `value`.
pub fn wait_gauge(metrics: SocketAddr, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    let mut last = metric(metrics, name);
    while last != value {
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {last}, expected {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
        last = metric(metrics, name);
    }
}

/// `lethe ROLE init --dir DIR` (mixnode, gateway, ...); must succeed.
pub fn init(role: &str, dir: &std::path::Path) {
    let status = Command::new(LETHE)
        .args([role, "init", "--dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "lethe {role} init failed");
}

/// A one-hop `size` packet whose first hop is a sink that only records it (the hop's key is a
/// dummy: nothing unwraps the packet).
pub fn sink_packet(
    sink: SocketAddr,
    size: lethe_crypto::framing::PacketSize,
    message: &[u8],
) -> Vec<u8> {
    use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
    let route = [RouteHop {
        address: address::encode(&sink),
        public_key: [9; 32],
    }];
    let destination = Destination {
        address: [7; 32],
        identifier: [0; 16],
    };
    let spec = PacketSpec {
        route: &route,
        delays_ns: &[0],
        destination: &destination,
        version: Version::CURRENT,
    };
    let packet =
        sphinx::create(message, size.payload_len(), &spec, None, &mut rand::rng()).unwrap();
    assert_eq!(packet.len(), size.packet_len());
    packet
}

/// The one file (not a dot file) in `dir`: what `client receive` wrote.
pub fn only_file(dir: &Path) -> Vec<u8> {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read(&files[0]).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift): test payloads that compress to nothing.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Engine flags of a small test node: loopback ports the OS chooses, one core, a replay filter
/// for 120,000 packets and 1,024 buffers and timer entries (a default node takes 1.8 GB).
pub const SMALL_NODE: [&str; 12] = [
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
    "--cores",
    "1",
    "--replay-capacity-packets",
    "120000",
    "--pool-buffers",
    "1024",
    "--timer-entries-max",
    "1024",
];

/// Flags every small test node shares: loopback ports the OS chooses, one core, a replay filter
/// sized for 200 packets/s (the key lifetime, and with it the filter's size, is the caller's).
pub const LOOPBACK_ONE_CORE: [&str; 8] = [
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
    "--cores",
    "1",
    "--replay-packets-per-s",
    "200",
];

/// `lethe mixnode run --dir DIR` with [`LOOPBACK_ONE_CORE`] and hour-long keys, then `extra`.
pub fn run_mixnode_with(dir: &Path, extra: &[&str]) -> Process {
    let mut args = vec!["mixnode", "run", "--dir", dir.to_str().unwrap()];
    args.extend(LOOPBACK_ONE_CORE);
    args.extend(["--replay-key-lifetime-s", "3600"]);
    args.extend_from_slice(extra);
    Process::start(&args, &["listen", "metrics"])
}

/// `lethe keygen`: a key set of `issuers` shares, `threshold` of them needed, in `out`
/// (`issuer-N.key`, `verification.key`); must succeed.
pub fn keygen(out: &Path, threshold: u32, issuers: u32) {
    let output = Command::new(LETHE)
        .args([
            "keygen",
            "--threshold",
            &threshold.to_string(),
            "--issuers",
            &issuers.to_string(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lethe keygen: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `lethe issuer run --key KEY` on a loopback port the OS chooses, then `extra` flags; the
/// process and its URL.
pub fn run_issuer(key: &Path, extra: &[&str]) -> (Process, String) {
    let mut args = vec![
        "issuer",
        "run",
        "--key",
        key.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let issuer = Process::start(&args, &["listening"]);
    let url = format!("http://{}", issuer.get("listening"));
    (issuer, url)
}
