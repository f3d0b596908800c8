//! The whole fleet drill of issue 17 ("Done when"): three `mailintake run` worker processes on
//! one PostgreSQL, 30 acknowledging mailboxes from the registry (60 units: a folder and an
//! outbox sender each; each folder in IDLE up to a minute), mail delivered over LMTP every
//! 100–150 ms to a random mailbox the whole time. Worker A starts
//! alone and takes every unit, B joins and gets half, C starts late and gets a third; A is killed
//! with SIGKILL, B stopped with SIGTERM, and C ends with everything.
//!
//! What it holds the fleet to, each measured from events (the database's lease rows and
//! timestamps, Dovecot's and Postfix's logs), never from the test's sleeps:
//! - every delivered message exists exactly once (one `imap_messages` row, one inbound message
//!   row, one ticket, one acknowledgement row);
//! - the body bytes Dovecot sent over every session of every worker (its logout lines'
//!   `body_bytes`) are at most the corpus (the messages' sizes) plus, per takeover, what a worker
//!   may have downloaded and not committed when it lost the folder: the sweep pipelines two
//!   batches (batch n+1 downloads while batch n is written), so two batches per folder of the
//!   killed worker, and one batch (the prefetched one, discarded at the safe point) per graceful
//!   handover (a surplus released to a joining worker, a SIGTERM). A batch is at most
//!   `fetch_batch_messages` (here 5) messages, each counted at the largest message's size;
//! - no acknowledgement is sent twice (Postfix's maillog: one `message-id=` per submission),
//!   except a row the killed worker had claimed (`sending`) when it died: the server may have
//!   said 250 before the row became `sent`, and after `smtp.claim_lease` (here 10 s) it is sent
//!   again, once, with the same Message-ID;
//! - a joining worker's share moves at the others' next safe point (IDLE, the sender's wait for
//!   its next poll and a login's wait for its turn end for it): the last unit of its share is
//!   acquired within 2 acquisition intervals (+ a round's own time each) + a logout of its
//!   registration;
//! - after SIGKILL, each of the killed worker's leases is taken over within TTL + one
//!   acquisition interval (the lease row's `acquired_at`; plus a second for the round's own
//!   statements on a loaded machine), all of a round's units in one statement, and mail for its
//!   mailboxes is a ticket again within that + a login (paced logins, then a sweep);
//! - after SIGTERM, its units are held by the last worker within 5 s.
//!
//! The two SIGSTOP drills of the same issue — a worker frozen just before a commit, and one just
//! before a disposition, woken after the takeover, commit and dispose of nothing — are
//! `fleet::a_worker_frozen_just_before_a_commit_commits_nothing_after_the_takeover` and
//! `fleet::a_worker_frozen_just_before_a_disposition_disposes_nothing_after_the_takeover`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row;

use crate::fleet::{ACQUIRE, Fleet, TTL};
use crate::helpers::*;

const N_MAILBOXES: usize = 30;
/// The token store's key (hex, 32 bytes): the registry needs one.
const TOKEN_KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";
/// Messages per batch: small, so that "one batch" in the byte allowance is a tight bound.
const BATCH_MESSAGES: i64 = 5;
/// How long a claimed outbox row stays the claimer's (`smtp.claim_lease`): the resend after a
/// crash between the server's 250 and `sent` comes within the test.
const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// Messages delivered between two steps of the drill (about 3 s).
const MAIL_PER_STEP: usize = 20;
/// What "a login" may take on a loaded machine: a survivor logs in to the (up to ten) folders it
/// took over, paced at `logins_per_second` (10 a second: 1 s), each login checked by Dovecot with
/// the fake Entra, then sweeps and commits (2 s).
const LOGIN: Duration = Duration::from_secs(3);
/// A coordination round's own time, which the acquisition interval's sleep comes after (its
/// statements and the heartbeat on a loaded machine).
const ROUND: Duration = Duration::from_secs(1);

/// One lease row: holder (if held and not expired), epoch, when it was last acquired (database
/// clock, unix ms).
#[derive(Debug, Clone)]
struct LeaseRow {
    holder: Option<String>,
    epoch: i64,
    acquired_at: i64,
}

