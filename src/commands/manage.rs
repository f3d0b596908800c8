//! Commands that change state: letting quarantined mail in (release, reprocess), moving a message
//! out of Junk, the retention purges, the outbox's retry and cancel, and `migrate`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::token_cache;
use crate::config::Config;
use crate::store::Store;
use crate::time::{now_ms, rfc3339};
use crate::{admin, junk};

/// `mailintake migrate`: the store was opened (and so migrated) before this is called.
pub(super) fn migrate(config: &Config) -> ExitCode {
    println!(
        "database schema is up to date ({})",
        config.database.redacted_url()
    );
    ExitCode::SUCCESS
}

/// `mailintake quarantine release ID [--max-bytes N]`: the message goes back to its folder and is
/// let in once.
pub(super) async fn quarantine_release(
    config: &Config,
    store: &Store,
    id: i64,
    max_bytes: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let tokens = token_cache(config, store);
    println!(
        "{}",
        admin::release(config, store, &tokens, id, max_bytes).await?
    );
    Ok(ExitCode::SUCCESS)
}

/// `mailintake quarantine purge --older-than AGE [--dry-run]`: deletes old quarantine rows, never
/// a release still waiting for its message.
pub(super) async fn quarantine_purge(
    store: &Store,
    older_than: Duration,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let cutoff = now_ms() - older_than.as_millis() as i64;
    let report = store.quarantine_purge(cutoff, dry_run).await?;
    println!(
        "{} {} quarantine row(s) older than {} ({} raw bytes){}",
        if dry_run { "would delete" } else { "deleted" },
        report.rows,
        humantime::format_duration(older_than),
        report.raw_bytes,
        if report.kept_released_pending > 0 {
            format!(
                "; kept {} released message(s) that have not come in yet",
                report.kept_released_pending
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `mailintake reprocess ID` (a quarantined message) or `reprocess --message ID` (a kept article):
/// re-parse stored raw mail with the current code and record the outcome once.
pub(super) async fn reprocess(
    config: &Config,
    store: &Store,
    id: i64,
    message: bool,
) -> anyhow::Result<ExitCode> {
    let done = if message {
        admin::reprocess_article(store, id).await?
    } else {
        admin::reprocess_quarantined(config, store, id).await?
    };
    println!("{done}");
    Ok(ExitCode::SUCCESS)
}

/// `mailintake junk release ID [--mailbox NAME]`: moves one message from Junk to the inbox,
/// where the worker ingests it.
pub(super) async fn junk_release(
    config: &Config,
    store: &Store,
    mailbox: Option<&str>,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let tokens = token_cache(config, store);
    let mailbox = junk::pick_mailbox(config, mailbox)?;
    println!("{}", junk::release(config, &tokens, mailbox, id).await?);
    Ok(ExitCode::SUCCESS)
}

/// `mailintake purge --older-than AGE [--dry-run]`: retention; removes the content of old mail
/// (raw messages, quarantine raw bytes, attachment contents), never its rows.
pub(super) async fn purge(
    store: &Store,
    older_than: Duration,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let cutoff = now_ms() - older_than.as_millis() as i64;
    let r = store.purge_older_than(cutoff, dry_run).await?;
    println!(
        "{} mail stored before {}:\n  raw messages: {} ({} bytes)\n  quarantine raw bytes: {} message(s) ({} bytes)\n  attachment contents: {} attachment(s), {} distinct content(s) ({} bytes)",
        if dry_run { "would purge" } else { "purged" },
        rfc3339(cutoff),
        r.raw_messages,
        r.raw_message_bytes,
        r.quarantine_raw,
        r.quarantine_raw_bytes,
        r.attachments,
        r.attachment_blobs,
        r.attachment_blob_bytes
    );
    Ok(ExitCode::SUCCESS)
}

/// `mailintake outbox retry ID`: a failed or cancelled row becomes due now.
pub(super) async fn outbox_retry(store: &Store, id: i64) -> anyhow::Result<ExitCode> {
    if !store.outbox_retry(id).await? {
        bail!("outbox row {id} is not failed, cancelled or pending (or does not exist)");
    }
    println!("outbox row {id} is due now; a running worker (or the next `once`) sends it");
    Ok(ExitCode::SUCCESS)
}

/// `mailintake outbox cancel ID`: a row that has not been sent is never sent.
pub(super) async fn outbox_cancel(store: &Store, id: i64) -> anyhow::Result<ExitCode> {
    if !store.outbox_cancel(id).await? {
        bail!("outbox row {id} is sent, being sent, or does not exist");
    }
    println!("outbox row {id} is cancelled");
    Ok(ExitCode::SUCCESS)
}
