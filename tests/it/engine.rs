//! The intake engine against real Dovecot: crashes between commit and disposition, shadow mode,
//! delete, first-start policy, batching, IDLE, dropped sessions, UIDVALIDITY changes, SIGTERM.

use std::time::Duration;

use crate::helpers::*;

async fn deliver_fixtures(case: &Case, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        let (raw, id) = unique_fixture(name);
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
        ids.push(id);
    }
    ids
}

async fn folder_exists(case: &Case, folder: &str) -> bool {
    let mut conn = imap_session(&case.entra, &case.mailbox).await;
    let exists = conn.examine(folder).await.is_ok();
    conn.logout().await;
    exists
}

#[tokio::test]
async fn a_crash_between_commit_and_disposition_is_completed_on_restart() {
    let case = Case::new(Backend::Sqlite, "dispose = \"move\"", "implicit").await;
    deliver_fixtures(&case, &["plain.eml", "latin1.eml", "attachment.eml"]).await;

    // The worker dies (abort, like kill -9) right after committing the batch.
    let out = case
        .run_with(&["once"], &[("MAILINTAKE_FAILPOINT", "after-commit")])
        .await;
    assert!(!out.status.success(), "the failpoint must stop the process");
    assert!(
        text(&out.stderr).contains("failpoint after-commit"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL")
            .await,
        3
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .len(),
        3
    );

    // The next run finishes the dispositions and creates nothing twice.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    assert!(
        stdout.contains("3 earlier disposition(s) completed"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, 3);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL")
            .await,
        0
    );
    assert!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Processed")
            .await
            .len(),
        3
    );
}

/// The `deleted=` counts of this mailbox's finished IMAP sessions, from Dovecot's log.
async fn dovecot_deleted_counts(mailbox: &str) -> Vec<u64> {
    let log = format!("{}/dovecot/dovecot.log", Stack::get().var("MAILSTACK_DIR"));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("imap({mailbox})")) && l.contains("Disconnected"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("deleted="))?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test]
async fn without_move_messages_are_copied_flagged_and_expunged() {
    let case = Case::new(Backend::Sqlite, "dispose = \"move\"", "nomove").await;
    deliver_fixtures(&case, &["plain.eml", "attachment.eml"]).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Processed")
            .await
            .len(),
        2
    );
    // The fallback flagged the originals \Deleted (a MOVE would not have).
    let _ = dovecot_bytes_out(&case.mailbox, 3).await;
    let deleted = dovecot_deleted_counts(&case.mailbox).await;
    assert!(deleted.contains(&2), "deleted= per session: {deleted:?}");
}

#[tokio::test]
async fn with_move_nothing_is_flagged_deleted() {
    let case = Case::new(Backend::Sqlite, "dispose = \"move\"", "implicit").await;
    deliver_fixtures(&case, &["plain.eml", "attachment.eml"]).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Processed")
            .await
            .len(),
        2
    );
    let _ = dovecot_bytes_out(&case.mailbox, 2).await;
    let deleted = dovecot_deleted_counts(&case.mailbox).await;
    assert!(
        deleted.iter().all(|d| *d == 0),
        "deleted= per session: {deleted:?}"
    );
}

#[tokio::test]
async fn shadow_mode_writes_tickets_and_touches_nothing() {
    let case = Case::new(
        Backend::Sqlite,
        "mode = \"shadow\"\ndispose = \"move\"\nmax_message_bytes = 4096",
        "implicit",
    )
    .await;
    deliver_fixtures(&case, &["plain.eml", "html_only.eml"]).await;
    let (big, _) = large_message(&case.mailbox, 20_000);
    deliver_lmtp(&case.mailbox, "big@customer.test", &big).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("2 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    // Nothing changed on the server: all three unseen in the inbox, no folders created.
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox.len(), 3);
    assert!(inbox.iter().all(|(_, seen)| !seen), "{inbox:?}");
    assert!(!folder_exists(&case, "Processed").await);
    assert!(!folder_exists(&case, "Quarantine").await);
    // A second run does not ingest them again.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
}

#[tokio::test]
async fn delete_disposition_expunges_only_what_was_ingested() {
    let case = Case::new(Backend::Sqlite, "dispose = \"delete\"", "starttls").await;
    deliver_fixtures(&case, &["plain.eml", "attachment.eml"]).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    assert!(!folder_exists(&case, "Processed").await);
}

