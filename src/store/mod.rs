//! Every SQL statement of mailintake. One set of queries serves SQLite and PostgreSQL through sqlx's
//! `Any` driver (`$n` placeholders, `RETURNING`, BIGINT times in unix milliseconds); only the
//! migrations differ per backend (`migrations/sqlite`, `migrations/postgres`).
//!
//! Exactly-once rests on two rules kept here: the outcome of an IMAP message (its ticket, quarantine
//! or duplicate record) and the folder's checkpoint are written in one transaction; and that row,
//! keyed by (mailbox, folder, uidvalidity, uid), records whether the IMAP disposition is still due.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Executor, Row};

use crate::ingest::{KnownTicket, ParsedMail, Party, QuarantineReason, ticket_reference};
use crate::time::now_ms;
pub use outbox::{AckKind, OutboxDraft, OutboxRow};

pub mod admin;
mod errors;
pub mod outbox;
pub mod tokens;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The database backends mailintake runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Database errors; `Conflict` is the one a caller branches on (another worker got there first).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a row for this message already exists (written concurrently by another worker)")]
    Conflict,
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Now, as the unix milliseconds stored in every time column.
/// Where a message sits in IMAP: the key of its `imap_messages` row.
#[derive(Debug, Clone)]
pub struct ImapLocation<'a> {
    pub mailbox: &'a str,
    pub folder: &'a str,
    pub uidvalidity: u32,
    pub uid: u32,
    pub size: u64,
    pub internal_date_ms: Option<i64>,
}

/// A folder's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderState {
    pub uidvalidity: u32,
    /// The highest UID whose outcome is committed.
    pub last_uid: u32,
    /// Mail received (INTERNALDATE, unix ms) before this is left alone: the mailbox's first-start
    /// policy, kept so that a UIDVALIDITY resync honours it too.
    pub ingest_after_ms: Option<i64>,
    /// Mail received before this (unix ms; the folder's first sweep) gets no acknowledgement.
    pub ack_after_ms: Option<i64>,
}

/// An `imap_messages` row whose IMAP disposition has not been confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDisposition {
    pub uid: u32,
    /// What to do: `seen`, `move:<folder>`, `quarantine:<folder>`, `delete` or `none`.
    pub disposition: String,
}

/// The outcome recorded for one IMAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    pub row_id: i64,
    pub uid: u32,
    pub outcome: String,
    pub ticket_id: Option<i64>,
    pub disposed: bool,
    pub disposition: String,
}

/// A ticket as `mailintake tickets` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TicketSummary {
    pub id: i64,
    pub reference: String,
    pub mailbox: String,
    pub subject: String,
    pub requester: Option<String>,
    pub status: String,
    pub created_at_ms: i64,
    pub n_messages: i64,
    pub n_attachments: i64,
}

impl TicketSummary {
    /// From a row of `id, reference, mailbox, subject, requester_address, status, created_at,
    /// message count, attachment count`.
    fn from_row(r: &sqlx::any::AnyRow) -> TicketSummary {
        TicketSummary {
            id: r.get(0),
            reference: r.get::<Option<String>, _>(1).unwrap_or_default(),
            mailbox: r.get(2),
            subject: r.get(3),
            requester: r.get(4),
            status: r.get(5),
            created_at_ms: r.get(6),
            n_messages: r.get(7),
            n_attachments: r.get(8),
        }
    }
}

/// An attachment as `mailintake attachment` writes it out.
#[derive(Debug, Clone)]
pub struct StoredAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub sha256: String,
    pub content: Vec<u8>,
}

