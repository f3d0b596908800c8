//! What becomes a ticket and who gets an acknowledgement, end to end: machine-generated mail
//! opens tickets that are never acknowledged (unless the mailbox says `automatic = "ignore"`), a
//! machine's reply goes on the ticket it is about without reopening it or is recorded as
//! backscatter, a bounce of one of our acknowledgements (a real one, from Postfix) marks its
//! outbox row, and a forward between two watched mailboxes is no loop.

use std::time::Duration;

use crate::helpers::*;

/// Mail in the mailbox before the first connection is imported without acknowledgements: connect
/// first, then let the next second begin (INTERNALDATE has whole seconds).
async fn connect_first(case: &Case) {
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    next_second().await;
}

fn message(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{headers}Date: Tue, 24 Nov 2026 17:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// A monitoring alert, a partner ticket system's notification and a partner agent's reply sent
/// through that system: before, all three were `ignored` as automatic mail (Auto-Submitted, or
/// X-Auto-Response-Suppress alone) and lost to the helpdesk. Now each opens a ticket, and none
/// is acknowledged.
#[tokio::test]
async fn an_alert_and_a_partner_reply_open_tickets_without_acknowledgements() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let to = &case.mailbox;
    let alert = message(
        &format!(
            "From: Monitoring <alerts@monitoring.customer.test>\r\nTo: {to}\r\n\
             Subject: CRITICAL: disk full on db1\r\nMessage-ID: <{}@monitoring.customer.test>\r\n\
             Auto-Submitted: auto-generated\r\n",
            unique("alert")
        ),
        "/var on db1 is 100% full.",
    );
    let partner_system = message(
        &format!(
            "From: Partner Service Desk <servicedesk@partner.test>\r\nTo: {to}\r\n\
             Subject: INC0012345 opened: VPN gateway down\r\nMessage-ID: <{}@partner.test>\r\n\
             Auto-Submitted: auto-generated\r\nPrecedence: bulk\r\nX-Auto-Response-Suppress: All\r\n",
            unique("inc")
        ),
        "Incident INC0012345 was opened for you.",
    );
    let partner_agent = message(
        &format!(
            "From: Pat Agent <servicedesk@partner.test>\r\nTo: {to}\r\n\
             Subject: Re: our invoice 4711\r\nMessage-ID: <{}@partner.test>\r\n\
             X-Auto-Response-Suppress: All\r\n",
            unique("agent")
        ),
        "Hello, we corrected the invoice. Pat",
    );
    deliver_lmtp(to, "alerts@monitoring.customer.test", &alert).await;
    deliver_lmtp(to, "servicedesk@partner.test", &partner_system).await;
    deliver_lmtp(to, "servicedesk@partner.test", &partner_agent).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("3 new message(s): 3 ticket(s), 0 follow-up(s), 0 duplicate(s), 0 quarantined, 0 ignored"),
        "{stdout}"
    );
    assert!(
        stdout.contains("support outbox: 0 acknowledgement(s) sent"),
        "{stdout}"
    );
    let db = &case.db;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM tickets t JOIN messages m ON m.ticket_id = t.id \
             WHERE m.auto_kind = 'auto-generated' AND t.subject IN ('CRITICAL: disk full on db1', 'INC0012345 opened: VPN gateway down')"
        )
        .await,
        2
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE auto_kind IS NULL AND subject = 'Re: our invoice 4711'")
            .await,
        1
    );
    // Every ticket has its outbox row, each suppressed with the reason.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason = 'automatic mail (auto-generated) is never acknowledged'")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason = 'the sender asks for no automatic replies (X-Auto-Response-Suppress: all)'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state <> 'suppressed'")
            .await,
        0
    );
}

