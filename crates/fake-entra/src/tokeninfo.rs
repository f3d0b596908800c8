//! Access token validation for the mail stack: what Exchange Online would check before letting
//! an XOAUTH2 login into a mailbox. Dovecot's `passdb oauth2` calls `GET /_fake/tokeninfo` for
//! every IMAP login and every SMTP AUTH that Postfix hands to it.
//!
//! Stateless on purpose: the token carries everything (signature, audience, times, permissions
//! and mailbox access), so any instance with the same signing key validates any other's tokens.

use std::time::SystemTime;

use serde::Serialize;

use crate::claims::AccessTokenClaims;
use crate::keys::SigningKey;
use crate::util::{entra_timestamp, unix_secs};

/// Clock skew tolerated on `nbf` (never on `exp`, so tests of expiry are exact).
const NBF_LEEWAY_SECS: i64 = 60;

/// A mail protocol and the permissions Exchange requires for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailService {
    /// IMAP: `IMAP.AccessAsUser.All` (delegated) or `IMAP.AccessAsApp` (app-only).
    Imap,
    /// POP: `POP.AccessAsUser.All` or `POP.AccessAsApp`.
    Pop,
    /// SMTP AUTH (submission): `SMTP.Send` or `SMTP.SendAsApp`.
    Smtp,
}

impl MailService {
    /// Parses Dovecot's `%{service}` (`imap`, `pop3`, `smtp`, `submission`, …); missing → IMAP.
    pub fn parse(service: Option<&str>) -> Result<MailService, String> {
        match service.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("imap") | Some("imaps") => Ok(MailService::Imap),
            Some("pop3") | Some("pop") | Some("pop3s") => Ok(MailService::Pop),
            Some("smtp") | Some("smtps") | Some("submission") | Some("submissions") => {
                Ok(MailService::Smtp)
            }
            Some(other) => Err(format!(
                "unknown service '{other}' (expected imap, pop3, smtp or submission)"
            )),
        }
    }

    /// The delegated permission (`scp`) Exchange requires.
    pub fn delegated_permission(self) -> &'static str {
        match self {
            MailService::Imap => "IMAP.AccessAsUser.All",
            MailService::Pop => "POP.AccessAsUser.All",
            MailService::Smtp => "SMTP.Send",
        }
    }

    /// The application permission (`roles`) Exchange requires.
    pub fn app_permission(self) -> &'static str {
        match self {
            MailService::Imap => "IMAP.AccessAsApp",
            MailService::Pop => "POP.AccessAsApp",
            MailService::Smtp => "SMTP.SendAsApp",
        }
    }

    fn name(self) -> &'static str {
        match self {
            MailService::Imap => "imap",
            MailService::Pop => "pop3",
            MailService::Smtp => "smtp",
        }
    }
}

/// The body of a successful `/_fake/tokeninfo` answer (what Dovecot reads: `active`, `email`).
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    /// Always true.
    pub active: bool,
    /// The mailbox logged into (the SASL login), Dovecot's `username_attribute`.
    pub email: String,
    /// The token's `sub`.
    pub sub: String,
    /// `user` or `app`.
    pub idtyp: String,
    /// The token's `appid`.
    pub client_id: String,
    /// `upn` of a delegated token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
    /// `scp` (delegated) or the space-joined `roles` (app-only).
    pub scope: String,
    /// `exp`.
    pub exp: i64,
}

/// Why an access token was refused by [`verify_access_token`]: the distinction a resource
/// server reports (Microsoft Graph answers both with 401 `InvalidAuthenticationToken`, but with
/// different messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    /// Not a JWT, not signed by this key, or not an access token's claims.
    Invalid(String),
    /// `exp` has passed (or `nbf` lies ahead).
    Expired(String),
    /// `aud` (the value carried) is not one of the accepted audiences.
    WrongAudience(String),
}

impl std::fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRejection::Invalid(why) | TokenRejection::Expired(why) => f.write_str(why),
            TokenRejection::WrongAudience(aud) => {
                write!(f, "the token's audience '{aud}' is not accepted here")
            }
        }
    }
}

