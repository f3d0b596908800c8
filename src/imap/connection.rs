//! The session itself: TCP and TLS (implicit or STARTTLS), the greeting, the XOAUTH2 login and how
//! a refused one is told from one refused only for now, the deadline on every command, TCP
//! keepalive, and logout.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_imap::Session;
use secrecy::ExposeSecret;
use tokio::net::TcpStream;
use tracing::{debug, instrument, warn};

use crate::config::{ImapEndpoint, TlsMode};
use crate::oauth::AccessToken;

type TlsStream = tokio_native_tls::TlsStream<TcpStream>;

/// Why an IMAP operation failed. The worker's question is "reconnect and retry later, or is the
/// login itself refused?": see [`ImapError::is_auth_failure`].
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: native_tls::Error,
    },
    #[error("{}", describe_auth_failure(.login, .response, .server_detail))]
    AuthFailed {
        login: String,
        response: String,
        /// The decoded JSON the server sent in its failure challenge (RFC 7628 §3.2.2), if any.
        server_detail: Option<String>,
    },
    #[error("IMAP {operation} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    #[error("IMAP {operation} failed: {source}")]
    Protocol {
        operation: &'static str,
        #[source]
        source: async_imap::error::Error,
    },
    #[error("IMAP {operation}: {detail}")]
    Unexpected {
        operation: &'static str,
        detail: String,
    },
}

impl ImapError {
    /// The server refused the login: the token may be stale (fetch a new one once) or the identity
    /// lacks permission on the mailbox.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, ImapError::AuthFailed { .. })
    }

    /// The server answered the command with a tagged NO or BAD: the session still works, the
    /// command was refused (its text is the server's reason).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ImapError::Protocol {
                source: async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_),
                ..
            }
        )
    }
}

fn describe_auth_failure(login: &str, response: &str, detail: &Option<String>) -> String {
    let mut text = format!("IMAP login as {login} with XOAUTH2 was refused: {response}");
    if let Some(detail) = detail {
        text.push_str(&format!(" (server said {detail})"));
    }
    text.push_str(
        "\n  fix: the token was accepted by the identity provider but not by the mail server. For Exchange Online app-only access: the app needs the IMAP.AccessAsApp permission with admin consent, New-ServicePrincipal must be run with the Enterprise Application's object id, and Add-MailboxPermission must give it FullAccess on this mailbox; IMAP must be enabled for the mailbox (Set-CASMailbox -ImapEnabled $true). For delegated access: the user needs IMAP.AccessAsUser.All and access to this mailbox.",
    );
    text
}

/// The SASL XOAUTH2 exchange (as Google and Microsoft define it): the first challenge gets the
/// credentials; a second one carries the server's error JSON and must be answered with an empty line.
struct XOAuth2<'a> {
    login: &'a str,
    token: &'a str,
    rounds: usize,
    server_detail: &'a mut Option<String>,
}

impl async_imap::Authenticator for XOAuth2<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        self.rounds += 1;
        if self.rounds == 1 {
            format!("user={}\x01auth=Bearer {}\x01\x01", self.login, self.token).into_bytes()
        } else {
            *self.server_detail = Some(String::from_utf8_lossy(challenge).into_owned());
            Vec::new()
        }
    }
}

/// An authenticated IMAP session. Its fields are `pub(super)` because each concern's
/// `impl Connection` (fetch, folders, idle) lives in a file of its own.
pub struct Connection {
    pub(super) session: Session<TlsStream>,
    /// The login (SASL user), for error messages.
    pub(super) login: String,
    pub(super) capabilities: HashSet<String>,
    pub(super) command_timeout: Duration,
    /// The folder the last SELECT or EXAMINE opened; `None` before, and after one that failed
    /// (RFC 3501 §6.3.1: a failed SELECT leaves no folder selected).
    pub(super) selected: Option<String>,
    /// The server announced new mail (`EXISTS`, `RECENT`) since the last listing began: a
    /// message that arrives after a listing is announced once, in the answer to whatever
    /// command comes next (a disposition's STORE or MOVE), and IDLE does not announce it again,
    /// so [`Connection::idle`] returns at once instead of waiting out `idle_interval`.
    pub(super) new_mail: bool,
}

