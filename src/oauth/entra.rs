//! Entra ID's (and RFC 6749's) token error responses, and what an operator should do about each.
//!
//! Behaviour is decided from the standard OAuth `error` field (and Entra's `suberror`), because
//! Microsoft warns that AADSTS numbers and texts change; the AADSTS code only selects a more precise
//! hint for the operator. Entra's own description and its trace/correlation ids are always shown.

use serde::Deserialize;

/// The JSON body of a failed token request. Entra adds `error_codes`, `suberror`, `trace_id`,
/// `correlation_id` and `timestamp` to the RFC 6749 fields; other providers send only `error` and
/// maybe a description.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u64>,
    /// Entra's refinement of `error`: `consent_required`, `basic_action`, `user_password_expired`…
    #[serde(default)]
    pub suberror: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl ErrorBody {
    /// The AADSTS code: from `error_codes`, else from the description's `AADSTS12345:` prefix.
    pub fn aadsts_code(&self) -> Option<u64> {
        if let Some(code) = self.error_codes.first() {
            return Some(*code);
        }
        let description = self.error_description.as_deref()?;
        let rest = description.trim_start().strip_prefix("AADSTS")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The description without Entra's trailing `Trace ID:`/`Correlation ID:`/`Timestamp:` parts
    /// (they are shown from their own fields), on one line; `error` when there is no description.
    pub fn summary(&self) -> String {
        let description = self.error_description.as_deref().unwrap_or("");
        let mut kept = Vec::new();
        for line in description.split(['\r', '\n']) {
            let line = line.split(" Trace ID:").next().unwrap_or("").trim();
            if line.starts_with("Trace ID:")
                || line.starts_with("Correlation ID:")
                || line.starts_with("Timestamp:")
            {
                continue;
            }
            if !line.is_empty() {
                kept.push(line);
            }
        }
        if kept.is_empty() {
            self.error.clone()
        } else {
            kept.join(" ")
        }
    }
}

/// What a rejection means for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Nothing the worker can do: an administrator must change the app registration, the
    /// credentials, consent or the configuration. Retrying soon only adds noise.
    NeedsAdmin,
    /// The user's grant (password, refresh token, device code) is no longer usable: a person must
    /// sign in again (`mailintake login <identity>`) or fix the account. Retrying soon is pointless.
    SignInAgain,
    /// A passing condition on the provider's side: retry with backoff.
    Retry,
}

/// How to react to an error response: by HTTP status for server trouble, else by the OAuth `error`
/// (refined by Entra's `suberror`). The AADSTS code is deliberately not consulted.
pub fn remedy(body: &ErrorBody, http_status: u16) -> Remedy {
    if http_status == 429 || http_status >= 500 {
        return Remedy::Retry;
    }
    match body.error.as_str() {
        "temporarily_unavailable" | "server_error" | "slow_down" | "authorization_pending" => {
            Remedy::Retry
        }
        "invalid_grant"
        | "interaction_required"
        | "login_required"
        | "expired_token"
        | "authorization_declined"
        | "access_denied"
        | "bad_verification_code" => {
            // Entra reports missing consent as invalid_grant with suberror consent_required.
            if body.suberror.as_deref() == Some("consent_required") {
                Remedy::NeedsAdmin
            } else {
                Remedy::SignInAgain
            }
        }
        _ => Remedy::NeedsAdmin,
    }
}

/// The operator's fix for an OAuth `error` value, for providers without AADSTS codes and for codes
/// the table below does not know.
pub fn hint_for_error(error: &str) -> Option<&'static str> {
    Some(match error {
        "invalid_client" => {
            "the client could not be authenticated: check client_id and its credential (client_secret's Value, or the certificate uploaded to the app registration)"
        }
        "unauthorized_client" => {
            "this client may not use this flow here, or does not exist in this tenant: check client_id, tenant and the app registration's platform settings"
        }
        "invalid_grant" => {
            "the user's credential or grant (password, refresh token, device code) was refused: fix the account's password, or sign in again with `mailintake login <identity>`"
        }
        "interaction_required" | "login_required" => {
            "a person must sign in interactively (MFA, Conditional Access or new consent): use flow = \"device_code\" and run `mailintake login <identity>`"
        }
        "consent_required" => {
            "consent is missing: an administrator must grant admin consent in App registrations > API permissions"
        }
        "invalid_scope" => {
            "the scope was refused: app-only needs https://outlook.office365.com/.default; delegated flows use .../IMAP.AccessAsUser.All .../SMTP.Send offline_access"
        }
        "invalid_resource" => {
            "the resource in the scope does not exist in this tenant: check the scope's resource (https://outlook.office365.com) and that Exchange Online is licensed"
        }
        "invalid_request" => {
            "the token endpoint found the request malformed: check tenant/authority/token_url and the identity's keys"
        }
        "unsupported_grant_type" => {
            "this token endpoint does not support the configured flow: check flow and token_url"
        }
        "temporarily_unavailable" | "server_error" => {
            "the identity provider has a passing problem; mailintake retries with backoff"
        }
        "expired_token" => {
            "the device code expired before the sign-in was completed: run `mailintake login <identity>` again and finish within the time shown"
        }
        "authorization_declined" | "access_denied" => {
            "the sign-in was declined: run `mailintake login <identity>` again and accept"
        }
        "bad_verification_code" => {
            "the device code is unknown to the provider: run `mailintake login <identity>` again"
        }
        _ => return None,
    })
}

