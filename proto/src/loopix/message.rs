//! The message layer, I/O-free: end-to-end encryption of packet contents, fragments, message
//! bodies (with attached reply SURBs) and bounded reassembly.
//!
//! Forward packet content (after the SURB-ACK, [`crate::wire::payload::content_bytes`]):
//! ```text
//! g^x (32) ‖ ChaCha20-Poly1305(k, nonce 0, fragment) (fragment padded to fill the content)
//! k = HKDF-SHA256(salt = "lethe-e2e-v1", ikm = X25519(x, recipient key), info = g^x ‖ recipient key)
//! ```
//! The key is fresh per packet (fresh x), so the zero nonce is never reused. Reply packet
//! content (the whole Sphinx plaintext of a SURB reply) is `ChaCha20-Poly1305(reply key,
//! nonce 0, fragment)`, the reply key being the one the SURB's creator attached to that SURB
//! (each SURB is used once).
//!
//! Fragment (the AEAD plaintext), big-endian:
//! ```text
//! message id (u64) ‖ index (u32) ‖ count (u32) ‖ flags (u8) ‖ length (u16) ‖ data ‖ zero padding
//! ```
//! Message body (what is fragmented): with [`FLAG_REPLY_SURBS`],
//! `surb count (u16) ‖ count × (entry length (u16) ‖ reply key (32) ‖ SURB bytes) ‖ data`;
//! otherwise just the data.

use std::collections::{HashMap, VecDeque};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use lethe_crypto::framing::PacketSize;
use rand::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::wire::payload::content_bytes;

/// Fragment header length.
pub const FRAGMENT_HEADER_BYTES: usize = 8 + 4 + 4 + 1 + 2;
/// AEAD tag length.
pub const TAG_BYTES: usize = 16;
/// The ephemeral public key in front of forward content.
pub const EPHEMERAL_BYTES: usize = 32;
/// Length of the key a reply SURB carries for encrypting the reply.
pub const REPLY_KEY_BYTES: usize = 32;

/// The fragment carries (part of) a message body that starts with reply SURBs.
pub const FLAG_REPLY_SURBS: u8 = 0x01;
/// The fragment came back through one of our reply SURBs.
pub const FLAG_IS_REPLY: u8 = 0x02;
/// A loop-cover packet (sent to ourselves; dropped on arrival).
pub const FLAG_LOOP_COVER: u8 = 0x04;
const FLAGS_KNOWN: u8 = FLAG_REPLY_SURBS | FLAG_IS_REPLY | FLAG_LOOP_COVER;

const E2E_SALT: &[u8] = b"lethe-e2e-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("content does not decrypt (tampered, or not for us)")]
    Decrypt,
    #[error("recipient encryption key is not usable (low order)")]
    BadKey,
    #[error("malformed fragment: {0}")]
    Malformed(&'static str),
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("packet size too small for a fragment")]
    PacketTooSmall,
}

/// Data bytes of one fragment in a forward packet of `size`.
pub const fn forward_fragment_capacity(size: PacketSize) -> usize {
    content_bytes(size) - EPHEMERAL_BYTES - TAG_BYTES - FRAGMENT_HEADER_BYTES
}

/// Data bytes of one fragment in a reply packet of `size`.
pub const fn reply_fragment_capacity(size: PacketSize) -> usize {
    size.plaintext_len() - TAG_BYTES - FRAGMENT_HEADER_BYTES
}

/// Content bytes of a forward packet of `size` (the e2e-encrypted fragment).
pub const fn forward_content_len(size: PacketSize) -> usize {
    content_bytes(size)
}

/// Content bytes of a reply packet of `size`.
pub const fn reply_content_len(size: PacketSize) -> usize {
    size.plaintext_len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    pub message_id: u64,
    pub index: u32,
    pub count: u32,
    pub flags: u8,
    pub len: u16,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Fragment {
    pub header: FragmentHeader,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Fragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fragment({:?}, {} bytes)", self.header, self.data.len())
    }
}

