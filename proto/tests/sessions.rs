//! A client and a gateway session wired back to back in memory, in simulated time, with a
//! seeded RNG: the protocol without sockets, clocks or OS randomness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use lethe_crypto::framing::PacketSize;
use lethe_proto::client_session::SendRefused;
use lethe_proto::gateway_session::{CloseReason, Delivered, FirstHops, GatewayConfig, Transmit};
use lethe_proto::limits::{
    CLIENT_KEEPALIVE_US, CONFIRM_IDS_MAX, EARLY_MESSAGES_MAX, FLUSH_EVERY_BYTES,
    SESSION_IDLE_TIMEOUT_S_DEFAULT, SESSION_TRANSMITS_MAX,
};
use lethe_proto::wire::handshake::identity_public;
use lethe_proto::wire::messages::error_code;
use lethe_proto::wire::{ClientHandshake, ClientMessage, DeliveryKind, GatewayMessage};
use lethe_proto::{ClientEvent, ClientSession, GatewayEvent, GatewaySession};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

const TIMEOUT_US: u64 = 5_000_000;
/// The gateway's default idle timeout: the keep-alive is sized against it.
const IDLE_US: u64 = SESSION_IDLE_TIMEOUT_S_DEFAULT * 1_000_000;
const GATEWAY_SEED: [u8; 32] = [2; 32];
const CLIENT_SEED: [u8; 32] = [1; 32];
const LAYER1: [u8; 32] = [7; 32];

/// Layer 1 is one node, [`LAYER1`].
struct Layer1;

impl FirstHops for Layer1 {
    fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        if *first_hop == LAYER1 {
            Ok(SocketAddr::from(([127, 0, 0, 1], 1789)))
        } else {
            Err("first hop is not a layer-1 mixnode")
        }
    }
}

struct Pair {
    now_us: u64,
    rng: ChaCha20Rng,
    client: ClientSession,
    gateway: GatewaySession,
    client_events: Vec<ClientEvent>,
    gateway_events: Vec<GatewayEvent>,
    /// Close transmits seen, by side.
    client_closes: Vec<(CloseReason, String)>,
    gateway_closes: Vec<(CloseReason, String)>,
}

impl Pair {
    fn new(metered: bool, pinned: [u8; 32], seed: u64) -> Pair {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let now_us = 1_000_000;
        let config = GatewayConfig {
            handshake_timeout_us: TIMEOUT_US,
            idle_timeout_us: IDLE_US,
            metered,
        };
        let gateway = GatewaySession::new(now_us, config, GATEWAY_SEED);
        let client = ClientSession::new(now_us, TIMEOUT_US, &CLIENT_SEED, pinned, &mut rng);
        Pair {
            now_us,
            rng,
            client,
            gateway,
            client_events: Vec::new(),
            gateway_events: Vec::new(),
            client_closes: Vec::new(),
            gateway_closes: Vec::new(),
        }
    }

    fn pinned(metered: bool) -> Pair {
        Pair::new(metered, identity_public(&GATEWAY_SEED), 1)
    }

