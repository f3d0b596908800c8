//! Many mailboxes in one worker (issue 17, "Scale in one process"): the status page paged and
//! filtered with the statements per request bounded whatever the number of mailboxes, and many
//! mailboxes on one identity sharing one token and logging in at the configured pace.
//!
//! Statements are counted from the worker's own log: with `--log-format json` and
//! `RUST_LOG=…,sqlx::query=debug`, sqlx writes one line per statement it runs, and each carries
//! the fields of the enclosing spans — on SQLite too, where sqlx hands the caller's span to its
//! worker thread with the command. Every HTTP request runs in a span `http_request` with a
//! number of its own, so the lines of one request are exactly its statements (the page's and
//! nothing of the folder tasks'). A connection the pool happens to open inside a request runs
//! its set-up there (PRAGMAs, SET): those lines are the pool's and are not counted. The log is
//! read after the worker stopped, so no line is missed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::ops::{free_port, get, get_until};

/// The most statements one `/` may run (a new connection's set-up not counted): recent
/// tickets, recent quarantine, the two backlog counts, the page's acknowledgement notices.
/// Before, the notices were one query per acknowledging mailbox (all 120 on one page).
const PAGE_STATEMENTS_MAX: usize = 5;
/// The most statements one `/readyz` may run: the acknowledgement notices of every mailbox in
/// one query (before: one per mailbox, 120 here), and one to spare.
const READYZ_STATEMENTS_MAX: usize = 2;

/// `n` mailboxes `m001`… on one identity, each with `mailbox_keys`, the stack's IMAP with
/// `logins_per_second` for the first `reachable` (the others a port nothing listens on), and
/// `[http]` when `http_port` is given.
fn many_mailboxes_config(
    db: &TestDb,
    entra: &Entra,
    addresses: &[String],
    mailbox_keys: &str,
    logins_per_second: u32,
    http_port: Option<u16>,
    reachable: usize,
) -> String {
    let stack = Stack::get();
    // Nothing listens there: the mailboxes from `reachable` on cannot connect, and retry.
    let dead_port = free_port();
    let mut text = format!(
        r#"
[database]
url = "{db}"

[identities.test]
flow = "client_credentials"
tenant = "{tenant}"
client_id = "{client_id}"
client_secret = {{ env = "IT_CLIENT_SECRET" }}
authority = "{authority}"
"#,
        db = db.url,
        tenant = TENANT_ID,
        client_id = entra.client_id,
        authority = entra.fake.authority(),
    );
    if let Some(port) = http_port {
        text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    }
    for (i, address) in addresses.iter().enumerate() {
        text.push_str(&format!(
            r#"
[[mailboxes]]
name = "{name}"
address = "{address}"
identity = "test"
poll_interval = "10m"
{mailbox_keys}

[mailboxes.imap]
host = "localhost"
port = {port}
tls = "implicit"
ca_file = "{ca}"
logins_per_second = {logins_per_second}
"#,
            name = mailbox_name(i),
            port = if i < reachable {
                stack.port("MAILSTACK_IMAPS_PORT")
            } else {
                dead_port
            },
            ca = stack.ca_file(),
        ));
    }
    text
}

fn mailbox_name(i: usize) -> String {
    format!("m{:03}", i + 1)
}

/// A test's world with `n` mailboxes, of which the first `reachable` are on the stack's Dovecot
/// (the stack's Dovecot takes 100 TLS sessions at once, shared by every test running) and the
/// others on a port nothing listens on, so that they are retrying.
struct Many {
    db: TestDb,
    entra: Entra,
    addresses: Vec<String>,
    config: ConfigFile,
}

impl Many {
    async fn new(
        backend: Backend,
        n: usize,
        reachable: usize,
        mailbox_keys: &str,
        logins_per_second: u32,
        http_port: Option<u16>,
    ) -> Many {
        // Short addresses: the fake Entra lists every mailbox an app may open in its tokens,
        // and Dovecot refuses an XOAUTH2 response over 8 KiB ("Authentication response too
        // large"); 115 of `unique`'s 40-character names made one.
        let prefix = &mailintake::ingest::sha256_hex(unique("scale").as_bytes())[..8];
        let addresses: Vec<String> = (0..n)
            .map(|i| format!("{prefix}{}@helpdesk.test", mailbox_name(i)))
            .collect();
        let allowed: Vec<&str> = addresses[..reachable].iter().map(String::as_str).collect();
        let entra = Entra::start(&allowed).await;
        let db = TestDb::new(backend).await;
        let config = ConfigFile::write(&many_mailboxes_config(
            &db,
            &entra,
            &addresses,
            mailbox_keys,
            logins_per_second,
            http_port,
            reachable,
        ));
        Many {
            db,
            entra,
            addresses,
            config,
        }
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("IT_CLIENT_SECRET", self.entra.secret.as_str())]
    }

    /// `mailintake --config … <args>` in the background with `rust_log`, stderr to a file.
    fn spawn(&self, args: &[&str], rust_log: &str) -> Running {
        let log = self.config.path.with_file_name("run.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&self.config.path)
            .args(args)
            .envs(self.env())
            .env("RUST_LOG", rust_log)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("mailintake starts");
        Running { child, log }
    }
}

