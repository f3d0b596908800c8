//! Typed settings: loaded from TOML plus `MAILINTAKE_…` environment overrides, validated once, then
//! passed around as plain values.
//!
//! Two layers: the `raw` structs mirror the file (serde, unknown keys rejected) and [`Config`] is the
//! validated result that the rest of the program uses. Every problem is reported with the key it is
//! about and what to do; no message ever contains a secret's value. Validation is split by topic:
//! `identity` (flows, credentials, token endpoints, token keys) with the pure `entra` derivations,
//! `mailbox` (IMAP, disposal, SMTP, acknowledgements), and `problems` (collecting and rendering).
//! A key with a closed set of values is read as a string and parsed in validation into an enum, so
//! that a bad value is reported with its key while validation goes on to find the others.

mod entra;
mod graph;
mod identity;
mod mailbox;
mod problems;
mod raw;
mod registry;
/// A mailbox from `[[mailboxes]]` keys (`extra` appended to a minimal one with IMAP and SMTP),
/// for the unit tests of the modules that take one.
#[cfg(test)]
pub(crate) fn mailbox_for_tests(extra: &str) -> Mailbox {
    let text = format!(
        r#"
        [identities.app]
        tenant = "t"
        client_id = "c"
        client_secret = "s"

        [[mailboxes]]
        name = "support"
        address = "support@helpdesk.test"
        identity = "app"
        imap = {{ host = "imap.example.test" }}
        smtp = {{ host = "smtp.example.test" }}
        {extra}
        "#
    );
    Config::from_toml_str(&text, std::path::Path::new("."))
        .unwrap()
        .mailboxes
        .remove(0)
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

pub use entra::{
    AdminConsent, DEFAULT_AUTHORITY_HOST, EXCHANGE_RESOURCE, GRAPH_RESOURCE,
    NATIVE_CLIENT_REDIRECT_URI, admin_consent,
};
pub use graph::SENDMAIL_MAX_BYTES;
pub use identity::Flow;
pub use mailbox::{DEFAULT_ACK_DENY, DEFAULT_ACK_TEMPLATE, TEMPLATE_PLACEHOLDERS, check_template};
pub use problems::{ConfigError, ConfigProblem};
pub use registry::{
    FileTables, SECRET_KEYS, Table, file_tables, identity_from_table, mailbox_from_table,
    merge_tables, remove_key, table_from_toml,
};

use problems::{Problems, figment_problems};

/// The default largest message that is downloaded; bigger ones are quarantined unread.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 25 * 1024 * 1024;

/// What a running worker works on now: the file's mailboxes and identities with the registry's
/// (`registry::effective`), replaced as a whole when the registry or the file changes. The parts
/// that answer about the mailboxes while they run — the status page, the HTTP API, the Junk
/// counts — read the current one per request, so a mailbox added at run time is there too.
#[derive(Debug, Clone)]
pub struct LiveConfig(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>);

impl LiveConfig {
    pub fn new(config: std::sync::Arc<Config>) -> LiveConfig {
        LiveConfig(std::sync::Arc::new(std::sync::RwLock::new(config)))
    }

    /// The configuration now.
    pub fn current(&self) -> std::sync::Arc<Config> {
        std::sync::Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces it.
    pub fn set(&self, config: std::sync::Arc<Config>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// Token sources, declared once and referenced by name from mailboxes.
    pub identities: BTreeMap<String, Identity>,
    pub mailboxes: Vec<Mailbox>,
    /// Keys that encrypt refresh tokens at rest (`[token_store] keys`): the first encrypts, every
    /// one decrypts, so a key is rotated by putting a new one first and keeping the old one until
    /// every stored token was renewed.
    pub token_keys: Vec<TokenKey>,
    /// The monitoring endpoint (`[http]`); off when the table is absent.
    pub http: Option<HttpConfig>,
    /// How the workers of a fleet share the mailboxes (`[fleet]`; defaults without the table).
    pub fleet: FleetConfig,
}

/// `[fleet]`: the leases by which every (mailbox, folder) and every mailbox's outbox sender is
/// one worker's at a time (`fleet.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetConfig {
    /// How long an acquisition or renewal lasts; renewed every third of it. A killed worker's
    /// mailboxes are taken over after it (plus one `acquire_interval` and a login).
    pub lease_ttl: Duration,
    /// How often a worker looks for leases to take (free, released, or expired) and says it is
    /// alive (the heartbeat).
    pub acquire_interval: Duration,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            lease_ttl: Duration::from_secs(30),
            acquire_interval: Duration::from_secs(5),
        }
    }
}