    /// Moves messages both ways until neither side has any; bounded.
    fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(transmit) = self.client.poll_transmit() {
                moved = true;
                match transmit {
                    Transmit::Message(bytes) => {
                        self.gateway
                            .handle_message(self.now_us, &bytes, &mut self.rng, &Layer1)
                    }
                    Transmit::Close(reason, text) => {
                        self.client_closes.push((reason, text));
                        self.gateway.handle_transport_closed();
                    }
                }
            }
            while let Some(transmit) = self.gateway.poll_transmit() {
                moved = true;
                match transmit {
                    Transmit::Message(bytes) => self.client.handle_message(self.now_us, &bytes),
                    Transmit::Close(reason, text) => {
                        self.gateway_closes.push((reason, text));
                        self.client.handle_transport_closed();
                    }
                }
            }
            while let Some(event) = self.client.poll_event() {
                self.client_events.push(event);
            }
            while let Some(event) = self.gateway.poll_event() {
                self.gateway_events.push(event);
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Runs the handshake and opens the session as a driver would.
    fn establish(&mut self, stored: u32, balance: Option<u64>) {
        self.pump();
        let client = identity_public(&CLIENT_SEED);
        assert_eq!(
            self.gateway_events,
            vec![GatewayEvent::Authenticated { client }]
        );
        self.gateway_events.clear();
        self.gateway.open(stored, balance, &Layer1);
        self.pump();
        assert!(self.client.is_established() && self.gateway.is_established());
    }

    fn forward(&mut self, first_hop: [u8; 32]) {
        let packet = vec![0u8; PacketSize::Regular.packet_len()];
        self.client
            .send(&ClientMessage::Forward { first_hop, packet })
            .unwrap();
    }

    fn forwards(&self) -> usize {
        let forwards = self.gateway_events.iter();
        forwards
            .filter(|e| matches!(e, GatewayEvent::Forward { .. }))
            .count()
    }

    fn client_errors(&self) -> Vec<u8> {
        let events = self.client_events.iter();
        events
            .filter_map(|e| match e {
                ClientEvent::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn handshake_then_welcome_with_the_stored_count() {
    let mut pair = Pair::pinned(false);
    assert_eq!(pair.client.poll_timeout(), Some(pair.now_us + TIMEOUT_US));
    pair.establish(3, None);
    assert_eq!(pair.client_events, vec![ClientEvent::Welcome { stored: 3 }]);
    // Established: the client's keep-alive check and the gateway's idle deadline.
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.now_us + CLIENT_KEEPALIVE_US)
    );
    assert_eq!(pair.gateway.poll_timeout(), Some(pair.now_us + IDLE_US));
}

#[test]
fn a_gateway_the_client_did_not_pin_is_refused() {
    let mut pair = Pair::new(false, identity_public(&[9; 32]), 1);
    pair.pump();
    assert!(pair.client.is_closed());
    assert_eq!(pair.client_closes[0].0, CloseReason::Policy);
    // The gateway never authenticated anyone.
    assert!(!pair
        .gateway_events
        .iter()
        .any(|e| matches!(e, GatewayEvent::Authenticated { .. })));
}

#[test]
fn garbage_instead_of_a_hello_closes_with_policy() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for len in [0usize, 1, 84, 85, 86, 4096] {
        let config = GatewayConfig {
            handshake_timeout_us: TIMEOUT_US,
            idle_timeout_us: IDLE_US,
            metered: false,
        };
        let mut gateway = GatewaySession::new(0, config, GATEWAY_SEED);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        gateway.handle_message(1, &bytes, &mut rng, &Layer1);
        assert!(gateway.is_closed());
        assert!(matches!(
            gateway.poll_transmit(),
            Some(Transmit::Close(CloseReason::Policy, _))
        ));
        assert_eq!(
            gateway.poll_event(),
            Some(GatewayEvent::Closed {
                reason: CloseReason::Policy
            })
        );
    }
}

#[test]
fn a_stalled_handshake_times_out_at_its_deadline_without_a_close_frame() {
    let mut pair = Pair::pinned(false);
    // The hello arrives; the client never sends its auth.
    let Some(Transmit::Message(hello)) = pair.client.poll_transmit() else {
        panic!("no hello")
    };
    pair.gateway
        .handle_message(pair.now_us, &hello, &mut pair.rng, &Layer1);
    let deadline = pair.gateway.poll_timeout().unwrap();
    assert_eq!(deadline, pair.now_us + TIMEOUT_US);
    pair.gateway.handle_timeout(deadline - 1);
    assert!(!pair.gateway.is_closed());
    pair.gateway.handle_timeout(deadline);
    assert!(pair.gateway.is_closed());
    // The reply to the hello, then nothing: no close frame for a peer that does not read.
    assert!(matches!(
        pair.gateway.poll_transmit(),
        Some(Transmit::Message(_))
    ));
    assert_eq!(pair.gateway.poll_transmit(), None);
    assert_eq!(
        pair.gateway.poll_event(),
        Some(GatewayEvent::Closed {
            reason: CloseReason::TimedOut
        })
    );
    // The client times out on its own clock too.
    pair.client.handle_timeout(pair.now_us + TIMEOUT_US);
    assert!(pair.client.is_closed());
}

#[test]
fn a_registered_client_waiting_for_open_still_times_out() {
    let mut pair = Pair::pinned(false);
    pair.pump();
    assert!(pair.gateway.client().is_some());
    pair.gateway.handle_timeout(pair.now_us + TIMEOUT_US);
    assert!(pair.gateway.is_closed());
}

#[test]
fn forwards_to_layer1_pass_and_others_are_refused_without_ending_the_session() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    pair.forward(LAYER1);
    pair.forward([8; 32]);
    pair.forward(LAYER1);
    pair.pump();
    assert_eq!(pair.forwards(), 2);
    assert_eq!(pair.client_errors(), vec![error_code::NOT_LAYER1]);
    assert_eq!(pair.gateway.refusals().not_layer1, 1);
    // The client is admitted (recorded durably) once, at its first accepted forward.
    let admits = pair.gateway_events.iter();
    assert_eq!(
        admits
            .filter(|e| matches!(e, GatewayEvent::Admit { .. }))
            .count(),
        1
    );
    assert!(pair.gateway.is_established());
}

#[test]
fn messages_encoded_by_the_driver_are_sealed_as_sent_and_bounded_like_send() {
    let mut pair = Pair::pinned(false);
    let packet = vec![0u8; PacketSize::Regular.packet_len()];
    let forward = ClientMessage::Forward {
        first_hop: LAYER1,
        packet,
    }
    .encode();
    // Nothing before the welcome, as with `send`.
    assert_eq!(
        pair.client.send_encoded(&forward),
        Err(SendRefused::NotEstablished)
    );
    pair.establish(0, None);
    pair.client.send_encoded(&forward).unwrap();
    pair.pump();
    assert_eq!(pair.forwards(), 1);
    // Bytes that do not decode are the gateway's to refuse: an error, and the session ends.
    pair.client.send_encoded(&[0xff, 1, 2]).unwrap();
    pair.pump();
    assert_eq!(pair.client_errors(), vec![error_code::MALFORMED]);
    // An undrained queue refuses more at the same bound as `send`.
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    for _ in 0..SESSION_TRANSMITS_MAX {
        pair.client.send_encoded(&forward).unwrap();
    }
    assert_eq!(pair.client.send_encoded(&forward), Err(SendRefused::Full));
}

#[test]
fn messages_pipelined_before_the_welcome_are_handled_at_open() {
    // A client that does not wait for its welcome (built from the handshake directly).
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let config = GatewayConfig {
        handshake_timeout_us: TIMEOUT_US,
        idle_timeout_us: IDLE_US,
        metered: false,
    };
    let mut gateway = GatewaySession::new(0, config, GATEWAY_SEED);
    let pinned = identity_public(&GATEWAY_SEED);
    let (handshake, hello) = ClientHandshake::start(&CLIENT_SEED, pinned, &mut rng);
    gateway.handle_message(1, &hello, &mut rng, &Layer1);
    let Some(Transmit::Message(reply)) = gateway.poll_transmit() else {
        panic!("no reply")
    };
    let (auth, mut session) = handshake.finish(&reply).unwrap();
    gateway.handle_message(2, &auth, &mut rng, &Layer1);
    let packet = vec![0u8; PacketSize::Regular.packet_len()];
    let forward = ClientMessage::Forward {
        first_hop: LAYER1,
        packet,
    };
    let sealed = session.seal(&forward.encode()).unwrap();
    gateway.handle_message(3, &sealed, &mut rng, &Layer1);
    assert!(matches!(
        gateway.poll_event(),
        Some(GatewayEvent::Authenticated { .. })
    ));
    assert_eq!(gateway.poll_event(), None);
    gateway.open(0, None, &Layer1);
    assert!(matches!(
        gateway.poll_event(),
        Some(GatewayEvent::Forward { .. })
    ));
    // The welcome went out before anything the early message caused.
    let Some(Transmit::Message(welcome)) = gateway.poll_transmit() else {
        panic!("no welcome")
    };
    let welcome = GatewayMessage::decode(&session.open(&welcome).unwrap()).unwrap();
    assert_eq!(welcome, GatewayMessage::Welcome { stored: 0 });
}

#[test]
fn too_many_messages_before_the_welcome_close_the_session() {
    let mut pair = Pair::pinned(false);
    pair.pump();
    // A well-behaved client waits: its API refuses to send before the welcome.
    assert_eq!(
        pair.client.send(&ClientMessage::Confirm { ids: vec![1] }),
        Err(SendRefused::NotEstablished)
    );
    for _ in 0..EARLY_MESSAGES_MAX {
        pair.gateway
            .handle_message(pair.now_us, &[0u8; 40], &mut pair.rng, &Layer1);
    }
    assert!(!pair.gateway.is_closed());
    pair.gateway
        .handle_message(pair.now_us, &[0u8; 40], &mut pair.rng, &Layer1);
    assert!(pair.gateway.is_closed());
}

#[test]
fn early_garbage_is_judged_at_open() {
    let mut pair = Pair::pinned(false);
    pair.pump();
    pair.gateway
        .handle_message(pair.now_us, &[0u8; 40], &mut pair.rng, &Layer1);
    pair.gateway.open(0, None, &Layer1);
    assert!(pair.gateway.is_closed());
    assert_eq!(pair.gateway.refusals().malformed, 1);
}

#[test]
fn metering_refuses_what_the_balance_does_not_cover_and_credentials_top_it_up() {
    let packet_bytes = PacketSize::Regular.packet_len() as u64;
    let mut pair = Pair::pinned(true);
    pair.establish(0, Some(2 * packet_bytes + 10));
    assert_eq!(
        pair.client_events[1],
        ClientEvent::Bandwidth {
            remaining_bytes: 2 * packet_bytes + 10
        }
    );
    for _ in 0..3 {
        pair.forward(LAYER1);
    }
    pair.pump();
    assert_eq!(pair.forwards(), 2);
    assert_eq!(pair.client_errors(), vec![error_code::NO_BANDWIDTH]);
    assert_eq!(pair.gateway.remaining_bytes(), Some(10));
    // A credential: the driver verifies it and credits the stored balance; the session
    // reports it minus what it charged and has not written yet.
    pair.client
        .send(&ClientMessage::Credential { bytes: vec![5; 64] })
        .unwrap();
    pair.pump();
    assert_eq!(
        pair.gateway_events.last(),
        Some(&GatewayEvent::Credential { bytes: vec![5; 64] })
    );
    let stored_after_credit = 1_000_000 + 2 * packet_bytes + 10;
    pair.gateway.credited(Ok(stored_after_credit));
    pair.pump();
    assert_eq!(
        pair.client_events.last(),
        Some(&ClientEvent::Bandwidth {
            remaining_bytes: 1_000_010
        })
    );
    // A refused credential is an error; the session goes on.
    pair.gateway
        .credited(Err((error_code::BAD_CREDENTIAL, "spent".into())));
    pair.pump();
    assert_eq!(
        pair.client_errors().last(),
        Some(&error_code::BAD_CREDENTIAL)
    );
    assert!(pair.gateway.is_established());
    // Closing hands the driver the unwritten charges.
    assert_eq!(
        pair.gateway.close(CloseReason::Normal, "bye"),
        2 * packet_bytes
    );
}

#[test]
fn unmetered_sessions_do_not_spend_credentials() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    pair.client
        .send(&ClientMessage::Credential { bytes: vec![5; 64] })
        .unwrap();
    pair.pump();
    assert!(pair.gateway_events.is_empty());
}

