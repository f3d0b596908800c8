//! Graph as a mail source: the seam's operations over Outlook's REST API. A watched folder is
//! followed by message delta; every message delta reports gets the folder's next number
//! (`store::graph`), and intake works by those numbers as by UIDs. The size comes before the
//! body (`PidTagMessageSize`, 0x0E08, expanded into each delta item), bodies are `$value`
//! downloads capped at the mailbox's limit, dispositions are `PATCH isRead`, `move` and `DELETE`.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{Capped, GraphClient, Payload, Shared, encode_segment};
use super::error::GraphError;
use crate::config::GraphEndpoint;
use crate::mail_source::{
    Body, CopyKept, Disposition, IdleOutcome, MailSource, MessageSummary, SelectedFolder,
    SourceError, SourceErrorKind, Uid,
};
use crate::store::{DeltaRound, GraphItem, ItemChange, Store, StoreError};

/// The extended property of the message's size in the store (`PidTagMessageSize`).
const SIZE_PROPERTY: &str = "Long 0x0E08";
/// How often in a row a round whose sync state Graph lost (410) starts again afresh before the
/// sweep fails (and is tried again later).
const FRESH_ROUNDS_IN_A_ROW: u32 = 3;
/// Items per delta page asked for (`Prefer: odata.maxpagesize`).
const DELTA_PAGE_SIZE: u32 = 200;

/// A mailbox on Graph: its requests and its folders by name (`check` uses it alone).
pub struct GraphMailbox {
    client: GraphClient,
    /// The mailbox's address (for texts).
    address: String,
    max_concurrent: usize,
    /// Folder ids by name as configured, looked up once per session.
    folder_ids: HashMap<String, String>,
}

/// A mailbox's Graph session as intake uses it.
pub struct GraphSource {
    api: GraphMailbox,
    store: Store,
    /// The mailbox's name (its rows' key).
    mailbox: String,
    open: Option<OpenFolder>,
}

struct OpenFolder {
    name: String,
    id: String,
    validity: u32,
    next_uid: u32,
    delta_link: Option<String>,
}

/// Where a Graph session is made.
pub struct GraphLogin<'a> {
    pub shared: &'a Shared,
    pub endpoint: &'a GraphEndpoint,
    pub address: &'a str,
    /// The app's Application (client) ID: throttling counts by it.
    pub client_id: &'a str,
}

impl GraphSource {
    /// A session of mailbox `name` with `token` ([`GraphMailbox::connect`]), numbering its
    /// folders' messages in `store`.
    pub async fn connect(
        login: &GraphLogin<'_>,
        token: SecretString,
        name: &str,
        store: &Store,
    ) -> Result<GraphSource, GraphError> {
        Ok(GraphSource {
            api: GraphMailbox::connect(login, token).await?,
            store: store.clone(),
            mailbox: name.to_string(),
            open: None,
        })
    }
}

impl GraphMailbox {
    /// A session with `token`, proven by reading the mailbox's Inbox folder: a token Graph
    /// refuses, an app not granted the mailbox, or a mailbox Graph cannot reach fails here, with
    /// its fix.
    pub async fn connect(
        login: &GraphLogin<'_>,
        token: SecretString,
    ) -> Result<GraphMailbox, GraphError> {
        let mut api = GraphMailbox::new(login, token)?;
        let inbox: FolderJson = api
            .client
            .get_json(
                "reading the Inbox folder",
                &api.client.url("/mailFolders/inbox?$select=id,displayName"),
                None,
            )
            .await?;
        api.folder_ids.insert("inbox".to_string(), inbox.id);
        Ok(api)
    }

    /// Requests with `token`, without a first one: for sending, which may be all the app is
    /// granted (`Mail.Send` without `Mail.Read`).
    pub fn new(login: &GraphLogin<'_>, token: SecretString) -> Result<GraphMailbox, GraphError> {
        Ok(GraphMailbox {
            client: GraphClient::new(
                login.shared,
                login.endpoint,
                login.address,
                login.client_id,
                token,
            )?,
            address: login.address.to_string(),
            max_concurrent: login.endpoint.max_concurrent_requests.max(1) as usize,
            folder_ids: HashMap::new(),
        })
    }

    /// The mailbox's requests (for `send.rs`).
    pub(super) fn client(&self) -> &GraphClient {
        &self.client
    }

