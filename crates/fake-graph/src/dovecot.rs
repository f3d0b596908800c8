//! The Dovecot backend: the fake serves a *real* mailbox by translating Graph requests to IMAP
//! (and `sendMail` to SMTP submission). The in-memory model (`store`) stays the one place
//! ids, the change sequence and sync states live; this module keeps it a mirror of Dovecot:
//!
//! - before every Graph request to a mailbox, [`sync`] reads the IMAP folders (LIST), and per
//!   folder UIDVALIDITY, UIDs, `\Seen` and RFC822.SIZE; new UIDs become messages (their
//!   `BODY.PEEK[]` parsed once, only the header block kept), vanished UIDs tombstones, flag
//!   changes updates — so delta sees LMTP deliveries, expunges and flag changes made by others;
//! - changes made through Graph go to IMAP first (UID MOVE, UID STORE, UID EXPUNGE, CREATE,
//!   APPEND), then to the model; a move keeps the immutable id because the model message
//!   stays and only its (UIDVALIDITY, UID) changes, read from the MOVE's COPYUID;
//! - `$value` is `UID FETCH … BODY.PEEK[]` at the time of the request.
//!
//! One IMAP session per mailbox, behind an async mutex held for the whole Graph request, so
//! sync, IMAP change and model change of one request are never interleaved with another's.
//! Commands go out raw (`run_command`) and every answer's tagged status is checked: async-imap
//! ends a FETCH stream silently on a tagged NO (see the workspace's notes on async-imap).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{
    AttributeValue, MailboxDatum, NameAttribute, Response as Imap, ResponseCode, Status,
};
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::Shared;
use crate::error::GraphError;
use crate::store::{ImapLoc, Mailbox, ROOT, WELL_KNOWN_FOLDERS};
use crate::{DeliverOptions, STORE_SIZE_OVERHEAD, time};

type Tls = async_native_tls::TlsStream<TcpStream>;
type Session = async_imap::Session<Tls>;

/// How long one IMAP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the real mailboxes are: the mail stack's Dovecot (IMAPS) for reading and changing,
/// its Postfix submission port for sending. Every user of the fake logs in as its
/// userPrincipalName with the stack's PLAIN password.
#[derive(Clone, Debug)]
pub struct DovecotConfig {
    /// IMAPS host (loopback), e.g. `127.0.0.1`.
    pub host: String,
    /// IMAPS port (implicit TLS), e.g. 14993.
    pub imaps_port: u16,
    /// The name the server certificate is checked against (`localhost`).
    pub tls_name: String,
    /// The PEM CA that signed the server certificates.
    pub ca_file: PathBuf,
    /// The password of every user (PLAIN/LOGIN).
    pub password: String,
    /// SMTP submission port (STARTTLS, then AUTH PLAIN), e.g. 14587.
    pub submission_port: u16,
    /// The largest message the submission port takes (the stack's: 4 MiB, announced as EHLO
    /// SIZE 4194304).
    pub submission_size_limit: u64,
    /// Where larger messages go instead: the stack's MX port (14025: no AUTH, local domains
    /// only, 50 MB; it adds an Authentication-Results header), as Exchange takes up to 35 MB.
    pub mx_port: Option<u16>,
    /// `PidTagMessageSize` = RFC822.SIZE + this (as the in-memory store's default).
    pub store_size_overhead: u64,
}

impl DovecotConfig {
    /// The mail stack's defaults on 127.0.0.1 (IMAPS 14993, submission 14587).
    pub fn new(ca_file: impl Into<PathBuf>, password: &str) -> DovecotConfig {
        DovecotConfig {
            host: "127.0.0.1".to_owned(),
            imaps_port: 14993,
            tls_name: "localhost".to_owned(),
            ca_file: ca_file.into(),
            password: password.to_owned(),
            submission_port: 14587,
            submission_size_limit: 4 * 1024 * 1024,
            mx_port: Some(14025),
            store_size_overhead: STORE_SIZE_OVERHEAD,
        }
    }
}