/// The operator's fix for an AADSTS code, one line each: what it means and what to change in the
/// Entra admin center or Exchange Online PowerShell.
pub fn hint_for_code(code: u64) -> Option<&'static str> {
    Some(match code {
        7000215 => {
            "the client secret is wrong: use the secret's Value (shown once, when it was created), not its Secret ID; create a new one under App registrations > Certificates & secrets if it was lost"
        }
        7000222 => {
            "the client secret has expired: create a new one under App registrations > Certificates & secrets, update client_secret (and secret_expires)"
        }
        700016 => {
            "no application with this client_id exists in this tenant: check client_id (the Application (client) ID) and tenant (the Directory (tenant) ID), and that the app is registered in, or consented to, that tenant"
        }
        90002 => {
            "the tenant was not found: check tenant (the Directory (tenant) ID or a verified domain) and that authority is the tenant's cloud"
        }
        7000218 => {
            "this client needs a credential: give client_secret (or a certificate), or for password/device-code logins enable App registrations > Authentication > 'Allow public client flows'"
        }
        700025 => {
            "this is a public client, which must not send a secret: remove client_secret, or turn off 'Allow public client flows'"
        }
        1002012 => {
            "client_credentials needs a scope ending in /.default: set scope = \"https://outlook.office365.com/.default\" (or remove scope)"
        }
        70011 => {
            "the scope is not valid: app-only uses https://outlook.office365.com/.default; delegated flows use https://outlook.office365.com/IMAP.AccessAsUser.All, .../SMTP.Send and offline_access"
        }
        28000 => {
            "the scope names two resources (e.g. Graph User.Read beside Outlook scopes): one token serves one resource, keep only https://outlook.office365.com/... scopes plus offline_access"
        }
        9001023 | 50059 | 90133 => {
            "app-only (client_credentials) cannot use the common or organizations authority: set tenant to the Directory (tenant) ID or a verified domain"
        }
        900382 => {
            "the authority is in another cloud than the app or tenant (e.g. a US Government tenant on login.microsoftonline.com): set authority to the tenant's cloud, e.g. https://login.microsoftonline.us/{tenant}"
        }
        65001 => {
            "consent is missing: an administrator must grant admin consent for the API permissions (IMAP.AccessAsApp/SMTP.SendAsApp or IMAP.AccessAsUser.All/SMTP.Send) in App registrations > API permissions > Grant admin consent (or open `mailintake consent-url <identity>`)"
        }
        65004 => {
            "the user declined consent: sign in again and accept, or have an administrator grant admin consent"
        }
        50126 => {
            "the username or password is wrong, or the account is federated/not a cloud account: check username and password"
        }
        50034 => {
            "the user account does not exist in this tenant: check username (the user principal name, user@tenant) and tenant"
        }
        50053 => {
            "the account is locked after too many failed sign-ins: wait, or have an administrator unlock it (Users > the user > Reset password / unblock)"
        }
        50055 => {
            "the user's password has expired: set a new one and update password (or exempt the service account from password expiry)"
        }
        50057 => {
            "the user account is disabled: an administrator must enable it (Users > the user > Account enabled)"
        }
        50076 | 50079 | 50158 => {
            "multi-factor authentication is required for this account, which the password flow cannot do: use flow = \"device_code\" (mailintake login) or exclude the service account from MFA with Conditional Access"
        }
        53003 => {
            "a Conditional Access policy blocked this sign-in: an administrator must allow it for this app/account/location (Entra admin center > Sign-in logs shows which policy)"
        }
        70043 => {
            "a Conditional Access sign-in frequency policy ended the session: run `mailintake login <identity>` again, or exclude the service account from the sign-in frequency policy"
        }
        700082 | 70008 => {
            "the refresh token has expired after long inactivity (Entra: 90 days): run `mailintake login <identity>` again; mailintake keeps it fresh while it runs"
        }
        50173 => {
            "the refresh token was revoked because the password changed or sessions were revoked: run `mailintake login <identity>` again"
        }
        70000 => {
            "the grant (refresh token or device code) is no longer valid: run `mailintake login <identity>` again"
        }
        70020 => {
            "the device code expired before the sign-in was completed: run `mailintake login <identity>` again and finish within the time shown"
        }
        500011 => {
            "the resource (Office 365 Exchange Online) is not available in this tenant: check the scope's resource and that Exchange Online is licensed"
        }
        900144 => {
            "the token request is missing a parameter: check client_id and the credentials in the config"
        }
        700024 => {
            "the client assertion is outside its validity window: check this machine's clock (NTP)"
        }
        700027 | 700021 | 50027 => {
            "the client assertion (certificate) was rejected: upload the certificate (.cer/.pem, public part) to App registrations > Certificates & secrets > Certificates and check certificate_file/private_key_file are the matching pair"
        }
        7000112 => {
            "the application is disabled in this tenant: Enterprise applications > the app > Properties > 'Enabled for users to sign in' = Yes"
        }
        50105 => {
            "the account is not assigned to this application, which requires assignment: Enterprise applications > the app > Users and groups > Add user"
        }
        _ => return None,
    })
}

