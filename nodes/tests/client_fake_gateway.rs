//! Whole clients against an in-test fake gateway (WebSocket, real handshake and session) that
//! carries packets through the test network's four hops: a 100 KB message from A reaches B
//! intact with every fragment acknowledged; replies through SURBs; retransmission of packets
//! the gateway drops; cover traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use client_support::FakeGateway;
use lethe_nodes::client::{
    connect, ClientConfig, ClientHandle, ClientLimits, LoopixParams, ReceivedMessage,
    StaticTopology,
};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

fn params() -> LoopixParams {
    LoopixParams {
        average_packet_delay_ms: 1.0,
        average_ack_delay_ms: 1.0,
        message_sending_average_delay_ms: 2.0,
        loop_cover_average_delay_ms: 50.0,
        ack_wait_addition_ms: 300,
        ..LoopixParams::default()
    }
}

async fn client(
    gateway: &FakeGateway,
    seed: u8,
    loopix: LoopixParams,
) -> (ClientHandle, mpsc::Receiver<ReceivedMessage>) {
    let config = ClientConfig {
        identity_seed: Zeroizing::new([seed; 32]),
        encryption_secret: Zeroizing::new([seed.wrapping_add(1); 32]),
        gateway: gateway.net.gateway_identity,
        loopix,
        limits: ClientLimits::default(),
        topology: Arc::new(StaticTopology(gateway.net.topology.clone())),
        received_capacity: 16,
        wallet: None,
        keepalive_us: lethe_proto::limits::CLIENT_KEEPALIVE_US,
        trace_dir: None,
    };
    let (handle, received) = connect(config).await.unwrap();
    handle
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    (handle, received)
}

async fn recv(received: &mut mpsc::Receiver<ReceivedMessage>) -> ReceivedMessage {
    tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("no message within 30 s")
        .expect("client stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_kilobytes_from_a_to_b_with_acks_and_a_reply() {
    let gateway = FakeGateway::start(0).await;
    let (a, mut a_received) = client(&gateway, 1, params()).await;
    let (b, mut b_received) = client(&gateway, 2, params()).await;

    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let ticket = a.send(&b.address(), data.clone(), 3).await.unwrap();
    let mut message = recv(&mut b_received).await;
    assert_eq!(message.data.len(), data.len());
    assert!(message.data == data, "content differs");
    assert_eq!(message.message_id, ticket.message_id);
    assert_eq!(message.reply_surbs, 3);
    assert_eq!(message.in_reply_to, None);
    message.confirm();

    // Every fragment acknowledged.
    let mut progress = ticket.progress.clone();
    let done = tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.finished()))
        .await
        .expect("acks within 30 s")
        .map(|p| *p)
        .unwrap();
    assert!(done.delivered(), "{done:?}");
    let fragments = done.fragments as u64;
    assert!(fragments >= 64, "{fragments} fragments");
    let stats = a.stats();
    assert_eq!(stats.core.fragments_acked, fragments);
    assert_eq!(stats.core.forged_acks, 0);

    // B answers through A's SURBs.
    let bundle = message.surb_bundle.unwrap();
    let answer = b"anonymous answer".repeat(200); // 3200 bytes: two reply fragments.
    b.reply(bundle, answer.clone()).await.unwrap();
    assert_eq!(b.surbs_left(bundle).await.unwrap(), 1);
    let mut reply = recv(&mut a_received).await;
    assert_eq!(reply.data, answer);
    assert_eq!(reply.in_reply_to, Some(ticket.message_id));
    reply.confirm();
    // More than the remaining SURBs can carry is refused.
    assert!(b.reply(bundle, vec![0u8; 10_000]).await.is_err());

    // Confirmations reach the gateway; nothing the gateway got was malformed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gateway.stats.confirmed.load(Ordering::Relaxed) >= fragments + 2);
    assert_eq!(gateway.stats.errors.load(Ordering::Relaxed), 0);
    // Cover traffic flowed (drop cover dropped by the gateway, loop cover back to each client).
    assert!(gateway.stats.drop_cover.load(Ordering::Relaxed) > 0);
    assert!(a.stats().core.loop_cover_sent > 0);
    let b_stats = b.stats();
    assert_eq!(b_stats.core.messages_received, 1);
    assert_eq!(b_stats.core.undecryptable, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_packets_are_retransmitted() {
    // The gateway loses every third packet it is given.
    let gateway = FakeGateway::start(3).await;
    let loopix = params().without_cover();
    let (a, _a_received) = client(&gateway, 3, loopix).await;
    let (b, mut b_received) = client(&gateway, 4, loopix).await;
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    let ticket = a.send(&b.address(), data.clone(), 0).await.unwrap();
    let mut message = recv(&mut b_received).await;
    assert!(message.data == data);
    message.confirm();
    let mut progress = ticket.progress.clone();
    let done = tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.finished()))
        .await
        .unwrap()
        .map(|p| *p)
        .unwrap();
    assert!(done.delivered(), "{done:?}");
    let stats = a.stats();
    assert!(stats.core.retransmitted > 0, "{stats:?}");
    assert!(gateway.stats.dropped_on_purpose.load(Ordering::Relaxed) > 0);
    // No cover was sent.
    assert_eq!(stats.core.drop_cover_sent + stats.core.loop_cover_sent, 0);
    // Duplicated deliveries (a retransmission after a lost ACK) are recognised, not re-delivered.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b_received.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_in_the_mailbox_for_an_offline_recipient() {
    let gateway = FakeGateway::start(0).await;
    let loopix = params().without_cover();
    let (a, _a_received) = client(&gateway, 5, loopix).await;
    // B's address, without B online.
    let b_address = {
        let (b, _) = client(&gateway, 6, loopix).await;
        b.address()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ticket = a
        .send(&b_address, b"while you were out".to_vec(), 0)
        .await
        .unwrap();
    let mut progress = ticket.progress.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.delivered()),
    )
    .await
    .unwrap()
    .unwrap();
    let (_b, mut b_received) = client(&gateway, 6, loopix).await;
    let message = recv(&mut b_received).await;
    assert_eq!(message.data, b"while you were out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_deliveries_come_again_after_a_reconnect_and_are_deduplicated() {
    let gateway = FakeGateway::start(0).await;
    let loopix = params().without_cover();
    let (a, _a_received) = client(&gateway, 7, loopix).await;
    let (b, mut b_received) = client(&gateway, 8, loopix).await;
    let b_identity = b.address().identity;
    let data = vec![0x5au8; 4000]; // three fragments
    let ticket = a.send(&b.address(), data.clone(), 0).await.unwrap();
    let mut first = recv(&mut b_received).await;
    assert_eq!(first.data, data);
    let mut progress = ticket.progress.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.delivered()),
    )
    .await
    .unwrap()
    .unwrap();
    // Not confirmed yet: the gateway keeps the fragments.
    assert_eq!(gateway.unconfirmed(&b_identity), 3);

    // The connection drops; B reconnects and gets the three fragments again.
    gateway.kick(&b_identity);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.stats().core.duplicates < 3 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", b.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.stats().reconnects >= 1);
    // Recognised by message id: not handed over twice, and confirmed.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_received.recv())
            .await
            .is_err()
    );
    first.confirm();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gateway.unconfirmed(&b_identity) > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new session works.
    a.send(&b.address(), b"after the reconnect".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(recv(&mut b_received).await.data, b"after the reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaced_mode_sends_a_megabyte_without_overflow() {
    let gateway = FakeGateway::start(0).await;
    // The fake gateway carries every packet through all hops itself (slow in debug builds):
    // a long ACK wait keeps this about back-pressure, not timeouts.
    let loopix = LoopixParams {
        message_sending_average_delay_ms: 0.0,
        ack_wait_addition_ms: 20_000,
        ..params().without_cover()
    };
    let (a, _a_received) = client(&gateway, 9, loopix).await;
    let (b, mut b_received) = client(&gateway, 10, loopix).await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let ticket = a.send(&b.address(), data.clone(), 0).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), b_received.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(message.data == data);
    let mut progress = ticket.progress.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|p| p.delivered()),
    )
    .await
    .unwrap()
    .unwrap();
    let stats = a.stats();
    assert_eq!(stats.outgoing_overflow, 0, "{stats:?}");
    assert_eq!(stats.core.real_sent, stats.core.fragments_acked);
    assert_eq!(stats.core.retransmitted, 0);
}

