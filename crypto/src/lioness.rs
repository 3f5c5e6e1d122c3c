//! Lioness wide-block cipher, byte-compatible with `lioness-rs` 0.2's
//! `Lioness<ChaCha20, Blake2bMac<U32>>` (the Sphinx payload cipher of `sphinx-packet` 0.8).
//!
//! Block = `left (32 B) || right (rest)`. Key = `k1 (32) || k2 (64) || k3 (32) || k4 (64)`.
//! Encryption is four rounds: `R ^= S(L ^ k1)`, `L ^= H(k2, R)`, `R ^= S(L ^ k3)`,
//! `L ^= H(k4, R)`; S = IETF ChaCha20 with a zero nonce, H = keyed BLAKE2b-256 with the full
//! 64-byte key. Decryption runs the rounds backwards. Everything happens in place.
//!
//! ChaCha20 runs 16 blocks at a time with AVX-512 ([`crate::simd::chacha`]); batched callers
//! decrypt many blocks with [`decrypt_many`], whose BLAKE2b passes hash up to 8 blocks at
//! once ([`crate::simd::blake2b`]).

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::simd::{blake2b, chacha};

/// Lioness key size: 2 × (ChaCha20 key 32 + BLAKE2b key 64).
pub const KEY_SIZE: usize = 192;
/// Size of the left half: the BLAKE2b-256 output.
pub const LEFT_SIZE: usize = 32;
/// Smallest block `lioness-rs` accepts: the right half must not be empty.
pub const BLOCK_SIZE_MIN: usize = LEFT_SIZE + 1;

const STREAM_KEY_SIZE: usize = 32;
const MAC_KEY_SIZE: usize = 64;
const _: () = assert!(2 * (STREAM_KEY_SIZE + MAC_KEY_SIZE) == KEY_SIZE);
const _: () = assert!(LEFT_SIZE == STREAM_KEY_SIZE);

/// The block was too short (at most [`LEFT_SIZE`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockTooShort;

/// A Lioness key split into its four round keys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Lioness {
    k1: [u8; STREAM_KEY_SIZE],
    k2: [u8; MAC_KEY_SIZE],
    k3: [u8; STREAM_KEY_SIZE],
    k4: [u8; MAC_KEY_SIZE],
}

impl Lioness {
    /// Splits a 192-byte key into round keys.
    pub fn new(key: &[u8; KEY_SIZE]) -> Self {
        let mut cipher = Lioness {
            k1: [0; STREAM_KEY_SIZE],
            k2: [0; MAC_KEY_SIZE],
            k3: [0; STREAM_KEY_SIZE],
            k4: [0; MAC_KEY_SIZE],
        };
        let (k1, rest) = key.split_at(STREAM_KEY_SIZE);
        let (k2, rest) = rest.split_at(MAC_KEY_SIZE);
        let (k3, k4) = rest.split_at(STREAM_KEY_SIZE);
        cipher.k1.copy_from_slice(k1);
        cipher.k2.copy_from_slice(k2);
        cipher.k3.copy_from_slice(k3);
        cipher.k4.copy_from_slice(k4);
        cipher
    }

    /// Encrypts `block` (at least [`BLOCK_SIZE_MIN`] bytes) in place.
    pub fn encrypt(&self, block: &mut [u8]) -> Result<(), BlockTooShort> {
        let (left, right) = split(block)?;
        xor_stream_into_right(left, right, &self.k1);
        xor_mac_into_left(left, right, &self.k2);
        xor_stream_into_right(left, right, &self.k3);
        xor_mac_into_left(left, right, &self.k4);
        Ok(())
    }

    /// Decrypts `block` (at least [`BLOCK_SIZE_MIN`] bytes) in place.
    pub fn decrypt(&self, block: &mut [u8]) -> Result<(), BlockTooShort> {
        let (left, right) = split(block)?;
        xor_mac_into_left(left, right, &self.k4);
        xor_stream_into_right(left, right, &self.k3);
        xor_mac_into_left(left, right, &self.k2);
        xor_stream_into_right(left, right, &self.k1);
        Ok(())
    }
}

fn split(block: &mut [u8]) -> Result<(&mut [u8; LEFT_SIZE], &mut [u8]), BlockTooShort> {
    if block.len() < BLOCK_SIZE_MIN {
        return Err(BlockTooShort);
    }
    let (left, right) = block.split_at_mut(LEFT_SIZE);
    let left: &mut [u8; LEFT_SIZE] = left.try_into().map_err(|_| BlockTooShort)?;
    Ok((left, right))
}

// R ^= ChaCha20(key = L ^ k, nonce = 0)
fn xor_stream_into_right(left: &[u8; LEFT_SIZE], right: &mut [u8], k: &[u8; STREAM_KEY_SIZE]) {
    let mut key = *k;
    for (key_byte, left_byte) in key.iter_mut().zip(left) {
        *key_byte ^= left_byte;
    }
    chacha::xor_keystream(&key, right);
    key.zeroize();
}

