//! The client directory: keys and `client.toml`.
//!
//! ```text
//! DIR/identity.key      ed25519 seed (hex, 0600)      DIR/identity.pub
//! DIR/encryption.key    x25519 secret (hex, 0600)     DIR/encryption.pub
//! DIR/client.toml       directory URL and pinned key, gateway identity, Loopix parameters
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::address::Recipient;
use crate::keyfile;
pub use lethe_proto::loopix::params::LoopixParams;

pub const CONFIG_FILE: &str = "client.toml";
pub const IDENTITY_FILE: &str = "identity.key";
pub const ENCRYPTION_FILE: &str = "encryption.key";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub directory_url: String,
    /// The directory's ed25519 key (hex), pinned.
    pub directory_key: String,
    /// Our gateway's identity (hex).
    pub gateway: String,
    #[serde(default)]
    pub loopix: LoopixParams,
}

/// What a client directory holds, loaded.
pub struct ClientFiles {
    /// The client directory (it may hold a bandwidth credential: see `client::credential`).
    pub dir: PathBuf,
    pub identity_seed: Zeroizing<[u8; 32]>,
    pub encryption_secret: Zeroizing<[u8; 32]>,
    pub directory_url: String,
    pub directory_key: [u8; 32],
    pub gateway: [u8; 32],
    pub loopix: LoopixParams,
}

impl ClientFiles {
    pub fn identity(&self) -> [u8; 32] {
        keyfile::ed25519_public(&self.identity_seed)
    }

    pub fn encryption_key(&self) -> [u8; 32] {
        PublicKey::from(&StaticSecret::from(*self.encryption_secret)).to_bytes()
    }

    pub fn address(&self) -> Recipient {
        Recipient {
            identity: self.identity(),
            encryption_key: self.encryption_key(),
            gateway: self.gateway,
        }
    }
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Writes fresh keys and the config; refuses to overwrite. Returns the address.
pub fn write_new(
    dir: &Path,
    directory_url: &str,
    directory_key: &[u8; 32],
    gateway: &[u8; 32],
    loopix: LoopixParams,
) -> Result<Recipient, String> {
    keyfile::create_private_dir(dir)?;
    let config_path = path(dir, CONFIG_FILE);
    if config_path.exists() {
        return Err(format!("{}: already exists", config_path.display()));
    }
    let identity_seed = keyfile::random_32()?;
    let identity = keyfile::ed25519_public(&identity_seed);
    keyfile::write_key_pair(&path(dir, IDENTITY_FILE), &identity_seed, &identity)?;
    let encryption_secret = keyfile::random_32()?;
    let encryption_key = PublicKey::from(&StaticSecret::from(*encryption_secret)).to_bytes();
    keyfile::write_key_pair(
        &path(dir, ENCRYPTION_FILE),
        &encryption_secret,
        &encryption_key,
    )?;
    let config = FileConfig {
        directory_url: directory_url.to_string(),
        directory_key: keyfile::hex(directory_key),
        gateway: keyfile::hex(gateway),
        loopix,
    };
    let text = toml::to_string(&config).map_err(|e| format!("config: {e}"))?;
    let text = format!(
        "# Lethe client. The address is <identity.pub>.<encryption.pub>@<gateway>.\n{text}"
    );
    keyfile::write_new(&config_path, text.as_bytes(), 0o644)?;
    Ok(Recipient {
        identity,
        encryption_key,
        gateway: *gateway,
    })
}

pub fn load(dir: &Path) -> Result<ClientFiles, String> {
    let config_path = path(dir, CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        format!(
            "{}: {e} (run `lethe client init` first)",
            config_path.display()
        )
    })?;
    let config: FileConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let directory_key = keyfile::unhex_32(&config.directory_key).ok_or_else(|| {
        format!(
            "{}: directory_key is not 32-byte hex",
            config_path.display()
        )
    })?;
    let gateway = keyfile::unhex_32(&config.gateway)
        .ok_or_else(|| format!("{}: gateway is not 32-byte hex", config_path.display()))?;
    Ok(ClientFiles {
        dir: dir.to_path_buf(),
        identity_seed: keyfile::read_private(&path(dir, IDENTITY_FILE))?,
        encryption_secret: keyfile::read_private(&path(dir, ENCRYPTION_FILE))?,
        directory_url: config.directory_url,
        directory_key,
        gateway,
        loopix: config.loopix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load() {
        let dir = std::env::temp_dir().join(format!("lethe-client-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let address = write_new(
            &dir,
            "http://127.0.0.1:1",
            &[5; 32],
            &[6; 32],
            LoopixParams::default(),
        )
        .unwrap();
        let files = load(&dir).unwrap();
        assert_eq!(files.address(), address);
        assert_eq!(files.directory_key, [5; 32]);
        assert_eq!(files.loopix, LoopixParams::default());
        assert!(write_new(&dir, "x", &[5; 32], &[6; 32], LoopixParams::default()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
