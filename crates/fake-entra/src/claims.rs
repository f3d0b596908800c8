//! The tokens the fake issues: Exchange access tokens shaped like Entra's v1.0 access tokens,
//! and v2.0 ID tokens. Everything a validator needs travels in the token (including mailbox
//! permissions, in the private claim `fake_mailbox_access`), so validation is stateless.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;
use crate::keys::SigningKey;
use crate::util::{b64url, derived_uuid, random_bytes, unix_secs};

/// Entra backdates `iat`/`nbf` by five minutes to tolerate clock skew; the fake does the same.
pub(crate) const BACKDATE_SECS: i64 = 300;

/// The claims of an access token, as the fake writes them and reads them back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessTokenClaims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    pub aio: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    pub app_displayname: String,
    pub appid: String,
    /// 0 public client, 1 client secret, 2 certificate.
    pub appidacr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// `app` for app-only tokens, `user` for delegated ones.
    pub idtyp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipaddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub oid: String,
    pub rh: String,
    /// Application permissions (app-only tokens).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Delegated permissions, space-separated (delegated tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scp: Option<String>,
    pub sub: String,
    pub tid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
    pub uti: String,
    pub ver: String,
    /// Private claim of the fake: mailboxes the subject has FullAccess to in Exchange (for an
    /// app: its `Add-MailboxPermission` grants; for a user: shared mailboxes besides their own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fake_mailbox_access: Vec<String>,
}

/// What to put in a token made with [`crate::FakeEntra::issue_access_token`]. Fields left `None`
/// come from the server's config.
#[derive(Clone, Debug)]
pub struct AccessTokenSpec {
    /// The app the token is issued to (need not be registered).
    pub client_id: String,
    /// `Some(upn)`: a delegated token for that user; `None`: an app-only token.
    pub user: Option<String>,
    /// `roles` (app-only) or `scp` short names (delegated); `None`: the client's configured ones.
    pub permissions: Option<Vec<String>>,
    /// `fake_mailbox_access`; `None`: the client's (app) or user's configured mailboxes.
    pub mailboxes: Option<Vec<String>>,
    /// When the token was issued; `exp` = this + lifetime.
    pub issued_at: SystemTime,
    /// `None`: the config's token lifetime.
    pub lifetime: Option<Duration>,
    /// `aud`; `None`: the config's resource.
    pub audience: Option<String>,
}

impl AccessTokenSpec {
    /// An app-only token for `client_id`, as client credentials would issue it now.
    pub fn app(client_id: &str) -> AccessTokenSpec {
        AccessTokenSpec {
            client_id: client_id.to_owned(),
            user: None,
            permissions: None,
            mailboxes: None,
            issued_at: SystemTime::now(),
            lifetime: None,
            audience: None,
        }
    }

    /// A delegated token for `upn` through `client_id`, as ROPC would issue it now.
    pub fn delegated(client_id: &str, upn: &str) -> AccessTokenSpec {
        AccessTokenSpec {
            user: Some(upn.to_owned()),
            ..AccessTokenSpec::app(client_id)
        }
    }

    /// Makes the token expired: issued two hours ago, valid for one.
    pub fn expired(mut self) -> AccessTokenSpec {
        self.issued_at = SystemTime::now() - Duration::from_secs(7200);
        self.lifetime = Some(Duration::from_secs(3600));
        self
    }

    /// Sets `roles` / `scp`.
    pub fn with_permissions(mut self, permissions: &[&str]) -> AccessTokenSpec {
        self.permissions = Some(permissions.iter().map(|p| (*p).to_owned()).collect());
        self
    }

    /// Sets `fake_mailbox_access`.
    pub fn with_mailboxes(mut self, mailboxes: &[&str]) -> AccessTokenSpec {
        self.mailboxes = Some(mailboxes.iter().map(|m| (*m).to_owned()).collect());
        self
    }

    /// Sets `aud`.
    pub fn with_audience(mut self, audience: &str) -> AccessTokenSpec {
        self.audience = Some(audience.to_owned());
        self
    }

    /// Sets the lifetime.
    pub fn with_lifetime(mut self, lifetime: Duration) -> AccessTokenSpec {
        self.lifetime = Some(lifetime);
        self
    }
}

/// How the client authenticated, for `appidacr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAuthMethod {
    None,
    Secret,
    Certificate,
}

impl ClientAuthMethod {
    fn appidacr(self) -> &'static str {
        match self {
            ClientAuthMethod::None => "0",
            ClientAuthMethod::Secret => "1",
            ClientAuthMethod::Certificate => "2",
        }
    }
}

