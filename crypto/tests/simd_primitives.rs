//! The multi-buffer / wide-vector primitives of `lethe_crypto::simd` against the reference
//! crates (`blake2`, `chacha20`, `hkdf`), on every path the CPU has, random inputs, odd
//! lengths and lane counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use hkdf::Hkdf;
use lethe_crypto::simd::{blake2b, chacha, hkdf as fast_hkdf, Level};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::Sha256;

const ALL_LEVELS: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

/// The levels this CPU runs; the others are named as skipped (a level the CPU lacks would
/// fall back to another and pass under a name it did not run).
fn levels() -> Vec<Level> {
    let (run, skipped): (Vec<Level>, Vec<Level>) =
        ALL_LEVELS.iter().partition(|level| level.is_supported());
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        for level in &skipped {
            eprintln!("SKIPPED: symmetric path {level:?} (not supported by this CPU)");
        }
        eprintln!("ran on symmetric paths: {run:?}");
    });
    run
}

fn random(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

fn reference_mac(key: &[u8; 64], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Blake2bMac<blake2::digest::consts::U32> as KeyInit>::new(key.into());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn check_blake(rng: &mut ChaCha20Rng, lens: &[usize]) {
    let keys: Vec<[u8; 64]> = lens
        .iter()
        .map(|_| random(rng, 64).try_into().unwrap())
        .collect();
    let msgs: Vec<Vec<u8>> = lens.iter().map(|&len| random(rng, len)).collect();
    let key_refs: Vec<&[u8; 64]> = keys.iter().collect();
    let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let expected: Vec<[u8; 32]> = keys
        .iter()
        .zip(&msgs)
        .map(|(key, msg)| reference_mac(key, msg))
        .collect();
    for level in levels() {
        let mut out = vec![[0u8; 32]; lens.len()];
        blake2b::keyed256_many_at(level, &key_refs, &msg_refs, &mut out);
        assert_eq!(out, expected, "{level:?} lens {lens:?}");
    }
}

#[test]
fn blake2b_lanes_match_the_blake2_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let lens = [
        0, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 384, 1000, 2033, 2048, 2049,
    ];
    for lanes in 1..=17 {
        for &len in &lens {
            check_blake(&mut rng, &vec![len; lanes]);
        }
        let random_len = (rng.next_u32() % 3000) as usize;
        check_blake(&mut rng, &vec![random_len; lanes]);
    }
    // Large Nym payloads' right halves.
    for len in [8209 - 32, 16401 - 32, 32785 - 32] {
        check_blake(&mut rng, &[len; 9]);
    }
}

#[test]
fn blake2b_unequal_lengths_and_short_outputs() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    check_blake(
        &mut rng,
        &[2033, 2033, 100, 2033, 2033, 2033, 2033, 2033, 7, 7],
    );
    check_blake(&mut rng, &[5, 6]);
    // Fewer output slots than lanes: only those are written.
    let key = [9u8; 64];
    let msg = [1u8; 300];
    let mut out = [[0u8; 32]; 3];
    blake2b::keyed256_many(&[&key; 8], &[&msg[..]; 8], &mut out);
    assert!(out.iter().all(|tag| *tag == reference_mac(&key, &msg)));
}

#[test]
fn chacha_matches_the_chacha20_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut lens = vec![
        0, 1, 63, 64, 65, 511, 512, 513, 1023, 1024, 1025, 2033, 2047, 2048, 2049, 4096, 5000,
        8177, 32753,
    ];
    for _ in 0..40 {
        lens.push((rng.next_u32() % 6000) as usize);
    }
    for len in lens {
        let key: [u8; 32] = random(&mut rng, 32).try_into().unwrap();
        let data = random(&mut rng, len);
        let mut expected = data.clone();
        ChaCha20::new(&key.into(), &[0u8; 12].into()).apply_keystream(&mut expected);
        for level in levels() {
            let mut actual = data.clone();
            chacha::xor_keystream_at(level, &key, &mut actual);
            assert_eq!(actual, expected, "{level:?} len {len}");
        }
    }
}

