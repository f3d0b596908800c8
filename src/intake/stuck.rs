//! Messages that wait. A failure counts against a message only when it is the message's own: the
//! server answered without it when it was asked for alone on a session that works (a tagged
//! NO/BAD, no body while UID SEARCH still finds it), or the connection was lost while it alone
//! was being fetched. A batch that fails says nothing about any one of its messages; after a lost
//! connection its messages are taken one at a time (the sweep's alone range) to find out.
//!
//! A message with such a failure waits (`stuck_messages`): the checkpoint stays below it (the
//! store never moves it past a waiting message), the mail after it comes in and is recorded above
//! it, and it is tried again alone at the end of every sweep. A message the reconciliation found
//! below the checkpoint waits by the same rules. It is set aside as unreadable only
//! once `unreadable_after` has passed since its first failure — and, when it broke the connection,
//! only after [`CONNECTION_LOSSES`] sessions in a row. It is forgotten when it comes through or
//! is gone from the folder.

use std::time::Duration;

use tracing::{error, warn};

use super::record::{location, quarantine_disposition};
use super::{CycleError, MailboxContext};
use crate::ingest::QuarantineReason;
use crate::mail_source::{Disposition, MailSource, MessageSummary, Uid};
use crate::store::{FolderState, QuarantineEnvelope, StoreError, StuckFailure, StuckMessage};
use crate::time::now_ms;

/// Connection losses in a row, each on its own session while the message alone was fetched, that
/// make a lost connection the message's trouble rather than the network's.
pub const CONNECTION_LOSSES: i64 = 3;

/// Whether a waiting message has failed long enough, and in a way that is surely its own, to be
/// set aside: `unreadable_after` since its first failure, and its last failure a refusal on a
/// working session or the [`CONNECTION_LOSSES`]-th lost connection in a row.
pub fn is_due(stuck: &StuckMessage, unreadable_after: Duration, now_ms: i64) -> bool {
    let waited_ms = now_ms.saturating_sub(stuck.first_failed_at_ms);
    let long_enough = waited_ms >= unreadable_after.as_millis() as i64;
    let its_own = stuck.connection_losses == 0 || stuck.connection_losses >= CONNECTION_LOSSES;
    long_enough && its_own
}

/// Counts a failure of message `uid` that is its own, and logs that it waits.
pub async fn note(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    uid: Uid,
    failure: StuckFailure,
    error: &str,
) -> Result<StuckMessage, StoreError> {
    let stuck = ctx
        .store
        .note_stuck(
            &ctx.mailbox.name,
            ctx.folder,
            state.uidvalidity,
            uid,
            failure,
            error,
            ctx.fence().as_ref(),
        )
        .await?;
    warn!(
        uid = uid.0,
        failures = stuck.failures,
        connection_losses = stuck.connection_losses,
        waiting_ms = now_ms().saturating_sub(stuck.first_failed_at_ms),
        unreadable_after_ms = ctx.mailbox.unreadable_after.as_millis() as u64,
        error,
        "the server did not deliver this message; it waits and is tried again alone while the mail after it comes in"
    );
    Ok(stuck)
}

/// A message that waits, with what the server says about it now.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub stuck: StuckMessage,
    pub message: MessageSummary,
}

/// The folder's waiting messages that are still there, in UID order: those above the checkpoint
/// from the listing, those below it (found late by a reconciliation) asked of the server. The
/// others are forgotten: gone from the folder (expunged, moved by someone), or recorded under
/// another UIDVALIDITY.
pub async fn still_waiting<S: MailSource>(
    ctx: &MailboxContext<'_>,
    source: &mut S,
    state: &FolderState,
    listed: &[MessageSummary],
) -> Result<Vec<Waiting>, CycleError> {
    let rows = ctx
        .store
        .stuck_messages(&ctx.mailbox.name, ctx.folder)
        .await?;
    let below: Vec<Uid> = rows
        .iter()
        .filter(|s| s.uidvalidity == state.uidvalidity && s.uid <= state.last_uid)
        .map(|s| s.uid)
        .collect();
    let below = if below.is_empty() {
        Vec::new()
    } else {
        source.list_uids(&below).await?
    };
    let mut waiting = Vec::new();
    for stuck in rows {
        let found = (stuck.uidvalidity == state.uidvalidity)
            .then(|| {
                let there = if stuck.uid <= state.last_uid {
                    &below
                } else {
                    listed
                };
                there
                    .binary_search_by_key(&stuck.uid, |m| m.uid)
                    .ok()
                    .map(|at| there[at].clone())
            })
            .flatten();
        match found {
            Some(message) => waiting.push(Waiting { stuck, message }),
            None => {
                warn!(
                    uid = stuck.uid.0,
                    uidvalidity = stuck.uidvalidity,
                    failures = stuck.failures,
                    "a message that waited is gone from the folder; forgotten"
                );
                ctx.store
                    .clear_stuck(
                        &ctx.mailbox.name,
                        ctx.folder,
                        stuck.uidvalidity,
                        stuck.uid,
                        ctx.fence().as_ref(),
                    )
                    .await?;
            }
        }
    }
    waiting.sort_by_key(|w| w.message.uid);
    Ok(waiting)
}

