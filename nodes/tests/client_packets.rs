//! The client's packets through all four hops with the test network's Sphinx keys: forward
//! packets and their SURB-ACKs, reply SURBs, drop cover.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_support;

use client_support::{test_net, TestMixnet};
use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::{self, address, Surb};
use lethe_nodes::client::ack::AckKey;
use lethe_nodes::client::message::{
    self, forward_fragment_capacity, open_forward, open_reply, reply_fragment_capacity,
    seal_forward, seal_reply, FLAG_IS_REPLY,
};
use lethe_nodes::client::packets::{reply_packet, Builder, Delays, SelfRoute};
use lethe_nodes::client::Recipient;
use lethe_nodes::keyfile;
use lethe_nodes::proto::payload::{ForwardPlaintextView, ACK_PACKET_BYTES, DROP_COVER_DESTINATION};
use x25519_dalek::{PublicKey, StaticSecret};

const SIZE: PacketSize = PacketSize::Regular;

struct Party {
    identity: [u8; 32],
    secret: StaticSecret,
    recipient: Recipient,
}

fn party(seed: u8, net: &TestMixnet) -> Party {
    let identity = keyfile::ed25519_public(&[seed; 32]);
    let secret = StaticSecret::from([seed.wrapping_add(100); 32]);
    let recipient = Recipient {
        identity,
        encryption_key: PublicKey::from(&secret).to_bytes(),
        gateway: net.gateway_identity,
    };
    Party {
        identity,
        secret,
        recipient,
    }
}

fn builder<'a>(net: &'a TestMixnet, own: &Party) -> Builder<'a> {
    Builder {
        topology: &net.topology,
        own: SelfRoute {
            identity: own.identity,
            gateway: net.gateway_identity,
        },
        delays: Delays {
            packet_ms: 15.0,
            ack_ms: 15.0,
        },
        size: SIZE,
        format: lethe_proto::loopix::PacketFormat::Sphinx,
        keep_secrets: false,
    }
}

#[test]
fn forward_packet_and_its_surb_ack_through_all_hops() {
    let net = test_net(None);
    let alice = party(1, &net);
    let bob = party(2, &net);
    let mut rng = rand::rng();
    let ack_key = AckKey::random(&mut rng);
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let fragments = message::split(77, 0, &data, forward_fragment_capacity(SIZE), 1 << 20).unwrap();
    assert_eq!(fragments.len(), 2);
    for (id, fragment) in fragments.iter().enumerate() {
        let content =
            seal_forward(&mut rng, &bob.recipient.encryption_key, fragment, SIZE).unwrap();
        let ack = ack_key.seal(id as u64 + 1000);
        let built = builder(&net, &alice)
            .to_recipient(&mut rng, &bob.recipient, &content, Some(&ack))
            .unwrap();
        assert_eq!(built.packet.len(), SIZE.packet_len());
        assert!(net.topology.layers[0]
            .iter()
            .any(|d| address::encode(&d.mix_address) == built.first_hop));
        // Expected RTT: three exponential delays each way, mean 15 ms.
        assert!(built.expected_rtt_ns > 0);

        let (destination, identifier, packet, hops) =
            net.unwrap_all(built.first_hop, built.packet).unwrap();
        assert_eq!(
            (destination, identifier, hops),
            (bob.identity, [0u8; 16], 4)
        );
        let plaintext = sphinx::recover_plaintext(packet.payload()).unwrap();
        let forward = ForwardPlaintextView::new_checked(plaintext).unwrap();
        assert_eq!(
            open_forward(&bob.secret, forward.content()).unwrap(),
            *fragment
        );
        // Nobody else can read it.
        assert!(open_forward(&alice.secret, forward.content()).is_err());

        // The recipient's gateway sends the SURB-ACK on: it reaches Alice, naming the fragment.
        let ack = forward.surb_ack().unwrap();
        assert_eq!(ack.packet.len(), ACK_PACKET_BYTES);
        let (destination, identifier, packet, hops) =
            net.unwrap_all(*ack.first_hop, ack.packet.to_vec()).unwrap();
        assert_eq!(
            (destination, identifier, hops),
            (alice.identity, [0u8; 16], 4)
        );
        let ack_plaintext = sphinx::recover_plaintext(packet.payload()).unwrap();
        assert_eq!(ack_key.open(ack_plaintext), Some(id as u64 + 1000));
        // Another client's key does not recognise it; forged ACKs are refused.
        assert_eq!(AckKey::random(&mut rng).open(ack_plaintext), None);
        let mut forged = ack_plaintext.to_vec();
        forged[20] ^= 1;
        assert_eq!(ack_key.open(&forged), None);
    }
}

