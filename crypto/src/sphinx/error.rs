//! The one error type of the Sphinx module. Every variant is something untrusted input or a
//! caller's bad arguments can cause; none is a panic.

/// Why a Sphinx operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SphinxError {
    /// The buffer is shorter than a header plus the minimum payload.
    #[error("packet truncated: {len} bytes, need at least {min}")]
    Truncated { len: usize, min: usize },
    /// The buffer is longer than the largest packet we accept.
    #[error("packet oversize: {len} bytes, at most {max}")]
    Oversize { len: usize, max: usize },
    /// Header MAC did not verify (wrong key, corrupted or forged header).
    #[error("header MAC mismatch")]
    WrongMac,
    /// The DH result was all zeros: alpha is a low-order point (or zero).
    #[error("invalid group element (non-contributory DH)")]
    InvalidPoint,
    /// The routing slot names a version we do not process.
    #[error("unknown Sphinx version {0}")]
    UnknownVersion(u32),
    /// The routing flag is neither forward (1) nor final (2).
    #[error("bad routing flag {0}")]
    BadFlag(u8),
    /// The decrypted payload lacks the 16 leading zeros or the 0x01 end marker.
    #[error("bad payload padding")]
    BadPayloadPadding,
    /// The message does not fit in the payload.
    #[error("message of {len} bytes exceeds the {max}-byte capacity")]
    MessageTooLong { len: usize, max: usize },
    /// A route of 0 or more than 5 hops, or delays not matching the route.
    #[error("invalid route: {hops} hops, {delays} delays")]
    InvalidRoute { hops: usize, delays: usize },
    /// A node address that does not decode to a socket address.
    #[error("bad node address")]
    BadAddress,
    /// Malformed SURB or SURB recovery bytes, or a SURB of the wrong kind.
    #[error("bad SURB: {0}")]
    BadSurb(&'static str),
    /// No node key for the packet (batched processing: the caller names none for its key
    /// rotation).
    #[error("no key for the packet's key rotation")]
    UnknownKey,
    /// The caller's replay check flagged the packet's replay tag (batched processing).
    #[error("replayed packet")]
    Replayed,
}
