//! Operator tools beside `run`: `info` (what a node is: keys, addresses, version, SIMD path),
//! `check-config` (would `run` start, and if not, what to fix) and `systemd-unit`.
//!
//! Both read only: they never write a file, never take a node's locks, and work while the node
//! runs (whether it runs is read from `/proc/locks`, not by trying its lock). The checks are
//! the ones `run` performs, called, not copied: `run` and `check-config` cannot disagree about
//! what a valid config or key is.

pub mod check;
pub mod info;
mod probe;
pub mod systemd;

use std::path::{Path, PathBuf};

use lethe_engine::replay::RotationId;
use serde_json::Value;

use crate::keyfile;
use crate::node::keys::{self, KeysSection};
use crate::node::resolve;
use crate::node::rotation::{self, Schedule};

/// The version `lethe` was built as, and the git commit (see `nodes/build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("LETHE_GIT_COMMIT");

/// Whether the node on `dir` runs: the pid holding its directory lock, if any.
pub fn running_pid(dir: &Path) -> Option<u32> {
    probe::lock_holder(&dir.join(crate::lock::LOCK_FILE))
}

/// Unix ms as ISO 8601 UTC, e.g. `2026-12-07T05:45:00Z`.
pub fn iso_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1_000;
    let day = u32::try_from(secs / 86_400).unwrap_or(u32::MAX);
    let of_day = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        crate::credential_files::iso_date(day),
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// One Sphinx key a node accepts packets for.
#[derive(Clone, Debug)]
pub struct LiveKey {
    /// `primary` or `secondary`.
    pub slot: &'static str,
    pub rotation_id: RotationId,
    /// The private key file; its public key is the `.pub` beside it.
    pub private: PathBuf,
    /// Unix ms at which the node stops using it as its primary (rotates), if it rotates.
    pub rotates_ms: Option<u64>,
    /// Unix ms after which packets for it are refused, if ever.
    pub expires_ms: Option<u64>,
    /// How the id was found, when it is not the persisted state's.
    pub note: Option<&'static str>,
}

impl LiveKey {
    pub fn public_path(&self) -> PathBuf {
        self.private.with_extension("pub")
    }
}

/// A mixnode's live Sphinx keys, as its rotation state names them (read, never written: before
/// the first start, the `init` key that start will adopt, with the id it will get).
pub fn mixnode_live_keys(
    dir: &Path,
    keys: &KeysSection,
    now_ms: u64,
) -> Result<Vec<LiveKey>, String> {
    let schedule = Schedule::from_keys(keys)?;
    let rotates = |id: RotationId| {
        schedule
            .enabled()
            .then(|| schedule.starts_ms(id).saturating_add(schedule.interval_ms))
    };
    let expires = |id: RotationId| schedule.enabled().then(|| schedule.overlap_end_ms(id));
    let Some(state) = rotation::read_state(dir, keys)? else {
        let id = if schedule.enabled() {
            schedule.epoch(now_ms)?
        } else {
            rotation::UNSCHEDULED_ROTATION_ID
        };
        return Ok(vec![LiveKey {
            slot: "primary",
            rotation_id: id,
            private: resolve(dir, &keys.sphinx_primary),
            rotates_ms: rotates(id),
            expires_ms: expires(id),
            note: Some("not started yet: the first start adopts the init key with this id"),
        }]);
    };
    let id = state.primary_rotation_id;
    let mut live = vec![LiveKey {
        slot: "primary",
        rotation_id: id,
        private: keys::key_file(dir, keys, id),
        rotates_ms: rotates(id),
        expires_ms: expires(id),
        note: None,
    }];
    if let (Some(id), Some(until)) = (state.secondary_rotation_id, state.secondary_until_ms) {
        live.push(LiveKey {
            slot: "secondary",
            rotation_id: id,
            private: keys::key_file(dir, keys, id),
            rotates_ms: None,
            expires_ms: Some(until),
            note: None,
        });
    }
    Ok(live)
}

/// A gateway's Sphinx key: the primary of its config, fixed (a gateway does not rotate, and
/// loads only the key it announces, as `gateway::run` does).
pub fn gateway_live_keys(dir: &Path, keys: &KeysSection) -> Vec<LiveKey> {
    vec![LiveKey {
        slot: "primary",
        rotation_id: keys.primary_rotation_id,
        private: resolve(dir, &keys.sphinx_primary),
        rotates_ms: None,
        expires_ms: None,
        note: Some("a gateway's Sphinx key does not rotate"),
    }]
}

/// What `info` shows of a live key, with times as ISO 8601 and seconds left (negative: past,
/// e.g. a stopped mixnode that rotates at its next start).
pub fn live_key_json(key: &LiveKey, now_ms: u64) -> Value {
    let public = keyfile::read_public(&key.public_path())
        .map(|k| Value::from(keyfile::hex(&k)))
        .unwrap_or_else(|e| Value::from(format!("unreadable: {e}")));
    let left_s = |at_ms: u64| (i128::from(at_ms) - i128::from(now_ms)).div_euclid(1_000) as i64;
    let mut out = serde_json::Map::new();
    out.insert("slot".into(), key.slot.into());
    out.insert("rotation_id".into(), key.rotation_id.into());
    out.insert("public_key".into(), public);
    out.insert("file".into(), key.private.display().to_string().into());
    if let Some(at) = key.rotates_ms {
        out.insert("rotates_at".into(), iso_time(at).into());
        out.insert("rotates_in_s".into(), left_s(at).into());
    }
    out.insert(
        "expires_at".into(),
        key.expires_ms.map_or(Value::Null, |at| iso_time(at).into()),
    );
    out.insert(
        "expires_in_s".into(),
        key.expires_ms.map_or(Value::Null, |at| left_s(at).into()),
    );
    if let Some(note) = key.note {
        out.insert("note".into(), note.into());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_time_is_utc_with_seconds() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        // 2026-12-07T05:45:00Z
        assert_eq!(iso_time(1_796_622_300_000), "2026-12-07T05:45:00Z");
    }
}
