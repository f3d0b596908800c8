//! HTTP tests: start the fake on 127.0.0.1:0 and talk HTTP to it as the product would.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{
    AadsError, AccessTokenSpec, Client, Config, FakeEntra, Fault, MailService, RequestOutcome,
    SigningKey, User,
};
use base64::Engine as _;
use serde_json::Value;

const TENANT: &str = "8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10";
const APP: &str = "3f7e2c1a-9d4b-4e8f-a6c5-0b1d2e3f4a5b";
const APP_SECRET: &str = "demo-secret-value";
const PUBLIC: &str = "b7d4e9f0-2c1a-4b3d-8e5f-6a7b8c9d0e1f";
const CERT_APP: &str = "5a6b7c8d-1e2f-4a3b-9c4d-5e6f7a8b9c0d";
const AGENT: &str = "agent@helpdesk.test";
const EXCHANGE_DEFAULT: &str = "https://outlook.office365.com/.default";
const IMAP_SMTP_OFFLINE: &str = "https://outlook.office365.com/IMAP.AccessAsUser.All https://outlook.office365.com/SMTP.Send offline_access";

/// One key for all tests: RSA generation is slow on a busy machine.
fn key() -> SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("generate key"))
        .clone()
}

/// The key whose certificate `CERT_APP` is registered with.
fn client_cert_key() -> SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("generate key"))
        .clone()
}

fn test_config() -> Config {
    Config::example()
        .with_client(
            Client::with_certificate(CERT_APP, "cert-app", &client_cert_key().certificate_pem())
                .with_app_roles(&["IMAP.AccessAsApp"])
                .with_mailboxes(&["support@helpdesk.test"]),
        )
        .with_user(User {
            mfa_required: true,
            ..User::new("mfa@helpdesk.test", "pw")
        })
        .with_user(User {
            disabled: true,
            ..User::new("gone@helpdesk.test", "pw")
        })
}

async fn start() -> FakeEntra {
    start_with(test_config()).await
}

async fn start_with(config: Config) -> FakeEntra {
    FakeEntra::start(config, key(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start fake-entra")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http().post(url).form(form).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.expect("json body");
    (status, body)
}

async fn token(entra: &FakeEntra, form: &[(&str, &str)]) -> (u16, Value) {
    post_form(&entra.token_url(), form).await
}

async fn app_token(entra: &FakeEntra) -> (u16, Value) {
    token(
        entra,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", APP_SECRET),
            ("scope", EXCHANGE_DEFAULT),
        ],
    )
    .await
}

async fn ropc(entra: &FakeEntra, user: &str, password: &str, scope: &str) -> (u16, Value) {
    token(
        entra,
        &[
            ("grant_type", "password"),
            ("client_id", PUBLIC),
            ("username", user),
            ("password", password),
            ("scope", scope),
        ],
    )
    .await
}

fn keys_of(body: &Value) -> BTreeSet<String> {
    body.as_object().unwrap().keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Checks Entra's error body shape and returns it for further checks.
#[track_caller]
fn assert_aad_error(status: u16, body: &Value, want_status: u16, want_error: &str, want_code: u32) {
    assert_eq!(status, want_status, "status of {body}");
    assert_eq!(body["error"], want_error, "{body}");
    assert_eq!(
        body["error_codes"],
        serde_json::json!([want_code]),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{want_code}: ")),
        "{description}"
    );
    for field in ["Trace ID: ", "Correlation ID: ", "Timestamp: "] {
        assert!(description.contains(field), "{description}");
    }
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={want_code}")
    );
    let timestamp = body["timestamp"].as_str().unwrap();
    assert_eq!(timestamp.len(), "2026-11-23 17:50:00Z".len(), "{timestamp}");
    assert!(timestamp.ends_with('Z'));
    assert_eq!(body["trace_id"].as_str().unwrap().len(), 36);
    assert_eq!(body["correlation_id"].as_str().unwrap().len(), 36);
}

async fn tokeninfo(entra: &FakeEntra, query: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}?{query}", entra.tokeninfo_url()))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

// --- client credentials ---

#[tokio::test]
async fn client_credentials_success_has_entras_shape() {
    let entra = start().await;
    let (status, body) = app_token(&entra).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys_of(&body),
        set(&["token_type", "expires_in", "ext_expires_in", "access_token"])
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let access_token = body["access_token"].as_str().unwrap();
    let header = jwt_part(access_token, 0);
    assert_eq!(keys_of(&header), set(&["typ", "alg", "x5t", "kid"]));
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], entra.signing_key().kid());
    let claims = jwt_part(access_token, 1);
    assert_eq!(claims["aud"], "https://outlook.office365.com");
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], APP);
    assert_eq!(claims["app_displayname"], "mailintake-demo");
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["appidacr"], "1");
    assert_eq!(
        claims["roles"],
        serde_json::json!(["IMAP.AccessAsApp", "SMTP.SendAsApp"])
    );
    assert!(claims.get("scp").is_none() && claims.get("upn").is_none());
    assert_eq!(claims["oid"], claims["sub"]);
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!((3599..=3599 + 300 + 2).contains(&lifetime), "{lifetime}");
    // The tenant's domain works in place of its GUID.
    let (status, _) = post_form(
        &format!("{}/helpdesk.test/oauth2/v2.0/token", entra.base_url()),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", APP_SECRET),
            ("scope", EXCHANGE_DEFAULT),
        ],
    )
    .await;
    assert_eq!(status, 200);
}

