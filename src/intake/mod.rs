//! Intake: one task per watched folder that drives mail source → ingest → store → disposition.
//! All the IO of a message happens here, in an order that makes every message end in exactly one
//! recorded outcome:
//!
//! 1. list the UIDs above the checkpoint with their sizes (no bodies);
//! 2. take them in batches bounded by total size and count; in each batch skip what is already
//!    recorded, record oversized mail from its header fields alone (never downloading the body),
//!    and download the rest in one round trip, each body capped at `max_message_bytes`;
//! 3. parse, ask the store for facts, [`crate::ingest::decide`], and record every outcome of the
//!    batch together with the checkpoint in one transaction (one fsync);
//! 4. only then dispose of the messages on the server (`\Seen`, a move, or deletion), grouped by
//!    UID set, and record that.
//!
//! A crash between 3 and 4 leaves committed outcomes with their dispositions pending; the next sweep
//! completes them before listing new mail. Shutdown is honoured between batches, never inside one;
//! so is a token about to expire (the sweep stops and resumes at the checkpoint on a new session).
//!
//! The rooms, in the order a message passes them: [`run`] (the supervisor: `run`'s tasks and
//! `once`), [`folder`] (the folder task: its wake-ups as one closed enum), [`session`] (logging in),
//! [`sweep`] (listing, batches, downloads, dispositions; now and then `reconcile`, the comparison
//! below the checkpoint), `stuck` (which failures are a message's own, the messages that wait,
//! the set-aside rule), [`record`] (a batch's decisions and
//! rows, in one transaction; also used by `reprocess`), `acknowledge` (the outbox rows written
//! with them) and [`facts`] (what the store is asked for each message). The mail server is
//! reached only through [`crate::mail_source::MailSource`].

mod acknowledge;
pub mod facts;
pub mod folder;
pub mod mailboxes;
mod reconcile;
pub mod record;
pub mod run;
mod sent_copy;
pub mod session;
mod stuck;
pub mod sweep;

use std::sync::Arc;

use tokio::sync::Notify;

pub use mailboxes::{FileSource, MailboxSet, REGISTRY_POLL, follow};
pub use run::{
    SenderWakes, Shared, fleet_units, flush_outboxes, run_once, sender_wakes, sent_copies, spawn,
    spawn_mailbox,
};
pub use sent_copy::SourceSentCopies;

use crate::config::{Config, Identity, Mailbox};
use crate::fleet::{LeaseEnded, Tenure};
use crate::ingest::Policy;
use crate::mail_source::SourceError;
use crate::oauth::{TokenCache, TokenError};
use crate::report::FailureSource;
use crate::store::{Lease, Store, StoreError};
use crate::telemetry::Metrics;

/// Why a sweep stopped. `Token` errors that need an admin stop the mailbox until fixed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The folder's lease is lost or no longer certain: the task stops its work on the server,
    /// logs out and waits for the lease again.
    #[error(transparent)]
    Lease(#[from] LeaseEnded),
}

impl CycleError {
    /// Only an administrator can fix this; retrying soon is pointless.
    pub fn needs_admin(&self) -> bool {
        match self {
            CycleError::Token(e) => e.needs_admin(),
            CycleError::Source(e) => e.is_auth_failure(),
            CycleError::Store(_) | CycleError::Lease(_) => false,
        }
    }

    /// The folder's lease ended (a fenced commit refused, or the monotonic guard): not a
    /// failure to count, the end of this worker's tenure.
    pub fn is_lease_end(&self) -> bool {
        matches!(
            self,
            CycleError::Lease(_) | CycleError::Store(StoreError::LeaseLost { .. })
        )
    }

    /// Where the failure came from, for the metrics.
    pub fn source(&self) -> FailureSource {
        match self {
            CycleError::Token(_) => FailureSource::Token,
            CycleError::Source(_) => FailureSource::MailServer,
            CycleError::Store(_) | CycleError::Lease(_) => FailureSource::Store,
        }
    }
}

/// Everything a folder task needs, borrowed.
pub struct MailboxContext<'a> {
    pub mailbox: &'a Mailbox,
    /// The watched folder this task takes care of.
    pub folder: &'a str,
    pub identity: &'a Identity,
    pub store: &'a Store,
    pub tokens: &'a TokenCache,
    /// How this mailbox decides (own addresses for loop protection, limits).
    pub policy: Policy,
    /// Wakes the mailbox's sender when acknowledgements were queued.
    pub outbox_wake: Option<Arc<Notify>>,
    /// Where sweeps, failures, logins and ingest latency are counted (read by `http`).
    pub metrics: &'a Metrics,
    /// The process's login pacing, shared by every folder task.
    pub logins: &'a session::LoginPacer,
    /// The folder's lease in a fleet (`run`); `None` for `once`, which takes no leases. Every
    /// batch commits fenced by it, and no IMAP command batch starts once it is not certain.
    pub tenure: Option<&'a Tenure>,
}

impl MailboxContext<'_> {
    /// Before each IMAP command batch and each disposition: whether this worker may still act
    /// on the folder ([`Tenure::check`]).
    pub fn check_lease(&self) -> Result<(), CycleError> {
        match self.tenure {
            Some(tenure) => Ok(tenure.check()?),
            None => Ok(()),
        }
    }

    /// The lease to fence the folder task's writes with (`None` without leases: `once`).
    pub fn fence(&self) -> Option<Lease> {
        self.tenure.map(Tenure::lease)
    }
}

/// The decision policy of `mailbox`: every configured mailbox address, and every address
/// acknowledgements are sent from (`acknowledge.from`), counts as our own.
pub fn policy(config: &Config, mailbox: &Mailbox) -> Policy {
    let mut own_addresses: Vec<String> = config
        .mailboxes
        .iter()
        .flat_map(|m| std::iter::once(&m.address).chain(m.acknowledge.from.as_ref()))
        .map(|address| address.to_ascii_lowercase())
        .collect();
    own_addresses.sort();
    own_addresses.dedup();
    Policy {
        own_addresses,
        max_new_tickets_per_sender_per_hour: mailbox.max_new_tickets_per_sender_per_hour,
        reopen_closed: mailbox.reopen_closed,
        automatic: mailbox.automatic,
    }
}
