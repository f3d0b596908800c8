//! The reconciliation below the checkpoint: now and then (`reconcile_interval`, default 1 h) a
//! sweep asks the server which messages it has at or below the checkpoint and takes in any that has
//! no recorded outcome. The listing above the checkpoint cannot see such a message: a server that
//! makes a message visible late (Exchange, a replica catching up) gives it a UID the checkpoint has
//! already passed.
//!
//! One `UID SEARCH` (with `UNSEEN` where every processed message is `\Seen`), compared with the
//! ledger; nothing is fetched unless a gap is found. A gap goes through the same batches as any
//! listing: decided, committed, then disposed of.

use tracing::{debug, info, warn};

use super::record::record_batch;
use super::session::Session;
use super::sweep::{batches, dispose_all, prepare_batch};
use super::{CycleError, MailboxContext};
use crate::config::{Disposal, FirstStart, Mode};
use crate::mail_source::{MailSource, Uid};
use crate::report::CycleReport;
use crate::store::FolderState;
use crate::time::now_ms;

/// Reconciles the folder below its checkpoint when `reconcile_interval` has passed since the last
/// time (or it never was). Returns whether the server refused a disposition of what it found.
pub(super) async fn reconcile_if_due<S: MailSource>(
    ctx: &MailboxContext<'_>,
    session: &mut Session<S>,
    state: &FolderState,
    report: &mut CycleReport,
) -> Result<bool, CycleError> {
    let mailbox = ctx.mailbox;
    let now = now_ms();
    let interval_ms = mailbox.reconcile_interval.as_millis() as i64;
    let last = ctx.store.reconciled_at(&mailbox.name, ctx.folder).await?;
    if last.is_some_and(|at| now - at < interval_ms) {
        return Ok(false);
    }
    // The checkpoint as this sweep's commits left it.
    let checkpoint = match ctx.store.folder_state(&mailbox.name, ctx.folder).await? {
        Some(current) if current.uidvalidity == state.uidvalidity => current.last_uid,
        _ => return Ok(false),
    };
    // With `first_start = "now"`, what was in the folder at the first start was never listed and
    // stays untouched: the range starts at the first-start mark.
    let first = match (mailbox.first_start, state.first_uid_next) {
        (FirstStart::Now, Some(mark)) => mark,
        _ => Uid(1),
    };
    let mut refused = false;
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
        let gaps: Vec<Uid> = there
            .iter()
            .copied()
            .filter(|uid| !recorded.contains(uid))
            .collect();
        if gaps.is_empty() {
            debug!(
                n_searched = there.len(),
                checkpoint = checkpoint.0,
                "reconciled below the checkpoint: every message there has its outcome"
            );
        } else {
            let listed = session.source.list_uids(&gaps).await?;
            warn!(
                n = listed.len(),
                uids = %crate::imap::uid_set(&gaps),
                checkpoint = checkpoint.0,
                "the server has message(s) below the checkpoint that were never listed (shown late); taking them in now"
            );
            report.n_reconciled += listed.len();
            for batch in batches(
                &listed,
                mailbox.fetch_batch_bytes,
                mailbox.fetch_batch_messages,
                mailbox.max_message_bytes,
                None,
            ) {
                let prepared = prepare_batch(ctx, &mut session.source, state, batch).await?;
                report.bytes_fetched += prepared.bytes_fetched;
                let (to_dispose, counted) = record_batch(ctx, state, prepared).await?;
                report.add(&counted);
                refused |= dispose_all(ctx, session, state.uidvalidity, &to_dispose).await?;
            }
            info!(n = listed.len(), "reconciliation done");
        }
    }
    ctx.store
        .mark_reconciled(&mailbox.name, ctx.folder, now)
        .await?;
    Ok(refused)
}
