//! Writing a service provider: the driver of [`lethe_proto::service`] over a mixnet client.
//! [`Service::next`] hands over each user request with its sender tag (the SURBs that came
//! with it are already stored under the tag); a [`Responder`] answers a tag through its SURBs
//! (one per response of at most [`RESPONSE_BODY_BYTES_MAX`] bytes), asking the user for more
//! before they run out, or to the address the user revealed. Responses through SURBs are
//! numbered and kept until the user acknowledges them ([`ToService::Ack`]); a background
//! task resends lost ones through fresh SURBs ([`lethe_proto::service::replies`]). The
//! SOCKS5 provider
//! (`socks::provider`) and `examples/anon_echo.rs` are built on it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_proto::limits::SERVICE_GAP_GIVE_UP_US;
use lethe_proto::service::replies::{NotKept, ReplyBuffer, ReplyCounters};
use lethe_proto::service::{
    EnvelopeError, FromService, KeyEpochs, SurbStore, SurbsRefused, ToService, Use,
};
pub use lethe_proto::service::{SenderTag, RESPONSE_BODY_BYTES_MAX};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::limits::{SERVICE_RESEND_TICK_MS, SERVICE_SURB_WAIT_MS, SERVICE_SURB_WAIT_TICK_MS};
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
    /// Responses given up because the user acknowledged nothing for [`SERVICE_SURB_WAIT_MS`] while the
    /// conversation's window was full.
    pub window_stalled: AtomicU64,
    /// Conversations given up: a response was resent as often as it may be.
    pub replies_given_up: AtomicU64,
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
    /// Responses through SURBs not yet acknowledged.
    replies: Arc<Mutex<ReplyBuffer>>,
    /// Woken whenever SURBs or acknowledgements arrive, or a conversation is given up.
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
    /// false if it cannot be (its SURBs ran out and none came within [`SERVICE_SURB_WAIT_MS`], nothing
    /// was acknowledged for as long while its window was full, the conversation was given
    /// up, or the client stopped). Through SURBs, `body` must fit [`RESPONSE_BODY_BYTES_MAX`];
    /// it is kept until the user acknowledges it, and resent if lost.
    pub async fn respond(&self, tag: &SenderTag, reply_to: Option<&str>, body: Vec<u8>) -> bool {
        match reply_to {
            Some(to) => {
                // The client core acknowledges and resends forward messages itself: numbered
                // (the user drops duplicates by number), not kept.
                let numbered = match self.replies.lock() {
                    Ok(mut r) => r.number(tag, self.now_us()),
                    Err(_) => return false,
                };
                let Ok(seq) = numbered else { return false };
                let bytes = FromService::Response {
                    tag: *tag,
                    seq,
                    body,
                }
                .encode();
                self.outgoing
                    .send(Outgoing::Send {
                        to: to.to_string(),
                        bytes,
                        reply_surbs: 0,
                    })
                    .await
                    .is_ok()
            }
            None => match self.keep(tag, body).await {
                Some(bytes) => self.through_surbs(tag, bytes).await,
                None => false,
            },
        }
    }

    /// Numbers `body` and keeps it until acknowledged, waiting (at most [`SERVICE_SURB_WAIT_MS`]) while
    /// the conversation's window is full; the bytes to send.
    async fn keep(&self, tag: &SenderTag, body: Vec<u8>) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SERVICE_SURB_WAIT_MS);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let kept = self.replies.lock().ok()?.keep(tag, self.now_us(), |seq| {
                FromService::Response {
                    tag: *tag,
                    seq,
                    body: body.clone(),
                }
                .encode()
            });
            match kept {
                Ok((_, bytes)) => return Some(bytes),
                Err(NotKept::Window | NotKept::Full) => {}
                Err(NotKept::Tags | NotKept::GivenUp) => return None,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.stats.window_stalled.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let _ = tokio::time::timeout_at(
                deadline.min(now + Duration::from_millis(SERVICE_SURB_WAIT_TICK_MS)),
                arrived,
            )
            .await;
        }
    }

    /// Waits until every response to `tag` is acknowledged (or the conversation is given
    /// up, or [`SERVICE_GAP_GIVE_UP_US`] passes: the user has given up by then); true if all
    /// were. Call before [`Self::forget`], which drops what is not acknowledged.
    pub async fn settle(&self, tag: &SenderTag) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_micros(SERVICE_GAP_GIVE_UP_US);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match self.replies.lock() {
                Ok(r) if r.given_up(tag) => return false,
                Ok(r) if r.pending(tag) == 0 => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(
                deadline.min(now + Duration::from_millis(SERVICE_SURB_WAIT_TICK_MS)),
                arrived,
            )
            .await;
        }
    }

    /// What the provider counted of its numbered responses.
    pub fn reply_counters(&self) -> ReplyCounters {
        self.replies
            .lock()
            .map(|r| r.counters())
            .unwrap_or_default()
    }

    fn given_up(&self, tag: &SenderTag) -> bool {
        self.replies.lock().map_or(true, |r| r.given_up(tag))
    }

    /// Asks `tag`'s user for more SURBs if it is time to (through one of the tag's SURBs);
    /// false if the client stopped.
    async fn ask_if_low(&self, tag: &SenderTag) -> bool {
        let now_us = self.now_us();
        let epochs = *self.key_epochs.borrow();
        let (ask, dropped) = match self.surbs.lock() {
            Ok(mut s) => {
                s.set_key_epochs(epochs, now_us);
                let ask = s
                    .wants_more(tag, now_us)
                    .and_then(|wanted| Some((s.take(tag, Use::Ask, now_us)?, wanted)));
                (ask, s.take_dropped())
            }
            Err(_) => return false,
        };
        for bundle in dropped {
            self.discard(Some(bundle));
        }
        let Some((bundle, wanted)) = ask else {
            return true;
        };
        let more = FromService::MoreSurbs { tag: *tag, wanted }.encode();
        self.reply_through(tag, bundle, more).await != ReplyOutcome::Failed
    }

    /// One SURB of `tag` for a response (the newest for a resend), discarding in the client
    /// core the bundles the store dropped meanwhile (retired keys).
    fn take_surb(&self, tag: &SenderTag, newest: bool) -> Option<u64> {
        let now_us = self.now_us();
        let (bundle, dropped) = match self.surbs.lock() {
            Ok(mut s) => {
                let bundle = if newest {
                    s.take_newest(tag, now_us)
                } else {
                    s.take(tag, Use::Reply, now_us)
                };
                (bundle, s.take_dropped())
            }
            Err(_) => return None,
        };
        for old in dropped {
            self.discard(Some(old));
        }
        bundle
    }

    /// Resends what is due, until the client stops.
    async fn resend_lost(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(SERVICE_RESEND_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let due = match self.replies.lock() {
                Ok(mut r) => r.due(self.now_us()),
                Err(_) => return,
            };
            if !due.given_up.is_empty() {
                self.stats
                    .replies_given_up
                    .fetch_add(due.given_up.len() as u64, Ordering::Relaxed);
                self.arrived.notify_waiters();
            }
            for (tag, seq) in due.resend {
                if !self.ask_if_low(&tag).await {
                    return;
                }
                let bundle = self.take_surb(&tag, true);
                // No SURB now: it stays due, for the next tick.
                let Some(bundle) = bundle else { continue };
                let bytes = match self.replies.lock() {
                    Ok(mut r) => r.resend(&tag, seq, self.now_us()),
                    Err(_) => return,
                };
                // Acknowledged since `due` (the SURB is spent all the same: rare).
                let Some(bytes) = bytes else { continue };
                if self.reply_through(&tag, bundle, bytes).await == ReplyOutcome::Failed {
                    return;
                }
            }
        }
    }

    async fn through_surbs(&self, tag: &SenderTag, bytes: Vec<u8>) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SERVICE_SURB_WAIT_MS);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.given_up(tag) || !self.ask_if_low(tag).await {
                return false;
            }
            let bundle = self.take_surb(tag, false);
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

    /// The conversation under `tag` is over: its SURBs and unacknowledged responses are
    /// discarded.
    pub fn forget(&self, tag: &SenderTag) {
        if let Ok(mut r) = self.replies.lock() {
            r.forget(tag);
        }
        let bundles = match self.surbs.lock() {
            Ok(mut s) => s.forget(tag),
            Err(_) => return,
        };
        for bundle in bundles {
            let _ = self.outgoing.try_send(Outgoing::Discard { bundle });
        }
    }

    /// A debug dump of the SURBs held (tags, bundle ids, counts) and of the responses kept
    /// (counts only).
    pub fn dump(&self) -> String {
        let surbs = self
            .surbs
            .lock()
            .map(|s| format!("{s:#?}"))
            .unwrap_or_default();
        let replies = self
            .replies
            .lock()
            .map(|r| format!("{r:#?}"))
            .unwrap_or_default();
        format!("{surbs}\n{replies}")
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
    /// The resend task, stopped with the service.
    resender: tokio::task::AbortHandle,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.resender.abort();
    }
}

