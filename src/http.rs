//! The monitoring endpoint (`[http]`, off unless configured), served beside the workers by
//! `mailintake run` and stopped on the same shutdown:
//!
//! - `/healthz`: the process is alive (always 200, never touches the database), with the state of
//!   every mailbox and identity as JSON;
//! - `/readyz`: 503 when the database does not answer a ping or no mailbox can work (every one
//!   retrying or waiting for an administrator), else 200; the same JSON plus the database;
//! - `/metrics`: Prometheus text format ([`Snapshot::prometheus`]);
//! - `/`: a read-only HTML status page rendered on the server: mailboxes, identities, the newest
//!   tickets and quarantined messages. Every value from mail or errors is HTML-escaped.
//!
//! With `bearer_token` set, every route but `/healthz` wants `Authorization: Bearer <token>`.
//! It reads [`Metrics`] and the store; it changes nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, HttpConfig};
use crate::oauth;
use crate::store::Store;
use crate::telemetry::{MailboxState, Metrics, ScrapeFacts, Snapshot};
use crate::time::now_ms;

/// How long `/readyz` waits for the database before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Tickets and quarantined messages listed on the status page.
const RECENT: i64 = 10;

/// What every handler reads.
struct AppState {
    config: Arc<Config>,
    store: Store,
    metrics: Arc<Metrics>,
    bearer_token: Option<SecretString>,
}

/// Binds the configured address, so a taken port fails the start instead of a background task.
pub async fn bind(http: &HttpConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", http.listen))
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let bearer_token = config.http.as_ref().and_then(|h| h.bearer_token.clone());
    let state = Arc::new(AppState {
        config,
        store,
        metrics,
        bearer_token,
    });
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    if let Ok(address) = listener.local_addr() {
        info!(%address, "monitoring endpoint listening (/healthz, /readyz, /metrics, /)");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// True when no bearer token is configured or the request carries it (compared in constant time).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.bearer_token else {
        return true;
    };
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
    let mut body = detail(&state.config, &snapshot);
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
    let mut body = detail(&state.config, &snapshot);
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

/// Starting (not failed yet) or ok.
fn can_work(mailbox: &crate::telemetry::MailboxStats) -> bool {
    matches!(mailbox.state(), MailboxState::Starting | MailboxState::Ok)
}

async fn ping(store: &Store) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::config::redact_url(&e.to_string())),
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
        credential_expiry: credential_expiries(&state.config),
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

