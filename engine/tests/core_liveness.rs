//! A core that panics is reported failed, whatever glommio does with the unwind; a stopped
//! runtime's cores are reported stalled. Its own test binary: the panic record is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod core_common;

use core_common::*;
use lethe_engine::runtime::{liveness, Health, Runtime};

#[test]
fn a_core_panic_makes_the_runtime_report_failed() {
    let mut r = rng(53);
    let runtime =
        Runtime::start(runtime_config(2), one_key(secret(&mut r), 2), filters(&[2])).unwrap();
    wait_for("every core turning", || runtime.health() == Health::Serving);
    runtime.inject_core_panic();
    wait_for("the panic reported", || {
        matches!(runtime.health(), Health::Failed(_))
    });
    match runtime.health() {
        Health::Failed(reason) => assert!(reason.contains("injected"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(liveness::core_panics(), 1);
    runtime.shutdown();
    // The panicked core's thread may or may not have ended: either way join returns.
    let _ = runtime.join();
}
