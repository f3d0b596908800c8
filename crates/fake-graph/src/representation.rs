//! The JSON of messages and mail folders, with `$select` and the extended-property
//! `$expand` (https://learn.microsoft.com/graph/api/resources/message,
//! https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-get).

use serde_json::{Map, Value, json};

use crate::error::GraphError;
use crate::store::{Address, ExtendedProperty, Folder, Mailbox, Message, PID_TAG_MESSAGE_SIZE};
use crate::time;

/// The properties of `microsoft.graph.message` this fake knows, in Graph's order. `$select`
/// of anything else is a 400, as Graph answers an unknown property.
pub(crate) const MESSAGE_PROPERTIES: &[&str] = &[
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
    "uniqueBody",
    "internetMessageHeaders",
];

/// The value for `message`, as Graph returns it: the id with the tag in lower-case hex
/// without leading zeros (`Long 0xe08`), the value as a string.
fn property_value(property: &ExtendedProperty, message: &Message) -> Option<Value> {
    match property {
        ExtendedProperty::Tag { type_name, tag }
            if *tag == PID_TAG_MESSAGE_SIZE
                && (type_name.eq_ignore_ascii_case("Long")
                    || type_name.eq_ignore_ascii_case("Integer")) =>
        {
            Some(json!({
                "id": format!("{} 0x{:x}", canonical_type(type_name), tag),
                "value": message.store_size.to_string(),
            }))
        }
        _ => None,
    }
}

fn canonical_type(type_name: &str) -> &'static str {
    if type_name.eq_ignore_ascii_case("Integer") {
        "Integer"
    } else {
        "Long"
    }
}

/// Parses `$expand`. Only `singleValueExtendedProperties($filter=id eq '…' [or id eq '…'])`
/// is supported; other navigation properties (attachments, …) are a 400 here.
pub(crate) fn parse_expand(expand: &str) -> Result<Vec<ExtendedProperty>, GraphError> {
    let expand = expand.trim();
    if expand.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = strip_prefix_ignore_case(expand, "singleValueExtendedProperties") else {
        let name = expand.split('(').next().unwrap_or(expand);
        return Err(GraphError::unknown_property(
            name,
            "microsoft.graph.message",
        ));
    };
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            GraphError::bad_request(
                "singleValueExtendedProperties must be expanded with a $filter on id.",
            )
        })?;
    let filter = strip_prefix_ignore_case(inner.trim(), "$filter=")
        .ok_or_else(|| GraphError::bad_request("Expected $filter=id eq '...' in $expand."))?;
    let mut properties = Vec::new();
    for clause in split_or(filter) {
        let clause = clause
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        let value = strip_prefix_ignore_case(clause, "id")
            .map(str::trim_start)
            .and_then(|c| strip_prefix_ignore_case(c, "eq"))
            .map(str::trim)
            .and_then(|v| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .ok_or_else(GraphError::unsupported_filter)?;
        properties.push(ExtendedProperty::parse(value));
    }
    Ok(properties)
}

fn split_or(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = filter;
    while let Some(pos) = rest.to_ascii_lowercase().find(" or ") {
        parts.push(&rest[..pos]);
        rest = &rest[pos + 4..];
    }
    parts.push(rest);
    parts
}

pub(crate) fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    if text.len() >= prefix.len()
        && text.is_char_boundary(prefix.len())
        && text[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&text[prefix.len()..])
    } else {
        None
    }
}

/// Parses `$select` against the message properties (case-insensitive, as Graph matches
/// them); returns the canonical names.
pub(crate) fn parse_select(select: &str) -> Result<Vec<String>, GraphError> {
    let mut names = Vec::new();
    for name in select.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.eq_ignore_ascii_case("id") {
            continue;
        }
        match MESSAGE_PROPERTIES
            .iter()
            .find(|p| p.eq_ignore_ascii_case(name))
        {
            Some(p) => names.push((*p).to_owned()),
            None => {
                return Err(GraphError::unknown_property(
                    name,
                    "microsoft.graph.message",
                ));
            }
        }
    }
    Ok(names)
}

fn email(address: &Address) -> Value {
    json!({"emailAddress": {"name": address.name, "address": address.address}})
}

fn emails(list: &[Address]) -> Value {
    Value::Array(list.iter().map(email).collect())
}

