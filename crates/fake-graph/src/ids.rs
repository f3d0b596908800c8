//! Identifiers shaped like Exchange's: base64url-safe, case-sensitive strings. Immutable ids
//! (`Prefer: IdType="ImmutableId"`) stay with a message for its life in the mailbox; the
//! default REST ids are minted again whenever the message moves, as Exchange's change.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `N` random bytes (OpenSSL's CSPRNG; a counter-and-clock fallback keeps ids unique should it
/// ever fail, so no request panics).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut bytes = [0u8; N];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let seed = COUNTER.fetch_add(1, Ordering::Relaxed) ^ crate::time::now_secs() as u64;
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (seed.rotate_left((i % 8) as u32 * 8) & 0xff) as u8;
        }
    }
    bytes
}

/// A REST message id (changes on move): `AAMkAG…AAA=` like Exchange's EntryId-based ids.
pub(crate) fn rest_message_id() -> String {
    format!("AAMkAG{}AAA=", URL_SAFE_NO_PAD.encode(random_bytes::<30>()))
}

/// An immutable message id: `AAkALg…` like Exchange's restImmutableEntryId.
pub(crate) fn immutable_message_id() -> String {
    format!("AAkALg{}AAA=", URL_SAFE_NO_PAD.encode(random_bytes::<30>()))
}

/// A folder id (folder ids never change).
pub(crate) fn folder_id() -> String {
    format!("AAMkAG{}AAAA", URL_SAFE_NO_PAD.encode(random_bytes::<24>()))
}

/// An opaque state token for `$skiptoken` / `$deltatoken`.
pub(crate) fn state_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<24>())
}

/// A `changeKey` / etag body.
pub(crate) fn change_key() -> String {
    format!("CQAAABYAAA{}", URL_SAFE_NO_PAD.encode(random_bytes::<12>()))
}

/// A random version-4 UUID (request ids, user ids).
pub(crate) fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// True if `id` could be one of ours (a message or folder id); anything else is
/// `ErrorInvalidIdMalformed` rather than `ErrorItemNotFound`, as Exchange distinguishes.
pub(crate) fn looks_like_id(id: &str) -> bool {
    id.len() >= 16
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+' | b'/'))
}
