//! Client issuance: ask all issuers in parallel, keep the first t shares that verify.
//!
//! An issuer that is busy (429, 503) or not accepting connections is asked again, each
//! request on its own, after its `Retry-After` or else a pause doubling from
//! [`RetryPolicy::first_pause`] to [`RetryPolicy::max_pause`] (plus up to a quarter more at
//! random, so clients refused together do not all come back together), for at most
//! [`RetryPolicy::total`] from the start of the whole attempt. Any other answer is final.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{anyhow, bail, Context};
use lethe_crypto::coconut::bandwidth::{
    bandwidth_parameters, request_bandwidth, BandwidthCredential,
};
use lethe_crypto::coconut::{BlindedSignature, Parameters, VerificationKey};
use tokio::task::JoinSet;

use crate::credential_files::{
    iso_date, parse_vk_share, read_small, read_verification_key, vk_share_bytes, write_new,
};
use crate::limits::ISSUER_RESPONSE_BYTES_MAX;
use lethe_proto::wire::issuance::encode_blind_sign;

/// Terms a client must put in its request.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The issuer's Shamir index.
    pub index: u64,
    /// Bandwidth in bytes.
    pub bandwidth: u64,
    /// Expiry day (days since the Unix epoch) for a credential issued now.
    pub expiry: u32,
    /// Validity in days.
    pub validity_days: u32,
}

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

/// How long and how often to ask again an issuer that is busy or unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Time allowed for retries, from the start of the attempt; zero: ask each issuer once.
    pub total: Duration,
    /// Pause before the first retry when the issuer gives no `Retry-After`; doubles each time.
    pub first_pause: Duration,
    /// Longest pause between two requests to one issuer without `Retry-After`.
    pub max_pause: Duration,
}

impl RetryPolicy {
    /// Every issuer asked once.
    pub const NONE: RetryPolicy = RetryPolicy {
        total: Duration::ZERO,
        first_pause: Duration::from_millis(crate::limits::ISSUER_RETRY_PAUSE_MS_INITIAL),
        max_pause: Duration::from_millis(crate::limits::ISSUER_RETRY_PAUSE_MS_MAX),
    };

    /// Retries for `total`, pauses 0.5 s doubling to 8 s.
    pub fn for_total(total: Duration) -> RetryPolicy {
        RetryPolicy {
            total,
            ..RetryPolicy::NONE
        }
    }
}

