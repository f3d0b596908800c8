//! IMAP over TLS with `AUTHENTICATE XOAUTH2`: the only module that knows async-imap.
//!
//! async-imap has sharp edges that lose mail when used naively (see `shared/notes/crates.md`); this
//! wrapper is where each is handled:
//! - the server greeting is read before `AUTHENTICATE`, or the challenge is mistaken for it;
//! - a tagged NO/BAD on FETCH or STORE ends the result stream as if it were complete, so a listing
//!   starts with `UID SEARCH` and its FETCH must cover what the search found, a missing body is
//!   confirmed gone with `UID SEARCH` before it is left out, and commands whose data we do not
//!   need are sent with `run_command_and_check_ok`, which does check the tagged status;
//! - bodies are buffered whole by the library, so every body fetch is capped with a partial range;
//! - a `UID FETCH n:*` returns the highest message even when its UID is below `n`.
//!
//! By concern: `connection` (TLS, greeting, XOAUTH2 login, command deadlines, logout), `fetch`
//! (listing and capped body downloads), `folders` (SELECT/EXAMINE, LIST, STATUS, CREATE and the
//! dispositions), `idle` (IDLE), `sent` (copies of sent mail: the `\Sent` folder, APPEND once),
//! `tls` (one TLS context per set of trust roots, shared by every session), `utf7` (folder
//! names); each adds its own `impl Connection`.

mod connection;
mod fetch;
mod folders;
mod idle;
mod sent;
mod source;
mod tls;
mod utf7;

pub use connection::{Connection, ImapError, connect};
pub use source::ImapSource;
pub use utf7::{decode_folder_name, encode_folder_name};

pub use crate::mail_source::{Body, IdleOutcome, MessageSummary, SelectedFolder, Uid};

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
