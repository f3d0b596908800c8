//! The mailbox registry (issue 17): mailboxes and identities kept in the database, managed at run
//! time (`mailintake mailbox add|set|disable|enable|remove|list|sync`, `mailintake identity
//! add|set|remove|list`) and followed by every worker of the fleet without a restart.
//!
//! A row is one table of the config file's form (`[[mailboxes]]`, `[identities.NAME]`), its keys
//! as JSON, validated by the same code as the file (`config::mailbox_from_table`,
//! `config::identity_from_table`): an invalid row is refused by the command with the same
//! key-named problems. An identity's secret given as text is sealed with the token store's key
//! (`oauth::sealed`); `{ env }`/`{ file }` references stay references, resolved by each worker.
//!
//! What a worker works on ([`effective`]): the file's identities and the registry's (the
//! registry's win a name both have); the registry's enabled mailboxes once the registry has any
//! mailbox row, else the file's. The differences between the file and a registry in use are
//! named (the worker logs each once and follows the registry), so a rolling change never makes
//! workers with an older file fight over a mailbox.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::{
    Config, ConfigProblem, FileTables, SECRET_KEYS, Table, identity_from_table, mailbox_from_table,
};
use crate::ingest::sha256_hex;

mod change;
use crate::oauth::sealed::TokenKeys;
use crate::store::registry::{IdentityRow, MailboxRow};
use crate::store::{Store, StoreError};
pub use change::{Context, RegistryError, Synced};

/// The registry's rows as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub generation: i64,
    pub identities: Vec<IdentityRow>,
    pub mailboxes: Vec<MailboxRow>,
}

impl Registry {
    /// Reads every row (the generation first: a change after it is seen at the next look).
    pub async fn load(store: &Store) -> Result<Registry, StoreError> {
        let generation = store.registry_generation().await?;
        Ok(Registry {
            generation,
            identities: store.registry_identities().await?,
            mailboxes: store.registry_mailboxes().await?,
        })
    }

    /// True once the registry has a mailbox row (enabled or not): then the workers follow the
    /// registry's mailboxes, not their files'.
    pub fn has_mailboxes(&self) -> bool {
        !self.mailboxes.is_empty()
    }
}

/// Where a worker's mailboxes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxSource {
    /// The config file's (the registry has no mailbox row).
    File,
    /// The registry's enabled rows.
    Registry,
}

/// What a worker works on, with what it could not use and where its file disagrees.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: Config,
    pub source: MailboxSource,
    /// Per mailbox of `config`, a digest of its settings and its identity's: a mailbox whose
    /// digest changed is started again with its new settings.
    pub fingerprints: BTreeMap<String, String>,
    /// Where the file and the registry disagree (sentences; the registry is followed).
    pub differences: Vec<String>,
    /// Registry rows this worker cannot use (sentences naming the row, the problem and the fix).
    pub unusable: Vec<String>,
}