/// What a request's retries may use, shared by the requests of one attempt.
#[derive(Debug, Clone, Copy)]
struct Retry {
    policy: RetryPolicy,
    deadline: Instant,
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
    /// Keep asking issuers that answer 429 or 503 or refuse connections for up to this many
    /// seconds in all, honouring their Retry-After, else pausing 0.5 s doubling to 8 s; then
    /// fail. 0: ask each issuer once.
    #[arg(long, default_value_t = 60)]
    pub retry_total_s: u64,
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
    let retry = RetryPolicy::for_total(Duration::from_secs(args.retry_total_s));
    let cred = rt.block_on(obtain_retrying(&params, &cfg, retry))?;
    write_new(&args.out, &cred.to_bytes(), 0o600)?;
    println!(
        "credential: {} bytes, valid through {} (day {}), written to {}",
        cred.bandwidth(),
        iso_date(cred.expiry()),
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
    // The day number stays (scripts read it); the date is for people. Spends are refused
    // once the gateway's UTC day is past it.
    println!("expiry_day: {}", cred.expiry());
    println!(
        "expiry_date: {} (valid through the end of that day, UTC)",
        iso_date(cred.expiry())
    );
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
/// aggregated (the rest are abandoned). Each issuer is asked once ([`obtain_retrying`] asks
/// busy ones again).
pub async fn obtain(
    params: &Parameters,
    cfg: &ObtainConfig,
) -> anyhow::Result<BandwidthCredential> {
    obtain_retrying(params, cfg, RetryPolicy::NONE).await
}

/// [`obtain`], asking issuers that are busy (429, 503) or unreachable again under `retry`.
pub async fn obtain_retrying(
    params: &Parameters,
    cfg: &ObtainConfig,
    retry: RetryPolicy,
) -> anyhow::Result<BandwidthCredential> {
    let retry = Retry {
        policy: retry,
        deadline: Instant::now() + retry.total,
    };
    let (t, n) = (cfg.threshold, cfg.issuers.len());
    if t == 0 || t > n {
        bail!("threshold {t} is unusable with {n} issuers");
    }
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .build()?;
    let terms = fetch_terms(&http, &cfg.issuers, retry).await?;
    let (pending, request) = request_bandwidth(
        params,
        &cfg.master,
        terms.bandwidth,
        terms.expiry,
        &mut rand_core_06::OsRng,
    )?;
    let body = encode_blind_sign(terms.bandwidth, terms.expiry, &request.to_bytes());

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
            let answer = ask(&http, &url, body, trusted.as_deref(), retry).await;
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
        .context(format!(
        "the aggregated credential does not verify under the verification key: {KEY_SET_MISMATCH}"
    ))
}

/// Why issuers refuse, or shares fail to combine, when keys were mixed up; and what to do.
const KEY_SET_MISMATCH: &str = "the issuer's key set does not match the verification key \
    (--verification-key): it was made by another `lethe keygen` run. Use the verification.key \
    that the same keygen wrote with these issuers' keys (a testnet prints its own), or the \
    issuers of that key";

/// Terms from the first issuer that answers; the request proof binds them, so an issuer
/// with different terms simply refuses (422) and is counted as not answering.
async fn fetch_terms(
    http: &reqwest::Client,
    issuers: &[String],
    retry: Retry,
) -> anyhow::Result<Terms> {
    let mut tasks = JoinSet::new();
    for url in issuers {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            let body = get_bytes(http.get(format!("{url}/v1/terms")), retry)
                .await
                .with_context(|| url.clone())?;
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
    retry: Retry,
) -> anyhow::Result<RawAnswer> {
    let vk = get_bytes(http.get(format!("{url}/v1/verification-key")), retry).await?;
    if let Some(trusted) = trusted {
        let index = vk.first_chunk::<8>().map(|i| u64::from_be_bytes(*i));
        if index.and_then(|i| trusted.get(&i)) != Some(&vk) {
            bail!("issuer serves an untrusted verification key");
        }
    }
    let signed = get_bytes(http.post(format!("{url}/v1/blind-sign")).body(body), retry)
        .await
        .map_err(|e| {
            // The request proof is built under our verification key: an issuer of another
            // key set (another `keygen`) cannot verify it, and says only "proof rejected".
            if format!("{e:#}").contains("proof rejected") {
                e.context(KEY_SET_MISMATCH)
            } else {
                e
            }
        })?;
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

/// One request's outcome when it did not succeed.
enum Failure {
    /// Worth asking again (429, 503, connection refused), after `retry_after` if the issuer
    /// said.
    Busy {
        error: anyhow::Error,
        retry_after: Option<Duration>,
    },
    Final(anyhow::Error),
}

/// Sends and returns the body of a 200 answer (at most 64 KiB), or the issuer's error text;
/// asks again under `retry` while the issuer is busy or unreachable.
async fn get_bytes(req: reqwest::RequestBuilder, retry: Retry) -> anyhow::Result<Vec<u8>> {
    let started = Instant::now();
    let mut pause = retry.policy.first_pause;
    let mut attempts = 0u32;
    loop {
        let attempt = req
            .try_clone()
            .context("internal: request body cannot be resent")?;
        attempts += 1;
        let (error, retry_after) = match send_once(attempt).await {
            Ok(body) => return Ok(body),
            Err(Failure::Final(error)) => return Err(error),
            Err(Failure::Busy { error, retry_after }) => (error, retry_after),
        };
        if retry.policy.total.is_zero() {
            return Err(error);
        }
        let left = retry.deadline.saturating_duration_since(Instant::now());
        let total_s = retry.policy.total.as_secs();
        if left.is_zero() {
            return Err(error.context(format!(
                "gave up after {attempts} attempt(s) in {:.1} s: the issuer stayed busy or \
                 unreachable for the {total_s} s of --retry-total-s (raise it, or try again \
                 later)",
                started.elapsed().as_secs_f64()
            )));
        }
        let wait = match retry_after {
            // The issuer said when: later than allowed is giving up now, not at the deadline.
            Some(wait) if wait > left => {
                return Err(error.context(format!(
                    "gave up after {attempts} attempt(s): the issuer asks to wait {} s, more \
                     than the {:.0} s left of --retry-total-s {total_s} (raise it, or try again \
                     later)",
                    wait.as_secs(),
                    left.as_secs_f64()
                )));
            }
            // Never sooner than our own first pause, whatever a server says (`Retry-After: 0`
            // must not make us hammer it).
            Some(wait) => wait.max(retry.policy.first_pause).min(left),
            // Our own backoff, shortened to end at the deadline for one last attempt there.
            None => (pause + pause.mul_f64(rand::random_range(0.0..0.25))).min(left),
        };
        tracing::warn!(
            issuer = %attempt_url(&req),
            retry_in_s = format_args!("{:.1}", wait.as_secs_f64()),
            "issuer request failed: {error:#}; asking again"
        );
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(retry.policy.max_pause);
    }
}

/// The URL a request goes to, for messages.
fn attempt_url(req: &reqwest::RequestBuilder) -> String {
    req.try_clone()
        .and_then(|r| r.build().ok())
        .map_or_else(|| "issuer".to_string(), |r| r.url().to_string())
}

/// The server's `Retry-After` in seconds (the HTTP-date form is not used by Lethe's issuers
/// and is ignored), capped so a hostile issuer cannot park us for long.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(
        secs.min(crate::limits::ISSUER_RETRY_AFTER_S_MAX),
    ))
}

async fn send_once(req: reqwest::RequestBuilder) -> Result<Vec<u8>, Failure> {
    let mut resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) if e.is_connect() => {
            return Err(Failure::Busy {
                error: anyhow::Error::new(e).context("cannot connect"),
                retry_after: None,
            })
        }
        Err(e) => return Err(Failure::Final(e.into())),
    };
    let status = resp.status();
    let hint = retry_after(&resp);
    // Read chunk by chunk so a hostile issuer cannot make us buffer an endless body.
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > ISSUER_RESPONSE_BYTES_MAX {
                    return Err(Failure::Final(anyhow!(
                        "response larger than {ISSUER_RESPONSE_BYTES_MAX} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(Failure::Final(e.into())),
        }
    }
    if status.is_success() {
        return Ok(body);
    }
    let msg = String::from_utf8_lossy(
        &body[..body.len().min(crate::limits::ISSUER_ERROR_TEXT_BYTES_MAX)],
    )
    .trim()
    .to_owned();
    let error = anyhow!("HTTP {status}: {msg}");
    let busy = status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::SERVICE_UNAVAILABLE;
    if busy {
        Err(Failure::Busy {
            error,
            retry_after: hint,
        })
    } else {
        Err(Failure::Final(error))
    }
}

#[cfg(test)]
mod date_tests {
    use super::iso_date;

    #[test]
    fn days_are_iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(20_801), "2026-12-14");
        assert_eq!(iso_date(11_016), "2000-02-29");
        assert_eq!(iso_date(11_017), "2000-03-01");
    }
}
