//! `lethe client init | send | receive`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lethe_crypto::coconut::bandwidth::bandwidth_parameters;
use rand::seq::IndexedRandom;
use zeroize::Zeroizing;

use super::address::Recipient;
use super::config::{self, LoopixParams};
use super::runtime::{connect, ClientConfig};
use super::trace::ClientTraceArgs;
use crate::directory::client::AuthorityArgs;
use crate::keyfile;
use crate::proto::messages::error_code;
use crate::proto::ClientMessage;
use crate::ws::Connection;
use lethe_proto::client_session::ClientEvent;

#[derive(clap::Args, Debug, Default)]
pub struct InitArgs {
    /// Client directory (created 0700; refuses to overwrite an existing client).
    #[arg(long, env = "LETHE_DIR")]
    pub dir: PathBuf,
    /// The authorities (`--directory` at least once). Without `--directory-key` (one
    /// --directory only), the key the directory serves is trusted on first use and pinned.
    #[command(flatten)]
    pub authority: AuthorityArgs,
    /// Our gateway's identity (hex). Without it, a random gateway of the topology.
    #[arg(long)]
    pub gateway: Option<String>,
    /// A bandwidth credential (from `lethe credential obtain`) to copy into the client
    /// directory; spent when the gateway asks for bandwidth. Needs --verification-key.
    #[arg(long, requires = "verification_key", conflicts_with = "issuers")]
    pub credential: Option<PathBuf>,
    /// Obtain a credential from these issuers (comma-separated `http://host:port`).
    /// Needs --threshold and --verification-key.
    #[arg(long, value_delimiter = ',', requires_all = ["threshold", "verification_key"])]
    pub issuers: Option<Vec<String>>,
    /// Issuer shares needed (t), with --issuers.
    #[arg(long, requires = "issuers")]
    pub threshold: Option<usize>,
    /// The issuers' aggregated verification key (`verification.key` from `lethe keygen`),
    /// copied into the client directory.
    #[arg(long)]
    pub verification_key: Option<PathBuf>,
    /// Create the client even though its gateway requires bandwidth credentials and none is
    /// given (sends fail until a credential is put in DIR/credential).
    #[arg(long, conflicts_with_all = ["credential", "issuers"])]
    pub without_credential: bool,
}

/// Traffic overrides for tests and benchmarks (the config's values otherwise).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TrafficArgs {
    /// No drop cover and no loop cover.
    #[arg(long)]
    pub no_cover: bool,
    /// Mean delay between packets of the Poisson stream, ms (0: send real packets at once).
    #[arg(long)]
    pub send_delay_ms: Option<f64>,
    /// Mean delay between loop-cover packets, ms.
    #[arg(long)]
    pub loop_delay_ms: Option<f64>,
    /// Mean per-hop mix delay, ms (packets and ACKs).
    #[arg(long)]
    pub hop_delay_ms: Option<f64>,
    /// Retransmissions of a fragment before giving up.
    #[arg(long)]
    pub max_retransmissions: Option<u32>,
}

impl TrafficArgs {
    pub fn apply(&self, mut params: LoopixParams) -> LoopixParams {
        if self.no_cover {
            params = params.without_cover();
        }
        if let Some(v) = self.send_delay_ms {
            params.message_sending_average_delay_ms = v;
        }
        if let Some(v) = self.loop_delay_ms {
            params.loop_cover_average_delay_ms = v;
        }
        if let Some(v) = self.hop_delay_ms {
            params.average_packet_delay_ms = v;
            params.average_ack_delay_ms = v;
        }
        if let Some(v) = self.max_retransmissions {
            params.max_retransmissions = Some(v);
        }
        params
    }
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("content").required(true).args(["message", "file"])))]
pub struct SendArgs {
    /// Client directory (see `lethe client init`).
    #[arg(long, env = "LETHE_DIR")]
    pub dir: PathBuf,
    /// Recipient address `<identity>.<encryption key>@<gateway>`.
    #[arg(long)]
    pub to: String,
    /// The message (UTF-8 text).
    #[arg(long)]
    pub message: Option<String>,
    /// Send this file's bytes (up to 16 MiB). Its name is not sent: the recipient's
    /// `client receive` writes it as `msg-<message id>`.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Wait until every fragment is acknowledged (committed to the recipient's gateway's
    /// mailbox); exit non-zero, saying how many were not, if any is given up or the timeout
    /// passes first.
    #[arg(long)]
    pub wait_acks: bool,
    /// Reply SURBs to attach.
    #[arg(long, default_value_t = 0)]
    pub reply_surbs: usize,
    /// Give up after this long.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    #[command(flatten)]
    pub trace: ClientTraceArgs,
}

