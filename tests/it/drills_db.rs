//! Fault drills of the database under a running worker (issue 7, item 4): a private PostgreSQL
//! cluster stopped and started again, an SQLite database whose filesystem fills up, and one that
//! another process keeps locked. Each time the worker must say what is wrong, back off, commit
//! nothing partial, dispose of nothing in IMAP before its outcome is committed, and afterwards
//! have every message exactly once.

use std::ffi::CString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;

use crate::helpers::*;

/// The worker's mailbox keys for the drills: every message its own ticket, moved when done, no
/// polling (IDLE wakes the worker).
const KEYS: &str =
    "dispose = \"move\"\nmax_new_tickets_per_sender_per_hour = 0\npoll_interval = \"10m\"";

/// Messages whose outcome is committed and whose IMAP disposition is done and recorded: the end
/// of a message's way through the worker.
const DISPOSED: &str = "SELECT COUNT(*) FROM imap_messages WHERE disposed_at IS NOT NULL";

/// A customer's message with a unique Message-ID and about `body_bytes` of text.
fn customer_mail(to: &str, n: usize, body_bytes: usize) -> Vec<u8> {
    let id = format!("{}@customer.test", unique(&format!("dbdrill{n}-")));
    let line = "A line of the customer's report, long enough to take some room.\r\n";
    let body = line.repeat(1 + body_bytes / line.len());
    format!(
        "From: Customer {n} <customer{n}@customer.test>\r\nTo: {to}\r\nSubject: Database drill {n}\r\n\
         Date: Tue, 01 Dec 2026 08:00:00 +0000\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
    .into_bytes()
}

async fn deliver(case: &Case, from: usize, count: usize, body_bytes: usize) {
    for n in from..from + count {
        let raw = customer_mail(&case.mailbox, n, body_bytes);
        deliver_lmtp(&case.mailbox, "customer@customer.test", &raw).await;
    }
}

/// Waits (at most `limit`) until `running` has logged `needle`.
async fn logged(running: &Running, needle: &str, limit: Duration) -> bool {
    eventually(limit, || async { running.log().contains(needle) }).await
}

/// Every one of `n` messages exactly once and whole: a ticket with its message and the message's
/// `imap_messages` row, disposed of; nothing else.
async fn assert_each_message_once_and_whole(db: &TestDb, n: i64, log: &str) {
    for (sql, expected) in [
        ("SELECT COUNT(*) FROM tickets", n),
        ("SELECT COUNT(*) FROM messages", n),
        ("SELECT COUNT(*) FROM imap_messages", n),
        ("SELECT COUNT(DISTINCT message_id) FROM imap_messages", n),
        (
            "SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ticket' AND disposed_at IS NOT NULL",
            n,
        ),
        (
            "SELECT COUNT(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.ticket_id = t.id)",
            0,
        ),
        (
            "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS \
             (SELECT 1 FROM imap_messages i WHERE i.message_row_id = m.id AND i.ticket_id = m.ticket_id)",
            0,
        ),
    ] {
        assert_eq!(db.count(sql).await, expected, "{sql}\n{log}");
    }
}

/// No message of the failed period was disposed of: all of them are still in the inbox, and the
/// earlier ones are in Processed.
async fn assert_nothing_disposed_early(case: &Case, in_inbox: usize, processed: usize) {
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "INBOX")
            .await
            .len(),
        in_inbox,
        "messages without a committed outcome must stay in the inbox"
    );
    assert_eq!(
        folder_contents(&case.entra, &case.mailbox, "Processed")
            .await
            .len(),
        processed
    );
}

// --- SQLite: another process holds the database ---

