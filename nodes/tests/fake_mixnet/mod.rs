//! An in-memory "mixnet" for relay and service tests: two endpoints, each message delivered
//! after a random 0-30 ms (so out of order); reply SURBs are counted bundles, each one reply
//! back to the bundle's sender. [`lossy_mixnet`] also loses some replies (as a dead mixnode
//! on a SURB's route would).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_nodes::socks::relay::{Incoming, MixnetPort, Outgoing, ReplyOutcome};
use tokio::sync::mpsc;

pub const PROXY: &str = "proxy-address-that-the-provider-must-never-see";
pub const PROVIDER: &str = "provider";

/// What the fake mixnet saw: every message the provider received, whole.
pub type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// Two endpoints; each message is delivered after 0-30 ms. A message with reply SURBs gives
/// its recipient a bundle of that many, each one reply back to the sender.
pub fn shuffling_mixnet() -> (MixnetPort, MixnetPort, Seen) {
    lossy_mixnet(0)
}

/// [`shuffling_mixnet`] losing every `lose_every`-th reply through a SURB (none if 0): the
/// sender is told it was queued, and it never arrives. Counts the replies lost.
pub fn lossy_mixnet(lose_every: u64) -> (MixnetPort, MixnetPort, Seen) {
    let (a, b, seen, _) = lossy_mixnet_counted(lose_every);
    (a, b, seen)
}

/// [`lossy_mixnet`], also returning the count of replies lost.
pub fn lossy_mixnet_counted(
    lose_every: u64,
) -> (
    MixnetPort,
    MixnetPort,
    Seen,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let replies = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (to_proxy, proxy_in) = mpsc::channel::<Incoming>(1024);
    let (to_provider, provider_in) = mpsc::channel::<Incoming>(1024);
    let bundles: Arc<Mutex<HashMap<u64, (&'static str, usize)>>> = Arc::default();
    let seen: Seen = Arc::default();
    let endpoint = |from: &'static str| {
        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(1024);
        let bundles = bundles.clone();
        let seen = seen.clone();
        let (replies, lost) = (replies.clone(), lost.clone());
        let (to_proxy, to_provider) = (to_proxy.clone(), to_provider.clone());
        tokio::spawn(async move {
            let deliver = |to: &str, incoming: Incoming| {
                let target = match to {
                    PROXY => to_proxy.clone(),
                    PROVIDER => to_provider.clone(),
                    _ => return,
                };
                if to == PROVIDER {
                    seen.lock().unwrap().push(incoming.data.clone());
                }
                let delay = Duration::from_millis(rand::random::<u64>() % 30);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = target.send(incoming).await;
                });
            };
            while let Some(command) = out_rx.recv().await {
                match command {
                    Outgoing::Send {
                        to,
                        bytes,
                        reply_surbs,
                    } => {
                        let surb_bundle = (reply_surbs > 0).then(|| {
                            let id = rand::random::<u64>();
                            bundles.lock().unwrap().insert(id, (from, reply_surbs));
                            id
                        });
                        let incoming = Incoming {
                            data: bytes,
                            surb_bundle,
                            reply_surbs,
                        };
                        deliver(&to, incoming);
                    }
                    Outgoing::Reply {
                        bundle,
                        bytes,
                        sent,
                    } => {
                        let owner = {
                            let mut b = bundles.lock().unwrap();
                            match b.get_mut(&bundle) {
                                Some((owner, left)) if *left > 0 => {
                                    *left -= 1;
                                    Some(*owner)
                                }
                                _ => None,
                            }
                        };
                        let Some(owner) = owner else {
                            let _ = sent.send(ReplyOutcome::NoSurbs);
                            continue;
                        };
                        let _ = sent.send(ReplyOutcome::Queued);
                        let n = replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if lose_every > 0 && n % lose_every == 0 {
                            lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        let incoming = Incoming {
                            data: bytes,
                            surb_bundle: None,
                            reply_surbs: 0,
                        };
                        deliver(owner, incoming);
                    }
                    Outgoing::Discard { bundle } => {
                        bundles.lock().unwrap().remove(&bundle);
                    }
                }
            }
        });
        out_tx
    };
    (
        MixnetPort {
            outgoing: endpoint(PROXY),
            incoming: proxy_in,
            own_address: PROXY.into(),
            key_epochs: tokio::sync::watch::channel(Default::default()).1,
        },
        MixnetPort {
            outgoing: endpoint(PROVIDER),
            incoming: provider_in,
            own_address: PROVIDER.into(),
            key_epochs: tokio::sync::watch::channel(Default::default()).1,
        },
        seen,
        lost,
    )
}
