//! The SOCKS5 service provider does not learn who its users are (issue 21): a real testnet on
//! loopback, a provider on gateway 1 logging at `trace` level with `--state-dump`, a proxy
//! client on gateway 2 fetching a page. Afterwards the provider's files (its logs, the state
//! dump, everything in its directory) hold neither the client's identity key, encryption key
//! nor gateway, in any encoding we know of (hex, raw bytes, Debug lists). As a control, a
//! second fetch with `--reveal-address` must make the same search find the client.
//! Checks outcomes, never speed: every wait is bounded and generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::socks::{fetch_through_socks, http_server};
use common::testnet::Testnet;
use common::{random_bytes, LETHE};

const TIMEOUT_S: u64 = 120;

/// A child killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// SIGTERM, then a bounded wait for the exit (so it flushes its logs).
    fn terminate(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(TIMEOUT_S);
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process did not stop after SIGTERM");
    }
}

/// Waits (bounded) until `file` contains `text`; returns its contents.
fn wait_for_text(file: &Path, text: &str, child: &mut Running) -> String {
    let deadline = Instant::now() + Duration::from_secs(TIMEOUT_S);
    loop {
        let seen = std::fs::read_to_string(file).unwrap_or_default();
        if seen.contains(text) {
            return seen;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{} exited early",
            file.display()
        );
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lethe provider run` in `dir`, logging everything it logs to `dir/stderr.log`.
fn start_provider(dir: &Path) -> (Running, String) {
    let child = Command::new(LETHE)
        .args([
            "provider",
            "run",
            "--dir",
            dir.to_str().unwrap(),
            "--allow",
            "127.0.0.1:*",
            "--state-dump",
            dir.join("state.dump").to_str().unwrap(),
        ])
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let out = wait_for_text(&dir.join("stdout.log"), "address=", &mut child);
    let address = out
        .lines()
        .find_map(|l| l.strip_prefix("address="))
        .unwrap()
        .to_string();
    (child, address)
}

fn start_proxy(client: &Path, provider: &str, listen: SocketAddr, reveal: bool) -> Running {
    let mut args = vec![
        "client".to_string(),
        "socks5".into(),
        "--dir".into(),
        client.to_str().unwrap().into(),
        "--provider".into(),
        provider.into(),
        "--listen".into(),
        listen.to_string(),
    ];
    if reveal {
        args.push("--reveal-address".into());
    }
    let log = client.join(format!("socks5-{reveal}.log"));
    let child = Command::new(LETHE)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    wait_for_text(&log, "address=", &mut child);
    child
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Every encoding of `key` (hex) we search for: hex both cases, the raw bytes, Rust's Debug
/// of a byte array (whole, and its first 8 elements), and each half of the hex.
fn encodings(key: &str) -> Vec<Vec<u8>> {
    let bytes = unhex(key);
    let debug: Vec<String> = bytes.iter().map(u8::to_string).collect();
    vec![
        key.to_lowercase().into_bytes(),
        key.to_uppercase().into_bytes(),
        bytes.clone(),
        bytes[..16].to_vec(),
        format!("[{}]", debug.join(", ")).into_bytes(),
        format!("[{}", debug[..8].join(", ")).into_bytes(),
        key[..32].to_lowercase().into_bytes(),
        key[32..].to_lowercase().into_bytes(),
    ]
}

/// Every file under `dir`, recursively: `(path, contents)`.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

/// Where each of `keys` (name, hex) shows up in the files under `dir`, in any encoding.
fn findings(dir: &Path, keys: &[(&str, &str)]) -> Vec<String> {
    let files = files(dir);
    let mut found = Vec::new();
    for (name, key) in keys {
        for needle in encodings(key) {
            for (path, bytes) in &files {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(format!(
                        "{name} in {} ({})",
                        path.display(),
                        String::from_utf8_lossy(&needle)
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn provider_does_not_learn_who_fetches() {
    let root = std::env::temp_dir().join(format!("lethe-socks-anon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let net = Testnet::up(&root.join("testnet"), &["--provider", "false"]);
    let gateway1 = net.info("gateway1", "identity");
    let gateway2 = net.info("gateway2", "identity");

    // The provider on gateway 1, the user on gateway 2 (the provider must not learn it).
    let provider_dir = root.join("provider");
    net.init_client_on(&provider_dir, &gateway1);
    let alice = root.join("alice");
    let alice_address = net.init_client_on(&alice, &gateway2);
    let (identity, rest) = alice_address.split_once('.').unwrap();
    let (encryption, gateway) = rest.split_once('@').unwrap();
    assert_eq!(gateway, gateway2);
    let keys = [
        ("identity", identity),
        ("encryption key", encryption),
        ("gateway", gateway),
    ];

    let (provider, provider_address) = start_provider(&provider_dir);
    // Before any fetch the gateway may appear in what the provider knows from the public
    // directory (its topology): only what the fetch adds counts, so gateway findings are
    // compared before and after.
    let before = findings(&provider_dir, &keys);
    assert!(
        before.iter().all(|f| f.starts_with("gateway")),
        "the provider knows the client before any fetch: {before:#?}"
    );

    // 150 KB takes more SURBs than a Connect carries: the provider asks for more.
    let page = random_bytes(150_000, 21);
    let web = http_server(page.clone());
    let listen = free_port();
    let proxy = start_proxy(&alice, &provider_address, listen, false);
    assert_eq!(fetch_through_socks(listen, web), page);
    drop(proxy);
    let state = std::fs::read_to_string(provider_dir.join("state.dump")).unwrap();
    assert!(state.contains("SurbStore"), "{state}");
    provider.terminate();

    let after = findings(&provider_dir, &keys);
    let learned: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert!(
        learned.is_empty(),
        "the provider learned who fetched: {learned:#?}"
    );
    let log = std::fs::read_to_string(provider_dir.join("stderr.log")).unwrap();
    assert!(log.contains("TRACE") || log.contains("DEBUG") || log.contains("trace"));

    // Control: with --reveal-address the same search finds the client (the search works).
    let (provider, provider_address) = start_provider(&provider_dir);
    let listen = free_port();
    let proxy = start_proxy(&alice, &provider_address, listen, true);
    let web = http_server(page.clone());
    assert_eq!(fetch_through_socks(listen, web), page);
    drop(proxy);
    provider.terminate();
    let revealed = findings(&provider_dir, &keys);
    for (name, _) in &keys[..2] {
        assert!(
            revealed.iter().any(|f| f.starts_with(name)),
            "the control did not find the revealed {name}: {revealed:#?}"
        );
    }
}
