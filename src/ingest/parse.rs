//! Raw RFC 5322 bytes → the fields a ticket row needs, using mail-parser.

use std::borrow::Cow;
use std::collections::HashMap;

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};

use super::address;

pub use super::address::Party;
pub use super::report::{DeliveryReport, DsnAction, RecipientStatus};
use sha2::{Digest, Sha256};

/// Where a message's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageIdSource {
    /// The Message-ID header.
    Header,
    /// No Message-ID: a deterministic key from the version-1 fingerprint (the identifying header
    /// fields and the body's bytes), so a re-delivery of the same bytes is still recognised. (It
    /// stays version 1: keys stored before version 2 existed must still be found.)
    ContentHash,
    /// The Message-ID header of a real conflict (another message reusing a stored Message-ID)
    /// that an operator released: stored under `<original>#<n>`, the first free `n` from 2.
    ConflictRelease,
}

impl MessageIdSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageIdSource::Header => "header",
            MessageIdSource::ContentHash => "content-hash",
            MessageIdSource::ConflictRelease => "conflict-release",
        }
    }
}

/// How a fingerprint was computed (`messages.fingerprint_version`). A new message is compared
/// with a stored one under the stored one's version, so rows written by older code keep matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FingerprintVersion {
    /// The identifying header fields (Message-ID, From, To, Cc, Subject, Date) and the body's
    /// bytes as received: a server that re-renders the message (another transfer encoding,
    /// re-wrapped quoted-printable, new MIME boundaries) changes it.
    V1,
    /// What a person sees: the identifying header fields decoded (Message-ID, From, To, Cc, Date,
    /// Subject, In-Reply-To), the decoded text of every text part with line endings and trailing
    /// blanks normalised, and each other part's content SHA-256 and name, in the order of the
    /// parts. Transfer encodings, charsets, MIME boundaries and header folding do not count.
    V2,
}

impl FingerprintVersion {
    /// The version new rows are written with.
    pub const CURRENT: FingerprintVersion = FingerprintVersion::V2;

    pub fn number(self) -> i64 {
        match self {
            FingerprintVersion::V1 => 1,
            FingerprintVersion::V2 => 2,
        }
    }

    /// The version stored as `number`; an error for one this code does not know (written by
    /// newer code).
    pub fn from_number(number: i64) -> Result<FingerprintVersion, crate::closed_set::UnknownValue> {
        match number {
            1 => Ok(FingerprintVersion::V1),
            2 => Ok(FingerprintVersion::V2),
            _ => Err(crate::closed_set::UnknownValue {
                set: "fingerprint version",
                text: number.to_string(),
            }),
        }
    }
}

/// What the headers say about how the message came to be: the raw material for loop and noise
/// protection (RFC 3834 and what Exchange, Gmail and list servers send).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// `Auto-Submitted`, lower case (`auto-replied`, `auto-generated`, `no`, …).
    pub auto_submitted: Option<String>,
    /// `Precedence`, lower case (`bulk`, `junk`, `list`, `auto_reply`).
    pub precedence: Option<String>,
    /// `X-Auto-Response-Suppress`, lower case (`all`, `oof, autoreply`, …): the sender asks
    /// for no automatic answers of these kinds ([MS-OXCMAIL] 2.2.3.2.14). Exchange puts it on its
    /// own automatic mail, ticket systems on everything they send, their agents' replies too:
    /// it says nothing about who wrote the message.
    pub auto_response_suppress: Option<String>,
    /// Mailing-list or newsletter traffic: what list software really sets (any `List-*` field,
    /// `X-Mailman-*`, a `Sender:` or `Return-Path` of a list robot: `owner-…`, `…-owner`,
    /// `…-request`, `…-bounces`); `list_evidence` says which.
    pub list: bool,
    pub list_evidence: Option<String>,
    /// `Return-Path: <>`: the null sender of bounces and automatic replies.
    pub null_return_path: bool,
    /// The envelope sender from `Return-Path` (added at final delivery), where automatic replies
    /// go (RFC 3834 §4); `None` without the field, `Some("")` for the null path.
    pub return_path: Option<String>,
    /// The addresses named in `X-Loop` headers, lower case.
    pub x_loop: Vec<String>,
    /// The `report-type` of a top-level `multipart/report` (`delivery-status`,
    /// `disposition-notification`), lower case.
    pub report_type: Option<String>,
    /// The Message-ID of the original message a report (bounce, read receipt) is about.
    pub original_message_id: Option<String>,
    /// The `message/delivery-status` part of a delivery status notification (RFC 3464).
    pub delivery_report: Option<DeliveryReport>,
    /// Every `Authentication-Results` field, topmost first (RFC 8601); which of them counts is
    /// for [`super::authres::vouch`] to say.
    pub authentication_results: Vec<super::authres::AuthResults>,
    /// The topmost `X-MS-Exchange-Organization-SCL`: Exchange Online's spam confidence level.
    pub exchange_scl: Option<i32>,
}

