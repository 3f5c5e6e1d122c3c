//! The simulator (real engine cores, real Sphinx) and the metrics over its traces: seeded,
//! small configurations whose expected values come from the models (Loopix Lemma 1, no mixing
//! means no anonymity). Tolerances are stated at each check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::temp_dir;
use lethe_sim::metrics::{compute, MetricsOptions, TraceMetrics};
use lethe_sim::sim::{self, CoverRates, NodeFailure, SimConfig, SphinxMode};
use lethe_sim::trace::{Class, Kind, TraceReader};

const S: u64 = 1_000_000_000;

fn simulate(name: &str, config: &SimConfig) -> PathBuf {
    let path = temp_dir(name).join("trace.csv");
    let summary = sim::run(config, &path, "test").unwrap();
    assert!(summary.real_sent_count > 0);
    path
}

fn metrics(path: &std::path::Path, warmup_s: u64, drain_s: u64) -> TraceMetrics {
    let options = MetricsOptions {
        warmup_ns: warmup_s * S,
        drain_ns: drain_s * S,
        labelled: None,
    };
    compute(path, &options).unwrap()
}

/// Ten clients through one mix per layer: every mix sees all the traffic.
fn one_mix_per_layer(delay_ms_mean: f64, duration_ms: u64) -> SimConfig {
    SimConfig {
        duration_ms,
        clients: 10,
        mixes_per_layer: 1,
        delay_ms_mean,
        message_rate_per_s: 10.0,
        ..SimConfig::small(1)
    }
}

#[test]
fn a_seed_gives_the_same_trace_and_another_seed_another() {
    let config = SimConfig::small(5);
    let a = std::fs::read(simulate("same-a", &config)).unwrap();
    let b = std::fs::read(simulate("same-b", &config)).unwrap();
    assert!(a == b, "two runs of one seed differ");
    let c = std::fs::read(simulate("same-c", &SimConfig::small(6))).unwrap();
    assert!(a != c);
}

#[test]
fn every_real_message_is_delivered_through_every_layer_and_acknowledged() {
    for sphinx in [SphinxMode::Real, SphinxMode::CostModel] {
        every_message_delivered(sphinx);
    }
}

fn every_message_delivered(sphinx: SphinxMode) {
    let config = SimConfig {
        sphinx,
        ..SimConfig::small(2)
    };
    let path = temp_dir(&format!("delivered-{sphinx:?}")).join("trace.csv");
    let summary = sim::run(&config, &path, "test").unwrap();
    assert_eq!(summary.real_delivered_count, summary.real_sent_count);
    assert_eq!(summary.dropped_count, 0);
    // Each message is one fragment: the recipient's client core hands it over, and the
    // sender's core reports it delivered once its SURB-ACK came back, with nothing sent again.
    assert!(summary.messages_count > 100, "{summary:?}");
    assert_eq!(summary.real_sent_count, summary.messages_count);
    assert_eq!(summary.messages_received_count, summary.messages_count);
    assert_eq!(summary.messages_acked_count, summary.messages_count);
    assert_eq!(summary.acks_received_count, summary.messages_count);
    assert_eq!(summary.retransmitted_count, 0);
    // Each real packet: send, gateway arrive + depart, then arrive + depart at 3 mixes,
    // arrive + deliver at the exit gateway: 11 rows. Its SURB-ACK: send at the exit gateway,
    // arrive + depart at 3 mixes, arrive + deliver at the sender's gateway: 9 rows.
    let mut rows_by_class = std::collections::HashMap::new();
    let mut acks_delivered = 0u64;
    for event in TraceReader::open(&path).unwrap() {
        let event = event.unwrap();
        *rows_by_class.entry(event.class).or_insert(0u64) += 1;
        if event.class == Class::Ack && event.kind == Kind::Deliver {
            acks_delivered += 1;
        }
    }
    assert_eq!(rows_by_class[&Class::Real], summary.real_sent_count * 11);
    assert_eq!(rows_by_class[&Class::Ack], summary.real_sent_count * 9);
    assert_eq!(acks_delivered, summary.messages_count);
    assert_eq!(
        rows_by_class.len(),
        2,
        "no cover configured: {rows_by_class:?}"
    );
    let rows = TraceReader::open(&path).unwrap().count() as u64;
    assert_eq!(rows, summary.trace_rows_count);
    // Without the lab columns, no mix row names a message.
    for event in TraceReader::open(&path).unwrap() {
        let event = event.unwrap();
        if matches!(event.kind, Kind::Arrive | Kind::Depart) {
            assert_eq!(event.message_id, None);
            assert!(event.lab.is_empty());
        }
    }
}