/// Form parameters, then the expected status, `error` and AADSTS code.
type ErrorCase = (Vec<(&'static str, &'static str)>, u16, &'static str, u32);

#[tokio::test]
async fn client_credentials_errors_are_entras() {
    let entra = start().await;
    let cases: Vec<ErrorCase> = vec![
        // Wrong secret.
        (
            vec![
                ("client_id", APP),
                ("client_secret", "nope"),
                ("scope", EXCHANGE_DEFAULT),
            ],
            401,
            "invalid_client",
            7000215,
        ),
        // Unknown application.
        (
            vec![
                ("client_id", "11111111-2222-4333-8444-555555555555"),
                ("client_secret", "x"),
                ("scope", EXCHANGE_DEFAULT),
            ],
            400,
            "unauthorized_client",
            700016,
        ),
        // No credential.
        (
            vec![("client_id", APP), ("scope", EXCHANGE_DEFAULT)],
            401,
            "invalid_client",
            7000218,
        ),
        // A delegated scope in an app-only flow.
        (
            vec![
                ("client_id", APP),
                ("client_secret", APP_SECRET),
                ("scope", "https://outlook.office365.com/IMAP.AccessAsApp"),
            ],
            400,
            "invalid_scope",
            1002012,
        ),
        // Another resource.
        (
            vec![
                ("client_id", APP),
                ("client_secret", APP_SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
            400,
            "invalid_resource",
            500011,
        ),
        // No scope.
        (
            vec![("client_id", APP), ("client_secret", APP_SECRET)],
            400,
            "invalid_request",
            900144,
        ),
        // A public client has no credential to send.
        (
            vec![
                ("client_id", PUBLIC),
                ("client_secret", "x"),
                ("scope", EXCHANGE_DEFAULT),
            ],
            401,
            "invalid_client",
            700025,
        ),
    ];
    for (mut form, want_status, want_error, want_code) in cases {
        form.push(("grant_type", "client_credentials"));
        let (status, body) = token(&entra, &form).await;
        assert_aad_error(status, &body, want_status, want_error, want_code);
    }
    let description = app_token_with_secret(&entra, "nope").await;
    assert!(description.contains(&format!("for a secret added to app '{APP}'")));

    // Unknown tenant, and app-only on /common and /organizations.
    for (tenant, code) in [
        ("contoso.example", 90002),
        ("common", 9001023),
        ("organizations", 50059),
    ] {
        let (status, body) = post_form(
            &format!("{}/{tenant}/oauth2/v2.0/token", entra.base_url()),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", APP_SECRET),
                ("scope", EXCHANGE_DEFAULT),
            ],
        )
        .await;
        assert_aad_error(status, &body, 400, "invalid_request", code);
    }

    // Unsupported grant type, missing grant type.
    let (status, body) = token(&entra, &[("grant_type", "implicit"), ("client_id", APP)]).await;
    assert_aad_error(status, &body, 400, "unsupported_grant_type", 70003);
    let (status, body) = token(&entra, &[("client_id", APP)]).await;
    assert_aad_error(status, &body, 400, "invalid_request", 900144);
}

async fn app_token_with_secret(entra: &FakeEntra, secret: &str) -> String {
    let (_, body) = token(
        entra,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", secret),
            ("scope", EXCHANGE_DEFAULT),
        ],
    )
    .await;
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn http_basic_client_authentication_is_ignored_like_entra() {
    let entra = start().await;
    let basic = |form: &'static [(&'static str, &'static str)]| {
        http()
            .post(entra.token_url())
            .basic_auth(APP, Some(APP_SECRET))
            .form(form)
            .send()
    };
    let response = basic(&[
        ("grant_type", "client_credentials"),
        ("scope", EXCHANGE_DEFAULT),
    ])
    .await
    .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_aad_error(status, &body, 400, "invalid_request", 900144);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("'client_id'")
    );
    let response = basic(&[
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("scope", EXCHANGE_DEFAULT),
    ])
    .await
    .unwrap();
    let status = response.status().as_u16();
    assert_aad_error(
        status,
        &response.json().await.unwrap(),
        401,
        "invalid_client",
        7000218,
    );
}

