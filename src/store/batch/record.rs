//! The outcomes a batch records: a new ticket, a follow-up, a duplicate, ignored mail, a
//! quarantined message; each inserts its ticket or quarantine row now, notes its message rows
//! for the batch's multi-row statements (`pending.rs`) and its `imap_messages` row for the commit.

use sqlx::Row;

use super::pending::{AttachmentRow, IdTable, MessageRow, TicketRow};
use super::{Batch, ImapLocation, Outcome, OutcomeFields};
use crate::ingest::{
    FingerprintVersion, KnownMessage, ParsedMail, QuarantineReason, ticket_reference,
};
use crate::mail_source::Disposition;
use crate::store::sql::{join_ids, parties_json};
use crate::store::{Backend, Result};
use crate::time::now_ms;

crate::closed_set! {
    /// Which way a message went (`messages.direction`).
    pub enum Direction("message direction") {
        /// Mail that came in through IMAP.
        Inbound = "inbound",
        /// Mail we sent on the ticket (an agent's reply, a notification).
        Outbound = "outbound",
    }
}

/// What is known of a quarantined message's envelope (from its headers, if they were read).
#[derive(Debug, Clone, Default)]
pub struct QuarantineEnvelope {
    pub message_id: String,
    pub from: Option<String>,
    pub subject: Option<String>,
}

/// The ticket a follow-up goes on, and how.
#[derive(Debug, Clone, Copy)]
pub struct FollowUpOn<'a> {
    pub ticket_id: i64,
    /// Set the ticket's status back to `open`.
    pub reopen: bool,
    /// `messages.auto_kind` for automatic mail (`ingest::AutoKind`).
    pub auto_kind: Option<&'a str>,
}

