//! What tasks report, on the ground floor: the folder tasks' sweeps ([`CycleReport`]) and
//! failures ([`Failure`]), the outbox senders' flushes ([`FlushReport`]) and the Junk folder checks
//! ([`JunkStatus`]). The tasks fill these in; `telemetry` reads them and knows no task.

use serde::Serialize;

use crate::mail_source::Uid;

/// What one sweep over a mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    pub n_listed: usize,
    pub n_tickets: usize,
    pub n_follow_ups: usize,
    pub n_duplicates: usize,
    pub n_quarantined: usize,
    pub n_ignored: usize,
    /// Messages whose outcome was already recorded; only their disposition was completed.
    pub n_completed: usize,
    pub bytes_fetched: u64,
    /// Acknowledgements written to the outbox (to be sent).
    pub n_acks_queued: usize,
    /// Messages the reconciliation found at or below the checkpoint without an outcome (shown
    /// late by the server), taken in by this sweep.
    pub n_reconciled: usize,
    /// The folder's dispositions the server refuses, as the sweep left them: read when the sweep
    /// met a refusal or started with refused ones (`None`: not read, nothing changed).
    pub refused: Option<Vec<RefusedDispositions>>,
}

/// Messages whose outcome is committed but whose disposition the server refuses (a tagged NO:
/// a full or unwritable target folder, a missing right): they stay where they are, every sweep
/// tries again, and the folder goes on meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedDispositions {
    /// What was to be done, as stored: `seen`, `move:<folder>`, `quarantine:<folder>`, `delete`.
    pub disposition: String,
    pub n_messages: u64,
    /// When the server first refused one of them (unix ms).
    pub since_ms: Option<i64>,
    /// The server's reply.
    pub reply: String,
}

impl RefusedDispositions {
    /// One line for an operator: what waits, and the server's words.
    pub fn describe(&self) -> String {
        let what = match (
            self.disposition.strip_prefix("move:"),
            self.disposition.strip_prefix("quarantine:"),
        ) {
            (Some(folder), _) | (_, Some(folder)) => format!("moved to {folder}"),
            _ if self.disposition == "seen" => "flagged \\Seen".to_string(),
            _ if self.disposition == "delete" => "deleted".to_string(),
            _ => self.disposition.clone(),
        };
        format!(
            "{} message(s) recorded but not {what}: the server refuses ({}); they stay in the folder and are tried again each sweep",
            self.n_messages, self.reply
        )
    }
}

impl CycleReport {
    /// Adds everything a later part of the same sweep did (one resumed on a new session).
    pub fn merge(&mut self, later: &CycleReport) {
        self.add(later);
        self.n_listed += later.n_listed;
        self.n_completed += later.n_completed;
        self.bytes_fetched += later.bytes_fetched;
        self.n_reconciled += later.n_reconciled;
        if later.refused.is_some() {
            self.refused = later.refused.clone();
        }
    }

    /// Adds the counts of one batch.
    pub fn add(&mut self, batch: &CycleReport) {
        self.n_tickets += batch.n_tickets;
        self.n_follow_ups += batch.n_follow_ups;
        self.n_duplicates += batch.n_duplicates;
        self.n_quarantined += batch.n_quarantined;
        self.n_ignored += batch.n_ignored;
        self.n_acks_queued += batch.n_acks_queued;
    }
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new message(s): {} ticket(s), {} follow-up(s), {} duplicate(s), {} quarantined, {} ignored; {} earlier disposition(s) completed; {} bytes fetched",
            self.n_listed,
            self.n_tickets,
            self.n_follow_ups,
            self.n_duplicates,
            self.n_quarantined,
            self.n_ignored,
            self.n_completed,
            self.bytes_fetched
        )?;
        if self.n_reconciled > 0 {
            write!(
                f,
                "; {} found below the checkpoint by the reconciliation",
                self.n_reconciled
            )?;
        }
        Ok(())
    }
}

/// What one flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub n_sent: usize,
    pub n_retry: usize,
    pub n_failed: usize,
    /// The sending budget (per minute, per day) holds rows back until then; the rest waits.
    pub deferred_until_ms: Option<i64>,
    /// For `deferred_until_ms`: how many rows wait for the budget, and why (read after the flush).
    pub deferred: Option<Deferred>,
    /// From addresses the server refuses (read after the flush): their rows wait.
    pub blocked: Vec<BlockedSender>,
    /// Copies of sent mail kept in the Sent folder by this flush (`sent_copy = "append"`).
    pub n_copied: usize,
    /// Why copies of sent mail could not be kept in this flush; they wait and are tried again.
    pub copy_error: Option<String>,
}

