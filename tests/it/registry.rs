//! The mailbox registry (issue 17, item 3) on the real stack: a customer (identity + mailbox)
//! added with one command each while `run` runs is worked on within seconds, without a restart;
//! disabled, its tasks stop and release their leases; an invalid table is refused with its key
//! named; a secret given as text is stored only encrypted; `mailbox sync` writes the file's
//! mailboxes; SIGHUP reads the file again, and a file that disagrees with the registry is
//! logged once while the registry is followed.

use std::time::Duration;

use crate::helpers::*;
use crate::outgoing::query_text;

/// The HTTP API's token of the tests that serve it.
const API_TOKEN: &str = "it-registry-api-token-0123456789";

/// A 32-byte token store key, hex.
const TOKEN_KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// The settings every test adds to the case's file: a token store, and a fleet that acquires
/// leases every second (a test's mailbox is started within a second or two).
fn with_token_store_and_fast_fleet(case: &Case) -> String {
    let text = std::fs::read_to_string(&case.config.path).unwrap();
    let text = format!(
        "{text}\n[token_store]\nkeys = [{{ id = \"k1\", key = \"{TOKEN_KEY}\" }}]\n\n[fleet]\nlease_ttl = \"5s\"\nacquire_interval = \"1s\"\n"
    );
    std::fs::write(&case.config.path, &text).unwrap();
    text
}

/// The `[[mailboxes]]` keys of a mailbox on the stack's IMAP server (implicit TLS).
fn mailbox_keys(address: &str, identity: &str) -> String {
    let stack = Stack::get();
    format!(
        "address = \"{address}\"\nidentity = \"{identity}\"\npoll_interval = \"1s\"\nimap = {{ host = \"localhost\", port = {port}, tls = \"implicit\", ca_file = \"{ca}\" }}",
        port = stack.port("MAILSTACK_IMAPS_PORT"),
        ca = stack.ca_file(),
    )
}

fn tickets_of(mailbox: &str, message_id: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM tickets t JOIN messages m ON m.ticket_id = t.id \
         WHERE t.mailbox = '{mailbox}' AND m.message_id = '{message_id}'"
    )
}

async fn deliver(to: &str) -> String {
    let (raw, id) = unique_fixture("plain.eml");
    deliver_lmtp(to, "alice@customer.test", &raw).await;
    id
}

