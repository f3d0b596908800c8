//! From raw mail and facts about what is already stored to a decision. No IO happens here: the
//! worker asks the store for the facts, calls [`decide`], then commits what it returns.
//!
//! Bad mail is data, not failure: every input ends in a [`Decision`], and only the worker's
//! infrastructure (IMAP, database) can fail.

mod address;
pub mod parse;
mod repair;

pub use parse::{
    Attachment, MessageIdSource, ParseFailure, ParsedMail, Party, Signals, parse, sha256_hex,
};

/// What the store already knows about a message's Message-ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownMessage {
    pub ticket_id: i64,
    /// [`ParsedMail::fingerprint`] of the stored message.
    pub fingerprint: String,
}

crate::closed_set! {
    /// A ticket's state (`tickets.status`): the helpdesk moves it; a follow-up reopens a resolved
    /// or closed one.
    pub enum TicketStatus("ticket status") {
        New = "new",
        Open = "open",
        Pending = "pending",
        Resolved = "resolved",
        Closed = "closed",
    }
}

crate::closed_set! {
    /// Why a message was quarantined, as stored (`quarantine.reason`).
    pub enum QuarantineCode("quarantine reason") {
        TooLarge = "too-large",
        Unparseable = "unparseable",
        MessageIdConflict = "message-id-conflict",
        SenderRateLimit = "sender-rate-limit",
        Unreadable = "unreadable",
        Unstorable = "unstorable",
    }
}

/// A stored ticket as threading sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownTicket {
    pub ticket_id: i64,
    pub status: TicketStatus,
    /// Lower-case addresses of the requester and everyone who wrote to the ticket so far.
    pub participants: Vec<String>,
}

/// Facts from the store that a decision needs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The stored message with the same Message-ID, if any.
    pub same_message_id: Option<KnownMessage>,
    /// The ticket owning a message named in In-Reply-To or References (inbound or outbound).
    pub thread: Option<KnownTicket>,
    /// The ticket whose tag (`[#TCK-000123]`) is in the subject.
    pub tagged: Option<KnownTicket>,
    /// The ticket owning the message a bounce or read receipt is about.
    pub reported: Option<KnownTicket>,
    /// How many tickets the sender opened in the last hour.
    pub sender_recent_tickets: u32,
    /// An operator released this message from quarantine: it comes in once, past the limits.
    pub released: bool,
}

/// Settings that shape decisions.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Our own mailbox addresses, lower case: mail from them, or naming them in X-Loop, is a loop.
    pub own_addresses: Vec<String>,
    /// New tickets one sender may open per hour; 0 means no limit.
    pub max_new_tickets_per_sender_per_hour: u32,
    /// A follow-up to a resolved or closed ticket reopens it.
    pub reopen_closed: bool,
}

/// What kind of mail this is, by its headers (RFC 3834 and common practice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailKind {
    /// Written by a person.
    Person,
    /// An automatic reply (out of office, vacation, autoresponder) or other machine-generated mail.
    Automatic(String),
    /// A delivery status notification (bounce).
    Bounce,
    /// A read receipt (message disposition notification).
    ReadReceipt,
    /// Sent by, or looping through, one of our own mailboxes.
    Loop(String),
}

impl MailKind {
    /// The value of `messages.auto_kind` for a follow-up of this kind.
    pub fn auto_kind(&self) -> Option<&'static str> {
        match self {
            MailKind::Person => None,
            MailKind::Automatic(_) => Some("auto-reply"),
            MailKind::Bounce => Some("bounce"),
            MailKind::ReadReceipt => Some("read-receipt"),
            MailKind::Loop(_) => Some("loop"),
        }
    }
}