#[test]
fn charges_are_written_through_every_flush_and_a_failed_write_is_kept() {
    let packet_bytes = PacketSize::Regular.packet_len() as u64;
    let per_flush = FLUSH_EVERY_BYTES.div_ceil(packet_bytes);
    let balance = 10 * FLUSH_EVERY_BYTES;
    let mut pair = Pair::pinned(true);
    pair.establish(0, Some(balance));
    let mut charged = 0;
    for _ in 0..per_flush {
        pair.forward(LAYER1);
        pair.pump();
        charged += packet_bytes;
    }
    let charges: Vec<u64> = pair
        .gateway_events
        .iter()
        .filter_map(|e| match e {
            GatewayEvent::Charge { bytes } => Some(*bytes),
            _ => None,
        })
        .collect();
    assert_eq!(charges, vec![charged]);
    // The write fails: kept, and a forward later it is written with the next charge.
    pair.gateway.charge_failed();
    pair.gateway_events.clear();
    pair.forward(LAYER1);
    pair.pump();
    charged += packet_bytes;
    assert_eq!(
        pair.gateway_events.first(),
        Some(&GatewayEvent::Charge { bytes: charged })
    );
    // The write succeeds; one forward is charged while it is written.
    pair.forward(LAYER1);
    pair.pump();
    pair.gateway.balance(balance - charged);
    pair.pump();
    assert_eq!(
        pair.client_events.last(),
        Some(&ClientEvent::Bandwidth {
            remaining_bytes: balance - charged - packet_bytes
        })
    );
    // The transport drops: the unwritten charge survives the session for the driver.
    pair.gateway.handle_transport_closed();
    assert_eq!(pair.gateway.unwritten_bytes(), packet_bytes);
}

