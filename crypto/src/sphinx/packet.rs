//! Zero-copy view over a Sphinx packet buffer (smoltcp style):
//! `alpha (32) ‖ MAC (16) ‖ beta (300) ‖ payload (≥ 33)`.
//!
//! `new_unchecked` wraps without checks; `new_checked` is for untrusted bytes and guarantees
//! that no accessor panics afterwards. Do not use `new_checked` to emit: build with
//! [`super::create`] into a buffer of the right size instead.

use super::constants::{
    ALPHA_SIZE, HEADER_SIZE, MAC_SIZE, PACKET_SIZE_MAX, PAYLOAD_SIZE_MIN, ROUTING_INFO_SIZE,
};
use super::error::SphinxError;

mod field {
    use core::ops::Range;

    use super::{ALPHA_SIZE, HEADER_SIZE, MAC_SIZE, ROUTING_INFO_SIZE};

    pub const ALPHA: Range<usize> = 0..ALPHA_SIZE;
    pub const MAC: Range<usize> = ALPHA.end..ALPHA.end + MAC_SIZE;
    pub const BETA: Range<usize> = MAC.end..MAC.end + ROUTING_INFO_SIZE;
    pub const PAYLOAD_START: usize = HEADER_SIZE;
    const _: () = assert!(BETA.end == HEADER_SIZE);
}

/// Smallest packet [`Packet::new_checked`] accepts.
pub const PACKET_SIZE_MIN: usize = HEADER_SIZE + PAYLOAD_SIZE_MIN;

/// A Sphinx packet laid over a byte buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking its length; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes after checking the length bounds.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, SphinxError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks `PACKET_SIZE_MIN ≤ len ≤ PACKET_SIZE_MAX`.
    pub fn check_len(&self) -> Result<(), SphinxError> {
        check_packet_len(self.buffer.as_ref().len())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The group element (X25519 u-coordinate).
    pub fn alpha(&self) -> &[u8; ALPHA_SIZE] {
        array_ref(&self.buffer.as_ref()[field::ALPHA])
    }

    /// The header MAC (gamma).
    pub fn mac(&self) -> &[u8; MAC_SIZE] {
        array_ref(&self.buffer.as_ref()[field::MAC])
    }

    /// The encrypted routing information (beta).
    pub fn beta(&self) -> &[u8; ROUTING_INFO_SIZE] {
        array_ref(&self.buffer.as_ref()[field::BETA])
    }

    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_SIZE]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD_START..]
    }

    /// Whole packet bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn alpha_mut(&mut self) -> &mut [u8; ALPHA_SIZE] {
        array_mut(&mut self.buffer.as_mut()[field::ALPHA])
    }

    pub fn mac_mut(&mut self) -> &mut [u8; MAC_SIZE] {
        array_mut(&mut self.buffer.as_mut()[field::MAC])
    }

    pub fn beta_mut(&mut self) -> &mut [u8; ROUTING_INFO_SIZE] {
        array_mut(&mut self.buffer.as_mut()[field::BETA])
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD_START..]
    }

    /// Header and payload as disjoint mutable slices.
    pub fn split_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        self.buffer.as_mut().split_at_mut(HEADER_SIZE)
    }
}

// The ranges above are compile-time constant lengths, so these conversions cannot fail once
// the buffer is long enough; an unchecked short buffer panics on the slice index, as documented.
fn array_ref<const N: usize>(slice: &[u8]) -> &[u8; N] {
    match slice.try_into() {
        Ok(array) => array,
        Err(_) => unreachable_len(),
    }
}

fn array_mut<const N: usize>(slice: &mut [u8]) -> &mut [u8; N] {
    match slice.try_into() {
        Ok(array) => array,
        Err(_) => unreachable_len(),
    }
}

#[allow(clippy::panic)]
#[cold]
fn unreachable_len() -> ! {
    panic!("field range length mismatch")
}

/// Checks that `len` bytes can hold a packet: `PACKET_SIZE_MIN ≤ len ≤ PACKET_SIZE_MAX`.
pub fn check_packet_len(len: usize) -> Result<(), SphinxError> {
    if len < PACKET_SIZE_MIN {
        return Err(SphinxError::Truncated {
            len,
            min: PACKET_SIZE_MIN,
        });
    }
    if len > PACKET_SIZE_MAX {
        return Err(SphinxError::Oversize {
            len,
            max: PACKET_SIZE_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sphinx::constants::{PACKET_SIZE_EXTENDED32, PACKET_SIZE_REGULAR};

    #[test]
    fn deconstructs_fields() {
        let mut bytes = vec![0u8; PACKET_SIZE_REGULAR];
        bytes[0] = 0xa1;
        bytes[32] = 0xb2;
        bytes[48] = 0xc3;
        bytes[348] = 0xd4;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.alpha()[0], 0xa1);
        assert_eq!(packet.mac()[0], 0xb2);
        assert_eq!(packet.beta()[0], 0xc3);
        assert_eq!(packet.payload()[0], 0xd4);
        assert_eq!(packet.payload().len(), PACKET_SIZE_REGULAR - HEADER_SIZE);
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        let short = vec![0u8; PACKET_SIZE_MIN - 1];
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            SphinxError::Truncated {
                len: PACKET_SIZE_MIN - 1,
                min: PACKET_SIZE_MIN
            }
        );
        let long = vec![0u8; PACKET_SIZE_EXTENDED32 + 1];
        assert!(matches!(
            Packet::new_checked(&long[..]),
            Err(SphinxError::Oversize { .. })
        ));
        assert!(Packet::new_checked(&vec![0u8; PACKET_SIZE_MIN][..]).is_ok());
    }
}
