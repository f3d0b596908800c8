//! The request the helpdesk hands over (`OutgoingRequest`: the JSON document of the `outgoing`
//! table, `mailintake send --request` and the HTTP API's `POST /v1/messages`), its validation
//! (pure: every problem names the field) and its canonical digest.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SubmitError;
use crate::config::Mailbox;

/// At most this many recipients (To, Cc and Bcc together) per message.
pub const MAX_RECIPIENTS: usize = 500;
/// An idempotency key is at most this long (bytes), so a btree index holds it.
pub const MAX_KEY_BYTES: usize = 200;

/// A message the helpdesk wants sent from one of the mailboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingRequest {
    /// The mailbox's `name` in the configuration.
    #[serde(default)]
    pub mailbox: String,
    /// Unique per mailbox: the same key with the same request gives the same outbox row, with
    /// another request a conflict.
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub kind: RequestKind,
    /// The ticket answered: its id (`123`) or reference (`"TCK-000123"`, `"[#TCK-000123]"`).
    /// Without `to`, the mail goes to its requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Recipient>,
    /// The mailbox's address by default, or one of its `send_as` addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Required without a ticket; a ticket reply's subject gets the ticket's tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Sent as given; a text part is derived from it when `text` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentSpec>,
}

/// `reply` (a person's mail, the default) or `notification` (automatic mail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    #[default]
    Reply,
    Notification,
}

/// A ticket as the helpdesk names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TicketRef {
    Id(i64),
    Reference(String),
}

impl TicketRef {
    /// The ticket's id: `123`, `"123"`, `"TCK-000123"` or `"[#TCK-000123]"`; `None` for anything else.
    pub fn id(&self) -> Option<i64> {
        match self {
            TicketRef::Id(id) => (*id > 0).then_some(*id),
            TicketRef::Reference(text) => {
                let text = text.trim();
                let text = text
                    .strip_prefix("[#")
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap_or(text);
                let digits = text.strip_prefix("TCK-").unwrap_or(text);
                (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse::<i64>().ok())
                    .flatten()
                    .filter(|id| *id > 0)
            }
        }
    }
}

/// An address (`"a@b.test"`), optionally with a display name (`{"address": …, "name": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recipient {
    Address(String),
    Named {
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl Recipient {
    pub fn address(&self) -> &str {
        match self {
            Recipient::Address(address) | Recipient::Named { address, .. } => address,
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Recipient::Address(_) => None,
            Recipient::Named { name, .. } => name.as_deref(),
        }
    }
}

/// An attachment: its content (base64), or a stored attachment by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttachmentSpec {
    Content {
        filename: String,
        content_type: String,
        content_base64: String,
    },
    Stored {
        attachment_id: i64,
    },
}

/// An address checked for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAddress {
    pub address: String,
    pub name: Option<String>,
}

impl CheckedAddress {
    pub fn mailbox(&self) -> lettre::message::Mailbox {
        lettre::message::Mailbox::new(
            self.name.clone(),
            self.address.parse().expect("checked in validation"),
        )
    }
}

/// An attachment checked: content decoded, or a stored one still to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedAttachment {
    Content {
        filename: String,
        content_type: String,
        content: Vec<u8>,
    },
    Stored(i64),
}

