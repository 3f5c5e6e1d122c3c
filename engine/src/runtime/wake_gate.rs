//! A future adapter that polls its inner future only after the inner future asked to be woken.
//!
//! Why: glommio 0.9's `Source::collect_rw` (behind `TcpListener::accept`, `TcpStream::connect`
//! and other one-shot ring operations) pushes a clone of the polling task's waker onto the
//! source's waiter list on *every* poll and drops them only when the operation completes. A
//! task's waker reference count is an `i16`, so a pending accept re-polled 32,767 times (a task
//! that also waits on something else: a 20 ms stop timer re-polled it every 20 ms, 655 s) panics
//! with "Waker invariant broken" and the core's accept task dies. The reproducer is
//! `a_pending_accept_polled_40000_times_*` in this module's tests.
//!
//! [`WakeGated`] gives the inner future its own waker (an `Arc` with no such limit) and skips
//! polls the inner future did not ask for, so a pending operation sees one poll per wake-up of
//! its own, however often the surrounding task runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Polls `inner` only on its first poll and after `inner` woke its own waker.
pub struct WakeGated<F> {
    inner: F,
    signal: Arc<Signal>,
    waker: Waker,
}

struct Signal {
    woken: AtomicBool,
    /// The surrounding task's waker, refreshed when it changes.
    outer: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let outer = match self.outer.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        if let Some(outer) = outer {
            outer.wake();
        }
    }
}

impl<F: Future> WakeGated<F> {
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            // The first poll always reaches the inner future.
            woken: AtomicBool::new(true),
            outer: Mutex::new(None),
        });
        let waker = Waker::from(signal.clone());
        WakeGated {
            inner,
            signal,
            waker,
        }
    }
}

impl<F: Future> Future for WakeGated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned (never moved out of `self`); the other fields
        // are not pinned and are only read.
        let this = unsafe { self.get_unchecked_mut() };
        if let Ok(mut slot) = this.signal.outer.lock() {
            match slot.as_ref() {
                Some(outer) if outer.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending; // a wake-up of the surrounding task, not of this operation
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        // SAFETY: see above; `inner` stays where it is for as long as `self` is pinned.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        inner.poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use glommio::net::TcpListener;
    use glommio::LocalExecutorBuilder;
    use std::cell::Cell;
    use std::rc::Rc;

    /// More re-polls than an `i16` reference count survives.
    const POLLS: u32 = 40_000;

    /// Races `accept` against a future that wakes the task `POLLS` times, as the stop timer did;
    /// returns whether the executor thread ended without a panic.
    fn race_accept_against_wakeups(gated: bool) -> bool {
        let handle = LocalExecutorBuilder::default()
            .name("wake-gate-test")
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let polls = Rc::new(Cell::new(0u32));
                let counter = polls.clone();
                let wakeups = future::poll_fn(move |cx| {
                    counter.set(counter.get() + 1);
                    if counter.get() >= POLLS {
                        return std::task::Poll::Ready(None);
                    }
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                });
                let accepted = if gated {
                    future::or(
                        async { Some(WakeGated::new(listener.accept()).await) },
                        wakeups,
                    )
                    .await
                } else {
                    future::or(async { Some(listener.accept().await) }, wakeups).await
                };
                assert!(accepted.is_none(), "nobody connected");
                assert_eq!(polls.get(), POLLS);
            })
            .expect("executor");
        handle.join().is_ok()
    }

    #[test]
    fn a_pending_accept_polled_40000_times_through_the_gate_survives() {
        assert!(race_accept_against_wakeups(true));
    }

    /// The glommio defect the gate works around. If this starts failing, glommio no longer
    /// leaks a waker per poll of a pending accept and the gate may be unnecessary.
    #[test]
    fn a_pending_accept_polled_40000_times_without_the_gate_panics_in_glommio_0_9() {
        assert!(!race_accept_against_wakeups(false));
    }

    #[test]
    fn the_inner_future_is_polled_once_per_wake_of_its_own() {
        let inner_polls = Rc::new(Cell::new(0u32));
        let stored: Rc<Cell<Option<Waker>>> = Rc::new(Cell::new(None));
        let (polls, slot) = (inner_polls.clone(), stored.clone());
        let inner = future::poll_fn(move |cx| {
            polls.set(polls.get() + 1);
            slot.set(Some(cx.waker().clone()));
            if polls.get() == 2 {
                std::task::Poll::Ready(7)
            } else {
                std::task::Poll::Pending
            }
        });
        let mut gated = Box::pin(WakeGated::new(inner));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        for _ in 0..1_000 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(inner_polls.get(), 1);
        stored.take().expect("inner stored its waker").wake();
        assert_eq!(gated.as_mut().poll(&mut cx), Poll::Ready(7));
        assert_eq!(inner_polls.get(), 2);
    }
}
