//! `lethe client socks5` and `lethe provider run`: the relays on top of a mixnet client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lethe_proto::service::KeyEpochs;
use tokio::sync::{mpsc, watch};

use super::relay::{Incoming, MixnetPort, Outgoing, ReplyOutcome};
use super::socks5::AllowList;
use crate::client::address::Recipient;
use crate::client::cli::{runtime, TrafficArgs};
use crate::client::config;
use crate::client::runtime::{connect, ClientHandle, ReceivedMessage};
use crate::client::trace::ClientTraceArgs;
use crate::limits;
use crate::topology::Topology;
use lethe_proto::loopix::SendError;

#[derive(clap::Args, Debug)]
pub struct Socks5Args {
    /// Client directory (see `lethe client init`).
    #[arg(long, env = "LETHE_DIR")]
    pub dir: PathBuf,
    /// The service provider's address (`lethe provider run` prints it).
    #[arg(long)]
    pub provider: String,
    /// Where applications connect (SOCKS5, no authentication).
    #[arg(long, default_value = "127.0.0.1:1080")]
    pub listen: SocketAddr,
    /// Send this client's address to the provider and get replies to it instead of through
    /// reply SURBs: the provider then learns who fetches what.
    #[arg(long)]
    pub reveal_address: bool,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    #[command(flatten)]
    pub trace: ClientTraceArgs,
}

#[derive(clap::Args, Debug)]
pub struct ProviderArgs {
    /// Client directory of the provider (see `lethe client init`).
    #[arg(long, env = "LETHE_DIR")]
    pub dir: PathBuf,
    /// Targets the provider may connect to: `host:port`, `host:*`, `*.domain:port`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub allow: Vec<String>,
    /// After each message, write a debug dump of everything the provider holds about its
    /// users to this file (for audits and tests).
    #[arg(long)]
    pub state_dump: Option<PathBuf>,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    #[command(flatten)]
    pub trace: ClientTraceArgs,
}

/// Bridges a relay's [`MixnetPort`] to a connected client: outgoing messages are sent with
/// the client's Loopix stream, replies through its received SURBs; received messages are
/// confirmed and handed over.
pub fn bridge(
    handle: Arc<ClientHandle>,
    mut received: mpsc::Receiver<ReceivedMessage>,
) -> MixnetPort {
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(limits::SOCKS_PORT_QUEUE_MESSAGES);
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(limits::SOCKS_PORT_QUEUE_MESSAGES);
    let own_address = handle.address().to_string();
    let key_epochs = follow_key_epochs(handle.topology());
    let sender = handle.clone();
    tokio::spawn(async move {
        while let Some(command) = out_rx.recv().await {
            let stopped = match command {
                Outgoing::Send {
                    to,
                    bytes,
                    reply_surbs,
                } => {
                    let Ok(recipient) = to.parse::<Recipient>() else {
                        // Not logged with the address: it may be a user's.
                        tracing::warn!("relay: bad recipient address; dropped");
                        continue;
                    };
                    sender.send(&recipient, bytes, reply_surbs).await.err()
                }
                Outgoing::Reply {
                    bundle,
                    bytes,
                    sent,
                } => match sender.reply(bundle, bytes).await {
                    Ok(_) => {
                        let _ = sent.send(ReplyOutcome::Queued);
                        None
                    }
                    Err(SendError::UnknownBundle(_) | SendError::NotEnoughSurbs { .. }) => {
                        let _ = sent.send(ReplyOutcome::NoSurbs);
                        None
                    }
                    Err(e) => {
                        let _ = sent.send(ReplyOutcome::Failed);
                        Some(e)
                    }
                },
                Outgoing::Discard { bundle } => sender.discard_surbs(bundle).await.err(),
            };
            match stopped {
                Some(SendError::Stopped) => {
                    tracing::error!("relay: the mixnet client stopped; relay stopped");
                    break;
                }
                Some(e) => tracing::warn!(error = %e, "relay: not sent"),
                None => {}
            }
        }
    });
    tokio::spawn(async move {
        while let Some(mut message) = received.recv().await {
            // The relays keep no state across restarts: handing over is handling.
            message.confirm();
            let incoming = Incoming {
                data: std::mem::take(&mut message.data),
                surb_bundle: message.surb_bundle,
                reply_surbs: message.reply_surbs,
            };
            if in_tx.send(incoming).await.is_err() {
                break;
            }
        }
    });
    MixnetPort {
        outgoing: out_tx,
        incoming: in_rx,
        own_address,
        key_epochs,
    }
}

