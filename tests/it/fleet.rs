//! A fleet on PostgreSQL (issue 17, items 1 and 2): several `mailintake run` on one database share
//! the mailboxes by leases — each mailbox held by one worker, spread evenly, every message taken in
//! exactly once — and a worker killed with SIGKILL or stopped with SIGTERM has its mailboxes taken
//! over by the others (after the lease's TTL, or at once). A worker frozen by SIGSTOP just before a
//! commit or a disposition, and woken after the takeover, commits and disposes of nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::helpers::*;

/// The test's lease TTL and acquisition interval (`[fleet]`).
pub(crate) const TTL: Duration = Duration::from_secs(5);
pub(crate) const ACQUIRE: Duration = Duration::from_secs(1);

/// A fleet's world: one PostgreSQL database, `mailboxes` on the stack's Dovecot (named `box0`,
/// `box1`, … in the config file), a fake Entra that lets the workers in. Also used by
/// `fleet_full.rs`.
pub(crate) struct Fleet {
    pub(crate) db: TestDb,
    pub(crate) entra: Entra,
    pub(crate) mailboxes: Vec<String>,
    pub(crate) config: ConfigFile,
}

impl Fleet {
    async fn new(n_mailboxes: usize) -> Fleet {
        Fleet::build(n_mailboxes, "", &[]).await
    }

    /// A fleet of `n_mailboxes` with `extra_mailbox_keys` in each mailbox's table; the fake Entra
    /// also lets the test into `others` (e.g. a customer's mailbox, to read what was sent).
    pub(crate) async fn build(
        n_mailboxes: usize,
        extra_mailbox_keys: &str,
        others: &[&str],
    ) -> Fleet {
        let db = TestDb::new(Backend::Postgres).await;
        let mailboxes: Vec<String> = (0..n_mailboxes).map(|_| unique_mailbox()).collect();
        let mut names: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
        names.extend_from_slice(others);
        let entra = Entra::start(&names).await;
        let stack = Stack::get();
        let mut text = format!(
            r#"
[database]
url = "{db}"

[fleet]
lease_ttl = "{ttl}s"
acquire_interval = "{acquire}s"

[identities.test]
flow = "client_credentials"
tenant = "{tenant}"
client_id = "{client_id}"
client_secret = {{ env = "IT_CLIENT_SECRET" }}
authority = "{authority}"
"#,
            db = db.url,
            ttl = TTL.as_secs(),
            acquire = ACQUIRE.as_secs(),
            tenant = TENANT_ID,
            client_id = entra.client_id,
            authority = entra.fake.authority(),
        );
        for (i, address) in mailboxes.iter().enumerate() {
            text.push_str(&format!(
                r#"
[[mailboxes]]
name = "box{i}"
address = "{address}"
identity = "test"
poll_interval = "1s"
{extra_mailbox_keys}

[mailboxes.imap]
host = "localhost"
port = {port}
tls = "implicit"
ca_file = "{ca}"
"#,
                port = stack.port("MAILSTACK_IMAPS_PORT"),
                ca = stack.ca_file(),
            ));
        }
        let config = ConfigFile::write(&text);
        Fleet {
            db,
            entra,
            mailboxes,
            config,
        }
    }

    /// Starts worker `name` (`mailintake run`, its log in a file of its own).
    pub(crate) fn start(&self, name: &str) -> Running {
        self.start_with(name, &[])
    }

    /// Like [`Fleet::start`], with extra environment variables.
    pub(crate) fn start_with(&self, name: &str, env: &[(&str, &str)]) -> Running {
        let log: PathBuf = self.config.path.with_file_name(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&self.config.path)
            .arg("run")
            .env("IT_CLIENT_SECRET", &self.entra.secret)
            .env("RUST_LOG", "mailintake=debug")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("mailintake run starts");
        Running { child, log }
    }

