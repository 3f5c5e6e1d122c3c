//! Payload framing (`0^16 ‖ message ‖ 0x01 ‖ 0^*`) and layered Lioness encryption.

use zeroize::Zeroizing;

use super::constants::{PAYLOAD_OVERHEAD_SIZE, PAYLOAD_SIZE_MIN, SECURITY_PARAMETER};
use super::error::SphinxError;
use super::keys::PayloadKey;
use crate::lioness::Lioness;

/// Largest message a payload of `payload_size` bytes carries.
pub const fn message_capacity(payload_size: usize) -> usize {
    payload_size.saturating_sub(PAYLOAD_OVERHEAD_SIZE)
}

/// Writes the framed plaintext into `payload` (all of it).
pub fn frame(payload: &mut [u8], message: &[u8]) -> Result<(), SphinxError> {
    if payload.len() < PAYLOAD_SIZE_MIN {
        return Err(SphinxError::Truncated {
            len: payload.len(),
            min: PAYLOAD_SIZE_MIN,
        });
    }
    let max = message_capacity(payload.len());
    if message.len() > max {
        return Err(SphinxError::MessageTooLong {
            len: message.len(),
            max,
        });
    }
    let (zeros, rest) = payload.split_at_mut(SECURITY_PARAMETER);
    zeros.fill(0);
    let (body, padding) = rest.split_at_mut(message.len());
    body.copy_from_slice(message);
    padding.fill(0);
    padding[0] = 1;
    Ok(())
}

/// Adds one Lioness layer.
pub fn encrypt_layer(payload: &mut [u8], key: &PayloadKey) -> Result<(), SphinxError> {
    Lioness::new(key)
        .encrypt(payload)
        .map_err(|_| SphinxError::Truncated {
            len: payload.len(),
            min: PAYLOAD_SIZE_MIN,
        })
}

/// Removes one Lioness layer.
pub fn decrypt_layer(payload: &mut [u8], key: &PayloadKey) -> Result<(), SphinxError> {
    Lioness::new(key)
        .decrypt(payload)
        .map_err(|_| SphinxError::Truncated {
            len: payload.len(),
            min: PAYLOAD_SIZE_MIN,
        })
}

/// Encrypts with the route's keys, last hop first, so hop 0 removes the outer layer.
pub fn encrypt_for_route<I>(payload: &mut [u8], keys_route_order: I) -> Result<(), SphinxError>
where
    I: DoubleEndedIterator<Item = Zeroizing<PayloadKey>>,
{
    for key in keys_route_order.rev() {
        encrypt_layer(payload, &key)?;
    }
    Ok(())
}