/// The JSON lines of a `--log-format json` log.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Per HTTP request of the log (by its number): its path, its status, and how many statements
/// sqlx ran inside it.
#[derive(Debug, Default)]
struct RequestLog {
    path: String,
    status: Option<u64>,
    statements: usize,
    /// Statements of a connection opened for the request, not counted in `statements`.
    setup: usize,
}

fn requests(lines: &[Value]) -> BTreeMap<u64, RequestLog> {
    let mut requests: BTreeMap<u64, RequestLog> = BTreeMap::new();
    for line in lines {
        let Some(id) = line["request"].as_u64() else {
            continue;
        };
        let entry = requests.entry(id).or_default();
        if let Some(path) = line["path"].as_str() {
            entry.path = path.to_string();
        }
        if line["target"] == "sqlx::query" {
            // A connection the pool opens during the request runs its set-up (sqlx's and
            // ours: PRAGMAs on SQLite, SET on PostgreSQL): the pool's, not the request's.
            let summary = line["summary"].as_str().unwrap_or("");
            if summary.starts_with("PRAGMA ") || summary.starts_with("SET ") {
                entry.setup += 1;
            } else {
                entry.statements += 1;
            }
        }
        if line["message"] == "request answered" {
            entry.status = line["status"].as_u64();
        }
    }
    requests
}

