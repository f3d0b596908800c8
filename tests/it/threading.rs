//! From mail to tickets end to end: replies land on their ticket, automatic replies open none, a
//! message sent to two watched mailboxes makes one ticket, attachments round-trip byte-exact.

use crate::helpers::*;

/// A raw message from `from` to `to` with optional threading headers.
pub(crate) fn mail(
    from: &str,
    to: &str,
    subject: &str,
    message_id: &str,
    in_reply_to: Option<&str>,
) -> Vec<u8> {
    let mut raw = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Tue, 24 Nov 2026 16:00:00 +0000\r\n\
         Message-ID: <{message_id}>\r\n"
    );
    if let Some(parent) = in_reply_to {
        raw.push_str(&format!(
            "In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n"
        ));
    }
    raw.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n");
    raw.into_bytes()
}

#[tokio::test]
async fn replies_land_on_their_ticket_and_automatic_replies_open_none() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let first = format!("{}@customer.test", unique("first"));
    deliver_lmtp(
        &case.mailbox,
        "alice@customer.test",
        &mail_cc(
            "Alice <alice@customer.test>",
            &case.mailbox,
            "Bob Keller <bob@customer.test>",
            "VPN is down",
            &first,
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);

    // A reply in the thread, a tagged reply from the requester, a tagged mail from a stranger,
    // an out-of-office reply in the thread from Bob (in Cc, so on the ticket) and one outside
    // any thread.
    let reply = format!("{}@customer.test", unique("reply"));
    deliver_lmtp(
        &case.mailbox,
        "alice@customer.test",
        &mail(
            "Alice <alice@customer.test>",
            &case.mailbox,
            "Re: VPN is down",
            &reply,
            Some(&first),
        ),
    )
    .await;
    let tagged = format!("{}@customer.test", unique("tagged"));
    deliver_lmtp(
        &case.mailbox,
        "alice@customer.test",
        &mail(
            "alice@customer.test",
            &case.mailbox,
            "Re: [#TCK-000001] still down",
            &tagged,
            None,
        ),
    )
    .await;
    let stranger = format!("{}@customer.test", unique("stranger"));
    deliver_lmtp(
        &case.mailbox,
        "mallory@customer.test",
        &mail(
            "mallory@customer.test",
            &case.mailbox,
            "[#TCK-000001] let me in",
            &stranger,
            None,
        ),
    )
    .await;
    let (ooo, _) = unique_fixture("ooo_exchange.eml");
    let ooo = text(&ooo).replace("<ack-1@helpdesk.test>", &format!("<{first}>"));
    deliver_lmtp(&case.mailbox, "bob@customer.test", ooo.as_bytes()).await;
    let (vacation, _) = unique_fixture("gmail_vacation.eml");
    deliver_lmtp(&case.mailbox, "carol@customer.test", &vacation).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("5 new message(s): 1 ticket(s), 3 follow-up(s), 0 duplicate(s), 0 quarantined, 1 ignored"),
        "{stdout}"
    );
    let db = &case.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1")
            .await,
        4
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND auto_kind = 'auto-reply'")
            .await,
        1
    );
    // The stranger's tag only links the new ticket to ticket 1.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE id = 2 AND related_ticket_id = 1 AND subject = 'let me in'")
            .await,
        1
    );
    assert_eq!(
        // The vacation reply names no message of ours and no ticket: backscatter.
        db.count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' AND detail LIKE 'backscatter: %'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_follow_up_reopens_a_closed_ticket() {
    let case = Case::new(Backend::Postgres, "", "implicit").await;
    let first = format!("{}@customer.test", unique("first"));
    deliver_lmtp(
        &case.mailbox,
        "alice@customer.test",
        &mail(
            "alice@customer.test",
            &case.mailbox,
            "Broken laptop",
            &first,
            None,
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    sqlx::query("UPDATE tickets SET status = 'closed'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let reply = format!("{}@customer.test", unique("reply"));
    deliver_lmtp(
        &case.mailbox,
        "alice@customer.test",
        &mail(
            "alice@customer.test",
            &case.mailbox,
            "Re: Broken laptop",
            &reply,
            Some(&first),
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM tickets WHERE status = 'open'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_message_sent_to_two_watched_mailboxes_makes_one_ticket() {
    let support = unique_mailbox();
    let sales = unique_mailbox();
    let entra = Entra::start(&[&support, &sales]).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = ConfigSpec {
        db: &db,
        entra: &entra,
        secret_env: "IT_CLIENT_SECRET",
        mailbox: &support,
        extra_mailbox_keys: "",
        tls: "implicit",
    }
    .render();
    let stack = Stack::get();
    config.push_str(&format!(
        "\n[[mailboxes]]\nname = \"sales\"\naddress = \"{sales}\"\nidentity = \"test\"\n\n\
         [mailboxes.imap]\nhost = \"localhost\"\nport = {}\nca_file = \"{}\"\n",
        stack.port("MAILSTACK_IMAPS_PORT"),
        stack.ca_file()
    ));
    let config = ConfigFile::write(&config);

    let id = format!("{}@customer.test", unique("cc"));
    let raw = mail(
        "alice@customer.test",
        &format!("{support}, {sales}"),
        "Quote for 20 laptops",
        &id,
        None,
    );
    deliver_lmtp(&support, "alice@customer.test", &raw).await;
    deliver_lmtp(&sales, "alice@customer.test", &raw).await;

    let out = mailintake(
        &config.path,
        &["once"],
        &[("IT_CLIENT_SECRET", &entra.secret)],
    )
    .await;
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("support: 1 new message(s): 1 ticket(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sales: 1 new message(s): 0 ticket(s), 0 follow-up(s), 1 duplicate(s)"),
        "{stdout}"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NOT NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn attachments_round_trip_byte_exact() {
    let case = Case::new(Backend::Postgres, "", "implicit").await;
    let (raw, _) = unique_fixture("outlook_inline.eml");
    deliver_lmtp(&case.mailbox, "grace@customer.test", &raw).await;
    let (raw, _) = unique_fixture("attachment.eml");
    deliver_lmtp(&case.mailbox, "erik@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);

    // Content is stored once per SHA-256, attachment rows once per part.
    let hashes: std::collections::HashSet<String> = ["outlook_inline.eml", "attachment.eml"]
        .iter()
        .flat_map(|f| mailintake::ingest::parse(&fixture(f)).unwrap().attachments)
        .map(|a| a.sha256)
        .collect();
    assert_eq!(case.db.count("SELECT COUNT(*) FROM attachments").await, 2);
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM attachment_blobs").await,
        hashes.len() as i64
    );
    let expected = mailintake::ingest::parse(&fixture("attachment.eml"))
        .unwrap()
        .attachments[0]
        .content
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("error.png");
    let out = case
        .run(&["attachment", "2", "--out", out_path.to_str().unwrap()])
        .await;
    assert_ok(&out);
    assert_eq!(std::fs::read(&out_path).unwrap(), &expected[..]);
    // An existing file is never overwritten.
    let out = case
        .run(&["attachment", "2", "--out", out_path.to_str().unwrap()])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("must not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_runaway_sender_is_quarantined_with_its_mail_kept() {
    let case = Case::new(
        Backend::Sqlite,
        "max_new_tickets_per_sender_per_hour = 2",
        "implicit",
    )
    .await;
    for n in 0..3 {
        let id = format!("{}@customer.test", unique("flood"));
        let raw = mail(
            "robot@customer.test",
            &case.mailbox,
            &format!("Alert {n}"),
            &id,
            None,
        );
        deliver_lmtp(&case.mailbox, "robot@customer.test", &raw).await;
    }
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("2 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'sender-rate-limit' AND raw IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn raw_messages_are_kept_compressed_when_asked_and_round_trip() {
    let case = Case::new(Backend::Postgres, "keep_raw = \"all\"", "implicit").await;
    let (raw, _) = unique_fixture("outlook_inline.eml");
    deliver_lmtp(&case.mailbox, "grace@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM raw_messages").await, 1);

    // What the server holds, byte for byte (including the trace fields it added).
    let mut conn = imap_session(&case.entra, &case.mailbox).await;
    conn.select("INBOX").await.unwrap();
    let uid = conn.list_above(0).await.unwrap()[0].uid;
    let served = match conn.fetch_bodies(&[uid], 1 << 20).await.unwrap().pop() {
        Some((_, mailintake::imap::Body::Complete(bytes))) => bytes,
        other => panic!("{other:?}"),
    };
    conn.logout().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("message.eml");
    assert_ok(
        &case
            .run(&["raw", "1", "--out", path.to_str().unwrap()])
            .await,
    );
    assert_eq!(std::fs::read(&path).unwrap(), served);
}

/// One batch sees what it wrote itself: a reply to a message of the same batch lands on that
/// message's ticket, a re-delivery of it is a duplicate, and a reply to an older ticket finds it
/// (the batch's facts are read once when it begins, then kept up to date in memory).
async fn one_batch_sees_what_it_wrote(backend: Backend) {
    let case = Case::new(backend, "", "implicit").await;
    let older = format!("{}@customer.test", unique("older"));
    let raw = mail("bob@customer.test", &case.mailbox, "Printer", &older, None);
    deliver_lmtp(&case.mailbox, "bob@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);

    let first = format!("{}@customer.test", unique("first"));
    let reply = format!("{}@customer.test", unique("reply"));
    let late = format!("{}@customer.test", unique("late"));
    let original = mail("alice@customer.test", &case.mailbox, "VPN", &first, None);
    for raw in [
        original.clone(),
        mail(
            "alice@customer.test",
            &case.mailbox,
            "Re: VPN",
            &reply,
            Some(&first),
        ),
        original,
        mail(
            "bob@customer.test",
            &case.mailbox,
            "Re: Printer",
            &late,
            Some(&older),
        ),
    ] {
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
    }
    let out = case.run(&["once"]).await;
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("4 new message(s): 1 ticket(s), 2 follow-up(s), 1 duplicate(s)"),
        "{stdout}"
    );
    // Decided right the first time: a lone worker never conflicts with itself (a conflict would
    // roll the batch back and decide it again from the database, hiding a wrong answer).
    let log = text(&out.stderr);
    assert!(!log.contains("deciding the batch again"), "{log}");
    let pool = case.db.pool().await;
    let ticket_of = |id: &str| {
        let pool = pool.clone();
        let id = id.to_string();
        async move {
            let (ticket,): (i64,) =
                sqlx::query_as("SELECT ticket_id FROM messages WHERE message_id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            ticket
        }
    };
    assert_eq!(ticket_of(&reply).await, ticket_of(&first).await);
    assert_eq!(ticket_of(&late).await, ticket_of(&older).await);
    assert_ne!(ticket_of(&first).await, ticket_of(&older).await);
    pool.close().await;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'duplicate'")
            .await,
        1
    );
}

#[tokio::test]
async fn one_batch_sees_what_it_wrote_on_sqlite() {
    one_batch_sees_what_it_wrote(Backend::Sqlite).await;
}

#[tokio::test]
async fn one_batch_sees_what_it_wrote_on_postgres() {
    one_batch_sees_what_it_wrote(Backend::Postgres).await;
}

/// `mail` with a Cc.
fn mail_cc(from: &str, to: &str, cc: &str, subject: &str, message_id: &str) -> Vec<u8> {
    let raw = String::from_utf8(mail(from, to, subject, message_id, None)).unwrap();
    raw.replacen("\r\nSubject: ", &format!("\r\nCc: {cc}\r\nSubject: "), 1)
        .into_bytes()
}

/// Before: every reply whose In-Reply-To named a ticket's message was attached to it, whoever
/// sent it: the stranger's reply became a follow-up on ticket 1 (one ticket, not two).
#[tokio::test]
async fn a_reply_reaches_its_ticket_only_from_someone_on_it_or_to_our_own_message() {
    let case = Case::new(Backend::Postgres, &smtp_keys(), "implicit").await;
    let first = format!("{}@customer.test", unique("first"));
    deliver_lmtp(
        &case.mailbox,
        "alice@customer.test",
        &mail_cc(
            "Alice <alice@customer.test>",
            &case.mailbox,
            "Bob <bob@customer.test>",
            "Printer on fire",
            &first,
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    let (ack_id,): (String,) = sqlx::query_as("SELECT message_id FROM outbox WHERE ticket_id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();

    // Bob was in Cc: his reply is a follow-up. Mallory knows the Message-ID but is no one on
    // the ticket: a new ticket linked to it. Carol answers our acknowledgement (forwarded to
    // her): a follow-up, since she replies to our own message.
    let reply = |from: &str, parent: &str, id: &str| {
        mail(from, &case.mailbox, "Re: Printer on fire", id, Some(parent))
    };
    let bob = format!("{}@customer.test", unique("bob"));
    let mallory = format!("{}@elsewhere.test", unique("mallory"));
    let carol = format!("{}@customer.test", unique("carol"));
    for (sender, raw) in [
        (
            "bob@customer.test",
            reply("Bob <bob@customer.test>", &first, &bob),
        ),
        (
            "mallory@elsewhere.test",
            reply("Mallory <mallory@elsewhere.test>", &first, &mallory),
        ),
        (
            "carol@customer.test",
            reply("Carol <carol@customer.test>", &ack_id, &carol),
        ),
    ] {
        deliver_lmtp(&case.mailbox, sender, &raw).await;
    }
    assert_ok(&case.run(&["once"]).await);

    let ticket_of = |id: String| {
        let pool = pool.clone();
        async move {
            let (ticket,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT ticket_id FROM messages WHERE message_id = '{id}'"
            )))
            .fetch_one(&pool)
            .await
            .unwrap();
            ticket
        }
    };
    assert_eq!(ticket_of(bob).await, 1, "someone in Cc is on the ticket");
    assert_eq!(ticket_of(carol).await, 1, "a reply to our own message");
    let stranger_ticket = ticket_of(mallory).await;
    assert_ne!(
        stranger_ticket, 1,
        "a stranger's reply opens a ticket of its own"
    );
    let (related, requester): (Option<i64>, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT related_ticket_id, requester_address FROM tickets WHERE id = {stranger_ticket}"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(related, Some(1), "linked to the ticket it referred to");
    assert_eq!(requester, "mallory@elsewhere.test");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    pool.close().await;
}
