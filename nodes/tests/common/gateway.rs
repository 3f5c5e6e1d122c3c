//! Start-up of a gateway under test (config edits, the process, a sink for its packets) and
//! the client side of floods: connections from many loopback source addresses, and a file
//! descriptor limit raised for them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use lethe_nodes::keyfile;

use super::{Process, LOOPBACK_ONE_CORE, WAIT_MAX};

/// Raises this process's soft limit on open files to its hard limit (the children started
/// afterwards inherit it): the floods open more sockets than a default soft limit of 1,024
/// allows. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
    }
    limit.rlim_cur
}

/// Sets `key = value` lines of the gateway's config.toml (keys the template has).
pub fn configure(dir: &Path, values: &[(&str, &str)]) {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match values.iter().find(|(k, _)| *k == key) {
            Some((k, v)) => out.push_str(&format!("{k} = {v}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    std::fs::write(&path, out).unwrap();
}

/// `lethe gateway run` with [`LOOPBACK_ONE_CORE`], a client port the OS chooses, ten-minute
/// keys and a short shutdown grace, then `extra` flags.
pub fn run_gateway_with(dir: &Path, extra: &[&str]) -> Process {
    let mut args = vec!["gateway", "run", "--dir", dir.to_str().unwrap()];
    args.extend(LOOPBACK_ONE_CORE);
    args.extend([
        "--client-listen",
        "127.0.0.1:0",
        "--replay-key-lifetime-s",
        "600",
        "--shutdown-grace-ms",
        "500",
    ]);
    args.extend_from_slice(extra);
    Process::start(
        &args,
        &["listen", "client_url", "metrics", "identity", "sphinx_key"],
    )
}

/// [`run_gateway_with`] 1,024 packet buffers, forwarding to any first hop (a sink).
pub fn run_gateway(dir: &Path) -> Process {
    run_gateway_with(dir, &["--pool-buffers", "1024", "--allow-any-first-hop"])
}

pub fn run_sink(out: &Path) -> Process {
    Process::start(
        &[
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().unwrap(),
        ],
        &["listen"],
    )
}

/// The `i`th attacker address: 127.0.1.1, 127.0.1.2, ... (never 127.0.0.1, the honest one).
pub fn attacker(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

pub async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    tokio::time::timeout(WAIT_MAX, socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap()
}

pub fn client_addr(gateway: &Process) -> SocketAddr {
    gateway.lines["client_url"]
        .trim_start_matches("ws://")
        .parse()
        .unwrap()
}

pub fn gateway_identity(gateway: &Process) -> [u8; 32] {
    keyfile::unhex_32(&gateway.lines["identity"]).unwrap()
}

/// Packets the sink recorded (hex, third field of each line).
pub fn sink_packets(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(2).map(str::to_string))
        .collect()
}
