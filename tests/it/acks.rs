//! Acknowledgements end to end: written with the ticket, sent through Postfix with XOAUTH2, read
//! in the customer's inbox; replies thread back; limits defer; refusals are recorded.

use std::time::Duration;

use crate::helpers::*;

/// Mail already in a mailbox when mailintake first connects is imported without
/// acknowledgements; the tests' customers write after that first connection.
pub(crate) async fn connect_first(case: &Case) {
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    // INTERNALDATE has whole seconds: let the next second begin, so that mail delivered now is
    // unambiguously newer than the first connection.
    next_second().await;
}

pub(crate) fn customer_mail(
    from: &str,
    to: &str,
    subject: &str,
    id: &str,
    extra_headers: &str,
) -> Vec<u8> {
    format!(
        "From: Alice Example <{from}>\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Tue, 24 Nov 2026 17:00:00 +0000\r\nMessage-ID: <{id}>\r\n{extra_headers}\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease help.\r\n"
    )
    .into_bytes()
}

/// The raw messages in `mailbox`'s inbox.
pub(crate) async fn inbox_messages(entra: &Entra, mailbox: &str) -> Vec<Vec<u8>> {
    folder_messages(entra, mailbox, "INBOX")
        .await
        .into_iter()
        .map(|(raw, _)| raw)
        .collect()
}

