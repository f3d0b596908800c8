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
    assert!(
        first
            .message_id
            .starts_with(first.fingerprint_v1.as_deref().unwrap())
    );
    assert_eq!(first.fingerprint_v1, fingerprint_v1(&raw));
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

/// `plain.eml` as a server may re-render it: headers re-folded, the body base64-encoded with
/// CRLF line ends, inside a multipart with a new boundary.
fn re_rendered_plain() -> Vec<u8> {
    use base64::Engine;
    let raw = String::from_utf8(fixture("plain.eml")).unwrap();
    let (headers, body) = raw.split_once("\r\n\r\n").unwrap();
    let headers: String = headers
        .lines()
        .filter(|line| !line.to_ascii_lowercase().starts_with("content-"))
        .filter(|line| !line.to_ascii_lowercase().starts_with("mime-version"))
        .map(|line| match line.split_once(": ") {
            Some((name, value)) if name.eq_ignore_ascii_case("subject") => {
                format!("{name}:\r\n {value}\r\n")
            }
            _ => format!("{line}\r\n"),
        })
        .collect();
    // Exchange's base64 of a 7bit body: the text without its last line end.
    let body = body.trim_end();
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
    format!(
        "{headers}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"_000_exchange_\"\r\n\r\n\
         --_000_exchange_\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--_000_exchange_--\r\n"
    )
    .into_bytes()
}

#[test]
fn a_re_rendered_copy_has_the_same_version_2_fingerprint_but_not_version_1() {
    let original = parse(&fixture("plain.eml")).unwrap();
    let re_rendered = parse(&re_rendered_plain()).unwrap();
    assert_eq!(
        re_rendered.text_body.as_deref().map(str::trim_end),
        original.text_body.as_deref().map(str::trim_end)
    );
    assert_eq!(re_rendered.fingerprint, original.fingerprint);
    let original_v1 = fingerprint_v1(&fixture("plain.eml")).unwrap();
    assert_ne!(fingerprint_v1(&re_rendered_plain()).unwrap(), original_v1);
    // Mail with a Message-ID is not fingerprinted under version 1 unless a stored row of that
    // version is compared (the facts do it from the raw bytes): a second pass over the body.
    assert_eq!(original.fingerprint_v1, None);
    let stored_v1 = KnownMessage {
        ticket_id: 1,
        message_row_id: 1,
        fingerprint: original_v1.clone(),
        fingerprint_version: FingerprintVersion::V1,
    };
    assert!(!stored_v1.is_same_content(&original));
    let with_v1 = ParsedMail {
        fingerprint_v1: Some(original_v1),
        ..original.clone()
    };
    assert!(stored_v1.is_same_content(&with_v1));
    assert!(!stored_v1.is_same_content(&re_rendered));
}

#[test]
fn a_released_conflict_becomes_a_ticket_under_its_own_key_once() {
    let mail = parse(&fixture("plain.eml")).unwrap();
    let stored = KnownMessage {
        ticket_id: 7,
        message_row_id: 70,
        fingerprint: "0".repeat(64),
        fingerprint_version: FingerprintVersion::V2,
    };
    let released = Facts {
        same_message_id: Some(stored.clone()),
        free_conflict_key: Some(format!("{}#2", mail.message_id)),
        released: true,
        ..Facts::default()
    };
    match decide(Ok(mail.clone()), &released, &policy()) {
        Decision::NewTicket { mail: new, .. } => {
            assert_eq!(new.message_id, format!("{}#2", mail.message_id));
            assert_eq!(new.message_id_source, MessageIdSource::ConflictRelease);
            assert_eq!(new.sent_message_id(), mail.message_id);
        }
        other => panic!("{other:?}"),
    }
    // Not released: quarantined; stored under `#2` already: a duplicate of that one.
    let not_released = Facts {
        released: false,
        ..released.clone()
    };
    assert!(matches!(
        decide(Ok(mail.clone()), &not_released, &policy()),
        Decision::Quarantine(QuarantineReason::MessageIdConflict { ticket_id: 7 })
    ));
    let stored_twice = Facts {
        conflict_releases: vec![KnownMessage {
            ticket_id: 8,
            message_row_id: 80,
            fingerprint: mail.fingerprint.clone(),
            fingerprint_version: FingerprintVersion::V2,
        }],
        free_conflict_key: Some(format!("{}#3", mail.message_id)),
        ..released
    };
    assert!(matches!(
        decide(Ok(mail), &stored_twice, &policy()),
        Decision::Duplicate { ticket_id: 8 }
    ));
}

fn policy() -> Policy {
    Policy {
        own_addresses: vec!["support@helpdesk.test".into()],
        max_new_tickets_per_sender_per_hour: 20,
        reopen_closed: true,
        automatic: AutomaticMail::Ticket,
    }
}

fn ticket(id: i64, status: &str, participants: &[&str]) -> KnownTicket {
    KnownTicket {
        ticket_id: id,
        status: status.parse().expect("a ticket status"),
        participants: participants.iter().map(|p| p.to_string()).collect(),
    }
}

fn decide_fixture(name: &str, facts: &Facts) -> Decision {
    decide(parse(&fixture(name)), facts, &policy())
}

