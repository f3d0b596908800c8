//! Outgoing mail from the helpdesk end to end: `mailintake send` and the `outgoing` table, both
//! through the one outbox, sent through Postfix with XOAUTH2 and read in the customer's inbox;
//! the customer's answer threads back onto the ticket; idempotency, refusals and priority.

use std::time::Duration;

use crate::acks::{connect_first, customer_mail, inbox_messages};
use crate::helpers::*;

/// The parsed messages in `mailbox`'s inbox, with their text.
pub(crate) async fn inbox(
    entra: &Entra,
    mailbox: &str,
) -> Vec<(mailintake::ingest::ParsedMail, String)> {
    inbox_messages(entra, mailbox)
        .await
        .into_iter()
        .map(|raw| (mailintake::ingest::parse(&raw).unwrap(), text(&raw)))
        .collect()
}

/// Waits until `mailbox`'s inbox holds a message with `message_id`, and returns it.
pub(crate) async fn arrived(
    entra: &Entra,
    mailbox: &str,
    message_id: &str,
) -> (mailintake::ingest::ParsedMail, String) {
    let found = eventually(Duration::from_secs(20), || async {
        inbox(entra, mailbox)
            .await
            .iter()
            .any(|(m, _)| m.message_id == message_id)
    })
    .await;
    assert!(found, "{message_id} did not arrive in {mailbox}'s inbox");
    inbox(entra, mailbox)
        .await
        .into_iter()
        .find(|(m, _)| m.message_id == message_id)
        .unwrap()
}

/// The outbox id `send` printed.
pub(crate) fn outbox_id(stdout: &str) -> i64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("outbox "))
        .unwrap_or_else(|| panic!("no outbox line in {stdout}"));
    line["outbox ".len()..line.find(':').unwrap()]
        .parse()
        .unwrap()
}

pub(crate) async fn query_text(db: &TestDb, sql: &str) -> String {
    use sqlx::Row;
    let pool = db.pool().await;
    let value: Option<String> = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    pool.close().await;
    value.unwrap_or_default()
}

