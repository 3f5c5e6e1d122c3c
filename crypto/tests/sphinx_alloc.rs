//! Processing and `create_into` allocate nothing: a counting global allocator around them,
//! for forward and final hops of each version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod counting_alloc;
mod sphinx_common;

use counting_alloc::allocations;

use lethe_crypto::sphinx::{self, Packet};
use sphinx_common::{rng, Net, VERSIONS};

#[test]
fn processing_does_not_allocate() {
    let mut rng = rng(20);
    for version in VERSIONS {
        let net = Net::new(&mut rng, 2);
        let mut bytes =
            sphinx::create(b"no heap", 2065, &net.spec(version), None, &mut rng).unwrap();
        for secret in &net.secrets {
            let before = allocations();
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            let processed = sphinx::process(&mut packet, secret).unwrap();
            let after = allocations();
            assert_eq!(after, before, "v{} allocated", processed.version.value());
        }
    }
}

#[test]
fn creating_into_a_buffer_does_not_allocate() {
    let mut rng = rng(21);
    let net = Net::new(&mut rng, 5);
    let spec = net.spec(sphinx::Version::CURRENT);
    let mut buffer = vec![0u8; 2413];
    // Steady state: the first call may read `LETHE_SIMD` once (an allocation when it is set)
    // to pick the SIMD path; that one-time choice is not what this test is about.
    sphinx::create_into(&mut buffer, b"no heap", &spec, None, &mut rng).unwrap();
    let before = allocations();
    sphinx::create_into(&mut buffer, b"no heap", &spec, None, &mut rng).unwrap();
    assert_eq!(allocations(), before);
}
