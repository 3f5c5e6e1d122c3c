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

/// Which of the live keys: what the Sphinx seam resolves a packet's candidates to, once per
/// packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveKey {
    Primary,
    Secondary,
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
    pub fn candidates(&self, rotation: KeyRotation) -> [Option<LiveKey>; 2] {
        let secondary = self.secondary.as_ref().map(|_| LiveKey::Secondary);
        match rotation {
            KeyRotation::Unknown => [Some(LiveKey::Primary), secondary],
            KeyRotation::Odd | KeyRotation::Even => {
                let matches = |key: &LiveKey| {
                    self.get(*key).is_some_and(|key| {
                        KeyRotation::for_rotation_id(key.rotation_id) == rotation
                    })
                };
                let primary = Some(LiveKey::Primary).filter(matches);
                [primary.or(secondary.filter(matches)), None]
            }
        }
    }

    /// The key `which` names (the secondary only during a rotation overlap).
    pub fn get(&self, which: LiveKey) -> Option<&SphinxKey> {
        match which {
            LiveKey::Primary => Some(&self.primary),
            LiveKey::Secondary => self.secondary.as_ref(),
        }
    }
}