/// RFC 8439 A.1 test vectors #1 and #2: the all-zero key and nonce, blocks 0 and 1, repeated
/// for a length that runs every path's wide step (and the last block partial).
#[test]
fn chacha_rfc8439_keystream() {
    let block0 = hex::decode(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7\
         da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
    )
    .unwrap();
    let block1 = hex::decode(
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed\
         29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f",
    )
    .unwrap();
    let key = [0u8; 32];
    let mut reference = vec![0u8; 3000];
    ChaCha20::new(&key.into(), &[0u8; 12].into()).apply_keystream(&mut reference);
    assert_eq!(reference[..64], block0[..]);
    assert_eq!(reference[64..128], block1[..]);
    for len in [128, 600, 1100, 3000 - 13] {
        for level in levels() {
            let mut stream = vec![0u8; len];
            chacha::xor_keystream_at(level, &key, &mut stream);
            assert_eq!(stream[..64], block0[..], "{level:?} len {len}");
            assert_eq!(stream[64..128], block1[..], "{level:?} len {len}");
            assert_eq!(stream[..], reference[..len], "{level:?} len {len}");
        }
    }
}

#[test]
fn hkdf_matches_the_hkdf_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    const EMPTY_KEY: fast_hkdf::HmacKey = fast_hkdf::HmacKey::new_const(b"");
    for round in 0..300 {
        let ikm = random(&mut rng, [16, 32, 0, 55, 56, 64, 100][round % 7]);
        let info_len = match round % 5 {
            0 => 98,
            1 => 44,
            2 => fast_hkdf::INFO_MAX,
            _ => (rng.next_u32() as usize) % (fast_hkdf::INFO_MAX + 1),
        };
        let info = random(&mut rng, info_len);
        let okm_len = match round % 4 {
            0 => 288,
            1 => 192,
            _ => (rng.next_u32() as usize) % 400,
        };
        for (salt, key) in [(SALT_BYTES, &SALT), (&b""[..], &EMPTY_KEY)] {
            let mut expected = vec![0u8; okm_len];
            Hkdf::<Sha256>::new(Some(salt), &ikm)
                .expand(&info, &mut expected)
                .unwrap();
            let mut actual = vec![0u8; okm_len];
            assert!(fast_hkdf::hkdf(key, &ikm, &info, &mut actual));
            assert_eq!(
                actual,
                expected,
                "ikm {} info {info_len} okm {okm_len}",
                ikm.len()
            );
        }
    }
    // Salts longer than a block are hashed first, as HMAC specifies.
    for salt_len in [63, 64, 65, 100, 200] {
        let salt = random(&mut rng, salt_len);
        let key = fast_hkdf::HmacKey::new_const(&salt);
        let mut expected = [0u8; 77];
        Hkdf::<Sha256>::new(Some(&salt), b"ikm")
            .expand(b"info", &mut expected)
            .unwrap();
        let mut actual = [0u8; 77];
        assert!(fast_hkdf::hkdf(&key, b"ikm", b"info", &mut actual));
        assert_eq!(actual, expected, "salt of {salt_len} bytes");
    }
    let mut okm = [7u8; 32];
    assert!(!fast_hkdf::hkdf(&EMPTY_KEY, b"", &[0; 129], &mut okm));
    assert!(!fast_hkdf::hkdf(
        &EMPTY_KEY,
        b"",
        b"",
        &mut vec![0; 255 * 32 + 1]
    ));
    assert_eq!(okm, [7u8; 32]);
    let mut max = vec![0u8; 255 * 32];
    assert!(fast_hkdf::hkdf(&EMPTY_KEY, b"x", b"y", &mut max));
}

const SALT_BYTES: &[u8] = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-SALT";
const SALT: fast_hkdf::HmacKey = fast_hkdf::HmacKey::new_const(SALT_BYTES);

