//! Who may be in the network, decided before a descriptor reaches the registry's bookkeeping:
//! the directory's admission policy (an operator allow-list or "open", which voting
//! authorities also state in their votes; caps per source and per mix IP) and the checks
//! every descriptor passes (a routable mix address, a usable Sphinx key, an operator family
//! of bounded size). Free of I/O except [`read_allow_list`].

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::limits::{
    DIRECTORY_ALLOWED_NODES_MAX, DIRECTORY_FAMILY_BYTES_MAX, DIRECTORY_NODES_PER_IP_MAX_DEFAULT,
    DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT,
};
use lethe_proto::topology::AdmissionPolicy;

/// The directory's admission settings (from `lethe directory run`'s flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Accept loopback, private, link-local and unique-local mix addresses (a testnet or a
    /// private network). Off: only globally routable addresses.
    pub private_addresses: bool,
    /// Most nodes whose mix address has one IP (Tor: 2 relays per IP).
    pub nodes_per_ip_max: usize,
    /// Most nodes registered from one source IP (the registering connection's address).
    pub nodes_per_source_max: usize,
    /// A node not heard from for this long is dropped; its mix address stays its own until
    /// then, even after it deregisters.
    pub heartbeat_timeout_ms: u64,
    /// Node identities (hex) allowed to register; `None`: open to any.
    pub allowed: Option<BTreeSet<String>>,
}

impl Default for Admission {
    /// The production defaults: public addresses only, open membership.
    fn default() -> Admission {
        Admission {
            private_addresses: false,
            nodes_per_ip_max: DIRECTORY_NODES_PER_IP_MAX_DEFAULT,
            nodes_per_source_max: DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT,
            heartbeat_timeout_ms: 30_000,
            allowed: None,
        }
    }
}

impl Admission {
    /// The policy this admission applies, as votes and documents name it.
    pub fn policy(&self) -> AdmissionPolicy {
        match &self.allowed {
            None => AdmissionPolicy::Open,
            Some(allowed) => AdmissionPolicy::allow_list(
                &allowed
                    .iter()
                    .filter_map(|id| crate::keyfile::unhex_32(id))
                    .collect(),
            ),
        }
    }
}

/// Why an address is refused (the error names it).
pub fn address_problem(ip: IpAddr, private_allowed: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_problem(v4, private_allowed),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_problem(v4, private_allowed);
            }
            v6_problem(v6, private_allowed)
        }
    }
}

/// The cloud metadata service (AWS, GCP, Azure, ...): never a mix address, even on a private
/// network, since nodes would send traffic to it.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn v4_problem(ip: Ipv4Addr, private_allowed: bool) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    // Never usable, whatever the setting.
    if ip.is_unspecified() || a == 0 {
        return Some("unspecified (0.0.0.0/8)");
    }
    if ip == METADATA_V4 {
        return Some("the cloud metadata address");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if ip.is_broadcast() || a >= 240 {
        return Some("reserved (240.0.0.0/4)");
    }
    if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113) {
        return Some("documentation (RFC 5737)");
    }
    if private_allowed {
        return None;
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_private() {
        return Some("private (RFC 1918)");
    }
    if ip.is_link_local() {
        return Some("link-local");
    }
    if a == 100 && (64..128).contains(&b) {
        return Some("shared address space (RFC 6598)");
    }
    if (a, b, c) == (192, 0, 0) || (a == 198 && (b == 18 || b == 19)) {
        return Some("reserved for protocols or benchmarking");
    }
    None
}

fn v6_problem(ip: Ipv6Addr, private_allowed: bool) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        return Some("documentation (2001:db8::/32)");
    }
    if private_allowed {
        return None;
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if segments[0] & 0xfe00 == 0xfc00 {
        return Some("unique local (fc00::/7)");
    }
    if segments[0] & 0xffc0 == 0xfe80 {
        return Some("link-local");
    }
    // ::/96 (IPv4-compatible, deprecated), 64:ff9b::/96 NAT64, 100::/64 discard.
    if segments[..6] == [0; 6] || (segments[0] == 0x0100 && segments[1..4] == [0; 3]) {
        return Some("reserved");
    }
    None
}

/// Whether an x25519 public key is unusable for Sphinx: a point of small order (all-zero
/// included) makes every client's shared secret with it the all-zero value, which anyone can
/// compute, so the hop's layer would be readable by all. A clamped scalar is a multiple of 8,
/// so its product with such a point, and only such a point, is the identity (u = 0).
pub fn weak_sphinx_key(key: &[u8; 32]) -> bool {
    // Any fixed scalar serves: clamping makes it a multiple of the cofactor.
    let product = MontgomeryPoint(*key).mul_clamped([0x5a; 32]);
    product.to_bytes() == [0u8; 32]
}

