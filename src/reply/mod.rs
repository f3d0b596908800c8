//! Acknowledgements: whether a ticket gets one and what it says (pure: [`plan_acknowledgement`]),
//! and the sender that takes due rows from the outbox and submits them over SMTP ([`sender`]).
//! Only this module sends mail.
//!
//! The outbox row is written in the same transaction as its ticket, so a committed ticket always
//! has its acknowledgement (or the recorded reason why it has none), and a crash never sends one
//! for a ticket that does not exist.

pub mod detach;
pub mod graph;
pub mod outgoing;
pub mod refusal;
pub mod sender;
pub mod smtp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Acknowledge, Mailbox, Mode};
use crate::ingest::{self, ParsedMail, normalized_subject};
use crate::store::{AckKind, OutboxDraft};

/// Whether `mailbox` sends acknowledgements (and quarantine notices) at all: they are enabled,
/// it has SMTP, and it is not in shadow mode (which changes nothing and sends nothing).
pub fn sends_acknowledgements(mailbox: &Mailbox) -> bool {
    mailbox.acknowledge.enabled && mailbox.outlet.is_some() && mailbox.mode == Mode::Normal
}

/// Whether `mailbox` sends mail at all (acknowledgements or the helpdesk's): it has SMTP and is
/// not in shadow mode. Such a mailbox has a sender task.
pub fn sends_mail(mailbox: &Mailbox) -> bool {
    mailbox.outlet.is_some() && mailbox.mode == Mode::Normal
}

/// A subject that carries ticket `reference`'s tag, as every reply on a ticket does (an
/// acknowledgement, an agent's answer): `[#TCK-000123] Re: <subject>`.
pub fn tagged_subject(reference: &str, subject_text: &str) -> String {
    format!("[#{reference}] Re: {subject_text}")
}

/// Facts from the store an acknowledgement decision needs.
#[derive(Debug, Clone, Default)]
pub struct AckFacts {
    /// INTERNALDATE of the customer's message (unix ms).
    pub received_ms: Option<i64>,
    /// Mail received before this is not acknowledged (the folder's first sweep, or
    /// `acknowledge.since`).
    pub ack_after_ms: Option<i64>,
    /// Acknowledgements to the same recipient in the last 24 hours.
    pub recipient_acks_today: u32,
    /// When this ticket last got an acknowledgement (follow-ups only).
    pub ticket_last_ack_ms: Option<i64>,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// Where an automatic reply goes, and the header field that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    /// In the form the envelope uses: an IDN domain as its A-label (`xn--…`) when the local part
    /// is ASCII, so that only a UTF-8 local part needs SMTPUTF8 (RFC 6531).
    pub address: String,
    /// `Return-Path`, `Reply-To`, `Sender` or `From`.
    pub field: &'static str,
}

/// Where an automatic reply goes (RFC 3834 §4): the envelope sender from Return-Path; none for
/// the null path; only when the message carries no Return-Path at all, Reply-To, else the
/// Sender of mail that names several From addresses (RFC 5322 §3.6.2: the one who sent it),
/// else From (its first address, the requester).
pub fn reply_address(mail: &ParsedMail) -> Option<ReplyAddress> {
    let (address, field) = match mail.signals.return_path.as_deref() {
        Some("") => return None,
        Some(path) => (path.to_string(), "Return-Path"),
        None => match (&mail.reply_to, &mail.sender, &mail.from) {
            (Some(reply_to), _, _) => (reply_to.address.clone(), "Reply-To"),
            (None, Some(sender), _) if mail.from_addresses.len() > 1 => {
                (sender.address.clone(), "Sender")
            }
            (None, _, Some(from)) => (from.address.clone(), "From"),
            (None, _, None) => return None,
        },
    };
    Some(ReplyAddress {
        address: envelope_form(&address),
        field,
    })
}

/// The key the per-sender ticket limit counts `mail` under (`tickets.sender_key`): the address
/// the receiving server vouches for (where an acknowledgement goes, see
/// [`crate::ingest::authres::vouch`]), lower case; else `unverified:` and the From address, so
/// that mail whose From anyone could have written never uses up the limit of a sender the server
/// vouches for. Vouching is read whenever `acknowledge.authserv_id` is known, also with
/// `require_authentication = false`. `None` without either address.
pub fn sender_limit_key(ack: &Acknowledge, mail: &ParsedMail) -> Option<String> {
    if let Some(authserv_id) = ack.authserv_id.as_deref()
        && let Some(to) = reply_address(mail)
        && ingest::authres::vouch(
            &mail.signals.authentication_results,
            mail.signals.exchange_scl,
            authserv_id,
            &to.address,
        )
        .is_ok()
    {
        return Some(to.address.to_lowercase());
    }
    mail.from
        .as_ref()
        .map(|from| format!("unverified:{}", from.address.to_lowercase()))
}

