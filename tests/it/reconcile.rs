//! The reconciliation below the checkpoint against real Dovecot, behind the tests' IMAP proxy: a
//! message the server hides from the listing (as a server does that shows mail late) is found by
//! the next reconciliation, ingested once, and counted; between reconciliations nothing more than
//! the listing's own search is sent.

use std::time::Duration;

use crate::helpers::*;
use crate::imapproxy::ImapProxy;

/// Points the case's IMAP endpoint at the proxy (same host name, so the certificate matches).
fn through(case: &Case, proxy: &ImapProxy) {
    let imaps = Stack::get().port("MAILSTACK_IMAPS_PORT");
    let text = std::fs::read_to_string(&case.config.path).unwrap();
    let text = text.replace(
        &format!("port = {imaps}"),
        &format!("port = {}", proxy.port),
    );
    std::fs::write(&case.config.path, text).unwrap();
}

async fn deliver_three(case: &Case) -> Vec<String> {
    let mut ids = Vec::new();
    for name in ["plain.eml", "latin1.eml", "attachment.eml"] {
        let (raw, id) = unique_fixture(name);
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
        ids.push(id);
    }
    ids
}

/// Before: the UID hidden from the listing's search stayed below the checkpoint for good: two
/// tickets of three, and no later sweep ever looked again.
#[tokio::test]
async fn a_message_shown_late_below_the_checkpoint_is_found_by_the_reconciliation() {
    let case = Case::new(
        Backend::Sqlite,
        "dispose = \"seen\"\nreconcile_interval = \"1h\"",
        "implicit",
    )
    .await;
    let proxy = ImapProxy::start().await;
    through(&case, &proxy);
    let ids = deliver_three(&case).await;
    // UID 2 is missing from the first search, the listing's: the sweep commits 1 and 3, and the
    // checkpoint passes 2.
    proxy.hide_from_searches(2, 1);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert_eq!(proxy.hidden(), 1, "the listing's search had UID 2 hidden");
    assert!(
        stdout.contains("1 found below the checkpoint by the reconciliation"),
        "the first sweep's reconciliation (never done before) finds it: {stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    for id in &ids {
        assert_eq!(
            case.db
                .count(&format!(
                    "SELECT COUNT(*) FROM messages WHERE message_id = '{id}'"
                ))
                .await,
            1,
            "{id} ingested once"
        );
    }
    let searches = proxy.searches();
    assert_eq!(searches.len(), 2, "{searches:?}");
    assert!(
        searches[1].ends_with("UID SEARCH UID 1:3 UNSEEN"),
        "dispose = \"seen\": only unseen mail can be a gap: {searches:?}"
    );
    let seen: Vec<bool> = folder_contents(&case.entra, &case.mailbox, "INBOX")
        .await
        .into_iter()
        .map(|(_, seen)| seen)
        .collect();
    assert_eq!(seen, vec![true, true, true], "all three disposed of");

    // Within the interval the next sweep only lists; the one after it is due again.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    assert_eq!(proxy.searches().len(), 3, "{:?}", proxy.searches());
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ticket'")
            .await,
        3
    );
}

/// A gap found by a reconciliation that a later one finds again is not ingested twice; with
/// dispose = "move" the search covers every UID up to the checkpoint.
#[tokio::test]
async fn the_reconciliation_searches_every_uid_when_processed_mail_leaves_the_folder() {
    let case = Case::new(
        Backend::Postgres,
        "dispose = \"move\"\nreconcile_interval = \"1s\"",
        "implicit",
    )
    .await;
    let proxy = ImapProxy::start().await;
    through(&case, &proxy);
    deliver_three(&case).await;
    // Hidden from the first two searches that would show it, both sweeps' listings: the first
    // reconciliation searches only up to the checkpoint then (2), the second one finds it.
    proxy.hide_from_searches(3, 2);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(!stdout.contains("by the reconciliation"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    let searches = proxy.searches();
    assert!(
        searches.last().unwrap().ends_with("UID SEARCH UID 1:2"),
        "the checkpoint was 2 after the listing without UID 3: {searches:?}"
    );
    // The next delivery lifts the checkpoint past the hidden one.
    let (raw, _) = unique_fixture("thunderbird.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 found below the checkpoint by the reconciliation"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 4);
    assert!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(!stdout.contains("by the reconciliation"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, 4);
}

/// A message found late that the server cannot deliver follows the rules of any message that
/// waits: the mail around it is in, it is tried alone, and after three lost connections and
/// `unreadable_after` it is set aside; the sweeps after that run clean.
///
/// Before: the gap was fetched outside those rules. Each sweep's reconciliation, still due
/// because the last one never finished, lost the connection on it again, so every sweep failed
/// (`once` exited 1 for good) and the message was never set aside.
#[tokio::test]
async fn a_message_shown_late_that_breaks_the_connection_waits_and_is_set_aside_like_any_other() {
    let case = Case::new(
        Backend::Sqlite,
        "reconcile_interval = \"1h\"\nunreadable_after = \"1s\"",
        "implicit",
    )
    .await;
    let proxy = ImapProxy::start().await;
    through(&case, &proxy);
    let ids = deliver_three(&case).await;
    proxy.hide_from_searches(2, 1);
    // Dovecot may not open UID 2's file: a FETCH of its body gets `* BYE` and the session ends.
    set_mode(&maildir_file_of(&case.mailbox, &ids[1]), 0o000);

    let mut runs = Vec::new();
    let started = std::time::Instant::now();
    let mut set_aside = false;
    while !set_aside && started.elapsed() < Duration::from_secs(60) {
        let out = case.run(&["once"]).await;
        runs.push((out.status.success(), text(&out.stderr)));
        set_aside = case
            .db
            .count_or_zero("SELECT COUNT(*) FROM quarantine WHERE reason = 'unreadable'")
            .await
            == 1;
    }
    let logs: Vec<&str> = runs.iter().map(|(_, log)| log.as_str()).collect();
    assert!(set_aside, "never set aside: {logs:#?}");
    assert_eq!(proxy.hidden(), 1);
    let failed = runs.iter().filter(|(ok, _)| !*ok).count();
    assert_eq!(
        failed, 3,
        "one lost connection per sweep, three in all: {logs:#?}"
    );
    assert!(
        logs[0].contains("it waits and is tried again alone"),
        "the first lost connection already counts against it: {logs:#?}"
    );
    // The sweeps after it run clean, and nothing is asked of the server again.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(!stdout.contains("by the reconciliation"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM stuck_messages").await,
        0
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM mailbox_state WHERE alone_from IS NOT NULL")
            .await,
        0
    );
    let quarantined = folder_contents(&case.entra, &case.mailbox, "Quarantine").await;
    assert_eq!(quarantined.len(), 1, "moved to the quarantine folder");
}