#[test]
fn one_to_four_layers_deliver_through_every_layer() {
    for layers in 1..=4u32 {
        let config = SimConfig {
            layers,
            duration_ms: 2_000,
            ..SimConfig::small(3)
        };
        let path = temp_dir(&format!("layers-{layers}")).join("trace.csv");
        let summary = sim::run(&config, &path, "test").unwrap();
        assert!(summary.messages_count > 20, "{summary:?}");
        assert_eq!(summary.messages_acked_count, summary.messages_count);
        assert_eq!(summary.messages_received_count, summary.messages_count);
        // A real packet: send, gateway arrive + depart, arrive + depart per layer, then
        // arrive + deliver at the exit gateway.
        let mut real_rows = 0u64;
        let mut mix_layers = std::collections::BTreeSet::new();
        let meta = lethe_sim::trace::TraceMeta::load(&path).unwrap();
        assert_eq!(meta.layers, layers);
        for event in TraceReader::open(&path).unwrap() {
            let event = event.unwrap();
            if event.class == Class::Real {
                real_rows += 1;
                let layer = meta.node(event.node).and_then(|n| n.layer);
                if let Some(layer) = layer.filter(|&l| l > 0) {
                    mix_layers.insert(layer);
                }
            }
        }
        assert_eq!(
            real_rows,
            summary.real_sent_count * (5 + 2 * u64::from(layers))
        );
        assert_eq!(mix_layers, (1..=layers).collect());
    }
}

#[test]
fn a_mix_capacity_queues_packets_and_drops_beyond_its_buffers() {
    // 10 clients x 20 messages/s and their ACKs: about 400 packets/s through each mix.
    let fast = SimConfig {
        clients: 10,
        mixes_per_layer: 1,
        message_rate_per_s: 20.0,
        duration_ms: 3_000,
        delay_ms_mean: 10.0,
        ..SimConfig::small(4)
    };
    let run = |name: &str, config: &SimConfig| {
        let path = temp_dir(name).join("trace.csv");
        let summary = sim::run(config, &path, "test").unwrap();
        (summary, metrics(&path, 1, 1))
    };
    let (free, free_metrics) = run("capacity-free", &fast);
    // A mix busy half the time (M/D/1 at 0.5: waits of half a service time on average).
    let (half, half_metrics) = run(
        "capacity-half",
        &SimConfig {
            mix_capacity_pps: Some(800.0),
            ..fast.clone()
        },
    );
    assert_eq!(half.dropped_count, 0, "{half:?}");
    assert_eq!(half.messages_acked_count, half.messages_count);
    let extra_ms =
        half_metrics.latency.end_to_end_ms.mean - free_metrics.latency.end_to_end_ms.mean;
    // Three mixes, each adding at least its service time (1.25 ms) to every packet.
    assert!(extra_ms > 3.0 * 1.25, "{extra_ms} ms");
    assert_eq!(free.dropped_count, 0);
    // Far below the offered load, the backlog outgrows the buffers: overload drops.
    let overloaded = SimConfig {
        mix_capacity_pps: Some(50.0),
        ..fast.clone()
    };
    let path = temp_dir("capacity-overload").join("trace.csv");
    let summary = sim::run(&overloaded, &path, "test").unwrap();
    let overload_drops = TraceReader::open(&path)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.drop_reason.as_deref() == Some("overload"))
        .count();
    assert!(overload_drops > 0, "{summary:?}");
}

