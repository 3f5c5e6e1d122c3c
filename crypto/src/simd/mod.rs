//! Multi-buffer and wide-vector symmetric primitives for batched Sphinx processing, with
//! run-time CPU feature detection (`is_x86_feature_detected!`) and portable fallbacks that
//! produce identical bytes (the reference crates themselves).
//!
//! - [`blake2b`]: keyed BLAKE2b-256 over up to 8 equal-length messages at once (AVX-512: one
//!   zmm per state word, one lane per message; AVX2: 4 lanes), as Lioness's MAC rounds.
//! - [`chacha`]: IETF ChaCha20 with a zero nonce, 16 blocks per step in zmm registers.
//! - [`hkdf`]: HKDF-SHA256 on the raw SHA-256 compression function (SHA-NI through `sha2`)
//!   with the constant HMAC key states precomputed.

pub mod blake2b;
pub mod chacha;
pub mod hkdf;

/// Which vector unit the multi-buffer code uses on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

/// Detected once per call site (the std macro caches the CPUID result).
#[inline]
pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// Name of the path taken (for benchmark reports).
pub fn path_name() -> &'static str {
    match level() {
        Level::Portable => "portable",
        Level::Avx2 => "avx2",
        Level::Avx512 => "avx512",
    }
}