/// Why the Dovecot backend could not do something. Graph clients see it as 503
/// `serviceNotAvailable` (the store is unavailable), the text naming what failed.
#[derive(Debug)]
pub(crate) enum BackendError {
    Connect(String),
    Login(String),
    Io(String),
    /// A tagged NO or BAD: the command and the server's text.
    Refused {
        command: String,
        text: String,
    },
    Smtp(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Connect(e) => write!(f, "cannot reach Dovecot: {e}"),
            BackendError::Login(e) => write!(f, "Dovecot refused the login: {e}"),
            BackendError::Io(e) => write!(f, "IMAP connection failed: {e}"),
            BackendError::Refused { command, text } => {
                write!(f, "Dovecot refused `{command}`: {text}")
            }
            BackendError::Smtp(e) => write!(f, "Postfix submission failed: {e}"),
        }
    }
}

impl From<BackendError> for GraphError {
    fn from(e: BackendError) -> GraphError {
        GraphError::new(
            503,
            "serviceNotAvailable",
            format!("fake-graph's Dovecot backend: {e}"),
        )
    }
}

/// The backend: its settings and one session slot per mailbox.
pub(crate) struct Dovecot {
    pub config: DovecotConfig,
    tls: async_native_tls::TlsConnector,
    sessions: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<Option<Session>>>>>,
    /// Each folder's STATUS (UIDVALIDITY, UIDNEXT, MESSAGES, HIGHESTMODSEQ) at its last sync,
    /// by (user, folder): a folder whose STATUS is the same has not changed (CONDSTORE, RFC 7162:
    /// every flag change raises HIGHESTMODSEQ), so its `UID FETCH 1:*` is skipped.
    marks: std::sync::Mutex<HashMap<(String, String), [u64; 4]>>,
}

/// A mailbox's IMAP session, held for one Graph request.
pub(crate) struct Conn {
    slot: OwnedMutexGuard<Option<Session>>,
    upn: String,
}

impl Dovecot {
    pub(crate) fn new(config: DovecotConfig) -> anyhow::Result<Dovecot> {
        use anyhow::Context as _;
        let pem = std::fs::read(&config.ca_file)
            .with_context(|| format!("reading the CA file {}", config.ca_file.display()))?;
        let ca = native_tls::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", config.ca_file.display()))?;
        let tls = async_native_tls::TlsConnector::new().add_root_certificate(ca);
        Ok(Dovecot {
            config,
            tls,
            sessions: std::sync::Mutex::default(),
            marks: std::sync::Mutex::default(),
        })
    }

    /// The mailbox's session slot, locked until the returned guard drops.
    pub(crate) async fn lock(&self, upn: &str) -> Conn {
        let slot = {
            let mut sessions = crate::limits::lock(&self.sessions);
            Arc::clone(sessions.entry(upn.to_ascii_lowercase()).or_default())
        };
        Conn {
            slot: slot.lock_owned().await,
            upn: upn.to_owned(),
        }
    }

    async fn connect(&self, login: &str) -> Result<Session, BackendError> {
        let address = format!("{}:{}", self.config.host, self.config.imaps_port);
        let tcp = tokio::time::timeout(COMMAND_TIMEOUT, TcpStream::connect(&address))
            .await
            .map_err(|_| BackendError::Connect(format!("{address}: timed out")))?
            .map_err(|e| BackendError::Connect(format!("{address}: {e}")))?;
        let stream = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.tls.connect(self.config.tls_name.as_str(), tcp),
        )
        .await
        .map_err(|_| BackendError::Connect(format!("{address}: TLS timed out")))?
        .map_err(|e| BackendError::Connect(format!("TLS with {address}: {e}")))?;
        let mut client = async_imap::Client::new(stream);
        // The greeting first, or it is taken as the answer to LOGIN.
        match tokio::time::timeout(COMMAND_TIMEOUT, client.read_response()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err(BackendError::Connect("no greeting".to_owned())),
            Ok(Err(e)) => return Err(BackendError::Connect(format!("greeting: {e}"))),
            Err(_) => return Err(BackendError::Connect("greeting timed out".to_owned())),
        }
        tokio::time::timeout(COMMAND_TIMEOUT, client.login(login, &self.config.password))
            .await
            .map_err(|_| BackendError::Login(format!("{login}: timed out")))?
            .map_err(|(e, _)| BackendError::Login(format!("{login}: {e}")))
    }
}

