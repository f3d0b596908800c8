//! A bad row must not stop its folder (issue 13, item 1): text that PostgreSQL refuses (a NUL
//! byte) or keys longer than a btree index row are stored like any other mail, on both backends;
//! a message the database still refuses (a data error) is found by taking its batch one message
//! at a time and set aside with its raw bytes; infrastructure errors (a lock timeout) quarantine
//! nothing and are retried.

use crate::helpers::*;

/// A message from `from` with a unique Message-ID unless `message_id` is given.
fn message(to: &str, from: &str, subject: &str, message_id: Option<&str>, body: &str) -> Vec<u8> {
    let id = message_id
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}@customer.test", unique("m")));
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Tue, 24 Nov 2026 14:00:00 +0000\r\n\
         Message-ID: <{id}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// `len` characters of hex that no compression shortens (PostgreSQL compresses index entries
/// before it checks their size).
fn incompressible(len: usize) -> String {
    let mut out = String::new();
    let mut seed = unique("k");
    while out.len() < len {
        seed = mailintake::ingest::sha256_hex(seed.as_bytes());
        out.push_str(&seed);
    }
    out.truncate(len);
    out
}

/// Delivers a good message, `bad`, and another good message, runs `once`, and returns its stdout.
async fn deliver_between_good_ones(case: &Case, bad: &[u8]) -> String {
    let good = |n: u32| {
        message(
            &case.mailbox,
            &format!("Good {n} <good{n}@customer.test>"),
            &format!("Good message {n}"),
            None,
            "All fine here.",
        )
    };
    deliver_lmtp(&case.mailbox, "good1@customer.test", &good(1)).await;
    deliver_lmtp(&case.mailbox, "bad@customer.test", bad).await;
    deliver_lmtp(&case.mailbox, "good2@customer.test", &good(2)).await;
    let out = case.run(&["once"]).await;
    assert!(
        out.status.success(),
        "once must exit 0: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn nul_bytes_and_3kb_keys_are_stored_like_any_mail(backend: Backend) {
    let case = Case::new(backend, "keep_raw = \"all\"", "implicit").await;

    // A NUL byte in the body and in the subject (quoted-printable and RFC 2047 `=00`).
    let nul = message(
        &case.mailbox,
        "Nul Sender <nul@customer.test>",
        "=?utf-8?Q?before=00after?=",
        None,
        "line one=00still line one\r\nline two",
    );
    let stdout = deliver_between_good_ones(&case, &nul).await;
    assert!(stdout.contains("3 ticket(s)"), "{stdout}");
    let db = &case.db;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM messages WHERE subject = 'beforeafter' \
             AND body_text LIKE 'line onestill line one%line two%'"
        )
        .await,
        1,
        "the NUL bytes are removed from the text columns, the same way on both backends"
    );
    // The raw message is kept byte-exact.
    let nul_row = db
        .count("SELECT id FROM messages WHERE subject = 'beforeafter'")
        .await
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let raw_file = dir.path().join("nul.eml");
    assert_ok(
        &case
            .run(&["raw", &nul_row, "--out", raw_file.to_str().unwrap()])
            .await,
    );
    let kept = std::fs::read(&raw_file).unwrap();
    assert!(
        kept.ends_with(&nul) && text(&kept).contains("line one=00still"),
        "{}",
        text(&kept)
    );

    // A 3 KB Message-ID and, in the next message, a 3 KB From address: above btree's
    // 2,704-byte index row limit on PostgreSQL.
    let long_id = format!("{}@customer.test", incompressible(3000));
    let long_id_mail = message(
        &case.mailbox,
        "Long Id <longid@customer.test>",
        "A long Message-ID",
        Some(&long_id),
        "Hello.",
    );
    let stdout = deliver_between_good_ones(&case, &long_id_mail).await;
    assert!(stdout.contains("3 ticket(s)"), "{stdout}");
    let long_from = format!("{}@customer.test", incompressible(3000));
    let long_from_mail = message(
        &case.mailbox,
        &format!("<{long_from}>"),
        "A long From address",
        None,
        "Hello.",
    );
    let stdout = deliver_between_good_ones(&case, &long_from_mail).await;
    assert!(stdout.contains("3 ticket(s)"), "{stdout}");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM messages WHERE message_id = '{long_id}'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM tickets WHERE requester_address = '{long_from}'"
        ))
        .await,
        1
    );

    // A reply naming the long Message-ID threads onto its ticket; the same message delivered
    // again is a duplicate (the lookups by these keys work).
    let reply = message(
        &case.mailbox,
        "Long Id <longid@customer.test>",
        "Re: A long Message-ID",
        None,
        "More.",
    );
    let reply = text(&reply).replacen(
        "MIME-Version",
        &format!("In-Reply-To: <{long_id}>\r\nMIME-Version"),
        1,
    );
    deliver_lmtp(&case.mailbox, "longid@customer.test", reply.as_bytes()).await;
    deliver_lmtp(&case.mailbox, "longid@customer.test", &long_id_mail).await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 follow-up(s)") && stdout.contains("1 duplicate(s)"),
        "{stdout}"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM quarantine").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 9);
}

