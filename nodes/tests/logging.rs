//! The `lethe` binary's logs, from real processes: a directory (the cheapest long-running
//! role) run with each format and filter, its stderr read from a file after it stopped.
//! Every wait is bounded; nothing depends on timing (a line is looked for only after the
//! process has provably passed the point that writes it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, temp_dir, LETHE, WAIT_MAX};

const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// A `lethe directory run` with its stderr going to a file.
struct Directory {
    child: Child,
    stderr: PathBuf,
    listen: SocketAddr,
}

impl Directory {
    /// Initialises `root/dir` and runs it with `args` after `lethe` and `env`; returns once
    /// it answers HTTP (so its start-up lines are written).
    fn start(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Directory {
        let dir = root.join("dir");
        let init = Command::new(LETHE)
            .args(["directory", "init", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", text(&init.stderr));
        let stderr = root.join("stderr.log");
        let mut command = Command::new(LETHE);
        command
            .args(args)
            .args(["directory", "run", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .env_remove("RUST_LOG")
            .env_remove("LETHE_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut listen = None;
        // `listen=` and `key=`: two lines, then the directory serves.
        for _ in 0..8 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(addr) = line.trim().strip_prefix("listen=") {
                listen = Some(addr.parse().unwrap());
                break;
            }
        }
        let Some(listen) = listen else {
            let _ = child.kill();
            panic!(
                "the directory printed no listen=: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
        });
        // An answer means `run` is past its start-up log lines (written before it serves).
        let answer = http_get(listen, "/v1/topology");
        assert!(answer.starts_with("HTTP/1.1"), "{answer}");
        Directory {
            child,
            stderr,
            listen,
        }
    }

    /// SIGTERM; waits (bounded) for a clean exit; returns its stderr.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "directory exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "directory did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `2026-12-07T08:00:00.123456Z`: RFC 3339, UTC, optional fraction.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1)))
}

/// The JSON objects of a JSON-format stderr; panics on any line that is not one.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{stderr}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

#[test]
fn json_format_writes_one_object_per_line_with_fields() {
    let root = temp_dir("json");
    let d = Directory::start(&root, &["--log-format", "json"], &[]);
    let listen = d.listen;
    let stderr = d.stop();
    let lines = json_lines(&stderr);
    assert!(!lines.is_empty(), "no log lines");
    for v in &lines {
        let ts = v["timestamp"].as_str().unwrap_or_default();
        assert!(is_rfc3339_utc(ts), "timestamp {ts:?} in {v}");
        let level = v["level"].as_str().unwrap_or_default();
        assert!(LEVELS.contains(&level), "level {level:?} in {v}");
        assert!(v["message"].is_string(), "no message in {v}");
        assert!(v["target"].is_string(), "no target in {v}");
    }
    // Fields are top-level keys, values as Display wrote them.
    let serving = lines
        .iter()
        .find(|v| v["message"] == "directory serving")
        .unwrap_or_else(|| panic!("no 'directory serving' line:\n{stderr}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["listen"], listen.to_string());
    assert_eq!(serving["target"], "lethe_nodes::directory::server");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_environment_chooses_json_too() {
    let root = temp_dir("json-env");
    let d = Directory::start(&root, &[], &[("LETHE_LOG_FORMAT", "json")]);
    let lines = json_lines(&d.stop());
    assert!(lines.iter().any(|v| v["message"] == "directory serving"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn text_format_lines_carry_an_rfc3339_timestamp_and_a_level() {
    let root = temp_dir("text");
    let stderr = Directory::start(&root, &[], &[]).stop();
    assert!(
        !stderr.contains('\x1b'),
        "ANSI colours in a file:\n{stderr}"
    );
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let ts = words.next().unwrap_or_default();
        let level = words.next().unwrap_or_default();
        assert!(is_rfc3339_utc(ts), "timestamp {ts:?} in {line:?}");
        assert!(LEVELS.contains(&level), "level {level:?} in {line:?}");
        lines += 1;
    }
    assert!(lines > 0, "no log lines");
    let serving = stderr
        .lines()
        .find(|l| l.contains("directory serving"))
        .unwrap_or_else(|| panic!("no 'directory serving' line:\n{stderr}"));
    // Target, then message, then the structured fields.
    assert!(
        serving
            .contains(" INFO lethe_nodes::directory::server: directory serving listen=127.0.0.1:"),
        "{serving}"
    );
    assert!(serving.contains("epoch_s=3600"), "{serving}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn rust_log_sets_the_level() {
    // Default (info): info lines, no debug.
    let root = temp_dir("level-default");
    let default = Directory::start(&root, &[], &[]).stop();
    assert!(default.contains("directory serving"), "{default}");
    assert!(!default.contains("logging configured"), "{default}");
    assert!(!default.contains(" DEBUG "), "{default}");

    // warn: the same run says nothing at info.
    let root_warn = temp_dir("level-warn");
    let warn = Directory::start(&root_warn, &[], &[("RUST_LOG", "warn")]).stop();
    assert!(!warn.contains(" INFO "), "{warn}");
    assert!(!warn.contains("directory serving"), "{warn}");

    // debug: debug lines appear, with the info ones.
    let root_debug = temp_dir("level-debug");
    let debug = Directory::start(&root_debug, &[], &[("RUST_LOG", "debug")]).stop();
    let configured = debug
        .lines()
        .find(|l| l.contains("logging configured"))
        .unwrap_or_else(|| panic!("no debug line:\n{debug}"));
    assert!(
        configured.contains(" DEBUG lethe_nodes::logging: "),
        "{configured}"
    );
    assert!(configured.contains("filter=debug"), "{configured}");
    assert!(debug.contains("directory serving"), "{debug}");

    // Per module: the directory's server quiet, the rest at info.
    let root_module = temp_dir("level-module");
    let module = Directory::start(
        &root_module,
        &[],
        &[("RUST_LOG", "info,lethe_nodes::directory=warn")],
    )
    .stop();
    assert!(!module.contains("directory serving"), "{module}");
    for root in [root, root_warn, root_debug, root_module] {
        let _ = std::fs::remove_dir_all(&root);
    }
}

fn lethe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(LETHE);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("LETHE_LOG_FORMAT");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn an_invalid_rust_log_is_a_clear_error() {
    let root = temp_dir("invalid");
    let out = lethe(
        &[
            "directory",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            root.to_str().unwrap(),
        ],
        &[("RUST_LOG", "lethe_nodes=loud")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid RUST_LOG"), "{stderr}");
    assert!(stderr.contains("lethe_nodes=loud"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Refused before anything ran: no directory was created.
    assert!(!root.exists());
}

#[test]
fn an_error_that_ends_the_process_is_one_error_line_with_its_exit_status() {
    let root = temp_dir("error");
    // No identity in an empty directory: `run` fails at start.
    std::fs::create_dir_all(&root).unwrap();
    let out = lethe(
        &[
            "--log-format",
            "json",
            "directory",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            root.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines = json_lines(&text(&out.stderr));
    let errors: Vec<_> = lines.iter().filter(|v| v["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert_eq!(errors[0]["target"], "lethe", "{lines:?}");
    let _ = std::fs::remove_dir_all(&root);
}
