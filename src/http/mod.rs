//! The monitoring endpoint (`[http]`, off unless configured), served beside the workers by
//! `mailintake run` and stopped on the same shutdown:
//!
//! - `/healthz`: the process is alive (always 200, never touches the database), with the state of
//!   every mailbox and identity as JSON;
//! - `/readyz`: 503 when the database does not answer a ping or no mailbox can work (every one
//!   retrying or waiting for an administrator), else 200; the same JSON plus the database;
//! - `/metrics`: Prometheus text format ([`Snapshot::prometheus`]);
//! - `/`: a read-only HTML status page rendered on the server: mailboxes (50 a page, `?page=N`,
//!   filtered by `?q=` on name or address and `?state=`), identities, the newest tickets and
//!   quarantined messages. Every value from mail or errors is HTML-escaped.
//!
//! Neither the page nor `/readyz` opens an IMAP session, and the statements either sends do not
//! grow with the mailboxes: the counts are grouped queries, the acknowledgement notices one
//! query for the mailboxes shown ([`Store::latest_ack_reasons_of`]). Every request runs in a
//! span `http_request` (method, path, then status and latency), in which sqlx's statement log
//! lines fall too.
//!
//! - `/v1/messages` (POST) and `/v1/messages/{id}` (GET): the HTTP API for outgoing mail
//!   ([`api`], `docs/openapi.yaml`), behind its own token, `api_token`.
//!
//! With `bearer_token` set, every monitoring route but `/healthz` wants `Authorization: Bearer
//! <token>`. The monitoring routes read [`Metrics`] and the store and change nothing; the API
//! changes state only through [`crate::reply::outgoing::submit`], the library function `mailintake
//! send` calls. This file holds the routes, the bearer check and the monitoring JSON; the status
//! page's HTML is rendered by [`page`].

mod api;
mod page;

pub use page::escape;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::info;

use crate::config::{Config, HttpConfig, LiveConfig};
use crate::intake::SenderWakes;
use crate::oauth;
use crate::store::Store;
use crate::telemetry::{MailboxState, Metrics, ScrapeFacts, Snapshot};
use crate::time::now_ms;
use page::{MailboxFilter, render_page};

/// How long `/readyz` waits for the database before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Tickets and quarantined messages listed on the status page.
const RECENT: i64 = 10;

/// What every handler reads.
struct AppState {
    /// Read per request: a mailbox the registry adds at run time is shown and takes API mail.
    config: LiveConfig,
    store: Store,
    metrics: Arc<Metrics>,
    bearer_token: Option<SecretString>,
    /// The API's token (`http.api_token`); the API answers 403 without one.
    api_token: Option<SecretString>,
    /// Each sending mailbox's sender, woken after a message was submitted through the API.
    wakes: SenderWakes,
}

/// Binds the configured address, so a taken port fails the start instead of a background task.
pub async fn bind(http: &HttpConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", http.listen))
}

/// Serves until `shutdown` is cancelled. `wakes` are the senders of the same process
/// ([`crate::intake::sender_wakes`]).
pub async fn serve(
    listener: TcpListener,
    http: &HttpConfig,
    config: LiveConfig,
    store: Store,
    metrics: Arc<Metrics>,
    wakes: SenderWakes,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let bearer_token = http.bearer_token.clone();
    let api_token = http.api_token.clone();
    let state = Arc::new(AppState {
        config,
        store,
        metrics,
        bearer_token,
        api_token,
        wakes,
    });
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/messages", post(api::post_message))
        .route("/v1/messages/{id}", get(api::get_message))
        .with_state(state)
        .layer(middleware::from_fn(traced));
    if let Ok(address) = listener.local_addr() {
        info!(%address, "monitoring endpoint listening (/healthz, /readyz, /metrics, /, /v1/messages)");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Runs a request in its own span, `http_request` with its number, method and path, and logs
/// its status and latency when it is answered (DEBUG: a scraper asks every few seconds). Events
/// inside it, sqlx's statement lines among them, carry these fields.
async fn traced(request: Request, next: Next) -> Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REQUESTS: AtomicU64 = AtomicU64::new(1);
    let span = tracing::info_span!(
        "http_request",
        request = REQUESTS.fetch_add(1, Ordering::Relaxed),
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.record("status", response.status().as_u16());
    span.record("latency_ms", latency_ms);
    span.in_scope(|| tracing::debug!("request answered"));
    response
}

/// True when no bearer token is configured or the request carries it (compared in constant time).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    match &state.bearer_token {
        None => true,
        Some(expected) => bearer_matches(expected, headers),
    }
}

