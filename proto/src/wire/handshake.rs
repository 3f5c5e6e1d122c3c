//! Client ↔ gateway handshake: ephemeral X25519 with an ed25519-signed transcript, giving one
//! ChaCha20-Poly1305 key per direction. I/O-free: each side is fed the peer's bytes.
//!
//! ```text
//! client  → ClientHello   "LGW1" 0x01 client_identity(32) client_eph(32) salt(16)
//! gateway → GatewayHello  0x02 gateway_identity(32) gateway_eph(32) sig_gw(64)
//! client  → ClientAuth    0x03 sig_client(64)
//! ```
//! Both signatures cover `transcript = client_identity ‖ client_eph ‖ salt ‖ gateway_identity ‖
//! gateway_eph` under different domains: the gateway proves its identity (the client pins it
//! from the signed topology), the client proves it owns the identity its packets are
//! addressed to. The session key is HKDF-SHA256(salt, DH(eph, eph), info = domain ‖
//! SHA-256(transcript)); a fresh handshake on every connection (re-authentication on
//! reconnect) gives forward secrecy per session.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::CryptoRng;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::session::Session;
use super::ProtoError;

pub const MAGIC: &[u8; 4] = b"LGW1";
pub const CLIENT_HELLO_LEN: usize = 4 + 1 + 32 + 32 + 16;
pub const GATEWAY_HELLO_LEN: usize = 1 + 32 + 32 + 64;
pub const CLIENT_AUTH_LEN: usize = 1 + 64;
const KIND_CLIENT_HELLO: u8 = 0x01;
const KIND_GATEWAY_HELLO: u8 = 0x02;
const KIND_CLIENT_AUTH: u8 = 0x03;
const DOMAIN_GATEWAY_SIG: &[u8] = b"lethe-gw-handshake-gateway-v1\0";
const DOMAIN_CLIENT_SIG: &[u8] = b"lethe-gw-handshake-client-v1\0";
const DOMAIN_KDF: &[u8] = b"lethe-gw-session-v1\0";
const TRANSCRIPT_LEN: usize = 32 + 32 + 16 + 32 + 32;

