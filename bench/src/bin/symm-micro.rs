//! Per-packet micro-timings of the symmetric primitives of a batched hop: reference crates
//! versus `lethe_crypto::simd`, alternating, medians of thread CPU time (µs per packet).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use lethe_crypto::simd::{aes, blake2b, chacha, hkdf};

const LANES: usize = 8;
const RIGHT: usize = 2065 - 32;
const N: usize = 400;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn time_us(ops: usize, f: impl FnOnce()) -> f64 {
    let start = lethe_bench::thread_cpu_ns();
    f();
    (lethe_bench::thread_cpu_ns() - start) / 1e3 / ops as f64
}

fn main() {
    let keys = [[7u8; 64]; LANES];
    let key_refs: Vec<&[u8; 64]> = keys.iter().collect();
    let msgs = vec![vec![3u8; RIGHT]; LANES];
    let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let mut out = [[0u8; 32]; LANES];
    let mut data = vec![5u8; RIGHT];
    let mut payloads = vec![vec![6u8; RIGHT + 32]; LANES];
    let mut cases: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut push = |name: &'static str, us: f64| {
        if let Some(case) = cases.iter_mut().find(|c| c.0 == name) {
            case.1.push(us);
        } else {
            cases.push((name, vec![us]));
        }
    };
    let setup = lethe_bench::sphinx_setup::Setup::new();
    let corpus = setup.corpus(64, 9);
    let mut buffers = corpus.clone();
    let mut processor = lethe_crypto::sphinx::BatchProcessor::new(64);
    let node = &setup.secrets[0];
    let keys = lethe_crypto::sphinx::NodeSecrets {
        primary: node,
        secondary: None,
    };
    let scalars = [node.to_bytes(); 64];
    let points: Vec<[u8; 32]> = corpus.iter().map(|p| p[..32].try_into().unwrap()).collect();
    let mut dh = [[0u8; 32]; 64];
    // SYMM_MICRO_PROFILE=n: only n batch hops (for `perf record`).
    if let Some(n) = std::env::var("SYMM_MICRO_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for _ in 0..n {
            for (b, p) in buffers.iter_mut().zip(&corpus) {
                b.copy_from_slice(p);
            }
            processor.process(&mut buffers, keys, |_, o| {
                black_box(o.unwrap());
            });
        }
        return;
    }
    for _ in 0..15 {
        push("batch_hop", {
            for (b, p) in buffers.iter_mut().zip(&corpus) {
                b.copy_from_slice(p);
            }
            time_us(64, || {
                processor.process(&mut buffers, keys, |_, o| {
                    black_box(o.unwrap());
                })
            })
        });
        push(
            "x25519_2x_batch",
            time_us(64, || {
                for _ in 0..2 {
                    lethe_crypto::x25519::x25519_batch(&scalars, black_box(&points), &mut dh);
                    black_box(&dh);
                }
            }),
        );
        push(
            "blake2b_crate",
            time_us(N * LANES, || {
                for _ in 0..N {
                    blake2b::portable(&key_refs, &msg_refs, &mut out);
                    black_box(&out);
                }
            }),
        );
        push(
            "blake2b_avx512x8",
            time_us(N * LANES, || {
                for _ in 0..N {
                    blake2b::keyed256_many_at(
                        lethe_crypto::simd::Level::Avx512,
                        &key_refs,
                        &msg_refs,
                        &mut out,
                    );
                    black_box(&out);
                }
            }),
        );
        push(
            "blake2b_avx2x4",
            time_us(N * LANES, || {
                for _ in 0..N {
                    blake2b::keyed256_many_at(
                        lethe_crypto::simd::Level::Avx2,
                        &key_refs,
                        &msg_refs,
                        &mut out,
                    );
                    black_box(&out);
                }
            }),
        );
        push(
            "chacha_crate",
            time_us(N, || {
                for _ in 0..N {
                    chacha::portable(&[1; 32], black_box(&mut data));
                }
            }),
        );
        push(
            "chacha_avx512",
            time_us(N, || {
                for _ in 0..N {
                    chacha::xor_keystream(&[1; 32], black_box(&mut data));
                }
            }),
        );
        push(
            "hkdf288_crate",
            time_us(N, || {
                for _ in 0..N {
                    let mut okm = [0u8; 288];
                    hkdf_ref::Hkdf::<sha2_ref::Sha256>::new(Some(b""), black_box(&[1u8; 32]))
                        .expand(
                            lethe_crypto::sphinx::constants::EXPANDED_SECRET_HKDF_INFO,
                            &mut okm,
                        )
                        .unwrap();
                    black_box(okm);
                }
            }),
        );
        push(
            "aes_ctr360_crate",
            time_us(N, || {
                for _ in 0..N {
                    black_box(lethe_crypto::sphinx::routing::keystream(black_box(
                        &[9u8; 16],
                    )));
                }
            }),
        );
        push(
            "aes_ctr360_many64",
            time_us(N * 64, || {
                let keys = [[9u8; 16]; 64];
                let mut streams = [[0u8; 360]; 64];
                for _ in 0..N {
                    aes::ctr_keystreams(black_box(&keys), &mut streams);
                    black_box(&streams);
                }
            }),
        );
        push(
            "hkdf288_fast",
            time_us(N, || {
                const KEY: hkdf::HmacKey = hkdf::HmacKey::new_const(b"");
                for _ in 0..N {
                    let mut okm = [0u8; 288];
                    hkdf::hkdf(
                        &KEY,
                        black_box(&[1u8; 32]),
                        lethe_crypto::sphinx::constants::EXPANDED_SECRET_HKDF_INFO,
                        &mut okm,
                    );
                    black_box(okm);
                }
            }),
        );
        push(
            "hkdf288_many16",
            time_us(N * 16, || {
                const KEY: hkdf::HmacKey = hkdf::HmacKey::new_const(b"");
                let ikms = [[1u8; 32]; 16];
                let mut okms = [[0u8; 288]; 16];
                for _ in 0..N {
                    hkdf::hkdf_many(
                        &KEY,
                        lethe_crypto::sphinx::constants::EXPANDED_SECRET_HKDF_INFO,
                        black_box(&ikms),
                        &mut okms,
                    );
                    black_box(&okms);
                }
            }),
        );
        push(
            "hkdf192_many16",
            time_us(N * 16, || {
                const KEY: hkdf::HmacKey = hkdf::HmacKey::new_const(
                    lethe_crypto::sphinx::constants::PAYLOAD_KEY_HKDF_SALT,
                );
                let ikms = [[1u8; 16]; 16];
                let mut okms = [[0u8; 192]; 16];
                for _ in 0..N {
                    hkdf::hkdf_many(
                        &KEY,
                        lethe_crypto::sphinx::constants::PAYLOAD_KEY_HKDF_INFO,
                        black_box(&ikms),
                        &mut okms,
                    );
                    black_box(&okms);
                }
            }),
        );
        push(
            "hmac300_crate",
            time_us(N * 16, || {
                let beta = [5u8; 300];
                for _ in 0..N * 16 {
                    black_box(lethe_crypto::sphinx::routing::compute_mac(
                        &[3; 16],
                        black_box(&beta),
                    ));
                }
            }),
        );
        push(
            "hmac300_many16",
            time_us(N * 16, || {
                let beta = [5u8; 300];
                let keys = [&[3u8; 16][..]; 16];
                let betas = [&beta[..]; 16];
                let mut macs = [[0u8; 32]; 16];
                for _ in 0..N {
                    hkdf::hmac_many(&keys, black_box(&betas), &mut macs);
                    black_box(&macs);
                }
            }),
        );
        // Lioness decryption of a 2065-byte payload as the reference crates do it (what
        // `lioness.rs` did before) versus `decrypt_many` over 8 payloads.
        push(
            "lioness_crates",
            time_us(N, || {
                let key = [9u8; 192];
                for _ in 0..N {
                    let (left, right) = payloads[0].split_at_mut(32);
                    let mut tag = [[0u8; 32]];
                    for (mac_at, stream_at) in [(128, 96), (32, 0)] {
                        let mac_key: &[u8; 64] = key[mac_at..mac_at + 64].try_into().unwrap();
                        blake2b::portable(&[mac_key], &[&*right], &mut tag);
                        left.iter_mut().zip(tag[0]).for_each(|(l, t)| *l ^= t);
                        let mut stream_key: [u8; 32] =
                            key[stream_at..stream_at + 32].try_into().unwrap();
                        stream_key.iter_mut().zip(&*left).for_each(|(k, l)| *k ^= l);
                        chacha::portable(&stream_key, right);
                    }
                    black_box(&payloads[0]);
                }
            }),
        );
        push(
            "lioness_many8",
            time_us(N * LANES, || {
                let key = [9u8; 192];
                let keys = [&key; LANES];
                for _ in 0..N {
                    let mut blocks: Vec<&mut [u8]> =
                        payloads.iter_mut().map(|p| &mut p[..]).collect();
                    lethe_crypto::lioness::decrypt_many(&keys, &mut blocks).unwrap();
                    black_box(&blocks);
                }
            }),
        );
        push(
            "zeroize_1k",
            time_us(N, || {
                use zeroize::Zeroize;
                let mut buf = [1u8; 1024];
                for _ in 0..N {
                    black_box(&mut buf).zeroize();
                }
            }),
        );
        push(
            "wipe_1k",
            time_us(N, || {
                let mut buf = [1u8; 1024];
                for _ in 0..N {
                    lethe_crypto::simd::wipe(black_box(&mut buf));
                }
            }),
        );
        push(
            "hkdf192_crate",
            time_us(N, || {
                for _ in 0..N {
                    let mut okm = [0u8; 192];
                    hkdf_ref::Hkdf::<sha2_ref::Sha256>::new(
                        Some(lethe_crypto::sphinx::constants::PAYLOAD_KEY_HKDF_SALT),
                        black_box(&[1u8; 16]),
                    )
                    .expand(
                        lethe_crypto::sphinx::constants::PAYLOAD_KEY_HKDF_INFO,
                        &mut okm,
                    )
                    .unwrap();
                    black_box(okm);
                }
            }),
        );
        push(
            "hkdf192_fast",
            time_us(N, || {
                const KEY: hkdf::HmacKey = hkdf::HmacKey::new_const(
                    lethe_crypto::sphinx::constants::PAYLOAD_KEY_HKDF_SALT,
                );
                for _ in 0..N {
                    let mut okm = [0u8; 192];
                    hkdf::hkdf(
                        &KEY,
                        black_box(&[1u8; 16]),
                        lethe_crypto::sphinx::constants::PAYLOAD_KEY_HKDF_INFO,
                        &mut okm,
                    );
                    black_box(okm);
                }
            }),
        );
    }
    let mut batch_symmetric = 0.0;
    for (name, runs) in cases.iter_mut() {
        let us = median(runs);
        match *name {
            "batch_hop" => batch_symmetric += us,
            "x25519_2x_batch" => batch_symmetric -= us,
            _ => {}
        }
        println!("{name:>18}: {us:.3} µs");
    }
    println!("batch symmetric (hop - 2 x25519 batches): {batch_symmetric:.3} µs");
}
