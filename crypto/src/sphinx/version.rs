//! The Sphinx packet version carried in every routing slot (`[0, hi, lo]` on the wire).

use super::constants::VERSION_SIZE;
use super::error::SphinxError;

/// A known Sphinx version. Unknown values are rejected when parsed (`sphinx-packet` 0.8
/// would process them on the seed path; no honest sender produces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(u16);

impl Version {
    /// 0.1.0-era packets; payload key = the 192 expanded bytes.
    pub const LEGACY_INITIAL: Version = Version(1);
    /// 0.1.1-era packets; payload key = the 192 expanded bytes.
    pub const LEGACY_UPDATED: Version = Version(257);
    /// Explicit 192-byte payload keys (what Nym clients send today).
    pub const EXPLICIT_PAYLOAD_KEYS: Version = Version(258);
    /// Payload keys derived from 16-byte seeds; SURBs carry one seed per hop.
    pub const PAYLOAD_KEY_SEEDS: Version = Version(259);
    /// As 259 on the wire; SURBs carry only the last hop's seed (recoverable SURBs).
    pub const SINGLE_SEED_SURB: Version = Version(260);
    /// `sphinx-packet` 0.8's default.
    pub const CURRENT: Version = Version::SINGLE_SEED_SURB;

    /// Parses a known version number.
    pub fn new(value: u16) -> Result<Version, SphinxError> {
        match value {
            1 | 257 | 258 | 259 | 260 => Ok(Version(value)),
            _ => Err(SphinxError::UnknownVersion(u32::from(value))),
        }
    }

    pub fn value(self) -> u16 {
        self.0
    }

    /// Whether hops use the 192 expanded bytes directly as the Lioness key.
    pub fn uses_full_payload_keys(self) -> bool {
        self.0 <= Version::EXPLICIT_PAYLOAD_KEYS.0
    }

    pub(crate) fn from_wire(bytes: &[u8; VERSION_SIZE]) -> Result<Version, SphinxError> {
        if bytes[0] != 0 {
            let wide = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
            return Err(SphinxError::UnknownVersion(wide));
        }
        Version::new(u16::from_be_bytes([bytes[1], bytes[2]]))
    }

    pub(crate) fn to_wire(self) -> [u8; VERSION_SIZE] {
        let [hi, lo] = self.0.to_be_bytes();
        [0, hi, lo]
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::CURRENT
    }
}
