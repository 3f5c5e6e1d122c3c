//! The SOCKS5 service provider does not learn who its users are (issue 21): a real testnet on
//! loopback, a provider on gateway 1 logging at `trace` level with `--state-dump`, a proxy
//! client on gateway 2 fetching a page. Afterwards the provider's files (its logs, the state
//! dump, everything in its directory) hold neither the client's identity key, encryption key
//! nor gateway, in any encoding we know of (hex, raw bytes, Debug lists). As a control, a
//! second fetch with `--reveal-address` must make the same search find the client.
//! Checks outcomes, never speed: every wait is bounded and generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::socks::{fetch_through_socks, http_server, SocksNet};
use common::{random_bytes, temp_dir, Process};

/// `lethe provider run` logging everything it logs (`RUST_LOG=trace`) to
/// `provider/stderr.log`, and what it prints to `provider/stdout.log`: files the search
/// below reads.
fn start_provider(socks: &SocksNet) -> Process {
    let dir = &socks.provider_dir;
    let mut command = socks.provider_command();
    command
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    Process::start_command(command, &["address"], Some(&dir.join("stdout.log")))
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
    // The provider on gateway 1, the user on gateway 2 (the provider must not learn it).
    let socks = SocksNet::up(&temp_dir("root"), &[]);
    let gateway2 = socks.net.info("gateway2", "identity");
    let provider_dir = &socks.provider_dir;
    let alice_address = &socks.user_address;
    let (identity, rest) = alice_address.split_once('.').unwrap();
    let (encryption, gateway) = rest.split_once('@').unwrap();
    assert_eq!(gateway, gateway2);
    let keys = [
        ("identity", identity),
        ("encryption key", encryption),
        ("gateway", gateway),
    ];

    let provider = start_provider(&socks);
    // Before any fetch the gateway may appear in what the provider knows from the public
    // directory (its topology): only what the fetch adds counts, so gateway findings are
    // compared before and after.
    let before = findings(provider_dir, &keys);
    assert!(
        before.iter().all(|f| f.starts_with("gateway")),
        "the provider knows the client before any fetch: {before:#?}"
    );

    // 150 KB takes more SURBs than a Connect carries: the provider asks for more.
    let page = random_bytes(150_000, 21);
    let web = http_server(page.clone());
    let proxy = socks.start_proxy(provider.get("address"), false);
    assert_eq!(fetch_through_socks(proxy.addr("socks5"), web), page);
    drop(proxy);
    let state = std::fs::read_to_string(provider_dir.join("state.dump")).unwrap();
    assert!(state.contains("SurbStore"), "{state}");
    provider.terminate();

    let after = findings(provider_dir, &keys);
    let learned: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert!(
        learned.is_empty(),
        "the provider learned who fetched: {learned:#?}"
    );
    let log = std::fs::read_to_string(provider_dir.join("stderr.log")).unwrap();
    assert!(log.contains("TRACE") || log.contains("DEBUG") || log.contains("trace"));

    // Control: with --reveal-address the same search finds the client (the search works).
    let provider = start_provider(&socks);
    let proxy = socks.start_proxy(provider.get("address"), true);
    let web = http_server(page.clone());
    assert_eq!(fetch_through_socks(proxy.addr("socks5"), web), page);
    drop(proxy);
    provider.terminate();
    let revealed = findings(provider_dir, &keys);
    for (name, _) in &keys[..2] {
        assert!(
            revealed.iter().any(|f| f.starts_with(name)),
            "the control did not find the revealed {name}: {revealed:#?}"
        );
    }
}
