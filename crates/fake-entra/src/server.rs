//! HTTP: the routes, the state they share, fault injection and the request log.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::aad_error::AadsError;
use crate::config::looks_like_guid;
use crate::grants::{self, Params, resolve_tenant};
use crate::state::Shared;
use crate::tokeninfo::{MailService, validate_mailbox_access};
use crate::util::{entra_timestamp, random_uuid};
use crate::{Fault, RequestOutcome, TokenRequestRecord};

/// All routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(token_endpoint).get(wrong_method),
        )
        .route(
            "/{tenant}/oauth2/v2.0/devicecode",
            post(device_code_endpoint),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/discovery/keys", get(jwks))
        .route("/_fake/tokeninfo", get(tokeninfo).post(tokeninfo))
        .route("/_fake/devicelogin", post(device_login))
        .route("/_fake/health", get(|| async { "ok" }))
        .with_state(shared)
}

/// Parses an `application/x-www-form-urlencoded` body or query; the first value of a name wins.
fn parse_form(data: &[u8]) -> Params {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(data).unwrap_or_default();
    let mut params = Params::new();
    for (name, value) in pairs {
        params.entry(name).or_insert(value);
    }
    params
}

/// A JSON response with Entra's headers on token responses.
fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(request_id) = HeaderValue::from_str(&random_uuid()) {
        headers.insert("x-ms-request-id", request_id);
    }
    response
}

fn error_response(error: &AadsError, headers: &HeaderMap) -> Response {
    let correlation_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| looks_like_guid(v));
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, &error.body(correlation_id, SystemTime::now()))
}

async fn wrong_method(headers: HeaderMap, method: Method) -> Response {
    error_response(&AadsError::post_only(method.as_str()), &headers)
}

/// POST /{tenant}/oauth2/v2.0/token.
async fn token_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_form(&body);
    let fault = shared
        .outage_fault()
        .or_else(|| shared.faults().pop_front());
    let (response, status, outcome) = match fault {
        Some(Fault::Delay(delay)) => {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.until_shutdown() => {}
            }
            answer_token_request(&shared, &tenant, &params, &headers)
        }
        Some(fault) => {
            let response = fault_response(&shared, &fault, &headers).await;
            let status = response.status().as_u16();
            (response, status, RequestOutcome::Fault(fault))
        }
        None => answer_token_request(&shared, &tenant, &params, &headers),
    };
    let record = TokenRequestRecord {
        at: SystemTime::now(),
        tenant,
        grant_type: params.get("grant_type").cloned(),
        client_id: params.get("client_id").cloned(),
        scope: params.get("scope").cloned(),
        status,
        outcome,
    };
    shared.log(&format!(
        "POST /{}/oauth2/v2.0/token grant={} client={} scope={:?} -> {} {}",
        record.tenant,
        record.grant_type.as_deref().unwrap_or("-"),
        record.client_id.as_deref().unwrap_or("-"),
        record.scope.as_deref().unwrap_or(""),
        record.status,
        record.outcome
    ));
    shared.records().push(record);
    response
}

fn answer_token_request(
    shared: &Shared,
    tenant: &str,
    params: &Params,
    headers: &HeaderMap,
) -> (Response, u16, RequestOutcome) {
    match grants::token(shared, tenant, params) {
        Ok(body) => (
            json_response(StatusCode::OK, &body),
            200,
            RequestOutcome::Issued,
        ),
        Err(error) => (
            error_response(&error, headers),
            error.status,
            RequestOutcome::Error {
                error: error.error.clone(),
                code: error.code,
            },
        ),
    }
}

