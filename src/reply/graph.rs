//! Sending through Graph (`send = "graph"`), where SMTP AUTH is switched off. Every message goes
//! through a draft (`graph/send.rs`): the draft's creation answers with its immutable id and
//! the Message-ID Exchange gave it, both kept on the row before the send; a message larger than
//! one request gets its large attachments added to the draft separately (`detach.rs`); the
//! draft is sent, and the same id then reads the copy in Sent Items back.
//!
//! Exchange strips `Auto-Submitted` from what it sends and may drop custom `X-` headers, so loop
//! safety rests on the Message-ID (and In-Reply-To/References). Exchange normally keeps ours;
//! where it gives the message one of its own (at the draft's creation or at the send), that one
//! is kept as the row's `sent_message_id`, and intake reads a reference to it as a reference to
//! our message (`store::Batch::sent_ids`).
//!
//! Exactly once across a crash: a row tried before has its draft's id, so the next attempt
//! first looks at that item: still a draft, it is deleted and the row sent afresh; sent already
//! (the process stopped after Graph's 202 and before the row said `sent`), the row is marked
//! sent without a second send. Only a stop between the draft's creation and keeping its id can
//! leave a draft unknown to the row; a later attempt finds it in Drafts by Message-ID.

use tracing::{debug, info, warn};

use super::detach::detach;
use super::smtp::{Composed, SmtpError};
use crate::config::{GraphEndpoint, Identity, SENDMAIL_MAX_BYTES};
use crate::graph::{
    FileAttachment, GraphError, GraphLogin, GraphMailbox, Item, MAX_ATTACHMENT, Shared,
};
use crate::oauth::TokenCache;
use crate::store::{OutboxRow, Store, StoreError};

/// Who sends through Graph: the mailbox's address, its identity's tokens, what the process's
/// Graph requests share, and the store that keeps each draft's id.
pub(super) struct Sender<'a> {
    pub address: &'a str,
    pub identity: &'a Identity,
    pub tokens: &'a TokenCache,
    pub shared: &'a Shared,
    pub store: &'a Store,
}

/// What a send through Graph did: Graph's answer for the row, and whether the copy in Sent
/// Items was read back (else it is read back later: [`confirm_copy`]).
#[derive(Debug)]
pub(super) struct GraphSent {
    pub response: String,
    pub copy_found: bool,
}

/// Why a step of a send failed.
enum Failed {
    Graph(GraphError),
    Store(StoreError),
    /// The row cannot go through Graph at all (refused for good).
    Row(String),
}

