//! The one WebSocket transport of the client ↔ gateway protocol. The gateway's session driver,
//! the client runtime, `client init`'s probe, loadgen and the tests read, write and connect
//! through it, so every side applies the same message bounds ([`config`]), skips control frames
//! the same way and turns a session's queued transmits into frames the same way
//! ([`write_transmits`]). The protocol itself is `lethe_proto`'s sessions; nothing here seals,
//! opens or decodes.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use lethe_proto::client_session::{ClientEvent, SendRefused};
use lethe_proto::gateway_session::{CloseReason, Transmit};
use lethe_proto::limits::WS_MESSAGE_BYTES_MAX;
use lethe_proto::wire::ClientMessage;
use lethe_proto::{duration_us, ClientSession, GatewaySession};

/// A client's connection to a gateway.
pub type ClientWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a close frame may take to leave: a peer that stopped reading does not hold the
/// closing side.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The message and frame bounds both sides apply (the gateway adds its small read buffer).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(WS_MESSAGE_BYTES_MAX))
}

/// Opens a WebSocket to a gateway's client URL (`ws://` or `wss://`), Nagle off: the protocol's
/// messages are small and latency-bound.
pub async fn connect(url: &str) -> Result<ClientWs, String> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config()), true)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(ws)
}

/// Why no binary message came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed the connection (with the reason of its close frame, if any).
    Closed { reason: Option<String> },
    /// A text message: neither side sends one.
    Text,
    /// The socket or the WebSocket framing failed (a bound exceeded, a reset).
    Socket(String),
}

impl ReadError {
    /// The fixed text a session records as the peer's violation.
    pub fn violation(&self) -> &'static str {
        match self {
            ReadError::Closed { .. } => "connection closed",
            ReadError::Text => "text messages are not accepted",
            ReadError::Socket(_) => "websocket error",
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed { reason: None } => f.write_str("connection closed"),
            ReadError::Closed {
                reason: Some(reason),
            } => write!(f, "connection closed: {reason}"),
            ReadError::Text => f.write_str("text message refused"),
            ReadError::Socket(e) => f.write_str(e),
        }
    }
}

impl From<ReadError> for String {
    fn from(e: ReadError) -> String {
        e.to_string()
    }
}

/// The next binary message (the frame's own buffer, not a copy); pings, pongs and raw frames are skipped (tungstenite answers pings
/// itself). Cancel-safe: nothing is lost when the future is dropped between messages. Unbounded
/// in time: the caller's deadline or select ends the wait.
pub async fn next_binary<S>(ws: &mut S) -> Result<Bytes, ReadError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_))) => return Err(ReadError::Text),
            Some(Ok(Message::Close(frame))) => {
                let reason = frame
                    .map(|f| f.reason.to_string())
                    .filter(|r| !r.is_empty());
                return Err(ReadError::Closed { reason });
            }
            None => return Err(ReadError::Closed { reason: None }),
            Some(Err(e)) => return Err(ReadError::Socket(e.to_string())),
        }
    }
}

/// What [`write_transmits`] needs of a session: both protocol cores queue the same
/// [`Transmit`]s.
pub trait Transmits {
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn handle_transport_closed(&mut self);
    fn is_closed(&self) -> bool;
}

impl Transmits for GatewaySession {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        GatewaySession::poll_transmit(self)
    }
    fn handle_transport_closed(&mut self) {
        GatewaySession::handle_transport_closed(self);
    }
    fn is_closed(&self) -> bool {
        GatewaySession::is_closed(self)
    }
}

impl Transmits for ClientSession {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ClientSession::poll_transmit(self)
    }
    fn handle_transport_closed(&mut self) {
        ClientSession::handle_transport_closed(self);
    }
    fn is_closed(&self) -> bool {
        ClientSession::is_closed(self)
    }
}

/// Writes everything `session` queued, one flush for the lot (a batch of forwards costs one
/// write, not one per message). `Err(why)` once the session is closed: it asked for the close
/// (the close frame is sent) or the socket failed (the session is told).
pub async fn write_transmits<S, T>(ws: &mut S, session: &mut T) -> Result<(), String>
where
    S: Sink<Message, Error = WsError> + Unpin,
    T: Transmits + ?Sized,
{
    let mut fed = false;
    while let Some(transmit) = session.poll_transmit() {
        match transmit {
            Transmit::Message(bytes) => {
                if let Err(e) = ws.feed(Message::binary(bytes)).await {
                    session.handle_transport_closed();
                    return Err(format!("send: {e}"));
                }
                fed = true;
            }
            Transmit::Close(reason, text) => {
                // What was fed before the close leaves with it.
                close(ws, reason, &text).await;
                return Err(text);
            }
        }
    }
    if fed {
        if let Err(e) = ws.flush().await {
            session.handle_transport_closed();
            return Err(format!("send: {e}"));
        }
    }
    if session.is_closed() {
        return Err("session closed".into());
    }
    Ok(())
}

