//! A faithful fake of Microsoft Entra ID's v2.0 token endpoint, for mailintake's tests and the
//! local mail stack (Dovecot + Postfix), where the real Entra cannot be reached.
//!
//! It speaks Entra's protocol — the same endpoints, JSON, AADSTS errors and JWT shapes — so that
//! the product behaves here as it will against the real thing. Read in this order:
//!
//! - [`config`]: the fake tenant (app registrations, users), a value loaded from TOML or built
//!   in code; [`Config::example`] is the dev stack's tenant.
//! - [`keys`]: the RSA [`SigningKey`] and RS256 JWTs; the key ID is derived from the key, so
//!   instances started with the same key accept each other's tokens.
//! - `grants`: the token endpoint's grants (client credentials with a secret or a certificate
//!   assertion, ROPC, refresh token, device code) and client authentication.
//! - [`aad_error`]: Entra's error bodies and the catalogue of AADSTS errors.
//! - [`claims`]: the tokens: v1.0 access tokens for Exchange Online, v2.0 ID tokens.
//! - [`tokeninfo`]: what Exchange would check before letting a token into a mailbox; served at
//!   `/_fake/tokeninfo` for Dovecot's `passdb oauth2`. Stateless.
//! - `server`: the HTTP routes, fault injection and the request log; [`FakeEntra`] is the
//!   handle that starts and stops it.
//!
//! Invariants: a bad request is answered with Entra's error JSON, never a panic; validation of
//! access tokens uses nothing but the token and the signing key; secrets and tokens are never
//! logged.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fake_entra::{Config, FakeEntra, SigningKey};
//! let entra = FakeEntra::start(Config::example(), SigningKey::generate()?, "127.0.0.1:0".parse()?).await?;
//! println!("authority: {}", entra.authority());
//! entra.shutdown().await;
//! # Ok(()) }
//! ```

pub mod aad_error;
pub mod claims;
pub mod config;
mod grants;
pub mod keys;
mod server;
mod state;
pub mod tokeninfo;
mod util;

#[cfg(test)]
mod http_tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use aad_error::AadsError;
pub use claims::{AccessTokenClaims, AccessTokenSpec};
pub use config::{Client, Config, EXCHANGE_RESOURCE, User};
pub use keys::SigningKey;
pub use tokeninfo::{MailService, TokenInfo, TokenRejection, verify_access_token};

use claims::{ClientAuthMethod, Mint};
use grants::normalise_user_code;
use state::DeviceFlowState;
use state::Shared;

/// A failure to inject into the next token requests ([`FakeEntra::inject`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a `temporarily_unavailable` body (e.g. 500, 503).
    Status(u16),
    /// Answer 429 with `Retry-After`, as Entra does when throttling.
    TooManyRequests {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Never answer (until the server shuts down): for client timeouts.
    Hang,
    /// Answer with this Entra error (e.g. `AadsError::mfa_required()`).
    AadsError(AadsError),
}

/// One request to the token endpoint, as [`FakeEntra::requests`] reports it.
#[derive(Clone, Debug)]
pub struct TokenRequestRecord {
    /// When it was answered.
    pub at: SystemTime,
    /// The tenant segment of the URL as sent.
    pub tenant: String,
    /// `grant_type` as sent.
    pub grant_type: Option<String>,
    /// `client_id` as sent.
    pub client_id: Option<String>,
    /// `scope` as sent.
    pub scope: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// What was answered.
    pub outcome: RequestOutcome,
}

/// What a token request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A token.
    Issued,
    /// An Entra error.
    Error {
        /// The OAuth `error`.
        error: String,
        /// The AADSTS code.
        code: u32,
    },
    /// An injected fault.
    Fault(Fault),
}

impl std::fmt::Display for RequestOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestOutcome::Issued => write!(f, "issued"),
            RequestOutcome::Error { error, code } => write!(f, "{error} AADSTS{code}"),
            RequestOutcome::Fault(fault) => write!(f, "injected fault {fault:?}"),
        }
    }
}