/// Random input keys for `lanes` lanes and what the `hkdf` crate derives from each with `info`.
fn hkdf_reference<const IKM: usize, const OKM: usize>(
    rng: &mut ChaCha20Rng,
    lanes: usize,
    info: &[u8],
) -> (Vec<[u8; IKM]>, Vec<[u8; OKM]>) {
    let ikms: Vec<[u8; IKM]> = (0..lanes)
        .map(|_| random(rng, IKM).try_into().unwrap())
        .collect();
    let expected = ikms
        .iter()
        .map(|ikm| {
            let mut okm = [0u8; OKM];
            Hkdf::<Sha256>::new(Some(SALT_BYTES), ikm)
                .expand(info, &mut okm)
                .unwrap();
            okm
        })
        .collect();
    (ikms, expected)
}

fn check_hkdf_many<const IKM: usize, const OKM: usize>(rng: &mut ChaCha20Rng, lanes: usize) {
    let info_len = (rng.next_u32() as usize) % (fast_hkdf::INFO_MAX + 1);
    let info = random(rng, info_len);
    for info in [&info[..], b"Dwste mou enan moxlo arketa makru kai ena upomoxlio gia na ton topothetisw kai tha kinisw thn gh."] {
        let (ikms, expected) = hkdf_reference::<IKM, OKM>(rng, lanes, info);
        for level in levels() {
            let mut okms = vec![[0u8; OKM]; lanes];
            assert!(fast_hkdf::hkdf_many_at(level, &SALT, info, &ikms, &mut okms));
            assert!(okms == expected, "{level:?} lanes {lanes} IKM {IKM} OKM {OKM}");
        }
    }
}

#[test]
fn hkdf_many_matches_the_hkdf_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for lanes in (0..=40).chain([64, 100]) {
        check_hkdf_many::<32, 288>(&mut rng, lanes);
        check_hkdf_many::<16, 192>(&mut rng, lanes);
    }
    for lanes in [1, 7, 16, 17] {
        check_hkdf_many::<0, 1>(&mut rng, lanes);
        check_hkdf_many::<55, 33>(&mut rng, lanes);
        check_hkdf_many::<56, 31>(&mut rng, lanes);
        check_hkdf_many::<64, 64>(&mut rng, lanes);
        check_hkdf_many::<3, 0>(&mut rng, lanes);
        check_hkdf_many::<20, 100>(&mut rng, lanes);
    }
}

fn check_hkdf_planned<const IKM: usize, const OKM: usize, const STEPS: usize>(
    rng: &mut ChaCha20Rng,
    lanes: usize,
) {
    let info_len = (rng.next_u32() as usize) % (fast_hkdf::INFO_MAX + 1);
    let random_info: &'static [u8] = Box::leak(random(rng, info_len).into_boxed_slice());
    // Edge lengths: every block count of the first and later steps' messages.
    let mut infos: Vec<&'static [u8]> = vec![random_info];
    for len in [0, 22, 23, 54, 55, 86, 87, 98, 118, 119, 127, 128] {
        infos.push(Box::leak(random(rng, len).into_boxed_slice()));
    }
    for info in infos {
        let plan = fast_hkdf::ExpandPlan::<STEPS>::new(info).unwrap();
        assert_eq!(plan.info(), info);
        let (ikms, expected) = hkdf_reference::<IKM, OKM>(rng, lanes, info);
        for level in levels() {
            let mut okms = vec![[0u8; OKM]; lanes];
            assert!(fast_hkdf::hkdf_many_planned_at(
                level, &SALT, &plan, &ikms, &mut okms
            ));
            assert!(
                okms == expected,
                "{level:?} lanes {lanes} IKM {IKM} OKM {OKM} info {}",
                info.len()
            );
        }
    }
}