impl Conn {
    async fn session(&mut self, dovecot: &Dovecot) -> Result<&mut Session, BackendError> {
        if self.slot.is_none() {
            *self.slot = Some(dovecot.connect(&self.upn).await?);
        }
        Ok(self.slot.as_mut().expect("just connected"))
    }

    /// Runs one command, each untagged answer to `each`; `Refused` unless its tagged status
    /// is OK. A broken connection drops the session (the next request reconnects).
    async fn command(
        &mut self,
        dovecot: &Dovecot,
        command: &str,
        each: impl FnMut(&Imap<'_>),
    ) -> Result<(), BackendError> {
        let result = self.command_once(dovecot, command, each).await;
        if matches!(result, Err(BackendError::Io(_))) {
            *self.slot = None;
        }
        result
    }

    async fn command_once(
        &mut self,
        dovecot: &Dovecot,
        command: &str,
        mut each: impl FnMut(&Imap<'_>),
    ) -> Result<(), BackendError> {
        let session = self.session(dovecot).await?;
        let io = |e: &dyn std::fmt::Display| BackendError::Io(format!("{command}: {e}"));
        let id = session.run_command(command).await.map_err(|e| io(&e))?;
        loop {
            let response = tokio::time::timeout(COMMAND_TIMEOUT, session.read_response())
                .await
                .map_err(|_| io(&"timed out"))?
                .map_err(|e| io(&e))?
                .ok_or_else(|| io(&"connection closed"))?;
            if let Imap::Done {
                tag,
                status,
                outcome,
            } = response.parsed()
            {
                if *tag != id {
                    continue;
                }
                return match status {
                    Status::Ok => Ok(()),
                    _ => Err(BackendError::Refused {
                        command: command
                            .split_whitespace()
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" "),
                        text: outcome.information.as_deref().unwrap_or("").to_owned(),
                    }),
                };
            }
            each(response.parsed());
        }
    }

    /// SELECT (read-write) or EXAMINE a folder: its UIDVALIDITY and message count.
    async fn open(
        &mut self,
        dovecot: &Dovecot,
        path: &str,
        write: bool,
    ) -> Result<(u32, u32), BackendError> {
        let verb = if write { "SELECT" } else { "EXAMINE" };
        let (mut validity, mut exists) = (0, 0);
        self.command(dovecot, &format!("{verb} {}", quote(path)), |r| match r {
            Imap::Data { outcome, .. } => {
                if let Some(ResponseCode::UidValidity(v)) = outcome.code {
                    validity = v;
                }
            }
            Imap::MailboxData(MailboxDatum::Exists(n)) => exists = *n,
            _ => {}
        })
        .await?;
        Ok((validity, exists))
    }

    /// The folder's UIDVALIDITY, UIDNEXT, MESSAGES and HIGHESTMODSEQ (STATUS, RFC 3501 and
    /// 7162).
    async fn status(&mut self, dovecot: &Dovecot, path: &str) -> Result<[u64; 4], BackendError> {
        use async_imap::imap_proto::StatusAttribute;
        let mut mark = [0u64; 4];
        self.command(
            dovecot,
            &format!(
                "STATUS {} (UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ)",
                quote(path)
            ),
            |r| {
                if let Imap::MailboxData(MailboxDatum::Status { status, .. }) = r {
                    for s in status {
                        match s {
                            StatusAttribute::UidValidity(v) => mark[0] = u64::from(*v),
                            StatusAttribute::UidNext(v) => mark[1] = u64::from(*v),
                            StatusAttribute::Messages(v) => mark[2] = u64::from(*v),
                            StatusAttribute::HighestModSeq(v) => mark[3] = *v,
                            _ => {}
                        }
                    }
                }
            },
        )
        .await?;
        Ok(mark)
    }
}

/// A folder's key and STATUS after its sync, kept in [`Dovecot::marks`].
type FolderMark = ((String, String), [u64; 4]);

/// An IMAP string (quoted; the fake's folder names are ASCII).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What UID FETCH said about one message.
#[derive(Default)]
struct Fetched {
    uid: u32,
    seen: bool,
    size: u32,
    internal_date: Option<i64>,
    body: Option<Vec<u8>>,
}

/// UID FETCH `set` `items`: one [`Fetched`] per message.
async fn fetch(
    dovecot: &Dovecot,
    conn: &mut Conn,
    set: &str,
    items: &str,
) -> Result<Vec<Fetched>, BackendError> {
    let mut out = Vec::new();
    conn.command(dovecot, &format!("UID FETCH {set} {items}"), |r| {
        if let Imap::Fetch(_, attributes) = r {
            let mut f = Fetched::default();
            for a in attributes {
                match a {
                    AttributeValue::Uid(u) => f.uid = *u,
                    AttributeValue::Flags(flags) => {
                        f.seen = flags.iter().any(|x| x.eq_ignore_ascii_case("\\Seen"));
                    }
                    AttributeValue::Rfc822Size(s) => f.size = *s,
                    AttributeValue::InternalDate(d) => {
                        f.internal_date = parse_internal_date(d.as_ref())
                    }
                    AttributeValue::BodySection { data, .. } => {
                        f.body = data.as_ref().map(|d| d.to_vec());
                    }
                    AttributeValue::Rfc822(Some(d)) => f.body = Some(d.to_vec()),
                    _ => {}
                }
            }
            if f.uid != 0 {
                out.push(f);
            }
        }
    })
    .await?;
    Ok(out)
}

/// `02-Dec-2026 16:41:47 +0000` as unix seconds.
fn parse_internal_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let (date, rest) = text.trim().split_once(' ')?;
    let (clock, zone) = rest.trim().split_once(' ')?;
    let mut d = date.split('-');
    let day: u32 = d.next()?.trim().parse().ok()?;
    let month_name = d.next()?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month_name))?
        + 1;
    let year: i64 = d.next()?.parse().ok()?;
    let iso = format!("{year:04}-{month:02}-{day:02}T{clock}Z");
    let utc = time::parse_iso(&iso)?;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits = zone.trim_start_matches(['+', '-']);
    let hours: i64 = digits.get(0..2)?.parse().ok()?;
    let minutes: i64 = digits.get(2..4)?.parse().ok()?;
    Some(utc - sign * (hours * 3600 + minutes * 60))
}

