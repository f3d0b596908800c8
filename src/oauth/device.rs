//! `mailintake login <identity>`: the device authorization grant (RFC 8628) as Entra implements it.
//! A person opens the verification URL on any device, enters the code and signs in (with MFA);
//! meanwhile this process polls the token endpoint, honouring `interval`, `slow_down`,
//! `authorization_pending` and `expires_in`, and stores the refresh token it finally gets.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::Deserialize;
use tracing::{debug, info};

use super::request::{Form, post_token_form, snippet};
use super::{Cached, ErrorBody, TokenCache, TokenError};
use crate::config::{Grant, Identity};

/// The device code grant type.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What the person must do, as the device authorization endpoint said.
#[derive(Debug, Clone)]
pub struct DevicePrompt {
    pub verification_uri: String,
    pub user_code: String,
    /// Entra's own sentence ("To sign in, use a web browser to open the page … and enter the
    /// code …"), when it sent one.
    pub message: Option<String>,
    pub expires_in: Duration,
}

/// A completed login.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    /// The scopes granted, when the provider said.
    pub scope: Option<String>,
    /// Whether a refresh token came and was stored.
    pub refresh_token_stored: bool,
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    message: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

impl TokenCache {
    /// Runs the device code flow for `identity`: calls `prompt` once with the URL and code, polls
    /// until the person signed in (or the code expired, or they declined), then stores the refresh
    /// token encrypted and caches the access token.
    pub async fn login_device_code(
        &self,
        identity: &Identity,
        prompt: impl FnOnce(&DevicePrompt),
    ) -> Result<DeviceLogin, TokenError> {
        let setup = |detail: String| TokenError::Setup {
            identity: identity.name.clone(),
            detail,
        };
        let Grant::RefreshToken { client_secret, .. } = &identity.grant else {
            return Err(setup(format!(
                "`mailintake login` is for identities with flow = \"device_code\" (or \"refresh_token\"); this one uses flow = \"{}\", which needs no login",
                identity.grant.flow_name()
            )));
        };
        let Some(device_code_url) = &identity.device_code_url else {
            return Err(setup(
                "no device authorization endpoint: give tenant or authority, or device_code_url"
                    .into(),
            ));
        };
        if self.refresh_store.is_none() {
            return Err(setup(
                "refresh tokens need the database and [token_store] keys".into(),
            ));
        }
        let client = self.http_client(identity)?;
        let scope = identity.scope.as_str();
        let unreachable = |source| TokenError::Unreachable {
            identity: identity.name.clone(),
            url: device_code_url.to_string(),
            source,
        };
        let mut form: Form<'_> = vec![
            ("client_id", Cow::Borrowed(identity.client_id.as_str())),
            ("scope", Cow::Borrowed(scope)),
        ];
        let response = client
            .post(device_code_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.retry.request_timeout)
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => TokenError::Rejected {
                    identity: identity.name.clone(),
                    status,
                    body: Box::new(body),
                    retry_after: None,
                },
                Err(_) => TokenError::Malformed {
                    identity: identity.name.clone(),
                    status,
                    detail: snippet(&bytes),
                },
            });
        }
        let authorization: DeviceAuthorization =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed {
                identity: identity.name.clone(),
                status,
                detail: format!("not a device authorization response ({e})"),
            })?;
        let expires_in = Duration::from_secs(authorization.expires_in);
        let deadline = Instant::now() + expires_in;
        // RFC 8628: 5 seconds when the server names no interval.
        let mut interval = Duration::from_secs(authorization.interval.unwrap_or(5).max(1));
        prompt(&DevicePrompt {
            verification_uri: authorization.verification_uri.clone(),
            user_code: authorization.user_code.clone(),
            message: authorization.message.clone(),
            expires_in,
        });

        form.push(("grant_type", DEVICE_CODE_GRANT.into()));
        form.push(("device_code", authorization.device_code.as_str().into()));
        if let Some(secret) = client_secret {
            form.push(("client_secret", secret.expose_secret().into()));
        }
        loop {
            if Instant::now() + interval >= deadline {
                return Err(setup(format!(
                    "the code {} expired after {}s before the sign-in was completed: run `mailintake login {}` again",
                    authorization.user_code,
                    expires_in.as_secs(),
                    identity.name
                )));
            }
            tokio::time::sleep(interval).await;
            match post_token_form(&client, identity, &form, self.retry.request_timeout).await {
                Ok(granted) => {
                    let Some(refresh_token) = granted.refresh_token else {
                        return Err(setup(
                            "the sign-in worked but no refresh token came back: add offline_access to scope"
                                .into(),
                        ));
                    };
                    self.keep_refresh_token(identity, scope, refresh_token)
                        .await
                        .map_err(|e| setup(format!("cannot store the refresh token: {e}")))?;
                    let slot = self.slot(&identity.name, scope);
                    *slot.lock().await = Some(Cached {
                        token: granted.token,
                        expires_at: granted.expires_at,
                        settings: super::Settings::of(identity),
                    });
                    info!(identity = %identity.name, "device code login completed; refresh token stored");
                    return Ok(DeviceLogin {
                        scope: granted.scope,
                        refresh_token_stored: true,
                    });
                }
                Err(TokenError::Rejected { body, .. }) if body.error == "authorization_pending" => {
                    debug!("waiting for the sign-in");
                }
                Err(TokenError::Rejected { body, .. }) if body.error == "slow_down" => {
                    // RFC 8628 §3.5: add five seconds to the interval for this and later polls.
                    interval += Duration::from_secs(5);
                    debug!(interval_s = interval.as_secs(), "asked to poll more slowly");
                }
                // A passing network problem does not end the login; the deadline does.
                Err(e) if e.is_retryable() => debug!(error = %e, "polling failed; trying again"),
                Err(e) => return Err(e),
            }
        }
    }
}
