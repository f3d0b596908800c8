//! OAuth2 access tokens for IMAP and SMTP, from Entra ID or any RFC 6749 token endpoint.
//!
//! One [`TokenCache`] serves the whole process. It keeps one token per (identity, scope) and hands
//! the same token to every mailbox and protocol using that identity; callers that arrive while a
//! token is being fetched wait for that one request instead of starting their own (single flight).
//! Tokens are renewed ahead of expiry, with a margin and some jitter so that many processes on one
//! identity do not all renew in the same second.
//!
//! A token request is retried (with backoff, within a bounded total time) when the endpoint could
//! not be reached, answered 5xx, or throttled with 429 (honouring `Retry-After`); never when it
//! refused the credentials: see [`TokenError::is_retryable`] and [`entra::remedy`].
//!
//! The token request is a form POST and a JSON answer. It is written directly on reqwest rather
//! than with the `oauth2` crate because that crate's error type drops the fields an operator needs
//! (Entra's `error_codes`, `trace_id`, `correlation_id`), and Entra's error body is the product's
//! most important diagnostic.

pub mod assertion;
mod device;
pub mod entra;
mod request;
pub mod sealed;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use crate::config::{DelegatedLogin, Grant, Identity, TokenKey};
use crate::store::Store;
pub use device::{DeviceLogin, DevicePrompt};
pub use entra::{ErrorBody, Remedy};
use sealed::TokenKeys;

/// Tokens are renewed this long before they expire (or at 80% of a short lifetime), so a token
/// never expires between being handed out and being used in a login.
const RENEW_AHEAD: Duration = Duration::from_secs(300);

/// When renewing fails for a passing reason, the current token is still handed out if it stays
/// valid for at least this long.
const STILL_USABLE: Duration = Duration::from_secs(30);

/// A bearer token and when it stops being usable.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: SecretString,
    /// When the cache considers the token stale (ahead of its real expiry).
    pub renew_at: Instant,
    /// The lifetime the provider gave it.
    pub expires_in: Duration,
    /// When it stops being valid: a session logged in with it must end before then.
    pub expires_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why no token could be had. The caller's question is "retry, or tell a person?":
/// see [`TokenError::needs_admin`] and [`TokenError::is_retryable`].
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The provider refused the request with an OAuth2 error (bad secret, unknown client, …).
    #[error("{}", describe_rejection(.identity, .status, .body, .retry_after))]
    Rejected {
        identity: String,
        status: u16,
        body: Box<ErrorBody>,
        /// The `Retry-After` the provider asked for (429, 503), when it sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// The provider could not be reached or did not answer in time.
    #[error("{}", describe_unreachable(.identity, .url, .source))]
    Unreachable {
        identity: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Every attempt within the retry budget failed or hung.
    #[error(
        "token endpoint of identity `{identity}` ({url}) gave no token within {}s ({attempts} attempt(s)); last problem: {last}",
        .after.as_secs()
    )]
    GaveUp {
        identity: String,
        url: String,
        after: Duration,
        attempts: usize,
        last: String,
    },
    /// The provider answered something that is not a token response.
    #[error(
        "token endpoint of identity `{identity}` answered HTTP {status} with no usable body: {detail}"
    )]
    Malformed {
        identity: String,
        status: u16,
        detail: String,
    },
    /// The identity's local setup is broken (e.g. an unreadable CA or key file).
    #[error("identity `{identity}`: {detail}")]
    Setup { identity: String, detail: String },
}

impl TokenError {
    /// True when only a person can fix this (wrong secret, missing consent, unknown client, a
    /// revoked refresh token…): the mailbox stops and retries slowly.
    pub fn needs_admin(&self) -> bool {
        match self {
            TokenError::Rejected { status, body, .. } => {
                entra::remedy(body, *status) != Remedy::Retry
            }
            TokenError::Setup { .. } => true,
            TokenError::Unreachable { .. }
            | TokenError::GaveUp { .. }
            | TokenError::Malformed { .. } => false,
        }
    }

    /// True when a person must sign in again (`mailintake login`) rather than change the app.
    pub fn needs_sign_in(&self) -> bool {
        matches!(self, TokenError::Rejected { status, body, .. }
            if entra::remedy(body, *status) == Remedy::SignInAgain)
    }

