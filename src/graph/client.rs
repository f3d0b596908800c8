//! Requests to Graph for one mailbox: the token, immutable ids, the app's concurrency bound,
//! 429/503 answered by waiting as `Retry-After` says (backon), error bodies read into
//! [`GraphError`], and `$value` downloads capped at a byte limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
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
const REQUESTS_PER_WINDOW: u64 = 10_000;
const REQUEST_WINDOW: Duration = Duration::from_secs(600);
/// Outlook's upload limit: 150 MB of request bodies (PATCH, POST, PUT) in 5 minutes per mailbox.
const UPLOAD_BYTES_PER_WINDOW: u64 = 150 * 1024 * 1024;
const UPLOAD_WINDOW: Duration = Duration::from_secs(300);

/// What the process's Graph sessions share: one HTTP client (and its connections) per Graph
/// host and CA, per app the bound on requests at once, which Outlook counts per app across
/// mailboxes, per app and mailbox the requests of the last 10 minutes, and per mailbox the bytes
/// uploaded in the last 5.
#[derive(Debug, Default)]
pub struct Shared {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    permits: Mutex<HashMap<String, Arc<AppPermits>>>,
    /// How many workers of the fleet are alive (the fleet's count), to divide each app's bound
    /// among them; one when not set.
    workers: std::sync::OnceLock<Arc<AtomicUsize>>,
    windows: Mutex<HashMap<(String, String), SharedWindow>>,
    uploads: Mutex<HashMap<String, SharedWindow>>,
}

/// An app's requests at once: its bound divided among the fleet's live workers (at least one
/// each), since Outlook counts them per app whichever worker sends them. The share follows the
/// worker count lazily: each acquisition first settles it, adding permits or forgetting them as
/// they come back.
#[derive(Debug)]
struct AppPermits {
    semaphore: Semaphore,
    workers: Option<Arc<AtomicUsize>>,
    share: Mutex<Share>,
}

#[derive(Debug)]
struct Share {
    /// The configured bound (`max_concurrent_requests`).
    bound: usize,
    /// The permits this worker should have now.
    capacity: usize,
    /// Permits to take out of circulation as they come back (held when the share shrank).
    owed: usize,
}

impl AppPermits {
    fn new(bound: usize, workers: Option<Arc<AtomicUsize>>) -> AppPermits {
        let permits = AppPermits {
            semaphore: Semaphore::new(bound.max(1)),
            workers,
            share: Mutex::new(Share {
                bound: bound.max(1),
                capacity: bound.max(1),
                owed: 0,
            }),
        };
        permits.settle();
        permits
    }

    /// Brings the permits to the bound's share for the live workers now.
    fn settle(&self) {
        let workers = self
            .workers
            .as_ref()
            .map_or(1, |w| w.load(AtomicOrdering::SeqCst).max(1));
        let mut share = self.share.lock().unwrap_or_else(|e| e.into_inner());
        let target = (share.bound / workers).max(1);
        if target > share.capacity {
            let more = target - share.capacity;
            let repaid = more.min(share.owed);
            share.owed -= repaid;
            self.semaphore.add_permits(more - repaid);
        } else {
            share.owed += share.capacity - target;
        }
        if target != share.capacity {
            debug!(
                workers,
                share = target,
                bound = share.bound,
                "Graph requests at once for this app on this worker"
            );
        }
        share.capacity = target;
        if share.owed > 0 {
            let forgotten = self.semaphore.forget_permits(share.owed);
            share.owed -= forgotten;
        }
    }

    async fn acquire(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.settle();
        self.semaphore
            .acquire()
            .await
            .expect("permits are never closed")
    }
}

/// One window, shared by the sessions of one app on one mailbox (requests) or of one mailbox
/// (upload bytes).
type SharedWindow = Arc<Mutex<Window>>;

/// What was spent in the last `length` (requests, or bytes uploaded): a request waits until
/// enough leaves the window, so Outlook's limit is kept rather than met with 429s.
#[derive(Debug)]
struct Window {
    limit: u64,
    length: Duration,
    spent: std::collections::VecDeque<(Instant, u64)>,
    total: u64,
}

