//! Timer wheel vs a `BinaryHeap` on the same simulated forwarding workload, and the replay
//! filter's `check_and_insert` cost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lethe_engine::replay::{ReplayFilter, ReplayParams};
use lethe_engine::TimerWheel;

/// Per tick: `per_tick` packets arrive with a delay in [0, 2 × mean) ticks, then the clock
/// advances one tick and everything due fires. Steady state holds ~per_tick × mean pending.
struct Workload {
    delays: Vec<u64>,
    per_tick: usize,
}

impl Workload {
    fn new(per_tick: usize, mean: u64, ticks: usize) -> Self {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let delays = (0..per_tick * ticks)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % (2 * mean)
            })
            .collect();
        Workload { delays, per_tick }
    }
}

fn run_wheel(w: &Workload, wheel: &mut TimerWheel<u32>, out: &mut Vec<u32>) -> u64 {
    let mut fired = 0u64;
    let start = wheel.elapsed();
    for (tick, chunk) in w.delays.chunks(w.per_tick).enumerate() {
        let now = start + tick as u64;
        for (i, &delay) in chunk.iter().enumerate() {
            let _ = wheel.insert(now + delay, i as u32);
        }
        out.clear();
        fired += u64::from(wheel.advance_into(now + 1, out));
    }
    let end = start + (w.delays.len() / w.per_tick) as u64 + 100_000;
    out.clear();
    while !wheel.is_empty() {
        out.clear();
        fired += u64::from(wheel.advance_into(end, out));
    }
    fired
}

fn run_heap(w: &Workload, heap: &mut BinaryHeap<Reverse<(u64, u32)>>, out: &mut Vec<u32>) -> u64 {
    let mut fired = 0u64;
    for (tick, chunk) in w.delays.chunks(w.per_tick).enumerate() {
        let now = tick as u64;
        for (i, &delay) in chunk.iter().enumerate() {
            heap.push(Reverse((now + delay, i as u32)));
        }
        out.clear();
        while let Some(&Reverse((deadline, item))) = heap.peek() {
            if deadline > now + 1 {
                break;
            }
            heap.pop();
            out.push(item);
            fired += 1;
        }
    }
    while let Some(Reverse((_, item))) = heap.pop() {
        out.push(item);
        fired += 1;
    }
    fired
}

fn timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("timers");
    // (packets per tick, mean delay in ticks): 100 pkt/ms × 200 ms ≈ 20k pending;
    // 500 pkt/ms × 200 ms ≈ 100k pending (peers.md §5's per-core estimate).
    for &(per_tick, mean) in &[(100usize, 200u64), (500, 200)] {
        let w = Workload::new(per_tick, mean, 2_000);
        group.throughput(Throughput::Elements(w.delays.len() as u64));
        let id = format!("{per_tick}x{mean}");
        group.bench_with_input(BenchmarkId::new("wheel", &id), &w, |b, w| {
            let mut wheel = TimerWheel::new(1 << 18, 10_000, 0);
            let mut out = Vec::with_capacity(1 << 18);
            b.iter(|| black_box(run_wheel(w, &mut wheel, &mut out)));
        });
        group.bench_with_input(BenchmarkId::new("binary_heap", &id), &w, |b, w| {
            let mut heap = BinaryHeap::with_capacity(1 << 18);
            let mut out = Vec::with_capacity(1 << 18);
            b.iter(|| black_box(run_heap(w, &mut heap, &mut out)));
        });
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay_check_and_insert");
    let tags: Vec<[u8; 32]> = (0..1u64 << 20)
        .map(|i| {
            let mut tag = [0u8; 32];
            let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for chunk in tag.chunks_exact_mut(8) {
                z = (z ^ (z >> 31))
                    .wrapping_mul(0xBF58_476D_1CE4_E5B9)
                    .wrapping_add(1);
                chunk.copy_from_slice(&z.to_le_bytes());
            }
            tag
        })
        .collect();
    // 100 k items fit in L2 (compute cost); 10 M items at 1e-5 are far larger than the caches,
    // so each check is a memory access (a TLB miss too without huge pages).
    for (items, block_words) in [
        (100_000u64, 1u32),
        (100_000, 8),
        (10_000_000, 1),
        (10_000_000, 8),
    ] {
        let params = ReplayParams::for_items(items, 1e-5, block_words).unwrap();
        let filter = ReplayFilter::new(1, params);
        group.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        let id = format!("items{items}_block_words{block_words}");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                i = (i + 1) & ((1 << 20) - 1);
                black_box(filter.check_and_insert(&tags[i]))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, timers, replay);
criterion_main!(benches);