/// `address` with an IDN domain as its A-label when the local part is ASCII; as it is otherwise
/// (and when the domain is no valid IDN: [`unsendable`] then says why).
fn envelope_form(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if local.is_ascii() && !domain.is_ascii() => {
            match idna::domain_to_ascii(domain) {
                Ok(ascii) => format!("{local}@{ascii}"),
                Err(_) => address.to_string(),
            }
        }
        _ => address.to_string(),
    }
}

/// Why no mail can be sent to `address`, decided before an acknowledgement is queued with the
/// checks SMTP and the sender make (the sender builds each message with lettre's `Address`,
/// which refuses what is checked here), so that a bad address is a recorded reason on the row,
/// not a failure at send time. `None`: it can be sent to.
pub fn unsendable(address: &str) -> Option<String> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Some("it has no @domain".into());
    };
    if local.len() > 64 {
        return Some(format!(
            "its local part is {} bytes long, more than the 64 SMTP allows (RFC 5321 §4.5.3.1.1)",
            local.len()
        ));
    }
    if domain.len() > 255 {
        return Some(format!(
            "its domain is {} bytes long, more than the 255 SMTP allows (RFC 5321 §4.5.3.1.2)",
            domain.len()
        ));
    }
    match address.parse::<lettre::Address>() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "the SMTP library mailintake sends with refuses it ({e})"
        )),
    }
}

/// Why [`reply_address`] found nobody to answer.
fn no_reply_address_reason(mail: &ParsedMail) -> &'static str {
    match mail.signals.return_path.as_deref() {
        Some("") => "no address to answer: the envelope sender is null (Return-Path: <>)",
        _ => "no address to answer: the message has no Return-Path, Reply-To or From",
    }
}

/// `pattern` is an address, `*@domain` or `local@*`; case-insensitive.
fn denied(address: &str, pattern: &str) -> bool {
    glob_match(
        pattern.to_ascii_lowercase().as_bytes(),
        address.to_ascii_lowercase().as_bytes(),
    )
}

/// `pattern` with `*` standing for any run of characters (`owner-*@*`, `*-request@*`), matched
/// against all of `text`.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_match(rest, &text[skip..])),
        Some((first, rest)) => text
            .split_first()
            .is_some_and(|(t, text_rest)| t == first && glob_match(rest, text_rest)),
    }
}

/// Fills `{ticket}`, `{subject}`, `{requester_name}`, `{mailbox}` (checked at start-up);
/// `escape` is applied to every value (HTML templates).
pub fn render(template: &str, values: &[(&str, &str)], escape: fn(&str) -> String) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), &escape(value));
    }
    out
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A Message-ID unique to this process and moment, on the sender's domain. It begins with
/// [`ingest::OUR_MESSAGE_ID_PREFIX`]: with our domain, that is how mail we sent is told when it
/// comes back (a loop) and how a bounce finds its outbox row.
fn new_message_id(reference: &str, from: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let domain = from.rsplit('@').next().unwrap_or("mailintake.invalid");
    format!(
        "{}{}.{nanos:x}.{}.{n}@{domain}",
        ingest::OUR_MESSAGE_ID_PREFIX,
        reference.to_ascii_lowercase(),
        std::process::id()
    )
}

/// The short notice to the sender of a message that was set aside because it is too large: it
/// says what happened and that the message is kept. Rate-limited like acknowledgements (per
/// recipient per day), never sent to automatic mail, and only when `quarantine_notice` is on.
pub fn plan_quarantine_notice(
    mailbox: &Mailbox,
    own_addresses: &[String],
    mail: &ParsedMail,
    size: u64,
    limit: u64,
    facts: &AckFacts,
) -> OutboxDraft {
    let ack = &mailbox.acknowledge;
    let from = ack.from.clone().unwrap_or_else(|| mailbox.address.clone());
    let recipient = reply_address(mail);
    let to = recipient.as_ref().map(|r| r.address.clone());
    let subject_text = normalized_subject(&mail.subject);
    let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1_000_000.0);
    let body_text = format!(
        "Hello,\n\nyour message \"{subject_text}\" to {mailbox} is {size}, more than the {limit} we accept \
         automatically, so it did not open a ticket yet. It is kept, and our team can take it in \
         by hand; to be quicker, send the request again without large attachments (links to shared \
         files are fine).\n\nThis is an automatic message from {mailbox}.\n",
        mailbox = mailbox.address,
        size = mb(size),
        limit = mb(limit),
    );
    let suppressed = if !ack.quarantine_notice {
        Some("quarantine notices are off (acknowledge.quarantine_notice = false)".to_string())
    } else {
        suppression(
            ack,
            own_addresses,
            mail,
            recipient.as_ref(),
            AckKind::QuarantineNotice,
            facts,
        )
    };
    OutboxDraft {
        kind: AckKind::QuarantineNotice,
        message_id: new_message_id("quarantine", &from),
        from,
        to,
        subject: format!("Not received automatically: {subject_text}"),
        in_reply_to: Some(mail.sent_message_id().to_string()),
        references: Some(format!("<{}>", mail.sent_message_id())),
        body_text,
        body_html: None,
        suppressed,
    }
}

