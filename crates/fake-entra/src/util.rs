//! Small helpers shared by the modules: base64url, random and derived identifiers, Entra's
//! timestamp format. No IO.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::{MessageDigest, hash};

/// Base64url without padding, as used in JWTs and JWKs.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url, tolerating (and ignoring) trailing padding.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// SHA-256 of `data`. Falls back to an empty digest only if OpenSSL itself is broken.
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    hash(MessageDigest::sha256(), data)
        .map(|d| d.to_vec())
        .unwrap_or_default()
}

/// SHA-1 of `data` (certificate thumbprints, `x5t`).
pub(crate) fn sha1(data: &[u8]) -> Vec<u8> {
    hash(MessageDigest::sha1(), data)
        .map(|d| d.to_vec())
        .unwrap_or_default()
}

/// `N` random bytes from OpenSSL's CSPRNG. Should OpenSSL fail (it does not in practice), the
/// bytes are derived from the clock and a counter: identifiers must stay unique, and a request
/// must never panic.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut seed = Vec::new();
        seed.extend_from_slice(&unix_nanos().to_le_bytes());
        seed.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let mut block = sha256(&seed);
        for (i, byte) in bytes.iter_mut().enumerate() {
            if i > 0 && i % 32 == 0 {
                block = sha256(&block);
            }
            *byte = block.get(i % 32).copied().unwrap_or(0);
        }
    }
    bytes
}

/// A random version-4 UUID in the usual 8-4-4-4-12 form (trace and correlation IDs, `uti`).
pub(crate) fn random_uuid() -> String {
    format_uuid(random_bytes::<16>())
}

/// A UUID derived from `input`, so that object IDs (`oid`, `sub`) are the same on every fake
/// instance: tokens stay comparable across instances without shared state.
pub(crate) fn derived_uuid(input: &str) -> String {
    let digest = sha256(input.as_bytes());
    let mut bytes = [0u8; 16];
    for (dst, src) in bytes.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    format_uuid(bytes)
}

fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6],
        b[7],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// A random opaque string of `N` bytes of entropy (refresh tokens, device codes).
pub(crate) fn random_opaque<const N: usize>() -> String {
    b64url(&random_bytes::<N>())
}

/// Seconds since the Unix epoch (0 for a clock before 1970).
pub(crate) fn unix_secs(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Entra's timestamp format in error bodies: `2026-11-23 17:50:00Z`.
pub(crate) fn entra_timestamp(at: SystemTime) -> String {
    let secs = unix_secs(at);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, which avoids a date-time dependency for one format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamp_matches_entra_format() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_456_200); // 2026-11-23 17:50:00 UTC
        assert_eq!(entra_timestamp(at), "2026-11-23 17:50:00Z");
        assert_eq!(entra_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(entra_timestamp(leap), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn uuids_have_version_4_shape() {
        let id = random_uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(derived_uuid("a"), derived_uuid("a"));
        assert_ne!(derived_uuid("a"), derived_uuid("b"));
    }
}
