//! The token endpoint's grants, the device code endpoint, and client authentication: request
//! parameters in, Entra's success JSON or an [`AadsError`] out. No HTTP here.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use openssl::x509::X509;
use serde_json::{Value, json};

use crate::aad_error::AadsError;
use crate::claims::{ClientAuthMethod, Mint, id_token};
use crate::config::{Client, Config, EXCHANGE_DELEGATED_PERMISSIONS, User};
use crate::keys::{DecodedJwt, thumbprints};
use crate::state::{DelegatedScope, DeviceFlow, DeviceFlowState, RefreshGrant, Shared, TenantRef};
use crate::util::{entra_timestamp, random_bytes, random_opaque, unix_secs};

/// The device code grant type.
pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The only client assertion type Entra accepts.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Exchange Online's application ID, accepted in place of its URI in scopes.
const EXCHANGE_APP_ID: &str = "00000002-0000-0ff1-ce00-000000000000";
/// Where Entra sends users to enter a device code.
pub(crate) const DEVICE_LOGIN_URI: &str = "https://microsoft.com/devicelogin";

/// Form parameters of a request (first value wins).
pub(crate) type Params = HashMap<String, String>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, AadsError> {
    param(params, name).ok_or_else(|| AadsError::missing_parameter(name))
}

pub(crate) fn resolve_tenant(config: &Config, segment: &str) -> Result<TenantRef, AadsError> {
    let segment = segment.trim();
    if segment.eq_ignore_ascii_case(&config.tenant_id)
        || config
            .tenant_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(segment))
    {
        Ok(TenantRef::Tenant)
    } else if segment.eq_ignore_ascii_case("organizations") {
        Ok(TenantRef::Organizations)
    } else if segment.eq_ignore_ascii_case("common") || segment.eq_ignore_ascii_case("consumers") {
        Ok(TenantRef::Common)
    } else {
        Err(AadsError::tenant_not_found(segment))
    }
}

/// POST /{tenant}/oauth2/v2.0/token.
pub(crate) fn token(
    shared: &Shared,
    tenant_segment: &str,
    params: &Params,
) -> Result<Value, AadsError> {
    let grant_type = required(params, "grant_type")?;
    let config = shared.config();
    let tenant = resolve_tenant(&config, tenant_segment)?;
    let request = Request {
        shared,
        config: &config,
        tenant,
        tenant_segment,
        params,
        now: SystemTime::now(),
    };
    match grant_type {
        "client_credentials" => request.client_credentials(),
        "password" => request.password(),
        "refresh_token" => request.refresh_token(),
        DEVICE_CODE_GRANT => request.device_code(),
        other => Err(AadsError::unsupported_grant_type(other)),
    }
}

/// POST /{tenant}/oauth2/v2.0/devicecode.
pub(crate) fn device_authorization(
    shared: &Shared,
    tenant_segment: &str,
    params: &Params,
) -> Result<Value, AadsError> {
    let config = shared.config();
    resolve_tenant(&config, tenant_segment)?;
    let client_id = required(params, "client_id")?;
    let client = config
        .client(client_id)
        .ok_or_else(|| AadsError::application_not_found(client_id, config.directory_name()))?;
    let scope = parse_delegated_scope(&config, client, required(params, "scope")?)?;
    let user_code = new_user_code();
    let device_code = format!("DAQABAAEAAAD{}", random_opaque::<96>());
    let expires_in = config.device_code_lifetime.as_secs();
    let interval = config.device_code_interval;
    shared.device_flows().insert(
        device_code.clone(),
        DeviceFlow {
            client_id: client.client_id.clone(),
            scope,
            user_code: user_code.clone(),
            expires_at: Instant::now() + config.device_code_lifetime,
            interval,
            last_poll: None,
            state: DeviceFlowState::Pending,
        },
    );
    Ok(json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": DEVICE_LOGIN_URI,
        "expires_in": expires_in,
        "interval": interval.as_secs(),
        "message": format!(
            "To sign in, use a web browser to open the page {DEVICE_LOGIN_URI} and enter the code {user_code} to authenticate."
        ),
    }))
}

/// One token request being answered.
struct Request<'a> {
    shared: &'a Shared,
    config: &'a Config,
    tenant: TenantRef,
    tenant_segment: &'a str,
    params: &'a Params,
    now: SystemTime,
}

/// Whether a flow acts for a user (public clients allowed) or only for the app.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    AppOnly,
    Delegated,
}

