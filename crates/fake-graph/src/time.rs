//! Graph's timestamps: ISO 8601 in UTC (`2018-08-12T08:43:22Z`), and the `innerError.date`
//! form without the zone (`2018-05-05T09:12:35`). No IO, no clock beyond `SystemTime::now`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> i64 {
    unix_secs(SystemTime::now())
}

/// Seconds since the epoch of `at` (negative before 1970).
pub(crate) fn unix_secs(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `2018-08-12T08:43:22Z`, the form of `receivedDateTime` and friends.
pub(crate) fn iso(secs: i64) -> String {
    format!("{}Z", iso_without_zone(secs))
}

/// `2018-08-12T08:43:22`, the form of `innerError.date`.
pub(crate) fn iso_without_zone(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an OData `DateTimeOffset` literal as Graph accepts it in `$filter`:
/// `2024-01-31T10:00:00Z`, with optional fractional seconds and a `+hh:mm`/`-hh:mm` offset
/// instead of `Z`; a date alone (`2024-01-31`) means midnight UTC.
pub(crate) fn parse_iso(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = match text.split_once(['T', 't']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(time) = time {
        let (clock, offset) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0)
        } else if let Some(pos) = time.rfind(['+', '-']) {
            let (clock, offset) = time.split_at(pos);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (oh, om) = offset[1..].split_once(':')?;
            let minutes = oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?;
            (clock, sign * minutes * 60)
        } else {
            (time, 0)
        };
        let clock = clock.split('.').next()?;
        let mut fields = clock.splitn(3, ':');
        let h: i64 = fields.next()?.parse().ok()?;
        let min: i64 = fields.next()?.parse().ok()?;
        let s: i64 = fields.next().map_or(Some(0), |s| s.parse().ok())?;
        if h > 23 || min > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + min * 60 + s - offset;
    }
    Some(secs)
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_534_063_402), "2018-08-12T08:43:22Z");
        assert_eq!(parse_iso("2018-08-12T08:43:22Z"), Some(1_534_063_402));
        assert_eq!(
            parse_iso("2018-08-12T10:43:22.123+02:00"),
            Some(1_534_063_402)
        );
        assert_eq!(parse_iso("2018-08-12"), Some(1_534_032_000));
        assert_eq!(parse_iso("2018-13-12T00:00:00Z"), None);
        assert_eq!(parse_iso("yesterday"), None);
        assert_eq!(iso_without_zone(1_534_063_402), "2018-08-12T08:43:22");
    }
}
