//! The fleet's coordination (issue 17): workers registered with a heartbeat, and leases — each
//! (mailbox, folder) owned by at most one worker at a time. A lease has a holder, an epoch (one
//! more with every acquisition: the fencing token) and an expiry by the database's clock, never
//! the workers' (theirs may disagree). Taking a lease over is one conditional UPDATE: free,
//! expired, or already ours.
//!
//! Fencing: a batch of a leased folder commits only while its lease holds. Its commit first runs
//! the fence's renewal (`Batch::fence`) in the batch's own transaction — `holder`, `epoch` and an expiry
//! still ahead must match, or nothing of the batch is committed (`StoreError::LeaseLost`) — and the
//! row lock that UPDATE takes holds off any takeover until the commit is done. A folder task's
//! other writes (its checkpoint and UIDVALIDITY, the dispositions done or refused, its waiting
//! messages, the UIDs to take alone, the reconciliation's time) are fenced the same way, each in
//! a transaction of its own ([`Store::begin_fenced`]), so that a worker that lost its folder
//! changes nothing of it. What a database cannot fence (IMAP dispositions) the worker guards by
//! its own monotonic clock: see [`Lease::trusted_until`].

use std::time::{Duration, Instant};

use sqlx::Row;

use super::{Backend, Result, Store, StoreError};

/// The database's clock in unix milliseconds, as an SQL expression: every expiry is by it. On
/// PostgreSQL `clock_timestamp()`, not `now()` (the time the transaction began, which a batch
/// that waited would see as earlier than it is).
fn db_now(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

/// One worker process, as it registers.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Unique per process start.
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
}

/// A registered worker, as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    pub stopped_at_ms: Option<i64>,
}

/// A lease this worker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub mailbox: String,
    pub folder: String,
    pub holder: String,
    /// The fencing token: the row's epoch when this worker acquired it.
    pub epoch: i64,
    /// How long each acquisition or renewal lasts.
    pub ttl: Duration,
    /// When this worker last acquired or renewed it, by its own monotonic clock (taken before
    /// the statement was sent, so never later than the database's renewal).
    pub renewed_at: Instant,
}

impl Lease {
    /// Until when this worker may still act on the lease (IMAP commands, dispositions) by its own
    /// monotonic clock: the TTL minus `margin` after its last renewal. Past it, another worker
    /// may have taken the folder over, whatever the database said last.
    pub fn trusted_until(&self, margin: Duration) -> Instant {
        self.renewed_at + self.ttl.saturating_sub(margin)
    }
}

/// What a fenced write of a folder task was, for [`StoreError::LeaseLost`] to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedWrite {
    /// A batch of outcomes (`Batch::fence`), or a quarantine transaction of the folder task.
    Batch,
    /// The folder's UIDVALIDITY, checkpoint and first-start mark, at a sweep's start.
    FolderState,
    /// The checkpoint moved past the listing at a sweep's end.
    Checkpoint,
    /// The UIDs of a batch that lost its connection, to take one at a time (or their end).
    AloneRange,
    /// A waiting message's failure counted, or its record dropped.
    StuckMessage,
    /// Dispositions recorded as done.
    DispositionsDone,
    /// Dispositions recorded as refused by the server.
    DispositionsRefused,
    /// The time of the folder's last reconciliation.
    Reconciled,
}

impl std::fmt::Display for FencedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FencedWrite::Batch => "the batch",
            FencedWrite::FolderState => "the folder's UIDVALIDITY and checkpoint",
            FencedWrite::Checkpoint => "the checkpoint's advance",
            FencedWrite::AloneRange => "the UIDs to take one at a time",
            FencedWrite::StuckMessage => "the waiting message's record",
            FencedWrite::DispositionsDone => "the dispositions done",
            FencedWrite::DispositionsRefused => "the refused dispositions",
            FencedWrite::Reconciled => "the reconciliation's time",
        })
    }
}

/// The fence, in the caller's transaction `conn`: `lease` renewed (holder, epoch and an expiry
/// still ahead must match), or [`StoreError::LeaseLost`] naming `write`. The renewal's row lock
/// holds off a takeover until the transaction ends.
pub(super) async fn check_fence(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    lease: &Lease,
    write: FencedWrite,
) -> Result<()> {
    let renewed = sqlx::query(sqlx::AssertSqlSafe(renew_sql(backend)))
        .bind(lease.ttl.as_millis() as i64)
        .bind(&lease.mailbox)
        .bind(&lease.folder)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(conn)
        .await?
        .rows_affected()
        == 1;
    if renewed {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            mailbox: lease.mailbox.clone(),
            folder: lease.folder.clone(),
            epoch: lease.epoch,
            write,
        })
    }
}

