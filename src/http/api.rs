//! The HTTP API for outgoing mail, described by `docs/openapi.yaml` (the contract test checks the
//! running server against that file):
//!
//! - `POST /v1/messages`: an [`OutgoingRequest`] as JSON, handed to [`outgoing::submit`] — the
//!   very function `mailintake send` and the `outgoing` table's pickup call — with
//!   [`SubmittedVia::Api`]; `202` with the message's status for a new message, `200` with it
//!   for the same key and request again, `409` for the same key with another request, `422`
//!   for a field to fix (an unknown mailbox included), `413` for a body or message too large.
//!   A new message wakes its mailbox's sender.
//! - `GET /v1/messages/{id}`: what became of outbox row `id`.
//!
//! Both want `Authorization: Bearer <http.api_token>`, on loopback too; without an `api_token`
//! configured they answer 403. Every error is JSON: `{error, field, problem}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{AppState, bearer_matches};
use crate::config::Config;
use crate::reply::outgoing::{self, OutgoingRequest, SubmitError};
use crate::store::{DeliveryState, OutboxStatus, SubmittedVia};
use crate::time::rfc3339;

/// Room in a request body for the JSON around the message's content (field names, addresses,
/// escapes in the text).
const JSON_OVERHEAD: u64 = 1 << 20;

/// The largest request body `POST /v1/messages` reads: the largest `max_send_bytes` of the
/// configured mailboxes as base64, plus [`JSON_OVERHEAD`]. A larger body is refused with 413
/// before it is parsed.
pub(super) fn body_limit(config: &Config) -> usize {
    let largest = config
        .mailboxes
        .iter()
        .map(|m| m.sending.max_bytes)
        .max()
        .unwrap_or(0);
    let limit = largest.div_ceil(3).saturating_mul(4) + JSON_OVERHEAD;
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// A refusal: its status code and the JSON error `{error, field, problem}` (`field` and
/// `problem` null where no field is at fault), with the headers some codes carry.
pub(super) struct ApiError {
    code: StatusCode,
    error: String,
    field: Option<String>,
    problem: Option<String>,
    /// For 409: the message submitted first under the key.
    existing_id: Option<i64>,
    /// For 401: the `WWW-Authenticate` challenge.
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(code: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            code,
            error: error.into(),
            field: None,
            problem: None,
            existing_id: None,
            challenge: None,
        }
    }

    fn field(mut self, field: Option<&str>, problem: Option<&str>) -> ApiError {
        self.field = field.map(str::to_string);
        self.problem = problem.map(str::to_string);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error, "field": self.field, "problem": self.problem });
        if let Some(id) = self.existing_id {
            body["existing_id"] = json!(id);
        }
        let mut response = (self.code, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if self.code == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// 403 without a configured `api_token`, 401 without the right bearer token.
fn guard(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.api_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the HTTP API is off: set http.api_token = { env = \"MAILINTAKE_API_TOKEN\" } \
             (at least 16 characters, e.g. `openssl rand -hex 24`) and restart",
        ));
    };
    if bearer_matches(expected, headers) {
        return Ok(());
    }
    let given = headers.contains_key(header::AUTHORIZATION);
    let mut refusal = ApiError::new(
        StatusCode::UNAUTHORIZED,
        if given {
            "the bearer token is not http.api_token"
        } else {
            "a bearer token is required: Authorization: Bearer <http.api_token>"
        },
    );
    // RFC 6750 §3: a request without credentials gets the bare challenge, a wrong token the
    // error code.
    refusal.challenge = Some(if given {
        "Bearer error=\"invalid_token\""
    } else {
        "Bearer"
    });
    Err(refusal)
}

fn too_large_body(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than {limit} bytes (the largest max_send_bytes of the mailboxes \
             as base64, plus JSON): send large files as links"
        ),
    )
}

/// The body, read up to `limit` bytes: a declared or actual length over it is refused (413)
/// before anything is parsed, never cut short.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large_body(limit));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large_body(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The request document, or the field that is wrong in it and why.
fn parse_request(bytes: &[u8]) -> Result<OutgoingRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
        .field(None, Some(&e.to_string()))
    })?;
    let Value::Object(fields) = &value else {
        let problem = "the body must be a JSON object (an OutgoingRequest)";
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, problem).field(None, Some(problem))
        );
    };
    serde_json::from_value::<OutgoingRequest>(value.clone()).map_err(|whole| {
        let (field, problem) = locate(fields, &whole);
        let text = match &field {
            Some(field) => format!("{field}: {problem}"),
            None => problem.clone(),
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, text)
            .field(field.as_deref(), Some(&problem))
    })
}

