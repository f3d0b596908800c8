//! HTTP: Graph's routes under `/v1.0` (also `/beta`), authentication with fake-entra's tokens,
//! authorisation by `roles` / `scp`, throttling, and the request log. Paths are parsed by hand
//! (segment names case-insensitive, `mailFolders('id')` as well as `mailFolders/id`, as Graph
//! accepts both and writes the former into its links) so every answer is Graph's JSON.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use fake_entra::{AccessTokenClaims, TokenRejection, verify_access_token};
use serde_json::{Value, json};

use crate::error::GraphError;
use crate::limits::{Caller, lock};
use crate::store::Mailbox;
use crate::{GRAPH_APP_ID, GRAPH_RESOURCE, RequestRecord, Shared, ids, time};

/// Graph's JSON content type.
const JSON_CONTENT_TYPE: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Per-request facts the response needs.
struct Ctx {
    request_id: String,
    client_request_id: String,
}

pub(crate) fn error_response(
    error: &GraphError,
    request_id: &str,
    client_request_id: &str,
) -> Response {
    let body = json!({
        "error": {
            "code": error.code,
            "message": error.message,
            "innerError": {
                "date": time::iso_without_zone(time::now_secs()),
                "request-id": request_id,
                "client-request-id": client_request_id,
            }
        }
    });
    let mut response = (error.status_code(), body.to_string()).into_response();
    set(
        &mut response,
        header::CONTENT_TYPE.as_str(),
        JSON_CONTENT_TYPE,
    );
    if let Some(after) = error.retry_after {
        set(
            &mut response,
            header::RETRY_AFTER.as_str(),
            &after.as_secs().max(1).to_string(),
        );
    }
    response
}

pub(crate) fn set(response: &mut Response, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        axum::http::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        response.headers_mut().insert(name, value);
    }
}

pub(crate) fn json_response(
    status: StatusCode,
    body: &Value,
    prefer_applied: &[String],
) -> Response {
    let mut response = (status, body.to_string()).into_response();
    set(
        &mut response,
        header::CONTENT_TYPE.as_str(),
        JSON_CONTENT_TYPE,
    );
    if !prefer_applied.is_empty() {
        set(
            &mut response,
            "preference-applied",
            &prefer_applied.join(","),
        );
    }
    response
}

/// Graph's request size limit: 4 MB (read as 4 × 2^20 bytes) of request body.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The Graph fallback handler.
pub(crate) async fn graph(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = ids::uuid();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| request_id.clone());
    let ctx = Ctx {
        request_id,
        client_request_id,
    };
    let mut record = RequestRecord {
        at: SystemTime::now(),
        at_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        method: method.to_string(),
        path: uri.path().to_owned(),
        mailbox: None,
        app: None,
        status: 0,
        error_code: None,
    };
    let mut response = match handle(&shared, &method, &uri, &headers, &body, &mut record).await {
        Ok(response) => response,
        Err(error) => {
            record.error_code = Some(error.code.clone());
            error_response(&error, &ctx.request_id, &ctx.client_request_id)
        }
    };
    if let Some(dir) = &shared.config.state_dir {
        shared.store().save_changed(dir);
    }
    set(&mut response, "request-id", &ctx.request_id);
    set(&mut response, "client-request-id", &ctx.client_request_id);
    record.status = response.status().as_u16();
    if shared.config.log_requests {
        println!(
            "{} {} mailbox={} app={} -> {}{}",
            record.method,
            record.path,
            record.mailbox.as_deref().unwrap_or("-"),
            record.app.as_deref().unwrap_or("-"),
            record.status,
            record
                .error_code
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default()
        );
    }
    lock(&shared.records).push(record);
    response
}

/// One decoded path segment, with `name('key')` split into two.
fn segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned();
        match decoded.split_once('(') {
            Some((name, rest)) if rest.ends_with(')') && !name.is_empty() => {
                out.push(name.to_owned());
                let key = &rest[..rest.len() - 1];
                out.push(key.trim_matches('\'').to_owned());
            }
            _ => out.push(decoded),
        }
    }
    out
}

fn is(segment: &str, name: &str) -> bool {
    segment.eq_ignore_ascii_case(name)
        || segment
            .strip_prefix("microsoft.graph.")
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
}