/// Whether the request's `Authorization: Bearer …` is `expected`, compared in constant time.
fn bearer_matches(expected: &SecretString, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .as_bytes();
    let expected = expected.expose_secret().as_bytes();
    given.len() == expected.len() && openssl::memcmp::eq(given, expected)
}

fn unauthorized() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: Authorization: Bearer <http.bearer_token>\n",
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.metrics.snapshot();
    let mut body = detail(&state.config.current(), &snapshot);
    body["status"] = json!("alive");
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let database = ping(&state.store).await;
    let snapshot = state.metrics.snapshot();
    let working = snapshot.mailboxes.values().any(can_work);
    let ready = database.is_ok() && working;
    let mut body = detail(&state.config.current(), &snapshot);
    if database.is_ok() {
        let notices = ack_notices(&state, snapshot.mailboxes.keys().map(String::as_str)).await;
        if let Some(mailboxes) = body["mailboxes"].as_array_mut() {
            for mailbox in mailboxes {
                let notice = mailbox["name"].as_str().and_then(|n| notices.get(n));
                mailbox["acknowledgements"] = json!(notice);
            }
        }
    }
    body["status"] = json!(if ready { "ready" } else { "unready" });
    body["database"] = json!({ "ok": database.is_ok(), "error": database.err() });
    if !working {
        body["reason"] =
            json!("no mailbox can work: every one is retrying or needs an administrator");
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Per mailbox of `names`, the notice that the receiving server's stamp suppresses its
/// acknowledgements ([`crate::reply::authentication_notice`]), read from the latest outbox rows
/// of all of them in one query.
async fn ack_notices<'a>(
    state: &AppState,
    names: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let config = state.config.current();
    let configured: BTreeMap<&str, &crate::config::Mailbox> = config
        .mailboxes
        .iter()
        .map(|m| (m.name.as_str(), m))
        .collect();
    let acknowledging: Vec<&crate::config::Mailbox> = names
        .filter_map(|name| configured.get(name).copied())
        .filter(|m| crate::reply::sends_acknowledgements(m))
        .collect();
    let asked: Vec<&str> = acknowledging.iter().map(|m| m.name.as_str()).collect();
    let reasons = state
        .store
        .latest_ack_reasons_of(&asked, crate::reply::NOTICE_ROWS)
        .await
        .unwrap_or_default();
    acknowledging
        .into_iter()
        .filter_map(|mailbox| {
            let reasons = reasons.get(&mailbox.name).map_or(&[][..], Vec::as_slice);
            crate::reply::authentication_notice(mailbox, reasons)
                .map(|notice| (mailbox.name.clone(), notice))
        })
        .collect()
}

/// Starting (not failed yet) or ok.
fn can_work(mailbox: &crate::telemetry::MailboxStats) -> bool {
    matches!(mailbox.state(), MailboxState::Starting | MailboxState::Ok)
}

async fn ping(store: &Store) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::config::redact_credentials(&e.to_string())),
        Err(_) => Err(format!("no answer within {}s", PING_TIMEOUT.as_secs())),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let database_up = ping(&state.store).await.is_ok();
    let outbox_pending = if database_up {
        state.store.backlog().await.ok().map(|b| {
            b.outbox_pending
                .into_iter()
                .map(|(mailbox, n)| (mailbox, n.max(0) as u64))
                .collect()
        })
    } else {
        None
    };
    let facts = ScrapeFacts {
        database_up,
        outbox_pending,
        credential_expiry: credential_expiries(&state.config.current()),
    };
    let text = state.metrics.snapshot().prometheus(&facts);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Per identity whose credential expiry is known: its kind and expiry (unix ms).
fn credential_expiries(config: &Config) -> BTreeMap<String, (&'static str, i64)> {
    config
        .identities
        .values()
        .filter_map(|identity| {
            let (what, at) = oauth::credential_expiry(identity)?;
            let kind = if what == "certificate" {
                "certificate"
            } else {
                "client_secret"
            };
            Some((identity.name.clone(), (kind, unix_ms(at))))
        })
        .collect()
}

