//! O(n) sender key derivation, bit-identical to the chained O(n²) [`derive_hop_secrets`].
//!
//! The chain computes hop i's secret as `X25519(b_{i-1}, … X25519(b_0, X25519(x, PK_i)))`.
//! X25519 is x-only scalar multiplication, so the chain equals `[c(x)·c(b_0)⋯c(b_{i-1})] PK_i`
//! with `c` = clamping, as one integer product. Every PK_i of an honest node is on the curve
//! (order dividing 8·l), so that product may be reduced mod 8·l. Each clamped scalar is a
//! multiple of 8, hence `prod mod 8l = 8·((prod/8) mod l)`, which we carry as a
//! [`Scalar`] (mod l) and multiply out to 256 bits for an unclamped ladder: one
//! multiplication per hop, plus one fixed-base multiplication for alpha_0.
//!
//! A public key on the twist (no honest node has one; nobody could process such a packet)
//! would give different bytes from the chain.
//!
//! [`derive_hop_secrets`]: super::keys::derive_hop_secrets

use curve25519_dalek::scalar::{clamp_integer, Scalar};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use super::constants::MAX_PATH_LENGTH;
use super::dh;
use super::error::SphinxError;
use super::keys::{expand, HopSecrets, RouteSecrets};

/// Routes whose hop-level multiplications go through the DH seam together (`create_batch`).
pub const LANES: usize = 16;

/// Same result as [`derive_hop_secrets`](super::keys::derive_hop_secrets) with n + 1 scalar
/// multiplications instead of n(n+1)/2 + 1.
pub fn derive_hop_secrets_fast(
    initial_secret: &StaticSecret,
    route_public_keys: &[[u8; 32]],
) -> Result<RouteSecrets, SphinxError> {
    let hops = route_public_keys.len();
    check_hops(hops)?;
    let initial = Zeroizing::new(initial_secret.to_bytes());
    let mut out = [None];
    derive_lanes(
        core::slice::from_ref(&*initial),
        &[hops],
        |_, hop| route_public_keys.get(hop).copied(),
        &mut out,
    );
    let [secrets] = out;
    secrets.ok_or(SphinxError::InvalidRoute { hops, delays: hops })
}

pub(crate) fn check_hops(hops: usize) -> Result<(), SphinxError> {
    if hops == 0 || hops > MAX_PATH_LENGTH {
        return Err(SphinxError::InvalidRoute { hops, delays: hops });
    }
    Ok(())
}

/// Derives up to [`LANES`] routes at once: lane j has initial secret `initials[j]` and a
/// route of `hops[j]` keys given by `public_key(j, hop)`. Hop level i of all lanes goes
/// through one `scalarmult_raw_batch` (lane = packet). `out[j]` is `None` for a lane whose
/// route length is invalid or whose key is missing.
pub(crate) fn derive_lanes<F>(
    initials: &[[u8; 32]],
    hops: &[usize],
    public_key: F,
    out: &mut [Option<RouteSecrets>],
) where
    F: Fn(usize, usize) -> Option<[u8; 32]>,
{
    let lanes = initials.len().min(hops.len()).min(out.len()).min(LANES);
    // acc[j] = (c(x)/8)·c(b_0)⋯c(b_{i-1}) mod l, so hop i's scalar is 8·acc[j].
    let mut acc = Zeroizing::new([Scalar::ZERO; LANES]);
    let mut scalars = Zeroizing::new([[0u8; 32]; LANES]);
    let mut points = [[0u8; 32]; LANES];
    let mut shared = Zeroizing::new([[0u8; 32]; LANES]);
    let mut lane_of = [0usize; LANES];

    for lane in 0..lanes {
        out[lane] = None;
        if check_hops(hops[lane]).is_err() {
            continue;
        }
        let clamped = Zeroizing::new(clamp_integer(initials[lane]));
        acc[lane] = Scalar::from_bytes_mod_order(shr3(&clamped));
        out[lane] = Some(RouteSecrets {
            alpha: dh::x25519_base(&initials[lane]),
            hops: Default::default(),
            len: hops[lane],
        });
    }
    for hop in 0..MAX_PATH_LENGTH {
        let mut active = 0;
        for lane in 0..lanes {
            if out[lane].is_none() || hop >= hops[lane] {
                continue;
            }
            let Some(key) = public_key(lane, hop) else {
                out[lane] = None;
                continue;
            };
            scalars[active] = times8(&acc[lane]);
            points[active] = key;
            lane_of[active] = lane;
            active += 1;
        }
        if active == 0 {
            break;
        }
        dh::scalarmult_raw_batch(&scalars[..active], &points[..active], &mut shared[..active]);
        for (index, &lane) in lane_of[..active].iter().enumerate() {
            let expanded = expand(&shared[index]);
            let mut factor = Zeroizing::new(clamp_integer(*expanded.blinding_factor()));
            acc[lane] *= &Scalar::from_bytes_mod_order(*factor);
            factor.zeroize();
            if let Some(Some(secrets)) = out.get_mut(lane) {
                if let Some(slot) = secrets.hops.get_mut(hop) {
                    *slot = Some(HopSecrets {
                        shared_secret: shared[index],
                        expanded,
                    });
                }
            }
        }
    }
}

