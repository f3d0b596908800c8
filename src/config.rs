//! Typed settings: loaded from TOML plus `MAILINTAKE_…` environment overrides, validated once, then
//! passed around as plain values.
//!
//! Two layers: the `raw` structs mirror the file (serde, unknown keys rejected) and [`Config`] is the
//! validated result that the rest of the program uses. Every problem is reported with the key it is
//! about and what to do; no message ever contains a secret's value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::time::parse_date;

/// The Entra authority used when neither `authority` nor `token_url` is configured.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Exchange Online's resource; scopes of both flows are built on it by default.
pub const EXCHANGE_RESOURCE: &str = "https://outlook.office365.com";
/// The default largest message that is downloaded; bigger ones are quarantined unread.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 25 * 1024 * 1024;

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
    /// `sqlite://…` or `postgres://…`. May hold a password, so it is never printed whole.
    pub url: String,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
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
    /// The `flow` value that selects this grant in the config file.
    pub fn flow_name(&self) -> &'static str {
        match self {
            Grant::ClientSecret { .. } | Grant::Certificate { .. } => "client_credentials",
            Grant::Password { .. } => "password",
            Grant::RefreshToken {
                login: DelegatedLogin::DeviceCode,
                ..
            } => "device_code",
            Grant::RefreshToken { .. } => "refresh_token",
        }
    }

    /// True for grants that act as a user (delegated permissions, `scp` in the token).
    pub fn is_delegated(&self) -> bool {
        !matches!(self, Grant::ClientSecret { .. } | Grant::Certificate { .. })
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
    pub imap: ImapEndpoint,
    /// The folders watched for new mail; each has its own task and IMAP connection.
    pub folders: Vec<String>,
    /// How often the folder is swept for new mail. With IDLE it is the longest time between two
    /// reconciliation sweeps; new mail is taken as it arrives.
    pub poll_interval: Duration,
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
    pub dispose: Disposal,
    pub quarantine_folder: String,
    /// The mailbox's Junk folder, where real mail sometimes lands (`mailintake junk`); Exchange
    /// Online's is "Junk Email".
    pub junk_folder: String,
    pub mode: Mode,
    pub first_start: FirstStart,
    /// New tickets one sender may open per hour; the excess is quarantined. 0 means no limit.
    pub max_new_tickets_per_sender_per_hour: u32,
    /// A person's follow-up to a resolved or closed ticket reopens it.
    pub reopen_closed: bool,
    /// Keep every ingested message's raw bytes (compressed), not only those of failures.
    pub keep_raw_all: bool,
    /// Where acknowledgements are sent through; `None` when the mailbox sends nothing.
    pub smtp: Option<SmtpEndpoint>,
    pub acknowledge: Acknowledge,
}

/// The SMTP submission server of a mailbox (Exchange Online: smtp.office365.com:587, STARTTLS).
#[derive(Debug, Clone)]
pub struct SmtpEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// Exchange Online allows 30 messages a minute and 10,000 recipients a day per mailbox.
    pub max_per_minute: u32,
    pub max_recipients_per_day: u32,
    /// The first retry after a transient failure; it doubles up to an hour.
    pub retry_delay: Duration,
}

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
}

/// Recipients never acknowledged unless `acknowledge.deny` says otherwise.
pub const DEFAULT_ACK_DENY: [&str; 4] =
    ["noreply@*", "no-reply@*", "donotreply@*", "do-not-reply@*"];

/// The placeholders templates may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 4] = ["ticket", "subject", "requester_name", "mailbox"];

/// The acknowledgement sent when no template is configured.
pub const DEFAULT_ACK_TEMPLATE: &str = "Hello {requester_name},\n\n\
thank you for your message. We have opened ticket {ticket} for it:\n\n    {subject}\n\n\
Please keep {ticket} in the subject when you reply, so that your reply reaches the same ticket.\n\n\
This is an automatic message from {mailbox}.\n";

/// Checks that `template` uses only known `{placeholders}`; the error names the unknown one.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err("has a `{` without a closing `}`".into());
        };
        let name = &after[..end];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "uses the unknown placeholder {{{name}}}; known: {}",
                TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
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

#[derive(Debug, Clone)]
pub struct ImapEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// An extra CA certificate (PEM) trusted for this server, besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub timeouts: Timeouts,
}

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

/// A configuration problem, with the key it concerns and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// Why a configuration could not be loaded. Printed as one message that lists every problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {path} does not exist: create it (config/example.toml documents every key) or pass --config PATH"
    )]
    Missing { path: PathBuf },
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let mut out = format!("invalid configuration in {}:", path.display());
    for problem in problems {
        out.push_str(&format!("\n  - {}: {}", problem.key, problem.message));
    }
    out
}

impl Config {
    /// Loads the file at `path`, applies `MAILINTAKE_…` environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.to_path_buf(),
            });
        }
        // Nested keys are separated by a double underscore, e.g.
        // MAILINTAKE_DATABASE__URL or MAILINTAKE_IDENTITIES__DEMO__CLIENT_SECRET. Every setting
        // lives in a section, so variables without a double underscore (MAILINTAKE_CONFIG, or a
        // secret named MAILINTAKE_SUPPORT_SECRET and referenced with { env = ... }) are not
        // overrides and are left alone.
        let env = Env::prefixed("MAILINTAKE_")
            .split("__")
            .filter(|key| key.as_str().contains('.'));
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(env);
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
        let mut problems = Vec::new();
        let config = validate(raw, base_dir, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    pub fn identity(&self, name: &str) -> &Identity {
        // Validation guarantees that every mailbox names a declared identity.
        &self.identities[name]
    }
}

/// Turns figment's errors into problems without ever echoing the offending value: a mistyped
/// secret would otherwise be printed.
fn figment_problems(error: figment::Error) -> Vec<ConfigProblem> {
    use figment::error::Kind;
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_string()
            } else {
                e.path.join(".")
            };
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    let key_path = if e.path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{}.{}", e.path.join("."), field)
                    };
                    return ConfigProblem {
                        key: key_path,
                        message: format!("unknown key; expected one of: {}", expected.join(", ")),
                    };
                }
                Kind::MissingField(field) => {
                    let key_path = if e.path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{}.{}", e.path.join("."), field)
                    };
                    return ConfigProblem {
                        key: key_path,
                        message: "missing; this key is required (see config/example.toml)".into(),
                    };
                }
                Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                Kind::UnknownVariant(_, expected) => {
                    format!("unknown value; expected one of: {}", expected.join(", "))
                }
                Kind::DuplicateField(field) => format!("key `{field}` is given twice"),
                Kind::InvalidLength(len, expected) => {
                    format!("expected {expected}, found {len} elements")
                }
                Kind::Message(message) => message.clone(),
                Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
                Kind::Unsupported(actual) => format!("unsupported value: {}", actual_kind(actual)),
                Kind::UnsupportedKey(actual, _) => {
                    format!("unsupported key type: {}", actual_kind(actual))
                }
            };
            let message = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                Some(source) if source.contains("environment") => {
                    format!("{message} (set by an environment variable)")
                }
                _ => message,
            };
            ConfigProblem { key, message }
        })
        .collect()
}