impl Window {
    fn new(limit: u64, length: Duration) -> Window {
        Window {
            limit: limit.max(1),
            length,
            spent: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    /// Spends `amount` at `now`, or says how long to wait until it fits. An amount larger
    /// than the whole limit fits an empty window (it could never fit otherwise).
    fn take(&mut self, now: Instant, amount: u64) -> Result<(), Duration> {
        while let Some((at, n)) = self.spent.front().copied()
            && now.duration_since(at) >= self.length
        {
            self.spent.pop_front();
            self.total -= n;
        }
        if self.total + amount <= self.limit || self.spent.is_empty() {
            self.spent.push_back((now, amount));
            self.total += amount;
            return Ok(());
        }
        // The oldest entries leave first: wait until enough of them have.
        let mut freed = 0;
        for (at, n) in &self.spent {
            freed += n;
            if self.total - freed + amount <= self.limit {
                return Err(self.length - now.duration_since(*at));
            }
        }
        let oldest = self.spent.back().map_or(now, |(at, _)| *at);
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
                Arc::new(Mutex::new(Window::new(REQUESTS_PER_WINDOW, REQUEST_WINDOW)))
            })
            .clone()
    }

    /// The upload window of `mailbox`.
    fn uploads(&self, mailbox: &str) -> SharedWindow {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads
            .entry(mailbox.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Window::new(
                    UPLOAD_BYTES_PER_WINDOW,
                    UPLOAD_WINDOW,
                )))
            })
            .clone()
    }

    /// Divides every app's bound among `workers` live workers from now on (the fleet's count;
    /// set once, before the first request).
    pub fn follow_workers(&self, workers: Arc<AtomicUsize>) {
        let _ = self.workers.set(workers);
    }

    /// The app's permits; the first caller's bound sets their number.
    fn permits(&self, client_id: &str, bound: u32) -> Arc<AppPermits> {
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        permits
            .entry(client_id.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(AppPermits::new(bound as usize, self.workers.get().cloned()))
            })
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
    permits: Arc<AppPermits>,
    window: SharedWindow,
    uploads: SharedWindow,
    mailbox: String,
    client_id: String,
}

/// What a request carries.
pub enum Payload {
    Json(serde_json::Value),
    /// `Content-Type: text/plain`: a MIME message in base64, as `sendMail` takes it.
    Base64Mime(String),
    /// A byte range of an upload session's file, `PUT` to its pre-authenticated URL without an
    /// `Authorization` header (as the large-attachments page says).
    Fragment {
        content: Vec<u8>,
        start: u64,
        total: u64,
    },
}