#[tokio::test]
async fn nul_bytes_and_3kb_keys_are_stored_like_any_mail_on_sqlite() {
    nul_bytes_and_3kb_keys_are_stored_like_any_mail(Backend::Sqlite).await;
}

#[tokio::test]
async fn nul_bytes_and_3kb_keys_are_stored_like_any_mail_on_postgres() {
    nul_bytes_and_3kb_keys_are_stored_like_any_mail(Backend::Postgres).await;
}

/// A database that refuses one message's data: on PostgreSQL a LATIN1 database (some
/// installations have one) and a subject it has no characters for (SQLSTATE 22P05, no injection
/// needed); on SQLite, where no mail text can fail any more, a trigger that raises SQLITE_TOOBIG
/// for that subject.
async fn refusing_database(backend: Backend) -> TestDb {
    match backend {
        Backend::Postgres => {
            let admin = std::env::var("MAILINTAKE_TEST_POSTGRES")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
            let name = unique("it_latin1_");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            )))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
            let (base, _) = admin.rsplit_once('/').unwrap();
            TestDb::at(format!("{base}/{name}"), Backend::Postgres)
        }
        Backend::Sqlite => {
            let db = TestDb::new(Backend::Sqlite).await;
            mailintake::store::Store::open(&db.url)
                .await
                .unwrap()
                .close()
                .await;
            let pool = db.pool().await;
            // zeroblob() longer than SQLITE_MAX_LENGTH fails with SQLITE_TOOBIG.
            sqlx::raw_sql(
                "CREATE TRIGGER refuse_unstorable BEFORE INSERT ON messages \
                 WHEN NEW.subject LIKE '%日本語%' BEGIN SELECT zeroblob(2000000000); END;",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
            db
        }
    }
}

async fn a_message_the_database_refuses_is_set_aside_and_the_rest_come_in(backend: Backend) {
    let db = refusing_database(backend).await;
    let case = Case::with_db(db, "", "implicit").await;
    let bad = message(
        &case.mailbox,
        "Tanaka <tanaka@customer.test>",
        "=?utf-8?B?5pel5pys6Kqe?=",
        None,
        "=E6=97=A5=E6=9C=AC=E8=AA=9E",
    );
    let stdout = deliver_between_good_ones(&case, &bad).await;
    assert!(
        stdout.contains("2 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    let db = &case.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE subject LIKE 'Good message %'")
            .await,
        2
    );
    let code = match backend {
        Backend::Postgres => "SQLSTATE 22P05",
        Backend::Sqlite => "SQLite result code 18",
    };
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM quarantine WHERE reason = 'unstorable' AND raw IS NOT NULL \
             AND LENGTH(raw) >= {} AND detail LIKE '%{code}%'",
            bad.len()
        ))
        .await,
        1,
        "the refused message is quarantined with its raw bytes and the error"
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM imap_messages WHERE outcome = 'quarantined' AND disposed_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );
    // Nothing is left for the next sweep.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
}

#[tokio::test]
async fn a_message_the_database_refuses_is_set_aside_and_the_rest_come_in_on_sqlite() {
    a_message_the_database_refuses_is_set_aside_and_the_rest_come_in(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_message_the_database_refuses_is_set_aside_and_the_rest_come_in_on_postgres() {
    a_message_the_database_refuses_is_set_aside_and_the_rest_come_in(Backend::Postgres).await;
}

/// A lock timeout (55P03) is the infrastructure's trouble, not the mail's: the sweep fails and
/// is retried, and nothing is quarantined.
#[tokio::test]
async fn a_lock_timeout_quarantines_nothing_on_postgres() {
    let case = Case::new(Backend::Postgres, "", "implicit").await;
    // The first sweep creates the folder's checkpoint row, which every batch updates.
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    let name = case.db.url.rsplit('/').next().unwrap().to_string();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET lock_timeout = '500ms'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT last_uid FROM mailbox_state FOR UPDATE")
        .fetch_all(&mut *holder)
        .await
        .unwrap();

    for n in 1..=3 {
        let mail = message(
            &case.mailbox,
            &format!("<waiting{n}@customer.test>"),
            &format!("Waiting {n}"),
            None,
            "Hello.",
        );
        deliver_lmtp(&case.mailbox, "waiting@customer.test", &mail).await;
    }
    let out = case.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("lock timeout"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM quarantine").await, 0);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 0);

    holder.rollback().await.unwrap();
    pool.close().await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("3 ticket(s)") && stdout.contains("0 quarantined"),
        "{stdout}"
    );
}
