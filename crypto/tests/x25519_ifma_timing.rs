//! Quick per-mult timing of the batch paths (ignored by default; thread CPU
//! time, median of several rounds). Run:
//! `cargo test --release -p lethe-crypto --test x25519_ifma_timing -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lethe_crypto::x25519::{x25519, x25519_batch_with, SimdPath};

/// This thread's CPU time in ns (Linux `/proc/thread-self/schedstat`), or
/// wall time where that is unavailable.
fn cpu_ns(start: std::time::Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| start.elapsed().as_nanos() as u64)
}

fn corpus(n: usize, seed: u8) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            core::array::from_fn(|j| {
                (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(j as u8)
                    .wrapping_mul(seed)
                    ^ 0x5a
            })
        })
        .collect()
}

fn per_mult_us(path: SimdPath, n: usize, reps: usize) -> f64 {
    let ks = corpus(n, 7);
    let us = corpus(n, 13);
    let mut out = vec![[0u8; 32]; n];
    let mut samples = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..9 {
        let t0 = cpu_ns(start);
        for _ in 0..reps {
            x25519_batch_with(path, &ks, &us, &mut out).unwrap();
        }
        let dt = cpu_ns(start) - t0;
        samples.push(dt as f64 * 1e-3 / (reps * n) as f64);
    }
    for (i, o) in out.iter().enumerate() {
        assert_eq!(*o, x25519(&ks[i], &us[i]));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

#[test]
#[ignore]
fn timing() {
    let paths: &[SimdPath] = if std::env::var("TIMING_AVX2").is_ok() {
        &[SimdPath::Ifma, SimdPath::Avx2]
    } else {
        &[SimdPath::Ifma]
    };
    for &path in paths {
        if !path.is_supported() {
            continue;
        }
        for n in [8usize, 64] {
            let reps = 1600 / n;
            println!(
                "{path:?} batch {n}: {:.3} us/mult",
                per_mult_us(path, n, reps)
            );
        }
    }
}
