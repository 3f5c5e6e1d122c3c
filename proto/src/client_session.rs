//! The client's side of one gateway connection, as a state machine fed time and messages.
//!
//! ```text
//! new() queues ClientHello --GatewayHello--> (queues ClientAuth) AwaitWelcome --Welcome--> Established
//!      \__________________ deadline, bad or unexpected input ___________________/           |
//!                                  v                                                         v
//!                                Closed <-------------------- Error is only an event --------+
//! ```
//! The gateway's `Error` messages do not end a session (a refused forward, no bandwidth): they
//! become [`ClientEvent::Error`] and the client decides. Only a broken protocol (a message that
//! does not decrypt or decode) or the transport ends it.
//!
//! The gateway closes a session that is silent both ways for its idle timeout. Once
//! established, the session's timer ([`ClientSession::poll_timeout`]) comes every
//! [`CLIENT_KEEPALIVE_US`]: if nothing was sent since the last one, it sends a keep-alive, an
//! empty `Confirm` (no new message kind: every gateway accepts it, and it deletes nothing).
//! A Loopix client's cover streams keep the session busy anyway; the keep-alive is for
//! clients with both off and nothing to send.

use std::collections::VecDeque;

use rand::CryptoRng;

use crate::gateway_session::{CloseReason, Transmit};
use crate::limits::{
    CLIENT_KEEPALIVE_US, CONFIRM_IDS_MAX, SESSION_EVENTS_MAX, SESSION_TRANSMITS_MAX,
};
use crate::wire::{ClientHandshake, ClientMessage, DeliveryKind, GatewayMessage, Session};

/// What the client learns from its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The session is established; `stored` deliveries wait in the mailbox.
    Welcome {
        stored: u32,
    },
    Deliver {
        id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: Vec<u8>,
    },
    /// The gateway refused something (see `wire::messages::error_code`).
    Error {
        code: u8,
        text: String,
    },
    /// The balance the gateway holds for this client.
    Bandwidth {
        remaining_bytes: u64,
    },
    Closed {
        reason: CloseReason,
    },
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefused {
    /// Not welcomed yet, or closed.
    NotEstablished,
    /// The transport has not taken the queued messages: try after draining.
    Full,
}

enum State {
    AwaitHello(Box<ClientHandshake>),
    AwaitWelcome(Session),
    Established(Session),
    Closed,
}

pub struct ClientSession {
    state: State,
    handshake_deadline_us: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
    /// Delivery ids handled durably and not yet confirmed to the gateway.
    confirms: Vec<u64>,
    /// Events the driver did not drain in time (a driver bug): counted, never queued past the bound.
    events_dropped: u64,
    /// Once established: the next keep-alive check, every `keepalive_us`.
    keepalive_due_us: u64,
    keepalive_us: u64,
    /// Something was sent since the last keep-alive check.
    sent: bool,
    /// Keep-alives sent.
    keepalives: u64,
    /// The time of the latest call that carried one.
    now_us: u64,
}

impl ClientSession {
    /// Starts a session at `now_us` with the gateway whose identity the client pinned (from
    /// the signed topology); the hello is the first transmit.
    pub fn new<R: CryptoRng + ?Sized>(
        now_us: u64,
        handshake_timeout_us: u64,
        identity_seed: &[u8; 32],
        gateway_identity: [u8; 32],
        rng: &mut R,
    ) -> ClientSession {
        let (handshake, hello) = ClientHandshake::start(identity_seed, gateway_identity, rng);
        let mut transmits = VecDeque::new();
        transmits.push_back(Transmit::Message(hello));
        ClientSession {
            state: State::AwaitHello(Box::new(handshake)),
            handshake_deadline_us: now_us.saturating_add(handshake_timeout_us),
            transmits,
            events: VecDeque::new(),
            confirms: Vec::new(),
            events_dropped: 0,
            keepalive_due_us: 0,
            keepalive_us: CLIENT_KEEPALIVE_US,
            sent: false,
            keepalives: 0,
            now_us,
        }
    }

