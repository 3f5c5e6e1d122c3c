//! Untrusted and wrong input: typed errors, no panics, and the buffer left untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sphinx_common;

use lethe_crypto::sphinx::{
    self, constants::HEADER_SIZE, routing, Packet, SphinxError, Surb, SurbRecovery, Version,
};
use sphinx_common::{rng, Net};
use x25519_dalek::StaticSecret;

fn packet_for(net: &Net, rng: &mut rand_chacha::ChaCha20Rng) -> Vec<u8> {
    sphinx::create(b"payload", 2065, &net.spec(Version::CURRENT), None, rng).unwrap()
}

fn process_err(bytes: &mut [u8], secret: &StaticSecret) -> SphinxError {
    let before = bytes.to_vec();
    let mut packet = Packet::new_unchecked(&mut bytes[..]);
    let err = sphinx::process(&mut packet, secret).unwrap_err();
    assert_eq!(bytes, &before[..], "buffer changed on error");
    err
}

/// Rewrites hop 0's decrypted routing slot and re-MACs it, as a malicious sender could.
fn tamper_slot(bytes: &mut [u8], secret: &StaticSecret, edit: impl FnOnce(&mut [u8])) {
    let expanded =
        sphinx::derive_expanded_secret(&Packet::new_checked(&bytes[..]).unwrap(), secret).unwrap();
    let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
    let beta = packet.beta_mut();
    routing::xor_keystream(expanded.stream_key(), beta);
    edit(&mut beta[..60]);
    routing::xor_keystream(expanded.stream_key(), beta);
    let mac = routing::compute_mac(expanded.mac_key(), packet.beta());
    packet.mac_mut().copy_from_slice(&mac);
}

#[test]
fn wrong_mac_and_wrong_key() {
    let mut rng = rng(10);
    let net = Net::new(&mut rng, 3);
    let bytes = packet_for(&net, &mut rng);
    for index in [32, 47, 48, 200, 347] {
        let mut corrupted = bytes.clone();
        corrupted[index] ^= 0x01;
        assert_eq!(
            process_err(&mut corrupted, &net.secrets[0]),
            SphinxError::WrongMac
        );
    }
    let mut copy = bytes.clone();
    assert_eq!(
        process_err(&mut copy, &net.secrets[1]),
        SphinxError::WrongMac
    );
    let stranger = StaticSecret::random_from_rng(&mut rng);
    let mut packet = Packet::new_checked(&mut copy[..]).unwrap();
    assert_eq!(
        sphinx::process_with_keys(&mut packet, &stranger, Some(&net.secrets[2])).unwrap_err(),
        SphinxError::WrongMac
    );
    assert_eq!(
        sphinx::process_with_keys(&mut packet, &stranger, None).unwrap_err(),
        SphinxError::WrongMac
    );
}

#[test]
fn truncated_and_oversize() {
    let mut rng = rng(11);
    let net = Net::new(&mut rng, 1);
    let bytes = packet_for(&net, &mut rng);
    let min = sphinx::packet::PACKET_SIZE_MIN;
    for len in [0, 1, 47, HEADER_SIZE, min - 1] {
        assert_eq!(
            Packet::new_checked(&bytes[..len]).unwrap_err(),
            SphinxError::Truncated { len, min }
        );
        let mut short = bytes[..len].to_vec();
        assert!(matches!(
            process_err(&mut short, &net.secrets[0]),
            SphinxError::Truncated { .. }
        ));
    }
    let mut long = vec![0u8; sphinx::constants::PACKET_SIZE_MAX + 1];
    assert!(matches!(
        process_err(&mut long, &net.secrets[0]),
        SphinxError::Oversize { .. }
    ));
    assert!(matches!(
        sphinx::create(b"", 0, &net.spec(Version::CURRENT), None, &mut rng),
        Err(SphinxError::Truncated { .. })
    ));
}

