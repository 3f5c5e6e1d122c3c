//! The whole network as real processes on loopback: `lethe testnet up` (4 directory
//! authorities, 3 layers x 2 mixnodes, 2 gateways, a service provider), then clients through
//! the `lethe` CLI. One authority is SIGKILLed early on (issue 19 item 4): the other three
//! keep certifying documents, a mixnode's death included, and everything after is carried.
//! Checks outcomes, never speed: every wait is bounded and generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::socks::{fetch_through_socks, http_server};
use common::testnet::{lethe, Testnet};
use common::{http_get, only_file, random_bytes, LETHE};
use lethe_nodes::keyfile;
use lethe_nodes::topology::{
    now_s, valid_signers, verify_consensus, AuthoritySet, MultiSigned, Topology,
};

const TIMEOUT_S: u64 = 120;

/// `lethe client send` with fast test pacing and a generous retransmission budget.
fn send_file(from: &Path, to: &str, file: &Path, send_delay_ms: &str) -> Child {
    Command::new(LETHE)
        .args([
            "client",
            "send",
            "--dir",
            from.to_str().unwrap(),
            "--to",
            to,
            "--file",
            file.to_str().unwrap(),
            "--wait-acks",
            "--timeout-s",
            &TIMEOUT_S.to_string(),
            "--send-delay-ms",
            send_delay_ms,
            "--hop-delay-ms",
            "5",
            "--max-retransmissions",
            "40",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn receive(dir: &Path, out: &Path, count: usize) -> Child {
    Command::new(LETHE)
        .args([
            "client",
            "receive",
            "--dir",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--count",
            &count.to_string(),
            "--timeout-s",
            &TIMEOUT_S.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The document the authority at `url` serves, verified against every key the testnet pins,
/// and the keys that signed it; `None` if it serves none that verifies.
fn served_consensus(url: &str, set: &AuthoritySet) -> Option<(Topology, Vec<[u8; 32]>)> {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let response = http_get(addr, "/v1/consensus");
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let doc: MultiSigned = serde_json::from_str(body).ok()?;
    let topology = verify_consensus(&doc, set, now_s(), None).ok()?;
    Some((topology, valid_signers(&doc, set)))
}

fn kill(pid: u64) {
    // SAFETY: SIGKILL to a process of the testnet this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn whole_network_on_loopback() {
    let root = std::env::temp_dir().join(format!("lethe-network-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let net = Testnet::up(&root.join("testnet"), &[]);
    let gateway1 = net.node("gateway1")["info"]["identity"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway2 = net.node("gateway2")["info"]["identity"]
        .as_str()
        .unwrap()
        .to_string();

    // A client refuses a topology not signed by the key it pinned.
    let (url, _) = net.directory();
    let wrong_key = "11".repeat(32);
    let out = lethe(&[
        "client",
        "init",
        "--dir",
        root.join("mallory").to_str().unwrap(),
        "--directory",
        &url,
        "--directory-key",
        &wrong_key,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Alice on gateway 1, Bob on gateway 2 (both registered by `init`).
    let alice = root.join("alice");
    let bob = root.join("bob");
    let _alice_address = net.init_client_on(&alice, &gateway1);
    let bob_address = net.init_client_on(&bob, &gateway2);

    // 1. SOCKS5: a page from a local HTTP server through the mixnet and the provider.
    let page = random_bytes(150_000, 7);
    let web = http_server(page.clone());
    let provider = std::fs::read_to_string(net.dir.join("provider").join("address"))
        .unwrap()
        .trim()
        .to_string();
    let socks_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut socks = Command::new(LETHE)
        .args([
            "client",
            "socks5",
            "--dir",
            alice.to_str().unwrap(),
            "--provider",
            &provider,
            "--listen",
            &socks_port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = socks.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(TIMEOUT_S);
    while !String::from_utf8_lossy(&seen).contains("address=") && Instant::now() < deadline {
        let mut b = [0u8; 256];
        let n = stdout.read(&mut b).unwrap();
        assert!(n > 0, "socks5 proxy exited early");
        seen.extend_from_slice(&b[..n]);
    }
    assert_eq!(fetch_through_socks(socks_port, web), page);
    let _ = socks.kill();
    let _ = socks.wait();

    // One authority down: SIGKILLed; everything below happens without it.
    let (urls, keys) = net.directory();
    let urls: Vec<&str> = urls.split(',').collect();
    let keys: Vec<[u8; 32]> = keys
        .split(',')
        .map(|k| keyfile::unhex_32(k).unwrap())
        .collect();
    assert_eq!(
        (urls.len(), keys.len()),
        (4, 4),
        "testnet up runs 4 authorities"
    );
    let set = AuthoritySet::new(keys.clone()).unwrap();
    let epoch_at_kill = served_consensus(urls[0], &set)
        .expect("authority1 serves a certified document")
        .0
        .epoch;
    kill(net.node("authority4")["pid"].as_u64().unwrap());

    // 2. A 1 MB file to Bob while Bob is offline; Bob connects later and gets it intact.
    let file = root.join("one-megabyte.bin");
    let data = random_bytes(1 << 20, 42);
    std::fs::write(&file, &data).unwrap();
    let sent = wait(
        send_file(&alice, &bob_address, &file, "2"),
        "send to offline Bob",
    );
    assert!(sent.contains("failed=0"), "{sent}");
    let inbox = root.join("bob-inbox");
    wait(receive(&bob, &inbox, 1), "Bob receives");
    assert!(only_file(&inbox) == data, "the file arrived altered");

    // 3. A mixnode killed mid-transfer costs retransmissions, not the message.
    let inbox2 = root.join("bob-inbox-2");
    let receiver = receive(&bob, &inbox2, 1);
    let data2 = random_bytes(1 << 20, 43);
    let file2 = root.join("second.bin");
    std::fs::write(&file2, &data2).unwrap();
    // Slower pacing so the kill lands while packets are in flight.
    let sender = send_file(&alice, &bob_address, &file2, "10");
    std::thread::sleep(Duration::from_millis(1500));
    kill(net.node("mix3")["pid"].as_u64().unwrap());
    let sent = wait(sender, "send across a mixnode failure");
    assert!(sent.contains("failed=0"), "{sent}");
    eprintln!("across the failure: {sent}");
    wait(receiver, "Bob receives across the failure");
    assert!(
        only_file(&inbox2) == data2,
        "the second file arrived altered"
    );

    // The epochs after authority 4 died were certified by the other three, and the dead
    // mixnode left a document they agreed on without it.
    let mix3 = net.info("mix3", "listen");
    let deadline = Instant::now() + Duration::from_secs(TIMEOUT_S);
    loop {
        let (topology, signers) =
            served_consensus(urls[0], &set).expect("authority1 serves a certified document");
        let listed = topology
            .layers
            .iter()
            .flatten()
            .any(|d| d.mix_address.to_string() == mix3);
        if topology.epoch >= epoch_at_kill + 2 && !listed {
            assert_eq!(signers.len(), 3, "epoch {}", topology.epoch);
            assert!(!signers.contains(&keys[3]), "signed by the dead authority");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certified document without mix3 after authority 4 died: epoch {} (killed at \
             {epoch_at_kill}), mix3 listed: {listed}",
            topology.epoch
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `testnet status` says so: authority 4 unreachable, the document signed by the others.
    let status = lethe(&["testnet", "status", "--dir", net.dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "{text}");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line: {text}"))
            .to_string()
    };
    assert!(
        line("authority=authority4 ").contains("unreachable"),
        "{text}"
    );
    assert!(
        line("authority=authority1 ").contains("signed_by_self=true"),
        "{text}"
    );
    let consensus = line("consensus epoch=");
    assert!(
        consensus.contains("signed_by=authority") && !consensus.contains("authority4"),
        "{text}"
    );
    assert!(consensus.contains("needed=3 of=4"), "{text}");

    drop(net);
    let _ = std::fs::remove_dir_all(&root);
}
