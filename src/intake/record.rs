//! The batch record: every message of a downloaded batch decided ([`crate::ingest::decide`]) and
//! written with the folder's checkpoint in one transaction. [`write_decision`] turns one decision
//! into its rows; the worker and `mailintake reprocess` both use it.

use std::collections::HashSet;

use tracing::{Instrument, debug, info, info_span, warn};

use super::acknowledge::{acknowledge_decision, notify_quarantined};
use super::facts::{SENDER_WINDOW_MS, batch_questions, facts_for};
use super::{CycleError, MailboxContext};
use crate::config::{Disposal, Mailbox, Mode};
use crate::failpoint::{self, Point};
use crate::ingest::{
    self, AutoKind, Decision, Facts, IgnoreReason, OutboxBounce, ParseFailure, ParsedMail,
    QuarantineReason,
};
use crate::mail_source::{Disposition, MessageSummary, Uid};
use crate::report::CycleReport;
use crate::store::{
    Batch, FolderState, FollowUpOn, ImapLocation, QuarantineEnvelope, StoreError, StuckMessage,
};
use crate::time::now_ms;

/// How one message of a batch is to be handled.
pub enum Work {
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
        parsed: Option<Result<Box<ParsedMail>, ParseFailure>>,
        release_key: Option<String>,
    },
}

/// A batch downloaded and parsed, ready for its transaction: the messages that still need an
/// outcome, with what to do with each.
pub struct Prepared<'a> {
    pub work: Vec<(&'a MessageSummary, Work)>,
    pub bytes_fetched: u64,
    /// Messages the server refused when they were asked for alone: no outcome, they wait (their
    /// records as they are after this failure).
    pub waiting: Vec<StuckMessage>,
}

/// The dispositions a mailbox gives its outcomes.
pub struct Dispositions {
    /// For tickets, follow-ups, duplicates and ignored mail.
    pub normal: Disposition,
    /// For quarantined mail.
    pub quarantine: Disposition,
}

impl Dispositions {
    /// The mailbox's own: per `dispose`, or none at all in shadow mode.
    pub fn of(mailbox: &Mailbox) -> Dispositions {
        Dispositions {
            normal: normal_disposition(mailbox),
            quarantine: quarantine_disposition(mailbox),
        }
    }

    /// Nothing is done on the server (mail that is not in a watched folder any more).
    pub fn none() -> Dispositions {
        Dispositions {
            normal: Disposition::None,
            quarantine: Disposition::None,
        }
    }
}

/// `seen`, `move:<folder>` or `delete` as the mailbox says, or `none` in shadow mode.
fn normal_disposition(mailbox: &Mailbox) -> Disposition {
    match (&mailbox.mode, &mailbox.dispose) {
        (Mode::Shadow, _) => Disposition::None,
        (Mode::Normal, Disposal::MarkSeen) => Disposition::Seen,
        (Mode::Normal, Disposal::Move { folder }) => Disposition::Move(folder.clone()),
        (Mode::Normal, Disposal::Delete) => Disposition::Delete,
    }
}

/// The move to the quarantine folder, or `none` in shadow mode.
pub(crate) fn quarantine_disposition(mailbox: &Mailbox) -> Disposition {
    match mailbox.mode {
        Mode::Shadow => Disposition::None,
        Mode::Normal => Disposition::Quarantine(mailbox.quarantine_folder.clone()),
    }
}

/// What became of one message; logged once its batch is committed, so that a batch decided
/// again after a conflict logs only what it finally recorded.
struct Recorded {
    uid: Uid,
    size: u64,
    message_id: String,
    disposition: Disposition,
    note: Note,
}

/// What was written for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    LeftBeforeCutoff,
    NewTicket {
        ticket_id: i64,
        reference: String,
        subject: String,
        auto_kind: Option<AutoKind>,
    },
    FollowUp {
        ticket_id: i64,
        reopen: bool,
        auto_kind: Option<AutoKind>,
    },
    Duplicate {
        ticket_id: i64,
    },
    Ignored {
        /// As stored: the code, a colon, the sentence.
        reason: String,
    },
    Quarantined {
        quarantine_id: i64,
        code: &'static str,
        detail: String,
        downloaded: bool,
    },
}

