//! Folder names on the wire: IMAP's modified UTF-7 (RFC 3501 §5.1.3).
//!
//! Exchange folder names are often localised ("Posteingang/Erledigt", "Käsitelty"). This is the
//! whole encoder; a crate for it would be larger than the function.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// Encodes a folder name: printable ASCII stays as it is (`&` becomes `&-`), every run of other
/// characters becomes `&` + base64 (with `,` for `/`, no padding) of its UTF-16BE + `-`.
pub fn encode_folder_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&STANDARD_NO_PAD.encode(bytes).replace('/', ","));
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes a folder name as the server sends it (LIST). A name that is not valid modified UTF-7
/// is returned as sent: it still names the folder when encoded again, since it has no `&`
/// sequence this function could misread.
pub fn decode_folder_name(wire: &str) -> String {
    let mut out = String::with_capacity(wire.len());
    let mut rest = wire;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('-') else {
            return wire.to_string();
        };
        let encoded = &after[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let Ok(bytes) = STANDARD_NO_PAD.decode(encoded.replace(',', "/")) else {
                return wire.to_string();
            };
            if bytes.len() % 2 != 0 {
                return wire.to_string();
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            match String::from_utf16(&units) {
                Ok(text) => out.push_str(&text),
                Err(_) => return wire.to_string(),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::{decode_folder_name, encode_folder_name};

    #[test]
    fn decoding_reverses_encoding() {
        for name in [
            "INBOX",
            "Tom & Jerry",
            "Gesendete Elemente",
            "K\u{e4}sitelty",
            "~peter/mail/\u{53F0}\u{5317}/\u{65E5}\u{672C}\u{8A9E}",
            "\u{41e}\u{442}\u{43f}\u{440}\u{430}\u{432}\u{43b}\u{435}\u{43d}\u{43d}\u{44b}\u{435}",
        ] {
            assert_eq!(decode_folder_name(&encode_folder_name(name)), name);
        }
        assert_eq!(decode_folder_name("&AMQ-rger"), "\u{c4}rger");
        // Not modified UTF-7: kept as sent.
        assert_eq!(decode_folder_name("a&b"), "a&b");
        assert_eq!(decode_folder_name("a&%%%-b"), "a&%%%-b");
    }

    #[test]
    fn ascii_is_unchanged_and_ampersand_is_escaped() {
        assert_eq!(encode_folder_name("INBOX/Processed"), "INBOX/Processed");
        assert_eq!(encode_folder_name("Tom & Jerry"), "Tom &- Jerry");
    }

    #[test]
    fn rfc_3501_examples() {
        // RFC 3501 §5.1.3: "~peter/mail/台北/日本語".
        assert_eq!(
            encode_folder_name("~peter/mail/\u{53F0}\u{5317}/\u{65E5}\u{672C}\u{8A9E}"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(encode_folder_name("Käsitelty"), "K&AOQ-sitelty");
    }
}
