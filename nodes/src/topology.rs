//! Signed node descriptors and signed topologies: what the directory publishes and what
//! nodes and clients verify before using.
//!
//! Signing: a signed document is `{ "body": <JSON text>, "signer": <hex ed25519 key>,
//! "signature": <hex> }`. The signature covers `DOMAIN || body` where the domain names the
//! document kind, so a descriptor signature can never pass as a topology signature. The body is
//! kept as the exact text that was signed (no re-serialisation before verification).
//!
//! The documents' types (descriptors, topologies) and route sampling live in
//! `lethe_proto::topology`, where the client core uses them; they are re-exported here.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keyfile;
pub use lethe_proto::topology::{
    sample_delays_ns, Descriptor, Role, Topology, TopologyError, LAYERS,
};

/// Domain of a node descriptor signature (signed by the node's identity key).
pub const DOMAIN_DESCRIPTOR: &[u8] = b"lethe-descriptor-v1\0";
/// Domain of a heartbeat signature (signed by the node's identity key).
pub const DOMAIN_HEARTBEAT: &[u8] = b"lethe-heartbeat-v1\0";
/// Domain of a deregistration signature (signed by the node's identity key): a different
/// domain from the heartbeat's, so a captured heartbeat cannot be replayed as one.
pub const DOMAIN_DEREGISTER: &[u8] = b"lethe-deregister-v1\0";
/// Domain of a topology signature (signed by the directory's key).
pub const DOMAIN_TOPOLOGY: &[u8] = b"lethe-topology-v1\0";
/// Largest signed document accepted (bytes of body): bounds parsing work on untrusted input.
pub const SIGNED_BODY_BYTES_MAX: usize = 1 << 20;
/// How far a signed timestamp may be ahead of the verifier's clock.
pub const CLOCK_SKEW_S_MAX: u64 = 120;

/// A liveness signal: node identity and time, signed by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub identity: String,
    pub sent_at_s: u64,
}

/// A node leaving the network at once: its identity and the time, signed by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deregistration {
    pub identity: String,
    pub sent_at_s: u64,
}

/// A signed document as it travels: the exact signed text, the signer, the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub body: String,
    pub signer: String,
    pub signature: String,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn hex_64(bytes: &[u8; 64]) -> String {
    keyfile::hex(bytes)
}

pub fn unhex_64(text: &str) -> Option<[u8; 64]> {
    let text = text.trim();
    if text.len() != 128 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 64];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Signs `value` as JSON under `domain` with the ed25519 key of `seed`.
pub fn sign<T: Serialize>(
    value: &T,
    domain: &[u8],
    seed: &[u8; 32],
) -> Result<Signed, TopologyError> {
    let body = serde_json::to_string(value).map_err(|_| TopologyError::Malformed("serialise"))?;
    let key = SigningKey::from_bytes(seed);
    let signature = key.sign(&domain_message(domain, body.as_bytes()));
    Ok(Signed {
        signer: keyfile::hex(key.verifying_key().as_bytes()),
        signature: hex_64(&signature.to_bytes()),
        body,
    })
}

impl Signed {
    /// Checks the signature under `domain` and, if given, that the signer is `expected`;
    /// then parses the body. Returns the signer's key with the value.
    pub fn open<T: DeserializeOwned>(
        &self,
        domain: &[u8],
        expected: Option<&[u8; 32]>,
    ) -> Result<([u8; 32], T), TopologyError> {
        if self.body.len() > SIGNED_BODY_BYTES_MAX {
            return Err(TopologyError::TooLarge(self.body.len()));
        }
        let signer =
            keyfile::unhex_32(&self.signer).ok_or(TopologyError::Malformed("signer key"))?;
        if expected.is_some_and(|e| e != &signer) {
            return Err(TopologyError::WrongSigner);
        }
        let signature =
            unhex_64(&self.signature).ok_or(TopologyError::Malformed("signature encoding"))?;
        let key = VerifyingKey::from_bytes(&signer).map_err(|_| TopologyError::BadSignature)?;
        key.verify_strict(
            &domain_message(domain, self.body.as_bytes()),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| TopologyError::BadSignature)?;
        let value =
            serde_json::from_str(&self.body).map_err(|_| TopologyError::Malformed("body"))?;
        Ok((signer, value))
    }
}

fn domain_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

/// Opens a descriptor signed by the identity it names.
pub fn open_descriptor(signed: &Signed) -> Result<Descriptor, TopologyError> {
    let (signer, descriptor): (_, Descriptor) = signed.open(DOMAIN_DESCRIPTOR, None)?;
    if descriptor.identity_key()? != signer {
        return Err(TopologyError::WrongSigner);
    }
    descriptor.sphinx_public_key()?;
    Ok(descriptor)
}

