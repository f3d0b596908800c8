//! Test support: the local mail stack (started by `scripts/mailstack.sh up`), a fresh database per
//! test (SQLite file or PostgreSQL database), an in-process fake Entra ID per test that signs with
//! the stack's key (so the stack's Dovecot accepts its tokens), mail delivery over LMTP or through
//! the stack's MX (which stamps Authentication-Results), and the real `mailintake` binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fake_entra::{Client, FakeEntra, SigningKey};
use sqlx::{AnyPool, Row};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const TENANT_ID: &str = "8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10";
pub const IMAP_ROLES: &[&str] = &["IMAP.AccessAsApp", "SMTP.SendAsApp"];

/// The running local mail stack, as described by the env file `mailstack.sh up` writes.
pub struct Stack {
    pub vars: HashMap<String, String>,
}

impl Stack {
    pub fn get() -> &'static Stack {
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| {
            let dir = std::env::var("MAILSTACK_DIR").unwrap_or_else(|_| {
                let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
                format!("{tmp}/mailintake-mailstack")
            });
            let env_file = Path::new(&dir).join("env");
            let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
                panic!(
                    "the local mail stack is not running ({}: {e}). Start it with `scripts/mailstack.sh up`, \
                     or run the whole suite with `scripts/test.sh`.",
                    env_file.display()
                )
            });
            let vars = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            Stack { vars }
        })
    }

    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| {
            panic!(
                "{key} missing from the mail stack's env file (written by an older \
                     scripts/mailstack.sh: run `scripts/mailstack.sh up` again)"
            )
        })
    }

    pub fn port(&self, key: &str) -> u16 {
        self.var(key).parse().expect("port number")
    }

    pub fn ca_file(&self) -> &str {
        self.var("MAILSTACK_CA")
    }

    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_pem_file(self.var("MAILSTACK_ENTRA_KEY")).expect("stack signing key")
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{n}x{nanos:x}", std::process::id())
}

/// A test mailbox address on the stack's domain, unique to the test.
pub fn unique_mailbox() -> String {
    format!("{}@helpdesk.test", unique("it"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/mailintake.db", dir.path().display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = std::env::var("MAILINTAKE_TEST_POSTGRES")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                sqlx::any::install_default_drivers();
                let pool = AnyPool::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} is needed by this test and did not answer: {e}")
                });
                let name = unique("it_");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let (base, _) = admin.rsplit_once('/').unwrap();
                TestDb {
                    url: format!("{base}/{name}"),
                    backend,
                    _dir: None,
                }
            }
        }
    }

    /// A database the caller made itself (a private server, a file on a special filesystem).
    pub fn at(url: String, backend: Backend) -> TestDb {
        TestDb {
            url,
            backend,
            _dir: None,
        }
    }

    pub async fn pool(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = if self.backend == Backend::Sqlite {
            format!("{}?mode=rw", self.url)
        } else {
            self.url.clone()
        };
        AnyPool::connect(&url).await.unwrap()
    }

    /// Like [`TestDb::count`], but 0 while the database or its tables do not exist yet.
    pub async fn count_or_zero(&self, sql: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let url = match self.backend {
            Backend::Sqlite => format!("{}?mode=rw", self.url),
            Backend::Postgres => self.url.clone(),
        };
        let Ok(pool) = AnyPool::connect(&url).await else {
            return 0;
        };
        let n: Result<(i64,), _> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await;
        pool.close().await;
        n.map(|(n,)| n).unwrap_or(0)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.pool().await;
        let n: i64 = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        pool.close().await;
        n
    }
}

/// An in-process fake Entra ID with one confidential client that may use `mailboxes`.
pub struct Entra {
    pub fake: FakeEntra,
    pub client_id: String,
    pub secret: String,
}

impl Entra {
    pub async fn start(mailboxes: &[&str]) -> Entra {
        Entra::start_with_lifetime(mailboxes, Duration::from_secs(3599)).await
    }

    /// Like [`Entra::start`], with access tokens that live `lifetime`.
    pub async fn start_with_lifetime(mailboxes: &[&str], lifetime: Duration) -> Entra {
        Entra::start_with(mailboxes, lifetime, IMAP_ROLES).await
    }

