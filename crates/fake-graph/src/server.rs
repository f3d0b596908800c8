//! HTTP: Graph's routes under `/v1.0` (also `/beta`), authentication with fake-entra's tokens,
//! authorisation by `roles` / `scp`, throttling, and the request log. Paths are parsed by hand
//! (segment names case-insensitive, `mailFolders('id')` as well as `mailFolders/id`, as Graph
//! accepts both and writes the former into its links) so every answer is Graph's JSON.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use fake_entra::{AccessTokenClaims, TokenRejection, verify_access_token};
use serde_json::{Value, json};

use crate::error::GraphError;
use crate::limits::{Caller, Slot, lock};
use crate::representation::{folder_json, message_json, parse_expand, parse_select};
use crate::store::{ChangeType, DeltaItem, DeltaOptions, Mailbox, ReceivedFilter, SyncState};
use crate::{
    DeliverOptions, GRAPH_APP_ID, GRAPH_RESOURCE, RequestRecord, Shared, ValueFault, ids, time,
};

/// Graph's JSON content type.
const JSON_CONTENT_TYPE: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// All routes: the control API, then Graph for everything else.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/health", get(|| async { "ok" }))
        .merge(crate::control::routes())
        .fallback(graph)
        .with_state(shared)
}

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

fn set(response: &mut Response, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        axum::http::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        response.headers_mut().insert(name, value);
    }
}

fn json_response(status: StatusCode, body: &Value, prefer_applied: &[String]) -> Response {
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

/// The Graph fallback handler.
async fn graph(
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

/// The query string as pairs; `$`-prefixed names also match without the `$` (v1.0 allows it).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Result<Query, GraphError> {
        let raw = uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
            .map(Query)
            .map_err(|_| GraphError::bad_request("The query string is not valid."))
    }

    fn get(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('$');
        self.0
            .iter()
            .find(|(k, _)| k.trim_start_matches('$').eq_ignore_ascii_case(bare))
            .map(|(_, v)| v.as_str())
    }
}

/// The `Prefer` preferences Graph's mail API honours.
#[derive(Default)]
struct Prefer {
    max_page_size: Option<usize>,
    immutable_ids: bool,
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

    fn applied(&self, page_size_applied: Option<usize>) -> Vec<String> {
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
            | Op::PermanentDelete(_) => Need::Write,
            Op::SendMail => Need::Send,
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
        Op::SendMail => here.send_mail(headers, body),
        Op::MessageValue(id) => return here.value(&id, slot).await,
    };
    drop(slot);
    response
}

/// One authorised request against one mailbox.
struct Here<'a> {
    shared: &'a Arc<Shared>,
    upn: &'a str,
    link_user: &'a str,
    prefer: &'a Prefer,
    query: &'a Query,
}

