//! The supervisor: `mailintake run`'s tasks (one per watched folder, one outbox sender per
//! mailbox that sends mail) and `mailintake once` (one sweep per folder, then the outboxes).

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::FutureExt;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info_span};

use super::folder::{mailbox_loop, run_cycle};
use super::sent_copy::SourceSentCopies;
use super::session::{Login, LoginPacer};
use super::{CycleError, MailboxContext, policy};
use crate::config::{Config, Identity, Mailbox, SentCopy};
use crate::fleet::{Fleet, Unit};
use crate::oauth::TokenCache;
use crate::reply;
use crate::reply::sender::{self, SenderContext, SentCopies};
use crate::report::{CycleReport, Failure, FailureSource, FlushReport};
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
    let logins = LoginPacer::default();
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
                logins: &logins,
                tenure: None,
            };
            let result = run_cycle(&ctx, &never).await;
            results.push((task_name(mailbox, folder), result));
        }
    }
    results
}

/// Takes the `outgoing` requests and sends the due outbox rows of every mailbox that sends mail
/// (after [`run_once`]).
pub async fn flush_outboxes(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
) -> Vec<(String, Result<FlushReport, StoreError>)> {
    let metrics = Metrics::new(config);
    let logins = LoginPacer::default();
    let mut results = Vec::new();
    for mailbox in config.mailboxes.iter().filter(|m| reply::sends_mail(m)) {
        let Some(outlet) = &mailbox.outlet else {
            continue;
        };
        let identity = config.identity(&mailbox.identity);
        let copies = sent_copies(mailbox, identity, tokens, &metrics, &logins);
        let ctx = SenderContext {
            mailbox,
            outlet,
            identity,
            store,
            tokens,
            metrics: &metrics,
            sent_copies: copies.as_ref().map(|c| c as &dyn SentCopies),
            tenure: None,
            graph: &logins.graph,
        };
        results.push((mailbox.name.clone(), sender::flush(&ctx).await));
    }
    results
}

/// The sender's copies to the Sent folder, where the mailbox's `sent_copy = "append"`
/// ([`SenderContext::sent_copies`]).
pub fn sent_copies<'a>(
    mailbox: &'a Mailbox,
    identity: &'a Identity,
    tokens: &'a TokenCache,
    metrics: &'a Metrics,
    logins: &'a LoginPacer,
) -> Option<SourceSentCopies<'a>> {
    matches!(mailbox.sent_copy, SentCopy::Append { .. }).then_some(SourceSentCopies {
        login: Login {
            mailbox,
            identity,
            tokens,
            metrics,
            logins,
        },
    })
}

fn task_name(mailbox: &Mailbox, folder: &str) -> String {
    if mailbox.folders.len() == 1 {
        mailbox.name.clone()
    } else {
        format!("{}/{folder}", mailbox.name)
    }
}

/// Per mailbox that sends mail (by name), the wake-up of its outbox sender: whoever writes an
/// outbox row (a folder task, the HTTP API) announces it, so it is sent without waiting for the
/// sender's next tick. Shared (clones are the same map): a mailbox started at run time adds its
/// own, which the HTTP API then finds.
#[derive(Debug, Clone, Default)]
pub struct SenderWakes(Arc<std::sync::Mutex<BTreeMap<String, Arc<Notify>>>>);

impl SenderWakes {
    /// The wake-up of `mailbox`'s sender, if it has one.
    pub fn get(&self, mailbox: &str) -> Option<Arc<Notify>> {
        self.lock().get(mailbox).cloned()
    }

