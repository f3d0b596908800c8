//! The mail-source seam: what intake needs from a mail server, and nothing more. `intake` drives
//! a folder through these operations only; `imap` implements them today (a Graph implementation
//! plugs in beside it without touching the sweep or the record).
//!
//! The operations, in the order a sweep uses them: open the folder ([`MailSource::open`], which
//! tells its validity and next id), list what is above the checkpoint with sizes and no bodies
//! ([`MailSource::list_above`]; now and then the UIDs below it, [`MailSource::search_range`] and
//! [`MailSource::list_uids`], for the reconciliation), fetch bodies capped at a byte limit ([`MailSource::fetch_bodies`])
//! or only the identifying header fields of oversized mail ([`MailSource::fetch_identifying_headers`]),
//! dispose of committed messages ([`MailSource::dispose`]), and wait for a change
//! ([`MailSource::wait_for_change`]). Beside the sweep, the sender keeps copies of sent mail
//! where the server does not ([`MailSource::sent_folder`], [`MailSource::keep_copy`]).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A message's id within one validity of a folder: an IMAP UID (RFC 3501 §2.3.1.1), ascending
/// with arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Uid(pub u32);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// As a database column (BIGINT).
impl From<Uid> for i64 {
    fn from(uid: Uid) -> i64 {
        i64::from(uid.0)
    }
}

/// What the server reports when a folder is opened.
#[derive(Debug, Clone, Copy)]
pub struct SelectedFolder {
    /// The UIDVALIDITY: when it changes, every UID of the folder is new.
    pub uidvalidity: u32,
    /// The UID the next message will get, when the server says.
    pub uid_next: Option<u32>,
    pub exists: u32,
}

/// A message's envelope facts, listed before any body is downloaded.
#[derive(Debug, Clone)]
pub struct MessageSummary {
    pub uid: Uid,
    /// RFC822.SIZE. Exchange may report an estimate, so body fetches are capped as well.
    pub size: u64,
    /// INTERNALDATE as unix milliseconds.
    pub internal_date_ms: Option<i64>,
    pub seen: bool,
}

/// The result of a capped body fetch.
#[derive(Debug)]
pub enum Body {
    Complete(Vec<u8>),
    /// The message is larger than the cap; only the first `cap + 1` bytes were transferred.
    TooLarge,
    /// The server answered without this message although it is still there (a tagged NO or BAD,
    /// or no body while the folder still lists it), on a session whose other commands succeed;
    /// the text says what happened. In a batch this may be another message's doing; asked for
    /// alone, it is the message's own trouble (a file the server cannot read, a message being
    /// scanned).
    Refused(String),
}

/// Why a wait for change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// The server reported a change (new mail, usually `* n EXISTS`).
    Changed,
    /// Our own timer ran out: time for a reconciliation sweep or a fresh IDLE.
    Timeout,
    /// Shutdown was requested.
    Shutdown,
}

/// What is done with a message on the server once its outcome is committed. Stored with the
/// outcome (`imap_messages.disposition`) as `none`, `seen`, `delete`, `move:<folder>` or
/// `quarantine:<folder>`, so that a crash between the commit and the disposition is completed by
/// the next sweep.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Disposition {
    /// Left as it is (shadow mode, mail from before the first-start cutoff).
    None,
    /// Flagged `\Seen` and left in the folder.
    Seen,
    /// Moved to the processed folder.
    Move(String),
    /// Deleted (flagged `\Deleted` and expunged by UID).
    Delete,
    /// Moved to the quarantine folder.
    Quarantine(String),
}

impl Disposition {
    /// The folder the message moves to, if it moves.
    pub fn target_folder(&self) -> Option<&str> {
        match self {
            Disposition::Move(folder) | Disposition::Quarantine(folder) => Some(folder),
            Disposition::None | Disposition::Seen | Disposition::Delete => None,
        }
    }
}

impl fmt::Display for Disposition {
    /// The stored text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disposition::None => f.write_str("none"),
            Disposition::Seen => f.write_str("seen"),
            Disposition::Delete => f.write_str("delete"),
            Disposition::Move(folder) => write!(f, "move:{folder}"),
            Disposition::Quarantine(folder) => write!(f, "quarantine:{folder}"),
        }
    }
}

/// A stored disposition text that is none of the known forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown disposition `{0}`")]
pub struct UnknownDisposition(pub String);

impl std::str::FromStr for Disposition {
    type Err = UnknownDisposition;

    /// Parses the stored text.
    fn from_str(text: &str) -> Result<Disposition, UnknownDisposition> {
        match text {
            "none" => Ok(Disposition::None),
            "seen" => Ok(Disposition::Seen),
            "delete" => Ok(Disposition::Delete),
            _ => match (text.strip_prefix("move:"), text.strip_prefix("quarantine:")) {
                (Some(folder), _) if !folder.is_empty() => Ok(Disposition::Move(folder.into())),
                (_, Some(folder)) if !folder.is_empty() => {
                    Ok(Disposition::Quarantine(folder.into()))
                }
                _ => Err(UnknownDisposition(text.to_string())),
            },
        }
    }
}

/// What became of a copy of sent mail ([`MailSource::keep_copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKept {
    /// Appended now.
    Appended,
    /// A message with its Message-ID was in the folder already: an earlier copy whose answer was
    /// lost, or the server's own.
    AlreadyThere,
}

