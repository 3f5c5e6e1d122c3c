//! Batched processing and creation, and the O(n) key derivation: identical to the serial,
//! crate-compatible paths, and allocation free.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod counting_alloc;
mod sphinx_common;

use counting_alloc::allocations;

use lethe_crypto::sphinx::{
    self, constants::HEADER_SIZE, BatchProcessor, CreateJob, NodeSecrets, Packet, ProcessResult,
    SphinxError, Version,
};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use sphinx_common::{final_padding, rng, walk, Net, Replay, SIZES, VERSIONS};
use x25519_dalek::{PublicKey, StaticSecret};

#[test]
fn fast_derivation_matches_the_chain() {
    let mut rng = rng(100);
    for round in 0..60 {
        let hops = 1 + round % 5;
        let x = StaticSecret::random_from_rng(&mut rng);
        let keys: Vec<[u8; 32]> = (0..hops)
            .map(|_| PublicKey::from(&StaticSecret::random_from_rng(&mut rng)).to_bytes())
            .collect();
        let chained = sphinx::derive_hop_secrets(&x, &keys).unwrap();
        let fast = sphinx::derive_hop_secrets_fast(&x, &keys).unwrap();
        assert_eq!(fast.alpha, chained.alpha, "alpha, round {round}");
        assert_eq!(fast.len(), hops);
        for (hop, (a, b)) in fast.iter().zip(chained.iter()).enumerate() {
            assert_eq!(a.shared_secret, b.shared_secret, "round {round} hop {hop}");
            assert!(a.expanded == b.expanded, "round {round} hop {hop}");
        }
    }
    // A low-order key (u = 0) zeroes the chain from that hop on; the product does the same.
    // (Keys on the twist are the documented exception: no honest node has one.)
    let x = StaticSecret::from([3; 32]);
    let mut nine = [0u8; 32];
    nine[0] = 9;
    let keys = [nine, [0; 32], nine];
    let chained = sphinx::derive_hop_secrets(&x, &keys).unwrap();
    let fast = sphinx::derive_hop_secrets_fast(&x, &keys).unwrap();
    for (a, b) in fast.iter().zip(chained.iter()) {
        assert_eq!(a.shared_secret, b.shared_secret);
    }
    assert!(sphinx::derive_hop_secrets_fast(&StaticSecret::from([1; 32]), &[]).is_err());
    assert!(sphinx::derive_hop_secrets_fast(&StaticSecret::from([1; 32]), &[[9; 32]; 6]).is_err());
}

/// The alpha each hop receives, in one multiplication per route: what blinding alpha_0 hop by
/// hop gives, for routes of every length in batches across lane chunks (40 routes: 16 + 16 + 8).
#[test]
fn hop_alphas_match_blinding_hop_by_hop() {
    let mut rng = rng(101);
    let routes: Vec<sphinx::RouteSecrets> = (0..40)
        .map(|route| {
            let x = StaticSecret::random_from_rng(&mut rng);
            let keys: Vec<[u8; 32]> = (0..1 + route % 5)
                .map(|_| PublicKey::from(&StaticSecret::random_from_rng(&mut rng)).to_bytes())
                .collect();
            sphinx::derive_hop_secrets_fast(&x, &keys).unwrap()
        })
        .collect();
    // expected[route][hop], by the chain each hop applies.
    let expected: Vec<Vec<[u8; 32]>> = routes
        .iter()
        .map(|route| {
            let mut alpha = route.alpha;
            route
                .iter()
                .map(|hop| {
                    let arriving = alpha;
                    alpha = sphinx::keys::blind_alpha(&hop.expanded, &alpha);
                    arriving
                })
                .collect()
        })
        .collect();
    let refs: Vec<&sphinx::RouteSecrets> = routes.iter().collect();
    for hop in 0..=5 {
        let mut alphas = vec![Some([0xff; 32]); refs.len()];
        sphinx::hop_alphas(&refs, hop, &mut alphas);
        for (route, alpha) in alphas.iter().enumerate() {
            assert_eq!(
                *alpha,
                expected[route].get(hop).copied(),
                "route {route} hop {hop}"
            );
        }
    }
    // Extra output slots are left alone.
    let mut alphas = vec![None, Some([1; 32])];
    sphinx::hop_alphas(&refs[..1], 0, &mut alphas);
    assert_eq!(alphas, [Some(routes[0].alpha), Some([1; 32])]);
}

