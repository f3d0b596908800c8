//! A faithful fake of Microsoft Graph's Outlook mail API (v1.0), for mailintake's tests, where
//! the real Graph cannot be reached. It is built to Microsoft's documentation — endpoints, JSON
//! shapes, headers, error codes, throttling — not to mailintake's needs: the product is also
//! run against other implementations. The README names the page behind every behaviour and
//! the readings chosen where the pages are ambiguous. Read in this order:
//!
//! - [`Config`], [`User`], [`Limits`]: the fake tenant's mailboxes and Outlook's limits, values
//!   built in code (or from the binary's flags).
//! - `store`: users, folders, messages with immutable and REST ids, the change sequence
//!   delta is computed from, and the sync states behind `$skiptoken` / `$deltatoken`. No IO.
//! - `representation`: message and folder JSON, `$select`, the `PidTagMessageSize` expand.
//! - `limits`: Outlook's throttling (concurrency, requests and upload bytes per window) and
//!   injected 429/503s.
//! - [`GraphError`]: Graph's error JSON and the catalogue of codes.
//! - `server`: the HTTP routes (`/v1.0/users/{id | userPrincipalName}/…`, `/v1.0/me/…`),
//!   authentication with fake-entra's tokens, the request log; `handlers`: one method per
//!   operation; `control`: the `/_fake/…`
//!   control API; `send`: what Exchange does to the MIME of `sendMail`. [`FakeGraph`] is the handle that starts and stops it and drives it from tests.
//!
//! Invariants: every answer to a Graph route is Graph's JSON (errors included), never a panic
//! or axum's plain text; a token is accepted only if fake-entra's key signed it for the Graph
//! audience; a request holds a concurrency slot until its response body is finished or
//! dropped; tokens are never logged.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fake_graph::{Config, FakeGraph, User, DeliverOptions};
//! let key = fake_entra::SigningKey::generate()?;
//! let graph = FakeGraph::start(
//!     Config::default().with_user(User::new("support@helpdesk.test")),
//!     key,
//!     "127.0.0.1:0".parse()?,
//! ).await?;
//! graph.deliver("support@helpdesk.test", "inbox", b"Subject: hi\r\n\r\nbody\r\n".to_vec(), DeliverOptions::default())?;
//! println!("Graph at {}", graph.graph_url());
//! graph.shutdown().await;
//! # Ok(()) }
//! ```

mod control;
mod dovecot;
mod drafts;
mod error;
mod handlers;
mod ids;
mod limits;
mod representation;
mod send;
mod server;
mod store;
mod time;

#[cfg(test)]
mod dovecot_tests;
#[cfg(test)]
mod http_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use fake_entra::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use dovecot::DovecotConfig;
pub use error::GraphError;
pub use store::STORE_SIZE_OVERHEAD;

use limits::{Limiter, lock};
use store::{Mailbox, Store};

/// The Graph resource (`aud` of v1.0 access tokens for Graph).
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// Microsoft Graph's application ID, which is also accepted as `aud`.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// A user with an Exchange Online mailbox (or without one: `mailbox_enabled = false`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// `userPrincipalName`.
    pub upn: String,
    /// The object id (GUID); generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The primary SMTP address; the UPN when absent.
    #[serde(default)]
    pub mail: Option<String>,
    /// `displayName`; the UPN when absent.
    #[serde(default)]
    pub display_name: Option<String>,
    /// False for a directory user without a mailbox: Graph answers
    /// `MailboxNotEnabledForRESTAPI`.
    #[serde(default = "yes")]
    pub mailbox_enabled: bool,
}

fn yes() -> bool {
    true
}

impl User {
    /// A user with a mailbox.
    pub fn new(upn: &str) -> User {
        User {
            upn: upn.to_owned(),
            id: None,
            mail: None,
            display_name: None,
            mailbox_enabled: true,
        }
    }
}

/// Whom Outlook's concurrency limit counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConcurrencyScope {
    /// Per app ID across all mailboxes: the throttling page's current text (the default).
    App,
    /// Per app ID and mailbox: the older reading, and what the error's name suggests.
    AppAndMailbox,
}

