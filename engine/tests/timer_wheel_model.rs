//! The timer wheel against a BTreeMap reference model, under random inserts and advances in
//! simulated time (small steps, slot-boundary steps, and huge jumps).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use lethe_engine::limits::TIMER_DELAY_TICKS_LIMIT;
use lethe_engine::{Full, Tick, TimerWheel};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Deadline relative to the current tick; may be in the past or past the cap.
    Insert(i64),
    Advance(u64),
    /// Advance with a firing budget.
    AdvanceBudget(u64, u32),
}

fn op(delay_max: u64) -> impl Strategy<Value = Op> {
    let delay_max = delay_max as i64;
    prop_oneof![
        4 => (-50i64..delay_max + 100).prop_map(Op::Insert),
        1 => prop_oneof![Just(delay_max), Just(delay_max + 1), Just(0i64), Just(-1i64)]
            .prop_map(Op::Insert),
        1 => (0u64..4).prop_map(|s| Op::Insert(64i64.pow(s as u32))),
        2 => (0u64..70).prop_map(Op::Advance),
        1 => (0u64..5).prop_map(|s| Op::Advance(64u64.pow(s as u32))),
        1 => (0u64..(delay_max as u64 * 3)).prop_map(Op::Advance),
        1 => (0u64..1u64 << 40).prop_map(Op::Advance),
        1 => ((0u64..200), (0u32..5)).prop_map(|(d, b)| Op::AdvanceBudget(d, b)),
    ]
}

struct Model {
    pending: BTreeMap<(Tick, u32), ()>,
    now: Tick,
}

fn run(start: Tick, capacity: u32, delay_max: u64, ops: Vec<Op>) {
    let mut wheel = TimerWheel::new(capacity, delay_max, start);
    let mut model = Model {
        pending: BTreeMap::new(),
        now: start,
    };
    let mut deadline_of: BTreeMap<u32, Tick> = BTreeMap::new();
    let mut next_item = 0u32;
    for op in ops {
        match op {
            Op::Insert(delta) => {
                let deadline = model.now.saturating_add_signed(delta);
                let item = next_item;
                next_item += 1;
                let effective = deadline.min(model.now + delay_max);
                match wheel.insert(deadline, item) {
                    Ok(got) => {
                        assert_eq!(got, effective);
                        assert!(model.pending.len() < capacity as usize);
                        model.pending.insert((effective, item), ());
                        deadline_of.insert(item, effective);
                    }
                    Err(Full(back)) => {
                        assert_eq!(back, item);
                        assert_eq!(model.pending.len(), capacity as usize);
                    }
                }
            }
            Op::Advance(delta) => advance(&mut wheel, &mut model, &deadline_of, delta, u32::MAX),
            Op::AdvanceBudget(delta, budget) => {
                advance(&mut wheel, &mut model, &deadline_of, delta, budget)
            }
        }
        assert_eq!(wheel.len() as usize, model.pending.len());
        check_next_deadline(&wheel, &model);
    }
    // Drain everything: nothing is ever lost.
    advance(
        &mut wheel,
        &mut model,
        &deadline_of,
        delay_max + 1,
        u32::MAX,
    );
    assert!(wheel.is_empty());
    assert!(model.pending.is_empty());
}

fn advance(
    wheel: &mut TimerWheel<u32>,
    model: &mut Model,
    deadline_of: &BTreeMap<u32, Tick>,
    delta: u64,
    budget: u32,
) {
    model.now += delta;
    let now = model.now;
    let mut fired = Vec::new();
    let count = wheel.advance(now, budget, |item| fired.push(item));
    assert_eq!(count as usize, fired.len());
    assert_eq!(wheel.elapsed(), now);
    let due = model.pending.range(..=(now, u32::MAX)).count();
    assert_eq!(fired.len(), due.min(budget as usize));
    for item in fired {
        let deadline = deadline_of[&item];
        assert!(
            deadline <= now,
            "item {item} fired early: deadline {deadline}, now {now}"
        );
        assert!(
            model.pending.remove(&(deadline, item)).is_some(),
            "item {item} fired twice"
        );
    }
}

fn check_next_deadline(wheel: &TimerWheel<u32>, model: &Model) {
    let earliest = model.pending.keys().next().map(|&(deadline, _)| deadline);
    let next = wheel.next_deadline();
    assert_eq!(next.is_some(), earliest.is_some());
    if let (Some(next), Some(earliest)) = (next, earliest) {
        // A lower bound on the earliest deadline, never before the wheel's own time...
        assert!(next >= wheel.elapsed().min(earliest));
        assert!(next <= earliest.max(wheel.elapsed()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn wheel_matches_model_small_cap(
        start in prop_oneof![Just(0u64), 0u64..1 << 30, Just((1u64 << 24) - 7)],
        ops in prop::collection::vec(op(300), 1..300),
    ) {
        run(start, 64, 300, ops);
    }

    #[test]
    fn wheel_matches_model_nym_cap(
        start in 0u64..1 << 40,
        ops in prop::collection::vec(op(10_000), 1..300),
    ) {
        run(start, 128, 10_000, ops);
    }

    #[test]
    fn wheel_matches_model_full_range(
        start in prop_oneof![0u64..1 << 40, Just((1u64 << 24) - 1)],
        ops in prop::collection::vec(op(TIMER_DELAY_TICKS_LIMIT), 1..200),
    ) {
        run(start, 32, TIMER_DELAY_TICKS_LIMIT, ops);
    }
}

/// Many timers through a long simulated run: exercises every level's cascade in bulk.
#[test]
fn bulk_random_run_never_early_never_lost() {
    let mut wheel = TimerWheel::new(100_000, 10_000, 0);
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut deadlines = vec![0u64; 1_000_000];
    let (mut now, mut inserted, mut fired) = (0u64, 0usize, 0usize);
    while inserted < deadlines.len() {
        for _ in 0..(rand() % 200) {
            if inserted == deadlines.len() {
                break;
            }
            let deadline = now + rand() % 12_000;
            match wheel.insert(deadline, inserted as u32) {
                Ok(effective) => {
                    deadlines[inserted] = effective;
                    inserted += 1;
                }
                Err(Full(_)) => break,
            }
        }
        now += rand() % 40;
        wheel.advance(now, u32::MAX, |item| {
            assert!(deadlines[item as usize] <= now);
            assert!(deadlines[item as usize] + 1 > now.saturating_sub(40)); // not stuck
            fired += 1;
        });
    }
    wheel.advance(now + 10_001, u32::MAX, |_| fired += 1);
    assert_eq!(fired, deadlines.len());
    assert!(wheel.is_empty());
}
