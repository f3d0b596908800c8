//! One sending budget per mailbox, shared by every kind of mail and every process on the
//! database, and what the mailbox's SMTP server announced.
//!
//! A claim is one transaction that first locks the mailbox's `sender_state` row (`SELECT … FOR
//! UPDATE` on PostgreSQL; on SQLite the transaction is `BEGIN IMMEDIATE`, whose write lock
//! serialises every writer), then counts what the last minute and day used — rows sent (or
//! bounced: they were sent) by `sent_at`, and rows claimed `sending` right now, whatever process
//! holds them — picks the next due row (agent replies first) and claims it only if it fits. So
//! two senders of one mailbox never both take the last slot: the second counts the first's
//! claim. A row that does not fit is not claimed and not counted as an attempt: every pending row
//! of the mailbox due before the budget allows waits, `pending`, with `deferred_reason` and
//! `next_attempt_at` at the time it allows. (The fleet issue's sender lease will replace the
//! lock.)

use sqlx::Row;

use super::outbox::{OutboxRow, ROW_COLUMNS, row};
use super::{Backend, Result, Store};
use crate::time::now_ms;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// The mailbox's budget: at most `per_minute` messages in any minute and `recipients_per_day`
/// envelope recipients in any day (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub per_minute: u32,
    pub recipients_per_day: u32,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// The row is `sending`, counted against the budget from now on.
    Row(Box<OutboxRow>),
    /// The next due row does not fit the budget: it and every other pending row wait until
    /// `until_ms`, with `reason`.
    Deferred { until_ms: i64, reason: String },
    /// Nothing is due.
    Nothing,
}

/// What the mailbox's SMTP server said in its EHLO the last time the sender connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerFacts {
    /// `SIZE <n>`: the largest message it accepts; `None` when it announced no limit or was not
    /// asked yet.
    pub size_limit: Option<u64>,
    /// It offers DSN (RFC 3461): ENVID, RET and NOTIFY may be sent.
    pub dsn: bool,
}

/// The due-row condition shared by the claim: pending, due, and not held by a blocked From
/// address whose retry time has not come (a blocked row due itself is the probe).
const DUE: &str = "o.mailbox = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2 \
                   AND (o.blocked_reason IS NOT NULL OR NOT EXISTS (SELECT 1 FROM outbox b \
                   WHERE b.mailbox = o.mailbox AND b.from_address = o.from_address \
                   AND b.blocked_reason IS NOT NULL AND b.state = 'pending' AND b.next_attempt_at > $2))";