/// Outlook's limits (https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits),
/// adjustable so tests can reach them quickly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    /// Concurrent requests (4).
    pub concurrent_requests: usize,
    /// Whom the concurrency limit counts together.
    pub concurrency_scope: ConcurrencyScope,
    /// `Retry-After` of a concurrency 429.
    #[serde(with = "secs")]
    pub concurrency_retry_after: Duration,
    /// Requests per window per app and mailbox (10,000).
    pub requests_per_window: usize,
    /// The request window (10 minutes).
    #[serde(with = "secs")]
    pub request_window: Duration,
    /// Upload bytes (PATCH, POST, PUT bodies) per window per app and mailbox (150 MB, read
    /// as 150 × 2^20 bytes).
    pub upload_bytes_per_window: u64,
    /// The upload window (5 minutes).
    #[serde(with = "secs")]
    pub upload_window: Duration,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Ok(Duration::from_secs_f64(secs.max(0.0)))
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            concurrent_requests: 4,
            concurrency_scope: ConcurrencyScope::App,
            concurrency_retry_after: Duration::from_secs(1),
            requests_per_window: 10_000,
            request_window: Duration::from_secs(600),
            upload_bytes_per_window: 150 * 1024 * 1024,
            upload_window: Duration::from_secs(300),
        }
    }
}

/// The fake tenant.
#[derive(Clone, Debug)]
pub struct Config {
    /// The users (mailboxes).
    pub users: Vec<User>,
    /// Outlook's limits.
    pub limits: Limits,
    /// Headers Exchange removes from MIME it sends (compared case-insensitively); by default
    /// `Auto-Submitted`, which Exchange strips even from MIME sends (see README).
    pub strip_headers_on_send: Vec<String>,
    /// Also remove `X-` headers Exchange has no mapping for (all but X-Priority,
    /// X-MSMail-Priority, X-Auto-Response-Suppress, X-Message-Flag, X-MS-Has-Attach,
    /// X-MS-TNEF-Correlator, X-Mailer and `X-MS-…`); true by default (see README).
    pub strip_unknown_x_headers: bool,
    /// Whether Exchange gives messages sent from its mailboxes an `internetMessageId` of its own
    /// in place of the MIME's Message-ID ([`OwnMessageIds::Never`] by default: Exchange Online
    /// keeps a MIME message's Message-ID). A client must not rely on it either way: it reads the
    /// draft's, or the Sent Items copy's, `internetMessageId`.
    pub own_message_ids: OwnMessageIds,
    /// Page size of delta and lists without `Prefer: odata.maxpagesize` / `$top` (10).
    pub default_page_size: usize,
    /// The largest page served (1000); larger preferences are capped.
    pub max_page_size: usize,
    /// How long a `$value` download takes before its body comes (none by default): a mailbox's
    /// store far away, so that requests a client makes side by side overlap in time whatever
    /// the load of the machine running the test.
    pub value_latency: Option<Duration>,
    /// One stdout line per request (method, path, mailbox, status; never tokens).
    pub log_requests: bool,
    /// Serve the users' real mailboxes in the mail stack's Dovecot (over IMAP) instead of the
    /// in-memory store, and send through its Postfix (see README, "Dovecot backend").
    pub dovecot: Option<DovecotConfig>,
    /// Keep each mailbox's ids, change sequence and delta sync states in a JSON file under this
    /// directory, so they survive a restart of the fake (both backends; the in-memory one
    /// keeps its messages there too).
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            users: Vec::new(),
            limits: Limits::default(),
            strip_headers_on_send: vec!["Auto-Submitted".to_owned()],
            strip_unknown_x_headers: true,
            own_message_ids: OwnMessageIds::Never,
            default_page_size: 10,
            max_page_size: 1000,
            value_latency: None,
            log_requests: false,
            dovecot: None,
            state_dir: None,
        }
    }
}

impl Config {
    /// With one more user.
    pub fn with_user(mut self, user: User) -> Config {
        self.users.push(user);
        self
    }
}

/// When the fake gives a message sent from one of its mailboxes a Message-ID of its own
/// ([`Config::own_message_ids`]): the draft's and the Sent Items copy's `internetMessageId`
/// and the recipients' `Message-ID` field are then that one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OwnMessageIds {
    /// The MIME's Message-ID is kept (one is added only when it has none).
    #[default]
    Never,
    /// When a draft is made from MIME (`POST …/messages`): the draft shows the new one.
    AtDraftCreation,
    /// When the message is sent (`sendMail`, `POST …/send`): the draft still shows the MIME's;
    /// the Sent Items copy and the recipients' copies show the new one.
    AtSend,
}

/// A 429 or 503 to answer the next requests with ([`FakeGraph::inject`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThrottleFault {
    /// 429 `ApplicationThrottled` with `Retry-After`.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after: Duration,
    },
    /// 503 with `Retry-After`.
    ServiceUnavailable {
        /// The `Retry-After` value.
        retry_after: Duration,
    },
    /// Any Graph error.
    Error(GraphError),
}

