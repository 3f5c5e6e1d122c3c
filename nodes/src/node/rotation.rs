//! Scheduled Sphinx key rotation, after Nym (`nym-node/src/node/key_rotation`): at every
//! boundary of the network-wide rotation epoch the node generates the next x25519 key, makes
//! it primary with the old one as secondary (v7 frames try both; a v8 rotation byte picks one
//! by parity), gives the new rotation a fresh persisted replay filter, and re-announces its
//! descriptor with the new key. `rotation_overlap_s` after the boundary the old key, its
//! filter and their files are dropped.
//!
//! Rotation ids are network-wide: `id = unix time (s) / rotation_interval_s`, read from the
//! system clock, so every node configured with the same interval holds the same primary id at
//! any instant (up to clock skew) and the v8 byte a node writes, the parity of its primary id,
//! names the next hop's primary too. A rotation happens at each multiple of the interval since
//! the Unix epoch, not an interval after the node started. With skew at a boundary, the next
//! hop still holds the other parity as its secondary during the overlap.
//!
//! On disk (all in the keys directory): one key pair per rotation, `x25519_sphinx_rot-<id>`
//! (0600) and `.pub`, and `sphinx_rotation.toml`, the commit point, naming the live rotations
//! and their times. Every file is written atomically (temp, fsync, rename) and the new key and
//! its filter are on disk before the state file names them, so a crash or restart at any point
//! restores a consistent set: both keys and both filters when it happens mid-overlap.
//!
//! At the first start the primary key `init` wrote (`sphinx_primary`) is adopted as the
//! current epoch's key; the secondary `init` wrote is not used. At a restart, a primary older
//! than the current epoch is rotated at once, before the cores start: the old key stays
//! secondary only if its overlap (the boundary of its successor epoch + overlap) has not ended.
//! A primary newer than the clock's epoch (the clock went back) is kept, with a warning, until
//! the clock reaches its epoch. The state records the interval its ids were counted with; a
//! start with another interval renumbers: the old keys are dropped for a key of the current
//! epoch. With `rotation_interval_s = 0` nothing rotates and the `init` key keeps rotation id 1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lethe_engine::core::{NodeKeys, SphinxKey};
use lethe_engine::replay::RotationId;
use lethe_engine::runtime::Runtime;
use lethe_engine::{snapshot_path, ReplayFilter, ReplayFilterSet, ReplayParams};
use serde::Deserialize;
use x25519_dalek::{PublicKey, StaticSecret};

use super::keys::{key_file, keys_dir, read_key, rotation_key_path, KeysSection};
use super::replay::ReplaySection;
use super::resolve;
use crate::keyfile;

pub const STATE_FILE: &str = "sphinx_rotation.toml";

/// The rotation id of the `init` key when scheduled rotation is disabled (interval 0).
pub const UNSCHEDULED_ROTATION_ID: RotationId = 1;

/// The live rotations, as persisted in `sphinx_rotation.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub primary_rotation_id: RotationId,
    /// Unix ms when the primary became primary (informational: the next rotation is at the
    /// next boundary of the network-wide epoch).
    pub primary_since_ms: u64,
    /// The previous key, live until `secondary_until_ms` (the end of the overlap).
    pub secondary_rotation_id: Option<RotationId>,
    pub secondary_until_ms: Option<u64>,
    /// The interval the ids were counted with (absent in states written before ids were
    /// network-wide). A different configured interval renumbers at the next start.
    #[serde(default)]
    pub rotation_interval_s: Option<u64>,
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
        if let Some(interval) = self.rotation_interval_s {
            text.push_str(&format!("rotation_interval_s = {interval}\n"));
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

    /// The network-wide rotation id at `now_ms`: `unix time / interval`. Ids stay below
    /// `u32::MAX`; an interval too short for that is an error.
    pub fn epoch(&self, now_ms: u64) -> Result<RotationId, String> {
        if !self.enabled() {
            return Err("sphinx rotation: no epoch when rotation is disabled".into());
        }
        let id = now_ms / self.interval_ms;
        RotationId::try_from(id)
            .ok()
            .filter(|id| *id < RotationId::MAX)
            .ok_or_else(|| {
                format!(
                    "sphinx rotation: rotation id {id} (unix time {} s / rotation_interval_s \
                     {} s) does not fit below {}: raise rotation_interval_s",
                    now_ms / 1_000,
                    self.interval_ms / 1_000,
                    RotationId::MAX
                )
            })
    }

    /// Unix ms at which rotation `id` starts (its epoch's boundary), saturating.
    pub fn starts_ms(&self, id: RotationId) -> u64 {
        u64::from(id).saturating_mul(self.interval_ms)
    }

    /// Unix ms of the next boundary after `now_ms`: when the next rotation is due.
    pub fn next_boundary_ms(&self, now_ms: u64) -> Result<u64, String> {
        let id = self.epoch(now_ms)?;
        Ok(self.starts_ms(id).saturating_add(self.interval_ms))
    }

    /// Unix ms at which the key of rotation `id` stops being accepted once superseded: the
    /// boundary of its successor epoch plus the overlap.
    pub fn overlap_end_ms(&self, id: RotationId) -> u64 {
        self.starts_ms(id)
            .saturating_add(self.interval_ms)
            .saturating_add(self.overlap_ms)
    }
}

