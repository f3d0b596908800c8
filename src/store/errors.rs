//! Whose trouble a failed database write is ([`FailureKind`]: the data's, which quarantines the
//! one message, or the infrastructure's, which is retried), and what an operator should do about
//! it. sqlx passes on SQLite's result codes with SQLite's own words ("database or disk is full",
//! "database is locked"), which say neither which file nor what to change; this module adds a
//! `fix:` line that does, in the form the other layers use (the status page shows it beside the
//! error).

use std::error::Error;

use super::{Backend, Store, StoreError};

impl Store {
    /// `error`'s text, followed by a `fix:` line when a database error in its chain has a known
    /// cause (disk full, locked by another process, read-only, I/O error, damaged file, …).
    pub fn explain_failure(&self, error: &(dyn Error + 'static)) -> String {
        let text = crate::config::redact_credentials(&error.to_string());
        let url = self.pool.connect_options().database_url.clone();
        let hint = match self.backend {
            Backend::Sqlite => sqlx_error_in(error).and_then(|e| sqlite_hint(e, url.path())),
            Backend::Postgres => sqlx_error_in(error).and_then(|e| postgres_hint(e, &url)),
        };
        match hint {
            Some(hint) => format!("{text}\n  fix: {hint}"),
            None => text,
        }
    }
}

/// Whose trouble a failed statement is: the data's (the message being written) or the
/// infrastructure's. The one place that tells them apart; the batch record asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The database refused the values themselves: the statement fails the same way whenever
    /// this message is written, and never because of another. PostgreSQL: SQLSTATE class 22
    /// (data exception: 22021 a NUL byte or bad UTF-8, 22P05 a character the database encoding
    /// lacks, 22001 too long for the column, …) and 54000 (program limit exceeded: an index row
    /// above btree's 2,704 bytes, a value above 1 GB). SQLite: SQLITE_TOOBIG (a string or blob
    /// above SQLITE_MAX_LENGTH) and SQLITE_MISMATCH (a datatype mismatch).
    Data,
    /// Everything else: locks and lock timeouts (55P03, SQLITE_BUSY/LOCKED), statement timeouts
    /// and cancels (57014), serialization failures and deadlocks (40001, 40P01), lost
    /// connections (08xxx, I/O errors, pool timeouts), a full disk, a server shutting down, and
    /// any error not known to be the data's (constraint violations, which mailintake's own
    /// statements prevent, count here too). Retried with backoff; never held against a message.
    Infrastructure,
}

impl StoreError {
    /// See [`FailureKind`].
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            StoreError::Sql(sqlx::Error::Database(db)) => match db.code() {
                Some(code) if is_sqlite(db.as_ref(), &code) => {
                    sqlite_failure_kind(code.parse().unwrap_or(0))
                }
                Some(code) => postgres_failure_kind(&code),
                None => FailureKind::Infrastructure,
            },
            _ => FailureKind::Infrastructure,
        }
    }

    /// For a data error: the database's own words with its code, for the quarantine row.
    pub fn data_refusal(&self) -> Option<String> {
        if self.failure_kind() != FailureKind::Data {
            return None;
        }
        let StoreError::Sql(sqlx::Error::Database(db)) = self else {
            return None;
        };
        let code = db.code().unwrap_or_default();
        let label = if is_sqlite(db.as_ref(), &code) {
            format!("SQLite result code {code}")
        } else {
            format!("SQLSTATE {code}")
        };
        Some(format!("{label}: {}", db.message()))
    }
}

/// Whether a database error is SQLite's (its codes are result codes of at most 4 digits;
/// PostgreSQL's SQLSTATEs have exactly 5 characters).
fn is_sqlite(db: &dyn sqlx::error::DatabaseError, code: &str) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() || code.len() < 5
}

/// A PostgreSQL SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
fn postgres_failure_kind(sqlstate: &str) -> FailureKind {
    if sqlstate.starts_with("22") || sqlstate == "54000" {
        FailureKind::Data
    } else {
        FailureKind::Infrastructure
    }
}

const SQLITE_TOOBIG: i32 = 18;
const SQLITE_MISMATCH: i32 = 20;