    /// The id of folder `name`, or `None` when the mailbox has none by that name.
    pub async fn find_folder(&mut self, name: &str) -> Result<Option<String>, GraphError> {
        self.folder_id(name, false).await
    }

    /// Moves message `item_id` (an immutable id) to folder `name`, made when missing. A message
    /// that is gone answers an error with [`crate::graph::Refusal::is_not_found`].
    pub async fn move_message(&mut self, item_id: &str, name: &str) -> Result<(), GraphError> {
        let Some(target) = self.folder_id(name, true).await? else {
            return Err(GraphError::Unreadable {
                what: format!("making the folder {name}"),
                error: "Graph made no such folder".into(),
            });
        };
        self.client
            .change(
                &format!("moving a message to {name}"),
                Method::POST,
                &self
                    .client
                    .url(&format!("/messages/{}/move", encode_segment(item_id))),
                Some(Payload::Json(
                    serde_json::json!({ "destinationId": target }),
                )),
            )
            .await
    }

    /// The immutable id of the message in folder `name` whose `internetMessageId` is
    /// `message_id` (with angle brackets), if there is one.
    pub async fn find_by_message_id(
        &mut self,
        name: &str,
        message_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let Some(folder) = self.folder_id(name, false).await? else {
            return Ok(None);
        };
        let filter = format!("internetMessageId eq '{}'", message_id.replace('\'', "''"));
        let url = self.client.url(&format!(
            "/mailFolders/{}/messages?$select=id&$top=1&$filter={}",
            encode_segment(&folder),
            encode_query(&filter)
        ));
        let page: IdPage = self
            .client
            .get_json(&format!("looking for {message_id} in {name}"), &url, None)
            .await?;
        Ok(page.value.into_iter().next().map(|m| m.id))
    }