/// The ed25519 public key (the identity peers pin) of an identity seed.
pub fn identity_public(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// The client's side, between sending its hello and receiving the gateway's.
pub struct ClientHandshake {
    identity: SigningKey,
    ephemeral: StaticSecret,
    ephemeral_public: [u8; 32],
    salt: [u8; 16],
    gateway_identity: [u8; 32],
}

impl ClientHandshake {
    /// Starts a handshake with the gateway whose identity the client pinned; returns the hello.
    pub fn start<R: CryptoRng + ?Sized>(
        identity_seed: &[u8; 32],
        gateway_identity: [u8; 32],
        rng: &mut R,
    ) -> (ClientHandshake, Vec<u8>) {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        let ephemeral = StaticSecret::from(*secret);
        let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let identity = SigningKey::from_bytes(identity_seed);
        let mut hello = Vec::with_capacity(CLIENT_HELLO_LEN);
        hello.extend_from_slice(MAGIC);
        hello.push(KIND_CLIENT_HELLO);
        hello.extend_from_slice(identity.verifying_key().as_bytes());
        hello.extend_from_slice(&ephemeral_public);
        hello.extend_from_slice(&salt);
        let state = ClientHandshake {
            identity,
            ephemeral,
            ephemeral_public,
            salt,
            gateway_identity,
        };
        (state, hello)
    }

    /// Checks the gateway's hello; returns the client's auth message and the session.
    pub fn finish(self, gateway_hello: &[u8]) -> Result<(Vec<u8>, Session), ProtoError> {
        if gateway_hello.len() != GATEWAY_HELLO_LEN || gateway_hello[0] != KIND_GATEWAY_HELLO {
            return Err(ProtoError::Handshake("malformed gateway hello"));
        }
        let gateway_identity: [u8; 32] = array(&gateway_hello[1..33])?;
        if gateway_identity != self.gateway_identity {
            return Err(ProtoError::Handshake(
                "gateway identity is not the pinned one",
            ));
        }
        let gateway_eph: [u8; 32] = array(&gateway_hello[33..65])?;
        let signature: [u8; 64] = array(&gateway_hello[65..129])?;
        let transcript = transcript(
            self.identity.verifying_key().as_bytes(),
            &self.ephemeral_public,
            &self.salt,
            &gateway_identity,
            &gateway_eph,
        );
        verify(
            &gateway_identity,
            DOMAIN_GATEWAY_SIG,
            &transcript,
            &signature,
        )?;
        let keys = derive_keys(&self.ephemeral, &gateway_eph, &self.salt, &transcript)?;
        let client_sig = sign(&self.identity, DOMAIN_CLIENT_SIG, &transcript);
        let mut auth = Vec::with_capacity(CLIENT_AUTH_LEN);
        auth.push(KIND_CLIENT_AUTH);
        auth.extend_from_slice(&client_sig);
        Ok((
            auth,
            Session::new(&keys.client_to_gateway, &keys.gateway_to_client),
        ))
    }
}

/// The gateway's side, between sending its hello and receiving the client's auth.
pub struct GatewayHandshake {
    client_identity: [u8; 32],
    transcript: [u8; TRANSCRIPT_LEN],
    keys: Keys,
}

impl GatewayHandshake {
    /// Answers a client hello.
    pub fn respond<R: CryptoRng + ?Sized>(
        client_hello: &[u8],
        identity_seed: &[u8; 32],
        rng: &mut R,
    ) -> Result<(GatewayHandshake, Vec<u8>), ProtoError> {
        if client_hello.len() != CLIENT_HELLO_LEN
            || &client_hello[..4] != MAGIC
            || client_hello[4] != KIND_CLIENT_HELLO
        {
            return Err(ProtoError::Handshake("malformed client hello"));
        }
        let client_identity: [u8; 32] = array(&client_hello[5..37])?;
        // Refuse an identity that is not a valid ed25519 key now, not after the DH.
        VerifyingKey::from_bytes(&client_identity)
            .map_err(|_| ProtoError::Handshake("client identity is not an ed25519 key"))?;
        let client_eph: [u8; 32] = array(&client_hello[37..69])?;
        let salt: [u8; 16] = array(&client_hello[69..85])?;
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        let ephemeral = StaticSecret::from(*secret);
        let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
        let identity = SigningKey::from_bytes(identity_seed);
        let gateway_identity = identity.verifying_key().to_bytes();
        let transcript = transcript(
            &client_identity,
            &client_eph,
            &salt,
            &gateway_identity,
            &ephemeral_public,
        );
        let keys = derive_keys(&ephemeral, &client_eph, &salt, &transcript)?;
        let mut hello = Vec::with_capacity(GATEWAY_HELLO_LEN);
        hello.push(KIND_GATEWAY_HELLO);
        hello.extend_from_slice(&gateway_identity);
        hello.extend_from_slice(&ephemeral_public);
        hello.extend_from_slice(&sign(&identity, DOMAIN_GATEWAY_SIG, &transcript));
        let state = GatewayHandshake {
            client_identity,
            transcript,
            keys,
        };
        Ok((state, hello))
    }

    /// Checks the client's auth; returns the authenticated client identity and the session.
    pub fn finish(self, client_auth: &[u8]) -> Result<([u8; 32], Session), ProtoError> {
        if client_auth.len() != CLIENT_AUTH_LEN || client_auth[0] != KIND_CLIENT_AUTH {
            return Err(ProtoError::Handshake("malformed client auth"));
        }
        let signature: [u8; 64] = array(&client_auth[1..65])?;
        verify(
            &self.client_identity,
            DOMAIN_CLIENT_SIG,
            &self.transcript,
            &signature,
        )?;
        let session = Session::new(&self.keys.gateway_to_client, &self.keys.client_to_gateway);
        Ok((self.client_identity, session))
    }
}

struct Keys {
    client_to_gateway: Zeroizing<[u8; 32]>,
    gateway_to_client: Zeroizing<[u8; 32]>,
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], ProtoError> {
    bytes
        .try_into()
        .map_err(|_| ProtoError::Handshake("field length"))
}

fn transcript(
    client_identity: &[u8; 32],
    client_eph: &[u8; 32],
    salt: &[u8; 16],
    gateway_identity: &[u8; 32],
    gateway_eph: &[u8; 32],
) -> [u8; TRANSCRIPT_LEN] {
    let mut t = [0u8; TRANSCRIPT_LEN];
    let parts: [&[u8]; 5] = [
        client_identity,
        client_eph,
        salt,
        gateway_identity,
        gateway_eph,
    ];
    let mut at = 0;
    for part in parts {
        t[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    t
}

fn sign(key: &SigningKey, domain: &[u8], transcript: &[u8]) -> [u8; 64] {
    let mut message = Vec::with_capacity(domain.len() + transcript.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(transcript);
    key.sign(&message).to_bytes()
}

fn verify(
    signer: &[u8; 32],
    domain: &[u8],
    transcript: &[u8],
    signature: &[u8; 64],
) -> Result<(), ProtoError> {
    let key = VerifyingKey::from_bytes(signer)
        .map_err(|_| ProtoError::Handshake("signer is not an ed25519 key"))?;
    let mut message = Vec::with_capacity(domain.len() + transcript.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(transcript);
    key.verify(&message, &Signature::from_bytes(signature))
        .map_err(|_| ProtoError::Handshake("bad handshake signature"))
}

fn derive_keys(
    ours: &StaticSecret,
    theirs: &[u8; 32],
    salt: &[u8; 16],
    transcript: &[u8; TRANSCRIPT_LEN],
) -> Result<Keys, ProtoError> {
    let shared = Zeroizing::new(ours.diffie_hellman(&PublicKey::from(*theirs)).to_bytes());
    // A low-order peer point gives an all-zero secret: refuse (no contributory behaviour).
    if shared.iter().all(|&b| b == 0) {
        return Err(ProtoError::Handshake("low-order ephemeral key"));
    }
    let mut info = Vec::with_capacity(DOMAIN_KDF.len() + 32);
    info.extend_from_slice(DOMAIN_KDF);
    info.extend_from_slice(&Sha256::digest(transcript));
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf::Hkdf::<Sha256>::new(Some(salt), &shared[..])
        .expand(&info, &mut okm[..])
        .map_err(|_| ProtoError::Handshake("key derivation"))?;
    let mut client_to_gateway = Zeroizing::new([0u8; 32]);
    let mut gateway_to_client = Zeroizing::new([0u8; 32]);
    client_to_gateway.copy_from_slice(&okm[..32]);
    gateway_to_client.copy_from_slice(&okm[32..]);
    Ok(Keys {
        client_to_gateway,
        gateway_to_client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn test_rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    fn run(
        client_seed: [u8; 32],
        gateway_seed: [u8; 32],
        pinned: [u8; 32],
    ) -> Result<(Session, [u8; 32], Session), ProtoError> {
        let mut rng = test_rng();
        let (client, hello) = ClientHandshake::start(&client_seed, pinned, &mut rng);
        let (gateway, reply) = GatewayHandshake::respond(&hello, &gateway_seed, &mut rng)?;
        let (auth, client_session) = client.finish(&reply)?;
        let (identity, gateway_session) = gateway.finish(&auth)?;
        Ok((client_session, identity, gateway_session))
    }

    #[test]
    fn handshake_gives_matching_sessions() {
        let gw = [2u8; 32];
        let pinned = identity_public(&gw);
        let (mut c, identity, mut g) = run([1u8; 32], gw, pinned).unwrap();
        assert_eq!(identity, identity_public(&[1u8; 32]));
        let sealed = c.seal(b"hello gateway").unwrap();
        assert_eq!(g.open(&sealed).unwrap(), b"hello gateway");
        let sealed = g.seal(b"hello client").unwrap();
        assert_eq!(c.open(&sealed).unwrap(), b"hello client");
        // Replaying a sealed message fails: the receive counter moved on.
        assert!(c.open(&sealed).is_err());
    }

    #[test]
    fn wrong_gateway_is_refused() {
        let pinned = identity_public(&[3u8; 32]);
        assert!(run([1u8; 32], [2u8; 32], pinned).is_err());
    }

    #[test]
    fn forged_client_auth_is_refused() {
        let mut rng = test_rng();
        let gw = [2u8; 32];
        let pinned = identity_public(&gw);
        let (client, hello) = ClientHandshake::start(&[1u8; 32], pinned, &mut rng);
        let (gateway, reply) = GatewayHandshake::respond(&hello, &gw, &mut rng).unwrap();
        let (mut auth, _) = client.finish(&reply).unwrap();
        auth[10] ^= 1;
        assert!(gateway.finish(&auth).is_err());
    }

    #[test]
    fn malformed_hellos_are_errors() {
        let mut rng = test_rng();
        for len in [0, 1, CLIENT_HELLO_LEN - 1, CLIENT_HELLO_LEN + 1] {
            let bytes = vec![0u8; len];
            assert!(GatewayHandshake::respond(&bytes, &[2u8; 32], &mut rng).is_err());
        }
        let (client, _) = ClientHandshake::start(&[1u8; 32], [0u8; 32], &mut rng);
        assert!(client.finish(&[0u8; 5]).is_err());
    }
}