#[test]
fn queue_occupancy_follows_poisson_lambda_over_mu() {
    // 100 real packets/s into each mix and their 100 SURB-ACKs/s (the client core asks for
    // ACKs on every real packet; they cross every layer too), 100 ms mean delay for both:
    // lambda/mu = 20. Tolerance: the time-weighted mean within 5 % and the variance within
    // 20 % of lambda/mu (Lemma 1: both equal it), on average over the three mixes, after 2 s
    // of warm-up and with the drain (clients stop at 30 s) cut off.
    let path = simulate("queue", &one_mix_per_layer(100.0, 30_000));
    let m = metrics(&path, 2, 2);
    assert_eq!(m.queue.mixes.len(), 3);
    for mix in &m.queue.mixes {
        assert!((mix.expected - 20.0).abs() < 2.0, "{mix:?}");
    }
    assert!((m.queue.mean_ratio - 1.0).abs() < 0.05, "{:?}", m.queue);
    assert!((m.queue.variance_ratio - 1.0).abs() < 0.2, "{:?}", m.queue);
    // Mixing delays are exponential: end to end is 5 ms of links plus a Gamma(3, 100 ms).
    let latency = &m.latency.end_to_end_ms;
    assert!((latency.mean - 305.0).abs() < 15.0, "{latency:?}");
    let gamma = m.latency.end_to_end_gamma.unwrap();
    assert!((gamma.shape - 3.0).abs() < 0.5, "{gamma:?}");
}

#[test]
fn epsilon_is_near_zero_for_indistinguishable_senders_and_infinite_without_mixing() {
    // c0 and c1 send alike (same rate, same kind of route): with pools of ~100 packets per
    // mix (1 s mean delay at 100 packets/s), a message's likelihood ratio between them stays
    // near 1. Tolerance: mean epsilon below 0.3 (ln 1.35), no labelled message certain.
    let mixed = simulate("epsilon-mixed", &one_mix_per_layer(1_000.0, 20_000));
    let m = metrics(&mixed, 5, 8);
    assert!(m.sender.labelled_messages_count > 100, "{:?}", m.sender);
    assert!(m.sender.epsilon.mean < 0.3, "{:?}", m.sender.epsilon);
    assert_eq!(m.sender.delta, 0.0);
    assert!(m.sender.degree_of_anonymity_mean > 0.9, "{:?}", m.sender);

    // No mixing delay and light traffic: each packet leaves a mix before the next arrives,
    // so every labelled message points at its sender (delta 1, entropy 0).
    let config = SimConfig {
        delay_ms_mean: 0.0,
        message_rate_per_s: 2.0,
        ..SimConfig::small(3)
    };
    let unmixed = simulate("epsilon-unmixed", &config);
    let m = metrics(&unmixed, 1, 1);
    assert!(m.sender.labelled_messages_count > 10);
    assert_eq!(m.sender.delta, 1.0);
    assert_eq!(m.sender.entropy_bits.max, 0.0);
}

#[test]
fn the_flow_matcher_links_everyone_without_cover_or_delay_and_fewer_with_them() {
    // No cover, no mixing delay, constant links: an exit follows its entry by exactly 5 ms.
    // Tolerance: TPR at FPR 0.01 of at least 0.95.
    let config = SimConfig {
        clients: 10,
        delay_ms_mean: 0.0,
        message_rate_per_s: 2.0,
        duration_ms: 20_000,
        ..SimConfig::small(4)
    };
    let plain = metrics(&simulate("flow-plain", &config), 1, 1);
    assert_eq!(plain.flow.positives_count, 10);
    assert_eq!(plain.flow.pairs_count, 90);
    assert!(plain.flow.tpr_at_fpr_0_01 >= 0.95, "{:?}", plain.flow);
    assert_eq!(plain.latency.end_to_end_ms.max, 5.0);

    // Loopix cover (payload, loop and drop streams) and 100 ms mixing: the same attacker
    // ranks the true pairs much worse (AUC below 0.95, TPR at FPR 0.01 below 0.5).
    let covered = SimConfig {
        delay_ms_mean: 100.0,
        cover: Some(CoverRates {
            payload_rate_per_s: 4.0,
            loop_rate_per_s: 2.0,
            drop_rate_per_s: 2.0,
        }),
        ..config
    };
    let covered = metrics(&simulate("flow-covered", &covered), 2, 2);
    assert!(covered.flow.auc < 0.95, "{:?}", covered.flow);
    assert!(covered.flow.tpr_at_fpr_0_01 < 0.5, "{:?}", covered.flow);
    assert!(
        covered.overhead.cover_per_real > 1.0,
        "{:?}",
        covered.overhead
    );
}

