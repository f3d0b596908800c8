//! Counters and state of every mailbox and identity, kept in memory for `/metrics`, `/readyz` and
//! the status page. Written by the workers at a few points (end of a sweep, a failure, a login, a
//! committed batch, an outbox flush); read as a [`Snapshot`]. Labels are mailbox and identity names
//! and small closed sets (outcome, result, reason), so the number of series stays small.
//!
//! One `std::sync::Mutex` guards everything: updates happen a few times per sweep, never per
//! byte, and no lock is held across an `.await`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::report::{
    BlockedSender, CycleReport, Failure, FailureSource, FlushReport, JunkStatus,
    RefusedDispositions,
};
use crate::time::now_ms;

/// Upper bounds (seconds) of the ingest-latency buckets: INTERNALDATE has whole seconds, and mail
/// that waited an hour is as late as it matters.
const LATENCY_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Upper bounds (seconds) of the sweep-duration buckets.
const SWEEP_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A Prometheus histogram: per-bucket counts (not cumulative), their sum and count.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// How a mailbox's folder task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MailboxState {
    /// Not swept yet since the process started.
    Starting,
    Ok,
    /// The last attempt failed for a passing reason; backing off.
    Retrying,
    /// Only an administrator can fix the last failure; retried every ten minutes.
    NeedsAdmin,
}

impl MailboxState {
    pub const ALL: [MailboxState; 4] = [
        MailboxState::Starting,
        MailboxState::Ok,
        MailboxState::Retrying,
        MailboxState::NeedsAdmin,
    ];

    /// The state `text` names ([`MailboxState::as_str`]'s spelling), if any.
    pub fn parse(text: &str) -> Option<MailboxState> {
        MailboxState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Starting => "starting",
            MailboxState::Ok => "ok",
            MailboxState::Retrying => "retrying",
            MailboxState::NeedsAdmin => "needs_admin",
        }
    }
}

/// How an identity's token requests are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityState {
    /// No token requested yet.
    Unknown,
    Ok,
    Retrying,
    NeedsAdmin,
}

impl IdentityState {
    pub const ALL: [IdentityState; 4] = [
        IdentityState::Unknown,
        IdentityState::Ok,
        IdentityState::Retrying,
        IdentityState::NeedsAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityState::Unknown => "unknown",
            IdentityState::Ok => "ok",
            IdentityState::Retrying => "retrying",
            IdentityState::NeedsAdmin => "needs_admin",
        }
    }
}

/// An error as an operator reads it: its first line, and the `fix:` line when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub summary: String,
    pub hint: Option<String>,
    pub at_ms: i64,
}

/// The first line of an error's text and the text of its `fix:` line (errors of `oauth` and
/// `imap` carry one where the remedy is known).
pub fn first_line_and_hint(text: &str) -> (String, Option<String>) {
    let summary = text.lines().next().unwrap_or("").trim().to_string();
    let hint = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("fix:"))
        .map(|h| h.trim().to_string());
    (summary, hint)
}

impl ErrorInfo {
    fn from_text(text: &str) -> ErrorInfo {
        let (summary, hint) = first_line_and_hint(text);
        ErrorInfo {
            summary,
            hint,
            at_ms: now_ms(),
        }
    }
}

/// One watched folder's task.
#[derive(Debug, Clone)]
pub struct FolderStatus {
    pub state: MailboxState,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<ErrorInfo>,
    pub logins: u64,
    /// The oldest INTERNALDATE (unix ms) among messages the last listing found above the
    /// checkpoint; None once a sweep completed (caught up).
    pub oldest_unprocessed_ms: Option<i64>,
    /// Dispositions the server refuses, as the last sweep left them.
    pub refused: Vec<RefusedDispositions>,
}

