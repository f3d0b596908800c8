//! SMTP submission with `AUTH XOAUTH2` (lettre), and errors that answer the caller's question:
//! retry later, give up, or fetch a new token.

use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox as Address, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{SmtpEndpoint, TlsMode};
use crate::oauth::AccessToken;
use crate::store::OutboxRow;

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Worth retrying later (4xx, network, timeouts).
    #[error("{0}")]
    Transient(String),
    /// The server refused for good (5xx): recorded as failed with its reply.
    #[error("{0}")]
    Permanent(String),
    /// The server refused the token: fetch a new one once, then ask an administrator.
    #[error("{0}")]
    Auth(String),
}

impl SmtpError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SmtpError::Transient(_))
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, SmtpError::Permanent(_))
    }
}

/// What to do about Exchange Online's (and Postfix's) common refusals.
pub fn hint(reply: &str) -> Option<&'static str> {
    let reply = reply.to_ascii_lowercase();
    Some(if reply.contains("5.7.139") {
        "SMTP AUTH is disabled for the tenant or this mailbox: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false (and check Get-TransportConfig | fl SmtpClientAuthenticationDisabled)"
    } else if reply.contains("5.7.60") || reply.contains("not owned by user") {
        "the identity may not send as this From address: grant it with Add-RecipientPermission <mailbox> -Trustee <app or user> -AccessRights SendAs, or send from the mailbox address"
    } else if reply.contains("storedrv") || reply.contains("mailbox logon failure") {
        "Exchange could not log on to the mailbox: check that it exists and that the service principal has FullAccess (Add-MailboxPermission)"
    } else if reply.contains("5.7.3")
        || reply.contains("535")
        || reply.contains("does not expect a challenge")
    {
        "the server refused the token: app-only sending needs SMTP.SendAsApp with admin consent and the service principal registered in Exchange (New-ServicePrincipal); delegated sending needs SMTP.Send"
    } else if reply.contains("5.7.57") {
        "the server requires authentication before sending: check the SMTP host and port (Exchange Online: smtp.office365.com:587 with STARTTLS)"
    } else {
        return None;
    })
}

fn with_hint(text: String) -> String {
    match hint(&text) {
        Some(hint) => format!("{text}\n  fix: {hint}"),
        None => text,
    }
}

fn classify(error: lettre::transport::smtp::Error) -> SmtpError {
    let text = error.to_string();
    let code = error.status().map(|c| c.to_string()).unwrap_or_default();
    // A refused XOAUTH2 answers with a 334 challenge that lettre does not expect; the server's
    // JSON reason is lost there, and only its log has it.
    if text.contains("does not expect a challenge") || code == "535" || code == "530" {
        SmtpError::Auth(with_hint(format!(
            "SMTP authentication with XOAUTH2 was refused: {text}"
        )))
    } else if error.is_permanent() {
        SmtpError::Permanent(with_hint(text))
    } else {
        SmtpError::Transient(with_hint(text))
    }
}

/// A transport for one batch of sends with `token`; rebuilt when the token changes, because lettre
/// fixes credentials when the transport is built.
pub fn transport(
    endpoint: &SmtpEndpoint,
    login: &str,
    token: &AccessToken,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, SmtpError> {
    let mut tls = TlsParameters::builder(endpoint.host.clone());
    if let Some(ca_file) = &endpoint.ca_file {
        let pem = std::fs::read(ca_file).map_err(|e| {
            SmtpError::Permanent(format!(
                "cannot read smtp.ca_file {}: {e}",
                ca_file.display()
            ))
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            SmtpError::Permanent(format!(
                "smtp.ca_file {} is not a PEM certificate: {e}",
                ca_file.display()
            ))
        })?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = tls
        .build_native()
        .map_err(|e| SmtpError::Permanent(format!("TLS setup for {}: {e}", endpoint.host)))?;
    Ok(
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(endpoint.host.as_str())
            .port(endpoint.port)
            .tls(match endpoint.tls {
                TlsMode::Starttls => Tls::Required(tls),
                TlsMode::Implicit => Tls::Wrapper(tls),
            })
            .credentials(Credentials::new(
                login.to_string(),
                token.secret.expose_secret().to_string(),
            ))
            .authentication(vec![Mechanism::Xoauth2])
            .timeout(Some(endpoint.timeout))
            .build(),
    )
}

/// The RFC 5322 message of an outbox row, with the RFC 3834 headers that keep other systems from
/// answering it and mailintake from answering their answers.
pub fn compose(row: &OutboxRow, loop_address: &str) -> Result<Message, SmtpError> {
    let parse = |what: &str, address: &str| {
        address.parse::<Address>().map_err(|e| {
            SmtpError::Permanent(format!("the {what} address `{address}` is not valid: {e}"))
        })
    };
    let to = row
        .to_address
        .as_deref()
        .ok_or_else(|| SmtpError::Permanent("the row has no recipient".into()))?;
    let header = |name: &'static str, value: &str| {
        HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
    };
    let mut builder = Message::builder()
        .from(parse("From", &row.from_address)?)
        .to(parse("To", to)?)
        .subject(row.subject.clone())
        .message_id(Some(format!("<{}>", row.message_id)))
        .raw_header(header("Auto-Submitted", "auto-replied"))
        .raw_header(header("X-Auto-Response-Suppress", "All"))
        .raw_header(header("Precedence", "auto_reply"))
        .raw_header(header("X-Loop", loop_address));
    if let Some(parent) = &row.in_reply_to {
        builder = builder.in_reply_to(format!("<{parent}>"));
    }
    if let Some(references) = &row.thread_references {
        builder = builder.references(references.clone());
    }
    let message = match &row.body_html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            row.body_text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(SinglePart::plain(row.body_text.clone())),
    };
    message.map_err(|e| SmtpError::Permanent(format!("cannot build the message: {e}")))
}

/// Submits `message`; returns the server's reply (e.g. `250 2.0.0 Ok: queued as …`).
pub async fn send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    message: Message,
    limit: Duration,
) -> Result<String, SmtpError> {
    match tokio::time::timeout(limit, transport.send(message)).await {
        Err(_) => Err(SmtpError::Transient(format!(
            "the SMTP server did not answer within {limit:?}"
        ))),
        Ok(Err(e)) => Err(classify(e)),
        Ok(Ok(response)) => Ok(format!(
            "{} {}",
            response.code(),
            response.message().collect::<Vec<_>>().join(" ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_refusals_have_hints() {
        assert!(
            hint("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled")
                .unwrap()
                .contains("Set-CASMailbox")
        );
        assert!(
            hint("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException; 5.7.60")
                .unwrap()
                .contains("SendAs")
        );
        assert!(
            hint("430 4.2.0 STOREDRV; mailbox logon failure")
                .unwrap()
                .contains("FullAccess")
        );
        assert!(
            hint("535 5.7.3 Authentication unsuccessful")
                .unwrap()
                .contains("SMTP.SendAsApp")
        );
        assert!(hint("250 ok").is_none());
    }
}