async fn customer_added_at_run_time(backend: Backend) {
    let support = unique_mailbox();
    let customer = unique_mailbox();
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(backend, "", "implicit", support.clone(), entra).await;
    with_token_store_and_fast_fleet(&case);

    // The file's mailbox into the registry first: a registry with mailboxes is what the fleet
    // follows, so adding one before the file's are there is refused.
    let refused = case
        .run(&[
            "mailbox",
            "add",
            "early",
            "--toml",
            &mailbox_keys(&customer, "test"),
        ])
        .await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("mailintake mailbox sync"),
        "{}",
        text(&refused.stderr)
    );
    let synced = assert_ok(&case.run(&["mailbox", "sync"]).await);
    assert!(synced.contains("mailbox support: added"), "{synced}");

    let base = crate::ops::enable_http(&case, &format!("api_token = \"{API_TOKEN}\""));
    let running = case.spawn_run();
    crate::ops::wait_until_listening(&base, &running).await;
    let first = deliver(&support).await;
    assert!(
        case.wait_for_count(&tickets_of("support", &first), 1, Duration::from_secs(30))
            .await,
        "the synced mailbox is worked on: {}",
        running.log()
    );

    // A new customer: one command for the identity (its secret given as text), one for the
    // mailbox, while `run` runs.
    let added = assert_ok(
        &case
            .run(&[
                "identity",
                "add",
                "acme",
                "--toml",
                &format!(
                    "tenant = \"{TENANT_ID}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nauthority = \"{}\"",
                    case.entra.client_id,
                    case.entra.secret,
                    case.entra.fake.authority()
                ),
            ])
            .await,
    );
    assert!(added.contains("identity acme added"), "{added}");
    let added = assert_ok(
        &case
            .run(&[
                "mailbox",
                "add",
                "acme",
                "--toml",
                &format!("{}\n{}", mailbox_keys(&customer, "acme"), smtp_keys()),
            ])
            .await,
    );
    assert!(added.contains("mailbox acme added"), "{added}");
    let second = deliver(&customer).await;
    assert!(
        case.wait_for_count(&tickets_of("acme", &second), 1, Duration::from_secs(15))
            .await,
        "mail to the added mailbox becomes a ticket without a restart: {}",
        running.log()
    );
    // The worker's HTTP side knows it too: the status page finds it by its address, and the
    // API takes mail for it (before, both knew the start-up mailboxes only: 0 found, 422).
    let local = customer.split('@').next().unwrap();
    let (status, page) = crate::ops::get(&format!("{base}/?q={local}"), None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("mailboxes 1–1 of 1 matching (2 in all)"),
        "{page}"
    );
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({
            "mailbox": "acme",
            "idempotency_key": "acme-1",
            "to": [{"address": "bob@customer.test"}],
            "subject": "Welcome",
            "text": "Your helpdesk mailbox is set up.",
        }))
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    let body = answer.text().await.unwrap_or_default();
    assert_eq!(code, 202, "{body}\n{}", running.log());
    assert!(
        case.wait_for_count(
            "SELECT COUNT(*) FROM outbox WHERE mailbox = 'acme' AND subject = 'Welcome' AND state = 'sent'",
            1,
            Duration::from_secs(15)
        )
        .await,
        "the API's message for the added mailbox is sent: {}",
        running.log()
    );

    // The secret is stored only encrypted.
    let settings = query_text(
        &case.db,
        "SELECT settings FROM registry_identities WHERE name = 'acme'",
    )
    .await;
    assert!(settings.contains(&case.entra.client_id), "{settings}");
    assert!(!settings.contains(&case.entra.secret), "{settings}");
    let sealed = sealed_secrets(&case.db).await;
    assert!(!sealed.is_empty());
    assert!(
        !sealed
            .windows(case.entra.secret.len())
            .any(|w| w == case.entra.secret.as_bytes()),
        "the ciphertext is not the secret"
    );
    let listed = assert_ok(&case.run(&["identity", "list"]).await);
    assert!(listed.contains("secrets encrypted with key k1"), "{listed}");
    assert!(!listed.contains(&case.entra.secret), "{listed}");

    // Disabled: its tasks stop, log out and release their leases; mail waits.
    assert_ok(&case.run(&["mailbox", "disable", "acme"]).await);
    let held = "SELECT COUNT(*) FROM leases WHERE mailbox = 'acme' AND holder IS NULL";
    assert!(
        case.wait_for_count(held, 1, Duration::from_secs(15)).await,
        "the disabled mailbox's lease is released: {}",
        running.log()
    );
    let log = running.log();
    assert!(
        log.contains("stopping the mailbox's tasks: it is no longer configured"),
        "{log}"
    );
    let third = deliver(&customer).await;
    // Longer than a registry poll and a sweep: a mailbox still worked on takes it in meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(case.db.count(&tickets_of("acme", &third)).await, 0);
    assert_ok(&case.run(&["mailbox", "enable", "acme"]).await);
    assert!(
        case.wait_for_count(&tickets_of("acme", &third), 1, Duration::from_secs(15))
            .await,
        "enabled again, it takes in what waited: {}",
        running.log()
    );

    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert!(!log.contains(&case.entra.secret), "no secret in the log");
}

