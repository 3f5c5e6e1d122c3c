//! `lethe <role> check-config`: would `run`, with these flags, start, and would it keep
//! working? One line per check, `ok` or `FAIL` with what to do; `Err` (exit status 1) if any
//! failed. Reads only; works while the node runs (its own ports count as fine, named).
//!
//! The checks are `run`'s own functions (config parsing and validation, key loading, the
//! announce rules, the engine's memlock and port probes), so `check-config` passing means
//! `run` gets past them; it adds what `run` finds out only later (the `.pub` files, state
//! dirs writable, disk space for replay snapshots).

use std::ffi::CString;
use std::fmt::Display;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lethe_engine::replay::RotationId;
use lethe_engine::runtime::{check_port_free, memlock};
use lethe_engine::snapshot_path;
use x25519_dalek::{PublicKey, StaticSecret};

use super::{gateway_live_keys, mixnode_live_keys, running_pid, LiveKey};
use crate::credential_files::{read_issuer_key, read_verification_key};
use crate::directory::server::{DirectoryRunArgs, IDENTITY_FILE};
use crate::gateway::config::Config as GatewayConfig;
use crate::gateway::registration;
use crate::issuer::IssuerRunArgs;
use crate::keyfile;
use crate::limits::{GATEWAY_REPLAY_FILTERS_MAX, MIXNODE_REPLAY_FILTERS_MAX};
use crate::mixnode::config::Config as MixnodeConfig;
use crate::node::replay::ReplaySection;
use crate::node::rotation::{now_ms, Schedule};
use crate::node::{keys, resolve, CONFIG_FILE};

/// The results so far, printed as they come.
#[derive(Default)]
struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    fn ok(&mut self, what: &str, detail: impl Display) {
        println!("ok    {what}: {detail}");
        self.passed += 1;
    }

    fn fail(&mut self, what: &str, problem: impl Display) {
        println!("FAIL  {what}: {problem}");
        self.failed += 1;
    }

    /// Records `result`; its value, if it passed.
    fn check<T>(&mut self, what: &str, result: Result<(T, String), String>) -> Option<T> {
        match result {
            Ok((value, detail)) => {
                self.ok(what, detail);
                Some(value)
            }
            Err(problem) => {
                self.fail(what, problem);
                None
            }
        }
    }

    fn finish(self) -> Result<(), String> {
        if self.failed == 0 {
            println!("all {} checks passed", self.passed);
            Ok(())
        } else {
            Err(format!(
                "{} of {} checks failed (see FAIL above)",
                self.failed,
                self.failed + self.passed
            ))
        }
    }
}

/// The node directory exists (else nothing else can be checked).
fn node_dir(checks: &mut Checks, dir: &Path, role: &str) -> bool {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o7777;
            let note = if mode & 0o077 != 0 {
                format!(" (mode {mode:04o}: `run` narrows it to 0700)")
            } else {
                String::new()
            };
            checks.ok("node directory", format!("{}{note}", dir.display()));
            true
        }
        Ok(_) => {
            checks.fail(
                "node directory",
                format!("{} is not a directory", dir.display()),
            );
            false
        }
        Err(e) => {
            checks.fail(
                "node directory",
                format!(
                    "{}: {e}: create it with `lethe {role} init --dir {}`",
                    dir.display(),
                    keyfile::shell_quote(&dir.to_string_lossy())
                ),
            );
            false
        }
    }
}

fn running(checks: &mut Checks, dir: &Path) -> Option<u32> {
    let pid = running_pid(dir);
    match pid {
        Some(pid) => checks.ok(
            "running",
            format!("yes, pid {pid} (holds the directory lock)"),
        ),
        None => checks.ok("running", "no"),
    }
    pid
}

#[derive(Clone, Copy)]
enum KeyKind {
    Ed25519,
    X25519,
}

/// A private key file as `run` loads it (mode, parse), and its `.pub` matching it.
fn key_pair(checks: &mut Checks, what: &str, private: &Path, kind: KeyKind) {
    let result = (|| {
        let secret = keyfile::read_private(private)?;
        let public_path = private.with_extension("pub");
        let public = keyfile::read_public(&public_path)?;
        let derived = match kind {
            KeyKind::Ed25519 => keyfile::ed25519_public(&secret),
            KeyKind::X25519 => PublicKey::from(&StaticSecret::from(*secret)).to_bytes(),
        };
        if derived != public {
            return Err(format!(
                "{} is not the public key of {}: restore both files from the same backup \
                 (the private key is the one that counts: `{}` would be {})",
                public_path.display(),
                private.display(),
                public_path.display(),
                keyfile::hex(&derived)
            ));
        }
        Ok((
            (),
            format!("{} (0600, parses, matches .pub)", private.display()),
        ))
    })();
    checks.check(what, result);
}

