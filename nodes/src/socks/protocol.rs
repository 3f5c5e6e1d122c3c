//! Messages between a SOCKS5 proxy client and the service provider: the bodies of
//! [`lethe_proto::service`] envelopes (which carry the sender tag, and the proxy's address
//! only if it chose to reveal it), each one mixnet message.
//!
//! ```text
//! proxy → provider
//!   0x01 Connect  conn_id(u64) ‖ target_len(u16) ‖ target ("host:port")
//!   0x02 Data     conn_id(u64) ‖ seq(u64) ‖ closed(u8) ‖ bytes
//! provider → proxy
//!   0x81 Connected     conn_id(u64)
//!   0x82 Data          conn_id(u64) ‖ seq(u64) ‖ closed(u8) ‖ bytes
//!   0x83 ConnectError  conn_id(u64) ‖ code(u8) ‖ UTF-8 text
//! ```
//! Mixnet messages travel independent routes with random delays, so they arrive out of order:
//! `seq` numbers each direction's data from 0 and the receiver reorders ([`super::ordered`]);
//! data may even arrive before its Connect.

use crate::limits;

/// A Data message's bytes in front of its data.
pub const CHUNK_HEADER_BYTES: usize = 1 + 8 + 8 + 1;

const CONNECT: u8 = 0x01;
const DATA: u8 = 0x02;
const CONNECTED: u8 = 0x81;
const DATA_BACK: u8 = 0x82;
const CONNECT_ERROR: u8 = 0x83;

/// [`Response::ConnectError`] codes, mapped onto SOCKS5 reply codes by the proxy.
pub mod error_code {
    pub const NOT_ALLOWED: u8 = 2;
    pub const UNREACHABLE: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const OVERLOADED: u8 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub conn_id: u64,
    pub seq: u64,
    pub closed: bool,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Connect { conn_id: u64, target: String },
    Data(Chunk),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Connected {
        conn_id: u64,
    },
    Data(Chunk),
    ConnectError {
        conn_id: u64,
        code: u8,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SOCKS relay message: {0}")]
pub struct Malformed(pub &'static str);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(Malformed("truncated"))?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, max: usize) -> Result<String, Malformed> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(Malformed("string too long"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| Malformed("not UTF-8"))
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
}

fn put_chunk(out: &mut Vec<u8>, kind: u8, c: &Chunk) {
    out.push(kind);
    out.extend_from_slice(&c.conn_id.to_be_bytes());
    out.extend_from_slice(&c.seq.to_be_bytes());
    out.push(u8::from(c.closed));
    out.extend_from_slice(&c.bytes);
}

fn read_chunk(mut r: Reader<'_>) -> Result<Chunk, Malformed> {
    let conn_id = r.u64()?;
    let seq = r.u64()?;
    let closed = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(Malformed("closed flag")),
    };
    let bytes = r.rest();
    if bytes.len() > limits::SOCKS_DATA_BYTES_MAX {
        return Err(Malformed("data too long"));
    }
    Ok(Chunk {
        conn_id,
        seq,
        closed,
        bytes: bytes.to_vec(),
    })
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Connect { conn_id, target } => {
                out.push(CONNECT);
                out.extend_from_slice(&conn_id.to_be_bytes());
                put_string(&mut out, target);
            }
            Request::Data(c) => put_chunk(&mut out, DATA, c),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, Malformed> {
        let mut r = Reader(bytes);
        match r.u8()? {
            CONNECT => {
                let conn_id = r.u64()?;
                let target = r.string(limits::SOCKS_TARGET_BYTES_MAX)?;
                if !r.rest().is_empty() {
                    return Err(Malformed("trailing bytes"));
                }
                Ok(Request::Connect { conn_id, target })
            }
            DATA => Ok(Request::Data(read_chunk(r)?)),
            _ => Err(Malformed("unknown request kind")),
        }
    }
}

/// For a Connect of the first relay protocol (an old proxy, which sent its address): that
/// address and a ConnectError in the old format (which this one's matches) saying to upgrade.
pub fn legacy_connect_refusal(bytes: &[u8], text: &str) -> Option<(String, Vec<u8>)> {
    let mut r = Reader(bytes);
    if r.u8().ok()? != CONNECT {
        return None;
    }
    let conn_id = r.u64().ok()?;
    let reply_to = r.string(limits::SOCKS_LEGACY_REPLY_TO_BYTES_MAX).ok()?;
    let refusal = Response::ConnectError {
        conn_id,
        code: error_code::OVERLOADED,
        text: text.to_string(),
    };
    Some((reply_to, refusal.encode()))
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Response::Connected { conn_id } => {
                out.push(CONNECTED);
                out.extend_from_slice(&conn_id.to_be_bytes());
            }
            Response::Data(c) => put_chunk(&mut out, DATA_BACK, c),
            Response::ConnectError {
                conn_id,
                code,
                text,
            } => {
                out.push(CONNECT_ERROR);
                out.extend_from_slice(&conn_id.to_be_bytes());
                out.push(*code);
                out.extend_from_slice(text.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, Malformed> {
        let mut r = Reader(bytes);
        match r.u8()? {
            CONNECTED => {
                let conn_id = r.u64()?;
                if !r.rest().is_empty() {
                    return Err(Malformed("trailing bytes"));
                }
                Ok(Response::Connected { conn_id })
            }
            DATA_BACK => Ok(Response::Data(read_chunk(r)?)),
            CONNECT_ERROR => {
                let conn_id = r.u64()?;
                let code = r.u8()?;
                let text = String::from_utf8_lossy(r.rest()).into_owned();
                Ok(Response::ConnectError {
                    conn_id,
                    code,
                    text,
                })
            }
            _ => Err(Malformed("unknown response kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let chunk = Chunk {
            conn_id: 7,
            seq: 3,
            closed: true,
            bytes: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        };
        for r in [
            Request::Connect {
                conn_id: 1,
                target: "127.0.0.1:80".into(),
            },
            Request::Data(chunk.clone()),
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Response::Connected { conn_id: 9 },
            Response::Data(chunk),
            Response::ConnectError {
                conn_id: 2,
                code: error_code::NOT_ALLOWED,
                text: "no".into(),
            },
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [
            &[][..],
            &[0x01],
            &[0x02, 0, 0],
            &[0x55],
            &[0x81, 0, 0, 0, 0, 0, 0, 0, 1, 9],
        ] {
            assert!(Request::decode(bytes).is_err() || Response::decode(bytes).is_err());
        }
        let mut huge = vec![CONNECT];
        huge.extend_from_slice(&1u64.to_be_bytes());
        huge.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(Request::decode(&huge).is_err());
    }

    #[test]
    fn an_old_proxy_is_told_to_upgrade() {
        let mut old = vec![CONNECT];
        old.extend_from_slice(&5u64.to_be_bytes());
        put_string(&mut old, "a.b@c");
        put_string(&mut old, "127.0.0.1:80");
        let (to, refusal) = legacy_connect_refusal(&old, "upgrade").unwrap();
        assert_eq!(to, "a.b@c");
        assert_eq!(
            Response::decode(&refusal).unwrap(),
            Response::ConnectError {
                conn_id: 5,
                code: error_code::OVERLOADED,
                text: "upgrade".into()
            }
        );
        assert_eq!(legacy_connect_refusal(&[DATA, 0], "x"), None);
    }
}
