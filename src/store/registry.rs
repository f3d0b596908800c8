//! The mailbox registry's tables (`registry_identities`, `registry_mailboxes`,
//! `registry_generation`): rows of settings text moved as they are. What the text means, and the
//! encryption of the secrets, live above (`registry`, `oauth::sealed`); this module moves opaque
//! text and bytes. Every change raises the one generation number in its transaction, so a worker
//! polls one row to learn of a change.

use sqlx::Row;

use super::{Backend, Store, StoreError};
use crate::time::now_ms;

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An identity's secrets given as text, encrypted (`oauth::sealed`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecrets {
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Which configured key encrypted it.
    pub key_id: String,
}

impl std::fmt::Debug for SealedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecrets")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// One `registry_identities` row.
#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub name: String,
    /// The table's keys as a JSON object, without the secrets given as text.
    pub settings: String,
    pub secrets: Option<SealedSecrets>,
    pub version: i64,
    pub updated_at_ms: i64,
}

/// One `registry_mailboxes` row.
#[derive(Debug, Clone)]
pub struct MailboxRow {
    pub name: String,
    /// The identity its settings name (kept beside them, so an identity in use is found by SQL).
    pub identity: String,
    /// The table's keys as a JSON object.
    pub settings: String,
    pub enabled: bool,
    pub version: i64,
    pub updated_at_ms: i64,
}

/// What a write to the registry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryWrite {
    Done,
    /// `add` of a name the registry has.
    Exists,
    /// A change of a name the registry does not have.
    Missing,
}

impl Store {
    /// The registry's generation: it changes with every change of a row.
    pub async fn registry_generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT generation FROM registry_generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// Every identity row, by name.
    pub async fn registry_identities(&self) -> Result<Vec<IdentityRow>> {
        let rows = sqlx::query(
            "SELECT name, settings, secrets, secrets_nonce, secrets_key_id, version, updated_at \
             FROM registry_identities ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let ciphertext: Option<Vec<u8>> = r.get(2);
                let nonce: Option<Vec<u8>> = r.get(3);
                let key_id: Option<String> = r.get(4);
                IdentityRow {
                    name: r.get(0),
                    settings: r.get(1),
                    secrets: match (ciphertext, nonce, key_id) {
                        (Some(ciphertext), Some(nonce), Some(key_id)) => Some(SealedSecrets {
                            ciphertext,
                            nonce,
                            key_id,
                        }),
                        _ => None,
                    },
                    version: r.get(5),
                    updated_at_ms: r.get(6),
                }
            })
            .collect())
    }

    /// Every mailbox row, by name.
    pub async fn registry_mailboxes(&self) -> Result<Vec<MailboxRow>> {
        let rows = sqlx::query(
            "SELECT name, identity, settings, enabled, version, updated_at \
             FROM registry_mailboxes ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| MailboxRow {
                name: r.get(0),
                identity: r.get(1),
                settings: r.get(2),
                enabled: r.get::<i64, _>(3) != 0,
                version: r.get(4),
                updated_at_ms: r.get(5),
            })
            .collect())
    }

    /// Adds (`replace` false: only a new name) or replaces (`replace` true: only an existing
    /// name) an identity row.
    pub async fn put_registry_identity(
        &self,
        name: &str,
        settings: &str,
        secrets: Option<&SealedSecrets>,
        replace: bool,
    ) -> Result<RegistryWrite> {
        let mut tx = self.begin_registry_change().await?;
        let generation = next_generation(&mut tx).await?;
        let (ciphertext, nonce, key_id) = match secrets {
            Some(s) => (
                Some(s.ciphertext.clone()),
                Some(s.nonce.clone()),
                Some(s.key_id.clone()),
            ),
            None => (None, None, None),
        };
        let sql = if replace {
            "UPDATE registry_identities SET settings = $2, secrets = $3, secrets_nonce = $4, \
             secrets_key_id = $5, version = $6, updated_at = $7 WHERE name = $1"
        } else {
            "INSERT INTO registry_identities \
             (name, settings, secrets, secrets_nonce, secrets_key_id, version, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING"
        };
        let n = sqlx::query(sql)
            .bind(name)
            .bind(settings)
            .bind(ciphertext)
            .bind(nonce)
            .bind(key_id)
            .bind(generation)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        finish(tx, n, replace).await
    }

    /// Adds (`replace` false) or replaces (`replace` true) a mailbox row; its `enabled` flag is
    /// kept on a replacement, and true for a new row.
    pub async fn put_registry_mailbox(
        &self,
        name: &str,
        identity: &str,
        settings: &str,
        replace: bool,
    ) -> Result<RegistryWrite> {
        let mut tx = self.begin_registry_change().await?;
        let generation = next_generation(&mut tx).await?;
        let sql = if replace {
            "UPDATE registry_mailboxes SET identity = $2, settings = $3, version = $4, \
             updated_at = $5 WHERE name = $1"
        } else {
            "INSERT INTO registry_mailboxes (name, identity, settings, enabled, version, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (name) DO NOTHING"
        };
        let n = sqlx::query(sql)
            .bind(name)
            .bind(identity)
            .bind(settings)
            .bind(generation)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        finish(tx, n, replace).await
    }

    /// Enables or disables a mailbox row.
    pub async fn set_registry_mailbox_enabled(
        &self,
        name: &str,
        enabled: bool,
    ) -> Result<RegistryWrite> {
        let mut tx = self.begin_registry_change().await?;
        let generation = next_generation(&mut tx).await?;
        let n = sqlx::query(
            "UPDATE registry_mailboxes SET enabled = $2, version = $3, updated_at = $4 WHERE name = $1",
        )
        .bind(name)
        .bind(i64::from(enabled))
        .bind(generation)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        finish(tx, n, true).await
    }

    /// Removes a mailbox row (its tickets and messages stay).
    pub async fn delete_registry_mailbox(&self, name: &str) -> Result<RegistryWrite> {
        self.delete_registry_row("DELETE FROM registry_mailboxes WHERE name = $1", name)
            .await
    }

    /// Removes an identity row; the caller checked that no mailbox row names it.
    pub async fn delete_registry_identity(&self, name: &str) -> Result<RegistryWrite> {
        self.delete_registry_row("DELETE FROM registry_identities WHERE name = $1", name)
            .await
    }

    /// The mailbox rows that name `identity`.
    pub async fn registry_mailboxes_of(&self, identity: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT name FROM registry_mailboxes WHERE identity = $1 ORDER BY name")
                .bind(identity)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn delete_registry_row(&self, sql: &'static str, name: &str) -> Result<RegistryWrite> {
        let mut tx = self.begin_registry_change().await?;
        next_generation(&mut tx).await?;
        let n = sqlx::query(sql)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        finish(tx, n, true).await
    }

    /// A transaction for one change: on SQLite with the write lock from the start, so the
    /// generation read and raised is the latest.
    async fn begin_registry_change(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

/// Raises the generation (the row lock on PostgreSQL orders concurrent changes) and returns it.
async fn next_generation(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE registry_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.get(0))
}

/// Commits when the statement changed a row; otherwise rolls back (the generation stays).
async fn finish(
    tx: sqlx::Transaction<'static, sqlx::Any>,
    rows: u64,
    replace: bool,
) -> Result<RegistryWrite> {
    if rows == 0 {
        tx.rollback().await?;
        return Ok(if replace {
            RegistryWrite::Missing
        } else {
            RegistryWrite::Exists
        });
    }
    tx.commit().await?;
    Ok(RegistryWrite::Done)
}