/// The header block of a MIME message (what the model keeps of an IMAP message).
pub(crate) fn header_block(mime: &[u8]) -> Vec<u8> {
    mime[..crate::send::header_end(mime)].to_vec()
}

/// The model folder for each selectable IMAP folder, created where missing: `INBOX` is the
/// Inbox, a top-level folder named like a well-known folder (Dovecot's special-use folders
/// carry Exchange's English names) is that folder, anything else a folder under its parent.
fn ensure_folders(mailbox: &mut Mailbox, paths: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let root = mailbox.root_id();
    for path in paths {
        let parts: Vec<&str> = path.split('/').collect();
        let mut parent = root.clone();
        let mut id = String::new();
        for (i, part) in parts.iter().enumerate() {
            let prefix = parts[..=i].join("/");
            let well_known = if i == 0 {
                if part.eq_ignore_ascii_case("INBOX") {
                    Some("inbox")
                } else {
                    WELL_KNOWN_FOLDERS
                        .iter()
                        .find(|(_, display)| display.eq_ignore_ascii_case(part))
                        .map(|(name, _)| *name)
                }
            } else {
                None
            };
            let found = mailbox
                .folders
                .iter()
                .position(|f| match well_known {
                    Some(w) => f.well_known == Some(w),
                    None => {
                        f.parent_id == parent
                            && f.well_known.is_none_or(|w| w != ROOT)
                            && f.display_name.eq_ignore_ascii_case(part)
                    }
                })
                .unwrap_or_else(|| {
                    let _ = mailbox.create_folder(&parent, part, false);
                    mailbox.folders.len() - 1
                });
            let folder = &mut mailbox.folders[found];
            if folder.imap_path.is_none() {
                folder.imap_path = Some(prefix);
            }
            id = folder.id.clone();
            parent = id.clone();
        }
        out.push((id, path.clone()));
    }
    out
}

