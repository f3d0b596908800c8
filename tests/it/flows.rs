//! Every token flow against the fake Entra ID: client credentials with a certificate, device code
//! login (pending, slow_down, declined, expired), refresh tokens stored encrypted and rotated,
//! revoked refresh tokens; then the binary: `login`, `once` and `check` on a delegated identity
//! against the real Dovecot, `consent-url`, and no secret or token in any log line at trace level.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_entra::{AadsError, Client, Fault, MailService, SigningKey, User};
use mailintake::oauth::{RetryPolicy, TokenCache};
use mailintake::store::Store;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;
use crate::oauth::{Tenant, fast_retries, guid};

/// A token key as `[token_store]` takes it (base64 of 32 bytes) and the key table that reads it
/// from `IT_TOKEN_KEY`.
pub const TOKEN_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn token_keys() -> Vec<mailintake::config::TokenKey> {
    let text = format!(
        "[token_store]\nkeys = [{{ id = \"k1\", key = \"{TOKEN_KEY}\" }}]\n\n[[mailboxes]]\nname = \"m\"\naddress = \"m@helpdesk.test\"\nidentity = \"x\"\nimap = {{ host = \"localhost\" }}\n[identities.x]\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"
    );
    mailintake::config::Config::from_toml_str(&text, std::path::Path::new("."))
        .unwrap()
        .token_keys
}

#[tokio::test]
async fn certificate_credentials_get_an_app_token_and_a_wrong_certificate_gets_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let client_key = SigningKey::generate().unwrap();
    std::fs::write(dir.path().join("key.pem"), client_key.to_pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), client_key.certificate_pem()).unwrap();
    let client_id = guid();
    let mailbox = unique_mailbox();
    let tenant = Tenant::start(|c| {
        c.clients.push(
            Client::with_certificate(&client_id, "cert app", &client_key.certificate_pem())
                .with_app_roles(IMAP_ROLES)
                .with_mailboxes(&[&mailbox]),
        )
    })
    .await;
    let identity = crate::oauth::identity_from(&format!(
        "client_id = \"{client_id}\"\nauthority = \"{}\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"",
        tenant.fake.authority(),
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    ));
    let cache = TokenCache::with_retry_policy(fast_retries());
    let token = cache.token(&identity).await.expect("certificate flow");
    let info = tenant
        .fake
        .validate_access_token(
            token.secret.expose_secret(),
            Some(&mailbox),
            MailService::Imap,
        )
        .expect("the token opens the mailbox");
    assert_eq!(info.idtyp, "app");

    // A certificate that is not registered: AADSTS700027 and where to upload it.
    let other = SigningKey::generate().unwrap();
    std::fs::write(dir.path().join("key.pem"), other.to_pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), other.certificate_pem()).unwrap();
    let cache = TokenCache::with_retry_policy(fast_retries());
    let error = cache.token(&identity).await.unwrap_err();
    assert_eq!(error.aadsts_code(), Some(700027), "{error}");
    assert!(error.needs_admin());
    assert!(
        error.to_string().contains("Certificates & secrets"),
        "{error}"
    );
}

/// A fake tenant with a public client for delegated flows and one user, whose mailbox is `upn`.
async fn delegated_tenant(upn: &str, change: impl FnOnce(&mut fake_entra::Config)) -> Tenant {
    let client_id = guid();
    let upn = upn.to_string();
    let mut tenant = Tenant::start(|c| {
        c.clients.push(Client::public(&client_id, "delegated app"));
        c.users.push(User::new(&upn, "user-password-1"));
        c.device_code_interval = Duration::from_secs(1);
        change(c);
    })
    .await;
    tenant.client_id = client_id;
    tenant
}

async fn sqlite_store() -> (TestDb, Store) {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = Store::open(&db.url).await.unwrap();
    (db, store)
}