    /// Whether message `item_id` is in folder `name` (false when it is gone or elsewhere).
    pub async fn is_in(&mut self, item_id: &str, name: &str) -> Result<bool, GraphError> {
        let Some(folder) = self.folder_id(name, false).await? else {
            return Ok(false);
        };
        let url = self.client.url(&format!(
            "/messages/{}?$select=parentFolderId",
            encode_segment(item_id)
        ));
        match self
            .client
            .get_json::<ParentJson>("finding a message's folder", &url, None)
            .await
        {
            Ok(found) => Ok(found.parent_folder_id.as_deref() == Some(folder.as_str())),
            Err(GraphError::Refused(r)) if r.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Folder `name`'s message count and its newest `limit` messages from their properties (no
    /// body); `None` when the mailbox has no such folder.
    pub async fn newest_in(
        &mut self,
        name: &str,
        limit: usize,
    ) -> Result<Option<(u32, Vec<ListedMessage>)>, GraphError> {
        let Some(folder) = self.folder_id(name, false).await? else {
            return Ok(None);
        };
        let id = encode_segment(&folder);
        let counted: CountJson = self
            .client
            .get_json(
                &format!("counting {name}"),
                &self
                    .client
                    .url(&format!("/mailFolders/{id}?$select=totalItemCount")),
                None,
            )
            .await?;
        let mut newest = Vec::new();
        if limit > 0 && counted.total_item_count > 0 {
            let url = self.client.url(&format!(
                "/mailFolders/{id}/messages?$top={limit}&$select=internetMessageHeaders,internetMessageId,subject,from,sentDateTime,receivedDateTime&$expand={}",
                encode_query(&format!(
                    "singleValueExtendedProperties($filter=id eq '{SIZE_PROPERTY}')"
                ))
            ));
            let page: ListPage = self
                .client
                .get_json(&format!("listing {name}"), &url, None)
                .await?;
            newest = page
                .value
                .into_iter()
                .take(limit)
                .map(|m| ListedMessage {
                    header: m.headers.render(),
                    received_ms: m
                        .item
                        .received_date_time
                        .as_deref()
                        .and_then(crate::time::parse_date),
                    size: m.item.size().unwrap_or(0),
                    item_id: m.item.id,
                })
                .collect();
        }
        Ok(Some((counted.total_item_count, newest)))
    }

    /// Sends `raw`, a whole MIME message, by `sendMail` (`Content-Type: text/plain`, base64).
    /// Its recipients are its To, Cc and Bcc fields; Exchange keeps a copy in Sent Items. Graph
    /// answers 202 once it took the message: delivery follows.
    pub async fn send_mime(&self, raw: &[u8]) -> Result<(), GraphError> {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(raw);
        self.client
            .change(
                "sending a message (sendMail)",
                Method::POST,
                &self.client.url("/sendMail"),
                Some(Payload::Base64Mime(body)),
            )
            .await
    }

    /// The `internetMessageId` of the message in Sent Items whose id is `message_id` (with angle
    /// brackets), if Exchange has put it there: the read-back after a send.
    pub async fn sent_copy_of(&self, message_id: &str) -> Result<Option<String>, GraphError> {
        let filter = format!("internetMessageId eq '{}'", message_id.replace('\'', "''"));
        let url = self.client.url(&format!(
            "/mailFolders/sentitems/messages?$select=internetMessageId&$top=1&$filter={}",
            encode_query(&filter)
        ));
        let page: SentPage = self
            .client
            .get_json("looking up the copy in Sent Items", &url, None)
            .await?;
        Ok(page
            .value
            .into_iter()
            .next()
            .and_then(|m| m.internet_message_id))
    }

    /// The id of folder `name` (a path like `Archive/2026`, `/`-separated; `INBOX` and the
    /// well-known English names are the well-known folders), made when missing and `create`.
    async fn folder_id(&mut self, name: &str, create: bool) -> Result<Option<String>, GraphError> {
        let key = name.to_ascii_lowercase();
        if let Some(id) = self.folder_ids.get(&key) {
            return Ok(Some(id.clone()));
        }
        let mut parent: Option<String> = None;
        for (depth, segment) in name.split('/').enumerate() {
            let found = match well_known(segment).filter(|_| depth == 0) {
                Some(known) => Some(self.well_known_id(known).await?),
                None => self.child_named(parent.as_deref(), segment).await?,
            };
            let id = match found {
                Some(id) => id,
                None if create => self.make_folder(parent.as_deref(), segment).await?,
                None => return Ok(None),
            };
            parent = Some(id);
        }
        let id = parent.expect("a folder name has a segment");
        self.folder_ids.insert(key, id.clone());
        Ok(Some(id))
    }

    async fn well_known_id(&self, known: &str) -> Result<String, GraphError> {
        let folder: FolderJson = self
            .client
            .get_json(
                &format!("reading the folder {known}"),
                &self.client.url(&format!("/mailFolders/{known}?$select=id")),
                None,
            )
            .await?;
        Ok(folder.id)
    }

    /// The child of `parent` (the mailbox's top when `None`) named `name`, case-insensitively as
    /// Exchange compares folder names.
    async fn child_named(
        &self,
        parent: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, GraphError> {
        let base = match parent {
            Some(id) => format!("/mailFolders/{}/childFolders", encode_segment(id)),
            None => "/mailFolders".to_string(),
        };
        let filter = format!("displayName eq '{}'", name.replace('\'', "''"));
        let mut url = self.client.url(&format!(
            "{base}?$select=id,displayName&$top=100&$filter={}",
            encode_query(&filter)
        ));
        loop {
            let page: FolderPage = self
                .client
                .get_json(&format!("looking up the folder {name}"), &url, None)
                .await?;
            if let Some(folder) = page
                .value
                .into_iter()
                .find(|f| f.display_name.eq_ignore_ascii_case(name))
            {
                return Ok(Some(folder.id));
            }
            match page.next_link {
                Some(next) => url = next,
                None => return Ok(None),
            }
        }
    }

    async fn make_folder(&self, parent: Option<&str>, name: &str) -> Result<String, GraphError> {
        let url = match parent {
            Some(id) => self
                .client
                .url(&format!("/mailFolders/{}/childFolders", encode_segment(id))),
            None => self.client.url("/mailFolders"),
        };
        let made: Result<FolderJson, GraphError> = self
            .client
            .post_json(
                &format!("making the folder {name}"),
                &url,
                serde_json::json!({ "displayName": name }),
            )
            .await;
        match made {
            Ok(folder) => {
                info!(folder = name, "made the folder");
                Ok(folder.id)
            }
            // Made meanwhile by someone else.
            Err(GraphError::Refused(r)) if r.code == "ErrorFolderExists" => self
                .child_named(parent, name)
                .await?
                .ok_or(GraphError::Refused(r)),
            Err(e) => Err(e),
        }
    }
}

impl GraphSource {
    fn open_folder(&self) -> Result<&OpenFolder, SourceError> {
        self.open.as_ref().ok_or_else(|| {
            SourceError::new(
                SourceErrorKind::Failed,
                GraphError::Unreadable {
                    what: "a folder operation".into(),
                    error: "no folder is open".into(),
                },
            )
        })
    }

    /// One delta round for the open folder, from its link (or afresh: the first round, and after
    /// Graph forgot the link), written with the numbers of what it reports.
    async fn sync(&mut self) -> Result<(), SourceError> {
        let open = self.open_folder()?;
        let (name, folder_id, validity) = (open.name.clone(), open.id.clone(), open.validity);
        let mut start = open.delta_link.clone();
        let mut fresh_rounds = 0;
        let round = loop {
            match self.delta_round(&name, &folder_id, start.as_deref()).await {
                Ok(round) => break round,
                // Lost on the stored link, or while paging (a fresh round too): nothing of the
                // round was written yet, so it starts again afresh — a few times in a row at most.
                Err(GraphError::Refused(r))
                    if r.is_sync_state_lost() && fresh_rounds < FRESH_ROUNDS_IN_A_ROW =>
                {
                    fresh_rounds += 1;
                    warn!(
                        folder = name,
                        "Graph no longer knows the folder's delta link ({} {}); synchronising it afresh: messages already recorded are recognised by their ids",
                        r.status,
                        r.code
                    );
                    self.store
                        .graph_forget_delta_link(&self.mailbox, &name)
                        .await
                        .map_err(store_error)?;
                    start = None;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let next_uid = self
            .store
            .graph_apply_round(&self.mailbox, &name, validity, &round)
            .await
            .map_err(store_error)?;
        debug!(
            folder = name,
            changed = round.changed.len(),
            removed = round.removed.len(),
            full = round.full,
            "delta round"
        );
        if let Some(open) = &mut self.open {
            open.next_uid = next_uid;
            open.delta_link = Some(round.delta_link);
        }
        Ok(())
    }

    /// Pages through one delta round.
    async fn delta_round(
        &self,
        name: &str,
        folder_id: &str,
        link: Option<&str>,
    ) -> Result<DeltaRound, GraphError> {
        let mut url = match link {
            Some(link) => link.to_string(),
            None => self.api.client.url(&format!(
                "/mailFolders/{}/messages/delta?$select=receivedDateTime,isRead&$expand={}",
                encode_segment(folder_id),
                encode_query(&format!(
                    "singleValueExtendedProperties($filter=id eq '{SIZE_PROPERTY}')"
                ))
            )),
        };
        let mut round = DeltaRound {
            full: link.is_none(),
            ..DeltaRound::default()
        };
        let what = format!("the delta of {name}");
        loop {
            let page: DeltaPage = self
                .api
                .client
                .get_json(&what, &url, Some(DELTA_PAGE_SIZE))
                .await?;
            for item in page.value {
                if item.removed.is_some() {
                    round.removed.push(item.id);
                    continue;
                }
                let size = match item.size() {
                    Some(size) => size,
                    None => self.size_of(&item.id).await?,
                };
                round.changed.push(ItemChange {
                    size,
                    received_ms: item
                        .received_date_time
                        .as_deref()
                        .and_then(crate::time::parse_date),
                    is_read: item.is_read.unwrap_or(false),
                    item_id: item.id,
                });
            }
            match (page.next_link, page.delta_link) {
                (Some(next), _) => {
                    crate::failpoint::reached(crate::failpoint::Point::DeltaPage).await;
                    url = next;
                }
                (None, Some(delta)) => {
                    round.delta_link = delta;
                    return Ok(round);
                }
                (None, None) => {
                    return Err(GraphError::Unreadable {
                        what,
                        error: "a delta page with neither @odata.nextLink nor @odata.deltaLink"
                            .into(),
                    });
                }
            }
        }
    }

    /// The size of a message delta reported without it (some servers leave expanded properties
    /// out of delta pages). Without any size the capped download decides: 0.
    async fn size_of(&self, item_id: &str) -> Result<u64, GraphError> {
        let url = self.api.client.url(&format!(
            "/messages/{}?$select=id&$expand={}",
            encode_segment(item_id),
            encode_query(&format!(
                "singleValueExtendedProperties($filter=id eq '{SIZE_PROPERTY}')"
            ))
        ));
        let item: DeltaItem = match self
            .api
            .client
            .get_json("a message's size", &url, None)
            .await
        {
            Ok(item) => item,
            Err(GraphError::Refused(r)) if r.is_not_found() => return Ok(0),
            Err(e) => return Err(e),
        };
        Ok(item.size().unwrap_or_else(|| {
            warn!(
                item = item_id,
                "Graph gives no PidTagMessageSize for a message; its download is capped at max_message_bytes"
            );
            0
        }))
    }

    /// The open folder's messages numbered `uids` that are still there.
    async fn items(&self, uids: &[Uid]) -> Result<Vec<GraphItem>, SourceError> {
        let open = self.open_folder()?;
        self.store
            .graph_items_numbered(&self.mailbox, &open.name, open.validity, uids)
            .await
            .map_err(store_error)
    }

    /// Whether the session still gets answers (after a download failed alone).
    async fn answers(&self) -> Result<(), GraphError> {
        let open = self.open_folder().map_err(|_| GraphError::Unreadable {
            what: "a probe".into(),
            error: "no folder is open".into(),
        })?;
        let _: FolderJson = self
            .api
            .client
            .get_json(
                "reading the open folder",
                &self.api.client.url(&format!(
                    "/mailFolders/{}?$select=id",
                    encode_segment(&open.id)
                )),
                None,
            )
            .await?;
        Ok(())
    }

    async fn fetch_one(&self, item: &GraphItem, cap: u64) -> Result<Option<Body>, GraphError> {
        let url = self.api.client.url(&format!(
            "/messages/{}/$value",
            encode_segment(&item.item_id)
        ));
        match self
            .api
            .client
            .get_capped(&format!("the body of message {}", item.uid), &url, cap)
            .await
        {
            Ok(Capped::Complete(raw)) => Ok(Some(Body::Complete(raw))),
            Ok(Capped::TooLarge) => Ok(Some(Body::TooLarge)),
            Err(GraphError::Refused(r)) if r.is_not_found() => Ok(None),
            Err(GraphError::Refused(r)) if r.status == 401 => Err(GraphError::Refused(r)),
            // Refused for this message after the throttling waits, or the download broke off or
            // took longer than graph.timeout (large `$value` downloads do): the message's own
            // trouble if the session still answers.
            Err(e) => match self.answers().await {
                Ok(()) => Ok(Some(Body::Refused(e.to_string()))),
                Err(_) => Err(e),
            },
        }
    }

    async fn dispose_one(&self, item: &GraphItem, action: &Action) -> Result<(), GraphError> {
        let id = encode_segment(&item.item_id);
        let what = format!("the disposition of message {}", item.uid);
        let (method, path, body) = match action {
            Action::MarkRead => (
                Method::PATCH,
                format!("/messages/{id}"),
                Some(Payload::Json(serde_json::json!({ "isRead": true }))),
            ),
            Action::MoveTo(target) => (
                Method::POST,
                format!("/messages/{id}/move"),
                Some(Payload::Json(
                    serde_json::json!({ "destinationId": target }),
                )),
            ),
            // A message DELETE moves it to Deleted Items, where it is recoverable as in Outlook.
            Action::Delete => (Method::DELETE, format!("/messages/{id}"), None),
        };
        match self
            .api
            .client
            .change(&what, method, &self.api.client.url(&path), body)
            .await
        {
            // Moved or deleted by someone else meanwhile: nothing left to do.
            Err(GraphError::Refused(r)) if r.is_not_found() => {
                debug!(uid = item.uid.0, "gone before its disposition");
                Ok(())
            }
            other => other,
        }
    }
}

/// A disposition as Graph requests.
enum Action {
    MarkRead,
    /// To the folder with this id.
    MoveTo(String),
    Delete,
}

impl MailSource for GraphSource {
    async fn open(
        &mut self,
        folder: &str,
        _read_only: bool,
    ) -> Result<SelectedFolder, SourceError> {
        // Graph has no read-only open: shadow mode's disposition is `none`, and `$value` does
        // not mark mail read.
        let Some(folder_id) = self.api.folder_id(folder, false).await? else {
            return Err(SourceError::new(
                SourceErrorKind::Refused,
                GraphError::Unreadable {
                    what: format!("opening the folder {folder}"),
                    error: format!(
                        "{} has no folder `{folder}`: check `folders` (Inbox is \"INBOX\"; a subfolder is written \"Parent/Child\")",
                        self.api.address
                    ),
                },
            ));
        };
        let numbering = self
            .store
            .graph_folder(&self.mailbox, folder, &folder_id)
            .await
            .map_err(store_error)?;
        self.open = Some(OpenFolder {
            name: folder.to_string(),
            id: folder_id,
            validity: numbering.validity,
            next_uid: numbering.next_uid,
            delta_link: numbering.delta_link,
        });
        // The first round numbers the mail there now: the first-start mark is the number after.
        if self.open.as_ref().is_some_and(|o| o.delta_link.is_none()) {
            self.sync().await?;
        }
        let open = self.open_folder()?;
        Ok(SelectedFolder {
            uidvalidity: open.validity,
            uid_next: Some(open.next_uid),
            exists: 0,
        })
    }

    async fn list_above(&mut self, last: Uid) -> Result<Vec<MessageSummary>, SourceError> {
        self.sync().await?;
        let open = self.open_folder()?;
        let items = self
            .store
            .graph_items_above(&self.mailbox, &open.name, open.validity, last)
            .await
            .map_err(store_error)?;
        Ok(items.iter().map(summary).collect())
    }

    async fn search_range(
        &mut self,
        first: Uid,
        last: Uid,
        unseen_only: bool,
    ) -> Result<Vec<Uid>, SourceError> {
        let open = self.open_folder()?;
        let items = self
            .store
            .graph_items_between(
                &self.mailbox,
                &open.name,
                open.validity,
                (first, last),
                unseen_only,
            )
            .await
            .map_err(store_error)?;
        Ok(items.iter().map(|i| i.uid).collect())
    }

    async fn list_uids(&mut self, uids: &[Uid]) -> Result<Vec<MessageSummary>, SourceError> {
        Ok(self.items(uids).await?.iter().map(summary).collect())
    }

    async fn fetch_bodies(
        &mut self,
        uids: &[Uid],
        cap: u64,
    ) -> Result<Vec<(Uid, Body)>, SourceError> {
        let items = self.items(uids).await?;
        let this = &*self;
        let results: Vec<(Uid, Result<Option<Body>, GraphError>)> = futures::stream::iter(items)
            .map(|item| async move { (item.uid, this.fetch_one(&item, cap).await) })
            .buffered(self.api.max_concurrent)
            .collect()
            .await;
        let mut bodies = Vec::with_capacity(results.len());
        for (uid, result) in results {
            if let Some(body) = result? {
                bodies.push((uid, body));
            }
        }
        Ok(bodies)
    }

    async fn fetch_identifying_headers(&mut self, uid: Uid) -> Result<Vec<u8>, SourceError> {
        let Some(item) = self.items(&[uid]).await?.pop() else {
            return Ok(Vec::new());
        };
        let url = self.api.client.url(&format!(
            "/messages/{}?$select=internetMessageHeaders,internetMessageId,subject,from,sentDateTime",
            encode_segment(&item.item_id)
        ));
        let headers: HeaderJson = match self
            .api
            .client
            .get_json(&format!("the header fields of message {uid}"), &url, None)
            .await
        {
            Ok(headers) => headers,
            Err(GraphError::Refused(r)) if r.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(headers.render())
    }

    async fn dispose(
        &mut self,
        uids: &[Uid],
        disposition: &Disposition,
    ) -> Result<(), SourceError> {
        if uids.is_empty() {
            return Ok(());
        }
        let action = match disposition {
            Disposition::None => return Ok(()),
            Disposition::Seen => Action::MarkRead,
            Disposition::Delete => Action::Delete,
            Disposition::Move(folder) | Disposition::Quarantine(folder) => {
                match self.api.folder_id(folder, true).await? {
                    Some(id) => Action::MoveTo(id),
                    None => {
                        return Err(SourceError::new(
                            SourceErrorKind::Refused,
                            GraphError::Unreadable {
                                what: format!("making the folder {folder}"),
                                error: "Graph made no such folder".into(),
                            },
                        ));
                    }
                }
            }
        };
        let items = self.items(uids).await?;
        let this = &*self;
        let action = &action;
        let results: Vec<(Uid, Result<(), GraphError>)> = futures::stream::iter(items)
            .map(|item| async move { (item.uid, this.dispose_one(&item, action).await) })
            .buffered(self.api.max_concurrent)
            .collect()
            .await;
        let mut moved = Vec::new();
        for (uid, result) in results {
            result?;
            moved.push(uid);
        }
        if !matches!(action, Action::MarkRead) {
            let open = self.open_folder()?;
            self.store
                .graph_mark_gone(&self.mailbox, &open.name, open.validity, &moved)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    fn can_wait_for_change(&self) -> bool {
        // Change notifications need a public HTTPS endpoint: the folder task polls.
        false
    }

    async fn wait_for_change(
        self,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(Self, IdleOutcome), SourceError> {
        tokio::select! {
            _ = tokio::time::sleep(max_wait) => Ok((self, IdleOutcome::Timeout)),
            _ = shutdown.cancelled() => Ok((self, IdleOutcome::Shutdown)),
        }
    }

    async fn sent_folder(&mut self) -> Result<Option<String>, SourceError> {
        Ok(self
            .api
            .folder_id("Sent Items", false)
            .await?
            .map(|_| "Sent Items".to_string()))
    }

    async fn keep_copy(
        &mut self,
        _folder: &str,
        _message_id: &str,
        _raw: &[u8],
    ) -> Result<CopyKept, SourceError> {
        Err(SourceError::new(
            SourceErrorKind::Refused,
            GraphError::Unreadable {
                what: "a copy in Sent Items".into(),
                error: "Graph keeps copies of the mail it sends itself: sent_copy = \"append\" is for IMAP mailboxes".into(),
            },
        ))
    }

    async fn logout(self) {}
}

fn summary(item: &GraphItem) -> MessageSummary {
    MessageSummary {
        uid: item.uid,
        size: item.size,
        internal_date_ms: item.received_ms,
        seen: item.is_read,
    }
}

fn store_error(error: StoreError) -> SourceError {
    SourceError::new(SourceErrorKind::Failed, error)
}

/// The well-known folder an English folder name stands for (Exchange's display names, and
/// IMAP's `INBOX`).
fn well_known(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "inbox" => "inbox",
        "sent items" => "sentitems",
        "deleted items" => "deleteditems",
        "junk email" => "junkemail",
        "drafts" => "drafts",
        // mailintake's default junk_folder; Exchange's Junk Email.
        "junk" => "junkemail",
        "archive" => "archive",
        "outbox" => "outbox",
        _ => return None,
    })
}

/// A query parameter's value, percent-encoded.
pub(super) fn encode_query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[derive(Deserialize)]
struct FolderJson {
    id: String,
    #[serde(rename = "displayName", default)]
    display_name: String,
}

#[derive(Deserialize)]
struct FolderPage {
    value: Vec<FolderJson>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// A message of a folder listing, from its properties.
pub struct ListedMessage {
    pub item_id: String,
    /// Its header fields as [`MailSource::fetch_identifying_headers`] gives them.
    pub header: Vec<u8>,
    pub received_ms: Option<i64>,
    /// PidTagMessageSize; 0 when Graph gives none.
    pub size: u64,
}

#[derive(Deserialize)]
struct ParentJson {
    #[serde(rename = "parentFolderId")]
    parent_folder_id: Option<String>,
}

#[derive(Deserialize)]
struct CountJson {
    #[serde(rename = "totalItemCount", default)]
    total_item_count: u32,
}

#[derive(Deserialize)]
struct ListPage {
    value: Vec<ListedJson>,
}

#[derive(Deserialize)]
struct ListedJson {
    #[serde(flatten)]
    item: DeltaItem,
    #[serde(flatten)]
    headers: HeaderJson,
}

#[derive(Deserialize)]
struct IdPage {
    value: Vec<IdOnly>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct SentPage {
    value: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    #[serde(rename = "internetMessageId")]
    internet_message_id: Option<String>,
}

#[derive(Deserialize)]
struct DeltaPage {
    value: Vec<DeltaItem>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
struct DeltaItem {
    id: String,
    #[serde(rename = "@removed")]
    removed: Option<serde_json::Value>,
    #[serde(rename = "receivedDateTime")]
    received_date_time: Option<String>,
    #[serde(rename = "isRead")]
    is_read: Option<bool>,
    #[serde(rename = "singleValueExtendedProperties", default)]
    properties: Vec<ExtendedProperty>,
}

impl DeltaItem {
    /// PidTagMessageSize, which Exchange writes as `Long 0xe08` with a string value.
    fn size(&self) -> Option<u64> {
        self.properties
            .iter()
            .find(|p| is_size_property(&p.id))
            .and_then(|p| match &p.value {
                serde_json::Value::String(text) => text.trim().parse().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            })
    }
}

/// `Long 0x0E08` in any of its spellings (`Long 0xe08`, `long 0x0e08`).
fn is_size_property(id: &str) -> bool {
    let mut words = id.split_whitespace();
    let (Some(kind), Some(tag), None) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    let Some(hex) = tag.strip_prefix("0x").or_else(|| tag.strip_prefix("0X")) else {
        return false;
    };
    kind.eq_ignore_ascii_case("long") && u32::from_str_radix(hex, 16) == Ok(0x0E08)
}

#[derive(Deserialize)]
struct ExtendedProperty {
    id: String,
    value: serde_json::Value,
}

#[derive(Deserialize)]
struct HeaderJson {
    #[serde(rename = "internetMessageHeaders", default)]
    headers: Option<Vec<HeaderField>>,
    #[serde(rename = "internetMessageId")]
    message_id: Option<String>,
    subject: Option<String>,
    from: Option<Recipient>,
    #[serde(rename = "sentDateTime")]
    sent: Option<String>,
}

#[derive(Deserialize)]
struct HeaderField {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct Recipient {
    #[serde(rename = "emailAddress")]
    email_address: EmailAddress,
}

#[derive(Deserialize)]
struct EmailAddress {
    name: Option<String>,
    address: Option<String>,
}

impl HeaderJson {
    /// A header block as IMAP's header fields would give it: the message's own fields where
    /// Graph has them (`internetMessageHeaders`, only for mail that came by transport), else
    /// built from the message's properties.
    fn render(&self) -> Vec<u8> {
        let mut text = String::new();
        let mut line = |name: &str, value: &str| {
            let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            text.push_str(&format!("{name}: {value}\r\n"));
        };
        match self.headers.as_deref().filter(|h| !h.is_empty()) {
            Some(fields) => {
                for field in fields {
                    line(&field.name, &field.value);
                }
            }
            None => {
                if let Some(id) = &self.message_id {
                    line("Message-ID", id);
                }
                if let Some(subject) = &self.subject {
                    line("Subject", subject);
                }
                if let Some(from) = &self.from {
                    let address = from.email_address.address.as_deref().unwrap_or("");
                    match from.email_address.name.as_deref().filter(|n| !n.is_empty()) {
                        Some(name) => line("From", &format!("\"{name}\" <{address}>")),
                        None => line("From", &format!("<{address}>")),
                    }
                }
                if let Some(sent) = self.sent.as_deref().and_then(crate::time::parse_date) {
                    let date = mail_parser::DateTime::from_timestamp(sent / 1000);
                    line("Date", &date.to_rfc822());
                }
            }
        }
        text.push_str("\r\n");
        text.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_property_is_known_in_every_spelling() {
        assert!(is_size_property("Long 0xe08"));
        assert!(is_size_property("Long 0x0E08"));
        assert!(is_size_property("long 0x0e08"));
        assert!(!is_size_property("Long 0x0E07"));
        assert!(!is_size_property("String 0x0E08"));
    }

    #[test]
    fn well_known_names_are_exchanges_english_ones() {
        assert_eq!(well_known("INBOX"), Some("inbox"));
        assert_eq!(well_known("Junk Email"), Some("junkemail"));
        assert_eq!(well_known("Junk"), Some("junkemail"));
        assert_eq!(well_known("Quarantine"), None);
    }

    #[test]
    fn header_fields_are_built_from_properties_without_internet_headers() {
        let json: HeaderJson = serde_json::from_str(
            r#"{"internetMessageId": "<a@b>", "subject": "Printer\r\nBcc: x", "from": {"emailAddress": {"name": "Ann", "address": "ann@example.com"}}, "sentDateTime": "2026-11-01T10:00:00Z"}"#,
        )
        .unwrap();
        let text = String::from_utf8(json.render()).unwrap();
        assert!(text.contains("Message-ID: <a@b>\r\n"));
        assert!(text.contains("Subject: PrinterBcc: x\r\n"));
        assert!(text.contains("From: \"Ann\" <ann@example.com>\r\n"));
        assert!(text.contains("Date: "));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
