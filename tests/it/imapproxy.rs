//! A TLS-terminating IMAP proxy of the tests' own, between mailintake and the stack's Dovecot: it
//! forwards every byte both ways and can hide a UID from the server's `* SEARCH` answers, as a
//! server does that makes a message visible late (Exchange, a replica catching up). It speaks
//! implicit TLS with the stack's certificate on a loopback port and implicit TLS to Dovecot.
//!
//! Server-to-client traffic is read line by line; literals (`{n}` at a line's end) are passed on
//! as counted bytes, so a message body can never be mistaken for a response.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::Stack;

#[derive(Default)]
struct Rules {
    /// Hide this UID from the next `hide_times` `* SEARCH` answers.
    hide_uid: Option<u32>,
    hide_times: usize,
    /// How many answers had it removed.
    hidden: usize,
    /// Every command line the client sent that contains SEARCH, in order.
    searches: Vec<String>,
}

pub struct ImapProxy {
    pub port: u16,
    rules: Arc<Mutex<Rules>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImapProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImapProxy {
    /// Starts a proxy in front of the stack's IMAPS port.
    pub async fn start() -> ImapProxy {
        let stack = Stack::get();
        let dir = stack.var("MAILSTACK_DIR");
        let cert = std::fs::read(format!("{dir}/tls/server.pem")).unwrap();
        let key = std::fs::read(format!("{dir}/tls/server.key")).unwrap();
        let identity = native_tls::Identity::from_pkcs8(&cert, &key).unwrap();
        let acceptor =
            async_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
        let ca =
            native_tls::Certificate::from_pem(&std::fs::read(stack.ca_file()).unwrap()).unwrap();
        let upstream_port = stack.port("MAILSTACK_IMAPS_PORT");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules = Arc::new(Mutex::new(Rules::default()));
        let shared = rules.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let ca = ca.clone();
                let rules = shared.clone();
                tokio::spawn(async move {
                    let Ok(client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(tcp) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let connector = async_native_tls::TlsConnector::new().add_root_certificate(ca);
                    let Ok(server) = connector.connect("localhost", tcp).await else {
                        return;
                    };
                    relay(client, server, rules).await;
                });
            }
        });
        ImapProxy { port, rules, task }
    }

    /// Hides `uid` from the next `times` `* SEARCH` answers (it stays in the folder and in every
    /// other answer).
    pub fn hide_from_searches(&self, uid: u32, times: usize) {
        let mut rules = self.rules.lock().unwrap();
        rules.hide_uid = Some(uid);
        rules.hide_times = times;
    }

    /// How many `* SEARCH` answers had the UID removed.
    pub fn hidden(&self) -> usize {
        self.rules.lock().unwrap().hidden
    }

    /// The SEARCH commands the client sent so far.
    pub fn searches(&self) -> Vec<String> {
        self.rules.lock().unwrap().searches.clone()
    }
}

type Tls = async_native_tls::TlsStream<TcpStream>;

async fn relay(client: Tls, server: Tls, rules: Arc<Mutex<Rules>>) {
    let (client_read, mut client_write) = tokio::io::split(client);
    let (server_read, mut server_write) = tokio::io::split(server);
    let upward_rules = rules.clone();
    let upward = async move {
        let mut from_client = BufReader::new(client_read);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from_client.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            if text.to_ascii_uppercase().contains("SEARCH") {
                upward_rules
                    .lock()
                    .unwrap()
                    .searches
                    .push(text.trim_end().to_string());
            }
            if server_write.write_all(&line).await.is_err() {
                break;
            }
            // A literal the client sends (an APPEND) follows its line as counted bytes.
            if let Some(n) = literal_length(&line)
                && copy_exactly(&mut from_client, &mut server_write, n)
                    .await
                    .is_err()
            {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downward = async move {
        let mut from_server = BufReader::new(server_read);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from_server.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.starts_with(b"* SEARCH") {
                line = rewrite_search(&line, &rules);
            }
            if client_write.write_all(&line).await.is_err() {
                break;
            }
            if let Some(n) = literal_length(&line)
                && copy_exactly(&mut from_server, &mut client_write, n)
                    .await
                    .is_err()
            {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upward, downward);
}

/// `* SEARCH 1 2 3` without the hidden UID, while the rule lasts.
fn rewrite_search(line: &[u8], rules: &Mutex<Rules>) -> Vec<u8> {
    let mut rules = rules.lock().unwrap();
    let Some(hide) = rules.hide_uid.filter(|_| rules.hide_times > 0) else {
        return line.to_vec();
    };
    let text = String::from_utf8_lossy(line);
    let hide = hide.to_string();
    let words: Vec<&str> = text.trim_end().split(' ').collect();
    if !words[2..].contains(&hide.as_str()) {
        return line.to_vec();
    }
    rules.hide_times -= 1;
    rules.hidden += 1;
    let kept: Vec<&str> = words.into_iter().filter(|w| *w != hide).collect();
    format!("{}\r\n", kept.join(" ")).into_bytes()
}

/// The length of the literal a line announces at its end (`{n}` or `{n+}` before CRLF).
fn literal_length(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let inner = text.strip_suffix('}')?;
    let start = inner.rfind('{')?;
    inner[start + 1..].trim_end_matches('+').parse().ok()
}

async fn copy_exactly<R, W>(from: &mut R, to: &mut W, n: u64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(&mut from.take(n), to).await?;
    if copied == n {
        Ok(())
    } else {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

#[test]
fn literals_and_searches_are_recognised() {
    assert_eq!(
        literal_length(b"* 1 FETCH (UID 5 BODY[] {42}\r\n"),
        Some(42)
    );
    assert_eq!(literal_length(b"A1 APPEND INBOX {310+}\r\n"), Some(310));
    assert_eq!(
        literal_length(b"* 1 FETCH (UID 5 FLAGS (\\Seen))\r\n"),
        None
    );
    let rules = Mutex::new(Rules {
        hide_uid: Some(2),
        hide_times: 1,
        ..Rules::default()
    });
    assert_eq!(
        rewrite_search(b"* SEARCH 1 2 3\r\n", &rules),
        b"* SEARCH 1 3\r\n"
    );
    assert_eq!(
        rewrite_search(b"* SEARCH 1 2 3\r\n", &rules),
        b"* SEARCH 1 2 3\r\n"
    );
    assert_eq!(rules.lock().unwrap().hidden, 1);
}