/// Brings the model of `conn`'s mailbox up to date with Dovecot.
pub(crate) async fn sync(shared: &Shared, conn: &mut Conn) -> Result<(), GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let upn = conn.upn.clone();
    let mut paths = Vec::new();
    conn.command(dovecot, "LIST \"\" \"*\"", |r| {
        if let Imap::MailboxData(MailboxDatum::List(list)) = r
            && !list.name_attributes.iter().any(|a| match a {
                NameAttribute::NoSelect => true,
                NameAttribute::Extension(x) => x.eq_ignore_ascii_case("\\NonExistent"),
                _ => false,
            })
        {
            paths.push(list.name.to_string());
        }
    })
    .await?;
    let folders = {
        let mut store = shared.store();
        let mailbox = store.mailbox_for_request(&upn)?;
        ensure_folders(mailbox, &paths)
    };
    // STATUS of the folder this session has selected answers from the session's view, which
    // NOOP brings up to date (RFC 3501 6.3.10: STATUS is not meant for the selected folder).
    conn.command(dovecot, "NOOP", |_| {}).await?;
    for (folder_id, path) in folders {
        if let Some((key, mark)) =
            sync_folder(shared, dovecot, conn, &upn, &folder_id, &path).await?
        {
            crate::limits::lock(&dovecot.marks).insert(key, mark);
        }
    }
    Ok(())
}

async fn sync_folder(
    shared: &Shared,
    dovecot: &Dovecot,
    conn: &mut Conn,
    upn: &str,
    folder_id: &str,
    path: &str,
) -> Result<Option<FolderMark>, GraphError> {
    let key = (upn.to_ascii_lowercase(), path.to_owned());
    let mark = conn.status(dovecot, path).await?;
    if crate::limits::lock(&dovecot.marks).get(&key) == Some(&mark) {
        return Ok(None);
    }
    let (validity, exists) = conn.open(dovecot, path, false).await?;
    let present = if exists > 0 {
        fetch(dovecot, conn, "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)").await?
    } else {
        Vec::new()
    };
    // What changed, decided under the lock; bodies of new messages fetched after it.
    let new: Vec<&Fetched> = {
        let mut store = shared.store();
        let mailbox = store.mailbox_for_request(upn)?;
        let known: HashMap<u32, u64> = mailbox
            .messages
            .values()
            .filter(|m| m.folder_id == folder_id)
            .filter_map(|m| {
                m.imap
                    .filter(|l| l.uid_validity == validity)
                    .map(|l| (l.uid, m.key))
            })
            .collect();
        let stale: Vec<u64> = mailbox
            .messages
            .values()
            .filter(|m| m.folder_id == folder_id)
            .filter(|m| {
                m.imap.is_some_and(|l| {
                    l.uid_validity != validity || !present.iter().any(|p| p.uid == l.uid)
                })
            })
            .map(|m| m.key)
            .collect();
        for key in stale {
            mailbox.purge(key);
        }
        let mut new = Vec::new();
        for p in &present {
            match known.get(&p.uid) {
                Some(key) => {
                    let key = *key;
                    if mailbox
                        .messages
                        .get(&key)
                        .is_some_and(|m| m.is_read != p.seen)
                    {
                        if let Some(m) = mailbox.messages.get_mut(&key) {
                            m.is_read = p.seen;
                        }
                        mailbox.touch(key);
                    }
                }
                None => new.push(p),
            }
        }
        new
    };
    if new.is_empty() {
        return Ok(Some((key, mark)));
    }
    let set: Vec<String> = new.iter().map(|p| p.uid.to_string()).collect();
    let bodies = fetch(dovecot, conn, &set.join(","), "(UID BODY.PEEK[])").await?;
    let mut store = shared.store();
    let mailbox = store.mailbox_for_request(upn)?;
    for p in new {
        // Expunged between the two fetches: the next sync does not see it either.
        let Some(body) = bodies
            .iter()
            .find(|b| b.uid == p.uid)
            .and_then(|b| b.body.clone())
        else {
            continue;
        };
        let options = DeliverOptions {
            received: p
                .internal_date
                .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)),
            is_read: p.seen,
            store_size: Some(u64::from(p.size) + dovecot.config.store_size_overhead),
        };
        let head = header_block(&body);
        let ids = mailbox.deliver(folder_id, body, &options);
        if let Ok(key) = mailbox.message_key(&ids.immutable_id)
            && let Some(m) = mailbox.messages.get_mut(&key)
        {
            m.mime = Arc::new(head);
            m.imap = Some(ImapLoc {
                uid_validity: validity,
                uid: p.uid,
            });
        }
    }
    Ok(Some((key, mark)))
}