#[tokio::test]
async fn sqlite_locked_by_another_process_is_named_retried_and_ridden_out() {
    let case = Case::new(Backend::Sqlite, KEYS, "implicit").await;
    let running = case.spawn_run();
    deliver(&case, 0, 2, 500).await;
    assert!(
        case.wait_for_count("SELECT COUNT(*) FROM tickets", 2, Duration::from_secs(30))
            .await,
        "no tickets before the drill: {}",
        running.log()
    );

    // Another process takes the write lock and keeps it past the worker's busy timeout (10 s).
    let mut holder = sqlx::AnyConnection::connect(&format!("{}?mode=rw", case.db.url))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let locked_at = tokio::time::Instant::now();
    deliver(&case, 2, 3, 500).await;
    let named = logged(
        &running,
        "another process holds a lock on the SQLite database",
        Duration::from_secs(40),
    )
    .await;
    assert!(
        named,
        "the lock was not named in the log: {}",
        running.log()
    );
    assert!(running.log().contains("fuser"), "{}", running.log());
    // The fault lasts longer than the worker's busy timeout (10 s): it must keep retrying, spaced.
    tokio::time::sleep_until(locked_at + Duration::from_secs(12)).await;
    // While the lock is held nothing of the new mail is committed, and nothing is disposed of.
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_nothing_disposed_early(&case, 3, 2).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    assert!(
        case.wait_for_count(DISPOSED, 5, Duration::from_secs(60))
            .await,
        "no recovery after the lock was released: {}",
        running.log()
    );
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}: {log}");
    assert_each_message_once_and_whole(&case.db, 5, &log).await;
    assert_nothing_disposed_early(&case, 0, 5).await;
    // Backoff, not a tight loop: every attempt waits out the busy timeout (10 s; the batch
    // begins with BEGIN IMMEDIATE), then the worker waits 1-2 s, 2-4 s, ... before the next.
    let retries = log.matches("will retry").count();
    assert!((1..=4).contains(&retries), "{retries} retries: {log}");

    // `mailintake once` (which cannot run beside `run`: one worker per SQLite database) says the
    // same on its standard error when another process holds the lock.
    let mut holder = sqlx::AnyConnection::connect(&format!("{}?mode=rw", case.db.url))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    deliver(&case, 5, 1, 500).await;
    let once = case.run(&["once"]).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    assert!(!once.status.success());
    let stderr = text(&once.stderr);
    assert!(
        stderr.contains("FAILED") && stderr.contains("fix: another process holds a lock"),
        "{stderr}"
    );
}

// --- SQLite: the disk is full ---

/// A small tmpfs of its own (needs root, as the suite runs), unmounted and removed on drop.
struct SmallFilesystem {
    dir: PathBuf,
}

impl SmallFilesystem {
    fn mount(size: &str) -> SmallFilesystem {
        let dir = std::env::temp_dir().join(unique("mi-smallfs-"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} failed (this drill needs root, as scripts/test.sh runs the suite): {}",
            dir.display(),
            text(&out.stderr)
        );
        SmallFilesystem { dir }
    }

    /// Writes a file until the filesystem has no room left; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 16, 4096, 512, 1] {
            let block = vec![0u8; chunk];
            while file.write_all(&block).is_ok() {}
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        // Lazy: a worker killed a moment ago may still hold its files open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[tokio::test]
async fn sqlite_on_a_full_disk_is_named_retried_and_resumed_when_space_is_freed() {
    let fs = SmallFilesystem::mount("16m");
    let db_path = fs.dir.join("mailintake.db");
    let db = TestDb::at(format!("sqlite://{}", db_path.display()), Backend::Sqlite);
    let case = Case::with_db(db, KEYS, "implicit").await;
    let running = case.spawn_run();
    deliver(&case, 0, 2, 500).await;
    assert!(
        case.wait_for_count("SELECT COUNT(*) FROM tickets", 2, Duration::from_secs(30))
            .await,
        "no tickets before the drill: {}",
        running.log()
    );

    // The disk fills up; then mail arrives that needs room (bodies larger than the WAL so far).
    let filler = fs.fill();
    let filled_at = tokio::time::Instant::now();
    deliver(&case, 2, 4, 300_000).await;
    let named = logged(
        &running,
        &format!(
            "fix: the filesystem that holds the SQLite database {}",
            db_path.display()
        ),
        Duration::from_secs(40),
    )
    .await;
    assert!(named, "the full disk was not named: {}", running.log());
    assert!(running.log().contains("df -h"), "{}", running.log());
    // The disk stays full for a while: the worker must keep retrying, spaced by its backoff.
    tokio::time::sleep_until(filled_at + Duration::from_secs(8)).await;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    assert_nothing_disposed_early(&case, 4, 2).await;

    std::fs::remove_file(&filler).unwrap();
    if !case
        .wait_for_count(DISPOSED, 6, Duration::from_secs(60))
        .await
    {
        let mut state = String::new();
        for sql in [
            "SELECT COUNT(*) FROM tickets",
            "SELECT COUNT(*) FROM imap_messages",
            DISPOSED,
            "SELECT MAX(last_uid) FROM mailbox_state",
        ] {
            state += &format!("{sql} = {}\n", case.db.count_or_zero(sql).await);
        }
        for folder in ["INBOX", "Processed"] {
            let n = folder_contents(&case.entra, &case.mailbox, folder)
                .await
                .len();
            state += &format!("{folder}: {n} message(s)\n");
        }
        panic!(
            "no recovery after space was freed:\n{state}{}",
            running.log()
        );
    }
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}: {log}");
    assert_each_message_once_and_whole(&case.db, 6, &log).await;
    assert_nothing_disposed_early(&case, 0, 6).await;
    let retries = log.matches("will retry").count();
    assert!((2..=6).contains(&retries), "{retries} retries: {log}");
}

