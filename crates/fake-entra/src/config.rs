//! The fake tenant: its app registrations ([`Client`]) and users ([`User`]), as a typed value
//! loaded from TOML (the binary) or built in code (tests).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// Exchange Online's resource (application ID URI) for IMAP, POP and SMTP AUTH.
pub const EXCHANGE_RESOURCE: &str = "https://outlook.office365.com";

/// Delegated permissions of Exchange Online that the fake knows (the `scp` short names).
pub const EXCHANGE_DELEGATED_PERMISSIONS: &[&str] = &[
    "IMAP.AccessAsUser.All",
    "POP.AccessAsUser.All",
    "SMTP.Send",
    "EWS.AccessAsUser.All",
];

/// The whole fake tenant. `Config::default()` is an empty tenant with Entra's default lifetimes;
/// [`Config::example`] is the tenant of `fake-entra.example.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The directory (tenant) ID, a GUID; it appears in `tid` and `iss` of every token.
    pub tenant_id: String,
    /// Verified domains of the tenant, accepted in place of the GUID in URLs (`helpdesk.test`).
    #[serde(default)]
    pub tenant_domains: Vec<String>,
    /// The directory's display name, used in some error texts ("directory '…'"); defaults to the
    /// first domain, else the tenant ID.
    #[serde(default)]
    pub tenant_name: Option<String>,
    /// App registrations.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Users (work accounts) of the tenant.
    #[serde(default)]
    pub users: Vec<User>,
    /// Lifetime of access tokens, `expires_in` (Entra: 3599 s by default; 60–90 min in practice).
    #[serde(
        rename = "token_lifetime_secs",
        with = "secs",
        default = "default_token_lifetime"
    )]
    pub token_lifetime: Duration,
    /// Lifetime of refresh tokens (Entra: 90 days of inactivity).
    #[serde(
        rename = "refresh_token_lifetime_secs",
        with = "secs",
        default = "default_refresh_lifetime"
    )]
    pub refresh_token_lifetime: Duration,
    /// The resource tokens are issued for (`aud`), default `https://outlook.office365.com`.
    #[serde(default = "default_resource")]
    pub resource: String,
    /// Device code lifetime, `expires_in` of `/devicecode` (Entra: 900 s).
    #[serde(
        rename = "device_code_lifetime_secs",
        with = "secs",
        default = "default_device_code_lifetime"
    )]
    pub device_code_lifetime: Duration,
    /// The polling `interval` of the device code flow (Entra: 5 s); polling faster gets
    /// `slow_down`.
    #[serde(
        rename = "device_code_interval_secs",
        with = "secs",
        default = "default_device_code_interval"
    )]
    pub device_code_interval: Duration,
    /// Print one line per request on stdout (the binary turns this on).
    #[serde(default)]
    pub log_requests: bool,
}

/// An app registration (and its service principal in the tenant).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Application (client) ID, a GUID.
    pub client_id: String,
    /// Display name (`app_displayname` in tokens).
    #[serde(default)]
    pub display_name: String,
    /// A client secret value. `None`: the app has no secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// The secret has passed its end date (AADSTS7000222).
    #[serde(default)]
    pub secret_expired: bool,
    /// PEM certificate whose key signs this client's assertions (certificate credentials).
    #[serde(default)]
    pub certificate_pem: Option<String>,
    /// "Allow public client flows": ROPC and device code without a client credential. A public
    /// client that sends a credential it does not have is refused (AADSTS700025).
    #[serde(default)]
    pub public_client: bool,
    /// Application permissions of Exchange granted to the app (`roles`), e.g. `IMAP.AccessAsApp`.
    #[serde(default)]
    pub app_roles: Vec<String>,
    /// Delegated permissions of Exchange the app may ask for (`scp`); default IMAP and SMTP.
    #[serde(default = "default_delegated_permissions")]
    pub delegated_permissions: Vec<String>,
    /// Mailboxes the app's service principal has FullAccess to in Exchange
    /// (`Add-MailboxPermission … -AccessRights FullAccess`); carried in app-only tokens.
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// Admin consent: without it, delegated grants get AADSTS65001 and app-only tokens carry no
    /// `roles` (as in Entra, where ungranted application permissions are simply absent).
    #[serde(default = "yes")]
    pub consent_granted: bool,
}

