//! Sending through a draft, as the immutable-id page says
//! (https://learn.microsoft.com/graph/outlook-immutable-id, "Immutable ID with sending mail"):
//! the message (its MIME, without its large attachments) becomes a draft (`POST …/messages`),
//! whose answer names its immutable id and the `internetMessageId` Exchange gave it; each large
//! attachment is added to it — by one `POST …/attachments` under 3 MB, by an upload session of
//! `PUT` ranges from 3 MB to 150 MB (https://learn.microsoft.com/graph/outlook-large-attachments)
//! — and the draft is sent (`POST …/send`, 202). The same id then finds the copy in Sent Items,
//! with the Message-ID the message went with. `reply::graph` decides what to do with each step;
//! this module only makes the requests.

use base64::Engine as _;
use reqwest::Method;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::client::{Payload, encode_segment};
use super::error::GraphError;
use super::source::{GraphMailbox, encode_query};

/// Attachments from this size on go by an upload session; smaller ones by one POST (Graph
/// refuses upload sessions below 3 MB with `ErrorAttachmentSizeShouldNotBeLessThanMinimumSize`).
pub const UPLOAD_SESSION_FROM: usize = 3 * 1024 * 1024;
/// The largest attachment Outlook takes (150 MB).
pub const MAX_ATTACHMENT: usize = 150 * 1024 * 1024;
/// The bytes of one `PUT` (the page: up to 4 MB each time; 12 × 320 KiB).
const FRAGMENT: usize = 12 * 320 * 1024;

/// An attachment added to a draft.
#[derive(Debug, Clone, Copy)]
pub struct FileAttachment<'a> {
    pub name: &'a str,
    pub content_type: &'a str,
    /// `Content-ID` without angle brackets, for an inline part.
    pub content_id: Option<&'a str>,
    pub inline: bool,
    pub content: &'a [u8],
}

/// A draft made from a message's MIME.
#[derive(Debug, Clone, Deserialize)]
pub struct Draft {
    /// Its immutable id (every request asks for those).
    pub id: String,
    /// The Message-ID Exchange gave it (with angle brackets): ours, unless Exchange made its own.
    #[serde(rename = "internetMessageId")]
    pub internet_message_id: Option<String>,
}

/// What an item a send made is now, read by its immutable id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Still a draft: not sent.
    Draft,
    /// Sent: the copy in Sent Items (or on its way there), with the Message-ID it went with.
    Sent { internet_message_id: Option<String> },
    /// No such item (deleted, or never made).
    Gone,
}

#[derive(Deserialize)]
struct ItemState {
    #[serde(rename = "isDraft", default)]
    is_draft: bool,
    #[serde(rename = "internetMessageId")]
    internet_message_id: Option<String>,
}

#[derive(Deserialize)]
struct Listed {
    id: String,
}

#[derive(Deserialize)]
struct Drafts {
    value: Vec<Listed>,
}

#[derive(Deserialize)]
struct UploadSession {
    #[serde(rename = "uploadUrl")]
    upload_url: String,
}

#[derive(Deserialize)]
struct Progress {
    #[serde(rename = "nextExpectedRanges", default)]
    next_expected_ranges: Vec<String>,
}

impl GraphMailbox {
    /// Makes a draft from `mime` (a whole MIME message, at most one request's worth).
    pub async fn create_draft(&self, mime: &[u8]) -> Result<Draft, GraphError> {
        let mime = base64::engine::general_purpose::STANDARD.encode(mime);
        self.client()
            .send_json(
                "creating a draft from the message's MIME (POST messages)",
                Method::POST,
                &self.client().url("/messages"),
                Payload::Base64Mime(mime),
            )
            .await
    }

    /// What the item `id` (a draft this process or an earlier attempt made) is now.
    pub async fn item(&self, id: &str) -> Result<Item, GraphError> {
        let url = self.client().url(&format!(
            "/messages/{}?$select=isDraft,internetMessageId",
            encode_segment(id)
        ));
        match self
            .client()
            .get_json::<ItemState>("reading the sent message by its id", &url, None)
            .await
        {
            Ok(state) if state.is_draft => Ok(Item::Draft),
            Ok(state) => Ok(Item::Sent {
                internet_message_id: state.internet_message_id,
            }),
            Err(GraphError::Refused(r)) if r.is_not_found() => Ok(Item::Gone),
            Err(e) => Err(e),
        }
    }

