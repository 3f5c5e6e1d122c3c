//! Issue 16, operators' tools: `lethe <role> info`, `check-config` and `systemd-unit`, and the
//! issuer's key share refused like every other key. Real processes, real files, real ports on
//! loopback; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// `lethe ARGS` (with extra environment) to completion, killed and failed if still running
/// after `WAIT_MAX`.
fn lethe_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(LETHE)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT_MAX;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lethe {args:?} still running after {}s", WAIT_MAX.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn lethe(args: &[&str]) -> Output {
    lethe_env(args, &[])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let out = lethe(args);
    assert!(
        out.status.success(),
        "lethe {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `key=value` lines (what `init` prints) as a map.
fn assignments(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `name: value` lines (what `info` prints); repeated names keep every value.
fn info_lines(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("not name: value: {line}"));
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

/// Every file under `dir` with its length, mode and modification time: equal before and after
/// a command that must change nothing.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, u32, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            out.insert(
                entry.path(),
                (
                    meta.len(),
                    meta.permissions().mode(),
                    meta.modified().unwrap(),
                ),
            );
        }
    }
    out
}

/// Small replay filters so a test node starts in a moment.
const SMALL_REPLAY: [&str; 4] = [
    "--replay-packets-per-s",
    "200",
    "--replay-key-lifetime-s",
    "600",
];