impl Here<'_> {
    fn with_mailbox<R>(
        &self,
        f: impl FnOnce(&mut Mailbox) -> Result<R, GraphError>,
    ) -> Result<R, GraphError> {
        let mut store = self.shared.store();
        let mailbox = store.mailbox_for_request(self.upn)?;
        f(mailbox)
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v1.0/{}/{}", self.shared.base_url, self.link_user, tail)
    }

    fn context(&self, what: &str) -> String {
        format!("{}/v1.0/$metadata#{}", self.shared.base_url, what)
    }

    fn page_size(&self, top: Option<usize>) -> usize {
        let config = &self.shared.config;
        self.prefer
            .max_page_size
            .or(top)
            .unwrap_or(config.default_page_size)
            .clamp(1, config.max_page_size.max(1))
    }

    fn top_skip(&self) -> Result<(Option<usize>, usize), GraphError> {
        let number = |name: &str| -> Result<Option<usize>, GraphError> {
            self.query
                .get(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        GraphError::bad_request(format!("Invalid value for {name}: '{v}'."))
                    })
                })
                .transpose()
        };
        Ok((number("$top")?, number("$skip")?.unwrap_or(0)))
    }

    fn list_folders(&self, parent: Option<&str>) -> Result<Response, GraphError> {
        let (top, skip) = self.top_skip()?;
        let include_hidden = self
            .query
            .get("includeHiddenFolders")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let name_filter = self
            .query
            .get("$filter")
            .map(parse_display_name_filter)
            .transpose()?;
        let page_size = self.page_size(top);
        let (values, more) = self.with_mailbox(|mailbox| {
            let parent_id = match parent {
                Some(p) => mailbox.folder(p)?.id.clone(),
                None => mailbox.root_id(),
            };
            let folders: Vec<Value> = mailbox
                .child_folders(&parent_id, include_hidden)
                .into_iter()
                .filter(|f| {
                    name_filter
                        .as_ref()
                        .is_none_or(|n| f.display_name.eq_ignore_ascii_case(n))
                })
                .map(|f| folder_json(mailbox, f))
                .collect();
            let more = folders.len() > skip + page_size;
            Ok((
                folders
                    .into_iter()
                    .skip(skip)
                    .take(page_size)
                    .collect::<Vec<_>>(),
                more,
            ))
        })?;
        let tail = match parent {
            Some(p) => format!("mailFolders('{p}')/childFolders"),
            None => "mailFolders".to_owned(),
        };
        let mut body = json!({
            "@odata.context": self.context(&format!("users('{}')/mailFolders", self.upn)),
            "value": values,
        });
        if more {
            let mut params: Vec<(String, String)> = self
                .query
                .0
                .iter()
                .filter(|(k, _)| !k.trim_start_matches('$').eq_ignore_ascii_case("skip"))
                .cloned()
                .collect();
            params.push(("$skip".to_owned(), (skip + page_size).to_string()));
            let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
            body["@odata.nextLink"] = json!(format!("{}?{qs}", self.url(&tail)));
        }
        Ok(json_response(
            StatusCode::OK,
            &body,
            &self.prefer.applied(Some(page_size)),
        ))
    }

    fn get_folder(&self, id: &str) -> Result<Response, GraphError> {
        let value = self.with_mailbox(|mailbox| {
            let folder = mailbox.folder(id)?.clone();
            Ok(folder_json(mailbox, &folder))
        })?;
        let mut body = value;
        body["@odata.context"] =
            json!(self.context(&format!("users('{}')/mailFolders/$entity", self.upn)));
        Ok(json_response(StatusCode::OK, &body, &[]))
    }

    fn create_folder(&self, parent: Option<&str>, body: &Bytes) -> Result<Response, GraphError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
        let name = request
            .get("displayName")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("The property 'displayName' is required."))?;
        let hidden = request
            .get("isHidden")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let value = self.with_mailbox(|mailbox| {
            let parent_id = match parent {
                Some(p) => mailbox.folder(p)?.id.clone(),
                None => mailbox.root_id(),
            };
            let folder = mailbox.create_folder(&parent_id, name, hidden)?;
            Ok(folder_json(mailbox, &folder))
        })?;
        let mut body = value;
        body["@odata.context"] =
            json!(self.context(&format!("users('{}')/mailFolders/$entity", self.upn)));
        Ok(json_response(StatusCode::CREATED, &body, &[]))
    }

    fn select_expand(
        &self,
    ) -> Result<
        (
            Option<Vec<String>>,
            Vec<crate::representation::ExtendedProperty>,
        ),
        GraphError,
    > {
        let select = self.query.get("$select").map(parse_select).transpose()?;
        let expand = self
            .query
            .get("$expand")
            .map(parse_expand)
            .transpose()?
            .unwrap_or_default();
        Ok((select, expand))
    }

    fn list_messages(&self, folder: Option<&str>) -> Result<Response, GraphError> {
        let (top, skip) = self.top_skip()?;
        let (select, expand) = self.select_expand()?;
        if self.query.get("$filter").is_some()
            || self.query.get("$orderby").is_some()
            || self.query.get("$search").is_some()
        {
            return Err(GraphError::bad_request(
                "$filter, $orderby and $search on message lists are not implemented by this fake; use delta.",
            ));
        }
        let page_size = self.page_size(top);
        let immutable = self.prefer.immutable_ids;
        let (values, more) = self.with_mailbox(|mailbox| {
            let folder_id = folder
                .map(|f| mailbox.folder(f).map(|f| f.id.clone()))
                .transpose()?;
            let mut messages: Vec<_> = mailbox
                .messages
                .values()
                .filter(|m| folder_id.as_ref().is_none_or(|f| *f == m.folder_id))
                .collect();
            // Graph lists messages newest first by default.
            messages.sort_by_key(|m| std::cmp::Reverse((m.received, m.key)));
            let more = messages.len() > skip + page_size;
            let values: Vec<Value> = messages
                .into_iter()
                .skip(skip)
                .take(page_size)
                .map(|m| message_json(mailbox, m, select.as_deref(), &expand, immutable))
                .collect();
            Ok((values, more))
        })?;
        let tail = match folder {
            Some(f) => format!("mailFolders('{f}')/messages"),
            None => "messages".to_owned(),
        };
        let mut body = json!({
            "@odata.context": self.context(&format!("users('{}')/messages", self.upn)),
            "value": values,
        });
        if more {
            let mut params: Vec<(String, String)> = self
                .query
                .0
                .iter()
                .filter(|(k, _)| !k.trim_start_matches('$').eq_ignore_ascii_case("skip"))
                .cloned()
                .collect();
            params.push(("$skip".to_owned(), (skip + page_size).to_string()));
            let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
            body["@odata.nextLink"] = json!(format!("{}?{qs}", self.url(&tail)));
        }
        Ok(json_response(
            StatusCode::OK,
            &body,
            &self.prefer.applied(Some(page_size)),
        ))
    }

    fn delta_options(&self) -> Result<DeltaOptions, GraphError> {
        let (select, expand) = self.select_expand()?;
        let (top, _) = self.top_skip()?;
        let filter = self
            .query
            .get("$filter")
            .map(parse_received_filter)
            .transpose()?;
        let change_type = match self.query.get("changeType") {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("created") => Some(ChangeType::Created),
            Some(v) if v.eq_ignore_ascii_case("updated") => Some(ChangeType::Updated),
            Some(v) if v.eq_ignore_ascii_case("deleted") => Some(ChangeType::Deleted),
            Some(v) => {
                return Err(GraphError::bad_request(format!(
                    "Invalid changeType '{v}': expected created, updated or deleted."
                )));
            }
        };
        if let Some(order) = self.query.get("$orderby") {
            // Documented as supported (receivedDateTime desc only); not implemented here.
            return Err(GraphError::bad_request(format!(
                "$orderby={order} on delta is not implemented by this fake."
            )));
        }
        if self.query.get("$search").is_some() {
            return Err(GraphError::bad_request(
                "$search is not supported on delta.",
            ));
        }
        Ok(DeltaOptions {
            select,
            expand,
            filter,
            change_type,
            top,
        })
    }

    fn delta(&self, folder: &str) -> Result<Response, GraphError> {
        let token = self
            .query
            .get("$skiptoken")
            .or_else(|| self.query.get("$deltatoken"))
            .map(str::to_owned);
        let fresh_options = if token.is_none() {
            Some(self.delta_options()?)
        } else {
            None
        };
        let immutable = self.prefer.immutable_ids;
        let prefer_page = self.prefer.max_page_size;
        let config = &self.shared.config;
        let (values, link, page_size) = self.with_mailbox(|mailbox| {
            let folder_id = mailbox.folder(folder)?.id.clone();
            let state = match (&token, fresh_options) {
                (Some(token), _) => {
                    let Some(known) = mailbox.sync_states.get(token) else {
                        return Err(GraphError::sync_state_not_found(0));
                    };
                    if known.expired || known.folder_id != folder_id {
                        return Err(GraphError::sync_state_not_found(known.generation));
                    }
                    if known.is_delta_token {
                        SyncState {
                            folder_id: folder_id.clone(),
                            since: known.upto,
                            upto: mailbox.seq,
                            cursor: None,
                            initial: false,
                            is_delta_token: false,
                            options: known.options.clone(),
                            expired: false,
                            generation: 0,
                        }
                    } else {
                        known.clone()
                    }
                }
                (None, Some(options)) => SyncState {
                    folder_id: folder_id.clone(),
                    since: 0,
                    upto: mailbox.seq,
                    cursor: None,
                    initial: true,
                    is_delta_token: false,
                    options,
                    expired: false,
                    generation: 0,
                },
                (None, None) => return Err(GraphError::bad_request("delta without options")),
            };
            let page_size = prefer_page
                .or(state.options.top)
                .unwrap_or(config.default_page_size)
                .clamp(1, config.max_page_size.max(1));
            let (items, done) = mailbox.delta_page(&state, page_size);
            let mut values = Vec::with_capacity(items.len());
            for (_, _, item) in &items {
                match item {
                    DeltaItem::Present(key) => {
                        if let Some(m) = mailbox.messages.get(key) {
                            let mut v = message_json(
                                mailbox,
                                m,
                                state.options.select.as_deref(),
                                &state.options.expand,
                                immutable,
                            );
                            if let Some(object) = v.as_object_mut() {
                                object.insert(
                                    "@odata.type".to_owned(),
                                    json!("#microsoft.graph.message"),
                                );
                            }
                            values.push(v);
                        }
                    }
                    DeltaItem::Removed {
                        immutable_id,
                        rest_id,
                    } => values.push(json!({
                        "@odata.type": "#microsoft.graph.message",
                        "id": if immutable { immutable_id } else { rest_id },
                        "@removed": {"reason": "deleted"},
                    })),
                }
            }
            let cursor = items
                .last()
                .map(|(seq, key, _)| (*seq, *key))
                .or(state.cursor);
            let (link_kind, next) = if done {
                (
                    "$deltatoken",
                    SyncState {
                        cursor: None,
                        is_delta_token: true,
                        ..state
                    },
                )
            } else {
                ("$skiptoken", SyncState { cursor, ..state })
            };
            let token = mailbox.issue_token(next);
            Ok((values, (done, link_kind, token), page_size))
        })?;
        let (done, kind, token) = link;
        let url = format!(
            "{}?{kind}={token}",
            self.url(&format!("mailFolders('{folder}')/messages/delta"))
        );
        let mut body = json!({
            "@odata.context": self.context("Collection(message)"),
            "value": values,
        });
        body[if done {
            "@odata.deltaLink"
        } else {
            "@odata.nextLink"
        }] = json!(url);
        Ok(json_response(
            StatusCode::OK,
            &body,
            &self.prefer.applied(Some(page_size)),
        ))
    }

    fn message_response(
        &self,
        status: StatusCode,
        key_or_id: &str,
        by_key: Option<u64>,
    ) -> Result<Response, GraphError> {
        let (select, expand) = if status == StatusCode::OK {
            self.select_expand()?
        } else {
            (None, Vec::new())
        };
        let immutable = self.prefer.immutable_ids;
        let mut value = self.with_mailbox(|mailbox| {
            let key = match by_key {
                Some(k) => k,
                None => mailbox.message_key(key_or_id)?,
            };
            let m = mailbox
                .messages
                .get(&key)
                .ok_or_else(GraphError::item_not_found)?;
            Ok(message_json(
                mailbox,
                m,
                select.as_deref(),
                &expand,
                immutable,
            ))
        })?;
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "@odata.context".to_owned(),
                json!(self.context(&format!("users('{}')/messages/$entity", self.upn))),
            );
        }
        Ok(json_response(status, &value, &self.prefer.applied(None)))
    }

    fn get_message(&self, id: &str) -> Result<Response, GraphError> {
        self.message_response(StatusCode::OK, id, None)
    }

    fn patch_message(&self, id: &str, body: &Bytes) -> Result<Response, GraphError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
        let Some(changes) = request.as_object() else {
            return Err(GraphError::bad_request(
                "The request body must be a JSON object.",
            ));
        };
        let key = self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let mut m = mailbox
                .messages
                .get(&key)
                .cloned()
                .ok_or_else(GraphError::item_not_found)?;
            for (name, value) in changes {
                match name.as_str() {
                    "isRead" => {
                        m.is_read = value
                            .as_bool()
                            .ok_or_else(|| GraphError::bad_request("isRead must be a boolean."))?
                    }
                    "categories" => {
                        m.categories = value
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|c| c.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .ok_or_else(|| {
                                GraphError::bad_request("categories must be an array of strings.")
                            })?;
                    }
                    "importance" => match value.as_str() {
                        Some(v @ ("low" | "normal" | "high")) => m.importance = v.to_owned(),
                        _ => {
                            return Err(GraphError::bad_request(
                                "importance must be low, normal or high.",
                            ));
                        }
                    },
                    "flag" => {
                        m.flag_status = value
                            .get("flagStatus")
                            .and_then(Value::as_str)
                            .filter(|s| matches!(*s, "notFlagged" | "complete" | "flagged"))
                            .ok_or_else(|| {
                                GraphError::bad_request(
                                    "flag.flagStatus must be notFlagged, complete or flagged.",
                                )
                            })?
                            .to_owned();
                    }
                    "inferenceClassification" => {}
                    other if crate::representation::MESSAGE_PROPERTIES.contains(&other) => {
                        // Received mail is not a draft: its content is read-only.
                        return Err(GraphError::new(
                            400,
                            "ErrorInvalidPropertyUpdateSentMessage",
                            "Update operation is invalid for property of a sent message.",
                        ));
                    }
                    other => {
                        return Err(GraphError::unknown_property(
                            other,
                            "microsoft.graph.message",
                        ));
                    }
                }
            }
            mailbox.messages.insert(key, m);
            mailbox.touch(key);
            Ok(key)
        })?;
        self.message_response(StatusCode::OK, id, Some(key))
    }

    fn delete_message(&self, id: &str) -> Result<Response, GraphError> {
        self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let deleted_items = mailbox.folder("deleteditems")?.id.clone();
            let current = mailbox
                .messages
                .get(&key)
                .map(|m| m.folder_id.clone())
                .unwrap_or_default();
            let target = if current == deleted_items {
                mailbox
                    .folder(crate::store::RECOVERABLE_DELETIONS)?
                    .id
                    .clone()
            } else {
                deleted_items
            };
            mailbox.move_message(key, &target);
            Ok(())
        })?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    fn permanent_delete(&self, id: &str) -> Result<Response, GraphError> {
        self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            mailbox.purge(key);
            Ok(())
        })?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    fn move_message(&self, id: &str, body: &Bytes) -> Result<Response, GraphError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
        let destination = request
            .get("destinationId")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("The parameter 'destinationId' is required."))?;
        let key = self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let destination = mailbox.folder(destination)?.id.clone();
            mailbox.move_message(key, &destination);
            Ok(key)
        })?;
        self.message_response(StatusCode::CREATED, id, Some(key))
    }

    fn send_mail(&self, headers: &HeaderMap, body: &Bytes) -> Result<Response, GraphError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let (mime, save_to_sent_items) = if content_type.starts_with("text/plain") {
            // The MIME variant: the body is the base64 text and nothing else, so there is no
            // saveToSentItems to pass; the message is always saved in Sent Items.
            let text: String = String::from_utf8_lossy(body).split_whitespace().collect();
            let mime = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|_| GraphError::mime_not_base64())?;
            if mime.is_empty() {
                return Err(GraphError::mime_not_base64());
            }
            (mime, true)
        } else if content_type.starts_with("application/json") {
            let request: Value = serde_json::from_slice(body)
                .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
            let save = match request.get("saveToSentItems") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => !s.eq_ignore_ascii_case("false"),
                Some(_) => true,
            };
            let message = request
                .get("message")
                .ok_or_else(|| GraphError::bad_request("The parameter 'message' is required."))?;
            (mime_from_json(message, self.upn), save)
        } else {
            return Err(GraphError::new(
                415,
                "UnsupportedMediaType",
                "Use application/json for a JSON message or text/plain for MIME content.",
            ));
        };
        let config = &self.shared.config;
        let mut store = self.shared.store();
        let sender = store.mailbox_for_request(self.upn)?;
        let sender_addresses = [sender.upn.clone(), sender.mail.clone()];
        let parsed = crate::store::Parsed::of(&mime);
        if let Some(from) = &parsed.from
            && !sender_addresses
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&from.address))
        {
            return Err(GraphError::new(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.",
            ));
        }
        let recipients: Vec<String> = parsed
            .to
            .iter()
            .chain(&parsed.cc)
            .chain(&parsed.bcc)
            .map(|a| a.address.clone())
            .filter(|a| !a.is_empty())
            .collect();
        if recipients.is_empty() {
            return Err(GraphError::no_recipients());
        }
        let from_header = format!("{} <{}>", sender.display_name, sender.mail);
        let sent = prepare_outgoing(
            &mime,
            &config.strip_headers_on_send,
            &from_header,
            parsed.internet_message_id.is_none(),
            false,
        );
        let delivered = prepare_outgoing(
            &mime,
            &config.strip_headers_on_send,
            &from_header,
            false,
            true,
        );
        // The Message-ID Exchange assigned (if the MIME had none) is the same on every copy.
        let delivered = match extract_header(&sent, "Message-ID") {
            Some(id) if parsed.internet_message_id.is_none() => {
                let mut with_id = format!("Message-ID: {id}\r\n").into_bytes();
                with_id.extend_from_slice(&delivered);
                with_id
            }
            _ => delivered,
        };
        if save_to_sent_items {
            let sent_items = sender.folder("sentitems")?.id.clone();
            sender.deliver(
                &sent_items,
                sent,
                &DeliverOptions {
                    is_read: true,
                    ..DeliverOptions::default()
                },
            );
        }
        let mut seen = Vec::new();
        for address in recipients {
            let lower = address.to_ascii_lowercase();
            if seen.contains(&lower) {
                continue;
            }
            seen.push(lower);
            if let Some(mailbox) = store.mailbox_mut(&address).filter(|m| m.mailbox_enabled) {
                let inbox = mailbox.folder("inbox")?.id.clone();
                mailbox.deliver(&inbox, delivered.clone(), &DeliverOptions::default());
            }
        }
        Ok(StatusCode::ACCEPTED.into_response())
    }

    async fn value(&self, id: &str, slot: Slot) -> Result<Response, GraphError> {
        let (mime, fault) = self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let m = mailbox
                .messages
                .get(&key)
                .ok_or_else(GraphError::item_not_found)?;
            Ok((m.mime.clone(), m.value_fault.clone()))
        })?;
        let content = |body: Body| {
            let mut response = (StatusCode::OK, body).into_response();
            set(&mut response, header::CONTENT_TYPE.as_str(), "text/plain");
            response
        };
        match fault {
            None => {
                drop(slot);
                Ok(content(Body::from(mime.as_ref().clone())))
            }
            Some(ValueFault::Fail { error, after }) => {
                tokio::select! {
                    () = tokio::time::sleep(after) => {}
                    () = self.shared.until_shutdown() => {}
                }
                drop(slot);
                Err(error)
            }
            Some(ValueFault::Stall { after_bytes }) => {
                let head = mime[..after_bytes.min(mime.len())].to_vec();
                let tail = mime[after_bytes.min(mime.len())..].to_vec();
                let mut release = self.shared.stall_release.subscribe();
                release.mark_unchanged();
                let shared = Arc::clone(self.shared);
                let stream = futures::stream::unfold(
                    (0u8, Some(slot), head, tail, release, shared),
                    |(step, slot, head, tail, mut release, shared)| async move {
                        match step {
                            0 => Some((
                                Ok::<Bytes, std::io::Error>(Bytes::from(head)),
                                (1, slot, Vec::new(), tail, release, shared),
                            )),
                            1 => {
                                tokio::select! {
                                    _ = release.changed() => {}
                                    () = shared.until_shutdown() => return None,
                                }
                                Some((
                                    Ok(Bytes::from(tail)),
                                    (2, slot, Vec::new(), Vec::new(), release, shared),
                                ))
                            }
                            _ => {
                                drop(slot);
                                None
                            }
                        }
                    },
                );
                Ok(content(Body::from_stream(stream)))
            }
            Some(ValueFault::Abort { after_bytes }) => {
                let head = mime[..after_bytes.min(mime.len())].to_vec();
                // The head goes out with the headers; the break follows once they are flushed,
                // so the client sees a 200 whose body ends early. The slot goes with the body.
                let stream = futures::stream::unfold(
                    (0u8, Some(slot), head),
                    |(step, slot, head)| async move {
                        match step {
                            0 => Some((Ok(Bytes::from(head)), (1, slot, Vec::new()))),
                            1 => {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                drop(slot);
                                Some((
                                    Err(std::io::Error::new(
                                        std::io::ErrorKind::ConnectionReset,
                                        "fake-graph: $value aborted",
                                    )),
                                    (2, None, Vec::new()),
                                ))
                            }
                            _ => None,
                        }
                    },
                );
                let mut response = content(Body::from_stream(stream));
                set(
                    &mut response,
                    header::CONTENT_LENGTH.as_str(),
                    &mime.len().to_string(),
                );
                Ok(response)
            }
        }
    }
}

