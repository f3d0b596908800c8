//! Addresses as mail really carries them, delivered over LMTP into the real Dovecot: a From
//! without angle brackets, the obsolete syntax, two From addresses with a Sender, and an envelope
//! sender no mail can be sent to. The stored rows are normalised, every From address is kept,
//! and whether an acknowledgement can be sent is decided before its outbox row is written, with
//! the reason in the row, the ledger and `mailintake ticket`.

use crate::helpers::*;

#[tokio::test]
async fn addresses_are_normalised_and_the_acknowledgement_decided_before_queueing_on_sqlite() {
    addresses_are_normalised_and_the_acknowledgement_decided_before_queueing(Backend::Sqlite).await;
}

#[tokio::test]
async fn addresses_are_normalised_and_the_acknowledgement_decided_before_queueing_on_postgres() {
    addresses_are_normalised_and_the_acknowledgement_decided_before_queueing(Backend::Postgres)
        .await;
}

fn mail(header_fields: &str, subject: &str, id: &str, to: &str) -> Vec<u8> {
    format!(
        "{header_fields}To: {to}\r\nSubject: {subject}\r\nDate: Tue, 24 Nov 2026 17:00:00 +0000\r\n\
         Message-ID: <{id}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Please help.\r\n"
    )
    .into_bytes()
}

