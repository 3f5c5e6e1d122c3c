//! One process per node directory, one node per piece of state.
//!
//! Two `lethe` processes on one node directory would both append to the same mailbox, rotate
//! the same keys and overwrite each other's replay snapshots; two node directories whose
//! configs point at the same database or data dir would do the same less visibly. Each role's
//! start therefore takes an exclusive advisory lock (`flock(LOCK_EX | LOCK_NB)`) on a `lock`
//! file in its directory, and one in or beside every piece of state it writes, wherever its
//! config puts it (so a node pointed at another's state finds it taken), and holds them for
//! the life of the process: the kernel drops them when the process ends,
//! however it ends (SIGKILL included), so there is never a stale lock to clean up. The holder
//! writes its pid into the lock file so the refusal can name it; the pid is information only,
//! the lock is what counts.
//!
//! Node directories hold private keys and state: a directory open to group or others is
//! narrowed to `0700` at start, with a warning.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::keyfile;

/// The lock file's name inside a node directory (or a data dir configured outside it).
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock, held until this value is dropped (keep it for the process's life).
#[derive(Debug)]
pub struct Lock {
    /// Closing the file releases the lock; it is only kept open.
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

enum Claim {
    Held(Lock),
    /// Another process holds it; its pid if it wrote one.
    Busy(Option<u32>),
}

fn claim(path: &Path) -> Result<Claim, String> {
    // Never truncated on open: a holder's pid must stay readable by the process it refuses.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Ok(Claim::Busy(pid));
        }
        Err(TryLockError::Error(e)) => {
            return Err(format!("{}: cannot lock: {e}", path.display()));
        }
    }
    // Ours now: replace a previous holder's pid (it is gone, or we would not hold the lock).
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Claim::Held(Lock {
        _file: file,
        path: path.to_path_buf(),
    }))
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_string(),
    }
}

/// Narrows `dir` to `0700` if group or others have any access, saying so on stderr.
pub fn restrict_dir(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
        format!(
            "{} is mode {mode:04o} (open to other users) and could not be narrowed to 0700: \
             {e}; run `chmod 700 {}` as its owner",
            dir.display(),
            dir.display()
        )
    })?;
    tracing::warn!(
        dir = %dir.display(),
        "directory was mode {mode:04o}, open to other users; changed it to 0700 (it holds \
         private keys and state)"
    );
    Ok(())
}

/// The locks of one running node: its directory's, then one per piece of state it writes.
/// Dropping it releases them all; keep it for the life of the process.
#[derive(Debug)]
pub struct NodeLocks {
    held: Vec<Lock>,
    /// Real paths of the held lock files, so one process never takes the same lock twice
    /// (it would refuse itself: flock locks belong to the open file, not the process).
    real: Vec<PathBuf>,
}

