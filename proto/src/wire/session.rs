//! An established client ↔ gateway session: ChaCha20-Poly1305, one key per direction, the
//! nonce a per-direction message counter (WebSocket over TCP is ordered, so a replayed,
//! dropped or reordered message fails to open and the connection is closed).

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

use super::ProtoError;

/// AEAD tag length added to every sealed message.
pub const TAG_LEN: usize = 16;

pub struct Session {
    send: ChaCha20Poly1305,
    receive: ChaCha20Poly1305,
    send_count: u64,
    receive_count: u64,
}

impl Session {
    pub(crate) fn new(send_key: &[u8; 32], receive_key: &[u8; 32]) -> Session {
        Session {
            send: ChaCha20Poly1305::new(&(*send_key).into()),
            receive: ChaCha20Poly1305::new(&(*receive_key).into()),
            send_count: 0,
            receive_count: 0,
        }
    }

    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ProtoError> {
        let nonce = nonce(self.send_count);
        self.send_count = self
            .send_count
            .checked_add(1)
            .ok_or(ProtoError::SessionExhausted)?;
        self.send
            .encrypt(&nonce, plaintext)
            .map_err(|_| ProtoError::Seal)
    }

    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, ProtoError> {
        let nonce = nonce(self.receive_count);
        let plaintext = self
            .receive
            .decrypt(&nonce, ciphertext)
            .map_err(|_| ProtoError::Open)?;
        self.receive_count = self
            .receive_count
            .checked_add(1)
            .ok_or(ProtoError::SessionExhausted)?;
        Ok(plaintext)
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(bytes)
}