/// The default address of the monitoring endpoint: loopback only.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9090";

/// `[http]`: where `/healthz`, `/readyz`, `/metrics` and the status page are served.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: std::net::SocketAddr,
    /// Required as `Authorization: Bearer …` on every route but `/healthz` when set; required to
    /// listen on anything but loopback, because the page shows senders and subjects.
    pub bearer_token: Option<SecretString>,
    /// Required as `Authorization: Bearer …` by the HTTP API (`/v1/…`), on loopback too: the API
    /// sends mail as the mailboxes. Without it the API answers 403. Separate from `bearer_token`,
    /// so a monitoring scraper's token cannot send mail.
    pub api_token: Option<SecretString>,
}

/// One key for refresh tokens at rest: 32 bytes for AES-256-GCM, given base64 or hex.
#[derive(Debug, Clone)]
pub struct TokenKey {
    /// Stored beside each token, so any configured key can be found to decrypt it.
    pub id: String,
    /// The 32 key bytes, hex-encoded (validated).
    pub key_hex: SecretString,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`. May hold a password, so it is a secret: printed only
    /// through [`DatabaseConfig::redacted_url`].
    pub url: SecretString,
    /// PostgreSQL's `statement_timeout` and `lock_timeout` for every connection: a helpdesk
    /// application holding a ticket's row lock, or a stuck statement, ends in an error the
    /// folder task retries with backoff and shows, instead of freezing the mailbox.
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// `max_connections`: the most connections the pool opens. `None`: computed from the
    /// number of tasks the command runs ([`DatabaseConfig::pool_size`]).
    pub max_connections: Option<u32>,
}

/// How a pool's size was chosen, for the start-up line that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSizing {
    /// `[database] max_connections`.
    Configured,
    /// `tasks` plus [`POOL_HEADROOM`], at most the backend's cap.
    Computed { tasks: usize, cap: u32 },
    /// The backend's cap, for `run`: its tasks may grow at run time (the registry) and a pool
    /// cannot be resized; connections are opened only as the tasks need them.
    Growing { tasks: usize, cap: u32 },
}

/// Connections beyond one per task: the registry's poll, the Junk check and the HTTP endpoint
/// each may hold one at the same time as the tasks (`run`'s fleet has two of its own beside
/// the pool: its heartbeat, acquisitions and renewals never wait behind the tasks).
pub const POOL_HEADROOM: u32 = 4;
/// The computed pool size's cap on SQLite: one writer at a time whatever the pool, and each
/// connection keeps its own page cache (about 2 MiB), so more only lets readers wait beside it.
pub const SQLITE_POOL_CAP: u32 = 8;
/// The computed pool size's cap on PostgreSQL: a task holds a connection only while it writes
/// (a batch, a lease renewal), so 1,000 idle mailboxes need few, and three workers stay well
/// inside the server's default `max_connections` of 100 beside the helpdesk's own.
pub const POSTGRES_POOL_CAP: u32 = 16;

impl DatabaseConfig {
    /// Whether the URL names an SQLite database (else PostgreSQL).
    pub fn is_sqlite(&self) -> bool {
        self.url().starts_with("sqlite:")
    }

    /// The pool's size for a command that runs `tasks` tasks that use the database (a folder
    /// task or an outbox sender each): `max_connections` when set, else one per task plus
    /// [`POOL_HEADROOM`], at most the backend's cap ([`SQLITE_POOL_CAP`], [`POSTGRES_POOL_CAP`]).
    pub fn pool_size(&self, tasks: usize) -> (u32, PoolSizing) {
        if let Some(n) = self.max_connections {
            return (n, PoolSizing::Configured);
        }
        let cap = if self.is_sqlite() {
            SQLITE_POOL_CAP
        } else {
            POSTGRES_POOL_CAP
        };
        let wanted = u32::try_from(tasks)
            .unwrap_or(u32::MAX)
            .saturating_add(POOL_HEADROOM);
        (wanted.min(cap), PoolSizing::Computed { tasks, cap })
    }

    /// [`DatabaseConfig::pool_size`] for a command whose tasks may grow while it runs (`run`,
    /// which follows the registry): `max_connections` when set, else the backend's cap.
    pub fn pool_size_growing(&self, tasks: usize) -> (u32, PoolSizing) {
        match self.pool_size(usize::MAX) {
            (cap, PoolSizing::Computed { cap: c, .. }) => {
                (cap, PoolSizing::Growing { tasks, cap: c })
            }
            configured => configured,
        }
    }

    /// The URL to connect with.
    pub fn url(&self) -> &str {
        use secrecy::ExposeSecret;
        self.url.expose_secret()
    }

    /// The URL as it may be shown: credentials replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_credentials(self.url())
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// An OAuth2 token source: which endpoint to ask, as which client, with which grant.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub client_id: String,
    pub grant: Grant,
    pub token_url: Url,
    /// The device authorization endpoint (`<authority>/oauth2/v2.0/devicecode`, or
    /// `device_code_url`); `None` when only a `token_url` was given.
    pub device_code_url: Option<Url>,
    /// The authority (`https://login.microsoftonline.com/<tenant>`), from which the authorize and
    /// admin-consent URLs derive; `None` when only a `token_url` was given.
    pub authority: Option<Url>,
    pub scope: String,
    /// The redirect URI of the admin-consent URL (`consent_redirect_uri`); it must be registered
    /// on the app. `None`: the native-client URI ([`NATIVE_CLIENT_REDIRECT_URI`]).
    pub consent_redirect_uri: Option<Url>,
    /// An extra CA certificate (PEM) trusted for the token endpoint, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// When the client secret expires (from the portal's Certificates & secrets page), so that
    /// mailintake can warn ahead; unix seconds.
    pub secret_expires: Option<i64>,
}