/// A running fake Entra on loopback. Dropping it stops the server; [`FakeEntra::shutdown`]
/// also waits for it.
pub struct FakeEntra {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Tells the server (and hanging requests) to stop.
    shutdown_tx: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeEntra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEntra")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

impl FakeEntra {
    /// Validates `config`, binds `listen` (loopback only; port 0 picks a free port) and serves
    /// until shutdown.
    pub async fn start(
        config: Config,
        key: SigningKey,
        listen: SocketAddr,
    ) -> anyhow::Result<FakeEntra> {
        if !listen.ip().is_loopback() {
            bail!("fake-entra listens on loopback only (127.0.0.1 or ::1), not on {listen}");
        }
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let local_addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: RwLock::new(config),
            key,
            base_url: format!("http://{local_addr}"),
            faults: Mutex::default(),
            outages: Mutex::default(),
            records: Mutex::default(),
            refresh_tokens: Mutex::default(),
            device_flows: Mutex::default(),
            shutdown: shutdown_rx.clone(),
        });
        let app = server::router(Arc::clone(&shared));
        let server = serve("fake-entra", listener, app, shutdown_rx);
        Ok(FakeEntra {
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

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `http://127.0.0.1:PORT/<tenant_id>`, the authority to configure in the product.
    pub fn authority(&self) -> String {
        format!(
            "{}/{}",
            self.shared.base_url,
            self.shared.config().tenant_id
        )
    }

    /// The token endpoint under the tenant ID.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/v2.0/token", self.authority())
    }

    /// The device authorization endpoint under the tenant ID.
    pub fn device_code_url(&self) -> String {
        format!("{}/oauth2/v2.0/devicecode", self.authority())
    }

    /// The token validation endpoint for Dovecot (`/_fake/tokeninfo`).
    pub fn tokeninfo_url(&self) -> String {
        format!("{}/_fake/tokeninfo", self.shared.base_url)
    }

    /// The signing key (to start another instance that accepts this one's tokens).
    pub fn signing_key(&self) -> &SigningKey {
        &self.shared.key
    }

    /// A copy of the current config.
    pub fn config(&self) -> Config {
        self.shared.config().clone()
    }

    /// Changes the config while the server runs (add a user, switch `log_requests`, …).
    pub fn update_config<R>(&self, change: impl FnOnce(&mut Config) -> R) -> R {
        self.shared.update_config(change)
    }

    /// Changes one app registration, e.g. rotate its secret or withdraw consent:
    /// `entra.update_client(id, |c| c.consent_granted = false)`. False if there is no such client.
    pub fn update_client(&self, client_id: &str, change: impl FnOnce(&mut Client)) -> bool {
        self.shared.update_config(|config| {
            match config
                .clients
                .iter_mut()
                .find(|c| c.client_id.eq_ignore_ascii_case(client_id))
            {
                Some(client) => {
                    change(client);
                    true
                }
                None => false,
            }
        })
    }

    /// Changes one user, e.g. `entra.update_user(upn, |u| u.mfa_required = true)`. False if
    /// there is no such user.
    pub fn update_user(&self, upn: &str, change: impl FnOnce(&mut User)) -> bool {
        self.shared.update_config(|config| {
            match config
                .users
                .iter_mut()
                .find(|u| u.upn.eq_ignore_ascii_case(upn))
            {
                Some(user) => {
                    change(user);
                    true
                }
                None => false,
            }
        })
    }

    /// Every token endpoint request so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequestRecord> {
        self.shared.records().clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.records().clear();
    }