fn message(rng: &mut ChaCha20Rng, size: usize) -> Vec<u8> {
    let mut msg = vec![0u8; (rng.next_u32() as usize) % (size - HEADER_SIZE - 17)];
    rng.fill_bytes(&mut msg);
    msg
}

/// Batch-built packets equal `sphinx-packet`'s for the same secret and padding.
#[test]
fn batch_created_packets_match_the_reference() {
    let mut rng = rng(101);
    let mut nets = Vec::new();
    let mut expected = Vec::new();
    let mut padding = Vec::new();
    let mut secrets = Vec::new();
    let mut messages = Vec::new();
    for (index, hops) in (1..=5).chain(1..=5).enumerate() {
        let version = VERSIONS[index % VERSIONS.len()];
        let size = SIZES[index % SIZES.len()];
        let net = Net::new(&mut rng, hops);
        let msg = message(&mut rng, size);
        let x = StaticSecret::random_from_rng(&mut rng);
        let bytes = net.ref_packet(&x, version, size, &msg);
        padding.extend(final_padding(
            &walk(&net, &bytes, version).final_buffer,
            hops,
        ));
        nets.push((net, version));
        expected.push(bytes);
        secrets.push(x);
        messages.push(msg);
    }
    let mut outs: Vec<Vec<u8>> = expected.iter().map(|b| vec![0u8; b.len()]).collect();
    let mut jobs: Vec<CreateJob<'_>> = outs
        .iter_mut()
        .zip(&nets)
        .zip(&messages)
        .zip(&secrets)
        .map(|(((out, (net, version)), msg), x)| CreateJob {
            out,
            message: msg,
            spec: net.spec(*version),
            initial_secret: Some(x),
        })
        .collect();
    let mut replay = Replay::new(padding);
    let mut count = 0;
    sphinx::create_batch(&mut jobs, &mut replay, |index, result| {
        assert_eq!(index, count);
        result.unwrap();
        count += 1;
    });
    drop(jobs);
    assert_eq!(count, expected.len());
    assert!(replay.exhausted());
    assert_eq!(outs, expected);
}

/// `create_batch` equals `create_into` job by job (drawn secrets, errors, chunking).
#[test]
fn create_batch_matches_create_into() {
    let mut rng = rng(102);
    let nets: Vec<Net> = (0..40).map(|i| Net::new(&mut rng, 1 + i % 5)).collect();
    let mut xs = Vec::new();
    let mut seed_rng = rng.clone();
    let mut outs = Vec::new();
    let mut expected = Vec::new();
    for (index, net) in nets.iter().enumerate() {
        let size = if index % 13 == 7 {
            300
        } else {
            SIZES[index % 2]
        };
        let msg = vec![index as u8; if index % 11 == 5 { 5000 } else { 10 }];
        let mut x = [0u8; 32];
        seed_rng.fill_bytes(&mut x);
        let x = StaticSecret::from(x);
        let mut serial_rng = sphinx_common::rng(index as u64);
        let mut buffer = vec![0u8; size];
        let result = sphinx::create_into(
            &mut buffer,
            &msg,
            &net.spec(Version::CURRENT),
            Some(&x),
            &mut serial_rng,
        );
        expected.push((result.map(|s| s.alpha), buffer, serial_rng.next_u64()));
        outs.push((vec![0u8; size], msg));
        xs.push(x);
    }
    // One job per chunk lane, each with its own RNG stream: compare job by job.
    for (index, ((out, msg), net)) in outs.iter_mut().zip(&nets).enumerate() {
        let mut jobs = [CreateJob {
            out,
            message: msg,
            spec: net.spec(Version::CURRENT),
            initial_secret: Some(&xs[index]),
        }];
        let mut job_rng = sphinx_common::rng(index as u64);
        let mut result = None;
        sphinx::create_batch(&mut jobs, &mut job_rng, |_, r| {
            result = Some(r.map(|s| s.alpha))
        });
        let (want, want_bytes, next) = &expected[index];
        assert_eq!(result.unwrap(), *want, "job {index}");
        if want.is_ok() {
            assert_eq!(out, want_bytes, "job {index}");
        }
        assert_eq!(job_rng.next_u64(), *next, "rng use, job {index}");
    }
    // All together (several chunks), secrets drawn from the RNG: same alphas as the
    // serial derivation of the drawn secrets.
    let mut bufs: Vec<Vec<u8>> = (0..nets.len()).map(|_| vec![0u8; 2413]).collect();
    let mut jobs: Vec<CreateJob<'_>> = bufs
        .iter_mut()
        .zip(&nets)
        .map(|(out, net)| CreateJob {
            out,
            message: b"batch",
            spec: net.spec(Version::CURRENT),
            initial_secret: None,
        })
        .collect();
    let mut batch_rng = sphinx_common::rng(103);
    let mut alphas = Vec::new();
    sphinx::create_batch(&mut jobs, &mut batch_rng, |_, r| {
        alphas.push(r.unwrap().alpha)
    });
    drop(jobs);
    for (index, buf) in bufs.iter().enumerate() {
        assert_eq!(&buf[..32], &alphas[index]);
        let mut packet = buf.clone();
        let processed = sphinx::process(
            &mut Packet::new_checked(&mut packet[..]).unwrap(),
            &nets[index].secrets[0],
        );
        assert!(processed.is_ok(), "job {index}");
    }
}