// L ^= BLAKE2b-256(key = k, R)
fn xor_mac_into_left(left: &mut [u8; LEFT_SIZE], right: &[u8], k: &[u8; MAC_KEY_SIZE]) {
    let mut mac = <Blake2bMac<blake2::digest::consts::U32> as KeyInit>::new(k.into());
    mac.update(right);
    let tag = mac.finalize().into_bytes();
    for (left_byte, tag_byte) in left.iter_mut().zip(tag.iter()) {
        *left_byte ^= tag_byte;
    }
}

/// Most blocks [`decrypt_many`] hashes in one vector pass.
pub const LANES: usize = blake2b::MAX_LANES;

// Round-key offsets in the 192-byte key: k1 ‖ k2 ‖ k3 ‖ k4.
const K1_AT: usize = 0;
const K2_AT: usize = K1_AT + STREAM_KEY_SIZE;
const K3_AT: usize = K2_AT + MAC_KEY_SIZE;
const K4_AT: usize = K3_AT + STREAM_KEY_SIZE;
const _: () = assert!(K4_AT + MAC_KEY_SIZE == KEY_SIZE);

/// Decrypts every `blocks[j]` with the key `keys[j]` in place (pairs beyond the shorter
/// slice are left alone): the same bytes as `Lioness::new(keys[j]).decrypt(blocks[j])`.
///
/// Up to [`LANES`] blocks of equal length at a time share the multi-buffer BLAKE2b passes
/// (see [`crate::simd::blake2b`]); the ChaCha20 passes run per block. Fails, changing
/// nothing, if any block is shorter than [`BLOCK_SIZE_MIN`].
pub fn decrypt_many(
    keys: &[&[u8; KEY_SIZE]],
    blocks: &mut [&mut [u8]],
) -> Result<(), BlockTooShort> {
    if blocks.iter().any(|block| block.len() < BLOCK_SIZE_MIN) {
        return Err(BlockTooShort);
    }
    for (keys, blocks) in keys.chunks(LANES).zip(blocks.chunks_mut(LANES)) {
        mac_lanes(keys, blocks, K4_AT);
        stream_lanes(keys, blocks, K3_AT);
        mac_lanes(keys, blocks, K2_AT);
        stream_lanes(keys, blocks, K1_AT);
    }
    Ok(())
}

// L_j ^= BLAKE2b-256(key_j[at..at + 64], R_j) for up to LANES blocks.
fn mac_lanes(keys: &[&[u8; KEY_SIZE]], blocks: &mut [&mut [u8]], at: usize) {
    const NO_KEY: [u8; MAC_KEY_SIZE] = [0; MAC_KEY_SIZE];
    let lanes = keys.len().min(blocks.len()).min(LANES);
    let mut mac_keys: [&[u8; MAC_KEY_SIZE]; LANES] = [&NO_KEY; LANES];
    for (mac_key, key) in mac_keys.iter_mut().zip(keys) {
        if let Some(k) = key.get(at..).and_then(|k| k.first_chunk::<MAC_KEY_SIZE>()) {
            *mac_key = k;
        }
    }
    let mut tags = [[0u8; blake2b::OUT_SIZE]; LANES];
    {
        let msgs: [&[u8]; LANES] = core::array::from_fn(|lane| {
            blocks
                .get(lane)
                .and_then(|block| block.get(LEFT_SIZE..))
                .unwrap_or(&[])
        });
        blake2b::keyed256_many(&mac_keys[..lanes], &msgs[..lanes], &mut tags[..lanes]);
    }
    for (block, tag) in blocks.iter_mut().zip(tags.iter()).take(lanes) {
        for (byte, tag_byte) in block.iter_mut().zip(tag.iter()) {
            *byte ^= tag_byte;
        }
    }
    crate::simd::wipe(tags.as_flattened_mut());
}

// R_j ^= ChaCha20(key = L_j ^ key_j[at..at + 32], nonce = 0).
fn stream_lanes(keys: &[&[u8; KEY_SIZE]], blocks: &mut [&mut [u8]], at: usize) {
    for (key, block) in keys.iter().zip(blocks.iter_mut()) {
        let Some(k) = key
            .get(at..)
            .and_then(|k| k.first_chunk::<STREAM_KEY_SIZE>())
        else {
            continue;
        };
        if let Ok((left, right)) = split(block) {
            xor_stream_into_right(left, right, k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_changes_the_block() {
        let key = [7u8; KEY_SIZE];
        let cipher = Lioness::new(&key);
        let plain: Vec<u8> = (0..100u8).collect();
        let mut block = plain.clone();
        cipher.encrypt(&mut block).unwrap();
        assert_ne!(block, plain);
        cipher.decrypt(&mut block).unwrap();
        assert_eq!(block, plain);
    }

    #[test]
    fn rejects_blocks_without_a_right_half() {
        let cipher = Lioness::new(&[0u8; KEY_SIZE]);
        assert_eq!(cipher.encrypt(&mut [0u8; LEFT_SIZE]), Err(BlockTooShort));
        assert!(cipher.encrypt(&mut [0u8; BLOCK_SIZE_MIN]).is_ok());
    }
}