/// The configuration a worker works on: `file` (validated, its tables `tables`) with the
/// registry's identities and mailboxes (see the module's text). Relative paths in registry rows
/// resolve against `base_dir`, the config file's directory.
pub fn effective(
    file: &Config,
    tables: &FileTables,
    registry: &Registry,
    base_dir: &Path,
) -> Effective {
    let keys = TokenKeys::new(&file.token_keys);
    let mut config = file.clone();
    let mut differences = Vec::new();
    let mut unusable = Vec::new();
    // The digest of each identity's settings as this worker reads them.
    let mut identity_digests: BTreeMap<String, String> = tables
        .identities
        .iter()
        .map(|(name, table)| (name.clone(), digest(table)))
        .collect();
    for row in &registry.identities {
        let table = match identity_table(row, &keys) {
            Ok(table) => table,
            Err(reason) => {
                unusable.push(format!("identity {}: {reason}", row.name));
                config.identities.remove(&row.name);
                continue;
            }
        };
        if let Some(in_file) = tables.identities.get(&row.name)
            && in_file != &table
        {
            differences.push(format!(
                "identity {} is in the file and in the registry with other settings ({}); the registry's are used",
                row.name,
                differing_keys(in_file, &table)
            ));
        }
        match identity_from_table(&row.name, &table, base_dir, !file.token_keys.is_empty()) {
            Ok(identity) => {
                identity_digests.insert(row.name.clone(), digest(&table));
                config.identities.insert(row.name.clone(), identity);
            }
            Err(problems) => {
                unusable.push(format!(
                    "identity {} cannot be used on this worker: {}",
                    row.name,
                    render(&problems)
                ));
                config.identities.remove(&row.name);
            }
        }
    }
    let identity_names: Vec<String> = config.identities.keys().cloned().collect();
    let mut fingerprints = BTreeMap::new();
    let source = if registry.has_mailboxes() {
        let mut mailboxes = Vec::new();
        for row in registry.mailboxes.iter().filter(|row| row.enabled) {
            let table = match parse_settings(&row.settings) {
                Ok(table) => table,
                Err(reason) => {
                    unusable.push(format!("mailbox {}: {reason}", row.name));
                    continue;
                }
            };
            match mailbox_from_table(
                &row.name,
                &table,
                &identity_names,
                &config.identities,
                base_dir,
            ) {
                Ok(mailbox) => {
                    fingerprints.insert(
                        mailbox.name.clone(),
                        fingerprint(&table, identity_digests.get(&mailbox.identity)),
                    );
                    mailboxes.push(mailbox);
                }
                Err(problems) => unusable.push(format!(
                    "mailbox {} cannot be used on this worker: {}",
                    row.name,
                    render(&problems)
                )),
            }
        }
        differences.extend(file_differences(tables, registry));
        config.mailboxes = mailboxes;
        MailboxSource::Registry
    } else {
        for (mailbox, table) in config.mailboxes.iter().zip(&tables.mailboxes) {
            fingerprints.insert(
                mailbox.name.clone(),
                fingerprint(table, identity_digests.get(&mailbox.identity)),
            );
        }
        MailboxSource::File
    };
    Effective {
        config,
        source,
        fingerprints,
        differences,
        unusable,
    }
}

/// Where the file's mailboxes and a registry in use disagree.
fn file_differences(tables: &FileTables, registry: &Registry) -> Vec<String> {
    let mut differences = Vec::new();
    let rows: BTreeMap<&str, &MailboxRow> = registry
        .mailboxes
        .iter()
        .map(|row| (row.name.as_str(), row))
        .collect();
    let mut in_file = Vec::new();
    for table in &tables.mailboxes {
        let Some(name) = table.get("name").and_then(Value::as_str) else {
            continue;
        };
        in_file.push(name);
        match rows.get(name) {
            None => differences.push(format!(
                "mailbox {name} is in the config file but not in the registry, which the fleet follows: it is not worked on (`mailintake mailbox sync` adds the file's mailboxes to the registry)"
            )),
            Some(row) => {
                if let Ok(registered) = parse_settings(&row.settings)
                    && !same_mailbox(table, &registered)
                {
                    differences.push(format!(
                        "mailbox {name} has other settings in the config file than in the registry ({}); the registry's are used",
                        differing_keys(table, &registered)
                    ));
                }
                if !row.enabled {
                    differences.push(format!(
                        "mailbox {name} is in the config file but disabled in the registry: it is not worked on"
                    ));
                }
            }
        }
    }
    if !in_file.is_empty() {
        for row in &registry.mailboxes {
            if row.enabled && !in_file.contains(&row.name.as_str()) {
                differences.push(format!(
                    "mailbox {} is in the registry but not in the config file; it is worked on",
                    row.name
                ));
            }
        }
    }
    differences
}

