//! Routing-information primitives: the per-hop keystream (AES-128-CTR, 64-bit BE counter,
//! zero IV), the truncated HMAC-SHA256 header MAC, and the sender's filler.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::constants::{
    KEYSTREAM_SIZE, MAC_KEY_SIZE, MAC_SIZE, MAX_PATH_LENGTH, ROUTING_INFO_SIZE, SLOT_SIZE,
    STREAM_KEY_SIZE,
};

/// HMAC-SHA256's block size: shorter keys are zero padded to it, so padding ourselves gives
/// the same MAC while using the infallible fixed-size constructor.
const HMAC_BLOCK_SIZE: usize = 64;
const _: () = assert!(MAC_KEY_SIZE <= HMAC_BLOCK_SIZE);

/// The 360-byte keystream of one hop.
pub fn keystream(stream_key: &[u8; STREAM_KEY_SIZE]) -> [u8; KEYSTREAM_SIZE] {
    let mut stream = [0u8; KEYSTREAM_SIZE];
    xor_keystream(stream_key, &mut stream);
    stream
}

/// XORs the keystream (from offset 0) into `data` (≤ 360 bytes in Sphinx use).
pub fn xor_keystream(stream_key: &[u8; STREAM_KEY_SIZE], data: &mut [u8]) {
    crate::simd::aes::xor_keystream(stream_key, data);
}

/// HMAC-SHA256(key, beta) truncated to 16 bytes.
pub fn compute_mac(mac_key: &[u8; MAC_KEY_SIZE], beta: &[u8; ROUTING_INFO_SIZE]) -> [u8; MAC_SIZE] {
    let mut padded_key = [0u8; HMAC_BLOCK_SIZE];
    padded_key[..MAC_KEY_SIZE].copy_from_slice(mac_key);
    let mut hmac = <Hmac<Sha256> as KeyInit>::new(&padded_key.into());
    hmac.update(beta);
    let full = hmac.finalize().into_bytes();
    let mut mac = [0u8; MAC_SIZE];
    mac.copy_from_slice(&full[..MAC_SIZE]);
    mac
}

/// Constant-time comparison of the received MAC with the recomputed one.
pub fn mac_matches(
    mac_key: &[u8; MAC_KEY_SIZE],
    beta: &[u8; ROUTING_INFO_SIZE],
    received: &[u8; MAC_SIZE],
) -> bool {
    compute_mac(mac_key, beta).ct_eq(received).into()
}

/// Classic Sphinx filler for the first `n - 1` hops: step i appends a zero slot and XORs in
/// the last `60·i` bytes of hop (i-1)'s keystream. Returns the buffer and its used length.
pub fn filler(stream_keys: &[[u8; STREAM_KEY_SIZE]]) -> ([u8; SLOT_SIZE * MAX_PATH_LENGTH], usize) {
    let mut filler = [0u8; SLOT_SIZE * MAX_PATH_LENGTH];
    let mut len = 0;
    for (step, key) in stream_keys.iter().take(MAX_PATH_LENGTH - 1).enumerate() {
        len = (step + 1) * SLOT_SIZE;
        let stream = keystream(key);
        for (byte, key_byte) in filler[..len]
            .iter_mut()
            .zip(&stream[KEYSTREAM_SIZE - len..])
        {
            *byte ^= key_byte;
        }
    }
    (filler, len)
}