    /// Who holds each unit now (by the database's clock), by (mailbox, folder); the outbox
    /// sender's folder is the empty string.
    pub(crate) async fn unit_holders(&self) -> BTreeMap<(String, String), String> {
        let pool = self.db.pool().await;
        let rows = sqlx::query(
            "SELECT mailbox, folder, holder FROM leases WHERE holder IS NOT NULL \
             AND expires_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        pool.close().await;
        rows.into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get::<String, _>(2)))
            .collect()
    }

    /// Who holds each mailbox now (by the database's clock), by mailbox name.
    pub(crate) async fn holders(&self) -> BTreeMap<String, String> {
        let pool = self.db.pool().await;
        let rows = sqlx::query(
            "SELECT mailbox, holder FROM leases WHERE holder IS NOT NULL \
             AND expires_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        pool.close().await;
        rows.into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect()
    }

    /// The worker id of the process `pid` (from the workers table).
    pub(crate) async fn worker_id(&self, pid: u32) -> Option<String> {
        let pool = self.db.pool().await;
        let id = sqlx::query("SELECT id FROM workers WHERE pid = $1 AND stopped_at IS NULL")
            .bind(i64::from(pid))
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<String, _>(0));
        pool.close().await;
        id
    }

    async fn deliver_one_each(&self, wave: &str) {
        for mailbox in &self.mailboxes {
            // A sender of its own per message: the per-sender limit of new tickets stays out of it.
            let from = format!("{}@customer.test", unique("c"));
            deliver_lmtp(mailbox, &from, &mail(mailbox, &from, wave)).await;
        }
    }

    pub(crate) async fn n_tickets(&self) -> i64 {
        self.db.count_or_zero("SELECT COUNT(*) FROM tickets").await
    }

    /// Waits until `n` tickets exist, at most `limit`.
    pub(crate) async fn wait_for_tickets(&self, n: i64, limit: Duration) -> bool {
        eventually(limit, || async { self.n_tickets().await >= n }).await
    }
}

pub(crate) fn mail(to: &str, from: &str, wave: &str) -> Vec<u8> {
    let id = format!("{}@customer.test", unique("fleet"));
    format!(
        "From: Customer <{from}>\r\nTo: {to}\r\nSubject: {wave} for {to}\r\n\
         Date: Tue, 24 Nov 2026 17:00:00 +0000\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nPlease help ({wave}).\r\n"
    )
    .into_bytes()
}

/// How many mailboxes each worker holds.
fn shares(holders: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut shares = BTreeMap::new();
    for holder in holders.values() {
        *shares.entry(holder.clone()).or_default() += 1;
    }
    shares
}

