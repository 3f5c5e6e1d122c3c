//! Non-blocking socket calls made straight on a glommio stream's descriptor.
//!
//! glommio reads and writes through readiness polls armed on its rings; a read that finds data
//! already queued still costs a ring round trip while an earlier poll is in flight, and a write
//! to a full socket waits for a one-shot POLLOUT wake-up. The runtime's hot paths call `recv` and
//! `send` with `MSG_DONTWAIT` directly instead: data that is there is taken at once, and a writer
//! that meets a full socket retries on a timer (see `egress`), so no wake-up can be lost.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

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

/// Ends both directions of a socket this core serves (by descriptor): its task's pending read
/// returns end-of-stream and the task closes it. Used for shutdown, idle sweeps and eviction
/// instead of racing every read against a timer.
pub fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown takes no memory; the caller guarantees `fd` is a socket it still owns
    // (the ingress table forgets a descriptor before its stream is dropped).
    unsafe {
        let _ = libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Makes the next close reset the connection and discard unsent bytes (SO_LINGER 0): a next
/// hop that stopped reading must not receive, minutes later, what sat in our send buffer.
pub fn discard_unsent_on_close(socket: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live linger, on a socket the
    // caller owns.
    unsafe {
        let _ = libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// True if the peer closed or reset a connection we only write to (a peek sees end-of-stream
/// or an error). Writes would still succeed into our send buffer until the reset arrives, and
/// be counted as sent.
pub fn peer_closed(socket: &impl AsRawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv writes at most one byte into `byte`; MSG_PEEK leaves the queue as it is.
    let count = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    matches!(outcome(count), Io::Closed)
}

/// Refuses a port another process already listens on. The cores bind with SO_REUSEPORT (the
/// kernel spreads connections over them), which would also let a second node on the same port
/// start and silently take a share of this one's connections. A socket bound without
/// SO_REUSEPORT (SO_REUSEADDR only, so connections in TIME_WAIT do not count) cannot share a
/// port with any listener: if it binds, nobody listens there now.
pub fn check_port_free(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(()); // an ephemeral port is new by definition
    }
    let result = bound_socket(addr, &[libc::SO_REUSEADDR]).map(|fd| {
        // SAFETY: `fd` was opened by `bound_socket` and is closed exactly once, here.
        unsafe { libc::close(fd) };
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(format!(
            "{addr} is already served by another process (is another node running with this \
             address? `ss -ltnp 'sport = :{}'` names it); stop it or choose another port",
            addr.port()
        )),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// A listening socket on `addr` shared by the node's cores (SO_REUSEPORT: the kernel spreads
/// connections over them). Built here rather than by glommio so the core keeps its descriptor
/// (to shut it down at stop). [`check_port_free`] runs first, so no other process shares it.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<RawFd> {
    let fd = bound_socket(addr, &[libc::SO_REUSEADDR, libc::SO_REUSEPORT])?;
    // SAFETY: listen and close take no memory; `fd` is the socket bound above, closed once.
    unsafe {
        if libc::listen(fd, LISTEN_BACKLOG) != 0 {
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(error);
        }
    }
    Ok(fd)
}

/// A TCP socket with the SOL_SOCKET `options` set to 1, bound to `addr`; closed on error.
fn bound_socket(addr: SocketAddr, options: &[libc::c_int]) -> std::io::Result<RawFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no memory; on the error path below the descriptor is closed.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    let (storage, len) = sockaddr(addr);
    // SAFETY: setsockopt reads one live c_int; bind reads a sockaddr of the stated length;
    // close takes no memory; `fd` is the socket opened above.
    unsafe {
        for &option in options {
            let _ = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        if libc::bind(fd, std::ptr::from_ref(&storage).cast(), len) != 0 {
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(error);
        }
    }
    Ok(fd)
}

/// Pending connections the kernel queues per listener before accept (glommio's own value).
const LISTEN_BACKLOG: libc::c_int = 1_024;

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
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

    #[test]
    fn a_port_with_a_listener_of_another_process_is_refused_and_a_free_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = listener.local_addr().unwrap();
        let message = check_port_free(taken).unwrap_err();
        assert!(message.contains("already served"), "{message}");
        drop(listener);
        // TIME_WAIT connections on a port do not make it "served".
        check_port_free(taken).unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            assert!(check_port_free(v6.local_addr().unwrap()).is_err());
        }
    }

    #[test]
    fn peer_closed_sees_the_peers_close_and_shutdown_fd_ends_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!peer_closed(&client));
        shutdown_fd(server.as_raw_fd());
        let mut buffer = [0u8; 4];
        assert_eq!(recv_now(&server, &mut buffer), Io::Closed);
        let mut seen = false;
        for _ in 0..1_000 {
            if peer_closed(&client) {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(seen, "the writer must see the peer's close before writing");
    }
}
