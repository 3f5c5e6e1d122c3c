//! A tiny HTTP/1.1 responder for `/metrics` (Prometheus text) and `/health`, on its own std
//! threads and port, off the data plane. One request per connection, bounded request size and
//! time; each connection has its own thread, at most `CONNECTIONS_MAX` at once, so a client that
//! sends one byte a second holds one slot for at most `REQUEST_TIME_MAX`, not the whole server.
//!
//! `/health` is the engine's liveness check ([`lethe_engine::runtime::liveness`]): 200 while
//! every core's loop turns, 503 when one is stalled or a core panicked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lethe_engine::metrics::{render_prometheus, CoreMetrics};
use lethe_engine::runtime::{liveness, Health};

const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Requests served at once; more are closed unanswered (counted nowhere: scrapers retry).
const CONNECTIONS_MAX: usize = 16;
/// The whole request must arrive within this.
const REQUEST_TIME_MAX: Duration = Duration::from_secs(2);

/// Appends a front-end's own metrics (e.g. the gateway's) after the engine's.
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Binds now (so the caller learns the port) and serves forever on a background thread.
pub fn serve(addr: SocketAddr, cores: Vec<Arc<CoreMetrics>>) -> Result<SocketAddr, String> {
    serve_with(addr, cores, None)
}

/// [`serve`], with `extra` rendered after the engine's metrics.
pub fn serve_with(
    addr: SocketAddr,
    cores: Vec<Arc<CoreMetrics>>,
    extra: Option<ExtraMetrics>,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let started = Instant::now();
    std::thread::Builder::new()
        .name("lethe-metrics".into())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            // Serves until the process exits; a failed accept is skipped.
            for stream in listener.incoming().flatten() {
                if busy.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropped: closes it
                }
                let (cores, extra, slot) = (cores.clone(), extra.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("lethe-metrics-conn".into())
                    .spawn(move || {
                        let _ = respond(stream, &cores, extra.as_ref(), started);
                        slot.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}

fn respond(
    mut stream: TcpStream,
    cores: &[Arc<CoreMetrics>],
    extra: Option<&ExtraMetrics>,
    started: Instant,
) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIME_MAX;
    stream.set_write_timeout(Some(REQUEST_TIME_MAX))?;
    let mut request = [0u8; REQUEST_BYTES_MAX];
    let mut len = 0;
    while len < request.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut request[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&request[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let uptime_s = started.elapsed().as_secs();
    let (status, content_type, body) = match path {
        "/metrics" | "/api/v1/metrics/prometheus" => {
            let mut body = String::with_capacity(16 * 1024);
            render_prometheus(cores, uptime_s, &mut body);
            if let Some(extra) = extra {
                extra(&mut body);
            }
            ("200 OK", "text/plain; version=0.0.4", body)
        }
        "/health" | "/api/v1/health" => {
            let health = liveness::check(cores, lethe_engine::runtime::monotonic_us());
            let (status, word) = match &health {
                Health::Serving => ("200 OK", "up"),
                Health::Stalled(_) => ("503 Service Unavailable", "stalled"),
                Health::Failed(_) => ("503 Service Unavailable", "failed"),
            };
            let detail = serde_json::to_string(&health.to_string()).unwrap_or_default();
            (
                status,
                "application/json",
                format!("{{\"status\":\"{word}\",\"detail\":{detail},\"uptime\":{uptime_s}}}\n"),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}