/// Runs `login_device_code`; the user approves `approve_after` after the prompt, or declines.
async fn device_login(
    tenant: &Tenant,
    cache: &TokenCache,
    identity: &mailintake::config::Identity,
    upn: &str,
    approve_after: Option<Duration>,
) -> Result<mailintake::oauth::DeviceLogin, mailintake::oauth::TokenError> {
    let (code_tx, code_rx) = tokio::sync::oneshot::channel::<String>();
    let fake = &tenant.fake;
    // The user acts once; the login's end (success, refusal, expiry) ends the test's wait.
    let user = async {
        let code = code_rx.await.unwrap();
        match approve_after {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                assert!(fake.approve_device_code(&code, upn));
            }
            None => assert!(fake.decline_device_code(&code)),
        }
        std::future::pending::<()>().await
    };
    let login = cache.login_device_code(identity, |prompt| {
        assert_eq!(prompt.verification_uri, "https://microsoft.com/devicelogin");
        code_tx.send(prompt.user_code.clone()).unwrap();
    });
    tokio::select! {
        result = login => result,
        () = user => unreachable!("the user's part never ends"),
    }
}

#[tokio::test]
async fn device_code_login_stores_the_refresh_token_encrypted_and_the_worker_runs_on_it() {
    let upn = unique_mailbox();
    let tenant = delegated_tenant(&upn, |_| {}).await;
    let identity = tenant.identity("flow = \"device_code\"");
    let (db, store) = sqlite_store().await;
    let keys = token_keys();
    let cache =
        TokenCache::with_retry_policy(fast_retries()).with_token_store(store.clone(), &keys);

    // The person signs in after the first poll: authorization_pending is waited out.
    let started = Instant::now();
    let login = device_login(
        &tenant,
        &cache,
        &identity,
        &upn,
        Some(Duration::from_millis(1500)),
    )
    .await
    .expect("login");
    assert!(login.refresh_token_stored);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "polls every interval"
    );
    let outcomes: Vec<String> = tenant
        .fake
        .requests()
        .iter()
        .map(|r| r.outcome.to_string())
        .collect();
    assert!(
        outcomes.iter().any(|o| o.contains("authorization_pending")),
        "{outcomes:?}"
    );
    assert!(
        !outcomes.iter().any(|o| o.contains("slow_down")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.last().unwrap(), "issued");
    // The login's access token is cached: no further request.
    let n = tenant.n_requests();
    cache.token(&identity).await.unwrap();
    assert_eq!(tenant.n_requests(), n);

    // Stored encrypted, under key k1.
    let sealed = store
        .refresh_token("app", &identity.scope)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sealed.key_id, "k1");
    assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains("1.AQsA"));
    assert_eq!(db.count("SELECT COUNT(*) FROM oauth_tokens").await, 1);

    // A restarted process runs on the stored refresh token, and stores the rotated one.
    tenant.fake.clear_requests();
    let restarted =
        TokenCache::with_retry_policy(fast_retries()).with_token_store(store.clone(), &keys);
    let token = restarted
        .token(&identity)
        .await
        .expect("refresh token flow");
    let requests = tenant.fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].grant_type.as_deref(), Some("refresh_token"));
    tenant
        .fake
        .validate_access_token(token.secret.expose_secret(), Some(&upn), MailService::Imap)
        .expect("a delegated token for the user's mailbox");
    let rotated = store
        .refresh_token("app", &identity.scope)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        rotated.ciphertext, sealed.ciphertext,
        "the rotated token was stored"
    );

    // Revoked sessions (a password change): invalid_grant, sign in again, never retried.
    tenant.fake.revoke_refresh_tokens(&upn);
    tenant.fake.clear_requests();
    let after_revoke =
        TokenCache::with_retry_policy(fast_retries()).with_token_store(store.clone(), &keys);
    let error = after_revoke.token(&identity).await.unwrap_err();
    assert_eq!(error.aadsts_code(), Some(50173), "{error}");
    assert!(error.needs_sign_in());
    assert!(
        error.to_string().contains("mailintake login app"),
        "{error}"
    );
    assert_eq!(tenant.n_requests(), 1);

    // A new login (in another process) repairs it: the running cache reads the new token from
    // the database instead of retrying the dead one it had in memory.
    let relogin =
        TokenCache::with_retry_policy(fast_retries()).with_token_store(store.clone(), &keys);
    device_login(&tenant, &relogin, &identity, &upn, Some(Duration::ZERO))
        .await
        .expect("login again");
    after_revoke
        .token(&identity)
        .await
        .expect("runs on the new refresh token");
}

