//! A message too large for one Graph request, taken apart: its top-level attachments, largest
//! first, are detached until the rest (its header, its text and the attachments that still
//! fit, byte for byte as composed) fits `budget`; Graph makes a draft of the rest and adds the
//! detached ones to it (`graph/send.rs`). The Message-ID, In-Reply-To and References stay in
//! the header, so loop safety and threading are those of a message sent whole.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// The message without its detached attachments, and those attachments decoded.
#[derive(Debug)]
pub struct Detached {
    pub skeleton: Vec<u8>,
    pub files: Vec<DetachedFile>,
}

/// One detached attachment.
#[derive(Debug)]
pub struct DetachedFile {
    pub name: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub inline: bool,
    pub content: Vec<u8>,
}

/// Why a message cannot be sent through a Graph draft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetachError {
    #[error(
        "the message ({size} bytes) is not multipart/mixed, so it has no attachments to add to a draft separately, and Graph takes at most {budget} bytes in one request"
    )]
    NoAttachments { size: usize, budget: usize },
    #[error(
        "without its {detached} attachments the message is still {size} bytes (its text or inline parts), more than the {budget} bytes Graph takes in one request"
    )]
    StillTooLarge {
        size: usize,
        detached: usize,
        budget: usize,
    },
    #[error("attachment {name:?} is {size} bytes, more than the {limit} bytes Outlook takes")]
    AttachmentTooLarge {
        name: String,
        size: usize,
        limit: usize,
    },
}

/// One top-level part of the message: where its bytes are, and whether it may be detached.
struct Part<'a> {
    bytes: &'a [u8],
    file: Option<DetachedFile>,
}

/// Takes `raw` apart so that its skeleton is at most `budget` bytes; attachments above
/// `max_attachment` bytes are refused.
pub fn detach(raw: &[u8], budget: usize, max_attachment: usize) -> Result<Detached, DetachError> {
    let no_attachments = DetachError::NoAttachments {
        size: raw.len(),
        budget,
    };
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(no_attachments.clone())?;
    let root = message.parts.first().ok_or(no_attachments.clone())?;
    let boundary = match root.content_type() {
        Some(ct)
            if ct.c_type.eq_ignore_ascii_case("multipart")
                && ct
                    .c_subtype
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("mixed")) =>
        {
            ct.attribute("boundary")
                .ok_or(no_attachments.clone())?
                .to_string()
        }
        _ => return Err(no_attachments),
    };
    let sub_parts = root.sub_parts().ok_or(no_attachments.clone())?;
    let head_end = (root.offset_body as usize).min(raw.len());
    let head = &raw[..head_end];
    let mut parts: Vec<Part<'_>> = Vec::new();
    for (i, &id) in sub_parts.iter().enumerate() {
        let part = &message.parts[id as usize];
        let start = part.offset_header as usize;
        let end = (part.offset_end as usize).min(raw.len());
        let bytes = &raw[start.min(end)..end];
        // The first part is the text; an attachment is a leaf with a name.
        let file = match (&part.body, part.attachment_name()) {
            (PartType::Binary(content) | PartType::InlineBinary(content), Some(name)) if i > 0 => {
                Some((name, content.to_vec()))
            }
            (PartType::Text(text), Some(name)) if i > 0 => Some((name, text.as_bytes().to_vec())),
            _ => None,
        }
        .map(|(name, content)| DetachedFile {
            name: name.to_string(),
            content_type: part
                .content_type()
                .map(|ct| match &ct.c_subtype {
                    Some(sub) => format!("{}/{sub}", ct.c_type),
                    None => ct.c_type.to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            content_id: part
                .content_id()
                .map(|c| c.trim_matches(['<', '>']).to_string()),
            inline: part
                .content_disposition()
                .is_some_and(|d| d.c_type.eq_ignore_ascii_case("inline")),
            content,
        });
        parts.push(Part { bytes, file });
    }
    // Detach the largest attachments until the rest fits.
    let mut order: Vec<usize> = (0..parts.len())
        .filter(|&i| parts[i].file.is_some())
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(parts[i].bytes.len()));
    let mut detached = vec![false; parts.len()];
    let size = |detached: &[bool]| skeleton_size(head, &boundary, &parts, detached);
    for &i in &order {
        if size(&detached) <= budget {
            break;
        }
        detached[i] = true;
    }
    let n_detached = detached.iter().filter(|d| **d).count();
    if size(&detached) > budget {
        return Err(DetachError::StillTooLarge {
            size: size(&detached),
            detached: n_detached,
            budget,
        });
    }
    let skeleton = build(head, &boundary, &parts, &detached);
    let files: Vec<DetachedFile> = parts
        .into_iter()
        .zip(&detached)
        .filter(|(_, d)| **d)
        .filter_map(|(p, _)| p.file)
        .collect();
    if let Some(big) = files.iter().find(|f| f.content.len() > max_attachment) {
        return Err(DetachError::AttachmentTooLarge {
            name: big.name.clone(),
            size: big.content.len(),
            limit: max_attachment,
        });
    }
    Ok(Detached { skeleton, files })
}

