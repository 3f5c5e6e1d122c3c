//! Multi-process: `lethe directory` with `lethe mixnode run --directory` processes on
//! loopback; a fake directory serving forged topologies; bad registrations over raw HTTP.
//! Outcomes are checked, never speed: state is polled with generous bounded deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lethe_nodes::directory::client::{self, DirectoryClientError};
use lethe_nodes::keyfile;
use lethe_nodes::topology::{
    now_s, sign, sign_consensus, verify_topology, AuthoritySet, AuthoritySignature, Descriptor,
    Heartbeat, MultiSigned, Role, Signed, Topology, TopologyError, CLOCK_SKEW_S_MAX,
    DOMAIN_DESCRIPTOR, DOMAIN_HEARTBEAT, DOMAIN_TOPOLOGY,
};

const TIMEOUT: Duration = Duration::from_secs(90);

fn lethe_output(args: &[&str]) -> String {
    let output = Command::new(LETHE).args(args).output().unwrap();
    assert!(output.status.success(), "lethe {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// `directory init`; returns the printed key.
fn init_directory(dir: &Path) -> [u8; 32] {
    let out = lethe_output(&["directory", "init", "--dir", dir.to_str().unwrap()]);
    let line = out.lines().find_map(|l| l.strip_prefix("key=")).unwrap();
    keyfile::unhex_32(line).unwrap()
}

fn run_directory(dir: &Path, listen: &str, timeout_s: u64) -> Process {
    run_directory_epoch(dir, listen, timeout_s, 3600)
}

fn run_directory_epoch(dir: &Path, listen: &str, timeout_s: u64, epoch_s: u64) -> Process {
    run_directory_with(dir, listen, timeout_s, epoch_s, &["--private-network"])
}

fn run_directory_with(
    dir: &Path,
    listen: &str,
    timeout_s: u64,
    epoch_s: u64,
    extra: &[&str],
) -> Process {
    let timeout = timeout_s.to_string();
    let epoch = epoch_s.to_string();
    let args = [
        "directory",
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        listen,
        "--heartbeat-timeout-s",
        &timeout,
        "--epoch-s",
        &epoch,
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    Process::start(&args, &["listen", "key"])
}

fn run_mixnode(dir: &Path, directory_url: &str) -> Process {
    run_mixnode_with(dir, directory_url, &[])
}

fn run_mixnode_with(dir: &Path, directory_url: &str, extra: &[&str]) -> Process {
    lethe_output(&["mixnode", "init", "--dir", dir.to_str().unwrap()]);
    let mut args = vec!["mixnode", "run", "--dir", dir.to_str().unwrap()];
    args.extend(SMALL_NODE);
    args.extend([
        "--shutdown-grace-ms",
        "500",
        "--directory",
        directory_url,
        "--heartbeat-s",
        "1",
    ]);
    args.extend_from_slice(extra);
    Process::start(&args, &["listen", "metrics"])
}

/// Unix time in ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn read_pub(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls the topology until `done` holds (bounded).
fn wait_topology(
    url: &str,
    key: &[u8; 32],
    what: &str,
    done: impl Fn(&Topology) -> bool,
) -> Topology {
    let rt = rt();
    let http = client::http_client();
    let set = AuthoritySet::new(vec![*key]).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        match rt.block_on(client::fetch_consensus_from(&http, url, &set, None)) {
            Ok(t) if done(&t) => return t,
            Ok(t) => last = Some(format!("{t:?}")),
            Err(e) => last = Some(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}; last: {last:?}");
}

fn sizes(t: &Topology) -> Vec<usize> {
    t.layers.iter().map(Vec::len).collect()
}

/// identity → layer index.
fn assignments(t: &Topology) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (layer, nodes) in t.layers.iter().enumerate() {
        for node in nodes {
            out.insert(node.identity.clone(), layer);
        }
    }
    out
}

#[test]
fn four_mixnodes_balanced_drop_and_restart() {
    let dir = temp_dir("main");
    let directory_dir = dir.join("directory");
    let key = init_directory(&directory_dir);
    let directory = run_directory(&directory_dir, "127.0.0.1:0", 4);
    assert_eq!(directory.get("key"), keyfile::hex(&key));
    let listen = directory.addr("listen");
    let url = format!("http://{listen}");
    // The key endpoint serves the same key.
    let served = rt()
        .block_on(client::fetch_key(&client::http_client(), &url))
        .unwrap();
    assert_eq!(served, key);

    let node_dirs: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("mix{i}"))).collect();
    let mut nodes: Vec<Option<Process>> = node_dirs
        .iter()
        .map(|d| Some(run_mixnode(d, &url)))
        .collect();
    let topology = wait_topology(&url, &key, "four mixnodes", |t| {
        t.layers.iter().map(Vec::len).sum::<usize>() == 4
    });
    assert_eq!(sizes(&topology), [2, 1, 1]);
    assert!(topology.gateways.is_empty());
    let all: Vec<&Descriptor> = topology.layers.iter().flatten().collect();
    for (node, node_dir) in nodes.iter().zip(&node_dirs) {
        let node = node.as_ref().unwrap();
        let mix = node.addr("listen");
        let d = all
            .iter()
            .find(|d| d.mix_address == mix)
            .unwrap_or_else(|| panic!("{mix} missing from {topology:?}"));
        assert_eq!(d.role, Role::Mixnode);
        assert_eq!(
            d.identity,
            read_pub(&node_dir.join("keys/ed25519_identity.pub"))
        );
        assert_eq!(
            d.sphinx_key,
            read_pub(&node_dir.join("keys/x25519_sphinx_primary.pub"))
        );
        // The network-wide rotation id of the day (default interval 24 h).
        let day = now_s() / 86_400;
        assert!((day - 1..=day).contains(&u64::from(d.rotation_id)));
        assert_eq!(
            d.metrics_url.as_deref(),
            Some(format!("http://{}/metrics", node.get("metrics")).as_str())
        );
    }
    // A route can be built through it.
    assert!(topology.layers.iter().all(|l| !l.is_empty()));

    // Kill the only layer-2 node: it disappears after the timeout and, layers being [2, 0, 1]
    // then, the newest layer-1 node moves to layer 2.
    let victim = topology.layers[1][0].clone();
    let index = nodes
        .iter()
        .position(|n| n.as_ref().unwrap().addr("listen") == victim.mix_address)
        .unwrap();
    drop(nodes[index].take());
    let before = assignments(&topology);
    let after = wait_topology(&url, &key, "the killed node to be dropped", |t| {
        !t.layers
            .iter()
            .flatten()
            .any(|d| d.identity == victim.identity)
    });
    assert!(after.epoch > topology.epoch);
    assert_eq!(sizes(&after), [1, 1, 1]);
    let moved: Vec<_> = assignments(&after)
        .into_iter()
        .filter(|(id, layer)| before[id] != *layer)
        .collect();
    assert_eq!(moved.len(), 1, "exactly one node moves: {moved:?}");
    assert_eq!(moved[0].1, 1);
    assert_eq!(
        moved[0].0, topology.layers[0][1].identity,
        "the newest node of the fullest layer moves"
    );

    // Restart the directory on the same address: same epoch (or later), same assignments.
    directory.terminate();
    let directory = run_directory(&directory_dir, &listen.to_string(), 4);
    assert_eq!(directory.get("key"), keyfile::hex(&key));
    let restarted = wait_topology(&url, &key, "the restarted directory", |_| true);
    assert!(restarted.epoch >= after.epoch);
    assert_eq!(assignments(&restarted), assignments(&after));
    // The nodes keep heartbeating: still there well after the timeout.
    std::thread::sleep(Duration::from_secs(5));
    let later = wait_topology(&url, &key, "a later topology", |_| true);
    assert!(later.epoch >= restarted.epoch);
    assert_eq!(assignments(&later), assignments(&after));

    // A directory that lost its state answers heartbeats with 404: the nodes register again.
    directory.terminate();
    std::fs::remove_file(directory_dir.join("directory.sqlite")).unwrap();
    let _ = std::fs::remove_file(directory_dir.join("directory.sqlite-wal"));
    let _ = std::fs::remove_file(directory_dir.join("directory.sqlite-shm"));
    let directory = run_directory(&directory_dir, &listen.to_string(), 4);
    let rejoined = wait_topology(&url, &key, "the nodes to register again", |t| {
        t.layers.iter().flatten().count() == 3
    });
    assert_eq!(sizes(&rejoined), [1, 1, 1]);
    let live: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.addr("listen")).collect();
    for node in rejoined.layers.iter().flatten() {
        assert!(live.contains(&node.mix_address), "{node:?}");
    }

    for node in nodes.into_iter().flatten() {
        node.terminate();
    }
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Answers every HTTP request on a loopback port with `body` (200, JSON); returns the base URL.
fn fake_directory(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let mut len = 0;
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            while len < request.len() {
                match stream.read(&mut request[len..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
                if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

fn sample_topology(epoch: u64, issued_at_s: u64, valid_until_s: u64) -> Topology {
    let node = |i: u8, role| Descriptor {
        identity: keyfile::hex(&keyfile::ed25519_public(&[i; 32])),
        sphinx_key: keyfile::hex(&[i; 32]),
        rotation_id: 1,
        mix_address: SocketAddr::from(([127, 0, 0, 1], 3000 + u16::from(i))),
        role,
        client_url: (role == Role::Gateway).then(|| "ws://127.0.0.1:9000".into()),
        metrics_url: None,
        family: None,
        issued_at_s,
    };
    Topology {
        epoch,
        issued_at_s,
        valid_until_s,
        layers: [1, 2, 3].map(|i| vec![node(i, Role::Mixnode)]).into(),
        gateways: vec![node(4, Role::Gateway)],
        shared_random: None,
        layer_period: None,
        nodes_per_ip_max: None,
        admission: None,
    }
}

/// A consensus document of the one authority of `seed` (n = 1).
fn consensus_of(topology: &Topology, seed: &[u8; 32]) -> MultiSigned {
    let body = serde_json::to_string(topology).unwrap();
    MultiSigned {
        signatures: vec![sign_consensus(&body, seed)],
        body,
    }
}

/// Fetches a document from a fake directory serving `doc`, pinning `key` alone.
fn fetch_from_fake(
    doc: &MultiSigned,
    key: &[u8; 32],
    seen: Option<u64>,
) -> Result<Topology, DirectoryClientError> {
    let url = fake_directory(serde_json::to_string(doc).unwrap());
    rt().block_on(client::fetch_consensus_from(
        &client::http_client(),
        &url,
        &AuthoritySet::new(vec![*key]).unwrap(),
        seen,
    ))
}

fn refused_with(result: Result<Topology, DirectoryClientError>) -> TopologyError {
    match result {
        Err(DirectoryClientError::Topology { source, .. }) => source,
        other => panic!("expected a refused topology, got {other:?}"),
    }
}

#[test]
fn forged_and_stale_topologies_refused() {
    let seed = [21u8; 32];
    let key = keyfile::ed25519_public(&seed);
    let now = now_s();
    let good_topology = sample_topology(5, now, now + 600);
    let good = consensus_of(&good_topology, &seed);
    // The genuine one passes, through the client and directly; so does the n = 1
    // directory's own `/v1/topology` signature over it.
    assert_eq!(fetch_from_fake(&good, &key, Some(5)).unwrap().epoch, 5);
    let signed = sign(&good_topology, DOMAIN_TOPOLOGY, &seed).unwrap();
    assert!(verify_topology(&signed, &key, now, None).is_ok());
    let none_valid = TopologyError::TooFewSignatures {
        valid: 0,
        needed: 1,
    };

    // Signed by another key.
    let forged = consensus_of(&sample_topology(6, now, now + 600), &[22u8; 32]);
    assert_eq!(
        refused_with(fetch_from_fake(&forged, &key, None)),
        none_valid
    );
    // ... relabelled as the directory's.
    let mut relabelled = forged.clone();
    relabelled.signatures[0].signer = keyfile::hex(&key);
    assert_eq!(
        refused_with(fetch_from_fake(&relabelled, &key, None)),
        none_valid
    );
    // A genuine body, tampered with.
    let mut tampered = good.clone();
    tampered.body = tampered.body.replace("\"epoch\":5", "\"epoch\":50");
    assert_ne!(tampered.body, good.body);
    assert_eq!(
        refused_with(fetch_from_fake(&tampered, &key, None)),
        none_valid
    );
    // A signature of another domain (the directory's own topology's, a descriptor's) does
    // not pass as a consensus signature.
    for domain in [DOMAIN_TOPOLOGY, DOMAIN_DESCRIPTOR] {
        let other = sign(&sample_topology(6, now, now + 600), domain, &seed).unwrap();
        let wrong_domain = MultiSigned {
            body: other.body,
            signatures: vec![AuthoritySignature {
                signer: other.signer,
                signature: other.signature,
            }],
        };
        assert_eq!(
            refused_with(fetch_from_fake(&wrong_domain, &key, None)),
            none_valid
        );
    }
    // Stale: valid until the past.
    let stale_topology = sample_topology(7, now - 4000, now - 400);
    assert!(matches!(
        refused_with(fetch_from_fake(
            &consensus_of(&stale_topology, &seed),
            &key,
            None
        )),
        TopologyError::Stale { .. }
    ));
    let stale = sign(&stale_topology, DOMAIN_TOPOLOGY, &seed).unwrap();
    assert!(matches!(
        verify_topology(&stale, &key, now, None),
        Err(TopologyError::Stale { .. })
    ));
    // From the future.
    let future = consensus_of(
        &sample_topology(8, now + CLOCK_SKEW_S_MAX + 600, now + 4000),
        &seed,
    );
    assert!(matches!(
        refused_with(fetch_from_fake(&future, &key, None)),
        TopologyError::FromTheFuture { .. }
    ));
    // An epoch older than one in use.
    assert!(matches!(
        refused_with(fetch_from_fake(&good, &key, Some(6))),
        TopologyError::EpochRegressed { .. }
    ));
    // Not JSON at all.
    let url = fake_directory("<html>".into());
    assert!(matches!(
        rt().block_on(client::fetch_consensus_from(
            &client::http_client(),
            &url,
            &AuthoritySet::new(vec![key]).unwrap(),
            None
        )),
        Err(DirectoryClientError::Malformed { .. })
    ));
}

fn mix_descriptor(seed: &[u8; 32], port: u16) -> Descriptor {
    Descriptor {
        identity: keyfile::hex(&keyfile::ed25519_public(seed)),
        sphinx_key: keyfile::hex(&[7u8; 32]),
        rotation_id: 1,
        mix_address: SocketAddr::from(([127, 0, 0, 1], port)),
        role: Role::Mixnode,
        client_url: None,
        metrics_url: None,
        family: None,
        issued_at_s: now_s(),
    }
}

/// POSTs `body` to `path`; returns the status and the parsed JSON answer.
fn post(url: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    post_with(&client::http_client(), url, path, body)
}

/// [`post`] from a client of one's own (bound to a source address).
fn post_with(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let (status, bytes) = common::http::post_with(http, url, path, body);
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "non-JSON answer ({status}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

fn signed_json<T: serde::Serialize>(value: &T, domain: &[u8], seed: &[u8; 32]) -> Vec<u8> {
    serde_json::to_vec(&sign(value, domain, seed).unwrap()).unwrap()
}

fn health(url: &str) -> serde_json::Value {
    rt().block_on(async {
        let response = client::http_client()
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
    })
}

#[test]
fn bad_registrations_refused() {
    let dir = temp_dir("bad");
    let key = init_directory(&dir);
    let directory = run_directory(&dir, "127.0.0.1:0", 30);
    let url = format!("http://{}", directory.addr("listen"));
    let seed = [31u8; 32];
    let other = [32u8; 32];
    let d = mix_descriptor(&seed, 4001);
    let epoch_before = health(&url)["epoch"].clone();
    assert_eq!(epoch_before, 1);
    let expect = |(status, json): (u16, serde_json::Value), want: u16| {
        assert_eq!(status, want, "answer: {json}");
        if want >= 400 {
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{json}"
            );
        }
    };

    expect(post(&url, "/v1/register", b"not json".to_vec()), 400);
    expect(post(&url, "/v1/nothing", b"{}".to_vec()), 404);
    expect(post(&url, "/v1/register", b"{\"body\":1}".to_vec()), 400);
    // Signed by a key other than the identity it names.
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&d, DOMAIN_DESCRIPTOR, &other),
        ),
        403,
    );
    // Tampered after signing.
    let mut tampered = sign(&d, DOMAIN_DESCRIPTOR, &seed).unwrap();
    tampered.body = tampered.body.replace("4001", "4002");
    expect(
        post(&url, "/v1/register", serde_json::to_vec(&tampered).unwrap()),
        403,
    );
    // Right signature, wrong domain.
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&d, DOMAIN_HEARTBEAT, &seed),
        ),
        403,
    );
    // Issued too long ago / in the future.
    let mut stale = d.clone();
    stale.issued_at_s = now_s() - CLOCK_SKEW_S_MAX - 60;
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&stale, DOMAIN_DESCRIPTOR, &seed),
        ),
        422,
    );
    let mut future = d.clone();
    future.issued_at_s = now_s() + CLOCK_SKEW_S_MAX + 60;
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&future, DOMAIN_DESCRIPTOR, &seed),
        ),
        422,
    );
    // Unusable address.
    let mut anywhere = d.clone();
    anywhere.mix_address = "0.0.0.0:4001".parse().unwrap();
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&anywhere, DOMAIN_DESCRIPTOR, &seed),
        ),
        422,
    );
    // Oversized body.
    let mut huge = d.clone();
    huge.metrics_url = Some(format!("http://{}", "a".repeat(20_000)));
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&huge, DOMAIN_DESCRIPTOR, &seed),
        ),
        413,
    );
    // Gateway without a client URL.
    let mut gateway = d.clone();
    gateway.role = Role::Gateway;
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&gateway, DOMAIN_DESCRIPTOR, &seed),
        ),
        422,
    );
    // Heartbeats from nobody known.
    let hb = Heartbeat {
        identity: d.identity.clone(),
        sent_at_s: now_s(),
    };
    expect(
        post(
            &url,
            "/v1/heartbeat",
            signed_json(&hb, DOMAIN_HEARTBEAT, &seed),
        ),
        404,
    );
    expect(
        post(
            &url,
            "/v1/heartbeat",
            signed_json(&hb, DOMAIN_HEARTBEAT, &other),
        ),
        403,
    );
    // Nothing changed.
    assert_eq!(health(&url)["nodes"], 0);
    assert_eq!(health(&url)["epoch"], epoch_before);

    // A good registration, then an older one is refused and another node may not take its
    // address.
    let (status, json) = post(
        &url,
        "/v1/register",
        signed_json(&d, DOMAIN_DESCRIPTOR, &seed),
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "registered");
    assert_eq!(json["layer"], 0);
    let mut older = d.clone();
    older.issued_at_s -= 10;
    older.rotation_id = 3;
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&older, DOMAIN_DESCRIPTOR, &seed),
        ),
        409,
    );
    let squatter = mix_descriptor(&other, 4001);
    expect(
        post(
            &url,
            "/v1/register",
            signed_json(&squatter, DOMAIN_DESCRIPTOR, &other),
        ),
        409,
    );
    expect(
        post(
            &url,
            "/v1/heartbeat",
            signed_json(&hb, DOMAIN_HEARTBEAT, &seed),
        ),
        200,
    );
    // A heartbeat older than one accepted is refused.
    let old_hb = Heartbeat {
        identity: d.identity.clone(),
        sent_at_s: d.issued_at_s - 5,
    };
    expect(
        post(
            &url,
            "/v1/heartbeat",
            signed_json(&old_hb, DOMAIN_HEARTBEAT, &seed),
        ),
        409,
    );

    assert_eq!(health(&url)["nodes"], 1);
    let topology = wait_topology(&url, &key, "the registered node", |t| {
        t.layers.iter().flatten().count() == 1
    });
    assert_eq!(topology.layers[0][0], d);
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mixnode_refuses_unspecified_announce() {
    let dir = temp_dir("anywhere");
    lethe_output(&["mixnode", "init", "--dir", dir.to_str().unwrap()]);
    let output = Command::new(LETHE)
        .args([
            "mixnode",
            "run",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
            "--directory",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--announce"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn epochs_advance_at_boundaries() {
    let dir = temp_dir("epochs");
    let key = init_directory(&dir);
    let directory = run_directory_epoch(&dir, "127.0.0.1:0", 30, 2);
    let url = format!("http://{}", directory.addr("listen"));
    let first = wait_topology(&url, &key, "a first topology", |_| true);
    assert_eq!(first.valid_until_s - first.issued_at_s, 3 * 2);
    let next = wait_topology(&url, &key, "the next epoch", |t| t.epoch > first.epoch);
    assert!(next.issued_at_s >= first.issued_at_s + 2);
    assert_eq!(next.valid_until_s - next.issued_at_s, 3 * 2);
    // The served document is exactly what the directory signed under its key.
    let signed: Signed = rt().block_on(async {
        let body = client::http_client()
            .get(format!("{url}/v1/topology"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    });
    assert_eq!(signed.signer, keyfile::hex(&key));
    assert!(verify_topology(&signed, &key, now_s(), Some(next.epoch)).is_ok());
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotated_sphinx_key_is_reannounced_and_published() {
    let dir = temp_dir("rotation");
    let directory_dir = dir.join("directory");
    let key = init_directory(&directory_dir);
    let directory = run_directory(&directory_dir, "127.0.0.1:0", 30);
    let url = format!("http://{}", directory.addr("listen"));
    let node_dir = dir.join("mix");
    // Wall-clock schedule: rotation id = unix time / 6, a rotation at each multiple of 6 s.
    let rotation = ["--rotation-interval-s", "6", "--rotation-overlap-s", "3"];
    // Start in the first half of an epoch: the first topology shows the init key.
    let deadline = Instant::now() + Duration::from_secs(13);
    while now_ms() % 6_000 > 2_000 {
        assert!(
            Instant::now() < deadline,
            "the clock never reached the window"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let epoch = now_ms() / 6_000;
    let node = run_mixnode_with(&node_dir, &url, &rotation);
    let mixnode = |t: &Topology| t.layers.iter().flatten().next().cloned();
    let first = wait_topology(&url, &key, "the mixnode", |t| mixnode(t).is_some());
    let before = mixnode(&first).unwrap();
    assert_eq!(u64::from(before.rotation_id), epoch);
    assert_eq!(
        before.sphinx_key,
        read_pub(&node_dir.join("keys/x25519_sphinx_primary.pub"))
    );
    // The rotation re-registers the descriptor with the new key; the directory republishes.
    let rotated = wait_topology(&url, &key, "the rotated key", |t| {
        mixnode(t).is_some_and(|d| d.rotation_id > before.rotation_id)
    });
    let after = mixnode(&rotated).unwrap();
    assert!(u64::from(after.rotation_id) <= now_ms() / 6_000);
    assert!(rotated.epoch > first.epoch);
    assert_eq!(after.identity, before.identity);
    assert_eq!(after.mix_address, before.mix_address);
    assert_eq!(
        after.sphinx_key,
        read_pub(&node_dir.join(format!("keys/x25519_sphinx_rot-{}.pub", after.rotation_id)))
    );
    assert_ne!(after.sphinx_key, before.sphinx_key);
    node.terminate();
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

// --- Admission: the attacks of issue 19, each against a real directory on loopback ---

/// A client whose requests come from `source` (any 127/8 address is loopback on Linux).
fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn register_raw(http: &reqwest::Client, url: &str, d: &Descriptor, seed: &[u8; 32]) -> u16 {
    let (status, json) = post_with(
        http,
        url,
        "/v1/register",
        signed_json(d, DOMAIN_DESCRIPTOR, seed),
    );
    if status != 200 {
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
    }
    status
}

fn rejected(directory: &Process, reason: &str) -> u64 {
    metric(
        directory.addr("listen"),
        &format!("lethe_directory_registrations_rejected_total{{reason=\"{reason}\"}}"),
    )
}

fn listed(t: &Topology, identity: &str) -> bool {
    t.layers
        .iter()
        .flatten()
        .chain(&t.gateways)
        .any(|d| d.identity == identity)
}

/// 1,016 fake mixnodes from one address once filled the directory and locked honest nodes
/// out. Now one source registers at most its cap; real nodes from elsewhere still join.
#[test]
fn a_flood_from_one_address_cannot_fill_the_directory() {
    let dir = temp_dir("flood");
    let directory_dir = dir.join("directory");
    let key = init_directory(&directory_dir);
    let directory = run_directory_with(
        &directory_dir,
        "127.0.0.1:0",
        30,
        3600,
        &["--private-network", "--nodes-per-source-max", "8"],
    );
    let url = format!("http://{}", directory.addr("listen"));
    let attacker = client_from([127, 0, 0, 2]);
    let mut accepted = 0;
    for i in 0..40u8 {
        let seed = [100u8.wrapping_add(i); 32];
        // One mix IP each: only the per-source cap can stop them.
        let mut d = mix_descriptor(&seed, 5000);
        d.mix_address = SocketAddr::from(([127, 0, 1, i + 1], 5000));
        match register_raw(&attacker, &url, &d, &seed) {
            200 => accepted += 1,
            409 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 8);
    assert_eq!(rejected(&directory, "source_full"), 32);
    // Honest nodes, from another source, join as before.
    let nodes: Vec<Process> = (0..2)
        .map(|i| run_mixnode(&dir.join(format!("mix{i}")), &url))
        .collect();
    let addresses: Vec<SocketAddr> = nodes.iter().map(|n| n.addr("listen")).collect();
    let t = wait_topology(&url, &key, "the honest nodes", |t| {
        addresses
            .iter()
            .all(|a| t.layers.iter().flatten().any(|d| d.mix_address == *a))
    });
    assert_eq!(t.layers.iter().flatten().count(), 10);
    for node in nodes {
        node.terminate();
    }
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stranger once took a mixnode's address while it restarted (it deregisters on the way
/// down), and the node was refused on its return. Now the address stays the node's.
#[test]
fn a_restarting_nodes_address_cannot_be_taken() {
    let dir = temp_dir("squat");
    let directory_dir = dir.join("directory");
    let key = init_directory(&directory_dir);
    let directory = run_directory(&directory_dir, "127.0.0.1:0", 30);
    let url = format!("http://{}", directory.addr("listen"));
    let node_dir = dir.join("mix");
    let node = run_mixnode(&node_dir, &url);
    let address = node.addr("listen");
    let identity = read_pub(&node_dir.join("keys/ed25519_identity.pub"));
    wait_topology(&url, &key, "the mixnode", |t| listed(t, &identity));
    // Stopped: it deregisters and leaves the topology at once.
    node.terminate();
    wait_topology(&url, &key, "the node to leave", |t| !listed(t, &identity));
    let stranger = [55u8; 32];
    let squat = mix_descriptor(&stranger, address.port());
    assert_eq!(squat.mix_address, address);
    assert_eq!(
        register_raw(&client::http_client(), &url, &squat, &stranger),
        409
    );
    assert_eq!(rejected(&directory, "address_taken"), 1);
    // The node comes back (its own identity, a newer descriptor): accepted at its address.
    let seed = keyfile::read_private(&node_dir.join("keys/ed25519_identity")).unwrap();
    let mut back = mix_descriptor(&seed, address.port());
    back.issued_at_s = now_s() + 1;
    assert_eq!(
        register_raw(&client::http_client(), &url, &back, &seed),
        200
    );
    let t = wait_topology(&url, &key, "the node back", |t| listed(t, &identity));
    assert!(!listed(&t, &squat.identity));
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Private, link-local, cloud-metadata, multicast and documentation addresses, all-zero and
/// low-order Sphinx keys were accepted and signed. Now a public network's directory refuses
/// them, caps the nodes per IP, and admits only listed identities when given a list.
#[test]
fn unroutable_addresses_weak_keys_and_strangers_are_refused() {
    let dir = temp_dir("admission");
    let directory_dir = dir.join("directory");
    let key = init_directory(&directory_dir);
    let directory = run_directory_with(&directory_dir, "127.0.0.1:0", 30, 3600, &[]);
    let url = format!("http://{}", directory.addr("listen"));
    let http = client::http_client();
    let seed = [61u8; 32];
    let bad: [SocketAddr; 10] = [
        "127.0.0.1:1789",
        "10.0.0.1:1789",
        "172.16.5.4:1789",
        "192.168.1.1:1789",
        "169.254.1.1:1789",
        "169.254.169.254:80",
        "224.0.0.1:1789",
        "192.0.2.1:1789",
        "[fe80::1]:1789",
        "[::1]:1789",
    ]
    .map(|a| a.parse().unwrap());
    for address in bad {
        let mut d = mix_descriptor(&seed, 1);
        d.mix_address = address;
        assert_eq!(register_raw(&http, &url, &d, &seed), 422, "{address}");
    }
    assert_eq!(rejected(&directory, "bad_address"), bad.len() as u64);
    let mut one = [0u8; 32];
    one[0] = 1;
    let order_8 =
        keyfile::unhex_32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
            .unwrap();
    for weak in [[0u8; 32], one, order_8] {
        let mut d = mix_descriptor(&seed, 1);
        d.mix_address = "8.8.8.8:1789".parse().unwrap();
        d.sphinx_key = keyfile::hex(&weak);
        assert_eq!(register_raw(&http, &url, &d, &seed), 422);
    }
    assert_eq!(rejected(&directory, "weak_key"), 3);
    // A public address and a good key: in, with its family. Two per IP at most.
    for (i, port) in [(61u8, 1789), (62, 1790), (63, 1791)] {
        let seed = [i; 32];
        let mut d = mix_descriptor(&seed, port);
        d.mix_address.set_ip([8, 8, 8, 8].into());
        d.family = Some("op-a".into());
        let want = if i == 63 { 409 } else { 200 };
        assert_eq!(register_raw(&http, &url, &d, &seed), want);
    }
    assert_eq!(rejected(&directory, "ip_full"), 1);
    let t = wait_topology(&url, &key, "the public nodes", |t| {
        t.layers.iter().flatten().count() == 2
    });
    assert!(t
        .layers
        .iter()
        .flatten()
        .all(|d| d.family.as_deref() == Some("op-a")));
    directory.terminate();

    // An allow-list: only its identities register.
    let listed_seed = [71u8; 32];
    let list = dir.join("allowed");
    std::fs::write(
        &list,
        format!(
            "# operators\n{}\n",
            keyfile::hex(&keyfile::ed25519_public(&listed_seed))
        ),
    )
    .unwrap();
    let allow = [
        "--private-network",
        "--allowed-nodes",
        list.to_str().unwrap(),
    ];
    let directory = run_directory_with(&directory_dir, "127.0.0.1:0", 30, 3600, &allow);
    let url = format!("http://{}", directory.addr("listen"));
    // The nodes registered before are not on the list: left out on restart.
    assert_eq!(health(&url)["nodes"], 0);
    let stranger = [72u8; 32];
    assert_eq!(
        register_raw(&http, &url, &mix_descriptor(&stranger, 4100), &stranger),
        403
    );
    assert_eq!(rejected(&directory, "not_allowed"), 1);
    assert_eq!(
        register_raw(
            &http,
            &url,
            &mix_descriptor(&listed_seed, 4101),
            &listed_seed
        ),
        200
    );
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replayed registration once kept a node that never heartbeats listed for 120 s. Now a
/// replay does not extend its life, and once dropped it cannot be replayed back in.
#[test]
fn replayed_registrations_do_not_keep_a_dead_node_listed() {
    let dir = temp_dir("replay");
    let directory_dir = dir.join("directory");
    let key = init_directory(&directory_dir);
    let directory = run_directory(&directory_dir, "127.0.0.1:0", 3);
    let url = format!("http://{}", directory.addr("listen"));
    let http = client::http_client();
    let seed = [81u8; 32];
    let d = mix_descriptor(&seed, 4200);
    let captured = signed_json(&d, DOMAIN_DESCRIPTOR, &seed);
    let (status, _) = post_with(&http, &url, "/v1/register", captured.clone());
    assert_eq!(status, 200);
    wait_topology(&url, &key, "the node", |t| listed(t, &d.identity));
    // The node dies; an attacker replays its registration over and over. It is dropped
    // after the timeout all the same.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, json) = post_with(&http, &url, "/v1/register", captured.clone());
        assert!(
            status == 200 && json["status"] == "refreshed" || status == 409 || status == 422,
            "{status} {json}"
        );
        let t = rt()
            .block_on(client::fetch_consensus_from(
                &http,
                &url,
                &AuthoritySet::new(vec![key]).unwrap(),
                None,
            ))
            .unwrap();
        if !listed(&t, &d.identity) {
            break;
        }
        assert!(Instant::now() < deadline, "the replayed node stays listed");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Dropped, its replayed registration and heartbeat do not bring it back.
    let (status, json) = post_with(&http, &url, "/v1/register", captured);
    assert!(status == 409 || status == 422, "{status} {json}");
    let hb = Heartbeat {
        identity: d.identity.clone(),
        sent_at_s: d.issued_at_s,
    };
    let (status, _) = post(
        &url,
        "/v1/heartbeat",
        signed_json(&hb, DOMAIN_HEARTBEAT, &seed),
    );
    assert_eq!(status, 404);
    assert_eq!(health(&url)["nodes"], 0);
    directory.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