#[tokio::test]
async fn device_code_polling_slows_down_when_asked() {
    let upn = unique_mailbox();
    let tenant = delegated_tenant(&upn, |_| {}).await;
    let identity = tenant.identity("flow = \"device_code\"");
    let (_db, store) = sqlite_store().await;
    let cache =
        TokenCache::with_retry_policy(fast_retries()).with_token_store(store, &token_keys());
    // The first poll is told to slow down: the next one comes 1 + 5 seconds later.
    tenant
        .fake
        .inject(Fault::AadsError(AadsError::slow_down(1)), 1);
    device_login(&tenant, &cache, &identity, &upn, Some(Duration::ZERO))
        .await
        .expect("login");
    let polls = tenant.fake.requests();
    assert_eq!(polls.len(), 2, "{polls:?}");
    let gap = polls[1].at.duration_since(polls[0].at).unwrap();
    assert!(gap >= Duration::from_millis(5900), "{gap:?}");
}

#[tokio::test]
async fn declined_and_expired_device_logins_say_so() {
    let upn = unique_mailbox();
    let tenant = delegated_tenant(&upn, |c| c.device_code_lifetime = Duration::from_secs(3)).await;
    let identity = tenant.identity("flow = \"device_code\"");
    let (_db, store) = sqlite_store().await;
    let cache =
        TokenCache::with_retry_policy(fast_retries()).with_token_store(store, &token_keys());

    let error = device_login(&tenant, &cache, &identity, &upn, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.oauth_error(),
        Some("authorization_declined"),
        "{error}"
    );
    assert!(error.to_string().contains("declined"), "{error}");

    let error = device_login(
        &tenant,
        &cache,
        &identity,
        &upn,
        Some(Duration::from_secs(30)),
    )
    .await;
    let error = match error {
        Err(e) => e,
        Ok(_) => panic!("an expired code cannot sign in"),
    };
    let text = error.to_string();
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("mailintake login app"), "{text}");
}

#[tokio::test]
async fn a_device_code_identity_without_login_says_to_log_in() {
    let upn = unique_mailbox();
    let tenant = delegated_tenant(&upn, |_| {}).await;
    let identity = tenant.identity("flow = \"device_code\"");
    let (_db, store) = sqlite_store().await;
    let cache = TokenCache::with_retry_policy(RetryPolicy::default())
        .with_token_store(store, &token_keys());
    let error = cache.token(&identity).await.unwrap_err();
    assert!(error.needs_admin());
    assert!(
        error.to_string().contains("run `mailintake login app`"),
        "{error}"
    );
    assert_eq!(tenant.n_requests(), 0);
}

/// A config file for the binary with one delegated (device code) identity `helpdesk` and one
/// mailbox on the stack.
fn delegated_config(tenant: &Tenant, db: &TestDb, mailbox: &str) -> ConfigFile {
    let stack = Stack::get();
    ConfigFile::write(&format!(
        r#"
[database]
url = "{db}"

[token_store]
keys = [{{ id = "k1", key = {{ env = "IT_TOKEN_KEY" }} }}]

[identities.helpdesk]
flow = "device_code"
tenant = "{tenant_id}"
authority = "{authority}"
client_id = "{client_id}"

[[mailboxes]]
name = "support"
address = "{mailbox}"
identity = "helpdesk"

[mailboxes.imap]
host = "localhost"
port = {port}
tls = "implicit"
ca_file = "{ca}"
"#,
        db = db.url,
        tenant_id = TENANT_ID,
        authority = tenant.fake.authority(),
        client_id = tenant.client_id,
        port = stack.port("MAILSTACK_IMAPS_PORT"),
        ca = stack.ca_file(),
    ))
}

