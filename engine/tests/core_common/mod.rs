//! Helpers for the core tests: keys, replay filters, packets built with `sphinx::create`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_engine::core::{Core, NodeKeys, SphinxKey};
use lethe_engine::metrics::CoreMetrics;
use lethe_engine::{EngineConfig, ReplayFilter, ReplayFilterSet, ReplayParams};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use x25519_dalek::{PublicKey, StaticSecret};

pub const PAYLOAD: usize = PacketSize::Ack.payload_len();

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn secret(rng: &mut ChaCha20Rng) -> StaticSecret {
    StaticSecret::random_from_rng(rng)
}

pub fn public(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn config() -> EngineConfig {
    EngineConfig {
        timer_tick_us: 10,
        timer_entries_max: 1_024,
        pool_buffers_count: 1_024,
        pool_buffer_bytes: 2_560,
        batch_packets_max: 4,
        batch_flush_us: 100,
        ..EngineConfig::default()
    }
}

pub fn filters(rotation_ids: &[u32]) -> ReplayFilterSet {
    let mut set = ReplayFilterSet::default();
    for &id in rotation_ids {
        let params = ReplayParams::for_items(100_000, 1e-6, 1).unwrap();
        set.insert(Arc::new(ReplayFilter::new(id, params))).unwrap();
    }
    set
}

pub fn core_with(config: EngineConfig, keys: NodeKeys, rotation_ids: &[u32]) -> Core {
    let metrics = Arc::new(CoreMetrics::default());
    Core::new(config, keys, filters(rotation_ids), metrics, 0)
}

pub fn one_key(secret: StaticSecret, rotation_id: u32) -> NodeKeys {
    NodeKeys::new(SphinxKey::new(rotation_id, secret), None)
}

/// A packet through `hops` (public key, port) with per-hop delays, to a fixed destination.
pub fn packet(rng: &mut ChaCha20Rng, hops: &[([u8; 32], u16)], delays_ns: &[u64]) -> Vec<u8> {
    let route: Vec<RouteHop> = hops
        .iter()
        .map(|(key, port)| RouteHop {
            address: address::encode(&addr(*port)),
            public_key: *key,
        })
        .collect();
    let destination = Destination {
        address: [7; 32],
        identifier: [9; 16],
    };
    let spec = PacketSpec {
        route: &route,
        delays_ns,
        destination: &destination,
        version: Version::CURRENT,
    };
    let mut message = [0u8; 4];
    rng.fill_bytes(&mut message);
    sphinx::create(&message, PAYLOAD, &spec, None, rng).unwrap()
}