/// One authorised request against one mailbox (its operations are in `handlers.rs`).
pub(crate) struct Here<'a> {
    pub shared: &'a Arc<Shared>,
    pub upn: &'a str,
    pub link_user: &'a str,
    pub prefer: &'a Prefer,
    pub query: &'a Query,
}

/// The query string as pairs; `$`-prefixed names also match without the `$` (v1.0 allows it).
pub(crate) struct Query(pub Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Result<Query, GraphError> {
        let raw = uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
            .map(Query)
            .map_err(|_| GraphError::bad_request("The query string is not valid."))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('$');
        self.0
            .iter()
            .find(|(k, _)| k.trim_start_matches('$').eq_ignore_ascii_case(bare))
            .map(|(_, v)| v.as_str())
    }
}

/// The `Prefer` preferences Graph's mail API honours.
#[derive(Default)]
pub(crate) struct Prefer {
    pub max_page_size: Option<usize>,
    pub immutable_ids: bool,
}

impl Prefer {
    fn parse(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for value in headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for item in value.split(',').map(str::trim) {
                let (name, arg) = item.split_once('=').unwrap_or((item, ""));
                let arg = arg.trim().trim_matches('"');
                if name.trim().eq_ignore_ascii_case("odata.maxpagesize") {
                    prefer.max_page_size = arg.parse().ok().filter(|n| *n > 0);
                } else if name.trim().eq_ignore_ascii_case("IdType") {
                    prefer.immutable_ids = arg.eq_ignore_ascii_case("ImmutableId");
                }
            }
        }
        prefer
    }

    pub(crate) fn applied(&self, page_size_applied: Option<usize>) -> Vec<String> {
        let mut applied = Vec::new();
        if let Some(n) = page_size_applied.filter(|_| self.max_page_size.is_some()) {
            applied.push(format!("odata.maxpagesize={n}"));
        }
        if self.immutable_ids {
            applied.push("IdType=\"ImmutableId\"".to_owned());
        }
        applied
    }
}

/// The permission an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Folders, message properties: Mail.ReadBasic(.All), Mail.Read, Mail.ReadWrite.
    ReadBasic,
    /// The body (`$value`): Mail.Read, Mail.ReadWrite.
    Read,
    /// Changes: Mail.ReadWrite.
    Write,
    /// sendMail: Mail.Send.
    Send,
}

impl Need {
    fn satisfied_by(self, permission: &str) -> bool {
        let p = permission.trim_end_matches(".Shared").to_ascii_lowercase();
        match self {
            Need::ReadBasic => matches!(
                p.as_str(),
                "mail.readbasic" | "mail.readbasic.all" | "mail.read" | "mail.readwrite"
            ),
            Need::Read => matches!(p.as_str(), "mail.read" | "mail.readwrite"),
            Need::Write => p == "mail.readwrite",
            Need::Send => p == "mail.send",
        }
    }
}

/// What a request asks for.
#[derive(Debug)]
enum Op {
    ListFolders { parent: Option<String> },
    GetFolder(String),
    CreateFolder { parent: Option<String> },
    ListMessages { folder: Option<String> },
    Delta { folder: String },
    GetMessage(String),
    PatchMessage(String),
    DeleteMessage(String),
    MessageValue(String),
    Move(String),
    PermanentDelete(String),
    SendMail,
    CreateDraft { folder: Option<String> },
    CreateUploadSession(String),
    AddAttachment(String),
    SendDraft(String),
}

impl Op {
    fn need(&self) -> Need {
        match self {
            Op::ListFolders { .. }
            | Op::GetFolder(_)
            | Op::ListMessages { .. }
            | Op::Delta { .. }
            | Op::GetMessage(_) => Need::ReadBasic,
            Op::MessageValue(_) => Need::Read,
            Op::CreateFolder { .. }
            | Op::PatchMessage(_)
            | Op::DeleteMessage(_)
            | Op::Move(_)
            | Op::PermanentDelete(_)
            | Op::CreateDraft { .. }
            | Op::CreateUploadSession(_)
            | Op::AddAttachment(_) => Need::Write,
            Op::SendMail | Op::SendDraft(_) => Need::Send,
        }
    }
}

