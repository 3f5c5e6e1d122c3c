//! Nym's TCP framing (`NymCodec`), versions 7 and 8.
//!
//! A frame is a small header followed by exactly one packet. There is no length prefix: the
//! packet length is implied by the size tag. So a header whose version or size tag we cannot
//! read leaves the rest of the stream without frame boundaries; that is the one *fatal* error.
//! Every other defect (an unknown packet type, a bad key-rotation byte) is confined to its own
//! frame: the decoder skips exactly that frame, reports it, and carries on.
//!
//! ```text
//! v7: version(1)=7 | size tag(1) | packet type(1)                    | packet
//! v8: version(1)=8 | size tag(1) | packet type(1) | key rotation(1)  | packet
//! ```
//!
//! The decoder is push-based and zero-copy: frames that lie wholly inside the bytes handed to
//! [`FrameDecoder::feed`] are yielded as borrowed slices of those bytes; only a frame split
//! across reads is copied, once, into a buffer allocated when the decoder is made.

use core::fmt;

/// Framing version 7: 3-byte header, no key-rotation information.
pub const FRAMING_V7: u8 = 7;
/// Framing version 8: 4-byte header carrying the Sphinx key-rotation byte.
pub const FRAMING_V8: u8 = 8;

/// Header length of a v7 frame.
pub const HEADER_V7_LEN: usize = 3;
/// Header length of a v8 frame.
pub const HEADER_V8_LEN: usize = 4;
/// The longest header; a decoder needs this many bytes before it can know the frame length.
pub const HEADER_MAX_LEN: usize = HEADER_V8_LEN;

/// The Sphinx header (alpha 32, MAC 16, beta 300) plus the payload overhead (17).
const SPHINX_OVERHEAD: usize =
    crate::sphinx::constants::HEADER_SIZE + crate::sphinx::constants::PAYLOAD_OVERHEAD_SIZE;
/// Outfox per-packet overhead as Nym defines it.
const OUTFOX_OVERHEAD: usize = 329;

/// Packet sizes as Nym's `PacketSize` enumerates them; the discriminant is the wire tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketSize {
    /// 2048-byte payload, 2413 bytes on the wire. Nym's default.
    Regular = 1,
    /// SURB-ACK packet: 21-byte payload, 386 bytes on the wire.
    Ack = 2,
    /// 32 KiB payload, 33133 bytes on the wire.
    Extended32 = 3,
    /// 8 KiB payload, 8557 bytes on the wire.
    Extended8 = 4,
    /// 16 KiB payload, 16749 bytes on the wire.
    Extended16 = 5,
    /// Outfox regular packet (2377 bytes). Framed, but Lethe does not process Outfox.
    OutfoxRegular = 6,
    /// Outfox ACK packet (377 bytes). Framed, but Lethe does not process Outfox.
    OutfoxAck = 7,
}

impl PacketSize {
    /// Every size, in tag order.
    pub const ALL: [PacketSize; 7] = [
        PacketSize::Regular,
        PacketSize::Ack,
        PacketSize::Extended32,
        PacketSize::Extended8,
        PacketSize::Extended16,
        PacketSize::OutfoxRegular,
        PacketSize::OutfoxAck,
    ];

    /// The Sphinx sizes Lethe builds and processes.
    pub const SPHINX: [PacketSize; 5] = [
        PacketSize::Regular,
        PacketSize::Ack,
        PacketSize::Extended8,
        PacketSize::Extended16,
        PacketSize::Extended32,
    ];

    /// Parses a size tag.
    pub const fn from_tag(tag: u8) -> Option<PacketSize> {
        match tag {
            1 => Some(PacketSize::Regular),
            2 => Some(PacketSize::Ack),
            3 => Some(PacketSize::Extended32),
            4 => Some(PacketSize::Extended8),
            5 => Some(PacketSize::Extended16),
            6 => Some(PacketSize::OutfoxRegular),
            7 => Some(PacketSize::OutfoxAck),
            _ => None,
        }
    }