impl Batch {
    /// Opens a ticket with `mail` as its first message and records the outcome. Returns the ticket
    /// id and reference. `Conflict` when the Message-ID was stored meanwhile by another worker
    /// (see [`Batch`]; a UID recorded meanwhile is found at commit). `sender_key` is what the
    /// per-sender limit counts it under (`tickets.sender_key`).
    #[allow(clippy::too_many_arguments)]
    pub async fn new_ticket(
        &mut self,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
        sender_key: Option<&str>,
        related: Option<i64>,
        auto_kind: Option<&str>,
        keep_raw: Option<&[u8]>,
        disposition: &Disposition,
    ) -> Result<(i64, String)> {
        let now = now_ms();
        let subject = crate::ingest::normalized_subject(&mail.subject);
        let requester_address = mail.from.as_ref().map(|p| p.address.clone());
        let requester_name = mail.from.as_ref().and_then(|p| p.name.clone());
        let ticket_id = match self.backend {
            // The next rowid, read once under the batch's write lock (exactly SQLite's own
            // choice), and the row written with the batch's others: no statement of its own.
            Backend::Sqlite => {
                let id = self.next_id(IdTable::Tickets).await?;
                self.pend_ticket(TicketRow {
                    id,
                    reference: ticket_reference(id),
                    mailbox: at.mailbox.to_string(),
                    subject,
                    requester_address,
                    requester_name,
                    related_ticket_id: related,
                    created_at: now,
                    sender_key: sender_key.map(str::to_string),
                })
                .await?;
                id
            }
            // The sequence's next value, one by one: ticket numbers without gaps a reserved
            // range would leave. The database sets the reference (migration 0002), the same one
            // ticket_reference gives.
            Backend::Postgres => sqlx::query(
                "INSERT INTO tickets (mailbox, subject, requester_address, requester_name, status, related_ticket_id, \
                 created_at, updated_at, sender_key) VALUES ($1, $2, $3, $4, 'new', $5, $6, $6, $7) RETURNING id",
            )
            .bind(at.mailbox)
            .bind(subject)
            .bind(requester_address)
            .bind(requester_name)
            .bind(related)
            .bind(now)
            .bind(sender_key)
            .fetch_one(&mut *self.tx)
            .await?
            .get(0),
        };
        let message_row_id = self
            .insert_message(ticket_id, at, mail, auto_kind, keep_raw)
            .await?;
        if let Some(key) = sender_key {
            *self.written.opened_by.entry(key.to_string()).or_insert(0) += 1;
        }
        let reference = ticket_reference(ticket_id);
        self.written.tickets.insert(
            ticket_id,
            crate::ingest::KnownTicket {
                ticket_id,
                status: crate::ingest::TicketStatus::New,
                participants: Vec::new(),
            },
        );
        self.written.references.insert(reference, ticket_id);
        if let Some(requester) = &mail.from {
            self.written.add_participant(ticket_id, &requester.address);
        }
        self.record_outcome(
            at,
            &mail.message_id,
            OutcomeFields {
                outcome: Outcome::Ticket,
                ticket_id: Some(ticket_id),
                message_row_id: Some(message_row_id),
                quarantine_id: None,
                detail: join_details([
                    auto_kind.map(|k| format!("automatic mail ({k}), never acknowledged")),
                    address_notes(mail),
                ]),
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
        disposition: &Disposition,
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
            OutcomeFields {
                outcome: Outcome::FollowUp,
                ticket_id: Some(ticket_id),
                message_row_id: Some(message_row_id),
                quarantine_id: None,
                detail: join_details([
                    auto_kind.map(|k| format!("automatic mail ({k})")),
                    address_notes(mail),
                ]),
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
        disposition: &Disposition,
    ) {
        self.record_outcome(
            at,
            message_id,
            OutcomeFields {
                outcome: Outcome::Duplicate,
                ticket_id: Some(ticket_id),
                message_row_id: None,
                quarantine_id: None,
                detail: Some("the same message is already stored".into()),
                disposition,
            },
        );
    }

    /// Records a message that becomes no ticket on purpose (`detail`: `ingest::IgnoreReason`'s,
    /// which begins with its code: backscatter, a loop, mail older than the first-start cutoff…).
    pub fn ignored(
        &mut self,
        at: &ImapLocation<'_>,
        message_id: &str,
        detail: &str,
        disposition: &Disposition,
    ) {
        self.record_outcome(
            at,
            message_id,
            OutcomeFields {
                outcome: Outcome::Ignored,
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
        disposition: &Disposition,
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
            OutcomeFields {
                outcome: Outcome::Quarantined,
                ticket_id: None,
                message_row_id: None,
                quarantine_id: Some(quarantine_id),
                detail: Some(reason.detail()),
                disposition,
            },
        );
        Ok(quarantine_id)
    }

    /// Notes an inbound message row (and its attachments) on `ticket_id`, written with the
    /// batch's next multi-row statements (`pending.rs`). `Conflict` when the Message-ID is stored
    /// already (by another worker meanwhile: found when the rows are written).
    async fn insert_message(
        &mut self,
        ticket_id: i64,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
        auto_kind: Option<&str>,
        keep_raw: Option<&[u8]>,
    ) -> Result<i64> {
        self.insert_message_as(Direction::Inbound, ticket_id, at, mail, auto_kind, keep_raw)
            .await
    }

    /// Records a message we send on `ticket_id` (an agent's reply or a notification), parsed
    /// from the bytes that are sent, as `direction = 'outbound'` with its attachments, so that
    /// the ticket's thread is complete in the database and an answer naming it finds the ticket.
    /// `at.internal_date_ms` is when it was submitted. `Conflict` when its Message-ID is stored.
    pub async fn outbound_message(
        &mut self,
        ticket_id: i64,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
    ) -> Result<i64> {
        let id = self
            .insert_message_as(Direction::Outbound, ticket_id, at, mail, None, None)
            .await?;
        *self.touched_tickets.entry(ticket_id).or_insert(false) |= false;
        Ok(id)
    }

    async fn insert_message_as(
        &mut self,
        direction: Direction,
        ticket_id: i64,
        at: &ImapLocation<'_>,
        mail: &ParsedMail,
        auto_kind: Option<&str>,
        keep_raw: Option<&[u8]>,
    ) -> Result<i64> {
        if self.written.messages.contains_key(&mail.message_id) {
            // Written by this batch already: the database would refuse it as another worker's.
            return Err(self.conflict());
        }
        let now = now_ms();
        let message_row_id = self.next_id(IdTable::Messages).await?;
        // Who is on the ticket now, as `Batch::ticket` reads it from the stored rows.
        for party in mail
            .from
            .iter()
            .chain(&mail.reply_to)
            .chain(&mail.from_addresses)
            .chain(&mail.to)
            .chain(&mail.cc)
        {
            self.written.add_participant(ticket_id, &party.address);
        }
        self.written.messages.insert(
            mail.message_id.clone(),
            KnownMessage {
                ticket_id,
                message_row_id,
                fingerprint: mail.fingerprint.clone(),
                fingerprint_version: FingerprintVersion::CURRENT,
            },
        );
        self.pend_message(MessageRow {
            id: message_row_id,
            ticket_id,
            direction: direction.as_str(),
            mailbox: at.mailbox.to_string(),
            message_id: mail.message_id.clone(),
            message_id_source: mail.message_id_source.as_str(),
            in_reply_to: mail.in_reply_to.first().cloned(),
            thread_references: join_ids(&mail.references),
            subject: mail.subject.clone(),
            from_address: mail.from.as_ref().map(|p| p.address.clone()),
            from_name: mail.from.as_ref().and_then(|p| p.name.clone()),
            reply_to: mail.reply_to.as_ref().map(|p| p.address.clone()),
            from_addresses: parties_json(&mail.from_addresses),
            to_addresses: parties_json(&mail.to),
            cc_addresses: parties_json(&mail.cc),
            sent_at: mail.date_ms,
            received_at: at.internal_date_ms,
            body_text: mail.text_body.clone(),
            body_html: mail.html_body.clone(),
            body_text_derived: mail.text_body_derived.clone(),
            auto_kind: auto_kind.map(str::to_string),
            headers: mail.headers.clone(),
            size_bytes: mail.size as i64,
            content_sha256: mail.content_sha256.clone(),
            fingerprint: mail.fingerprint.clone(),
            fingerprint_version: FingerprintVersion::CURRENT.number(),
            created_at: now,
        })
        .await?;
        if let Some(raw) = keep_raw {
            self.pend_raw(message_row_id, raw).await?;
        }
        for attachment in &mail.attachments {
            let id = self.next_id(IdTable::Attachments).await?;
            self.pend_attachment(AttachmentRow {
                id,
                message_row_id,
                filename: attachment.filename.clone(),
                content_type: attachment.content_type.clone(),
                content_id: attachment.content_id.clone(),
                inline: attachment.inline,
                content: attachment.content.clone(),
                sha256: attachment.sha256.clone(),
                created_at: now,
            })
            .await?;
        }
        Ok(message_row_id)
    }
}

/// The address repairs of `mail` (`ingest::address`) as one sentence list for the ledger's detail.
fn address_notes(mail: &ParsedMail) -> Option<String> {
    (!mail.address_notes.is_empty()).then(|| mail.address_notes.join("; "))
}

/// The parts of a ledger detail that are there, joined; `None` when none is.
fn join_details<const N: usize>(parts: [Option<String>; N]) -> Option<String> {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}
