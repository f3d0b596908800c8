//! `[identities.NAME]` and `[token_store]`: which OAuth2 flow an identity uses, the credentials
//! that flow needs, and where its tokens come from (Entra's endpoints and scopes are derived in
//! `entra`); the keys that encrypt refresh tokens at rest.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::entra::EntraUrl;
use super::problems::{Problems, Table, alternatives};
use super::{
    DelegatedLogin, EXCHANGE_RESOURCE, Grant, Identity, TokenKey, entra, file_problem, raw,
};

/// The `flow` key: the OAuth2 grant an identity uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// App-only access with a client secret or a certificate.
    ClientCredentials,
    /// Delegated access with a user's password (ROPC).
    Password,
    /// Delegated access on a refresh token obtained by `mailintake login`.
    DeviceCode,
    /// Delegated access on a refresh token obtained elsewhere (`refresh_token`).
    RefreshToken,
}

impl Flow {
    pub const ALL: [Flow; 4] = [
        Flow::ClientCredentials,
        Flow::Password,
        Flow::DeviceCode,
        Flow::RefreshToken,
    ];

    /// The value that selects this flow in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Flow::ClientCredentials => "client_credentials",
            Flow::Password => "password",
            Flow::DeviceCode => "device_code",
            Flow::RefreshToken => "refresh_token",
        }
    }

    /// True for flows that act as a user (delegated permissions, `scp` in the token).
    pub fn is_delegated(self) -> bool {
        self != Flow::ClientCredentials
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flow {
    type Err = String;

    fn from_str(text: &str) -> Result<Flow, String> {
        Flow::ALL
            .into_iter()
            .find(|flow| flow.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown flow `{text}`; expected {}",
                    alternatives(&Flow::ALL.map(Flow::name))
                )
            })
    }
}

/// The problems of one identity, and whether any of them makes the identity unusable.
struct IdentityCheck<'a> {
    table: Table<'a>,
    base_dir: &'a Path,
    /// False once a problem made the identity unusable; it is then left out of the config, so that
    /// checks built on the valid identities (`token_store.keys`) do not pile on.
    ok: bool,
}

impl IdentityCheck<'_> {
    /// Reports a problem that makes the identity unusable.
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.table.report(field, message);
        self.ok = false;
    }

    /// Resolves a secret; a secret that cannot be read is reported under `field`.
    /// The secret `field` gives, resolved; a source that cannot be read (an unset variable, a
    /// missing file) is reported once, as the one problem of that key.
    fn secret(&mut self, field: &str, value: Option<raw::Secret>) -> Option<SecretString> {
        match value?.resolve(self.base_dir) {
            Ok(secret) => Some(secret),
            Err(message) => {
                self.fail(field, message);
                None
            }
        }
    }
}

/// The endpoints of an identity: as configured, or derived from its tenant or authority.
struct Endpoints {
    token_url: Option<Url>,
    authority: Option<Url>,
    device_code_url: Option<Url>,
}

