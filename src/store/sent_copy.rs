//! Copies of sent mail in the mailbox's Sent folder (`outbox.sent_copy`, migration 0016). What a
//! sent row needs is decided when it is marked sent ([`Store::mark_sent`]), from the mailbox's
//! `sent_copy` then, so a later change of the setting never copies old mail; a `pending` copy is
//! taken by the mailbox's sender after its sends, and stays `pending` with the error until the
//! server takes it.
//!
//! Sent through Graph (migration 0019), the copy is Exchange's own: the draft's immutable id
//! (`graph_item_id`) finds it in Sent Items, and `pending` means it is still to be read back
//! there, with the Message-ID the message went with (`sent_message_id`, when Exchange gave it
//! one of its own).

use super::outbox::{ROW_COLUMNS, row};
use super::{OutboxRow, Result, Store};
use crate::time::now_ms;

crate::closed_set! {
    /// Where the copy of a sent row is (`outbox.sent_copy`; NULL until the row is sent).
    pub enum SentCopyState("sent copy state") {
        /// The submission server keeps it (Exchange Online).
        Server = "server",
        /// No copy is kept (`sent_copy = "none"`).
        None = "none",
        /// To be appended by mailintake, due at `sent_copy_due_at`.
        Pending = "pending",
        /// Appended by mailintake to `sent_copy_folder`.
        Appended = "appended",
        /// A message with our Message-ID was in `sent_copy_folder` already (an earlier append
        /// whose answer was lost).
        Present = "present",
    }
}

/// The copy of an outbox row, as `GET /v1/messages/{id}` and `outbox list` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCopyStatus {
    pub state: SentCopyState,
    pub folder: Option<String>,
    pub at: Option<i64>,
    /// Why the last append failed, while `pending`.
    pub error: Option<String>,
}

impl SentCopyStatus {
    /// From the row's `sent_copy`, `sent_copy_folder`, `sent_copy_at`, `sent_copy_error`
    /// columns; `None` while the row is not sent.
    pub(super) fn from_columns(
        state: Option<String>,
        folder: Option<String>,
        at: Option<i64>,
        error: Option<String>,
    ) -> Result<Option<SentCopyStatus>> {
        let Some(state) = state else { return Ok(None) };
        Ok(Some(SentCopyStatus {
            state: state.parse()?,
            folder,
            at,
            error,
        }))
    }
}

impl Store {
    /// Up to `limit` sent rows of `mailbox` whose copy is due now, oldest first.
    pub async fn sent_copies_due(&self, mailbox: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM outbox WHERE mailbox = $1 AND sent_copy = 'pending' \
             AND sent_copy_due_at <= $2 ORDER BY sent_copy_due_at, id LIMIT $3"
        )))
        .bind(mailbox)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    /// The copy of row `id` is in `folder`: `appended` now, or `present` already.
    pub async fn sent_copy_kept(&self, id: i64, state: SentCopyState, folder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET sent_copy = $1, sent_copy_folder = $2, sent_copy_at = $3, \
             sent_copy_error = NULL, sent_copy_due_at = NULL WHERE id = $4 AND sent_copy = 'pending'",
        )
        .bind(state.as_str())
        .bind(folder)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The copy of row `id` could not be kept: it stays `pending` with `error`, due at `retry_at`.
    pub async fn sent_copy_failed(&self, id: i64, error: &str, retry_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET sent_copy_error = $1, sent_copy_due_at = $2 \
             WHERE id = $3 AND sent_copy = 'pending'",
        )
        .bind(error)
        .bind(retry_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Row `id` has the Graph draft `item_id`, which Exchange gave the Message-ID `sent_as`
    /// (without angle brackets) when that is not ours: kept before the draft is sent, so a reply
    /// naming it is known as a reply to us even if this process stops right after the send.
    pub async fn graph_draft_made(
        &self,
        id: i64,
        item_id: &str,
        sent_as: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE outbox SET graph_item_id = $1, sent_message_id = $2 WHERE id = $3")
            .bind(item_id)
            .bind(sent_as)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Row `id` went out under the Message-ID `sent_as` (without angle brackets), not ours: what
    /// its copy in Sent Items shows.
    pub async fn graph_sent_as(&self, id: i64, sent_as: &str) -> Result<()> {
        sqlx::query("UPDATE outbox SET sent_message_id = $1 WHERE id = $2")
            .bind(sent_as)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Graph accepted row `id` with `response`: its copy is in Sent Items (`copy_found`, read
    /// back already) or is to be read back there at `confirm_at`.
    pub async fn mark_sent_through_graph(
        &self,
        id: i64,
        response: &str,
        copy_found: bool,
        confirm_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        let (state, folder, at, due) = if copy_found {
            (
                SentCopyState::Present,
                Some(GRAPH_SENT_ITEMS),
                Some(now),
                None,
            )
        } else {
            (SentCopyState::Pending, None, None, Some(confirm_at))
        };
        sqlx::query(
            "UPDATE outbox SET state = CASE WHEN state = 'bounced' THEN state ELSE 'sent' END, \
             sent_at = $1, smtp_response = $2, last_error = NULL, blocked_reason = NULL, \
             sent_copy = $3, sent_copy_folder = $4, sent_copy_at = $5, sent_copy_due_at = $6 \
             WHERE id = $7",
        )
        .bind(now)
        .bind(response)
        .bind(state.as_str())
        .bind(folder)
        .bind(at)
        .bind(due)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The copy of row `id` was not found in Sent Items for long enough to stop looking:
    /// Exchange keeps it as far as anyone knows (`server`), with `reason` for the operator.
    pub async fn sent_copy_unconfirmed(&self, id: i64, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET sent_copy = 'server', sent_copy_error = $1, sent_copy_due_at = NULL \
             WHERE id = $2 AND sent_copy = 'pending'",
        )
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The folder name a Graph copy is reported in (the well-known `sentitems`).
pub const GRAPH_SENT_ITEMS: &str = "Sent Items";
