//! Test network for the client tests: a topology whose Sphinx secrets the test knows, a
//! Sphinx "network" that unwraps packets through every hop in-process, and a fake gateway
//! (lethe-proto's `GatewaySession` over `lethe_nodes::ws`, like the real one) that does what
//! the real one does: unwrap forwarded
//! packets (here through all four hops itself), deliver messages, ACKs and replies to the
//! destination client, and send SURB-ACKs on.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::address;
use lethe_nodes::proto::{DeliveryKind, GatewayMessage};
use lethe_nodes::ws;
use lethe_proto::final_hop::{self, FinalHopOutcome, Room};
use lethe_proto::gateway_session::{FirstHops, GatewayConfig, GatewayEvent};
pub use lethe_proto::testing::TestMixnet;
use lethe_proto::GatewaySession;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The fake gateway's identity seed.
pub const GATEWAY_SEED: [u8; 32] = [99; 32];

/// The test network: two mixnodes per layer and the gateway, whose client URL is
/// `gateway_url`.
pub fn test_net(gateway_url: Option<String>) -> TestMixnet {
    let mut net = TestMixnet::new(2, &GATEWAY_SEED);
    net.topology.gateways[0].client_url = gateway_url;
    net
}

/// What the fake gateway counts.
#[derive(Default)]
pub struct GatewayStats {
    pub forwarded: AtomicU64,
    pub dropped_on_purpose: AtomicU64,
    pub drop_cover: AtomicU64,
    pub delivered: AtomicU64,
    pub acks_sent_on: AtomicU64,
    pub confirmed: AtomicU64,
    pub errors: AtomicU64,
}

/// A client's mailbox: every delivery stays until the client confirms it, and everything
/// unconfirmed is delivered (again) when the client connects.
#[derive(Default)]
struct Mailbox {
    online: Option<mpsc::UnboundedSender<GatewayMessage>>,
    session: u64,
    unconfirmed: std::collections::BTreeMap<u64, GatewayMessage>,
}

pub struct FakeGateway {
    pub net: Arc<TestMixnet>,
    pub stats: Arc<GatewayStats>,
    mailboxes: Mutex<HashMap<[u8; 32], Mailbox>>,
    next_id: AtomicU64,
    /// Drop every n-th forwarded real packet (0: none), to exercise retransmission.
    pub drop_every: u64,
}

