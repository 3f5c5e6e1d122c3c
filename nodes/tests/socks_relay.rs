//! The SOCKS5 proxy and the service provider relaying over an in-memory "mixnet" that
//! delivers every message after a random delay (so out of order) and keeps reply SURBs as
//! counted bundles, fetching a page from a local HTTP server. The real-mixnet versions live
//! in the network tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lethe_nodes::socks::provider::{self, ProviderStats};
use lethe_nodes::socks::proxy::{self, ProxyOptions, ProxyStats};
use lethe_nodes::socks::relay::Outgoing;
use lethe_nodes::socks::socks5::AllowList;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod fake_mixnet;
use fake_mixnet::{lossy_mixnet_counted, shuffling_mixnet, Seen, PROVIDER, PROXY};

async fn http_server(body: Vec<u8>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 1024];
                let _ = s.read(&mut request).await;
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&body).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn socks_connect(
    proxy: std::net::SocketAddr,
    target: std::net::SocketAddr,
) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(r, [5, 0]);
    let std::net::IpAddr::V4(ip) = target.ip() else {
        panic!()
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    (s, reply[1])
}

/// A proxy and a provider on the fake mixnet; returns the proxy's SOCKS5 address.
async fn relays(
    web: std::net::SocketAddr,
    reveal_address: bool,
) -> (
    std::net::SocketAddr,
    Arc<ProxyStats>,
    Arc<ProviderStats>,
    Seen,
    tempdir::Dump,
) {
    let (proxy_addr, proxy_stats, provider_stats, seen, dump, _) =
        lossy_relays(web, reveal_address, 0).await;
    (proxy_addr, proxy_stats, provider_stats, seen, dump)
}

/// [`relays`] on a mixnet losing every `lose_every`-th reply; also returns the count lost.
async fn lossy_relays(
    web: std::net::SocketAddr,
    reveal_address: bool,
    lose_every: u64,
) -> (
    std::net::SocketAddr,
    Arc<ProxyStats>,
    Arc<ProviderStats>,
    Seen,
    tempdir::Dump,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let (proxy_port, provider_port, seen, lost) = lossy_mixnet_counted(lose_every);
    let allow = AllowList::parse(&[format!("127.0.0.1:{}", web.port())]).unwrap();
    let provider_stats = Arc::new(ProviderStats::default());
    let dump = tempdir::Dump::new();
    tokio::spawn(provider::run(
        provider_port,
        allow,
        provider_stats.clone(),
        Some(dump.path.clone()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let proxy_stats = Arc::new(ProxyStats::default());
    let options = ProxyOptions {
        provider: PROVIDER.into(),
        reveal_address,
    };
    tokio::spawn(proxy::run(
        listener,
        proxy_port,
        options,
        proxy_stats.clone(),
    ));
    (proxy_addr, proxy_stats, provider_stats, seen, dump, lost)
}

mod tempdir {
    /// A state-dump file path, removed on drop.
    pub struct Dump {
        pub path: std::path::PathBuf,
    }
    impl Dump {
        pub fn new() -> Dump {
            let path = std::env::temp_dir().join(format!(
                "lethe-socks-relay-{}-{}.dump",
                std::process::id(),
                rand::random::<u32>()
            ));
            Dump { path }
        }
    }
    impl Drop for Dump {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn fetch(proxy_addr: std::net::SocketAddr, web: std::net::SocketAddr) -> Vec<u8> {
    let fetched = tokio::time::timeout(Duration::from_secs(60), async {
        let (mut s, code) = socks_connect(proxy_addr, web).await;
        assert_eq!(code, 0);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        s.read_to_end(&mut response).await.unwrap();
        response
    })
    .await
    .unwrap();
    let split = fetched.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    fetched[split..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_through_reordering_relay_with_surbs() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let web = http_server(body.clone()).await;
    let (proxy_addr, proxy_stats, provider_stats, seen, dump) = relays(web, false).await;

    assert_eq!(fetch(proxy_addr, web).await, body);
    // 300 KB takes ~150 SURBs, more than a Connect carries: the provider asked for more.
    assert!(proxy_stats.surbs_topped_up.load(Ordering::Relaxed) > 0);
    assert_eq!(
        provider_stats.service.surbs_stalled.load(Ordering::Relaxed),
        0
    );
    // The provider never saw the proxy's address, nor holds it.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for message in &seen {
        assert!(!message.windows(PROXY.len()).any(|w| w == PROXY.as_bytes()));
    }
    let state = std::fs::read_to_string(&dump.path).unwrap();
    assert!(state.contains("surbs"), "{state}");
    assert!(!state.contains(PROXY), "{state}");

    // A target off the allow-list is refused with SOCKS "not allowed" (2).
    let other = http_server(b"x".to_vec()).await;
    let (_, code) = tokio::time::timeout(Duration::from_secs(60), socks_connect(proxy_addr, other))
        .await
        .unwrap();
    assert_eq!(code, 2);
}

/// Replies through SURBs get lost (every 25th here, the last ones too): the proxy
/// acknowledges what came, the provider resends the rest, and the page arrives whole, each
/// byte once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_are_resent() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 11 % 251) as u8).collect();
    let web = http_server(body.clone()).await;
    let (proxy_addr, proxy_stats, provider_stats, _, _dump, lost) =
        lossy_relays(web, false, 25).await;
    assert_eq!(fetch(proxy_addr, web).await, body);
    assert!(lost.load(Ordering::Relaxed) > 0);
    assert!(proxy_stats.acks_sent.load(Ordering::Relaxed) > 0);
    assert_eq!(proxy_stats.reset.load(Ordering::Relaxed), 0);
    let service = &provider_stats.service;
    assert_eq!(service.replies_given_up.load(Ordering::Relaxed), 0);
    assert_eq!(service.surbs_stalled.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_address_replies_to_it() {
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let web = http_server(body.clone()).await;
    let (proxy_addr, proxy_stats, _, seen, _dump) = relays(web, true).await;
    assert_eq!(fetch(proxy_addr, web).await, body);
    assert_eq!(proxy_stats.surbs_topped_up.load(Ordering::Relaxed), 0);
    let seen = seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .any(|m| m.windows(PROXY.len()).any(|w| w == PROXY.as_bytes())));
}

/// A Connect of the first relay protocol (which carried the proxy's address) is answered
/// with a ConnectError saying to upgrade, in the format the old proxy reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_proxy_gets_a_clear_error() {
    let web = http_server(b"x".to_vec()).await;
    let (mut proxy_port, provider_port, _) = shuffling_mixnet();
    let stats = Arc::new(ProviderStats::default());
    let allow = AllowList::parse(&[format!("127.0.0.1:{}", web.port())]).unwrap();
    tokio::spawn(provider::run(provider_port, allow, stats.clone(), None));
    let mut old = vec![0x01];
    old.extend_from_slice(&7u64.to_be_bytes());
    for s in [PROXY, "127.0.0.1:80"] {
        old.extend_from_slice(&(s.len() as u16).to_be_bytes());
        old.extend_from_slice(s.as_bytes());
    }
    proxy_port
        .outgoing
        .send(Outgoing::Send {
            to: PROVIDER.into(),
            bytes: old,
            reply_surbs: 0,
        })
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), proxy_port.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.data[0], 0x83, "an old-format ConnectError");
    assert_eq!(answer.data[1..9], 7u64.to_be_bytes());
    let text = String::from_utf8_lossy(&answer.data[10..]);
    assert!(
        text.contains("version 1") && text.contains("upgrade"),
        "{text}"
    );
    assert_eq!(stats.service.old_protocol.load(Ordering::Relaxed), 1);
}