/// Everything an access token is made of, resolved against the config.
pub(crate) struct Mint<'a> {
    pub config: &'a Config,
    pub client_id: &'a str,
    pub auth: ClientAuthMethod,
    pub user: Option<&'a str>,
    pub permissions: Vec<String>,
    pub mailboxes: Vec<String>,
    pub issued_at: SystemTime,
    pub lifetime: Duration,
    pub audience: String,
}

impl Mint<'_> {
    /// Signs the access token.
    pub(crate) fn sign(&self, key: &SigningKey) -> anyhow::Result<String> {
        key.sign_jwt(&self.claims())
    }

    pub(crate) fn claims(&self) -> AccessTokenClaims {
        let config = self.config;
        let tid = config.tenant_id.clone();
        let sts = format!("https://sts.windows.net/{tid}/");
        let issued = unix_secs(self.issued_at);
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        let app_name = config
            .client(self.client_id)
            .map(|c| c.display_name_or_id().to_owned())
            .unwrap_or_else(|| self.client_id.to_owned());
        let mut claims = AccessTokenClaims {
            aud: self.audience.clone(),
            iss: sts.clone(),
            iat: issued - BACKDATE_SECS,
            nbf: issued - BACKDATE_SECS,
            exp: issued + lifetime,
            aio: opaque_claim(),
            app_displayname: app_name,
            appid: self.client_id.to_owned(),
            appidacr: self.auth.appidacr().to_owned(),
            rh: format!("0.{}.", opaque_claim()),
            tid: tid.clone(),
            uti: b64url(&random_bytes::<16>()),
            ver: "1.0".to_owned(),
            fake_mailbox_access: self.mailboxes.clone(),
            ..AccessTokenClaims::default()
        };
        match self.user {
            None => {
                // An app-only token: the subject is the app's service principal.
                let sp_oid = derived_uuid(&format!("sp:{tid}:{}", self.client_id.to_lowercase()));
                claims.idp = Some(sts);
                claims.idtyp = "app".to_owned();
                claims.oid = sp_oid.clone();
                claims.sub = sp_oid;
                claims.roles = self.permissions.clone();
            }
            Some(upn) => {
                let user = config.user(upn);
                let upn = user.map_or(upn, |u| u.upn.as_str()).to_owned();
                claims.acr = Some("1".to_owned());
                claims.amr = vec!["pwd".to_owned()];
                claims.idtyp = "user".to_owned();
                claims.ipaddr = Some("127.0.0.1".to_owned());
                claims.name = Some(user.map_or_else(|| upn.clone(), |u| u.name()));
                claims.oid = user_oid(&tid, &upn);
                claims.sub = b64url(&crate::util::sha256(
                    format!(
                        "sub:{}:{}",
                        upn.to_lowercase(),
                        self.client_id.to_lowercase()
                    )
                    .as_bytes(),
                ));
                claims.scp = Some(self.permissions.join(" "));
                claims.unique_name = Some(upn.clone());
                claims.upn = Some(upn);
            }
        }
        claims
    }
}

/// A user's object ID: the same on every instance.
pub(crate) fn user_oid(tenant_id: &str, upn: &str) -> String {
    derived_uuid(&format!("user:{tenant_id}:{}", upn.to_lowercase()))
}

/// A v2.0 ID token (when `openid` was asked): audience is the client.
pub(crate) fn id_token(
    key: &SigningKey,
    config: &Config,
    issuer: &str,
    client_id: &str,
    upn: &str,
    issued_at: SystemTime,
) -> anyhow::Result<String> {
    let issued = unix_secs(issued_at);
    let user = config.user(upn);
    let claims = json!({
        "aud": client_id,
        "iss": issuer,
        "iat": issued - BACKDATE_SECS,
        "nbf": issued - BACKDATE_SECS,
        "exp": issued + 3600,
        "name": user.map_or_else(|| upn.to_owned(), |u| u.name()),
        "oid": user_oid(&config.tenant_id, upn),
        "preferred_username": user.map_or(upn, |u| u.upn.as_str()),
        "rh": format!("0.{}.", opaque_claim()),
        "sub": b64url(&crate::util::sha256(format!("sub:{}:{}", upn.to_lowercase(), client_id.to_lowercase()).as_bytes())),
        "tid": config.tenant_id,
        "uti": b64url(&random_bytes::<16>()),
        "ver": "2.0",
    });
    key.sign_jwt(&claims)
}

/// An opaque value like Entra's `aio`/`rh` claims.
fn opaque_claim() -> String {
    b64url(&random_bytes::<24>())
}