/// Which field of a document that does not deserialise is at fault: each field is tried alone
/// (every field of the request has a default), an array's elements one by one.
fn locate(
    fields: &serde_json::Map<String, Value>,
    whole: &serde_json::Error,
) -> (Option<String>, String) {
    let fails = |key: &str, value: Value| {
        let mut one = serde_json::Map::new();
        one.insert(key.to_string(), value);
        serde_json::from_value::<OutgoingRequest>(Value::Object(one)).err()
    };
    for (key, value) in fields {
        let Some(e) = fails(key, value.clone()) else {
            continue;
        };
        if let Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                if let Some(e) = fails(key, Value::Array(vec![item.clone()])) {
                    return (Some(format!("{key}[{i}]")), problem(key, &e));
                }
            }
        }
        return (Some(key.clone()), problem(key, &e));
    }
    (None, whole.to_string())
}

/// What is wrong with `key`'s value, in words (serde's own for the plain fields; its text for
/// the fields of several shapes says only that none matched).
fn problem(key: &str, e: &serde_json::Error) -> String {
    let text = e.to_string();
    let shape = match key {
        "to" | "cc" | "bcc" => {
            "each recipient is an address string or {\"address\": …, \"name\": …}"
        }
        "attachments" => {
            "each attachment is {\"filename\", \"content_type\", \"content_base64\"} or {\"attachment_id\"}"
        }
        "ticket" => "a ticket is an id (123) or a reference (\"TCK-000123\")",
        _ => return text.split(" at line ").next().unwrap_or(&text).to_string(),
    };
    if text.starts_with("invalid type") && !text.contains("untagged") {
        format!(
            "{}; {shape}",
            text.split(" at line ").next().unwrap_or(&text)
        )
    } else {
        shape.to_string()
    }
}

/// `POST /v1/messages`.
pub(super) async fn post_message(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let config = state.config.current();
    let bytes = read_body(&headers, body, body_limit(&config)).await?;
    let request = parse_request(&bytes)?;
    let submission = outgoing::submit(&state.store, &config.mailboxes, &request, SubmittedVia::Api)
        .await
        .map_err(refusal)?;
    let id = submission.outbox_id;
    if submission.new {
        info!(mailbox = %request.mailbox, outbox_id = id, "message submitted through the API");
        if let Some(wake) = state.wakes.get(&request.mailbox) {
            wake.notify_one();
        }
    }
    let status = match state.store.outbox_status(id).await {
        Ok(Some(status)) => status,
        Ok(None) => return Err(unavailable(format!("outbox row {id} is gone"))),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let code = if submission.new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut response = (code, axum::Json(status_json(&status))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A refused submission as its status code and JSON error.
fn refusal(e: SubmitError) -> ApiError {
    let text = e.to_string();
    let unprocessable = |field: &str, problem: &str| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, text.clone())
            .field(Some(field), Some(problem))
    };
    match &e {
        SubmitError::UnknownMailbox { .. } => {
            unprocessable("mailbox", text.trim_start_matches("mailbox: "))
        }
        SubmitError::Invalid { field, problem } => unprocessable(field, problem),
        SubmitError::NotAllowed { field, address } => unprocessable(
            field,
            &format!("`{address}` is not in the mailbox's allow_recipients"),
        ),
        SubmitError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, text.clone()).field(None, Some(&text))
        }
        SubmitError::Conflict { existing_id } => {
            let problem = text.trim_start_matches("idempotency_key: ");
            let mut conflict = ApiError::new(StatusCode::CONFLICT, text.clone())
                .field(Some("idempotency_key"), Some(problem));
            conflict.existing_id = Some(*existing_id);
            conflict
        }
        SubmitError::Store(_) => unavailable(crate::config::redact_credentials(&text)),
    }
}

/// 503: the database did not answer; the same request may be sent again (it is idempotent).
fn unavailable(reason: String) -> ApiError {
    warn!(%reason, "API request failed on the database");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the database is unavailable ({reason}); send the same request again later"),
    )
}

/// `GET /v1/messages/{id}`.
pub(super) async fn get_message(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("there is no message {id}"));
    let Some(id) = id.parse::<i64>().ok().filter(|id| *id > 0) else {
        return Err(not_found());
    };
    match state.store.outbox_status(id).await {
        Ok(Some(status)) => Ok((StatusCode::OK, axum::Json(status_json(&status))).into_response()),
        Ok(None) => Err(not_found()),
        Err(e) => Err(unavailable(crate::config::redact_credentials(
            &e.to_string(),
        ))),
    }
}