/// The OAuth2 grant an identity uses, with the credentials that grant needs.
#[derive(Debug, Clone)]
pub enum Grant {
    /// App-only access (`client_credentials`) with a client secret.
    ClientSecret { client_secret: SecretString },
    /// App-only access (`client_credentials`) with a certificate: a client assertion signed with
    /// the private key. The files are read at every token request, so they can be replaced.
    Certificate {
        certificate_file: PathBuf,
        private_key_file: PathBuf,
    },
    /// Delegated access with a user's password (ROPC). Public client unless a secret is given.
    Password {
        username: String,
        password: SecretString,
        client_secret: Option<SecretString>,
    },
    /// Delegated access on a refresh token kept encrypted in the database: obtained by
    /// `mailintake login` (device code flow, works with MFA) or seeded from `refresh_token`.
    /// Every rotated refresh token is stored again.
    RefreshToken {
        /// How the first refresh token is obtained.
        login: DelegatedLogin,
        client_secret: Option<SecretString>,
    },
}

/// How a refresh-token identity gets its first refresh token.
#[derive(Debug, Clone)]
pub enum DelegatedLogin {
    /// `mailintake login <identity>`: the device code flow (`flow = "device_code"`).
    DeviceCode,
    /// A refresh token obtained elsewhere (`flow = "refresh_token"`, key `refresh_token`); used
    /// only until the database holds a newer one.
    Seed(SecretString),
}

impl Grant {
    /// The flow that selects this grant in the config file.
    pub fn flow(&self) -> Flow {
        match self {
            Grant::ClientSecret { .. } | Grant::Certificate { .. } => Flow::ClientCredentials,
            Grant::Password { .. } => Flow::Password,
            Grant::RefreshToken {
                login: DelegatedLogin::DeviceCode,
                ..
            } => Flow::DeviceCode,
            Grant::RefreshToken { .. } => Flow::RefreshToken,
        }
    }

    /// The `flow` value that selects this grant in the config file.
    pub fn flow_name(&self) -> &'static str {
        self.flow().name()
    }

    /// True for grants that act as a user (delegated permissions, `scp` in the token).
    pub fn is_delegated(&self) -> bool {
        self.flow().is_delegated()
    }
}

