//! Mail the helpdesk hands over: the one library function, [`submit`], that `mailintake send`,
//! the `outgoing` table's pickup (in the sender) and the HTTP API call. It validates the request,
//! composes the complete message once (the bytes every attempt sends, with one Message-ID),
//! and writes the outbox row, for a ticket with the ticket's outbound `messages` row in the same
//! transaction. It sends nothing itself: the mailbox's sender takes the row like any other.

pub mod request;

use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Attachment, MultiPart, SinglePart};

pub use request::{AttachmentSpec, OutgoingRequest, Recipient, RequestKind, TicketRef};
use request::{CheckedAddress, CheckedAttachment};

use crate::config::{Mailbox, Mode};
use crate::ingest::{self, normalized_subject};
use crate::store::{OutgoingDraft, OutgoingKind, ReplyFacts, Store, StoreError, SubmittedVia};

/// Why a request was not accepted. Every variant but `Store` is the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("mailbox: no mailbox `{name}` is configured (configured: {known})")]
    UnknownMailbox { name: String, known: String },
    /// A field that cannot be sent as it is; `field` is its JSON name (`to[2]`, `subject`).
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error(
        "the message is {size} bytes encoded, more than {set_by} ({limit}): send large files as links"
    )]
    TooLarge {
        size: u64,
        limit: u64,
        set_by: SizeLimit,
    },
    #[error(
        "idempotency_key: already used for another request (outbox row {existing_id}); use a new key for a new message"
    )]
    Conflict { existing_id: i64 },
    #[error("{field}: `{address}` is not in the mailbox's allow_recipients")]
    NotAllowed { field: String, address: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubmitError {
    /// The request is at fault (as opposed to the database): retrying it unchanged cannot help.
    pub fn is_request_error(&self) -> bool {
        !matches!(self, SubmitError::Store(_))
    }
}

/// Which limit a too-large message is over: the smaller of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// The mailbox's `max_send_bytes`.
    Configured,
    /// The SIZE the mailbox's SMTP server announced in its EHLO when the sender last connected.
    Server,
}

impl std::fmt::Display for SizeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SizeLimit::Configured => "the mailbox's max_send_bytes",
            SizeLimit::Server => "the SMTP server accepts (its EHLO SIZE, in bytes)",
        })
    }
}

/// What [`submit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission {
    pub outbox_id: i64,
    /// False when the same request was submitted before under the same key.
    pub new: bool,
}

