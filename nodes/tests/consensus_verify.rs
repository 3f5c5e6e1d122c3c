//! Everyone verifies (issue 19 item 3), with real processes on loopback: a gateway and a
//! mixnode pinned to several authority URLs, one of them down and one serving a document with
//! too few valid signatures, still register with the good authority and route on its
//! document; a consumer pinning n = 4 keys takes a document only with 3 of their signatures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::run_gateway_with;
use common::{metric, run_mixnode_with, temp_dir, Process, LETHE, WAIT_MAX};
use lethe_nodes::directory::client::{self, Authorities, DirectoryClientError};
use lethe_nodes::keyfile;
use lethe_nodes::topology::{
    now_s, sign_consensus, AuthoritySignature, MultiSigned, Topology, TopologyError,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A real n = 1 directory (`lethe directory run`); its URL and key.
fn run_directory(dir: &Path) -> (Process, String, [u8; 32]) {
    let output = Command::new(LETHE)
        .args(["directory", "init", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let process = Process::start(
        &[
            "directory",
            "run",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--private-network",
            "--epoch-s",
            "2",
            "--heartbeat-timeout-s",
            "4",
        ],
        &["listen", "key"],
    );
    let url = format!("http://{}", process.get("listen"));
    let key = keyfile::unhex_32(process.get("key")).unwrap();
    (process, url, key)
}

/// A URL where nothing listens (connections refused).
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// An HTTP server answering every request 200 with `body` (so registrations and heartbeats
/// "succeed" there too); counts the `GET /v1/consensus` it served.
fn fake_authority(body: String) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Headers, then as much body as Content-Length says (read whole, so closing does
            // not reset the connection under the answer).
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut wanted = None;
            for _ in 0..64 {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
                if wanted.is_none() {
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        wanted = Some(end + 4 + length);
                    }
                }
                if wanted.is_some_and(|w| request.len() >= w) {
                    break;
                }
            }
            if request.starts_with(b"GET /v1/consensus") {
                count.fetch_add(1, Ordering::Relaxed);
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (url, served)
}

/// A fresh topology of `epoch` (one node per layer, one gateway).
fn topology(epoch: u64) -> Topology {
    let now = now_s();
    Topology {
        epoch,
        issued_at_s: now,
        valid_until_s: now + 600,
        ..lethe_proto::testing::TestMixnet::new(1, &[7; 32]).topology
    }
}

fn consensus(topology: &Topology, seeds: &[[u8; 32]]) -> MultiSigned {
    let body = serde_json::to_string(topology).unwrap();
    MultiSigned {
        signatures: seeds.iter().map(|s| sign_consensus(&body, s)).collect(),
        body,
    }
}

/// Polls `probe` until it returns `Some` (bounded).
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    while Instant::now() < deadline {
        if let Some(value) = probe() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn nodes_fail_over_past_a_dead_and_a_lying_authority() {
    let root = temp_dir("failover");
    let (directory, good, key) = run_directory(&root.join("directory"));
    let dead = dead_url();
    // The liar's document: a far-future epoch that would win if it were believed, signed by
    // a stranger and by a forged entry naming the good authority's key.
    let mut lie = consensus(&topology(1_000_000), &[[66u8; 32]]);
    let mut forged = sign_consensus(&lie.body, &[67u8; 32]);
    forged.signer = keyfile::hex(&key);
    lie.signatures.push(forged);
    let (liar, lies_served) = fake_authority(serde_json::to_string(&lie).unwrap());
    let key_hex = keyfile::hex(&key);

    // A library consumer pinning the good key, told only of the dead and the lying URLs:
    // refused, with both reasons.
    let http = client::http_client();
    let bad_only = Authorities::new(vec![dead.clone(), liar.clone()], vec![key]).unwrap();
    match rt().block_on(client::fetch_consensus(&http, &bad_only, None)) {
        Err(DirectoryClientError::NoAuthority(reasons)) => {
            assert_eq!(reasons.len(), 2, "{reasons:?}");
            assert!(reasons[0].contains("cannot connect"), "{reasons:?}");
            assert!(
                reasons[1].contains("0 valid authority signatures, 1 needed"),
                "{reasons:?}"
            );
        }
        other => panic!("expected every authority refused, got {other:?}"),
    }

    // Real nodes, dead and lying authorities listed first.
    let urls = [dead.as_str(), liar.as_str(), good.as_str()];
    let gateway_dir = root.join("gateway");
    common::init("gateway", &gateway_dir);
    let mut flags = Vec::new();
    for url in urls {
        flags.extend(["--directory", url]);
    }
    flags.extend(["--directory-key", &key_hex, "--heartbeat-s", "1"]);
    let gateway = run_gateway_with(&gateway_dir, &flags);
    let mix_dir = root.join("mix");
    common::init("mixnode", &mix_dir);
    let mix = run_mixnode_with(
        &mix_dir,
        &[
            "--directory",
            &format!("{dead},{liar},{good}"),
            "--heartbeat-s",
            "1",
        ],
    );
    let mix_address = mix.get("listen").to_string();
    let gateway_identity = gateway.get("identity").to_string();

    // Both registered with the good authority although the first one they know is down.
    let all = Authorities::new(urls.iter().map(|u| u.to_string()).collect(), vec![key]).unwrap();
    let listed = wait_for("both nodes in the good authority's document", || {
        let t = rt()
            .block_on(client::fetch_consensus(&http, &all, None))
            .ok()?;
        let mix_in = t
            .layers
            .iter()
            .flatten()
            .any(|d| d.mix_address.to_string() == mix_address);
        let gateway_in = t.gateways.iter().any(|g| g.identity == gateway_identity);
        (mix_in && gateway_in).then_some(t)
    });
    assert!(listed.epoch < 1_000_000);

    // The gateway routes on the good document (the liar's epoch never taken), after asking
    // the liar at least once.
    let metrics = gateway.addr("metrics");
    let epoch = wait_for("the gateway to verify a document listing itself", || {
        let epoch = metric(metrics, "lethe_gateway_consensus_epoch");
        (epoch >= listed.epoch).then_some(epoch)
    });
    assert!(
        epoch < 1_000_000,
        "the gateway took the liar's epoch {epoch}"
    );
    assert!(lies_served.load(Ordering::Relaxed) >= 1);
    assert_eq!(metric(metrics, "lethe_gateway_consensus_in_grace"), 0);

    // Failures leave fast: the SIGKILLed mixnode is out of a later document (after the
    // heartbeat timeout), as the consumers fetch it.
    mix.kill();
    let after = wait_for("the killed mixnode to leave the document", || {
        let t = rt()
            .block_on(client::fetch_consensus(&http, &all, None))
            .ok()?;
        let gone = !t
            .layers
            .iter()
            .flatten()
            .any(|d| d.mix_address.to_string() == mix_address);
        gone.then_some(t)
    });
    assert!(after.epoch > listed.epoch);
    assert!(after
        .gateways
        .iter()
        .any(|g| g.identity == gateway_identity));

    gateway.terminate();
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn four_pinned_authorities_need_three_signatures() {
    let seeds: Vec<[u8; 32]> = (1..=4u8).map(|i| [i; 32]).collect();
    let keys: Vec<[u8; 32]> = seeds.iter().map(keyfile::ed25519_public).collect();
    let http = client::http_client();
    // Two of four, plus the same signature again and a stranger's: two valid, three needed.
    let mut short = consensus(&topology(9), &seeds[..2]);
    short.signatures.push(short.signatures[0].clone());
    short
        .signatures
        .push(sign_consensus(&short.body, &[9u8; 32]));
    let (two, _) = fake_authority(serde_json::to_string(&short).unwrap());
    let alone = Authorities::new(vec![two.clone()], keys.clone()).unwrap();
    match rt().block_on(client::fetch_consensus(&http, &alone, None)) {
        Err(DirectoryClientError::Topology { source, .. }) => assert_eq!(
            source,
            TopologyError::TooFewSignatures {
                valid: 2,
                needed: 3
            }
        ),
        other => panic!("expected too few signatures, got {other:?}"),
    }
    // Three of four (any three) pass, served by the second URL.
    let full = consensus(&topology(8), &seeds[1..]);
    let (three, _) = fake_authority(serde_json::to_string(&full).unwrap());
    let both = Authorities::new(vec![two, three], keys.clone()).unwrap();
    let accepted = rt()
        .block_on(client::fetch_consensus(&http, &both, None))
        .unwrap();
    assert_eq!(accepted.epoch, 8);
    // A signature entry that is not hex at all is skipped, not fatal.
    let mut garbage = full.clone();
    garbage.signatures.insert(
        0,
        AuthoritySignature {
            signer: "zz".into(),
            signature: "zz".into(),
        },
    );
    let (messy, _) = fake_authority(serde_json::to_string(&garbage).unwrap());
    let one = Authorities::new(vec![messy], keys).unwrap();
    assert_eq!(
        rt().block_on(client::fetch_consensus(&http, &one, None))
            .unwrap()
            .epoch,
        8
    );
}
