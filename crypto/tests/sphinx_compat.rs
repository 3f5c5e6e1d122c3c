//! Byte compatibility with `sphinx-packet` 0.8, both directions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sphinx_common;

use lethe_crypto::sphinx::{self, constants::HEADER_SIZE, Packet, Version};
use proptest::prelude::*;
use rand_core::Rng;
use sphinx_common::{final_padding, rng, walk, Net, Replay, SIZES, VERSIONS};
use sphinx_packet::payload::Payload;
use sphinx_packet::{SURBMaterial, SphinxPacket, SurbReplyRecovery, SURB};
use x25519_dalek::StaticSecret;

fn message(rng: &mut impl Rng, size: usize) -> Vec<u8> {
    let capacity = size - HEADER_SIZE - sphinx::constants::PAYLOAD_OVERHEAD_SIZE;
    let len = (rng.next_u32() as usize) % (capacity + 1);
    let mut msg = vec![0u8; len];
    rng.fill_bytes(&mut msg);
    msg
}

/// Reference packets (every version, 1-5 hops, every Nym size) processed by Lethe give the
/// same next hop, delay, tag and bytes at every hop; and Lethe, given the same initial secret
/// and the reference's final-hop padding, builds the identical packet.
#[test]
fn reference_packets_process_identically_and_rebuild_bit_for_bit() {
    let mut rng = rng(1);
    for version in VERSIONS {
        for hops in 1..=5 {
            for size in SIZES {
                let net = Net::new(&mut rng, hops);
                let msg = message(&mut rng, size);
                let x = StaticSecret::random_from_rng(&mut rng);
                let bytes = net.ref_packet(&x, version, size, &msg);
                assert_eq!(bytes.len(), size);

                let walked = walk(&net, &bytes, version);
                assert_eq!(
                    sphinx::recover_plaintext(&walked.final_buffer[HEADER_SIZE..]).unwrap(),
                    &msg[..]
                );
                assert_eq!(walked.ref_plaintext(), msg);

                let mut padding = Replay::new(final_padding(&walked.final_buffer, hops));
                let rebuilt = sphinx::create(
                    &msg,
                    size - HEADER_SIZE,
                    &net.spec(version),
                    Some(&x),
                    &mut padding,
                )
                .unwrap();
                assert!(padding.exhausted());
                assert_eq!(rebuilt, bytes, "v{} {hops} hops {size} B", version.value());
            }
        }
    }
}

/// Lethe-built packets go through `sphinx-packet` (and Lethe) with the same outcome.
#[test]
fn lethe_packets_are_processed_by_the_reference() {
    let mut rng = rng(2);
    for version in VERSIONS {
        for hops in 1..=5 {
            for size in SIZES {
                let net = Net::new(&mut rng, hops);
                let msg = message(&mut rng, size);
                let bytes =
                    sphinx::create(&msg, size - HEADER_SIZE, &net.spec(version), None, &mut rng)
                        .unwrap();
                let walked = walk(&net, &bytes, version);
                assert_eq!(walked.destination, net.destination.address);
                assert_eq!(walked.identifier, net.destination.identifier);
                let ref_plain = Payload::from_bytes(&walked.ref_payload).unwrap();
                assert_eq!(ref_plain.recover_plaintext().unwrap(), msg);
            }
        }
    }
}

/// The legacy 1/257 versions take the full-payload-key path like the reference does.
#[test]
fn legacy_versions_process_like_the_reference() {
    let mut rng = rng(3);
    for value in [1u16, 257] {
        let version = Version::new(value).unwrap();
        let net = Net::new(&mut rng, 3);
        let x = StaticSecret::random_from_rng(&mut rng);
        let bytes = net.ref_packet(&x, version, 2413, b"legacy");
        let walked = walk(&net, &bytes, version);
        assert_eq!(
            sphinx::recover_plaintext(&walked.final_buffer[HEADER_SIZE..]).unwrap(),
            b"legacy"
        );
    }
}

fn reply(net: &Net, surb_packet: &[u8], version: Version) -> sphinx_common::Walk {
    walk(net, surb_packet, version)
}

