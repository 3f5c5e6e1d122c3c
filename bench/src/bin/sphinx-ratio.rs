//! Quick ratio of Lethe's Sphinx to `sphinx-packet` 0.8 (4 hops, 2413 B, v260, one core),
//! printed as one JSON line. Both sides run in the same process in alternating rounds (the
//! order flips every round) and speedups are medians of per-round ratios, which cancels the
//! drift of a shared, noisy machine; times are the thread's CPU time. `LETHE_RATIO_ROUNDS` overrides the round count.
//!
//! A round times the reference over 64 packets (~6 ms) and the batched path over
//! `BATCHES_PER_ROUND` consecutive batches of 64 fresh packets (~5 ms), as a loaded node runs
//! them: a lone batch after the scalar reference code pays a warm-up (caches, the core's
//! switch to heavy AVX-512 work) of ~4 % on its ~0.7 ms, which a node under load does not.
//! `lethe_process_first_batch_us` reports that first batch of each round on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use lethe_bench::sphinx_setup::{Setup, PACKET_SIZE};
use lethe_crypto::sphinx::{self, batch::dh_path_name, BatchProcessor, NodeSecrets, Packet};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sphinx_packet::SphinxPacket;

const BATCH: usize = 64;
/// Consecutive batches the batched path processes per round.
const BATCHES_PER_ROUND: usize = 8;
const ROUND_PACKETS: usize = BATCH * BATCHES_PER_ROUND;
const CREATE_BATCH: usize = 16;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn cpu_us() -> f64 {
    lethe_bench::thread_cpu_ns() / 1e3
}

/// CPU µs per op of `f` over `ops` operations.
fn time_us(ops: usize, f: impl FnOnce()) -> f64 {
    let start = cpu_us();
    f();
    (cpu_us() - start) / ops as f64
}

#[derive(Default)]
struct Series {
    reference: Vec<f64>,
    batch: Vec<f64>,
    serial: Vec<f64>,
}

impl Series {
    fn speedup(&self, lethe: &[f64]) -> f64 {
        let mut ratios: Vec<f64> = self
            .reference
            .iter()
            .zip(lethe)
            .map(|(r, l)| r / l)
            .collect();
        median(&mut ratios)
    }
}