    /// True when the same request may succeed soon: network trouble, 5xx, 429,
    /// `temporarily_unavailable`. Never for `invalid_client`/`invalid_grant` and the like.
    pub fn is_retryable(&self) -> bool {
        match self {
            TokenError::Rejected { status, body, .. } => {
                entra::remedy(body, *status) == Remedy::Retry
            }
            TokenError::Unreachable { .. } => true,
            TokenError::Malformed { status, .. } => *status == 429 || *status >= 500,
            TokenError::GaveUp { .. } | TokenError::Setup { .. } => false,
        }
    }

    /// The AADSTS code, when Entra gave one.
    pub fn aadsts_code(&self) -> Option<u64> {
        match self {
            TokenError::Rejected { body, .. } => body.aadsts_code(),
            _ => None,
        }
    }

    /// The OAuth `error` value, when the provider gave one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::Rejected { body, .. } => Some(&body.error),
            _ => None,
        }
    }
}

/// An unreachable token endpoint in the admin's words: the innermost cause (a name that does not
/// resolve, a refused or timed-out connection, a certificate) rather than reqwest's "error sending
/// request", and what to check.
fn describe_unreachable(identity: &str, url: &str, error: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut next = std::error::Error::source(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    let cause = if error.is_timeout() {
        "no answer in time".to_string()
    } else if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    };
    let (host, port) = reqwest::Url::parse(url)
        .ok()
        .map(|u| {
            (
                u.host_str().unwrap_or("?").to_string(),
                u.port_or_known_default().unwrap_or(443),
            )
        })
        .unwrap_or_else(|| ("?".into(), 443));
    format!(
        "token endpoint of identity `{identity}` ({url}) could not be reached: {cause}\n  fix: this machine must resolve {host} and reach it on port {port} (DNS, firewall, or an HTTP proxy given in HTTPS_PROXY); a national cloud has its own host: set `authority`"
    )
}

fn describe_rejection(
    identity: &str,
    status: &u16,
    body: &ErrorBody,
    retry_after: &Option<Duration>,
) -> String {
    let mut text = format!(
        "identity `{identity}`: the token endpoint refused (HTTP {status}, {}): {}",
        body.error,
        body.summary()
    );
    if let Some(hint) = entra::hint(body) {
        text.push_str(&format!(
            "\n  fix: {}",
            hint.replace("<identity>", identity)
        ));
    }
    if let Some(retry_after) = retry_after {
        text.push_str(&format!(
            "\n  the provider asked to retry after {}s",
            retry_after.as_secs()
        ));
    }
    let ids: Vec<String> = [
        ("trace id", &body.trace_id),
        ("correlation id", &body.correlation_id),
        ("timestamp", &body.timestamp),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}: {v}")))
    .collect();
    if !ids.is_empty() {
        text.push_str(&format!("\n  {}", ids.join(", ")));
    }
    text
}

/// How token requests are retried. The defaults suit a long-running worker; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: usize,
    /// The first wait; each further wait doubles (with jitter) up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// The whole token request, every attempt and wait included, never takes longer. A
    /// `Retry-After` that would end beyond it is not waited for: the error is returned at once.
    pub total: Duration,
    /// The limit for one HTTP request (connect, send, answer).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            total: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A token in a slot, with its real expiry (the `AccessToken` only says when to renew) and the
/// identity's settings it was fetched with.
#[derive(Clone)]
struct Cached {
    token: AccessToken,
    expires_at: Instant,
    settings: Settings,
}

/// A digest of what an identity asks for tokens with: its endpoint, client, grant and
/// credentials. A token cached under other settings is not used: `mailintake identity set`
/// (or a changed file) takes effect with the next token, not when the old one expires — a
/// new client or tenant gets its own token, and a wrong new secret shows at once.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Settings([u8; 32]);

