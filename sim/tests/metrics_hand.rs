//! Metrics over hand-built traces whose values are computed by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{event, meta, node, temp_dir, write_trace};
use lethe_sim::metrics::{compute, MetricsOptions};
use lethe_sim::trace::{Kind, Role, TraceEvent, TraceMeta};

const C0: u32 = 0;
const C1: u32 = 1;
const C2: u32 = 2;
const MIX: u32 = 3;
const GATEWAY: u32 = 4;

fn one_mix_network() -> TraceMeta {
    meta(vec![
        node("c0", Role::Client, None),
        node("c1", Role::Client, None),
        node("c2", Role::Client, None),
        node("m1.0", Role::Mix, Some(1)),
        node("g0", Role::Gateway, Some(0)),
    ])
}

/// c0, c1 send (packets 1, 2); the mix outputs one (10); c2 sends (3); the mix outputs two
/// more (11, 12). The gateway delivers 10 as c0's message, 11 as c1's, 12 as c2's.
fn three_messages() -> Vec<TraceEvent> {
    let send = |t, client: u32, packet, message| {
        let mut e = event(t, client, Kind::Send, packet);
        e.next_hop = Some(MIX);
        e.message_id = Some(message);
        e.destination = Some(C0);
        e
    };
    let depart = |t, packet| {
        let mut e = event(t, MIX, Kind::Depart, packet);
        e.next_hop = Some(GATEWAY);
        e
    };
    let deliver = |t, packet, message| {
        let mut e = event(t, GATEWAY, Kind::Deliver, packet);
        e.message_id = Some(message);
        e.destination = Some(C0);
        e
    };
    vec![
        send(0, C0, 1, 100),
        send(0, C1, 2, 101),
        event(10, MIX, Kind::Arrive, 1),
        event(20, MIX, Kind::Arrive, 2),
        depart(30, 10),
        event(35, GATEWAY, Kind::Arrive, 10),
        deliver(35, 10, 100),
        send(38, C2, 3, 102),
        event(40, MIX, Kind::Arrive, 3),
        depart(50, 11),
        depart(60, 12),
        event(65, GATEWAY, Kind::Arrive, 11),
        deliver(65, 11, 101),
        event(70, GATEWAY, Kind::Arrive, 12),
        deliver(70, 12, 102),
    ]
}

#[test]
fn per_mix_and_end_to_end_entropy_by_hand() {
    let dir = temp_dir("hand-entropy");
    let path = write_trace(&dir, one_mix_network(), &three_messages());
    let metrics = compute(&path, &MetricsOptions::default()).unwrap();

    // Eq. 5: outputs of 1 bit (two fresh inputs), 1.5 bits (one old at 1 bit, one new), and
    // 1.5 bits (the last one left).
    let mix = &metrics.mix_entropy_bits["m1.0"];
    assert_eq!(mix.count, 3);
    assert!((mix.mean - 4.0 / 3.0).abs() < 1e-12, "{}", mix.mean);
    assert!((mix.max - 1.5).abs() < 1e-12);

    // Vectors: 10 = (1/2, 1/2, 0): 1 bit; 11 = 12 = (1/4, 1/4, 1/2): 1.5 bits.
    let sender = &metrics.sender;
    assert_eq!(sender.senders_count, 3);
    assert_eq!(sender.entropy_bits.count, 3);
    assert!((sender.entropy_bits.mean - 4.0 / 3.0).abs() < 1e-12);
    let degree = (4.0 / 3.0) / 3f64.log2();
    assert!((sender.degree_of_anonymity_mean - degree).abs() < 1e-12);
    let effective = (2.0 + 2.0 * 2f64.powf(1.5)) / 3.0;
    assert!((sender.effective_senders_mean - effective).abs() < 1e-12);

    // c0 and c1 (the default labelled pair) are equally likely for both their messages.
    assert_eq!(sender.labelled_messages_count, 2);
    assert_eq!(sender.epsilon.count, 2);
    assert!(sender.epsilon.max.abs() < 1e-12);
    assert_eq!(sender.delta, 0.0);

    // End to end: 35, 65 and 32 ns.
    let latency = &metrics.latency.end_to_end_ms;
    assert_eq!(latency.count, 3);
    assert!((latency.mean - (35.0 + 65.0 + 32.0) / 3.0 / 1e6).abs() < 1e-12);
}