    /// Keep-alives sent so far.
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }

    /// Checks for silence every `keepalive_us` instead of [`CLIENT_KEEPALIVE_US`] (a gateway
    /// with a shorter idle timeout; tests), from now on.
    pub fn set_keepalive_us(&mut self, keepalive_us: u64) {
        self.keepalive_us = keepalive_us.max(1);
        self.keepalive_due_us = self.now_us.saturating_add(self.keepalive_us);
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.flush_confirms();
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The handshake deadline until the gateway welcomed the client, then the next
    /// keep-alive check.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::AwaitHello(_) | State::AwaitWelcome(_) => Some(self.handshake_deadline_us),
            State::Established(_) => Some(self.keepalive_due_us),
            State::Closed => None,
        }
    }

    pub fn handle_timeout(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        if !matches!(self.poll_timeout(), Some(deadline) if now_us >= deadline) {
            return;
        }
        if !self.is_established() {
            return self.end(CloseReason::TimedOut, None);
        }
        // Anything sent since the last check (a forward, a confirm) kept the session busy;
        // a refused keep-alive means messages wait for the transport: not silent either.
        if !std::mem::take(&mut self.sent)
            && self
                .send(&ClientMessage::Confirm { ids: Vec::new() })
                .is_ok()
        {
            self.keepalives += 1;
            self.sent = false;
        }
        self.keepalive_due_us = now_us.saturating_add(self.keepalive_us);
    }

    /// The transport ended.
    pub fn handle_transport_closed(&mut self) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.push_event(ClientEvent::Closed {
                reason: CloseReason::Normal,
            });
        }
    }

    /// One binary message from the gateway.
    pub fn handle_message(&mut self, now_us: u64, bytes: &[u8]) {
        self.handle_timeout(now_us);
        match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitHello(handshake) => match handshake.finish(bytes) {
                Ok((auth, session)) => {
                    self.transmits.push_back(Transmit::Message(auth));
                    self.state = State::AwaitWelcome(session);
                }
                // The gateway is not the one pinned, or garbled its hello.
                Err(_) => self.end(CloseReason::Policy, Some("bad gateway hello")),
            },
            State::AwaitWelcome(session) => self.on_sealed(session, false, bytes),
            State::Established(session) => self.on_sealed(session, true, bytes),
            State::Closed => {}
        }
    }

    fn on_sealed(&mut self, mut session: Session, welcomed: bool, bytes: &[u8]) {
        let message = match session.open(bytes) {
            Ok(plaintext) => GatewayMessage::decode(&plaintext).map_err(|_| "malformed message"),
            Err(_) => Err("message does not decrypt"),
        };
        let message = match message {
            Ok(message) => message,
            Err(text) => return self.end(CloseReason::Protocol, Some(text)),
        };
        let event = match message {
            GatewayMessage::Welcome { .. } if welcomed => {
                return self.end(CloseReason::Protocol, Some("second welcome"));
            }
            GatewayMessage::Welcome { stored } => ClientEvent::Welcome { stored },
            // Before the welcome only an error (the gateway refusing the client) may come.
            GatewayMessage::Error { code, text } => ClientEvent::Error { code, text },
            _ if !welcomed => {
                return self.end(CloseReason::Protocol, Some("message before welcome"))
            }
            GatewayMessage::Deliver {
                id,
                kind,
                identifier,
                bytes,
            } => ClientEvent::Deliver {
                id,
                kind,
                identifier,
                bytes,
            },
            GatewayMessage::Bandwidth { remaining_bytes } => {
                ClientEvent::Bandwidth { remaining_bytes }
            }
        };
        self.state = if welcomed {
            State::Established(session)
        } else if matches!(event, ClientEvent::Welcome { .. }) {
            self.keepalive_due_us = self.now_us.saturating_add(self.keepalive_us);
            State::Established(session)
        } else {
            State::AwaitWelcome(session)
        };
        self.push_event(event);
    }

    /// Seals a message for the gateway.
    pub fn send(&mut self, message: &ClientMessage) -> Result<(), SendRefused> {
        self.send_encoded(&message.encode())
    }

    /// Seals a message the driver encoded itself (`ClientMessage::encode`'s bytes): a driver
    /// that builds its forwards in place (loadgen, thousands a second) saves a decode and a
    /// re-encode per message. What does not decode is the gateway's to refuse, as from any
    /// client.
    pub fn send_encoded(&mut self, encoded: &[u8]) -> Result<(), SendRefused> {
        if self.transmits.len() >= SESSION_TRANSMITS_MAX {
            return Err(SendRefused::Full);
        }
        let State::Established(session) = &mut self.state else {
            return Err(SendRefused::NotEstablished);
        };
        match session.seal(encoded) {
            Ok(sealed) => {
                self.transmits.push_back(Transmit::Message(sealed));
                self.sent = true;
                Ok(())
            }
            Err(_) => {
                self.end(CloseReason::Protocol, Some("session exhausted"));
                Err(SendRefused::NotEstablished)
            }
        }
    }

    /// The client handled delivery `id` durably: the gateway may delete it. Confirmations
    /// leave in batches with the next transmit.
    pub fn confirm(&mut self, id: u64) {
        if self.is_established() {
            self.confirms.push(id);
            if self.confirms.len() >= CONFIRM_IDS_MAX {
                self.flush_confirms();
            }
        }
    }

    /// Ends the session from the client's side.
    pub fn close(&mut self) {
        if !self.is_closed() {
            self.flush_confirms();
            self.end(CloseReason::Normal, Some("client leaves"));
        }
    }

    fn flush_confirms(&mut self) {
        while !self.confirms.is_empty() && self.transmits.len() < SESSION_TRANSMITS_MAX {
            let take = self.confirms.len().min(CONFIRM_IDS_MAX);
            let ids: Vec<u64> = self.confirms.drain(..take).collect();
            if self.send(&ClientMessage::Confirm { ids }).is_err() {
                // Not confirmed: the gateway delivers them again on the next session, and
                // the client's reassembly ignores what it has.
                self.confirms.clear();
            }
        }
    }

    fn end(&mut self, reason: CloseReason, text: Option<&str>) {
        self.state = State::Closed;
        self.confirms.clear();
        if let Some(text) = text {
            self.transmits
                .push_back(Transmit::Close(reason, text.to_string()));
        }
        self.push_event(ClientEvent::Closed { reason });
    }

    fn push_event(&mut self, event: ClientEvent) {
        debug_assert!(self.events.len() < SESSION_EVENTS_MAX);
        if self.events.len() < SESSION_EVENTS_MAX {
            self.events.push_back(event);
        } else {
            self.events_dropped += 1;
        }
    }
}