/// How a message's `$value` download misbehaves ([`FakeGraph::set_value_fault`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueFault {
    /// Wait, then answer with this error (e.g. 504 after 30 s, as large downloads end).
    Fail {
        /// The error answered.
        error: GraphError,
        /// How long before answering.
        after: Duration,
    },
    /// Send the headers and this many bytes, then stall until [`FakeGraph::release_stalls`]
    /// (then the rest follows) or shutdown: for client timeouts.
    Stall {
        /// Bytes sent before stalling.
        after_bytes: usize,
    },
    /// Send the headers and this many bytes, then break the connection.
    Abort {
        /// Bytes sent before the break.
        after_bytes: usize,
    },
}

/// How a test puts a message into a folder ([`FakeGraph::deliver`]).
#[derive(Clone, Debug, Default)]
pub struct DeliverOptions {
    /// `receivedDateTime`; now when absent.
    pub received: Option<SystemTime>,
    /// `isRead`.
    pub is_read: bool,
    /// `PidTagMessageSize`; MIME size + [`STORE_SIZE_OVERHEAD`] when absent.
    pub store_size: Option<u64>,
}

/// The two ids of a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageIds {
    /// The id with `Prefer: IdType="ImmutableId"`.
    pub immutable_id: String,
    /// The default id (changes when the message moves).
    pub rest_id: String,
}

/// A message as a test sees it ([`FakeGraph::messages`]).
#[derive(Clone, Debug)]
pub struct MessageSnapshot {
    /// Its ids now.
    pub ids: MessageIds,
    /// The folder's well-known name, or its display name.
    pub folder: String,
    /// `isRead`.
    pub is_read: bool,
    /// `PidTagMessageSize`.
    pub store_size: u64,
    /// `subject`.
    pub subject: String,
    /// The MIME bytes `$value` serves.
    pub mime: Vec<u8>,
}

/// One Graph request, as [`FakeGraph::requests`] reports it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// When it arrived.
    #[serde(skip)]
    pub at: SystemTime,
    /// Milliseconds since the epoch, for the control API.
    pub at_ms: u128,
    /// The method.
    pub method: String,
    /// The path (no query).
    pub path: String,
    /// The mailbox (UPN) it addressed, if any.
    pub mailbox: Option<String>,
    /// The token's `appid`, if authenticated.
    pub app: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Graph's error code, for errors.
    pub error_code: Option<String>,
}

pub(crate) struct Shared {
    pub key: SigningKey,
    pub config: Config,
    pub store: Mutex<Store>,
    pub limiter: Arc<Limiter>,
    pub records: Mutex<Vec<RequestRecord>>,
    /// Apps scoped to some mailboxes (RBAC for Applications / Application Access Policy).
    pub app_scopes: Mutex<HashMap<String, Vec<String>>>,
    /// Bumped by `release_stalls`; stalled `$value` bodies wait for a change.
    pub stall_release: watch::Sender<u64>,
    pub shutdown: watch::Receiver<bool>,
    pub base_url: String,
    /// The Dovecot backend, when configured.
    pub dovecot: Option<dovecot::Dovecot>,
    /// Open attachment upload sessions, by the token in their uploadUrl.
    pub uploads: Mutex<HashMap<String, drafts::Upload>>,
}

