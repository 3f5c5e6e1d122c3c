//! Issue 16, "an operator's first hour": what `lethe` prints and refuses, with real processes
//! on loopback. Every wait is bounded; nothing depends on speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `lethe ARGS` to completion, killed (and the test failed) if it is still running after
/// `WAIT_MAX`: a command that should refuse at once but starts instead must not hang the test.
fn lethe_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(LETHE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT_MAX;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "lethe {args:?} was still running after {}s: {}",
                WAIT_MAX.as_secs(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let out = lethe_bounded(args);
    assert!(out.status.success(), "lethe {args:?}: {}", stderr(&out));
    out
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn mixnode_init_prints_its_keys_and_the_run_command() {
    let dir = temp_dir("init");
    let out = ok(&["mixnode", "init", "--dir", path(&dir)]);
    let text = stdout(&out);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {text}"))
            .to_string()
    };
    let identity = std::fs::read_to_string(dir.join("keys/ed25519_identity.pub")).unwrap();
    let sphinx = std::fs::read_to_string(dir.join("keys/x25519_sphinx_primary.pub")).unwrap();
    assert_eq!(value("identity"), identity.trim());
    assert_eq!(value("sphinx_key"), sphinx.trim());
    let next = stderr(&out);
    assert!(
        next.contains(&format!("mixnode run --dir {}", path(&dir)))
            && next.contains("--directory")
            && next.contains("--announce"),
        "{next}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_run_refuses_an_exposed_or_corrupt_identity_key() {
    let root = temp_dir("keys");
    // Without --directory the mixnode never used its identity, so a bad one went unnoticed.
    let mix = root.join("mix");
    init("mixnode", &mix);
    let mix_run = |dir: &Path| {
        let mut args = vec!["mixnode", "run", "--dir", path(dir)];
        args.extend_from_slice(&LOOPBACK_ONE_CORE);
        args.extend_from_slice(&["--replay-key-lifetime-s", "600"]);
        lethe_bounded(&args)
    };
    let identity = mix.join("keys/ed25519_identity");
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = mix_run(&mix);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!("chmod 600 {}", path(&identity))) && text.contains("0644"),
        "{text}"
    );

    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&identity, "not a key\n").unwrap();
    let out = mix_run(&mix);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(path(&identity)) && text.contains("'n' at byte 0 is not a hex digit"),
        "{text}"
    );

    // The gateway and the directory: the same checks, the same words.
    let gateway = root.join("gateway");
    init("gateway", &gateway);
    let gw_identity = gateway.join("keys/ed25519_identity");
    std::fs::set_permissions(&gw_identity, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = lethe_bounded(&[
        "gateway",
        "run",
        "--dir",
        path(&gateway),
        "--listen",
        "127.0.0.1:0",
        "--client-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("chmod 600 {}", path(&gw_identity))),
        "{}",
        stderr(&out)
    );
    let directory = root.join("directory");
    ok(&["directory", "init", "--dir", path(&directory)]);
    let dir_identity = directory.join(lethe_nodes::directory::server::IDENTITY_FILE);
    std::fs::write(&dir_identity, "abcd\n").unwrap();
    let out = lethe_bounded(&[
        "directory",
        "run",
        "--dir",
        path(&directory),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("4 hex digits where 64 are expected"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn gateway_refuses_to_announce_loopback_and_publishes_its_client_url() {
    let root = temp_dir("announce");
    let directory_dir = root.join("directory");
    ok(&["directory", "init", "--dir", path(&directory_dir)]);
    let directory = Process::start(
        &[
            "directory",
            "run",
            "--private-network",
            "--dir",
            path(&directory_dir),
            "--listen",
            "127.0.0.1:0",
            "--epoch-s",
            "5",
        ],
        &["listen", "key"],
    );
    let url = format!("http://{}", directory.get("listen"));
    let key = directory.get("key").to_string();
    let gateway = root.join("gateway");
    init("gateway", &gateway);
    let gateway_args = |listen: &'static str, extra: &[&'static str]| {
        let mut args: Vec<String> = [
            "gateway",
            "run",
            "--dir",
            path(&gateway),
            "--listen",
            listen,
            "--client-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--directory",
            url.as_str(),
            "--directory-key",
            key.as_str(),
            "--cores",
            "1",
            "--replay-packets-per-s",
            "200",
            "--replay-key-lifetime-s",
            "600",
            "--pool-buffers",
            "1024",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // Bound to every address and nothing announced: it would have registered 127.0.0.1.
    let args = gateway_args("0.0.0.0:0", &[]);
    let out = lethe_bounded(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "a gateway on 0.0.0.0 registered");
    let text = stderr(&out);
    assert!(
        text.contains("--announce PUBLIC_IP:") && text.contains("127.0.0.1"),
        "{text}"
    );

    // The announced client URL is the one the directory publishes.
    let announced = "wss://gateway.example.org/lethe";
    let args = gateway_args("127.0.0.1:0", &["--announce-client-url", announced]);
    let running = Process::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["identity"],
    );
    let directory_key = lethe_nodes::keyfile::unhex_32(&key).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = lethe_nodes::directory::client::http_client();
    let deadline = Instant::now() + WAIT_MAX;
    let published = loop {
        let topology = runtime.block_on(lethe_nodes::directory::client::fetch_consensus_from(
            &http,
            &url,
            &lethe_nodes::topology::AuthoritySet::new(vec![directory_key]).unwrap(),
            None,
        ));
        if let Ok(t) = topology {
            if let Some(g) = t.gateways.first() {
                break g.client_url.clone();
            }
        }
        assert!(Instant::now() < deadline, "the gateway was never published");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(published.as_deref(), Some(announced));
    running.terminate();
    directory.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_unreachable_directory_is_named_with_the_cause() {
    let dir = temp_dir("unreachable");
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = lethe_bounded(&["client", "init", "--dir", path(&dir), "--directory", &url]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&url) && text.to_lowercase().contains("connection refused"),
        "{text}"
    );
    assert!(!dir.join("client.toml").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn issuers_of_another_key_set_are_named_and_expiry_is_a_date() {
    let root = temp_dir("keysets");
    let ours = root.join("ours");
    let theirs = root.join("theirs");
    for keys in [&ours, &theirs] {
        keygen(keys, 1, 1);
    }
    let (issuer, issuer_url) = run_issuer(&theirs.join("issuer-1.key"), &[]);
    let obtain = |vk: &Path, out: &Path| {
        lethe_bounded(&[
            "credential",
            "obtain",
            "--issuers",
            &issuer_url,
            "--threshold",
            "1",
            "--verification-key",
            path(vk),
            "--out",
            path(out),
            "--retry-total-s",
            "0",
        ])
    };
    let out = obtain(
        &ours.join("verification.key"),
        &root.join("refused.credential"),
    );
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("key set does not match the verification key"),
        "{text}"
    );

    let credential = root.join("good.credential");
    let out = obtain(&theirs.join("verification.key"), &credential);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&ok(&["credential", "show", path(&credential)]));
    let day: i64 = shown
        .lines()
        .find_map(|l| l.strip_prefix("expiry_day: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let date = shown
        .lines()
        .find_map(|l| l.strip_prefix("expiry_date: "))
        .unwrap_or_else(|| panic!("no expiry_date in {shown}"));
    // The date is the day's: checked against the library's own conversion and its shape.
    assert!(
        date.starts_with(&lethe_nodes::credential_files::iso_date(day as u32)),
        "{shown}"
    );
    let iso = &date[..10];
    assert!(
        iso.len() == 10 && iso.as_bytes()[4] == b'-' && iso.as_bytes()[7] == b'-',
        "{shown}"
    );
    issuer.terminate();
    let _ = std::fs::remove_dir_all(&root);
}
