//! From raw mail and facts about what is already stored to a decision. No IO happens here: the
//! worker asks the store for the facts, calls [`decide`], then commits what it returns.
//!
//! Bad mail is data, not failure: every input ends in a [`Decision`], and only the worker's
//! infrastructure (IMAP, database) can fail.
//!
//! The rooms: [`parse`] (raw bytes → [`ParsedMail`], made readable by `repair`; a DSN's fields
//! read by `report`), `classify` (what kind of mail it is, which outbox message a bounce is
//! about), and here the decision itself.

mod address;
pub mod authres;
mod classify;
pub mod parse;
mod repair;
mod report;

pub use parse::{
    Attachment, DeliveryReport, DsnAction, FingerprintVersion, MessageIdSource, ParseFailure,
    ParsedMail, Party, RecipientStatus, Signals, fingerprint_v1, parse, sha256_hex,
};

pub use classify::{AutoKind, MailKind, OutboxBounce, classify, outbox_bounce};

use crate::config::AutomaticMail;
use classify::reported_message_ids;

/// What the store already knows about a message's Message-ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownMessage {
    pub ticket_id: i64,
    /// The stored row (`messages.id`): its kept raw bytes, if any, can be fingerprinted anew.
    pub message_row_id: i64,
    /// The stored message's fingerprint, computed under `fingerprint_version`.
    pub fingerprint: String,
    pub fingerprint_version: FingerprintVersion,
}

impl KnownMessage {
    /// `mail` is the stored message: equal fingerprints under the stored one's version.
    pub fn is_same_content(&self, mail: &ParsedMail) -> bool {
        mail.fingerprint_under(self.fingerprint_version) == Some(self.fingerprint.as_str())
    }
}

/// The stored message key `<original>#<n>` that a released conflict of `original` is stored
/// under ([`MessageIdSource::ConflictRelease`]); `n` counts from 2.
pub fn conflict_release_key(original: &str, n: u32) -> String {
    format!("{original}#{n}")
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
    /// When `same_message_id` is another message: the released conflicts stored under
    /// `<Message-ID>#2`, `#3`, … ([`conflict_release_key`]), and the first such key still free.
    pub conflict_releases: Vec<KnownMessage>,
    pub free_conflict_key: Option<String>,
    /// The ticket owning a message named in In-Reply-To or References (inbound or outbound).
    pub thread: Option<KnownTicket>,
    /// The ID that found `thread` is one of our own outbound messages (an acknowledgement): the
    /// mail replies to something we sent, so it belongs to the ticket whoever sends it.
    pub thread_by_our_message: bool,
    /// The ticket whose tag (`[#TCK-000123]`) is in the subject.
    pub tagged: Option<KnownTicket>,
    /// The ticket owning the message a bounce or read receipt is about.
    pub reported: Option<KnownTicket>,
    /// How many tickets the sender opened in the last hour.
    pub sender_recent_tickets: u32,
    /// An operator released this message from quarantine: it comes in once, past the limits.
    pub released: bool,
    /// The mail's Message-ID is the one Exchange gave a message we sent through Graph: ours
    /// (this one) come back.
    pub sent_by_us: Option<String>,
}

/// Settings that shape decisions.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Our own mailbox addresses, lower case: X-Loop naming one, or a Message-ID of ours on one's
    /// domain, is a loop; no acknowledgement goes to one.
    pub own_addresses: Vec<String>,
    /// New tickets one sender may open per hour; 0 means no limit.
    pub max_new_tickets_per_sender_per_hour: u32,
    /// A follow-up to a resolved or closed ticket reopens it.
    pub reopen_closed: bool,
    /// What machine-generated mail (notifications, alerts, bulk and list mail) becomes.
    pub automatic: AutomaticMail,
}

/// How every Message-ID mailintake writes begins (`reply::new_message_id`): with the domain of
/// one of our own addresses after the `@`, it tells our own mail from anyone else's.
pub const OUR_MESSAGE_ID_PREFIX: &str = "mailintake.";

impl Policy {
    /// `message_id` is one mailintake made (an acknowledgement, a quarantine notice): it begins
    /// with [`OUR_MESSAGE_ID_PREFIX`] and its domain is one of our own addresses'.
    pub fn is_our_message_id(&self, message_id: &str) -> bool {
        let Some((local, domain)) = message_id.rsplit_once('@') else {
            return false;
        };
        local.starts_with(OUR_MESSAGE_ID_PREFIX)
            && self.own_addresses.iter().any(|address| {
                address
                    .rsplit_once('@')
                    .is_some_and(|(_, own)| own.eq_ignore_ascii_case(domain))
            })
    }
}

