//! The `oauth_tokens` table: refresh tokens of delegated identities, stored encrypted. This module
//! only moves opaque bytes; encryption and keys live in `oauth::sealed`, so no plaintext token
//! ever reaches SQL.

use sqlx::Row;

use super::{Store, StoreError};
use crate::time::now_ms;

/// The only kind of token stored today (the table's CHECK constraint lists it).
const REFRESH_TOKEN: &str = "refresh_token";

/// One encrypted token as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Which configured key encrypted it (rotation: any configured key may decrypt).
    pub key_id: String,
    /// When the token stops being redeemable, if known; unix ms.
    pub expires_at_ms: Option<i64>,
    /// When it was stored (the last successful refresh); unix ms.
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedToken")
            .field("key_id", &self.key_id)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The stored refresh token of `identity` for `scope`, if any.
    pub async fn refresh_token(
        &self,
        identity: &str,
        scope: &str,
    ) -> Result<Option<SealedToken>, StoreError> {
        let row = sqlx::query(
            "SELECT ciphertext, nonce, key_id, expires_at, updated_at FROM oauth_tokens \
             WHERE identity = $1 AND scope = $2 AND kind = $3",
        )
        .bind(identity)
        .bind(scope)
        .bind(REFRESH_TOKEN)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|row| SealedToken {
            ciphertext: row.get(0),
            nonce: row.get(1),
            key_id: row.get(2),
            expires_at_ms: row.get(3),
            updated_at_ms: row.get(4),
        }))
    }

    /// Stores (or replaces) the refresh token of `identity` for `scope`.
    pub async fn save_refresh_token(
        &self,
        identity: &str,
        scope: &str,
        token: &SealedToken,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_tokens (identity, scope, kind, ciphertext, nonce, key_id, expires_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (identity, scope, kind) DO UPDATE SET ciphertext = excluded.ciphertext, \
             nonce = excluded.nonce, key_id = excluded.key_id, expires_at = excluded.expires_at, \
             updated_at = excluded.updated_at",
        )
        .bind(identity)
        .bind(scope)
        .bind(REFRESH_TOKEN)
        .bind(token.ciphertext.clone())
        .bind(token.nonce.clone())
        .bind(token.key_id.clone())
        .bind(token.expires_at_ms)
        .bind(if token.updated_at_ms > 0 {
            token.updated_at_ms
        } else {
            now_ms()
        })
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Forgets the refresh token of `identity` for `scope` (e.g. before a new login).
    pub async fn delete_refresh_token(
        &self,
        identity: &str,
        scope: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM oauth_tokens WHERE identity = $1 AND scope = $2 AND kind = $3")
            .bind(identity)
            .bind(scope)
            .bind(REFRESH_TOKEN)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
