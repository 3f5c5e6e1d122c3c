//! Reliable anonymous replies (issue 21, item 3): a 1 MB page fetched through SOCKS5 over a
//! real testnet arrives intact although a mixnode is SIGKILLed in the middle of the download.
//! Until the directory drops the dead node and the clients refresh their topology, every
//! reply SURB and forward route through it loses its packet: the proxy acknowledges what it
//! receives, the provider resends the rest through its newest SURBs, and the client core
//! retransmits the proxy's own messages. The page is compared by SHA-256 and length; the
//! provider's state dump must show responses resent (the kill did cost packets).
//! Checks outcomes, never speed: every wait is bounded and generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use common::socks::{get_through_socks, http_server};
use common::testnet::Testnet;
use common::{random_bytes, Process, WAIT_MAX};
use sha2::{Digest, Sha256};

const PAGE_BYTES: usize = 1_000_000;
/// The mixnode dies once this much of the page has arrived.
const KILL_AFTER_BYTES: usize = 150_000;

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The client refreshes its topology every 2 s (300 by default), so a dead node leaves its
/// routes soon after the directory drops it.
fn refresh_topology_often(dir: &Path) {
    let path = dir.join("client.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (before, after) = text
        .split_once("topology_refresh_s = ")
        .expect("client.toml names topology_refresh_s");
    let rest = after.split_once('\n').map_or("", |(_, r)| r);
    std::fs::write(&path, format!("{before}topology_refresh_s = 2\n{rest}")).unwrap();
}

/// A counter of the provider's reply buffer, from its state dump (`name: N`).
fn dump_counter(dump: &str, name: &str) -> u64 {
    let at = dump
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in the state dump:\n{dump}"));
    dump[at + name.len() + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn page_arrives_intact_when_a_mixnode_dies() {
    let root = common::temp_dir("root");
    std::fs::create_dir_all(&root).unwrap();
    let net = Testnet::up(&root.join("testnet"), &["--provider", "false"]);
    let gateway1 = net.info("gateway1", "identity");
    let gateway2 = net.info("gateway2", "identity");
    let provider_dir = root.join("provider");
    net.init_client_on(&provider_dir, &gateway1);
    let alice = root.join("alice");
    net.init_client_on(&alice, &gateway2);
    refresh_topology_often(&provider_dir);
    refresh_topology_often(&alice);

    let dump = provider_dir.join("state.dump");
    let provider = Process::start(
        &[
            "provider",
            "run",
            "--dir",
            provider_dir.to_str().unwrap(),
            "--allow",
            "127.0.0.1:*",
            "--state-dump",
            dump.to_str().unwrap(),
        ],
        &["address"],
    );
    let listen = free_port();
    let proxy = Process::start(
        &[
            "client",
            "socks5",
            "--dir",
            alice.to_str().unwrap(),
            "--provider",
            provider.get("address"),
            "--listen",
            &listen.to_string(),
        ],
        &["socks5", "address"],
    );

    let page = random_bytes(PAGE_BYTES, 3);
    let web = http_server(page.clone());
    // mix1 shares its layer with another mixnode (two per layer): routes exist without it.
    let mix1 = net.node("mix1")["pid"].as_i64().unwrap() as i32;
    let mut killed_at = None;
    let mut stream = get_through_socks(listen, web);
    let mut response = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A reset (the proxy gave up on a missing response) fails here, as it must.
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if killed_at.is_none() && response.len() >= KILL_AFTER_BYTES {
            // SAFETY: SIGKILL to a node process the testnet started for this test.
            assert_eq!(unsafe { libc::kill(mix1, libc::SIGKILL) }, 0);
            killed_at = Some(response.len());
        }
    }
    let body_at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    let fetched = response.split_off(body_at);
    let killed_at = killed_at.expect("the mixnode was killed during the download");
    assert!(killed_at < PAGE_BYTES, "killed before the end");
    assert_eq!(fetched.len(), page.len());
    assert_eq!(
        Sha256::digest(&fetched),
        Sha256::digest(&page),
        "the page arrived corrupted"
    );

    // The dump is written after each message the provider takes; the acknowledgements of the
    // last responses come after the page did, so wait (bounded) for the dump to settle on
    // nothing pending.
    let deadline = Instant::now() + WAIT_MAX;
    let state = loop {
        let state = std::fs::read_to_string(&dump).unwrap_or_default();
        if state.contains("pending: 0,") || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        dump_counter(&state, "resent") > 0,
        "nothing was resent:\n{state}"
    );
    assert_eq!(dump_counter(&state, "given_up"), 0, "{state}");
    drop(proxy);
    provider.terminate();
}
