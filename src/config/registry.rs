//! The tables of the mailbox registry (`mailintake mailbox add`, `identity add`): one
//! `[[mailboxes]]` or `[identities.NAME]` table each, validated by exactly the code that validates
//! the file, so a registry row is refused with the same key-named problems a file would be.
//!
//! A table travels as JSON (a `serde_json` object, the form the registry stores), written by an
//! operator as TOML ([`table_from_toml`]). Problems are named `mailboxes[NAME].key` and
//! `identities.NAME.key`.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde_json::{Map, Value};

use super::problems::{ConfigProblem, Problems, figment_problems};
use super::{ConfigError, Grant, Identity, Mailbox, file_figment, identity, mailbox, raw};

/// The keys of an identity that hold secrets (`{ env }`, `{ file }` or the secret itself): what
/// the registry keeps encrypted when given as the secret itself.
pub const SECRET_KEYS: [&str; 3] = ["client_secret", "password", "refresh_token"];

/// One table as the registry keeps it: the keys of a `[[mailboxes]]` or `[identities.NAME]`
/// table, not yet validated.
pub type Table = Map<String, Value>;

/// The tables of a config file that the registry can hold: its `[[mailboxes]]` in order and its
/// `[identities.NAME]` by name, as written (secrets as their `{ env }`/`{ file }` references, or
/// the text), with the `MAILINTAKE_…` overrides applied as [`super::Config::load`] applies them.
#[derive(Debug, Clone, Default)]
pub struct FileTables {
    pub mailboxes: Vec<Table>,
    pub identities: BTreeMap<String, Table>,
}

/// Reads the tables of the file at `path` (see [`FileTables`]).
pub fn file_tables(path: &Path) -> Result<FileTables, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let figment = file_figment(path);
    let mailboxes: Vec<Table> = match figment.find_value("mailboxes") {
        Ok(_) => figment
            .extract_inner("mailboxes")
            .map_err(|e| invalid(figment_problems(e)))?,
        Err(_) => Vec::new(),
    };
    let identities: BTreeMap<String, Table> = match figment.find_value("identities") {
        Ok(_) => figment
            .extract_inner("identities")
            .map_err(|e| invalid(figment_problems(e)))?,
        Err(_) => BTreeMap::new(),
    };
    Ok(FileTables {
        mailboxes,
        identities,
    })
}

/// The keys of one table written in TOML (`key = "value"` lines, sub-tables as `imap = { … }` or
/// `[imap]`), as the registry keeps them. The problem names `what` (e.g. `mailboxes[acme]`).
pub fn table_from_toml(text: &str, what: &str) -> Result<Table, Vec<ConfigProblem>> {
    Figment::from(Toml::string(text))
        .extract::<Table>()
        .map_err(|e| prefixed(what, figment_problems(e)))
}

/// Merges `changes` into `table`: a key of `changes` replaces the table's, except that a
/// sub-table (`imap`, `smtp`, `acknowledge`) is merged key by key.
pub fn merge_tables(table: &mut Table, changes: Table) {
    for (key, value) in changes {
        match (table.get_mut(&key), value) {
            (Some(Value::Object(inner)), Value::Object(changes)) => merge_tables(inner, changes),
            (_, value) => {
                table.insert(key, value);
            }
        }
    }
}

/// Removes the key `path` (`dispose`, `imap.ca_file`) from `table`; false when it is not there.
pub fn remove_key(table: &mut Table, path: &str) -> bool {
    match path.split_once('.') {
        None => table.remove(path).is_some(),
        Some((head, rest)) => match table.get_mut(head) {
            Some(Value::Object(inner)) => remove_key(inner, rest),
            _ => false,
        },
    }
}

/// Validates the `[identities.NAME]` table `table`, as [`super::Config::load`] validates the
/// file's (relative paths against `base_dir`). `token_store` says whether `[token_store] keys`
/// are configured: a delegated identity needs them, as in the file.
pub fn identity_from_table(
    name: &str,
    table: &Table,
    base_dir: &Path,
    token_store: bool,
) -> Result<Identity, Vec<ConfigProblem>> {
    let what = format!("identities.{name}");
    let raw: raw::Identity = Figment::from(Serialized::defaults(table))
        .extract()
        .map_err(|e| prefixed(&what, figment_problems(e)))?;
    let mut problems = Problems::default();
    let identity = identity::validate_identity(name, raw, base_dir, &mut problems);
    if let Some(identity) = &identity
        && matches!(identity.grant, Grant::RefreshToken { .. })
        && !token_store
    {
        problems.report(
            "token_store.keys",
            format!(
                "missing; identity {name} keeps refresh tokens, which are stored encrypted: add keys = [{{ id = \"k1\", key = {{ env = \"MAILINTAKE_TOKEN_KEY\" }} }}] with a key from `openssl rand -base64 32`"
            ),
        );
    }
    problems
        .into_result(identity)
        .map(|identity| identity.expect("no problem means a usable identity"))
}