/// One `[identities.NAME]` table: the grant of its flow, its endpoints, scope and files; `None` when
/// a problem (reported) makes it unusable.
pub(super) fn validate_identity(
    name: &str,
    mut raw: raw::Identity,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Identity> {
    let mut check = IdentityCheck {
        table: problems.within(format!("identities.{name}")),
        base_dir,
        ok: true,
    };
    // An unknown flow is reported where its grant would be built, after the keys it cannot own.
    let flow: Result<Flow, String> = raw
        .flow
        .as_deref()
        .unwrap_or(Flow::ClientCredentials.name())
        .parse();
    let known_flow = flow.as_ref().ok().copied();
    check_foreign_keys(&raw, known_flow, &mut check);
    let grant = match flow {
        Ok(flow) => validate_grant(flow, &mut raw, &mut check),
        Err(message) => {
            check.fail("flow", message);
            None
        }
    };
    if raw.client_id.trim().is_empty() {
        check.fail(
            "client_id",
            "must not be empty; the Application (client) ID",
        );
    }
    let endpoints = validate_endpoints(&raw, known_flow, &mut check);
    let secret_expires = validate_secret_expires(raw.secret_expires.as_deref(), &mut check);
    let scope = validate_scope(
        raw.scope.take(),
        known_flow,
        endpoints.authority.as_ref(),
        &mut check,
    );
    // Any https URL (or a loopback one) an administrator can be sent to after consenting.
    let consent_redirect_uri = raw.consent_redirect_uri.as_deref().and_then(|text| {
        parse_endpoint(text)
            .map_err(|e| check.fail("consent_redirect_uri", e))
            .ok()
    });
    let ca_file = raw.ca_file.take().map(|p| base_dir.join(p));
    if let Some(message) = ca_file.as_deref().and_then(file_problem) {
        check.fail("ca_file", message);
    }

    match (check.ok, grant, endpoints.token_url) {
        (true, Some(grant), Some(token_url)) => Some(Identity {
            name: name.to_string(),
            client_id: raw.client_id,
            grant,
            token_url,
            device_code_url: endpoints.device_code_url,
            authority: endpoints.authority,
            consent_redirect_uri,
            scope,
            ca_file,
            secret_expires,
        }),
        _ => None,
    }
}

/// Keys that belong to one flow are mistakes in any other: naming the flow that uses them beats a
/// silent ignore.
fn check_foreign_keys(raw: &raw::Identity, flow: Option<Flow>, check: &mut IdentityCheck) {
    for (field, owner, present) in [
        (
            "certificate_file",
            Flow::ClientCredentials,
            raw.certificate_file.is_some(),
        ),
        (
            "private_key_file",
            Flow::ClientCredentials,
            raw.private_key_file.is_some(),
        ),
        ("username", Flow::Password, raw.username.is_some()),
        ("password", Flow::Password, raw.password.is_some()),
        (
            "refresh_token",
            Flow::RefreshToken,
            raw.refresh_token.is_some(),
        ),
    ] {
        if present && flow != Some(owner) {
            check.fail(field, format!("is only used with flow = \"{owner}\""));
        }
    }
}

/// The grant of `flow` with the credentials it needs; `None` when one is missing (reported).
fn validate_grant(flow: Flow, raw: &mut raw::Identity, check: &mut IdentityCheck) -> Option<Grant> {
    match flow {
        Flow::ClientCredentials
            if raw.certificate_file.is_some() || raw.private_key_file.is_some() =>
        {
            certificate_grant(raw, check)
        }
        Flow::ClientCredentials => client_secret_grant(raw.client_secret.take(), check),
        Flow::Password => password_grant(raw, check),
        Flow::DeviceCode => Some(Grant::RefreshToken {
            login: DelegatedLogin::DeviceCode,
            client_secret: check.secret("client_secret", raw.client_secret.take()),
        }),
        Flow::RefreshToken => refresh_token_grant(raw, check),
    }
}

fn certificate_grant(raw: &raw::Identity, check: &mut IdentityCheck) -> Option<Grant> {
    if raw.client_secret.is_some() {
        check.fail(
            "client_secret",
            "give either client_secret or certificate_file, not both",
        );
    }
    let certificate_file = raw
        .certificate_file
        .as_ref()
        .map(|p| check.base_dir.join(p));
    // The key may sit in the certificate's file (one PEM with both).
    let private_key_file = raw
        .private_key_file
        .as_ref()
        .map(|p| check.base_dir.join(p))
        .or_else(|| certificate_file.clone());
    let (Some(certificate_file), Some(private_key_file)) = (certificate_file, private_key_file)
    else {
        check.fail(
            "certificate_file",
            "missing; the PEM certificate uploaded to App registrations > Certificates & secrets (private_key_file alone is not enough)",
        );
        return None;
    };
    for (field, path) in [
        ("certificate_file", &certificate_file),
        ("private_key_file", &private_key_file),
    ] {
        if let Some(message) = file_problem(path) {
            check.fail(field, message);
        }
    }
    Some(Grant::Certificate {
        certificate_file,
        private_key_file,
    })
}

fn client_secret_grant(secret: Option<raw::Secret>, check: &mut IdentityCheck) -> Option<Grant> {
    if let Some(client_secret) = check.secret("client_secret", secret) {
        return Some(Grant::ClientSecret { client_secret });
    }
    // After a key of another flow was reported, the flow is the likelier mistake: no second
    // problem about the secret then.
    if check.ok {
        check.table.report(
            "client_secret",
            "missing; give it as { env = \"VARIABLE\" } or { file = \"PATH\" } (the secret's Value from App registrations > Certificates & secrets), or give certificate_file and private_key_file",
        );
    }
    check.ok = false;
    None
}

fn password_grant(raw: &mut raw::Identity, check: &mut IdentityCheck) -> Option<Grant> {
    let username = raw.username.take();
    if username.is_none() {
        check.fail(
            "username",
            "missing; the account's user principal name (user@tenant)",
        );
    }
    let given = raw.password.is_some();
    let password = check.secret("password", raw.password.take());
    if !given {
        check.fail(
            "password",
            "missing; give it as { env = \"VARIABLE\" } or { file = \"PATH\" }",
        );
    }
    let client_secret = check.secret("client_secret", raw.client_secret.take());
    Some(Grant::Password {
        username: username?,
        password: password?,
        client_secret,
    })
}

fn refresh_token_grant(raw: &mut raw::Identity, check: &mut IdentityCheck) -> Option<Grant> {
    let client_secret = check.secret("client_secret", raw.client_secret.take());
    let given = raw.refresh_token.is_some();
    let Some(seed) = check.secret("refresh_token", raw.refresh_token.take()) else {
        if given {
            return None;
        }
        check.fail(
            "refresh_token",
            "missing; the first refresh token, as { env = \"VARIABLE\" } or { file = \"PATH\" } (or use flow = \"device_code\" and `mailintake login`)",
        );
        return None;
    };
    Some(Grant::RefreshToken {
        login: DelegatedLogin::Seed(seed),
        client_secret,
    })
}

/// `token_url`, `authority` and `device_code_url`: each as configured, or derived from the
/// tenant or authority (Entra).
fn validate_endpoints(
    raw: &raw::Identity,
    flow: Option<Flow>,
    check: &mut IdentityCheck,
) -> Endpoints {
    let tenant = raw
        .tenant
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    // Every URL as the admin pasted it from a guide, its tenant placeholders filled in.
    let mut filled = |field: &str, text: Option<&str>| {
        entra::fill_placeholders(text?, tenant)
            .map_err(|e| check.fail(field, e))
            .ok()
    };
    let authority_given = filled("authority", raw.authority.as_deref());
    let token_url_given = filled("token_url", raw.token_url.as_deref());
    let authorization_given = filled("authorization_url", raw.authorization_url.as_deref());
    let device_code_given = filled("device_code_url", raw.device_code_url.as_deref());
    // OpenIAM's "Authority" is the token endpoint itself: recognised, and used as one. An
    // authorize or device-code URL there names its authority as well.
    let (token_url_from_authority, authority_text) =
        match authority_given.as_deref().map(entra::classify) {
            Some((EntraUrl::Token, authority)) => {
                (authority_given.clone(), Some(authority.to_string()))
            }
            Some((_, authority)) => (None, Some(authority.to_string())),
            None => (None, entra::authority(None, tenant)),
        };
    // Magma's "Authorization Endpoint (v2)": names the authority (for consent and device code).
    let authority_of_authorization = match authorization_given.as_deref().map(entra::classify) {
        Some((EntraUrl::Authorize, authority)) => Some(authority.to_string()),
        Some(_) => {
            check.fail(
                "authorization_url",
                "is not an authorization endpoint: it ends in /oauth2/v2.0/authorize (Magma's \"Authorization Endpoint (v2)\")",
            );
            None
        }
        None => None,
    };
    let authority_text = authority_text.or(authority_of_authorization.clone());
    let authority_field = if raw.authority.is_some() {
        "authority"
    } else {
        "tenant"
    };
    let token_url = match (
        token_url_given.or(token_url_from_authority),
        &authority_text,
    ) {
        (Some(url), _) => parse_endpoint(&url)
            .map_err(|e| check.table.report("token_url", e))
            .ok(),
        (None, Some(authority)) => parse_endpoint(&entra::token_url(authority))
            .map_err(|e| check.table.report(authority_field, e))
            .ok(),
        (None, None) => {
            check.table.report(
                "tenant",
                "missing; give the Directory (tenant) ID or domain, or an explicit authority or token_url",
            );
            None
        }
    };
    if token_url.is_none() {
        check.ok = false;
    }
    // The authority: as configured, or the Entra-shaped token_url without /oauth2/v2.0/token.
    let authority = authority_text
        .as_deref()
        .and_then(|a| parse_endpoint(a).ok())
        .or_else(|| {
            parse_endpoint(entra::authority_of_token_url(token_url.as_ref()?.as_str())?).ok()
        });
    // Both endpoints pasted: they must be the same tenant's, in the same cloud.
    if let (Some(of_authorization), Some(token_url)) = (&authority_of_authorization, &token_url)
        && let Some(of_token) = entra::authority_of_token_url(token_url.as_str())
        && !of_authorization.eq_ignore_ascii_case(of_token)
    {
        check.fail(
            "authorization_url",
            format!(
                "names the authority {of_authorization}, but the token endpoint is under {of_token}: both must name the same tenant in the same cloud"
            ),
        );
    }
    let device_code_url = match &device_code_given {
        Some(url) => parse_endpoint(url)
            .map_err(|e| check.fail("device_code_url", e))
            .ok(),
        None => authority
            .as_ref()
            .and_then(|a| parse_endpoint(&entra::device_code_url(a.as_str())).ok()),
    };
    if flow == Some(Flow::DeviceCode) && device_code_url.is_none() && token_url.is_some() {
        check.fail(
            "device_code_url",
            "missing; flow = \"device_code\" needs the device authorization endpoint: give tenant or authority (Entra), or device_code_url",
        );
    }
    Endpoints {
        token_url,
        authority,
        device_code_url,
    }
}

/// `secret_expires`: a date as the portal shows it; unix seconds at its start (UTC).
fn validate_secret_expires(text: Option<&str>, check: &mut IdentityCheck) -> Option<i64> {
    let text = text?;
    match humantime::parse_rfc3339_weak(&format!("{}T00:00:00", text.trim())) {
        Ok(at) => at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs() as i64),
        Err(_) => {
            check.fail(
                "secret_expires",
                "expected a date like \"2027-05-31\" (the Expires column in Certificates & secrets)",
            );
            None
        }
    }
}

