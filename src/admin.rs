//! Admin actions that need more than SQL: an IMAP session for the admin commands, releasing a
//! quarantined message back into its folder, and re-parsing stored raw mail with the current
//! code (`reprocess`, a dead-letter replay).

use anyhow::{Context, bail};

use crate::config::{Config, GraphEndpoint, Mailbox, Transport};
use crate::graph::{GraphLogin, GraphMailbox};
use crate::imap::{self, Connection};
use crate::ingest::{self, Decision, Facts, QuarantineCode};
use crate::intake::facts::{SENDER_WINDOW_MS, facts_for};
use crate::intake::policy;
use crate::intake::record::{Dispositions, Note, envelope_from_header, write_decision};
use crate::mail_source::Uid;
use crate::oauth::TokenCache;
use crate::store::{ImapLocation, QuarantineEnvelope, Store};
use crate::time::now_ms;

/// An IMAP session of `mailbox` for an admin command, with its identity's cached token.
pub(crate) async fn connect(
    tokens: &TokenCache,
    config: &Config,
    mailbox: &Mailbox,
) -> anyhow::Result<Connection> {
    let Some(imap) = mailbox.imap() else {
        bail!(
            "mailbox `{}` is read through Microsoft Graph (transport = \"graph\"); this command works over IMAP only so far",
            mailbox.name
        );
    };
    let token = tokens.token(config.identity(&mailbox.identity)).await?;
    imap::connect(imap, &mailbox.address, &token)
        .await
        .with_context(|| format!("logging in to {}", mailbox.address))
}

/// Moves quarantined message `id` back to the folder it came from and lets it in once: up to
/// `max_bytes` (for `too-large`; the mailbox's limit otherwise), past the per-sender limit, and
/// for a `message-id-conflict` (a sender that reuses Message-IDs) as a ticket of its own under
/// the key `<Message-ID>#<n>` (the first free `n` from 2; `message_id_source = conflict-release`).
/// Its UID changes with the move, so it is found by its Message-ID (or header/content key).
pub async fn release(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
    id: i64,
    max_bytes: Option<u64>,
) -> anyhow::Result<String> {
    let Some(entry) = store.quarantine_entry(id).await? else {
        bail!("no quarantined message with id {id}; `mailintake quarantine list` shows them");
    };
    if entry.released_at_ms.is_some() {
        bail!("quarantined message {id} was released already");
    }
    if let Some(ticket) = entry.resolved_ticket_id {
        bail!(
            "quarantined message {id} was reprocessed into {} already; nothing to release",
            ingest::ticket_reference(ticket)
        );
    }
    if entry.resolved_at_ms.is_some() {
        bail!(
            "quarantined message {id} was reprocessed already (it needs no ticket); nothing to release"
        );
    }
    // A Message-ID conflict is released as a ticket of its own, under `<Message-ID>#<n>`.
    if matches!(
        entry.reason,
        QuarantineCode::Unparseable | QuarantineCode::Unstorable
    ) {
        bail!(
            "quarantined message {id} ({}) would be quarantined again as it is; its raw bytes are kept in the quarantine table",
            entry.reason
        );
    }
    let Some(mailbox) = config.mailboxes.iter().find(|m| m.name == entry.mailbox) else {
        bail!(
            "mailbox `{}` of quarantined message {id} is not configured any more",
            entry.mailbox
        );
    };
    if entry.reason == QuarantineCode::TooLarge
        && max_bytes.unwrap_or(mailbox.max_message_bytes) < entry.size_bytes as u64
    {
        bail!(
            "the message is {} bytes; release it with --max-bytes {} or more",
            entry.size_bytes,
            entry.size_bytes
        );
    }
    let key = entry.message_id.clone().unwrap_or_default();
    if let Transport::Graph(graph) = &mailbox.transport {
        return release_on_graph(config, store, tokens, mailbox, graph, &entry, max_bytes).await;
    }
    let mut conn = connect(tokens, config, mailbox)
        .await
        .context("logging in to move the message back")?;
    conn.select(&mailbox.quarantine_folder).await?;
    let listed = conn.list_above(0).await?;
    let mut found = None;
    for summary in &listed {
        let header = conn.fetch_identifying_headers(summary.uid).await?;
        if envelope_from_header(&header, summary).message_id == key {
            found = Some(summary.uid);
            break;
        }
    }
    if found.is_none() && entry.reason == QuarantineCode::Unreadable {
        // Set aside unread, so known only by its size: it must be the only one of that size.
        let candidates: Vec<_> = listed
            .iter()
            .filter(|m| m.size == entry.size_bytes as u64)
            .collect();
        if let [only] = candidates.as_slice() {
            found = Some(only.uid);
        }
    }
    if found.is_none() && entry.reason != QuarantineCode::Unreadable {
        // Mail without a Message-ID was keyed by its content: compare candidates of its size.
        for summary in listed.iter().filter(|m| m.size == entry.size_bytes as u64) {
            if let Some((_, imap::Body::Complete(raw))) =
                conn.fetch_bodies(&[summary.uid], summary.size).await?.pop()
                && ingest::parse(&raw).is_ok_and(|m| m.message_id == key)
            {
                found = Some(summary.uid);
                break;
            }
        }
    }
    let Some(uid) = found else {
        conn.logout().await;
        bail!(
            "message {id} is no longer in folder `{}` of {} (moved or deleted by someone?)",
            mailbox.quarantine_folder,
            mailbox.address
        );
    };
    // Record the release first: if the move then fails, the release simply waits unused.
    store.mark_released(id, max_bytes.map(|b| b as i64)).await?;
    conn.ensure_folder(&entry.folder).await?;
    conn.move_to(&[uid], &entry.folder).await?;
    conn.logout().await;
    Ok(format!(
        "released quarantined message {id} back to `{}` of {}; the next sweep ingests it",
        entry.folder, mailbox.address
    ))
}

