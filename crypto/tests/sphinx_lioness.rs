//! Lethe's Lioness against `lioness-rs` 0.2 (`Lioness<ChaCha20, Blake2bMac<U32>>`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blake2::Blake2bMac;
use chacha20::ChaCha20;
use lethe_crypto::lioness::{Lioness, BLOCK_SIZE_MIN, KEY_SIZE};
use lioness_rs::KeyInit;
use proptest::prelude::*;

type Reference = lioness_rs::Lioness<ChaCha20, Blake2bMac<blake2::digest::consts::U32>>;

fn check(key: &[u8; KEY_SIZE], block: &[u8]) {
    let reference = Reference::new(key.into());
    let ours = Lioness::new(key);

    let mut expected = block.to_vec();
    reference.encrypt_block(&mut expected).unwrap();
    let mut actual = block.to_vec();
    ours.encrypt(&mut actual).unwrap();
    assert_eq!(actual, expected);

    let mut expected = block.to_vec();
    reference.decrypt_block(&mut expected).unwrap();
    let mut actual = block.to_vec();
    ours.decrypt(&mut actual).unwrap();
    assert_eq!(actual, expected);
}

#[test]
fn boundary_lengths_and_nym_payload_sizes() {
    let key: [u8; KEY_SIZE] = core::array::from_fn(|i| i as u8);
    for len in [BLOCK_SIZE_MIN, 34, 63, 64, 65, 2065, 38, 8209, 16401, 32785] {
        let block: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        check(&key, &block);
    }
    let cipher = Lioness::new(&key);
    assert!(cipher.encrypt(&mut [0u8; BLOCK_SIZE_MIN - 1]).is_err());
    assert!(Reference::new((&key).into())
        .encrypt_block(&mut [0u8; 32])
        .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_keys_and_blocks(
        key in proptest::collection::vec(any::<u8>(), KEY_SIZE),
        block in proptest::collection::vec(any::<u8>(), BLOCK_SIZE_MIN..4096),
    ) {
        let key: [u8; KEY_SIZE] = key.try_into().unwrap();
        check(&key, &block);
    }
}