/// The store: a connection pool and its backend.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating an SQLite file and its folder on first use) and migrates the database.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens without migrating.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let redacted = crate::config::redact_url(url);
        let connect_error = |source| StoreError::Connect {
            url: redacted.clone(),
            source,
        };
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url).map_err(connect_error)?)
        } else {
            (Backend::Postgres, url.to_string())
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_error)?;
        let pool = AnyPoolOptions::new()
            // SQLite serialises writers anyway; a few connections let readers run beside one.
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _meta| Box::pin(errors::release_check(conn)))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // 16 KiB pages (taken only by a new, empty database) write message bodies
                        // and attachments in a quarter of the pages (and system calls) of 4 KiB.
                        // WAL lets readers (the helpdesk application) work during ingest; FULL
                        // fsyncs every commit, which exactly-once needs before the IMAP disposition.
                        conn.execute(
                            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn folder_state(&self, mailbox: &str, folder: &str) -> Result<Option<FolderState>> {
        let row = sqlx::query(
            "SELECT uidvalidity, last_uid, ingest_after, ack_after FROM mailbox_state WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| FolderState {
            uidvalidity: r.get::<i64, _>(0) as u32,
            last_uid: r.get::<i64, _>(1) as u32,
            ingest_after_ms: r.get(2),
            ack_after_ms: r.get(3),
        }))
    }

    /// The message of this folder that failed on the last sweeps: (uid, consecutive failures,
    /// the last error).
    pub async fn stuck_message(
        &self,
        mailbox: &str,
        folder: &str,
    ) -> Result<Option<(u32, i64, String)>> {
        let row = sqlx::query(
            "SELECT stuck_uid, stuck_count, stuck_error FROM mailbox_state WHERE mailbox = $1 AND folder = $2 \
             AND stuck_uid IS NOT NULL",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            (
                r.get::<i64, _>(0) as u32,
                r.get(1),
                r.get::<Option<String>, _>(2).unwrap_or_default(),
            )
        }))
    }

    /// Counts one more failure of the fetch that starts at `uid` (a new UID starts at one).
    pub async fn note_stuck(
        &self,
        mailbox: &str,
        folder: &str,
        uid: u32,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE mailbox_state SET stuck_count = CASE WHEN stuck_uid = $1 THEN stuck_count + 1 ELSE 1 END, \
             stuck_uid = $1, stuck_error = $2, updated_at = $3 WHERE mailbox = $4 AND folder = $5",
        )
        .bind(i64::from(uid))
        .bind(error)
        .bind(now_ms())
        .bind(mailbox)
        .bind(folder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The stuck message came through (or was set aside).
    pub async fn clear_stuck(&self, mailbox: &str, folder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE mailbox_state SET stuck_uid = NULL, stuck_count = 0, stuck_error = NULL \
             WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox)
        .bind(folder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a folder's (new) UIDVALIDITY with its checkpoint.
    pub async fn set_folder_state(
        &self,
        mailbox: &str,
        folder: &str,
        state: FolderState,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mailbox_state (mailbox, folder, uidvalidity, last_uid, ingest_after, ack_after, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, \
             last_uid = excluded.last_uid, ingest_after = excluded.ingest_after, ack_after = excluded.ack_after, \
             updated_at = excluded.updated_at",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(state.uidvalidity))
        .bind(i64::from(state.last_uid))
        .bind(state.ingest_after_ms)
        .bind(state.ack_after_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The outcomes already recorded for some UIDs of a folder (a restart after a crash finds the
    /// messages it committed but did not dispose of).
    pub async fn recorded_outcomes(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        first_uid: u32,
        last_uid: u32,
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
        Ok(rows
            .into_iter()
            .map(|r| RecordedOutcome {
                row_id: r.get(0),
                uid: r.get::<i64, _>(1) as u32,
                outcome: r.get(2),
                ticket_id: r.get(3),
                disposed: r.get::<Option<i64>, _>(4).is_some(),
                disposition: r.get(5),
            })
            .collect())
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
            "SELECT uid, disposition FROM imap_messages \
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
                uid: r.get::<i64, _>(0) as u32,
                disposition: r.get(1),
            })
            .collect())
    }

    /// Records that the IMAP dispositions of these UIDs of a folder are done: one statement per
    /// few hundred UIDs.
    pub async fn mark_disposed(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<()> {
        let now = now_ms();
        for chunk in uids.chunks(500) {
            // The UIDs are integers: formatting them into the statement is safe.
            let uids: Vec<String> = chunk.iter().map(u32::to_string).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE imap_messages SET disposed_at = $1 WHERE mailbox = $2 AND folder = $3 \
                 AND uidvalidity = $4 AND uid IN ({})",
                uids.join(", ")
            )))
            .bind(now)
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(uidvalidity))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Starts a transaction in which a batch of outcomes is recorded; nothing is visible (or
    /// durable) until [`Batch::commit`].
    pub async fn begin(&self) -> Result<Batch> {
        let tx = match self.backend {
            // The write lock from the start: the facts read in the batch are the latest, and no
            // other writer (a second worker, the sender) can commit in between.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Batch {
            tx,
            prefetched: None,
            written: Written::default(),
            outcomes: Vec::new(),
            touched_tickets: HashMap::new(),
            checkpoints: Vec::new(),
            conflicted: false,
        })
    }

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
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(TicketSummary::from_row)
            .collect())
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
            "SELECT a.filename, a.content_type, a.sha256, b.content FROM attachments a \
             JOIN attachment_blobs b ON b.sha256 = a.sha256 WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| StoredAttachment {
            filename: r.get(0),
            content_type: r.get(1),
            sha256: r.get(2),
            content: r.get(3),
        }))
    }

    /// The pool, for tests and admin commands that read rows directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// What is known of a quarantined message's envelope (from its headers, if they were read).
#[derive(Debug, Clone, Default)]
pub struct QuarantineEnvelope {
    pub message_id: String,
    pub from: Option<String>,
    pub subject: Option<String>,
}

