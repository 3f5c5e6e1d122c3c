//! Talking to the directory authorities over HTTP: fetch and verify the consensus document,
//! register a descriptor, send heartbeats. Used by mixnodes, gateways, clients and loadgen.
//!
//! Endpoints (JSON bodies):
//! - `GET  /v1/key`        → `{"key": "<hex ed25519 public key>"}` (pin it out of band)
//! - `GET  /v1/consensus`  → [`MultiSigned`] topology (domain `DOMAIN_CONSENSUS`), what
//!   verifiers use ([`fetch_consensus`]: any of the pinned authorities, in turn)
//! - `POST /v1/register`   ← [`Signed`] descriptor (domain [`DOMAIN_DESCRIPTOR`])
//! - `POST /v1/heartbeat`  ← [`Signed`] heartbeat (domain [`DOMAIN_HEARTBEAT`])
//! - `POST /v1/deregister` ← [`Signed`] deregistration (domain [`DOMAIN_DEREGISTER`])
//!
//! [`Signed`]: crate::topology::Signed

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::keyfile;
use crate::limits;
use crate::topology::{
    now_s, sign, verify_consensus, AuthoritySet, Deregistration, Descriptor, Heartbeat,
    MultiSigned, Topology, TopologyError, DOMAIN_DEREGISTER, DOMAIN_DESCRIPTOR, DOMAIN_HEARTBEAT,
};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryClientError {
    #[error("directory {url}: {}", describe_http(.source))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("directory {url}: HTTP {status}: {text}")]
    Status {
        url: String,
        status: u16,
        text: String,
    },
    #[error("directory {url}: response too large")]
    TooLarge { url: String },
    #[error("directory {url}: malformed response")]
    Malformed { url: String },
    #[error("directory {url}: topology refused: {source}")]
    Topology {
        url: String,
        #[source]
        source: TopologyError,
    },
    /// Every authority tried failed; one line each.
    #[error("no authority gave a valid document: {}", .0.join("; "))]
    NoAuthority(Vec<String>),
}

/// The authorities a verifier fetches documents from (any of them, in turn) and the keys it
/// pins (a document needs `set.threshold()` of their signatures, whoever serves it).
#[derive(Clone, Debug)]
pub struct Authorities {
    urls: Vec<String>,
    set: AuthoritySet,
    /// The URL that answered last: tried first next time, so a dead authority costs one
    /// failed request per failover, not one per fetch.
    preferred: Arc<AtomicUsize>,
}

