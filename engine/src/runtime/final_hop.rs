//! The hand-off of final-hop packets from the engine cores to a gateway's own threads.
//!
//! A mixnode has no hand-off: its cores count final-hop packets as `final_hop_at_mixnode`
//! drops and allocate nothing. A gateway starts the runtime with a [`FinalHopSender`]; each
//! core copies every final-hop packet (already unwrapped with the gateway's Sphinx key, so the
//! payload region is decrypted) into an owned [`FinalHop`] and offers it to a bounded channel,
//! never blocking. When the channel is full the packet is dropped and counted as
//! `final_hop_queue_full`.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::metrics::{CoreMetrics, DropReason};

/// One final-hop packet, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalHop {
    /// The destination address of the last routing slot (a client identity for Lethe).
    pub destination: [u8; 32],
    /// The SURB identifier (all zero for forward packets).
    pub identifier: [u8; 16],
    /// The processed packet: header ‖ decrypted payload, as long as the received packet.
    pub packet: Vec<u8>,
}

/// The cores' end of the hand-off (cheap to clone, one per core).
#[derive(Debug, Clone)]
pub struct FinalHopSender {
    sender: Sender<FinalHop>,
}

/// A bounded hand-off holding at most `capacity` packets (at least one).
pub fn final_hop_channel(capacity: usize) -> (FinalHopSender, Receiver<FinalHop>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity.max(1));
    (FinalHopSender { sender }, receiver)
}

impl FinalHopSender {
    /// Offers a packet without blocking; `false` (and one `final_hop_queue_full` drop counted,
    /// or `shutdown` if the receiving side is gone) when it cannot be taken.
    pub fn offer(
        &self,
        metrics: &CoreMetrics,
        destination: [u8; 32],
        identifier: [u8; 16],
        packet: &[u8],
    ) -> bool {
        let hop = FinalHop {
            destination,
            identifier,
            packet: packet.to_vec(),
        };
        match self.sender.try_send(hop) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                metrics.dropped(DropReason::FinalHopQueueFull, 1);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                metrics.dropped(DropReason::Shutdown, 1);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_channel_drops_and_counts() {
        let metrics = CoreMetrics::default();
        let (sender, receiver) = final_hop_channel(1);
        assert!(sender.offer(&metrics, [1; 32], [2; 16], &[3; 10]));
        assert!(!sender.offer(&metrics, [1; 32], [2; 16], &[3; 10]));
        assert_eq!(metrics.dropped_count(DropReason::FinalHopQueueFull), 1);
        let hop = receiver.try_recv().unwrap();
        assert_eq!(hop.destination, [1; 32]);
        assert_eq!(hop.packet, vec![3; 10]);
        drop(receiver);
        assert!(!sender.offer(&metrics, [1; 32], [2; 16], &[3; 10]));
        assert_eq!(metrics.dropped_count(DropReason::Shutdown), 1);
    }
}
