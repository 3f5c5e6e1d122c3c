//! The gateway's side of one client connection, as a state machine fed time and messages.
//!
//! The driver owns the transport (a WebSocket) and the shared state (mailbox, balances,
//! egress); the session owns the protocol: the handshake and its deadline, sealing, decoding,
//! the first-hop policy, metering a client's forwards against its balance, and the order in
//! which a client sees its deliveries. Decisions that need shared state leave as
//! [`GatewayEvent`]s; the driver answers through the methods named in each event.
//!
//! ```text
//! AwaitHello --hello--> AwaitAuth --auth--> Authenticated --open()--> Established
//!      \___________________ deadline or bad input __________________/        |
//!                                  v                                          v
//!                                Closed <--------- error / idle / close() ----+
//! ```
//! An established session that neither hears from its client nor delivers anything to it for
//! [`GatewayConfig::idle_timeout_us`] ends ([`CloseReason::Idle`]): until then it holds one of
//! the gateway's session slots. Clients stay busy: a Loopix client's cover streams send all the
//! time, and a client with both off sends a keep-alive (see `client_session`).
//! Until [`GatewaySession::open`] the session sends nothing but the handshake: the driver
//! registers the client (and may refuse it, e.g. when the gateway is full) first; messages a
//! client pipelines after its auth wait (a few) until then.
//!
//! The driver answers events in the order they come (a charge's write before a later
//! credential's), and drains transmits and events after every call.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rand::CryptoRng;

use crate::limits::{
    EARLY_MESSAGES_MAX, ERROR_TEXT_BYTES_MAX, FLUSH_EVERY_BYTES, SESSION_EVENTS_MAX,
    SESSION_TRANSMITS_MAX,
};
use crate::wire::messages::error_code;
use crate::wire::{ClientMessageView, DeliveryKind, GatewayHandshake, GatewayMessage, Session};

/// Settings a gateway gives each session.
#[derive(Debug, Clone, Copy)]
pub struct GatewayConfig {
    /// From the first byte to an authenticated client.
    pub handshake_timeout_us: u64,
    /// An established session with no client message and no delivery for this long ends.
    pub idle_timeout_us: u64,
    /// Forwards are charged against a balance the client tops up with credentials.
    pub metered: bool,
}

/// Where a first hop goes, or why it is refused; the gateway's view of the topology.
pub trait FirstHops {
    fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str>;
}

/// What the driver sends on the transport, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// One binary message (handshake bytes or a sealed [`GatewayMessage`]).
    Message(Vec<u8>),
    /// Close the transport with this reason, after the messages before it.
    Close(CloseReason, String),
}

/// Why a session ends; drivers map it to their transport's close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client left, or a newer session of the same identity replaced this one.
    Normal,
    /// The handshake failed.
    Policy,
    /// The client broke the protocol after the handshake.
    Protocol,
    /// The gateway cannot serve the client now; it may retry later.
    Again,
    /// The handshake did not finish in time.
    TimedOut,
    /// The established session was silent both ways for the idle timeout.
    Idle,
}

/// Decisions the session leaves to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// The handshake proved `client`: register it, then call [`GatewaySession::open`] (or
    /// [`GatewaySession::refuse`]).
    Authenticated { client: [u8; 32] },
    /// A forward the policy allowed and the balance paid for: queue it to `next_hop`; if the
    /// egress refuses it, call [`GatewaySession::refuse`] with `OVERLOADED` (it stays paid).
    Forward {
        next_hop: SocketAddr,
        packet: Vec<u8>,
    },
    /// The client handled these deliveries: delete them.
    Confirm { ids: Vec<u64> },
    /// Verify and credit a credential, then call [`GatewaySession::credited`].
    Credential { bytes: Vec<u8> },
    /// Write `bytes` of charges through and call [`GatewaySession::balance`] with the stored
    /// balance (or [`GatewaySession::charge_failed`]).
    Charge { bytes: u64 },
    /// Once per session, after the client first used the gateway: record it durably.
    Admit { client: [u8; 32] },
    /// The session ended; no more transmits after the queued ones.
    Closed { reason: CloseReason },
}