/// Validates the `[[mailboxes]]` table `table` of the mailbox `name` (its `name` key must be
/// `name` or absent), as [`super::Config::load`] validates the file's; `identities` are the
/// identities it may name, `known` those of them at hand (a Graph mailbox's cloud and grant are
/// checked against its identity when it is there).
pub fn mailbox_from_table(
    name: &str,
    table: &Table,
    identities: &[String],
    known: &BTreeMap<String, Identity>,
    base_dir: &Path,
) -> Result<Mailbox, Vec<ConfigProblem>> {
    let what = format!("mailboxes[{name}]");
    let mut table = table.clone();
    match table.get("name") {
        None => {
            table.insert("name".into(), Value::String(name.to_string()));
        }
        Some(Value::String(given)) if given == name => {}
        Some(_) => {
            return Err(vec![ConfigProblem {
                key: format!("{what}.name"),
                message: format!(
                    "names another mailbox than `{name}`; leave it out or write name = \"{name}\""
                ),
            }]);
        }
    }
    let raw: raw::Mailbox = Figment::from(Serialized::defaults(&table))
        .extract()
        .map_err(|e| prefixed(&what, figment_problems(e)))?;
    let mut problems = Problems::default();
    let mut mailboxes = mailbox::validate_mailboxes_as(
        vec![(what, raw)],
        identities,
        known,
        base_dir,
        &mut problems,
    );
    problems.into_result(mailboxes.remove(0))
}

/// Problems found in one table, named as keys of that table (`imap.host` → `mailboxes[acme].imap.host`).
fn prefixed(what: &str, problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
    problems
        .into_iter()
        .map(|problem| ConfigProblem {
            key: if problem.key == "(top level)" {
                what.to_string()
            } else {
                format!("{what}.{}", problem.key)
            },
            message: problem.message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_table() -> Table {
        table_from_toml(
            "tenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"",
            "identities.acme",
        )
        .unwrap()
    }

    #[test]
    fn a_registry_mailbox_is_refused_with_the_key_named() {
        let table = table_from_toml(
            "address = \"help@acme.test\"\nidentity = \"acme\"\ndispose = \"burn\"\nimap = { host = \"imap.acme.test\" }",
            "mailboxes[acme]",
        )
        .unwrap();
        let problems = mailbox_from_table(
            "acme",
            &table,
            &["acme".into()],
            &BTreeMap::new(),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "mailboxes[acme].dispose");
        assert!(problems[0].message.contains("\"seen\""), "{problems:?}");
    }

    #[test]
    fn a_missing_key_and_an_unknown_one_are_named_inside_the_table() {
        let table = table_from_toml(
            "address = \"help@acme.test\"\nidentity = \"acme\"\nimap = { port = 993 }\ncolour = \"red\"",
            "mailboxes[acme]",
        )
        .unwrap();
        let problems = mailbox_from_table(
            "acme",
            &table,
            &["acme".into()],
            &BTreeMap::new(),
            Path::new("."),
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"mailboxes[acme].colour"), "{problems:?}");
    }

    #[test]
    fn a_registry_mailbox_names_only_known_identities_and_its_own_name() {
        let table = table_from_toml(
            "address = \"help@acme.test\"\nidentity = \"nobody\"\nimap = { host = \"imap.acme.test\" }",
            "mailboxes[acme]",
        )
        .unwrap();
        let problems = mailbox_from_table(
            "acme",
            &table,
            &["acme".into()],
            &BTreeMap::new(),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[acme].identity");
        let mut named = table.clone();
        named.insert("name".into(), Value::String("other".into()));
        let problems = mailbox_from_table(
            "acme",
            &named,
            &["nobody".into()],
            &BTreeMap::new(),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[acme].name");
        let mailbox = mailbox_from_table(
            "acme",
            &table,
            &["nobody".into()],
            &BTreeMap::new(),
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(mailbox.name, "acme");
        assert_eq!(mailbox.folders, ["INBOX"]);
    }

    #[test]
    fn a_registry_identity_is_validated_as_the_file_validates_it() {
        let identity =
            identity_from_table("acme", &identity_table(), Path::new("."), false).unwrap();
        assert_eq!(identity.name, "acme");
        let mut table = identity_table();
        table.insert("flow".into(), Value::String("telepathy".into()));
        let problems = identity_from_table("acme", &table, Path::new("."), false).unwrap_err();
        assert_eq!(problems[0].key, "identities.acme.flow");
        let delegated = table_from_toml(
            "flow = \"device_code\"\ntenant = \"t\"\nclient_id = \"c\"",
            "identities.acme",
        )
        .unwrap();
        let problems = identity_from_table("acme", &delegated, Path::new("."), false).unwrap_err();
        assert_eq!(problems[0].key, "token_store.keys");
        assert!(identity_from_table("acme", &delegated, Path::new("."), true).is_ok());
    }

    #[test]
    fn set_merges_sub_tables_and_unset_removes_a_dotted_key() {
        let mut table = table_from_toml(
            "address = \"a@b.test\"\nimap = { host = \"h\", port = 993 }",
            "t",
        )
        .unwrap();
        merge_tables(
            &mut table,
            table_from_toml("dispose = \"delete\"\nimap = { port = 143 }", "t").unwrap(),
        );
        assert_eq!(table["imap"]["host"], "h");
        assert_eq!(table["imap"]["port"], 143);
        assert_eq!(table["dispose"], "delete");
        assert!(remove_key(&mut table, "imap.port"));
        assert!(!remove_key(&mut table, "imap.port"));
        assert!(table["imap"].get("port").is_none());
    }
}
