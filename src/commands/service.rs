//! The worker as a service: `run` until SIGTERM or SIGINT, or `once` over every mailbox.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{success_if, token_cache};
use crate::config::{Config, DatabaseConfig, LiveConfig, POOL_HEADROOM, PoolSizing, file_tables};
use crate::fleet::{self, Fleet};
use crate::registry::{self, Registry};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::{http, intake, junk, open_files};

/// `mailintake once`: one pass over every mailbox, then every outbox; exit code 1 when any of
/// them failed.
pub(super) async fn once(config: &Config, store: &Store) -> ExitCode {
    raise_open_files(config, store);
    let tokens = token_cache(config, store);
    let mut failed = 0;
    for (mailbox, result) in intake::run_once(config, store, &tokens).await {
        match result {
            Ok(report) => println!("{mailbox}: {report}"),
            Err(e) => {
                failed += 1;
                eprintln!("{mailbox}: FAILED: {}", store.explain_failure(&e));
            }
        }
    }
    for (mailbox, result) in intake::flush_outboxes(config, store, &tokens).await {
        match result {
            Ok(report) => println!("{mailbox} outbox: {report}"),
            Err(e) => {
                failed += 1;
                eprintln!("{mailbox} outbox: FAILED: {e}");
            }
        }
    }
    success_if(failed == 0)
}

