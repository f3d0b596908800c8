//! The file's shape: serde structs that mirror the TOML (unknown keys rejected), kept private to
//! `config` so that only validated values leave it. Closed sets (`dispose`, `mode`, `flow`, …) are
//! read as strings here and parsed in validation, so that a bad value is reported with its key
//! and validation goes on to find the others. `tls` is the exception: it is read as [`TlsMode`]
//! itself, so a bad value is reported by serde ("unknown value; expected one of: implicit,
//! starttls") with figment's key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use super::TlsMode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub database: Option<Database>,
    #[serde(default)]
    pub identities: BTreeMap<String, Identity>,
    #[serde(default)]
    pub mailboxes: Vec<Mailbox>,
    pub token_store: Option<TokenStore>,
    pub http: Option<Http>,
    pub fleet: Option<Fleet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub lease_ttl: Option<String>,
    pub acquire_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: Option<String>,
    pub bearer_token: Option<Secret>,
    pub api_token: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStore {
    #[serde(default)]
    pub keys: Vec<TokenKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKey {
    pub id: String,
    pub key: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// May hold a password: `{ env = … }` and `{ file = … }` keep it out of the file.
    pub url: Option<Secret>,
    /// PostgreSQL: the longest any statement may run, and wait for a lock.
    pub statement_timeout: Option<String>,
    pub lock_timeout: Option<String>,
    /// The most connections the worker's pool opens; computed from the tasks when absent.
    pub max_connections: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub flow: Option<String>,
    pub tenant: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub scope: Option<String>,
    pub authority: Option<String>,
    pub token_url: Option<String>,
    pub device_code_url: Option<String>,
    /// The authorization endpoint (Magma's "Authorization Endpoint (v2)"): names the authority.
    pub authorization_url: Option<String>,
    /// Where Entra sends the administrator after admin consent; registered on the app.
    pub consent_redirect_uri: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub refresh_token: Option<Secret>,
    pub secret_expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub name: String,
    pub address: String,
    pub identity: String,
    /// `"imap"` (the default) or `"graph"`.
    pub transport: Option<String>,
    /// `"smtp"` (the default with `[mailboxes.smtp]`) or `"graph"`.
    pub send: Option<String>,
    pub imap: Option<Imap>,
    pub graph: Option<Graph>,
    pub folder: Option<String>,
    pub folders: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    pub poll_interval: Option<String>,
    pub reconcile_interval: Option<String>,
    pub max_message_bytes: Option<u64>,
    pub dispose: Option<String>,
    pub processed_folder: Option<String>,
    pub quarantine_folder: Option<String>,
    pub junk_folder: Option<String>,
    pub idle: Option<bool>,
    pub idle_interval: Option<String>,
    pub fetch_batch_bytes: Option<u64>,
    pub fetch_batch_messages: Option<usize>,
    pub unreadable_after: Option<String>,
    pub mode: Option<String>,
    pub first_start: Option<String>,
    pub max_new_tickets_per_sender_per_hour: Option<u32>,
    pub reopen_closed: Option<bool>,
    pub automatic: Option<String>,
    pub keep_raw: Option<String>,
    pub smtp: Option<Smtp>,
    pub acknowledge: Option<Acknowledge>,
    pub send_as: Option<Vec<String>>,
    pub max_send_bytes: Option<u64>,
    pub allow_recipients: Option<Vec<String>>,
    pub sent_copy: Option<String>,
    pub sent_folder: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    pub port: Option<u16>,
    pub tls: Option<TlsMode>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Option<String>,
    pub max_per_minute: Option<u32>,
    pub max_recipients_per_day: Option<u32>,
    pub retry_delay: Option<String>,
    pub claim_lease: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Acknowledge {
    pub enabled: Option<bool>,
    pub follow_ups: Option<bool>,
    pub follow_up_interval: Option<String>,
    pub from: Option<String>,
    pub template: Option<PathBuf>,
    pub template_html: Option<PathBuf>,
    pub deny: Option<Vec<String>>,
    pub deny_defaults: Option<bool>,
    pub max_per_recipient_per_day: Option<u32>,
    pub since: Option<String>,
    pub quarantine_notice: Option<bool>,
    pub require_authentication: Option<bool>,
    pub authserv_id: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Imap {
    pub host: String,
    pub port: Option<u16>,
    pub tls: Option<TlsMode>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub logins_per_second: Option<u32>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub url: Option<String>,
    pub scope: Option<String>,
    pub max_concurrent_requests: Option<u32>,
    pub timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Sending through Graph (`send = "graph"`): Exchange's limits per mailbox.
    pub max_per_minute: Option<u32>,
    pub max_recipients_per_day: Option<u32>,
}

/// Where a secret comes from: `{ env = "NAME" }`, `{ file = "PATH" }`, or a plain string (meant
/// for `MAILINTAKE_…` environment overrides; avoid literal secrets in files).
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a secret: { env = \"NAME\" }, { file = \"PATH\" } or a string"
)]
pub enum Secret {
    Env { env: String },
    File { file: PathBuf },
    Literal(SecretString),
}

impl Secret {
    pub fn resolve(self, base_dir: &Path) -> Result<SecretString, String> {
        match self {
            Secret::Env { env } => match std::env::var(&env) {
                Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                Ok(_) => Err(format!(
                    "environment variable {env} is empty; set it to the secret"
                )),
                Err(_) => Err(format!(
                    "environment variable {env} is not set; set it to the secret"
                )),
            },
            Secret::File { file } => {
                let path = base_dir.join(&file);
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => Ok(SecretString::from(
                        text.trim_end_matches(['\r', '\n']).to_string(),
                    )),
                    Ok(_) => Err(format!("secret file {} is empty", path.display())),
                    Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
                }
            }
            Secret::Literal(secret) => Ok(secret),
        }
    }
}