/// What became of a delivery handed to [`GatewaySession::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Sealed and queued for the transport.
    Queued,
    /// This session sent it (or a later id) already: ids only grow within a session.
    AlreadySent,
    /// The transmit queue is full (the client does not read): keep it in the mailbox.
    Full,
    /// The session is not established (or is closed).
    NotOpen,
}

/// Why a forward was not passed on; counted by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refusals {
    pub not_layer1: u64,
    pub no_bandwidth: u64,
    pub malformed: u64,
}

enum State {
    AwaitHello,
    AwaitAuth(GatewayHandshake),
    Authenticated { client: [u8; 32], session: Session },
    Established(Established),
    Closed,
}

struct Established {
    client: [u8; 32],
    session: Session,
    /// When the session ends unless the client says something or is delivered something.
    idle_deadline_us: u64,
    /// A delivery was queued since the deadline was last set (deliveries carry no clock).
    delivered: bool,
    /// The highest delivery id sent in this session.
    cursor: u64,
    /// With metering: the balance as this session sees it.
    account: Option<Account>,
    admitted: bool,
}

/// The stored balance at the last read or write, minus what was charged since; `writing` is
/// a charge the driver is writing through now.
#[derive(Debug, Clone, Copy, Default)]
struct Account {
    remaining: u64,
    unflushed: u64,
    writing: u64,
}

pub struct GatewaySession {
    config: GatewayConfig,
    identity_seed: [u8; 32],
    state: State,
    handshake_deadline_us: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<GatewayEvent>,
    refusals: Refusals,
    /// Set by a step that must end the session once it is done.
    fault: Option<(CloseReason, &'static str)>,
    /// Charges of a closed session not yet written through (see [`Self::unwritten_bytes`]).
    unwritten_bytes: u64,
    /// Messages that came after the auth, before the driver opened the session.
    early: VecDeque<Vec<u8>>,
    /// The time of the latest call that carried one (`new`, `handle_message`): the idle
    /// deadline of a session the driver opens counts from its last handshake message.
    now_us: u64,
}

impl GatewaySession {
    /// A connection that arrived at `now_us`, for the gateway whose identity seed is given.
    pub fn new(now_us: u64, config: GatewayConfig, identity_seed: [u8; 32]) -> GatewaySession {
        GatewaySession {
            config,
            identity_seed,
            state: State::AwaitHello,
            handshake_deadline_us: now_us.saturating_add(config.handshake_timeout_us),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            refusals: Refusals::default(),
            fault: None,
            unwritten_bytes: 0,
            early: VecDeque::new(),
            now_us,
        }
    }

