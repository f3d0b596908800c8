//! Quarantined messages let in again: an operator's release, looked up and used once inside the
//! batch that records the message, and a quarantine row marked resolved in the transaction that
//! records its reprocessed outcome.

use super::Batch;
use crate::store::Result;
use crate::time::now_ms;

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
        self.written.used_releases.insert(message_id.to_string());
        Ok(())
    }

    /// Marks quarantined message `id` as reprocessed into `ticket_id` (None: recorded as ignored).
    /// False when it was resolved already (by a concurrent run).
    pub async fn resolve_quarantine(&mut self, id: i64, ticket_id: Option<i64>) -> Result<bool> {
        // The row refers to its ticket, which may wait to be written with the batch's others.
        if self.pending.has_tickets() {
            self.flush_pending().await?;
        }
        let done = sqlx::query(
            "UPDATE quarantine SET resolved_at = $1, resolved_ticket_id = $2 WHERE id = $3 AND resolved_at IS NULL",
        )
        .bind(now_ms())
        .bind(ticket_id)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
