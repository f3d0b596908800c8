//! Each product's setup guide, as its admin pastes it (`tests/guides/*.toml`), run through `check`:
//! against the local stack with the Microsoft hosts pointed at it, and as written (real Microsoft
//! hosts) with no network at all (`unshare -n`). The output is compared with the files committed
//! beside each guide; `MAILINTAKE_BLESS_GUIDES=1` writes them instead (review the diff).

use std::path::{Path, PathBuf};
use std::process::Output;

use fake_entra::{Client, FakeEntra, User};

use crate::helpers::*;

const CLIENT_SECRET: &str = "guide-client-secret-value";
const USER_PASSWORD: &str = "guide-user-password-value";

fn guides_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guides")
}

/// What a guide's identity is, for the fake Entra that lets it in.
#[derive(Clone, Copy)]
enum App {
    /// A confidential client with IMAP.AccessAsApp and SMTP.SendAsApp, given the mailbox.
    AppOnly,
    /// A confidential client signing in the mailbox's own service account (delegated).
    ServiceAccount,
}

struct Guide {
    name: &'static str,
    client_id: &'static str,
    mailbox: &'static str,
    address: &'static str,
    app: App,
    /// The identity whose `consent-url` the guide hands out, if it does (run offline: it prints
    /// the real Microsoft URL and contacts nothing).
    consent: Option<&'static str>,
}

