//! Outlook's throttling as https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits
//! states it: at most 4 concurrent requests per app (the page's current text: "regardless of
//! whether the requests all access the same mailbox, or access different mailboxes"; the
//! error names the limit `MailboxConcurrency`), 10,000 requests per 10 minutes and 150 MB of
//! upload (PATCH, POST, PUT) per 5 minutes per app and mailbox. Plus faults a test injects.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::GraphError;
use crate::{ConcurrencyScope, Limits, ThrottleFault};

/// What one request is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Caller {
    /// The token's `appid`.
    pub app: String,
    /// The mailbox's UPN (lower-case), or empty for requests that name none.
    pub mailbox: String,
}

#[derive(Debug, Default)]
struct State {
    in_flight: HashMap<(String, String), usize>,
    peak: HashMap<(String, String), usize>,
    requests: HashMap<(String, String), VecDeque<Instant>>,
    uploads: HashMap<(String, String), VecDeque<(Instant, u64)>>,
    /// Queued faults: (fault, only for this mailbox).
    faults: VecDeque<(ThrottleFault, Option<String>)>,
}

/// The limiter shared by all requests.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: Mutex<Limits>,
    state: Mutex<State>,
}

/// Holds one concurrency slot; releasing it on drop, including when a streamed `$value`
/// body is dropped because the client went away.
#[derive(Debug)]
pub(crate) struct Slot {
    limiter: Arc<Limiter>,
    key: (String, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.limiter.state);
        if let Some(n) = state.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn window_retry_after(oldest: Instant, window: Duration, now: Instant) -> Duration {
    let left = window.saturating_sub(now.duration_since(oldest));
    Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0))
        .max(Duration::from_secs(1))
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Limiter {
        Limiter {
            limits: Mutex::new(limits),
            state: Mutex::default(),
        }
    }

    pub(crate) fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    pub(crate) fn limits(&self) -> Limits {
        lock(&self.limits).clone()
    }

    pub(crate) fn inject(&self, fault: ThrottleFault, times: usize, mailbox: Option<String>) {
        let mut state = lock(&self.state);
        let mailbox = mailbox.map(|m| m.to_ascii_lowercase());
        for _ in 0..times {
            state.faults.push_back((fault.clone(), mailbox.clone()));
        }
    }

    pub(crate) fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// The highest number of requests in flight at once so far, for this app (and mailbox
    /// when the scope is per mailbox; empty mailbox for the per-app scope).
    pub(crate) fn peak(&self, app: &str, mailbox: &str) -> usize {
        lock(&self.state)
            .peak
            .get(&(app.to_owned(), mailbox.to_ascii_lowercase()))
            .copied()
            .unwrap_or(0)
    }

    /// Admits a request or throttles it. Every request counts toward the rate window,
    /// throttled ones included ("all requests accrue against your usage limits",
    /// https://learn.microsoft.com/graph/throttling).
    pub(crate) fn admit(
        self: &Arc<Limiter>,
        caller: &Caller,
        upload_bytes: u64,
    ) -> Result<Slot, GraphError> {
        let limits = self.limits();
        let now = Instant::now();
        let mut state = lock(&self.state);
        let pair = (caller.app.clone(), caller.mailbox.clone());
        // Injected faults first: they stand for whatever Outlook decides.
        if let Some(pos) = state
            .faults
            .iter()
            .position(|(_, only)| only.as_ref().is_none_or(|m| *m == caller.mailbox))
            && let Some((fault, _)) = state.faults.remove(pos)
        {
            state.requests.entry(pair).or_default().push_back(now);
            return Err(match fault {
                ThrottleFault::TooManyRequests { retry_after } => {
                    GraphError::throttled("MailboxConcurrency", retry_after)
                }
                ThrottleFault::ServiceUnavailable { retry_after } => {
                    GraphError::service_unavailable(retry_after)
                }
                ThrottleFault::Error(error) => error,
            });
        }
        // The rate window per app and mailbox.
        let window = state.requests.entry(pair.clone()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limits.request_window)
        {
            window.pop_front();
        }
        window.push_back(now);
        if window.len() > limits.requests_per_window {
            let oldest = window.front().copied().unwrap_or(now);
            return Err(GraphError::throttled(
                "MailboxRequests",
                window_retry_after(oldest, limits.request_window, now),
            ));
        }
        // Upload bytes per app and mailbox.
        if upload_bytes > 0 {
            let uploads = state.uploads.entry(pair.clone()).or_default();
            while uploads
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) >= limits.upload_window)
            {
                uploads.pop_front();
            }
            let so_far: u64 = uploads.iter().map(|(_, n)| n).sum();
            if so_far + upload_bytes > limits.upload_bytes_per_window {
                let oldest = uploads.front().map_or(now, |(t, _)| *t);
                return Err(GraphError::throttled(
                    "IncomingBytes",
                    window_retry_after(oldest, limits.upload_window, now),
                ));
            }
            uploads.push_back((now, upload_bytes));
        }
        // Concurrency.
        let key = match limits.concurrency_scope {
            ConcurrencyScope::App => (caller.app.clone(), String::new()),
            ConcurrencyScope::AppAndMailbox => pair,
        };
        let in_flight = state.in_flight.entry(key.clone()).or_default();
        if *in_flight >= limits.concurrent_requests {
            return Err(GraphError::throttled(
                "MailboxConcurrency",
                limits.concurrency_retry_after,
            ));
        }
        *in_flight += 1;
        let now_in_flight = *in_flight;
        let peak = state.peak.entry(key.clone()).or_default();
        *peak = (*peak).max(now_in_flight);
        drop(state);
        Ok(Slot {
            limiter: Arc::clone(self),
            key,
        })
    }
}