#[test]
fn hkdf_many_planned_matches_the_hkdf_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for lanes in [0, 1, 5, 6, 15, 16, 17, 33, 64] {
        check_hkdf_planned::<32, 288, 9>(&mut rng, lanes);
        check_hkdf_planned::<16, 192, 6>(&mut rng, lanes);
        check_hkdf_planned::<55, 33, 2>(&mut rng, lanes);
        check_hkdf_planned::<20, 1, 1>(&mut rng, lanes);
        check_hkdf_planned::<0, 100, 4>(&mut rng, lanes);
    }
    // A plan whose step count does not fit the output, and infos too long for a plan.
    let plan = fast_hkdf::ExpandPlan::<3>::new(b"info").unwrap();
    let mut okms = [[7u8; 32]; 2];
    assert!(!fast_hkdf::hkdf_many_planned(
        &fast_hkdf::HmacKey::new_const(b""),
        &plan,
        &[[1u8; 32]; 2],
        &mut okms
    ));
    assert_eq!(okms, [[7u8; 32]; 2]);
    assert!(fast_hkdf::ExpandPlan::<3>::new(&[0; 129]).is_none());
    assert!(fast_hkdf::ExpandPlan::<0>::new(b"").is_none());
}

#[test]
fn hmac_many_matches_the_hmac_crate() {
    use hmac::{Hmac, Mac as _};
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let check = |rng: &mut ChaCha20Rng, key_lens: &[usize], msg_lens: &[usize]| {
        let keys: Vec<Vec<u8>> = key_lens.iter().map(|&len| random(rng, len)).collect();
        let msgs: Vec<Vec<u8>> = msg_lens.iter().map(|&len| random(rng, len)).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let expected: Vec<[u8; 32]> = keys
            .iter()
            .zip(&msgs)
            .map(|(key, msg)| {
                let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).unwrap();
                mac.update(msg);
                mac.finalize().into_bytes().into()
            })
            .collect();
        for level in levels() {
            let mut out = vec![[0u8; 32]; keys.len()];
            assert!(fast_hkdf::hmac_many_at(
                level, &key_refs, &msg_refs, &mut out
            ));
            assert_eq!(
                out, expected,
                "{level:?} keys {key_lens:?} msgs {msg_lens:?}"
            );
        }
    };
    for lanes in (1..=20).chain([33, 64]) {
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 300, 1000] {
            let key_len = [16, 0, 32, 64, 63, 1][lanes % 6];
            check(&mut rng, &vec![key_len; lanes], &vec![len; lanes]);
        }
        let key_lens: Vec<usize> = (0..lanes).map(|_| (rng.next_u32() % 65) as usize).collect();
        check(&mut rng, &key_lens, &vec![300; lanes]);
    }
    check(
        &mut rng,
        &[16; 17],
        &[
            300, 300, 300, 300, 300, 300, 300, 299, 300, 300, 300, 300, 300, 300, 300, 300, 1,
        ],
    );
    let mut out = [[7u8; 32]; 2];
    assert!(!fast_hkdf::hmac_many(
        &[&[0; 16], &[0; 65]],
        &[b"", b""],
        &mut out
    ));
    assert_eq!(out, [[7u8; 32]; 2]);
}

#[test]
fn wipe_zeroes_every_length_and_expanded_secrets() {
    use zeroize::Zeroize;
    for len in 0..300 {
        let mut bytes = vec![0xa5u8; len + 3];
        lethe_crypto::simd::wipe(&mut bytes[1..len + 1]);
        assert_eq!(bytes[0], 0xa5);
        assert!(bytes[1..len + 1].iter().all(|&b| b == 0), "len {len}");
        assert_eq!(bytes[len + 1..], [0xa5, 0xa5]);
    }
    let mut secret = lethe_crypto::sphinx::ExpandedSecret::from_bytes(&[7; 288]);
    secret.zeroize();
    assert_eq!(
        secret,
        lethe_crypto::sphinx::ExpandedSecret::from_bytes(&[0; 288])
    );
}
