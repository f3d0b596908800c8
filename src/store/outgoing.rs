//! Outgoing mail the helpdesk hands over (agent replies, notifications): the idempotent outbox
//! insert with the ticket's outbound `messages` row in one transaction, the facts a ticket reply
//! is composed from, and the `outgoing` table of the database contract (the helpdesk inserts,
//! mailintake takes the `new` rows and writes the outcome).

use sqlx::Row;

use super::{ImapLocation, Result, SentCopyStatus, Store, StoreError};
use crate::ingest::ParsedMail;
use crate::time::now_ms;

crate::closed_set! {
    /// What an outbox row of the helpdesk's is (`outbox.kind`, beside the acknowledgements').
    pub enum OutgoingKind("outgoing kind") {
        /// A person's mail (an agent's answer): no Auto-Submitted, sent before anything else.
        Reply = "reply",
        /// Automatic mail: `Auto-Submitted: auto-generated`.
        Notification = "notification",
    }
}

crate::closed_set! {
    /// The way a message came into the outbox (`outbox.submitted_via`).
    pub enum SubmittedVia("submission path") {
        /// Written with its ticket by the intake (acknowledgements and notices).
        Acknowledgement = "acknowledgement",
        /// `mailintake send`.
        Cli = "cli",
        /// A row of the `outgoing` table.
        Database = "database",
        /// The HTTP API.
        Api = "api",
    }
}

crate::closed_set! {
    /// Where an outbox row is (`outbox.state`), as the helpdesk reads it back.
    pub enum DeliveryState("outbox state") {
        /// Waiting for its turn, a retry, or a From address the server refuses now.
        Pending = "pending",
        /// Claimed by a sender, being sent.
        Sending = "sending",
        /// The server accepted it (250).
        Sent = "sent",
        /// Sent, then a DSN reported it undelivered.
        Bounced = "bounced",
        /// Refused for good, or given up.
        Failed = "failed",
        Cancelled = "cancelled",
        /// Not sent on purpose (acknowledgements: `reason`).
        Suppressed = "suppressed",
    }
}

/// A composed message to write to the outbox.
#[derive(Debug, Clone)]
pub struct OutgoingDraft<'a> {
    pub mailbox: &'a str,
    pub kind: OutgoingKind,
    pub via: SubmittedVia,
    pub idempotency_key: &'a str,
    pub request_digest: &'a str,
    pub ticket_id: Option<i64>,
    pub from: &'a str,
    /// The first To recipient (the column the per-recipient queries read).
    pub to_address: Option<&'a str>,
    /// To, Cc and Bcc.
    pub envelope_to: &'a [String],
    pub subject: &'a str,
    /// Without angle brackets.
    pub message_id: &'a str,
    pub in_reply_to: Option<&'a str>,
    pub references: Option<&'a str>,
    pub body_text: &'a str,
    pub body_html: Option<&'a str>,
    pub raw: &'a [u8],
    /// The message as the intake parses it: for a ticket, its outbound `messages` row.
    pub parsed: Option<&'a ParsedMail>,
}

/// An outbox row written earlier under the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub outbox_id: i64,
    pub request_digest: String,
}

/// What a ticket reply is composed from.
#[derive(Debug, Clone)]
pub struct ReplyFacts {
    pub ticket_id: i64,
    pub reference: String,
    pub mailbox: String,
    pub subject: String,
    /// The requester, or the Reply-To of the requester's latest message where it had one.
    pub reply_to: Option<String>,
    /// The ticket's latest message (either direction), without brackets.
    pub latest_message_id: Option<String>,
    /// Its `thread_references` (`<id> <id>`).
    pub latest_references: Option<String>,
}

/// A `new` row of the `outgoing` table.
#[derive(Debug, Clone)]
pub struct OutgoingRow {
    pub id: i64,
    pub mailbox: String,
    pub idempotency_key: String,
    pub request: String,
}

/// What became of an outbox row, for `send --wait` and the helpdesk.
#[derive(Debug, Clone)]
pub struct OutboxState {
    pub state: String,
    pub attempts: i64,
    pub smtp_response: Option<String>,
    pub last_error: Option<String>,
    pub blocked_reason: Option<String>,
}

