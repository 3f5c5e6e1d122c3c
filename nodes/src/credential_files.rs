//! Key, verification-key and credential files.
//!
//! Secret files are created with mode 0600 in the `open` call itself, so they are never
//! readable by others, not even for an instant; nothing is ever silently overwritten.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use lethe_crypto::coconut::{KeyShare, Parameters, SecretKey, VerificationKey};

use crate::limits::ISSUER_KEY_FILE_BYTES_MAX;

/// Magic at the start of an issuer key file (format version 1).
const KEY_MAGIC: &[u8; 8] = b"LETHEIK1";

/// Everything one issuer process needs: its share and the master verification key.
pub struct IssuerKey {
    /// Shamir index of this issuer (1-based).
    pub index: u64,
    /// Secret key share.
    pub secret: SecretKey,
    /// Verification key share matching `secret`.
    pub vk_share: VerificationKey,
    /// The issuers' aggregated verification key (bound into request proofs).
    pub master: VerificationKey,
}

/// Creates `path` exclusively (fails if it exists) with `mode`, writes `bytes`, syncs.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a small file whole.
pub fn read_small(path: &Path) -> anyhow::Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(ISSUER_KEY_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > ISSUER_KEY_FILE_BYTES_MAX {
        bail!(
            "{} is too large to be a Lethe key or credential",
            path.display()
        );
    }
    Ok(bytes)
}

/// Creates `dir` (mode 0700) if missing.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

impl IssuerKey {
    /// From a dealer's share and the aggregated key.
    pub fn from_share(share: &KeyShare, master: &VerificationKey) -> Self {
        Self {
            index: share.index,
            secret: share.secret.clone(),
            vk_share: share.verification.clone(),
            master: master.clone(),
        }
    }

    /// `LETHEIK1 ‖ index u64 ‖ (len u32 ‖ bytes) for secret, share vk, master vk` (big endian).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::new());
        out.extend_from_slice(KEY_MAGIC);
        out.extend_from_slice(&self.index.to_be_bytes());
        for part in [
            &self.secret.to_bytes()[..],
            &self.vk_share.to_bytes(),
            &self.master.to_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Parses [`IssuerKey::to_bytes`] and checks both verification keys against `params`.
    pub fn from_bytes(bytes: &[u8], params: &Parameters) -> anyhow::Result<Self> {
        let rest = bytes
            .strip_prefix(KEY_MAGIC)
            .context("not a Lethe issuer key file (bad magic)")?;
        let (index, mut rest) = split_u64(rest).context("truncated issuer key file")?;
        let mut parts = Vec::with_capacity(3);
        for _ in 0..3 {
            let (len, r) = rest
                .split_first_chunk::<4>()
                .context("truncated issuer key file")?;
            let len = u32::from_be_bytes(*len) as usize;
            let (part, r) = r
                .split_at_checked(len)
                .context("truncated issuer key file")?;
            parts.push(part);
            rest = r;
        }
        if !rest.is_empty() || index == 0 {
            bail!("malformed issuer key file");
        }
        let secret = SecretKey::from_bytes(parts[0]).context("malformed secret key share")?;
        let vk_share = VerificationKey::from_bytes(parts[1]).context("malformed key share")?;
        let master = VerificationKey::from_bytes(parts[2]).context("malformed master key")?;
        vk_share
            .check(params)
            .context("invalid verification key share")?;
        master
            .check(params)
            .context("invalid master verification key")?;
        if secret.verification_key(params) != vk_share {
            bail!("secret key share does not match its verification key");
        }
        Ok(Self {
            index,
            secret,
            vk_share,
            master,
        })
    }
}

/// Reads an issuer's key file as `issuer run` does: refused before use if group or others
/// may read it (with the `chmod` that fixes it), or if it is not a valid share, saying what
/// is wrong and what to do.
pub fn read_issuer_key(path: &Path, params: &Parameters) -> anyhow::Result<IssuerKey> {
    crate::keyfile::check_private_mode(path).map_err(anyhow::Error::msg)?;
    IssuerKey::from_bytes(&read_small(path)?, params).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an issuer key share: {e:#} (the file `lethe keygen` wrote as \
             issuer-<i>.key: restore it from a backup; if it is lost, run `lethe keygen` again \
             and replace every issuer's share and the gateways' verification key)",
            path.display()
        )
    })
}

/// Encoding of a verification-key share as served and stored: `index u64 BE ‖ key`.
pub fn vk_share_bytes(index: u64, vk: &VerificationKey) -> Vec<u8> {
    let mut out = index.to_be_bytes().to_vec();
    out.extend_from_slice(&vk.to_bytes());
    out
}

/// Parses [`vk_share_bytes`] and checks the key.
pub fn parse_vk_share(bytes: &[u8], params: &Parameters) -> anyhow::Result<(u64, VerificationKey)> {
    let (index, rest) = split_u64(bytes).context("truncated verification key share")?;
    let vk = VerificationKey::from_bytes(rest).context("malformed verification key share")?;
    vk.check(params).context("invalid verification key share")?;
    if index == 0 {
        bail!("verification key share has index 0");
    }
    Ok((index, vk))
}

/// Reads and checks a master verification key file.
pub fn read_verification_key(path: &Path, params: &Parameters) -> anyhow::Result<VerificationKey> {
    let vk = VerificationKey::from_bytes(&read_small(path)?)
        .with_context(|| format!("{}: malformed verification key", path.display()))?;
    vk.check(params)
        .with_context(|| format!("{}: invalid verification key", path.display()))?;
    Ok(vk)
}

fn split_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}

/// Days since the Unix epoch (UTC), the unit of credential expiry.
pub fn today() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs / 86_400).unwrap_or(u32::MAX)
}

/// A day number (days since 1970-01-01, how credentials count their expiry) as an ISO 8601
/// date, `YYYY-MM-DD` (UTC): Howard Hinnant's `civil_from_days`.
pub fn iso_date(day: u32) -> String {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
