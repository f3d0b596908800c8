//! Sending through Graph (`send = "graph"`): the composed MIME message by `sendMail`, where SMTP
//! AUTH is switched off; a message larger than one request takes goes as a draft whose large
//! attachments are added separately (`detach.rs`, `graph/send.rs`). Exchange strips `Auto-Submitted` from what it sends and may drop custom
//! `X-` headers, so loop safety rests on our Message-ID (and In-Reply-To/References), which
//! Exchange keeps; after each send the copy in Sent Items is looked up by it, and the row's
//! answer says whether it was found.

use tracing::{debug, warn};

use super::detach::detach;
use super::smtp::{Composed, SmtpError};
use crate::config::{GraphEndpoint, Identity, SENDMAIL_MAX_BYTES};
use crate::graph::{FileAttachment, GraphError, GraphLogin, GraphMailbox, MAX_ATTACHMENT, Shared};
use crate::oauth::TokenCache;

/// Who sends through Graph: the mailbox's address, its identity's tokens, and what the process's
/// Graph requests share.
pub(super) struct Sender<'a> {
    pub address: &'a str,
    pub identity: &'a Identity,
    pub tokens: &'a TokenCache,
    pub shared: &'a Shared,
}

/// Sends `message` (with its Bcc field: Graph takes the recipients from the MIME) by
/// `sendMail`, or through a draft when it is larger than one request takes, opening the mailbox's requests on first use; a refused token is renewed once.
pub(super) async fn send(
    ctx: &Sender<'_>,
    graph: &GraphEndpoint,
    open: &mut Option<GraphMailbox>,
    message: &Composed,
    raw: &[u8],
) -> Result<String, SmtpError> {
    for attempt in 0..2 {
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
        let api = open.as_ref().expect("opened above");
        let sent = if raw.len() as u64 <= SENDMAIL_MAX_BYTES {
            api.send_mime(raw).await.map(|()| "sendMail")
        } else {
            let detached = detach(raw, SENDMAIL_MAX_BYTES as usize, MAX_ATTACHMENT)
                .map_err(|e| {
                    SmtpError::RowRefused(format!(
                        "cannot send {} bytes through Graph: {e}; send it over SMTP (send = \"smtp\") or make it smaller",
                        raw.len()
                    ))
                })?;
            let files: Vec<FileAttachment<'_>> = detached
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
            let ours = message.envelope_id.as_ref().map(|id| format!("<{id}>"));
            api.send_with_attachments(&detached.skeleton, ours.as_deref(), &files)
                .await
                .map(|()| "a draft with its attachments added")
        };
        match sent {
            Ok(how) => return Ok(read_back(api, message, how).await),
            Err(e) if attempt == 0 && is_token_refused(&e) => {
                warn!(error = %e, "Graph refused the token; retrying once with a new one");
                ctx.tokens.invalidate(&ctx.identity.name, &token).await;
                *open = None;
            }
            Err(e) => return Err(send_error(e)),
        }
    }
    Err(SmtpError::Transient(
        "Graph refused a fresh token too; `mailintake check` shows why".into(),
    ))
}

/// The row's answer: Graph's acceptance, and whether Sent Items has the copy under our
/// Message-ID (a check; reading needs Mail.Read as well, so a refusal is only logged).
async fn read_back(api: &GraphMailbox, message: &Composed, how: &str) -> String {
    let accepted = format!("202 Accepted (Graph {how})");
    let Some(id) = &message.envelope_id else {
        return accepted;
    };
    let ours = format!("<{id}>");
    match api.sent_copy_of(&ours).await {
        Ok(Some(found)) if found == ours => format!("{accepted}; Sent Items has {ours}"),
        Ok(Some(other)) => {
            warn!(
                ours,
                other, "Exchange gave the sent copy another Message-ID"
            );
            format!("{accepted}; Sent Items has it as {other}")
        }
        Ok(None) => {
            debug!(ours, "no copy in Sent Items yet");
            accepted
        }
        Err(e) => {
            debug!(error = %e, "cannot look in Sent Items");
            accepted
        }
    }
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
        // A missing Mail.Send says how to grant it.
        let text = send_error(refused(403, "ErrorAccessDenied")).to_string();
        assert!(text.contains("Mail.Send"), "{text}");
    }
}
