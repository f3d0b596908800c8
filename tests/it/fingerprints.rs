//! A Message-ID met again: a server's re-rendering of a stored message is a duplicate (the
//! version-2 fingerprint, and old version-1 rows fingerprinted anew from their kept raw bytes);
//! another message under a stored Message-ID is a conflict that an operator can release once.

use base64::Engine;

use crate::helpers::*;

/// `raw` as Exchange may build it anew: the headers re-folded, the body base64-encoded inside a
/// multipart with a new boundary.
fn re_rendered(raw: &[u8]) -> Vec<u8> {
    let raw = text(raw);
    let (headers, body) = raw.split_once("\r\n\r\n").expect("a header section");
    let mut out = String::new();
    for line in headers.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-") || lower.starts_with("mime-version") {
            continue;
        }
        match line.split_once(": ") {
            Some((name, value)) if name.eq_ignore_ascii_case("subject") => {
                out.push_str(&format!("{name}:\r\n\t{value}\r\n"));
            }
            _ => out.push_str(&format!("{line}\r\n")),
        }
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.trim_end().as_bytes());
    out.push_str(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"_000_rerendered_\"\r\n\r\n\
         --_000_rerendered_\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
    );
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push_str("\r\n");
    }
    out.push_str("--_000_rerendered_--\r\n");
    out.into_bytes()
}

fn change_uidvalidity(case: &Case, uidvalidity: &str) {
    doveadm(&[
        "mailbox",
        "update",
        "-u",
        &case.mailbox,
        "--uid-validity",
        uidvalidity,
        "INBOX",
    ]);
}

/// APPENDs `raw` to the INBOX, as a server moving a mailbox does.
fn append(case: &Case, raw: &[u8]) {
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "INBOX"], raw);
}

async fn a_re_rendered_copy_after_a_uidvalidity_change_is_a_duplicate(backend: Backend) {
    let case = Case::new(backend, "", "implicit").await;
    let (raw, id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM messages WHERE fingerprint_version = 2")
            .await,
        1
    );

    change_uidvalidity(&case, "4343");
    let copy = re_rendered(&raw);
    assert!(text(&copy).contains("Content-Transfer-Encoding: base64"));
    append(&case, &copy);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 ticket(s), 0 follow-up(s), 2 duplicate(s)")
            && stdout.contains("0 quarantined"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM quarantine").await, 0);
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM imap_messages WHERE message_id = '{id}' AND outcome = 'duplicate' \
                 AND uidvalidity = 4343"
            ))
            .await,
        2
    );
}

#[tokio::test]
async fn a_re_rendered_copy_after_a_uidvalidity_change_is_a_duplicate_on_sqlite() {
    a_re_rendered_copy_after_a_uidvalidity_change_is_a_duplicate(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_re_rendered_copy_after_a_uidvalidity_change_is_a_duplicate_on_postgres() {
    a_re_rendered_copy_after_a_uidvalidity_change_is_a_duplicate(Backend::Postgres).await;
}

/// A row stored before fingerprint version 2 (simulated: its fingerprint set back to version 1)
/// with its raw bytes kept: a re-rendered copy is recognised from those bytes.
#[tokio::test]
async fn a_version_1_row_with_kept_raw_bytes_knows_its_re_rendered_copy() {
    let case = Case::new(Backend::Sqlite, "keep_raw = \"all\"", "implicit").await;
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    let (stored_raw,): (Vec<u8>,) = sqlx::query_as("SELECT content FROM raw_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut kept = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&stored_raw[..]),
        &mut kept,
    )
    .unwrap();
    let v1 = mailintake::ingest::fingerprint_v1(&kept).unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET fingerprint = '{v1}', fingerprint_version = 1"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    change_uidvalidity(&case, "4444");
    append(&case, &re_rendered(&raw));
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 ticket(s), 0 follow-up(s), 2 duplicate(s)")
            && stdout.contains("0 quarantined"),
        "{stdout}"
    );
}

/// A version-1 row without kept raw bytes: the same message again is known by its version-1
/// fingerprint, which the worker computes from the new copy's bytes only for this comparison
/// (mail with a Message-ID is not hashed under version 1 otherwise); a re-rendered copy, which
/// version 1 cannot see through, is a Message-ID conflict, set aside with its bytes.
#[tokio::test]
async fn a_version_1_row_without_raw_bytes_knows_the_same_message_but_not_a_re_rendered_copy() {
    let case = Case::new(Backend::Postgres, "", "implicit").await;
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);
    let v1 = mailintake::ingest::fingerprint_v1(&raw).unwrap();
    let pool = case.db.pool().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET fingerprint = '{v1}', fingerprint_version = 1"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 ticket(s), 0 follow-up(s), 1 duplicate(s)")
            && stdout.contains("0 quarantined"),
        "{stdout}"
    );
    append(&case, &re_rendered(&raw));
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 quarantined"), "{stdout}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'message-id-conflict' AND raw IS NOT NULL")
            .await,
        1
    );
}

async fn a_released_real_conflict_becomes_a_ticket_once(backend: Backend) {
    let case = Case::new(backend, &smtp_keys(), "implicit").await;
    let (first, id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &first).await;
    assert_ok(&case.run(&["once"]).await);
    // A system that reuses Message-IDs sends another message under the same one.
    let second = text(&first).replace("jammed again", "out of toner");
    deliver_lmtp(&case.mailbox, "alice@customer.test", second.as_bytes()).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 quarantined"), "{stdout}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'message-id-conflict'")
            .await,
        1
    );

    assert_ok(&case.run(&["quarantine", "release", "1"]).await);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 ticket(s)") && stdout.contains("0 quarantined"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{id}#2' \
                 AND message_id_source = 'conflict-release' AND body_text LIKE '%out of toner%'"
            ))
            .await,
        1
    );
    // Once: the release is used, released again it is refused, and the same message delivered
    // again is a duplicate of the released one.
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE release_used_at IS NOT NULL")
            .await,
        1
    );
    assert!(
        !case
            .run(&["quarantine", "release", "1"])
            .await
            .status
            .success()
    );
    deliver_lmtp(&case.mailbox, "alice@customer.test", second.as_bytes()).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 ticket(s), 0 follow-up(s), 1 duplicate(s)")
            && stdout.contains("0 quarantined"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    // The acknowledgement of the new ticket answers the Message-ID the sender wrote.
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE in_reply_to = '{id}' AND ticket_id = 2"
            ))
            .await,
        1
    );
}

#[tokio::test]
async fn a_released_real_conflict_becomes_a_ticket_once_on_sqlite() {
    a_released_real_conflict_becomes_a_ticket_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_released_real_conflict_becomes_a_ticket_once_on_postgres() {
    a_released_real_conflict_becomes_a_ticket_once(Backend::Postgres).await;
}