/// Runs `mailintake login helpdesk`, approving the code it prints as `upn`.
async fn login_with_binary(tenant: &Tenant, config: &ConfigFile, upn: &str) -> (String, String) {
    let mut child = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(&config.path)
        .args(["login", "helpdesk"])
        .env("IT_TOKEN_KEY", TOKEN_KEY)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Read stderr while the login runs: at RUST_LOG=trace it writes more than a pipe holds, and
    // a full pipe would stop it before it prints the code.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = tokio::spawn(async move {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stderr_pipe, &mut bytes)
            .await
            .map(|_| bytes)
    });
    let mut stdout = String::new();
    let code = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("login prints a code")
            .unwrap()
            .expect("login prints a code before exiting");
        stdout.push_str(&line);
        stdout.push('\n');
        if let Some((_, rest)) = line.split_once("enter the code ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(
        stdout.contains("https://microsoft.com/devicelogin"),
        "{stdout}"
    );
    assert!(tenant.fake.approve_device_code(&code, upn));
    while let Some(line) = lines.next_line().await.unwrap() {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("login ends")
        .unwrap();
    let stderr = text(&stderr_reader.await.unwrap().unwrap());
    assert!(status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test]
async fn login_then_once_and_check_run_unattended_with_no_token_in_any_log_line() {
    let upn = unique_mailbox();
    let tenant = delegated_tenant(&upn, |_| {}).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let config = delegated_config(&tenant, &db, &upn);
    let (login_out, login_err) = login_with_binary(&tenant, &config, &upn).await;
    assert!(login_out.contains("signed in"), "{login_out}");
    assert_eq!(db.count("SELECT COUNT(*) FROM oauth_tokens").await, 1);

    let env = [("IT_TOKEN_KEY", TOKEN_KEY), ("RUST_LOG", "trace")];
    let once = mailintake(&config.path, &["once"], &env).await;
    assert!(once.status.success(), "{}", text(&once.stderr));
    let check = mailintake(&config.path, &["check", "support"], &env).await;
    let check_out = text(&check.stdout);
    assert!(
        check.status.success(),
        "{check_out}\n{}",
        text(&check.stderr)
    );
    assert!(check_out.contains("ok   token"), "{check_out}");
    assert!(
        check_out.contains("scopes IMAP.AccessAsUser.All"),
        "{check_out}"
    );
    assert!(check_out.contains("ok   imap"), "{check_out}");
    assert!(check_out.contains("`INBOX` exists"), "{check_out}");
    assert!(
        check_out.contains("`Quarantine` is missing; the worker creates it"),
        "{check_out}"
    );

    // Nothing secret at trace level: access tokens (JWTs start with eyJ), refresh tokens (1.AQsA),
    // the token key.
    for (name, output) in [
        ("login", format!("{login_out}{login_err}")),
        (
            "once",
            format!("{}{}", text(&once.stdout), text(&once.stderr)),
        ),
        ("check", format!("{check_out}{}", text(&check.stderr))),
    ] {
        assert!(
            output.lines().count() > 3,
            "{name} logged at trace level:\n{output}"
        );
        // dXNlcj is base64 of "user=", how an XOAUTH2 string (which carries the token) starts.
        for secret in ["eyJ", "1.AQsA", TOKEN_KEY, "dXNlcj", "auth=Bearer"] {
            assert!(
                !output.contains(secret),
                "{name} printed {secret}:\n{output}"
            );
        }
    }
}

#[tokio::test]
async fn client_secret_and_tokens_never_appear_in_trace_logs() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let config = ConfigFile::write(
        &ConfigSpec {
            db: &db,
            entra: &entra,
            secret_env: "IT_CLIENT_SECRET",
            mailbox: &mailbox,
            extra_mailbox_keys: "",
            tls: "implicit",
        }
        .render(),
    );
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&mailbox, "customer@customer.test", &raw).await;
    for secret in [entra.secret.as_str(), "a-wrong-secret-value"] {
        let out = mailintake(
            &config.path,
            &["once"],
            &[("IT_CLIENT_SECRET", secret), ("RUST_LOG", "trace")],
        )
        .await;
        let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            output.lines().count() > 10,
            "trace logging is on:\n{output}"
        );
        assert!(
            !output.contains(secret),
            "the client secret was printed:\n{output}"
        );
        for token in ["eyJ", "dXNlcj", "auth=Bearer"] {
            assert!(
                !output.contains(token),
                "a token was printed ({token}):\n{output}"
            );
        }
    }
}

