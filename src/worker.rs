//! One task per mailbox: token → IMAP → ingest → store → IMAP disposition. All the IO of a message
//! happens here, in [`process_one`], in an order that makes every message end in exactly one
//! recorded outcome:
//!
//! 1. if the message's outcome is already recorded, only its disposition may be due: finish it;
//! 2. too large → quarantine record from its header fields alone, never downloading the body;
//! 3. otherwise download (capped), parse, ask the store for facts, [`ingest::decide`];
//! 4. commit the outcome and the checkpoint in one transaction;
//! 5. only then dispose of it in IMAP (`\Seen` or a move), and record that.
//!
//! A crash between 4 and 5 leaves a committed outcome with its disposition pending; the next cycle
//! completes it before listing new mail. Shutdown is honoured between messages, never inside one.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, instrument, warn};

use crate::config::{Config, Disposal, Identity, Mailbox};
use crate::imap::{self, Body, Connection, ImapError, MessageSummary, Uid};
use crate::ingest::{self, Decision, Facts, QuarantineReason};
use crate::oauth::{TokenCache, TokenError};
use crate::store::{FolderState, ImapLocation, QuarantineEnvelope, Store, StoreError};

/// Why a mailbox cycle stopped. `Token` errors that need an admin stop the mailbox until fixed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CycleError {
    /// Only an administrator can fix this; retrying soon is pointless.
    pub fn needs_admin(&self) -> bool {
        match self {
            CycleError::Token(e) => e.needs_admin(),
            CycleError::Imap(e) => e.is_auth_failure(),
            CycleError::Store(_) => false,
        }
    }
}

/// What one cycle over a mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    pub n_listed: usize,
    pub n_tickets: usize,
    pub n_duplicates: usize,
    pub n_quarantined: usize,
    /// Messages whose outcome was already recorded; only their disposition was completed.
    pub n_completed: usize,
    pub bytes_fetched: u64,
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new message(s): {} ticket(s), {} duplicate(s), {} quarantined; {} earlier disposition(s) completed; {} bytes fetched",
            self.n_listed,
            self.n_tickets,
            self.n_duplicates,
            self.n_quarantined,
            self.n_completed,
            self.bytes_fetched
        )
    }
}

/// What a single message became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    Ticket {
        ticket_id: i64,
        reference: String,
    },
    Duplicate {
        ticket_id: i64,
    },
    Quarantined {
        quarantine_id: i64,
        reason: String,
    },
    /// Recorded before (a restart after a crash); only the disposition was completed.
    AlreadyRecorded,
}

/// Everything a mailbox cycle needs, borrowed.
pub struct MailboxContext<'a> {
    pub mailbox: &'a Mailbox,
    pub identity: &'a Identity,
    pub store: &'a Store,
    pub tokens: &'a TokenCache,
}

