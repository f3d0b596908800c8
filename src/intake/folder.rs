//! The folder task: sweeps, then waits for the next reason to sweep, until shutdown. Its loop
//! matches one closed set of wake-ups ([`Wake`]), so every way out of a wait is named.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use super::session::{Session, Source, login, login_unless_stopped};
use super::sweep::{SweepEnd, sweep};
use super::{CycleError, MailboxContext};
use crate::failpoint::{self, Point};
use crate::mail_source::{IdleOutcome, MailSource};
use crate::report::{CycleReport, Failure};

/// Why the folder task wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The server reported a change while the task waited (IMAP IDLE): sweep now.
    NewMail,
    /// The wait ran out (`poll_interval`, or the IDLE re-issue timer): sweep again.
    Timer,
    /// There is no usable session (the first start, an error, a connection lost while waiting):
    /// log in, then sweep.
    Reconnect,
    /// The session's token is due for renewal (Exchange ends sessions whose token expires): log
    /// out, log in with a fresh token, then sweep.
    TokenRenewal,
    /// Shutdown was requested, or in a fleet the folder is to go to another worker: log out
    /// and stop.
    Shutdown,
    /// The folder's lease ended (another worker's now, or no longer certain): no further IMAP
    /// command but the logout; the task stops and waits for the lease again.
    LeaseLost,
}

/// One sweep on a new session, then logout: what `mailintake once` does per folder. A sweep that
/// stops because its session's token expires soon goes on, at the checkpoint, on a new session.
#[instrument(skip_all, fields(mailbox = %ctx.mailbox.name, folder = ctx.folder))]
pub async fn run_cycle(
    ctx: &MailboxContext<'_>,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let mut total = CycleReport::default();
    loop {
        let mut session = login(ctx).await?;
        let result = sweep(ctx, &mut session, shutdown).await;
        session.source.logout().await;
        let swept = result?;
        total.merge(&swept.report);
        match swept.end {
            // A new session with a renewed token resumes at the checkpoint.
            SweepEnd::TokenExpiring => info!("logging in again with a renewed access token"),
            SweepEnd::Complete | SweepEnd::Shutdown => return Ok(total),
        }
    }
}

/// Sweeps, then waits for new mail (IDLE where offered, else `poll_interval`), until `cancel`.
/// Keeps one session open; reconnects with a fresh token before the old one expires; after
/// trouble backs off exponentially with jitter; when an administrator must act, retries only
/// every ten minutes.
pub async fn mailbox_loop(ctx: &MailboxContext<'_>, cancel: &CancellationToken) {
    let mut task = FolderTask {
        ctx,
        cancel,
        session: None,
        backoff: new_backoff(),
    };
    let mut wake = Wake::Reconnect;
    loop {
        if cancel.is_cancelled() {
            wake = Wake::Shutdown;
        }
        match wake {
            Wake::Shutdown | Wake::LeaseLost => break,
            Wake::TokenRenewal => {
                info!("access token due for renewal; reconnecting with a fresh one");
                if let Some(session) = task.session.take() {
                    session.source.logout().await;
                }
            }
            // The connection's state is unknown after an error: it is dropped, not logged out.
            Wake::Reconnect => task.session = None,
            Wake::NewMail | Wake::Timer => {}
        }
        wake = task.sweep_and_wait().await;
    }
    if let Some(session) = task.session.take() {
        session.source.logout().await;
    }
    info!("mailbox stopped");
}

fn new_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The state the folder task keeps between wake-ups.
struct FolderTask<'a, 'c> {
    ctx: &'a MailboxContext<'c>,
    cancel: &'a CancellationToken,
    /// The open session, kept across sweeps; `None` until logged in (again).
    session: Option<Session<Source>>,
    /// Delays after trouble; reset after every successful sweep.
    backoff: backon::ExponentialBackoff,
}

