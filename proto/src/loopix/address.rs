//! Client addresses, Nym's `Recipient` shape:
//! `<identity hex>.<encryption key hex>@<gateway identity hex>`.
//!
//! The identity (ed25519 public key) is the Sphinx destination address; the encryption key
//! (x25519) is what senders encrypt fragments for; the gateway is where the client's packets
//! end.

use std::fmt;
use std::str::FromStr;

use crate::hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipient {
    pub identity: [u8; 32],
    pub encryption_key: [u8; 32],
    pub gateway: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed address (expected <identity hex>.<encryption key hex>@<gateway hex>): {0}")]
pub struct AddressError(&'static str);

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            hex::encode(&self.identity),
            hex::encode(&self.encryption_key),
            hex::encode(&self.gateway)
        )
    }
}

impl FromStr for Recipient {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Recipient, AddressError> {
        let text = text.trim();
        let (client, gateway) = text.split_once('@').ok_or(AddressError("no '@'"))?;
        let (identity, encryption_key) = client.split_once('.').ok_or(AddressError("no '.'"))?;
        let identity = hex::decode_32(identity).ok_or(AddressError("identity"))?;
        let encryption_key =
            hex::decode_32(encryption_key).ok_or(AddressError("encryption key"))?;
        let gateway = hex::decode_32(gateway).ok_or(AddressError("gateway"))?;
        if identity == crate::wire::payload::DROP_COVER_DESTINATION {
            return Err(AddressError("all-zero identity is the drop-cover address"));
        }
        Ok(Recipient {
            identity,
            encryption_key,
            gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let r = Recipient {
            identity: [1; 32],
            encryption_key: [2; 32],
            gateway: [3; 32],
        };
        let text = r.to_string();
        assert_eq!(text.parse::<Recipient>().unwrap(), r);
        for bad in [
            "",
            "abc",
            &text.replace('@', "#"),
            &text.replace('.', ","),
            &text[1..],
            &format!(
                "{}.{}@{}",
                "00".repeat(32),
                "02".repeat(32),
                "03".repeat(32)
            ),
        ] {
            assert!(bad.parse::<Recipient>().is_err(), "{bad}");
        }
    }
}
