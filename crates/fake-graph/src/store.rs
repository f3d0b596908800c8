//! The mail store: users, their folders and messages, the change sequence delta is computed
//! from, and the sync states behind `$skiptoken` / `$deltatoken`. No IO and no HTTP: the
//! server turns requests into these calls under one lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::GraphError;
use crate::ids;
use crate::time;
use crate::{DeliverOptions, MessageIds, ValueFault};

/// `PidTagMessageSize` of a delivered message when the test does not set it: the MIME size
/// plus this much. Exchange's store size counts the item's properties, not the MIME stream, so
/// the two differ; a fixed overhead keeps the relation predictable (see README).
pub const STORE_SIZE_OVERHEAD: u64 = 2048;

/// At most this many messages in a delta round that has a `$filter`
/// (https://learn.microsoft.com/graph/delta-query-messages).
const DELTA_FILTER_CAP: usize = 5000;

/// The default folders under the root, by well-known name, with their English display
/// names (https://learn.microsoft.com/graph/api/resources/mailfolder).
pub(crate) const WELL_KNOWN_FOLDERS: &[(&str, &str)] = &[
    ("archive", "Archive"),
    ("deleteditems", "Deleted Items"),
    ("drafts", "Drafts"),
    ("inbox", "Inbox"),
    ("junkemail", "Junk Email"),
    ("outbox", "Outbox"),
    ("sentitems", "Sent Items"),
];
/// The root of the folder hierarchy ("Top of Information Store").
pub(crate) const ROOT: &str = "msgfolderroot";
/// Where DELETE puts what it deletes from Deleted Items: hidden, outside the root.
pub(crate) const RECOVERABLE_DELETIONS: &str = "recoverableitemsdeletions";

/// A folder.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Folder {
    pub id: String,
    pub well_known: Option<&'static str>,
    pub display_name: String,
    /// Empty for the root and for folders outside it.
    pub parent_id: String,
    pub is_hidden: bool,
    /// The IMAP folder behind it (Dovecot backend); None for the in-memory backend and for
    /// folders IMAP has no counterpart of (Outbox, Recoverable Items).
    pub imap_path: Option<String>,
}

/// A file attachment uploaded to a draft.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Attachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    #[serde(with = "base64_bytes")]
    pub content: Arc<Vec<u8>>,
}

/// Where a message lives in Dovecot (the folder is the model folder's `imap_path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImapLoc {
    pub uid_validity: u32,
    pub uid: u32,
}

/// An address as Graph shows it (`emailAddress: {name, address}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Address {
    pub name: String,
    pub address: String,
}

/// What the representation needs from the MIME, parsed once at delivery.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Parsed {
    pub subject: String,
    pub from: Option<Address>,
    pub sender: Option<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub reply_to: Vec<Address>,
    pub internet_message_id: Option<String>,
    pub sent: Option<i64>,
    pub has_attachments: bool,
    pub body_preview: String,
    pub body_html: String,
}

