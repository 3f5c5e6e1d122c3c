//! Reading, from `/proc`, what a node holds, without touching it: whether another process
//! holds a lock file (trying the lock would, for a moment, refuse the node its own start), and
//! whether a process owns the socket listening on a port.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::limits::{PROC_FDS_MAX, PROC_LINES_MAX};

/// `/proc/net/tcp` state of a listening socket.
const TCP_LISTEN: &str = "0A";

/// The pid holding an exclusive `flock` on `lock`, from `/proc/locks` (Linux); `None` if no
/// process does, the file does not exist, or `/proc` is not there.
pub fn lock_holder(lock: &Path) -> Option<u32> {
    let meta = fs::metadata(lock).ok()?;
    let wanted = (
        u64::from(libc::major(meta.dev())),
        u64::from(libc::minor(meta.dev())),
        meta.ino(),
    );
    let text = fs::read_to_string("/proc/locks").ok()?;
    // `1: FLOCK  ADVISORY  WRITE 24195 fe:00:10109222 0 EOF`; a waiter's line has `->` after
    // the number and is not a holder.
    text.lines().take(PROC_LINES_MAX).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") || fields.get(3) != Some(&"WRITE") {
            return None;
        }
        let pid = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let major = u64::from_str_radix(id.next()?, 16).ok()?;
        let minor = u64::from_str_radix(id.next()?, 16).ok()?;
        let inode = id.next()?.parse().ok()?;
        ((major, minor, inode) == wanted).then_some(pid)
    })
}

/// Inodes of the TCP sockets listening on `port` (any address, IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`
        for line in text.lines().skip(1).take(PROC_LINES_MAX) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&TCP_LISTEN) {
                if let Some(inode) = fields.get(9).and_then(|i| i.parse().ok()) {
                    inodes.push(inode);
                }
            }
        }
    }
    inodes
}

/// Whether process `pid` holds a socket listening on `port`; `None` if that cannot be told
/// (its descriptors are readable only by its user and root).
pub fn holds_port(pid: u32, port: u16) -> Option<bool> {
    let inodes = listening_inodes(port);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for entry in fds.take(PROC_FDS_MAX).flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if inode.is_some_and(|i| inodes.contains(&i)) {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_a_free_one_none() {
        let dir = std::env::temp_dir().join(format!("lethe-probe-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let file = fs::File::create(&path).unwrap();
        assert_eq!(lock_holder(&path), None);
        file.lock().unwrap();
        assert_eq!(lock_holder(&path), Some(std::process::id()));
        drop(file);
        assert_eq!(lock_holder(&path), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_listener_is_found_in_its_own_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(holds_port(std::process::id(), port), Some(true));
        drop(listener);
        assert_eq!(holds_port(std::process::id(), port), Some(false));
    }
}