/// [`release`] of a mailbox read through Graph: the message keeps its immutable id in the
/// quarantine folder, so it is found by the number it had in its folder (`graph_items`), or else
/// by its Message-ID there, and moved back; delta then reports it in its folder as a new arrival.
async fn release_on_graph(
    config: &Config,
    store: &Store,
    tokens: &TokenCache,
    mailbox: &Mailbox,
    graph: &GraphEndpoint,
    entry: &crate::store::admin::QuarantineEntry,
    max_bytes: Option<u64>,
) -> anyhow::Result<String> {
    let identity = config.identity(&mailbox.identity);
    let token = tokens.token_for_scope(identity, &graph.scope).await?;
    let shared = crate::graph::Shared::default();
    let login = GraphLogin {
        shared: &shared,
        endpoint: graph,
        address: &mailbox.address,
        client_id: &identity.client_id,
    };
    let mut api = GraphMailbox::connect(&login, token.secret.clone())
        .await
        .with_context(|| format!("reading {} through Graph", mailbox.address))?;
    let numbered = store
        .graph_item_id(
            &mailbox.name,
            &entry.folder,
            entry.uidvalidity as u32,
            Uid(entry.uid as u32),
        )
        .await?;
    let item = match (numbered, entry.message_id.as_deref()) {
        (Some(item), _) => Some(item),
        (None, Some(id)) => {
            api.find_by_message_id(&mailbox.quarantine_folder, &format!("<{id}>"))
                .await?
        }
        (None, None) => None,
    };
    let gone = || {
        anyhow::anyhow!(
            "message {} is no longer in the mailbox {} (deleted by someone?)",
            entry.id,
            mailbox.address
        )
    };
    let Some(item) = item else {
        return Err(gone());
    };
    // Record the release first: if the move then fails, the release simply waits unused.
    store
        .mark_released(entry.id, max_bytes.map(|b| b as i64))
        .await?;
    match api.move_message(&item, &entry.folder).await {
        Ok(()) => Ok(format!(
            "released quarantined message {} back to `{}` of {}; the next sweep ingests it",
            entry.id, entry.folder, mailbox.address
        )),
        Err(e) if e.refusal().is_some_and(|r| r.is_not_found()) => Err(gone()),
        Err(e) => Err(e.into()),
    }
}