/// An operator family name: short printable ASCII without quotes or backslashes (it travels
/// in the topology's JSON unescaped).
pub fn family_ok(family: &str) -> bool {
    !family.is_empty()
        && family.len() <= DIRECTORY_FAMILY_BYTES_MAX
        && family
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Reads an allow-list: one hex ed25519 identity per line; blank lines and `#` comments are
/// skipped. Refuses anything else, naming the line, and lists over
/// [`DIRECTORY_ALLOWED_NODES_MAX`] identities (the list travels in every vote).
pub fn read_allow_list(path: &Path) -> Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the allow-list {}: {e}", path.display()))?;
    let mut allowed = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let key = crate::keyfile::unhex_32(line).ok_or_else(|| {
            format!(
                "{} line {}: not a hex ed25519 identity key",
                path.display(),
                index + 1
            )
        })?;
        allowed.insert(crate::keyfile::hex(&key));
        if allowed.len() > DIRECTORY_ALLOWED_NODES_MAX {
            return Err(format!(
                "{}: more than {DIRECTORY_ALLOWED_NODES_MAX} identities",
                path.display()
            ));
        }
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str, private: bool) -> Option<&'static str> {
        address_problem(text.parse().unwrap(), private)
    }

    #[test]
    fn only_routable_addresses_on_a_public_network() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.7",
            "198.51.100.1",
            "203.0.113.9",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(problem(bad, false).is_some(), "{bad} accepted");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.4.4"] {
            assert_eq!(problem(good, false), None, "{good}");
        }
        // A private network allows its own ranges, never the always-wrong ones.
        for ok in ["127.0.0.1", "10.0.0.1", "192.168.1.1", "::1", "fd00::1"] {
            assert_eq!(problem(ok, true), None, "{ok}");
        }
        for bad in [
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "192.0.2.1",
            "ff02::1",
        ] {
            assert!(problem(bad, true).is_some(), "{bad} accepted");
        }
    }

    #[test]
    fn small_order_keys_are_weak() {
        let hex = |s: &str| crate::keyfile::unhex_32(s).unwrap();
        let mut one = [0u8; 32];
        one[0] = 1;
        for weak in [
            [0u8; 32],
            one,
            hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            // The same with the top bit set (ignored by x25519).
            hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880"),
            hex("0000000000000000000000000000000000000000000000000000000000000080"),
        ] {
            assert!(weak_sphinx_key(&weak), "{weak:02x?}");
        }
        let strong = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([7u8; 32]));
        assert!(!weak_sphinx_key(strong.as_bytes()));
        assert!(!weak_sphinx_key(&[9u8; 32]));
    }

    #[test]
    fn families_and_allow_lists() {
        assert!(family_ok("operator-a"));
        assert!(!family_ok(""));
        assert!(!family_ok("has space"));
        assert!(!family_ok("quote\""));
        assert!(!family_ok(&"x".repeat(DIRECTORY_FAMILY_BYTES_MAX + 1)));
        let dir = std::env::temp_dir().join(format!("lethe-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allowed");
        let key = "ab".repeat(32);
        std::fs::write(&path, format!("# operators\n{key}  # node a\n\n")).unwrap();
        let allowed = read_allow_list(&path).unwrap();
        assert!(allowed.contains(&key));
        assert_eq!(allowed.len(), 1);
        // Its policy names the list by digest, whatever the file's case and comments.
        let admission = Admission {
            allowed: Some(allowed),
            ..Admission::default()
        };
        let upper = dir.join("upper");
        std::fs::write(&upper, key.to_uppercase()).unwrap();
        let same = Admission {
            allowed: Some(read_allow_list(&upper).unwrap()),
            ..Admission::default()
        };
        assert!(matches!(
            admission.policy(),
            AdmissionPolicy::AllowList { .. }
        ));
        assert_eq!(admission.policy(), same.policy());
        assert_eq!(Admission::default().policy(), AdmissionPolicy::Open);
        std::fs::write(&path, "not-a-key\n").unwrap();
        assert!(read_allow_list(&path).unwrap_err().contains("line 1"));
        let long: String = (0..=DIRECTORY_ALLOWED_NODES_MAX as u32)
            .map(|i| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&i.to_be_bytes());
                format!("{}\n", crate::keyfile::hex(&key))
            })
            .collect();
        std::fs::write(&path, long).unwrap();
        assert!(read_allow_list(&path).unwrap_err().contains("more than"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
