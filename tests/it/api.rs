//! The HTTP API for outgoing mail (`POST /v1/messages`, `GET /v1/messages/{id}`) of a real
//! `mailintake run`, sending through the stack's Postfix: a ticket reply arrives threaded,
//! idempotency and conflicts, the tokens, the size limits; and the contract test, which checks
//! the running server against `docs/openapi.yaml` with schemathesis.

use std::time::Duration;

use serde_json::{Value, json};

use crate::acks::{connect_first, customer_mail};
use crate::helpers::*;
use crate::ops::{enable_http, get, get_until, wait_until_listening};
use crate::outgoing::{arrived, inbox};

const API_TOKEN: &str = "it-api-token-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An answer: status, headers, body as JSON (`Null` when it is not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

/// POSTs `body` (bytes as given) to `{base}/v1/messages` with `token` as bearer.
async fn post_raw(base: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
    let mut request = client()
        .post(format!("{base}/v1/messages"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

async fn post(base: &str, body: &Value) -> Answer {
    post_raw(base, Some(API_TOKEN), serde_json::to_vec(body).unwrap()).await
}

/// The status document of message `id`.
async fn status_of(base: &str, id: i64) -> (u16, Value) {
    let (status, body) = get(&format!("{base}/v1/messages/{id}"), Some(API_TOKEN)).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A ticket opened by the customer's mail, answered through `POST /v1/messages` with the ticket
/// alone: 202 with the id; the reply arrives in the customer's inbox threaded to the ticket and
/// its GET says `sent` with the server's 250. The same key and request again: 200 and the same
/// id; the same key with another text: 409 naming that id. One message arrives.
///
/// Before this change, `/v1/messages` did not exist (404).
async fn a_ticket_reply_through_the_api(backend: Backend) {
    let support = unique_mailbox();
    let customer = format!("{}@customer.test", unique("alice"));
    let entra = Entra::start(&[&support, &customer]).await;
    let case = Case::build(backend, &smtp_keys(), "implicit", support.clone(), entra).await;
    connect_first(&case).await;
    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        &support,
        &customer,
        &customer_mail(&customer, &support, "Printer on fire", &first, ""),
    )
    .await;
    let stdout = assert_ok(&case.run(&["once"]).await);
    assert!(stdout.contains("1 ticket(s)"), "{stdout}");

    let base = enable_http(&case, &format!("api_token = \"{API_TOKEN}\""));
    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;

    let request = json!({
        "mailbox": "support",
        "idempotency_key": "answer-1",
        "ticket": "TCK-000001",
        "text": "We are on it.",
    });
    let answer = post(&base, &request).await;
    assert_eq!(answer.status, 202, "{}\n{}", answer.json, running.log());
    let id = answer.json["id"].as_i64().expect("an id");
    assert_eq!(
        answer.headers["location"].to_str().unwrap(),
        format!("/v1/messages/{id}")
    );
    assert_eq!(answer.json["ticket"], "TCK-000001");
    assert_eq!(answer.json["submitted_via"], "api");
    assert_eq!(answer.json["kind"], "reply");
    let message_id = answer.json["message_id"].as_str().unwrap().to_string();

    let (sent, _, body) = get_until(
        &format!("{base}/v1/messages/{id}"),
        Some(API_TOKEN),
        |status, body| status == 200 && body.contains("\"state\":\"sent\""),
    )
    .await;
    assert!(sent, "not sent: {body}\n{}", running.log());
    let status: Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["smtp_response"]
            .as_str()
            .is_some_and(|r| r.starts_with("250")),
        "{status}"
    );
    assert!(status["sent_at"].is_string(), "{status}");
    assert_eq!(status["attempts"], 1, "{status}");
    assert_eq!(status["next_attempt_at"], Value::Null, "{status}");
    assert_eq!(status["message_id"], message_id.as_str());

    let (parsed, _) = arrived(&case.entra, &customer, &message_id).await;
    assert_eq!(parsed.subject, "[#TCK-000001] Re: Printer on fire");
    assert_eq!(parsed.in_reply_to, std::slice::from_ref(&first));
    assert_eq!(parsed.references, std::slice::from_ref(&first));
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND direction = 'outbound'")
            .await,
        1
    );

    // The same key and request: the same message, 200, in its current state.
    let again = post(&base, &request).await;
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.json["id"], id);
    assert_eq!(again.json["state"], "sent");
    // The same key, another text: 409 naming the first.
    let mut changed = request.clone();
    changed["text"] = json!("We are on it, corrected.");
    let conflict = post(&base, &changed).await;
    assert_eq!(conflict.status, 409, "{}", conflict.json);
    assert_eq!(conflict.json["existing_id"], id);
    assert_eq!(conflict.json["field"], "idempotency_key");
    assert!(
        conflict.json["error"]
            .as_str()
            .unwrap()
            .contains(&format!("outbox row {id}")),
        "{}",
        conflict.json
    );

    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE kind = 'reply'")
            .await,
        1
    );
    // Beside the ticket's acknowledgement, one reply.
    let replies: Vec<_> = inbox(&case.entra, &customer)
        .await
        .into_iter()
        .filter(|(_, raw)| raw.contains("We are on it"))
        .collect();
    assert_eq!(replies.len(), 1);
}