#[tokio::test]
async fn consent_url_names_the_tenant_and_client() {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = ConfigFile::write(&format!(
        r#"
[database]
url = "{}"

[identities.vendor]
tenant = "organizations"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "x"

[[mailboxes]]
name = "support"
address = "support@contoso.com"
identity = "vendor"
imap = {{ host = "outlook.office365.com" }}
"#,
        db.url
    ));
    let out = mailintake(&config.path, &["consent-url", "vendor"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "https://login.microsoftonline.com/organizations/v2.0/adminconsent?client_id=11111111-2222-3333-4444-555555555555&scope=https%3A%2F%2Foutlook.office365.com%2F.default&redirect_uri=https%3A%2F%2Flogin.microsoftonline.com%2Fcommon%2Foauth2%2Fnativeclient"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("any customer tenant"), "{stderr}");
    assert!(
        stderr.contains("Mobile and desktop applications"),
        "{stderr}"
    );
    // `common` is never handed out (no administrator can consent for it); a registered web
    // redirect is used as configured.
    let common = std::fs::read_to_string(&config.path).unwrap().replace(
        "tenant = \"organizations\"",
        "tenant = \"common\"\nconsent_redirect_uri = \"https://helpdesk.example.com/consented\"",
    );
    std::fs::write(&config.path, common).unwrap();
    let out = mailintake(&config.path, &["consent-url", "vendor"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = text(&out.stdout);
    assert!(url.contains("/organizations/v2.0/adminconsent?"), "{url}");
    assert!(
        url.contains("redirect_uri=https%3A%2F%2Fhelpdesk.example.com%2Fconsented"),
        "{url}"
    );
    assert!(text(&out.stderr).contains("Web > Redirect URIs"));
    let out = mailintake(&config.path, &["consent-url", "nobody"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("declared identities: vendor"));
}

/// The password flow with the default scope (which asks for `offline_access`): Entra adds a
/// refresh token, which a password identity does not need. `once` and `check` run without a
/// `[token_store]` and say nothing about storing it (it used to be an ERROR on every token fetch,
/// and `check` said "no database is open for refresh tokens").
#[tokio::test]
async fn a_password_identity_needs_no_token_store_and_says_nothing_about_refresh_tokens() {
    let upn = unique_mailbox();
    let tenant = delegated_tenant(&upn, |_| {}).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let text_config = std::fs::read_to_string(&delegated_config(&tenant, &db, &upn).path)
        .unwrap()
        .replace(
            "[token_store]\nkeys = [{ id = \"k1\", key = { env = \"IT_TOKEN_KEY\" } }]\n",
            "",
        )
        .replace(
            "flow = \"device_code\"",
            &format!(
                "flow = \"password\"\nusername = \"{upn}\"\npassword = {{ env = \"IT_PASSWORD\" }}"
            ),
        );
    assert!(text_config.contains("flow = \"password\""));
    assert!(!text_config.contains("token_store"));
    let config = ConfigFile::write(&text_config);
    let env = [("IT_PASSWORD", "user-password-1")];
    for args in [&["once"][..], &["check", "support"]] {
        let out = mailintake(&config.path, args, &env).await;
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{args:?}: {all}");
        for noise in ["refresh token", "ERROR", "token_store"] {
            assert!(!all.contains(noise), "{args:?} says {noise}: {all}");
        }
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM oauth_tokens").await, 0);
}