/// Re-parses the raw bytes of quarantined message `id` with the current code and records what
/// [`ingest::decide`] makes of it, once: a new ticket, a follow-up, or ignored mail; the quarantine
/// row is then marked resolved (`resolved_at`, `resolved_ticket_id`) in the same transaction.
/// A message the current code still quarantines is left as it is. Running it again says it is
/// done already; a Message-ID stored meanwhile makes it a duplicate, never a second ticket.
///
/// The outcome is recorded in `imap_messages` at a location no IMAP message has (UIDVALIDITY 0,
/// which RFC 3501 forbids, and the quarantine id as UID), so the original `quarantined` row stays
/// as history and no sweep ever takes it for a disposition to complete. No acknowledgement is
/// written for reprocessed mail: it is old news to its sender.
pub async fn reprocess_quarantined(
    config: &Config,
    store: &Store,
    id: i64,
) -> anyhow::Result<String> {
    let Some(entry) = store.quarantine_entry(id).await? else {
        bail!("no quarantined message with id {id}; `mailintake quarantine list` shows them");
    };
    let Some(state) = store.quarantine_raw(id).await? else {
        bail!("no quarantined message with id {id}");
    };
    if state.resolved_at_ms.is_some() {
        return Ok(match state.resolved_ticket_id {
            Some(ticket) => format!(
                "quarantined message {id} was reprocessed already, into {}; nothing to do",
                ingest::ticket_reference(ticket)
            ),
            None => format!(
                "quarantined message {id} was reprocessed already (recorded as mail that needs no ticket); nothing to do"
            ),
        });
    }
    let Some(raw) = state.raw else {
        if state.raw_purged_at_ms.is_some() {
            bail!(
                "the raw bytes of quarantined message {id} were purged (mailintake purge); it cannot be re-parsed"
            );
        }
        bail!(
            "quarantined message {id} ({}) was never downloaded, so there is nothing to re-parse; `mailintake quarantine release {id}` brings it back into its folder",
            entry.reason
        );
    };
    let Some(mailbox) = config.mailboxes.iter().find(|m| m.name == entry.mailbox) else {
        bail!(
            "mailbox `{}` of quarantined message {id} is not configured any more; its policy is needed to decide",
            entry.mailbox
        );
    };
    let policy = policy(config, mailbox);
    let parsed = ingest::parse(&raw);
    let at = ImapLocation {
        mailbox: &mailbox.name,
        folder: &entry.folder,
        uidvalidity: 0,
        uid: Uid(u32::try_from(id).context("quarantine id out of range")?),
        size: raw.len() as u64,
        internal_date_ms: Some(state.created_at_ms),
    };
    let mut tx = store.begin().await?;
    let facts = match &parsed {
        // As the worker asks; a reprocessed message is never an operator's release.
        Ok(mail) => Facts {
            released: false,
            ..facts_for(
                &mut tx,
                mail,
                &raw,
                &mailbox.name,
                &mailbox.acknowledge,
                now_ms() - SENDER_WINDOW_MS,
            )
            .await?
        },
        Err(_) => Facts::default(),
    };
    let decision = ingest::decide(parsed, &facts, &policy);
    if let Decision::Quarantine(reason) = &decision {
        return Ok(format!(
            "quarantined message {id} is still quarantined by the current code ({}: {}); nothing changed",
            reason.code(),
            reason.detail()
        ));
    }
    let keep_raw = mailbox.keep_raw_all.then_some(raw.as_slice());
    // Mail that needs no ticket, or is stored already, is recorded under the quarantine's key.
    let envelope = QuarantineEnvelope {
        message_id: entry.message_id.clone().unwrap_or_default(),
        ..QuarantineEnvelope::default()
    };
    let written = write_decision(
        &mut tx,
        &at,
        &decision,
        &envelope,
        &raw,
        keep_raw,
        &Dispositions::none(),
        &mailbox.acknowledge,
    )
    .await?;
    let (ticket_id, what) = match written.note {
        Note::NewTicket {
            ticket_id,
            reference,
            ..
        } => (Some(ticket_id), format!("is now ticket {reference}")),
        Note::FollowUp { ticket_id, .. } => (
            Some(ticket_id),
            format!(
                "is now a follow-up on {}",
                ingest::ticket_reference(ticket_id)
            ),
        ),
        Note::Duplicate { ticket_id } => (
            Some(ticket_id),
            format!(
                "is stored already, on {} (recorded as a duplicate)",
                ingest::ticket_reference(ticket_id)
            ),
        ),
        Note::Ignored { reason } => (None, format!("needs no ticket ({reason})")),
        other => bail!("reprocessing wrote an unexpected outcome ({other:?}); nothing changed"),
    };
    if !tx.resolve_quarantine(id, ticket_id).await? {
        // Another run got there first; dropping the transaction undoes this one.
        return Ok(done_already(id));
    }
    // A conflict (another writer stored this Message-ID meanwhile) ends the command with that
    // error and nothing written; running it again decides anew, as a duplicate.
    tx.commit().await?;
    // Nothing is to be done in IMAP: the original stays in the quarantine folder.
    store
        .mark_disposed(at.mailbox, at.folder, 0, &[at.uid], None)
        .await?;
    Ok(format!(
        "quarantined message {id} {what}; it stays in folder `{}` in IMAP (no acknowledgement is sent for reprocessed mail)",
        mailbox.quarantine_folder
    ))
}

