//! The gateway's descriptor, its registration with the directory, and topology refresh.
//! Registration itself is `directory::spawn_announcer`, shared with mixnodes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::GatewayMetrics;
use super::sessions::FirstHops;
use crate::directory::client::{fetch_consensus, http_client, Authorities};
use crate::keyfile;
use crate::limits;
use crate::topology::{now_s, Descriptor, Role};

pub const TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);

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
    /// `--announce-client-url`, if given.
    pub client_url: Option<String>,
}

/// Refuses, before anything starts, a registration that would publish an address nobody else
/// can use: a listener on an unspecified IP would be announced as loopback (what `dialable`
/// makes of it), so it needs an explicit `announce`; an announced client URL must be a
/// WebSocket URL on a specific host.
pub fn check_announce(
    listen: SocketAddr,
    announce: Option<SocketAddr>,
    client_url: Option<&str>,
) -> Result<(), String> {
    match announce {
        Some(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
            return Err(format!(
                "--announce {addr}: must be a specific IP and port, the address mixnodes reach \
                 this gateway at"
            ));
        }
        Some(_) => {}
        None if listen.ip().is_unspecified() => {
            return Err(format!(
                "the gateway listens on {listen} and would register {} with the directory, \
                 which no other host can reach: pass --announce PUBLIC_IP:{} (config: \
                 gateway.announce_address), the address mixnodes reach it at, or listen on a \
                 specific IP (--listen)",
                dialable(listen),
                listen.port()
            ));
        }
        None => {}
    }
    if let Some(url) = client_url {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"))
            .ok_or_else(|| {
                format!("--announce-client-url {url}: must start with ws:// or wss://")
            })?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let unspecified = host
            .parse::<SocketAddr>()
            .map(|a| a.ip().is_unspecified())
            .unwrap_or(false)
            || host
                .rsplit_once(':')
                .map_or(host, |(h, _)| h)
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .map(|ip| ip.is_unspecified())
                .unwrap_or(false);
        if !url
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(format!(
                "--announce-client-url {url:?}: spaces, quotes and non-ASCII are not allowed"
            ));
        }
        if host.is_empty() || unspecified {
            return Err(format!(
                "--announce-client-url {url}: must name the host clients connect to"
            ));
        }
    }
    Ok(())
}

/// The gateway's descriptor: the client URL is `--announce-client-url`, else on the announced
/// host at the client port.
pub fn descriptor(parts: &DescriptorParts) -> Descriptor {
    let client = SocketAddr::new(parts.mix_address.ip(), parts.client_address.port());
    let client_url = parts
        .client_url
        .clone()
        .unwrap_or_else(|| format!("ws://{client}"));
    Descriptor {
        identity: keyfile::hex(&parts.identity),
        sphinx_key: keyfile::hex(&parts.sphinx_key),
        rotation_id: parts.rotation_id,
        mix_address: parts.mix_address,
        role: Role::Gateway,
        client_url: Some(client_url),
        metrics_url: Some(format!(
            "http://{}/metrics",
            dialable(parts.metrics_address)
        )),
        family: None,
        issued_at_s: 0,
    }
}