/// One watched mailbox.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// A short stable name; it keys the mailbox's rows in the database.
    pub name: String,
    /// The address used as the IMAP login (SASL user). For a shared mailbox this is the shared
    /// mailbox's address, not the identity's account.
    pub address: String,
    /// The name of the identity whose tokens log in to this mailbox.
    pub identity: String,
    /// How its mail is read: IMAP, or Microsoft Graph where IMAP is switched off.
    pub transport: Transport,
    /// The folders watched for new mail; each has its own task and IMAP connection.
    pub folders: Vec<String>,
    /// How often the folder is swept for new mail. With IDLE it is the longest time between two
    /// reconciliation sweeps; new mail is taken as it arrives.
    pub poll_interval: Duration,
    /// How often a sweep also asks the server for the UIDs at or below the checkpoint and ingests
    /// any that has no outcome (a message a server made visible late).
    pub reconcile_interval: Duration,
    /// Wait for new mail with IDLE (RFC 2177) where the server offers it.
    pub idle: bool,
    /// IDLE is re-issued after this long (Exchange and NAT gateways drop quiet connections; the RFC
    /// allows 29 minutes at most).
    pub idle_interval: Duration,
    pub max_message_bytes: u64,
    /// Bodies are downloaded in UID batches of at most this many bytes (by RFC822.SIZE) and
    /// messages; this bounds memory and keeps round trips few.
    pub fetch_batch_bytes: u64,
    pub fetch_batch_messages: usize,
    /// A message the server fails to deliver in a way that is its own (refused when asked for
    /// alone, or the connection lost while it alone was fetched, three sessions in a row) is set
    /// aside as unreadable only once this long has passed since the first such failure; until
    /// then it waits and the mail after it comes in. Exchange's Dynamic Delivery keeps a message
    /// unreadable while Defender scans its attachments.
    pub unreadable_after: Duration,
    pub dispose: Disposal,
    pub quarantine_folder: String,
    /// The mailbox's Junk folder, where real mail sometimes lands (`mailintake junk`); Exchange
    /// Online's is "Junk Email".
    pub junk_folder: String,
    pub mode: Mode,
    pub first_start: FirstStart,
    /// New tickets one sender may open per hour; the excess is quarantined. 0 means no limit.
    pub max_new_tickets_per_sender_per_hour: u32,
    /// A follow-up to a resolved or closed ticket reopens it (a person's, or machine-generated
    /// mail's under `automatic = "ticket"`; never a machine's reply).
    pub reopen_closed: bool,
    /// Machine-generated mail opens tickets (`"ticket"`, the default) or not (`"ignore"`).
    pub automatic: AutomaticMail,
    /// Keep every ingested message's raw bytes (compressed), not only those of failures.
    pub keep_raw_all: bool,
    /// How its mail (acknowledgements, the helpdesk's replies) is sent: `[mailboxes.smtp]`, or
    /// Graph with `send = "graph"`; `None` when the mailbox sends nothing.
    pub outlet: Option<Outlet>,
    pub acknowledge: Acknowledge,
    /// Mail the helpdesk hands over (agent replies, notifications): which From addresses it may
    /// use, how large it may be, and to whom it may go.
    pub sending: Sending,
    /// Who keeps a copy of what the mailbox sends in its Sent folder (`sent_copy`,
    /// `sent_folder`).
    pub sent_copy: SentCopy,
}

/// The `sent_copy` key: where a copy of each message the mailbox sends is kept. Exchange
/// Online's SMTP submission keeps one in Sent Items itself; other servers (Postfix with
/// Dovecot, most hosted IMAP) keep none, and mailintake appends it over IMAP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SentCopy {
    /// The submission server keeps it (`"server"`, the default: Exchange Online).
    #[default]
    Server,
    /// Appended by IMAP after the server accepted the message, once (`"append"`): to
    /// `sent_folder` when set, else the folder the server marks `\Sent` (RFC 6154).
    Append { folder: Option<String> },
    /// No copy (`"none"`).
    None,
}

/// The rules for mail the helpdesk hands over (`mailintake send`, the `outgoing` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sending {
    /// From addresses besides the mailbox's own (`send_as`, lower case): the identity needs
    /// Exchange's SendAs (or Send on Behalf) right on each.
    pub send_as: Vec<String>,
    /// The largest encoded message accepted at submission (`max_send_bytes`; Exchange Online's
    /// default limit, 35 MB).
    pub max_bytes: u64,
    /// `allow_recipients`: when set, every recipient must match one of these patterns
    /// (`*@customer.test`, an address; lower case), for test systems. `None`: anyone.
    pub allow_recipients: Option<Vec<String>>,
}

/// Exchange Online's default message size limit for sending (35 MB).
pub const DEFAULT_MAX_SEND_BYTES: u64 = 35 * 1024 * 1024;