/// Classifies `mail` by its headers.
pub fn classify(mail: &ParsedMail, policy: &Policy) -> MailKind {
    let signals = &mail.signals;
    let from = mail
        .from
        .as_ref()
        .map(|p| p.address.to_ascii_lowercase())
        .unwrap_or_default();
    if !from.is_empty() && policy.own_addresses.contains(&from) {
        return MailKind::Loop(format!("sent by our own mailbox {from}"));
    }
    if let Some(ours) = signals
        .x_loop
        .iter()
        .find(|a| policy.own_addresses.contains(a))
    {
        return MailKind::Loop(format!("X-Loop names our mailbox {ours}"));
    }
    match signals.report_type.as_deref() {
        Some("delivery-status") => return MailKind::Bounce,
        Some("disposition-notification") => return MailKind::ReadReceipt,
        _ => {}
    }
    let local = from.split('@').next().unwrap_or("");
    if local == "mailer-daemon" || local == "postmaster" {
        return MailKind::Bounce;
    }
    if let Some(value) = signals.auto_submitted.as_deref()
        && value != "no"
    {
        return MailKind::Automatic(format!("Auto-Submitted: {value}"));
    }
    if let Some(value) = signals.precedence.as_deref()
        && matches!(value, "bulk" | "junk" | "list" | "auto_reply")
    {
        return MailKind::Automatic(format!("Precedence: {value}"));
    }
    if signals.auto_response_suppress {
        return MailKind::Automatic("X-Auto-Response-Suppress".into());
    }
    if let Some(evidence) = &signals.list_evidence {
        return MailKind::Automatic(format!("mailing-list mail ({evidence})"));
    }
    if signals.null_return_path {
        return MailKind::Automatic("empty Return-Path".into());
    }
    MailKind::Person
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
    /// The sender opened more new tickets in the last hour than the limit allows.
    SenderRateLimit { sender: String, limit: u32 },
    /// The server failed to deliver the message on several consecutive attempts.
    Unreadable { attempts: i64, error: String },
    /// The database refused to store it (a data error: see `store::FailureKind`); `error` is
    /// the database's own words with its code.
    Unstorable { error: String },
}

impl QuarantineReason {
    /// What is stored as `quarantine.reason`.
    pub fn kind(&self) -> QuarantineCode {
        match self {
            QuarantineReason::TooLarge { .. } => QuarantineCode::TooLarge,
            QuarantineReason::Unparseable(_) => QuarantineCode::Unparseable,
            QuarantineReason::MessageIdConflict { .. } => QuarantineCode::MessageIdConflict,
            QuarantineReason::SenderRateLimit { .. } => QuarantineCode::SenderRateLimit,
            QuarantineReason::Unreadable { .. } => QuarantineCode::Unreadable,
            QuarantineReason::Unstorable { .. } => QuarantineCode::Unstorable,
        }
    }

    /// The value of `quarantine.reason`.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// A sentence for the operator.
    pub fn detail(&self) -> String {
        match self {
            // The size is the one the server announced; Exchange's is an estimate, and a
            // message announced within the limit can turn out larger when downloaded.
            QuarantineReason::TooLarge { size, limit } if size <= limit => format!(
                "the server announced {size} bytes, but the message turned out larger than max_message_bytes = {limit} when downloaded (only its first {} bytes were read); release it with a higher limit to ingest it",
                limit + 1
            ),
            QuarantineReason::TooLarge { size, limit } => format!(
                "the message is {size} bytes, above max_message_bytes = {limit}; release it with a higher limit to ingest it"
            ),
            QuarantineReason::Unparseable(failure) => failure.to_string(),
            QuarantineReason::MessageIdConflict { ticket_id } => format!(
                "the Message-ID is already stored on ticket {ticket_id} with different content"
            ),
            QuarantineReason::Unreadable { attempts, error } => format!(
                "the server failed to deliver the message {attempts} times in a row ({error}); it was set aside unread so that the mail after it can come in"
            ),
            QuarantineReason::Unstorable { error } => format!(
                "the database refused to store the message ({error}); it was set aside with its raw bytes so that the mail after it can come in; once the cause is fixed, `mailintake reprocess` with this row's id ingests it"
            ),
            QuarantineReason::SenderRateLimit { sender, limit } => format!(
                "{sender} opened {limit} tickets within the last hour (max_new_tickets_per_sender_per_hour); release the message to ingest it"
            ),
        }
    }
}

/// The outcome for one message.
#[derive(Debug)]
pub enum Decision {
    /// Open a new ticket with this message as its first article; `related` is a ticket whose tag
    /// the subject carried but whose participants do not include the sender.
    NewTicket {
        mail: Box<ParsedMail>,
        related: Option<i64>,
    },
    /// Add the message to an existing ticket.
    FollowUp {
        mail: Box<ParsedMail>,
        ticket_id: i64,
        /// Reopen the ticket (it was resolved or closed and a person wrote again).
        reopen: bool,
        /// Set for automatic mail (`auto-reply`, `bounce`, `read-receipt`): never acknowledged.
        auto_kind: Option<&'static str>,
    },
    /// The same message (same Message-ID and content) is already stored: record, do not duplicate.
    Duplicate { ticket_id: i64 },
    /// Automatic mail or a loop that belongs to no ticket: recorded, never a ticket.
    Ignore { reason: String },
    /// Set the message aside, with its raw bytes when they were downloaded.
    Quarantine(QuarantineReason),
}

