//! The Junk folder: real customer mail sometimes lands there, and Exchange admins are told to
//! check it weekly. `mailintake junk list` shows what sits there from header fields only (bodies
//! are never read), `junk release` moves one message to the inbox so the worker ingests it as
//! ordinary mail, and [`watch`] counts it for the status page every few minutes, so the page never
//! opens an IMAP session of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::admin;
use crate::config::{Config, GraphEndpoint, LiveConfig, Mailbox, Mode, Transport};
use crate::failpoint::{self, Point};
use crate::graph::{GraphLogin, GraphMailbox};
use crate::imap::{Connection, Uid};
use crate::ingest;
use crate::intake::session::LoginPacer;
use crate::oauth::TokenCache;
use crate::report::{JunkId, JunkItem, JunkListing, JunkStatus};
use crate::telemetry::Metrics;
use crate::time::now_ms;

/// How often [`watch`] counts each mailbox's Junk folder.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// How many of the newest Junk messages the status page shows.
pub const NEWEST_ON_PAGE: usize = 5;

/// The mailbox named `name`, or the only one configured.
pub fn pick_mailbox<'a>(config: &'a Config, name: Option<&str>) -> anyhow::Result<&'a Mailbox> {
    let names = || {
        config
            .mailboxes
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => match config.mailboxes.iter().find(|m| m.name == name) {
            Some(mailbox) => Ok(mailbox),
            None => bail!("no mailbox `{name}` is configured; configured: {}", names()),
        },
        None => match config.mailboxes.as_slice() {
            [only] => Ok(only),
            _ => bail!(
                "several mailboxes are configured ({}); name one with --mailbox",
                names()
            ),
        },
    }
}

/// The newest `limit` messages of the mailbox's Junk folder, from header fields only.
pub async fn list(
    config: &Config,
    tokens: &TokenCache,
    mailbox: &Mailbox,
    limit: usize,
) -> anyhow::Result<JunkListing> {
    if let Transport::Graph(graph) = &mailbox.transport {
        let mut api = graph_mailbox(config, tokens, mailbox, graph).await?;
        return list_on_graph(&mut api, &mailbox.junk_folder, limit).await;
    }
    let mut conn = admin::connect(tokens, config, mailbox).await?;
    // The fault tests hold the listing here, with the session open, to stop `run` at this point.
    failpoint::reached(Point::JunkListing).await;
    // Whatever the listing ends with, the session is logged out.
    let result = list_on(&mut conn, &mailbox.junk_folder, limit).await;
    conn.logout().await;
    result
}

async fn list_on(conn: &mut Connection, folder: &str, limit: usize) -> anyhow::Result<JunkListing> {
    if !conn.folder_exists(folder).await? {
        return Ok(JunkListing::Missing {
            folder: folder.to_string(),
        });
    }
    let total = conn.message_count(folder).await?;
    let mut newest = Vec::new();
    if total > 0 && limit > 0 {
        // Read-only: looking changes nothing (no \Seen, no \Recent taken).
        conn.examine(folder).await?;
        let listed = conn.list_above(0).await?;
        for summary in listed.iter().rev().take(limit) {
            let header = conn.fetch_identifying_headers(summary.uid).await?;
            let parsed = ingest::parse(&header).ok();
            newest.push(JunkItem {
                id: JunkId::Uid(summary.uid),
                date_ms: parsed.as_ref().and_then(|m| m.date_ms),
                received_ms: summary.internal_date_ms,
                from: parsed
                    .as_ref()
                    .and_then(|m| m.from.as_ref().map(|p| p.address.clone())),
                subject: parsed.map(|m| m.subject),
                size_bytes: summary.size,
            });
        }
    }
    Ok(JunkListing::Listed {
        folder: folder.to_string(),
        total,
        newest,
    })
}

