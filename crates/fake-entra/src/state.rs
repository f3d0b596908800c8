//! What the fake keeps between requests: the tenant's configuration, the faults to inject, the
//! requests seen, and the grants it issued (refresh tokens, device-code flows). The handlers
//! (`server`, `grants`) and the test's handle (`FakeEntra`) share it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::{Config, EXCHANGE_RESOURCE};
use crate::keys::SigningKey;
use crate::util::entra_timestamp;
use crate::{Fault, TokenRequestRecord};

/// The tenant segment of the URL, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TenantRef {
    /// The tenant's GUID or one of its domains.
    Tenant,
    /// `/organizations`: any work account (here: this tenant's users).
    Organizations,
    /// `/common` or `/consumers`.
    Common,
}

/// A refresh token's grant, kept in memory by the instance that issued it.
#[derive(Clone, Debug)]
pub(crate) struct RefreshGrant {
    pub upn: String,
    pub client_id: String,
    pub permissions: Vec<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub revoked: bool,
}

/// A device code flow in progress.
#[derive(Clone, Debug)]
pub(crate) struct DeviceFlow {
    pub client_id: String,
    pub scope: DelegatedScope,
    pub user_code: String,
    pub expires_at: Instant,
    pub interval: Duration,
    pub last_poll: Option<Instant>,
    pub state: DeviceFlowState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceFlowState {
    Pending,
    Approved { upn: String },
    Declined,
    Redeemed,
}

/// The delegated part of a `scope` parameter, checked against the resource.
#[derive(Clone, Debug, Default)]
pub(crate) struct DelegatedScope {
    /// Exchange permission short names (`IMAP.AccessAsUser.All`), deduplicated.
    pub permissions: Vec<String>,
    pub offline_access: bool,
    pub openid: bool,
}

/// State shared by the handlers and the [`crate::FakeEntra`] handle.
pub(crate) struct Shared {
    /// The tenant; behind a lock so tests can change it while the server runs.
    pub config: RwLock<Config>,
    pub key: SigningKey,
    /// `http://127.0.0.1:PORT`, for discovery documents and client assertion audiences.
    pub base_url: String,
    /// Pending injected failures, one entry per failing request.
    pub faults: Mutex<VecDeque<Fault>>,
    /// Outages by time: every token request until `until` gets `fault` (windows in order).
    pub outages: Mutex<VecDeque<Outage>>,
    /// Every token request, for tests that count them.
    pub records: Mutex<Vec<TokenRequestRecord>>,
    /// Refresh tokens issued by this instance (they are opaque, as Entra's are).
    pub refresh_tokens: Mutex<HashMap<String, RefreshGrant>>,
    /// Device code flows by device code.
    pub device_flows: Mutex<HashMap<String, DeviceFlow>>,
    /// Becomes true at shutdown; a hanging request waits for it.
    pub shutdown: watch::Receiver<bool>,
}

/// A window of time in which every token request fails with `fault`.
pub(crate) struct Outage {
    pub fault: Fault,
    pub from: Instant,
    pub until: Instant,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn config(&self) -> RwLockReadGuard<'_, Config> {
        self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn update_config<R>(&self, change: impl FnOnce(&mut Config) -> R) -> R {
        let mut config = self.config.write().unwrap_or_else(PoisonError::into_inner);
        change(&mut config)
    }

    pub(crate) fn refresh_tokens(&self) -> MutexGuard<'_, HashMap<String, RefreshGrant>> {
        lock(&self.refresh_tokens)
    }

    pub(crate) fn device_flows(&self) -> MutexGuard<'_, HashMap<String, DeviceFlow>> {
        lock(&self.device_flows)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, VecDeque<Fault>> {
        lock(&self.faults)
    }

    /// The fault of the outage under way, if any; ended windows are dropped.
    pub(crate) fn outage_fault(&self) -> Option<Fault> {
        let mut outages = lock(&self.outages);
        let now = Instant::now();
        while outages.front().is_some_and(|o| o.until <= now) {
            outages.pop_front();
        }
        outages
            .front()
            .filter(|o| o.from <= now)
            .map(|o| o.fault.clone())
    }

    pub(crate) fn records(&self) -> MutexGuard<'_, Vec<TokenRequestRecord>> {
        lock(&self.records)
    }

    /// The v2.0 issuer of discovery and ID tokens, pointing back at this server.
    pub(crate) fn issuer(&self, config: &Config, tenant: TenantRef) -> String {
        match tenant {
            TenantRef::Tenant => format!("{}/{}/v2.0", self.base_url, config.tenant_id),
            _ => format!("{}/{{tenantid}}/v2.0", self.base_url),
        }
    }

    /// The `aud` values the tokeninfo endpoint accepts.
    pub(crate) fn audiences(&self) -> Vec<String> {
        let configured = self.config().resource.clone();
        let mut audiences = vec![configured];
        if !audiences[0].eq_ignore_ascii_case(EXCHANGE_RESOURCE) {
            audiences.push(EXCHANGE_RESOURCE.to_owned());
        }
        audiences
    }

    pub(crate) fn log(&self, line: &str) {
        if self.config().log_requests {
            println!("{} {line}", entra_timestamp(SystemTime::now()));
        }
    }

    pub(crate) async fn until_shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the handle is gone: shut down as well.
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    }
}
