//! Nym node address encoding: a `SocketAddr` in 32 bytes as
//! `ip version (4 | 6) ‖ port (u16 BE) ‖ ip octets ‖ zero padding`.
//!
//! Decoding is strict: the padding must be zero. Nym's decoder ignores it, but every Nym
//! encoder writes zeros, so strictness rejects only crafted addresses and keeps the encoding
//! one-to-one (a routing filter can key on the bytes). [`decode_ignoring_padding`] mirrors
//! Nym exactly for callers that need it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::constants::NODE_ADDRESS_SIZE;
use super::error::SphinxError;

const IPV4_TAG: u8 = 4;
const IPV6_TAG: u8 = 6;
const IPV4_END: usize = 3 + 4;
const IPV6_END: usize = 3 + 16;
const _: () = assert!(IPV6_END <= NODE_ADDRESS_SIZE);

/// Encodes a socket address; both families always fit.
pub fn encode(address: &SocketAddr) -> [u8; NODE_ADDRESS_SIZE] {
    let mut bytes = [0u8; NODE_ADDRESS_SIZE];
    bytes[1..3].copy_from_slice(&address.port().to_be_bytes());
    match address.ip() {
        IpAddr::V4(ip) => {
            bytes[0] = IPV4_TAG;
            bytes[3..IPV4_END].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            bytes[0] = IPV6_TAG;
            bytes[3..IPV6_END].copy_from_slice(&ip.octets());
        }
    }
    bytes
}

/// Decodes untrusted bytes; non-zero padding is an error.
pub fn decode(bytes: &[u8; NODE_ADDRESS_SIZE]) -> Result<SocketAddr, SphinxError> {
    let address = decode_ignoring_padding(bytes)?;
    let end = if address.is_ipv4() {
        IPV4_END
    } else {
        IPV6_END
    };
    if bytes[end..].iter().any(|&byte| byte != 0) {
        return Err(SphinxError::BadAddress);
    }
    Ok(address)
}

/// Decodes like Nym's `NymNodeRoutingAddress::try_from_bytes`: padding is not looked at.
pub fn decode_ignoring_padding(bytes: &[u8; NODE_ADDRESS_SIZE]) -> Result<SocketAddr, SphinxError> {
    let port = u16::from_be_bytes([bytes[1], bytes[2]]);
    let ip = match bytes[0] {
        IPV4_TAG => IpAddr::V4(Ipv4Addr::new(bytes[3], bytes[4], bytes[5], bytes[6])),
        IPV6_TAG => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[3..IPV6_END]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err(SphinxError::BadAddress),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4_BYTES: [u8; 7] = [4, 0x06, 0xfd, 10, 0, 0, 1];

    #[test]
    fn deconstructs_ipv4() {
        let mut bytes = [0u8; NODE_ADDRESS_SIZE];
        bytes[..7].copy_from_slice(&V4_BYTES);
        assert_eq!(decode(&bytes).unwrap(), "10.0.0.1:1789".parse().unwrap());
    }

    #[test]
    fn constructs_and_round_trips_both_families() {
        let v4: SocketAddr = "10.0.0.1:1789".parse().unwrap();
        assert_eq!(encode(&v4)[..7], V4_BYTES);
        assert!(encode(&v4)[7..].iter().all(|&b| b == 0));
        let v6: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let bytes = encode(&v6);
        assert_eq!(bytes[0], 6);
        assert_eq!(decode(&bytes).unwrap(), v6);
        assert_eq!(decode(&encode(&v4)).unwrap(), v4);
    }

    #[test]
    fn rejects_bad_version_and_padding() {
        let mut bytes = encode(&"1.2.3.4:5".parse().unwrap());
        bytes[31] = 1;
        assert_eq!(decode(&bytes), Err(SphinxError::BadAddress));
        assert!(decode_ignoring_padding(&bytes).is_ok());
        bytes[0] = 5;
        assert_eq!(
            decode_ignoring_padding(&bytes),
            Err(SphinxError::BadAddress)
        );
        assert_eq!(
            decode(&[0u8; NODE_ADDRESS_SIZE]),
            Err(SphinxError::BadAddress)
        );
    }
}