impl Request<'_> {
    fn client(&self) -> Result<&Client, AadsError> {
        let client_id = required(self.params, "client_id")?;
        self.config.client(client_id).ok_or_else(|| {
            AadsError::application_not_found(client_id, self.config.directory_name())
        })
    }

    fn client_credentials(&self) -> Result<Value, AadsError> {
        match self.tenant {
            TenantRef::Tenant => {}
            TenantRef::Common => return Err(AadsError::grant_not_supported_on_common()),
            TenantRef::Organizations => return Err(AadsError::no_tenant_identifying_information()),
        }
        let client = self.client()?;
        let auth = self.authenticate(client, Flow::AppOnly)?;
        let scope = required(self.params, "scope")?;
        self.check_app_only_scope(scope)?;
        // Application permissions without admin consent are simply absent from the token.
        let roles = if client.consent_granted {
            client.app_roles.clone()
        } else {
            Vec::new()
        };
        let access_token = self.mint(client, auth, None, roles, client.mailboxes.clone())?;
        let expires_in = self.config.token_lifetime.as_secs();
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
        }))
    }

    fn password(&self) -> Result<Value, AadsError> {
        let client = self.client()?;
        let auth = self.authenticate(client, Flow::Delegated)?;
        let username = required(self.params, "username")?;
        let password = required(self.params, "password")?;
        let scope = parse_delegated_scope(self.config, client, required(self.params, "scope")?)?;
        let user = self
            .config
            .user(username)
            .ok_or_else(|| AadsError::user_not_found(username, self.config.directory_name()))?;
        if !constant_time_eq(user.password.as_bytes(), password.as_bytes()) {
            return Err(AadsError::invalid_username_or_password());
        }
        if user.disabled {
            return Err(AadsError::user_disabled());
        }
        if user.mfa_required {
            return Err(AadsError::mfa_required());
        }
        check_consent(client, user, &scope.permissions)?;
        self.delegated_response(client, auth, user, &scope)
    }

    fn refresh_token(&self) -> Result<Value, AadsError> {
        let client = self.client()?;
        let auth = self.authenticate(client, Flow::Delegated)?;
        let refresh_token = required(self.params, "refresh_token")?;
        let grant = self
            .shared
            .refresh_tokens()
            .get(refresh_token)
            .cloned()
            .ok_or_else(AadsError::invalid_grant)?;
        if !grant.client_id.eq_ignore_ascii_case(&client.client_id) {
            return Err(AadsError::new(
                "invalid_grant",
                70000,
                "Provided grant is invalid or malformed. The refresh token was issued to a different client.",
            ));
        }
        let issued = entra_timestamp(grant.issued_at);
        if grant.revoked {
            return Err(AadsError::refresh_token_revoked(&issued));
        }
        if self.now >= grant.expires_at {
            let inactive = self.now.duration_since(grant.issued_at).unwrap_or_default();
            return Err(AadsError::refresh_token_expired(
                &issued,
                inactive.as_secs() / 86_400,
            ));
        }
        let user = self
            .config
            .user(&grant.upn)
            .ok_or_else(|| AadsError::user_not_found(&grant.upn, self.config.directory_name()))?;
        if user.disabled {
            return Err(AadsError::user_disabled());
        }
        let mut scope = match param(self.params, "scope") {
            Some(scope) => parse_delegated_scope(self.config, client, scope)?,
            None => DelegatedScope {
                permissions: grant.permissions.clone(),
                offline_access: true,
                openid: false,
            },
        };
        // A refresh token always comes back rotated.
        scope.offline_access = true;
        check_consent(client, user, &scope.permissions)?;
        self.delegated_response(client, auth, user, &scope)
    }

    fn device_code(&self) -> Result<Value, AadsError> {
        let client = self.client()?;
        let auth = self.authenticate(client, Flow::Delegated)?;
        let device_code = required(self.params, "device_code")?;
        let now = Instant::now();
        let (upn, scope) = {
            let mut flows = self.shared.device_flows();
            let flow = flows
                .get_mut(device_code)
                .filter(|f| f.client_id.eq_ignore_ascii_case(&client.client_id))
                .ok_or_else(AadsError::bad_device_code)?;
            if now >= flow.expires_at && flow.state != DeviceFlowState::Redeemed {
                return Err(AadsError::device_code_expired());
            }
            let previous_poll = flow.last_poll.replace(now);
            match &flow.state {
                DeviceFlowState::Pending => {
                    let too_fast = previous_poll.is_some_and(|last| {
                        now.duration_since(last) + Duration::from_millis(250) < flow.interval
                    });
                    return Err(if too_fast {
                        AadsError::slow_down(flow.interval.as_secs())
                    } else {
                        AadsError::authorization_pending()
                    });
                }
                DeviceFlowState::Declined => return Err(AadsError::authorization_declined()),
                DeviceFlowState::Redeemed => {
                    return Err(AadsError::new(
                        "invalid_grant",
                        70000,
                        "Provided grant is invalid or malformed. The device code was already redeemed.",
                    ));
                }
                DeviceFlowState::Approved { upn } => {
                    let upn = upn.clone();
                    flow.state = DeviceFlowState::Redeemed;
                    (upn, flow.scope.clone())
                }
            }
        };
        let user = self
            .config
            .user(&upn)
            .ok_or_else(|| AadsError::user_not_found(&upn, self.config.directory_name()))?;
        if user.disabled {
            return Err(AadsError::user_disabled());
        }
        check_consent(client, user, &scope.permissions)?;
        self.delegated_response(client, auth, user, &scope)
    }

    /// Client authentication as Entra does it: credentials only in the body (an HTTP Basic
    /// header is ignored, so a client relying on it gets AADSTS900144 or AADSTS7000218).
    fn authenticate(&self, client: &Client, flow: Flow) -> Result<ClientAuthMethod, AadsError> {
        let secret = param(self.params, "client_secret");
        let assertion = param(self.params, "client_assertion");
        if secret.is_none() && assertion.is_none() {
            return if flow == Flow::Delegated && client.public_client {
                Ok(ClientAuthMethod::None)
            } else {
                Err(AadsError::credential_required())
            };
        }
        if client.public_client && client.secret.is_none() && client.certificate_pem.is_none() {
            return Err(AadsError::public_client_with_credential());
        }
        if let Some(assertion) = assertion {
            match param(self.params, "client_assertion_type") {
                None => return Err(AadsError::missing_parameter("client_assertion_type")),
                Some(JWT_BEARER) => {}
                Some(other) => {
                    return Err(AadsError::new(
                        "invalid_request",
                        50027,
                        format!(
                            "JWT token is invalid or malformed. The client_assertion_type '{other}' is not \
                             supported; use '{JWT_BEARER}'."
                        ),
                    ));
                }
            }
            self.verify_client_assertion(client, assertion)?;
            return Ok(ClientAuthMethod::Certificate);
        }
        let secret = secret.unwrap_or_default();
        match &client.secret {
            Some(expected) if constant_time_eq(expected.as_bytes(), secret.as_bytes()) => {
                if client.secret_expired {
                    Err(AadsError::client_secret_expired(&client.client_id))
                } else {
                    Ok(ClientAuthMethod::Secret)
                }
            }
            _ => Err(AadsError::invalid_client_secret(&client.client_id)),
        }
    }

    /// Checks a client assertion (RFC 7523) against the client's registered certificate.
    fn verify_client_assertion(&self, client: &Client, assertion: &str) -> Result<(), AadsError> {
        let jwt = DecodedJwt::parse(assertion).map_err(|e| AadsError::assertion_malformed(&e))?;
        let Some(cert) = client
            .certificate_pem
            .as_deref()
            .and_then(|pem| X509::from_pem(pem.as_bytes()).ok())
        else {
            return Err(AadsError::assertion_signature_invalid(&format!(
                "No certificate credentials are registered on application '{}'.",
                client.client_id
            )));
        };
        let registered = thumbprints(&cert);
        let header_str = |name: &str| jwt.header.get(name).and_then(Value::as_str);
        let (presented, matches) = match (header_str("x5t#S256"), header_str("x5t")) {
            (Some(s256), _) => (s256, s256 == registered.sha256),
            (None, Some(sha1)) => (sha1, sha1 == registered.sha1),
            (None, None) => {
                return Err(AadsError::assertion_malformed(
                    "The client assertion header names no certificate: expected 'x5t' or 'x5t#S256'.",
                ));
            }
        };
        if !matches {
            return Err(AadsError::assertion_signature_invalid(&format!(
                "The certificate with identifier used to sign the client assertion is not registered on \
                 application. [Reason - The key was not found., Thumbprint of key used by client: \
                 '{presented}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to \
                 see configured keys for app Id '{}'.]",
                client.client_id
            )));
        }
        if header_str("alg") != Some("RS256") {
            return Err(AadsError::assertion_malformed(
                "The client assertion must be signed with RS256.",
            ));
        }
        let public_key = cert.public_key().map_err(|_| {
            AadsError::assertion_signature_invalid("The registered certificate has no usable key.")
        })?;
        if !jwt.verify_with(&public_key) {
            return Err(AadsError::assertion_signature_invalid(
                "The signature does not verify with the registered certificate.",
            ));
        }
        let claim_str = |name: &str| jwt.claims.get(name).and_then(Value::as_str);
        for name in ["iss", "sub"] {
            if !claim_str(name).is_some_and(|v| v.eq_ignore_ascii_case(&client.client_id)) {
                return Err(AadsError::new(
                    "invalid_client",
                    700021,
                    format!(
                        "Client assertion application identifier doesn't match 'client_id' parameter. The \
                         '{name}' claim must be '{}'.",
                        client.client_id
                    ),
                ));
            }
        }
        let audience = claim_str("aud").unwrap_or_default();
        let accepted = self.token_endpoint_urls();
        if !accepted
            .iter()
            .any(|url| url.eq_ignore_ascii_case(audience))
        {
            return Err(AadsError::assertion_malformed(&format!(
                "The audience '{audience}' of the client assertion is not this token endpoint (expected {}).",
                accepted.first().map_or("", String::as_str)
            )));
        }
        if claim_str("jti").is_none() {
            return Err(AadsError::assertion_malformed(
                "The client assertion has no 'jti' claim.",
            ));
        }
        let now = unix_secs(self.now);
        let claim_int = |name: &str| jwt.claims.get(name).and_then(Value::as_i64);
        let Some(exp) = claim_int("exp") else {
            return Err(AadsError::assertion_malformed(
                "The client assertion has no 'exp' claim.",
            ));
        };
        if exp <= now {
            return Err(AadsError::assertion_time_range(&format!(
                "Current time: {now}, expiry time of assertion {exp}."
            )));
        }
        if claim_int("nbf").is_some_and(|nbf| nbf > now + 300) {
            return Err(AadsError::assertion_time_range(&format!(
                "Current time: {now}, the assertion is not valid before {}.",
                claim_int("nbf").unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The URLs a client assertion's `aud` may name: the token endpoint under the tenant as
    /// called, its GUID, or any of its domains.
    fn token_endpoint_urls(&self) -> Vec<String> {
        let base = &self.shared.base_url;
        std::iter::once(self.tenant_segment)
            .chain(std::iter::once(self.config.tenant_id.as_str()))
            .chain(self.config.tenant_domains.iter().map(String::as_str))
            .map(|tenant| format!("{base}/{tenant}/oauth2/v2.0/token"))
            .collect()
    }

    /// Client credentials want exactly `<resource>/.default`.
    fn check_app_only_scope(&self, scope: &str) -> Result<(), AadsError> {
        let mut items = scope.split_whitespace();
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(AadsError::client_credentials_scope(scope));
        };
        let Some(resource) = item.strip_suffix("/.default") else {
            return Err(AadsError::client_credentials_scope(item));
        };
        if is_our_resource(self.config, resource) {
            Ok(())
        } else {
            Err(AadsError::resource_not_found(
                resource,
                self.config.directory_name(),
            ))
        }
    }

    fn mint(
        &self,
        client: &Client,
        auth: ClientAuthMethod,
        user: Option<&User>,
        permissions: Vec<String>,
        mailboxes: Vec<String>,
    ) -> Result<String, AadsError> {
        Mint {
            config: self.config,
            client_id: &client.client_id,
            auth,
            user: user.map(|u| u.upn.as_str()),
            permissions,
            mailboxes,
            issued_at: self.now,
            lifetime: self.config.token_lifetime,
            audience: self.config.resource.clone(),
        }
        .sign(&self.shared.key)
        .map_err(|_| token_issuance_error())
    }

    /// The success body of a delegated grant; stores a new refresh token when one is due.
    fn delegated_response(
        &self,
        client: &Client,
        auth: ClientAuthMethod,
        user: &User,
        scope: &DelegatedScope,
    ) -> Result<Value, AadsError> {
        let access_token = self.mint(
            client,
            auth,
            Some(user),
            scope.permissions.clone(),
            user.mailboxes.clone(),
        )?;
        let expires_in = self.config.token_lifetime.as_secs();
        let resource = self.config.resource.trim_end_matches('/');
        let granted: Vec<String> = scope
            .permissions
            .iter()
            .map(|p| format!("{resource}/{p}"))
            .collect();
        let mut body = json!({
            "token_type": "Bearer",
            "scope": granted.join(" "),
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
        });
        let Some(map) = body.as_object_mut() else {
            return Err(token_issuance_error());
        };
        if scope.offline_access {
            let refresh_token = format!("1.AQsA{}", random_opaque::<96>());
            self.shared.refresh_tokens().insert(
                refresh_token.clone(),
                RefreshGrant {
                    upn: user.upn.clone(),
                    client_id: client.client_id.clone(),
                    permissions: scope.permissions.clone(),
                    issued_at: self.now,
                    expires_at: self.now + self.config.refresh_token_lifetime,
                    revoked: false,
                },
            );
            map.insert("refresh_token".to_owned(), json!(refresh_token));
        }
        if scope.openid {
            let issuer = self.shared.issuer(self.config, TenantRef::Tenant);
            let token = id_token(
                &self.shared.key,
                self.config,
                &issuer,
                &client.client_id,
                &user.upn,
                self.now,
            )
            .map_err(|_| token_issuance_error())?;
            map.insert("id_token".to_owned(), json!(token));
        }
        Ok(body)
    }
}

/// Parses a delegated `scope`: OIDC scopes plus Exchange permissions written
/// `<resource>/<Permission>` or `<resource>/.default` (all the client's permissions).
pub(crate) fn parse_delegated_scope(
    config: &Config,
    client: &Client,
    scope: &str,
) -> Result<DelegatedScope, AadsError> {
    let mut parsed = DelegatedScope::default();
    for item in scope.split_whitespace() {
        match item.to_ascii_lowercase().as_str() {
            "offline_access" => parsed.offline_access = true,
            "openid" => parsed.openid = true,
            "profile" | "email" => {}
            _ => {
                // Bare names (`IMAP.AccessAsUser.All`) mean Microsoft Graph, which this fake does
                // not serve: ask for the Exchange resource explicitly.
                let Some((resource, permission)) = item.rsplit_once('/') else {
                    return Err(AadsError::invalid_scope(item));
                };
                if !is_our_resource(config, resource) {
                    return Err(AadsError::resource_not_found(
                        resource,
                        config.directory_name(),
                    ));
                }
                if permission == ".default" {
                    parsed
                        .permissions
                        .extend(client.delegated_permissions.iter().cloned());
                } else {
                    let known = EXCHANGE_DELEGATED_PERMISSIONS
                        .iter()
                        .find(|p| p.eq_ignore_ascii_case(permission))
                        .ok_or_else(|| AadsError::invalid_scope(item))?;
                    parsed.permissions.push((*known).to_owned());
                }
            }
        }
    }
    let mut unique: Vec<String> = Vec::new();
    for permission in parsed.permissions.drain(..) {
        if !unique.iter().any(|p| p.eq_ignore_ascii_case(&permission)) {
            unique.push(permission);
        }
    }
    parsed.permissions = unique;
    if parsed.permissions.is_empty() {
        return Err(AadsError::invalid_scope(scope));
    }
    Ok(parsed)
}

/// AADSTS65001 unless the app has admin consent, the user consented, and every permission is
/// one the app registration asks for.
fn check_consent(client: &Client, user: &User, permissions: &[String]) -> Result<(), AadsError> {
    let registered = |p: &String| {
        client
            .delegated_permissions
            .iter()
            .any(|d| d.eq_ignore_ascii_case(p))
    };
    if client.consent_granted && user.consent_granted && permissions.iter().all(registered) {
        Ok(())
    } else {
        Err(AadsError::consent_required(
            &client.client_id,
            client.display_name_or_id(),
        ))
    }
}

fn is_our_resource(config: &Config, resource: &str) -> bool {
    let resource = resource.trim_end_matches('/');
    resource.eq_ignore_ascii_case(config.resource.trim_end_matches('/'))
        || resource.eq_ignore_ascii_case(EXCHANGE_APP_ID)
}

fn token_issuance_error() -> AadsError {
    AadsError::new(
        "server_error",
        50000,
        "There was an error issuing a token or an issue with our sign-in service.",
    )
    .with_status(500)
}

/// A user code like Entra's: nine characters, upper-case letters and digits without look-alikes.
fn new_user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_bytes::<9>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Normalises a user code as typed (case, spaces, dashes).
pub(crate) fn normalise_user_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Compares secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}