    /// The wake-up of `mailbox`'s sender, made on first use.
    pub fn for_mailbox(&self, mailbox: &str) -> Arc<Notify> {
        Arc::clone(
            self.lock()
                .entry(mailbox.to_string())
                .or_insert_with(|| Arc::new(Notify::new())),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Notify>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fresh wake-up for every mailbox of `config` that sends mail ([`reply::sends_mail`]).
pub fn sender_wakes(config: &Config) -> SenderWakes {
    let wakes = SenderWakes::default();
    for mailbox in config.mailboxes.iter().filter(|m| reply::sends_mail(m)) {
        wakes.for_mailbox(&mailbox.name);
    }
    wakes
}

/// The fleet's units of `config`: every watched folder, and the outbox of every mailbox that
/// sends mail.
pub fn fleet_units(config: &Config) -> Vec<Unit> {
    crate::fleet::units(config, reply::sends_mail)
}

/// What every task of `run` shares: the database, the token cache, the metrics, the fleet and
/// the login pacing of the process.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub tokens: Arc<TokenCache>,
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<Fleet>,
    /// One pacing for every folder task of the process (see `LoginPacer`).
    pub logins: Arc<LoginPacer>,
}

impl Shared {
    pub fn new(
        store: Store,
        tokens: Arc<TokenCache>,
        metrics: Arc<Metrics>,
        fleet: Arc<Fleet>,
    ) -> Shared {
        let logins = LoginPacer::default();
        // Graph's requests at once count per app across the fleet: each worker takes its share.
        logins.graph.follow_workers(fleet.live_workers());
        Shared {
            store,
            tokens,
            metrics,
            fleet,
            logins: Arc::new(logins),
        }
    }
}

/// Starts the long-running worker's tasks in `tracker`: one per watched folder of every mailbox,
/// and an outbox sender per mailbox that sends mail (SMTP, not shadow mode), woken through
/// `wakes` ([`sender_wakes`] of the same config). Each works only while this worker holds its
/// lease in `shared.fleet` (its coordinator runs beside them), and otherwise waits for it. They
/// run until `cancel`, then stop at a safe point, log out and release their leases;
/// `tracker.wait()` returns when all have.
pub fn spawn(
    config: Arc<Config>,
    shared: &Shared,
    wakes: &SenderWakes,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    for (index, mailbox) in config.mailboxes.iter().enumerate() {
        let wake = wakes.get(&mailbox.name);
        spawn_mailbox(&config, index, shared, wake, tracker, cancel);
    }
}

/// Starts the tasks of `config.mailboxes[index]` in `tracker` (see [`spawn`]): one per watched
/// folder, and its outbox sender when `wake` is given. They stop at `cancel`.
pub fn spawn_mailbox(
    config: &Arc<Config>,
    index: usize,
    shared: &Shared,
    wake: Option<Arc<Notify>>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let mailbox = &config.mailboxes[index];
    if let Some(wake) = &wake {
        let config = Arc::clone(config);
        let Shared {
            store,
            tokens,
            metrics,
            fleet,
            logins,
        } = shared.clone();
        let cancel = cancel.clone();
        let wake = Arc::clone(wake);
        let span = info_span!("outbox", mailbox = %mailbox.name);
        tracker.spawn(
            async move {
                let mailbox = &config.mailboxes[index];
                let Some(outlet) = &mailbox.outlet else {
                    return;
                };
                let identity = config.identity(&mailbox.identity);
                let copies = sent_copies(mailbox, identity, &tokens, &metrics, &logins);
                let (store, tokens, metrics, wake, copies, graph) =
                    (&store, &tokens, &metrics, &wake, &copies, &logins.graph);
                // One sender per mailbox over the fleet: the budget holds exactly.
                let unit = Unit::outbox(&mailbox.name);
                fleet
                    .hold(&unit, &cancel, |tenure| async move {
                        let ctx = SenderContext {
                            mailbox,
                            outlet,
                            identity,
                            store,
                            tokens,
                            metrics,
                            sent_copies: copies.as_ref().map(|c| c as &dyn SentCopies),
                            tenure: Some(&tenure),
                            graph,
                        };
                        let restarted = |panic: &str| {
                            report_panic(metrics, mailbox, "", &mailbox.identity, panic)
                        };
                        let stop = tenure.stop();
                        supervise(stop, restarted, || sender::sender_loop(&ctx, wake, stop)).await;
                    })
                    .await;
            }
            .instrument(span),
        );
    }
    for folder_index in 0..mailbox.folders.len() {
        let config = Arc::clone(config);
        let Shared {
            store,
            tokens,
            metrics,
            fleet,
            logins,
        } = shared.clone();
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
                let folder = &mailbox.folders[folder_index];
                let (config, store, tokens, metrics, logins, wake) =
                    (&config, &store, &tokens, &metrics, &logins, &wake);
                let unit = Unit::folder(&mailbox.name, folder);
                fleet
                    .hold(&unit, &cancel, |tenure| async move {
                        let ctx = MailboxContext {
                            mailbox,
                            folder,
                            identity: config.identity(&mailbox.identity),
                            store,
                            tokens,
                            policy: policy(config, mailbox),
                            outbox_wake: wake.clone(),
                            metrics,
                            logins,
                            tenure: Some(&tenure),
                        };
                        let restarted = |panic: &str| {
                            report_panic(metrics, mailbox, folder, &mailbox.identity, panic)
                        };
                        let stop = tenure.stop();
                        supervise(stop, restarted, || mailbox_loop(&ctx, stop)).await;
                    })
                    .await;
            }
            .instrument(span),
        );
    }
}

/// Runs `task` until it returns (at shutdown). A panic in it (a bug) does not end it silently:
/// it is logged, `restarted` shows it, and the task starts again after a backoff that grows to
/// five minutes, unless shutdown comes first. Every task is safe to start again: all it knows is in
/// the database and on the mail server.
async fn supervise<F, Fut>(cancel: &CancellationToken, restarted: impl Fn(&str), mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let Err(panic) = AssertUnwindSafe(task()).catch_unwind().await else {
            return;
        };
        let message = panic_message(panic.as_ref());
        let delay = backoff.next().unwrap_or(Duration::from_secs(300));
        error!(panic = %message, restart_in_ms = delay.as_millis() as u64, "the task panicked (a bug); starting it again");
        restarted(&message);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What a panic said, as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Shows a task's panic on the status page, `/readyz` and in the metrics (`kind="panic"`).
fn report_panic(metrics: &Metrics, mailbox: &Mailbox, folder: &str, identity: &str, panic: &str) {
    let text = format!(
        "the task stopped on a bug (panic: {panic}) and is started again\n  fix: please report it with the log lines around \"the task panicked\"; meanwhile it is restarted with backoff"
    );
    let failure = Failure {
        source: FailureSource::Panic,
        needs_admin: false,
        text: &text,
    };
    metrics.cycle_failed(&mailbox.name, folder, identity, &failure);
}
