//! A node's key files: the `[keys]` section shared by mixnodes and gateways, the identity and
//! Sphinx key pairs `init` writes, and where each rotation's key lives.

use std::path::{Path, PathBuf};

use lethe_engine::core::{NodeKeys, SphinxKey};
use lethe_engine::replay::RotationId;
use serde::Deserialize;
use x25519_dalek::{PublicKey, StaticSecret};

use super::resolve;
use crate::keyfile;

/// Nym: a key is valid for 24 epochs of 1 h, plus one epoch of overlap.
pub const ROTATION_INTERVAL_S_DEFAULT: u64 = 24 * 3_600;
pub const ROTATION_OVERLAP_S_DEFAULT: u64 = 3_600;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    pub identity: PathBuf,
    pub sphinx_primary: PathBuf,
    pub sphinx_secondary: PathBuf,
    /// Rotation ids of the two `init` keys: read by the gateway (its template has them). The
    /// mixnode derives its ids from the clock (`rotation`), no longer writes these and ignores
    /// them, with a warning, in configs written before.
    #[serde(default = "primary_rotation_id_default")]
    pub primary_rotation_id: u32,
    #[serde(default)]
    pub secondary_rotation_id: u32,
    /// Scheduled rotation (mixnode): a new key at every multiple of the interval since the
    /// Unix epoch (the network-wide rotation id is unix time / interval), the old one kept for
    /// the overlap. 0 = never. Configs written before it existed get Nym's 24 h + 1 h.
    #[serde(default = "rotation_interval_s_default")]
    pub rotation_interval_s: u64,
    #[serde(default = "rotation_overlap_s_default")]
    pub rotation_overlap_s: u64,
}

fn primary_rotation_id_default() -> u32 {
    1
}

fn rotation_interval_s_default() -> u64 {
    ROTATION_INTERVAL_S_DEFAULT
}

fn rotation_overlap_s_default() -> u64 {
    ROTATION_OVERLAP_S_DEFAULT
}

/// Writes a new ed25519 identity and the two x25519 Sphinx keys (shared with the gateway).
pub fn write_keys(dir: &Path, keys: &KeysSection) -> Result<(), String> {
    let identity_path = resolve(dir, &keys.identity);
    if let Some(parent) = identity_path.parent() {
        keyfile::create_private_dir(parent)?;
    }
    let identity = keyfile::random_32()?;
    keyfile::write_key_pair(
        &identity_path,
        &identity,
        &keyfile::ed25519_public(&identity),
    )?;
    for path in [&keys.sphinx_primary, &keys.sphinx_secondary] {
        let secret = StaticSecret::from(*keyfile::random_32()?);
        let public = PublicKey::from(&secret).to_bytes();
        keyfile::write_key_pair(&resolve(dir, path), secret.as_bytes(), &public)?;
    }
    Ok(())
}

pub fn load_keys(dir: &Path, keys: &KeysSection) -> Result<NodeKeys, String> {
    let read = |path: &PathBuf| -> Result<StaticSecret, String> {
        Ok(StaticSecret::from(*keyfile::read_private(&resolve(
            dir, path,
        ))?))
    };
    // The identity key is not used by the data plane yet; check it is there and private.
    keyfile::read_private(&resolve(dir, &keys.identity))?;
    // The primary only: it is the key the gateway announces and clients encrypt to. The
    // secondary `init` writes is announced nowhere, so no packet can be built for it; loading
    // it cost a second replay filter (1.8 GB by default, and its snapshot file) for nothing.
    let primary = SphinxKey::new(keys.primary_rotation_id, read(&keys.sphinx_primary)?);
    Ok(NodeKeys::new(primary, None))
}

pub(crate) fn keys_dir(dir: &Path, keys: &KeysSection) -> PathBuf {
    let primary = resolve(dir, &keys.sphinx_primary);
    primary
        .parent()
        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
}

/// Where rotation `id`'s private key is written.
pub fn rotation_key_path(dir: &Path, keys: &KeysSection, id: RotationId) -> PathBuf {
    keys_dir(dir, keys).join(format!("x25519_sphinx_rot-{id}"))
}

/// Where rotation `id`'s private key is read: its own file, else the primary key `init` wrote
/// (the one adopted at the first start has no file of its own).
pub(crate) fn key_file(dir: &Path, keys: &KeysSection, id: RotationId) -> PathBuf {
    let own = rotation_key_path(dir, keys, id);
    if own.exists() {
        return own;
    }
    resolve(dir, &keys.sphinx_primary)
}

pub(crate) fn read_key(
    dir: &Path,
    keys: &KeysSection,
    id: RotationId,
) -> Result<SphinxKey, String> {
    let secret = keyfile::read_private(&key_file(dir, keys, id))?;
    Ok(SphinxKey::new(id, StaticSecret::from(*secret)))
}