fn parse_op(segs: &[String], method: &Method) -> Result<Op, GraphError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let wrong = || Err(GraphError::method_not_allowed());
    let message_op = |rest: &[&str]| -> Result<Op, GraphError> {
        match rest {
            [id] => match *method {
                Method::GET => Ok(Op::GetMessage((*id).to_owned())),
                Method::PATCH => Ok(Op::PatchMessage((*id).to_owned())),
                Method::DELETE => Ok(Op::DeleteMessage((*id).to_owned())),
                _ => Err(GraphError::method_not_allowed()),
            },
            [id, v] if *v == "$value" => {
                if method == Method::GET {
                    Ok(Op::MessageValue((*id).to_owned()))
                } else {
                    Err(GraphError::method_not_allowed())
                }
            }
            [id, action] if is(action, "move") && method == Method::POST => {
                Ok(Op::Move((*id).to_owned()))
            }
            [id, action] if is(action, "permanentDelete") && method == Method::POST => {
                Ok(Op::PermanentDelete((*id).to_owned()))
            }
            [id, action] if is(action, "send") && method == Method::POST => {
                Ok(Op::SendDraft((*id).to_owned()))
            }
            [id, attachments] if is(attachments, "attachments") && method == Method::POST => {
                Ok(Op::AddAttachment((*id).to_owned()))
            }
            [id, attachments, action]
                if is(attachments, "attachments")
                    && is(action, "createUploadSession")
                    && method == Method::POST =>
            {
                Ok(Op::CreateUploadSession((*id).to_owned()))
            }
            [_, other, ..] => Err(GraphError::unknown_segment(other)),
            [] => Err(GraphError::unknown_segment("messages")),
        }
    };
    match s.as_slice() {
        [first] if is(first, "mailFolders") => match *method {
            Method::GET => Ok(Op::ListFolders { parent: None }),
            Method::POST => Ok(Op::CreateFolder { parent: None }),
            _ => wrong(),
        },
        [first, id] if is(first, "mailFolders") => match *method {
            Method::GET => Ok(Op::GetFolder((*id).to_owned())),
            _ => wrong(),
        },
        [first, id, child] if is(first, "mailFolders") && is(child, "childFolders") => {
            match *method {
                Method::GET => Ok(Op::ListFolders {
                    parent: Some((*id).to_owned()),
                }),
                Method::POST => Ok(Op::CreateFolder {
                    parent: Some((*id).to_owned()),
                }),
                _ => wrong(),
            }
        }
        [first, id, msgs] if is(first, "mailFolders") && is(msgs, "messages") => match *method {
            Method::GET => Ok(Op::ListMessages {
                folder: Some((*id).to_owned()),
            }),
            Method::POST => Ok(Op::CreateDraft {
                folder: Some((*id).to_owned()),
            }),
            _ => wrong(),
        },
        [first, id, msgs, delta]
            if is(first, "mailFolders") && is(msgs, "messages") && is(delta, "delta") =>
        {
            match *method {
                Method::GET => Ok(Op::Delta {
                    folder: (*id).to_owned(),
                }),
                _ => wrong(),
            }
        }
        [first, _, msgs, rest @ ..] if is(first, "mailFolders") && is(msgs, "messages") => {
            message_op(rest)
        }
        [first] if is(first, "messages") => match *method {
            Method::GET => Ok(Op::ListMessages { folder: None }),
            Method::POST => Ok(Op::CreateDraft { folder: None }),
            _ => wrong(),
        },
        [first, rest @ ..] if is(first, "messages") => message_op(rest),
        [first] if is(first, "sendMail") => match *method {
            Method::POST => Ok(Op::SendMail),
            _ => wrong(),
        },
        [first, ..] => Err(GraphError::unknown_segment(first)),
        [] => Err(GraphError::unknown_segment("")),
    }
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<AccessTokenClaims, GraphError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("Bearer") => token.trim(),
        _ => "",
    };
    if token.is_empty() {
        return Err(GraphError::token_missing());
    }
    if token.matches('.').count() != 2 {
        return Err(GraphError::token_invalid());
    }
    let audiences = [GRAPH_RESOURCE.to_owned(), GRAPH_APP_ID.to_owned()];
    verify_access_token(&shared.key, &audiences, token, SystemTime::now()).map_err(|rejection| {
        if shared.config.log_requests {
            eprintln!("fake-graph: token refused: {rejection}");
        }
        match rejection {
            TokenRejection::Invalid(_) => GraphError::token_signature(),
            TokenRejection::Expired(_) => GraphError::token_expired(),
            TokenRejection::WrongAudience(_) => GraphError::token_audience(),
        }
    })
}

