//! Reliable anonymous replies (issue 21, item 3): a 1 MB page fetched through SOCKS5 over a
//! real testnet arrives intact although a mixnode is SIGKILLed in the middle of the download.
//! Until the directory drops the dead node and the clients refresh their topology, every
//! reply SURB and forward route through it loses its packet: the proxy acknowledges what it
//! receives, the provider resends the rest through its newest SURBs, and the client core
//! retransmits the proxy's own messages. The page is compared by SHA-256 and length; the
//! provider's state dump must show responses resent (the kill did cost packets).
//! Checks outcomes, never speed: every wait is bounded and generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::socks::{
    dump_counter, get_through_socks, http_body, http_server, set_topology_refresh, SocksNet,
};
use common::{random_bytes, WAIT_MAX};
use sha2::{Digest, Sha256};

const PAGE_BYTES: usize = 1_000_000;
/// The mixnode dies once this much of the page has arrived.
const KILL_AFTER_BYTES: usize = 150_000;

#[test]
fn page_arrives_intact_when_a_mixnode_dies() {
    let socks = SocksNet::up(&common::temp_dir("root"), &[]);
    // The clients refresh their topology every 2 s (300 by default), so a dead node leaves
    // their routes soon after the directory drops it.
    set_topology_refresh(&socks.provider_dir, 2);
    set_topology_refresh(&socks.user_dir, 2);
    let provider = socks.start_provider();
    let proxy = socks.start_proxy(provider.get("address"), false);

    let page = random_bytes(PAGE_BYTES, 3);
    let web = http_server(page.clone());
    // mix1 shares its layer with another mixnode (two per layer): routes exist without it.
    let mix1 = socks.net.node("mix1")["pid"].as_i64().unwrap() as i32;
    let mut killed_at = None;
    let mut stream = get_through_socks(proxy.addr("socks5"), web);
    let mut response = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A reset (the proxy gave up on a missing response) fails here, as it must.
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if killed_at.is_none() && response.len() >= KILL_AFTER_BYTES {
            // SAFETY: SIGKILL to a node process the testnet started for this test.
            assert_eq!(unsafe { libc::kill(mix1, libc::SIGKILL) }, 0);
            killed_at = Some(response.len());
        }
    }
    let fetched = http_body(response);
    let killed_at = killed_at.expect("the mixnode was killed during the download");
    assert!(killed_at < PAGE_BYTES, "killed before the end");
    assert_eq!(fetched.len(), page.len());
    assert_eq!(
        Sha256::digest(&fetched),
        Sha256::digest(&page),
        "the page arrived corrupted"
    );

    // The dump is written after each message the provider takes; the acknowledgements of the
    // last responses come after the page did, so wait (bounded) for the dump to settle on
    // nothing pending.
    let deadline = Instant::now() + WAIT_MAX;
    let state = loop {
        let state = socks.dump();
        if state.contains("pending: 0,") || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let counter = |name: &str| {
        dump_counter(&state, name)
            .unwrap_or_else(|| panic!("no {name} in the state dump:\n{state}"))
    };
    assert!(counter("resent") > 0, "nothing was resent:\n{state}");
    assert_eq!(counter("given_up"), 0, "{state}");
    drop(proxy);
    provider.terminate();
}
