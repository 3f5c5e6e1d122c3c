//! Replay filter for 32-byte Sphinx replay tags, shared by all cores without a lock.
//!
//! A blocked Bloom filter over `AtomicU64` words. Tags are HKDF outputs, uniformly random and
//! unknown to anyone but the sender, so bits are taken straight from the tag: bytes 0..8 pick
//! a block of `block_words` words (1 to 8, i.e. at most one cache line), bytes 8..32 give the
//! `hash_count` bit positions inside it. `check_and_insert` sets the bits with one `fetch_or`
//! per touched word and reports a tag *fresh* iff this call newly set at least one bit.
//! (A sender knows its own tags and could grind them into chosen blocks, but others' tags are
//! unknown to it, so like any Bloom filter only sheer volume raises the FP rate it causes.)
//!
//! Race semantics:
//! - No false negatives: once a call for a tag has returned, every later call for it (in
//!   happens-before order) reports seen, because bits are only ever set.
//! - `block_words = 1` (the default) is exact: the whole tag is one `fetch_or` on one word, so
//!   concurrent calls for the same tag are linearised by that word's modification order and at
//!   most one of them reports fresh.
//! - `block_words > 1` is not exact: with words `w1 < w2` both holding unset bits, call A can
//!   newly set `w1` first while call B newly sets `w2` first, and both report fresh. No ordering
//!   trick fixes that with bits alone (B cannot tell A's bits in `w1` from older tags'). The
//!   window is the few ns between one call's first and last `fetch_or`, which an attacker
//!   racing duplicates over two connections can hit now and then; so this mode is for memory-
//!   constrained nodes only. It needs ~30 bits per item at 1e-5 against ~81 for one word.
//!
//! FP math: with `n` items over `b` blocks of `B` bits and `k` positions, a block's load is
//! Poisson(λ = n/b) and a fresh tag is a false positive iff its `k` bits are all set:
//! `FP = Σ_j Pois(j; λ) · (1 − (1 − 1/B)^(k·j))^k`. [`ReplayParams::for_items`] picks the
//! fewest blocks (then the best `k`) meeting the target and reports the achieved rate.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::limits::{
    ReplayConfig, REPLAY_BLOCK_WORDS_MAX, REPLAY_CAPACITY_PACKETS_MAX, REPLAY_CAPACITY_PACKETS_MIN,
    REPLAY_FILTERS_LIVE_MAX, REPLAY_FILTER_BYTES_MAX, REPLAY_FP_RATE_MIN, REPLAY_HASHES_MAX,
};

pub type ReplayTag = [u8; 32];
/// The Sphinx key rotation a filter belongs to (Nym's `rotation_id`).
pub type RotationId = u32;

#[repr(align(64))]
#[derive(Default)]
struct Line([AtomicU64; 8]);

/// Geometry of one filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayParams {
    pub block_count: u64,
    pub block_words: u32,
    pub hash_count: u32,
    /// What the filter was sized for (informative; stored in snapshots).
    pub items_expected: u64,
}

#[derive(Debug, PartialEq)]
pub enum SizingError {
    /// No filter within `REPLAY_FILTER_BYTES_MAX` holds `items` at `fp_rate`.
    TooLarge {
        items: u64,
        fp_rate: f64,
    },
    /// `capacity_packets` outside `[REPLAY_CAPACITY_PACKETS_MIN, REPLAY_CAPACITY_PACKETS_MAX]`.
    Capacity {
        items: u64,
    },
    /// `fp_rate` outside `[REPLAY_FP_RATE_MIN, 1)` (or NaN).
    FpRate {
        fp_rate: f64,
    },
    Config(crate::limits::ConfigError),
}

