//! What happens to mail once it is in the outbox, against the real stack: one sending budget
//! shared by two processes, a crash between the server's 250 and the row's `sent`, the size limit
//! the server announces, and a real Postfix DSN for an agent reply.

use std::path::Path;
use std::time::Duration;

use crate::acks::{connect_first, customer_mail};
use crate::helpers::*;
use crate::outgoing::{arrived, inbox, outbox_id, query_text};

/// `smtp = { … }` through the stack's Postfix (STARTTLS + XOAUTH2) with more keys, and the
/// acknowledgement keys `ack_keys`.
fn smtp_keys_with(smtp_extra: &str, ack_keys: &str) -> String {
    let stack = Stack::get();
    format!(
        "smtp = {{ host = \"localhost\", port = {}, tls = \"starttls\", ca_file = \"{}\"{smtp_extra} }}\n{}",
        stack.port("MAILSTACK_SUBMISSION_PORT"),
        stack.ca_file(),
        ack_keys_with(ack_keys)
    )
}

/// `mailintake run` in the background with its log in `log`.
fn spawn_run_logging_to(case: &Case, log: &Path, env: &[(&str, &str)]) -> Running {
    let file = std::fs::File::create(log).expect("log file");
    let child = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(&case.config.path)
        .arg("run")
        .env(&case.secret_var, &case.entra.secret)
        .env("RUST_LOG", "mailintake=debug")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("mailintake run starts");
    Running {
        child,
        log: log.to_path_buf(),
    }
}

async fn query_i64s(db: &TestDb, sql: &str) -> Vec<i64> {
    use sqlx::Row;
    let pool = db.pool().await;
    let values = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    pool.close().await;
    values
}