/// Decides whether `mail`, which opened (or followed up on) ticket `reference`, is acknowledged,
/// and composes the acknowledgement. Every decision yields a row: a message to send, or the reason
/// it is not sent.
pub fn plan_acknowledgement(
    mailbox: &Mailbox,
    own_addresses: &[String],
    mail: &ParsedMail,
    reference: &str,
    kind: AckKind,
    facts: &AckFacts,
) -> OutboxDraft {
    let ack: &Acknowledge = &mailbox.acknowledge;
    let from = ack.from.clone().unwrap_or_else(|| mailbox.address.clone());
    let recipient = reply_address(mail);
    let to = recipient.as_ref().map(|r| r.address.clone());
    let subject_text = normalized_subject(&mail.subject);
    let subject = tagged_subject(reference, &subject_text);
    let requester_name = mail
        .from
        .as_ref()
        .and_then(|p| p.name.clone())
        .unwrap_or_else(|| "customer".to_string());
    let values = [
        ("ticket", reference),
        ("subject", subject_text.as_str()),
        ("requester_name", requester_name.as_str()),
        ("mailbox", mailbox.address.as_str()),
    ];
    let mut references: Vec<String> = mail.references.iter().map(|id| format!("<{id}>")).collect();
    references.push(format!("<{}>", mail.sent_message_id()));

    let suppressed = suppression(ack, own_addresses, mail, recipient.as_ref(), kind, facts);
    OutboxDraft {
        kind,
        message_id: new_message_id(reference, &from),
        from,
        to,
        subject,
        in_reply_to: Some(mail.sent_message_id().to_string()),
        references: Some(references.join(" ")),
        body_text: render(&ack.template_text, &values, str::to_string),
        body_html: ack
            .template_html
            .as_ref()
            .map(|t| render(t, &values, html_escape)),
        suppressed,
    }
}

fn suppression(
    ack: &Acknowledge,
    own_addresses: &[String],
    mail: &ParsedMail,
    recipient: Option<&ReplyAddress>,
    kind: AckKind,
    facts: &AckFacts,
) -> Option<String> {
    if !ack.enabled {
        return Some("acknowledgements are off for this mailbox".into());
    }
    if kind == AckKind::FollowUp && !ack.follow_ups {
        return Some("follow-ups are not acknowledged (acknowledge.follow_ups = false)".into());
    }
    let Some(ReplyAddress { address: to, field }) = recipient else {
        return Some(no_reply_address_reason(mail).into());
    };
    let to = to.as_str();
    if let Some(problem) = unsendable(to) {
        return Some(format!(
            "no acknowledgement can be sent to `{to}` (the {field} address): {problem}"
        ));
    }
    if own_addresses.contains(&to.to_ascii_lowercase()) {
        return Some(format!("{to} is one of our own mailboxes"));
    }
    if mail.signals.suppresses_auto_replies() {
        return Some(format!(
            "the sender asks for no automatic replies (X-Auto-Response-Suppress: {})",
            mail.signals.auto_response_suppress.as_deref().unwrap_or("")
        ));
    }
    if let Some(pattern) = ack.deny.iter().find(|p| denied(to, p)) {
        return Some(format!("{to} matches the deny list entry {pattern}"));
    }
    if let (Some(received), Some(after)) = (facts.received_ms, facts.ack_after_ms)
        && received < after
    {
        return Some(
            "received before the mailbox was first connected (imported mail is not acknowledged)"
                .into(),
        );
    }
    if ack.max_per_recipient_per_day > 0
        && facts.recipient_acks_today >= ack.max_per_recipient_per_day
    {
        return Some(format!(
            "{to} already got {} acknowledgements today (acknowledge.max_per_recipient_per_day)",
            facts.recipient_acks_today
        ));
    }
    if kind == AckKind::FollowUp
        && let Some(last) = facts.ticket_last_ack_ms
        && facts.now_ms - last < ack.follow_up_interval.as_millis() as i64
    {
        return Some(
            "this ticket was acknowledged recently (acknowledge.follow_up_interval)".into(),
        );
    }
    unverified_recipient(ack, mail, to, field)
}