/// `scope`: as configured, or the default of the flow in the authority's cloud (national clouds
/// have their own Exchange Online resource).
fn validate_scope(
    scope: Option<String>,
    flow: Option<Flow>,
    authority: Option<&Url>,
    check: &mut IdentityCheck,
) -> String {
    let resource = entra::exchange_resource_for(authority.and_then(|a| a.host_str()));
    // Efecte ESM's `mail.oauth.scopes` is comma-separated; OAuth wants one space-separated list.
    let scope = scope
        .map(|s| entra::normalize_scope(&s))
        .unwrap_or_else(|| entra::default_scope(resource, flow.is_some_and(Flow::is_delegated)));
    if let [first, second, ..] = entra::scope_resources(&scope).as_slice() {
        check.fail(
            "scope",
            format!(
                "names two resources, {first} and {second}: Entra issues a token for one resource at a time (AADSTS28000); keep the scopes of one (for IMAP and SMTP: {resource})"
            ),
        );
    }
    if flow == Some(Flow::ClientCredentials) && !entra::is_app_only_scope(&scope) {
        check.fail(
            "scope",
            format!(
                "app-only tokens need a scope ending in /.default, e.g. {EXCHANGE_RESOURCE}/.default"
            ),
        );
    }
    if flow == Some(Flow::DeviceCode) && !entra::asks_for_refresh_token(&scope) {
        check.fail(
            "scope",
            "must include offline_access: without it no refresh token is issued and the worker cannot run unattended",
        );
    }
    scope
}

