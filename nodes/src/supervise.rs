//! What a node's control loop does with the engine's liveness: a core that stopped turning
//! silences the node's heartbeats (the directory drops it) until it turns again; a core that
//! panicked ends the process with a non-zero status, so a supervisor (systemd's
//! `Restart=on-failure`, `lethe testnet`) restarts it instead of a node limping on with a dead
//! core that accepts connections and never reads them.

use lethe_engine::runtime::{Health, Runtime};

use crate::directory::Announcer;

/// The exit status of a node whose engine failed (EX_SOFTWARE).
pub const EXIT_ENGINE_FAILED: i32 = 70;

/// Remembers the last health seen, to log transitions once.
#[derive(Default)]
pub struct EngineWatch {
    stalled: bool,
}

impl EngineWatch {
    /// One check: `Err` with the reason when a core failed (the caller must exit).
    pub fn check(
        &mut self,
        runtime: &Runtime,
        announcer: Option<&Announcer>,
    ) -> Result<(), String> {
        let health = runtime.health();
        let serving = health.is_serving();
        if let Some(announcer) = announcer {
            announcer.set_serving(serving);
        }
        match health {
            Health::Failed(reason) => Err(format!("engine core failed: {reason}")),
            Health::Stalled(_) if !self.stalled => {
                self.stalled = true;
                tracing::warn!(
                    health = %health,
                    "engine stalled: heartbeats paused, /health answers 503"
                );
                Ok(())
            }
            Health::Serving if self.stalled => {
                self.stalled = false;
                tracing::info!("engine serving again: heartbeats resume");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