impl Service {
    /// Starts the resend task: call within a tokio runtime.
    pub fn new(port: MixnetPort, stats: Arc<ServiceStats>) -> Service {
        let responder = Responder {
            outgoing: port.outgoing,
            surbs: Arc::new(Mutex::new(SurbStore::new())),
            replies: Arc::new(Mutex::new(ReplyBuffer::new())),
            arrived: Arc::new(Notify::new()),
            key_epochs: port.key_epochs,
            started: Instant::now(),
            stats,
        };
        let resender = tokio::spawn(responder.clone().resend_lost()).abort_handle();
        Service {
            incoming: port.incoming,
            responder,
            resender,
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
                // Carries no SURBs.
                ToService::Ack { tag, .. } => (*tag, 0),
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
            match envelope {
                ToService::Request {
                    tag,
                    reply_to,
                    body,
                    ..
                } => {
                    return Some(Received::Request(Request {
                        tag,
                        reply_to,
                        body,
                    }))
                }
                ToService::Ack { tag, ack } => {
                    let now_us = self.responder.now_us();
                    if let Ok(mut r) = self.responder.replies.lock() {
                        if r.ack(&tag, &ack, now_us) > 0 {
                            self.responder.arrived.notify_waiters();
                        }
                    }
                }
                ToService::Surbs { .. } => {}
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
