//! The fleet (issue 17): the workers on one database share the work by leases
//! (`store/leases.rs`). Every watched (mailbox, folder) and every mailbox's outbox sender is a
//! *unit* with a lease of its own; a unit's task does its work only while it holds that lease.
//!
//! One coordinator per process ([`Fleet::coordinate`]) says the worker is alive (the heartbeat)
//! every `acquire_interval`, works out the worker's fair share — ceil(units / live workers) —
//! and acquires free or expired leases for the units that wait, up to that share; when the
//! worker holds more than its share (a worker joined), it asks the surplus to stop at a safe
//! point and release. It also renews every lease the worker holds, every third of the TTL, in
//! one statement per few hundred leases ([`Store::renew_leases`]). A unit's task
//! ([`Fleet::hold`]) waits for its lease, works under it while the renewals keep it, and
//! releases it when the work stops.
//!
//! The database fences what it stores (a batch commits only under its lease: `Batch::fence`);
//! what it cannot fence (IMAP commands, SMTP sends) the task guards by [`Tenure::check`], by this
//! process's monotonic clock: past the TTL minus a margin since the last renewal nothing more is
//! done, whatever the database said last.
//!
//! On SQLite the worker lock (`store::lock_worker`) already makes the worker the only one: it
//! holds every lease, and the leases left by an earlier process are freed at the start.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, FleetConfig};
use crate::store::{Backend, Lease, Store, StoreError, WorkerInfo};
use crate::time::now_ms;

/// The lease of a mailbox's outbox sender is the mailbox's lease with this folder name (no IMAP
/// folder is named by the empty string).
pub const OUTBOX: &str = "";

/// One leased piece of work: a watched folder of a mailbox, or its outbox sender ([`OUTBOX`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unit {
    pub mailbox: String,
    pub folder: String,
}

impl Unit {
    pub fn folder(mailbox: &str, folder: &str) -> Unit {
        Unit {
            mailbox: mailbox.to_string(),
            folder: folder.to_string(),
        }
    }

    pub fn outbox(mailbox: &str) -> Unit {
        Unit::folder(mailbox, OUTBOX)
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.folder == OUTBOX {
            write!(f, "{} (outbox)", self.mailbox)
        } else {
            write!(f, "{}/{}", self.mailbox, self.folder)
        }
    }
}

/// A task's work ended because its lease is no longer certain: lost (renewal refused, a fenced
/// commit refused) or not renewed in time by this process's clock.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the lease of {unit} (epoch {epoch}) is no longer certainly this worker's; its work stops here and another worker takes it over"
)]
pub struct LeaseEnded {
    pub unit: String,
    pub epoch: i64,
}

/// Why a tenure's work was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Still working.
    Working,
    /// The worker holds more than its share: stop at a safe point and release.
    Surplus,
    /// Lost, or not renewed in time: stop all work on the server now.
    Lost,
}

/// One lease this process holds, shared by the unit's task and the renewal beside it.
pub struct Tenure {
    unit: Unit,
    lease: Mutex<Lease>,
    /// Cancelled when the work must stop: shutdown (a child of the process's token), a surplus,
    /// or the lease's end.
    stop: CancellationToken,
    ending: Mutex<Ending>,
    /// What the monotonic guard leaves out of the TTL (see [`Lease::trusted_until`]).
    margin: Duration,
    /// When this process acquired it, to give up the newest first when it holds too many.
    acquired_at: Instant,
}