impl Settings {
    fn of(identity: &Identity) -> Settings {
        use secrecy::ExposeSecret;
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        part(identity.client_id.as_bytes());
        part(identity.token_url.as_str().as_bytes());
        part(
            identity
                .ca_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        let secret = |s: &Option<SecretString>| {
            s.as_ref()
                .map(|s| s.expose_secret().to_string())
                .unwrap_or_default()
        };
        match &identity.grant {
            Grant::ClientSecret { client_secret } => {
                part(b"client_secret");
                part(client_secret.expose_secret().as_bytes());
            }
            Grant::Certificate {
                certificate_file,
                private_key_file,
            } => {
                part(b"certificate");
                part(certificate_file.display().to_string().as_bytes());
                part(private_key_file.display().to_string().as_bytes());
            }
            Grant::Password {
                username,
                password,
                client_secret,
            } => {
                part(b"password");
                part(username.as_bytes());
                part(password.expose_secret().as_bytes());
                part(secret(client_secret).as_bytes());
            }
            Grant::RefreshToken {
                login,
                client_secret,
            } => {
                part(b"refresh_token");
                if let DelegatedLogin::Seed(seed) = login {
                    part(seed.expose_secret().as_bytes());
                }
                part(secret(client_secret).as_bytes());
            }
        }
        Settings(hash.finalize().into())
    }
}

/// One slot per (identity, scope); its async mutex is the single-flight lock.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The process-wide token cache.
pub struct TokenCache {
    /// One HTTP client per identity, because each identity may trust an extra CA.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Keyed by (identity name, scope): one identity may need tokens for several scopes.
    slots: Mutex<HashMap<(String, String), Slot>>,
    retry: RetryPolicy,
    /// Where delegated identities' refresh tokens are kept, encrypted; `None` in processes that
    /// only use app-only or password identities.
    refresh_store: Option<RefreshStore>,
    /// The newest refresh token per (identity, scope), so that a failed database write never
    /// makes the process fall back to an older one.
    refresh_tokens: Mutex<HashMap<(String, String), SecretString>>,
}

/// The database and the keys for refresh tokens at rest.
struct RefreshStore {
    store: Store,
    keys: TokenKeys,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::with_retry_policy(RetryPolicy::default())
    }