/// Everything known about one mailbox since the process started.
#[derive(Debug, Clone)]
pub struct MailboxStats {
    pub identity: String,
    pub folders: BTreeMap<String, FolderStatus>,
    /// New messages listed above the checkpoint.
    pub listed: u64,
    pub tickets: u64,
    pub follow_ups: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    pub ignored: u64,
    pub bytes_fetched: u64,
    pub acks_queued: u64,
    /// Messages the reconciliation below the checkpoint found without an outcome.
    pub reconciled: u64,
    /// Failed sweeps and logins, by kind: token, imap, store.
    pub errors_token: u64,
    pub errors_imap: u64,
    pub errors_store: u64,
    /// Folder tasks and senders that panicked and were started again.
    pub errors_panic: u64,
    pub sends_sent: u64,
    pub sends_retry: u64,
    pub sends_failed: u64,
    /// The last outbox failure (database trouble); cleared by a successful flush.
    pub outbox_error: Option<ErrorInfo>,
    /// From addresses the SMTP server refuses, as the last flush left them: their rows wait.
    pub outbox_blocked: Vec<BlockedSender>,
    /// Rows the sending budget holds back, after the last flush (shown on the status page).
    pub outbox_deferred: Option<crate::report::Deferred>,
    /// The last look at the mailbox's Junk folder (`junk::watch`), if any yet.
    pub junk: Option<JunkStatus>,
}

impl MailboxStats {
    /// The worst state of its folders.
    pub fn state(&self) -> MailboxState {
        self.folders
            .values()
            .map(|f| f.state)
            .max()
            .unwrap_or(MailboxState::Starting)
    }

    /// The oldest of its folders' last successful sweeps: every folder was swept since.
    pub fn last_success_ms(&self) -> Option<i64> {
        self.folders
            .values()
            .map(|f| f.last_success_ms)
            .min()
            .flatten()
    }

    /// The newest error of a folder that is not ok.
    pub fn last_error(&self) -> Option<&ErrorInfo> {
        self.folders
            .values()
            .filter(|f| f.state != MailboxState::Ok)
            .filter_map(|f| f.last_error.as_ref())
            .max_by_key(|e| e.at_ms)
    }

    /// The oldest message listed but not yet recorded in any of its folders (unix ms).
    pub fn oldest_unprocessed_ms(&self) -> Option<i64> {
        self.folders
            .values()
            .filter_map(|f| f.oldest_unprocessed_ms)
            .min()
    }

    /// Every folder's dispositions the server refuses, with the folder.
    pub fn refused_dispositions(&self) -> impl Iterator<Item = (&str, &RefusedDispositions)> {
        self.folders
            .iter()
            .flat_map(|(folder, f)| f.refused.iter().map(move |r| (folder.as_str(), r)))
    }

    pub fn logins(&self) -> u64 {
        self.folders.values().map(|f| f.logins).sum()
    }

    /// Logins after each folder's first one.
    pub fn reconnects(&self) -> u64 {
        self.folders
            .values()
            .map(|f| f.logins.saturating_sub(1))
            .sum()
    }
}

/// Everything known about one identity since the process started.
#[derive(Debug, Clone)]
pub struct IdentityStats {
    pub state: IdentityState,
    pub last_error: Option<ErrorInfo>,
    /// New tokens the workers received (a cached token handed out again is not counted).
    pub tokens_obtained: u64,
    pub failures_retry: u64,
    pub failures_needs_admin: u64,
    /// When the newest token expires, estimated as the moment the worker first saw it plus its
    /// lifetime (the cache renews it a few minutes earlier).
    pub token_expires_at_ms: Option<i64>,
    /// When the newest token was obtained: the identity's last successful refresh.
    pub token_obtained_at_ms: Option<i64>,
    /// Tells a new token from the cached one handed out again.
    last_renew_at: Option<Instant>,
}

/// A copy of everything, taken under the lock, for rendering.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub started_at_ms: i64,
    pub mailboxes: BTreeMap<String, MailboxStats>,
    pub identities: BTreeMap<String, IdentityStats>,
    /// From INTERNALDATE (the server's arrival time) to the commit of the message's outcome, over
    /// all mailboxes: a histogram per mailbox would be 14 series per mailbox (14,000 at 1,000
    /// mailboxes) for a figure whose per-mailbox question, "is this one behind?", the mailbox's
    /// `oldest_unprocessed` and `last_success` answer.
    pub ingest_latency: Histogram,
    /// Successful sweeps' durations, over all mailboxes (for the same reason).
    pub sweep_duration: Histogram,
}

/// A folder's state before its first sweep.
fn starting_folder() -> FolderStatus {
    FolderStatus {
        state: MailboxState::Starting,
        last_success_ms: None,
        last_error: None,
        logins: 0,
        oldest_unprocessed_ms: None,
        refused: Vec::new(),
    }
}

