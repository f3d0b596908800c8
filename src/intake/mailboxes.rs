//! The mailboxes `run` works on, followed at run time: every [`REGISTRY_POLL`] the worker reads
//! the registry's generation, and on a change (or a SIGHUP, which also reads the config file
//! again) works out what to work on ([`registry::effective`]) and starts, stops or restarts each
//! mailbox's tasks to match. A mailbox whose settings (or its identity's) changed stops at a
//! safe point, logs out and releases its leases before its tasks start again with the new
//! settings; one that is gone or disabled just stops. Where the file and the registry disagree,
//! each difference is logged once, and the registry is followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::run::{SenderWakes, Shared, fleet_units, spawn_mailbox};
use crate::config::{Config, FileTables, LiveConfig, file_tables};
use crate::registry::{self, Effective, Registry};
use crate::reply;

/// How often a worker looks at the registry's generation: a change is followed within this
/// (plus a lease's acquisition and a login).
pub const REGISTRY_POLL: Duration = Duration::from_secs(5);

/// One mailbox's running tasks.
struct Running {
    /// Its settings' digest when started ([`Effective::fingerprints`]).
    fingerprint: String,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// The mailboxes whose tasks run now.
pub struct MailboxSet {
    shared: Shared,
    running: BTreeMap<String, Running>,
    /// The senders' wake-ups, shared with the HTTP API.
    wakes: SenderWakes,
    /// What the worker works on now, for the status page, the HTTP API and the Junk counts.
    live: LiveConfig,
    /// The process's shutdown; each mailbox's tasks stop on a child of it.
    cancel: CancellationToken,
}

impl MailboxSet {
    pub fn new(
        shared: Shared,
        wakes: SenderWakes,
        live: LiveConfig,
        cancel: CancellationToken,
    ) -> MailboxSet {
        MailboxSet {
            shared,
            running: BTreeMap::new(),
            wakes,
            live,
            cancel,
        }
    }

    /// Makes the running tasks those of `effective`: stops the mailboxes that are gone or
    /// changed (and waits until they logged out and released their leases), then starts the
    /// new and changed ones.
    pub async fn apply(&mut self, effective: &Effective) {
        let config = Arc::new(effective.config.clone());
        self.shared.metrics.track(&config);
        self.live.set(Arc::clone(&config));
        self.shared.fleet.set_units(fleet_units(&config).len());
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| {
                effective.fingerprints.get(*name) != Some(&running.fingerprint)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopping = Vec::new();
        for name in stale {
            if let Some(running) = self.running.remove(&name) {
                let why = if effective.fingerprints.contains_key(&name) {
                    "its settings changed; starting it again with them"
                } else {
                    "it is no longer configured (removed or disabled)"
                };
                info!(mailbox = %name, "stopping the mailbox's tasks: {why}");
                running.cancel.cancel();
                running.tracker.close();
                stopping.push(running.tracker);
            }
        }
        // A unit's lease is released before its task starts again (one holder per unit here).
        futures::future::join_all(stopping.iter().map(TaskTracker::wait)).await;
        for (index, mailbox) in config.mailboxes.iter().enumerate() {
            if self.running.contains_key(&mailbox.name) || self.cancel.is_cancelled() {
                continue;
            }
            let wake = reply::sends_mail(mailbox).then(|| self.wakes.for_mailbox(&mailbox.name));
            let cancel = self.cancel.child_token();
            let tracker = TaskTracker::new();
            spawn_mailbox(&config, index, &self.shared, wake, &tracker, &cancel);
            info!(mailbox = %mailbox.name, folders = mailbox.folders.len(), "mailbox started");
            self.running.insert(
                mailbox.name.clone(),
                Running {
                    fingerprint: effective
                        .fingerprints
                        .get(&mailbox.name)
                        .cloned()
                        .unwrap_or_default(),
                    cancel,
                    tracker,
                },
            );
        }
    }

    /// Waits until every mailbox's tasks stopped (after the process's shutdown).
    pub async fn wait(self) {
        for running in self.running.values() {
            running.tracker.close();
        }
        futures::future::join_all(self.running.values().map(|r| r.tracker.wait())).await;
    }
}

/// What [`follow`] reads again on SIGHUP.
pub struct FileSource {
    pub path: PathBuf,
    pub config: Config,
    pub tables: FileTables,
}

/// Runs the mailboxes of `file` and the registry until `cancel`, following the registry every
/// [`REGISTRY_POLL`] and the file at each `reload` (SIGHUP); returns once every mailbox's tasks
/// stopped. `start` is what the worker starts with (worked out by the caller from `registry`).
pub async fn follow(
    mut set: MailboxSet,
    mut file: FileSource,
    start: (Registry, Effective),
    reload: Arc<Notify>,
    cancel: CancellationToken,
) {
    let base_dir = file
        .path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let (registry, effective) = start;
    let mut generation = registry.generation;
    let mut said = Said::default();
    said.tell(&effective);
    set.apply(&effective).await;
    loop {
        let reread = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(REGISTRY_POLL) => false,
            _ = reload.notified() => true,
        };
        if reread {
            match (Config::load(&file.path), file_tables(&file.path)) {
                (Ok(config), Ok(tables)) => {
                    info!(path = %file.path.display(), "SIGHUP: the config file is read again (its mailboxes and identities; other sections need a restart)");
                    file.config = config;
                    file.tables = tables;
                }
                (Err(e), _) | (_, Err(e)) => {
                    error!("SIGHUP: {e}\n  the worker goes on with the file as it was read before");
                }
            }
        }
        let changed = match set.shared.store.registry_generation().await {
            Ok(now) => {
                let changed = now != generation;
                generation = now;
                changed
            }
            Err(e) => {
                warn!(error = %e, "cannot read the mailbox registry; trying again");
                continue;
            }
        };
        if !changed && !reread {
            continue;
        }
        let registry = match Registry::load(&set.shared.store).await {
            Ok(registry) => registry,
            Err(e) => {
                warn!(error = %e, "cannot read the mailbox registry; trying again");
                continue;
            }
        };
        generation = registry.generation;
        let effective = registry::effective(&file.config, &file.tables, &registry, &base_dir);
        said.tell(&effective);
        set.apply(&effective).await;
    }
    set.wait().await;
}

/// The differences and unusable rows logged so far: each is logged once, and again only after it
/// went away and came back.
#[derive(Default)]
struct Said(BTreeSet<String>);

impl Said {
    fn tell(&mut self, effective: &Effective) {
        let mut now: BTreeSet<String> = effective
            .differences
            .iter()
            .chain(&effective.unusable)
            .cloned()
            .collect();
        if effective.config.mailboxes.is_empty() {
            now.insert(NO_MAILBOX.into());
        }
        for line in now.difference(&self.0) {
            if effective.unusable.contains(line) {
                error!("{line}");
            } else {
                warn!("{line}");
            }
        }
        self.0 = now;
    }
}

const NO_MAILBOX: &str = "no mailbox to work on: neither the config file nor the registry has one (`mailintake mailbox add NAME --toml …` adds one; the worker takes it up within seconds)";