#[tokio::test]
async fn correlation_id_echoes_client_request_id_and_get_is_refused() {
    let entra = start().await;
    let correlation = "0f0e0d0c-0b0a-4909-8807-060504030201";
    let response = http()
        .post(entra.token_url())
        .header("client-request-id", correlation)
        .form(&[("grant_type", "client_credentials"), ("client_id", APP)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store, no-cache");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["correlation_id"], correlation);

    let response = http().get(entra.token_url()).send().await.unwrap();
    let status = response.status().as_u16();
    assert_aad_error(
        status,
        &response.json().await.unwrap(),
        400,
        "invalid_request",
        900561,
    );
}

#[tokio::test]
async fn expired_secret_and_rotation_at_run_time() {
    let entra = start().await;
    assert!(entra.update_client(APP, |c| c.secret_expired = true));
    let (status, body) = app_token(&entra).await;
    assert_aad_error(status, &body, 401, "invalid_client", 7000222);

    assert!(entra.update_client(APP, |c| {
        c.secret_expired = false;
        c.secret = Some("rotated".to_owned());
    }));
    let (status, body) = app_token(&entra).await;
    assert_aad_error(status, &body, 401, "invalid_client", 7000215);
    assert!(app_token_with_secret(&entra, "rotated").await.is_empty());
    assert!(!entra.update_client("no-such-client", |_| {}));
}

#[tokio::test]
async fn app_without_admin_consent_gets_a_token_without_roles() {
    let entra = start().await;
    entra.update_client(APP, |c| c.consent_granted = false);
    let (status, body) = app_token(&entra).await;
    assert_eq!(status, 200);
    let access_token = body["access_token"].as_str().unwrap();
    assert!(jwt_part(access_token, 1).get("roles").is_none());
    let (status, body) = tokeninfo(
        &entra,
        &format!("user=support@helpdesk.test&service=imap&access_token={access_token}"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("IMAP.AccessAsApp")
    );
}

// --- certificate credentials ---

#[tokio::test]
async fn client_assertion_with_registered_certificate() {
    let entra = start().await;
    let assertion = client_cert_key()
        .sign_client_assertion(CERT_APP, &entra.token_url())
        .unwrap();
    let form = |assertion: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", CERT_APP.to_owned()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion", assertion.to_owned()),
            ("scope", EXCHANGE_DEFAULT.to_owned()),
        ]
    };
    let token_url = entra.token_url();
    let send = |form: Vec<(&'static str, String)>| {
        let token_url = token_url.clone();
        async move {
            let response = http().post(token_url).form(&form).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = send(form(&assertion)).await;
    assert_eq!(status, 200, "{body}");
    let claims = jwt_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["appidacr"], "2");
    assert_eq!(claims["roles"], serde_json::json!(["IMAP.AccessAsApp"]));

    // Signed by a key whose certificate is not registered.
    let stranger = key()
        .sign_client_assertion(CERT_APP, &entra.token_url())
        .unwrap();
    let (status, body) = send(form(&stranger)).await;
    assert_aad_error(status, &body, 401, "invalid_client", 700027);

    // Meant for another token endpoint.
    let elsewhere = client_cert_key()
        .sign_client_assertion(
            CERT_APP,
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        )
        .unwrap();
    let (status, body) = send(form(&elsewhere)).await;
    assert_aad_error(status, &body, 400, "invalid_request", 50027);

    // Issued for another client.
    let other = client_cert_key()
        .sign_client_assertion(APP, &entra.token_url())
        .unwrap();
    let (status, body) = send(form(&other)).await;
    assert_aad_error(status, &body, 401, "invalid_client", 700021);

    // Garbage.
    let (status, body) = send(form("not-a-jwt")).await;
    assert_aad_error(status, &body, 400, "invalid_request", 50027);
}

// --- ROPC ---

#[tokio::test]
async fn password_grant_success_with_and_without_offline_access() {
    let entra = start().await;
    let (status, body) = ropc(&entra, AGENT, "agent-password", IMAP_SMTP_OFFLINE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys_of(&body),
        set(&[
            "token_type",
            "scope",
            "expires_in",
            "ext_expires_in",
            "access_token",
            "refresh_token"
        ])
    );
    assert_eq!(
        body["scope"],
        "https://outlook.office365.com/IMAP.AccessAsUser.All https://outlook.office365.com/SMTP.Send"
    );
    let claims = jwt_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["idtyp"], "user");
    assert_eq!(claims["scp"], "IMAP.AccessAsUser.All SMTP.Send");
    assert_eq!(claims["upn"], AGENT);
    assert_eq!(claims["unique_name"], AGENT);
    assert_eq!(claims["name"], "agent");
    assert_eq!(claims["appidacr"], "0");
    assert!(claims.get("roles").is_none());

    let (status, body) = ropc(
        &entra,
        "AGENT@helpdesk.test",
        "agent-password",
        "https://outlook.office365.com/IMAP.AccessAsUser.All openid profile",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    let id_token = jwt_part(body["id_token"].as_str().unwrap(), 1);
    assert_eq!(id_token["aud"], PUBLIC);
    assert_eq!(id_token["preferred_username"], AGENT);

    // `.default` means all the app's delegated permissions; /common works for users.
    let (status, body) = post_form(
        &format!("{}/common/oauth2/v2.0/token", entra.base_url()),
        &[
            ("grant_type", "password"),
            ("client_id", PUBLIC),
            ("username", AGENT),
            ("password", "agent-password"),
            ("scope", EXCHANGE_DEFAULT),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        jwt_part(body["access_token"].as_str().unwrap(), 1)["scp"],
        "IMAP.AccessAsUser.All SMTP.Send"
    );
}

#[tokio::test]
async fn password_grant_errors_are_entras() {
    let entra = start().await;
    let imap = "https://outlook.office365.com/IMAP.AccessAsUser.All";
    let (status, body) = ropc(&entra, AGENT, "wrong", imap).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 50126);
    let (status, body) = ropc(&entra, "nobody@helpdesk.test", "x", imap).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 50034);
    let (status, body) = ropc(&entra, "gone@helpdesk.test", "pw", imap).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 50057);
    let (status, body) = ropc(&entra, "mfa@helpdesk.test", "pw", imap).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 50076);
    assert_eq!(body["suberror"], "basic_action");
    let (status, body) = ropc(
        &entra,
        AGENT,
        "agent-password",
        "https://outlook.office365.com/Nope.All",
    )
    .await;
    assert_aad_error(status, &body, 400, "invalid_scope", 70011);
    let (status, body) = ropc(&entra, AGENT, "agent-password", "IMAP.AccessAsUser.All").await;
    assert_aad_error(status, &body, 400, "invalid_scope", 70011);
    // POP is a known permission the app registration does not ask for.
    let (status, body) = ropc(
        &entra,
        AGENT,
        "agent-password",
        "https://outlook.office365.com/POP.AccessAsUser.All",
    )
    .await;
    assert_aad_error(status, &body, 400, "invalid_grant", 65001);
    assert_eq!(body["suberror"], "consent_required");

    entra.update_user(AGENT, |u| u.consent_granted = false);
    let (status, body) = ropc(&entra, AGENT, "agent-password", imap).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 65001);
    entra.update_user(AGENT, |u| u.consent_granted = true);

    // A confidential client must authenticate for ROPC too.
    let (status, body) = token(
        &entra,
        &[
            ("grant_type", "password"),
            ("client_id", APP),
            ("username", AGENT),
            ("password", "agent-password"),
            ("scope", imap),
        ],
    )
    .await;
    assert_aad_error(status, &body, 401, "invalid_client", 7000218);
    // A public client must not send a secret.
    let (status, body) = token(
        &entra,
        &[
            ("grant_type", "password"),
            ("client_id", PUBLIC),
            ("client_secret", "x"),
            ("username", AGENT),
            ("password", "agent-password"),
            ("scope", imap),
        ],
    )
    .await;
    assert_aad_error(status, &body, 401, "invalid_client", 700025);
}

