//! What every node (mixnode, gateway) shares, and the operator tools read: the key files, the
//! replay-filter persistence, the engine's config sections and the key-rotation schedule.

pub mod keys;
pub mod replay;
pub mod rotation;
pub mod runtime_config;

use std::path::{Path, PathBuf};

/// A node's config file, in its directory.
pub const CONFIG_FILE: &str = "config.toml";

/// `path` if absolute, else relative to the node directory.
pub fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}