async fn sealed_secrets(db: &TestDb) -> Vec<u8> {
    let pool = db.pool().await;
    let (bytes,): (Vec<u8>,) =
        sqlx::query_as("SELECT secrets FROM registry_identities WHERE name = 'acme'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    bytes
}

#[tokio::test]
async fn a_customer_added_while_running_is_worked_on_without_a_restart_on_sqlite() {
    customer_added_at_run_time(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_customer_added_while_running_is_worked_on_without_a_restart_on_postgres() {
    customer_added_at_run_time(Backend::Postgres).await;
}

async fn invalid_tables_are_refused(backend: Backend) {
    let case = Case::new(backend, "", "implicit").await;
    // Without a token store first: a secret given as text cannot be kept.
    let identity = format!(
        "tenant = \"{TENANT_ID}\"\nclient_id = \"c\"\nclient_secret = \"plain-text-secret\""
    );
    let out = case
        .run(&["identity", "add", "acme", "--toml", &identity])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("[token_store]"),
        "{}",
        text(&out.stderr)
    );

    with_token_store_and_fast_fleet(&case);
    assert_ok(&case.run(&["mailbox", "sync"]).await);
    let out = case
        .run(&[
            "identity",
            "add",
            "acme",
            "--toml",
            &format!("{identity}\nflow = \"telepathy\""),
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("identities.acme.flow:"),
        "{}",
        text(&out.stderr)
    );
    let out = case
        .run(&[
            "mailbox",
            "add",
            "acme",
            "--toml",
            &format!(
                "{}\ndispose = \"burn\"",
                mailbox_keys("help@acme.test", "test")
            ),
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("mailboxes[acme].dispose: must be"),
        "{stderr}"
    );
    let out = case
        .run(&[
            "mailbox",
            "add",
            "acme",
            "--toml",
            &mailbox_keys("help@acme.test", "nobody"),
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("mailboxes[acme].identity:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM registry_mailboxes WHERE name = 'acme'")
            .await,
        0
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM registry_identities")
            .await,
        0
    );
    // A change is validated the same way, and a refused one changes nothing.
    let out = case
        .run(&[
            "mailbox",
            "set",
            "support",
            "--toml",
            "idle_interval = \"2h\"",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("mailboxes[support].idle_interval"),
        "{}",
        text(&out.stderr)
    );
    let version = "SELECT version FROM registry_mailboxes WHERE name = 'support'";
    assert_eq!(case.db.count(version).await, 1);
}

#[tokio::test]
async fn an_invalid_table_is_refused_with_its_key_named_on_sqlite() {
    invalid_tables_are_refused(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_invalid_table_is_refused_with_its_key_named_on_postgres() {
    invalid_tables_are_refused(Backend::Postgres).await;
}

async fn file_and_sighup(backend: Backend) {
    let support = unique_mailbox();
    let second = unique_mailbox();
    let entra = Entra::start(&[&support, &second]).await;
    let case = Case::build(backend, "", "implicit", support.clone(), entra).await;
    let text_one = with_token_store_and_fast_fleet(&case);
    let running = case.spawn_run();
    let first = deliver(&support).await;
    assert!(
        case.wait_for_count(&tickets_of("support", &first), 1, Duration::from_secs(30))
            .await,
        "{}",
        running.log()
    );

    // The registry is empty: SIGHUP applies the file's new mailbox.
    let text_two = format!(
        "{text_one}\n[[mailboxes]]\nname = \"second\"\n{}\n",
        mailbox_keys(&second, "test")
    );
    std::fs::write(&case.config.path, &text_two).unwrap();
    hangup(&running);
    let mail = deliver(&second).await;
    assert!(
        case.wait_for_count(&tickets_of("second", &mail), 1, Duration::from_secs(20))
            .await,
        "SIGHUP reads the file again: {}",
        running.log()
    );

    // Synced: the registry holds the same settings, so nothing starts again.
    let synced = assert_ok(&case.run(&["mailbox", "sync"]).await);
    assert!(synced.contains("mailbox second: added"), "{synced}");
    // A file that disagrees with the registry: logged once, the registry followed.
    let changed = text_two.replacen(
        "name = \"second\"\n",
        "name = \"second\"\nreopen_closed = false\n",
        1,
    );
    std::fs::write(&case.config.path, &changed).unwrap();
    hangup(&running);
    let difference = "mailbox second has other settings in the config file than in the registry (reopen_closed); the registry's are used";
    assert!(
        eventually(Duration::from_secs(15), || async {
            running.log().contains(difference)
        })
        .await,
        "{}",
        running.log()
    );
    hangup(&running);
    // Another poll and another re-read later, still said once.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let log = running.log();
    assert_eq!(log.matches(difference).count(), 1, "{log}");
    assert!(!log.contains("stopping the mailbox's tasks"), "{log}");

    // Once the registry is changed to match (sync), the mailbox starts again with it.
    let synced = assert_ok(&case.run(&["mailbox", "sync"]).await);
    assert!(synced.contains("mailbox second: updated"), "{synced}");
    assert!(synced.contains("mailbox support: unchanged"), "{synced}");
    assert!(
        eventually(Duration::from_secs(15), || async {
            running
                .log()
                .contains("stopping the mailbox's tasks: its settings changed")
        })
        .await,
        "{}",
        running.log()
    );
    let mail = deliver(&second).await;
    assert!(
        case.wait_for_count(&tickets_of("second", &mail), 1, Duration::from_secs(20))
            .await,
        "{}",
        running.log()
    );
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}

fn hangup(running: &Running) {
    let pid = running.child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

#[tokio::test]
async fn sighup_reads_the_file_and_a_disagreeing_file_is_logged_once_on_sqlite() {
    file_and_sighup(Backend::Sqlite).await;
}

#[tokio::test]
async fn sighup_reads_the_file_and_a_disagreeing_file_is_logged_once_on_postgres() {
    file_and_sighup(Backend::Postgres).await;
}
