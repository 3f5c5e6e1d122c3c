//! Key files: one key per file, 32 bytes as hex, created `0600` with `create_new` (never
//! overwritten, never world-readable even briefly) in a `0700` directory; `.pub` companions.
//! Loading refuses a private key file readable by group or others (the ssh habit).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

pub fn random_32() -> Result<Zeroizing<[u8; 32]>, String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex_32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(out)
}

pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes `contents` to a new file of the given mode; fails if it exists.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces `path` atomically with `contents` of the given mode: a temp file beside it
/// (created with that mode, so the bytes are never readable more widely), fsync, rename,
/// fsync of the directory. A crash leaves the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = fs::remove_file(&tmp); // a leftover of a crash
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// [`write_key_pair`] that replaces existing files atomically (key rotation).
pub fn write_key_pair_atomic(
    path: &Path,
    secret: &[u8; 32],
    public: &[u8; 32],
) -> Result<(), String> {
    let secret_hex = Zeroizing::new(hex(secret) + "\n");
    write_atomic(path, secret_hex.as_bytes(), 0o600)?;
    write_atomic(
        &path.with_extension("pub"),
        (hex(public) + "\n").as_bytes(),
        0o644,
    )
}

/// Writes a private key (`0600`) and its public key (`path.pub`, `0644`).
pub fn write_key_pair(path: &Path, secret: &[u8; 32], public: &[u8; 32]) -> Result<(), String> {
    let secret_hex = Zeroizing::new(hex(secret) + "\n");
    write_new(path, secret_hex.as_bytes(), 0o600)?;
    let public_path = path.with_extension("pub");
    write_new(&public_path, (hex(public) + "\n").as_bytes(), 0o644)
}

/// Narrows an existing file to `0600` if group or others have any access, saying so.
fn restrict_file(path: &Path) -> std::io::Result<()> {
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        tracing::warn!(
            file = %path.display(),
            "file was mode {mode:04o}, readable by other users; changed it to 0600"
        );
    }
    Ok(())
}

/// The database file and the `-wal`/`-shm` files SQLite keeps beside it.
fn sqlite_files(path: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

fn sqlite_error(path: &Path, e: &std::io::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(format!("{}: {e}", path.display())),
    )
}

/// Opens (creating) an SQLite database that only its owner may read: a new file is created
/// `0600` before SQLite sees it (whatever the umask), an existing wider one is narrowed. SQLite
/// gives its `-wal`/`-shm` files the database file's mode; call [`restrict_sqlite`] once the
/// journal mode is set, for ones left by older versions.
pub fn open_private_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    // Created and closed before any connection of ours opens it, so closing this descriptor
    // cannot drop SQLite's POSIX locks on the file.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(sqlite_error(path, &e)),
    }
    restrict_file(path).map_err(|e| sqlite_error(path, &e))?;
    rusqlite::Connection::open(path)
}

/// Narrows a database's `-wal`/`-shm` files (and itself) to `0600` where they are wider.
pub fn restrict_sqlite(path: &Path) -> rusqlite::Result<()> {
    for file in sqlite_files(path) {
        restrict_file(&file).map_err(|e| sqlite_error(&file, &e))?;
    }
    Ok(())
}

/// Refuses a private key file that group or others may access (or that cannot be read), with
/// the command that fixes it. Every secret a node loads passes here first: the hex keys
/// ([`read_private`]) and the issuer's key share.
pub fn check_private_mode(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: private key is readable by group or others (mode {mode:04o}): run `chmod 600 \
             {}` and start again",
            path.display(),
            shell_quote(&path.to_string_lossy())
        ));
    }
    Ok(())
}

/// Reads a private key, refusing (before any use) one that group or others may access, with
/// the command that fixes it, and one that is not a key, saying what is wrong with it: every
/// role checks its keys this way at start, so a bad key stops `run` at once, not at first use.
pub fn read_private(path: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
    check_private_mode(path)?;
    let text =
        Zeroizing::new(fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
    unhex_32(&text).map(Zeroizing::new).ok_or_else(|| {
        format!(
            "{}: not a key: {} (a key file holds 64 hex digits, 32 bytes, and a newline; \
             restore it from a backup, or `init` a new node if this one never registered)",
            path.display(),
            key_text_problem(&text)
        )
    })
}

/// What is wrong with the text of a key file that [`unhex_32`] refuses.
pub fn key_text_problem(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "the file is empty".into();
    }
    if let Some((index, c)) = trimmed.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return format!("{c:?} at byte {index} is not a hex digit");
    }
    format!(
        "{} hex digits where 64 are expected",
        trimmed.chars().count()
    )
}

/// `text` quoted for a POSIX shell when it needs it, for commands printed to paste.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@=%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

pub fn read_public(path: &Path) -> Result<[u8; 32], String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    unhex_32(&text).ok_or_else(|| {
        format!(
            "{}: not a public key: {}",
            path.display(),
            key_text_problem(&text)
        )
    })
}

/// The ed25519 public key of a 32-byte seed (RFC 8032: SHA-512, clamp, times the base point).
pub fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let digest = sha2::Sha512::digest(seed);
    let mut scalar = Zeroizing::new([0u8; 32]);
    scalar.copy_from_slice(&digest[..32]);
    curve25519_dalek::EdwardsPoint::mul_base_clamped(*scalar)
        .compress()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0xabu8; 32];
        assert_eq!(unhex_32(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex_32("zz"), None);
    }

    #[test]
    fn key_problems_are_named() {
        assert_eq!(key_text_problem("\n"), "the file is empty");
        assert_eq!(key_text_problem("abz"), "'z' at byte 2 is not a hex digit");
        assert_eq!(
            key_text_problem("abcd"),
            "4 hex digits where 64 are expected"
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("/tmp/ab"), "/tmp/ab");
    }

    #[test]
    fn ed25519_matches_rfc8032_test_1() {
        let seed =
            unhex_32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
        assert_eq!(
            hex(&ed25519_public(&seed)),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}
