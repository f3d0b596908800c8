//! The handlers of Graph's mail routes, one method per operation, each against one
//! authorised mailbox: folders, message lists, delta, GET/PATCH/DELETE, move,
//! permanentDelete, sendMail and `$value` (streamed, with its faults).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::error::GraphError;
use crate::limits::Slot;
use crate::representation::{folder_json, message_json, parse_expand, parse_select};
use crate::send;
use crate::server::{Here, json_response, set};
use crate::store::{ChangeType, DeltaItem, DeltaOptions, Mailbox, ReceivedFilter, SyncState};
use crate::{DeliverOptions, ValueFault, time};

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

    pub(crate) fn context(&self, what: &str) -> String {
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

    /// One page of a `$top`/`$skip` collection: its values, and an `@odata.nextLink` with the
    /// same query and the next `$skip` while `more` remain.
    fn page(
        &self,
        collection: &str,
        tail: &str,
        values: Vec<Value>,
        more: bool,
        skip: usize,
        page_size: usize,
    ) -> Response {
        let mut body = json!({
            "@odata.context": self.context(&format!("users('{}')/{collection}", self.upn)),
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
            body["@odata.nextLink"] = json!(format!("{}?{qs}", self.url(tail)));
        }
        json_response(StatusCode::OK, &body, &self.prefer.applied(Some(page_size)))
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

    pub(crate) fn list_folders(&self, parent: Option<&str>) -> Result<Response, GraphError> {
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
        Ok(self.page("mailFolders", &tail, values, more, skip, page_size))
    }

    pub(crate) fn get_folder(&self, id: &str) -> Result<Response, GraphError> {
        let value = self.with_mailbox(|mailbox| {
            let folder = mailbox.folder(id)?.clone();
            Ok(folder_json(mailbox, &folder))
        })?;
        let mut body = value;
        body["@odata.context"] =
            json!(self.context(&format!("users('{}')/mailFolders/$entity", self.upn)));
        Ok(json_response(StatusCode::OK, &body, &[]))
    }

    /// The parent folder's id, the name and `isHidden` of a folder-creation request.
    pub(crate) fn folder_request(
        &self,
        parent: Option<&str>,
        body: &Bytes,
    ) -> Result<(String, String, bool), GraphError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
        let name = request
            .get("displayName")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("The property 'displayName' is required."))?
            .to_owned();
        let hidden = request
            .get("isHidden")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let parent_id = self.with_mailbox(|mailbox| {
            let parent_id = match parent {
                Some(p) => mailbox.folder(p)?.id.clone(),
                None => mailbox.root_id(),
            };
            // Checked before the backend creates anything.
            if mailbox
                .folders
                .iter()
                .any(|f| f.parent_id == parent_id && f.display_name.eq_ignore_ascii_case(&name))
            {
                return Err(GraphError::folder_exists());
            }
            Ok(parent_id)
        })?;
        Ok((parent_id, name, hidden))
    }

    pub(crate) fn create_folder(
        &self,
        parent: Option<&str>,
        body: &Bytes,
    ) -> Result<Response, GraphError> {
        let (parent_id, name, hidden) = self.folder_request(parent, body)?;
        self.create_folder_with_path(&parent_id, &name, hidden, None)
    }

    /// Creates the model folder (with the IMAP folder behind it, if any) and answers 201.
    pub(crate) fn create_folder_with_path(
        &self,
        parent_id: &str,
        name: &str,
        hidden: bool,
        imap_path: Option<String>,
    ) -> Result<Response, GraphError> {
        let value = self.with_mailbox(|mailbox| {
            let mut folder = mailbox.create_folder(parent_id, name, hidden)?;
            if let Some(f) = mailbox.folders.iter_mut().find(|f| f.id == folder.id) {
                f.imap_path = imap_path;
                folder = f.clone();
            }
            Ok(folder_json(mailbox, &folder))
        })?;
        let mut body = value;
        body["@odata.context"] =
            json!(self.context(&format!("users('{}')/mailFolders/$entity", self.upn)));
        Ok(json_response(StatusCode::CREATED, &body, &[]))
    }

    fn select_expand(
        &self,
    ) -> Result<(Option<Vec<String>>, Vec<crate::store::ExtendedProperty>), GraphError> {
        let select = self.query.get("$select").map(parse_select).transpose()?;
        let expand = self
            .query
            .get("$expand")
            .map(parse_expand)
            .transpose()?
            .unwrap_or_default();
        Ok((select, expand))
    }

    pub(crate) fn list_messages(&self, folder: Option<&str>) -> Result<Response, GraphError> {
        let (top, skip) = self.top_skip()?;
        let (select, expand) = self.select_expand()?;
        // `internetMessageId eq '<…>'` is the one `$filter` implemented (a client finding its
        // sent message); `$orderby` and `$search` are not.
        let id_filter = self
            .query
            .get("$filter")
            .map(|f| parse_eq_filter(f, "internetMessageId"))
            .transpose()
            .map_err(|_| {
                GraphError::bad_request(
                    "$filter on message lists is implemented by this fake only as internetMessageId eq '<id>'; use delta.",
                )
            })?;
        if self.query.get("$orderby").is_some() || self.query.get("$search").is_some() {
            return Err(GraphError::bad_request(
                "$orderby and $search on message lists are not implemented by this fake; use delta.",
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
                .filter(|m| {
                    id_filter.as_ref().is_none_or(|id| {
                        m.parsed.internet_message_id.as_deref() == Some(id.as_str())
                    })
                })
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
        Ok(self.page("messages", &tail, values, more, skip, page_size))
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

    pub(crate) fn delta(&self, folder: &str) -> Result<Response, GraphError> {
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

    /// A message by its model key, with this status.
    pub(crate) fn message_by_key(
        &self,
        status: StatusCode,
        key: u64,
    ) -> Result<Response, GraphError> {
        self.message_response(status, "", Some(key))
    }

    pub(crate) fn get_message(&self, id: &str) -> Result<Response, GraphError> {
        self.message_response(StatusCode::OK, id, None)
    }

    pub(crate) fn patch_message(&self, id: &str, body: &Bytes) -> Result<Response, GraphError> {
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

    /// Where DELETE puts a message: Deleted Items, or from there the hidden Recoverable Items.
    pub(crate) fn delete_target(&self, id: &str) -> Result<String, GraphError> {
        self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let deleted_items = mailbox.folder("deleteditems")?.id.clone();
            let current = mailbox
                .messages
                .get(&key)
                .map(|m| m.folder_id.clone())
                .unwrap_or_default();
            if current == deleted_items {
                Ok(mailbox
                    .folder(crate::store::RECOVERABLE_DELETIONS)?
                    .id
                    .clone())
            } else {
                Ok(deleted_items)
            }
        })
    }

    pub(crate) fn delete_message(&self, id: &str) -> Result<Response, GraphError> {
        let target = self.delete_target(id)?;
        self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            mailbox.move_message(key, &target);
            Ok(())
        })?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    pub(crate) fn permanent_delete(&self, id: &str) -> Result<Response, GraphError> {
        self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            mailbox.purge(key);
            Ok(())
        })?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    pub(crate) fn move_message(&self, id: &str, body: &Bytes) -> Result<Response, GraphError> {
        let destination = crate::representation::destination_of(body)?;
        let key = self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let destination = mailbox.folder(&destination)?.id.clone();
            mailbox.move_message(key, &destination);
            Ok(key)
        })?;
        self.message_response(StatusCode::CREATED, id, Some(key))
    }

    /// Checks a sendMail request and prepares what Exchange would send and keep.
    pub(crate) fn prepare_send(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Outgoing, GraphError> {
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
            (send::mime_from_json(message, self.upn), save)
        } else {
            return Err(GraphError::new(
                415,
                "UnsupportedMediaType",
                "Use application/json for a JSON message or text/plain for MIME content.",
            ));
        };
        self.outgoing(mime, save_to_sent_items)
    }

    /// What Exchange sends and keeps for `mime` from this mailbox.
    pub(crate) fn outgoing(
        &self,
        mime: Vec<u8>,
        save_to_sent_items: bool,
    ) -> Result<Outgoing, GraphError> {
        let config = &self.shared.config;
        let mut store = self.shared.store();
        let sender = store.mailbox_for_request(self.upn)?;
        let strip = send::Strip {
            headers: &config.strip_headers_on_send,
            unknown_x_headers: config.strip_unknown_x_headers,
        };
        let sender_addresses = [sender.upn.clone(), sender.mail.clone()];
        let mime = if config.own_message_ids == crate::OwnMessageIds::AtSend {
            send::with_exchange_message_id(&mime)
        } else {
            mime
        };
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
        let sent = send::prepare_outgoing(
            &mime,
            &strip,
            &from_header,
            parsed.internet_message_id.is_none(),
            false,
        );
        let delivered = send::prepare_outgoing(&mime, &strip, &from_header, false, true);
        // The Message-ID Exchange assigned (if the MIME had none) is the same on every copy.
        let delivered = match send::extract_header(&sent, "Message-ID") {
            Some(id) if parsed.internet_message_id.is_none() => {
                let mut with_id = format!("Message-ID: {id}\r\n").into_bytes();
                with_id.extend_from_slice(&delivered);
                with_id
            }
            _ => delivered,
        };
        let mut seen = Vec::new();
        let recipients = recipients
            .into_iter()
            .filter(|a| {
                let lower = a.to_ascii_lowercase();
                let first = !seen.contains(&lower);
                seen.push(lower);
                first
            })
            .collect();
        Ok(Outgoing {
            login: sender.upn.clone(),
            from: sender.mail.clone(),
            recipients,
            sent,
            delivered,
            save_to_sent_items,
        })
    }

    /// sendMail (or a draft's send, `draft` its key) on the in-memory store: the copies go to
    /// the users of the fake; a sent draft becomes the Sent Items copy.
    pub(crate) fn send_in_memory(
        &self,
        outgoing: Outgoing,
        draft: Option<u64>,
    ) -> Result<Response, GraphError> {
        if let Some(key) = draft {
            self.file_sent_draft(key, outgoing.sent.clone(), None)?;
        }
        let mut store = self.shared.store();
        let sender = store.mailbox_for_request(self.upn)?;
        if outgoing.save_to_sent_items && draft.is_none() {
            let sent_items = sender.folder("sentitems")?.id.clone();
            sender.deliver(
                &sent_items,
                outgoing.sent,
                &DeliverOptions {
                    is_read: true,
                    ..DeliverOptions::default()
                },
            );
        }
        for address in outgoing.recipients {
            if let Some(mailbox) = store.mailbox_mut(&address).filter(|m| m.mailbox_enabled) {
                let inbox = mailbox.folder("inbox")?.id.clone();
                mailbox.deliver(
                    &inbox,
                    outgoing.delivered.clone(),
                    &DeliverOptions::default(),
                );
            }
        }
        Ok(StatusCode::ACCEPTED.into_response())
    }

    /// sendMail (or a draft's send, `draft` its key) on the Dovecot backend: the recipients'
    /// copy to Postfix, the sender's into Sent Items by APPEND (then into the model by a sync;
    /// a sent draft's item takes the appended message, keeping its immutable id).
    pub(crate) async fn send_through_dovecot(
        &self,
        conn: &mut crate::dovecot::Conn,
        outgoing: Outgoing,
        draft: Option<u64>,
    ) -> Result<Response, GraphError> {
        let dovecot = self.shared.dovecot.as_ref().expect("Dovecot backend");
        crate::dovecot::submit(
            &dovecot.config,
            &outgoing.login,
            &outgoing.from,
            &outgoing.recipients,
            &outgoing.delivered,
        )
        .await?;
        if outgoing.save_to_sent_items {
            let path =
                self.with_mailbox(|mailbox| Ok(mailbox.folder("sentitems")?.imap_path.clone()))?;
            if let Some(path) = path {
                let at =
                    crate::dovecot::append(self.shared, conn, &path, &outgoing.sent, true).await?;
                if let Some(key) = draft {
                    self.file_sent_draft(key, outgoing.sent.clone(), at)?;
                }
                crate::dovecot::sync(self.shared, conn).await?;
            }
        } else if let Some(key) = draft {
            self.file_sent_draft(key, outgoing.sent.clone(), None)?;
        }
        Ok(StatusCode::ACCEPTED.into_response())
    }

    /// `$value`: the model's MIME, or `mime` (the Dovecot backend's `BODY.PEEK[]`).
    pub(crate) async fn value(
        &self,
        id: &str,
        mime: Option<Arc<Vec<u8>>>,
        slot: Slot,
    ) -> Result<Response, GraphError> {
        let (model_mime, fault) = self.with_mailbox(|mailbox| {
            let key = mailbox.message_key(id)?;
            let m = mailbox
                .messages
                .get(&key)
                .ok_or_else(GraphError::item_not_found)?;
            Ok((m.mime.clone(), m.value_fault.clone()))
        })?;
        let mime = mime.unwrap_or(model_mime);
        if let Some(latency) = self.shared.config.value_latency {
            // The request's concurrency slot is held meanwhile, as for a slow real download.
            tokio::select! {
                () = tokio::time::sleep(latency) => {}
                () = self.shared.until_shutdown() => {}
            }
        }
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

/// What a sendMail request sends, prepared as Exchange would.
pub(crate) struct Outgoing {
    /// The sender's login (userPrincipalName) and address.
    pub login: String,
    pub from: String,
    /// To, Cc and Bcc addresses, each once.
    pub recipients: Vec<String>,
    /// The sender's copy (keeps Bcc).
    pub sent: Vec<u8>,
    /// The recipients' copy (no Bcc).
    pub delivered: Vec<u8>,
    pub save_to_sent_items: bool,
}

/// `displayName eq 'X'` (the filter the folder lookup needs).
fn parse_display_name_filter(filter: &str) -> Result<String, GraphError> {
    parse_eq_filter(filter, "displayName")
}

/// `{property} eq 'X'`, the value with OData's doubled quotes undone.
fn parse_eq_filter(filter: &str, property: &str) -> Result<String, GraphError> {
    let f = filter.trim();
    let rest = crate::representation::strip_prefix_ignore_case(f, property)
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
