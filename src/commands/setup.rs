//! Setting a mailbox up: `check` (the configuration, then optionally each mailbox online), `login`
//! (a device-code sign-in) and `consent-url` (for the tenant's administrator).

use std::process::ExitCode;

use super::{success_if, token_cache, unknown_identity};
use crate::check;
use crate::config::Config;
use crate::store::Store;

/// `mailintake check [MAILBOX | --all] [--send-test-mail ADDRESS]`: the configuration is valid
/// once it got here; with a mailbox (or every one) then step by step online.
pub(super) async fn check(
    config: &Config,
    mailbox: Option<&str>,
    all: bool,
    send_test_mail: Option<&str>,
) -> anyhow::Result<ExitCode> {
    println!(
        "configuration is valid: {} identity(ies), {} mailbox(es), database {}",
        config.identities.len(),
        config.mailboxes.len(),
        config.database.redacted_url()
    );
    if mailbox.is_none() && !all {
        if send_test_mail.is_some() {
            eprintln!("mailintake: --send-test-mail needs a mailbox name or --all");
            return Ok(ExitCode::from(2));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let passed = check::online(config, mailbox, send_test_mail).await?;
    Ok(success_if(passed))
}

/// `mailintake consent-url IDENTITY`: the admin-consent URL on stdout, what to do with it on
/// stderr.
pub(super) fn consent_url(config: &Config, identity: &str) -> anyhow::Result<ExitCode> {
    let Some(identity) = config.identities.get(identity) else {
        eprintln!("mailintake: {}", unknown_identity(config, identity));
        return Ok(ExitCode::from(2));
    };
    match crate::config::admin_consent(identity) {
        Ok(consent) => {
            println!("{}", consent.url);
            let whose = if consent.tenant == "organizations" {
                "any customer tenant".to_string()
            } else {
                format!("tenant {}", consent.tenant)
            };
            eprintln!(
                "Hand this URL to a Global, Application or Cloud Application Administrator of {whose}. \
                 They sign in, see the app's name and the Exchange Online permissions it asks for ({}), click Accept, \
                 and are sent to {} with admin_consent=True: a blank or error page there is expected, consent is granted.",
                consent.scope, consent.redirect_uri
            );
            eprintln!(
                "The redirect URI must be registered on the app exactly as printed (else AADSTS50011 or AADSTS500113): \
                 App registrations > the app > Authentication > Add a platform > {}; set consent_redirect_uri to use another.",
                if consent.redirect_uri == crate::config::NATIVE_CLIENT_REDIRECT_URI {
                    format!(
                        "Mobile and desktop applications > tick {}",
                        consent.redirect_uri
                    )
                } else {
                    format!("Web > Redirect URIs: {}", consent.redirect_uri)
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("mailintake: {message}");
            Ok(ExitCode::from(2))
        }
    }
}

/// `mailintake login IDENTITY`: the device-code sign-in of a delegated identity, whose refresh
/// token is then stored sealed.
pub(super) async fn login(
    config: &Config,
    store: &Store,
    identity: &str,
) -> anyhow::Result<ExitCode> {
    let Some(identity) = config.identities.get(identity) else {
        eprintln!("mailintake: {}", unknown_identity(config, identity));
        return Ok(ExitCode::from(2));
    };
    let tokens = token_cache(config, store);
    let result = tokens
        .login_device_code(identity, |prompt| {
            match &prompt.message {
                Some(message) => println!("{message}"),
                None => println!(
                    "To sign in, open {} and enter the code {}",
                    prompt.verification_uri, prompt.user_code
                ),
            }
            println!(
                "Sign in as the account whose mailboxes this identity reads. Waiting up to {} minute(s)…",
                prompt.expires_in.as_secs().div_ceil(60)
            );
        })
        .await;
    match result {
        Ok(login) => {
            println!(
                "identity `{}` is signed in; its refresh token is stored encrypted in the database{}",
                identity.name,
                login
                    .scope
                    .map(|s| format!(" (granted: {s})"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("mailintake: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