fn unix_ms(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The per-mailbox and per-identity JSON of `/healthz` and `/readyz`.
fn detail(config: &Config, snapshot: &Snapshot) -> Value {
    let now = now_ms();
    let expiries = credential_expiries(config);
    let identity_json = |name: &str| -> Value {
        let Some(stats) = snapshot.identities.get(name) else {
            return json!({ "name": name });
        };
        let warning = config.identities.get(name).and_then(oauth::expiry_warning);
        json!({
            "name": name,
            "state": stats.state.as_str(),
            "error": stats.last_error.as_ref().map(|e| &e.summary),
            "hint": stats.last_error.as_ref().and_then(|e| e.hint.as_ref()).or(warning.as_ref()),
            "token_expires_at_ms": stats.token_expires_at_ms,
            "credential": expiries.get(name).map(|(kind, at)| json!({ "kind": kind, "expires_at_ms": at })),
        })
    };
    let mailboxes: Vec<Value> = snapshot
        .mailboxes
        .iter()
        .map(|(name, m)| {
            let last = m.last_success_ms();
            let error = m.last_error();
            let oldest = m.oldest_unprocessed_ms();
            json!({
                "name": name,
                "state": m.state().as_str(),
                "last_success_ms": last,
                "last_success_age_seconds": last.map(|t| (now - t).max(0) / 1000),
                "oldest_unprocessed_age_seconds": oldest.map_or(0, |t| (now - t).max(0) / 1000),
                "junk": m.junk.as_ref().map(junk_json),
                "refused_dispositions": m.refused_dispositions().map(|(folder, r)| json!({
                    "folder": folder,
                    "disposition": r.disposition,
                    "n_messages": r.n_messages,
                    "since_ms": r.since_ms,
                    "reply": r.reply,
                    "detail": r.describe(),
                })).collect::<Vec<_>>(),
                "error": error.map(|e| &e.summary),
                "hint": error.and_then(|e| e.hint.as_ref()),
                "identity": identity_json(&m.identity),
            })
        })
        .collect();
    json!({ "mailboxes": mailboxes })
}

/// The Junk folder's state and count for `/healthz` and `/readyz`: no senders or subjects, since
/// `/healthz` answers without a token.
fn junk_json(junk: &crate::report::JunkStatus) -> Value {
    use crate::report::JunkListing;
    match &junk.result {
        Ok(JunkListing::Listed { folder, total, .. }) => {
            json!({ "checked_at_ms": junk.checked_at_ms, "folder": folder, "exists": true, "total": total })
        }
        Ok(JunkListing::Missing { folder }) => {
            json!({ "checked_at_ms": junk.checked_at_ms, "folder": folder, "exists": false })
        }
        Err(e) => json!({ "checked_at_ms": junk.checked_at_ms, "error": e }),
    }
}

/// The status page's query: `?page=N` (from 1), `?q=` (part of a mailbox's name or address,
/// any case), `?state=` (one of [`MailboxState::ALL`]); checked by [`MailboxFilter::parse`].
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    page: Option<String>,
    q: Option<String>,
    state: Option<String>,
}

async fn status_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let filter = match MailboxFilter::parse(
        query.page.as_deref(),
        query.q.as_deref(),
        query.state.as_deref(),
    ) {
        Ok(filter) => filter,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    let snapshot = state.metrics.snapshot();
    let config = state.config.current();
    let shown = filter.select(&config, &snapshot);
    let database = ping(&state.store).await;
    let (tickets, quarantined, backlog, notices) = if database.is_ok() {
        (
            state.store.recent_tickets(RECENT).await.ok(),
            state.store.quarantine_list(RECENT).await.ok(),
            state.store.backlog().await.ok(),
            ack_notices(&state, shown.names.iter().map(String::as_str)).await,
        )
    } else {
        (None, None, None, BTreeMap::new())
    };
    let html = render_page(
        &config,
        &snapshot,
        &shown,
        &database,
        tickets.as_deref(),
        quarantined.as_deref(),
        backlog.as_ref(),
        &notices,
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}
