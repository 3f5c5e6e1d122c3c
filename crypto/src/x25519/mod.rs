//! Multi-lane X25519 (RFC 7748) with run-time SIMD dispatch.
//!
//! * [`x25519`] / [`scalarmult_raw`]: one scalar multiplication (portable path).
//! * [`x25519_batch`] / [`scalarmult_raw_batch`]: many independent
//!   (scalar, point) pairs at once, 8 lanes with AVX-512 IFMA (a leftover of
//!   1-4 lanes in one 4-lane ymm vector) or 4 lanes with AVX2, with one field
//!   inversion shared by up to 64 lanes (Montgomery's batch-inversion trick).
//!
//! All paths run the Montgomery ladder over all 256 scalar bits with masked
//! conditional swaps: no branch, memory index or early exit depends on a
//! scalar. Outputs are bit-for-bit those of `x25519_dalek::x25519`, including
//! non-canonical u (>= p), twist points and low-order points (all-zero output).
//!
//! Measured here (Sapphire Rapids VM, 2 shared cores, thread CPU time per
//! scalar mult, one run; `cargo bench -p lethe-bench --bench x25519`):
//! x25519-dalek 46.1 us, portable 34.2 us (1.35x), AVX2 batch of 64
//! 21.4 us (2.2x), IFMA batch of 8 / 16 / 64: 4.33 / 4.12 / 3.81 us
//! (10.6x / 11.2x / 12.1x). The IFMA ladder step is bound by the two
//! 512-bit ports (~740 vector uops per step, ~500 of them multiply-adds);
//! at batch 8 the one inversion per vector, a latency-bound chain, adds
//! ~0.5 us per lane.
//!
//! Path selection: [`simd_path`] picks the best path the CPU supports, once.
//! The environment variable `LETHE_SIMD=ifma|avx2|portable` overrides it; an
//! unknown value, or a path this CPU cannot run, falls back to the detected
//! path with a one-time warning on stderr (never an error: a bad operator
//! setting must not stop a node).

/// `invert_chain!(square, square_n, mul, z)`: z^(p-2) with the fixed chain
/// p - 2 = 2^255 - 21 = (2^250 - 1) * 2^5 + 11 (254 squarings, 11 products);
/// 0 maps to 0. A macro so every path (serial and vector) shares one chain;
/// the arguments are function paths so vector code stays inside its
/// `#[target_feature]` function.
macro_rules! invert_chain {
    ($sq:path, $sqn:path, $mul:path, $z:expr) => {{
        let z = $z;
        let z2 = $sq(z); // 2
        let z8 = $sqn(&z2, 2); // 8
        let z9 = $mul(z, &z8); // 9
        let z11 = $mul(&z2, &z9); // 11
        let z22 = $sq(&z11); // 22
        let e5 = $mul(&z9, &z22); // 2^5 - 1
        let e10 = $mul(&$sqn(&e5, 5), &e5); // 2^10 - 1
        let e20 = $mul(&$sqn(&e10, 10), &e10); // 2^20 - 1
        let e40 = $mul(&$sqn(&e20, 20), &e20); // 2^40 - 1
        let e50 = $mul(&$sqn(&e40, 10), &e10); // 2^50 - 1
        let e100 = $mul(&$sqn(&e50, 50), &e50); // 2^100 - 1
        let e200 = $mul(&$sqn(&e100, 100), &e100); // 2^200 - 1
        let e250 = $mul(&$sqn(&e200, 50), &e50); // 2^250 - 1
        $mul(&$sqn(&e250, 5), &z11) // 2^255 - 32 + 11
    }};
}

mod field51;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_kernels;
// AVX-512 intrinsics are stable since Rust 1.89 (the workspace declares 1.85):
// this module needs rustc >= 1.89.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod ifma;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Which implementation a batch call runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdPath {
    /// 8 lanes, AVX-512 IFMA (`vpmadd52luq/huq`), radix 2^52.
    Ifma,
    /// 4 lanes, AVX2 (`vpmuludq`), radix 2^25.5.
    Avx2,
    /// One at a time, 5 x 51-bit limbs with u128 products.
    Portable,
}

