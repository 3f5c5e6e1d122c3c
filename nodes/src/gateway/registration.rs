//! The gateway's descriptor, its registration with the directory, and topology refresh.
//! Registration itself is `directory::spawn_announcer`, shared with mixnodes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::sessions::FirstHops;
use crate::directory::client::{fetch_topology, http_client};
use crate::keyfile;
use crate::topology::{Descriptor, Role};

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
pub const TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);
/// Retry sooner while the topology is missing or has no layer 1 (a network still forming).
pub const TOPOLOGY_RETRY: Duration = Duration::from_secs(1);

/// `addr` with an unspecified IP replaced by loopback (what to tell others to dial).
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

pub struct DescriptorParts {
    pub identity: [u8; 32],
    pub sphinx_key: [u8; 32],
    pub rotation_id: u32,
    /// The announced mix address (`--announce`, else the bound listener).
    pub mix_address: SocketAddr,
    pub client_address: SocketAddr,
    pub metrics_address: SocketAddr,
}

/// The gateway's descriptor: the client URL is on the announced host, at the client port.
pub fn descriptor(parts: &DescriptorParts) -> Descriptor {
    let client = SocketAddr::new(parts.mix_address.ip(), parts.client_address.port());
    Descriptor {
        identity: keyfile::hex(&parts.identity),
        sphinx_key: keyfile::hex(&parts.sphinx_key),
        rotation_id: parts.rotation_id,
        mix_address: parts.mix_address,
        role: Role::Gateway,
        client_url: Some(format!("ws://{client}")),
        metrics_url: Some(format!(
            "http://{}/metrics",
            dialable(parts.metrics_address)
        )),
        issued_at_s: 0,
    }
}

/// Fetches the verified topology now and every [`TOPOLOGY_REFRESH`]; a failed fetch keeps the
/// previous one until its `valid_until_s` (then [`FirstHops::check`] refuses forwarding).
pub fn refresh_topology(
    runtime: &tokio::runtime::Handle,
    directory_url: String,
    directory_key: [u8; 32],
    first_hops: Arc<FirstHops>,
) {
    runtime.spawn(async move {
        let http = http_client();
        // Runs for the life of the runtime, one fetch per interval.
        loop {
            let wait =
                match fetch_topology(&http, &directory_url, &directory_key, first_hops.epoch())
                    .await
                {
                    Ok(topology) => {
                        let formed = !topology.layers[0].is_empty();
                        first_hops.set_topology(topology);
                        if formed {
                            TOPOLOGY_REFRESH
                        } else {
                            TOPOLOGY_RETRY
                        }
                    }
                    Err(e) => {
                        eprintln!("lethe: gateway topology: {e}");
                        TOPOLOGY_RETRY
                    }
                };
            tokio::time::sleep(wait).await;
        }
    });
}
