//! Replay-filter persistence: the `[replay]` section, one filter per live Sphinx key loaded
//! from its snapshot (or fresh), snapshots written while running and at stop, and stale
//! snapshots removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_engine::core::NodeKeys;
use lethe_engine::{snapshot_path, ReplayFilter, ReplayFilterSet};
use serde::Deserialize;

use super::resolve;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    /// Packets (replay tags) one filter holds at `fp_rate`: packets/s × key lifetime. Configs
    /// written before it existed size from `packets_per_s × key_lifetime_s`, and the
    /// `--replay-packets-per-s` / `--replay-key-lifetime-s` flags clear it to do the same.
    #[serde(default)]
    pub capacity_packets: Option<u64>,
    /// Legacy sizing inputs (see `capacity_packets`); Nym's values when absent.
    #[serde(default = "replay_packets_per_s_default")]
    pub packets_per_s: u64,
    #[serde(default = "replay_key_lifetime_s_default")]
    pub key_lifetime_s: u64,
    pub fp_rate: f64,
    pub snapshot_interval_s: u64,
    pub data_dir: PathBuf,
}

fn replay_packets_per_s_default() -> u64 {
    lethe_engine::limits::REPLAY_PACKETS_PER_S_DEFAULT
}

fn replay_key_lifetime_s_default() -> u64 {
    lethe_engine::limits::REPLAY_KEY_LIFETIME_S
}

impl ReplaySection {
    /// Tags one filter is sized for: `capacity_packets`, else `packets_per_s × key_lifetime_s`.
    pub fn capacity_packets(&self) -> u64 {
        self.capacity_packets
            .unwrap_or_else(|| self.packets_per_s.saturating_mul(self.key_lifetime_s))
    }

    /// One filter's geometry, or why the sizing is refused (out of range, too large).
    pub fn params(&self) -> Result<lethe_engine::ReplayParams, String> {
        lethe_engine::ReplayParams::for_capacity(self.capacity_packets(), self.fp_rate)
            .map_err(|e| format!("replay: {e}"))
    }
}

impl ReplaySection {
    /// The run flags: `--replay-packets-per-s` / `--replay-key-lifetime-s` size from their
    /// product (clearing `capacity_packets`), `--replay-capacity-packets` wins over both.
    pub fn apply_flags(
        &mut self,
        packets_per_s: Option<u64>,
        key_lifetime_s: Option<u64>,
        capacity_packets: Option<u64>,
    ) {
        if packets_per_s.is_some() || key_lifetime_s.is_some() {
            self.capacity_packets = None;
        }
        self.packets_per_s = packets_per_s.unwrap_or(self.packets_per_s);
        self.key_lifetime_s = key_lifetime_s.unwrap_or(self.key_lifetime_s);
        if capacity_packets.is_some() {
            self.capacity_packets = capacity_packets;
        }
    }
}

/// `capacity_packets` and the legacy `packets_per_s` / `key_lifetime_s` in one file would
/// leave the reader guessing which one sizes the filter.
pub(crate) fn check_keys(text: &str) -> Result<(), String> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let replay = table.get("replay").and_then(toml::Value::as_table);
    let has = |key: &str| replay.is_some_and(|t| t.contains_key(key));
    if has("capacity_packets") && (has("packets_per_s") || has("key_lifetime_s")) {
        return Err(
            "replay: set capacity_packets (= packets/s x key lifetime in s) or the \
                    older packets_per_s and key_lifetime_s, not both"
                .into(),
        );
    }
    Ok(())
}

/// One filter per live key: the snapshot if there is one, else a fresh filter.
pub fn load(
    dir: &Path,
    replay: &ReplaySection,
    keys: &NodeKeys,
) -> Result<ReplayFilterSet, String> {
    let data_dir = resolve(dir, &replay.data_dir);
    let params = replay.params()?;
    let mut set = ReplayFilterSet::default();
    let ids = [
        Some(keys.primary.rotation_id),
        keys.secondary.as_ref().map(|k| k.rotation_id),
    ];
    for id in ids.into_iter().flatten() {
        let path = snapshot_path(&data_dir, id);
        let filter = if path.exists() {
            let filter =
                ReplayFilter::load(&path, id).map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!(rotation = id, file = %path.display(), "replay filter loaded");
            filter
        } else {
            let filter = ReplayFilter::try_new(id, params)
                .map_err(|_| format!("replay: cannot allocate {} bytes", params.bytes()))?;
            tracing::info!(
                rotation = id,
                bytes = params.bytes(),
                capacity_packets = replay.capacity_packets(),
                fp_rate = replay.fp_rate,
                "replay filter allocated"
            );
            filter
        };
        set.insert(Arc::new(filter))
            .map_err(|e| format!("replay: {e:?}"))?;
    }
    remove_stale_snapshots(&data_dir, &set);
    for filter in set.rotation_ids().filter_map(|id| set.get(id)) {
        check_fill(filter);
    }
    Ok(set)
}