/// A file's table and a registry row say the same (the row may leave out `name`).
fn same_mailbox(file: &Table, registered: &Table) -> bool {
    let mut file = file.clone();
    let mut registered = registered.clone();
    file.remove("name");
    registered.remove("name");
    file == registered
}

/// The top-level keys where two tables differ, e.g. "dispose, imap"; never the values.
fn differing_keys(a: &Table, b: &Table) -> String {
    let mut keys: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .map(String::as_str)
        .filter(|key| *key != "name" && a.get(*key) != b.get(*key))
        .collect();
    keys.sort();
    keys.dedup();
    keys.join(", ")
}

/// A digest of `table` with its keys in order (any secret in it only hashed).
fn digest(table: &Table) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for key in keys {
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                    out.push(',');
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for item in items {
                    canonical(item, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(&Value::Object(table.clone()), &mut text);
    sha256_hex(text.as_bytes())
}

fn fingerprint(mailbox: &Table, identity: Option<&String>) -> String {
    let mut table = mailbox.clone();
    table.remove("name");
    format!(
        "{}/{}",
        digest(&table),
        identity.map(String::as_str).unwrap_or("")
    )
}

/// Stored settings text back to a table.
fn parse_settings(settings: &str) -> Result<Table, String> {
    match serde_json::from_str::<Value>(settings) {
        Ok(Value::Object(table)) => Ok(table),
        _ => Err(
            "its stored settings are not a JSON object (written by another program?): give them again with `mailintake mailbox set`/`identity set`"
                .into(),
        ),
    }
}

/// An identity row's whole table: its settings with its sealed secrets opened into them.
fn identity_table(row: &IdentityRow, keys: &TokenKeys) -> Result<Table, String> {
    let mut table = parse_settings(&row.settings)?;
    if let Some(sealed) = &row.secrets {
        let opened = keys.open_identity_secrets(&row.name, sealed)?;
        let Ok(Value::Object(secrets)) = serde_json::from_str::<Value>(opened.expose_secret())
        else {
            return Err("its stored secrets are not a JSON object".into());
        };
        table.extend(secrets);
    }
    Ok(table)
}

/// Splits the secrets given as text (`client_secret = "…"`) out of an identity's table, to be
/// sealed; references (`{ env }`, `{ file }`) stay in the table.
fn split_secrets(table: &mut Table) -> Option<SecretString> {
    let mut secrets = serde_json::Map::new();
    for key in SECRET_KEYS {
        if let Some(Value::String(_)) = table.get(key)
            && let Some(value) = table.remove(key)
        {
            secrets.insert(key.to_string(), value);
        }
    }
    (!secrets.is_empty()).then(|| SecretString::from(Value::Object(secrets).to_string()))
}

fn render(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        crate::config::table_from_toml(text, "t").unwrap()
    }

    #[test]
    fn secrets_given_as_text_are_split_out_and_references_stay() {
        let mut t =
            table("client_id = \"c\"\nclient_secret = \"hunter2\"\npassword = { env = \"PW\" }");
        let secrets = split_secrets(&mut t).expect("one secret");
        assert!(secrets.expose_secret().contains("hunter2"));
        assert!(t.get("client_secret").is_none());
        assert_eq!(t["password"]["env"], "PW");
        assert!(!Value::Object(t.clone()).to_string().contains("hunter2"));
        assert!(split_secrets(&mut t).is_none());
    }

    #[test]
    fn a_digest_does_not_depend_on_key_order_and_differences_name_keys_only() {
        let a = table("x = 1\ny = { b = 2, a = \"s3cret\" }");
        let b = table("y = { a = \"s3cret\", b = 2 }\nx = 1");
        assert_eq!(digest(&a), digest(&b));
        let c = table("x = 1\ny = { b = 2, a = \"other\" }");
        assert_ne!(digest(&a), digest(&c));
        assert_eq!(differing_keys(&a, &c), "y");
        assert!(same_mailbox(&a, &b));
    }
}
