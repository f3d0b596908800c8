//! What the store is asked about each message before it is decided. One list of questions per
//! message ([`questions`]) serves both the batch's prefetch ([`batch_questions`], asked once when
//! the batch begins) and the per-message answers ([`facts_for`]), so the two cannot drift apart.

use crate::config::Acknowledge;
use crate::ingest::{self, Facts, FingerprintVersion, ParsedMail};
use crate::reply;
use crate::store::{Batch, BatchQuestions, StoreError};

/// The window of the per-sender ticket limit (`max_new_tickets_per_sender_per_hour`).
pub(crate) const SENDER_WINDOW_MS: i64 = 3_600_000;

/// What the store is asked about one message.
struct Questions<'a> {
    /// Is this Message-ID stored already (and with which fingerprint)?
    message_id: &'a str,
    /// How many tickets were opened under this sender's key ([`reply::sender_limit_key`])
    /// within the window?
    sender: Option<String>,
    /// Which ticket has a message the mail replies to? The most specific reference first:
    /// In-Reply-To, then References from the newest.
    thread_ids: Vec<&'a str>,
    /// Which ticket has the message a report (bounce, read receipt) is about?
    reported: Option<&'a str>,
}

fn questions<'a>(mail: &'a ParsedMail, ack: &Acknowledge) -> Questions<'a> {
    let mut thread_ids: Vec<&str> = mail.in_reply_to.iter().map(String::as_str).collect();
    thread_ids.extend(mail.references.iter().rev().map(String::as_str));
    Questions {
        message_id: &mail.message_id,
        sender: reply::sender_limit_key(ack, mail),
        thread_ids,
        reported: mail.signals.original_message_id.as_deref(),
    }
}

/// What a batch's messages will ask the store, asked once when the batch begins (after a
/// conflict the messages are parsed again one by one, and each asks for itself).
pub(crate) fn batch_questions<'a>(
    mailbox: &'a str,
    ack: &Acknowledge,
    mails: impl Iterator<Item = &'a ParsedMail>,
    since_ms: i64,
) -> BatchQuestions<'a> {
    let mut batch = BatchQuestions {
        mailbox,
        since_ms,
        ..BatchQuestions::default()
    };
    for mail in mails {
        let asked = questions(mail, ack);
        batch.message_ids.push(asked.message_id);
        batch.senders.extend(asked.sender);
        batch.referenced_ids.extend(asked.thread_ids);
        batch.referenced_ids.extend(asked.reported);
        batch.attachments += mail.attachments.len();
        batch.tags.extend(ingest::tagged_reference(&mail.subject));
    }
    batch
}

/// What the store knows that bears on `mail`: the same Message-ID, the ticket of the thread it
/// replies to, the ticket its subject tag names, the ticket a report is about, and how many
/// tickets its sender opened in the last hour. Answered from the batch's prefetch where it can be.
///
/// A stored message with the same Message-ID whose fingerprint differs under its own (older)
/// version is fingerprinted anew from its kept raw bytes, when `keep_raw = "all"` kept them:
/// a server's re-rendering of it then still counts as the same message. Without them, `raw` (the
/// new message's bytes) is fingerprinted under the stored version, only then; when the two agree
/// the stored one counts under the current version. Only a message that still differs asks for
/// the released conflicts under that Message-ID (`<id>#2`, `#3`, …).
pub(crate) async fn facts_for(
    tx: &mut Batch,
    mail: &ParsedMail,
    raw: &[u8],
    mailbox: &str,
    ack: &Acknowledge,
    since_ms: i64,
) -> Result<Facts, StoreError> {
    let asked = questions(mail, ack);
    let reported = match asked.reported {
        Some(id) => tx.ticket_of_message_ids(&[id.to_string()]).await?,
        None => None,
    };
    let tagged = match ingest::tagged_reference(&mail.subject) {
        Some(reference) => tx.ticket_by_reference(&reference).await?,
        None => None,
    };
    let stored = tx
        .message_facts(mailbox, asked.message_id, asked.sender.as_deref(), since_ms)
        .await?;
    let thread = if asked.thread_ids.is_empty() {
        None
    } else {
        let ids: Vec<String> = asked.thread_ids.iter().map(|id| id.to_string()).collect();
        tx.thread_of_message_ids(&ids).await?
    };
    let thread_by_our_message = thread.as_ref().is_some_and(|(_, ours)| *ours);
    let mut same_message_id = stored.same_message_id;
    let mut conflict_releases = Vec::new();
    let mut free_conflict_key = None;
    if let Some(known) = same_message_id.as_mut()
        && !known.is_same_content(mail)
    {
        if known.fingerprint_version != FingerprintVersion::CURRENT {
            if let Some(kept) = tx.kept_raw_message(known.message_row_id).await?
                && let Ok(stored_mail) = ingest::parse(&kept)
            {
                known.fingerprint = stored_mail.fingerprint;
                known.fingerprint_version = FingerprintVersion::CURRENT;
            } else if known.fingerprint_version == FingerprintVersion::V1
                && mail.fingerprint_v1.is_none()
                && ingest::fingerprint_v1(raw).as_deref() == Some(known.fingerprint.as_str())
            {
                known.fingerprint = mail.fingerprint.clone();
                known.fingerprint_version = FingerprintVersion::CURRENT;
            }
        }
        if !known.is_same_content(mail) {
            let (released, free) = tx.conflict_releases(asked.message_id).await?;
            conflict_releases = released;
            free_conflict_key = Some(free);
        }
    }
    Ok(Facts {
        same_message_id,
        conflict_releases,
        free_conflict_key,
        thread: thread.map(|(ticket, _)| ticket),
        thread_by_our_message,
        tagged,
        reported,
        sender_recent_tickets: stored.sender_recent_tickets,
        released: stored.released,
        sent_by_us: None,
    })
}