/// Every message of `mailbox`'s `folder` (opened read-only): its raw bytes and whether it is
/// `\Seen`.
pub(crate) async fn folder_messages(
    entra: &Entra,
    mailbox: &str,
    folder: &str,
) -> Vec<(Vec<u8>, bool)> {
    let mut conn = imap_session(entra, mailbox).await;
    conn.examine(folder).await.unwrap();
    let listed = conn.list_above(0).await.unwrap();
    let uids: Vec<_> = listed.iter().map(|m| m.uid).collect();
    let bodies = conn.fetch_bodies(&uids, 64 << 20).await.unwrap();
    conn.logout().await;
    bodies
        .into_iter()
        .filter_map(|(uid, body)| match body {
            mailintake::imap::Body::Complete(raw) => {
                let seen = listed.iter().any(|m| m.uid == uid && m.seen);
                Some((raw, seen))
            }
            mailintake::imap::Body::TooLarge | mailintake::imap::Body::Refused(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn the_customer_gets_one_acknowledgement_and_replies_to_it_thread_back() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("alice"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    connect_first(&case).await;

    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(&customer, &support, "Printer on fire", &first, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 1 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND smtp_response LIKE '250%' AND ticket_id = 1")
            .await,
        1
    );

    // The acknowledgement arrives in the customer's inbox, shaped by RFC 3834.
    let arrived = eventually(Duration::from_secs(20), || async {
        !inbox_messages(&case.entra, &customer).await.is_empty()
    })
    .await;
    assert!(arrived, "no acknowledgement in the customer's inbox");
    let ack = inbox_messages(&case.entra, &customer).await.remove(0);
    let ack_text = text(&ack);
    let parsed = mailintake::ingest::parse(&ack).unwrap();
    assert_eq!(parsed.subject, "[#TCK-000001] Re: Printer on fire");
    assert_eq!(parsed.in_reply_to, std::slice::from_ref(&first));
    assert_eq!(parsed.from.as_ref().unwrap().address, support);
    assert_eq!(
        parsed.signals.auto_submitted.as_deref(),
        Some("auto-replied")
    );
    assert!(
        ack_text.contains("X-Auto-Response-Suppress: All"),
        "{ack_text}"
    );
    assert!(ack_text.contains("Precedence: auto_reply"), "{ack_text}");
    assert!(
        ack_text.contains(&format!("X-Loop: {support}")),
        "{ack_text}"
    );
    assert!(ack_text.contains("TCK-000001"), "{ack_text}");
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE message_id = '{}'",
                parsed.message_id
            ))
            .await,
        1
    );

    // The customer's reply to the acknowledgement and their out-of-office both land on ticket 1;
    // neither opens a ticket, and neither gets an acknowledgement.
    let reply = format!("{}@customer.test", unique("r"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(
            &customer,
            &support,
            "Re: [#TCK-000001] Re: Printer on fire",
            &reply,
            &format!("In-Reply-To: <{}>\r\n", parsed.message_id),
        ),
    )
    .await;
    let ooo = format!("{}@customer.test", unique("ooo"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(
            &customer,
            &support,
            "Automatic reply: [#TCK-000001] Re: Printer on fire",
            &ooo,
            &format!(
                "In-Reply-To: <{}>\r\nAuto-Submitted: auto-replied\r\n",
                parsed.message_id
            ),
        ),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 ticket(s), 2 follow-up(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 0 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1")
            .await,
        3
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason LIKE 'automatic mail%'")
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason LIKE 'follow-ups are not acknowledged%'")
            .await,
        1
    );
    assert_eq!(inbox_messages(&case.entra, &customer).await.len(), 1);
}

#[tokio::test]
async fn the_sending_limit_defers_and_never_drops() {
    let extra = smtp_keys().replacen(" }", ", max_per_minute = 1 }", 1);
    let case = Case::new(Backend::Postgres, &extra, "implicit").await;
    connect_first(&case).await;
    for n in 0..3 {
        let customer = format!("{}@customer.test", unique("c"));
        let id = format!("{}@customer.test", unique("m"));
        deliver_lmtp(
            &case.mailbox,
            &customer,
            &customer_mail(&customer, &case.mailbox, &format!("Question {n}"), &id, ""),
        )
        .await;
    }
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("3 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("1 acknowledgement(s) sent, 0 to retry, 0 failed, rest deferred"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            .await,
        2
    );
    // Still limited a moment later: the counter lives in the table, not in the process.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 acknowledgement(s) sent") && stdout.contains("deferred"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_refused_from_address_blocks_only_its_own_rows_on_sqlite() {
    a_refused_from_address_blocks_only_its_own_rows(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refused_from_address_blocks_only_its_own_rows_on_postgres() {
    a_refused_from_address_blocks_only_its_own_rows(Backend::Postgres).await;
}

/// Postfix refuses one From address (`reject_sender_login_mismatch`, 5.7.1, as Exchange's SendAs
/// rule does with 5.7.60) and one recipient (`recipient_access.regexp`, 5.1.1). The refused From
/// address's rows wait with the reason and the fix; rows from the mailbox's own address go out in
/// the same flush; only the refused recipient's row fails.
async fn a_refused_from_address_blocks_only_its_own_rows(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("c"));
    let entra = Entra::start(&[&support, &customer]).await;
    let refused_from = "someone.else@helpdesk.test";
    let refused_keys = smtp_keys_with_ack(&format!("from = \"{refused_from}\""));
    let case = Case::build(backend, &refused_keys, "implicit", support.clone(), entra).await;
    connect_first(&case).await;

    // Two customers write while acknowledgements are sent as an address the login may not use.
    for n in 0..2 {
        let sender = format!("{}@customer.test", unique("early"));
        let id = format!("{}@customer.test", unique("m"));
        deliver_lmtp(
            &support,
            &sender,
            &customer_mail(&sender, &support, &format!("Early question {n}"), &id, ""),
        )
        .await;
    }
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("2 ticket(s)"), "{stdout}");
    // The first row is refused; the second is not even tried: the From address is blocked.
    assert!(
        stdout.contains("0 acknowledgement(s) sent, 0 to retry, 0 failed, 2 waiting"),
        "{stdout}"
    );
    let blocked = format!(
        "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND from_address = '{refused_from}' \
         AND blocked_reason LIKE '%Sender address rejected%' AND blocked_reason LIKE '%Add-RecipientPermission%' \
         AND blocked_at IS NOT NULL AND next_attempt_at > blocked_at + 9 * 60 * 1000"
    );
    assert_eq!(case.db.count(&blocked).await, 2);
    let never_tried = "SELECT COUNT(*) FROM outbox WHERE claimed_at IS NULL AND last_error IS NULL";
    assert_eq!(
        case.db.count(never_tried).await,
        1,
        "the second row of the blocked address was tried"
    );
    // A refusal of the From address does not count toward giving a row up.
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE attempts = 0")
            .await,
        2
    );
    let first_id = case.db.count("SELECT MIN(id) FROM outbox").await;
    let first_claimed = case
        .db
        .count(&format!(
            "SELECT claimed_at FROM outbox WHERE id = {first_id}"
        ))
        .await;

    // The mailbox sends from its own address again (a config change); a customer writes, and so
    // does someone whose address Postfix refuses. The blocked address's oldest row is made due by
    // hand, so this flush meets the refusal again before the other rows.
    let own_from = ConfigFile::write(
        &ConfigSpec {
            db: &case.db,
            entra: &case.entra,
            secret_env: &case.secret_var,
            mailbox: &support,
            extra_mailbox_keys: &smtp_keys(),
            tls: "implicit",
        }
        .render(),
    );
    let id = format!("{}@customer.test", unique("m"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(&customer, &support, "Later question", &id, ""),
    )
    .await;
    let unknown = format!("{}@customer.test", unique("unknown-"));
    let id = format!("{}@customer.test", unique("m"));
    deliver_lmtp(
        &support,
        &unknown,
        &customer_mail(&unknown, &support, "From a dead address", &id, ""),
    )
    .await;
    assert_ok(&case.run(&["outbox", "retry", &first_id.to_string()]).await);
    let out = mailintake(
        &own_from.path,
        &["once"],
        &[(&case.secret_var, &case.entra.secret)],
    )
    .await;
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("1 acknowledgement(s) sent, 0 to retry, 1 failed, 2 waiting"),
        "{stdout}"
    );
    assert_eq!(case.db.count(&blocked).await, 2);
    // The oldest blocked row was tried again and refused again; the other one still waits untried.
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE id = {first_id} AND claimed_at > {first_claimed}"
            ))
            .await,
        1
    );
    assert_eq!(case.db.count(never_tried).await, 1);
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND to_address = '{customer}' \
                 AND from_address = '{support}' AND blocked_reason IS NULL"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'failed' AND to_address = '{unknown}' \
                 AND last_error LIKE '%5.1.1%' AND blocked_reason IS NULL"
            ))
            .await,
        1
    );
    let arrived = eventually(Duration::from_secs(20), || async {
        !inbox_messages(&case.entra, &customer).await.is_empty()
    })
    .await;
    assert!(arrived, "no acknowledgement in the customer's inbox");

    // The operator sees why the two rows wait, and what to do.
    let listing = assert_ok(&case.run(&["outbox", "list"]).await);
    let waiting: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(" blocked "))
        .collect();
    assert_eq!(waiting.len(), 2, "{listing}");
    assert!(
        waiting
            .iter()
            .all(|l| l.contains("Sender address rejected")),
        "{listing}"
    );
    // `--state blocked` shows exactly those; a misspelt state is refused with the choices.
    let blocked = assert_ok(&case.run(&["outbox", "list", "--state", "blocked"]).await);
    assert_eq!(
        blocked.lines().count(),
        1 + 2,
        "a header and the two rows: {blocked}"
    );
    assert!(
        blocked.lines().skip(1).all(|l| l.contains(" blocked ")),
        "{blocked}"
    );
    let out = case.run(&["outbox", "list", "--state", "blockd"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("possible values") && stderr.contains("blocked"),
        "{stderr}"
    );
    // The ticket is not affected.
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 4);
}

