//! Amortised time per X25519 scalar multiplication: x25519-dalek (serial)
//! against Lethe's portable, AVX2 and IFMA paths.
//!
//! Every reported "time" is **per scalar multiplication** (a batch's time
//! divided by its size), in **thread CPU time** (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: the build machines are shared and oversubscribed, and CPU
//! time leaves out the time this thread spent descheduled. Neighbours still
//! perturb caches, so compare ratios within one run.
//!
//! Run: `cargo bench -p lethe-bench --bench x25519`. Paths this CPU lacks are skipped.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lethe_crypto::x25519::{x25519, x25519_batch_with, SimdPath};
use std::hint::black_box;
use std::time::Duration;

/// Thread CPU time in nanoseconds.
struct CpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        thread_cpu_ns() - i
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e3, "µs (cpu)")
        } else {
            (1e6, "ms (cpu)")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n)
            | Throughput::Bytes(n)
            | Throughput::BytesDecimal(n)
            | Throughput::Bits(n)
            | Throughput::ElementsAndBytes { elements: n, .. } => *n as f64,
        };
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v);
        "elem/s (cpu)"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn corpus(n: usize, seed: u8) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            for (j, x) in b.iter_mut().enumerate() {
                *x = (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(j as u8)
                    .wrapping_mul(seed)
                    ^ 0x5a;
            }
            b
        })
        .collect()
}

fn bench(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("x25519_per_mult");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let ks = corpus(64, 7);
    let us = corpus(64, 13);

    g.bench_function("dalek_serial", |b| {
        b.iter(|| x25519_dalek::x25519(black_box(ks[0]), black_box(us[0])))
    });
    g.bench_function("lethe_portable_serial", |b| {
        b.iter(|| x25519(black_box(&ks[0]), black_box(&us[0])))
    });

    for path in [SimdPath::Avx2, SimdPath::Ifma] {
        if !path.is_supported() {
            eprintln!("skipping {path:?}: not supported by this CPU");
            continue;
        }
        for n in [8usize, 16, 64] {
            let mut out = vec![[0u8; 32]; n];
            g.bench_with_input(
                BenchmarkId::new(format!("lethe_{path:?}_batch"), n),
                &n,
                |b, &n| {
                    // Report the time per scalar multiplication.
                    b.iter_custom(|iters| {
                        let t0 = thread_cpu_ns();
                        for _ in 0..iters {
                            x25519_batch_with(
                                path,
                                black_box(&ks[..n]),
                                black_box(&us[..n]),
                                &mut out,
                            )
                            .ok();
                        }
                        (thread_cpu_ns() - t0) / n as u64
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = bench
}
criterion_main!(benches);
