//! Fixed regression vectors: packets built by `sphinx-packet` 0.8 from a fixed seed, with the
//! SHA-256 of the buffer and the replay tag after every hop (computed by the reference when
//! the vectors were generated). Regenerate with `LETHE_REGEN_VECTORS=1` (the reference's
//! final-hop padding comes from its thread RNG, so new files differ; the check does not).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sphinx_common;

use std::fmt::Write as _;
use std::path::PathBuf;

use lethe_crypto::sphinx::{self, Packet, Version};
use sha2::{Digest, Sha256};
use sphinx_common::{rng, Net};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::StaticSecret;

const CASES: [(&str, u16, usize, usize); 3] = [
    ("v258_4hops_regular", 258, 4, 2413),
    ("v259_3hops_ack", 259, 3, 386),
    ("v260_5hops_regular", 260, 5, 2413),
];

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("sphinx_{name}.txt"))
}

fn generate(seed: u64, version: u16, hops: usize, size: usize) -> String {
    let mut rng = rng(seed);
    let net = Net::new(&mut rng, hops);
    let x = StaticSecret::random_from_rng(&mut rng);
    let version = Version::new(version).unwrap();
    let mut bytes = net.ref_packet(&x, version, size, b"lethe vector");
    let mut out = String::new();
    for secret in &net.secrets {
        writeln!(out, "secret {}", hex::encode(secret.to_bytes())).unwrap();
    }
    writeln!(out, "packet {}", hex::encode(&bytes)).unwrap();
    for secret in &net.secrets {
        let packet = SphinxPacket::from_bytes(&bytes).unwrap();
        let tag = *packet
            .header
            .compute_expanded_shared_secret(secret)
            .replay_tag();
        bytes = match packet.process(secret).unwrap().data {
            ProcessedPacketData::ForwardHop {
                next_hop_packet, ..
            } => next_hop_packet.to_bytes(),
            ProcessedPacketData::FinalHop { payload, .. } => payload.as_bytes().to_vec(),
        };
        writeln!(
            out,
            "hop {} {}",
            hex::encode(Sha256::digest(&bytes)),
            hex::encode(tag)
        )
        .unwrap();
    }
    out
}

#[test]
fn regression_vectors() {
    let regenerate = std::env::var_os("LETHE_REGEN_VECTORS").is_some();
    for (seed, (name, version, hops, size)) in CASES.into_iter().enumerate() {
        if regenerate {
            std::fs::write(path(name), generate(seed as u64, version, hops, size)).unwrap();
        }
        let text = std::fs::read_to_string(path(name)).unwrap();
        let mut secrets = Vec::new();
        let mut buffer = Vec::new();
        let mut hop = 0;
        for line in text.lines() {
            let mut fields = line.split(' ');
            match fields.next() {
                Some("secret") => {
                    let bytes: [u8; 32] = hex::decode(fields.next().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap();
                    secrets.push(StaticSecret::from(bytes));
                }
                Some("packet") => buffer = hex::decode(fields.next().unwrap()).unwrap(),
                Some("hop") => {
                    let processed = sphinx::process(
                        &mut Packet::new_checked(&mut buffer[..]).unwrap(),
                        &secrets[hop],
                    )
                    .unwrap();
                    assert_eq!(processed.version.value(), version);
                    let observed = match processed.hop {
                        sphinx::Hop::Forward { .. } => Sha256::digest(&buffer),
                        sphinx::Hop::Final { .. } => {
                            Sha256::digest(&buffer[sphinx::constants::HEADER_SIZE..])
                        }
                    };
                    assert_eq!(
                        hex::encode(observed),
                        fields.next().unwrap(),
                        "{name} hop {hop}"
                    );
                    assert_eq!(hex::encode(processed.replay_tag), fields.next().unwrap());
                    hop += 1;
                }
                _ => panic!("bad vector line in {name}"),
            }
        }
        assert_eq!(hop, hops, "{name}: every hop checked");
        assert_eq!(buffer.len(), size);
    }
}