impl Parsed {
    pub(crate) fn of(mime: &[u8]) -> Parsed {
        let Some(message) = mail_parser::MessageParser::default().parse(mime) else {
            return Parsed::default();
        };
        let addresses = |list: Option<&mail_parser::Address<'_>>| -> Vec<Address> {
            list.map(|l| {
                l.iter()
                    .map(|a| Address {
                        name: a
                            .name()
                            .unwrap_or_else(|| a.address().unwrap_or(""))
                            .to_owned(),
                        address: a.address().unwrap_or("").to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let from = addresses(message.from()).into_iter().next();
        let sender = addresses(message.sender())
            .into_iter()
            .next()
            .or_else(|| from.clone());
        let text = message
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let preview: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Parsed {
            subject: message.subject().unwrap_or("").to_owned(),
            from,
            sender,
            to: addresses(message.to()),
            cc: addresses(message.cc()),
            bcc: addresses(message.bcc()),
            reply_to: addresses(message.reply_to()),
            internet_message_id: message.message_id().map(|id| format!("<{id}>")),
            sent: message.date().map(|d| d.to_timestamp()),
            has_attachments: message.attachment_count() > 0,
            body_preview: preview.chars().take(255).collect(),
            body_html: message
                .body_html(0)
                .map(|h| h.into_owned())
                .unwrap_or_default(),
        }
    }
}

/// A message in a folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Message {
    /// Internal key, never shown.
    pub key: u64,
    pub immutable_id: String,
    /// The default (REST) id: minted again on every move.
    pub rest_id: String,
    pub folder_id: String,
    #[serde(with = "base64_bytes")]
    pub mime: Arc<Vec<u8>>,
    /// `PidTagMessageSize` (0x0E08).
    pub store_size: u64,
    pub is_read: bool,
    pub received: i64,
    pub created: i64,
    pub last_modified: i64,
    pub change_key: String,
    /// Change sequence at which the message entered its current folder.
    pub entered_seq: u64,
    /// Change sequence of its last change (entering included).
    pub changed_seq: u64,
    pub parsed: Parsed,
    /// `categories`, `importance`, `flag` as last PATCHed.
    pub categories: Vec<String>,
    pub importance: String,
    pub flag_status: String,
    /// Not kept across a restart (a test sets it on the running fake).
    #[serde(skip)]
    pub value_fault: Option<ValueFault>,
    /// A draft (created by POST …/messages), sendable by POST …/send.
    #[serde(default)]
    pub is_draft: bool,
    /// File attachments added to a draft through upload sessions.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Its IMAP message (Dovecot backend). With it, `mime` holds the header block only and
    /// `$value` fetches `BODY.PEEK[]`; without it, `mime` is the whole message.
    pub imap: Option<ImapLoc>,
}

impl Message {
    /// The id to show: immutable when the request asked for it.
    pub(crate) fn id(&self, immutable: bool) -> &str {
        if immutable {
            &self.immutable_id
        } else {
            &self.rest_id
        }
    }
}

/// A message that left a folder (moved or deleted), for `@removed` in later delta rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    pub seq: u64,
    pub folder_id: String,
    pub key: u64,
    pub immutable_id: String,
    pub rest_id: String,
}

/// `$filter=receivedDateTime ge|gt {value}` — the only filter message delta supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceivedFilter {
    pub inclusive: bool,
    pub at: i64,
}

impl ReceivedFilter {
    fn admits(&self, received: i64) -> bool {
        if self.inclusive {
            received >= self.at
        } else {
            received > self.at
        }
    }
}

/// The custom `changeType` query option of message delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ChangeType {
    Created,
    Updated,
    Deleted,
}

/// The query options a delta round was started with; state tokens carry them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DeltaOptions {
    pub select: Option<Vec<String>>,
    pub expand: Vec<ExtendedProperty>,
    pub filter: Option<ReceivedFilter>,
    pub change_type: Option<ChangeType>,
    pub top: Option<usize>,
}

/// The state behind one `$skiptoken` or `$deltatoken`. Immutable once issued, so replaying a
/// link gives the same page again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SyncState {
    pub folder_id: String,
    /// Changes after this sequence number …
    pub since: u64,
    /// … up to this one (the round's snapshot, fixed by its first request).
    pub upto: u64,
    /// The last (sequence, key) returned in this round.
    pub cursor: Option<(u64, u64)>,
    /// The initial round returns the folder's messages, not changes.
    pub initial: bool,
    /// A `$deltatoken` (start of the next round) rather than a `$skiptoken`.
    pub is_delta_token: bool,
    pub options: DeltaOptions,
    pub expired: bool,
    /// Shown in the 410 message, as Exchange shows its sync-state generations.
    pub generation: u64,
}

/// One entry of a delta page.
#[derive(Clone, Debug)]
pub(crate) enum DeltaItem {
    Present(u64),
    Removed {
        immutable_id: String,
        rest_id: String,
    },
}