    /// Like [`Entra::start`], with tokens that live `lifetime` and carry only `roles`.
    pub async fn start_with(mailboxes: &[&str], lifetime: Duration, roles: &[&str]) -> Entra {
        Entra::start_for(None, mailboxes, lifetime, roles).await
    }

    /// A fake Entra whose tokens are for `resource` (Microsoft Graph, say; Exchange Online's
    /// when `None`), with `roles` granted to its confidential client.
    pub async fn start_for(
        resource: Option<&str>,
        mailboxes: &[&str],
        lifetime: Duration,
        roles: &[&str],
    ) -> Entra {
        // A GUID-shaped Application (client) ID, unique to this test.
        let hex = mailintake::ingest::sha256_hex(unique("client").as_bytes());
        let client_id = format!(
            "{}-{}-4{}-8{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        );
        let secret = unique("secret-");
        let mut config = fake_entra::Config::new(TENANT_ID, &["helpdesk.test"]).with_client(
            Client::confidential(&client_id, "mailintake tests", &secret)
                .with_app_roles(roles)
                .with_mailboxes(mailboxes),
        );
        config.token_lifetime = lifetime;
        if let Some(resource) = resource {
            config.resource = resource.to_string();
        }
        let fake = FakeEntra::start(
            config,
            Stack::get().signing_key(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("fake Entra starts");
        Entra {
            fake,
            client_id,
            secret,
        }
    }
}

/// The pieces of a mailintake config file that tests vary.
pub struct ConfigSpec<'a> {
    pub db: &'a TestDb,
    pub entra: &'a Entra,
    /// The secret as mailintake will send it (the env var holds this).
    pub secret_env: &'a str,
    pub mailbox: &'a str,
    pub extra_mailbox_keys: &'a str,
    pub tls: &'a str,
}

impl ConfigSpec<'_> {
    pub fn render(&self) -> String {
        let stack = Stack::get();
        let port = match self.tls {
            "starttls" => stack.port("MAILSTACK_IMAP_PORT"),
            _ => stack.port("MAILSTACK_IMAPS_PORT"),
        };
        // "nomove": implicit TLS on the stack's second address, which advertises no MOVE;
        // "fetch-no": on its third, which answers a FETCH of a message it cannot read with NO.
        let (host, tls) = match self.tls {
            "nomove" => (stack.var("MAILSTACK_IMAPS_NOMOVE_HOST"), "implicit"),
            "fetch-no" => (stack.var("MAILSTACK_IMAPS_FETCH_NO_HOST"), "implicit"),
            other => ("localhost", other),
        };
        format!(
            r#"
[database]
url = "{db}"

[identities.test]
flow = "client_credentials"
tenant = "{tenant}"
client_id = "{client_id}"
client_secret = {{ env = "{secret_env}" }}
authority = "{authority}"

[[mailboxes]]
name = "support"
address = "{mailbox}"
identity = "test"
{poll}
{extra}

[mailboxes.imap]
host = "{host}"
port = {port}
tls = "{tls}"
ca_file = "{ca}"
"#,
            db = self.db.url,
            tenant = TENANT_ID,
            client_id = self.entra.client_id,
            secret_env = self.secret_env,
            authority = self.entra.fake.authority(),
            mailbox = self.mailbox,
            extra = self.extra_mailbox_keys,
            poll = if self.extra_mailbox_keys.contains("poll_interval") {
                ""
            } else {
                "poll_interval = \"1s\""
            },
            port = port,
            host = host,
            tls = tls,
            ca = stack.ca_file(),
        )
    }
}

/// A config file in a temporary folder, kept as long as the value lives.
pub struct ConfigFile {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConfigFile {
    pub fn write(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailintake.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile { path, _dir: dir }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mailintake")
}

/// Runs `mailintake <args>` to completion (at most 120 s) and returns its output.
pub async fn mailintake(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("mailintake finished within 120 s")
        .expect("mailintake runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `authserv-id` of the receiving server's stamp: the stack's MX writes it ([`deliver_mx`],
/// `MAILSTACK_AUTHSERV_ID`), and LMTP deliveries fake it ([`deliver_lmtp`]), standing in for a
/// receiving server that checked the sender and prepended its own `Authentication-Results`
/// (RFC 8601). Mailboxes with [`smtp_keys`] trust it (`acknowledge.authserv_id`).
pub const STACK_AUTHSERV_ID: &str = "mx.mailstack.test";

/// The stamp the receiving server would prepend for mail from envelope sender `sender` that
/// passed SPF (for the null sender: the HELO name's check).
pub fn stack_stamp(sender: &str) -> String {
    if sender.is_empty() {
        format!("Authentication-Results: {STACK_AUTHSERV_ID}; spf=pass smtp.helo=tests.local\r\n")
    } else {
        format!(
            "Authentication-Results: {STACK_AUTHSERV_ID};\r\n\tspf=pass (test delivery) smtp.mailfrom={sender}\r\n"
        )
    }
}

/// The Maildir file of the message with `message_id` (in `new/` or, once Dovecot has seen it,
/// `cur/`), found by its content (root reads it whatever its mode).
pub fn maildir_file_of(mailbox: &str, message_id: &str) -> PathBuf {
    let (local, domain) = mailbox.split_once('@').unwrap();
    let dir = PathBuf::from(Stack::get().var("MAILSTACK_MAIL_ROOT"))
        .join(domain)
        .join(local);
    let needle = format!("Message-ID: <{message_id}>");
    ["new", "cur"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).into_iter().flatten())
        .map(|entry| entry.unwrap().path())
        .find(|path| std::fs::read(path).is_ok_and(|raw| text(&raw).contains(&needle)))
        .unwrap_or_else(|| panic!("no Maildir file holds {message_id}"))
}

/// Sets a file's mode (Dovecot reads mail as its own user: 0 makes a message unreadable to it).
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Delivers `raw` to `recipient` through Dovecot's LMTP listener (RFC 2033), with the receiving
/// server's stamp on top ([`stack_stamp`]: the sender passed SPF).
pub async fn deliver_lmtp(recipient: &str, sender: &str, raw: &[u8]) {
    deliver_lmtp_to(
        Stack::get().port("MAILSTACK_LMTP_PORT"),
        recipient,
        sender,
        raw,
    )
    .await;
}

/// Delivers `raw` as it is, without the receiving server's stamp: mail whose sender nobody
/// checked (or with only the `Authentication-Results` it brought along).
pub async fn deliver_lmtp_unstamped(recipient: &str, sender: &str, raw: &[u8]) {
    deliver_lmtp_raw(
        Stack::get().port("MAILSTACK_LMTP_PORT"),
        recipient,
        sender,
        raw,
    )
    .await;
}

/// Delivers `raw` to `recipient` through the LMTP listener on 127.0.0.1:`port`, stamped like
/// [`deliver_lmtp`].
pub async fn deliver_lmtp_to(port: u16, recipient: &str, sender: &str, raw: &[u8]) {
    let mut stamped = stack_stamp(sender).into_bytes();
    stamped.extend_from_slice(raw);
    deliver_lmtp_raw(port, recipient, sender, &stamped).await;
}

/// Delivers `raw` byte for byte (dot-stuffed) over LMTP on 127.0.0.1:`port`.
pub async fn deliver_lmtp_raw(port: u16, recipient: &str, sender: &str, raw: &[u8]) {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("LMTP connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    async fn reply(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, expect: &str) {
        loop {
            let mut line = String::new();
            lines.read_line(&mut line).await.expect("LMTP read");
            assert!(
                line.starts_with(expect),
                "LMTP: expected {expect}, got {line:?}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }
    reply(&mut lines, "220").await;
    let mut send = async |command: String, expect: &str| {
        write.write_all(command.as_bytes()).await.unwrap();
        reply(&mut lines, expect).await;
    };
    send("LHLO tests.local\r\n".into(), "250").await;
    send(format!("MAIL FROM:<{sender}>\r\n"), "250").await;
    send(format!("RCPT TO:<{recipient}>\r\n"), "250").await;
    send("DATA\r\n".into(), "354").await;
    let mut data = Vec::with_capacity(raw.len() + 16);
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    send(String::from_utf8_lossy(&data).into_owned(), "250").await;
    send("QUIT\r\n".into(), "221").await;
}

/// Delivers `raw` to `recipient` through the stack's MX (`MAILSTACK_MX_PORT`: Postfix's inbound
/// smtpd, no AUTH, with OpenDKIM as milter), as mail from outside arrives at a domain: the MX
/// stamps it with its own `Authentication-Results` ([`STACK_AUTHSERV_ID`]; `dkim=pass` only for
/// a signature that verifies, [`sign_dkim`]) and removes copies the sender wrote that claim that
/// id. An empty `envelope_from` is the null sender. Returns once Postfix has handed the message
/// to Dovecot (the MX only queues it): its maillog says `status=sent` for the queue id.
pub async fn deliver_mx(recipient: &str, envelope_from: &str, raw: &[u8]) {
    use lettre::address::Envelope;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let stack = Stack::get();
    assert_eq!(stack.var("MAILSTACK_AUTHSERV_ID"), STACK_AUTHSERV_ID);
    let maillog = Path::new(stack.var("MAILSTACK_DIR")).join("postfix/maillog");
    let logged_before = std::fs::metadata(&maillog).map_or(0, |m| m.len());
    let sender =
        (!envelope_from.is_empty()).then(|| envelope_from.parse().expect("envelope sender"));
    let envelope =
        Envelope::new(sender, vec![recipient.parse().expect("recipient")]).expect("envelope");
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(stack.port("MAILSTACK_MX_PORT"))
        .build();
    let response = transport
        .send_raw(&envelope, raw)
        .await
        .unwrap_or_else(|e| panic!("the MX refused the message for {recipient}: {e}"));
    // "250 2.0.0 Ok: queued as 3F1C298C27D"
    let said: Vec<&str> = response.message().collect();
    let queue_id = said
        .first()
        .and_then(|line| line.rsplit_once("queued as "))
        .map(|(_, id)| id.trim().to_string())
        .unwrap_or_else(|| panic!("the MX did not say a queue id: {said:?}"));
    let delivered_line = format!("{queue_id}: to=<{recipient}>");
    let mut outcome = String::new();
    let done = eventually(Duration::from_secs(30), || {
        let line = std::fs::read(&maillog).ok().and_then(|log| {
            let new = log.get(logged_before as usize..).unwrap_or_default();
            text(new)
                .lines()
                .find(|line| line.contains(&delivered_line) && line.contains("status="))
                .map(str::to_string)
        });
        if let Some(line) = line {
            outcome = line;
        }
        let found = !outcome.is_empty();
        async move { found }
    })
    .await;
    assert!(
        done,
        "the MX queued {queue_id} for {recipient} but did not deliver it within 30 s ({})",
        maillog.display()
    );
    assert!(
        outcome.contains("status=sent"),
        "the MX did not deliver {queue_id}: {outcome}"
    );
}

/// `raw` signed with the stack's DKIM key for `customer.test` (`MAILSTACK_DKIM_KEY`, selector
/// `MAILSTACK_DKIM_SELECTOR`), relaxed/relaxed, by python3-dkim's `dkimsign`: a DKIM
/// implementation independent of the OpenDKIM that verifies it at the MX. The signature covers
/// From, To, Subject, Date, Message-ID and the MIME headers; headers added above it later are
/// not signed.
pub fn sign_dkim(raw: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let stack = Stack::get();
    let mut child = Command::new("dkimsign")
        .args([
            "--hcanon",
            "relaxed",
            "--bcanon",
            "relaxed",
            stack.var("MAILSTACK_DKIM_SELECTOR"),
            stack.var("MAILSTACK_DKIM_DOMAIN"),
            stack.var("MAILSTACK_DKIM_KEY"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "dkimsign runs (Debian package python3-dkim, installed by scripts/mailstack.sh up)",
        );
    // dkimsign reads all of stdin before it writes anything.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw)
        .expect("dkimsign reads the message");
    let out = child.wait_with_output().expect("dkimsign ends");
    assert!(
        out.status.success() && out.stdout.starts_with(b"DKIM-Signature:"),
        "dkimsign failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out.stdout
}

/// A fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A fixture with its Message-ID made unique, so tests never share one.
pub fn unique_fixture(name: &str) -> (Vec<u8>, String) {
    let raw = text(&fixture(name));
    let id = format!("{}@customer.test", unique("m"));
    let raw = match raw.find("Message-ID: <") {
        Some(start) => {
            let end = start + raw[start..].find('>').unwrap() + 1;
            format!("{}Message-ID: <{id}>{}", &raw[..start], &raw[end..])
        }
        None => raw,
    };
    (raw.into_bytes(), id)
}

/// Polls `check` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A raw message of about `size` bytes with a unique Message-ID.
pub fn large_message(to: &str, size: usize) -> (Vec<u8>, String) {
    let id = format!("{}@customer.test", unique("big"));
    let mut raw = format!(
        "From: Big Sender <big@customer.test>\r\nTo: {to}\r\nSubject: A very large log file\r\n\
         Date: Tue, 24 Nov 2026 14:00:00 +0000\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    while raw.len() < size {
        raw.push_str(line);
    }
    (raw.into_bytes(), id)
}

/// An IMAP session as the test's client, for checking what mailintake did on the server.
pub async fn imap_session(entra: &Entra, mailbox: &str) -> mailintake::imap::Connection {
    use mailintake::config::{ImapEndpoint, Timeouts, TlsMode};
    let stack = Stack::get();
    let token = entra
        .fake
        .issue_access_token(
            fake_entra::AccessTokenSpec::app(&entra.client_id)
                .with_permissions(IMAP_ROLES)
                .with_mailboxes(&[mailbox]),
        )
        .expect("token");
    let token = mailintake::oauth::AccessToken {
        secret: token.into(),
        renew_at: Instant::now() + Duration::from_secs(600),
        expires_in: Duration::from_secs(3600),
        expires_at: Instant::now() + Duration::from_secs(3600),
    };
    let endpoint = ImapEndpoint {
        host: "localhost".into(),
        port: stack.port("MAILSTACK_IMAPS_PORT"),
        tls: TlsMode::Implicit,
        ca_file: Some(stack.ca_file().into()),
        timeouts: Timeouts {
            connect: Duration::from_secs(10),
            command: Duration::from_secs(30),
        },
        logins_per_second: 10,
    };
    mailintake::imap::connect(&endpoint, mailbox, &token)
        .await
        .expect("test IMAP login")
}

/// The messages in `folder` of `mailbox`: (UID, seen).
pub async fn folder_contents(entra: &Entra, mailbox: &str, folder: &str) -> Vec<(u32, bool)> {
    let mut conn = imap_session(entra, mailbox).await;
    let listed = match conn.select(folder).await {
        Ok(_) => conn.list_above(0).await.expect("list"),
        Err(_) => Vec::new(),
    };
    conn.logout().await;
    listed.iter().map(|m| (m.uid.0, m.seen)).collect()
}

/// One test's world: a mailbox of its own, a fake Entra that lets it in, a fresh database, and a
/// config file for `mailintake` pointing at all three.
pub struct Case {
    pub db: TestDb,
    pub entra: Entra,
    pub mailbox: String,
    pub config: ConfigFile,
    pub secret_var: String,
}

impl Case {
    pub async fn new(backend: Backend, extra_mailbox_keys: &str, tls: &str) -> Case {
        Case::with_token_lifetime(backend, extra_mailbox_keys, tls, Duration::from_secs(3599)).await
    }

    /// Like [`Case::new`], with access tokens that live `lifetime`.
    pub async fn with_token_lifetime(
        backend: Backend,
        extra_mailbox_keys: &str,
        tls: &str,
        lifetime: Duration,
    ) -> Case {
        let mailbox = unique_mailbox();
        let entra = Entra::start_with_lifetime(&[&mailbox], lifetime).await;
        Case::build(backend, extra_mailbox_keys, tls, mailbox, entra).await
    }

    /// A case for `mailbox`, with a fake Entra of the caller's making.
    pub async fn build(
        backend: Backend,
        extra_mailbox_keys: &str,
        tls: &str,
        mailbox: String,
        entra: Entra,
    ) -> Case {
        Case::on(
            TestDb::new(backend).await,
            extra_mailbox_keys,
            tls,
            mailbox,
            entra,
        )
    }

    /// A case with a mailbox of its own and a fake Entra that lets it in, on the caller's database.
    pub async fn with_db(db: TestDb, extra_mailbox_keys: &str, tls: &str) -> Case {
        let mailbox = unique_mailbox();
        let entra = Entra::start(&[&mailbox]).await;
        Case::on(db, extra_mailbox_keys, tls, mailbox, entra)
    }

    fn on(db: TestDb, extra_mailbox_keys: &str, tls: &str, mailbox: String, entra: Entra) -> Case {
        let secret_var = "IT_CLIENT_SECRET".to_string();
        let config = ConfigFile::write(
            &ConfigSpec {
                db: &db,
                entra: &entra,
                secret_env: &secret_var,
                mailbox: &mailbox,
                extra_mailbox_keys,
                tls,
            }
            .render(),
        );
        Case {
            db,
            entra,
            mailbox,
            config,
            secret_var,
        }
    }

    /// Runs `mailintake <args>` to completion.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        mailintake(
            &self.config.path,
            args,
            &[(&self.secret_var, &self.entra.secret)],
        )
        .await
    }

    /// Runs `mailintake <args>` with extra environment variables.
    pub async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all: Vec<(&str, &str)> = vec![(&self.secret_var, &self.entra.secret)];
        all.extend_from_slice(env);
        mailintake(&self.config.path, args, &all).await
    }

    /// Starts `mailintake run` in the background (killed when the handle is dropped). Its log goes
    /// to a file beside the config, read back by [`terminate`].
    pub fn spawn_run(&self) -> Running {
        self.spawn_run_with(&[])
    }

    /// Like [`Case::spawn_run`], with extra environment variables.
    pub fn spawn_run_with(&self, env: &[(&str, &str)]) -> Running {
        self.spawn_with(&["run"], env)
    }

    /// Starts `mailintake <args>` in the background (killed when the handle is dropped), with
    /// extra environment variables; its stderr goes to a file read by [`Running::log`].
    pub fn spawn_with(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        let log = self.config.path.with_file_name("run.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&self.config.path)
            .args(args)
            .env(&self.secret_var, &self.entra.secret)
            .env("RUST_LOG", "mailintake=debug")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("mailintake run starts");
        Running { child, log }
    }

    /// Waits until `sql` (a COUNT) is at least `expected`, for at most `limit`.
    pub async fn wait_for_count(&self, sql: &str, expected: i64, limit: Duration) -> bool {
        sqlx::any::install_default_drivers();
        let url = match self.db.backend {
            Backend::Sqlite => format!("{}?mode=rw", self.db.url),
            Backend::Postgres => self.db.url.clone(),
        };
        eventually(limit, || async {
            // Before the worker has created the database there is nothing to count.
            let Ok(pool) = sqlx::AnyPool::connect(&url).await else {
                return false;
            };
            let n: Result<(i64,), _> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(&pool)
                .await;
            pool.close().await;
            matches!(n, Ok((n,)) if n >= expected)
        })
        .await
    }
}

/// A `mailintake run` in the background.
pub struct Running {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Running {
    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Stops a running `mailintake run` with SIGTERM and returns its exit status and log.
pub async fn terminate(
    mut running: Running,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let pid = running.child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(limit, running.child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "mailintake did not stop within {limit:?} of SIGTERM: {}",
                running.log()
            )
        })
        .expect("wait");
    (status, running.log())
}

/// Runs `doveadm` against the stack's Dovecot.
pub fn doveadm(args: &[&str]) -> String {
    doveadm_with_input(args, b"")
}

/// Runs `doveadm` against the Dovecot of the stack in `dir`.
pub fn doveadm_at(dir: &Path, args: &[&str]) -> String {
    run_doveadm(&dir.join("dovecot/dovecot.conf"), args, b"")
}

/// Runs `doveadm` against the stack's Dovecot with `input` on its standard input.
pub fn doveadm_with_input(args: &[&str], input: &[u8]) -> String {
    let conf = PathBuf::from(format!(
        "{}/dovecot/dovecot.conf",
        Stack::get().var("MAILSTACK_DIR")
    ));
    run_doveadm(&conf, args, input)
}

fn run_doveadm(conf: &Path, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("doveadm")
        .arg("-c")
        .arg(conf)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("doveadm runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().expect("doveadm finishes");
    assert!(
        out.status.success(),
        "doveadm {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The bytes Dovecot sent in each finished IMAP session of `user` (its logout lines' `out=`), once
/// at least `sessions` have finished (waits up to 10 s).
pub async fn dovecot_bytes_out(user: &str, sessions: usize) -> Vec<u64> {
    let log = format!("{}/dovecot/dovecot.log", Stack::get().var("MAILSTACK_DIR"));
    let marker = format!("imap({user})");
    let read = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&marker) && l.contains("Disconnected"))
            .filter_map(|l| {
                let out = l.split_whitespace().find_map(|w| w.strip_prefix("out="))?;
                out.parse().ok()
            })
            .collect::<Vec<u64>>()
    };
    eventually(Duration::from_secs(10), || async {
        read().len() >= sessions
    })
    .await;
    read()
}

/// How the IMAP sessions of `user` ended, from Dovecot's log: the number of logins, and the
/// `Disconnected: …` line of each finished session (`Logged out` after a LOGOUT, `Connection
/// closed` when the client just went away), once every session that logged in has one (waits up
/// to 10 s).
pub async fn dovecot_session_ends(user: &str) -> (usize, Vec<String>) {
    let log = format!("{}/dovecot/dovecot.log", Stack::get().var("MAILSTACK_DIR"));
    let login = format!("Login: user=<{user}>");
    let marker = format!("imap({user})");
    let read = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let logins = text.lines().filter(|l| l.contains(&login)).count();
        let ends: Vec<String> = text
            .lines()
            .filter(|l| l.contains(&marker) && l.contains("Disconnected"))
            .map(String::from)
            .collect();
        (logins, ends)
    };
    eventually(Duration::from_secs(10), || async {
        let (logins, ends) = read();
        ends.len() >= logins
    })
    .await;
    read()
}

/// Mailbox keys that send acknowledgements through the stack's Postfix (STARTTLS + XOAUTH2),
/// trusting the stamp of the tests' deliveries ([`STACK_AUTHSERV_ID`]).
pub fn smtp_keys() -> String {
    smtp_keys_with_ack("")
}

/// Like [`smtp_keys`], with more `acknowledge` keys (`from = "…", since = "…"`).
pub fn smtp_keys_with_ack(ack_keys: &str) -> String {
    let stack = Stack::get();
    format!(
        "smtp = {{ host = \"localhost\", port = {}, tls = \"starttls\", ca_file = \"{}\" }}\n{}",
        stack.port("MAILSTACK_SUBMISSION_PORT"),
        stack.ca_file(),
        ack_keys_with(ack_keys)
    )
}

/// `acknowledge = { authserv_id = "<the stack's>", <ack_keys> }`.
pub fn ack_keys_with(ack_keys: &str) -> String {
    let more = if ack_keys.is_empty() {
        String::new()
    } else {
        format!(", {ack_keys}")
    };
    format!("acknowledge = {{ authserv_id = \"{STACK_AUTHSERV_ID}\"{more} }}")
}

/// The stdout of a `mailintake` run that must have succeeded (its stderr in the failure message).
pub fn assert_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "mailintake failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Waits for the next wall-clock second. INTERNALDATE has whole seconds, so mail delivered after
/// this is unambiguously newer than anything that happened before the call (e.g. a first
/// connection, which decides what counts as imported mail).
pub async fn next_second() {
    let now = mailintake::time::now_ms() / 1000;
    while mailintake::time::now_ms() / 1000 == now {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