impl Authorities {
    /// `urls`: 1 to `AUTHORITIES_MAX` base URLs (duplicates dropped); `keys`: the pinned keys.
    pub fn new(urls: Vec<String>, keys: Vec<[u8; 32]>) -> Result<Authorities, String> {
        let mut distinct: Vec<String> = Vec::with_capacity(urls.len());
        for url in urls {
            let url = url.trim().trim_end_matches('/').to_string();
            if !url.is_empty() && !distinct.contains(&url) {
                distinct.push(url);
            }
        }
        if distinct.is_empty() {
            return Err("no directory authority URL given".into());
        }
        if distinct.len() > limits::AUTHORITIES_MAX {
            return Err(format!(
                "{} authority URLs; at most {} are used",
                distinct.len(),
                limits::AUTHORITIES_MAX
            ));
        }
        let set = AuthoritySet::new(keys).map_err(|e| format!("authority keys: {e}"))?;
        Ok(Authorities {
            urls: distinct,
            set,
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// From hex keys as configuration spells them.
    pub fn from_hex(urls: &[String], keys: &[String]) -> Result<Authorities, String> {
        let keys = keys
            .iter()
            .map(|k| {
                keyfile::unhex_32(k)
                    .ok_or_else(|| format!("authority key {k:?} is not 32-byte hex"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Authorities::new(urls.to_vec(), keys)
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn set(&self) -> &AuthoritySet {
        &self.set
    }

    /// The pinned keys, hex, in configuration order.
    pub fn keys_hex(&self) -> Vec<String> {
        self.set.keys().iter().map(|k| keyfile::hex(k)).collect()
    }
}

/// `--directory URL ... --directory-key HEX ...`: the authorities a gateway or a client
/// uses, flattened into their commands so the flags read the same everywhere.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthorityArgs {
    /// Directory authority base URL (`http://host:port`); repeat (or comma-separate) for each
    /// authority: documents are fetched from any of them, in turn (a gateway also registers
    /// and heartbeats with each).
    #[arg(long, env = "LETHE_DIRECTORY", value_delimiter = ',')]
    pub directory: Vec<String>,
    /// An authority's ed25519 public key (hex), pinned; repeat for each. A document needs
    /// 2f+1 of their signatures, f = (n-1)/3 (n = 1: the one; n = 4: 3).
    #[arg(
        long,
        env = "LETHE_DIRECTORY_KEY",
        value_delimiter = ',',
        requires = "directory"
    )]
    pub directory_key: Vec<String>,
}

impl AuthorityArgs {
    /// The authorities with their pinned keys; `None` without flags. URLs without keys are
    /// refused (only `lethe client init` trusts a lone directory's key on first use).
    pub fn pinned(&self) -> Result<Option<Authorities>, String> {
        match (self.directory.is_empty(), self.directory_key.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Authorities::from_hex(&self.directory, &self.directory_key)
                .map(Some)
                .map_err(|e| format!("--directory/--directory-key: {e}")),
            _ => Err("--directory and --directory-key go together".into()),
        }
    }
}

/// Fetches `/v1/consensus` from the authorities in turn (the last one that answered first)
/// until one serves a document that verifies: `set.threshold()` signatures of pinned keys,
/// fresh, not from the future, epoch not below `seen_epoch`. Every failure is said in the
/// error when none does.
pub async fn fetch_consensus(
    http: &reqwest::Client,
    authorities: &Authorities,
    seen_epoch: Option<u64>,
) -> Result<Topology, DirectoryClientError> {
    let count = authorities.urls.len();
    let first = authorities.preferred.load(Ordering::Relaxed) % count;
    let mut failures = Vec::new();
    for offset in 0..count {
        let index = (first + offset) % count;
        let base = &authorities.urls[index];
        match fetch_consensus_from(http, base, &authorities.set, seen_epoch).await {
            Ok(topology) => {
                if offset > 0 {
                    tracing::info!(authority = %base, "consensus fetched after failover");
                }
                authorities.preferred.store(index, Ordering::Relaxed);
                return Ok(topology);
            }
            Err(e) => {
                if count == 1 {
                    return Err(e);
                }
                tracing::debug!(authority = %base, error = %e, "authority failed; trying the next");
                failures.push(e.to_string());
            }
        }
    }
    Err(DirectoryClientError::NoAuthority(failures))
}

/// One authority's `/v1/consensus`, verified against the pinned set.
pub async fn fetch_consensus_from(
    http: &reqwest::Client,
    base: &str,
    set: &AuthoritySet,
    seen_epoch: Option<u64>,
) -> Result<Topology, DirectoryClientError> {
    let url = join(base, "/v1/consensus");
    let body = get_bytes(http, &url).await?;
    let doc: MultiSigned = serde_json::from_slice(&body)
        .map_err(|_| DirectoryClientError::Malformed { url: url.clone() })?;
    verify_consensus(&doc, set, now_s(), seen_epoch)
        .map_err(|source| DirectoryClientError::Topology { url, source })
}

/// One authority's `/v1/consensus` as served, unverified (operators' status views).
pub async fn fetch_consensus_document(
    http: &reqwest::Client,
    base: &str,
) -> Result<MultiSigned, DirectoryClientError> {
    let url = join(base, "/v1/consensus");
    let body = get_bytes(http, &url).await?;
    serde_json::from_slice(&body).map_err(|_| DirectoryClientError::Malformed { url })
}

/// A request failure with its cause: reqwest's own text ("error sending request for url")
/// hides whether the connection was refused, timed out or failed DNS, which is what the user
/// needs to act on.
fn describe_http(error: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = error;
    let mut nested = false;
    while let Some(next) = root.source() {
        root = next;
        nested = true;
    }
    let cause = root.to_string();
    if error.is_timeout() {
        format!(
            "no answer within {} s ({cause}): is the directory up and reachable at this URL?",
            Duration::from_millis(limits::DIRECTORY_REQUEST_TIMEOUT_MS).as_secs()
        )
    } else if error.is_connect() {
        format!(
            "cannot connect ({cause}): is the directory running, and is this its URL (scheme, \
             host and port)?"
        )
    } else if nested {
        format!("{error} ({cause})")
    } else {
        cause
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(limits::DIRECTORY_REQUEST_TIMEOUT_MS))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn join(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

async fn get_bytes(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, DirectoryClientError> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|source| DirectoryClientError::Http {
            url: url.to_string(),
            source,
        })?;
    read_body(response, url).await
}

async fn read_body(
    mut response: reqwest::Response,
    url: &str,
) -> Result<Vec<u8>, DirectoryClientError> {
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| DirectoryClientError::Http {
            url: url.to_string(),
            source,
        })?
    {
        if body.len() + chunk.len() > limits::DIRECTORY_RESPONSE_BYTES_MAX {
            return Err(DirectoryClientError::TooLarge {
                url: url.to_string(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(DirectoryClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            text: String::from_utf8_lossy(
                &body[..body
                    .len()
                    .min(crate::limits::DIRECTORY_ERROR_TEXT_BYTES_MAX)],
            )
            .into_owned(),
        });
    }
    Ok(body)
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, DirectoryClientError> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|source| DirectoryClientError::Http {
            url: url.to_string(),
            source,
        })?;
    read_body(response, url).await
}

/// The directory's public key as it serves it. Trust on first use only: production clients
/// pin the key from configuration instead.
pub async fn fetch_key(
    http: &reqwest::Client,
    base: &str,
) -> Result<[u8; 32], DirectoryClientError> {
    #[derive(Deserialize)]
    struct KeyResponse {
        key: String,
    }
    let url = join(base, "/v1/key");
    let body = get_bytes(http, &url).await?;
    let response: KeyResponse = serde_json::from_slice(&body)
        .map_err(|_| DirectoryClientError::Malformed { url: url.clone() })?;
    keyfile::unhex_32(&response.key).ok_or(DirectoryClientError::Malformed { url })
}

/// What the directory said to an accepted registration (fields this node uses).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RegisterReply {
    /// Seconds without a heartbeat after which the directory drops a node (absent from
    /// directories that did not say).
    #[serde(default)]
    pub heartbeat_timeout_s: Option<u64>,
}

/// Registers (or refreshes) a descriptor, signed now with the node's identity seed.
pub async fn register(
    http: &reqwest::Client,
    base: &str,
    identity_seed: &[u8; 32],
    descriptor: &Descriptor,
) -> Result<RegisterReply, DirectoryClientError> {
    let url = join(base, "/v1/register");
    let mut descriptor = descriptor.clone();
    descriptor.issued_at_s = now_s();
    let reply = post_signed(http, &url, &descriptor, DOMAIN_DESCRIPTOR, identity_seed).await?;
    // An answer that does not parse still means accepted (the status said so).
    Ok(serde_json::from_slice(&reply).unwrap_or_default())
}

/// Signs `value` under `domain` with the node's identity seed and posts it to `url`; the
/// reply's body.
async fn post_signed<T: serde::Serialize>(
    http: &reqwest::Client,
    url: &str,
    value: &T,
    domain: &[u8],
    identity_seed: &[u8; 32],
) -> Result<Vec<u8>, DirectoryClientError> {
    let signed =
        sign(value, domain, identity_seed).map_err(|source| DirectoryClientError::Topology {
            url: url.to_string(),
            source,
        })?;
    let body = serde_json::to_vec(&signed).map_err(|_| DirectoryClientError::Malformed {
        url: url.to_string(),
    })?;
    post_json(http, url, body).await
}

/// Removes this node from the directory at once (it leaves the next topology), signed now
/// with the node's identity seed.
pub async fn deregister(
    http: &reqwest::Client,
    base: &str,
    identity_seed: &[u8; 32],
) -> Result<(), DirectoryClientError> {
    let url = join(base, "/v1/deregister");
    let deregistration = Deregistration {
        identity: keyfile::hex(&keyfile::ed25519_public(identity_seed)),
        sent_at_s: now_s(),
    };
    post_signed(
        http,
        &url,
        &deregistration,
        DOMAIN_DEREGISTER,
        identity_seed,
    )
    .await
    .map(|_| ())
}

/// Sends one heartbeat.
pub async fn heartbeat(
    http: &reqwest::Client,
    base: &str,
    identity_seed: &[u8; 32],
) -> Result<(), DirectoryClientError> {
    let url = join(base, "/v1/heartbeat");
    let heartbeat = Heartbeat {
        identity: keyfile::hex(&keyfile::ed25519_public(identity_seed)),
        sent_at_s: now_s(),
    };
    post_signed(http, &url, &heartbeat, DOMAIN_HEARTBEAT, identity_seed)
        .await
        .map(|_| ())
}
