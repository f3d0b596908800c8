//! A folder's checkpoint (`mailbox_state`: UIDVALIDITY, the last committed UID, the first-start
//! mark, the UIDs to take one at a time), its waiting messages (`stuck_messages`) and its intake
//! ledger (`imap_messages`): what was recorded for which UID, and which IMAP dispositions are
//! still due. Every write a folder task makes here takes its lease as `fence` and is fenced by it
//! as a batch is ([`Store::begin_fenced`]); `None` where no lease is held (`once`, admin
//! commands).

use std::collections::HashSet;

use sqlx::Row;

use super::{FencedWrite, Lease, Outcome, Result, Store};
use crate::mail_source::Uid;
use crate::report::RefusedDispositions;
use crate::time::now_ms;

/// A folder's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderState {
    pub uidvalidity: u32,
    /// The highest UID whose outcome is committed.
    pub last_uid: Uid,
    /// Mail received (INTERNALDATE, unix ms) before this is left alone: the mailbox's first-start
    /// policy, kept so that a UIDVALIDITY resync honours it too.
    pub ingest_after_ms: Option<i64>,
    /// Mail received before this (unix ms; the folder's first sweep) gets no acknowledgement.
    pub ack_after_ms: Option<i64>,
    /// The UIDNEXT seen at the first sweep of this UIDVALIDITY: a UID from here on arrived in the
    /// folder afterwards and is ingested whatever its date; `ingest_after_ms` concerns only the
    /// UIDs below. `None` (a row without the mark): the date cutoff applies to every UID.
    pub first_uid_next: Option<Uid>,
}

/// A message waiting after failures that are its own (`stuck_messages`): tried again alone at the
/// end of every sweep, with the checkpoint held below it, until it comes through, is set aside as
/// unreadable, or is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckMessage {
    pub uidvalidity: u32,
    pub uid: Uid,
    /// Failures in a row that belong to the message.
    pub failures: i64,
    /// Connection losses in a row while it was fetched alone; 0 when the last failure was the
    /// server's refusal on a working session.
    pub connection_losses: i64,
    /// When the first of these failures happened (unix ms): `unreadable_after` counts from here.
    pub first_failed_at_ms: i64,
    pub last_error: String,
}

/// How a message failed when it was fetched alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckFailure {
    /// The server answered, on a session whose other commands succeed, without the message: a
    /// tagged NO/BAD or no body although UID SEARCH still finds it.
    Refused,
    /// The connection was lost (reset, closed, BYE, timed out) while only it was being fetched.
    ConnectionLost,
}

fn stuck_from_row(r: &sqlx::any::AnyRow) -> StuckMessage {
    StuckMessage {
        uidvalidity: r.get::<i64, _>(0) as u32,
        uid: Uid(r.get::<i64, _>(1) as u32),
        failures: r.get(2),
        connection_losses: r.get(3),
        first_failed_at_ms: r.get(4),
        last_error: r.get(5),
    }
}

/// Moves a folder's checkpoint (`$3`, `$4`, UIDVALIDITY `$5`) forward to `$1` (at `$2`), but
/// never to or past a message that waits (`stuck_messages`): the next listing starts below it,
/// so it is tried again, while the mail recorded above it is skipped as recorded. Only forward,
/// and only for the UIDVALIDITY it was recorded under.
pub(super) const MOVE_CHECKPOINT: &str = "UPDATE mailbox_state SET updated_at = $2, last_uid = \
     COALESCE((SELECT MIN(s.uid) - 1 FROM stuck_messages s WHERE s.mailbox = $3 AND s.folder = $4 \
     AND s.uidvalidity = $5 AND s.uid <= $1), $1) \
     WHERE mailbox = $3 AND folder = $4 AND uidvalidity = $5 AND last_uid < \
     COALESCE((SELECT MIN(s.uid) - 1 FROM stuck_messages s WHERE s.mailbox = $3 AND s.folder = $4 \
     AND s.uidvalidity = $5 AND s.uid <= $1), $1)";

