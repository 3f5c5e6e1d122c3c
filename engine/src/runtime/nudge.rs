//! Waking a core thread that sleeps through its own wake-ups. glommio parks an idle core in
//! `io_uring_enter` on its main ring, linked by a poll on the descriptor of the ring that
//! carries every network receive, timer and remote wake-up; should that one poll miss (a lost
//! wake-up), the core sleeps for good with packets waiting and its timers due. A signal with a
//! handler ends the wait (`EINTR`, which glommio takes as a wake-up): the core collects its
//! completions and runs. The control plane sends one to a core whose loop has been silent for
//! [`NUDGE_SILENCE_US`]; a core that turns as it should never gets one.

use std::sync::Once;

/// The signal sent: its default action is to ignore it, and nothing else here uses it.
pub const NUDGE_SIGNAL: libc::c_int = libc::SIGURG;
/// A core loop silent this long is nudged (at most once per this interval per core): far past
/// the loop's own longest sleep, well short of the silence that reports the core stalled.
pub const NUDGE_SILENCE_US: u64 = 1_000_000;
const _: () = assert!(NUDGE_SILENCE_US >= 10 * super::TIMER_IDLE_US_MAX);
const _: () = assert!(NUDGE_SILENCE_US < super::liveness::STALL_US);

static HANDLER: Once = Once::new();

extern "C" fn on_nudge(_signal: libc::c_int) {}

/// Installs (once per process) a handler for [`NUDGE_SIGNAL`] that does nothing, without
/// `SA_RESTART`: a blocking call of the thread it hits returns `EINTR` instead of resuming.
/// An ignored signal would not interrupt anything.
pub fn install_handler() {
    HANDLER.call_once(|| {
        // SAFETY: a zeroed `sigaction` is valid; the handler is async-signal-safe (it does
        // nothing), and the mask is initialised before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_nudge as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(NUDGE_SIGNAL, &action, std::ptr::null_mut());
        }
    });
}

/// The calling thread's kernel id (what [`nudge`] takes).
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Sends [`NUDGE_SIGNAL`] to thread `tid` of this process; false if there is no such thread.
pub fn nudge(tid: i32) -> bool {
    if tid <= 0 {
        return false;
    }
    // SAFETY: tgkill only delivers a signal; the handler was installed before any core ran.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, NUDGE_SIGNAL) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A thread blocked in a read that nothing will satisfy returns EINTR when nudged: the
    /// handler is installed and does not restart the call.
    #[test]
    fn a_nudge_ends_a_blocking_call_with_eintr() {
        install_handler();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (tid_tx, tid_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            let mut byte = [0u8; 1];
            // SAFETY: reads at most one byte into `byte`.
            let read = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
            (read, std::io::Error::last_os_error().raw_os_error())
        });
        let tid = tid_rx.recv().unwrap();
        // Nudge until the read returns (the first signal may come before the read blocks);
        // bounded.
        for _ in 0..500 {
            if reader.is_finished() {
                break;
            }
            assert!(nudge(tid));
            std::thread::sleep(Duration::from_millis(10));
        }
        let (read, errno) = reader.join().unwrap();
        assert_eq!((read, errno), (-1, Some(libc::EINTR)));
        // SAFETY: both descriptors are ours and still open.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn no_thread_no_nudge() {
        assert!(!nudge(0));
        assert!(!nudge(-1));
    }
}