/// How a mailbox sends, within Exchange's limits.
#[derive(Debug, Clone)]
pub struct Outlet {
    pub via: SendVia,
    /// The longest one message's submission may take.
    pub timeout: Duration,
    /// Exchange Online allows 30 messages a minute and 10,000 recipients a day per mailbox.
    pub max_per_minute: u32,
    pub max_recipients_per_day: u32,
    /// The first retry after a transient failure; it doubles up to an hour.
    pub retry_delay: Duration,
    /// A row left `sending` this long (its sender died between the server's answer and the
    /// row's update) is sent again, with the same Message-ID (`smtp.claim_lease`, 10 minutes;
    /// longer than any send takes, or a slow send would be doubled by another process).
    pub claim_lease: Duration,
}

/// What a mailbox's mail is submitted to.
#[derive(Debug, Clone)]
pub enum SendVia {
    /// SMTP submission with XOAUTH2 (`[mailboxes.smtp]`).
    Smtp(SmtpServer),
    /// Graph's `sendMail` with the MIME message (`send = "graph"`, `[mailboxes.graph]`).
    Graph(GraphEndpoint),
}

impl Outlet {
    /// The SMTP server, when the mailbox sends by SMTP.
    pub fn smtp(&self) -> Option<&SmtpServer> {
        match &self.via {
            SendVia::Smtp(server) => Some(server),
            SendVia::Graph(_) => None,
        }
    }

    /// Where mail goes, for texts: `smtp.office365.com:587` or Graph's URL.
    pub fn describe(&self) -> String {
        match &self.via {
            SendVia::Smtp(server) => format!("{}:{}", server.host, server.port),
            SendVia::Graph(graph) => format!("Graph sendMail at {}", graph.url),
        }
    }
}

/// The SMTP submission server of a mailbox (Exchange Online: smtp.office365.com:587, STARTTLS).
#[derive(Debug, Clone)]
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
}

/// The `acknowledge.authserv_id` that stands for Exchange Online's own stamp: the topmost
/// `Authentication-Results` (Exchange writes it without an id, above any the sender supplied),
/// read with `X-MS-Exchange-Organization-SCL`.
pub const EXCHANGE_ONLINE_AUTHSERV_ID: &str = "exchange-online";

/// When and how new tickets are acknowledged.
#[derive(Debug, Clone)]
pub struct Acknowledge {
    /// Acknowledge new tickets (needs `smtp`).
    pub enabled: bool,
    /// Also acknowledge follow-ups (at most one per ticket per `follow_up_interval`).
    pub follow_ups: bool,
    pub follow_up_interval: Duration,
    /// The From address; the mailbox address unless set (Exchange needs the SendAs right).
    pub from: Option<String>,
    /// Plain-text and optional HTML templates, already read and checked.
    pub template_text: String,
    pub template_html: Option<String>,
    /// Recipients never acknowledged: exact addresses or `*@domain`, `noreply@*` patterns.
    pub deny: Vec<String>,
    /// At most this many acknowledgements to one recipient a day.
    pub max_per_recipient_per_day: u32,
    /// Tell the sender of a message that was too large that it was set aside (and kept).
    pub quarantine_notice: bool,
    /// Mail received before this (unix ms) is not acknowledged; default: the folder's first sweep,
    /// so importing an existing inbox does not write to every past customer.
    pub since_ms: Option<i64>,
    /// Acknowledge only when the receiving server vouches for the recipient (SPF or aligned DKIM
    /// `pass` in its own `Authentication-Results`); `require_authentication = false` turns it off.
    pub require_authentication: bool,
    /// The `authserv-id` of the receiving server's own `Authentication-Results`, lower case;
    /// `exchange-online` for Exchange Online (the default when the IMAP host is Exchange's).
    /// `None`: not set on another server, so nothing vouches and nothing is acknowledged while
    /// `require_authentication` is on (`check` says so).
    pub authserv_id: Option<String>,
}

/// Whether mailintake changes anything in the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ingest and dispose of messages (flag, move or delete them).
    Normal,
    /// Read-only: EXAMINE and BODY.PEEK, no flags, moves or deletions, no acknowledgements; tickets
    /// are still written. For running beside the system mailintake replaces, to compare.
    Shadow,
}

/// What becomes of machine-generated mail (notifications, alerts, bulk and list mail: see
/// `ingest::classify`), the `automatic` key. Either way it is never acknowledged; replies made by
/// machines (auto-replies, bounces, read receipts) are not under this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutomaticMail {
    /// Decided as a person's mail is: a new ticket, a follow-up (reopening), the sender limit.
    #[default]
    Ticket,
    /// Opens no ticket: recorded `ignored` (reason `automatic`); in a ticket's thread it is still
    /// attached to that ticket, without reopening it.
    Ignore,
}