/// Where a message is: its model key, folder path and IMAP location.
struct Located {
    key: u64,
    path: Option<String>,
    loc: Option<ImapLoc>,
    mime: Arc<Vec<u8>>,
}

fn locate(shared: &Shared, upn: &str, id: &str) -> Result<Located, GraphError> {
    let mut store = shared.store();
    let mailbox = store.mailbox_for_request(upn)?;
    let key = mailbox.message_key(id)?;
    let m = mailbox
        .messages
        .get(&key)
        .ok_or_else(GraphError::item_not_found)?;
    let path = mailbox
        .folders
        .iter()
        .find(|f| f.id == m.folder_id)
        .and_then(|f| f.imap_path.clone());
    Ok(Located {
        key,
        path,
        loc: m.imap,
        mime: Arc::clone(&m.mime),
    })
}

/// The whole MIME of a message: `BODY.PEEK[]` for an IMAP message (404 if Dovecot no longer
/// has it), the model's copy otherwise.
pub(crate) async fn value(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
) -> Result<Arc<Vec<u8>>, GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let upn = conn.upn.clone();
    let at = locate(shared, &upn, id)?;
    let (Some(path), Some(loc)) = (at.path, at.loc) else {
        return Ok(at.mime);
    };
    let (validity, _) = conn.open(dovecot, &path, false).await?;
    if validity != loc.uid_validity {
        return Err(GraphError::item_not_found());
    }
    fetch(dovecot, conn, &loc.uid.to_string(), "(UID BODY.PEEK[])")
        .await?
        .into_iter()
        .find(|f| f.uid == loc.uid)
        .and_then(|f| f.body)
        .map(Arc::new)
        .ok_or_else(GraphError::item_not_found)
}

/// Mirrors a PATCHed `isRead` to `\Seen`.
pub(crate) async fn set_seen(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
    seen: bool,
) -> Result<(), GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let upn = conn.upn.clone();
    let at = locate(shared, &upn, id)?;
    let (Some(path), Some(loc)) = (at.path, at.loc) else {
        return Ok(());
    };
    conn.open(dovecot, &path, true).await?;
    let sign = if seen { '+' } else { '-' };
    conn.command(
        dovecot,
        &format!("UID STORE {} {sign}FLAGS.SILENT (\\Seen)", loc.uid),
        |_| {},
    )
    .await?;
    Ok(())
}

