//! Mail through the stack's MX (Postfix's inbound smtpd with OpenDKIM as milter), which stamps
//! its own `Authentication-Results: mx.mailstack.test; dkim=…` above everything the sender
//! wrote and removes the sender's copies that claim its id: acknowledgements go only where a DKIM
//! signature of the Return-Path's domain verified, and nothing a sender writes changes that.
//! Mail is signed by python3-dkim's `dkimsign` ([`sign_dkim`]), verified by OpenDKIM.

use std::time::Duration;

use mailintake::ingest::authres::AuthResults;

use crate::acks::{connect_first, customer_mail, inbox_messages};
use crate::helpers::*;

/// The `Authentication-Results` fields of `raw`, topmost first.
fn stamps(raw: &[u8]) -> Vec<AuthResults> {
    mailintake::ingest::parse(raw)
        .expect("a message")
        .signals
        .authentication_results
}

/// The fields of `raw` that claim the stack's authserv-id, topmost first, each as
/// `method=result header.d` words (`dkim=pass customer.test`, `spf=pass`).
fn stack_stamps(raw: &[u8]) -> Vec<Vec<String>> {
    stamps(raw)
        .into_iter()
        .filter(|field| field.authserv_id.as_deref() == Some(STACK_AUTHSERV_ID))
        .map(|field| {
            field
                .results
                .iter()
                .filter(|r| r.method == "spf" || r.method == "dkim")
                .map(|r| {
                    let d = r
                        .props
                        .iter()
                        .find(|(key, _)| key == "header.d")
                        .map(|(_, d)| format!(" {d}"))
                        .unwrap_or_default();
                    format!("{}={}{d}", r.method, r.result)
                })
                .collect()
        })
        .collect()
}

/// The one message in `mailbox`'s inbox (read before mailintake moves it).
async fn the_inbox_message(entra: &Entra, mailbox: &str) -> Vec<u8> {
    let mut messages = inbox_messages(entra, mailbox).await;
    assert_eq!(messages.len(), 1, "one message in {mailbox}'s inbox");
    messages.remove(0)
}

/// The reason an acknowledgement to `customer` is suppressed when the MX's stamp says `said`.
fn not_vouched(customer: &str, said: &str) -> String {
    format!(
        "the receiving server does not vouch for {customer} (the Return-Path address): \
         no SPF or aligned DKIM pass for its domain (`{STACK_AUTHSERV_ID}` says: {said})"
    )
}

fn a_customer() -> String {
    format!("{}@customer.test", unique("c"))
}

#[tokio::test]
async fn a_dkim_signed_message_through_the_mx_is_acknowledged() {
    let support = unique_mailbox();
    let customer = a_customer();
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    connect_first(&case).await;
    let mail = customer_mail(&customer, &support, "Signed", &unique("s"), "");
    deliver_mx(&support, &customer, &sign_dkim(&mail)).await;

    let stored = the_inbox_message(&case.entra, &support).await;
    assert_eq!(
        stack_stamps(&stored),
        [["dkim=pass customer.test"]],
        "{}",
        text(&stored)
    );
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 1 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND smtp_response LIKE '250%' \
                 AND to_address = '{customer}'"
            ))
            .await,
        1
    );
    let arrived = eventually(Duration::from_secs(20), || async {
        !inbox_messages(&case.entra, &customer).await.is_empty()
    })
    .await;
    assert!(arrived, "no acknowledgement in the customer's inbox");
}

#[tokio::test]
async fn an_unsigned_message_through_the_mx_gets_its_ticket_and_no_acknowledgement() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let customer = a_customer();
    let mail = customer_mail(&customer, &case.mailbox, "Unsigned", &unique("u"), "");
    deliver_mx(&case.mailbox, &customer, &mail).await;

    let stored = the_inbox_message(&case.entra, &case.mailbox).await;
    assert_eq!(stack_stamps(&stored), [["dkim=none"]], "{}", text(&stored));
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 0 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{customer}' \
                 AND reason = '{}'",
                not_vouched(&customer, "dkim=none")
            ))
            .await,
        1
    );
}

/// A sender who writes the MX's stamp itself: OpenDKIM removes the copy, and its own says
/// `dkim=none`.
#[tokio::test]
async fn a_forged_stamp_sent_through_the_mx_is_removed_and_vouches_for_nothing() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let customer = a_customer();
    let forged = format!(
        "Authentication-Results: {STACK_AUTHSERV_ID}; spf=pass smtp.mailfrom=customer.test; \
         dkim=pass header.d=customer.test\r\n"
    );
    let mail = [
        forged.as_bytes(),
        &customer_mail(&customer, &case.mailbox, "Forged", &unique("f"), ""),
    ]
    .concat();
    deliver_mx(&case.mailbox, &customer, &mail).await;

    let stored = the_inbox_message(&case.entra, &case.mailbox).await;
    let stored_text = text(&stored);
    assert!(
        !stored_text.contains("spf=pass smtp.mailfrom=customer.test"),
        "the forged stamp is gone: {stored_text}"
    );
    assert_eq!(stack_stamps(&stored), [["dkim=none"]], "{stored_text}");
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 0 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{customer}' \
                 AND reason = '{}'",
                not_vouched(&customer, "dkim=none")
            ))
            .await,
        1
    );
}

