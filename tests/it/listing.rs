//! The folder listing under change: mail delivered or expunged while a sweep lists the folder
//! neither fails the sweep nor is lost or ingested twice. The worker is held at the `listing`
//! failpoint, before the listing's first command; Dovecot takes in the change at the end of that
//! command, so it shows between the listing's two commands (`UID SEARCH`, then `UID FETCH`).

use std::time::{Duration, Instant};

use crate::helpers::*;

const HOLD: Duration = Duration::from_millis(4000);

/// Starts `mailintake once` held at the listing's failpoint and returns once it is there.
async fn once_held_in_the_listing(case: &Case) -> (Running, Instant) {
    let running = case.spawn_with(
        &["once"],
        &[(
            "MAILINTAKE_FAILPOINT",
            &format!("listing:1:hold={}", HOLD.as_millis()),
        )],
    );
    let held = format!("failpoint listing reached; holding {} ms", HOLD.as_millis());
    assert!(
        eventually(Duration::from_secs(30), || async {
            running.log().contains(&held)
        })
        .await,
        "`once` never reached its listing's failpoint: {}",
        running.log()
    );
    (running, Instant::now())
}

/// Waits for the held `once` to finish and returns its exit status and log.
async fn finish(mut running: Running) -> (std::process::ExitStatus, String) {
    let status = tokio::time::timeout(Duration::from_secs(60), running.child.wait())
        .await
        .unwrap_or_else(|_| panic!("`once` did not finish: {}", running.log()))
        .expect("wait");
    (status, running.log())
}

async fn stored(case: &Case, message_id: &str) -> i64 {
    case.db
        .count(&format!(
            "SELECT COUNT(*) FROM messages WHERE message_id = '{message_id}'"
        ))
        .await
}

#[tokio::test]
async fn mail_delivered_during_the_listing_neither_fails_the_sweep_nor_is_lost() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let (before, before_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &before).await;

    let (running, held_since) = once_held_in_the_listing(&case).await;
    let (during, during_id) = unique_fixture("latin1.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &during).await;
    assert!(
        held_since.elapsed() < HOLD,
        "the delivery took longer than the hold; it did not come during the listing"
    );
    let (status, log) = finish(running).await;
    assert!(
        status.success(),
        "mail delivered during the listing failed the sweep: {log}"
    );
    assert_eq!(stored(&case, &before_id).await, 1, "{log}");

    // The mail delivered during the listing comes in with this sweep or the next, once.
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(stored(&case, &before_id).await, 1);
    assert_eq!(stored(&case, &during_id).await, 1);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM imap_messages").await, 2);
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert!(
        inbox.len() == 2 && inbox.iter().all(|(_, seen)| *seen),
        "{inbox:?}"
    );
}

#[tokio::test]
async fn a_message_expunged_during_the_listing_is_not_an_error() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let (kept, kept_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &kept).await;
    let (gone, gone_id) = unique_fixture("latin1.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &gone).await;

    let (running, held_since) = once_held_in_the_listing(&case).await;
    // Someone deletes the second message (UID 2) while the worker lists the folder.
    doveadm(&[
        "expunge",
        "-u",
        &case.mailbox,
        "mailbox",
        "INBOX",
        "uid",
        "2",
    ]);
    assert!(
        held_since.elapsed() < HOLD,
        "the expunge took longer than the hold; it did not come during the listing"
    );
    let (status, log) = finish(running).await;
    assert!(
        status.success(),
        "a message expunged during the listing failed the sweep: {log}"
    );
    assert_eq!(stored(&case, &kept_id).await, 1, "{log}");
    assert_eq!(stored(&case, &gone_id).await, 0, "{log}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM imap_messages").await, 1);
    // Nothing is held against the folder: no message counted as stuck.
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM stuck_messages").await,
        0,
        "{log}"
    );
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
}