/// Opens a TLS connection to `endpoint`, reads the greeting, and logs in as `login` with the bearer
/// token.
#[instrument(skip_all, fields(host = %endpoint.host, port = endpoint.port))]
pub async fn connect(
    endpoint: &ImapEndpoint,
    login: &str,
    token: &AccessToken,
) -> Result<Connection, ImapError> {
    let connect_timeout = endpoint.timeouts.connect;
    let address = format!("{}:{}", endpoint.host, endpoint.port);
    let tcp = within(connect_timeout, "connect", async {
        TcpStream::connect(&address)
            .await
            .map_err(|source| ImapError::Connect {
                address: address.clone(),
                source,
            })
    })
    .await?;
    enable_keepalive(&tcp);
    let tls = super::tls::TlsContexts::shared()
        .connector(endpoint)
        .map_err(|e| ImapError::Unexpected {
            operation: "TLS setup",
            detail: e.0,
        })?;

    let client = match endpoint.tls {
        TlsMode::Implicit => {
            let stream = within(connect_timeout, "TLS handshake", async {
                tls.connect(endpoint.host.as_str(), tcp)
                    .await
                    .map_err(|source| ImapError::Tls {
                        host: endpoint.host.clone(),
                        source,
                    })
            })
            .await?;
            let mut client = async_imap::Client::new(stream);
            read_greeting(&mut client, connect_timeout).await?;
            client
        }
        TlsMode::Starttls => {
            let mut plain = async_imap::Client::new(tcp);
            read_greeting(&mut plain, connect_timeout).await?;
            within(connect_timeout, "STARTTLS", async {
                plain
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|source| ImapError::Protocol {
                        operation: "STARTTLS",
                        source,
                    })
            })
            .await?;
            let tcp = plain.into_inner();
            let stream = within(connect_timeout, "TLS handshake", async {
                tls.connect(endpoint.host.as_str(), tcp)
                    .await
                    .map_err(|source| ImapError::Tls {
                        host: endpoint.host.clone(),
                        source,
                    })
            })
            .await?;
            // No second greeting follows STARTTLS (RFC 3501 §6.2.1).
            async_imap::Client::new(stream)
        }
    };

    let mut server_detail = None;
    let authenticator = XOAuth2 {
        login,
        token: token.secret.expose_secret(),
        rounds: 0,
        server_detail: &mut server_detail,
    };
    let result = within(endpoint.timeouts.command, "AUTHENTICATE", async {
        Ok(client.authenticate("XOAUTH2", authenticator).await)
    })
    .await?;
    let mut session = match result {
        Ok(session) => session,
        Err((async_imap::error::Error::No(response), _))
        | Err((async_imap::error::Error::Bad(response), _)) => {
            let response = server_text(&response);
            // A refusal for now, not of the token: worth a retry (with backoff), not an
            // administrator, and the token stays valid.
            if is_temporary_refusal(&response) {
                return Err(ImapError::Unexpected {
                    operation: "AUTHENTICATE",
                    detail: format!(
                        "the server refused the login for now (unavailable, throttled or too many connections); retrying later with backoff. Other clients of this mailbox count against the server's connection limit (Exchange Online: 20 per mailbox): {response}"
                    ),
                });
            }
            let server_detail = server_detail.map(|d| decode_challenge(&d));
            return Err(ImapError::AuthFailed {
                login: login.to_string(),
                response,
                server_detail,
            });
        }
        Err((source, _)) => {
            return Err(ImapError::Protocol {
                operation: "AUTHENTICATE",
                source,
            });
        }
    };

    let capabilities = within(endpoint.timeouts.command, "CAPABILITY", async {
        session
            .capabilities()
            .await
            .map_err(|source| ImapError::Protocol {
                operation: "CAPABILITY",
                source,
            })
    })
    .await?;
    let capabilities: HashSet<String> = capabilities
        .iter()
        .filter_map(|c| match c {
            async_imap::types::Capability::Atom(atom) => Some(atom.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    debug!(?capabilities, "logged in");
    Ok(Connection {
        session,
        login: login.to_string(),
        capabilities,
        command_timeout: endpoint.timeouts.command,
        selected: None,
        new_mail: false,
    })
}

/// A login refusal that says "not now" rather than "not you": RFC 5530's `[UNAVAILABLE]` (the
/// server could not check the credentials, e.g. its identity provider is down; Dovecot also sends
/// it for too many connections from one user and address) and `[LIMIT]`, Exchange Online's
/// `[THROTTLED]` and its "Server Unavailable".
fn is_temporary_refusal(response: &str) -> bool {
    let upper = response.to_ascii_uppercase();
    [
        "[UNAVAILABLE]",
        "[LIMIT]",
        "[THROTTLED]",
        "SERVER UNAVAILABLE",
    ]
    .iter()
    .any(|marker| upper.contains(marker))
}

/// async-imap renders a tagged NO as `code: Some(..), info: Some("text")`; keep the server's text.
pub(super) fn server_text(rendered: &str) -> String {
    match rendered.split_once("info: Some(\"") {
        Some((_, rest)) => rest.trim_end_matches(')').trim_end_matches('"').to_string(),
        None => rendered.to_string(),
    }
}

/// The failure challenge is normally JSON; keep it readable and short.
fn decode_challenge(detail: &str) -> String {
    detail.trim().chars().take(300).collect()
}

/// TCP keepalive, so a connection silently dropped by a NAT or firewall is noticed.
fn enable_keepalive(tcp: &TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(20));
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        warn!(error = %e, "could not enable TCP keepalive");
    }
}

