//! Token trouble as the operator sees it: Entra's refusal with its AADSTS code and the fix, and the
//! mail server's refusal of a token it does not accept for the mailbox.

use crate::helpers::*;

async fn once_with(entra: &Entra, mailbox: &str, secret: &str) -> std::process::Output {
    run_with(entra, mailbox, secret, &["once"]).await
}

async fn run_with(
    entra: &Entra,
    mailbox: &str,
    secret: &str,
    args: &[&str],
) -> std::process::Output {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = ConfigFile::write(
        &ConfigSpec {
            db: &db,
            entra,
            secret_env: "IT_CLIENT_SECRET",
            mailbox,
            extra_mailbox_keys: "",
            tls: "implicit",
        }
        .render(),
    );
    mailintake(&config.path, args, &[("IT_CLIENT_SECRET", secret)]).await
}

#[tokio::test]
async fn wrong_client_secret_reports_aadsts7000215_and_the_fix() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let out = once_with(&entra, &mailbox, "not-the-secret").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("AADSTS7000215"), "{stderr}");
    assert!(
        stderr.contains("fix: the client secret is wrong"),
        "{stderr}"
    );
    assert!(stderr.contains("trace id:"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
}

#[tokio::test]
async fn unknown_client_reports_aadsts700016_and_the_fix() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let unknown = Entra {
        client_id: "0badc0de-1111-4222-8333-444444444444".into(),
        ..entra
    };
    let out = once_with(&unknown, &mailbox, &unknown.secret).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("AADSTS700016"), "{stderr}");
    assert!(
        stderr.contains("fix: no application with this client_id"),
        "{stderr}"
    );
}

#[tokio::test]
async fn mailbox_without_permission_is_refused_by_the_server_with_the_exchange_fix() {
    let allowed = unique_mailbox();
    let other = unique_mailbox();
    let entra = Entra::start(&[&allowed]).await;
    let out = once_with(&entra, &other, &entra.secret).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("XOAUTH2 was refused"), "{stderr}");
    assert!(stderr.contains("Add-MailboxPermission"), "{stderr}");
    // The server's base64 JSON challenge (RFC 7628 §3.2.2) was decoded into the error, and the
    // exchange did not hang: the empty answer was sent.
    assert!(stderr.contains(r#""status":"401""#), "{stderr}");
    // The refused token was replaced once (a stale token is the common cause), not hammered.
    let requests = entra.fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
}

#[tokio::test]
async fn an_identity_that_needs_an_admin_stops_only_its_own_mailboxes() {
    let good = unique_mailbox();
    let bad = unique_mailbox();
    let entra = Entra::start(&[&good, &bad]).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let stack = Stack::get();
    let mailbox = |name: &str, address: &str, identity: &str| {
        format!(
            "\n[[mailboxes]]\nname = \"{name}\"\naddress = \"{address}\"\nidentity = \"{identity}\"\n\
             poll_interval = \"10m\"\n\n[mailboxes.imap]\nhost = \"localhost\"\nport = {}\nca_file = \"{}\"\n",
            stack.port("MAILSTACK_IMAPS_PORT"),
            stack.ca_file()
        )
    };
    let identity = |name: &str, secret_env: &str| {
        format!(
            "\n[identities.{name}]\ntenant = \"{TENANT_ID}\"\nclient_id = \"{}\"\n\
             client_secret = {{ env = \"{secret_env}\" }}\nauthority = \"{}\"\n",
            entra.client_id,
            entra.fake.authority()
        )
    };
    let config = ConfigFile::write(&format!(
        "[database]\nurl = \"{}\"\n{}{}{}{}",
        db.url,
        identity("good", "IT_GOOD_SECRET"),
        identity("bad", "IT_BAD_SECRET"),
        mailbox("good", &good, "good"),
        mailbox("bad", &bad, "bad"),
    ));
    let log = config.path.with_file_name("run.log");
    let mut child = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(&config.path)
        .arg("run")
        .env("IT_GOOD_SECRET", &entra.secret)
        .env("IT_BAD_SECRET", "an-expired-or-wrong-secret")
        .kill_on_drop(true)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&good, "alice@customer.test", &raw).await;
    let (raw, _) = unique_fixture("latin1.eml");
    deliver_lmtp(&bad, "joerg@customer.test", &raw).await;
    let ingested = eventually(std::time::Duration::from_secs(30), || async {
        db.count_or_zero("SELECT COUNT(*) FROM tickets WHERE mailbox = 'good'")
            .await
            == 1
    })
    .await;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("stopped")
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(ingested, "the healthy mailbox was held up: {log}");
    assert!(status.success(), "{log}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tickets WHERE mailbox = 'bad'")
            .await,
        0
    );
    assert!(log.contains("AADSTS7000215"), "{log}");
    assert!(log.contains("administrator"), "{log}");
    assert!(!log.contains("an-expired-or-wrong-secret"), "{log}");
    // Retried slowly, not hammered: one attempt (and its bounded retries) in the test's window.
    let requests = entra.fake.requests();
    assert!(requests.len() <= 4, "{} token requests", requests.len());
}