/// Checks what every resource server checks before looking at permissions: the RS256 signature
/// with this key, `nbf`/`exp` at `now`, and `aud` against `audiences`. Returns the claims; the
/// caller decides about `roles`/`scp` and mailboxes. Stateless, like the rest of validation.
pub fn verify_access_token(
    key: &SigningKey,
    audiences: &[String],
    token: &str,
    now: SystemTime,
) -> Result<AccessTokenClaims, TokenRejection> {
    let claims = key.verify_jwt(token).map_err(TokenRejection::Invalid)?;
    let claims: AccessTokenClaims = serde_json::from_value(claims).map_err(|e| {
        TokenRejection::Invalid(format!(
            "the token's claims are not those of an access token: {e}"
        ))
    })?;
    let now_secs = unix_secs(now);
    if claims.exp <= now_secs {
        return Err(TokenRejection::Expired(format!(
            "the token expired at {} (now {})",
            entra_timestamp(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp.max(0) as u64)
            ),
            entra_timestamp(now)
        )));
    }
    if claims.nbf > now_secs + NBF_LEEWAY_SECS {
        return Err(TokenRejection::Expired(format!(
            "the token is not valid before nbf={} (now {now_secs})",
            claims.nbf
        )));
    }
    let aud = claims.aud.trim_end_matches('/');
    if !audiences
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(aud))
    {
        return Err(TokenRejection::WrongAudience(claims.aud.clone()));
    }
    Ok(claims)
}

/// Validates `token` for a login as `login` (the SASL user, i.e. the mailbox) to `service`.
/// `audiences` are the accepted `aud` values. The error is a sentence for an operator.
pub fn validate_mailbox_access(
    key: &SigningKey,
    audiences: &[String],
    token: &str,
    login: Option<&str>,
    service: MailService,
    now: SystemTime,
) -> Result<TokenInfo, String> {
    let claims =
        verify_access_token(key, audiences, token, now).map_err(|rejection| match rejection {
            TokenRejection::WrongAudience(aud) => format!(
                "the token's audience '{aud}' is not Exchange Online (expected {})",
                audiences.join(" or ")
            ),
            other => other.to_string(),
        })?;
    let has_mailbox_access = |mailbox: &str| {
        claims
            .fake_mailbox_access
            .iter()
            .any(|m| m.trim().eq_ignore_ascii_case(mailbox.trim()))
    };
    match claims.idtyp.as_str() {
        "user" => {
            let upn = claims
                .upn
                .clone()
                .or_else(|| claims.unique_name.clone())
                .ok_or("the delegated token has no upn")?;
            let scopes = claims.scp.clone().unwrap_or_default();
            let needed = service.delegated_permission();
            if !scopes
                .split_whitespace()
                .any(|s| s.eq_ignore_ascii_case(needed))
            {
                return Err(format!(
                    "the delegated token for '{upn}' lacks the permission {needed} needed for {} \
                     (scp: '{scopes}')",
                    service.name()
                ));
            }
            let mailbox = login.unwrap_or(&upn);
            if !mailbox.trim().eq_ignore_ascii_case(&upn) && !has_mailbox_access(mailbox) {
                return Err(format!(
                    "user '{upn}' has no FullAccess permission on mailbox '{mailbox}' \
                     (FullAccess to: {:?})",
                    claims.fake_mailbox_access
                ));
            }
            Ok(TokenInfo {
                active: true,
                email: mailbox.trim().to_owned(),
                sub: claims.sub,
                idtyp: claims.idtyp,
                client_id: claims.appid,
                upn: Some(upn),
                scope: scopes,
                exp: claims.exp,
            })
        }
        "app" => {
            let needed = service.app_permission();
            if !claims.roles.iter().any(|r| r.eq_ignore_ascii_case(needed)) {
                return Err(format!(
                    "the app-only token of '{}' ({}) lacks the application permission {needed} needed \
                     for {} (roles: {:?}; is admin consent granted?)",
                    claims.app_displayname,
                    claims.appid,
                    service.name(),
                    claims.roles
                ));
            }
            let Some(mailbox) = login.filter(|l| !l.trim().is_empty()) else {
                return Err(
                    "an app-only token needs the mailbox as login user, and none was given"
                        .to_owned(),
                );
            };
            if !has_mailbox_access(mailbox) {
                return Err(format!(
                    "app '{}' ({}) has no permission on mailbox '{mailbox}' (Add-MailboxPermission \
                     FullAccess missing; it has: {:?})",
                    claims.app_displayname, claims.appid, claims.fake_mailbox_access
                ));
            }
            Ok(TokenInfo {
                active: true,
                email: mailbox.trim().to_owned(),
                sub: claims.sub,
                idtyp: claims.idtyp,
                client_id: claims.appid,
                upn: None,
                scope: claims.roles.join(" "),
                exp: claims.exp,
            })
        }
        other => Err(format!(
            "the token's idtyp is '{other}', expected 'user' or 'app' (not an access token?)"
        )),
    }
}