    /// A cache whose token requests are retried by `retry` (tests use short delays).
    pub fn with_retry_policy(retry: RetryPolicy) -> Self {
        TokenCache {
            clients: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            retry,
            refresh_store: None,
            refresh_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps delegated identities' refresh tokens in `store`, encrypted with `keys` (the config's
    /// `[token_store] keys`). Needed for `device_code` and `refresh_token` identities.
    pub fn with_token_store(mut self, store: Store, keys: &[TokenKey]) -> Self {
        self.refresh_store = Some(RefreshStore {
            store,
            keys: TokenKeys::new(keys),
        });
        self
    }

    /// A valid token for `identity` and its configured scope, from the cache or freshly requested.
    pub async fn token(&self, identity: &Identity) -> Result<AccessToken, TokenError> {
        self.token_for_scope(identity, &identity.scope).await
    }

    /// Like [`TokenCache::token`], but renewed now unless the cached token stays valid for at
    /// least `at_least` more (or half its lifetime, for a token that lives shorter than twice
    /// that): a session that must not outlive its token (Exchange ends it) asks for this.
    pub async fn token_lasting(
        &self,
        identity: &Identity,
        at_least: Duration,
    ) -> Result<AccessToken, TokenError> {
        self.token_with_margin(identity, &identity.scope, at_least)
            .await
    }

    /// [`TokenCache::token_lasting`] for another scope than the identity's (Graph's).
    pub async fn token_for_scope_lasting(
        &self,
        identity: &Identity,
        scope: &str,
        at_least: Duration,
    ) -> Result<AccessToken, TokenError> {
        self.token_with_margin(identity, scope, at_least).await
    }

    /// A valid token for `identity` and `scope`. Concurrent callers for the same pair share one
    /// request.
    pub async fn token_for_scope(
        &self,
        identity: &Identity,
        scope: &str,
    ) -> Result<AccessToken, TokenError> {
        self.token_with_margin(identity, scope, Duration::ZERO)
            .await
    }

    async fn token_with_margin(
        &self,
        identity: &Identity,
        scope: &str,
        at_least: Duration,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(&identity.name, scope);
        let mut cached = slot.lock().await;
        let now = Instant::now();
        let settings = Settings::of(identity);
        if cached.as_ref().is_some_and(|c| c.settings != settings) {
            info!(identity = %identity.name, "the identity's settings changed; getting a token with the new ones");
            *cached = None;
        }
        if let Some(current) = cached.as_ref()
            && now < current.token.renew_at
            && current.expires_at > now + at_least.min(current.token.expires_in / 2)
        {
            return Ok(current.token.clone());
        }
        match self.fetch(identity, scope).await {
            Ok(fetched) => {
                *cached = Some(fetched.clone());
                Ok(fetched.token)
            }
            // Renewing ahead of expiry failed for a passing reason: keep using the current token
            // while it is still good, and try again on the next call.
            Err(e)
                if e.is_retryable()
                    || matches!(e, TokenError::GaveUp { .. } | TokenError::Malformed { .. }) =>
            {
                match cached.as_ref() {
                    Some(current) if current.expires_at > Instant::now() + STILL_USABLE => {
                        warn!(identity = %identity.name, error = %e,
                            "renewing the access token failed; the current one is still valid");
                        Ok(current.token.clone())
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets `identity`'s token if it is still `rejected`: the server refused it, so the next
    /// caller must fetch a new one. A newer token fetched meanwhile is kept.
    pub async fn invalidate(&self, identity: &str, rejected: &AccessToken) {
        let slots: Vec<Slot> = {
            let slots = self.slots.lock().expect("token cache lock poisoned");
            slots
                .iter()
                .filter(|((name, _), _)| name == identity)
                .map(|(_, slot)| Arc::clone(slot))
                .collect()
        };
        for slot in slots {
            let mut cached = slot.lock().await;
            if cached
                .as_ref()
                .is_some_and(|c| c.token.secret.expose_secret() == rejected.secret.expose_secret())
            {
                *cached = None;
            }
        }
    }

    fn slot(&self, identity: &str, scope: &str) -> Slot {
        let mut slots = self.slots.lock().expect("token cache lock poisoned");
        slots
            .entry((identity.to_string(), scope.to_string()))
            .or_default()
            .clone()
    }

    fn http_client(&self, identity: &Identity) -> Result<reqwest::Client, TokenError> {
        // By name and CA file: a CA changed at run time gets its own client.
        let key = format!(
            "{}|{}",
            identity.name,
            identity
                .ca_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        let mut clients = self.clients.lock().expect("token cache lock poisoned");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let setup = |detail: String| TokenError::Setup {
            identity: identity.name.clone(),
            detail,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("mailintake/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &identity.ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|e| setup(format!("cannot read ca_file {}: {e}", ca_file.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                setup(format!(
                    "ca_file {} is not a PEM certificate: {e}",
                    ca_file.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| setup(format!("cannot build an HTTP client: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Credentials are reported as expiring this long before they do (`check`, and a warning after
/// every token request).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// When the identity's own credential stops working, if mailintake can know: the certificate's
/// notAfter, or the configured `secret_expires` of a client secret. Returns what it is and when.
pub fn credential_expiry(identity: &Identity) -> Option<(&'static str, std::time::SystemTime)> {
    use crate::config::Grant;
    match &identity.grant {
        Grant::Certificate {
            certificate_file,
            private_key_file,
        } => assertion::ClientCertificate::load(certificate_file, private_key_file)
            .ok()
            .map(|c| ("certificate", c.not_after())),
        Grant::ClientSecret { .. } | Grant::Password { .. } | Grant::RefreshToken { .. } => {
            let at = u64::try_from(identity.secret_expires?).ok()?;
            Some((
                "client secret",
                std::time::UNIX_EPOCH + Duration::from_secs(at),
            ))
        }
    }
}

/// A sentence about a credential that expires within [`EXPIRY_WARNING`] (or has expired), with
/// what to do; `None` when it is far off or unknown.
pub fn expiry_warning(identity: &Identity) -> Option<String> {
    let (what, at) = credential_expiry(identity)?;
    let now = std::time::SystemTime::now();
    let renew = match what {
        "certificate" => {
            "upload a new certificate under App registrations > Certificates & secrets and replace certificate_file/private_key_file"
        }
        _ => {
            "create a new secret under App registrations > Certificates & secrets, update client_secret and secret_expires"
        }
    };
    match at.duration_since(now) {
        Err(_) => Some(format!(
            "the {what} of identity `{}` has expired: {renew}",
            identity.name
        )),
        Ok(left) if left < EXPIRY_WARNING => Some(format!(
            "the {what} of identity `{}` expires in {} day(s): {renew}",
            identity.name,
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// When to renew a token that lives `expires_in` from `obtained`: `RENEW_AHEAD` (at most a fifth
/// of the lifetime) before expiry, and up to a quarter of that margin earlier still, at random.
fn renew_at(obtained: Instant, expires_in: Duration) -> Instant {
    let ahead = RENEW_AHEAD.min(expires_in / 5);
    let jitter = ahead.mul_f64(random_fraction() / 4.0);
    obtained + expires_in - ahead - jitter
}

/// A random number in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_ahead_of_expiry_with_margin_and_jitter() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let at = renew_at(now, hour);
            // At least the five-minute margin, at most a quarter of it more.
            assert!(at <= now + hour - RENEW_AHEAD);
            assert!(at >= now + hour - RENEW_AHEAD - RENEW_AHEAD / 4);
            seen.insert(at);
        }
        assert!(seen.len() > 1, "renewal times are jittered");
        // A short lifetime is renewed at 80% or a little earlier.
        let short = renew_at(now, Duration::from_secs(10));
        assert!(short <= now + Duration::from_secs(8));
        assert!(short >= now + Duration::from_millis(7500));
    }

    fn identity_with_secret_expiring_in(days: u64) -> Identity {
        let at = std::time::SystemTime::now() + Duration::from_secs(days * 86_400);
        let date = &humantime::format_rfc3339(at).to_string()[..10];
        let text = format!(
            "[identities.app]\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsecret_expires = \"{date}\"\n\n[[mailboxes]]\nname = \"m\"\naddress = \"m@x.test\"\nidentity = \"app\"\nimap = {{ host = \"h\" }}\n"
        );
        crate::config::Config::from_toml_str(&text, std::path::Path::new("."))
            .unwrap()
            .identity("app")
            .clone()
    }

    #[test]
    fn a_secret_is_warned_about_thirty_days_ahead() {
        let soon = expiry_warning(&identity_with_secret_expiring_in(10)).unwrap();
        assert!(
            soon.contains("client secret of identity `app` expires in"),
            "{soon}"
        );
        assert!(soon.contains("Certificates & secrets"), "{soon}");
        assert!(expiry_warning(&identity_with_secret_expiring_in(90)).is_none());
        let mut expired = identity_with_secret_expiring_in(0);
        expired.secret_expires = Some(1);
        assert!(expiry_warning(&expired).unwrap().contains("has expired"));
    }

    fn rejected(error: &str, status: u16) -> TokenError {
        TokenError::Rejected {
            identity: "app".into(),
            status,
            body: Box::new(ErrorBody {
                error: error.into(),
                ..ErrorBody::default()
            }),
            retry_after: None,
        }
    }

    #[test]
    fn credentials_refusals_are_never_retried() {
        assert!(!rejected("invalid_client", 401).is_retryable());
        assert!(!rejected("invalid_grant", 400).is_retryable());
        assert!(rejected("invalid_client", 401).needs_admin());
        assert!(rejected("invalid_grant", 400).needs_sign_in());
        assert!(rejected("temporarily_unavailable", 400).is_retryable());
        assert!(rejected("whatever", 503).is_retryable());
        assert!(rejected("whatever", 429).is_retryable());
        assert!(!rejected("whatever", 503).needs_admin());
    }

    #[test]
    fn rejection_shows_description_fix_and_ids() {
        let error = TokenError::Rejected {
            identity: "contoso".into(),
            status: 400,
            body: Box::new(
                serde_json::from_str(
                    r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: tr-1\r\nCorrelation ID: co-2\r\nTimestamp: 2026-11-24 10:00:00Z","error_codes":[700082],"trace_id":"tr-1","correlation_id":"co-2","timestamp":"2026-11-24 10:00:00Z"}"#,
                )
                .unwrap(),
            ),
            retry_after: None,
        };
        let text = error.to_string();
        assert!(text.contains("HTTP 400, invalid_grant"), "{text}");
        assert!(
            text.contains("AADSTS700082: The refresh token has expired due to inactivity."),
            "{text}"
        );
        assert!(text.contains("mailintake login contoso"), "{text}");
        assert!(
            text.contains("trace id: tr-1, correlation id: co-2, timestamp: 2026-11-24 10:00:00Z"),
            "{text}"
        );
    }
}