impl Store {
    /// Claims the next due row of `mailbox` if it fits `budget` (see the module comment).
    pub async fn claim_within_budget(&self, mailbox: &str, budget: Budget) -> Result<Claim> {
        let now = now_ms();
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        sqlx::query("INSERT INTO sender_state (mailbox) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(mailbox)
            .execute(&mut *tx)
            .await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT mailbox FROM sender_state WHERE mailbox = $1 FOR UPDATE")
                .bind(mailbox)
                .fetch_one(&mut *tx)
                .await?;
        }
        let candidate = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT o.id, o.recipient_count FROM outbox o WHERE {DUE} \
             ORDER BY CASE WHEN o.kind = 'reply' THEN 0 ELSE 1 END, o.id LIMIT 1"
        )))
        .bind(mailbox)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(candidate) = candidate else {
            tx.commit().await?;
            return Ok(Claim::Nothing);
        };
        let (id, recipients): (i64, i64) = (candidate.get(0), candidate.get(1));

        // In flight: claimed by any process and not finished. They count from their claim.
        let in_flight = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(recipient_count), 0) AS BIGINT) FROM outbox \
             WHERE mailbox = $1 AND state = 'sending'",
        )
        .bind(mailbox)
        .fetch_one(&mut *tx)
        .await?;
        let (flying, flying_recipients): (i64, i64) = (in_flight.get(0), in_flight.get(1));

        let mut wait: Option<(i64, String)> = None;
        if budget.per_minute > 0 {
            let max = i64::from(budget.per_minute);
            let times: Vec<i64> = sqlx::query(
                "SELECT sent_at FROM outbox WHERE mailbox = $1 AND sent_at >= $2 \
                 AND state IN ('sent', 'bounced') ORDER BY sent_at",
            )
            .bind(mailbox)
            .bind(now - MINUTE_MS)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
            let used = times.len() as i64 + flying;
            if used >= max {
                // The slot frees when enough of the sent ones leave the window; rows in flight
                // are sent now at the earliest, so they leave it a minute from now at the earliest.
                let excess = (used - max + 1) as usize;
                let until = times
                    .get(excess - 1)
                    .map_or(now + MINUTE_MS, |t| t + MINUTE_MS);
                wait = Some((
                    until,
                    format!(
                        "sending budget: {used} of {max} messages in the last minute (smtp.max_per_minute)"
                    ),
                ));
            }
        }
        if wait.is_none() && budget.recipients_per_day > 0 {
            let max = i64::from(budget.recipients_per_day);
            let sent: Vec<(i64, i64)> = sqlx::query(
                "SELECT sent_at, recipient_count FROM outbox WHERE mailbox = $1 AND sent_at >= $2 \
                 AND state IN ('sent', 'bounced') ORDER BY sent_at",
            )
            .bind(mailbox)
            .bind(now - DAY_MS)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
            let used: i64 = sent.iter().map(|(_, n)| n).sum::<i64>() + flying_recipients;
            // A row larger than the whole budget goes out alone when the day is empty, or it
            // would wait for ever.
            if used > 0 && used + recipients > max {
                let mut freed = 0;
                let until = sent
                    .iter()
                    .find_map(|(at, n)| {
                        freed += n;
                        (used - freed + recipients <= max).then_some(at + DAY_MS)
                    })
                    .unwrap_or(now + DAY_MS);
                wait = Some((
                    until,
                    format!(
                        "sending budget: {used} of {max} recipients in the last day, this message has {recipients} (smtp.max_recipients_per_day)"
                    ),
                ));
            }
        }
        if let Some((until_ms, reason)) = wait {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at = $1, deferred_reason = $2 \
                 WHERE mailbox = $3 AND state = 'pending' AND next_attempt_at < $1",
            )
            .bind(until_ms)
            .bind(&reason)
            .bind(mailbox)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Claim::Deferred { until_ms, reason });
        }
        let claimed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET state = 'sending', claimed_at = $1, attempts = attempts + 1, \
             deferred_reason = NULL WHERE id = $2 AND state = 'pending' RETURNING {ROW_COLUMNS}"
        )))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed.map_or(Claim::Nothing, |r| Claim::Row(Box::new(row(r)))))
    }

    /// The pending rows of `mailbox` the budget holds back now: how many, why, and when the first
    /// is due.
    pub async fn deferred_rows(&self, mailbox: &str) -> Result<Option<crate::report::Deferred>> {
        let r = sqlx::query(
            "SELECT COUNT(*), MAX(deferred_reason), MIN(next_attempt_at) FROM outbox \
             WHERE mailbox = $1 AND state = 'pending' AND deferred_reason IS NOT NULL \
             AND next_attempt_at > $2",
        )
        .bind(mailbox)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        let n_rows: i64 = r.get(0);
        Ok((n_rows > 0).then(|| crate::report::Deferred {
            n_rows: n_rows as u64,
            reason: r.get(1),
            until_ms: r.get(2),
        }))
    }

    /// What `mailbox`'s SMTP server announced when the sender last connected, if it has.
    pub async fn server_facts(&self, mailbox: &str) -> Result<Option<ServerFacts>> {
        let r = sqlx::query(
            "SELECT server_size_limit, server_dsn FROM sender_state \
             WHERE mailbox = $1 AND server_seen_at IS NOT NULL",
        )
        .bind(mailbox)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(|r| ServerFacts {
            size_limit: r
                .get::<Option<i64>, _>(0)
                .filter(|n| *n > 0)
                .map(|n| n as u64),
            dsn: r.get::<Option<i64>, _>(1) == Some(1),
        }))
    }

    /// Keeps what `mailbox`'s SMTP server announced in its EHLO just now.
    pub async fn note_server_facts(&self, mailbox: &str, facts: ServerFacts) -> Result<()> {
        sqlx::query(
            "INSERT INTO sender_state (mailbox, server_size_limit, server_dsn, server_seen_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (mailbox) DO UPDATE SET \
             server_size_limit = $2, server_dsn = $3, server_seen_at = $4",
        )
        .bind(mailbox)
        .bind(facts.size_limit.map_or(0, |n| n as i64))
        .bind(i64::from(facts.dsn))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