impl fmt::Display for SizingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizingError::TooLarge { items, fp_rate } => write!(
                f,
                "a replay filter for {items} packets at false-positive rate {fp_rate} needs more \
                 than the {} GiB limit: lower capacity_packets (packets/s x key lifetime) or \
                 raise fp_rate",
                REPLAY_FILTER_BYTES_MAX >> 30
            ),
            SizingError::Capacity { items } => write!(
                f,
                "capacity_packets = {items}: must be in [{REPLAY_CAPACITY_PACKETS_MIN}, \
                 {REPLAY_CAPACITY_PACKETS_MAX}] (packets/s x key lifetime in s)"
            ),
            SizingError::FpRate { fp_rate } => write!(
                f,
                "fp_rate = {fp_rate}: must be in [{REPLAY_FP_RATE_MIN}, 1) (e.g. 1e-5)"
            ),
            SizingError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SizingError {}

/// Probability that a fresh tag is reported seen (see the module doc).
pub fn false_positive_rate(items: u64, block_count: u64, block_words: u32, hash_count: u32) -> f64 {
    if block_count == 0 {
        return 1.0;
    }
    let block_bits = f64::from(block_words * 64);
    let lambda = items as f64 / block_count as f64;
    if lambda > 64.0 * block_bits {
        // Saturated (every bit hit ~64 times over): FP is 1 to within e^-64, and summing
        // λ Poisson terms would take forever for absurd inputs.
        return 1.0;
    }
    let per_item_unset = 1.0 - 1.0 / block_bits;
    let k = f64::from(hash_count);
    // Sum the Poisson terms around the mean; the tail beyond ~12σ is negligible.
    let j_max = (lambda + 12.0 * lambda.sqrt() + 60.0) as u64;
    let mut sum = 0.0;
    let mut pois = (-lambda).exp();
    let mut pois_log = -lambda; // fall back to logs when exp underflows (huge λ)
    for j in 0..=j_max {
        let p = if pois > 0.0 { pois } else { pois_log.exp() };
        let block_fp = (1.0 - per_item_unset.powf(k * j as f64)).powf(k);
        sum += p * block_fp;
        pois *= lambda / (j + 1) as f64;
        pois_log += lambda.ln() - ((j + 1) as f64).ln();
    }
    sum.min(1.0)
}

impl ReplayParams {
    /// Fewest blocks (then best hash count) reaching `fp_rate` for `items` tags.
    pub fn for_items(items: u64, fp_rate: f64, block_words: u32) -> Result<Self, SizingError> {
        assert!(block_words.is_power_of_two() && block_words <= REPLAY_BLOCK_WORDS_MAX);
        let items = items.max(1);
        let block_bytes = u64::from(block_words) * 8;
        let block_count_max = REPLAY_FILTER_BYTES_MAX / block_bytes;
        let mut best: Option<(u64, u32)> = None;
        for hash_count in 1..=REPLAY_HASHES_MAX {
            let fits = |blocks: u64| {
                false_positive_rate(items, blocks, block_words, hash_count) <= fp_rate
            };
            if !fits(block_count_max) {
                continue;
            }
            // FP falls monotonically with more blocks: binary search the smallest that fits.
            let (mut low, mut high) = (1u64, block_count_max);
            while low < high {
                let mid = low + (high - low) / 2;
                if fits(mid) {
                    high = mid;
                } else {
                    low = mid + 1;
                }
            }
            if best.is_none_or(|(blocks, _)| low < blocks) {
                best = Some((low, hash_count));
            }
        }
        let Some((block_count, hash_count)) = best else {
            return Err(SizingError::TooLarge { items, fp_rate });
        };
        Ok(ReplayParams {
            block_count,
            block_words,
            hash_count,
            items_expected: items,
        })
    }

    /// The exact filter (one word per tag: see the module doc) holding `capacity_packets` tags
    /// at `fp_rate`, both checked against the limits: what a node's `replay.capacity_packets`
    /// and `replay.fp_rate` configure.
    pub fn for_capacity(capacity_packets: u64, fp_rate: f64) -> Result<Self, SizingError> {
        if !(REPLAY_CAPACITY_PACKETS_MIN..=REPLAY_CAPACITY_PACKETS_MAX).contains(&capacity_packets)
        {
            return Err(SizingError::Capacity {
                items: capacity_packets,
            });
        }
        // NaN is in no range, so it fails too.
        if !(REPLAY_FP_RATE_MIN..1.0).contains(&fp_rate) {
            return Err(SizingError::FpRate { fp_rate });
        }
        Self::for_items(capacity_packets, fp_rate, 1)
    }