/// `automatic = "ignore"`: machine-generated mail opens no ticket and says why; in a ticket's
/// thread it is still attached, without reopening it.
#[tokio::test]
async fn a_mailbox_that_ignores_machine_generated_mail_records_why() {
    let case = Case::new(Backend::Postgres, "automatic = \"ignore\"", "implicit").await;
    let to = &case.mailbox;
    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        to,
        "alice@customer.test",
        &message(
            // The backup system's address is in Cc, so it is on the ticket (a reply in the
            // thread from anyone else opens a ticket of its own).
            &format!("From: alice@customer.test\r\nTo: {to}\r\nCc: backup@customer.test\r\nSubject: Backup failed\r\nMessage-ID: <{first}>\r\n"),
            "The backup failed.",
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    sqlx::query("UPDATE tickets SET status = 'resolved'")
        .execute(&pool)
        .await
        .unwrap();
    deliver_lmtp(
        to,
        "backup@customer.test",
        &message(
            &format!(
                "From: backup@customer.test\r\nTo: {to}\r\nSubject: Re: Backup failed\r\n\
                 Message-ID: <{}@customer.test>\r\nIn-Reply-To: <{first}>\r\nAuto-Submitted: auto-generated\r\n",
                unique("job")
            ),
            "Job 17 succeeded.",
        ),
    )
    .await;
    deliver_lmtp(
        to,
        "news@vendor.test",
        &message(
            &format!(
                "From: news@vendor.test\r\nTo: {to}\r\nSubject: November news\r\n\
                 Message-ID: <{}@vendor.test>\r\nList-Id: <news.vendor.test>\r\n",
                unique("news")
            ),
            "Great offers!",
        ),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("2 new message(s): 0 ticket(s), 1 follow-up(s), 0 duplicate(s), 0 quarantined, 1 ignored"),
        "{stdout}"
    );
    let db = &case.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE status = 'resolved'")
            .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND auto_kind = 'auto-generated'"
        )
        .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' AND detail LIKE 'automatic: mailing-list mail (%' \
             AND detail LIKE '%automatic = \"ignore\"'"
        )
        .await,
        1
    );
}

/// An out-of-office reply to a closed ticket's message goes on that ticket and leaves it closed;
/// an out-of-office and a bounce about mail we never sent are recorded as backscatter, with that
/// reason (before, the reason was "automatic mail … that belongs to no ticket").
#[tokio::test]
async fn an_out_of_office_is_attached_without_reopening_and_backscatter_is_ignored_with_its_reason()
{
    let case = Case::new(Backend::Postgres, "", "implicit").await;
    let to = &case.mailbox;
    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        to,
        "alice@customer.test",
        &message(
            &format!(
                "From: Alice <alice@customer.test>\r\nTo: {to}, bob@customer.test\r\n\
                 Subject: Laptop broken\r\nMessage-ID: <{first}>\r\n"
            ),
            "My laptop is broken.",
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let pool = case.db.pool().await;
    sqlx::query("UPDATE tickets SET status = 'closed'")
        .execute(&pool)
        .await
        .unwrap();

    let (ooo, _) = unique_fixture("ooo_exchange.eml");
    let ooo = text(&ooo).replace("<ack-1@helpdesk.test>", &format!("<{first}>"));
    deliver_lmtp(to, "bob@customer.test", ooo.as_bytes()).await;
    // Replies to spam that forged our address.
    let (vacation, _) = unique_fixture("gmail_vacation.eml");
    deliver_lmtp(to, "carol@customer.test", &vacation).await;
    let (dsn, _) = unique_fixture("dsn.eml");
    deliver_lmtp(to, "", &dsn).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("3 new message(s): 0 ticket(s), 1 follow-up(s), 0 duplicate(s), 0 quarantined, 2 ignored"),
        "{stdout}"
    );
    let db = &case.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE status = 'closed'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND auto_kind = 'auto-reply'")
            .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' \
             AND detail = 'backscatter: an automatic reply (Auto-Submitted: auto-replied) that names neither a ticket nor one of our messages'"
        )
        .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' \
             AND detail LIKE 'backscatter: a bounce (%) that names neither a ticket nor one of our messages'"
        )
        .await,
        1
    );
}

/// The raw messages in `mailbox`'s inbox.
async fn inbox_messages(entra: &Entra, mailbox: &str) -> Vec<Vec<u8>> {
    let mut conn = imap_session(entra, mailbox).await;
    conn.select("INBOX").await.unwrap();
    let listed = conn.list_above(0).await.unwrap();
    let uids: Vec<_> = listed.iter().map(|m| m.uid).collect();
    let bodies = conn.fetch_bodies(&uids, 1 << 20).await.unwrap();
    conn.logout().await;
    bodies
        .into_iter()
        .filter_map(|(_, body)| match body {
            mailintake::imap::Body::Complete(raw) => Some(raw),
            mailintake::imap::Body::TooLarge | mailintake::imap::Body::Refused(_) => None,
        })
        .collect()
}