fn main() {
    let rounds: usize = std::env::var("LETHE_RATIO_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let setup = Setup::new();
    let reference = setup.reference();
    let node = &setup.secrets[0];
    let keys = NodeSecrets {
        primary: node,
        secondary: None,
    };
    // Unique packets (no replays), one slice of ROUND_PACKETS per round plus a warm-up
    // round; the reference and the serial path take the first BATCH of each slice.
    let corpus = setup.corpus(ROUND_PACKETS * (rounds + 1), 1);
    let mut processor = BatchProcessor::new(BATCH);
    let mut buffers = vec![vec![0u8; PACKET_SIZE]; ROUND_PACKETS];
    let mut process = Series::default();
    let mut first_batch = Vec::new();
    let mut create = Series::default();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut outs = vec![vec![0u8; PACKET_SIZE]; CREATE_BATCH];

    for round in 0..=rounds {
        let slice = &corpus[round * ROUND_PACKETS..(round + 1) * ROUND_PACKETS];
        let packets = &slice[..BATCH];
        let run_ref = || {
            let parsed: Vec<SphinxPacket> = packets
                .iter()
                .map(|p| SphinxPacket::from_bytes(p).unwrap())
                .collect();
            time_us(BATCH, || {
                for packet in parsed {
                    black_box(packet.process(node).unwrap());
                }
            })
        };
        let mut run_batch = || {
            for (buffer, packet) in buffers.iter_mut().zip(slice) {
                buffer.copy_from_slice(packet);
            }
            let (first, rest) = buffers.split_at_mut(BATCH);
            let first_us = time_us(BATCH, || {
                processor.process(first, keys, |_, outcome| {
                    black_box(outcome.unwrap());
                });
            });
            let rest_us = time_us(rest.len(), || {
                processor.process(rest, keys, |_, outcome| {
                    black_box(outcome.unwrap());
                });
            });
            let all_us =
                (first_us * BATCH as f64 + rest_us * rest.len() as f64) / ROUND_PACKETS as f64;
            (all_us, first_us)
        };
        let (r, (b, b_first)) = if round % 2 == 0 {
            let r = run_ref();
            (r, run_batch())
        } else {
            let b = run_batch();
            (run_ref(), b)
        };
        let mut buffer = vec![0u8; PACKET_SIZE];
        let s = time_us(BATCH, || {
            for packet in packets {
                buffer.copy_from_slice(packet);
                let mut packet = Packet::new_checked(&mut buffer[..]).unwrap();
                black_box(sphinx::process(&mut packet, node).unwrap());
            }
        });

        let run_ref_create = || {
            time_us(CREATE_BATCH, || {
                for _ in 0..CREATE_BATCH {
                    black_box(reference.create(&setup.message));
                }
            })
        };
        let mut run_batch_create = || {
            let mut jobs = setup.create_jobs(&mut outs);
            time_us(CREATE_BATCH, || {
                sphinx::create_batch(&mut jobs, &mut rng, |_, r| {
                    black_box(r.unwrap());
                });
            })
        };
        let (cr, cb) = if round % 2 == 0 {
            let r = run_ref_create();
            (r, run_batch_create())
        } else {
            let b = run_batch_create();
            (run_ref_create(), b)
        };
        let mut out = vec![0u8; PACKET_SIZE];
        let mut serial_rng = ChaCha20Rng::seed_from_u64(round as u64);
        let cs = time_us(CREATE_BATCH, || {
            for _ in 0..CREATE_BATCH {
                black_box(
                    sphinx::create_into(
                        &mut out,
                        &setup.message,
                        &setup.spec(),
                        None,
                        &mut serial_rng,
                    )
                    .unwrap(),
                );
            }
        });
        if round == 0 {
            continue; // warm-up
        }
        process.reference.push(r);
        process.batch.push(b);
        first_batch.push(b_first);
        process.serial.push(s);
        create.reference.push(cr);
        create.batch.push(cb);
        create.serial.push(cs);
    }

    let (symmetric_us, x25519_us) = split(&setup, &corpus[..BATCH]);
    let process_speedup = process.speedup(&process.batch);
    let process_serial_speedup = process.speedup(&process.serial);
    let create_speedup = create.speedup(&create.batch);
    let create_serial_speedup = create.speedup(&create.serial);
    println!(
        "{{\"process_speedup\":{process_speedup:.2},\"create_speedup\":{create_speedup:.2},\
         \"process_serial_speedup\":{process_serial_speedup:.2},\
         \"create_serial_speedup\":{create_serial_speedup:.2},\
         \"simd_path\":\"{}\",\"batch\":{BATCH},\"create_batch\":{CREATE_BATCH},\
         \"hops\":4,\"packet_size\":{PACKET_SIZE},\"version\":260,\"rounds\":{rounds},\
         \"ref_process_us\":{:.1},\"lethe_process_us\":{:.1},\
         \"lethe_process_first_batch_us\":{:.1},\"lethe_process_serial_us\":{:.1},\
         \"ref_create_us\":{:.1},\"lethe_create_us\":{:.1},\"lethe_create_serial_us\":{:.1},\
         \"symmetric_us\":{symmetric_us:.1},\"x25519_us\":{x25519_us:.1},\
         \"symmetric_detail_us\":{}}}",
        dh_path_name(),
        median(&mut process.reference),
        median(&mut process.batch),
        median(&mut first_batch),
        median(&mut process.serial),
        median(&mut create.reference),
        median(&mut create.batch),
        median(&mut create.serial),
        primitives(),
    );
}

/// Where a forward hop's time goes: the symmetric part (HKDF, MAC, AES-CTR, payload key,
/// Lioness) timed alone with the DH done beforehand, and one X25519 multiplication.
fn split(setup: &Setup, packets: &[Vec<u8>]) -> (f64, f64) {
    let node = &setup.secrets[0];
    let expanded: Vec<_> = packets
        .iter()
        .map(|p| {
            let packet = Packet::new_checked(&p[..]).unwrap();
            sphinx::derive_expanded_secret(&packet, node).unwrap()
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut shared = [0u8; 32];
    rng.fill_bytes(&mut shared);
    let mut symmetric = Vec::new();
    let mut x25519 = Vec::new();
    let mut buffer = vec![0u8; PACKET_SIZE];
    for _ in 0..5 {
        symmetric.push(time_us(packets.len(), || {
            for (packet, secret) in packets.iter().zip(&expanded) {
                buffer.copy_from_slice(packet);
                let mut packet = Packet::new_checked(&mut buffer[..]).unwrap();
                black_box(sphinx::expand(black_box(&shared)));
                sphinx::verify_mac(&packet, secret).unwrap();
                black_box(sphinx::unwrap_in_place(&mut packet, secret, &[9; 32]).unwrap());
            }
        }));
        x25519.push(time_us(16, || {
            let mut u = [9u8; 32];
            for _ in 0..16 {
                u = x25519_dalek::x25519(shared, u);
            }
            black_box(u);
        }));
    }
    (median(&mut symmetric), median(&mut x25519))
}

/// µs per call of each symmetric primitive of a hop (evidence for the hardware-use notes in
/// `sphinx::batch`): HKDF-SHA256 → 288 B, payload-key HKDF → 192 B, AES-128-CTR keystream
/// (360 B), HMAC-SHA256 (300 B), Lioness decrypt of the 2065-byte payload.
fn primitives() -> String {
    use lethe_crypto::lioness::Lioness;
    use lethe_crypto::sphinx::{keys, routing};
    let secret = [7u8; 32];
    let expanded = sphinx::expand(&secret);
    let beta = [5u8; 300];
    let mut payload = vec![3u8; PACKET_SIZE - 348];
    let lioness = Lioness::new(&expanded.payload_key(sphinx::Version::CURRENT));
    const N: usize = 200;
    let mut cases: [(&str, Vec<f64>); 5] = Default::default();
    for _ in 0..5 {
        let runs: [(&str, f64); 5] = [
            (
                "hkdf288",
                time_us(N, || {
                    for _ in 0..N {
                        black_box(sphinx::expand(black_box(&secret)));
                    }
                }),
            ),
            (
                "hkdf_payload_key",
                time_us(N, || {
                    for _ in 0..N {
                        black_box(keys::derive_payload_key(black_box(&[1; 16])));
                    }
                }),
            ),
            (
                "aes_ctr360",
                time_us(N, || {
                    for _ in 0..N {
                        black_box(routing::keystream(black_box(expanded.stream_key())));
                    }
                }),
            ),
            (
                "hmac300",
                time_us(N, || {
                    for _ in 0..N {
                        black_box(routing::compute_mac(expanded.mac_key(), black_box(&beta)));
                    }
                }),
            ),
            (
                "lioness2065",
                time_us(N, || {
                    for _ in 0..N {
                        lioness.decrypt(black_box(&mut payload)).unwrap();
                    }
                }),
            ),
        ];
        for (case, (name, us)) in cases.iter_mut().zip(runs) {
            case.0 = name;
            case.1.push(us);
        }
    }
    let fields: Vec<String> = cases
        .iter_mut()
        .map(|(name, runs)| format!("\"{name}\":{:.2}", median(runs)))
        .collect();
    format!("{{{}}}", fields.join(","))
}
