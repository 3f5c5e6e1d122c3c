//! Batched packet creation for senders that build many packets: the per-hop scalar
//! multiplications of up to [`LANES`] packets advance together, one hop level at a time,
//! through `scalarmult_raw_batch` (lane = packet), with the O(n) derivation of
//! [`fast_keys`](super::fast_keys).
//!
//! Bytes equal [`create_into`](super::create_into) for the same initial secrets and the same
//! padding draws. RNG order differs from calling `create_into` in a loop: per chunk of
//! [`LANES`] jobs, first the missing initial secrets (job order), then every padding.

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::constants::HEADER_SIZE;
use super::create::{build_header, header_array, payload_keys, PacketSpec};
use super::error::SphinxError;
use super::fast_keys::{derive_lanes, LANES};
use super::keys::RouteSecrets;
use super::packet::check_packet_len;
use super::payload::{encrypt_for_route, frame};

/// One packet to build: like the arguments of [`create_into`](super::create_into).
pub struct CreateJob<'a> {
    /// Header ‖ payload; payload size = `out.len() - 348`.
    pub out: &'a mut [u8],
    pub message: &'a [u8],
    pub spec: PacketSpec<'a>,
    /// x; drawn from the RNG when `None`.
    pub initial_secret: Option<&'a StaticSecret>,
}

/// Builds every job's packet; `on_result(index, route secrets or error)` once per job, in
/// order. Allocates nothing.
pub fn create_batch<R, F>(jobs: &mut [CreateJob<'_>], rng: &mut R, mut on_result: F)
where
    R: CryptoRng + ?Sized,
    F: FnMut(usize, Result<RouteSecrets, SphinxError>),
{
    for (chunk_index, chunk) in jobs.chunks_mut(LANES).enumerate() {
        let base = chunk_index.saturating_mul(LANES);
        create_chunk(chunk, rng, |index, result| {
            on_result(base.saturating_add(index), result)
        });
    }
}

fn create_chunk<R, F>(jobs: &mut [CreateJob<'_>], rng: &mut R, mut on_result: F)
where
    R: CryptoRng + ?Sized,
    F: FnMut(usize, Result<RouteSecrets, SphinxError>),
{
    let count = jobs.len().min(LANES);
    let mut checked: [Result<(), SphinxError>; LANES] = [Ok(()); LANES];
    let mut initials = Zeroizing::new([[0u8; 32]; LANES]);
    let mut hops = [0usize; LANES];
    for (lane, job) in jobs.iter_mut().enumerate().take(count) {
        checked[lane] = prepare(job);
        if checked[lane].is_ok() {
            hops[lane] = job.spec.route.len();
            match job.initial_secret {
                Some(secret) => initials[lane] = secret.to_bytes(),
                None => rng.fill_bytes(&mut initials[lane]),
            }
        }
    }
    let mut secrets: [Option<RouteSecrets>; LANES] = Default::default();
    derive_lanes(
        &initials[..count],
        &hops[..count],
        |lane, hop| {
            let job = jobs.get(lane)?;
            job.spec.route.get(hop).map(|h| h.public_key)
        },
        &mut secrets[..count],
    );
    for (lane, job) in jobs.iter_mut().enumerate().take(count) {
        let result = checked[lane].and_then(|()| {
            let hops = job.spec.route.len();
            let secrets = secrets[lane].take().ok_or(SphinxError::InvalidRoute {
                hops,
                delays: job.spec.delays_ns.len(),
            })?;
            let (header, payload) = job.out.split_at_mut(HEADER_SIZE);
            build_header(header_array(header)?, &secrets, &job.spec, rng)?;
            encrypt_for_route(payload, payload_keys(&secrets, job.spec.version))?;
            Ok(secrets)
        });
        on_result(lane, result);
    }
}

// The checks `create_into` makes before deriving keys, in its order, and the payload framing.
fn prepare(job: &mut CreateJob<'_>) -> Result<(), SphinxError> {
    let len = job.out.len();
    check_packet_len(len)?;
    let hops = job.spec.route.len();
    let delays = job.spec.delays_ns.len();
    if hops == 0 || hops > super::constants::MAX_PATH_LENGTH || delays != hops {
        return Err(SphinxError::InvalidRoute { hops, delays });
    }
    frame(&mut job.out[HEADER_SIZE..], job.message)
}