/// What each packet of a mixed batch is.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Forward,
    Final,
    WrongMac,
    Secondary,
    LowOrder,
    Truncated,
    Garbage,
    /// Valid MAC over a slot whose version (or flag) is garbage.
    BadVersion,
    BadFlag,
}

const KINDS: [Kind; 9] = [
    Kind::Forward,
    Kind::Final,
    Kind::WrongMac,
    Kind::Secondary,
    Kind::LowOrder,
    Kind::Truncated,
    Kind::Garbage,
    Kind::BadVersion,
    Kind::BadFlag,
];

struct Node {
    primary: StaticSecret,
    secondary: StaticSecret,
    forward: Net,
    final_hop: Net,
    via_secondary: Net,
}

impl Node {
    fn new(rng: &mut ChaCha20Rng) -> Node {
        let mut forward = Net::new(rng, 3);
        let mut final_hop = Net::new(rng, 1);
        let mut via_secondary = Net::new(rng, 2);
        let primary = forward.secrets[0].clone();
        let secondary = StaticSecret::random_from_rng(rng);
        final_hop.secrets[0] = primary.clone();
        final_hop.hops[0].public_key = PublicKey::from(&primary).to_bytes();
        via_secondary.secrets[0] = secondary.clone();
        via_secondary.hops[0].public_key = PublicKey::from(&secondary).to_bytes();
        forward.hops[0].public_key = PublicKey::from(&primary).to_bytes();
        Node {
            primary,
            secondary,
            forward,
            final_hop,
            via_secondary,
        }
    }

    fn packet(&self, rng: &mut ChaCha20Rng, kind: Kind, index: usize) -> Vec<u8> {
        let size = SIZES[index % SIZES.len()];
        let version = VERSIONS[index % VERSIONS.len()];
        let make = |net: &Net, rng: &mut ChaCha20Rng| {
            sphinx::create(b"batch", size - HEADER_SIZE, &net.spec(version), None, rng).unwrap()
        };
        match kind {
            Kind::Forward => make(&self.forward, rng),
            Kind::Final => make(&self.final_hop, rng),
            Kind::Secondary => make(&self.via_secondary, rng),
            Kind::WrongMac => {
                let mut bytes = make(&self.forward, rng);
                bytes[100] ^= 1;
                bytes
            }
            Kind::LowOrder => {
                let mut bytes = make(&self.forward, rng);
                bytes[..32].copy_from_slice(&[0; 32]);
                bytes[0] = (index % 2) as u8; // u = 0 or u = 1
                bytes
            }
            Kind::Truncated => {
                let mut bytes = vec![0u8; index % 380];
                rng.fill_bytes(&mut bytes);
                bytes
            }
            Kind::Garbage => {
                let mut bytes = vec![0u8; size];
                rng.fill_bytes(&mut bytes);
                bytes
            }
            // beta is a stream-cipher ciphertext: flipping its bits flips the plaintext's.
            // The MAC is recomputed with the node's key, so only the slot check can fail.
            Kind::BadVersion => self.reforged(make(&self.forward, rng), 2, 0x7f),
            Kind::BadFlag => self.reforged(make(&self.final_hop, rng), 0, 0x40),
        }
    }

