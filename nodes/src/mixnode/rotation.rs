//! Scheduled Sphinx key rotation, after Nym (`nym-node/src/node/key_rotation`): every
//! `rotation_interval_s` the node generates the next x25519 key, makes it primary with the old
//! one as secondary (v7 frames try both; a v8 rotation byte picks one by parity), gives the new
//! rotation a fresh persisted replay filter, and re-announces its descriptor with the new key.
//! After `rotation_overlap_s` the old key, its filter and their files are dropped.
//!
//! On disk (all in the keys directory): one key pair per rotation, `x25519_sphinx_rot-<id>`
//! (0600) and `.pub`, and `sphinx_rotation.toml`, the commit point, naming the live rotations
//! and their times. Every file is written atomically (temp, fsync, rename) and the new key and
//! its filter are on disk before the state file names them, so a crash or restart at any point
//! restores a consistent set: both keys and both filters when it happens mid-overlap.
//!
//! Rotation ids are per node and count up from the config's `primary_rotation_id`; the keys
//! `init` wrote (`sphinx_primary`, `sphinx_secondary`) are adopted at the first start: the
//! primary as the current rotation, the secondary (never announced) not at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lethe_engine::core::{NodeKeys, SphinxKey};
use lethe_engine::replay::RotationId;
use lethe_engine::runtime::Runtime;
use lethe_engine::{snapshot_path, ReplayConfig, ReplayFilter, ReplayFilterSet, ReplayParams};
use serde::Deserialize;
use x25519_dalek::{PublicKey, StaticSecret};

use super::config::{resolve, Config, KeysSection};
use crate::keyfile;

pub const STATE_FILE: &str = "sphinx_rotation.toml";

/// Nym: a key is valid for 24 epochs of 1 h, plus one epoch of overlap.
pub const ROTATION_INTERVAL_S_DEFAULT: u64 = 24 * 3_600;
pub const ROTATION_OVERLAP_S_DEFAULT: u64 = 3_600;

/// The live rotations, as persisted in `sphinx_rotation.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub primary_rotation_id: RotationId,
    /// Unix ms when the primary became primary: the next rotation is `interval` later.
    pub primary_since_ms: u64,
    /// The previous key, live until `secondary_until_ms` (the end of the overlap).
    pub secondary_rotation_id: Option<RotationId>,
    pub secondary_until_ms: Option<u64>,
}

impl State {
    fn render(&self) -> String {
        let mut text = format!(
            "# Written by the mixnode at each Sphinx key rotation; do not edit while it runs.\n\
             primary_rotation_id = {}\nprimary_since_ms = {}\n",
            self.primary_rotation_id, self.primary_since_ms
        );
        if let (Some(id), Some(until)) = (self.secondary_rotation_id, self.secondary_until_ms) {
            text.push_str(&format!(
                "secondary_rotation_id = {id}\nsecondary_until_ms = {until}\n"
            ));
        }
        text
    }
}

/// When to rotate. `interval_ms == 0` disables scheduled rotation.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub interval_ms: u64,
    pub overlap_ms: u64,
}

impl Schedule {
    pub fn from_keys(keys: &KeysSection) -> Result<Schedule, String> {
        let schedule = Schedule {
            interval_ms: keys.rotation_interval_s.saturating_mul(1_000),
            overlap_ms: keys.rotation_overlap_s.saturating_mul(1_000),
        };
        if schedule.enabled() && schedule.overlap_ms >= schedule.interval_ms {
            return Err(format!(
                "keys: rotation_overlap_s = {} must be shorter than rotation_interval_s = {}",
                keys.rotation_overlap_s, keys.rotation_interval_s
            ));
        }
        Ok(schedule)
    }