impl Signals {
    /// `X-Auto-Response-Suppress` asks for no auto-replies (`All` or `AutoReply`; `OOF` is about
    /// out-of-office notices only): an acknowledgement is one.
    pub fn suppresses_auto_replies(&self) -> bool {
        self.auto_response_suppress.as_deref().is_some_and(|value| {
            value
                .split([',', ' ', ';'])
                .any(|token| matches!(token.trim(), "all" | "autoreply"))
        })
    }
}

/// One attachment or inline part.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub content_id: Option<String>,
    pub inline: bool,
    /// Shared, not copied, by the rows that store it (`store::batch`).
    pub content: std::sync::Arc<[u8]>,
    pub sha256: String,
}

/// A parsed message, owned, with the bodies as the sender sent them.
#[derive(Debug, Clone)]
pub struct ParsedMail {
    /// Without angle brackets.
    pub message_id: String,
    pub message_id_source: MessageIdSource,
    pub subject: String,
    /// The first From address (normalised: `ingest::address`); with several, the first one
    /// written, which is the requester. `None` when From holds no address.
    pub from: Option<Party>,
    /// Every From address, normalised, in the order written (RFC 5322 allows several, with a
    /// Sender).
    pub from_addresses: Vec<Party>,
    /// The Sender field: who sent a message written by several From addresses.
    pub sender: Option<Party>,
    pub reply_to: Option<Party>,
    pub to: Vec<Party>,
    pub cc: Vec<Party>,
    /// The Date header as unix milliseconds.
    pub date_ms: Option<i64>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    /// The text/plain body parts the sender wrote; `None` for HTML-only mail.
    pub text_body: Option<String>,
    /// The text/html body parts the sender wrote; `None` for text-only mail.
    pub html_body: Option<String>,
    /// For HTML-only mail, a plain-text rendering of the HTML, marked as derived by living here
    /// rather than in `text_body`.
    pub text_body_derived: Option<String>,
    /// The header section as received, kept for audit.
    pub headers: String,
    /// Headers that tell automatic mail, lists and reports from mail a person wrote.
    pub signals: Signals,
    /// What was repaired or left out in the address fields (From, Sender, Reply-To,
    /// Return-Path), as sentences for the operator: the message's `detail` in the ledger.
    pub address_notes: Vec<String>,
    pub attachments: Vec<Attachment>,
    pub size: u64,
    /// SHA-256 (hex) of the raw bytes, for audit.
    pub content_sha256: String,
    /// SHA-256 (hex) of what the sender wrote, under [`FingerprintVersion::CURRENT`]: what a
    /// person sees, without the trace fields (Received, Return-Path, Delivered-To, …) that every
    /// delivery adds and without what a server may change when it re-renders the message. Equal
    /// for the copies of one message delivered to two mailboxes, re-delivered or re-rendered;
    /// different for another message that reuses a Message-ID.
    pub fingerprint: String,
    /// The [`FingerprintVersion::V1`] fingerprint (a hash of the raw body: a second pass over
    /// nearly every byte), computed only for mail without a Message-ID, whose key it is; for the
    /// rest [`fingerprint_v1`] computes it when a stored row of that version is compared.
    pub fingerprint_v1: Option<String>,
}

