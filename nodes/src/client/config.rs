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

pub const CONFIG_FILE: &str = "client.toml";
pub const IDENTITY_FILE: &str = "identity.key";
pub const ENCRYPTION_FILE: &str = "encryption.key";

/// Loopix and reliability parameters (Nym's defaults, `client-core` `Traffic`/`Acknowledgements`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopixParams {
    /// Mean exponential per-hop delay of forward packets (mu), ms.
    pub average_packet_delay_ms: f64,
    /// Mean per-hop delay of ACK packets and reply SURBs, ms.
    pub average_ack_delay_ms: f64,
    /// Mean delay between packets of the Poisson real/drop-cover stream (1/lambda), ms. Zero:
    /// real packets leave as soon as they are queued, and no drop cover is sent.
    pub message_sending_average_delay_ms: f64,
    /// Mean delay between loop-cover packets, ms.
    pub loop_cover_average_delay_ms: f64,
    /// Send no drop cover (the Poisson stream only carries real packets).
    pub disable_drop_cover: bool,
    /// Send no loop cover.
    pub disable_loop_cover: bool,
    /// Retransmission timeout = expected RTT × multiplier + addition.
    pub ack_wait_multiplier: f64,
    pub ack_wait_addition_ms: u64,
    /// Retransmissions of a fragment before giving up (absent: unlimited).
    pub max_retransmissions: Option<u32>,
    pub topology_refresh_s: u64,
    /// How long we keep the recovery records of reply SURBs we handed out.
    pub reply_surb_lifetime_s: u64,
}

impl Default for LoopixParams {
    fn default() -> Self {
        LoopixParams {
            average_packet_delay_ms: 15.0,
            average_ack_delay_ms: 15.0,
            message_sending_average_delay_ms: 20.0,
            loop_cover_average_delay_ms: 200.0,
            disable_drop_cover: false,
            disable_loop_cover: false,
            ack_wait_multiplier: 1.5,
            ack_wait_addition_ms: 1500,
            max_retransmissions: Some(10),
            topology_refresh_s: 300,
            reply_surb_lifetime_s: 24 * 3600,
        }
    }
}

impl LoopixParams {
    /// No cover traffic at all (tests, benchmarks).
    pub fn without_cover(mut self) -> LoopixParams {
        self.disable_drop_cover = true;
        self.disable_loop_cover = true;
        self
    }
}

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