/// A user and their mailbox.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Mailbox {
    pub id: String,
    pub upn: String,
    pub mail: String,
    pub display_name: String,
    pub mailbox_enabled: bool,
    pub folders: Vec<Folder>,
    pub messages: BTreeMap<u64, Message>,
    pub tombstones: Vec<Tombstone>,
    /// The mailbox's change sequence (every change takes the next number).
    pub seq: u64,
    next_key: u64,
    pub sync_states: HashMap<String, SyncState>,
    generations: u64,
    /// (seq, generations) when last written to the state dir.
    #[serde(skip)]
    pub saved: Option<(u64, u64)>,
}

impl Mailbox {
    pub(crate) fn new(user: &crate::User) -> Mailbox {
        let root_id = ids::folder_id();
        let mut folders = vec![Folder {
            id: root_id.clone(),
            well_known: Some(ROOT),
            display_name: "Top of Information Store".to_owned(),
            parent_id: String::new(),
            is_hidden: false,
            imap_path: None,
        }];
        for (name, display) in WELL_KNOWN_FOLDERS {
            folders.push(Folder {
                id: ids::folder_id(),
                well_known: Some(name),
                display_name: (*display).to_owned(),
                parent_id: root_id.clone(),
                is_hidden: false,
                imap_path: None,
            });
        }
        folders.push(Folder {
            id: ids::folder_id(),
            well_known: Some(RECOVERABLE_DELETIONS),
            display_name: "Deletions".to_owned(),
            parent_id: String::new(),
            is_hidden: true,
            imap_path: None,
        });
        Mailbox {
            id: user.id.clone().unwrap_or_else(ids::uuid),
            upn: user.upn.clone(),
            mail: user.mail.clone().unwrap_or_else(|| user.upn.clone()),
            display_name: user
                .display_name
                .clone()
                .unwrap_or_else(|| user.upn.clone()),
            mailbox_enabled: user.mailbox_enabled,
            folders,
            messages: BTreeMap::new(),
            tombstones: Vec::new(),
            seq: 0,
            next_key: 1,
            sync_states: HashMap::new(),
            generations: 0,
            saved: None,
        }
    }