    pub fn from_config(config: &ReplayConfig) -> Result<Self, SizingError> {
        config.validate().map_err(SizingError::Config)?;
        Self::for_items(config.items_expected(), config.fp_rate, config.block_words)
    }

    pub fn bytes(&self) -> u64 {
        self.line_count() * 64
    }

    pub fn bits_per_item(&self) -> f64 {
        (self.block_count * u64::from(self.block_words) * 64) as f64 / self.items_expected as f64
    }

    /// False-positive rate once `items_expected` tags are in.
    pub fn false_positive_rate(&self) -> f64 {
        false_positive_rate(
            self.items_expected,
            self.block_count,
            self.block_words,
            self.hash_count,
        )
    }

    fn line_count(&self) -> u64 {
        (self.block_count * u64::from(self.block_words)).div_ceil(8)
    }

    fn is_valid(&self) -> bool {
        let words_ok =
            self.block_words.is_power_of_two() && self.block_words <= REPLAY_BLOCK_WORDS_MAX;
        let hashes_ok = self.hash_count >= 1 && self.hash_count <= REPLAY_HASHES_MAX;
        let blocks_ok = self.block_count >= 1
            && self.block_count <= REPLAY_FILTER_BYTES_MAX / (u64::from(self.block_words) * 8);
        words_ok && hashes_ok && blocks_ok
    }
}

/// One filter: the tags accepted under one Sphinx key rotation.
pub struct ReplayFilter {
    rotation_id: RotationId,
    params: ReplayParams,
    lines: Box<[Line]>,
    /// A tag was newly inserted since the last snapshot (`save_if_changed`). Read on every
    /// fresh insert but written only when it flips, so the cores share its line read-only
    /// between snapshots; SeqCst orders the flag with the bits (see `save_if_changed`).
    changed: AtomicBool,
    /// Allocated empty (not loaded): with nothing inserted, it needs no file (a restart
    /// without one allocates the same empty filter).
    created_empty: bool,
}