/// Every row of `sql`'s first column (text), one per line: for assertion messages.
pub(crate) async fn query_lines(db: &TestDb, sql: &str) -> String {
    use sqlx::Row;
    let pool = db.pool().await;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
    rows.iter()
        .map(|r| r.get::<Option<String>, _>(0).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) async fn execute(db: &TestDb, sql: &str) {
    let pool = db.pool().await;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

/// A ticket opened by the customer's mail (acknowledged), answered through `send --ticket
/// --wait` and through an `outgoing` row; both answers arrive threaded with the ticket's tag,
/// both are outbound `messages` rows of the ticket, and the customer's answer to the second
/// (named by its Message-ID alone, no tag) is a follow-up on the ticket.
async fn ticket_replies_thread_both_ways(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("alice"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(backend, &smtp_keys(), "implicit", support.clone(), entra).await;
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

    // 1. mailintake send --ticket, sent at once with --wait.
    let out = case
        .run(&[
            "send",
            "--ticket",
            "TCK-000001",
            "--text",
            "We are on it.",
            "--wait",
        ])
        .await;
    let stdout = assert_ok(&out);
    assert!(stdout.contains("idempotency key: "), "{stdout}");
    assert!(stdout.contains(": sent: 250"), "{stdout}");
    let first_reply_id = outbox_id(&stdout);
    let first_reply = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {first_reply_id}"),
    )
    .await;
    let (parsed, raw) = arrived(&case.entra, &customer, &first_reply).await;
    assert_eq!(parsed.subject, "[#TCK-000001] Re: Printer on fire");
    assert_eq!(parsed.in_reply_to, std::slice::from_ref(&first));
    assert_eq!(parsed.references, std::slice::from_ref(&first));
    assert_eq!(parsed.from.as_ref().unwrap().address, support);
    assert!(first_reply.starts_with("mailintake."), "{first_reply}");
    assert!(first_reply.ends_with(&format!("@{}", support.rsplit('@').next().unwrap())));
    // A person's mail: nothing that says "automatic".
    assert_eq!(parsed.signals.auto_submitted, None, "{raw}");
    assert!(!raw.contains("X-Auto-Response-Suppress"), "{raw}");

    // 2. An `outgoing` row, written by the helpdesk in its own transaction.
    execute(
        &case.db,
        "INSERT INTO outgoing (mailbox, idempotency_key, request) VALUES ('support', 'answer-2', \
         '{\"ticket\": 1, \"subject\": \"Re: Printer on fire\", \"html\": \"<p>The technician comes <b>today</b>.</p>\"}')",
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("support outbox: 1 "), "{stdout}");
    assert_eq!(
        query_text(
            &case.db,
            "SELECT state || ' ' || COALESCE(error, '') FROM outgoing"
        )
        .await,
        "accepted "
    );
    let second_reply = query_text(
        &case.db,
        "SELECT o.message_id FROM outgoing g JOIN outbox o ON o.id = g.outbox_id \
         WHERE o.state = 'sent' AND o.submitted_via = 'database'",
    )
    .await;
    let (parsed, raw) = arrived(&case.entra, &customer, &second_reply).await;
    assert_eq!(parsed.subject, "[#TCK-000001] Re: Printer on fire");
    // Threaded to the ticket's latest message, the first reply, and the chain before it.
    assert_eq!(parsed.in_reply_to, std::slice::from_ref(&first_reply));
    assert_eq!(parsed.references, vec![first.clone(), first_reply.clone()]);
    // A text part derived from the HTML, and the HTML as given.
    assert!(raw.contains("The technician comes today."), "{raw}");
    assert!(raw.contains("<b>today</b>"), "{raw}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND direction = 'outbound'")
            .await,
        2
    );

    // 3. The customer answers the second reply; only its Message-ID names the ticket.
    let answer = format!("{}@customer.test", unique("a"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(
            &customer,
            &support,
            "Re: Printer on fire",
            &answer,
            &format!("In-Reply-To: <{second_reply}>\r\n"),
        ),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 follow-up(s)"), "{stdout}");
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND direction = 'inbound' AND message_id = '{answer}'"
            ))
            .await,
        1
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
}

#[tokio::test]
async fn ticket_replies_by_send_and_by_the_outgoing_table_thread_on_sqlite() {
    ticket_replies_thread_both_ways(Backend::Sqlite).await;
}

#[tokio::test]
async fn ticket_replies_by_send_and_by_the_outgoing_table_thread_on_postgres() {
    ticket_replies_thread_both_ways(Backend::Postgres).await;
}

/// The same key and request twice: one outbox row, one message sent. The same key with another
/// body: refused as a conflict naming the first row, by `send` (exit code 2) and in an
/// `outgoing` row (`refused`).
async fn one_key_sends_once(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("bob"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(backend, &smtp_keys(), "implicit", support.clone(), entra).await;
    let send = |text: &'static str| {
        let customer = customer.clone();
        let case = &case;
        async move {
            case.run(&[
                "send",
                "--to",
                &customer,
                "--subject",
                "Your invoice",
                "--text",
                text,
                "--idempotency-key",
                "invoice-77",
            ])
            .await
        }
    };
    let first = assert_ok(&send("Attached.").await);
    let again = assert_ok(&send("Attached.").await);
    let id = outbox_id(&first);
    assert_eq!(outbox_id(&again), id);
    assert!(first.contains("(new)"), "{first}");
    assert!(again.contains("submitted before"), "{again}");
    assert!(
        !first.contains("idempotency key:"),
        "a given key is not printed: {first}"
    );

    let changed = send("Attached, corrected.").await;
    assert_eq!(changed.status.code(), Some(2), "{}", text(&changed.stderr));
    let stderr = text(&changed.stderr);
    assert!(stderr.contains("idempotency_key"), "{stderr}");
    assert!(stderr.contains(&format!("outbox row {id}")), "{stderr}");

    execute(
        &case.db,
        &format!(
            "INSERT INTO outgoing (mailbox, idempotency_key, request) VALUES ('support', 'invoice-77', \
             '{{\"to\": [\"{customer}\"], \"subject\": \"Your invoice\", \"text\": \"Something else\"}}')"
        ),
    )
    .await;
    assert_ok(&case.run(&["once"]).await);
    let outcome = query_text(&case.db, "SELECT state || ': ' || error FROM outgoing").await;
    assert!(outcome.starts_with("refused: idempotency_key"), "{outcome}");
    assert!(outcome.contains(&format!("outbox row {id}")), "{outcome}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outgoing WHERE outbox_id IS NULL")
            .await,
        1
    );

    assert_eq!(case.db.count("SELECT COUNT(*) FROM outbox").await, 1);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        1
    );
    let message_id = query_text(&case.db, "SELECT message_id FROM outbox").await;
    arrived(&case.entra, &customer, &message_id).await;
    assert_eq!(inbox(&case.entra, &customer).await.len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_sends_once_and_another_body_is_a_conflict_on_sqlite() {
    one_key_sends_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_same_idempotency_key_sends_once_and_another_body_is_a_conflict_on_postgres() {
    one_key_sends_once(Backend::Postgres).await;
}

#[tokio::test]
async fn unsafe_or_disallowed_mail_is_refused_at_submission_naming_the_field() {
    let keys = format!(
        "{}\nallow_recipients = [\"*@customer.test\"]\nsend_as = [\"sales@helpdesk.test\"]\nmax_send_bytes = 20000",
        smtp_keys()
    );
    let case = Case::new(Backend::Sqlite, &keys, "implicit").await;
    let big = case.config.path.with_file_name("big.bin");
    std::fs::write(&big, vec![b'x'; 30_000]).unwrap();
    let big = big.to_str().unwrap().to_string();
    let to = "carol@customer.test";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--to",
                to,
                "--subject",
                "Hi\r\nBcc: eve@elsewhere.test",
                "--text",
                "t",
            ],
            "subject: contains a line break",
        ),
        (
            vec![
                "--to",
                "eve@elsewhere.test",
                "--subject",
                "Hi",
                "--text",
                "t",
            ],
            "to[0]: `eve@elsewhere.test` is not in the mailbox's allow_recipients",
        ),
        (
            vec![
                "--to",
                to,
                "--from",
                "ceo@helpdesk.test",
                "--subject",
                "Hi",
                "--text",
                "t",
            ],
            "from: `ceo@helpdesk.test` is neither the mailbox's address",
        ),
        (
            vec![
                "--to",
                to,
                "--subject",
                "Hi",
                "--text",
                "t",
                "--attach",
                &big,
            ],
            "more than the mailbox's max_send_bytes (20000)",
        ),
        (
            vec!["--to", "not an address", "--subject", "Hi", "--text", "t"],
            "to[0]:",
        ),
        (
            vec!["--ticket", "TCK-000009", "--text", "t"],
            "ticket: there is no ticket TCK-000009",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["send"];
        all.extend(args.iter().copied());
        let out = case.run(&all).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(case.db.count("SELECT COUNT(*) FROM outbox").await, 0);
    // A From in send_as is accepted (whether the server lets the identity send as it is the
    // server's to say: Exchange's SendAs right).
    let out = case
        .run(&[
            "send",
            "--to",
            to,
            "--from",
            "sales@helpdesk.test",
            "--subject",
            "Hi",
            "--text",
            "t",
        ])
        .await;
    assert_ok(&out);
}

/// With an acknowledgement and an agent reply both due, the reply goes first; a notification
/// carries `Auto-Submitted: auto-generated`.
#[tokio::test]
async fn agent_mail_goes_before_acknowledgements_and_notifications_say_they_are_automatic() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("dan"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    assert_ok(&case.run(&["migrate"]).await);
    // An acknowledgement due since long ago, older than the reply.
    execute(
        &case.db,
        &format!(
            "INSERT INTO outbox (mailbox, kind, from_address, to_address, subject, message_id, body_text, \
             state, next_attempt_at, created_at) VALUES ('support', 'acknowledgement', '{support}', '{customer}', \
             'Received', 'mailintake.ack.{}@helpdesk.test', 'Thanks', 'pending', 0, 0)",
            unique("x")
        ),
    )
    .await;
    let note = assert_ok(
        &case
            .run(&[
                "send",
                "--to",
                &customer,
                "--subject",
                "Maintenance",
                "--text",
                "Tonight.",
                "--notification",
            ])
            .await,
    );
    let reply = assert_ok(
        &case
            .run(&[
                "send",
                "--to",
                &customer,
                "--subject",
                "Your question",
                "--text",
                "Yes.",
            ])
            .await,
    );
    let (note_id, reply_id) = (outbox_id(&note), outbox_id(&reply));
    let out = case
        .run_with(&["once"], &[("RUST_LOG", "mailintake=info")])
        .await;
    // Without the colour codes around field names.
    let mut log = String::new();
    let mut in_escape = false;
    for c in text(&out.stderr).chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => log.push(c),
        }
    }
    assert_ok(&out);
    let position = |id: i64| {
        log.find(&format!("outbox_id={id}"))
            .unwrap_or_else(|| panic!("no send of {id} in {log}"))
    };
    assert!(position(reply_id) < position(1), "{log}");
    assert!(position(reply_id) < position(note_id), "{log}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        3
    );
    let note_message_id = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {note_id}"),
    )
    .await;
    let (parsed, _) = arrived(&case.entra, &customer, &note_message_id).await;
    assert_eq!(
        parsed.signals.auto_submitted.as_deref(),
        Some("auto-generated")
    );
    // Mail without a ticket is in the outbox only.
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, 0);
}