/// What a mailbox's first start does with the mail already in the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStart {
    /// Ingest everything that is there.
    All,
    /// Leave what is there untouched; ingest only mail that arrives from now on.
    Now,
    /// Leave mail received (INTERNALDATE) before this instant untouched; unix milliseconds.
    Since(i64),
}

/// What happens in IMAP to a message once its outcome is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposal {
    /// Set `\Seen` and leave it in the folder.
    MarkSeen,
    /// Move it to this folder (created when missing).
    Move { folder: String },
    /// Flag it `\Deleted` and expunge that UID (UIDPLUS); without UIDPLUS it stays flagged.
    Delete,
}

/// How a mailbox's mail is read (`transport`).
#[derive(Debug, Clone)]
pub enum Transport {
    /// IMAP with `AUTHENTICATE XOAUTH2` (`[mailboxes.imap]`).
    Imap(ImapEndpoint),
    /// Microsoft Graph's mail API with an app-only token (`[mailboxes.graph]`).
    Graph(GraphEndpoint),
}

impl Transport {
    /// The `transport` value that selects it.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Imap(_) => "imap",
            Transport::Graph(_) => "graph",
        }
    }
}

impl Mailbox {
    /// The IMAP server, for a mailbox read over IMAP.
    pub fn imap(&self) -> Option<&ImapEndpoint> {
        match &self.transport {
            Transport::Imap(imap) => Some(imap),
            Transport::Graph(_) => None,
        }
    }

    /// The longest one command to the mail server (an IMAP command, a Graph request) may take.
    pub fn command_timeout(&self) -> Duration {
        match &self.transport {
            Transport::Imap(imap) => imap.timeouts.command,
            Transport::Graph(graph) => graph.timeout,
        }
    }
}

/// Microsoft Graph for one mailbox: where requests go and the token they carry.
#[derive(Debug, Clone)]
pub struct GraphEndpoint {
    /// The Graph service root without `/v1.0`: `https://graph.microsoft.com` worldwide, the
    /// national cloud's host (`https://graph.microsoft.us`, `https://dod-graph.microsoft.us`).
    pub url: Url,
    /// The token's scope: `{Graph resource}/.default` (the app's application permissions,
    /// `Mail.ReadWrite`, and `Mail.Send` to send).
    pub scope: String,
    /// At most this many requests at once for one app (Outlook's concurrency limit is 4 per
    /// app, across mailboxes in the current text of Graph's throttling page).
    pub max_concurrent_requests: u32,
    /// The longest one request may take, its body included.
    pub timeout: Duration,
    /// An extra CA certificate (PEM) trusted for the Graph host, besides the system roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ImapEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// An extra CA certificate (PEM) trusted for this server, besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// At most this many logins a second to this server (`host`) from this process, over all
    /// its mailboxes and folders: no login storm when many start at once (servers throttle it).
    pub logins_per_second: u32,
}

/// The default of `imap.logins_per_second`: 1,000 folders are in IDLE within 100 s.
pub const DEFAULT_LOGINS_PER_SECOND: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (port 993).
    Implicit,
    /// Plain connection upgraded with `STARTTLS` before anything else is sent (port 143).
    Starttls,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The longest any single IMAP command may take before the connection is given up.
    pub command: Duration,
}

impl Config {
    /// Loads the file at `path`, applies `MAILINTAKE_…` environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.to_path_buf(),
            });
        }
        let figment = file_figment(path);
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::from_figment(figment, base_dir).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Validates configuration given as TOML text (tests, `check`). Relative `file` paths are
    /// resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, Vec<ConfigProblem>> {
        Self::from_figment(Figment::from(Toml::string(text)), base_dir)
    }

    fn from_figment(figment: Figment, base_dir: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let raw: raw::File = figment.extract().map_err(figment_problems)?;
        let mut problems = Problems::default();
        let config = validate(raw, base_dir, &mut problems);
        problems.into_result(config)
    }

    pub fn identity(&self, name: &str) -> &Identity {
        // Validation guarantees that every mailbox names a declared identity.
        &self.identities[name]
    }
}

