//! The far ends of a SOCKS5 fetch through the mixnet: a one-shot web server and a SOCKS5
//! client doing an HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use super::WAIT_MAX;

/// A one-shot HTTP/1.0 server for `body` on loopback.
pub fn http_server(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    addr
}

/// A SOCKS5 CONNECT to `target` through `proxy`, then an HTTP GET; returns the body.
pub fn fetch_through_socks(proxy: SocketAddr, target: SocketAddr) -> Vec<u8> {
    let mut s = get_through_socks(proxy, target);
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    response.split_off(split)
}

/// A SOCKS5 CONNECT to `target` through `proxy` with an HTTP GET sent: the stream to read
/// the response from (reads time out after [`WAIT_MAX`]).
pub fn get_through_socks(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(WAIT_MAX)).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 0]);
    let std::net::IpAddr::V4(ip) = target.ip() else {
        panic!("v4 only")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 reply code");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    s
}
