//! The sender: one task per mailbox with SMTP that takes the helpdesk's `outgoing` rows into the
//! outbox, then due outbox rows (agent replies first), respects Exchange's
//! sending limits, sends, and records what the server said. A refused recipient fails its row;
//! a refused From address holds that address's rows (retried every 10 minutes), never the
//! rows of other addresses; anything else is retried with backoff.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::outgoing::{self, OutgoingRequest, SubmitError};
use super::smtp::{self, SmtpError};
use crate::config::{Identity, Mailbox, Outlet, SendVia, SentCopy, SmtpServer};
use crate::failpoint::{self, Point};
use crate::fleet::Tenure;
use crate::graph::GraphMailbox;
use crate::mail_source::CopyKept;
use crate::oauth::TokenCache;
use crate::report::FlushReport;
use crate::store::{Budget, Claim, OutboxRow, SentCopyState, Store, StoreError, SubmittedVia};
use crate::telemetry::Metrics;
use crate::time::now_ms;

/// After this many attempts a transiently failing row is given up (recorded as failed).
const MAX_ATTEMPTS: i64 = 12;
/// The rows of a From address the server refuses are tried again after this long.
const BLOCKED_RETRY_MS: i64 = 10 * 60 * 1000;

/// Everything the sender of one mailbox needs, borrowed.
pub struct SenderContext<'a> {
    pub mailbox: &'a Mailbox,
    /// How the mailbox sends (`mailbox.outlet`).
    pub outlet: &'a Outlet,
    pub identity: &'a Identity,
    pub store: &'a Store,
    pub tokens: &'a TokenCache,
    /// Where sends are counted by result (read by `http`).
    pub metrics: &'a Metrics,
    /// Keeps copies in the Sent folder where the mailbox's `sent_copy = "append"`; `None`
    /// otherwise.
    pub sent_copies: Option<&'a dyn SentCopies>,
    /// The mailbox's outbox lease in a fleet (`run`): one sender per mailbox over every worker.
    /// No row is claimed once it is not certain; `None` outside `run`.
    pub tenure: Option<&'a Tenure>,
    /// What the process's Graph requests share (the app's concurrency bound), for `send =
    /// "graph"`.
    pub graph: &'a crate::graph::Shared,
}

/// What a flush has open: an SMTP session, or a Graph mailbox's requests.
#[derive(Default)]
struct Connections {
    smtp: Option<smtp::Session>,
    graph: Option<GraphMailbox>,
}

/// A message to keep in the mailbox's Sent folder: our Message-ID (without angle brackets) and
/// the bytes as sent, with a `Bcc` field naming the hidden recipients, as a mail client's copy
/// has.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub message_id: String,
    pub raw: Vec<u8>,
}

/// What a [`SentCopies::keep`] call did: the folder, and each message's outcome in order (the
/// text of a refusal that concerns that message alone).
pub type KeptCopies = (String, Vec<Result<CopyKept, String>>);

/// Keeps copies of sent mail in the mailbox's Sent folder over its mail source (`sent_copy =
/// "append"`). `intake` builds it, since `reply` knows no mail-source protocol.
pub trait SentCopies: Send + Sync {
    /// Opens one session, finds the folder (`sent_folder`, else the server's `\Sent`), and keeps
    /// each message there once. An error (no session, no such folder, the session lost) concerns
    /// them all: they wait.
    fn keep<'a>(
        &'a self,
        messages: &'a [SentMessage],
    ) -> Pin<Box<dyn Future<Output = Result<KeptCopies, String>> + Send + 'a>>;
}

/// A copy that could not be kept is tried again after this long.
const SENT_COPY_RETRY_MS: i64 = 5 * 60 * 1000;
/// A Graph send's copy not yet in Sent Items right after the send is read back this much later
/// (and again as long, until [`GRAPH_COPY_PATIENCE_MS`] after the send).
const GRAPH_COPY_RETRY_MS: i64 = 15_000;
/// How long after a Graph send its copy is looked for in Sent Items.
const GRAPH_COPY_PATIENCE_MS: i64 = 30 * 60 * 1000;