/// A user (work account) of the tenant.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User principal name, also the primary SMTP address of their mailbox.
    pub upn: String,
    /// The password for ROPC.
    pub password: String,
    /// Display name (`name`); defaults to the UPN's local part.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Conditional Access requires MFA: ROPC fails with AADSTS50076.
    #[serde(default)]
    pub mfa_required: bool,
    /// The account is disabled: AADSTS50057.
    #[serde(default)]
    pub disabled: bool,
    /// Whether this user consented to the apps (AADSTS65001 when not).
    #[serde(default = "yes")]
    pub consent_granted: bool,
    /// Other mailboxes this user has FullAccess to (shared mailboxes), carried in their tokens.
    #[serde(default)]
    pub mailboxes: Vec<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("display_name", &self.display_name)
            .field("secret", &self.secret.as_ref().map(|_| "[REDACTED]"))
            .field("secret_expired", &self.secret_expired)
            .field("certificate", &self.certificate_pem.is_some())
            .field("public_client", &self.public_client)
            .field("app_roles", &self.app_roles)
            .field("delegated_permissions", &self.delegated_permissions)
            .field("mailboxes", &self.mailboxes)
            .field("consent_granted", &self.consent_granted)
            .finish()
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("upn", &self.upn)
            .field("password", &"[REDACTED]")
            .field("mfa_required", &self.mfa_required)
            .field("disabled", &self.disabled)
            .field("consent_granted", &self.consent_granted)
            .field("mailboxes", &self.mailboxes)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tenant_id: "00000000-0000-4000-8000-000000000000".to_owned(),
            tenant_domains: Vec::new(),
            tenant_name: None,
            clients: Vec::new(),
            users: Vec::new(),
            token_lifetime: default_token_lifetime(),
            refresh_token_lifetime: default_refresh_lifetime(),
            resource: default_resource(),
            device_code_lifetime: default_device_code_lifetime(),
            device_code_interval: default_device_code_interval(),
            log_requests: false,
        }
    }
}

impl Config {
    /// An empty tenant with the given ID and domains.
    pub fn new(tenant_id: impl Into<String>, domains: &[&str]) -> Config {
        Config {
            tenant_id: tenant_id.into(),
            tenant_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            ..Config::default()
        }
    }

    /// The tenant of `fake-entra.example.toml`: tenant `8c3a1f52-…` (`helpdesk.test`), the
    /// confidential client `mailintake-demo` (IMAP/SMTP app roles, FullAccess to `support@` and
    /// `sales@`), the public client `mailintake-delegated`, and the user `agent@helpdesk.test`
    /// (password `agent-password`, FullAccess to `support@`).
    pub fn example() -> Config {
        Config::new("8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10", &["helpdesk.test"])
            .with_client(
                Client::confidential(
                    "3f7e2c1a-9d4b-4e8f-a6c5-0b1d2e3f4a5b",
                    "mailintake-demo",
                    "demo-secret-value",
                )
                .with_app_roles(&["IMAP.AccessAsApp", "SMTP.SendAsApp"])
                .with_mailboxes(&["support@helpdesk.test", "sales@helpdesk.test"]),
            )
            .with_client(Client::public(
                "b7d4e9f0-2c1a-4b3d-8e5f-6a7b8c9d0e1f",
                "mailintake-delegated",
            ))
            .with_user(
                User::new("agent@helpdesk.test", "agent-password")
                    .with_mailboxes(&["support@helpdesk.test"]),
            )
    }

    /// Adds an app registration.
    pub fn with_client(mut self, client: Client) -> Config {
        self.clients.push(client);
        self
    }

    /// Adds a user.
    pub fn with_user(mut self, user: User) -> Config {
        self.users.push(user);
        self
    }

    /// Parses the TOML format documented in the crate README, then validates it.
    pub fn from_toml_str(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).context("parsing the fake-entra config")?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML config file.
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Config> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::from_toml_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Checks what a typo would otherwise turn into a confusing AADSTS error at run time.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !looks_like_guid(&self.tenant_id) {
            bail!("tenant_id: expected a GUID, got '{}'", self.tenant_id);
        }
        if self.token_lifetime.is_zero() {
            bail!("token_lifetime_secs: must be more than 0");
        }
        for (i, client) in self.clients.iter().enumerate() {
            if client.client_id.trim().is_empty() {
                bail!("clients[{i}].client_id: must not be empty");
            }
            if self.clients[..i]
                .iter()
                .any(|c| c.client_id.eq_ignore_ascii_case(&client.client_id))
            {
                bail!(
                    "clients[{i}].client_id: '{}' appears twice",
                    client.client_id
                );
            }
            if let Some(pem) = &client.certificate_pem {
                openssl::x509::X509::from_pem(pem.as_bytes()).with_context(|| {
                    format!("clients[{i}].certificate_pem: expected a PEM certificate")
                })?;
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            if !user.upn.contains('@') {
                bail!(
                    "users[{i}].upn: expected an address like name@domain, got '{}'",
                    user.upn
                );
            }
            if self.users[..i]
                .iter()
                .any(|u| u.upn.eq_ignore_ascii_case(&user.upn))
            {
                bail!("users[{i}].upn: '{}' appears twice", user.upn);
            }
        }
        Ok(())
    }