impl Note {
    /// Counts the outcome in a sweep's report.
    fn count(&self, report: &mut CycleReport) {
        match self {
            Note::LeftBeforeCutoff | Note::Ignored { .. } => report.n_ignored += 1,
            Note::NewTicket { .. } => report.n_tickets += 1,
            Note::FollowUp { .. } => report.n_follow_ups += 1,
            Note::Duplicate { .. } => report.n_duplicates += 1,
            Note::Quarantined { .. } => report.n_quarantined += 1,
        }
    }
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
                auto_kind,
            } => info!(
                ticket_id,
                %reference,
                %subject,
                auto_kind = auto_kind.map(AutoKind::as_str),
                "new ticket"
            ),
            Note::FollowUp {
                ticket_id,
                reopen,
                auto_kind,
            } => info!(
                ticket_id,
                reopen,
                auto_kind = auto_kind.map(AutoKind::as_str),
                "follow-up on an existing ticket"
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

/// Where `summary` sits: the key of its `imap_messages` row.
pub(crate) fn location<'a>(
    ctx: &MailboxContext<'a>,
    state: &FolderState,
    summary: &MessageSummary,
) -> ImapLocation<'a> {
    ImapLocation {
        mailbox: &ctx.mailbox.name,
        folder: ctx.folder,
        uidvalidity: state.uidvalidity,
        uid: summary.uid,
        size: summary.size,
        internal_date_ms: summary.internal_date_ms,
    }
}

