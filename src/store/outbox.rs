//! The outbox: acknowledgements written with their ticket (in the batch's transaction:
//! `batch/outbox.rs`), claimed and sent by the sender task.
//!
//! Claiming is one `UPDATE … WHERE id = (SELECT …) AND state = 'pending' RETURNING`, which is
//! atomic on SQLite and, under PostgreSQL's READ COMMITTED, lets only one of two concurrent workers
//! win a row (the loser's re-checked `state = 'pending'` no longer holds).
//!
//! A From address the server refuses for good is *blocked*: its pending rows carry
//! `blocked_reason` and wait until `next_attempt_at` (10 minutes on), when the oldest is tried
//! again; one accepted message makes them all due. Other addresses' rows are not held back.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Result, SentCopyState, Store};
use crate::report::BlockedSender;
use crate::time::now_ms;

/// What the acknowledgement answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    NewTicket,
    FollowUp,
    /// The sender's message was set aside (too large) instead of becoming a ticket.
    QuarantineNotice,
}

impl AckKind {
    /// The value of `outbox.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckKind::NewTicket => "acknowledgement",
            AckKind::FollowUp => "follow-up-acknowledgement",
            AckKind::QuarantineNotice => "quarantine-notice",
        }
    }
}

/// An outbox row to write: a message to send, or the recorded reason for not sending one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxDraft {
    pub kind: AckKind,
    pub from: String,
    pub to: Option<String>,
    pub subject: String,
    /// Without angle brackets, like `messages.message_id`.
    pub message_id: String,
    pub in_reply_to: Option<String>,
    /// `<id> <id> …`
    pub references: Option<String>,
    pub body_text: String,
    pub body_html: Option<String>,
    /// `Some(reason)`: recorded as `suppressed`, never sent.
    pub suppressed: Option<String>,
}

/// A claimed outbox row, ready to be sent.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub mailbox: String,
    pub ticket_id: Option<i64>,
    pub from_address: String,
    pub to_address: Option<String>,
    pub subject: String,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub thread_references: Option<String>,
    pub body_text: String,
    pub body_html: Option<String>,
    /// Including this one.
    pub attempts: i64,
    /// Set while the row waits because the server refuses its From address.
    pub blocked_reason: Option<String>,
    /// The message composed at submission (agent mail and notifications), sent as it is; `None`
    /// for acknowledgements and notices, composed from the columns above.
    pub raw: Option<Vec<u8>>,
    /// The envelope recipients of `raw` (To, Cc, Bcc); empty: `to_address` alone.
    pub envelope_to: Vec<String>,
    /// `outbox.kind`: `reply` and `notification` are the helpdesk's mail.
    pub kind: String,
    /// How many envelope recipients the row has (what the daily budget counts).
    pub recipient_count: i64,
    /// Sent through Graph: the immutable id of its draft (migration 0019), kept from the draft's
    /// creation on; after the send it names the copy in Sent Items.
    pub graph_item_id: Option<String>,
    /// The Message-ID Exchange gave the message when not ours (without angle brackets).
    pub sent_message_id: Option<String>,
    /// When the server accepted it.
    pub sent_at: Option<i64>,
}

pub(super) const ROW_COLUMNS: &str = "id, mailbox, ticket_id, from_address, to_address, subject, message_id, in_reply_to, \
                           thread_references, body_text, body_html, attempts, blocked_reason, raw, envelope_to, \
                           kind, recipient_count, graph_item_id, sent_message_id, sent_at";

