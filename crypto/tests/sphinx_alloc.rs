//! Processing and `create_into` allocate nothing: a counting global allocator around them,
//! for forward and final hops of each version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sphinx_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lethe_crypto::sphinx::{self, Packet};
use sphinx_common::{rng, Net, VERSIONS};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
// The count is process-wide: tests in this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn processing_does_not_allocate() {
    let _turn = SERIAL.lock().unwrap();
    let mut rng = rng(20);
    for version in VERSIONS {
        let net = Net::new(&mut rng, 2);
        let mut bytes =
            sphinx::create(b"no heap", 2065, &net.spec(version), None, &mut rng).unwrap();
        for secret in &net.secrets {
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            let processed = sphinx::process(&mut packet, secret).unwrap();
            let after = ALLOCATIONS.load(Ordering::SeqCst);
            assert_eq!(after, before, "v{} allocated", processed.version.value());
        }
    }
}

#[test]
fn creating_into_a_buffer_does_not_allocate() {
    let _turn = SERIAL.lock().unwrap();
    let mut rng = rng(21);
    let net = Net::new(&mut rng, 5);
    let spec = net.spec(sphinx::Version::CURRENT);
    let mut buffer = vec![0u8; 2413];
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    sphinx::create_into(&mut buffer, b"no heap", &spec, None, &mut rng).unwrap();
    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), before);
}
