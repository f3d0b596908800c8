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
    Config, ConfigProblem, FileTables, Identity, Mailbox, SECRET_KEYS, Table, identity_from_table,
    mailbox_from_table, merge_tables, remove_key,
};
use crate::ingest::sha256_hex;
use crate::oauth::sealed::TokenKeys;
use crate::store::registry::{IdentityRow, MailboxRow, RegistryWrite};
use crate::store::{Store, StoreError};

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
            match mailbox_from_table(&row.name, &table, &identity_names, base_dir) {
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

/// Why a registry command refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", render_invalid(.0))]
    Invalid(Vec<ConfigProblem>),
    #[error(
        "{kind} `{name}` is in the registry already: change it with `mailintake {kind} set {name}`"
    )]
    Exists { kind: &'static str, name: String },
    #[error("no {kind} `{name}` in the registry (`mailintake {kind} list` shows them)")]
    Missing { kind: &'static str, name: String },
    #[error(
        "identity `{identity}` is used by the registry's mailboxes {}: remove them first (`mailintake mailbox remove NAME`)", .mailboxes.join(", ")
    )]
    InUse {
        identity: String,
        mailboxes: Vec<String>,
    },
    #[error(
        "the registry has no mailbox yet and the config file has {n}: once the registry has one, every worker works on the registry's mailboxes only, so the file's would stop. Run `mailintake mailbox sync` first (it adds the file's mailboxes to the registry), then add this one"
    )]
    FileNotSynced { n: usize },
    #[error("{kind} `{name}` in the registry cannot be read: {reason}")]
    Unreadable {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("{0}")]
    Secret(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn render_invalid(problems: &[ConfigProblem]) -> String {
    let mut out = String::from("refused; nothing was changed:");
    for problem in problems {
        out.push_str(&format!("\n  - {}: {}", problem.key, problem.message));
    }
    out
}

/// What a registry command works with: the config file (validated, and its tables), its
/// directory, and the database.
pub struct Context<'a> {
    pub file: &'a Config,
    pub tables: &'a FileTables,
    pub base_dir: &'a Path,
    pub store: &'a Store,
}

/// What `mailbox sync` did with one of the file's mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Added,
    Updated,
    Unchanged,
}

impl Synced {
    pub fn name(self) -> &'static str {
        match self {
            Synced::Added => "added",
            Synced::Updated => "updated",
            Synced::Unchanged => "unchanged",
        }
    }
}

