//! Multi-buffer and wide-vector symmetric primitives for batched Sphinx processing, with
//! run-time CPU feature detection (`is_x86_feature_detected!`) and portable fallbacks that
//! produce identical bytes (the reference crates themselves).
//!
//! - [`blake2b`]: keyed BLAKE2b-256 over up to 8 equal-length messages at once (AVX-512: one
//!   zmm per state word, one lane per message; AVX2: 4 lanes), as Lioness's MAC rounds.
//! - [`chacha`]: IETF ChaCha20 with a zero nonce, 16 blocks per step in zmm registers (8 in
//!   ymm registers on the AVX2 path).
//! - [`aes`]: AES-128-CTR keystreams for many keys (VAES: four keys per zmm register, two per
//!   ymm register on the AVX2 path).
//! - [`hkdf`]: HKDF-SHA256 on the raw SHA-256 compression function (SHA-NI through `sha2`)
//!   with the constant HMAC key states precomputed; 16 lanes with AVX-512, pairs of
//!   interleaved SHA-NI streams on the AVX2 path.

use core::sync::atomic::{AtomicU8, Ordering};

pub mod aes;
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

impl Level {
    fn detect() -> Level {
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

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        match (self, Level::detect()) {
            (Level::Portable, _) | (Level::Avx2, Level::Avx2 | Level::Avx512) => true,
            (Level::Avx512, detected) => detected == Level::Avx512,
            (Level::Avx2, Level::Portable) => false,
        }
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The level the symmetric primitives use: the best the CPU has, or the one `LETHE_SIMD`
/// names (`avx512`/`ifma`, `avx2`, `portable`/`serial`, as for the X25519 ladder) if the CPU
/// supports it. Chosen on first use, then cached.
#[inline]
pub fn level() -> Level {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Level::Portable,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => choose(),
    }
}

#[cold]
fn choose() -> Level {
    let detected = Level::detect();
    let wanted = std::env::var("LETHE_SIMD").ok().and_then(|value| {
        match value.trim().to_ascii_lowercase().as_str() {
            "ifma" | "avx512" => Some(Level::Avx512),
            "avx2" => Some(Level::Avx2),
            "portable" | "serial" => Some(Level::Portable),
            _ => None,
        }
    });
    let chosen = match wanted {
        Some(level) if level.is_supported() => level,
        _ => detected,
    };
    let code = match chosen {
        Level::Portable => 1,
        Level::Avx2 => 2,
        Level::Avx512 => 3,
    };
    CHOSEN.store(code, Ordering::Relaxed);
    chosen
}

/// Overwrites `bytes` with zeros in a way the compiler may not elide (volatile stores, as
/// `zeroize` does), 64 or 8 bytes per store instead of one: wiping the kilobyte-sized
/// keystream and lane buffers byte by byte cost as much as a third of a ChaCha20 pass.
pub fn wipe(bytes: &mut [u8]) {
    let (wide, rest) = bytes.as_chunks_mut::<64>();
    for chunk in wide {
        // SAFETY: `chunk` is a valid, writable [u8; 64] (alignment 1).
        unsafe { core::ptr::write_volatile(chunk, [0u8; 64]) };
    }
    let (words, rest) = rest.as_chunks_mut::<8>();
    for chunk in words {
        // SAFETY: as above, [u8; 8].
        unsafe { core::ptr::write_volatile(chunk, [0u8; 8]) };
    }
    for byte in rest {
        // SAFETY: a valid, writable byte.
        unsafe { core::ptr::write_volatile(byte, 0) };
    }
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Name of the path taken (for benchmark reports).
pub fn path_name() -> &'static str {
    match level() {
        Level::Portable => "portable",
        Level::Avx2 => "avx2",
        Level::Avx512 => "avx512",
    }
}
