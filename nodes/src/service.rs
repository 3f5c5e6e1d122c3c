//! Writing a service provider: the driver of [`lethe_proto::service`] over a mixnet client.
//! [`Service::next`] hands over each user request with its sender tag (the SURBs that came
//! with it are already stored under the tag); a [`Responder`] answers a tag through its SURBs
//! (one per response of at most [`RESPONSE_BODY_BYTES_MAX`] bytes), asking the user for more
//! before they run out, or to the address the user revealed. The SOCKS5 provider
//! (`socks::provider`) and `examples/anon_echo.rs` are built on it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_proto::service::{
    EnvelopeError, FromService, KeyEpochs, SurbStore, SurbsRefused, ToService, Use,
};
pub use lethe_proto::service::{SenderTag, RESPONSE_BODY_BYTES_MAX};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::limits::{SERVICE_SURB_WAIT_MS, SERVICE_SURB_WAIT_TICK_MS};
use crate::socks::relay::{Incoming, MixnetPort, Outgoing, ReplyOutcome};

#[derive(Default, Debug)]
pub struct ServiceStats {
    /// Messages in another envelope version (a user to upgrade, or this provider).
    pub old_protocol: AtomicU64,
    pub malformed: AtomicU64,
    /// SURB bundles refused: a tag's or the provider's bound was reached, or they were built
    /// for mixnode keys the tag's newer SURBs replaced.
    pub surbs_refused: AtomicU64,
    /// Responses given up because their tag's SURBs ran out and none came.
    pub surbs_stalled: AtomicU64,
}

/// A user's request.
#[derive(Debug)]
pub struct Request {
    pub tag: SenderTag,
    /// The user's address, only if it chose to reveal it (answer to it, not through SURBs).
    pub reply_to: Option<String>,
    pub body: Vec<u8>,
}

/// What [`Service::next`] hands over.
#[derive(Debug)]
pub enum Received {
    Request(Request),
    /// A message in another envelope version, whole (a service may know the old format and
    /// tell its sender to upgrade).
    OtherVersion(Vec<u8>),
}

/// Answers users; cheap to clone (one per connection or task).
#[derive(Clone)]
pub struct Responder {
    outgoing: mpsc::Sender<Outgoing>,
    surbs: Arc<Mutex<SurbStore>>,
    /// Woken whenever SURBs arrive.
    arrived: Arc<Notify>,
    /// The mixnode key rotations our topology shows: which SURBs are retiring.
    key_epochs: watch::Receiver<KeyEpochs>,
    started: Instant,
    stats: Arc<ServiceStats>,
}

impl Responder {
    fn now_us(&self) -> u64 {
        lethe_proto::duration_us(self.started.elapsed())
    }

    /// Queues `body` for the user behind `tag` (to `reply_to` if it revealed its address);
    /// false if it cannot be (its SURBs ran out and none came within
    /// [`SERVICE_SURB_WAIT_MS`], or the
    /// client stopped). Through SURBs, `body` must fit [`RESPONSE_BODY_BYTES_MAX`].
    pub async fn respond(&self, tag: &SenderTag, reply_to: Option<&str>, body: Vec<u8>) -> bool {
        let bytes = FromService::Response { tag: *tag, body }.encode();
        match reply_to {
            Some(to) => self
                .outgoing
                .send(Outgoing::Send {
                    to: to.to_string(),
                    bytes,
                    reply_surbs: 0,
                })
                .await
                .is_ok(),
            None => self.through_surbs(tag, bytes).await,
        }
    }