impl FakeGateway {
    /// Binds a listener, builds the test network around its URL, serves in the background.
    pub async fn start(drop_every: u64) -> Arc<FakeGateway> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let gateway = Arc::new(FakeGateway {
            net: Arc::new(test_net(Some(url))),
            stats: Arc::new(GatewayStats::default()),
            mailboxes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            drop_every,
        });
        let g = gateway.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let g = g.clone();
                tokio::spawn(async move {
                    if let Err(e) = g.serve(stream).await {
                        eprintln!("fake gateway: connection ended: {e}");
                    }
                });
            }
        });
        gateway
    }

    fn deliver(&self, to: [u8; 32], kind: DeliveryKind, identifier: [u8; 16], bytes: Vec<u8>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = GatewayMessage::Deliver {
            id,
            kind,
            identifier,
            bytes,
        };
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        let mut boxes = self.mailboxes.lock().unwrap();
        let mailbox = boxes.entry(to).or_default();
        mailbox.unconfirmed.insert(id, message.clone());
        if let Some(tx) = &mailbox.online {
            let _ = tx.send(message);
        }
    }

    /// The gateway's final-hop handling of one packet (forward packets are first carried
    /// through the mix layers by [`TestMixnet::unwrap_all`]).
    fn handle_packet(&self, first_hop: [u8; 32], packet: Vec<u8>) -> Result<(), String> {
        PacketSize::from_sphinx_packet_len(packet.len()).ok_or("packet size")?;
        let (destination, identifier, packet, hops) = self.net.unwrap_all(first_hop, packet)?;
        if hops != 4 {
            return Err(format!("route of {hops} hops"));
        }
        let packet = packet.into_inner();
        let everyone = |_: &[u8; 32]| Room::Available;
        let mail = match final_hop::decide(&destination, &identifier, &packet, &everyone) {
            FinalHopOutcome::DropCover => {
                self.stats.drop_cover.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            FinalHopOutcome::Refused(refusal) => return Err(format!("{refusal:?}")),
            FinalHopOutcome::Deliver(mail) => mail,
        };
        self.deliver(
            mail.recipient,
            mail.kind,
            mail.identifier,
            mail.bytes.to_vec(),
        );
        if let Some(ack) = mail.ack {
            self.stats.acks_sent_on.fetch_add(1, Ordering::Relaxed);
            self.handle_packet(*ack.first_hop, ack.packet.to_vec())?;
        }
        Ok(())
    }

    /// Drops the connection of `client` (it reconnects).
    pub fn kick(&self, client: &[u8; 32]) {
        if let Some(mailbox) = self.mailboxes.lock().unwrap().get_mut(client) {
            mailbox.online = None;
        }
    }

    /// Deliveries `client` has not confirmed yet.
    pub fn unconfirmed(&self, client: &[u8; 32]) -> usize {
        self.mailboxes
            .lock()
            .unwrap()
            .get(client)
            .map_or(0, |m| m.unconfirmed.len())
    }

    async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream) -> Result<(), String> {
        let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws::config()))
            .await
            .map_err(|e| e.to_string())?;
        let start = std::time::Instant::now();
        let now_us = || lethe_proto::duration_us(start.elapsed());
        let config = GatewayConfig {
            handshake_timeout_us: 10_000_000,
            idle_timeout_us: lethe_proto::limits::SESSION_IDLE_TIMEOUT_S_DEFAULT * 1_000_000,
            metered: false,
        };
        let mut core = GatewaySession::new(now_us(), config, GATEWAY_SEED);
        let client = loop {
            ws::write_transmits(&mut ws, &mut core).await?;
            match core.poll_event() {
                Some(GatewayEvent::Authenticated { client }) => break client,
                Some(GatewayEvent::Closed { reason }) => {
                    return Err(format!("handshake refused: {reason:?}"))
                }
                Some(_) => continue,
                None => {}
            }
            let bytes = ws::next_binary(&mut ws).await?;
            core.handle_message(now_us(), &bytes, &mut rand::rng(), &AnyNode);
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this_session;
        {
            let mut boxes = self.mailboxes.lock().unwrap();
            let mailbox = boxes.entry(client).or_default();
            mailbox.session += 1;
            this_session = mailbox.session;
            for message in mailbox.unconfirmed.values() {
                let _ = tx.send(message.clone());
            }
            mailbox.online = Some(tx);
        }
        core.open(0, None, &AnyNode);
        let mut forwarded = 0u64;
        let result = loop {
            while let Some(event) = core.poll_event() {
                match event {
                    GatewayEvent::Forward { next_hop, packet } => {
                        forwarded += 1;
                        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                        if self.drop_every > 0 && forwarded.is_multiple_of(self.drop_every) {
                            self.stats
                                .dropped_on_purpose
                                .fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if let Err(e) = self.handle_packet(address::encode(&next_hop), packet) {
                            eprintln!("fake gateway: bad packet: {e}");
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    GatewayEvent::Confirm { ids } => {
                        self.stats
                            .confirmed
                            .fetch_add(ids.len() as u64, Ordering::Relaxed);
                        if let Some(mailbox) = self.mailboxes.lock().unwrap().get_mut(&client) {
                            for id in ids {
                                mailbox.unconfirmed.remove(&id);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Err(e) = ws::write_transmits(&mut ws, &mut core).await {
                break Err(e);
            }
            tokio::select! {
                out = rx.recv() => {
                    let Some(GatewayMessage::Deliver { id, kind, identifier, bytes }) = out else {
                        break Ok(());
                    };
                    let _ = core.deliver(id, kind, identifier, bytes);
                }
                incoming = ws::next_binary(&mut ws) => match incoming {
                    Ok(bytes) => core.handle_message(now_us(), &bytes, &mut rand::rng(), &AnyNode),
                    Err(e) => break Err(e.to_string()),
                },
            }
        };
        if let Some(mailbox) = self.mailboxes.lock().unwrap().get_mut(&client) {
            if mailbox.session == this_session {
                mailbox.online = None;
            }
        }
        result
    }
}

/// Like a real gateway's first-hop policy, but any node address passes (the fake carries a
/// packet through all hops itself); one that is no node address is refused at once (`client
/// init` probes admission with one).
struct AnyNode;

impl FirstHops for AnyNode {
    fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        address::decode(first_hop).map_err(|_| "first hop is not a node address")
    }
}