#[test]
fn a_failed_node_loses_what_reaches_it_while_down() {
    let config = SimConfig {
        failures: vec![NodeFailure {
            node: "m2.0".into(),
            from_ms: 2_000,
            until_ms: 4_000,
        }],
        ..SimConfig::small(8)
    };
    let path = temp_dir("failure").join("trace.csv");
    let summary = sim::run(&config, &path, "test").unwrap();
    assert!(summary.real_dropped_count > 0);
    // Every real packet sent (retransmissions too) is delivered or lost; lost ACKs are
    // dropped too, but are not real packets.
    assert_eq!(
        summary.real_delivered_count + summary.real_dropped_count,
        summary.real_sent_count
    );
    assert!(summary.dropped_count > summary.real_dropped_count);
    // Every drop follows its packet's arrival at that node (what the metrics rely on).
    let mut arrived = std::collections::HashSet::new();
    for event in TraceReader::open(&path).unwrap() {
        let event = event.unwrap();
        if event.kind == Kind::Arrive {
            arrived.insert((event.node, event.packet_id));
        }
        if event.kind == Kind::Drop {
            assert_eq!(event.drop_reason.as_deref(), Some("node_down"));
            assert!((2 * S..4 * S).contains(&event.t_ns), "{event:?}");
            assert!(
                arrived.contains(&(event.node, event.packet_id)),
                "{event:?}"
            );
        }
    }
    // The metrics read the trace; the failed mix holds about lambda/mu = 0.75 on average.
    let m = metrics(&path, 0, 0);
    let failed = m.queue.mixes.iter().find(|q| q.node == "m2.0").unwrap();
    assert!(failed.mean > 0.0 && failed.mean < 2.0, "{failed:?}");
}

#[test]
fn a_mix_failure_window_causes_retransmissions_that_then_succeed() {
    // m2.0 is down from 2 s to 4 s: the packets and ACKs through it are lost, the senders'
    // cores send those fragments again after their ACK timer, and every message ends
    // acknowledged (the run continues past the sending time until none is outstanding).
    let config = SimConfig {
        failures: vec![NodeFailure {
            node: "m2.0".into(),
            from_ms: 2_000,
            until_ms: 4_000,
        }],
        ..SimConfig::small(8)
    };
    let path = temp_dir("failure-retransmit").join("trace.csv");
    let summary = sim::run(&config, &path, "test").unwrap();
    assert!(summary.retransmitted_count > 0, "{summary:?}");
    assert_eq!(summary.given_up_count, 0, "{summary:?}");
    assert_eq!(summary.messages_acked_count, summary.messages_count);
    assert_eq!(summary.messages_received_count, summary.messages_count);
    assert_eq!(
        summary.real_sent_count,
        summary.messages_count + summary.retransmitted_count
    );
    // The same message's fragment is sent twice: once lost inside the window, then again
    // (after the ACK wait of at least 1.5 s) and delivered.
    let mut sends: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    let mut delivered = std::collections::HashSet::new();
    for event in TraceReader::open(&path).unwrap() {
        let event = event.unwrap();
        match (event.kind, event.class) {
            (Kind::Send, Class::Real) => sends
                .entry(event.message_id.unwrap())
                .or_default()
                .push(event.t_ns),
            (Kind::Deliver, Class::Real) => {
                delivered.insert(event.message_id.unwrap());
            }
            _ => {}
        }
    }
    let again: Vec<_> = sends.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(!again.is_empty());
    for (id, times) in again {
        assert!(delivered.contains(id), "message {id} never delivered");
        assert!(times[1] - times[0] >= 1_500_000_000, "{times:?}");
        assert!(times[0] < 4 * S, "{times:?}");
    }
}

