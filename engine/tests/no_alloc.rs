//! After construction the wheel, pool and batcher never touch the heap: a counting global
//! allocator (per thread, so the test harness's own threads do not interfere) proves it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../crypto/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use counting_alloc::allocations;

use lethe_engine::{Batcher, BufferPool, Full, TimerWheel};

#[test]
fn steady_state_does_not_allocate() {
    let capacity = 10_000u32;
    let mut wheel: TimerWheel<u32> = TimerWheel::new(capacity, 10_000, 0);
    let mut pool = BufferPool::new(capacity, 2_048);
    let mut batcher: Batcher<u32> = Batcher::new(64, 200);
    let mut expired: Vec<u32> = Vec::with_capacity(capacity as usize);
    let before = allocations();

    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut now = 0u64;
    let (mut fired, mut sent) = (0u64, 0u64);
    for round in 0..2_000u64 {
        // Receive: take buffers until the pool runs dry, schedule each with a random delay.
        for _ in 0..20 {
            let Some(buf) = pool.alloc() else { break };
            pool.get_mut(&buf)[0] = round as u8;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match wheel.insert(now + state % 12_000, buf.into_raw()) {
                Ok(_) => {}
                Err(Full(raw)) => pool.free(lethe_engine::BufId::from_raw(raw)),
            }
        }
        now += 7;
        expired.clear();
        fired += u64::from(wheel.advance_into(now, &mut expired));
        // Send: batch the expired buffers, free them once a batch goes out.
        for &raw in &expired {
            if let Some(batch) = batcher.push(now * 1_000, raw) {
                for raw in batch {
                    pool.free(lethe_engine::BufId::from_raw(raw));
                    sent += 1;
                }
            }
        }
        if let Some(batch) = batcher.poll(now * 1_000) {
            for raw in batch {
                pool.free(lethe_engine::BufId::from_raw(raw));
                sent += 1;
            }
        }
        let _ = wheel.next_deadline();
    }
    let after = allocations();
    assert_eq!(after - before, 0, "allocated in steady state");
    assert!(
        fired > 10_000,
        "the loop must have exercised expiry: {fired}"
    );
    assert!(sent > 10_000);
    // The counter works at all.
    let probe = vec![1u8; 16];
    assert!(allocations() > after);
    drop(probe);
}