/// What the schedule asks of the live rotations at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due.
    Idle,
    /// The secondary's overlap ended: drop it.
    EndOverlap,
    /// A new key for epoch `id` becomes primary; the old primary stays secondary until
    /// `keep_old_until_ms`, or is dropped at once if `None` (its overlap already ended).
    Rotate {
        id: RotationId,
        keep_old_until_ms: Option<u64>,
    },
    /// The persisted primary belongs to a later epoch than the clock's (the clock went back):
    /// it is kept until the clock catches up.
    ClockBehind { epoch: RotationId },
}

/// The next step for `state` at `now_ms`; steps are taken one at a time until `Idle` (or
/// `ClockBehind`).
pub fn next_step(state: &State, schedule: &Schedule, now_ms: u64) -> Result<Step, String> {
    if let Some(until) = state.secondary_until_ms {
        if now_ms >= until {
            return Ok(Step::EndOverlap);
        }
    }
    if !schedule.enabled() {
        return Ok(Step::Idle);
    }
    let epoch = schedule.epoch(now_ms)?;
    let primary = state.primary_rotation_id;
    if epoch < primary {
        return Ok(Step::ClockBehind { epoch });
    }
    if epoch == primary {
        return Ok(Step::Idle);
    }
    if state.secondary_rotation_id.is_some() {
        // Never three keys: a secondary still live at the next rotation (possible only after
        // a hand edit or a forward clock jump) is dropped first.
        return Ok(Step::EndOverlap);
    }
    let until = schedule.overlap_end_ms(primary);
    Ok(Step::Rotate {
        id: epoch,
        keep_old_until_ms: (now_ms < until).then_some(until),
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn save_state(dir: &Path, keys: &KeysSection, state: &State) -> Result<(), String> {
    let path = keys_dir(dir, keys).join(STATE_FILE);
    keyfile::write_atomic(&path, state.render().as_bytes(), 0o600)
}

/// The persisted state, or (first start) the adopted `init` primary as the current epoch's
/// key, written at once so the schedule survives restarts.
fn load_state(
    dir: &Path,
    keys: &KeysSection,
    schedule: &Schedule,
    now_ms: u64,
) -> Result<State, String> {
    if let Some(state) = read_state(dir, keys)? {
        return Ok(state);
    }
    let id = if schedule.enabled() {
        schedule.epoch(now_ms)?
    } else {
        UNSCHEDULED_ROTATION_ID
    };
    let state = State {
        primary_rotation_id: id,
        primary_since_ms: now_ms,
        secondary_rotation_id: None,
        secondary_until_ms: None,
        rotation_interval_s: Some(keys.rotation_interval_s),
    };
    save_state(dir, keys, &state)?;
    Ok(state)
}

/// The persisted state, checked, or `None` before the first start; reads only (`lethe mixnode
/// info` calls it on a running node).
pub(crate) fn read_state(dir: &Path, keys: &KeysSection) -> Result<Option<State>, String> {
    let path = keys_dir(dir, keys).join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state: State = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if state.secondary_rotation_id.is_some() != state.secondary_until_ms.is_some() {
        return Err(format!(
            "{}: secondary id and until go together",
            path.display()
        ));
    }
    if state.primary_rotation_id == RotationId::MAX {
        return Err(format!(
            "{}: primary_rotation_id must be below {}",
            path.display(),
            RotationId::MAX
        ));
    }
    Ok(Some(state))
}

/// The sections `Rotation` reads.
struct Sections {
    keys: KeysSection,
    replay: ReplaySection,
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
    /// The clock-behind warning was logged (once per episode, not every tick).
    warned_clock_behind: bool,
}

impl Rotation {
    /// Loads the live keys and filters (both of each mid-overlap), then catches up with the
    /// clock before any core starts: an overlap that ended while the node was down is closed,
    /// a primary of a past epoch is rotated.
    pub fn start(
        dir: &Path,
        keys: &KeysSection,
        replay: &ReplaySection,
        now_ms: u64,
    ) -> Result<Rotation, String> {
        let config = Sections {
            keys: keys.clone(),
            replay: replay.clone(),
        };
        let schedule = Schedule::from_keys(&config.keys)?;
        let keys_section = config.keys.clone();
        let state = load_state(dir, &keys_section, &schedule, now_ms)?;
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
        // Only the legacy sizing names a lifetime; `capacity_packets` is the operator's rule.
        let legacy = config.replay.capacity_packets.is_none();
        if legacy && schedule.enabled() && config.replay.key_lifetime_s < life_s {
            // Said once per start: the filter holds packets_per_s x key_lifetime_s items, so
            // over a key's whole life it keeps its false-positive target only below this rate.
            let covered_packets_per_s = config
                .replay
                .packets_per_s
                .saturating_mul(config.replay.key_lifetime_s)
                / life_s.max(1);
            tracing::warn!(
                key_lifetime_s = config.replay.key_lifetime_s,
                key_life_s = life_s,
                covered_packets_per_s,
                "replay.key_lifetime_s is shorter than a key's life (rotation interval + \
                 overlap): above covered_packets_per_s the filter exceeds its false-positive \
                 target; to size a small filter, set replay.capacity_packets instead"
            );
        }
        let replay = super::replay::load(dir, &config.replay, &keys)?;
        let params = config.replay.params()?;
        let mut rotation = Rotation {
            dir: dir.to_path_buf(),
            data_dir: resolve(dir, &config.replay.data_dir),
            keys_section,
            params,
            schedule,
            state,
            keys,
            replay: Arc::new(Mutex::new(replay)),
            warned_clock_behind: false,
        };
        let persisted = rotation.state.rotation_interval_s;
        if persisted.is_some_and(|s| s != config.keys.rotation_interval_s) && schedule.enabled() {
            rotation.renumber(now_ms)?;
        }
        // At most: end an overlap, rotate (which may drop the old key at once).
        for _ in 0..3 {
            if !rotation.step(now_ms, None)? {
                break;
            }
        }
        Ok(rotation)
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
        self.step(now_ms, Some(runtime))
    }

    /// One step of the schedule; the keys go to the runtime's cores if it runs (at start they
    /// are handed to it when it starts).
    fn step(&mut self, now_ms: u64, runtime: Option<&Runtime>) -> Result<bool, String> {
        match next_step(&self.state, &self.schedule, now_ms)? {
            Step::Idle => {
                self.warned_clock_behind = false;
                Ok(false)
            }
            Step::ClockBehind { epoch } => {
                if !self.warned_clock_behind {
                    tracing::warn!(
                        rotation = self.state.primary_rotation_id,
                        epoch,
                        "sphinx rotation is newer than the clock's epoch (did the clock go \
                         back?): keeping it until the clock catches up"
                    );
                    self.warned_clock_behind = true;
                }
                Ok(false)
            }
            Step::EndOverlap => {
                self.end_overlap(runtime)?;
                Ok(true)
            }
            Step::Rotate {
                id,
                keep_old_until_ms,
            } => {
                self.rotate(id, keep_old_until_ms, now_ms, runtime)?;
                Ok(true)
            }
        }
    }

    /// The key of epoch `new_id` becomes primary, the current one secondary until
    /// `keep_old_until_ms` (or dropped at once if `None`).
    fn rotate(
        &mut self,
        new_id: RotationId,
        keep_old_until_ms: Option<u64>,
        now_ms: u64,
        runtime: Option<&Runtime>,
    ) -> Result<(), String> {
        if self.keys.secondary.is_some() {
            return Err("sphinx rotation: a secondary key is still live".into());
        }
        let old = self.keys.primary.clone();
        if new_id == old.rotation_id || new_id == RotationId::MAX {
            return Err(format!(
                "sphinx rotation: new rotation id {new_id} must differ from {} and be below {}",
                old.rotation_id,
                RotationId::MAX
            ));
        }
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
            secondary_rotation_id: keep_old_until_ms.map(|_| old.rotation_id),
            secondary_until_ms: keep_old_until_ms,
            rotation_interval_s: Some(self.keys_section.rotation_interval_s),
        };
        save_state(&self.dir, &self.keys_section, &state)?;
        // 3. Install on every core.
        let secondary = keep_old_until_ms.map(|_| old.clone());
        let keys = NodeKeys::new(SphinxKey::new(new_id, secret), secondary);
        let mut set = self.replay.lock().map_err(|_| "replay set lock poisoned")?;
        set.insert(Arc::new(filter))
            .map_err(|e| format!("replay: {e:?}"))?;
        if keep_old_until_ms.is_none() {
            set.remove(old.rotation_id);
        }
        if let Some(runtime) = runtime {
            runtime.install_keys(&keys, &set);
        }
        if keep_old_until_ms.is_none() {
            self.remove_files(old.rotation_id);
        }
        drop(set);
        self.keys = keys;
        self.state = state;
        self.warned_clock_behind = false;
        match keep_old_until_ms {
            Some(until) => tracing::info!(
                from = old.rotation_id,
                to = new_id,
                old_key_until_unix_ms = until,
                "sphinx key rotated; the old key stays live until its overlap ends"
            ),
            None => tracing::info!(
                from = old.rotation_id,
                to = new_id,
                "sphinx key rotated; the old key was past its overlap and is dropped"
            ),
        }
        Ok(())
    }

    /// The configured interval differs from the one the persisted ids were counted with: they
    /// belong to another numbering (a longer interval would otherwise look like a clock gone
    /// back for ever). The old keys are dropped and a key of the current epoch takes over,
    /// unless the primary's id already is the current epoch's.
    fn renumber(&mut self, now_ms: u64) -> Result<(), String> {
        let epoch = self.schedule.epoch(now_ms)?;
        // Absent in state files older than the interval setting.
        match self.state.rotation_interval_s {
            Some(from_s) => tracing::info!(
                from_s,
                to_s = self.keys_section.rotation_interval_s,
                epoch,
                "rotation_interval_s changed: sphinx rotation ids renumbered from the clock"
            ),
            None => tracing::info!(
                to_s = self.keys_section.rotation_interval_s,
                epoch,
                "rotation_interval_s set: sphinx rotation ids renumbered from the clock"
            ),
        }
        self.end_overlap(None)?;
        if epoch != self.state.primary_rotation_id {
            return self.rotate(epoch, None, now_ms, None);
        }
        let state = State {
            rotation_interval_s: Some(self.keys_section.rotation_interval_s),
            ..self.state.clone()
        };
        save_state(&self.dir, &self.keys_section, &state)?;
        self.state = state;
        Ok(())
    }

    /// Drops the old key, its filter and their files.
    fn end_overlap(&mut self, runtime: Option<&Runtime>) -> Result<(), String> {
        let Some(old) = self.state.secondary_rotation_id else {
            return Ok(());
        };
        let keys = NodeKeys::new(self.keys.primary.clone(), None);
        let state = State {
            secondary_rotation_id: None,
            secondary_until_ms: None,
            rotation_interval_s: Some(self.keys_section.rotation_interval_s),
            ..self.state.clone()
        };
        save_state(&self.dir, &self.keys_section, &state)?;
        let mut set = self.replay.lock().map_err(|_| "replay set lock poisoned")?;
        set.remove(old);
        if let Some(runtime) = runtime {
            runtime.install_keys(&keys, &set);
        }
        self.remove_files(old);
        drop(set);
        self.keys = keys;
        self.state = state;
        tracing::info!(
            rotation = old,
            "sphinx rotation ended: its key and replay filter are dropped"
        );
        Ok(())
    }

    /// Deletes a dropped rotation's filter snapshot and key files (call under the set's lock,
    /// so a racing snapshot cannot re-create the filter file).
    fn remove_files(&self, old: RotationId) {
        let _ = std::fs::remove_file(snapshot_path(&self.data_dir, old));
        let key_path = key_file(&self.dir, &self.keys_section, old);
        let _ = std::fs::remove_file(&key_path);
        let _ = std::fs::remove_file(key_path.with_extension("pub"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixnode::config::{Config, TEMPLATE};
    use crate::node::keys::{ROTATION_INTERVAL_S_DEFAULT, ROTATION_OVERLAP_S_DEFAULT};

    #[test]
    fn state_round_trips_with_and_without_a_secondary() {
        let overlap = State {
            primary_rotation_id: 7,
            primary_since_ms: 1_000,
            secondary_rotation_id: Some(6),
            secondary_until_ms: Some(4_600_000),
            rotation_interval_s: Some(86_400),
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
        // States written before ids were network-wide have no interval.
        let legacy = State {
            rotation_interval_s: None,
            ..single
        };
        assert!(!legacy.render().contains("interval"));
        let parsed: State = toml::from_str(&legacy.render()).unwrap();
        assert_eq!(parsed, legacy);
    }

    fn schedule(interval_s: u64, overlap_s: u64) -> Schedule {
        Schedule {
            interval_ms: interval_s * 1_000,
            overlap_ms: overlap_s * 1_000,
        }
    }

    fn state(primary: RotationId, secondary: Option<(RotationId, u64)>) -> State {
        State {
            primary_rotation_id: primary,
            primary_since_ms: 0,
            secondary_rotation_id: secondary.map(|s| s.0),
            secondary_until_ms: secondary.map(|s| s.1),
            rotation_interval_s: Some(8),
        }
    }

    #[test]
    fn epoch_is_unix_time_over_the_interval_whenever_a_node_started() {
        let s = schedule(8, 3);
        assert_eq!(s.epoch(0).unwrap(), 0);
        assert_eq!(s.epoch(7_999).unwrap(), 0);
        assert_eq!(s.epoch(8_000).unwrap(), 1);
        assert_eq!(s.epoch(1_795_000_003_500).unwrap(), 224_375_000);
        assert_eq!(s.starts_ms(224_375_000), 1_795_000_000_000);
        assert_eq!(
            s.next_boundary_ms(1_795_000_003_500).unwrap(),
            1_795_000_008_000
        );
        assert_eq!(
            s.next_boundary_ms(1_795_000_008_000).unwrap(),
            1_795_000_016_000
        );
        // The old key of rotation 224_375_000 lives until its successor's boundary + overlap.
        assert_eq!(s.overlap_end_ms(224_375_000), 1_795_000_011_000);
        // Nym's default: one id per day.
        let day = schedule(ROTATION_INTERVAL_S_DEFAULT, ROTATION_OVERLAP_S_DEFAULT);
        assert_eq!(day.epoch(1_795_000_000_000).unwrap(), 20_775);
        assert!(schedule(0, 0).epoch(1).is_err());
    }

    #[test]
    fn ids_stay_below_u32_max() {
        let s = schedule(1, 0);
        let last = u64::from(u32::MAX - 1) * 1_000;
        assert_eq!(s.epoch(last + 999).unwrap(), u32::MAX - 1);
        let err = s.epoch(last + 1_000).unwrap_err();
        assert!(err.contains("raise rotation_interval_s"), "{err}");
        assert!(s.epoch(u64::MAX).is_err());
        assert_eq!(s.starts_ms(u32::MAX), u64::from(u32::MAX) * 1_000);
        assert_eq!(
            schedule(u64::MAX / 1_000, 0).overlap_end_ms(u32::MAX),
            u64::MAX
        );
    }

    #[test]
    fn next_step_rotates_at_the_boundary_and_ends_the_overlap_after_it() {
        let s = schedule(8, 3);
        let boundary = s.starts_ms(11);
        // Mid-epoch: nothing to do.
        assert_eq!(
            next_step(&state(10, None), &s, boundary - 1).unwrap(),
            Step::Idle
        );
        // At the boundary: rotate, the old key kept until the boundary + overlap.
        assert_eq!(
            next_step(&state(10, None), &s, boundary).unwrap(),
            Step::Rotate {
                id: 11,
                keep_old_until_ms: Some(boundary + 3_000)
            }
        );
        let overlapping = state(11, Some((10, boundary + 3_000)));
        assert_eq!(
            next_step(&overlapping, &s, boundary + 2_999).unwrap(),
            Step::Idle
        );
        assert_eq!(
            next_step(&overlapping, &s, boundary + 3_000).unwrap(),
            Step::EndOverlap
        );
        // Disabled: only a due overlap ends.
        let off = schedule(0, 0);
        assert_eq!(
            next_step(&state(10, None), &off, boundary * 9).unwrap(),
            Step::Idle
        );
        assert_eq!(
            next_step(&overlapping, &off, boundary + 3_000).unwrap(),
            Step::EndOverlap
        );
    }

    #[test]
    fn restart_catches_up_and_keeps_the_old_key_only_inside_its_overlap() {
        let s = schedule(8, 3);
        // Down across one boundary, back inside the overlap: rotate, keep the old key until
        // its successor's boundary + overlap.
        let back = s.starts_ms(11) + 1_000;
        assert_eq!(
            next_step(&state(10, None), &s, back).unwrap(),
            Step::Rotate {
                id: 11,
                keep_old_until_ms: Some(s.starts_ms(11) + 3_000)
            }
        );
        // Back after the overlap: rotate and drop the old key at once.
        assert_eq!(
            next_step(&state(10, None), &s, s.starts_ms(11) + 3_000).unwrap(),
            Step::Rotate {
                id: 11,
                keep_old_until_ms: None
            }
        );
        // Down for several epochs: straight to the current one, the old key dropped.
        assert_eq!(
            next_step(&state(10, None), &s, s.starts_ms(14) + 500).unwrap(),
            Step::Rotate {
                id: 14,
                keep_old_until_ms: None
            }
        );
        // A stale secondary goes first (never three keys), then the rotation.
        let stale = state(10, Some((9, s.starts_ms(14) + 9_999)));
        assert_eq!(
            next_step(&stale, &s, s.starts_ms(14)).unwrap(),
            Step::EndOverlap
        );
        // The clock went back: the newer primary is kept, no panic, no rotation.
        assert_eq!(
            next_step(&state(12, None), &s, s.starts_ms(10) + 5).unwrap(),
            Step::ClockBehind { epoch: 10 }
        );
        let live = state(12, Some((11, s.starts_ms(12) + 3_000)));
        assert_eq!(
            next_step(&live, &s, s.starts_ms(11)).unwrap(),
            Step::ClockBehind { epoch: 11 }
        );
        // An epoch that cannot be a rotation id is an error, not a wrap.
        let tiny = schedule(1, 0);
        assert!(next_step(&state(10, None), &tiny, u64::MAX).is_err());
    }

    fn node_dir(name: &str) -> (PathBuf, Config) {
        let dir =
            std::env::temp_dir().join(format!("lethe-rotation-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::mixnode::init(&dir, crate::node::runtime_config::Profile::Small).unwrap();
        let mut config = Config::load(&dir).unwrap();
        config.keys.rotation_interval_s = 8;
        config.keys.rotation_overlap_s = 3;
        config.replay.capacity_packets = Some(2_200); // 200/s x 11 s
        (dir, config)
    }

    #[test]
    fn first_start_adopts_the_init_key_as_the_current_epoch_and_restarts_catch_up() {
        let (dir, config) = node_dir("catch-up");
        let s = Schedule::from_keys(&config.keys).unwrap();
        let init_key = keyfile::read_private(&dir.join("keys/x25519_sphinx_primary")).unwrap();
        let t0 = s.starts_ms(100) + 5_000;
        let first = Rotation::start(&dir, &config.keys, &config.replay, t0).unwrap();
        assert_eq!(
            first.state(),
            &State {
                primary_since_ms: t0,
                ..state(100, None)
            }
        );
        assert_eq!(first.keys().primary.secret.to_bytes(), *init_key);
        drop(first);
        // Same epoch: unchanged.
        let same = Rotation::start(&dir, &config.keys, &config.replay, t0 + 2_000).unwrap();
        assert_eq!(same.state().primary_rotation_id, 100);
        assert!(same.keys().secondary.is_none());
        drop(same);
        // Next epoch, inside the overlap: rotated at once, the init key kept as secondary.
        let t1 = s.starts_ms(101) + 1_000;
        let next = Rotation::start(&dir, &config.keys, &config.replay, t1).unwrap();
        assert_eq!(
            next.state(),
            &State {
                primary_since_ms: t1,
                ..state(101, Some((100, s.starts_ms(101) + 3_000)))
            }
        );
        assert_eq!(
            next.keys().secondary.as_ref().unwrap().secret.to_bytes(),
            *init_key
        );
        assert!(dir.join("keys/x25519_sphinx_rot-101").exists());
        assert!(dir.join("data/replay-rot-101.bin").exists());
        assert_eq!(next.replay_set().rotation_ids().count(), 2);
        drop(next);
        // The clock went back two epochs: kept as is.
        let behind = Rotation::start(&dir, &config.keys, &config.replay, s.starts_ms(99)).unwrap();
        assert_eq!(behind.state().primary_rotation_id, 101);
        assert_eq!(behind.state().secondary_rotation_id, Some(100));
        drop(behind);
        // Three epochs later: the overlap ended while down, then rotated to the current
        // epoch with the old key (past its overlap) dropped, files included.
        let t4 = s.starts_ms(104) + 500;
        let late = Rotation::start(&dir, &config.keys, &config.replay, t4).unwrap();
        assert_eq!(
            late.state(),
            &State {
                primary_since_ms: t4,
                ..state(104, None)
            }
        );
        assert!(late.keys().secondary.is_none());
        assert_eq!(late.replay_set().rotation_ids().collect::<Vec<_>>(), [104]);
        assert!(!dir.join("keys/x25519_sphinx_primary").exists());
        assert!(!dir.join("keys/x25519_sphinx_rot-101").exists());
        assert!(!dir.join("data/replay-rot-101.bin").exists());
        assert!(dir.join("keys/x25519_sphinx_rot-104").exists());
        drop(late);
        // A longer interval renumbers: the day's epoch is far below the 8 s ids, which would
        // otherwise look like a clock gone back for ever.
        let mut daily = config.clone();
        daily.keys.rotation_interval_s = 86_400;
        daily.keys.rotation_overlap_s = 3_600;
        let day = Schedule::from_keys(&daily.keys).unwrap().epoch(t4).unwrap();
        assert!(day < 104);
        let renumbered = Rotation::start(&dir, &daily.keys, &daily.replay, t4).unwrap();
        assert_eq!(
            renumbered.state(),
            &State {
                primary_since_ms: t4,
                rotation_interval_s: Some(86_400),
                ..state(day, None)
            }
        );
        assert_eq!(
            renumbered.replay_set().rotation_ids().collect::<Vec<_>>(),
            [day]
        );
        assert!(!dir.join("keys/x25519_sphinx_rot-104").exists());
        drop(renumbered);
        let again = Rotation::start(&dir, &daily.keys, &daily.replay, t4 + 1_000).unwrap();
        assert_eq!(again.state().primary_rotation_id, day);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlap_must_be_shorter_than_the_interval() {
        let mut keys: Config = toml::from_str(TEMPLATE).unwrap();
        let schedule = Schedule::from_keys(&keys.keys).unwrap();
        assert_eq!(schedule.interval_ms, 86_400_000);
        assert_eq!(schedule.overlap_ms, 3_600_000);
        keys.keys.rotation_overlap_s = keys.keys.rotation_interval_s;
        assert!(Schedule::from_keys(&keys.keys).is_err());
        keys.keys.rotation_interval_s = 0; // disabled: the overlap is irrelevant
        assert!(!Schedule::from_keys(&keys.keys).unwrap().enabled());
    }
}
