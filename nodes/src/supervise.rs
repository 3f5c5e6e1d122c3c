//! What a node's control loop does with the engine's liveness: a core that stopped turning
//! silences the node's heartbeats (the directory drops it) until it turns again, and one that
//! stays stalled for `ENGINE_STALL_EXIT_MS` ends the process, as a core that panicked does at
//! once: a non-zero status, so a supervisor (systemd's `Restart=on-failure`) restarts it
//! instead of a node limping on with a dead core that accepts connections and never reads them.
//! When a core stalls, the state of every thread of the process (from /proc) is logged, so the
//! log says where it stopped: running (a task that never yields), asleep in `io_uring_enter`,
//! or blocked on a lock.

use std::time::Instant;

use lethe_engine::runtime::nudge::NUDGE_SILENCE_US;
use lethe_engine::runtime::{Health, Runtime};

use crate::directory::Announcer;
use crate::limits::{ENGINE_STALL_EXIT_MS, STALL_SNAPSHOT_THREADS_MAX};

/// The exit status of a node whose engine failed (EX_SOFTWARE).
pub const EXIT_ENGINE_FAILED: i32 = 70;

/// Remembers the last health seen, to log transitions once and time a stall.
pub struct EngineWatch {
    started: Instant,
    /// Since when (ms on `started`'s clock) the engine has been stalled.
    stalled_since_ms: Option<u64>,
    /// A silent core was nudged and has not turned since.
    nudged: bool,
}

impl Default for EngineWatch {
    fn default() -> Self {
        EngineWatch {
            started: Instant::now(),
            stalled_since_ms: None,
            nudged: false,
        }
    }
}

/// What one observation asks of the control loop.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    /// The engine just stopped serving: log it with the threads' state.
    StallBegan,
    /// The engine serves again after a stall of this many ms.
    Resumed(u64),
    /// Exit with this reason.
    Exit(String),
}