async fn leases(fleet: &Fleet) -> BTreeMap<(String, String), LeaseRow> {
    let pool = fleet.db.pool().await;
    let rows = sqlx::query(
        "SELECT mailbox, folder, \
         CASE WHEN expires_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) \
         THEN holder END, epoch, COALESCE(acquired_at, 0) FROM leases",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    rows.into_iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                LeaseRow {
                    holder: r.get(2),
                    epoch: r.get(3),
                    acquired_at: r.get(4),
                },
            )
        })
        .collect()
}

/// How many units each worker holds.
fn shares(holders: &BTreeMap<(String, String), String>) -> BTreeMap<String, usize> {
    let mut shares = BTreeMap::new();
    for holder in holders.values() {
        *shares.entry(holder.clone()).or_default() += 1;
    }
    shares
}

/// Whether the 60 units are held, `per_worker` by each of `workers`.
fn balanced(
    holders: &BTreeMap<(String, String), String>,
    workers: &[&str],
    per_worker: usize,
) -> bool {
    let shares = shares(holders);
    holders.len() == 2 * N_MAILBOXES
        && shares.len() == workers.len()
        && workers
            .iter()
            .all(|w| shares.get(*w).copied() == Some(per_worker))
}

/// A customer's mail with a unique sender (the per-sender limit of new tickets stays out of it)
/// and a unique Message-ID; about 1.5 KB.
fn customer_mail(to: &str, note: &str) -> (String, Vec<u8>, String) {
    let from = format!("{}@customer.test", unique("c"));
    let id = format!("{}@customer.test", unique("full"));
    let padding = "The printer on the third floor prints only blank pages again.\r\n".repeat(20);
    let raw = format!(
        "From: Customer <{from}>\r\nTo: {to}\r\nSubject: {note} for {to}\r\n\
         Date: Tue, 24 Nov 2026 17:00:00 +0000\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nPlease help ({note}).\r\n{padding}"
    );
    (from, raw.into_bytes(), id)
}

/// Delivers one message to `to` and records its Message-ID.
async fn deliver(to: &str, note: &str, log: &Mutex<Vec<String>>) {
    let (from, raw, message_id) = customer_mail(to, note);
    deliver_lmtp(to, &from, &raw).await;
    log.lock().unwrap().push(message_id);
}

/// Mail between two steps: waits until [`MAIL_PER_STEP`] more messages were delivered, so
/// that every step happens while sweeps and sends are under way.
async fn more_mail(delivered: &Mutex<Vec<String>>, step: &str) {
    let from = delivered.lock().unwrap().len();
    let came = eventually(Duration::from_secs(30), || async {
        delivered.lock().unwrap().len() >= from + MAIL_PER_STEP
    })
    .await;
    assert!(came, "mail is delivered {step}");
}