impl SimdPath {
    /// The name `LETHE_SIMD` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Ifma => "ifma",
            SimdPath::Avx2 => "avx2",
            SimdPath::Portable => "portable",
        }
    }

    /// Lanes per vector (1 for the portable path).
    pub fn lanes(self) -> usize {
        match self {
            SimdPath::Ifma => 8,
            SimdPath::Avx2 => 4,
            SimdPath::Portable => 1,
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Ifma => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512ifma")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn detect() -> SimdPath {
        if SimdPath::Ifma.is_supported() {
            SimdPath::Ifma
        } else if SimdPath::Avx2.is_supported() {
            SimdPath::Avx2
        } else {
            SimdPath::Portable
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            SimdPath::Ifma => 1,
            SimdPath::Avx2 => 2,
            SimdPath::Portable => 3,
        }
    }

    fn from_u8(v: u8) -> Option<SimdPath> {
        match v {
            1 => Some(SimdPath::Ifma),
            2 => Some(SimdPath::Avx2),
            3 => Some(SimdPath::Portable),
            _ => None,
        }
    }
}

/// The forced path was not runnable on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsupportedPath(pub SimdPath);

impl std::fmt::Display for UnsupportedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SIMD path {:?} is not supported by this CPU", self.0)
    }
}

impl std::error::Error for UnsupportedPath {}

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Why `LETHE_SIMD` was not followed, if it was set to a path this CPU cannot run (or to no
/// path at all). Kept, not printed: the crate has no logger, so a binary logs it in its own
/// format (`lethe` at start, see [`simd_override_rejected`]).
static REJECTED: OnceLock<String> = OnceLock::new();

/// `Some(reason)` when `LETHE_SIMD` named a path that is unknown or unsupported here and the
/// detected one is used instead. Chooses the path first if no batch call has yet.
pub fn simd_override_rejected() -> Option<&'static str> {
    let _ = simd_path();
    REJECTED.get().map(String::as_str)
}

/// The path batch calls use: chosen on first use from CPU features and
/// `LETHE_SIMD`, then cached.
pub fn simd_path() -> SimdPath {
    if let Some(p) = SimdPath::from_u8(CHOSEN.load(Ordering::Relaxed)) {
        return p;
    }
    let detected = SimdPath::detect();
    let chosen = match std::env::var("LETHE_SIMD") {
        Err(_) => detected,
        Ok(v) => {
            let wanted = match v.trim().to_ascii_lowercase().as_str() {
                "ifma" | "avx512" => Some(SimdPath::Ifma),
                "avx2" => Some(SimdPath::Avx2),
                "portable" | "serial" => Some(SimdPath::Portable),
                _ => None,
            };
            match wanted {
                Some(p) if p.is_supported() => p,
                _ => {
                    // A racing first call finds the same reason; the first one is kept.
                    let _ = REJECTED.set(format!(
                        "LETHE_SIMD={} is unknown or unsupported on this CPU; using {}",
                        v.trim(),
                        detected.name()
                    ));
                    detected
                }
            }
        }
    };
    CHOSEN.store(chosen.to_u8(), Ordering::Relaxed);
    chosen
}

/// RFC 7748 scalar clamping.
#[inline]
pub fn clamp(scalar: &[u8; 32]) -> [u8; 32] {
    let mut k = *scalar;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// RFC 7748 X25519: clamps `scalar`, ignores bit 255 of `u`.
pub fn x25519(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    field51::scalarmult(&clamp(scalar), u)
}

/// u([k]P) for the full 256-bit little-endian integer `k`, without clamping
/// (bit 255 of `u` is still ignored). For a product of clamped scalars reduced
/// mod 8l this equals the chained clamped X25519 calls.
pub fn scalarmult_raw(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    field51::scalarmult(scalar, u)
}

/// `out[i] = x25519(&scalars[i], &points[i])` on the [`simd_path`].
///
/// # Panics
/// If the three slices differ in length (a caller bug, never input-dependent).
pub fn x25519_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    run(simd_path(), Scalars::PerLane(scalars), true, points, out);
}

/// `out[i] = scalarmult_raw(&scalars[i], &points[i])` on the [`simd_path`].
///
/// # Panics
/// If the three slices differ in length.
pub fn scalarmult_raw_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    run(simd_path(), Scalars::PerLane(scalars), false, points, out);
}

/// `out[i] = x25519(scalar, &points[i])`. A convenience: a shared scalar only
/// shares the swap masks, which cost nothing, so this is as fast as
/// [`x25519_batch`], not faster.
///
/// # Panics
/// If `points` and `out` differ in length.
pub fn x25519_batch_same_scalar(scalar: &[u8; 32], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    run(simd_path(), Scalars::Same(scalar), true, points, out);
}

/// [`x25519_batch`] on an explicit path (tests, benches).
///
/// # Panics
/// If the three slices differ in length.
pub fn x25519_batch_with(
    path: SimdPath,
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) -> Result<(), UnsupportedPath> {
    if !path.is_supported() {
        return Err(UnsupportedPath(path));
    }
    run(path, Scalars::PerLane(scalars), true, points, out);
    Ok(())
}

