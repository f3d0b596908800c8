//! Drafts and upload sessions, for messages above Graph's ~4 MB request limit:
//! `POST …/messages` with base64 MIME (https://learn.microsoft.com/graph/api/user-post-messages,
//! "Create a message in MIME format": 201 with the draft), `POST
//! …/messages/{id}/attachments/createUploadSession`
//! (https://learn.microsoft.com/graph/api/attachment-createuploadsession: 201 with an
//! uploadSession), `PUT {uploadUrl}` with `Content-Range` (https://learn.microsoft.com/graph/outlook-large-attachments:
//! 200 with `nextExpectedRanges: ["{start}"]` until the last range, then 201 with a `Location`
//! naming the attachment), and `POST …/messages/{id}/send`
//! (https://learn.microsoft.com/graph/api/message-send: 202).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::error::GraphError;
use crate::handlers::Outgoing;
use crate::limits::lock;
use crate::server::{Here, error_response, json_response, set};
use crate::store::{Attachment, ImapLoc, Parsed};
use crate::{DeliverOptions, Shared, ids, time};

/// How long an upload session lives without a fragment (Graph says each fragment extends it; the
/// length is not documented: 15 minutes here).
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The largest attachment an upload session takes (150 MB, the page's upper bound).
const MAX_ATTACHMENT: u64 = 150 * 1024 * 1024;
/// The smallest (3 MB, read as 3 × 2^20 bytes): smaller files go by `POST …/attachments`.
const MIN_UPLOAD_SESSION: u64 = 3 * 1024 * 1024;

/// One upload session.
#[derive(Debug)]
pub(crate) struct Upload {
    upn: String,
    message_key: u64,
    message_id: String,
    name: String,
    content_type: String,
    size: u64,
    received: Vec<u8>,
    expires: SystemTime,
}

/// The base64 MIME of a `text/plain` body (sendMail and draft creation take the same).
pub(crate) fn mime_of(body: &Bytes) -> Result<Vec<u8>, GraphError> {
    let text: String = String::from_utf8_lossy(body).split_whitespace().collect();
    let mime = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| GraphError::mime_not_base64())?;
    if mime.is_empty() {
        return Err(GraphError::mime_not_base64());
    }
    Ok(mime)
}