/// Moves the message `id` (a UID, or on a Graph mailbox its Graph id, as `junk list` shows)
/// from the mailbox's Junk folder to its inbox (the first watched folder; UID MOVE, or COPY +
/// expunge of that UID; Graph's move), where the next sweep ingests it.
pub async fn release(
    config: &Config,
    tokens: &TokenCache,
    mailbox: &Mailbox,
    id: &str,
) -> anyhow::Result<String> {
    if mailbox.mode == Mode::Shadow {
        bail!(
            "mailbox `{}` runs in shadow mode, which changes nothing on the server; move the message in the mail client instead",
            mailbox.name
        );
    }
    let junk = &mailbox.junk_folder;
    let inbox = &mailbox.folders[0];
    if let Transport::Graph(graph) = &mailbox.transport {
        let mut api = graph_mailbox(config, tokens, mailbox, graph).await?;
        if !api.is_in(id, junk).await? {
            bail!(
                "there is no message {id} in `{junk}` of {} (moved or deleted meanwhile?); `mailintake junk list` shows the ids",
                mailbox.address
            );
        }
        return match api.move_message(id, inbox).await {
            Ok(()) => Ok(format!(
                "moved {id} from `{junk}` to `{inbox}` of {}; the next sweep ingests it",
                mailbox.address
            )),
            Err(e) if e.refusal().is_some_and(|r| r.is_not_found()) => bail!(
                "there is no message {id} in {} (moved or deleted meanwhile?); `mailintake junk list` shows the ids",
                mailbox.address
            ),
            Err(e) => Err(e.into()),
        };
    }
    let Ok(uid) = id.trim().parse::<u32>().map(Uid) else {
        bail!("`{id}` is not a UID; `mailintake junk list` shows the UIDs of the Junk folder");
    };
    let mut conn = admin::connect(tokens, config, mailbox).await?;
    let result = async {
        if !conn.folder_exists(junk).await? {
            bail!(
                "mailbox `{}` has no folder `{junk}` (junk_folder; Exchange Online calls it \"Junk Email\")",
                mailbox.name
            );
        }
        conn.select(junk).await?;
        let listed = conn.list_above(uid.0.saturating_sub(1)).await?;
        let Some(summary) = listed.iter().find(|m| m.uid == uid) else {
            bail!(
                "there is no message with UID {uid} in `{junk}` of {} (moved or deleted meanwhile?); `mailintake junk list` shows the UIDs",
                mailbox.address
            );
        };
        let header = conn.fetch_identifying_headers(summary.uid).await?;
        let subject = ingest::parse(&header)
            .map(|m| m.subject)
            .unwrap_or_default();
        conn.move_to(&[uid], inbox).await?;
        Ok(format!(
            "moved UID {uid} (\"{subject}\", {} bytes) from `{junk}` to `{inbox}` of {}; the next sweep ingests it",
            summary.size, mailbox.address
        ))
    }
    .await;
    conn.logout().await;
    result
}

/// A Graph session of `mailbox` for the Junk commands.
async fn graph_mailbox(
    config: &Config,
    tokens: &TokenCache,
    mailbox: &Mailbox,
    graph: &GraphEndpoint,
) -> anyhow::Result<GraphMailbox> {
    let identity = config.identity(&mailbox.identity);
    let token = tokens.token_for_scope(identity, &graph.scope).await?;
    let shared = crate::graph::Shared::default();
    let login = GraphLogin {
        shared: &shared,
        endpoint: graph,
        address: &mailbox.address,
        client_id: &identity.client_id,
    };
    GraphMailbox::connect(&login, token.secret.clone())
        .await
        .with_context(|| format!("reading {} through Graph", mailbox.address))
}

/// The Junk folder through Graph: its count and newest messages from their properties (no body).
async fn list_on_graph(
    api: &mut GraphMailbox,
    folder: &str,
    limit: usize,
) -> anyhow::Result<JunkListing> {
    let Some((total, newest)) = api.newest_in(folder, limit).await? else {
        return Ok(JunkListing::Missing {
            folder: folder.to_string(),
        });
    };
    let newest = newest
        .into_iter()
        .map(|m| {
            let parsed = ingest::parse(&m.header).ok();
            JunkItem {
                id: JunkId::GraphId(m.item_id),
                date_ms: parsed.as_ref().and_then(|p| p.date_ms),
                received_ms: m.received_ms,
                from: parsed
                    .as_ref()
                    .and_then(|p| p.from.as_ref().map(|a| a.address.clone())),
                subject: parsed.map(|p| p.subject),
                size_bytes: m.size,
            }
        })
        .collect();
    Ok(JunkListing::Listed {
        folder: folder.to_string(),
        total,
        newest,
    })
}

/// Counts every mailbox's Junk folder (with its newest few messages) now and then every
/// [`CHECK_INTERVAL`] into `metrics`, until `cancel`.
///
/// Each IMAP login waits for its turn in `logins`, the folder tasks' pacing.
///
/// `cancel` is honoured before each mailbox, while it waits for its turn and while the task
/// sleeps, never in the middle of a
/// [`list`]: a listing is bounded by the IMAP timeouts and logs out at its end, whereas dropping it
/// would close its session without LOGOUT. So a shutdown waits for the listing under way.
pub async fn watch(
    live: LiveConfig,
    tokens: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    logins: Arc<LoginPacer>,
    cancel: CancellationToken,
) {
    loop {
        // The mailboxes the worker works on now (the registry's added at run time too).
        let config = live.current();
        for mailbox in &config.mailboxes {
            if cancel.is_cancelled() {
                return;
            }
            // Its IMAP logins take their turn with the folder tasks' (no login storm at start).
            if let Some(imap) = mailbox.imap() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = logins.wait(&imap.host, imap.logins_per_second) => {}
                }
            }
            let result = list(&config, &tokens, mailbox, NEWEST_ON_PAGE).await;
            let result = result.map_err(|e| {
                debug!(mailbox = %mailbox.name, error = %e, "cannot look at the Junk folder");
                format!("{e:#}")
            });
            metrics.junk_checked(
                &mailbox.name,
                JunkStatus {
                    checked_at_ms: now_ms(),
                    result,
                },
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}
