//! The rows a batch writes in a few multi-row statements instead of one or more statements per
//! message (issue 19): its `messages` rows, their kept raw bytes (`raw_messages`) and their
//! attachments (`attachment_blobs`, `attachments`). Their ids are allocated for the batch up
//! front ([`Batch::next_id`]): on SQLite the next rowids, read once under the write lock that
//! `BEGIN IMMEDIATE` holds, so they are exactly the ids SQLite would have given; on PostgreSQL a
//! range of the identity column's sequence, one statement for the batch's expected count (the
//! ids a batch does not use are left out, as a rolled-back insert leaves them: `messages.id`
//! and `attachments.id` are unique and increasing per worker, not gapless).
//!
//! The rows wait in memory only until [`PENDING_BYTES`] of them are held, and are written before
//! any statement that could read them ([`Batch::flush_pending`]): so a batch's attachment
//! contents are never all held at once, and every read in the batch sees what it wrote. One
//! query text serves both backends: the multi-row `VALUES` lists and a `WITH v(…) AS (VALUES …)`
//! are common to SQLite and PostgreSQL; only the lock clause and the id allocation differ.

use std::collections::HashSet;

use sqlx::Row;

use super::Batch;
use crate::store::sql::value_lists;
use crate::store::{Backend, Result};

/// The pending rows are written once they hold this many bytes (bodies, headers, attachment
/// contents, compressed raw mail). Measured (scripts/bench.sh, 10,000 messages): at 2 MiB the
/// SQLite worker's peak RSS grew from 84 to 111-115 MiB, at 256 KiB to 103-107, at 64 KiB it
/// stays at 88; PostgreSQL's round trips are mostly saved already at 64 KiB (a few messages
/// per statement).
const PENDING_BYTES: usize = 64 << 10;
/// `messages` rows per INSERT (27 values each): sqlx looks up each SQLite parameter by name, in
/// time linear in the statement's parameter count, so a statement's binding cost grows with the
/// square of its size (see `OUTCOME_ROWS_PER_STATEMENT`).
const MESSAGE_ROWS_PER_STATEMENT: usize = 12;
/// `attachments` rows per INSERT (9 values each), and blobs (3) and raw rows (4).
const ATTACHMENT_ROWS_PER_STATEMENT: usize = 30;
const BLOB_ROWS_PER_STATEMENT: usize = 50;
const RAW_ROWS_PER_STATEMENT: usize = 50;
/// How often an attachment is written again after `purge` emptied its blob meanwhile.
const PURGE_RACE_ATTEMPTS: usize = 3;

/// A statement that carries a batch's contents, not kept in sqlx's statement cache: a cached
/// SQLite statement keeps its last bound values (SQLite's own copies) until it is used again,
/// and each row count is its own statement text, so cached ones held tens of MiB of attachment
/// contents (peak RSS 83 → 115 MiB in the benchmark). Preparing it each time costs far less.
fn unprepared(sql: String) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false)
}

/// The tables whose ids a batch allocates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdTable {
    Messages,
    Attachments,
    /// On SQLite only: PostgreSQL's ticket numbers come one by one from the sequence, so that
    /// no reserved range leaves gaps in them.
    Tickets,
}

impl IdTable {
    fn name(self) -> &'static str {
        match self {
            IdTable::Messages => "messages",
            IdTable::Attachments => "attachments",
            IdTable::Tickets => "tickets",
        }
    }

    fn index(self) -> usize {
        match self {
            IdTable::Messages => 0,
            IdTable::Attachments => 1,
            IdTable::Tickets => 2,
        }
    }
}

/// Ids allocated for a batch and not used yet, per [`IdTable`].
#[derive(Debug, Default)]
pub(super) struct Ids {
    /// SQLite: the next id to give (`None` until read). PostgreSQL: unused.
    next: [Option<i64>; 3],
    /// PostgreSQL: reserved ids, given from the front.
    reserved: [std::collections::VecDeque<i64>; 3],
    /// How many of each the batch expects (from its prefetch), reserved at once on PostgreSQL.
    expected: [usize; 3],
}

impl Ids {
    /// The batch expects about `messages` message rows and `attachments` attachments.
    pub(super) fn expect(&mut self, messages: usize, attachments: usize) {
        self.expected = [messages, attachments, messages];
    }
}

/// A `tickets` row waiting to be written (SQLite: its id is the next rowid, read under the
/// batch's write lock, and its reference the one the database's trigger would give it).
#[derive(Debug)]
pub(super) struct TicketRow {
    pub id: i64,
    pub reference: String,
    pub mailbox: String,
    pub subject: String,
    pub requester_address: Option<String>,
    pub requester_name: Option<String>,
    pub related_ticket_id: Option<i64>,
    pub created_at: i64,
    pub sender_key: Option<String>,
}

