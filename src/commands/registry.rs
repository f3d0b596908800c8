//! The registry's commands: `mailbox add|set|disable|enable|remove|list|sync` and `identity
//! add|set|remove|list`. Each changes one row (sync: the file's mailboxes), validated by the
//! config file's code; the running workers follow within seconds. Exit code 2 for a refused
//! table (every problem named by its key), 1 for any other refusal.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;

use crate::cli::{IdentityAction, MailboxAction, TableArgs};
use crate::config::{Config, FileTables, Table, file_tables, table_from_toml};
use crate::registry::{self, Context, MailboxSource, Registry, RegistryError};
use crate::store::Store;
use crate::time::rfc3339;

/// How soon the running workers see a change (`intake::REGISTRY_POLL`, plus a lease's
/// acquisition), as the commands say it.
const PICKED_UP: &str = "the running workers follow within 10 s";

/// `mailintake mailbox …`.
pub(super) async fn mailbox(
    config: &Config,
    config_path: &Path,
    store: &Store,
    action: MailboxAction,
) -> anyhow::Result<ExitCode> {
    let tables = file_tables(config_path)?;
    let base_dir = base_dir(config_path);
    let ctx = Context {
        file: config,
        tables: &tables,
        base_dir: &base_dir,
        store,
    };
    let (done, outcome) = match action {
        MailboxAction::Add { name, table } => {
            let table = match read_table(&table, &format!("mailboxes[{name}]"))? {
                Ok(table) => table,
                Err(code) => return Ok(code),
            };
            (
                format!("mailbox {name} added; {PICKED_UP}"),
                ctx.add_mailbox(&name, table).await,
            )
        }
        MailboxAction::Set { name, table, unset } => {
            let table = match read_table(&table, &format!("mailboxes[{name}]"))? {
                Ok(table) => table,
                Err(code) => return Ok(code),
            };
            (
                format!("mailbox {name} changed; {PICKED_UP}"),
                ctx.set_mailbox(&name, table, &unset).await,
            )
        }
        MailboxAction::Disable { name } => (
            format!("mailbox {name} disabled; {PICKED_UP} (its tasks log out)"),
            ctx.enable_mailbox(&name, false).await,
        ),
        MailboxAction::Enable { name } => (
            format!("mailbox {name} enabled; {PICKED_UP}"),
            ctx.enable_mailbox(&name, true).await,
        ),
        MailboxAction::Remove { name } => (
            format!(
                "mailbox {name} removed from the registry (its tickets and messages stay); {PICKED_UP}"
            ),
            ctx.remove_mailbox(&name).await,
        ),
        MailboxAction::List { json } => return list_mailboxes(&ctx, json).await,
        MailboxAction::Sync => match ctx.sync().await {
            Ok(outcomes) => {
                for (name, synced) in &outcomes {
                    println!("mailbox {name}: {}", synced.name());
                }
                println!(
                    "{} mailboxes of {} are in the registry; {PICKED_UP}",
                    outcomes.len(),
                    config_path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => (String::new(), Err(e)),
        },
    };
    Ok(finish(done, outcome))
}

/// `mailintake identity …`.
pub(super) async fn identity(
    config: &Config,
    config_path: &Path,
    store: &Store,
    action: IdentityAction,
) -> anyhow::Result<ExitCode> {
    let tables = file_tables(config_path)?;
    let base_dir = base_dir(config_path);
    let ctx = Context {
        file: config,
        tables: &tables,
        base_dir: &base_dir,
        store,
    };
    let (done, outcome) = match action {
        IdentityAction::Add { name, table } => {
            let table = match read_table(&table, &format!("identities.{name}"))? {
                Ok(table) => table,
                Err(code) => return Ok(code),
            };
            (
                format!("identity {name} added; mailboxes may name it now"),
                ctx.add_identity(&name, table).await,
            )
        }
        IdentityAction::Set { name, table, unset } => {
            let table = match read_table(&table, &format!("identities.{name}"))? {
                Ok(table) => table,
                Err(code) => return Ok(code),
            };
            (
                format!("identity {name} changed; its mailboxes start again with it: {PICKED_UP}"),
                ctx.set_identity(&name, table, &unset).await,
            )
        }
        IdentityAction::Remove { name } => (
            format!("identity {name} removed from the registry"),
            ctx.remove_identity(&name).await,
        ),
        IdentityAction::List { json } => return list_identities(&ctx, json).await,
    };
    Ok(finish(done, outcome))
}

/// Prints what was done, or why not; exit code 2 for a refused table, 1 for other refusals.
fn finish(done: String, outcome: Result<(), RegistryError>) -> ExitCode {
    match outcome {
        Ok(()) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e @ RegistryError::Invalid(_)) => {
            eprintln!("mailintake: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("mailintake: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The table of `--file` and `--toml`; its TOML problems printed (exit code 2) as `Err`.
fn read_table(args: &TableArgs, what: &str) -> anyhow::Result<Result<Table, ExitCode>> {
    let mut text = String::new();
    match args.file.as_deref() {
        Some(path) if path == Path::new("-") => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the table from stdin")?;
        }
        Some(path) => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the table from {}", path.display()))?;
        }
        None => {}
    }
    for line in &args.toml {
        text.push('\n');
        text.push_str(line);
    }
    Ok(table_from_toml(&text, what).map_err(|problems| {
        eprintln!("mailintake: {}", RegistryError::Invalid(problems));
        ExitCode::from(2)
    }))
}

fn base_dir(config_path: &Path) -> std::path::PathBuf {
    config_path.parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// `mailbox list`: where the fleet's mailboxes come from, then each row and whether this host
/// can use it.
async fn list_mailboxes(ctx: &Context<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let registry = Registry::load(ctx.store).await?;
    let effective = registry::effective(ctx.file, ctx.tables, &registry, ctx.base_dir);
    let problem_of = |name: &str| {
        let prefix = format!("mailbox {name} ");
        effective
            .unusable
            .iter()
            .find(|line| line.starts_with(&prefix))
            .cloned()
    };
    if json {
        for row in &registry.mailboxes {
            let settings: Value = serde_json::from_str(&row.settings).unwrap_or(Value::Null);
            println!(
                "{}",
                serde_json::json!({
                    "name": row.name,
                    "identity": row.identity,
                    "enabled": row.enabled,
                    "version": row.version,
                    "updated_at": rfc3339(row.updated_at_ms).to_string(),
                    "problem": problem_of(&row.name),
                    "settings": settings,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    match effective.source {
        MailboxSource::Registry => println!(
            "the fleet works on the registry's {} enabled mailboxes",
            effective.config.mailboxes.len()
        ),
        MailboxSource::File => println!(
            "the registry has no mailbox: each worker works on its config file's ({} here)",
            ctx.tables.mailboxes.len()
        ),
    }
    for row in &registry.mailboxes {
        println!(
            "{}  {}  identity {}  version {}  updated {}{}",
            row.name,
            if row.enabled { "enabled" } else { "disabled" },
            row.identity,
            row.version,
            rfc3339(row.updated_at_ms),
            problem_of(&row.name)
                .map(|p| format!("\n    not usable here: {p}"))
                .unwrap_or_default()
        );
    }
    for difference in &effective.differences {
        println!("note: {difference}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `identity list`: each row, its flow and how its secrets are kept; never a secret.
async fn list_identities(ctx: &Context<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let registry = Registry::load(ctx.store).await?;
    let effective = registry::effective(ctx.file, ctx.tables, &registry, ctx.base_dir);
    for row in &registry.identities {
        let settings: Value = serde_json::from_str(&row.settings).unwrap_or(Value::Null);
        let flow = settings
            .get("flow")
            .and_then(Value::as_str)
            .unwrap_or("client_credentials")
            .to_string();
        let sealed_with = row.secrets.as_ref().map(|s| s.key_id.clone());
        let prefix = format!("identity {} ", row.name);
        let problem = effective
            .unusable
            .iter()
            .find(|line| line.starts_with(&prefix))
            .cloned();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "name": row.name,
                    "flow": flow,
                    "secrets_sealed_with": sealed_with,
                    "version": row.version,
                    "updated_at": rfc3339(row.updated_at_ms).to_string(),
                    "problem": problem,
                })
            );
        } else {
            println!(
                "{}  flow {flow}  {}  version {}  updated {}{}",
                row.name,
                match &sealed_with {
                    Some(key) => format!("secrets encrypted with key {key}"),
                    None => "no stored secret".to_string(),
                },
                row.version,
                rfc3339(row.updated_at_ms),
                problem
                    .map(|p| format!("\n    not usable here: {p}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration an ordinary command works with: the file's, with the registry's
/// identities and mailboxes (what `run` works on). Rows this host cannot use are named in a
/// warning.
pub(super) async fn effective_config(
    config: Config,
    config_path: &Path,
    store: &Store,
) -> anyhow::Result<Config> {
    let tables: FileTables = file_tables(config_path)?;
    let registry = Registry::load(store).await?;
    let effective = registry::effective(&config, &tables, &registry, &base_dir(config_path));
    for line in &effective.unusable {
        tracing::warn!("{line}");
    }
    Ok(effective.config)
}
