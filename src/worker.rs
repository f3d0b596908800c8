//! One task per mailbox: token → IMAP → ingest → store → IMAP disposition. All the IO of a message
//! happens here, in an order that makes every message end in exactly one recorded outcome:
//!
//! 1. list the UIDs above the checkpoint with their sizes (no bodies);
//! 2. take them in batches bounded by total size and count; in each batch skip what is already
//!    recorded, record oversized mail from its header fields alone (never downloading the body),
//!    and download the rest in one round trip, each body capped at `max_message_bytes`;
//! 3. parse, ask the store for facts, [`ingest::decide`], and record every outcome of the batch
//!    together with the checkpoint in one transaction (one fsync);
//! 4. only then dispose of the messages in IMAP (`\Seen`, a move, or deletion), grouped by UID set,
//!    and record that.
//!
//! A crash between 3 and 4 leaves committed outcomes with their dispositions pending; the next sweep
//! completes them before listing new mail. Shutdown is honoured between batches, never inside one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, instrument, warn};

use crate::config::{Config, Disposal, FirstStart, Identity, Mailbox, Mode};
use crate::failpoint::{self, Point};
use crate::imap::{self, Body, Connection, IdleOutcome, ImapError, MessageSummary, Uid};
use crate::ingest::{self, Decision, Facts, Policy, QuarantineReason};
use crate::oauth::{TokenCache, TokenError};
use crate::reply::sender::{self, SenderContext};
use crate::reply::{self, AckFacts};
use crate::report::{CycleReport, Failure, FailureSource, FlushReport};
use crate::store::AckKind;
use crate::store::{
    Batch, BatchQuestions, FolderState, FollowUpOn, ImapLocation, QuarantineEnvelope, Store,
    StoreError,
};
use crate::telemetry::Metrics;
use crate::time::now_ms;

/// Why a sweep stopped. `Token` errors that need an admin stop the mailbox until fixed.
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

    /// Where the failure came from, for the metrics.
    pub fn source(&self) -> FailureSource {
        match self {
            CycleError::Token(_) => FailureSource::Token,
            CycleError::Imap(_) => FailureSource::MailServer,
            CycleError::Store(_) => FailureSource::Store,
        }
    }
}

/// Everything a folder task needs, borrowed.
pub struct MailboxContext<'a> {
    pub mailbox: &'a Mailbox,
    /// The watched folder this task takes care of.
    pub folder: &'a str,
    pub identity: &'a Identity,
    pub store: &'a Store,
    pub tokens: &'a TokenCache,
    /// How this mailbox decides (own addresses for loop protection, limits).
    pub policy: Policy,
    /// Wakes the mailbox's sender when acknowledgements were queued.
    pub outbox_wake: Option<Arc<Notify>>,
    /// Where sweeps, failures, logins and ingest latency are counted (read by `http`).
    pub metrics: &'a Metrics,
}

/// The decision policy of `mailbox`: every configured mailbox address counts as our own.
pub fn policy(config: &Config, mailbox: &Mailbox) -> Policy {
    Policy {
        own_addresses: config
            .mailboxes
            .iter()
            .map(|m| m.address.to_ascii_lowercase())
            .collect(),
        max_new_tickets_per_sender_per_hour: mailbox.max_new_tickets_per_sender_per_hour,
        reopen_closed: mailbox.reopen_closed,
    }
}

/// A logged-in IMAP session and what the worker knows about it.
pub struct Session {
    pub conn: Connection,
    /// When the token this session logged in with is due for renewal. Exchange ends sessions
    /// whose token expires, so the worker reconnects with a fresh token before then.
    pub token_renew_at: Instant,
    /// Folders known to exist, so each is checked (and created) once per session.
    folders: HashSet<String>,
    /// True until the first sweep on this session; a failure on a reused session is retried at
    /// once on a fresh one (the server may have dropped an idle connection).
    fresh: bool,
}

