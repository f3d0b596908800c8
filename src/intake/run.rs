//! The supervisor: `mailintake run`'s tasks (one per watched folder, one outbox sender per
//! mailbox that acknowledges) and `mailintake once` (one sweep per folder, then the outboxes).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

use super::folder::{mailbox_loop, run_cycle};
use super::{CycleError, MailboxContext, policy};
use crate::config::{Config, Mailbox};
use crate::oauth::TokenCache;
use crate::reply;
use crate::reply::sender::{self, SenderContext};
use crate::report::{CycleReport, FlushReport};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// Runs one sweep for every folder of every mailbox, one after another. Returns each result,
/// named `mailbox` (or `mailbox/folder` when a mailbox watches several folders).
pub async fn run_once(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
) -> Vec<(String, Result<CycleReport, CycleError>)> {
    let never = CancellationToken::new();
    // `once` reports through its return value; the counts are not served anywhere.
    let metrics = Metrics::new(config);
    let mut results = Vec::new();
    for mailbox in &config.mailboxes {
        for folder in &mailbox.folders {
            let ctx = MailboxContext {
                mailbox,
                folder,
                identity: config.identity(&mailbox.identity),
                store,
                tokens,
                policy: policy(config, mailbox),
                outbox_wake: None,
                metrics: &metrics,
            };
            let result = run_cycle(&ctx, &never).await;
            results.push((task_name(mailbox, folder), result));
        }
    }
    results
}

/// Sends the due acknowledgements of every mailbox that sends them (after [`run_once`]).
pub async fn flush_outboxes(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
) -> Vec<(String, Result<FlushReport, StoreError>)> {
    let metrics = Metrics::new(config);
    let mut results = Vec::new();
    for mailbox in config
        .mailboxes
        .iter()
        .filter(|m| reply::sends_acknowledgements(m))
    {
        let Some(smtp) = &mailbox.smtp else { continue };
        let ctx = SenderContext {
            mailbox,
            smtp,
            identity: config.identity(&mailbox.identity),
            store,
            tokens,
            metrics: &metrics,
        };
        results.push((mailbox.name.clone(), sender::flush(&ctx).await));
    }
    results
}

fn task_name(mailbox: &Mailbox, folder: &str) -> String {
    if mailbox.folders.len() == 1 {
        mailbox.name.clone()
    } else {
        format!("{}/{folder}", mailbox.name)
    }
}

/// Starts the long-running worker's tasks in `tracker`: one per watched folder of every mailbox,
/// and an outbox sender per mailbox that sends acknowledgements. They run until `cancel`, then
/// stop at a safe point and log out; `tracker.wait()` returns when all have.
pub fn spawn(
    config: Arc<Config>,
    store: Store,
    tokens: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    for (index, mailbox) in config.mailboxes.iter().enumerate() {
        let wake = reply::sends_acknowledgements(mailbox).then(|| Arc::new(Notify::new()));
        if let Some(wake) = &wake {
            let config = Arc::clone(&config);
            let store = store.clone();
            let tokens = Arc::clone(&tokens);
            let metrics = Arc::clone(&metrics);
            let cancel = cancel.clone();
            let wake = Arc::clone(wake);
            let span = info_span!("outbox", mailbox = %mailbox.name);
            tracker.spawn(
                async move {
                    let mailbox = &config.mailboxes[index];
                    let Some(smtp) = &mailbox.smtp else { return };
                    let ctx = SenderContext {
                        mailbox,
                        smtp,
                        identity: config.identity(&mailbox.identity),
                        store: &store,
                        tokens: &tokens,
                        metrics: &metrics,
                    };
                    sender::sender_loop(&ctx, &wake, &cancel).await;
                }
                .instrument(span),
            );
        }
        for folder_index in 0..mailbox.folders.len() {
            let config = Arc::clone(&config);
            let store = store.clone();
            let tokens = Arc::clone(&tokens);
            let metrics = Arc::clone(&metrics);
            let cancel = cancel.clone();
            let wake = wake.clone();
            let span = info_span!(
                "mailbox",
                mailbox = %mailbox.name,
                folder = %mailbox.folders[folder_index]
            );
            tracker.spawn(
                async move {
                    let mailbox = &config.mailboxes[index];
                    let ctx = MailboxContext {
                        mailbox,
                        folder: &mailbox.folders[folder_index],
                        identity: config.identity(&mailbox.identity),
                        store: &store,
                        tokens: &tokens,
                        policy: policy(&config, mailbox),
                        outbox_wake: wake,
                        metrics: &metrics,
                    };
                    mailbox_loop(&ctx, &cancel).await;
                }
                .instrument(span),
            );
        }
    }
}
