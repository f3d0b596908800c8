//! Delivery status notifications (RFC 3464): the per-recipient fields of the
//! `message/delivery-status` part, which mail-parser leaves as it is.

use mail_parser::MimeHeaders;

crate::closed_set! {
    /// What a reporting MTA did about one recipient (RFC 3464 §2.3.3 `Action`).
    pub enum DsnAction("DSN action") {
        /// Delivery failed for good: a bounce.
        Failed = "failed",
        /// Not delivered yet; the MTA keeps trying. Not a bounce.
        Delayed = "delayed",
        Delivered = "delivered",
        Relayed = "relayed",
        Expanded = "expanded",
    }
}

/// One recipient's block of a delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `Final-Recipient` (else `Original-Recipient`) without its address type (`rfc822;`).
    pub recipient: String,
    pub action: DsnAction,
    /// `Status`, an RFC 3463 code such as `5.1.1`.
    pub status: Option<String>,
    /// `Diagnostic-Code` as given, e.g. `smtp; 550 5.1.1 User unknown`.
    pub diagnostic: Option<String>,
}

/// The machine-readable part of a delivery status notification (`message/delivery-status`, or
/// `message/global-delivery-status` of RFC 6533): who reports, and one block per recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// `Reporting-MTA`, e.g. `dns; mx.customer.test`.
    pub reporting_mta: Option<String>,
    /// `Original-Envelope-Id` (RFC 3464 §2.2.1): the ENVID the sender gave at MAIL FROM, xtext
    /// decoded. mailintake sends its Message-ID there, so a DSN that returns nothing of the
    /// message still names it.
    pub original_envelope_id: Option<String>,
    /// The recipients whose `Action` is one RFC 3464 defines (others are left out).
    pub recipients: Vec<RecipientStatus>,
}

impl DeliveryReport {
    /// The recipients the message could not be delivered to.
    pub fn failed(&self) -> impl Iterator<Item = &RecipientStatus> {
        self.recipients
            .iter()
            .filter(|r| r.action == DsnAction::Failed)
    }
}

/// The `message/delivery-status` part of a report, read as RFC 3464 §2 writes it: header-like
/// fields (folded lines unfolded) in groups separated by blank lines, the first group about the
/// message (`Reporting-MTA`), each further one about a recipient. mail-parser leaves this part's
/// content as it is, so the fields are read here.
pub(super) fn delivery_report(message: &mail_parser::Message<'_>) -> Option<DeliveryReport> {
    let part = message.parts.iter().skip(1).find(|part| {
        part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|sub| {
                    sub.eq_ignore_ascii_case("delivery-status")
                        || sub.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    let text = String::from_utf8_lossy(part.contents());
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if groups.last().is_some_and(|group| !group.is_empty()) {
                groups.push(Vec::new());
            }
            continue;
        }
        let group = groups.last_mut().expect("at least one group");
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let field = |group: &[(String, String)], name: &str| {
        group
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let mut report = DeliveryReport::default();
    for group in groups.iter().filter(|g| !g.is_empty()) {
        if let Some(mta) = field(group, "reporting-mta") {
            report.reporting_mta.get_or_insert(mta);
        }
        if let Some(id) = field(group, "original-envelope-id") {
            report.original_envelope_id.get_or_insert(xtext_decode(&id));
        }
        let Some(action) = field(group, "action") else {
            continue;
        };
        // `failed (permanent)` and other comments after the value are seen in the wild.
        let keyword = action
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let Ok(action) = keyword.parse::<DsnAction>() else {
            continue;
        };
        let recipient = field(group, "final-recipient")
            .or_else(|| field(group, "original-recipient"))
            .map(|r| match r.split_once(';') {
                Some((_type, address)) => address.trim().to_string(),
                None => r,
            })
            .unwrap_or_default();
        report.recipients.push(RecipientStatus {
            // `rfc822; <a@b>`: the address without its angle brackets.
            recipient: recipient.trim().trim_matches(['<', '>']).to_string(),
            action,
            status: field(group, "status"),
            diagnostic: field(group, "diagnostic-code"),
        });
    }
    Some(report)
}

/// RFC 3461's xtext decoded: `+XX` is the byte with hex value XX; anything else as it is.
fn xtext_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