    /// The wire tag.
    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// Plaintext payload the sender packs (Sphinx payload size minus its 17-byte overhead).
    pub const fn plaintext_len(self) -> usize {
        match self {
            PacketSize::Regular => 2048,
            PacketSize::Ack => 16 + 5,
            PacketSize::Extended8 => 8 * 1024,
            PacketSize::Extended16 => 16 * 1024,
            PacketSize::Extended32 => 32 * 1024,
            PacketSize::OutfoxRegular => 2048,
            PacketSize::OutfoxAck => 48,
        }
    }

    /// Length of the Sphinx payload (what `sphinx-packet` calls `payload_size`).
    pub const fn payload_len(self) -> usize {
        self.plaintext_len() + crate::sphinx::constants::PAYLOAD_OVERHEAD_SIZE
    }

    /// Length of the packet on the wire, excluding the frame header.
    pub const fn packet_len(self) -> usize {
        match self {
            PacketSize::OutfoxRegular | PacketSize::OutfoxAck => {
                self.plaintext_len() + OUTFOX_OVERHEAD
            }
            _ => self.plaintext_len() + SPHINX_OVERHEAD,
        }
    }

    /// The Sphinx size whose packet is exactly `len` bytes long.
    pub fn from_sphinx_packet_len(len: usize) -> Option<PacketSize> {
        PacketSize::SPHINX
            .into_iter()
            .find(|s| s.packet_len() == len)
    }

    /// True for the Outfox sizes, which Lethe frames but does not process.
    pub const fn is_outfox(self) -> bool {
        matches!(self, PacketSize::OutfoxRegular | PacketSize::OutfoxAck)
    }
}

/// The longest packet any size tag announces.
pub const PACKET_MAX_LEN: usize = PacketSize::Extended32.packet_len();
/// The longest frame: the largest header plus the largest packet.
pub const FRAME_MAX_LEN: usize = HEADER_MAX_LEN + PACKET_MAX_LEN;

const _: () = {
    assert!(PacketSize::Regular.packet_len() == 2413);
    assert!(PacketSize::Ack.packet_len() == 386);
    assert!(PacketSize::Extended8.packet_len() == 8557);
    assert!(PacketSize::Extended16.packet_len() == 16749);
    assert!(PacketSize::Extended32.packet_len() == 33133);
    assert!(PacketSize::OutfoxRegular.packet_len() == 2377);
    assert!(PacketSize::OutfoxAck.packet_len() == 377);
    // The Sphinx constants' sizes are these (the dependency goes framing -> sphinx only).
    use crate::sphinx::constants as sphinx;
    assert!(PacketSize::Regular.packet_len() == sphinx::PACKET_SIZE_REGULAR);
    assert!(PacketSize::Ack.packet_len() == sphinx::PACKET_SIZE_ACK);
    assert!(PacketSize::Extended8.packet_len() == sphinx::PACKET_SIZE_EXTENDED8);
    assert!(PacketSize::Extended16.packet_len() == sphinx::PACKET_SIZE_EXTENDED16);
    assert!(PacketSize::Extended32.packet_len() == sphinx::PACKET_SIZE_EXTENDED32);
};

/// Nym's `PacketType`. Tag 1 (the old "vpn" mode) is retired and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// A Sphinx packet.
    Mix = 0,
    /// An Outfox packet (Nym has since removed Outfox; Lethe frames it but does not process it).
    Outfox = 2,
}

impl PacketType {
    /// Parses a packet-type byte.
    pub const fn from_byte(b: u8) -> Option<PacketType> {
        match b {
            0 => Some(PacketType::Mix),
            2 => Some(PacketType::Outfox),
            _ => None,
        }
    }
}

/// Which of the node's two Sphinx keys the sender used (v8 frames only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum KeyRotation {
    /// Not said (every v7 frame): the receiver tries its primary key, then its secondary.
    #[default]
    Unknown = 0,
    /// A key of an odd rotation id.
    Odd = 1,
    /// A key of an even rotation id.
    Even = 2,
}

impl KeyRotation {
    /// Parses the rotation byte. Nym only emits 1 and 2 in v8 frames; 0 is read as "unknown"
    /// (try both keys) rather than refused, which costs nothing and loses no packet.
    pub const fn from_byte(b: u8) -> Option<KeyRotation> {
        match b {
            0 => Some(KeyRotation::Unknown),
            1 => Some(KeyRotation::Odd),
            2 => Some(KeyRotation::Even),
            _ => None,
        }
    }

