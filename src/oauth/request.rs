//! One token request (a form POST, a JSON answer) and its retries.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::{debug, error, info, instrument, warn};

use super::assertion::ClientCertificate;
use super::{AccessToken, Cached, ErrorBody, TokenCache, TokenError, renew_at};
use crate::config::{DelegatedLogin, Grant, Identity};

/// The client assertion type of certificate credentials (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A successful token response (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    token_type: Option<String>,
    /// Seconds; some providers send it as a string.
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
    /// Delegated grants with `offline_access`; Entra rotates it on every use.
    #[serde(default)]
    refresh_token: Option<SecretString>,
    /// The scopes granted, when the provider says (delegated grants).
    #[serde(default)]
    scope: Option<String>,
}

/// What a successful token request gave.
pub(super) struct Granted {
    pub token: AccessToken,
    /// The token's real expiry.
    pub expires_at: Instant,
    pub refresh_token: Option<SecretString>,
    #[allow(dead_code)]
    pub scope: Option<String>,
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

/// The form fields of a token request. Values borrow the config's secrets where they can; they
/// are never logged.
pub(super) type Form<'a> = Vec<(&'static str, Cow<'a, str>)>;

impl TokenCache {
    /// Requests a token for `identity` and `scope`, retrying passing failures within the retry
    /// policy's budget.
    #[instrument(skip_all, fields(identity = %identity.name, flow = identity.grant.flow_name()))]
    pub(super) async fn fetch(
        &self,
        identity: &Identity,
        scope: &str,
    ) -> Result<Cached, TokenError> {
        let client = self.http_client(identity)?;
        let policy = self.retry;
        let started = Instant::now();
        let deadline = started + policy.total;
        let mut attempts = 0usize;
        let mut last_problem = String::new();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let attempt = || {
            attempts += 1;
            self.request_once(&client, identity, scope)
        };
        let retried = attempt
            .retry(backoff)
            .when(TokenError::is_retryable)
            // Honour Retry-After, but never wait beyond the total budget: then give up at once.
            .adjust(|error, backoff_delay| {
                let delay = match error {
                    TokenError::Rejected {
                        retry_after: Some(after),
                        ..
                    } => Some(*after),
                    _ => backoff_delay,
                }?;
                (Instant::now() + delay < deadline).then_some(delay)
            })
            .notify(|error, delay| {
                last_problem = error.to_string();
                warn!(error = %error, retry_in_ms = delay.as_millis() as u64,
                    "token request failed; retrying");
            });
        match tokio::time::timeout_at(deadline.into(), retried).await {
            Ok(result) => {
                if result.is_ok()
                    && let Some(warning) = super::expiry_warning(identity)
                {
                    warn!(identity = %identity.name, "{warning}");
                }
                result
            }
            Err(_) => Err(TokenError::GaveUp {
                identity: identity.name.clone(),
                url: identity.token_url.to_string(),
                after: policy.total,
                attempts,
                last: if last_problem.is_empty() {
                    "no answer".into()
                } else {
                    last_problem
                },
            }),
        }
    }

