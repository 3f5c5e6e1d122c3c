//! `examples/anon_echo.rs`, the second provider on `lethe_nodes::service`, over the in-memory
//! mixnet: a user sends requests under a sender tag with reply SURBs and gets its bytes back
//! through them, more than its first SURBs carry (the provider asks for more, the user sends
//! them), numbered and acknowledged; the provider never sees the user's address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lethe_nodes::service::{ServiceStats, RESPONSE_BODY_BYTES_MAX};
use lethe_nodes::socks::relay::Outgoing;
use lethe_proto::service::replies::{Arrival, ReplyTracker, UserAction};
use lethe_proto::service::{FromService, SenderTag, ToService};

mod fake_mixnet;
use fake_mixnet::{shuffling_mixnet, PROVIDER, PROXY};

#[allow(dead_code)]
#[path = "../../examples/anon_echo.rs"]
mod anon_echo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_surbs_with_top_ups() {
    let (mut user, provider, seen) = shuffling_mixnet();
    let stats = Arc::new(ServiceStats::default());
    tokio::spawn(anon_echo::serve(provider, stats.clone()));

    // 100 SURB-sized pieces: far more than the 8 SURBs sent with the request.
    let tag = SenderTag([7; 16]);
    let body: Vec<u8> = (0..100 * RESPONSE_BODY_BYTES_MAX)
        .map(|i| (i % 253) as u8)
        .collect();
    let request = ToService::Request {
        tag,
        key_epoch: 0,
        reply_to: None,
        body: body.clone(),
    };
    user.outgoing
        .send(Outgoing::Send {
            to: PROVIDER.into(),
            bytes: request.encode(),
            reply_surbs: 8,
        })
        .await
        .unwrap();

    let mut echoed = Vec::new();
    let mut asks = 0;
    let mut tracker = ReplyTracker::new();
    let started = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Pieces arrive in any order: collect them, then compare as multisets of pieces.
    while echoed.len() < 100 {
        let message = tokio::time::timeout_at(deadline, user.incoming.recv())
            .await
            .expect("the echo stalled")
            .unwrap();
        match FromService::decode(&message.data).unwrap() {
            FromService::Response { tag: t, seq, body } => {
                assert_eq!(t, tag);
                // Numbered: a resend of a piece that was only late is recognised.
                let now_us = lethe_proto::duration_us(started.elapsed());
                if tracker.on_response(seq, now_us) == Arrival::Fresh {
                    echoed.push(body);
                }
                if let Some(UserAction::Ack(ack)) = tracker.poll(now_us) {
                    user.outgoing
                        .send(Outgoing::Send {
                            to: PROVIDER.into(),
                            bytes: ToService::Ack { tag, ack }.encode(),
                            reply_surbs: 0,
                        })
                        .await
                        .unwrap();
                }
            }
            FromService::MoreSurbs { tag: t, wanted } => {
                assert_eq!(t, tag);
                asks += 1;
                user.outgoing
                    .send(Outgoing::Send {
                        to: PROVIDER.into(),
                        bytes: ToService::Surbs { tag, key_epoch: 0 }.encode(),
                        reply_surbs: usize::from(wanted),
                    })
                    .await
                    .unwrap();
            }
        }
    }
    assert!(asks >= 1);
    let mut expected: Vec<Vec<u8>> = body
        .chunks(RESPONSE_BODY_BYTES_MAX)
        .map(<[u8]>::to_vec)
        .collect();
    expected.sort();
    echoed.sort();
    assert_eq!(echoed, expected);
    assert_eq!(stats.surbs_stalled.load(Ordering::Relaxed), 0);
    for message in seen.lock().unwrap().iter() {
        assert!(!message.windows(PROXY.len()).any(|w| w == PROXY.as_bytes()));
    }
}
