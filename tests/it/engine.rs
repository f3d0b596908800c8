//! The intake engine against real Dovecot: crashes between commit and disposition, shadow mode,
//! delete, first-start policy, batching, IDLE, dropped sessions, UIDVALIDITY changes, SIGTERM, a
//! message larger than its announced size.

use std::path::Path;
use std::time::Duration;

use sqlx::Row;

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

/// Two workers on one mailbox at once (a second instance started by mistake, or a deployment's
/// overlap): they race for the same UIDs and Message-IDs, yet every message ends as exactly one
/// outcome, one ticket, one message row.
async fn two_workers_at_once_duplicate_nothing(backend: Backend) {
    const N: usize = 40;
    let case = Case::new(backend, "fetch_batch_messages = 3", "implicit").await;
    assert_ok(&case.run(&["migrate"]).await);
    let names: Vec<&str> = ["plain.eml", "latin1.eml", "attachment.eml", "html_only.eml"]
        .iter()
        .cycle()
        .take(N)
        .copied()
        .collect();
    let ids = deliver_fixtures(&case, &names).await;
    let (first, second) = tokio::join!(case.run(&["once"]), case.run(&["once"]));
    assert_ok(&first);
    assert_ok(&second);
    let n = N as i64;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM imap_messages").await, n);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, n);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, n);
    assert_eq!(
        case.db
            .count("SELECT COUNT(DISTINCT message_id) FROM messages")
            .await,
        n
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome <> 'ticket'")
            .await,
        0
    );
    // Every attachment row belongs to a stored message, none twice.
    assert_eq!(
        case.db
            .count(
                "SELECT COUNT(*) FROM attachments a WHERE NOT EXISTS \
                 (SELECT 1 FROM messages m WHERE m.id = a.message_id)"
            )
            .await,
        0
    );
    let pool = case.db.pool().await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT message_id FROM messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    for id in &ids {
        assert!(stored.iter().any(|(s,)| s == id), "{id} was lost");
    }
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox.len(), N);
    assert!(inbox.iter().all(|(_, seen)| *seen), "{inbox:?}");
}

/// One worker per SQLite database: a second `once` beside a running `run` is refused, naming
/// the first, and changes nothing; the other commands work beside it; once the first has
/// stopped, the next `once` runs.
///
/// Before: the second worker ran on the same file, racing the first for every UID (safe, but
/// double the downloads and the server's connections); nothing said that a second one ran.
#[tokio::test]
async fn a_second_worker_on_one_sqlite_database_is_refused_naming_the_first() {
    let case = Case::new(Backend::Sqlite, "poll_interval = \"1s\"", "implicit").await;
    let running = case.spawn_run();
    deliver_fixtures(&case, &["plain.eml"]).await;
    assert!(
        case.wait_for_count("SELECT COUNT(*) FROM tickets", 1, Duration::from_secs(20))
            .await,
        "the running worker took the mail in"
    );
    let second = case.run(&["once"]).await;
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another mailintake worker is running on the SQLite database")
            && stderr.contains("`run`")
            && stderr.contains("pid "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("access token obtained"),
        "refused before it did anything: {stderr}"
    );
    // Reading beside the worker works.
    assert_ok(&case.run(&["tickets"]).await);
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {log}");
    assert_ok(&case.run(&["once"]).await);
}

#[tokio::test]
async fn two_workers_at_once_duplicate_nothing_on_postgres() {
    two_workers_at_once_duplicate_nothing(Backend::Postgres).await;
}

#[tokio::test]
async fn uidvalidity_change_resyncs_by_message_id_without_duplicates() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    deliver_fixtures(&case, &["plain.eml", "latin1.eml"]).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM mailbox_state WHERE first_uid_next = 3")
            .await,
        1
    );

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
            .count(
                "SELECT COUNT(*) FROM mailbox_state WHERE uidvalidity = 4242 AND last_uid = 3 \
                 AND first_uid_next = 4"
            )
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
    let case = Case::new(Backend::Sqlite, "unreadable_after = \"1s\"", "implicit").await;
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

    // A few failing sweeps (Dovecot ends the session each time the message alone is fetched:
    // three in a row make it the message's trouble), then the bad one is set aside; the good one
    // comes in meanwhile.
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
        case.db.count("SELECT COUNT(*) FROM stuck_messages").await,
        0
    );
}