/// Inserts acknowledgement decisions into `mailbox`'s outbox, oldest first: `sent` rows, then
/// rows suppressed because no message carried the server's stamp, as the ack planning writes
/// them.
async fn ack_rows(db: &TestDb, mailbox: &str, address: &str, kinds: &[(&str, usize)]) {
    let pool = db.pool().await;
    for (state, n) in kinds {
        for _ in 0..*n {
            let customer = format!("{}@customer.test", unique("c"));
            let reason = (*state == "suppressed").then(|| {
                format!(
                    "the receiving server does not vouch for {customer} (the Return-Path address): the message \
                     carries no Authentication-Results from `{STACK_AUTHSERV_ID}` (acknowledge.authserv_id)"
                )
            });
            sqlx::query(
                "INSERT INTO outbox (mailbox, kind, from_address, to_address, subject, message_id, body_text, \
                 next_attempt_at, created_at, state, reason) \
                 VALUES ($1, 'acknowledgement', $2, $3, 'Re: help', $4, 'Hello', 0, 0, $5, $6)",
            )
            .bind(mailbox)
            .bind(address)
            .bind(&customer)
            .bind(format!("{}@helpdesk.test", unique("row")))
            .bind(*state)
            .bind(reason)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    pool.close().await;
}

fn mailbox_rows(page: &str) -> usize {
    page.matches("<tr class=\"mailbox\">").count()
}

/// 120 mailboxes in one worker (60 on Dovecot, 60 that cannot connect): the status page shows
/// 50 a page (page 3: the last 20), `?q=`
/// and `?state=` filter, a state that is none is refused with 400 naming the states; the
/// acknowledgement notice (read for all the page's mailboxes in one query) is right per
/// mailbox; and no `/` runs more than [`PAGE_STATEMENTS_MAX`] statements, no `/readyz` more
/// than [`READYZ_STATEMENTS_MAX`].
///
/// Before: `/readyz` ran one outbox query per acknowledging mailbox (120 here), `/` one per
/// mailbox too, and the page listed all 120 mailboxes on one page with no filter.
async fn status_page_of_many_mailboxes(backend: Backend) {
    let port = free_port();
    let many = Many::new(backend, 120, 60, &smtp_keys(), 40, Some(port)).await;
    let base = format!("http://127.0.0.1:{port}");
    assert_ok(&mailintake(&many.config.path, &["migrate"], &many.env()).await);
    // m001's latest 20 decisions are all unstamped (5 sent ones are older): the notice. m002's
    // newest is a sent one before 20 unstamped ones: no notice (the latest 20 hold a sent one).
    ack_rows(
        &many.db,
        "m001",
        &many.addresses[0],
        &[("sent", 5), ("suppressed", 20)],
    )
    .await;
    ack_rows(
        &many.db,
        "m002",
        &many.addresses[1],
        &[("suppressed", 20), ("sent", 1)],
    )
    .await;
    let running = many.spawn(
        &["--log-format", "json", "run"],
        "mailintake=debug,sqlx::query=debug",
    );
    // Every mailbox swept once, or failed: 60 ok, 60 retrying.
    let (settled, _, readyz) = get_until(&format!("{base}/readyz"), None, |status, body| {
        let Ok(json) = serde_json::from_str::<Value>(body) else {
            return false;
        };
        let states: Vec<&str> = json["mailboxes"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["state"].as_str()).collect())
            .unwrap_or_default();
        status == 200
            && states.iter().filter(|s| **s == "ok").count() == 60
            && states.iter().filter(|s| **s == "retrying").count() == 60
    })
    .await;
    assert!(
        settled,
        "not every mailbox settled: {readyz}\n{}",
        running.log()
    );
    let json: Value = serde_json::from_str(&readyz).unwrap();
    let notice_of = |name: &str| {
        json["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["acknowledgements"].clone())
            .unwrap()
    };
    assert!(
        notice_of("m001")
            .as_str()
            .is_some_and(|n| n.contains("the server stamps no Authentication-Results")),
        "{readyz}"
    );
    assert_eq!(notice_of("m002"), Value::Null, "{readyz}");

    let (status, page1) = get(&format!("{base}/"), None).await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(mailbox_rows(&page1), 50, "{page1}");
    assert!(
        page1.contains(">m001<") && page1.contains(">m050<"),
        "{page1}"
    );
    assert!(!page1.contains(">m051<"), "{page1}");
    assert!(
        page1.contains("mailboxes 1–50 of 120 matching (120 in all) · page 1 of 3"),
        "{page1}"
    );
    assert!(page1.contains("href=\"/?page=2\""), "{page1}");
    assert_eq!(
        page1
            .matches("the server stamps no Authentication-Results")
            .count(),
        1,
        "only m001's notice: {page1}"
    );
    let (status, page3) = get(&format!("{base}/?page=3"), None).await;
    assert_eq!(status, 200, "{page3}");
    assert_eq!(mailbox_rows(&page3), 20, "{page3}");
    assert!(
        page3.contains(">m101<") && page3.contains(">m120<"),
        "{page3}"
    );
    let (_, page4) = get(&format!("{base}/?page=4"), None).await;
    assert_eq!(mailbox_rows(&page4), 0, "{page4}");
    assert!(page4.contains("no mailbox on this page matches"), "{page4}");
    // m010…m019 by name; any case; the address holds the name too.
    let (_, filtered) = get(&format!("{base}/?q=M01"), None).await;
    assert_eq!(mailbox_rows(&filtered), 10, "{filtered}");
    let (_, by_address) = get(&format!("{base}/?q={}", many.addresses[6]), None).await;
    assert_eq!(mailbox_rows(&by_address), 1, "{by_address}");
    assert!(by_address.contains(">m007<"), "{by_address}");
    let (_, retrying) = get(&format!("{base}/?state=retrying"), None).await;
    assert_eq!(mailbox_rows(&retrying), 50, "{retrying}");
    assert!(
        retrying.contains(">m061<") && retrying.contains(">m110<"),
        "{retrying}"
    );
    assert!(
        retrying.contains("of 60 matching (120 in all) · page 1 of 2"),
        "{retrying}"
    );
    assert!(
        retrying.contains("href=\"/?state=retrying&amp;page=2\""),
        "{retrying}"
    );
    let (_, retrying2) = get(&format!("{base}/?state=retrying&page=2"), None).await;
    assert_eq!(mailbox_rows(&retrying2), 10, "{retrying2}");
    assert!(
        retrying2.contains(">m111<") && retrying2.contains(">m120<"),
        "{retrying2}"
    );
    let (_, admin) = get(&format!("{base}/?state=needs_admin"), None).await;
    assert_eq!(mailbox_rows(&admin), 0, "{admin}");
    // m060…m069 hold "m06"; of them only m060 is ok.
    let (_, both) = get(&format!("{base}/?state=ok&q=m06"), None).await;
    assert_eq!(mailbox_rows(&both), 1, "{both}");
    assert!(both.contains(">m060<"), "{both}");
    let (status, bad) = get(&format!("{base}/?state=broken"), None).await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad.contains(
            "state: `broken` is not a mailbox state; use one of starting, ok, retrying, needs_admin"
        ),
        "{bad}"
    );
    let (status, bad_page) = get(&format!("{base}/?page=0"), None).await;
    assert_eq!(status, 400, "{bad_page}");
    let (status, _) = get(&format!("{base}/readyz"), None).await;
    assert_eq!(status, 200);

    let (status, log) = terminate(running, Duration::from_secs(60)).await;
    assert!(status.success(), "{status}: {log}");
    let lines = json_lines(&log);
    let requests = requests(&lines);
    let answered = |path: &str, code: u64| -> Vec<usize> {
        requests
            .values()
            .filter(|r| r.path == path && r.status == Some(code))
            .map(|r| r.statements)
            .collect()
    };
    let pages = answered("/", 200);
    let readies = answered("/readyz", 200);
    eprintln!(
        "statements per / (200): {pages:?}; per /readyz (200): max {:?} over {} requests",
        readies.iter().max(),
        readies.len()
    );
    assert!(pages.len() >= 8, "{requests:?}");
    assert!(!readies.is_empty(), "{requests:?}");
    // The count sees the statements at all: tickets, quarantine and the two backlog counts.
    assert!(pages.iter().all(|n| *n >= 4), "{pages:?}");
    assert!(readies.iter().all(|n| *n >= 1), "{readies:?}");
    assert!(
        pages.iter().all(|n| *n <= PAGE_STATEMENTS_MAX),
        "a / ran more than {PAGE_STATEMENTS_MAX} statements: {pages:?}"
    );
    assert!(
        readies.iter().all(|n| *n <= READYZ_STATEMENTS_MAX),
        "a /readyz ran more than {READYZ_STATEMENTS_MAX} statements: {readies:?}"
    );
    // A refused filter runs none.
    assert!(answered("/", 400).iter().all(|n| *n == 0), "{requests:?}");
    // The pool may grow to the backend's cap (`run` follows the registry): 120 folders + 120
    // senders now.
    let cap = match backend {
        Backend::Sqlite => mailintake::config::SQLITE_POOL_CAP,
        Backend::Postgres => mailintake::config::POSTGRES_POOL_CAP,
    };
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!(
                "database pool: up to {cap} connections, opened as needed (240 folder and sender tasks now"
            )))),
        "{log}"
    );
    // And the open-files limit was raised (or already at the hard limit) and reported.
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("open-files limit: "))),
        "{log}"
    );
}

