//! The token cache in-process against an in-process fake Entra ID: retries (5xx, 429 with
//! Retry-After, hangs) within a bounded time and never for refused credentials; single flight per
//! (identity, scope); renewal ahead of expiry; invalidation after a server's refusal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_entra::{AadsError, Client, Config as FakeConfig, FakeEntra, Fault};
use mailintake::config::{Config, Identity};
use mailintake::oauth::{RetryPolicy, TokenCache, TokenError};

use crate::helpers::{IMAP_ROLES, Stack, TENANT_ID, unique};

/// A fake Entra with one confidential client, and the identity that uses it.
pub struct Tenant {
    pub fake: FakeEntra,
    pub client_id: String,
    pub secret: String,
}

impl Tenant {
    pub async fn start(change: impl FnOnce(&mut FakeConfig)) -> Tenant {
        let client_id = guid();
        let secret = unique("secret-");
        let mut config = FakeConfig::new(TENANT_ID, &["helpdesk.test"]).with_client(
            Client::confidential(&client_id, "mailintake oauth tests", &secret)
                .with_app_roles(IMAP_ROLES),
        );
        change(&mut config);
        let fake = FakeEntra::start(
            config,
            Stack::get().signing_key(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("fake Entra starts");
        Tenant {
            fake,
            client_id,
            secret,
        }
    }

    /// The identity `app` with the given extra TOML lines (flow, credentials…), validated by the
    /// product's own config loader.
    pub fn identity(&self, keys: &str) -> Identity {
        identity_from(&format!(
            "client_id = \"{}\"\nauthority = \"{}\"\n{keys}",
            self.client_id,
            self.fake.authority()
        ))
    }

    /// The app-only identity with the right secret.
    pub fn app(&self) -> Identity {
        self.identity(&format!("client_secret = \"{}\"", self.secret))
    }

    pub fn n_requests(&self) -> usize {
        self.fake.requests().len()
    }
}

/// An identity named `app` from the TOML lines of its table.
pub fn identity_from(identity_keys: &str) -> Identity {
    let text = format!(
        "[token_store]\nkeys = [{{ id = \"k1\", key = \"{}\" }}]\n\n[identities.app]\n{identity_keys}\n\n[[mailboxes]]\nname = \"m\"\naddress = \"m@helpdesk.test\"\nidentity = \"app\"\nimap = {{ host = \"localhost\" }}\n",
        crate::flows::TOKEN_KEY
    );
    let config = Config::from_toml_str(&text, std::path::Path::new("."))
        .unwrap_or_else(|problems| panic!("{problems:?}\n{text}"));
    config.identity("app").clone()
}

/// A GUID-shaped client ID unique to the test.
pub fn guid() -> String {
    let hex = mailintake::ingest::sha256_hex(unique("client").as_bytes());
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Short waits so that retry tests take milliseconds, not seconds.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        total: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn server_errors_are_retried_until_a_token_comes() {
    let tenant = Tenant::start(|_| {}).await;
    tenant.fake.inject(Fault::Status(503), 1);
    tenant.fake.inject(Fault::Status(500), 1);
    let cache = TokenCache::with_retry_policy(fast_retries());
    cache
        .token(&tenant.app())
        .await
        .expect("a token after retries");
    assert_eq!(tenant.n_requests(), 3);
}

#[tokio::test]
async fn throttling_waits_for_retry_after() {
    let tenant = Tenant::start(|_| {}).await;
    tenant.fake.inject(
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
        1,
    );
    let cache = TokenCache::with_retry_policy(fast_retries());
    cache.token(&tenant.app()).await.expect("a token after 429");
    let requests = tenant.fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].status, 429);
    let waited = requests[1].at.duration_since(requests[0].at).unwrap();
    // The backoff alone would have waited at most 50 ms.
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
}

#[tokio::test]
async fn retry_after_beyond_the_budget_is_not_waited_for() {
    let tenant = Tenant::start(|_| {}).await;
    tenant.fake.inject(
        Fault::TooManyRequests {
            retry_after_secs: 3600,
        },
        1,
    );
    let cache = TokenCache::with_retry_policy(fast_retries());
    let started = Instant::now();
    let error = cache.token(&tenant.app()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(tenant.n_requests(), 1);
    let text = error.to_string();
    assert!(text.contains("HTTP 429"), "{text}");
    assert!(text.contains("retry after 3600s"), "{text}");
    assert!(!error.needs_admin(), "throttling is not an admin's problem");
}

#[tokio::test]
async fn refused_credentials_are_never_retried() {
    let tenant = Tenant::start(|_| {}).await;
    let cache = TokenCache::with_retry_policy(fast_retries());
    let error = cache
        .token(&tenant.identity("client_secret = \"wrong\""))
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"));
    assert!(error.needs_admin());
    assert_eq!(tenant.n_requests(), 1);

    tenant.fake.clear_requests();
    tenant
        .fake
        .inject(Fault::AadsError(AadsError::refresh_token_revoked("x")), 1);
    let error = cache.token(&tenant.app()).await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"));
    assert!(error.needs_sign_in());
    assert_eq!(tenant.n_requests(), 1);
}

#[tokio::test]
async fn attempts_are_bounded() {
    let tenant = Tenant::start(|_| {}).await;
    tenant.fake.inject(Fault::Status(503), 10);
    let cache = TokenCache::with_retry_policy(fast_retries());
    let error = cache.token(&tenant.app()).await.unwrap_err();
    assert!(error.to_string().contains("HTTP 503"), "{error}");
    assert_eq!(tenant.n_requests(), 4, "max_attempts");
}

#[tokio::test]
async fn a_hanging_endpoint_is_given_up_within_the_total_time() {
    let tenant = Tenant::start(|_| {}).await;
    tenant.fake.inject(Fault::Hang, 10);
    let cache = TokenCache::with_retry_policy(RetryPolicy {
        total: Duration::from_millis(1500),
        request_timeout: Duration::from_millis(400),
        ..fast_retries()
    });
    let started = Instant::now();
    let error = cache.token(&tenant.app()).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(
        matches!(
            error,
            TokenError::GaveUp { .. } | TokenError::Unreachable { .. }
        ),
        "{error}"
    );
    assert!(!error.needs_admin());
}

#[tokio::test]
async fn many_concurrent_callers_share_one_request() {
    let tenant = Tenant::start(|_| {}).await;
    // Slow the answer so that every caller arrives while the request is in flight.
    tenant
        .fake
        .inject(Fault::Delay(Duration::from_millis(300)), 1);
    let cache = Arc::new(TokenCache::with_retry_policy(fast_retries()));
    let identity = Arc::new(tenant.app());
    let callers: Vec<_> = (0..25)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let identity = Arc::clone(&identity);
            tokio::spawn(async move { cache.token(&identity).await })
        })
        .collect();
    let mut secrets = std::collections::HashSet::new();
    for caller in callers {
        let token = caller.await.unwrap().expect("token");
        secrets.insert(secrecy::ExposeSecret::expose_secret(&token.secret).to_string());
    }
    assert_eq!(secrets.len(), 1, "every caller got the same token");
    assert_eq!(tenant.n_requests(), 1);
}