/// The UIDs from `first` to `last` of the folder whose outcome is recorded already.
pub(crate) async fn recorded_uids(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    first: Uid,
    last: Uid,
) -> Result<HashSet<Uid>, StoreError> {
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
///
/// A batch the database refuses with a data error (see [`crate::store::FailureKind`]: the values
/// of some message, not the database's state) is taken again one message at a time, each in a
/// transaction of its own: the message that fails alone is quarantined (`unstorable`, with its
/// raw bytes and the database's words), and the mail after it comes in. Any other failure is
/// returned as it is, for the folder task to retry with backoff; it never quarantines mail.
pub async fn record_batch(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    mut prepared: Prepared<'_>,
) -> Result<(Vec<(Uid, Disposition)>, CycleReport), CycleError> {
    // Every statement of the batch carries `batch_messages` (tests/it/statements.rs counts them).
    let span = info_span!("batch", batch_messages = prepared.work.len());
    let refusal = match record_together(ctx, state, &mut prepared.work)
        .instrument(span)
        .await
    {
        Err(CycleError::Store(e)) => match e.data_refusal() {
            Some(refusal) => refusal,
            None => return Err(e.into()),
        },
        done => return done,
    };
    if prepared.work.len() == 1 {
        let (summary, item) = prepared.work.pop().expect("one message");
        return set_aside_unstorable(ctx, state, summary, &item, &refusal).await;
    }
    warn!(
        n = prepared.work.len(),
        error = %refusal,
        "the database refused this batch's data; taking it one message at a time to find the message"
    );
    let mut to_dispose = Vec::new();
    let mut report = CycleReport::default();
    for item in prepared.work.drain(..) {
        let mut one = vec![item];
        let (disposed, counted) = match record_together(ctx, state, &mut one).await {
            Err(CycleError::Store(e)) => match e.data_refusal() {
                Some(refusal) => match one.pop() {
                    Some((summary, item)) => {
                        set_aside_unstorable(ctx, state, summary, &item, &refusal).await?
                    }
                    // Recorded by another worker meanwhile.
                    None => continue,
                },
                None => return Err(e.into()),
            },
            done => done?,
        };
        to_dispose.extend(disposed);
        report.add(&counted);
    }
    Ok((to_dispose, report))
}

/// Decides `work` and records it in one transaction; after a conflict with another worker,
/// decides again what that worker did not record (up to [`CONFLICT_ATTEMPTS`] times).
async fn record_together(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    work: &mut Vec<(&MessageSummary, Work)>,
) -> Result<(Vec<(Uid, Disposition)>, CycleReport), CycleError> {
    let mailbox = ctx.mailbox;
    for attempt in 1..=CONFLICT_ATTEMPTS {
        if attempt > 1
            && let (Some(first), Some(last)) = (work.first(), work.last())
        {
            // Whatever the other worker recorded is its to dispose of.
            let recorded = recorded_uids(ctx, state, first.0.uid, last.0.uid).await?;
            work.retain(|(m, _)| !recorded.contains(&m.uid));
        }
        if work.is_empty() {
            return Ok((Vec::new(), CycleReport::default()));
        }
        let mut report = CycleReport::default();
        let mut recorded = Vec::with_capacity(work.len());
        let mut tx = ctx.store.begin().await?;
        // In a fleet the batch commits only under the folder's lease (and its epoch).
        if let Some(tenure) = ctx.tenure {
            tx.fence(&tenure.lease());
        }
        // The window of the per-sender limit, the same for the whole batch.
        let since_ms = now_ms() - SENDER_WINDOW_MS;
        // References to our messages under the Message-ID Exchange gave them read as ours
        // before anything is asked about them (one lookup for the batch).
        let ids: Vec<String> = work
            .iter()
            .filter_map(|(_, item)| match item {
                Work::Raw {
                    parsed: Some(Ok(mail)),
                    ..
                } => Some(mail),
                _ => None,
            })
            .flat_map(|mail| mail.referenced_and_own_ids().map(str::to_string))
            .collect();
        tx.sent_ids(ids.iter().map(String::as_str)).await?;
        for (_, item) in work.iter_mut() {
            if let Work::Raw {
                parsed: Some(Ok(mail)),
                ..
            } = item
            {
                tx.name_our_messages(mail).await?;
            }
        }
        let parsed = work.iter().filter_map(|(_, item)| match item {
            Work::Raw {
                parsed: Some(Ok(mail)),
                ..
            } => Some(&**mail),
            _ => None,
        });
        tx.prefetch(&batch_questions(
            &mailbox.name,
            &mailbox.acknowledge,
            parsed,
            since_ms,
        ))
        .await?;
        let mut conflict = false;
        for (summary, item) in work.iter_mut() {
            let at = location(ctx, state, summary);
            let message = Message {
                state,
                at: &at,
                summary,
                since_ms,
            };
            match record_message(ctx, &mut tx, &message, item, &mut report).await {
                Ok(done) => {
                    done.note.count(&mut report);
                    recorded.push(done);
                }
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
            failpoint::hit(Point::BeforeCommit);
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
        let received_ms: Vec<i64> = work
            .iter()
            .filter(|(_, item)| !matches!(item, Work::Old))
            .filter_map(|(summary, _)| summary.internal_date_ms)
            .collect();
        return Ok(committed_batch(ctx, &received_ms, recorded, report));
    }
    Err(StoreError::Conflict.into())
}

/// What follows a batch's commit: the metrics, the outbox sender woken, the outcomes logged;
/// returns the dispositions now due.
fn committed_batch(
    ctx: &MailboxContext<'_>,
    received_ms: &[i64],
    recorded: Vec<Recorded>,
    report: CycleReport,
) -> (Vec<(Uid, Disposition)>, CycleReport) {
    ctx.metrics
        .batch_committed(&ctx.mailbox.name, received_ms, now_ms());
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
    (to_dispose, report)
}

/// Quarantines a message the database refused to store (`refusal`: its words), with its raw
/// bytes when they were downloaded, in a transaction of its own. It is keyed by its place, not
/// its Message-ID (which may be what the database refused), and stored with From and Subject
/// when the database takes them, else without.
async fn set_aside_unstorable(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    summary: &MessageSummary,
    item: &Work,
    refusal: &str,
) -> Result<(Vec<(Uid, Disposition)>, CycleReport), CycleError> {
    let mailbox = ctx.mailbox;
    let at = location(ctx, state, summary);
    let (raw, envelope) = match item {
        Work::Raw { raw, .. } => (
            Some(raw.as_slice()),
            ingest::parse(raw).map(|mail| (mail.from.map(|p| p.address), mail.subject)),
        ),
        Work::TooLarge(header) => {
            let envelope = envelope_from_header(header, summary);
            (
                None,
                Ok((envelope.from, envelope.subject.unwrap_or_default())),
            )
        }
        Work::Old => (None, Err(ingest::ParseFailure::Empty)),
    };
    let message_id = format!(
        "uid-{}-{}@unstorable.mailintake.invalid",
        state.uidvalidity, summary.uid.0
    );
    let with_names = envelope.ok().map(|(from, subject)| QuarantineEnvelope {
        message_id: message_id.clone(),
        from,
        subject: Some(subject),
    });
    let bare = QuarantineEnvelope {
        message_id: message_id.clone(),
        ..QuarantineEnvelope::default()
    };
    // The database's words may carry text it cannot store either: the bare attempt has them
    // in ASCII.
    let ascii: String = refusal
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    let attempts = with_names
        .into_iter()
        .map(|envelope| (envelope, refusal))
        .chain([(bare, ascii.as_str())]);
    let disposition = quarantine_disposition(mailbox);
    let mut last_error = None;
    for (envelope, error) in attempts {
        let reason = QuarantineReason::Unstorable {
            error: error.to_string(),
        };
        let mut tx = ctx.store.begin().await?;
        if let Some(tenure) = ctx.tenure {
            tx.fence(&tenure.lease());
        }
        let written = match tx
            .quarantine(&at, &envelope, &reason, raw, &disposition)
            .await
        {
            Ok(id) => tx.commit().await.map(|()| id),
            Err(e) => Err(e),
        };
        match written {
            Ok(quarantine_id) => {
                let done = Recorded {
                    uid: summary.uid,
                    size: summary.size,
                    message_id: message_id.clone(),
                    disposition: disposition.clone(),
                    note: Note::Quarantined {
                        quarantine_id,
                        code: reason.code(),
                        detail: reason.detail(),
                        downloaded: raw.is_some(),
                    },
                };
                let mut report = CycleReport::default();
                done.note.count(&mut report);
                let received: Vec<i64> = summary.internal_date_ms.into_iter().collect();
                return Ok(committed_batch(ctx, &received, vec![done], report));
            }
            // Another worker recorded it first; disposing of it is that worker's.
            Err(StoreError::Conflict) => return Ok((Vec::new(), CycleReport::default())),
            Err(e) if e.data_refusal().is_some() => last_error = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_error.unwrap_or(StoreError::Conflict).into())
}

/// Where one message of a batch sits, and the batch's facts about time.
struct Message<'a> {
    state: &'a FolderState,
    at: &'a ImapLocation<'a>,
    summary: &'a MessageSummary,
    /// The start of the per-sender window.
    since_ms: i64,
}

/// Decides and records one message inside the batch's transaction. `Conflict` (another worker
/// recorded it meanwhile) leaves the transaction to be dropped: see [`Batch`].
async fn record_message(
    ctx: &MailboxContext<'_>,
    tx: &mut Batch,
    message: &Message<'_>,
    item: &mut Work,
    report: &mut CycleReport,
) -> Result<Recorded, CycleError> {
    let mailbox = ctx.mailbox;
    let at = message.at;
    let summary = message.summary;
    let recorded = |message_id: &str, disposition: Disposition, note: Note| Recorded {
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
                &IgnoreReason::BeforeFirstStart.detail(),
                &Disposition::None,
            );
            return Ok(recorded(
                &message_id,
                Disposition::None,
                Note::LeftBeforeCutoff,
            ));
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
            notify_quarantined(ctx, tx, message.state, summary, header, report).await?;
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

    let mut parsed = parsed;
    // Batched, this asks nothing more (`record_together` looked the batch's IDs up).
    let sent_by_us = match &mut parsed {
        Ok(mail) => tx.name_our_messages(mail).await?,
        Err(_) => None,
    };
    let facts = match &parsed {
        Ok(mail) => {
            let mut facts = facts_for(
                tx,
                mail,
                raw,
                &mailbox.name,
                &mailbox.acknowledge,
                message.since_ms,
            )
            .await?;
            facts.sent_by_us = sent_by_us;
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
    let decision = ingest::decide(parsed, &facts, &ctx.policy);
    let written = write_decision(
        tx,
        at,
        &decision,
        &envelope,
        raw,
        keep_raw,
        &Dispositions::of(mailbox),
        &mailbox.acknowledge,
    )
    .await?;
    let new_ticket_id = match &written.note {
        Note::NewTicket { ticket_id, .. } => Some(*ticket_id),
        _ => None,
    };
    acknowledge_decision(
        ctx,
        tx,
        at,
        message.state,
        summary,
        &decision,
        new_ticket_id,
        report,
    )
    .await?;
    let message_id = match &decision {
        Decision::NewTicket { mail, .. } | Decision::FollowUp { mail, .. } => &mail.message_id,
        Decision::Duplicate { .. } | Decision::Ignore { .. } | Decision::Quarantine(_) => {
            &envelope.message_id
        }
    };
    Ok(recorded(message_id, written.disposition, written.note))
}

/// What [`write_decision`] wrote, and what is then to be done on the server.
pub struct Written {
    pub disposition: Disposition,
    pub note: Note,
}

/// Writes the rows of one decision into the batch's transaction at `at`: a new ticket, a
/// follow-up, a duplicate, ignored mail (never deleted: nothing of it is stored but this record)
/// or a quarantine row with the raw bytes. `envelope` names the message where no parsed mail is
/// stored (duplicates, ignored and quarantined mail); a new ticket is counted for the per-sender
/// limit under the key `ack` gives it ([`crate::reply::sender_limit_key`]).
#[allow(clippy::too_many_arguments)]
pub async fn write_decision(
    tx: &mut Batch,
    at: &ImapLocation<'_>,
    decision: &Decision,
    envelope: &QuarantineEnvelope,
    raw: &[u8],
    keep_raw: Option<&[u8]>,
    dispositions: &Dispositions,
    ack: &crate::config::Acknowledge,
) -> Result<Written, StoreError> {
    let written = match decision {
        Decision::NewTicket {
            mail,
            related,
            auto_kind,
        } => {
            let disposition = dispositions.normal.clone();
            let (ticket_id, reference) = tx
                .new_ticket(
                    at,
                    mail,
                    crate::reply::sender_limit_key(ack, mail).as_deref(),
                    *related,
                    auto_kind.map(AutoKind::as_str),
                    keep_raw,
                    &disposition,
                )
                .await?;
            let note = Note::NewTicket {
                ticket_id,
                reference,
                subject: mail.subject.clone(),
                auto_kind: *auto_kind,
            };
            Written { disposition, note }
        }
        Decision::FollowUp {
            mail,
            ticket_id,
            reopen,
            auto_kind,
            bounced,
        } => {
            let disposition = dispositions.normal.clone();
            let on = FollowUpOn {
                ticket_id: *ticket_id,
                reopen: *reopen,
                auto_kind: auto_kind.map(AutoKind::as_str),
            };
            tx.follow_up(at, mail, on, keep_raw, &disposition).await?;
            mark_bounced(tx, bounced.as_ref()).await?;
            let note = Note::FollowUp {
                ticket_id: *ticket_id,
                reopen: *reopen,
                auto_kind: *auto_kind,
            };
            Written { disposition, note }
        }
        Decision::Duplicate { ticket_id } => {
            let disposition = dispositions.normal.clone();
            tx.duplicate(at, &envelope.message_id, *ticket_id, &disposition);
            let note = Note::Duplicate {
                ticket_id: *ticket_id,
            };
            Written { disposition, note }
        }
        Decision::Ignore { reason, bounced } => {
            // Never deleted: nothing of it is stored but this record.
            let disposition = match &dispositions.normal {
                Disposition::Delete => Disposition::Seen,
                other => other.clone(),
            };
            let detail = reason.detail();
            tx.ignored(at, &envelope.message_id, &detail, &disposition);
            mark_bounced(tx, bounced.as_ref()).await?;
            let note = Note::Ignored { reason: detail };
            Written { disposition, note }
        }
        Decision::Quarantine(reason) => {
            let disposition = dispositions.quarantine.clone();
            let quarantine_id = tx
                .quarantine(at, envelope, reason, Some(raw), &disposition)
                .await?;
            let note = Note::Quarantined {
                quarantine_id,
                code: reason.code(),
                detail: reason.detail(),
                downloaded: true,
            };
            Written { disposition, note }
        }
    };
    Ok(written)
}

/// Marks the outbox row a bounce is about as `bounced`, in the batch's transaction (nothing when
/// no row of ours has that Message-ID, or it was never sent).
async fn mark_bounced(tx: &mut Batch, bounce: Option<&OutboxBounce>) -> Result<(), StoreError> {
    if let Some(bounce) = bounce {
        let marked = tx
            .outbox_bounced(&bounce.message_id, &bounce.reason)
            .await?;
        debug!(
            message_id = bounce.message_id.as_str(),
            marked, "a delivery status notification reports our message undelivered"
        );
    }
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