/// Why a message could not be parsed. It is quarantined with this reason and its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    #[error("the message is empty")]
    Empty,
    #[error("the message has no header section that mail-parser can read")]
    NoHeaders,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Parses `raw`. Never fails on odd charsets or broken encodings (mail-parser replaces what it
/// cannot decode); only input without any usable header is refused.
pub fn parse(raw: &[u8]) -> Result<ParsedMail, ParseFailure> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseFailure::Empty);
    }
    let input = readable(raw);
    let input: &[u8] = &input;
    let message = MessageParser::default()
        .parse(input)
        .ok_or(ParseFailure::NoHeaders)?;
    if message.headers().is_empty() {
        return Err(ParseFailure::NoHeaders);
    }
    // Each form of the bytes is hashed once: the raw bytes here, every decoded attachment once
    // (for its row and for the fingerprint), the version-1 fingerprint only where it is needed.
    let content_sha256 = sha256_hex(raw);
    let header_id = message
        .message_id()
        .map(strip_brackets)
        .filter(|id| !id.is_empty());
    let part_digests: HashMap<usize, String> = message
        .attachments
        .iter()
        .filter_map(|&id| {
            let part = message.parts.get(id as usize)?;
            match &part.body {
                PartType::Binary(content) | PartType::InlineBinary(content) => {
                    Some((id as usize, sha256_hex(content)))
                }
                _ => None,
            }
        })
        .collect();
    let fingerprint = fingerprint_v2(&message, header_id.as_deref(), &part_digests);

    let (message_id, message_id_source, fingerprint_v1) = match header_id {
        Some(id) => (id, MessageIdSource::Header, None),
        // Mail without a Message-ID is known by its version-1 fingerprint, as it always was.
        None => {
            let v1 = fingerprint_v1_of(&message, None, input);
            (
                format!("{v1}@content-hash.mailintake.invalid"),
                MessageIdSource::ContentHash,
                Some(v1),
            )
        }
    };

    let text_body = join_parts(
        message
            .text_body
            .iter()
            .filter_map(|id| message.parts.get(*id as usize))
            .filter_map(|part| match &part.body {
                // mail-parser lists an HTML part here too when no text/plain exists, and renders it
                // as text on request; only real text/plain parts count as the sender's text.
                PartType::Text(text) => Some(text.as_ref()),
                _ => None,
            }),
    );
    let html_body = join_parts(
        message
            .html_body
            .iter()
            .filter_map(|id| message.parts.get(*id as usize))
            .filter_map(|part| match &part.body {
                PartType::Html(html) => Some(html.as_ref()),
                _ => None,
            }),
    );

    let attachments = message
        .attachments
        .iter()
        .filter_map(|&id| Some((id as usize, message.parts.get(id as usize)?)))
        .map(|(id, part)| {
            let content: Vec<u8> = match &part.body {
                PartType::Message(nested) => nested.raw_message.to_vec(),
                _ => part.contents().to_vec(),
            };
            let sha256 = part_digests
                .get(&id)
                .cloned()
                .unwrap_or_else(|| sha256_hex(&content));
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            let inline = part
                .content_disposition()
                .map(|d| d.ctype().eq_ignore_ascii_case("inline"))
                .unwrap_or(false);
            Attachment {
                filename: part.attachment_name().and_then(sanitize_filename),
                content_type,
                content_id: part.content_id().map(strip_brackets),
                inline,
                sha256,
                content: content.into(),
            }
        })
        .collect();

    // The header section as received (transcoded to UTF-8 where it was not), kept for audit.
    let body_start = (message.root_part().offset_body as usize).min(input.len());
    let headers = String::from_utf8_lossy(&input[..body_start]).into_owned();

    let raw_field = |name: &str| {
        message
            .headers_raw()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    };
    let from = address::mailbox_list("From", message.from(), raw_field("From"));
    let sender = address::mailbox_list("Sender", message.sender(), raw_field("Sender"));
    let reply_to = address::mailbox_list("Reply-To", message.reply_to(), raw_field("Reply-To"));
    let to = address::mailbox_list("To", message.to(), raw_field("To"));
    let cc = address::mailbox_list("Cc", message.cc(), raw_field("Cc"));
    let mut address_notes: Vec<String> = [&from, &sender, &reply_to]
        .into_iter()
        .flat_map(|list| list.notes.iter().cloned())
        .collect();
    let sender = sender.parties.into_iter().next();
    if from.parties.len() > 1 {
        let all: Vec<&str> = from.parties.iter().map(|p| p.address.as_str()).collect();
        address_notes.push(format!(
            "From names {} addresses ({}); the first, {}, is the requester; {}",
            all.len(),
            all.join(", "),
            all[0],
            match &sender {
                Some(sender) => format!("Sender: {}", sender.address),
                None => "there is no Sender field, which RFC 5322 §3.6.2 requires then".into(),
            }
        ));
    }
    let signals = signals(&message, &mut address_notes);

    let mut mail = ParsedMail {
        message_id,
        message_id_source,
        subject: message.subject().unwrap_or("").trim().to_string(),
        from: from.parties.first().cloned(),
        from_addresses: from.parties,
        sender,
        reply_to: reply_to.parties.into_iter().next(),
        to: to.parties,
        cc: cc.parties,
        date_ms: message.date().map(|d| d.to_timestamp() * 1000),
        in_reply_to: id_list(message.in_reply_to()),
        references: id_list(message.references()),
        text_body_derived: match (&text_body, &html_body) {
            (None, Some(html)) => Some(mail_parser::decoders::html::html_to_text(html)),
            _ => None,
        },
        text_body,
        html_body,
        headers,
        signals,
        address_notes,
        attachments,
        size: raw.len() as u64,
        content_sha256,
        fingerprint,
        fingerprint_v1,
    };
    mail.remove_nul_bytes();
    Ok(mail)
}