async fn read_greeting<T>(
    client: &mut async_imap::Client<T>,
    timeout: Duration,
) -> Result<(), ImapError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + fmt::Debug + Send,
{
    let greeting = within(timeout, "greeting", async {
        client
            .read_response()
            .await
            .map_err(|e| ImapError::Protocol {
                operation: "greeting",
                source: e.into(),
            })
    })
    .await?;
    match greeting {
        Some(_) => Ok(()),
        None => Err(ImapError::Unexpected {
            operation: "greeting",
            detail: "the server closed the connection before greeting".into(),
        }),
    }
}

/// Runs `operation` with a deadline; a timeout means the connection's state is unknown, so the
/// caller must drop the connection.
pub(super) async fn within<T>(
    limit: Duration,
    operation: &'static str,
    future: impl Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(ImapError::Timeout {
            operation,
            after: limit,
        }),
    }
}

pub(super) fn protocol(
    operation: &'static str,
) -> impl FnOnce(async_imap::error::Error) -> ImapError {
    move |source| ImapError::Protocol { operation, source }
}

impl Connection {
    /// Takes what the library queued of the server's unsolicited responses (its channel holds
    /// 100 and drops the rest, so it is emptied after every command), noting an announcement
    /// of new mail in [`Connection::new_mail`].
    pub(super) fn drain_unsolicited(&mut self) {
        use async_imap::types::UnsolicitedResponse;
        while let Ok(response) = self.session.unsolicited_responses.try_recv() {
            if matches!(response, UnsolicitedResponse::Exists(_))
                || matches!(response, UnsolicitedResponse::Recent(n) if n > 0)
            {
                self.new_mail = true;
            }
        }
    }

    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.contains(&name.to_ascii_uppercase())
    }

    /// Logs out politely; errors are irrelevant at this point.
    pub async fn logout(mut self) {
        let _ = within(Duration::from_secs(5), "LOGOUT", async {
            self.session.logout().await.map_err(protocol("LOGOUT"))
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_refused_for_now_are_told_from_refused_tokens() {
        for temporary in [
            "[UNAVAILABLE] Temporary authentication failure. [host:2026-12-01 09:00:00]",
            "[UNAVAILABLE] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
            "[LIMIT] Too many simultaneous connections",
            "[THROTTLED] Request is throttled",
            "Server Unavailable. 15",
        ] {
            assert!(is_temporary_refusal(temporary), "{temporary}");
        }
        for refused in [
            "[AUTHENTICATIONFAILED] Authentication failed.",
            "AUTHENTICATE failed.",
            "User is authenticated but not connected.",
        ] {
            assert!(!is_temporary_refusal(refused), "{refused}");
        }
    }

    #[test]
    fn server_text_is_extracted_from_async_imap_errors() {
        assert_eq!(
            server_text(
                r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(server_text("plain"), "plain");
    }

    #[test]
    fn xoauth2_sends_credentials_then_an_empty_answer() {
        use async_imap::Authenticator;
        let mut detail = None;
        let mut auth = XOAuth2 {
            login: "support@contoso.com",
            token: "tok",
            rounds: 0,
            server_detail: &mut detail,
        };
        assert_eq!(
            auth.process(b""),
            b"user=support@contoso.com\x01auth=Bearer tok\x01\x01".to_vec()
        );
        assert_eq!(auth.process(br#"{"status":"401"}"#), Vec::<u8>::new());
        assert_eq!(detail.as_deref(), Some(r#"{"status":"401"}"#));
    }
}
