//! The reconciliation below the checkpoint: now and then (`reconcile_interval`, default 1 h) a
//! sweep asks the server which messages it has at or below the checkpoint and takes in any that has
//! no recorded outcome. The listing above the checkpoint cannot see such a message: a server that
//! makes a message visible late (Exchange, a replica catching up) gives it a UID the checkpoint has
//! already passed.
//!
//! One `UID SEARCH` (with `UNSEEN` where every processed message is `\Seen`), compared with the
//! ledger; nothing is fetched unless a gap is found. The sweep takes the gaps through the same
//! batches as any listing: decided, committed, then disposed of.

use tracing::{debug, warn};

use super::session::Session;
use super::{CycleError, MailboxContext};
use crate::config::{Disposal, FirstStart, Mode};
use crate::mail_source::{MailSource, MessageSummary, Uid};
use crate::store::FolderState;
use crate::time::now_ms;

/// A reconciliation that was due: what it found, and when it began (recorded by [`done`] once
/// the sweep has taken the gaps in).
pub(super) struct Reconciliation {
    /// The messages at or below the checkpoint without an outcome, in UID order.
    pub gaps: Vec<MessageSummary>,
    started_ms: i64,
}

/// When `reconcile_interval` has passed since the folder's last reconciliation (or it never had
/// one): the messages the server has at or below the checkpoint that have no recorded outcome.
/// `None` when it is not due.
pub(super) async fn gaps_if_due<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    state: &FolderState,
) -> Result<Option<Reconciliation>, CycleError> {
    let mailbox = ctx.mailbox;
    let started_ms = now_ms();
    let interval_ms = mailbox.reconcile_interval.as_millis() as i64;
    let last = ctx.store.reconciled_at(&mailbox.name, ctx.folder).await?;
    if last.is_some_and(|at| started_ms - at < interval_ms) {
        return Ok(None);
    }
    // The checkpoint as this sweep's commits left it.
    let checkpoint = match ctx.store.folder_state(&mailbox.name, ctx.folder).await? {
        Some(current) if current.uidvalidity == state.uidvalidity => current.last_uid,
        _ => return Ok(None),
    };
    // With `first_start = "now"`, what was in the folder at the first start was never listed and
    // stays untouched: the range starts at the first-start mark.
    let first = match (mailbox.first_start, state.first_uid_next) {
        (FirstStart::Now, Some(mark)) => mark,
        _ => Uid(1),
    };
    let mut gaps = Vec::new();
    if first <= checkpoint {
        // Where every processed message is flagged \Seen and stays, only unseen ones can be gaps.
        let unseen_only =
            mailbox.mode == Mode::Normal && matches!(mailbox.dispose, Disposal::MarkSeen);
        let there = session
            .source
            .search_range(first, checkpoint, unseen_only)
            .await?;
        let recorded = ctx
            .store
            .recorded_among(&mailbox.name, ctx.folder, state.uidvalidity, &there)
            .await?;
        let missing: Vec<Uid> = there
            .iter()
            .copied()
            .filter(|uid| !recorded.contains(uid))
            .collect();
        if missing.is_empty() {
            debug!(
                n_searched = there.len(),
                checkpoint = checkpoint.0,
                "reconciled below the checkpoint: every message there has its outcome"
            );
        } else {
            gaps = session.source.list_uids(&missing).await?;
            warn!(
                n = gaps.len(),
                uids = %crate::imap::uid_set(&missing),
                checkpoint = checkpoint.0,
                "the server has message(s) below the checkpoint that were never listed (shown late); taking them in now"
            );
        }
    }
    Ok(Some(Reconciliation { gaps, started_ms }))
}

/// Records that the reconciliation is done (its gaps taken in).
pub(super) async fn done(
    ctx: &MailboxContext<'_>,
    reconciliation: &Reconciliation,
) -> Result<(), CycleError> {
    ctx.store
        .mark_reconciled(
            &ctx.mailbox.name,
            ctx.folder,
            reconciliation.started_ms,
            ctx.fence().as_ref(),
        )
        .await?;
    Ok(())
}