impl Tenure {
    /// The lease as it is now, to fence a batch with (its epoch is what counts).
    pub fn lease(&self) -> Lease {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cancelled when the unit's work must stop at its next safe point.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Whether this worker may still act on the server for the unit (before each IMAP command
    /// batch, each disposition, each send): not once the lease is lost or the monotonic clock
    /// says its trust ran out.
    pub fn check(&self) -> Result<(), LeaseEnded> {
        let lease = self.lease();
        let lost = *self.ending.lock().unwrap_or_else(|e| e.into_inner()) == Ending::Lost;
        if lost || Instant::now() >= lease.trusted_until(self.margin) {
            self.end(Ending::Lost);
            return Err(LeaseEnded {
                unit: self.unit.to_string(),
                epoch: lease.epoch,
            });
        }
        Ok(())
    }

    /// Whether the work should go on: not lost, not asked to stop.
    pub fn may_go_on(&self) -> bool {
        !self.stop.is_cancelled() && self.check().is_ok()
    }

    /// Notes that the database refused the lease (a fenced commit found it another worker's).
    pub fn lost(&self) {
        self.end(Ending::Lost);
    }

    fn end(&self, why: Ending) {
        {
            let mut ending = self.ending.lock().unwrap_or_else(|e| e.into_inner());
            // Lost outranks a surplus: the release then leaves the row alone.
            if *ending != Ending::Lost {
                *ending = why;
            }
        }
        self.stop.cancel();
    }

    fn ending(&self) -> Ending {
        *self.ending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A unit whose task waits for its lease; the coordinator puts the lease in `granted`.
struct Waiting {
    granted: Mutex<Option<Lease>>,
    notify: Notify,
}

/// The process's part of the fleet: who it is, what it holds, what waits.
pub struct Fleet {
    store: Store,
    worker: WorkerInfo,
    config: FleetConfig,
    /// How many units this worker's configuration names (the same on every worker of a fleet);
    /// it changes with the registry's mailboxes ([`Fleet::set_units`]).
    n_units: AtomicUsize,
    /// How many units this worker should hold at most, from the last coordination.
    fair_share: AtomicUsize,
    held: Mutex<Vec<Arc<Tenure>>>,
    waiting: Mutex<BTreeMap<Unit, Arc<Waiting>>>,
    /// Wakes the coordinator when a unit starts waiting, so that it need not wait for its tick.
    wake: Notify,
    /// The live workers at the last coordination (this one included), for limits the fleet
    /// shares (Graph's requests at once per app).
    live: Arc<AtomicUsize>,
}

/// The units of `config`: every watched folder, and the outbox of every mailbox that sends mail
/// (`sends_mail`, given as a predicate: the reply wing is above this floor).
pub fn units(config: &Config, sends_mail: impl Fn(&crate::config::Mailbox) -> bool) -> Vec<Unit> {
    let mut units = Vec::new();
    for mailbox in &config.mailboxes {
        for folder in &mailbox.folders {
            units.push(Unit::folder(&mailbox.name, folder));
        }
        if sends_mail(mailbox) {
            units.push(Unit::outbox(&mailbox.name));
        }
    }
    units
}

/// This process as the fleet sees it: a unique id, the host, the pid and the version.
pub fn this_worker() -> WorkerInfo {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let pid = std::process::id();
    let mut salt = [0u8; 4];
    // Only for uniqueness across restarts with the same pid; the start time would do alone.
    let _ = openssl::rand::rand_bytes(&mut salt);
    let salt: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    WorkerInfo {
        id: format!("{host}-{pid}-{:x}{salt}", now_ms()),
        host,
        pid,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

impl Fleet {
    pub fn new(store: Store, config: FleetConfig, worker: WorkerInfo, n_units: usize) -> Fleet {
        Fleet {
            store,
            worker,
            config,
            n_units: AtomicUsize::new(n_units),
            fair_share: AtomicUsize::new(n_units),
            held: Mutex::new(Vec::new()),
            waiting: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            live: Arc::new(AtomicUsize::new(1)),
        }
    }

    pub fn worker(&self) -> &WorkerInfo {
        &self.worker
    }

    /// The number of live workers, as the coordinator last counted them (1 until then).
    pub fn live_workers(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.live)
    }

    /// Registers the worker. On SQLite, where the worker lock proves that no other worker runs,
    /// the leases an earlier process left (a crash) are freed at once instead of after their TTL.
    pub async fn register(&self) -> Result<(), StoreError> {
        self.store.heartbeat(&self.worker).await?;
        if self.store.backend() == Backend::Sqlite {
            let ever = Duration::from_secs(100 * 365 * 24 * 3600);
            for earlier in self.store.live_workers(ever).await? {
                if earlier.id != self.worker.id {
                    let freed = self.store.stop_worker(&earlier.id).await?;
                    info!(worker = %earlier.id, freed, "an earlier worker on this SQLite database did not stop cleanly; its leases are free");
                }
            }
        }
        info!(worker = %self.worker.id, host = %self.worker.host, version = %self.worker.version, "worker registered");
        Ok(())
    }

    /// Marks the worker stopped and releases whatever it still holds (after its tasks stopped).
    pub async fn deregister(&self) {
        match self.store.stop_worker(&self.worker.id).await {
            Ok(released) => info!(released, "worker stopped; its leases are free"),
            Err(e) => {
                warn!(error = %e, "could not mark the worker stopped; its leases expire by themselves")
            }
        }
    }

    /// The heartbeat and the acquisitions, every `acquire_interval` (sooner when a unit starts
    /// waiting), and the renewals of what this worker holds, until `cancel`.
    pub async fn coordinate(&self, cancel: &CancellationToken) {
        tokio::join!(self.acquire_loop(cancel), self.renew_held(cancel));
    }

    async fn acquire_loop(&self, cancel: &CancellationToken) {
        loop {
            if let Err(e) = self.coordinate_once().await {
                warn!(error = %e, "fleet coordination failed; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.config.acquire_interval) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn coordinate_once(&self) -> Result<(), StoreError> {
        self.store.heartbeat(&self.worker).await?;
        // A worker whose heartbeat is older than one TTL is gone: its leases have expired too.
        let live = self.store.live_workers(self.config.lease_ttl).await?;
        let n_live = live.len().max(1);
        self.live.store(n_live, Ordering::SeqCst);
        let fair = self.n_units.load(Ordering::SeqCst).div_ceil(n_live);
        self.fair_share.store(fair, Ordering::SeqCst);

        // Too many: the newest give way, at their next safe point.
        let mut working: Vec<Arc<Tenure>> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| t.ending() == Ending::Working && !t.stop.is_cancelled())
            .cloned()
            .collect();
        if working.len() > fair {
            working.sort_by_key(|t| std::cmp::Reverse(t.acquired_at));
            for tenure in &working[..working.len() - fair] {
                info!(unit = %tenure.unit, fair_share = fair, live_workers = n_live, "holding more than this worker's share; releasing at the next safe point");
                tenure.end(Ending::Surplus);
            }
        }

        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).len();
        if held >= fair {
            return Ok(());
        }
        let waiting: Vec<(Unit, Arc<Waiting>)> = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, w)| {
                w.granted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none()
            })
            .map(|(u, w)| (u.clone(), Arc::clone(w)))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        // Only the leases nobody holds now are tried (one query instead of one per unit).
        let holders: BTreeMap<(String, String), Option<String>> = self
            .store
            .lease_holders()
            .await?
            .into_iter()
            .map(|(m, f, h)| ((m, f), h))
            .collect();
        // The free ones, up to the room left, in one statement (a killed worker's hundreds of
        // folders are one round trip, not two each); those another worker took meanwhile are
        // left out, and the next candidates tried in their place.
        let mut candidates = waiting
            .into_iter()
            .filter(|(unit, _)| {
                let key = (unit.mailbox.clone(), unit.folder.clone());
                !matches!(holders.get(&key), Some(Some(_)))
            })
            .peekable();
        let mut room = fair - held;
        while room > 0 && candidates.peek().is_some() {
            let tried: BTreeMap<(String, String), Arc<Waiting>> = candidates
                .by_ref()
                .take(room)
                .map(|(unit, slot)| ((unit.mailbox, unit.folder), slot))
                .collect();
            let keys: Vec<(String, String)> = tried.keys().cloned().collect();
            let taken = self
                .store
                .acquire_leases(&keys, &self.worker.id, self.config.lease_ttl)
                .await?;
            for lease in taken {
                let key = (lease.mailbox.clone(), lease.folder.clone());
                if let Some(slot) = tried.get(&key) {
                    *slot.granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                    slot.notify.notify_one();
                    room -= 1;
                }
            }
        }
        Ok(())
    }

    /// Waits until the coordinator acquired `unit`'s lease for this worker; `None` at shutdown.
    async fn acquire(&self, unit: &Unit, shutdown: &CancellationToken) -> Option<Arc<Tenure>> {
        let slot = Arc::new(Waiting {
            granted: Mutex::new(None),
            notify: Notify::new(),
        });
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(unit.clone(), Arc::clone(&slot));
        self.wake.notify_one();
        let granted = loop {
            if let Some(lease) = slot
                .granted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                break Some(lease);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                _ = slot.notify.notified() => {}
            }
        };
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(unit);
        // Granted just as shutdown came: given back at once.
        let granted = match (
            granted,
            slot.granted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        ) {
            (Some(lease), _) | (None, Some(lease)) => lease,
            (None, None) => return None,
        };
        if shutdown.is_cancelled() {
            if let Err(e) = self.store.release_lease(&granted).await {
                warn!(error = %e, "could not release a lease at shutdown; it expires by itself");
            }
            return None;
        }
        let tenure = Arc::new(Tenure {
            unit: unit.clone(),
            lease: Mutex::new(granted),
            stop: shutdown.child_token(),
            ending: Mutex::new(Ending::Working),
            margin: margin(self.config.lease_ttl),
            acquired_at: Instant::now(),
        });
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&tenure));
        Some(tenure)
    }