    /// The rotation byte for a key of rotation `id`, as Nym derives it.
    pub const fn for_rotation_id(id: u32) -> KeyRotation {
        if id.is_multiple_of(2) {
            KeyRotation::Even
        } else {
            KeyRotation::Odd
        }
    }
}

/// The framing version of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FramingVersion {
    /// Version 7: no key-rotation byte.
    V7,
    /// Version 8: carries the key-rotation byte.
    V8,
}

impl FramingVersion {
    /// Header length for this version.
    pub const fn header_len(self) -> usize {
        match self {
            FramingVersion::V7 => HEADER_V7_LEN,
            FramingVersion::V8 => HEADER_V8_LEN,
        }
    }

    /// The version byte.
    pub const fn byte(self) -> u8 {
        match self {
            FramingVersion::V7 => FRAMING_V7,
            FramingVersion::V8 => FRAMING_V8,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Framing version.
    pub version: FramingVersion,
    /// Size of the packet that follows.
    pub size: PacketSize,
    /// Kind of the packet that follows.
    pub packet_type: PacketType,
    /// Which key the sender used; always `Unknown` in v7.
    pub key_rotation: KeyRotation,
}

impl FrameHeader {
    /// A v7 Sphinx header (what nym-node sends by default today).
    pub const fn v7(size: PacketSize) -> FrameHeader {
        FrameHeader {
            version: FramingVersion::V7,
            size,
            packet_type: PacketType::Mix,
            key_rotation: KeyRotation::Unknown,
        }
    }

    /// A v8 Sphinx header naming the key's rotation.
    pub const fn v8(size: PacketSize, key_rotation: KeyRotation) -> FrameHeader {
        FrameHeader {
            version: FramingVersion::V8,
            size,
            packet_type: PacketType::Mix,
            key_rotation,
        }
    }

    /// Header length on the wire.
    pub const fn len(&self) -> usize {
        self.version.header_len()
    }

    /// Always false: a header is never empty (here for clippy's `len_without_is_empty`).
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Header plus packet length.
    pub const fn frame_len(&self) -> usize {
        self.len() + self.size.packet_len()
    }

    /// Writes the header into `out`, returning its length.
    pub fn encode(&self, out: &mut [u8; HEADER_MAX_LEN]) -> usize {
        out[0] = self.version.byte();
        out[1] = self.size.tag();
        out[2] = self.packet_type as u8;
        out[3] = self.key_rotation as u8;
        self.len()
    }

    /// Reads a header from the start of `bytes`.
    ///
    /// `Ok(None)`: more bytes are needed. `Err(Fatal)`: the stream cannot be delimited any
    /// more. `Ok(Some(Err(..)))`: the frame length is known but the frame is unusable; skip it.
    pub fn decode(
        bytes: &[u8],
    ) -> Result<Option<Result<FrameHeader, SkippedFrame>>, FatalFrameError> {
        let Some(&version_byte) = bytes.first() else {
            return Ok(None);
        };
        let version = match version_byte {
            FRAMING_V7 => FramingVersion::V7,
            FRAMING_V8 => FramingVersion::V8,
            other => return Err(FatalFrameError::UnsupportedVersion(other)),
        };
        let Some(&size_tag) = bytes.get(1) else {
            return Ok(None);
        };
        let size =
            PacketSize::from_tag(size_tag).ok_or(FatalFrameError::UnknownPacketSize(size_tag))?;
        let Some(header_bytes) = bytes.get(..version.header_len()) else {
            return Ok(None);
        };
        let skip = |reason| SkippedFrame {
            frame_len: version.header_len() + size.packet_len(),
            reason,
        };
        let Some(packet_type) = PacketType::from_byte(header_bytes[2]) else {
            return Ok(Some(Err(skip(SkipReason::UnknownPacketType(
                header_bytes[2],
            )))));
        };
        let key_rotation = match version {
            FramingVersion::V7 => KeyRotation::Unknown,
            FramingVersion::V8 => match KeyRotation::from_byte(header_bytes[3]) {
                Some(rotation) => rotation,
                None => {
                    return Ok(Some(Err(skip(SkipReason::InvalidKeyRotation(
                        header_bytes[3],
                    )))))
                }
            },
        };
        Ok(Some(Ok(FrameHeader {
            version,
            size,
            packet_type,
            key_rotation,
        })))
    }
}

/// A frame the decoder could delimit but not use. Its bytes are skipped; the stream goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedFrame {
    /// Bytes skipped (header plus packet).
    pub frame_len: usize,
    /// Why.
    pub reason: SkipReason,
}

/// Why a frame was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The packet-type byte is not one Nym defines (1, the retired "vpn" mode, included).
    UnknownPacketType(u8),
    /// The v8 key-rotation byte is not 0, 1 or 2.
    InvalidKeyRotation(u8),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::UnknownPacketType(b) => write!(f, "unknown packet type {b}"),
            SkipReason::InvalidKeyRotation(b) => write!(f, "invalid key-rotation byte {b}"),
        }
    }
}