impl Here<'_> {
    /// `POST …/messages` (or `…/mailFolders/{id}/messages`) with `Content-Type: text/plain`
    /// and base64 MIME: a draft in Drafts (or that folder), 201 with the message.
    pub(crate) fn create_draft(
        &self,
        folder: Option<&str>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response, GraphError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !content_type.starts_with("text/plain") {
            return Err(GraphError::new(
                415,
                "UnsupportedMediaType",
                "This fake creates drafts from MIME only: Content-Type: text/plain with the base64 MIME.",
            ));
        }
        let mut mime = mime_of(body)?;
        if self.shared.config.own_message_ids == crate::OwnMessageIds::AtDraftCreation {
            mime = crate::send::with_exchange_message_id(&mime);
        }
        let key = {
            let mut store = self.shared.store();
            let mailbox = store.mailbox_for_request(self.upn)?;
            let folder_id = mailbox.folder(folder.unwrap_or("drafts"))?.id.clone();
            let ids = mailbox.deliver(
                &folder_id,
                mime,
                &DeliverOptions {
                    is_read: true,
                    ..DeliverOptions::default()
                },
            );
            let key = mailbox.message_key(&ids.immutable_id)?;
            if let Some(m) = mailbox.messages.get_mut(&key) {
                m.is_draft = true;
            }
            key
        };
        self.message_by_key(StatusCode::CREATED, key)
    }

    /// `POST …/messages/{id}/attachments/createUploadSession` `{"AttachmentItem":
    /// {"attachmentType": "file", "name", "size", "contentType"?}}`: 201 with the session.
    pub(crate) fn create_upload_session(
        &self,
        id: &str,
        body: &Bytes,
    ) -> Result<Response, GraphError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
        let item = request
            .get("AttachmentItem")
            .or_else(|| request.get("attachmentItem"))
            .ok_or_else(|| {
                GraphError::bad_request("The parameter 'AttachmentItem' is required.")
            })?;
        match item.get("attachmentType").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("file") => {}
            _ => {
                return Err(GraphError::bad_request(
                    "AttachmentItem.attachmentType must be 'file' (the only type upload sessions take).",
                ));
            }
        }
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("AttachmentItem.name is required."))?
            .to_owned();
        let size = item
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| GraphError::bad_request("AttachmentItem.size is required."))?;
        if size < MIN_UPLOAD_SESSION {
            return Err(GraphError::attachment_below_minimum());
        }
        if size > MAX_ATTACHMENT {
            return Err(GraphError::bad_request(format!(
                "AttachmentItem.size must be at most {MAX_ATTACHMENT} bytes."
            )));
        }
        let content_type = item
            .get("contentType")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_owned();
        let (key, message_id) = self.with_draft(id)?;
        let token = ids::state_token();
        let expires = SystemTime::now() + SESSION_LIFETIME;
        lock(&self.shared.uploads).insert(
            token.clone(),
            Upload {
                upn: self.upn.to_owned(),
                message_key: key,
                message_id,
                name,
                content_type,
                size,
                received: Vec::new(),
                expires,
            },
        );
        let body = json!({
            "@odata.context": self.context("microsoft.graph.uploadSession"),
            "uploadUrl": format!("{}/_uploads/{token}", self.shared.base_url),
            "expirationDateTime": iso_of(expires),
            "nextExpectedRanges": ["0-"],
        });
        Ok(json_response(StatusCode::CREATED, &body, &[]))
    }

    /// `POST …/messages/{id}/attachments` with a `fileAttachment` (`name`, `contentType`,
    /// `contentBytes` in base64; https://learn.microsoft.com/graph/api/message-post-attachments):
    /// 201 with the attachment as the page shows it (`contentBytes` echoed).
    pub(crate) fn add_attachment(&self, id: &str, body: &Bytes) -> Result<Response, GraphError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
        match request.get("@odata.type").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("#microsoft.graph.fileAttachment") => {}
            _ => {
                return Err(GraphError::bad_request(
                    "This fake adds file attachments only: @odata.type must be #microsoft.graph.fileAttachment.",
                ));
            }
        }
        let name = request
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("The property 'name' is required."))?
            .to_owned();
        let encoded = request
            .get("contentBytes")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("The property 'contentBytes' is required."))?;
        let content = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                GraphError::bad_request("The property 'contentBytes' is not a base64 string.")
            })?;
        let content_type = request
            .get("contentType")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_owned();
        let (key, _) = self.with_draft(id)?;
        let attachment_id = format!("AAMkAG{}=", ids::state_token());
        let size = content.len();
        {
            let mut store = self.shared.store();
            let mailbox = store.mailbox_for_request(self.upn)?;
            let m = mailbox
                .messages
                .get_mut(&key)
                .ok_or_else(GraphError::item_not_found)?;
            m.attachments.push(Attachment {
                id: attachment_id.clone(),
                name: name.clone(),
                content_type: content_type.clone(),
                content: Arc::new(content),
            });
            m.parsed.has_attachments = true;
            mailbox.touch(key);
        }
        let body = json!({
            "@odata.context": self.context("microsoft.graph.fileAttachment"),
            "@odata.type": "#microsoft.graph.fileAttachment",
            "id": attachment_id,
            "lastModifiedDateTime": iso_of(SystemTime::now()),
            "name": name,
            "contentType": content_type,
            "size": size,
            "isInline": request.get("isInline").and_then(Value::as_bool).unwrap_or(false),
            "contentId": request.get("contentId").cloned().unwrap_or(Value::Null),
            "contentLocation": null,
            "contentBytes": encoded,
        });
        Ok(json_response(StatusCode::CREATED, &body, &[]))
    }

    /// The key and id of a draft; 400 for a message that is not one.
    fn with_draft(&self, id: &str) -> Result<(u64, String), GraphError> {
        let mut store = self.shared.store();
        let mailbox = store.mailbox_for_request(self.upn)?;
        let key = mailbox.message_key(id)?;
        let m = mailbox
            .messages
            .get(&key)
            .ok_or_else(GraphError::item_not_found)?;
        if !m.is_draft {
            return Err(GraphError::new(
                400,
                "ErrorInvalidOperation",
                "The item is not a draft: only drafts can take attachments or be sent.",
            ));
        }
        Ok((key, id.to_owned()))
    }

    /// What `POST …/messages/{id}/send` sends: the draft's MIME with its uploaded attachments.
    pub(crate) fn draft_outgoing(&self, id: &str) -> Result<(u64, Outgoing), GraphError> {
        let (key, _) = self.with_draft(id)?;
        let mime = {
            let mut store = self.shared.store();
            let mailbox = store.mailbox_for_request(self.upn)?;
            let m = mailbox
                .messages
                .get(&key)
                .ok_or_else(GraphError::item_not_found)?;
            with_attachments(&m.mime, &m.attachments)
        };
        Ok((key, self.outgoing(mime, true)?))
    }

    /// Files a sent draft in Sent Items as the sender's copy (`sent`): the same item, so its
    /// immutable id stays (https://learn.microsoft.com/graph/outlook-immutable-id, "Immutable
    /// ID with sending mail": create the draft, send it, then get the Sent Items copy by the
    /// draft's id); a new REST id, as on every move. `imap` is where the Dovecot backend
    /// appended the copy (the model then keeps only its header block).
    pub(crate) fn file_sent_draft(
        &self,
        key: u64,
        sent: Vec<u8>,
        imap: Option<ImapLoc>,
    ) -> Result<(), GraphError> {
        let mut store = self.shared.store();
        let mailbox = store.mailbox_for_request(self.upn)?;
        let sent_items = mailbox.folder("sentitems")?.id.clone();
        if let Some(m) = mailbox.messages.get_mut(&key) {
            m.parsed = Parsed::of(&sent);
            m.store_size = sent.len() as u64 + crate::STORE_SIZE_OVERHEAD;
            m.mime = Arc::new(match imap {
                Some(_) => crate::dovecot::header_block(&sent),
                None => sent,
            });
            m.imap = imap;
            m.is_draft = false;
            m.attachments.clear();
        }
        mailbox.move_message(key, &sent_items);
        Ok(())
    }
}