/// An attachment stored with the mailbox's mail can be sent again by its id, byte for byte; one
/// of another mailbox's mail (with many customers in one database an id is no permission) or one
/// whose content `purge` removed is refused naming the field.
///
/// Before: any stored attachment id was taken, whichever mailbox's mail it came with, and a
/// purged one was not refused (the check looked for an empty SHA-256, which no row has).
#[tokio::test]
async fn a_stored_attachment_is_sent_by_id_only_from_its_own_mailbox_and_only_while_kept() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("erin"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(
        Backend::Postgres,
        &smtp_keys(),
        "implicit",
        support.clone(),
        entra,
    )
    .await;
    let (raw, _) = unique_fixture("attachment.eml");
    deliver_lmtp(&support, "alice@customer.test", &raw).await;
    assert_ok(&case.run(&["once"]).await);
    let id = case.db.count("SELECT MIN(id) FROM attachments").await;
    let sha256 = query_text(
        &case.db,
        &format!("SELECT sha256 FROM attachments WHERE id = {id}"),
    )
    .await;
    let request = |key: &str| {
        format!(
            r#"{{"idempotency_key": "{key}", "to": [{{"address": "{customer}"}}], "subject": "The file again", "text": "Here it is.", "attachments": [{{"attachment_id": {id}}}]}}"#
        )
    };
    let file = case.config.path.with_file_name("request.json");
    let send = |key: &str| {
        std::fs::write(&file, request(key)).unwrap();
        let file = file.to_str().unwrap().to_string();
        let case = &case;
        async move { case.run(&["send", "--request", &file, "--wait"]).await }
    };
    let stdout = assert_ok(&send("own").await);
    let outbox = outbox_id(&stdout);
    let message_id = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {outbox}"),
    )
    .await;
    let (mail, _) = arrived(&case.entra, &customer, &message_id).await;
    assert_eq!(mail.attachments.len(), 1, "{:?}", mail.attachments);
    assert_eq!(mail.attachments[0].sha256, sha256, "the same bytes");

    execute(&case.db, "UPDATE messages SET mailbox = 'another-customer'").await;
    let out = send("other").await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "attachments[0].attachment_id: attachment {id} came with mail of another mailbox"
        )),
        "{stderr}"
    );
    execute(&case.db, "UPDATE messages SET mailbox = 'support'").await;
    execute(
        &case.db,
        &format!("UPDATE attachments SET content_purged_at = 1 WHERE id = {id}"),
    )
    .await;
    let out = send("purged").await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("was removed by `mailintake purge`"),
        "{stderr}"
    );
}

