//! The numbers of a Graph folder's messages (`graph_folders`, `graph_items`, migration 0017).
//! Graph names a message by its immutable id and reports changes by delta query; intake works by
//! ascending numbers (an IMAP UID). Each message a delta round reports in a watched folder gets
//! the folder's next number, kept with its id, its size, date and read state; the ledger and the
//! checkpoint then go by that number. A message that left the folder and comes back gets a new
//! number, as it would get a new UID. Only one worker holds a folder's lease, so one writer
//! numbers a folder at a time; a number given is never given again.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::sql::placeholders;
use super::{Backend, Result, Store};
use crate::mail_source::Uid;
use crate::time::now_ms;

/// A watched folder of a Graph mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphFolder {
    pub folder_id: String,
    /// Plays UIDVALIDITY's part.
    pub validity: u32,
    pub next_uid: u32,
    /// Where the next delta round starts; `None` before the first and after a 410.
    pub delta_link: Option<String>,
}

/// A message of the folder as the last delta round left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphItem {
    pub uid: Uid,
    pub item_id: String,
    /// PidTagMessageSize.
    pub size: u64,
    pub received_ms: Option<i64>,
    pub is_read: bool,
}

/// A message delta reported as there (new, or changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemChange {
    pub item_id: String,
    pub size: u64,
    pub received_ms: Option<i64>,
    pub is_read: bool,
}

/// A delta round's result, written in one transaction ([`Store::graph_apply_round`]).
#[derive(Debug, Default)]
pub struct DeltaRound {
    /// Messages reported there, in the order reported.
    pub changed: Vec<ItemChange>,
    /// Messages reported gone (`@removed`).
    pub removed: Vec<String>,
    /// A round from no link (the first, or after a 410): it names every message there, so any
    /// other is gone.
    pub full: bool,
    /// Where the next round starts: the round's `@odata.deltaLink`.
    pub delta_link: String,
}

/// How many ids one `IN (…)` names.
const IDS_PER_STATEMENT: usize = 200;

impl Store {
    /// The folder's numbering, started on its first use and renumbered (a new validity, numbers
    /// from 1) when the folder's Graph id is not the one recorded: the folder was made again.
    pub async fn graph_folder(
        &self,
        mailbox: &str,
        folder: &str,
        folder_id: &str,
    ) -> Result<GraphFolder> {
        let row = sqlx::query(
            "SELECT folder_id, validity, next_uid, delta_link FROM graph_folders \
             WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        let previous = row.map(|r| GraphFolder {
            folder_id: r.get(0),
            validity: r.get::<i64, _>(1) as u32,
            next_uid: r.get::<i64, _>(2) as u32,
            delta_link: r.get(3),
        });
        if let Some(previous) = &previous
            && previous.folder_id == folder_id
        {
            return Ok(previous.clone());
        }
        // A validity no IMAP UIDVALIDITY of the folder is likely to have had (a mailbox moved
        // from IMAP to Graph keeps its checkpoint row until the validity differs): the time in
        // seconds, as Dovecot makes them, and above the previous one.
        let now_secs = (now_ms() / 1000) as u32;
        let validity = previous
            .as_ref()
            .map_or(now_secs, |p| now_secs.max(p.validity.saturating_add(1)));
        sqlx::query(
            "INSERT INTO graph_folders (mailbox, folder, folder_id, validity, next_uid) \
             VALUES ($1, $2, $3, $4, 1) ON CONFLICT (mailbox, folder) DO UPDATE SET \
             folder_id = excluded.folder_id, validity = excluded.validity, next_uid = 1, \
             delta_link = NULL, synced_at = NULL",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(folder_id)
        .bind(i64::from(validity))
        .execute(&self.pool)
        .await?;
        Ok(GraphFolder {
            folder_id: folder_id.to_string(),
            validity,
            next_uid: 1,
            delta_link: None,
        })
    }