/// The key epochs of `topology` as it changes (until the client stops).
fn follow_key_epochs(mut topology: watch::Receiver<Arc<Topology>>) -> watch::Receiver<KeyEpochs> {
    let (tx, rx) = watch::channel(KeyEpochs::of(&topology.borrow_and_update()));
    tokio::spawn(async move {
        while topology.changed().await.is_ok() {
            let epochs = KeyEpochs::of(&topology.borrow_and_update());
            tx.send_if_modified(|current| std::mem::replace(current, epochs) != epochs);
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

pub async fn start_client(
    dir: &std::path::Path,
    traffic: &TrafficArgs,
    trace: &ClientTraceArgs,
) -> Result<(Arc<ClientHandle>, mpsc::Receiver<ReceivedMessage>), String> {
    let mut files = config::load(dir)?;
    files.loopix = traffic.apply(files.loopix);
    let (handle, received) = connect(trace.config(&files))
        .await
        .map_err(|e| e.to_string())?;
    handle
        .wait_connected(Duration::from_millis(
            limits::SOCKS_CLIENT_CONNECT_TIMEOUT_MS,
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(handle), received))
}

pub fn socks5(args: &Socks5Args) -> Result<(), String> {
    // Held until `socks5` returns: one process per client directory (see `lock`).
    let _dir_lock = crate::lock::NodeLocks::claim(&args.dir, "client")?;
    args.provider
        .parse::<Recipient>()
        .map_err(|e| format!("--provider: {e}"))?;
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("{}: {e}", args.listen))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let (handle, received) = start_client(&args.dir, &args.traffic, &args.trace).await?;
        println!("socks5={local}");
        println!("address={}", handle.address());
        tracing::info!(listen = %local, provider = %args.provider, "SOCKS5 proxy up");
        let port = bridge(handle.clone(), received);
        let stats = Arc::new(super::proxy::ProxyStats::default());
        let options = super::proxy::ProxyOptions {
            provider: args.provider.clone(),
            reveal_address: args.reveal_address,
        };
        tokio::select! {
            () = super::proxy::run(listener, port, options, stats.clone()) => {}
            _ = tokio::signal::ctrl_c() => {}
            () = terminated() => {}
        }
        // What the proxy cost, for benchmarks (bench/socks_figures.sh): the client core's
        // counters (SURBs attached, packets sent) and the proxy's.
        let summary = serde_json::json!({ "client": handle.stats(), "proxy": stats.snapshot() });
        println!("stats={summary}");
        handle
            .shutdown(Duration::from_millis(limits::CLIENT_SHUTDOWN_MS))
            .await;
        Ok(())
    })
}

pub fn provider(args: &ProviderArgs) -> Result<(), String> {
    // Held until `provider` returns: one process per client directory (see `lock`).
    let _dir_lock = crate::lock::NodeLocks::claim(&args.dir, "client")?;
    let allow = AllowList::parse(&args.allow)?;
    runtime()?.block_on(async {
        let (handle, received) = start_client(&args.dir, &args.traffic, &args.trace).await?;
        println!("address={}", handle.address());
        tracing::info!(
            address = %handle.address(),
            allow = %args.allow.join(","),
            "service provider up"
        );
        let port = bridge(handle.clone(), received);
        let stats = Arc::new(super::provider::ProviderStats::default());
        tokio::select! {
            () = super::provider::run(port, allow, stats, args.state_dump.clone()) => {}
            _ = tokio::signal::ctrl_c() => {}
            () = terminated() => {}
        }
        handle
            .shutdown(Duration::from_millis(limits::CLIENT_SHUTDOWN_MS))
            .await;
        Ok(())
    })
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
