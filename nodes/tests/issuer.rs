//! End to end: keygen, five issuer processes, threshold issuance with issuers down, HTTP
//! errors, and spending against the SQLite spent-tag store across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use lethe_crypto::coconut::bandwidth::{
    bandwidth_parameters, request_bandwidth, verify_spend, BandwidthCredential,
};
use lethe_crypto::coconut::{CoconutError, VerificationKey};
use lethe_nodes::credential_store::SqliteSpentTags;

const BIN: &str = env!("CARGO_BIN_EXE_lethe");

/// Kills every child and removes the scratch directory, also when a test panics.
struct Guard {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Guard {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("lethe-{name}-{}-{nanos}", std::process::id()));
        Self {
            dir,
            children: Vec::new(),
        }
    }

    /// Starts `lethe issuer run` and returns its bound address (first stdout line).
    fn issuer(&mut self, key: &Path, extra: &[&str]) -> SocketAddr {
        let mut child = Command::new(BIN)
            .args(["issuer", "run", "--listen", "127.0.0.1:0", "--key"])
            .arg(key)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.children.push(Some(child));
        line.trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Minimal HTTP/1.1 exchange; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer 413 and close before reading the whole body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"));
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The dealer's `t`-of-`n` key shares into `dir`; the command must succeed.
fn keygen(dir: &Path, threshold: u32, issuers: u32) {
    let (t, n) = (threshold.to_string(), issuers.to_string());
    let out = dir.to_str().unwrap();
    let o = cli(&["keygen", "--threshold", &t, "--issuers", &n, "--out", out]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn obtain(dir: &Path, urls: &[String], out: &str) -> Output {
    obtain_with(dir, urls, out, &[])
}

fn obtain_with(dir: &Path, urls: &[String], out: &str, extra: &[&str]) -> Output {
    let (joined, vk, out) = (urls.join(","), dir.join("verification.key"), dir.join(out));
    let mut args: Vec<&str> = vec![
        "credential",
        "obtain",
        "--issuers",
        &joined,
        "--threshold",
        "3",
        "--verification-key",
        vk.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--timeout-secs",
        "5",
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn keygen_refuses_bad_thresholds_and_overwrites() {
    let g = Guard::new("keygen");
    let out = g.dir.to_str().unwrap();
    let o = cli(&["keygen", "--threshold", "0", "--issuers", "3", "--out", out]);
    assert!(
        !o.status.success() && stderr(&o).contains("at least 1"),
        "{}",
        stderr(&o)
    );
    let o = cli(&["keygen", "--threshold", "4", "--issuers", "3", "--out", out]);
    assert!(
        !o.status.success() && stderr(&o).contains("must not exceed"),
        "{}",
        stderr(&o)
    );
    let o = cli(&["keygen", "--threshold", "2", "--issuers", "3", "--out", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = |f: &str| {
        std::fs::metadata(g.dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("issuer-1.key"), 0o600);
    assert_eq!(mode("issuer-3.key"), 0o600);
    assert!(g.dir.join("issuer-3.vk").exists() && g.dir.join("verification.key").exists());
    let before = std::fs::read(g.dir.join("issuer-1.key")).unwrap();
    let o = cli(&["keygen", "--threshold", "2", "--issuers", "3", "--out", out]);
    assert!(
        !o.status.success() && stderr(&o).contains("already exists"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(g.dir.join("issuer-1.key")).unwrap(), before);
}

#[test]
fn threshold_issuance_errors_and_spending() {
    let mut g = Guard::new("issuance");
    let dir = g.dir.clone();
    keygen(&dir, 3, 5);
    let addrs: Vec<SocketAddr> = (1..=5)
        .map(|i| g.issuer(&dir.join(format!("issuer-{i}.key")), &[]))
        .collect();
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();

    // All five up.
    let o = obtain(&dir, &urls, "cred-1");
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(dir.join("cred-1"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let o = cli(&["credential", "show", dir.join("cred-1").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("bandwidth_bytes: 1073741824"));

    // A rogue issuer (key from another dealer) among them: with the trusted key shares its
    // answer is refused and the honest ones suffice.
    let rogue_dir = dir.join("rogue");
    keygen(&rogue_dir, 3, 5);
    let rogue = g.issuer(&rogue_dir.join("issuer-1.key"), &[]);
    let mut mixed = vec![format!("http://{rogue}")];
    mixed.extend_from_slice(&urls[1..]);
    let o = obtain_with(
        &dir,
        &mixed,
        "cred-mixed",
        &["--key-dir", dir.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // With only the rogue and two honest issuers, the rogue is named in the error.
    let o = obtain_with(
        &dir,
        &mixed[..3],
        "cred-x",
        &["--key-dir", dir.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("untrusted verification key"),
        "{}",
        stderr(&o)
    );

    // n − t = 2 down: still issues.
    g.kill(0);
    g.kill(1);
    let o = obtain(&dir, &urls, "cred-2");
    assert!(o.status.success(), "{}", stderr(&o));

    // Three down: fewer than t answer (after a short wait: issuers refusing connections are
    // asked again while the retry time lasts).
    g.kill(2);
    let o = obtain_with(&dir, &urls, "cred-3", &["--retry-total-s", "1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("only 2 of 5 issuers answered with a valid share, 3 needed"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("cred-3").exists());

    // HTTP errors on a live issuer.
    let live = addrs[4];
    assert_eq!(http(live, "GET", "/health", b"").0, 200);
    assert_eq!(http(live, "GET", "/v1/verification-key", b"").0, 200);
    let (status, body) = http(live, "POST", "/v1/blind-sign", b"short");
    assert_eq!(status, 400, "{body}");
    let mut garbage = (1u64 << 30).to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0u8; 4]);
    garbage.extend_from_slice(&[0xAB; 300]);
    let (status, body) = http(live, "POST", "/v1/blind-sign", &garbage);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");
    assert_eq!(http(live, "POST", "/v1/blind-sign", &[0u8; 8192]).0, 413);
    assert_eq!(http(live, "GET", "/v1/nothing", b"").0, 404);

    // A well-formed request for terms the issuer does not offer: 422, whatever the client says.
    let params = bandwidth_parameters().unwrap();
    let vk =
        VerificationKey::from_bytes(&std::fs::read(dir.join("verification.key")).unwrap()).unwrap();
    let cred =
        BandwidthCredential::from_bytes(&std::fs::read(dir.join("cred-1")).unwrap()).unwrap();
    let mut rng = rand_core_06::OsRng;
    for (bandwidth, expiry) in [(1u64 << 40, cred.expiry()), (1 << 30, cred.expiry() + 30)] {
        let (_, req) = request_bandwidth(&params, &vk, bandwidth, expiry, &mut rng).unwrap();
        let mut body = bandwidth.to_be_bytes().to_vec();
        body.extend_from_slice(&expiry.to_be_bytes());
        body.extend_from_slice(&req.to_bytes());
        let (status, text) = http(live, "POST", "/v1/blind-sign", &body);
        assert_eq!(status, 422, "{text}");
    }

    // Spend against the SQLite store; the tag survives reopening the database.
    let params = bandwidth_parameters().unwrap();
    let vk =
        VerificationKey::from_bytes(&std::fs::read(dir.join("verification.key")).unwrap()).unwrap();
    let cred =
        BandwidthCredential::from_bytes(&std::fs::read(dir.join("cred-1")).unwrap()).unwrap();
    let today = cred.expiry() - 7;
    let db = dir.join("spent.db");
    let ctx = b"gateway-a/nonce-1";
    {
        let mut store = SqliteSpentTags::open(&db).unwrap();
        let spend = cred.spend(&params, &vk, ctx, &mut rng).unwrap();
        assert_eq!(
            verify_spend(&params, &vk, &spend, ctx, today, &mut store),
            Ok(1 << 30)
        );
        let again = cred.spend(&params, &vk, ctx, &mut rng).unwrap();
        assert_eq!(
            verify_spend(&params, &vk, &again, ctx, today, &mut store),
            Err(CoconutError::DoubleSpend)
        );
    }
    let mut store = SqliteSpentTags::open(&db).unwrap();
    let again = cred
        .spend(&params, &vk, b"gateway-a/nonce-2", &mut rng)
        .unwrap();
    assert_eq!(
        verify_spend(
            &params,
            &vk,
            &again,
            b"gateway-a/nonce-2",
            today,
            &mut store
        ),
        Err(CoconutError::DoubleSpend),
        "double spend after restart"
    );
    let other =
        BandwidthCredential::from_bytes(&std::fs::read(dir.join("cred-2")).unwrap()).unwrap();
    let spend = other.spend(&params, &vk, ctx, &mut rng).unwrap();
    assert_eq!(
        verify_spend(&params, &vk, &spend, ctx, today, &mut store),
        Ok(1 << 30)
    );
    assert_eq!(store.len().unwrap(), 2);
}

#[test]
fn rate_limited_requests_get_429() {
    let mut g = Guard::new("ratelimit");
    let dir = g.dir.clone();
    keygen(&dir, 1, 1);
    let addr = g.issuer(
        &dir.join("issuer-1.key"),
        &["--rate-per-ip", "0.01", "--burst-per-ip", "2"],
    );
    assert_eq!(http(addr, "GET", "/v1/terms", b"").0, 200);
    assert_eq!(http(addr, "GET", "/v1/terms", b"").0, 200);
    let (status, body) = http(addr, "GET", "/v1/terms", b"");
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        http(addr, "GET", "/health", b"").0,
        200,
        "health is not limited"
    );
}