/// A delay notice (RFC 3464 `Action: delayed`) about our acknowledgement `ack_id`.
fn delay_notice(to: &str, ack_id: &str, recipient: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.customer.test (Mail Delivery System)\r\nTo: {to}\r\n\
         Subject: Delayed Mail (still being retried)\r\nMessage-ID: <{id}@mx.customer.test>\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"D\"\r\n\r\n\
         --D\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is the mail system at host mx.customer.test. Your message could not be delivered\r\n\
         for 4 hours. It will be retried until it is 5 days old.\r\n\
         --D\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.customer.test\r\nArrival-Date: Tue, 24 Nov 2026 13:00:00 +0000\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n\
         Action: delayed\r\nStatus: 4.4.1\r\nDiagnostic-Code: X-Postfix; connect to\r\n    mx.customer.test: Connection timed out\r\n\
         Will-Retry-Until: Sun, 29 Nov 2026 13:00:00 +0000\r\n\r\n\
         --D\r\nContent-Type: text/rfc822-headers\r\n\r\n\
         From: {to}\r\nTo: {recipient}\r\nSubject: [#TCK-000001] Re: Printer\r\nMessage-ID: <{ack_id}>\r\n\r\n\
         --D--\r\n",
        id = unique("delayed")
    )
    .into_bytes()
}

/// An acknowledgement to an address the mail server cannot deliver to comes back as Postfix's
/// own DSN (Dovecot refuses `no=body…@customer.test` at delivery, 550 5.1.1, after Postfix
/// accepted it): the DSN goes on the ticket (without reopening it) and the outbox row becomes
/// `bounced` with the DSN's words; `outbox list` shows it. A delay notice about another
/// acknowledgement leaves that row `sent`. Before, the row stayed `sent` and nothing said the
/// customer never got it.
#[tokio::test]
async fn a_bounce_of_an_acknowledgement_marks_its_outbox_row_and_a_delay_notice_does_not() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let to = &case.mailbox;
    let alice = format!("{}@customer.test", unique("alice"));
    let nobody = format!("no={}@customer.test", unique("body"));
    for (sender, subject) in [(&alice, "Printer jammed"), (&nobody, "Wifi down")] {
        deliver_lmtp(
            to,
            sender,
            &message(
                &format!(
                    "From: Customer <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@customer.test>\r\n",
                    unique("q")
                ),
                "Please help.",
            ),
        )
        .await;
    }
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("2 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 2 acknowledgement(s) sent"),
        "{stdout}"
    );
    let pool = case.db.pool().await;
    let (alice_ack, alice_ticket): (String, i64) =
        sqlx::query_as("SELECT message_id, ticket_id FROM outbox WHERE to_address = $1")
            .bind(&alice)
            .fetch_one(&pool)
            .await
            .unwrap();
    let (nobody_ack, nobody_ticket): (String, i64) =
        sqlx::query_as("SELECT message_id, ticket_id FROM outbox WHERE to_address = $1")
            .bind(&nobody)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE tickets SET status = 'closed'")
        .execute(&pool)
        .await
        .unwrap();

    // Postfix's DSN arrives in the support mailbox.
    let bounced = eventually(Duration::from_secs(30), || async {
        inbox_messages(&case.entra, to)
            .await
            .iter()
            .any(|raw| text(raw).contains("report-type=delivery-status"))
    })
    .await;
    assert!(bounced, "no delivery status notification from Postfix");
    deliver_lmtp(to, "", &delay_notice(to, &alice_ack, &alice)).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("2 new message(s): 0 ticket(s), 2 follow-up(s), 0 duplicate(s), 0 quarantined, 0 ignored"),
        "{stdout}"
    );
    let db = &case.db;
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM messages WHERE ticket_id = {nobody_ticket} AND auto_kind = 'bounce'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM messages WHERE ticket_id = {alice_ticket} AND auto_kind = 'delivery-status'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE status = 'closed'")
            .await,
        2,
        "a notification reopened a ticket"
    );
    let (state, reason, bounced_at): (String, Option<String>, Option<i64>) =
        sqlx::query_as("SELECT state, bounce_reason, bounced_at FROM outbox WHERE message_id = $1")
            .bind(&nobody_ack)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "bounced");
    assert!(bounced_at.is_some());
    let reason = reason.unwrap_or_default();
    assert!(
        reason.starts_with(&format!("{nobody}: failed 5.1.1 (")),
        "{reason}"
    );
    assert!(reason.contains("User doesn't exist"), "{reason}");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE message_id = '{alice_ack}' AND state = 'sent' AND bounced_at IS NULL"
        ))
        .await,
        1,
        "a delay notice is not a bounce"
    );
    // Neither notification is answered.
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM outbox WHERE state NOT IN ('suppressed', 'sent', 'bounced')"
        )
        .await,
        0
    );

    let listed = assert_ok(&case.run(&["outbox", "list", "--state", "bounced"]).await);
    assert!(listed.contains("bounced"), "{listed}");
    assert!(listed.contains(&nobody), "{listed}");
    assert!(listed.contains("failed 5.1.1"), "{listed}");
}