#[test]
fn unknown_version_and_bad_flag() {
    let mut rng = rng(12);
    let net = Net::new(&mut rng, 2);
    let secret = &net.secrets[0];
    type Edit = fn(&mut [u8]);
    let cases: [(Edit, SphinxError); 4] = [
        (
            |slot| slot[2..4].copy_from_slice(&261u16.to_be_bytes()),
            SphinxError::UnknownVersion(261),
        ),
        (|slot| slot[1] = 1, SphinxError::UnknownVersion(0x01_01_04)),
        (|slot| slot[0] = 3, SphinxError::BadFlag(3)),
        (|slot| slot[0] = 0, SphinxError::BadFlag(0)),
    ];
    for (edit, expected) in cases {
        let mut bytes = packet_for(&net, &mut rng);
        tamper_slot(&mut bytes, secret, edit);
        assert_eq!(process_err(&mut bytes, secret), expected);
    }
    assert_eq!(Version::new(0), Err(SphinxError::UnknownVersion(0)));
}

#[test]
fn invalid_curve_points() {
    let mut rng = rng(13);
    let net = Net::new(&mut rng, 1);
    let bytes = packet_for(&net, &mut rng);
    let order_8 = hex_point("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
    let mut one = [0u8; 32];
    one[0] = 1;
    for alpha in [[0u8; 32], one, order_8] {
        let mut bad = bytes.clone();
        bad[..32].copy_from_slice(&alpha);
        assert_eq!(
            process_err(&mut bad, &net.secrets[0]),
            SphinxError::InvalidPoint
        );
    }
    assert_eq!(
        sphinx::check_dh_output(&[0u8; 32]),
        Err(SphinxError::InvalidPoint)
    );
    assert!(sphinx::check_dh_output(&one).is_ok());
    // Any single nonzero bit, in any byte, makes the output acceptable.
    for byte in 0..32 {
        for bit in 0..8 {
            let mut shared = [0u8; 32];
            shared[byte] = 1 << bit;
            assert!(
                sphinx::check_dh_output(&shared).is_ok(),
                "byte {byte} bit {bit}"
            );
        }
    }
}

fn hex_point(hex: &str) -> [u8; 32] {
    hex::decode(hex).unwrap().try_into().unwrap()
}

#[test]
fn payload_padding() {
    assert_eq!(
        sphinx::recover_plaintext(&[0u8; 16]),
        Err(SphinxError::BadPayloadPadding)
    );
    assert_eq!(
        sphinx::recover_plaintext(&[0u8; 40]),
        Err(SphinxError::BadPayloadPadding)
    );
    let mut framed = [0u8; 40];
    framed[20] = 1;
    assert_eq!(sphinx::recover_plaintext(&framed).unwrap(), &[0u8; 4]);
    framed[0] = 9;
    assert_eq!(
        sphinx::recover_plaintext(&framed),
        Err(SphinxError::BadPayloadPadding)
    );
    framed[0] = 0;
    framed[30] = 2;
    assert_eq!(
        sphinx::recover_plaintext(&framed),
        Err(SphinxError::BadPayloadPadding)
    );
    // a wrong key decrypts to garbage, which the padding check rejects
    let mut rng = rng(14);
    let net = Net::new(&mut rng, 1);
    let mut bytes = packet_for(&net, &mut rng);
    let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
    sphinx::process(&mut packet, &net.secrets[0]).unwrap();
    bytes[HEADER_SIZE] ^= 1;
    assert_eq!(
        sphinx::recover_plaintext(&bytes[HEADER_SIZE..]),
        Err(SphinxError::BadPayloadPadding)
    );
}

#[test]
fn creation_arguments() {
    let mut rng = rng(15);
    let net = Net::new(&mut rng, 5);
    let mut spec = net.spec(Version::CURRENT);
    spec.route = &net.hops[..0];
    spec.delays_ns = &net.delays_ns[..0];
    assert!(matches!(
        sphinx::create(b"", 2065, &spec, None, &mut rng),
        Err(SphinxError::InvalidRoute { .. })
    ));
    spec.route = &net.hops[..3];
    spec.delays_ns = &net.delays_ns[..2];
    assert!(matches!(
        sphinx::create(b"", 2065, &spec, None, &mut rng),
        Err(SphinxError::InvalidRoute { .. })
    ));
    let six = Net::new(&mut rng, 6);
    assert!(matches!(
        sphinx::create(b"", 2065, &six.spec(Version::CURRENT), None, &mut rng),
        Err(SphinxError::InvalidRoute { hops: 6, delays: 6 })
    ));
    assert_eq!(
        sphinx::create(&[7u8; 50], 66, &net.spec(Version::CURRENT), None, &mut rng).unwrap_err(),
        SphinxError::MessageTooLong { len: 50, max: 49 }
    );
    assert!(sphinx::create(&[7u8; 49], 66, &net.spec(Version::CURRENT), None, &mut rng).is_ok());
}

#[test]
fn surb_bytes_and_kinds() {
    let mut rng = rng(16);
    let mut net = Net::new(&mut rng, 3);
    let (surb, _) =
        sphinx::build_surb(&net.spec(Version::PAYLOAD_KEY_SEEDS), None, &mut rng).unwrap();
    let bytes = surb.to_bytes();
    assert!(Surb::from_bytes(&bytes[..380]).is_err());
    assert!(Surb::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut six_seeds = bytes.clone();
    six_seeds.extend_from_slice(&[0u8; 48]);
    assert!(Surb::from_bytes(&six_seeds).is_err());
    let mut full = bytes[..380].to_vec();
    full.extend_from_slice(&[0u8; 192 * 6]);
    assert!(Surb::from_bytes(&full).is_err());
    full.truncate(380 + 192 * 2 + 5);
    assert!(Surb::from_bytes(&full).is_err());
    assert!(SurbRecovery::from_bytes(&[0u8; 16]).is_err());
    assert!(SurbRecovery::from_bytes(&[0u8; 16 + 17]).is_err());

    net.destination.identifier = [0; 16];
    assert!(matches!(
        sphinx::build_surb(&net.spec(Version::SINGLE_SEED_SURB), None, &mut rng),
        Err(SphinxError::BadSurb(_))
    ));
    assert!(matches!(
        sphinx::build_surb(&net.spec(Version::new(257).unwrap()), None, &mut rng),
        Err(SphinxError::BadSurb(_))
    ));
    // a recovery record for another SURB fails the padding check instead of returning junk
    net.destination.identifier[0] = 1;
    let (surb, _) =
        sphinx::build_surb(&net.spec(Version::SINGLE_SEED_SURB), None, &mut rng).unwrap();
    let (_, other) =
        sphinx::build_surb(&net.spec(Version::SINGLE_SEED_SURB), None, &mut rng).unwrap();
    let (mut packet, _) = surb.use_surb(b"reply", 2065).unwrap();
    for secret in &net.secrets {
        sphinx::process(&mut Packet::new_checked(&mut packet[..]).unwrap(), secret).unwrap();
    }
    let mut sealed = packet[HEADER_SIZE..].to_vec();
    assert_eq!(
        other.unwrap().recover_plaintext(&mut sealed),
        Err(SphinxError::BadPayloadPadding)
    );
}

/// The staged API with externally supplied X25519 results equals `process`.
#[test]
fn staged_processing_matches_serial() {
    let mut rng = rng(17);
    let net = Net::new(&mut rng, 4);
    let mut serial = packet_for(&net, &mut rng);
    let mut staged = serial.clone();
    for secret in &net.secrets {
        let expected =
            sphinx::process(&mut Packet::new_checked(&mut serial[..]).unwrap(), secret).unwrap();
        let mut packet = Packet::new_checked(&mut staged[..]).unwrap();
        let alpha = *sphinx::dh_input(&packet);
        let shared = x25519_dalek::x25519(secret.to_bytes(), alpha);
        sphinx::check_dh_output(&shared).unwrap();
        let expanded = sphinx::expand(&shared);
        sphinx::verify_mac(&packet, &expanded).unwrap();
        let blinded = match sphinx::hop_kind(&packet, &expanded).unwrap() {
            sphinx::HopKind::Forward => {
                x25519_dalek::x25519(*sphinx::blinding_input(&expanded), alpha)
            }
            sphinx::HopKind::Final => [0u8; 32],
        };
        let processed = sphinx::unwrap_in_place(&mut packet, &expanded, &blinded).unwrap();
        assert_eq!(processed, expected);
        assert_eq!(staged, serial);
    }
}