    fn reforged(&self, mut bytes: Vec<u8>, at: usize, flip: u8) -> Vec<u8> {
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        let expanded = sphinx::derive_expanded_secret(&packet, &self.primary).unwrap();
        packet.beta_mut()[at] ^= flip;
        let mac = sphinx::routing::compute_mac(expanded.mac_key(), packet.beta());
        packet.mac_mut().copy_from_slice(&mac);
        bytes
    }
}

fn serial(node: &Node, packets: &[Vec<u8>], secondary: bool) -> Vec<(ProcessResult, Vec<u8>)> {
    packets
        .iter()
        .map(|bytes| {
            let mut bytes = bytes.clone();
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            let second = secondary.then_some(&node.secondary);
            let outcome = sphinx::process_with_keys(&mut packet, &node.primary, second);
            (outcome, bytes)
        })
        .collect()
}

#[test]
fn batch_processing_matches_serial_on_mixed_batches() {
    let mut rng = rng(104);
    let node = Node::new(&mut rng);
    let mut processor = BatchProcessor::new(16);
    for count in [1usize, 3, 8, 9, 17, 64] {
        let packets: Vec<Vec<u8>> = (0..count)
            .map(|index| {
                let kind = KINDS[(index * 5 + count) % KINDS.len()];
                node.packet(&mut rng, kind, index)
            })
            .collect();
        for secondary in [true, false] {
            let expected = serial(&node, &packets, secondary);
            let mut buffers = packets.clone();
            let keys = NodeSecrets {
                primary: &node.primary,
                secondary: secondary.then_some(&node.secondary),
            };
            let mut outcomes = Vec::new();
            processor.process(&mut buffers, keys, |index, outcome| {
                outcomes.push((index, outcome))
            });
            assert_eq!(outcomes.len(), count);
            for (index, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
                assert_eq!(got.0, index);
                assert_eq!(
                    got.1, want.0,
                    "count {count} packet {index} secondary {secondary}"
                );
                assert_eq!(
                    buffers[index], want.1,
                    "bytes, count {count} packet {index}"
                );
            }
            if count == 64 {
                let kinds: std::collections::BTreeSet<String> = expected
                    .iter()
                    .map(|(outcome, _)| match outcome {
                        Ok((processed, choice)) => {
                            format!("{:?} {choice:?}", std::mem::discriminant(&processed.hop))
                        }
                        Err(error) => format!("{:?}", std::mem::discriminant(error)),
                    })
                    .collect();
                let want = if secondary { 8 } else { 7 };
                assert!(kinds.len() >= want, "batch not mixed enough: {kinds:?}");
            }
        }
    }
}

#[test]
fn replayed_packets_are_skipped_and_left_unchanged() {
    let mut rng = rng(105);
    let node = Node::new(&mut rng);
    let packets: Vec<Vec<u8>> = (0..9)
        .map(|i| node.packet(&mut rng, Kind::Forward, i))
        .collect();
    let expected = serial(&node, &packets, false);
    let mut buffers = packets.clone();
    let mut processor = BatchProcessor::new(4);
    let keys = NodeSecrets {
        primary: &node.primary,
        secondary: None,
    };
    let mut seen = Vec::new();
    let mut outcomes = Vec::new();
    processor.process_checking_replay(
        &mut buffers,
        keys,
        |tag| {
            seen.push(*tag);
            seen.len() % 3 == 0
        },
        |_, outcome| outcomes.push(outcome),
    );
    for (index, outcome) in outcomes.iter().enumerate() {
        let (want, want_bytes) = &expected[index];
        assert_eq!(seen[index], want.as_ref().unwrap().0.replay_tag);
        if index % 3 == 2 {
            assert_eq!(*outcome, Err(SphinxError::Replayed));
            assert_eq!(buffers[index], packets[index]);
        } else {
            assert_eq!(outcome, want);
            assert_eq!(&buffers[index], want_bytes);
        }
    }
}