    /// The form of the identity's grant. `refresh_token` is the current one for delegated
    /// identities that run on refresh tokens.
    fn grant_form<'a>(
        &self,
        identity: &'a Identity,
        scope: &'a str,
        refresh_token: Option<&'a SecretString>,
    ) -> Result<Form<'a>, TokenError> {
        let mut form: Form<'a> = vec![
            ("client_id", Cow::Borrowed(identity.client_id.as_str())),
            ("scope", Cow::Borrowed(scope)),
        ];
        match &identity.grant {
            Grant::ClientSecret { client_secret } => {
                form.push(("grant_type", "client_credentials".into()));
                // Entra expects the secret in the body; HTTP Basic is refused (AADSTS900144).
                form.push(("client_secret", client_secret.expose_secret().into()));
            }
            Grant::Certificate {
                certificate_file,
                private_key_file,
            } => {
                let setup = |detail| TokenError::Setup {
                    identity: identity.name.clone(),
                    detail,
                };
                let certificate =
                    ClientCertificate::load(certificate_file, private_key_file).map_err(setup)?;
                let assertion = certificate
                    .assertion(&identity.client_id, identity.token_url.as_str())
                    .map_err(setup)?;
                form.push(("grant_type", "client_credentials".into()));
                form.push(("client_assertion_type", JWT_BEARER.into()));
                form.push(("client_assertion", assertion.into()));
            }
            Grant::Password {
                username,
                password,
                client_secret,
            } => {
                form.push(("grant_type", "password".into()));
                form.push(("username", username.as_str().into()));
                form.push(("password", password.expose_secret().into()));
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.expose_secret().into()));
                }
            }
            Grant::RefreshToken { client_secret, .. } => {
                let refresh_token = refresh_token.ok_or_else(|| TokenError::Setup {
                    identity: identity.name.clone(),
                    detail: "no refresh token".into(),
                })?;
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh_token.expose_secret().into()));
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.expose_secret().into()));
                }
            }
        }
        Ok(form)
    }

    /// One POST to the token endpoint.
    async fn request_once(
        &self,
        client: &reqwest::Client,
        identity: &Identity,
        scope: &str,
    ) -> Result<Cached, TokenError> {
        let refresh_token = match &identity.grant {
            Grant::RefreshToken { login, .. } => {
                Some(self.current_refresh_token(identity, scope, login).await?)
            }
            _ => None,
        };
        let form = self.grant_form(identity, scope, refresh_token.as_ref())?;
        let granted =
            match post_token_form(client, identity, &form, self.retry.request_timeout).await {
                Ok(granted) => granted,
                Err(e) => {
                    if refresh_token.is_some() && e.needs_sign_in() {
                        // The refresh token is dead; forget the in-memory copy so that the next try
                        // reads the database, where `mailintake login` (another process) puts the new one.
                        self.refresh_tokens
                            .lock()
                            .expect("token cache lock poisoned")
                            .remove(&(identity.name.clone(), scope.to_string()));
                    }
                    return Err(e);
                }
            };
        // Only an identity that lives on refresh tokens keeps them: a password identity signs in
        // with its password every time, so the refresh token Entra adds (for `offline_access`) is
        // not needed, and neither is a database or a [token_store] key for it.
        if let Some(rotated) = granted.refresh_token
            && matches!(identity.grant, Grant::RefreshToken { .. })
        {
            // Entra rotates refresh tokens on every use; the new one must survive a restart, or
            // the identity quietly dies when the old one expires (AADSTS700082).
            if let Err(e) = self.keep_refresh_token(identity, scope, rotated).await {
                error!(identity = %identity.name, error = %e,
                    "the renewed refresh token could not be stored; it is kept in memory and stored with the next renewal");
            }
        }
        Ok(Cached {
            token: granted.token,
            expires_at: granted.expires_at,
            settings: super::Settings::of(identity),
        })
    }

    /// The newest refresh token of a delegated identity: in memory, else from the database,
    /// else the configured seed.
    async fn current_refresh_token(
        &self,
        identity: &Identity,
        scope: &str,
        login: &DelegatedLogin,
    ) -> Result<SecretString, TokenError> {
        let setup = |detail: String| TokenError::Setup {
            identity: identity.name.clone(),
            detail,
        };
        let key = (identity.name.clone(), scope.to_string());
        if let Some(token) = self
            .refresh_tokens
            .lock()
            .expect("token cache lock poisoned")
            .get(&key)
        {
            return Ok(token.clone());
        }
        if let Some(refresh) = &self.refresh_store {
            let stored = refresh
                .store
                .refresh_token(&identity.name, scope)
                .await
                .map_err(|e| setup(format!("cannot read the stored refresh token: {e}")))?;
            if let Some(sealed) = stored {
                return refresh
                    .keys
                    .open(&identity.name, scope, &sealed)
                    .map_err(setup);
            }
        }
        match login {
            DelegatedLogin::Seed(seed) => Ok(seed.clone()),
            DelegatedLogin::DeviceCode if self.refresh_store.is_none() => Err(setup(
                "refresh tokens need the database and [token_store] keys, which this command does not open".into(),
            )),
            DelegatedLogin::DeviceCode => Err(setup(format!(
                "no refresh token is stored for this identity yet: run `mailintake login {}` once and sign in as the mailbox's account",
                identity.name
            ))),
        }
    }

    /// Remembers a new refresh token and stores it encrypted.
    pub(super) async fn keep_refresh_token(
        &self,
        identity: &Identity,
        scope: &str,
        token: SecretString,
    ) -> Result<(), String> {
        self.refresh_tokens
            .lock()
            .expect("token cache lock poisoned")
            .insert((identity.name.clone(), scope.to_string()), token.clone());
        let Some(refresh) = &self.refresh_store else {
            return Err("no database is open for refresh tokens".into());
        };
        let sealed = refresh.keys.seal(&identity.name, scope, &token, None)?;
        refresh
            .store
            .save_refresh_token(&identity.name, scope, &sealed)
            .await
            .map_err(|e| e.to_string())?;
        debug!(identity = %identity.name, key_id = %sealed.key_id, "refresh token stored");
        Ok(())
    }
}

/// POSTs `form` to the identity's token endpoint and parses the answer.
pub(super) async fn post_token_form(
    client: &reqwest::Client,
    identity: &Identity,
    form: &Form<'_>,
    timeout: Duration,
) -> Result<Granted, TokenError> {
    let unreachable = |source| TokenError::Unreachable {
        identity: identity.name.clone(),
        url: identity.token_url.to_string(),
        source,
    };
    debug!(url = %identity.token_url, "requesting an access token");
    let started = Instant::now();
    let response = client
        .post(identity.token_url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(timeout)
        .form(form)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response.bytes().await.map_err(unreachable)?;
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => TokenError::Rejected {
                identity: identity.name.clone(),
                status,
                body: Box::new(body),
                retry_after,
            },
            Err(_) => TokenError::Malformed {
                identity: identity.name.clone(),
                status,
                detail: snippet(&bytes),
            },
        });
    }
    let malformed = |detail: String| TokenError::Malformed {
        identity: identity.name.clone(),
        status,
        detail,
    };
    let parsed: TokenResponse = serde_json::from_slice(&bytes)
        .map_err(|e| malformed(format!("not a token response ({e})")))?;
    if let Some(kind) = &parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(malformed(format!(
            "token_type is `{kind}`, expected Bearer"
        )));
    }
    // RFC 6749 makes expires_in optional; without it assume Entra's usual hour.
    let expires_in = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
    info!(
        expires_in_s = expires_in.as_secs(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "access token obtained"
    );
    let token = AccessToken {
        secret: parsed.access_token,
        renew_at: renew_at(started, expires_in),
        expires_in,
        expires_at: started + expires_in,
    };
    Ok(Granted {
        token,
        expires_at: started + expires_in,
        refresh_token: parsed.refresh_token,
        scope: parsed.scope,
    })
}

/// The start of a non-JSON body, for an error message (HTML error pages from proxies, say).
pub(super) fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        "empty body".into()
    } else {
        text.chars().take(200).collect()
    }
}