/// A transaction that records the outcomes of a batch of messages together with the folder's
/// checkpoint: one commit (one fsync) for the batch, all or nothing.
///
/// A write that finds another worker's row returns `Conflict`: a Message-ID stored meanwhile when
/// the message is inserted, a UID recorded meanwhile at [`Batch::commit`] (the `imap_messages`
/// rows are written there, 25 per statement). Either way the batch is rolled back and must
/// be decided again from what is stored now; `commit` refuses a batch that met one. On SQLite
/// this cannot happen (`BEGIN IMMEDIATE` holds the write lock from the first read); on PostgreSQL
/// it is rare. Undoing the whole batch instead of one message spares two statements (a savepoint)
/// per message.
pub struct Batch {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Facts read for the whole batch at its start ([`Batch::prefetch`]), so that most messages
    /// need no statement of their own to be decided.
    prefetched: Option<Prefetched>,
    /// What this batch wrote that bears on later facts: answers from `prefetched` add it.
    written: Written,
    /// The `imap_messages` rows of the batch, written at commit by a few multi-row statements
    /// instead of one statement per message. (Attachments are not deferred: holding a batch's
    /// contents until commit raised peak RSS by a third for a few percent of speed.)
    outcomes: Vec<OutcomeRow>,
    /// The tickets the batch's follow-ups went on (→ reopened), updated at commit in one
    /// statement; [`Batch::ticket`] already counts a reopening.
    touched_tickets: HashMap<i64, bool>,
    /// The highest UID recorded per folder (mailbox, folder, uidvalidity): the checkpoint is moved
    /// once, at commit, instead of once per message.
    checkpoints: Vec<(String, String, u32, u32)>,
    /// A write met another worker's row: this batch must not be committed.
    conflicted: bool,
}

/// The ticket a follow-up goes on, and how.
#[derive(Debug, Clone, Copy)]
pub struct FollowUpOn<'a> {
    pub ticket_id: i64,
    /// Set the ticket's status back to `open`.
    pub reopen: bool,
    /// `auto-reply`, `bounce`, `read-receipt` for automatic mail.
    pub auto_kind: Option<&'a str>,
}

/// What [`Batch::message_facts`] found.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub same_message_id: Option<crate::ingest::KnownMessage>,
    pub sender_recent_tickets: u32,
    pub released: bool,
}

/// What a batch's messages will ask, known before the first is decided: see [`Batch::prefetch`].
#[derive(Debug, Default)]
pub struct BatchQuestions<'a> {
    pub mailbox: &'a str,
    /// The Message-IDs of the batch's messages.
    pub message_ids: Vec<&'a str>,
    /// Their senders (From addresses).
    pub senders: Vec<&'a str>,
    /// The Message-IDs they refer to (In-Reply-To, References, reported messages).
    pub referenced_ids: Vec<&'a str>,
    /// The start of the window of the per-sender limit.
    pub since_ms: i64,
}

/// The answers to a batch's [`BatchQuestions`], as stored when the batch began.
#[derive(Debug, Default)]
struct Prefetched {
    mailbox: String,
    since_ms: i64,
    /// Every Message-ID asked about (own and referenced), and the stored inbound message
    /// (ticket, fingerprint) for those that have one.
    asked_messages: HashSet<String>,
    /// The referenced IDs asked about (they were looked up in the outbox too).
    asked_references: HashSet<String>,
    messages: HashMap<String, (i64, String)>,
    /// Referenced IDs that are our own outbox messages, with their ticket.
    outbox: HashMap<String, i64>,
    /// lower(sender) → tickets opened since `since_ms`, for every ASCII sender asked about (SQL's
    /// `lower` and Rust's agree on ASCII only; other senders are queried one by one).
    senders: HashMap<String, u32>,
    /// Message-IDs of the batch with an unused release.
    released: HashSet<String>,
}

/// What a batch wrote so far that later facts in it depend on.
#[derive(Debug, Default)]
struct Written {
    /// Message-ID → (ticket, fingerprint) of the messages inserted.
    messages: HashMap<String, (i64, String)>,
    /// lower(sender) → tickets opened.
    opened_by: HashMap<String, u32>,
    /// Message-IDs whose release was used.
    used_releases: HashSet<String>,
}

/// IDs per `IN (…)` list of the prefetch (a default batch's worth; see OUTCOME_ROWS_PER_STATEMENT
/// for why not more).
const IDS_PER_STATEMENT: usize = 200;

/// An `imap_messages` row waiting for [`Batch::commit`].
struct OutcomeRow {
    mailbox: String,
    folder: String,
    uidvalidity: u32,
    uid: u32,
    message_id: String,
    size: u64,
    outcome: &'static str,
    ticket_id: Option<i64>,
    message_row_id: Option<i64>,
    quarantine_id: Option<i64>,
    detail: Option<String>,
    disposition: String,
    created_at: i64,
}

/// `imap_messages` rows per INSERT at commit (13 parameters each). Not more: sqlx looks up every
/// SQLite parameter's name, which takes time linear in the parameter count, so a statement's
/// binding cost grows with the square of its size (2.8 % of all CPU at 100 rows).
const OUTCOME_ROWS_PER_STATEMENT: usize = 25;