#[test]
fn deliveries_go_out_once_in_id_order() {
    let mut pair = Pair::pinned(false);
    pair.establish(2, None);
    let identifier = [0u8; 16];
    let kind = DeliveryKind::Message;
    assert_eq!(
        pair.gateway.deliver(5, kind, identifier, vec![5]),
        Delivered::Queued
    );
    assert_eq!(
        pair.gateway.deliver(3, kind, identifier, vec![3]),
        Delivered::AlreadySent
    );
    assert_eq!(
        pair.gateway.deliver(5, kind, identifier, vec![5]),
        Delivered::AlreadySent
    );
    assert_eq!(
        pair.gateway.deliver(6, kind, identifier, vec![6]),
        Delivered::Queued
    );
    assert_eq!(pair.gateway.cursor(), 6);
    pair.pump();
    let ids: Vec<u64> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Deliver { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![5, 6]);
}

#[test]
fn a_client_that_does_not_read_fills_the_queue_and_deliveries_stay_in_the_mailbox() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    let mut queued = 0;
    for id in 1..=(SESSION_TRANSMITS_MAX as u64 + 10) {
        match pair
            .gateway
            .deliver(id, DeliveryKind::Message, [0; 16], vec![1; 100])
        {
            Delivered::Queued => queued += 1,
            Delivered::Full => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(queued, SESSION_TRANSMITS_MAX);
    assert_eq!(pair.gateway.cursor(), SESSION_TRANSMITS_MAX as u64);
}

#[test]
fn confirmations_leave_in_batches() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    let total = CONFIRM_IDS_MAX as u64 + 5;
    for id in 1..=total {
        pair.client.confirm(id);
    }
    pair.pump();
    let batches: Vec<Vec<u64>> = pair
        .gateway_events
        .iter()
        .filter_map(|e| match e {
            GatewayEvent::Confirm { ids } => Some(ids.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].len(), CONFIRM_IDS_MAX);
    let all: Vec<u64> = batches.concat();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
}

#[test]
fn a_tampered_message_ends_the_session_with_an_error_first() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    pair.forward(LAYER1);
    let Some(Transmit::Message(mut sealed)) = pair.client.poll_transmit() else {
        panic!("no message")
    };
    sealed[3] ^= 1;
    pair.gateway
        .handle_message(pair.now_us, &sealed, &mut pair.rng, &Layer1);
    pair.pump();
    assert!(pair.gateway.is_closed());
    assert_eq!(pair.gateway.refusals().malformed, 1);
    assert_eq!(pair.client_errors(), vec![error_code::MALFORMED]);
    assert_eq!(pair.gateway_closes[0].0, CloseReason::Protocol);
    assert!(pair.client.is_closed());
}

