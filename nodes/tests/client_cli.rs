//! The CLI's library functions (`init`, `send`, `receive`) against an in-test directory (axum,
//! signed topology) and the fake gateway: trust-on-first-use and pinned keys, a 50 KB file
//! sent with `--wait-acks` and written durably by `receive`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_support;

use std::path::PathBuf;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use client_support::FakeGateway;
use lethe_nodes::client::cli::{self, InitArgs, ReceiveArgs, SendArgs, TrafficArgs};
use lethe_nodes::client::config;
use lethe_nodes::directory::client::AuthorityArgs;
use lethe_nodes::keyfile;
use lethe_nodes::topology::{sign_consensus, MultiSigned};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lethe-client-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn traffic() -> TrafficArgs {
    TrafficArgs {
        no_cover: false,
        send_delay_ms: Some(2.0),
        loop_delay_ms: Some(100.0),
        hop_delay_ms: Some(1.0),
        max_retransmissions: None,
    }
}

#[test]
fn init_send_receive() {
    // umask 0 (this binary's only test): a file not created with an explicit mode would come
    // out world-readable, and the mode checks below would see it.
    // SAFETY: umask has no memory-safety preconditions.
    unsafe { libc::umask(0) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let directory_seed = [77u8; 32];
    let directory_key = keyfile::ed25519_public(&directory_seed);
    let (gateway, directory_url) = runtime.block_on(async {
        let gateway = FakeGateway::start(0).await;
        let body = serde_json::to_string(&gateway.net.topology).unwrap();
        let consensus = MultiSigned {
            signatures: vec![sign_consensus(&body, &directory_seed)],
            body,
        };
        let key = keyfile::hex(&directory_key);
        let app = Router::new()
            .route(
                "/v1/key",
                get(move || {
                    let key = key.clone();
                    async move { Json(serde_json::json!({ "key": key })) }
                }),
            )
            .route(
                "/v1/consensus",
                get(move || {
                    let consensus = consensus.clone();
                    async move { Json(consensus) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (gateway, url)
    });

    let a_dir = temp_dir("a");
    let b_dir = temp_dir("b");
    // A trusts the served key on first use and picks a gateway; B pins both.
    cli::init(&InitArgs {
        dir: a_dir.clone(),
        authority: AuthorityArgs {
            directory: vec![directory_url.clone()],
            directory_key: Vec::new(),
        },
        gateway: None,
        ..Default::default()
    })
    .unwrap();
    cli::init(&InitArgs {
        dir: b_dir.clone(),
        authority: AuthorityArgs {
            directory: vec![directory_url.clone()],
            directory_key: vec![keyfile::hex(&directory_key)],
        },
        gateway: Some(keyfile::hex(&gateway.net.gateway_identity)),
        ..Default::default()
    })
    .unwrap();
    let a = config::load(&a_dir).unwrap();
    assert_eq!(a.authorities.set().keys(), [directory_key]);
    assert_eq!(a.gateway, gateway.net.gateway_identity);
    let b_address = config::load(&b_dir).unwrap().address();
    // Re-initialising refuses to overwrite; a wrong pinned key fails to verify the topology.
    assert!(cli::init(&InitArgs {
        dir: a_dir.clone(),
        authority: AuthorityArgs {
            directory: vec![directory_url.clone()],
            directory_key: Vec::new(),
        },
        gateway: None,
        ..Default::default()
    })
    .is_err());
    let err = cli::init(&InitArgs {
        dir: temp_dir("c"),
        authority: AuthorityArgs {
            directory: vec![directory_url.clone()],
            directory_key: vec![keyfile::hex(&[1u8; 32])],
        },
        gateway: None,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.contains("topology refused"), "{err}");

    let out = temp_dir("out");
    let receiver = {
        let out = out.clone();
        let b_dir = b_dir.clone();
        std::thread::spawn(move || {
            cli::receive(&ReceiveArgs {
                dir: b_dir,
                out,
                count: Some(1),
                timeout_s: 30,
                traffic: traffic(),
                trace: Default::default(),
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let file = temp_dir("payload");
    let content: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    cli::send(&SendArgs {
        dir: a_dir.clone(),
        to: b_address.to_string(),
        message: None,
        file: Some(file.clone()),
        wait_acks: true,
        reply_surbs: 2,
        timeout_s: 30,
        traffic: traffic(),
        trace: Default::default(),
    })
    .unwrap();
    receiver.join().unwrap().unwrap();
    let written: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(std::fs::read(&written[0]).unwrap(), content);
    // Received messages are the owner's alone, whatever the umask.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&written[0]), 0o600, "received message file");
    assert_eq!(mode(&out), 0o700, "inbox created by receive");

    // A bad address is a clear error.
    let err = cli::send(&SendArgs {
        dir: a_dir.clone(),
        to: "nonsense".into(),
        message: Some("x".into()),
        file: None,
        wait_acks: false,
        reply_surbs: 0,
        timeout_s: 5,
        traffic: traffic(),
        trace: Default::default(),
    })
    .unwrap_err();
    assert!(err.contains("malformed address"), "{err}");
    for dir in [a_dir, b_dir, out, file] {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&dir);
    }
}