impl EngineWatch {
    /// One check: `Err` with the reason when a core failed or stayed stalled too long (the
    /// caller must exit).
    pub fn check(
        &mut self,
        runtime: &Runtime,
        announcer: Option<&Announcer>,
    ) -> Result<(), String> {
        self.nudge_silent_cores(runtime);
        let health = runtime.health();
        if let Some(announcer) = announcer {
            announcer.set_serving(health.is_serving());
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        match self.observe(&health, now_ms) {
            Step::Nothing => Ok(()),
            Step::StallBegan => {
                tracing::warn!(
                    health = %health,
                    threads = %thread_snapshot(),
                    exit_after_ms = ENGINE_STALL_EXIT_MS,
                    "engine stalled: heartbeats paused, /health answers 503"
                );
                Ok(())
            }
            Step::Resumed(stalled_ms) => {
                tracing::info!(stalled_ms, "engine serving again: heartbeats resume");
                Ok(())
            }
            Step::Exit(reason) => Err(format!("{reason}; threads: {}", thread_snapshot())),
        }
    }

    /// Wakes a core whose loop has been silent for a second with a signal (see
    /// `lethe_engine::runtime::nudge`), logging the threads' state before the first nudge of a
    /// silence, and whether the core turned again after it: that tells a lost wake-up (it
    /// turns) from a core that is busy or blocked (it does not).
    fn nudge_silent_cores(&mut self, runtime: &Runtime) {
        if self.nudged && runtime.loop_silence_us() < NUDGE_SILENCE_US {
            self.nudged = false;
            tracing::warn!("engine core turning again after a nudge: a wake-up had been lost");
        }
        let due = runtime.cores_to_nudge();
        if due.is_empty() {
            return;
        }
        let threads = (!self.nudged).then(thread_snapshot);
        let nudged: Vec<usize> = due
            .into_iter()
            .filter(|&core| runtime.nudge_core(core))
            .collect();
        if let Some(threads) = threads {
            tracing::warn!(
                cores = ?nudged,
                silent_ms = runtime.loop_silence_us() / 1_000,
                threads = %threads,
                "engine core loop silent: woken with a signal"
            );
        }
        self.nudged = true;
    }

    fn observe(&mut self, health: &Health, now_ms: u64) -> Step {
        match health {
            Health::Failed(reason) => Step::Exit(format!("engine core failed: {reason}")),
            Health::Stalled(_) => match self.stalled_since_ms {
                None => {
                    self.stalled_since_ms = Some(now_ms);
                    Step::StallBegan
                }
                Some(since_ms) if now_ms.saturating_sub(since_ms) >= ENGINE_STALL_EXIT_MS => {
                    Step::Exit(format!(
                        "engine stalled for {} ms ({health})",
                        now_ms.saturating_sub(since_ms)
                    ))
                }
                Some(_) => Step::Nothing,
            },
            Health::Serving => match self.stalled_since_ms.take() {
                Some(since_ms) => Step::Resumed(now_ms.saturating_sub(since_ms)),
                None => Step::Nothing,
            },
        }
    }
}

/// Every thread of this process as `name/tid:state:wchan:syscall`: the scheduler state (R
/// running, S sleeping, D uninterruptible), the kernel function it sleeps in and the system
/// call it is blocked in (its number, as /proc/PID/task/TID/syscall gives it; `running` while
/// on a CPU). Best effort: what cannot be read is left out.
pub fn thread_snapshot() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "unreadable".into();
    };
    let read = |tid: &str, file: &str| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/{file}"))
            .map(|text| text.trim().to_string())
            .unwrap_or_default()
    };
    let mut threads: Vec<String> = tasks
        .flatten()
        .take(STALL_SNAPSHOT_THREADS_MAX)
        .filter_map(|task| task.file_name().into_string().ok())
        .map(|tid| {
            let stat = read(&tid, "stat");
            // The state follows the parenthesised name, which may itself hold spaces.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .unwrap_or("?")
                .to_string();
            let syscall = read(&tid, "syscall");
            let syscall = syscall.split(' ').next().unwrap_or("?");
            format!(
                "{}/{tid}:{state}:{}:{syscall}",
                read(&tid, "comm"),
                read(&tid, "wchan")
            )
        })
        .collect();
    threads.sort();
    threads.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_logged_once_and_ends_the_process_only_if_it_lasts() {
        let mut watch = EngineWatch::default();
        let stalled = Health::Stalled(vec![(0, 5_000_000)]);
        assert_eq!(watch.observe(&Health::Serving, 0), Step::Nothing);
        assert_eq!(watch.observe(&stalled, 1_000), Step::StallBegan);
        assert_eq!(watch.observe(&stalled, 2_000), Step::Nothing);
        // A stall that ends short of the bound is forgiven, and the next one is timed afresh.
        assert_eq!(
            watch.observe(&Health::Serving, 1_000 + ENGINE_STALL_EXIT_MS - 1),
            Step::Resumed(ENGINE_STALL_EXIT_MS - 1)
        );
        let again_ms = 10 * ENGINE_STALL_EXIT_MS;
        assert_eq!(watch.observe(&stalled, again_ms), Step::StallBegan);
        assert_eq!(
            watch.observe(&stalled, again_ms + ENGINE_STALL_EXIT_MS - 1),
            Step::Nothing
        );
        match watch.observe(&stalled, again_ms + ENGINE_STALL_EXIT_MS) {
            Step::Exit(reason) => assert!(reason.contains("stalled for 60000 ms"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_core_ends_the_process_at_once() {
        let mut watch = EngineWatch::default();
        match watch.observe(&Health::Failed("core 0 panicked".into()), 0) {
            Step::Exit(reason) => assert!(reason.contains("core 0 panicked"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_thread_snapshot_names_this_thread_with_its_state() {
        let name = "snapshot-probe";
        let snapshot = std::thread::Builder::new()
            .name(name.into())
            .spawn(thread_snapshot)
            .unwrap()
            .join()
            .unwrap();
        // The probe is running (R) while it reads its own state.
        let probe = snapshot
            .split(' ')
            .find(|t| t.starts_with(name))
            .unwrap_or_else(|| panic!("{snapshot}"));
        assert_eq!(probe.split(':').nth(1), Some("R"), "{snapshot}");
    }
}