    /// True if `name` is this user as Graph's `/users/{id | userPrincipalName}` accepts it.
    pub(crate) fn is_named(&self, name: &str) -> bool {
        self.id.eq_ignore_ascii_case(name)
            || self.upn.eq_ignore_ascii_case(name)
            || self.mail.eq_ignore_ascii_case(name)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A folder by id or well-known name (case-insensitive, as Graph resolves them).
    pub(crate) fn folder(&self, id_or_name: &str) -> Result<&Folder, GraphError> {
        if let Some(folder) = self.folders.iter().find(|f| {
            f.id == id_or_name
                || f.well_known
                    .is_some_and(|w| w.eq_ignore_ascii_case(id_or_name))
        }) {
            return Ok(folder);
        }
        if ids::looks_like_id(id_or_name) {
            Err(GraphError::item_not_found())
        } else {
            Err(GraphError::id_malformed())
        }
    }

    pub(crate) fn root_id(&self) -> String {
        self.folders
            .iter()
            .find(|f| f.well_known == Some(ROOT))
            .map(|f| f.id.clone())
            .unwrap_or_default()
    }

    /// Child folders of `parent_id`, hidden ones only on request.
    pub(crate) fn child_folders(&self, parent_id: &str, include_hidden: bool) -> Vec<&Folder> {
        self.folders
            .iter()
            .filter(|f| f.parent_id == parent_id && (include_hidden || !f.is_hidden))
            .collect()
    }

    /// Creates a folder under `parent_id`; 409 when the name is taken there (compared
    /// case-insensitively, as Exchange compares folder names).
    pub(crate) fn create_folder(
        &mut self,
        parent_id: &str,
        display_name: &str,
        is_hidden: bool,
    ) -> Result<Folder, GraphError> {
        if display_name.trim().is_empty() {
            return Err(GraphError::bad_request(
                "The value of the property 'displayName' must not be empty.",
            ));
        }
        if self
            .folders
            .iter()
            .any(|f| f.parent_id == parent_id && f.display_name.eq_ignore_ascii_case(display_name))
        {
            return Err(GraphError::folder_exists());
        }
        let folder = Folder {
            id: ids::folder_id(),
            well_known: None,
            display_name: display_name.to_owned(),
            parent_id: parent_id.to_owned(),
            is_hidden,
            imap_path: None,
        };
        self.folders.push(folder.clone());
        Ok(folder)
    }

    /// A message by either of its ids (ids are case-sensitive). A REST id from before a move
    /// no longer resolves, as in Exchange.
    pub(crate) fn message_key(&self, id: &str) -> Result<u64, GraphError> {
        if let Some(m) = self
            .messages
            .values()
            .find(|m| m.immutable_id == id || m.rest_id == id)
        {
            return Ok(m.key);
        }
        if ids::looks_like_id(id) {
            Err(GraphError::item_not_found())
        } else {
            Err(GraphError::id_malformed())
        }
    }

    /// Puts MIME into a folder, as delivery (or a test) would.
    pub(crate) fn deliver(
        &mut self,
        folder_id: &str,
        mime: Vec<u8>,
        options: &DeliverOptions,
    ) -> MessageIds {
        let seq = self.next_seq();
        let key = self.next_key;
        self.next_key += 1;
        let now = time::now_secs();
        let received = options.received.map(time::unix_secs).unwrap_or(now);
        let parsed = Parsed::of(&mime);
        let store_size = options
            .store_size
            .unwrap_or(mime.len() as u64 + STORE_SIZE_OVERHEAD);
        let message = Message {
            key,
            immutable_id: ids::immutable_message_id(),
            rest_id: ids::rest_message_id(),
            folder_id: folder_id.to_owned(),
            mime: Arc::new(mime),
            store_size,
            is_read: options.is_read,
            received,
            created: received,
            last_modified: received,
            change_key: ids::change_key(),
            entered_seq: seq,
            changed_seq: seq,
            parsed,
            categories: Vec::new(),
            importance: "normal".to_owned(),
            flag_status: "notFlagged".to_owned(),
            value_fault: None,
            is_draft: false,
            attachments: Vec::new(),
            imap: None,
        };
        let ids = MessageIds {
            immutable_id: message.immutable_id.clone(),
            rest_id: message.rest_id.clone(),
        };
        self.messages.insert(key, message);
        ids
    }

    /// Records a change to a message (PATCH).
    pub(crate) fn touch(&mut self, key: u64) {
        let seq = self.next_seq();
        if let Some(m) = self.messages.get_mut(&key) {
            m.changed_seq = seq;
            m.last_modified = time::now_secs();
            m.change_key = ids::change_key();
        }
    }

    /// Moves a message: a new REST id (the immutable one stays), a tombstone in the source.
    pub(crate) fn move_message(&mut self, key: u64, destination_id: &str) {
        let tomb_seq = self.next_seq();
        let enter_seq = self.next_seq();
        let Some(m) = self.messages.get_mut(&key) else {
            return;
        };
        self.tombstones.push(Tombstone {
            seq: tomb_seq,
            folder_id: m.folder_id.clone(),
            key,
            immutable_id: m.immutable_id.clone(),
            rest_id: m.rest_id.clone(),
        });
        m.folder_id = destination_id.to_owned();
        m.rest_id = ids::rest_message_id();
        m.entered_seq = enter_seq;
        m.changed_seq = enter_seq;
        m.last_modified = time::now_secs();
        m.change_key = ids::change_key();
    }

    /// Removes a message for good.
    pub(crate) fn purge(&mut self, key: u64) {
        let seq = self.next_seq();
        if let Some(m) = self.messages.remove(&key) {
            self.tombstones.push(Tombstone {
                seq,
                folder_id: m.folder_id,
                key,
                immutable_id: m.immutable_id,
                rest_id: m.rest_id,
            });
        }
    }

    /// A new sync state id for `state`.
    pub(crate) fn issue_token(&mut self, mut state: SyncState) -> String {
        self.generations += 1;
        state.generation = self.generations;
        let token = ids::state_token();
        self.sync_states.insert(token.clone(), state);
        token
    }

    /// Expires the sync states of `folder_id` (or all): their links answer 410.
    pub(crate) fn expire_tokens(&mut self, folder_id: Option<&str>) -> usize {
        let mut n = 0;
        for state in self.sync_states.values_mut() {
            if !state.expired && folder_id.is_none_or(|f| f == state.folder_id) {
                state.expired = true;
                n += 1;
            }
        }
        n
    }

    /// One page of a delta round: the items after `state.cursor`, at most `page_size`, and
    /// whether the round is complete.
    pub(crate) fn delta_page(
        &self,
        state: &SyncState,
        page_size: usize,
    ) -> (Vec<(u64, u64, DeltaItem)>, bool) {
        let options = &state.options;
        let in_round = |seq: u64| seq > state.since && seq <= state.upto;
        let mut present: Vec<(u64, u64, DeltaItem)> = self
            .messages
            .values()
            .filter(|m| m.folder_id == state.folder_id)
            .filter(|m| {
                if state.initial {
                    m.entered_seq <= state.upto && m.changed_seq <= state.upto
                } else {
                    in_round(m.changed_seq)
                }
            })
            .filter(|m| options.filter.is_none_or(|f| f.admits(m.received)))
            .filter(|m| {
                state.initial
                    || match options.change_type {
                        None => true,
                        Some(ChangeType::Created) => m.entered_seq > state.since,
                        Some(ChangeType::Updated) => m.entered_seq <= state.since,
                        Some(ChangeType::Deleted) => false,
                    }
            })
            .map(|m| (m.changed_seq, m.key, DeltaItem::Present(m.key)))
            .collect();
        present.sort_by_key(|(seq, key, _)| (*seq, *key));
        if options.filter.is_some() {
            present.truncate(DELTA_FILTER_CAP);
        }
        let mut items = present;
        if !state.initial && matches!(options.change_type, None | Some(ChangeType::Deleted)) {
            let mut latest: BTreeMap<u64, &Tombstone> = BTreeMap::new();
            for t in self
                .tombstones
                .iter()
                .filter(|t| t.folder_id == state.folder_id && in_round(t.seq))
            {
                latest.insert(t.key, t);
            }
            for (key, t) in latest {
                let back = self
                    .messages
                    .get(&key)
                    .is_some_and(|m| m.folder_id == state.folder_id && m.entered_seq <= state.upto);
                if !back {
                    items.push((
                        t.seq,
                        key,
                        DeltaItem::Removed {
                            immutable_id: t.immutable_id.clone(),
                            rest_id: t.rest_id.clone(),
                        },
                    ));
                }
            }
        }
        items.sort_by_key(|(seq, key, _)| (*seq, *key));
        let after: Vec<_> = items
            .into_iter()
            .filter(|(seq, key, _)| state.cursor.is_none_or(|c| (*seq, *key) > c))
            .collect();
        let done = after.len() <= page_size;
        (after.into_iter().take(page_size).collect(), done)
    }
}

/// All users.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub mailboxes: Vec<Mailbox>,
}

