//! Entra ID's (and RFC 6749's) token error responses, and what an operator should do about each.

use serde::Deserialize;

/// The JSON body of a failed token request. Entra adds `error_codes`, `trace_id`, `correlation_id`
/// and `timestamp` to the RFC 6749 fields; other providers send only `error` and maybe a description.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u64>,
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

    /// The first line of the description, without Entra's trailing trace/correlation lines.
    pub fn summary(&self) -> String {
        let description = self.error_description.as_deref().unwrap_or("");
        let first = description
            .split(['\r', '\n'])
            .next()
            .unwrap_or("")
            .split(" Trace ID:")
            .next()
            .unwrap_or("")
            .trim();
        if first.is_empty() {
            self.error.clone()
        } else {
            first.to_string()
        }
    }
}

/// What a rejection means for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Nothing the worker can do: an administrator must change the app registration, the
    /// credentials, consent or the configuration. Retrying soon only adds noise.
    NeedsAdmin,
    /// A passing condition on the provider's side: retry with backoff.
    Retry,
}

/// The operator's fix for an AADSTS code, as Entra admins see it in the portal.
pub fn hint_for_code(code: u64) -> Option<&'static str> {
    Some(match code {
        7000215 => {
            "the client secret is wrong: use the secret's Value (shown once, when it was created), not its Secret ID; create a new one under App registrations > Certificates & secrets if it was lost"
        }
        7000222 => {
            "the client secret has expired: create a new one under App registrations > Certificates & secrets and update client_secret"
        }
        700016 => {
            "no application with this client_id exists in this tenant: check client_id (the Application (client) ID) and tenant (the Directory (tenant) ID), and that the app is registered in, or consented to, that tenant"
        }
        90002 | 90023 => {
            "the tenant was not found: check tenant (the Directory (tenant) ID or a verified domain) and the authority's cloud"
        }
        7000218 => {
            "this client needs a credential: give client_secret (or a certificate), or enable 'Allow public client flows' in the app registration's Authentication page for password/device-code logins"
        }
        700025 => {
            "this is a public client, which must not send a secret: remove client_secret, or turn off 'Allow public client flows'"
        }
        1002012 | 70011 => {
            "the scope is not valid for this flow: app-only (client_credentials) needs https://outlook.office365.com/.default; delegated flows use IMAP.AccessAsUser.All, SMTP.Send and offline_access"
        }
        65001 => {
            "consent is missing: an administrator must grant admin consent for the API permissions (IMAP.AccessAsApp/SMTP.SendAsApp or IMAP.AccessAsUser.All/SMTP.Send) in App registrations > API permissions"
        }
        50126 => "the username or password is wrong, or the account is not a cloud account",
        50034 => "the user account does not exist in this tenant: check username",
        50053 => {
            "the account is locked after too many failed sign-ins: wait, or have an administrator unlock it"
        }
        50055 => "the user's password has expired: set a new one and update password",
        50057 => "the user account is disabled in Entra ID: an administrator must enable it",
        50076 | 50079 | 50158 => {
            "multi-factor authentication is required for this account, which the password flow cannot do: use flow = \"device_code\" (mailintake login) or exclude the service account from MFA with Conditional Access"
        }
        53003 => {
            "a Conditional Access policy blocked this sign-in: an administrator must allow it (check the sign-in log)"
        }
        700082 | 70008 => {
            "the refresh token has expired after a long inactivity: run `mailintake login` for this identity again"
        }
        70000 | 50173 | 50133 => {
            "the refresh token or grant is no longer valid (revoked, or the password changed): run `mailintake login` for this identity again"
        }
        500011 => {
            "the resource (Office 365 Exchange Online) is not available in this tenant: check the scope's resource and that Exchange Online is licensed"
        }
        900144 => {
            "the token request is missing a parameter: check client_id and the credentials in the config"
        }
        700024 | 700027 => {
            "the client assertion (certificate) was rejected: upload the certificate to the app registration and check the key and certificate files"
        }
        _ => return None,
    })
}

/// How to react to an error response, by `error` code first and the AADSTS code second.
pub fn remedy(body: &ErrorBody, http_status: u16) -> Remedy {
    if http_status == 429 || http_status >= 500 {
        return Remedy::Retry;
    }
    match body.error.as_str() {
        "temporarily_unavailable" | "server_error" | "slow_down" | "authorization_pending" => {
            Remedy::Retry
        }
        _ => Remedy::NeedsAdmin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ErrorBody {
        serde_json::from_str(json).unwrap()
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
    fn generic_oauth_error_without_entra_fields() {
        let b = body(r#"{"error":"invalid_client"}"#);
        assert_eq!(b.aadsts_code(), None);
        assert_eq!(b.summary(), "invalid_client");
        assert_eq!(remedy(&b, 401), Remedy::NeedsAdmin);
    }

    #[test]
    fn server_trouble_is_retried() {
        let b = body(r#"{"error":"temporarily_unavailable"}"#);
        assert_eq!(remedy(&b, 400), Remedy::Retry);
        assert_eq!(remedy(&ErrorBody::default(), 503), Remedy::Retry);
        assert_eq!(remedy(&ErrorBody::default(), 429), Remedy::Retry);
    }

    #[test]
    fn common_codes_have_hints() {
        for code in [7000215, 700016, 90002, 50126, 65001, 7000222, 50076] {
            assert!(hint_for_code(code).is_some(), "{code}");
        }
    }
}