/// An `imap_messages` row whose IMAP disposition has not been confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDisposition {
    pub uid: Uid,
    /// What to do: `seen`, `move:<folder>`, `quarantine:<folder>`, `delete` or `none`.
    pub disposition: String,
    /// The server refused it before (see [`Store::note_refused_disposition`]).
    pub refused: bool,
}

/// The outcome recorded for one IMAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    pub row_id: i64,
    pub uid: Uid,
    pub outcome: Outcome,
    pub ticket_id: Option<i64>,
    pub disposed: bool,
    pub disposition: String,
}

/// How many UIDs one `uid IN (…)` statement names.
const UIDS_PER_STATEMENT: usize = 500;

/// UIDs as the list of an `IN (…)`: they are integers, so formatting them into the statement is
/// safe.
fn uid_list(uids: &[Uid]) -> String {
    let uids: Vec<String> = uids.iter().map(Uid::to_string).collect();
    uids.join(", ")
}

impl Store {
    pub async fn folder_state(&self, mailbox: &str, folder: &str) -> Result<Option<FolderState>> {
        let row = sqlx::query(
            "SELECT uidvalidity, last_uid, ingest_after, ack_after, first_uid_next FROM mailbox_state \
             WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| FolderState {
            uidvalidity: r.get::<i64, _>(0) as u32,
            last_uid: Uid(r.get::<i64, _>(1) as u32),
            ingest_after_ms: r.get(2),
            ack_after_ms: r.get(3),
            first_uid_next: r.get::<Option<i64>, _>(4).map(|uid| Uid(uid as u32)),
        }))
    }

    /// The messages of this folder that are waiting after failures of their own, in UID order,
    /// under any UIDVALIDITY (rows of an old one are the caller's to forget).
    pub async fn stuck_messages(&self, mailbox: &str, folder: &str) -> Result<Vec<StuckMessage>> {
        let rows = sqlx::query(
            "SELECT uidvalidity, uid, failures, connection_losses, first_failed_at, last_error \
             FROM stuck_messages WHERE mailbox = $1 AND folder = $2 ORDER BY uidvalidity, uid",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(stuck_from_row).collect())
    }

    /// Counts one more failure of message `uid` that is its own (a new one starts its clock) and
    /// returns the record as it is now.
    #[allow(clippy::too_many_arguments)]
    pub async fn note_stuck(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: Uid,
        failure: StuckFailure,
        error: &str,
        fence: Option<&Lease>,
    ) -> Result<StuckMessage> {
        let mut tx = self.begin_fenced(fence, FencedWrite::StuckMessage).await?;
        let lost = i64::from(failure == StuckFailure::ConnectionLost);
        let row = sqlx::query(
            "INSERT INTO stuck_messages (mailbox, folder, uidvalidity, uid, failures, connection_losses, \
             first_failed_at, last_failed_at, last_error) VALUES ($1, $2, $3, $4, 1, $5, $6, $6, $7) \
             ON CONFLICT (mailbox, folder, uidvalidity, uid) DO UPDATE SET \
             failures = stuck_messages.failures + 1, \
             connection_losses = CASE WHEN excluded.connection_losses = 1 \
             THEN stuck_messages.connection_losses + 1 ELSE 0 END, \
             last_failed_at = excluded.last_failed_at, last_error = excluded.last_error \
             RETURNING uidvalidity, uid, failures, connection_losses, first_failed_at, last_error",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(uidvalidity))
        .bind(i64::from(uid))
        .bind(lost)
        .bind(now_ms())
        .bind(error)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stuck_from_row(&row))
    }

    /// The waiting message came through, was set aside, or is gone.
    pub async fn clear_stuck(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: Uid,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence, FencedWrite::StuckMessage).await?;
        sqlx::query(
            "DELETE FROM stuck_messages WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3 AND uid = $4",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(uidvalidity))
        .bind(i64::from(uid))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The UIDs (first, last) of a batch that lost its connection while it was fetched: they are
    /// taken one at a time until a sweep gets past them.
    pub async fn alone_range(&self, mailbox: &str, folder: &str) -> Result<Option<(Uid, Uid)>> {
        let row = sqlx::query(
            "SELECT alone_from, alone_to FROM mailbox_state WHERE mailbox = $1 AND folder = $2 \
             AND alone_from IS NOT NULL AND alone_to IS NOT NULL",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            (
                Uid(r.get::<i64, _>(0) as u32),
                Uid(r.get::<i64, _>(1) as u32),
            )
        }))
    }

    /// Sets (or with `None` clears) the UIDs to be taken one at a time.
    pub async fn set_alone_range(
        &self,
        mailbox: &str,
        folder: &str,
        range: Option<(Uid, Uid)>,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence, FencedWrite::AloneRange).await?;
        sqlx::query(
            "UPDATE mailbox_state SET alone_from = $1, alone_to = $2 WHERE mailbox = $3 AND folder = $4",
        )
        .bind(range.map(|(from, _)| i64::from(from)))
        .bind(range.map(|(_, to)| i64::from(to)))
        .bind(mailbox)
        .bind(folder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves a folder's checkpoint forward to `uid` (never back, never past a waiting message),
    /// for a sweep that went through its whole listing: every message up to there is recorded
    /// or gone (mail recorded above a message that waited, and that message since through).
    pub async fn advance_checkpoint(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: Uid,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence, FencedWrite::Checkpoint).await?;
        sqlx::query(MOVE_CHECKPOINT)
            .bind(i64::from(uid))
            .bind(now_ms())
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(uidvalidity))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a folder's (new) UIDVALIDITY with its checkpoint and its first-start mark.
    pub async fn set_folder_state(
        &self,
        mailbox: &str,
        folder: &str,
        state: FolderState,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence, FencedWrite::FolderState).await?;
        sqlx::query(
            "INSERT INTO mailbox_state (mailbox, folder, uidvalidity, last_uid, ingest_after, ack_after, \
             first_uid_next, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, \
             last_uid = excluded.last_uid, ingest_after = excluded.ingest_after, ack_after = excluded.ack_after, \
             first_uid_next = excluded.first_uid_next, updated_at = excluded.updated_at",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(state.uidvalidity))
        .bind(i64::from(state.last_uid))
        .bind(state.ingest_after_ms)
        .bind(state.ack_after_ms)
        .bind(state.first_uid_next.map(i64::from))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The outcomes already recorded for some UIDs of a folder (a restart after a crash finds the
    /// messages it committed but did not dispose of).
    pub async fn recorded_outcomes(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        first_uid: Uid,
        last_uid: Uid,
    ) -> Result<Vec<RecordedOutcome>> {
        let rows = sqlx::query(
            "SELECT id, uid, outcome, ticket_id, disposed_at, disposition FROM imap_messages \
             WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3 AND uid >= $4 AND uid <= $5",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(uidvalidity))
        .bind(i64::from(first_uid))
        .bind(i64::from(last_uid))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RecordedOutcome {
                    row_id: r.get(0),
                    uid: Uid(r.get::<i64, _>(1) as u32),
                    outcome: r.get::<String, _>(2).parse()?,
                    ticket_id: r.get(3),
                    disposed: r.get::<Option<i64>, _>(4).is_some(),
                    disposition: r.get(5),
                })
            })
            .collect()
    }

    /// Messages of a folder whose outcome is committed but whose IMAP disposition is not confirmed
    /// (the worker stopped in between).
    pub async fn pending_dispositions(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<PendingDisposition>> {
        let rows = sqlx::query(
            "SELECT uid, disposition, disposition_refused_at FROM imap_messages \
             WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3 AND disposed_at IS NULL \
             ORDER BY uid",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(uidvalidity))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PendingDisposition {
                uid: Uid(r.get::<i64, _>(0) as u32),
                disposition: r.get(1),
                refused: r.get::<Option<i64>, _>(2).is_some(),
            })
            .collect())
    }

    /// Records that the IMAP dispositions of these UIDs of a folder are done (and no longer
    /// refused): one statement per few hundred UIDs.
    pub async fn mark_disposed(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[Uid],
        fence: Option<&Lease>,
    ) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .begin_fenced(fence, FencedWrite::DispositionsDone)
            .await?;
        let now = now_ms();
        for chunk in uids.chunks(UIDS_PER_STATEMENT) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE imap_messages SET disposed_at = $1, disposition_refusal = NULL, \
                 disposition_refused_at = NULL WHERE mailbox = $2 AND folder = $3 \
                 AND uidvalidity = $4 AND uid IN ({})",
                uid_list(chunk)
            )))
            .bind(now)
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(uidvalidity))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Which of `uids` have a recorded outcome in this folder's current validity.
    pub async fn recorded_among(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[Uid],
    ) -> Result<HashSet<Uid>> {
        let mut recorded = HashSet::with_capacity(uids.len());
        for chunk in uids.chunks(UIDS_PER_STATEMENT) {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT uid FROM imap_messages WHERE mailbox = $1 AND folder = $2 \
                 AND uidvalidity = $3 AND uid IN ({})",
                uid_list(chunk)
            )))
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(uidvalidity))
            .fetch_all(&self.pool)
            .await?;
            recorded.extend(rows.iter().map(|r| Uid(r.get::<i64, _>(0) as u32)));
        }
        Ok(recorded)
    }

    /// When the folder was last reconciled below its checkpoint (unix ms), if ever.
    pub async fn reconciled_at(&self, mailbox: &str, folder: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT reconciled_at FROM mailbox_state WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Records that the folder was reconciled below its checkpoint at `at_ms`.
    pub async fn mark_reconciled(
        &self,
        mailbox: &str,
        folder: &str,
        at_ms: i64,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence, FencedWrite::Reconciled).await?;
        sqlx::query(
            "UPDATE mailbox_state SET reconciled_at = $1 WHERE mailbox = $2 AND folder = $3",
        )
        .bind(at_ms)
        .bind(mailbox)
        .bind(folder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the server refused the pending dispositions of these UIDs (a tagged NO: a
    /// full or unwritable target folder, a missing right). They stay pending and every sweep
    /// tries them again; the first refusal's time is kept, the newest reply replaces the older.
    pub async fn note_refused_disposition(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[Uid],
        reply: &str,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self
            .begin_fenced(fence, FencedWrite::DispositionsRefused)
            .await?;
        let now = now_ms();
        for chunk in uids.chunks(UIDS_PER_STATEMENT) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE imap_messages SET disposition_refusal = $1, \
                 disposition_refused_at = COALESCE(disposition_refused_at, $2) \
                 WHERE mailbox = $3 AND folder = $4 AND uidvalidity = $5 AND disposed_at IS NULL \
                 AND uid IN ({})",
                uid_list(chunk)
            )))
            .bind(reply)
            .bind(now)
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(uidvalidity))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The dispositions of a folder the server refuses, by what was to be done: how many
    /// messages wait, since when, and the server's reply.
    pub async fn refused_dispositions(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<RefusedDispositions>> {
        let rows = sqlx::query(
            "SELECT disposition, COUNT(*), MIN(disposition_refused_at), MAX(disposition_refusal) \
             FROM imap_messages WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3 \
             AND disposed_at IS NULL AND disposition_refused_at IS NOT NULL \
             GROUP BY disposition ORDER BY disposition",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(uidvalidity))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RefusedDispositions {
                disposition: r.get(0),
                n_messages: r.get::<i64, _>(1) as u64,
                since_ms: r.get(2),
                reply: r.get::<Option<String>, _>(3).unwrap_or_default(),
            })
            .collect())
    }
}