#[test]
fn empty_input_is_quarantined_not_an_error() {
    let decision = decide(parse(b"\r\n\r\n"), &Facts::default(), &policy());
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
            message_row_id: 70,
            fingerprint: mail.fingerprint.clone(),
            fingerprint_version: FingerprintVersion::V2,
        }),
        ..Facts::default()
    };
    assert!(matches!(
        decide(Ok(mail.clone()), &same, &policy()),
        Decision::Duplicate { ticket_id: 7 }
    ));
    let different = Facts {
        same_message_id: Some(KnownMessage {
            ticket_id: 7,
            message_row_id: 70,
            fingerprint: "0".repeat(64),
            fingerprint_version: FingerprintVersion::V2,
        }),
        ..Facts::default()
    };
    assert!(matches!(
        decide(Ok(mail.clone()), &different, &policy()),
        Decision::Quarantine(QuarantineReason::MessageIdConflict { ticket_id: 7 })
    ));
    assert!(matches!(
        decide(Ok(mail), &Facts::default(), &policy()),
        Decision::NewTicket { related: None, .. }
    ));
}

#[test]
fn a_reply_in_a_known_thread_is_a_follow_up_and_reopens_a_closed_ticket() {
    let facts = Facts {
        thread: Some(ticket(3, "closed", &["erik@customer.test"])),
        ..Facts::default()
    };
    match decide_fixture("attachment.eml", &facts) {
        Decision::FollowUp {
            ticket_id: 3,
            reopen: true,
            auto_kind: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let no_reopen = Policy {
        reopen_closed: false,
        ..policy()
    };
    assert!(matches!(
        decide(parse(&fixture("attachment.eml")), &facts, &no_reopen),
        Decision::FollowUp { reopen: false, .. }
    ));
}

#[test]
fn a_tag_attaches_only_mail_from_participants() {
    let tagged = |participants: &[&str]| Facts {
        tagged: Some(ticket(1, "open", participants)),
        ..Facts::default()
    };
    // ooo_exchange.eml carries [#TCK-000001] but is automatic; use a person's mail with a tag.
    let raw = String::from_utf8(fixture("plain.eml"))
        .unwrap()
        .replace("Subject: Printer", "Subject: Re: [#TCK-000001] Printer");
    let mail = parse(raw.as_bytes()).unwrap();
    assert_eq!(
        tagged_reference(&mail.subject).as_deref(),
        Some("TCK-000001")
    );
    assert!(matches!(
        decide(
            Ok(mail.clone()),
            &tagged(&["alice@customer.test"]),
            &policy()
        ),
        Decision::FollowUp { ticket_id: 1, .. }
    ));
    assert!(matches!(
        decide(
            Ok(mail),
            &tagged(&["someone.else@customer.test"]),
            &policy()
        ),
        Decision::NewTicket {
            related: Some(1),
            ..
        }
    ));
}

#[test]
fn out_of_office_replies_never_open_tickets() {
    let mail = parse(&fixture("ooo_exchange.eml")).unwrap();
    assert!(matches!(
        classify(&mail, &policy()),
        MailKind::Automatic {
            kind: AutoKind::AutoReply,
            ..
        }
    ));
    // In a known thread it is recorded on the ticket as automatic mail, without reopening it.
    let facts = Facts {
        thread: Some(ticket(1, "resolved", &["bob@customer.test"])),
        ..Facts::default()
    };
    assert!(matches!(
        decide(Ok(mail.clone()), &facts, &policy()),
        Decision::FollowUp {
            reopen: false,
            auto_kind: Some(AutoKind::AutoReply),
            ..
        }
    ));
    // Otherwise it is backscatter (recorded, with that reason), never a ticket.
    let ignored = |decision: Decision| match decision {
        Decision::Ignore { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    let reason = ignored(decide(Ok(mail), &Facts::default(), &policy()));
    assert_eq!(reason.code(), IgnoreCode::Backscatter);
    assert!(
        reason
            .detail()
            .starts_with("backscatter: an automatic reply (Auto-Submitted: auto-replied)"),
        "{}",
        reason.detail()
    );
    assert_eq!(
        ignored(decide_fixture("gmail_vacation.eml", &Facts::default())).code(),
        IgnoreCode::Backscatter
    );
}

#[test]
fn machine_generated_mail_opens_tickets_unless_the_mailbox_ignores_it() {
    let alert = parse(
        b"From: Monitoring <alerts@monitoring.customer.test>\r\nTo: support@helpdesk.test\r\n\
          Subject: CRITICAL: disk full on db1\r\nMessage-ID: <alert-1@monitoring.customer.test>\r\n\
          Auto-Submitted: auto-generated\r\n\r\n/var is 100% full\r\n",
    )
    .unwrap();
    let newsletter = parse(&fixture("newsletter.eml")).unwrap();
    let bulk = parse(
        b"From: Vendor <offers@vendor.test>\r\nTo: support@helpdesk.test\r\nSubject: Offers\r\n\
          Message-ID: <b1@vendor.test>\r\nPrecedence: bulk\r\n\r\nBuy\r\n",
    )
    .unwrap();
    for (mail, kind) in [
        (&alert, AutoKind::AutoGenerated),
        (&newsletter, AutoKind::List),
        (&bulk, AutoKind::Bulk),
    ] {
        assert!(
            matches!(decide(Ok(mail.clone()), &Facts::default(), &policy()),
                Decision::NewTicket { auto_kind: Some(k), related: None, .. } if k == kind),
            "{}",
            mail.message_id
        );
        let ignore = Policy {
            automatic: AutomaticMail::Ignore,
            ..policy()
        };
        match decide(Ok(mail.clone()), &Facts::default(), &ignore) {
            Decision::Ignore {
                reason,
                bounced: None,
            } => {
                assert_eq!(reason.code(), IgnoreCode::Automatic);
                assert!(reason.detail().contains("automatic = \"ignore\""));
            }
            other => panic!("{other:?}"),
        }
        // In a ticket's thread, from a sender on it, it is attached either way; it reopens only
        // under "ticket".
        let sender = mail.from.as_ref().unwrap().address.to_ascii_lowercase();
        let facts = Facts {
            thread: Some(ticket(4, "closed", &[&sender])),
            ..Facts::default()
        };
        assert!(matches!(
            decide(Ok(mail.clone()), &facts, &policy()),
            Decision::FollowUp { ticket_id: 4, reopen: true, auto_kind: Some(k), .. } if k == kind
        ));
        assert!(matches!(
            decide(Ok(mail.clone()), &facts, &ignore),
            Decision::FollowUp { ticket_id: 4, reopen: false, auto_kind: Some(k), .. } if k == kind
        ));
    }
    // A partner agent's reply through their ticket system asks for no automatic replies, but a
    // person wrote it: it is a person's mail (the acknowledgement is suppressed in `reply`).
    let partner = parse(
        b"From: Agent <agent@partner.test>\r\nTo: support@helpdesk.test\r\nSubject: Re: outage\r\n\
          Message-ID: <r1@partner.test>\r\nX-Auto-Response-Suppress: All\r\n\r\nFixed.\r\n",
    )
    .unwrap();
    assert_eq!(classify(&partner, &policy()), MailKind::Person);
    assert!(partner.signals.suppresses_auto_replies());
}

#[test]
fn bounces_and_read_receipts_attach_to_the_ticket_they_are_about() {
    let dsn = parse(&fixture("dsn.eml")).unwrap();
    assert!(matches!(
        classify(&dsn, &policy()),
        MailKind::Automatic {
            kind: AutoKind::Bounce,
            ..
        }
    ));
    assert_eq!(
        dsn.signals.original_message_id.as_deref(),
        Some("ack-1@helpdesk.test")
    );
    assert!(dsn.signals.null_return_path);
    let report = dsn
        .signals
        .delivery_report
        .as_ref()
        .expect("a delivery report");
    assert_eq!(
        report.reporting_mta.as_deref(),
        Some("dns; mx.customer.test")
    );
    assert_eq!(
        report.recipients,
        [RecipientStatus {
            recipient: "nobody@customer.test".into(),
            action: DsnAction::Failed,
            status: Some("5.1.1".into()),
            diagnostic: None,
        }]
    );
    let facts = Facts {
        reported: Some(ticket(1, "closed", &[])),
        ..Facts::default()
    };
    assert!(matches!(
        decide(Ok(dsn.clone()), &facts, &policy()),
        Decision::FollowUp {
            ticket_id: 1,
            reopen: false,
            auto_kind: Some(AutoKind::Bounce),
            // ack-1@helpdesk.test is not a Message-ID mailintake makes.
            bounced: None,
            ..
        }
    ));
    assert!(matches!(
        decide(Ok(dsn), &Facts::default(), &policy()),
        Decision::Ignore {
            reason: IgnoreReason::Backscatter {
                kind: AutoKind::Bounce,
                ..
            },
            ..
        }
    ));

    let mdn = parse(&fixture("mdn.eml")).unwrap();
    assert!(matches!(
        classify(&mdn, &policy()),
        MailKind::Automatic {
            kind: AutoKind::ReadReceipt,
            ..
        }
    ));
    assert_eq!(
        mdn.signals.original_message_id.as_deref(),
        Some("ack-1@helpdesk.test")
    );
}

/// A DSN as Postfix writes one, about `original` with `action` for its one recipient.
fn postfix_dsn(original: &str, action: &str, status: &str) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.customer.test (Mail Delivery System)\r\n\
         To: support@helpdesk.test\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <20261124150200.ABC@mx.customer.test>\r\nAuto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.customer.test\r\nX-Postfix-Queue-ID: ABC\r\n\
         Arrival-Date: Tue, 24 Nov 2026 15:02:00 +0000 (UTC)\r\n\r\n\
         Final-Recipient: rfc822; no=body@customer.test\r\n\
         Original-Recipient: rfc822;no=body@customer.test\r\nAction: {action}\r\n\
         Status: {status}\r\nRemote-MTA: dns; lmtp.customer.test\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <no=body@customer.test> User doesn't\r\n    exist\r\n\r\n\
         --B\r\nContent-Type: message/rfc822\r\n\r\n\
         From: support@helpdesk.test\r\nTo: no=body@customer.test\r\nSubject: [#TCK-000009] Re: x\r\n\
         Message-ID: <{original}>\r\nX-Loop: support@helpdesk.test\r\n\r\nThank you\r\n\
         --B--\r\n"
    )
    .into_bytes()
}

#[test]
fn a_bounce_of_our_own_message_marks_it_and_a_delay_notice_does_not() {
    let ours = "mailintake.tck-000009.18a.42.0@helpdesk.test";
    let dsn = parse(&postfix_dsn(ours, "failed", "5.1.1")).unwrap();
    // The returned copy carries our X-Loop; the notification itself is no loop.
    assert!(matches!(
        classify(&dsn, &policy()),
        MailKind::Automatic {
            kind: AutoKind::Bounce,
            ..
        }
    ));
    let bounce = outbox_bounce(&dsn, &policy()).expect("a bounce of our message");
    assert_eq!(bounce.message_id, ours);
    assert_eq!(
        bounce.reason,
        "no=body@customer.test: failed 5.1.1 (smtp; 550 5.1.1 <no=body@customer.test> User doesn't exist), reported by dns; mx.customer.test in <20261124150200.ABC@mx.customer.test>"
    );
    // On its ticket, or on none (our message had none: a quarantine notice), it marks the row.
    let on_ticket = Facts {
        reported: Some(ticket(9, "open", &[])),
        ..Facts::default()
    };
    assert!(matches!(
        decide(Ok(dsn.clone()), &on_ticket, &policy()),
        Decision::FollowUp { ticket_id: 9, auto_kind: Some(AutoKind::Bounce), bounced: Some(ref b), .. } if *b == bounce
    ));
    match decide(Ok(dsn), &Facts::default(), &policy()) {
        Decision::Ignore {
            reason,
            bounced: Some(b),
        } => {
            assert_eq!(b, bounce);
            assert_eq!(reason.code(), IgnoreCode::NoTicket);
            assert_eq!(
                reason.detail(),
                format!("no-ticket: a bounce about our message {ours}, which belongs to no ticket")
            );
        }
        other => panic!("{other:?}"),
    }

    // Action: delayed (RFC 3464): the MTA keeps trying. Not a bounce.
    let delayed = parse(&postfix_dsn(ours, "delayed", "4.4.1")).unwrap();
    assert!(matches!(
        classify(&delayed, &policy()),
        MailKind::Automatic {
            kind: AutoKind::DeliveryStatus,
            ..
        }
    ));
    assert_eq!(outbox_bounce(&delayed, &policy()), None);
    assert!(matches!(
        decide(Ok(delayed), &on_ticket, &policy()),
        Decision::FollowUp {
            auto_kind: Some(AutoKind::DeliveryStatus),
            bounced: None,
            reopen: false,
            ..
        }
    ));
    // A bounce of someone else's message marks nothing.
    let theirs = parse(&postfix_dsn("abc@customer.test", "failed", "5.1.1")).unwrap();
    assert_eq!(outbox_bounce(&theirs, &policy()), None);
}

#[test]
fn a_bounce_that_returns_nothing_of_our_message_is_matched_by_its_envelope_id() {
    // RET=HDRS through a relay that drops the returned part, or a DSN without one: only the
    // Original-Envelope-Id (the ENVID we sent, xtext-encoded) names our message.
    let ours = "mailintake.tck-000009.18a.42.0@helpdesk.test";
    let full = String::from_utf8(postfix_dsn(ours, "failed", "5.1.1")).unwrap();
    let without_copy = full[..full.find("--B\r\nContent-Type: message/rfc822").unwrap()]
        .replace(
            "Reporting-MTA: dns; mx.customer.test\r\n",
            "Reporting-MTA: dns; mx.customer.test\r\nOriginal-Envelope-Id: mailintake.tck-000009.18a.42.0@helpdesk+2Etest\r\n",
        )
        + "--B--\r\n";
    let dsn = parse(without_copy.as_bytes()).unwrap();
    assert_eq!(dsn.signals.original_message_id.as_deref(), Some(ours));
    let bounce = outbox_bounce(&dsn, &policy()).expect("a bounce of our message");
    assert_eq!(bounce.message_id, ours);
    // Without the envelope id nothing names it.
    let anonymous =
        full[..full.find("--B\r\nContent-Type: message/rfc822").unwrap()].to_string() + "--B--\r\n";
    assert_eq!(
        outbox_bounce(&parse(anonymous.as_bytes()).unwrap(), &policy()),
        None
    );
}

#[test]
fn only_what_mailintake_sent_is_a_loop_not_a_forward_between_our_mailboxes() {
    // A person forwards from one watched mailbox to another.
    let raw = String::from_utf8(fixture("plain.eml")).unwrap().replace(
        "From: Alice Example <alice@customer.test>",
        "From: Support <Support@helpdesk.test>",
    );
    let forward = parse(raw.as_bytes()).unwrap();
    assert_eq!(classify(&forward, &policy()), MailKind::Person);
    assert!(matches!(
        decide(Ok(forward), &Facts::default(), &policy()),
        Decision::NewTicket {
            auto_kind: None,
            ..
        }
    ));
    // Our X-Loop, or our own Message-ID, is.
    let raw = String::from_utf8(fixture("plain.eml")).unwrap().replace(
        "MIME-Version",
        "X-Loop: support@helpdesk.test\r\nMIME-Version",
    );
    let mail = parse(raw.as_bytes()).unwrap();
    assert!(matches!(
        decide(Ok(mail), &Facts::default(), &policy()),
        Decision::Ignore {
            reason: IgnoreReason::Loop(_),
            ..
        }
    ));
    let raw = String::from_utf8(fixture("plain.eml")).unwrap().replace(
        "<plain-1@customer.test>",
        "<mailintake.tck-000001.18a.42.0@helpdesk.test>",
    );
    let ours = parse(raw.as_bytes()).unwrap();
    assert!(matches!(classify(&ours, &policy()), MailKind::Loop(_)));
}

#[test]
fn a_runaway_sender_is_quarantined_not_dropped() {
    let facts = Facts {
        sender_recent_tickets: 20,
        ..Facts::default()
    };
    assert!(matches!(
        decide_fixture("plain.eml", &facts),
        Decision::Quarantine(QuarantineReason::SenderRateLimit { limit: 20, .. })
    ));
    let unlimited = Policy {
        max_new_tickets_per_sender_per_hour: 0,
        ..policy()
    };
    assert!(matches!(
        decide(parse(&fixture("plain.eml")), &facts, &unlimited),
        Decision::NewTicket { .. }
    ));
}

#[test]
fn subjects_are_normalized_for_new_tickets() {
    for (subject, expected) in [
        ("Re: Printer", "Printer"),
        ("RE: AW: Fwd: Printer", "Printer"),
        ("SV: VS: Tulostin", "Tulostin"),
        ("Re[2]: Printer", "Printer"),
        ("Re: [#TCK-000012] Re: Printer", "Printer"),
        ("Invoice: March", "Invoice: March"),
        ("Re:", "Re:"),
    ] {
        assert_eq!(normalized_subject(subject), expected, "{subject}");
    }
    assert_eq!(tagged_reference("x [#TCK-12a] y"), None);
    assert_eq!(
        tagged_reference("[#TCK-000123]").as_deref(),
        Some("TCK-000123")
    );
}

#[test]
fn real_world_charsets_decode() {
    let cp1252 = parse(&fixture("windows1252.eml")).unwrap();
    assert_eq!(cp1252.subject, "Présentation “urgent”");
    assert!(
        cp1252
            .text_body
            .as_deref()
            .unwrap()
            .contains("“final” coûte 5 €")
    );
    let sjis = parse(&fixture("shift_jis.eml")).unwrap();
    assert_eq!(sjis.subject, "プリンターの故障");
    assert_eq!(
        sjis.from.as_ref().unwrap().name.as_deref(),
        Some("山田太郎")
    );
    assert!(
        sjis.text_body
            .as_deref()
            .unwrap()
            .contains("プリンターが動きません")
    );
    let jis = parse(&fixture("iso2022jp.eml")).unwrap();
    assert_eq!(jis.subject, "請求書について");
    assert!(
        jis.text_body
            .as_deref()
            .unwrap()
            .contains("請求書を確認してください")
    );
}

#[test]
fn broken_mime_still_yields_a_ticket() {
    let mail = parse(&fixture("broken_mime.eml")).unwrap();
    assert!(
        mail.text_body
            .as_deref()
            .unwrap()
            .contains("The text part is fine.")
    );
    assert!(matches!(
        decide(Ok(mail), &Facts::default(), &policy()),
        Decision::NewTicket { .. }
    ));
}

#[test]
fn forwarded_messages_inline_images_and_tnef_are_kept_as_attachments() {
    let fwd = parse(&fixture("forwarded.eml")).unwrap();
    assert_eq!(fwd.attachments.len(), 1);
    assert_eq!(fwd.attachments[0].content_type, "message/rfc822");
    assert!(String::from_utf8_lossy(&fwd.attachments[0].content).contains("Please pay."));

    let outlook = parse(&fixture("outlook_inline.eml")).unwrap();
    assert_eq!(outlook.subject, "Fehlermeldung – Bildschirmfoto");
    assert_eq!(outlook.text_body, None);
    assert!(
        outlook
            .html_body
            .as_deref()
            .unwrap()
            .contains("cid:image001.png@01DB")
    );
    assert!(
        outlook
            .text_body_derived
            .as_deref()
            .unwrap()
            .contains("Siehe Bild")
    );
    let image = &outlook.attachments[0];
    assert!(image.inline);
    assert_eq!(image.content_id.as_deref(), Some("image001.png@01DB"));
    assert!(image.content.starts_with(b"\x89PNG"));

    let tnef = parse(&fixture("tnef.eml")).unwrap();
    assert_eq!(tnef.attachments[0].filename.as_deref(), Some("winmail.dat"));
    assert_eq!(tnef.attachments[0].content_type, "application/ms-tnef");
}

#[test]
fn attachment_filenames_are_sanitised() {
    let mail = parse(&fixture("evil_filename.eml")).unwrap();
    let names: Vec<Option<&str>> = mail
        .attachments
        .iter()
        .map(|a| a.filename.as_deref())
        .collect();
    assert_eq!(names, [Some("passwd"), Some("badname.txt")]);
    assert_eq!(
        parse::sanitize_filename("..\\..\\x.exe").as_deref(),
        Some("x.exe")
    );
    assert_eq!(parse::sanitize_filename(" .. "), None);
    let long = format!("{}.pdf", "a".repeat(300));
    let short = parse::sanitize_filename(&long).unwrap();
    assert_eq!(short.chars().count(), 200);
    assert!(short.ends_with(".pdf"));
}

#[test]
fn attachment_names_cannot_fool_anyone() {
    for (sent, stored) in [
        // Shown as "invoiceexe.pdf" with the override kept.
        ("invoice\u{202E}fdp.exe", "invoicefdp.exe"),
        ("\u{2067}report\u{2069}.pdf\u{200F}", "report.pdf"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Com1.log", "_Com1.log"),
        ("LPT9", "_LPT9"),
        ("aux .tar.gz", "_aux .tar.gz"),
        ("CONOUT$", "_CONOUT$"),
        // Not devices.
        ("COM10.txt", "COM10.txt"),
        ("console.txt", "console.txt"),
        ("nullable.pdf", "nullable.pdf"),
    ] {
        assert_eq!(
            parse::sanitize_filename(sent).as_deref(),
            Some(stored),
            "{sent:?}"
        );
    }
}

#[test]
fn mail_from_common_clients() {
    check(
        "apple_mail.eml",
        Expected {
            message_id: "6D2B8C4E-1F3A-4B5C-9D8E-7F6A5B4C3D2E@customer.test",
            subject: "Cannot sync calendar",
            from: Some(("jane@customer.test", Some("Jane Appleseed"))),
            to: &["support@helpdesk.test"],
            text_contains: Some("since the update – any idea?"),
            html_contains: Some("<div>Jane</div>"),
            ..Expected::default()
        },
    );
    check(
        "thunderbird.eml",
        Expected {
            message_id: "4f1e2d3c-b5a6-4978-8d9e-0a1b2c3d4e5f@customer.test",
            subject: "Zugang gesperrt – bitte entsperren",
            from: Some(("bjoern@customer.test", Some("Björn Straßer"))),
            to: &["support@helpdesk.test"],
            text_contains: Some("seit heute früh gesperrt"),
            ..Expected::default()
        },
    );
    check(
        "ios_mobile.eml",
        Expected {
            message_id: "A1B2C3D4-E5F6-7A8B-9C0D-E1F2A3B4C5D6@customer.test",
            subject: "Wifi in room 4",
            from: Some(("kim@customer.test", Some("Kim"))),
            to: &["support@helpdesk.test"],
            text_contains: Some("Sent from my iPhone"),
            ..Expected::default()
        },
    );
    check(
        "gmail.eml",
        Expected {
            message_id: "CAB1c2D3e4F5g6H7i8J9k0L1m2N3o4P5q6R7s8T9u0V@mail.gmail.com",
            subject: "Invoice question",
            from: Some(("lee.chen@customer.test", Some("Lee Chen"))),
            to: &["support@helpdesk.test"],
            text_contains: Some("invoice 4711"),
            html_contains: Some("<div dir=\"ltr\">"),
            ..Expected::default()
        },
    );
    for name in [
        "apple_mail.eml",
        "thunderbird.eml",
        "ios_mobile.eml",
        "gmail.eml",
    ] {
        let mail = parse(&fixture(name)).unwrap();
        assert_eq!(classify(&mail, &policy()), MailKind::Person, "{name}");
    }
}

#[test]
fn ticket_references_are_zero_padded() {
    assert_eq!(ticket_reference(42), "TCK-000042");
    assert_eq!(ticket_reference(1_234_567), "TCK-1234567");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const FIXTURES: [&str; 12] = [
        "plain.eml",
        "latin1.eml",
        "html_only.eml",
        "attachment.eml",
        "dsn.eml",
        "mdn.eml",
        "ooo_exchange.eml",
        "forwarded.eml",
        "outlook_inline.eml",
        "broken_mime.eml",
        "shift_jis.eml",
        "evil_filename.eml",
    ];

    fn every_input_yields_a_decision(raw: &[u8]) {
        let facts = Facts {
            thread: Some(ticket(1, "closed", &["alice@customer.test"])),
            ..Facts::default()
        };
        // Whatever the bytes, this returns (no panic) and classifies.
        let _ = decide(parse(raw), &facts, &policy());
        if let Ok(mail) = parse(raw) {
            let _ = classify(&mail, &policy());
            let _ = normalized_subject(&mail.subject);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
            every_input_yields_a_decision(&raw);
        }

        #[test]
        fn mutated_real_mail(
            which in 0..FIXTURES.len(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        ) {
            let mut raw = fixture(FIXTURES[which]);
            for (at, byte) in flips {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
            raw.truncate(cut.index(raw.len() + 1));
            every_input_yields_a_decision(&raw);
        }
    }
}

#[test]
fn too_large_detail_tells_a_listed_size_from_one_found_while_downloading() {
    let listed = QuarantineReason::TooLarge {
        size: 30_000,
        limit: 16_384,
    };
    assert_eq!(
        listed.detail(),
        "the message is 30000 bytes, above max_message_bytes = 16384; release it with a higher limit to ingest it"
    );
    // Announced within the limit (an estimate), larger when downloaded.
    let found = QuarantineReason::TooLarge {
        size: 6_000,
        limit: 16_384,
    };
    let detail = found.detail();
    assert!(detail.contains("announced 6000 bytes"), "{detail}");
    assert!(
        detail.contains("larger than max_message_bytes = 16384"),
        "{detail}"
    );
    assert!(!detail.contains("is 6000 bytes, above"), "{detail}");
}

#[test]
fn a_raw_big5_subject_declared_only_by_the_body_is_read_as_big5() {
    let (subject, _, _) = encoding_rs::BIG5.encode("印表機故障");
    let (body, _, _) = encoding_rs::BIG5.encode("印表機不能列印。");
    let mut raw = b"From: customer@customer.test\r\nTo: support@helpdesk.test\r\nMessage-ID: <big5@customer.test>\r\nSubject: ".to_vec();
    raw.extend_from_slice(&subject);
    raw.extend_from_slice(b"\r\nContent-Type: text/plain; charset=big5\r\n\r\n");
    raw.extend_from_slice(&body);
    let mail = parse(&raw).unwrap();
    assert_eq!(mail.subject, "印表機故障");
    assert_eq!(
        mail.text_body.as_deref().map(str::trim),
        Some("印表機不能列印。")
    );
    assert!(mail.headers.contains("印表機故障"), "{}", mail.headers);
    assert_eq!(
        mail.content_sha256,
        sha256_hex(&raw),
        "the digest is the raw bytes'"
    );
}

#[test]
fn a_body_after_a_missing_blank_line_is_the_body_not_a_header() {
    let raw = b"From: customer@customer.test\r\nSubject: No blank line\r\nMessage-ID: <nb@customer.test>\r\nHello support,\r\nthe printer is broken.\r\n";
    let mail = parse(raw).unwrap();
    assert_eq!(mail.subject, "No blank line");
    let text = mail.text_body.expect("a body");
    assert!(text.contains("Hello support,"), "{text}");
    assert!(text.contains("the printer is broken."), "{text}");
    assert!(!mail.headers.contains("Hello support"), "{}", mail.headers);
}

#[test]
fn list_mail_is_recognised_by_what_list_software_really_sets() {
    // A Mailman digest: no List-* fields, From and Return-Path the list's robots.
    let digest = b"Return-Path: <helpdesk-l-bounces@lists.example.org>\r\nFrom: helpdesk-l-request@lists.example.org\r\nTo: support@helpdesk.test\r\nSubject: Helpdesk-L Digest, Vol 12, Issue 3\r\nMessage-ID: <digest.12.3@lists.example.org>\r\nX-Mailman-Version: 2.1.39\r\n\r\nSend Helpdesk-L mailing list submissions to ...\r\n";
    // A LISTSERV posting: a person's From, the list's Sender, its owner as envelope sender.
    let listserv = b"Return-Path: <owner-HELPDESK-L@LISTSERV.EXAMPLE.EDU>\r\nSender: Helpdesk discussion <HELPDESK-L@LISTSERV.EXAMPLE.EDU>\r\nFrom: Bob Example <bob@example.edu>\r\nTo: support@helpdesk.test\r\nSubject: printers\r\nMessage-ID: <p1@example.edu>\r\n\r\nHello list\r\n";
    for (name, raw, evidence) in [
        (
            "digest",
            &digest[..],
            "Return-Path: helpdesk-l-bounces@lists.example.org",
        ),
        (
            "listserv",
            &listserv[..],
            "Return-Path: owner-helpdesk-l@listserv.example.edu",
        ),
    ] {
        let mail = parse(raw).unwrap();
        assert!(mail.signals.list, "{name}");
        assert_eq!(
            mail.signals.list_evidence.as_deref(),
            Some(evidence),
            "{name}"
        );
        assert!(
            matches!(
                classify(&mail, &policy()),
                MailKind::Automatic {
                    kind: AutoKind::List,
                    ..
                }
            ),
            "{name}"
        );
    }
    // A person's message with an address that merely ends like a robot's is a person's.
    let person = parse(b"From: purchase-request@customer.test\r\nSubject: PO\r\nMessage-ID: <po@customer.test>\r\n\r\nPlease order\r\n").unwrap();
    assert!(!person.signals.list);
}

#[test]
fn nul_bytes_are_removed_from_every_text_field_and_kept_in_the_hashes() {
    let raw = b"From: =?utf-8?Q?Al=00ice?= <alice@customer.test>\r\nTo: support@helpdesk.test\r\n\
        Subject: =?utf-8?Q?print=00er?=\r\nMessage-ID: <nul-1@customer.test>\r\n\
        In-Reply-To: <earlier@customer.test>\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
        jam=00med\r\n--b\r\nContent-Type: application/octet-stream\r\n\
        Content-Disposition: attachment; filename=\"=?utf-8?Q?log=00.txt?=\"\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\r\nbinary=00content\r\n--b--\r\n";
    let mail = parse(raw).unwrap();
    assert_eq!(mail.subject, "printer");
    assert_eq!(mail.from.as_ref().unwrap().name.as_deref(), Some("Alice"));
    assert_eq!(mail.text_body.as_deref(), Some("jammed"));
    assert_eq!(mail.attachments[0].filename.as_deref(), Some("log.txt"));
    // Attachment contents are bytes: they keep theirs.
    assert_eq!(&mail.attachments[0].content[..], b"binary\0content");
    assert_eq!(mail.content_sha256, sha256_hex(raw));
    let text_fields = [
        &mail.message_id,
        &mail.subject,
        &mail.headers,
        mail.text_body.as_ref().unwrap(),
    ];
    assert!(text_fields.iter().all(|t| !t.contains('\0')));
}

#[test]
fn from_address_is_the_first_normalised_from_and_every_repair_is_noted() {
    // (header fields, from_address, every From address, a note's words or "" for none)
    let cases: &[(&str, Option<&str>, &[&str], &str)] = &[
        (
            "From: Big Bug bb@Bug.com\r\n",
            Some("bb@bug.com"),
            &["bb@bug.com"],
            "no angle brackets",
        ),
        (
            "From: jdoe@machine.  example\r\n",
            Some("jdoe@machine.example"),
            &["jdoe@machine.example"],
            "obsolete syntax",
        ),
        (
            "From: a@x.test, b@y.test\r\nSender: s@x.test\r\n",
            Some("a@x.test"),
            &["a@x.test", "b@y.test"],
            "From names 2 addresses (a@x.test, b@y.test); the first, a@x.test, is the requester; Sender: s@x.test",
        ),
        (
            "From: a@x.test, b@y.test\r\n",
            Some("a@x.test"),
            &["a@x.test", "b@y.test"],
            "there is no Sender field, which RFC 5322 §3.6.2 requires",
        ),
        // An entry that is no address is left out; the first one that is becomes from_address.
        (
            "From: bb@, c@z.test\r\n",
            Some("c@z.test"),
            &["c@z.test"],
            "`bb@` is not an address",
        ),
        (
            "From: undisclosed-recipients:;\r\n",
            None,
            &[],
            "empty group",
        ),
        (
            "From: Alice <alice@Customer.TEST>\r\n",
            Some("alice@customer.test"),
            &["alice@customer.test"],
            "",
        ),
        (
            "Return-Path: <@relay.test:bounce@X.test>\r\nFrom: a@x.test\r\n",
            Some("a@x.test"),
            &["a@x.test"],
            "source route was dropped",
        ),
        (
            "From: a@x.test\r\nReply-To: Desk desk@x.test\r\n",
            Some("a@x.test"),
            &["a@x.test"],
            "Reply-To `Desk desk@x.test` has no angle brackets",
        ),
    ];
    for (fields, from, all, note) in cases {
        let raw = format!("{fields}Subject: x\r\nMessage-ID: <m@x.test>\r\n\r\nx\r\n");
        let mail = parse(raw.as_bytes()).unwrap();
        assert_eq!(
            mail.from.as_ref().map(|p| p.address.as_str()),
            *from,
            "{fields}"
        );
        let addresses: Vec<&str> = mail
            .from_addresses
            .iter()
            .map(|p| p.address.as_str())
            .collect();
        assert_eq!(&addresses, all, "{fields}");
        if note.is_empty() {
            assert!(
                mail.address_notes.is_empty(),
                "{fields}: {:?}",
                mail.address_notes
            );
        } else {
            assert!(
                mail.address_notes.iter().any(|n| n.contains(note)),
                "{fields}: {:?}",
                mail.address_notes
            );
        }
    }
    // The envelope sender is normalised too: acknowledgements go there.
    let mail = parse(
        b"Return-Path: <@relay.test:bounce@X.test>\r\nFrom: a@x.test\r\nSubject: x\r\n\r\nx\r\n",
    )
    .unwrap();
    assert_eq!(mail.signals.return_path.as_deref(), Some("bounce@x.test"));
}

#[test]
fn a_reply_in_a_thread_reaches_the_ticket_only_from_someone_on_it() {
    let reply = |from: &str| {
        parse(
            format!(
                "From: {from}\r\nTo: support@helpdesk.test\r\nSubject: Re: Printer\r\n\
                 Message-ID: <r.{from}@x.test>\r\nIn-Reply-To: <first@customer.test>\r\n\r\nHi.\r\n"
            )
            .as_bytes(),
        )
    };
    let thread = |by_ours: bool| Facts {
        thread: Some(ticket(
            7,
            "open",
            &["alice@customer.test", "bob@customer.test"],
        )),
        thread_by_our_message: by_ours,
        ..Facts::default()
    };
    // On the ticket (any case of the address).
    assert!(matches!(
        decide(reply("Bob <BOB@customer.test>"), &thread(false), &policy()),
        Decision::FollowUp { ticket_id: 7, .. }
    ));
    // A stranger who knows the Message-ID: a new ticket, linked.
    assert!(matches!(
        decide(reply("mallory@elsewhere.test"), &thread(false), &policy()),
        Decision::NewTicket {
            related: Some(7),
            ..
        }
    ));
    // Anyone answering one of our own messages belongs on the ticket.
    assert!(matches!(
        decide(reply("carol@customer.test"), &thread(true), &policy()),
        Decision::FollowUp { ticket_id: 7, .. }
    ));
}