/// `tickets` rows per INSERT (10 values each).
const TICKET_ROWS_PER_STATEMENT: usize = 40;

/// A `messages` row waiting to be written.
#[derive(Debug)]
pub(super) struct MessageRow {
    pub id: i64,
    pub ticket_id: i64,
    pub direction: &'static str,
    pub mailbox: String,
    pub message_id: String,
    pub message_id_source: &'static str,
    pub in_reply_to: Option<String>,
    pub thread_references: Option<String>,
    pub subject: String,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub from_addresses: String,
    pub to_addresses: String,
    pub cc_addresses: String,
    pub sent_at: Option<i64>,
    pub received_at: Option<i64>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    pub body_text_derived: Option<String>,
    pub auto_kind: Option<String>,
    pub headers: String,
    pub size_bytes: i64,
    pub content_sha256: String,
    pub fingerprint: String,
    pub fingerprint_version: i64,
    pub created_at: i64,
}

impl MessageRow {
    fn bytes(&self) -> usize {
        self.headers.len()
            + self.body_text.as_ref().map_or(0, String::len)
            + self.body_html.as_ref().map_or(0, String::len)
            + self.body_text_derived.as_ref().map_or(0, String::len)
            + self.subject.len()
            + 512
    }
}

/// An attachment waiting to be written, with its content for the blob.
#[derive(Debug)]
pub(super) struct AttachmentRow {
    pub id: i64,
    pub message_row_id: i64,
    pub filename: Option<String>,
    pub content_type: String,
    pub content_id: Option<String>,
    pub inline: bool,
    pub content: std::sync::Arc<[u8]>,
    pub sha256: String,
    pub created_at: i64,
}

/// What a batch has not written yet.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Written first: the other rows refer to them.
    tickets: Vec<TicketRow>,
    messages: Vec<MessageRow>,
    /// (message row id, original size, gzip of the raw bytes).
    raws: Vec<(i64, i64, Vec<u8>)>,
    attachments: Vec<AttachmentRow>,
    bytes: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.tickets.is_empty()
            && self.messages.is_empty()
            && self.raws.is_empty()
            && self.attachments.is_empty()
    }

    /// Whether a `tickets` row waits here (a row written now that refers to it must wait too).
    pub(super) fn has_tickets(&self) -> bool {
        !self.tickets.is_empty()
    }

    /// Whether a row waiting here belongs to `ticket_id` (a read of that ticket's messages must
    /// see it).
    pub(super) fn has_ticket(&self, ticket_id: i64) -> bool {
        self.messages.iter().any(|m| m.ticket_id == ticket_id)
    }
}

impl Batch {
    /// The next id of `table` for a row this batch writes.
    pub(super) async fn next_id(&mut self, table: IdTable) -> Result<i64> {
        let i = table.index();
        match self.backend {
            Backend::Sqlite => {
                let next = match self.ids.next[i] {
                    Some(next) => next,
                    // Under BEGIN IMMEDIATE's write lock no other writer can take these.
                    None => {
                        let sql = format!("SELECT COALESCE(MAX(id), 0) + 1 FROM {}", table.name());
                        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .fetch_one(&mut *self.tx)
                            .await?;
                        row.get::<i64, _>(0)
                    }
                };
                self.ids.next[i] = Some(next + 1);
                Ok(next)
            }
            Backend::Postgres => {
                if self.ids.reserved[i].is_empty() {
                    let n = self.ids.expected[i].max(1) as i64;
                    // The table name is one of ours; the count is bound.
                    let sql = format!(
                        "SELECT nextval(pg_get_serial_sequence('{}', 'id')) FROM generate_series(1, $1)",
                        table.name()
                    );
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(n)
                        .fetch_all(&mut *self.tx)
                        .await?;
                    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                    ids.sort_unstable();
                    self.ids.reserved[i].extend(ids);
                    // Further ones one batch's worth at a time, as the first.
                    self.ids.expected[i] = n as usize;
                }
                Ok(self.ids.reserved[i]
                    .pop_front()
                    .expect("reserved just above"))
            }
        }
    }

    /// Notes a `tickets` row (written with the next [`Batch::flush_pending`], first).
    pub(super) async fn pend_ticket(&mut self, row: TicketRow) -> Result<()> {
        self.pending.bytes += row.subject.len() + 256;
        self.pending.tickets.push(row);
        self.flush_if_full().await
    }