impl Fragment {
    /// The fragment's plaintext padded with zeros to `len` bytes.
    pub fn encode(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, MessageError> {
        let needed = FRAGMENT_HEADER_BYTES + self.data.len();
        if needed > len || self.data.len() != usize::from(self.header.len) {
            return Err(MessageError::PacketTooSmall);
        }
        let mut out = Zeroizing::new(vec![0u8; len]);
        out[..FRAGMENT_HEADER_BYTES].copy_from_slice(&self.header.to_bytes());
        out[FRAGMENT_HEADER_BYTES..needed].copy_from_slice(&self.data);
        Ok(out)
    }

    /// An owned copy of a fragment checked by [`FragmentView::new_checked`].
    pub fn decode(bytes: &[u8]) -> Result<Fragment, MessageError> {
        let view = FragmentView::new_checked(bytes)?;
        Ok(Fragment {
            header: view.header(),
            data: view.data().to_vec(),
        })
    }
}

impl FragmentHeader {
    /// The header as it starts a fragment.
    pub fn to_bytes(&self) -> [u8; FRAGMENT_HEADER_BYTES] {
        let mut out = [0u8; FRAGMENT_HEADER_BYTES];
        let fields = [
            &self.message_id.to_be_bytes()[..],
            &self.index.to_be_bytes(),
            &self.count.to_be_bytes(),
            &[self.flags],
            &self.len.to_be_bytes(),
        ];
        let mut at = 0;
        for field in fields {
            out[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        out
    }
}

/// A decrypted fragment over its bytes, checked: index below count, known flags, data within
/// the bytes and zero padding after it.
#[derive(Clone, Copy)]
pub struct FragmentView<'a> {
    header: FragmentHeader,
    data: &'a [u8],
}

impl<'a> FragmentView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, MessageError> {
        const SHORT: MessageError = MessageError::Malformed("short fragment");
        let (message_id, rest) = bytes.split_first_chunk::<8>().ok_or(SHORT)?;
        let (index, rest) = rest.split_first_chunk::<4>().ok_or(SHORT)?;
        let (count, rest) = rest.split_first_chunk::<4>().ok_or(SHORT)?;
        let (&flags, rest) = rest.split_first().ok_or(SHORT)?;
        let (len, rest) = rest.split_first_chunk::<2>().ok_or(SHORT)?;
        let header = FragmentHeader {
            message_id: u64::from_be_bytes(*message_id),
            index: u32::from_be_bytes(*index),
            count: u32::from_be_bytes(*count),
            flags,
            len: u16::from_be_bytes(*len),
        };
        if header.count == 0 || header.index >= header.count {
            return Err(MessageError::Malformed("fragment index"));
        }
        if flags & !FLAGS_KNOWN != 0 {
            return Err(MessageError::Malformed("unknown flags"));
        }
        let (data, padding) = rest
            .split_at_checked(usize::from(header.len))
            .ok_or(MessageError::Malformed("fragment length"))?;
        if padding.iter().any(|&b| b != 0) {
            return Err(MessageError::Malformed("non-zero padding"));
        }
        Ok(FragmentView { header, data })
    }

