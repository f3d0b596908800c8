//! Graph's error responses: `{"error": {"code", "message", "innerError": {"date",
//! "request-id", "client-request-id"}}}` (https://learn.microsoft.com/graph/errors), and the
//! catalogue of the errors this fake answers. The codes and messages of Outlook's errors are
//! not on the errors page; they come from responses quoted in public trackers (see README).

use std::time::Duration;

use axum::http::StatusCode;

/// One error answer: the HTTP status, Graph's `code` and `message`, and a `Retry-After` for
/// throttling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphError {
    /// The HTTP status.
    pub status: u16,
    /// `error.code`.
    pub code: String,
    /// `error.message`.
    pub message: String,
    /// `Retry-After` in seconds (429, 503).
    pub retry_after: Option<Duration>,
}

impl GraphError {
    /// An error with this status, code and message.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// With a `Retry-After` header.
    pub fn with_retry_after(mut self, after: Duration) -> GraphError {
        self.retry_after = Some(after);
        self
    }

    /// 401: no `Authorization: Bearer` header.
    pub(crate) fn token_missing() -> GraphError {
        GraphError::new(401, "InvalidAuthenticationToken", "Access token is empty.")
    }

    /// 401: the token is not a JWT of the tenant's key.
    pub(crate) fn token_invalid() -> GraphError {
        GraphError::new(
            401,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed, there are no dots (.).",
        )
    }

    /// 401: signature does not verify.
    pub(crate) fn token_signature() -> GraphError {
        GraphError::new(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        )
    }

    /// 401: expired token.
    pub(crate) fn token_expired() -> GraphError {
        GraphError::new(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )
    }

    /// 401: a token for another resource (e.g. Exchange's IMAP audience).
    pub(crate) fn token_audience() -> GraphError {
        GraphError::new(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )
    }

    /// 403: the token lacks the permission, or the app is not granted this mailbox (RBAC for
    /// Applications, Application Access Policy).
    pub(crate) fn access_denied() -> GraphError {
        GraphError::new(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }

    /// 403: an Application Access Policy / RBAC scope keeps the app out of this mailbox.
    pub(crate) fn access_denied_by_policy() -> GraphError {
        GraphError::new(
            403,
            "ErrorAccessDenied",
            "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
        )
    }

    /// 404: no such user.
    pub(crate) fn invalid_user(user: &str) -> GraphError {
        GraphError::new(
            404,
            "ErrorInvalidUser",
            format!("The requested user '{user}' is invalid."),
        )
    }

    /// 404: a user without an Exchange Online mailbox (no licence, on-premises, soft-deleted).
    pub(crate) fn mailbox_not_enabled() -> GraphError {
        GraphError::new(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )
    }

    /// 404: no such message or folder (also a message id from before a move).
    pub(crate) fn item_not_found() -> GraphError {
        GraphError::new(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    /// 400: an id that is not one of ours.
    pub(crate) fn id_malformed() -> GraphError {
        GraphError::new(400, "ErrorInvalidIdMalformed", "Id is malformed.")
    }

    /// 400: a malformed request (query, body).
    pub(crate) fn bad_request(message: impl Into<String>) -> GraphError {
        GraphError::new(400, "BadRequest", message)
    }

    /// 400: `$select`/`$expand` names a property the type does not have.
    pub(crate) fn unknown_property(property: &str, type_name: &str) -> GraphError {
        GraphError::new(
            400,
            "RequestBroker--ParseUri",
            format!("Could not find a property named '{property}' on type '{type_name}'."),
        )
    }

    /// 400: a `$filter` the API does not support (delta supports only receivedDateTime ge/gt).
    pub(crate) fn unsupported_filter() -> GraphError {
        GraphError::new(
            400,
            "ErrorInvalidUrlQueryFilter",
            "The query filter contains one or more invalid nodes.",
        )
    }

    /// 409: a folder with that name exists under the parent.
    pub(crate) fn folder_exists() -> GraphError {
        GraphError::new(
            409,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
        )
    }

    /// 410: an expired delta or skip token
    /// (https://learn.microsoft.com/graph/delta-query-overview, errors page `syncStateNotFound`).
    pub(crate) fn sync_state_not_found(generation: u64) -> GraphError {
        GraphError::new(
            410,
            "SyncStateNotFound",
            format!(
                "The sync state generation is not found; generation={generation};[highest={}].",
                generation + 1
            ),
        )
    }

    /// 400: a request body above Graph's 4 MB (as quoted from Graph's answer in
    /// microsoftgraph/microsoft-graph-docs-contrib#682).
    pub(crate) fn request_too_large() -> GraphError {
        GraphError::new(
            400,
            "BadRequest",
            "The maximum request length supported is 4MB.",
        )
    }

    /// 400: an upload session for a file under 3 MB (the large-attachments page's Errors).
    pub(crate) fn attachment_below_minimum() -> GraphError {
        GraphError::new(
            400,
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachment size should not be less than the minimum size of 3 MB for an upload session; POST small attachments to the attachments collection.",
        )
    }

    /// 400: `sendMail` with a body that is not base64.
    pub(crate) fn mime_not_base64() -> GraphError {
        GraphError::new(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        )
    }

    /// 400: `sendMail` MIME without recipients.
    pub(crate) fn no_recipients() -> GraphError {
        GraphError::new(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
        )
    }

    /// 405.
    pub(crate) fn method_not_allowed() -> GraphError {
        GraphError::new(
            405,
            "Request_BadRequest",
            "The HTTP method is not supported on this resource.",
        )
    }

    /// 400: an unknown segment.
    pub(crate) fn unknown_segment(segment: &str) -> GraphError {
        GraphError::new(
            400,
            "BadRequest",
            format!("Resource not found for the segment '{segment}'."),
        )
    }

    /// 429 with `Retry-After`: Outlook's per-app throttling (`limit` is `MailboxConcurrency`,
    /// `MailboxRequests` or `IncomingBytes`).
    pub(crate) fn throttled(limit: &str, retry_after: Duration) -> GraphError {
        GraphError::new(
            429,
            "ApplicationThrottled",
            format!("Application is over its {limit} limit."),
        )
        .with_retry_after(retry_after)
    }

    /// 503 with `Retry-After`.
    pub(crate) fn service_unavailable(retry_after: Duration) -> GraphError {
        GraphError::new(
            503,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Try the request again after a delay.",
        )
        .with_retry_after(retry_after)
    }
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}