/// Moves a message in Dovecot to `destination` (a model folder id) before the model moves it;
/// returns the fix-up to apply once the model has: the message's new IMAP location (None when
/// the destination has no IMAP folder, then with the whole MIME the model keeps instead).
pub(crate) async fn move_to(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
    destination: &str,
) -> Result<Fixup, GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let upn = conn.upn.clone();
    let at = locate(shared, &upn, id)?;
    let dest_path = {
        let mut store = shared.store();
        let mailbox = store.mailbox_for_request(&upn)?;
        mailbox.folder(destination)?.imap_path.clone()
    };
    match (at.path, at.loc, dest_path) {
        (Some(path), Some(loc), Some(dest)) => {
            conn.open(dovecot, &path, true).await?;
            let mut moved = None;
            conn.command(
                dovecot,
                &format!("UID MOVE {} {}", loc.uid, quote(&dest)),
                |r| {
                    if let Imap::Data { outcome, .. } = r
                        && let Some(ResponseCode::CopyUid(validity, _, to)) = &outcome.code
                    {
                        moved = first_uid(to).map(|uid| ImapLoc {
                            uid_validity: *validity,
                            uid,
                        });
                    }
                },
            )
            .await?;
            let Some(moved) = moved else {
                return Err(BackendError::Refused {
                    command: "UID MOVE".to_owned(),
                    text: "no COPYUID in the answer (is UIDPLUS enabled?)".to_owned(),
                }
                .into());
            };
            Ok(Fixup {
                key: at.key,
                loc: Some(moved),
                mime: None,
            })
        }
        (Some(path), Some(loc), None) => {
            let mime = value(shared, conn, id).await?;
            expunge(dovecot, conn, &path, loc).await?;
            Ok(Fixup {
                key: at.key,
                loc: None,
                mime: Some(mime),
            })
        }
        (_, _, Some(dest)) => {
            let loc = append(shared, conn, &dest, &at.mime, false).await?;
            Ok(Fixup {
                key: at.key,
                loc,
                mime: Some(Arc::new(header_block(&at.mime))),
            })
        }
        (_, _, None) => Ok(Fixup {
            key: at.key,
            loc: None,
            mime: None,
        }),
    }
}

fn first_uid(set: &[UidSetMember]) -> Option<u32> {
    set.first().map(|m| match m {
        UidSetMember::Uid(u) => *u,
        UidSetMember::UidRange(r) => *r.start(),
    })
}

/// The model's side of a move done in Dovecot, applied after the model moved the message.
pub(crate) struct Fixup {
    key: u64,
    loc: Option<ImapLoc>,
    mime: Option<Arc<Vec<u8>>>,
}

impl Fixup {
    pub(crate) fn apply(self, shared: &Shared, upn: &str) {
        let mut store = shared.store();
        if let Some(mailbox) = store.mailbox_mut(upn)
            && let Some(m) = mailbox.messages.get_mut(&self.key)
        {
            m.imap = self.loc;
            if let Some(mime) = self.mime {
                m.mime = mime;
            }
        }
    }
}

async fn expunge(
    dovecot: &Dovecot,
    conn: &mut Conn,
    path: &str,
    loc: ImapLoc,
) -> Result<(), GraphError> {
    conn.open(dovecot, path, true).await?;
    conn.command(
        dovecot,
        &format!("UID STORE {} +FLAGS.SILENT (\\Deleted)", loc.uid),
        |_| {},
    )
    .await?;
    conn.command(dovecot, &format!("UID EXPUNGE {}", loc.uid), |_| {})
        .await?;
    Ok(())
}

/// Removes a message from Dovecot (permanentDelete), before the model purges it.
pub(crate) async fn permanent_delete(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
) -> Result<(), GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let upn = conn.upn.clone();
    let at = locate(shared, &upn, id)?;
    if let (Some(path), Some(loc)) = (at.path, at.loc) {
        expunge(dovecot, conn, &path, loc).await?;
    }
    Ok(())
}

