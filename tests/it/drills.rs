//! Fault drills, scaled to run in CI: the worker killed with SIGKILL at random moments of an
//! ingest (and aborted by a failpoint right after random commits), and the mail server and identity provider of a private stack stopped and restarted
//! under a running worker. Afterwards the database must hold every message exactly once.

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::*;

/// A small deterministic pseudo-random sequence (xorshift), seeded per run, so a failing drill
/// can be replayed from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn kill9(running: &Running) {
    let pid = running.child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn distinct_mail(to: &str, n: usize) -> (Vec<u8>, String) {
    let id = format!("{}@customer.test", unique(&format!("drill{n}-")));
    let raw = format!(
        "From: Customer {n} <customer{n}@customer.test>\r\nTo: {to}\r\nSubject: Drill message {n}\r\n\
         Date: Tue, 24 Nov 2026 18:00:00 +0000\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        "Line of text for the drill.\r\n".repeat(1 + n % 40)
    );
    (raw.into_bytes(), id)
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    const N: usize = 150;
    const KILLS: usize = 8;
    let case = Case::new(
        Backend::Sqlite,
        "dispose = \"move\"\nfetch_batch_messages = 3\nmax_new_tickets_per_sender_per_hour = 0\npoll_interval = \"10m\"",
        "implicit",
    )
    .await;
    for n in 0..N {
        let (raw, _) = distinct_mail(&case.mailbox, n);
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
    }
    let seed = u64::from(std::process::id()) * 2_654_435_761 + 1;
    eprintln!("drill seed {seed}");
    let mut rng = Rng(seed);
    let mut kills = 0;
    for round in 0..KILLS {
        let before = case
            .db
            .count_or_zero("SELECT COUNT(*) FROM imap_messages")
            .await;
        if before as usize >= N {
            break;
        }
        if round % 2 == 0 {
            // A hard stop right after the k-th commit of this run, before its dispositions:
            // deterministic, so the drill always hits the most delicate moment.
            let k = 1 + rng.next(4);
            let out = case
                .run_with(
                    &["once"],
                    &[("MAILINTAKE_FAILPOINT", &format!("after-commit:{k}"))],
                )
                .await;
            if !out.status.success() {
                kills += 1;
            }
        } else {
            // SIGKILL after some progress, at a random moment.
            let running = case.spawn_run();
            case.wait_for_count(
                "SELECT COUNT(*) FROM imap_messages",
                before + 1,
                Duration::from_secs(30),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(rng.next(60))).await;
            kill9(&running);
            let _ = running.child.wait_with_output().await;
            kills += 1;
        }
    }
    assert!(kills >= 2, "only {kills} kills happened");

    // A last, undisturbed run finishes the work.
    let out = case.run(&["once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = &case.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages").await,
        N as i64,
        "seed {seed}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets").await,
        N as i64,
        "seed {seed}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM messages").await,
        N as i64,
        "seed {seed}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NULL")
            .await,
        0,
        "seed {seed}"
    );
    // Every message was moved exactly once: none left, none twice.
    assert!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Processed")
            .await
            .len(),
        N,
        "seed {seed}"
    );
}

/// A complete stack of its own (Dovecot, Postfix, fake Entra on other ports), so that its servers
/// can be stopped without disturbing other tests.
/// Starts `mailintake run` with a private stack's `config` in the background (killed when the
/// handle is dropped); its log goes to a file beside the config.
fn spawn_run(config: &ConfigFile) -> Running {
    let log = config.path.with_file_name("run.log");
    let child = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(&config.path)
        .arg("run")
        .env("DRILL_SECRET", "demo-secret-value")
        .env("RUST_LOG", "mailintake=debug")
        .kill_on_drop(true)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Running { child, log }
}

struct PrivateStack {
    dir: PathBuf,
    vars: std::collections::HashMap<String, String>,
}

