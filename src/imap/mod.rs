//! IMAP over TLS with `AUTHENTICATE XOAUTH2`: the only module that knows async-imap.
//!
//! async-imap has sharp edges that lose mail when used naively (see `shared/notes/crates.md`); this
//! wrapper is where each is handled:
//! - the server greeting is read before `AUTHENTICATE`, or the challenge is mistaken for it;
//! - a tagged NO/BAD on FETCH or STORE ends the result stream as if it were complete, so listings are
//!   cross-checked with `UID SEARCH` and commands whose data we do not need are sent with
//!   `run_command_and_check_ok`, which does check the tagged status;
//! - bodies are buffered whole by the library, so every body fetch is capped with a partial range;
//! - a `UID FETCH n:*` returns the highest message even when its UID is below `n`.

mod source;
mod utf7;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_imap::Session;
use futures::TryStreamExt;
use secrecy::ExposeSecret;
use tokio::net::TcpStream;
use tracing::{debug, instrument, warn};

use crate::config::{ImapEndpoint, TlsMode};
use crate::oauth::AccessToken;

pub use crate::mail_source::{Body, IdleOutcome, MessageSummary, SelectedFolder, Uid};
pub use source::ImapSource;
pub use utf7::encode_folder_name;

type TlsStream = async_native_tls::TlsStream<TcpStream>;

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