/// An SQLite result code, primary or extended (https://sqlite.org/rescode.html).
fn sqlite_failure_kind(code: i32) -> FailureKind {
    match code & 0xff {
        SQLITE_TOOBIG | SQLITE_MISMATCH => FailureKind::Data,
        _ => FailureKind::Infrastructure,
    }
}

/// Whether a connection handed back to the pool may be used again. A failed write can leave it
/// inside a transaction that sqlx no longer tracks (SQLite rolls a transaction back by itself
/// after SQLITE_FULL or SQLITE_IOERR; sqlx's ROLLBACK then fails and its transaction depth
/// stays up): such a connection would run the next batch as a savepoint of a dead transaction.
/// It is closed instead, and the pool opens a fresh one.
pub(super) async fn release_check(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!("a database connection was handed back inside a transaction; closing it");
        return Ok(false);
    }
    Ok(true)
}

/// The first `sqlx::Error` in `error`'s source chain (itself included).
fn sqlx_error_in<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a sqlx::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<sqlx::Error>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The operator's fix for an SQLite failure on the database file at `path`, when its cause is known.
fn sqlite_hint(error: &sqlx::Error, path: &str) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => {
            // sqlx reports the extended result code; its low byte is the primary one.
            let code: i32 = db.code()?.parse().ok()?;
            sqlite_code_hint(code & 0xff, path)
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            sqlite_code_hint(SQLITE_FULL, path)
        }
        sqlx::Error::PoolTimedOut => Some(format!(
            "no connection to the SQLite database {path} became free in time: another process may \
             hold the database locked (see `fuser {path}`), or the disk is very slow"
        )),
        _ => None,
    }
}