impl FolderTask<'_, '_> {
    /// Logs in if there is no session, sweeps, and waits for the next reason to sweep.
    async fn sweep_and_wait(&mut self) -> Wake {
        let ctx = self.ctx;
        if let Err(e) = ctx.check_lease() {
            info!(error = %e, "not logging in");
            return Wake::LeaseLost;
        }
        let mut session = match self.session.take() {
            Some(session) => session,
            // Stopped while the login waits its turn (shutdown, or the lease is to go to a
            // worker that joined): nothing was sent, nothing to log out of.
            None => match login_unless_stopped(ctx, self.cancel).await {
                None => return Wake::Shutdown,
                Some(Ok(fresh)) => {
                    ctx.metrics.logged_in(&ctx.mailbox.name, ctx.folder);
                    fresh
                }
                Some(Err(e)) => {
                    let delay = self.failure_delay(&e);
                    return self.pause(delay, Wake::Reconnect).await;
                }
            },
        };

        failpoint::hit(Point::SweepStart);
        let was_fresh = session.fresh;
        let sweep_started = Instant::now();
        match sweep(ctx, &mut session, self.cancel).await {
            Ok(swept) => {
                ctx.metrics.sweep_done(
                    &ctx.mailbox.name,
                    ctx.folder,
                    &swept.report,
                    sweep_started.elapsed(),
                );
                if swept.end == SweepEnd::TokenExpiring {
                    // Logged out and replaced by a session with a renewed token, which resumes
                    // at the checkpoint.
                    self.session = Some(session);
                    return Wake::TokenRenewal;
                }
            }
            Err(e) if e.is_lease_end() => {
                if let (CycleError::Store(_), Some(tenure)) = (&e, ctx.tenure) {
                    tenure.lost();
                }
                warn!(error = %e, "stopping this folder's work: nothing more is disposed of, the session is logged out");
                self.session = Some(session);
                return Wake::LeaseLost;
            }
            Err(e) => {
                if !was_fresh && !e.needs_admin() && !matches!(e, CycleError::Store(_)) {
                    info!(error = %e, "sweep failed on a reused connection; reconnecting at once");
                    return Wake::Reconnect;
                }
                let delay = self.failure_delay(&e);
                return self.pause(delay, Wake::Reconnect).await;
            }
        }
        self.backoff = new_backoff();
        self.wait(session).await
    }

    /// Waits for the next sweep with the session: never past the token's renewal, never longer
    /// than `poll_interval`; in IDLE where the server offers it and the mailbox wants it.
    async fn wait(&mut self, session: Session<Source>) -> Wake {
        let mailbox = self.ctx.mailbox;
        let renew_at = session.token_renew_at;
        let until_renewal = renew_at.saturating_duration_since(Instant::now());
        let wait = mailbox.poll_interval.min(until_renewal);
        let wake = if mailbox.idle && session.source.can_wait_for_change() {
            let Session {
                source,
                token_renew_at,
                last_batch_by,
                fresh,
            } = session;
            match source
                .wait_for_change(wait.min(mailbox.idle_interval), self.cancel)
                .await
            {
                Ok((source, outcome)) => {
                    debug!(?outcome, "IDLE ended");
                    self.session = Some(Session {
                        source,
                        token_renew_at,
                        last_batch_by,
                        fresh,
                    });
                    match outcome {
                        IdleOutcome::Changed => Wake::NewMail,
                        IdleOutcome::Timeout => Wake::Timer,
                        IdleOutcome::Shutdown => Wake::Shutdown,
                    }
                }
                Err(e) => {
                    warn!(error = %e, "connection lost while idling; reconnecting");
                    let delay = self.backoff.next().unwrap_or(Duration::from_secs(1));
                    return self.pause(delay, Wake::Reconnect).await;
                }
            }
        } else {
            self.session = Some(session);
            self.pause(wait, Wake::Timer).await
        };
        match wake {
            Wake::NewMail | Wake::Timer if Instant::now() >= renew_at => Wake::TokenRenewal,
            other => other,
        }
    }

    /// Counts and logs a failed login or sweep; returns how long to wait before the next try.
    fn failure_delay(&mut self, e: &CycleError) -> Duration {
        let ctx = self.ctx;
        // With the fix for a database failure (disk full, locked, …), for the log and the page.
        let explained = ctx.store.explain_failure(e);
        let failure = Failure {
            source: e.source(),
            needs_admin: e.needs_admin(),
            text: &explained,
        };
        ctx.metrics
            .cycle_failed(&ctx.mailbox.name, ctx.folder, &ctx.identity.name, &failure);
        if e.needs_admin() {
            error!(error = %explained, "mailbox stopped until an administrator fixes this; retrying in 10 minutes");
            Duration::from_secs(600)
        } else {
            let delay = self.backoff.next().unwrap_or(Duration::from_secs(300));
            warn!(error = %explained, retry_in_ms = delay.as_millis() as u64, "mailbox trouble; will retry");
            delay
        }
    }

    /// Waits `delay`, then wakes with `then`, unless shutdown comes first.
    async fn pause(&self, delay: Duration, then: Wake) -> Wake {
        tokio::select! {
            _ = self.cancel.cancelled() => Wake::Shutdown,
            _ = tokio::time::sleep(delay) => then,
        }
    }
}
