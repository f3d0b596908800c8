//! Copies of sent mail in the mailbox's Sent folder (`sent_copy`): Postfix keeps none of what it
//! is handed, so with `sent_copy = "append"` mailintake appends each sent message to Dovecot's
//! `\Sent` folder ("Sent Items" on the stack), once, also across a crash between the APPEND and
//! the row's record; `check --send-test-mail` says which folder got the copy.

use crate::acks::{connect_first, customer_mail, folder_messages};
use crate::helpers::*;
use crate::outgoing::{outbox_id, query_text};

/// Every message of `mailbox`'s "Sent Items": its raw bytes and whether it is `\Seen`.
async fn sent_items(entra: &Entra, mailbox: &str) -> Vec<(Vec<u8>, bool)> {
    folder_messages(entra, mailbox, "Sent Items").await
}

/// How many messages of `mailbox`'s "Sent Items" carry `message_id`.
async fn copies_of(entra: &Entra, mailbox: &str, message_id: &str) -> usize {
    sent_items(entra, mailbox)
        .await
        .iter()
        .filter(|(raw, _)| {
            mailintake::ingest::parse(raw)
                .map(|m| m.message_id == message_id)
                .unwrap_or(false)
        })
        .count()
}

/// An acknowledgement and an agent's mail with a Bcc, sent with `sent_copy = "append"`: each has
/// one `\Seen` copy in "Sent Items", the agent's mail with a `Bcc` field naming the hidden
/// recipient, and the rows say `appended` to that folder. Then the process dies right after the
/// APPEND of the next one (failpoint `sent-copy-kept`): the row still says `pending`, and the
/// next run finds the copy by its Message-ID (`present`) instead of appending a second.
///
/// Before: nothing was appended (Sent Items stayed empty), and there was no `sent_copy`.
async fn append_keeps_one_copy_each(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("dora"));
    let hidden = format!("{}@customer.test", unique("audit"));
    let entra = Entra::start(&[&support, &customer, &hidden]).await;
    let keys = format!("sent_copy = \"append\"\n{}", smtp_keys());
    let case = Case::build(backend, &keys, "implicit", support.clone(), entra).await;
    connect_first(&case).await;

    let first = format!("{}@customer.test", unique("first"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(&customer, &support, "Printer on fire", &first, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 copied to the Sent folder"), "{stdout}");
    let ack_id = query_text(
        &case.db,
        "SELECT message_id FROM outbox WHERE kind = 'acknowledgement'",
    )
    .await;
    assert_eq!(copies_of(&case.entra, &support, &ack_id).await, 1);

    let sent = assert_ok(
        &case
            .run(&[
                "send",
                "--to",
                &customer,
                "--bcc",
                &hidden,
                "--subject",
                "Your order",
                "--text",
                "Shipped.",
                "--wait",
            ])
            .await,
    );
    let id = outbox_id(&sent);
    let message_id = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {id}"),
    )
    .await;
    let copy = query_text(
        &case.db,
        &format!("SELECT sent_copy || ' ' || sent_copy_folder FROM outbox WHERE id = {id}"),
    )
    .await;
    assert_eq!(copy, "appended Sent Items");
    let items = sent_items(&case.entra, &support).await;
    let (raw, seen) = items
        .iter()
        .find(|(raw, _)| text(raw).contains(&message_id))
        .expect("the agent's mail has a copy");
    assert!(seen, "a copy of sent mail is read");
    let copy = text(raw);
    assert!(copy.starts_with(&format!("Bcc: {hidden}\r\n")), "{copy}");
    assert_eq!(copies_of(&case.entra, &support, &message_id).await, 1);

    // The process dies between the APPEND and the row's record.
    let crashed = case
        .run_with(
            &[
                "send",
                "--to",
                &customer,
                "--subject",
                "Your invoice",
                "--text",
                "Attached.",
                "--wait",
            ],
            &[("MAILINTAKE_FAILPOINT", "sent-copy-kept")],
        )
        .await;
    assert!(!crashed.status.success(), "{}", text(&crashed.stderr));
    let id = outbox_id(&text(&crashed.stdout));
    let message_id = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {id}"),
    )
    .await;
    assert_eq!(
        query_text(
            &case.db,
            &format!("SELECT state || ' ' || sent_copy FROM outbox WHERE id = {id}"),
        )
        .await,
        "sent pending",
        "the folder has the copy, the row does not know"
    );
    assert_eq!(copies_of(&case.entra, &support, &message_id).await, 1);
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 copied to the Sent folder"), "{stdout}");
    assert_eq!(
        query_text(
            &case.db,
            &format!("SELECT sent_copy || ' ' || sent_copy_folder FROM outbox WHERE id = {id}"),
        )
        .await,
        "present Sent Items"
    );
    assert_eq!(copies_of(&case.entra, &support, &message_id).await, 1);
    assert_eq!(sent_items(&case.entra, &support).await.len(), 3);
}