/// The operator's fix for a PostgreSQL failure, when its cause is known.
fn postgres_hint(error: &sqlx::Error, url: &url::Url) -> Option<String> {
    let server = format!(
        "{}:{}",
        url.host_str().unwrap_or("localhost"),
        url.port().unwrap_or(5432)
    );
    let retrying = "mailintake keeps retrying with backoff and goes on by itself once it answers";
    let refused = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        )
    };
    let hint = match error {
        sqlx::Error::PoolTimedOut => format!(
            "the PostgreSQL server {server} did not accept a connection within 30 s: check that it \
             runs and is reachable from here (`pg_isready -h {host} -p {port}`); {retrying}",
            host = url.host_str().unwrap_or("localhost"),
            port = url.port().unwrap_or(5432),
        ),
        sqlx::Error::Io(e) if refused(e) => format!(
            "the connection to the PostgreSQL server {server} was refused or cut: check that it \
             runs (`pg_isready -h {host} -p {port}`); {retrying}",
            host = url.host_str().unwrap_or("localhost"),
            port = url.port().unwrap_or(5432),
        ),
        sqlx::Error::Database(db) => match db.code()?.as_ref() {
            "53100" => format!(
                "the PostgreSQL server {server} is out of disk space: free space in its data \
                 directory; {retrying}"
            ),
            "53300" => format!(
                "the PostgreSQL server {server} has no connection slot left (max_connections): \
                 raise it or end idle sessions; {retrying}"
            ),
            "57P01" | "57P02" | "57P03" => format!(
                "the PostgreSQL server {server} is shutting down, restarting or starting up; \
                 {retrying}"
            ),
            "55P03" => format!(
                "another session (the helpdesk application?) holds a lock on a row this batch \
                 writes, for longer than database.lock_timeout: find it in pg_stat_activity \
                 (state 'idle in transaction'); nothing was written and no mail was set aside; \
                 {retrying}"
            ),
            "57014" => format!(
                "a statement ran longer than database.statement_timeout (a lock held elsewhere, or \
                 an overloaded server {server}): nothing was written and no mail was set aside; \
                 {retrying}"
            ),
            _ => return None,
        },
        _ => return None,
    };
    Some(hint)
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// What to do about an SQLite primary result code (https://sqlite.org/rescode.html).
fn sqlite_code_hint(primary: i32, path: &str) -> Option<String> {
    let folder = std::path::Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ".".into());
    let retrying = "mailintake keeps retrying with backoff and goes on by itself once this is \
                    fixed; nothing of the failed batch was committed or disposed of in IMAP";
    let hint = match primary {
        SQLITE_FULL => format!(
            "the filesystem that holds the SQLite database {path} (and its -wal file) is full: \
             free space there (`df -h {folder}`) or move the database to a larger filesystem \
             (database.url); {retrying}"
        ),
        SQLITE_BUSY | SQLITE_LOCKED => format!(
            "another process holds a lock on the SQLite database {path} (its write transaction \
             did not end within the busy timeout of 10 s, or conflicted with this one), e.g. an \
             sqlite3 shell, a backup or an application with an open write transaction: find it \
             with `fuser {path}` and end its transaction; {retrying}"
        ),
        SQLITE_READONLY => format!(
            "the SQLite database {path} cannot be written by this process: check the ownership \
             and permissions of the file, its -wal and -shm files and the folder {folder}, and \
             that the filesystem is mounted read-write; {retrying}"
        ),
        SQLITE_IOERR => format!(
            "the operating system failed to read or write the SQLite database {path}: check the \
             disk (the kernel log, `dmesg`) and that {folder} is on a local filesystem (network \
             filesystems are not supported) with free space; {retrying}"
        ),
        SQLITE_CORRUPT | SQLITE_NOTADB => format!(
            "the SQLite database {path} is damaged or is not an SQLite database: stop mailintake, \
             check it with `sqlite3 {path} 'PRAGMA integrity_check'` and restore it from a backup"
        ),
        SQLITE_CANTOPEN => format!(
            "the SQLite database {path} cannot be opened: the folder {folder} must exist and be \
             writable by this process (SQLite creates the -wal and -shm files beside the database)"
        ),
        _ => return None,
    };
    Some(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_whose_transaction_sqlite_ended_by_itself_is_not_reused() {
        use sqlx::{Acquire, Connection};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailintake.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        // After SQLITE_FULL or SQLITE_IOERR, SQLite may roll the whole transaction back by itself
        // (https://sqlite.org/lang_transaction.html, "Response To Errors Within A Transaction").
        // sqlx does not see that: its ROLLBACK on drop then fails, and its transaction depth
        // stays up. The ROLLBACK statement below stands for SQLite's own.
        for _ in 0..4 {
            let mut tx = store.pool.begin().await.unwrap();
            let mut savepoint = tx.begin().await.unwrap();
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut *savepoint)
                .await
                .unwrap();
            drop(savepoint);
            drop(tx);
        }
        // A connection still counted inside a transaction would run the next batch as a
        // savepoint; the pool must have closed every such connection.
        let mut held = Vec::new();
        for _ in 0..4 {
            let conn = store.pool.acquire().await.unwrap();
            assert!(!conn.is_in_transaction());
            held.push(conn);
        }
        drop(held);
        let mut tx = store.pool.begin().await.unwrap();
        sqlx::query("CREATE TABLE visible (x INTEGER)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut other =
            sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=ro", path.display()))
                .await
                .unwrap();
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sqlite_master WHERE name = 'visible'")
                .fetch_one(&mut other)
                .await
                .unwrap();
        assert_eq!(n, 1, "the commit after the failures was not committed");
    }

    #[tokio::test]
    async fn a_full_disk_and_a_lock_are_named_with_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailintake.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();

        // A real SQLITE_FULL: the database may not grow beyond its current page count.
        let mut conn = store.pool.acquire().await.unwrap();
        let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {pages}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        let full = sqlx::query("CREATE TABLE filler AS SELECT randomblob(1000000) AS b")
            .execute(&mut *conn)
            .await
            .unwrap_err();
        let explained = store.explain_failure(&crate::store::StoreError::from(full));
        let path = path.display().to_string();
        assert!(explained.contains("disk is full"), "{explained}");
        assert!(
            explained.contains(&format!(
                "fix: the filesystem that holds the SQLite database {path}"
            )),
            "{explained}"
        );
        assert!(explained.contains("df -h"), "{explained}");
        drop(conn);

        for code in [5, 6, 517] {
            let hint = sqlite_code_hint(code & 0xff, &path).unwrap();
            assert!(hint.contains("another process holds a lock"), "{hint}");
            assert!(hint.contains(&path), "{hint}");
        }
        assert!(sqlite_code_hint(8, &path).unwrap().contains("read-write"));
        assert!(
            sqlite_code_hint(19, &path).is_none(),
            "a constraint has no fix"
        );
        // Errors without a database cause stay as they are.
        let plain = std::io::Error::other("something else");
        assert_eq!(store.explain_failure(&plain), "something else");
    }

    #[test]
    fn only_data_errors_count_against_a_message() {
        use FailureKind::{Data, Infrastructure};
        for (sqlstate, kind) in [
            ("22021", Data),           // a NUL byte / invalid UTF-8
            ("22P05", Data),           // no such character in the database encoding
            ("22001", Data),           // string data right truncation
            ("22003", Data),           // numeric value out of range
            ("22P02", Data),           // invalid text representation
            ("54000", Data),           // index row above btree's limit, value above 1 GB
            ("55P03", Infrastructure), // lock not available (lock_timeout)
            ("57014", Infrastructure), // statement timeout, query cancelled
            ("40001", Infrastructure), // serialization failure
            ("40P01", Infrastructure), // deadlock
            ("08000", Infrastructure), // connection exception
            ("08006", Infrastructure), // connection failure
            ("08P01", Infrastructure), // protocol violation
            ("53100", Infrastructure), // disk full
            ("53300", Infrastructure), // too many connections
            ("57P01", Infrastructure), // admin shutdown
            ("23505", Infrastructure), // unique violation (prevented by ON CONFLICT)
            ("23514", Infrastructure), // check violation: our own values
            ("54001", Infrastructure), // statement too complex: our statement, not the data
            ("XX000", Infrastructure), // internal error
        ] {
            assert_eq!(postgres_failure_kind(sqlstate), kind, "SQLSTATE {sqlstate}");
        }
        for (code, kind) in [
            (18, Data),             // SQLITE_TOOBIG
            (20, Data),             // SQLITE_MISMATCH
            (5, Infrastructure),    // SQLITE_BUSY
            (517, Infrastructure),  // SQLITE_BUSY_SNAPSHOT
            (6, Infrastructure),    // SQLITE_LOCKED
            (10, Infrastructure),   // SQLITE_IOERR
            (3338, Infrastructure), // SQLITE_IOERR_WRITE... (10 | 13 << 8)
            (13, Infrastructure),   // SQLITE_FULL
            (8, Infrastructure),    // SQLITE_READONLY
            (11, Infrastructure),   // SQLITE_CORRUPT
            (19, Infrastructure),   // SQLITE_CONSTRAINT
            (2067, Infrastructure), // SQLITE_CONSTRAINT_UNIQUE
        ] {
            assert_eq!(sqlite_failure_kind(code), kind, "SQLite result code {code}");
        }
        // Errors without a database code are never the data's.
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert_eq!(StoreError::Sql(error).failure_kind(), Infrastructure);
        }
        assert_eq!(StoreError::Conflict.failure_kind(), Infrastructure);
    }

    #[tokio::test]
    async fn a_real_sqlite_toobig_is_a_data_error_and_a_constraint_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/m.db", dir.path().display()))
            .await
            .unwrap();
        let Err(too_big) = sqlx::query("SELECT zeroblob(2000000000)")
            .fetch_one(&store.pool)
            .await
        else {
            panic!("SQLite made a 2 GB blob");
        };
        let too_big = StoreError::from(too_big);
        assert_eq!(too_big.failure_kind(), FailureKind::Data);
        let refusal = too_big.data_refusal().unwrap();
        assert!(refusal.starts_with("SQLite result code 18: "), "{refusal}");
        let constraint = sqlx::query("INSERT INTO tickets (mailbox, subject, status, created_at, updated_at) VALUES ('m', 's', 'bogus', 0, 0)")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert_eq!(
            StoreError::from(constraint).failure_kind(),
            FailureKind::Infrastructure
        );
    }
}