// --- refresh tokens ---

#[tokio::test]
async fn refresh_token_rotates_and_can_be_revoked_or_expire() {
    let entra = start().await;
    let (_, first) = ropc(&entra, AGENT, "agent-password", IMAP_SMTP_OFFLINE).await;
    let first_rt = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |rt: String| {
        let entra = &entra;
        async move {
            token(
                entra,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", PUBLIC),
                    ("refresh_token", &rt),
                    (
                        "scope",
                        "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access",
                    ),
                ],
            )
            .await
        }
    };
    let (status, second) = refresh(first_rt.clone()).await;
    assert_eq!(status, 200, "{second}");
    let second_rt = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_rt, first_rt);
    assert_eq!(
        second["scope"],
        "https://outlook.office365.com/IMAP.AccessAsUser.All"
    );
    // The old one stays valid.
    assert_eq!(refresh(first_rt.clone()).await.0, 200);

    // Without scope: the original grant's permissions.
    let (status, body) = token(
        &entra,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", PUBLIC),
            ("refresh_token", &second_rt),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        jwt_part(body["access_token"].as_str().unwrap(), 1)["scp"],
        "IMAP.AccessAsUser.All"
    );

    let (status, body) = refresh("1.AQsA-not-a-token".to_owned()).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 70000);

    assert!(entra.revoke_refresh_tokens(AGENT) >= 3);
    let (status, body) = refresh(second_rt).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 50173);

    let (_, fresh) = ropc(&entra, AGENT, "agent-password", IMAP_SMTP_OFFLINE).await;
    let fresh_rt = fresh["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        refresh(fresh_rt.clone()).await.0,
        200,
        "issued after the revocation"
    );
    entra.expire_refresh_tokens(AGENT);
    let (status, body) = refresh(fresh_rt).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 700082);
}

