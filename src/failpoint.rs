//! Fault points for the fault tests, in debug builds only.
//!
//! `MAILINTAKE_FAILPOINT=<name>[:<n>[:<action>]]` acts the n-th time (n = 1 when omitted) the
//! process passes the point `<name>`. The action is
//! - `abort` (the default): the process aborts, as `kill -9` would: no destructors, no logout;
//! - `hold=<ms>`: the task waits that many milliseconds at the point (an async sleep; the rest of
//!   the process runs on), after printing `mailintake: failpoint <name> reached; holding <ms> ms`
//!   to stderr. A test waits for that line and then acts (e.g. sends SIGTERM) while the task is
//!   known to be there. Only points passed with [`reached`] can hold;
//! - `stop`: the whole process stops itself with SIGSTOP, after printing `mailintake: failpoint
//!   <name> reached; stopping` to stderr, as a pause would freeze it (a GC, a stalled VM, an
//!   operator's SIGSTOP): every thread, every timer and the lease renewals stop until a SIGCONT,
//!   and then it goes on right there, its monotonic clock having run on meanwhile. Unlike a
//!   SIGSTOP sent from outside when a `hold` line shows, it stops exactly at the point.
//!
//! Release builds compile every point to nothing.

/// The places a test can stop the worker at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Right after a batch of outcomes is committed, before any IMAP disposition ([`hit`]).
    AfterCommit,
    /// In `junk::list`, logged in to the mailbox and about to look at its Junk folder
    /// ([`reached`]).
    JunkListing,
    /// A folder task about to sweep, logged in ([`hit`]; `panic` makes the task panic there).
    SweepStart,
    /// In `purge`, after it chose the attachment blobs no newer attachment shares and before it
    /// empties them ([`reached`]).
    PurgeChecked,
    /// At the start of a folder listing (`imap::Connection::list_above`), before its first
    /// command ([`reached`]). The session's view of the folder is the one its last command left
    /// (Dovecot takes in other sessions' changes at the end of a command), so mail delivered or
    /// expunged while the task holds here shows between the listing's `UID SEARCH` and its
    /// `UID FETCH`. Every listing of the process counts as a pass.
    Listing,
    /// In the sender, right after the SMTP server accepted a message (its 250 to the end of
    /// DATA) and before the outbox row is marked `sent` ([`hit`]).
    SmtpAccepted,
    /// In the batch record, the batch's rows written in its transaction and its commit (whose
    /// lease fence comes first) next ([`hit`]).
    BeforeCommit,
    /// In the sweep, committed outcomes about to be disposed of: just before the lease check
    /// that precedes each disposition command ([`hit`]).
    BeforeDisposition,
    /// In the sender, right after the Sent folder took a copy of a sent message (or had it
    /// already) and before the outbox row records it ([`hit`]).
    SentCopyKept,
    /// In a Graph delta round, a page with a next link received and the next page not yet asked
    /// for ([`reached`]): a test makes Graph forget the round's state here (a 410 mid-round).
    DeltaPage,
    /// In a Graph send through a draft, the draft made and its attachments added, just before
    /// its `send` ([`hit`]).
    DraftFilled,
}

impl Point {
    #[cfg(debug_assertions)]
    fn name(self) -> &'static str {
        match self {
            Point::AfterCommit => "after-commit",
            Point::JunkListing => "junk-listing",
            Point::SweepStart => "sweep-start",
            Point::PurgeChecked => "purge-checked",
            Point::Listing => "listing",
            Point::SmtpAccepted => "smtp-accepted",
            Point::SentCopyKept => "sent-copy-kept",
            Point::BeforeCommit => "before-commit",
            Point::BeforeDisposition => "before-disposition",
            Point::DraftFilled => "draft-filled",
            Point::DeltaPage => "delta-page",
        }
    }
}

/// What an armed point does when its turn comes.
#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Hold(std::time::Duration),
    /// The task passing the point panics (as a bug would).
    Panic,
    /// The process stops itself (SIGSTOP) until a SIGCONT.
    Stop,
}

/// The point `MAILINTAKE_FAILPOINT` names, the pass it acts on, and how.
#[cfg(debug_assertions)]
#[derive(Debug, PartialEq, Eq)]
struct Armed {
    name: String,
    pass: u32,
    action: Action,
}