/// A mailbox's counts at zero.
fn mailbox_stats(m: &crate::config::Mailbox) -> MailboxStats {
    let folders = m
        .folders
        .iter()
        .map(|f| (f.clone(), starting_folder()))
        .collect();
    MailboxStats {
        identity: m.identity.clone(),
        folders,
        listed: 0,
        tickets: 0,
        follow_ups: 0,
        duplicates: 0,
        quarantined: 0,
        ignored: 0,
        bytes_fetched: 0,
        acks_queued: 0,
        reconciled: 0,
        errors_token: 0,
        errors_imap: 0,
        errors_store: 0,
        errors_panic: 0,
        sends_sent: 0,
        sends_retry: 0,
        sends_failed: 0,
        outbox_error: None,
        outbox_blocked: Vec::new(),
        outbox_deferred: None,
        junk: None,
    }
}

/// An identity's counts at zero.
fn identity_stats() -> IdentityStats {
    IdentityStats {
        state: IdentityState::Unknown,
        last_error: None,
        tokens_obtained: 0,
        failures_retry: 0,
        failures_needs_admin: 0,
        token_expires_at_ms: None,
        token_obtained_at_ms: None,
        last_renew_at: None,
    }
}

/// The process's metrics and state. One per process, shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Snapshot>,
}

impl Metrics {
    /// Every configured mailbox, folder and identity starts at zero, so each series exists from
    /// the first scrape.
    pub fn new(config: &Config) -> Metrics {
        let metrics = Metrics {
            inner: Mutex::new(Snapshot {
                started_at_ms: now_ms(),
                mailboxes: BTreeMap::new(),
                identities: BTreeMap::new(),
                ingest_latency: Histogram::new(LATENCY_BUCKETS),
                sweep_duration: Histogram::new(SWEEP_BUCKETS),
            }),
        };
        metrics.track(config);
        metrics
    }