#[tokio::test]
async fn a_token_without_smtp_permission_is_retried_later_with_the_fix() {
    let support = unique_mailbox();
    let entra = Entra::start_with(
        &[&support],
        Duration::from_secs(3599),
        &["IMAP.AccessAsApp"],
    )
    .await;
    let case = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    connect_first(&case).await;
    let customer = format!("{}@customer.test", unique("c"));
    let id = format!("{}@customer.test", unique("m"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(&customer, &support, "No SMTP role", &id, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 acknowledgement(s) sent, 1 to retry"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts = 1 AND last_error LIKE '%SMTP.SendAsApp%'")
            .await,
        1
    );
    // The refused token was replaced once before giving up for now.
    assert!(case.entra.fake.requests().len() >= 2);
}

#[tokio::test]
async fn imported_mail_is_not_acknowledged() {
    let extra = smtp_keys_with_ack("since = \"2099-01-01\"");
    let case = Case::new(Backend::Sqlite, &extra, "implicit").await;
    let customer = format!("{}@customer.test", unique("c"));
    let id = format!("{}@customer.test", unique("m"));
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Old mail", &id, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("1 ticket(s)") && stdout.contains("0 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND reason LIKE '%first connected%'")
            .await,
        1
    );
}

#[tokio::test]
async fn the_running_worker_sends_acknowledgements_as_tickets_arrive() {
    let extra = format!("{}\npoll_interval = \"10m\"", smtp_keys());
    let case = Case::new(Backend::Sqlite, &extra, "implicit").await;
    let running = case.spawn_run();
    let connected = case
        .wait_for_count(
            "SELECT COUNT(*) FROM mailbox_state",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert!(connected, "no first sweep: {}", running.log());
    next_second().await;
    let customer = format!("{}@customer.test", unique("c"));
    let id = format!("{}@customer.test", unique("m"));
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Idle and ack", &id, ""),
    )
    .await;
    let sent = case
        .wait_for_count(
            "SELECT COUNT(*) FROM outbox WHERE state = 'sent'",
            1,
            Duration::from_secs(20),
        )
        .await;
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    let pool = case.db.pool().await;
    let rows: Vec<(String, Option<String>)> = sqlx::query_as("SELECT state, reason FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(
        sent,
        "no acknowledgement sent by the running worker: {rows:?} {log}"
    );
    assert!(status.success(), "{status}: {log}");
}