/// Writes `raw` into `mailbox`'s Maildir as a file whose name carries no `S=`/`W=` size, so
/// Dovecot has to learn the message's size from the file (and then keeps it in its index cache).
/// Returns the file's base name.
fn write_maildir_message(mailbox: &str, raw: &[u8]) -> String {
    let dir = maildir_of(mailbox);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = format!("{secs}.{}.mailintake-it", unique("m"));
    let owner = std::fs::metadata(&dir).unwrap();
    let tmp = dir.join("tmp").join(&base);
    std::fs::write(&tmp, raw).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::rename(&tmp, dir.join("new").join(&base)).unwrap();
    base
}

fn maildir_of(mailbox: &str) -> std::path::PathBuf {
    let (local, domain) = mailbox.split_once('@').unwrap();
    std::path::Path::new(Stack::get().var("MAILSTACK_MAIL_ROOT"))
        .join(domain)
        .join(local)
}

/// The path of the Maildir file `base` (in `new/` or, once Dovecot has seen it, `cur/`).
fn maildir_file(mailbox: &str, base: &str) -> std::path::PathBuf {
    let dir = maildir_of(mailbox);
    ["cur", "new"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).unwrap())
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(':').next() == Some(base))
        })
        .unwrap_or_else(|| panic!("no Maildir file {base} for {mailbox}"))
}