/// Formats UIDs as a compact IMAP sequence set (`1:3,7,9:10`).
pub fn uid_set(uids: &[Uid]) -> String {
    let mut sorted: Vec<u32> = uids.iter().map(|u| u.0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// An authenticated IMAP session.
pub struct Connection {
    session: Session<TlsStream>,
    /// The login (SASL user), for error messages.
    login: String,
    capabilities: HashSet<String>,
    command_timeout: Duration,
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
    let tls = tls_connector(endpoint)?;

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
fn server_text(rendered: &str) -> String {
    match rendered.split_once("info: Some(\"") {
        Some((_, rest)) => rest.trim_end_matches(')').trim_end_matches('"').to_string(),
        None => rendered.to_string(),
    }
}

/// The failure challenge is normally JSON; keep it readable and short.
fn decode_challenge(detail: &str) -> String {
    detail.trim().chars().take(300).collect()
}

fn tls_connector(endpoint: &ImapEndpoint) -> Result<async_native_tls::TlsConnector, ImapError> {
    let mut connector = async_native_tls::TlsConnector::new();
    if let Some(ca_file) = &endpoint.ca_file {
        let unexpected = |detail: String| ImapError::Unexpected {
            operation: "TLS setup",
            detail,
        };
        let pem = std::fs::read(ca_file)
            .map_err(|e| unexpected(format!("cannot read ca_file {}: {e}", ca_file.display())))?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
            unexpected(format!(
                "ca_file {} is not a PEM certificate: {e}",
                ca_file.display()
            ))
        })?;
        connector = connector.add_root_certificate(cert);
    }
    Ok(connector)
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
async fn within<T>(
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

fn protocol(operation: &'static str) -> impl FnOnce(async_imap::error::Error) -> ImapError {
    move |source| ImapError::Protocol { operation, source }
}

/// An IMAP quoted string (RFC 3501 §4.3) of an already UTF-7-encoded folder name.
fn quoted(folder: &str) -> String {
    let encoded = encode_folder_name(folder);
    let mut out = String::with_capacity(encoded.len() + 2);
    out.push('"');
    for c in encoded.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Connection {
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.contains(&name.to_ascii_uppercase())
    }

    /// Selects `folder` read-write.
    pub async fn select(&mut self, folder: &str) -> Result<SelectedFolder, ImapError> {
        self.open_folder(folder, false).await
    }

    /// Opens `folder` read-only (EXAMINE): nothing in it can change through this session.
    pub async fn examine(&mut self, folder: &str) -> Result<SelectedFolder, ImapError> {
        self.open_folder(folder, true).await
    }

    async fn open_folder(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> Result<SelectedFolder, ImapError> {
        let encoded = encode_folder_name(folder);
        let mailbox = within(self.command_timeout, "SELECT", async {
            if read_only {
                self.session
                    .examine(&encoded)
                    .await
                    .map_err(protocol("EXAMINE"))
            } else {
                self.session
                    .select(&encoded)
                    .await
                    .map_err(protocol("SELECT"))
            }
        })
        .await
        .map_err(|e| match e {
            // Exchange Online accepts the token but cannot open the mailbox for this identity.
            ImapError::Protocol {
                source: async_imap::error::Error::No(text),
                ..
            } if text.contains("authenticated but not connected") => ImapError::AuthFailed {
                login: self.login.clone(),
                response: server_text(&text),
                server_detail: None,
            },
            other => other,
        })?;
        let uidvalidity = mailbox.uid_validity.ok_or_else(|| ImapError::Unexpected {
            operation: "SELECT",
            detail: format!("the server sent no UIDVALIDITY for folder {folder}"),
        })?;
        Ok(SelectedFolder {
            uidvalidity,
            uid_next: mailbox.uid_next,
            exists: mailbox.exists,
        })
    }

    /// Lists the messages with a UID above `last_uid`, with their sizes, without any body.
    ///
    /// The listing is confirmed with `UID SEARCH`: a FETCH that the server ends with NO looks like
    /// a short, complete result, and a message missed here would be skipped for good.
    pub async fn list_above(&mut self, last_uid: u32) -> Result<Vec<MessageSummary>, ImapError> {
        let first = last_uid.saturating_add(1);
        let range = format!("{first}:*");
        let mut listed: Vec<MessageSummary> = within(self.command_timeout, "UID FETCH", async {
            let mut stream = self
                .session
                .uid_fetch(&range, "(UID RFC822.SIZE FLAGS INTERNALDATE)")
                .await
                .map_err(protocol("UID FETCH"))?;
            // Map each response as it arrives: the library's response buffers are dropped at once,
            // so memory stays small however many messages the folder holds.
            let mut listed = Vec::new();
            while let Some(fetch) = stream.try_next().await.map_err(protocol("UID FETCH"))? {
                let Some(uid) = fetch.uid else { continue };
                if uid < first {
                    continue;
                }
                listed.push(MessageSummary {
                    uid: Uid(uid),
                    size: u64::from(fetch.size.unwrap_or(0)),
                    internal_date_ms: fetch.internal_date().map(|d| d.timestamp_millis()),
                    seen: fetch
                        .flags()
                        .any(|f| matches!(f, async_imap::types::Flag::Seen)),
                });
            }
            Ok(listed)
        })
        .await?;
        listed.sort_by_key(|m| m.uid);
        listed.dedup_by_key(|m| m.uid);

        let searched = within(self.command_timeout, "UID SEARCH", async {
            self.session
                .uid_search(format!("UID {range}"))
                .await
                .map_err(protocol("UID SEARCH"))
        })
        .await?;
        let listed_uids: HashSet<u32> = listed.iter().map(|m| m.uid.0).collect();
        let missing: Vec<u32> = searched
            .into_iter()
            .filter(|uid| *uid >= first && !listed_uids.contains(uid))
            .collect();
        if !missing.is_empty() {
            return Err(ImapError::Unexpected {
                operation: "UID FETCH",
                detail: format!(
                    "the listing missed {} message(s) that UID SEARCH found (e.g. UID {}); retrying later",
                    missing.len(),
                    missing[0]
                ),
            });
        }
        Ok(listed)
    }

    /// Downloads a batch of messages in one round trip, but never more than `cap + 1` bytes of any
    /// of them (`BODY.PEEK[]<0.N>`, which also leaves `\Seen` alone). Every requested UID must come
    /// back: a missing one may be a NO the library swallowed, so it is an error, never an empty mail.
    pub async fn fetch_bodies(
        &mut self,
        uids: &[Uid],
        cap: u64,
    ) -> Result<Vec<(Uid, Body)>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let limit = cap.saturating_add(1);
        let set = uid_set(uids);
        let mut bodies = within(self.command_timeout, "UID FETCH body", async {
            let mut stream = self
                .session
                .uid_fetch(&set, format!("(UID BODY.PEEK[]<0.{limit}>)"))
                .await
                .map_err(protocol("UID FETCH body"))?;
            let mut bodies = std::collections::HashMap::with_capacity(uids.len());
            // Take each body out as it arrives, so the library's response buffers are dropped.
            while let Some(fetch) = stream
                .try_next()
                .await
                .map_err(protocol("UID FETCH body"))?
            {
                if let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) {
                    let body = if body.len() as u64 > cap {
                        Body::TooLarge
                    } else {
                        Body::Complete(body.to_vec())
                    };
                    bodies.insert(uid, body);
                }
            }
            Ok(bodies)
        })
        .await?;
        uids.iter()
            .map(|uid| match bodies.remove(&uid.0) {
                Some(body) => Ok((*uid, body)),
                None => Err(ImapError::Unexpected {
                    operation: "UID FETCH body",
                    detail: format!("the server returned no body for UID {uid}"),
                }),
            })
            .collect()
    }

    /// The header fields that identify a message, without its body: what is recorded for mail
    /// that is too large to download.
    pub async fn fetch_identifying_headers(&mut self, uid: Uid) -> Result<Vec<u8>, ImapError> {
        let header = within(self.command_timeout, "UID FETCH header", async {
            let stream = self
                .session
                .uid_fetch(
                    uid.to_string(),
                    "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM SUBJECT DATE RETURN-PATH REPLY-TO AUTO-SUBMITTED PRECEDENCE LIST-ID X-LOOP)])",
                )
                .await
                .map_err(protocol("UID FETCH header"))?;
            let fetches: Vec<_> = stream
                .try_collect()
                .await
                .map_err(protocol("UID FETCH header"))?;
            Ok(fetches
                .iter()
                .find(|f| f.uid == Some(uid.0))
                .and_then(|f| f.header().map(<[u8]>::to_vec)))
        })
        .await?;
        header.ok_or_else(|| ImapError::Unexpected {
            operation: "UID FETCH header",
            detail: format!("the server returned no header for UID {uid}"),
        })
    }

    /// Sets `\Seen` on `uids`.
    pub async fn mark_seen(&mut self, uids: &[Uid]) -> Result<(), ImapError> {
        self.checked(
            "UID STORE",
            format!("UID STORE {} +FLAGS.SILENT (\\Seen)", uid_set(uids)),
        )
        .await
    }

    /// Moves `uids` to `folder`: `UID MOVE` (RFC 6851) where offered, else COPY, `\Deleted` and
    /// `UID EXPUNGE` (RFC 4315) or, without UIDPLUS, leaves the originals flagged `\Deleted` for the
    /// next EXPUNGE (a plain EXPUNGE could remove other clients' deleted mail).
    pub async fn move_to(&mut self, uids: &[Uid], folder: &str) -> Result<(), ImapError> {
        let set = uid_set(uids);
        let target = quoted(folder);
        if self.has_capability("MOVE") {
            return self
                .checked("UID MOVE", format!("UID MOVE {set} {target}"))
                .await;
        }
        self.checked("UID COPY", format!("UID COPY {set} {target}"))
            .await?;
        self.delete(uids).await
    }

    /// Flags `uids` `\Deleted` and expunges exactly those (UIDPLUS); without UIDPLUS they stay
    /// flagged, for the same reason as in [`Connection::move_to`].
    pub async fn delete(&mut self, uids: &[Uid]) -> Result<(), ImapError> {
        let set = uid_set(uids);
        self.checked(
            "UID STORE",
            format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
        )
        .await?;
        if self.has_capability("UIDPLUS") {
            self.checked("UID EXPUNGE", format!("UID EXPUNGE {set}"))
                .await?;
        }
        Ok(())
    }

    /// Waits in IDLE (RFC 2177) until the server reports a change, `max_wait` passes, or `shutdown`
    /// is cancelled; then ends IDLE and hands the connection back. async-imap restarts its own
    /// timeout on every server line (keepalives), so the wall-clock limit is enforced here; and
    /// it reports a dropped connection as an interrupt, which is an error here since we never
    /// interrupt it ourselves.
    pub async fn idle(
        self,
        max_wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Connection, IdleOutcome), ImapError> {
        use async_imap::extensions::idle::IdleResponse;
        let Connection {
            session,
            login,
            capabilities,
            command_timeout,
        } = self;
        let mut handle = session.idle();
        within(command_timeout, "IDLE", async {
            handle.init().await.map_err(protocol("IDLE"))
        })
        .await?;
        let outcome = {
            let (wait, _interrupt) = handle.wait_with_timeout(max_wait);
            tokio::select! {
                result = tokio::time::timeout(max_wait, wait) => match result {
                    Err(_) | Ok(Ok(IdleResponse::Timeout)) => IdleOutcome::Timeout,
                    Ok(Ok(IdleResponse::NewData(_))) => IdleOutcome::Changed,
                    Ok(Ok(IdleResponse::ManualInterrupt)) => {
                        return Err(ImapError::Unexpected {
                            operation: "IDLE",
                            detail: "the connection was lost while idling".into(),
                        });
                    }
                    Ok(Err(source)) => return Err(ImapError::Protocol { operation: "IDLE", source }),
                },
                _ = shutdown.cancelled() => IdleOutcome::Shutdown,
            }
        };
        let session = within(command_timeout, "IDLE DONE", async {
            handle.done().await.map_err(protocol("IDLE DONE"))
        })
        .await?;
        Ok((
            Connection {
                session,
                login,
                capabilities,
                command_timeout,
            },
            outcome,
        ))
    }

    /// Creates `folder` unless it exists (`[ALREADYEXISTS]`, RFC 5530, or present in LIST).
    pub async fn ensure_folder(&mut self, folder: &str) -> Result<(), ImapError> {
        if self.folder_exists(folder).await? {
            return Ok(());
        }
        match self
            .checked("CREATE", format!("CREATE {}", quoted(folder)))
            .await
        {
            Ok(()) => Ok(()),
            // Created concurrently by someone else: fine.
            Err(ImapError::Protocol {
                source: async_imap::error::Error::No(text),
                ..
            }) if text.contains("AlreadyExists")
                || text.to_ascii_uppercase().contains("ALREADYEXISTS") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `folder` exists (LIST), without creating it.
    pub async fn folder_exists(&mut self, folder: &str) -> Result<bool, ImapError> {
        let encoded = encode_folder_name(folder);
        within(self.command_timeout, "LIST", async {
            let stream = self
                .session
                .list(Some(""), Some(&encoded))
                .await
                .map_err(protocol("LIST"))?;
            let names: Vec<_> = stream.try_collect().await.map_err(protocol("LIST"))?;
            Ok(names.iter().any(|n| n.name() == encoded))
        })
        .await
    }

    /// The number of messages in `folder` (STATUS MESSAGES), without selecting it.
    pub async fn message_count(&mut self, folder: &str) -> Result<u32, ImapError> {
        let encoded = encode_folder_name(folder);
        let status = within(self.command_timeout, "STATUS", async {
            self.session
                .status(&encoded, "(MESSAGES)")
                .await
                .map_err(protocol("STATUS"))
        })
        .await?;
        while self.session.unsolicited_responses.try_recv().is_ok() {}
        Ok(status.exists)
    }

    /// Sends a command whose answer carries no data we need, and checks its tagged status.
    async fn checked(&mut self, operation: &'static str, command: String) -> Result<(), ImapError> {
        within(self.command_timeout, operation, async {
            self.session
                .run_command_and_check_ok(&command)
                .await
                .map_err(protocol(operation))
        })
        .await?;
        // Unsolicited EXPUNGE/EXISTS responses are informational here; drain them so the library's
        // bounded channel never fills.
        while self.session.unsolicited_responses.try_recv().is_ok() {}
        Ok(())
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
    fn uid_sets_are_compact() {
        let uids = |v: &[u32]| v.iter().map(|u| Uid(*u)).collect::<Vec<_>>();
        assert_eq!(uid_set(&uids(&[1])), "1");
        assert_eq!(uid_set(&uids(&[3, 1, 2, 7, 9, 10, 10])), "1:3,7,9:10");
    }

    #[test]
    fn folder_names_are_quoted_and_escaped() {
        assert_eq!(quoted("Processed"), "\"Processed\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
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