/// The file at `path` with the `MAILINTAKE_…` environment overrides over it.
fn file_figment(path: &Path) -> Figment {
    // Nested keys are separated by a double underscore, e.g.
    // MAILINTAKE_DATABASE__URL or MAILINTAKE_IDENTITIES__DEMO__CLIENT_SECRET. Every setting
    // lives in a section, so variables without a double underscore (MAILINTAKE_CONFIG, or a
    // secret named MAILINTAKE_SUPPORT_SECRET and referenced with { env = ... }) are not
    // overrides and are left alone.
    let env = Env::prefixed("MAILINTAKE_")
        .split("__")
        .filter(|key| key.as_str().contains('.'));
    Figment::new().merge(Toml::file_exact(path)).merge(env)
}

/// Validates the whole file, recording every problem; the result is used only when there are none.
fn validate(raw: raw::File, base_dir: &Path, problems: &mut Problems) -> Config {
    let database = validate_database(raw.database, base_dir, problems);
    // Mailboxes may name only declared identities, also those that turn out to be invalid (their
    // own problems are reported), so that one mistake is not reported twice.
    let declared_identities: Vec<String> = raw.identities.keys().cloned().collect();
    let identities: BTreeMap<String, Identity> = raw
        .identities
        .into_iter()
        .filter_map(|(name, raw_identity)| {
            identity::validate_identity(&name, raw_identity, base_dir, problems)
                .map(|identity| (name, identity))
        })
        .collect();
    let token_keys =
        identity::validate_token_keys(raw.token_store, &identities, base_dir, problems);
    let mailboxes = mailbox::validate_mailboxes(
        raw.mailboxes,
        &declared_identities,
        &identities,
        base_dir,
        problems,
    );
    let http = raw.http.and_then(|h| validate_http(h, base_dir, problems));
    let fleet = validate_fleet(raw.fleet, problems);
    Config {
        database,
        identities,
        mailboxes,
        token_keys,
        http,
        fleet,
    }
}

/// `[fleet]`: `lease_ttl` at least 3 s (a renewal every third of it must fit), `acquire_interval`
/// at least 100 ms and below the TTL.
fn validate_fleet(raw: Option<raw::Fleet>, problems: &mut Problems) -> FleetConfig {
    let defaults = FleetConfig::default();
    let Some(raw) = raw else { return defaults };
    let mut duration = |key: &str, text: Option<&str>, least: Duration, default: Duration| {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(value) if value >= least => value,
            Ok(_) => {
                problems.report(
                    key,
                    format!("must be at least {}", humantime::format_duration(least)),
                );
                default
            }
            Err(e) => {
                problems.report(
                    key,
                    format!("`{text}` is not a duration ({e}); write e.g. \"30s\""),
                );
                default
            }
        }
    };
    let lease_ttl = duration(
        "fleet.lease_ttl",
        raw.lease_ttl.as_deref(),
        Duration::from_secs(3),
        defaults.lease_ttl,
    );
    let acquire_interval = duration(
        "fleet.acquire_interval",
        raw.acquire_interval.as_deref(),
        Duration::from_millis(100),
        defaults.acquire_interval,
    );
    if acquire_interval >= lease_ttl {
        problems.report(
            "fleet.acquire_interval",
            "must be shorter than fleet.lease_ttl (the heartbeat goes with it, and a worker counts as alive for one lease_ttl)",
        );
    }
    FleetConfig {
        lease_ttl,
        acquire_interval,
    }
}

/// `[database] url`: SQLite (the default, a file beside the worker) or PostgreSQL.
fn validate_database(
    raw: Option<raw::Database>,
    base_dir: &Path,
    problems: &mut Problems,
) -> DatabaseConfig {
    use secrecy::ExposeSecret;
    let raw = raw.unwrap_or(raw::Database {
        url: None,
        statement_timeout: None,
        lock_timeout: None,
        max_connections: None,
    });
    let mut timeout = |key: &str, text: Option<&str>, default: Duration| {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(limit) if limit >= Duration::from_millis(100) => limit,
            Ok(_) => {
                problems.report(key, "must be at least 100ms");
                default
            }
            Err(e) => {
                problems.report(
                    key,
                    format!("`{text}` is not a duration ({e}); write e.g. \"30s\", \"5m\""),
                );
                default
            }
        }
    };
    let statement_timeout = timeout(
        "database.statement_timeout",
        raw.statement_timeout.as_deref(),
        Duration::from_secs(60),
    );
    let lock_timeout = timeout(
        "database.lock_timeout",
        raw.lock_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let (url, resolved) = match raw.url.map(|url| url.resolve(base_dir)) {
        None => (SecretString::from("sqlite://data/mailintake.db"), true),
        Some(Ok(url)) => (url, true),
        Some(Err(message)) => {
            problems.report("database.url", message);
            (SecretString::from(String::new()), false)
        }
    };
    let text = url.expose_secret();
    if resolved
        && !(text.starts_with("sqlite:")
            || text.starts_with("postgres://")
            || text.starts_with("postgresql://"))
    {
        problems.report(
            "database.url",
            "must start with sqlite:// (embedded, the default) or postgres://",
        );
    }
    let max_connections = match raw.max_connections {
        Some(0) => {
            problems.report(
                "database.max_connections",
                "must be at least 1 (leave it out to size the pool from the number of mailboxes)",
            );
            None
        }
        n => n,
    };
    DatabaseConfig {
        url,
        statement_timeout,
        lock_timeout,
        max_connections,
    }
}

