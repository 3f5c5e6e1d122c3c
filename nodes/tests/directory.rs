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
    now_s, sign, verify_topology, Descriptor, Heartbeat, Role, Signed, Topology, TopologyError,
    CLOCK_SKEW_S_MAX, DOMAIN_DESCRIPTOR, DOMAIN_HEARTBEAT, DOMAIN_TOPOLOGY,
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
    let deadline = Instant::now() + TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        match rt.block_on(client::fetch_topology(&http, url, key, None)) {
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
        issued_at_s,
    };
    Topology {
        epoch,
        issued_at_s,
        valid_until_s,
        layers: [1, 2, 3].map(|i| vec![node(i, Role::Mixnode)]).into(),
        gateways: vec![node(4, Role::Gateway)],
    }
}

fn fetch_from_fake(
    signed: &Signed,
    key: &[u8; 32],
    seen: Option<u64>,
) -> Result<Topology, DirectoryClientError> {
    let url = fake_directory(serde_json::to_string(signed).unwrap());
    rt().block_on(client::fetch_topology(
        &client::http_client(),
        &url,
        key,
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
    let good = sign(&sample_topology(5, now, now + 600), DOMAIN_TOPOLOGY, &seed).unwrap();
    // The genuine one passes, through the client and directly.
    assert_eq!(fetch_from_fake(&good, &key, Some(5)).unwrap().epoch, 5);
    assert!(verify_topology(&good, &key, now, None).is_ok());

    // Signed by another key.
    let forged = sign(
        &sample_topology(6, now, now + 600),
        DOMAIN_TOPOLOGY,
        &[22u8; 32],
    )
    .unwrap();
    assert_eq!(
        refused_with(fetch_from_fake(&forged, &key, None)),
        TopologyError::WrongSigner
    );
    // ... relabelled as the directory's.
    let mut relabelled = forged.clone();
    relabelled.signer = keyfile::hex(&key);
    assert_eq!(
        refused_with(fetch_from_fake(&relabelled, &key, None)),
        TopologyError::BadSignature
    );
    // A genuine body, tampered with.
    let mut tampered = good.clone();
    tampered.body = tampered.body.replace("\"epoch\":5", "\"epoch\":50");
    assert_ne!(tampered.body, good.body);
    assert_eq!(
        refused_with(fetch_from_fake(&tampered, &key, None)),
        TopologyError::BadSignature
    );
    // A descriptor signature does not pass as a topology signature.
    let wrong_domain = sign(
        &sample_topology(6, now, now + 600),
        DOMAIN_DESCRIPTOR,
        &seed,
    )
    .unwrap();
    assert_eq!(
        refused_with(fetch_from_fake(&wrong_domain, &key, None)),
        TopologyError::BadSignature
    );
    // Stale: valid until the past.
    let stale = sign(
        &sample_topology(7, now - 4000, now - 400),
        DOMAIN_TOPOLOGY,
        &seed,
    )
    .unwrap();
    assert!(matches!(
        refused_with(fetch_from_fake(&stale, &key, None)),
        TopologyError::Stale { .. }
    ));
    assert!(matches!(
        verify_topology(&stale, &key, now, None),
        Err(TopologyError::Stale { .. })
    ));
    // From the future.
    let future = sign(
        &sample_topology(8, now + CLOCK_SKEW_S_MAX + 600, now + 4000),
        DOMAIN_TOPOLOGY,
        &seed,
    )
    .unwrap();
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
        rt().block_on(client::fetch_topology(
            &client::http_client(),
            &url,
            &key,
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
        issued_at_s: now_s(),
    }
}

/// POSTs `body` to `path`; returns the status and the parsed JSON answer.
fn post(url: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    rt().block_on(async {
        let response = client::http_client()
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "non-JSON answer ({status}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    })
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