    /// Forgets the folder's delta link (Graph answered 410: the next round starts afresh and
    /// names every message there).
    pub async fn graph_forget_delta_link(&self, mailbox: &str, folder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE graph_folders SET delta_link = NULL WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox)
        .bind(folder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes a delta round: numbers for the messages new to the folder (or back in it), the
    /// changed ones' facts, the gone ones, and the link of the next round, in one transaction,
    /// so a link is never kept without the numbers of what came before it. Returns the folder's
    /// next number.
    pub async fn graph_apply_round(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        round: &DeltaRound,
    ) -> Result<u32> {
        let now = now_ms();
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        // The folder's row locked (PostgreSQL; SQLite's write lock is held already): two rounds
        // of one folder never hand out the same numbers.
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        };
        let next: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT next_uid FROM graph_folders WHERE mailbox = $1 AND folder = $2 AND validity = $3{lock}"
        )))
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(validity))
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let mut next = next;

        // What is known of the reported ids: present (a number in use) or gone.
        let mut known: HashMap<String, bool> = HashMap::new();
        let ids: Vec<&str> = round.changed.iter().map(|c| c.item_id.as_str()).collect();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let marks = placeholders(4, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT item_id, gone_at FROM graph_items WHERE mailbox = $1 AND folder = $2 \
                 AND validity = $3 AND item_id IN ({marks})"
            )))
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(validity));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                known.insert(row.get(0), row.get::<Option<i64>, _>(1).is_none());
            }
        }

        let mut seen = HashSet::new();
        for change in &round.changed {
            // A round may report a message twice (changed again while it was paged).
            let first_time = seen.insert(change.item_id.as_str());
            let present = known.get(&change.item_id).copied();
            let is_read = i64::from(change.is_read);
            let size = change.size as i64;
            match present {
                Some(true) => {
                    sqlx::query(
                        "UPDATE graph_items SET size_bytes = $1, received_at = $2, is_read = $3 \
                         WHERE mailbox = $4 AND folder = $5 AND validity = $6 AND item_id = $7",
                    )
                    .bind(size)
                    .bind(change.received_ms)
                    .bind(is_read)
                    .bind(mailbox)
                    .bind(folder)
                    .bind(i64::from(validity))
                    .bind(&change.item_id)
                    .execute(&mut *tx)
                    .await?;
                }
                // Back in the folder: a new arrival, with a new number.
                Some(false) => {
                    sqlx::query(
                        "UPDATE graph_items SET uid = $1, size_bytes = $2, received_at = $3, \
                         is_read = $4, gone_at = NULL \
                         WHERE mailbox = $5 AND folder = $6 AND validity = $7 AND item_id = $8",
                    )
                    .bind(next)
                    .bind(size)
                    .bind(change.received_ms)
                    .bind(is_read)
                    .bind(mailbox)
                    .bind(folder)
                    .bind(i64::from(validity))
                    .bind(&change.item_id)
                    .execute(&mut *tx)
                    .await?;
                    next += 1;
                    known.insert(change.item_id.clone(), true);
                }
                None if first_time => {
                    sqlx::query(
                        "INSERT INTO graph_items (mailbox, folder, validity, uid, item_id, \
                         size_bytes, received_at, is_read) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(mailbox)
                    .bind(folder)
                    .bind(i64::from(validity))
                    .bind(next)
                    .bind(&change.item_id)
                    .bind(size)
                    .bind(change.received_ms)
                    .bind(is_read)
                    .execute(&mut *tx)
                    .await?;
                    next += 1;
                    known.insert(change.item_id.clone(), true);
                }
                None => {}
            }
        }

        for id in &round.removed {
            sqlx::query(
                "UPDATE graph_items SET gone_at = $1 WHERE mailbox = $2 AND folder = $3 \
                 AND validity = $4 AND item_id = $5 AND gone_at IS NULL",
            )
            .bind(now)
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(validity))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }

        if round.full {
            // Everything there was named: the rest has left the folder.
            let present: Vec<String> = sqlx::query(
                "SELECT item_id FROM graph_items WHERE mailbox = $1 AND folder = $2 \
                 AND validity = $3 AND gone_at IS NULL",
            )
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(validity))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let named: HashSet<&str> = round.changed.iter().map(|c| c.item_id.as_str()).collect();
            let gone: Vec<&String> = present
                .iter()
                .filter(|id| !named.contains(id.as_str()))
                .collect();
            for chunk in gone.chunks(IDS_PER_STATEMENT) {
                let marks = placeholders(5, chunk.len());
                let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE graph_items SET gone_at = $1 WHERE mailbox = $2 AND folder = $3 \
                     AND validity = $4 AND item_id IN ({marks})"
                )))
                .bind(now)
                .bind(mailbox)
                .bind(folder)
                .bind(i64::from(validity));
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.execute(&mut *tx).await?;
            }
        }

        sqlx::query(
            "UPDATE graph_folders SET next_uid = $1, delta_link = $2, synced_at = $3 \
             WHERE mailbox = $4 AND folder = $5 AND validity = $6",
        )
        .bind(next)
        .bind(&round.delta_link)
        .bind(now)
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(validity))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next as u32)
    }

    /// The messages there with a number above `last`, ascending.
    pub async fn graph_items_above(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        last: Uid,
    ) -> Result<Vec<GraphItem>> {
        let rows = sqlx::query(
            "SELECT uid, item_id, size_bytes, received_at, is_read FROM graph_items \
             WHERE mailbox = $1 AND folder = $2 AND validity = $3 AND uid > $4 \
             AND gone_at IS NULL ORDER BY uid",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(validity))
        .bind(i64::from(last))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(item_from_row).collect())
    }

    /// The messages there numbered `first` to `last` (both included), ascending; only the
    /// unread ones when `unread_only`.
    pub async fn graph_items_between(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        (first, last): (Uid, Uid),
        unread_only: bool,
    ) -> Result<Vec<GraphItem>> {
        let unread = if unread_only { " AND is_read = 0" } else { "" };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT uid, item_id, size_bytes, received_at, is_read FROM graph_items \
             WHERE mailbox = $1 AND folder = $2 AND validity = $3 AND uid >= $4 AND uid <= $5 \
             AND gone_at IS NULL{unread} ORDER BY uid"
        )))
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(validity))
        .bind(i64::from(first))
        .bind(i64::from(last))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(item_from_row).collect())
    }

    /// The messages numbered `uids` that are still there, ascending.
    pub async fn graph_items_numbered(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        uids: &[Uid],
    ) -> Result<Vec<GraphItem>> {
        let mut items = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(IDS_PER_STATEMENT) {
            let list: Vec<String> = chunk.iter().map(Uid::to_string).collect();
            // Numbers are integers: formatting them into the statement is safe.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT uid, item_id, size_bytes, received_at, is_read FROM graph_items \
                 WHERE mailbox = $1 AND folder = $2 AND validity = $3 AND uid IN ({}) \
                 AND gone_at IS NULL ORDER BY uid",
                list.join(", ")
            )))
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(validity))
            .fetch_all(&self.pool)
            .await?;
            items.extend(rows.iter().map(item_from_row));
        }
        items.sort_by_key(|i| i.uid);
        Ok(items)
    }
}