// --- PostgreSQL: the server stops and starts again ---

/// A PostgreSQL cluster of its own (initdb of the installed PostgreSQL) on a free loopback port,
/// so that it can be stopped without disturbing the shared server on 5432. As root, every
/// PostgreSQL command runs as the `postgres` user (initdb refuses root). Stopped and removed on
/// drop.
struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        bins.sort_by_key(|b| {
            b.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
        });
        let bin = bins.pop().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install the Debian \
                 package `postgresql` (scripts/test.sh does)"
            )
        });
        // SAFETY: geteuid(2) has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(unique("mi-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let name = CString::new("postgres").unwrap();
            // SAFETY: getpwnam(3) with a valid C string; the result is read at once.
            let user = unsafe { libc::getpwnam(name.as_ptr()) };
            assert!(
                !user.is_null(),
                "running as root, this drill needs the `postgres` user of the Debian package"
            );
            // SAFETY: `user` is a valid passwd entry (checked above).
            let (uid, gid) = unsafe { ((*user).pw_uid, (*user).pw_gid) };
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let pg = PrivatePostgres {
            dir,
            bin,
            port,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg.start_server();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn run(&self, tool: &str, args: &[&str]) -> String {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c log_connections=on -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &self.log_path().display().to_string(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// A crash-like stop: no shutdown checkpoint, every session cut.
    fn stop_server(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self, application_name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?application_name={application_name}",
            self.port
        )
    }

    /// Connections of `application_name` the server accepted, from its log (log_connections).
    fn connections_of(&self, application_name: &str) -> usize {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("connection authorized"))
            .filter(|l| l.contains(&format!("application_name={application_name}")))
            .count()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn postgres_stopped_and_started_mid_run_loses_and_duplicates_nothing() {
    let pg = PrivatePostgres::start();
    // The worker and the test's own checks connect under different names, so the server's log
    // tells the worker's connections apart.
    let case = Case::with_db(
        TestDb::at(pg.url("mailintake-drill"), Backend::Postgres),
        KEYS,
        "implicit",
    )
    .await;
    let check = TestDb::at(pg.url("drill-check"), Backend::Postgres);
    let disposed = |n: i64| {
        let check = &check;
        async move {
            eventually(Duration::from_secs(60), || async {
                check.count_or_zero(DISPOSED).await >= n
            })
            .await
        }
    };
    let running = case.spawn_run();
    deliver(&case, 0, 3, 500).await;
    assert!(
        disposed(3).await,
        "no tickets before the drill: {}",
        running.log()
    );

    // The server goes away while mail keeps coming in; the worker notices when it tries to write.
    pg.stop_server();
    deliver(&case, 3, 3, 500).await;
    assert!(
        logged(&running, "will retry", Duration::from_secs(60)).await,
        "the outage was not noticed: {}",
        running.log()
    );
    assert!(
        running
            .log()
            .contains("fix: the PostgreSQL server 127.0.0.1:"),
        "the outage was not explained: {}",
        running.log()
    );
    assert_nothing_disposed_early(&case, 3, 3).await;
    let before_restart = pg.connections_of("mailintake-drill");
    pg.start_server();
    assert!(
        disposed(6).await,
        "no recovery after PostgreSQL came back: {}",
        running.log()
    );
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}: {log}");
    assert_each_message_once_and_whole(&check, 6, &log).await;
    assert_nothing_disposed_early(&case, 0, 6).await;

    // No hammering. While the server is down, sqlx's pool retries a refused connection with an
    // exponential backoff inside one 30 s acquire; the worker then backs off per failed sweep.
    let retries = log.matches("will retry").count();
    assert!((1..=4).contains(&retries), "{retries} retries: {log}");
    // After the restart the worker opens a few connections (its pool holds at most 8), not one
    // per attempt.
    let reconnects = pg.connections_of("mailintake-drill") - before_restart;
    assert!(
        (1..=10).contains(&reconnects),
        "{reconnects} connections of the worker after the restart"
    );
}

/// A helpdesk session holds a ticket's row lock (a transaction left open) while a follow-up to
/// that ticket comes in: the worker's batch must not freeze behind it. With `lock_timeout` the
/// batch ends in 55P03, is retried with backoff, `/readyz` and `/healthz` show the wait with its
/// fix line, nothing is set aside; once the lock is released the follow-up comes in.
#[tokio::test]
async fn a_ticket_row_locked_by_the_helpdesk_makes_the_mailbox_wait_visibly_not_freeze() {
    let case = Case::new(Backend::Postgres, "poll_interval = \"1s\"", "implicit").await;
    let text_config = std::fs::read_to_string(&case.config.path).unwrap();
    let text_config = text_config.replacen(
        &format!("url = \"{}\"", case.db.url),
        &format!("url = \"{}\"\nlock_timeout = \"1s\"", case.db.url),
        1,
    );
    std::fs::write(&case.config.path, text_config).unwrap();
    let base = crate::ops::enable_http(&case, "");

    let (first, first_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "customer@customer.test", &first).await;
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);

    // The helpdesk application: a transaction that locks the ticket and stays open.
    let mut helpdesk = sqlx::AnyConnection::connect(&case.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut helpdesk).await.unwrap();
    sqlx::query("SELECT id FROM tickets FOR UPDATE")
        .fetch_all(&mut helpdesk)
        .await
        .unwrap();

    let reply_id = format!("{}@customer.test", unique("reply"));
    let reply = format!(
        "From: Alice Example <alice@customer.test>\r\nTo: {mailbox}\r\nSubject: Re: the printer\r\nMessage-ID: <{reply_id}>\r\nIn-Reply-To: <{first_id}>\r\nReferences: <{first_id}>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nStill broken.\r\n",
        mailbox = case.mailbox
    );
    deliver_lmtp(&case.mailbox, "customer@customer.test", reply.as_bytes()).await;
    let running = case.spawn_run();

    let (waited, _, health) = crate::ops::get_until(&format!("{base}/healthz"), None, |_, body| {
        body.contains("lock_timeout")
    })
    .await;
    assert!(waited, "the wait never showed: {health}\n{}", running.log());
    let (status, ready) = crate::ops::get(&format!("{base}/readyz"), None).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("lock_timeout"), "{ready}");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM quarantine").await, 0);

    sqlx::query("COMMIT").execute(&mut helpdesk).await.unwrap();
    assert!(
        case.wait_for_count(
            &format!("SELECT COUNT(*) FROM messages WHERE message_id = '{reply_id}' AND ticket_id IS NOT NULL"),
            1,
            Duration::from_secs(60)
        )
        .await,
        "the follow-up never came in: {}",
        running.log()
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}