// --- device code ---

async fn start_device_flow(entra: &FakeEntra) -> Value {
    let (status, body) = post_form(
        &entra.device_code_url(),
        &[("client_id", PUBLIC), ("scope", IMAP_SMTP_OFFLINE)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn poll(entra: &FakeEntra, device_code: &str) -> (u16, Value) {
    token(
        entra,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", PUBLIC),
            ("device_code", device_code),
        ],
    )
    .await
}

#[tokio::test]
async fn device_code_pending_slow_down_approve() {
    let entra = start().await;
    let flow = start_device_flow(&entra).await;
    assert_eq!(
        keys_of(&flow),
        set(&[
            "device_code",
            "user_code",
            "verification_uri",
            "expires_in",
            "interval",
            "message"
        ])
    );
    assert_eq!(
        flow["verification_uri"],
        "https://microsoft.com/devicelogin"
    );
    assert_eq!(flow["expires_in"], 900);
    assert_eq!(flow["interval"], 5);
    let user_code = flow["user_code"].as_str().unwrap();
    assert!(flow["message"].as_str().unwrap().contains(user_code));
    assert_eq!(entra.pending_device_codes(), vec![user_code.to_owned()]);
    let device_code = flow["device_code"].as_str().unwrap();

    let (status, body) = poll(&entra, device_code).await;
    assert_aad_error(status, &body, 400, "authorization_pending", 70016);
    // Polled again at once, well within the 5 s interval.
    let (status, body) = poll(&entra, device_code).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "slow_down");

    assert!(!entra.approve_device_code(user_code, "nobody@helpdesk.test"));
    assert!(entra.approve_device_code(&user_code.to_lowercase(), AGENT));
    let (status, body) = poll(&entra, device_code).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string());
    assert_eq!(
        jwt_part(body["access_token"].as_str().unwrap(), 1)["upn"],
        AGENT
    );

    // A device code is redeemed once.
    let (status, body) = poll(&entra, device_code).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 70000);
    let (status, body) = poll(&entra, "DAQABAAEAAAD-unknown").await;
    assert_aad_error(status, &body, 400, "bad_verification_code", 70018);
}