#[tokio::test]
async fn a_ticket_reply_posted_through_the_api_arrives_threaded_once_on_sqlite() {
    a_ticket_reply_through_the_api(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_ticket_reply_posted_through_the_api_arrives_threaded_once_on_postgres() {
    a_ticket_reply_through_the_api(Backend::Postgres).await;
}

/// The API's refusals: no or a wrong token is 401 with `WWW-Authenticate: Bearer` (the
/// monitoring token is no API token); an unknown id 404; a field to fix 422 naming it; a body
/// over the limit (the largest `max_send_bytes` as base64 plus 1 MiB) and a message over
/// `max_send_bytes` 413 — nothing is written for any of them.
///
/// Before this change, every one of these requests was a plain 404.
#[tokio::test]
async fn the_api_refuses_without_its_token_and_refuses_what_is_too_large_or_wrong() {
    let keys = format!("{}\nmax_send_bytes = 20000", smtp_keys());
    let case = Case::new(Backend::Sqlite, &keys, "implicit").await;
    let monitoring = "it-monitoring-token-0123456789";
    let base = enable_http(
        &case,
        &format!("api_token = \"{API_TOKEN}\"\nbearer_token = \"{monitoring}\""),
    );
    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;
    let good = json!({
        "mailbox": "support", "idempotency_key": "k1", "to": ["bob@customer.test"],
        "subject": "Hi", "text": "Hello",
    });
    let body = serde_json::to_vec(&good).unwrap();

    for token in [
        None,
        Some("it-api-token-wrong-value-0000"),
        Some(monitoring),
    ] {
        let answer = post_raw(&base, token, body.clone()).await;
        assert_eq!(answer.status, 401, "{token:?}: {}", answer.json);
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert!(answer.json["error"].as_str().unwrap().contains("api_token"));
        let (status, _) = get(&format!("{base}/v1/messages/1"), token).await;
        assert_eq!(status, 401, "{token:?}");
    }

    let (status, body404) = status_of(&base, 424242).await;
    assert_eq!(status, 404, "{body404}");
    assert!(body404["error"].as_str().unwrap().contains("424242"));
    let (status, _) = get(&format!("{base}/v1/messages/abc"), Some(API_TOKEN)).await;
    assert_eq!(status, 404);

    let mut bad = good.clone();
    bad["subject"] = json!("Hi\r\nBcc: eve@elsewhere.test");
    let answer = post(&base, &bad).await;
    assert_eq!(answer.status, 422, "{}", answer.json);
    assert_eq!(answer.json["field"], "subject");
    assert!(
        answer.json["problem"]
            .as_str()
            .unwrap()
            .contains("line break")
    );
    let mut bad = good.clone();
    bad["to"] = json!(["bob@customer.test", 7]);
    let answer = post(&base, &bad).await;
    assert_eq!(answer.status, 422, "{}", answer.json);
    assert_eq!(answer.json["field"], "to[1]");
    let mut bad = good.clone();
    bad["mailbox"] = json!("nobody");
    let answer = post(&base, &bad).await;
    assert_eq!(answer.status, 422, "{}", answer.json);
    assert_eq!(answer.json["field"], "mailbox");
    let answer = post_raw(&base, Some(API_TOKEN), b"{\"mailbox\": ".to_vec()).await;
    assert_eq!(answer.status, 400, "{}", answer.json);

    // A body over the limit: 20000 as base64 (26668) plus 1 MiB.
    let limit = 26_668 + (1 << 20);
    let mut huge = good.clone();
    huge["text"] = json!("x".repeat(limit + 10));
    let answer = post(&base, &huge).await;
    assert_eq!(answer.status, 413, "{}", answer.json);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .contains(&format!("larger than {limit} bytes")),
        "{}",
        answer.json
    );
    // A body within it whose message is over max_send_bytes.
    let mut large = good.clone();
    large["attachments"] = json!([{
        "filename": "big.bin", "content_type": "application/octet-stream",
        "content_base64": base64_of(&vec![b'x'; 30_000]),
    }]);
    let answer = post(&base, &large).await;
    assert_eq!(answer.status, 413, "{}", answer.json);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .contains("max_send_bytes (20000)"),
        "{}",
        answer.json
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM outbox").await, 0);

    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}

/// Without `api_token` the API is off: 403 naming the key to set, whatever the token; the
/// monitoring routes still answer.
///
/// Before this change: 404.
#[tokio::test]
async fn without_an_api_token_the_api_answers_403_naming_the_key() {
    let case = Case::new(Backend::Sqlite, &smtp_keys(), "implicit").await;
    let base = enable_http(&case, "");
    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;
    let answer = post_raw(&base, Some(API_TOKEN), b"{}".to_vec()).await;
    assert_eq!(answer.status, 403, "{}", answer.json);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .contains("http.api_token"),
        "{}",
        answer.json
    );
    let (status, body) = get(&format!("{base}/v1/messages/1"), None).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = get(&format!("{base}/metrics"), None).await;
    assert_eq!(status, 200);
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The contract test: schemathesis (pinned, from PyPI, in a venv `scripts/schemathesis.sh`
/// keeps) generates requests from `docs/openapi.yaml` (its examples, boundary values, fuzzed
/// and invalid data, and POST → GET through the file's links) against a real `mailintake run`
/// sending through the stack's Postfix, and checks every answer's status code, content type,
/// headers and body against the file. Any deviation fails the run.
#[tokio::test]
async fn the_running_api_answers_as_docs_openapi_yaml_says() {
    let keys = format!("{}\nallow_recipients = [\"*@example.com\"]", smtp_keys());
    let case = Case::new(Backend::Sqlite, &keys, "implicit").await;
    let base = enable_http(&case, &format!("api_token = \"{API_TOKEN}\""));
    let running = case.spawn_run();
    wait_until_listening(&base, &running).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(format!("{root}/scripts/schemathesis.sh"))
            .current_dir(root)
            .args([
                "--no-color",
                "--config-file",
                "tests/contract/schemathesis.toml",
            ])
            .args(["run", "docs/openapi.yaml", "--url", &base])
            .arg("--header")
            .arg(format!("Authorization: Bearer {API_TOKEN}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finished within 240 s")
    .expect("scripts/schemathesis.sh runs");
    let report = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
    // Shown with --no-capture (nextest shows it anyway when the test fails).
    println!("{report}");
    assert!(
        out.status.success(),
        "the server deviates from docs/openapi.yaml:\n{report}\n{}",
        running.log()
    );
    // It reached the real thing: the file's example was accepted and sent.
    assert!(
        case.wait_for_count(
            "SELECT COUNT(*) FROM outbox WHERE submitted_via = 'api' AND state = 'sent'",
            1,
            Duration::from_secs(20)
        )
        .await,
        "{report}"
    );
    let (status, log) = terminate(running, Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
}
