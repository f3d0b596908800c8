//! Retention and replay: `mailintake purge`, `quarantine purge`, `tickets --since`, and
//! `reprocess` of stored raw mail, end to end against the real stack, on SQLite and PostgreSQL.

use mailintake::ingest::{ParseFailure, QuarantineReason};
use mailintake::mail_source::{Disposition, Uid};
use mailintake::store::{ImapLocation, QuarantineEnvelope, Store};

use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;

/// Makes everything stored so far look `days` older (what time passing would do).
async fn backdate(db: &TestDb, days: i64) {
    let pool = db.pool().await;
    for table in ["tickets", "messages", "attachments", "quarantine"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET created_at = created_at - {}",
            days * DAY_MS
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

async fn purge_drops_old_raw_mail_and_attachment_contents_but_no_rows(backend: Backend) {
    let case = Case::new(
        backend,
        "keep_raw = \"all\"\nmax_new_tickets_per_sender_per_hour = 1",
        "implicit",
    )
    .await;
    // A ticket with an attachment, and a second message from the same sender: quarantined over
    // the per-sender limit, with its raw bytes.
    let (first, _) = unique_fixture("attachment.eml");
    deliver_lmtp(&case.mailbox, "erik@customer.test", &first).await;
    let (second, _) = unique_fixture("plain.eml");
    let second = text(&second).replace(
        "Alice Example <alice@customer.test>",
        "Erik <erik@customer.test>",
    );
    deliver_lmtp(&case.mailbox, "erik@customer.test", second.as_bytes()).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    let attachment_before = case.db.count("SELECT COUNT(*) FROM attachments").await;
    assert!(attachment_before >= 1);
    backdate(&case.db, 100).await;

    // tickets --since: the old ticket is outside the last 30 days, inside "since 2000".
    let recent = assert_ok(&case.run(&["tickets", "--since", "30d"]).await);
    assert!(recent.contains("no tickets since then"), "{recent}");
    let all = assert_ok(
        &case
            .run(&["tickets", "--since", "2000-01-01", "--json"])
            .await,
    );
    assert_eq!(all.lines().count(), 1, "{all}");
    let out = case.run(&["tickets", "--since", "last tuesday"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("neither a date"),
        "{}",
        text(&out.stderr)
    );
    let out = case.run(&["purge", "--older-than", "90m"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a retention under a day is refused"
    );

    // A dry run counts and changes nothing.
    let dry = assert_ok(
        &case
            .run(&["purge", "--older-than", "90d", "--dry-run"])
            .await,
    );
    assert!(
        dry.contains("would purge") && dry.contains("raw messages: 1 ("),
        "{dry}"
    );
    assert!(dry.contains("quarantine raw bytes: 1 message(s)"), "{dry}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM raw_messages").await, 1);

    let done = assert_ok(&case.run(&["purge", "--older-than", "90d"]).await);
    assert!(done.starts_with("purged"), "{done}");
    assert!(
        done.contains(&format!(
            "attachment contents: {attachment_before} attachment(s)"
        )),
        "{done}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM raw_messages").await, 0);
    assert_eq!(
        case.db
            .count(
                "SELECT COUNT(*) FROM quarantine WHERE raw IS NULL AND raw_purged_at IS NOT NULL"
            )
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM attachment_blobs WHERE purged_at IS NOT NULL AND LENGTH(content) = 0")
            .await,
        case.db.count("SELECT COUNT(*) FROM attachment_blobs").await
    );
    // Tickets, messages and attachment rows stay.
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM attachments WHERE content_purged_at IS NOT NULL")
            .await,
        attachment_before
    );
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("a1");
    let out = case
        .run(&["attachment", "1", "--out", out_file.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("removed by `mailintake purge`"),
        "{}",
        text(&out.stderr)
    );
    assert!(!out_file.exists());
    let out = case
        .run(&["raw", "1", "--out", dir.path().join("r1").to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(1));
    // Purging again finds nothing more.
    let again = assert_ok(&case.run(&["purge", "--older-than", "90d"]).await);
    assert!(
        again.contains("raw messages: 0 (0 bytes)") && again.contains("0 attachment(s)"),
        "{again}"
    );

    // The same attachment arrives again in new mail: its content is stored again (nothing is
    // lost to retention), for the old attachment too, and a purge keeps the shared content.
    let (third, _) = unique_fixture("attachment.eml");
    let third = text(&third).replace("Erik <erik@customer.test>", "Dora <dora@customer.test>");
    deliver_lmtp(&case.mailbox, "dora@customer.test", third.as_bytes()).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM attachment_blobs WHERE purged_at IS NULL AND LENGTH(content) > 0")
            .await,
        case.db.count("SELECT COUNT(*) FROM attachment_blobs").await
    );
    let shared = assert_ok(&case.run(&["purge", "--older-than", "90d"]).await);
    assert!(shared.contains("0 attachment(s)"), "{shared}");
    let new_id = case
        .db
        .count("SELECT MAX(id) FROM attachments")
        .await
        .to_string();
    for id in ["1", new_id.as_str()] {
        let file = dir.path().join(format!("again-{id}"));
        assert_ok(
            &case
                .run(&["attachment", id, "--out", file.to_str().unwrap()])
                .await,
        );
        assert!(std::fs::metadata(&file).unwrap().len() > 0);
    }

    // quarantine purge deletes the old quarantine row; the intake ledger keeps its outcome.
    let ledger = case.db.count("SELECT COUNT(*) FROM imap_messages").await;
    let dry = assert_ok(
        &case
            .run(&["quarantine", "purge", "--older-than", "90d", "--dry-run"])
            .await,
    );
    assert!(dry.contains("would delete 1 quarantine row(s)"), "{dry}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM quarantine").await, 1);
    let done = assert_ok(
        &case
            .run(&["quarantine", "purge", "--older-than", "90d"])
            .await,
    );
    assert!(done.contains("deleted 1 quarantine row(s)"), "{done}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM quarantine").await, 0);
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM imap_messages").await,
        ledger
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'quarantined' AND quarantine_id IS NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn purge_drops_old_raw_mail_and_attachment_contents_but_no_rows_sqlite() {
    purge_drops_old_raw_mail_and_attachment_contents_but_no_rows(Backend::Sqlite).await;
}

#[tokio::test]
async fn purge_drops_old_raw_mail_and_attachment_contents_but_no_rows_postgres() {
    purge_drops_old_raw_mail_and_attachment_contents_but_no_rows(Backend::Postgres).await;
}

#[tokio::test]
async fn quarantine_purge_keeps_a_release_that_has_not_come_in() {
    let case = Case::new(Backend::Sqlite, "max_message_bytes = 4096", "implicit").await;
    let (big, _) = large_message(&case.mailbox, 20_000);
    deliver_lmtp(&case.mailbox, "big@customer.test", &big).await;
    assert_ok(&case.run(&["once"]).await);
    assert_ok(
        &case
            .run(&["quarantine", "release", "1", "--max-bytes", "100000"])
            .await,
    );
    backdate(&case.db, 100).await;
    let done = assert_ok(
        &case
            .run(&["quarantine", "purge", "--older-than", "30d"])
            .await,
    );
    assert!(
        done.contains("deleted 0 quarantine row(s)")
            && done.contains("kept 1 released message(s) that have not come in yet"),
        "{done}"
    );
    // It still comes in, once.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
}

/// Records a quarantine row for `raw` as the worker records an unparseable message (its raw
/// bytes kept), as if an earlier parser had failed on it.
async fn quarantine_as_unparseable(db: &TestDb, uid: u32, raw: &[u8]) {
    let store = Store::open(&db.url).await.unwrap();
    let at = ImapLocation {
        mailbox: "support",
        folder: "INBOX",
        uidvalidity: 7,
        uid: Uid(uid),
        size: raw.len() as u64,
        internal_date_ms: None,
    };
    let envelope = QuarantineEnvelope {
        message_id: format!(
            "{}@content-hash.mailintake.invalid",
            mailintake::ingest::sha256_hex(raw)
        ),
        ..QuarantineEnvelope::default()
    };
    let mut tx = store.begin().await.unwrap();
    tx.quarantine(
        &at,
        &envelope,
        &QuarantineReason::Unparseable(ParseFailure::NoHeaders),
        Some(raw),
        &Disposition::Quarantine("Quarantine".into()),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.close().await;
}

async fn reprocess_replays_stored_raw_mail_once(backend: Backend) {
    let case = Case::new(backend, "keep_raw = \"all\"", "implicit").await;
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);

    // An article whose raw was kept: the current code reads it as stored; nothing to do, twice.
    for _ in 0..2 {
        let out = assert_ok(&case.run(&["reprocess", "--message", "1"]).await);
        assert!(out.contains("is stored already, on TCK-000001"), "{out}");
    }
    let out = case.run(&["reprocess", "--message", "99"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no message with id 99"),
        "{}",
        text(&out.stderr)
    );

    // A quarantined "unparseable" message whose raw the current code parses: a ticket, once.
    let (fresh, fresh_id) = unique_fixture("attachment.eml");
    quarantine_as_unparseable(&case.db, 500, &fresh).await;
    let out = assert_ok(&case.run(&["reprocess", "1"]).await);
    assert!(
        out.contains("quarantined message 1 is now ticket TCK-000002"),
        "{out}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{fresh_id}' AND ticket_id = 2"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE id = 1 AND resolved_at IS NOT NULL AND resolved_ticket_id = 2")
            .await,
        1
    );
    // Its outcome is in the ledger, needing nothing in IMAP; the quarantined row stays as history.
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE uidvalidity = 0 AND uid = 1 AND outcome = 'ticket' AND disposed_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE uid = 500 AND outcome = 'quarantined'")
            .await,
        1
    );
    let again = assert_ok(&case.run(&["reprocess", "1"]).await);
    assert!(
        again.contains("reprocessed already, into TCK-000002"),
        "{again}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, 2);
    let listing = assert_ok(&case.run(&["quarantine", "list"]).await);
    assert!(listing.contains("(reprocessed: TCK-000002)"), "{listing}");
    let out = case.run(&["quarantine", "release", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("reprocessed into TCK-000002 already"),
        "{}",
        text(&out.stderr)
    );

    // A quarantined copy of a message that is stored already: recorded as a duplicate, no ticket.
    quarantine_as_unparseable(&case.db, 501, &raw).await;
    let out = assert_ok(&case.run(&["reprocess", "2"]).await);
    assert!(out.contains("is stored already, on TCK-000001"), "{out}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE id = 2 AND resolved_ticket_id = 1")
            .await,
        1
    );

    // A too-large message was never downloaded: nothing to re-parse, and the fix is named.
    let pool = case.db.pool().await;
    sqlx::query(
        "UPDATE quarantine SET raw = NULL, resolved_at = NULL, reason = 'too-large' WHERE id = 2",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let out = case.run(&["reprocess", "2"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("quarantine release 2"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn reprocess_replays_stored_raw_mail_once_sqlite() {
    reprocess_replays_stored_raw_mail_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn reprocess_replays_stored_raw_mail_once_postgres() {
    reprocess_replays_stored_raw_mail_once(Backend::Postgres).await;
}

/// `purge` held between its check (no newer attachment shares the blob) and its update, while a
/// new message with the same attachment content is written (issue 13, item 10): the new
/// attachment keeps its content.
async fn purge_cannot_empty_content_that_a_message_written_meanwhile_shares(backend: Backend) {
    use tokio::io::AsyncBufReadExt;

    let case = Case::new(backend, "", "implicit").await;
    let (first, _) = unique_fixture("attachment.eml");
    deliver_lmtp(&case.mailbox, "erik@customer.test", &first).await;
    assert!(assert_ok(&case.run(&["once"]).await).contains("1 ticket(s)"));
    backdate(&case.db, 100).await;

    let hold_ms = 4000;
    let mut purge = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(&case.config.path)
        .args(["purge", "--older-than", "90d"])
        .env(&case.secret_var, &case.entra.secret)
        .env(
            "MAILINTAKE_FAILPOINT",
            format!("purge-checked:1:hold={hold_ms}"),
        )
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("purge starts");
    let mut stderr = tokio::io::BufReader::new(purge.stderr.take().unwrap()).lines();
    let held = format!("failpoint purge-checked reached; holding {hold_ms} ms");
    let mut seen = Vec::new();
    loop {
        match stderr.next_line().await.unwrap() {
            Some(line) if line.contains(&held) => break,
            Some(line) => seen.push(line),
            None => panic!("purge ended before its failpoint: {seen:?}"),
        }
    }

    // The same attachment content arrives in a new message while purge is held.
    let (second, _) = unique_fixture("attachment.eml");
    let second = text(&second).replace("Erik <erik@customer.test>", "Dora <dora@customer.test>");
    deliver_lmtp(&case.mailbox, "dora@customer.test", second.as_bytes()).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");

    let purged = tokio::time::timeout(std::time::Duration::from_secs(60), purge.wait_with_output())
        .await
        .expect("purge finished")
        .unwrap();
    assert!(
        purged.status.success(),
        "purge failed: {seen:?} {}",
        text(&purged.stderr)
    );
    assert!(
        text(&purged.stdout).starts_with("purged"),
        "{}",
        text(&purged.stdout)
    );

    // The new message's attachments have their content, byte for byte.
    let db = &case.db;
    let newest_message = db.count("SELECT MAX(id) FROM messages").await;
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM attachments a JOIN attachment_blobs b ON b.sha256 = a.sha256 \
             WHERE a.message_id = {newest_message} AND (b.purged_at IS NOT NULL OR LENGTH(b.content) <> b.size_bytes \
             OR a.content_purged_at IS NOT NULL)"
        ))
        .await,
        0,
        "an attachment of the message written during the purge lost its content"
    );
    let new_id = db
        .count(&format!(
            "SELECT MIN(id) FROM attachments WHERE message_id = {newest_message}"
        ))
        .await
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new");
    assert_ok(
        &case
            .run(&["attachment", &new_id, "--out", file.to_str().unwrap()])
            .await,
    );
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
}

#[tokio::test]
async fn purge_cannot_empty_content_that_a_message_written_meanwhile_shares_sqlite() {
    purge_cannot_empty_content_that_a_message_written_meanwhile_shares(Backend::Sqlite).await;
}

#[tokio::test]
async fn purge_cannot_empty_content_that_a_message_written_meanwhile_shares_postgres() {
    purge_cannot_empty_content_that_a_message_written_meanwhile_shares(Backend::Postgres).await;
}
