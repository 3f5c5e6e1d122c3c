//! Every role's `/metrics` (typed, parseable, build/process/uptime series), `/health` as it
//! follows the registration, and deregistration: on SIGTERM, by hand, and refused when forged,
//! stale or replayed. Real processes and HTTP on 127.0.0.1; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::gateway::run_gateway_with;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lethe_nodes::directory::client;
use lethe_nodes::keyfile;
use lethe_nodes::prometheus::check_exposition;
use lethe_nodes::topology::{
    now_s, sign, Deregistration, Heartbeat, Topology, CLOCK_SKEW_S_MAX, DOMAIN_DEREGISTER,
    DOMAIN_HEARTBEAT,
};

/// A heartbeat timeout far beyond any wait here: a node that leaves the topology in these
/// tests was removed by its deregistration, not by silence.
const TIMEOUT_S_LONG: &str = "600";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = Command::new(LETHE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lethe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_directory(dir: &Path, listen: &str) -> Process {
    if !dir.exists() {
        ok(&["directory", "init", "--dir", path(dir)]);
    }
    Process::start(
        &[
            "directory",
            "run",
            "--private-network",
            "--dir",
            path(dir),
            "--listen",
            listen,
            "--heartbeat-timeout-s",
            TIMEOUT_S_LONG,
        ],
        &["listen", "key"],
    )
}

/// A small mixnode registering with `url` (heartbeat every second), plus `extra` flags.
fn run_mixnode(dir: &Path, url: &str, extra: &[&str]) -> Process {
    if !dir.exists() {
        init("mixnode", dir);
    }
    let mut args = vec!["mixnode", "run", "--dir", path(dir)];
    args.extend(SMALL_NODE);
    args.extend([
        "--shutdown-grace-ms",
        "500",
        "--directory",
        url,
        "--heartbeat-s",
        "1",
    ]);
    args.extend_from_slice(extra);
    Process::start(&args, &["listen", "metrics"])
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn status_code(response: &str) -> u16 {
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `/metrics` of `addr`, checked: every sample's family is typed, counters end in `_total`,
/// values parse. Returns the text and the families' types.
fn scrape(addr: SocketAddr) -> (String, std::collections::BTreeMap<String, String>) {
    let response = http_get(addr, "/metrics");
    assert_eq!(status_code(&response), 200, "{response}");
    assert!(response.contains("text/plain; version=0.0.4"));
    let text = body(&response).to_string();
    let types = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, types)
}

/// The value of one sample line (`name{labels}` exactly as written).
fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    let value = line.rsplit(' ').next().unwrap();
    if value == "+Inf" {
        return f64::INFINITY;
    }
    value.parse().unwrap()
}

/// The series every role publishes, with their types.
fn assert_common(text: &str, types: &std::collections::BTreeMap<String, String>, role: &str) {
    for (name, kind) in [
        ("lethe_build_info", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("lethe_uptime_seconds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(kind),
            "{role}: {name}"
        );
    }
    let info = text
        .lines()
        .find(|l| l.starts_with("lethe_build_info{"))
        .unwrap();
    for label in ["version=\"", "commit=\"", "x25519=\"", "symmetric=\""] {
        assert!(info.contains(label), "{info}");
    }
    assert!(info.contains(&format!("role=\"{role}\"")), "{info}");
    assert!(info.ends_with("} 1"), "{info}");
    assert!(!info.contains("commit=\"\""), "{info}");
    assert!(value(text, "process_resident_memory_bytes") > 0.0);
    let started = value(text, "process_start_time_seconds");
    assert!(
        started > 1.6e9 && started <= now_s() as f64 + 1.0,
        "{started}"
    );
}

fn wait_until(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match done() {
            Ok(()) => return,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `/health` answers `code` with `"status":"<word>"`.
fn wait_health(addr: SocketAddr, code: u16, word: &str) {
    wait_until(&format!("/health {code} {word}"), || {
        let response = http_get(addr, "/health");
        let wanted = format!("\"status\":\"{word}\"");
        if status_code(&response) == code && body(&response).contains(&wanted) {
            Ok(())
        } else {
            Err(response)
        }
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn topology(url: &str, key: &[u8; 32]) -> Result<Topology, String> {
    let set = lethe_nodes::topology::AuthoritySet::new(vec![*key]).map_err(|e| e.to_string())?;
    rt().block_on(client::fetch_consensus_from(
        &client::http_client(),
        url,
        &set,
        None,
    ))
    .map_err(|e| e.to_string())
}

fn listed(t: &Topology, identity: &str) -> bool {
    t.layers.iter().flatten().any(|d| d.identity == identity)
}

/// Waits until the directory's topology lists (or no longer lists) `identity`.
fn wait_listed(url: &str, key: &[u8; 32], identity: &str, wanted: bool) {
    wait_until(&format!("{identity} listed = {wanted}"), || {
        let t = topology(url, key)?;
        if listed(&t, identity) == wanted {
            Ok(())
        } else {
            Err(format!("epoch {}", t.epoch))
        }
    });
}

fn post(url: &str, path: &str, body: Vec<u8>) -> u16 {
    rt().block_on(async {
        client::http_client()
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn signed<T: serde::Serialize>(value: &T, domain: &[u8], seed: &[u8; 32]) -> Vec<u8> {
    serde_json::to_vec(&sign(value, domain, seed).unwrap()).unwrap()
}

fn identity_seed(node_dir: &Path) -> [u8; 32] {
    *keyfile::read_private(&node_dir.join("keys/ed25519_identity")).unwrap()
}

fn directory_key(directory: &Process) -> [u8; 32] {
    keyfile::unhex_32(directory.get("key")).unwrap()
}

#[test]
fn every_role_publishes_typed_metrics() {
    let root = temp_dir("roles");
    // Directory, and a mixnode registered with it.
    let directory = run_directory(&root.join("directory"), "127.0.0.1:0");
    let url = format!("http://{}", directory.get("listen"));
    let mixnode = run_mixnode(&root.join("mixnode"), &url, &[]);
    let metrics = mixnode.addr("metrics");
    wait_health(metrics, 200, "up");
    let (text, types) = scrape(metrics);
    assert_common(&text, &types, "mixnode");
    // The old counter stays one release beside the gauge.
    assert_eq!(types["lethe_uptime_seconds_total"], "counter");
    for name in [
        "lethe_sphinx_key_expiry_timestamp_seconds",
        "lethe_registration_state",
        "lethe_last_heartbeat_timestamp_seconds",
        "lethe_simd_info",
        "lethe_memory_bytes_max",
        "lethe_memory_replay_filters_bytes",
    ] {
        assert_eq!(types[name], "gauge", "{name}");
    }
    // One live key, one filter; the stated maximum has room for a rotation's second.
    let replay = value(&text, "lethe_memory_replay_filters_bytes");
    assert!(replay > 0.0, "{replay}");
    assert!(value(&text, "lethe_memory_bytes_max") >= 2.0 * replay);
    assert_eq!(
        value(&text, "lethe_registration_state{state=\"registered\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "lethe_registration_state{state=\"unregistered\"}"),
        0.0
    );
    let heartbeat = value(&text, "lethe_last_heartbeat_timestamp_seconds");
    assert!(heartbeat + 60.0 > now_s() as f64, "{heartbeat}");
    // Default rotation: one day, so the init key expires within a day and an hour from now.
    let expiry = text
        .lines()
        .find(|l| l.starts_with("lethe_sphinx_key_expiry_timestamp_seconds{rotation=\""))
        .unwrap();
    let at_s: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = now_s() as f64;
    assert!(at_s > now && at_s <= now + 25.0 * 3600.0, "{expiry}");

    // The directory's own series.
    let (text, types) = scrape(directory.addr("listen"));
    assert_common(&text, &types, "directory");
    assert_eq!(types["lethe_directory_topology_epoch"], "gauge");
    assert_eq!(types["lethe_directory_nodes"], "gauge");
    assert_eq!(types["lethe_http_requests_total"], "counter");
    assert_eq!(
        value(
            &text,
            "lethe_directory_registrations_total{outcome=\"new\"}"
        ),
        1.0
    );
    assert!(value(&text, "lethe_directory_topology_epoch") >= 1.0);
    let layers: f64 = (1..=3)
        .map(|l| {
            let series = format!("lethe_directory_nodes{{role=\"mixnode\",layer=\"{l}\"}}");
            value(&text, &series)
        })
        .sum();
    assert_eq!(layers, 1.0);
    assert!(
        value(
            &text,
            "lethe_http_requests_total{endpoint=\"/v1/register\",status=\"200\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            "lethe_directory_heartbeats_received_total{outcome=\"fresh\"}"
        ) >= 0.0
    );
    // A path outside the API is counted as `other`, not by its name.
    http_get(directory.addr("listen"), "/no/such/path");
    let (text, _) = scrape(directory.addr("listen"));
    assert_eq!(
        value(
            &text,
            "lethe_http_requests_total{endpoint=\"other\",status=\"404\"}"
        ),
        1.0
    );
    assert!(!text.contains("/no/such/path"));

    // A gateway without a directory: registration unconfigured, its key never expires.
    let gateway_dir = root.join("gateway");
    init("gateway", &gateway_dir);
    let gateway = run_gateway_with(&gateway_dir, &["--pool-buffers", "1024"]);
    let metrics = gateway.addr("metrics");
    wait_health(metrics, 200, "up");
    let (text, types) = scrape(metrics);
    assert_common(&text, &types, "gateway");
    assert_eq!(types["lethe_gateway_sessions_active"], "gauge");
    assert_eq!(
        value(&text, "lethe_registration_state{state=\"unconfigured\"}"),
        1.0
    );
    assert!(text.contains("lethe_sphinx_key_expiry_timestamp_seconds{rotation=\""));
    let replay = value(&text, "lethe_memory_replay_filters_bytes");
    assert!(replay > 0.0 && value(&text, "lethe_memory_bytes_max") >= replay);
    assert!(text.lines().any(
        |l| l.starts_with("lethe_sphinx_key_expiry_timestamp_seconds{") && l.ends_with(" +Inf")
    ));

    // An issuer, after one refused request.
    let keys = root.join("keys");
    keygen(&keys, 1, 1);
    let (issuer, issuer_url) = run_issuer(&keys.join("issuer-1.key"), &[]);
    let status = rt().block_on(async {
        client::http_client()
            .post(format!("{issuer_url}/v1/blind-sign"))
            .body(vec![0u8; 4])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 400);
    let (text, types) = scrape(issuer.addr("listening"));
    assert_common(&text, &types, "issuer");
    assert_eq!(types["lethe_issuer_credentials_issued_total"], "counter");
    assert_eq!(types["lethe_issuer_rate_limited_total"], "counter");
    assert_eq!(
        value(
            &text,
            "lethe_issuer_requests_rejected_total{reason=\"malformed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "lethe_http_requests_total{endpoint=\"/v1/blind-sign\",status=\"400\"}"
        ),
        1.0
    );

    issuer.terminate();
    gateway.terminate();
    mixnode.terminate();
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn health_follows_the_registration() {
    let root = temp_dir("health");
    // No directory yet: unregistered, 503.
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let mixnode = run_mixnode(&root.join("mixnode"), &url, &[]);
    let metrics = mixnode.addr("metrics");
    wait_health(metrics, 503, "unregistered");
    let (text, _) = scrape(metrics);
    assert_eq!(
        value(&text, "lethe_registration_state{state=\"unregistered\"}"),
        1.0
    );
    assert_eq!(value(&text, "lethe_last_heartbeat_timestamp_seconds"), 0.0);
    // The directory comes up: registered, 200.
    let directory = run_directory(&root.join("directory"), &listen);
    wait_health(metrics, 200, "up");
    let (text, _) = scrape(metrics);
    assert_eq!(
        value(&text, "lethe_registration_state{state=\"registered\"}"),
        1.0
    );

    // A node whose announced address another node holds: the directory refuses it (409),
    // and its /health says so.
    let taken: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let squatter = [42u8; 32];
    let descriptor = lethe_nodes::directory::announce::node_descriptor(
        &squatter,
        lethe_nodes::topology::Role::Mixnode,
        taken,
        &[7u8; 32],
        1,
        None,
        None,
    );
    rt().block_on(client::register(
        &client::http_client(),
        &url,
        &squatter,
        &descriptor,
    ))
    .unwrap();
    let refused = run_mixnode(
        &root.join("refused"),
        &url,
        &["--announce", &taken.to_string()],
    );
    let refused_metrics = refused.addr("metrics");
    wait_health(refused_metrics, 503, "rejected");
    let (text, _) = scrape(refused_metrics);
    assert_eq!(
        value(&text, "lethe_registration_state{state=\"rejected\"}"),
        1.0
    );
    let (text, _) = scrape(directory.addr("listen"));
    assert!(
        value(
            &text,
            "lethe_directory_registrations_rejected_total{reason=\"address_taken\"}"
        ) >= 1.0
    );

    refused.terminate();
    mixnode.terminate();
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sigterm_removes_the_node_from_the_topology_at_once() {
    let root = temp_dir("sigterm");
    let directory = run_directory(&root.join("directory"), "127.0.0.1:0");
    let url = format!("http://{}", directory.get("listen"));
    let key = directory_key(&directory);
    let node_dir = root.join("mixnode");
    let mixnode = run_mixnode(&node_dir, &url, &[]);
    let identity = keyfile::hex(&keyfile::ed25519_public(&identity_seed(&node_dir)));
    wait_listed(&url, &key, &identity, true);
    mixnode.terminate();
    // The heartbeat timeout is 600 s: only the deregistration can remove it within the wait.
    wait_listed(&url, &key, &identity, false);
    let (text, _) = scrape(directory.addr("listen"));
    assert_eq!(value(&text, "lethe_directory_deregistrations_total"), 1.0);
    assert_eq!(value(&text, "lethe_directory_nodes_expired_total"), 0.0);
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_gateway_leaves_on_sigterm_too() {
    let root = temp_dir("gateway-leaves");
    let directory = run_directory(&root.join("directory"), "127.0.0.1:0");
    let url = format!("http://{}", directory.get("listen"));
    let key = directory_key(&directory);
    let gateway_dir = root.join("gateway");
    init("gateway", &gateway_dir);
    let gateway = Process::start(
        &[
            "gateway",
            "run",
            "--dir",
            path(&gateway_dir),
            "--listen",
            "127.0.0.1:0",
            "--client-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--directory",
            &url,
            "--directory-key",
            directory.get("key"),
            "--cores",
            "1",
            "--replay-packets-per-s",
            "200",
            "--replay-key-lifetime-s",
            "600",
            "--pool-buffers",
            "1024",
        ],
        &["identity", "metrics"],
    );
    let identity = gateway.get("identity").to_string();
    let gateway_listed = |wanted: bool| {
        wait_until(&format!("gateway listed = {wanted}"), || {
            let t = topology(&url, &key)?;
            let listed = t.gateways.iter().any(|g| g.identity == identity);
            if listed == wanted {
                Ok(())
            } else {
                Err(format!("epoch {}", t.epoch))
            }
        })
    };
    gateway_listed(true);
    wait_health(gateway.addr("metrics"), 200, "up");
    gateway.terminate();
    gateway_listed(false);
    let (text, _) = scrape(directory.addr("listen"));
    assert_eq!(value(&text, "lethe_directory_deregistrations_total"), 1.0);
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn forged_stale_and_replayed_deregistrations_are_refused() {
    let root = temp_dir("forged");
    let directory = run_directory(&root.join("directory"), "127.0.0.1:0");
    let url = format!("http://{}", directory.get("listen"));
    let key = directory_key(&directory);
    let node_dir = root.join("mixnode");
    let mixnode = run_mixnode(&node_dir, &url, &[]);
    let seed = identity_seed(&node_dir);
    let identity = keyfile::hex(&keyfile::ed25519_public(&seed));
    wait_listed(&url, &key, &identity, true);
    let leave = |sent_at_s: u64| Deregistration {
        identity: identity.clone(),
        sent_at_s,
    };

    // Signed by someone else, naming the node: 403.
    let forged = signed(&leave(now_s()), DOMAIN_DEREGISTER, &[9u8; 32]);
    assert_eq!(post(&url, "/v1/deregister", forged), 403);
    // The node's own heartbeat, posted as a deregistration: another domain, 403.
    let heartbeat = Heartbeat {
        identity: identity.clone(),
        sent_at_s: now_s(),
    };
    let heartbeat = signed(&heartbeat, DOMAIN_HEARTBEAT, &seed);
    assert_eq!(post(&url, "/v1/deregister", heartbeat), 403);
    // Properly signed but outside the clock skew: 422.
    let stale = signed(
        &leave(now_s() - 2 * CLOCK_SKEW_S_MAX),
        DOMAIN_DEREGISTER,
        &seed,
    );
    assert_eq!(post(&url, "/v1/deregister", stale), 422);
    // Older than the node's latest heartbeat (an old capture replayed): 409.
    let old = signed(&leave(now_s() - 30), DOMAIN_DEREGISTER, &seed);
    assert_eq!(post(&url, "/v1/deregister", old), 409);
    // An identity the directory does not know: 404, and nothing is created for it.
    let stranger = [11u8; 32];
    let unknown = Deregistration {
        identity: keyfile::hex(&keyfile::ed25519_public(&stranger)),
        sent_at_s: now_s(),
    };
    let unknown = signed(&unknown, DOMAIN_DEREGISTER, &stranger);
    assert_eq!(post(&url, "/v1/deregister", unknown), 404);
    let (text, _) = scrape(directory.addr("listen"));
    assert_eq!(value(&text, "lethe_directory_deregistrations_total"), 0.0);
    assert_eq!(
        value(
            &text,
            "lethe_directory_deregistrations_rejected_total{reason=\"wrong_signer\"}"
        ) + value(
            &text,
            "lethe_directory_deregistrations_rejected_total{reason=\"bad_signature\"}"
        ),
        2.0
    );
    // Still listed: the node stays.
    let t = topology(&url, &key).unwrap();
    assert!(listed(&t, &identity));

    // The real one removes it; the node notices (404 to its heartbeat) and registers again
    // with a later descriptor.
    let genuine = signed(&leave(now_s()), DOMAIN_DEREGISTER, &seed);
    assert_eq!(post(&url, "/v1/deregister", genuine.clone()), 200);
    wait_listed(&url, &key, &identity, false);
    wait_listed(&url, &key, &identity, true);
    // The same request replayed now removes nothing.
    assert_eq!(post(&url, "/v1/deregister", genuine), 409);
    let (text, _) = scrape(directory.addr("listen"));
    assert_eq!(value(&text, "lethe_directory_deregistrations_total"), 1.0);
    let t = topology(&url, &key).unwrap();
    assert!(listed(&t, &identity));

    // By hand, as an operator would.
    let out = ok(&[
        "mixnode",
        "deregister",
        "--dir",
        path(&node_dir),
        "--directory",
        &url,
    ]);
    assert!(out.contains(&identity), "{out}");
    let (text, _) = scrape(directory.addr("listen"));
    assert_eq!(value(&text, "lethe_directory_deregistrations_total"), 2.0);

    mixnode.terminate();
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}
