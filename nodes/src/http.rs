//! A tiny HTTP/1.1 responder for `/metrics` (Prometheus text) and `/health`, on its own std
//! threads and port, off the data plane. One request per connection, bounded request size and
//! time; each connection has its own thread, at most `HTTP_CONNECTIONS_MAX` at once, so a client that
//! sends one byte a second holds one slot for at most `REQUEST_TIME_MAX`, not the whole server.
//!
//! `/health` is 200 `{"status": "up"}` while the node serves, else 503 with the reason in
//! `status`, checked in this order:
//! - `stalled` / `failed`: the engine's liveness check ([`lethe_engine::runtime::liveness`])
//!   found a core whose loop stopped turning, or one that panicked;
//! - only for a node started with a directory: `unregistered` (not registered yet, or the
//!   directory forgot it and it is registering again), `rejected` (the directory refused
//!   the registration: see the node's log), `heartbeat_failing` (registered, but no
//!   heartbeat accepted for longer than the directory's heartbeat timeout, after which the
//!   directory has dropped the node).
//!
//! `/metrics` is the engine's series, then what every role publishes
//! ([`crate::prometheus::render_process`]), the node's own ([`NodeStatus`]: the memory it
//! states, registration, Sphinx key expiry), then the front-end's extra ones (the gateway's).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_engine::metrics::{render_prometheus, CoreMetrics};
use lethe_engine::runtime::{liveness, Health};

use crate::directory::announce::{RegistrationState, RegistrationStatus};
use crate::node::runtime_config::MemoryAccount;
use crate::prometheus::{family, sample, Kind};

use crate::limits::{HTTP_CONNECTIONS_MAX, HTTP_REQUEST_BYTES_MAX, HTTP_REQUEST_MS_MAX};

/// The whole request must arrive within this.
const REQUEST_TIME_MAX: Duration = Duration::from_millis(HTTP_REQUEST_MS_MAX);

/// Appends a front-end's own metrics (e.g. the gateway's) after the engine's.
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// A Sphinx key's rotation id and when it stops being accepted (Unix s; `None`: never, as
/// with rotation disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyExpiry {
    pub rotation_id: u32,
    pub expires_at_s: Option<u64>,
}

/// What the control plane knows of the node beyond the engine: its role, where it stands
/// with the directory, and its live Sphinx keys. Updated by the node's control loop and
/// announcer, read by `/health` and `/metrics`.
pub struct NodeStatus {
    pub role: &'static str,
    pub registration: Arc<RegistrationStatus>,
    sphinx_keys: Mutex<Vec<KeyExpiry>>,
    /// `None` until the node states it (the series are left out until then).
    memory: Mutex<Option<MemoryAccount>>,
}

impl NodeStatus {
    /// `registering`: the node was given a directory. It is then unregistered from the start
    /// (the endpoint serves before the announcer runs: it needs the metrics address), else
    /// [`RegistrationState::Unconfigured`].
    pub fn new(role: &'static str, registering: bool) -> Arc<NodeStatus> {
        crate::prometheus::mark_start();
        let registration = Arc::new(RegistrationStatus::default());
        if registering {
            registration.set_state(RegistrationState::Unregistered);
        }
        Arc::new(NodeStatus {
            role,
            registration,
            sphinx_keys: Mutex::new(Vec::new()),
            memory: Mutex::new(None),
        })
    }