/// How many of a mailbox's latest acknowledgement decisions [`authentication_notice`] reads.
pub const NOTICE_ROWS: u32 = 20;

/// How the outbox reasons of [`unverified_recipient`] begin.
const NOT_VOUCHED_PREFIX: &str = "the receiving server does not vouch for ";
/// What they say when the message carried no stamp of the server's at all.
const NO_STAMP_WORDS: &str = ": the message carries no Authentication-Results from `";

/// The notice `check`, the status page and `/readyz` give for a mailbox whose acknowledgements
/// the receiving server's stamp suppresses wholesale, instead of going silent: no
/// `authserv_id` known, or none of its recent messages carries the server's stamp (so it stamps
/// none, or with another id). `reasons` are [`crate::store::Store::latest_ack_reasons`].
pub fn authentication_notice(mailbox: &Mailbox, reasons: &[Option<String>]) -> Option<String> {
    let ack = &mailbox.acknowledge;
    if !sends_acknowledgements(mailbox) || !ack.require_authentication {
        return None;
    }
    let Some(authserv_id) = ack.authserv_id.as_deref() else {
        return Some(
            "acknowledgements suppressed: acknowledge.authserv_id is not set (the id the receiving \
             server writes in its Authentication-Results), so nothing vouches for any sender"
                .into(),
        );
    };
    // The rows that reached the check: sent or queued, or suppressed by it.
    let checked: Vec<&Option<String>> = reasons
        .iter()
        .filter(|r| {
            r.as_deref()
                .is_none_or(|r| r.starts_with(NOT_VOUCHED_PREFIX))
        })
        .collect();
    let unstamped = checked
        .iter()
        .filter(|r| r.as_deref().is_some_and(|r| r.contains(NO_STAMP_WORDS)))
        .count();
    (!checked.is_empty() && unstamped == checked.len()).then(|| {
        format!(
            "acknowledgements suppressed: the server stamps no Authentication-Results \
             (none from `{authserv_id}` on the last {unstamped} message(s); check \
             acknowledge.authserv_id)"
        )
    })
}