#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// Client directory (see `lethe client init`).
    #[arg(long, env = "LETHE_DIR")]
    pub dir: PathBuf,
    /// Where complete messages are written, each as `msg-<message id hex>`: messages carry
    /// no file name (the sender's is not sent).
    #[arg(long)]
    pub out: PathBuf,
    /// Exit after this many messages (otherwise at the timeout).
    #[arg(long)]
    pub count: Option<usize>,
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    #[command(flatten)]
    pub trace: ClientTraceArgs,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// How long `init` keeps asking issuers that are busy (429/503) or unreachable.
const INIT_RETRY_TOTAL: Duration = Duration::from_secs(60);

/// The credential `init` installs: read from --credential, or obtained from --issuers.
async fn init_credential(args: &InitArgs) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    if let Some(path) = &args.credential {
        let bytes = crate::credential_files::read_small(path).map_err(|e| format!("{e:#}"))?;
        return Ok(Some(Zeroizing::new(bytes)));
    }
    let (Some(issuers), Some(threshold), Some(vk)) =
        (&args.issuers, args.threshold, &args.verification_key)
    else {
        return Ok(None);
    };
    let params = bandwidth_parameters().map_err(|e| format!("coconut parameters: {e}"))?;
    let master = crate::credential_files::read_verification_key(vk, &params)
        .map_err(|e| format!("{e:#}"))?;
    let obtain = crate::issuance::ObtainConfig {
        issuers: issuers.clone(),
        threshold,
        master,
        timeout: Duration::from_millis(crate::limits::ISSUER_REQUEST_TIMEOUT_MS),
        trusted_shares: None,
    };
    // Issuers busy or briefly down are asked again, as `lethe credential obtain` does.
    let retry = crate::issuance::RetryPolicy::for_total(INIT_RETRY_TOTAL);
    let credential = crate::issuance::obtain_retrying(&params, &obtain, retry)
        .await
        .map_err(|e| format!("obtaining a credential: {e:#}"))?;
    Ok(Some(credential.to_bytes()))
}

/// How long the admission probe may take in all (connect, handshake, answers).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether a gateway requires bandwidth credentials, as it says in every session: with
/// admission on it sends `Bandwidth{remaining}` right after `Welcome`, before anything else.
/// To know when to stop waiting for it, the probe then sends a forward that every gateway
/// refuses at once (`NOT_LAYER1`: its first hop is no node address, checked before any
/// metering), so the answer is in when that refusal is, without guessing a delay. The probe
/// uses a throwaway identity: the gateway remembers a bare handshake in memory only. Also
/// loadgen's check before a `--target` run.
pub async fn gateway_requires_credentials(url: &str, gateway: [u8; 32]) -> Result<bool, String> {
    let seed = keyfile::random_32()?;
    let (mut connection, _) = Connection::open(url, &seed, gateway, PROBE_TIMEOUT).await?;
    let barrier = ClientMessage::Forward {
        first_hop: [0; 32],
        packet: vec![0; lethe_crypto::framing::PacketSize::Ack.packet_len()],
    };
    connection.send(&barrier).await?;
    let mut required = false;
    // Bounded by the gateway: it answers the barrier, or closes (the caller's timeout otherwise).
    let answer = loop {
        match connection.next_event().await {
            Ok(ClientEvent::Bandwidth { .. }) => required = true,
            Ok(ClientEvent::Error {
                code: error_code::NOT_LAYER1,
                ..
            }) => break Ok(required),
            Ok(ClientEvent::Error { code, text }) => {
                break Err(format!("gateway error {code}: {text}"))
            }
            Ok(ClientEvent::Closed { .. }) => break Err("the gateway ended the session".into()),
            Ok(ClientEvent::Welcome { .. } | ClientEvent::Deliver { .. }) => {}
            Err(e) => break Err(e),
        }
    };
    connection.close().await;
    answer
}