#[test]
fn info_on_a_fresh_mixnode_shows_what_init_printed_and_changes_nothing() {
    let dir = temp_dir("info-fresh");
    let init = ok(&["mixnode", "init", "--dir", path(&dir)]);
    let printed = assignments(&stdout(&init));
    let before = tree(&dir);

    let human = info_lines(&stdout(&ok(&["mixnode", "info", "--dir", path(&dir)])));
    assert_eq!(human["identity"], [printed["identity"].clone()]);
    let sphinx = &human["sphinx_key"];
    assert_eq!(sphinx.len(), 1, "{sphinx:?}");
    assert!(
        sphinx[0].contains(&format!("public_key={}", printed["sphinx_key"])),
        "{sphinx:?}"
    );
    assert_eq!(human["config"], [printed["config"].clone()]);
    assert_eq!(human["running_pid"], ["-"]);
    for field in [
        "version",
        "commit",
        "listen_address",
        "metrics_address",
        "simd_x25519",
        "simd_symmetric",
    ] {
        assert!(
            human.get(field).is_some_and(|v| !v[0].is_empty()),
            "{field}"
        );
    }
    assert_eq!(human["version"], [env!("CARGO_PKG_VERSION")]);

    let json: serde_json::Value =
        serde_json::from_slice(&ok(&["mixnode", "info", "--dir", path(&dir), "--json"]).stdout)
            .unwrap();
    assert_eq!(json["identity"], printed["identity"].as_str());
    assert_eq!(json["role"], "mixnode");
    assert_eq!(json["listen_address"], "0.0.0.0:1789");
    assert!(json["running_pid"].is_null());
    let key = &json["sphinx_key"][0];
    assert_eq!(key["public_key"], printed["sphinx_key"].as_str());
    assert_eq!(key["slot"], "primary");
    // Default rotation: the id is the network-wide epoch, expiring at the next boundary plus
    // the overlap, in the future.
    let now_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = key["rotation_id"].as_u64().unwrap();
    assert!(id == now_s / 86_400 || id == now_s / 86_400 + 1, "{key}");
    let left = key["expires_in_s"].as_i64().unwrap();
    assert!(left > 3_600 && left <= 86_400 + 3_600, "{key}");
    assert!(
        key["expires_at"].as_str().unwrap().ends_with(":00:00Z"),
        "{key}"
    );
    // Flags override the config, as for `run`.
    let flagged: serde_json::Value = serde_json::from_slice(
        &ok(&[
            "mixnode",
            "info",
            "--dir",
            path(&dir),
            "--json",
            "--listen",
            "127.0.0.1:1999",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(flagged["listen_address"], "127.0.0.1:1999");

    ok(&[
        "mixnode",
        "check-config",
        "--dir",
        path(&dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    // Neither wrote anything: no lock file, no rotation state, no snapshot.
    assert_eq!(before, tree(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_on_a_fresh_gateway_names_its_client_url() {
    let dir = temp_dir("info-gateway");
    let printed = assignments(&stdout(&ok(&["gateway", "init", "--dir", path(&dir)])));
    let json: serde_json::Value = serde_json::from_slice(
        &ok(&[
            "gateway",
            "info",
            "--dir",
            path(&dir),
            "--json",
            "--announce",
            "203.0.113.7:1790",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(json["identity"], printed["identity"].as_str());
    assert_eq!(json["client_url"], "ws://203.0.113.7:9000");
    assert_eq!(json["announce_address"], "203.0.113.7:1790");
    let keys = json["sphinx_key"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "a gateway loads its primary only");
    let primary = std::fs::read_to_string(dir.join("keys/x25519_sphinx_primary.pub")).unwrap();
    assert_eq!(keys[0]["public_key"], primary.trim());
    assert!(
        keys[0]["expires_at"].is_null(),
        "gateway keys do not rotate"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_and_check_config_while_the_node_runs() {
    let dir = temp_dir("running");
    init("mixnode", &dir);
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "mixnode",
        "run",
        "--dir",
        path(&dir),
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics,
        "--cores",
        "1",
    ];
    args.extend(SMALL_REPLAY);
    let node = Process::start(&args, &["listen", "metrics"]);
    let pid = node.child.id();

    let json: serde_json::Value =
        serde_json::from_slice(&ok(&["mixnode", "info", "--dir", path(&dir), "--json"]).stdout)
            .unwrap();
    assert_eq!(json["running_pid"].as_u64(), Some(u64::from(pid)));
    // The running node's key: the rotation state it wrote names it.
    let state = std::fs::read_to_string(dir.join("keys/sphinx_rotation.toml")).unwrap();
    let id = json["sphinx_key"][0]["rotation_id"].as_u64().unwrap();
    assert!(
        state.contains(&format!("primary_rotation_id = {id}\n")),
        "{state}"
    );
    assert!(json["sphinx_key"][0].get("note").is_none());

    // Same flags as `run`: its ports are held by this very node, which is fine.
    let mut check = vec!["mixnode", "check-config"];
    check.extend(&args[2..]);
    let out = lethe(&check);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("{listen} is held by this node (pid {pid})")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{metrics} is held by this node (pid {pid})")),
        "{text}"
    );
    assert!(text.contains(&format!("running: yes, pid {pid}")), "{text}");
    // Nothing it did disturbed the node: it still answers and stops cleanly.
    let _ = http_get(node.addr("metrics"), "/health");
    node.terminate();
    let after: serde_json::Value =
        serde_json::from_slice(&ok(&["mixnode", "info", "--dir", path(&dir), "--json"]).stdout)
            .unwrap();
    assert!(after["running_pid"].is_null());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check-config` on `dir`, expected to fail naming `check` with `words`.
fn check_fails(dir: &Path, extra: &[&str], check: &str, words: &[&str]) {
    let mut args = vec![
        "mixnode",
        "check-config",
        "--dir",
        path(dir),
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    if !extra.contains(&"--listen") {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let out = lethe(&args);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("FAIL  {check}")))
        .unwrap_or_else(|| panic!("no FAIL {check} in {text}"));
    for word in words {
        assert!(line.contains(word), "{word:?} not in {line}");
    }
    assert!(stderr(&out).contains("checks failed"), "{}", stderr(&out));
}

#[test]
fn check_config_fails_on_an_exposed_corrupt_or_mismatched_key_and_a_busy_port() {
    let dir = temp_dir("check");
    init("mixnode", &dir);
    let identity = dir.join("keys/ed25519_identity");

    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    check_fails(
        &dir,
        &[],
        "identity key",
        &[&format!("chmod 600 {}", path(&identity)), "0644"],
    );
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();

    let sphinx = dir.join("keys/x25519_sphinx_primary");
    let good = std::fs::read(&sphinx).unwrap();
    std::fs::write(&sphinx, "zz\n").unwrap();
    check_fails(
        &dir,
        &[],
        "sphinx key (primary",
        &[path(&sphinx), "not a hex digit"],
    );
    std::fs::write(&sphinx, &good).unwrap();

    // A .pub of another key: run would announce a key it cannot decrypt for.
    let primary_pub = dir.join("keys/x25519_sphinx_primary.pub");
    let right = std::fs::read(&primary_pub).unwrap();
    let other = std::fs::read(dir.join("keys/x25519_sphinx_secondary.pub")).unwrap();
    std::fs::write(&primary_pub, other).unwrap();
    check_fails(
        &dir,
        &[],
        "sphinx key (primary",
        &[
            "is not the public key of",
            String::from_utf8(right.clone()).unwrap().trim(),
        ],
    );
    std::fs::write(&primary_pub, right).unwrap();

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    check_fails(
        &dir,
        &["--listen", &busy_addr],
        "mixnet listen port",
        &[&busy_addr, "already served by another process"],
    );
    drop(busy);

    // A directory with an announce address nobody else can reach.
    check_fails(
        &dir,
        &[
            "--directory",
            "http://192.0.2.1:8080",
            "--announce",
            "127.0.0.1:1789",
        ],
        "announce address",
        &["loopback"],
    );
    // All put right: every check passes.
    ok(&[
        "mixnode",
        "check-config",
        "--dir",
        path(&dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

const ROLES: [&str; 4] = ["mixnode", "gateway", "directory", "issuer"];

fn shipped_unit(role: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist/systemd")
        .join(format!("lethe-{role}.service"));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn shipped_units_are_the_commands_output() {
    for role in ROLES {
        let printed = stdout(&ok(&[role, "systemd-unit"]));
        assert_eq!(
            printed,
            shipped_unit(role),
            "dist/systemd/lethe-{role}.service differs from `lethe {role} systemd-unit`: \
             regenerate it with `lethe {role} systemd-unit > dist/systemd/lethe-{role}.service`"
        );
    }
    let custom = stdout(&ok(&[
        "gateway",
        "systemd-unit",
        "--dir",
        "/srv/gw1",
        "--user",
        "gw1",
    ]));
    assert!(custom.contains("ExecStart=/usr/local/bin/lethe gateway run --dir /srv/gw1\n"));
    assert!(custom.contains("ReadWritePaths=/srv/gw1\n") && custom.contains("User=gw1\n"));
    let out = lethe(&["mixnode", "systemd-unit", "--dir", "relative/dir"]);
    assert!(!out.status.success());
}

/// The unit's ExecStart, with `run` turned into `check-config` on a scratch state: the command
/// line parses with our CLI and `run`'s checks pass on a freshly initialised node.
#[test]
fn unit_command_lines_pass_check_config() {
    let root = temp_dir("units");
    let keys = root.join("keys");
    keygen(&keys, 1, 1);
    for role in ROLES {
        let unit = shipped_unit(role);
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], "/usr/local/bin/lethe");
        assert_eq!(words[1], role);
        assert_eq!(words[2], "run");
        let state = format!("/var/lib/lethe/{role}");
        let dir = root.join(role);
        match role {
            "issuer" => {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(keys.join("issuer-1.key"), dir.join("issuer.key")).unwrap();
                std::fs::set_permissions(
                    dir.join("issuer.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            }
            _ => init(role, &dir),
        }
        let mut args: Vec<String> = vec![role.into(), "check-config".into()];
        args.extend(words[3..].iter().map(|w| w.replace(&state, path(&dir))));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The ports as an operator's env file would set them; here, any free one.
        let env = [
            ("LETHE_LISTEN", "127.0.0.1:0"),
            ("LETHE_METRICS_LISTEN", "127.0.0.1:0"),
            ("LETHE_CLIENT_LISTEN", "127.0.0.1:0"),
            ("LETHE_DIRECTORY_LISTEN", "127.0.0.1:0"),
            ("LETHE_ISSUER_LISTEN", "127.0.0.1:0"),
        ];
        let out = lethe_env(&args, &env);
        assert!(
            out.status.success(),
            "{role}: lethe {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stdout(&out).contains("checks passed"), "{}", stdout(&out));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn issuer_refuses_an_exposed_or_corrupt_key_share() {
    let keys = temp_dir("issuer-key");
    keygen(&keys, 1, 1);
    let key = keys.join("issuer-1.key");
    let run = |key: &Path| {
        lethe(&[
            "issuer",
            "run",
            "--key",
            path(key),
            "--listen",
            "127.0.0.1:0",
        ])
    };

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&key);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!("chmod 600 {}", path(&key))) && text.contains("0644"),
        "{text}"
    );
    // check-config and info say the same.
    let out = lethe(&[
        "issuer",
        "check-config",
        "--key",
        path(&key),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAIL  issuer key share"),
        "{}",
        stdout(&out)
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["issuer", "info", "--key", path(&key), "--json"]).stdout)
            .unwrap();
    assert_eq!(info["index"], 1);
    // The master key's fingerprint is that of keygen's verification.key.
    use sha2::Digest;
    let vk = std::fs::read(keys.join("verification.key")).unwrap();
    let expected: String = sha2::Sha256::digest(&vk)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(info["master_verification_key_sha256"], expected.as_str());

    let mut bytes = std::fs::read(&key).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&key, &bytes).unwrap();
    let out = run(&key);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(path(&key))
            && text.contains("not an issuer key share")
            && text.contains("backup"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&keys);
}

/// `systemd-analyze verify` on each shipped unit (with ExecStart pointing at this build, which
/// it checks is executable), where systemd's tools are installed; said and skipped elsewhere.
#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let present = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("systemd-analyze is not installed: units not verified by systemd");
        return;
    }
    let dir = temp_dir("verify");
    std::fs::create_dir_all(&dir).unwrap();
    for role in ROLES {
        let unit = shipped_unit(role).replace("/usr/local/bin/lethe", LETHE);
        let file = dir.join(format!("lethe-{role}.service"));
        std::fs::write(&file, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", path(&file)])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify lethe-{role}.service: {}",
            stderr(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn directory_info_shows_the_key_init_printed() {
    let dir = temp_dir("info-directory");
    let printed = assignments(&stdout(&ok(&["directory", "init", "--dir", path(&dir)])));
    let human = info_lines(&stdout(&ok(&["directory", "info", "--dir", path(&dir)])));
    assert_eq!(human["identity"], [printed["key"].clone()]);
    assert_eq!(human["listen_address"], ["127.0.0.1:8080"]);
    assert_eq!(human["running_pid"], ["-"]);
    let out = lethe(&["directory", "info", "--dir", path(&dir.join("missing"))]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("lethe directory init --dir"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