/// The kind of a value, never the value itself.
fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Option => "an optional value",
        Actual::NewtypeStruct => "a newtype",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Enum => "an enum",
        Actual::UnitVariant | Actual::NewtypeVariant | Actual::TupleVariant => "an enum variant",
        Actual::StructVariant => "a struct variant",
        Actual::Other(_) => "another type",
    }
}

fn validate(raw: raw::File, base_dir: &Path, problems: &mut Vec<ConfigProblem>) -> Config {
    let mut problem = |key: String, message: String| problems.push(ConfigProblem { key, message });

    let database = DatabaseConfig {
        url: raw
            .database
            .and_then(|d| d.url)
            .unwrap_or_else(|| "sqlite://data/mailintake.db".to_string()),
    };
    if !(database.url.starts_with("sqlite:")
        || database.url.starts_with("postgres://")
        || database.url.starts_with("postgresql://"))
    {
        problem(
            "database.url".into(),
            "must start with sqlite:// (embedded, the default) or postgres://".into(),
        );
    }

    let declared: Vec<String> = raw.identities.keys().cloned().collect();
    let mut identities = BTreeMap::new();
    for (name, raw_identity) in raw.identities {
        if let Some(identity) = validate_identity(&name, raw_identity, base_dir, &mut problem) {
            identities.insert(name, identity);
        }
    }
    let token_keys = validate_token_keys(raw.token_store, &identities, base_dir, &mut problem);

    let mut mailboxes = Vec::new();
    let mut names = std::collections::HashSet::new();
    if raw.mailboxes.is_empty() {
        problem(
            "mailboxes".into(),
            "no mailbox is configured; add at least one [[mailboxes]] table".into(),
        );
    }
    for (index, m) in raw.mailboxes.into_iter().enumerate() {
        let key = |field: &str| format!("mailboxes[{index}].{field}");
        if m.name.trim().is_empty() {
            problem(key("name"), "must not be empty".into());
        } else if !names.insert(m.name.clone()) {
            problem(
                key("name"),
                format!(
                    "`{}` is used by two mailboxes; names must be unique",
                    m.name
                ),
            );
        }
        if !m.address.contains('@') {
            problem(
                key("address"),
                "must be an email address (the IMAP login)".into(),
            );
        }
        if !declared.contains(&m.identity) {
            let known: Vec<&str> = declared.iter().map(String::as_str).collect();
            problem(
                key("identity"),
                format!(
                    "names identity `{}`, which is not declared; declared identities: {}",
                    m.identity,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        let tls = m.imap.tls.unwrap_or(TlsMode::Implicit);
        let port = m.imap.port.unwrap_or(match tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls => 143,
        });
        let ca_file = m.imap.ca_file.map(|p| base_dir.join(p));
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            problem(
                key("imap.ca_file"),
                format!("file {} does not exist", ca.display()),
            );
        }
        let dispose = match m.dispose.as_deref().unwrap_or("seen") {
            "seen" => Disposal::MarkSeen,
            "move" => Disposal::Move {
                folder: m
                    .processed_folder
                    .clone()
                    .unwrap_or_else(|| "Processed".into()),
            },
            "delete" => Disposal::Delete,
            _ => {
                problem(
                    key("dispose"),
                    "must be \"seen\", \"move\" or \"delete\"".into(),
                );
                Disposal::MarkSeen
            }
        };
        let mode = match m.mode.as_deref().unwrap_or("normal") {
            "normal" => Mode::Normal,
            "shadow" => Mode::Shadow,
            _ => {
                problem(key("mode"), "must be \"normal\" or \"shadow\"".into());
                Mode::Normal
            }
        };
        let first_start = match m.first_start.as_deref().unwrap_or("all") {
            "all" => FirstStart::All,
            "now" => FirstStart::Now,
            date => match parse_date(date) {
                Some(ms) => FirstStart::Since(ms),
                None => {
                    problem(
                        key("first_start"),
                        format!(
                            "`{date}` is not \"all\", \"now\" or a date such as \"2026-11-01\" or \"2026-11-01T08:00:00Z\""
                        ),
                    );
                    FirstStart::All
                }
            },
        };
        let idle_interval = parse_duration(m.idle_interval.as_deref(), Duration::from_secs(600))
            .unwrap_or_else(|e| {
                problem(key("idle_interval"), e);
                Duration::from_secs(600)
            });
        if idle_interval > Duration::from_secs(29 * 60) || idle_interval < Duration::from_secs(1) {
            problem(
                key("idle_interval"),
                "must be between 1s and 29m (RFC 2177: servers may drop IDLE after 30 minutes)"
                    .into(),
            );
        }
        let folders = match (m.folder, m.folders) {
            (Some(_), Some(_)) => {
                problem(
                    key("folders"),
                    "give either folder or folders, not both".into(),
                );
                vec!["INBOX".to_string()]
            }
            (Some(folder), None) => vec![folder],
            (None, Some(folders)) => folders,
            (None, None) => vec!["INBOX".to_string()],
        };
        let max_connections = m.max_connections.unwrap_or(4);
        if folders.is_empty() || folders.iter().any(|f| f.trim().is_empty()) {
            problem(
                key("folders"),
                "must name at least one folder, and no empty name".into(),
            );
        } else if folders.len() > max_connections {
            problem(
                key("folders"),
                format!(
                    "{} folders need {} IMAP connections, more than max_connections = {max_connections} (Exchange Online allows 20 per mailbox); raise max_connections or watch fewer folders",
                    folders.len(),
                    folders.len()
                ),
            );
        }
        let mut seen_folders = std::collections::HashSet::new();
        for folder in &folders {
            if !seen_folders.insert(folder.as_str()) {
                problem(key("folders"), format!("`{folder}` is listed twice"));
            }
        }
        let fetch_batch_bytes = m.fetch_batch_bytes.unwrap_or(8 * 1024 * 1024);
        let fetch_batch_messages = m.fetch_batch_messages.unwrap_or(200);
        if fetch_batch_messages == 0 {
            problem(key("fetch_batch_messages"), "must be at least 1".into());
        }
        let junk_folder = m.junk_folder.clone().unwrap_or_else(|| "Junk".into());
        if junk_folder.trim().is_empty() {
            problem(
                key("junk_folder"),
                "must name a folder (default \"Junk\"; Exchange Online: \"Junk Email\")".into(),
            );
        }
        if m.processed_folder.is_some() && !matches!(dispose, Disposal::Move { .. }) {
            problem(
                key("processed_folder"),
                "is only used with dispose = \"move\"; remove it or set dispose = \"move\"".into(),
            );
        }
        let poll_interval = parse_duration(m.poll_interval.as_deref(), Duration::from_secs(60))
            .unwrap_or_else(|e| {
                problem(key("poll_interval"), e);
                Duration::from_secs(60)
            });
        let max_message_bytes = m.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes < 1024 {
            problem(key("max_message_bytes"), "must be at least 1024".into());
        }
        let connect = parse_duration(m.imap.connect_timeout.as_deref(), Duration::from_secs(15))
            .unwrap_or_else(|e| {
                problem(key("imap.connect_timeout"), e);
                Duration::from_secs(15)
            });
        let command = parse_duration(m.imap.command_timeout.as_deref(), Duration::from_secs(120))
            .unwrap_or_else(|e| {
                problem(key("imap.command_timeout"), e);
                Duration::from_secs(120)
            });
        let keep_raw_all = match m.keep_raw.as_deref().unwrap_or("failures") {
            "failures" => false,
            "all" => true,
            _ => {
                problem(key("keep_raw"), "must be \"failures\" or \"all\"".into());
                false
            }
        };
        let smtp = m.smtp.map(|raw| {
            let tls = raw.tls.unwrap_or(TlsMode::Starttls);
            let ca_file = raw.ca_file.map(|p| base_dir.join(p));
            if let Some(ca) = &ca_file
                && !ca.is_file()
            {
                problem(
                    key("smtp.ca_file"),
                    format!("file {} does not exist", ca.display()),
                );
            }
            SmtpEndpoint {
                host: raw.host,
                port: raw.port.unwrap_or(match tls {
                    TlsMode::Starttls => 587,
                    TlsMode::Implicit => 465,
                }),
                tls,
                ca_file,
                timeout: parse_duration(raw.timeout.as_deref(), Duration::from_secs(60))
                    .unwrap_or_else(|e| {
                        problem(key("smtp.timeout"), e);
                        Duration::from_secs(60)
                    }),
                max_per_minute: raw.max_per_minute.unwrap_or(30),
                max_recipients_per_day: raw.max_recipients_per_day.unwrap_or(10_000),
                retry_delay: parse_duration(raw.retry_delay.as_deref(), Duration::from_secs(30))
                    .unwrap_or_else(|e| {
                        problem(key("smtp.retry_delay"), e);
                        Duration::from_secs(30)
                    }),
            }
        });
        let raw_ack = m.acknowledge.unwrap_or_default();
        let mut read_template = |field: &str, path: &Option<PathBuf>| -> Option<String> {
            let path = base_dir.join(path.as_ref()?);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(e) => {
                    problem(
                        key(&format!("acknowledge.{field}")),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        };
        let template_text = read_template("template", &raw_ack.template)
            .unwrap_or_else(|| DEFAULT_ACK_TEMPLATE.to_string());
        let template_html = read_template("template_html", &raw_ack.template_html);
        for (field, template) in [
            ("template", Some(&template_text)),
            ("template_html", template_html.as_ref()),
        ] {
            if let Some(template) = template
                && let Err(e) = check_template(template)
            {
                problem(
                    key(&format!("acknowledge.{field}")),
                    format!("the template {e}"),
                );
            }
        }
        let enabled = raw_ack.enabled.unwrap_or(smtp.is_some());
        if enabled && smtp.is_none() {
            problem(
                key("acknowledge.enabled"),
                "acknowledgements need a [mailboxes.smtp] table (Exchange Online: host = \"smtp.office365.com\")".into(),
            );
        }
        let since_ms = match raw_ack.since.as_deref() {
            None => None,
            Some(text) => parse_date(text).or_else(|| {
                problem(
                    key("acknowledge.since"),
                    format!(
                        "`{text}` is not a date such as \"2026-11-01\" or \"2026-11-01T08:00:00Z\""
                    ),
                );
                None
            }),
        };
        let follow_up_interval = parse_duration(
            raw_ack.follow_up_interval.as_deref(),
            Duration::from_secs(3600),
        )
        .unwrap_or_else(|e| {
            problem(key("acknowledge.follow_up_interval"), e);
            Duration::from_secs(3600)
        });
        let acknowledge = Acknowledge {
            enabled,
            follow_ups: raw_ack.follow_ups.unwrap_or(false),
            follow_up_interval,
            from: raw_ack.from,
            template_text,
            template_html,
            deny: raw_ack
                .deny
                .unwrap_or_else(|| DEFAULT_ACK_DENY.iter().map(|d| d.to_string()).collect())
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            max_per_recipient_per_day: raw_ack.max_per_recipient_per_day.unwrap_or(5),
            quarantine_notice: raw_ack.quarantine_notice.unwrap_or(false),
            since_ms,
        };
        mailboxes.push(Mailbox {
            name: m.name,
            address: m.address,
            identity: m.identity,
            imap: ImapEndpoint {
                host: m.imap.host,
                port,
                tls,
                ca_file,
                timeouts: Timeouts { connect, command },
            },
            folders,
            poll_interval,
            idle: m.idle.unwrap_or(true),
            idle_interval,
            max_message_bytes,
            fetch_batch_bytes,
            fetch_batch_messages: fetch_batch_messages.max(1),
            dispose,
            quarantine_folder: m.quarantine_folder.unwrap_or_else(|| "Quarantine".into()),
            junk_folder,
            mode,
            first_start,
            max_new_tickets_per_sender_per_hour: m
                .max_new_tickets_per_sender_per_hour
                .unwrap_or(20),
            reopen_closed: m.reopen_closed.unwrap_or(true),
            keep_raw_all,
            smtp,
            acknowledge,
        });
    }

    let http = raw
        .http
        .and_then(|h| validate_http(h, base_dir, &mut problem));

    Config {
        database,
        identities,
        mailboxes,
        token_keys,
        http,
    }
}

/// `[http]`: `listen` a socket address (default 127.0.0.1:9090); anything but loopback only with a
/// `bearer_token` of at least 16 characters.
fn validate_http(
    raw: raw::Http,
    base_dir: &Path,
    problem: &mut impl FnMut(String, String),
) -> Option<HttpConfig> {
    use secrecy::ExposeSecret;
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
    let listen: std::net::SocketAddr = match text.parse() {
        Ok(listen) => listen,
        Err(_) => {
            problem(
                "http.listen".into(),
                format!("`{text}` is not an IP address and port, e.g. \"127.0.0.1:9090\""),
            );
            return None;
        }
    };
    let bearer_token = match raw.bearer_token.map(|s| s.resolve(base_dir)) {
        None => None,
        Some(Ok(token)) if token.expose_secret().trim().len() >= 16 => Some(token),
        Some(Ok(_)) => {
            problem(
                "http.bearer_token".into(),
                "must be at least 16 characters (e.g. `openssl rand -hex 24`)".into(),
            );
            return None;
        }
        Some(Err(message)) => {
            problem("http.bearer_token".into(), message);
            return None;
        }
    };
    if !listen.ip().is_loopback() && bearer_token.is_none() {
        problem(
            "http.listen".into(),
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
    })
}

/// `[token_store] keys`: required when an identity keeps refresh tokens; ids unique; each key 32
/// bytes as base64 (`openssl rand -base64 32`) or 64 hex digits.
fn validate_token_keys(
    raw: Option<raw::TokenStore>,
    identities: &BTreeMap<String, Identity>,
    base_dir: &Path,
    problem: &mut impl FnMut(String, String),
) -> Vec<TokenKey> {
    use base64::Engine;
    use secrecy::ExposeSecret;
    let raw_keys = raw.map(|t| t.keys).unwrap_or_default();
    let users: Vec<&str> = identities
        .values()
        .filter(|i| matches!(i.grant, Grant::RefreshToken { .. }))
        .map(|i| i.name.as_str())
        .collect();
    if raw_keys.is_empty() && !users.is_empty() {
        problem(
            "token_store.keys".into(),
            format!(
                "missing; identities {} keep refresh tokens, which are stored encrypted: add keys = [{{ id = \"k1\", key = {{ env = \"MAILINTAKE_TOKEN_KEY\" }} }}] with a key from `openssl rand -base64 32`",
                users.join(", ")
            ),
        );
    }
    let mut keys = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (index, raw_key) in raw_keys.into_iter().enumerate() {
        let key = |field: &str| format!("token_store.keys[{index}].{field}");
        if raw_key.id.trim().is_empty() || !ids.insert(raw_key.id.clone()) {
            problem(
                key("id"),
                "must be non-empty and unique among the keys".into(),
            );
            continue;
        }
        let text = match raw_key.key.resolve(base_dir) {
            Ok(text) => text,
            Err(message) => {
                problem(key("key"), message);
                continue;
            }
        };
        let text = text.expose_secret().trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect::<Vec<u8>>()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_default()
        };
        if bytes.len() != 32 {
            problem(
                key("key"),
                "must be 32 bytes, as base64 (`openssl rand -base64 32`) or 64 hex digits".into(),
            );
            continue;
        }
        let key_hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        keys.push(TokenKey {
            id: raw_key.id,
            key_hex: SecretString::from(key_hex),
        });
    }
    keys
}

fn validate_identity(
    name: &str,
    raw: raw::Identity,
    base_dir: &Path,
    problem: &mut impl FnMut(String, String),
) -> Option<Identity> {
    let key = |field: &str| format!("identities.{name}.{field}");
    let mut ok = true;
    let secret =
        |field: &str, value: Option<raw::Secret>, problem: &mut dyn FnMut(String, String)| {
            value.and_then(|s| match s.resolve(base_dir) {
                Ok(v) => Some(v),
                Err(message) => {
                    problem(key(field), message);
                    None
                }
            })
        };

    let flow = raw.flow.as_deref().unwrap_or("client_credentials");
    // Keys that only some flows use: naming the flow that uses them beats a silent ignore.
    let only_with =
        |field: &str, flows: &str, present: bool, problem: &mut dyn FnMut(String, String)| {
            if present {
                problem(key(field), format!("is only used with {flows}"));
            }
            !present
        };
    let uses_certificate = raw.certificate_file.is_some() || raw.private_key_file.is_some();
    // Keys that belong to one flow are mistakes in any other.
    for (field, owner, present) in [
        (
            "certificate_file",
            "client_credentials",
            raw.certificate_file.is_some(),
        ),
        (
            "private_key_file",
            "client_credentials",
            raw.private_key_file.is_some(),
        ),
        ("username", "password", raw.username.is_some()),
        ("password", "password", raw.password.is_some()),
        (
            "refresh_token",
            "refresh_token",
            raw.refresh_token.is_some(),
        ),
    ] {
        if flow != owner {
            ok &= only_with(field, &format!("flow = \"{owner}\""), present, problem);
        }
    }
    let grant = match flow {
        "client_credentials" if uses_certificate => {
            if raw.client_secret.is_some() {
                problem(
                    key("client_secret"),
                    "give either client_secret or certificate_file, not both".into(),
                );
                ok = false;
            }
            let certificate_file = raw.certificate_file.as_ref().map(|p| base_dir.join(p));
            // The key may sit in the certificate's file (one PEM with both).
            let private_key_file = raw
                .private_key_file
                .as_ref()
                .map(|p| base_dir.join(p))
                .or_else(|| certificate_file.clone());
            match (certificate_file, private_key_file) {
                (Some(certificate_file), Some(private_key_file)) => {
                    for (field, path) in [
                        ("certificate_file", &certificate_file),
                        ("private_key_file", &private_key_file),
                    ] {
                        if !path.is_file() {
                            problem(
                                key(field),
                                format!("file {} does not exist", path.display()),
                            );
                            ok = false;
                        }
                    }
                    Some(Grant::Certificate {
                        certificate_file,
                        private_key_file,
                    })
                }
                _ => {
                    problem(
                        key("certificate_file"),
                        "missing; the PEM certificate uploaded to App registrations > Certificates & secrets (private_key_file alone is not enough)".into(),
                    );
                    ok = false;
                    None
                }
            }
        }
        "client_credentials" => match secret("client_secret", raw.client_secret, problem) {
            Some(client_secret) => Some(Grant::ClientSecret { client_secret }),
            None => {
                if ok {
                    problem(
                        key("client_secret"),
                        "missing; give it as { env = \"VARIABLE\" } or { file = \"PATH\" } (the secret's Value from App registrations > Certificates & secrets), or give certificate_file and private_key_file".into(),
                    );
                }
                ok = false;
                None
            }
        },
        "password" => {
            let username = raw.username.clone();
            if username.is_none() {
                problem(
                    key("username"),
                    "missing; the account's user principal name (user@tenant)".into(),
                );
                ok = false;
            }
            let password = secret("password", raw.password, problem);
            if password.is_none() {
                problem(
                    key("password"),
                    "missing; give it as { env = \"VARIABLE\" } or { file = \"PATH\" }".into(),
                );
                ok = false;
            }
            let client_secret = secret("client_secret", raw.client_secret, problem);
            match (username, password) {
                (Some(username), Some(password)) => Some(Grant::Password {
                    username,
                    password,
                    client_secret,
                }),
                _ => None,
            }
        }
        "device_code" => Some(Grant::RefreshToken {
            login: DelegatedLogin::DeviceCode,
            client_secret: secret("client_secret", raw.client_secret, problem),
        }),
        "refresh_token" => {
            let client_secret = secret("client_secret", raw.client_secret, problem);
            match secret("refresh_token", raw.refresh_token, problem) {
                Some(seed) => Some(Grant::RefreshToken {
                    login: DelegatedLogin::Seed(seed),
                    client_secret,
                }),
                None => {
                    problem(
                        key("refresh_token"),
                        "missing; the first refresh token, as { env = \"VARIABLE\" } or { file = \"PATH\" } (or use flow = \"device_code\" and `mailintake login`)".into(),
                    );
                    ok = false;
                    None
                }
            }
        }
        other => {
            problem(
                key("flow"),
                format!(
                    "unknown flow `{other}`; expected \"client_credentials\", \"password\", \"device_code\" or \"refresh_token\""
                ),
            );
            ok = false;
            None
        }
    };

    if raw.client_id.trim().is_empty() {
        problem(
            key("client_id"),
            "must not be empty; the Application (client) ID".into(),
        );
        ok = false;
    }

    let tenant = raw
        .tenant
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let authority_text = match (&raw.authority, tenant) {
        (Some(authority), _) => Some(authority.replace("{tenant}", tenant.unwrap_or(""))),
        (None, Some(tenant)) => Some(format!("{DEFAULT_AUTHORITY_HOST}/{tenant}")),
        (None, None) => None,
    }
    .map(|a| a.trim_end_matches('/').to_string());
    let authority_field = if raw.authority.is_some() {
        "authority"
    } else {
        "tenant"
    };
    let token_url = match (&raw.token_url, &authority_text) {
        (Some(url), _) => parse_endpoint(url)
            .map_err(|e| problem(key("token_url"), e))
            .ok(),
        (None, Some(authority)) => parse_endpoint(&format!("{authority}/oauth2/v2.0/token"))
            .map_err(|e| problem(key(authority_field), e))
            .ok(),
        (None, None) => {
            problem(
                key("tenant"),
                "missing; give the Directory (tenant) ID or domain, or an explicit authority or token_url".into(),
            );
            None
        }
    };
    if token_url.is_none() {
        ok = false;
    }
    // The authority: as configured, or the Entra-shaped token_url without /oauth2/v2.0/token.
    let authority = authority_text
        .as_deref()
        .and_then(|a| parse_endpoint(a).ok())
        .or_else(|| {
            let url = token_url.as_ref()?.as_str();
            parse_endpoint(url.strip_suffix("/oauth2/v2.0/token")?).ok()
        });
    let device_code_url = match &raw.device_code_url {
        Some(url) => parse_endpoint(url)
            .map_err(|e| {
                problem(key("device_code_url"), e);
                ok = false;
            })
            .ok(),
        None => authority
            .as_ref()
            .and_then(|a| parse_endpoint(&format!("{a}/oauth2/v2.0/devicecode")).ok()),
    };
    if flow == "device_code" && device_code_url.is_none() && token_url.is_some() {
        problem(
            key("device_code_url"),
            "missing; flow = \"device_code\" needs the device authorization endpoint: give tenant or authority (Entra), or device_code_url".into(),
        );
        ok = false;
    }
    let secret_expires = raw.secret_expires.as_deref().and_then(|text| {
        match humantime::parse_rfc3339_weak(&format!("{}T00:00:00", text.trim())) {
            Ok(at) => at
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs() as i64),
            Err(_) => {
                problem(
                    key("secret_expires"),
                    "expected a date like \"2027-05-31\" (the Expires column in Certificates & secrets)".into(),
                );
                ok = false;
                None
            }
        }
    });

    // National clouds have their own Exchange Online resource; the authority says which cloud.
    let resource = exchange_resource_for(authority.as_ref().and_then(|a| a.host_str()));
    let scope = raw.scope.clone().unwrap_or_else(|| match flow {
        "password" | "device_code" | "refresh_token" => {
            format!("{resource}/IMAP.AccessAsUser.All {resource}/SMTP.Send offline_access")
        }
        _ => format!("{resource}/.default"),
    });
    if flow == "client_credentials" && !scope.trim_end().ends_with("/.default") {
        problem(
            key("scope"),
            format!(
                "app-only tokens need a scope ending in /.default, e.g. {EXCHANGE_RESOURCE}/.default"
            ),
        );
        ok = false;
    }
    if flow == "device_code" && !scope.split_whitespace().any(|s| s == "offline_access") {
        problem(
            key("scope"),
            "must include offline_access: without it no refresh token is issued and the worker cannot run unattended".into(),
        );
        ok = false;
    }

    let ca_file = raw.ca_file.map(|p| base_dir.join(p));
    if let Some(ca) = &ca_file
        && !ca.is_file()
    {
        problem(
            key("ca_file"),
            format!("file {} does not exist", ca.display()),
        );
        ok = false;
    }

    match (ok, grant, token_url) {
        (true, Some(grant), Some(token_url)) => Some(Identity {
            name: name.to_string(),
            client_id: raw.client_id,
            grant,
            token_url,
            device_code_url,
            authority,
            scope,
            ca_file,
            secret_expires,
        }),
        _ => None,
    }
}

/// Exchange Online's resource in the cloud of an Entra authority host: US Government (GCC High)
/// and China (21Vianet) differ from the worldwide service. DoD tenants
/// (`https://outlook-dod.office365.us`) share GCC High's authority, so they set `scope` themselves.
fn exchange_resource_for(authority_host: Option<&str>) -> &'static str {
    match authority_host.map(|h| h.to_ascii_lowercase()).as_deref() {
        Some("login.microsoftonline.us") => "https://outlook.office365.us",
        Some("login.partner.microsoftonline.cn" | "login.chinacloudapi.cn") => {
            "https://partner.outlook.cn"
        }
        _ => EXCHANGE_RESOURCE,
    }
}