impl PrivateStack {
    async fn up() -> PrivateStack {
        let base = 21_000 + (std::process::id() % 400) * 10;
        let dir = PathBuf::from(format!("/tmp/mi-drill-{}", std::process::id()));
        let env = [
            ("MAILSTACK_DIR", dir.display().to_string()),
            ("MAILSTACK_IMAP_PORT", (base + 1).to_string()),
            ("MAILSTACK_IMAPS_PORT", (base + 2).to_string()),
            ("MAILSTACK_SUBMISSION_PORT", (base + 3).to_string()),
            ("MAILSTACK_SUBMISSIONS_PORT", (base + 4).to_string()),
            ("MAILSTACK_LMTP_PORT", (base + 5).to_string()),
            ("MAILSTACK_ENTRA_PORT", (base + 6).to_string()),
            ("MAILSTACK_MX_PORT", (base + 7).to_string()),
            ("MAILSTACK_MILTER_PORT", (base + 8).to_string()),
        ];
        let stack = PrivateStack {
            dir,
            vars: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        stack.script(&["up"]).await;
        stack
    }

    async fn script(&self, args: &[&str]) {
        let out = tokio::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/mailstack.sh"
        ))
        .args(args)
        .envs(&self.vars)
        .output()
        .await
        .expect("mailstack.sh runs");
        assert!(
            out.status.success(),
            "mailstack.sh {args:?}: {}",
            text(&out.stderr)
        );
    }

    fn port(&self, key: &str) -> u16 {
        self.vars[key].parse().unwrap()
    }

    /// Stops Dovecot and ends its IMAP sessions. Dovecot's session processes outlive a stopped
    /// master, so they are ended by pid (from `doveadm who`) as a crashed server would end them.
    async fn stop_dovecot_and_its_sessions(&self) {
        let who = doveadm_at(&self.dir, &["who", "-1"]);
        let pids: Vec<i32> = who
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| w.len() >= 3)
            .filter_map(|w| w.parse().ok())
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}/comm")).exists())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "imap")
            })
            .collect();
        self.script(&["stop", "dovecot"]).await;
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions; these are Dovecot session
            // processes of this private stack, found by `doveadm who`.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// A config for `support@helpdesk.test` on this stack, logging in with the stack's own fake
    /// Entra and its demo app (crates/fake-entra/fake-entra.example.toml; secret in DRILL_SECRET).
    fn config(&self, db: &TestDb, mailbox_keys: &str, imap_keys: &str) -> ConfigFile {
        ConfigFile::write(&format!(
            r#"
[database]
url = "{db}"

[identities.demo]
tenant = "{tenant}"
client_id = "3f7e2c1a-9d4b-4e8f-a6c5-0b1d2e3f4a5b"
client_secret = {{ env = "DRILL_SECRET" }}
authority = "http://127.0.0.1:{entra}/{{tenant}}"

[[mailboxes]]
name = "support"
address = "support@helpdesk.test"
identity = "demo"
{mailbox_keys}

[mailboxes.imap]
host = "localhost"
port = {imaps}
ca_file = "{dir}/tls/ca.pem"
{imap_keys}
"#,
            db = db.url,
            tenant = TENANT_ID,
            entra = self.port("MAILSTACK_ENTRA_PORT"),
            imaps = self.port("MAILSTACK_IMAPS_PORT"),
            dir = self.dir.display(),
        ))
    }

    async fn deliver(&self, raw: &[u8]) {
        // The LMTP client of the shared helpers, pointed at this stack.
        deliver_lmtp_to(
            self.port("MAILSTACK_LMTP_PORT"),
            "support@helpdesk.test",
            "c@customer.test",
            raw,
        )
        .await;
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/mailstack.sh"
        ))
        .args(["down", "--purge"])
        .envs(&self.vars)
        .output();
    }
}

