//! What the admin commands read and change: quarantine, outbox, one ticket in full.

use serde::Serialize;
use sqlx::Row;

use super::sql::placeholders;
use super::{Backend, Result, SentCopyState, Store};
use crate::ingest::QuarantineCode;
use crate::time::now_ms;

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
    pub reason: QuarantineCode,
    pub detail: Option<String>,
    pub has_raw: bool,
    pub created_at_ms: i64,
    pub released_at_ms: Option<i64>,
    pub release_max_bytes: Option<i64>,
    /// `mailintake reprocess` turned it into this ticket (or ignored mail, with no ticket).
    pub resolved_at_ms: Option<i64>,
    pub resolved_ticket_id: Option<i64>,
    /// `mailintake purge` removed its raw bytes.
    pub raw_purged_at_ms: Option<i64>,
    /// Where it was in its folder: the UIDVALIDITY and UID (for a Graph mailbox the folder's
    /// validity and the message's number, which `graph_items` maps to its immutable id).
    pub uidvalidity: i64,
    pub uid: i64,
}

/// An outbox row as `mailintake outbox list` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub mailbox: String,
    /// `acknowledgement`, `follow-up-acknowledgement`, `quarantine-notice`, `reply`,
    /// `notification`.
    pub kind: String,
    pub ticket_id: Option<i64>,
    pub to_address: Option<String>,
    pub subject: String,
    pub state: String,
    pub reason: Option<String>,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub smtp_response: Option<String>,
    /// For a `bounced` row: when the delivery status notification was recorded, and what it said.
    pub bounced_at_ms: Option<i64>,
    pub bounce_reason: Option<String>,
    /// For a `pending` row the sending budget holds back: why, until `next_attempt_at_ms`.
    pub deferred_reason: Option<String>,
    /// Once sent: its copy in the Sent folder, the folder that got it, and why the last append
    /// failed.
    pub sent_copy: Option<SentCopyState>,
    pub sent_copy_folder: Option<String>,
    pub sent_copy_error: Option<String>,
}

/// One message of a ticket, for `mailintake ticket`.
#[derive(Debug, Clone, Serialize)]
pub struct TicketMessage {
    pub id: i64,
    pub direction: String,
    pub message_id: String,
    pub from_address: Option<String>,
    /// Every From address (`messages.from_addresses`, JSON); `None` for rows stored before
    /// migration 0008.
    pub from_addresses: Option<serde_json::Value>,
    pub subject: String,
    pub auto_kind: Option<String>,
    pub created_at_ms: i64,
    pub body_text: Option<String>,
    pub attachments: Vec<(i64, Option<String>, String, i64)>,
    /// The intake ledger's detail for the message (address repairs, why it got no
    /// acknowledgement).
    pub intake_detail: Option<String>,
    /// The acknowledgement of an inbound message: its outbox state and, when it is not sent on
    /// purpose, the reason.
    pub acknowledgement: Option<AckEntry>,
}

/// The acknowledgement row of one message, as `mailintake ticket` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AckEntry {
    pub outbox_id: i64,
    pub state: String,
    pub to_address: Option<String>,
    pub reason: Option<String>,
}

const QUARANTINE_COLUMNS: &str = "id, mailbox, folder, message_id, size_bytes, from_address, subject, reason, detail, \
     CAST(CASE WHEN raw IS NULL THEN 0 ELSE 1 END AS BIGINT), created_at, released_at, release_max_bytes, \
     resolved_at, resolved_ticket_id, raw_purged_at, uidvalidity, uid";

fn quarantine_entry(r: sqlx::any::AnyRow) -> Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        id: r.get(0),
        mailbox: r.get(1),
        folder: r.get(2),
        message_id: r.get(3),
        size_bytes: r.get(4),
        from_address: r.get(5),
        subject: r.get(6),
        reason: r.get::<String, _>(7).parse()?,
        detail: r.get(8),
        has_raw: r.get::<i64, _>(9) != 0,
        created_at_ms: r.get(10),
        released_at_ms: r.get(11),
        release_max_bytes: r.get(12),
        resolved_at_ms: r.get(13),
        resolved_ticket_id: r.get(14),
        raw_purged_at_ms: r.get(15),
        uidvalidity: r.get(16),
        uid: r.get(17),
    })
}

impl Store {
    pub async fn quarantine_list(&self, limit: i64) -> Result<Vec<QuarantineEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {QUARANTINE_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(quarantine_entry).collect()
    }

    pub async fn quarantine_entry(&self, id: i64) -> Result<Option<QuarantineEntry>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(quarantine_entry).transpose()
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

