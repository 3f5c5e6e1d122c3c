//! The issuer's rate limit against many source addresses, and `lethe credential obtain`
//! against busy or not-yet-started issuers, with real `lethe issuer run` processes on
//! loopback (clients bind 127.x.y.z source addresses: Linux routes all of 127/8 to `lo`).
//! Outcomes are checked, not speed: waits are bounded, retry budgets generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn keygen(dir: &Path) {
    let out = Command::new(LETHE)
        .args(["keygen", "--threshold", "1", "--issuers", "1", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn issuer(dir: &Path, listen: &str, limits: &[&str]) -> Process {
    let key = dir.join("issuer-1.key");
    let mut args = vec!["issuer", "run", "--listen", listen, "--key"];
    args.push(key.to_str().unwrap());
    args.extend_from_slice(limits);
    Process::start(&args, &["listening"])
}

fn obtain(dir: &Path, url: &str, out: &str, retry_total_s: &str) -> Output {
    Command::new(LETHE)
        .args(["credential", "obtain", "--issuers", url, "--threshold", "1"])
        .arg("--verification-key")
        .arg(dir.join("verification.key"))
        .arg("--out")
        .arg(dir.join(out))
        .args(["--retry-total-s", retry_total_s])
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// GET `path` from `source`; (status, Retry-After).
async fn get(source: Ipv4Addr, addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let http = reqwest::Client::builder()
        .local_address(IpAddr::V4(source))
        .timeout(WAIT_MAX)
        .build()
        .unwrap();
    let resp = http
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), retry_after)
}

#[test]
fn a_hundred_addresses_of_one_network_cannot_starve_another() {
    let dir = temp_dir("flood");
    keygen(&dir);
    // A burst of 20 per /24 as by default, but next to no refill, so what gets through does
    // not depend on how fast this machine sends; 200/s and 400 overall, the defaults.
    let node = issuer(&dir, "127.0.0.1:0", &["--rate-per-ip", "0.001"]);
    let addr = node.addr("listening");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // 100 addresses x 5 requests: 500, more than the global burst. Counted per address
        // (each within its own burst of 20) this would drain the global bucket; counted per
        // /24 it is one network's share.
        let mut allowed = 0;
        let mut limited = 0;
        for n in 1..=100u8 {
            for _ in 0..5 {
                match get(Ipv4Addr::new(127, 0, 0, n), addr, "/v1/terms").await {
                    (200, _) => allowed += 1,
                    (429, retry_after) => {
                        let secs: u64 = retry_after
                            .expect("a 429 says when to come back")
                            .parse()
                            .unwrap();
                        assert!(secs >= 1);
                        limited += 1;
                    }
                    (status, _) => panic!("unexpected HTTP {status}"),
                }
            }
        }
        // The burst, plus a token if the test took over 1000 s.
        assert!(allowed <= 21, "one /24 got {allowed} requests through");
        assert_eq!(allowed + limited, 500);
        // Someone on another network: the terms, the key share, all served.
        let honest = Ipv4Addr::new(127, 0, 1, 1);
        for path in ["/v1/terms", "/v1/verification-key", "/v1/terms"] {
            assert_eq!(get(honest, addr, path).await.0, 200, "{path}");
        }
    });
    node.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn obtain_waits_out_429_and_refused_connections_then_gives_up_clearly() {
    let dir = temp_dir("retry");
    keygen(&dir);

    // An issuer allowing one request every 2 s: a credential takes 3 (terms, key share,
    // blind signature), so `obtain` must be told 429 and wait (Retry-After) to get through.
    let slow = issuer(
        &dir,
        "127.0.0.1:0",
        &["--rate-per-ip", "0.5", "--burst-per-ip", "1"],
    );
    let url = format!("http://{}", slow.get("listening"));
    let out = obtain(&dir, &url, "cred-slow", "120");
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(dir.join("cred-slow"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    slow.terminate();

    // An issuer that will not serve this network for ~1000 s: its Retry-After is beyond the
    // 5 s allowed, so `obtain` gives up at once and says what to do.
    let stingy = issuer(
        &dir,
        "127.0.0.1:0",
        &["--rate-per-ip", "0.001", "--burst-per-ip", "1"],
    );
    let url = format!("http://{}", stingy.get("listening"));
    let out = obtain(&dir, &url, "cred-stingy", "5");
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("429"), "{text}");
    assert!(text.contains("--retry-total-s"), "{text}");
    assert!(!dir.join("cred-stingy").exists());
    stingy.terminate();

    // An issuer not listening yet: `obtain` keeps trying the connection until it is up.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let pending = Command::new(LETHE)
        .args([
            "credential",
            "obtain",
            "--issuers",
            &format!("http://{listen}"),
        ])
        .args(["--threshold", "1", "--retry-total-s", "120"])
        .arg("--verification-key")
        .arg(dir.join("verification.key"))
        .arg("--out")
        .arg(dir.join("cred-late"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let late = issuer(&dir, &listen, &[]);
    let out = pending.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("cred-late").exists());
    late.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
