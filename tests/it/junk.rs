//! `mailintake junk list|release` against the real Dovecot: header fields only, a clear answer
//! for a missing folder or UID, and a released message ingested as ordinary mail; and the Junk
//! check of `run`, which a shutdown waits for so that its session logs out.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::ops::enable_http;

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

#[tokio::test]
async fn shutdown_during_the_junk_check_waits_for_it_to_log_out() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    enable_http(&case, "");
    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Junk"]);
    let (spam, _) = unique_fixture("latin1.eml");
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Junk"], &spam);

    // The Junk check of `run` (with [http]) starts at once; hold its first listing, logged in.
    let hold = Duration::from_millis(5000);
    let running = case.spawn_run_with(&[(
        "MAILINTAKE_FAILPOINT",
        &format!("junk-listing:1:hold={}", hold.as_millis()),
    )]);
    let held = format!(
        "failpoint junk-listing reached; holding {} ms",
        hold.as_millis()
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            running.log().contains(&held)
        })
        .await,
        "the Junk check never reached its listing: {}",
        running.log()
    );
    let held_since = Instant::now();
    // The folder task's session is open too (its first sweep is done, it idles).
    assert!(
        eventually(Duration::from_secs(30), || async {
            running.log().contains("sweep done")
        })
        .await,
        "{}",
        running.log()
    );
    assert!(
        held_since.elapsed() < hold,
        "the first sweep took longer than the hold; SIGTERM would not come during the listing: {}",
        running.log()
    );

    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    let (logins, ends) = dovecot_session_ends(&case.mailbox).await;
    assert!(
        logins >= 2,
        "the folder task and the Junk check each logged in: {logins} login(s); {log}"
    );
    assert_eq!(ends.len(), logins, "every session ended: {ends:#?}");
    assert!(
        ends.iter().all(|l| l.contains("Disconnected: Logged out")),
        "every session of the mailbox ended with LOGOUT: {ends:#?}\n{log}"
    );
}