impl fmt::Debug for ReplayFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayFilter")
            .field("rotation_id", &self.rotation_id)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl ReplayFilter {
    /// Allocates and zeroes the whole filter now (touching every page, so no page faults later).
    /// Aborts if memory is short, like any Rust allocation; see `try_new`.
    pub fn new(rotation_id: RotationId, params: ReplayParams) -> Self {
        assert!(params.is_valid());
        let mut lines = Vec::with_capacity(params.line_count() as usize);
        ask_for_huge_pages(&mut lines);
        lines.resize_with(params.line_count() as usize, Line::default);
        Self::from_lines(rotation_id, params, lines)
    }

    /// Like `new`, but reports an allocation failure (startup can then refuse cleanly).
    pub fn try_new(
        rotation_id: RotationId,
        params: ReplayParams,
    ) -> Result<Self, std::collections::TryReserveError> {
        assert!(params.is_valid());
        let mut lines = Vec::new();
        lines.try_reserve_exact(params.line_count() as usize)?;
        ask_for_huge_pages(&mut lines);
        lines.resize_with(params.line_count() as usize, Line::default);
        Ok(Self::from_lines(rotation_id, params, lines))
    }

    fn from_lines(rotation_id: RotationId, params: ReplayParams, lines: Vec<Line>) -> Self {
        assert_eq!(lines.len() as u64, params.line_count());
        ReplayFilter {
            rotation_id,
            params,
            lines: lines.into_boxed_slice(),
            changed: AtomicBool::new(false),
            created_empty: true,
        }
    }

    pub fn rotation_id(&self) -> RotationId {
        self.rotation_id
    }

    pub fn params(&self) -> &ReplayParams {
        &self.params
    }

    /// Returns `true` if the tag was (probably) seen before; records it either way.
    pub fn check_and_insert(&self, tag: &ReplayTag) -> bool {
        let (first_word, masks) = self.locate(tag);
        let mut fresh = false;
        // Ascending word order; one atomic RMW per touched word.
        for (offset, &mask) in masks
            .iter()
            .enumerate()
            .take(self.params.block_words as usize)
        {
            if mask == 0 {
                continue;
            }
            // SeqCst (the same instruction as AcqRel on x86-64 and ARMv8.1): ordered with the
            // `changed` flag below for `save_if_changed`.
            let old = self
                .word(first_word + offset as u64)
                .fetch_or(mask, Ordering::SeqCst);
            fresh |= old & mask != mask;
        }
        if fresh && !self.changed.load(Ordering::SeqCst) {
            self.changed.store(true, Ordering::SeqCst);
        }
        !fresh
    }

    /// Starts loading the cache line `check_and_insert(tag)` will touch, without waiting for
    /// it: a filter sized for a day of traffic is far larger than the caches, so each check
    /// is a memory miss, and a batch's misses overlap when all are prefetched first.
    pub fn prefetch(&self, tag: &ReplayTag) {
        prefetch_line(self.word(self.first_word(tag)));
    }

    /// Returns `true` if all the tag's bits are set, without inserting.
    pub fn contains(&self, tag: &ReplayTag) -> bool {
        let (first_word, masks) = self.locate(tag);
        masks
            .iter()
            .enumerate()
            .take(self.params.block_words as usize)
            .all(|(offset, &mask)| {
                self.word(first_word + offset as u64)
                    .load(Ordering::Acquire)
                    & mask
                    == mask
            })
    }

    /// Fraction of bits set: a cheap health figure for metrics.
    pub fn fill_ratio(&self) -> f64 {
        let ones: u64 = self
            .lines
            .iter()
            .flat_map(|line| line.0.iter())
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        ones as f64 / (self.params.block_count * u64::from(self.params.block_words) * 64) as f64
    }

    /// First word of the tag's block, and one mask per word of the block.
    /// The first word of the tag's block (from the tag's first 8 bytes).
    fn first_word(&self, tag: &ReplayTag) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&tag[..8]);
        // Multiply-shift maps a uniform u64 onto [0, block_count) without a division.
        let block = ((u128::from(u64::from_le_bytes(head)) * u128::from(self.params.block_count))
            >> 64) as u64;
        debug_assert!(block < self.params.block_count);
        block * u64::from(self.params.block_words)
    }

    fn locate(&self, tag: &ReplayTag) -> (u64, [u64; REPLAY_BLOCK_WORDS_MAX as usize]) {
        let bits_per_position = 6 + self.params.block_words.trailing_zeros();
        let position_mask = (1u32 << bits_per_position) - 1;
        let mut masks = [0u64; REPLAY_BLOCK_WORDS_MAX as usize];
        let mut pool = u128::from_le_bytes(tag[8..24].try_into().unwrap_or([0; 16]));
        let mut pool_bits = 128;
        for _ in 0..self.params.hash_count {
            if pool_bits < bits_per_position {
                // Refill from the last 8 bytes (at most once: 128 + 64 ≥ 16 × 9 bits).
                pool = u128::from(u64::from_le_bytes(tag[24..32].try_into().unwrap_or([0; 8])));
                pool_bits = 64;
            }
            let position = (pool as u32) & position_mask;
            pool >>= bits_per_position;
            pool_bits -= bits_per_position;
            masks[(position >> 6) as usize] |= 1u64 << (position & 63);
        }
        (self.first_word(tag), masks)
    }

    fn word(&self, index: u64) -> &AtomicU64 {
        &self.lines[(index / 8) as usize].0[(index % 8) as usize]
    }
}

/// The live filters, keyed by rotation id: current plus the previous one (overlap) or the
/// pre-announced next one. Cheap to clone (`Arc`s); the control plane builds a new set on
/// rotation and hands it to the cores. A filter's memory is freed when the last set holding it
/// is dropped.
#[derive(Clone, Debug, Default)]
pub struct ReplayFilterSet {
    filters: [Option<Arc<ReplayFilter>>; REPLAY_FILTERS_LIVE_MAX as usize],
}

