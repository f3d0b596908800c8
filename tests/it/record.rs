//! One batch driven through `intake::record` in process, on a real SQLite database and without
//! any mail server: decision → rows, unit-tested.

use mailintake::config::Config;
use mailintake::intake::MailboxContext;
use mailintake::intake::record::{Prepared, Work, record_batch};
use mailintake::mail_source::{Disposition, MessageSummary, Uid};
use mailintake::oauth::TokenCache;
use mailintake::store::{FolderState, Store};
use mailintake::telemetry::Metrics;

use crate::helpers::*;

fn config(db: &TestDb) -> Config {
    let text = format!(
        r#"
[database]
url = "{url}"

[identities.test]
flow = "client_credentials"
tenant = "00000000-0000-0000-0000-000000000001"
client_id = "00000000-0000-0000-0000-000000000002"
client_secret = "not used: nothing here logs in"

[[mailboxes]]
name = "support"
address = "support@helpdesk.test"
identity = "test"
quarantine_folder = "Set aside"

[mailboxes.imap]
host = "localhost"
"#,
        url = db.url
    );
    Config::from_toml_str(&text, std::path::Path::new(".")).expect("a valid configuration")
}

fn mail(message_id: &str, extra_headers: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Customer <customer@customer.test>\r\nTo: support@helpdesk.test\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n{extra_headers}\r\nThe printer is broken.\r\n"
    )
    .into_bytes()
}

fn summary(uid: u32, raw: &[u8]) -> MessageSummary {
    MessageSummary {
        uid: Uid(uid),
        size: raw.len() as u64,
        internal_date_ms: Some(mailintake::time::now_ms()),
        seen: false,
    }
}

fn raw_work(raw: Vec<u8>) -> Work {
    Work::Raw {
        raw,
        parsed: None,
        release_key: None,
    }
}

#[tokio::test]
async fn one_batch_of_decisions_becomes_its_rows_in_one_transaction() {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = config(&db);
    let store = Store::open(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let tokens = TokenCache::new();
    let metrics = Metrics::new(&config);
    let logins = mailintake::intake::session::LoginPacer::default();
    let mailbox = &config.mailboxes[0];
    let ctx = MailboxContext {
        mailbox,
        folder: "INBOX",
        identity: config.identity(&mailbox.identity),
        store: &store,
        tokens: &tokens,
        policy: mailintake::intake::policy(&config, mailbox),
        outbox_wake: None,
        metrics: &metrics,
        logins: &logins,
        tenure: None,
    };
    let state = FolderState {
        uidvalidity: 7,
        last_uid: Uid(0),
        ingest_after_ms: None,
        ack_after_ms: None,
        first_uid_next: Some(Uid(1)),
    };
    store
        .set_folder_state(&mailbox.name, "INBOX", state, None)
        .await
        .unwrap();

    let first = unique("first");
    let original = mail(&first, "", "Printer broken");
    let reply = mail(
        &unique("reply"),
        &format!("In-Reply-To: <{first}>\r\nReferences: <{first}>\r\n"),
        "Re: Printer broken",
    );
    // An out-of-office reply about nothing we sent: recorded as backscatter, no ticket.
    let automatic = mail(
        &unique("auto"),
        "Auto-Submitted: auto-replied\r\n",
        "Out of office",
    );
    let summaries = [
        summary(1, &original),
        summary(2, &reply),
        summary(3, &original),
        summary(4, b""),
        summary(5, &automatic),
        summary(6, b"not read"),
    ];
    let prepared = Prepared {
        work: vec![
            (&summaries[0], raw_work(original.clone())),
            // A reply to the message of this very batch: the batch sees what it wrote.
            (&summaries[1], raw_work(reply)),
            // The same message again at another UID.
            (&summaries[2], raw_work(original)),
            (&summaries[3], raw_work(Vec::new())),
            (&summaries[4], raw_work(automatic)),
            (&summaries[5], Work::Old),
        ],
        bytes_fetched: 0,
        waiting: Vec::new(),
    };

    let (dispositions, report) = record_batch(&ctx, &state, prepared).await.unwrap();

    let quarantine = Disposition::Quarantine("Set aside".into());
    assert_eq!(
        dispositions,
        vec![
            (Uid(1), Disposition::Seen),
            (Uid(2), Disposition::Seen),
            (Uid(3), Disposition::Seen),
            (Uid(4), quarantine),
            (Uid(5), Disposition::Seen),
            (Uid(6), Disposition::None),
        ]
    );
    assert_eq!(
        (
            report.n_tickets,
            report.n_follow_ups,
            report.n_duplicates,
            report.n_quarantined,
            report.n_ignored
        ),
        (1, 1, 1, 1, 2)
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE direction = 'inbound'")
            .await,
        2
    );
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM messages WHERE message_id = '{first}'"
        ))
        .await,
        1
    );
    // Every message has its one outcome row, with the disposition still to be done.
    for (uid, outcome, disposition) in [
        (1, "ticket", "seen"),
        (2, "follow-up", "seen"),
        (3, "duplicate", "seen"),
        (4, "quarantined", "quarantine:Set aside"),
        (5, "ignored", "seen"),
        (6, "ignored", "none"),
    ] {
        assert_eq!(
            db.count(&format!(
                "SELECT COUNT(*) FROM imap_messages WHERE uidvalidity = 7 AND uid = {uid} AND outcome = '{outcome}' AND disposition = '{disposition}' AND disposed_at IS NULL"
            ))
            .await,
            1,
            "UID {uid}: {outcome}, {disposition}"
        );
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM imap_messages").await, 6);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE uid = 5 AND detail LIKE 'backscatter: an automatic reply %'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE uid = 6 AND detail LIKE 'before-first-start: %'")
            .await,
        1
    );
    // The unparseable message is kept with its (empty) raw bytes and its reason.
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM quarantine WHERE reason = 'unparseable' AND raw IS NOT NULL"
        )
        .await,
        1
    );
    store.close().await;
}