/// Logs in with a cached token; if the server refuses it, forgets it and tries once more with a
/// fresh one (the token may have been revoked or have expired early).
pub async fn login(ctx: &MailboxContext<'_>) -> Result<Session, CycleError> {
    let token = ctx.tokens.token(ctx.identity).await?;
    ctx.metrics
        .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
    let conn = match imap::connect(&ctx.mailbox.imap, &ctx.mailbox.address, &token).await {
        Ok(conn) => conn,
        Err(e) if e.is_auth_failure() => {
            warn!("login refused; retrying once with a new token");
            ctx.tokens.invalidate(&ctx.identity.name, &token).await;
            let token = ctx.tokens.token(ctx.identity).await?;
            ctx.metrics
                .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
            let conn = imap::connect(&ctx.mailbox.imap, &ctx.mailbox.address, &token).await?;
            return Ok(Session::new(conn, token.renew_at));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Session::new(conn, token.renew_at))
}

impl Session {
    fn new(conn: Connection, token_renew_at: Instant) -> Session {
        Session {
            conn,
            token_renew_at,
            folders: HashSet::new(),
            fresh: true,
        }
    }
}

/// One sweep on a new connection, then logout: what `mailintake once` does per folder.
#[instrument(skip_all, fields(mailbox = %ctx.mailbox.name, folder = ctx.folder))]
pub async fn run_cycle(
    ctx: &MailboxContext<'_>,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let mut session = login(ctx).await?;
    let result = sweep(ctx, &mut session, shutdown).await;
    session.conn.logout().await;
    result
}

/// One pass over the mailbox's folder: complete pending dispositions, then ingest every message
/// above the checkpoint. Stops early (between batches) when `shutdown` is cancelled.
pub async fn sweep(
    ctx: &MailboxContext<'_>,
    session: &mut Session,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let mailbox = ctx.mailbox;
    let mut report = CycleReport::default();
    let selected = match mailbox.mode {
        Mode::Normal => session.conn.select(ctx.folder).await?,
        Mode::Shadow => session.conn.examine(ctx.folder).await?,
    };
    let state = checkpoint(ctx, session, selected.uidvalidity, selected.uid_next).await?;

    let pending = ctx
        .store
        .pending_dispositions(&mailbox.name, ctx.folder, state.uidvalidity)
        .await?;
    if !pending.is_empty() {
        let items: Vec<(Uid, String)> = pending
            .into_iter()
            .map(|p| (Uid(p.uid), p.disposition))
            .collect();
        dispose_all(ctx, session, state.uidvalidity, &items).await?;
        report.n_completed += items.len();
    }

    let listed = session.conn.list_above(state.last_uid).await?;
    report.n_listed = listed.len();
    let oldest_listed_ms = listed.iter().filter_map(|m| m.internal_date_ms).min();
    ctx.metrics
        .listed(&mailbox.name, ctx.folder, oldest_listed_ms);
    // After a failed fetch, messages are taken one at a time until the culprit is known; one the
    // server fails to deliver STUCK_ATTEMPTS times in a row is set aside unread.
    let stuck = ctx.store.stuck_message(&mailbox.name, ctx.folder).await?;
    let batch_messages = if stuck.is_some() {
        1
    } else {
        mailbox.fetch_batch_messages
    };
    let batches = batches(
        &listed,
        mailbox.fetch_batch_bytes,
        batch_messages,
        mailbox.max_message_bytes,
    );
    // A pipeline of two: batch n+1 is downloaded and parsed while batch n is written; batch n's
    // dispositions follow its commit. (Not while messages are taken one at a time after a failed
    // fetch: then each must fail or pass on its own.) Memory: two batches.
    let mut next: Option<Result<Prepared<'_>, CycleError>> = None;
    for (i, &batch) in batches.iter().enumerate() {
        if shutdown.is_cancelled() {
            info!("shutdown requested; stopping between batches");
            break;
        }
        if let Some((uid, attempts, error)) = &stuck
            && batch[0].uid.0 == *uid
            && *attempts >= STUCK_ATTEMPTS
        {
            let reason = QuarantineReason::Unreadable {
                attempts: *attempts,
                error: error.lines().next().unwrap_or("").to_string(),
            };
            set_aside_unreadable(ctx, session, &state, &batch[0], reason, &mut report).await?;
            ctx.store.clear_stuck(&mailbox.name, ctx.folder).await?;
            continue;
        }
        let prepared = match next.take() {
            Some(prepared) => prepared,
            None => prepare_batch(ctx, &mut session.conn, &state, batch).await,
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // The server failed while delivering these messages: remember where. (A lost
                // database is not the message's fault and is not counted.)
                if let CycleError::Imap(imap_error) = &e {
                    let _ = ctx
                        .store
                        .note_stuck(
                            &mailbox.name,
                            ctx.folder,
                            batch[0].uid.0,
                            &imap_error.to_string(),
                        )
                        .await;
                }
                return Err(e);
            }
        };
        report.bytes_fetched += prepared.bytes_fetched;
        let prefetch = match batches.get(i + 1) {
            Some(following) if stuck.is_none() => Some(*following),
            _ => None,
        };
        let conn = &mut session.conn;
        let started = Instant::now();
        let (recorded, prefetched) = tokio::join!(
            async {
                let recorded = record_batch(ctx, &state, prepared).await;
                (recorded, started.elapsed())
            },
            async {
                match prefetch {
                    Some(following) => Some((
                        prepare_batch(ctx, conn, &state, following).await,
                        started.elapsed(),
                    )),
                    None => None,
                }
            }
        );
        let (recorded, record_time) = recorded;
        let prefetch_time = prefetched.as_ref().map(|(_, elapsed)| *elapsed);
        next = prefetched.map(|(prepared, _)| prepared);
        let (to_dispose, counted) = recorded?;
        report.add(&counted);
        let dispose_started = Instant::now();
        dispose_all(ctx, session, state.uidvalidity, &to_dispose).await?;
        debug!(
            first_uid = batch[0].uid.0,
            n = batch.len(),
            record_ms = record_time.as_millis() as u64,
            next_download_ms = prefetch_time.map(|t| t.as_millis() as u64),
            dispose_ms = dispose_started.elapsed().as_millis() as u64,
            "batch done"
        );
        if stuck
            .as_ref()
            .is_some_and(|(uid, _, _)| batch.iter().any(|m| m.uid.0 == *uid))
        {
            ctx.store.clear_stuck(&mailbox.name, ctx.folder).await?;
        }
    }
    session.fresh = false;
    info!(%report, "sweep done");
    Ok(report)
}

/// Consecutive failures of the server to deliver one message before it is set aside unread.
const STUCK_ATTEMPTS: i64 = 3;

