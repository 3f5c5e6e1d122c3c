//! Clients trace their packets on a real run (issue 18 item 2): `lethe testnet up --trace DIR`
//! (one authority, 3 layers x 1 mixnode, one gateway, the service provider, no credentials),
//! a `lethe client send --trace DIR` with fast Poisson and loop streams, then `testnet down`.
//! The merged trace must hold the client's `send` rows of real, drop-cover and loop-cover
//! packets, every one linked by id to the gateway's `arrive` row, its ACK and loop-cover
//! deliveries (a loop's linked to the gateway's delivery by the id of its last link), her own fragments' deliveries (she sends to herself) named as their sends,
//! so the metrics see an end-to-end latency, the provider's own part (it traces because the testnet does), and a cover
//! overhead the metrics see. `testnet env` names the trace directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::testnet::{lethe, Testnet};
use common::{random_bytes, LETHE};
use lethe_sim::metrics::{self, MetricsOptions};
use lethe_sim::trace::{Class, Kind, Role, TraceEvent, TraceReader};

/// The client's name in the trace (`lethe_nodes::trace::client_name`) from its address file.
fn traced_name(address: &str) -> String {
    let identity = address.split('.').next().unwrap();
    let identity = lethe_nodes::keyfile::unhex_32(identity).unwrap();
    lethe_nodes::trace::client_name(&identity)
}

