//! One function per command verb, called by `main.rs` through [`dispatch`]. Every line a command
//! prints (text or JSON) and every exit code it ends with is decided here; the work itself is done
//! by the library modules these functions call.
//!
//! - `service`: `run` (until SIGTERM/SIGINT) and `once`.
//! - `inspect`: read-only looks at what is stored (tickets, attachments, raw mail, the
//!   quarantine, the outbox) and at the Junk folder.
//! - `manage`: commands that change state (quarantine release and purge, reprocess, Junk
//!   release, retention purge, outbox retry and cancel) and `migrate`.
//! - `send`: `send`, a message handed to a mailbox's outbox (and, with `--wait`, sent).
//! - `setup`: `check`, `login` and `consent-url`, the commands of setting a mailbox up.
//! - `registry`: `mailbox …` and `identity …`, the registry's rows; and the configuration every
//!   other command works with: the file's with the registry's mailboxes and identities.

mod inspect;
mod manage;
mod registry;
mod send;
mod service;
mod setup;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Command, JunkAction, OutboxAction, QuarantineAction};
use crate::config::Config;
use crate::oauth::TokenCache;
use crate::store::Store;

/// Runs `command` to its end: `Ok` with the exit code it asks for (0 success, 1 a mailbox or
/// the database failed, 2 a usage or configuration mistake), `Err` for a failure the caller
/// prints and ends with exit code 1.
/// `config_path` is the file `config` was loaded from: `run` reads it again on SIGHUP, and the
/// registry's commands read its tables.
pub async fn dispatch(
    command: Command,
    config: Config,
    config_path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    // These two work from the configuration alone: they must answer without a database.
    match &command {
        Command::Check {
            mailbox,
            all,
            send_test_mail,
        } => {
            return setup::check(&config, mailbox.as_deref(), *all, send_test_mail.as_deref())
                .await;
        }
        Command::ConsentUrl { identity } => return setup::consent_url(&config, identity),
        _ => {}
    }
    // One worker per SQLite database (several share the mailboxes on PostgreSQL): held until
    // the command ends.
    let _worker = match &command {
        Command::Once => crate::store::lock_worker(config.database.url(), "once")?,
        Command::Run => crate::store::lock_worker(config.database.url(), "run")?,
        _ => None,
    };
    // Opening the store creates or upgrades the schema, which is all `migrate` asks for. The
    // pool is sized for the tasks of `run` and `once` (`run` sizes it again once it has read
    // the registry's mailboxes); every other command runs none.
    let tasks = match &command {
        Command::Once | Command::Run => crate::intake::fleet_units(&config).len(),
        _ => 0,
    };
    let store = Store::open_configured(&config.database, tasks)
        .await
        .context("opening the database")?;
    // Every command but these works on the file's mailboxes and identities with the registry's.
    let config = match &command {
        Command::Run | Command::Mailbox { .. } | Command::Identity { .. } | Command::Migrate => {
            config
        }
        _ => registry::effective_config(config, config_path, &store).await?,
    };
    let code = match command {
        Command::Check { .. } | Command::ConsentUrl { .. } => unreachable!("handled above"),
        Command::Mailbox { action } => {
            registry::mailbox(&config, config_path, &store, action).await?
        }
        Command::Identity { action } => {
            registry::identity(&config, config_path, &store, action).await?
        }
        Command::Login { identity } => setup::login(&config, &store, &identity).await?,
        Command::Migrate => manage::migrate(&config),
        Command::Workers => inspect::workers(&config, &store).await?,
        Command::Once => service::once(&config, &store).await,
        Command::Run => service::run(config, config_path, &store).await?,
        Command::Tickets { limit, since, json } => {
            inspect::tickets(&store, limit, since, json).await?
        }
        Command::Ticket { id, json } => inspect::ticket(&store, id, json).await?,
        Command::Attachment { id, out } => inspect::attachment(&store, id, &out).await?,
        Command::Raw { id, out } => inspect::raw(&store, id, &out).await?,
        Command::Quarantine { action } => match action {
            QuarantineAction::List { limit, json } => {
                inspect::quarantine_list(&store, limit, json).await?
            }
            QuarantineAction::Show { id } => inspect::quarantine_show(&store, id).await?,
            QuarantineAction::Purge {
                older_than,
                dry_run,
            } => manage::quarantine_purge(&store, older_than, dry_run).await?,
            QuarantineAction::Release { id, max_bytes } => {
                manage::quarantine_release(&config, &store, id, max_bytes).await?
            }
        },
        Command::Outbox { action } => match action {
            OutboxAction::List { state, limit, json } => {
                inspect::outbox_list(&store, state, limit, json).await?
            }
            OutboxAction::Retry { id } => manage::outbox_retry(&store, id).await?,
            OutboxAction::Cancel { id } => manage::outbox_cancel(&store, id).await?,
        },
        Command::Junk { action } => match action {
            JunkAction::List {
                mailbox,
                limit,
                json,
            } => inspect::junk_list(&config, &store, mailbox.as_deref(), limit, json).await?,
            JunkAction::Release { id, mailbox } => {
                manage::junk_release(&config, &store, mailbox.as_deref(), &id).await?
            }
        },
        Command::Purge {
            older_than,
            dry_run,
        } => manage::purge(&store, older_than, dry_run).await?,
        Command::Send(args) => send::send(&config, &store, *args).await?,
        Command::Reprocess { id, message } => {
            manage::reprocess(&config, &store, id, message).await?
        }
    };
    store.close().await;
    Ok(code)
}

/// The token cache of a command: access tokens in memory, refresh tokens sealed in the store.
fn token_cache(config: &Config, store: &Store) -> TokenCache {
    TokenCache::new().with_token_store(store.clone(), &config.token_keys)
}

/// What to say when a command names an identity the configuration does not declare.
fn unknown_identity(config: &Config, name: &str) -> String {
    let known: Vec<&str> = config.identities.keys().map(String::as_str).collect();
    format!(
        "no identity `{name}` is declared; declared identities: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// Writes `bytes` to a file that must not exist yet.
fn write_new_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    std::io::Write::write_all(&mut file, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Exit code 0 when `passed`, else 1.
fn success_if(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