fn iso_of(at: SystemTime) -> String {
    time::iso(time::unix_secs(at))
}

/// The MIME with the attachments added as parts of a multipart/mixed (the draft's own content
/// its first part).
fn with_attachments(mime: &[u8], attachments: &[Attachment]) -> Vec<u8> {
    if attachments.is_empty() {
        return mime.to_vec();
    }
    let end = crate::send::header_end(mime);
    let head = String::from_utf8_lossy(&mime[..end]).into_owned();
    let rest = &mime[end..];
    let body = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
        .unwrap_or(rest);
    let mut top = Vec::new();
    let mut part = Vec::new();
    let mut content = false;
    for line in head.split_inclusive('\n') {
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if !continuation {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            content = name.starts_with("content-") || name == "mime-version";
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            continue;
        }
        if content {
            if !line.to_ascii_lowercase().starts_with("mime-version") {
                part.push(line.to_owned());
            }
        } else {
            top.push(line.to_owned());
        }
    }
    if part.is_empty() {
        part.push("Content-Type: text/plain; charset=us-ascii".to_owned());
    }
    let boundary = format!("=_fake-graph_{}", ids::state_token());
    let mut out = top.join("\r\n").into_bytes();
    out.extend_from_slice(
        format!(
            "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n{}\r\n\r\n",
            part.join("\r\n")
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    for a in attachments {
        let encoded = base64::engine::general_purpose::STANDARD.encode(a.content.as_slice());
        let mut lines = String::new();
        for chunk in encoded.as_bytes().chunks(76) {
            lines.push_str(&String::from_utf8_lossy(chunk));
            lines.push_str("\r\n");
        }
        out.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: {}; name=\"{}\"\r\nContent-Disposition: attachment; filename=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{lines}",
                a.content_type, a.name, a.name
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// `Content-Range: bytes {start}-{end}/{total}`.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let range = value.strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    Some((
        start.trim().parse().ok()?,
        end.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

/// `PUT {uploadUrl}`: the URL is pre-authenticated (the page: no Authorization header is
/// needed); fragments must come in order (`nextExpectedRanges` is a single `"{start}"` for
/// Outlook attachments).
pub(crate) async fn put_fragment(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = ids::uuid();
    let fail = |e: GraphError| error_response(&e, &request_id, &request_id);
    let mut uploads = lock(&shared.uploads);
    let Some(upload) = uploads.get_mut(&token) else {
        return fail(GraphError::new(
            404,
            "ErrorItemNotFound",
            "The upload session does not exist or has expired.",
        ));
    };
    if upload.expires < SystemTime::now() {
        uploads.remove(&token);
        return fail(GraphError::new(
            404,
            "ErrorItemNotFound",
            "The upload session does not exist or has expired.",
        ));
    }
    if body.len() > crate::server::MAX_REQUEST_BYTES {
        return fail(GraphError::request_too_large());
    }
    let Some((start, end, total)) = content_range(&headers) else {
        return fail(GraphError::bad_request(
            "Content-Range must be 'bytes {start}-{end}/{total}'.",
        ));
    };
    let have = upload.received.len() as u64;
    if total != upload.size
        || start != have
        || end < start
        || end >= total
        || end - start + 1 != body.len() as u64
    {
        let mut response = fail(GraphError::new(
            416,
            "InvalidRange",
            format!(
                "The range {start}-{end}/{total} ({} bytes sent) does not continue the upload: next expected is {have} of {}.",
                body.len(),
                upload.size
            ),
        ));
        set(&mut response, "request-id", &request_id);
        return response;
    }
    upload.received.extend_from_slice(&body);
    upload.expires = SystemTime::now() + SESSION_LIFETIME;
    if (upload.received.len() as u64) < upload.size {
        let body = json!({
            "@odata.context": format!("{}/v1.0/$metadata#microsoft.graph.uploadSession", shared.base_url),
            "expirationDateTime": iso_of(upload.expires),
            "nextExpectedRanges": [upload.received.len().to_string()],
        });
        return json_response(StatusCode::OK, &body, &[]);
    }
    let upload = uploads.remove(&token).expect("present");
    drop(uploads);
    let attachment_id = format!("AAMkAG{}=", ids::state_token());
    {
        let mut store = shared.store();
        let Some(mailbox) = store.mailbox_mut(&upload.upn) else {
            return fail(GraphError::item_not_found());
        };
        let Some(m) = mailbox.messages.get_mut(&upload.message_key) else {
            return fail(GraphError::item_not_found());
        };
        m.attachments.push(Attachment {
            id: attachment_id.clone(),
            name: upload.name,
            content_type: upload.content_type,
            content: Arc::new(upload.received),
        });
        m.parsed.has_attachments = true;
        mailbox.touch(upload.message_key);
    }
    let mut response = StatusCode::CREATED.into_response();
    set(
        &mut response,
        header::LOCATION.as_str(),
        &format!(
            "{}/v1.0/users('{}')/messages('{}')/attachments('{attachment_id}')",
            shared.base_url, upload.upn, upload.message_id
        ),
    );
    set(&mut response, "request-id", &request_id);
    response
}
