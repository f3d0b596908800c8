//! The `/_fake/…` control API, for tests that drive the binary over HTTP (the library calls
//! on [`crate::FakeGraph`] do the same in-process). Not part of Graph: plain JSON, no auth,
//! loopback only like the rest.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use serde::Deserialize;
use serde_json::json;

use crate::limits::lock;
use crate::store::Mailbox;
use crate::{
    DeliverOptions, GraphError, Limits, Shared, ThrottleFault, User, ValueFault, folder_by_any_name,
};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_fake/users", post(add_user))
        .route(
            "/_fake/users/{user}/mailFolders/{folder}/messages",
            post(deliver),
        )
        .route("/_fake/users/{user}/messages/{id}", patch(change_message))
        .route("/_fake/users/{user}/expireDeltaTokens", post(expire))
        .route("/_fake/throttle", post(throttle))
        .route("/_fake/releaseStalls", post(release))
        .route("/_fake/limits", put(set_limits))
        .route("/_fake/requests", get(requests))
}

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn add_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let user: User = match serde_json::from_slice(&body) {
        Ok(user) => user,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("expected a user: {e}")),
    };
    let mut store = shared.store();
    if store.mailbox(&user.upn).is_some() {
        return fail(StatusCode::CONFLICT, format!("user {} exists", user.upn));
    }
    let mailbox = Mailbox::new(&user);
    let id = mailbox.id.clone();
    store.mailboxes.push(mailbox);
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "userPrincipalName": user.upn})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliverQuery {
    received_date_time: Option<String>,
    #[serde(default)]
    is_read: bool,
    store_size: Option<u64>,
}

/// POST the raw MIME as the body.
async fn deliver(
    State(shared): State<Arc<Shared>>,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<DeliverQuery>,
    body: Bytes,
) -> Response {
    if shared.dovecot.is_some() {
        return fail(
            StatusCode::CONFLICT,
            "fake-graph serves Dovecot's mailboxes: deliver mail to Dovecot (LMTP), not into the fake",
        );
    }
    let received = match query
        .received_date_time
        .as_deref()
        .map(crate::time::parse_iso)
    {
        None => None,
        Some(Some(secs)) => Some(std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)),
        Some(None) => return fail(StatusCode::BAD_REQUEST, "receivedDateTime is not ISO 8601"),
    };
    let mut store = shared.store();
    let Some(mailbox) = store.mailbox_mut(&user) else {
        return fail(StatusCode::NOT_FOUND, format!("no user {user}"));
    };
    let folder_id = match folder_by_any_name(mailbox, &folder) {
        Ok(id) => id,
        Err(e) => return fail(StatusCode::NOT_FOUND, e.to_string()),
    };
    let ids = mailbox.deliver(
        &folder_id,
        body.to_vec(),
        &DeliverOptions {
            received,
            is_read: query.is_read,
            store_size: query.store_size,
        },
    );
    (StatusCode::CREATED, Json(ids)).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
enum ValueFaultSpec {
    Fail {
        status: u16,
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        after_secs: f64,
    },
    Stall {
        #[serde(default)]
        after_bytes: usize,
    },
    Abort {
        #[serde(default)]
        after_bytes: usize,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageChange {
    store_size: Option<u64>,
    /// Absent: unchanged; null: cleared.
    #[serde(default, with = "double_option")]
    value_fault: Option<Option<ValueFaultSpec>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

async fn change_message(
    State(shared): State<Arc<Shared>>,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let change: MessageChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("expected storeSize/valueFault: {e}"),
            );
        }
    };
    let mut store = shared.store();
    let Some(mailbox) = store.mailbox_mut(&user) else {
        return fail(StatusCode::NOT_FOUND, format!("no user {user}"));
    };
    let Ok(key) = mailbox.message_key(&id) else {
        return fail(StatusCode::NOT_FOUND, format!("no message {id}"));
    };
    let Some(m) = mailbox.messages.get_mut(&key) else {
        return fail(StatusCode::NOT_FOUND, format!("no message {id}"));
    };
    if let Some(size) = change.store_size {
        m.store_size = size;
    }
    if let Some(fault) = change.value_fault {
        m.value_fault = fault.map(|f| match f {
            ValueFaultSpec::Fail {
                status,
                code,
                message,
                after_secs,
            } => ValueFault::Fail {
                error: GraphError::new(status, &code, message),
                after: Duration::from_secs_f64(after_secs.max(0.0)),
            },
            ValueFaultSpec::Stall { after_bytes } => ValueFault::Stall { after_bytes },
            ValueFaultSpec::Abort { after_bytes } => ValueFault::Abort { after_bytes },
        });
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ExpireQuery {
    folder: Option<String>,
}

async fn expire(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
    Query(query): Query<ExpireQuery>,
) -> Response {
    let mut store = shared.store();
    let Some(mailbox) = store.mailbox_mut(&user) else {
        return fail(StatusCode::NOT_FOUND, format!("no user {user}"));
    };
    let folder_id = match query
        .folder
        .as_deref()
        .map(|f| folder_by_any_name(mailbox, f))
        .transpose()
    {
        Ok(f) => f,
        Err(e) => return fail(StatusCode::NOT_FOUND, e.to_string()),
    };
    let n = mailbox.expire_tokens(folder_id.as_deref());
    Json(json!({"expired": n})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThrottleSpec {
    /// 429 or 503.
    status: u16,
    #[serde(default = "one")]
    retry_after_secs: u64,
    #[serde(default = "one_usize")]
    times: usize,
    mailbox: Option<String>,
}

fn one() -> u64 {
    1
}

fn one_usize() -> usize {
    1
}

async fn throttle(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let spec: ThrottleSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("expected status/retryAfterSecs/times: {e}"),
            );
        }
    };
    let retry_after = Duration::from_secs(spec.retry_after_secs);
    let fault = match spec.status {
        429 => ThrottleFault::TooManyRequests { retry_after },
        503 => ThrottleFault::ServiceUnavailable { retry_after },
        other => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("status {other}: expected 429 or 503"),
            );
        }
    };
    shared.limiter.inject(fault, spec.times, spec.mailbox);
    StatusCode::NO_CONTENT.into_response()
}

async fn release(State(shared): State<Arc<Shared>>) -> Response {
    shared.stall_release.send_modify(|n| *n += 1);
    StatusCode::NO_CONTENT.into_response()
}

async fn set_limits(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Limits>(&body) {
        Ok(limits) => {
            shared.limiter.set_limits(limits);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => fail(StatusCode::BAD_REQUEST, format!("expected limits: {e}")),
    }
}

#[derive(Deserialize)]
struct RequestsQuery {
    mailbox: Option<String>,
}

async fn requests(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<RequestsQuery>,
) -> Response {
    let records = lock(&shared.records);
    let selected: Vec<_> = records
        .iter()
        .filter(|r| {
            query.mailbox.as_ref().is_none_or(|m| {
                r.mailbox
                    .as_deref()
                    .is_some_and(|rm| rm.eq_ignore_ascii_case(m))
            })
        })
        .collect();
    Json(json!({"count": selected.len(), "requests": selected})).into_response()
}
