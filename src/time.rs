//! Clocks and dates, on the ground floor: every stored time is unix milliseconds (BIGINT in every
//! table, since sqlx's `Any` driver cannot read TIMESTAMPTZ), shown to operators as RFC 3339.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock as unix milliseconds, the form every table stores.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// `2026-11-01` (midnight UTC) or an RFC 3339 instant → unix milliseconds.
pub fn parse_date(text: &str) -> Option<i64> {
    let instant = if text.len() == 10 {
        humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?
    } else {
        humantime::parse_rfc3339_weak(text).ok()?
    };
    instant
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// A stored time (unix ms) as `2026-05-01T10:00:00Z`.
pub fn rfc3339(at_ms: i64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_instants_round_trip_through_rfc3339() {
        let midnight = parse_date("2026-11-01").expect("a date");
        assert_eq!(rfc3339(midnight).to_string(), "2026-11-01T00:00:00Z");
        let instant = parse_date("2026-11-01T10:30:00Z").expect("an instant");
        assert_eq!(instant - midnight, (10 * 60 + 30) * 60_000);
        assert_eq!(parse_date("yesterday"), None);
    }
}
