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
    pub scope: String,
    /// An extra CA certificate (PEM) trusted for the token endpoint, besides the system roots.
    pub ca_file: Option<PathBuf>,
}

/// The OAuth2 grant an identity uses, with the credentials that grant needs.
#[derive(Debug, Clone)]
pub enum Grant {
    /// App-only access (`client_credentials`) with a client secret.
    ClientSecret { client_secret: SecretString },
    /// Delegated access with a user's password (ROPC). Public client unless a secret is given.
    Password {
        username: String,
        password: SecretString,
        client_secret: Option<SecretString>,
    },
}

impl Grant {
    /// The `flow` value that selects this grant in the config file.
    pub fn flow_name(&self) -> &'static str {
        match self {
            Grant::ClientSecret { .. } => "client_credentials",
            Grant::Password { .. } => "password",
        }
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
    /// The folder that is watched for new mail.
    pub folder: String,
    pub poll_interval: Duration,
    pub max_message_bytes: u64,
    pub dispose: Disposal,
    pub quarantine_folder: String,
}

/// What happens in IMAP to a message once its outcome is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposal {
    /// Set `\Seen` and leave it in the folder.
    MarkSeen,
    /// Move it to this folder (created when missing).
    Move { folder: String },
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
            _ => {
                problem(key("dispose"), "must be \"seen\" or \"move\"".into());
                Disposal::MarkSeen
            }
        };
        if m.processed_folder.is_some() && dispose == Disposal::MarkSeen {
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
            folder: m.folder.unwrap_or_else(|| "INBOX".into()),
            poll_interval,
            max_message_bytes,
            dispose,
            quarantine_folder: m.quarantine_folder.unwrap_or_else(|| "Quarantine".into()),
        });
    }

    Config {
        database,
        identities,
        mailboxes,
    }
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
    let grant = match flow {
        "client_credentials" => {
            for (field, present) in [
                ("username", raw.username.is_some()),
                ("password", raw.password.is_some()),
            ] {
                if present {
                    problem(key(field), "is only used with flow = \"password\"".into());
                    ok = false;
                }
            }
            match secret("client_secret", raw.client_secret, problem) {
                Some(client_secret) => Some(Grant::ClientSecret { client_secret }),
                None => {
                    if ok {
                        problem(
                            key("client_secret"),
                            "missing; give it as { env = \"VARIABLE\" } or { file = \"PATH\" } (the secret's Value from App registrations > Certificates & secrets)".into(),
                        );
                    }
                    ok = false;
                    None
                }
            }
        }
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
        other => {
            problem(
                key("flow"),
                format!("unknown flow `{other}`; expected \"client_credentials\" or \"password\""),
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

    let token_url = match (&raw.token_url, &raw.authority, &raw.tenant) {
        (Some(url), _, _) => parse_endpoint(url)
            .map_err(|e| problem(key("token_url"), e))
            .ok(),
        (None, Some(authority), _) => {
            let authority = authority.replace("{tenant}", raw.tenant.as_deref().unwrap_or(""));
            parse_endpoint(&format!(
                "{}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ))
            .map_err(|e| problem(key("authority"), e))
            .ok()
        }
        (None, None, Some(tenant)) if !tenant.trim().is_empty() => parse_endpoint(&format!(
            "{DEFAULT_AUTHORITY_HOST}/{}/oauth2/v2.0/token",
            tenant.trim()
        ))
        .map_err(|e| problem(key("tenant"), e))
        .ok(),
        (None, None, _) => {
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

    let scope = raw.scope.clone().unwrap_or_else(|| match flow {
        "password" => format!(
            "{EXCHANGE_RESOURCE}/IMAP.AccessAsUser.All {EXCHANGE_RESOURCE}/SMTP.Send offline_access"
        ),
        _ => format!("{EXCHANGE_RESOURCE}/.default"),
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
            scope,
            ca_file,
        }),
        _ => None,
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
        pub ca_file: Option<PathBuf>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Mailbox {
        pub name: String,
        pub address: String,
        pub identity: String,
        pub imap: Imap,
        pub folder: Option<String>,
        pub poll_interval: Option<String>,
        pub max_message_bytes: Option<u64>,
        pub dispose: Option<String>,
        pub processed_folder: Option<String>,
        pub quarantine_folder: Option<String>,
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
        assert_eq!(mailbox.folder, "INBOX");
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
    fn postgres_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db.internal/tickets"),
            "postgres://u:***@db.internal/tickets"
        );
    }
}