/// [`scalarmult_raw_batch`] on an explicit path.
///
/// # Panics
/// If the three slices differ in length.
pub fn scalarmult_raw_batch_with(
    path: SimdPath,
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) -> Result<(), UnsupportedPath> {
    if !path.is_supported() {
        return Err(UnsupportedPath(path));
    }
    run(path, Scalars::PerLane(scalars), false, points, out);
    Ok(())
}

/// Scalars of a batch: one per point, or one shared by all.
#[derive(Clone, Copy)]
pub(crate) enum Scalars<'a> {
    PerLane(&'a [[u8; 32]]),
    Same(&'a [u8; 32]),
}

impl<'a> Scalars<'a> {
    /// The scalars of items `start..end`.
    fn range(&self, start: usize, end: usize) -> Scalars<'a> {
        match *self {
            Scalars::PerLane(s) => Scalars::PerLane(&s[start..end]),
            Scalars::Same(s) => Scalars::Same(s),
        }
    }

    /// Scalar i, clamped if asked.
    #[inline]
    pub(crate) fn get(&self, i: usize, clamped: bool) -> [u8; 32] {
        let k = match self {
            Scalars::PerLane(s) => s[i],
            Scalars::Same(s) => **s,
        };
        if clamped {
            clamp(&k)
        } else {
            k
        }
    }
}

/// Vectors whose inversions are merged into one (8 IFMA vectors = 64 lanes).
pub(crate) const INV_GROUP: usize = 8;

/// A leftover of fewer than this many lanes goes to the serial path instead
/// of a padded vector. AVX2: a lone 4-lane vector with its inversion costs
/// about 1.4 portable multiplications (`x25519_ifma_timing` with
/// `TIMING_AVX2=1`, Zen 4 forced onto AVX2), so one lane is cheaper serially
/// and two are not. IFMA never leaves a tail: a leftover of 1-4 lanes takes
/// the 4-lane (ymm) form, ~24 us for the vector with its inversion, below one
/// portable multiplication.
fn min_vector_lanes(path: SimdPath) -> usize {
    match path {
        SimdPath::Ifma => 1,
        SimdPath::Avx2 => 2,
        SimdPath::Portable => 1,
    }
}

/// Leftovers of at most this many lanes run as one 4-lane IFMA vector instead
/// of a padded 8-lane one, which costs more (`ifma`'s module doc says why).
const IFMA_NARROW_LANES: usize = 4;

fn run(
    path: SimdPath,
    scalars: Scalars<'_>,
    clamped: bool,
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) {
    if let Scalars::PerLane(s) = scalars {
        assert_eq!(
            s.len(),
            points.len(),
            "x25519 batch: scalars and points differ in length"
        );
    }
    assert_eq!(
        points.len(),
        out.len(),
        "x25519 batch: points and out differ in length"
    );
    let n = points.len();
    let rem = n % path.lanes();
    let split = if rem < min_vector_lanes(path) {
        n - rem
    } else {
        n
    };
    let (vec_points, tail_points) = points.split_at(split);
    let (vec_out, tail_out) = out.split_at_mut(split);
    let vec_scalars = scalars.range(0, split);
    match path {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Ifma if SimdPath::Ifma.is_supported() => {
            // Full 8-lane vectors, then a leftover of up to 4 lanes in one 4-lane vector.
            let narrow = match split % SimdPath::Ifma.lanes() {
                left if left <= IFMA_NARROW_LANES => left,
                _ => 0,
            };
            let wide = split - narrow;
            let (wide_points, narrow_points) = vec_points.split_at(wide);
            let (wide_out, narrow_out) = vec_out.split_at_mut(wide);
            // SAFETY: AVX-512F, AVX-512VL and AVX-512 IFMA were detected at run time just above.
            unsafe {
                ifma::zmm::batch(vec_scalars.range(0, wide), clamped, wide_points, wide_out);
                ifma::ymm::batch(
                    vec_scalars.range(wide, split),
                    clamped,
                    narrow_points,
                    narrow_out,
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 if SimdPath::Avx2.is_supported() => {
            // SAFETY: AVX2 was detected at run time just above.
            unsafe { avx2::batch(vec_scalars, clamped, vec_points, vec_out) }
        }
        _ => serial(vec_scalars, clamped, vec_points, vec_out),
    }
    serial(scalars.range(split, n), clamped, tail_points, tail_out);
}

fn serial(scalars: Scalars<'_>, clamped: bool, points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    for (i, (p, o)) in points.iter().zip(out.iter_mut()).enumerate() {
        *o = field51::scalarmult(&scalars.get(i, clamped), p);
    }
}
