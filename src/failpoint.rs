//! Crash points for the fault tests, in debug builds only.
//!
//! `MAILINTAKE_FAILPOINT=<name>:<n>` makes the process abort (as `kill -9` would: no destructors,
//! no logout) the n-th time it passes the point `<name>` (n = 1 when omitted). Release builds
//! compile every point to nothing.

/// The places a test can crash the worker at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Right after a batch of outcomes is committed, before any IMAP disposition.
    AfterCommit,
}

impl Point {
    #[cfg(debug_assertions)]
    fn name(self) -> &'static str {
        match self {
            Point::AfterCommit => "after-commit",
        }
    }
}

#[cfg(debug_assertions)]
pub fn hit(point: Point) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    static ARMED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static PASSES: AtomicU32 = AtomicU32::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("MAILINTAKE_FAILPOINT").ok()?;
        let (name, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
        Some((name.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((name, n)) = armed
        && name == point.name()
        && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("mailintake: failpoint {name} reached; aborting");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: Point) {}
