//! Validation, the canonical digest and composition, without a store.

use super::request::{self, check, digest};
use super::*;

fn mailbox(extra: &str) -> Mailbox {
    crate::config::mailbox_for_tests(extra)
}

fn request(json: &str) -> OutgoingRequest {
    serde_json::from_str(json).unwrap()
}

fn field_of(error: SubmitError) -> String {
    match error {
        SubmitError::Invalid { field, .. } | SubmitError::NotAllowed { field, .. } => field,
        other => panic!("not a field error: {other}"),
    }
}

const BASE: &str = r#""mailbox": "support", "idempotency_key": "k1", "to": ["alice@customer.test"], "subject": "Hi", "text": "Hello""#;

#[test]
fn a_plain_request_is_checked_with_its_defaults() {
    let checked = check(&mailbox(""), &request(&format!("{{{BASE}}}"))).unwrap();
    assert_eq!(checked.kind, RequestKind::Reply);
    assert_eq!(checked.from, "support@helpdesk.test");
    assert_eq!(checked.to[0].address, "alice@customer.test");
    assert_eq!(checked.digest.len(), 64);
}

#[test]
fn header_injection_is_refused_naming_the_field() {
    let mb = mailbox("");
    let bad = request(&format!("{{{BASE}}}").replace("\"Hi\"", "\"Hi\\r\\nBcc: evil@x.test\""));
    let e = check(&mb, &bad).unwrap_err();
    assert!(
        e.to_string().starts_with("subject: contains a line break"),
        "{e}"
    );
    let bad = request(
        r#"{"mailbox": "support", "idempotency_key": "k", "subject": "s", "text": "t",
            "to": [{"address": "a@customer.test", "name": "A\nBcc: x@y.test"}]}"#,
    );
    assert_eq!(field_of(check(&mb, &bad).unwrap_err()), "to[0].name");
    let bad = request(&format!("{{{BASE}, \"cc\": [\"b@customer.test\\r\\n\"]}}"));
    assert_eq!(field_of(check(&mb, &bad).unwrap_err()), "cc[0]");
}

#[test]
fn addresses_must_be_bare_and_sendable() {
    let mb = mailbox("");
    for bad in [
        "no-at-sign",
        "Alice <a@customer.test>",
        "a@b.test, c@d.test",
        "",
    ] {
        let r = request(&format!("{{{BASE}}}").replace("alice@customer.test", bad));
        assert_eq!(field_of(check(&mb, &r).unwrap_err()), "to[0]", "{bad}");
    }
}

#[test]
fn recipients_are_counted_and_needed() {
    let mb = mailbox("");
    let many: Vec<String> = (0..501)
        .map(|i| format!("\"u{i}@customer.test\""))
        .collect();
    let r = request(&format!(
        r#"{{"mailbox": "support", "idempotency_key": "k", "subject": "s", "text": "t", "bcc": [{}]}}"#,
        many.join(",")
    ));
    assert!(
        check(&mb, &r)
            .unwrap_err()
            .to_string()
            .contains("at most 500")
    );
    let r =
        request(r#"{"mailbox": "support", "idempotency_key": "k", "subject": "s", "text": "t"}"#);
    assert!(
        check(&mb, &r)
            .unwrap_err()
            .to_string()
            .starts_with("to: no recipient")
    );
    // A ticket supplies its requester later.
    let r = request(
        r#"{"mailbox": "support", "idempotency_key": "k", "ticket": "TCK-000004", "text": "t"}"#,
    );
    assert_eq!(check(&mb, &r).unwrap().ticket_id, Some(4));
}

#[test]
fn from_must_be_the_mailbox_or_in_send_as() {
    let with = |from: &str, extra: &str| {
        let r = request(&format!("{{{BASE}, \"from\": \"{from}\"}}"));
        check(&mailbox(extra), &r)
    };
    assert!(with("Support@Helpdesk.test", "").is_ok());
    assert_eq!(
        field_of(with("sales@helpdesk.test", "").unwrap_err()),
        "from"
    );
    assert_eq!(
        with("sales@helpdesk.test", "send_as = [\"Sales@helpdesk.test\"]")
            .unwrap()
            .from,
        "sales@helpdesk.test"
    );
}

#[test]
fn the_allow_list_refuses_other_recipients() {
    let mb = mailbox("allow_recipients = [\"*@customer.test\"]");
    assert!(check(&mb, &request(&format!("{{{BASE}}}"))).is_ok());
    let r = request(&format!("{{{BASE}, \"bcc\": [\"eve@elsewhere.test\"]}}"));
    let e = check(&mb, &r).unwrap_err();
    assert!(
        matches!(&e, SubmitError::NotAllowed { field, .. } if field == "bcc[0]"),
        "{e}"
    );
}

#[test]
fn bad_base64_and_missing_bodies_are_refused() {
    let mb = mailbox("");
    let r = request(&format!(
        "{{{BASE}, \"attachments\": [{{\"filename\": \"a.txt\", \"content_type\": \"text/plain\", \"content_base64\": \"***\"}}]}}"
    ));
    assert_eq!(
        field_of(check(&mb, &r).unwrap_err()),
        "attachments[0].content_base64"
    );
    let r = request(
        r#"{"mailbox": "support", "idempotency_key": "k", "to": ["a@customer.test"], "subject": "s"}"#,
    );
    assert_eq!(field_of(check(&mb, &r).unwrap_err()), "text");
    let r = request(
        r#"{"mailbox": "support", "to": ["a@customer.test"], "subject": "s", "text": "t"}"#,
    );
    assert_eq!(field_of(check(&mb, &r).unwrap_err()), "idempotency_key");
}

#[test]
fn html_alone_gets_a_text_part_derived_from_it() {
    let r = request(
        r#"{"mailbox": "support", "idempotency_key": "k", "to": ["a@customer.test"], "subject": "s",
            "html": "<p>Your printer is <b>fixed</b>.</p>"}"#,
    );
    let checked = check(&mailbox(""), &r).unwrap();
    assert!(
        checked.text.contains("Your printer is fixed."),
        "{}",
        checked.text
    );
}