#[test]
fn a_corrupt_mix_passes_vectors_unmixed_and_needs_the_lab_column() {
    let dir = temp_dir("hand-corrupt");
    let mut meta = one_mix_network();
    meta.nodes[MIX as usize].corrupt = true;
    let path = write_trace(&dir, meta, &three_messages());
    let error = compute(&path, &MetricsOptions::default()).unwrap_err();
    assert!(error.to_string().contains("lab"), "{error}");
}

#[test]
fn labelled_senders_that_never_mix_have_delta_one() {
    // The mix outputs each packet before the next arrives: nothing mixes.
    let dir = temp_dir("hand-unmixed");
    let mut events = Vec::new();
    for (i, client) in [C0, C1, C0, C1].into_iter().enumerate() {
        let t = i as u64 * 100;
        let (input, output, message) = (1 + i as u64, 10 + i as u64, 100 + i as u64);
        let mut send = event(t, client, Kind::Send, input);
        send.next_hop = Some(MIX);
        send.message_id = Some(message);
        send.destination = Some(C2);
        events.push(send);
        events.push(event(t + 10, MIX, Kind::Arrive, input));
        let mut depart = event(t + 20, MIX, Kind::Depart, output);
        depart.next_hop = Some(GATEWAY);
        events.push(depart);
        events.push(event(t + 30, GATEWAY, Kind::Arrive, output));
        let mut deliver = event(t + 30, GATEWAY, Kind::Deliver, output);
        deliver.message_id = Some(message);
        deliver.destination = Some(C2);
        events.push(deliver);
    }
    let path = write_trace(&dir, one_mix_network(), &events);
    let metrics = compute(&path, &MetricsOptions::default()).unwrap();
    assert_eq!(metrics.sender.labelled_messages_count, 4);
    assert_eq!(metrics.sender.delta, 1.0);
    assert_eq!(metrics.sender.entropy_bits.mean, 0.0);
    assert_eq!(metrics.mix_entropy_bits["m1.0"].mean, 0.0);
}

#[test]
fn queue_occupancy_is_time_weighted() {
    // In at 0 and 10, out at 20 and 40: 1 for 10 ns, 2 for 10 ns, 1 for 20 ns.
    let dir = temp_dir("hand-queue");
    let mut meta = one_mix_network();
    meta.delay_mean_ns = 20;
    let events = vec![
        event(0, MIX, Kind::Arrive, 1),
        event(10, MIX, Kind::Arrive, 2),
        event(20, MIX, Kind::Depart, 3),
        event(40, MIX, Kind::Depart, 4),
    ];
    let path = write_trace(&dir, meta, &events);
    let metrics = compute(&path, &MetricsOptions::default()).unwrap();
    let mix = &metrics.queue.mixes[0];
    assert_eq!(mix.node, "m1.0");
    assert!((mix.mean - 1.25).abs() < 1e-12, "{}", mix.mean);
    assert!((mix.variance - 0.1875).abs() < 1e-12, "{}", mix.variance);
    // lambda = 2 arrivals / 40 ns, 1/mu = 20 ns: lambda/mu = 1.
    assert!((mix.expected - 1.0).abs() < 1e-12, "{}", mix.expected);
}

#[test]
fn warm_up_and_drain_leave_a_window_or_are_refused() {
    let dir = temp_dir("hand-window");
    let path = write_trace(&dir, one_mix_network(), &three_messages());
    let options = MetricsOptions {
        warmup_ns: 40,
        drain_ns: 0,
        labelled: None,
    };
    // Every message was sent before 40 ns: none counts; the mix's last two outputs do.
    let metrics = compute(&path, &options).unwrap();
    assert_eq!(metrics.window_ns, (40, 70));
    assert_eq!(metrics.sender.entropy_bits.count, 0);
    assert_eq!(metrics.mix_entropy_bits["m1.0"].count, 2);
    let options = MetricsOptions {
        warmup_ns: 40,
        drain_ns: 40,
        labelled: None,
    };
    assert!(compute(&path, &options).is_err());
}