impl From<GraphError> for Failed {
    fn from(e: GraphError) -> Failed {
        Failed::Graph(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

/// Opens the mailbox's Graph requests on first use, with a token for Graph.
async fn opened<'o>(
    ctx: &Sender<'_>,
    graph: &GraphEndpoint,
    open: &'o mut Option<GraphMailbox>,
) -> Result<(&'o GraphMailbox, crate::oauth::AccessToken), SmtpError> {
    let token = ctx
        .tokens
        .token_for_scope(ctx.identity, &graph.scope)
        .await
        .map_err(|e| SmtpError::Transient(e.to_string()))?;
    if open.is_none() {
        let login = GraphLogin {
            shared: ctx.shared,
            endpoint: graph,
            address: ctx.address,
            client_id: &ctx.identity.client_id,
        };
        *open = Some(GraphMailbox::new(&login, token.secret.clone()).map_err(send_error)?);
    }
    Ok((open.as_ref().expect("opened above"), token))
}

/// Sends row `row` (composed as `message`, `raw` with its Bcc field: Graph takes the recipients
/// from the MIME) through a draft; a refused token is renewed once.
pub(super) async fn send(
    ctx: &Sender<'_>,
    graph: &GraphEndpoint,
    open: &mut Option<GraphMailbox>,
    row: &OutboxRow,
    message: &Composed,
    raw: &[u8],
) -> Result<GraphSent, SmtpError> {
    for attempt in 0..2 {
        let (api, token) = opened(ctx, graph, open).await?;
        match through_draft(ctx.store, api, row, message, raw).await {
            Ok(sent) => return Ok(sent),
            Err(Failed::Graph(e)) if attempt == 0 && is_token_refused(&e) => {
                warn!(error = %e, "Graph refused the token; retrying once with a new one");
                ctx.tokens.invalidate(&ctx.identity.name, &token).await;
                *open = None;
            }
            Err(Failed::Graph(e)) => return Err(send_error(e)),
            Err(Failed::Row(reason)) => return Err(SmtpError::RowRefused(reason)),
            Err(Failed::Store(e)) => {
                return Err(SmtpError::Transient(format!(
                    "cannot keep the draft's id in the database: {e}"
                )));
            }
        }
    }
    Err(SmtpError::Transient(
        "Graph refused a fresh token too; `mailintake check` shows why".into(),
    ))
}

/// One attempt: what an earlier attempt left first, then draft, attachments, send, read-back.
async fn through_draft(
    store: &Store,
    api: &GraphMailbox,
    row: &OutboxRow,
    message: &Composed,
    raw: &[u8],
) -> Result<GraphSent, Failed> {
    let ours = message.envelope_id.as_ref().map(|id| format!("<{id}>"));
    if let Some(earlier) = &row.graph_item_id {
        match api.item(earlier).await? {
            Item::Sent {
                internet_message_id,
            } => {
                info!(
                    outbox_id = row.id,
                    "an earlier attempt's draft was sent already; not sending it again"
                );
                let went_as = note_sent_as(
                    store,
                    row.id,
                    row.sent_message_id.as_deref(),
                    ours.as_deref(),
                    internet_message_id,
                )
                .await?;
                return Ok(GraphSent {
                    response: format!(
                        "202 Accepted by an earlier attempt (Graph); Sent Items has {went_as}"
                    ),
                    copy_found: true,
                });
            }
            Item::Draft => {
                info!(
                    outbox_id = row.id,
                    "deleting the draft an earlier attempt left"
                );
                api.delete_draft(earlier).await;
            }
            Item::Gone => {}
        }
    }
    if row.attempts > 1 {
        // A draft made just before a stop, whose id the row did not get to keep.
        let mut ids: Vec<String> = ours.iter().cloned().collect();
        ids.extend(row.sent_message_id.as_ref().map(|id| format!("<{id}>")));
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        api.delete_left_drafts(&ids).await?;
    }
    let detached;
    let (skeleton, files): (&[u8], Vec<FileAttachment<'_>>) = if raw.len() as u64
        <= SENDMAIL_MAX_BYTES
    {
        (raw, Vec::new())
    } else {
        detached = detach(raw, SENDMAIL_MAX_BYTES as usize, MAX_ATTACHMENT).map_err(|e| {
                Failed::Row(format!(
                    "cannot send {} bytes through Graph: {e}; send it over SMTP (send = \"smtp\") or make it smaller",
                    raw.len()
                ))
            })?;
        let files = detached
            .files
            .iter()
            .map(|f| FileAttachment {
                name: &f.name,
                content_type: &f.content_type,
                content_id: f.content_id.as_deref(),
                inline: f.inline,
                content: &f.content,
            })
            .collect();
        (&detached.skeleton, files)
    };
    let draft = api.create_draft(skeleton).await?;
    let given = draft
        .internet_message_id
        .as_deref()
        .filter(|given| Some(*given) != ours.as_deref())
        .map(bare);
    if let Some(given) = given {
        warn!(
            outbox_id = row.id,
            ours = ours.as_deref().unwrap_or(""),
            given,
            "Exchange gave the draft a Message-ID of its own; replies naming it are read as replies to ours"
        );
    }
    if let Err(e) = store.graph_draft_made(row.id, &draft.id, given).await {
        api.delete_draft(&draft.id).await;
        return Err(e.into());
    }
    if let Err(e) = api.fill_and_send(&draft.id, &files).await {
        warn!(error = %e, "sending the draft failed; deleting it");
        api.delete_draft(&draft.id).await;
        return Err(e.into());
    }
    let how = if files.is_empty() {
        "a draft"
    } else {
        "a draft with its attachments added"
    };
    let accepted = format!("202 Accepted (Graph, {how})");
    // The copy may take a moment to appear in Sent Items; then it is read back later.
    let known = given
        .map(|g| format!("<{g}>"))
        .or(draft.internet_message_id.clone());
    match api.item(&draft.id).await {
        Ok(Item::Sent {
            internet_message_id,
        }) => {
            let went_as =
                note_sent_as(store, row.id, given, ours.as_deref(), internet_message_id).await?;
            Ok(GraphSent {
                response: format!("{accepted}; Sent Items has {went_as}"),
                copy_found: true,
            })
        }
        Ok(Item::Draft | Item::Gone) => {
            debug!(outbox_id = row.id, "no copy in Sent Items yet");
            Ok(GraphSent {
                response: match known {
                    Some(id) => format!("{accepted} as {id}"),
                    None => accepted,
                },
                copy_found: false,
            })
        }
        Err(e) => {
            debug!(error = %e, "cannot read the copy in Sent Items yet");
            Ok(GraphSent {
                response: accepted,
                copy_found: false,
            })
        }
    }
}

/// Keeps the Message-ID the sent copy of row `row_id` shows, when it is neither ours nor `kept`
/// (the one the row has already, without angle brackets); returns it (with angle brackets) for
/// the row's answer.
async fn note_sent_as(
    store: &Store,
    row_id: i64,
    kept: Option<&str>,
    ours: Option<&str>,
    shown: Option<String>,
) -> Result<String, StoreError> {
    let Some(shown) = shown else {
        return Ok(ours.unwrap_or("the message").to_string());
    };
    if Some(shown.as_str()) != ours && kept != Some(bare(&shown)) {
        warn!(
            outbox_id = row_id,
            ours = ours.unwrap_or(""),
            given = %shown,
            "Exchange sent the message under a Message-ID of its own; replies naming it are read as replies to ours"
        );
        store.graph_sent_as(row_id, bare(&shown)).await?;
    }
    Ok(shown)
}

/// Reads back the copy of a row sent earlier (`sent_copy = 'pending'` on a Graph mailbox) by
/// its draft's id: `Ok(true)` once found (its Message-ID kept when not ours), `Ok(false)` while
/// Sent Items has no copy yet.
pub(super) async fn confirm_copy(
    ctx: &Sender<'_>,
    graph: &GraphEndpoint,
    open: &mut Option<GraphMailbox>,
    row: &OutboxRow,
) -> Result<bool, String> {
    let Some(item) = &row.graph_item_id else {
        return Err("sent without a Graph draft id: nothing to read back".into());
    };
    let (api, _) = opened(ctx, graph, open).await.map_err(|e| e.to_string())?;
    match api.item(item).await.map_err(|e| e.to_string())? {
        Item::Sent {
            internet_message_id,
        } => {
            let ours = format!("<{}>", row.message_id);
            note_sent_as(
                ctx.store,
                row.id,
                row.sent_message_id.as_deref(),
                Some(&ours),
                internet_message_id,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(true)
        }
        Item::Draft | Item::Gone => Ok(false),
    }
}

/// A Message-ID without its angle brackets (how the store keeps them).
fn bare(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>')
}

fn is_token_refused(error: &GraphError) -> bool {
    error.refusal().is_some_and(|r| r.status == 401)
}

/// Whom a refusal concerns: the row (its content or recipients), the From address (Send As), or
/// nobody in particular (throttling, outages, permissions an administrator grants: retried).
fn send_error(error: GraphError) -> SmtpError {
    let text = error.to_string();
    let Some(refusal) = error.refusal() else {
        return SmtpError::Transient(text);
    };
    match (refusal.status, refusal.code.as_str()) {
        (_, "ErrorSendAsDenied") => SmtpError::SenderBlocked(text),
        (
            _,
            "ErrorInvalidRecipients"
            | "ErrorMimeContentInvalid"
            | "ErrorMimeContentInvalidBase64String"
            | "ErrorMimeContentConversionFailed"
            | "ErrorMessageSizeExceeded",
        )
        | (400 | 413 | 415, _) => SmtpError::RowRefused(text),
        (401, _) => SmtpError::Auth(text),
        _ => SmtpError::Transient(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Refusal;

    fn refused(status: u16, code: &str) -> GraphError {
        GraphError::Refused(Box::new(Refusal {
            what: "sending a message (sendMail)".into(),
            status,
            code: code.into(),
            message: "m".into(),
            request_id: None,
            date: None,
            retry_after: None,
            mailbox: "support@contoso.com".into(),
            client_id: "app".into(),
        }))
    }

    #[test]
    fn refusals_concern_the_row_the_from_address_or_nobody() {
        assert!(matches!(
            send_error(refused(403, "ErrorSendAsDenied")),
            SmtpError::SenderBlocked(_)
        ));
        assert!(matches!(
            send_error(refused(400, "ErrorMimeContentInvalidBase64String")),
            SmtpError::RowRefused(_)
        ));
        assert!(matches!(
            send_error(refused(401, "InvalidAuthenticationToken")),
            SmtpError::Auth(_)
        ));
        for (status, code) in [
            (429, "ApplicationThrottled"),
            (503, "serviceNotAvailable"),
            (403, "ErrorAccessDenied"),
        ] {
            assert!(matches!(
                send_error(refused(status, code)),
                SmtpError::Transient(_)
            ));
        }
        // A missing Mail.Send says how to grant it; drafts need Mail.ReadWrite.
        let text = send_error(refused(403, "ErrorAccessDenied")).to_string();
        assert!(text.contains("Mail.Send"), "{text}");
        let mut draft = refused(403, "ErrorAccessDenied");
        if let GraphError::Refused(r) = &mut draft {
            r.what = "creating a draft from the message's MIME (POST messages)".into();
        }
        let text = send_error(draft).to_string();
        assert!(
            text.contains("may not make drafts") && text.contains("Mail.ReadWrite"),
            "{text}"
        );
    }
}