/// The one-line fix for a rejection: the AADSTS hint when the code is known, else the `error`'s.
pub fn hint(body: &ErrorBody) -> Option<&'static str> {
    body.aadsts_code()
        .and_then(hint_for_code)
        .or_else(|| hint_for_error(&body.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ErrorBody {
        serde_json::from_str(json).unwrap()
    }

    fn entra(error: &str, code: u64) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            error_description: Some(format!(
                "AADSTS{code}: Something went wrong.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026-11-24 10:00:00Z"
            )),
            error_codes: vec![code],
            ..ErrorBody::default()
        }
    }

    #[test]
    fn aadsts_code_from_error_codes_or_description() {
        let b = body(
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#,
        );
        assert_eq!(b.aadsts_code(), Some(7000215));
        assert_eq!(
            b.summary(),
            "AADSTS7000215: Invalid client secret provided."
        );
        let b = body(
            r#"{"error":"invalid_grant","error_description":"AADSTS50126: Error validating credentials. Trace ID: a Correlation ID: b"}"#,
        );
        assert_eq!(b.aadsts_code(), Some(50126));
        assert_eq!(b.summary(), "AADSTS50126: Error validating credentials.");
    }

    #[test]
    fn multi_line_descriptions_are_kept_without_the_id_lines() {
        let b = body(
            r#"{"error":"invalid_grant","error_description":"AADSTS50076: Due to a configuration change made by your administrator,\r\nyou must use multi-factor authentication.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026"}"#,
        );
        assert_eq!(
            b.summary(),
            "AADSTS50076: Due to a configuration change made by your administrator, you must use multi-factor authentication."
        );
    }

    #[test]
    fn generic_oauth_error_without_entra_fields() {
        let b = body(r#"{"error":"invalid_client"}"#);
        assert_eq!(b.aadsts_code(), None);
        assert_eq!(b.summary(), "invalid_client");
        assert_eq!(remedy(&b, 401), Remedy::NeedsAdmin);
        assert!(hint(&b).unwrap().contains("client_id"));
    }

    #[test]
    fn server_trouble_is_retried() {
        let b = body(r#"{"error":"temporarily_unavailable"}"#);
        assert_eq!(remedy(&b, 400), Remedy::Retry);
        assert_eq!(remedy(&ErrorBody::default(), 503), Remedy::Retry);
        assert_eq!(remedy(&ErrorBody::default(), 429), Remedy::Retry);
        // The status wins: a 503 is retried whatever the body says.
        assert_eq!(
            remedy(&entra("invalid_client", 7000215), 503),
            Remedy::Retry
        );
    }

    #[test]
    fn behaviour_follows_the_error_field_not_the_code() {
        // An AADSTS code usually meaning "retry" does not make invalid_client retryable, and a
        // code the table does not know still gets the error's behaviour and hint.
        assert_eq!(
            remedy(&entra("invalid_client", 90033), 401),
            Remedy::NeedsAdmin
        );
        assert_eq!(
            remedy(&entra("invalid_grant", 9999999), 400),
            Remedy::SignInAgain
        );
        assert_eq!(
            hint(&entra("invalid_grant", 9999999)),
            hint_for_error("invalid_grant")
        );
        assert_eq!(
            remedy(&entra("interaction_required", 50079), 400),
            Remedy::SignInAgain
        );
        assert_eq!(
            remedy(&entra("consent_required", 65001), 400),
            Remedy::NeedsAdmin
        );
        let mut consent = entra("invalid_grant", 65001);
        consent.suberror = Some("consent_required".into());
        assert_eq!(remedy(&consent, 400), Remedy::NeedsAdmin);
        assert_eq!(
            remedy(&entra("unauthorized_client", 700016), 400),
            Remedy::NeedsAdmin
        );
        assert_eq!(remedy(&entra("some_new_error", 1), 400), Remedy::NeedsAdmin);
    }

    /// Every code the issue names: its `error` as Entra sends it, the behaviour, and a word the
    /// hint must contain (what to do, in the portal's or PowerShell's words).
    #[test]
    fn each_mapped_code_has_its_behaviour_and_hint() {
        let cases: &[(&str, u64, Remedy, &str)] = &[
            ("invalid_client", 7000215, Remedy::NeedsAdmin, "Secret ID"),
            (
                "invalid_client",
                7000218,
                Remedy::NeedsAdmin,
                "Allow public client flows",
            ),
            ("invalid_client", 7000222, Remedy::NeedsAdmin, "expired"),
            (
                "invalid_client",
                700025,
                Remedy::NeedsAdmin,
                "public client",
            ),
            (
                "invalid_client",
                700027,
                Remedy::NeedsAdmin,
                "Certificates & secrets",
            ),
            ("invalid_client", 700024, Remedy::NeedsAdmin, "clock"),
            ("invalid_grant", 50126, Remedy::SignInAgain, "password"),
            ("invalid_grant", 50076, Remedy::SignInAgain, "device_code"),
            ("interaction_required", 50079, Remedy::SignInAgain, "MFA"),
            (
                "consent_required",
                65001,
                Remedy::NeedsAdmin,
                "Grant admin consent",
            ),
            (
                "unauthorized_client",
                700016,
                Remedy::NeedsAdmin,
                "Application (client) ID",
            ),
            (
                "invalid_grant",
                700082,
                Remedy::SignInAgain,
                "mailintake login",
            ),
            (
                "invalid_request",
                90002,
                Remedy::NeedsAdmin,
                "Directory (tenant) ID",
            ),
            (
                "invalid_grant",
                53003,
                Remedy::SignInAgain,
                "Conditional Access",
            ),
            (
                "invalid_grant",
                50034,
                Remedy::SignInAgain,
                "user principal name",
            ),
            (
                "invalid_resource",
                500011,
                Remedy::NeedsAdmin,
                "Exchange Online",
            ),
            (
                "invalid_grant",
                50173,
                Remedy::SignInAgain,
                "password changed",
            ),
            (
                "invalid_grant",
                70043,
                Remedy::SignInAgain,
                "sign-in frequency",
            ),
            (
                "invalid_request",
                900382,
                Remedy::NeedsAdmin,
                "login.microsoftonline.us",
            ),
            (
                "invalid_scope",
                70011,
                Remedy::NeedsAdmin,
                "IMAP.AccessAsUser.All",
            ),
            ("invalid_scope", 28000, Remedy::NeedsAdmin, "two resources"),
            ("invalid_scope", 1002012, Remedy::NeedsAdmin, "/.default"),
            (
                "invalid_request",
                9001023,
                Remedy::NeedsAdmin,
                "common or organizations",
            ),
            (
                "invalid_request",
                50059,
                Remedy::NeedsAdmin,
                "common or organizations",
            ),
            ("invalid_grant", 50057, Remedy::SignInAgain, "enable"),
            ("invalid_grant", 50055, Remedy::SignInAgain, "expired"),
            ("invalid_grant", 50053, Remedy::SignInAgain, "locked"),
            (
                "invalid_grant",
                70000,
                Remedy::SignInAgain,
                "mailintake login",
            ),
            (
                "expired_token",
                70020,
                Remedy::SignInAgain,
                "mailintake login",
            ),
            (
                "invalid_request",
                900144,
                Remedy::NeedsAdmin,
                "missing a parameter",
            ),
            (
                "unauthorized_client",
                7000112,
                Remedy::NeedsAdmin,
                "Enabled for users",
            ),
            (
                "invalid_grant",
                50105,
                Remedy::SignInAgain,
                "Users and groups",
            ),
            ("temporarily_unavailable", 90033, Remedy::Retry, "passing"),
        ];
        for (error, code, expected, keyword) in cases {
            let b = entra(error, *code);
            assert_eq!(remedy(&b, 400), *expected, "AADSTS{code}");
            let text = hint(&b).unwrap_or_else(|| panic!("AADSTS{code} has no hint"));
            assert!(text.contains(keyword), "AADSTS{code}: {text}");
            assert!(!text.contains('\n'), "AADSTS{code}: one line");
        }
    }
}
