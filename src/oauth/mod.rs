//! OAuth2 access tokens for IMAP and SMTP, from Entra ID or any RFC 6749 token endpoint.
//!
//! One [`TokenCache`] serves the whole process. It keeps one token per identity and hands the same
//! token to every mailbox and protocol using that identity; callers that arrive while a token is
//! being fetched wait for that one request instead of starting their own (single flight).
//!
//! The token request is a form POST and a JSON answer. It is written directly on reqwest rather
//! than with the `oauth2` crate because that crate's error type drops the fields an operator needs
//! (Entra's `error_codes`, `trace_id`, `correlation_id`), and Entra's error body is the product's
//! most important diagnostic.

pub mod entra;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::{debug, info, instrument};

use crate::config::{Grant, Identity};
pub use entra::{ErrorBody, Remedy};

/// Tokens are renewed this long before they expire (or at 80% of a short lifetime), so a token
/// never expires between being handed out and being used in a login.
const RENEW_AHEAD: Duration = Duration::from_secs(300);

/// A bearer token and when it stops being usable.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: SecretString,
    /// When the cache considers the token stale (ahead of its real expiry).
    pub renew_at: Instant,
    pub expires_in: Duration,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why no token could be had. The caller's question is "retry, or tell an admin?":
/// see [`TokenError::needs_admin`].
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The provider refused the request with an OAuth2 error (bad secret, unknown client, …).
    #[error("{}", describe_rejection(.identity, .status, .body))]
    Rejected {
        identity: String,
        status: u16,
        body: Box<ErrorBody>,
    },
    /// The provider could not be reached or timed out.
    #[error("token endpoint of identity `{identity}` ({url}) could not be reached: {source}")]
    Unreachable {
        identity: String,
        url: String,
        #[source]
        source: reqwest::Error,
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
    /// The identity's local setup is broken (e.g. an unreadable CA file).
    #[error("identity `{identity}`: {detail}")]
    Setup { identity: String, detail: String },
}

impl TokenError {
    /// True when only an administrator can fix this (wrong secret, missing consent, unknown client…).
    pub fn needs_admin(&self) -> bool {
        match self {
            TokenError::Rejected { status, body, .. } => {
                entra::remedy(body, *status) == Remedy::NeedsAdmin
            }
            TokenError::Setup { .. } => true,
            TokenError::Unreachable { .. } | TokenError::Malformed { .. } => false,
        }
    }

    /// The AADSTS code, when Entra gave one.
    pub fn aadsts_code(&self) -> Option<u64> {
        match self {
            TokenError::Rejected { body, .. } => body.aadsts_code(),
            _ => None,
        }
    }
}

fn describe_rejection(identity: &str, status: &u16, body: &ErrorBody) -> String {
    let mut text = format!(
        "identity `{identity}`: the token endpoint refused (HTTP {status}, {}): {}",
        body.error,
        body.summary()
    );
    if let Some(hint) = body.aadsts_code().and_then(entra::hint_for_code) {
        text.push_str(&format!("\n  fix: {hint}"));
    }
    if let Some(trace) = &body.trace_id {
        text.push_str(&format!("\n  trace id: {trace}"));
    }
    if let Some(correlation) = &body.correlation_id {
        text.push_str(&format!(", correlation id: {correlation}"));
    }
    text
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    token_type: Option<String>,
    /// Seconds; some providers send it as a string.
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(u64),
        String(String),
    }
    Ok(match Option::<NumberOrString>::deserialize(d)? {
        Some(NumberOrString::Number(n)) => Some(n),
        Some(NumberOrString::String(s)) => s.trim().parse().ok(),
        None => None,
    })
}

/// One slot per identity; its async mutex is the single-flight lock.
type Slot = Arc<tokio::sync::Mutex<Option<AccessToken>>>;

/// The process-wide token cache.
pub struct TokenCache {
    /// One HTTP client per identity, because each identity may trust an extra CA.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        TokenCache {
            clients: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A valid token for `identity`, from the cache or freshly requested.
    pub async fn token(&self, identity: &Identity) -> Result<AccessToken, TokenError> {
        let slot = self.slot(&identity.name);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.clone());
        }
        let token = self.request(identity).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Forgets `identity`'s token if it is still `rejected`: the server refused it, so the next
    /// caller must fetch a new one. A newer token fetched meanwhile is kept.
    pub async fn invalidate(&self, identity: &str, rejected: &AccessToken) {
        let slot = self.slot(identity);
        let mut cached = slot.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.secret.expose_secret() == rejected.secret.expose_secret())
        {
            *cached = None;
        }
    }

    fn slot(&self, identity: &str) -> Slot {
        let mut slots = self.slots.lock().expect("token cache lock poisoned");
        slots.entry(identity.to_string()).or_default().clone()
    }

    fn http_client(&self, identity: &Identity) -> Result<reqwest::Client, TokenError> {
        let mut clients = self.clients.lock().expect("token cache lock poisoned");
        if let Some(client) = clients.get(&identity.name) {
            return Ok(client.clone());
        }
        let setup = |detail: String| TokenError::Setup {
            identity: identity.name.clone(),
            detail,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
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
        clients.insert(identity.name.clone(), client.clone());
        Ok(client)
    }

    #[instrument(skip_all, fields(identity = %identity.name, flow = identity.grant.flow_name()))]
    async fn request(&self, identity: &Identity) -> Result<AccessToken, TokenError> {
        let client = self.http_client(identity)?;
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", identity.client_id.as_str()),
            ("scope", identity.scope.as_str()),
        ];
        match &identity.grant {
            Grant::ClientSecret { client_secret } => {
                form.push(("grant_type", "client_credentials"));
                // Entra expects the secret in the body; HTTP Basic is refused (AADSTS900144).
                form.push(("client_secret", client_secret.expose_secret()));
            }
            Grant::Password {
                username,
                password,
                client_secret,
            } => {
                form.push(("grant_type", "password"));
                form.push(("username", username.as_str()));
                form.push(("password", password.expose_secret()));
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.expose_secret()));
                }
            }
        }
        debug!(url = %identity.token_url, "requesting an access token");
        let started = Instant::now();
        let response = client
            .post(identity.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|source| TokenError::Unreachable {
                identity: identity.name.clone(),
                url: identity.token_url.to_string(),
                source,
            })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| TokenError::Unreachable {
                identity: identity.name.clone(),
                url: identity.token_url.to_string(),
                source,
            })?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => TokenError::Rejected {
                    identity: identity.name.clone(),
                    status,
                    body: Box::new(body),
                },
                Err(_) => TokenError::Malformed {
                    identity: identity.name.clone(),
                    status,
                    detail: snippet(&bytes),
                },
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed {
                identity: identity.name.clone(),
                status,
                detail: format!("not a token response ({e})"),
            })?;
        if let Some(kind) = &parsed.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenError::Malformed {
                identity: identity.name.clone(),
                status,
                detail: format!("token_type is `{kind}`, expected Bearer"),
            });
        }
        // RFC 6749 makes expires_in optional; without it assume Entra's usual hour.
        let expires_in = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        let ahead = RENEW_AHEAD.min(expires_in / 5);
        info!(
            expires_in_s = expires_in.as_secs(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "access token obtained"
        );
        Ok(AccessToken {
            secret: parsed.access_token,
            renew_at: started + expires_in - ahead,
            expires_in,
        })
    }
}

/// The start of a non-JSON body, for an error message (HTML error pages from proxies, say).
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        "empty body".into()
    } else {
        text.chars().take(200).collect()
    }
}
