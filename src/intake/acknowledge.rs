//! Acknowledgements and quarantine notices, written into the outbox in the batch's transaction
//! (so an acknowledgement exists only for a committed ticket): what the store knows for the
//! decision, then [`crate::reply`]'s plan.

use tracing::info;

use super::MailboxContext;
use crate::ingest::{self, Decision};
use crate::mail_source::MessageSummary;
use crate::reply::{self, AckFacts};
use crate::report::CycleReport;
use crate::store::{AckKind, Batch, FolderState, ImapLocation, StoreError};
use crate::time::now_ms;

/// Writes the acknowledgement of a new ticket or follow-up into the outbox, in the batch's
/// transaction: a message to send, or the reason it is not sent (decided here, before the row is
/// queued, also for an address no mail can be sent to; the reason goes into the message's
/// ledger detail at `at` too). Nothing for other decisions, or when the mailbox does not
/// acknowledge at all.
#[allow(clippy::too_many_arguments)]
pub(super) async fn acknowledge_decision(
    ctx: &MailboxContext<'_>,
    tx: &mut Batch,
    at: &ImapLocation<'_>,
    state: &FolderState,
    summary: &MessageSummary,
    decision: &Decision,
    new_ticket_id: Option<i64>,
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    let mailbox = ctx.mailbox;
    let (mail, ticket_id, kind, auto_kind) = match (decision, new_ticket_id) {
        (
            Decision::NewTicket {
                mail, auto_kind, ..
            },
            Some(ticket_id),
        ) => (mail, ticket_id, AckKind::NewTicket, *auto_kind),
        (
            Decision::FollowUp {
                mail,
                ticket_id,
                auto_kind,
                ..
            },
            _,
        ) => (mail, *ticket_id, AckKind::FollowUp, *auto_kind),
        _ => return Ok(()),
    };
    if !reply::sends_acknowledgements(mailbox) {
        return Ok(());
    }
    let reference = ingest::ticket_reference(ticket_id);
    let now = now_ms();
    let recipient = reply::reply_address(mail);
    let facts = AckFacts {
        received_ms: summary.internal_date_ms,
        ack_after_ms: mailbox.acknowledge.since_ms.or(state.ack_after_ms),
        recipient_acks_today: match &recipient {
            Some(to) => tx.acks_to_since(&to.address, now - 86_400_000).await?,
            None => 0,
        },
        ticket_last_ack_ms: match kind {
            AckKind::FollowUp => tx.last_ack_of_ticket(ticket_id).await?,
            AckKind::NewTicket | AckKind::QuarantineNotice => None,
        },
        now_ms: now,
    };
    let mut draft = reply::plan_acknowledgement(
        mailbox,
        &ctx.policy.own_addresses,
        mail,
        &reference,
        kind,
        &facts,
    );
    if let Some(auto_kind) = auto_kind {
        draft.suppressed = Some(format!(
            "automatic mail ({auto_kind}) is never acknowledged"
        ));
    }
    tx.enqueue(&mailbox.name, Some(ticket_id), &draft).await?;
    match &draft.suppressed {
        None => report.n_acks_queued += 1,
        Some(reason) => {
            info!(ticket_id, %reason, "no acknowledgement");
            // Automatic mail says so in its detail already.
            if auto_kind.is_none() {
                tx.add_outcome_detail(at, &format!("no acknowledgement: {reason}"));
            }
        }
    }
    Ok(())
}

/// Writes the notice to the sender of a message set aside as too large (when the mailbox sends
/// them), or the reason none is sent, in the batch's transaction.
pub(super) async fn notify_quarantined(
    ctx: &MailboxContext<'_>,
    tx: &mut Batch,
    state: &FolderState,
    summary: &MessageSummary,
    header: &[u8],
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    let mailbox = ctx.mailbox;
    if !reply::sends_acknowledgements(mailbox) {
        return Ok(());
    }
    let Ok(mail) = ingest::parse(header) else {
        return Ok(());
    };
    let now = now_ms();
    let facts = AckFacts {
        received_ms: summary.internal_date_ms,
        // Imported mail gets no notice either.
        ack_after_ms: mailbox.acknowledge.since_ms.or(state.ack_after_ms),
        recipient_acks_today: match reply::reply_address(&mail) {
            Some(to) => tx.acks_to_since(&to.address, now - 86_400_000).await?,
            None => 0,
        },
        ticket_last_ack_ms: None,
        now_ms: now,
    };
    let mut draft = reply::plan_quarantine_notice(
        mailbox,
        &ctx.policy.own_addresses,
        &mail,
        summary.size,
        mailbox.max_message_bytes,
        &facts,
    );
    match ingest::classify(&mail, &ctx.policy) {
        ingest::MailKind::Person => {}
        ingest::MailKind::Automatic { kind, evidence } => {
            draft.suppressed = Some(format!(
                "automatic mail ({kind}: {evidence}) is never answered"
            ));
        }
        ingest::MailKind::Loop(reason) => {
            draft.suppressed = Some(format!(
                "automatic mail (a loop: {reason}) is never answered"
            ));
        }
    }
    tx.enqueue(&mailbox.name, None, &draft).await?;
    if draft.suppressed.is_none() {
        report.n_acks_queued += 1;
    }
    Ok(())
}