impl Store {
    /// Marks the messages numbered `uids` gone from the folder: mailintake moved or deleted them.
    /// Delta may never report a departure (a message moved back before the next round is no
    /// change to it), so a message that comes back after our move is a new arrival all the same.
    pub async fn graph_mark_gone(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        uids: &[Uid],
    ) -> Result<()> {
        for chunk in uids.chunks(IDS_PER_STATEMENT) {
            let list: Vec<String> = chunk.iter().map(Uid::to_string).collect();
            // Numbers are integers: formatting them into the statement is safe.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE graph_items SET gone_at = $1 WHERE mailbox = $2 AND folder = $3 \
                 AND validity = $4 AND gone_at IS NULL AND uid IN ({})",
                list.join(", ")
            )))
            .bind(now_ms())
            .bind(mailbox)
            .bind(folder)
            .bind(i64::from(validity))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// The immutable id of the message numbered `uid` in the folder, there or gone (a message
    /// moved to the quarantine folder keeps its immutable id).
    pub async fn graph_item_id(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        uid: Uid,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT item_id FROM graph_items WHERE mailbox = $1 AND folder = $2 \
             AND validity = $3 AND uid = $4",
        )
        .bind(mailbox)
        .bind(folder)
        .bind(i64::from(validity))
        .bind(i64::from(uid))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

fn item_from_row(r: &sqlx::any::AnyRow) -> GraphItem {
    GraphItem {
        uid: Uid(r.get::<i64, _>(0) as u32),
        item_id: r.get(1),
        size: r.get::<i64, _>(2).max(0) as u64,
        received_ms: r.get(3),
        is_read: r.get::<i64, _>(4) != 0,
    }
}