impl ParsedMail {
    /// Its own Message-ID and the ones it refers to: In-Reply-To, References, and a report's
    /// original message.
    pub fn referenced_and_own_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.message_id.as_str())
            .chain(self.in_reply_to.iter().map(String::as_str))
            .chain(self.references.iter().map(String::as_str))
            .chain(self.signals.original_message_id.as_deref())
    }

    /// Replaces every reference to a Message-ID in `ours` (another name of one of our messages
    /// → our Message-ID) by ours; returns ours when this mail's own Message-ID is such a name.
    pub fn name_our_messages(
        &mut self,
        ours: &std::collections::HashMap<String, String>,
    ) -> Option<String> {
        if ours.is_empty() {
            return None;
        }
        for id in self
            .in_reply_to
            .iter_mut()
            .chain(self.references.iter_mut())
            .chain(self.signals.original_message_id.as_mut())
        {
            if let Some(our) = ours.get(id.as_str()) {
                id.clone_from(our);
            }
        }
        ours.get(&self.message_id).cloned()
    }

    /// The Message-ID the sender wrote, for the In-Reply-To and References of a reply: the key
    /// without the `#<n>` of a released conflict ([`MessageIdSource::ConflictRelease`]).
    pub fn sent_message_id(&self) -> &str {
        match self.message_id_source {
            MessageIdSource::ConflictRelease => self
                .message_id
                .rsplit_once('#')
                .map_or(self.message_id.as_str(), |(original, _)| original),
            MessageIdSource::Header | MessageIdSource::ContentHash => &self.message_id,
        }
    }

    /// The fingerprint under `version`, to compare with a row stored under it; `None` for
    /// version 1 where it was not computed (see [`ParsedMail::fingerprint_v1`]).
    pub fn fingerprint_under(&self, version: FingerprintVersion) -> Option<&str> {
        match version {
            FingerprintVersion::V1 => self.fingerprint_v1.as_deref(),
            FingerprintVersion::V2 => Some(&self.fingerprint),
        }
    }

    /// Removes every NUL character from the text fields. A NUL is what `=00` (quoted-printable,
    /// RFC 2047) or a NUL byte in 8-bit mail decodes to; PostgreSQL refuses it in text columns
    /// (SQLSTATE 22021) and SQLite would keep it, so it is removed for both and stored text is
    /// the same on either. The raw bytes (and the hashes, taken from them) keep it.
    fn remove_nul_bytes(&mut self) {
        fn clean(text: &mut String) {
            if text.contains('\0') {
                text.retain(|c| c != '\0');
            }
        }
        fn clean_party(party: &mut Party) {
            clean(&mut party.address);
            if let Some(name) = &mut party.name {
                clean(name);
            }
        }
        clean(&mut self.message_id);
        clean(&mut self.subject);
        clean(&mut self.headers);
        for party in self
            .from
            .iter_mut()
            .chain(self.from_addresses.iter_mut())
            .chain(self.sender.iter_mut())
            .chain(self.reply_to.iter_mut())
            .chain(self.to.iter_mut())
            .chain(self.cc.iter_mut())
        {
            clean_party(party);
        }
        for id in self
            .in_reply_to
            .iter_mut()
            .chain(self.references.iter_mut())
            .chain(self.address_notes.iter_mut())
        {
            clean(id);
        }
        for body in [
            &mut self.text_body,
            &mut self.html_body,
            &mut self.text_body_derived,
        ]
        .into_iter()
        .flatten()
        {
            clean(body);
        }
        let signals = &mut self.signals;
        if let Some(report) = &mut signals.delivery_report {
            for text in report.reporting_mta.iter_mut() {
                clean(text);
            }
            for recipient in &mut report.recipients {
                clean(&mut recipient.recipient);
                for text in [&mut recipient.status, &mut recipient.diagnostic]
                    .into_iter()
                    .flatten()
                {
                    clean(text);
                }
            }
        }
        for text in [
            &mut signals.auto_submitted,
            &mut signals.auto_response_suppress,
            &mut signals.precedence,
            &mut signals.return_path,
            &mut signals.report_type,
            &mut signals.original_message_id,
        ]
        .into_iter()
        .flatten()
        .chain(signals.x_loop.iter_mut())
        {
            clean(text);
        }
        for attachment in &mut self.attachments {
            clean(&mut attachment.content_type);
            for text in [&mut attachment.filename, &mut attachment.content_id]
                .into_iter()
                .flatten()
            {
                clean(text);
            }
        }
    }
}

