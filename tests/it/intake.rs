//! Mail in the inbox → `mailintake once`/`run` → ticket rows, on SQLite and PostgreSQL.

use std::time::Duration;

use crate::helpers::*;

async fn once_turns_mail_into_tickets(backend: Backend) {
    let case = Case::new(backend, "", "implicit").await;
    let mut ids = Vec::new();
    for name in ["plain.eml", "latin1.eml", "attachment.eml", "html_only.eml"] {
        let (raw, id) = unique_fixture(name);
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
        ids.push(id);
    }

    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "once failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 ticket(s)"),
        "{}",
        text(&out.stdout)
    );

    let db = &case.db;
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 4);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE direction = 'inbound'")
            .await,
        4
    );
    for id in &ids {
        let n = db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{id}'"
            ))
            .await;
        assert_eq!(n, 1, "message {id} stored once");
    }
    // Decoded subject and body of the ISO-8859-1 mail; the requester from From.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE subject = 'Drucker fällt aus' AND requester_address = 'joerg@customer.test' AND requester_name = 'Jörg Müller'").await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE body_text LIKE '%ständig%'")
            .await,
        1
    );
    // HTML-only mail keeps its HTML and gets no invented text body.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE subject = 'HTML only' AND body_text IS NULL AND body_html LIKE '%<b>VPN</b>%'").await,
        1
    );
    // Cc is kept as JSON.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE cc_addresses LIKE '%carol@customer.test%'")
            .await,
        1
    );
    // The attachment, stored once by hash.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM attachments WHERE filename = 'error.png' AND content_type = 'image/png'").await,
        1
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM attachment_blobs").await, 1);
    // Every outcome recorded and disposed of; the checkpoint is at the last UID.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ticket' AND disposed_at IS NOT NULL").await,
        4
    );
    assert_eq!(db.count("SELECT MAX(last_uid) FROM mailbox_state").await, 4);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE reference LIKE 'TCK-%'")
            .await,
        4
    );

    // In IMAP: every message is \Seen and still in the inbox (dispose = "seen").
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox.len(), 4);
    assert!(inbox.iter().all(|(_, seen)| *seen), "{inbox:?}");

    // A second run finds nothing new and duplicates nothing.
    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 new message(s)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 4);

    // `tickets` lists them.
    let out = case.run(&["tickets"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.contains("Drucker fällt aus"), "{listing}");
    assert!(listing.contains("TCK-000001"), "{listing}");
    let out = case.run(&["tickets", "--json", "--limit", "2"]).await;
    assert_eq!(text(&out.stdout).lines().count(), 2);
}

#[tokio::test]
async fn once_turns_mail_into_tickets_on_sqlite() {
    once_turns_mail_into_tickets(Backend::Sqlite).await;
}

#[tokio::test]
async fn once_turns_mail_into_tickets_on_postgres() {
    once_turns_mail_into_tickets(Backend::Postgres).await;
}

async fn move_disposition_and_starttls(backend: Backend) {
    let case = Case::new(
        backend,
        "dispose = \"move\"\nprocessed_folder = \"Processed/Intake\"",
        "starttls",
    )
    .await;
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let (raw, _) = unique_fixture("attachment.eml");
    deliver_lmtp(&case.mailbox, "erik@customer.test", &raw).await;

    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Processed/Intake")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn move_disposition_and_starttls_on_sqlite() {
    move_disposition_and_starttls(Backend::Sqlite).await;
}

#[tokio::test]
async fn move_disposition_and_starttls_on_postgres() {
    move_disposition_and_starttls(Backend::Postgres).await;
}

#[tokio::test]
async fn oversized_mail_is_quarantined_without_downloading_it() {
    let case = Case::new(Backend::Sqlite, "max_message_bytes = 4096", "implicit").await;
    let (big, big_id) = large_message(&case.mailbox, 64 * 1024);
    deliver_lmtp(&case.mailbox, "big@customer.test", &big).await;
    let (small, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &small).await;

    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("1 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    // Only the small message's bytes were downloaded.
    let fetched: u64 = stdout
        .split("; ")
        .find_map(|part| {
            part.trim()
                .strip_suffix(" bytes fetched")
                .map(|n| n.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("bytes fetched in the report: {stdout}"));
    assert!(fetched < 4096, "{stdout}");

    let db = &case.db;
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM quarantine WHERE reason = 'too-large' AND raw IS NULL \
             AND message_id = '{big_id}' AND from_address = 'big@customer.test' \
             AND subject = 'A very large log file' AND size_bytes > 60000"
        ))
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
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .len(),
        1
    );
    // Dovecot's own accounting: no session of this mailbox sent anywhere near the 64 KiB body.
    let sent = dovecot_bytes_out(&case.mailbox, 3).await;
    assert!(sent.len() >= 3, "{sent:?}");
    assert!(
        sent.iter().all(|out| *out < 16 * 1024),
        "bytes sent per session: {sent:?}"
    );
}