/// Exchange announces an estimated RFC822.SIZE; a message can turn out larger than announced.
/// Dovecot announces the size in its index cache, so the test makes the real size change between
/// the worker's listing and its body fetch: the worker is held on a PostgreSQL lock while it
/// commits the first batch, the message's file grows and its cache record is dropped
/// (`doveadm mailbox cache remove`); Dovecot then delivers the capped partial body
/// `BODY.PEEK[]<0.N>` of the real, larger message. It must be quarantined as too large without
/// being downloaded whole, and the mail around it in its batch must become tickets.
#[tokio::test]
async fn a_message_larger_than_its_announced_size_is_quarantined_after_a_capped_fetch() {
    const LIMIT: u64 = 16 * 1024;
    const REAL_SIZE: usize = 400_000;
    let case = Case::new(
        Backend::Postgres,
        &format!("max_message_bytes = {LIMIT}\nfetch_batch_messages = 3"),
        "implicit",
    )
    .await;
    assert_ok(&case.run(&["migrate"]).await);

    // Batch 1: three messages (their commit is where the worker is held).
    // Batch 2: three more (the worker downloads the batch after the one it writes, so this one may
    // be downloaded while it is held).
    // Batch 3: before, the message that grows, after.
    let mut first = deliver_fixtures(&case, &["plain.eml", "latin1.eml", "attachment.eml"]).await;
    first.extend(deliver_fixtures(&case, &["plain.eml", "latin1.eml", "attachment.eml"]).await);
    let before = deliver_fixtures(&case, &["plain.eml"]).await;
    let (announced, grown_id) = large_message(&case.mailbox, 6_000);
    assert!((announced.len() as u64) < LIMIT);
    let base = write_maildir_message(&case.mailbox, &announced);
    // Let Dovecot assign it its UID before the next delivery, so it sits between the two.
    let uids = doveadm(&["search", "-u", &case.mailbox, "mailbox", "INBOX", "all"]);
    let grown_uid = uids
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("doveadm search: {uids}"))
        .to_string();
    assert_eq!(uids.lines().count(), 8, "{uids}");
    let after = deliver_fixtures(&case, &["html_only.eml"]).await;

    // Hold the worker: inserting a ticket waits for this lock (reads do not).
    let mut lock_conn = {
        use sqlx::Connection;
        sqlx::AnyConnection::connect(&case.db.url).await.unwrap()
    };
    let lock = {
        use sqlx::Connection;
        let mut tx = lock_conn.begin().await.unwrap();
        sqlx::query("LOCK TABLE tickets IN SHARE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    };

    let steer = async {
        // The worker has listed the folder (sizes as announced) and waits on the lock in batch 1.
        let held = eventually(Duration::from_secs(30), || async {
            case.db
                .count(
                    "SELECT COUNT(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .await
                == 1
        })
        .await;
        // The message grows to its real size and Dovecot forgets the size it had cached.
        let path = maildir_file(&case.mailbox, &base);
        let (real, _) = large_message(&case.mailbox, REAL_SIZE);
        let extra = &real[real.len() - (REAL_SIZE - announced.len())..];
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            file.write_all(extra).unwrap();
        }
        doveadm(&[
            "mailbox",
            "cache",
            "remove",
            "-u",
            &case.mailbox,
            "mailbox",
            "INBOX",
            "uid",
            &grown_uid,
        ]);
        lock.rollback().await.unwrap();
        held
    };
    let (out, held) = tokio::join!(case.run(&["once"]), steer);
    let stdout = assert_ok(&out);
    assert!(held, "the worker never waited on the lock: {stdout}");
    assert!(
        stdout.contains("8 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );

    // In the quarantine folder Dovecot reports the real size, which the worker never read in full.
    let sizes = doveadm(&[
        "fetch",
        "-u",
        &case.mailbox,
        "size.virtual",
        "mailbox",
        "Quarantine",
        "all",
    ]);
    assert_eq!(sizes.trim(), format!("size.virtual: {REAL_SIZE}"));
    let sent: u64 = dovecot_bytes_out(&case.mailbox, 1).await.iter().sum();
    let others: u64 = [
        "plain.eml",
        "latin1.eml",
        "attachment.eml",
        "plain.eml",
        "latin1.eml",
        "attachment.eml",
        "plain.eml",
        "html_only.eml",
    ]
    .iter()
    .map(|name| fixture(name).len() as u64)
    .sum();
    assert!(
        sent <= others + LIMIT + 1 + 64 * 1024,
        "Dovecot sent {sent} bytes: more than the other mail ({others}), the cap ({LIMIT}) and the protocol"
    );

    let pool = case.db.pool().await;
    let quarantined: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT reason, message_id, detail FROM quarantine")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].0, "too-large");
    assert_eq!(quarantined[0].1.as_deref(), Some(grown_id.as_str()));
    assert!(
        quarantined[0].2.contains(&format!(
            "turned out larger than max_message_bytes = {LIMIT}"
        )),
        "{}",
        quarantined[0].2
    );
    let tickets: Vec<(String,)> = sqlx::query_as("SELECT message_id FROM messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    for id in first.iter().chain(&before).chain(&after) {
        assert!(
            tickets.iter().any(|(t,)| t == id),
            "{id} is not a ticket: {tickets:?}"
        );
    }
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .len(),
        8
    );
}

/// A folder task that panics (a bug) is started again with backoff, and the panic is shown: the
/// mail waiting in the folder still comes in, and `/metrics` counts the panic (the folder's state
/// and last error show it on the status page while the task waits to start again).
#[tokio::test]
async fn a_folder_task_that_panics_is_restarted_and_the_panic_shown() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let base = crate::ops::enable_http(&case, "");
    let (raw, id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
    let running = case.spawn_run_with(&[("MAILINTAKE_FAILPOINT", "sweep-start:1:panic")]);
    assert!(
        case.wait_for_count(
            &format!("SELECT COUNT(*) FROM messages WHERE message_id = '{id}'"),
            1,
            Duration::from_secs(60)
        )
        .await,
        "the mail never came in after the panic: {}",
        running.log()
    );
    let (_, metrics) = crate::ops::get(&format!("{base}/metrics"), None).await;
    assert!(
        metrics.contains(r#"mailintake_cycle_errors_total{mailbox="support",kind="panic"} 1"#),
        "{metrics}"
    );
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("the task panicked"), "{log}");
}

/// Makes a maildir folder writable or not for Dovecot (which runs as the mail user, not root).
fn set_writable(dir: &Path, writable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if writable { 0o700 } else { 0o500 };
    for sub in ["", "cur", "new", "tmp"] {
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Before: the refused MOVE failed the sweep, the next sweep failed again completing it, and
/// no mail after it became a ticket (the folder stopped, its state `retrying`).
#[tokio::test]
async fn a_move_the_server_refuses_is_recorded_and_shown_and_the_folder_goes_on() {
    let case = Case::new(
        Backend::Sqlite,
        "dispose = \"move\"\npoll_interval = \"1s\"",
        "implicit",
    )
    .await;
    let base = crate::ops::enable_http(&case, "");
    // Processed exists, but Dovecot cannot write into it: every MOVE there is refused (NO).
    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Processed"]);
    let processed = maildir_of(&case.mailbox).join(".Processed");
    set_writable(&processed, false);

    deliver_fixtures(&case, &["plain.eml"]).await;
    let running = case.spawn_run();
    let refused_series = "mailintake_dispositions_refused{mailbox=\"support\",folder=\"INBOX\"}";
    let (seen, _, metrics) = crate::ops::get_until(&format!("{base}/metrics"), None, |_, b| {
        b.contains(&format!("{refused_series} 1"))
    })
    .await;
    assert!(seen, "the refusal is a gauge: {metrics}\n{}", running.log());
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    let pool = case.db.pool().await;
    let refusal: String = sqlx::query("SELECT disposition_refusal FROM imap_messages")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    assert!(
        refusal.contains("MOVE"),
        "the server's reply is kept: {refusal}"
    );

    // The folder goes on: later mail becomes tickets while the first still waits.
    deliver_fixtures(&case, &["latin1.eml"]).await;
    assert!(
        case.wait_for_count("SELECT COUNT(*) FROM tickets", 2, Duration::from_secs(60))
            .await,
        "mail after a refused disposition is ingested: {}",
        running.log()
    );
    let (seen, _, ready) = crate::ops::get_until(&format!("{base}/readyz"), None, |_, b| {
        b.contains("\"n_messages\":2")
    })
    .await;
    assert!(seen, "/readyz shows both waiting: {ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let mailbox = &ready["mailboxes"][0];
    assert_eq!(
        ready["status"], "ready",
        "a refusal does not stop the worker"
    );
    assert_eq!(mailbox["state"], "ok", "{mailbox}");
    let refused = &mailbox["refused_dispositions"][0];
    assert_eq!(refused["folder"], "INBOX");
    assert_eq!(refused["disposition"], "move:Processed");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .starts_with("2 message(s) recorded but not moved to Processed: the server refuses ("),
        "{refused}"
    );
    let (_, page) = crate::ops::get(&format!("{base}/"), None).await;
    assert!(
        page.contains("2 message(s) recorded but not moved to Processed"),
        "the status page names it: {page}"
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .len(),
        2,
        "nothing moved while refused"
    );

    // Fixed: the next sweep moves both, and the gauge and the record clear.
    set_writable(&processed, true);
    deliver_fixtures(&case, &["attachment.eml"]).await;
    let (seen, _, metrics) = crate::ops::get_until(&format!("{base}/metrics"), None, |_, b| {
        b.contains(&format!("{refused_series} 0"))
            && b.contains("mailintake_messages_total{mailbox=\"support\",outcome=\"ticket\"} 3")
    })
    .await;
    assert!(seen, "{metrics}\n{}", running.log());
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(
        case.db
            .count(
                "SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL \
                 OR disposition_refusal IS NOT NULL OR disposition_refused_at IS NOT NULL"
            )
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

/// Many folders starting at once log in one after the other, `imap.logins_per_second` apart, not
/// all at once (a login storm servers throttle or refuse).
///
/// Before: every folder task logged in the moment it started: the four logins of this test came
/// within a few tens of milliseconds of each other.
#[tokio::test]
async fn folders_starting_together_log_in_at_the_configured_pace() {
    let case = Case::new(
        Backend::Sqlite,
        "folders = [\"INBOX\", \"Archive\", \"Drafts\", \"Junk Email\"]\npoll_interval = \"10m\"",
        "implicit",
    )
    .await;
    // `[mailboxes.imap]` is the config's last table: a key appended at the end goes into it.
    let text = std::fs::read_to_string(&case.config.path).unwrap();
    std::fs::write(
        &case.config.path,
        format!("{text}\nlogins_per_second = 2\n"),
    )
    .unwrap();
    let running = case.spawn_run_with(&[("RUST_LOG", "mailintake=debug")]);
    let started = case
        .wait_for_count(
            "SELECT COUNT(*) FROM mailbox_state",
            4,
            Duration::from_secs(30),
        )
        .await;
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(started, "not every folder swept: {log}");
    assert!(status.success(), "{status}: {log}");
    // The log lines' timestamps (RFC 3339, microseconds) of the four logins.
    let mut at: Vec<chrono_like::Micros> = log
        .lines()
        .filter(|line| line.contains("logged in"))
        .filter_map(chrono_like::micros_of_line)
        .collect();
    at.sort_unstable();
    assert_eq!(at.len(), 4, "{log}");
    let spread_ms = (at[3] - at[0]) / 1000;
    // Slots 0, 0.5, 1.0 and 1.5 s; each line follows its login's round trip, which differs
    // a little from one login to the next.
    assert!(
        spread_ms >= 1_200,
        "four logins within {spread_ms} ms, at 2 a second: {log}"
    );
}

/// Just enough of an RFC 3339 timestamp at the start of a log line to compare two of them.
mod chrono_like {
    pub type Micros = i64;

    /// `2026-12-02T13:47:27.680818Z …` (after any ANSI colour codes) → microseconds of the day.
    pub fn micros_of_line(line: &str) -> Option<Micros> {
        let start = line.find('T')?;
        let time = line.get(start + 1..start + 16)?;
        let (hms, frac) = time.split_once('.')?;
        let mut parts = hms.split(':').map(|p| p.parse::<i64>());
        let (h, m, s) = (
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next()?.ok()?,
        );
        let micros: i64 = frac.get(..6)?.parse().ok()?;
        Some(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
    }
}
