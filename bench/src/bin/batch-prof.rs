//! Profiling driver: only `BatchProcessor::process` over a fixed corpus (64-packet batches,
//! v260, 2413 B), for `perf record`. Prints µs per packet (thread CPU time, median of rounds).
//! `LETHE_PROF_ROUNDS` sets the round count (default 400).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use lethe_bench::sphinx_setup::{Setup, PACKET_SIZE};
use lethe_crypto::sphinx::{BatchProcessor, NodeSecrets};

const BATCH: usize = 64;

fn main() {
    let rounds: usize = std::env::var("LETHE_PROF_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let setup = Setup::new();
    let node = &setup.secrets[0];
    let keys = NodeSecrets {
        primary: node,
        secondary: None,
    };
    let corpus = setup.corpus(BATCH * 4, 1);
    let mut processor = BatchProcessor::new(BATCH);
    let mut buffers = vec![vec![0u8; PACKET_SIZE]; BATCH];
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let packets = &corpus[(round % 4) * BATCH..(round % 4 + 1) * BATCH];
        for (buffer, packet) in buffers.iter_mut().zip(packets) {
            buffer.copy_from_slice(packet);
        }
        let start = lethe_bench::thread_cpu_ns();
        processor.process(&mut buffers, keys, |_, outcome| {
            black_box(outcome.unwrap());
        });
        times.push((lethe_bench::thread_cpu_ns() - start) / 1e3 / BATCH as f64);
    }
    times.sort_by(f64::total_cmp);
    println!("{{\"batch_us\":{:.2}}}", times[times.len() / 2]);
}
