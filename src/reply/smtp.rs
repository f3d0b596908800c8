//! SMTP submission with `AUTH XOAUTH2` (lettre), and errors that answer the caller's question:
//! retry later, fail this row, hold every row from this From address, or fetch a new token.

use std::time::Duration;

use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox as Address, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{
    ClientId, Extension, MailBodyParameter, MailParameter, RcptParameter,
};
use secrecy::ExposeSecret;

use super::refusal::{Command, Refused, refused};
use crate::config::{SmtpServer, TlsMode};
use crate::oauth::AccessToken;
use crate::store::{OutboxRow, ServerFacts};

/// Why a message was not sent; the variants are what the sender does about it.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Worth retrying later (4xx, network, timeouts).
    #[error("{0}")]
    Transient(String),
    /// Refused for good for this row alone (its recipient, or the row cannot be a message): the
    /// row is recorded as failed with the reply.
    #[error("{0}")]
    RowRefused(String),
    /// Refused for good for the From address (or the mailbox's SMTP setup): nothing from that
    /// address can go until an administrator acts, so its rows wait, retried every 10 minutes.
    #[error("{0}")]
    SenderBlocked(String),
    /// The server refused the token: fetch a new one once, then ask an administrator.
    #[error("{0}")]
    Auth(String),
}

impl SmtpError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SmtpError::Transient(_))
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, SmtpError::RowRefused(_) | SmtpError::SenderBlocked(_))
    }
}

/// What to do about Exchange Online's (and Postfix's) common refusals.
pub fn hint(reply: &str) -> Option<&'static str> {
    let reply = reply.to_ascii_lowercase();
    Some(if reply.contains("5.7.139") {
        "SMTP AUTH is disabled for the tenant or this mailbox: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false (and check Get-TransportConfig | fl SmtpClientAuthenticationDisabled)"
    } else if reply.contains("5.7.60")
        || reply.contains("5.2.252")
        || reply.contains("sendasdenied")
        || reply.contains("not owned by user")
    {
        "the identity may not send as this From address: grant it with Add-RecipientPermission <mailbox> -Trustee <app or user> -AccessRights SendAs, or send from the mailbox address"
    } else if reply.contains("quotaexceeded") {
        "the sending mailbox is over a quota (Exchange: its mailbox size, or 10,000 recipients a day): free space or wait for the window; the rows are retried"
    } else if reply.contains("storedrv") || reply.contains("mailbox logon failure") {
        "Exchange could not log on to the mailbox: check that it exists and that the service principal has FullAccess (Add-MailboxPermission)"
    } else if reply.contains("5.7.3")
        || reply.contains("535")
        || reply.contains("does not expect a challenge")
    {
        "the server refused the token: app-only sending needs SMTP.SendAsApp with admin consent and the service principal registered in Exchange (New-ServicePrincipal); delegated sending needs SMTP.Send"
    } else if reply.contains("5.7.57") {
        "the server requires authentication before sending: check the SMTP host and port (Exchange Online: smtp.office365.com:587 with STARTTLS)"
    } else if reply.contains("5.7.708") || reply.contains("5.7.750") {
        "Exchange Online blocked the tenant from sending (a new or suspicious tenant, or unregistered domains): see the Microsoft 365 Defender portal's Restricted entities, or open a ticket with Microsoft"
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

/// A failure before any message was offered: connecting, TLS, EHLO, AUTH.
fn classify_session(error: lettre::transport::smtp::Error) -> SmtpError {
    let text = error.to_string();
    let code = error.status().map(|c| c.to_string()).unwrap_or_default();
    // A refused XOAUTH2 answers with a 334 challenge that lettre does not expect; the server's
    // JSON reason is lost there, and only its log has it.
    if text.contains("does not expect a challenge") || code == "535" || code == "530" {
        SmtpError::Auth(with_hint(format!(
            "SMTP authentication with XOAUTH2 was refused: {text}"
        )))
    } else if error.is_permanent() {
        SmtpError::SenderBlocked(with_hint(text))
    } else {
        SmtpError::Transient(with_hint(text))
    }
}

/// A failure of one of a message's commands.
fn classify_command(command: Command, error: lettre::transport::smtp::Error) -> SmtpError {
    let code = error.status().map(|c| c.to_string()).unwrap_or_default();
    if code == "530" {
        return classify_session(error);
    }
    let text = error.to_string();
    if !error.is_permanent() {
        return SmtpError::Transient(with_hint(text));
    }
    let verb = match command {
        Command::MailFrom => "MAIL FROM",
        Command::RcptTo => "RCPT TO",
        Command::Data => "DATA",
    };
    let text = format!("{verb} refused: {text}");
    match refused(command, &text) {
        Refused::Recipient | Refused::Message => SmtpError::RowRefused(with_hint(text)),
        Refused::Sender => SmtpError::SenderBlocked(with_hint(text)),
    }
}

/// One SMTP session (TLS, XOAUTH2 done) for a batch of sends with one token; opened again when
/// the token changes. lettre's transport would hide which command a refusal answered, so the
/// session drives MAIL FROM, RCPT TO and DATA itself.
pub struct Session {
    connection: AsyncSmtpConnection,
    /// What the server's EHLO announced (lettre keeps neither SIZE nor DSN): the sender keeps it
    /// for submission, and every message is checked against it before MAIL FROM.
    facts: ServerFacts,
}

/// SIZE and DSN from an EHLO reply's lines (`SIZE 52428800`, `DSN`; RFC 1870, RFC 3461).
pub fn server_facts<'a>(lines: impl IntoIterator<Item = &'a str>) -> ServerFacts {
    let mut facts = ServerFacts::default();
    for line in lines {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("SIZE") => {
                facts.size_limit = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0)
            }
            Some("DSN") => facts.dsn = true,
            _ => {}
        }
    }
    facts
}