/// v259 SURBs both ways: reference-built used by Lethe and Lethe-built used by the reference.
#[test]
fn v259_surbs_interoperate() {
    let mut rng = rng(4);
    let version = Version::PAYLOAD_KEY_SEEDS;
    for hops in 1..=5 {
        for size in SIZES {
            let net = Net::new(&mut rng, hops);
            let msg = message(&mut rng, size);
            let x = StaticSecret::random_from_rng(&mut rng);
            let material = SURBMaterial::new(
                net.nodes(),
                net.delays(),
                net.ref_destination(),
                sphinx_packet::version::Version::new(259),
            );
            let ref_surb = SURB::new(x.clone(), material).unwrap();
            let surb_bytes = ref_surb.to_bytes();
            assert_eq!(surb_bytes.len(), 348 + 32 + 16 * hops);

            // reference SURB, used by Lethe
            let surb = sphinx::Surb::from_bytes(&surb_bytes).unwrap();
            assert_eq!(surb.to_bytes(), surb_bytes);
            let (packet, first_hop) = surb.use_surb(&msg, size - HEADER_SIZE).unwrap();
            let (ref_packet, ref_first) = SURB::from_bytes(&surb_bytes)
                .unwrap()
                .use_surb(&msg, size - HEADER_SIZE)
                .unwrap();
            assert_eq!(packet, ref_packet.to_bytes());
            assert_eq!(first_hop, ref_first.to_bytes());
            let walked = reply(&net, &packet, version);
            assert_eq!(
                sphinx::recover_plaintext(&walked.final_buffer[HEADER_SIZE..]).unwrap(),
                &msg[..]
            );

            // Lethe SURB with the same secret and padding is the same SURB
            let mut padding = Replay::new(final_padding(&walked.final_buffer, hops));
            let (lethe_surb, recovery) =
                sphinx::build_surb(&net.spec(version), Some(&x), &mut padding).unwrap();
            assert!(recovery.is_none());
            assert_eq!(lethe_surb.to_bytes(), surb_bytes);

            // fresh Lethe SURB, used by the reference
            let (lethe_surb, _) = sphinx::build_surb(&net.spec(version), None, &mut rng).unwrap();
            let (ref_packet, _) = SURB::from_bytes(&lethe_surb.to_bytes())
                .unwrap()
                .use_surb(&msg, size - HEADER_SIZE)
                .unwrap();
            let walked = reply(&net, &ref_packet.to_bytes(), version);
            assert_eq!(walked.ref_plaintext(), msg);
        }
    }
}

/// v260 recoverable SURBs: the reply sender adds one layer; only the creator's recovery data
/// opens the payload. Both directions, recovery records exchanged as bytes.
#[test]
fn v260_recoverable_surbs_interoperate() {
    let mut rng = rng(5);
    let version = Version::SINGLE_SEED_SURB;
    for hops in 1..=5 {
        for size in SIZES {
            let mut net = Net::new(&mut rng, hops);
            net.destination.identifier[0] |= 1;
            let msg = message(&mut rng, size);
            let x = StaticSecret::random_from_rng(&mut rng);
            let material = SURBMaterial::new(
                net.nodes(),
                net.delays(),
                net.ref_destination(),
                sphinx_packet::version::Version::new(260),
            );
            let (ref_surb, ref_recovery) = SURB::new_recoverable(x.clone(), material).unwrap();
            let surb_bytes = ref_surb.to_bytes();
            assert_eq!(surb_bytes.len(), 348 + 32 + 16);

            // reference SURB used by Lethe; Lethe recovers with the reference's record
            let surb = sphinx::Surb::from_bytes(&surb_bytes).unwrap();
            let (packet, _) = surb.use_surb(&msg, size - HEADER_SIZE).unwrap();
            let walked = reply(&net, &packet, version);
            let recovery = sphinx::SurbRecovery::from_bytes(&ref_recovery.to_bytes()).unwrap();
            assert_eq!(recovery.identifier(), &walked.identifier);
            let mut sealed = walked.final_buffer[HEADER_SIZE..].to_vec();
            assert_eq!(recovery.recover_plaintext(&mut sealed).unwrap(), &msg[..]);
            let ref_plain = ref_recovery
                .recover_plaintext(Payload::from_bytes(&walked.ref_payload).unwrap())
                .unwrap();
            assert_eq!(ref_plain, msg);

            // same secret and padding: Lethe builds the identical SURB and recovery record
            let mut padding = Replay::new(final_padding(&walked.final_buffer, hops));
            let (lethe_surb, lethe_recovery) =
                sphinx::build_surb(&net.spec(version), Some(&x), &mut padding).unwrap();
            assert_eq!(lethe_surb.to_bytes(), surb_bytes);
            assert_eq!(lethe_recovery.unwrap().to_bytes(), ref_recovery.to_bytes());

            // fresh Lethe SURB used by the reference; the reference recovers with our record
            let (lethe_surb, lethe_recovery) =
                sphinx::build_surb(&net.spec(version), None, &mut rng).unwrap();
            let (ref_packet, _) = SURB::from_bytes(&lethe_surb.to_bytes())
                .unwrap()
                .use_surb(&msg, size - HEADER_SIZE)
                .unwrap();
            let walked = reply(&net, &ref_packet.to_bytes(), version);
            let ref_recovery =
                SurbReplyRecovery::from_bytes(&lethe_recovery.unwrap().to_bytes()).unwrap();
            let plain = ref_recovery
                .recover_plaintext(Payload::from_bytes(&walked.ref_payload).unwrap())
                .unwrap();
            assert_eq!(plain, msg);
        }
    }
}