/// Two processes on one database send from one mailbox with a budget of 3 messages a minute: 3
/// go out (the 2 agent replies among them, though they were handed over last), the other 4 stay
/// `pending`, not counted as attempts, with the reason and a next attempt a minute after the
/// first send; `outbox list` shows why. `run` and a `send --wait`, which sends from the same
/// outbox itself; on PostgreSQL also a second `run`, which does not send at all: the outbox's
/// lease makes one sender per mailbox over the fleet.
///
/// Before: each process counted only rows already `sent`, outside any lock, so both took slots
/// (and a row in flight counted for neither); a held row had no reason (no `deferred_reason`).
async fn two_processes_share_one_budget(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("bob"));
    let entra = Entra::start(&[&support, &customer]).await;
    let keys = smtp_keys_with(", max_per_minute = 3", "enabled = false");
    let case = Case::build(backend, &keys, "implicit", support.clone(), entra).await;
    let mut message_ids = Vec::new();
    for (i, kind) in ["--notification"; 5]
        .into_iter()
        .chain(["--to"; 2])
        .enumerate()
    {
        let subject = format!("Message {i}");
        let mut args = vec![
            "send",
            "--to",
            &customer,
            "--subject",
            &subject,
            "--text",
            "Hello.",
        ];
        if kind == "--notification" {
            args.push("--notification");
        }
        let stdout = assert_ok(&case.run(&args).await);
        message_ids.push(outbox_id(&stdout));
    }
    let dir = case.config.path.parent().unwrap().to_path_buf();
    let first = spawn_run_logging_to(&case, &dir.join("first.log"), &[]);
    let second = match backend {
        Backend::Postgres => Some(spawn_run_logging_to(&case, &dir.join("second.log"), &[])),
        Backend::Sqlite => None,
    };
    let second_log =
        |second: &Option<Running>| second.as_ref().map(Running::log).unwrap_or_default();
    // The budget is used up and the rest is held back ...
    let held_back = case
        .wait_for_count(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND deferred_reason IS NOT NULL",
            4,
            Duration::from_secs(30),
        )
        .await;
    assert!(
        held_back,
        "first: {}\nsecond: {}",
        first.log(),
        second_log(&second)
    );
    // ... and the sender has flushed again since (at least every 3 s), seeing the same budget.
    let flushes = |log: String| log.lines().filter(|l| l.contains("outbox flush")).count();
    let seen = flushes(first.log()) + flushes(second_log(&second));
    let again = eventually(Duration::from_secs(20), || async {
        flushes(first.log()) + flushes(second_log(&second)) > seen
    })
    .await;
    assert!(
        again,
        "first: {}\nsecond: {}",
        first.log(),
        second_log(&second)
    );
    // One sender per mailbox: of two `run`s on PostgreSQL only the outbox lease's holder sends.
    let senders = [first.log(), second_log(&second)]
        .iter()
        .filter(|log| log.contains("sending the outbox"))
        .count();
    assert_eq!(
        senders,
        1,
        "first: {}\nsecond: {}",
        first.log(),
        second_log(&second)
    );
    {
        // The second sender: `send --wait` hands over one more and sends from the outbox itself,
        // under the same budget: nothing more goes out, and it says it had to wait.
        let waited = case
            .run(&[
                "send",
                "--to",
                &customer,
                "--subject",
                "Message 7",
                "--text",
                "Hello.",
                "--wait",
                "--wait-timeout",
                "5s",
            ])
            .await;
        assert_eq!(waited.status.code(), Some(1), "{}", text(&waited.stderr));
        message_ids.push(outbox_id(&text(&waited.stdout)));
    }
    let sent = query_i64s(
        &case.db,
        "SELECT sent_at FROM outbox WHERE state = 'sent' ORDER BY sent_at",
    )
    .await;
    assert_eq!(sent.len(), 3, "at most 3 a minute, between both processes");
    let replies_sent = case
        .db
        .count("SELECT COUNT(*) FROM outbox WHERE kind = 'reply' AND state = 'sent'")
        .await;
    assert_eq!(replies_sent, 2, "agent replies go first");
    let held = query_i64s(
        &case.db,
        "SELECT next_attempt_at FROM outbox WHERE state = 'pending' AND attempts = 0 \
         AND deferred_reason LIKE 'sending budget: 3 of 3 messages in the last minute%'",
    )
    .await;
    assert_eq!(held.len(), 5, "the rest wait, with the reason");
    assert!(
        held.iter().all(|at| *at == sent[0] + 60_000),
        "due when the first send leaves the minute: {held:?} vs {sent:?}"
    );
    let listed = assert_ok(&case.run(&["outbox", "list"]).await);
    assert!(
        listed.contains("sending budget: 3 of 3 messages in the last minute"),
        "{listed}"
    );
    assert!(listed.contains("notification"), "{listed}");
    drop((first, second));
}

#[tokio::test]
async fn two_processes_share_one_budget_sqlite() {
    two_processes_share_one_budget(Backend::Sqlite).await;
}

#[tokio::test]
async fn two_processes_share_one_budget_postgres() {
    two_processes_share_one_budget(Backend::Postgres).await;
}

