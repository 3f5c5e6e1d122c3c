//! The tests' gateway client: `lethe_nodes::ws::Connection` (`lethe_proto::ClientSession` over
//! the one WebSocket transport), with the tests' bounded waits. Tests that misbehave on purpose
//! (garbage, floods, half handshakes) keep their raw sockets for that part only.

use std::time::Duration;

use futures_util::Stream;
use lethe_nodes::proto::ClientMessage;
use lethe_nodes::ws::{next_binary, Connection, OpenError};
use lethe_proto::ClientEvent;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::WAIT_MAX;

pub struct TestClient {
    connection: Connection,
    /// The client's ed25519 identity (what credentials are bound to).
    pub identity: [u8; 32],
}

impl TestClient {
    /// Connects and authenticates; returns the client and the Welcome's `stored`.
    pub async fn connect(url: &str, seed: [u8; 32], gateway: [u8; 32]) -> (TestClient, u32) {
        TestClient::try_connect(url, seed, gateway)
            .await
            .unwrap_or_else(|e| panic!("session at {url}: {e}"))
    }

    /// Like [`TestClient::connect`], for tests that expect a refusal.
    pub async fn try_connect(
        url: &str,
        seed: [u8; 32],
        gateway: [u8; 32],
    ) -> Result<(TestClient, u32), OpenError> {
        let (connection, stored) = Connection::open(url, &seed, gateway, WAIT_MAX).await?;
        let identity = lethe_nodes::keyfile::ed25519_public(&seed);
        Ok((
            TestClient {
                connection,
                identity,
            },
            stored,
        ))
    }

    pub async fn send(&mut self, message: &ClientMessage) {
        self.connection.send(message).await.expect("send");
    }

    /// The next event (bounded wait: a silent gateway fails the test), or `None` once the
    /// session ended.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        let next = tokio::time::timeout(WAIT_MAX, self.connection.next_event())
            .await
            .expect("timed out waiting for the gateway");
        match next {
            Ok(ClientEvent::Closed { .. }) | Err(_) => None,
            Ok(event) => Some(event),
        }
    }

    pub async fn expect_bandwidth(&mut self) -> u64 {
        match self.recv().await {
            Some(ClientEvent::Bandwidth { remaining_bytes }) => remaining_bytes,
            other => panic!("expected Bandwidth, got {other:?}"),
        }
    }

    pub async fn expect_error(&mut self, code: u8) {
        match self.recv().await {
            Some(ClientEvent::Error { code: got, text }) => {
                assert_eq!(got, code, "error {text}");
            }
            other => panic!("expected Error {code}, got {other:?}"),
        }
    }

    /// Nothing arrives within `wait` (the connection stays open).
    pub async fn expect_quiet(&mut self, wait: Duration) {
        if let Ok(event) = tokio::time::timeout(wait, self.connection.next_event()).await {
            panic!("expected nothing, got {event:?}");
        }
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    pub async fn close(self) {
        self.connection.close().await;
    }
}

/// The next binary message on a raw socket (bounded wait: a silent gateway fails the test), or
/// `None` once the connection closed or failed.
pub async fn next_raw<S>(ws: &mut S) -> Option<Vec<u8>>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    tokio::time::timeout(WAIT_MAX, next_binary(ws))
        .await
        .expect("timed out waiting for the gateway")
        .ok()
        .map(Vec::from)
}