/// When worker `id` registered (`workers.started_at`, the database's clock, unix ms).
async fn registered_at(fleet: &Fleet, id: &str) -> i64 {
    let pool = fleet.db.pool().await;
    let at: i64 = sqlx::query("SELECT started_at FROM workers WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    at
}

/// The test's wall clock in unix ms (the same host's clock as PostgreSQL's).
fn now() -> i64 {
    mailintake::time::now_ms()
}

/// How many times Postfix took each Message-ID in (its cleanup's `message-id=<…>` lines), from
/// the maillog's bytes after `offset`.
fn submissions(maillog: &Path, offset: u64) -> BTreeMap<String, usize> {
    let log = std::fs::read(maillog).unwrap_or_default();
    let new = text(log.get(offset as usize..).unwrap_or_default());
    let mut counts = BTreeMap::new();
    for line in new.lines().filter(|l| l.contains("postfix/cleanup")) {
        if let Some((_, id)) = line.split_once("message-id=<") {
            let id = id.trim_end().trim_end_matches('>').to_string();
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

/// The `body_bytes` of every finished Dovecot session of `user` (each session's logout line).
async fn body_bytes(user: &str) -> u64 {
    let (logins, ends) = dovecot_session_ends(user).await;
    assert!(
        ends.len() >= logins,
        "every session of {user} ended: {logins} logins, {} ends",
        ends.len()
    );
    ends.iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("body_bytes="))?
                .trim_end_matches(',')
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A small xorshift: the mailboxes mail goes to, reproducible from the seed the test prints.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn a_fleet_of_three_keeps_every_promise_under_continuous_mail() {
    let keys = format!(
        "fetch_batch_messages = {BATCH_MESSAGES}\n\
         smtp = {{ host = \"localhost\", port = {port}, tls = \"starttls\", ca_file = \"{ca}\", claim_lease = \"{claim}s\" }}\n\
         {ack}",
        port = Stack::get().port("MAILSTACK_SUBMISSION_PORT"),
        ca = Stack::get().ca_file(),
        claim = CLAIM_LEASE.as_secs(),
        ack = ack_keys_with(""),
    );
    let fleet = Fleet::build(N_MAILBOXES, &keys, &[]).await;
    // The fleet follows the registry: the file's mailboxes are written into it first. Each folder
    // waits in IDLE up to a minute (new mail ends it at once): a worker that gives a folder up
    // for a joining one must end its IDLE, not wait for the poll.
    let text = std::fs::read_to_string(&fleet.config.path)
        .unwrap()
        .replace("poll_interval = \"1s\"", "poll_interval = \"60s\"");
    assert!(text.contains("poll_interval = \"60s\""));
    std::fs::write(
        &fleet.config.path,
        format!("{text}\n[token_store]\nkeys = [{{ id = \"k1\", key = \"{TOKEN_KEY}\" }}]\n"),
    )
    .unwrap();
    let synced = assert_ok(
        &mailintake(
            &fleet.config.path,
            &["mailbox", "sync"],
            &[("IT_CLIENT_SECRET", &fleet.entra.secret)],
        )
        .await,
    );
    assert_eq!(
        fleet
            .db
            .count("SELECT COUNT(*) FROM registry_mailboxes")
            .await,
        N_MAILBOXES as i64,
        "{synced}"
    );
    let maillog = Path::new(Stack::get().var("MAILSTACK_DIR")).join("postfix/maillog");
    let maillog_offset = std::fs::metadata(&maillog).map_or(0, |m| m.len());

    // A alone: every unit, and a first sweep of every folder (which sets where acknowledged
    // mail begins), before any mail comes.
    let a = fleet.start("a");
    let a_ready = eventually(Duration::from_secs(60), || async {
        fleet.unit_holders().await.len() == 2 * N_MAILBOXES
            && fleet
                .db
                .count_or_zero("SELECT COUNT(*) FROM mailbox_state")
                .await
                == N_MAILBOXES as i64
    })
    .await;
    assert!(a_ready, "worker A takes all 60 units: {}", a.log());
    let a_id = fleet
        .worker_id(a.child.id().unwrap())
        .await
        .expect("A registered");
    next_second().await;

    // Mail the whole time: every 100-150 ms to a random mailbox.
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop_mail = Arc::new(AtomicBool::new(false));
    let seed = (now() as u64) | 1;
    eprintln!("mail to random mailboxes, seed {seed}");
    let mailer = tokio::spawn({
        let (delivered, stop_mail) = (Arc::clone(&delivered), Arc::clone(&stop_mail));
        let mailboxes = fleet.mailboxes.clone();
        async move {
            let mut random = Xorshift(seed);
            let mut n = 0;
            while !stop_mail.load(Ordering::SeqCst) {
                let to = &mailboxes[(random.next() % mailboxes.len() as u64) as usize];
                deliver(to, &format!("mail {n}"), &delivered).await;
                n += 1;
                let pause = 100 + random.next() % 51;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    });

    // B joins: A gives up half at its safe points (the folders leave IDLE, the senders their
    // sleep), B takes them.
    more_mail(&delivered, "before B joins").await;
    let b = fleet.start("b");
    let b_balanced = eventually(Duration::from_secs(30), || async {
        let holders = fleet.unit_holders().await;
        let ids: Vec<String> = shares(&holders).into_keys().collect();
        ids.len() == 2 && balanced(&holders, &[&ids[0], &ids[1]], N_MAILBOXES)
    })
    .await;
    let b_id = fleet
        .worker_id(b.child.id().unwrap())
        .await
        .expect("B registered");
    assert!(
        b_balanced,
        "A and B hold 30 units each: {:?}\nA: {}\nB: {}",
        shares(&fleet.unit_holders().await),
        a.log(),
        b.log()
    );
    let b_took = leases(&fleet)
        .await
        .values()
        .filter(|l| l.holder.as_deref() == Some(b_id.as_str()))
        .map(|l| l.acquired_at)
        .max()
        .unwrap();
    let b_share_ms = b_took - registered_at(&fleet, &b_id).await;
    eprintln!("B's share (30 units) taken {b_share_ms} ms after B registered");

    // C starts late: 20 each.
    more_mail(&delivered, "before C joins").await;
    let c = fleet.start("c");
    let c_balanced = eventually(Duration::from_secs(30), || async {
        let holders = fleet.unit_holders().await;
        let ids: Vec<String> = shares(&holders).into_keys().collect();
        ids.len() == 3 && balanced(&holders, &[&ids[0], &ids[1], &ids[2]], 20)
    })
    .await;
    let c_id = fleet
        .worker_id(c.child.id().unwrap())
        .await
        .expect("C registered");
    assert!(
        c_balanced,
        "A, B and C hold 20 units each: {:?}\nC: {}",
        shares(&fleet.unit_holders().await),
        c.log()
    );
    let c_took = leases(&fleet)
        .await
        .values()
        .filter(|l| l.holder.as_deref() == Some(c_id.as_str()))
        .map(|l| l.acquired_at)
        .max()
        .unwrap();
    let c_share_ms = c_took - registered_at(&fleet, &c_id).await;
    eprintln!("C's share (20 units) taken {c_share_ms} ms after C registered");
    // From the joining worker's registration: the others' next round (one interval) sees it and
    // asks their surplus to stop (IDLE, a sender's wait and a login's queue end at once), a
    // logout and the release; the joining worker's next round (one interval) takes them: 2
    // intervals, plus a round's own time each and the logouts on a loaded machine.
    let join_bound = (2 * (ACQUIRE + ROUND) + Duration::from_secs(1)).as_millis() as i64;
    assert!(
        b_share_ms <= join_bound && c_share_ms <= join_bound,
        "a joining worker's share moves within {join_bound} ms: B {b_share_ms} ms, C {c_share_ms} ms"
    );

    more_mail(&delivered, "before the SIGKILL").await;
    // SIGKILL A: nothing is released; its leases expire after the TTL and the others take them.
    let before_kill = leases(&fleet).await;
    let orphaned: BTreeSet<(String, String)> = before_kill
        .iter()
        .filter(|(_, l)| l.holder.as_deref() == Some(a_id.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(orphaned.len(), 20);
    let mut a = a;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let killed_at = now();
    // What A had claimed and maybe handed to the server when it died: the one resend allowed.
    let claimed_by_a: BTreeSet<String> = {
        let pool = fleet.db.pool().await;
        let rows = sqlx::query("SELECT mailbox, message_id FROM outbox WHERE state = 'sending'")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.into_iter()
            .filter(|r| {
                let mailbox: String = r.get(0);
                orphaned.contains(&(mailbox, String::new()))
            })
            .map(|r| r.get::<String, _>(1))
            .collect()
    };
    // One message for each of A's folders, to time the takeover to a committed ticket.
    let probes: Vec<(String, String)> = {
        let mut probes = Vec::new();
        for (mailbox, folder) in orphaned.iter().filter(|(_, f)| !f.is_empty()) {
            assert_eq!(folder, "INBOX");
            let index: usize = mailbox.trim_start_matches("box").parse().unwrap();
            let address = &fleet.mailboxes[index];
            let (from, raw, id) = customer_mail(address, "after the kill");
            deliver_lmtp(address, &from, &raw).await;
            delivered.lock().unwrap().push(id.clone());
            probes.push((mailbox.clone(), id));
        }
        probes
    };
    let taken_over = eventually(Duration::from_secs(30), || async {
        let now = leases(&fleet).await;
        orphaned
            .iter()
            .all(|k| now[k].holder.as_deref().is_some_and(|h| h != a_id.as_str()))
    })
    .await;
    assert!(
        taken_over,
        "A's units are taken over: {:?}",
        shares(&fleet.unit_holders().await)
    );
    let after_kill = leases(&fleet).await;
    let lease_takeover_ms = orphaned
        .iter()
        .map(|k| after_kill[k].acquired_at - killed_at)
        .max()
        .unwrap();
    let probes_in = eventually(Duration::from_secs(30), || async {
        let pool = fleet.db.pool().await;
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) FROM messages WHERE message_id = ANY(string_to_array($1, ' '))",
        )
        .bind(
            probes
                .iter()
                .map(|(_, id)| id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        )
        .fetch_one(&pool)
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
        pool.close().await;
        n == probes.len() as i64
    })
    .await;
    assert!(
        probes_in,
        "mail for A's mailboxes comes in after the takeover\nB: {}\nC: {}",
        b.log(),
        c.log()
    );
    let ticket_takeover_ms = {
        let pool = fleet.db.pool().await;
        let latest: i64 = sqlx::query(
            "SELECT MAX(t.created_at) FROM tickets t JOIN messages m ON m.ticket_id = t.id \
             WHERE m.message_id = ANY(string_to_array($1, ' '))",
        )
        .bind(
            probes
                .iter()
                .map(|(_, id)| id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        )
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
        pool.close().await;
        latest - killed_at
    };
    eprintln!(
        "takeover after SIGKILL: the last of A's 20 leases {lease_takeover_ms} ms, the last of its \
         {} folders' mail a ticket {ticket_takeover_ms} ms after the kill",
        probes.len()
    );
    let lease_bound = (TTL + ACQUIRE + ROUND).as_millis() as i64;
    assert!(
        lease_takeover_ms <= lease_bound,
        "A's leases taken over within TTL + one acquisition interval: {lease_takeover_ms} ms > {lease_bound} ms"
    );
    let ticket_bound = (TTL + ACQUIRE + ROUND + LOGIN).as_millis() as i64;
    assert!(
        ticket_takeover_ms <= ticket_bound,
        "A's mailboxes at work again within TTL + one acquisition interval + a login: \
         {ticket_takeover_ms} ms > {ticket_bound} ms"
    );
    let survivors = shares(&fleet.unit_holders().await);
    assert_eq!(
        survivors,
        BTreeMap::from([(b_id.clone(), N_MAILBOXES), (c_id.clone(), N_MAILBOXES)]),
        "B and C hold 30 units each"
    );

    more_mail(&delivered, "before the SIGTERM").await;
    // SIGTERM B: it stops at safe points, releases everything and says it stopped; C takes all.
    let b_units: BTreeSet<(String, String)> = fleet
        .unit_holders()
        .await
        .into_iter()
        .filter(|(_, h)| *h == b_id)
        .map(|(k, _)| k)
        .collect();
    let terminated_at = now();
    let (status, b_log) = terminate(b, Duration::from_secs(30)).await;
    assert!(status.success(), "B stops cleanly: {b_log}");
    let handed_over = eventually(Duration::from_secs(15), || async {
        let holders = fleet.unit_holders().await;
        holders.len() == 2 * N_MAILBOXES && holders.values().all(|h| *h == c_id)
    })
    .await;
    assert!(handed_over, "C holds every unit: {}", c.log());
    let after_term = leases(&fleet).await;
    let handover_ms = b_units
        .iter()
        .map(|k| after_term[k].acquired_at - terminated_at)
        .max()
        .unwrap();
    eprintln!("handover after SIGTERM: B's 30 units held by C {handover_ms} ms after the signal");
    assert!(
        handover_ms <= 5_000,
        "handed over within 5 s of SIGTERM: {handover_ms} ms\nB: {b_log}"
    );

    more_mail(&delivered, "after the SIGTERM").await;
    // The mail stops; C takes in what is left and sends every acknowledgement (those A claimed
    // once the claim lease ran out).
    stop_mail.store(true, Ordering::SeqCst);
    mailer.await.expect("every delivery accepted");
    let delivered: Vec<String> = delivered.lock().unwrap().clone();
    let n = delivered.len() as i64;
    eprintln!("{n} messages delivered");
    let all_in = eventually(Duration::from_secs(40), || async {
        fleet.n_tickets().await >= n
            && fleet
                .db
                .count_or_zero("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
                .await
                >= n
    })
    .await;
    let mut missing = Vec::new();
    if !all_in {
        for id in &delivered {
            let sql = format!("SELECT COUNT(*) FROM messages WHERE message_id = '{id}'");
            if fleet.db.count_or_zero(&sql).await == 0 {
                missing.push(id.clone());
            }
        }
    }
    assert!(
        all_in,
        "{n} delivered: {} tickets, {} acknowledgements sent; not stored: {missing:?}\nleases: {:?}\nC: {}",
        fleet.n_tickets().await,
        fleet
            .db
            .count_or_zero("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        leases(&fleet).await,
        c.log()
    );
    let (status, c_log) = terminate(c, Duration::from_secs(30)).await;
    assert!(status.success(), "C stops cleanly: {c_log}");
    assert!(
        fleet.unit_holders().await.is_empty(),
        "every lease released at SIGTERM"
    );

    // Every message exactly once: one ledger row, one inbound message row, one ticket, one
    // acknowledgement.
    let pool = fleet.db.pool().await;
    let ids: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(ids.len(), delivered.len());
    let stored: Vec<String> =
        sqlx::query("SELECT message_id FROM messages WHERE direction = 'inbound'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(stored.len(), delivered.len(), "one message row each");
    assert_eq!(
        stored.into_iter().collect::<BTreeSet<_>>(),
        ids,
        "the delivered messages, each once"
    );
    assert_eq!(fleet.n_tickets().await, n);
    assert_eq!(
        fleet.db.count("SELECT COUNT(*) FROM imap_messages").await,
        n,
        "one ledger row each"
    );
    assert_eq!(
        fleet
            .db
            .count("SELECT COUNT(DISTINCT message_id) FROM imap_messages")
            .await,
        n
    );
    assert_eq!(
        fleet
            .db
            .count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL")
            .await,
        0,
        "every message disposed of"
    );
    let acks: Vec<(String, i64)> = sqlx::query(
        "SELECT message_id, ticket_id FROM outbox WHERE kind = 'acknowledgement' AND state = 'sent'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(acks.len() as i64, n, "one acknowledgement per ticket");
    assert_eq!(
        acks.iter().map(|(_, t)| *t).collect::<BTreeSet<_>>().len() as i64,
        n
    );

    // No acknowledgement submitted twice, but the resend of one A had claimed.
    let submitted = eventually(Duration::from_secs(10), || {
        let counts = submissions(&maillog, maillog_offset);
        let all = acks.iter().all(|(id, _)| counts.contains_key(id));
        async move { all }
    })
    .await;
    let counts = submissions(&maillog, maillog_offset);
    assert!(submitted, "Postfix took every acknowledgement in");
    let mut resent = Vec::new();
    for (id, _) in &acks {
        let copies = counts[id];
        if copies > 1 {
            assert!(
                copies == 2 && claimed_by_a.contains(id),
                "{id} submitted {copies} times; only a row A had claimed when killed may be sent \
                 twice ({claimed_by_a:?})"
            );
            resent.push(id.clone());
        }
    }
    eprintln!(
        "acknowledgements: {} sent, {} claimed by A when killed, {} of them sent twice",
        acks.len(),
        claimed_by_a.len(),
        resent.len()
    );

    // Bytes: everything Dovecot sent as bodies over every worker's sessions.
    let (corpus, largest): (i64, i64) =
        sqlx::query("SELECT CAST(SUM(size_bytes) AS BIGINT), MAX(size_bytes) FROM imap_messages")
            .fetch_one(&pool)
            .await
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
            .unwrap();
    // Each acquisition of a folder's lease after its first is a takeover (epochs count them).
    let handovers: i64 = leases(&fleet)
        .await
        .iter()
        .filter(|((_, folder), _)| !folder.is_empty())
        .map(|(_, l)| l.epoch - 1)
        .sum();
    pool.close().await;
    let killed_folders = orphaned.iter().filter(|(_, f)| !f.is_empty()).count() as i64;
    let batch = BATCH_MESSAGES * largest;
    // A killed worker's folder: two batches (the pipeline); every other handover: one.
    let allowance = (handovers + killed_folders) * batch;
    let mut fetched = 0u64;
    for address in &fleet.mailboxes {
        fetched += body_bytes(address).await;
    }
    let fetched = fetched as i64;
    eprintln!(
        "body bytes: {fetched} fetched, corpus {corpus} ({n} messages), {} twice; allowance \
         {allowance} ({handovers} takeovers of folders, {killed_folders} of them after SIGKILL, \
         a batch at most {batch} bytes)",
        fetched - corpus
    );
    assert!(
        fetched >= corpus,
        "every message downloaded at least once: {fetched} < {corpus}"
    );
    assert!(
        fetched <= corpus + allowance,
        "body bytes {fetched} > corpus {corpus} + allowance {allowance}"
    );
}