/// A part's bytes without the line break that belongs to the boundary after it.
fn trimmed(bytes: &[u8]) -> &[u8] {
    bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(bytes)
}

fn skeleton_size(head: &[u8], boundary: &str, parts: &[Part<'_>], detached: &[bool]) -> usize {
    let delimiter = boundary.len() + 4; // "--" boundary CRLF, or CRLF "--" boundary
    let kept: usize = parts
        .iter()
        .zip(detached)
        .filter(|(_, d)| !**d)
        .map(|(p, _)| delimiter + trimmed(p.bytes).len() + 2)
        .sum();
    head.len() + kept + delimiter + 2
}

fn build(head: &[u8], boundary: &str, parts: &[Part<'_>], detached: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(skeleton_size(head, boundary, parts, detached));
    out.extend_from_slice(head);
    for (part, _) in parts.iter().zip(detached).filter(|(_, d)| !**d) {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(trimmed(part.bytes));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn encoded(content: &[u8]) -> String {
        let text = base64::engine::general_purpose::STANDARD.encode(content);
        text.as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
            .collect()
    }

    fn message(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = String::from(
            "From: support@helpdesk.test\r\nTo: alice@customer.test\r\nSubject: Files\r\n\
             Message-ID: <mailintake.1@helpdesk.test>\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHere they are.\r\n",
        );
        for (name, content) in files {
            out.push_str(&format!(
                "--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}",
                encoded(content)
            ));
        }
        out.push_str("--b1--\r\n");
        out.into_bytes()
    }

    #[test]
    fn the_largest_attachments_are_detached_until_the_rest_fits() {
        let big = vec![7u8; 300_000];
        let middle = vec![8u8; 100_000];
        let small = vec![9u8; 1_000];
        let raw = message(&[
            ("small.pdf", &small),
            ("big.pdf", &big),
            ("middle.pdf", &middle),
        ]);
        let detached = detach(&raw, 200_000, 1_000_000).unwrap();
        let names: Vec<&str> = detached.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["big.pdf"]);
        assert_eq!(detached.files[0].content, big);
        assert_eq!(detached.files[0].content_type, "application/pdf");
        assert!(!detached.files[0].inline);
        assert!(detached.skeleton.len() <= 200_000);
        // The rest parses back: the header, the text and the two attachments that fit.
        let back = mail_parser::MessageParser::default()
            .parse(&detached.skeleton)
            .unwrap();
        assert_eq!(back.message_id(), Some("mailintake.1@helpdesk.test"));
        assert_eq!(back.body_text(0).unwrap().trim_end(), "Here they are.");
        let kept: Vec<(&str, Vec<u8>)> = back
            .attachments()
            .map(|a| (a.attachment_name().unwrap(), a.contents().to_vec()))
            .collect();
        assert_eq!(
            kept,
            [("small.pdf", small.clone()), ("middle.pdf", middle.clone())]
        );

        // A smaller budget detaches the next largest too, the small one still fits.
        let detached = detach(&raw, 50_000, 1_000_000).unwrap();
        let names: Vec<&str> = detached.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["big.pdf", "middle.pdf"]);
    }

    #[test]
    fn a_message_that_cannot_fit_says_why() {
        let raw = message(&[("big.pdf", &[1u8; 10_000])]);
        assert_eq!(
            detach(&raw, 100, 1_000_000).unwrap_err(),
            DetachError::StillTooLarge {
                size: detach(&raw, 10_000, 1_000_000).unwrap().skeleton.len(),
                detached: 1,
                budget: 100
            }
        );
        let plain = b"Subject: x\r\nContent-Type: text/plain\r\n\r\nlong text\r\n";
        assert!(matches!(
            detach(plain, 10, 1_000_000),
            Err(DetachError::NoAttachments { .. })
        ));
        assert!(matches!(
            detach(&raw, 1_000, 5_000),
            Err(DetachError::AttachmentTooLarge { size: 10_000, .. })
        ));
    }

    #[test]
    fn lettres_composition_is_taken_apart_too() {
        use lettre::message::{Attachment, MultiPart, SinglePart, header::ContentType};
        let file = vec![42u8; 50_000];
        let message = lettre::Message::builder()
            .from("support@helpdesk.test".parse().unwrap())
            .to("alice@customer.test".parse().unwrap())
            .subject("Report")
            .multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain("See attached.".to_string()))
                    .singlepart(Attachment::new("report.bin".into()).body(
                        file.clone(),
                        ContentType::parse("application/octet-stream").unwrap(),
                    )),
            )
            .unwrap();
        let raw = message.formatted();
        let detached = detach(&raw, 10_000, 1_000_000).unwrap();
        assert_eq!(detached.files.len(), 1);
        assert_eq!(detached.files[0].name, "report.bin");
        assert_eq!(detached.files[0].content, file);
        let back = mail_parser::MessageParser::default()
            .parse(&detached.skeleton)
            .unwrap();
        assert_eq!(back.subject(), Some("Report"));
        assert_eq!(back.body_text(0).unwrap().trim_end(), "See attached.");
        assert_eq!(back.attachments().count(), 0);
    }
}