crate::closed_set! {
    /// Why a message became no ticket on purpose: the first word of its `imap_messages.detail`.
    pub enum IgnoreCode("ignore reason") {
        /// Sent by mailintake itself (our Message-ID, or X-Loop naming our mailbox).
        Loop = "loop",
        /// A machine's reply (auto-reply, bounce, read receipt) about mail we never sent: it
        /// names neither a ticket nor one of our messages (typically a reply to spam that forged
        /// our address).
        Backscatter = "backscatter",
        /// A machine's reply about one of our messages that belongs to no ticket (a quarantine
        /// notice).
        NoTicket = "no-ticket",
        /// Machine-generated mail under the mailbox's `automatic = "ignore"`.
        Automatic = "automatic",
        /// In the folder at the first start and received before the `first_start` cutoff.
        BeforeFirstStart = "before-first-start",
    }
}

/// Why a message becomes no ticket, with the detail for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    Loop(String),
    Backscatter { kind: AutoKind, evidence: String },
    NoTicket { kind: AutoKind, message_id: String },
    Automatic { kind: AutoKind, evidence: String },
    BeforeFirstStart,
}

impl IgnoreReason {
    pub fn code(&self) -> IgnoreCode {
        match self {
            IgnoreReason::Loop(_) => IgnoreCode::Loop,
            IgnoreReason::Backscatter { .. } => IgnoreCode::Backscatter,
            IgnoreReason::NoTicket { .. } => IgnoreCode::NoTicket,
            IgnoreReason::Automatic { .. } => IgnoreCode::Automatic,
            IgnoreReason::BeforeFirstStart => IgnoreCode::BeforeFirstStart,
        }
    }