/// Validates `request`, composes it and writes its outbox row (see the module comment).
pub async fn submit(
    store: &Store,
    mailboxes: &[Mailbox],
    request: &OutgoingRequest,
    via: SubmittedVia,
) -> Result<Submission, SubmitError> {
    let mailbox = mailboxes
        .iter()
        .find(|m| m.name == request.mailbox)
        .ok_or_else(|| SubmitError::UnknownMailbox {
            name: request.mailbox.clone(),
            known: mailboxes
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    if mailbox.outlet.is_none() || mailbox.mode != Mode::Normal {
        return Err(SubmitError::Invalid {
            field: "mailbox".into(),
            problem: format!(
                "`{}` sends no mail (it needs a [mailboxes.smtp] table or send = \"graph\", and mode = \"normal\")",
                mailbox.name
            ),
        });
    }
    let checked = request::check(mailbox, request)?;
    if let Some(existing) = store
        .submitted(&mailbox.name, &request.idempotency_key)
        .await?
    {
        return same_or_conflict(existing, &checked.digest);
    }
    let ticket = match checked.ticket_id {
        None => None,
        Some(id) => match store.reply_facts(id).await? {
            Some(facts) if facts.mailbox == mailbox.name => Some(facts),
            Some(facts) => {
                return Err(SubmitError::Invalid {
                    field: "ticket".into(),
                    problem: format!(
                        "{} belongs to mailbox `{}`, not `{}`",
                        facts.reference, facts.mailbox, mailbox.name
                    ),
                });
            }
            None => {
                return Err(SubmitError::Invalid {
                    field: "ticket".into(),
                    problem: format!("there is no ticket {}", ingest::ticket_reference(id)),
                });
            }
        },
    };
    let mut to = checked.to.clone();
    if to.is_empty()
        && let Some(ticket) = &ticket
    {
        let requester = ticket
            .reply_to
            .as_deref()
            .ok_or_else(|| SubmitError::Invalid {
                field: "to".into(),
                problem: format!("{} has no requester address; give to", ticket.reference),
            })?;
        let address = crate::reply::envelope_form(requester);
        if let Some(problem) = crate::reply::unsendable(&address) {
            return Err(SubmitError::Invalid {
                field: "to".into(),
                problem: format!("the requester `{address}` cannot be sent to: {problem}"),
            });
        }
        request::check_allowed(mailbox, "to", &address)?;
        to.push(CheckedAddress {
            address,
            name: None,
        });
    }
    let n = to.len() + checked.cc.len() + checked.bcc.len();
    if n > request::MAX_RECIPIENTS {
        return Err(SubmitError::Invalid {
            field: "to".into(),
            problem: format!("{n} recipients; at most {}", request::MAX_RECIPIENTS),
        });
    }
    let mut attachments = Vec::with_capacity(checked.attachments.len());
    for (i, a) in checked.attachments.iter().enumerate() {
        attachments.push(match a {
            CheckedAttachment::Content {
                filename,
                content_type,
                content,
            } => (filename.clone(), content_type.clone(), content.clone()),
            CheckedAttachment::Stored(id) => {
                let field = format!("attachments[{i}].attachment_id");
                let stored = store
                    .attachment(*id)
                    .await?
                    .ok_or_else(|| SubmitError::Invalid {
                        field: field.clone(),
                        problem: format!("there is no stored attachment {id}"),
                    })?;
                // A mailbox's requests reach only its own mail: with many customers' mailboxes
                // in one database, an id is not a capability.
                if stored.mailbox != mailbox.name {
                    return Err(SubmitError::Invalid {
                        field,
                        problem: format!(
                            "attachment {id} came with mail of another mailbox; attach it by content"
                        ),
                    });
                }
                if stored.purged {
                    return Err(SubmitError::Invalid {
                        field,
                        problem: format!(
                            "the content of attachment {id} was removed by `mailintake purge` (retention)"
                        ),
                    });
                }
                (
                    stored
                        .filename
                        .unwrap_or_else(|| format!("attachment-{id}")),
                    stored.content_type,
                    stored.content,
                )
            }
        });
    }

    let subject = subject(checked.subject.as_deref(), ticket.as_ref());
    let message_id = crate::reply::new_message_id(
        ticket.as_ref().map_or("out", |t| t.reference.as_str()),
        &checked.from,
    );
    let (in_reply_to, references) = match &ticket {
        Some(ReplyFacts {
            latest_message_id: Some(parent),
            latest_references,
            ..
        }) => {
            let chain = match latest_references {
                Some(earlier) => format!("{earlier} <{parent}>"),
                None => format!("<{parent}>"),
            };
            (Some(parent.clone()), Some(chain))
        }
        _ => (None, None),
    };
    let parts = Parts {
        kind: checked.kind,
        from: &checked.from,
        to: &to,
        cc: &checked.cc,
        bcc: &checked.bcc,
        subject: &subject,
        message_id: &message_id,
        in_reply_to: in_reply_to.as_deref(),
        references: references.as_deref(),
        text: &checked.text,
        html: checked.html.as_deref(),
        attachments: &attachments,
    };
    let raw = compose(&parts)?;
    // The smaller of the configured limit and the server's (learnt when the sender connected;
    // until then the sender checks it before MAIL FROM).
    let (limit, set_by) = match store
        .server_facts(&mailbox.name)
        .await?
        .and_then(|facts| facts.size_limit)
    {
        Some(server) if server < mailbox.sending.max_bytes => (server, SizeLimit::Server),
        _ => (mailbox.sending.max_bytes, SizeLimit::Configured),
    };
    if raw.len() as u64 > limit {
        return Err(SubmitError::TooLarge {
            size: raw.len() as u64,
            limit,
            set_by,
        });
    }
    let parsed = match &ticket {
        Some(_) => Some(ingest::parse(&raw).map_err(|e| SubmitError::Invalid {
            field: "text".into(),
            problem: format!("the composed message does not parse back ({e:?})"),
        })?),
        None => None,
    };
    let envelope_to: Vec<String> = to
        .iter()
        .chain(&checked.cc)
        .chain(&checked.bcc)
        .map(|a| a.address.clone())
        .collect();
    let draft = OutgoingDraft {
        mailbox: &mailbox.name,
        kind: match checked.kind {
            RequestKind::Reply => OutgoingKind::Reply,
            RequestKind::Notification => OutgoingKind::Notification,
        },
        via,
        idempotency_key: &request.idempotency_key,
        request_digest: &checked.digest,
        ticket_id: ticket.as_ref().map(|t| t.ticket_id),
        from: &checked.from,
        to_address: to.first().map(|a| a.address.as_str()),
        envelope_to: &envelope_to,
        subject: &subject,
        message_id: &message_id,
        in_reply_to: in_reply_to.as_deref(),
        references: references.as_deref(),
        body_text: &checked.text,
        body_html: checked.html.as_deref(),
        raw: &raw,
        parsed: parsed.as_ref(),
    };
    match store.insert_outgoing(&draft).await? {
        Ok(outbox_id) => Ok(Submission {
            outbox_id,
            new: true,
        }),
        // Another process wrote the same key meanwhile.
        Err(existing) => same_or_conflict(existing, &checked.digest),
    }
}

fn same_or_conflict(
    existing: crate::store::Submitted,
    digest: &str,
) -> Result<Submission, SubmitError> {
    if existing.request_digest == digest {
        Ok(Submission {
            outbox_id: existing.outbox_id,
            new: false,
        })
    } else {
        Err(SubmitError::Conflict {
            existing_id: existing.outbox_id,
        })
    }
}

/// A ticket reply's subject carries the ticket's tag, as acknowledgements do: the given subject
/// with the tag put in front when it lacks it, or `[#TCK-…] Re: <the ticket's subject>`.
fn subject(given: Option<&str>, ticket: Option<&ReplyFacts>) -> String {
    match (given, ticket) {
        (Some(subject), None) => subject.to_string(),
        (Some(subject), Some(t))
            if ingest::tagged_reference(subject).as_deref() == Some(&t.reference) =>
        {
            subject.to_string()
        }
        (Some(subject), Some(t)) => format!("[#{}] {subject}", t.reference),
        (None, Some(t)) => {
            crate::reply::tagged_subject(&t.reference, &normalized_subject(&t.subject))
        }
        (None, None) => String::new(),
    }
}

/// What a message is built from.
struct Parts<'a> {
    kind: RequestKind,
    from: &'a str,
    to: &'a [CheckedAddress],
    cc: &'a [CheckedAddress],
    bcc: &'a [CheckedAddress],
    subject: &'a str,
    message_id: &'a str,
    in_reply_to: Option<&'a str>,
    references: Option<&'a str>,
    text: &'a str,
    html: Option<&'a str>,
    /// (filename, content type, content)
    attachments: &'a [(String, String, Vec<u8>)],
}

/// The complete message, as sent. Bcc recipients are in the envelope only (lettre leaves the
/// Bcc field out of the bytes). A reply carries no Auto-Submitted or X-Auto-Response-Suppress
/// (a person wrote it: an out-of-office may answer it); a notification carries `Auto-Submitted:
/// auto-generated` and `X-Auto-Response-Suppress: All`.
fn compose(parts: &Parts<'_>) -> Result<Vec<u8>, SubmitError> {
    let invalid = |field: &str, problem: String| SubmitError::Invalid {
        field: field.into(),
        problem,
    };
    let from: lettre::message::Mailbox = parts
        .from
        .parse()
        .map_err(|e| invalid("from", format!("`{}` is not valid: {e}", parts.from)))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(parts.subject)
        .message_id(Some(format!("<{}>", parts.message_id)))
        .date_now();
    for a in parts.to {
        builder = builder.to(a.mailbox());
    }
    for a in parts.cc {
        builder = builder.cc(a.mailbox());
    }
    for a in parts.bcc {
        builder = builder.bcc(a.mailbox());
    }
    if let Some(parent) = parts.in_reply_to {
        builder = builder.in_reply_to(format!("<{parent}>"));
    }
    if let Some(references) = parts.references {
        builder = builder.references(references.to_string());
    }
    if parts.kind == RequestKind::Notification {
        let header = |name: &'static str, value: &str| {
            HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
        };
        builder = builder
            .raw_header(header("Auto-Submitted", "auto-generated"))
            .raw_header(header("X-Auto-Response-Suppress", "All"));
    }
    let text = || SinglePart::plain(parts.text.to_string());
    let body =
        |html: &str| MultiPart::alternative_plain_html(parts.text.to_string(), html.to_string());
    let message = if parts.attachments.is_empty() {
        match parts.html {
            Some(html) => builder.multipart(body(html)),
            None => builder.singlepart(text()),
        }
    } else {
        let mut mixed = match parts.html {
            Some(html) => MultiPart::mixed().multipart(body(html)),
            None => MultiPart::mixed().singlepart(text()),
        };
        for (i, (filename, content_type, content)) in parts.attachments.iter().enumerate() {
            let content_type = lettre::message::header::ContentType::parse(content_type)
                .map_err(|e| invalid(&format!("attachments[{i}].content_type"), e.to_string()))?;
            mixed = mixed
                .singlepart(Attachment::new(filename.clone()).body(content.clone(), content_type));
        }
        builder.multipart(mixed)
    };
    message
        .map(|m| m.formatted())
        .map_err(|e| invalid("to", format!("the message cannot be built: {e}")))
}

#[cfg(test)]
mod tests;