#[test]
fn a_refused_client_gets_the_reason_before_the_close() {
    let mut pair = Pair::pinned(false);
    pair.pump();
    pair.gateway.refuse(
        error_code::OVERLOADED,
        "gateway full: try again later",
        CloseReason::Again,
    );
    pair.pump();
    assert_eq!(pair.client_errors(), vec![error_code::OVERLOADED]);
    assert_eq!(pair.gateway_closes[0].0, CloseReason::Again);
    assert!(pair.client.is_closed() && pair.gateway.is_closed());
}

#[test]
fn random_bytes_in_every_state_never_panic() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    for round in 0..2_000u64 {
        let mut pair = Pair::pinned(round % 2 == 0);
        // Advance to a random state: fresh, after hello, authenticated, established.
        let stage = round % 4;
        if stage >= 1 {
            if let Some(Transmit::Message(hello)) = pair.client.poll_transmit() {
                pair.gateway
                    .handle_message(pair.now_us, &hello, &mut pair.rng, &Layer1);
            }
        }
        if stage >= 2 {
            pair.pump();
        }
        if stage >= 3 {
            pair.gateway.open(1, Some(1 << 20), &Layer1);
            pair.pump();
        }
        let len = rng.random_range(0..3000usize);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        pair.gateway
            .handle_message(pair.now_us, &bytes, &mut pair.rng, &Layer1);
        pair.client.handle_message(pair.now_us, &bytes);
        pair.pump();
    }
}

