//! Mail in the inbox → `mailintake once`/`run` → ticket rows, on SQLite and PostgreSQL.

use std::time::Duration;

use crate::helpers::*;

struct Case {
    db: TestDb,
    entra: Entra,
    mailbox: String,
    config: ConfigFile,
    secret_var: String,
}

impl Case {
    async fn new(backend: Backend, extra_mailbox_keys: &str, tls: &str) -> Case {
        let mailbox = unique_mailbox();
        let entra = Entra::start(&[&mailbox]).await;
        let db = TestDb::new(backend).await;
        let secret_var = "IT_CLIENT_SECRET".to_string();
        let config = ConfigFile::write(
            &ConfigSpec {
                db: &db,
                entra: &entra,
                secret_env: &secret_var,
                mailbox: &mailbox,
                extra_mailbox_keys,
                tls,
            }
            .render(),
        );
        Case {
            db,
            entra,
            mailbox,
            config,
            secret_var,
        }
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        mailintake(
            &self.config.path,
            args,
            &[(&self.secret_var, &self.entra.secret)],
        )
        .await
    }
}

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
}

#[tokio::test]
async fn a_committed_message_whose_disposition_was_lost_is_completed_not_duplicated() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Simulate a crash after the commit and before the IMAP disposition: the row says the
    // disposition is still due. Meanwhile the message was moved away by someone and delivered
    // again (a re-delivery gets a new UID).
    let pool = case.db.pool().await;
    sqlx::query("UPDATE imap_messages SET disposed_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let mut conn = imap_session(&case.entra, &case.mailbox).await;
    conn.select("INBOX").await.unwrap();
    let uid = conn.list_above(0).await.unwrap()[0].uid;
    conn.ensure_folder("Elsewhere").await.unwrap();
    conn.move_to(uid, "Elsewhere").await.unwrap();
    conn.logout().await;
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;

    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The pending disposition was completed, and the re-delivered copy is a recorded duplicate.
    assert!(
        stdout.contains("1 earlier disposition(s) completed"),
        "{stdout}"
    );
    let pool = case.db.pool().await;
    let quarantined: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT reason, detail FROM quarantine")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert!(
        stdout.contains("1 duplicate(s)"),
        "{stdout} quarantined: {quarantined:?}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL")
            .await,
        0
    );
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].1, "the duplicate was disposed of (\\Seen) too");
}

#[tokio::test]
async fn run_polls_until_sigterm() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let mut child = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(&case.config.path)
        .arg("run")
        .env(&case.secret_var, &case.entra.secret)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Mail that arrives while the worker runs becomes a ticket on a later poll.
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let db = &case.db;
    sqlx::any::install_default_drivers();
    let arrived = eventually(Duration::from_secs(30), || async {
        // The database file appears when the worker starts; before that, nothing to count.
        let pool = match sqlx::AnyPool::connect(&format!("{}?mode=rw", db.url)).await {
            Ok(pool) => pool,
            Err(_) => return false,
        };
        let n: Result<(i64,), _> = sqlx::query_as("SELECT COUNT(*) FROM tickets")
            .fetch_one(&pool)
            .await;
        pool.close().await;
        matches!(n, Ok((1,)))
    })
    .await;
    assert!(arrived, "the running worker made no ticket within 30 s");

    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stopped within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