/// Three workers, six mailboxes, mail delivered while they run: every mailbox is held by one
/// worker, two each; every message becomes exactly one ticket. Then one worker is killed
/// (SIGKILL): its mailboxes are taken over within TTL + one acquisition interval + a login, and
/// the mail delivered meanwhile comes in; then one is stopped (SIGTERM): its mailboxes move within
/// 5 s. Before the worker took leases, every worker held nothing (no lease rows) and took in every
/// mailbox itself.
#[tokio::test]
async fn a_fleet_shares_the_mailboxes_and_takes_them_over() {
    let fleet = Fleet::new(6).await;
    let first = fleet.start("w1");
    // The first worker takes everything; the others join and get their share from it.
    fleet.deliver_one_each("wave 1").await;
    assert!(
        fleet.wait_for_tickets(6, Duration::from_secs(60)).await,
        "one worker takes in all six mailboxes: {}",
        first.log()
    );
    let second = fleet.start("w2");
    let third = fleet.start("w3");
    let balanced = eventually(Duration::from_secs(30), || async {
        let holders = fleet.holders().await;
        holders.len() == 6 && shares(&holders).values().all(|&n| n == 2)
    })
    .await;
    let holders = fleet.holders().await;
    assert!(
        balanced,
        "six mailboxes spread two by two over three workers: {holders:?}\n{}\n{}",
        second.log(),
        third.log()
    );
    // Every worker is registered and visible with its host and version.
    let out = mailintake(
        &fleet.config.path,
        &["workers"],
        &[("IT_CLIENT_SECRET", &fleet.entra.secret)],
    )
    .await;
    let listing = assert_ok(&out);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("worker ")).count(),
        3,
        "{listing}"
    );
    assert!(listing.contains(env!("CARGO_PKG_VERSION")), "{listing}");
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("lease ")).count(),
        6,
        "{listing}"
    );

    fleet.deliver_one_each("wave 2").await;
    assert!(fleet.wait_for_tickets(12, Duration::from_secs(30)).await);

    // SIGKILL: nothing is released; the leases expire after the TTL and are taken over.
    let mut killed = first;
    let killed_pid = killed.child.id().unwrap();
    let killed_id = fleet.worker_id(killed_pid).await.expect("registered");
    let orphaned: Vec<String> = fleet
        .holders()
        .await
        .into_iter()
        .filter(|(_, h)| *h == killed_id)
        .map(|(m, _)| m)
        .collect();
    assert_eq!(orphaned.len(), 2);
    killed.child.start_kill().unwrap();
    killed.child.wait().await.unwrap();
    let killed_at = Instant::now();
    fleet.deliver_one_each("wave 3").await;
    let taken_over = eventually(Duration::from_secs(30), || async {
        let holders = fleet.holders().await;
        orphaned
            .iter()
            .all(|m| holders.get(m).is_some_and(|h| *h != killed_id))
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(taken_over, "the killed worker's mailboxes are taken over");
    assert!(
        fleet.wait_for_tickets(18, Duration::from_secs(30)).await,
        "the mail delivered after the kill comes in: {}",
        second.log()
    );
    let takeover_and_mail = killed_at.elapsed();
    eprintln!(
        "takeover after SIGKILL: leases {} ms, all mail in {} ms",
        takeover.as_millis(),
        takeover_and_mail.as_millis()
    );
    // TTL + one acquisition interval + a login, with a second to spare for a loaded machine.
    assert!(
        takeover <= TTL + ACQUIRE + Duration::from_secs(2),
        "taken over in {takeover:?}"
    );
    let holders = fleet.holders().await;
    assert_eq!(holders.len(), 6);
    assert!(
        shares(&holders).values().all(|&n| n == 3),
        "three each now: {holders:?}"
    );

    // SIGTERM: the leases are released at once and the last worker takes everything.
    let term_pid = third.child.id().unwrap();
    let term_id = fleet.worker_id(term_pid).await.expect("registered");
    let stopped_at = Instant::now();
    let (status, log) = terminate(third, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    let handed_over = eventually(Duration::from_secs(15), || async {
        let holders = fleet.holders().await;
        holders.len() == 6 && holders.values().all(|h| *h != term_id)
    })
    .await;
    let handover = stopped_at.elapsed();
    eprintln!("handover after SIGTERM: {} ms", handover.as_millis());
    assert!(
        handed_over && handover <= Duration::from_secs(5),
        "handed over in {handover:?}"
    );
    fleet.deliver_one_each("wave 4").await;
    if !fleet.wait_for_tickets(24, Duration::from_secs(30)).await {
        panic!(
            "wave 4: {} tickets; {:?}\n{}",
            fleet.n_tickets().await,
            fleet.holders().await,
            second.log()
        );
    }

    // Every message exactly once.
    assert_eq!(fleet.n_tickets().await, 24);
    assert_eq!(
        fleet.db.count("SELECT COUNT(*) FROM imap_messages").await,
        24
    );
    assert_eq!(
        fleet
            .db
            .count("SELECT COUNT(DISTINCT message_id) FROM messages")
            .await,
        24
    );
    let (status, log) = terminate(second, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert!(
        fleet.holders().await.is_empty(),
        "every lease released at SIGTERM"
    );
}

/// Every row a folder task writes (the intake ledger, tickets and their messages, the checkpoint,
/// waiting messages, quarantine, outbox), each as PostgreSQL's text of the whole row: equal
/// before and after only if nothing of it changed.
async fn ledger(db: &TestDb) -> Vec<String> {
    let pool = db.pool().await;
    let mut rows = Vec::new();
    for table in [
        "imap_messages",
        "tickets",
        "messages",
        "raw_messages",
        "mailbox_state",
        "stuck_messages",
        "quarantine",
        "outbox",
    ] {
        let text: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(t AS TEXT) FROM {table} t ORDER BY 1"
        )))
        .fetch_all(&pool)
        .await
        .expect("the ledger reads")
        .into_iter()
        .map(|r| format!("{table}: {}", r.get::<String, _>(0)))
        .collect();
        rows.extend(text);
    }
    pool.close().await;
    rows
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
pub(crate) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "T")
        })
        .unwrap_or(false)
}

/// How many sweeps a worker's log says it finished.
fn sweeps_done(worker: &Running) -> usize {
    worker.log().matches("sweep done").count()
}