/// Warns when a filter holds more than it was sized for: its false-positive rate (fresh
/// packets dropped as replays) is then above the target. Estimated from the fraction of bits
/// set: a fresh tag is a false positive when its `k` bits are all set, about `fill^k` (each
/// tag's bits lie in one word; uneven words make it a slight underestimate). Reads the whole
/// filter: called at start and after a snapshot, on the snapshot thread.
fn check_fill(filter: &ReplayFilter) -> f64 {
    let params = filter.params();
    let fill = filter.fill_ratio();
    let fp_estimate = fill.powi(params.hash_count as i32);
    let fp_target = params.false_positive_rate();
    if fp_estimate > fp_target {
        tracing::warn!(
            rotation = filter.rotation_id(),
            fill_ratio = fill,
            fp_estimate,
            fp_target,
            capacity_packets = params.items_expected,
            "replay filter past its capacity: fresh packets are dropped as replays more often \
             than its false-positive target; raise replay.capacity_packets (packets/s x key \
             lifetime) or rotate the key"
        );
    }
    fp_estimate
}

/// Deletes snapshots in `data_dir` of rotations that are not live: a key no longer accepted
/// needs no filter, and each file is a filter's size (1.8 GB by default). They are left by a
/// stop between a rotation's steps, and by gateways before they dropped their unused
/// secondary key's filter.
fn remove_stale_snapshots(data_dir: &Path, set: &ReplayFilterSet) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("replay-rot-"))
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<lethe_engine::replay::RotationId>().ok());
        let Some(id) = id else { continue };
        if set.get(id).is_some() {
            continue;
        }
        let path = entry.path();
        let bytes = entry.metadata().map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                rotation = id,
                file = %path.display(),
                bytes,
                "replay snapshot of a rotation no longer live removed"
            ),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove stale replay snapshot")
            }
        }
    }
}

/// Snapshots each live filter that took a new tag since its last snapshot (see
/// `ReplayFilter::save_if_changed`), logging the file, its size and the time it took.
pub fn save(data_dir: &Path, set: &ReplayFilterSet) -> Result<(), String> {
    for id in set.rotation_ids() {
        if let Some(filter) = set.get(id) {
            let path = snapshot_path(data_dir, id);
            let started = Instant::now();
            let written = filter
                .save_if_changed(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if written {
                let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let fp_estimate = check_fill(filter);
                tracing::info!(
                    rotation = id,
                    file = %path.display(),
                    bytes = filter.snapshot_bytes(),
                    duration_ms,
                    fp_estimate,
                    "replay snapshot written"
                );
            } else {
                tracing::debug!(
                    rotation = id,
                    file = %path.display(),
                    "replay snapshot not rewritten: no packet accepted since the last"
                );
            }
        }
    }
    Ok(())
}

/// Saves the live filters under the set's lock (rotation changes the set under it too).
pub fn save_locked(data_dir: &Path, replay: &Mutex<ReplayFilterSet>) -> Result<(), String> {
    let set = replay.lock().map_err(|_| "replay set lock poisoned")?;
    save(data_dir, &set)
}

pub fn spawn_snapshots(
    data_dir: PathBuf,
    replay: Arc<Mutex<ReplayFilterSet>>,
    interval_s: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let interval = Duration::from_secs(interval_s.max(1));
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(crate::limits::STOP_POLL_MS));
            if last.elapsed() >= interval {
                if let Err(e) = save_locked(&data_dir, &replay) {
                    tracing::error!(error = %e, "replay snapshot failed");
                }
                last = Instant::now();
            }
        }
    })
}