/// Why the receiving server does not vouch for `to` (the `field` address), when the mailbox
/// acknowledges only addresses it vouches for (`acknowledge.require_authentication`): an
/// acknowledgement repeats the sender's subject and name from our domain, so to an address
/// anyone can write into Return-Path it would be spam we send on their behalf.
fn unverified_recipient(
    ack: &Acknowledge,
    mail: &ParsedMail,
    to: &str,
    field: &str,
) -> Option<String> {
    use crate::ingest::authres::{self, NotVouched};
    if !ack.require_authentication {
        return None;
    }
    let Some(authserv_id) = ack.authserv_id.as_deref() else {
        return Some(format!(
            "nothing vouches for {to}: acknowledge.authserv_id is not set (the id the receiving \
             server writes in its Authentication-Results; or require_authentication = false)"
        ));
    };
    let signals = &mail.signals;
    let why = match authres::vouch(
        &signals.authentication_results,
        signals.exchange_scl,
        authserv_id,
        to,
    ) {
        Ok(_) => return None,
        Err(NotVouched::NoStamp) => format!(
            "the message carries no Authentication-Results from `{authserv_id}` \
             (acknowledge.authserv_id)"
        ),
        // (The reason's words are NOT_VOUCHED_PREFIX … NO_STAMP_WORDS, which the notice reads.)
        Err(NotVouched::NoExchangeScl) => {
            "Exchange's stamp has no X-MS-Exchange-Organization-SCL beside it".to_string()
        }
        Err(NotVouched::Spam { scl }) => {
            format!("Exchange rates it as spam (X-MS-Exchange-Organization-SCL: {scl})")
        }
        Err(NotVouched::Unverified { said }) => {
            format!("no SPF or aligned DKIM pass for its domain (`{authserv_id}` says: {said})")
        }
    };
    Some(format!(
        "{NOT_VOUCHED_PREFIX}{to} (the {field} address): {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn mailbox(extra: &str) -> Mailbox {
        let mut mailbox = crate::config::mailbox_for_tests(extra);
        // The receiving server's stamp has tests of its own below.
        mailbox.acknowledge.require_authentication = false;
        mailbox
    }

    fn mail(return_path: Option<&str>) -> ParsedMail {
        let mut raw = String::new();
        if let Some(path) = return_path {
            raw.push_str(&format!("Return-Path: <{path}>\r\n"));
        }
        raw.push_str(
            "From: Alice Example <alice@customer.test>\r\nTo: support@helpdesk.test\r\n\
             Subject: Re: AW: Printer jammed\r\nMessage-ID: <m1@customer.test>\r\n\
             References: <r0@customer.test>\r\n\r\nHello\r\n",
        );
        crate::ingest::parse(raw.as_bytes()).unwrap()
    }

    fn own() -> Vec<String> {
        vec!["support@helpdesk.test".into()]
    }

    #[test]
    fn a_new_ticket_is_acknowledged_to_the_envelope_sender() {
        let draft = plan_acknowledgement(
            &mailbox(""),
            &own(),
            &mail(Some("bounces+alice@customer.test")),
            "TCK-000007",
            AckKind::NewTicket,
            &AckFacts::default(),
        );
        assert_eq!(draft.suppressed, None);
        assert_eq!(draft.to.as_deref(), Some("bounces+alice@customer.test"));
        assert_eq!(draft.from, "support@helpdesk.test");
        assert_eq!(draft.subject, "[#TCK-000007] Re: Printer jammed");
        assert_eq!(draft.in_reply_to.as_deref(), Some("m1@customer.test"));
        assert_eq!(
            draft.references.as_deref(),
            Some("<r0@customer.test> <m1@customer.test>")
        );
        assert!(
            draft.body_text.contains("Hello Alice Example"),
            "{}",
            draft.body_text
        );
        assert!(draft.body_text.contains("TCK-000007"));
        assert!(draft.message_id.ends_with("@helpdesk.test"));
    }

    #[test]
    fn every_reason_not_to_send_is_recorded() {
        let mb = mailbox("acknowledge = { deny = [\"*@customer.test\"] }");
        let reason = |mb: &Mailbox, mail: &ParsedMail, kind, facts: &AckFacts| {
            plan_acknowledgement(mb, &own(), mail, "TCK-1", kind, facts).suppressed
        };
        assert!(
            reason(&mb, &mail(None), AckKind::NewTicket, &AckFacts::default())
                .unwrap()
                .contains("deny list")
        );
        let mb = mailbox("");
        assert!(
            reason(
                &mb,
                &mail(Some("")),
                AckKind::NewTicket,
                &AckFacts::default()
            )
            .unwrap()
            .contains("null")
        );
        assert!(
            reason(
                &mb,
                &mail(Some("support@helpdesk.test")),
                AckKind::NewTicket,
                &AckFacts::default()
            )
            .unwrap()
            .contains("own mailboxes")
        );
        let imported = AckFacts {
            received_ms: Some(1_000),
            ack_after_ms: Some(2_000),
            ..AckFacts::default()
        };
        assert!(
            reason(&mb, &mail(None), AckKind::NewTicket, &imported)
                .unwrap()
                .contains("first connected")
        );
        let busy = AckFacts {
            recipient_acks_today: 5,
            ..AckFacts::default()
        };
        assert!(
            reason(&mb, &mail(None), AckKind::NewTicket, &busy)
                .unwrap()
                .contains("today")
        );
        assert!(
            reason(&mb, &mail(None), AckKind::FollowUp, &AckFacts::default())
                .unwrap()
                .contains("follow-ups")
        );
        let off = mailbox("acknowledge = { enabled = false }");
        assert!(
            reason(&off, &mail(None), AckKind::NewTicket, &AckFacts::default())
                .unwrap()
                .contains("off")
        );
    }

    #[test]
    fn our_message_ids_are_recognised_as_ours_and_only_on_our_domains() {
        let policy = crate::ingest::Policy {
            own_addresses: vec!["support@helpdesk.test".into(), "ack@notify.test".into()],
            ..crate::ingest::Policy::default()
        };
        for (from, ours) in [
            ("support@helpdesk.test", true),
            ("Ack@Notify.test", true),
            ("support@elsewhere.test", false),
        ] {
            let id = new_message_id("TCK-000001", from);
            assert_eq!(policy.is_our_message_id(&id), ours, "{id}");
        }
        assert!(!policy.is_our_message_id("CAB1c2@helpdesk.test"));
        assert!(!policy.is_our_message_id("mailintake.x"));
    }

    #[test]
    fn a_sender_asking_for_no_automatic_replies_gets_no_acknowledgement() {
        let plan = |value: &str| {
            let raw = format!(
                "From: Partner Agent <agent@partner.test>\r\nTo: support@helpdesk.test\r\n\
                 Subject: Re: ticket\r\nMessage-ID: <p1@partner.test>\r\n\
                 X-Auto-Response-Suppress: {value}\r\n\r\nDone on our side.\r\n"
            );
            let mail = crate::ingest::parse(raw.as_bytes()).unwrap();
            plan_acknowledgement(
                &mailbox(""),
                &own(),
                &mail,
                "TCK-000007",
                AckKind::NewTicket,
                &AckFacts::default(),
            )
            .suppressed
        };
        for value in ["All", "DR, AutoReply", "autoreply"] {
            assert_eq!(
                plan(value),
                Some(format!(
                    "the sender asks for no automatic replies (X-Auto-Response-Suppress: {})",
                    value.to_ascii_lowercase()
                )),
                "{value}"
            );
        }
        // Out-of-office notices and delivery reports only: an acknowledgement is neither.
        assert_eq!(plan("OOF, DR"), None);
    }

    #[test]
    fn the_address_is_checked_before_the_row_is_queued() {
        let plan = |raw: &str| {
            let mail = crate::ingest::parse(raw.as_bytes()).unwrap();
            plan_acknowledgement(
                &mailbox(""),
                &own(),
                &mail,
                "TCK-000007",
                AckKind::NewTicket,
                &AckFacts::default(),
            )
        };
        let long = "x".repeat(65);
        // (header fields, the row's to_address, the reason's words, or "" when it is sent)
        let to = |address: &str| Some(address.to_string());
        let cases: Vec<(String, Option<String>, &str)> = vec![
            // Repaired From addresses are answered (no Return-Path: From is the recipient).
            ("From: Big Bug bb@bug.com\r\n".into(), to("bb@bug.com"), ""),
            (
                "From: jdoe@machine.  example\r\n".into(),
                to("jdoe@machine.example"),
                "",
            ),
            (
                "From: \"john\"@Example.com\r\n".into(),
                to("john@example.com"),
                "",
            ),
            (
                "From: \"j.doe\"@Example.com\r\n".into(),
                to("j.doe@example.com"),
                "",
            ),
            (
                "From: \"j,doe\"@Example.com\r\n".into(),
                to("\"j,doe\"@example.com"),
                "",
            ),
            (
                "From: \"john doe\"@Example.com\r\n".into(),
                to("\"john doe\"@example.com"),
                "",
            ),
            // An IDN domain goes out as its A-label; a UTF-8 local part stays (SMTPUTF8).
            ("From: a@Bücher.de\r\n".into(), to("a@xn--bcher-kva.de"), ""),
            ("From: jösé@bücher.de\r\n".into(), to("jösé@bücher.de"), ""),
            // Two authors: the Sender sent it and gets the acknowledgement.
            (
                "From: a@x.test, b@y.test\r\nSender: s@x.test\r\n".into(),
                to("s@x.test"),
                "",
            ),
            ("From: a@x.test, b@y.test\r\n".into(), to("a@x.test"), ""),
            // Reply-To before From; Return-Path before both.
            (
                "From: a@x.test\r\nReply-To: Desk <desk@X.test>\r\n".into(),
                to("desk@x.test"),
                "",
            ),
            (
                "Return-Path: <@relay.test:bounce@x.test>\r\nFrom: a@x.test\r\n".into(),
                to("bounce@x.test"),
                "",
            ),
            // What no mail can be sent to is a recorded reason, not a failure at send time.
            (
                format!("Return-Path: <{long}@x.test>\r\nFrom: a@x.test\r\n"),
                Some(format!("{long}@x.test")),
                "local part is 65 bytes long",
            ),
            (
                "Return-Path: <not an address>\r\nFrom: a@x.test\r\n".into(),
                to("not an address"),
                "(the Return-Path address): it has no @domain",
            ),
            (
                "From: a@-bad-.test\r\n".into(),
                to("a@-bad-.test"),
                "SMTP library mailintake sends with refuses it",
            ),
            (
                "From: undisclosed-recipients:;\r\n".into(),
                None,
                "no Return-Path, Reply-To or From",
            ),
        ];
        for (fields, to, reason) in cases {
            let draft = plan(&format!(
                "{fields}Subject: x\r\nMessage-ID: <m@x.test>\r\n\r\nx\r\n"
            ));
            assert_eq!(draft.to, to, "{fields}");
            match draft.suppressed {
                None => assert_eq!(reason, "", "{fields}"),
                Some(why) => {
                    assert!(
                        !reason.is_empty() && why.contains(reason),
                        "{fields}: {why}"
                    )
                }
            }
        }
    }

    #[test]
    fn only_a_recipient_the_receiving_server_vouches_for_is_acknowledged() {
        let plan = |mailbox: &Mailbox, stamps: &str| {
            let raw = format!(
                "Return-Path: <alice@customer.test>\r\n{stamps}From: Alice <alice@customer.test>\r\n\
                 Subject: Buy now\r\nMessage-ID: <v1@customer.test>\r\n\r\nx\r\n"
            );
            let mail = crate::ingest::parse(raw.as_bytes()).unwrap();
            plan_acknowledgement(
                mailbox,
                &own(),
                &mail,
                "TCK-000007",
                AckKind::NewTicket,
                &AckFacts::default(),
            )
            .suppressed
        };
        let mut on = mailbox("acknowledge = { authserv_id = \"MX.helpdesk.test\" }");
        on.acknowledge.require_authentication = true;
        let stamp = "Authentication-Results: mx.helpdesk.test; spf=pass smtp.mailfrom=alice@customer.test\r\n";
        let forged_pass = "Authentication-Results: mx.helpdesk.test;\r\n spf=pass smtp.mailfrom=alice@customer.test\r\n";
        let fail = "Authentication-Results: mx.helpdesk.test; spf=softfail smtp.mailfrom=alice@customer.test\r\n";
        let dkim = "Authentication-Results: mx.helpdesk.test; spf=none; dkim=pass header.d=customer.test\r\n";
        assert_eq!(plan(&on, stamp), None);
        assert_eq!(plan(&on, dkim), None);
        assert_eq!(plan(&on, &format!("{stamp}{fail}")), None);
        // The server's own stamp on top says softfail: a pass below it is forged.
        assert_eq!(
            plan(&on, &format!("{fail}{forged_pass}")).as_deref(),
            Some(
                "the receiving server does not vouch for alice@customer.test (the Return-Path address): \
                 no SPF or aligned DKIM pass for its domain (`mx.helpdesk.test` says: spf=softfail \
                 smtp.mailfrom=alice@customer.test)"
            )
        );
        // A pass from another id vouches for nothing.
        assert!(
            plan(
                &on,
                "Authentication-Results: customer.test; spf=pass smtp.mailfrom=alice@customer.test\r\n"
            )
            .unwrap()
            .contains("carries no Authentication-Results from `mx.helpdesk.test`")
        );
        assert!(
            plan(&on, "")
                .unwrap()
                .contains("carries no Authentication-Results")
        );
        // No id configured on a server that is not Exchange Online: nothing vouches.
        let mut unset = mailbox("");
        unset.acknowledge.require_authentication = true;
        assert_eq!(unset.acknowledge.authserv_id, None);
        assert!(
            plan(&unset, stamp)
                .unwrap()
                .contains("acknowledge.authserv_id is not set")
        );
        // The off switch.
        let off = mailbox("acknowledge = { require_authentication = false }");
        assert_eq!(plan(&off, ""), None);
    }

    #[test]
    fn the_notice_speaks_when_no_recent_message_carries_the_stamp() {
        let mut mb = mailbox("acknowledge = { authserv_id = \"mx.helpdesk.test\" }");
        mb.acknowledge.require_authentication = true;
        let unstamped = Some(
            "the receiving server does not vouch for a@x.test (the Return-Path address): the message \
             carries no Authentication-Results from `mx.helpdesk.test` (acknowledge.authserv_id)"
                .to_string(),
        );
        let other = Some("a@x.test matches the deny list entry *@x.test".to_string());
        let failed = Some(
            "the receiving server does not vouch for a@x.test (the Return-Path address): no SPF or \
             aligned DKIM pass for its domain (`mx.helpdesk.test` says: spf=fail)"
                .to_string(),
        );
        let notice = |reasons: &[Option<String>]| authentication_notice(&mb, reasons);
        assert!(
            notice(&[unstamped.clone(), other.clone(), unstamped.clone()])
                .unwrap()
                .starts_with("acknowledgements suppressed: the server stamps no Authentication-Results (none from `mx.helpdesk.test` on the last 2 message(s)")
        );
        assert_eq!(notice(&[]), None);
        assert_eq!(notice(std::slice::from_ref(&other)), None);
        assert_eq!(notice(&[unstamped.clone(), None]), None);
        assert_eq!(notice(&[unstamped.clone(), failed]), None);
        let mut unset = mb.clone();
        unset.acknowledge.authserv_id = None;
        assert!(
            authentication_notice(&unset, &[])
                .unwrap()
                .contains("acknowledge.authserv_id is not set")
        );
        let mut off = mb.clone();
        off.acknowledge.require_authentication = false;
        assert_eq!(authentication_notice(&off, &[unstamped]), None);
    }

    #[test]
    fn exchange_online_is_the_default_id_for_its_hosts_only() {
        let text = |host: &str| {
            format!(
                r#"
                [identities.app]
                tenant = "t"
                client_id = "c"
                client_secret = "s"

                [[mailboxes]]
                name = "support"
                address = "support@helpdesk.test"
                identity = "app"
                imap = {{ host = "{host}" }}
                smtp = {{ host = "smtp.office365.com" }}
                "#
            )
        };
        let load = |host: &str| {
            Config::from_toml_str(&text(host), std::path::Path::new("."))
                .unwrap()
                .mailboxes
                .remove(0)
                .acknowledge
        };
        let exchange = load("outlook.office365.com");
        assert!(exchange.require_authentication);
        assert_eq!(exchange.authserv_id.as_deref(), Some("exchange-online"));
        assert_eq!(load("imap.example.test").authserv_id, None);
    }

    #[test]
    fn html_templates_escape_values() {
        assert_eq!(
            render("<p>{subject}</p>", &[("subject", "<b>&")], html_escape),
            "<p>&lt;b&gt;&amp;</p>"
        );
    }

    #[test]
    fn deny_patterns() {
        assert!(denied("NoReply@vendor.test", "noreply@*"));
        assert!(denied("x@spam.test", "*@spam.test"));
        assert!(denied("a@b.test", "a@b.test"));
        assert!(!denied("a@b.test", "*@c.test"));
        assert!(denied("noreply-alerts@vendor.test", "noreply-*@*"));
        assert!(denied("helpdesk-l-request@lists.test", "*-request@*"));
        assert!(denied("owner-helpdesk-l@listserv.test", "owner-*@*"));
        assert!(denied(
            "team-bounces+bob=x.test@lists.test",
            "*-bounces+*@*"
        ));
        assert!(!denied("requester@customer.test", "*-request@*"));
    }

    #[test]
    fn list_addresses_are_never_acknowledged_by_default_and_custom_entries_add_to_them() {
        for to in [
            "helpdesk-l-request@lists.test",
            "owner-helpdesk-l@listserv.test",
            "helpdesk-l-owner@lists.test",
            "helpdesk-l-bounces@lists.test",
            "no_reply@vendor.test",
            "noreply-alerts@vendor.test",
        ] {
            let draft = plan_acknowledgement(
                &mailbox("acknowledge = { deny = [\"*@spam.test\"] }"),
                &own(),
                &mail(Some(to)),
                "TCK-000007",
                AckKind::NewTicket,
                &AckFacts::default(),
            );
            assert!(
                draft
                    .suppressed
                    .as_deref()
                    .unwrap_or("")
                    .contains("deny list"),
                "{to}: {:?}",
                draft.suppressed
            );
        }
        // deny_defaults = false keeps only the mailbox's own entries.
        let draft = plan_acknowledgement(
            &mailbox("acknowledge = { deny = [\"*@spam.test\"], deny_defaults = false }"),
            &own(),
            &mail(Some("no_reply@vendor.test")),
            "TCK-000007",
            AckKind::NewTicket,
            &AckFacts::default(),
        );
        assert_eq!(draft.suppressed, None);
    }

    #[test]
    fn a_message_with_nobody_to_answer_says_which_kind_of_nobody() {
        let plan = |mail: &ParsedMail| {
            plan_acknowledgement(
                &mailbox(""),
                &own(),
                mail,
                "TCK-000007",
                AckKind::NewTicket,
                &AckFacts::default(),
            )
            .suppressed
            .unwrap()
        };
        let null = crate::ingest::parse(
            b"Return-Path: <>\r\nFrom: MAILER-DAEMON@relay.test\r\nSubject: x\r\nMessage-ID: <n1@relay.test>\r\n\r\nx\r\n",
        )
        .unwrap();
        assert_eq!(
            plan(&null),
            "no address to answer: the envelope sender is null (Return-Path: <>)"
        );
        let nobody =
            crate::ingest::parse(b"Subject: x\r\nMessage-ID: <n2@relay.test>\r\n\r\nx\r\n")
                .unwrap();
        assert_eq!(
            plan(&nobody),
            "no address to answer: the message has no Return-Path, Reply-To or From"
        );
    }
}