/// A header that leaves the stream without frame boundaries: the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FatalFrameError {
    /// Framing version other than 7 or 8 (older Nym versions used a 2-byte header; refused).
    UnsupportedVersion(u8),
    /// Size tag outside 1..=7, so the frame's length is unknown.
    UnknownPacketSize(u8),
}

impl fmt::Display for FatalFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatalFrameError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported framing version {v} (expected 7 or 8); stream cannot be delimited"
                )
            }
            FatalFrameError::UnknownPacketSize(t) => {
                write!(f, "unknown packet size tag {t}; stream cannot be delimited")
            }
        }
    }
}

impl std::error::Error for FatalFrameError {}

/// A frame: its header and a view of its packet bytes (exactly `header.size.packet_len()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The packet.
    pub packet: &'a [u8],
}

/// What one call to [`FrameDecoder::feed`] produced, for the caller's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Frames handed to the callback as `Ok`.
    pub frames: usize,
    /// Frames skipped (handed to the callback as `Err`).
    pub skipped: usize,
}

/// Streaming frame decoder for one connection.
///
/// Memory is fixed at construction ([`FRAME_MAX_LEN`] bytes for a frame split across reads).
pub struct FrameDecoder {
    /// Holds the start of a frame whose end has not arrived yet.
    partial: Box<[u8]>,
    partial_len: usize,
    /// Bytes of a skipped frame still to discard (it may span several reads).
    discard_len: usize,
    fatal: Option<FatalFrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("partial_len", &self.partial_len)
            .field("discard_len", &self.discard_len)
            .field("fatal", &self.fatal)
            .finish()
    }
}