    /// Follows a changed configuration (the registry's mailboxes at run time): a new mailbox,
    /// folder or identity starts at zero, one that is gone is no longer shown; the others keep
    /// their counts.
    pub fn track(&self, config: &Config) {
        let configured: std::collections::BTreeSet<&str> =
            config.mailboxes.iter().map(|m| m.name.as_str()).collect();
        let mut inner = self.lock();
        inner
            .mailboxes
            .retain(|name, _| configured.contains(name.as_str()));
        for m in &config.mailboxes {
            match inner.mailboxes.get_mut(&m.name) {
                Some(stats) => {
                    stats.identity = m.identity.clone();
                    stats.folders.retain(|folder, _| m.folders.contains(folder));
                    for folder in &m.folders {
                        stats
                            .folders
                            .entry(folder.clone())
                            .or_insert_with(starting_folder);
                    }
                }
                None => {
                    inner.mailboxes.insert(m.name.clone(), mailbox_stats(m));
                }
            }
        }
        inner
            .identities
            .retain(|name, _| config.identities.contains_key(name));
        for name in config.identities.keys() {
            inner
                .identities
                .entry(name.clone())
                .or_insert_with(identity_stats);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // A panic while holding the lock leaves plain numbers behind: keep using them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_folder(&self, mailbox: &str, folder: &str, f: impl FnOnce(&mut FolderStatus)) {
        let mut inner = self.lock();
        if let Some(status) = inner
            .mailboxes
            .get_mut(mailbox)
            .and_then(|m| m.folders.get_mut(folder))
        {
            f(status);
        }
    }

    /// A sweep completed: its counts, its duration, and the folder is ok.
    pub fn sweep_done(&self, mailbox: &str, folder: &str, report: &CycleReport, took: Duration) {
        let mut inner = self.lock();
        let Some(stats) = inner.mailboxes.get_mut(mailbox) else {
            return;
        };
        stats.listed += report.n_listed as u64;
        stats.tickets += report.n_tickets as u64;
        stats.follow_ups += report.n_follow_ups as u64;
        stats.duplicates += report.n_duplicates as u64;
        stats.quarantined += report.n_quarantined as u64;
        stats.ignored += report.n_ignored as u64;
        stats.bytes_fetched += report.bytes_fetched;
        stats.acks_queued += report.n_acks_queued as u64;
        stats.reconciled += report.n_reconciled as u64;
        if let Some(status) = stats.folders.get_mut(folder) {
            status.state = MailboxState::Ok;
            status.last_success_ms = Some(now_ms());
            // A completed sweep recorded everything it listed.
            status.oldest_unprocessed_ms = None;
            if let Some(refused) = &report.refused {
                status.refused = refused.clone();
            }
        }
        inner.sweep_duration.observe(took.as_secs_f64());
    }

    /// A sweep listed the messages above the checkpoint: until they are recorded (the sweep
    /// completes), the oldest of them is waiting.
    /// `oldest_ms` is the earliest arrival time (INTERNALDATE) among them.
    pub fn listed(&self, mailbox: &str, folder: &str, oldest_ms: Option<i64>) {
        self.with_folder(mailbox, folder, |status| {
            status.oldest_unprocessed_ms = oldest_ms
        });
    }

    /// The Junk folder of `mailbox` was looked at.
    pub fn junk_checked(&self, mailbox: &str, status: JunkStatus) {
        let mut inner = self.lock();
        if let Some(stats) = inner.mailboxes.get_mut(mailbox) {
            stats.junk = Some(status);
        }
    }

    /// A batch was committed: how long its messages waited since the server received them.
    pub fn batch_committed(&self, mailbox: &str, received_ms: &[i64], committed_ms: i64) {
        let mut inner = self.lock();
        // A mailbox removed meanwhile (its task stopping) is no longer counted.
        if !inner.mailboxes.contains_key(mailbox) {
            return;
        }
        for received in received_ms {
            let waited = (committed_ms - received).max(0) as f64 / 1000.0;
            inner.ingest_latency.observe(waited);
        }
    }

    /// A login or sweep failed: the folder's state, and the identity's when a token was refused.
    /// `text` is the error as the operator reads it (with its `fix:` line, when one is known).
    pub fn cycle_failed(&self, mailbox: &str, folder: &str, identity: &str, failure: &Failure<'_>) {
        let needs_admin = failure.needs_admin;
        let text = failure.text;
        let mut inner = self.lock();
        if let Some(stats) = inner.mailboxes.get_mut(mailbox) {
            match failure.source {
                FailureSource::Token => stats.errors_token += 1,
                FailureSource::MailServer => stats.errors_imap += 1,
                FailureSource::Store => stats.errors_store += 1,
                FailureSource::Panic => stats.errors_panic += 1,
            }
            if let Some(status) = stats.folders.get_mut(folder) {
                status.state = if needs_admin {
                    MailboxState::NeedsAdmin
                } else {
                    MailboxState::Retrying
                };
                status.last_error = Some(ErrorInfo::from_text(text));
            }
        }
        if failure.source == FailureSource::Token
            && let Some(id) = inner.identities.get_mut(identity)
        {
            if needs_admin {
                id.failures_needs_admin += 1;
                id.state = IdentityState::NeedsAdmin;
            } else {
                id.failures_retry += 1;
                id.state = IdentityState::Retrying;
            }
            id.last_error = Some(ErrorInfo::from_text(text));
        }
    }

    /// The folder's task logged in to IMAP.
    pub fn logged_in(&self, mailbox: &str, folder: &str) {
        self.with_folder(mailbox, folder, |status| status.logins += 1);
    }

    /// A worker received an access token for `identity` (cached or new).
    pub fn token_received(&self, identity: &str, renew_at: Instant, lifetime: Duration) {
        let mut inner = self.lock();
        let Some(id) = inner.identities.get_mut(identity) else {
            return;
        };
        id.state = IdentityState::Ok;
        id.last_error = None;
        if id.last_renew_at != Some(renew_at) {
            id.last_renew_at = Some(renew_at);
            id.tokens_obtained += 1;
            id.token_expires_at_ms = Some(now_ms() + lifetime.as_millis() as i64);
            id.token_obtained_at_ms = Some(now_ms());
        }
    }

    /// An outbox flush ended.
    pub fn flushed(&self, mailbox: &str, report: &FlushReport) {
        let mut inner = self.lock();
        if let Some(stats) = inner.mailboxes.get_mut(mailbox) {
            stats.sends_sent += report.n_sent as u64;
            stats.sends_retry += report.n_retry as u64;
            stats.sends_failed += report.n_failed as u64;
            stats.outbox_error = None;
            stats.outbox_blocked = report.blocked.clone();
            stats.outbox_deferred = report.deferred.clone();
        }
    }

    /// The outbox could not be read or written.
    pub fn outbox_failed(&self, mailbox: &str, error: &dyn std::fmt::Display) {
        let mut inner = self.lock();
        if let Some(stats) = inner.mailboxes.get_mut(mailbox) {
            stats.outbox_error = Some(ErrorInfo::from_text(&error.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ScrapeFacts;

    /// Metrics of a configuration with one mailbox, `support` (folder INBOX), on identity `app`.
    fn one_mailbox_metrics() -> Metrics {
        let config = crate::config::Config::from_toml_str(
            r#"
            [identities.app]
            tenant = "contoso.onmicrosoft.com"
            client_id = "00000000-0000-0000-0000-000000000001"
            client_secret = "s"
            [[mailboxes]]
            name = "support"
            address = "support@contoso.com"
            identity = "app"
            imap = { host = "outlook.office365.com" }
            "#,
            std::path::Path::new("."),
        )
        .unwrap();
        Metrics::new(&config)
    }

    #[test]
    fn the_oldest_listed_message_waits_until_a_sweep_completes() {
        let metrics = one_mailbox_metrics();
        let ten_minutes_ago = now_ms() - 600_000;
        metrics.listed("support", "INBOX", Some(ten_minutes_ago));
        let snapshot = metrics.snapshot();
        assert_eq!(
            snapshot.mailboxes["support"].oldest_unprocessed_ms(),
            Some(ten_minutes_ago)
        );
        let text = snapshot.prometheus(&ScrapeFacts::default());
        let age: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"mailintake_oldest_unprocessed_age_seconds{mailbox="support"} "#)
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!((600.0..610.0).contains(&age), "{age}");
        metrics.sweep_done(
            "support",
            "INBOX",
            &CycleReport::default(),
            Duration::from_millis(5),
        );
        assert_eq!(
            metrics.snapshot().mailboxes["support"].oldest_unprocessed_ms(),
            None
        );
    }

    #[test]
    fn a_blocked_from_address_is_a_gauge_until_a_flush_finds_it_accepted() {
        let metrics = one_mailbox_metrics();
        let blocked = BlockedSender {
            from_address: "sales@contoso.com".into(),
            n_rows: 3,
            reason: "550 5.7.60 refused\n  fix: grant SendAs".into(),
            since_ms: now_ms(),
            retry_at_ms: now_ms() + 600_000,
        };
        metrics.flushed(
            "support",
            &FlushReport {
                blocked: vec![blocked],
                ..FlushReport::default()
            },
        );
        let text = metrics.snapshot().prometheus(&ScrapeFacts::default());
        assert!(
            text.contains(
                "mailintake_outbox_blocked{mailbox=\"support\",from=\"sales@contoso.com\"} 3"
            ),
            "{text}"
        );
        metrics.flushed("support", &FlushReport::default());
        let text = metrics.snapshot().prometheus(&ScrapeFacts::default());
        assert!(!text.contains("mailintake_outbox_blocked{"), "{text}");
    }

    #[test]
    fn a_failed_cycle_shows_the_text_the_operator_reads_with_its_fix() {
        let metrics = one_mailbox_metrics();
        let failure = Failure {
            source: FailureSource::Store,
            needs_admin: false,
            text: "database error: database or disk is full\n  fix: free space on the filesystem of data/mailintake.db",
        };
        metrics.cycle_failed("support", "INBOX", "app", &failure);
        let snapshot = metrics.snapshot();
        let status = &snapshot.mailboxes["support"].folders["INBOX"];
        let last_error = status.last_error.as_ref().unwrap();
        assert_eq!(
            last_error.summary,
            "database error: database or disk is full"
        );
        assert_eq!(
            last_error.hint.as_deref(),
            Some("free space on the filesystem of data/mailintake.db")
        );
        assert_eq!(status.state, MailboxState::Retrying);
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_output() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        assert_eq!(h.counts, vec![1, 1]);
        assert_eq!(h.count, 3);
        assert_eq!(h.sum, 55.5);
    }

    #[test]
    fn hints_come_from_the_fix_line() {
        let (summary, hint) = first_line_and_hint(
            "identity `x`: the token endpoint refused\n  fix: create a new secret\n  trace id: 1",
        );
        assert_eq!(summary, "identity `x`: the token endpoint refused");
        assert_eq!(hint.as_deref(), Some("create a new secret"));
        assert_eq!(first_line_and_hint("plain").1, None);
    }
}
