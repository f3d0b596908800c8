//! Mail as it really arrives, made readable before it is parsed: a header section in an undeclared
//! 8-bit charset (RFC 5322 allows only ASCII there, RFC 6532 UTF-8), and a message whose blank line
//! between header and body is missing. Each repair is taken only where it is unambiguous; the raw
//! bytes are never changed (their digest and any kept copy are of the original).

use mail_parser::{MessageParser, MimeHeaders};

/// `raw` with its body separated from its header where the blank line is missing: the first line
/// after at least one header field that is neither a field (`Name: value`) nor a continuation
/// (starting with white space) starts the body. `None` when nothing needs repairing.
pub(super) fn recover_missing_blank_line(raw: &[u8]) -> Option<Vec<u8>> {
    let mut offset = 0;
    let mut fields = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            // The blank line is there: nothing to repair.
            return None;
        }
        let continuation = matches!(content[0], b' ' | b'\t');
        if !(is_field(content) || continuation && fields > 0) {
            if fields == 0 {
                // Not a message we can read a header from at all; leave it to the parser.
                return None;
            }
            let newline: &[u8] = if raw[..offset].ends_with(b"\r\n") {
                b"\r\n"
            } else {
                b"\n"
            };
            let mut repaired = Vec::with_capacity(raw.len() + 2);
            repaired.extend_from_slice(&raw[..offset]);
            repaired.extend_from_slice(newline);
            repaired.extend_from_slice(&raw[offset..]);
            return Some(repaired);
        }
        if !continuation {
            fields += 1;
        }
        offset += line.len();
    }
    None
}

/// A header field line: a field name (printable ASCII but `:`, RFC 5322 §3.6.8) and a colon.
fn is_field(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        Some(colon) => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
    }
}

/// `raw` with its header section transcoded to UTF-8 when that section holds 8-bit bytes that are
/// not UTF-8 (RFC 6532): they are read in the charset the message declares for its body (what
/// the sender's software used for everything), else as windows-1252. `None` when the header is
/// ASCII or UTF-8 already.
pub(super) fn transcode_8bit_header(raw: &[u8]) -> Option<Vec<u8>> {
    let header_len = header_len(raw);
    let header = &raw[..header_len];
    if header.is_ascii() || std::str::from_utf8(header).is_ok() {
        return None;
    }
    let declared = MessageParser::default()
        .parse(raw)
        .and_then(|message| body_charset(&message));
    let decoded = declared
        .as_deref()
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .and_then(|encoding| {
            let (text, had_errors) = encoding.decode_without_bom_handling(header);
            (!had_errors).then(|| text.into_owned())
        })
        .unwrap_or_else(|| {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(header)
                .0
                .into_owned()
        });
    let mut transcoded = decoded.into_bytes();
    transcoded.extend_from_slice(&raw[header_len..]);
    Some(transcoded)
}

/// The length of the header section, up to and including the blank line (all of `raw` without one).
fn header_len(raw: &[u8]) -> usize {
    let mut offset = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        if line == b"\n" || line == b"\r\n" {
            return offset;
        }
    }
    raw.len()
}

/// The charset the message declares for its text: the root part's, else the first text part's.
fn body_charset(message: &mail_parser::Message<'_>) -> Option<String> {
    message
        .parts
        .iter()
        .filter_map(|part| part.content_type())
        .find_map(|ct| ct.attribute("charset"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_its_blank_line_starts_at_the_first_line_that_is_no_field() {
        let raw = b"From: a@b.test\r\nSubject: Hi\r\n  folded\r\nHello there,\r\nSecond: line\r\n";
        assert_eq!(
            recover_missing_blank_line(raw).unwrap(),
            b"From: a@b.test\r\nSubject: Hi\r\n  folded\r\n\r\nHello there,\r\nSecond: line\r\n"
        );
        // A complete message, or one whose first line is no field, is left alone.
        assert_eq!(
            recover_missing_blank_line(b"From: a@b.test\n\nBody\n"),
            None
        );
        assert_eq!(recover_missing_blank_line(b"Hello\nFrom: a@b.test\n"), None);
        assert_eq!(
            recover_missing_blank_line(b"From: a@b.test\nSubject: only a header\n"),
            None
        );
    }

    #[test]
    fn an_undeclared_8bit_header_is_read_in_the_bodys_charset_else_windows_1252() {
        let (subject, _, _) = encoding_rs::BIG5.encode("印表機故障");
        let mut raw = b"From: a@b.test\r\nSubject: ".to_vec();
        raw.extend_from_slice(&subject);
        raw.extend_from_slice(b"\r\nContent-Type: text/plain; charset=big5\r\n\r\nx\r\n");
        let transcoded = transcode_8bit_header(&raw).unwrap();
        assert!(
            String::from_utf8(transcoded)
                .unwrap()
                .contains("Subject: 印表機故障")
        );
        // No declared charset: windows-1252.
        let raw = b"From: a@b.test\r\nSubject: Caf\xe9\r\n\r\nx\r\n";
        let transcoded = transcode_8bit_header(raw).unwrap();
        assert!(
            String::from_utf8(transcoded)
                .unwrap()
                .contains("Subject: Café")
        );
        // UTF-8 (RFC 6532) and ASCII headers are left as they are.
        assert_eq!(
            transcode_8bit_header("Subject: Café\r\n\r\nx".as_bytes()),
            None
        );
        assert_eq!(transcode_8bit_header(b"Subject: plain\r\n\r\nx"), None);
    }
}