/// The signals of `message`; a note about a Return-Path that needed repair goes into `notes`.
fn signals(message: &mail_parser::Message<'_>, notes: &mut Vec<String>) -> Signals {
    let mut signals = Signals::default();
    let value = |raw: &str| raw.trim().to_ascii_lowercase();
    for (name, raw) in message.headers_raw() {
        match name.to_ascii_lowercase().as_str() {
            "auto-submitted" => {
                // `auto-replied; owner-email="…"`: the keyword is what counts.
                let keyword = value(raw)
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                signals.auto_submitted = Some(keyword);
            }
            "precedence" => signals.precedence = Some(value(raw)),
            "x-auto-response-suppress" => signals.auto_response_suppress = Some(value(raw)),
            lower if lower.starts_with("list-") || lower.starts_with("x-mailman-") => {
                signals
                    .list_evidence
                    .get_or_insert_with(|| format!("{name} header"));
            }
            "sender" => {
                if let Some(address) = robot_address(raw) {
                    signals
                        .list_evidence
                        .get_or_insert(format!("Sender: {address}"));
                }
            }
            // The first Return-Path is the one added at final delivery.
            "return-path" if signals.return_path.is_none() => {
                let (path, note) = address::return_path(raw);
                notes.extend(note);
                if let Some(address) = robot_address(&path) {
                    signals
                        .list_evidence
                        .get_or_insert(format!("Return-Path: {address}"));
                }
                signals.null_return_path = path.is_empty();
                signals.return_path = Some(path);
            }
            "x-loop" => signals.x_loop.push(strip_brackets(&value(raw))),
            "authentication-results" => signals
                .authentication_results
                .push(super::authres::parse_header(raw)),
            "x-ms-exchange-organization-scl" if signals.exchange_scl.is_none() => {
                signals.exchange_scl = raw.trim().parse().ok();
            }
            _ => {}
        }
    }
    // (A Mailman digest, From its -request address with no List-* fields, carries X-Mailman-*; a
    // From alone is not taken as evidence: `purchase-request@` may be a person's team.)
    signals.list = signals.list_evidence.is_some();
    if let Some(ct) = message.root_part().content_type()
        && ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        signals.report_type = ct.attribute("report-type").map(|t| t.to_ascii_lowercase());
        signals.original_message_id = original_message_id(message);
        if signals.report_type.as_deref() == Some("delivery-status") {
            signals.delivery_report = super::report::delivery_report(message);
            // A DSN that returns nothing of the message (or headers without a Message-ID) is
            // about the ENVID we gave, our Message-ID: one path from here on.
            if signals.original_message_id.is_none() {
                signals.original_message_id = signals
                    .delivery_report
                    .as_ref()
                    .and_then(|r| r.original_envelope_id.as_deref())
                    .map(strip_brackets);
            }
        }
    }
    signals
}

/// The address in `text` when it is a list robot's: `owner-…` (LISTSERV, Majordomo), `…-owner`,
/// `…-request`, `…-bounces` (Mailman, also with a VERP `+…` suffix).
fn robot_address(text: &str) -> Option<String> {
    let address = text
        .rsplit('<')
        .next()
        .unwrap_or(text)
        .trim()
        .trim_end_matches('>')
        .trim()
        .to_ascii_lowercase();
    let (local, _domain) = address.split_once('@')?;
    let local = local.split('+').next().unwrap_or(local);
    let robot = local.starts_with("owner-")
        || ["-owner", "-request", "-bounces"]
            .iter()
            .any(|suffix| local.ends_with(suffix));
    robot.then_some(address)
}

