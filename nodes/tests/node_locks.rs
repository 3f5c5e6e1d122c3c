//! One process per node directory, one node per piece of state, and private file modes, with
//! real `lethe` processes on loopback: a second mixnode, gateway or directory on a directory
//! in use exits at once, naming the directory and the holder's pid; a gateway configured onto
//! another's mailbox is refused; client commands refuse a client directory in use; a killed
//! node leaves no stale lock. Every SQLite file a real run creates (and its `-wal`/`-shm`) is
//! 0600 even under umask 0, and a node directory left 0755 is narrowed to 0700 with a warning.
//! No step depends on timing: a refused process is waited for (bounded) until it exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// `lethe ARGS` with umask 0, so any file not created with an explicit mode would come out
/// world-readable.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(LETHE);
    command.args(args).stdin(Stdio::null());
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    command
}

/// Starts a node that keeps running; stderr goes to `stderr_path`; returns once it printed
/// every key in `keys`.
fn start(args: &[&str], keys: &[&str], stderr_path: &Path) -> Process {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = HashMap::new();
    while !keys.iter().all(|k| lines.contains_key(*k)) {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!(
                "lethe {args:?} exited before printing {keys:?}: {}",
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            );
        }
        if let Some((k, v)) = line.trim().split_once('=') {
            lines.insert(k.to_string(), v.to_string());
        }
    }
    let drain = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    });
    Process {
        child,
        lines,
        drain: Some(drain),
    }
}