    /// Makes the next `times` token requests fail with `fault` (after any faults already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        let mut faults = self.shared.faults();
        faults.extend(std::iter::repeat_n(fault, times));
    }

    /// An outage as Entra has them, by time rather than by count: every token request during
    /// the next `duration` gets `fault` (however often the client asks). Outages queue: the
    /// window starts when the last queued one ends, so "500s for 5 s, then 429s for 5 s" is two
    /// calls. Queued faults ([`FakeEntra::inject`]) apply only outside outages.
    pub fn inject_outage(&self, fault: Fault, duration: Duration) {
        let mut outages = state::lock(&self.shared.outages);
        let from = outages
            .back()
            .map_or_else(Instant::now, |last| last.until.max(Instant::now()));
        outages.push_back(state::Outage {
            fault,
            from,
            until: from + duration,
        });
    }

    /// Drops all queued faults and outages.
    pub fn clear_faults(&self) {
        self.shared.faults().clear();
        state::lock(&self.shared.outages).clear();
    }

    /// The user codes of device code flows waiting for the user.
    pub fn pending_device_codes(&self) -> Vec<String> {
        let now = Instant::now();
        self.shared
            .device_flows()
            .values()
            .filter(|f| f.state == DeviceFlowState::Pending && f.expires_at > now)
            .map(|f| f.user_code.clone())
            .collect()
    }

    /// The user `upn` signs in at the verification URI with `user_code` and consents. False if
    /// no such pending code (unknown, expired, already used) or no such user.
    pub fn approve_device_code(&self, user_code: &str, upn: &str) -> bool {
        approve_device_code(&self.shared, user_code, upn)
    }

    /// The user declines the sign-in: polling then gets `authorization_declined`.
    pub fn decline_device_code(&self, user_code: &str) -> bool {
        decline_device_code(&self.shared, user_code)
    }

    /// Revokes every refresh token issued to `upn` so far (as "Revoke sessions" does); returns
    /// how many. Redeeming one then fails with AADSTS50173.
    pub fn revoke_refresh_tokens(&self, upn: &str) -> usize {
        let mut tokens = self.shared.refresh_tokens();
        let mut revoked = 0;
        for grant in tokens
            .values_mut()
            .filter(|g| g.upn.eq_ignore_ascii_case(upn))
        {
            grant.revoked = true;
            revoked += 1;
        }
        revoked
    }

    /// Makes every refresh token of `upn` expired (AADSTS700082 when redeemed); returns how many.
    pub fn expire_refresh_tokens(&self, upn: &str) -> usize {
        let mut tokens = self.shared.refresh_tokens();
        let past = SystemTime::now() - Duration::from_secs(1);
        let mut expired = 0;
        for grant in tokens
            .values_mut()
            .filter(|g| g.upn.eq_ignore_ascii_case(upn))
        {
            grant.expires_at = past;
            expired += 1;
        }
        expired
    }

    /// Mints an access token directly, e.g. an expired one or one with other permissions:
    /// `entra.issue_access_token(AccessTokenSpec::app(id).expired())`.
    pub fn issue_access_token(&self, spec: AccessTokenSpec) -> anyhow::Result<String> {
        let config = self.shared.config();
        let client = config.client(&spec.client_id);
        let user = spec.user.as_deref().map(|upn| (upn, config.user(upn)));
        let permissions = spec
            .permissions
            .clone()
            .unwrap_or_else(|| match (client, &user) {
                (Some(c), None) => c.app_roles.clone(),
                (Some(c), Some(_)) => c.delegated_permissions.clone(),
                (None, _) => Vec::new(),
            });
        let mailboxes = spec.mailboxes.clone().unwrap_or_else(|| match &user {
            None => client.map(|c| c.mailboxes.clone()).unwrap_or_default(),
            Some((_, u)) => u.map(|u| u.mailboxes.clone()).unwrap_or_default(),
        });
        let auth = match client {
            Some(c) if c.certificate_pem.is_some() && c.secret.is_none() => {
                ClientAuthMethod::Certificate
            }
            Some(c) if c.secret.is_some() => ClientAuthMethod::Secret,
            _ => ClientAuthMethod::None,
        };
        Mint {
            config: &config,
            client_id: &spec.client_id,
            auth,
            user: spec.user.as_deref(),
            permissions,
            mailboxes,
            issued_at: spec.issued_at,
            lifetime: spec.lifetime.unwrap_or(config.token_lifetime),
            audience: spec
                .audience
                .clone()
                .unwrap_or_else(|| config.resource.clone()),
        }
        .sign(&self.shared.key)
    }

    /// Validates a token as `/_fake/tokeninfo` does, without HTTP.
    pub fn validate_access_token(
        &self,
        token: &str,
        login: Option<&str>,
        service: MailService,
    ) -> Result<TokenInfo, String> {
        let resource = self.shared.config().resource.clone();
        tokeninfo::validate_mailbox_access(
            &self.shared.key,
            &[resource, EXCHANGE_RESOURCE.to_owned()],
            token,
            login,
            service,
            SystemTime::now(),
        )
    }

    /// Stops the server and waits (a few seconds at most) for open requests to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, server).await;
        }
    }
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

fn approve_device_code(shared: &Shared, user_code: &str, upn: &str) -> bool {
    let Some(upn) = shared.config().user(upn).map(|u| u.upn.clone()) else {
        return false;
    };
    set_device_flow_state(shared, user_code, DeviceFlowState::Approved { upn })
}

fn decline_device_code(shared: &Shared, user_code: &str) -> bool {
    set_device_flow_state(shared, user_code, DeviceFlowState::Declined)
}

fn set_device_flow_state(shared: &Shared, user_code: &str, state: DeviceFlowState) -> bool {
    let wanted = normalise_user_code(user_code);
    let now = Instant::now();
    let mut flows = shared.device_flows();
    match flows.values_mut().find(|f| {
        f.user_code == wanted && f.state == DeviceFlowState::Pending && f.expires_at > now
    }) {
        Some(flow) => {
            flow.state = state;
            true
        }
        None => false,
    }
}

/// Serves `app` on `listener` until `shutdown` turns true (graceful: requests in flight finish);
/// a server error is printed under `name`. Shared by the project's fake servers.
pub fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stopping = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stopping)
            .await
        {
            eprintln!("{name}: server error: {error}");
        }
    })
}