/// v258 SURBs carry full 192-byte keys (0.6 semantics). `sphinx-packet` 0.8 cannot build or
/// parse them, so the fixture is assembled from its parts: a reference v258 header and the
/// reference's own key schedule (`KeyMaterial::derive`).
#[test]
fn v258_surbs_with_full_keys() {
    let mut rng = rng(6);
    let version = Version::EXPLICIT_PAYLOAD_KEYS;
    for hops in 1..=5 {
        let size = SIZES[(hops - 1) % SIZES.len()];
        let net = Net::new(&mut rng, hops);
        let msg = message(&mut rng, size);
        let x = StaticSecret::random_from_rng(&mut rng);
        let header = net.ref_packet(&x, version, 2413, b"")[..HEADER_SIZE].to_vec();
        let material = sphinx_packet::header::keys::KeyMaterial::derive(&net.nodes(), &x);
        let mut fixture = header.clone();
        fixture.extend_from_slice(&net.hops[0].address);
        for secret in &material.expanded_shared_secrets {
            fixture.extend_from_slice(secret.legacy_payload_key());
        }
        assert_eq!(fixture.len(), 348 + 32 + 192 * hops);

        let surb = sphinx::Surb::from_bytes(&fixture).unwrap();
        assert_eq!(surb.keys().count(), hops);
        assert_eq!(surb.to_bytes(), fixture);
        let (packet, first_hop) = surb.use_surb(&msg, size - HEADER_SIZE).unwrap();
        assert_eq!(first_hop, net.hops[0].address);
        let walked = reply(&net, &packet, version);
        assert_eq!(walked.ref_plaintext(), msg);

        // Lethe's own v258 SURB (same secret, same padding) is the fixture
        let mut padding = Replay::new(final_padding(&walked.final_buffer, hops));
        let (lethe_surb, recovery) =
            sphinx::build_surb(&net.spec(version), Some(&x), &mut padding).unwrap();
        assert!(recovery.is_none());
        assert_eq!(lethe_surb.to_bytes(), fixture);
    }
}

/// Primary/secondary keys: a packet for the secondary key is found after the primary fails.
#[test]
fn secondary_key_is_tried_after_primary() {
    let mut rng = rng(7);
    let net = Net::new(&mut rng, 2);
    let other = StaticSecret::random_from_rng(&mut rng);
    let mut bytes =
        sphinx::create(b"hi", 2065, &net.spec(Version::CURRENT), None, &mut rng).unwrap();
    let expected = {
        let mut copy = bytes.clone();
        sphinx::process(
            &mut Packet::new_checked(&mut copy[..]).unwrap(),
            &net.secrets[0],
        )
        .unwrap()
    };
    let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
    let (processed, choice) =
        sphinx::process_with_keys(&mut packet, &other, Some(&net.secrets[0])).unwrap();
    assert_eq!(choice, sphinx::KeyChoice::Secondary);
    assert_eq!(processed, expected);
}

fn arbitrary_case() -> impl Strategy<Value = (u64, usize, usize, usize)> {
    (any::<u64>(), 1usize..=5, 0usize..3, 0usize..2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random keys, routes, delays and payloads (regular and ack sizes), both directions.
    #[test]
    fn random_routes_round_trip((seed, hops, version, size) in arbitrary_case()) {
        let mut rng = rng(seed);
        let version = VERSIONS[version];
        let size = [2413, 386][size];
        let net = Net::new(&mut rng, hops);
        let msg = message(&mut rng, size);
        let x = StaticSecret::random_from_rng(&mut rng);
        let reference = net.ref_packet(&x, version, size, &msg);
        let walked = walk(&net, &reference, version);
        prop_assert_eq!(sphinx::recover_plaintext(&walked.final_buffer[HEADER_SIZE..]).unwrap(), &msg[..]);
        let lethe = sphinx::create(&msg, size - HEADER_SIZE, &net.spec(version), None, &mut rng).unwrap();
        let walked = walk(&net, &lethe, version);
        let plain = walked.ref_plaintext();
        prop_assert_eq!(plain, msg);
        // the reference parses what Lethe built
        prop_assert!(SphinxPacket::from_bytes(&lethe).is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// Extended sizes, fewer cases.
    #[test]
    fn random_routes_round_trip_extended(seed in any::<u64>(), hops in 1usize..=5, size in 0usize..3) {
        let mut rng = rng(seed);
        let size = [8557, 16749, 33133][size];
        let net = Net::new(&mut rng, hops);
        let msg = message(&mut rng, size);
        let lethe = sphinx::create(&msg, size - HEADER_SIZE, &net.spec(Version::CURRENT), None, &mut rng).unwrap();
        let walked = walk(&net, &lethe, Version::CURRENT);
        prop_assert_eq!(sphinx::recover_plaintext(&walked.final_buffer[HEADER_SIZE..]).unwrap(), &msg[..]);
    }
}