impl NodeLocks {
    /// Claims the node directory `dir` of `role` (`mixnode`, `gateway`, `directory`,
    /// `client`): narrows it to `0700` if it is wider, then locks `dir/lock`. Fails at once,
    /// naming the holder's pid, if another process runs on this directory.
    pub fn claim(dir: &Path, role: &str) -> Result<NodeLocks, String> {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(format!(
                    "{} does not exist: create it with `lethe {role} init --dir {}`",
                    dir.display(),
                    dir.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
        restrict_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        match claim(&path)? {
            Claim::Held(lock) => Ok(NodeLocks {
                real: vec![real_path(&path)],
                held: vec![lock],
            }),
            Claim::Busy(pid) => {
                // A client identity has one gateway session at a time (a new one replaces
                // the old), so two client processes on one directory would keep displacing
                // each other.
                let why = if role == "client" {
                    " (one client identity has one gateway session at a time: a `send` next \
                     to a `receive` would keep taking the session from it: run them one after \
                     the other, or give each its own client directory)"
                } else {
                    ""
                };
                Err(format!(
                    "{} is in use by another lethe process ({}, holding {}): one process per \
                     {role} directory{why}. Stop that process first, or give this one its own \
                     directory",
                    dir.display(),
                    holder(pid),
                    path.display()
                ))
            }
        }
    }

    /// The lock files held.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(Lock::path)
    }

    /// Locks the state directory `state` (config key `what`, e.g. `replay.data_dir`) by a
    /// `lock` file in it (creating it `0700` if missing). Every node locks its state, inside
    /// its directory or not, so that another node configured to use the same state finds it
    /// taken.
    pub fn state_dir(&mut self, state: &Path, what: &str) -> Result<(), String> {
        keyfile::create_private_dir(state)?;
        self.state(state, &state.join(LOCK_FILE), what)
    }

    /// Locks the state file `state` (config key `what`, e.g. `gateway.database`) by
    /// `<state>.lock` beside it: never the file itself, as closing any other descriptor of an
    /// SQLite database drops SQLite's own POSIX locks on it.
    pub fn state_file(&mut self, state: &Path, what: &str) -> Result<(), String> {
        let mut name = state.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.state(state, &state.with_file_name(name), what)
    }

    fn state(&mut self, state: &Path, lock: &Path, what: &str) -> Result<(), String> {
        let real = real_path(lock);
        if self.real.contains(&real) {
            return Ok(()); // e.g. `data_dir = "."`: the directory's own lock covers it
        }
        match claim(lock)? {
            Claim::Held(held) => {
                self.held.push(held);
                self.real.push(real);
                Ok(())
            }
            Claim::Busy(pid) => Err(format!(
                "{} ({what}) is in use by another lethe process ({}, holding {}): two nodes \
                 cannot share state. Give this node its own {what} in its config.toml, or stop \
                 that process",
                state.display(),
                holder(pid),
                lock.display()
            )),
        }
    }
}

/// `path` made absolute with symlinks resolved as far as it exists (the rest appended), so
/// `data`, `./data` and a symlink to it compare equal.
fn real_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => {
                rest.push(name);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lethe-lock-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn second_claim_is_refused_with_the_pid_then_free_after_drop() {
        let dir = scratch("claim");
        let locks = NodeLocks::claim(&dir, "mixnode").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(LOCK_FILE)).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file: a second open in this process conflicts like
        // another process would.
        let err = NodeLocks::claim(&dir, "mixnode").unwrap_err();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&dir.display().to_string()), "{err}");
        drop(locks);
        NodeLocks::claim(&dir, "mixnode").unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn wide_dir_is_narrowed_and_shared_state_is_refused() {
        let a = scratch("state-a");
        let b = scratch("state-b");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
        let mut locks_a = NodeLocks::claim(&a, "gateway").unwrap();
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        locks_a
            .state_file(&a.join("gateway.sqlite"), "gateway.database")
            .unwrap();
        locks_a
            .state_dir(&a.join("data"), "replay.data_dir")
            .unwrap();
        // The directory itself as a data dir, and the same state twice: no self-refusal.
        locks_a.state_dir(&a.join("."), "replay.data_dir").unwrap();
        locks_a.state_dir(&a.join("data/"), "keys").unwrap();
        assert_eq!(locks_a.paths().count(), 3);
        // Another node pointed at a's state is refused, naming the key.
        let mut locks_b = NodeLocks::claim(&b, "gateway").unwrap();
        let err = locks_b
            .state_file(&a.join("gateway.sqlite"), "gateway.database")
            .unwrap_err();
        assert!(err.contains("gateway.database"), "{err}");
        let err = locks_b
            .state_dir(
                &b.join("../").join(a.file_name().unwrap()).join("data"),
                "replay.data_dir",
            )
            .unwrap_err();
        assert!(err.contains("replay.data_dir"), "{err}");
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
    }

    #[test]
    fn missing_dir_says_how_to_create_it() {
        let dir = std::env::temp_dir().join(format!("lethe-lock-none-{}", std::process::id()));
        let err = NodeLocks::claim(&dir, "directory").unwrap_err();
        assert!(err.contains("lethe directory init --dir"), "{err}");
    }
}