#[tokio::test]
async fn device_code_declined_and_expired() {
    let entra = start().await;
    let flow = start_device_flow(&entra).await;
    assert!(entra.decline_device_code(flow["user_code"].as_str().unwrap()));
    let (status, body) = poll(&entra, flow["device_code"].as_str().unwrap()).await;
    assert_aad_error(status, &body, 400, "authorization_declined", 70000);

    entra.update_config(|c| c.device_code_lifetime = Duration::ZERO);
    let flow = start_device_flow(&entra).await;
    let (status, body) = poll(&entra, flow["device_code"].as_str().unwrap()).await;
    assert_aad_error(status, &body, 400, "expired_token", 70020);
    assert!(!entra.approve_device_code(flow["user_code"].as_str().unwrap(), AGENT));
}

#[tokio::test]
async fn device_login_endpoint_approves_for_shell_scripts() {
    let entra = start().await;
    let flow = start_device_flow(&entra).await;
    let (status, _) = post_form(
        &format!("{}/_fake/devicelogin", entra.base_url()),
        &[
            ("user_code", flow["user_code"].as_str().unwrap()),
            ("upn", AGENT),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        poll(&entra, flow["device_code"].as_str().unwrap()).await.0,
        200
    );
}

// --- tokeninfo ---

#[tokio::test]
async fn tokeninfo_accepts_app_token_for_permitted_mailboxes_only() {
    let entra = start().await;
    let (_, body) = app_token(&entra).await;
    let at = body["access_token"].as_str().unwrap();
    let (status, info) = tokeninfo(
        &entra,
        &format!("user=support@helpdesk.test&service=imap&access_token={at}"),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["active"], true);
    assert_eq!(info["email"], "support@helpdesk.test");
    // Any parameter order, case-insensitive addresses, service missing = imap, smtp via SendAsApp.
    for query in [
        format!("access_token={at}&user=SALES@helpdesk.test"),
        format!("service=submission&access_token={at}&user=sales@helpdesk.test"),
    ] {
        let (status, info) = tokeninfo(&entra, &query).await;
        assert_eq!(status, 200, "{query}: {info}");
    }
    // Wrong mailbox, wrong permission, unknown service, no user.
    for (query, reason) in [
        (
            format!("user=agent@helpdesk.test&service=imap&access_token={at}"),
            "no permission on mailbox",
        ),
        (
            format!("user=support@helpdesk.test&service=pop3&access_token={at}"),
            "POP.AccessAsApp",
        ),
        (
            format!("user=support@helpdesk.test&service=ftp&access_token={at}"),
            "unknown service",
        ),
        (format!("access_token={at}"), "needs the mailbox"),
    ] {
        let (status, body) = tokeninfo(&entra, &query).await;
        assert_eq!(status, 401, "{query}");
        assert_eq!(body["error"], "invalid_token");
        assert!(
            body["error_description"].as_str().unwrap().contains(reason),
            "{body}"
        );
    }
    // The token in a header.
    let response = http()
        .get(format!(
            "{}?user=support@helpdesk.test&service=smtp",
            entra.tokeninfo_url()
        ))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The service as Dovecot's header.
    let response = http()
        .get(format!(
            "{}?user=support@helpdesk.test&access_token={at}",
            entra.tokeninfo_url()
        ))
        .header("X-Dovecot-Auth-Service", "pop3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn tokeninfo_checks_delegated_scope_and_full_access() {
    let entra = start().await;
    let (_, body) = ropc(
        &entra,
        AGENT,
        "agent-password",
        "https://outlook.office365.com/IMAP.AccessAsUser.All",
    )
    .await;
    let at = body["access_token"].as_str().unwrap();
    for (user, service, want) in [
        ("agent@helpdesk.test", "imap", 200),
        ("support@helpdesk.test", "imap", 200), // FullAccess
        ("sales@helpdesk.test", "imap", 401),   // no FullAccess
        ("agent@helpdesk.test", "smtp", 401),   // no SMTP.Send in scp
    ] {
        let (status, body) = tokeninfo(
            &entra,
            &format!("user={user}&service={service}&access_token={at}"),
        )
        .await;
        assert_eq!(status, want, "{user} {service}: {body}");
    }
    // Without `user` (Dovecot's plain tokeninfo_url), `email` is the token's own UPN.
    let (status, body) = tokeninfo(&entra, &format!("access_token={at}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["email"], AGENT);
}

#[tokio::test]
async fn tokeninfo_rejects_expired_foreign_and_malformed_tokens() {
    let entra = start().await;
    let expired = entra
        .issue_access_token(AccessTokenSpec::app(APP).expired())
        .unwrap();
    let (status, body) = tokeninfo(
        &entra,
        &format!("user=support@helpdesk.test&access_token={expired}"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    let wrong_audience = entra
        .issue_access_token(AccessTokenSpec::app(APP).with_audience("https://graph.microsoft.com"))
        .unwrap();
    let (status, body) = tokeninfo(
        &entra,
        &format!("user=support@helpdesk.test&access_token={wrong_audience}"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("audience"),
        "{body}"
    );

    // Signed by an instance with another key.
    let stranger = FakeEntra::start(
        test_config(),
        client_cert_key(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let foreign = stranger
        .issue_access_token(AccessTokenSpec::app(APP))
        .unwrap();
    let (status, body) = tokeninfo(
        &entra,
        &format!("user=support@helpdesk.test&access_token={foreign}"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("key id"),
        "{body}"
    );

    // A tampered payload.
    let good = entra.issue_access_token(AccessTokenSpec::app(APP)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap()
        .replace("sales@", "agent@"),
    );
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    let (status, body) = tokeninfo(
        &entra,
        &format!("user=agent@helpdesk.test&access_token={tampered}"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{body}"
    );

    for query in [
        "user=a@b&access_token=abc",
        "user=a@b&access_token=a.b.c",
        "user=a@b",
    ] {
        let (status, _) = tokeninfo(&entra, query).await;
        assert_eq!(status, 401, "{query}");
    }
}

#[tokio::test]
async fn tokens_from_another_instance_with_the_same_key_are_accepted() {
    let issuer = start().await;
    let validator = start_with(Config::new(
        "99999999-8888-4777-8666-555555555555",
        &["other.test"],
    ))
    .await;
    let (_, body) = app_token(&issuer).await;
    let at = body["access_token"].as_str().unwrap();
    let (status, info) = tokeninfo(
        &validator,
        &format!("user=support@helpdesk.test&service=imap&access_token={at}"),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    assert!(
        validator
            .validate_access_token(at, Some("sales@helpdesk.test"), MailService::Smtp)
            .is_ok()
    );
    issuer.shutdown().await;
    validator.shutdown().await;
}

// --- discovery ---

#[tokio::test]
async fn discovery_points_back_at_the_server() {
    let entra = start().await;
    let config: Value = http()
        .get(format!(
            "{}/v2.0/.well-known/openid-configuration",
            entra.authority()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["token_endpoint"], entra.token_url());
    assert_eq!(
        config["device_authorization_endpoint"],
        entra.device_code_url()
    );
    assert_eq!(config["issuer"], format!("{}/v2.0", entra.authority()));
    let jwks: Value = http()
        .get(config["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], entra.signing_key().kid());
    assert_eq!(jwk["x5t"], entra.signing_key().kid());
    assert_eq!(jwk["e"], "AQAB");
    let response = http()
        .get(format!(
            "{}/nowhere.test/discovery/v2.0/keys",
            entra.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

// --- faults and the request log ---

#[tokio::test]
async fn injected_faults_fail_the_next_requests_then_stop() {
    let entra = start().await;
    entra.inject(Fault::Status(503), 2);
    entra.inject(
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
        1,
    );
    entra.inject(Fault::AadsError(AadsError::mfa_required()), 1);
    assert_eq!(app_token(&entra).await.0, 503);
    assert_eq!(app_token(&entra).await.0, 503);
    let response = http()
        .post(entra.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let (status, body) = app_token(&entra).await;
    assert_aad_error(status, &body, 400, "invalid_grant", 50076);
    assert_eq!(app_token(&entra).await.0, 200);

    let records = entra.requests();
    assert_eq!(records.len(), 5);
    assert!(matches!(
        records[0].outcome,
        RequestOutcome::Fault(Fault::Status(503))
    ));
    assert_eq!(records[4].outcome, RequestOutcome::Issued);
    assert_eq!(records[4].grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(records[4].client_id.as_deref(), Some(APP));
    entra.clear_requests();
    assert!(entra.requests().is_empty());
}

#[tokio::test]
async fn an_outage_fails_every_request_for_its_duration_then_the_next_one_begins() {
    let entra = start().await;
    let started = Instant::now();
    // Windows long enough that a loaded machine still makes its three requests inside the first.
    entra.inject_outage(Fault::Status(500), Duration::from_millis(2000));
    entra.inject_outage(
        Fault::TooManyRequests {
            retry_after_secs: 3,
        },
        Duration::from_millis(2000),
    );
    // However often the client asks during the first window: 500.
    for _ in 0..3 {
        assert_eq!(app_token(&entra).await.0, 500);
    }
    while started.elapsed() < Duration::from_millis(2050) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = http()
        .post(entra.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    while started.elapsed() < Duration::from_millis(4050) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app_token(&entra).await.0, 200);
    // clear_faults ends an outage at once.
    entra.inject_outage(Fault::Status(503), Duration::from_secs(60));
    assert_eq!(app_token(&entra).await.0, 503);
    entra.clear_faults();
    assert_eq!(app_token(&entra).await.0, 200);
}

#[tokio::test]
async fn delay_and_hang_faults() {
    let entra = start().await;
    entra.inject(Fault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    assert_eq!(app_token(&entra).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    entra.inject(Fault::Hang, 1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = client
        .post(entra.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    // Shutdown does not wait for the hanging request forever.
    let started = Instant::now();
    entra.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn only_loopback_is_allowed() {
    let result = FakeEntra::start(Config::example(), key(), "0.0.0.0:0".parse().unwrap()).await;
    assert!(result.unwrap_err().to_string().contains("loopback"));
}
