//! Logging in: a mail-source session with the identity's cached token, and what the folder task
//! knows about it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use tokio_util::sync::CancellationToken;

use super::{CycleError, MailboxContext};
use crate::config::{GraphEndpoint, Identity, Mailbox, Transport};
use crate::graph::{self, GraphLogin, GraphSource};
use crate::imap::{self, ImapSource};
use crate::mail_source::{
    Body, CopyKept, Disposition, IdleOutcome, MailSource, MessageSummary, SelectedFolder,
    SourceError, SourceErrorKind, Uid,
};
use crate::oauth::{AccessToken, TokenCache};
use crate::telemetry::Metrics;

/// A logged-in session and what the folder task knows about it.
pub struct Session<S: MailSource> {
    pub source: S,
    /// When the token this session logged in with is due for renewal. Exchange ends sessions
    /// whose token expires, so the task reconnects with a fresh token before then.
    pub token_renew_at: Instant,
    /// From here on the session takes no further batch: its token expires within the margin
    /// ([`expiry_margin`]), and IMAP cannot re-authenticate a session, so the sweep stops between
    /// batches and resumes at the checkpoint on a new session.
    pub last_batch_by: Instant,
    /// True until the first sweep on this session; a failure on a reused session is retried at
    /// once on a fresh one (the server may have dropped an idle connection).
    pub fresh: bool,
}

impl<S: MailSource> Session<S> {
    pub fn new(source: S, token: &AccessToken, command_timeout: Duration) -> Session<S> {
        Session {
            source,
            token_renew_at: token.renew_at,
            last_batch_by: token.expires_at - expiry_margin(command_timeout, token.expires_in),
            fresh: true,
        }
    }
}

/// How long before its token expires a session starts no further batch: two command timeouts
/// (a batch's download and its dispositions, the longest it can take), or half the token's
/// lifetime for a token that lives shorter than four.
pub fn expiry_margin(command_timeout: Duration, token_lifetime: Duration) -> Duration {
    (2 * command_timeout).min(token_lifetime / 2)
}

/// The mail source the folder tasks use: the mailbox's transport. This module is the one place
/// that picks an implementation of the seam.
pub enum Source {
    Imap(ImapSource),
    Graph(GraphSource),
}

/// Each operation goes to the implementation.
impl MailSource for Source {
    async fn open(&mut self, folder: &str, read_only: bool) -> Result<SelectedFolder, SourceError> {
        match self {
            Source::Imap(s) => s.open(folder, read_only).await,
            Source::Graph(s) => s.open(folder, read_only).await,
        }
    }

    async fn list_above(&mut self, last: Uid) -> Result<Vec<MessageSummary>, SourceError> {
        match self {
            Source::Imap(s) => s.list_above(last).await,
            Source::Graph(s) => s.list_above(last).await,
        }
    }

    async fn search_range(
        &mut self,
        first: Uid,
        last: Uid,
        unseen_only: bool,
    ) -> Result<Vec<Uid>, SourceError> {
        match self {
            Source::Imap(s) => s.search_range(first, last, unseen_only).await,
            Source::Graph(s) => s.search_range(first, last, unseen_only).await,
        }
    }

    async fn list_uids(&mut self, uids: &[Uid]) -> Result<Vec<MessageSummary>, SourceError> {
        match self {
            Source::Imap(s) => s.list_uids(uids).await,
            Source::Graph(s) => s.list_uids(uids).await,
        }
    }

    async fn fetch_bodies(
        &mut self,
        uids: &[Uid],
        cap: u64,
    ) -> Result<Vec<(Uid, Body)>, SourceError> {
        match self {
            Source::Imap(s) => s.fetch_bodies(uids, cap).await,
            Source::Graph(s) => s.fetch_bodies(uids, cap).await,
        }
    }

    async fn fetch_identifying_headers(&mut self, uid: Uid) -> Result<Vec<u8>, SourceError> {
        match self {
            Source::Imap(s) => s.fetch_identifying_headers(uid).await,
            Source::Graph(s) => s.fetch_identifying_headers(uid).await,
        }
    }

    async fn dispose(
        &mut self,
        uids: &[Uid],
        disposition: &Disposition,
    ) -> Result<(), SourceError> {
        match self {
            Source::Imap(s) => s.dispose(uids, disposition).await,
            Source::Graph(s) => s.dispose(uids, disposition).await,
        }
    }

    fn can_wait_for_change(&self) -> bool {
        match self {
            Source::Imap(s) => s.can_wait_for_change(),
            Source::Graph(s) => s.can_wait_for_change(),
        }
    }