#[derive(Debug, PartialEq, Eq)]
pub enum SetError {
    /// All slots hold a live rotation: remove one first.
    Full,
    AlreadyPresent(RotationId),
}

impl ReplayFilterSet {
    pub fn insert(&mut self, filter: Arc<ReplayFilter>) -> Result<(), SetError> {
        let id = filter.rotation_id();
        if self.get(id).is_some() {
            return Err(SetError::AlreadyPresent(id));
        }
        let Some(slot) = self.filters.iter_mut().find(|f| f.is_none()) else {
            return Err(SetError::Full);
        };
        *slot = Some(filter);
        Ok(())
    }

    pub fn remove(&mut self, rotation_id: RotationId) -> Option<Arc<ReplayFilter>> {
        let slot = self
            .filters
            .iter_mut()
            .find(|f| f.as_ref().is_some_and(|f| f.rotation_id() == rotation_id))?;
        slot.take()
    }

    pub fn get(&self, rotation_id: RotationId) -> Option<&Arc<ReplayFilter>> {
        self.filters
            .iter()
            .flatten()
            .find(|f| f.rotation_id() == rotation_id)
    }

    pub fn rotation_ids(&self) -> impl Iterator<Item = RotationId> + '_ {
        self.filters.iter().flatten().map(|f| f.rotation_id())
    }

    /// `None` if no filter is live for that rotation: the caller drops the packet (its key is
    /// unknown or expired, so it could not have been decrypted legitimately anyway).
    pub fn check_and_insert(&self, rotation_id: RotationId, tag: &ReplayTag) -> Option<bool> {
        self.get(rotation_id).map(|f| f.check_and_insert(tag))
    }

    /// [`ReplayFilter::prefetch`] on the filter of `rotation_id`, if there is one.
    pub fn prefetch(&self, rotation_id: RotationId, tag: &ReplayTag) {
        if let Some(filter) = self.get(rotation_id) {
            filter.prefetch(tag);
        }
    }
}

/// Asks the kernel to back the (still untouched) capacity of `lines` with transparent huge
/// pages, best effort: each check reads one random line of a filter far larger than the TLBs
/// cover with 4 KiB pages, so a page walk came with every memory miss. Most distributions
/// enable THP only on request (`madvise`).
fn ask_for_huge_pages(lines: &mut Vec<Line>) {
    const HUGE_PAGE_BYTES: usize = 2 << 20;
    let bytes = lines.capacity() * std::mem::size_of::<Line>();
    if bytes < 2 * HUGE_PAGE_BYTES {
        return;
    }
    // madvise wants a page-aligned start; the kernel uses the whole huge pages inside.
    let start = lines.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(4096);
    // SAFETY: the range lies inside `lines`' allocation, which outlives the call; MADV_HUGEPAGE
    // changes no contents, only how the kernel backs the pages.
    unsafe {
        let _ = libc::madvise(
            aligned as *mut libc::c_void,
            bytes - (aligned - start),
            libc::MADV_HUGEPAGE,
        );
    }
}

/// A hint to bring `word`'s cache line towards L1; never faults, never waits.
#[inline]
fn prefetch_line(word: &AtomicU64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect (it cannot fault or change memory), and
    // the address is that of a live reference.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            word.as_ptr().cast::<i8>().cast_const(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = word;
}

// ---------------------------------------------------------------------------------------------
// Persistence.

const MAGIC: [u8; 8] = *b"LETHERPF";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 48;
const CHUNK_WORDS: usize = 8 * 1024;

