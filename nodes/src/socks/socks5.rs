//! The SOCKS5 server side an application talks to (RFC 1928): no authentication, CONNECT
//! only, IPv4 / IPv6 / domain-name targets. Other commands and methods get the RFC's refusal.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const VERSION: u8 = 5;
const METHOD_NO_AUTH: u8 = 0;
const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// SOCKS5 reply codes.
pub mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const GENERAL_FAILURE: u8 = 1;
    pub const NOT_ALLOWED: u8 = 2;
    pub const HOST_UNREACHABLE: u8 = 4;
    pub const CONNECTION_REFUSED: u8 = 5;
    pub const TTL_EXPIRED: u8 = 6;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("client offers no acceptable authentication method")]
    NoMethod,
    #[error("unsupported command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("domain name is not UTF-8")]
    Domain,
}

/// Reads the greeting and the request; returns the target as `host:port` (IPv6 in brackets).
/// On an unsupported request the refusal has already been written.
pub async fn accept<S>(stream: &mut S) -> Result<String, SocksError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(SocksError::Version(head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&METHOD_NO_AUTH) {
        stream.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(SocksError::NoMethod);
    }
    stream.write_all(&[VERSION, METHOD_NO_AUTH]).await?;

    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(SocksError::Version(request[0]));
    }
    if request[1] != CMD_CONNECT {
        send_reply(stream, reply::COMMAND_NOT_SUPPORTED).await?;
        return Err(SocksError::Command(request[1]));
    }
    let host = match request[3] {
        ATYP_V4 => {
            let mut a = [0u8; 4];
            stream.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        ATYP_V6 => {
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await?;
            format!("[{}]", std::net::Ipv6Addr::from(a))
        }
        ATYP_DOMAIN => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name).map_err(|_| SocksError::Domain)?
        }
        other => {
            send_reply(stream, reply::ADDRESS_NOT_SUPPORTED).await?;
            return Err(SocksError::AddressType(other));
        }
    };
    let port = stream.read_u16().await?;
    Ok(format!("{host}:{port}"))
}

/// Writes a reply with an unspecified bound address (the mixnet hides the real one).
pub async fn send_reply<S: AsyncWriteExt + Unpin>(stream: &mut S, code: u8) -> std::io::Result<()> {
    stream
        .write_all(&[VERSION, code, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await
}

/// The provider's allow-list: `host:port` patterns, `*` as the port matches any port, a host
/// of `*.example.org` matches its sub-domains. Matching is on the text the client asked for.
#[derive(Debug, Clone)]
pub struct AllowList {
    rules: Vec<(String, Option<u16>)>,
}

impl AllowList {
    pub fn parse(patterns: &[String]) -> Result<AllowList, String> {
        let mut rules = Vec::new();
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (host, port) = p
                .rsplit_once(':')
                .ok_or_else(|| format!("allow-list entry {p:?} is not host:port"))?;
            let port = if port == "*" {
                None
            } else {
                Some(
                    port.parse()
                        .map_err(|_| format!("allow-list entry {p:?}: bad port"))?,
                )
            };
            rules.push((host.to_ascii_lowercase(), port));
        }
        Ok(AllowList { rules })
    }

    pub fn allows(&self, target: &str) -> bool {
        let Some((host, port)) = target.rsplit_once(':') else {
            return false;
        };
        let Ok(port) = port.parse::<u16>() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.rules.iter().any(|(rule_host, rule_port)| {
            let host_ok = match rule_host.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => rule_host == "*" || *rule_host == host,
            };
            host_ok && rule_port.is_none_or(|p| p == port)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[test]
    fn allow_list() {
        let list = AllowList::parse(&[
            "127.0.0.1:*".into(),
            "*.example.org:443".into(),
            "localhost:8080".into(),
        ])
        .unwrap();
        assert!(list.allows("127.0.0.1:80"));
        assert!(list.allows("www.example.org:443"));
        assert!(!list.allows("example.org:443"));
        assert!(!list.allows("www.example.org:80"));
        assert!(list.allows("LOCALHOST:8080"));
        assert!(!list.allows("10.0.0.1:80"));
        assert!(!list.allows("garbage"));
        assert!(AllowList::parse(&["nohost".into()]).is_err());
    }

    #[tokio::test]
    async fn connect_domain_and_refusals() {
        let (mut client, mut server) = duplex(1024);
        let task = tokio::spawn(async move { accept(&mut server).await });
        client.write_all(&[5, 1, 0]).await.unwrap();
        client
            .write_all(&[
                5, 1, 0, 3, 9, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's', b't', 0, 80,
            ])
            .await
            .unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [5, 0]);
        assert_eq!(task.await.unwrap().unwrap(), "localhost:80");

        // BIND is refused with "command not supported".
        let (mut client, mut server) = duplex(1024);
        let task = tokio::spawn(async move { accept(&mut server).await });
        client
            .write_all(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80])
            .await
            .unwrap();
        assert!(task.await.unwrap().is_err());
        let mut reply = [0u8; 12];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[..4], [5, 0, 5, reply::COMMAND_NOT_SUPPORTED]);

        // Username/password only: no acceptable method.
        let (mut client, mut server) = duplex(1024);
        let task = tokio::spawn(async move { accept(&mut server).await });
        client.write_all(&[5, 1, 2]).await.unwrap();
        assert!(matches!(task.await.unwrap(), Err(SocksError::NoMethod)));
    }
}