/// A stored reply or error with the fix the sender appended (`…\n  fix: …`) taken apart; the
/// fix looked up ([`crate::reply::smtp::hint`]) where none was stored.
fn split_fix(text: &str) -> (String, Option<String>) {
    match text.split_once("\n  fix: ") {
        Some((reply, fix)) => (reply.to_string(), Some(fix.to_string())),
        None => (
            text.to_string(),
            crate::reply::smtp::hint(text).map(str::to_string),
        ),
    }
}

/// The status document of `docs/openapi.yaml` (`MessageStatus`).
fn status_json(s: &OutboxStatus) -> Value {
    let time = |at: Option<i64>| at.map(|t| rfc3339(t).to_string());
    let blocked = s.blocked_reason.as_deref().map(split_fix);
    let last_error = s.last_error.as_deref().map(split_fix);
    let fix = match s.state {
        DeliveryState::Sent | DeliveryState::Cancelled | DeliveryState::Suppressed => None,
        _ => blocked
            .as_ref()
            .and_then(|(_, fix)| fix.clone())
            .or_else(|| last_error.as_ref().and_then(|(_, fix)| fix.clone())),
    };
    let waiting = matches!(s.state, DeliveryState::Pending);
    json!({
        "id": s.id,
        "mailbox": s.mailbox,
        "kind": s.kind,
        "state": s.state.as_str(),
        "submitted_via": s.submitted_via,
        "from": s.from,
        "recipient_count": s.recipient_count,
        "subject": s.subject,
        "message_id": s.message_id,
        "ticket": s.ticket_reference,
        "ticket_id": s.ticket_id,
        "attempts": s.attempts,
        "next_attempt_at": time(waiting.then_some(s.next_attempt_at)),
        "created_at": rfc3339(s.created_at).to_string(),
        "sent_at": time(s.sent_at),
        "smtp_response": s.smtp_response,
        "last_error": last_error.map(|(reply, _)| reply),
        "fix": fix,
        "blocked_reason": blocked.map(|(reply, _)| reply),
        "blocked_at": time(s.blocked_at.filter(|_| s.blocked_reason.is_some())),
        "bounced_at": time(s.bounced_at),
        "bounce_reason": s.bounce_reason,
        "reason": s.reason,
        "sent_copy": s.sent_copy.as_ref().map(|copy| json!({
            "state": copy.state.as_str(),
            "folder": copy.folder,
            "at": time(copy.at),
            "error": copy.error,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> (Option<String>, String) {
        let value: Value = serde_json::from_str(body).unwrap();
        let Value::Object(fields) = &value else {
            panic!()
        };
        let whole = serde_json::from_value::<OutgoingRequest>(value.clone()).unwrap_err();
        locate(fields, &whole)
    }

    #[test]
    fn a_document_that_does_not_deserialise_names_its_field() {
        let (field, problem) = field_of(r#"{"mailbox": "support", "subject": 5}"#);
        assert_eq!(field.as_deref(), Some("subject"));
        assert!(problem.contains("expected a string"), "{problem}");
        let (field, _) = field_of(r#"{"to": ["a@b.test", 7]}"#);
        assert_eq!(field.as_deref(), Some("to[1]"));
        let (field, problem) = field_of(r#"{"attachments": [{"name": "x"}]}"#);
        assert_eq!(field.as_deref(), Some("attachments[0]"));
        assert!(problem.contains("attachment_id"), "{problem}");
        let (field, problem) = field_of(r#"{"colour": "red"}"#);
        assert_eq!(field.as_deref(), Some("colour"));
        assert!(problem.starts_with("unknown field `colour`"), "{problem}");
        let (field, _) = field_of(r#"{"kind": "urgent"}"#);
        assert_eq!(field.as_deref(), Some("kind"));
    }

    #[test]
    fn a_stored_fix_is_split_from_the_reply_and_a_missing_one_looked_up() {
        let (reply, fix) = split_fix("554 5.7.60 SendAsDenied\n  fix: grant SendAs");
        assert_eq!(reply, "554 5.7.60 SendAsDenied");
        assert_eq!(fix.as_deref(), Some("grant SendAs"));
        let (reply, fix) = split_fix("554 5.2.252 SendAsDenied; a not allowed to send as b");
        assert_eq!(
            reply,
            "554 5.2.252 SendAsDenied; a not allowed to send as b"
        );
        assert!(fix.is_some());
        assert_eq!(split_fix("421 try later").1, None);
    }
}
