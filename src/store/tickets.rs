//! Reading what was stored: ticket summaries, an article's raw message, an attachment's content.

use sqlx::Row;

use super::{Result, Store};
use crate::ingest::TicketStatus;

/// A ticket as `mailintake tickets` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TicketSummary {
    pub id: i64,
    pub reference: String,
    pub mailbox: String,
    pub subject: String,
    pub requester: Option<String>,
    pub status: TicketStatus,
    pub created_at_ms: i64,
    pub n_messages: i64,
    pub n_attachments: i64,
}

impl TicketSummary {
    /// From a row of `id, reference, mailbox, subject, requester_address, status, created_at,
    /// message count, attachment count`.
    fn from_row(r: &sqlx::any::AnyRow) -> Result<TicketSummary> {
        Ok(TicketSummary {
            id: r.get(0),
            reference: r.get::<Option<String>, _>(1).unwrap_or_default(),
            mailbox: r.get(2),
            subject: r.get(3),
            requester: r.get(4),
            status: r.get::<String, _>(5).parse()?,
            created_at_ms: r.get(6),
            n_messages: r.get(7),
            n_attachments: r.get(8),
        })
    }
}

/// An attachment as `mailintake attachment` writes it out.
#[derive(Debug, Clone)]
pub struct StoredAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub sha256: String,
    pub content: Vec<u8>,
    /// The mailbox of the message it came with.
    pub mailbox: String,
    /// Its content was removed by `purge` (retention); the metadata is kept.
    pub purged: bool,
}

impl Store {
    /// The most recent tickets, newest first.
    pub async fn recent_tickets(&self, limit: i64) -> Result<Vec<TicketSummary>> {
        self.tickets("ORDER BY t.id DESC LIMIT $1", &[limit]).await
    }

    /// The tickets created at or after `since_ms`, newest first, at most `limit`.
    pub async fn tickets_since(&self, since_ms: i64, limit: i64) -> Result<Vec<TicketSummary>> {
        self.tickets(
            "WHERE t.created_at >= $1 ORDER BY t.id DESC LIMIT $2",
            &[since_ms, limit],
        )
        .await
    }

    /// One ticket, as `tickets` lists it.
    pub async fn ticket_summary(&self, id: i64) -> Result<Option<TicketSummary>> {
        Ok(self.tickets("WHERE t.id = $1", &[id]).await?.pop())
    }

    /// Tickets as `tickets` lists them, chosen and ordered by `filter` with `values` bound as
    /// `$1`, `$2`, ….
    async fn tickets(&self, filter: &'static str, values: &[i64]) -> Result<Vec<TicketSummary>> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT t.id, t.reference, t.mailbox, t.subject, t.requester_address, t.status, t.created_at, \
             (SELECT COUNT(*) FROM messages m WHERE m.ticket_id = t.id), \
             (SELECT COUNT(*) FROM attachments a JOIN messages m ON a.message_id = m.id WHERE m.ticket_id = t.id) \
             FROM tickets t {filter}"
        )));
        for value in values {
            query = query.bind(*value);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(TicketSummary::from_row)
            .collect()
    }

    /// The raw message of a stored article (`keep_raw = "all"`), decompressed.
    pub async fn raw_message(&self, message_row_id: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT content FROM raw_messages WHERE message_row_id = $1")
            .bind(message_row_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let compressed: Vec<u8> = row.get(0);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut raw)
            .map_err(sqlx::Error::Io)?;
        Ok(Some(raw))
    }

    /// One attachment with its content.
    pub async fn attachment(&self, id: i64) -> Result<Option<StoredAttachment>> {
        let row = sqlx::query(
            "SELECT a.filename, a.content_type, a.sha256, b.content, m.mailbox, \
             CAST(CASE WHEN a.content_purged_at IS NULL AND b.purged_at IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM attachments a JOIN attachment_blobs b ON b.sha256 = a.sha256 \
             JOIN messages m ON m.id = a.message_id WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| StoredAttachment {
            filename: r.get(0),
            content_type: r.get(1),
            sha256: r.get(2),
            content: r.get(3),
            mailbox: r.get(4),
            purged: r.get::<i64, _>(5) != 0,
        }))
    }
}
