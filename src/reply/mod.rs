//! Acknowledgements: whether a ticket gets one and what it says (pure: [`plan_acknowledgement`]),
//! and the sender that takes due rows from the outbox and submits them over SMTP ([`sender`]).
//! Only this module sends mail.
//!
//! The outbox row is written in the same transaction as its ticket, so a committed ticket always
//! has its acknowledgement (or the recorded reason why it has none), and a crash never sends one
//! for a ticket that does not exist.

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
    mailbox.acknowledge.enabled && mailbox.smtp.is_some() && mailbox.mode == Mode::Normal
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
    let subject = format!("[#{reference}] Re: {subject_text}");
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
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn mailbox(extra: &str) -> Mailbox {
        let text = format!(
            r#"
            [identities.app]
            tenant = "t"
            client_id = "c"
            client_secret = "s"

            [[mailboxes]]
            name = "support"
            address = "support@helpdesk.test"
            identity = "app"
            imap = {{ host = "imap.example.test" }}
            smtp = {{ host = "smtp.example.test" }}
            {extra}
            "#
        );
        Config::from_toml_str(&text, std::path::Path::new("."))
            .unwrap()
            .mailboxes
            .remove(0)
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