    /// Adds `files` to the draft `draft` and sends it.
    pub async fn fill_and_send(
        &self,
        draft: &str,
        files: &[FileAttachment<'_>],
    ) -> Result<(), GraphError> {
        let id = encode_segment(draft);
        for file in files {
            if file.content.len() < UPLOAD_SESSION_FROM {
                self.attach_small(&id, file).await?;
            } else {
                self.attach_large(&id, file).await?;
            }
        }
        crate::failpoint::hit(crate::failpoint::Point::DraftFilled);
        self.client()
            .change(
                "sending the draft (POST messages/{id}/send)",
                Method::POST,
                &self.client().url(&format!("/messages/{id}/send")),
                None,
            )
            .await?;
        info!(
            attachments = files.len(),
            bytes = files.iter().map(|f| f.content.len()).sum::<usize>(),
            "sent through a draft with its attachments added separately"
        );
        Ok(())
    }

    /// `POST …/messages/{id}/attachments` with a `fileAttachment`.
    async fn attach_small(&self, id: &str, file: &FileAttachment<'_>) -> Result<(), GraphError> {
        let mut body = serde_json::json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": file.name,
            "contentType": file.content_type,
            "isInline": file.inline,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(file.content),
        });
        if let Some(cid) = file.content_id {
            body["contentId"] = cid.into();
        }
        self.client()
            .change(
                &format!("adding attachment {:?} to the draft", file.name),
                Method::POST,
                &self.client().url(&format!("/messages/{id}/attachments")),
                Some(Payload::Json(body)),
            )
            .await
    }

    /// An upload session, then its ranges in order, each `PUT` continuing where Graph says the
    /// next range starts.
    async fn attach_large(&self, id: &str, file: &FileAttachment<'_>) -> Result<(), GraphError> {
        let what = format!("uploading attachment {:?}", file.name);
        let mut item = serde_json::json!({
            "attachmentType": "file",
            "name": file.name,
            "size": file.content.len(),
            "contentType": file.content_type,
            "isInline": file.inline,
        });
        if let Some(cid) = file.content_id {
            item["contentId"] = cid.into();
        }
        let session: UploadSession = self
            .client()
            .post_json(
                &format!("{what} (createUploadSession)"),
                &self
                    .client()
                    .url(&format!("/messages/{id}/attachments/createUploadSession")),
                serde_json::json!({ "AttachmentItem": item }),
            )
            .await?;
        let total = file.content.len();
        let mut start = 0;
        while start < total {
            let end = (start + FRAGMENT).min(total);
            let response = self
                .client()
                .put_fragment(
                    &what,
                    &session.upload_url,
                    Payload::Fragment {
                        content: file.content[start..end].to_vec(),
                        start: start as u64,
                        total: total as u64,
                    },
                )
                .await?;
            match response {
                None => return Ok(()),
                Some(bytes) => {
                    let progress: Progress =
                        serde_json::from_slice(&bytes).map_err(|e| GraphError::Unreadable {
                            what: what.clone(),
                            error: e.to_string(),
                        })?;
                    start = next_start(&progress.next_expected_ranges).unwrap_or(end);
                    debug!(start, total, "upload session continues");
                    if start >= total {
                        return Err(GraphError::Unreadable {
                            what,
                            error: format!(
                                "the upload session expects bytes from {start} of {total} after all were sent"
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes the drafts whose Message-ID is one of `message_ids` (with angle brackets): what
    /// an earlier attempt left before its draft's id was kept.
    pub async fn delete_left_drafts(&self, message_ids: &[&str]) -> Result<(), GraphError> {
        for message_id in message_ids {
            let filter = format!("internetMessageId eq '{}'", message_id.replace('\'', "''"));
            let url = self.client().url(&format!(
                "/mailFolders/drafts/messages?$select=id&$filter={}",
                encode_query(&filter)
            ));
            let left: Drafts = self
                .client()
                .get_json("looking in Drafts for an earlier attempt", &url, None)
                .await?;
            for draft in left.value {
                info!(message_id, "deleting the draft an earlier attempt left");
                self.delete_draft(&draft.id).await;
            }
        }
        Ok(())
    }

    /// Deletes a draft; a failure is only logged (the next attempt looks again).
    pub async fn delete_draft(&self, id: &str) {
        let url = self
            .client()
            .url(&format!("/messages/{}", encode_segment(id)));
        match self
            .client()
            .change("deleting a draft", Method::DELETE, &url, None)
            .await
        {
            Ok(()) => {}
            Err(GraphError::Refused(r)) if r.is_not_found() => {}
            Err(e) => warn!(error = %e, "cannot delete the draft"),
        }
    }
}

/// Where the next range starts: `nextExpectedRanges` holds `"{start}"` for Outlook
/// attachments (or `"{start}-{end}"` elsewhere).
fn next_start(ranges: &[String]) -> Option<usize> {
    let first = ranges.first()?;
    first.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_range_starts_where_graph_says() {
        assert_eq!(next_start(&["3932160".into()]), Some(3_932_160));
        assert_eq!(next_start(&["26-".into(), "40-50".into()]), Some(26));
        assert_eq!(next_start(&[]), None);
        assert_eq!(next_start(&["soon".into()]), None);
    }
}
