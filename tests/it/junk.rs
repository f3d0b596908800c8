//! `mailintake junk list|release` against the real Dovecot: header fields only, a clear answer
//! for a missing folder or UID, and a released message ingested as ordinary mail.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn junk_mail_is_listed_from_headers_and_a_released_message_becomes_a_ticket() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;

    // No Junk folder yet: said plainly, not an error.
    let listing = assert_ok(&case.run(&["junk", "list"]).await);
    assert!(listing.contains("has no folder `Junk`"), "{listing}");
    let out = case.run(&["junk", "release", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no folder `Junk`"),
        "{}",
        text(&out.stderr)
    );

    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Junk"]);
    let (real, real_id) = unique_fixture("plain.eml");
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Junk"], &real);
    let (spam, _) = unique_fixture("latin1.eml");
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Junk"], &spam);

    let listing = assert_ok(&case.run(&["junk", "list", "--mailbox", "support"]).await);
    assert!(listing.contains("holds 2 message(s)"), "{listing}");
    assert!(
        listing.contains("alice@customer.test") && listing.contains("Printer on floor 3 is jammed"),
        "{listing}"
    );
    assert!(
        listing.contains("2026-11-23T08:15:00Z"),
        "the Date header, in UTC: {listing}"
    );
    let json = assert_ok(&case.run(&["junk", "list", "--json", "--limit", "1"]).await);
    let items: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 1, "{json}");
    assert_eq!(items[0]["uid"], 2, "newest first: {json}");
    assert!(items[0]["size_bytes"].as_u64().unwrap() > 100);
    // Listing is read-only: nothing was marked \Seen.
    assert!(
        folder_contents(&case.entra, &case.mailbox, "Junk")
            .await
            .iter()
            .all(|(_, seen)| !seen)
    );
    let out = case.run(&["junk", "list", "--mailbox", "sales"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no mailbox `sales`"),
        "{}",
        text(&out.stderr)
    );

    let out = case.run(&["junk", "release", "99"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no message with UID 99 in `Junk`"),
        "{}",
        text(&out.stderr)
    );
    let moved = assert_ok(&case.run(&["junk", "release", "1"]).await);
    assert!(
        moved.contains("moved UID 1") && moved.contains("to `INBOX`"),
        "{moved}"
    );
    let left: Vec<u32> = folder_contents(&case.entra, &case.mailbox, "Junk")
        .await
        .iter()
        .map(|(uid, _)| *uid)
        .collect();
    assert_eq!(left, [2]);

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{real_id}'"
            ))
            .await,
        1
    );
    // Released once: the UID is gone from Junk.
    let out = case.run(&["junk", "release", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
}