/// Records a message the server keeps failing to deliver as quarantined (unread) and forgets that
/// it waited; returns the move to the quarantine folder, which is the caller's to perform (`None`:
/// another worker recorded it first, and disposing of it is that worker's). Nothing is lost: the
/// message stays in that folder and `mailintake quarantine release` brings it back.
pub async fn record_unreadable(
    ctx: &MailboxContext<'_>,
    state: &FolderState,
    message: &MessageSummary,
    stuck: &StuckMessage,
) -> Result<Option<Disposition>, StoreError> {
    let waited = Duration::from_millis(now_ms().saturating_sub(stuck.first_failed_at_ms) as u64);
    let reason = QuarantineReason::Unreadable {
        attempts: stuck.failures,
        error: format!(
            "{}; waited {} since the first failure",
            stuck.last_error.lines().next().unwrap_or(""),
            humantime::format_duration(Duration::from_secs(waited.as_secs()))
        ),
    };
    let at = location(ctx, state, message);
    // Nothing more is read from a message the server cannot deliver: it is known by its place.
    let envelope = QuarantineEnvelope {
        message_id: format!(
            "uid-{}-{}@unreadable.mailintake.invalid",
            state.uidvalidity, message.uid.0
        ),
        ..QuarantineEnvelope::default()
    };
    let disposition = quarantine_disposition(ctx.mailbox);
    let mut tx = ctx.store.begin().await?;
    if let Some(tenure) = ctx.tenure {
        tx.fence(&tenure.lease());
    }
    let quarantine_id = tx
        .quarantine(&at, &envelope, &reason, None, &disposition)
        .await?;
    let committed = match tx.commit().await {
        Ok(()) => Some(disposition),
        Err(StoreError::Conflict) => None,
        Err(e) => return Err(e),
    };
    ctx.store
        .clear_stuck(
            &ctx.mailbox.name,
            ctx.folder,
            state.uidvalidity,
            message.uid,
            ctx.fence().as_ref(),
        )
        .await?;
    if committed.is_some() {
        error!(
            uid = message.uid.0,
            quarantine_id,
            detail = %reason.detail(),
            "set aside unread"
        );
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck(connection_losses: i64, first_failed_at_ms: i64) -> StuckMessage {
        StuckMessage {
            uidvalidity: 1,
            uid: Uid(7),
            failures: connection_losses.max(1),
            connection_losses,
            first_failed_at_ms,
            last_error: "no body".into(),
        }
    }

    #[test]
    fn a_message_is_due_only_after_the_wait_and_for_failures_of_its_own() {
        let wait = Duration::from_secs(900);
        let start = 1_000_000;
        let later = start + 900_000;
        // Refused on a working session: due once the wait is over, not before.
        assert!(!is_due(&stuck(0, start), wait, later - 1));
        assert!(is_due(&stuck(0, start), wait, later));
        // Connections lost while it alone was fetched: only the third in a row makes it its own.
        assert!(!is_due(&stuck(1, start), wait, later + 3_600_000));
        assert!(!is_due(&stuck(2, start), wait, later + 3_600_000));
        assert!(!is_due(&stuck(3, start), wait, later - 1));
        assert!(is_due(&stuck(3, start), wait, later));
        // A zero wait: the first failure of its own is enough.
        assert!(is_due(&stuck(0, start), Duration::ZERO, start));
    }
}
