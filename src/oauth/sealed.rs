//! Refresh tokens at rest: AES-256-GCM with a fresh 96-bit nonce per token and the row's identity,
//! scope and kind as associated data (a row copied onto another identity does not decrypt). Keys
//! come from `[token_store] keys`; the first encrypts, every one decrypts, and each row names its
//! key, so rotation is: add a new key first, keep the old one until every row was rewritten (each
//! refresh rewrites its row), then remove the old one.

use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use secrecy::{ExposeSecret, SecretString};

use crate::config::TokenKey;
use crate::store::registry::SealedSecrets;
use crate::store::tokens::SealedToken;
use crate::time::now_ms;

const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// The configured keys, decoded. Never printed.
pub struct TokenKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TokenKeys").field("ids", &ids).finish()
    }
}

impl Drop for TokenKeys {
    fn drop(&mut self) {
        for (_, key) in &mut self.keys {
            key.iter_mut().for_each(|b| *b = 0);
        }
    }
}

impl TokenKeys {
    /// The keys of the config (validated there: 32 bytes each, as hex).
    pub fn new(keys: &[TokenKey]) -> TokenKeys {
        TokenKeys {
            keys: keys
                .iter()
                .map(|k| {
                    let hex = k.key_hex.expose_secret();
                    let bytes = (0..hex.len() / 2)
                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
                        .collect();
                    (k.id.clone(), bytes)
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key that encrypts.
    pub fn current_id(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| id.as_str())
    }

    /// Encrypts `token` for the row (identity, scope) with the first key.
    pub fn seal(
        &self,
        identity: &str,
        scope: &str,
        token: &SecretString,
        expires_at_ms: Option<i64>,
    ) -> Result<SealedToken, String> {
        let (key_id, key) = self
            .keys
            .first()
            .ok_or("no [token_store] key is configured to encrypt refresh tokens")?;
        let mut nonce = vec![0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| format!("no random nonce: {e}"))?;
        let mut tag = [0u8; TAG_LEN];
        let mut ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            &associated_data(identity, scope),
            token.expose_secret().as_bytes(),
            &mut tag,
        )
        .map_err(|e| format!("cannot encrypt the refresh token: {e}"))?;
        ciphertext.extend_from_slice(&tag);
        Ok(SealedToken {
            ciphertext,
            nonce,
            key_id: key_id.clone(),
            expires_at_ms,
            updated_at_ms: now_ms(),
        })
    }

    /// Decrypts a stored token with the key it names.
    pub fn open(
        &self,
        identity: &str,
        scope: &str,
        sealed: &SealedToken,
    ) -> Result<SecretString, String> {
        let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == sealed.key_id) else {
            let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
            return Err(format!(
                "the stored refresh token was encrypted with key `{}`, which is not among the configured [token_store] keys ({}): add that key back, or run `mailintake login {identity}` again",
                sealed.key_id,
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            ));
        };
        if sealed.ciphertext.len() < TAG_LEN {
            return Err("the stored refresh token is truncated".into());
        }
        let (ciphertext, tag) = sealed
            .ciphertext
            .split_at(sealed.ciphertext.len() - TAG_LEN);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&sealed.nonce),
            &associated_data(identity, scope),
            ciphertext,
            tag,
        )
        .map_err(|_| {
            format!(
                "the stored refresh token does not decrypt with key `{}` (a different key under the same id?): fix the key, or run `mailintake login {identity}` again",
                sealed.key_id
            )
        })?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| "the stored refresh token is not text".into())
    }
}

impl TokenKeys {
    /// Encrypts the secrets of the registry's identity `identity` (a JSON object of the keys
    /// given as text) with the first key, the row's name bound as associated data.
    pub fn seal_identity_secrets(
        &self,
        identity: &str,
        secrets: &SecretString,
    ) -> Result<SealedSecrets, String> {
        let (key_id, key) = self.keys.first().ok_or(
            "no [token_store] key is configured to encrypt the secret: add [token_store] keys to the config file (the same on every worker), or give the secret as { env = \"NAME\" } or { file = \"PATH\" }",
        )?;
        let mut nonce = vec![0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| format!("no random nonce: {e}"))?;
        let mut tag = [0u8; TAG_LEN];
        let mut ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            &registry_associated_data(identity),
            secrets.expose_secret().as_bytes(),
            &mut tag,
        )
        .map_err(|e| format!("cannot encrypt the secret: {e}"))?;
        ciphertext.extend_from_slice(&tag);
        Ok(SealedSecrets {
            ciphertext,
            nonce,
            key_id: key_id.clone(),
        })
    }

    /// Decrypts the secrets of the registry's identity `identity` with the key they name.
    pub fn open_identity_secrets(
        &self,
        identity: &str,
        sealed: &SealedSecrets,
    ) -> Result<SecretString, String> {
        let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == sealed.key_id) else {
            return Err(format!(
                "its secrets were encrypted with [token_store] key `{}`, which this worker does not have: give every worker the same [token_store] keys",
                sealed.key_id
            ));
        };
        if sealed.ciphertext.len() < TAG_LEN {
            return Err("its stored secrets are truncated".into());
        }
        let (ciphertext, tag) = sealed
            .ciphertext
            .split_at(sealed.ciphertext.len() - TAG_LEN);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&sealed.nonce),
            &registry_associated_data(identity),
            ciphertext,
            tag,
        )
        .map_err(|_| {
            format!(
                "its secrets do not decrypt with [token_store] key `{}` (a different key under the same id?): fix the key, or give the secret again with `mailintake identity set {identity}`",
                sealed.key_id
            )
        })?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| "its stored secrets are not text".into())
    }
}