#[tokio::test]
async fn run_polls_until_sigterm() {
    // Without IDLE: mail that arrives while the worker runs becomes a ticket on a later poll.
    let case = Case::new(Backend::Sqlite, "idle = false", "implicit").await;
    let child = case.spawn_run();
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let arrived = case
        .wait_for_count("SELECT COUNT(*) FROM tickets", 1, Duration::from_secs(30))
        .await;
    let (status, stderr) = terminate(child, Duration::from_secs(20)).await;
    assert!(
        arrived,
        "the running worker made no ticket within 30 s: {stderr}"
    );
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}: {stderr}"
    );
    assert!(stderr.contains("mailbox stopped"), "{stderr}");
}

/// The database sets a new ticket's reference (migration 0002); it must be the one the code
/// shows customers and parses from subject tags, past six digits too.
async fn the_database_gives_tickets_the_reference_the_code_uses(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = mailintake::store::Store::open(&db.url).await.unwrap();
    store.close().await;
    let pool = db.pool().await;
    for id in [42_i64, 999_999, 1_000_000, 1_234_567] {
        sqlx::query(
            "INSERT INTO tickets (id, mailbox, subject, status, created_at, updated_at) \
             VALUES ($1, 'support', 'Printer', 'new', 0, 0)",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
        let (reference,): (String,) = sqlx::query_as("SELECT reference FROM tickets WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(reference, mailintake::ingest::ticket_reference(id));
    }
    // A reference given explicitly is kept.
    sqlx::query(
        "INSERT INTO tickets (id, reference, mailbox, subject, status, created_at, updated_at) \
         VALUES (7, 'LEGACY-7', 'support', 'Imported', 'new', 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (reference,): (String,) = sqlx::query_as("SELECT reference FROM tickets WHERE id = 7")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reference, "LEGACY-7");
    pool.close().await;
}

#[tokio::test]
async fn the_database_gives_tickets_the_reference_the_code_uses_on_sqlite() {
    the_database_gives_tickets_the_reference_the_code_uses(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_database_gives_tickets_the_reference_the_code_uses_on_postgres() {
    the_database_gives_tickets_the_reference_the_code_uses(Backend::Postgres).await;
}

/// Mail that arrives after a sweep's listing is announced once, in the answer to the next
/// command (here the disposition's), and IDLE does not announce it again: the folder task
/// sweeps again at once instead of waiting out `idle_interval` (5 minutes here, as is
/// `poll_interval`). The worker is
/// stopped (SIGSTOP, failpoint `before-disposition`) between its commit and the disposition
/// while the second message is delivered.
///
/// Before, the announcement was drained and dropped with the disposition's answer, and the
/// second message waited in IDLE for the whole `idle_interval`.
#[tokio::test]
async fn mail_announced_before_idle_is_swept_at_once() {
    let case = Case::new(
        Backend::Sqlite,
        "idle_interval = \"5m\"\npoll_interval = \"5m\"",
        "implicit",
    )
    .await;
    let (first, first_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &first).await;
    let running = case.spawn_run_with(&[("MAILINTAKE_FAILPOINT", "before-disposition:1:stop")]);
    let stopped = eventually(Duration::from_secs(30), || async {
        running
            .log()
            .contains("failpoint before-disposition reached; stopping")
    })
    .await;
    assert!(stopped, "{}", running.log());
    // The process stops itself right after printing; deliver once it has.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, second_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "bob@customer.test", &second).await;
    let pid = running.child.id().expect("running") as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    for id in [&first_id, &second_id] {
        assert!(
            case.wait_for_count(
                &format!("SELECT COUNT(*) FROM messages WHERE message_id = '{id}'"),
                1,
                Duration::from_secs(20)
            )
            .await,
            "{id} is a ticket within seconds, not after idle_interval: {}",
            running.log()
        );
    }
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}