    /// The newest outbox rows, of `state` if given; with `only_blocked`, only those that wait
    /// because the server refuses their From address.
    pub async fn outbox_list(
        &self,
        state: Option<&str>,
        only_blocked: bool,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let blocked = if only_blocked {
            " AND blocked_reason IS NOT NULL"
        } else {
            ""
        };
        // Only the fixed condition above is formatted into the statement; values are bound.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, mailbox, ticket_id, to_address, subject, state, reason, attempts, next_attempt_at, \
             last_error, smtp_response, bounced_at, bounce_reason, kind, deferred_reason, \
             sent_copy, sent_copy_folder, sent_copy_error FROM outbox WHERE ($1 IS NULL OR state = $1){blocked} \
             ORDER BY id DESC LIMIT $2"
        )))
        .bind(state.map(str::to_string))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(OutboxEntry {
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
                    bounced_at_ms: r.get(11),
                    bounce_reason: r.get(12),
                    kind: r.get(13),
                    deferred_reason: r.get(14),
                    sent_copy: r
                        .get::<Option<String>, _>(15)
                        .map(|text| text.parse())
                        .transpose()?,
                    sent_copy_folder: r.get(16),
                    sent_copy_error: r.get(17),
                })
            })
            .collect()
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
             COALESCE(body_text, body_text_derived), from_addresses FROM messages WHERE ticket_id = $1 ORDER BY id",
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
            let message_id: String = r.get(2);
            // By Message-ID first: that column is indexed in both tables' lookups used here.
            let intake_detail = sqlx::query(
                "SELECT detail FROM imap_messages WHERE message_id = $1 AND message_row_id = $2 \
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(&message_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .and_then(|d| d.get(0));
            let acknowledgement = sqlx::query(
                "SELECT id, state, to_address, reason FROM outbox WHERE ticket_id = $1 AND in_reply_to = $2 \
                 AND kind IN ('acknowledgement', 'follow-up-acknowledgement') ORDER BY id DESC LIMIT 1",
            )
            .bind(ticket_id)
            .bind(&message_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|a| AckEntry {
                outbox_id: a.get(0),
                state: a.get(1),
                to_address: a.get(2),
                reason: a.get(3),
            });
            let from_addresses = r
                .get::<Option<String>, _>(8)
                .and_then(|json| serde_json::from_str(&json).ok());
            messages.push(TicketMessage {
                id,
                direction: r.get(1),
                message_id,
                from_address: r.get(3),
                from_addresses,
                subject: r.get(4),
                auto_kind: r.get(5),
                created_at_ms: r.get(6),
                body_text: r.get(7),
                attachments,
                intake_detail,
                acknowledgement,
            });
        }
        Ok(messages)
    }
}

/// What `mailintake purge` removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Raw messages kept for articles (`raw_messages`), and their uncompressed size.
    pub raw_messages: i64,
    pub raw_message_bytes: i64,
    /// Quarantined messages whose raw bytes were removed, and those bytes.
    pub quarantine_raw: i64,
    pub quarantine_raw_bytes: i64,
    /// Attachments whose content was removed (rows and metadata stay), and the distinct blobs
    /// (content stored once per SHA-256) that were emptied, with their size.
    pub attachments: i64,
    pub attachment_blobs: i64,
    pub attachment_blob_bytes: i64,
}

/// What `mailintake quarantine purge` removed (or would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QuarantinePurgeReport {
    pub rows: i64,
    pub raw_bytes: i64,
    /// Released messages that have not come in yet: kept, whatever their age.
    pub kept_released_pending: i64,
}

/// Open quarantined messages and pending outbox rows per mailbox, by COUNT queries.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Quarantined, neither released nor reprocessed.
    pub quarantine_open: std::collections::BTreeMap<String, i64>,
    pub outbox_pending: std::collections::BTreeMap<String, i64>,
}

/// Blobs whose every attachment is older than the cutoff (so no newer attachment shares them) and
/// whose content is still there.
const PURGEABLE_BLOBS: &str = "FROM attachment_blobs b WHERE b.purged_at IS NULL \
     AND EXISTS (SELECT 1 FROM attachments a WHERE a.sha256 = b.sha256) \
     AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.sha256 = b.sha256 AND a.created_at >= $1)";

/// Blob keys per `IN (…)` list of `purge`.
const IDS_PER_STATEMENT: usize = 200;