/// `displayName eq 'X'` (the filter the folder lookup needs).
fn parse_display_name_filter(filter: &str) -> Result<String, GraphError> {
    let f = filter.trim();
    let rest = crate::representation::strip_prefix_ignore_case(f, "displayName")
        .map(str::trim_start)
        .and_then(|r| crate::representation::strip_prefix_ignore_case(r, "eq"))
        .map(str::trim)
        .ok_or_else(GraphError::unsupported_filter)?;
    let value = rest
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(GraphError::unsupported_filter)?;
    Ok(value.replace("''", "'"))
}

/// `receivedDateTime ge|gt {DateTimeOffset}`: the only `$filter` message delta supports.
fn parse_received_filter(filter: &str) -> Result<ReceivedFilter, GraphError> {
    let f = filter.trim();
    let rest = crate::representation::strip_prefix_ignore_case(f, "receivedDateTime")
        .map(str::trim_start)
        .ok_or_else(GraphError::unsupported_filter)?;
    let (inclusive, value) =
        if let Some(v) = crate::representation::strip_prefix_ignore_case(rest, "ge ") {
            (true, v)
        } else if let Some(v) = crate::representation::strip_prefix_ignore_case(rest, "gt ") {
            (false, v)
        } else {
            return Err(GraphError::unsupported_filter());
        };
    let at = time::parse_iso(value.trim().trim_matches('\''))
        .ok_or_else(GraphError::unsupported_filter)?;
    Ok(ReceivedFilter { inclusive, at })
}