    /// What `imap_messages.detail` holds: the code, a colon, a sentence.
    pub fn detail(&self) -> String {
        let sentence = match self {
            IgnoreReason::Loop(reason) => format!("mail loop: {reason}"),
            IgnoreReason::Backscatter { kind, evidence } => format!(
                "{} ({evidence}) that names neither a ticket nor one of our messages",
                kind.described()
            ),
            IgnoreReason::NoTicket { kind, message_id } => format!(
                "{} about our message {message_id}, which belongs to no ticket",
                kind.described()
            ),
            IgnoreReason::Automatic { kind, evidence } => format!(
                "{} ({evidence}) that belongs to no ticket; the mailbox has automatic = \"ignore\"",
                kind.described()
            ),
            IgnoreReason::BeforeFirstStart => {
                "received before the mailbox's first_start cutoff; left untouched".to_string()
            }
        };
        format!("{}: {sentence}", self.code())
    }
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
                "the Message-ID is already stored on ticket {ticket_id} with different content; if the sender reuses Message-IDs, release the message to ingest it as a ticket of its own"
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
        /// Set for machine-generated mail kept as a ticket: never acknowledged.
        auto_kind: Option<AutoKind>,
    },
    /// Add the message to an existing ticket.
    FollowUp {
        mail: Box<ParsedMail>,
        ticket_id: i64,
        /// Reopen the ticket (it was resolved or closed and a person wrote again).
        reopen: bool,
        /// Set for automatic mail (see [`AutoKind`]): never acknowledged.
        auto_kind: Option<AutoKind>,
        /// A bounce of one of our outbox messages: that row becomes `bounced`.
        bounced: Option<OutboxBounce>,
    },
    /// The same message (same Message-ID and content) is already stored: record, do not duplicate.
    Duplicate { ticket_id: i64 },
    /// Recorded, never a ticket: see [`IgnoreReason`].
    Ignore {
        reason: IgnoreReason,
        /// A bounce of one of our outbox messages that belongs to no ticket (a quarantine
        /// notice): that row becomes `bounced` all the same.
        bounced: Option<OutboxBounce>,
    },
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
    let mut mail = mail;
    match &facts.same_message_id {
        Some(known) if known.is_same_content(&mail) => {
            return Decision::Duplicate {
                ticket_id: known.ticket_id,
            };
        }
        Some(known) => {
            if let Some(released) = facts
                .conflict_releases
                .iter()
                .find(|released| released.is_same_content(&mail))
            {
                return Decision::Duplicate {
                    ticket_id: released.ticket_id,
                };
            }
            let Some(key) = facts.free_conflict_key.as_ref().filter(|_| facts.released) else {
                return Decision::Quarantine(QuarantineReason::MessageIdConflict {
                    ticket_id: known.ticket_id,
                });
            };
            // An operator released a real conflict (a sender that reuses Message-IDs): it comes
            // in once, as a ticket of its own under its own key.
            mail.message_id = key.clone();
            mail.message_id_source = MessageIdSource::ConflictRelease;
            let auto_kind = classify(&mail, policy).auto_kind();
            return Decision::NewTicket {
                related: facts.tagged.as_ref().map(|ticket| ticket.ticket_id),
                mail: Box::new(mail),
                auto_kind,
            };
        }
        None => {}
    }

    let kind = match &facts.sent_by_us {
        Some(ours) => MailKind::Loop(format!(
            "the Message-ID {} is the one Exchange gave our message {ours}",
            mail.message_id
        )),
        None => classify(&mail, policy),
    };
    let auto_kind = kind.auto_kind();
    let bounced = outbox_bounce(&mail, policy);
    let follow_up = |ticket: &KnownTicket, mail: ParsedMail, may_reopen: bool| Decision::FollowUp {
        ticket_id: ticket.ticket_id,
        reopen: may_reopen
            && policy.reopen_closed
            && matches!(ticket.status, TicketStatus::Resolved | TicketStatus::Closed),
        auto_kind,
        bounced: bounced.clone(),
        mail: Box::new(mail),
    };
    // Someone on the ticket: the requester or anyone in the From, Reply-To, To or Cc of one of
    // its messages, or a recipient of our messages on it.
    let on_ticket = |ticket: &KnownTicket| {
        [mail.from.as_ref(), mail.reply_to.as_ref()]
            .into_iter()
            .flatten()
            .any(|p| {
                ticket
                    .participants
                    .contains(&p.address.to_ascii_lowercase())
            })
    };
    // The ticket a subject tag names, when the sender is on it (a tag is guessable: from a
    // stranger it only links a new ticket to that one).
    let tagged_by_participant = facts.tagged.as_ref().filter(|ticket| on_ticket(ticket));
    // The ticket of the thread the mail replies to, when it replies to one of our own messages or
    // comes from someone on the ticket. (A Message-ID in References is no secret either: a
    // stranger's reply only opens a new ticket linked to that one.)
    let thread = facts
        .thread
        .as_ref()
        .filter(|ticket| facts.thread_by_our_message || on_ticket(ticket));
    match &kind {
        MailKind::Loop(reason) => Decision::Ignore {
            reason: IgnoreReason::Loop(reason.clone()),
            bounced: None,
        },
        // A machine's reply belongs to the ticket of the mail it answers or reports on, and is
        // never a request of its own (RFC 3834 forbids answering it, not reading it).
        MailKind::Automatic { kind, evidence } if kind.is_reply() => {
            let ticket = facts.reported.as_ref().or(thread).or(tagged_by_participant);
            if let Some(ticket) = ticket {
                return follow_up(ticket, mail, false);
            }
            let reason = match reported_message_ids(&mail)
                .into_iter()
                .find(|id| policy.is_our_message_id(id))
            {
                Some(ours) => IgnoreReason::NoTicket {
                    kind: *kind,
                    message_id: ours.to_string(),
                },
                None => IgnoreReason::Backscatter {
                    kind: *kind,
                    evidence: evidence.clone(),
                },
            };
            Decision::Ignore { reason, bounced }
        }
        MailKind::Automatic { kind, evidence } if policy.automatic == AutomaticMail::Ignore => {
            match thread.or(tagged_by_participant) {
                Some(ticket) => follow_up(ticket, mail, false),
                None => Decision::Ignore {
                    reason: IgnoreReason::Automatic {
                        kind: *kind,
                        evidence: evidence.clone(),
                    },
                    bounced: None,
                },
            }
        }
        // A person's mail, and machine-generated mail under `automatic = "ticket"` (never
        // acknowledged: its `auto_kind` says why).
        MailKind::Automatic { .. } | MailKind::Person => {
            if let Some(ticket) = thread.or(tagged_by_participant) {
                return follow_up(ticket, mail, true);
            }
            let related = facts
                .thread
                .as_ref()
                .or(facts.tagged.as_ref())
                .map(|ticket| ticket.ticket_id);
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
                auto_kind,
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