/// Opens a heartbeat signed by the identity it names.
pub fn open_heartbeat(signed: &Signed) -> Result<Heartbeat, TopologyError> {
    let (signer, heartbeat): (_, Heartbeat) = signed.open(DOMAIN_HEARTBEAT, None)?;
    if keyfile::unhex_32(&heartbeat.identity) != Some(signer) {
        return Err(TopologyError::WrongSigner);
    }
    Ok(heartbeat)
}

/// Opens a deregistration signed by the identity it names.
pub fn open_deregistration(signed: &Signed) -> Result<Deregistration, TopologyError> {
    let (signer, deregistration): (_, Deregistration) = signed.open(DOMAIN_DEREGISTER, None)?;
    if keyfile::unhex_32(&deregistration.identity) != Some(signer) {
        return Err(TopologyError::WrongSigner);
    }
    Ok(deregistration)
}

/// What a client or node accepts: signed by the pinned directory key, not stale, not from the
/// future, and not older than the epoch it already uses (`seen_epoch`).
pub fn verify_topology(
    signed: &Signed,
    directory_key: &[u8; 32],
    now_s: u64,
    seen_epoch: Option<u64>,
) -> Result<Topology, TopologyError> {
    let (_, topology): (_, Topology) = signed.open(DOMAIN_TOPOLOGY, Some(directory_key))?;
    if now_s > topology.valid_until_s {
        return Err(TopologyError::Stale {
            valid_until_s: topology.valid_until_s,
            now_s,
        });
    }
    if topology.issued_at_s > now_s.saturating_add(CLOCK_SKEW_S_MAX) {
        return Err(TopologyError::FromTheFuture {
            issued_at_s: topology.issued_at_s,
            now_s,
        });
    }
    if let Some(seen) = seen_epoch {
        if topology.epoch < seen {
            return Err(TopologyError::EpochRegressed {
                epoch: topology.epoch,
                seen,
            });
        }
    }
    for node in topology.layers.iter().flatten().chain(&topology.gateways) {
        node.identity_key()?;
        node.sphinx_public_key()?;
    }
    Ok(topology)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(seed: &[u8; 32], role: Role, port: u16) -> Descriptor {
        lethe_proto::testing::descriptor(seed, [9; 32], port, role)
    }

    fn topology(epoch: u64, valid_until_s: u64) -> Topology {
        Topology {
            epoch,
            valid_until_s,
            ..lethe_proto::testing::TestMixnet::new(1, &[7; 32]).topology
        }
    }

    #[test]
    fn keyfile_ed25519_matches_dalek() {
        let seed = [42u8; 32];
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            key.verifying_key().to_bytes(),
            keyfile::ed25519_public(&seed)
        );
    }

    #[test]
    fn descriptor_round_trip_and_forgery() {
        let seed = [5u8; 32];
        let d = descriptor(&seed, Role::Mixnode, 1789);
        let signed = sign(&d, DOMAIN_DESCRIPTOR, &seed).unwrap();
        assert_eq!(open_descriptor(&signed).unwrap(), d);
        // Someone else's key signing a descriptor naming `seed`'s identity.
        let forged = sign(&d, DOMAIN_DESCRIPTOR, &[6u8; 32]).unwrap();
        assert_eq!(open_descriptor(&forged), Err(TopologyError::WrongSigner));
        // A tampered body.
        let mut tampered = signed.clone();
        tampered.body = tampered.body.replace("1789", "1790");
        assert_eq!(open_descriptor(&tampered), Err(TopologyError::BadSignature));
        // A descriptor signature is not a heartbeat signature.
        assert!(open_heartbeat(&signed).is_err());
    }

    #[test]
    fn topology_checks() {
        let dir = [11u8; 32];
        let dir_pub = keyfile::ed25519_public(&dir);
        let signed = sign(&topology(5, 1000), DOMAIN_TOPOLOGY, &dir).unwrap();
        assert!(verify_topology(&signed, &dir_pub, 500, Some(5)).is_ok());
        assert!(matches!(
            verify_topology(&signed, &dir_pub, 1001, None),
            Err(TopologyError::Stale { .. })
        ));
        assert!(matches!(
            verify_topology(&signed, &dir_pub, 500, Some(6)),
            Err(TopologyError::EpochRegressed { .. })
        ));
        let forged = sign(&topology(9, 1000), DOMAIN_TOPOLOGY, &[12u8; 32]).unwrap();
        assert_eq!(
            verify_topology(&forged, &dir_pub, 500, None),
            Err(TopologyError::WrongSigner)
        );
        let mut relabelled = forged;
        relabelled.signer = keyfile::hex(&dir_pub);
        assert_eq!(
            verify_topology(&relabelled, &dir_pub, 500, None),
            Err(TopologyError::BadSignature)
        );
    }
}