impl Store {
    pub(crate) fn mailbox(&self, name: &str) -> Option<&Mailbox> {
        self.mailboxes.iter().find(|m| m.is_named(name))
    }

    pub(crate) fn mailbox_mut(&mut self, name: &str) -> Option<&mut Mailbox> {
        self.mailboxes.iter_mut().find(|m| m.is_named(name))
    }

    /// The mailbox for a request's `/users/{name}`: 404 `ErrorInvalidUser` for an unknown
    /// user, 404 `MailboxNotEnabledForRESTAPI` for a user without an Exchange mailbox.
    pub(crate) fn mailbox_for_request(&mut self, name: &str) -> Result<&mut Mailbox, GraphError> {
        match self.mailbox_mut(name) {
            None => Err(GraphError::invalid_user(name)),
            Some(m) if !m.mailbox_enabled => Err(GraphError::mailbox_not_enabled()),
            Some(m) => Ok(m),
        }
    }
}

/// MAPI property tag `PidTagMessageSize`.
pub(crate) const PID_TAG_MESSAGE_SIZE: u16 = 0x0E08;

/// An extended property asked for by `$expand=singleValueExtendedProperties($filter=id eq
/// '…')`: a MAPI tag with its type (`Long 0x0E08`), or an id this fake does not store (named
/// properties, other tags), which expands to nothing as for an item without the property.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ExtendedProperty {
    Tag { type_name: String, tag: u16 },
    Other(String),
}