#[test]
fn forward_packet_without_ack_has_a_zero_prefix() {
    let net = test_net(None);
    let alice = party(1, &net);
    let mut rng = rand::rng();
    let content = vec![5u8; message::forward_content_len(SIZE)];
    let built = builder(&net, &alice)
        .to_recipient(&mut rng, &alice.recipient, &content, None)
        .unwrap();
    let (_, _, packet, _) = net.unwrap_all(built.first_hop, built.packet).unwrap();
    let plaintext = sphinx::recover_plaintext(packet.payload()).unwrap();
    let forward = ForwardPlaintextView::new_checked(plaintext).unwrap();
    assert!(forward.surb_ack().is_none());
    assert_eq!(forward.content(), &content[..]);
    // Wrong content length is refused.
    assert!(builder(&net, &alice)
        .to_recipient(&mut rng, &alice.recipient, &content[1..], None)
        .is_err());
}

#[test]
fn reply_surb_round_trip() {
    let net = test_net(None);
    let alice = party(1, &net);
    let mut rng = rand::rng();
    let identifier = [0x42u8; 16];
    let (surb, recovery) = builder(&net, &alice)
        .reply_surb(&mut rng, identifier)
        .unwrap();
    // The SURB travels inside a message as bytes.
    let surb = Surb::from_bytes(&surb.to_bytes()).unwrap();
    let reply_key = [9u8; 32];
    let data = vec![0xabu8; 1500];
    let fragments = message::split(
        5,
        FLAG_IS_REPLY,
        &data,
        reply_fragment_capacity(SIZE),
        1 << 20,
    )
    .unwrap();
    let content = seal_reply(&reply_key, &fragments[0], SIZE).unwrap();
    let built = reply_packet(&surb, &content, SIZE).unwrap();
    let (destination, got_identifier, mut packet, hops) =
        net.unwrap_all(built.first_hop, built.packet).unwrap();
    assert_eq!(
        (destination, got_identifier, hops),
        (alice.identity, identifier, 4)
    );
    // The gateway cannot read it; the SURB's creator can.
    assert!(sphinx::recover_plaintext(packet.payload()).is_err());
    let plaintext = recovery.recover_plaintext(packet.payload_mut()).unwrap();
    assert_eq!(open_reply(&reply_key, plaintext).unwrap(), fragments[0]);
    // A zero identifier is refused for v260 SURBs.
    assert!(builder(&net, &alice)
        .reply_surb(&mut rng, [0u8; 16])
        .is_err());
}

#[test]
fn drop_cover_goes_to_the_drop_destination() {
    let net = test_net(None);
    let alice = party(1, &net);
    let mut rng = rand::rng();
    let built = builder(&net, &alice).drop_cover(&mut rng).unwrap();
    let (destination, _, _, hops) = net.unwrap_all(built.first_hop, built.packet).unwrap();
    assert_eq!((destination, hops), (DROP_COVER_DESTINATION, 4));
}

#[test]
fn unknown_recipient_gateway_is_an_error() {
    let net = test_net(None);
    let alice = party(1, &net);
    let mut rng = rand::rng();
    let mut stranger = alice.recipient;
    stranger.gateway = [7u8; 32];
    let content = vec![0u8; message::forward_content_len(SIZE)];
    assert!(builder(&net, &alice)
        .to_recipient(&mut rng, &stranger, &content, None)
        .is_err());
}