/// Runs a command that must fail at once; waits (bounded) for its exit and returns its
/// output. A process still running at the bound did not refuse: it is killed and the test
/// fails.
fn must_refuse(args: &[&str]) -> Output {
    let mut child = command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lethe {args:?} kept running: it should have refused the directory");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "lethe {args:?} succeeded");
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn lethe_ok(args: &[&str]) {
    let output = command(args).output().unwrap();
    assert!(
        output.status.success(),
        "lethe {args:?}: {}",
        stderr(&output)
    );
}

/// The refusal names the directory in use and the pid holding it.
fn assert_names_holder(refusal: &Output, what: &Path, pid: u32) {
    let text = stderr(refusal);
    assert!(
        text.contains(&what.display().to_string()),
        "refusal does not name {}: {text}",
        what.display()
    );
    assert!(
        text.contains(&format!("pid {pid}")),
        "refusal does not name pid {pid}: {text}"
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn second_mixnode_on_a_directory_is_refused_and_a_killed_one_leaves_no_lock() {
    let root = temp_dir("mixnode");
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("mix");
    init("mixnode", &dir);
    // An operator's `chmod 755`: the node narrows it back at start and says so.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = vec!["mixnode", "run", "--dir", path_str(&dir)];
    args.extend(SMALL_NODE);
    let first = start(&args, &["listen", "metrics"], &root.join("first.stderr"));
    assert_eq!(mode(&dir), 0o700);
    let warning = std::fs::read_to_string(root.join("first.stderr")).unwrap();
    assert!(
        warning.contains("was mode 0755") && warning.contains("changed it to 0700"),
        "{warning}"
    );
    let refused = must_refuse(&args);
    assert_names_holder(&refused, &dir, first.child.id());
    assert!(stderr(&refused).contains("one process per mixnode directory"));

    // SIGKILL: the kernel drops the lock with the process; the next start takes it.
    first.kill();
    let again = start(&args, &["listen", "metrics"], &root.join("again.stderr"));
    let holder = std::fs::read_to_string(dir.join("lock")).unwrap();
    assert_eq!(holder.trim(), again.child.id().to_string());
    again.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn gateway_directory_and_state_are_one_process_each_and_private() {
    let root = temp_dir("gateway");
    std::fs::create_dir_all(&root).unwrap();
    keygen(&root.join("keys"), 1, 1);
    let vk = root.join("keys/verification.key");
    let dir = root.join("gw");
    init("gateway", &dir);
    let gateway_args = |dir: &Path| -> Vec<String> {
        let mut args: Vec<String> = ["gateway", "run", "--dir", path_str(dir)]
            .iter()
            .chain(SMALL_NODE.iter())
            .map(|s| s.to_string())
            .collect();
        args.extend(
            [
                "--client-listen",
                "127.0.0.1:0",
                "--shutdown-grace-ms",
                "500",
                "--verification-key",
                path_str(&vk),
            ]
            .map(String::from),
        );
        args
    };
    let args = gateway_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keys = ["listen", "client_url", "metrics"];
    let first = start(&args, &keys, &root.join("gw.stderr"));

    let refused = must_refuse(&args);
    assert_names_holder(&refused, &dir, first.child.id());
    assert!(stderr(&refused).contains("one process per gateway directory"));

    // A second gateway directory whose config points at the first one's mailbox.
    let other = root.join("gw2");
    init("gateway", &other);
    let config = other.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let shared_db = dir.join("gateway.sqlite");
    let text = text.replace(
        "database = \"gateway.sqlite\"",
        &format!("database = \"{}\"", shared_db.display()),
    );
    assert!(text.contains(&shared_db.display().to_string()));
    std::fs::write(&config, text).unwrap();
    let other_args = gateway_args(&other);
    let other_args: Vec<&str> = other_args.iter().map(String::as_str).collect();
    let refused = must_refuse(&other_args);
    assert_names_holder(&refused, &shared_db, first.child.id());
    assert!(
        stderr(&refused).contains("gateway.database"),
        "{}",
        stderr(&refused)
    );

    // Every database the gateway made, and the files SQLite keeps beside them, while it runs.
    for name in [
        "gateway.sqlite",
        "gateway.sqlite-wal",
        "gateway.sqlite-shm",
        "credentials.sqlite",
        "credentials.sqlite-wal",
        "credentials.sqlite-shm",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&dir), 0o700);
    first.terminate();

    // The directory service: same rule, same modes.
    let directory = root.join("directory");
    lethe_ok(&["directory", "init", "--dir", path_str(&directory)]);
    let args = [
        "directory",
        "run",
        "--dir",
        path_str(&directory),
        "--listen",
        "127.0.0.1:0",
    ];
    let running = start(&args, &["listen", "key"], &root.join("directory.stderr"));
    let refused = must_refuse(&args);
    assert_names_holder(&refused, &directory, running.child.id());
    for name in [
        "directory.sqlite",
        "directory.sqlite-wal",
        "directory.sqlite-shm",
    ] {
        assert_eq!(mode(&directory.join(name)), 0o600, "{name}");
    }
    running.terminate();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn client_commands_refuse_a_client_directory_in_use() {
    let dir: PathBuf = temp_dir("client");
    std::fs::create_dir_all(&dir).unwrap();
    // This test process holds the lock, as a running `lethe client receive` would: the
    // commands below must stop before they read anything.
    let held = lethe_nodes::lock::NodeLocks::claim(&dir, "client").unwrap();
    let address = format!(
        "{}.{}@{}",
        "11".repeat(32),
        "22".repeat(32),
        "33".repeat(32)
    );
    let d = path_str(&dir);
    for args in [
        vec![
            "client",
            "send",
            "--dir",
            d,
            "--to",
            &address,
            "--message",
            "hi",
        ],
        vec!["client", "receive", "--dir", d, "--out", d],
        vec![
            "client",
            "socks5",
            "--dir",
            d,
            "--provider",
            &address,
            "--listen",
            "127.0.0.1:0",
        ],
        vec!["provider", "run", "--dir", d, "--allow", "127.0.0.1:*"],
    ] {
        let refused = must_refuse(&args);
        assert_names_holder(&refused, &dir, std::process::id());
        assert!(
            stderr(&refused).contains("one gateway session"),
            "{}",
            stderr(&refused)
        );
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