/// Logs in with a cached token; if the server refuses it, forgets it and tries once more with a
/// fresh one (the token may have been revoked or have expired early).
async fn login(ctx: &MailboxContext<'_>) -> Result<Connection, CycleError> {
    let token = ctx.tokens.token(ctx.identity).await?;
    match imap::connect(&ctx.mailbox.imap, &ctx.mailbox.address, &token).await {
        Ok(conn) => Ok(conn),
        Err(e) if e.is_auth_failure() => {
            warn!("login refused; retrying once with a new token");
            ctx.tokens.invalidate(&ctx.identity.name, &token).await;
            let token = ctx.tokens.token(ctx.identity).await?;
            Ok(imap::connect(&ctx.mailbox.imap, &ctx.mailbox.address, &token).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// One pass over a mailbox: complete pending dispositions, then ingest every message above the
/// checkpoint. Stops early (between messages) when `shutdown` is cancelled.
#[instrument(skip_all, fields(mailbox = %ctx.mailbox.name))]
pub async fn run_cycle(
    ctx: &MailboxContext<'_>,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let mut conn = login(ctx).await?;
    let result = cycle_on(ctx, &mut conn, shutdown).await;
    conn.logout().await;
    result
}

async fn cycle_on(
    ctx: &MailboxContext<'_>,
    conn: &mut Connection,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let mailbox = ctx.mailbox;
    let mut report = CycleReport::default();
    let selected = conn.select(&mailbox.folder).await?;
    let state = match ctx
        .store
        .folder_state(&mailbox.name, &mailbox.folder)
        .await?
    {
        Some(state) if state.uidvalidity == selected.uidvalidity => state,
        previous => {
            if let Some(previous) = previous {
                // The server renumbered the folder. Every message is listed again, and each is
                // recognised by its Message-ID and content, so nothing is ingested twice.
                warn!(
                    old = previous.uidvalidity,
                    new = selected.uidvalidity,
                    "UIDVALIDITY changed; resynchronising by Message-ID"
                );
            }
            let state = FolderState {
                uidvalidity: selected.uidvalidity,
                last_uid: 0,
            };
            ctx.store
                .set_folder_state(&mailbox.name, &mailbox.folder, state)
                .await?;
            state
        }
    };

    let mut folders = FolderCache::default();
    for pending in ctx
        .store
        .pending_dispositions(&mailbox.name, &mailbox.folder, state.uidvalidity)
        .await?
    {
        dispose(conn, &mut folders, Uid(pending.uid), &pending.disposition).await?;
        ctx.store.mark_disposed(pending.row_id).await?;
        report.n_completed += 1;
    }

    let listed = conn.list_above(state.last_uid).await?;
    report.n_listed = listed.len();
    for summary in &listed {
        if shutdown.is_cancelled() {
            info!("shutdown requested; stopping between messages");
            break;
        }
        let outcome = process_one(
            ctx,
            conn,
            &mut folders,
            selected.uidvalidity,
            summary,
            &mut report,
        )
        .await?;
        match outcome {
            MessageOutcome::Ticket { .. } => report.n_tickets += 1,
            MessageOutcome::Duplicate { .. } => report.n_duplicates += 1,
            MessageOutcome::Quarantined { .. } => report.n_quarantined += 1,
            MessageOutcome::AlreadyRecorded => report.n_completed += 1,
        }
    }
    info!(%report, "cycle done");
    Ok(report)
}

/// Folders known to exist on this connection, so each is checked (and created) once.
#[derive(Default)]
pub struct FolderCache(HashSet<String>);

/// The disposition string stored with an outcome: `seen`, `move:<folder>`, `quarantine:<folder>`.
fn normal_disposition(mailbox: &Mailbox) -> String {
    match &mailbox.dispose {
        Disposal::MarkSeen => "seen".into(),
        Disposal::Move { folder } => format!("move:{folder}"),
    }
}

fn quarantine_disposition(mailbox: &Mailbox) -> String {
    format!("quarantine:{}", mailbox.quarantine_folder)
}

async fn dispose(
    conn: &mut Connection,
    folders: &mut FolderCache,
    uid: Uid,
    disposition: &str,
) -> Result<(), ImapError> {
    let target = disposition
        .strip_prefix("move:")
        .or_else(|| disposition.strip_prefix("quarantine:"));
    match target {
        None => conn.mark_seen(uid).await,
        Some(folder) => {
            if !folders.0.contains(folder) {
                conn.ensure_folder(folder).await?;
                folders.0.insert(folder.to_string());
            }
            // Moving a UID that is already gone is a no-op for the server (RFC 3501 §6.4.8), which
            // makes a repeated disposition after a crash harmless.
            conn.move_to(uid, folder).await
        }
    }
}

/// Ingests one message; see the module documentation for the order of steps.
#[instrument(skip_all, fields(uid = summary.uid.0, size = summary.size, message_id), err)]
pub async fn process_one(
    ctx: &MailboxContext<'_>,
    conn: &mut Connection,
    folders: &mut FolderCache,
    uidvalidity: u32,
    summary: &MessageSummary,
    report: &mut CycleReport,
) -> Result<MessageOutcome, CycleError> {
    let mailbox = ctx.mailbox;
    let at = ImapLocation {
        mailbox: &mailbox.name,
        folder: &mailbox.folder,
        uidvalidity,
        uid: summary.uid.0,
        size: summary.size,
        internal_date_ms: summary.internal_date_ms,
    };

    if let Some(recorded) = ctx.store.recorded_outcome(&at).await? {
        if !recorded.disposed {
            dispose(conn, folders, summary.uid, &recorded.disposition).await?;
            ctx.store.mark_disposed(recorded.row_id).await?;
        }
        return Ok(MessageOutcome::AlreadyRecorded);
    }

    let raw = if summary.size > mailbox.max_message_bytes {
        None
    } else {
        match conn
            .fetch_body(summary.uid, mailbox.max_message_bytes)
            .await?
        {
            Body::Complete(bytes) => {
                report.bytes_fetched += bytes.len() as u64;
                Some(bytes)
            }
            // The server's RFC822.SIZE was an estimate (Exchange) and the message is larger.
            Body::TooLarge => {
                report.bytes_fetched += mailbox.max_message_bytes + 1;
                None
            }
        }
    };

    let Some(raw) = raw else {
        let header = conn.fetch_identifying_headers(summary.uid).await?;
        let envelope = envelope_from_header(&header, summary);
        tracing::Span::current().record("message_id", envelope.message_id.as_str());
        let reason = QuarantineReason::TooLarge {
            size: summary.size,
            limit: mailbox.max_message_bytes,
        };
        let disposition = quarantine_disposition(mailbox);
        let quarantine_id = ctx
            .store
            .commit_quarantine(&at, &envelope, &reason, None, &disposition)
            .await?;
        warn!(
            quarantine_id,
            reason = reason.code(),
            "quarantined without downloading"
        );
        finish(ctx, conn, folders, &at, summary.uid, &disposition).await?;
        return Ok(MessageOutcome::Quarantined {
            quarantine_id,
            reason: reason.code().into(),
        });
    };

    let parsed = ingest::parse(&raw);
    let facts = match &parsed {
        Ok(mail) => {
            tracing::Span::current().record("message_id", mail.message_id.as_str());
            Facts {
                same_message_id: ctx.store.message_by_message_id(&mail.message_id).await?,
            }
        }
        Err(_) => Facts::default(),
    };
    let envelope = match &parsed {
        Ok(mail) => QuarantineEnvelope {
            message_id: mail.message_id.clone(),
            from: mail.from.as_ref().map(|p| p.address.clone()),
            subject: Some(mail.subject.clone()),
        },
        Err(_) => QuarantineEnvelope {
            message_id: format!(
                "{}@content-hash.mailintake.invalid",
                ingest::sha256_hex(&raw)
            ),
            ..QuarantineEnvelope::default()
        },
    };

    let (outcome, disposition) = match ingest::decide(parsed, &facts) {
        Decision::NewTicket(mail) => {
            let disposition = normal_disposition(mailbox);
            match ctx.store.commit_new_ticket(&at, &mail, &disposition).await {
                Ok((ticket_id, reference)) => {
                    info!(ticket_id, %reference, subject = %mail.subject, "new ticket");
                    (
                        MessageOutcome::Ticket {
                            ticket_id,
                            reference,
                        },
                        disposition,
                    )
                }
                // Another worker stored the same Message-ID (or this UID) meanwhile: record it as
                // a duplicate if the UID is still unrecorded, else leave it to that worker.
                Err(StoreError::Conflict) => {
                    if ctx.store.recorded_outcome(&at).await?.is_some() {
                        return Ok(MessageOutcome::AlreadyRecorded);
                    }
                    let known = ctx
                        .store
                        .message_by_message_id(&mail.message_id)
                        .await?
                        .ok_or(StoreError::Conflict)?;
                    ctx.store
                        .commit_duplicate(&at, &mail.message_id, known.ticket_id, &disposition)
                        .await?;
                    (
                        MessageOutcome::Duplicate {
                            ticket_id: known.ticket_id,
                        },
                        disposition,
                    )
                }
                Err(e) => return Err(e.into()),
            }
        }
        Decision::Duplicate { ticket_id } => {
            let disposition = normal_disposition(mailbox);
            ctx.store
                .commit_duplicate(&at, &envelope.message_id, ticket_id, &disposition)
                .await?;
            info!(ticket_id, "already stored; recorded as duplicate");
            (MessageOutcome::Duplicate { ticket_id }, disposition)
        }
        Decision::Quarantine(reason) => {
            let disposition = quarantine_disposition(mailbox);
            let quarantine_id = ctx
                .store
                .commit_quarantine(&at, &envelope, &reason, Some(&raw), &disposition)
                .await?;
            warn!(quarantine_id, reason = reason.code(), detail = %reason.detail(), "quarantined");
            (
                MessageOutcome::Quarantined {
                    quarantine_id,
                    reason: reason.code().into(),
                },
                disposition,
            )
        }
    };
    finish(ctx, conn, folders, &at, summary.uid, &disposition).await?;
    Ok(outcome)
}

/// The IMAP disposition of a committed outcome, then its record.
async fn finish(
    ctx: &MailboxContext<'_>,
    conn: &mut Connection,
    folders: &mut FolderCache,
    at: &ImapLocation<'_>,
    uid: Uid,
    disposition: &str,
) -> Result<(), CycleError> {
    dispose(conn, folders, uid, disposition).await?;
    if let Some(recorded) = ctx.store.recorded_outcome(at).await? {
        ctx.store.mark_disposed(recorded.row_id).await?;
    }
    Ok(())
}

/// Message-ID, From and Subject from a header-only fetch. Without a Message-ID the key is a hash
/// of those header fields, the size and INTERNALDATE: stable for the same message in the folder.
fn envelope_from_header(header: &[u8], summary: &MessageSummary) -> QuarantineEnvelope {
    let parsed = ingest::parse(header).ok();
    let message_id = match parsed
        .as_ref()
        .filter(|m| m.message_id_source == ingest::MessageIdSource::Header)
    {
        Some(mail) => mail.message_id.clone(),
        None => {
            let mut key = header.to_vec();
            key.extend_from_slice(
                format!("\n{}\n{:?}", summary.size, summary.internal_date_ms).as_bytes(),
            );
            format!(
                "{}@header-hash.mailintake.invalid",
                ingest::sha256_hex(&key)
            )
        }
    };
    QuarantineEnvelope {
        message_id,
        from: parsed
            .as_ref()
            .and_then(|m| m.from.as_ref().map(|p| p.address.clone())),
        subject: parsed.map(|m| m.subject),
    }
}

/// Runs one cycle for every mailbox, one after another. Returns each mailbox's result.
pub async fn run_once(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
) -> Vec<(String, Result<CycleReport, CycleError>)> {
    let never = CancellationToken::new();
    let mut results = Vec::new();
    for mailbox in &config.mailboxes {
        let ctx = MailboxContext {
            mailbox,
            identity: config.identity(&mailbox.identity),
            store,
            tokens,
        };
        let result = run_cycle(&ctx, &never).await;
        results.push((mailbox.name.clone(), result));
    }
    results
}

/// The long-running worker: one task per mailbox, polling every `poll_interval`, until `shutdown`
/// completes. Returns once every task has stopped at a safe point.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    tokens: Arc<TokenCache>,
    shutdown: impl Future<Output = ()>,
) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    for index in 0..config.mailboxes.len() {
        let config = Arc::clone(&config);
        let store = store.clone();
        let tokens = Arc::clone(&tokens);
        let cancel = cancel.clone();
        let span = info_span!("mailbox", mailbox = %config.mailboxes[index].name);
        tracker.spawn(
            async move {
                let mailbox = &config.mailboxes[index];
                let ctx = MailboxContext {
                    mailbox,
                    identity: config.identity(&mailbox.identity),
                    store: &store,
                    tokens: &tokens,
                };
                mailbox_loop(&ctx, &cancel).await;
            }
            .instrument(span),
        );
    }
    tracker.close();
    shutdown.await;
    info!("shutdown requested; letting mailboxes reach a safe point");
    cancel.cancel();
    tracker.wait().await;
    info!("all mailboxes stopped");
}

/// Cycles forever: after success wait `poll_interval`; after trouble back off exponentially (with
/// jitter); when an administrator must act, retry only every ten minutes.
async fn mailbox_loop(ctx: &MailboxContext<'_>, cancel: &CancellationToken) {
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(2))
            .with_max_delay(Duration::from_secs(300))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        let delay = match run_cycle(ctx, cancel).await {
            Ok(_) => {
                backoff = new_backoff();
                ctx.mailbox.poll_interval
            }
            Err(e) if e.needs_admin() => {
                error!(error = %e, "mailbox stopped until an administrator fixes this; retrying in 10 minutes");
                Duration::from_secs(600)
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(300));
                warn!(error = %e, retry_in_s = delay.as_secs(), "cycle failed; will retry");
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