/// `lethe client send` of `file` to `address` (the sender's own), fast streams, per-hop
/// delay `hop_delay_ms`, acknowledged.
fn send_to_self(dir: &Path, address: &str, file: &Path, hop_delay_ms: &str, extra: &[&str]) {
    let out = Command::new(LETHE)
        .args([
            "client",
            "send",
            "--dir",
            dir.to_str().unwrap(),
            "--to",
            address,
            "--file",
            file.to_str().unwrap(),
            "--wait-acks",
            "--timeout-s",
            "120",
            "--send-delay-ms",
            "10",
            "--loop-delay-ms",
            "10",
            "--hop-delay-ms",
            hop_delay_ms,
            "--max-retransmissions",
            "40",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_traced_client_writes_its_classes_and_links_to_its_gateway() {
    let root = std::env::temp_dir().join(format!("lethe-client-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let trace_dir = root.join("trace");
    let trace = trace_dir.to_str().unwrap();
    let net = Testnet::up(
        &root.join("testnet"),
        &[
            "--authorities",
            "1",
            "--mixnodes-per-layer",
            "1",
            "--gateways",
            "1",
            "--credentials",
            "false",
            "--trace",
            trace,
        ],
    );
    let env = lethe(&["testnet", "env", "--dir", net.dir.to_str().unwrap()]);
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    let canonical = std::fs::canonicalize(&trace_dir).unwrap();
    assert!(
        env.contains(&format!("TESTNET_TRACE={}", canonical.display())),
        "{env}"
    );
    let gateway = net.info("gateway1", "identity");
    let alice = root.join("alice");
    let alice_address = net.init_client(&alice, &["--gateway", &gateway]);
    let provider_address = std::fs::read_to_string(net.dir.join("provider").join("address"))
        .unwrap()
        .trim()
        .to_string();

    // The gateway refuses forwards to mixes its topology does not list yet (they registered
    // with it): an untraced send first, acknowledged, so that every traced packet is relayed.
    let file = root.join("payload");
    std::fs::write(&file, random_bytes(24_000, 18)).unwrap();
    send_to_self(&alice, &alice_address, &file, "2", &[]);
    // Eleven fragments to herself, a Poisson tick every 10 ms, loops as often, 20 ms per hop:
    // after the last fragment, the last ACK takes six hops (about 120 ms) to come back,
    // during which the Poisson stream sends drop cover (about a dozen ticks); a loop takes
    // three hops, so the first loops are back before the last ACK.
    send_to_self(&alice, &alice_address, &file, "20", &["--trace", trace]);
    // A second part for the same client in the same run is refused.
    let again = lethe(&[
        "client",
        "send",
        "--dir",
        alice.to_str().unwrap(),
        "--to",
        &alice_address,
        "--message",
        "x",
        "--trace",
        trace,
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Down flushes every node's part and the provider's.
    drop(net);

    let merged = lethe_sim::merge::merge_parts(&trace_dir).unwrap();
    let reader = TraceReader::open(&merged).unwrap();
    let meta = reader.meta().clone();
    let rows: Vec<TraceEvent> = reader.map(Result::unwrap).collect();
    let index = |name: &str| {
        meta.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} not in the trace")) as u32
    };
    let alice_node = index(&traced_name(&alice_address));
    let provider_node = index(&traced_name(&provider_address));
    let gateways: HashSet<u32> = (0u32..)
        .zip(&meta.nodes)
        .filter(|(_, n)| n.role == Role::Gateway)
        .map(|(i, _)| i)
        .collect();
    let arrived: HashSet<u64> = rows
        .iter()
        .filter(|r| r.kind == Kind::Arrive && gateways.contains(&r.node))
        .map(|r| r.packet_id)
        .collect();

    let sent: Vec<&TraceEvent> = rows
        .iter()
        .filter(|r| r.node == alice_node && r.kind == Kind::Send)
        .collect();
    for class in [Class::Real, Class::DropCover, Class::LoopCover] {
        assert!(
            sent.iter().any(|r| r.class == class),
            "no {class:?} send row of the client"
        );
    }
    for row in &sent {
        assert!(
            arrived.contains(&row.packet_id),
            "the client's {:?} send {} has no gateway arrival",
            row.class,
            row.packet_id
        );
        assert!(row.next_hop.is_some_and(|hop| gateways.contains(&hop)));
    }
    assert!(sent
        .iter()
        .filter(|r| r.class == Class::Real)
        .all(|r| r.message_id.is_some() && r.fragment_id.is_some()));
    let delivered = |class| {
        rows.iter()
            .filter(|r| r.node == alice_node && r.kind == Kind::Deliver && r.class == class)
            .count()
    };
    assert!(delivered(Class::Ack) > 0, "no ACK delivery");
    assert!(delivered(Class::LoopCover) > 0, "no loop came back");
    // Her loops come back under the id of their last link, the exit gateway's delivery's
    // (a loop of the untraced warm-up, redelivered from the mailbox, has none: id 0).
    let gateway_delivered: HashSet<u64> = rows
        .iter()
        .filter(|r| r.kind == Kind::Deliver && gateways.contains(&r.node))
        .map(|r| r.packet_id)
        .collect();
    let loop_ids: Vec<u64> = rows
        .iter()
        .filter(|r| r.node == alice_node && r.kind == Kind::Deliver)
        .filter(|r| r.class == Class::LoopCover && r.packet_id != 0)
        .map(|r| r.packet_id)
        .collect();
    assert!(!loop_ids.is_empty(), "no loop delivery names its last link");
    assert!(
        loop_ids.iter().all(|id| gateway_delivered.contains(id)),
        "a loop's last-link id matches no gateway delivery"
    );
    assert!(
        rows.iter()
            .any(|r| r.node == provider_node && r.kind == Kind::Send),
        "the provider wrote no send row"
    );

    let options = MetricsOptions {
        warmup_ns: 0,
        drain_ns: 0,
        labelled: None,
    };
    let computed = metrics::compute(&merged, &options).unwrap();
    assert!(computed.overhead.real_bytes > 0);
    assert!(computed.overhead.cover_bytes > 0);
    assert!(computed.overhead.cover_per_real > 0.0);
    // She sent to herself: each fragment's send and delivery are named alike.
    assert!(computed.latency.end_to_end_ms.count > 0);
    let _ = std::fs::remove_dir_all(&root);
}