    /// Replaces the live keys (after a rotation).
    pub fn set_sphinx_keys(&self, keys: Vec<KeyExpiry>) {
        *self.sphinx_keys.lock().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Replaces what the node states of its memory (at start, and when a rotation adds or
    /// drops a replay filter).
    pub fn set_memory(&self, memory: MemoryAccount) {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(memory);
    }

    fn render(&self, out: &mut String) {
        crate::prometheus::render_process(out, self.role);
        let memory = *self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(memory) = memory {
            crate::prometheus::gauge(
                out,
                "lethe_memory_bytes_max",
                "The most the node's sized allocations take: two replay filters (a key \
                 rotation's overlap), and on every core its packet pool and io_uring memory.",
                memory.bytes_max,
            );
            crate::prometheus::gauge(
                out,
                "lethe_memory_replay_filters_bytes",
                "Bytes of the replay filters held now: one per live Sphinx key, two during a \
                 rotation's overlap.",
                memory.replay_filters_bytes,
            );
        }
        let name = "lethe_sphinx_key_expiry_timestamp_seconds";
        family(
            out,
            name,
            Kind::Gauge,
            "When each live Sphinx key stops being accepted (Unix s; +Inf: never).",
        );
        let keys = self.sphinx_keys.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys.iter() {
            let rotation = key.rotation_id.to_string();
            let at_s = key.expires_at_s.map_or(f64::INFINITY, |s| s as f64);
            sample(out, name, &[("rotation", rotation.as_str())], at_s);
        }
        drop(keys);
        let name = "lethe_registration_state";
        family(
            out,
            name,
            Kind::Gauge,
            "1 for the node's state with its directory (unconfigured: no directory given).",
        );
        let state = self.registration.state();
        for each in RegistrationState::ALL {
            sample(
                out,
                name,
                &[("state", each.label())],
                u64::from(each == state),
            );
        }
        crate::prometheus::gauge(
            out,
            "lethe_last_heartbeat_timestamp_seconds",
            "When the directory last accepted this node's registration or heartbeat (Unix s; \
             0: never).",
            self.registration.last_heartbeat_s(),
        );
    }

    /// `/health`'s verdict on the registration: `None` if it does not hold the node back.
    fn registration_problem(&self, now_s: u64) -> Option<&'static str> {
        let registration = &self.registration;
        match registration.state() {
            RegistrationState::Unconfigured => None,
            RegistrationState::Unregistered => Some("unregistered"),
            RegistrationState::Rejected => Some("rejected"),
            RegistrationState::Registered if registration.is_current(now_s) => None,
            RegistrationState::Registered => Some("heartbeat_failing"),
        }
    }
}

/// Binds now (so the caller learns the port) and serves forever on a background thread.
pub fn serve(
    addr: SocketAddr,
    cores: Vec<Arc<CoreMetrics>>,
    status: Arc<NodeStatus>,
) -> Result<SocketAddr, String> {
    serve_with(addr, cores, status, None)
}

/// [`serve`], with `extra` rendered after the node's metrics.
pub fn serve_with(
    addr: SocketAddr,
    cores: Vec<Arc<CoreMetrics>>,
    status: Arc<NodeStatus>,
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
                if busy.fetch_add(1, Ordering::SeqCst) >= HTTP_CONNECTIONS_MAX {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropped: closes it
                }
                let (cores, extra, slot) = (cores.clone(), extra.clone(), busy.clone());
                let status = status.clone();
                let spawned = std::thread::Builder::new()
                    .name("lethe-metrics-conn".into())
                    .spawn(move || {
                        let node = Node {
                            cores: &cores,
                            status: &status,
                            extra: extra.as_ref(),
                        };
                        let _ = respond(stream, &node, started);
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

/// What a request is answered from.
struct Node<'a> {
    cores: &'a [Arc<CoreMetrics>],
    status: &'a NodeStatus,
    extra: Option<&'a ExtraMetrics>,
}

fn respond(mut stream: TcpStream, node: &Node<'_>, started: Instant) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIME_MAX;
    stream.set_write_timeout(Some(REQUEST_TIME_MAX))?;
    let mut request = [0u8; HTTP_REQUEST_BYTES_MAX];
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
            render_prometheus(node.cores, uptime_s, &mut body);
            node.status.render(&mut body);
            if let Some(extra) = node.extra {
                extra(&mut body);
            }
            ("200 OK", crate::prometheus::CONTENT_TYPE, body)
        }
        "/health" | "/api/v1/health" => {
            let (status, body) = health(node, uptime_s);
            (status, "application/json", body)
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

/// `/health`: the engine first (a stalled node is not serving whatever the directory says),
/// then the registration.
fn health(node: &Node<'_>, uptime_s: u64) -> (&'static str, String) {
    const UNAVAILABLE: &str = "503 Service Unavailable";
    let engine = liveness::check(node.cores, lethe_engine::runtime::monotonic_us());
    let registration = node.status.registration_problem(crate::topology::now_s());
    let (status, word, detail) = match (&engine, registration) {
        (Health::Stalled(_), _) => (UNAVAILABLE, "stalled", engine.to_string()),
        (Health::Failed(_), _) => (UNAVAILABLE, "failed", engine.to_string()),
        (Health::Serving, None) => ("200 OK", "up", engine.to_string()),
        (Health::Serving, Some(problem)) => {
            let r = &node.status.registration;
            let detail = match problem {
                "heartbeat_failing" => format!(
                    "no heartbeat accepted since {} (the directory drops a node after {} s)",
                    r.last_heartbeat_s(),
                    r.heartbeat_timeout_s()
                ),
                "rejected" => "the directory refused the registration: see the log".into(),
                _ => "not registered with the directory yet".into(),
            };
            (UNAVAILABLE, problem, detail)
        }
    };
    let detail = serde_json::to_string(&detail).unwrap_or_default();
    let registration = node.status.registration.state().label();
    let body = format!(
        "{{\"status\":\"{word}\",\"detail\":{detail},\"registration\":\"{registration}\",\
         \"uptime\":{uptime_s}}}\n"
    );
    (status, body)
}