#[tokio::test]
async fn two_workers_never_send_the_same_row() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("many"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(
        Backend::Postgres,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    connect_first(&case).await;
    let pool = case.db.pool().await;
    for n in 0..12 {
        sqlx::query(
            "INSERT INTO outbox (mailbox, kind, from_address, to_address, subject, message_id, body_text, \
             next_attempt_at, created_at) VALUES ('support', 'acknowledgement', $1, $2, $3, $4, 'Hello', 0, 0)",
        )
        .bind(&support)
        .bind(&customer)
        .bind(format!("Row {n}"))
        .bind(format!("{}@helpdesk.test", unique("row")))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let (a, b) = tokio::join!(case.run(&["once"]), case.run(&["once"]));
    assert_ok(&a);
    assert_ok(&b);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        12
    );
    let delivered = eventually(Duration::from_secs(20), || async {
        inbox_messages(&case.entra, &customer).await.len() >= 12
    })
    .await;
    assert!(delivered, "not all 12 arrived");
    assert_eq!(
        inbox_messages(&case.entra, &customer).await.len(),
        12,
        "no row sent twice"
    );
}

#[tokio::test]
async fn check_tests_smtp_and_sends_a_test_message() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("tm"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    let out = case
        .run(&["check", "support", "--send-test-mail", &customer])
        .await;
    let stdout = assert_ok(&out);
    assert!(stdout.contains("ok   smtp"), "{stdout}");
    assert!(stdout.contains("XOAUTH2 accepted"), "{stdout}");
    assert!(stdout.contains("ok   testmail sent to"), "{stdout}");
    let arrived = eventually(Duration::from_secs(20), || async {
        !inbox_messages(&case.entra, &customer).await.is_empty()
    })
    .await;
    assert!(arrived, "the test message did not arrive");
}

#[tokio::test]
async fn check_names_the_missing_smtp_permission() {
    let support = unique_mailbox();
    let entra = Entra::start_with(
        &[&support],
        Duration::from_secs(3599),
        &["IMAP.AccessAsApp"],
    )
    .await;
    let case = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    let out = case.run(&["check", "support"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok   imap"), "{stdout}");
    assert!(stdout.contains("FAIL smtp"), "{stdout}");
    assert!(stdout.contains("SMTP.SendAsApp"), "{stdout}");
}

#[tokio::test]
async fn acknowledgements_go_out_over_implicit_tls_too() {
    let stack = Stack::get();
    let extra = format!(
        "smtp = {{ host = \"localhost\", port = {}, tls = \"implicit\", ca_file = \"{}\" }}\n{}",
        stack.port("MAILSTACK_SUBMISSIONS_PORT"),
        stack.ca_file(),
        ack_keys_with("")
    );
    let case = Case::new(Backend::Sqlite, &extra, "implicit").await;
    connect_first(&case).await;
    let customer = format!("{}@customer.test", unique("tls"));
    let id = format!("{}@customer.test", unique("m"));
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Port 465", &id, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 acknowledgement(s) sent"), "{stdout}");
}

#[tokio::test]
async fn the_sender_of_a_too_large_message_gets_one_short_notice() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("big"));
    let entra = Entra::start(&[&support, &customer]).await;
    let extra = format!(
        "{}\nmax_message_bytes = 4096",
        smtp_keys_with_ack("quarantine_notice = true")
    );
    let case = Case::build(Backend::Sqlite, &extra, "implicit", support.clone(), entra).await;
    connect_first(&case).await;
    let (big, _) = large_message(&support, 20_000);
    let big = text(&big).replace("big@customer.test", &customer);
    deliver_lmtp(&support, &customer, big.as_bytes()).await;
    // An automatic message that is too large gets no notice.
    let (auto, _) = large_message(&support, 20_000);
    let auto = text(&auto).replace(
        "MIME-Version",
        "Auto-Submitted: auto-generated\r\nMIME-Version",
    );
    deliver_lmtp(&support, "robot@customer.test", auto.as_bytes()).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("2 quarantined"), "{stdout}");
    assert!(stdout.contains("1 acknowledgement(s) sent"), "{stdout}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE kind = 'quarantine-notice' AND state = 'sent' AND ticket_id IS NULL")
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE kind = 'quarantine-notice' AND state = 'suppressed' AND reason LIKE 'automatic mail%'")
            .await,
        1
    );
    let arrived = eventually(Duration::from_secs(20), || async {
        !inbox_messages(&case.entra, &customer).await.is_empty()
    })
    .await;
    assert!(arrived, "no notice in the sender's inbox");
    let notice = text(&inbox_messages(&case.entra, &customer).await.remove(0));
    assert!(
        notice.contains("Not received automatically: A very large log file"),
        "{notice}"
    );
    assert!(notice.contains("It is kept"), "{notice}");
    assert!(notice.contains("Auto-Submitted: auto-replied"), "{notice}");
}