#[derive(Debug)]
pub enum PersistError {
    Io(io::Error),
    BadMagic,
    UnsupportedVersion(u32),
    HeaderChecksum,
    BadParams,
    RotationMismatch {
        expected: RotationId,
        found: RotationId,
    },
    /// The file is shorter or longer than its header says.
    Length {
        expected: u64,
        found: u64,
    },
    PayloadChecksum,
    OutOfMemory {
        bytes: u64,
    },
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Io(e) => write!(f, "replay filter file I/O: {e}"),
            PersistError::BadMagic => write!(f, "not a replay filter file (bad magic)"),
            PersistError::UnsupportedVersion(v) => {
                write!(f, "unsupported replay filter format version {v}")
            }
            PersistError::HeaderChecksum => write!(f, "replay filter header is corrupt (checksum)"),
            PersistError::BadParams => {
                write!(f, "replay filter header has out-of-range parameters")
            }
            PersistError::RotationMismatch { expected, found } => {
                write!(
                    f,
                    "replay filter is for rotation {found}, expected {expected}"
                )
            }
            PersistError::Length { expected, found } => {
                write!(
                    f,
                    "replay filter file is {found} bytes, header implies {expected}"
                )
            }
            PersistError::PayloadChecksum => {
                write!(f, "replay filter payload is corrupt (checksum)")
            }
            PersistError::OutOfMemory { bytes } => {
                write!(f, "cannot allocate {bytes} bytes for the replay filter")
            }
        }
    }
}

impl std::error::Error for PersistError {}

impl From<io::Error> for PersistError {
    fn from(e: io::Error) -> Self {
        PersistError::Io(e)
    }
}

/// Word-at-a-time checksum (not cryptographic: it detects torn or corrupt files, and a 2 GB
/// filter must hash at memory speed).
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

    fn update(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0xFF51_AFD7_ED55_8CCD)
            .rotate_left(29);
    }

    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }
}