#[tokio::test]
async fn first_start_now_leaves_existing_mail_alone() {
    let case = Case::new(Backend::Sqlite, "first_start = \"now\"", "implicit").await;
    deliver_fixtures(&case, &["plain.eml", "latin1.eml"]).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 0);

    deliver_fixtures(&case, &["attachment.eml"]).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    // The two old messages are untouched (unseen); only the new one was disposed of.
    assert_eq!(
        inbox.iter().filter(|(_, seen)| *seen).count(),
        1,
        "{inbox:?}"
    );
    assert_eq!(
        inbox.iter().filter(|(_, seen)| !seen).count(),
        2,
        "{inbox:?}"
    );
}

async fn many_messages_in_small_batches(backend: Backend) {
    let case = Case::new(
        backend,
        "fetch_batch_messages = 4\nfetch_batch_bytes = 3000",
        "implicit",
    )
    .await;
    let names: Vec<&str> = ["plain.eml", "latin1.eml", "attachment.eml", "html_only.eml"]
        .iter()
        .cycle()
        .take(22)
        .copied()
        .collect();
    deliver_fixtures(&case, &names).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("22 ticket(s)"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 22);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NOT NULL")
            .await,
        22
    );
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert!(inbox.iter().all(|(_, seen)| *seen), "{inbox:?}");
}

#[tokio::test]
async fn many_messages_in_small_batches_on_sqlite() {
    many_messages_in_small_batches(Backend::Sqlite).await;
}

#[tokio::test]
async fn many_messages_in_small_batches_on_postgres() {
    many_messages_in_small_batches(Backend::Postgres).await;
}

#[tokio::test]
async fn uidvalidity_change_resyncs_by_message_id_without_duplicates() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    deliver_fixtures(&case, &["plain.eml", "latin1.eml"]).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);

    doveadm(&[
        "mailbox",
        "update",
        "-u",
        &case.mailbox,
        "--uid-validity",
        "4242",
        "INBOX",
    ]);
    deliver_fixtures(&case, &["attachment.eml"]).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 ticket(s), 0 follow-up(s), 2 duplicate(s)"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM mailbox_state WHERE uidvalidity = 4242 AND last_uid = 3")
            .await,
        1
    );
}

#[tokio::test]
async fn idle_ingests_new_mail_without_waiting_for_a_poll() {
    let case = Case::new(Backend::Sqlite, "poll_interval = \"10m\"", "implicit").await;
    let running = case.spawn_run();
    // The first sweep has run once the checkpoint exists; the worker is idling after it.
    let started = case
        .wait_for_count(
            "SELECT COUNT(*) FROM mailbox_state",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert!(started, "no first sweep: {}", running.log());

    deliver_fixtures(&case, &["plain.eml"]).await;
    let arrived = case
        .wait_for_count("SELECT COUNT(*) FROM tickets", 1, Duration::from_secs(10))
        .await;
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(
        arrived,
        "mail delivered while idling made no ticket within 10 s: {log}"
    );
    assert!(status.success(), "{status}: {log}");
}

#[tokio::test]
async fn a_dropped_session_is_reconnected_and_nothing_is_lost() {
    let case = Case::new(Backend::Sqlite, "poll_interval = \"10m\"", "implicit").await;
    let running = case.spawn_run();
    let started = case
        .wait_for_count(
            "SELECT COUNT(*) FROM mailbox_state",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert!(started, "no first sweep: {}", running.log());

    // The server drops the idling session (as Exchange does when a token expires).
    doveadm(&["kick", &case.mailbox]);
    deliver_fixtures(&case, &["plain.eml", "latin1.eml"]).await;
    let arrived = case
        .wait_for_count("SELECT COUNT(*) FROM tickets", 2, Duration::from_secs(20))
        .await;
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(arrived, "no tickets after the session was dropped: {log}");
    assert!(log.contains("reconnecting"), "{log}");
    assert!(status.success(), "{status}: {log}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
}

#[tokio::test]
async fn sigterm_during_ingestion_stops_at_a_safe_point() {
    let case = Case::new(
        Backend::Sqlite,
        "fetch_batch_messages = 2\npoll_interval = \"10m\"\nmax_new_tickets_per_sender_per_hour = 0",
        "implicit",
    )
    .await;
    let names: Vec<&str> = ["plain.eml", "latin1.eml", "attachment.eml"]
        .iter()
        .cycle()
        .take(90)
        .copied()
        .collect();
    deliver_fixtures(&case, &names).await;

    let running = case.spawn_run();
    let begun = case
        .wait_for_count("SELECT COUNT(*) FROM tickets", 1, Duration::from_secs(30))
        .await;
    assert!(begun, "ingestion did not start: {}", running.log());
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {log}");
    // Whatever was committed was also disposed of: no outcome is left half done.
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL")
            .await,
        0,
        "{log}"
    );
    // The rest is taken on the next run, without duplicates.
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 90);
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM imap_messages").await,
        90
    );
}