/// The drill of issue 17: worker 1 stops itself (SIGSTOP) at the failpoint `point` on its first
/// pass; worker 2 takes the folder over once the lease expired and takes the message in (ticket,
/// `\Seen`); an agent then marks the message unread again. Worker 1, woken with SIGCONT, must
/// change nothing: the rows are as worker 2 left them and the message stays unread (a worker that
/// went on would mark it `\Seen` again, or commit its batch). Returns worker 1's log.
async fn a_frozen_worker_changes_nothing_after_the_takeover(point: &str) -> String {
    let fleet = Fleet::new(1).await;
    let mailbox = fleet.mailboxes[0].clone();
    let from = format!("{}@customer.test", unique("c"));
    deliver_lmtp(&mailbox, &from, &mail(&mailbox, &from, "frozen")).await;

    let armed = format!("{point}:1:stop");
    let first = fleet.start_with("w1", &[("MAILINTAKE_FAILPOINT", &armed)]);
    let pid = first.child.id().expect("running");
    let frozen = eventually(Duration::from_secs(60), || async {
        first
            .log()
            .contains(&format!("failpoint {point} reached; stopping"))
            && is_stopped(pid)
    })
    .await;
    assert!(frozen, "worker 1 stops at {point}: {}", first.log());
    let first_id = fleet.worker_id(pid).await.expect("worker 1 registered");
    let frozen_at = Instant::now();

    // Worker 2 takes the folder over after the TTL, and takes the message in (or completes the
    // disposition worker 1 left pending).
    let second = fleet.start("w2");
    let taken_in = eventually(Duration::from_secs(60), || async {
        fleet
            .db
            .count_or_zero("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NOT NULL")
            .await
            == 1
            && folder_contents(&fleet.entra, &mailbox, "INBOX")
                .await
                .iter()
                .all(|&(_, seen)| seen)
    })
    .await;
    assert!(
        taken_in,
        "worker 2 takes the message in: {}\n{}",
        second.log(),
        first.log()
    );
    let holders = fleet.holders().await;
    assert!(
        holders.get("box0").is_some_and(|h| *h != first_id),
        "worker 2 holds the folder: {holders:?}"
    );
    assert!(
        frozen_at.elapsed() >= TTL - Duration::from_secs(1),
        "taken over only after the lease expired"
    );
    // Worker 2 at rest: one whole sweep after the one that took the message in.
    let n_sweeps = sweeps_done(&second);
    assert!(
        eventually(Duration::from_secs(30), || async {
            sweeps_done(&second) > n_sweeps
        })
        .await,
        "{}",
        second.log()
    );
    // An agent marks it unread: worker 1 disposing of it now would show.
    doveadm(&[
        "flags", "remove", "-u", &mailbox, "\\Seen", "mailbox", "INBOX", "all",
    ]);
    let unread = folder_contents(&fleet.entra, &mailbox, "INBOX").await;
    assert_eq!(unread.len(), 1);
    assert!(!unread[0].1, "marked unread: {unread:?}");
    let before = ledger(&fleet.db).await;

    // SIGCONT: worker 1 goes on where it stopped, finds its lease gone, and stops its work.
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
    let gave_up = eventually(Duration::from_secs(30), || async {
        let log = first.log();
        log.contains(&format!("failpoint {point} continued"))
            && log.contains("lease lost; waiting to acquire it again")
    })
    .await;
    assert!(gave_up, "worker 1 gives the folder up: {}", first.log());
    assert_eq!(
        folder_contents(&fleet.entra, &mailbox, "INBOX").await,
        unread,
        "worker 1 disposed of nothing: {}",
        first.log()
    );
    assert_eq!(
        ledger(&fleet.db).await,
        before,
        "worker 1 wrote nothing after it went on: {}",
        first.log()
    );
    assert_eq!(fleet.n_tickets().await, 1);
    assert_eq!(
        fleet.holders().await.get("box0"),
        holders.get("box0"),
        "worker 2 still holds the folder"
    );

    let (status, log) = terminate(second, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    let (status, log) = terminate(first, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    log
}

/// Frozen with its batch written in its transaction, just before the commit: the commit's fence
/// finds the lease another worker's and commits nothing — refused as a lost lease, not by the
/// unique keys after worker 2's rows (which would have it decide the batch again).
#[tokio::test]
async fn a_worker_frozen_just_before_a_commit_commits_nothing_after_the_takeover() {
    let log = a_frozen_worker_changes_nothing_after_the_takeover("before-commit").await;
    assert!(log.contains("nothing of the batch was committed"), "{log}");
    assert!(!log.contains("deciding the batch again"), "{log}");
    assert!(!log.contains("new ticket"), "{log}");
}

/// Frozen with its batch committed, just before its disposition: woken after the takeover, its
/// own clock says the lease's trust ran out, and it sends no disposition command (worker 2 did
/// the disposition it left pending).
#[tokio::test]
async fn a_worker_frozen_just_before_a_disposition_disposes_nothing_after_the_takeover() {
    let log = a_frozen_worker_changes_nothing_after_the_takeover("before-disposition").await;
    assert!(
        log.contains("new ticket"),
        "worker 1 committed the batch: {log}"
    );
    assert!(log.contains("no longer certainly this worker's"), "{log}");
}

/// A mailbox's folder and its outbox sender are two units with leases of their own, so they may
/// sit on different workers: with two workers and one acknowledging mailbox, each holds one; the
/// ticket is taken in by the folder's holder, and its acknowledgement (an outbox row, nobody
/// woken on the other worker) is sent once by the sender's holder. `once` before them takes no
/// leases and registers no worker.
#[tokio::test]
async fn a_folder_and_its_outbox_sender_may_sit_on_different_workers() {
    let customer = unique_mailbox();
    let fleet = Fleet::build(1, &smtp_keys(), &[&customer]).await;
    let mailbox = fleet.mailboxes[0].clone();
    let secret = [("IT_CLIENT_SECRET", fleet.entra.secret.as_str())];

    let once = assert_ok(&mailintake(&fleet.config.path, &["once"], &secret).await);
    assert!(once.contains("0 new message(s)"), "{once}");
    assert_eq!(fleet.db.count("SELECT COUNT(*) FROM leases").await, 0);
    assert_eq!(fleet.db.count("SELECT COUNT(*) FROM workers").await, 0);

    // The first worker takes both units; the second joins and gets one of them.
    let first = fleet.start("w1");
    assert!(
        eventually(Duration::from_secs(30), || async {
            fleet.unit_holders().await.len() == 2
        })
        .await,
        "{}",
        first.log()
    );
    let second = fleet.start("w2");
    let split = eventually(Duration::from_secs(30), || async {
        let holders = fleet.unit_holders().await;
        holders.len() == 2
            && holders
                .values()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 2
    })
    .await;
    let holders = fleet.unit_holders().await;
    assert!(
        split,
        "one unit each: {holders:?}\n{}\n{}",
        first.log(),
        second.log()
    );
    let folder_holder = &holders[&("box0".to_string(), "INBOX".to_string())];
    let first_id = fleet
        .worker_id(first.child.id().unwrap())
        .await
        .expect("registered");
    let (folder_worker, sender_worker) = if *folder_holder == first_id {
        (&first, &second)
    } else {
        (&second, &first)
    };

    next_second().await;
    let id = format!("{}@customer.test", unique("split"));
    deliver_lmtp(
        &mailbox,
        &customer,
        &crate::acks::customer_mail(&customer, &mailbox, "Split units", &id, ""),
    )
    .await;
    let sent = eventually(Duration::from_secs(30), || async {
        fleet
            .db
            .count_or_zero("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await
            == 1
    })
    .await;
    assert!(
        sent,
        "the acknowledgement is sent: {}\n{}",
        folder_worker.log(),
        sender_worker.log()
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            !crate::acks::inbox_messages(&fleet.entra, &customer)
                .await
                .is_empty()
        })
        .await
    );
    assert_eq!(
        crate::acks::inbox_messages(&fleet.entra, &customer)
            .await
            .len(),
        1,
        "one acknowledgement"
    );
    // Each did its own part: the ticket on the folder's worker, the send on the sender's.
    assert!(folder_worker.log().contains("new ticket"));
    assert!(!sender_worker.log().contains("new ticket"));
    assert!(sender_worker.log().contains("outbox flushed"));
    assert!(!folder_worker.log().contains("outbox flushed"));
    assert_eq!(
        fleet.unit_holders().await,
        holders,
        "nothing moved meanwhile"
    );

    for worker in [first, second] {
        let (status, log) = terminate(worker, Duration::from_secs(30)).await;
        assert!(status.success(), "{log}");
    }
}
