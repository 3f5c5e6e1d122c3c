//! The body of an issuer's blind-sign request: the terms the request proof binds, then the
//! Coconut blind-sign request (opaque here):
//! ```text
//! bandwidth_bytes (u64 BE) ‖ expiry_day (u32 BE, days since the Unix epoch) ‖ request
//! ```

use super::ProtoError;

pub const TERMS_BANDWIDTH_BYTES: usize = 8;
pub const TERMS_EXPIRY_BYTES: usize = 4;
/// Length of the terms prefix of a blind-sign body.
pub const TERMS_BYTES: usize = TERMS_BANDWIDTH_BYTES + TERMS_EXPIRY_BYTES;

const _: () = assert!(TERMS_BYTES == 12);

/// A blind-sign body, checked to hold the terms (the request after them is parsed by the
/// credential code).
#[derive(Clone, Copy, Debug)]
pub struct BlindSignView<'a> {
    bandwidth: &'a [u8; TERMS_BANDWIDTH_BYTES],
    expiry: &'a [u8; TERMS_EXPIRY_BYTES],
    request: &'a [u8],
}

impl<'a> BlindSignView<'a> {
    pub fn new_checked(body: &'a [u8]) -> Result<Self, ProtoError> {
        const SHORT: ProtoError = ProtoError::Malformed("blind-sign body shorter than its terms");
        let (bandwidth, rest) = body.split_first_chunk().ok_or(SHORT)?;
        let (expiry, request) = rest.split_first_chunk().ok_or(SHORT)?;
        Ok(BlindSignView {
            bandwidth,
            expiry,
            request,
        })
    }

    /// The credential's bandwidth in bytes.
    pub fn bandwidth_bytes(&self) -> u64 {
        u64::from_be_bytes(*self.bandwidth)
    }

    /// The credential's last valid day, in days since the Unix epoch.
    pub fn expiry_day(&self) -> u32 {
        u32::from_be_bytes(*self.expiry)
    }

    /// The Coconut blind-sign request.
    pub fn request(&self) -> &'a [u8] {
        self.request
    }
}

/// A blind-sign body for these terms and this encoded request.
pub fn encode_blind_sign(bandwidth_bytes: u64, expiry_day: u32, request: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(TERMS_BYTES + request.len());
    body.extend_from_slice(&bandwidth_bytes.to_be_bytes());
    body.extend_from_slice(&expiry_day.to_be_bytes());
    body.extend_from_slice(request);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_short_is_refused_and_exact_length_has_an_empty_request() {
        let body = encode_blind_sign(1 << 30, 20_000, &[]);
        assert_eq!(body.len(), TERMS_BYTES);
        assert!(BlindSignView::new_checked(&body[..TERMS_BYTES - 1]).is_err());
        assert!(BlindSignView::new_checked(&[]).is_err());
        let view = BlindSignView::new_checked(&body).unwrap();
        assert_eq!(view.bandwidth_bytes(), 1 << 30);
        assert_eq!(view.expiry_day(), 20_000);
        assert!(view.request().is_empty());
    }

    #[test]
    fn round_trip() {
        let body = encode_blind_sign(u64::MAX - 1, 7, b"request");
        assert_eq!(&body[..8], &(u64::MAX - 1).to_be_bytes());
        let view = BlindSignView::new_checked(&body).unwrap();
        assert_eq!(
            (view.bandwidth_bytes(), view.expiry_day(), view.request()),
            (u64::MAX - 1, 7, &b"request"[..])
        );
    }
}