/// Records a message the server keeps failing to deliver as quarantined (unread) and moves it to
/// the quarantine folder, so that the mail after it is not held up. Nothing is lost: it stays in
/// that folder and `mailintake quarantine release` brings it back.
async fn set_aside_unreadable(
    ctx: &MailboxContext<'_>,
    session: &mut Session,
    state: &FolderState,
    message: &MessageSummary,
    reason: QuarantineReason,
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    let mailbox = ctx.mailbox;
    let at = ImapLocation {
        mailbox: &mailbox.name,
        folder: ctx.folder,
        uidvalidity: state.uidvalidity,
        uid: message.uid.0,
        size: message.size,
        internal_date_ms: message.internal_date_ms,
    };
    // Nothing more is read from a message the server cannot deliver: it is known by its place.
    let envelope = QuarantineEnvelope {
        message_id: format!(
            "uid-{}-{}@unreadable.mailintake.invalid",
            state.uidvalidity, message.uid.0
        ),
        ..QuarantineEnvelope::default()
    };
    let disposition = quarantine_disposition(mailbox);
    let mut tx = ctx.store.begin().await?;
    let quarantine_id = tx
        .quarantine(&at, &envelope, &reason, None, &disposition)
        .await?;
    match tx.commit().await {
        Ok(()) => {}
        // Another worker recorded it first; disposing of it is that worker's.
        Err(StoreError::Conflict) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    error!(
        uid = message.uid.0,
        quarantine_id,
        detail = %reason.detail(),
        "set aside unread"
    );
    report.n_quarantined += 1;
    dispose_all(
        ctx,
        session,
        state.uidvalidity,
        &[(message.uid, disposition)],
    )
    .await?;
    Ok(())
}

/// The folder's checkpoint, created on the first start (following the mailbox's `first_start`
/// policy) and reset when the server changed UIDVALIDITY.
async fn checkpoint(
    ctx: &MailboxContext<'_>,
    session: &mut Session,
    uidvalidity: u32,
    uid_next: Option<u32>,
) -> Result<FolderState, CycleError> {
    let mailbox = ctx.mailbox;
    let stored = ctx.store.folder_state(&mailbox.name, ctx.folder).await?;
    // INTERNALDATE has whole seconds: mail arriving in this very second counts as new.
    let first_sweep_ms = now_ms() / 1000 * 1000;
    let state = match stored {
        Some(state) if state.uidvalidity == uidvalidity => return Ok(state),
        Some(previous) => {
            // The server renumbered the folder. Every message is listed again and recognised by
            // its Message-ID and fingerprint, so nothing is ingested twice; the first-start cutoff
            // still applies.
            warn!(
                old = previous.uidvalidity,
                new = uidvalidity,
                "UIDVALIDITY changed; resynchronising by Message-ID"
            );
            FolderState {
                uidvalidity,
                last_uid: 0,
                ingest_after_ms: previous.ingest_after_ms,
                ack_after_ms: previous.ack_after_ms,
            }
        }
        None => match mailbox.first_start {
            FirstStart::All => FolderState {
                uidvalidity,
                last_uid: 0,
                ingest_after_ms: None,
                ack_after_ms: Some(first_sweep_ms),
            },
            FirstStart::Now => {
                // Everything already there stays untouched.
                let last_uid = match uid_next {
                    Some(next) => next.saturating_sub(1),
                    None => session
                        .conn
                        .list_above(0)
                        .await?
                        .last()
                        .map_or(0, |m| m.uid.0),
                };
                info!(
                    last_uid,
                    "first start with first_start = \"now\": existing mail is left untouched"
                );
                FolderState {
                    uidvalidity,
                    last_uid,
                    ingest_after_ms: Some(first_sweep_ms),
                    ack_after_ms: Some(first_sweep_ms),
                }
            }
            FirstStart::Since(cutoff) => FolderState {
                uidvalidity,
                last_uid: 0,
                ingest_after_ms: Some(cutoff),
                ack_after_ms: Some(first_sweep_ms),
            },
        },
    };
    ctx.store
        .set_folder_state(&mailbox.name, ctx.folder, state)
        .await?;
    Ok(state)
}

/// Splits a listing into batches of at most `max_messages` whose listed sizes add up to at most
/// `max_bytes` (a single larger message is a batch of its own). Oversized messages count nothing:
/// their bodies are never downloaded.
fn batches(
    listed: &[MessageSummary],
    max_bytes: u64,
    max_messages: usize,
    max_message_bytes: u64,
) -> Vec<&[MessageSummary]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, message) in listed.iter().enumerate() {
        let size = if message.size > max_message_bytes {
            0
        } else {
            message.size
        };
        let count = i - start;
        if count > 0 && (count >= max_messages || bytes + size > max_bytes) {
            out.push(&listed[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < listed.len() {
        out.push(&listed[start..]);
    }
    out
}

/// How one message of a batch is to be handled.
enum Work {
    /// Received before the first-start cutoff: recorded as ignored, left untouched.
    Old,
    /// Too large (listed, or found while downloading): recorded from these header bytes.
    TooLarge(Vec<u8>),
    /// Downloaded, and parsed on a blocking thread while the previous batch was written;
    /// `release_key` is the quarantine key of an operator's release that let it in.
    Raw {
        raw: Vec<u8>,
        /// Taken by the first attempt to record the message; parsed again only when the batch
        /// has to be decided again after a conflict.
        parsed: Option<Result<Box<ingest::ParsedMail>, ingest::ParseFailure>>,
        release_key: Option<String>,
    },
}

/// A batch downloaded and parsed, ready for its transaction: the messages that still need an
/// outcome, with what to do with each.
struct Prepared<'a> {
    work: Vec<(&'a MessageSummary, Work)>,
    bytes_fetched: u64,
}

/// What became of one message; logged once its batch is committed, so that a batch decided
/// again after a conflict logs only what it finally recorded.
struct Recorded {
    uid: Uid,
    size: u64,
    message_id: String,
    disposition: String,
    note: Note,
}

enum Note {
    LeftBeforeCutoff,
    NewTicket {
        ticket_id: i64,
        reference: String,
        subject: String,
    },
    FollowUp {
        ticket_id: i64,
        reopen: bool,
        auto_kind: Option<&'static str>,
    },
    Duplicate {
        ticket_id: i64,
    },
    Ignored {
        reason: String,
    },
    Quarantined {
        quarantine_id: i64,
        code: &'static str,
        detail: String,
        downloaded: bool,
    },
}

impl Recorded {
    fn log(&self) {
        let span = info_span!(
            "record",
            uid = self.uid.0,
            size = self.size,
            message_id = self.message_id.as_str()
        );
        let _entered = span.enter();
        match &self.note {
            Note::LeftBeforeCutoff => {
                debug!("received before the first-start cutoff; left untouched")
            }
            Note::NewTicket {
                ticket_id,
                reference,
                subject,
            } => info!(ticket_id, %reference, %subject, "new ticket"),
            Note::FollowUp {
                ticket_id,
                reopen,
                auto_kind,
            } => info!(
                ticket_id,
                reopen, auto_kind, "follow-up on an existing ticket"
            ),
            Note::Duplicate { ticket_id } => {
                info!(ticket_id, "already stored; recorded as duplicate")
            }
            Note::Ignored { reason } => info!(%reason, "no ticket"),
            Note::Quarantined {
                quarantine_id,
                code,
                detail,
                downloaded: false,
            } => warn!(quarantine_id, reason = code, %detail, "quarantined without downloading"),
            Note::Quarantined {
                quarantine_id,
                code,
                detail,
                downloaded: true,
            } => warn!(quarantine_id, reason = code, %detail, "quarantined"),
        }
    }
}

/// The disposition string stored with an outcome: `seen`, `move:<folder>`, `delete`,
/// `quarantine:<folder>`, or `none` (shadow mode, ignored mail).
fn normal_disposition(mailbox: &Mailbox) -> String {
    match (&mailbox.mode, &mailbox.dispose) {
        (Mode::Shadow, _) => "none".into(),
        (Mode::Normal, Disposal::MarkSeen) => "seen".into(),
        (Mode::Normal, Disposal::Move { folder }) => format!("move:{folder}"),
        (Mode::Normal, Disposal::Delete) => "delete".into(),
    }
}

fn quarantine_disposition(mailbox: &Mailbox) -> String {
    match mailbox.mode {
        Mode::Shadow => "none".into(),
        Mode::Normal => format!("quarantine:{}", mailbox.quarantine_folder),
    }
}

/// The first phase of a batch, which needs the IMAP session but writes nothing (so it runs while
/// the previous batch is being written): which messages still need an outcome, their bodies in
/// one round trip (each capped at `max_message_bytes`; header fields only for oversized mail),
/// parsed on a blocking thread.
#[instrument(skip_all, fields(first_uid = batch[0].uid.0, n = batch.len()), err)]
async fn prepare_batch<'a>(
    ctx: &MailboxContext<'_>,
    conn: &mut Connection,
    state: &FolderState,
    batch: &'a [MessageSummary],
) -> Result<Prepared<'a>, CycleError> {
    let mailbox = ctx.mailbox;
    let first = batch[0].uid.0;
    let last = batch[batch.len() - 1].uid.0;
    let mut prepared = Prepared {
        work: Vec::with_capacity(batch.len()),
        bytes_fetched: 0,
    };

    // Outcomes recorded before (their pending dispositions were completed at the sweep's start).
    let recorded = recorded_uids(ctx, state, first, last).await?;
    let todo: Vec<&MessageSummary> = batch
        .iter()
        .filter(|m| !recorded.contains(&m.uid.0))
        .collect();
    if todo.is_empty() {
        return Ok(prepared);
    }

    let is_old = |m: &MessageSummary| match (state.ingest_after_ms, m.internal_date_ms) {
        (Some(cutoff), Some(received)) => received < cutoff,
        _ => false,
    };
    let to_fetch: Vec<Uid> = todo
        .iter()
        .filter(|m| !is_old(m) && m.size <= mailbox.max_message_bytes)
        .map(|m| m.uid)
        .collect();
    let mut bodies: HashMap<Uid, Body> = conn
        .fetch_bodies(&to_fetch, mailbox.max_message_bytes)
        .await?
        .into_iter()
        .collect();

    for message in todo {
        let item = if is_old(message) {
            Work::Old
        } else {
            match bodies.remove(&message.uid) {
                Some(Body::Complete(raw)) => {
                    prepared.bytes_fetched += raw.len() as u64;
                    Work::Raw {
                        raw,
                        parsed: None,
                        release_key: None,
                    }
                }
                // Listed too large, or its announced size was an estimate (Exchange) and it is
                // larger: record it from its header fields only, unless an operator released it
                // with a higher limit.
                found_large => {
                    if found_large.is_some() {
                        prepared.bytes_fetched += mailbox.max_message_bytes + 1;
                    }
                    let header = conn.fetch_identifying_headers(message.uid).await?;
                    let key = envelope_from_header(&header, message).message_id;
                    match ctx.store.unused_release(&mailbox.name, &key).await? {
                        Some(limit) => {
                            let cap = limit.map_or(mailbox.max_message_bytes, |l| l.max(0) as u64);
                            match conn.fetch_bodies(&[message.uid], cap).await?.pop() {
                                Some((_, Body::Complete(raw))) => {
                                    info!(
                                        uid = message.uid.0,
                                        cap, "released from quarantine; ingesting"
                                    );
                                    prepared.bytes_fetched += raw.len() as u64;
                                    Work::Raw {
                                        raw,
                                        parsed: None,
                                        release_key: Some(key.clone()),
                                    }
                                }
                                _ => Work::TooLarge(header),
                            }
                        }
                        None => Work::TooLarge(header),
                    }
                }
            }
        };
        prepared.work.push((message, item));
    }

    // Parsing is CPU work: off the async threads, beside the previous batch's SQL.
    let (summaries, mut items): (Vec<&MessageSummary>, Vec<Work>) =
        std::mem::take(&mut prepared.work).into_iter().unzip();
    let parsed = tokio::task::spawn_blocking(move || {
        for item in &mut items {
            if let Work::Raw { raw, parsed, .. } = item {
                *parsed = Some(ingest::parse(raw).map(Box::new));
            }
        }
        items
    })
    .await;
    let items = match parsed {
        Ok(items) => items,
        // A panic in the parser is a bug; let it surface as it would have on this thread.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    prepared.work = summaries.into_iter().zip(items).collect();
    Ok(prepared)
}

/// The UIDs from `first` to `last` of the folder whose outcome is recorded already.
async fn recorded_uids(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    first: u32,
    last: u32,
) -> Result<HashSet<u32>, StoreError> {
    Ok(ctx
        .store
        .recorded_outcomes(
            &ctx.mailbox.name,
            ctx.folder,
            state.uidvalidity,
            first,
            last,
        )
        .await?
        .into_iter()
        .map(|r| r.uid)
        .collect())
}

/// How often a batch is decided again after another worker recorded some of its messages
/// meanwhile, before the sweep gives up (and retries later).
const CONFLICT_ATTEMPTS: u32 = 3;

/// The second phase of a batch: decides every message and records all outcomes with the
/// folder's checkpoint in one transaction (one fsync). Returns the dispositions to perform, which
/// only now may be done, and what the batch counted.
async fn record_batch(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    mut prepared: Prepared<'_>,
) -> Result<(Vec<(Uid, String)>, CycleReport), CycleError> {
    let mailbox = ctx.mailbox;
    for attempt in 1..=CONFLICT_ATTEMPTS {
        if attempt > 1
            && let (Some(first), Some(last)) = (prepared.work.first(), prepared.work.last())
        {
            // Whatever the other worker recorded is its to dispose of.
            let recorded = recorded_uids(ctx, state, first.0.uid.0, last.0.uid.0).await?;
            prepared.work.retain(|(m, _)| !recorded.contains(&m.uid.0));
        }
        if prepared.work.is_empty() {
            return Ok((Vec::new(), CycleReport::default()));
        }
        let mut report = CycleReport::default();
        let mut recorded = Vec::with_capacity(prepared.work.len());
        let mut tx = ctx.store.begin().await?;
        // The window of the per-sender limit, the same for the whole batch.
        let since_ms = now_ms() - SENDER_WINDOW_MS;
        tx.prefetch(&batch_questions(&mailbox.name, &prepared, since_ms))
            .await?;
        let mut conflict = false;
        for (summary, item) in &mut prepared.work {
            let at = ImapLocation {
                mailbox: &mailbox.name,
                folder: ctx.folder,
                uidvalidity: state.uidvalidity,
                uid: summary.uid.0,
                size: summary.size,
                internal_date_ms: summary.internal_date_ms,
            };
            match record(
                ctx,
                &mut tx,
                state,
                &at,
                summary,
                item,
                since_ms,
                &mut report,
            )
            .await
            {
                Ok(done) => recorded.push(done),
                Err(CycleError::Store(StoreError::Conflict)) => {
                    conflict = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // A Message-ID stored meanwhile shows while recording, a UID recorded meanwhile at commit.
        let committed = if conflict {
            tx.rollback().await?;
            Err(StoreError::Conflict)
        } else {
            tx.commit().await
        };
        match committed {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                warn!(
                    attempt,
                    "another worker recorded some of these messages meanwhile; deciding the batch again"
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // Arrival times of what this batch recorded (mail left from before the cutoff excepted).
        let received_ms: Vec<i64> = prepared
            .work
            .iter()
            .filter(|(_, item)| !matches!(item, Work::Old))
            .filter_map(|(summary, _)| summary.internal_date_ms)
            .collect();
        ctx.metrics
            .batch_committed(&mailbox.name, &received_ms, now_ms());
        failpoint::hit(Point::AfterCommit);
        if report.n_acks_queued > 0
            && let Some(wake) = &ctx.outbox_wake
        {
            wake.notify_one();
        }
        for done in &recorded {
            done.log();
        }
        let to_dispose = recorded
            .into_iter()
            .map(|r| (r.uid, r.disposition))
            .collect();
        return Ok((to_dispose, report));
    }
    Err(StoreError::Conflict.into())
}

/// The window of the per-sender ticket limit (`max_new_tickets_per_sender_per_hour`).
pub(crate) const SENDER_WINDOW_MS: i64 = 3_600_000;

/// What the batch's messages will ask the store, from the messages parsed for it (after a
/// conflict they are parsed again one by one, and each asks for itself).
fn batch_questions<'a>(
    mailbox: &'a str,
    prepared: &'a Prepared<'_>,
    since_ms: i64,
) -> BatchQuestions<'a> {
    let mut questions = BatchQuestions {
        mailbox,
        since_ms,
        ..BatchQuestions::default()
    };
    for (_, item) in &prepared.work {
        let Work::Raw {
            parsed: Some(Ok(mail)),
            ..
        } = item
        else {
            continue;
        };
        questions.message_ids.push(&mail.message_id);
        if let Some(from) = &mail.from {
            questions.senders.push(&from.address);
        }
        questions
            .referenced_ids
            .extend(mail.in_reply_to.iter().map(String::as_str));
        questions
            .referenced_ids
            .extend(mail.references.iter().map(String::as_str));
        questions
            .referenced_ids
            .extend(mail.signals.original_message_id.as_deref());
    }
    questions
}

/// Decides and records one message inside the batch's transaction. `Conflict` (another worker
/// recorded it meanwhile) leaves the transaction to be dropped: see [`Batch`].
#[allow(clippy::too_many_arguments)]
async fn record(
    ctx: &MailboxContext<'_>,
    tx: &mut Batch,
    state: &FolderState,
    at: &ImapLocation<'_>,
    summary: &MessageSummary,
    item: &mut Work,
    since_ms: i64,
    report: &mut CycleReport,
) -> Result<Recorded, CycleError> {
    let mailbox = ctx.mailbox;
    let recorded = |message_id: &str, disposition: String, note: Note| Recorded {
        uid: summary.uid,
        size: summary.size,
        message_id: message_id.to_string(),
        disposition,
        note,
    };
    let (raw, parsed) = match item {
        Work::Old => {
            let message_id = format!(
                "uid-{}-{}@first-start.mailintake.invalid",
                at.uidvalidity, at.uid
            );
            tx.ignored(
                at,
                &message_id,
                "received before the mailbox's first_start cutoff; left untouched",
                "none",
            );
            report.n_ignored += 1;
            return Ok(recorded(&message_id, "none".into(), Note::LeftBeforeCutoff));
        }
        Work::TooLarge(header) => {
            let envelope = envelope_from_header(header, summary);
            let reason = QuarantineReason::TooLarge {
                size: summary.size,
                limit: mailbox.max_message_bytes,
            };
            let disposition = quarantine_disposition(mailbox);
            let quarantine_id = tx
                .quarantine(at, &envelope, &reason, None, &disposition)
                .await?;
            report.n_quarantined += 1;
            notify_quarantined(ctx, tx, state, header, summary, report).await?;
            let note = Note::Quarantined {
                quarantine_id,
                code: reason.code(),
                detail: reason.detail(),
                downloaded: false,
            };
            return Ok(recorded(&envelope.message_id, disposition, note));
        }
        Work::Raw {
            raw,
            parsed,
            release_key,
        } => {
            if let Some(key) = release_key {
                tx.use_release(&mailbox.name, key).await?;
            }
            let parsed = match parsed.take() {
                Some(parsed) => parsed.map(|mail| *mail),
                None => ingest::parse(raw),
            };
            (raw, parsed)
        }
    };

    let facts = match &parsed {
        Ok(mail) => {
            let facts = facts_for(tx, mail, &mailbox.name, since_ms).await?;
            if facts.released {
                // A release lets the message in once.
                tx.use_release(&mailbox.name, &mail.message_id).await?;
            }
            facts
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
                ingest::sha256_hex(raw)
            ),
            ..QuarantineEnvelope::default()
        },
    };

    let keep_raw = mailbox.keep_raw_all.then_some(raw.as_slice());
    match ingest::decide(parsed, &facts, &ctx.policy) {
        Decision::NewTicket { mail, related } => {
            let disposition = normal_disposition(mailbox);
            let (ticket_id, reference) = tx
                .new_ticket(at, &mail, related, keep_raw, &disposition)
                .await?;
            report.n_tickets += 1;
            acknowledge(
                ctx,
                tx,
                state,
                summary,
                &mail,
                ticket_id,
                AckKind::NewTicket,
                None,
                report,
            )
            .await?;
            let note = Note::NewTicket {
                ticket_id,
                reference,
                subject: mail.subject.clone(),
            };
            Ok(recorded(&mail.message_id, disposition, note))
        }
        Decision::FollowUp {
            mail,
            ticket_id,
            reopen,
            auto_kind,
        } => {
            let disposition = normal_disposition(mailbox);
            let on = FollowUpOn {
                ticket_id,
                reopen,
                auto_kind,
            };
            tx.follow_up(at, &mail, on, keep_raw, &disposition).await?;
            report.n_follow_ups += 1;
            acknowledge(
                ctx,
                tx,
                state,
                summary,
                &mail,
                ticket_id,
                AckKind::FollowUp,
                auto_kind,
                report,
            )
            .await?;
            let note = Note::FollowUp {
                ticket_id,
                reopen,
                auto_kind,
            };
            Ok(recorded(&mail.message_id, disposition, note))
        }
        Decision::Duplicate { ticket_id } => {
            let disposition = normal_disposition(mailbox);
            tx.duplicate(at, &envelope.message_id, ticket_id, &disposition);
            report.n_duplicates += 1;
            let note = Note::Duplicate { ticket_id };
            Ok(recorded(&envelope.message_id, disposition, note))
        }
        Decision::Ignore { reason } => {
            // Never deleted: nothing of it is stored but this record.
            let disposition = match normal_disposition(mailbox).as_str() {
                "delete" => "seen".to_string(),
                other => other.to_string(),
            };
            tx.ignored(at, &envelope.message_id, &reason, &disposition);
            report.n_ignored += 1;
            let note = Note::Ignored { reason };
            Ok(recorded(&envelope.message_id, disposition, note))
        }
        Decision::Quarantine(reason) => {
            let disposition = quarantine_disposition(mailbox);
            let quarantine_id = tx
                .quarantine(at, &envelope, &reason, Some(raw), &disposition)
                .await?;
            report.n_quarantined += 1;
            let note = Note::Quarantined {
                quarantine_id,
                code: reason.code(),
                detail: reason.detail(),
                downloaded: true,
            };
            Ok(recorded(&envelope.message_id, disposition, note))
        }
    }
}

/// Writes the acknowledgement of a new ticket or follow-up into the outbox, in the batch's
/// transaction: a message to send, or the reason it is not sent. Nothing when the mailbox does not
/// acknowledge at all (no SMTP, shadow mode).
#[allow(clippy::too_many_arguments)]
async fn acknowledge(
    ctx: &MailboxContext<'_>,
    tx: &mut Batch,
    state: &FolderState,
    summary: &MessageSummary,
    mail: &ingest::ParsedMail,
    ticket_id: i64,
    kind: AckKind,
    auto_kind: Option<&str>,
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    let mailbox = ctx.mailbox;
    if !mailbox.acknowledge.enabled || mailbox.smtp.is_none() || mailbox.mode == Mode::Shadow {
        return Ok(());
    }
    let reference = ingest::ticket_reference(ticket_id);
    let now = now_ms();
    let recipient = reply::reply_address(mail);
    let facts = AckFacts {
        received_ms: summary.internal_date_ms,
        ack_after_ms: mailbox.acknowledge.since_ms.or(state.ack_after_ms),
        recipient_acks_today: match &recipient {
            Some(to) => tx.acks_to_since(to, now - 86_400_000).await?,
            None => 0,
        },
        ticket_last_ack_ms: match kind {
            AckKind::FollowUp => tx.last_ack_of_ticket(ticket_id).await?,
            AckKind::NewTicket | AckKind::QuarantineNotice => None,
        },
        now_ms: now,
    };
    let mut draft = reply::plan_acknowledgement(
        mailbox,
        &ctx.policy.own_addresses,
        mail,
        &reference,
        kind,
        &facts,
    );
    if let Some(auto_kind) = auto_kind {
        draft.suppressed = Some(format!(
            "automatic mail ({auto_kind}) is never acknowledged"
        ));
    }
    tx.enqueue(&mailbox.name, Some(ticket_id), &draft).await?;
    match &draft.suppressed {
        None => report.n_acks_queued += 1,
        Some(reason) => debug!(%reason, "no acknowledgement"),
    }
    Ok(())
}

/// Writes the notice to the sender of a message set aside as too large (when the mailbox sends
/// them), or the reason none is sent, in the batch's transaction.
async fn notify_quarantined(
    ctx: &MailboxContext<'_>,
    tx: &mut Batch,
    state: &FolderState,
    header: &[u8],
    summary: &MessageSummary,
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    let mailbox = ctx.mailbox;
    if !mailbox.acknowledge.enabled || mailbox.smtp.is_none() || mailbox.mode == Mode::Shadow {
        return Ok(());
    }
    let Ok(mail) = ingest::parse(header) else {
        return Ok(());
    };
    let now = now_ms();
    let facts = AckFacts {
        received_ms: summary.internal_date_ms,
        // Imported mail gets no notice either.
        ack_after_ms: mailbox.acknowledge.since_ms.or(state.ack_after_ms),
        recipient_acks_today: match reply::reply_address(&mail) {
            Some(to) => tx.acks_to_since(&to, now - 86_400_000).await?,
            None => 0,
        },
        ticket_last_ack_ms: None,
        now_ms: now,
    };
    let mut draft = reply::plan_quarantine_notice(
        mailbox,
        &ctx.policy.own_addresses,
        &mail,
        summary.size,
        mailbox.max_message_bytes,
        &facts,
    );
    let kind = ingest::classify(&mail, &ctx.policy);
    if kind != ingest::MailKind::Person {
        draft.suppressed = Some(format!("automatic mail ({kind:?}) is never answered"));
    }
    tx.enqueue(&mailbox.name, None, &draft).await?;
    if draft.suppressed.is_none() {
        report.n_acks_queued += 1;
    }
    Ok(())
}

/// What the store knows that bears on `mail`: the same Message-ID, the ticket of the thread it
/// replies to, the ticket its subject tag names, the ticket a report is about, and how many
/// tickets its sender opened in the last hour.
pub(crate) async fn facts_for(
    tx: &mut Batch,
    mail: &ingest::ParsedMail,
    mailbox: &str,
    since_ms: i64,
) -> Result<Facts, StoreError> {
    // The most specific reference first: In-Reply-To, then References from the newest.
    let mut thread_ids: Vec<String> = mail.in_reply_to.clone();
    thread_ids.extend(mail.references.iter().rev().cloned());
    let reported = match &mail.signals.original_message_id {
        Some(id) => tx.ticket_of_message_ids(std::slice::from_ref(id)).await?,
        None => None,
    };
    let tagged = match ingest::tagged_reference(&mail.subject) {
        Some(reference) => tx.ticket_by_reference(&reference).await?,
        None => None,
    };
    let stored = tx
        .message_facts(
            mailbox,
            &mail.message_id,
            mail.from.as_ref().map(|p| p.address.as_str()),
            since_ms,
        )
        .await?;
    let thread = if thread_ids.is_empty() {
        None
    } else {
        tx.ticket_of_message_ids(&thread_ids).await?
    };
    Ok(Facts {
        same_message_id: stored.same_message_id,
        thread,
        tagged,
        reported,
        sender_recent_tickets: stored.sender_recent_tickets,
        released: stored.released,
    })
}

/// Performs the IMAP dispositions of committed outcomes, one command per kind and UID set, then
/// records them as done.
async fn dispose_all(
    ctx: &MailboxContext<'_>,
    session: &mut Session,
    uidvalidity: u32,
    items: &[(Uid, String)],
) -> Result<(), CycleError> {
    let mut groups: BTreeMap<&str, Vec<Uid>> = BTreeMap::new();
    for (uid, disposition) in items {
        groups.entry(disposition.as_str()).or_default().push(*uid);
    }
    for (disposition, uids) in groups {
        let target = disposition
            .strip_prefix("move:")
            .or_else(|| disposition.strip_prefix("quarantine:"));
        match (disposition, target) {
            ("none", _) => {}
            ("seen", _) => session.conn.mark_seen(&uids).await?,
            ("delete", _) => session.conn.delete(&uids).await?,
            (_, Some(folder)) => {
                if !session.folders.contains(folder) {
                    session.conn.ensure_folder(folder).await?;
                    session.folders.insert(folder.to_string());
                }
                // Moving a UID that is already gone is a no-op for the server (RFC 3501 §6.4.8),
                // which makes a repeated disposition after a crash harmless.
                session.conn.move_to(&uids, folder).await?;
            }
            (other, None) => {
                error!(
                    disposition = other,
                    "unknown disposition recorded; leaving the message in place"
                );
            }
        }
    }
    let uids: Vec<u32> = items.iter().map(|(uid, _)| uid.0).collect();
    ctx.store
        .mark_disposed(&ctx.mailbox.name, ctx.folder, uidvalidity, &uids)
        .await?;
    Ok(())
}

/// Message-ID, From and Subject from a header-only fetch. Without a Message-ID the key is a hash
/// of those header fields, the size and INTERNALDATE: stable for the same message in the folder.
pub(crate) fn envelope_from_header(header: &[u8], summary: &MessageSummary) -> QuarantineEnvelope {
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

/// Runs one sweep for every folder of every mailbox, one after another. Returns each result,
/// named `mailbox` (or `mailbox/folder` when a mailbox watches several folders).
pub async fn run_once(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
) -> Vec<(String, Result<CycleReport, CycleError>)> {
    let never = CancellationToken::new();
    // `once` reports through its return value; the counts are not served anywhere.
    let metrics = Metrics::new(config);
    let mut results = Vec::new();
    for mailbox in &config.mailboxes {
        for folder in &mailbox.folders {
            let ctx = MailboxContext {
                mailbox,
                folder,
                identity: config.identity(&mailbox.identity),
                store,
                tokens,
                policy: policy(config, mailbox),
                outbox_wake: None,
                metrics: &metrics,
            };
            let result = run_cycle(&ctx, &never).await;
            results.push((task_name(mailbox, folder), result));
        }
    }
    results
}

/// Sends the due acknowledgements of every mailbox that sends them (after [`run_once`]).
pub async fn flush_outboxes(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
) -> Vec<(String, Result<FlushReport, StoreError>)> {
    let metrics = Metrics::new(config);
    let mut results = Vec::new();
    for mailbox in config
        .mailboxes
        .iter()
        .filter(|m| sends_acknowledgements(m))
    {
        let Some(smtp) = &mailbox.smtp else { continue };
        let ctx = SenderContext {
            mailbox,
            smtp,
            identity: config.identity(&mailbox.identity),
            store,
            tokens,
            metrics: &metrics,
        };
        results.push((mailbox.name.clone(), sender::flush(&ctx).await));
    }
    results
}

fn sends_acknowledgements(mailbox: &Mailbox) -> bool {
    mailbox.acknowledge.enabled && mailbox.smtp.is_some() && mailbox.mode == Mode::Normal
}

fn task_name(mailbox: &Mailbox, folder: &str) -> String {
    if mailbox.folders.len() == 1 {
        mailbox.name.clone()
    } else {
        format!("{}/{folder}", mailbox.name)
    }
}

/// Starts the long-running worker's tasks in `tracker`: one per watched folder of every mailbox,
/// and an outbox sender per mailbox that sends acknowledgements. They run until `cancel`, then
/// stop at a safe point and log out; `tracker.wait()` returns when all have.
pub fn spawn(
    config: Arc<Config>,
    store: Store,
    tokens: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    for (index, mailbox) in config.mailboxes.iter().enumerate() {
        let wake = sends_acknowledgements(mailbox).then(|| Arc::new(Notify::new()));
        if let Some(wake) = &wake {
            let config = Arc::clone(&config);
            let store = store.clone();
            let tokens = Arc::clone(&tokens);
            let metrics = Arc::clone(&metrics);
            let cancel = cancel.clone();
            let wake = Arc::clone(wake);
            let span = info_span!("outbox", mailbox = %mailbox.name);
            tracker.spawn(
                async move {
                    let mailbox = &config.mailboxes[index];
                    let Some(smtp) = &mailbox.smtp else { return };
                    let ctx = SenderContext {
                        mailbox,
                        smtp,
                        identity: config.identity(&mailbox.identity),
                        store: &store,
                        tokens: &tokens,
                        metrics: &metrics,
                    };
                    sender::sender_loop(&ctx, &wake, &cancel).await;
                }
                .instrument(span),
            );
        }
        for folder_index in 0..mailbox.folders.len() {
            let config = Arc::clone(&config);
            let store = store.clone();
            let tokens = Arc::clone(&tokens);
            let metrics = Arc::clone(&metrics);
            let cancel = cancel.clone();
            let wake = wake.clone();
            let span = info_span!(
                "mailbox",
                mailbox = %mailbox.name,
                folder = %mailbox.folders[folder_index]
            );
            tracker.spawn(
                async move {
                    let mailbox = &config.mailboxes[index];
                    let ctx = MailboxContext {
                        mailbox,
                        folder: &mailbox.folders[folder_index],
                        identity: config.identity(&mailbox.identity),
                        store: &store,
                        tokens: &tokens,
                        policy: policy(&config, mailbox),
                        outbox_wake: wake,
                        metrics: &metrics,
                    };
                    mailbox_loop(&ctx, &cancel).await;
                }
                .instrument(span),
            );
        }
    }
}

/// Waits `delay` unless shutdown comes first; false when it did.
async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Sweeps, then waits for new mail (IDLE where offered, else `poll_interval`), forever. Keeps one
/// session open; reconnects with a fresh token before the old one expires; after trouble backs off
/// exponentially with jitter; when an administrator must act, retries only every ten minutes.
async fn mailbox_loop(ctx: &MailboxContext<'_>, cancel: &CancellationToken) {
    let mailbox = ctx.mailbox;
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(300))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let mut session: Option<Session> = None;
    let failure_delay = |e: &CycleError, backoff: &mut backon::ExponentialBackoff| {
        // With the fix for a database failure (disk full, locked, …), for the log and the page.
        let explained = ctx.store.explain_failure(e);
        let failure = Failure {
            source: e.source(),
            needs_admin: e.needs_admin(),
            text: &explained,
        };
        ctx.metrics
            .cycle_failed(&mailbox.name, ctx.folder, &ctx.identity.name, &failure);
        if e.needs_admin() {
            error!(error = %explained, "mailbox stopped until an administrator fixes this; retrying in 10 minutes");
            Duration::from_secs(600)
        } else {
            let delay = backoff.next().unwrap_or(Duration::from_secs(300));
            warn!(error = %explained, retry_in_ms = delay.as_millis() as u64, "mailbox trouble; will retry");
            delay
        }
    };

    while !cancel.is_cancelled() {
        if let Some(current) = session.take() {
            if Instant::now() >= current.token_renew_at {
                info!("access token due for renewal; reconnecting with a fresh one");
                current.conn.logout().await;
            } else {
                session = Some(current);
            }
        }
        let mut current = match session.take() {
            Some(current) => current,
            None => match login(ctx).await {
                Ok(fresh) => {
                    ctx.metrics.logged_in(&mailbox.name, ctx.folder);
                    fresh
                }
                Err(e) => {
                    let delay = failure_delay(&e, &mut backoff);
                    if !pause(delay, cancel).await {
                        break;
                    }
                    continue;
                }
            },
        };

        let was_fresh = current.fresh;
        let sweep_started = Instant::now();
        let swept = sweep(ctx, &mut current, cancel).await;
        if let Ok(report) = &swept {
            ctx.metrics
                .sweep_done(&mailbox.name, ctx.folder, report, sweep_started.elapsed());
        }
        if let Err(e) = swept {
            // The connection's state is unknown after an error: drop it.
            if !was_fresh && !e.needs_admin() && !matches!(e, CycleError::Store(_)) {
                info!(error = %e, "sweep failed on a reused connection; reconnecting at once");
                continue;
            }
            let delay = failure_delay(&e, &mut backoff);
            if !pause(delay, cancel).await {
                break;
            }
            continue;
        }
        backoff = new_backoff();

        // Wait for the next sweep: never past the token's renewal, never longer than poll_interval.
        let until_renewal = current
            .token_renew_at
            .saturating_duration_since(Instant::now());
        let wait = mailbox.poll_interval.min(until_renewal);
        if mailbox.idle && current.conn.has_capability("IDLE") {
            let Session {
                conn,
                token_renew_at,
                folders,
                fresh,
            } = current;
            match conn.idle(wait.min(mailbox.idle_interval), cancel).await {
                Ok((conn, outcome)) => {
                    debug!(?outcome, "IDLE ended");
                    session = Some(Session {
                        conn,
                        token_renew_at,
                        folders,
                        fresh,
                    });
                    if outcome == IdleOutcome::Shutdown {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "connection lost while idling; reconnecting");
                    if !pause(backoff.next().unwrap_or(Duration::from_secs(1)), cancel).await {
                        break;
                    }
                }
            }
        } else {
            session = Some(current);
            if !pause(wait, cancel).await {
                break;
            }
        }
    }
    if let Some(current) = session {
        current.conn.logout().await;
    }
    info!("mailbox stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(uid: u32, size: u64) -> MessageSummary {
        MessageSummary {
            uid: Uid(uid),
            size,
            internal_date_ms: None,
            seen: false,
        }
    }

    #[test]
    fn batches_respect_bytes_and_count_and_skip_oversized_sizes() {
        let listed: Vec<_> = [
            (1, 40),
            (2, 40),
            (3, 40),
            (4, 500),
            (5, 10),
            (6, 10),
            (7, 10),
        ]
        .iter()
        .map(|(u, s)| summary(*u, *s))
        .collect();
        let uids = |b: &[MessageSummary]| b.iter().map(|m| m.uid.0).collect::<Vec<_>>();
        // 100-byte budget, at most 3 messages; 500 bytes is above max_message_bytes = 200.
        let got: Vec<Vec<u32>> = batches(&listed, 100, 3, 200)
            .into_iter()
            .map(uids)
            .collect();
        assert_eq!(got, vec![vec![1, 2], vec![3, 4, 5], vec![6, 7]]);
        // A single message larger than the budget is a batch of its own.
        let big = [summary(1, 150), summary(2, 10)];
        let got: Vec<Vec<u32>> = batches(&big, 100, 10, 1000).into_iter().map(uids).collect();
        assert_eq!(got, vec![vec![1], vec![2]]);
        assert!(batches(&[], 100, 10, 1000).is_empty());
    }
}