/// What the server took a row with.
enum Accepted {
    /// The SMTP server's reply.
    Smtp(String),
    /// Graph's acceptance, and whether the copy in Sent Items was read back already.
    Graph(super::graph::GraphSent),
}
/// Copies kept per flush (the rest come with the next one).
const SENT_COPIES_PER_FLUSH: i64 = 50;

/// Retry delay after `attempts` transient failures: `first` doubling, at most an hour.
fn retry_delay_ms(first_ms: i64, attempts: i64) -> i64 {
    let exponent = attempts.clamp(1, 8) as u32 - 1;
    (first_ms << exponent).min(3_600_000)
}

/// The `outgoing` rows taken per flush (the rest wait for the next one, seconds later).
const OUTGOING_PER_FLUSH: i64 = 100;
/// The sender looks for new `outgoing` rows at least this often.
const OUTGOING_POLL_MS: i64 = 3_000;

/// Takes the mailbox's `new` rows of the `outgoing` table (the database contract) through
/// [`outgoing::submit`], and writes each one's outcome: `accepted` with its outbox row, or
/// `refused` with what to fix. A database error leaves the row `new` for the next flush.
pub async fn take_outgoing(ctx: &SenderContext<'_>) -> Result<u64, StoreError> {
    let rows = ctx
        .store
        .new_outgoing(&ctx.mailbox.name, OUTGOING_PER_FLUSH)
        .await?;
    let mut taken = 0;
    for row in rows {
        let outcome = match serde_json::from_str::<OutgoingRequest>(&row.request) {
            Err(e) => Err(format!("request: not a valid request document ({e})")),
            Ok(mut request) => {
                // The row's columns stand for what the document leaves out.
                if request.mailbox.is_empty() {
                    request.mailbox.clone_from(&row.mailbox);
                }
                if request.idempotency_key.is_empty() {
                    request.idempotency_key.clone_from(&row.idempotency_key);
                }
                if request.mailbox != row.mailbox {
                    Err(format!(
                        "mailbox: the request names `{}`, the row `{}`",
                        request.mailbox, row.mailbox
                    ))
                } else if request.idempotency_key != row.idempotency_key {
                    Err("idempotency_key: the request's differs from the row's".to_string())
                } else {
                    match outgoing::submit(
                        ctx.store,
                        std::slice::from_ref(ctx.mailbox),
                        &request,
                        SubmittedVia::Database,
                    )
                    .await
                    {
                        Ok(submission) => Ok(submission.outbox_id),
                        Err(SubmitError::Store(e)) => return Err(e),
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        };
        match &outcome {
            Ok(outbox_id) => info!(outgoing_id = row.id, outbox_id, "outgoing request accepted"),
            Err(error) => warn!(outgoing_id = row.id, %error, "outgoing request refused"),
        }
        ctx.store
            .outgoing_taken(
                row.id,
                outcome.as_ref().map(|id| *id).map_err(String::as_str),
            )
            .await?;
        taken += 1;
    }
    Ok(taken)
}

/// Sends every due row of the mailbox (until the mailbox's sending budget is used up: the rest
/// wait, `pending`, with the reason and the time it allows), after taking the `outgoing` table's
/// new requests.
pub async fn flush(ctx: &SenderContext<'_>) -> Result<FlushReport, StoreError> {
    let mut report = FlushReport::default();
    take_outgoing(ctx).await?;
    let requeued = ctx
        .store
        .requeue_stale_sends(
            &ctx.mailbox.name,
            now_ms() - ctx.outlet.claim_lease.as_millis() as i64,
        )
        .await?;
    if requeued > 0 {
        warn!(
            requeued,
            "rows left in `sending` by a stopped worker are due again (each may reach the server a second time, with the same Message-ID)"
        );
    }
    let budget = Budget {
        per_minute: ctx.outlet.max_per_minute,
        recipients_per_day: ctx.outlet.max_recipients_per_day,
    };
    let mut connections = Connections::default();
    loop {
        // In a fleet, sending stops with the lease (lost, not certain, or given to another worker).
        if ctx.tenure.is_some_and(|tenure| !tenure.may_go_on()) {
            info!("the outbox's lease ends; the rest wait for its next holder");
            break;
        }
        let row = match ctx
            .store
            .claim_within_budget(&ctx.mailbox.name, budget)
            .await?
        {
            Claim::Row(row) => row,
            Claim::Nothing => break,
            Claim::Deferred { until_ms, reason } => {
                info!(until_ms, %reason, "sending budget used up; the rest wait");
                report.deferred_until_ms = Some(until_ms);
                break;
            }
        };
        match send_one(ctx, &mut connections, &row).await {
            Ok(accepted) => {
                // The fault tests crash here: the server has the message, the row says `sending`.
                failpoint::hit(Point::SmtpAccepted);
                match accepted {
                    Accepted::Smtp(response) => {
                        info!(outbox_id = row.id, to = row.to_address.as_deref().unwrap_or(""), %response, "sent");
                        ctx.store
                            .mark_sent(row.id, &response, copy_state(ctx.mailbox))
                            .await?;
                    }
                    Accepted::Graph(sent) => {
                        info!(outbox_id = row.id, to = row.to_address.as_deref().unwrap_or(""), response = %sent.response, "sent");
                        ctx.store
                            .mark_sent_through_graph(
                                row.id,
                                &sent.response,
                                sent.copy_found,
                                now_ms() + GRAPH_COPY_RETRY_MS,
                            )
                            .await?;
                    }
                }
                report.n_sent += 1;
                if row.blocked_reason.is_some() {
                    let due = ctx
                        .store
                        .unblock_sender(&ctx.mailbox.name, &row.from_address)
                        .await?;
                    info!(from = %row.from_address, due, "the server accepts this From address again; its waiting acknowledgements are due");
                }
            }
            Err(SmtpError::RowRefused(reason)) => {
                warn!(outbox_id = row.id, %reason, "refused for good");
                ctx.store.mark_failed(row.id, &reason).await?;
                report.n_failed += 1;
            }
            Err(SmtpError::SenderBlocked(reason)) => {
                // Every row from this address would be refused the same way: they wait (the
                // operator sees why), and the rows of other addresses go on.
                let retry_at = now_ms() + BLOCKED_RETRY_MS;
                let waiting = ctx.store.block_sender(&row, &reason, retry_at).await?;
                warn!(outbox_id = row.id, from = %row.from_address, waiting, retry_at_ms = retry_at, %reason, "the server refuses this From address; its rows wait");
            }
            Err(error) if row.attempts >= MAX_ATTEMPTS => {
                warn!(outbox_id = row.id, %error, "given up after {MAX_ATTEMPTS} attempts");
                ctx.store.mark_failed(row.id, &error.to_string()).await?;
                report.n_failed += 1;
            }
            Err(error) => {
                let next = now_ms()
                    + retry_delay_ms(ctx.outlet.retry_delay.as_millis() as i64, row.attempts);
                warn!(outbox_id = row.id, %error, retry_at_ms = next, "not sent; will retry");
                ctx.store
                    .reschedule(row.id, &error.to_string(), next)
                    .await?;
                report.n_retry += 1;
                // The server or the token is in trouble: the other rows wait for the next flush.
                break;
            }
        }
    }
    if let Some(session) = connections.smtp {
        session.quit().await;
    }
    // Not once the lease ended: its next holder keeps them (each copy is kept once anyway).
    if ctx.tenure.is_none_or(|tenure| tenure.may_go_on()) {
        if let Some(copies) = ctx.sent_copies {
            keep_sent_copies(ctx, copies, &mut report).await?;
        }
        if let SendVia::Graph(graph) = &ctx.outlet.via {
            confirm_graph_copies(ctx, graph, &mut connections.graph, &mut report).await?;
        }
    }
    report.blocked = ctx.store.hold_blocked(&ctx.mailbox.name).await?;
    // Held back by this flush or an earlier one (of any process): the report says so.
    report.deferred = ctx.store.deferred_rows(&ctx.mailbox.name).await?;
    if let Some(deferred) = &report.deferred {
        report.deferred_until_ms.get_or_insert(deferred.until_ms);
    }
    ctx.metrics.flushed(&ctx.mailbox.name, &report);
    Ok(report)
}

/// What becomes of the copy of a row the server just accepted, by the mailbox's `sent_copy`.
fn copy_state(mailbox: &Mailbox) -> SentCopyState {
    match mailbox.sent_copy {
        SentCopy::Server => SentCopyState::Server,
        SentCopy::Append { .. } => SentCopyState::Pending,
        SentCopy::None => SentCopyState::None,
    }
}

/// Keeps the due copies of sent mail in the Sent folder (after the flush's sends, on one mail
/// source session), and records each outcome; what fails waits [`SENT_COPY_RETRY_MS`].
async fn keep_sent_copies(
    ctx: &SenderContext<'_>,
    copies: &dyn SentCopies,
    report: &mut FlushReport,
) -> Result<(), StoreError> {
    let rows = ctx
        .store
        .sent_copies_due(&ctx.mailbox.name, SENT_COPIES_PER_FLUSH)
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let retry_at = now_ms() + SENT_COPY_RETRY_MS;
    let mut messages = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        match smtp::compose(row, &ctx.mailbox.address) {
            Ok(composed) => {
                messages.push(SentMessage {
                    message_id: row.message_id.clone(),
                    raw: with_bcc(row, composed.bytes),
                });
                ids.push(row.id);
            }
            Err(e) => {
                let error = format!("the sent message cannot be composed again: {e}");
                ctx.store.sent_copy_failed(row.id, &error, retry_at).await?;
            }
        }
    }
    match copies.keep(&messages).await {
        Err(error) => {
            warn!(copies = ids.len(), %error, "cannot keep copies in the Sent folder; they wait");
            for id in &ids {
                ctx.store.sent_copy_failed(*id, &error, retry_at).await?;
            }
            report.copy_error = Some(error);
        }
        Ok((folder, outcomes)) => {
            for (id, outcome) in ids.iter().zip(outcomes) {
                match outcome {
                    Ok(kept) => {
                        let state = match kept {
                            CopyKept::Appended => SentCopyState::Appended,
                            CopyKept::AlreadyThere => SentCopyState::Present,
                        };
                        // The fault tests crash here: the copy is in the folder, the row
                        // still says `pending`.
                        failpoint::hit(Point::SentCopyKept);
                        ctx.store.sent_copy_kept(*id, state, &folder).await?;
                        report.n_copied += 1;
                    }
                    Err(error) => {
                        warn!(outbox_id = id, %folder, %error, "the Sent folder refused the copy; it waits");
                        ctx.store.sent_copy_failed(*id, &error, retry_at).await?;
                        report.copy_error = Some(error);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads back the copies in Sent Items of rows sent through Graph whose copy was not there
/// right after the send (with the Message-ID each went out with); one not found for
/// [`GRAPH_COPY_PATIENCE_MS`] is left to Exchange with the reason.
async fn confirm_graph_copies(
    ctx: &SenderContext<'_>,
    graph: &crate::config::GraphEndpoint,
    open: &mut Option<GraphMailbox>,
    report: &mut FlushReport,
) -> Result<(), StoreError> {
    let rows = ctx
        .store
        .sent_copies_due(&ctx.mailbox.name, SENT_COPIES_PER_FLUSH)
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let sender = graph_sender(ctx);
    for row in rows {
        let now = now_ms();
        let waited = now - row.sent_at.unwrap_or(now);
        match super::graph::confirm_copy(&sender, graph, open, &row).await {
            Ok(true) => {
                ctx.store
                    .sent_copy_kept(
                        row.id,
                        SentCopyState::Present,
                        crate::store::GRAPH_SENT_ITEMS,
                    )
                    .await?;
                report.n_copied += 1;
            }
            Ok(false) if waited < GRAPH_COPY_PATIENCE_MS => {
                ctx.store
                    .sent_copy_failed(row.id, "not in Sent Items yet", now + GRAPH_COPY_RETRY_MS)
                    .await?;
            }
            Ok(false) => {
                let reason = format!(
                    "no copy in Sent Items {} minutes after the send (looked up by the draft's immutable id); Exchange may have saved none",
                    waited / 60_000
                );
                warn!(outbox_id = row.id, %reason, "copy not found");
                ctx.store.sent_copy_unconfirmed(row.id, &reason).await?;
            }
            Err(error) if waited < GRAPH_COPY_PATIENCE_MS => {
                warn!(outbox_id = row.id, %error, "cannot read the copy in Sent Items; it waits");
                ctx.store
                    .sent_copy_failed(row.id, &error, now + GRAPH_COPY_RETRY_MS)
                    .await?;
                report.copy_error = Some(error);
                break;
            }
            Err(error) => {
                ctx.store.sent_copy_unconfirmed(row.id, &error).await?;
            }
        }
    }
    Ok(())
}

fn graph_sender<'a>(ctx: &'a SenderContext<'a>) -> super::graph::Sender<'a> {
    super::graph::Sender {
        address: &ctx.mailbox.address,
        identity: ctx.identity,
        tokens: ctx.tokens,
        shared: ctx.graph,
        store: ctx.store,
    }
}

/// `raw` with a `Bcc` field first naming the envelope recipients that no To or Cc field names
/// (lettre leaves Bcc out of what is sent, as it must), so the copy shows whom it went to.
fn with_bcc(row: &OutboxRow, raw: Vec<u8>) -> Vec<u8> {
    if row.envelope_to.is_empty() {
        return raw;
    }
    let Some(headers) = mail_parser::MessageParser::default().parse_headers(&raw) else {
        return raw;
    };
    let shown: std::collections::HashSet<String> = [headers.to(), headers.cc()]
        .into_iter()
        .flatten()
        .flat_map(|list| list.iter())
        .filter_map(|a| a.address())
        .map(str::to_ascii_lowercase)
        .collect();
    let hidden: Vec<&str> = row
        .envelope_to
        .iter()
        .filter(|a| !shown.contains(&a.to_ascii_lowercase()))
        .map(String::as_str)
        .collect();
    if hidden.is_empty() {
        return raw;
    }
    // One address per line (folded), so no line grows past RFC 5322's 998 characters.
    let mut out = format!("Bcc: {}\r\n", hidden.join(",\r\n ")).into_bytes();
    out.extend_from_slice(&raw);
    out
}

/// Sends one row the mailbox's way.
async fn send_one(
    ctx: &SenderContext<'_>,
    connections: &mut Connections,
    row: &OutboxRow,
) -> Result<Accepted, SmtpError> {
    let message = smtp::compose(row, &ctx.mailbox.address)?;
    match &ctx.outlet.via {
        SendVia::Smtp(server) => send_smtp(ctx, server, &mut connections.smtp, &message)
            .await
            .map(Accepted::Smtp),
        SendVia::Graph(graph) => {
            // Graph takes the recipients from the message: the hidden ones are named in Bcc,
            // which Exchange leaves out of what it delivers.
            let raw = with_bcc(row, message.bytes.clone());
            let sender = graph_sender(ctx);
            super::graph::send(&sender, graph, &mut connections.graph, row, &message, &raw)
                .await
                .map(Accepted::Graph)
        }
    }
}

/// Sends one message by SMTP, opening the session (with a token from the identity's cache) on
/// first use or after it broke, and fetching a new token once if the server refuses the current
/// one.
async fn send_smtp(
    ctx: &SenderContext<'_>,
    server: &SmtpServer,
    session: &mut Option<smtp::Session>,
    message: &smtp::Composed,
) -> Result<String, SmtpError> {
    let limit = ctx.outlet.timeout + Duration::from_secs(5);
    for attempt in 0..2 {
        let token = ctx
            .tokens
            .token(ctx.identity)
            .await
            .map_err(|e| SmtpError::Transient(e.to_string()))?;
        if !session.as_ref().is_some_and(smtp::Session::is_usable) {
            *session = None;
            match smtp::connect(server, ctx.outlet.timeout, &ctx.mailbox.address, &token).await {
                Ok(opened) => {
                    // Submission refuses what this server would refuse (`outgoing::submit`).
                    if let Err(e) = ctx
                        .store
                        .note_server_facts(&ctx.mailbox.name, opened.facts())
                        .await
                    {
                        warn!(error = %e, "cannot keep what the SMTP server announced");
                    }
                    *session = Some(opened)
                }
                Err(SmtpError::Auth(reason)) if attempt == 0 => {
                    warn!(%reason, "SMTP refused the token; retrying once with a new one");
                    ctx.tokens.invalidate(&ctx.identity.name, &token).await;
                    continue;
                }
                // Still refused with a fresh token: an administrator must act; retry later.
                Err(SmtpError::Auth(reason)) => return Err(SmtpError::Transient(reason)),
                Err(other) => return Err(other),
            }
        }
        let opened = session.as_mut().expect("opened above");
        match opened.send(message, limit).await {
            Err(SmtpError::Auth(reason)) if attempt == 0 => {
                warn!(%reason, "SMTP refused the token; retrying once with a new one");
                ctx.tokens.invalidate(&ctx.identity.name, &token).await;
                *session = None;
            }
            Err(SmtpError::Auth(reason)) => return Err(SmtpError::Transient(reason)),
            other => return other,
        }
    }
    unreachable!("the loop returns on its second pass")
}

/// Flushes, then waits until the next row is due, new rows are announced on `wake`, or a limit
/// window frees a slot; until `cancel`.
pub async fn sender_loop(
    ctx: &SenderContext<'_>,
    wake: &tokio::sync::Notify,
    cancel: &CancellationToken,
) {
    info!(to = %ctx.outlet.describe(), "sending the outbox");
    while !cancel.is_cancelled() {
        let wait_ms = match flush(ctx).await {
            Ok(report) => {
                tracing::debug!(%report, "outbox flush");
                if report.n_sent + report.n_failed + report.n_retry > 0 {
                    info!(%report, "outbox flushed");
                }
                let next_due = ctx.store.next_due(&ctx.mailbox.name).await.ok().flatten();
                let until = match (report.deferred_until_ms, next_due) {
                    (Some(limit), _) => Some(limit),
                    (None, due) => due,
                };
                // At least every few seconds: the helpdesk's `outgoing` rows announce nothing.
                until.map_or(OUTGOING_POLL_MS, |t| {
                    (t - now_ms()).clamp(200, OUTGOING_POLL_MS)
                })
            }
            Err(e) => {
                ctx.metrics.outbox_failed(&ctx.mailbox.name, &e);
                warn!(error = %e, "outbox unavailable; retrying");
                5_000
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retry_delay_ms;

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(retry_delay_ms(30_000, 1), 30_000);
        assert_eq!(retry_delay_ms(30_000, 2), 60_000);
        assert_eq!(retry_delay_ms(30_000, 8), 3_600_000);
        assert_eq!(retry_delay_ms(30_000, 20), 3_600_000);
        assert_eq!(retry_delay_ms(1_000, 3), 4_000);
    }
}