fn header_bytes(rotation_id: RotationId, params: &ReplayParams) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&rotation_id.to_le_bytes());
    h[16..24].copy_from_slice(&params.block_count.to_le_bytes());
    h[24..28].copy_from_slice(&params.block_words.to_le_bytes());
    h[28..32].copy_from_slice(&params.hash_count.to_le_bytes());
    h[32..40].copy_from_slice(&params.items_expected.to_le_bytes());
    let mut sum = Checksum(Checksum::SEED);
    for chunk in h[..40].chunks_exact(8) {
        sum.update(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
    }
    h[40..48].copy_from_slice(&sum.finish().to_le_bytes());
    h
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

impl ReplayFilter {
    /// Writes a snapshot atomically: temp file, fsync, rename, fsync of the directory.
    ///
    /// Safe to call while other threads insert: bits only get set, so the snapshot holds at
    /// least every insert that completed before the call (each word is read once, atomically,
    /// and the checksum covers exactly what was written). A restart thus loses at most the
    /// inserts made since the snapshot started: the replay window is the snapshot interval.
    pub fn save(&self, path: &Path) -> Result<(), PersistError> {
        let tmp = temp_path(path);
        let result = self.write_file(&tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Saves a snapshot unless nothing was inserted since the last one and `path` holds it (or
    /// the filter was allocated empty and is still empty): the file would be byte for byte the
    /// same, and a production filter is ~1.8 GB of fsync'd writes every snapshot interval and
    /// at every stop of an idle node. Returns whether it wrote.
    ///
    /// No insert is lost to the skip: an insert that read the flag as already set did so
    /// before this call cleared it (SeqCst: one total order over the flag and the bits), so
    /// its bits, set before that read, are in this snapshot's word reads.
    pub fn save_if_changed(&self, path: &Path) -> Result<bool, PersistError> {
        let changed = self.changed.swap(false, Ordering::SeqCst);
        if !changed && (self.created_empty || path.exists()) {
            return Ok(false);
        }
        let result = self.save(path);
        if result.is_err() {
            self.changed.store(true, Ordering::SeqCst); // try again next time
        }
        result.map(|()| true)
    }

    /// Bytes a snapshot file of this filter takes.
    pub fn snapshot_bytes(&self) -> u64 {
        snapshot_file_bytes(&self.params)
    }

    fn write_file(&self, tmp: &Path) -> Result<(), PersistError> {
        // 0600 whatever the umask: the filter tells which packets this node processed.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(tmp)?
        };
        // A leftover temp file keeps its old mode through `open`.
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header_bytes(self.rotation_id, &self.params))?;
        let mut sum = Checksum(Checksum::SEED);
        let mut chunk = Vec::with_capacity(CHUNK_WORDS * 8);
        for line in self.lines.iter() {
            for word in &line.0 {
                let value = word.load(Ordering::SeqCst);
                sum.update(value);
                chunk.extend_from_slice(&value.to_le_bytes());
            }
            if chunk.len() >= CHUNK_WORDS * 8 {
                out.write_all(&chunk)?;
                chunk.clear();
            }
        }
        out.write_all(&chunk)?;
        out.write_all(&sum.finish().to_le_bytes())?;
        let file = out
            .into_inner()
            .map_err(|e| PersistError::Io(e.into_error()))?;
        file.sync_all()?;
        Ok(())
    }

    /// Loads a snapshot written by `save`, refusing it unless it is intact and belongs to
    /// `rotation_id`. The geometry comes from the file (a config change must not orphan the
    /// tags already recorded under this key).
    pub fn load(path: &Path, rotation_id: RotationId) -> Result<Self, PersistError> {
        let file = File::open(path)?;
        let file_bytes = file.metadata()?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut h = [0u8; HEADER_BYTES];
        input.read_exact(&mut h)?;
        if h[0..8] != MAGIC {
            return Err(PersistError::BadMagic);
        }
        if header_bytes(le_u32(&h[12..16]), &params_from_header(&h)) != h {
            // Recomputing the header from its own fields checks the checksum and padding.
            let version = le_u32(&h[8..12]);
            if version != FORMAT_VERSION {
                return Err(PersistError::UnsupportedVersion(version));
            }
            return Err(PersistError::HeaderChecksum);
        }
        let params = params_from_header(&h);
        if !params.is_valid() {
            return Err(PersistError::BadParams);
        }
        let found = le_u32(&h[12..16]);
        if found != rotation_id {
            return Err(PersistError::RotationMismatch {
                expected: rotation_id,
                found,
            });
        }
        let expected = snapshot_file_bytes(&params);
        if file_bytes != expected {
            return Err(PersistError::Length {
                expected,
                found: file_bytes,
            });
        }
        let mut filter =
            ReplayFilter::try_new(rotation_id, params).map_err(|_| PersistError::OutOfMemory {
                bytes: params.bytes(),
            })?;
        filter.created_empty = false;
        let mut sum = Checksum(Checksum::SEED);
        let mut line_bytes = [0u8; 64];
        for line in filter.lines.iter() {
            input.read_exact(&mut line_bytes)?;
            for (word, bytes) in line.0.iter().zip(line_bytes.chunks_exact(8)) {
                let value = le_u64(bytes);
                sum.update(value);
                word.store(value, Ordering::Relaxed);
            }
        }
        let mut trailer = [0u8; 8];
        input.read_exact(&mut trailer)?;
        if u64::from_le_bytes(trailer) != sum.finish() {
            return Err(PersistError::PayloadChecksum);
        }
        Ok(filter)
    }
}

/// Header, the filter's lines, checksum trailer.
fn snapshot_file_bytes(params: &ReplayParams) -> u64 {
    HEADER_BYTES as u64 + params.line_count() * 64 + 8
}

fn params_from_header(h: &[u8; HEADER_BYTES]) -> ReplayParams {
    ReplayParams {
        block_count: le_u64(&h[16..24]),
        block_words: le_u32(&h[24..28]),
        hash_count: le_u32(&h[28..32]),
        items_expected: le_u64(&h[32..40]),
    }
}

/// Where a rotation's snapshot lives in `dir` (one file per rotation, as Nym's `rot-<id>`).
pub fn snapshot_path(dir: &Path, rotation_id: RotationId) -> PathBuf {
    dir.join(format!("replay-rot-{rotation_id}.bin"))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_matches_nym_scale() {
        // Nym: 2000 pps × 25 h = 180 M items at 1e-5 → ~0.54 GB for a standard Bloom filter.
        let exact = ReplayParams::for_items(180_000_000, 1e-5, 1).unwrap();
        assert!(exact.false_positive_rate() <= 1e-5);
        let line = ReplayParams::for_items(180_000_000, 1e-5, 8).unwrap();
        assert!(line.false_positive_rate() <= 1e-5);
        assert!(line.bytes() < exact.bytes());
        assert!(
            line.bits_per_item() > 24.0 && line.bits_per_item() < 34.0,
            "{line:?}"
        );
        assert!(
            exact.bits_per_item() > 50.0 && exact.bits_per_item() < 90.0,
            "{exact:?}"
        );
    }

    #[test]
    fn capacity_sizing_checks_its_inputs() {
        let small = ReplayParams::for_capacity(4_200_000, 1e-5).unwrap();
        assert!(small.false_positive_rate() <= 1e-5);
        assert!(small.bytes() < 48 << 20, "{}", small.bytes());
        assert!(matches!(
            ReplayParams::for_capacity(999, 1e-5),
            Err(SizingError::Capacity { items: 999 })
        ));
        assert!(matches!(
            ReplayParams::for_capacity(1_000_000, f64::NAN),
            Err(SizingError::FpRate { .. })
        ));
        assert!(matches!(
            ReplayParams::for_capacity(1_000_000, 1.0),
            Err(SizingError::FpRate { .. })
        ));
        let err = ReplayParams::for_capacity(REPLAY_CAPACITY_PACKETS_MAX, 1e-12).unwrap_err();
        assert!(err.to_string().contains("lower capacity_packets"), "{err}");
    }

    #[test]
    fn a_snapshot_is_written_only_when_a_tag_was_inserted_since_the_last() {
        let dir = std::env::temp_dir().join(format!("lethe-replay-changed-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = snapshot_path(&dir, 3);
        let filter = ReplayFilter::new(3, ReplayParams::for_items(1_000, 1e-5, 1).unwrap());
        // Empty since allocated: no file needed (a restart allocates the same empty filter).
        assert!(!filter.save_if_changed(&path).unwrap());
        assert!(!path.exists());
        assert!(!filter.check_and_insert(&[5; 32]));
        assert!(filter.save_if_changed(&path).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().len(), filter.snapshot_bytes());
        assert!(
            !filter.save_if_changed(&path).unwrap(),
            "nothing inserted since"
        );
        assert!(filter.check_and_insert(&[5; 32])); // a replay changes nothing
        assert!(!filter.save_if_changed(&path).unwrap());
        let loaded = ReplayFilter::load(&path, 3).unwrap();
        assert!(loaded.contains(&[5; 32]));
        assert!(
            !loaded.save_if_changed(&path).unwrap(),
            "loaded = what the file holds"
        );
        fs::remove_file(&path).unwrap();
        assert!(
            loaded.save_if_changed(&path).unwrap(),
            "the file is gone: rewritten"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn oversize_is_refused() {
        assert!(matches!(
            ReplayParams::for_items(u64::MAX / 2, 1e-9, 1),
            Err(SizingError::TooLarge { .. })
        ));
    }

    #[test]
    fn insert_then_seen() {
        let params = ReplayParams::for_items(1_000, 1e-5, 1).unwrap();
        let filter = ReplayFilter::new(7, params);
        let tag = [0xA5; 32];
        assert!(!filter.contains(&tag));
        assert!(!filter.check_and_insert(&tag));
        assert!(filter.check_and_insert(&tag));
        assert!(filter.contains(&tag));
    }

    #[test]
    fn set_keys_by_rotation() {
        let params = ReplayParams::for_items(1_000, 1e-5, 1).unwrap();
        let mut set = ReplayFilterSet::default();
        for id in 1..=3 {
            set.insert(Arc::new(ReplayFilter::new(id, params))).unwrap();
        }
        assert_eq!(
            set.insert(Arc::new(ReplayFilter::new(4, params))),
            Err(SetError::Full)
        );
        let tag = [1; 32];
        assert_eq!(set.check_and_insert(2, &tag), Some(false));
        assert_eq!(set.check_and_insert(3, &tag), Some(false)); // other key, other filter
        assert_eq!(set.check_and_insert(2, &tag), Some(true));
        assert!(set.remove(1).is_some());
        assert_eq!(set.check_and_insert(1, &tag), None);
        assert_eq!(set.rotation_ids().count(), 2);
    }
}
