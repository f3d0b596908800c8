//! Every SQL statement of mailintake. One set of queries serves SQLite and PostgreSQL through sqlx's
//! `Any` driver (`$n` placeholders, `RETURNING`, BIGINT times in unix milliseconds); only the
//! migrations differ per backend (`migrations/sqlite`, `migrations/postgres`).
//!
//! Exactly-once rests on two rules kept here: the outcome of an IMAP message (its ticket, quarantine
//! or duplicate record) and the folder's checkpoint are written in one transaction; and that row,
//! keyed by (mailbox, folder, uidvalidity, uid), records whether the IMAP disposition is still due.
//!
//! The files, by topic: `folders` (a folder's checkpoint and its intake ledger), `batch` (the
//! transaction that records a batch of outcomes: every [`Batch`] method), `tickets` (reading
//! tickets, raw mail and attachments), `outbox` (acknowledgements and agent mail claimed and sent), `outgoing`
//! (the helpdesk's mail submitted idempotently, and the `outgoing` table of the database contract), `admin`
//! (quarantine, purge, the backlog), `tokens` (sealed refresh tokens), `errors` (whose trouble a
//! database failure is, the data's or the infrastructure's, and the operator's fix for it) and
//! `sql` (helpers that build statement text).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Executor};

use crate::config::DatabaseConfig;

pub use batch::{
    Batch, BatchQuestions, Direction, FollowUpOn, ImapLocation, MessageFacts, Outcome,
    QuarantineEnvelope,
};
pub use budget::{Budget, Claim, ServerFacts};
pub use errors::FailureKind;
pub use folders::{FolderState, PendingDisposition, RecordedOutcome, StuckFailure, StuckMessage};
pub use graph::{DeltaRound, GraphFolder, GraphItem, ItemChange};
pub use leases::{FencedWrite, Lease, WorkerInfo, WorkerRow};
pub use outbox::{AckKind, OutboxDraft, OutboxRow};
pub use outgoing::{
    DeliveryState, OutboxState, OutboxStatus, OutgoingDraft, OutgoingKind, OutgoingRow, ReplyFacts,
    Submitted, SubmittedVia,
};
pub use sent_copy::{GRAPH_SENT_ITEMS, SentCopyState, SentCopyStatus};
pub use tickets::{StoredAttachment, TicketSummary};
pub use worker_lock::{WorkerLock, WorkerLockError, lock_worker};

pub mod admin;
mod batch;
mod budget;
mod errors;
mod folders;
mod graph;
mod leases;
pub mod outbox;
mod outgoing;
pub mod registry;
mod sent_copy;
mod sql;
mod tickets;
pub mod tokens;
mod worker_lock;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The database backends mailintake runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Database errors; `Conflict` is the one a caller branches on (another worker got there first).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a row for this message already exists (written concurrently by another worker)")]
    Conflict,
    /// A fenced write (a batch, or another write of a folder task: `write`) found its folder's
    /// lease lost (taken over after it expired, or released): nothing of it was committed, and
    /// the folder is another worker's now.
    #[error(
        "the lease of {mailbox}/{folder} (epoch {epoch}) is no longer this worker's; nothing of {write} was committed"
    )]
    LeaseLost {
        mailbox: String,
        folder: String,
        epoch: i64,
        write: FencedWrite,
    },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A column of a closed set holds a value this version does not know (a newer version or
    /// another program wrote it).
    #[error("the database holds an {0}; is a newer mailintake writing to it?")]
    UnknownValue(#[from] crate::closed_set::UnknownValue),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long a PostgreSQL statement may run, and wait for a lock (SQLite waits `busy_timeout`),
/// and how many connections the pool opens at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// `None`: 4 on SQLite, 8 on PostgreSQL (for tests and tools that open a store directly).
    pub max_connections: Option<u32>,
}

impl Default for Limits {
    /// As `[database]`'s defaults.
    fn default() -> Limits {
        Limits {
            statement_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(10),
            max_connections: None,
        }
    }
}

/// The store: a connection pool and its backend.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The pool's size, so that `run` can tell whether the registry's mailboxes want another.
    max_connections: u32,
}

impl Store {
    /// Opens (creating an SQLite file and its folder on first use) and migrates the database
    /// `[database]` names, with its limits and a pool sized for `tasks` tasks that use it
    /// ([`DatabaseConfig::pool_size`]).
    pub async fn open_configured(database: &DatabaseConfig, tasks: usize) -> Result<Store> {
        Store::open_with_size(database, database.pool_size(tasks).0).await
    }

    /// Like [`Store::open_configured`], with a pool of at most `max_connections`.
    pub async fn open_with_size(database: &DatabaseConfig, max_connections: u32) -> Result<Store> {
        let limits = Limits {
            statement_timeout: database.statement_timeout,
            lock_timeout: database.lock_timeout,
            max_connections: Some(max_connections),
        };
        let store = Store::connect_with(database.url(), limits).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens and migrates the database at `url` with the default limits.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens without migrating, with the default limits.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, Limits::default()).await
    }

    /// Opens without migrating.
    pub async fn connect_with(url: &str, limits: Limits) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let redacted = crate::config::redact_credentials(url);
        let connect_error = |source| StoreError::Connect {
            url: redacted.clone(),
            source,
        };
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url).map_err(connect_error)?)
        } else {
            (Backend::Postgres, url.to_string())
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_error)?;
        let max_connections = limits
            .max_connections
            .unwrap_or(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .max(1);
        let pool = AnyPoolOptions::new()
            // One per task that may use it at once, plus a few (`DatabaseConfig::pool_size`);
            // connections are opened on demand, so an idle worker holds few.
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _meta| Box::pin(errors::release_check(conn)))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Postgres {
                        // No statement waits forever: a helpdesk session holding a ticket's row
                        // lock ends our statement with 55P03, a stuck one with 57014, and the
                        // folder task retries the batch with backoff and shows the wait.
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "SET statement_timeout = {}; SET lock_timeout = {}",
                            limits.statement_timeout.as_millis(),
                            limits.lock_timeout.as_millis()
                        )))
                        .await?;
                    }
                    if backend == Backend::Sqlite {
                        // 16 KiB pages (taken only by a new, empty database) write message bodies
                        // and attachments in a quarter of the pages (and system calls) of 4 KiB.
                        // WAL lets readers (the helpdesk application) work during ingest; FULL
                        // fsyncs every commit, which exactly-once needs before the IMAP disposition.
                        conn.execute(
                            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Store {
            pool,
            backend,
            max_connections,
        })
    }

    /// The most connections the pool opens.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for tests and admin commands that read rows directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Adds `mode=rwc` (create when missing) to an SQLite URL and creates the file's folder.
fn sqlite_url(url: &str) -> Result<String, sqlx::Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !path.is_empty()
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    if query.contains("mode=") {
        Ok(url.to_string())
    } else if query.is_empty() {
        Ok(format!("sqlite://{path}?mode=rwc"))
    } else {
        Ok(format!("sqlite://{path}?{query}&mode=rwc"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        assert_eq!(
            sqlite_url("sqlite::memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/x.db");
        let url = format!("sqlite://{}", db.display());
        assert_eq!(sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert_eq!(
            sqlite_url("sqlite://a.db?mode=ro").unwrap(),
            "sqlite://a.db?mode=ro"
        );
    }
}