/// `mailintake run`: the worker's tasks (and, with `[http]`, the monitoring endpoint and the
/// Junk check) until SIGTERM or SIGINT; then every task stops at a safe point and logs out. The
/// mailboxes are the file's and the registry's, followed at run time (`intake::follow`); SIGHUP
/// reads `config_path` again.
pub(super) async fn run(
    file_config: Config,
    config_path: &Path,
    store: &Store,
) -> anyhow::Result<ExitCode> {
    let tables = file_tables(config_path)?;
    let registry = Registry::load(store)
        .await
        .context("reading the mailbox registry (tables registry_mailboxes, registry_identities)")?;
    let base_dir = config_path.parent().unwrap_or(Path::new("."));
    let effective = registry::effective(&file_config, &tables, &registry, base_dir);
    let config = effective.config.clone();
    let resized = sized_for(
        store,
        &file_config.database,
        intake::fleet_units(&config).len(),
    )
    .await
    .context("opening the database again with a pool sized for the registry's mailboxes")?;
    let store = resized.as_ref().unwrap_or(store);
    raise_open_files(&config, store);
    let tokens = Arc::new(token_cache(&config, store));
    // The worker registers in the fleet first: every task works only under its lease. The
    // fleet has connections of its own, so that its heartbeat, acquisitions and renewals never
    // wait for one behind the tasks' batches (the pool's acquire timeout is as long as a lease).
    let fleet_store = Store::open_with_size(&file_config.database, FLEET_CONNECTIONS)
        .await
        .context("opening the fleet's own database connections")?;
    let fleet = Arc::new(Fleet::new(
        fleet_store,
        config.fleet,
        fleet::this_worker(),
        intake::fleet_units(&config).len(),
    ));
    fleet
        .register()
        .await
        .context("registering the worker in the database (table workers)")?;
    let stop_fleet = CancellationToken::new();
    let coordinator = tokio::spawn({
        let fleet = Arc::clone(&fleet);
        let stop_fleet = stop_fleet.clone();
        async move { fleet.coordinate(&stop_fleet).await }
    });
    // The start-up mailboxes; the status page, the HTTP API and the Junk check follow the
    // registry's and the file's changes through `live` (MailboxSet::apply sets it).
    let config = Arc::new(config);
    let live = LiveConfig::new(Arc::clone(&config));
    let metrics = Arc::new(Metrics::new(&config));
    // Every task of the worker (folders, outbox senders, the Junk check) stops at a safe
    // point on `cancel`; the monitoring endpoint keeps answering while they drain.
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let stop_http = CancellationToken::new();
    // Shared by the senders and the HTTP API, which wakes a sender after a submission.
    let wakes = intake::sender_wakes(&config);
    let shared = intake::Shared::new(
        store.clone(),
        Arc::clone(&tokens),
        Arc::clone(&metrics),
        Arc::clone(&fleet),
    );
    let server = match &config.http {
        Some(http_config) => {
            let listener = http::bind(http_config).await?;
            // The status page shows each Junk folder's count from this task, so that a
            // page view never opens an IMAP session. It holds a session while it counts, so
            // shutdown waits for it like for the mailboxes' tasks.
            tracker.spawn(junk::watch(
                live.clone(),
                Arc::clone(&tokens),
                Arc::clone(&metrics),
                Arc::clone(&shared.logins),
                cancel.clone(),
            ));
            let http_config = http_config.clone();
            let live = live.clone();
            let store = store.clone();
            let metrics = Arc::clone(&metrics);
            let wakes = wakes.clone();
            let stop = stop_http.clone();
            Some(tokio::spawn(async move {
                http::serve(listener, &http_config, live, store, metrics, wakes, stop).await
            }))
        }
        None => None,
    };
    let reload = Arc::new(Notify::new());
    tracker.spawn(intake::follow(
        intake::MailboxSet::new(shared, wakes, live, cancel.clone()),
        intake::FileSource {
            path: config_path.to_path_buf(),
            config: file_config,
            tables,
        },
        (registry, effective),
        Arc::clone(&reload),
        cancel.clone(),
    ));
    tracker.close();
    shutdown_signal(&reload).await;
    tracing::info!("shutdown requested; letting mailboxes reach a safe point");
    cancel.cancel();
    tracker.wait().await;
    tracing::info!("all mailboxes stopped");
    // Every lease goes at once, so that the other workers take the mailboxes over within seconds.
    stop_fleet.cancel();
    if let Err(e) = coordinator.await {
        tracing::error!(error = %e, "the fleet's coordinator panicked");
    }
    fleet.deregister().await;
    stop_http.cancel();
    if let Some(server) = server {
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "monitoring endpoint failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "monitoring endpoint panicked"),
            Err(_) => tracing::warn!("monitoring endpoint did not stop within 5 s"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The connections of the fleet's own pool (heartbeat and coordinator, lease renewals).
const FLEET_CONNECTIONS: u32 = 2;

/// Raises the open-files limit to the hard limit before any task starts, and says whether it
/// is enough for `config`'s mailboxes ([`open_files::raise_and_report`]).
fn raise_open_files(config: &Config, store: &Store) {
    let units = intake::fleet_units(config);
    let senders = units.iter().filter(|u| u.folder == fleet::OUTBOX).count();
    let needed = open_files::needed(
        units.len() - senders,
        senders,
        store.max_connections() + FLEET_CONNECTIONS,
    );
    open_files::raise_and_report(needed, config.mailboxes.len());
}

/// The store for `tasks` tasks: `store` itself when its pool already has the size
/// [`DatabaseConfig::pool_size`] gives (or `max_connections` is set), else the same database
/// opened again with that size (the registry's mailboxes are known only once the database is
/// open). Logs the size and how it was chosen. Mailboxes added later at run time do not resize
/// the pool: past the cap it would not grow anyway, and `max_connections` fixes it.
async fn sized_for(
    store: &Store,
    database: &DatabaseConfig,
    tasks: usize,
) -> Result<Option<Store>, crate::store::StoreError> {
    let (size, sizing) = database.pool_size_growing(tasks);
    match sizing {
        PoolSizing::Configured => tracing::info!(
            max_connections = size,
            "database pool: up to {size} connections ([database] max_connections)"
        ),
        PoolSizing::Computed { tasks, cap } => tracing::info!(
            max_connections = size,
            tasks,
            "database pool: up to {size} connections ({tasks} folder and sender tasks + {POOL_HEADROOM}, at most {cap} unless [database] max_connections says otherwise)"
        ),
        PoolSizing::Growing { tasks, cap } => tracing::info!(
            max_connections = size,
            tasks,
            "database pool: up to {size} connections, opened as needed ({tasks} folder and sender tasks now; mailboxes added at run time add more; at most {cap} unless [database] max_connections says otherwise)"
        ),
    }
    if size == store.max_connections() {
        return Ok(None);
    }
    let resized = Store::open_with_size(database, size).await?;
    store.close().await;
    Ok(Some(resized))
}

/// Completes on SIGTERM or SIGINT; each SIGHUP before it notifies `reload`.
async fn shutdown_signal(reload: &Notify) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let mut hangup = signal(SignalKind::hangup()).ok();
    if hangup.is_none() {
        tracing::warn!("cannot listen for SIGHUP; the config file is read only at start-up");
    }
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => reload.notify_one(),
        }
    }
}
