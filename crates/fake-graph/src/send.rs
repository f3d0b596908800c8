//! What Exchange does to the MIME of `sendMail` (https://learn.microsoft.com/graph/api/user-sendmail):
//! headers it strips or adds, the Bcc only the sender's copy keeps, and the MIME built from the
//! JSON variant's `message`. No IO.

use serde_json::Value;

use crate::{ids, time};

pub(crate) fn header_end(mime: &[u8]) -> usize {
    mime.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| mime.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(mime.len())
}

pub(crate) fn extract_header(mime: &[u8], name: &str) -> Option<String> {
    let head = String::from_utf8_lossy(&mime[..header_end(mime)]).into_owned();
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

/// `X-` headers Exchange itself maps to message properties and writes back into the MIME it
/// sends ([MS-OXCMAIL] 2.1.3.2, "Mapping Internet headers": X-Priority, X-MSMail-Priority,
/// X-Auto-Response-Suppress, X-Message-Flag, X-MS-Has-Attach, X-MS-TNEF-Correlator, X-Mailer
/// as PidTagClient…), plus Exchange's own `X-MS-` stamps. Other `X-` headers are "unknown".
pub(crate) const KNOWN_X_HEADERS: &[&str] = &[
    "X-Priority",
    "X-MSMail-Priority",
    "X-Auto-Response-Suppress",
    "X-Message-Flag",
    "X-MS-Has-Attach",
    "X-MS-TNEF-Correlator",
    "X-Mailer",
];

/// Which headers Exchange removes from MIME it sends.
pub(crate) struct Strip<'a> {
    /// By name (compared case-insensitively).
    pub headers: &'a [String],
    /// Every `X-` header not in [`KNOWN_X_HEADERS`] and not `X-MS-…`.
    pub unknown_x_headers: bool,
}

impl Strip<'_> {
    fn removes(&self, name: &str) -> bool {
        if self.headers.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return true;
        }
        let lower = name.to_ascii_lowercase();
        self.unknown_x_headers
            && lower.starts_with("x-")
            && !lower.starts_with("x-ms-")
            && !KNOWN_X_HEADERS.iter().any(|k| k.eq_ignore_ascii_case(name))
    }
}

/// What Exchange does to MIME it sends: removes the `strip` headers (and Bcc from the
/// recipients' copies), adds Date and From when missing, and a Message-ID when
/// `add_message_id`.
pub(crate) fn prepare_outgoing(
    mime: &[u8],
    strip: &Strip<'_>,
    from: &str,
    add_message_id: bool,
    drop_bcc: bool,
) -> Vec<u8> {
    let end = header_end(mime);
    let head = String::from_utf8_lossy(&mime[..end]).into_owned();
    let mut kept: Vec<String> = Vec::new();
    let mut skipping = false;
    let mut has_date = false;
    let mut has_from = false;
    for line in head.split_inclusive('\n') {
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if !continuation {
            let name = line.split(':').next().unwrap_or("").trim();
            skipping = strip.removes(name) || (drop_bcc && name.eq_ignore_ascii_case("Bcc"));
            has_date |= name.eq_ignore_ascii_case("Date");
            has_from |= name.eq_ignore_ascii_case("From");
        }
        if !skipping && !line.trim().is_empty() {
            kept.push(line.trim_end_matches(['\r', '\n']).to_owned());
        }
    }
    if add_message_id {
        kept.insert(
            0,
            format!("Message-ID: <{}@fake-graph.prod.outlook.test>", ids::uuid()),
        );
    }
    if !has_date {
        kept.push(format!("Date: {}", rfc2822(time::now_secs())));
    }
    if !has_from {
        kept.push(format!("From: {from}"));
    }
    let mut out = kept.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    let rest = &mime[end..];
    let body = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
        .unwrap_or(rest);
    out.extend_from_slice(body);
    out
}

/// `mime` with its Message-ID field (and the field's folded lines) replaced by one Exchange
/// makes, as [`crate::OwnMessageIds`] has Exchange do; the new one first.
pub(crate) fn with_exchange_message_id(mime: &[u8]) -> Vec<u8> {
    let end = header_end(mime);
    let head = String::from_utf8_lossy(&mime[..end]).into_owned();
    let mut out = format!(
        "Message-ID: <{}@{}.namprd00.prod.outlook.test>\r\n",
        ids::uuid().replace('-', "").to_ascii_uppercase(),
        "FAKEGRAPH01MB0001"
    );
    let mut skipping = false;
    for line in head.split_inclusive('\n') {
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if !continuation {
            skipping = line
                .split(':')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("Message-ID"));
        }
        if !skipping {
            out.push_str(line);
        }
    }
    let mut out = out.into_bytes();
    out.extend_from_slice(&mime[end..]);
    out
}

fn rfc2822(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = time::iso(secs);
    let (y, m, d) = (&iso[0..4], &iso[5..7], &iso[8..10]);
    let month = m.parse::<usize>().unwrap_or(1).clamp(1, 12);
    let weekday = DAYS[secs.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{weekday}, {} {} {y} {} +0000",
        d.trim_start_matches('0'),
        MONTHS[month - 1],
        &iso[11..19]
    )
}

/// A MIME message from sendMail's JSON `message` (subject, body, recipients, custom
/// `internetMessageHeaders`).
pub(crate) fn mime_from_json(message: &Value, sender: &str) -> Vec<u8> {
    let list = |name: &str| -> String {
        message
            .get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.pointer("/emailAddress/address").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut lines = vec![format!("From: {sender}")];
    for (header, field) in [
        ("To", "toRecipients"),
        ("Cc", "ccRecipients"),
        ("Bcc", "bccRecipients"),
    ] {
        let value = list(field);
        if !value.is_empty() {
            lines.push(format!("{header}: {value}"));
        }
    }
    let subject = message.get("subject").and_then(Value::as_str).unwrap_or("");
    lines.push(format!("Subject: {subject}"));
    for h in message
        .get("internetMessageHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (
            h.get("name").and_then(Value::as_str),
            h.get("value").and_then(Value::as_str),
        ) {
            lines.push(format!("{n}: {v}"));
        }
    }
    let html = message
        .pointer("/body/contentType")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("html"));
    lines.push("MIME-Version: 1.0".to_owned());
    lines.push(format!(
        "Content-Type: text/{}; charset=utf-8",
        if html { "html" } else { "plain" }
    ));
    let content = message
        .pointer("/body/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{}\r\n\r\n{content}\r\n", lines.join("\r\n")).into_bytes()
}