fn property(mailbox: &Mailbox, m: &Message, name: &str, immutable: bool) -> Value {
    let p = &m.parsed;
    match name {
        "createdDateTime" => json!(time::iso(m.created)),
        "lastModifiedDateTime" => json!(time::iso(m.last_modified)),
        "changeKey" => json!(m.change_key),
        "categories" => json!(m.categories),
        "receivedDateTime" => json!(time::iso(m.received)),
        "sentDateTime" => json!(time::iso(p.sent.unwrap_or(m.received))),
        "hasAttachments" => json!(p.has_attachments),
        "internetMessageId" => json!(p.internet_message_id),
        "subject" => json!(p.subject),
        "bodyPreview" => json!(p.body_preview),
        "importance" => json!(m.importance),
        "parentFolderId" => json!(m.folder_id),
        "conversationId" => json!(format!(
            "AAQkAG{}",
            &m.immutable_id[6..30.min(m.immutable_id.len())]
        )),
        "isDeliveryReceiptRequested" => json!(false),
        "isReadReceiptRequested" => json!(false),
        "isRead" => json!(m.is_read),
        "isDraft" => json!(m.is_draft),
        "webLink" => json!(format!(
            "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel=ReadMessageItem",
            m.id(immutable)
        )),
        "inferenceClassification" => json!("focused"),
        "body" | "uniqueBody" => json!({"contentType": "html", "content": p.body_html}),
        "sender" => p.sender.as_ref().map_or(Value::Null, email),
        "from" => p.from.as_ref().map_or(Value::Null, email),
        "toRecipients" => emails(&p.to),
        "ccRecipients" => emails(&p.cc),
        // Recipients see no Bcc; the sender's copy keeps it.
        "bccRecipients" => {
            if p.from
                .as_ref()
                .is_some_and(|f| mailbox.is_named(&f.address))
            {
                emails(&p.bcc)
            } else {
                json!([])
            }
        }
        "replyTo" => emails(&p.reply_to),
        "flag" => json!({"flagStatus": m.flag_status}),
        "internetMessageHeaders" => headers_json(&m.mime),
        _ => Value::Null,
    }
}

fn headers_json(mime: &[u8]) -> Value {
    let Some(message) = mail_parser::MessageParser::default().parse(mime) else {
        return json!([]);
    };
    let raw = message.raw_message();
    let headers: Vec<Value> = message
        .headers()
        .iter()
        .map(|h| {
            let value = raw
                .get(h.offset_start() as usize..h.offset_end() as usize)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .trim()
                        .replace("\r\n", "")
                        .replace('\n', "")
                })
                .unwrap_or_default();
            json!({"name": h.name(), "value": value})
        })
        .collect();
    Value::Array(headers)
}

/// A message as JSON. `select` None: the default property set (everything except
/// `uniqueBody` and `internetMessageHeaders`, which Graph returns only when selected).
pub(crate) fn message_json(
    mailbox: &Mailbox,
    m: &Message,
    select: Option<&[String]>,
    expand: &[ExtendedProperty],
    immutable: bool,
) -> Value {
    let mut object = Map::new();
    object.insert(
        "@odata.etag".to_owned(),
        json!(format!("W/\"{}\"", m.change_key)),
    );
    object.insert("id".to_owned(), json!(m.id(immutable)));
    let default: Vec<String>;
    let names: &[String] = match select {
        Some(names) => names,
        None => {
            default = MESSAGE_PROPERTIES
                .iter()
                .filter(|p| !matches!(**p, "uniqueBody" | "internetMessageHeaders"))
                .map(|p| (*p).to_owned())
                .collect();
            &default
        }
    };
    for name in names {
        object.insert(name.clone(), property(mailbox, m, name, immutable));
    }
    if !expand.is_empty() {
        let values: Vec<Value> = expand.iter().filter_map(|p| property_value(p, m)).collect();
        // Graph omits the collection when no requested property exists on the item.
        if !values.is_empty() {
            object.insert(
                "singleValueExtendedProperties".to_owned(),
                Value::Array(values),
            );
        }
    }
    Value::Object(object)
}

/// A mail folder as JSON.
pub(crate) fn folder_json(mailbox: &Mailbox, folder: &Folder) -> Value {
    let in_folder = mailbox
        .messages
        .values()
        .filter(|m| m.folder_id == folder.id);
    let (total, unread, size) = in_folder.fold((0u64, 0u64, 0u64), |(t, u, s), m| {
        (t + 1, u + u64::from(!m.is_read), s + m.store_size)
    });
    json!({
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": folder.parent_id,
        "childFolderCount": mailbox.child_folders(&folder.id, true).len(),
        "unreadItemCount": unread,
        "totalItemCount": total,
        "sizeInBytes": size,
        "isHidden": folder.is_hidden,
    })
}

/// `destinationId` of a move request.
pub(crate) fn destination_of(body: &axum::body::Bytes) -> Result<String, GraphError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?;
    request
        .get("destinationId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| GraphError::bad_request("The parameter 'destinationId' is required."))
}
