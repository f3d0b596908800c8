//! The outbox rows a batch writes: an acknowledgement is written in its ticket's transaction, so
//! it exists only for a committed ticket; and the counts that limit acknowledgements, read in the
//! same transaction.

use sqlx::Row;

use super::Batch;
use crate::store::{OutboxDraft, Result};
use crate::time::now_ms;

impl Batch {
    /// Writes an outbox row for `ticket_id` in the batch's transaction: `pending` (due now), or
    /// `suppressed` with the reason.
    pub async fn enqueue(
        &mut self,
        mailbox: &str,
        ticket_id: Option<i64>,
        draft: &OutboxDraft,
    ) -> Result<i64> {
        let now = now_ms();
        // The row refers to its ticket, which may wait to be written with the batch's others.
        if self.pending.has_tickets() {
            self.flush_pending().await?;
        }
        if let (Some(ticket_id), Some(to)) = (ticket_id, &draft.to) {
            self.written.add_participant(ticket_id, to);
        }
        let id: i64 = sqlx::query(
            "INSERT INTO outbox (mailbox, ticket_id, kind, from_address, to_address, subject, message_id, \
             in_reply_to, thread_references, body_text, body_html, state, reason, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) RETURNING id",
        )
        .bind(mailbox)
        .bind(ticket_id)
        .bind(draft.kind.as_str())
        .bind(&draft.from)
        .bind(draft.to.clone())
        .bind(&draft.subject)
        .bind(&draft.message_id)
        .bind(draft.in_reply_to.clone())
        .bind(draft.references.clone())
        .bind(&draft.body_text)
        .bind(draft.body_html.clone())
        .bind(if draft.suppressed.is_some() { "suppressed" } else { "pending" })
        .bind(draft.suppressed.clone())
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?
        .get(0);
        Ok(id)
    }

    /// A delivery status notification says our message `message_id` was not delivered: its row
    /// becomes `bounced`, with when and `reason`, if it was sent (or is being sent). A row that was
    /// never sent, or bounced already, is left as it is. Returns whether a row was marked.
    pub async fn outbox_bounced(&mut self, message_id: &str, reason: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'bounced', bounced_at = $1, bounce_reason = $2 \
             WHERE message_id = $3 AND state IN ('sent', 'sending')",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(message_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Acknowledgements (sent, bounced or on their way) to `address` since `since_ms`.
    pub async fn acks_to_since(&mut self, address: &str, since_ms: i64) -> Result<u32> {
        let r = sqlx::query(
            "SELECT COUNT(*) FROM outbox WHERE lower(to_address) = lower($1) AND created_at >= $2 \
             AND state IN ('pending', 'sending', 'sent', 'bounced')",
        )
        .bind(address)
        .bind(since_ms)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(r.get::<i64, _>(0) as u32)
    }

    /// When `ticket_id` last got an acknowledgement that was not suppressed.
    pub async fn last_ack_of_ticket(&mut self, ticket_id: i64) -> Result<Option<i64>> {
        let r = sqlx::query(
            "SELECT MAX(created_at) FROM outbox WHERE ticket_id = $1 AND state IN ('pending', 'sending', 'sent', 'bounced')",
        )
        .bind(ticket_id)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(r.get(0))
    }
}
