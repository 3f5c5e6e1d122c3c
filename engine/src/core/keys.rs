//! The node's Sphinx keys: a primary and, during a rotation overlap, a secondary, each tagged
//! with its rotation id (which also names its replay filter).

use lethe_crypto::framing::KeyRotation;
use x25519_dalek::StaticSecret;

use crate::replay::RotationId;

/// One X25519 Sphinx key and the rotation it belongs to.
#[derive(Clone)]
pub struct SphinxKey {
    pub rotation_id: RotationId,
    pub secret: StaticSecret,
}

impl SphinxKey {
    pub fn new(rotation_id: RotationId, secret: StaticSecret) -> SphinxKey {
        SphinxKey {
            rotation_id,
            secret,
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.secret).to_bytes()
    }
}

/// The live keys. Primary is tried first for v7 frames (rotation unknown), as Nym does.
#[derive(Clone)]
pub struct NodeKeys {
    pub primary: SphinxKey,
    pub secondary: Option<SphinxKey>,
}

impl NodeKeys {
    pub fn new(primary: SphinxKey, secondary: Option<SphinxKey>) -> NodeKeys {
        if let Some(secondary) = &secondary {
            // Two keys of the same rotation would share a replay filter and a parity byte.
            assert_ne!(secondary.rotation_id, primary.rotation_id);
        }
        NodeKeys { primary, secondary }
    }

    /// The keys to try, in order, for a frame's rotation byte: both for `Unknown`, else the one
    /// whose rotation id has that parity (none if no live key has it).
    pub fn candidates(&self, rotation: KeyRotation) -> [Option<&SphinxKey>; 2] {
        let secondary = self.secondary.as_ref();
        match rotation {
            KeyRotation::Unknown => [Some(&self.primary), secondary],
            KeyRotation::Odd | KeyRotation::Even => {
                let matches =
                    |key: &&SphinxKey| KeyRotation::for_rotation_id(key.rotation_id) == rotation;
                let primary = Some(&self.primary).filter(matches);
                [primary.or(secondary.filter(matches)), None]
            }
        }
    }
}