/// APPENDs `mime` to the IMAP folder `path`; the new message's location (the UID at or above
/// the folder's UIDNEXT before the APPEND: the highest, if a delivery raced it).
pub(crate) async fn append(
    shared: &Shared,
    conn: &mut Conn,
    path: &str,
    mime: &[u8],
    seen: bool,
) -> Result<Option<ImapLoc>, GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let mut uid_next = 0;
    conn.command(
        dovecot,
        &format!("STATUS {} (UIDNEXT UIDVALIDITY)", quote(path)),
        |r| {
            if let Imap::MailboxData(MailboxDatum::Status { status, .. }) = r {
                for s in status {
                    if let async_imap::imap_proto::StatusAttribute::UidNext(n) = s {
                        uid_next = *n;
                    }
                }
            }
        },
    )
    .await?;
    let session = conn.session(dovecot).await?;
    let flags = if seen { Some("(\\Seen)") } else { None };
    let appended = tokio::time::timeout(COMMAND_TIMEOUT, session.append(path, flags, None, mime))
        .await
        .map_err(|_| BackendError::Io("APPEND timed out".to_owned()))?;
    if let Err(e) = appended {
        return Err(match e {
            async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
                BackendError::Refused {
                    command: "APPEND".to_owned(),
                    text,
                }
            }
            other => {
                *conn.slot = None;
                BackendError::Io(format!("APPEND: {other}"))
            }
        }
        .into());
    }
    let (validity, _) = conn.open(dovecot, path, false).await?;
    let mut uids = BTreeSet::new();
    conn.command(
        dovecot,
        &format!("UID SEARCH UID {}:*", uid_next.max(1)),
        |r| {
            if let Imap::MailboxData(MailboxDatum::Search(found)) = r {
                uids.extend(found.iter().copied().filter(|u| *u >= uid_next));
            }
        },
    )
    .await?;
    Ok(uids.last().map(|uid| ImapLoc {
        uid_validity: validity,
        uid: *uid,
    }))
}

/// Creates the IMAP folder for a new Graph folder under `parent_id`; its path.
pub(crate) async fn create_folder(
    shared: &Shared,
    conn: &mut Conn,
    parent_id: &str,
    name: &str,
) -> Result<Option<String>, GraphError> {
    let dovecot = shared.dovecot.as_ref().expect("Dovecot backend");
    let upn = conn.upn.clone();
    if name.contains('/') || !name.is_ascii() {
        return Err(GraphError::bad_request(
            "fake-graph's Dovecot backend takes ASCII folder names without '/' only.",
        ));
    }
    let path = {
        let mut store = shared.store();
        let mailbox = store.mailbox_for_request(&upn)?;
        let parent = mailbox.folder(parent_id)?;
        if parent.well_known == Some(ROOT) {
            Some(name.to_owned())
        } else {
            parent.imap_path.as_ref().map(|p| format!("{p}/{name}"))
        }
    };
    if let Some(path) = &path {
        conn.command(dovecot, &format!("CREATE {}", quote(path)), |_| {})
            .await?;
    }
    Ok(path)
}

/// Hands outgoing MIME to Postfix: submission with STARTTLS and AUTH PLAIN as the sender, or,
/// above the submission's size limit, the MX port (STARTTLS if offered, no AUTH).
pub(crate) async fn submit(
    config: &DovecotConfig,
    login: &str,
    from: &str,
    recipients: &[String],
    mime: &[u8],
) -> Result<(), GraphError> {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let smtp = |e: &dyn std::fmt::Display| GraphError::from(BackendError::Smtp(e.to_string()));
    let pem = std::fs::read(&config.ca_file).map_err(|e| smtp(&e))?;
    let ca = lettre::transport::smtp::client::Certificate::from_pem(&pem).map_err(|e| smtp(&e))?;
    let tls = TlsParameters::builder(config.tls_name.clone())
        .add_root_certificate(ca)
        .build()
        .map_err(|e| smtp(&e))?;
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
        .timeout(Some(COMMAND_TIMEOUT));
    let transport = match config.mx_port {
        Some(mx) if mime.len() as u64 > config.submission_size_limit => {
            builder.port(mx).tls(Tls::Opportunistic(tls)).build()
        }
        _ => builder
            .port(config.submission_port)
            .tls(Tls::Required(tls))
            .credentials(Credentials::new(login.to_owned(), config.password.clone()))
            .authentication(vec![Mechanism::Plain])
            .build(),
    };
    let from = from.parse().map_err(|e| smtp(&e))?;
    let to = recipients
        .iter()
        .map(|r| r.parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| smtp(&e))?;
    let envelope = lettre::address::Envelope::new(Some(from), to).map_err(|e| smtp(&e))?;
    transport
        .send_raw(&envelope, mime)
        .await
        .map_err(|e| smtp(&e))?;
    Ok(())
}