/// The process dies right after the server's 250 (failpoint `smtp-accepted`), before the row is
/// `sent`: started again, it sends the row once more, with the same Message-ID, and marks it
/// `sent`; the customer has exactly two copies of the one message.
///
/// Before: there was no such failpoint (the process did not stop), and a row left `sending`
/// waited a fixed 10 minutes (no `smtp.claim_lease`).
async fn a_crash_after_the_250_sends_at_most_one_more_copy(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("carol"));
    let entra = Entra::start(&[&support, &customer]).await;
    let keys = smtp_keys_with(", claim_lease = \"1s\"", "enabled = false");
    let case = Case::build(backend, &keys, "implicit", support.clone(), entra).await;
    let stdout = assert_ok(
        &case
            .run(&[
                "send",
                "--to",
                &customer,
                "--subject",
                "Your order",
                "--text",
                "Shipped.",
            ])
            .await,
    );
    let id = outbox_id(&stdout);
    let message_id = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {id}"),
    )
    .await;
    let mut crashing = case.spawn_run_with(&[("MAILINTAKE_FAILPOINT", "smtp-accepted")]);
    let status = tokio::time::timeout(Duration::from_secs(30), crashing.child.wait())
        .await
        .unwrap_or_else(|_| panic!("the failpoint did not stop the process: {}", crashing.log()))
        .unwrap();
    assert!(!status.success());
    assert!(
        crashing.log().contains("failpoint smtp-accepted reached"),
        "{}",
        crashing.log()
    );
    let state = query_text(
        &case.db,
        &format!("SELECT state FROM outbox WHERE id = {id}"),
    )
    .await;
    assert_eq!(state, "sending", "the server has it, the row does not know");
    arrived(&case.entra, &customer, &message_id).await;

    // Started again, once the claim lease has passed.
    let sent_again = eventually(Duration::from_secs(20), || async {
        assert_ok(&case.run(&["once"]).await);
        query_text(
            &case.db,
            &format!("SELECT state FROM outbox WHERE id = {id}"),
        )
        .await
            == "sent"
    })
    .await;
    assert!(sent_again, "the row was not sent again");
    let two = eventually(Duration::from_secs(20), || async {
        inbox(&case.entra, &customer).await.len() >= 2
    })
    .await;
    assert!(two, "the second copy did not arrive");
    let copies = inbox(&case.entra, &customer).await;
    assert_eq!(copies.len(), 2, "at most one more copy");
    assert!(copies.iter().all(|(m, _)| m.message_id == message_id));
    assert_eq!(
        case.db
            .count(&format!("SELECT attempts FROM outbox WHERE id = {id}"))
            .await,
        2
    );
}