/// The refusal of `init` without credentials at a gateway that requires them, with the flags
/// to add: the real values when the directory is a local `lethe testnet`'s.
fn credentials_required_error(args: &InitArgs, gateway: &[u8; 32]) -> String {
    let exe = crate::testnet::invoked_as();
    let q = |t: &str| keyfile::shell_quote(t);
    let mut command = format!("{exe} client init --dir {}", q(&args.dir.to_string_lossy()));
    for url in &args.authority.directory {
        command += &format!(" --directory {}", q(url));
    }
    for key in &args.authority.directory_key {
        command += &format!(" --directory-key {}", q(key));
    }
    if let Some(hex) = &args.gateway {
        command += &format!(" --gateway {}", q(hex));
    }
    let first = args.authority.directory.first().map_or("", String::as_str);
    let flags = crate::testnet::credential_flags_for(first).unwrap_or_else(|| {
        "--issuers URL,URL,... --threshold T --verification-key PATH/verification.key".into()
    });
    format!(
        "gateway {} requires bandwidth credentials and none was given: every send would fail \
         with \"no bandwidth\". Run init again with the network's credential issuers:\n\n  \
         {command} \\\n      {flags}\n\nor with a credential from `lethe credential obtain`: \
         --credential FILE --verification-key PATH. (`lethe testnet up` prints these values; \
         `lethe testnet env` gives them as shell variables.) To create the client anyway and \
         put a credential in {}/credential later, add --without-credential. Nothing was \
         written.",
        keyfile::hex(gateway),
        args.dir.display()
    )
}

pub fn init(args: &InitArgs) -> Result<(), String> {
    let existing = args.dir.join(config::CONFIG_FILE);
    if existing.exists() {
        return Err(format!("{}: already exists", existing.display()));
    }
    if args.verification_key.is_some() && args.credential.is_none() && args.issuers.is_none() {
        return Err("--verification-key goes with --credential or --issuers".into());
    }
    runtime()?.block_on(async {
        // First, so a failure leaves no half-made client directory.
        let credential = init_credential(args).await?;
        let http = crate::directory::client::http_client();
        let authority = &args.authority;
        let authorities = match (
            authority.directory.as_slice(),
            authority.directory_key.is_empty(),
        ) {
            ([], _) => return Err("--directory is required: the network's authorities".into()),
            (_, false) => authority.pinned()?.ok_or("--directory is required")?,
            ([url], true) => {
                let key = crate::directory::client::fetch_key(&http, url)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::warn!(
                    directory = %url,
                    directory_key = %keyfile::hex(&key),
                    "trusting the directory key as served (trust on first use; pass \
                     --directory-key to pin a key obtained out of band)"
                );
                crate::directory::client::Authorities::new(vec![url.clone()], vec![key])?
            }
            (_, true) => {
                return Err("several --directory authorities: pin their keys with \
                            --directory-key (trust on first use is for one directory only)"
                    .into())
            }
        };
        let topology = crate::directory::client::fetch_consensus(&http, &authorities, None)
            .await
            .map_err(|e| e.to_string())?;
        let gateway = match &args.gateway {
            Some(hex) => {
                let gateway = keyfile::unhex_32(hex)
                    .ok_or_else(|| "--gateway is not 32-byte hex".to_string())?;
                if topology.gateway(&gateway).is_none() {
                    return Err(format!("gateway {hex} is not in the directory's topology"));
                }
                gateway
            }
            None => {
                let usable: Vec<_> = topology
                    .gateways
                    .iter()
                    .filter(|g| g.client_url.is_some())
                    .collect();
                let chosen = usable
                    .choose(&mut rand::rng())
                    .ok_or_else(|| "the topology has no gateway with a client URL".to_string())?;
                chosen.identity_key().map_err(|e| e.to_string())?
            }
        };
        // Before anything is written: a client without a credential at a gateway that
        // requires one could not send a byte, and would learn it only from `send`.
        if credential.is_none() && !args.without_credential {
            let url = topology
                .gateway(&gateway)
                .and_then(|g| g.client_url.clone());
            if let Some(url) = url {
                let probe = gateway_requires_credentials(&url, gateway);
                match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    Ok(Ok(true)) => return Err(credentials_required_error(args, &gateway)),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        error = %e,
                        "could not ask the gateway whether it requires credentials; going on"
                    ),
                    Err(_) => tracing::warn!(
                        timeout_s = PROBE_TIMEOUT.as_secs(),
                        "the gateway did not say in time whether it requires credentials; \
                         going on"
                    ),
                }
            }
        }
        let address =
            config::write_new(&args.dir, &authorities, &gateway, LoopixParams::default())?;
        // Register with the gateway now (one handshake), so it keeps messages that arrive
        // while this client is offline: a gateway stores only for clients it knows.
        let files = config::load(&args.dir)?;
        let registered = async {
            let (handle, _received) = connect(ClientConfig::from_files(&files))
                .await
                .map_err(|e| e.to_string())?;
            let waited = handle
                .wait_connected(Duration::from_millis(
                    crate::limits::CLIENT_REGISTER_WAIT_MS,
                ))
                .await;
            handle
                .shutdown(Duration::from_millis(crate::limits::CLIENT_SHUTDOWN_MS))
                .await;
            waited.map_err(|e| e.to_string())
        };
        if let Err(e) = registered.await {
            tracing::warn!(
                error = %e,
                "could not register with the gateway yet: it registers on first connect, and \
                 keeps messages for this client only from then on"
            );
        }
        // Beside the keys, for scripts: `--to "$(cat DIR/address)"`.
        let address_path = args.dir.join("address");
        std::fs::write(&address_path, format!("{address}\n"))
            .map_err(|e| format!("{}: {e}", address_path.display()))?;
        if let (Some(credential), Some(vk)) = (&credential, &args.verification_key) {
            super::credential::install(&args.dir, credential, vk)?;
        }
        println!("address={address}");
        Ok(())
    })
}