/// A topology source that counts fetches and publishes a new epoch each time.
struct Counting {
    topology: lethe_nodes::topology::Topology,
    fetches: std::sync::atomic::AtomicU64,
}

impl lethe_nodes::client::TopologySource for Counting {
    fn fetch(
        &self,
        seen_epoch: Option<u64>,
    ) -> lethe_nodes::client::runtime::BoxFuture<'_, Result<lethe_nodes::topology::Topology, String>>
    {
        let n = self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut topology = self.topology.clone();
        topology.epoch = n + 1;
        Box::pin(async move {
            assert_eq!(seen_epoch, (n > 0).then_some(n), "the last epoch seen");
            Ok(topology)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_refreshed_with_the_seen_epoch() {
    let gateway = FakeGateway::start(0).await;
    let source = Arc::new(Counting {
        topology: gateway.net.topology.clone(),
        fetches: std::sync::atomic::AtomicU64::new(0),
    });
    let config = ClientConfig {
        identity_seed: Zeroizing::new([11; 32]),
        encryption_secret: Zeroizing::new([12; 32]),
        gateway: gateway.net.gateway_identity,
        loopix: LoopixParams {
            topology_refresh_s: 1,
            ..params().without_cover()
        },
        limits: ClientLimits::default(),
        topology: source.clone(),
        received_capacity: 4,
        wallet: None,
        keepalive_us: lethe_proto::limits::CLIENT_KEEPALIVE_US,
        trace_dir: None,
    };
    let (a, mut received) = connect(config).await.unwrap();
    a.wait_connected(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(source.fetches.load(Ordering::Relaxed) >= 3);
    // Still works on the refreshed topology: a message to itself.
    a.send(&a.address(), b"to myself".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(recv(&mut received).await.data, b"to myself");
    a.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        a.connection_state(),
        lethe_nodes::client::ConnectionState::Closed
    );
}
