//! Nothing stuck, nothing lost when the network or the server has trouble: a flaky connection
//! sets no message aside, a message Dovecot cannot read waits (while the mail after it comes in)
//! and is set aside only after `unreadable_after`, and a sweep longer than a token's lifetime logs
//! in again between batches instead of being cut off. Connection trouble comes from the tests' own
//! fault proxy ([`crate::faultproxy`]) in front of Dovecot; the unreadable message from Dovecot
//! itself (a Maildir file it may not open).

use std::time::{Duration, Instant};

use crate::faultproxy::{Fault, FaultProxy};
use crate::helpers::*;

/// Points the case's config at the proxy instead of Dovecot, with extra `[mailboxes.imap]` keys.
fn through_proxy(case: &Case, proxy: &FaultProxy, imap_keys: &str) {
    let text = std::fs::read_to_string(&case.config.path).unwrap();
    let dovecot = format!("port = {}\n", Stack::get().port("MAILSTACK_IMAPS_PORT"));
    assert!(text.contains(&dovecot), "{text}");
    // `[mailboxes.imap]` is the config's last table: keys appended at the end go into it.
    let text = format!(
        "{}\n{imap_keys}\n",
        text.replace(&dovecot, &format!("port = {}\n", proxy.port))
    );
    std::fs::write(&case.config.path, text).unwrap();
}

/// A message of about `size` bytes from its own sender, with a unique Message-ID.
fn message(to: &str, n: usize, size: usize) -> (Vec<u8>, String) {
    let id = format!("{}@customer.test", unique("net"));
    let mut raw = format!(
        "From: Customer {n} <customer{n}@customer.test>\r\nTo: {to}\r\nSubject: Problem number {n}\r\n\
         Date: Tue, 24 Nov 2026 14:00:00 +0000\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\nPlease help with problem {n}.\r\n"
    );
    let line = "The printer on the third floor prints every page twice, then stops.\r\n";
    while raw.len() < size {
        raw.push_str(line);
    }
    (raw.into_bytes(), id)
}

async fn deliver(case: &Case, count: usize, size: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let (raw, id) = message(&case.mailbox, n, size);
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
        ids.push(id);
    }
    ids
}

/// One `mailintake once`: whether it succeeded, and its log.
async fn once(case: &Case) -> (bool, String) {
    let out = case
        .run_with(&["once"], &[("RUST_LOG", "mailintake=info")])
        .await;
    (out.status.success(), text(&out.stderr))
}

async fn count(case: &Case, sql: &str) -> i64 {
    case.db.count_or_zero(sql).await
}

#[tokio::test]
async fn a_connection_cut_or_stalled_mid_fetch_sets_nothing_aside_and_all_mail_comes_in_after() {
    // A short wait, so that only the rule about whose failure it was keeps the mail in.
    let case = Case::new(
        Backend::Sqlite,
        "fetch_batch_messages = 10\nunreadable_after = \"1s\"\nmax_new_tickets_per_sender_per_hour = 0",
        "implicit",
    )
    .await;
    let proxy = FaultProxy::start(Stack::get().port("MAILSTACK_IMAPS_PORT")).await;
    through_proxy(&case, &proxy, "command_timeout = \"3s\"");
    deliver(&case, 30, 50_000).await;
    // The first five connections break 40 kB into what the server sends: after the login and the
    // listing (a few kB), inside the first body each downloads, whether a batch or one message.
    let cut = Some(Fault::Cut { after: 40_000 });
    let stall = Some(Fault::Stall { after: 40_000 });
    proxy.plan(&[cut, cut, cut, stall, cut]);

    let started = Instant::now();
    let mut runs = Vec::new();
    while started.elapsed() < Duration::from_secs(90) {
        let (ok, log) = once(&case).await;
        runs.push((ok, log));
        if ok && proxy.faults_pending() == 0 {
            break;
        }
    }
    let took = started.elapsed();
    let logs: Vec<&str> = runs.iter().map(|(_, log)| log.as_str()).collect();
    let failed = runs.iter().filter(|(ok, _)| !ok).count();
    eprintln!(
        "{} runs ({failed} failed, {} faults) in {took:?}",
        runs.len(),
        proxy.faults_done()
    );
    assert_eq!(proxy.faults_done(), 5, "{logs:#?}");
    assert_eq!(
        count(&case, "SELECT COUNT(*) FROM quarantine").await,
        0,
        "a message was set aside for the network's trouble: {logs:#?}"
    );
    assert_eq!(
        count(&case, "SELECT COUNT(*) FROM tickets").await,
        30,
        "{logs:#?}"
    );
    assert_eq!(count(&case, "SELECT COUNT(*) FROM stuck_messages").await, 0);
    assert_eq!(
        count(
            &case,
            "SELECT COUNT(*) FROM mailbox_state WHERE alone_from IS NOT NULL"
        )
        .await,
        0
    );
    // Every message is marked seen, none moved to quarantine.
    let inbox = folder_contents(&case.entra, &case.mailbox, "INBOX").await;
    assert_eq!(inbox.len(), 30);
    assert!(inbox.iter().all(|(_, seen)| *seen), "{inbox:?}");
}