async fn addresses_are_normalised_and_the_acknowledgement_decided_before_queueing(
    backend: Backend,
) {
    let case = Case::new(backend, &smtp_keys(), "implicit").await;
    // Mail present at the first connection is imported without acknowledgements: connect first.
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("0 new message(s)"), "{stdout}");
    next_second().await;
    let support = case.mailbox.clone();

    // 1. `From: Big Bug bb@bug.com`: no angle brackets.
    let bug = format!("{}@customer.test", unique("bb"));
    let bug_id = format!("{}@customer.test", unique("m"));
    let raw = mail(
        &format!("From: Big Bug {bug}\r\n"),
        "No brackets",
        &bug_id,
        &support,
    );
    deliver_lmtp(&support, &bug, &raw).await;

    // 2. `jdoe@machine.  example`: obsolete white space (RFC 5322 §4.4), a domain in upper case.
    let jdoe_local = unique("jdoe");
    let jdoe = format!("{jdoe_local}@customer.test");
    let jdoe_id = format!("{}@customer.test", unique("m"));
    let raw = mail(
        &format!("From: {jdoe_local}@CUSTOMER.  test\r\n"),
        "Obsolete syntax",
        &jdoe_id,
        &support,
    );
    deliver_lmtp(&support, &jdoe, &raw).await;

    // 3. Two authors and the Sender who sent it.
    let first = format!("{}@customer.test", unique("first"));
    let second = format!("{}@customer.test", unique("second"));
    let sender = format!("{}@customer.test", unique("sender"));
    let two_id = format!("{}@customer.test", unique("m"));
    let raw = mail(
        &format!("From: First <{first}>, Second <{second}>\r\nSender: {sender}\r\n"),
        "Two authors",
        &two_id,
        &support,
    );
    deliver_lmtp(&support, &sender, &raw).await;

    // 4. An envelope sender (SRS-style, as forwarders write them) whose local part is longer
    //    than the 64 bytes SMTP allows: the acknowledgement would go there (RFC 3834 §4) and
    //    cannot be sent.
    let srs = format!(
        "SRS0=Hq3x=TT=forwarder.test={}-with-a-long-tail-for-srs@customer.test",
        unique("long")
    );
    assert!(srs.split('@').next().unwrap().len() > 64, "{srs}");
    let plain = format!("{}@customer.test", unique("plain"));
    let srs_id = format!("{}@customer.test", unique("m"));
    let raw = mail(
        &format!("From: Plain <{plain}>\r\n"),
        "Forwarded",
        &srs_id,
        &support,
    );
    deliver_lmtp(&support, &srs, &raw).await;

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("4 ticket(s)"), "{stdout}");
    let db = &case.db;
    let count = |sql: String| async move { db.count(&sql).await };

    // The stored rows: the normalised From, every From address, the note in the ledger.
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM messages m JOIN tickets t ON t.id = m.ticket_id \
             WHERE m.message_id = '{bug_id}' AND m.from_address = '{bug}' AND m.from_name = 'Big Bug' \
             AND m.from_addresses = '[{{\"name\":\"Big Bug\",\"address\":\"{bug}\"}}]' \
             AND t.requester_address = '{bug}' AND t.requester_name = 'Big Bug'"
        ))
        .await,
        1,
        "the bracket-less From is stored as name and address"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM imap_messages WHERE message_id = '{bug_id}' AND outcome = 'ticket' \
             AND detail LIKE 'From `Big Bug {bug}` has no angle brackets: read heuristically as the name \"Big Bug\" and the address {bug}'"
        ))
        .await,
        1,
        "the heuristic is noted in the message's detail"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM messages WHERE message_id = '{jdoe_id}' AND from_address = '{jdoe}' \
             AND from_addresses = '[{{\"address\":\"{jdoe}\"}}]'"
        ))
        .await,
        1,
        "the obsolete syntax is read as {jdoe}"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM imap_messages WHERE message_id = '{jdoe_id}' \
             AND detail LIKE '%obsolete syntax (RFC 5322 §4.4): read as {jdoe}%'"
        ))
        .await,
        1
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM messages WHERE message_id = '{two_id}' AND from_address = '{first}' \
             AND from_name = 'First' AND from_addresses = \
             '[{{\"name\":\"First\",\"address\":\"{first}\"}},{{\"name\":\"Second\",\"address\":\"{second}\"}}]'"
        ))
        .await,
        1,
        "both From addresses are kept, the first is from_address"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM imap_messages WHERE message_id = '{two_id}' \
             AND detail = 'From names 2 addresses ({first}, {second}); the first, {first}, is the requester; Sender: {sender}'"
        ))
        .await,
        1
    );

    // The acknowledgement decisions: three go to their envelope senders; the fourth is
    // suppressed before it is queued, with the reason, instead of failing at send time.
    for (id, to) in [(&bug_id, &bug), (&jdoe_id, &jdoe), (&two_id, &sender)] {
        assert_eq!(
            count(format!(
                "SELECT COUNT(*) FROM outbox WHERE in_reply_to = '{id}' AND to_address = '{to}' \
                 AND state = 'sent' AND reason IS NULL"
            ))
            .await,
            1,
            "the acknowledgement of {id} was sent to {to}"
        );
    }
    let reason = format!(
        "no acknowledgement can be sent to `{srs}` (the Return-Path address): its local part is {} bytes long, \
         more than the 64 SMTP allows (RFC 5321 §4.5.3.1.1)",
        srs.split('@').next().unwrap().len()
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM outbox WHERE in_reply_to = '{srs_id}' AND to_address = '{srs}' \
             AND state = 'suppressed' AND reason = '{reason}' AND attempts = 0"
        ))
        .await,
        1,
        "the acknowledgement to {srs} is suppressed with the reason"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM imap_messages WHERE message_id = '{srs_id}' \
             AND detail = 'no acknowledgement: {reason}'"
        ))
        .await,
        1,
        "the reason is in the message's ledger detail"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox WHERE state = 'failed'".into()).await,
        0
    );

    // `mailintake ticket` shows the note, every From address and the decision.
    let ticket = |id: &str| format!("SELECT ticket_id FROM messages WHERE message_id = '{id}'");
    let srs_ticket = count(ticket(&srs_id)).await.to_string();
    let shown = assert_ok(&case.run(&["ticket", &srs_ticket]).await);
    assert!(
        shown.contains(&format!("acknowledgement: suppressed to {srs} ({reason})")),
        "{shown}"
    );
    let two_ticket = count(ticket(&two_id)).await.to_string();
    let shown = assert_ok(&case.run(&["ticket", &two_ticket]).await);
    assert!(shown.contains(&format!("also from: {second}")), "{shown}");
    assert!(shown.contains("note: From names 2 addresses"), "{shown}");
    assert!(
        shown.contains(&format!("acknowledgement: sent to {sender}")),
        "{shown}"
    );
}