impl Shared {
    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub(crate) async fn until_shutdown(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// A running fake Graph on loopback. Dropping it stops the server; [`FakeGraph::shutdown`]
/// also waits for it.
pub struct FakeGraph {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGraph")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl FakeGraph {
    /// Binds `listen` (loopback only; port 0 picks a free port) and serves until shutdown.
    /// `key` is the fake Entra tenant's signing key: only tokens it signed are accepted.
    pub async fn start(
        config: Config,
        key: SigningKey,
        listen: SocketAddr,
    ) -> anyhow::Result<FakeGraph> {
        if !listen.ip().is_loopback() {
            bail!("fake-graph listens on loopback only (127.0.0.1 or ::1), not on {listen}");
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let local_addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut store = Store::default();
        for user in &config.users {
            if store.mailbox(&user.upn).is_some() {
                bail!("user {} is configured twice", user.upn);
            }
            store
                .mailboxes
                .push(Mailbox::load_or_new(config.state_dir.as_deref(), user)?);
        }
        let dovecot = config
            .dovecot
            .clone()
            .map(dovecot::Dovecot::new)
            .transpose()?;
        let shared = Arc::new(Shared {
            key,
            dovecot,
            uploads: Mutex::default(),
            limiter: Arc::new(Limiter::new(config.limits.clone())),
            config,
            store: Mutex::new(store),
            records: Mutex::default(),
            app_scopes: Mutex::default(),
            stall_release: watch::channel(0).0,
            shutdown: shutdown_rx.clone(),
            base_url: format!("http://{local_addr}"),
        });
        let app = router(Arc::clone(&shared));
        let server = fake_entra::serve("fake-graph", listener, app, shutdown_rx);
        Ok(FakeGraph {
            shared,
            local_addr,
            shutdown_tx,
            server: Some(server),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT` (where `https://graph.microsoft.com` would be).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `http://127.0.0.1:PORT/v1.0`.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.shared.base_url)
    }

    /// Adds a user (mailbox). False if one with that name exists.
    pub fn add_user(&self, user: User) -> bool {
        let mut store = self.shared.store();
        if store.mailbox(&user.upn).is_some() {
            return false;
        }
        match Mailbox::load_or_new(self.shared.config.state_dir.as_deref(), &user) {
            Ok(mailbox) => store.mailboxes.push(mailbox),
            Err(e) => {
                eprintln!("fake-graph: {e:#}; {} starts empty", user.upn);
                store.mailboxes.push(Mailbox::new(&user));
            }
        }
        true
    }

    /// The user's object id.
    pub fn user_id(&self, user: &str) -> Option<String> {
        self.shared.store().mailbox(user).map(|m| m.id.clone())
    }

    /// Puts `mime` into `folder` (id, well-known name or display name) of `user`, as mail
    /// delivery would.
    pub fn deliver(
        &self,
        user: &str,
        folder: &str,
        mime: Vec<u8>,
        options: DeliverOptions,
    ) -> anyhow::Result<MessageIds> {
        if self.shared.dovecot.is_some() {
            bail!(
                "fake-graph serves Dovecot's mailboxes: deliver mail to Dovecot (LMTP, the stack's port 14024), not into the fake"
            );
        }
        let mut store = self.shared.store();
        let mailbox = store
            .mailbox_mut(user)
            .with_context(|| format!("no user {user}"))?;
        let folder_id = folder_by_any_name(mailbox, folder)?;
        let ids = mailbox.deliver(&folder_id, mime, &options);
        drop(store);
        self.persist(false);
        Ok(ids)
    }

    /// Creates a folder under the root (as `POST /mailFolders` would); returns its id.
    pub fn create_folder(&self, user: &str, display_name: &str) -> anyhow::Result<String> {
        let mut store = self.shared.store();
        let mailbox = store
            .mailbox_mut(user)
            .with_context(|| format!("no user {user}"))?;
        let root = mailbox.root_id();
        mailbox
            .create_folder(&root, display_name, false)
            .map(|f| f.id)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Sets a message's `PidTagMessageSize` (by either id), e.g. to make it disagree with the
    /// MIME size.
    pub fn set_store_size(&self, user: &str, message_id: &str, size: u64) -> anyhow::Result<()> {
        self.with_message(user, message_id, |m| m.store_size = size)
    }

    /// Makes the message's `$value` fail, stall or break (None: normal again).
    pub fn set_value_fault(
        &self,
        user: &str,
        message_id: &str,
        fault: Option<ValueFault>,
    ) -> anyhow::Result<()> {
        self.with_message(user, message_id, |m| m.value_fault = fault)
    }

    fn with_message(
        &self,
        user: &str,
        message_id: &str,
        change: impl FnOnce(&mut store::Message),
    ) -> anyhow::Result<()> {
        let mut store = self.shared.store();
        let mailbox = store
            .mailbox_mut(user)
            .with_context(|| format!("no user {user}"))?;
        let key = mailbox
            .message_key(message_id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(m) = mailbox.messages.get_mut(&key) {
            change(m);
        }
        drop(store);
        self.persist(true);
        Ok(())
    }

    /// Writes the mailboxes to the state dir, if one is configured (`force`: even those whose
    /// change sequence did not move).
    fn persist(&self, force: bool) {
        let Some(dir) = &self.shared.config.state_dir else {
            return;
        };
        let mut store = self.shared.store();
        for mailbox in &mut store.mailboxes {
            if let Err(e) = mailbox.save(dir, force) {
                eprintln!(
                    "fake-graph: cannot write the state of {} to {}: {e}",
                    mailbox.upn,
                    dir.display()
                );
            }
        }
    }

    /// Lets every stalled `$value` download continue.
    pub fn release_stalls(&self) {
        self.shared.stall_release.send_modify(|n| *n += 1);
    }

    /// Expires the delta state of `folder` (None: all folders) of `user`: its `@odata.nextLink`
    /// and `@odata.deltaLink` URLs then answer 410 `SyncStateNotFound`. Returns how many
    /// tokens expired.
    pub fn expire_delta_tokens(&self, user: &str, folder: Option<&str>) -> anyhow::Result<usize> {
        let mut store = self.shared.store();
        let mailbox = store
            .mailbox_mut(user)
            .with_context(|| format!("no user {user}"))?;
        let folder_id = folder.map(|f| folder_by_any_name(mailbox, f)).transpose()?;
        let n = mailbox.expire_tokens(folder_id.as_deref());
        drop(store);
        self.persist(true);
        Ok(n)
    }

    /// Answers the next `times` Graph requests (to `mailbox`, or any) with `fault`.
    pub fn inject(&self, fault: ThrottleFault, times: usize, mailbox: Option<&str>) {
        self.shared
            .limiter
            .inject(fault, times, mailbox.map(str::to_owned));
    }

    /// Drops queued faults.
    pub fn clear_faults(&self) {
        self.shared.limiter.clear_faults();
    }

    /// Changes the limits while running.
    pub fn set_limits(&self, limits: Limits) {
        self.shared.limiter.set_limits(limits);
    }

    /// Scopes `app` to these mailboxes only (RBAC for Applications or an Application Access
    /// Policy); other mailboxes answer 403 `ErrorAccessDenied`. An empty list lifts the scope.
    pub fn restrict_app(&self, app: &str, mailboxes: &[&str]) {
        let mut scopes = lock(&self.shared.app_scopes);
        if mailboxes.is_empty() {
            scopes.remove(&app.to_ascii_lowercase());
        } else {
            scopes.insert(
                app.to_ascii_lowercase(),
                mailboxes.iter().map(|m| m.to_ascii_lowercase()).collect(),
            );
        }
    }

    /// Every Graph request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.records).clone()
    }

    /// How many Graph requests addressed `mailbox` (throttled ones included).
    pub fn request_count(&self, mailbox: &str) -> usize {
        lock(&self.shared.records)
            .iter()
            .filter(|r| {
                r.mailbox
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(mailbox))
            })
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.records).clear();
    }

    /// The most requests of `app` that were in flight at once (per the concurrency scope:
    /// pass the mailbox for [`ConcurrencyScope::AppAndMailbox`], "" for [`ConcurrencyScope::App`]).
    pub fn peak_concurrency(&self, app: &str, mailbox: &str) -> usize {
        self.shared.limiter.peak(app, mailbox)
    }

    /// The messages in `folder` of `user`, oldest first.
    pub fn messages(&self, user: &str, folder: &str) -> anyhow::Result<Vec<MessageSnapshot>> {
        let store = self.shared.store();
        let mailbox = store
            .mailbox(user)
            .with_context(|| format!("no user {user}"))?;
        let folder_id = folder_by_any_name(mailbox, folder)?;
        Ok(mailbox
            .messages
            .values()
            .filter(|m| m.folder_id == folder_id)
            .map(|m| snapshot(mailbox, m))
            .collect())
    }

    /// Stops the server and waits (a few seconds at most) for open requests to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

fn snapshot(mailbox: &Mailbox, m: &store::Message) -> MessageSnapshot {
    let folder = mailbox
        .folders
        .iter()
        .find(|f| f.id == m.folder_id)
        .map(|f| {
            f.well_known
                .map_or_else(|| f.display_name.clone(), str::to_owned)
        })
        .unwrap_or_default();
    MessageSnapshot {
        ids: MessageIds {
            immutable_id: m.immutable_id.clone(),
            rest_id: m.rest_id.clone(),
        },
        folder,
        is_read: m.is_read,
        store_size: m.store_size,
        subject: m.parsed.subject.clone(),
        mime: m.mime.as_ref().clone(),
    }
}

/// A folder by id, well-known name or display name (for tests and the control API).
pub(crate) fn folder_by_any_name(mailbox: &Mailbox, folder: &str) -> anyhow::Result<String> {
    if let Ok(f) = mailbox.folder(folder) {
        return Ok(f.id.clone());
    }
    mailbox
        .folders
        .iter()
        .find(|f| f.display_name.eq_ignore_ascii_case(folder))
        .map(|f| f.id.clone())
        .with_context(|| format!("no folder {folder} for {}", mailbox.upn))
}

/// All routes: the control API, then Graph for everything else.
fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/_fake/health", axum::routing::get(|| async { "ok" }))
        .merge(crate::control::routes())
        .route(
            "/_uploads/{token}",
            axum::routing::put(crate::drafts::put_fragment),
        )
        .fallback(server::graph)
        // Bodies above Graph's 4 MB are refused with Graph's error (server.rs), not axum's
        // 2 MB default; this only bounds what the fake reads.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}