/// Token endpoints must use HTTPS; plain HTTP is allowed only to a loopback address (tests, a local
/// proxy), because the request carries the client secret.
fn parse_endpoint(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(url.host_str().unwrap_or("")) => Ok(url),
        "http" => Err(format!(
            "`{text}` uses plain http; token endpoints must use https (http is allowed only for loopback addresses)"
        )),
        other => Err(format!("`{text}` has scheme `{other}`; expected https")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn parse_duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| format!("`{t}` is not a duration ({e}); write e.g. \"30s\", \"5m\"")),
    }
}

/// `postgres://user:password@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The file's shape. Kept private: only validated values leave this module.
mod raw {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use secrecy::SecretString;
    use serde::Deserialize;

    use super::TlsMode;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub database: Option<Database>,
        #[serde(default)]
        pub identities: BTreeMap<String, Identity>,
        #[serde(default)]
        pub mailboxes: Vec<Mailbox>,
        pub token_store: Option<TokenStore>,
        pub http: Option<Http>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Http {
        pub listen: Option<String>,
        pub bearer_token: Option<Secret>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TokenStore {
        #[serde(default)]
        pub keys: Vec<TokenKey>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TokenKey {
        pub id: String,
        pub key: Secret,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Database {
        pub url: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Identity {
        pub flow: Option<String>,
        pub tenant: Option<String>,
        pub client_id: String,
        pub client_secret: Option<Secret>,
        pub username: Option<String>,
        pub password: Option<Secret>,
        pub scope: Option<String>,
        pub authority: Option<String>,
        pub token_url: Option<String>,
        pub device_code_url: Option<String>,
        pub ca_file: Option<PathBuf>,
        pub certificate_file: Option<PathBuf>,
        pub private_key_file: Option<PathBuf>,
        pub refresh_token: Option<Secret>,
        pub secret_expires: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Mailbox {
        pub name: String,
        pub address: String,
        pub identity: String,
        pub imap: Imap,
        pub folder: Option<String>,
        pub folders: Option<Vec<String>>,
        pub max_connections: Option<usize>,
        pub poll_interval: Option<String>,
        pub max_message_bytes: Option<u64>,
        pub dispose: Option<String>,
        pub processed_folder: Option<String>,
        pub quarantine_folder: Option<String>,
        pub junk_folder: Option<String>,
        pub idle: Option<bool>,
        pub idle_interval: Option<String>,
        pub fetch_batch_bytes: Option<u64>,
        pub fetch_batch_messages: Option<usize>,
        pub mode: Option<String>,
        pub first_start: Option<String>,
        pub max_new_tickets_per_sender_per_hour: Option<u32>,
        pub reopen_closed: Option<bool>,
        pub keep_raw: Option<String>,
        pub smtp: Option<Smtp>,
        pub acknowledge: Option<Acknowledge>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Smtp {
        pub host: String,
        pub port: Option<u16>,
        pub tls: Option<TlsMode>,
        pub ca_file: Option<PathBuf>,
        pub timeout: Option<String>,
        pub max_per_minute: Option<u32>,
        pub max_recipients_per_day: Option<u32>,
        pub retry_delay: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Acknowledge {
        pub enabled: Option<bool>,
        pub follow_ups: Option<bool>,
        pub follow_up_interval: Option<String>,
        pub from: Option<String>,
        pub template: Option<PathBuf>,
        pub template_html: Option<PathBuf>,
        pub deny: Option<Vec<String>>,
        pub max_per_recipient_per_day: Option<u32>,
        pub since: Option<String>,
        pub quarantine_notice: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Imap {
        pub host: String,
        pub port: Option<u16>,
        pub tls: Option<TlsMode>,
        pub ca_file: Option<PathBuf>,
        pub connect_timeout: Option<String>,
        pub command_timeout: Option<String>,
    }

    /// Where a secret comes from: `{ env = "NAME" }`, `{ file = "PATH" }`, or a plain string (meant
    /// for `MAILINTAKE_…` environment overrides; avoid literal secrets in files).
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a secret: { env = \"NAME\" }, { file = \"PATH\" } or a string"
    )]
    pub enum Secret {
        Env { env: String },
        File { file: PathBuf },
        Literal(SecretString),
    }

    impl Secret {
        pub fn resolve(self, base_dir: &Path) -> Result<SecretString, String> {
            match self {
                Secret::Env { env } => match std::env::var(&env) {
                    Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                    Ok(_) => Err(format!(
                        "environment variable {env} is empty; set it to the secret"
                    )),
                    Err(_) => Err(format!(
                        "environment variable {env} is not set; set it to the secret"
                    )),
                },
                Secret::File { file } => {
                    let path = base_dir.join(&file);
                    match std::fs::read_to_string(&path) {
                        Ok(text) if !text.trim().is_empty() => Ok(SecretString::from(
                            text.trim_end_matches(['\r', '\n']).to_string(),
                        )),
                        Ok(_) => Err(format!("secret file {} is empty", path.display())),
                        Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
                    }
                }
                Secret::Literal(secret) => Ok(secret),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn load(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        Config::from_toml_str(text, Path::new("."))
    }

    const MINIMAL: &str = r#"
        [identities.app]
        tenant = "contoso.onmicrosoft.com"
        client_id = "11111111-2222-3333-4444-555555555555"
        client_secret = "s3cr3t-value"

        [[mailboxes]]
        name = "support"
        address = "support@contoso.com"
        identity = "app"
        imap = { host = "outlook.office365.com" }
    "#;

    #[test]
    fn minimal_config_gets_entra_defaults() {
        let config = load(MINIMAL).unwrap();
        let identity = config.identity("app");
        assert_eq!(
            identity.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(identity.scope, "https://outlook.office365.com/.default");
        let mailbox = &config.mailboxes[0];
        assert_eq!(mailbox.imap.port, 993);
        assert_eq!(mailbox.imap.tls, TlsMode::Implicit);
        assert_eq!(mailbox.folders, ["INBOX"]);
        assert_eq!(mailbox.dispose, Disposal::MarkSeen);
        assert_eq!(mailbox.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(config.database.url, "sqlite://data/mailintake.db");
    }

    #[test]
    fn delegated_flow_defaults_to_delegated_scopes() {
        let text = MINIMAL.replace(
            "client_secret = \"s3cr3t-value\"",
            "flow = \"password\"\nusername = \"agent@contoso.com\"\npassword = \"pw\"",
        );
        let config = load(&text).unwrap();
        let identity = config.identity("app");
        assert!(identity.scope.contains("IMAP.AccessAsUser.All"));
        assert!(identity.scope.contains("offline_access"));
        assert!(matches!(identity.grant, Grant::Password { .. }));
    }

    #[test]
    fn token_url_and_authority_override_the_default() {
        let text = MINIMAL.replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "token_url = \"https://idp.example.net/oauth/token\"",
        );
        let config = load(&text).unwrap();
        assert_eq!(
            config.identity("app").token_url.as_str(),
            "https://idp.example.net/oauth/token"
        );

        let text = MINIMAL.replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "tenant = \"t1\"\nauthority = \"https://login.microsoftonline.us/{tenant}/\"",
        );
        let config = load(&text).unwrap();
        assert_eq!(
            config.identity("app").token_url.as_str(),
            "https://login.microsoftonline.us/t1/oauth2/v2.0/token"
        );
    }

    #[test]
    fn plain_http_is_only_allowed_to_loopback() {
        let text = MINIMAL.replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "token_url = \"http://idp.example.net/token\"",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "identities.app.token_url");
        assert!(problems[0].message.contains("https"), "{problems:?}");

        let text = MINIMAL.replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "token_url = \"http://127.0.0.1:8080/t/oauth2/v2.0/token\"",
        );
        assert!(load(&text).is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\npoll_intervall = \"5s\"",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].key.ends_with("poll_intervall"), "{problems:?}");
        assert!(problems[0].message.contains("unknown key"), "{problems:?}");
    }

    #[test]
    fn missing_secret_variable_is_named_without_values() {
        let text = MINIMAL.replace(
            "client_secret = \"s3cr3t-value\"",
            "client_secret = { env = \"MAILINTAKE_TEST_SURELY_UNSET_VARIABLE\" }",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "identities.app.client_secret");
        assert!(
            problems[0]
                .message
                .contains("MAILINTAKE_TEST_SURELY_UNSET_VARIABLE")
        );
    }

    #[test]
    fn mistyped_secret_is_not_echoed() {
        // A secret given where a number is expected must not appear in the message.
        let text = MINIMAL.replace(
            "imap = { host = \"outlook.office365.com\" }",
            "imap = { host = \"h\", port = \"s3cr3t-value\" }",
        );
        let problems = load(&text).unwrap_err();
        let rendered = format!("{problems:?}");
        assert!(!rendered.contains("s3cr3t-value"), "{rendered}");
        assert!(rendered.contains("mailboxes"), "{rendered}");
    }

    #[test]
    fn secrets_never_appear_in_debug() {
        let config = load(MINIMAL).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        let Grant::ClientSecret { client_secret } = &config.identity("app").grant else {
            panic!("expected a client secret grant");
        };
        assert_eq!(client_secret.expose_secret(), "s3cr3t-value");
    }

    #[test]
    fn undeclared_identity_lists_the_declared_ones() {
        let text = MINIMAL.replace("identity = \"app\"", "identity = \"missing\"");
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].identity");
        assert!(
            problems[0].message.contains("declared identities: app"),
            "{problems:?}"
        );
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "from-file\n").unwrap();
        let text = MINIMAL.replace(
            "client_secret = \"s3cr3t-value\"",
            "client_secret = { file = \"secret.txt\" }",
        );
        let config = Config::from_toml_str(&text, dir.path()).unwrap();
        let Grant::ClientSecret { client_secret } = &config.identity("app").grant else {
            panic!("expected a client secret grant");
        };
        assert_eq!(client_secret.expose_secret(), "from-file");
    }

    #[test]
    fn acknowledgement_templates_are_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ack.txt"), "Ticket {ticket} for {customer}").unwrap();
        let text = MINIMAL.replace(
            "imap = { host = \"outlook.office365.com\" }",
            "imap = { host = \"outlook.office365.com\" }\nsmtp = { host = \"smtp.office365.com\" }\nacknowledge = { template = \"ack.txt\" }",
        );
        let problems = Config::from_toml_str(&text, dir.path()).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].acknowledge.template");
        assert!(problems[0].message.contains("{customer}"), "{problems:?}");
        assert!(check_template(DEFAULT_ACK_TEMPLATE).is_ok());
    }

    #[test]
    fn junk_folder_defaults_to_junk_and_must_name_a_folder() {
        assert_eq!(load(MINIMAL).unwrap().mailboxes[0].junk_folder, "Junk");
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\njunk_folder = \"Junk Email\"",
        );
        assert_eq!(load(&text).unwrap().mailboxes[0].junk_folder, "Junk Email");
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\njunk_folder = \" \"",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].junk_folder");
        assert!(problems[0].message.contains("Junk Email"), "{problems:?}");
    }

    #[test]
    fn several_folders_within_the_connection_limit() {
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nfolders = [\"INBOX\", \"Support/Urgent\"]",
        );
        let config = load(&text).unwrap();
        assert_eq!(config.mailboxes[0].folders, ["INBOX", "Support/Urgent"]);

        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nfolders = [\"INBOX\", \"A\", \"B\"]\nmax_connections = 2",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].folders");
        assert!(
            problems[0].message.contains("max_connections"),
            "{problems:?}"
        );
    }

    #[test]
    fn mailbox_modes_and_first_start_policies() {
        let config = load(MINIMAL).unwrap();
        let mailbox = &config.mailboxes[0];
        assert_eq!(mailbox.mode, Mode::Normal);
        assert_eq!(mailbox.first_start, FirstStart::All);
        assert!(mailbox.idle);
        assert_eq!(mailbox.idle_interval, Duration::from_secs(600));

        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nmode = \"shadow\"\nfirst_start = \"2026-11-01\"\ndispose = \"delete\"",
        );
        let config = load(&text).unwrap();
        let mailbox = &config.mailboxes[0];
        assert_eq!(mailbox.mode, Mode::Shadow);
        assert_eq!(mailbox.first_start, FirstStart::Since(1_793_491_200_000));
        assert_eq!(mailbox.dispose, Disposal::Delete);

        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nfirst_start = \"yesterday\"\nidle_interval = \"45m\"",
        );
        let problems = load(&text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["mailboxes[0].first_start", "mailboxes[0].idle_interval"],
            "{problems:?}"
        );
    }

    fn with_identity(keys: &str) -> String {
        MINIMAL.replace("client_secret = \"s3cr3t-value\"", keys)
    }

    #[test]
    fn certificate_credentials_read_both_files_or_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.pem"), "pem").unwrap();
        std::fs::write(dir.path().join("app.key"), "key").unwrap();
        let text = with_identity("certificate_file = \"app.pem\"\nprivate_key_file = \"app.key\"");
        let config = Config::from_toml_str(&text, dir.path()).unwrap();
        let Grant::Certificate {
            certificate_file,
            private_key_file,
        } = &config.identity("app").grant
        else {
            panic!("expected a certificate grant");
        };
        assert_eq!(certificate_file, &dir.path().join("app.pem"));
        assert_eq!(private_key_file, &dir.path().join("app.key"));
        // One PEM file with both the certificate and the key.
        let text = with_identity("certificate_file = \"app.pem\"");
        let config = Config::from_toml_str(&text, dir.path()).unwrap();
        assert!(matches!(
            &config.identity("app").grant,
            Grant::Certificate { private_key_file, .. } if private_key_file == &dir.path().join("app.pem")
        ));
        // Not both a secret and a certificate; files must exist.
        let text = with_identity(
            "client_secret = \"x\"\ncertificate_file = \"app.pem\"\nprivate_key_file = \"missing.key\"",
        );
        let problems = Config::from_toml_str(&text, dir.path()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "identities.app.client_secret",
                "identities.app.private_key_file"
            ],
            "{problems:?}"
        );
    }

    const TOKEN_STORE: &str = "[token_store]\nkeys = [{ id = \"k2\", key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\" }, { id = \"k1\", key = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\" }]\n";

    #[test]
    fn device_code_identities_need_token_keys_and_get_delegated_defaults() {
        let text = with_identity("flow = \"device_code\"");
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "token_store.keys", "{problems:?}");
        assert!(problems[0].message.contains("openssl rand -base64 32"));

        let config = load(&format!("{TOKEN_STORE}{text}")).unwrap();
        let identity = config.identity("app");
        assert_eq!(identity.grant.flow_name(), "device_code");
        assert!(identity.grant.is_delegated());
        assert!(identity.scope.contains("offline_access"));
        assert_eq!(
            identity.device_code_url.as_ref().unwrap().as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
        );
        assert_eq!(
            identity.authority.as_ref().unwrap().as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com"
        );
        let ids: Vec<&str> = config.token_keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["k2", "k1"], "the first key encrypts");
        assert!(!format!("{config:?}").contains("MDEyMzQ1"));

        let text = with_identity(
            "flow = \"device_code\"\nscope = \"https://outlook.office365.com/IMAP.AccessAsUser.All\"",
        );
        let problems = load(&format!("{TOKEN_STORE}{text}")).unwrap_err();
        assert_eq!(problems[0].key, "identities.app.scope");
        assert!(problems[0].message.contains("offline_access"));
    }

    #[test]
    fn token_keys_must_be_32_bytes_with_unique_ids() {
        let text = format!(
            "[token_store]\nkeys = [{{ id = \"a\", key = \"c2hvcnQ=\" }}, {{ id = \"a\", key = \"x\" }}]\n{MINIMAL}"
        );
        let problems = load(&text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["token_store.keys[0].key", "token_store.keys[1].id"],
            "{problems:?}"
        );
        assert!(!format!("{problems:?}").contains("c2hvcnQ="));
    }

    #[test]
    fn refresh_token_flow_needs_its_seed_and_flows_name_foreign_keys() {
        let text = format!("{TOKEN_STORE}{}", with_identity("flow = \"refresh_token\""));
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "identities.app.refresh_token");
        let text = format!(
            "{TOKEN_STORE}{}",
            with_identity("flow = \"refresh_token\"\nrefresh_token = \"seed\"")
        );
        let config = load(&text).unwrap();
        assert!(matches!(
            config.identity("app").grant,
            Grant::RefreshToken {
                login: DelegatedLogin::Seed(_),
                ..
            }
        ));
        let text = with_identity("client_secret = \"x\"\nusername = \"u@contoso.com\"");
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "identities.app.username");
        assert!(problems[0].message.contains("flow = \"password\""));
    }

    #[test]
    fn national_clouds_get_their_exchange_resource() {
        let text = MINIMAL.replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "tenant = \"t1\"\nauthority = \"https://login.microsoftonline.us/{tenant}\"",
        );
        let identity = load(&text).unwrap().identity("app").clone();
        assert_eq!(identity.scope, "https://outlook.office365.us/.default");
        assert_eq!(
            identity.device_code_url.unwrap().as_str(),
            "https://login.microsoftonline.us/t1/oauth2/v2.0/devicecode"
        );
        let text = format!(
            "{TOKEN_STORE}{}",
            with_identity("flow = \"device_code\"").replace(
                "tenant = \"contoso.onmicrosoft.com\"",
                "tenant = \"t1\"\nauthority = \"https://login.partner.microsoftonline.cn/{tenant}\"",
            )
        );
        let identity = load(&text).unwrap().identity("app").clone();
        assert_eq!(
            identity.scope,
            "https://partner.outlook.cn/IMAP.AccessAsUser.All https://partner.outlook.cn/SMTP.Send offline_access"
        );
    }

    #[test]
    fn secret_expiry_date_is_parsed() {
        let text = with_identity("client_secret = \"x\"\nsecret_expires = \"2027-05-31\"");
        assert_eq!(
            load(&text).unwrap().identity("app").secret_expires,
            Some(1_811_721_600)
        );
        let text = with_identity("client_secret = \"x\"\nsecret_expires = \"31.05.2027\"");
        assert_eq!(
            load(&text).unwrap_err()[0].key,
            "identities.app.secret_expires"
        );
    }

    #[test]
    fn postgres_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db.internal/tickets"),
            "postgres://u:***@db.internal/tickets"
        );
    }

    #[test]
    fn http_is_off_by_default_and_loopback_unless_a_token_is_set() {
        assert!(load(MINIMAL).unwrap().http.is_none());
        let on = load(&format!("{MINIMAL}\n[http]\n")).unwrap().http.unwrap();
        assert_eq!(on.listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert!(on.bearer_token.is_none());

        let open = load(&format!("{MINIMAL}\n[http]\nlisten = \"0.0.0.0:9090\"\n")).unwrap_err();
        assert_eq!(open[0].key, "http.listen");
        assert!(open[0].message.contains("bearer_token"), "{open:?}");

        let with_token = load(&format!(
            "{MINIMAL}\n[http]\nlisten = \"[::]:9191\"\nbearer_token = \"0123456789abcdef0123\"\n"
        ))
        .unwrap()
        .http
        .unwrap();
        assert_eq!(with_token.listen.port(), 9191);
        assert_eq!(
            with_token.bearer_token.unwrap().expose_secret(),
            "0123456789abcdef0123"
        );

        let short = load(&format!("{MINIMAL}\n[http]\nbearer_token = \"short\"\n")).unwrap_err();
        assert_eq!(short[0].key, "http.bearer_token");
        assert!(!short[0].message.contains("short"), "never echo the token");
        let bad = load(&format!("{MINIMAL}\n[http]\nlisten = \"localhost\"\n")).unwrap_err();
        assert_eq!(bad[0].key, "http.listen");
    }
}
