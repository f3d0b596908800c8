//! The outbox: acknowledgements written with their ticket (in the batch's transaction:
//! `batch/outbox.rs`), claimed and sent by the sender task.
//!
//! Claiming is one `UPDATE … WHERE id = (SELECT …) AND state = 'pending' RETURNING`, which is
//! atomic on SQLite and, under PostgreSQL's READ COMMITTED, lets only one of two concurrent workers
//! win a row (the loser's re-checked `state = 'pending'` no longer holds).

use sqlx::Row;

use super::{Result, Store};
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
}

const ROW_COLUMNS: &str = "id, mailbox, ticket_id, from_address, to_address, subject, message_id, in_reply_to, \
                           thread_references, body_text, body_html, attempts";

fn row(r: sqlx::any::AnyRow) -> OutboxRow {
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

    /// Claims the oldest due row of `mailbox`, if any.
    pub async fn claim_due(&self, mailbox: &str) -> Result<Option<OutboxRow>> {
        let now = now_ms();
        let claimed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET state = 'sending', claimed_at = $1, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM outbox WHERE mailbox = $2 AND state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY id LIMIT 1) AND state = 'pending' RETURNING {ROW_COLUMNS}"
        )))
        .bind(now)
        .bind(mailbox)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.map(row))
    }

    pub async fn mark_sent(&self, id: i64, smtp_response: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'sent', sent_at = $1, smtp_response = $2, last_error = NULL WHERE id = $3",
        )
        .bind(now_ms())
        .bind(smtp_response)
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
        sqlx::query("UPDATE outbox SET state = 'failed', last_error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Messages `mailbox` sent since `since_ms`: the per-minute and per-day limits, counted from
    /// the table so that they survive restarts.
    pub async fn sent_since(&self, mailbox: &str, since_ms: i64) -> Result<u32> {
        let r = sqlx::query(
            "SELECT COUNT(*) FROM outbox WHERE mailbox = $1 AND state = 'sent' AND sent_at >= $2",
        )
        .bind(mailbox)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(r.get::<i64, _>(0) as u32)
    }

    /// The oldest `sent_at` of `mailbox` since `since_ms`: when a full rate window frees a slot.
    pub async fn oldest_sent_since(&self, mailbox: &str, since_ms: i64) -> Result<Option<i64>> {
        let r = sqlx::query("SELECT MIN(sent_at) FROM outbox WHERE mailbox = $1 AND state = 'sent' AND sent_at >= $2")
            .bind(mailbox)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.get(0))
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
