//! Client issuance: ask all issuers in parallel, keep the first t shares that verify.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use lethe_crypto::coconut::bandwidth::{
    bandwidth_parameters, request_bandwidth, BandwidthCredential,
};
use lethe_crypto::coconut::{BlindedSignature, Parameters, VerificationKey};
use tokio::task::JoinSet;

use super::files::{parse_vk_share, read_small, read_verification_key, vk_share_bytes, write_new};
use super::server::{Terms, TERMS_PREFIX};

/// Where and how to obtain a credential.
#[derive(Debug, Clone)]
pub struct ObtainConfig {
    /// Issuer base URLs (`http://host:port`).
    pub issuers: Vec<String>,
    /// Shares needed (t).
    pub threshold: usize,
    /// The issuers' aggregated verification key (trusted, from `keygen`).
    pub master: VerificationKey,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Trusted verification-key shares by issuer index; when set, an issuer serving any other
    /// key is rejected before its share is used.
    pub trusted_shares: Option<BTreeMap<u64, VerificationKey>>,
}

/// Obtain a bandwidth credential from t of n issuers.
#[derive(clap::Args, Debug, Clone)]
pub struct ObtainArgs {
    /// Comma-separated issuer URLs, e.g. `http://10.0.0.1:8090,http://10.0.0.2:8090`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub issuers: Vec<String>,
    /// Shares needed (t).
    #[arg(long)]
    pub threshold: usize,
    /// The issuers' aggregated `verification.key`.
    #[arg(long)]
    pub verification_key: PathBuf,
    /// Where to write the credential (mode 0600; must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Directory with the trusted `issuer-<i>.vk` shares from `keygen`. Without it, shares
    /// served by issuers are trusted and only the aggregate is checked against the master key.
    #[arg(long)]
    pub key_dir: Option<PathBuf>,
}

/// Print a stored credential's public attributes.
#[derive(clap::Args, Debug, Clone)]
pub struct ShowArgs {
    /// Credential file written by `credential obtain`.
    pub credential: PathBuf,
}

/// Runs `credential obtain`.
pub fn run_obtain(args: &ObtainArgs) -> anyhow::Result<()> {
    let params = bandwidth_parameters()?;
    let master = read_verification_key(&args.verification_key, &params)?;
    if args.out.exists() {
        bail!(
            "{} already exists; refusing to overwrite",
            args.out.display()
        );
    }
    let trusted_shares = match &args.key_dir {
        Some(dir) => Some(read_vk_shares(dir, &params)?),
        None => None,
    };
    let cfg = ObtainConfig {
        issuers: args.issuers.clone(),
        threshold: args.threshold,
        master,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        trusted_shares,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cred = rt.block_on(obtain(&params, &cfg))?;
    write_new(&args.out, &cred.to_bytes(), 0o600)?;
    println!(
        "credential: {} bytes, expires day {}, written to {}",
        cred.bandwidth(),
        cred.expiry(),
        args.out.display()
    );
    Ok(())
}

/// Runs `credential show`.
pub fn run_show(args: &ShowArgs) -> anyhow::Result<()> {
    let bytes = zeroize::Zeroizing::new(read_small(&args.credential)?);
    let cred = BandwidthCredential::from_bytes(&bytes)
        .with_context(|| format!("{}: malformed credential", args.credential.display()))?;
    println!("bandwidth_bytes: {}", cred.bandwidth());
    println!("expiry_day: {}", cred.expiry());
    Ok(())
}

/// Reads every `issuer-<i>.vk` in `dir`.
pub fn read_vk_shares(
    dir: &Path,
    params: &Parameters,
) -> anyhow::Result<BTreeMap<u64, VerificationKey>> {
    let mut shares = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("issuer-") && name.ends_with(".vk") {
            let (index, vk) = parse_vk_share(&read_small(&path)?, params)
                .with_context(|| format!("{}", path.display()))?;
            shares.insert(index, vk);
        }
    }
    if shares.is_empty() {
        bail!("no issuer-<i>.vk files in {}", dir.display());
    }
    Ok(shares)
}

/// One issuer's answer: its index, key share and blinded signature.
struct Answer {
    index: u64,
    vk_share: VerificationKey,
    blinded: BlindedSignature,
}

