//! Announcing a node to the directory authorities, for mixnodes and gateways alike: register
//! (retrying with backoff until accepted), then heartbeat; register again when an authority
//! answers 404 (it lost or dropped us). Each authority has its own task, backoff and state,
//! so one authority down or refusing does not hold up the others (a node must reach 2f+1
//! of them to be in the consensus). Runs on its own std thread with a current-thread tokio
//! runtime, so callers need no tokio (mixnodes run on glommio and std threads).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use zeroize::Zeroizing;

use super::client::{self, DirectoryClientError};
use crate::keyfile;
use crate::limits;
use crate::topology::{Descriptor, Role};

/// Where a node stands with its directory, for `/health` and `lethe_registration_state`.
/// With several authorities the node's state is the best of its per-authority states
/// (registered with one is registered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// No directory configured: the node runs unregistered on purpose.
    Unconfigured = 0,
    /// Not registered yet (or the directory forgot us), retrying.
    Unregistered = 1,
    /// The directory accepted the registration.
    Registered = 2,
    /// The directory refused the registration itself (4xx other than 429); still retrying,
    /// but an operator has to look.
    Rejected = 3,
}

impl RegistrationState {
    pub const ALL: [RegistrationState; 4] = [
        RegistrationState::Unconfigured,
        RegistrationState::Unregistered,
        RegistrationState::Registered,
        RegistrationState::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RegistrationState::Unconfigured => "unconfigured",
            RegistrationState::Unregistered => "unregistered",
            RegistrationState::Registered => "registered",
            RegistrationState::Rejected => "rejected",
        }
    }

    /// Order of "best" when several authorities' states are summed up as one.
    fn rank(self) -> u8 {
        match self {
            RegistrationState::Unconfigured => 0,
            RegistrationState::Unregistered => 1,
            RegistrationState::Rejected => 2,
            RegistrationState::Registered => 3,
        }
    }

    fn from_u8(value: u8) -> RegistrationState {
        match value {
            1 => RegistrationState::Unregistered,
            2 => RegistrationState::Registered,
            3 => RegistrationState::Rejected,
            _ => RegistrationState::Unconfigured,
        }
    }
}

/// The announcer's view of the registration, shared with the metrics/health endpoint (which
/// starts before the announcer: it needs the metrics address to announce).
#[derive(Debug, Default)]
pub struct RegistrationStatus {
    state: AtomicU8,
    /// Unix s of the last registration or heartbeat the directory accepted; 0: none yet.
    last_heartbeat_s: AtomicU64,
    /// The directory's heartbeat timeout (from its registration answer).
    heartbeat_timeout_s: AtomicU64,
}