#[tokio::test]
async fn a_crash_after_the_250_sends_at_most_one_more_copy_sqlite() {
    a_crash_after_the_250_sends_at_most_one_more_copy(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_crash_after_the_250_sends_at_most_one_more_copy_postgres() {
    a_crash_after_the_250_sends_at_most_one_more_copy(Backend::Postgres).await;
}

/// A file that makes a message over the stack's submission limit (4 MiB) once base64-encoded.
fn big_attachment(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("big.bin");
    let bytes: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Postfix's submission announces `SIZE 4194304` (its message_size_limit). Once the sender has
/// connected, a larger message is refused at submission, naming the server's limit, although
/// max_send_bytes (35 MB) would allow it. One handed over before the limit was known fails at
/// send time with the reason, before MAIL FROM: never half-sent.
///
/// Before: only max_send_bytes counted: the message was accepted and offered to the server.
#[tokio::test]
async fn a_message_over_the_servers_size_limit_is_refused_before_sending() {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("dave"));
    let entra = Entra::start(&[&support, &customer]).await;
    let keys = smtp_keys_with("", "enabled = false");
    let case = Case::build(Backend::Sqlite, &keys, "implicit", support.clone(), entra).await;
    let big = big_attachment(case.config.path.parent().unwrap());
    let big = big.to_str().unwrap();

    // Handed over before the sender ever connected: accepted, then failed at send time.
    let out = case
        .run(&[
            "send",
            "--to",
            &customer,
            "--subject",
            "Early",
            "--text",
            "x",
            "--attach",
            big,
            "--wait",
        ])
        .await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let id = outbox_id(&text(&out.stdout));
    let (state, error) = (
        query_text(
            &case.db,
            &format!("SELECT state FROM outbox WHERE id = {id}"),
        )
        .await,
        query_text(
            &case.db,
            &format!("SELECT last_error FROM outbox WHERE id = {id}"),
        )
        .await,
    );
    assert_eq!(state, "failed");
    assert!(
        error.contains("more than the server accepts (its EHLO SIZE is 4194304 bytes)"),
        "{error}"
    );
    // Now the limit is known: refused at submission, no row.
    let rows_before = case.db.count("SELECT COUNT(*) FROM outbox").await;
    let out = case
        .run(&[
            "send",
            "--to",
            &customer,
            "--subject",
            "Late",
            "--text",
            "x",
            "--attach",
            big,
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("more than the SMTP server accepts (its EHLO SIZE, in bytes) (4194304)"),
        "{stderr}"
    );
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM outbox").await,
        rows_before
    );
    // A message under the limit still goes.
    let out = case
        .run(&[
            "send",
            "--to",
            &customer,
            "--subject",
            "Small",
            "--text",
            "x",
            "--wait",
        ])
        .await;
    assert_ok(&out);
}

/// An agent reply to a requester whose domain Postfix bounces (the stack's bounce.test goes to
/// an `error:` transport): Postfix's own DSN comes back to the mailbox, carrying the ENVID we
/// sent and only the headers (RET=HDRS); the intake marks the row `bounced` with the reason and
/// files the DSN on the ticket, opening no new ticket.
///
/// Before: mail to bounce.test went to the sink (no DSN), and MAIL FROM carried no ENVID/RET.
async fn a_dsn_for_an_agent_reply_marks_it_bounced_on_its_ticket(backend: Backend) {
    let support = unique_mailbox();
    let requester = format!("{}@bounce.test", unique("erin"));
    let entra = Entra::start(&[&support]).await;
    let keys = smtp_keys_with("", "enabled = false");
    let case = Case::build(backend, &keys, "implicit", support.clone(), entra).await;
    connect_first(&case).await;
    let first = format!("{}@bounce.test", unique("q"));
    deliver_lmtp(
        &support,
        &requester,
        &customer_mail(&requester, &support, "Where is my parcel", &first, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    let stdout = assert_ok(
        &case
            .run(&[
                "send",
                "--ticket",
                "TCK-000001",
                "--text",
                "On its way.",
                "--wait",
            ])
            .await,
    );
    let id = outbox_id(&stdout);
    let ours = query_text(
        &case.db,
        &format!("SELECT message_id FROM outbox WHERE id = {id}"),
    )
    .await;

    // Postfix's DSN arrives in the mailbox.
    let dsn_arrived = eventually(Duration::from_secs(30), || async {
        inbox(&case.entra, &support)
            .await
            .iter()
            .any(|(_, raw)| raw.contains("Undelivered Mail Returned to Sender"))
    })
    .await;
    assert!(dsn_arrived, "no DSN from Postfix");
    let (_, dsn) = inbox(&case.entra, &support)
        .await
        .into_iter()
        .find(|(_, raw)| raw.contains("Undelivered Mail Returned to Sender"))
        .unwrap();
    assert!(
        dsn.contains(&format!("Original-Envelope-Id: {ours}")),
        "ENVID sent: {dsn}"
    );
    assert!(dsn.contains("text/rfc822-headers"), "RET=HDRS: {dsn}");

    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(
        stdout.contains("0 new ticket(s)") || !stdout.contains("1 ticket(s)"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    let state = query_text(
        &case.db,
        &format!("SELECT state FROM outbox WHERE id = {id}"),
    )
    .await;
    assert_eq!(state, "bounced");
    let reason = query_text(
        &case.db,
        &format!("SELECT bounce_reason FROM outbox WHERE id = {id}"),
    )
    .await;
    assert!(
        reason.contains(&format!("{requester}: failed 5.1.1")),
        "{reason}"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND auto_kind = 'bounce'")
            .await,
        1,
        "the DSN is on the ticket"
    );
}

#[tokio::test]
async fn a_dsn_for_an_agent_reply_marks_it_bounced_on_its_ticket_sqlite() {
    a_dsn_for_an_agent_reply_marks_it_bounced_on_its_ticket(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_dsn_for_an_agent_reply_marks_it_bounced_on_its_ticket_postgres() {
    a_dsn_for_an_agent_reply_marks_it_bounced_on_its_ticket(Backend::Postgres).await;
}