/// What an `imap_messages` row records, beyond the message's location.
struct Outcome<'a> {
    outcome: &'static str,
    ticket_id: Option<i64>,
    message_row_id: Option<i64>,
    quarantine_id: Option<i64>,
    detail: Option<String>,
    disposition: &'a str,
}

impl Batch {
    /// What is stored about a message about to be recorded, in one statement: the stored message
    /// with the same Message-ID, how many tickets `sender` opened since `since_ms`, and whether an
    /// operator released this Message-ID from the quarantine of `mailbox` (not used yet).
    pub async fn message_facts(
        &mut self,
        mailbox: &str,
        message_id: &str,
        sender: Option<&str>,
        since_ms: i64,
    ) -> Result<MessageFacts> {
        if let Some(answer) = self.prefetched_facts(mailbox, message_id, sender, since_ms) {
            return Ok(answer);
        }
        let row = sqlx::query(
            "SELECT m.ticket_id, m.fingerprint, \
             (SELECT COUNT(*) FROM tickets WHERE lower(requester_address) = lower($2) AND created_at >= $3), \
             (SELECT COUNT(*) FROM quarantine WHERE mailbox = $4 AND message_id = $1 \
              AND released_at IS NOT NULL AND release_used_at IS NULL) \
             FROM (SELECT 1 AS one) AS q LEFT JOIN messages m ON m.message_id = $1",
        )
        .bind(message_id)
        .bind(sender.map(str::to_string))
        .bind(since_ms)
        .bind(mailbox)
        .fetch_one(&mut *self.tx)
        .await?;
        let same_message_id = match (row.get::<Option<i64>, _>(0), row.get(1)) {
            (Some(ticket_id), Some(fingerprint)) => Some(crate::ingest::KnownMessage {
                ticket_id,
                fingerprint,
            }),
            _ => None,
        };
        Ok(MessageFacts {
            same_message_id,
            sender_recent_tickets: row.get::<i64, _>(2) as u32,
            released: row.get::<i64, _>(3) > 0,
        })
    }

    /// The ticket owning one of these Message-IDs (our stored inbound messages or our outbox),
    /// the first of them in order that is known: one statement per `IDS_PER_STATEMENT` IDs.
    pub async fn ticket_of_message_ids(&mut self, ids: &[String]) -> Result<Option<KnownTicket>> {
        if let Some(known) = self.prefetched_thread(ids) {
            return match known {
                Some(ticket_id) => self.ticket(ticket_id).await,
                None => Ok(None),
            };
        }
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            // Only placeholders are formatted into the statement; the IDs are bound.
            let sql = format!(
                "SELECT message_id, ticket_id FROM messages WHERE message_id IN ({list}) \
                 UNION ALL SELECT message_id, ticket_id FROM outbox WHERE message_id IN ({list}) \
                 AND ticket_id IS NOT NULL"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            let found: HashMap<String, i64> = query
                .fetch_all(&mut *self.tx)
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            if let Some(ticket_id) = chunk.iter().find_map(|id| found.get(id)) {
                return self.ticket(*ticket_id).await;
            }
        }
        Ok(None)
    }

    /// The ticket with this reference (`TCK-000123`).
    pub async fn ticket_by_reference(&mut self, reference: &str) -> Result<Option<KnownTicket>> {
        let row = sqlx::query("SELECT id FROM tickets WHERE reference = $1")
            .bind(reference)
            .fetch_optional(&mut *self.tx)
            .await?;
        match row {
            Some(row) => self.ticket(row.get(0)).await,
            None => Ok(None),
        }
    }