pub(super) fn row(r: sqlx::any::AnyRow) -> OutboxRow {
    OutboxRow {
        id: r.get(0),
        mailbox: r.get(1),
        ticket_id: r.get(2),
        from_address: r.get(3),
        to_address: r.get(4),
        subject: r.get(5),
        message_id: r.get(6),
        in_reply_to: r.get(7),
        thread_references: r.get(8),
        body_text: r.get(9),
        body_html: r.get(10),
        attempts: r.get(11),
        blocked_reason: r.get(12),
        raw: r.get(13),
        envelope_to: r
            .get::<Option<String>, _>(14)
            .map(|lines| lines.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        kind: r.get(15),
        recipient_count: r.get(16),
        graph_item_id: r.get(17),
        sent_message_id: r.get(18),
        sent_at: r.get(19),
    }
}

impl Store {
    /// Returns rows left in `sending` by a worker that died mid-send (claimed before
    /// `claimed_before_ms`) to `pending`. Such a row may have reached the server: exactly once is
    /// the normal case, at most twice after a crash at that instant.
    pub async fn requeue_stale_sends(&self, mailbox: &str, claimed_before_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending' WHERE mailbox = $1 AND state = 'sending' AND claimed_at < $2",
        )
        .bind(mailbox)
        .bind(claimed_before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Claims the oldest due row of `mailbox`, if any, agent mail (`reply`) before everything
    /// else, with no sending budget (the sender claims through
    /// [`Store::claim_within_budget`]). A row of a blocked From address is due when its own retry
    /// time has come (it is the probe); a row not yet marked waits while its address has a
    /// blocked row whose retry time has not come.
    pub async fn claim_due(&self, mailbox: &str) -> Result<Option<OutboxRow>> {
        let unlimited = super::Budget {
            per_minute: 0,
            recipients_per_day: 0,
        };
        Ok(match self.claim_within_budget(mailbox, unlimited).await? {
            super::Claim::Row(row) => Some(*row),
            super::Claim::Deferred { .. } | super::Claim::Nothing => None,
        })
    }

    /// The server accepted the row. (A bounce recorded in between, when the notification came
    /// back before this, stays.)
    /// The server accepted row `id` with `smtp_response`; `copy` says what becomes of its copy
    /// in the Sent folder ([`SentCopyState::Pending`]: due now).
    pub async fn mark_sent(&self, id: i64, smtp_response: &str, copy: SentCopyState) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE outbox SET state = CASE WHEN state = 'bounced' THEN state ELSE 'sent' END, \
             sent_at = $1, smtp_response = $2, last_error = NULL, blocked_reason = NULL, \
             sent_copy = $3, sent_copy_due_at = $4 WHERE id = $5",
        )
        .bind(now)
        .bind(smtp_response)
        .bind(copy.as_str())
        .bind((copy == SentCopyState::Pending).then_some(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Puts a claimed row back, due at `next_attempt_ms`, with the error that delayed it.
    pub async fn reschedule(&self, id: i64, error: &str, next_attempt_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'pending', last_error = $1, next_attempt_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(next_attempt_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_failed(&self, id: i64, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'failed', last_error = $1, blocked_reason = NULL WHERE id = $2",
        )
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The server refused `row`'s From address for good: the row goes back to `pending` (the
    /// refusal does not count toward giving it up) and every pending row of that mailbox and
    /// address waits until `retry_at_ms` with the reason. Returns how many rows wait.
    pub async fn block_sender(
        &self,
        row: &OutboxRow,
        reason: &str,
        retry_at_ms: i64,
    ) -> Result<u64> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = attempts - 1, last_error = $1 WHERE id = $2",
        )
        .bind(reason)
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
        let held = sqlx::query(
            "UPDATE outbox SET blocked_reason = $1, blocked_at = COALESCE(blocked_at, $2), \
             next_attempt_at = CASE WHEN next_attempt_at > $3 THEN next_attempt_at ELSE $3 END \
             WHERE mailbox = $4 AND from_address = $5 AND state = 'pending'",
        )
        .bind(reason)
        .bind(now)
        .bind(retry_at_ms)
        .bind(&row.mailbox)
        .bind(&row.from_address)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(held.rows_affected())
    }

    /// The server accepted a message from `from_address` again: its waiting rows are due now.
    pub async fn unblock_sender(&self, mailbox: &str, from_address: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET blocked_reason = NULL, next_attempt_at = $1 \
             WHERE mailbox = $2 AND from_address = $3 AND state = 'pending' AND blocked_reason IS NOT NULL",
        )
        .bind(now_ms())
        .bind(mailbox)
        .bind(from_address)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The blocked From addresses of `mailbox`, after giving rows written since their refusal
    /// the same reason and retry time (so they show as waiting, and do not make the sender
    /// wake for rows it may not send).
    pub async fn hold_blocked(&self, mailbox: &str) -> Result<Vec<BlockedSender>> {
        let read = || async {
            let rows = sqlx::query(
                "SELECT from_address, COUNT(*), MAX(blocked_reason), MIN(blocked_at), MIN(next_attempt_at) \
                 FROM outbox WHERE mailbox = $1 AND state = 'pending' AND blocked_reason IS NOT NULL \
                 GROUP BY from_address ORDER BY from_address",
            )
            .bind(mailbox)
            .fetch_all(&self.pool)
            .await?;
            Ok::<_, super::StoreError>(
                rows.into_iter()
                    .map(|r| BlockedSender {
                        from_address: r.get(0),
                        n_rows: r.get::<i64, _>(1) as u64,
                        reason: r.get(2),
                        since_ms: r.get::<Option<i64>, _>(3).unwrap_or_default(),
                        retry_at_ms: r.get(4),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let blocked = read().await?;
        let mut held = 0;
        for b in &blocked {
            held += sqlx::query(
                "UPDATE outbox SET blocked_reason = $1, blocked_at = $2, \
                 next_attempt_at = CASE WHEN next_attempt_at > $3 THEN next_attempt_at ELSE $3 END \
                 WHERE mailbox = $4 AND from_address = $5 AND state = 'pending' AND blocked_reason IS NULL",
            )
            .bind(&b.reason)
            .bind(b.since_ms)
            .bind(b.retry_at_ms)
            .bind(mailbox)
            .bind(&b.from_address)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        if held == 0 { Ok(blocked) } else { read().await }
    }

    /// The blocked reason of each of `ids` that waits for its From address (for `outbox list`).
    pub async fn blocked_reasons(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, String>> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, blocked_reason FROM outbox WHERE state = 'pending' AND blocked_reason IS NOT NULL \
             AND id IN ({})",
            list.join(", ")
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The suppression reasons of `mailbox`'s latest `limit` acknowledgement decisions (new
    /// tickets and follow-ups), newest first; `None` for a row that was not suppressed.
    pub async fn latest_ack_reasons(
        &self,
        mailbox: &str,
        limit: u32,
    ) -> Result<Vec<Option<String>>> {
        let rows = sqlx::query(
            "SELECT state, reason FROM outbox WHERE mailbox = $1 AND kind IN ($2, $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(mailbox)
        .bind(AckKind::NewTicket.as_str())
        .bind(AckKind::FollowUp.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| match r.get::<String, _>(0).as_str() {
                "suppressed" => Some(r.get::<Option<String>, _>(1).unwrap_or_default()),
                _ => None,
            })
            .collect())
    }

    /// [`Store::latest_ack_reasons`] of several mailboxes in one statement (the status page's
    /// and `/readyz`'s, whose statements must not grow with the mailboxes): per mailbox that
    /// has any, its latest `limit` reasons, newest first.
    pub async fn latest_ack_reasons_of(
        &self,
        mailboxes: &[&str],
        limit: u32,
    ) -> Result<BTreeMap<String, Vec<Option<String>>>> {
        let mut latest: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        if mailboxes.is_empty() {
            return Ok(latest);
        }
        let placeholders: Vec<String> = (0..mailboxes.len())
            .map(|i| format!("${}", i + 4))
            .collect();
        // ROW_NUMBER numbers each mailbox's rows newest first; both backends have it (SQLite
        // since 3.25), so one text serves both.
        let sql = format!(
            "SELECT mailbox, state, reason FROM (\
               SELECT mailbox, state, reason, id, \
                      ROW_NUMBER() OVER (PARTITION BY mailbox ORDER BY id DESC) AS n \
               FROM outbox WHERE kind IN ($1, $2) AND mailbox IN ({})\
             ) latest WHERE n <= $3 ORDER BY mailbox, id DESC",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(AckKind::NewTicket.as_str())
            .bind(AckKind::FollowUp.as_str())
            .bind(i64::from(limit));
        for mailbox in mailboxes {
            query = query.bind(*mailbox);
        }
        for r in query.fetch_all(&self.pool).await? {
            let reason = match r.get::<String, _>(1).as_str() {
                "suppressed" => Some(r.get::<Option<String>, _>(2).unwrap_or_default()),
                _ => None,
            };
            latest.entry(r.get(0)).or_default().push(reason);
        }
        Ok(latest)
    }

    /// When the next pending row of `mailbox` is due.
    pub async fn next_due(&self, mailbox: &str) -> Result<Option<i64>> {
        let r = sqlx::query(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE mailbox = $1 AND state = 'pending'",
        )
        .bind(mailbox)
        .fetch_one(&self.pool)
        .await?;
        Ok(r.get(0))
    }
}
