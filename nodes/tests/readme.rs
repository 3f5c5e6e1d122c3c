//! The README's "Run a whole network" recipe, run as written: its first ```sh block, in order,
//! under `bash -eu` (every line must succeed), from a scratch directory where
//! `target/release/lethe` is this build. Then the testnet's lifecycle around it: `status`
//! after `down`, what `down` leaves, `up` again on the same directory, `client init` refused
//! without credentials, `down --purge`. Real processes on loopback; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The whole recipe (a testnet up, two credentials, a file through the mixnet) at most.
const RECIPE_WAIT: Duration = Duration::from_secs(300);

/// The first ```sh block of the README section whose heading starts with `heading`.
fn readme_block(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap_or_else(|| panic!("section {heading:?} has no sh block"));
    block.split("\n```").next().unwrap().to_string()
}

/// The `loadgen` binary of this build, beside `lethe` (the workspace's test build makes it for
/// loadgen's own tests; built here if missing).
fn loadgen() -> PathBuf {
    let path = Path::new(LETHE).with_file_name("loadgen");
    if !path.is_file() {
        // The profile `lethe` was built with: its directory is named for it (`dev`: `debug`).
        let profile = match path
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
        {
            Some("debug") | None => "dev",
            Some(profile) => profile,
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                "lethe-loadgen",
                "--bin",
                "loadgen",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building loadgen failed");
    }
    assert!(path.is_file(), "no loadgen at {}", path.display());
    path
}

/// Stops (and deletes) the testnet in `state` whatever happens to the test.
struct Cleanup {
    state: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(LETHE)
            .args(["testnet", "down", "--purge", "--dir"])
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `program args` in `cwd` with the testnet directory set, killing its process group
/// (and failing) after `wait`.
fn run_in(cwd: &Path, state: &Path, program: &str, args: &[&str], wait: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("LETHE_TESTNET_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Drained on threads, so a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut v);
        v
    });
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: SIGKILL to the process group this test created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
            panic!(
                "{program} {args:?} still running after {}s:\n{err}",
                wait.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Files left under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn readme_network_recipe_runs_as_written_and_the_testnet_lifecycle_holds() {
    let root = temp_dir("recipe");
    let cwd = root.join("work");
    let state = root.join("state");
    std::fs::create_dir_all(cwd.join("target/release")).unwrap();
    std::os::unix::fs::symlink(LETHE, cwd.join("target/release/lethe")).unwrap();
    std::os::unix::fs::symlink(loadgen(), cwd.join("target/release/loadgen")).unwrap();
    let _cleanup = Cleanup {
        state: state.clone(),
    };

    // The recipe, minus the build (this test's binary is the build).
    let block = readme_block("Run a whole network");
    assert!(block.contains("testnet up") && block.contains("testnet down"));
    let script: String = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("cargo "))
        .map(|l| format!("{l}\n"))
        .collect();
    let down_at = script.find("testnet down").unwrap();
    assert!(
        script[down_at..].lines().count() == 1,
        "`testnet down` must be the recipe's last command:\n{script}"
    );
    std::fs::write(root.join("recipe.sh"), &script).unwrap();
    let recipe = root.join("recipe.sh");
    let out = run_in(
        &cwd,
        &state,
        "bash",
        &["-eu", recipe.to_str().unwrap()],
        RECIPE_WAIT,
    );
    assert!(
        out.status.success(),
        "the README recipe failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("hello, Bob"),
        "{}",
        text(&out.stdout)
    );
    // loadgen ran against the testnet and judged the run a pass (it exits 1 otherwise, and
    // `bash -e` would have stopped the recipe).
    let both = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(both.contains("PASS: undelivered"), "{both}");
    let lethe = cwd.join("target/release/lethe");
    let lethe = lethe.to_str().unwrap();
    let quick = Duration::from_secs(60);

    // After `down`: "not running", exit 3; the logs stay, keys, databases and snapshots go.
    let status = run_in(&cwd, &state, lethe, &["testnet", "status"], quick);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("not running"));
    let left = files_under(&state);
    assert!(
        left.iter().any(|f| f == "gateway1/stderr.log"),
        "logs deleted: {left:?}"
    );
    assert!(
        left.iter().all(|f| f.ends_with("stdout.log")
            || f.ends_with("stderr.log")
            || f == ".lethe-testnet"),
        "down left more than logs: {left:?}"
    );
    // Twice is fine.
    let again = run_in(&cwd, &state, lethe, &["testnet", "down"], quick);
    assert!(again.status.success(), "{}", text(&again.stderr));

    // `up` again on the same directory starts afresh.
    let up = run_in(
        &cwd,
        &state,
        lethe,
        &[
            "testnet",
            "up",
            "--mixnodes-per-layer",
            "1",
            "--provider",
            "false",
        ],
        RECIPE_WAIT,
    );
    assert!(up.status.success(), "up after down: {}", text(&up.stderr));
    let status = run_in(&cwd, &state, lethe, &["testnet", "status"], quick);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stdout));

    // A client without credentials is refused at once, told the flags with this testnet's
    // values, and nothing is written.
    let env = text(&run_in(&cwd, &state, lethe, &["testnet", "env"], quick).stdout);
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {env}"))
            .trim_matches('\'')
            .to_string()
    };
    let (url, key, issuers) = (
        value("TESTNET_DIRECTORY"),
        value("TESTNET_DIRECTORY_KEY"),
        value("TESTNET_ISSUERS"),
    );
    let carol = cwd.join("carol");
    let init = run_in(
        &cwd,
        &state,
        lethe,
        &[
            "client",
            "init",
            "--dir",
            carol.to_str().unwrap(),
            "--directory",
            &url,
            "--directory-key",
            &key,
        ],
        quick,
    );
    assert!(!init.status.success(), "init without credentials succeeded");
    let refusal = text(&init.stderr);
    assert!(
        refusal.contains("requires bandwidth credentials")
            && refusal.contains(&format!("--issuers {issuers}"))
            && refusal.contains("--threshold 2")
            && refusal.contains("--verification-key"),
        "{refusal}"
    );
    assert!(!carol.join("client.toml").exists());

    // `--purge` leaves nothing.
    let purge = run_in(&cwd, &state, lethe, &["testnet", "down", "--purge"], quick);
    assert!(purge.status.success(), "{}", text(&purge.stderr));
    assert!(!state.exists());
    let status = run_in(&cwd, &state, lethe, &["testnet", "status"], quick);
    assert_eq!(status.status.code(), Some(3));
    let _ = std::fs::remove_dir_all(&root);
}
