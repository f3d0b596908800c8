//! Data-driven tests over the `.eml` fixtures in `tests/fixtures/`.

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// What a fixture must parse into; `None` fields are not checked.
#[derive(Default)]
struct Expected<'a> {
    message_id: &'a str,
    subject: &'a str,
    from: Option<(&'a str, Option<&'a str>)>,
    to: &'a [&'a str],
    cc: &'a [&'a str],
    text_contains: Option<&'a str>,
    html_contains: Option<&'a str>,
    attachments: &'a [(&'a str, &'a str)],
    in_reply_to: &'a [&'a str],
    references: &'a [&'a str],
}

fn check(name: &str, expected: Expected<'_>) {
    let mail = parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(mail.message_id, expected.message_id, "{name}: message id");
    assert_eq!(mail.subject, expected.subject, "{name}: subject");
    if let Some((address, display)) = expected.from {
        let from = mail.from.as_ref().expect("from");
        assert_eq!(from.address, address, "{name}: from address");
        assert_eq!(from.name.as_deref(), display, "{name}: from name");
    }
    let to: Vec<&str> = mail.to.iter().map(|p| p.address.as_str()).collect();
    assert_eq!(to, expected.to, "{name}: to");
    let cc: Vec<&str> = mail.cc.iter().map(|p| p.address.as_str()).collect();
    assert_eq!(cc, expected.cc, "{name}: cc");
    match expected.text_contains {
        Some(text) => assert!(
            mail.text_body.as_deref().unwrap_or("").contains(text),
            "{name}: text body {:?}",
            mail.text_body
        ),
        None => assert_eq!(mail.text_body, None, "{name}: no text body expected"),
    }
    match expected.html_contains {
        Some(html) => assert!(
            mail.html_body.as_deref().unwrap_or("").contains(html),
            "{name}: html body {:?}",
            mail.html_body
        ),
        None => assert_eq!(mail.html_body, None, "{name}: no html body expected"),
    }
    let attachments: Vec<(&str, &str)> = mail
        .attachments
        .iter()
        .map(|a| (a.filename.as_deref().unwrap_or(""), a.content_type.as_str()))
        .collect();
    assert_eq!(attachments, expected.attachments, "{name}: attachments");
    assert_eq!(
        mail.in_reply_to, expected.in_reply_to,
        "{name}: in-reply-to"
    );
    assert_eq!(mail.references, expected.references, "{name}: references");
    assert!(mail.headers.contains("Subject:"), "{name}: headers kept");
    assert_eq!(mail.size, fixture(name).len() as u64);
}

#[test]
fn plain_text_with_cc() {
    check(
        "plain.eml",
        Expected {
            message_id: "plain-1@customer.test",
            subject: "Printer on floor 3 is jammed",
            from: Some(("alice@customer.test", Some("Alice Example"))),
            to: &["support@helpdesk.test"],
            cc: &["bob@customer.test", "carol@customer.test"],
            text_contains: Some("the printer on floor 3 is jammed again."),
            ..Expected::default()
        },
    );
}

#[test]
fn latin1_body_and_encoded_words() {
    check(
        "latin1.eml",
        Expected {
            message_id: "latin1-1@customer.test",
            subject: "Drucker fällt aus",
            from: Some(("joerg@customer.test", Some("Jörg Müller"))),
            to: &["support@helpdesk.test"],
            text_contains: Some("Der Drucker fällt ständig aus. Grüße"),
            ..Expected::default()
        },
    );
}

#[test]
fn html_only_mail_has_no_invented_text_body() {
    check(
        "html_only.eml",
        Expected {
            message_id: "html-1@customer.test",
            subject: "HTML only",
            from: Some(("dana@customer.test", None)),
            to: &["support@helpdesk.test"],
            html_contains: Some("<b>VPN</b>"),
            ..Expected::default()
        },
    );
}

#[test]
fn alternative_bodies_attachment_and_threading_headers() {
    check(
        "attachment.eml",
        Expected {
            message_id: "attach-1@customer.test",
            subject: "Re: Screenshot of the error",
            from: Some(("erik@customer.test", Some("Erik"))),
            to: &["support@helpdesk.test"],
            text_contains: Some("See the attached screenshot."),
            html_contains: Some("<p>See the attached screenshot.</p>"),
            attachments: &[("error.png", "image/png")],
            in_reply_to: &["earlier-1@helpdesk.test"],
            references: &["root-1@customer.test", "earlier-1@helpdesk.test"],
            ..Expected::default()
        },
    );
    let mail = parse(&fixture("attachment.eml")).unwrap();
    let png = &mail.attachments[0];
    assert!(png.content.starts_with(b"\x89PNG"), "decoded from base64");
    assert_eq!(png.sha256, sha256_hex(&png.content));
}

#[test]
fn missing_message_id_gets_a_deterministic_key() {
    let raw = fixture("no_message_id.eml");
    let first = parse(&raw).unwrap();
    let second = parse(&raw).unwrap();
    assert_eq!(first.message_id_source, MessageIdSource::ContentHash);
    assert_eq!(first.message_id, second.message_id);
    assert!(first.message_id.starts_with(&first.fingerprint));
}

#[test]
fn a_redelivered_copy_has_the_same_fingerprint_and_an_edited_one_does_not() {
    let raw = fixture("plain.eml");
    let original = parse(&raw).unwrap();
    // Another delivery adds trace fields at the top.
    let mut redelivered = b"Return-Path: <alice@customer.test>\r\nDelivered-To: other@helpdesk.test\r\nReceived: from mx by imap; Tue, 24 Nov 2026 10:00:00 +0000\r\n".to_vec();
    redelivered.extend_from_slice(&raw);
    let copy = parse(&redelivered).unwrap();
    assert_ne!(original.content_sha256, copy.content_sha256);
    assert_eq!(original.fingerprint, copy.fingerprint);

    let edited = String::from_utf8(raw)
        .unwrap()
        .replace("jammed again", "on fire");
    assert_ne!(
        parse(edited.as_bytes()).unwrap().fingerprint,
        original.fingerprint
    );
}

#[test]
fn empty_input_is_quarantined_not_an_error() {
    let decision = decide(parse(b"\r\n\r\n"), &Facts::default());
    assert!(matches!(
        decision,
        Decision::Quarantine(QuarantineReason::Unparseable(ParseFailure::Empty))
    ));
}

#[test]
fn same_message_again_is_a_duplicate_and_different_content_a_conflict() {
    let mail = parse(&fixture("plain.eml")).unwrap();
    let same = Facts {
        same_message_id: Some(KnownMessage {
            ticket_id: 7,
            fingerprint: mail.fingerprint.clone(),
        }),
    };
    assert!(matches!(
        decide(Ok(mail.clone()), &same),
        Decision::Duplicate { ticket_id: 7 }
    ));
    let different = Facts {
        same_message_id: Some(KnownMessage {
            ticket_id: 7,
            fingerprint: "0".repeat(64),
        }),
    };
    assert!(matches!(
        decide(Ok(mail.clone()), &different),
        Decision::Quarantine(QuarantineReason::MessageIdConflict { ticket_id: 7 })
    ));
    assert!(matches!(
        decide(Ok(mail), &Facts::default()),
        Decision::NewTicket(_)
    ));
}

#[test]
fn ticket_references_are_zero_padded() {
    assert_eq!(ticket_reference(42), "TCK-000042");
    assert_eq!(ticket_reference(1_234_567), "TCK-1234567");
}
