//! Entra's error responses: `{"error", "error_description": "AADSTSnnn: …\r\nTrace ID: …",
//! "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}` with Entra's status.
//!
//! The texts come from Entra responses quoted in public issue trackers and from the Microsoft
//! Entra error code reference; where no exact sentence is public, a plausible one is used.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::util::{entra_timestamp, random_uuid};

/// One AADSTS error as the token endpoint returns it. Also usable as a fault
/// ([`crate::Fault::AadsError`]) to make the fake answer any error at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AadsError {
    /// HTTP status: 401 for `invalid_client`, 400 for most others.
    pub status: u16,
    /// The OAuth `error` (`invalid_client`, `invalid_grant`, `authorization_pending`, …).
    pub error: String,
    /// The AADSTS number (`7000215`).
    pub code: u32,
    /// The sentence after `AADSTSnnn: `.
    pub message: String,
    /// Entra's `suberror` (`consent_required`, `basic_action`, …), when it sends one.
    pub suberror: Option<String>,
}

impl AadsError {
    /// An error with status 400, or 401 for `invalid_client` (as Entra does).
    pub fn new(error: &str, code: u32, message: impl Into<String>) -> AadsError {
        AadsError {
            status: if error == "invalid_client" { 401 } else { 400 },
            error: error.to_owned(),
            code,
            message: message.into(),
            suberror: None,
        }
    }

    /// Sets `suberror`.
    pub fn with_suberror(mut self, suberror: &str) -> AadsError {
        self.suberror = Some(suberror.to_owned());
        self
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: u16) -> AadsError {
        self.status = status;
        self
    }

    /// The JSON body, with fresh trace ID and the given correlation ID (Entra echoes the
    /// client's `client-request-id` header there, else makes one up).
    pub(crate) fn body(&self, correlation_id: Option<&str>, now: SystemTime) -> Value {
        let trace_id = random_uuid();
        let correlation_id = correlation_id.map_or_else(random_uuid, str::to_owned);
        let timestamp = entra_timestamp(now);
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        if let (Some(suberror), Some(map)) = (&self.suberror, body.as_object_mut()) {
            map.insert("suberror".to_owned(), json!(suberror));
        }
        body
    }

    // --- The catalogue. Each constructor names its source in the crate README. ---