#[tokio::test]
async fn each_watched_folder_is_ingested_with_its_own_checkpoint() {
    let case = Case::new(
        Backend::Sqlite,
        "folders = [\"INBOX\", \"Support/Urgent\"]",
        "implicit",
    )
    .await;
    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Support/Urgent"]);
    let (urgent, urgent_id) = unique_fixture("latin1.eml");
    doveadm_with_input(
        &["save", "-u", &case.mailbox, "-m", "Support/Urgent"],
        &urgent,
    );
    deliver_fixtures(&case, &["plain.eml"]).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("support/INBOX: 1 new message(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("support/Support/Urgent: 1 new message(s)"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM imap_messages WHERE folder = 'Support/Urgent' AND message_id = '{urgent_id}'"
            ))
            .await,
        1
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM mailbox_state").await, 2);
}

#[tokio::test]
async fn the_session_is_renewed_with_a_fresh_token_before_the_old_one_expires() {
    // Tokens live 4 s: the worker must log in again with a new one, and keep ingesting.
    let case = Case::with_token_lifetime(
        Backend::Sqlite,
        "poll_interval = \"10m\"",
        "implicit",
        Duration::from_secs(4),
    )
    .await;
    let running = case.spawn_run();
    let renewed = eventually(Duration::from_secs(20), || async {
        case.entra.fake.requests().len() >= 3
    })
    .await;
    deliver_fixtures(&case, &["plain.eml"]).await;
    let arrived = case
        .wait_for_count("SELECT COUNT(*) FROM tickets", 1, Duration::from_secs(15))
        .await;
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(renewed, "fewer than 3 token requests in 20 s: {log}");
    assert!(log.contains("due for renewal"), "{log}");
    assert!(arrived, "no ticket after token renewals: {log}");
    assert!(status.success(), "{status}: {log}");
}

#[tokio::test]
async fn a_message_the_server_cannot_deliver_is_set_aside_and_does_not_block_the_folder() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let (bad, _) = large_message(&case.mailbox, 20_000);
    deliver_lmtp(&case.mailbox, "big@customer.test", &bad).await;
    // Corrupt the first message's size in its Maildir file name: Dovecot then fails every FETCH
    // of its body (and drops the connection), as a broken server would.
    let (local, domain) = case.mailbox.split_once('@').unwrap();
    let new_dir = std::path::Path::new(Stack::get().var("MAILSTACK_MAIL_ROOT"))
        .join(domain)
        .join(local)
        .join("new");
    let file = std::fs::read_dir(&new_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let base = name.split(",S=").next().unwrap();
    std::fs::rename(&file, new_dir.join(format!("{base},S=1000,W=1000"))).unwrap();
    let (good, good_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &good).await;

    // A few failing sweeps, then the bad one is set aside and the good one comes in.
    let mut runs = 0;
    let through = eventually(Duration::from_secs(60), || {
        runs += 1;
        async {
            let _ = case.run(&["once"]).await;
            case.db
                .count_or_zero("SELECT COUNT(*) FROM quarantine WHERE reason = 'unreadable'")
                .await
                == 1
        }
    })
    .await;
    assert!(through, "the bad message was never set aside");
    // With it out of the way, a sweep runs clean.
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    let q: Vec<(String, Option<String>)> = sqlx::query_as("SELECT reason, detail FROM quarantine")
        .fetch_all(&pool)
        .await
        .unwrap();
    let o: Vec<(i64, String)> = sqlx::query_as("SELECT uid, outcome FROM imap_messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(runs >= 3, "set aside too early ({runs} runs): {q:?} {o:?}");
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{good_id}'"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'unreadable' AND raw IS NULL")
            .await,
        1
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM mailbox_state WHERE stuck_uid IS NULL")
            .await,
        1
    );
}
