//! What the admin commands read and change: quarantine, outbox, one ticket in full.

use serde::Serialize;
use sqlx::Row;

use super::{Batch, Result, Store, now_ms};

/// A quarantined message as `mailintake quarantine list/show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    pub mailbox: String,
    pub folder: String,
    pub message_id: Option<String>,
    pub size_bytes: i64,
    pub from_address: Option<String>,
    pub subject: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
    pub has_raw: bool,
    pub created_at_ms: i64,
    pub released_at_ms: Option<i64>,
    pub release_max_bytes: Option<i64>,
}

/// An outbox row as `mailintake outbox list` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub mailbox: String,
    pub ticket_id: Option<i64>,
    pub to_address: Option<String>,
    pub subject: String,
    pub state: String,
    pub reason: Option<String>,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub smtp_response: Option<String>,
}

/// One message of a ticket, for `mailintake ticket`.
#[derive(Debug, Clone, Serialize)]
pub struct TicketMessage {
    pub id: i64,
    pub direction: String,
    pub message_id: String,
    pub from_address: Option<String>,
    pub subject: String,
    pub auto_kind: Option<String>,
    pub created_at_ms: i64,
    pub body_text: Option<String>,
    pub attachments: Vec<(i64, Option<String>, String, i64)>,
}

const QUARANTINE_COLUMNS: &str = "id, mailbox, folder, message_id, size_bytes, from_address, subject, reason, detail, \
     CAST(CASE WHEN raw IS NULL THEN 0 ELSE 1 END AS BIGINT), created_at, released_at, release_max_bytes";

fn quarantine_entry(r: sqlx::any::AnyRow) -> QuarantineEntry {
    QuarantineEntry {
        id: r.get(0),
        mailbox: r.get(1),
        folder: r.get(2),
        message_id: r.get(3),
        size_bytes: r.get(4),
        from_address: r.get(5),
        subject: r.get(6),
        reason: r.get(7),
        detail: r.get(8),
        has_raw: r.get::<i64, _>(9) != 0,
        created_at_ms: r.get(10),
        released_at_ms: r.get(11),
        release_max_bytes: r.get(12),
    }
}

impl Store {
    pub async fn quarantine_list(&self, limit: i64) -> Result<Vec<QuarantineEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {QUARANTINE_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(quarantine_entry).collect())
    }

    pub async fn quarantine_entry(&self, id: i64) -> Result<Option<QuarantineEntry>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(quarantine_entry))
    }

    /// Records that quarantined message `id` was moved back to its folder and may come in once,
    /// up to `max_bytes` (too-large) and past the per-sender limit.
    pub async fn mark_released(&self, id: i64, max_bytes: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE quarantine SET released_at = $1, release_max_bytes = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(max_bytes)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The release of a quarantined message with this Message-ID (or key) in `mailbox` that has
    /// not been used yet: the byte limit it allows (None: the mailbox's own limit).
    pub async fn unused_release(
        &self,
        mailbox: &str,
        message_id: &str,
    ) -> Result<Option<Option<i64>>> {
        let row = sqlx::query(
            "SELECT release_max_bytes FROM quarantine WHERE mailbox = $1 AND message_id = $2 \
             AND released_at IS NOT NULL AND release_used_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(mailbox)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn outbox_list(&self, state: Option<&str>, limit: i64) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT id, mailbox, ticket_id, to_address, subject, state, reason, attempts, next_attempt_at, \
             last_error, smtp_response FROM outbox WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(state.map(str::to_string))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxEntry {
                id: r.get(0),
                mailbox: r.get(1),
                ticket_id: r.get(2),
                to_address: r.get(3),
                subject: r.get(4),
                state: r.get(5),
                reason: r.get(6),
                attempts: r.get(7),
                next_attempt_at_ms: r.get(8),
                last_error: r.get(9),
                smtp_response: r.get(10),
            })
            .collect())
    }

    /// Makes a failed, cancelled or waiting row due now. False when the row is sent, sending,
    /// suppressed or unknown.
    pub async fn outbox_retry(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending', next_attempt_at = $1 WHERE id = $2 \
             AND state IN ('failed', 'cancelled', 'pending')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Cancels a row that has not been sent. False when it is sent, being sent, or unknown.
    pub async fn outbox_cancel(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'cancelled', reason = 'cancelled by an operator' WHERE id = $1 \
             AND state IN ('pending', 'failed')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The messages of a ticket, oldest first, with their attachments.
    pub async fn ticket_messages(&self, ticket_id: i64) -> Result<Vec<TicketMessage>> {
        let rows = sqlx::query(
            "SELECT id, direction, message_id, from_address, subject, auto_kind, created_at, \
             COALESCE(body_text, body_text_derived) FROM messages WHERE ticket_id = $1 ORDER BY id",
        )
        .bind(ticket_id)
        .fetch_all(&self.pool)
        .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.get(0);
            let attachments = sqlx::query(
                "SELECT id, filename, content_type, size_bytes FROM attachments WHERE message_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|a| (a.get(0), a.get(1), a.get(2), a.get(3)))
            .collect();
            messages.push(TicketMessage {
                id,
                direction: r.get(1),
                message_id: r.get(2),
                from_address: r.get(3),
                subject: r.get(4),
                auto_kind: r.get(5),
                created_at_ms: r.get(6),
                body_text: r.get(7),
                attachments,
            });
        }
        Ok(messages)
    }
}

impl Batch {
    /// Whether an unused release exists for this message (inside the batch's transaction).
    pub async fn is_released(&mut self, mailbox: &str, message_id: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT id FROM quarantine WHERE mailbox = $1 AND message_id = $2 \
             AND released_at IS NOT NULL AND release_used_at IS NULL LIMIT 1",
        )
        .bind(mailbox)
        .bind(message_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.is_some())
    }

    /// Marks the release of this message used, with the outcome it led to.
    pub async fn use_release(&mut self, mailbox: &str, message_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE quarantine SET release_used_at = $1 WHERE mailbox = $2 AND message_id = $3 \
             AND released_at IS NOT NULL AND release_used_at IS NULL",
        )
        .bind(now_ms())
        .bind(mailbox)
        .bind(message_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