impl RegistrationStatus {
    pub fn state(&self) -> RegistrationState {
        RegistrationState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: RegistrationState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn last_heartbeat_s(&self) -> u64 {
        self.last_heartbeat_s.load(Ordering::Relaxed)
    }

    pub fn heartbeat_timeout_s(&self) -> u64 {
        match self.heartbeat_timeout_s.load(Ordering::Relaxed) {
            0 => limits::HEARTBEAT_TIMEOUT_S_ASSUMED,
            timeout => timeout,
        }
    }

    fn accepted(&self, now_s: u64) {
        self.last_heartbeat_s.fetch_max(now_s, Ordering::Relaxed);
    }

    /// Sums up the per-authority statuses into this one: the best state, the latest
    /// acceptance, the longest timeout.
    fn combine(&self, each: &[Arc<RegistrationStatus>]) {
        let state = each
            .iter()
            .map(|s| s.state())
            .max_by_key(|s| s.rank())
            .unwrap_or(RegistrationState::Unregistered);
        self.set_state(state);
        for status in each {
            self.accepted(status.last_heartbeat_s());
            self.heartbeat_timeout_s.fetch_max(
                status.heartbeat_timeout_s.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }

    /// Whether the directory still lists us: registered, and heard from within its heartbeat
    /// timeout (after that it has dropped us, whatever our last answer was).
    pub fn is_current(&self, now_s: u64) -> bool {
        self.state() == RegistrationState::Registered
            && now_s.saturating_sub(self.last_heartbeat_s()) <= self.heartbeat_timeout_s()
    }
}

/// A running announcer; stops (promptly, abandoning any request in flight) on
/// [`Announcer::stop`] or drop.
pub struct Announcer {
    stop: tokio::sync::watch::Sender<bool>,
    descriptor: tokio::sync::watch::Sender<Descriptor>,
    status: Arc<RegistrationStatus>,
    serving: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// One per authority, in the order of `urls`.
    urls: Vec<String>,
    each: Arc<[Arc<RegistrationStatus>]>,
    seed: Zeroizing<[u8; 32]>,
}

impl Announcer {
    /// Whether this node's data plane serves (its liveness check): while it does not, no
    /// heartbeat is sent, so the directory drops the node from the next topology instead of
    /// routing traffic into it; heartbeats resume when it serves again.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Whether the directory accepted the registration and the last heartbeat was not refused
    /// as unknown.
    pub fn is_registered(&self) -> bool {
        self.status.state() == RegistrationState::Registered
    }

    /// The registration state, as `/health` and `/metrics` see it.
    pub fn status(&self) -> &Arc<RegistrationStatus> {
        &self.status
    }

    /// Announces a changed descriptor (a rotated Sphinx key): the task registers it at once,
    /// instead of its next heartbeat.
    pub fn update(&self, descriptor: Descriptor) {
        let _ = self.descriptor.send(descriptor);
    }

    /// The descriptor being announced.
    pub fn descriptor(&self) -> Descriptor {
        self.descriptor.borrow().clone()
    }

    /// Stops and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops heartbeating and tells every authority that registered us that we are leaving,
    /// so they drop us from the next document at once instead of after their heartbeat
    /// timeout (clients would route into a node that is gone until then). All at once, waiting
    /// at most [`limits::DEREGISTER_TIMEOUT_MS`]; a failure is logged, not fatal: the timeout
    /// still drops us.
    pub fn leave(mut self) {
        self.shutdown();
        let registered: Vec<String> = self
            .urls
            .iter()
            .zip(self.each.iter())
            .filter(|(_, status)| status.state() == RegistrationState::Registered)
            .map(|(url, _)| url.clone())
            .collect();
        if registered.is_empty() {
            return;
        }
        let mut left_all = true;
        for (url, result) in deregister_all_blocking(&registered, &self.seed) {
            match result {
                Ok(()) => tracing::info!(directory = %url, "deregistered"),
                // Removed already (by hand, or dropped for silence): what leaving wanted.
                Err(DeregisterError::Unknown) => {
                    tracing::info!(directory = %url, "directory no longer lists this node")
                }
                Err(e) => {
                    left_all = false;
                    tracing::warn!(directory = %url, error = %e, "deregistration failed")
                }
            }
        }
        if left_all {
            self.status.set_state(RegistrationState::Unregistered);
        }
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A descriptor for this node (its `issued_at_s` is set at each registration).
pub fn node_descriptor(
    identity_seed: &[u8; 32],
    role: Role,
    mix_address: std::net::SocketAddr,
    sphinx_public_key: &[u8; 32],
    rotation_id: u32,
    client_url: Option<String>,
    metrics_url: Option<String>,
) -> Descriptor {
    Descriptor {
        identity: keyfile::hex(&keyfile::ed25519_public(identity_seed)),
        sphinx_key: keyfile::hex(sphinx_public_key),
        rotation_id,
        mix_address,
        role,
        client_url,
        metrics_url,
        family: None,
        issued_at_s: 0,
    }
}

/// Starts announcing `descriptor` (its `issued_at_s` is replaced by the signing time at each
/// registration) to every authority of `directory_urls`, each independently, signed with
/// `identity_seed`. `status` is shared with the metrics/health endpoint (the best of the
/// authorities' states); it is set to unregistered here.
pub fn spawn_announcer(
    directory_urls: &[String],
    identity_seed: &[u8; 32],
    descriptor: Descriptor,
    heartbeat_interval: Duration,
    status: Arc<RegistrationStatus>,
) -> std::io::Result<Announcer> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (descriptor_tx, descriptor_rx) = tokio::sync::watch::channel(descriptor);
    status.set_state(RegistrationState::Unregistered);
    let serving = Arc::new(AtomicBool::new(true));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let urls: Vec<String> = directory_urls.to_vec();
    let each: Arc<[Arc<RegistrationStatus>]> = urls
        .iter()
        .map(|_| {
            let own = Arc::new(RegistrationStatus::default());
            own.set_state(RegistrationState::Unregistered);
            own
        })
        .collect();
    let tasks: Vec<Task> = urls
        .iter()
        .enumerate()
        .map(|(index, url)| Task {
            url: url.clone(),
            seed: Zeroizing::new(*identity_seed),
            descriptor: descriptor_rx.clone(),
            interval: heartbeat_interval.max(Duration::from_millis(
                crate::limits::HEARTBEAT_INTERVAL_MS_MIN,
            )),
            own: each[index].clone(),
            each: each.clone(),
            status: status.clone(),
            serving: serving.clone(),
        })
        .collect();
    let thread = std::thread::Builder::new()
        .name("lethe-announce".into())
        .spawn(move || {
            runtime.block_on(futures_util::future::join_all(
                tasks.into_iter().map(|task| task.run(stopped.clone())),
            ));
        })?;
    Ok(Announcer {
        stop,
        descriptor: descriptor_tx,
        status,
        serving,
        thread: Some(thread),
        urls,
        each,
        seed: Zeroizing::new(*identity_seed),
    })
}

/// The announcement to one authority.
struct Task {
    url: String,
    seed: Zeroizing<[u8; 32]>,
    descriptor: tokio::sync::watch::Receiver<Descriptor>,
    interval: Duration,
    /// This authority's view of us.
    own: Arc<RegistrationStatus>,
    /// Every authority's (this one's among them), summed up into `status`.
    each: Arc<[Arc<RegistrationStatus>]>,
    status: Arc<RegistrationStatus>,
    serving: Arc<AtomicBool>,
}

/// Runs `future` unless `stop` turns true first; `None` means stop.
async fn or_stop<T>(
    stop: &mut tokio::sync::watch::Receiver<bool>,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        value = future => Some(value),
        // Err: the sender is gone, which also means stop.
        _ = stop.wait_for(|s| *s) => None,
    }
}

fn is_unknown(e: &DirectoryClientError) -> bool {
    matches!(e, DirectoryClientError::Status { status: 404, .. })
}

/// A registration the directory refused for what it is (bad signature, clock, address
/// taken...), not for load (429) or its own trouble (5xx).
fn is_refusal(e: &DirectoryClientError) -> bool {
    matches!(e, DirectoryClientError::Status { status, .. }
        if (400..500).contains(status) && *status != 429)
}

/// `lethe mixnode|gateway deregister`: removes the node whose identity key is at
/// `identity_path` from every authority of `urls` at once (for a node that is gone, or before
/// maintenance; a running node registers again at its next heartbeat, which the authority
/// answers 404). Fails if any authority did not confirm.
pub fn deregister_command(identity_path: &std::path::Path, urls: &[String]) -> Result<(), String> {
    let seed = keyfile::read_private(identity_path)?;
    let identity = keyfile::hex(&keyfile::ed25519_public(&seed));
    let mut failures = Vec::new();
    for (url, result) in deregister_all_blocking(urls, &seed) {
        match result {
            Ok(()) => println!("deregistered identity={identity} from {url}"),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Why a deregistration did not go through.
#[derive(Debug, thiserror::Error)]
pub enum DeregisterError {
    /// The directory does not list this identity (404).
    #[error("the directory does not list this node")]
    Unknown,
    #[error("{0}")]
    Failed(String),
}

/// Sends a signed deregistration to each of `urls` at once, from a thread without a tokio
/// runtime, bounded by [`limits::DEREGISTER_TIMEOUT_MS`] in all; each URL's outcome.
pub fn deregister_all_blocking(
    urls: &[String],
    seed: &[u8; 32],
) -> Vec<(String, Result<(), DeregisterError>)> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return urls
                .iter()
                .map(|url| (url.clone(), Err(DeregisterError::Failed(e.to_string()))))
                .collect()
        }
    };
    runtime.block_on(async {
        let http = client::http_client();
        let each = urls.iter().map(|url| {
            let http = &http;
            async move {
                let result = match tokio::time::timeout(
                    Duration::from_millis(limits::DEREGISTER_TIMEOUT_MS),
                    client::deregister(http, url, seed),
                )
                .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) if is_unknown(&e) => Err(DeregisterError::Unknown),
                    Ok(Err(e)) => Err(DeregisterError::Failed(e.to_string())),
                    Err(_) => Err(DeregisterError::Failed(format!(
                        "directory {url}: no answer within {} s",
                        Duration::from_millis(limits::DEREGISTER_TIMEOUT_MS).as_secs()
                    ))),
                };
                (url.clone(), result)
            }
        });
        futures_util::future::join_all(each).await
    })
}

impl Task {
    fn set_state(&self, state: RegistrationState) {
        self.own.set_state(state);
        self.status.combine(&self.each);
    }