/// OpenDKIM removes only the copies its own parser can read: one with a property type it does not
/// know (`foo.bar=x`) stays, but below the MX's stamp, so the topmost copy with the id is still
/// the MX's own and the forgery vouches for nothing.
#[tokio::test]
async fn a_forged_stamp_the_mx_cannot_read_stays_below_its_own_and_vouches_for_nothing() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let customer = a_customer();
    let forged = format!(
        "Authentication-Results: {STACK_AUTHSERV_ID}; spf=pass foo.bar=x smtp.mailfrom={customer}\r\n"
    );
    let mail = [
        forged.as_bytes(),
        &customer_mail(&customer, &case.mailbox, "Forged", &unique("f"), ""),
    ]
    .concat();
    deliver_mx(&case.mailbox, &customer, &mail).await;

    let stored = the_inbox_message(&case.entra, &case.mailbox).await;
    assert_eq!(
        stack_stamps(&stored),
        [vec!["dkim=none"], vec!["spf=pass"]],
        "the MX's stamp on top, the forged copy below it: {}",
        text(&stored)
    );
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("support outbox: 0 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{customer}' \
                 AND reason = '{}'",
                not_vouched(&customer, "dkim=none")
            ))
            .await,
        1
    );
}

#[tokio::test]
async fn a_signature_broken_after_signing_gets_no_acknowledgement() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let customer = a_customer();
    let mail = customer_mail(&customer, &case.mailbox, "Altered", &unique("b"), "");
    let signed = text(&sign_dkim(&mail));
    assert!(signed.contains("Please help."), "{signed}");
    let altered = signed.replace("Please help.", "Please wire the money.");
    deliver_mx(&case.mailbox, &customer, altered.as_bytes()).await;

    let stored = the_inbox_message(&case.entra, &case.mailbox).await;
    assert_eq!(
        stack_stamps(&stored),
        [["dkim=fail customer.test"]],
        "{}",
        text(&stored)
    );
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 0 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{customer}' \
                 AND reason = '{}'",
                not_vouched(&customer, "dkim=fail header.d=customer.test")
            ))
            .await,
        1
    );
}

/// A stamp of another server (`other.example`) passes through the MX untouched, below the MX's
/// own: the signed message is acknowledged, the unsigned one is not, whatever the other stamp says.
#[tokio::test]
async fn a_stamp_of_another_server_changes_nothing() {
    let case = Case::new(Backend::Postgres, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let signed_customer = a_customer();
    let unsigned_customer = a_customer();
    let other = |customer: &str| {
        format!(
            "Authentication-Results: other.example; spf=pass smtp.mailfrom={customer}; \
             dkim=pass header.d=customer.test\r\n"
        )
    };
    let signed = sign_dkim(&customer_mail(
        &signed_customer,
        &case.mailbox,
        "Signed",
        &unique("s"),
        "",
    ));
    deliver_mx(
        &case.mailbox,
        &signed_customer,
        &[other(&signed_customer).as_bytes(), &signed].concat(),
    )
    .await;
    let unsigned = customer_mail(
        &unsigned_customer,
        &case.mailbox,
        "Unsigned",
        &unique("u"),
        "",
    );
    deliver_mx(
        &case.mailbox,
        &unsigned_customer,
        &[other(&unsigned_customer).as_bytes(), &unsigned].concat(),
    )
    .await;

    let stored = inbox_messages(&case.entra, &case.mailbox).await;
    assert_eq!(stored.len(), 2);
    for raw in &stored {
        let ids: Vec<_> = stamps(raw)
            .into_iter()
            .map(|field| field.authserv_id.unwrap_or_default())
            .collect();
        assert_eq!(ids, [STACK_AUTHSERV_ID, "other.example"], "{}", text(raw));
    }
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("2 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 1 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND to_address = '{signed_customer}'"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{unsigned_customer}' \
                 AND reason = '{}'",
                not_vouched(&unsigned_customer, "dkim=none")
            ))
            .await,
        1
    );
}

/// `check`'s notice that the server stamps nothing is there for mail delivered unstamped and gone
/// once mail arrives through the MX, whose stamp says only `dkim=none`.
#[tokio::test]
async fn check_gives_no_stamp_notice_for_mail_through_the_mx() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let notice = "acknowledgements suppressed: the server stamps no Authentication-Results";
    let customer = a_customer();
    deliver_lmtp_unstamped(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Unstamped", &unique("n"), ""),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let checked = assert_ok(&case.run(&["check", "support"]).await);
    assert!(checked.contains(notice), "{checked}");

    deliver_mx(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Through the MX", &unique("m"), ""),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let checked = assert_ok(&case.run(&["check", "support"]).await);
    assert!(!checked.contains(notice), "{checked}");
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason = '{}'",
                not_vouched(&customer, "dkim=none")
            ))
            .await,
        1
    );
}