/// `check` names the identity once in its token line, with the AADSTS code and the fix.
#[tokio::test]
async fn check_says_a_refused_secret_once_in_the_admins_words() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let out = run_with(&entra, &mailbox, "not-the-secret", &["check", "support"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let token_line = stdout
        .lines()
        .find(|l| l.contains("token"))
        .unwrap_or_else(|| panic!("no token line: {stdout}"));
    assert!(token_line.contains("FAIL"), "{stdout}");
    assert_eq!(token_line.matches("identity `test`").count(), 1, "{stdout}");
    assert!(stdout.contains("AADSTS7000215"), "{stdout}");
}

/// What the products' setup guides have the admin paste, against the local stack: OpenIAM's
/// "Authority" is the whole token URL with `{tenant-id}` in it; Efecte ESM's scopes are one
/// comma-separated list; Magma gives the authorization and the token endpoint. `check` gets a
/// token and logs in with each.
#[tokio::test]
async fn the_guides_values_work_as_pasted() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let base = entra.fake.base_url();
    let authority_line = format!("authority = \"{}\"", entra.fake.authority());
    for (guide, keys) in [
        (
            "OpenIAM",
            format!("authority = \"{base}/{{tenant-id}}/oauth2/v2.0/token\""),
        ),
        (
            "Efecte ESM",
            format!(
                "token_url = \"{base}/{{tenantID}}/oauth2/v2.0/token\"\nscope = \"https://outlook.office365.com/.default,\""
            ),
        ),
        (
            "Magma",
            format!(
                "authorization_url = \"{base}/{{tenant}}/oauth2/v2.0/authorize\"\ntoken_url = \"{base}/{{tenant}}/oauth2/v2.0/token\""
            ),
        ),
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        let text_config = ConfigSpec {
            db: &db,
            entra: &entra,
            secret_env: "IT_CLIENT_SECRET",
            mailbox: &mailbox,
            extra_mailbox_keys: "",
            tls: "implicit",
        }
        .render();
        assert!(text_config.contains(&authority_line));
        let config = ConfigFile::write(&text_config.replace(&authority_line, &keys));
        let out = mailintake(
            &config.path,
            &["check", "support"],
            &[("IT_CLIENT_SECRET", &entra.secret)],
        )
        .await;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{guide}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("ok   token"), "{guide}: {stdout}");
        assert!(stdout.contains("ok   imap"), "{guide}: {stdout}");
    }
}

/// A cached token belongs to the identity's settings it was fetched with: after `identity set`
/// (or an edited file) changes the secret, the next token is fetched with the new one — a wrong
/// new secret is Entra's AADSTS7000215 at once, not when the old token expires an hour later —
/// and with unchanged settings the cached token is used.
///
/// Before: the cache was keyed by the identity's name alone, so a changed secret or client went
/// unnoticed until the token's renewal.
#[tokio::test]
async fn a_changed_identity_gets_a_token_with_its_new_settings() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let config = ConfigFile::write(
        &ConfigSpec {
            db: &db,
            entra: &entra,
            secret_env: "UNUSED",
            mailbox: &mailbox,
            extra_mailbox_keys: "",
            tls: "implicit",
        }
        .render(),
    );
    let secret_file = config.path.with_file_name("secret");
    let text = std::fs::read_to_string(&config.path).unwrap().replace(
        "client_secret = { env = \"UNUSED\" }",
        &format!("client_secret = {{ file = \"{}\" }}", secret_file.display()),
    );
    std::fs::write(&config.path, text).unwrap();
    let identity_with = |secret: &str| {
        std::fs::write(&secret_file, secret).unwrap();
        let loaded = mailintake::config::Config::load(&config.path).unwrap();
        let name = loaded.mailboxes[0].identity.clone();
        loaded.identity(&name).clone()
    };
    let requests = || entra.fake.requests().len();
    let tokens = mailintake::oauth::TokenCache::new();

    let first = tokens.token(&identity_with(&entra.secret)).await.unwrap();
    let again = tokens.token(&identity_with(&entra.secret)).await.unwrap();
    assert_eq!(requests(), 1, "the same settings: the cached token");
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&first.secret),
        secrecy::ExposeSecret::expose_secret(&again.secret)
    );

    let refused = tokens.token(&identity_with("a-wrong-new-secret")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.aadsts_code() == Some(7_000_215)),
        "a new secret is used at once: {:?}",
        refused.map(|_| ())
    );
    assert_eq!(requests(), 2);

    tokens.token(&identity_with(&entra.secret)).await.unwrap();
    tokens.token(&identity_with(&entra.secret)).await.unwrap();
    assert_eq!(
        requests(),
        3,
        "back to the right secret: one new token, then cached"
    );
}