    /// The client's identity, once the handshake proved it.
    pub fn client(&self) -> Option<[u8; 32]> {
        match &self.state {
            State::Authenticated { client, .. } => Some(*client),
            State::Established(live) => Some(live.client),
            _ => None,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Forwards refused so far, by reason.
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// The balance this session sees (metered sessions, once open).
    pub fn remaining_bytes(&self) -> Option<u64> {
        match &self.state {
            State::Established(live) => live.account.map(|a| a.remaining),
            _ => None,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<GatewayEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.state {
            State::AwaitHello | State::AwaitAuth(_) | State::Authenticated { .. } => {
                Some(self.handshake_deadline_us)
            }
            State::Established(live) => Some(live.idle_deadline_us),
            State::Closed => None,
        }
    }

    pub fn handle_timeout(&mut self, now_us: u64) {
        match &mut self.state {
            State::Established(live) => {
                if now_us < live.idle_deadline_us {
                    return;
                }
                if live.delivered {
                    // Delivered to since the deadline was set: busy until one more timeout.
                    live.delivered = false;
                    live.idle_deadline_us = now_us.saturating_add(self.config.idle_timeout_us);
                    return;
                }
                self.end(CloseReason::Idle, "idle session");
            }
            State::Closed => {}
            _ if now_us >= self.handshake_deadline_us => {
                // A peer that stalls may not read a close frame either: none is queued.
                self.set_closed();
                self.events.push_back(GatewayEvent::Closed {
                    reason: CloseReason::TimedOut,
                });
            }
            _ => {}
        }
    }

    /// A text message, or anything else the transport delivers that the protocol forbids.
    pub fn handle_violation(&mut self, text: &'static str) {
        self.refusals.malformed += 1;
        self.refuse(error_code::MALFORMED, text, CloseReason::Protocol);
    }

    /// The transport ended (the client left).
    pub fn handle_transport_closed(&mut self) {
        if !self.is_closed() {
            self.set_closed();
            self.events.push_back(GatewayEvent::Closed {
                reason: CloseReason::Normal,
            });
        }
    }

    /// One binary message from the client.
    pub fn handle_message<R: CryptoRng + ?Sized, H: FirstHops>(
        &mut self,
        now_us: u64,
        bytes: &[u8],
        rng: &mut R,
        first_hops: &H,
    ) {
        self.handle_timeout(now_us);
        self.now_us = now_us;
        match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitHello => match GatewayHandshake::respond(bytes, &self.identity_seed, rng) {
                Ok((handshake, reply)) => {
                    self.state = State::AwaitAuth(handshake);
                    self.transmits.push_back(Transmit::Message(reply));
                }
                Err(_) => self.end(CloseReason::Policy, "bad client hello"),
            },
            State::AwaitAuth(handshake) => match handshake.finish(bytes) {
                Ok((client, session)) => {
                    self.state = State::Authenticated { client, session };
                    self.event(GatewayEvent::Authenticated { client });
                }
                Err(_) => self.end(CloseReason::Policy, "bad client auth"),
            },
            // The driver is registering the client: a client may pipeline its first messages
            // after the auth; they are handled once the session opens (a few, then it must wait).
            State::Authenticated { client, session } => {
                self.state = State::Authenticated { client, session };
                if self.early.len() < EARLY_MESSAGES_MAX {
                    self.early.push_back(bytes.to_vec());
                } else {
                    self.end(CloseReason::Protocol, "too many messages before welcome");
                }
            }
            State::Established(mut live) => {
                live.idle_deadline_us = now_us.saturating_add(self.config.idle_timeout_us);
                live.delivered = false;
                self.state = State::Established(live);
                self.on_sealed(bytes, first_hops);
            }
            State::Closed => {}
        }
    }

    /// The driver registered the client: welcome it with the count of stored deliveries and,
    /// when metered, its stored balance.
    pub fn open<H: FirstHops>(&mut self, stored: u32, balance_bytes: Option<u64>, first_hops: &H) {
        let State::Authenticated { client, session } =
            std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let account = self.config.metered.then(|| Account {
            remaining: balance_bytes.unwrap_or(0),
            ..Account::default()
        });
        self.state = State::Established(Established {
            client,
            session,
            idle_deadline_us: self.now_us.saturating_add(self.config.idle_timeout_us),
            // The welcome is a delivery: however long the driver took to open the session,
            // the client has a whole idle timeout from the first check on.
            delivered: true,
            cursor: 0,
            account,
            admitted: false,
        });
        self.with_live(|core, live| {
            core.send(live, &GatewayMessage::Welcome { stored });
            if let Some(account) = account {
                let remaining_bytes = account.remaining;
                core.send(live, &GatewayMessage::Bandwidth { remaining_bytes });
            }
        });
        while let Some(early) = self.early.pop_front() {
            if !self.is_established() {
                break;
            }
            self.on_sealed(&early, first_hops);
        }
        self.early.clear();
    }

    /// The driver cannot serve the client (gateway full, overloaded, a newer session of the
    /// same identity): an `Error` if the session has keys, then close.
    pub fn refuse(&mut self, code: u8, text: &str, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        if matches!(self.state, State::Authenticated { .. }) {
            if let State::Authenticated { client, session } =
                std::mem::replace(&mut self.state, State::Closed)
            {
                self.state = State::Established(Established {
                    client,
                    session,
                    idle_deadline_us: self.now_us,
                    delivered: false,
                    cursor: 0,
                    account: None,
                    admitted: true,
                });
            }
        }
        let text = cut(text).to_string();
        self.with_live(|core, live| {
            core.send(live, &error(code, &text));
        });
        if !self.is_closed() {
            self.end(reason, &text);
        }
    }

    /// A refusal of one forward (the egress queue is full): an `Error`, the session goes on.
    pub fn refuse_forward(&mut self, code: u8, text: &str) {
        self.with_live(|session, live| session.send(live, &error(code, text)));
    }

    /// Seals a delivery for the client unless this session sent it already.
    pub fn deliver(
        &mut self,
        id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: Vec<u8>,
    ) -> Delivered {
        if self.transmits.len() >= SESSION_TRANSMITS_MAX {
            return if self.is_established() {
                Delivered::Full
            } else {
                Delivered::NotOpen
            };
        }
        let mut outcome = Delivered::NotOpen;
        self.with_live(|session, live| {
            if id <= live.cursor {
                outcome = Delivered::AlreadySent;
                return;
            }
            live.cursor = id;
            live.delivered = true;
            let message = GatewayMessage::Deliver {
                id,
                kind,
                identifier,
                bytes,
            };
            session.send(live, &message);
            outcome = Delivered::Queued;
        });
        outcome
    }

    /// The highest delivery id sent in this session (the driver reads the mailbox after it).
    pub fn cursor(&self) -> u64 {
        match &self.state {
            State::Established(live) => live.cursor,
            _ => 0,
        }
    }

    /// The answer to [`GatewayEvent::Credential`]: the credited stored balance, or why not.
    pub fn credited(&mut self, result: Result<u64, (u8, String)>) {
        match result {
            Ok(stored_bytes) => {
                self.admit();
                self.balance(stored_bytes);
            }
            Err((code, text)) => self.refuse_forward(code, &text),
        }
    }

    /// The answer to [`GatewayEvent::Charge`] (or a credit): the stored balance after the
    /// write; the session subtracts what it charged since and reports the result.
    pub fn balance(&mut self, stored_bytes: u64) {
        self.with_live(|session, live| {
            let Some(account) = live.account.as_mut() else {
                return;
            };
            account.writing = 0;
            account.remaining = stored_bytes.saturating_sub(account.unflushed);
            let message = GatewayMessage::Bandwidth {
                remaining_bytes: account.remaining,
            };
            session.send(live, &message);
        });
    }

    /// The write of a [`GatewayEvent::Charge`] failed: the charge is kept and written with
    /// the next one.
    pub fn charge_failed(&mut self) {
        if let State::Established(Established {
            account: Some(account),
            ..
        }) = &mut self.state
        {
            account.unflushed = account.unflushed.saturating_add(account.writing);
            account.writing = 0;
        }
    }

    /// Ends the session from the driver's side (shutdown); returns the charges not yet
    /// written, which the driver must write through.
    pub fn close(&mut self, reason: CloseReason, text: &str) -> u64 {
        if !self.is_closed() {
            self.end(reason, text);
        }
        self.unwritten_bytes
    }

    /// Once closed: the charges the driver must still write through (the session's last
    /// flush); a charge it was writing when the session ended counts here too.
    pub fn unwritten_bytes(&self) -> u64 {
        self.unwritten_bytes
    }

    fn on_sealed<H: FirstHops>(&mut self, bytes: &[u8], first_hops: &H) {
        self.with_live(|core, live| {
            let plaintext = live.session.open(bytes);
            let message = match &plaintext {
                Ok(plaintext) => {
                    ClientMessageView::new_checked(plaintext).map_err(|_| "malformed message")
                }
                Err(_) => Err("message does not decrypt"),
            };
            match message {
                Ok(message) => core.on_message(live, message, first_hops),
                Err(text) => {
                    core.refusals.malformed += 1;
                    core.send(live, &error(error_code::MALFORMED, text));
                    core.fault.get_or_insert((CloseReason::Protocol, text));
                }
            }
        });
    }

    fn on_message<H: FirstHops>(
        &mut self,
        live: &mut Established,
        message: ClientMessageView<'_>,
        first_hops: &H,
    ) {
        match message {
            ClientMessageView::Forward(forward) => {
                let next_hop = match first_hops.check(forward.first_hop()) {
                    Ok(next_hop) => next_hop,
                    Err(text) => {
                        self.refusals.not_layer1 += 1;
                        self.send(live, &error(error_code::NOT_LAYER1, text));
                        return;
                    }
                };
                // Charged before it is queued: a packet the egress drops is paid for, like
                // one lost on the way.
                if let Some(account) = live.account.as_mut() {
                    let bytes = forward.packet().len() as u64;
                    if account.remaining < bytes {
                        self.refusals.no_bandwidth += 1;
                        let text = format!(
                            "no bandwidth: {} bytes left, {bytes} needed; spend a credential",
                            account.remaining
                        );
                        self.send(live, &error(error_code::NO_BANDWIDTH, &text));
                        return;
                    }
                    account.remaining -= bytes;
                    account.unflushed += bytes;
                    if account.unflushed >= FLUSH_EVERY_BYTES && account.writing == 0 {
                        account.writing = account.unflushed;
                        account.unflushed = 0;
                        let bytes = account.writing;
                        self.event(GatewayEvent::Charge { bytes });
                    }
                }
                self.event(GatewayEvent::Forward {
                    next_hop,
                    packet: forward.packet().to_vec(),
                });
                if !live.admitted {
                    live.admitted = true;
                    self.event(GatewayEvent::Admit {
                        client: live.client,
                    });
                }
            }
            // A keep-alive: it kept the session from idling, there is nothing to delete.
            ClientMessageView::Confirm(confirm) if confirm.is_empty() => {}
            ClientMessageView::Confirm(confirm) => self.event(GatewayEvent::Confirm {
                ids: confirm.ids().collect(),
            }),
            // Unmetered: nothing to pay for, the credential is not spent.
            ClientMessageView::Credential(bytes) => {
                if live.account.is_some() {
                    self.event(GatewayEvent::Credential {
                        bytes: bytes.to_vec(),
                    });
                }
            }
        }
    }

    fn admit(&mut self) {
        self.with_live(|core, live| {
            if !live.admitted {
                live.admitted = true;
                core.event(GatewayEvent::Admit {
                    client: live.client,
                });
            }
        });
    }

    /// Runs `f` on an established session; a fault `f` records (a send that failed) ends it.
    fn with_live(&mut self, f: impl FnOnce(&mut GatewaySession, &mut Established)) {
        if !self.is_established() {
            return;
        }
        let State::Established(mut live) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        f(self, &mut live);
        self.state = State::Established(live);
        if let Some((reason, text)) = self.fault.take() {
            self.end(reason, text);
        }
    }

    /// Seals and queues a message; a session that cannot seal (counter exhausted) or whose
    /// client stopped reading records a fault and ends after the current step.
    fn send(&mut self, live: &mut Established, message: &GatewayMessage) {
        if self.fault.is_some() {
            return;
        }
        if self.transmits.len() >= SESSION_TRANSMITS_MAX {
            self.fault = Some((CloseReason::Again, "client does not read"));
            return;
        }
        match live.session.seal(&message.encode()) {
            Ok(sealed) => self.transmits.push_back(Transmit::Message(sealed)),
            Err(_) => self.fault = Some((CloseReason::Protocol, "session exhausted")),
        }
    }

    /// Leaves the state machine closed, keeping what the driver still has to write.
    fn set_closed(&mut self) {
        if let State::Established(Established {
            account: Some(account),
            ..
        }) = &self.state
        {
            self.unwritten_bytes = account.unflushed.saturating_add(account.writing);
        }
        self.state = State::Closed;
    }

    fn end(&mut self, reason: CloseReason, text: &str) {
        self.set_closed();
        self.transmits
            .push_back(Transmit::Close(reason, cut(text).to_string()));
        self.events.push_back(GatewayEvent::Closed { reason });
    }

    fn event(&mut self, event: GatewayEvent) {
        // At most a few events per call: a driver that does not drain them is a bug.
        debug_assert!(self.events.len() < SESSION_EVENTS_MAX);
        if self.events.len() < SESSION_EVENTS_MAX {
            self.events.push_back(event);
        }
    }
}

fn error(code: u8, text: &str) -> GatewayMessage {
    GatewayMessage::Error {
        code,
        text: cut(text).to_string(),
    }
}

fn cut(text: &str) -> &str {
    if text.len() <= ERROR_TEXT_BYTES_MAX {
        return text;
    }
    let mut end = ERROR_TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