fn done_already(id: i64) -> String {
    format!("quarantined message {id} was reprocessed already (by another run); nothing to do")
}

/// Re-parses the kept raw bytes of article `message_row_id` (`keep_raw = "all"`) with the current
/// code and tells whether the stored article matches. The stored article is never changed and
/// nothing new is recorded: its Message-ID is stored, so at most it is a duplicate.
pub async fn reprocess_article(store: &Store, message_row_id: i64) -> anyhow::Result<String> {
    let Some((message_id, stored)) = store.article(message_row_id).await? else {
        bail!(
            "no message with id {message_row_id}; `mailintake ticket ID` lists a ticket's messages"
        );
    };
    let Some(raw) = store.raw_message(message_row_id).await? else {
        bail!(
            "no raw message is kept for message {message_row_id} (keep_raw = \"all\" keeps them; `mailintake purge` removes old ones)"
        );
    };
    let reference = ingest::ticket_reference(stored.ticket_id);
    // A released conflict is stored under `<Message-ID>#<n>`.
    let same_key = |mail: &ingest::ParsedMail| {
        message_id == mail.message_id
            || message_id
                .strip_prefix(mail.message_id.as_str())
                .is_some_and(|rest| rest.starts_with('#'))
    };
    let fingerprint = &stored.fingerprint;
    // Compared under the stored row's version: version 1 only on demand (see `ParsedMail`).
    let parsed = ingest::parse(&raw).map(|mut mail| {
        if stored.fingerprint_version == ingest::FingerprintVersion::V1 {
            mail.fingerprint_v1 = ingest::fingerprint_v1(&raw);
        }
        mail
    });
    match parsed {
        Err(failure) => bail!(
            "the current code cannot parse message {message_row_id} ({failure}); the stored article on {reference} is unchanged"
        ),
        Ok(mail) if same_key(&mail) && stored.is_same_content(&mail) => Ok(format!(
            "message {message_row_id} is stored already, on {reference}, as the current code reads it; nothing to do"
        )),
        Ok(mail) => bail!(
            "the current code reads message {message_row_id} differently (Message-ID <{}>, fingerprint {}; stored: <{message_id}>, {fingerprint}); the stored article on {reference} is unchanged",
            mail.message_id,
            mail.fingerprint_under(stored.fingerprint_version)
                .unwrap_or("-")
        ),
    }
}