    /// AADSTS900144 invalid_request: a required body parameter is missing.
    pub fn missing_parameter(name: &str) -> AadsError {
        AadsError::new(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    /// AADSTS900561 invalid_request: the token endpoint was called with another verb than POST.
    pub fn post_only(method: &str) -> AadsError {
        AadsError::new(
            "invalid_request",
            900561,
            format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {method} request."
            ),
        )
    }

    /// AADSTS90002 invalid_request: the tenant in the URL does not exist.
    pub fn tenant_not_found(tenant: &str) -> AadsError {
        AadsError::new(
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are \
                 signing into the correct cloud. Check with your subscription administrator, this may \
                 happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    /// AADSTS9001023 invalid_request: an app-only grant on `/common` or `/consumers`.
    pub fn grant_not_supported_on_common() -> AadsError {
        AadsError::new(
            "invalid_request",
            9001023,
            "The grant type is not supported over the /common or /consumers endpoints. Please use the \
             /organizations or tenant-specific endpoint.",
        )
    }

    /// AADSTS50059 invalid_request: an app-only grant on `/organizations`, which names no tenant.
    pub fn no_tenant_identifying_information() -> AadsError {
        AadsError::new(
            "invalid_request",
            50059,
            "No tenant-identifying information found in either the request or implied by any provided \
             credentials.",
        )
    }

    /// AADSTS700016 unauthorized_client: no such application in the directory.
    pub fn application_not_found(client_id: &str, directory: &str) -> AadsError {
        AadsError::new(
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{directory}'. \
                 This can happen if the application has not been installed by the administrator of the \
                 tenant or consented to by any user in the tenant. You may have sent your authentication \
                 request to the wrong tenant."
            ),
        )
    }

    /// AADSTS7000215 invalid_client: wrong client secret.
    pub fn invalid_client_secret(client_id: &str) -> AadsError {
        AadsError::new(
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client \
                 secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        )
    }

    /// AADSTS7000222 invalid_client: the client secret has expired.
    pub fn client_secret_expired(client_id: &str) -> AadsError {
        AadsError::new(
            "invalid_client",
            7000222,
            format!(
                "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal \
                 to create new keys for your app: https://aka.ms/NewClientSecret, or consider using \
                 certificate credentials for added security: https://aka.ms/certCreds."
            ),
        )
    }

    /// AADSTS7000218 invalid_client: a confidential client sent no credential.
    pub fn credential_required() -> AadsError {
        AadsError::new(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    }

    /// AADSTS700025 invalid_client: a public client sent a credential.
    pub fn public_client_with_credential() -> AadsError {
        AadsError::new(
            "invalid_client",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        )
    }

    /// AADSTS700027 invalid_client: the client assertion is not signed by a registered certificate.
    pub fn assertion_signature_invalid(detail: &str) -> AadsError {
        AadsError::new(
            "invalid_client",
            700027,
            format!("Client assertion failed signature validation. {detail}"),
        )
    }

    /// AADSTS700024 invalid_client: the client assertion is expired or not yet valid.
    pub fn assertion_time_range(detail: &str) -> AadsError {
        AadsError::new(
            "invalid_client",
            700024,
            format!("Client assertion is not within its valid time range. {detail}"),
        )
    }

    /// AADSTS50027 invalid_request: a malformed client assertion (bad JWT, claims, audience).
    pub fn assertion_malformed(detail: &str) -> AadsError {
        AadsError::new(
            "invalid_request",
            50027,
            format!("JWT token is invalid or malformed. {detail}"),
        )
    }

    /// AADSTS1002012 invalid_scope: client credentials need `<resource>/.default`.
    pub fn client_credentials_scope(scope: &str) -> AadsError {
        AadsError::new(
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a \
                 scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )
    }

    /// AADSTS70011 invalid_scope: an unknown or malformed delegated scope.
    pub fn invalid_scope(scope: &str) -> AadsError {
        AadsError::new(
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )
    }

    /// AADSTS500011 invalid_resource: the resource of a scope is not in the tenant.
    pub fn resource_not_found(resource: &str, directory: &str) -> AadsError {
        AadsError::new(
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {directory}. \
                 This can happen if the application has not been installed by the administrator of the \
                 tenant or consented to by any user in the tenant. You might have sent your authentication \
                 request to the wrong tenant."
            ),
        )
    }

    /// AADSTS50034 invalid_grant: no such user.
    pub fn user_not_found(upn: &str, directory: &str) -> AadsError {
        AadsError::new(
            "invalid_grant",
            50034,
            format!(
                "The user account {upn} does not exist in the {directory} directory. To sign into this \
                 application, the account must be added to the directory."
            ),
        )
    }

    /// AADSTS50126 invalid_grant: wrong user name or password.
    pub fn invalid_username_or_password() -> AadsError {
        AadsError::new(
            "invalid_grant",
            50126,
            "Error validating credentials due to invalid username or password.",
        )
    }

    /// AADSTS50057 invalid_grant: the account is disabled.
    pub fn user_disabled() -> AadsError {
        AadsError::new("invalid_grant", 50057, "The user account is disabled.")
    }

    /// AADSTS50076 invalid_grant (suberror `basic_action`): MFA required for ROPC.
    pub fn mfa_required() -> AadsError {
        AadsError::new(
            "invalid_grant",
            50076,
            "Due to a configuration change made by your administrator, or because you moved to a new \
             location, you must use multi-factor authentication to access \
             '00000002-0000-0ff1-ce00-000000000000'.",
        )
        .with_suberror("basic_action")
    }

    /// AADSTS65001 invalid_grant (suberror `consent_required`): no consent for the app.
    pub fn consent_required(client_id: &str, app_name: &str) -> AadsError {
        AadsError::new(
            "invalid_grant",
            65001,
            format!(
                "The user or administrator has not consented to use the application with ID '{client_id}' \
                 named '{app_name}'. Send an interactive authorization request for this user and resource."
            ),
        )
        .with_suberror("consent_required")
    }

    /// AADSTS70000 invalid_grant: an unknown or malformed grant (refresh token, device code).
    pub fn invalid_grant() -> AadsError {
        AadsError::new(
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed.",
        )
    }

    /// AADSTS700082 invalid_grant: the refresh token expired.
    pub fn refresh_token_expired(issued: &str, inactive_days: u64) -> AadsError {
        AadsError::new(
            "invalid_grant",
            700082,
            format!(
                "The refresh token has expired due to inactivity. The token was issued on {issued} and was \
                 inactive for {inactive_days}.00:00:00."
            ),
        )
    }

    /// AADSTS50173 invalid_grant: the refresh token was revoked.
    pub fn refresh_token_revoked(issued: &str) -> AadsError {
        AadsError::new(
            "invalid_grant",
            50173,
            format!(
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The \
                 user might have changed or reset their password. The grant was issued on '{issued}' and \
                 the TokensValidFrom date (before which tokens are not valid) for this user is later."
            ),
        )
    }

    /// AADSTS70016 authorization_pending: the device code is not approved yet.
    pub fn authorization_pending() -> AadsError {
        AadsError::new(
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )
    }

    /// `slow_down` (RFC 8628): polled faster than `interval`. Entra documents no own text for
    /// it; the code is that of the pending state.
    pub fn slow_down(interval_secs: u64) -> AadsError {
        AadsError::new(
            "slow_down",
            70016,
            format!(
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling, but no more \
                 often than every {interval_secs} seconds."
            ),
        )
    }

    /// AADSTS70020 expired_token: the device code expired.
    pub fn device_code_expired() -> AadsError {
        AadsError::new(
            "expired_token",
            70020,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        )
    }

    /// `authorization_declined` (AADSTS70000): the user declined the device code sign-in.
    pub fn authorization_declined() -> AadsError {
        AadsError::new(
            "authorization_declined",
            70000,
            "The user has declined to authorize the request. Authentication is no longer possible with this device_code.",
        )
    }

    /// `bad_verification_code` (AADSTS70018): the `device_code` is not one this server issued.
    pub fn bad_device_code() -> AadsError {
        AadsError::new(
            "bad_verification_code",
            70018,
            "The provided value for the input parameter 'device_code' is not valid.",
        )
    }

    /// AADSTS70003 unsupported_grant_type.
    pub fn unsupported_grant_type(grant_type: &str) -> AadsError {
        AadsError::new(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        )
    }
}

impl std::fmt::Display for AadsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} AADSTS{}: {}", self.error, self.code, self.message)
    }
}

impl std::error::Error for AadsError {}
