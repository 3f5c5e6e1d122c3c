//! The context a bandwidth-credential spend is bound to at a gateway, so a spend captured on
//! the way cannot be credited to anybody else nor at another gateway:
//! ```text
//! b"lethe-gateway-admission-v1" (26) ‖ gateway identity (32) ‖ client identity (32)
//! ```

use super::ProtoError;

/// First bytes of the context a spend is bound to.
pub const CONTEXT_LABEL: &[u8] = b"lethe-gateway-admission-v1";
pub const IDENTITY_BYTES: usize = 32;
pub const CONTEXT_BYTES: usize = CONTEXT_LABEL.len() + 2 * IDENTITY_BYTES;

const _: () = assert!(CONTEXT_BYTES == 90);

/// An admission context, checked to be one (label, exact length).
#[derive(Clone, Copy, Debug)]
pub struct AdmissionContextView<'a> {
    gateway: &'a [u8; IDENTITY_BYTES],
    client: &'a [u8; IDENTITY_BYTES],
}

impl<'a> AdmissionContextView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let rest = bytes
            .strip_prefix(CONTEXT_LABEL)
            .ok_or(ProtoError::Malformed("admission context: wrong label"))?;
        let (gateway, client) = rest
            .split_first_chunk()
            .ok_or(ProtoError::Malformed("admission context: wrong length"))?;
        let client = <&[u8; IDENTITY_BYTES]>::try_from(client)
            .map_err(|_| ProtoError::Malformed("admission context: wrong length"))?;
        Ok(AdmissionContextView { gateway, client })
    }

    pub fn gateway(&self) -> &'a [u8; IDENTITY_BYTES] {
        self.gateway
    }

    pub fn client(&self) -> &'a [u8; IDENTITY_BYTES] {
        self.client
    }
}

/// The context of a spend at `gateway` by `client`.
pub fn admission_context(
    gateway: &[u8; IDENTITY_BYTES],
    client: &[u8; IDENTITY_BYTES],
) -> [u8; CONTEXT_BYTES] {
    let mut out = [0u8; CONTEXT_BYTES];
    let (label, identities) = out.split_at_mut(CONTEXT_LABEL.len());
    label.copy_from_slice(CONTEXT_LABEL);
    let (g, c) = identities.split_at_mut(IDENTITY_BYTES);
    g.copy_from_slice(gateway);
    c.copy_from_slice(client);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_length() {
        let context = admission_context(&[1; 32], &[2; 32]);
        assert!(context.starts_with(b"lethe-gateway-admission-v1"));
        let view = AdmissionContextView::new_checked(&context).unwrap();
        assert_eq!((view.gateway(), view.client()), (&[1; 32], &[2; 32]));
    }

    #[test]
    fn too_short_too_long_and_wrong_label_are_refused() {
        let context = admission_context(&[1; 32], &[2; 32]);
        assert!(AdmissionContextView::new_checked(&context[..CONTEXT_BYTES - 1]).is_err());
        assert!(AdmissionContextView::new_checked(&[]).is_err());
        let mut long = context.to_vec();
        long.push(0);
        assert!(AdmissionContextView::new_checked(&long).is_err());
        let mut other = context;
        other[0] ^= 1;
        assert!(AdmissionContextView::new_checked(&other).is_err());
    }
}