/// Quarantine rows that `quarantine purge` may delete: older than the cutoff, and not a release
/// that is still waiting for its message to come in.
const PURGEABLE_QUARANTINE: &str = "FROM quarantine WHERE created_at < $1 \
     AND NOT (released_at IS NOT NULL AND release_used_at IS NULL)";

async fn count_pair(
    conn: &mut sqlx::AnyConnection,
    sql: String,
    cutoff_ms: i64,
) -> Result<(i64, i64)> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(cutoff_ms)
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.get(0), row.get(1)))
}

impl Store {
    /// Removes raw mail kept for articles, quarantine raw bytes and attachment contents of mail
    /// stored before `cutoff_ms`, in one transaction; with `dry_run` only counts. Tickets, messages,
    /// quarantine and attachment rows stay. A blob still used by a newer attachment stays whole.
    ///
    /// A blob is emptied only if no attachment written meanwhile shares it. On PostgreSQL (READ
    /// COMMITTED) the candidate blobs are locked `FOR UPDATE` first, which waits for every
    /// ingest that holds `FOR SHARE` on one of them (it is writing an attachment with that
    /// content: [`crate::store::Batch`]) and makes later ones wait for this commit; then a new
    /// statement, which sees what those ingests committed, asks again which are unshared. On
    /// SQLite the transaction is `BEGIN IMMEDIATE`: it holds the write lock from the start, as a
    /// batch does, so no ingest writes between the check and the update.
    pub async fn purge_older_than(&self, cutoff_ms: i64, dry_run: bool) -> Result<PurgeReport> {
        let mut tx = match self.backend {
            Backend::Sqlite if !dry_run => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.pool.begin().await?,
        };
        let raw_filter = "FROM raw_messages r WHERE r.message_row_id IN \
                          (SELECT m.id FROM messages m WHERE m.created_at < $1)";
        let (raw_messages, raw_message_bytes) = count_pair(
            &mut tx,
            format!("SELECT COUNT(*), CAST(COALESCE(SUM(r.size_bytes), 0) AS BIGINT) {raw_filter}"),
            cutoff_ms,
        )
        .await?;
        let quarantine_filter = "FROM quarantine WHERE raw IS NOT NULL AND created_at < $1";
        let (quarantine_raw, quarantine_raw_bytes) = count_pair(
            &mut tx,
            format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(LENGTH(raw)), 0) AS BIGINT) {quarantine_filter}"
            ),
            cutoff_ms,
        )
        .await?;
        let lock = match self.backend {
            Backend::Postgres if !dry_run => " FOR UPDATE",
            _ => "",
        };
        let candidates: Vec<(String, i64)> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT b.sha256, b.size_bytes {PURGEABLE_BLOBS}{lock}"
        )))
        .bind(cutoff_ms)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        // The check, in a statement of its own (a new snapshot on PostgreSQL): which of the
        // locked blobs no newer attachment shares now.
        let mut blobs: Vec<(String, i64)> = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(2, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT b.sha256 {PURGEABLE_BLOBS} AND b.sha256 IN ({list})"
            )))
            .bind(cutoff_ms);
            for (sha256, _) in chunk {
                query = query.bind(sha256.as_str());
            }
            let unshared: std::collections::HashSet<String> = query
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            blobs.extend(chunk.iter().filter(|(s, _)| unshared.contains(s)).cloned());
        }
        let mut attachments = 0;
        for chunk in blobs.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM attachments WHERE content_purged_at IS NULL AND sha256 IN ({list})"
            )));
            for (sha256, _) in chunk {
                query = query.bind(sha256.as_str());
            }
            attachments += query.fetch_one(&mut *tx).await?.get::<i64, _>(0);
        }
        let report = PurgeReport {
            raw_messages,
            raw_message_bytes,
            quarantine_raw,
            quarantine_raw_bytes,
            attachments,
            attachment_blobs: blobs.len() as i64,
            attachment_blob_bytes: blobs.iter().map(|(_, size)| size).sum(),
        };
        if dry_run {
            tx.rollback().await?;
            return Ok(report);
        }
        crate::failpoint::reached(crate::failpoint::Point::PurgeChecked).await;
        let now = now_ms();
        sqlx::query(
            "DELETE FROM raw_messages WHERE message_row_id IN \
             (SELECT m.id FROM messages m WHERE m.created_at < $1)",
        )
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE quarantine SET raw = NULL, raw_purged_at = $2 WHERE raw IS NOT NULL AND created_at < $1",
        )
        .bind(cutoff_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // The attachments first, then their blobs, each by the keys the check chose (held locked
        // on PostgreSQL, so no new attachment can share them meanwhile).
        for chunk in blobs.chunks(IDS_PER_STATEMENT) {
            let mut marked = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE attachments SET content_purged_at = $1 WHERE content_purged_at IS NULL \
                 AND sha256 IN ({})",
                placeholders(2, chunk.len())
            )))
            .bind(now);
            let mut emptied = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE attachment_blobs SET content = $1, purged_at = $2 WHERE sha256 IN ({})",
                placeholders(3, chunk.len())
            )))
            .bind(Vec::<u8>::new())
            .bind(now);
            for (sha256, _) in chunk {
                marked = marked.bind(sha256.as_str());
                emptied = emptied.bind(sha256.as_str());
            }
            marked.execute(&mut *tx).await?;
            emptied.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Deletes quarantine rows (with their raw bytes) created before `cutoff_ms`, except releases
    /// still waiting for their message. The intake ledger (`imap_messages`) keeps its
    /// `quarantined` outcome rows; they just no longer point to a quarantine row.
    pub async fn quarantine_purge(
        &self,
        cutoff_ms: i64,
        dry_run: bool,
    ) -> Result<QuarantinePurgeReport> {
        let mut tx = self.pool.begin().await?;
        let (rows, raw_bytes) = count_pair(
            &mut tx,
            format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(LENGTH(raw)), 0) AS BIGINT) {PURGEABLE_QUARANTINE}"
            ),
            cutoff_ms,
        )
        .await?;
        let kept_released_pending: i64 = sqlx::query(
            "SELECT COUNT(*) FROM quarantine WHERE created_at < $1 \
             AND released_at IS NOT NULL AND release_used_at IS NULL",
        )
        .bind(cutoff_ms)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let report = QuarantinePurgeReport {
            rows,
            raw_bytes,
            kept_released_pending,
        };
        if dry_run {
            tx.rollback().await?;
            return Ok(report);
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE imap_messages SET quarantine_id = NULL WHERE quarantine_id IN \
             (SELECT id {PURGEABLE_QUARANTINE})"
        )))
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM quarantine WHERE id IN (SELECT id {PURGEABLE_QUARANTINE})"
        )))
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// When the content of attachment `id` was purged (None: it is there, or no such attachment).
    pub async fn attachment_purged_at(&self, id: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT b.purged_at FROM attachments a JOIN attachment_blobs b ON b.sha256 = a.sha256 WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Open quarantined messages and pending outbox rows per mailbox.
    pub async fn backlog(&self) -> Result<Backlog> {
        let count = |sql: &'static str| async move {
            let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
            Ok::<_, super::StoreError>(
                rows.into_iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect(),
            )
        };
        Ok(Backlog {
            quarantine_open: count(
                "SELECT mailbox, COUNT(*) FROM quarantine WHERE released_at IS NULL \
                 AND resolved_at IS NULL GROUP BY mailbox",
            )
            .await?,
            outbox_pending: count(
                "SELECT mailbox, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY mailbox",
            )
            .await?,
        })
    }

    /// The quarantine row's raw bytes and whether (and into which ticket) it was reprocessed.
    pub async fn quarantine_raw(&self, id: i64) -> Result<Option<QuarantineRaw>> {
        let row = sqlx::query(
            "SELECT raw, raw_purged_at, resolved_at, resolved_ticket_id, created_at FROM quarantine WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| QuarantineRaw {
            raw: r.get(0),
            raw_purged_at_ms: r.get(1),
            resolved_at_ms: r.get(2),
            resolved_ticket_id: r.get(3),
            created_at_ms: r.get(4),
        }))
    }

    /// A stored article: its Message-ID (as stored: a released conflict's `<id>#<n>`), ticket
    /// and fingerprint.
    pub async fn article(
        &self,
        message_row_id: i64,
    ) -> Result<Option<(String, crate::ingest::KnownMessage)>> {
        let row = sqlx::query(
            "SELECT message_id, ticket_id, fingerprint, fingerprint_version FROM messages WHERE id = $1",
        )
        .bind(message_row_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some((
            r.get(0),
            crate::ingest::KnownMessage {
                ticket_id: r.get(1),
                message_row_id,
                fingerprint: r.get(2),
                fingerprint_version: crate::ingest::FingerprintVersion::from_number(r.get(3))?,
            },
        )))
    }
}

/// The raw bytes of a quarantined message and its reprocessing state.
#[derive(Debug, Clone)]
pub struct QuarantineRaw {
    pub raw: Option<Vec<u8>>,
    pub raw_purged_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub resolved_ticket_id: Option<i64>,
    pub created_at_ms: i64,
}