fn header_end(mime: &[u8]) -> usize {
    mime.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| mime.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(mime.len())
}

fn extract_header(mime: &[u8], name: &str) -> Option<String> {
    let head = String::from_utf8_lossy(&mime[..header_end(mime)]).into_owned();
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

/// What Exchange does to MIME it sends: removes `strip` headers (and Bcc from the recipients'
/// copies), adds Date and From when missing, and a Message-ID when `add_message_id`.
fn prepare_outgoing(
    mime: &[u8],
    strip: &[String],
    from: &str,
    add_message_id: bool,
    drop_bcc: bool,
) -> Vec<u8> {
    let end = header_end(mime);
    let head = String::from_utf8_lossy(&mime[..end]).into_owned();
    let mut kept: Vec<String> = Vec::new();
    let mut skipping = false;
    let mut has_date = false;
    let mut has_from = false;
    for line in head.split_inclusive('\n') {
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if !continuation {
            let name = line.split(':').next().unwrap_or("").trim();
            skipping = strip.iter().any(|s| s.eq_ignore_ascii_case(name))
                || (drop_bcc && name.eq_ignore_ascii_case("Bcc"));
            has_date |= name.eq_ignore_ascii_case("Date");
            has_from |= name.eq_ignore_ascii_case("From");
        }
        if !skipping && !line.trim().is_empty() {
            kept.push(line.trim_end_matches(['\r', '\n']).to_owned());
        }
    }
    if add_message_id {
        kept.insert(
            0,
            format!("Message-ID: <{}@fake-graph.prod.outlook.test>", ids::uuid()),
        );
    }
    if !has_date {
        kept.push(format!("Date: {}", rfc2822(time::now_secs())));
    }
    if !has_from {
        kept.push(format!("From: {from}"));
    }
    let mut out = kept.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    let rest = &mime[end..];
    let body = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
        .unwrap_or(rest);
    out.extend_from_slice(body);
    out
}

fn rfc2822(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = time::iso(secs);
    let (y, m, d) = (&iso[0..4], &iso[5..7], &iso[8..10]);
    let month = m.parse::<usize>().unwrap_or(1).clamp(1, 12);
    let weekday = DAYS[secs.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{weekday}, {} {} {y} {} +0000",
        d.trim_start_matches('0'),
        MONTHS[month - 1],
        &iso[11..19]
    )
}

/// A MIME message from sendMail's JSON `message` (subject, body, recipients, custom
/// `internetMessageHeaders`).
fn mime_from_json(message: &Value, sender: &str) -> Vec<u8> {
    let list = |name: &str| -> String {
        message
            .get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.pointer("/emailAddress/address").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut lines = vec![format!("From: {sender}")];
    for (header, field) in [
        ("To", "toRecipients"),
        ("Cc", "ccRecipients"),
        ("Bcc", "bccRecipients"),
    ] {
        let value = list(field);
        if !value.is_empty() {
            lines.push(format!("{header}: {value}"));
        }
    }
    let subject = message.get("subject").and_then(Value::as_str).unwrap_or("");
    lines.push(format!("Subject: {subject}"));
    for h in message
        .get("internetMessageHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (
            h.get("name").and_then(Value::as_str),
            h.get("value").and_then(Value::as_str),
        ) {
            lines.push(format!("{n}: {v}"));
        }
    }
    let html = message
        .pointer("/body/contentType")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("html"));
    lines.push("MIME-Version: 1.0".to_owned());
    lines.push(format!(
        "Content-Type: text/{}; charset=utf-8",
        if html { "html" } else { "plain" }
    ));
    let content = message
        .pointer("/body/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{}\r\n\r\n{content}\r\n", lines.join("\r\n")).into_bytes()
}