impl FrameDecoder {
    /// A decoder with its reassembly buffer allocated.
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            partial: vec![0u8; FRAME_MAX_LEN].into_boxed_slice(),
            partial_len: 0,
            discard_len: 0,
            fatal: None,
        }
    }

    /// Bytes held over from earlier calls (a frame not yet complete).
    pub fn buffered_len(&self) -> usize {
        self.partial_len
    }

    /// The fatal error that stopped this decoder, if any.
    pub fn fatal(&self) -> Option<FatalFrameError> {
        self.fatal
    }

    /// Decodes every complete frame in the stream so far, calling `on_frame` for each: `Ok` for
    /// a usable frame, `Err` for a frame skipped whole. Bytes of an incomplete trailing frame are
    /// kept for the next call.
    ///
    /// After a fatal error nothing more is decoded: this and every later call return it (frames
    /// before the bad header were already handed out).
    pub fn feed<F>(
        &mut self,
        mut input: &[u8],
        mut on_frame: F,
    ) -> Result<FeedStats, FatalFrameError>
    where
        F: FnMut(Result<Frame<'_>, SkippedFrame>),
    {
        let mut stats = FeedStats::default();
        if let Some(fatal) = self.fatal {
            return Err(fatal);
        }

        input = self.discard(input);

        // Complete a frame begun in an earlier read: first its header, then its packet.
        if self.partial_len > 0 {
            let n = HEADER_MAX_LEN
                .saturating_sub(self.partial_len)
                .min(input.len());
            self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&input[..n]);
            self.partial_len += n;
            input = &input[n..];
            match FrameHeader::decode(&self.partial[..self.partial_len]) {
                Err(fatal) => return Err(self.stop(fatal)),
                Ok(None) => {
                    debug_assert!(input.is_empty());
                    return Ok(stats);
                }
                Ok(Some(Err(skipped))) => {
                    // Reported as soon as its header is read, as in the no-copy path below.
                    self.discard_len = skipped.frame_len - self.partial_len;
                    self.partial_len = 0;
                    stats.skipped += 1;
                    on_frame(Err(skipped));
                    input = self.discard(input);
                }
                Ok(Some(Ok(header))) => {
                    let frame_len = header.frame_len();
                    let n = (frame_len - self.partial_len).min(input.len());
                    self.partial[self.partial_len..self.partial_len + n]
                        .copy_from_slice(&input[..n]);
                    self.partial_len += n;
                    input = &input[n..];
                    if self.partial_len < frame_len {
                        return Ok(stats);
                    }
                    self.partial_len = 0;
                    emit(
                        header,
                        &self.partial[..frame_len],
                        &mut stats,
                        &mut on_frame,
                    );
                }
            }
        }

        // Frames wholly inside `input` are handed out without copying.
        while !input.is_empty() {
            match FrameHeader::decode(input) {
                Err(fatal) => return Err(self.stop(fatal)),
                Ok(Some(Err(skipped))) => {
                    // Reported as soon as its header is read; its bytes are dropped as they come.
                    stats.skipped += 1;
                    on_frame(Err(skipped));
                    self.discard_len = skipped.frame_len;
                    input = self.discard(input);
                }
                Ok(Some(Ok(header))) => {
                    let Some(frame) = input.get(..header.frame_len()) else {
                        break;
                    };
                    emit(header, frame, &mut stats, &mut on_frame);
                    input = &input[frame.len()..];
                }
                Ok(None) => break,
            }
        }

        // Keep the start of an incomplete frame.
        if !input.is_empty() {
            debug_assert!(input.len() < FRAME_MAX_LEN);
            self.partial[..input.len()].copy_from_slice(input);
            self.partial_len = input.len();
        }
        Ok(stats)
    }

    /// Drops the pending tail of a skipped frame from the front of `input`.
    fn discard<'a>(&mut self, input: &'a [u8]) -> &'a [u8] {
        let n = self.discard_len.min(input.len());
        self.discard_len -= n;
        &input[n..]
    }

    fn stop(&mut self, fatal: FatalFrameError) -> FatalFrameError {
        self.fatal = Some(fatal);
        self.partial_len = 0;
        fatal
    }
}