/// `[http]`: `listen` a socket address (default 127.0.0.1:9090); anything but loopback only with a
/// `bearer_token`; each token (`bearer_token`, `api_token`) at least 16 characters.
fn validate_http(raw: raw::Http, base_dir: &Path, problems: &mut Problems) -> Option<HttpConfig> {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
    let listen: std::net::SocketAddr = match text.parse() {
        Ok(listen) => listen,
        Err(_) => {
            problems.report(
                "http.listen",
                format!("`{text}` is not an IP address and port, e.g. \"127.0.0.1:9090\""),
            );
            return None;
        }
    };
    let bearer_token = token(raw.bearer_token, "http.bearer_token", base_dir, problems)?;
    let api_token = token(raw.api_token, "http.api_token", base_dir, problems)?;
    if !listen.ip().is_loopback() && bearer_token.is_none() {
        problems.report(
            "http.listen",
            format!(
                "{listen} is reachable from other machines, and the status page shows senders and subjects: \
                 set http.bearer_token = {{ env = \"MAILINTAKE_HTTP_TOKEN\" }}, or listen on 127.0.0.1"
            ),
        );
        return None;
    }
    Some(HttpConfig {
        listen,
        bearer_token,
        api_token,
    })
}

/// A token of `[http]` (`key`): absent, or a secret of at least 16 characters. `None` when it is
/// unusable (the problem reported), `Some(None)` when it is absent.
fn token(
    raw: Option<raw::Secret>,
    key: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Option<SecretString>> {
    use secrecy::ExposeSecret;
    match raw.map(|s| s.resolve(base_dir)) {
        None => Some(None),
        Some(Ok(token)) if token.expose_secret().trim().len() >= 16 => Some(Some(token)),
        Some(Ok(_)) => {
            problems.report(
                key,
                "must be at least 16 characters (e.g. `openssl rand -hex 24`)",
            );
            None
        }
        Some(Err(message)) => {
            problems.report(key, message);
            None
        }
    }
}

/// Why a configured file cannot be used, if it cannot: it must exist (checked at start-up, so that a
/// wrong path shows before the first connection needs it).
fn file_problem(path: &Path) -> Option<String> {
    (!path.is_file()).then(|| format!("file {} does not exist", path.display()))
}

/// Every credential in `text` replaced by `***`: the password of each `scheme://user:password@`
/// (up to the last `@` of the URL, so that a `#`, `?`, `/` or `@` typed into the password unencoded
/// stays hidden too) and the value of each `password=` / `sslpassword=` / `passwd=` parameter.
/// Works on a URL and on any text that contains URLs (an error message), so every message can go
/// through it before it is shown.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let authority_start = start + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        // The URL ends at white space or a character that cannot stand in one unquoted.
        let url_len = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(after.len());
        let url = &after[..url_len];
        match (url.rfind('@'), url.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&url[..=colon]);
                out.push_str("***");
                out.push_str(&url[at..]);
            }
            _ => out.push_str(url),
        }
        rest = &after[url_len..];
    }
    out.push_str(rest);
    redact_password_parameters(&out)
}

/// `…password=secret&…` → `…password=***&…`.
fn redact_password_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let found = ["sslpassword=", "password=", "passwd="]
            .iter()
            .filter_map(|name| lower.find(name).map(|i| (i, name.len())))
            .min();
        let Some((i, name_len)) = found else { break };
        let value_start = i + name_len;
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let value_len = value
            .find(|c: char| c == '&' || c.is_whitespace())
            .unwrap_or(value.len());
        if value_len > 0 {
            out.push_str("***");
        }
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}
