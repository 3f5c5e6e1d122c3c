//! SOCKS5 through the mixnet: a testnet without its own provider, a service provider
//! (`lethe provider run`) on gateway 1 and a user's proxy (`lethe client socks5`) on gateway 2,
//! and the far ends of a fetch: a one-shot web server and a SOCKS5 client doing an HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::testnet::Testnet;
use super::{Process, LETHE, WAIT_MAX};

/// A testnet started with `--provider false`, a provider's client directory on gateway 1 and a
/// user's on gateway 2 (both with bandwidth credentials): the provider must not learn the user's
/// gateway from the route alone.
pub struct SocksNet {
    pub net: Testnet,
    pub provider_dir: PathBuf,
    pub user_dir: PathBuf,
    /// The user's client address (`identity.encryption@gateway`).
    pub user_address: String,
}

impl SocksNet {
    /// The testnet in `root/testnet` (`env` reaches every node), the provider in
    /// `root/provider`, the user in `root/alice`.
    pub fn up(root: &Path, env: &[(&str, &str)]) -> SocksNet {
        let _ = std::fs::remove_dir_all(root);
        std::fs::create_dir_all(root).unwrap();
        let net = Testnet::up_env(&root.join("testnet"), &["--provider", "false"], env);
        let provider_dir = root.join("provider");
        net.init_client_on(&provider_dir, &net.info("gateway1", "identity"));
        let user_dir = root.join("alice");
        let user_address = net.init_client_on(&user_dir, &net.info("gateway2", "identity"));
        SocksNet {
            net,
            provider_dir,
            user_dir,
            user_address,
        }
    }

    /// Where the provider writes its state dump (after each message it takes).
    pub fn dump_path(&self) -> PathBuf {
        self.provider_dir.join("state.dump")
    }

    /// The provider's state dump as it is now (empty before the first).
    pub fn dump(&self) -> String {
        std::fs::read_to_string(self.dump_path()).unwrap_or_default()
    }

    /// `lethe provider run` for the provider's directory, allowing loopback targets, with a
    /// state dump: the command, for callers that set its environment or output.
    pub fn provider_command(&self) -> Command {
        let mut command = Command::new(LETHE);
        command
            .args(["provider", "run", "--dir"])
            .arg(&self.provider_dir)
            .args(["--allow", "127.0.0.1:*", "--state-dump"])
            .arg(self.dump_path());
        command
    }

    /// The provider, once it printed its `address`.
    pub fn start_provider(&self) -> Process {
        let mut command = self.provider_command();
        command.stderr(Stdio::inherit());
        Process::start_command(command, &["address"], None)
    }

    /// The user's SOCKS5 proxy to `provider` (its address) on a loopback port the OS
    /// chooses (`socks5`), once it printed its own `address`; `reveal` adds
    /// `--reveal-address`.
    pub fn start_proxy(&self, provider: &str, reveal: bool) -> Process {
        let dir = self.user_dir.to_str().unwrap();
        let mut args = vec![
            "client",
            "socks5",
            "--dir",
            dir,
            "--provider",
            provider,
            "--listen",
            "127.0.0.1:0",
        ];
        if reveal {
            args.push("--reveal-address");
        }
        Process::start(&args, &["socks5", "address"])
    }
}

/// Sets `topology_refresh_s` in a client's config (300 s by default): a client that refreshes
/// often drops a dead node, or takes a rotated key, soon after the directory does.
pub fn set_topology_refresh(dir: &Path, refresh_s: u64) {
    let path = dir.join("client.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("topology_refresh_s"))
        .expect("topology_refresh_s in client.toml")
        .to_string();
    let text = text.replace(&line, &format!("topology_refresh_s = {refresh_s}"));
    std::fs::write(&path, text).unwrap();
}

/// A counter of a provider's state dump (a `name: N,` line); `None` if it has none.
pub fn dump_counter(dump: &str, name: &str) -> Option<u64> {
    let key = format!("{name}: ");
    dump.lines().find_map(|line| {
        let digits: String = line
            .trim()
            .strip_prefix(&key)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// A one-shot HTTP/1.0 server for `body` on loopback.
pub fn http_server(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    addr
}

/// The body of an HTTP response (what follows the head).
pub fn http_body(mut response: Vec<u8>) -> Vec<u8> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    response.split_off(split)
}

/// A SOCKS5 CONNECT to `target` through `proxy`, then an HTTP GET; returns the body.
pub fn fetch_through_socks(proxy: SocketAddr, target: SocketAddr) -> Vec<u8> {
    let mut s = get_through_socks(proxy, target);
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    http_body(response)
}

/// A SOCKS5 CONNECT to `target` through `proxy` with an HTTP GET sent: the stream to read
/// the response from (reads time out after [`WAIT_MAX`]).
pub fn get_through_socks(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(WAIT_MAX)).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 0]);
    let std::net::IpAddr::V4(ip) = target.ip() else {
        panic!("v4 only")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 reply code");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    s
}
