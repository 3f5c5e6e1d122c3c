//! `LETHE_SIMD` override (own test binary: the choice is cached per process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lethe_crypto::x25519::{simd_path, x25519, x25519_batch, SimdPath};

#[test]
fn env_override_and_fallback() {
    // Set before the first call, which caches the choice.
    std::env::set_var("LETHE_SIMD", "portable");
    assert_eq!(simd_path(), SimdPath::Portable);
    // Cached: later changes are ignored.
    std::env::set_var("LETHE_SIMD", "no-such-path");
    assert_eq!(simd_path(), SimdPath::Portable);
    let k = [7u8; 32];
    let u = [9u8; 32];
    let mut out = [[0u8; 32]; 3];
    x25519_batch(&[k; 3], &[u; 3], &mut out);
    assert_eq!(out, [x25519(&k, &u); 3]);
    for p in [SimdPath::Ifma, SimdPath::Avx2, SimdPath::Portable] {
        println!(
            "{p:?}: supported = {}, lanes = {}",
            p.is_supported(),
            p.lanes()
        );
    }
}