    /// Runs `work` for `unit` whenever this worker holds its lease, until `shutdown`: waits for
    /// the lease, runs `work` (which must return at the tenure's [`Tenure::stop`], at a safe
    /// point, logged out) while the lease is renewed beside it, releases the lease, and waits for
    /// it again.
    pub async fn hold<F, Fut>(&self, unit: &Unit, shutdown: &CancellationToken, mut work: F)
    where
        F: FnMut(Arc<Tenure>) -> Fut,
        Fut: Future<Output = ()>,
    {
        while let Some(tenure) = self.acquire(unit, shutdown).await {
            let epoch = tenure.lease().epoch;
            info!(%unit, epoch, "lease acquired");
            let done = CancellationToken::new();
            tokio::join!(
                async {
                    work(Arc::clone(&tenure)).await;
                    done.cancel();
                },
                self.guard(&tenure, &done)
            );
            self.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|t| !Arc::ptr_eq(t, &tenure));
            match tenure.ending() {
                Ending::Lost => warn!(%unit, epoch, "lease lost; waiting to acquire it again"),
                ending => {
                    if let Err(e) = self.store.release_lease(&tenure.lease()).await {
                        warn!(%unit, error = %e, "could not release the lease; it expires by itself");
                    }
                    if ending == Ending::Surplus {
                        info!(%unit, epoch, "lease released to another worker");
                    } else {
                        debug!(%unit, epoch, "lease released");
                    }
                }
            }
        }
    }

    /// Until `done`: ends the tenure once no renewal came in time by this process's clock
    /// ([`Tenure::check`] stops its work on the server), however the renewals fare
    /// ([`Fleet::renew_held`] renews every lease of the worker at once).
    async fn guard(&self, tenure: &Tenure, done: &CancellationToken) {
        loop {
            let trusted_until = tenure.lease().trusted_until(tenure.margin);
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tenure.stop.cancelled(), if tenure.ending() == Ending::Lost => return,
                _ = tokio::time::sleep_until(trusted_until.into()) => {}
            }
            if tenure.check().is_err() {
                warn!(unit = %tenure.unit, "the lease was not renewed in time; stopping its work on the server");
                return;
            }
        }
    }

    /// Renews every lease this worker holds, every third of the TTL, in one statement per few
    /// hundred leases; a lease the database did not renew is lost. A failed renewal is tried
    /// again soon (the monotonic guard ends the tenures whose trust runs out meanwhile).
    async fn renew_held(&self, cancel: &CancellationToken) {
        let ttl = self.config.lease_ttl;
        let retry = Duration::from_millis(500).min(ttl / 10);
        let mut next = Instant::now() + ttl / 3;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            let due: Vec<Arc<Tenure>> = self
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|t| t.ending() != Ending::Lost)
                .cloned()
                .collect();
            if due.is_empty() {
                next = Instant::now() + ttl / 3;
                continue;
            }
            let keys: Vec<(String, String, i64)> = due
                .iter()
                .map(|t| {
                    let lease = t.lease();
                    (lease.mailbox, lease.folder, lease.epoch)
                })
                .collect();
            match self.store.renew_leases(&self.worker.id, ttl, &keys).await {
                Ok((at, renewed)) => {
                    for (tenure, key) in due.iter().zip(&keys) {
                        if renewed.contains(key) {
                            let mut held = tenure.lease.lock().unwrap_or_else(|e| e.into_inner());
                            held.renewed_at = at;
                        } else {
                            warn!(unit = %tenure.unit, epoch = key.2, "the lease is another worker's now; stopping its work on the server");
                            tenure.lost();
                        }
                    }
                    debug!(leases = keys.len(), "leases renewed");
                    next = at + ttl / 3;
                }
                Err(e) => {
                    warn!(leases = keys.len(), error = %e, "could not renew the leases; trying again");
                    next = Instant::now() + retry;
                }
            }
        }
    }

    /// How many units the configuration names now (mailboxes added or removed at run time), for
    /// the fair share of the next coordination.
    pub fn set_units(&self, n_units: usize) {
        self.n_units.store(n_units, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// How many units this worker should hold at most, by the last coordination.
    pub fn fair_share(&self) -> usize {
        self.fair_share.load(Ordering::SeqCst)
    }

    /// How many units this worker holds now.
    pub fn n_held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The part of the TTL the monotonic guard keeps back: a fifth, at least 1 s (a command sent
/// just before it still ends before another worker may take over), at most half.
fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_secs(1)).min(ttl / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_keeps_a_fifth_of_the_ttl_back() {
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_secs(6));
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(3)), Duration::from_secs(1));
    }
}