fn sphinx_keys(checks: &mut Checks, keys: &[LiveKey]) {
    for key in keys {
        let what = format!("sphinx key ({}, rotation {})", key.slot, key.rotation_id);
        key_pair(checks, &what, &key.private, KeyKind::X25519);
    }
}

/// The nearest existing ancestor of `path` (itself if it exists).
fn existing(path: &Path) -> PathBuf {
    let mut at = path;
    // Bounded by the path's depth.
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return PathBuf::from("."),
        }
    }
    at.to_path_buf()
}

/// `run` writes into `path` (created if missing): this user may write there.
fn writable(checks: &mut Checks, what: &str, path: &Path) {
    let at = existing(path);
    let Ok(c_path) = CString::new(at.as_os_str().as_bytes()) else {
        checks.fail(what, format!("{}: path holds a NUL byte", path.display()));
        return;
    };
    // SAFETY: access reads the NUL-terminated path and touches no other memory.
    let rc = unsafe { libc::access(c_path.as_ptr(), libc::W_OK) };
    if rc == 0 {
        checks.ok(what, format!("{} is writable", path.display()));
    } else {
        checks.fail(
            what,
            format!(
                "{} is not writable by this user ({}): give the node's user the directory \
                 (`chown -R USER {}`), or, under systemd, list it in ReadWritePaths=",
                at.display(),
                std::io::Error::last_os_error(),
                keyfile::shell_quote(&at.to_string_lossy())
            ),
        );
    }
}

/// `addr` can be bound as `run` binds it, or is bound by this very node (running as `pid`).
fn port(checks: &mut Checks, what: &str, addr: SocketAddr, pid: Option<u32>) {
    match (check_port_free(addr), pid) {
        (Ok(()), _) if addr.port() == 0 => checks.ok(what, format!("{addr}: any free port")),
        (Ok(()), _) => checks.ok(what, format!("{addr} is free")),
        (Err(_), Some(pid)) if super::probe::holds_port(pid, addr.port()) == Some(true) => {
            checks.ok(what, format!("{addr} is held by this node (pid {pid})"))
        }
        (Err(_), Some(pid)) if super::probe::holds_port(pid, addr.port()).is_none() => checks.ok(
            what,
            format!(
                "{addr} is in use, presumably by this node (pid {pid}, whose sockets this user \
                 cannot list)"
            ),
        ),
        (Err(problem), _) => checks.fail(what, problem),
    }
}

/// The engine's own check: locked memory for the io_uring rings and registered I/O memory.
fn memlock_limit(checks: &mut Checks, cores: u32, io_memory_bytes: usize) {
    let required = memlock::required_bytes(cores, io_memory_bytes);
    let result = memlock::check(cores, io_memory_bytes).map(|()| {
        let limit = memlock::limit_bytes()
            .map_or_else(|| "unlimited".to_string(), |b| format!("{} KiB", b / 1024));
        (
            (),
            format!(
                "RLIMIT_MEMLOCK {limit} covers {} KiB for {cores} core(s)",
                required / 1024
            ),
        )
    });
    checks.check("locked memory", result);
}

/// Whether the host of `url` (`http://host:port/...`) is loopback.
fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// With a directory, the announced address must be reachable by the others: `run`'s rule
/// (`check` refuses an unspecified one), and not loopback unless the directory is too (a
/// one-host network).
fn announce(
    checks: &mut Checks,
    directory: Option<&str>,
    announced: SocketAddr,
    check: Result<(), String>,
) {
    let Some(url) = directory else {
        checks.ok(
            "announce address",
            "no directory configured: the node runs unregistered",
        );
        return;
    };
    let result = check.and_then(|()| {
        if announced.ip().is_loopback() && !url_is_loopback(url) {
            return Err(format!(
                "{announced} would be announced to {url}, but other hosts cannot reach a \
                 loopback address: pass --announce PUBLIC_IP:{} (or LETHE_ANNOUNCE)",
                announced.port()
            ));
        }
        Ok(((), format!("{announced} announced to {url}")))
    });
    checks.check("announce address", result);
}