/// What kind of trouble a mail-source operation ran into: the folder task's question is "log in
/// again later, or does an administrator have to act?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// The server refused the login or access to the mailbox: the token may be stale (fetch a new
    /// one once) or the identity lacks permission.
    AuthRefused,
    /// The server answered the command with a refusal (IMAP's tagged NO or BAD) on a session that
    /// is otherwise fine: a full or unwritable folder, a missing right, a command it will not do.
    /// Trying the same again soon gets the same answer.
    Refused,
    /// Anything else: a lost or timed-out connection, a command the server failed. The session is
    /// given up and a new one opened.
    Failed,
}

/// An error of a mail-source operation. Its text (and source chain) is the implementation's
/// own error, which says what failed and how to fix it.
pub struct SourceError {
    kind: SourceErrorKind,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl SourceError {
    pub fn new(
        kind: SourceErrorKind,
        inner: impl std::error::Error + Send + Sync + 'static,
    ) -> SourceError {
        SourceError {
            kind,
            inner: Box::new(inner),
        }
    }

    pub fn kind(&self) -> SourceErrorKind {
        self.kind
    }

    /// The server refused the login (see [`SourceErrorKind::AuthRefused`]).
    pub fn is_auth_failure(&self) -> bool {
        self.kind == SourceErrorKind::AuthRefused
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// Transparent: the implementation's error says it best.
impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// A logged-in session with a mail server, as intake uses it. Every operation is bounded in time
/// by the implementation (a command timeout), so nothing waits forever.
///
/// Each future is `Send`, so that folder tasks can run on any worker thread.
pub trait MailSource: Send + Sized {
    /// Opens `folder` for this session: read-write, or read-only (`read_only`, shadow mode) so
    /// that nothing in it can change through this session.
    fn open(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> impl Future<Output = Result<SelectedFolder, SourceError>> + Send;

    /// The messages of the open folder with a UID above `last`, in UID order, with their sizes
    /// and no bodies. The listing is complete: an implementation confirms it (a missed message
    /// would be skipped for good). Mail that arrives or is expunged while it lists is not an
    /// error: the one comes with the next listing, the other is simply not listed.
    fn list_above(
        &mut self,
        last: Uid,
    ) -> impl Future<Output = Result<Vec<MessageSummary>, SourceError>> + Send;

    /// The UIDs of the open folder from `first` to `last` (both included), ascending; only those
    /// without `\Seen` when `unseen_only`. No message data: the reconciliation below the
    /// checkpoint compares them with the recorded outcomes.
    fn search_range(
        &mut self,
        first: Uid,
        last: Uid,
        unseen_only: bool,
    ) -> impl Future<Output = Result<Vec<Uid>, SourceError>> + Send;

    /// The summaries (sizes, dates, flags; no bodies) of `uids`, in UID order. A UID that is gone
    /// is missing from the answer.
    fn list_uids(
        &mut self,
        uids: &[Uid],
    ) -> impl Future<Output = Result<Vec<MessageSummary>, SourceError>> + Send;

    /// The bodies of `uids`, each downloaded only up to `cap` bytes (+1 to see that it is larger).
    /// A UID that is gone (expunged since the listing) is missing from the answer; one the
    /// server answers without, on a session that still works, is [`Body::Refused`]. An error
    /// means the session is lost (reset, closed, BYE, a timeout).
    fn fetch_bodies(
        &mut self,
        uids: &[Uid],
        cap: u64,
    ) -> impl Future<Output = Result<Vec<(Uid, Body)>, SourceError>> + Send;

    /// The header fields that identify message `uid` (Message-ID, From, Subject, Date …), for
    /// mail that is not downloaded.
    fn fetch_identifying_headers(
        &mut self,
        uid: Uid,
    ) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;

    /// Does `disposition` to every message of `uids` (one command per kind). Repeating a
    /// disposition that was done already is harmless, which lets a crash be completed later.
    fn dispose(
        &mut self,
        uids: &[Uid],
        disposition: &Disposition,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Whether [`MailSource::wait_for_change`] hears of new mail as it comes (IMAP IDLE); without
    /// it the folder task polls.
    fn can_wait_for_change(&self) -> bool;

    /// Waits until the server reports a change in the open folder, `max_wait` passes, or
    /// `shutdown` is cancelled, and hands the session back.
    fn wait_for_change(
        self,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(Self, IdleOutcome), SourceError>> + Send;

    /// The folder that keeps copies of the mailbox's sent mail: the one the server marks as such
    /// (IMAP: SPECIAL-USE `\Sent`, RFC 6154); `None` when it marks none.
    fn sent_folder(&mut self) -> impl Future<Output = Result<Option<String>, SourceError>> + Send;

    /// Keeps `raw`, a message this mailbox sent, in `folder` (read) unless a message with
    /// `message_id` (without angle brackets) is there already, so that a copy is kept once even
    /// when an earlier answer was lost. It may leave another folder open than before: a folder
    /// task opens its folder again.
    fn keep_copy(
        &mut self,
        folder: &str,
        message_id: &str,
        raw: &[u8],
    ) -> impl Future<Output = Result<CopyKept, SourceError>> + Send;

    /// Ends the session politely; errors are irrelevant at this point.
    fn logout(self) -> impl Future<Output = ()> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_round_trip_through_their_stored_text() {
        for text in [
            "none",
            "seen",
            "delete",
            "move:Processed",
            "quarantine:Quarantine",
        ] {
            let parsed: Disposition = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            "move:Done/2026"
                .parse::<Disposition>()
                .unwrap()
                .target_folder(),
            Some("Done/2026")
        );
        assert!("flagged".parse::<Disposition>().is_err());
        assert!("move:".parse::<Disposition>().is_err());
    }
}
