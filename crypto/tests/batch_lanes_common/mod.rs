//! The lane-filling batch checks, shared by the test binaries that run them on each SIMD
//! level (`LETHE_SIMD` is read once per process).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::counting_alloc::allocations;
use crate::sphinx_common::{rng, Net, VERSIONS};

use lethe_crypto::sphinx::{
    self, constants::HEADER_SIZE, constants::PACKET_SIZE_ACK, constants::PACKET_SIZE_REGULAR,
    BatchProcessor, NodeSecrets, Packet, ProcessResult,
};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};

/// What `sphinx-packet` makes of `bytes` at a node with `secret`: the next packet's bytes or
/// the final payload written over Lethe's layout (header left as Lethe has it).
fn reference(bytes: &[u8], secret: &x25519_dalek::StaticSecret, lethe: &[u8]) -> Vec<u8> {
    let processed = SphinxPacket::from_bytes(bytes)
        .unwrap()
        .process(secret)
        .unwrap();
    match processed.data {
        ProcessedPacketData::ForwardHop {
            next_hop_packet, ..
        } => next_hop_packet.to_bytes(),
        ProcessedPacketData::FinalHop { payload, .. } => {
            let mut out = lethe[..HEADER_SIZE].to_vec();
            out.extend_from_slice(payload.as_bytes());
            out
        }
    }
}

fn serial(bytes: &[u8], secret: &x25519_dalek::StaticSecret) -> (ProcessResult, Vec<u8>) {
    let mut bytes = bytes.to_vec();
    let mut packet = Packet::new_unchecked(&mut bytes[..]);
    let outcome = sphinx::process_with_keys(&mut packet, secret, None);
    (outcome, bytes)
}

pub fn matches_the_reference_at_every_hop() {
    let mut rng = rng(300);
    let net = Net::new(&mut rng, 4);
    for (count, capacity) in [
        (1, 64),
        (2, 64),
        (7, 64),
        (9, 4),
        (17, 64),
        (23, 16),
        (64, 64),
    ] {
        let mut packets: Vec<Vec<u8>> = (0..count)
            .map(|index| {
                // Runs of regular packets, a few ack-sized ones, all versions.
                let size = if index % 11 == 5 {
                    PACKET_SIZE_ACK
                } else {
                    PACKET_SIZE_REGULAR
                };
                let version = VERSIONS[(index / 3) % VERSIONS.len()];
                sphinx::create(
                    b"lanes",
                    size - HEADER_SIZE,
                    &net.spec(version),
                    None,
                    &mut rng,
                )
                .unwrap()
            })
            .collect();
        let mut processor = BatchProcessor::new(capacity);
        for (hop, secret) in net.secrets.iter().enumerate() {
            // Spoil every 7th packet's MAC at this hop: it must fail alone.
            let spoiled = |index: usize| (index + hop) % 7 == 3;
            for (index, packet) in packets.iter_mut().enumerate() {
                if spoiled(index) {
                    packet[40] ^= 0x10;
                }
            }
            let expected: Vec<(ProcessResult, Vec<u8>)> =
                packets.iter().map(|bytes| serial(bytes, secret)).collect();
            let mut buffers = packets.clone();
            let keys = NodeSecrets {
                primary: secret,
                secondary: None,
            };
            let mut outcomes = Vec::new();
            processor.process(&mut buffers, keys, |index, outcome| {
                outcomes.push((index, outcome))
            });
            assert_eq!(outcomes.len(), count);
            for (index, (got_index, got)) in outcomes.into_iter().enumerate() {
                assert_eq!(got_index, index);
                let (want, want_bytes) = &expected[index];
                assert_eq!(&got, want, "count {count} hop {hop} packet {index}");
                assert_eq!(
                    &buffers[index], want_bytes,
                    "bytes: count {count} hop {hop}"
                );
                if spoiled(index) {
                    assert!(got.is_err());
                    assert_eq!(buffers[index], packets[index], "failed packet changed");
                } else {
                    assert!(got.is_ok(), "count {count} hop {hop} packet {index}");
                    let want = reference(&packets[index], secret, &buffers[index]);
                    assert_eq!(buffers[index], want, "vs sphinx-packet: hop {hop} #{index}");
                }
            }
            // Continue the route with the processed packets (spoiled ones repaired and
            // processed serially so every packet reaches the end).
            for (index, packet) in packets.iter_mut().enumerate() {
                if spoiled(index) {
                    packet[40] ^= 0x10;
                    *packet = serial(packet, secret).1;
                } else {
                    *packet = buffers[index].clone();
                }
            }
        }
        for packet in &packets {
            let message = sphinx::recover_plaintext(&packet[HEADER_SIZE..]).unwrap();
            assert_eq!(message, b"lanes");
        }
    }
}

pub fn does_not_allocate() {
    let mut rng = rng(301);
    let net = Net::new(&mut rng, 2);
    let spec = net.spec(sphinx::Version::CURRENT);
    let mut buffers: Vec<Vec<u8>> = (0..64)
        .map(|_| sphinx::create(b"x", 2065, &spec, None, &mut rng).unwrap())
        .collect();
    let mut processor = BatchProcessor::new(64);
    let keys = NodeSecrets {
        primary: &net.secrets[0],
        secondary: None,
    };
    let mut ok = 0;
    let before = allocations();
    processor.process(&mut buffers, keys, |_, o| ok += usize::from(o.is_ok()));
    assert_eq!(allocations(), before, "batch processing allocated");
    assert_eq!(ok, 64);
}
