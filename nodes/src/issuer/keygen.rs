//! `keygen`: trusted-dealer key generation for t-of-n issuers.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lethe_crypto::coconut::{aggregate_verification_keys, bandwidth, ttp_keygen};

use crate::credential_files::{ensure_dir, vk_share_bytes, write_new, IssuerKey};

/// Generate issuer key shares with a trusted dealer.
///
/// Writes, in `--out`: `issuer-<i>.key` (secret, mode 0600) and `issuer-<i>.vk` (public share)
/// for i = 1..=n, and `verification.key` (the aggregated key clients and gateways use).
#[derive(clap::Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Shares needed to issue a credential (t).
    #[arg(long)]
    pub threshold: usize,
    /// Number of issuers (n).
    #[arg(long)]
    pub issuers: usize,
    /// Output directory (created if missing; existing key files are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `keygen`.
pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let (t, n) = (args.threshold, args.issuers);
    if t == 0 {
        bail!("--threshold must be at least 1");
    }
    if t > n {
        bail!("--threshold ({t}) must not exceed --issuers ({n})");
    }
    if n > crate::limits::ISSUERS_MAX {
        bail!(
            "--issuers ({n}) is unreasonably large (max {})",
            crate::limits::ISSUERS_MAX
        );
    }
    let out = &args.out;
    let mut paths = vec![out.join("verification.key")];
    for i in 1..=n {
        paths.push(key_path(out, i as u64));
        paths.push(out.join(format!("issuer-{i}.vk")));
    }
    // Check everything first, so a refusal leaves no half-written set behind.
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!("{} already exists; refusing to overwrite keys", p.display());
    }
    ensure_dir(out)?;

    let params = bandwidth::bandwidth_parameters()?;
    let shares =
        ttp_keygen(&params, t, n, &mut rand_core_06::OsRng).context("key generation failed")?;
    let vk_refs: Vec<(u64, _)> = shares.iter().map(|s| (s.index, &s.verification)).collect();
    // Any t shares interpolate to the master key; all n do too.
    let master = aggregate_verification_keys(&vk_refs).context("aggregating keys")?;

    write_new(&out.join("verification.key"), &master.to_bytes(), 0o644)?;
    for share in &shares {
        let key = IssuerKey::from_share(share, &master);
        write_new(&key_path(out, share.index), &key.to_bytes(), 0o600)?;
        let vk = vk_share_bytes(share.index, &share.verification);
        write_new(&out.join(format!("issuer-{}.vk", share.index)), &vk, 0o644)?;
    }
    println!(
        "wrote {t}-of-{n} issuer keys and verification.key to {}",
        out.display()
    );
    Ok(())
}

fn key_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("issuer-{index}.key"))
}