/// Why packets did not go out, if the gateway wanted bandwidth we could not pay for.
fn no_bandwidth_error(dir: &Path, refused: u64) -> String {
    format!(
        "the gateway has no bandwidth for this client ({refused} refusals) and {} holds no \
         credential to spend: obtain one with `lethe credential obtain --issuers URLS \
         --threshold T --verification-key PATH --out {}` and copy the verification key to {}",
        dir.display(),
        dir.join(super::credential::CREDENTIAL_FILE).display(),
        dir.join(super::credential::VERIFICATION_KEY_FILE).display(),
    )
}

pub fn send(args: &SendArgs) -> Result<(), String> {
    // Held until `send` returns: one process per client directory (see `lock`).
    let _dir_lock = crate::lock::NodeLocks::claim(&args.dir, "client")?;
    let recipient: Recipient = args.to.parse().map_err(|e| format!("--to: {e}"))?;
    let data = match (&args.message, &args.file) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(path)) => {
            std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, None) => return Err("give --message or --file".into()),
    };
    let mut files = config::load(&args.dir)?;
    files.loopix = args.traffic.apply(files.loopix);
    let timeout = Duration::from_secs(args.timeout_s);
    runtime()?.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let (handle, _received) = connect(args.trace.config(&files))
            .await
            .map_err(|e| e.to_string())?;
        handle
            .wait_connected(timeout)
            .await
            .map_err(|e| e.to_string())?;
        let ticket = handle
            .send(&recipient, data, args.reply_surbs)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(path) = &args.file {
            tracing::info!(
                file = %path.display(),
                written_as = %received_file_name(ticket.message_id),
                "the file's name is not sent: the recipient's `client receive` writes it under \
                 its message id"
            );
        }
        let mut progress = ticket.progress.clone();
        let wait_acks = args.wait_acks;
        let done = progress.wait_for(|p| {
            if wait_acks {
                p.finished()
            } else {
                p.sent == p.fragments || p.finished()
            }
        });
        let last = match tokio::time::timeout_at(deadline, done).await {
            Ok(Ok(p)) => *p,
            _ => *ticket.progress.borrow(),
        };
        let stats = handle.stats();
        if stats.no_bandwidth > 0 && !last.delivered() {
            return Err(no_bandwidth_error(&args.dir, stats.no_bandwidth));
        }
        println!(
            "message_id={:016x} fragments={} sent={} acked={} failed={} retransmitted={}",
            ticket.message_id,
            last.fragments,
            last.sent,
            last.acked,
            last.failed,
            stats.core.retransmitted
        );
        if wait_acks {
            // Success only when every fragment is acknowledged, i.e. durably stored by the
            // recipient's gateway; anything less names what is missing.
            if !last.delivered() || last.failed > 0 {
                let missing = last.fragments.saturating_sub(last.acked);
                let why = if last.finished() {
                    format!(
                        "{} given up after the maximum of retransmissions",
                        last.failed
                    )
                } else {
                    format!("timed out after {}s", args.timeout_s)
                };
                return Err(format!(
                    "{missing} of {} fragments were not acknowledged ({why}; {} sent at least \
                     once, {} acknowledged): the recipient may not get the message",
                    last.fragments, last.sent, last.acked
                ));
            }
        } else if last.sent < last.fragments {
            return Err(format!(
                "timed out after {}s: {} of {} fragments sent",
                args.timeout_s, last.sent, last.fragments
            ));
        }
        // Write the last packets out and close the session cleanly.
        handle
            .shutdown(Duration::from_millis(crate::limits::CLIENT_SHUTDOWN_MS))
            .await;
        let refused = handle.stats().no_bandwidth;
        if refused > 0 {
            return Err(no_bandwidth_error(&args.dir, refused));
        }
        Ok(())
    })
}

