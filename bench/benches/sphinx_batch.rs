//! Batched Sphinx vs serial vs `sphinx-packet` 0.8: process one hop and create packets,
//! 2413-byte packets, 4 hops, v260, one core. Throughput is per packet. Times are the
//! thread's CPU time (see `lethe_bench::thread_cpu_ns`): wall time on the shared machines
//! favours whichever side has the shorter timed spans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lethe_bench::sphinx_setup::{Setup, PACKET_SIZE};
use lethe_crypto::sphinx::{self, BatchProcessor, NodeSecrets, Packet};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sphinx_packet::SphinxPacket;

const BATCHES: [usize; 4] = [1, 8, 16, 64];

/// Criterion measurement in thread CPU nanoseconds (formatted like wall time).
struct CpuTime {
    wall: WallTime,
}

impl Measurement for CpuTime {
    type Intermediate = f64;
    type Value = f64;

    fn start(&self) -> f64 {
        lethe_bench::thread_cpu_ns()
    }

    fn end(&self, start: f64) -> f64 {
        lethe_bench::thread_cpu_ns() - start
    }

    fn add(&self, v1: &f64, v2: &f64) -> f64 {
        v1 + v2
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

fn cpu_time() -> Criterion<CpuTime> {
    Criterion::default().with_measurement(CpuTime { wall: WallTime })
}

fn process(c: &mut Criterion<CpuTime>) {
    let setup = Setup::new();
    let corpus = setup.corpus(64, 7);
    let node = &setup.secrets[0];
    let keys = NodeSecrets {
        primary: node,
        secondary: None,
    };
    let mut group = c.benchmark_group("sphinx_batch_process_2413B_v260_4_hops");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    group.bench_function("sphinx-packet", |b| {
        let mut next = 0;
        b.iter_batched(
            || {
                next = (next + 1) % corpus.len();
                SphinxPacket::from_bytes(&corpus[next]).unwrap()
            },
            |packet| black_box(packet.process(node).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("lethe-serial", |b| {
        let mut buffer = vec![0u8; PACKET_SIZE];
        let mut next = 0;
        b.iter(|| {
            next = (next + 1) % corpus.len();
            buffer.copy_from_slice(&corpus[next]);
            let mut packet = Packet::new_checked(&mut buffer[..]).unwrap();
            black_box(sphinx::process(&mut packet, node).unwrap());
        })
    });
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let mut processor = BatchProcessor::new(batch);
        group.bench_function(format!("lethe-batch-{batch}"), |b| {
            b.iter_batched_ref(
                || corpus[..batch].to_vec(),
                |buffers| {
                    processor.process(buffers, keys, |_, outcome| {
                        black_box(outcome.unwrap());
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn create(c: &mut Criterion<CpuTime>) {
    let setup = Setup::new();
    let reference = setup.reference();
    let mut group = c.benchmark_group("sphinx_batch_create_2413B_v260_4_hops");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    group.throughput(Throughput::Elements(1));
    group.bench_function("sphinx-packet", |b| {
        b.iter(|| black_box(reference.create(&setup.message)))
    });
    group.bench_function("lethe-serial", |b| {
        let mut buffer = vec![0u8; PACKET_SIZE];
        b.iter(|| {
            black_box(
                sphinx::create_into(&mut buffer, &setup.message, &setup.spec(), None, &mut rng)
                    .unwrap(),
            );
        })
    });
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let mut outs = vec![vec![0u8; PACKET_SIZE]; batch];
        group.bench_function(format!("lethe-batch-{batch}"), |b| {
            b.iter(|| {
                let mut jobs = setup.create_jobs(&mut outs);
                sphinx::create_batch(&mut jobs, &mut rng, |_, r| {
                    black_box(r.unwrap());
                });
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = cpu_time();
    targets = process, create
}
criterion_main!(benches);