    pub fn header(&self) -> FragmentHeader {
        self.header
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Splits a message body into fragments of at most `capacity` data bytes (at least one
/// fragment, even for an empty body).
pub fn split(
    message_id: u64,
    flags: u8,
    body: &[u8],
    capacity: usize,
    max_message_bytes: usize,
) -> Result<Vec<Fragment>, MessageError> {
    if body.len() > max_message_bytes {
        return Err(MessageError::TooLarge {
            len: body.len(),
            max: max_message_bytes,
        });
    }
    let capacity = capacity.min(usize::from(u16::MAX));
    if capacity == 0 {
        return Err(MessageError::PacketTooSmall);
    }
    let count = body.len().div_ceil(capacity).max(1);
    let count_u32 = u32::try_from(count).map_err(|_| MessageError::TooLarge {
        len: body.len(),
        max: max_message_bytes,
    })?;
    let mut fragments = Vec::with_capacity(count);
    for index in 0..count_u32 {
        let start = (index as usize) * capacity;
        let end = (start + capacity).min(body.len());
        let data = body.get(start..end).unwrap_or_default().to_vec();
        fragments.push(Fragment {
            header: FragmentHeader {
                message_id,
                index,
                count: count_u32,
                flags,
                len: data.len() as u16,
            },
            data,
        });
    }
    Ok(fragments)
}

fn derive_forward_key(
    shared: &[u8; 32],
    ephemeral_public: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, MessageError> {
    if shared.iter().all(|&b| b == 0) {
        return Err(MessageError::BadKey);
    }
    let mut info = [0u8; 64];
    info[..32].copy_from_slice(ephemeral_public);
    info[32..].copy_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(Some(E2E_SALT), shared)
        .expand(&info, &mut key[..])
        .map_err(|_| MessageError::BadKey)?;
    Ok(key)
}

fn aead_seal(key: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, MessageError> {
    ChaCha20Poly1305::new(&(*key).into())
        .encrypt(&Nonce::from([0u8; 12]), plaintext)
        .map_err(|_| MessageError::Malformed("seal"))
}

fn aead_open(key: &[u8; 32], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, MessageError> {
    ChaCha20Poly1305::new(&(*key).into())
        .decrypt(&Nonce::from([0u8; 12]), ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| MessageError::Decrypt)
}

/// Encrypts a forward fragment for the recipient's x25519 key: `g^x ‖ AEAD(fragment)`, exactly
/// [`forward_content_len`] bytes.
pub fn seal_forward<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &[u8; 32],
    fragment: &Fragment,
    size: PacketSize,
) -> Result<Vec<u8>, MessageError> {
    let plaintext = fragment.encode(forward_content_len(size) - EPHEMERAL_BYTES - TAG_BYTES)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut secret[..]);
    let ephemeral = StaticSecret::from(*secret);
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = Zeroizing::new(
        ephemeral
            .diffie_hellman(&PublicKey::from(*recipient))
            .to_bytes(),
    );
    let key = derive_forward_key(&shared, &ephemeral_public, recipient)?;
    let ciphertext = aead_seal(&key, &plaintext)?;
    let mut out = Vec::with_capacity(EPHEMERAL_BYTES + ciphertext.len());
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts forward content with our x25519 secret.
pub fn open_forward(own: &StaticSecret, content: &[u8]) -> Result<Fragment, MessageError> {
    let (ephemeral_public, ciphertext) = content
        .split_first_chunk::<EPHEMERAL_BYTES>()
        .ok_or(MessageError::Malformed("short content"))?;
    let shared = Zeroizing::new(
        own.diffie_hellman(&PublicKey::from(*ephemeral_public))
            .to_bytes(),
    );
    let own_public = PublicKey::from(own).to_bytes();
    let key = derive_forward_key(&shared, ephemeral_public, &own_public)
        .map_err(|_| MessageError::Decrypt)?;
    let plaintext = aead_open(&key, ciphertext)?;
    Fragment::decode(&plaintext)
}

/// Encrypts a reply fragment with the SURB's reply key, exactly [`reply_content_len`] bytes.
pub fn seal_reply(
    reply_key: &[u8; REPLY_KEY_BYTES],
    fragment: &Fragment,
    size: PacketSize,
) -> Result<Vec<u8>, MessageError> {
    let plaintext = fragment.encode(reply_content_len(size) - TAG_BYTES)?;
    aead_seal(reply_key, &plaintext)
}

pub fn open_reply(
    reply_key: &[u8; REPLY_KEY_BYTES],
    content: &[u8],
) -> Result<Fragment, MessageError> {
    let plaintext = aead_open(reply_key, content)?;
    Fragment::decode(&plaintext)
}

/// One reply SURB as attached to a message: the key to encrypt the reply with, and the SURB.
#[derive(Clone)]
pub struct AttachedSurb {
    pub reply_key: Zeroizing<[u8; REPLY_KEY_BYTES]>,
    pub surb: Vec<u8>,
}

impl std::fmt::Debug for AttachedSurb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttachedSurb(<{} bytes>)", self.surb.len())
    }
}

/// Most SURBs one message carries.
pub const SURBS_PER_MESSAGE_MAX: usize = 1000;

/// Builds a message body: attached SURBs (if any) then the data.
pub fn encode_body(surbs: &[AttachedSurb], data: &[u8]) -> Result<(u8, Vec<u8>), MessageError> {
    if surbs.is_empty() {
        return Ok((0, data.to_vec()));
    }
    if surbs.len() > SURBS_PER_MESSAGE_MAX {
        return Err(MessageError::Malformed("too many SURBs"));
    }
    let mut body = Vec::with_capacity(
        2 + surbs
            .iter()
            .map(|s| 2 + REPLY_KEY_BYTES + s.surb.len())
            .sum::<usize>()
            + data.len(),
    );
    body.extend_from_slice(&(surbs.len() as u16).to_be_bytes());
    for surb in surbs {
        let len = u16::try_from(REPLY_KEY_BYTES + surb.surb.len())
            .map_err(|_| MessageError::Malformed("SURB too long"))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&surb.reply_key[..]);
        body.extend_from_slice(&surb.surb);
    }
    body.extend_from_slice(data);
    Ok((FLAG_REPLY_SURBS, body))
}

/// Splits a message body into attached SURBs and data (SURB bytes are not parsed here).
pub fn decode_body(flags: u8, body: &[u8]) -> Result<(Vec<AttachedSurb>, &[u8]), MessageError> {
    if flags & FLAG_REPLY_SURBS == 0 {
        return Ok((Vec::new(), body));
    }
    let (count, mut rest) = body
        .split_first_chunk::<2>()
        .ok_or(MessageError::Malformed("short SURB list"))?;
    let count = usize::from(u16::from_be_bytes(*count));
    if count > SURBS_PER_MESSAGE_MAX {
        return Err(MessageError::Malformed("too many SURBs"));
    }
    let mut surbs = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = rest
            .split_first_chunk::<2>()
            .ok_or(MessageError::Malformed("short SURB entry"))?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (entry, after) = after
            .split_at_checked(len)
            .ok_or(MessageError::Malformed("SURB entry length"))?;
        let (key, surb) = entry
            .split_first_chunk::<REPLY_KEY_BYTES>()
            .ok_or(MessageError::Malformed("SURB entry without key"))?;
        surbs.push(AttachedSurb {
            reply_key: Zeroizing::new(*key),
            surb: surb.to_vec(),
        });
        rest = after;
    }
    Ok((surbs, rest))
}

/// Reassembly limits.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Largest message body (sum of fragment data).
    pub max_message_bytes: usize,
    /// Most messages being reassembled at once.
    pub max_incomplete: usize,
    /// Most bytes held in incomplete messages.
    pub max_buffered_bytes: usize,
    /// An incomplete message not completed within this is dropped.
    pub timeout_ms: u64,
    /// How long (and how many) completed message ids are remembered to refuse duplicates.
    pub completed_memory_ms: u64,
    pub completed_memory_max: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_message_bytes: 16 << 20,
            max_incomplete: 256,
            max_buffered_bytes: 64 << 20,
            timeout_ms: 10 * 60 * 1000,
            completed_memory_ms: 24 * 3600 * 1000,
            completed_memory_max: 100_000,
        }
    }
}

