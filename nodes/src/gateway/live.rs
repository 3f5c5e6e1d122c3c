//! The gateway's live sessions, one per client identity: the mailbox writer pushes committed
//! deliveries through them to the session tasks, which register and remove themselves. Its own
//! module so that the mailbox and the sessions both depend on it and not on each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::proto::DeliveryKind;

/// One stored delivery, as sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    pub kind: DeliveryKind,
    pub identifier: [u8; 16],
    pub bytes: Vec<u8>,
}

/// One live session per client identity.
struct LiveSession {
    generation: u64,
    queue: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
    replaced: Arc<Notify>,
}

/// The live sessions, shared by the session tasks and the mailbox writer.
#[derive(Default)]
pub struct LiveSessions {
    sessions: Mutex<HashMap<[u8; 32], LiveSession>>,
    generations: AtomicU64,
}

impl LiveSessions {
    /// Pushes a committed delivery to the client's session, if it has one; `true` if queued.
    /// A full queue marks the session lagged (it re-reads the mailbox).
    pub fn push(&self, client: &[u8; 32], delivery: Delivery) -> bool {
        let Ok(sessions) = self.sessions.lock() else {
            return false;
        };
        let Some(session) = sessions.get(client) else {
            return false;
        };
        match session.queue.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                session.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Makes this the client's live session; the previous one (if any) is told to end.
    pub(super) fn insert(
        &self,
        client: [u8; 32],
        queue: mpsc::Sender<Delivery>,
        lagged: Arc<AtomicBool>,
        replaced: Arc<Notify>,
    ) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let session = LiveSession {
            generation,
            queue,
            lagged,
            replaced,
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            if let Some(old) = sessions.insert(client, session) {
                old.replaced.notify_one();
            }
        }
        generation
    }

    /// Has this client a live session now?
    pub fn is_live(&self, client: &[u8; 32]) -> bool {
        self.sessions
            .lock()
            .is_ok_and(|sessions| sessions.contains_key(client))
    }

    pub(super) fn remove(&self, client: &[u8; 32], generation: u64) {
        if let Ok(mut sessions) = self.sessions.lock() {
            if sessions
                .get(client)
                .is_some_and(|s| s.generation == generation)
            {
                sessions.remove(client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            id,
            kind: DeliveryKind::Message,
            identifier: [0; 16],
            bytes: vec![1],
        }
    }

    #[test]
    fn full_session_queue_marks_lagged_and_replacement_notifies() {
        let live = LiveSessions::default();
        let client = [1u8; 32];
        assert!(!live.push(&client, delivery(1)), "no session yet");
        let (queue, mut outbound) = mpsc::channel(1);
        let lagged = Arc::new(AtomicBool::new(false));
        let replaced = Arc::new(Notify::new());
        let first = live.insert(client, queue, lagged.clone(), replaced.clone());
        assert!(live.push(&client, delivery(1)));
        assert!(!live.push(&client, delivery(2)));
        assert!(lagged.load(Ordering::Acquire));
        assert_eq!(outbound.try_recv().unwrap().id, 1);

        let (queue, _outbound) = mpsc::channel(1);
        let second = live.insert(client, queue, Arc::default(), Arc::new(Notify::new()));
        assert_ne!(first, second);
        // The old session was told; its removal does not remove the new one.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), replaced.notified())
                .await
                .unwrap();
        });
        live.remove(&client, first);
        assert!(live.push(&client, delivery(3)));
    }
}