/// Writes `data` to `dir/name` durably (temporary file, fsync, rename, fsync of the directory),
/// mode 0600 from the start whatever the umask: received messages are the owner's alone.
pub fn write_durably(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover of a crash: removed, so `create_new` gives a fresh file of our mode.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// The name `receive` gives a message in its `--out` directory.
pub fn received_file_name(message_id: u64) -> String {
    format!("msg-{message_id:016x}")
}

pub fn receive(args: &ReceiveArgs) -> Result<(), String> {
    // Held until `receive` returns: one process per client directory (see `lock`).
    let _dir_lock = crate::lock::NodeLocks::claim(&args.dir, "client")?;
    let mut files = config::load(&args.dir)?;
    files.loopix = args.traffic.apply(files.loopix);
    // Messages are private: a directory we create is the owner's alone (an existing one is
    // left as the user made it; each file is 0600 anyway).
    keyfile::create_private_dir(&args.out)?;
    let timeout = Duration::from_secs(args.timeout_s);
    runtime()?.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let (handle, mut received) = connect(args.trace.config(&files))
            .await
            .map_err(|e| e.to_string())?;
        handle
            .wait_connected(timeout)
            .await
            .map_err(|e| e.to_string())?;
        let mut count = 0usize;
        while args.count.is_none_or(|n| count < n) {
            let message = match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Err("the client stopped".into()),
                Err(_) => break,
            };
            let mut message = message;
            if count == 0 {
                // Said once: the wire format has no field for a name (a fragment carries an
                // id, flags and data; unknown flags are refused by receivers), so none can
                // arrive, and the id is what tells messages apart.
                tracing::info!(
                    out = %args.out.display(),
                    "messages carry no file name; each is written as msg-<message id>"
                );
            }
            let path = write_durably(
                &args.out,
                &received_file_name(message.message_id),
                &message.data,
            )?;
            message.confirm();
            count += 1;
            println!(
                "received={} bytes={} from_reply_surbs={}",
                path.display(),
                message.data.len(),
                message.reply_surbs
            );
        }
        // Let the confirmations reach the gateway, then close the session cleanly.
        tokio::time::sleep(Duration::from_millis(
            crate::limits::CLIENT_CONFIRM_LINGER_MS,
        ))
        .await;
        handle
            .shutdown(Duration::from_millis(crate::limits::CLIENT_SHUTDOWN_MS))
            .await;
        match args.count {
            Some(n) if count < n => Err(format!(
                "timed out after {}s: received {count} of {n} messages",
                args.timeout_s
            )),
            _ => Ok(()),
        }
    })
}