/// Fetches the verified consensus (any authority, in turn) now, then each epoch's as soon
/// as it is due and at least every [`TOPOLOGY_REFRESH`]; a failed fetch keeps the previous
/// one, past its `valid_until_s` for the grace
/// ([`CONSENSUS_GRACE_S`](limits::CONSENSUS_GRACE_S)), said in the log and the
/// `consensus_in_grace` gauge; then [`FirstHops::check`] refuses forwarding.
pub fn refresh_topology(
    runtime: &tokio::runtime::Handle,
    authorities: Authorities,
    first_hops: Arc<FirstHops>,
    metrics: Arc<GatewayMetrics>,
) {
    runtime.spawn(async move {
        let http = http_client();
        let mut held: Option<(u64, u64)> = None; // (epoch, valid_until_s) of the document in use
                                                 // Runs for the life of the runtime, one fetch per interval.
        loop {
            let wait = match fetch_consensus(&http, &authorities, first_hops.epoch()).await {
                Ok(topology) => {
                    let formed = topology.layers.first().is_some_and(|l| !l.is_empty());
                    held = Some((topology.epoch, topology.valid_until_s));
                    metrics
                        .consensus_epoch
                        .store(topology.epoch, Ordering::Relaxed);
                    if metrics.consensus_in_grace.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!(epoch = topology.epoch, "a fresh consensus verified");
                    }
                    // Each epoch's document as soon as it is due (nodes join and leave,
                    // layers are redrawn each layer period), at least every TOPOLOGY_REFRESH.
                    let next = crate::topology::refetch_in(
                        &topology,
                        crate::topology::now_ms(),
                        TOPOLOGY_REFRESH,
                        crate::topology::Consumer::Gateway,
                    );
                    first_hops.set_topology(topology);
                    if formed {
                        next
                    } else {
                        Duration::from_millis(limits::GATEWAY_TOPOLOGY_RETRY_MS)
                    }
                }
                Err(e) => {
                    GatewayMetrics::add(&metrics.consensus_fetch_failures, 1);
                    tracing::warn!(error = %e, "consensus fetch failed; retrying");
                    if let Some((epoch, valid_until_s)) = held {
                        say_grace(&metrics, epoch, valid_until_s);
                    }
                    Duration::from_millis(limits::GATEWAY_TOPOLOGY_RETRY_MS)
                }
            };
            // A client's unknown first hop asks for a fetch before the schedule; never sooner
            // than GATEWAY_TOPOLOGY_REFETCH_MS_MIN after this one.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = first_hops.stale.notified() => {
                    tokio::time::sleep(
                        Duration::from_millis(limits::GATEWAY_TOPOLOGY_REFETCH_MS_MIN).min(wait),
                    )
                    .await;
                }
            }
        }
    });
}

/// Says (log, gauge) whether the held document is in its grace or past it.
fn say_grace(metrics: &GatewayMetrics, epoch: u64, valid_until_s: u64) {
    let expired_s = now_s().saturating_sub(valid_until_s);
    if expired_s == 0 {
        return;
    }
    if expired_s <= limits::CONSENSUS_GRACE_S {
        metrics.consensus_in_grace.store(1, Ordering::Relaxed);
        tracing::warn!(
            epoch,
            expired_s,
            grace_s = limits::CONSENSUS_GRACE_S,
            "no new consensus verified: routing on the last valid one, expired, within its grace"
        );
    } else {
        metrics.consensus_in_grace.store(0, Ordering::Relaxed);
        tracing::error!(
            epoch,
            expired_s,
            "no valid consensus: the last one expired beyond its grace; client forwards are refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse()
            .unwrap_or_else(|_| SocketAddr::from(([1, 1, 1, 1], 1)))
    }

    #[test]
    fn unspecified_listeners_need_an_announce() {
        let anywhere = addr("0.0.0.0:1790");
        let err = check_announce(anywhere, None, None).unwrap_err();
        assert!(err.contains("--announce PUBLIC_IP:1790"), "{err}");
        assert!(err.contains("127.0.0.1:1790"), "{err}");
        assert!(check_announce(anywhere, Some(addr("203.0.113.7:1790")), None).is_ok());
        assert!(check_announce(anywhere, Some(addr("0.0.0.0:1790")), None).is_err());
        assert!(check_announce(addr("127.0.0.1:0"), None, None).is_ok());
        for bad in [
            "http://x:9000",
            "ws://0.0.0.0:9000",
            "ws://[::]:9000/",
            "ws://",
        ] {
            assert!(
                check_announce(addr("127.0.0.1:0"), None, Some(bad)).is_err(),
                "{bad}"
            );
        }
        for good in [
            "ws://gw.example.org:9000",
            "wss://gw.example.org/",
            "ws://[2001:db8::1]:9000",
        ] {
            assert!(
                check_announce(addr("127.0.0.1:0"), None, Some(good)).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn announced_client_url_is_published() {
        let mut parts = DescriptorParts {
            identity: [1; 32],
            sphinx_key: [2; 32],
            rotation_id: 1,
            mix_address: addr("203.0.113.7:1790"),
            client_address: addr("0.0.0.0:9000"),
            metrics_address: addr("127.0.0.1:9101"),
            client_url: None,
        };
        assert_eq!(
            descriptor(&parts).client_url.as_deref(),
            Some("ws://203.0.113.7:9000")
        );
        parts.client_url = Some("wss://gw.example.org/".into());
        assert_eq!(
            descriptor(&parts).client_url.as_deref(),
            Some("wss://gw.example.org/")
        );
    }
}
