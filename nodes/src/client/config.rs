//! The client directory: keys and `client.toml`.
//!
//! ```text
//! DIR/identity.key      ed25519 seed (hex, 0600)      DIR/identity.pub
//! DIR/encryption.key    x25519 secret (hex, 0600)     DIR/encryption.pub
//! DIR/client.toml       authority URLs and pinned keys, gateway identity, Loopix parameters
//! ```
//!
//! Files written before the authorities have one `directory_url` and `directory_key`: they
//! still load, as n = 1.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::address::Recipient;
use crate::directory::client::Authorities;
use crate::keyfile;
pub use lethe_proto::loopix::params::LoopixParams;

pub const CONFIG_FILE: &str = "client.toml";
pub const IDENTITY_FILE: &str = "identity.key";
pub const ENCRYPTION_FILE: &str = "encryption.key";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The directory authorities' base URLs: consensus documents are fetched from any of
    /// them, in turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authority_urls: Vec<String>,
    /// The authorities' ed25519 keys (hex), pinned: a document needs 2f+1 of their
    /// signatures, f = (n-1)/3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authority_keys: Vec<String>,
    /// Files from before the authorities: the one directory's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_url: Option<String>,
    /// Files from before the authorities: the one directory's key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_key: Option<String>,
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
    pub authorities: Authorities,
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
    authorities: &Authorities,
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
        authority_urls: authorities.urls().to_vec(),
        authority_keys: authorities.keys_hex(),
        directory_url: None,
        directory_key: None,
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
    let urls: Vec<String> = config
        .directory_url
        .into_iter()
        .chain(config.authority_urls)
        .collect();
    let keys: Vec<String> = config
        .directory_key
        .into_iter()
        .chain(config.authority_keys)
        .collect();
    let authorities = Authorities::from_hex(&urls, &keys)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let gateway = keyfile::unhex_32(&config.gateway)
        .ok_or_else(|| format!("{}: gateway is not 32-byte hex", config_path.display()))?;
    Ok(ClientFiles {
        dir: dir.to_path_buf(),
        identity_seed: keyfile::read_private(&path(dir, IDENTITY_FILE))?,
        encryption_secret: keyfile::read_private(&path(dir, ENCRYPTION_FILE))?,
        authorities,
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
        let authorities = Authorities::new(
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            vec![[5; 32], [7; 32]],
        )
        .unwrap();
        let address = write_new(&dir, &authorities, &[6; 32], LoopixParams::default()).unwrap();
        let files = load(&dir).unwrap();
        assert_eq!(files.address(), address);
        assert_eq!(files.authorities.set().keys(), [[5; 32], [7; 32]]);
        assert_eq!(files.authorities.urls(), authorities.urls());
        assert_eq!(files.loopix, LoopixParams::default());
        assert!(write_new(&dir, &authorities, &[6; 32], LoopixParams::default()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_from_before_the_authorities_load() {
        let old = format!(
            "directory_url = \"http://127.0.0.1:8080\"\ndirectory_key = \"{}\"\ngateway = \"{}\"\n",
            keyfile::hex(&[5; 32]),
            keyfile::hex(&[6; 32])
        );
        let config: FileConfig = toml::from_str(&old).unwrap();
        assert_eq!(
            config.directory_url.as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert!(config.authority_urls.is_empty());
        let dir = std::env::temp_dir().join(format!("lethe-client-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let authorities =
            Authorities::new(vec!["http://127.0.0.1:8080".into()], vec![[5; 32]]).unwrap();
        write_new(&dir, &authorities, &[6; 32], LoopixParams::default()).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), old).unwrap();
        let files = load(&dir).unwrap();
        assert_eq!(files.authorities.urls(), ["http://127.0.0.1:8080"]);
        assert_eq!(files.authorities.set().keys(), [[5; 32]]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
