//! IMAP over TLS with `AUTHENTICATE XOAUTH2`: the only module that knows async-imap.
//!
//! async-imap has sharp edges that lose mail when used naively (see `shared/notes/crates.md`); this
//! wrapper is where each is handled:
//! - the server greeting is read before `AUTHENTICATE`, or the challenge is mistaken for it;
//! - a tagged NO/BAD on FETCH or STORE ends the result stream as if it were complete, so listings are
//!   cross-checked with `UID SEARCH` and commands whose data we do not need are sent with
//!   `run_command_and_check_ok`, which does check the tagged status;
//! - bodies are buffered whole by the library, so every body fetch is capped with a partial range;
//! - a `UID FETCH n:*` returns the highest message even when its UID is below `n`.
//!
//! By concern: `connection` (TLS, greeting, XOAUTH2 login, command deadlines, logout), `fetch`
//! (listing and capped body downloads), `folders` (SELECT/EXAMINE, LIST, STATUS, CREATE and the
//! dispositions), `idle` (IDLE), `utf7` (folder names); each adds its own `impl Connection`.

mod connection;
mod fetch;
mod folders;
mod idle;
mod utf7;

use std::fmt;

pub use connection::{Connection, ImapError, connect};
pub use utf7::encode_folder_name;

/// An IMAP UID (RFC 3501 §2.3.1.1): stable within one UIDVALIDITY of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(pub u32);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the server reports when a folder is selected.
#[derive(Debug, Clone, Copy)]
pub struct SelectedFolder {
    pub uidvalidity: u32,
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
}

/// Why an IDLE wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// The server reported a change (new mail, usually `* n EXISTS`).
    Changed,
    /// Our own timer ran out: time for a reconciliation sweep or a fresh IDLE.
    Timeout,
    /// Shutdown was requested.
    Shutdown,
}

/// Formats UIDs as a compact IMAP sequence set (`1:3,7,9:10`).
pub fn uid_set(uids: &[Uid]) -> String {
    let mut sorted: Vec<u32> = uids.iter().map(|u| u.0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        let uids = |v: &[u32]| v.iter().map(|u| Uid(*u)).collect::<Vec<_>>();
        assert_eq!(uid_set(&uids(&[1])), "1");
        assert_eq!(uid_set(&uids(&[3, 1, 2, 7, 9, 10, 10])), "1:3,7,9:10");
    }
}
