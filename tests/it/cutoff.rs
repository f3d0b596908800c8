//! The first-start cutoff decides by arrival in the folder, not by date: mail that was in a folder
//! at the first start stays untouched, while mail that arrives later — however old its
//! INTERNALDATE, e.g. released from Junk — becomes a ticket (without an acknowledgement when it
//! was received before the acknowledgement cutoff). And the migration that brought the rule in.

use std::path::Path;

use crate::helpers::*;

async fn stored(case: &Case, message_id: &str) -> i64 {
    case.db
        .count(&format!(
            "SELECT COUNT(*) FROM messages WHERE message_id = '{message_id}'"
        ))
        .await
}

/// One old message in the inbox and one in Junk, both received before the first start; the
/// first start leaves both alone.
async fn old_mail_then_first_start(case: &Case) -> (String, String) {
    let (stays, stays_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &stays).await;
    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Junk"]);
    let (junked, junked_id) = unique_fixture("latin1.eml");
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Junk"], &junked);
    // INTERNALDATE has whole seconds: the first start comes in a later second than both.
    next_second().await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 0);
    (stays_id, junked_id)
}

async fn old_mail_released_from_junk_after_the_first_start_becomes_a_ticket(backend: Backend) {
    let extra = format!("first_start = \"now\"\n{}", smtp_keys());
    let case = Case::new(backend, &extra, "implicit").await;
    let (stays_id, junked_id) = old_mail_then_first_start(&case).await;

    let moved = assert_ok(&case.run(&["junk", "release", "1"]).await);
    assert!(moved.contains("to `INBOX`"), "{moved}");
    let (fresh, fresh_id) = unique_fixture("attachment.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &fresh).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("2 ticket(s)"), "{stdout}");
    assert_eq!(stored(&case, &junked_id).await, 1, "{stdout}");
    assert_eq!(stored(&case, &fresh_id).await, 1, "{stdout}");
    // The mail that was there at the first start stays untouched: no row, unseen.
    assert_eq!(stored(&case, &stays_id).await, 0);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM imap_messages").await, 2);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored'")
            .await,
        0
    );
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox, [(1, false), (2, true), (3, true)], "{inbox:?}");

    // Acknowledgements still go by date: the released message was received before the first
    // start, so its ticket gets none (the reason is recorded); the fresh one gets one.
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox o JOIN messages m ON m.ticket_id = o.ticket_id \
                 WHERE m.message_id = '{junked_id}' AND o.state = 'suppressed' \
                 AND o.reason LIKE '%received before%'"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox o JOIN messages m ON m.ticket_id = o.ticket_id \
                 WHERE m.message_id = '{fresh_id}' AND o.state = 'sent'"
            ))
            .await,
        1,
        "{stdout}"
    );
}

#[tokio::test]
async fn old_mail_released_from_junk_after_the_first_start_becomes_a_ticket_on_sqlite() {
    old_mail_released_from_junk_after_the_first_start_becomes_a_ticket(Backend::Sqlite).await;
}

#[tokio::test]
async fn old_mail_released_from_junk_after_the_first_start_becomes_a_ticket_on_postgres() {
    old_mail_released_from_junk_after_the_first_start_becomes_a_ticket(Backend::Postgres).await;
}

#[tokio::test]
async fn with_a_cutoff_date_old_mail_there_at_first_start_is_ignored_and_old_mail_moved_in_later_is_not()
 {
    // A cutoff after every message's INTERNALDATE: by date alone, everything would be "old".
    let case = Case::new(Backend::Sqlite, "first_start = \"2099-01-01\"", "implicit").await;
    let (stays, stays_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &stays).await;
    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Archive"]);
    let (dragged, dragged_id) = unique_fixture("latin1.eml");
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Archive"], &dragged);

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 ticket(s)"), "{stdout}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' AND uid = 1")
            .await,
        1,
        "{stdout}"
    );

    // An agent drags the old message back into the inbox.
    doveadm(&[
        "move",
        "-u",
        &case.mailbox,
        "INBOX",
        "mailbox",
        "Archive",
        "all",
    ]);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert_eq!(stored(&case, &dragged_id).await, 1, "{stdout}");
    assert_eq!(stored(&case, &stays_id).await, 0, "{stdout}");
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox, [(1, false), (2, true)], "{inbox:?}");
}

/// A folder checkpointed before migration 0004 gets `first_uid_next = last_uid + 1`: what it has
/// recorded was there, what comes above it is new.
async fn the_migration_marks_existing_folders_at_their_checkpoint(backend: Backend) {
    let db = TestDb::new(backend).await;
    sqlx::any::install_default_drivers();
    let url = match backend {
        Backend::Sqlite => format!("{}?mode=rwc", db.url),
        Backend::Postgres => db.url.clone(),
    };
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let folder = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    let migrator = sqlx::migrate::Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(folder))
        .await
        .unwrap();
    migrator.run_to(3, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO mailbox_state (mailbox, folder, uidvalidity, last_uid, ingest_after, ack_after, updated_at) \
         VALUES ('support', 'INBOX', 7, 41, 1000, 1000, 1000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let case = Case::with_db(db, "", "implicit").await;
    assert_ok(&case.run(&["migrate"]).await);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM mailbox_state WHERE first_uid_next = 42")
            .await,
        1
    );
}

#[tokio::test]
async fn the_migration_marks_existing_folders_at_their_checkpoint_on_sqlite() {
    the_migration_marks_existing_folders_at_their_checkpoint(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_migration_marks_existing_folders_at_their_checkpoint_on_postgres() {
    the_migration_marks_existing_folders_at_their_checkpoint(Backend::Postgres).await;
}
