//! Operability: the monitoring endpoint of `mailintake run` (`/healthz`, `/readyz`, `/metrics`, the
//! status page in headless Chromium, the bearer token) and JSON log lines, against the real stack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Appends `[http]` with `keys` to the case's config file; returns the base URL.
pub(crate) fn enable_http(case: &Case, keys: &str) -> String {
    let port = free_port();
    let mut text = std::fs::read_to_string(&case.config.path).unwrap();
    text.push_str(&format!(
        "\n[http]\nlisten = \"127.0.0.1:{port}\"\n{keys}\n"
    ));
    std::fs::write(&case.config.path, text).unwrap();
    format!("http://127.0.0.1:{port}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `url` (with `token` as bearer when given): status and body.
pub(crate) async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// GETs `url` until `done(status, body)` holds, for at most 60 s: whether it did, and the last
/// answer.
pub(crate) async fn get_until(
    url: &str,
    token: Option<&str>,
    done: impl Fn(u16, &str) -> bool,
) -> (bool, u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(url, token).await;
        if done(status, &body) {
            return (true, status, body);
        }
        if std::time::Instant::now() > deadline {
            return (false, status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn wait_until_listening(base: &str, running: &Running) {
    let up = eventually(Duration::from_secs(30), || async {
        get(&format!("{base}/healthz"), None).await.0 == 200
    })
    .await;
    assert!(up, "/healthz never answered: {}", running.log());
}

/// Where browser screenshots are kept after the run.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` (loopback only) with `mode` (`--screenshot=…` or
/// `--dump-dom`) and returns its standard output.
async fn chromium(url: &str, mode: &str) -> String {
    assert!(url.starts_with("http://127.0.0.1:"), "loopback only: {url}");
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                // Every host but 127.0.0.1 fails to resolve: the page can reach nothing else.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(mode)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 120 s")
    .expect("chromium runs (Debian package `chromium`; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "chromium {mode} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[tokio::test]
async fn endpoints_follow_intake_and_the_status_page_renders_in_chromium() {
    let case = Case::new(Backend::Sqlite, "max_message_bytes = 20000", "implicit").await;
    let base = enable_http(&case, "");
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let (big, _) = large_message(&case.mailbox, 40_000);
    deliver_lmtp(&case.mailbox, "big@customer.test", &big).await;
    // A real customer's message in the Junk folder: counted and shown, never ingested.
    doveadm(&["mailbox", "create", "-u", &case.mailbox, "Junk"]);
    let (junk, _) = unique_fixture("latin1.eml");
    doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Junk"], &junk);
    let junk_subject = mailintake::ingest::parse(&junk).unwrap().subject;

    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;

    // The counters move once the sweep that recorded the mail has ended.
    let (moved, _, metrics) = get_until(&format!("{base}/metrics"), None, |_, body| {
        sample(
            body,
            r#"mailintake_messages_total{mailbox="support",outcome="ticket"}"#,
        ) >= Some(1.0)
            && sample(
                body,
                r#"mailintake_messages_total{mailbox="support",outcome="quarantined"}"#,
            ) >= Some(1.0)
            && sample(body, r#"mailintake_junk_messages{mailbox="support"}"#).is_some()
    })
    .await;
    assert!(moved, "metrics did not move:\n{metrics}\n{}", running.log());
    for (series, at_least) in [
        (
            r#"mailintake_messages_listed_total{mailbox="support"}"#,
            2.0,
        ),
        // Process-wide histograms: a label per mailbox would multiply their buckets.
        ("mailintake_ingest_latency_seconds_count", 1.0),
        ("mailintake_sweep_duration_seconds_count", 1.0),
        (r#"mailintake_imap_logins_total{mailbox="support"}"#, 1.0),
        (r#"mailintake_tokens_obtained_total{identity="test"}"#, 1.0),
        (
            r#"mailintake_mailbox_state{mailbox="support",state="ok"}"#,
            1.0,
        ),
        (
            r#"mailintake_identity_state{identity="test",state="ok"}"#,
            1.0,
        ),
        ("mailintake_database_up", 1.0),
        (r#"mailintake_junk_messages{mailbox="support"}"#, 1.0),
    ] {
        let value = sample(&metrics, series);
        assert!(
            value >= Some(at_least),
            "{series} = {value:?}, expected ≥ {at_least}:\n{metrics}"
        );
    }
    assert!(
        sample(
            &metrics,
            r#"mailintake_fetched_bytes_total{mailbox="support"}"#
        ) > Some(0.0)
    );
    assert!(
        sample(
            &metrics,
            r#"mailintake_token_expiry_timestamp_seconds{identity="test"}"#
        )
        .is_some()
    );
    // The identity's last successful refresh, in the last few minutes.
    let obtained = sample(
        &metrics,
        r#"mailintake_token_obtained_timestamp_seconds{identity="test"}"#,
    )
    .expect("last refresh recorded");
    let now = mailintake::time::now_ms() as f64 / 1000.0;
    assert!(now - obtained < 300.0, "{obtained} vs {now}");
    assert_eq!(
        sample(
            &metrics,
            r#"mailintake_oldest_unprocessed_age_seconds{mailbox="support"}"#
        ),
        Some(0.0),
        "caught up"
    );
    assert!(metrics.contains("# TYPE mailintake_ingest_latency_seconds histogram"));
    assert!(
        sample(
            &metrics,
            r#"mailintake_ingest_latency_seconds_bucket{le="+Inf"}"#
        ) >= Some(1.0)
    );
    assert!(!metrics.contains(r#"mailintake_ingest_latency_seconds_bucket{mailbox="#));

    let (status, body) = get(&format!("{base}/healthz"), None).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "alive");
    assert_eq!(health["mailboxes"][0]["name"], "support");

    let (status, body) = get(&format!("{base}/readyz"), None).await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["database"]["ok"], true);
    let mailbox = &ready["mailboxes"][0];
    assert_eq!(mailbox["state"], "ok", "{body}");
    assert!(mailbox["last_success_ms"].as_i64().is_some(), "{body}");
    assert!(mailbox["last_success_age_seconds"].as_i64().unwrap() < 120);
    assert_eq!(mailbox["identity"]["name"], "test");
    assert_eq!(mailbox["identity"]["state"], "ok");
    assert_eq!(mailbox["oldest_unprocessed_age_seconds"], 0, "{body}");
    assert_eq!(mailbox["junk"]["total"], 1, "{body}");
    assert_eq!(mailbox["junk"]["exists"], true, "{body}");
    let (_, health) = get(&format!("{base}/healthz"), None).await;
    assert!(
        !health.contains(&junk_subject),
        "/healthz answers without a token: no subjects: {health}"
    );

    // The page in a real browser: a screenshot for the run's artifacts, and the rendered DOM.
    let page = format!("{base}/");
    let screenshot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&page, &format!("--screenshot={}", screenshot.display())).await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1280, "screenshot width");
    assert!(
        png.len() > 10_000,
        "a blank page compresses to almost nothing; got {} bytes",
        png.len()
    );
    let dom = chromium(&page, "--dump-dom").await;
    assert!(dom.contains("mailintake status"), "{dom}");
    assert!(dom.contains("support"), "mailbox name missing: {dom}");
    assert!(
        dom.contains(&case.mailbox),
        "mailbox address missing: {dom}"
    );
    assert!(
        dom.contains("Printer on floor 3 is jammed"),
        "ticket subject missing: {dom}"
    );
    assert!(
        dom.contains("A very large log file"),
        "quarantined message missing: {dom}"
    );
    assert!(dom.contains("TCK-"), "ticket reference missing: {dom}");
    assert!(dom.contains("1 in Junk"), "Junk count missing: {dom}");
    assert!(
        dom.contains(&mailintake::http::escape(&junk_subject)),
        "newest Junk message missing: {dom}"
    );
    assert!(
        dom.contains("none (caught up)"),
        "oldest unprocessed: {dom}"
    );
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM tickets").await,
        1,
        "Junk mail is not ingested"
    );

    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("monitoring endpoint listening"), "{log}");
}

#[tokio::test]
async fn bearer_token_guards_all_but_healthz_and_readyz_fails_when_no_mailbox_can_work() {
    // A mailbox whose IMAP server does not answer: retrying, so no mailbox can work.
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let imaps = Stack::get().port("MAILSTACK_IMAPS_PORT");
    let text = std::fs::read_to_string(&case.config.path).unwrap();
    let dead = free_port();
    let text = text.replace(&format!("port = {imaps}\n"), &format!("port = {dead}\n"));
    std::fs::write(&case.config.path, text).unwrap();
    let token = "it-http-token-0123456789";
    let base = enable_http(&case, &format!("bearer_token = \"{token}\""));

    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;

    for path in ["/", "/metrics", "/readyz"] {
        let (status, _) = get(&format!("{base}{path}"), None).await;
        assert_eq!(status, 401, "{path} without a token");
        let (status, _) = get(&format!("{base}{path}"), Some("it-http-token-wrong-value")).await;
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, _) = get(&format!("{base}/metrics"), Some(token)).await;
    assert_eq!(status, 200);
    let (status, page) = get(&format!("{base}/"), Some(token)).await;
    assert_eq!(status, 200);
    assert!(page.contains("support"));

    let (unready, _, body) = get_until(&format!("{base}/readyz"), Some(token), |status, _| {
        status == 503
    })
    .await;
    assert!(unready, "/readyz stayed ready: {body}\n{}", running.log());
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "unready");
    assert_eq!(ready["database"]["ok"], true, "the database is fine");
    assert_eq!(ready["mailboxes"][0]["state"], "retrying");
    assert!(
        ready["mailboxes"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{body}"
    );
    assert!(!body.contains(token));

    let (status, _) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success());
}

#[tokio::test]
async fn json_log_lines_carry_mailbox_uid_message_id_and_ticket() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let (raw, message_id) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;

    let out = case.run(&["--log-format", "json", "once"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
    }
    let ticket = lines
        .iter()
        .find(|l| l["message"] == "new ticket")
        .unwrap_or_else(|| panic!("no `new ticket` line:\n{stderr}"));
    assert_eq!(ticket["mailbox"], "support", "{ticket}");
    assert_eq!(ticket["folder"], "INBOX", "{ticket}");
    assert!(ticket["uid"].as_u64().is_some_and(|u| u > 0), "{ticket}");
    assert_eq!(ticket["message_id"], message_id.as_str(), "{ticket}");
    assert!(ticket["ticket_id"].as_i64().is_some(), "{ticket}");
    assert!(
        ticket["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with("TCK-")),
        "{ticket}"
    );
    assert_eq!(ticket["level"], "INFO");
    assert!(
        !stderr.contains(&case.entra.secret),
        "the client secret was logged"
    );
}

#[tokio::test]
async fn the_oldest_unprocessed_message_ages_while_intake_is_stuck_and_clears_after() {
    let case = Case::new(Backend::Sqlite, "", "implicit").await;
    let base = enable_http(&case, "");
    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;
    let ready = case
        .wait_for_count(
            "SELECT COUNT(*) FROM mailbox_state",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert!(ready, "no first sweep: {}", running.log());

    // The database refuses to store messages (as a broken schema or disk would): the sweep
    // lists the new mail, then fails; the mail waits.
    let pool = case.db.pool().await;
    sqlx::query("ALTER TABLE messages RENAME TO messages_away")
        .execute(&pool)
        .await
        .unwrap();
    let (raw, _) = unique_fixture("plain.eml");
    deliver_lmtp(&case.mailbox, "alice@customer.test", &raw).await;
    let series = r#"mailintake_oldest_unprocessed_age_seconds{mailbox="support"}"#;
    let (aged, _, metrics) = get_until(&format!("{base}/metrics"), None, |_, body| {
        sample(body, series) >= Some(2.0)
    })
    .await;
    assert!(
        aged,
        "the waiting message did not age:\n{metrics}\n{}",
        running.log()
    );
    let (_, page) = get(&format!("{base}/"), None).await;
    assert!(page.contains("s old</td>"), "{page}");
    // No Junk folder on this mailbox: the page says so and still renders.
    let (checked, _, page) = get_until(&format!("{base}/"), None, |_, body| {
        body.contains("no folder Junk (junk_folder)")
    })
    .await;
    assert!(checked, "{page}");

    sqlx::query("ALTER TABLE messages_away RENAME TO messages")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (caught_up, _, metrics) = get_until(&format!("{base}/metrics"), None, |_, body| {
        sample(body, series) == Some(0.0)
            && sample(
                body,
                r#"mailintake_messages_total{mailbox="support",outcome="ticket"}"#,
            ) == Some(1.0)
    })
    .await;
    assert!(caught_up, "{metrics}\n{}", running.log());
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}
