//! Requests to Graph for one mailbox: the token, immutable ids, the app's concurrency bound,
//! 429/503 answered by waiting as `Retry-After` says (backon), error bodies read into
//! [`GraphError`], and `$value` downloads capped at a byte limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::error::{ErrorBody, GraphError, Refusal};
use crate::config::GraphEndpoint;

/// Throttled requests are tried this often in all before the error is the caller's.
const THROTTLE_ATTEMPTS: usize = 6;
/// The longest `Retry-After` honoured as told; a longer one waits this long and tries again.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Outlook's request limit: 10,000 requests in 10 minutes per app and mailbox.
const REQUESTS_PER_WINDOW: usize = 10_000;
const REQUEST_WINDOW: Duration = Duration::from_secs(600);

/// What the process's Graph sessions share: one HTTP client (and its connections) per Graph
/// host and CA, per app the bound on requests at once, which Outlook counts per app across
/// mailboxes, and per app and mailbox the requests of the last 10 minutes.
#[derive(Debug, Default)]
pub struct Shared {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    windows: Mutex<HashMap<(String, String), SharedWindow>>,
}

/// One window, shared by the sessions of one app on one mailbox.
type SharedWindow = Arc<Mutex<RequestWindow>>;

/// The times of the requests of one app to one mailbox in the last window: a request waits
/// until the oldest leaves it once the window is full, so Outlook's limit is kept rather than
/// met with 429s.
#[derive(Debug)]
struct RequestWindow {
    limit: usize,
    length: Duration,
    sent: std::collections::VecDeque<Instant>,
}

impl RequestWindow {
    fn new(limit: usize, length: Duration) -> RequestWindow {
        RequestWindow {
            limit: limit.max(1),
            length,
            sent: std::collections::VecDeque::new(),
        }
    }

    /// Takes a place for a request at `now`, or says how long to wait for one.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .sent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.length)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.limit {
            self.sent.push_back(now);
            return Ok(());
        }
        let oldest = *self.sent.front().expect("a full window has requests");
        Err(self.length - now.duration_since(oldest))
    }
}

