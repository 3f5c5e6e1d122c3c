//! Lower-case hex, the text form of keys and addresses in files, URLs and topologies.

pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// 64 hex digits (surrounding whitespace allowed) as 32 bytes.
pub fn decode_32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Whether `text` is the hex of `bytes` (`decode_32(text) == Some(*bytes)`), stopping at the
/// first byte that differs: looking a key up among many compares most of them on a byte or
/// two instead of decoding each (a client core does it for every packet it builds).
pub fn is_hex_of(text: &str, bytes: &[u8; 32]) -> bool {
    let text = text.trim().as_bytes();
    let byte_of = |pair: &[u8]| Some((digit(pair[0])? << 4) | digit(pair[1])?);
    text.len() == 64
        && (text.chunks_exact(2).zip(bytes)).all(|(pair, byte)| byte_of(pair) == Some(*byte))
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = encode(&bytes);
        assert_eq!(text.len(), 64);
        assert_eq!(decode_32(&text), Some(bytes));
        assert_eq!(
            decode_32(&format!(" {}\n", text.to_uppercase())),
            Some(bytes)
        );
        assert_eq!(decode_32(&text[1..]), None);
        assert_eq!(decode_32(&format!("{}g", &text[1..])), None);
        assert_eq!(decode_32("+1".repeat(32).as_str()), None);
        assert_eq!(decode_32(&"é".repeat(32)), None);
        assert!(is_hex_of(&text, &bytes));
        assert!(is_hex_of(&format!(" {}\n", text.to_uppercase()), &bytes));
        let mut other = bytes;
        other[31] ^= 1;
        assert!(!is_hex_of(&text, &other));
        assert!(!is_hex_of(&text[1..], &bytes));
        assert!(!is_hex_of(&format!("{}g", &text[..63]), &bytes));
    }
}
