//! The gateway's refusals of our packets (`Error{code, text}`), logged as state changes.
//!
//! A refusal comes back for every packet the gateway turns down, and the causes are states
//! that last: while a network forms, the directory publishes a new topology within a second
//! of each registration, but a gateway re-reads it only every few seconds, so a client (the
//! service provider, say) that already routes through a new layer-1 mixnode has each of its
//! cover packets refused `NOT_LAYER1` until the gateway catches up: dozens of identical
//! lines. So the first refusal of a kind is a warning, repeats are counted (at debug level),
//! and when the gateway has refused nothing of that kind for [`QUIET`], one line says the
//! episode ended and how many packets it cost.

use std::time::{Duration, Instant};

/// A kind of refusal not seen for this long has ended; the next one starts a new episode.
pub const QUIET: Duration = Duration::from_secs(30);

/// The current episode: one refusal code, repeated.
struct Episode {
    code: u8,
    count: u64,
    last: Instant,
}

/// What [`Refusals::refused`] made of a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A new episode (first refusal, or another code than the last one's).
    New,
    /// The `count`th refusal of the episode.
    Repeat { count: u64 },
}

/// An episode that ended: its code and how many packets were refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    pub code: u8,
    pub count: u64,
}

#[derive(Default)]
pub struct Refusals {
    episode: Option<Episode>,
}

impl Refusals {
    /// Records one refusal at `now`; returns it and the episode it ended, if another kind's.
    pub fn refused(&mut self, code: u8, now: Instant) -> (Refusal, Option<Ended>) {
        let ended = self.quiet(now);
        match &mut self.episode {
            Some(episode) if episode.code == code => {
                episode.count = episode.count.saturating_add(1);
                episode.last = now;
                (
                    Refusal::Repeat {
                        count: episode.count,
                    },
                    ended,
                )
            }
            current => {
                let ended = current
                    .take()
                    .map(|e| Ended {
                        code: e.code,
                        count: e.count,
                    })
                    .or(ended);
                *current = Some(Episode {
                    code,
                    count: 1,
                    last: now,
                });
                (Refusal::New, ended)
            }
        }
    }

    /// Ends the episode if nothing was refused for [`QUIET`] before `now`.
    pub fn quiet(&mut self, now: Instant) -> Option<Ended> {
        let over = self
            .episode
            .as_ref()
            .is_some_and(|e| now.saturating_duration_since(e.last) >= QUIET);
        if !over {
            return None;
        }
        self.episode.take().map(|e| Ended {
            code: e.code,
            count: e.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_the_episode_ends_after_quiet() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.refused(2, t0), (Refusal::New, None));
        for n in 2..=35 {
            let at = t0 + Duration::from_millis(100 * n);
            assert_eq!(r.refused(2, at), (Refusal::Repeat { count: n }, None));
        }
        let last = t0 + Duration::from_millis(3500);
        assert_eq!(r.quiet(last + QUIET - Duration::from_millis(1)), None);
        assert_eq!(r.quiet(last + QUIET), Some(Ended { code: 2, count: 35 }));
        assert_eq!(r.quiet(last + QUIET * 2), None);
        // After the quiet period, the same kind is news again.
        assert_eq!(r.refused(2, last + QUIET * 3), (Refusal::New, None));
    }

    #[test]
    fn another_code_ends_the_episode() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        r.refused(2, t0);
        r.refused(2, t0);
        assert_eq!(
            r.refused(4, t0),
            (Refusal::New, Some(Ended { code: 2, count: 2 }))
        );
    }
}