    /// Notes a `messages` row (written with the next [`Batch::flush_pending`]).
    pub(super) async fn pend_message(&mut self, row: MessageRow) -> Result<()> {
        self.pending.bytes += row.bytes();
        self.pending.messages.push(row);
        self.flush_if_full().await
    }

    /// Notes a message's kept raw bytes (compressed).
    pub(super) async fn pend_raw(&mut self, message_row_id: i64, raw: &[u8]) -> Result<()> {
        let compressed = crate::store::sql::gzip(raw);
        self.pending.bytes += compressed.len();
        self.pending
            .raws
            .push((message_row_id, raw.len() as i64, compressed));
        self.flush_if_full().await
    }

    /// Notes an attachment row and its content.
    pub(super) async fn pend_attachment(&mut self, row: AttachmentRow) -> Result<()> {
        self.pending.bytes += row.content.len() + 256;
        self.pending.attachments.push(row);
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Result<()> {
        if self.pending.bytes >= PENDING_BYTES {
            self.flush_pending().await?;
        }
        Ok(())
    }

    /// Writes every pending row: the messages (a Message-ID another worker stored meanwhile makes
    /// the batch conflicted), their raw bytes, then the attachments' blobs and rows.
    pub(super) async fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.write_tickets(&pending.tickets).await?;
        self.write_messages(&pending.messages).await?;
        self.write_raws(&pending.raws).await?;
        self.write_attachments(pending.attachments).await
    }

    /// The `messages` rows, [`MESSAGE_ROWS_PER_STATEMENT`] per statement. (`ON CONFLICT` names
    /// no target: on PostgreSQL the Message-ID is unique through a hash exclusion constraint,
    /// migration 0006, which only an untargeted `ON CONFLICT DO NOTHING` takes as its arbiter.)
    async fn write_messages(&mut self, rows: &[MessageRow]) -> Result<()> {
        for chunk in rows.chunks(MESSAGE_ROWS_PER_STATEMENT) {
            // Only placeholders are formatted into the statement; the values are bound.
            let sql = format!(
                "INSERT INTO messages (id, ticket_id, direction, mailbox, message_id, message_id_source, in_reply_to, \
                 thread_references, subject, from_address, from_name, reply_to, from_addresses, to_addresses, \
                 cc_addresses, sent_at, received_at, body_text, body_html, body_text_derived, auto_kind, headers, \
                 size_bytes, content_sha256, fingerprint, fingerprint_version, created_at) VALUES {} \
                 ON CONFLICT DO NOTHING RETURNING id",
                value_lists(chunk.len(), 27)
            );
            let mut query = unprepared(sql);
            for m in chunk {
                query = query
                    .bind(m.id)
                    .bind(m.ticket_id)
                    .bind(m.direction)
                    .bind(m.mailbox.as_str())
                    .bind(m.message_id.as_str())
                    .bind(m.message_id_source)
                    .bind(m.in_reply_to.as_deref())
                    .bind(m.thread_references.as_deref())
                    .bind(m.subject.as_str())
                    .bind(m.from_address.as_deref())
                    .bind(m.from_name.as_deref())
                    .bind(m.reply_to.as_deref())
                    .bind(m.from_addresses.as_str())
                    .bind(m.to_addresses.as_str())
                    .bind(m.cc_addresses.as_str())
                    .bind(m.sent_at)
                    .bind(m.received_at)
                    .bind(m.body_text.as_deref())
                    .bind(m.body_html.as_deref())
                    .bind(m.body_text_derived.as_deref())
                    .bind(m.auto_kind.as_deref())
                    .bind(m.headers.as_str())
                    .bind(m.size_bytes)
                    .bind(m.content_sha256.as_str())
                    .bind(m.fingerprint.as_str())
                    .bind(m.fingerprint_version)
                    .bind(m.created_at);
            }
            let written = query.fetch_all(&mut *self.tx).await?.len();
            if written < chunk.len() {
                // A Message-ID another worker stored meanwhile.
                return Err(self.conflict());
            }
        }
        Ok(())
    }