impl Store {
    /// A transaction for one write of a folder task outside a batch (`write`), fenced by `lease`
    /// as a batch is: the lease is renewed in it first, and nothing is written
    /// ([`StoreError::LeaseLost`]) when it is not this worker's any more. With `None` (`once`,
    /// the admin commands, which take no leases) it is an ordinary transaction. On SQLite it
    /// takes the write lock from the start, as a batch does.
    pub(super) async fn begin_fenced(
        &self,
        lease: Option<&Lease>,
        write: FencedWrite,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        if let Some(lease) = lease
            && let Err(lost) = check_fence(&mut tx, self.backend, lease, write).await
        {
            tx.rollback().await?;
            return Err(lost);
        }
        Ok(tx)
    }

    /// Registers `worker` (or says again that it is alive: the heartbeat).
    pub async fn heartbeat(&self, worker: &WorkerInfo) -> Result<()> {
        let now = db_now(self.backend);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO workers (id, host, pid, version, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, {now}, {now}) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = {now}, stopped_at = NULL"
        )))
        .bind(&worker.id)
        .bind(&worker.host)
        .bind(i64::from(worker.pid))
        .bind(&worker.version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks `worker_id` stopped and releases every lease it holds; returns how many.
    pub async fn stop_worker(&self, worker_id: &str) -> Result<u64> {
        let now = db_now(self.backend);
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE leases SET holder = NULL, expires_at = {now} WHERE holder = $1"
        )))
        .bind(worker_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE workers SET stopped_at = {now} WHERE id = $1"
        )))
        .bind(worker_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(released)
    }

    /// The workers that sent a heartbeat within `alive_within` and have not stopped, oldest
    /// first.
    pub async fn live_workers(&self, alive_within: Duration) -> Result<Vec<WorkerRow>> {
        let now = db_now(self.backend);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, host, pid, version, started_at, heartbeat_at, stopped_at FROM workers \
             WHERE stopped_at IS NULL AND heartbeat_at > {now} - $1 ORDER BY started_at, id"
        )))
        .bind(alive_within.as_millis() as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| WorkerRow {
                id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                version: r.get(3),
                started_at_ms: r.get(4),
                heartbeat_at_ms: r.get(5),
                stopped_at_ms: r.get(6),
            })
            .collect())
    }

    /// Takes the lease of (`mailbox`, `folder`) for `holder` for `ttl`: when it is free, expired
    /// (by the database's clock), or `holder`'s already (then with a new epoch all the same: an
    /// acquisition starts a new tenure). `None` when another worker holds it. One unit of
    /// [`Store::acquire_leases`].
    pub async fn acquire_lease(
        &self,
        mailbox: &str,
        folder: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let units = [(mailbox.to_string(), folder.to_string())];
        Ok(self.acquire_leases(&units, holder, ttl).await?.pop())
    }

    /// Takes the leases of `units` (mailbox, folder) for `holder` for `ttl`, each on the terms of
    /// [`Store::acquire_lease`], in two statements per [`ACQUISITIONS_PER_STATEMENT`]: one INSERT
    /// of the rows not there yet, one conditional UPDATE that raises each taken row's epoch. A
    /// coordination round that takes a killed worker's hundreds of folders over is a few round
    /// trips, not two per folder. Returns the leases taken, in no particular order; a unit
    /// another worker holds is not among them.
    pub async fn acquire_leases(
        &self,
        units: &[(String, String)],
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<Lease>> {
        let now = db_now(self.backend);
        let mut taken = Vec::new();
        for chunk in units.chunks(ACQUISITIONS_PER_STATEMENT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 1 + i * 2, 2 + i * 2))
                .collect();
            let insert = format!(
                "INSERT INTO leases (mailbox, folder) VALUES {} \
                 ON CONFLICT (mailbox, folder) DO NOTHING",
                rows.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
            for (mailbox, folder) in chunk {
                query = query.bind(mailbox).bind(folder);
            }
            query.execute(&self.pool).await?;

            let which: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let at = 3 + i * 2;
                    format!("(mailbox = ${at} AND folder = ${})", at + 1)
                })
                .collect();
            let update = format!(
                "UPDATE leases SET holder = $1, epoch = epoch + 1, acquired_at = {now}, \
                 renewed_at = {now}, expires_at = {now} + $2 \
                 WHERE (holder IS NULL OR holder = $1 OR expires_at <= {now}) AND ({}) \
                 RETURNING mailbox, folder, epoch",
                which.join(" OR ")
            );
            let started = Instant::now();
            let mut query = sqlx::query(sqlx::AssertSqlSafe(update))
                .bind(holder)
                .bind(ttl.as_millis() as i64);
            for (mailbox, folder) in chunk {
                query = query.bind(mailbox).bind(folder);
            }
            for row in query.fetch_all(&self.pool).await? {
                taken.push(Lease {
                    mailbox: row.get(0),
                    folder: row.get(1),
                    holder: holder.to_string(),
                    epoch: row.get(2),
                    ttl,
                    renewed_at: started,
                });
            }
        }
        Ok(taken)
    }

    /// Renews `leases` (all `holder`'s, all with `ttl`) for another TTL, in one statement per
    /// [`RENEWALS_PER_STATEMENT`]: a worker's renewals are one round trip, not one per folder
    /// (1,000 folders with a 30 s TTL would be 100 statements a second). Returns when the
    /// statements were sent (by this process's clock, so never later than the database's
    /// renewal) and the (mailbox, folder, epoch) renewed; a lease not among them is lost (taken
    /// over, or expired: an expired lease is not renewed, as another worker may have seen it
    /// free).
    pub async fn renew_leases(
        &self,
        holder: &str,
        ttl: Duration,
        leases: &[(String, String, i64)],
    ) -> Result<(Instant, std::collections::HashSet<(String, String, i64)>)> {
        let started = Instant::now();
        let now = db_now(self.backend);
        let mut renewed = std::collections::HashSet::new();
        for chunk in leases.chunks(RENEWALS_PER_STATEMENT) {
            let which: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let at = 3 + i * 3;
                    format!(
                        "(mailbox = ${at} AND folder = ${} AND epoch = ${})",
                        at + 1,
                        at + 2
                    )
                })
                .collect();
            let sql = format!(
                "UPDATE leases SET renewed_at = {now}, expires_at = {now} + $1 \
                 WHERE holder = $2 AND expires_at > {now} AND ({}) RETURNING mailbox, folder, epoch",
                which.join(" OR ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(ttl.as_millis() as i64)
                .bind(holder);
            for (mailbox, folder, epoch) in chunk {
                query = query.bind(mailbox).bind(folder).bind(*epoch);
            }
            for row in query.fetch_all(&self.pool).await? {
                renewed.insert((row.get(0), row.get(1), row.get(2)));
            }
        }
        Ok((started, renewed))
    }

    /// Gives `lease` up at once (a safe point: between batches, after logout), so that another
    /// worker takes the folder without waiting for the expiry. A lease already lost is left alone.
    pub async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let now = db_now(self.backend);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE leases SET holder = NULL, expires_at = {now} \
             WHERE mailbox = $1 AND folder = $2 AND holder = $3 AND epoch = $4"
        )))
        .bind(&lease.mailbox)
        .bind(&lease.folder)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who holds each lease now: (mailbox, folder, holder), free ones with `None`.
    pub async fn lease_holders(&self) -> Result<Vec<(String, String, Option<String>)>> {
        let now = db_now(self.backend);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT mailbox, folder, CASE WHEN expires_at > {now} THEN holder END FROM leases \
             ORDER BY mailbox, folder"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

/// Leases acquired by one statement (2 binds each in the INSERT, 2 + 2 each in the UPDATE).
pub const ACQUISITIONS_PER_STATEMENT: usize = 250;

/// Leases renewed by one statement (3 binds each: within SQLite's 32,766 and PostgreSQL's
/// 65,535 bind parameters, and a statement small enough to plan quickly).
pub const RENEWALS_PER_STATEMENT: usize = 250;

/// The renewal: holder, epoch and an expiry still ahead must match. Binds: ttl ms, mailbox,
/// folder, holder, epoch.
pub(super) fn renew_sql(backend: Backend) -> String {
    let now = db_now(backend);
    format!(
        "UPDATE leases SET renewed_at = {now}, expires_at = {now} + $1 \
         WHERE mailbox = $2 AND folder = $3 AND holder = $4 AND epoch = $5 AND expires_at > {now}"
    )
}
