//! The batch: one transaction that records the outcomes of a batch of messages with the folder's
//! checkpoint. Every [`Batch`] method lives in this folder, by topic:
//!
//! - here: the transaction itself ([`Store::begin`], [`Batch::commit`], [`Batch::rollback`]) and
//!   what is deferred to its commit (the `imap_messages` rows, ticket updates, checkpoints);
//! - `facts`: what a decision asks of the store, read for the whole batch at its start;
//! - `record`: the outcomes (new ticket, follow-up, duplicate, ignored, quarantine);
//! - `pending`: the message, raw and attachment rows written a few statements per batch, with
//!   ids the batch allocates;
//! - `outbox`: the acknowledgements written with their ticket, and the counts that limit them;
//! - `releases`: quarantined messages let in again (an operator's release, a reprocessed row);
//! - `fence`: a leased folder's batch commits only while its lease holds (`store/leases.rs`).

use std::collections::{HashMap, HashSet};

use super::sql::value_lists;
use super::{Backend, Result, Store, StoreError};
use crate::mail_source::{Disposition, Uid};
use crate::time::now_ms;
use facts::Prefetched;
pub use facts::{BatchQuestions, MessageFacts};
pub use record::{Direction, FollowUpOn, QuarantineEnvelope};

mod facts;
mod fence;
mod outbox;
mod pending;
mod record;
mod releases;

/// Where a message sits in IMAP: the key of its `imap_messages` row.
#[derive(Debug, Clone)]
pub struct ImapLocation<'a> {
    pub mailbox: &'a str,
    pub folder: &'a str,
    pub uidvalidity: u32,
    pub uid: Uid,
    pub size: u64,
    pub internal_date_ms: Option<i64>,
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
    /// The few statements that differ per backend (row locks, which SQLite has no syntax for and
    /// no need of under `BEGIN IMMEDIATE`) ask it.
    backend: Backend,
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
    checkpoints: Vec<(String, String, u32, Uid)>,
    /// A write met another worker's row: this batch must not be committed.
    conflicted: bool,
    /// The lease of the folder this batch writes, renewed first at commit ([`Batch::fence`]).
    fence: Option<crate::store::leases::Lease>,
    /// Ids allocated for the rows the batch writes itself (`pending.rs`).
    ids: pending::Ids,
    /// Message, raw and attachment rows not written yet: a few multi-row statements, before any
    /// read that could see them and at commit.
    pending: pending::Pending,
    /// Message-IDs Exchange gave messages we sent through Graph, with ours (`outbox.sent_message_id`
    /// → `outbox.message_id`), for the IDs looked up so far ([`Batch::sent_ids`]).
    sent_ids: facts::SentIds,
}

/// What a batch wrote so far that later facts in it depend on.
#[derive(Debug, Default)]
struct Written {
    /// Message-ID → the messages inserted.
    messages: HashMap<String, crate::ingest::KnownMessage>,
    /// lower(sender) → tickets opened.
    opened_by: HashMap<String, u32>,
    /// Message-IDs whose release was used.
    used_releases: HashSet<String>,
    /// Tickets opened by this batch (status `new`; participants in `participants`), and their
    /// references.
    tickets: HashMap<i64, crate::ingest::KnownTicket>,
    references: HashMap<String, i64>,
    /// Addresses this batch added to a ticket (its messages' From, Reply-To, To, Cc; the
    /// recipients of its outbox rows), lower case: [`Batch::ticket`] adds them to what it read.
    participants: HashMap<i64, Vec<String>>,
}

impl Written {
    /// Notes that `address` is now on `ticket_id`.
    fn add_participant(&mut self, ticket_id: i64, address: &str) {
        let address = address.to_ascii_lowercase();
        let list = self.participants.entry(ticket_id).or_default();
        if !list.contains(&address) {
            list.push(address);
        }
    }
}

/// IDs per `IN (…)` list of the prefetch (a default batch's worth; see OUTCOME_ROWS_PER_STATEMENT
/// for why not more).
const IDS_PER_STATEMENT: usize = 200;

/// An `imap_messages` row waiting for [`Batch::commit`].
struct OutcomeRow {
    mailbox: String,
    folder: String,
    uidvalidity: u32,
    uid: Uid,
    message_id: String,
    size: u64,
    outcome: Outcome,
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

crate::closed_set! {
    /// What became of a message (`imap_messages.outcome`).
    pub enum Outcome("outcome") {
        /// A new ticket.
        Ticket = "ticket",
        /// A message added to an existing ticket.
        FollowUp = "follow-up",
        Quarantined = "quarantined",
        /// Recorded, but no ticket (automatic mail, a loop, mail from before the first start).
        Ignored = "ignored",
        /// Stored already (same Message-ID and content).
        Duplicate = "duplicate",
    }
}

/// What an `imap_messages` row records, beyond the message's location.
struct OutcomeFields<'a> {
    outcome: Outcome,
    ticket_id: Option<i64>,
    message_row_id: Option<i64>,
    quarantine_id: Option<i64>,
    detail: Option<String>,
    disposition: &'a Disposition,
}

impl Store {
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
            backend: self.backend,
            prefetched: None,
            written: Written::default(),
            outcomes: Vec::new(),
            touched_tickets: HashMap::new(),
            checkpoints: Vec::new(),
            conflicted: false,
            fence: None,
            ids: pending::Ids::default(),
            pending: pending::Pending::default(),
            sent_ids: facts::SentIds::default(),
        })
    }
}

impl Batch {
    /// Writes the batch's `imap_messages` rows, moves the checkpoints of the folders written to,
    /// then makes the batch durable. A batch that met a conflict (here: a UID another worker
    /// recorded meanwhile) is refused and rolled back: it has to be decided again.
    pub async fn commit(mut self) -> Result<()> {
        // Fenced: nothing is written unless the folder's lease is still this worker's, and its
        // row lock holds off a takeover until the commit is done.
        if let Err(lost) = self.check_fence().await {
            self.tx.rollback().await?;
            return Err(lost);
        }
        if !self.conflicted {
            match self.flush_pending().await {
                // Marked conflicted: rolled back below.
                Ok(()) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e),
            }
        }
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
            // Forward only, and never past a message that waits.
            sqlx::query(super::folders::MOVE_CHECKPOINT)
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

    /// The batch's connection, for the store's other files that write in its transaction.
    pub(in crate::store) fn connection(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Marks the batch as conflicted (see [`Batch`]) and returns the error to hand up.
    fn conflict(&mut self) -> StoreError {
        self.conflicted = true;
        StoreError::Conflict
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

    /// Adds `text` to the detail of the outcome noted for `at` (its `imap_messages` row is written
    /// at commit): e.g. why the message's acknowledgement is not sent.
    pub fn add_outcome_detail(&mut self, at: &ImapLocation<'_>, text: &str) {
        let key = (at.mailbox, at.folder, at.uidvalidity, at.uid);
        if let Some(row) = self.outcomes.iter_mut().rev().find(|row| {
            (
                row.mailbox.as_str(),
                row.folder.as_str(),
                row.uidvalidity,
                row.uid,
            ) == key
        }) {
            row.detail = Some(match row.detail.take() {
                Some(detail) => format!("{detail}; {text}"),
                None => text.to_string(),
            });
        }
    }

    /// Notes the `imap_messages` row (written at commit) and the folder's new checkpoint.
    fn record_outcome(
        &mut self,
        at: &ImapLocation<'_>,
        message_id: &str,
        outcome: OutcomeFields<'_>,
    ) {
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
                    .bind(row.outcome.as_str())
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
