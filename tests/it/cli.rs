//! The command line: configuration errors, `check`, `migrate`.

use std::path::Path;

use crate::helpers::*;

fn example_config() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
}

#[tokio::test]
async fn example_config_is_valid_when_its_secret_is_set() {
    let out = mailintake(
        example_config(),
        &["check"],
        &[("MAILINTAKE_CONTOSO_CLIENT_SECRET", "value-from-env")],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 mailbox(es)"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn missing_secret_names_the_key_and_exits_2() {
    let out = mailintake(example_config(), &["check"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("identities.contoso.client_secret"),
        "{stderr}"
    );
    assert!(
        stderr.contains("MAILINTAKE_CONTOSO_CLIENT_SECRET is not set"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

async fn run_with_edited_example(from: &str, to: &str) -> String {
    let text_config = std::fs::read_to_string(example_config())
        .unwrap()
        .replace(from, to);
    let config = ConfigFile::write(&text_config);
    let out = mailintake(
        &config.path,
        &["once"],
        &[("MAILINTAKE_CONTOSO_CLIENT_SECRET", "super-secret-value")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("super-secret-value"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn unknown_key_is_named() {
    let stderr = run_with_edited_example(
        "poll_interval = \"60s\"",
        "poll_interval = \"60s\"\npoll_intervall = \"5s\"",
    )
    .await;
    assert!(stderr.contains("mailboxes.0.poll_intervall"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
}

#[tokio::test]
async fn mistyped_value_is_named_but_never_echoed() {
    let stderr = run_with_edited_example("port = 993", "port = \"hunter2-secret\"").await;
    assert!(stderr.contains("mailboxes.0.imap.port"), "{stderr}");
    assert!(stderr.contains("found a string"), "{stderr}");
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let out = mailintake(
        example_config(),
        &["check"],
        &[
            ("MAILINTAKE_CONTOSO_CLIENT_SECRET", "x"),
            ("MAILINTAKE_DATABASE__URL", "mysql://nope"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("database.url"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn missing_config_file_says_how_to_create_one() {
    let out = mailintake(Path::new("/nonexistent/mailintake.toml"), &["check"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("config/example.toml"),
        "{}",
        text(&out.stderr)
    );
}

async fn migrate_creates_the_schema(backend: Backend) {
    let db = TestDb::new(backend).await;
    let text_config = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("sqlite://data/mailintake.db", &db.url);
    let config = ConfigFile::write(&text_config);
    for _ in 0..2 {
        let out = mailintake(
            &config.path,
            &["migrate"],
            &[("MAILINTAKE_CONTOSO_CLIENT_SECRET", "x")],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for table in [
        "tickets",
        "messages",
        "attachments",
        "attachment_blobs",
        "quarantine",
        "outbox",
        "mailbox_state",
        "oauth_tokens",
        "imap_messages",
    ] {
        assert_eq!(db.count(&format!("SELECT COUNT(*) FROM {table}")).await, 0);
    }
    if backend == Backend::Postgres {
        // Migration 0020: the large columns compressed with lz4 (the local server has it), the
        // gzip-compressed raw mail stored without a second compression.
        assert_eq!(
            db.count(
                "SELECT COUNT(*) FROM pg_attribute WHERE attcompression = 'l' AND \
                 ((attrelid = 'messages'::regclass AND attname IN ('body_text', 'body_html', 'body_text_derived', 'headers')) \
                 OR (attrelid = 'attachment_blobs'::regclass AND attname = 'content') \
                 OR (attrelid = 'quarantine'::regclass AND attname = 'raw') \
                 OR (attrelid = 'outbox'::regclass AND attname = 'raw'))"
            )
            .await,
            7
        );
        assert_eq!(
            db.count(
                "SELECT COUNT(*) FROM pg_attribute WHERE attrelid = 'raw_messages'::regclass \
                 AND attname = 'content' AND attstorage = 'e'"
            )
            .await,
            1
        );
    }
}

#[tokio::test]
async fn migrate_creates_the_schema_on_sqlite() {
    migrate_creates_the_schema(Backend::Sqlite).await;
}

#[tokio::test]
async fn migrate_creates_the_schema_on_postgres() {
    migrate_creates_the_schema(Backend::Postgres).await;
}

/// No Docker engine runs here, so the Dockerfile is linted: multi-stage, a non-root runtime user,
/// every COPY source present in the repository, the builder on the toolchain Cargo.toml requires.
#[test]
fn dockerfile_lint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        stages.len() >= 2,
        "expected a multi-stage build: {stages:?}"
    );
    let rust_version = std::fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("rust-version in Cargo.toml");
    assert!(
        stages[0].contains(&format!("rust:{rust_version}")),
        "the builder should use Rust {rust_version}: {}",
        stages[0]
    );
    let runtime = &lines[lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap()..];
    let user = runtime
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    assert!(
        user != "root" && user != "0",
        "the runtime must not run as root"
    );
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT ")));
    let mut copied: Vec<&str> = Vec::new();
    for line in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                root.join(source).exists(),
                "COPY source {source} is missing: {line}"
            );
            copied.push(source.trim_end_matches('/'));
        }
    }
    // Every local path the build needs (workspace members, [patch] crates) is copied in.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for needed in manifest
        .split('"')
        .filter(|s| s.starts_with("crates/") || s.starts_with("vendor/"))
    {
        let top = needed.split('/').next().unwrap();
        assert!(
            copied.contains(&top) || copied.contains(&needed),
            "Cargo.toml needs {needed}, which the Dockerfile does not COPY"
        );
    }
    let unit = std::fs::read_to_string(root.join("deploy/mailintake.service")).unwrap();
    for setting in [
        "User=mailintake",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/mailintake run",
    ] {
        assert!(unit.contains(setting), "the systemd unit lacks {setting}");
    }
}

/// A PostgreSQL URL whose password holds characters typed unencoded (`#`, `?`), plus a
/// `password=` parameter, against a port nothing listens on: every way the failure is told
/// (`migrate`, `once`, `check`) names the database without its credentials.
#[tokio::test]
async fn database_credentials_never_appear_in_any_message() {
    let url = "postgres://mailintake:pa#ss?word@127.0.0.1:1/tickets?sslmode=disable&password=other-secret";
    for args in [&["migrate"][..], &["once"], &["check", "--all"]] {
        let out = mailintake(
            example_config(),
            args,
            &[
                ("MAILINTAKE_CONTOSO_CLIENT_SECRET", "x"),
                ("MAILINTAKE_DATABASE__URL", url),
                ("RUST_LOG", "trace"),
            ],
        )
        .await;
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{args:?}: {all}");
        for secret in ["pa#ss", "ss?word", "other-secret"] {
            assert!(!all.contains(secret), "{args:?} shows {secret}: {all}");
        }
        assert!(all.contains("127.0.0.1:1"), "{args:?}: {all}");
    }
}

/// `database.url` takes the `{ env = … }` form like every other secret.
#[tokio::test]
async fn the_database_url_can_come_from_an_environment_variable() {
    let db = TestDb::new(Backend::Sqlite).await;
    let text_config = std::fs::read_to_string(example_config()).unwrap().replace(
        "url = \"sqlite://data/mailintake.db\"",
        "url = { env = \"MAILINTAKE_TEST_DATABASE_URL\" }",
    );
    assert!(text_config.contains("MAILINTAKE_TEST_DATABASE_URL"));
    let config = ConfigFile::write(&text_config);
    let out = mailintake(
        &config.path,
        &["migrate"],
        &[
            ("MAILINTAKE_CONTOSO_CLIENT_SECRET", "x"),
            ("MAILINTAKE_TEST_DATABASE_URL", &db.url),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 0);
}