/// The alpha hop `hop` of each route receives: `alphas[j]` for `routes[j]`, `None` when the
/// route has no hop `hop`. Bit-identical to blinding alpha_0 hop by hop as hops `0..hop` do
/// (`blind_alpha`), but one multiplication per route instead of `hop`, the routes through one
/// lane-parallel ladder: alpha_0 = c(x)·G lies in the prime-order subgroup, so the chain of
/// clamped blindings is `[c(b_0)⋯c(b_{hop-1}) mod l] alpha_0`. For a sender that names its
/// packet by the header a later link carries (traces) without unwrapping it hop by hop.
pub fn hop_alphas(routes: &[&RouteSecrets], hop: usize, alphas: &mut [Option<[u8; 32]>]) {
    let count = routes.len().min(alphas.len());
    for (routes, alphas) in routes[..count]
        .chunks(LANES)
        .zip(alphas[..count].chunks_mut(LANES))
    {
        hop_alphas_lanes(routes, hop, alphas);
    }
}

// One chunk of [`hop_alphas`] (at most LANES routes).
fn hop_alphas_lanes(routes: &[&RouteSecrets], hop: usize, alphas: &mut [Option<[u8; 32]>]) {
    let mut scalars = Zeroizing::new([[0u8; 32]; LANES]);
    let mut points = [[0u8; 32]; LANES];
    let mut blinded = [[0u8; 32]; LANES];
    let mut lane_of = [0usize; LANES];
    let mut active = 0;
    for (lane, (route, alpha)) in routes.iter().zip(alphas.iter_mut()).enumerate().take(LANES) {
        *alpha = None;
        if hop >= route.len() {
            continue;
        }
        if hop == 0 {
            *alpha = Some(route.alpha);
            continue;
        }
        // Hops 0..hop exist: `hop < route.len()`.
        let mut product = Zeroizing::new(Scalar::ONE);
        for secrets in route.iter().take(hop) {
            let factor = Zeroizing::new(clamp_integer(*secrets.expanded.blinding_factor()));
            *product *= &Scalar::from_bytes_mod_order(*factor);
        }
        scalars[active] = product.to_bytes();
        points[active] = route.alpha;
        lane_of[active] = lane;
        active += 1;
    }
    if active == 0 {
        return;
    }
    dh::scalarmult_raw_batch(
        &scalars[..active],
        &points[..active],
        &mut blinded[..active],
    );
    for (index, &lane) in lane_of[..active].iter().enumerate() {
        if let Some(alpha) = alphas.get_mut(lane) {
            *alpha = Some(blinded[index]);
        }
    }
}

// c/8 for a clamped c (low three bits zero), little-endian.
fn shr3(bytes: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        let high = bytes.get(i + 1).copied().unwrap_or(0);
        out[i] = (bytes[i] >> 3) | (high << 5);
    }
    out
}

// 8·s as a 256-bit little-endian integer (s < l < 2^253, so it fits).
fn times8(scalar: &Scalar) -> [u8; 32] {
    let bytes = Zeroizing::new(scalar.to_bytes());
    let mut out = [0u8; 32];
    let mut carry = 0u8;
    for (out, &byte) in out.iter_mut().zip(bytes.iter()) {
        *out = (byte << 3) | carry;
        carry = byte >> 5;
    }
    out
}
