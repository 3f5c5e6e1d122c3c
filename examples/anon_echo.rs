//! An anonymous echo service: answers each request with its own bytes, through the reply
//! SURBs the user sent, never learning who the user is. The smallest provider on
//! `lethe_nodes::service`; the SOCKS5 provider is the same loop with TCP behind it.
//!
//! ```sh
//! lethe client init --dir echo --directory URL --directory-key KEY   # a client for the provider
//! cargo run --release -p lethe-nodes --example anon_echo -- echo     # prints address=...
//! ```
//! A user sends `lethe_proto::service::ToService::Request` to that address with reply SURBs
//! attached; each response (`FromService::Response`, same tag) carries one SURB's worth.

use std::sync::Arc;

use lethe_nodes::service::{Received, Responder, Service, ServiceStats, RESPONSE_BODY_BYTES_MAX};
use lethe_nodes::socks::relay::MixnetPort;

/// Serves echo requests from `port` until the mixnet client stops.
pub async fn serve(port: MixnetPort, stats: Arc<ServiceStats>) {
    let mut service = Service::new(port, stats);
    while let Some(received) = service.next().await {
        // Other envelope versions get no answer: an echo has no older format to speak.
        let Received::Request(request) = received else {
            continue;
        };
        let responder: Responder = service.responder();
        // One task per request: a response waiting for SURBs holds up no other user.
        tokio::spawn(async move {
            // Long requests come back in SURB-sized pieces.
            for piece in request.body.chunks(RESPONSE_BODY_BYTES_MAX) {
                let sent = responder
                    .respond(&request.tag, request.reply_to.as_deref(), piece.to_vec())
                    .await;
                if !sent {
                    break;
                }
            }
        });
    }
}

#[allow(dead_code)]
fn main() -> Result<(), String> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: anon_echo CLIENT_DIR")?;
    let traffic = lethe_nodes::client::cli::TrafficArgs::default();
    let trace = lethe_nodes::client::trace::ClientTraceArgs::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (handle, received) =
            lethe_nodes::socks::cli::start_client(std::path::Path::new(&dir), &traffic, &trace)
                .await?;
        println!("address={}", handle.address());
        let port = lethe_nodes::socks::cli::bridge(handle.clone(), received);
        tokio::select! {
            () = serve(port, Arc::default()) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        handle.shutdown(std::time::Duration::from_secs(2)).await;
        Ok(())
    })
}