/// Obtains a credential: terms from the first issuer to answer, then one request to every
/// issuer in parallel; each share is checked as it arrives and the first t valid ones are
/// aggregated (the rest are abandoned).
pub async fn obtain(
    params: &Parameters,
    cfg: &ObtainConfig,
) -> anyhow::Result<BandwidthCredential> {
    let (t, n) = (cfg.threshold, cfg.issuers.len());
    if t == 0 || t > n {
        bail!("threshold {t} is unusable with {n} issuers");
    }
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .build()?;
    let terms = fetch_terms(&http, &cfg.issuers).await?;
    let (pending, request) = request_bandwidth(
        params,
        &cfg.master,
        terms.bandwidth,
        terms.expiry,
        &mut rand_core_06::OsRng,
    )?;
    let mut body = Vec::with_capacity(TERMS_PREFIX + 512);
    body.extend_from_slice(&terms.bandwidth.to_be_bytes());
    body.extend_from_slice(&terms.expiry.to_be_bytes());
    body.extend_from_slice(&request.to_bytes());

    // Encoded trusted shares, compared byte for byte (the encoding is canonical).
    let trusted: Option<Arc<BTreeMap<u64, Vec<u8>>>> = cfg.trusted_shares.as_ref().map(|m| {
        Arc::new(
            m.iter()
                .map(|(i, vk)| (*i, vk_share_bytes(*i, vk)))
                .collect(),
        )
    });
    let mut tasks = JoinSet::new();
    for url in &cfg.issuers {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let trusted = trusted.clone();
        tasks.spawn(async move {
            let answer = ask(&http, &url, body, trusted.as_deref()).await;
            (url, answer)
        });
    }
    let mut shares = Vec::with_capacity(t);
    let mut seen = BTreeSet::new();
    let mut failures = String::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((url, answer)) = joined else { continue };
        let checked = answer.and_then(|raw| {
            let a = parse_answer(&raw, params)?;

            if !seen.insert(a.index) {
                bail!("duplicate signer index {}", a.index);
            }
            let share = pending.unblind(a.index, &a.vk_share, &a.blinded)?;
            pending
                .verify_share(params, &a.vk_share, &share)
                .context("share does not verify")?;
            Ok(share)
        });
        match checked {
            Ok(share) => {
                shares.push(share);
                if shares.len() == t {
                    break;
                }
            }
            Err(e) => {
                let _ = write!(failures, "; {url}: {e:#}");
            }
        }
    }
    tasks.abort_all();
    if shares.len() < t {
        bail!(
            "only {} of {n} issuers answered with a valid share, {t} needed{failures}",
            shares.len()
        );
    }
    // Shares verified under their keys but the aggregate can still fail if an issuer served a
    // key share that is not part of the master key.
    pending
        .aggregate(params, &cfg.master, &shares)
        .context("aggregated credential does not verify under the master verification key")
}

/// Terms from the first issuer that answers; the request proof binds them, so an issuer
/// with different terms simply refuses (422) and is counted as not answering.
async fn fetch_terms(http: &reqwest::Client, issuers: &[String]) -> anyhow::Result<Terms> {
    let mut tasks = JoinSet::new();
    for url in issuers {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            let body = get_bytes(http.get(format!("{url}/v1/terms"))).await?;
            anyhow::Ok(serde_json::from_slice::<Terms>(&body)?)
        });
    }
    let mut last = anyhow!("no issuers given");
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(terms)) => return Ok(terms),
            Ok(Err(e)) => last = e,
            Err(e) => last = e.into(),
        }
    }
    Err(last.context(format!(
        "no issuer answered for its terms (asked {})",
        issuers.len()
    )))
}

/// Fetches the issuer's key share and its blind signature (parsed by [`parse_answer`]).
/// With `trusted` shares, an issuer serving any other key is not sent the request at all.
async fn ask(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    trusted: Option<&BTreeMap<u64, Vec<u8>>>,
) -> anyhow::Result<RawAnswer> {
    let vk = get_bytes(http.get(format!("{url}/v1/verification-key"))).await?;
    if let Some(trusted) = trusted {
        let index = vk.first_chunk::<8>().map(|i| u64::from_be_bytes(*i));
        if index.and_then(|i| trusted.get(&i)) != Some(&vk) {
            bail!("issuer serves an untrusted verification key");
        }
    }
    let signed = get_bytes(http.post(format!("{url}/v1/blind-sign")).body(body)).await?;
    Ok(RawAnswer { vk, signed })
}

struct RawAnswer {
    vk: Vec<u8>,
    signed: Vec<u8>,
}

fn parse_answer(raw: &RawAnswer, params: &Parameters) -> anyhow::Result<Answer> {
    let (index, vk_share) = parse_vk_share(&raw.vk, params)?;
    let (head, rest) = raw
        .signed
        .split_first_chunk::<8>()
        .context("blind-sign response too short")?;
    if u64::from_be_bytes(*head) != index {
        bail!("blind-sign response index differs from the key share's");
    }
    let blinded = BlindedSignature::from_bytes(rest).context("malformed blinded signature")?;
    Ok(Answer {
        index,
        vk_share,
        blinded,
    })
}

/// Sends and returns the body of a 200 answer (at most 64 KiB), or the issuer's error text.
async fn get_bytes(req: reqwest::RequestBuilder) -> anyhow::Result<Vec<u8>> {
    const MAX: usize = 64 * 1024;
    let mut resp = req.send().await?;
    let status = resp.status();
    // Read chunk by chunk so a hostile issuer cannot make us buffer an endless body.
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX {
            bail!("response larger than {MAX} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let msg = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_owned();
        bail!("HTTP {status}: {msg}");
    }
    Ok(body)
}