#[test]
fn a_seed_gives_the_same_bytes() {
    let run = |seed| {
        let mut pair = Pair::new(false, identity_public(&GATEWAY_SEED), seed);
        let Some(Transmit::Message(hello)) = pair.client.poll_transmit() else {
            panic!("no hello")
        };
        hello
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

impl Pair {
    /// Advances simulated time to `until_us`, firing both sides' timers as a driver would
    /// (the client's only if `client_timers`: a raw client that never runs them is silent);
    /// `every` runs at each step of `step_us`. Bounded by the step count.
    fn run_until(
        &mut self,
        until_us: u64,
        step_us: u64,
        client_timers: bool,
        mut every: impl FnMut(&mut Pair),
    ) {
        let mut next_step = self.now_us + step_us;
        for _ in 0..1_000_000 {
            let mut due = next_step;
            if let Some(t) = self.gateway.poll_timeout() {
                due = due.min(t);
            }
            if client_timers {
                if let Some(t) = self.client.poll_timeout() {
                    due = due.min(t);
                }
            }
            if due > until_us || self.gateway.is_closed() {
                return;
            }
            self.now_us = due.max(self.now_us);
            self.gateway.handle_timeout(self.now_us);
            if client_timers {
                self.client.handle_timeout(self.now_us);
            }
            if self.now_us >= next_step {
                next_step += step_us;
                every(self);
            }
            self.pump();
        }
        panic!("run_until did not reach its end");
    }

    fn idle_closes(&self) -> usize {
        let events = self.gateway_events.iter();
        events
            .filter(|e| {
                matches!(
                    e,
                    GatewayEvent::Closed {
                        reason: CloseReason::Idle
                    }
                )
            })
            .count()
    }
}

#[test]
fn a_session_silent_both_ways_is_closed_at_its_idle_timeout_with_a_reason() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    let opened_us = pair.now_us;
    // The welcome counts as a delivery: the first check only moves the deadline.
    let first = pair.gateway.poll_timeout().unwrap();
    assert_eq!(first, opened_us + IDLE_US);
    pair.gateway.handle_timeout(first);
    assert!(!pair.gateway.is_closed());
    let deadline = pair.gateway.poll_timeout().unwrap();
    assert_eq!(deadline, first + IDLE_US);
    pair.gateway.handle_timeout(deadline - 1);
    assert!(!pair.gateway.is_closed());
    pair.gateway.handle_timeout(deadline);
    assert!(pair.gateway.is_closed());
    assert_eq!(pair.gateway.poll_timeout(), None);
    // An authenticated client may read: it is told why, then closed.
    assert!(matches!(
        pair.gateway.poll_transmit(),
        Some(Transmit::Close(CloseReason::Idle, _))
    ));
    assert_eq!(
        pair.gateway.poll_event(),
        Some(GatewayEvent::Closed {
            reason: CloseReason::Idle
        })
    );
}

#[test]
fn a_raw_client_that_goes_silent_is_closed_and_one_that_forwards_is_not() {
    // Silent (never runs its timers): closed within two idle timeouts of the welcome.
    let mut silent = Pair::pinned(false);
    silent.establish(0, None);
    let opened_us = silent.now_us;
    silent.run_until(opened_us + 10 * IDLE_US, IDLE_US / 4, false, |_| {});
    assert!(silent.gateway.is_closed());
    assert_eq!(silent.idle_closes(), 1);
    assert!(silent.now_us <= opened_us + 2 * IDLE_US);
    assert_eq!(silent.gateway_closes[0].0, CloseReason::Idle);
    assert!(silent.client.is_closed());

    // A forward every half idle timeout keeps it open (and no keep-alive is needed).
    let mut busy = Pair::pinned(false);
    busy.establish(0, None);
    let opened_us = busy.now_us;
    busy.run_until(opened_us + 10 * IDLE_US, IDLE_US / 2, false, |p| {
        p.forward(LAYER1)
    });
    assert!(busy.gateway.is_established());
    assert_eq!(busy.idle_closes(), 0);
    assert_eq!(busy.forwards(), 20);
}

#[test]
fn deliveries_to_a_client_keep_its_session_open() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    let opened_us = pair.now_us;
    let mut id = 0;
    pair.run_until(opened_us + 10 * IDLE_US, IDLE_US / 2, false, |p| {
        id += 1;
        let delivered = p
            .gateway
            .deliver(id, DeliveryKind::Message, [0; 16], vec![1; 32]);
        assert_eq!(delivered, Delivered::Queued);
    });
    assert!(pair.gateway.is_established());
    assert_eq!(pair.idle_closes(), 0);
    // Once deliveries stop (and the client never answers), the session idles out.
    let stopped_us = pair.now_us;
    pair.run_until(stopped_us + 10 * IDLE_US, IDLE_US / 4, false, |_| {});
    assert_eq!(pair.idle_closes(), 1);
    assert!(pair.now_us <= stopped_us + 2 * IDLE_US);
}