/// Checks `roles` (app-only) or `scp` (delegated) and, for delegated tokens, that the mailbox
/// is the user's own or one they were granted.
fn authorize(claims: &AccessTokenClaims, need: Need, mailbox: &Mailbox) -> Result<(), GraphError> {
    let is_app = claims.idtyp == "app" || (claims.scp.is_none() && claims.upn.is_none());
    if is_app {
        if !claims.roles.iter().any(|r| need.satisfied_by(r)) {
            return Err(GraphError::access_denied());
        }
        return Ok(());
    }
    let scopes = claims.scp.clone().unwrap_or_default();
    if !scopes.split_whitespace().any(|s| need.satisfied_by(s)) {
        return Err(GraphError::access_denied());
    }
    let upn = claims
        .upn
        .clone()
        .or_else(|| claims.unique_name.clone())
        .unwrap_or_default();
    let own = mailbox.is_named(&upn);
    let granted = claims
        .fake_mailbox_access
        .iter()
        .any(|m| mailbox.is_named(m.trim()));
    if own || granted {
        Ok(())
    } else {
        Err(GraphError::access_denied())
    }
}

async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    record: &mut RequestRecord,
) -> Result<Response, GraphError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(GraphError::request_too_large());
    }
    let segs = segments(uri.path());
    match segs.first().map(String::as_str) {
        Some(v) if v.eq_ignore_ascii_case("v1.0") || v.eq_ignore_ascii_case("beta") => {}
        Some(other) => {
            return Err(GraphError::new(
                400,
                "BadRequest",
                format!("Invalid version: {other}"),
            ));
        }
        None => return Err(GraphError::unknown_segment("")),
    }
    let claims = authenticate(shared, headers)?;
    record.app = Some(claims.appid.clone());
    let (user_segment, rest) = match segs.get(1).map(String::as_str) {
        Some(me) if me.eq_ignore_ascii_case("me") => {
            let Some(upn) = claims.upn.clone() else {
                return Err(GraphError::bad_request(
                    "/me request is only valid with delegated authentication flow.",
                ));
            };
            (upn, &segs[2..])
        }
        Some(users) if users.eq_ignore_ascii_case("users") => match segs.get(2) {
            Some(user) => (user.clone(), &segs[3..]),
            None => return Err(GraphError::unknown_segment("users")),
        },
        Some(other) => return Err(GraphError::unknown_segment(other)),
        None => return Err(GraphError::unknown_segment("v1.0")),
    };
    let link_user = if segs.get(1).is_some_and(|s| s.eq_ignore_ascii_case("me")) {
        "me".to_owned()
    } else {
        format!("users/{user_segment}")
    };
    let op = parse_op(rest, method)?;
    let is_app = claims.idtyp == "app";
    if is_app && !claims.roles.iter().any(|r| op.need().satisfied_by(r)) {
        return Err(GraphError::access_denied());
    }
    let upn = {
        let mut store = shared.store();
        let mailbox = store.mailbox_for_request(&user_segment)?;
        authorize(&claims, op.need(), mailbox)?;
        mailbox.upn.clone()
    };
    record.mailbox = Some(upn.clone());
    if is_app
        && let Some(allowed) = lock(&shared.app_scopes).get(&claims.appid.to_ascii_lowercase())
        && !allowed.iter().any(|m| m.eq_ignore_ascii_case(&upn))
    {
        return Err(GraphError::access_denied_by_policy());
    }
    let upload = if matches!(*method, Method::POST | Method::PATCH | Method::PUT) {
        body.len() as u64
    } else {
        0
    };
    let caller = Caller {
        app: claims.appid.to_ascii_lowercase(),
        mailbox: upn.to_ascii_lowercase(),
    };
    let slot = shared.limiter.admit(&caller, upload)?;
    let query = Query::parse(uri)?;
    let prefer = Prefer::parse(headers);
    let here = Here {
        shared,
        upn: &upn,
        link_user: &link_user,
        prefer: &prefer,
        query: &query,
    };
    let Some(dovecot) = shared.dovecot.as_ref() else {
        let response = match op {
            Op::ListFolders { parent } => here.list_folders(parent.as_deref()),
            Op::GetFolder(id) => here.get_folder(&id),
            Op::CreateFolder { parent } => here.create_folder(parent.as_deref(), body),
            Op::ListMessages { folder } => here.list_messages(folder.as_deref()),
            Op::Delta { folder } => here.delta(&folder),
            Op::GetMessage(id) => here.get_message(&id),
            Op::PatchMessage(id) => here.patch_message(&id, body),
            Op::DeleteMessage(id) => here.delete_message(&id),
            Op::PermanentDelete(id) => here.permanent_delete(&id),
            Op::Move(id) => here.move_message(&id, body),
            Op::SendMail => here
                .prepare_send(headers, body)
                .and_then(|outgoing| here.send_in_memory(outgoing, None)),
            Op::CreateDraft { folder } => here.create_draft(folder.as_deref(), headers, body),
            Op::CreateUploadSession(id) => here.create_upload_session(&id, body),
            Op::AddAttachment(id) => here.add_attachment(&id, body),
            Op::SendDraft(id) => here
                .draft_outgoing(&id)
                .and_then(|(key, outgoing)| here.send_in_memory(outgoing, Some(key))),
            Op::MessageValue(id) => return here.value(&id, None, slot).await,
        };
        drop(slot);
        return response;
    };
    // The Dovecot backend: the mailbox's session for the whole request; the model brought up
    // to date first, changes made in Dovecot before the model (see dovecot.rs).
    let mut conn = dovecot.lock(&upn).await;
    crate::dovecot::sync(shared, &mut conn).await?;
    let response = match op {
        Op::ListFolders { parent } => here.list_folders(parent.as_deref()),
        Op::GetFolder(id) => here.get_folder(&id),
        Op::CreateFolder { parent } => {
            let (parent_id, name, hidden) = here.folder_request(parent.as_deref(), body)?;
            let path = crate::dovecot::create_folder(shared, &mut conn, &parent_id, &name).await?;
            here.create_folder_with_path(&parent_id, &name, hidden, path)
        }
        Op::ListMessages { folder } => here.list_messages(folder.as_deref()),
        Op::Delta { folder } => here.delta(&folder),
        Op::GetMessage(id) => here.get_message(&id),
        Op::PatchMessage(id) => {
            let response = here.patch_message(&id, body)?;
            if let Some(seen) = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("isRead").and_then(Value::as_bool))
            {
                crate::dovecot::set_seen(shared, &mut conn, &id, seen).await?;
            }
            Ok(response)
        }
        Op::DeleteMessage(id) => {
            let target = here.delete_target(&id)?;
            let fixup = crate::dovecot::move_to(shared, &mut conn, &id, &target).await?;
            let response = here.delete_message(&id);
            fixup.apply(shared, &upn);
            response
        }
        Op::PermanentDelete(id) => {
            crate::dovecot::permanent_delete(shared, &mut conn, &id).await?;
            here.permanent_delete(&id)
        }
        Op::Move(id) => {
            let destination = crate::representation::destination_of(body)?;
            let fixup = crate::dovecot::move_to(shared, &mut conn, &id, &destination).await?;
            let response = here.move_message(&id, body);
            fixup.apply(shared, &upn);
            response
        }
        Op::SendMail => {
            let outgoing = here.prepare_send(headers, body)?;
            here.send_through_dovecot(&mut conn, outgoing, None).await
        }
        // Drafts stay in the model until sent (no IMAP APPEND to Drafts; see README).
        Op::CreateDraft { folder } => here.create_draft(folder.as_deref(), headers, body),
        Op::CreateUploadSession(id) => here.create_upload_session(&id, body),
        Op::AddAttachment(id) => here.add_attachment(&id, body),
        Op::SendDraft(id) => {
            let (key, outgoing) = here.draft_outgoing(&id)?;
            here.send_through_dovecot(&mut conn, outgoing, Some(key))
                .await
        }
        Op::MessageValue(id) => {
            let mime = crate::dovecot::value(shared, &mut conn, &id).await?;
            drop(conn);
            return here.value(&id, Some(mime), slot).await;
        }
    };
    drop(conn);
    drop(slot);
    response
}