impl Shared {
    fn client(&self, endpoint: &GraphEndpoint) -> Result<reqwest::Client, GraphError> {
        let key = format!(
            "{}|{}",
            endpoint.url,
            endpoint
                .ca_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let setup = |error: String| GraphError::Transport {
            what: "the HTTP client's set-up".into(),
            error,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("mailintake/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &endpoint.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| {
                setup(format!(
                    "cannot read graph.ca_file {}: {e}",
                    ca_file.display()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                setup(format!(
                    "graph.ca_file {} is not a PEM certificate: {e}",
                    ca_file.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| setup(e.to_string()))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The request window of `client_id` on `mailbox`.
    fn window(&self, client_id: &str, mailbox: &str) -> SharedWindow {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .entry((client_id.to_ascii_lowercase(), mailbox.to_ascii_lowercase()))
            .or_insert_with(|| {
                Arc::new(Mutex::new(RequestWindow::new(
                    REQUESTS_PER_WINDOW,
                    REQUEST_WINDOW,
                )))
            })
            .clone()
    }

    /// The app's permits; the first caller's bound sets their number.
    fn permits(&self, client_id: &str, bound: u32) -> Arc<Semaphore> {
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        permits
            .entry(client_id.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(bound.max(1) as usize)))
            .clone()
    }
}

/// A mailbox's Graph requests with one token.
pub struct GraphClient {
    http: reqwest::Client,
    /// `{url}/v1.0/users/{address}`.
    user_root: String,
    token: SecretString,
    timeout: Duration,
    permits: Arc<Semaphore>,
    window: SharedWindow,
    mailbox: String,
    client_id: String,
}

/// What a request carries.
pub enum Payload {
    Json(serde_json::Value),
    /// `Content-Type: text/plain`: a MIME message in base64, as `sendMail` takes it.
    Base64Mime(String),
}

/// A capped download.
pub enum Capped {
    Complete(Vec<u8>),
    /// Larger than the cap; the rest was not read.
    TooLarge,
}

impl GraphClient {
    pub fn new(
        shared: &Shared,
        endpoint: &GraphEndpoint,
        address: &str,
        client_id: &str,
        token: SecretString,
    ) -> Result<GraphClient, GraphError> {
        let root = endpoint.url.as_str().trim_end_matches('/');
        Ok(GraphClient {
            http: shared.client(endpoint)?,
            user_root: format!("{root}/v1.0/users/{}", encode_segment(address)),
            token,
            timeout: endpoint.timeout,
            permits: shared.permits(client_id, endpoint.max_concurrent_requests),
            window: shared.window(client_id, address),
            mailbox: address.to_string(),
            client_id: client_id.to_string(),
        })
    }

    /// `path` under the mailbox's user (`/mailFolders/inbox`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.user_root)
    }

    /// A GET whose answer is JSON. `url` is absolute (a delta or next link as Graph gave it).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        page_size: Option<u32>,
    ) -> Result<T, GraphError> {
        let response = self
            .request(what, Method::GET, url, None, page_size)
            .await?;
        let bytes = response.bytes().await.map_err(|e| transport(what, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| GraphError::Unreadable {
            what: what.to_string(),
            error: e.to_string(),
        })
    }

    /// A request that changes something (PATCH, POST, DELETE); the answer's body is not read
    /// beyond its status.
    pub async fn change(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Option<Payload>,
    ) -> Result<(), GraphError> {
        let response = self.request(what, method, url, body, None).await?;
        // Read the (small) answer so the connection can be reused.
        let _ = response.bytes().await;
        Ok(())
    }

    /// A POST whose answer is JSON (`move` answers with the moved message, a new folder with
    /// itself).
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        body: serde_json::Value,
    ) -> Result<T, GraphError> {
        let response = self
            .request(what, Method::POST, url, Some(Payload::Json(body)), None)
            .await?;
        let bytes = response.bytes().await.map_err(|e| transport(what, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| GraphError::Unreadable {
            what: what.to_string(),
            error: e.to_string(),
        })
    }

    /// A GET of at most `cap` bytes: the body is read as it comes and the transfer given up at
    /// `cap + 1` bytes, so an oversized message is never downloaded whole. The app's permit is
    /// held until the body is read or given up.
    pub async fn get_capped(&self, what: &str, url: &str, cap: u64) -> Result<Capped, GraphError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("permits are never closed");
        let mut response = self.send_held(what, Method::GET, url, None, None).await?;
        if let Some(length) = response.content_length()
            && length > cap
        {
            return Ok(Capped::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(what, &e))? {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Ok(Capped::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Capped::Complete(body))
    }

    /// One request, under an app permit, tried again after throttling.
    async fn request(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Option<Payload>,
        page_size: Option<u32>,
    ) -> Result<reqwest::Response, GraphError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("permits are never closed");
        self.send_held(what, method, url, body, page_size).await
    }

    /// [`GraphClient::request`] for a caller that holds its permit.
    async fn send_held(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Option<Payload>,
        page_size: Option<u32>,
    ) -> Result<reqwest::Response, GraphError> {
        let attempt = || async {
            self.wait_for_window().await;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(self.token.expose_secret())
                .timeout(self.timeout)
                .header("Prefer", prefer(page_size));
            match &body {
                Some(Payload::Json(json)) => request = request.json(json),
                Some(Payload::Base64Mime(text)) => {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "text/plain")
                        .body(text.clone());
                }
                None => {}
            }
            let response = request.send().await.map_err(|e| transport(what, &e))?;
            if response.status().is_success() {
                return Ok(response);
            }
            Err(self.refusal(what, response).await)
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(60))
                    .with_max_times(THROTTLE_ATTEMPTS - 1)
                    .with_jitter(),
            )
            .when(|e: &GraphError| e.refusal().is_some_and(Refusal::is_retryable))
            .adjust(|e: &GraphError, delay| {
                let told = e.refusal().and_then(|r| r.retry_after);
                told.map(|t| t.min(LONGEST_RETRY_AFTER)).or(delay)
            })
            .notify(|e: &GraphError, delay| {
                warn!(
                    wait_ms = delay.as_millis() as u64,
                    "{e}; waiting before trying again"
                );
            })
            .await
    }

    /// Waits until the app's window on this mailbox has room for one more request.
    async fn wait_for_window(&self) {
        loop {
            let taken = self
                .window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now());
            match taken {
                Ok(()) => return,
                Err(wait) => {
                    warn!(
                        wait_ms = wait.as_millis() as u64,
                        "10,000 Graph requests to this mailbox in 10 minutes (Outlook's limit); waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Reads an error answer.
    async fn refusal(&self, what: &str, response: reqwest::Response) -> GraphError {
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
        let request_id = header("request-id");
        let bytes = response.bytes().await.unwrap_or_default();
        let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let (code, message, inner) = match parsed {
            Some(body) => (body.error.code, body.error.message, body.error.inner_error),
            None => (
                status_code_name(status),
                String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                None,
            ),
        };
        debug!(status = status.as_u16(), code, "Graph refused {what}");
        GraphError::Refused(Box::new(Refusal {
            what: what.to_string(),
            status: status.as_u16(),
            code,
            message,
            request_id: inner
                .as_ref()
                .and_then(|i| i.request_id.clone())
                .or(request_id),
            date: inner.and_then(|i| i.date),
            retry_after,
            mailbox: self.mailbox.clone(),
            client_id: self.client_id.clone(),
        }))
    }
}

/// Immutable ids (they stay the same when a message moves), and the page size of a delta round.
fn prefer(page_size: Option<u32>) -> String {
    match page_size {
        Some(size) => format!("IdType=\"ImmutableId\", odata.maxpagesize={size}"),
        None => "IdType=\"ImmutableId\"".to_string(),
    }
}

/// `Retry-After` in seconds (what Graph sends) or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An HTTP date has RFC 5322's form.
    let at = mail_parser::DateTime::parse_rfc822(value)?.to_timestamp() * 1000;
    let wait_ms = at.saturating_sub(crate::time::now_ms()).max(0);
    Some(Duration::from_millis(wait_ms as u64))
}

fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .replace(' ', "")
}

fn transport(what: &str, error: &reqwest::Error) -> GraphError {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    if error.is_timeout() {
        text = format!("{text} (graph.timeout)");
    }
    GraphError::Transport {
        what: what.to_string(),
        error: text,
    }
}

/// A path segment: a user's address or an id, percent-encoded where needed.
pub fn encode_segment(text: &str) -> String {
    let mut url = url::Url::parse("http://segment/").expect("a URL");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .push(text);
    url.path()[1..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_full_window_waits_for_its_oldest_request_to_leave() {
        let start = Instant::now();
        let mut window = RequestWindow::new(3, Duration::from_secs(10));
        for s in 0..3 {
            assert_eq!(window.take(start + Duration::from_secs(s)), Ok(()));
        }
        assert_eq!(
            window.take(start + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        // The first request leaves the window at 10 s.
        assert_eq!(window.take(start + Duration::from_secs(10)), Ok(()));
        assert!(window.take(start + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(
            encode_segment("support@helpdesk.test"),
            "support@helpdesk.test"
        );
        assert_eq!(encode_segment("AAMk=/x y"), "AAMk=%2Fx%20y");
    }
}