fn emit<F>(header: FrameHeader, frame: &[u8], stats: &mut FeedStats, on_frame: &mut F)
where
    F: FnMut(Result<Frame<'_>, SkippedFrame>),
{
    stats.frames += 1;
    on_frame(Ok(Frame {
        header,
        packet: &frame[header.len()..],
    }));
}

/// Error from [`encode_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The packet's length is not the one its header's size tag implies.
    LengthMismatch {
        /// What the size tag implies.
        expected: usize,
        /// What was given.
        actual: usize,
    },
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::LengthMismatch { expected, actual } => {
                write!(
                    f,
                    "packet is {actual} bytes but its size tag implies {expected}"
                )
            }
            EncodeError::BufferTooSmall => write!(f, "output buffer too small for the frame"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Writes `header ‖ packet` into `out`, returning the frame length.
pub fn encode_frame(
    header: &FrameHeader,
    packet: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let expected = header.size.packet_len();
    if packet.len() != expected {
        return Err(EncodeError::LengthMismatch {
            expected,
            actual: packet.len(),
        });
    }
    let frame_len = header.frame_len();
    let out = out
        .get_mut(..frame_len)
        .ok_or(EncodeError::BufferTooSmall)?;
    let mut head = [0u8; HEADER_MAX_LEN];
    let head_len = header.encode(&mut head);
    out[..head_len].copy_from_slice(&head[..head_len]);
    out[head_len..].copy_from_slice(packet);
    Ok(frame_len)
}

/// Appends `header ‖ packet` to `out`.
pub fn encode_frame_to_vec(
    header: &FrameHeader,
    packet: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.resize(start + header.frame_len(), 0);
    match encode_frame(header, packet, &mut out[start..]) {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(size: PacketSize, fill: u8) -> Vec<u8> {
        vec![fill; size.packet_len()]
    }

    fn collect(
        dec: &mut FrameDecoder,
        input: &[u8],
        out: &mut Vec<Result<(FrameHeader, Vec<u8>), SkippedFrame>>,
    ) -> Result<FeedStats, FatalFrameError> {
        dec.feed(input, |r| {
            out.push(r.map(|f| (f.header, f.packet.to_vec())))
        })
    }

    fn stream(frames: &[(FrameHeader, u8)]) -> Vec<u8> {
        let mut s = Vec::new();
        for (h, fill) in frames {
            encode_frame_to_vec(h, &packet(h.size, *fill), &mut s).unwrap();
        }
        s
    }

    #[test]
    fn header_roundtrip_every_size_and_version() {
        for size in PacketSize::ALL {
            for h in [
                FrameHeader::v7(size),
                FrameHeader::v8(size, KeyRotation::Odd),
                FrameHeader::v8(size, KeyRotation::Even),
            ] {
                let mut buf = [0u8; HEADER_MAX_LEN];
                let n = h.encode(&mut buf);
                assert_eq!(n, h.len());
                assert_eq!(FrameHeader::decode(&buf[..n]), Ok(Some(Ok(h))));
                // One byte short is "need more", never an error.
                assert_eq!(FrameHeader::decode(&buf[..n - 1]), Ok(None));
            }
        }
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let frames = [
            (FrameHeader::v7(PacketSize::Regular), 1),
            (FrameHeader::v8(PacketSize::Ack, KeyRotation::Even), 2),
            (FrameHeader::v7(PacketSize::Ack), 3),
            (FrameHeader::v8(PacketSize::Regular, KeyRotation::Odd), 4),
        ];
        let s = stream(&frames);
        for split in 0..=s.len() {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            collect(&mut dec, &s[..split], &mut got).unwrap();
            collect(&mut dec, &s[split..], &mut got).unwrap();
            assert_eq!(got.len(), frames.len(), "split at {split}");
            for (g, (h, fill)) in got.iter().zip(frames.iter()) {
                let (gh, gp) = g.as_ref().unwrap();
                assert_eq!(gh, h);
                assert_eq!(gp, &packet(h.size, *fill));
            }
            assert_eq!(dec.buffered_len(), 0);
        }
    }

    #[test]
    fn byte_at_a_time() {
        let frames = [
            (FrameHeader::v8(PacketSize::Ack, KeyRotation::Odd), 9),
            (FrameHeader::v7(PacketSize::Extended8), 8),
        ];
        let s = stream(&frames);
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &s {
            collect(&mut dec, core::slice::from_ref(b), &mut got).unwrap();
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().unwrap().1, packet(PacketSize::Extended8, 8));
    }

    #[test]
    fn bad_packet_type_skips_only_that_frame() {
        let mut s = stream(&[(FrameHeader::v7(PacketSize::Ack), 1)]);
        let mut bad = stream(&[(FrameHeader::v8(PacketSize::Ack, KeyRotation::Odd), 2)]);
        bad[2] = 1; // the retired "vpn" packet type
        s.extend_from_slice(&bad);
        let mut bad_rot = stream(&[(FrameHeader::v8(PacketSize::Regular, KeyRotation::Odd), 3)]);
        bad_rot[3] = 9;
        s.extend_from_slice(&bad_rot);
        s.extend_from_slice(&stream(&[(FrameHeader::v7(PacketSize::Ack), 4)]));
        for split in [0, 1, 5, 390, 391, 392, 800, s.len() - 1] {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            let a = collect(&mut dec, &s[..split], &mut got).unwrap();
            let b = collect(&mut dec, &s[split..], &mut got).unwrap();
            assert_eq!(a.frames + b.frames, 2, "split {split}");
            assert_eq!(a.skipped + b.skipped, 2, "split {split}");
            assert_eq!(got.len(), 4);
            assert_eq!(
                got[1],
                Err(SkippedFrame {
                    frame_len: 4 + 386,
                    reason: SkipReason::UnknownPacketType(1)
                })
            );
            assert_eq!(
                got[2],
                Err(SkippedFrame {
                    frame_len: 4 + 2413,
                    reason: SkipReason::InvalidKeyRotation(9)
                })
            );
            assert_eq!(got[3].as_ref().unwrap().1, packet(PacketSize::Ack, 4));
        }
    }

    #[test]
    fn unreadable_header_is_fatal_and_keeps_earlier_frames() {
        for (byte_idx, value, expected) in [
            (0usize, 6u8, FatalFrameError::UnsupportedVersion(6)),
            (0, 9, FatalFrameError::UnsupportedVersion(9)),
            (1, 0, FatalFrameError::UnknownPacketSize(0)),
            (1, 8, FatalFrameError::UnknownPacketSize(8)),
        ] {
            let mut s = stream(&[
                (FrameHeader::v7(PacketSize::Ack), 1),
                (FrameHeader::v7(PacketSize::Ack), 2),
            ]);
            s[389 + byte_idx] = value;
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            assert_eq!(collect(&mut dec, &s, &mut got), Err(expected));
            assert_eq!(got.len(), 1);
            assert_eq!(dec.fatal(), Some(expected));
            assert_eq!(collect(&mut dec, &s, &mut got), Err(expected));
            assert_eq!(got.len(), 1);
        }
    }

    #[test]
    fn encode_refuses_wrong_length() {
        let h = FrameHeader::v7(PacketSize::Regular);
        let mut out = vec![0; 4000];
        assert_eq!(
            encode_frame(&h, &[0; 10], &mut out),
            Err(EncodeError::LengthMismatch {
                expected: 2413,
                actual: 10
            })
        );
        assert_eq!(
            encode_frame(&h, &[0; 2413], &mut out[..100]),
            Err(EncodeError::BufferTooSmall)
        );
        let mut v = vec![7u8];
        assert!(encode_frame_to_vec(&h, &[0; 3], &mut v).is_err());
        assert_eq!(v, vec![7u8]);
    }

    #[test]
    fn sizes_match_nym() {
        assert_eq!(
            PacketSize::from_sphinx_packet_len(2413),
            Some(PacketSize::Regular)
        );
        assert_eq!(PacketSize::from_sphinx_packet_len(2377), None);
        for s in PacketSize::ALL {
            assert_eq!(PacketSize::from_tag(s.tag()), Some(s));
        }
        assert_eq!(KeyRotation::for_rotation_id(4), KeyRotation::Even);
        assert_eq!(KeyRotation::for_rotation_id(7), KeyRotation::Odd);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn any_frame() -> impl Strategy<Value = (u8, PacketSize, u8, u8, u8)> {
        (
            prop_oneof![Just(FRAMING_V7), Just(FRAMING_V8)],
            prop::sample::select(PacketSize::ALL.to_vec()),
            prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => any::<u8>()],
            prop_oneof![4 => 1u8..=2, 1 => any::<u8>()],
            any::<u8>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// However a stream of well-delimited frames is cut into reads, the decoder yields the
        /// same frames and skips the same frames as when given it whole.
        #[test]
        fn chunking_does_not_matter(frames in prop::collection::vec(any_frame(), 1..12), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20)) {
            let mut s = Vec::new();
            for (v, size, ty, rot, fill) in &frames {
                s.push(*v);
                s.push(size.tag());
                s.push(*ty);
                if *v == FRAMING_V8 { s.push(*rot); }
                s.extend(std::iter::repeat_n(*fill, size.packet_len()));
            }
            let whole = {
                let mut dec = FrameDecoder::new();
                let mut out = Vec::new();
                dec.feed(&s, |r| out.push(r.map(|f| (f.header, f.packet.to_vec())))).unwrap();
                out
            };
            prop_assert_eq!(whole.len(), frames.len());
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).collect();
            points.sort_unstable();
            let mut dec = FrameDecoder::new();
            let mut out = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain([s.len()]) {
                dec.feed(&s[prev..p], |r| out.push(r.map(|f| (f.header, f.packet.to_vec())))).unwrap();
                prev = p;
            }
            prop_assert_eq!(out, whole);
            prop_assert_eq!(dec.buffered_len(), 0);
        }

        /// Arbitrary bytes never panic the decoder and never make it hold more than one frame.
        #[test]
        fn arbitrary_bytes(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..8)) {
            let mut dec = FrameDecoder::new();
            for c in &chunks {
                let _ = dec.feed(c, |_| {});
                prop_assert!(dec.buffered_len() < FRAME_MAX_LEN);
            }
        }
    }
}
