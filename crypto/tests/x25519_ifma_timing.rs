//! Quick per-mult timing of the batch paths (ignored by default; thread CPU
//! time, minimum and median of 21 rounds). Run:
//! `cargo test --release -p lethe-crypto --test x25519_ifma_timing -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lethe_crypto::x25519::{x25519, x25519_batch_with, SimdPath};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// This thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`, Linux x86_64).
fn cpu_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; 3 is CLOCK_THREAD_CPUTIME_ID.
    let rc = unsafe { clock_gettime(3, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

/// (minimum, median) over the rounds.
fn per_mult_us(path: SimdPath, n: usize, reps: usize) -> (f64, f64) {
    let ks = corpus(n, 7);
    let us = corpus(n, 13);
    let mut out = vec![[0u8; 32]; n];
    let mut samples = Vec::new();
    for _ in 0..21 {
        let t0 = cpu_ns();
        for _ in 0..reps {
            x25519_batch_with(path, &ks, &us, &mut out).unwrap();
        }
        let dt = cpu_ns() - t0;
        samples.push(dt as f64 * 1e-3 / (reps * n) as f64);
    }
    for (i, o) in out.iter().enumerate() {
        assert_eq!(*o, x25519(&ks[i], &us[i]));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[0], samples[samples.len() / 2])
}

#[test]
#[ignore]
fn timing() {
    // TIMING_AVX2 adds the AVX2 path (a single vector, a pair, full groups) and the portable
    // one, the figures `min_vector_lanes` is set from.
    let paths: &[SimdPath] = if std::env::var("TIMING_AVX2").is_ok() {
        &[SimdPath::Ifma, SimdPath::Avx2, SimdPath::Portable]
    } else {
        &[SimdPath::Ifma]
    };
    for &path in paths {
        if !path.is_supported() {
            continue;
        }
        let sizes: &[usize] = match path {
            SimdPath::Ifma => &[8, 64],
            SimdPath::Avx2 => &[4, 8, 64],
            SimdPath::Portable => &[8],
        };
        for &n in sizes {
            let reps = 800 / n;
            let (min, med) = per_mult_us(path, n, reps);
            println!("{path:?} batch {n}: min {min:.3} median {med:.3} us/mult");
        }
    }
}