/// The response of an injected failure (a delay is handled by the caller).
async fn fault_response(shared: &Shared, fault: &Fault, headers: &HeaderMap) -> Response {
    match fault {
        Fault::Status(status) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let error = AadsError::new(
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            )
            .with_status(status.as_u16());
            error_response(&error, headers)
        }
        Fault::TooManyRequests { retry_after_secs } => {
            let error = AadsError::new(
                "temporarily_unavailable",
                90055,
                "There are too many incoming requests. Please try again later.",
            )
            .with_status(429);
            let mut response = error_response(&error, headers);
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Fault::AadsError(error) => error_response(error, headers),
        Fault::Hang => {
            // Never answers while the server runs; at shutdown the connection gets a 503.
            shared.until_shutdown().await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Fault::Delay(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// POST /{tenant}/oauth2/v2.0/devicecode.
async fn device_code_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_form(&body);
    let client = params.get("client_id").cloned().unwrap_or_default();
    match grants::device_authorization(&shared, &tenant, &params) {
        Ok(body) => {
            shared.log(&format!(
                "POST /{tenant}/oauth2/v2.0/devicecode client={client} -> 200 user_code={} \
                 (approve: POST /_fake/devicelogin user_code=…&upn=…)",
                body["user_code"].as_str().unwrap_or_default()
            ));
            json_response(StatusCode::OK, &body)
        }
        Err(error) => {
            shared.log(&format!(
                "POST /{tenant}/oauth2/v2.0/devicecode client={client} -> {} AADSTS{}",
                error.status, error.code
            ));
            error_response(&error, &headers)
        }
    }
}

/// GET /{tenant}/v2.0/.well-known/openid-configuration.
async fn openid_configuration(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let config = shared.config().clone();
    let resolved = match resolve_tenant(&config, &tenant) {
        Ok(resolved) => resolved,
        Err(error) => return error_response(&error, &headers),
    };
    let base = &shared.base_url;
    let issuer = shared.issuer(&config, resolved);
    let body = json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{tenant}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    });
    json_response(StatusCode::OK, &body)
}

/// GET /{tenant}/discovery/v2.0/keys.
async fn jwks(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let config = shared.config().clone();
    let resolved = match resolve_tenant(&config, &tenant) {
        Ok(resolved) => resolved,
        Err(error) => return error_response(&error, &headers),
    };
    let mut jwk = shared.key.public_jwk();
    if let Some(map) = jwk.as_object_mut() {
        map.insert("issuer".to_owned(), json!(shared.issuer(&config, resolved)));
    }
    json_response(StatusCode::OK, &json!({ "keys": [jwk] }))
}

/// GET or POST /_fake/tokeninfo: Dovecot's `passdb oauth2` validation. Parameters `user`,
/// `service`, `access_token` (or `token`) from the query or a form body, in any order; the
/// token may also come as `Authorization: Bearer`, the service as `X-Dovecot-Auth-Service`.
async fn tokeninfo(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = parse_form(query.unwrap_or_default().as_bytes());
    for (name, value) in parse_form(&body) {
        params.entry(name).or_insert(value);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    // Dovecot 2.3 cannot put the login into a tokeninfo URL, so the stack uses its password-grant
    // mode (`use_grant_password`): grant_type=password&username=<login>&password=<token>.
    let grant = params.get("grant_type").map(String::as_str) == Some("password");
    let token = params
        .get("access_token")
        .or_else(|| params.get("token"))
        .or_else(|| if grant { params.get("password") } else { None })
        .cloned()
        .filter(|t| !t.trim().is_empty())
        .or(bearer);
    let login = params
        .get("user")
        .or_else(|| params.get("username"))
        .map(|u| u.trim())
        .filter(|u| !u.is_empty());
    // Dovecot's own HTTP client sends the service as a header (`send_auth_headers = yes`).
    let service_header = headers
        .get("x-dovecot-auth-service")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let service_name = params
        .get("service")
        .map(String::as_str)
        .or(service_header.as_deref());
    let result = match (token, MailService::parse(service_name)) {
        (None, _) => Err(
            "no access token: expected access_token=… (or token=…) or an Authorization: Bearer header"
                .to_owned(),
        ),
        (Some(_), Err(reason)) => Err(reason),
        (Some(token), Ok(service)) => validate_mailbox_access(
            &shared.key,
            &shared.audiences(),
            &token,
            login,
            service,
            SystemTime::now(),
        ),
    };
    let service_name = service_name.unwrap_or("imap");
    let login_name = login.unwrap_or("-");
    match result {
        Ok(info) => {
            shared.log(&format!(
                "tokeninfo user={login_name} service={service_name} -> 200 ({} token of {})",
                info.idtyp, info.client_id
            ));
            let mut body = serde_json::to_value(&info).unwrap_or_default();
            if grant {
                body["access_token"] = json!(params.get("password").cloned().unwrap_or_default());
                body["token_type"] = json!("Bearer");
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(reason) => {
            // Always on stderr: this is what an operator reads when a login fails.
            eprintln!(
                "{} fake-entra: tokeninfo rejected user={login_name} service={service_name}: {reason}",
                entra_timestamp(SystemTime::now())
            );
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({
                    "error": if grant { "invalid_grant" } else { "invalid_token" },
                    "error_description": reason
                })),
            )
                .into_response()
        }
    }
}

/// POST /_fake/devicelogin with `user_code`, `upn`, and `action` (`approve`, the default, or
/// `decline`): what the user would do at https://microsoft.com/devicelogin.
async fn device_login(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let params = parse_form(&body);
    let user_code = params.get("user_code").cloned().unwrap_or_default();
    let upn = params.get("upn").cloned().unwrap_or_default();
    let action = params.get("action").map_or("approve", String::as_str);
    let done = match action {
        "approve" => crate::approve_device_code(&shared, &user_code, &upn),
        "decline" => crate::decline_device_code(&shared, &user_code),
        other => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({ "error": format!("unknown action '{other}' (approve or decline)") }),
                ),
            )
                .into_response();
        }
    };
    shared.log(&format!(
        "devicelogin user_code={user_code} upn={upn} action={action} -> {done}"
    ));
    if done {
        (StatusCode::OK, axum::Json(json!({ "ok": true }))).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "ok": false,
                "error": "no pending device code with that user_code (expired, already used?) or unknown upn"
            })),
        )
            .into_response()
    }
}

/// How long a test waits at most for graceful shutdown before dropping the server task.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