    pub fn enabled(&self) -> bool {
        self.interval_ms > 0
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn keys_dir(dir: &Path, keys: &KeysSection) -> PathBuf {
    let primary = resolve(dir, &keys.sphinx_primary);
    primary
        .parent()
        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
}

/// Where rotation `id`'s private key is written.
pub fn rotation_key_path(dir: &Path, keys: &KeysSection, id: RotationId) -> PathBuf {
    keys_dir(dir, keys).join(format!("x25519_sphinx_rot-{id}"))
}

/// Where rotation `id`'s private key is read: its own file, else the key `init` wrote for it.
fn key_file(dir: &Path, keys: &KeysSection, id: RotationId) -> PathBuf {
    let own = rotation_key_path(dir, keys, id);
    if own.exists() {
        return own;
    }
    if id == keys.primary_rotation_id {
        return resolve(dir, &keys.sphinx_primary);
    }
    if id == keys.secondary_rotation_id {
        return resolve(dir, &keys.sphinx_secondary);
    }
    own
}

fn read_key(dir: &Path, keys: &KeysSection, id: RotationId) -> Result<SphinxKey, String> {
    let secret = keyfile::read_private(&key_file(dir, keys, id))?;
    Ok(SphinxKey::new(id, StaticSecret::from(*secret)))
}

fn save_state(dir: &Path, keys: &KeysSection, state: &State) -> Result<(), String> {
    let path = keys_dir(dir, keys).join(STATE_FILE);
    keyfile::write_atomic(&path, state.render().as_bytes(), 0o600)
}

/// The persisted state, or (first start) the adopted `init` primary, written at once so the
/// schedule survives restarts.
fn load_state(dir: &Path, keys: &KeysSection, now_ms: u64) -> Result<State, String> {
    let path = keys_dir(dir, keys).join(STATE_FILE);
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let state: State = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if state.secondary_rotation_id.is_some() != state.secondary_until_ms.is_some() {
            return Err(format!(
                "{}: secondary id and until go together",
                path.display()
            ));
        }
        return Ok(state);
    }
    let state = State {
        primary_rotation_id: keys.primary_rotation_id,
        primary_since_ms: now_ms,
        secondary_rotation_id: None,
        secondary_until_ms: None,
    };
    save_state(dir, keys, &state)?;
    Ok(state)
}

/// The node's live keys and filters, and what rotates them.
pub struct Rotation {
    dir: PathBuf,
    keys_section: KeysSection,
    data_dir: PathBuf,
    params: ReplayParams,
    schedule: Schedule,
    state: State,
    keys: NodeKeys,
    /// Shared with the snapshot thread, which saves under this lock: a dropped rotation's
    /// file is never re-created by a snapshot racing its removal.
    replay: Arc<Mutex<ReplayFilterSet>>,
}

impl Rotation {
    /// Loads the live keys and filters (both of each mid-overlap); an overlap that ended while
    /// the node was down is closed by the first `tick`.
    pub fn start(dir: &Path, config: &Config, now_ms: u64) -> Result<Rotation, String> {
        let schedule = Schedule::from_keys(&config.keys)?;
        let keys_section = config.keys.clone();
        let state = load_state(dir, &keys_section, now_ms)?;
        let primary = read_key(dir, &keys_section, state.primary_rotation_id)?;
        let secondary = match state.secondary_rotation_id {
            Some(id) => Some(read_key(dir, &keys_section, id)?),
            None => None,
        };
        if secondary
            .as_ref()
            .is_some_and(|s| s.rotation_id == primary.rotation_id)
        {
            return Err("sphinx rotation state: primary and secondary ids must differ".into());
        }
        let keys = NodeKeys::new(primary, secondary);
        let life_s = config.keys.rotation_interval_s + config.keys.rotation_overlap_s;
        if schedule.enabled() && config.replay.key_lifetime_s < life_s {
            eprintln!(
                "lethe: warning: replay.key_lifetime_s = {} is shorter than a key's life \
                 (rotation interval + overlap = {life_s} s): its filter will exceed its \
                 false-positive target",
                config.replay.key_lifetime_s
            );
        }
        let replay = super::load_replay(dir, &config.replay, &keys)?;
        let sizing = ReplayConfig {
            packets_per_s: config.replay.packets_per_s,
            key_lifetime_s: config.replay.key_lifetime_s,
            fp_rate: config.replay.fp_rate,
            block_words: 1,
        };
        let params = ReplayParams::from_config(&sizing).map_err(|e| format!("replay: {e}"))?;
        Ok(Rotation {
            dir: dir.to_path_buf(),
            data_dir: resolve(dir, &config.replay.data_dir),
            keys_section,
            params,
            schedule,
            state,
            keys,
            replay: Arc::new(Mutex::new(replay)),
        })
    }

    pub fn keys(&self) -> &NodeKeys {
        &self.keys
    }

    pub fn replay(&self) -> &Arc<Mutex<ReplayFilterSet>> {
        &self.replay
    }