/// The Message-ID of the message a report is about: from its attached copy (`message/rfc822`) or
/// attached headers (`text/rfc822-headers`), else the `Original-Message-ID` field of an MDN.
fn original_message_id(message: &mail_parser::Message<'_>) -> Option<String> {
    for part in message.parts.iter().skip(1) {
        match &part.body {
            PartType::Message(nested) => {
                if let Some(id) = nested.message_id() {
                    return Some(strip_brackets(id));
                }
            }
            PartType::Text(_) | PartType::Binary(_) | PartType::InlineBinary(_) => {
                let subtype = part
                    .content_type()
                    .and_then(|ct| ct.subtype())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let text = String::from_utf8_lossy(part.contents());
                if subtype == "rfc822-headers"
                    && let Some(headers) = MessageParser::default().parse(text.as_bytes())
                    && let Some(id) = headers.message_id()
                {
                    return Some(strip_brackets(id));
                }
                if subtype == "disposition-notification" {
                    for line in text.lines() {
                        if let Some((name, id)) = line.split_once(':')
                            && name.trim().eq_ignore_ascii_case("original-message-id")
                        {
                            return Some(strip_brackets(id));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Lower-case addresses of a header field, comma-separated.
fn address_list(address: Option<&Address<'_>>) -> String {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr.address())
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Real-world mail made readable (a missing blank line, an undeclared 8-bit header) before it is
/// parsed; the digest and size stay those of the raw bytes.
fn readable(raw: &[u8]) -> Cow<'_, [u8]> {
    let recovered = super::repair::recover_missing_blank_line(raw);
    let readable = recovered.as_deref().unwrap_or(raw);
    match super::repair::transcode_8bit_header(readable) {
        Some(transcoded) => Cow::Owned(transcoded),
        None => match recovered {
            Some(recovered) => Cow::Owned(recovered),
            None => Cow::Borrowed(raw),
        },
    }
}

/// The [`FingerprintVersion::V1`] fingerprint of `raw`, to compare with a row stored under that
/// version; `None` where [`parse`] refuses the message.
pub fn fingerprint_v1(raw: &[u8]) -> Option<String> {
    let input = readable(raw);
    let message = MessageParser::default().parse(&input[..])?;
    let header_id = message
        .message_id()
        .map(strip_brackets)
        .filter(|id| !id.is_empty());
    Some(fingerprint_v1_of(&message, header_id.as_deref(), &input))
}

/// [`FingerprintVersion::V1`]: kept as it was, to compare with rows stored under it. `input` is
/// what `message` was parsed from.
fn fingerprint_v1_of(
    message: &mail_parser::Message<'_>,
    message_id: Option<&str>,
    input: &[u8],
) -> String {
    let body = &input[(message.root_part().offset_body as usize).min(input.len())..];
    let identifying = format!(
        "message-id:{}\nfrom:{}\nto:{}\ncc:{}\nsubject:{}\ndate:{}\n\n",
        message_id.unwrap_or(""),
        address_list(message.from()),
        address_list(message.to()),
        address_list(message.cc()),
        message.subject().unwrap_or(""),
        message.date().map(|d| d.to_timestamp()).unwrap_or(0),
    );
    let mut hasher = Sha256::new();
    hasher.update(identifying.as_bytes());
    hasher.update(body);
    hex(hasher.finalize())
}

/// [`FingerprintVersion::V2`]: see there. Every item is written with its length, so no two
/// different messages hash the same input.
/// `part_digests`: the SHA-256 (hex) of binary parts by part index, where already computed.
fn fingerprint_v2(
    message: &mail_parser::Message<'_>,
    message_id: Option<&str>,
    part_digests: &HashMap<usize, String>,
) -> String {
    let mut hasher = Sha256::new();
    fingerprint_v2_into(&mut hasher, message, message_id, part_digests);
    hex(hasher.finalize())
}

fn fingerprint_v2_into(
    hasher: &mut Sha256,
    message: &mail_parser::Message<'_>,
    message_id: Option<&str>,
    part_digests: &HashMap<usize, String>,
) {
    let mut item = |label: &str, value: &[u8]| {
        hasher.update(format!("{label}:{}:", value.len()).as_bytes());
        hasher.update(value);
        hasher.update(b"\n");
    };
    // Decoded (RFC 2047) and with blanks collapsed: re-folding a header changes neither.
    let collapse = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    item("message-id", message_id.unwrap_or("").as_bytes());
    item("from", address_list(message.from()).as_bytes());
    item("to", address_list(message.to()).as_bytes());
    item("cc", address_list(message.cc()).as_bytes());
    item(
        "date",
        message
            .date()
            .map(|d| d.to_timestamp())
            .unwrap_or(0)
            .to_string()
            .as_bytes(),
    );
    item(
        "subject",
        collapse(message.subject().unwrap_or("")).as_bytes(),
    );
    item(
        "in-reply-to",
        id_list(message.in_reply_to()).join(" ").as_bytes(),
    );
    // The leaves of the MIME tree in order; the multipart containers (and so their boundaries)
    // are left out, and every body is taken decoded.
    for (index, part) in message.parts.iter().enumerate() {
        let name = part.attachment_name().map(collapse).unwrap_or_default();
        match &part.body {
            PartType::Multipart(_) => {}
            PartType::Text(text) => {
                item("text", normalized_text(text).as_bytes());
                item("name", name.as_bytes());
            }
            PartType::Html(html) => {
                item("html", normalized_text(html).as_bytes());
                item("name", name.as_bytes());
            }
            PartType::Binary(content) | PartType::InlineBinary(content) => {
                match part_digests.get(&index) {
                    Some(digest) => item("part", digest.as_bytes()),
                    None => item("part", sha256_hex(content).as_bytes()),
                }
                item("name", name.as_bytes());
            }
            // An attached message may be re-rendered as well: it counts by its own fingerprint.
            PartType::Message(nested) => {
                let nested_id = nested.message_id().map(strip_brackets);
                item(
                    "message",
                    fingerprint_v2(nested, nested_id.as_deref(), &HashMap::new()).as_bytes(),
                );
                item("name", name.as_bytes());
            }
        }
    }
}

/// Text with `\n` line endings, without trailing blanks on each line or blank lines at the end:
/// what re-wrapped quoted-printable, another transfer encoding or CRLF conversion leave as it was.
fn normalized_text(text: &str) -> String {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.trim_end_matches([' ', '\t', '\r']))
        .collect();
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

/// A filename safe to show and to write: the last path component only, no control characters and
/// no bidirectional-text controls (`invoice\u{202E}fdp.exe` would show as `invoiceexe.pdf`), no
/// leading dots or surrounding blanks, a Windows reserved device name (`CON`, `NUL`, `COM1`,
/// `LPT1.txt`, …) prefixed with `_`, at most 200 characters (the extension kept).
pub fn sanitize_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return None;
    }
    let cleaned = if is_windows_reserved(cleaned) {
        format!("_{cleaned}")
    } else {
        cleaned.to_string()
    };
    let cleaned = cleaned.as_str();
    const MAX: usize = 200;
    if cleaned.chars().count() <= MAX {
        return Some(cleaned.to_string());
    }
    let (stem, extension) = match cleaned.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.chars().count() <= 16 => {
            (stem, format!(".{ext}"))
        }
        _ => (cleaned, String::new()),
    };
    let keep = MAX - extension.chars().count();
    Some(stem.chars().take(keep).collect::<String>() + &extension)
}

/// The Unicode bidirectional formatting characters (UAX #9: embeddings, overrides, isolates and
/// the directional marks), which let a name show in another order than it is.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// A name Windows takes for a device whatever its extension: `CON`, `PRN`, `AUX`, `NUL`,
/// `COM0`–`COM9`, `LPT0`–`LPT9` (and their superscript-digit forms), `CONIN$`, `CONOUT$`, in any
/// case, also with trailing dots or blanks before the extension.
fn is_windows_reserved(name: &str) -> bool {
    let stem = name
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end()
        .to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        other => {
            let device = other
                .strip_prefix("COM")
                .or_else(|| other.strip_prefix("LPT"));
            device.is_some_and(|digit| {
                let mut chars = digit.chars();
                matches!(
                    (chars.next(), chars.next()),
                    (Some('0'..='9' | '¹' | '²' | '³'), None)
                )
            })
        }
    }
}

pub(super) fn strip_brackets(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

fn join_parts<'a>(parts: impl Iterator<Item = &'a str>) -> Option<String> {
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("\n"))
    }
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![strip_brackets(id)],
        HeaderValue::TextList(ids) => ids.iter().map(|id| strip_brackets(id)).collect(),
        _ => Vec::new(),
    }
}