#[tokio::test]
async fn a_message_dovecot_cannot_read_waits_while_the_mail_after_it_comes_in_and_is_set_aside_only_after_unreadable_after()
 {
    const WAIT: Duration = Duration::from_secs(8);
    // On PostgreSQL: the other two tests run on SQLite.
    let case = Case::new(
        Backend::Postgres,
        "fetch_batch_messages = 5\nunreadable_after = \"8s\"\nmax_new_tickets_per_sender_per_hour = 0",
        "implicit",
    )
    .await;
    let ids = deliver(&case, 12, 2_000).await;
    // Dovecot (which reads mail as its own user) may not open two of the files: it answers a
    // FETCH of either with `* BYE FETCH failed: Internal error` and ends the session.
    set_mode(&maildir_file_of(&case.mailbox, &ids[2]), 0o000);
    set_mode(&maildir_file_of(&case.mailbox, &ids[7]), 0o000);

    let started = Instant::now();
    let mut first_failed_at_ms = None;
    let mut others_in_at = None;
    let mut restored_at = None;
    let mut set_aside_at = None;
    let mut logs = Vec::new();
    while started.elapsed() < Duration::from_secs(90) {
        let (_, log) = once(&case).await;
        logs.push(log);
        let tickets = count(&case, "SELECT COUNT(*) FROM tickets").await;
        let quarantined = count(&case, "SELECT COUNT(*) FROM quarantine").await;
        let waiting = count(&case, "SELECT COUNT(*) FROM stuck_messages").await;
        if first_failed_at_ms.is_none() && waiting > 0 {
            first_failed_at_ms =
                Some(count(&case, "SELECT MIN(first_failed_at) FROM stuck_messages").await);
        }
        if tickets == 10 && others_in_at.is_none() {
            // The ten readable messages came in while the two waited: nothing set aside yet.
            assert_eq!(quarantined, 0, "{logs:#?}");
            assert_eq!(waiting, 2, "{logs:#?}");
            others_in_at = Some(started.elapsed());
            // One of them becomes readable again before its wait is over.
            set_mode(&maildir_file_of(&case.mailbox, &ids[7]), 0o600);
            restored_at = Some(mailintake::time::now_ms());
        }
        if quarantined > 0 {
            set_aside_at = Some(mailintake::time::now_ms());
            break;
        }
    }
    let others_in_at = others_in_at.unwrap_or_else(|| {
        panic!("the mail after the unreadable message never came in: {logs:#?}")
    });
    let set_aside_at = set_aside_at.unwrap_or_else(|| panic!("never set aside: {logs:#?}"));
    let first_failed_at_ms = first_failed_at_ms.unwrap();
    let waited = Duration::from_millis((set_aside_at - first_failed_at_ms) as u64);
    eprintln!(
        "the others were in after {others_in_at:?}; set aside {waited:?} after the first failure ({} runs)",
        logs.len()
    );
    assert!(
        waited >= WAIT,
        "set aside after {waited:?}, before unreadable_after = {WAIT:?}: {logs:#?}"
    );
    assert!(restored_at.unwrap() - first_failed_at_ms < WAIT.as_millis() as i64);
    // The restored one comes in normally on the next sweep (it was tried after the broken one,
    // which broke the session each time).
    let (ok, log) = once(&case).await;
    assert!(ok, "{log}");
    assert_eq!(count(&case, "SELECT COUNT(*) FROM tickets").await, 11);
    let pool = case.db.pool().await;
    let (reason, detail): (String, Option<String>) =
        sqlx::query_as("SELECT reason, detail FROM quarantine")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(reason, "unreadable");
    assert!(
        detail.as_deref().unwrap_or("").contains("waited"),
        "{detail:?}"
    );
    assert_eq!(
        count(
            &case,
            &format!(
                "SELECT COUNT(*) FROM messages WHERE message_id = '{}'",
                ids[7]
            )
        )
        .await,
        1
    );
    assert_eq!(count(&case, "SELECT COUNT(*) FROM stuck_messages").await, 0);
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_sweep_longer_than_a_token_lifetime_logs_in_again_between_batches() {
    const LIFETIME: Duration = Duration::from_secs(10);
    let case = Case::with_token_lifetime(
        Backend::Sqlite,
        "fetch_batch_messages = 4\nmax_new_tickets_per_sender_per_hour = 0",
        "implicit",
        LIFETIME,
    )
    .await;
    let proxy = FaultProxy::start(Stack::get().port("MAILSTACK_IMAPS_PORT")).await;
    through_proxy(&case, &proxy, "command_timeout = \"2s\"");
    deliver(&case, 200, 1_000).await;
    // Like Exchange when the token a session logged in with expires (Dovecot checks tokens only
    // at login): every connection ends one token lifetime after it opened. A slow link makes the
    // sweep last more than two lifetimes.
    proxy.close_each_after(LIFETIME);
    proxy.delay_server_chunks(Duration::from_millis(200));

    let started = Instant::now();
    let (ok, log) = once(&case).await;
    let took = started.elapsed();
    let relogins = log.matches("expires soon").count();
    eprintln!(
        "one sweep of 200 messages in {took:?}: {} connections, {relogins} logins again between batches",
        proxy.connections()
    );
    assert!(ok, "{log}");
    assert_eq!(
        proxy.closed_at_lifetime(),
        0,
        "a session was cut by expiry: {log}"
    );
    assert!(
        took > 2 * LIFETIME,
        "the sweep was too short to test anything: {took:?}"
    );
    assert!(relogins >= 2, "{log}");
    assert_eq!(
        count(&case, "SELECT COUNT(*) FROM tickets").await,
        200,
        "{log}"
    );
    assert_eq!(count(&case, "SELECT COUNT(*) FROM quarantine").await, 0);
    assert_eq!(count(&case, "SELECT COUNT(*) FROM stuck_messages").await, 0);
}

/// Where the server answers a FETCH of a message it cannot read with a tagged NO (Dovecot on the
/// stack's third address, `imap_fetch_failure = no-after`; other servers do the same for mail
/// they cannot deliver now), the refusal on a working session is the message's own: it waits
/// while the mail around it comes in, is set aside once `unreadable_after` has passed, and no
/// session is given up for it after the first.
#[tokio::test]
async fn a_message_the_server_refuses_with_a_tagged_no_waits_on_a_working_session_and_is_set_aside_after_unreadable_after()
 {
    const WAIT: Duration = Duration::from_secs(4);
    let case = Case::new(
        Backend::Sqlite,
        "fetch_batch_messages = 5\nunreadable_after = \"4s\"\nmax_new_tickets_per_sender_per_hour = 0",
        "fetch-no",
    )
    .await;
    let ids = deliver(&case, 8, 2_000).await;
    set_mode(&maildir_file_of(&case.mailbox, &ids[1]), 0o000);

    let started = Instant::now();
    let mut runs = Vec::new();
    let mut others_in = false;
    let mut first_failed_at_ms = None;
    let mut set_aside_at = None;
    while started.elapsed() < Duration::from_secs(60) {
        runs.push(once(&case).await);
        if first_failed_at_ms.is_none()
            && count(&case, "SELECT COUNT(*) FROM stuck_messages").await > 0
        {
            first_failed_at_ms =
                Some(count(&case, "SELECT MIN(first_failed_at) FROM stuck_messages").await);
        }
        if !others_in && count(&case, "SELECT COUNT(*) FROM tickets").await == 7 {
            others_in = true;
            // It waits for its own refusal, not for a lost connection.
            assert_eq!(
                count(
                    &case,
                    "SELECT COUNT(*) FROM stuck_messages WHERE connection_losses = 0"
                )
                .await,
                1,
                "{runs:#?}"
            );
            assert_eq!(count(&case, "SELECT COUNT(*) FROM quarantine").await, 0);
        }
        if count(&case, "SELECT COUNT(*) FROM quarantine").await > 0 {
            set_aside_at = Some(mailintake::time::now_ms());
            break;
        }
    }
    let logs: Vec<&str> = runs.iter().map(|(_, log)| log.as_str()).collect();
    assert!(others_in, "the mail around it never came in: {logs:#?}");
    let set_aside_at = set_aside_at.unwrap_or_else(|| panic!("never set aside: {logs:#?}"));
    // Dovecot ends a session that asks again for a message it has refused in it: the batch's
    // re-ask for it alone does, once; after that the message is only ever asked for alone.
    let failed = runs.iter().filter(|(ok, _)| !*ok).count();
    assert!(failed <= 1, "{failed} sweeps failed: {logs:#?}");
    assert!(
        logs.iter().any(|log| log.contains("tagged NO")),
        "the refusal was logged as the server's answer for the message: {logs:#?}"
    );
    let waited = Duration::from_millis((set_aside_at - first_failed_at_ms.unwrap()) as u64);
    assert!(
        waited >= WAIT,
        "set aside after {waited:?}, before unreadable_after = {WAIT:?}: {logs:#?}"
    );
    let pool = case.db.pool().await;
    let (reason, detail): (String, Option<String>) =
        sqlx::query_as("SELECT reason, detail FROM quarantine")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(reason, "unreadable");
    let detail = detail.unwrap_or_default();
    assert!(detail.contains("waited"), "{detail}");
    assert_eq!(count(&case, "SELECT COUNT(*) FROM stuck_messages").await, 0);
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );
    // With it set aside, the sweeps run clean.
    let (ok, log) = once(&case).await;
    assert!(ok, "{log}");
}