#[tokio::test]
async fn the_status_page_of_120_mailboxes_is_paged_filtered_and_bounded_in_statements_on_sqlite() {
    status_page_of_many_mailboxes(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_status_page_of_120_mailboxes_is_paged_filtered_and_bounded_in_statements_on_postgres()
{
    status_page_of_many_mailboxes(Backend::Postgres).await;
}

/// Twelve mailboxes on one identity: one token request for all of them, and their logins at
/// `imap.logins_per_second` (2 here), not at once.
///
/// The pace is read from the worker's "login slot reached" lines (written when a login may
/// start, just before it connects) and checked from below only — a loaded machine spreads the
/// logins further, never closer: the last comes at least 11 slots (5.5 s) after the first, less
/// a margin for the first line's own delay, and no second holds more than the pace plus one.
/// The Dovecot log confirms twelve real logins. Without the pacer the twelve came within a
/// fraction of a second.
#[tokio::test]
async fn mailboxes_sharing_an_identity_share_one_token_and_log_in_at_the_configured_pace() {
    let many = Many::new(Backend::Sqlite, 12, 12, "", 2, None).await;
    let running = many.spawn(&["--log-format", "json", "run"], "mailintake=debug");
    let swept = eventually(Duration::from_secs(60), || async {
        many.db
            .count_or_zero("SELECT COUNT(*) FROM mailbox_state")
            .await
            >= 12
    })
    .await;
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(swept, "not every mailbox swept: {log}");
    assert!(status.success(), "{status}: {log}");

    let issued: Vec<_> = many
        .entra
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(
        issued.len(),
        1,
        "one token for twelve mailboxes: {issued:?}"
    );

    let mut slots: Vec<f64> = json_lines(&log)
        .iter()
        .filter(|l| l["message"] == "login slot reached")
        .filter_map(|l| seconds_of(l["timestamp"].as_str()?))
        .collect();
    slots.sort_by(f64::total_cmp);
    assert_eq!(slots.len(), 12, "{log}");
    let spread = slots[11] - slots[0];
    assert!(
        spread >= 11.0 * 0.5 - 0.5,
        "twelve logins within {spread:.2} s at 2 a second: {slots:?}"
    );
    for (i, start) in slots.iter().enumerate() {
        let in_one_second = slots[i..].iter().filter(|t| **t < start + 1.0).count();
        assert!(
            in_one_second <= 3,
            "{in_one_second} logins within a second of {start:.3} at 2 a second: {slots:?}"
        );
    }
    let dovecot_log = std::fs::read_to_string(format!(
        "{}/dovecot/dovecot.log",
        Stack::get().var("MAILSTACK_DIR")
    ))
    .unwrap_or_default();
    for address in &many.addresses {
        assert!(
            dovecot_log.contains(&format!("Login: user=<{address}>, method=XOAUTH2")),
            "no Dovecot login of {address}"
        );
    }
}

/// Seconds of the day of an RFC 3339 timestamp (`2026-12-03T11:26:31.123456Z`).
fn seconds_of(timestamp: &str) -> Option<f64> {
    let time = timestamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}