    pub fn replay_set(&self) -> ReplayFilterSet {
        self.replay.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Ends a due overlap or starts a due rotation; `Ok(true)` if the keys changed (the caller
    /// re-announces on a rotation).
    pub fn tick(&mut self, now_ms: u64, runtime: &Runtime) -> Result<bool, String> {
        if let (Some(old), Some(until)) = (
            self.state.secondary_rotation_id,
            self.state.secondary_until_ms,
        ) {
            if now_ms >= until {
                self.end_overlap(old, runtime)?;
                return Ok(true);
            }
            return Ok(false);
        }
        let due = self
            .state
            .primary_since_ms
            .saturating_add(self.schedule.interval_ms);
        if self.schedule.enabled() && now_ms >= due {
            self.rotate(now_ms, runtime)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The next key becomes primary, the current one secondary until the overlap ends.
    fn rotate(&mut self, now_ms: u64, runtime: &Runtime) -> Result<(), String> {
        assert!(self.keys.secondary.is_none());
        let old = self.keys.primary.clone();
        let new_id = old.rotation_id.checked_add(1).filter(|id| *id < u32::MAX);
        let new_id = new_id.ok_or("sphinx rotation: rotation ids exhausted")?;
        // 1. The key and its fresh filter are on disk before anything names them.
        let secret = StaticSecret::from(*keyfile::random_32()?);
        let public = PublicKey::from(&secret).to_bytes();
        let key_path = rotation_key_path(&self.dir, &self.keys_section, new_id);
        keyfile::write_key_pair_atomic(&key_path, secret.as_bytes(), &public)?;
        let filter = ReplayFilter::try_new(new_id, self.params)
            .map_err(|_| format!("replay: cannot allocate {} bytes", self.params.bytes()))?;
        let filter_path = snapshot_path(&self.data_dir, new_id);
        filter
            .save(&filter_path)
            .map_err(|e| format!("{}: {e}", filter_path.display()))?;
        // 2. Commit.
        let state = State {
            primary_rotation_id: new_id,
            primary_since_ms: now_ms,
            secondary_rotation_id: Some(old.rotation_id),
            secondary_until_ms: Some(now_ms.saturating_add(self.schedule.overlap_ms)),
        };
        save_state(&self.dir, &self.keys_section, &state)?;
        // 3. Install on every core.
        let keys = NodeKeys::new(SphinxKey::new(new_id, secret), Some(old));
        let set = {
            let mut set = self.replay.lock().map_err(|_| "replay set lock poisoned")?;
            set.insert(Arc::new(filter))
                .map_err(|e| format!("replay: {e:?}"))?;
            set.clone()
        };
        runtime.install_keys(&keys, &set);
        self.keys = keys;
        self.state = state;
        eprintln!(
            "lethe: sphinx key rotation {} -> {new_id}: old key live until the overlap ends",
            new_id - 1
        );
        Ok(())
    }

    /// Drops the old key, its filter and their files.
    fn end_overlap(&mut self, old: RotationId, runtime: &Runtime) -> Result<(), String> {
        let keys = NodeKeys::new(self.keys.primary.clone(), None);
        let state = State {
            secondary_rotation_id: None,
            secondary_until_ms: None,
            ..self.state.clone()
        };
        save_state(&self.dir, &self.keys_section, &state)?;
        let mut set = self.replay.lock().map_err(|_| "replay set lock poisoned")?;
        set.remove(old);
        runtime.install_keys(&keys, &set);
        let _ = std::fs::remove_file(snapshot_path(&self.data_dir, old));
        drop(set);
        let key_path = key_file(&self.dir, &self.keys_section, old);
        let _ = std::fs::remove_file(&key_path);
        let _ = std::fs::remove_file(key_path.with_extension("pub"));
        self.keys = keys;
        self.state = state;
        eprintln!("lethe: sphinx rotation {old} ended: its key and replay filter are dropped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_with_and_without_a_secondary() {
        let overlap = State {
            primary_rotation_id: 7,
            primary_since_ms: 1_000,
            secondary_rotation_id: Some(6),
            secondary_until_ms: Some(4_600_000),
        };
        let parsed: State = toml::from_str(&overlap.render()).unwrap();
        assert_eq!(parsed, overlap);
        let single = State {
            secondary_rotation_id: None,
            secondary_until_ms: None,
            ..overlap
        };
        let parsed: State = toml::from_str(&single.render()).unwrap();
        assert_eq!(parsed, single);
        assert!(!single.render().contains("secondary"));
    }

    #[test]
    fn overlap_must_be_shorter_than_the_interval() {
        let mut keys: super::super::config::Config =
            toml::from_str(super::super::config::TEMPLATE).unwrap();
        let schedule = Schedule::from_keys(&keys.keys).unwrap();
        assert_eq!(schedule.interval_ms, 86_400_000);
        assert_eq!(schedule.overlap_ms, 3_600_000);
        keys.keys.rotation_overlap_s = keys.keys.rotation_interval_s;
        assert!(Schedule::from_keys(&keys.keys).is_err());
        keys.keys.rotation_interval_s = 0; // disabled: the overlap is irrelevant
        assert!(!Schedule::from_keys(&keys.keys).unwrap().enabled());
    }
}
