//! One pass over a folder: complete pending dispositions, list what is above the checkpoint, take
//! it in batches (downloaded and parsed while the previous batch is written), and dispose of each
//! batch once its outcomes are committed; now and then, reconcile below the checkpoint
//! (`reconcile`).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use super::reconcile::reconcile_if_due;
use super::record::{
    Prepared, Work, envelope_from_header, location, quarantine_disposition, record_batch,
    recorded_uids,
};
use super::session::Session;
use super::{CycleError, MailboxContext};
use crate::config::{FirstStart, Mode};
use crate::ingest::{self, QuarantineReason};
use crate::mail_source::{Body, Disposition, MailSource, MessageSummary, SourceErrorKind, Uid};
use crate::report::CycleReport;
use crate::store::{FolderState, QuarantineEnvelope, StoreError};
use crate::time::now_ms;

/// Consecutive failures of the server to deliver one message before it is set aside unread.
const STUCK_ATTEMPTS: i64 = 3;

/// One pass over the mailbox's folder: complete pending dispositions, then ingest every message
/// above the checkpoint. Stops early (between batches) when `shutdown` is cancelled.
pub async fn sweep<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let mailbox = ctx.mailbox;
    let mut report = CycleReport::default();
    let read_only = mailbox.mode == Mode::Shadow;
    let selected = session.source.open(ctx.folder, read_only).await?;
    let state = checkpoint(ctx, session, selected.uidvalidity, selected.uid_next).await?;

    let pending = ctx
        .store
        .pending_dispositions(&mailbox.name, ctx.folder, state.uidvalidity)
        .await?;
    // Dispositions the server refused are tried again here; whether any is still refused is
    // read back at the end for the status page, `/readyz` and the metric.
    let mut refusals = pending.iter().any(|p| p.refused);
    if !pending.is_empty() {
        let items: Vec<(Uid, String)> = pending
            .into_iter()
            .map(|p| (p.uid, p.disposition))
            .collect();
        refusals |= dispose_stored(ctx, session, state.uidvalidity, &items).await?;
        report.n_completed += items.len();
    }

    let listed = session.source.list_above(state.last_uid).await?;
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
            && batch[0].uid == *uid
            && *attempts >= STUCK_ATTEMPTS
        {
            let reason = QuarantineReason::Unreadable {
                attempts: *attempts,
                error: error.lines().next().unwrap_or("").to_string(),
            };
            refusals |=
                set_aside_unreadable(ctx, session, &state, &batch[0], reason, &mut report).await?;
            ctx.store.clear_stuck(&mailbox.name, ctx.folder).await?;
            continue;
        }
        let prepared = match next.take() {
            Some(prepared) => prepared,
            None => prepare_batch(ctx, &mut session.source, &state, batch).await,
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // The server failed while delivering these messages: remember where. (A lost
                // database is not the message's fault and is not counted.)
                if let CycleError::Source(source_error) = &e {
                    let _ = ctx
                        .store
                        .note_stuck(
                            &mailbox.name,
                            ctx.folder,
                            batch[0].uid,
                            &source_error.to_string(),
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
        let source = &mut session.source;
        let started = Instant::now();
        let (recorded, prefetched) = tokio::join!(
            async {
                let recorded = record_batch(ctx, &state, prepared).await;
                (recorded, started.elapsed())
            },
            async {
                match prefetch {
                    Some(following) => Some((
                        prepare_batch(ctx, source, &state, following).await,
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
        refusals |= dispose_all(ctx, session, state.uidvalidity, &to_dispose).await?;
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
            .is_some_and(|(uid, _, _)| batch.iter().any(|m| m.uid == *uid))
        {
            ctx.store.clear_stuck(&mailbox.name, ctx.folder).await?;
        }
    }
    if !shutdown.is_cancelled() {
        refusals |= reconcile_if_due(ctx, session, &state, &mut report).await?;
    }
    if refusals {
        report.refused = ctx
            .store
            .refused_dispositions(&mailbox.name, ctx.folder, state.uidvalidity)
            .await?;
        for refused in &report.refused {
            warn!("{}", refused.describe());
        }
    }
    session.fresh = false;
    info!(%report, "sweep done");
    Ok(report)
}

/// Records a message the server keeps failing to deliver as quarantined (unread) and moves it to
/// the quarantine folder, so that the mail after it is not held up. Nothing is lost: it stays in
/// that folder and `mailintake quarantine release` brings it back. Returns whether the server
/// refused the move (see [`dispose_all`]).
async fn set_aside_unreadable<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    state: &FolderState,
    message: &MessageSummary,
    reason: QuarantineReason,
    report: &mut CycleReport,
) -> Result<bool, CycleError> {
    let mailbox = ctx.mailbox;
    let at = location(ctx, state, message);
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
        Err(StoreError::Conflict) => return Ok(false),
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
    .await
}

/// The folder's checkpoint, created on the first start (following the mailbox's `first_start`
/// policy) and reset when the server changed UIDVALIDITY. Both record the first-start mark, the
/// folder's UIDNEXT then: mail with a UID from there on arrived afterwards and is ingested
/// whatever its date; the date cutoff only decides about the UIDs below it.
async fn checkpoint<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    uidvalidity: u32,
    uid_next: Option<u32>,
) -> Result<FolderState, CycleError> {
    let mailbox = ctx.mailbox;
    let stored = ctx.store.folder_state(&mailbox.name, ctx.folder).await?;
    if let Some(state) = stored
        && state.uidvalidity == uidvalidity
    {
        return Ok(state);
    }
    // INTERNALDATE has whole seconds: mail arriving in this very second counts as new.
    let first_sweep_ms = now_ms() / 1000 * 1000;
    // The UID the next message to arrive gets; where the server does not say, one above the
    // highest UID there now.
    let first_uid_next = match uid_next {
        Some(next) => Uid(next),
        None => session
            .source
            .list_above(Uid(0))
            .await?
            .last()
            .map_or(Uid(1), |m| Uid(m.uid.0.saturating_add(1))),
    };
    let state = match stored {
        Some(previous) => {
            // The server renumbered the folder. Every message is listed again and recognised by
            // its Message-ID and fingerprint, so nothing is ingested twice. The first-start
            // cutoff still applies, by date, to every message there now (which mail arrived after
            // the first start cannot be told any more): the one exception to "by arrival".
            warn!(
                old = previous.uidvalidity,
                new = uidvalidity,
                "UIDVALIDITY changed; resynchronising by Message-ID"
            );
            FolderState {
                uidvalidity,
                last_uid: Uid(0),
                ingest_after_ms: previous.ingest_after_ms,
                ack_after_ms: previous.ack_after_ms,
                first_uid_next: Some(first_uid_next),
            }
        }
        None => match mailbox.first_start {
            FirstStart::All => FolderState {
                uidvalidity,
                last_uid: Uid(0),
                ingest_after_ms: None,
                ack_after_ms: Some(first_sweep_ms),
                first_uid_next: Some(first_uid_next),
            },
            FirstStart::Now => {
                // Everything already there stays untouched.
                let last_uid = Uid(first_uid_next.0.saturating_sub(1));
                info!(
                    last_uid = last_uid.0,
                    "first start with first_start = \"now\": existing mail is left untouched"
                );
                FolderState {
                    uidvalidity,
                    last_uid,
                    ingest_after_ms: Some(first_sweep_ms),
                    ack_after_ms: Some(first_sweep_ms),
                    first_uid_next: Some(first_uid_next),
                }
            }
            FirstStart::Since(cutoff) => FolderState {
                uidvalidity,
                last_uid: Uid(0),
                ingest_after_ms: Some(cutoff),
                ack_after_ms: Some(first_sweep_ms),
                first_uid_next: Some(first_uid_next),
            },
        },
    };
    ctx.store
        .set_folder_state(&mailbox.name, ctx.folder, state)
        .await?;
    Ok(state)
}

/// Mail that was in the folder at the first start (a UID below the first-start mark) and was
/// received before the cutoff: left alone. Mail that arrived later is ingested however old it is
/// (released from Junk, dragged back by an agent, recovered from deleted items).
fn is_left_from_before_first_start(state: &FolderState, message: &MessageSummary) -> bool {
    let there_at_first_start = state.first_uid_next.is_none_or(|mark| message.uid < mark);
    match (state.ingest_after_ms, message.internal_date_ms) {
        (Some(cutoff), Some(received)) => there_at_first_start && received < cutoff,
        _ => false,
    }
}

/// Splits a listing into batches of at most `max_messages` whose listed sizes add up to at most
/// `max_bytes` (a single larger message is a batch of its own). Oversized messages count nothing:
/// their bodies are never downloaded.
pub(super) fn batches(
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

/// The first phase of a batch, which needs the session but writes nothing (so it runs while the
/// previous batch is being written): which messages still need an outcome, their bodies in one
/// round trip (each capped at `max_message_bytes`; header fields only for oversized mail),
/// parsed on a blocking thread.
#[instrument(skip_all, fields(first_uid = batch[0].uid.0, n = batch.len()), err)]
pub(super) async fn prepare_batch<'a, S: MailSource>(
    ctx: &MailboxContext<'_>,
    source: &mut S,
    state: &FolderState,
    batch: &'a [MessageSummary],
) -> Result<Prepared<'a>, CycleError> {
    let mailbox = ctx.mailbox;
    let first = batch[0].uid;
    let last = batch[batch.len() - 1].uid;
    let mut prepared = Prepared {
        work: Vec::with_capacity(batch.len()),
        bytes_fetched: 0,
    };

    // Outcomes recorded before (their pending dispositions were completed at the sweep's start).
    let recorded = recorded_uids(ctx, state, first, last).await?;
    let todo: Vec<&MessageSummary> = batch
        .iter()
        .filter(|m| !recorded.contains(&m.uid))
        .collect();
    if todo.is_empty() {
        return Ok(prepared);
    }

    let is_old = |m: &MessageSummary| is_left_from_before_first_start(state, m);
    let to_fetch: Vec<Uid> = todo
        .iter()
        .filter(|m| !is_old(m) && m.size <= mailbox.max_message_bytes)
        .map(|m| m.uid)
        .collect();
    let mut bodies: HashMap<Uid, Body> = source
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
                // Expunged since the listing: there is nothing to record.
                None if to_fetch.contains(&message.uid) => {
                    debug!(uid = message.uid.0, "expunged before its body was read");
                    continue;
                }
                // Listed too large, or its announced size was an estimate (Exchange) and it is
                // larger: record it from its header fields only, unless an operator released it
                // with a higher limit.
                found_large => {
                    if found_large.is_some() {
                        prepared.bytes_fetched += mailbox.max_message_bytes + 1;
                    }
                    let header = source.fetch_identifying_headers(message.uid).await?;
                    let key = envelope_from_header(&header, message).message_id;
                    match ctx.store.unused_release(&mailbox.name, &key).await? {
                        Some(limit) => {
                            let cap = limit.map_or(mailbox.max_message_bytes, |l| l.max(0) as u64);
                            match source.fetch_bodies(&[message.uid], cap).await?.pop() {
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

/// Completes the dispositions a crash left pending or the server refused, as they were stored. A
/// stored text that is no known disposition is logged and the message left in place. Returns
/// whether any was refused (again).
async fn dispose_stored<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    uidvalidity: u32,
    items: &[(Uid, String)],
) -> Result<bool, CycleError> {
    let mut parsed = Vec::with_capacity(items.len());
    for (uid, text) in items {
        match text.parse::<Disposition>() {
            Ok(disposition) => parsed.push((*uid, disposition)),
            Err(e) => {
                error!(disposition = %text, error = %e, "unknown disposition recorded; leaving the message in place");
                parsed.push((*uid, Disposition::None));
            }
        }
    }
    dispose_all(ctx, session, uidvalidity, &parsed).await
}

/// Performs the dispositions of committed outcomes, one command per kind and UID set, then
/// records them as done. A kind the server refuses (a tagged NO: a full or unwritable target
/// folder, a missing right) does not stop the folder: its messages are recorded as refused and
/// stay pending, to be tried again by the next sweep; the others are done. Returns whether any
/// was refused.
pub(super) async fn dispose_all<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    uidvalidity: u32,
    items: &[(Uid, Disposition)],
) -> Result<bool, CycleError> {
    let mailbox = &ctx.mailbox.name;
    let mut groups: BTreeMap<&Disposition, Vec<Uid>> = BTreeMap::new();
    for (uid, disposition) in items {
        groups.entry(disposition).or_default().push(*uid);
    }
    let mut done = Vec::with_capacity(items.len());
    let mut any_refused = false;
    for (disposition, uids) in groups {
        match session.source.dispose(&uids, disposition).await {
            Ok(()) => done.extend(uids),
            Err(e) if e.kind() == SourceErrorKind::Refused => {
                warn!(
                    %disposition,
                    n = uids.len(),
                    error = %e,
                    "the server refuses this disposition; the messages stay where they are and are tried again next sweep"
                );
                ctx.store
                    .note_refused_disposition(
                        mailbox,
                        ctx.folder,
                        uidvalidity,
                        &uids,
                        &first_line(&e.to_string()),
                    )
                    .await?;
                any_refused = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.store
        .mark_disposed(mailbox, ctx.folder, uidvalidity, &done)
        .await?;
    Ok(any_refused)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
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
    fn only_mail_there_at_the_first_start_is_left_by_date() {
        let state = |first_uid_next| FolderState {
            uidvalidity: 1,
            last_uid: Uid(0),
            ingest_after_ms: Some(10_000),
            ack_after_ms: Some(10_000),
            first_uid_next,
        };
        let message = |uid, received| MessageSummary {
            internal_date_ms: Some(received),
            ..summary(uid, 10)
        };
        let marked = state(Some(Uid(5)));
        // There at the first start: by date.
        assert!(is_left_from_before_first_start(&marked, &message(4, 9_999)));
        assert!(!is_left_from_before_first_start(
            &marked,
            &message(4, 10_000)
        ));
        // Arrived afterwards: ingested however old.
        assert!(!is_left_from_before_first_start(&marked, &message(5, 1)));
        // Without a mark (a row from before the mark existed), every UID goes by date.
        assert!(is_left_from_before_first_start(
            &state(None),
            &message(500, 1)
        ));
        // `first_start = "all"` has no cutoff.
        let all = FolderState {
            ingest_after_ms: None,
            ..marked
        };
        assert!(!is_left_from_before_first_start(&all, &message(1, 1)));
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
