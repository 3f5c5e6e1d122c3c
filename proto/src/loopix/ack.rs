//! SURB-ACK plaintexts: 21 bytes that name one transmission of one fragment, readable and
//! forgeable only with the client's ack key (random per client run, never leaves memory).
//!
//! ```text
//! tag (16) = HMAC-SHA256(ack key, "lethe-ack-tag" ‖ id)[..16]
//! body (5) = id ⊕ HMAC-SHA256(ack key, "lethe-ack-enc" ‖ tag)[..5]
//! ```
//! A deterministic authenticated encryption (SIV-like): the tag is the IV, ids never repeat
//! (a 40-bit counter), the id stays hidden from everyone but us, and a forgery needs a 128-bit
//! tag. Nym's format is 16-byte IV ‖ 5-byte AES-CTR-encrypted fragment id, unauthenticated.

use hmac::{KeyInit, Mac};
use rand::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::wire::payload::ACK_CONTENT_BYTES;

/// Ack ids are 40 bits.
pub const ACK_ID_MAX: u64 = (1 << 40) - 1;
const TAG_BYTES: usize = 16;
const ID_BYTES: usize = 5;
const _: () = assert!(TAG_BYTES + ID_BYTES == ACK_CONTENT_BYTES);

type HmacSha256 = hmac::Hmac<Sha256>;

pub struct AckKey(Zeroizing<[u8; 32]>);

impl AckKey {
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> AckKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut key[..]);
        AckKey(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> AckKey {
        AckKey(Zeroizing::new(bytes))
    }

    fn prf(&self, domain: &[u8], input: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = match <HmacSha256 as KeyInit>::new_from_slice(&self.0[..]) {
            Ok(mac) => mac,
            Err(_) => return [0u8; 32],
        };
        mac.update(domain);
        mac.update(input);
        mac.finalize().into_bytes().into()
    }

    /// The ACK plaintext for `id` (only its low 40 bits are used).
    pub fn seal(&self, id: u64) -> [u8; ACK_CONTENT_BYTES] {
        let id_bytes = id_bytes(id);
        let tag_full = self.prf(b"lethe-ack-tag", &id_bytes);
        let mut out = [0u8; ACK_CONTENT_BYTES];
        out[..TAG_BYTES].copy_from_slice(&tag_full[..TAG_BYTES]);
        let stream = self.prf(b"lethe-ack-enc", &out[..TAG_BYTES]);
        for (i, byte) in id_bytes.iter().enumerate() {
            out[TAG_BYTES + i] = byte ^ stream[i];
        }
        out
    }

    /// The id an ACK plaintext names, if we made it.
    pub fn open(&self, plaintext: &[u8]) -> Option<u64> {
        let plaintext: &[u8; ACK_CONTENT_BYTES] = plaintext.try_into().ok()?;
        let (tag, body) = plaintext.split_at(TAG_BYTES);
        let stream = self.prf(b"lethe-ack-enc", tag);
        let mut id_bytes = [0u8; ID_BYTES];
        for (i, byte) in id_bytes.iter_mut().enumerate() {
            *byte = body[i] ^ stream[i];
        }
        let expected = self.prf(b"lethe-ack-tag", &id_bytes);
        let equal = expected[..TAG_BYTES]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if !equal {
            return None;
        }
        let mut wide = [0u8; 8];
        wide[3..].copy_from_slice(&id_bytes);
        Some(u64::from_be_bytes(wide))
    }
}

fn id_bytes(id: u64) -> [u8; ID_BYTES] {
    let wide = (id & ACK_ID_MAX).to_be_bytes();
    let mut out = [0u8; ID_BYTES];
    out.copy_from_slice(&wide[3..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_forgery() {
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
        let key = AckKey::random(&mut rng);
        for id in [0, 1, 77, ACK_ID_MAX] {
            let sealed = key.seal(id);
            assert_eq!(key.open(&sealed), Some(id));
            for i in 0..ACK_CONTENT_BYTES {
                let mut bad = sealed;
                bad[i] ^= 0x10;
                assert_eq!(key.open(&bad), None, "flip at {i}");
            }
        }
        let other = AckKey::random(&mut rng);
        assert_eq!(other.open(&key.seal(5)), None);
        assert_eq!(key.open(&[0u8; 20]), None);
        // The id is not visible in the plaintext.
        assert_ne!(key.seal(1)[16..], [0, 0, 0, 0, 1]);
    }
}