#[test]
fn batch_processing_and_creation_do_not_allocate() {
    let mut rng = rng(106);
    let node = Node::new(&mut rng);
    let packets: Vec<Vec<u8>> = (0..20)
        .map(|i| node.packet(&mut rng, KINDS[i % KINDS.len()], i))
        .collect();
    let mut buffers = packets.clone();
    let mut processor = BatchProcessor::new(8);
    let keys = NodeSecrets {
        primary: &node.primary,
        secondary: Some(&node.secondary),
    };
    let mut ok = 0;
    let before = allocations();
    processor.process_checking_replay(
        &mut buffers,
        keys,
        |_| false,
        |_, o| ok += usize::from(o.is_ok()),
    );
    assert_eq!(allocations(), before, "batch processing allocated");
    assert!(ok >= 3);

    let mut out = vec![vec![0u8; 2413]; 20];
    let spec = node.forward.spec(Version::CURRENT);
    let mut jobs: Vec<CreateJob<'_>> = out
        .iter_mut()
        .map(|out| CreateJob {
            out,
            message: b"no heap",
            spec,
            initial_secret: None,
        })
        .collect();
    let mut created = 0;
    let before = allocations();
    sphinx::create_batch(&mut jobs, &mut rng, |_, r| {
        created += usize::from(r.is_ok())
    });
    assert_eq!(allocations(), before, "batch creation allocated");
    assert_eq!(created, 20);
}

/// Records the admission hooks' calls, in order.
struct Recording<'a> {
    packets: &'a mut [Vec<u8>],
    key: &'a StaticSecret,
    events: std::cell::RefCell<Vec<(char, usize)>>,
}

impl sphinx::PacketBatch for Recording<'_> {
    fn count(&self) -> usize {
        self.packets.len()
    }

    fn packet(&self, index: usize) -> &[u8] {
        &self.packets[index]
    }

    fn packet_mut(&mut self, index: usize) -> &mut [u8] {
        &mut self.packets[index]
    }

    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) {
        sphinx::with_slice_packets(self.packets, indices, f);
    }

    fn key(&self, _: usize, choice: sphinx::KeyChoice) -> Option<&StaticSecret> {
        (choice == sphinx::KeyChoice::Primary).then_some(self.key)
    }

    fn admit(&mut self, index: usize, _: sphinx::KeyChoice, _: &[u8; 32]) -> bool {
        self.events.borrow_mut().push(('a', index));
        true
    }

    fn prepare_admit(&self, index: usize, _: sphinx::KeyChoice, _: &[u8; 32]) {
        self.events.borrow_mut().push(('p', index));
    }
}

#[test]
fn every_admission_is_prepared_before_the_chunk_admits() {
    let mut rng = rng(107);
    let node = Node::new(&mut rng);
    let kinds = [
        Kind::Forward,
        Kind::WrongMac,
        Kind::Final,
        Kind::Truncated,
        Kind::Forward,
    ];
    let mut packets: Vec<Vec<u8>> = (0..10)
        .map(|i| node.packet(&mut rng, kinds[i % kinds.len()], i))
        .collect();
    let capacity = 4;
    let mut processor = BatchProcessor::new(capacity);
    let mut batch = Recording {
        packets: &mut packets,
        key: &node.primary,
        events: Default::default(),
    };
    processor.process_batch(&mut batch, |_, _| {});
    let events = batch.events.into_inner();
    let admitted: Vec<usize> = events.iter().filter(|e| e.0 == 'a').map(|e| e.1).collect();
    let prepared: Vec<usize> = events.iter().filter(|e| e.0 == 'p').map(|e| e.1).collect();
    // Only packets whose MAC verified reach either hook: not the bad MAC, not the truncated.
    let verified: Vec<usize> = (0..10).filter(|i| [0, 2, 4].contains(&(i % 5))).collect();
    assert_eq!(admitted, verified);
    assert_eq!(prepared, verified);
    // Within each chunk, all preparations come before the first admission.
    for chunk in 0..10usize.div_ceil(capacity) {
        let in_chunk = |e: &&(char, usize)| e.1 / capacity == chunk;
        let order: Vec<char> = events.iter().filter(in_chunk).map(|e| e.0).collect();
        let first_admit = order.iter().position(|&c| c == 'a').unwrap_or(order.len());
        assert!(
            order[first_admit..].iter().all(|&c| c == 'a'),
            "chunk {chunk}: {order:?}"
        );
    }
}