/// Free bytes for this user on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Result<u64, String> {
    let at = existing(path);
    let c_path = CString::new(at.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path holds a NUL byte", path.display()))?;
    // SAFETY: statvfs writes one struct we own and reads the NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(format!(
            "{}: statvfs: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// Room in the replay data dir for the snapshots: one filter per live rotation, plus the
/// temporary copy of an atomic rewrite. A snapshot that cannot be written is lost at the next
/// restart (and with it the replay protection of its key's remaining life).
fn replay_space(
    checks: &mut Checks,
    data_dir: &Path,
    replay: &ReplaySection,
    ids: &[RotationId],
    filters_max: u64,
) {
    let result = (|| {
        let params = replay.params()?;
        let files = filters_max + 1;
        let need = params.bytes().saturating_mul(files);
        let held: u64 = ids
            .iter()
            .filter_map(|id| std::fs::metadata(snapshot_path(data_dir, *id)).ok())
            .map(|m| m.len())
            .sum();
        let free = free_bytes(data_dir)?;
        let mib = |b: u64| b / (1 << 20);
        if free.saturating_add(held) < need {
            return Err(format!(
                "{}: {} MiB free (+ {} MiB in current snapshots), snapshots need {} MiB \
                 ({files} filters of {} MiB): free space, move replay.data_dir, \
                 or lower replay.capacity_packets",
                data_dir.display(),
                mib(free),
                mib(held),
                mib(need),
                mib(params.bytes())
            ));
        }
        Ok((
            (),
            format!(
                "{}: {} MiB free, snapshots need {} MiB",
                data_dir.display(),
                mib(free.saturating_add(held)),
                mib(need)
            ),
        ))
    })();
    checks.check("replay snapshot space", result);
}

/// `lethe mixnode check-config`, with `run`'s flags.
pub fn mixnode(dir: &Path, overrides: &crate::mixnode::RunOverrides) -> Result<(), String> {
    let mut checks = Checks::default();
    if !node_dir(&mut checks, dir, "mixnode") {
        return checks.finish();
    }
    let loaded = MixnodeConfig::load(dir).map(|mut config| {
        overrides.apply(&mut config);
        let path = dir.join(CONFIG_FILE).display().to_string();
        (config, format!("{path} parses"))
    });
    let Some(config) = checks.check("config", loaded) else {
        return checks.finish();
    };
    let pid = running(&mut checks, dir);
    let runtime = checks.check(
        "config values",
        crate::mixnode::runtime_config(&config)
            .and_then(|r| Schedule::from_keys(&config.keys).map(|_| r))
            .map(|r| (r, "valid (engine, ingress, egress, rotation)".to_string())),
    );
    key_pair(
        &mut checks,
        "identity key",
        &resolve(dir, &config.keys.identity),
        KeyKind::Ed25519,
    );
    let live = match mixnode_live_keys(dir, &config.keys, now_ms()) {
        Ok(live) => live,
        Err(e) => {
            checks.fail("sphinx keys", e);
            Vec::new()
        }
    };
    sphinx_keys(&mut checks, &live);
    let data_dir = resolve(dir, &config.replay.data_dir);
    writable(&mut checks, "node directory writable", dir);
    writable(&mut checks, "replay data dir writable", &data_dir);
    writable(
        &mut checks,
        "keys directory writable (rotation)",
        &keys::keys_dir(dir, &config.keys),
    );
    let m = &config.mixnode;
    port(&mut checks, "mixnet listen port", m.listen_address, pid);
    port(&mut checks, "metrics port", m.metrics_address, pid);
    if let Some(runtime) = &runtime {
        memlock_limit(&mut checks, runtime.cores, runtime.io_memory_bytes);
    }
    let args = &overrides.announce;
    let directory = args.directory.first().map(String::as_str);
    let rule = args
        .directory
        .iter()
        .try_for_each(|url| crate::mixnode::check_announce(url, args, m.listen_address));
    announce(
        &mut checks,
        directory,
        args.announce.unwrap_or(m.listen_address),
        rule,
    );
    let ids: Vec<RotationId> = live.iter().map(|k| k.rotation_id).collect();
    replay_space(
        &mut checks,
        &data_dir,
        &config.replay,
        &ids,
        MIXNODE_REPLAY_FILTERS_MAX,
    );
    checks.finish()
}

/// `lethe gateway check-config`, with `run`'s flags.
pub fn gateway(dir: &Path, overrides: &crate::gateway::RunOverrides) -> Result<(), String> {
    let mut checks = Checks::default();
    if !node_dir(&mut checks, dir, "gateway") {
        return checks.finish();
    }
    let loaded = GatewayConfig::load(dir).map(|mut config| {
        overrides.apply(&mut config);
        let path = dir.join(CONFIG_FILE).display().to_string();
        (config, format!("{path} parses"))
    });
    let Some(config) = checks.check("config", loaded) else {
        return checks.finish();
    };
    let pid = running(&mut checks, dir);
    let runtime = checks.check(
        "config values",
        crate::gateway::runtime_config(&config).map(|r| (r, "valid (engine, egress)".to_string())),
    );
    let directory = checks
        .check(
            "directory flags",
            overrides.authority.pinned().map(|d| {
                let detail = match &d {
                    Some(a) if a.urls().len() == 1 && a.set().len() == 1 => {
                        format!("{}, key pinned", a.urls()[0])
                    }
                    Some(a) => format!(
                        "{}, {} keys pinned ({} signatures needed)",
                        a.urls().join(", "),
                        a.set().len(),
                        a.set().threshold()
                    ),
                    None => "none".to_string(),
                };
                (d, detail)
            }),
        )
        .flatten();
    key_pair(
        &mut checks,
        "identity key",
        &resolve(dir, &config.keys.identity),
        KeyKind::Ed25519,
    );
    let live = gateway_live_keys(dir, &config.keys);
    sphinx_keys(&mut checks, &live);
    let g = &config.gateway;
    if let Some(vk) = &g.verification_key {
        let path = resolve(dir, vk);
        let result = lethe_crypto::coconut::bandwidth::bandwidth_parameters()
            .map_err(anyhow::Error::from)
            .and_then(|params| read_verification_key(&path, &params))
            .map(|_| ((), format!("{} parses (admission on)", path.display())))
            .map_err(|e| format!("{e:#}: copy verification.key from `lethe keygen`'s output"));
        checks.check("verification key", result);
    }
    let data_dir = resolve(dir, &config.replay.data_dir);
    writable(&mut checks, "node directory writable", dir);
    writable(&mut checks, "replay data dir writable", &data_dir);
    let database = resolve(dir, &g.database);
    writable(
        &mut checks,
        "mailbox directory writable",
        database.parent().unwrap_or(dir),
    );
    port(&mut checks, "mixnet listen port", g.listen_address, pid);
    port(&mut checks, "client port", g.client_address, pid);
    port(&mut checks, "metrics port", g.metrics_address, pid);
    if let Some(runtime) = &runtime {
        memlock_limit(&mut checks, runtime.cores, runtime.io_memory_bytes);
    }
    let announced = g
        .announce_address
        .unwrap_or_else(|| registration::dialable(g.listen_address));
    let rule = registration::check_announce(
        g.listen_address,
        g.announce_address,
        g.announce_client_url.as_deref(),
    );
    announce(
        &mut checks,
        directory
            .as_ref()
            .and_then(|a| a.urls().first())
            .map(String::as_str),
        announced,
        rule,
    );
    let ids: Vec<RotationId> = live.iter().map(|k| k.rotation_id).collect();
    replay_space(
        &mut checks,
        &data_dir,
        &config.replay,
        &ids,
        GATEWAY_REPLAY_FILTERS_MAX,
    );
    checks.finish()
}

/// `lethe directory check-config`, with `run`'s flags.
pub fn directory(args: &DirectoryRunArgs) -> Result<(), String> {
    let mut checks = Checks::default();
    if !node_dir(&mut checks, &args.dir, "directory") {
        return checks.finish();
    }
    let pid = running(&mut checks, &args.dir);
    key_pair(
        &mut checks,
        "identity key",
        &args.dir.join(IDENTITY_FILE),
        KeyKind::Ed25519,
    );
    writable(&mut checks, "directory data dir writable", &args.dir);
    port(&mut checks, "listen port", args.listen, pid);
    checks.finish()
}

/// `lethe issuer check-config`, with `run`'s flags. An issuer keeps no lock, so a busy port
/// cannot be told from its own: a running issuer fails the port check.
pub fn issuer(args: &IssuerRunArgs) -> Result<(), String> {
    let mut checks = Checks::default();
    let result = lethe_crypto::coconut::bandwidth::bandwidth_parameters()
        .map_err(anyhow::Error::from)
        .and_then(|params| read_issuer_key(&args.key, &params))
        .map(|key| {
            let detail = format!(
                "{} (0600, parses, share {} matches its verification key)",
                args.key.display(),
                key.index
            );
            ((), detail)
        })
        .map_err(|e| format!("{e:#}"));
    checks.check("issuer key share", result);
    port(&mut checks, "listen port", args.listen, None);
    checks.finish()
}