/// Two mailboxes on one database. Postfix refuses one of `support`'s From addresses (a
/// `send_as` address its login does not own: `reject_sender_login_mismatch`, as Exchange's
/// `5.7.60` SendAs refusal): that agent mail stays `pending` with the refusal and the fix; the
/// same flush sends `support`'s mail from its own address, and `sales`'s mail goes out with no
/// row of it touched by the block.
///
/// Before: the blocking was tested for acknowledgements of one mailbox only.
async fn a_refused_send_as_blocks_only_that_address(backend: Backend) {
    let support = unique_mailbox();
    let sales = unique_mailbox();
    let customer = format!("{}@customer.test", unique("gus"));
    let refused = format!("{}@helpdesk.test", unique("team"));
    let entra = Entra::start(&[&support, &sales, &customer]).await;
    let keys = format!("send_as = [\"{refused}\"]\n{}", smtp_keys());
    let case = Case::build(backend, &keys, "implicit", support.clone(), entra).await;
    let stack = Stack::get();
    let mut config = std::fs::read_to_string(&case.config.path).unwrap();
    config.push_str(&format!(
        "\n[[mailboxes]]\nname = \"sales\"\naddress = \"{sales}\"\nidentity = \"test\"\n{}\n\
         [mailboxes.imap]\nhost = \"localhost\"\nport = {}\nca_file = \"{}\"\n",
        smtp_keys(),
        stack.port("MAILSTACK_IMAPS_PORT"),
        stack.ca_file()
    ));
    std::fs::write(&case.config.path, config).unwrap();
    let send = |mailbox: &'static str, from: Option<String>, subject: &'static str| {
        let customer = customer.clone();
        let case = &case;
        async move {
            let mut args = vec![
                "send".to_string(),
                "--mailbox".into(),
                mailbox.into(),
                "--to".into(),
                customer,
                "--subject".into(),
                subject.into(),
                "--text".into(),
                "Hello.".into(),
            ];
            if let Some(from) = from {
                args.extend(["--from".to_string(), from]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            outbox_id(&assert_ok(&case.run(&args).await))
        }
    };
    let blocked = send("support", Some(refused.clone()), "From the team").await;
    let own = send("support", None, "From support").await;
    let other = send("sales", None, "From sales").await;
    assert_ok(&case.run(&["once"]).await);

    let state = |id: i64| {
        let case = &case;
        async move {
            query_text(
                &case.db,
                &format!(
                    "SELECT state || ' ' || COALESCE(blocked_reason, '-') FROM outbox WHERE id = {id}"
                ),
            )
            .await
        }
    };
    let refused_state = state(blocked).await;
    assert!(
        refused_state.starts_with("pending ") && refused_state.contains("Sender address rejected"),
        "{refused_state}"
    );
    assert!(
        refused_state.contains("Add-RecipientPermission"),
        "the fix is named: {refused_state}"
    );
    assert_eq!(state(own).await, "sent -");
    assert_eq!(state(other).await, "sent -");
    assert_eq!(
        case.db
            .count(
                "SELECT COUNT(*) FROM outbox WHERE mailbox = 'sales' AND (blocked_reason IS NOT NULL \
                 OR blocked_at IS NOT NULL)"
            )
            .await,
        0
    );
    let listed = assert_ok(&case.run(&["outbox", "list", "--state", "blocked"]).await);
    assert!(listed.contains("From the team"), "{listed}");
    assert!(!listed.contains("From sales"), "{listed}");
    assert!(!listed.contains("From support"), "{listed}");
}

#[tokio::test]
async fn a_refused_send_as_address_blocks_only_its_rows_across_mailboxes_on_sqlite() {
    a_refused_send_as_blocks_only_that_address(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refused_send_as_address_blocks_only_its_rows_across_mailboxes_on_postgres() {
    a_refused_send_as_blocks_only_that_address(Backend::Postgres).await;
}