/// A request whose every field was checked; what the store still has to answer (the ticket,
/// stored attachments) comes later.
#[derive(Debug, Clone)]
pub struct Checked {
    pub kind: RequestKind,
    pub ticket_id: Option<i64>,
    pub to: Vec<CheckedAddress>,
    pub cc: Vec<CheckedAddress>,
    pub bcc: Vec<CheckedAddress>,
    pub from: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub attachments: Vec<CheckedAttachment>,
    /// SHA-256 (hex) of the canonical request.
    pub digest: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Refuses CR and LF (header injection) and other control characters in a header value.
fn no_line_breaks(field: &str, value: &str) -> Result<(), SubmitError> {
    if value.contains(['\r', '\n']) {
        return Err(invalid(
            field,
            "contains a line break (CR or LF): refused, it would inject header fields",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

/// An addr-spec SMTP can send to (`local@domain`, no name, no brackets).
fn check_address(field: &str, address: &str) -> Result<String, SubmitError> {
    no_line_breaks(field, address)?;
    let address = address.trim();
    if address.contains(['<', '>', ' ', ',', ';']) {
        return Err(invalid(
            field,
            format!(
                "`{address}` is not a bare address (local@domain); give a display name as {{\"address\": …, \"name\": …}}"
            ),
        ));
    }
    if let Some(problem) = crate::reply::unsendable(address) {
        return Err(invalid(
            field,
            format!("`{address}` is not an address mail can go to: {problem}"),
        ));
    }
    Ok(crate::reply::envelope_form(address))
}

fn check_recipients(
    list: &str,
    recipients: &[Recipient],
) -> Result<Vec<CheckedAddress>, SubmitError> {
    recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("{list}[{i}]");
            let address = check_address(&field, r.address())?;
            let name = match r.name() {
                Some(name) => {
                    no_line_breaks(&format!("{field}.name"), name)?;
                    Some(name.trim().to_string()).filter(|n| !n.is_empty())
                }
                None => None,
            };
            Ok(CheckedAddress { address, name })
        })
        .collect()
}

/// Checks `request` for `mailbox` (the caller found it by `request.mailbox`): every field, the
/// From rule, the recipient count (those named here; a ticket adds its requester later) and the
/// allow-list; computes the canonical digest.
pub fn check(mailbox: &Mailbox, request: &OutgoingRequest) -> Result<Checked, SubmitError> {
    let key = request.idempotency_key.as_str();
    if key.trim().is_empty() {
        return Err(invalid("idempotency_key", "is missing or empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(
            "idempotency_key",
            format!("is {} bytes long; at most {MAX_KEY_BYTES}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid("idempotency_key", "contains a control character"));
    }
    let ticket_id = match &request.ticket {
        None => None,
        Some(ticket) => Some(ticket.id().ok_or_else(|| {
            invalid(
                "ticket",
                "is neither a ticket id (123) nor a reference (TCK-000123)",
            )
        })?),
    };
    let to = check_recipients("to", &request.to)?;
    let cc = check_recipients("cc", &request.cc)?;
    let bcc = check_recipients("bcc", &request.bcc)?;
    let n = to.len() + cc.len() + bcc.len();
    if n > MAX_RECIPIENTS {
        return Err(invalid(
            "to",
            format!("{n} recipients in to, cc and bcc; at most {MAX_RECIPIENTS}"),
        ));
    }
    if n == 0 && ticket_id.is_none() {
        return Err(invalid(
            "to",
            "no recipient: give to (or cc/bcc), or a ticket whose requester it goes to",
        ));
    }
    for (list, addresses) in [("to", &to), ("cc", &cc), ("bcc", &bcc)] {
        for (i, a) in addresses.iter().enumerate() {
            check_allowed(mailbox, &format!("{list}[{i}]"), &a.address)?;
        }
    }
    let from = match &request.from {
        None => mailbox.address.clone(),
        Some(from) => {
            let address = check_address("from", from)?;
            let own = address.eq_ignore_ascii_case(&mailbox.address);
            if !own
                && !mailbox
                    .sending
                    .send_as
                    .contains(&address.to_ascii_lowercase())
            {
                return Err(invalid(
                    "from",
                    format!(
                        "`{address}` is neither the mailbox's address ({}) nor in its send_as list{}",
                        mailbox.address,
                        if mailbox.sending.send_as.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", mailbox.sending.send_as.join(", "))
                        }
                    ),
                ));
            }
            address
        }
    };
    let subject = match &request.subject {
        Some(subject) => {
            no_line_breaks("subject", subject)?;
            Some(subject.trim().to_string())
        }
        None if ticket_id.is_none() => {
            return Err(invalid(
                "subject",
                "is missing (only a ticket reply may leave it out: it takes the ticket's)",
            ));
        }
        None => None,
    };
    let text = match (&request.text, &request.html) {
        (Some(text), _) => text.clone(),
        (None, Some(html)) => mail_parser::decoders::html::html_to_text(html),
        (None, None) => return Err(invalid("text", "give text, html or both")),
    };
    let attachments = request
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            AttachmentSpec::Stored { attachment_id } => {
                Ok(CheckedAttachment::Stored(*attachment_id))
            }
            AttachmentSpec::Content {
                filename,
                content_type,
                content_base64,
            } => {
                let field = |name: &str| format!("attachments[{i}].{name}");
                no_line_breaks(&field("filename"), filename)?;
                no_line_breaks(&field("content_type"), content_type)?;
                lettre::message::header::ContentType::parse(content_type).map_err(|e| {
                    invalid(
                        field("content_type"),
                        format!("`{content_type}` is not a MIME type ({e})"),
                    )
                })?;
                let compact: String = content_base64.split_whitespace().collect();
                let content = base64::engine::general_purpose::STANDARD
                    .decode(compact.as_bytes())
                    .map_err(|e| {
                        invalid(field("content_base64"), format!("is not base64 ({e})"))
                    })?;
                Ok(CheckedAttachment::Content {
                    filename: filename.clone(),
                    content_type: content_type.clone(),
                    content,
                })
            }
        })
        .collect::<Result<Vec<_>, SubmitError>>()?;
    Ok(Checked {
        kind: request.kind,
        ticket_id,
        to,
        cc,
        bcc,
        from,
        subject,
        text,
        html: request.html.clone(),
        attachments,
        digest: digest(request, ticket_id),
    })
}

/// A recipient outside the mailbox's `allow_recipients` is refused.
pub fn check_allowed(mailbox: &Mailbox, field: &str, address: &str) -> Result<(), SubmitError> {
    match &mailbox.sending.allow_recipients {
        Some(patterns) if !patterns.iter().any(|p| super::super::denied(address, p)) => {
            Err(SubmitError::NotAllowed {
                field: field.to_string(),
                address: address.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// SHA-256 (hex) of the request in canonical form: its JSON with the fields in declaration
/// order, defaults written out, the ticket as its id, and attachment content decoded to the
/// same base64 (so line breaks in it do not count). The same request always gives the same
/// digest, whoever serialised it and however.
pub fn digest(request: &OutgoingRequest, ticket_id: Option<i64>) -> String {
    let mut canonical = request.clone();
    canonical.ticket = ticket_id.map(TicketRef::Id);
    canonical.mailbox = canonical.mailbox.trim().to_string();
    for a in &mut canonical.attachments {
        if let AttachmentSpec::Content { content_base64, .. } = a {
            *content_base64 = content_base64.split_whitespace().collect();
        }
    }
    let json = serde_json::to_vec(&canonical).expect("a request serialises");
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