#[tokio::test]
async fn each_scope_of_an_identity_has_its_own_token() {
    let tenant = Tenant::start(|_| {}).await;
    let cache = TokenCache::with_retry_policy(fast_retries());
    let identity = tenant.app();
    // Exchange Online by URI and by application ID: two scopes, two tokens, each cached.
    let by_id = "00000002-0000-0ff1-ce00-000000000000/.default";
    for _ in 0..3 {
        cache.token(&identity).await.unwrap();
        cache.token_for_scope(&identity, by_id).await.unwrap();
    }
    let scopes: Vec<_> = tenant
        .fake
        .requests()
        .into_iter()
        .map(|r| r.scope.unwrap_or_default())
        .collect();
    assert_eq!(scopes.len(), 2, "{scopes:?}");
    assert!(scopes.contains(&by_id.to_string()), "{scopes:?}");
}

#[tokio::test]
async fn a_token_is_renewed_once_ahead_of_its_expiry() {
    let tenant = Tenant::start(|c| c.token_lifetime = Duration::from_secs(2)).await;
    let cache = Arc::new(TokenCache::with_retry_policy(fast_retries()));
    let identity = Arc::new(tenant.app());
    let first = cache.token(&identity).await.unwrap();
    // Renewal is due at 80% of the lifetime at the latest (a fifth ahead, plus jitter).
    assert!(first.renew_at <= Instant::now() + Duration::from_millis(1600));
    cache.token(&identity).await.unwrap();
    assert_eq!(tenant.n_requests(), 1, "still fresh: served from the cache");

    tokio::time::sleep_until(first.renew_at.into()).await;
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let identity = Arc::clone(&identity);
            tokio::spawn(async move { cache.token(&identity).await })
        })
        .collect();
    for caller in callers {
        let renewed = caller.await.unwrap().unwrap();
        assert!(renewed.renew_at > first.renew_at);
    }
    assert_eq!(tenant.n_requests(), 2, "one renewal for all callers");
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once() {
    let tenant = Tenant::start(|_| {}).await;
    let cache = TokenCache::with_retry_policy(fast_retries());
    let identity = tenant.app();
    let first = cache.token(&identity).await.unwrap();
    cache.invalidate(&identity.name, &first).await;
    let second = cache.token(&identity).await.unwrap();
    assert_eq!(tenant.n_requests(), 2);
    // A caller that still holds the first token invalidates nothing newer.
    cache.invalidate(&identity.name, &first).await;
    let third = cache.token(&identity).await.unwrap();
    assert_eq!(tenant.n_requests(), 2);
    use secrecy::ExposeSecret;
    assert_eq!(second.secret.expose_secret(), third.secret.expose_secret());
}