/// RFC 3461's xtext, for ENVID: `+`, `=` and anything outside `!`..`~` as `+XX`.
fn xtext(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => (b as char).to_string(),
            _ => format!("+{b:02X}"),
        })
        .collect()
}

/// Connects to `endpoint` and authenticates as `login` with `token`, each step within
/// `timeout`.
pub async fn connect(
    endpoint: &SmtpServer,
    timeout: Duration,
    login: &str,
    token: &AccessToken,
) -> Result<Session, SmtpError> {
    match tokio::time::timeout(timeout * 2, open(endpoint, timeout, login, token)).await {
        Ok(result) => result,
        Err(_) => Err(SmtpError::Transient(format!(
            "the SMTP server {}:{} did not complete the login within {:?}",
            endpoint.host,
            endpoint.port,
            timeout * 2
        ))),
    }
}

async fn open(
    endpoint: &SmtpServer,
    timeout: Duration,
    login: &str,
    token: &AccessToken,
) -> Result<Session, SmtpError> {
    let mut tls = TlsParameters::builder(endpoint.host.clone());
    if let Some(ca_file) = &endpoint.ca_file {
        let pem = std::fs::read(ca_file).map_err(|e| {
            SmtpError::SenderBlocked(format!(
                "cannot read smtp.ca_file {}: {e}",
                ca_file.display()
            ))
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            SmtpError::SenderBlocked(format!(
                "smtp.ca_file {} is not a PEM certificate: {e}",
                ca_file.display()
            ))
        })?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = tls
        .build_native()
        .map_err(|e| SmtpError::SenderBlocked(format!("TLS setup for {}: {e}", endpoint.host)))?;
    let hello = ClientId::default();
    let implicit = match endpoint.tls {
        TlsMode::Implicit => Some(tls.clone()),
        TlsMode::Starttls => None,
    };
    let mut connection = AsyncSmtpConnection::connect_tokio1(
        (endpoint.host.as_str(), endpoint.port),
        Some(timeout),
        &hello,
        implicit,
        None,
    )
    .await
    .map_err(classify_session)?;
    if endpoint.tls == TlsMode::Starttls {
        connection
            .starttls(tls, &hello)
            .await
            .map_err(classify_session)?;
    }
    // lettre parses only the extensions it uses; a second EHLO (harmless, RFC 5321 §4.1.4) gives
    // the lines with SIZE and DSN.
    let ehlo = connection
        .command(Ehlo::new(hello))
        .await
        .map_err(classify_session)?;
    let facts = server_facts(ehlo.message());
    let credentials = Credentials::new(login.to_string(), token.secret.expose_secret().to_string());
    if let Err(e) = connection.auth(&[Mechanism::Xoauth2], &credentials).await {
        connection.abort().await;
        return Err(classify_session(e));
    }
    Ok(Session { connection, facts })
}

impl Session {
    /// Submits `message` within `limit`; returns the server's reply (e.g. `250 2.0.0 Ok: queued
    /// as …`). After a refusal the session is reset and can send the next message.
    pub async fn send(&mut self, message: &Composed, limit: Duration) -> Result<String, SmtpError> {
        match tokio::time::timeout(limit, self.submit(message)).await {
            Err(_) => {
                self.connection.abort().await;
                Err(SmtpError::Transient(format!(
                    "the SMTP server did not answer within {limit:?}"
                )))
            }
            Ok(Err(error)) => {
                if !self.connection.has_broken() && self.connection.command(Rset).await.is_err() {
                    self.connection.abort().await;
                }
                Err(error)
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// What the server announced in its EHLO.
    pub fn facts(&self) -> ServerFacts {
        self.facts
    }

    /// False once the connection is lost or closed: open a new session.
    pub fn is_usable(&self) -> bool {
        !self.connection.has_broken()
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        if !self.connection.has_broken() {
            let _ = self.connection.quit().await;
        }
    }

    async fn submit(&mut self, message: &Composed) -> Result<String, SmtpError> {
        let envelope = &message.envelope;
        let bytes = &message.bytes;
        // Never half-sent: a message the server announced it would refuse is not offered, and
        // SIZE= lets it refuse at MAIL FROM, before any byte of the message.
        if let Some(limit) = self.facts.size_limit
            && bytes.len() as u64 > limit
        {
            return Err(SmtpError::RowRefused(format!(
                "the message is {} bytes, more than the server accepts (its EHLO SIZE is {limit} bytes): send large files as links",
                bytes.len()
            )));
        }
        let info = self.connection.server_info();
        let mut parameters = Vec::new();
        if self.facts.size_limit.is_some() {
            parameters.push(MailParameter::Size(bytes.len()));
        }
        let mut rcpt_parameters = Vec::new();
        if self.facts.dsn {
            // A DSN names our message by ENVID (its Message-ID) and returns only its headers.
            parameters.push(MailParameter::Other {
                keyword: "RET".into(),
                value: Some("HDRS".into()),
            });
            // RFC 3461 §4.4 allows 100 characters.
            if let Some(id) = message
                .envelope_id
                .as_deref()
                .map(xtext)
                .filter(|id| id.len() <= 100)
            {
                parameters.push(MailParameter::Other {
                    keyword: "ENVID".into(),
                    value: Some(id),
                });
            }
            rcpt_parameters.push(RcptParameter::Other {
                keyword: "NOTIFY".into(),
                value: Some("FAILURE,DELAY".into()),
            });
        }
        let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
        let ascii_addresses = envelope.from().is_none_or(ascii) && envelope.to().iter().all(ascii);
        if !ascii_addresses {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(SmtpError::RowRefused(
                    "the addresses are not ASCII and the server does not offer SMTPUTF8".into(),
                ));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !bytes.is_ascii() {
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let command = |c: Command| move |e| classify_command(c, e);
        self.connection
            .command(Mail::new(envelope.from().cloned(), parameters))
            .await
            .map_err(command(Command::MailFrom))?;
        for to in envelope.to() {
            self.connection
                .command(Rcpt::new(to.clone(), rcpt_parameters.clone()))
                .await
                .map_err(command(Command::RcptTo))?;
        }
        self.connection
            .command(Data)
            .await
            .map_err(command(Command::Data))?;
        let response = self
            .connection
            .message(bytes)
            .await
            .map_err(command(Command::Data))?;
        Ok(format!(
            "{} {}",
            response.code(),
            response.message().collect::<Vec<_>>().join(" ")
        ))
    }
}

/// A message ready for the wire: whom the server is told (MAIL FROM, RCPT TO) and the bytes.
#[derive(Debug, Clone)]
pub struct Composed {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
    /// Sent as ENVID where the server offers DSN: our Message-ID, without angle brackets.
    pub envelope_id: Option<String>,
}

impl From<Message> for Composed {
    fn from(message: Message) -> Composed {
        Composed {
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
            envelope_id: None,
        }
    }
}

/// The message of an outbox row: agent mail and notifications as composed at submission (the
/// same bytes, so a resend has the same Message-ID), to every envelope recipient; an
/// acknowledgement or notice from its columns ([`compose_acknowledgement`]).
pub fn compose(row: &OutboxRow, loop_address: &str) -> Result<Composed, SmtpError> {
    let Some(raw) = &row.raw else {
        return compose_acknowledgement(row, loop_address).map(|message| Composed {
            envelope_id: Some(row.message_id.clone()),
            ..Composed::from(message)
        });
    };
    let from = row.from_address.parse::<lettre::Address>().map_err(|e| {
        SmtpError::SenderBlocked(format!(
            "the From address `{}` is not valid: {e}",
            row.from_address
        ))
    })?;
    let recipients = if row.envelope_to.is_empty() {
        row.to_address.iter().cloned().collect()
    } else {
        row.envelope_to.clone()
    };
    let to = recipients
        .iter()
        .map(|address| {
            address.parse::<lettre::Address>().map_err(|e| {
                SmtpError::RowRefused(format!("the recipient `{address}` is not valid: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let envelope = Envelope::new(Some(from), to)
        .map_err(|e| SmtpError::RowRefused(format!("the row has no recipient: {e}")))?;
    Ok(Composed {
        envelope,
        bytes: raw.clone(),
        envelope_id: Some(row.message_id.clone()),
    })
}

/// The RFC 5322 message of an acknowledgement or notice row, with the RFC 3834 headers that keep
/// other systems from answering it and mailintake from answering their answers.
pub fn compose_acknowledgement(row: &OutboxRow, loop_address: &str) -> Result<Message, SmtpError> {
    let parse = |what: &str, address: &str| {
        address.parse::<Address>().map_err(|e| {
            let text = format!("the {what} address `{address}` is not valid: {e}");
            if what == "From" {
                SmtpError::SenderBlocked(text)
            } else {
                SmtpError::RowRefused(text)
            }
        })
    };
    let to = row
        .to_address
        .as_deref()
        .ok_or_else(|| SmtpError::RowRefused("the row has no recipient".into()))?;
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
    message.map_err(|e| SmtpError::RowRefused(format!("cannot build the message: {e}")))
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
        assert!(
            hint("554 5.2.252 SendAsDenied; a not allowed to send as b")
                .unwrap()
                .contains("SendAs")
        );
        assert!(
            hint("553 5.7.1 <x>: Sender address rejected: not owned by user y")
                .unwrap()
                .contains("Add-RecipientPermission")
        );
        assert!(
            hint("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
                .unwrap()
                .contains("quota")
        );
        assert!(hint("250 ok").is_none());
    }

    #[test]
    fn ehlo_lines_give_size_and_dsn() {
        let facts = server_facts(["localhost", "PIPELINING", "SIZE 5242880", "DSN", "8BITMIME"]);
        assert_eq!(facts.size_limit, Some(5_242_880));
        assert!(facts.dsn);
        let none = server_facts(["mx.example", "SIZE", "STARTTLS"]);
        assert_eq!(none.size_limit, None);
        assert!(!none.dsn);
        assert_eq!(server_facts(["SIZE 0"]).size_limit, None);
    }

    #[test]
    fn envelope_ids_are_xtext() {
        assert_eq!(
            xtext("mailintake.1a@helpdesk.test"),
            "mailintake.1a@helpdesk.test"
        );
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
