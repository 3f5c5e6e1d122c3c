//! What each packet carries to the receiver: which run it belongs to, its sequence number and
//! when it was scheduled to leave. 20 bytes, so it fits even an ACK-size packet (21 bytes of
//! plaintext).

/// Bytes of an encoded [`Stamp`].
pub const STAMP_LEN: usize = 20;

const _: () = assert!(STAMP_LEN <= lethe_crypto::framing::PacketSize::Ack.plaintext_len());

/// The payload of every loadgen packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Identifies one load run (one step of a ramp); packets of other runs are not counted.
    pub run_id: u32,
    /// 0-based, in schedule order across all senders.
    pub seq: u64,
    /// When the packet was scheduled to leave, in ns after the run's start.
    pub scheduled_ns: u64,
}

impl Stamp {
    /// `run_id (u32 BE) ‖ seq (u64 BE) ‖ scheduled_ns (u64 BE)`.
    pub fn encode(&self) -> [u8; STAMP_LEN] {
        let mut out = [0u8; STAMP_LEN];
        out[..4].copy_from_slice(&self.run_id.to_be_bytes());
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..].copy_from_slice(&self.scheduled_ns.to_be_bytes());
        out
    }

    /// Reads a stamp from a recovered plaintext; `None` unless it is exactly [`STAMP_LEN`].
    pub fn decode(bytes: &[u8]) -> Option<Stamp> {
        let bytes: &[u8; STAMP_LEN] = bytes.try_into().ok()?;
        let mut run_id = [0u8; 4];
        let mut seq = [0u8; 8];
        let mut scheduled_ns = [0u8; 8];
        run_id.copy_from_slice(&bytes[..4]);
        seq.copy_from_slice(&bytes[4..12]);
        scheduled_ns.copy_from_slice(&bytes[12..]);
        Some(Stamp {
            run_id: u32::from_be_bytes(run_id),
            seq: u64::from_be_bytes(seq),
            scheduled_ns: u64::from_be_bytes(scheduled_ns),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_lengths() {
        let stamp = Stamp {
            run_id: 7,
            seq: u64::MAX - 1,
            scheduled_ns: 123_456_789,
        };
        assert_eq!(Stamp::decode(&stamp.encode()), Some(stamp));
        assert_eq!(Stamp::decode(&stamp.encode()[..19]), None);
        assert_eq!(Stamp::decode(&[0u8; 21]), None);
    }
}