impl Context<'_> {
    fn keys(&self) -> TokenKeys {
        TokenKeys::new(&self.file.token_keys)
    }

    /// The identities a mailbox may name: the file's and the registry's usable ones.
    async fn identity_names(&self) -> Result<Vec<String>, RegistryError> {
        let registry = Registry::load(self.store).await?;
        let mut names: Vec<String> = effective(self.file, self.tables, &registry, self.base_dir)
            .config
            .identities
            .into_keys()
            .collect();
        names.sort();
        Ok(names)
    }

    /// `identity add NAME`: a new identity from its table (as `[identities.NAME]` in the file).
    pub async fn add_identity(&self, name: &str, table: Table) -> Result<(), RegistryError> {
        self.put_identity(name, table, false).await
    }

    /// `identity set NAME`: the identity's table with `changes` merged in and `unset` keys removed.
    pub async fn set_identity(
        &self,
        name: &str,
        changes: Table,
        unset: &[String],
    ) -> Result<(), RegistryError> {
        let row = self.identity_row(name).await?;
        let mut table =
            identity_table(&row, &self.keys()).map_err(|reason| RegistryError::Unreadable {
                kind: "identity",
                name: name.to_string(),
                reason,
            })?;
        merge_tables(&mut table, changes);
        for key in unset {
            remove_key(&mut table, key);
        }
        self.put_identity(name, table, true).await
    }

    async fn put_identity(
        &self,
        name: &str,
        mut table: Table,
        replace: bool,
    ) -> Result<(), RegistryError> {
        check_name(name, "identities")?;
        identity_from_table(
            name,
            &table,
            self.base_dir,
            !self.file.token_keys.is_empty(),
        )
        .map_err(RegistryError::Invalid)?;
        let sealed = match split_secrets(&mut table) {
            Some(secrets) => Some(
                self.keys()
                    .seal_identity_secrets(name, &secrets)
                    .map_err(RegistryError::Secret)?,
            ),
            None => None,
        };
        let settings = Value::Object(table).to_string();
        let written = self
            .store
            .put_registry_identity(name, &settings, sealed.as_ref(), replace)
            .await?;
        written_or(written, "identity", name)
    }

    /// `identity remove NAME`: refused while a registry mailbox names it.
    pub async fn remove_identity(&self, name: &str) -> Result<(), RegistryError> {
        let users = self.store.registry_mailboxes_of(name).await?;
        if !users.is_empty() {
            return Err(RegistryError::InUse {
                identity: name.to_string(),
                mailboxes: users,
            });
        }
        let written = self.store.delete_registry_identity(name).await?;
        written_or(written, "identity", name)
    }

    /// `mailbox add NAME`: a new mailbox from its table (as a `[[mailboxes]]` table).
    pub async fn add_mailbox(&self, name: &str, table: Table) -> Result<(), RegistryError> {
        let registry = Registry::load(self.store).await?;
        if !registry.has_mailboxes() && !self.tables.mailboxes.is_empty() {
            return Err(RegistryError::FileNotSynced {
                n: self.tables.mailboxes.len(),
            });
        }
        self.put_mailbox(name, table, false).await
    }

    /// `mailbox set NAME`: the mailbox's table with `changes` merged in and `unset` keys removed.
    pub async fn set_mailbox(
        &self,
        name: &str,
        changes: Table,
        unset: &[String],
    ) -> Result<(), RegistryError> {
        let row = self
            .store
            .registry_mailboxes()
            .await?
            .into_iter()
            .find(|row| row.name == name)
            .ok_or_else(|| RegistryError::Missing {
                kind: "mailbox",
                name: name.to_string(),
            })?;
        let mut table =
            parse_settings(&row.settings).map_err(|reason| RegistryError::Unreadable {
                kind: "mailbox",
                name: name.to_string(),
                reason,
            })?;
        merge_tables(&mut table, changes);
        for key in unset {
            remove_key(&mut table, key);
        }
        self.put_mailbox(name, table, true).await
    }

    async fn put_mailbox(
        &self,
        name: &str,
        mut table: Table,
        replace: bool,
    ) -> Result<(), RegistryError> {
        check_name(name, "mailboxes")?;
        let identities = self.identity_names().await?;
        let mailbox = mailbox_from_table(name, &table, &identities, self.base_dir)
            .map_err(RegistryError::Invalid)?;
        table.insert("name".into(), Value::String(name.to_string()));
        let settings = Value::Object(table).to_string();
        let written = self
            .store
            .put_registry_mailbox(name, &mailbox.identity, &settings, replace)
            .await?;
        written_or(written, "mailbox", name)
    }

    /// `mailbox enable|disable NAME`.
    pub async fn enable_mailbox(&self, name: &str, enabled: bool) -> Result<(), RegistryError> {
        let written = self
            .store
            .set_registry_mailbox_enabled(name, enabled)
            .await?;
        written_or(written, "mailbox", name)
    }

    /// `mailbox remove NAME`: the row goes; its tickets and messages stay.
    pub async fn remove_mailbox(&self, name: &str) -> Result<(), RegistryError> {
        let written = self.store.delete_registry_mailbox(name).await?;
        written_or(written, "mailbox", name)
    }

    /// `mailbox sync`: every mailbox of the file into the registry, added or made equal to the
    /// file's table (its `enabled` flag kept). All are validated before any is written.
    pub async fn sync(&self) -> Result<Vec<(String, Synced)>, RegistryError> {
        let identities = self.identity_names().await?;
        let mut problems = Vec::new();
        let mut valid = Vec::new();
        for table in &self.tables.mailboxes {
            let name = table
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match mailbox_from_table(&name, table, &identities, self.base_dir) {
                Ok(mailbox) => valid.push((name, mailbox.identity, table.clone())),
                Err(found) => problems.extend(found),
            }
        }
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        let rows: BTreeMap<String, MailboxRow> = self
            .store
            .registry_mailboxes()
            .await?
            .into_iter()
            .map(|row| (row.name.clone(), row))
            .collect();
        let mut outcomes = Vec::new();
        for (name, identity, table) in valid {
            let outcome = match rows.get(&name) {
                Some(row)
                    if parse_settings(&row.settings)
                        .is_ok_and(|registered| same_mailbox(&table, &registered)) =>
                {
                    Synced::Unchanged
                }
                Some(_) => Synced::Updated,
                None => Synced::Added,
            };
            if outcome != Synced::Unchanged {
                let settings = Value::Object(table).to_string();
                self.store
                    .put_registry_mailbox(&name, &identity, &settings, outcome == Synced::Updated)
                    .await?;
            }
            outcomes.push((name, outcome));
        }
        Ok(outcomes)
    }

    async fn identity_row(&self, name: &str) -> Result<IdentityRow, RegistryError> {
        self.store
            .registry_identities()
            .await?
            .into_iter()
            .find(|row| row.name == name)
            .ok_or_else(|| RegistryError::Missing {
                kind: "identity",
                name: name.to_string(),
            })
    }
}

/// A registry row's name: what the file's table would be keyed by, printable in a log line.
fn check_name(name: &str, table: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(vec![ConfigProblem {
            key: format!("{table}[{name}]"),
            message: "the name must be 1 to 100 letters, digits, `-`, `_` or `.`".into(),
        }]))
    }
}

fn written_or(written: RegistryWrite, kind: &'static str, name: &str) -> Result<(), RegistryError> {
    match written {
        RegistryWrite::Done => Ok(()),
        RegistryWrite::Exists => Err(RegistryError::Exists {
            kind,
            name: name.to_string(),
        }),
        RegistryWrite::Missing => Err(RegistryError::Missing {
            kind,
            name: name.to_string(),
        }),
    }
}

/// A mailbox of `config` by name (for the commands that name one).
pub fn find<'a>(config: &'a Config, name: &str) -> Option<&'a Mailbox> {
    config.mailboxes.iter().find(|m| m.name == name)
}

/// An identity of `config` by name.
pub fn find_identity<'a>(config: &'a Config, name: &str) -> Option<&'a Identity> {
    config.identities.get(name)
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

    #[test]
    fn names_are_checked() {
        assert!(check_name("acme-1.support_x", "mailboxes").is_ok());
        assert!(check_name("", "mailboxes").is_err());
        assert!(check_name("a b", "mailboxes").is_err());
        assert!(check_name("a/b", "mailboxes").is_err());
    }
}