    async fn wait_for_change(
        self,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(Self, IdleOutcome), SourceError> {
        match self {
            Source::Imap(s) => {
                let (s, outcome) = s.wait_for_change(max_wait, shutdown).await?;
                Ok((Source::Imap(s), outcome))
            }
            Source::Graph(s) => {
                let (s, outcome) = s.wait_for_change(max_wait, shutdown).await?;
                Ok((Source::Graph(s), outcome))
            }
        }
    }

    async fn sent_folder(&mut self) -> Result<Option<String>, SourceError> {
        match self {
            Source::Imap(s) => s.sent_folder().await,
            Source::Graph(s) => s.sent_folder().await,
        }
    }

    async fn keep_copy(
        &mut self,
        folder: &str,
        message_id: &str,
        raw: &[u8],
    ) -> Result<CopyKept, SourceError> {
        match self {
            Source::Imap(s) => s.keep_copy(folder, message_id, raw).await,
            Source::Graph(s) => s.keep_copy(folder, message_id, raw).await,
        }
    }

    async fn logout(self) {
        match self {
            Source::Imap(s) => s.logout().await,
            Source::Graph(s) => s.logout().await,
        }
    }
}

/// Spreads the process's logins to each server out over time, at most `imap.logins_per_second`
/// a second (the mailbox's setting, per host): when hundreds of folders start at once (a worker
/// starting, a server coming back) they log in one after the other instead of at once, which
/// servers throttle (Exchange) or refuse (Dovecot's `mail_max_userip_connections`, a process
/// limit). Each login takes the next free slot of its host and waits for it.
#[derive(Debug, Default)]
pub struct LoginPacer {
    next_free: Mutex<HashMap<String, Instant>>,
    /// What the process's Graph sessions share: HTTP connections, and per app the bound on
    /// requests at once (Outlook counts it per app, across mailboxes).
    pub graph: graph::Shared,
}

impl LoginPacer {
    /// Waits for the next login slot to `host`; `per_second` apart from the one before.
    pub async fn wait(&self, host: &str, per_second: u32) {
        let spacing = Duration::from_secs(1) / per_second.max(1);
        let host = host.to_ascii_lowercase();
        let slot = {
            let mut next_free = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next_free
                .get(&host)
                .copied()
                .filter(|at| *at > now)
                .unwrap_or(now);
            next_free.insert(host.clone(), slot + spacing);
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
        // The moment a connection may start, in the log: the tests read the pace from it.
        tracing::debug!(%host, per_second, "login slot reached");
    }

    /// [`LoginPacer::wait`], unless `stop` comes first: then `false`, and the slot goes unused
    /// (the logins after it keep their places, a spacing later than they might have been).
    pub async fn wait_unless_stopped(
        &self,
        host: &str,
        per_second: u32,
        stop: &CancellationToken,
    ) -> bool {
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = self.wait(host, per_second) => true,
        }
    }
}

/// Logs in to the mailbox's server with a cached token, in its turn ([`LoginPacer`]); if the
/// server refuses it, forgets it and tries once more with a fresh one (the token may have been
/// revoked or have expired early).
pub async fn login(ctx: &MailboxContext<'_>) -> Result<Session<Source>, CycleError> {
    if let Some(imap) = ctx.mailbox.imap() {
        ctx.logins.wait(&imap.host, imap.logins_per_second).await;
    }
    login_in_turn(ctx).await
}

/// [`login`], unless `stop` comes while the login waits its turn: then `None`, before anything
/// was sent. With many folders on one server the turn may be far off (1,000 folders at 10
/// logins a second: 100 s), and a folder task asked to stop meanwhile — shutdown, or its lease
/// given up to a worker that joined, which picks the newest tenures, those still waiting — must
/// not log in, open the folder and list it first. Once the turn came, the login runs to its end
/// (a token request is not cut off halfway: its answer may carry a rotated refresh token).
pub async fn login_unless_stopped(
    ctx: &MailboxContext<'_>,
    stop: &CancellationToken,
) -> Option<Result<Session<Source>, CycleError>> {
    if let Some(imap) = ctx.mailbox.imap()
        && !ctx
            .logins
            .wait_unless_stopped(&imap.host, imap.logins_per_second, stop)
            .await
    {
        return None;
    }
    Some(login_in_turn(ctx).await)
}

/// The login itself, its turn ([`LoginPacer`]) taken already for IMAP.
async fn login_in_turn(ctx: &MailboxContext<'_>) -> Result<Session<Source>, CycleError> {
    if let Transport::Graph(graph) = &ctx.mailbox.transport {
        return login_graph(ctx, graph).await;
    }
    login_imap_in_turn(&Login {
        mailbox: ctx.mailbox,
        identity: ctx.identity,
        tokens: ctx.tokens,
        metrics: ctx.metrics,
        logins: ctx.logins,
    })
    .await
}

/// A Graph session: a Graph token (its own scope, cached beside the identity's others), proven
/// by reading the mailbox; a refused token is renewed once, as for IMAP.
async fn login_graph(
    ctx: &MailboxContext<'_>,
    graph: &GraphEndpoint,
) -> Result<Session<Source>, CycleError> {
    let command_timeout = graph.timeout;
    let lasting = 2 * command_timeout;
    let login = GraphLogin {
        shared: &ctx.logins.graph,
        endpoint: graph,
        address: &ctx.mailbox.address,
        client_id: &ctx.identity.client_id,
    };
    let mut renewed = false;
    loop {
        let token = ctx
            .tokens
            .token_for_scope_lasting(ctx.identity, &graph.scope, lasting)
            .await?;
        ctx.metrics
            .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
        match GraphSource::connect(&login, token.secret.clone(), &ctx.mailbox.name, ctx.store).await
        {
            Ok(source) => {
                return Ok(Session::new(Source::Graph(source), &token, command_timeout));
            }
            Err(e) if !renewed && e.refusal().is_some_and(|r| r.status == 401) => {
                warn!("Graph refused the token; retrying once with a new one");
                ctx.tokens.invalidate(&ctx.identity.name, &token).await;
                renewed = true;
            }
            Err(e) => return Err(SourceError::from(e).into()),
        }
    }
}

/// What a login needs: the folder tasks' [`MailboxContext`] has it, and so does the sender's
/// copy to the Sent folder (`intake::sent_copy`).
pub struct Login<'a> {
    pub mailbox: &'a Mailbox,
    pub identity: &'a Identity,
    pub tokens: &'a TokenCache,
    pub metrics: &'a Metrics,
    pub logins: &'a LoginPacer,
}