/// A Mailman digest (X-Mailman-Version, From the list's -request address, no List-* fields) and a
/// LISTSERV posting (Sender the list, envelope sender its owner-… address) are list mail: no
/// acknowledgement goes to a list's command, owner or bounce address (both were acknowledged to
/// them before).
#[tokio::test]
async fn list_mail_is_never_acknowledged_to_list_addresses() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let digest_id = format!("{}@lists.example.org", unique("digest"));
    let digest = format!(
        "From: helpdesk-l-request@lists.example.org\r\nTo: {to}\r\nSubject: Helpdesk-L Digest, Vol 12, Issue 3\r\nMessage-ID: <{id}>\r\nX-Mailman-Version: 2.1.39\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSend Helpdesk-L mailing list submissions to helpdesk-l@lists.example.org\r\n",
        to = case.mailbox,
        id = digest_id
    );
    deliver_lmtp(
        &case.mailbox,
        "helpdesk-l-bounces@lists.example.org",
        digest.as_bytes(),
    )
    .await;
    let posting_id = format!("{}@example.edu", unique("posting"));
    let posting = format!(
        "Sender: Helpdesk discussion <HELPDESK-L@LISTSERV.EXAMPLE.EDU>\r\nFrom: Bob Example <bob@example.edu>\r\nTo: {to}\r\nSubject: printers on the third floor\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nDoes anyone else see this?\r\n",
        to = case.mailbox,
        id = posting_id
    );
    deliver_lmtp(
        &case.mailbox,
        "owner-HELPDESK-L@LISTSERV.EXAMPLE.EDU",
        posting.as_bytes(),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("2 new message(s)"), "{stdout}");
    let db = &case.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state <> 'suppressed'")
            .await,
        0,
        "an acknowledgement was queued for list mail"
    );
    for address in [
        "helpdesk-l-request@lists.example.org",
        "helpdesk-l-bounces@lists.example.org",
        "owner-helpdesk-l@listserv.example.edu",
    ] {
        assert_eq!(
            db.count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE lower(to_address) = '{address}' AND state <> 'suppressed'"
            ))
            .await,
            0,
            "{address}"
        );
    }
    // Both are list mail, kept as tickets (the default `automatic = "ticket"`): neither is lost.
    assert_eq!(db.count("SELECT COUNT(*) FROM imap_messages").await, 2);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages WHERE auto_kind = 'list'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_blocked_from_address_is_freed_by_one_accepted_message_on_sqlite() {
    a_blocked_from_address_is_freed_by_one_accepted_message(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_blocked_from_address_is_freed_by_one_accepted_message_on_postgres() {
    a_blocked_from_address_is_freed_by_one_accepted_message(Backend::Postgres).await;
}

/// The outbox's blocking rule on the store alone, as the sender drives it: a blocked address's
/// rows (and rows written after the refusal) wait while another address's rows are claimed; the
/// oldest is tried again when its time comes, and once it is accepted the others are due at once.
async fn a_blocked_from_address_is_freed_by_one_accepted_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = mailintake::store::Store::open(&db.url).await.unwrap();
    let pool = db.pool().await;
    let insert = |from: &'static str| {
        let pool = pool.clone();
        async move {
            let id = unique("m");
            sqlx::query(
                "INSERT INTO outbox (mailbox, kind, from_address, to_address, subject, message_id, \
                 body_text, next_attempt_at, created_at) \
                 VALUES ('support', 'acknowledgement', $1, 'c@customer.test', 's', $2, 'b', 0, 0)",
            )
            .bind(from)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let (refused, accepted) = ("sales@helpdesk.test", "support@helpdesk.test");
    insert(refused).await;
    insert(refused).await;
    insert(accepted).await;

    let probe = store.claim_due("support").await.unwrap().unwrap();
    assert_eq!(probe.from_address, refused);
    let retry_at = mailintake::time::now_ms() + 600_000;
    let waiting = store
        .block_sender(&probe, "553 5.7.1 refused\n  fix: grant SendAs", retry_at)
        .await
        .unwrap();
    assert_eq!(waiting, 2);
    // Written after the refusal: waits too, without being tried.
    insert(refused).await;
    let next = store.claim_due("support").await.unwrap().unwrap();
    assert_eq!(next.from_address, accepted);
    store
        .mark_sent(next.id, "250 ok", mailintake::store::SentCopyState::Server)
        .await
        .unwrap();
    assert!(store.claim_due("support").await.unwrap().is_none());
    let blocked = store.hold_blocked("support").await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        (blocked[0].from_address.as_str(), blocked[0].n_rows),
        (refused, 3)
    );
    assert_eq!(blocked[0].retry_at_ms, retry_at);
    assert_eq!(
        store.next_due("support").await.unwrap(),
        Some(retry_at),
        "the sender would wake for rows it may not send"
    );

    // The retry time comes (here: `outbox retry` on the oldest row): the probe is accepted, and
    // the address's other rows are due at once.
    sqlx::query("UPDATE outbox SET next_attempt_at = 0 WHERE id = $1")
        .bind(probe.id)
        .execute(&pool)
        .await
        .unwrap();
    let again = store.claim_due("support").await.unwrap().unwrap();
    assert_eq!(again.id, probe.id);
    assert!(again.blocked_reason.is_some());
    store
        .mark_sent(again.id, "250 ok", mailintake::store::SentCopyState::Server)
        .await
        .unwrap();
    assert_eq!(store.unblock_sender("support", refused).await.unwrap(), 2);
    for _ in 0..2 {
        let row = store.claim_due("support").await.unwrap().unwrap();
        assert_eq!(row.from_address, refused);
        assert!(row.blocked_reason.is_none());
        store
            .mark_sent(row.id, "250 ok", mailintake::store::SentCopyState::Server)
            .await
            .unwrap();
    }
    assert!(store.hold_blocked("support").await.unwrap().is_empty());
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND blocked_reason IS NULL")
            .await,
        4
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE blocked_at IS NOT NULL")
            .await,
        3
    );
}