impl FlushReport {
    /// Rows waiting because their From address is refused.
    pub fn n_blocked(&self) -> u64 {
        self.blocked.iter().map(|b| b.n_rows).sum()
    }
}

/// The rows of a mailbox the sending budget holds back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deferred {
    pub n_rows: u64,
    /// Which budget is used up (`sending budget: 30 of 30 messages in the last minute …`).
    pub reason: String,
    /// When the first of them is due.
    pub until_ms: i64,
}

/// A From address whose acknowledgements wait because the server refused it for good (SendAs
/// denied, a policy, a quota): they are tried again every 10 minutes until it is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockedSender {
    pub from_address: String,
    /// Its pending rows.
    pub n_rows: u64,
    /// The server's reply and the fix.
    pub reason: String,
    /// When the address was first refused.
    pub since_ms: i64,
    /// When its oldest row is tried again.
    pub retry_at_ms: i64,
}

impl std::fmt::Display for FlushReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} acknowledgement(s) sent, {} to retry, {} failed",
            self.n_sent, self.n_retry, self.n_failed
        )?;
        if !self.blocked.is_empty() {
            let addresses: Vec<&str> = self
                .blocked
                .iter()
                .map(|b| b.from_address.as_str())
                .collect();
            write!(
                f,
                ", {} waiting because the server refuses the From address {}",
                self.n_blocked(),
                addresses.join(", ")
            )?;
        }
        if let Some(deferred) = &self.deferred {
            write!(
                f,
                ", rest deferred by the sending limit ({} waiting; {})",
                deferred.n_rows, deferred.reason
            )?;
        } else if self.deferred_until_ms.is_some() {
            write!(f, ", rest deferred by the sending limit")?;
        }
        if self.n_copied > 0 {
            write!(f, ", {} copied to the Sent folder", self.n_copied)?;
        }
        if let Some(error) = &self.copy_error {
            write!(f, ", copies to the Sent folder wait ({error})")?;
        }
        Ok(())
    }
}

/// How `junk release` names a Junk message: its IMAP UID, or on a Graph mailbox its immutable
/// id. Serialised as `"uid": 7` or `"graph_id": "…"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JunkId {
    Uid(Uid),
    GraphId(String),
}

impl std::fmt::Display for JunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JunkId::Uid(uid) => uid.fmt(f),
            JunkId::GraphId(id) => f.write_str(id),
        }
    }
}

/// One message in a Junk folder, from its header fields and listing.
#[derive(Debug, Clone, Serialize)]
pub struct JunkItem {
    #[serde(flatten)]
    pub id: JunkId,
    /// The Date header (unix ms), when it has a readable one.
    pub date_ms: Option<i64>,
    /// When the server received it (INTERNALDATE, unix ms).
    pub received_ms: Option<i64>,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub size_bytes: u64,
}

/// What a look at a mailbox's Junk folder found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JunkListing {
    /// The folder does not exist on the server (check `junk_folder`).
    Missing { folder: String },
    /// `total` messages; `newest` are the newest of them (by UID), newest first.
    Listed {
        folder: String,
        total: u32,
        newest: Vec<JunkItem>,
    },
}

/// The last check of a mailbox's Junk folder, for the status page.
#[derive(Debug, Clone)]
pub struct JunkStatus {
    pub checked_at_ms: i64,
    /// The listing, or why the check failed.
    pub result: Result<JunkListing, String>,
}

/// Where a folder task's failure came from, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureSource {
    /// The identity provider refused or could not give a token.
    Token,
    /// The mail server (connection, login, a command).
    MailServer,
    /// The database.
    Store,
    /// A bug: the task panicked, and was started again.
    Panic,
}

/// A folder task's failed login or sweep, as the operator is told about it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub source: FailureSource,
    /// Only an administrator can fix it; the task retries every ten minutes meanwhile.
    pub needs_admin: bool,
    /// The error as the operator reads it, with its `fix:` line when one is known.
    pub text: &'a str,
}