/// Sends a close frame for `reason`, bounded by [`CLOSE_TIMEOUT`].
pub async fn close<S>(ws: &mut S, reason: CloseReason, text: &str)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let code = match reason {
        CloseReason::Normal => CloseCode::Normal,
        CloseReason::Policy => CloseCode::Policy,
        CloseReason::Protocol => CloseCode::Protocol,
        CloseReason::Again => CloseCode::Again,
        // Authenticated, so it may read: told why (bounded by the close timeout).
        CloseReason::Idle => CloseCode::Away,
        // A peer that stalls may not read a close frame: none is sent.
        CloseReason::TimedOut => return,
    };
    let frame = CloseFrame {
        code,
        reason: text.to_string().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
}

/// Why [`Connection::open`] did not get a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The gateway answered with an `Error` before (instead of) its welcome.
    Refused { code: u8, text: String },
    /// Connect, handshake or deadline.
    Failed(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Refused { code, text } => {
                write!(f, "the gateway refused the session ({code}): {text}")
            }
            OpenError::Failed(text) => f.write_str(text),
        }
    }
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> String {
        e.to_string()
    }
}

/// A client session over its socket: [`ClientSession`] driven on the transport above.
pub struct Connection {
    ws: ClientWs,
    session: ClientSession,
    /// The session's clock starts here.
    start: Instant,
}

impl Connection {
    /// Connects to `url`, runs the handshake with the pinned `gateway` identity and waits for
    /// its welcome, all within `timeout`. Returns the connection and the number of deliveries
    /// waiting in the mailbox.
    pub async fn open(
        url: &str,
        seed: &[u8; 32],
        gateway: [u8; 32],
        timeout: Duration,
    ) -> Result<(Connection, u32), OpenError> {
        let opening = async {
            let ws = connect(url).await.map_err(OpenError::Failed)?;
            let start = Instant::now();
            let session =
                ClientSession::new(0, duration_us(timeout), seed, gateway, &mut rand::rng());
            let mut connection = Connection { ws, session, start };
            let mut refusal = None;
            loop {
                let event = connection.next_event().await.map_err(|e| {
                    refusal
                        .take()
                        .unwrap_or_else(|| OpenError::Failed(e.clone()))
                })?;
                match event {
                    ClientEvent::Welcome { stored } => return Ok((connection, stored)),
                    ClientEvent::Error { code, text } => {
                        refusal = Some(OpenError::Refused { code, text })
                    }
                    ClientEvent::Closed { reason } => {
                        return Err(refusal.unwrap_or_else(|| {
                            OpenError::Failed(format!("{url}: session closed ({reason:?})"))
                        }))
                    }
                    ClientEvent::Deliver { .. } | ClientEvent::Bandwidth { .. } => {}
                }
            }
        };
        tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| OpenError::Failed(format!("{url}: no session within {timeout:?}")))?
    }

    pub fn session(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    /// The socket under the session, to send what the session never would: tests of a
    /// gateway's defences (garbage inside an established session).
    pub fn socket(&mut self) -> &mut ClientWs {
        &mut self.ws
    }

    /// The session's clock, in µs since the connection opened.
    pub fn now_us(&self) -> u64 {
        duration_us(self.start.elapsed())
    }

    /// Writes what the session queued.
    pub async fn flush(&mut self) -> Result<(), String> {
        write_transmits(&mut self.ws, &mut self.session).await
    }

    /// When [`Self::handle_timeout`] is due: the handshake deadline, then the session's
    /// keep-alive check (a driver that never runs it leaves a silent session to the gateway's
    /// idle timeout).
    pub fn timeout(&self) -> Option<tokio::time::Instant> {
        let due = |us| tokio::time::Instant::from_std(self.start + Duration::from_micros(us));
        self.session.poll_timeout().map(due)
    }

    /// Runs the session's timer; [`Self::flush`] writes what it queued (a keep-alive).
    pub fn handle_timeout(&mut self) {
        let now_us = self.now_us();
        self.session.handle_timeout(now_us);
    }

    /// Reads one message from the gateway into the session (its events are then in
    /// [`ClientSession::poll_event`]). Cancel-safe, so it can race other work in a `select!`.
    pub async fn receive(&mut self) -> Result<(), ReadError> {
        match next_binary(&mut self.ws).await {
            Ok(bytes) => {
                let now_us = self.now_us();
                self.session.handle_message(now_us, &bytes);
                Ok(())
            }
            Err(e) => {
                self.session.handle_transport_closed();
                Err(e)
            }
        }
    }

    /// The session's next event, writing what it queued and reading the gateway as needed.
    /// `Closed` is an event like the others; after it every call fails.
    pub async fn next_event(&mut self) -> Result<ClientEvent, String> {
        loop {
            if let Some(event) = self.session.poll_event() {
                return Ok(event);
            }
            self.flush().await?;
            self.receive().await?;
        }
    }

    /// Seals `message` and writes it (with anything else queued).
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), String> {
        let mut sent = self.session.send(message);
        if sent == Err(SendRefused::Full) {
            self.flush().await?;
            sent = self.session.send(message);
        }
        sent.map_err(|e| format!("session: {e:?}"))?;
        self.flush().await
    }

    /// Ends the session from the client's side (pending confirmations leave first).
    pub async fn close(mut self) {
        self.session.close();
        let _ = self.flush().await;
    }
}
