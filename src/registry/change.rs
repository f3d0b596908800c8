//! The registry's changes, as the commands make them ([`Context`]): each validated by the config
//! file's code before anything is written, an identity's secrets given as text split out and
//! sealed, and a refusal that says what to do ([`RegistryError`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{Registry, effective, identity_table, parse_settings, same_mailbox, split_secrets};
use crate::config::{
    Config, ConfigProblem, FileTables, Table, identity_from_table, mailbox_from_table,
    merge_tables, remove_key,
};
use crate::oauth::sealed::TokenKeys;
use crate::store::Store;
use crate::store::StoreError;
use crate::store::registry::{IdentityRow, MailboxRow, RegistryWrite};

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
        let mailbox = mailbox_from_table(
            name,
            &table,
            &identities,
            &self.file.identities,
            self.base_dir,
        )
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
            match mailbox_from_table(
                &name,
                table,
                &identities,
                &self.file.identities,
                self.base_dir,
            ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("acme-1.support_x", "mailboxes").is_ok());
        assert!(check_name("", "mailboxes").is_err());
        assert!(check_name("a b", "mailboxes").is_err());
        assert!(check_name("a/b", "mailboxes").is_err());
    }
}
