//! Amortised time per X25519 scalar multiplication: x25519-dalek (serial)
//! against Lethe's portable, AVX2 and IFMA paths. Criterion reports time per
//! element (Throughput::Elements = batch size), i.e. per scalar mult.
//!
//! Run: `cargo bench -p lethe-bench --bench x25519`. Paths this CPU lacks are skipped.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lethe_crypto::x25519::{x25519, x25519_batch_with, SimdPath};
use std::time::Duration;

fn corpus(n: usize, seed: u8) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            for (j, x) in b.iter_mut().enumerate() {
                *x = (i as u8).wrapping_mul(31).wrapping_add(j as u8).wrapping_mul(seed) ^ 0x5a;
            }
            b
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("x25519");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let ks = corpus(64, 7);
    let us = corpus(64, 13);

    g.throughput(Throughput::Elements(1));
    g.bench_function("dalek_serial", |b| {
        b.iter(|| x25519_dalek::x25519(black_box(ks[0]), black_box(us[0])))
    });
    g.bench_function("lethe_portable_serial", |b| b.iter(|| x25519(black_box(&ks[0]), black_box(&us[0]))));

    for path in [SimdPath::Avx2, SimdPath::Ifma] {
        if !path.is_supported() {
            eprintln!("skipping {path:?}: not supported by this CPU");
            continue;
        }
        for n in [8usize, 16, 64] {
            g.throughput(Throughput::Elements(n as u64));
            let mut out = vec![[0u8; 32]; n];
            g.bench_with_input(BenchmarkId::new(format!("lethe_{path:?}_batch"), n), &n, |b, &n| {
                b.iter(|| x25519_batch_with(path, black_box(&ks[..n]), black_box(&us[..n]), &mut out))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