#[tokio::test]
async fn append_keeps_one_copy_of_each_sent_message_across_a_crash_on_sqlite() {
    append_keeps_one_copy_each(Backend::Sqlite).await;
}

#[tokio::test]
async fn append_keeps_one_copy_of_each_sent_message_across_a_crash_on_postgres() {
    append_keeps_one_copy_each(Backend::Postgres).await;
}

/// A `sent_folder` that does not exist: the mail is sent, its copy waits with the server's
/// refusal, shown by `outbox list` and `GET`'s document; once the folder exists the next flush
/// appends it. The default `sent_copy = "server"` keeps nothing itself.
///
/// Before: there was no `sent_folder` and no waiting copy to show.
#[tokio::test]
async fn a_copy_the_folder_refuses_waits_visibly_and_comes_later() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("erin"));
    let entra = Entra::start(&[&support, &customer]).await;
    let keys = format!(
        "sent_copy = \"append\"\nsent_folder = \"Sent Mail\"\n{}",
        smtp_keys()
    );
    let case = Case::build(Backend::Sqlite, &keys, "implicit", support.clone(), entra).await;
    let sent = assert_ok(
        &case
            .run(&[
                "send",
                "--to",
                &customer,
                "--subject",
                "Hello",
                "--text",
                "Hi.",
                "--wait",
            ])
            .await,
    );
    let id = outbox_id(&sent);
    let listed = assert_ok(&case.run(&["outbox", "list"]).await);
    assert!(
        listed.contains("its copy to the Sent folder waits: the folder `Sent Mail`"),
        "{listed}"
    );
    assert_eq!(
        query_text(
            &case.db,
            &format!("SELECT state || ' ' || sent_copy FROM outbox WHERE id = {id}"),
        )
        .await,
        "sent pending"
    );

    let mut conn = imap_session(&case.entra, &support).await;
    conn.ensure_folder("Sent Mail").await.unwrap();
    conn.logout().await;
    // Due again after the retry delay; made due now as an operator's wait would end.
    crate::outgoing::execute(
        &case.db,
        &format!("UPDATE outbox SET sent_copy_due_at = 0 WHERE id = {id}"),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 copied to the Sent folder"), "{stdout}");
    assert_eq!(
        query_text(
            &case.db,
            &format!("SELECT sent_copy || ' ' || sent_copy_folder FROM outbox WHERE id = {id}"),
        )
        .await,
        "appended Sent Mail"
    );
}

/// `check --send-test-mail` says where the copy went: appended to "Sent Items" with `sent_copy =
/// "append"`; with the default `"server"` against Postfix (which keeps none) a warning that the
/// mailbox's Sent folder has no copy, with the Exchange fix.
///
/// Before: the test mail step said nothing about a copy.
#[tokio::test]
async fn check_reports_which_folder_got_the_test_mails_copy() {
    let support = unique_mailbox();
    let other = unique_mailbox();
    let customer = format!("{}@customer.test", unique("finn"));
    let appending = Case::build(
        Backend::Sqlite,
        &format!("sent_copy = \"append\"\n{}", smtp_keys()),
        "implicit",
        support.clone(),
        Entra::start(&[&support, &customer]).await,
    )
    .await;
    let server = Case::build(
        Backend::Sqlite,
        &smtp_keys(),
        "implicit",
        other.clone(),
        Entra::start(&[&other, &customer]).await,
    )
    .await;
    let args = ["check", "support", "--send-test-mail", &customer];
    let (appended, kept) = tokio::join!(appending.run(&args), server.run(&args));
    let appended = text(&appended.stdout);
    assert!(
        appended.contains("sentcopy appended to `Sent Items` (sent_copy = \"append\")"),
        "{appended}"
    );
    let kept = text(&kept.stdout);
    assert!(
        kept.contains("WARNING: no copy in this mailbox's `Sent Items`"),
        "{kept}"
    );
    assert!(kept.contains("MessageCopyForSentAsEnabled"), "{kept}");
}
