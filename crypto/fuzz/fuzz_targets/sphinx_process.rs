//! Sphinx processing on untrusted bytes, two ways:
//! - mode 0: the input is the packet (header ‖ payload), processed with a fixed node key;
//! - mode 1: a valid packet is built from fuzzer-chosen route length, version, size, delays and
//!   message, then fuzzer-chosen bytes are XORed into it before every hop is processed. Without
//!   a mutation the message must come out intact; with one, processing may fail but must not
//!   panic, and a failed hop must leave the buffer unchanged.
#![no_main]

use lethe_crypto::sphinx::{self, Destination, Hop, Packet, PacketSpec, RouteHop, Version};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use x25519_dalek::{PublicKey, StaticSecret};

const SIZES: [usize; 3] = [386, 2413, 8557];
const VERSIONS: [u16; 4] = [258, 259, 260, 257];

fn node_key(i: u8) -> StaticSecret {
    StaticSecret::from([i.wrapping_mul(37).wrapping_add(1); 32])
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let mut buf = rest.to_vec();
        if let Ok(mut packet) = Packet::new_checked(&mut buf[..]) {
            let before = packet.as_bytes().to_vec();
            if sphinx::process(&mut packet, &node_key(0)).is_err() {
                assert_eq!(packet.as_bytes(), &before[..]);
            }
        }
        return;
    }
    if rest.len() < 4 {
        return;
    }
    let hops = 1 + usize::from(rest[0]) % 5;
    let Ok(version) = Version::new(VERSIONS[usize::from(rest[1]) % VERSIONS.len()]) else { return };
    let size = SIZES[usize::from(rest[2]) % SIZES.len()];
    let mutate = rest[3] & 1 == 1;
    let body = &rest[4..];
    let message_len = body.len().min(size - 348 - 17);
    let message = &body[..message_len];

    let keys: Vec<StaticSecret> = (0..hops as u8).map(node_key).collect();
    let route: Vec<RouteHop> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| RouteHop { address: [i as u8 + 1; 32], public_key: PublicKey::from(k).to_bytes() })
        .collect();
    let delays: Vec<u64> = (0..hops as u64).map(|i| i * 1_000_003).collect();
    let destination = Destination { address: [0xdd; 32], identifier: [0x11; 16] };
    let spec = PacketSpec { route: &route, delays_ns: &delays, destination: &destination, version };
    let mut rng = ChaCha20Rng::from_seed([rest[0]; 32]);
    let Ok(mut buf) = sphinx::create(message, size - 348, &spec, None, &mut rng) else {
        return;
    };
    if mutate {
        for (i, b) in body.iter().enumerate().take(64) {
            let at = (usize::from(*b) * 131 + i * 977) % buf.len();
            buf[at] ^= body[(i + 1) % body.len()] | 1;
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let Ok(mut packet) = Packet::new_checked(&mut buf[..]) else { unreachable!() };
        let before = packet.as_bytes().to_vec();
        match sphinx::process(&mut packet, key) {
            Err(_) => {
                assert!(mutate, "an unmodified packet failed at hop {i}");
                assert_eq!(packet.as_bytes(), &before[..]);
                return;
            }
            Ok(p) => match p.hop {
                Hop::Forward { next_hop, delay_ns } => {
                    if !mutate {
                        assert!(i + 1 < hops);
                        assert_eq!(next_hop, [i as u8 + 2; 32]);
                        assert_eq!(delay_ns, delays[i]);
                    }
                }
                Hop::Final { destination: d, identifier } => {
                    if !mutate {
                        assert_eq!(i + 1, hops);
                        assert_eq!(d, destination.address);
                        assert_eq!(identifier, destination.identifier);
                        let plain = sphinx::recover_plaintext(packet.payload()).expect("intact payload");
                        assert_eq!(plain, message);
                    } else {
                        let _ = sphinx::recover_plaintext(packet.payload());
                    }
                    return;
                }
            },
        }
    }
});