    fn accepted(&self, now_s: u64) {
        self.own.accepted(now_s);
        self.status.combine(&self.each);
    }
}

impl Task {
    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let http = client::http_client();
        // Logged with every line: which of the node's announcers speaks (a gateway has one).
        let (role, mix_address) = {
            let d = self.descriptor.borrow();
            (d.role, d.mix_address)
        };
        let mut backoff = Duration::from_millis(limits::ANNOUNCE_BACKOFF_MS_INITIAL);
        let mut failures = 0u32;
        loop {
            // Register until accepted.
            let descriptor = self.descriptor.borrow_and_update().clone();
            let registered = client::register(&http, &self.url, &self.seed, &descriptor);
            match or_stop(&mut stop, registered).await {
                None => return,
                Some(Ok(reply)) => {
                    tracing::info!(
                        %role,
                        %mix_address,
                        directory = %self.url,
                        "registered with the directory"
                    );
                    if let Some(timeout) = reply.heartbeat_timeout_s {
                        self.own
                            .heartbeat_timeout_s
                            .store(timeout, Ordering::Relaxed);
                    }
                    self.own.accepted(crate::topology::now_s());
                    self.set_state(RegistrationState::Registered);
                    backoff = Duration::from_millis(limits::ANNOUNCE_BACKOFF_MS_INITIAL);
                    failures = 0;
                }
                Some(Err(e)) => {
                    if is_refusal(&e) {
                        self.set_state(RegistrationState::Rejected);
                    }
                    // Log the first failure and then every tenth, not every retry.
                    if failures.is_multiple_of(10) {
                        tracing::warn!(
                            %role,
                            %mix_address,
                            directory = %self.url,
                            error = %e,
                            failures,
                            "registration failed; retrying"
                        );
                    }
                    failures = failures.saturating_add(1);
                    let delay = jitter(backoff);
                    backoff =
                        (backoff * 2).min(Duration::from_millis(limits::ANNOUNCE_BACKOFF_MS_MAX));
                    if or_stop(&mut stop, tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    continue;
                }
            }
            // Heartbeat until the directory no longer knows us.
            loop {
                let interval = self.interval;
                let changed = self.descriptor.changed();
                let wait = async {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => false,
                        result = changed => result.is_ok(),
                    }
                };
                match or_stop(&mut stop, wait).await {
                    None => return,
                    Some(true) => {
                        tracing::info!(
                            %role,
                            %mix_address,
                            "descriptor changed; registering again"
                        );
                        break;
                    }
                    Some(false) => {}
                }
                if !self.serving.load(Ordering::Relaxed) {
                    continue; // silent while the data plane does not serve
                }
                match or_stop(&mut stop, client::heartbeat(&http, &self.url, &self.seed)).await {
                    None => return,
                    Some(Ok(())) => {
                        self.accepted(crate::topology::now_s());
                        failures = 0;
                    }
                    Some(Err(e)) if is_unknown(&e) => {
                        tracing::warn!(
                            %role,
                            %mix_address,
                            directory = %self.url,
                            "the directory does not know us; registering again"
                        );
                        self.set_state(RegistrationState::Unregistered);
                        break;
                    }
                    Some(Err(e)) => {
                        if failures.is_multiple_of(10) {
                            tracing::warn!(
                                %role,
                                %mix_address,
                                directory = %self.url,
                                error = %e,
                                failures,
                                "heartbeat failed"
                            );
                        }
                        failures = failures.saturating_add(1);
                    }
                }
            }
        }
    }
}

/// `delay` scaled by a random factor in [0.5, 1.0): nodes restarted together spread out.
fn jitter(delay: Duration) -> Duration {
    use rand::RngExt;
    let factor: f64 = rand::rng().random_range(0.5..1.0);
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_promptly_while_retrying() {
        // Nothing listens on the discard port: registration keeps failing and backing off.
        let seed = [3u8; 32];
        let descriptor = node_descriptor(
            &seed,
            Role::Gateway,
            "127.0.0.1:1790".parse().unwrap(),
            &[4u8; 32],
            1,
            Some("ws://127.0.0.1:9000".into()),
            None,
        );
        let announcer = spawn_announcer(
            &["http://127.0.0.1:9".to_string()],
            &seed,
            descriptor,
            Duration::from_secs(1),
            Arc::new(RegistrationStatus::default()),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(!announcer.is_registered());
        let started = std::time::Instant::now();
        drop(announcer);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