    /// A ticket with its status and participants (requester, and the senders of its messages),
    /// in one statement: the ticket's row first, then one row per sender address.
    async fn ticket(&mut self, ticket_id: i64) -> Result<Option<KnownTicket>> {
        let rows = sqlx::query(
            "SELECT 0, status, requester_address FROM tickets WHERE id = $1 \
             UNION ALL SELECT 1, NULL, from_address FROM messages WHERE ticket_id = $1 AND from_address IS NOT NULL \
             UNION ALL SELECT 1, NULL, reply_to FROM messages WHERE ticket_id = $1 AND reply_to IS NOT NULL",
        )
        .bind(ticket_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let Some(mut status) = rows
            .iter()
            .find(|r| r.get::<i64, _>(0) == 0)
            .map(|r| r.get::<String, _>(1))
        else {
            return Ok(None);
        };
        // Reopened earlier in this batch (written at commit).
        if self.touched_tickets.get(&ticket_id) == Some(&true) {
            status = "open".to_string();
        }
        let mut participants: Vec<String> = Vec::new();
        // The requester first, then the senders in the order the database gives them.
        let mut ordered: Vec<&sqlx::any::AnyRow> = rows.iter().collect();
        ordered.sort_by_key(|r| r.get::<i64, _>(0));
        for row in ordered {
            if let Some(address) = row.get::<Option<String>, _>(2) {
                let address = address.to_ascii_lowercase();
                if !participants.contains(&address) {
                    participants.push(address);
                }
            }
        }
        Ok(Some(KnownTicket {
            ticket_id,
            status,
            participants,
        }))
    }

    /// Reads, in a few statements for the whole batch, what its messages' decisions will ask:
    /// the stored messages with their Message-IDs and the ones they refer to, the senders' recent
    /// tickets and the unused releases. [`Batch::message_facts`] and
    /// [`Batch::ticket_of_message_ids`] then answer from it (adding what the batch wrote since)
    /// instead of one statement per message; anything not asked here is still queried.
    pub async fn prefetch(&mut self, questions: &BatchQuestions<'_>) -> Result<()> {
        let mut prefetched = Prefetched {
            mailbox: questions.mailbox.to_string(),
            since_ms: questions.since_ms,
            ..Prefetched::default()
        };
        let mut ids: Vec<&str> = questions.message_ids.clone();
        ids.extend(&questions.referenced_ids);
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT message_id, ticket_id, fingerprint FROM messages WHERE message_id IN ({list})"
            )));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched
                    .messages
                    .insert(row.get(0), (row.get(1), row.get(2)));
            }
        }
        let mut referenced: Vec<&str> = questions.referenced_ids.clone();
        referenced.sort_unstable();
        referenced.dedup();
        for chunk in referenced.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT message_id, ticket_id FROM outbox WHERE message_id IN ({list}) AND ticket_id IS NOT NULL"
            )));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched.outbox.insert(row.get(0), row.get(1));
            }
        }
        let mut senders: Vec<String> = questions
            .senders
            .iter()
            .filter(|s| s.is_ascii())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        senders.sort_unstable();
        senders.dedup();
        for chunk in senders.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(2, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT lower(requester_address), COUNT(*) FROM tickets \
                 WHERE lower(requester_address) IN ({list}) AND created_at >= $1 \
                 GROUP BY lower(requester_address)"
            )))
            .bind(questions.since_ms);
            for sender in chunk {
                query = query.bind(sender.as_str());
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched
                    .senders
                    .insert(row.get(0), row.get::<i64, _>(1) as u32);
            }
            for sender in chunk {
                prefetched.senders.entry(sender.clone()).or_insert(0);
            }
        }
        for chunk in questions.message_ids.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(2, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT message_id FROM quarantine WHERE mailbox = $1 AND released_at IS NOT NULL \
                 AND release_used_at IS NULL AND message_id IN ({list})"
            )))
            .bind(questions.mailbox);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched.released.insert(row.get(0));
            }
        }
        prefetched.asked_messages = ids.iter().map(|id| id.to_string()).collect();
        prefetched.asked_references = referenced.iter().map(|id| id.to_string()).collect();
        self.prefetched = Some(prefetched);
        Ok(())
    }

    /// [`Batch::message_facts`] from the prefetch, when it asked about this message.
    fn prefetched_facts(
        &self,
        mailbox: &str,
        message_id: &str,
        sender: Option<&str>,
        since_ms: i64,
    ) -> Option<MessageFacts> {
        let prefetched = self.prefetched.as_ref()?;
        if prefetched.mailbox != mailbox
            || prefetched.since_ms != since_ms
            || !prefetched.asked_messages.contains(message_id)
        {
            return None;
        }
        let sender_recent_tickets = match sender.map(str::to_ascii_lowercase) {
            Some(sender) => {
                prefetched.senders.get(&sender)?
                    + self.written.opened_by.get(&sender).copied().unwrap_or(0)
            }
            None => 0,
        };
        let same_message_id = self
            .written
            .messages
            .get(message_id)
            .or_else(|| prefetched.messages.get(message_id))
            .map(|(ticket_id, fingerprint)| crate::ingest::KnownMessage {
                ticket_id: *ticket_id,
                fingerprint: fingerprint.clone(),
            });
        Some(MessageFacts {
            same_message_id,
            sender_recent_tickets,
            released: prefetched.released.contains(message_id)
                && !self.written.used_releases.contains(message_id),
        })
    }

    /// [`Batch::ticket_of_message_ids`] from the prefetch: `Some(answer)` when every ID was asked
    /// about (the first known one in order wins), `None` when the database must be asked.
    fn prefetched_thread(&self, ids: &[String]) -> Option<Option<i64>> {
        let prefetched = self.prefetched.as_ref()?;
        for id in ids {
            if let Some((ticket_id, _)) = self.written.messages.get(id) {
                return Some(Some(*ticket_id));
            }
            if !prefetched.asked_references.contains(id) {
                return None;
            }
            if let Some((ticket_id, _)) = prefetched.messages.get(id) {
                return Some(Some(*ticket_id));
            }
            if let Some(ticket_id) = prefetched.outbox.get(id) {
                return Some(Some(*ticket_id));
            }
        }
        Some(None)
    }

    /// Opens a ticket with `mail` as its first message and records the outcome. Returns the ticket
    /// id and reference. `Conflict` when the Message-ID was stored meanwhile by another worker
    /// (see [`Batch`]; a UID recorded meanwhile is found at commit).
    pub async fn new_ticket(
        &mut self,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
        related: Option<i64>,
        keep_raw: Option<&[u8]>,
        disposition: &str,
    ) -> Result<(i64, String)> {
        let now = now_ms();
        // The database sets the reference (migration 0002), the same one ticket_reference gives.
        let ticket_id: i64 = sqlx::query(
            "INSERT INTO tickets (mailbox, subject, requester_address, requester_name, status, related_ticket_id, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 'new', $5, $6, $6) RETURNING id",
        )
        .bind(at.mailbox)
        .bind(crate::ingest::normalized_subject(&mail.subject))
        .bind(mail.from.as_ref().map(|p| p.address.clone()))
        .bind(mail.from.as_ref().and_then(|p| p.name.clone()))
        .bind(related)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?
        .get(0);
        let message_row_id = self
            .insert_message(ticket_id, at, mail, None, keep_raw)
            .await?;
        if let Some(from) = &mail.from {
            *self
                .written
                .opened_by
                .entry(from.address.to_ascii_lowercase())
                .or_insert(0) += 1;
        }
        self.record_outcome(
            at,
            &mail.message_id,
            Outcome {
                outcome: "ticket",
                ticket_id: Some(ticket_id),
                message_row_id: Some(message_row_id),
                quarantine_id: None,
                detail: None,
                disposition,
            },
        );
        Ok((ticket_id, ticket_reference(ticket_id)))
    }

    /// Adds `mail` to an existing ticket (reopening it when asked) and records the outcome.
    /// `Conflict` as for [`Batch::new_ticket`].
    pub async fn follow_up(
        &mut self,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
        on: FollowUpOn<'_>,
        keep_raw: Option<&[u8]>,
        disposition: &str,
    ) -> Result<()> {
        let FollowUpOn {
            ticket_id,
            reopen,
            auto_kind,
        } = on;
        let message_row_id = self
            .insert_message(ticket_id, at, mail, auto_kind, keep_raw)
            .await?;
        // Written at commit, one statement for all the batch's tickets.
        *self.touched_tickets.entry(ticket_id).or_insert(false) |= reopen;
        self.record_outcome(
            at,
            &mail.message_id,
            Outcome {
                outcome: "follow-up",
                ticket_id: Some(ticket_id),
                message_row_id: Some(message_row_id),
                quarantine_id: None,
                detail: auto_kind.map(|k| format!("automatic mail ({k})")),
                disposition,
            },
        );
        Ok(())
    }

    /// Records a message that is already stored (same Message-ID and fingerprint).
    pub fn duplicate(
        &mut self,
        at: &ImapLocation<'_>,
        message_id: &str,
        ticket_id: i64,
        disposition: &str,
    ) {
        self.record_outcome(
            at,
            message_id,
            Outcome {
                outcome: "duplicate",
                ticket_id: Some(ticket_id),
                message_row_id: None,
                quarantine_id: None,
                detail: Some("the same message is already stored".into()),
                disposition,
            },
        );
    }

    /// Records a message that becomes no ticket on purpose (automatic mail that belongs to no
    /// ticket, a loop, or mail older than the first-start cutoff).
    pub fn ignored(
        &mut self,
        at: &ImapLocation<'_>,
        message_id: &str,
        detail: &str,
        disposition: &str,
    ) {
        self.record_outcome(
            at,
            message_id,
            Outcome {
                outcome: "ignored",
                ticket_id: None,
                message_row_id: None,
                quarantine_id: None,
                detail: Some(detail.to_string()),
                disposition,
            },
        );
    }

    /// Records a quarantined message (with its raw bytes when they were downloaded). Returns the
    /// quarantine id.
    pub async fn quarantine(
        &mut self,
        at: &ImapLocation<'_>,
        envelope: &QuarantineEnvelope,
        reason: &QuarantineReason,
        raw: Option<&[u8]>,
        disposition: &str,
    ) -> Result<i64> {
        let quarantine_id: i64 = sqlx::query(
            "INSERT INTO quarantine (mailbox, folder, uidvalidity, uid, message_id, size_bytes, from_address, subject, \
             reason, detail, raw, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind(at.mailbox)
        .bind(at.folder)
        .bind(i64::from(at.uidvalidity))
        .bind(i64::from(at.uid))
        .bind(&envelope.message_id)
        .bind(at.size as i64)
        .bind(envelope.from.clone())
        .bind(envelope.subject.clone())
        .bind(reason.code())
        .bind(reason.detail())
        .bind(raw)
        .bind(now_ms())
        .fetch_one(&mut *self.tx)
        .await?
        .get(0);
        self.record_outcome(
            at,
            &envelope.message_id,
            Outcome {
                outcome: "quarantined",
                ticket_id: None,
                message_row_id: None,
                quarantine_id: Some(quarantine_id),
                detail: Some(reason.detail()),
                disposition,
            },
        );
        Ok(quarantine_id)
    }

    /// Writes the batch's `imap_messages` rows, moves the checkpoints of the folders written to,
    /// then makes the batch durable. A batch that met a conflict (here: a UID another worker
    /// recorded meanwhile) is refused and rolled back: it has to be decided again.
    pub async fn commit(mut self) -> Result<()> {
        if !self.conflicted {
            self.write_ticket_updates().await?;
            self.write_outcomes().await?;
        }
        if self.conflicted {
            self.tx.rollback().await?;
            return Err(StoreError::Conflict);
        }
        let now = now_ms();
        for (mailbox, folder, uidvalidity, uid) in std::mem::take(&mut self.checkpoints) {
            // The checkpoint only moves forward, and only for the UIDVALIDITY it was recorded under.
            sqlx::query(
                "UPDATE mailbox_state SET last_uid = $1, updated_at = $2 \
                 WHERE mailbox = $3 AND folder = $4 AND uidvalidity = $5 AND last_uid < $1",
            )
            .bind(i64::from(uid))
            .bind(now)
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(uidvalidity))
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Undoes everything written in this batch.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Marks the batch as conflicted (see [`Batch`]) and returns the error to hand up.
    fn conflict(&mut self) -> StoreError {
        self.conflicted = true;
        StoreError::Conflict
    }

    /// Inserts an inbound message row (and its attachments) on `ticket_id`. `Conflict` when the
    /// Message-ID is stored already.
    async fn insert_message(
        &mut self,
        ticket_id: i64,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
        auto_kind: Option<&str>,
        keep_raw: Option<&[u8]>,
    ) -> Result<i64> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO messages (ticket_id, direction, mailbox, message_id, message_id_source, in_reply_to, \
             thread_references, subject, from_address, from_name, reply_to, to_addresses, cc_addresses, sent_at, \
             received_at, body_text, body_html, body_text_derived, auto_kind, headers, size_bytes, content_sha256, \
             fingerprint, created_at) \
             VALUES ($1, 'inbound', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23) ON CONFLICT (message_id) DO NOTHING RETURNING id",
        )
        .bind(ticket_id)
        .bind(at.mailbox)
        .bind(&mail.message_id)
        .bind(mail.message_id_source.as_str())
        .bind(mail.in_reply_to.first().cloned())
        .bind(join_ids(&mail.references))
        .bind(&mail.subject)
        .bind(mail.from.as_ref().map(|p| p.address.clone()))
        .bind(mail.from.as_ref().and_then(|p| p.name.clone()))
        .bind(mail.reply_to.as_ref().map(|p| p.address.clone()))
        .bind(parties_json(&mail.to))
        .bind(parties_json(&mail.cc))
        .bind(mail.date_ms)
        .bind(at.internal_date_ms)
        .bind(mail.text_body.as_deref())
        .bind(mail.html_body.as_deref())
        .bind(mail.text_body_derived.as_deref())
        .bind(auto_kind.map(str::to_string))
        .bind(&mail.headers)
        .bind(mail.size as i64)
        .bind(&mail.content_sha256)
        .bind(&mail.fingerprint)
        .bind(now)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = inserted else {
            return Err(self.conflict());
        };
        let message_row_id: i64 = row.get(0);
        self.written.messages.insert(
            mail.message_id.clone(),
            (ticket_id, mail.fingerprint.clone()),
        );
        if let Some(raw) = keep_raw {
            sqlx::query(
                "INSERT INTO raw_messages (message_row_id, compression, size_bytes, content) VALUES ($1, 'gzip', $2, $3)",
            )
            .bind(message_row_id)
            .bind(raw.len() as i64)
            .bind(gzip(raw))
            .execute(&mut *self.tx)
            .await?;
        }
        for attachment in &mail.attachments {
            sqlx::query(
                "INSERT INTO attachment_blobs (sha256, size_bytes, content) VALUES ($1, $2, $3) \
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&attachment.sha256)
            .bind(attachment.content.len() as i64)
            .bind(attachment.content.as_slice())
            .execute(&mut *self.tx)
            .await?;
            sqlx::query(
                "INSERT INTO attachments (message_id, filename, content_type, content_id, disposition, size_bytes, \
                 sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(message_row_id)
            .bind(attachment.filename.as_deref())
            .bind(&attachment.content_type)
            .bind(attachment.content_id.as_deref())
            .bind(if attachment.inline { "inline" } else { "attachment" })
            .bind(attachment.content.len() as i64)
            .bind(&attachment.sha256)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(message_row_id)
    }

    /// Writes what the batch's follow-ups did to their tickets: the time of the last article, and
    /// the status of those reopened.
    async fn write_ticket_updates(&mut self) -> Result<()> {
        let touched: Vec<(i64, bool)> = std::mem::take(&mut self.touched_tickets)
            .into_iter()
            .collect();
        let now = now_ms();
        for chunk in touched.chunks(IDS_PER_STATEMENT) {
            // The ids are integers from our own rows: formatting them into the statement is safe.
            let ids = |reopened_only: bool| {
                chunk
                    .iter()
                    .filter(|(_, reopen)| *reopen || !reopened_only)
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let reopened = ids(true);
            let set_status = if reopened.is_empty() {
                String::new()
            } else {
                format!(", status = CASE WHEN id IN ({reopened}) THEN 'open' ELSE status END")
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tickets SET updated_at = $1{set_status} WHERE id IN ({})",
                ids(false)
            )))
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Notes the `imap_messages` row (written at commit) and the folder's new checkpoint.
    fn record_outcome(&mut self, at: &ImapLocation<'_>, message_id: &str, outcome: Outcome<'_>) {
        self.outcomes.push(OutcomeRow {
            mailbox: at.mailbox.to_string(),
            folder: at.folder.to_string(),
            uidvalidity: at.uidvalidity,
            uid: at.uid,
            message_id: message_id.to_string(),
            size: at.size,
            outcome: outcome.outcome,
            ticket_id: outcome.ticket_id,
            message_row_id: outcome.message_row_id,
            quarantine_id: outcome.quarantine_id,
            detail: outcome.detail,
            disposition: outcome.disposition.to_string(),
            created_at: now_ms(),
        });
        let folder = (at.mailbox, at.folder, at.uidvalidity);
        match self
            .checkpoints
            .iter_mut()
            .find(|(m, f, v, _)| (m.as_str(), f.as_str(), *v) == folder)
        {
            Some(checkpoint) => checkpoint.3 = checkpoint.3.max(at.uid),
            None => self.checkpoints.push((
                at.mailbox.to_string(),
                at.folder.to_string(),
                at.uidvalidity,
                at.uid,
            )),
        }
    }

    /// Writes the noted `imap_messages` rows, 25 per statement. A UID that already has a
    /// row (another worker's) comes back missing: the batch is then conflicted.
    async fn write_outcomes(&mut self) -> Result<()> {
        let outcomes = std::mem::take(&mut self.outcomes);
        for chunk in outcomes.chunks(OUTCOME_ROWS_PER_STATEMENT) {
            let rows = value_lists(chunk.len(), 13);
            // Only placeholders are formatted into the statement; the values are bound.
            let sql = format!(
                "INSERT INTO imap_messages (mailbox, folder, uidvalidity, uid, message_id, size_bytes, outcome, \
                 ticket_id, message_row_id, quarantine_id, detail, disposition, created_at) VALUES {rows} \
                 ON CONFLICT (mailbox, folder, uidvalidity, uid) DO NOTHING RETURNING id"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(row.mailbox.as_str())
                    .bind(row.folder.as_str())
                    .bind(i64::from(row.uidvalidity))
                    .bind(i64::from(row.uid))
                    .bind(row.message_id.as_str())
                    .bind(row.size as i64)
                    .bind(row.outcome)
                    .bind(row.ticket_id)
                    .bind(row.message_row_id)
                    .bind(row.quarantine_id)
                    .bind(row.detail.as_deref())
                    .bind(row.disposition.as_str())
                    .bind(row.created_at);
            }
            let written = query.fetch_all(&mut *self.tx).await?.len();
            if written < chunk.len() {
                self.conflicted = true;
                return Ok(());
            }
        }
        Ok(())
    }
}

/// `($1, …, $width), ($width+1, …), …` for `rows` rows of `width` values bound in order.
fn value_lists(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholders(row * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, …` for `n` values bound in order.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(raw);
    encoder.finish().unwrap_or_default()
}

fn parties_json(parties: &[Party]) -> String {
    serde_json::to_string(parties).unwrap_or_else(|_| "[]".into())
}

fn join_ids(ids: &[String]) -> Option<String> {
    if ids.is_empty() {
        None
    } else {
        Some(
            ids.iter()
                .map(|id| format!("<{id}>"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// Adds `mode=rwc` (create when missing) to an SQLite URL and creates the file's folder.
fn sqlite_url(url: &str) -> Result<String, sqlx::Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !path.is_empty()
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    if query.contains("mode=") {
        Ok(url.to_string())
    } else if query.is_empty() {
        Ok(format!("sqlite://{path}?mode=rwc"))
    } else {
        Ok(format!("sqlite://{path}?{query}&mode=rwc"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        assert_eq!(
            sqlite_url("sqlite::memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/x.db");
        let url = format!("sqlite://{}", db.display());
        assert_eq!(sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert_eq!(
            sqlite_url("sqlite://a.db?mode=ro").unwrap(),
            "sqlite://a.db?mode=ro"
        );
    }
}