/// Decides what a downloaded message becomes.
pub fn decide(
    parsed: Result<ParsedMail, ParseFailure>,
    facts: &Facts,
    policy: &Policy,
) -> Decision {
    let mail = match parsed {
        Ok(mail) => mail,
        Err(failure) => return Decision::Quarantine(QuarantineReason::Unparseable(failure)),
    };
    match &facts.same_message_id {
        Some(known) if known.fingerprint == mail.fingerprint => {
            return Decision::Duplicate {
                ticket_id: known.ticket_id,
            };
        }
        Some(known) => {
            return Decision::Quarantine(QuarantineReason::MessageIdConflict {
                ticket_id: known.ticket_id,
            });
        }
        None => {}
    }

    let kind = classify(&mail, policy);
    let follow_up = |ticket: &KnownTicket, mail: ParsedMail, person: bool| Decision::FollowUp {
        ticket_id: ticket.ticket_id,
        reopen: person
            && policy.reopen_closed
            && matches!(ticket.status, TicketStatus::Resolved | TicketStatus::Closed),
        auto_kind: kind.auto_kind(),
        mail: Box::new(mail),
    };
    match &kind {
        MailKind::Loop(reason) => Decision::Ignore {
            reason: format!("mail loop: {reason}"),
        },
        MailKind::Bounce | MailKind::ReadReceipt => {
            match facts.reported.as_ref().or(facts.thread.as_ref()) {
                Some(ticket) => follow_up(ticket, mail, false),
                None => Decision::Ignore {
                    reason: format!(
                        "{} about a message that belongs to no ticket",
                        if kind == MailKind::Bounce {
                            "bounce"
                        } else {
                            "read receipt"
                        }
                    ),
                },
            }
        }
        MailKind::Automatic(reason) => match &facts.thread {
            Some(ticket) => follow_up(ticket, mail, false),
            None => Decision::Ignore {
                reason: format!("automatic mail ({reason}) that belongs to no ticket"),
            },
        },
        MailKind::Person => {
            if let Some(ticket) = &facts.thread {
                return follow_up(ticket, mail, true);
            }
            let mut related = None;
            if let Some(ticket) = &facts.tagged {
                let sender_known = [mail.from.as_ref(), mail.reply_to.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|p| {
                        ticket
                            .participants
                            .contains(&p.address.to_ascii_lowercase())
                    });
                if sender_known {
                    return follow_up(ticket, mail, true);
                }
                // A tag is guessable: from a stranger it only links the new ticket to that one.
                related = Some(ticket.ticket_id);
            }
            let limit = policy.max_new_tickets_per_sender_per_hour;
            if limit > 0 && facts.sender_recent_tickets >= limit && !facts.released {
                return Decision::Quarantine(QuarantineReason::SenderRateLimit {
                    sender: mail
                        .from
                        .as_ref()
                        .map(|p| p.address.clone())
                        .unwrap_or_default(),
                    limit,
                });
            }
            Decision::NewTicket {
                mail: Box::new(mail),
                related,
            }
        }
    }
}

/// The reference shown to customers and agents, e.g. `TCK-000042`.
pub fn ticket_reference(ticket_id: i64) -> String {
    format!("TCK-{ticket_id:06}")
}

/// The ticket reference in a subject's tag, e.g. `TCK-000042` from `Re: [#TCK-000042] Printer`.
pub fn tagged_reference(subject: &str) -> Option<String> {
    let start = subject.find("[#TCK-")?;
    let rest = &subject[start + 2..];
    let end = rest.find(']')?;
    let reference = &rest[..end];
    let digits = reference.strip_prefix("TCK-")?;
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| reference.to_string())
}

/// The subject without reply/forward prefixes (English, German, Nordic, Dutch, French…) and without
/// our ticket tag: what a ticket created from a reply is titled.
pub fn normalized_subject(subject: &str) -> String {
    const PREFIXES: [&str; 12] = [
        "re", "fw", "fwd", "aw", "wg", "sv", "vs", "vb", "antw", "tr", "rif", "r",
    ];
    let mut rest = subject.trim();
    loop {
        if let Some(reference) = tagged_reference(rest)
            && let Some(stripped) = rest.strip_prefix(&format!("[#{reference}]"))
        {
            rest = stripped.trim_start();
            continue;
        }
        let Some((head, tail)) = rest.split_once(':') else {
            break;
        };
        let word = head.trim().to_ascii_lowercase();
        // "Re[2]:" and "RE :" count too.
        let word = word.split('[').next().unwrap_or("").trim();
        if PREFIXES.contains(&word) {
            rest = tail.trim_start();
        } else {
            break;
        }
    }
    let rest = match tagged_reference(rest) {
        Some(reference) => rest.replace(&format!("[#{reference}]"), ""),
        None => rest.to_string(),
    };
    let normalized = rest.split_whitespace().collect::<Vec<_>>().join(" ");
    if normalized.is_empty() {
        subject.trim().to_string()
    } else {
        normalized
    }
}

#[cfg(test)]
mod tests;