/// An agent forwards a customer's message from the support mailbox to the sales mailbox: that is
/// a request for sales, not a loop (before, mail From one of our own addresses was ignored as a
/// loop). What mailintake itself sent (its X-Loop and Message-ID) still is one.
#[tokio::test]
async fn a_forward_between_two_watched_mailboxes_is_not_a_loop() {
    let support = unique_mailbox();
    let sales = unique_mailbox();
    let entra = Entra::start(&[&support, &sales]).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = ConfigSpec {
        db: &db,
        entra: &entra,
        secret_env: "IT_CLIENT_SECRET",
        mailbox: &support,
        extra_mailbox_keys: &smtp_keys(),
        tls: "implicit",
    }
    .render();
    let stack = Stack::get();
    config.push_str(&format!(
        "\n[[mailboxes]]\nname = \"sales\"\naddress = \"{sales}\"\nidentity = \"test\"\npoll_interval = \"1s\"\n{}\n\n\
         [mailboxes.imap]\nhost = \"localhost\"\nport = {}\nca_file = \"{}\"\n",
        smtp_keys(),
        stack.port("MAILSTACK_IMAPS_PORT"),
        stack.ca_file()
    ));
    let config = ConfigFile::write(&config);
    let run = || async {
        mailintake(
            &config.path,
            &["once"],
            &[("IT_CLIENT_SECRET", &entra.secret)],
        )
        .await
    };
    assert_ok(&run().await);
    next_second().await;

    let forward = message(
        &format!(
            "From: Support Team <{support}>\r\nTo: {sales}\r\nSubject: Fwd: Quote for 20 laptops\r\n\
             Message-ID: <{}@helpdesk.test>\r\n",
            unique("fwd")
        ),
        "Can you take this one?\r\n\r\n---------- Forwarded message ---------\r\nFrom: alice@customer.test\r\nWe need 20 laptops.",
    );
    deliver_lmtp(&sales, &support, &forward).await;
    // One of our own acknowledgements, redirected back into a watched mailbox.
    let ours = message(
        &format!(
            "From: {support}\r\nTo: {sales}\r\nSubject: [#TCK-000001] Re: Printer\r\n\
             Message-ID: <mailintake.tck-000001.{}.1.0@{}>\r\nAuto-Submitted: auto-replied\r\nX-Loop: {support}\r\n",
            unique("ack"),
            support.rsplit_once('@').unwrap().1
        ),
        "Thank you for your message.",
    );
    deliver_lmtp(&sales, &support, &ours).await;

    let stdout = assert_ok(&run().await);
    assert!(
        stdout.contains("sales: 2 new message(s): 1 ticket(s), 0 follow-up(s), 0 duplicate(s), 0 quarantined, 1 ignored"),
        "{stdout}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE mailbox = 'sales' AND subject = 'Quote for 20 laptops'")
            .await,
        1
    );
    // No acknowledgement goes to our own mailbox.
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason = '{support} is one of our own mailboxes'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' AND detail LIKE 'loop: mail loop: %'")
            .await,
        1
    );
}