#[test]
fn a_client_with_nothing_to_send_keeps_its_session_with_keepalives() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    let opened_us = pair.now_us;
    let span_us = 10 * IDLE_US;
    pair.run_until(opened_us + span_us, IDLE_US, true, |_| {});
    assert!(pair.gateway.is_established() && pair.client.is_established());
    assert_eq!(pair.idle_closes(), 0);
    // About one per keep-alive period, and nothing for the mailbox to delete.
    let keepalives = pair.client.keepalives();
    assert!(
        keepalives >= span_us / CLIENT_KEEPALIVE_US - 1,
        "{keepalives}"
    );
    assert!(
        keepalives <= span_us / CLIENT_KEEPALIVE_US + 1,
        "{keepalives}"
    );
    assert!(!pair
        .gateway_events
        .iter()
        .any(|e| matches!(e, GatewayEvent::Confirm { .. })));
}

#[test]
fn a_client_that_sends_needs_no_keepalive() {
    let mut pair = Pair::pinned(false);
    pair.establish(0, None);
    let opened_us = pair.now_us;
    // A forward more often than the keep-alive period.
    pair.run_until(
        opened_us + 10 * IDLE_US,
        CLIENT_KEEPALIVE_US / 2,
        true,
        |p| p.forward(LAYER1),
    );
    assert!(pair.gateway.is_established());
    assert_eq!(pair.client.keepalives(), 0);
    assert!(pair.forwards() > 0);
}