async fn status_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let snapshot = state.metrics.snapshot();
    let database = ping(&state.store).await;
    let (tickets, quarantined, backlog) = if database.is_ok() {
        (
            state.store.recent_tickets(RECENT).await.ok(),
            state.store.quarantine_list(RECENT).await.ok(),
            state.store.backlog().await.ok(),
        )
    } else {
        (None, None, None)
    };
    let html = render_page(
        &state.config,
        &snapshot,
        &database,
        tickets.as_deref(),
        quarantined.as_deref(),
        backlog.as_ref(),
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

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number of seconds as `90s`, `5m`, `3h`, `4d`.
fn span(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The Junk column of a mailbox: its count at the last check, already HTML.
fn junk_cell(junk: Option<&crate::report::JunkStatus>, now: i64) -> String {
    use crate::report::JunkListing;
    match junk {
        None => "<span class=\"muted\">not checked yet</span>".into(),
        Some(status) => {
            let checked = format!(
                "<div class=\"muted\">checked {}</div>",
                escape(&when(status.checked_at_ms, now))
            );
            match &status.result {
                Ok(JunkListing::Listed { folder, total, .. }) => {
                    format!("{total} in {}{checked}", escape(folder))
                }
                Ok(JunkListing::Missing { folder }) => {
                    format!("no folder {} (junk_folder){checked}", escape(folder))
                }
                Err(e) => format!(
                    "could not look: {}{checked}",
                    escape(e.lines().next().unwrap_or(""))
                ),
            }
        }
    }
}

/// The newest messages of every Junk folder that has any.
fn junk_section(page: &mut String, snapshot: &Snapshot, now: i64) {
    use crate::report::JunkListing;
    page.push_str(
        "<h2>Junk folders</h2><p class=\"muted\">Real customer mail sometimes lands here: \
         <code>mailintake junk list</code> and <code>mailintake junk release UID</code>.</p>\
         <table><thead><tr><th>Mailbox</th><th>UID</th><th>From</th><th>Subject</th><th>Bytes</th>\
         <th>Received</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (name, m) in &snapshot.mailboxes {
        let Some(Ok(JunkListing::Listed { newest, .. })) = m.junk.as_ref().map(|j| &j.result)
        else {
            continue;
        };
        for item in newest {
            any = true;
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(name),
                item.uid,
                escape(item.from.as_deref().unwrap_or("-")),
                escape(item.subject.as_deref().unwrap_or("-")),
                item.size_bytes,
                escape(
                    &item
                        .received_ms
                        .map(|t| when(t, now))
                        .unwrap_or_else(|| "-".into())
                ),
            );
        }
    }
    if !any {
        page.push_str("<tr><td colspan=\"6\" class=\"muted\">no junk mail seen</td></tr>");
    }
    page.push_str("</tbody></table>");
}

/// A unix-ms time as `2026-05-01T10:00:00Z (3m ago)` / `(in 20d)`.
fn when(at_ms: i64, now_ms: i64) -> String {
    let at = if at_ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(at_ms as u64)
    } else {
        UNIX_EPOCH
    };
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    let delta = (now_ms - at_ms) / 1000;
    if delta >= 0 {
        format!("{stamp} ({} ago)", span(delta))
    } else {
        format!("{stamp} (in {})", span(-delta))
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2430}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{border-bottom:1px solid #d8dde6;padding:.35rem .5rem;text-align:left;vertical-align:top}\
th{background:#f2f4f8}.state{font-weight:600;padding:.1rem .4rem;border-radius:.3rem}\
.ok{background:#d9f2df;color:#17602b}.starting{background:#e6ecf5;color:#34495e}\
.retrying{background:#fff0c9;color:#7a5300}.needs_admin,.down{background:#fbd9d9;color:#8a1c1c}\
.hint{color:#5a6475;font-size:.85rem}.muted{color:#7b8494}.wide{overflow-x:auto}";

fn render_page(
    config: &Config,
    snapshot: &Snapshot,
    database: &Result<(), String>,
    tickets: Option<&[crate::store::TicketSummary]>,
    quarantined: Option<&[crate::store::admin::QuarantineEntry]>,
    backlog: Option<&crate::store::admin::Backlog>,
) -> String {
    let now = now_ms();
    let expiries = credential_expiries(config);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>mailintake status</title><style>{STYLE}</style></head><body>\
         <h1>mailintake status</h1><p class=\"muted\">version {} · started {} · rendered {} · database: {}</p>",
        env!("CARGO_PKG_VERSION"),
        escape(&when(snapshot.started_at_ms, now)),
        escape(&when(now, now)),
        match database {
            Ok(()) => "<span class=\"state ok\">ok</span>".to_string(),
            Err(e) => format!(
                "<span class=\"state down\">unreachable</span> {}",
                escape(e)
            ),
        }
    );

    page.push_str(
        "<h2>Mailboxes</h2><div class=\"wide\"><table><thead><tr><th>Mailbox</th><th>State</th><th>Last successful sweep</th>\
         <th>Since start</th><th>Oldest unprocessed</th><th>Quarantined (open)</th><th>Outbox backlog</th><th>Junk folder</th><th>Token expires</th>\
         <th>Credential expires</th><th>Last error</th></tr></thead><tbody>",
    );
    let count = |pick: fn(&crate::store::admin::Backlog) -> &BTreeMap<String, i64>,
                 mailbox: &str|
     -> String {
        match backlog {
            None => "?".into(),
            Some(b) => pick(b).get(mailbox).copied().unwrap_or(0).to_string(),
        }
    };
    for (name, m) in &snapshot.mailboxes {
        let state = m.state().as_str();
        let identity = snapshot.identities.get(&m.identity);
        let token = identity
            .and_then(|i| i.token_expires_at_ms)
            .map(|t| when(t, now))
            .unwrap_or_else(|| "-".into());
        let credential = expiries
            .get(&m.identity)
            .map(|(kind, at)| format!("{} {}", kind.replace('_', " "), when(*at, now)))
            .unwrap_or_else(|| "unknown".into());
        let oldest = match m.oldest_unprocessed_ms() {
            Some(t) => format!("{} old", span((now - t).max(0) / 1000)),
            None => "none (caught up)".into(),
        };
        let junk = junk_cell(m.junk.as_ref(), now);
        let mut error = String::new();
        if let Some(e) = m.last_error() {
            let _ = write!(error, "{}", escape(&e.summary));
            if let Some(hint) = &e.hint {
                let _ = write!(error, "<div class=\"hint\">fix: {}</div>", escape(hint));
            }
        }
        if let Some(e) = &m.outbox_error {
            let _ = write!(error, "<div>outbox: {}</div>", escape(&e.summary));
        }
        let _ = write!(
            page,
            "<tr><td>{}<div class=\"muted\">{}</div></td><td><span class=\"state {state}\">{}</span></td>\
             <td>{}</td><td>{} ticket(s), {} follow-up(s), {} quarantined, {} ignored</td>\
             <td class=\"oldest\">{}</td><td>{}</td><td>{}</td><td class=\"junk\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(
                &config
                    .mailboxes
                    .iter()
                    .find(|c| &c.name == name)
                    .map(|c| c.address.clone())
                    .unwrap_or_default()
            ),
            state.replace('_', " "),
            escape(
                &m.last_success_ms()
                    .map(|t| when(t, now))
                    .unwrap_or_else(|| "never".into())
            ),
            m.tickets,
            m.follow_ups,
            m.quarantined,
            m.ignored,
            escape(&oldest),
            escape(&count(|b| &b.quarantine_open, name)),
            escape(&count(|b| &b.outbox_pending, name)),
            junk,
            escape(&token),
            escape(&credential),
            error,
        );
    }
    page.push_str("</tbody></table></div>");

    junk_section(&mut page, snapshot, now);

    page.push_str(
        "<h2>Identities</h2><table><thead><tr><th>Identity</th><th>State</th><th>New tokens</th>\
         <th>Failures (retry / needs admin)</th><th>Problem</th></tr></thead><tbody>",
    );
    for (name, i) in &snapshot.identities {
        let warning = config.identities.get(name).and_then(oauth::expiry_warning);
        let mut problem = String::new();
        if let Some(e) = &i.last_error {
            let _ = write!(problem, "{}", escape(&e.summary));
            if let Some(hint) = &e.hint {
                let _ = write!(problem, "<div class=\"hint\">fix: {}</div>", escape(hint));
            }
        }
        if let Some(w) = warning {
            let _ = write!(problem, "<div class=\"hint\">{}</div>", escape(&w));
        }
        let _ = write!(
            page,
            "<tr><td>{}</td><td><span class=\"state {}\">{}</span></td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            escape(name),
            i.state.as_str(),
            i.state.as_str().replace('_', " "),
            i.tokens_obtained,
            i.failures_retry,
            i.failures_needs_admin,
            problem
        );
    }
    page.push_str("</tbody></table>");

    page.push_str(
        "<h2>Recent tickets</h2><table><thead><tr><th>Ticket</th><th>Mailbox</th><th>Requester</th>\
         <th>Subject</th><th>Messages</th><th>Created</th></tr></thead><tbody>",
    );
    match tickets {
        None => page.push_str("<tr><td colspan=\"6\">the database did not answer</td></tr>"),
        Some([]) => page.push_str("<tr><td colspan=\"6\" class=\"muted\">no tickets yet</td></tr>"),
        Some(tickets) => {
            for t in tickets {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&t.reference),
                    escape(&t.mailbox),
                    escape(t.requester.as_deref().unwrap_or("-")),
                    escape(&t.subject),
                    t.n_messages,
                    escape(&when(t.created_at_ms, now)),
                );
            }
        }
    }
    page.push_str("</tbody></table>");

    page.push_str(
        "<h2>Recently quarantined</h2><table><thead><tr><th>Id</th><th>Mailbox</th><th>Reason</th>\
         <th>From</th><th>Subject</th><th>Bytes</th><th>When</th></tr></thead><tbody>",
    );
    match quarantined {
        None => page.push_str("<tr><td colspan=\"7\">the database did not answer</td></tr>"),
        Some([]) => {
            page.push_str("<tr><td colspan=\"7\" class=\"muted\">nothing is quarantined</td></tr>")
        }
        Some(rows) => {
            for q in rows {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    q.id,
                    escape(&q.mailbox),
                    escape(&q.reason),
                    if q.released_at_ms.is_some() {
                        " (released)"
                    } else {
                        ""
                    },
                    escape(q.from_address.as_deref().unwrap_or("-")),
                    escape(q.subject.as_deref().unwrap_or("-")),
                    q.size_bytes,
                    escape(&when(q.created_at_ms, now)),
                );
            }
        }
    }
    page.push_str(
        "</tbody></table><p class=\"muted\">Act on them with <code>mailintake quarantine</code> and \
         <code>mailintake outbox</code>. Machine-readable: <a href=\"/metrics\">/metrics</a>, \
         <a href=\"/readyz\">/readyz</a>.</p></body></html>\n",
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn times_read_as_ago_and_in() {
        assert!(when(0, 90_000).ends_with("(90s ago)"));
        assert!(when(3 * 86_400_000, 0).ends_with("(in 3d)"));
    }
}