/// [`login`] with only what a login needs.
pub async fn login_to(ctx: &Login<'_>) -> Result<Session<Source>, CycleError> {
    if let Some(imap) = ctx.mailbox.imap() {
        ctx.logins.wait(&imap.host, imap.logins_per_second).await;
    }
    login_imap_in_turn(ctx).await
}

/// An IMAP login, its turn taken already.
async fn login_imap_in_turn(ctx: &Login<'_>) -> Result<Session<Source>, CycleError> {
    let Some(imap) = ctx.mailbox.imap() else {
        return Err(CycleError::Source(SourceError::new(
            SourceErrorKind::Refused,
            NotImap(ctx.mailbox.name.clone()),
        )));
    };
    let command_timeout = imap.timeouts.command;
    // A token that outlasts the margin, so the new session can take batches.
    let lasting = 2 * command_timeout;
    let token = ctx.tokens.token_lasting(ctx.identity, lasting).await?;
    ctx.metrics
        .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
    let conn = match imap::connect(imap, &ctx.mailbox.address, &token).await {
        Ok(conn) => conn,
        Err(e) if e.is_auth_failure() => {
            warn!("login refused; retrying once with a new token");
            ctx.tokens.invalidate(&ctx.identity.name, &token).await;
            let token = ctx.tokens.token_lasting(ctx.identity, lasting).await?;
            ctx.metrics
                .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
            let conn = imap::connect(imap, &ctx.mailbox.address, &token)
                .await
                .map_err(SourceError::from)?;
            return Ok(Session::new(
                Source::Imap(ImapSource::new(conn)),
                &token,
                command_timeout,
            ));
        }
        Err(e) => return Err(SourceError::from(e).into()),
    };
    Ok(Session::new(
        Source::Imap(ImapSource::new(conn)),
        &token,
        command_timeout,
    ))
}

/// An IMAP login asked of a mailbox read through Graph (only IMAP keeps copies in Sent Items
/// by `sent_copy = "append"`, which validation refuses for Graph).
#[derive(Debug, thiserror::Error)]
#[error("mailbox `{0}` is read through Microsoft Graph, not IMAP")]
struct NotImap(String);

#[cfg(test)]
mod tests {
    use super::*;

    /// A login far back in the queue gives its turn up as soon as it is asked to stop, instead
    /// of waiting for it (and then logging in for nothing); the turns before it are kept.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_a_login_turn() {
        let pacer = LoginPacer::default();
        // Paused time: tokio's clock (the pacer's slots come from the real one, a few
        // microseconds apart).
        let start = tokio::time::Instant::now();
        let about = |elapsed: Duration, expected: Duration| {
            elapsed.abs_diff(expected) < Duration::from_millis(10)
        };
        // 100 logins ahead, 10 a second: the next turn is 10 s away.
        for _ in 0..100 {
            let _ = tokio::time::timeout(Duration::ZERO, pacer.wait("imap.test", 10)).await;
        }
        let stop = CancellationToken::new();
        let stopper = {
            let stop = stop.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                stop.cancel();
            }
        };
        let (took_turn, ()) =
            tokio::join!(pacer.wait_unless_stopped("imap.test", 10, &stop), stopper);
        assert!(!took_turn);
        assert!(
            about(start.elapsed(), Duration::from_millis(300)),
            "{:?}",
            start.elapsed()
        );
        // Not stopped: it waits for its turn (the 102nd slot: 10.1 s after the start).
        let stop = CancellationToken::new();
        assert!(pacer.wait_unless_stopped("imap.test", 10, &stop).await);
        assert!(
            about(start.elapsed(), Duration::from_millis(10_100)),
            "{:?}",
            start.elapsed()
        );
    }
}
