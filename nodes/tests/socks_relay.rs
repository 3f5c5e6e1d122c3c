//! The SOCKS5 proxy and the service provider relaying over an in-memory "mixnet" that
//! delivers every message after a random delay (so out of order), fetching a page from a
//! local HTTP server. The real-mixnet version lives in the network tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use lethe_nodes::socks::provider::{self, ProviderStats};
use lethe_nodes::socks::proxy::{self, ProxyStats};
use lethe_nodes::socks::relay::{MixnetPort, Outgoing};
use lethe_nodes::socks::socks5::AllowList;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Two endpoints, "proxy" and "provider"; each message is delivered after 0-30 ms.
fn shuffling_mixnet() -> (MixnetPort, MixnetPort) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(1024);
    let (to_proxy, proxy_in) = mpsc::channel(1024);
    let (to_provider, provider_in) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let target = match message.to.as_str() {
                "proxy" => to_proxy.clone(),
                "provider" => to_provider.clone(),
                _ => continue,
            };
            let delay = Duration::from_millis(rand::random::<u64>() % 30);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = target.send(message.bytes).await;
            });
        }
    });
    (
        MixnetPort {
            outgoing: out_tx.clone(),
            incoming: proxy_in,
            own_address: "proxy".into(),
        },
        MixnetPort {
            outgoing: out_tx,
            incoming: provider_in,
            own_address: "provider".into(),
        },
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_through_reordering_relay() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let web = http_server(body.clone()).await;
    let (proxy_port, provider_port) = shuffling_mixnet();
    let allow = AllowList::parse(&[format!("127.0.0.1:{}", web.port())]).unwrap();
    tokio::spawn(provider::run(
        provider_port,
        allow,
        Arc::new(ProviderStats::default()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::run(
        listener,
        proxy_port,
        "provider".into(),
        Arc::new(ProxyStats::default()),
    ));

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
    assert_eq!(&fetched[split..], &body[..]);

    // A target off the allow-list is refused with SOCKS "not allowed" (2).
    let other = http_server(b"x".to_vec()).await;
    let (_, code) = tokio::time::timeout(Duration::from_secs(60), socks_connect(proxy_addr, other))
        .await
        .unwrap();
    assert_eq!(code, 2);
}