#[tokio::test]
async fn the_worker_rides_out_mail_server_and_identity_provider_restarts() {
    let stack = PrivateStack::up().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let config = stack.config(
        &db,
        "poll_interval = \"10m\"\nmax_new_tickets_per_sender_per_hour = 0",
        "connect_timeout = \"3s\"",
    );
    let running = spawn_run(&config);
    let tickets = |n: i64| {
        let db = &db;
        async move {
            eventually(Duration::from_secs(40), || async {
                db.count_or_zero("SELECT COUNT(*) FROM tickets").await >= n
            })
            .await
        }
    };
    let mut n = 0;
    let mut deliver = async |count: usize| {
        for _ in 0..count {
            let (raw, _) = distinct_mail("support@helpdesk.test", n);
            stack.deliver(&raw).await;
            n += 1;
        }
    };

    deliver(3).await;
    assert!(
        tickets(3).await,
        "no tickets before the drill: {}",
        running.log()
    );

    // The mail server goes away for a while, and comes back.
    stack.stop_dovecot_and_its_sessions().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.script(&["start", "dovecot"]).await;
    deliver(3).await;
    assert!(
        tickets(6).await,
        "no recovery after the Dovecot restart: {}",
        running.log()
    );

    // The identity provider goes away, and the session with it (Dovecot restarts), so logging in
    // again needs the provider: the stack's Dovecot validates every token with it.
    stack.script(&["stop", "entra"]).await;
    stack.stop_dovecot_and_its_sessions().await;
    stack.script(&["start", "dovecot"]).await;
    deliver(2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.script(&["start", "entra"]).await;
    assert!(
        tickets(8).await,
        "no recovery after the fake Entra restart: {}",
        running.log()
    );

    // SIGTERM: a clean stop.
    let (status, log_text) = terminate(running, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {log_text}");
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 8);
    assert_eq!(db.count("SELECT COUNT(*) FROM imap_messages").await, 8);
    // Backoff, not a tight loop: a handful of retries across both ~4 s outages.
    let retries = log_text.matches("will retry").count() + log_text.matches("reconnecting").count();
    assert!(retries >= 1, "the outages were not noticed: {log_text}");
    assert!(
        retries <= 20,
        "{retries} retries: too many for two short outages: {log_text}"
    );
}

#[tokio::test]
async fn an_acknowledgement_waits_out_an_smtp_outage() {
    let stack = PrivateStack::up().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let config = stack.config(
        &db,
        &format!(
            "smtp = {{ host = \"localhost\", port = {}, ca_file = \"{}/tls/ca.pem\", retry_delay = \"1s\", timeout = \"5s\" }}\n{}",
            stack.port("MAILSTACK_SUBMISSION_PORT"),
            stack.dir.display(),
            ack_keys_with("")
        ),
        "",
    );
    let once = || {
        mailintake(
            &config.path,
            &["once"],
            &[("DRILL_SECRET", "demo-secret-value")],
        )
    };
    // The first connection: mail from before it would not be acknowledged.
    assert_ok(&once().await);
    next_second().await;

    stack.script(&["stop", "postfix"]).await;
    let customer = format!("{}@customer.test", unique("outage"));
    let (raw, _) = distinct_mail("support@helpdesk.test", 1);
    let raw = text(&raw).replace("customer1@customer.test", &customer);
    deliver_lmtp_to(
        stack.port("MAILSTACK_LMTP_PORT"),
        "support@helpdesk.test",
        &customer,
        raw.as_bytes(),
    )
    .await;
    let stdout = assert_ok(&once().await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");
    assert!(
        stdout.contains("0 acknowledgement(s) sent, 1 to retry"),
        "{stdout}"
    );

    stack.script(&["start", "postfix"]).await;
    let sent = eventually(Duration::from_secs(30), || async {
        let out = once().await;
        out.status.success() && text(&out.stdout).contains("1 acknowledgement(s) sent")
    })
    .await;
    assert!(
        sent,
        "the acknowledgement was not sent after the SMTP server came back"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND attempts >= 2")
            .await,
        1
    );
    let arrived = eventually(Duration::from_secs(20), || async {
        doveadm_at(
            &stack.dir,
            &["mailbox", "status", "-u", &customer, "messages", "INBOX"],
        )
        .contains("messages=1")
    })
    .await;
    assert!(arrived, "the acknowledgement did not reach {customer}");
}

#[tokio::test]
async fn readyz_turns_unready_while_dovecot_is_down_and_ready_after() {
    use crate::ops::{free_port, get_until};
    let stack = PrivateStack::up().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let config = stack.config(
        &db,
        "poll_interval = \"2s\"",
        &format!("connect_timeout = \"3s\"\n\n[http]\nlisten = \"127.0.0.1:{port}\""),
    );
    let running = spawn_run(&config);
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let is_ready = |status: u16, body: &str| status == 200 && body.contains(r#""state":"ok""#);

    let (ready, _, body) = get_until(&readyz, None, is_ready).await;
    assert!(ready, "never ready: {body}\n{}", running.log());

    stack.stop_dovecot_and_its_sessions().await;
    let (unready, _, body) = get_until(&readyz, None, |status, _| status == 503).await;
    assert!(
        unready,
        "stayed ready without Dovecot: {body}\n{}",
        running.log()
    );
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "unready");
    assert_eq!(answer["database"]["ok"], true, "{body}");
    assert_eq!(answer["mailboxes"][0]["state"], "retrying", "{body}");

    stack.script(&["start", "dovecot"]).await;
    let (ready, _, body) = get_until(&readyz, None, is_ready).await;
    assert!(
        ready,
        "not ready again after Dovecot came back: {body}\n{}",
        running.log()
    );

    let (status, log_text) = terminate(running, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {log_text}");
}

#[tokio::test]
async fn a_token_endpoint_outage_is_waited_out_with_backoff_and_retry_after() {
    // Tokens that live 6 s: the session is renewed every ~5 s, so it needs a new token during
    // any outage longer than that.
    let case = Case::with_token_lifetime(
        Backend::Sqlite,
        "dispose = \"move\"\nmax_new_tickets_per_sender_per_hour = 0\npoll_interval = \"10m\"",
        "implicit",
        Duration::from_secs(6),
    )
    .await;
    let running = case.spawn_run();
    let mut n = 0;
    let mut deliver = async |count: usize| {
        for _ in 0..count {
            let (raw, _) = distinct_mail(&case.mailbox, n);
            deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
            n += 1;
        }
    };
    deliver(2).await;
    assert!(
        case.wait_for_count("SELECT COUNT(*) FROM tickets", 2, Duration::from_secs(30))
            .await,
        "no tickets before the drill: {}",
        running.log()
    );

    // Entra answers 500 for 8 s, then throttles with 429 and Retry-After: 2 for 8 s.
    const RETRY_AFTER: Duration = Duration::from_secs(2);
    let outage_start = std::time::SystemTime::now();
    let fake = &case.entra.fake;
    fake.inject_outage(fake_entra::Fault::Status(500), Duration::from_secs(8));
    fake.inject_outage(
        fake_entra::Fault::TooManyRequests {
            retry_after_secs: RETRY_AFTER.as_secs(),
        },
        Duration::from_secs(8),
    );
    let outage_end = outage_start + Duration::from_secs(16);
    let faulted = || {
        fake.requests()
            .iter()
            .any(|r| matches!(r.outcome, fake_entra::RequestOutcome::Fault(_)))
    };
    assert!(
        eventually(Duration::from_secs(10), || async { faulted() }).await,
        "the worker asked for no token during the outage: {}",
        running.log()
    );
    // Mail that comes in while the worker cannot log in.
    deliver(3).await;
    assert!(
        case.wait_for_count("SELECT COUNT(*) FROM tickets", 5, Duration::from_secs(60))
            .await,
        "no recovery after the outage: {}",
        running.log()
    );
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}: {log}");
    let db = &case.db;
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 5);
    assert_eq!(db.count("SELECT COUNT(*) FROM messages").await, 5);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NOT NULL")
            .await,
        5
    );

    // The token requests from the outage on, in order: spaced by the backoff (at least its 1 s
    // minimum) after a 500, by Retry-After after a 429; a bounded number of them; and a token
    // again soon after the outage ended.
    let mut requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.at >= outage_start)
        .collect();
    requests.sort_by_key(|r| r.at);
    let is_500 = |r: &fake_entra::TokenRequestRecord| r.status == 500;
    let is_429 = |r: &fake_entra::TokenRequestRecord| r.status == 429;
    let n_500 = requests.iter().filter(|r| is_500(r)).count();
    let n_429 = requests.iter().filter(|r| is_429(r)).count();
    let summary = requests
        .iter()
        .map(|r| {
            format!(
                "+{:.2}s {}",
                r.at.duration_since(outage_start).unwrap().as_secs_f64(),
                r.status
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("token requests from the outage on: {summary}");
    assert!(
        n_500 >= 1 && n_429 >= 1,
        "both kinds of failure were met: {summary}"
    );
    // 8 s of 500s at one request per second at most; 8 s of 429s at one per 2 s at most.
    assert!(n_500 <= 8, "{n_500} requests answered 500: {summary}");
    assert!(n_429 <= 5, "{n_429} requests answered 429: {summary}");
    let slack = Duration::from_millis(100);
    for pair in requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap_or_default();
        if is_500(&pair[0]) {
            assert!(
                gap + slack >= Duration::from_secs(1),
                "a retry {gap:?} after a 500: {summary}"
            );
        }
        if is_429(&pair[0]) {
            assert!(
                gap + slack >= RETRY_AFTER,
                "a retry {gap:?} after a 429 with Retry-After {RETRY_AFTER:?}: {summary}"
            );
        }
    }
    let recovered = requests
        .iter()
        .find(|r| r.at >= outage_end && r.status == 200)
        .unwrap_or_else(|| panic!("no token after the outage: {summary}"));
    assert!(
        recovered.at.duration_since(outage_end).unwrap() <= Duration::from_secs(10),
        "the first token after the outage came late: {summary}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.at < outage_end || r.status == 200),
        "{summary}"
    );
}
