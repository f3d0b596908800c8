//! One worker per SQLite database. SQLite serialises its writers and knows nothing of leases, so a
//! second `run` or `once` on the same file (a service started twice, a cron `once` beside the
//! service) is refused while the first holds an exclusive lock on `<database>-worker.lock`; the
//! other commands (and a helpdesk's own connections) work beside it. The lock is the operating
//! system's (`flock`): it goes with the process, however that ends, so no stale lock is ever left.
//! Several workers share the mailboxes on PostgreSQL instead.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held while the worker runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct WorkerLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerLockError {
    #[error(
        "another mailintake worker is running on the SQLite database {} ({holder}); one worker per SQLite \
         database: stop it first (the other commands work beside it), or move to PostgreSQL to run several \
         workers (README, \"Deployment\": one worker per SQLite database)",
        database.display()
    )]
    Held { database: PathBuf, holder: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The database file of an SQLite URL (`sqlite://path?…`, `sqlite:path`); `None` for another
/// backend or an in-memory database.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Takes the worker lock of the SQLite database at `url` for `command` (`run`, `once`), or says
/// who holds it. `Ok(None)` for PostgreSQL (the fleet's leases share the work there) and for an
/// in-memory database.
pub fn lock_worker(url: &str, command: &str) -> Result<Option<WorkerLock>, WorkerLockError> {
    let Some(database) = sqlite_file(url) else {
        return Ok(None);
    };
    let path = lock_path(&database);
    let io = |source| WorkerLockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(WorkerLockError::Held {
                database,
                holder: if holder.is_empty() {
                    "it did not say which".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // Who holds it, for the message a second worker gets.
    let holder = format!(
        "pid {} on {}, `{command}`, since {}",
        std::process::id(),
        hostname(),
        crate::time::rfc3339(crate::time::now_ms())
    );
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(holder.as_bytes()).map_err(io)?;
    Ok(Some(WorkerLock { _file: file }))
}

fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_os_string();
    name.push("-worker.lock");
    PathBuf::from(name)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_files_of_urls() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/m.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/m.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:data/m.db"),
            Some(PathBuf::from("data/m.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://u@127.0.0.1/m"), None);
    }

    #[test]
    fn a_second_worker_is_refused_naming_the_first_and_the_lock_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/m.db", dir.path().display());
        let first = lock_worker(&url, "run").unwrap().expect("a lock");
        let refused = lock_worker(&url, "once").unwrap_err().to_string();
        assert!(refused.contains("another mailintake worker"), "{refused}");
        assert!(
            refused.contains(&format!("pid {}", std::process::id())) && refused.contains("`run`"),
            "{refused}"
        );
        drop(first);
        assert!(lock_worker(&url, "once").unwrap().is_some());
        assert!(
            lock_worker("postgres://u@127.0.0.1/m", "run")
                .unwrap()
                .is_none()
        );
    }
}