/// A reassembled message.
#[derive(Debug, PartialEq, Eq)]
pub struct Complete {
    pub message_id: u64,
    pub flags: u8,
    pub body: Vec<u8>,
    /// Gateway delivery ids of every fragment (including duplicates seen meanwhile).
    pub delivery_ids: Vec<u64>,
}

/// What feeding a fragment to the [`Reassembler`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembly {
    /// The message is complete: hand it over.
    Complete(Complete),
    /// Stored; more fragments are needed.
    Incomplete,
    /// A fragment already held (its delivery id is kept with the message).
    Duplicate,
    /// A fragment of a message already completed: confirm it and forget it.
    AlreadyComplete,
    /// Not stored (the message's partial state is dropped if nothing of it remains).
    Refused(Refused),
}

impl Reassembly {
    pub fn is_refused(&self) -> bool {
        matches!(self, Reassembly::Refused(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("message too large")]
    TooLarge,
    #[error("too many incomplete messages or bytes buffered")]
    Full,
    #[error("fragment inconsistent with earlier fragments of its message")]
    Inconsistent,
    #[error("fragment longer than a non-final fragment")]
    BadLength,
}

struct Partial {
    count: u32,
    flags: u8,
    /// Length of the non-final fragments, once one was seen.
    fragment_len: Option<usize>,
    parts: HashMap<u32, Vec<u8>>,
    bytes: usize,
    /// What the fragments count against the buffer limit (bookkeeping included).
    charged: usize,
    started_us: u64,
    delivery_ids: Vec<u64>,
}

/// Bounded reassembly of fragments into messages; duplicates are recognised by
/// `(message id, index)` and, after completion, by message id.
pub struct Reassembler {
    limits: ReassemblyLimits,
    partial: HashMap<u64, Partial>,
    buffered: usize,
    completed: HashMap<u64, u64>,
    completed_order: VecDeque<(u64, u64)>,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Reassembler {
        Reassembler {
            limits,
            partial: HashMap::new(),
            buffered: 0,
            completed: HashMap::new(),
            completed_order: VecDeque::new(),
        }
    }

    pub fn incomplete(&self) -> usize {
        self.partial.len()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Feeds one fragment. `delivery_id` is the gateway's id for it (kept until completion).
    pub fn insert(
        &mut self,
        fragment: Fragment,
        delivery_id: Option<u64>,
        now_us: u64,
    ) -> Reassembly {
        let message_id = fragment.header.message_id;
        let result = self.insert_inner(fragment, delivery_id, now_us);
        if result.is_refused()
            && self
                .partial
                .get(&message_id)
                .is_some_and(|p| p.parts.is_empty())
        {
            self.drop_partial(message_id);
        }
        result
    }

    fn insert_inner(
        &mut self,
        fragment: Fragment,
        delivery_id: Option<u64>,
        now_us: u64,
    ) -> Reassembly {
        let h = fragment.header;
        if self.completed.contains_key(&h.message_id) {
            return Reassembly::AlreadyComplete;
        }
        let len = fragment.data.len();
        let is_final = h.index + 1 == h.count;
        // Non-final fragments are full, hence non-empty and of one length.
        if !is_final && len == 0 {
            return Reassembly::Refused(Refused::BadLength);
        }
        if h.count == 1 {
            if len > self.limits.max_message_bytes {
                return Reassembly::Refused(Refused::TooLarge);
            }
            self.remember_completed(h.message_id, now_us);
            return Reassembly::Complete(Complete {
                message_id: h.message_id,
                flags: h.flags,
                body: fragment.data,
                delivery_ids: delivery_id.into_iter().collect(),
            });
        }
        let charge = charge(len);
        if !self.partial.contains_key(&h.message_id) {
            if self.partial.len() >= self.limits.max_incomplete {
                return Reassembly::Refused(Refused::Full);
            }
            self.partial.insert(
                h.message_id,
                Partial {
                    count: h.count,
                    flags: h.flags,
                    fragment_len: None,
                    parts: HashMap::new(),
                    bytes: 0,
                    charged: 0,
                    started_us: now_us,
                    delivery_ids: Vec::new(),
                },
            );
        }
        let limits = self.limits;
        let buffered = self.buffered;
        let Some(partial) = self.partial.get_mut(&h.message_id) else {
            return Reassembly::Refused(Refused::Inconsistent);
        };
        if partial.count != h.count || partial.flags != h.flags {
            return Reassembly::Refused(Refused::Inconsistent);
        }
        if partial.parts.contains_key(&h.index) {
            partial.delivery_ids.extend(delivery_id);
            return Reassembly::Duplicate;
        }
        // Length rules: non-final fragments all of one length, the final one no longer.
        let fragment_len = if is_final {
            partial.fragment_len
        } else {
            match partial.fragment_len {
                Some(l) if l != len => return Reassembly::Refused(Refused::BadLength),
                _ => Some(len),
            }
        };
        let final_len = if is_final {
            Some(len)
        } else {
            partial.parts.get(&(h.count - 1)).map(|d| d.len())
        };
        if let (Some(fl), Some(last)) = (fragment_len, final_len) {
            if last > fl {
                return Reassembly::Refused(Refused::BadLength);
            }
        }
        // The message's size is known once a non-final fragment arrived: refuse early.
        let declared = fragment_len
            .map(|l| l.saturating_mul(h.count as usize - 1))
            .unwrap_or(len);
        if declared > limits.max_message_bytes || len > limits.max_message_bytes {
            self.drop_partial(h.message_id);
            return Reassembly::Refused(Refused::TooLarge);
        }
        if buffered + charge > limits.max_buffered_bytes {
            if partial.parts.is_empty() {
                self.drop_partial(h.message_id);
            }
            return Reassembly::Refused(Refused::Full);
        }
        partial.fragment_len = fragment_len;
        partial.bytes += len;
        partial.charged += charge;
        partial.parts.insert(h.index, fragment.data);
        partial.delivery_ids.extend(delivery_id);
        self.buffered += charge;
        self.try_complete(h.message_id, now_us)
    }

    fn try_complete(&mut self, message_id: u64, now_us: u64) -> Reassembly {
        let Some(partial) = self.partial.get(&message_id) else {
            return Reassembly::Incomplete;
        };
        if partial.bytes > self.limits.max_message_bytes {
            self.drop_partial(message_id);
            return Reassembly::Refused(Refused::TooLarge);
        }
        if partial.parts.len() as u64 != u64::from(partial.count) {
            return Reassembly::Incomplete;
        }
        let Some(mut partial) = self.partial.remove(&message_id) else {
            return Reassembly::Incomplete;
        };
        self.buffered = self.buffered.saturating_sub(partial.charged);
        let mut body = Vec::with_capacity(partial.bytes);
        for index in 0..partial.count {
            match partial.parts.remove(&index) {
                Some(data) => body.extend_from_slice(&data),
                None => return Reassembly::Refused(Refused::Inconsistent),
            }
        }
        self.remember_completed(message_id, now_us);
        Reassembly::Complete(Complete {
            message_id,
            flags: partial.flags,
            body,
            delivery_ids: partial.delivery_ids,
        })
    }

    fn drop_partial(&mut self, message_id: u64) -> Option<Partial> {
        let partial = self.partial.remove(&message_id)?;
        self.buffered = self.buffered.saturating_sub(partial.charged);
        Some(partial)
    }

    fn remember_completed(&mut self, message_id: u64, now_us: u64) {
        if self.completed.insert(message_id, now_us).is_none() {
            self.completed_order.push_back((message_id, now_us));
        }
        while self.completed_order.len() > self.limits.completed_memory_max {
            if let Some((id, _)) = self.completed_order.pop_front() {
                self.completed.remove(&id);
            }
        }
    }

    /// Forgets that `message_id` completed (its delivery to the application failed, so a
    /// redelivery must be reassembled again).
    pub fn forget_completed(&mut self, message_id: u64) {
        self.completed.remove(&message_id);
        self.completed_order.retain(|(id, _)| *id != message_id);
    }

    /// Drops incomplete messages older than the timeout; returns their delivery ids.
    pub fn expire(&mut self, now_us: u64) -> Vec<u64> {
        let timeout = self.limits.timeout_ms.saturating_mul(1000);
        let expired: Vec<u64> = self
            .partial
            .iter()
            .filter(|(_, p)| now_us.saturating_sub(p.started_us) > timeout)
            .map(|(id, _)| *id)
            .collect();
        let mut ids = Vec::new();
        for id in expired {
            if let Some(p) = self.drop_partial(id) {
                ids.extend(p.delivery_ids);
            }
        }
        let memory = self.limits.completed_memory_ms.saturating_mul(1000);
        while let Some(&(id, at)) = self.completed_order.front() {
            if now_us.saturating_sub(at) <= memory {
                break;
            }
            self.completed_order.pop_front();
            self.completed.remove(&id);
        }
        ids
    }
}

/// What a fragment counts against the buffer limit: its data plus bookkeeping.
fn charge(len: usize) -> usize {
    len + 64
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::RngExt;

    use super::*;

    const SIZE: PacketSize = PacketSize::Regular;

    fn body(len: usize) -> Vec<u8> {
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
        (0..len).map(|_| rng.random::<u8>()).collect()
    }

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits {
            max_message_bytes: 1 << 20,
            max_incomplete: 4,
            max_buffered_bytes: 2 << 20,
            timeout_ms: 1000,
            completed_memory_ms: 10_000,
            completed_memory_max: 100,
        }
    }

    #[test]
    fn capacities_match_the_payload_layout() {
        // 2048 - 418 (SURB-ACK) - 32 (g^x) - 16 (tag) - 19 (header).
        assert_eq!(forward_fragment_capacity(SIZE), 1563);
        assert_eq!(reply_fragment_capacity(SIZE), 2048 - 16 - 19);
    }

    #[test]
    fn fragment_encode_decode_and_malformed() {
        let f = Fragment {
            header: FragmentHeader {
                message_id: 7,
                index: 2,
                count: 3,
                flags: FLAG_REPLY_SURBS,
                len: 4,
            },
            data: vec![1, 2, 3, 4],
        };
        let bytes = f.encode(100).unwrap();
        assert_eq!(Fragment::decode(&bytes).unwrap(), f);
        assert!(f.encode(FRAGMENT_HEADER_BYTES + 3).is_err());
        let mut bad = bytes.clone();
        bad[99] = 1; // padding
        assert!(Fragment::decode(&bad).is_err());
        let mut bad = bytes.clone();
        bad[16] = 0x80; // unknown flag
        assert!(Fragment::decode(&bad).is_err());
        let mut bad = bytes.clone();
        bad[11] = 3; // index == count
        assert!(Fragment::decode(&bad).is_err());
        let mut bad = bytes.clone();
        bad[18] = 200; // length beyond the buffer
        assert!(Fragment::decode(&bad[..50]).is_err());
        assert!(Fragment::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn random_sizes_reordered_with_duplicates_reassemble() {
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
        let capacity = forward_fragment_capacity(SIZE);
        for round in 0..40 {
            let len = match round {
                0 => 0,
                1 => capacity,
                2 => capacity + 1,
                _ => rng.random_range(0..40 * capacity),
            };
            let data = body(len);
            let fragments = split(round, 0, &data, capacity, 1 << 20).unwrap();
            assert_eq!(fragments.len(), len.div_ceil(capacity).max(1));
            let mut shuffled: Vec<(u64, Fragment)> = fragments
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, f)| (i as u64, f))
                .collect();
            // Duplicate a few, then shuffle.
            let extra: Vec<_> = shuffled.iter().take(3).cloned().collect();
            shuffled.extend(extra.into_iter().map(|(i, f)| (i + 1000, f)));
            shuffled.shuffle(&mut rng);
            let mut r = Reassembler::new(limits());
            let mut done = None;
            let mut duplicates = 0;
            for (id, f) in shuffled {
                match r.insert(f, Some(id), 0) {
                    Reassembly::Complete(complete) => {
                        assert!(done.is_none());
                        done = Some(complete);
                    }
                    Reassembly::Duplicate | Reassembly::AlreadyComplete => duplicates += 1,
                    Reassembly::Incomplete => {}
                    Reassembly::Refused(refused) => panic!("{refused}"),
                }
            }
            let complete = done.unwrap();
            assert_eq!(complete.body, data, "round {round}");
            assert_eq!(complete.message_id, round);
            assert_eq!(duplicates, 3.min(fragments.len()));
            assert_eq!(r.buffered_bytes(), 0);
            assert_eq!(r.incomplete(), 0);
            // Later copies are recognised.
            assert_eq!(
                r.insert(fragments[0].clone(), Some(9), 5),
                Reassembly::AlreadyComplete
            );
        }
    }

    #[test]
    fn loss_leaves_the_message_incomplete_until_it_expires() {
        let data = body(5000);
        let fragments = split(1, 0, &data, 1000, 1 << 20).unwrap();
        let mut r = Reassembler::new(limits());
        for (i, f) in fragments.iter().enumerate().skip(1) {
            assert_eq!(
                r.insert(f.clone(), Some(i as u64), 0),
                Reassembly::Incomplete
            );
        }
        assert_eq!(r.incomplete(), 1);
        assert!(r.expire(1_000_000).is_empty());
        let mut expired = r.expire(1_000_001);
        expired.sort();
        assert_eq!(expired, vec![1, 2, 3, 4]);
        assert_eq!(r.incomplete(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn limits_are_enforced() {
        let mut r = Reassembler::new(limits());
        // Too large: a non-final fragment declares count × length beyond the limit.
        let huge = Fragment {
            header: FragmentHeader {
                message_id: 1,
                index: 0,
                count: 100_000,
                flags: 0,
                len: 1000,
            },
            data: vec![0; 1000],
        };
        assert_eq!(
            r.insert(huge, None, 0),
            Reassembly::Refused(Refused::TooLarge)
        );
        assert_eq!(r.incomplete(), 0);
        assert!(split(1, 0, &body(2 << 20), 1000, 1 << 20).is_err());
        // At most `max_incomplete` messages in progress.
        for id in 0..4 {
            let f = split(100 + id, 0, &body(3000), 1000, 1 << 20).unwrap();
            assert!(!r.insert(f[0].clone(), None, 0).is_refused());
        }
        let f = split(200, 0, &body(3000), 1000, 1 << 20).unwrap();
        assert_eq!(
            r.insert(f[0].clone(), None, 0),
            Reassembly::Refused(Refused::Full)
        );
        assert_eq!(r.incomplete(), 4);
        // Inconsistent count or flags for the same message id.
        let mut g = split(100, 0, &body(5000), 1000, 1 << 20).unwrap();
        assert_eq!(
            r.insert(g.remove(1), None, 0),
            Reassembly::Refused(Refused::Inconsistent)
        );
        // Non-final fragments of differing lengths.
        let mut odd = split(101, 0, &body(3000), 1000, 1 << 20).unwrap()[1].clone();
        odd.data.truncate(999);
        odd.header.len = 999;
        assert_eq!(
            r.insert(odd, None, 0),
            Reassembly::Refused(Refused::BadLength)
        );
        // Buffered bytes.
        let mut small = Reassembler::new(ReassemblyLimits {
            max_buffered_bytes: 2500,
            ..limits()
        });
        let f = split(5, 0, &body(5000), 1000, 1 << 20).unwrap();
        assert!(!small.insert(f[0].clone(), None, 0).is_refused());
        assert!(!small.insert(f[1].clone(), None, 0).is_refused());
        assert_eq!(
            small.insert(f[2].clone(), None, 0),
            Reassembly::Refused(Refused::Full)
        );
    }

    #[test]
    fn forward_encryption_round_trip_and_tampering() {
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
        let secret = StaticSecret::from([7u8; 32]);
        let public = PublicKey::from(&secret).to_bytes();
        let f = split(9, 0, &body(1500), forward_fragment_capacity(SIZE), 1 << 20).unwrap();
        let sealed = seal_forward(&mut rng, &public, &f[0], SIZE).unwrap();
        assert_eq!(sealed.len(), forward_content_len(SIZE));
        assert_eq!(open_forward(&secret, &sealed).unwrap(), f[0]);
        for at in [0, 31, 32, 100, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert_eq!(
                open_forward(&secret, &bad),
                Err(MessageError::Decrypt),
                "{at}"
            );
        }
        let other = StaticSecret::from([8u8; 32]);
        assert_eq!(open_forward(&other, &sealed), Err(MessageError::Decrypt));
        assert!(open_forward(&secret, &sealed[..20]).is_err());
        // A low-order recipient key is refused by the sender.
        assert_eq!(
            seal_forward(&mut rng, &[0u8; 32], &f[0], SIZE),
            Err(MessageError::BadKey)
        );
    }

    #[test]
    fn reply_encryption_round_trip_and_tampering() {
        let key = [3u8; 32];
        let f = split(
            9,
            FLAG_IS_REPLY,
            &body(2000),
            reply_fragment_capacity(SIZE),
            1 << 20,
        )
        .unwrap();
        let sealed = seal_reply(&key, &f[0], SIZE).unwrap();
        assert_eq!(sealed.len(), reply_content_len(SIZE));
        assert_eq!(open_reply(&key, &sealed).unwrap(), f[0]);
        let mut bad = sealed.clone();
        bad[5] ^= 1;
        assert_eq!(open_reply(&key, &bad), Err(MessageError::Decrypt));
        assert_eq!(open_reply(&[4u8; 32], &sealed), Err(MessageError::Decrypt));
    }

    #[test]
    fn body_with_surbs_round_trips() {
        let surbs: Vec<AttachedSurb> = (0..3u8)
            .map(|i| AttachedSurb {
                reply_key: Zeroizing::new([i; 32]),
                surb: vec![i; 396],
            })
            .collect();
        let (flags, encoded) = encode_body(&surbs, b"hello").unwrap();
        assert_eq!(flags, FLAG_REPLY_SURBS);
        let (decoded, data) = decode_body(flags, &encoded).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[2].surb, vec![2; 396]);
        assert_eq!(*decoded[1].reply_key, [1; 32]);
        assert_eq!(encode_body(&[], b"x").unwrap(), (0, b"x".to_vec()));
        assert!(decode_body(FLAG_REPLY_SURBS, &encoded[..100]).is_err());
        assert!(decode_body(FLAG_REPLY_SURBS, &[]).is_err());
    }

    #[test]
    fn fragment_view_too_short_exact_length_round_trip() {
        let fragment = Fragment {
            header: FragmentHeader {
                message_id: 0x0102_0304_0506_0708,
                index: 1,
                count: 3,
                flags: 0,
                len: 4,
            },
            data: vec![9, 8, 7, 6],
        };
        // Exact length: no padding.
        let exact = fragment.encode(FRAGMENT_HEADER_BYTES + 4).unwrap();
        assert_eq!(&exact[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let view = FragmentView::new_checked(&exact).unwrap();
        assert_eq!(
            (view.header(), view.data()),
            (fragment.header, &[9, 8, 7, 6][..])
        );
        assert_eq!(Fragment::decode(&exact).unwrap(), fragment);
        // Too short for the header, or for the data it announces.
        assert!(FragmentView::new_checked(&exact[..FRAGMENT_HEADER_BYTES - 1]).is_err());
        assert!(FragmentView::new_checked(&exact[..exact.len() - 1]).is_err());
        // Padded: zeros accepted, anything else refused.
        let mut padded = fragment.encode(FRAGMENT_HEADER_BYTES + 10).unwrap();
        assert!(FragmentView::new_checked(&padded).is_ok());
        padded[FRAGMENT_HEADER_BYTES + 9] = 1;
        assert!(FragmentView::new_checked(&padded).is_err());
        // Index not below count, and unknown flags.
        let mut index = exact.clone();
        index[8..12].copy_from_slice(&3u32.to_be_bytes());
        assert!(FragmentView::new_checked(&index).is_err());
        let mut flags = exact.clone();
        flags[16] = 0x80;
        assert!(FragmentView::new_checked(&flags).is_err());
    }
}
