//! Non-blocking socket calls made straight on a glommio stream's descriptor.
//!
//! glommio reads and writes through readiness polls armed on its rings; a read that finds data
//! already queued still costs a ring round trip while an earlier poll is in flight, and a write
//! to a full socket waits for a one-shot POLLOUT wake-up. The runtime's hot paths call `recv` and
//! `send` with `MSG_DONTWAIT` directly instead: data that is there is taken at once, and a writer
//! that meets a full socket retries on a timer (see `egress`), so no wake-up can be lost.

use std::os::fd::AsRawFd;

/// What one non-blocking call did.
#[derive(Debug, PartialEq, Eq)]
pub enum Io {
    /// Bytes moved (> 0).
    Done(usize),
    /// Nothing now: the receive queue is empty or the send buffer is full.
    WouldBlock,
    /// End of stream or a socket error: the connection is gone.
    Closed,
}

fn outcome(count: isize) -> Io {
    match count {
        n if n > 0 => Io::Done(n as usize),
        0 => Io::Closed,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Io::WouldBlock,
            _ => Io::Closed,
        },
    }
}

/// One `recv` of at most `buffer.len()` bytes; never blocks.
pub fn recv_now(socket: &impl AsRawFd, buffer: &mut [u8]) -> Io {
    if buffer.is_empty() {
        return Io::WouldBlock;
    }
    // SAFETY: recv writes at most `buffer.len()` bytes into `buffer`, on a socket the caller
    // owns; MSG_DONTWAIT never blocks the executor.
    let count = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
        )
    };
    outcome(count)
}

/// One `send` of a prefix of `bytes`; never blocks, never raises SIGPIPE.
pub fn send_now(socket: &impl AsRawFd, bytes: &[u8]) -> Io {
    if bytes.is_empty() {
        return Io::Done(0);
    }
    // SAFETY: send reads at most `bytes.len()` bytes from `bytes`, on a socket the caller owns.
    let count = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    outcome(count)
}

/// SO_RCVBUF, best effort: a failure leaves the kernel's default (autotuned) buffer.
pub fn set_receive_buffer(socket: &impl AsRawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int, on a socket the
    // caller owns.
    unsafe {
        let _ = libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn recv_and_send_report_would_block_data_and_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 16];
        assert_eq!(recv_now(&server, &mut buffer), Io::WouldBlock);
        client.write_all(b"abc").unwrap();
        // Loopback delivers within the write call; poll a bounded number of times anyway.
        let mut got = Io::WouldBlock;
        for _ in 0..1_000 {
            got = recv_now(&server, &mut buffer);
            if got != Io::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, Io::Done(3));
        assert_eq!(&buffer[..3], b"abc");
        assert_eq!(send_now(&server, b"xyz"), Io::Done(3));
        // A full send buffer: the peer never reads, so sends end in WouldBlock.
        let chunk = vec![0u8; 1 << 16];
        let mut full = false;
        for _ in 0..10_000 {
            if send_now(&server, &chunk) == Io::WouldBlock {
                full = true;
                break;
            }
        }
        assert!(full, "a socket whose peer never reads must fill up");
        drop(client);
        let mut closed = false;
        for _ in 0..1_000 {
            match send_now(&server, &chunk) {
                Io::Closed => {
                    closed = true;
                    break;
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        assert!(
            closed,
            "sending to a closed peer must report Closed, not raise SIGPIPE"
        );
    }
}