    async fn through_surbs(&self, tag: &SenderTag, bytes: Vec<u8>) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SERVICE_SURB_WAIT_MS);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now_us = self.now_us();
            let epochs = *self.key_epochs.borrow();
            let (bundle, ask, dropped) = match self.surbs.lock() {
                Ok(mut s) => {
                    s.set_key_epochs(epochs, now_us);
                    let ask = s
                        .wants_more(tag, now_us)
                        .and_then(|wanted| Some((s.take(tag, Use::Ask, now_us)?, wanted)));
                    (s.take(tag, Use::Reply, now_us), ask, s.take_dropped())
                }
                Err(_) => return false,
            };
            for bundle in dropped {
                self.discard(Some(bundle));
            }
            if let Some((ask_bundle, wanted)) = ask {
                let more = FromService::MoreSurbs { tag: *tag, wanted }.encode();
                if self.reply_through(tag, ask_bundle, more).await == ReplyOutcome::Failed {
                    return false;
                }
            }
            if let Some(bundle) = bundle {
                match self.reply_through(tag, bundle, bytes.clone()).await {
                    ReplyOutcome::Queued => return true,
                    ReplyOutcome::NoSurbs => continue,
                    ReplyOutcome::Failed => return false,
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.stats.surbs_stalled.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let _ = tokio::time::timeout_at(
                deadline.min(now + Duration::from_millis(SERVICE_SURB_WAIT_TICK_MS)),
                arrived,
            )
            .await;
        }
    }

    async fn reply_through(&self, tag: &SenderTag, bundle: u64, bytes: Vec<u8>) -> ReplyOutcome {
        let (sent, outcome) = oneshot::channel();
        let command = Outgoing::Reply {
            bundle,
            bytes,
            sent,
        };
        if self.outgoing.send(command).await.is_err() {
            return ReplyOutcome::Failed;
        }
        let outcome = outcome.await.unwrap_or(ReplyOutcome::Failed);
        if outcome == ReplyOutcome::NoSurbs {
            if let Ok(mut s) = self.surbs.lock() {
                s.vanished(tag, bundle);
            }
        }
        outcome
    }

    /// The conversation under `tag` is over: its SURBs are discarded.
    pub fn forget(&self, tag: &SenderTag) {
        let bundles = match self.surbs.lock() {
            Ok(mut s) => s.forget(tag),
            Err(_) => return,
        };
        for bundle in bundles {
            let _ = self.outgoing.try_send(Outgoing::Discard { bundle });
        }
    }

    /// A debug dump of the SURBs held (tags, bundle ids, counts).
    pub fn dump(&self) -> String {
        self.surbs
            .lock()
            .map(|s| format!("{s:#?}"))
            .unwrap_or_default()
    }

    /// Sends an ordinary message (no SURBs) to an address.
    pub fn send_to(&self, to: String, bytes: Vec<u8>) {
        let _ = self.outgoing.try_send(Outgoing::Send {
            to,
            bytes,
            reply_surbs: 0,
        });
    }

    fn discard(&self, bundle: Option<u64>) {
        if let Some(bundle) = bundle {
            let _ = self.outgoing.try_send(Outgoing::Discard { bundle });
        }
    }
}

/// A provider's end of the mixnet.
pub struct Service {
    incoming: mpsc::Receiver<Incoming>,
    responder: Responder,
}

impl Service {
    pub fn new(port: MixnetPort, stats: Arc<ServiceStats>) -> Service {
        Service {
            incoming: port.incoming,
            responder: Responder {
                outgoing: port.outgoing,
                surbs: Arc::new(Mutex::new(SurbStore::new())),
                arrived: Arc::new(Notify::new()),
                key_epochs: port.key_epochs,
                started: Instant::now(),
                stats,
            },
        }
    }

    pub fn responder(&self) -> Responder {
        self.responder.clone()
    }

    /// The next request; `None` once the mixnet client stopped. SURBs that came with it are
    /// stored under its tag (or refused and discarded, counted); messages carrying only
    /// SURBs and malformed ones are handled here. Cancel-safe: it awaits only the next
    /// message, and handles one whole before it awaits again.
    pub async fn next(&mut self) -> Option<Received> {
        let stats = &self.responder.stats;
        loop {
            let message = self.incoming.recv().await?;
            let envelope = match ToService::decode(&message.data) {
                Ok(e) => e,
                Err(EnvelopeError::Version(_)) => {
                    stats.old_protocol.fetch_add(1, Ordering::Relaxed);
                    self.responder.discard(message.surb_bundle);
                    return Some(Received::OtherVersion(message.data));
                }
                Err(EnvelopeError::Malformed(_)) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.responder.discard(message.surb_bundle);
                    continue;
                }
            };
            let (tag, key_epoch) = match &envelope {
                ToService::Request { tag, key_epoch, .. } | ToService::Surbs { tag, key_epoch } => {
                    (*tag, *key_epoch)
                }
            };
            if let Some(bundle) = message.surb_bundle {
                let now_us = self.responder.now_us();
                let epochs = *self.responder.key_epochs.borrow();
                let (added, dropped) = match self.responder.surbs.lock() {
                    Ok(mut s) => {
                        s.set_key_epochs(epochs, now_us);
                        let added = s.add(tag, bundle, message.reply_surbs, key_epoch, now_us);
                        (added, s.take_dropped())
                    }
                    Err(_) => (Err(SurbsRefused::StoreFull), Vec::new()),
                };
                for old in dropped {
                    self.responder.discard(Some(old));
                }
                match added {
                    Ok(()) => self.responder.arrived.notify_waiters(),
                    Err(refused) => {
                        stats.surbs_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%refused, "SURBs refused");
                        self.responder.discard(Some(bundle));
                    }
                }
            }
            if let ToService::Request {
                tag,
                reply_to,
                body,
                ..
            } = envelope
            {
                return Some(Received::Request(Request {
                    tag,
                    reply_to,
                    body,
                }));
            }
        }
    }
}

/// Writes `text` to `path` whole (a temporary file renamed over it).
pub fn write_dump(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(error = %e, path = %path.display(), "state dump not written");
    }
}
