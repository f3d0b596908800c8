//! From raw mail and facts about what is already stored to a decision. No IO happens here: the
//! worker asks the store for the facts, calls [`decide`], then commits what it returns.
//!
//! Bad mail is data, not failure: every input ends in a [`Decision`], and only the worker's
//! infrastructure (IMAP, database) can fail.

pub mod parse;

pub use parse::{Attachment, MessageIdSource, ParseFailure, ParsedMail, Party, parse, sha256_hex};

/// What the store already knows about a message's Message-ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownMessage {
    pub ticket_id: i64,
    /// [`ParsedMail::fingerprint`] of the stored message.
    pub fingerprint: String,
}

/// Facts from the store that a decision needs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The stored message with the same Message-ID, if any.
    pub same_message_id: Option<KnownMessage>,
}

/// Why a message is set aside instead of becoming a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineReason {
    /// Larger than the mailbox's `max_message_bytes`; never downloaded.
    TooLarge { size: u64, limit: u64 },
    /// Not a message mail-parser can read.
    Unparseable(ParseFailure),
    /// A Message-ID we stored before, with different content: a forgery or a broken sender.
    MessageIdConflict { ticket_id: i64 },
}

impl QuarantineReason {
    /// The value of `quarantine.reason`.
    pub fn code(&self) -> &'static str {
        match self {
            QuarantineReason::TooLarge { .. } => "too-large",
            QuarantineReason::Unparseable(_) => "unparseable",
            QuarantineReason::MessageIdConflict { .. } => "message-id-conflict",
        }
    }

    /// A sentence for the operator.
    pub fn detail(&self) -> String {
        match self {
            QuarantineReason::TooLarge { size, limit } => format!(
                "the message is {size} bytes, above max_message_bytes = {limit}; release it with a higher limit to ingest it"
            ),
            QuarantineReason::Unparseable(failure) => failure.to_string(),
            QuarantineReason::MessageIdConflict { ticket_id } => format!(
                "the Message-ID is already stored on ticket {ticket_id} with different content"
            ),
        }
    }
}

/// The outcome for one message.
#[derive(Debug)]
pub enum Decision {
    /// Open a new ticket with this message as its first article.
    NewTicket(Box<ParsedMail>),
    /// The same message (same Message-ID and content) is already stored: record, do not duplicate.
    Duplicate { ticket_id: i64 },
    /// Set the message aside, with its raw bytes when they were downloaded.
    Quarantine(QuarantineReason),
}

/// Decides what a downloaded message becomes.
pub fn decide(parsed: Result<ParsedMail, ParseFailure>, facts: &Facts) -> Decision {
    let mail = match parsed {
        Ok(mail) => mail,
        Err(failure) => return Decision::Quarantine(QuarantineReason::Unparseable(failure)),
    };
    match &facts.same_message_id {
        Some(known) if known.fingerprint == mail.fingerprint => Decision::Duplicate {
            ticket_id: known.ticket_id,
        },
        Some(known) => Decision::Quarantine(QuarantineReason::MessageIdConflict {
            ticket_id: known.ticket_id,
        }),
        None => Decision::NewTicket(Box::new(mail)),
    }
}

/// The reference shown to customers and agents, e.g. `TCK-000042`.
pub fn ticket_reference(ticket_id: i64) -> String {
    format!("TCK-{ticket_id:06}")
}

#[cfg(test)]
mod tests;