/// An acknowledgement goes only to an address the receiving server vouches for (its own
/// `Authentication-Results` on top, SPF or aligned DKIM `pass`): copies that claim its id below
/// its stamp, or come from anyone else, are forged and vouch for nothing, so a spammer who puts a
/// victim in Return-Path gets no mail from our domain sent to the victim.
#[tokio::test]
async fn forged_authentication_results_get_no_acknowledgement_the_stamped_one_does() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let customer = format!("{}@customer.test", unique("real"));
    let victim = format!("{}@bank.test", unique("victim"));
    let forged_pass = format!(
        "Authentication-Results: {STACK_AUTHSERV_ID}; spf=pass smtp.mailfrom={victim}\r\n\
         Authentication-Results: bank.test; dkim=pass header.d=bank.test\r\n"
    );
    // The customer's mail, stamped by the receiving server.
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Real question", &unique("a"), ""),
    )
    .await;
    // The server's own stamp on top says the sender failed SPF; forged passes below it.
    let stamped_fail = format!(
        "Authentication-Results: {STACK_AUTHSERV_ID}; spf=fail smtp.mailfrom={victim}\r\n{forged_pass}"
    );
    deliver_lmtp_unstamped(
        &case.mailbox,
        &victim,
        &[
            stamped_fail.as_bytes(),
            &customer_mail(&victim, &case.mailbox, "Cheap pills", &unique("b"), ""),
        ]
        .concat(),
    )
    .await;
    // No stamp of the server's at all: only what the sender wrote.
    deliver_lmtp_unstamped(
        &case.mailbox,
        &victim,
        &customer_mail(
            &victim,
            &case.mailbox,
            "Cheap pills again",
            &unique("c"),
            "Authentication-Results: bank.test; spf=pass smtp.mailfrom=bank.test\r\n",
        ),
    )
    .await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("3 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("support outbox: 1 acknowledgement(s) sent"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND to_address = '{customer}'"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{victim}' \
                 AND reason = 'the receiving server does not vouch for {victim} (the Return-Path address): \
                 no SPF or aligned DKIM pass for its domain (`{STACK_AUTHSERV_ID}` says: spf=fail smtp.mailfrom={victim})'"
            ))
            .await,
        1
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM outbox WHERE state = 'suppressed' AND to_address = '{victim}' \
                 AND reason = 'the receiving server does not vouch for {victim} (the Return-Path address): \
                 the message carries no Authentication-Results from `{STACK_AUTHSERV_ID}` (acknowledge.authserv_id)'"
            ))
            .await,
        1
    );
}

