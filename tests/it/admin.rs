//! The admin commands: quarantine list/show/release, outbox list/retry/cancel, ticket.

use crate::helpers::*;

#[tokio::test]
async fn a_too_large_message_released_with_a_higher_limit_becomes_a_ticket() {
    let case = Case::new(Backend::Sqlite, "max_message_bytes = 4096", "implicit").await;
    let (big, big_id) = large_message(&case.mailbox, 20_000);
    deliver_lmtp(&case.mailbox, "big@customer.test", &big).await;
    assert_ok(&case.run(&["once"]).await);
    let listing = assert_ok(&case.run(&["quarantine", "list"]).await);
    assert!(
        listing.contains("too-large") && listing.contains("A very large log file"),
        "{listing}"
    );
    let shown = assert_ok(&case.run(&["quarantine", "show", "1"]).await);
    assert!(shown.contains(&big_id), "{shown}");

    // Without a higher limit it would only be quarantined again: refused, with the fix.
    let out = case.run(&["quarantine", "release", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--max-bytes"),
        "{}",
        text(&out.stderr)
    );

    assert_ok(
        &case
            .run(&["quarantine", "release", "1", "--max-bytes", "100000"])
            .await,
    );
    assert!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .is_empty()
    );
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 ticket(s)") && stdout.contains("0 quarantined"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{big_id}' AND size_bytes > 19000"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE release_used_at IS NOT NULL")
            .await,
        1
    );
    // Released once: released again it is refused.
    let out = case
        .run(&["quarantine", "release", "1", "--max-bytes", "100000"])
        .await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_rate_limited_message_released_gets_its_ticket() {
    let case = Case::new(
        Backend::Postgres,
        "max_new_tickets_per_sender_per_hour = 1",
        "implicit",
    )
    .await;
    for name in ["plain.eml", "attachment.eml"] {
        let (raw, _) = unique_fixture(name);
        // Both from the same sender.
        let raw = text(&raw).replace(
            "Erik <erik@customer.test>",
            "Alice Example <alice@customer.test>",
        );
        deliver_lmtp(&case.mailbox, "alice@customer.test", raw.as_bytes()).await;
    }
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    assert_ok(&case.run(&["quarantine", "release", "1"]).await);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);

    let shown = assert_ok(&case.run(&["ticket", "2"]).await);
    assert!(shown.contains("TCK-000002"), "{shown}");
    assert!(
        shown.contains("attachment") && shown.contains("error.png"),
        "{shown}"
    );
    assert!(shown.contains("See the attached screenshot."), "{shown}");
}

#[tokio::test]
async fn outbox_rows_can_be_listed_retried_and_cancelled() {
    // The stack's Postfix refuses `unknown-…@customer.test` with 5.1.1: that row fails.
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    assert_ok(&case.run(&["once"]).await);
    next_second().await;
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "unknown-alice@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);

    let listing = assert_ok(&case.run(&["outbox", "list", "--state", "failed"]).await);
    assert!(
        listing.contains("failed") && listing.contains("alice@customer.test"),
        "{listing}"
    );
    assert_ok(&case.run(&["outbox", "retry", "1"]).await);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            .await,
        1
    );
    assert_ok(&case.run(&["outbox", "cancel", "1"]).await);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'cancelled'")
            .await,
        1
    );
    let out = case.run(&["outbox", "cancel", "999"]).await;
    assert_eq!(out.status.code(), Some(1));
}