    /// The directory name used in error texts.
    pub(crate) fn directory_name(&self) -> &str {
        self.tenant_name
            .as_deref()
            .or(self.tenant_domains.first().map(String::as_str))
            .unwrap_or(&self.tenant_id)
    }

    pub(crate) fn client(&self, client_id: &str) -> Option<&Client> {
        self.clients
            .iter()
            .find(|c| c.client_id.eq_ignore_ascii_case(client_id))
    }

    pub(crate) fn user(&self, upn: &str) -> Option<&User> {
        self.users.iter().find(|u| u.upn.eq_ignore_ascii_case(upn))
    }
}

impl Client {
    /// A confidential client (web app / daemon) with a client secret.
    pub fn confidential(client_id: &str, display_name: &str, secret: &str) -> Client {
        Client {
            secret: Some(secret.to_owned()),
            ..Client::public(client_id, display_name)
        }
        .not_public()
    }

    /// A confidential client authenticating with a certificate (PEM) instead of a secret.
    pub fn with_certificate(client_id: &str, display_name: &str, certificate_pem: &str) -> Client {
        Client {
            certificate_pem: Some(certificate_pem.to_owned()),
            ..Client::public(client_id, display_name)
        }
        .not_public()
    }

    /// A public client (desktop / CLI app) with "Allow public client flows" on.
    pub fn public(client_id: &str, display_name: &str) -> Client {
        Client {
            client_id: client_id.to_owned(),
            display_name: display_name.to_owned(),
            secret: None,
            secret_expired: false,
            certificate_pem: None,
            public_client: true,
            app_roles: Vec::new(),
            delegated_permissions: default_delegated_permissions(),
            mailboxes: Vec::new(),
            consent_granted: true,
        }
    }

    fn not_public(mut self) -> Client {
        self.public_client = false;
        self
    }

    /// Sets the granted application permissions (`roles`).
    pub fn with_app_roles(mut self, roles: &[&str]) -> Client {
        self.app_roles = roles.iter().map(|r| (*r).to_owned()).collect();
        self
    }

    /// Sets the mailboxes the app has FullAccess to.
    pub fn with_mailboxes(mut self, mailboxes: &[&str]) -> Client {
        self.mailboxes = mailboxes.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    /// The display name, or the client ID when the registration has none.
    pub(crate) fn display_name_or_id(&self) -> &str {
        if self.display_name.is_empty() {
            &self.client_id
        } else {
            &self.display_name
        }
    }
}

impl User {
    /// An enabled user without MFA, who consented to every app.
    pub fn new(upn: &str, password: &str) -> User {
        User {
            upn: upn.to_owned(),
            password: password.to_owned(),
            display_name: None,
            mfa_required: false,
            disabled: false,
            consent_granted: true,
            mailboxes: Vec::new(),
        }
    }

    /// Sets the other mailboxes this user has FullAccess to.
    pub fn with_mailboxes(mut self, mailboxes: &[&str]) -> User {
        self.mailboxes = mailboxes.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    pub(crate) fn name(&self) -> String {
        self.display_name
            .clone()
            .unwrap_or_else(|| self.upn.split('@').next().unwrap_or(&self.upn).to_owned())
    }
}

pub(crate) fn looks_like_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn yes() -> bool {
    true
}

fn default_token_lifetime() -> Duration {
    Duration::from_secs(3599)
}

fn default_refresh_lifetime() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

fn default_device_code_lifetime() -> Duration {
    Duration::from_secs(900)
}

fn default_device_code_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_resource() -> String {
    EXCHANGE_RESOURCE.to_owned()
}

fn default_delegated_permissions() -> Vec<String> {
    vec!["IMAP.AccessAsUser.All".to_owned(), "SMTP.Send".to_owned()]
}

/// Durations as whole seconds in TOML.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_example_config() {
        let text = include_str!("../fake-entra.example.toml");
        let parsed = Config::from_toml_str(text).unwrap();
        let built = Config::example();
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        assert_eq!(
            parsed.clients[0].secret.as_deref(),
            Some("demo-secret-value")
        );
        assert_eq!(parsed.users[0].password, "agent-password");
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", Config::example());
        assert!(!text.contains("demo-secret-value"));
        assert!(!text.contains("agent-password"));
    }

    #[test]
    fn validation_names_the_key() {
        let err = Config::from_toml_str("tenant_id = \"nope\"").unwrap_err();
        assert!(format!("{err:#}").contains("tenant_id"));
        let err = Config::from_toml_str(
            "tenant_id = \"8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10\"\n[[users]]\nupn = \"x\"\npassword = \"p\"",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("users[0].upn"));
    }
}