/// Token endpoints must use HTTPS; plain HTTP is allowed only to a loopback address (tests, a local
/// proxy), because the request carries the client secret.
pub(super) fn parse_endpoint(text: &str) -> Result<Url, String> {
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

pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// `[token_store] keys`: required when an identity keeps refresh tokens; ids unique; each key 32
/// bytes as base64 (`openssl rand -base64 32`) or 64 hex digits.
pub(super) fn validate_token_keys(
    raw: Option<raw::TokenStore>,
    identities: &BTreeMap<String, Identity>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Vec<TokenKey> {
    let raw_keys = raw.map(|t| t.keys).unwrap_or_default();
    let users: Vec<&str> = identities
        .values()
        .filter(|i| matches!(i.grant, Grant::RefreshToken { .. }))
        .map(|i| i.name.as_str())
        .collect();
    if raw_keys.is_empty() && !users.is_empty() {
        problems.report(
            "token_store.keys",
            format!(
                "missing; identities {} keep refresh tokens, which are stored encrypted: add keys = [{{ id = \"k1\", key = {{ env = \"MAILINTAKE_TOKEN_KEY\" }} }}] with a key from `openssl rand -base64 32`",
                users.join(", ")
            ),
        );
    }
    let mut keys = Vec::new();
    let mut ids = HashSet::new();
    for (index, raw_key) in raw_keys.into_iter().enumerate() {
        let mut table = problems.within(format!("token_store.keys[{index}]"));
        if raw_key.id.trim().is_empty() || !ids.insert(raw_key.id.clone()) {
            table.report("id", "must be non-empty and unique among the keys");
            continue;
        }
        let text = match raw_key.key.resolve(base_dir) {
            Ok(text) => text,
            Err(message) => {
                table.report("key", message);
                continue;
            }
        };
        let Some(bytes) = decode_token_key(text.expose_secret().trim()) else {
            table.report(
                "key",
                "must be 32 bytes, as base64 (`openssl rand -base64 32`) or 64 hex digits",
            );
            continue;
        };
        let key_hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        keys.push(TokenKey {
            id: raw_key.id,
            key_hex: SecretString::from(key_hex),
        });
    }
    keys
}

/// The 32 bytes of a token key written as 64 hex digits or as base64.
fn decode_token_key(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect::<Vec<u8>>()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_default()
    };
    (bytes.len() == 32).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::Config;
    use crate::config::tests::{MINIMAL, TOKEN_STORE, load, with_identity};

    #[test]
    fn flows_parse_their_names_and_name_the_known_ones() {
        for flow in Flow::ALL {
            assert_eq!(flow.name().parse(), Ok(flow));
            assert_eq!(flow.to_string(), flow.name());
        }
        assert_eq!(
            "implicit".parse::<Flow>(),
            Err("unknown flow `implicit`; expected \"client_credentials\", \"password\", \"device_code\" or \"refresh_token\"".to_string())
        );
        assert!(!Flow::ClientCredentials.is_delegated());
        assert!(Flow::DeviceCode.is_delegated());
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
}