#[cfg(debug_assertions)]
fn parse(spec: &str) -> Result<Armed, String> {
    let mut parts = spec.splitn(3, ':');
    let name = parts.next().unwrap_or_default().to_string();
    let pass = match parts.next() {
        None | Some("") => 1,
        Some(n) => n
            .parse()
            .map_err(|_| format!("`{n}` is not a pass number (1, 2, …)"))?,
    };
    let action = match parts.next() {
        None | Some("abort") => Action::Abort,
        Some("panic") => Action::Panic,
        Some("stop") => Action::Stop,
        Some(action) => match action.strip_prefix("hold=").map(str::parse) {
            Some(Ok(ms)) => Action::Hold(std::time::Duration::from_millis(ms)),
            _ => {
                return Err(format!(
                    "`{action}` is not `abort`, `panic`, `stop` or `hold=<ms>`"
                ));
            }
        },
    };
    Ok(Armed { name, pass, action })
}

/// The action due now at `point`, if `MAILINTAKE_FAILPOINT` names it and this is its pass.
#[cfg(debug_assertions)]
fn due(point: Point) -> Option<Action> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    static PASSES: AtomicU32 = AtomicU32::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("MAILINTAKE_FAILPOINT").ok()?;
        parse(&spec)
            .inspect_err(|e| eprintln!("mailintake: MAILINTAKE_FAILPOINT={spec} is ignored: {e}"))
            .ok()
    });
    match armed {
        Some(armed)
            if armed.name == point.name()
                && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == armed.pass =>
        {
            Some(armed.action)
        }
        _ => None,
    }
}

#[cfg(debug_assertions)]
fn abort(point: Point) -> ! {
    eprintln!("mailintake: failpoint {} reached; aborting", point.name());
    std::process::abort();
}

#[cfg(debug_assertions)]
fn stop(point: Point) {
    eprintln!("mailintake: failpoint {} reached; stopping", point.name());
    // Sent to this thread, not the process: a SIGSTOP sent with kill(2) to the process is taken
    // by its main thread, and this thread would run on for a moment (into its next command or
    // commit) before the group stop reaches it. A signal of its own stops it before raise(3)
    // returns; every other thread stops with it, and the call returns after the SIGCONT.
    // SAFETY: raise(3) has no memory-safety preconditions.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
    eprintln!("mailintake: failpoint {} continued", point.name());
}

/// Passes a point in synchronous code: `abort`, `panic` or `stop` can act here.
#[cfg(debug_assertions)]
pub fn hit(point: Point) {
    match due(point) {
        None => {}
        Some(Action::Abort) => abort(point),
        Some(Action::Panic) => panic!("failpoint {} reached; panicking", point.name()),
        Some(Action::Stop) => stop(point),
        Some(Action::Hold(_)) => {
            // Sleeping here would block a runtime thread; a test asking for it is mistaken.
            eprintln!(
                "mailintake: failpoint {} cannot hold (it is passed in synchronous code)",
                point.name()
            );
            abort(point);
        }
    }
}

/// Passes a point in async code: `abort`, `panic`, `stop` or `hold`.
#[cfg(debug_assertions)]
pub async fn reached(point: Point) {
    match due(point) {
        None => {}
        Some(Action::Abort) => abort(point),
        Some(Action::Panic) => panic!("failpoint {} reached; panicking", point.name()),
        Some(Action::Stop) => stop(point),
        Some(Action::Hold(duration)) => {
            eprintln!(
                "mailintake: failpoint {} reached; holding {} ms",
                point.name(),
                duration.as_millis()
            );
            tokio::time::sleep(duration).await;
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: Point) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn reached(_point: Point) {}

#[cfg(all(test, debug_assertions))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn specs_name_a_point_a_pass_and_an_action() {
        let armed = |name: &str, pass, action| Armed {
            name: name.to_string(),
            pass,
            action,
        };
        assert_eq!(
            parse("after-commit"),
            Ok(armed("after-commit", 1, Action::Abort))
        );
        assert_eq!(
            parse("after-commit:3"),
            Ok(armed("after-commit", 3, Action::Abort))
        );
        assert_eq!(
            parse("after-commit:2:abort"),
            Ok(armed("after-commit", 2, Action::Abort))
        );
        assert_eq!(
            parse("junk-listing:1:hold=3000"),
            Ok(armed(
                "junk-listing",
                1,
                Action::Hold(Duration::from_millis(3000))
            ))
        );
        assert_eq!(
            parse("before-commit:1:stop"),
            Ok(armed("before-commit", 1, Action::Stop))
        );
        assert!(parse("junk-listing:x").unwrap_err().contains("pass number"));
        assert!(
            parse("junk-listing:1:hold=3s")
                .unwrap_err()
                .contains("hold=<ms>")
        );
        assert!(parse("junk-listing:1:wait").is_err());
    }
}
