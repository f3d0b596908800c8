//! The process's open-files limit (`RLIMIT_NOFILE`). Every IMAP session, SMTP connection,
//! database connection and HTTP client is a file descriptor; systemd and most shells start a
//! process with a soft limit of 1,024, which 1,000 mailboxes in IDLE exceed. `run` and `once`
//! raise the soft limit to the hard limit (which needs no privilege) before any task starts, and
//! say what it was, what it is, and whether it is enough for the configured mailboxes.
//!
//! Written on `libc` (already linked for `mallopt`), not the `rlimit` crate: it is two system
//! calls, and a new dependency for them would not earn its place.

/// Descriptors the process holds whatever its mailboxes: standard streams, the runtime's
/// epoll and wake-up descriptors, the log file, CA and config files being read, the HTTP
/// listener and its clients, the token endpoints' connections.
pub const BASE_FILES: u64 = 128;
/// Descriptors one database connection may hold: a socket on PostgreSQL; on SQLite the
/// database, its WAL and its shared-memory file.
pub const FILES_PER_DATABASE_CONNECTION: u64 = 3;

/// The limit before and after [`raise_to_hard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: u64,
    pub soft: u64,
    /// `None`: unlimited.
    pub hard: Option<u64>,
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    #[error("cannot read the open-files limit (getrlimit RLIMIT_NOFILE): {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "cannot raise the open-files soft limit from {from} to {to} (setrlimit RLIMIT_NOFILE): {source}"
    )]
    Raise {
        from: u64,
        to: u64,
        #[source]
        source: std::io::Error,
    },
}

/// How many descriptors a worker needs: one IMAP session per folder task, one SMTP connection
/// (or Graph connection) per sender, the Junk check's one session, the database pool, and
/// [`BASE_FILES`].
pub fn needed(folder_tasks: usize, senders: usize, database_connections: u32) -> u64 {
    BASE_FILES
        + folder_tasks as u64
        + senders as u64
        + 1
        + u64::from(database_connections) * FILES_PER_DATABASE_CONNECTION
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; under an unlimited hard limit to
/// 1,048,576 (Linux's default `fs.nr_open`, above which the kernel refuses any soft limit).
pub fn raise_to_hard() -> Result<OpenFiles, OpenFilesError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(OpenFilesError::Read(std::io::Error::last_os_error()));
    }
    let soft_before: u64 = limit.rlim_cur;
    let hard = (limit.rlim_max != libc::RLIM_INFINITY).then_some(limit.rlim_max);
    let target = hard.unwrap_or(1 << 20);
    if soft_before >= target {
        return Ok(OpenFiles {
            soft_before,
            soft: soft_before,
            hard,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one valid `rlimit`; raising the soft limit up to the hard one
    // needs no privilege and changes nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(OpenFilesError::Raise {
            from: soft_before,
            to: target,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(OpenFiles {
        soft_before,
        soft: target,
        hard,
    })
}

/// Raises the limit ([`raise_to_hard`]) and logs it: INFO with before and after, WARN when the
/// hard limit is below what `needed` descriptors take, with the fix. Never fails the start: a
/// process that cannot raise it runs with what it has and says so.
pub fn raise_and_report(needed: u64, mailboxes: usize) {
    match raise_to_hard() {
        Ok(files) => {
            let hard = files
                .hard
                .map_or("unlimited".to_string(), |h| h.to_string());
            tracing::info!(
                soft_before = files.soft_before,
                soft = files.soft,
                hard = %hard,
                needed,
                "open-files limit: {} → {} (hard limit {hard}); about {needed} needed for {mailboxes} mailbox(es)",
                files.soft_before,
                files.soft
            );
            if files.soft < needed {
                tracing::warn!(
                    soft = files.soft,
                    needed,
                    "the open-files hard limit ({}) is below the about {needed} descriptors {mailboxes} mailbox(es) need: \
                     sessions beyond it fail with `Too many open files`; raise it (systemd: LimitNOFILE={}; \
                     docker: --ulimit nofile={}:{}; a shell: ulimit -Hn as root) or run fewer mailboxes per worker",
                    files.soft,
                    needed.next_power_of_two(),
                    needed.next_power_of_two(),
                    needed.next_power_of_two(),
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, needed, "open-files limit left as it is"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_idle_mailboxes_need_more_than_the_usual_1024() {
        assert!(needed(1_000, 0, 16) > 1_024);
        assert_eq!(
            needed(1, 1, 4),
            BASE_FILES + 3 + 4 * FILES_PER_DATABASE_CONNECTION
        );
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let files = raise_to_hard().unwrap();
        assert!(files.soft >= files.soft_before, "{files:?}");
        if let Some(hard) = files.hard {
            assert_eq!(files.soft, hard, "{files:?}");
        }
        // Idempotent: a second call finds it raised.
        let again = raise_to_hard().unwrap();
        assert_eq!(again.soft_before, files.soft, "{again:?}");
    }
}
