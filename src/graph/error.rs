//! What Graph answered when it refused, and what to do about it: Graph's error JSON
//! (`{"error": {"code", "message", "innerError": {"request-id", "date"}}}`) with the fix for the
//! Outlook codes an operator meets.

use std::fmt;
use std::time::Duration;

use crate::mail_source::{SourceError, SourceErrorKind};

/// A failed Graph request.
#[derive(Debug)]
pub enum GraphError {
    /// Graph answered with an error status.
    Refused(Box<Refusal>),
    /// No answer: connection, TLS, or the request took longer than `graph.timeout`.
    Transport { what: String, error: String },
    /// An answer mailintake cannot read (not Graph's JSON).
    Unreadable { what: String, error: String },
}

/// An error answer of Graph.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What was asked for (`delta of Inbox`, `$value of 42`).
    pub what: String,
    pub status: u16,
    /// Graph's `error.code` (`ErrorAccessDenied`, `ApplicationThrottled`, …).
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub date: Option<String>,
    /// `Retry-After`, on 429 and 503.
    pub retry_after: Option<Duration>,
    /// The mailbox and app, for the fix's PowerShell line.
    pub mailbox: String,
    pub client_id: String,
}

impl Refusal {
    /// Throttled or briefly unavailable: worth the same request again after `Retry-After`.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 429 | 503 | 502 | 504)
    }

    /// The message is not there (any more): moved or deleted by someone else meanwhile.
    pub fn is_not_found(&self) -> bool {
        self.status == 404
            && matches!(
                self.code.as_str(),
                "ErrorItemNotFound" | "ResourceNotFound" | "ErrorInvalidIdMalformed"
            )
    }

    /// The delta link is no longer known (`410 Gone`, `SyncStateNotFound`): sync afresh.
    pub fn is_sync_state_lost(&self) -> bool {
        self.status == 410
            || self.code.eq_ignore_ascii_case("SyncStateNotFound")
            || self.code.eq_ignore_ascii_case("SyncStateInvalid")
    }

    /// What an administrator does about it, when the code says.
    pub fn fix(&self) -> Option<String> {
        let mailbox = &self.mailbox;
        let app = &self.client_id;
        Some(match (self.status, self.code.as_str()) {
            (401, _) | (_, "InvalidAuthenticationToken") => format!(
                "Graph refused the token: it must be issued for Microsoft Graph (graph.scope, default https://graph.microsoft.com/.default), by the mailbox's tenant, and be unexpired; `mailintake check {mailbox}` shows the token's audience"
            ),
            (403, "ErrorSendAsDenied") => format!(
                "Exchange does not let {mailbox} send with this From address: send only as the mailbox itself, or give the mailbox Send As on that address (Add-RecipientPermission -Identity <address> -Trustee {mailbox} -AccessRights SendAs)"
            ),
            (403, _) | (_, "ErrorAccessDenied") if self.what.starts_with("creating a draft") => format!(
                "the app {app} may not make drafts in {mailbox}, and mail sent through Graph goes through a draft: grant it the application permission Mail.ReadWrite (with Mail.Send) with admin consent, or with RBAC for Applications: New-ManagementRoleAssignment -App <the Object ID of app {app}'s enterprise application> -Role \"Application Mail.ReadWrite\" -CustomResourceScope <a management scope containing {mailbox}> (and the same with -Role \"Application Mail.Send\")"
            ),
            (403, _) | (_, "ErrorAccessDenied")
                if self.what.contains("sendMail") || self.what.starts_with("sending the draft") =>
            {
                format!(
                "the app {app} may not send as {mailbox}: grant it the application permission Mail.Send with admin consent, or with RBAC for Applications: New-ManagementRoleAssignment -App <the Object ID of app {app}'s enterprise application> -Role \"Application Mail.Send\" -CustomResourceScope <a management scope containing {mailbox}>"
            )
            }
            (403, _) | (_, "ErrorAccessDenied") => format!(
                "the app {app} may not read {mailbox}: grant it the application permission Mail.ReadWrite (Mail.Send to send) with admin consent, or scope it to the mailbox with RBAC for Applications in Exchange Online PowerShell: New-ManagementRoleAssignment -App <the Object ID of app {app}'s enterprise application> -Role \"Application Mail.ReadWrite\" -CustomResourceScope <a management scope containing {mailbox}> (Test-ServicePrincipalAuthorization -Identity {app} -Resource {mailbox} shows what it is granted); where an Application Access Policy restricts the app, Test-ApplicationAccessPolicy -Identity {mailbox} -AppId {app} shows whether it is allowed"
            ),
            (_, "MailboxNotEnabledForRESTAPI") => format!(
                "{mailbox} has no Exchange Online mailbox Graph can reach (inactive, soft-deleted, or hosted on-premises): check the address; read an on-premises mailbox with transport = \"imap\""
            ),
            (_, "ErrorInvalidUser") => format!(
                "{mailbox} is not a user or shared mailbox of the tenant the token is for: check `address` and the identity's tenant"
            ),
            (429, _) | (_, "ApplicationThrottled") => "Outlook throttles the app (at most 4 requests at once per app, 10,000 per 10 minutes per mailbox): mailintake waits as Retry-After says; lower graph.max_concurrent_requests or fetch_batch_messages if it persists".to_string(),
            _ => return None,
        })
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::Refused(r) => {
                write!(
                    f,
                    "Graph refused {}: {} {}: {}",
                    r.what, r.status, r.code, r.message
                )?;
                if let Some(id) = &r.request_id {
                    write!(f, " (request-id {id}")?;
                    if let Some(date) = &r.date {
                        write!(f, ", {date}")?;
                    }
                    f.write_str(")")?;
                }
                if let Some(fix) = r.fix() {
                    write!(f, "\nfix: {fix}")?;
                }
                Ok(())
            }
            GraphError::Transport { what, error } => {
                write!(f, "no answer from Graph to {what}: {error}")
            }
            GraphError::Unreadable { what, error } => {
                write!(f, "Graph's answer to {what} cannot be read: {error}")
            }
        }
    }
}

impl std::error::Error for GraphError {}

impl GraphError {
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            GraphError::Refused(r) => Some(r.as_ref()),
            _ => None,
        }
    }
}

impl From<GraphError> for SourceError {
    fn from(error: GraphError) -> SourceError {
        let kind = match &error {
            GraphError::Refused(r) => match (r.status, r.code.as_str()) {
                (401 | 403, _)
                | (_, "MailboxNotEnabledForRESTAPI" | "ErrorInvalidUser" | "ErrorAccessDenied") => {
                    SourceErrorKind::AuthRefused
                }
                (400 | 404 | 409 | 413 | 415, _) => SourceErrorKind::Refused,
                _ => SourceErrorKind::Failed,
            },
            GraphError::Transport { .. } | GraphError::Unreadable { .. } => SourceErrorKind::Failed,
        };
        SourceError::new(kind, error)
    }
}

/// Graph's error body.
#[derive(serde::Deserialize)]
pub(super) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Deserialize)]
pub(super) struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(rename = "innerError", default)]
    pub inner_error: Option<InnerError>,
}

#[derive(serde::Deserialize)]
pub(super) struct InnerError {
    #[serde(rename = "request-id")]
    pub request_id: Option<String>,
    pub date: Option<String>,
}