/// `require_authentication = false` is the off switch: the forged mail is acknowledged again.
#[tokio::test]
async fn without_require_authentication_unverified_senders_are_acknowledged() {
    let case = Case::new(
        Backend::Sqlite,
        &smtp_keys_with_ack("require_authentication = false"),
        "implicit",
    )
    .await;
    connect_first(&case).await;
    let sender = format!("{}@elsewhere.test", unique("unchecked"));
    deliver_lmtp_unstamped(
        &case.mailbox,
        &sender,
        &customer_mail(&sender, &case.mailbox, "Unchecked", &unique("d"), ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("support outbox: 1 acknowledgement(s) sent"),
        "{stdout}"
    );
}

/// The per-sender ticket limit counts by the address the receiving server vouched for: mail
/// with a real customer's From that nothing vouches for uses up a limit of its own, and the
/// customer's own mail still opens its ticket.
#[tokio::test]
async fn a_forged_from_cannot_get_a_real_customers_mail_quarantined() {
    let extra = format!("{}\nmax_new_tickets_per_sender_per_hour = 2", smtp_keys());
    let case = Case::new(Backend::Postgres, &extra, "implicit").await;
    connect_first(&case).await;
    let customer = format!("{}@customer.test", unique("alice"));
    for n in 1..=3 {
        deliver_lmtp_unstamped(
            &case.mailbox,
            &customer,
            &customer_mail(
                &customer,
                &case.mailbox,
                &format!("Forged {n}"),
                &unique("f"),
                "",
            ),
        )
        .await;
    }
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Real one", &unique("r"), ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("3 ticket(s)") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'sender-rate-limit' AND subject = 'Forged 3'")
            .await,
        1
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM tickets WHERE subject = 'Real one'")
            .await,
        1
    );
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM tickets WHERE sender_key = '{customer}'"
            ))
            .await,
        1
    );
}

