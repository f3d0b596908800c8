//! Logging in: a mail-source session with the identity's cached token, and what the folder task
//! knows about it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{CycleError, MailboxContext};
use crate::config::{Identity, Mailbox};
use crate::imap::{self, ImapSource};
use crate::mail_source::{MailSource, SourceError};
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

/// The mail source the folder tasks use. This module is the one place that picks an
/// implementation of the seam; a second transport makes this an enum over both.
pub type Source = ImapSource;

/// Spreads the process's logins to each server out over time, at most `imap.logins_per_second`
/// a second (the mailbox's setting, per host): when hundreds of folders start at once (a worker
/// starting, a server coming back) they log in one after the other instead of at once, which
/// servers throttle (Exchange) or refuse (Dovecot's `mail_max_userip_connections`, a process
/// limit). Each login takes the next free slot of its host and waits for it.
#[derive(Debug, Default)]
pub struct LoginPacer {
    next_free: Mutex<HashMap<String, Instant>>,
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
            next_free.insert(host, slot + spacing);
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// Logs in to the mailbox's server with a cached token, in its turn ([`LoginPacer`]); if the
/// server refuses it, forgets it and tries once more with a fresh one (the token may have been
/// revoked or have expired early).
pub async fn login(ctx: &MailboxContext<'_>) -> Result<Session<Source>, CycleError> {
    login_to(&Login {
        mailbox: ctx.mailbox,
        identity: ctx.identity,
        tokens: ctx.tokens,
        metrics: ctx.metrics,
        logins: ctx.logins,
    })
    .await
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
    let imap = &ctx.mailbox.imap;
    ctx.logins.wait(&imap.host, imap.logins_per_second).await;
    let command_timeout = ctx.mailbox.imap.timeouts.command;
    // A token that outlasts the margin, so the new session can take batches.
    let lasting = 2 * command_timeout;
    let token = ctx.tokens.token_lasting(ctx.identity, lasting).await?;
    ctx.metrics
        .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
    let conn = match imap::connect(&ctx.mailbox.imap, &ctx.mailbox.address, &token).await {
        Ok(conn) => conn,
        Err(e) if e.is_auth_failure() => {
            warn!("login refused; retrying once with a new token");
            ctx.tokens.invalidate(&ctx.identity.name, &token).await;
            let token = ctx.tokens.token_lasting(ctx.identity, lasting).await?;
            ctx.metrics
                .token_received(&ctx.identity.name, token.renew_at, token.expires_in);
            let conn = imap::connect(&ctx.mailbox.imap, &ctx.mailbox.address, &token)
                .await
                .map_err(SourceError::from)?;
            return Ok(Session::new(ImapSource::new(conn), &token, command_timeout));
        }
        Err(e) => return Err(SourceError::from(e).into()),
    };
    Ok(Session::new(ImapSource::new(conn), &token, command_timeout))
}
