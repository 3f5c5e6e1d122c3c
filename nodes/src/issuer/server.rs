//! `issuer run`: one issuer's HTTP service.
//!
//! API (all binary bodies are `application/octet-stream`, integers big endian):
//! - `POST /v1/blind-sign`: body `bandwidth u64 ‖ expiry u32 ‖ BlindSignRequest::to_bytes()`,
//!   as produced by `request_bandwidth` with the issuer's terms (see `/v1/terms`). The issuer
//!   never trusts the claim: it signs only if bandwidth equals its configured amount and expiry
//!   is today + validity (or one day less, for requests straddling midnight); the request proof
//!   binds both, so a mismatch could not yield a valid credential anyway.
//!   200: `index u64 ‖ BlindedSignature::to_bytes()` (104 bytes).
//!   400: malformed encoding or rejected proof; 413: body over the limit; 422: terms differ
//!   from the issuer's; 429: rate limited, with `Retry-After` (seconds). Error bodies are one
//!   line of text.
//! - `GET /v1/verification-key`: 200, `index u64 ‖ VerificationKey::to_bytes()` (this
//!   issuer's share; clients check shares against it and the aggregate against the master key).
//! - `GET /v1/terms`: 200, JSON `{"index", "bandwidth", "expiry", "validity_days"}`.
//! - `GET /health`: 200, JSON `{"status": "ok", "uptime_secs"}`. Not rate limited.
//! - `GET /metrics`: Prometheus text (credentials issued, requests refused by reason,
//!   rate-limited requests, requests by endpoint and status, build and process series). Not
//!   rate limited.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lethe_crypto::coconut::bandwidth::{bandwidth_parameters, issue_bandwidth};
use lethe_crypto::coconut::{BlindSignRequest, CoconutError, Parameters};
use lethe_proto::wire::issuance::BlindSignView;

use super::metrics::{Counters, Rejection, ENDPOINTS};
use super::ratelimit::{Rate, RateLimiter};
use crate::credential_files::{read_issuer_key, today, vk_share_bytes, IssuerKey};
use crate::issuance::Terms;
use crate::prometheus::RequestCounts;

/// Run one credential issuer.
#[derive(clap::Args, Debug, Clone)]
pub struct IssuerRunArgs {
    /// Issuer key file written by `keygen` (`issuer-<i>.key`).
    #[arg(long, env = "LETHE_ISSUER_KEY")]
    pub key: PathBuf,
    /// Address to listen on; port 0 picks a free one. The bound address is printed first on
    /// stdout as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8090", env = "LETHE_ISSUER_LISTEN")]
    pub listen: SocketAddr,
    /// Bandwidth (bytes) each credential buys; all issuers must agree.
    #[arg(long, default_value_t = 1 << 30)]
    pub bandwidth: u64,
    /// Days a credential is valid after issuance; all issuers must agree.
    #[arg(long, default_value_t = 7)]
    pub validity_days: u32,
    /// Requests per second allowed per source network: an IPv4 address counts as its /24,
    /// an IPv6 one as its /64 (a credential takes 3 requests per issuer).
    #[arg(long, default_value_t = 5.0)]
    pub rate_per_ip: f64,
    /// Burst allowed per source network (/24 or /64).
    #[arg(long, default_value_t = 20.0)]
    pub burst_per_ip: f64,
    /// Requests per second allowed over all clients. A quarter of the global burst is kept
    /// for networks that have sent little lately, so a flood from many networks leaves
    /// room for honest clients.
    #[arg(long, default_value_t = 200.0)]
    pub rate_global: f64,
    /// Burst allowed over all clients.
    #[arg(long, default_value_t = 400.0)]
    pub burst_global: f64,
    /// Largest request body accepted (bytes); a bandwidth request is under 1 KiB.
    #[arg(long, default_value_t = 4096)]
    pub max_body: usize,
}

struct Issuer {
    params: Parameters,
    key: IssuerKey,
    bandwidth: u64,
    validity_days: u32,
    limiter: RateLimiter,
    started: Instant,
    counters: Counters,
    requests: RequestCounts,
}