/// A mailbox whose mail carries no stamp of the configured server says so in `check` instead of
/// going silent; once a stamped message arrives the notice is gone.
#[tokio::test]
async fn check_says_when_the_server_stamps_no_authentication_results() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let notice = "acknowledgements suppressed: the server stamps no Authentication-Results";
    let customer = format!("{}@customer.test", unique("c"));
    for n in 0..2 {
        deliver_lmtp_unstamped(
            &case.mailbox,
            &customer,
            &customer_mail(&customer, &case.mailbox, &format!("Q{n}"), &unique("n"), ""),
        )
        .await;
    }
    assert_ok(&case.run(&["once"]).await);
    let checked = assert_ok(&case.run(&["check", "support"]).await);
    assert!(
        checked.contains(&format!(
            "WARNING: {notice} (none from `{STACK_AUTHSERV_ID}` on the last 2 message(s)"
        )),
        "{checked}"
    );
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Stamped", &unique("s"), ""),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let checked = assert_ok(&case.run(&["check", "support"]).await);
    assert!(!checked.contains(notice), "{checked}");
}

/// `/readyz` and the status page give the same notice as `check` while the mailbox's mail
/// carries no stamp of the configured server.
#[tokio::test]
async fn readyz_and_the_status_page_say_when_the_server_stamps_nothing() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    connect_first(&case).await;
    let base = crate::ops::enable_http(&case, "");
    let customer = format!("{}@customer.test", unique("c"));
    deliver_lmtp_unstamped(
        &case.mailbox,
        &customer,
        &customer_mail(&customer, &case.mailbox, "Unstamped", &unique("u"), ""),
    )
    .await;
    let running = case.spawn_run();
    let notice = "acknowledgements suppressed: the server stamps no Authentication-Results";
    let (seen, _, ready) =
        crate::ops::get_until(&format!("{base}/readyz"), None, |_, b| b.contains(notice)).await;
    assert!(seen, "/readyz: {ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert!(
        ready["mailboxes"][0]["acknowledgements"]
            .as_str()
            .unwrap()
            .starts_with(notice),
        "{ready}"
    );
    let (status, page) = crate::ops::get(&format!("{base}/"), None).await;
    assert_eq!(status, 200);
    assert!(page.contains(notice), "{page}");
    let (status, log) = terminate(running, Duration::from_secs(20)).await;
    assert!(status.success(), "{log}");
}