#[test]
fn the_digest_is_canonical() {
    let a = request(&format!("{{{BASE}}}"));
    // The same request written differently: other key order, defaults spelled out, the ticket
    // by reference instead of id.
    let b = request(
        r#"{"text": "Hello", "subject": "Hi", "kind": "reply", "to": ["alice@customer.test"],
            "idempotency_key": "k1", "mailbox": "support"}"#,
    );
    assert_eq!(digest(&a, None), digest(&b, None));
    let mut c = a.clone();
    c.text = Some("Hello!".into());
    assert_ne!(digest(&a, None), digest(&c, None));
    let t1 = request(r#"{"mailbox": "support", "idempotency_key": "k", "ticket": 7, "text": "t"}"#);
    let t2 = request(
        r#"{"mailbox": "support", "idempotency_key": "k", "ticket": "[#TCK-000007]", "text": "t"}"#,
    );
    let id = |r: &OutgoingRequest| r.ticket.as_ref().unwrap().id();
    assert_eq!(digest(&t1, id(&t1)), digest(&t2, id(&t2)));
}

#[test]
fn ticket_references_are_read_in_every_spelling() {
    for (text, id) in [
        ("TCK-000123", Some(123)),
        ("[#TCK-000123]", Some(123)),
        ("123", Some(123)),
        ("TCK-", None),
        ("abc", None),
        ("0", None),
    ] {
        assert_eq!(TicketRef::Reference(text.into()).id(), id, "{text}");
    }
    assert_eq!(TicketRef::Id(5).id(), Some(5));
}

#[test]
fn a_notification_is_marked_automatic_and_bcc_stays_out_of_the_bytes() {
    let to = [CheckedAddress {
        address: "a@customer.test".into(),
        name: Some("Alice".into()),
    }];
    let bcc = [CheckedAddress {
        address: "audit@helpdesk.test".into(),
        name: None,
    }];
    let parts = |kind| Parts {
        kind,
        from: "support@helpdesk.test",
        to: &to,
        cc: &[],
        bcc: &bcc,
        subject: "Your order",
        message_id: "mailintake.out.1@helpdesk.test",
        in_reply_to: None,
        references: None,
        text: "Shipped.",
        html: None,
        attachments: &[],
    };
    let raw = String::from_utf8(compose(&parts(RequestKind::Notification)).unwrap()).unwrap();
    assert!(raw.contains("Auto-Submitted: auto-generated"), "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("bcc"), "{raw}");
    assert!(
        raw.contains("Message-ID: <mailintake.out.1@helpdesk.test>"),
        "{raw}"
    );
    let raw = String::from_utf8(compose(&parts(RequestKind::Reply)).unwrap()).unwrap();
    assert!(!raw.contains("Auto-Submitted"), "{raw}");
    assert!(!raw.contains("X-Auto-Response-Suppress"), "{raw}");
    let _ = request::MAX_RECIPIENTS;
}