#[test]
fn bad_configs_are_refused() {
    let cases = [
        SimConfig {
            layers: 5,
            ..SimConfig::small(1)
        },
        SimConfig {
            clients: 1,
            ..SimConfig::small(1)
        },
        SimConfig {
            delay_ms_mean: f64::NAN,
            ..SimConfig::small(1)
        },
        SimConfig {
            corrupt: vec!["m9.9".into()],
            ..SimConfig::small(1)
        },
        SimConfig {
            packet_size: "jumbo".into(),
            ..SimConfig::small(1)
        },
    ];
    let dir = temp_dir("bad-configs");
    for (index, config) in cases.iter().enumerate() {
        let result = sim::run(config, &dir.join("trace.csv"), "test");
        assert!(
            matches!(result, Err(sim::SimError::Config(_))),
            "case {index}"
        );
    }
}

#[test]
fn the_cli_runs_seeds_and_reports_intervals() {
    let dir = temp_dir("cli");
    let config = dir.join("config.json");
    let small = SimConfig {
        duration_ms: 5_000,
        ..SimConfig::small(11)
    };
    std::fs::write(&config, serde_json::to_string(&small).unwrap()).unwrap();
    let binary = env!("CARGO_BIN_EXE_lethe-sim");
    let out = dir.join("out");
    let run = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--seeds", "2"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("seed-11/trace.csv").is_file());
    assert!(out.join("seed-12/trace.meta.json").is_file());
    let report = Command::new(binary)
        .args(["metrics", "--trace"])
        .arg(&out)
        .args(["--warmup-s", "0.5", "--drain-s", "0.5", "--json"])
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["seeds"], serde_json::json!([11, 12]));
    let entropy = &report["intervals"]["sender_entropy_bits_mean"];
    assert_eq!(entropy["per_seed"].as_array().unwrap().len(), 2);
    assert!(entropy["mean"].as_f64().unwrap() > 0.0);
    assert!(entropy["ci95_half_width"].as_f64().unwrap() >= 0.0);
    // The lab flag is refused without the lab feature, naming it.
    if !lethe_sim::trace::LAB_BUILT {
        let lab = Command::new(binary)
            .args(["run", "--lab", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(dir.join("lab"))
            .output()
            .unwrap();
        assert!(!lab.status.success());
        assert!(String::from_utf8_lossy(&lab.stderr).contains("--features lab"));
    }
    // Warm-up and drain longer than the trace are refused.
    let refused = Command::new(binary)
        .args(["metrics", "--trace"])
        .arg(&out)
        .args(["--warmup-s", "100"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[cfg(feature = "lab")]
#[test]
fn a_lab_trace_links_every_departure_and_corrupt_mixes_do_not_mix() {
    let mixes = ["m1.0", "m1.1", "m2.0", "m2.1", "m3.0", "m3.1"];
    let config = SimConfig {
        lab: true,
        corrupt: mixes.iter().map(|m| m.to_string()).collect(),
        ..SimConfig::small(9)
    };
    let path = simulate("lab", &config);
    use lethe_sim::trace::Role;
    let mut departures = 0u64;
    let mut reader = TraceReader::open(&path).unwrap();
    let roles: Vec<Role> = reader.meta().nodes.iter().map(|n| n.role).collect();
    while let Some(event) = reader.next_event().unwrap() {
        let at_mix = event.kind == Kind::Depart && roles[event.node as usize] == Role::Mix;
        if !at_mix {
            continue;
        }
        departures += 1;
        let lab = event.lab;
        assert!(lab.in_packet_id.is_some(), "{event:?}");
        let (drawn, residence) = (lab.delay_drawn_ns.unwrap(), lab.residence_ns.unwrap());
        // The engine keeps a packet its drawn delay (µs-rounded) and at most one 50 µs tick
        // more: it never leaves early.
        assert!(residence + 1_000 > drawn, "{event:?}");
        assert!(residence <= drawn + 51_000, "{event:?}");
    }
    assert!(departures > 0);
    // Every mix corrupt: the adversary follows every message to its sender.
    let m = metrics(&path, 1, 1);
    assert_eq!(m.sender.delta, 1.0);
    assert_eq!(m.sender.entropy_bits.max, 0.0);
    // Per hop: exponential with the configured 50 ms mean (tolerance 15 %).
    let hop = &m.latency.hop_residence_ms;
    assert!((hop.mean - 50.0).abs() < 7.5, "{hop:?}");
}

#[test]
fn the_configs_the_readme_runs_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // configs/figures: sweep files (tests/sweep.rs).
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config: SimConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(config.validate(), Ok(()), "{}", path.display());
        count += 1;
    }
    assert_eq!(count, 5);
}

/// The cost model (clear packets, decoded hops, no session crypto) against real Sphinx on one
/// seeded config with cover, mix loops and a mix capacity: they differ only in the crypto, so
/// everything is delivered and acknowledged in both, and the metrics agree within sampling
/// noise (the two draw different random streams: Sphinx's own randomness comes from the
/// client cores' generators). Tolerance: 10 % on each mean (about 3 standard errors at this
/// size), one bit of slack on nothing. The cost model is also deterministic.
#[test]
fn the_cost_model_gives_the_metrics_of_real_sphinx() {
    let base = SimConfig {
        duration_ms: 20_000,
        clients: 10,
        delay_ms_mean: 50.0,
        message_rate_per_s: 4.0,
        cover: Some(CoverRates {
            payload_rate_per_s: 8.0,
            loop_rate_per_s: 2.0,
            drop_rate_per_s: 0.0,
        }),
        mix_loop_rate_per_s: 2.0,
        mix_capacity_pps: Some(20_000.0),
        ..SimConfig::small(11)
    };
    let mut results = Vec::new();
    for sphinx in [SphinxMode::Real, SphinxMode::CostModel] {
        let config = SimConfig {
            sphinx,
            ..base.clone()
        };
        let path = temp_dir(&format!("cost-model-{sphinx:?}")).join("trace.csv");
        let summary = sim::run(&config, &path, "test").unwrap();
        assert!(summary.messages_count > 500, "{sphinx:?}: {summary:?}");
        assert_eq!(
            summary.messages_acked_count, summary.messages_count,
            "{sphinx:?}"
        );
        assert_eq!(summary.messages_received_count, summary.messages_count);
        assert_eq!(summary.real_dropped_count, 0, "{sphinx:?}");
        results.push((summary, metrics(&path, 2, 3), path));
    }
    let (real, cost) = (&results[0].1, &results[1].1);
    let pairs = [
        (
            "mix entropy (bits)",
            real.mix_entropy_bits_mean,
            cost.mix_entropy_bits_mean,
        ),
        (
            "sender entropy (bits)",
            real.sender.entropy_bits.mean,
            cost.sender.entropy_bits.mean,
        ),
        (
            "end-to-end latency (ms)",
            real.latency.end_to_end_ms.mean,
            cost.latency.end_to_end_ms.mean,
        ),
        (
            "lambda/mu",
            real.queue.lambda_over_mu_mean(),
            cost.queue.lambda_over_mu_mean(),
        ),
        (
            "queue mean ratio",
            real.queue.mean_ratio,
            cost.queue.mean_ratio,
        ),
        (
            "cover per real",
            real.overhead.cover_per_real,
            cost.overhead.cover_per_real,
        ),
    ];
    for (name, a, b) in pairs {
        println!("{name}: real {a:.4}, cost model {b:.4}");
        assert!(
            a > 0.0 && (a - b).abs() <= 0.10 * a,
            "{name}: real {a}, cost model {b}"
        );
    }
    // Same seed, same trace, in the cost model too.
    let config = SimConfig {
        sphinx: SphinxMode::CostModel,
        ..base
    };
    let again = temp_dir("cost-model-again").join("trace.csv");
    sim::run(&config, &again, "test").unwrap();
    let first = std::fs::read(&results[1].2).unwrap();
    assert!(
        first == std::fs::read(&again).unwrap(),
        "two cost-model runs of one seed differ"
    );
}