async fn fake_entra_for(guide: &Guide) -> FakeEntra {
    let client = Client::confidential(guide.client_id, guide.name, CLIENT_SECRET);
    let mut config = fake_entra::Config::new(TENANT_ID, &["helpdesk.test"]);
    config = match guide.app {
        App::AppOnly => config.with_client(
            client
                .with_app_roles(IMAP_ROLES)
                .with_mailboxes(&[guide.address]),
        ),
        App::ServiceAccount => config
            .with_client(client)
            .with_user(User::new(guide.address, USER_PASSWORD)),
    };
    FakeEntra::start(
        config,
        Stack::get().signing_key(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("fake Entra starts")
}

/// The guide's text for the local run: Microsoft's sign-in host is the fake (named as the
/// authority where the guide leaves it to the default), Exchange's IMAP and SMTP hosts are the
/// stack's Dovecot and Postfix. Panics if anything that could be contacted is left outside
/// loopback: this run has the machine's network.
fn localised(text: &str, entra: &FakeEntra) -> String {
    let local = localised_text(text, entra);
    let contacted = ["authority", "token_url", "authorization_url", "host", "url"];
    for line in local.lines() {
        let key = line.split(" = ").next().unwrap_or("").trim();
        if contacted.contains(&key) {
            let value = line.split_once(" = ").map_or("", |(_, v)| v);
            assert!(
                value.starts_with(&format!("\"{}", entra.base_url()))
                    || value == "\"localhost\""
                    || value.starts_with("\"sqlite://"),
                "the local run would reach beyond loopback: {line}"
            );
        }
    }
    local
}

fn localised_text(text: &str, entra: &FakeEntra) -> String {
    let named = text.contains("\nauthority = ") || text.contains("\ntoken_url = ");
    let text = if named {
        text.to_string()
    } else {
        let identity = text
            .find("\n[identities.")
            .expect("the guide has an identity")
            + 1;
        let line_end = identity + text[identity..].find('\n').unwrap() + 1;
        format!(
            "{}authority = \"https://login.microsoftonline.com/{{tenant}}\"\n{}",
            &text[..line_end],
            &text[line_end..]
        )
    };
    let stack = Stack::get();
    let ca = stack.ca_file();
    let imap = format!(
        "host = \"localhost\"\nport = {}\nca_file = \"{ca}\"",
        stack.port("MAILSTACK_IMAPS_PORT")
    );
    let smtp = format!(
        "host = \"localhost\"\nport = {}\nca_file = \"{ca}\"",
        stack.port("MAILSTACK_SUBMISSION_PORT")
    );
    text.replace("https://login.microsoftonline.com", &entra.base_url())
        .lines()
        .filter(|l| !(l.starts_with("port = ") && (l.ends_with("993") || l.ends_with("587"))))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("host = \"outlook.office365.com\"", &imap)
        .replace("host = \"smtp.office365.com\"", &smtp)
}

/// Runs the binary with the guide's secrets, optionally inside a new network namespace with no
/// interface up (as root), so that nothing at all can be reached.
async fn run(config: &Path, args: &[&str], offline: bool) -> Output {
    let mut command = if offline {
        let mut c = tokio::process::Command::new("unshare");
        c.arg("-n").arg(binary());
        c
    } else {
        tokio::process::Command::new(binary())
    };
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env("GUIDE_CLIENT_SECRET", CLIENT_SECRET)
        .env("GUIDE_USER_PASSWORD", USER_PASSWORD)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "error")
        .kill_on_drop(true);
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("mailintake ends within 120 s")
        .expect("mailintake (or unshare) runs")
}

/// A run as it is compared: the command, its exit code, stdout and stderr, with what differs from
/// machine to machine and run to run replaced by a name.
fn transcript(args: &[&str], out: &Output, replace: &[(String, &str)]) -> String {
    let mut text = format!(
        "$ mailintake {}\nexit {}\n{}{}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (from, to) in replace {
        text = text.replace(from.as_str(), to);
    }
    normalise_minutes(&without_log_lines(&text))
}

/// The command's own output without the log lines beside it (they carry times and retry delays).
fn without_log_lines(text: &str) -> String {
    let is_log = |line: &str| {
        let b = line.as_bytes();
        b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
    };
    let mut out: String = text
        .lines()
        .filter(|l| !is_log(l))
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// "expires in 59 min" → "expires in <n> min": the token's remaining lifetime.
fn normalise_minutes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("expires in ") {
        let (head, tail) = rest.split_at(i + "expires in ".len());
        out.push_str(head);
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("<n>");
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Compares `actual` with the committed `file`, or writes it when blessing.
fn compare(file: &str, actual: &str) {
    let path = guides_dir().join(file);
    if std::env::var_os("MAILINTAKE_BLESS_GUIDES").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (MAILINTAKE_BLESS_GUIDES=1 writes it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{file} differs from the output:\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

async fn check_guide(guide: Guide) {
    let text = std::fs::read_to_string(guides_dir().join(format!("{}.toml", guide.name))).unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let with_db = text.replace("@DATABASE@", &db.url);
    let mut replace: Vec<(String, &str)> = vec![(db.url.clone(), "<database>")];

    // Against the local stack.
    let entra = fake_entra_for(&guide).await;
    let local = ConfigFile::write(&localised(&with_db, &entra));
    let stack = Stack::get();
    replace.extend([
        (entra.base_url(), "<fake-entra>"),
        (stack.ca_file().to_string(), "<ca>"),
        (
            format!("localhost:{}", stack.port("MAILSTACK_IMAPS_PORT")),
            "localhost:<imaps>",
        ),
        (
            format!("localhost:{}", stack.port("MAILSTACK_SUBMISSION_PORT")),
            "localhost:<submission>",
        ),
    ]);
    let mut transcripts = String::new();
    let args = ["check", guide.mailbox];
    let out = run(&local.path, &args, false).await;
    transcripts.push_str(&transcript(&args, &out, &replace));
    for secret in [CLIENT_SECRET, USER_PASSWORD, "eyJ"] {
        assert!(
            !transcripts.contains(secret),
            "{secret} printed:\n{transcripts}"
        );
    }
    assert!(
        !transcripts.contains("FAIL"),
        "the guide's values work as pasted:\n{transcripts}"
    );
    compare(&format!("{}.local.out", guide.name), &transcripts);

    // As written, real Microsoft hosts, no network.
    let offline = ConfigFile::write(&with_db);
    let mut transcripts = String::new();
    let mut commands: Vec<Vec<&str>> = vec![vec!["check"], vec!["check", guide.mailbox]];
    if let Some(identity) = guide.consent {
        commands.push(vec!["consent-url", identity]);
    }
    for args in commands {
        let out = run(&offline.path, &args, true).await;
        transcripts.push_str(&transcript(&args, &out, &replace));
    }
    compare(&format!("{}.offline.out", guide.name), &transcripts);
}

#[tokio::test]
async fn openiam() {
    check_guide(Guide {
        name: "openiam",
        client_id: "3f1c9d2e-7a4b-4c1d-9e8f-5a6b7c8d9e01",
        mailbox: "support",
        address: "guide-openiam@helpdesk.test",
        app: App::AppOnly,
        consent: None,
    })
    .await;
}

#[tokio::test]
async fn magma() {
    check_guide(Guide {
        name: "magma",
        client_id: "6a2b8c4d-1e3f-4a5b-8c7d-9e0f1a2b3c4d",
        mailbox: "servicedesk",
        address: "guide-magma@helpdesk.test",
        app: App::AppOnly,
        consent: Some("magma"),
    })
    .await;
}

#[tokio::test]
async fn secureauth() {
    check_guide(Guide {
        name: "secureauth",
        client_id: "9d8c7b6a-5f4e-4d3c-a2b1-0f9e8d7c6b5a",
        mailbox: "idp",
        address: "guide-secureauth@helpdesk.test",
        app: App::AppOnly,
        consent: None,
    })
    .await;
}

#[tokio::test]
async fn efecte_esm() {
    check_guide(Guide {
        name: "efecte-esm",
        client_id: "0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e",
        mailbox: "esm",
        address: "guide-esm@helpdesk.test",
        app: App::ServiceAccount,
        consent: None,
    })
    .await;
}

#[tokio::test]
async fn navitas() {
    check_guide(Guide {
        name: "navitas",
        client_id: "c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f",
        mailbox: "customer",
        address: "guide-navitas@helpdesk.test",
        app: App::AppOnly,
        consent: Some("navitas"),
    })
    .await;
}

#[test]
fn log_lines_are_left_out() {
    assert_eq!(
        without_log_lines("ok\n2026-12-02T00:30:10.007243Z  INFO fetch: obtained\n  fix: x\n"),
        "ok\n  fix: x\n"
    );
}

#[test]
fn token_lifetimes_are_normalised() {
    assert_eq!(
        normalise_minutes("acquired, expires in 59 min; expires in soon"),
        "acquired, expires in <n> min; expires in soon"
    );
}