    /// The `tickets` rows, [`TICKET_ROWS_PER_STATEMENT`] per statement, with their ids and
    /// references (the trigger of migration 0002 sets a reference only where none is given).
    async fn write_tickets(&mut self, rows: &[TicketRow]) -> Result<()> {
        for chunk in rows.chunks(TICKET_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO tickets (id, reference, mailbox, subject, requester_address, requester_name, \
                 status, related_ticket_id, created_at, updated_at, sender_key) VALUES {}",
                ticket_value_lists(chunk.len())
            );
            let mut query = unprepared(sql);
            for t in chunk {
                query = query
                    .bind(t.id)
                    .bind(t.reference.as_str())
                    .bind(t.mailbox.as_str())
                    .bind(t.subject.as_str())
                    .bind(t.requester_address.as_deref())
                    .bind(t.requester_name.as_deref())
                    .bind(t.related_ticket_id)
                    .bind(t.created_at)
                    .bind(t.sender_key.as_deref());
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn write_raws(&mut self, rows: &[(i64, i64, Vec<u8>)]) -> Result<()> {
        for chunk in rows.chunks(RAW_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO raw_messages (message_row_id, compression, size_bytes, content) VALUES {}",
                value_lists(chunk.len(), 4)
            );
            let mut query = unprepared(sql);
            for (id, size, content) in chunk {
                query = query
                    .bind(*id)
                    .bind("gzip")
                    .bind(*size)
                    .bind(content.as_slice());
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Stores each attachment's content once per SHA-256 (a purged blob gets it back: the trigger
    /// of migration 0003), then the rows, each only from a blob that still has its content, and
    /// on PostgreSQL under `FOR SHARE` on that blob: `purge` locks a blob `FOR UPDATE` before it
    /// checks that no newer attachment shares it, so either it waits for this transaction (and
    /// then sees the new row) or this statement waits for its commit and finds the blob purged;
    /// then its content is stored again and its row written on the next pass. (On SQLite the
    /// batch holds the write lock: purge cannot run in between.)
    async fn write_attachments(&mut self, mut rows: Vec<AttachmentRow>) -> Result<()> {
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE OF b",
            Backend::Sqlite => "",
        };
        for _ in 0..PURGE_RACE_ATTEMPTS {
            if rows.is_empty() {
                return Ok(());
            }
            let mut seen = HashSet::new();
            let blobs: Vec<&AttachmentRow> =
                rows.iter().filter(|a| seen.insert(&a.sha256)).collect();
            for chunk in blobs.chunks(BLOB_ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO attachment_blobs (sha256, size_bytes, content) VALUES {} \
                     ON CONFLICT (sha256) DO NOTHING",
                    value_lists(chunk.len(), 3)
                );
                let mut query = unprepared(sql);
                for a in chunk {
                    query = query
                        .bind(a.sha256.as_str())
                        .bind(a.content.len() as i64)
                        .bind(&a.content[..]);
                }
                query.execute(&mut *self.tx).await?;
            }
            let mut written = HashSet::new();
            for chunk in rows.chunks(ATTACHMENT_ROWS_PER_STATEMENT) {
                // Only placeholders and the lock clause are formatted into the statement.
                let sql = format!(
                    "WITH v (id, message_id, filename, content_type, content_id, disposition, size_bytes, sha256, \
                     created_at) AS (VALUES {}) \
                     INSERT INTO attachments (id, message_id, filename, content_type, content_id, disposition, \
                     size_bytes, sha256, created_at) SELECT v.id, v.message_id, v.filename, v.content_type, \
                     v.content_id, v.disposition, v.size_bytes, b.sha256, v.created_at FROM v \
                     JOIN attachment_blobs b ON b.sha256 = v.sha256 WHERE b.purged_at IS NULL{lock} RETURNING id",
                    value_lists(chunk.len(), 9)
                );
                let mut query = unprepared(sql);
                for a in chunk {
                    query = query
                        .bind(a.id)
                        .bind(a.message_row_id)
                        .bind(a.filename.as_deref())
                        .bind(a.content_type.as_str())
                        .bind(a.content_id.as_deref())
                        .bind(if a.inline { "inline" } else { "attachment" })
                        .bind(a.content.len() as i64)
                        .bind(a.sha256.as_str())
                        .bind(a.created_at);
                }
                for row in query.fetch_all(&mut *self.tx).await? {
                    written.insert(row.get::<i64, _>(0));
                }
            }
            // Those whose blob `purge` emptied meanwhile are written on the next pass.
            rows.retain(|a| !written.contains(&a.id));
        }
        if rows.is_empty() {
            return Ok(());
        }
        // Purged again and again by concurrent runs: decide the batch again later.
        Err(self.conflict())
    }
}

/// `n` value lists of a `tickets` row: 9 bound values, the status `'new'` and `updated_at` the
/// same as `created_at` (`($1, $2, …, $6, 'new', $7, $8, $8, $9)`).
fn ticket_value_lists(n: usize) -> String {
    (0..n)
        .map(|i| {
            let p = |k: usize| format!("${}", i * 9 + k);
            format!(
                "({}, {}, {}, {}, {}, {}, 'new', {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(8),
                p(9)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