/// Everything the helpdesk may read back about an outbox row (`GET /v1/messages/{id}`). Times
/// are unix ms.
#[derive(Debug, Clone)]
pub struct OutboxStatus {
    pub id: i64,
    pub mailbox: String,
    /// `outbox.kind`: the helpdesk's `reply`/`notification`, or one of mailintake's own.
    pub kind: String,
    pub state: DeliveryState,
    pub submitted_via: String,
    pub from: String,
    pub recipient_count: i64,
    pub subject: String,
    /// Without angle brackets.
    pub message_id: String,
    pub ticket_id: Option<i64>,
    /// `TCK-000123`.
    pub ticket_reference: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub smtp_response: Option<String>,
    pub last_error: Option<String>,
    pub blocked_reason: Option<String>,
    pub blocked_at: Option<i64>,
    pub bounced_at: Option<i64>,
    pub bounce_reason: Option<String>,
    /// Why a `suppressed` row was not sent.
    pub reason: Option<String>,
    /// Its copy in the Sent folder, once it is sent.
    pub sent_copy: Option<SentCopyStatus>,
}

impl Store {
    /// Outbox row `id` as the helpdesk reads it back; `None` for no such row.
    pub async fn outbox_status(&self, id: i64) -> Result<Option<OutboxStatus>> {
        let Some(r) = sqlx::query(
            "SELECT o.id, o.mailbox, o.kind, o.state, o.submitted_via, o.from_address, o.recipient_count, \
             o.subject, o.message_id, o.ticket_id, t.reference, o.attempts, o.next_attempt_at, o.created_at, \
             o.sent_at, o.smtp_response, o.last_error, o.blocked_reason, o.blocked_at, o.bounced_at, \
             o.bounce_reason, o.reason, o.sent_copy, o.sent_copy_folder, o.sent_copy_at, o.sent_copy_error \
             FROM outbox o LEFT JOIN tickets t ON t.id = o.ticket_id WHERE o.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let ticket_id: Option<i64> = r.get(9);
        Ok(Some(OutboxStatus {
            id: r.get(0),
            mailbox: r.get(1),
            kind: r.get(2),
            state: r.get::<String, _>(3).parse()?,
            submitted_via: r.get(4),
            from: r.get(5),
            recipient_count: r.get(6),
            subject: r.get(7),
            message_id: r.get(8),
            ticket_id,
            ticket_reference: r
                .get::<Option<String>, _>(10)
                .or_else(|| ticket_id.map(crate::ingest::ticket_reference)),
            attempts: r.get(11),
            next_attempt_at: r.get(12),
            created_at: r.get(13),
            sent_at: r.get(14),
            smtp_response: r.get(15),
            last_error: r.get(16),
            blocked_reason: r.get(17),
            blocked_at: r.get(18),
            bounced_at: r.get(19),
            bounce_reason: r.get(20),
            reason: r.get(21),
            sent_copy: SentCopyStatus::from_columns(r.get(22), r.get(23), r.get(24), r.get(25))?,
        }))
    }

    /// The row written under `key` for `mailbox`, if any.
    pub async fn submitted(&self, mailbox: &str, key: &str) -> Result<Option<Submitted>> {
        let row = sqlx::query(
            "SELECT id, request_digest FROM outbox WHERE mailbox = $1 AND idempotency_key = $2",
        )
        .bind(mailbox)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Submitted {
            outbox_id: r.get(0),
            request_digest: r.get::<Option<String>, _>(1).unwrap_or_default(),
        }))
    }

    /// Writes `draft` as a pending outbox row, and for a ticket its outbound `messages` row (with
    /// its attachments), in one transaction. `Ok(Err(existing))` when a row with the same
    /// idempotency key was written first (by another process meanwhile).
    pub async fn insert_outgoing(
        &self,
        draft: &OutgoingDraft<'_>,
    ) -> Result<std::result::Result<i64, Submitted>> {
        let now = now_ms();
        let mut batch = self.begin().await?;
        // Untargeted: on PostgreSQL the only keys are the id, the random Message-ID and the
        // idempotency key, so a conflict here is the key.
        let inserted = sqlx::query(
            "INSERT INTO outbox (mailbox, ticket_id, kind, from_address, to_address, subject, message_id, \
             in_reply_to, thread_references, body_text, body_html, state, next_attempt_at, created_at, \
             idempotency_key, request_digest, raw, envelope_to, recipient_count, submitted_via) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, $12, $13, $14, $15, $16, $17, $18) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(draft.mailbox)
        .bind(draft.ticket_id)
        .bind(draft.kind.as_str())
        .bind(draft.from)
        .bind(draft.to_address)
        .bind(draft.subject)
        .bind(draft.message_id)
        .bind(draft.in_reply_to)
        .bind(draft.references)
        .bind(draft.body_text)
        .bind(draft.body_html)
        .bind(now)
        .bind(draft.idempotency_key)
        .bind(draft.request_digest)
        .bind(draft.raw)
        .bind(draft.envelope_to.join("\n"))
        .bind(draft.envelope_to.len() as i64)
        .bind(draft.via.as_str())
        .fetch_optional(batch.connection())
        .await?;
        let Some(row) = inserted else {
            batch.rollback().await?;
            return match self.submitted(draft.mailbox, draft.idempotency_key).await? {
                Some(existing) => Ok(Err(existing)),
                None => Err(StoreError::Conflict),
            };
        };
        let outbox_id: i64 = row.get(0);
        if let (Some(ticket_id), Some(parsed)) = (draft.ticket_id, draft.parsed) {
            let at = ImapLocation {
                mailbox: draft.mailbox,
                folder: "",
                uidvalidity: 0,
                uid: crate::mail_source::Uid(0),
                size: draft.raw.len() as u64,
                internal_date_ms: Some(now),
            };
            batch.outbound_message(ticket_id, &at, parsed).await?;
        }
        batch.commit().await?;
        Ok(Ok(outbox_id))
    }

    /// The facts a reply on the ticket `id` is composed from; `None` for no such ticket.
    pub async fn reply_facts(&self, ticket_id: i64) -> Result<Option<ReplyFacts>> {
        let Some(ticket) = sqlx::query(
            "SELECT id, reference, mailbox, subject, requester_address FROM tickets WHERE id = $1",
        )
        .bind(ticket_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let requester: Option<String> = ticket.get(4);
        let requester_reply_to: Option<String> = match &requester {
            Some(requester) => sqlx::query(
                "SELECT reply_to FROM messages WHERE ticket_id = $1 AND direction = 'inbound' \
                 AND lower(from_address) = lower($2) ORDER BY id DESC LIMIT 1",
            )
            .bind(ticket_id)
            .bind(requester)
            .fetch_optional(&self.pool)
            .await?
            .and_then(|r| r.get(0)),
            None => None,
        };
        let latest = sqlx::query(
            "SELECT message_id, thread_references FROM messages WHERE ticket_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(ticket_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(Some(ReplyFacts {
            ticket_id: ticket.get(0),
            reference: ticket
                .get::<Option<String>, _>(1)
                .unwrap_or_else(|| crate::ingest::ticket_reference(ticket_id)),
            mailbox: ticket.get(2),
            subject: ticket.get(3),
            reply_to: requester_reply_to.or(requester),
            latest_message_id: latest.as_ref().map(|r| r.get(0)),
            latest_references: latest.and_then(|r| r.get(1)),
        }))
    }

    /// The id of the ticket with `reference` (`TCK-000123`).
    pub async fn ticket_id_by_reference(&self, reference: &str) -> Result<Option<i64>> {
        Ok(sqlx::query("SELECT id FROM tickets WHERE reference = $1")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0)))
    }

    /// The `new` rows of `outgoing` for `mailbox`, oldest first, at most `limit`.
    pub async fn new_outgoing(&self, mailbox: &str, limit: i64) -> Result<Vec<OutgoingRow>> {
        let rows = sqlx::query(
            "SELECT id, mailbox, idempotency_key, request FROM outgoing \
             WHERE mailbox = $1 AND state = 'new' ORDER BY id LIMIT $2",
        )
        .bind(mailbox)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OutgoingRow {
                id: r.get(0),
                mailbox: r.get(1),
                idempotency_key: r.get(2),
                request: r.get(3),
            })
            .collect())
    }

    /// Writes what became of an `outgoing` row: `accepted` with its outbox row, or `refused`
    /// with what to fix. Only a row still `new` is changed (another process may have taken it).
    pub async fn outgoing_taken(
        &self,
        id: i64,
        outcome: std::result::Result<i64, &str>,
    ) -> Result<bool> {
        let (state, outbox_id, error) = match outcome {
            Ok(outbox_id) => ("accepted", Some(outbox_id), None),
            Err(error) => ("refused", None, Some(error)),
        };
        let done = sqlx::query(
            "UPDATE outgoing SET state = $1, outbox_id = $2, error = $3, taken_at = $4 \
             WHERE id = $5 AND state = 'new'",
        )
        .bind(state)
        .bind(outbox_id)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether `mailbox` has `outgoing` rows waiting to be taken.
    pub async fn has_new_outgoing(&self, mailbox: &str) -> Result<bool> {
        let r = sqlx::query("SELECT COUNT(*) FROM outgoing WHERE mailbox = $1 AND state = 'new'")
            .bind(mailbox)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.get::<i64, _>(0) > 0)
    }

    /// The state of outbox row `id`.
    pub async fn outbox_state(&self, id: i64) -> Result<Option<OutboxState>> {
        let row = sqlx::query(
            "SELECT state, attempts, smtp_response, last_error, blocked_reason FROM outbox WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| OutboxState {
            state: r.get(0),
            attempts: r.get(1),
            smtp_response: r.get(2),
            last_error: r.get(3),
            blocked_reason: r.get(4),
        }))
    }
}