fn registry_associated_data(identity: &str) -> Vec<u8> {
    format!("mailintake/registry_identities\0{identity}\0secrets").into_bytes()
}

fn associated_data(identity: &str, scope: &str) -> Vec<u8> {
    format!("mailintake/oauth_tokens\0{identity}\0{scope}\0refresh_token").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> TokenKey {
        TokenKey {
            id: id.into(),
            key_hex: SecretString::from(format!("{byte:02x}").repeat(32)),
        }
    }

    #[test]
    fn sealed_tokens_open_only_for_their_row_and_key() {
        let keys = TokenKeys::new(&[key("k1", 1)]);
        let token = SecretString::from("1.AQsA-refresh-token");
        let sealed = keys.seal("contoso", "scope", &token, None).unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(
            !sealed.ciphertext.windows(10).any(|w| w == b"refresh-to"),
            "ciphertext is not the plaintext"
        );
        assert_eq!(
            keys.open("contoso", "scope", &sealed)
                .unwrap()
                .expose_secret(),
            "1.AQsA-refresh-token"
        );
        // Another row's identity or scope does not decrypt it.
        assert!(keys.open("other", "scope", &sealed).is_err());
        assert!(keys.open("contoso", "other", &sealed).is_err());
        // Nonces are fresh.
        let again = keys.seal("contoso", "scope", &token, None).unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }

    #[test]
    fn registry_secrets_open_only_for_their_identity() {
        let keys = TokenKeys::new(&[key("k1", 1)]);
        let secrets = SecretString::from(r#"{"client_secret":"s3cr3t-value"}"#);
        let sealed = keys.seal_identity_secrets("acme", &secrets).unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(
            keys.open_identity_secrets("acme", &sealed)
                .unwrap()
                .expose_secret(),
            secrets.expose_secret()
        );
        assert!(keys.open_identity_secrets("other", &sealed).is_err());
        let err = TokenKeys::new(&[key("k2", 2)])
            .open_identity_secrets("acme", &sealed)
            .unwrap_err();
        assert!(err.contains("`k1`"), "{err}");
        assert!(
            TokenKeys::new(&[])
                .seal_identity_secrets("acme", &secrets)
                .is_err()
        );
    }

    #[test]
    fn rotation_first_key_encrypts_all_keys_decrypt() {
        let old = TokenKeys::new(&[key("2026-01", 1)]);
        let sealed_old = old
            .seal("contoso", "s", &SecretString::from("rt"), None)
            .unwrap();
        let rotated = TokenKeys::new(&[key("2026-11", 2), key("2026-01", 1)]);
        assert_eq!(
            rotated
                .open("contoso", "s", &sealed_old)
                .unwrap()
                .expose_secret(),
            "rt"
        );
        let sealed_new = rotated
            .seal("contoso", "s", &SecretString::from("rt2"), None)
            .unwrap();
        assert_eq!(sealed_new.key_id, "2026-11");
        // Once the old key is removed, its rows are named in the error.
        let only_new = TokenKeys::new(&[key("2026-11", 2)]);
        let error = only_new.open("contoso", "s", &sealed_old).unwrap_err();
        assert!(error.contains("`2026-01`"), "{error}");
        assert!(error.contains("mailintake login contoso"), "{error}");
        // The same id with other key bytes is detected, not garbage.
        let wrong = TokenKeys::new(&[key("2026-11", 3)]);
        assert!(wrong.open("contoso", "s", &sealed_new).is_err());
        assert!(!format!("{rotated:?}").contains("0202"));
    }
}
