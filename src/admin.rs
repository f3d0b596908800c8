//! Admin actions that need more than SQL: releasing a quarantined message back into its folder.

use anyhow::{Context, bail};

use crate::config::Config;
use crate::imap;
use crate::ingest;
use crate::oauth::TokenCache;
use crate::store::Store;
use crate::worker::envelope_from_header;

/// Moves quarantined message `id` back to the folder it came from and lets it in once: up to
/// `max_bytes` (for `too-large`; the mailbox's limit otherwise) and past the per-sender limit.
/// Its UID changes with the move, so it is found by its Message-ID (or header/content key).
pub async fn release(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
    id: i64,
    max_bytes: Option<u64>,
) -> anyhow::Result<String> {
    let Some(entry) = store.quarantine_entry(id).await? else {
        bail!("no quarantined message with id {id}; `mailintake quarantine list` shows them");
    };
    if entry.released_at_ms.is_some() {
        bail!("quarantined message {id} was released already");
    }
    if entry.reason == "message-id-conflict" || entry.reason == "unparseable" {
        bail!(
            "quarantined message {id} ({}) would be quarantined again as it is; its raw bytes are kept in the quarantine table",
            entry.reason
        );
    }
    let Some(mailbox) = config.mailboxes.iter().find(|m| m.name == entry.mailbox) else {
        bail!(
            "mailbox `{}` of quarantined message {id} is not configured any more",
            entry.mailbox
        );
    };
    if entry.reason == "too-large"
        && max_bytes.unwrap_or(mailbox.max_message_bytes) < entry.size_bytes as u64
    {
        bail!(
            "the message is {} bytes; release it with --max-bytes {} or more",
            entry.size_bytes,
            entry.size_bytes
        );
    }
    let key = entry.message_id.clone().unwrap_or_default();
    let identity = config.identity(&mailbox.identity);
    let token = tokens.token(identity).await?;
    let mut conn = imap::connect(&mailbox.imap, &mailbox.address, &token)
        .await
        .context("logging in to move the message back")?;
    conn.select(&mailbox.quarantine_folder).await?;
    let listed = conn.list_above(0).await?;
    let mut found = None;
    for summary in &listed {
        let header = conn.fetch_identifying_headers(summary.uid).await?;
        if envelope_from_header(&header, summary).message_id == key {
            found = Some(summary.uid);
            break;
        }
    }
    if found.is_none() && entry.reason == "unreadable" {
        // Set aside unread, so known only by its size: it must be the only one of that size.
        let candidates: Vec<_> = listed
            .iter()
            .filter(|m| m.size == entry.size_bytes as u64)
            .collect();
        if let [only] = candidates.as_slice() {
            found = Some(only.uid);
        }
    }
    if found.is_none() && entry.reason != "unreadable" {
        // Mail without a Message-ID was keyed by its content: compare candidates of its size.
        for summary in listed.iter().filter(|m| m.size == entry.size_bytes as u64) {
            if let Some((_, imap::Body::Complete(raw))) =
                conn.fetch_bodies(&[summary.uid], summary.size).await?.pop()
                && ingest::parse(&raw).is_ok_and(|m| m.message_id == key)
            {
                found = Some(summary.uid);
                break;
            }
        }
    }
    let Some(uid) = found else {
        conn.logout().await;
        bail!(
            "message {id} is no longer in folder `{}` of {} (moved or deleted by someone?)",
            mailbox.quarantine_folder,
            mailbox.address
        );
    };
    // Record the release first: if the move then fails, the release simply waits unused.
    store.mark_released(id, max_bytes.map(|b| b as i64)).await?;
    conn.ensure_folder(&entry.folder).await?;
    conn.move_to(&[uid], &entry.folder).await?;
    conn.logout().await;
    Ok(format!(
        "released quarantined message {id} back to `{}` of {}; the next sweep ingests it",
        entry.folder, mailbox.address
    ))
}