/// Runs `issuer run` until SIGINT or SIGTERM.
pub fn run(args: &IssuerRunArgs) -> anyhow::Result<()> {
    crate::prometheus::mark_start();
    let params = bandwidth_parameters()?;
    let key = read_issuer_key(&args.key, &params)?;
    let rate = |per_sec: f64, burst: f64| -> anyhow::Result<Rate> {
        anyhow::ensure!(
            per_sec > 0.0 && burst >= 1.0,
            "rates must be positive and bursts at least 1"
        );
        Ok(Rate { per_sec, burst })
    };
    let issuer = Arc::new(Issuer {
        params,
        key,
        bandwidth: args.bandwidth,
        validity_days: args.validity_days,
        limiter: RateLimiter::new(
            rate(args.rate_per_ip, args.burst_per_ip)?,
            rate(args.rate_global, args.burst_global)?,
        ),
        started: Instant::now(),
        counters: Counters::default(),
        requests: RequestCounts::new(ENDPOINTS),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(issuer, args.listen, args.max_body))
}

async fn serve(issuer: Arc<Issuer>, listen: SocketAddr, max_body: usize) -> anyhow::Result<()> {
    let api = Router::new()
        .route("/v1/blind-sign", post(blind_sign))
        .route("/v1/verification-key", get(verification_key))
        .route("/v1/terms", get(terms))
        .route_layer(middleware::from_fn_with_state(issuer.clone(), rate_limit));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            issuer.clone(),
            count_requests,
        ))
        .with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {bound}")?;
        out.flush()?;
    }
    tracing::info!(
        listen = %bound,
        index = issuer.key.index,
        bandwidth_bytes = issuer.bandwidth,
        validity_days = issuer.validity_days,
        "issuer serving"
    );
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stopping.send(());
    });
    // Drain in-flight requests, but not forever (below systemd's stop timeout).
    let deadline = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(
                crate::limits::ISSUER_SHUTDOWN_DEADLINE_MS,
            ))
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served.context("serving"),
        () = deadline => {
            tracing::warn!("shutdown deadline passed; dropping open connections");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn rate_limit(
    State(issuer): State<Arc<Issuer>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match issuer.limiter.check(peer.ip()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            issuer.counters.rate_limited();
            let secs = wait.as_secs().max(1);
            let mut response = text(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("rate limit exceeded, retry in {secs} s"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            response
        }
    }
}

/// Counts every answered request by route and status (a path outside the API is `other`).
async fn count_requests(State(issuer): State<Arc<Issuer>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    issuer.requests.record(&path, response.status().as_u16());
    response
}

async fn metrics_text(State(issuer): State<Arc<Issuer>>) -> Response {
    let mut out = String::with_capacity(4 * 1024);
    issuer.counters.render(&issuer.requests, &mut out);
    (
        [(header::CONTENT_TYPE, crate::prometheus::CONTENT_TYPE)],
        out,
    )
        .into_response()
}

fn text(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

async fn blind_sign(State(issuer): State<Arc<Issuer>>, body: Bytes) -> Response {
    let (rejection, response) = sign_request(&issuer, body).await;
    match rejection {
        Some(why) => issuer.counters.reject(why),
        None => issuer.counters.issued(),
    }
    response
}

/// The blind-sign answer, and why it was refused if it was.
async fn sign_request(issuer: &Arc<Issuer>, body: Bytes) -> (Option<Rejection>, Response) {
    let Ok(view) = BlindSignView::new_checked(&body) else {
        let response = text(StatusCode::BAD_REQUEST, "malformed request: body too short");
        return (Some(Rejection::Malformed), response);
    };
    let (bandwidth, expiry) = (view.bandwidth_bytes(), view.expiry_day());
    let Ok(request) = BlindSignRequest::from_bytes(view.request()) else {
        let response = text(
            StatusCode::BAD_REQUEST,
            "malformed blind-sign request encoding",
        );
        return (Some(Rejection::Malformed), response);
    };
    if bandwidth != issuer.bandwidth {
        let msg = format!("bandwidth must be {} bytes", issuer.bandwidth);
        let response = text(StatusCode::UNPROCESSABLE_ENTITY, &msg);
        return (Some(Rejection::Terms), response);
    }
    let due = today().saturating_add(issuer.validity_days);
    if expiry != due && expiry != due.saturating_sub(1) {
        let msg = format!(
            "expiry must be day {due} (today + {})",
            issuer.validity_days
        );
        let response = text(StatusCode::UNPROCESSABLE_ENTITY, &msg);
        return (Some(Rejection::Terms), response);
    }
    // Proof verification is a few milliseconds of curve arithmetic: keep it off the reactor.
    let signer = issuer.clone();
    let signed = tokio::task::spawn_blocking(move || {
        issue_bandwidth(
            &signer.params,
            &signer.key.master,
            &signer.key.secret,
            &request,
            bandwidth,
            expiry,
        )
    })
    .await;
    match signed {
        Ok(Ok(blinded)) => {
            let mut out = issuer.key.index.to_be_bytes().to_vec();
            out.extend_from_slice(&blinded.to_bytes());
            (None, octets(out))
        }
        Ok(Err(CoconutError::AttributeCount)) => (
            Some(Rejection::Proof),
            text(
                StatusCode::BAD_REQUEST,
                "wrong number of hidden attributes for a bandwidth credential",
            ),
        ),
        Ok(Err(e)) => (
            Some(Rejection::Proof),
            text(StatusCode::BAD_REQUEST, &format!("request refused: {e}")),
        ),
        Err(_) => (
            Some(Rejection::Internal),
            text(StatusCode::INTERNAL_SERVER_ERROR, "signing task failed"),
        ),
    }
}

async fn verification_key(State(issuer): State<Arc<Issuer>>) -> Response {
    octets(vk_share_bytes(issuer.key.index, &issuer.key.vk_share))
}

async fn terms(State(issuer): State<Arc<Issuer>>) -> Json<Terms> {
    Json(Terms {
        index: issuer.key.index,
        bandwidth: issuer.bandwidth,
        expiry: today().saturating_add(issuer.validity_days),
        validity_days: issuer.validity_days,
    })
}

async fn health(State(issuer): State<Arc<Issuer>>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "index": issuer.key.index,
        "uptime_secs": issuer.started.elapsed().as_secs(),
    }))
    .into_response()
}

fn octets(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}