impl ExtendedProperty {
    /// Parses one property id (`Long 0x0E08`, `Integer 0x0e08`, `String {guid} Name X`, …).
    pub(crate) fn parse(id: &str) -> ExtendedProperty {
        let mut words = id.split_whitespace();
        if let (Some(type_name), Some(tag), None) = (words.next(), words.next(), words.next())
            && let Some(hex) = tag.strip_prefix("0x").or_else(|| tag.strip_prefix("0X"))
            && let Ok(tag) = u16::from_str_radix(hex, 16)
        {
            return ExtendedProperty::Tag {
                type_name: type_name.to_owned(),
                tag,
            };
        }
        ExtendedProperty::Other(id.to_owned())
    }
}

/// A folder as the state file has it (the well-known name as text).
#[derive(Deserialize)]
struct FolderFile {
    id: String,
    well_known: Option<String>,
    display_name: String,
    parent_id: String,
    is_hidden: bool,
    imap_path: Option<String>,
}

impl<'de> Deserialize<'de> for Folder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Folder, D::Error> {
        FolderFile::deserialize(d).map(Folder::from)
    }
}

impl From<FolderFile> for Folder {
    fn from(f: FolderFile) -> Folder {
        // A name not in the built-in list (a state file from another version) is a plain folder.
        let well_known = f.well_known.and_then(|name| {
            WELL_KNOWN_FOLDERS
                .iter()
                .map(|(n, _)| *n)
                .chain([ROOT, RECOVERABLE_DELETIONS, "inbox"])
                .find(|n| *n == name)
        });
        Folder {
            id: f.id,
            well_known,
            display_name: f.display_name,
            parent_id: f.parent_id,
            is_hidden: f.is_hidden,
            imap_path: f.imap_path,
        }
    }
}

/// MIME bytes as base64 text in the state file.
mod base64_bytes {
    use std::sync::Arc;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes.as_slice()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Arc::new)
            .map_err(serde::de::Error::custom)
    }
}

impl Mailbox {
    /// The state file of this mailbox under `dir`.
    pub(crate) fn state_file(dir: &std::path::Path, upn: &str) -> std::path::PathBuf {
        let name: String = upn
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '@' | '-' | '_' | '+') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(format!("{name}.json"))
    }

    /// The mailbox as saved in `dir` by an earlier run, or a new one.
    pub(crate) fn load_or_new(
        dir: Option<&std::path::Path>,
        user: &crate::User,
    ) -> anyhow::Result<Mailbox> {
        use anyhow::Context as _;
        let Some(dir) = dir else {
            return Ok(Mailbox::new(user));
        };
        let path = Mailbox::state_file(dir, &user.upn);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut mailbox: Mailbox = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a fake-graph state file (delete it to start afresh)",
                        path.display()
                    )
                })?;
                mailbox.saved = Some((mailbox.seq, mailbox.generations));
                Ok(mailbox)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Mailbox::new(user)),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the mailbox to `dir` (through a temporary file and a rename) if it changed since
    /// the last write, or always with `force`.
    pub(crate) fn save(&mut self, dir: &std::path::Path, force: bool) -> std::io::Result<()> {
        let now = (self.seq, self.generations);
        if !force && self.saved == Some(now) {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        let path = Mailbox::state_file(dir, &self.upn);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        self.saved = Some(now);
        Ok(())
    }
}

impl Store {
    /// Writes every changed mailbox to the state dir (errors to stderr: a test then sees the
    /// state missing after a restart, with the reason printed).
    pub(crate) fn save_changed(&mut self, dir: &std::path::Path) {
        for mailbox in &mut self.mailboxes {
            if let Err(e) = mailbox.save(dir, false) {
                eprintln!(
                    "fake-graph: cannot write the state of {} to {}: {e}",
                    mailbox.upn,
                    dir.display()
                );
            }
        }
    }
}