impl Payload {
    /// The body's bytes, its content type, and whether the token goes with it.
    fn wire(&self) -> (Vec<u8>, &'static str, bool) {
        match self {
            Payload::Json(json) => (json.to_string().into_bytes(), "application/json", true),
            Payload::Base64Mime(text) => (text.clone().into_bytes(), "text/plain", true),
            Payload::Fragment { content, .. } => {
                (content.clone(), "application/octet-stream", false)
            }
        }
    }
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
            uploads: shared.uploads(address),
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
        self.send_json(what, Method::POST, url, Payload::Json(body))
            .await
    }

    /// A request with `body` whose answer is JSON (a draft made from MIME, an upload session,
    /// an upload fragment's progress).
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Payload,
    ) -> Result<T, GraphError> {
        let response = self.request(what, method, url, Some(body), None).await?;
        let bytes = response.bytes().await.map_err(|e| transport(what, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| GraphError::Unreadable {
            what: what.to_string(),
            error: e.to_string(),
        })
    }

    /// A `PUT` of an upload session's range ([`Payload::Fragment`]) to its URL: `None` once the
    /// upload is complete (201), else the session's progress JSON (200).
    pub async fn put_fragment(
        &self,
        what: &str,
        url: &str,
        fragment: Payload,
    ) -> Result<Option<Vec<u8>>, GraphError> {
        let response = self
            .request(what, Method::PUT, url, Some(fragment), None)
            .await?;
        let complete = response.status() == StatusCode::CREATED;
        let bytes = response.bytes().await.map_err(|e| transport(what, &e))?;
        Ok((!complete).then(|| bytes.to_vec()))
    }

    /// A GET of at most `cap` bytes: the body is read as it comes and the transfer given up at
    /// `cap + 1` bytes, so an oversized message is never downloaded whole. The app's permit is
    /// held until the body is read or given up.
    pub async fn get_capped(&self, what: &str, url: &str, cap: u64) -> Result<Capped, GraphError> {
        let _permit = self.permits.acquire().await;
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
        let _permit = self.permits.acquire().await;
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
        let wire = body.as_ref().map(Payload::wire);
        let range = match &body {
            Some(Payload::Fragment {
                content,
                start,
                total,
            }) => Some(format!(
                "bytes {start}-{}/{total}",
                start + content.len() as u64 - 1
            )),
            _ => None,
        };
        let attempt = || async {
            self.wait_for_window(wire.as_ref().map_or(0, |(bytes, _, _)| bytes.len() as u64))
                .await;
            let mut request = self
                .http
                .request(method.clone(), url)
                .timeout(self.timeout)
                .header("Prefer", prefer(page_size));
            match &wire {
                Some((bytes, content_type, with_token)) => {
                    if *with_token {
                        request = request.bearer_auth(self.token.expose_secret());
                    }
                    if let Some(range) = &range {
                        request = request.header(reqwest::header::CONTENT_RANGE, range);
                    }
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, *content_type)
                        .body(bytes.clone());
                }
                None => {
                    request = request.bearer_auth(self.token.expose_secret());
                    if method != Method::GET && method != Method::DELETE {
                        // A POST without a body (a draft's `send`) says so: Graph answers 411
                        // Length Required to one without Content-Length.
                        request = request.body(Vec::new());
                    }
                }
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

    /// Waits until the app's window on this mailbox has room for one more request, and the
    /// mailbox's upload window for `upload` more bytes.
    async fn wait_for_window(&self, upload: u64) {
        loop {
            let taken = self
                .window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now(), 1);
            match taken {
                Ok(()) => break,
                Err(wait) => {
                    warn!(
                        wait_ms = wait.as_millis() as u64,
                        "10,000 Graph requests to this mailbox in 10 minutes (Outlook's limit); waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if upload == 0 {
            return;
        }
        loop {
            let taken = self
                .uploads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now(), upload);
            match taken {
                Ok(()) => return,
                Err(wait) => {
                    warn!(
                        wait_ms = wait.as_millis() as u64,
                        "150 MB uploaded to this mailbox in 5 minutes (Outlook's limit); waiting"
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
        let mut window = Window::new(3, Duration::from_secs(10));
        for s in 0..3 {
            assert_eq!(window.take(start + Duration::from_secs(s), 1), Ok(()));
        }
        assert_eq!(
            window.take(start + Duration::from_secs(4), 1),
            Err(Duration::from_secs(6))
        );
        // The first request leaves the window at 10 s.
        assert_eq!(window.take(start + Duration::from_secs(10), 1), Ok(()));
        assert!(window.take(start + Duration::from_secs(10), 1).is_err());
    }

    #[test]
    fn uploads_wait_until_enough_bytes_have_left_the_window() {
        let start = Instant::now();
        let mut window = Window::new(100, Duration::from_secs(300));
        assert_eq!(window.take(start, 40), Ok(()));
        assert_eq!(window.take(start + Duration::from_secs(10), 40), Ok(()));
        // 50 more fit only once both earlier uploads have left (80 + 50 > 100, 40 + 50 ≤ 100).
        assert_eq!(
            window.take(start + Duration::from_secs(20), 50),
            Err(Duration::from_secs(280))
        );
        assert_eq!(window.take(start + Duration::from_secs(300), 50), Ok(()));
        // More than the whole limit is taken alone, in an empty window.
        let mut empty = Window::new(100, Duration::from_secs(300));
        assert_eq!(empty.take(start, 500), Ok(()));
        assert!(empty.take(start + Duration::from_secs(1), 1).is_err());
    }

    #[tokio::test]
    async fn an_apps_bound_is_divided_among_the_live_workers() {
        let workers = Arc::new(AtomicUsize::new(1));
        let permits = AppPermits::new(4, Some(Arc::clone(&workers)));
        assert_eq!(permits.semaphore.available_permits(), 4);
        // A second worker: two each; the two in use are this worker's share now.
        let a = permits.acquire().await;
        let b = permits.acquire().await;
        workers.store(2, AtomicOrdering::SeqCst);
        permits.settle();
        assert_eq!(permits.semaphore.available_permits(), 0);
        drop((a, b));
        assert_eq!(permits.semaphore.available_permits(), 2);
        let c = permits.acquire().await;
        let d = permits.acquire().await;
        assert!(permits.semaphore.try_acquire().is_err(), "two at once");
        // Five workers for a bound of 4: one each (the least that works); with both in use, the
        // surplus one is taken out when it comes back.
        workers.store(5, AtomicOrdering::SeqCst);
        permits.settle();
        drop((c, d));
        permits.settle();
        assert_eq!(permits.semaphore.available_permits(), 1);
        // Back to one worker: four.
        workers.store(1, AtomicOrdering::SeqCst);
        permits.settle();
        assert_eq!(permits.semaphore.available_permits(), 4);
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
