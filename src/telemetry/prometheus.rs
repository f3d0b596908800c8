//! The Prometheus text exposition format of a [`Snapshot`], with the facts read at scrape time
//! ([`ScrapeFacts`]): one family per metric, label values escaped, histograms with cumulative
//! buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::metrics::{Histogram, IdentityState, MailboxState, MailboxStats, Snapshot};
use crate::report::JunkListing;
use crate::time::now_ms;

/// Facts the snapshot does not hold, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct ScrapeFacts {
    pub database_up: bool,
    /// Pending outbox rows per mailbox, when the database answered.
    pub outbox_pending: Option<BTreeMap<String, u64>>,
    /// Per identity: the kind of credential (`client_secret`, `certificate`) and when it expires.
    pub credential_expiry: BTreeMap<String, (&'static str, i64)>,
}

impl Snapshot {
    /// The Prometheus text exposition format (version 0.0.4). Per mailbox about 25 series (its
    /// counters, gauges and closed-set states); the histograms are process-wide. Written straight
    /// into one buffer: at 1,000 mailboxes that is some 25,000 lines, rendered in milliseconds.
    pub fn prometheus(&self, facts: &ScrapeFacts) -> String {
        let mut out = Exposition {
            text: String::with_capacity(64 * 1024 + self.mailboxes.len() * 2048),
        };
        let per_mailbox = |out: &mut Exposition,
                           name: &str,
                           kind: &str,
                           help: &str,
                           f: &dyn Fn(&MailboxStats) -> f64| {
            out.family(name, kind, help);
            for (mailbox, m) in &self.mailboxes {
                out.sample(name, "", &[("mailbox", mailbox)], f(m));
            }
        };
        // A family with one label besides the mailbox, over a closed set of values.
        let per_mailbox_by =
            |out: &mut Exposition,
             name: &str,
             help: &str,
             label: &str,
             f: &dyn Fn(&MailboxStats) -> Vec<(&'static str, f64)>| {
                out.family(name, "counter", help);
                for (mailbox, m) in &self.mailboxes {
                    for (value, n) in f(m) {
                        out.sample(name, "", &[("mailbox", mailbox), (label, value)], n);
                    }
                }
            };

        out.family(
            "mailintake_start_time_seconds",
            "gauge",
            "When the process started (unix seconds).",
        );
        out.sample(
            "mailintake_start_time_seconds",
            "",
            &[],
            self.started_at_ms as f64 / 1000.0,
        );
        out.family(
            "mailintake_database_up",
            "gauge",
            "1 when the database answered this scrape's ping.",
        );
        out.sample(
            "mailintake_database_up",
            "",
            &[],
            f64::from(u8::from(facts.database_up)),
        );
        per_mailbox(
            &mut out,
            "mailintake_messages_listed_total",
            "counter",
            "New messages listed above the folder checkpoint.",
            &|m| m.listed as f64,
        );
        per_mailbox_by(
            &mut out,
            "mailintake_messages_total",
            "Messages recorded, by outcome.",
            "outcome",
            &|m| {
                vec![
                    ("ticket", m.tickets as f64),
                    ("follow_up", m.follow_ups as f64),
                    ("duplicate", m.duplicates as f64),
                    ("quarantined", m.quarantined as f64),
                    ("ignored", m.ignored as f64),
                ]
            },
        );
        per_mailbox(
            &mut out,
            "mailintake_fetched_bytes_total",
            "counter",
            "Message bytes downloaded from IMAP.",
            &|m| m.bytes_fetched as f64,
        );
        let now = now_ms();
        per_mailbox(
            &mut out,
            "mailintake_oldest_unprocessed_age_seconds",
            "gauge",
            "Age of the oldest message listed but not yet recorded (0 when caught up).",
            &|m| {
                m.oldest_unprocessed_ms()
                    .map_or(0, |t| (now - t).max(0) / 1000) as f64
            },
        );
        out.family(
            "mailintake_junk_messages",
            "gauge",
            "Messages in the mailbox's Junk folder at the last check (every few minutes; absent until counted).",
        );
        for (mailbox, m) in &self.mailboxes {
            if let Some(Ok(JunkListing::Listed { total, .. })) = m.junk.as_ref().map(|j| &j.result)
            {
                out.sample(
                    "mailintake_junk_messages",
                    "",
                    &[("mailbox", mailbox)],
                    f64::from(*total),
                );
            }
        }
        per_mailbox(
            &mut out,
            "mailintake_acks_queued_total",
            "counter",
            "Acknowledgements written to the outbox.",
            &|m| m.acks_queued as f64,
        );
        out.histogram(
            "mailintake_ingest_latency_seconds",
            "From the server's INTERNALDATE to the commit of the message's outcome, over all mailboxes.",
            &self.ingest_latency,
        );
        out.histogram(
            "mailintake_sweep_duration_seconds",
            "Duration of a successful sweep over a folder, over all mailboxes.",
            &self.sweep_duration,
        );
        per_mailbox(
            &mut out,
            "mailintake_last_success_timestamp_seconds",
            "gauge",
            "When every folder of the mailbox was last swept successfully (unix seconds; 0: never).",
            &|m| m.last_success_ms().unwrap_or(0) as f64 / 1000.0,
        );
        out.family(
            "mailintake_mailbox_state",
            "gauge",
            "1 for the mailbox's current state (the worst of its folders).",
        );
        for (mailbox, m) in &self.mailboxes {
            let current = m.state();
            for state in MailboxState::ALL {
                out.sample(
                    "mailintake_mailbox_state",
                    "",
                    &[("mailbox", mailbox), ("state", state.as_str())],
                    f64::from(u8::from(state == current)),
                );
            }
        }
        per_mailbox_by(
            &mut out,
            "mailintake_cycle_errors_total",
            "Failed logins and sweeps, by kind.",
            "kind",
            &|m| {
                vec![
                    ("token", m.errors_token as f64),
                    ("imap", m.errors_imap as f64),
                    ("store", m.errors_store as f64),
                    ("panic", m.errors_panic as f64),
                ]
            },
        );
        per_mailbox(
            &mut out,
            "mailintake_imap_logins_total",
            "counter",
            "IMAP logins.",
            &|m| m.logins() as f64,
        );
        per_mailbox(
            &mut out,
            "mailintake_reconciled_total",
            "counter",
            "Messages found at or below a folder's checkpoint without an outcome (shown late by the server) and taken in by the reconciliation.",
            &|m| m.reconciled as f64,
        );
        per_mailbox(
            &mut out,
            "mailintake_imap_reconnects_total",
            "counter",
            "IMAP logins after a folder's first one (token renewal, errors, dropped connections).",
            &|m| m.reconnects() as f64,
        );
        per_mailbox_by(
            &mut out,
            "mailintake_outbox_sends_total",
            "Acknowledgement send attempts, by result.",
            "result",
            &|m| {
                vec![
                    ("sent", m.sends_sent as f64),
                    ("retry", m.sends_retry as f64),
                    ("failed", m.sends_failed as f64),
                ]
            },
        );
        out.family(
            "mailintake_outbox_blocked",
            "gauge",
            "Outbox rows waiting because the SMTP server refuses their From address (retried every 10 minutes).",
        );
        for (mailbox, m) in &self.mailboxes {
            for (from, n_rows) in capped_by_rows(&m.outbox_blocked) {
                out.sample(
                    "mailintake_outbox_blocked",
                    "",
                    &[("mailbox", mailbox), ("from", from)],
                    n_rows as f64,
                );
            }
        }
        out.family(
            "mailintake_dispositions_refused",
            "gauge",
            "Messages recorded whose disposition (mark seen, move, delete) the server refuses: they stay in the folder and each sweep tries again.",
        );
        for (mailbox, m) in &self.mailboxes {
            for (folder, f) in &m.folders {
                let n: u64 = f.refused.iter().map(|r| r.n_messages).sum();
                out.sample(
                    "mailintake_dispositions_refused",
                    "",
                    &[("mailbox", mailbox), ("folder", folder)],
                    n as f64,
                );
            }
        }
        if let Some(pending) = &facts.outbox_pending {
            out.family(
                "mailintake_outbox_pending",
                "gauge",
                "Outbox rows waiting to be sent (due or waiting for a retry).",
            );
            for mailbox in self.mailboxes.keys() {
                out.sample(
                    "mailintake_outbox_pending",
                    "",
                    &[("mailbox", mailbox)],
                    pending.get(mailbox).copied().unwrap_or(0) as f64,
                );
            }
        }
        out.family(
            "mailintake_tokens_obtained_total",
            "counter",
            "New access tokens received by the workers.",
        );
        for (identity, i) in &self.identities {
            out.sample(
                "mailintake_tokens_obtained_total",
                "",
                &[("identity", identity)],
                i.tokens_obtained as f64,
            );
        }
        out.family(
            "mailintake_token_failures_total",
            "counter",
            "Token requests that failed, by what it takes: retry (passing trouble) or needs_admin.",
        );
        for (identity, i) in &self.identities {
            for (reason, n) in [
                ("retry", i.failures_retry),
                ("needs_admin", i.failures_needs_admin),
            ] {
                out.sample(
                    "mailintake_token_failures_total",
                    "",
                    &[("identity", identity), ("reason", reason)],
                    n as f64,
                );
            }
        }
        out.family(
            "mailintake_identity_state",
            "gauge",
            "1 for the identity's current state.",
        );
        for (identity, i) in &self.identities {
            for state in IdentityState::ALL {
                out.sample(
                    "mailintake_identity_state",
                    "",
                    &[("identity", identity), ("state", state.as_str())],
                    f64::from(u8::from(state == i.state)),
                );
            }
        }
        out.family(
            "mailintake_token_obtained_timestamp_seconds",
            "gauge",
            "When the identity last obtained a new access token (unix seconds): its last successful refresh.",
        );
        for (identity, i) in &self.identities {
            if let Some(at) = i.token_obtained_at_ms {
                out.sample(
                    "mailintake_token_obtained_timestamp_seconds",
                    "",
                    &[("identity", identity)],
                    at as f64 / 1000.0,
                );
            }
        }
        out.family(
            "mailintake_token_expiry_timestamp_seconds",
            "gauge",
            "When the identity's newest access token expires (unix seconds).",
        );
        for (identity, i) in &self.identities {
            if let Some(at) = i.token_expires_at_ms {
                out.sample(
                    "mailintake_token_expiry_timestamp_seconds",
                    "",
                    &[("identity", identity)],
                    at as f64 / 1000.0,
                );
            }
        }
        out.family(
            "mailintake_credential_expiry_timestamp_seconds",
            "gauge",
            "When the identity's client secret (secret_expires) or certificate (notAfter) expires.",
        );
        for (identity, (kind, at_ms)) in &facts.credential_expiry {
            out.sample(
                "mailintake_credential_expiry_timestamp_seconds",
                "",
                &[("identity", identity), ("kind", kind)],
                *at_ms as f64 / 1000.0,
            );
        }
        out.text
    }
}

/// The exposition text being written: families, samples and histograms appended in place, with
/// no string built per sample.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// `name` + `suffix`, the labels (values escaped) and the value, as one line.
    fn sample(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        self.text.push_str(suffix);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_number(&mut self.text, value);
        self.text.push('\n');
    }

    /// A histogram without labels: cumulative buckets, `+Inf`, sum and count.
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        let mut bound = String::new();
        for (upper, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            bound.clear();
            write_number(&mut bound, *upper);
            self.sample(name, "_bucket", &[("le", &bound)], cumulative as f64);
        }
        self.sample(name, "_bucket", &[("le", "+Inf")], h.count as f64);
        self.sample(name, "_sum", &[], h.sum);
        self.sample(name, "_count", &[], h.count as f64);
    }
}

/// Series of `mailintake_outbox_blocked` per mailbox at most: the From addresses with the most
/// waiting rows, and one `from="other"` for the rest. From addresses come from the helpdesk's
/// mail (any address `send_as` allows), so without a cap one mailbox could make a series per
/// address it ever tried.
pub const BLOCKED_FROM_SERIES: usize = 10;

/// The blocked From addresses as `(from, rows)`: the [`BLOCKED_FROM_SERIES`] with the most rows
/// (ties by address), then `other` with the sum of the rest, if any.
fn capped_by_rows(blocked: &[crate::report::BlockedSender]) -> Vec<(&str, u64)> {
    let mut by_rows: Vec<(&str, u64)> = blocked
        .iter()
        .map(|b| (b.from_address.as_str(), b.n_rows))
        .collect();
    by_rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if by_rows.len() > BLOCKED_FROM_SERIES {
        let rest: u64 = by_rows[BLOCKED_FROM_SERIES..].iter().map(|(_, n)| n).sum();
        by_rows.truncate(BLOCKED_FROM_SERIES);
        by_rows.push(("other", rest));
    }
    by_rows
}

/// A label value as the exposition format requires: backslash, double quote and line feed escaped.
fn escape_label_value(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Integers without a fraction, others as Rust prints them.
fn write_number(out: &mut String, value: f64) {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_from_addresses_are_capped_with_the_rest_as_other() {
        let blocked: Vec<crate::report::BlockedSender> = (0..25u64)
            .map(|i| crate::report::BlockedSender {
                from_address: format!("sender{i:02}@contoso.com"),
                n_rows: i + 1,
                reason: String::new(),
                since_ms: 0,
                retry_at_ms: 0,
            })
            .collect();
        let series = capped_by_rows(&blocked);
        assert_eq!(series.len(), BLOCKED_FROM_SERIES + 1, "{series:?}");
        assert_eq!(series[0], ("sender24@contoso.com", 25));
        assert_eq!(series[9], ("sender15@contoso.com", 16));
        // 1 + 2 + … + 15, the fifteen with the fewest rows.
        assert_eq!(series[10], ("other", 120));
        assert_eq!(capped_by_rows(&blocked[..3]).len(), 3);
    }

    /// Two configurations that differ by mailboxes only.
    fn snapshot_of(n_mailboxes: usize) -> Snapshot {
        let mut toml = String::from(
            "[identities.app]\ntenant = \"contoso.onmicrosoft.com\"\n\
             client_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret = \"s\"\n",
        );
        for i in 0..n_mailboxes {
            toml.push_str(&format!(
                "[[mailboxes]]\nname = \"m{i}\"\naddress = \"m{i}@contoso.com\"\n\
                 identity = \"app\"\nimap = {{ host = \"outlook.office365.com\" }}\n"
            ));
        }
        let config =
            crate::config::Config::from_toml_str(&toml, std::path::Path::new(".")).unwrap();
        super::super::Metrics::new(&config).snapshot()
    }

    #[test]
    fn series_per_mailbox_are_few_and_histograms_process_wide() {
        let facts = ScrapeFacts {
            database_up: true,
            outbox_pending: Some(BTreeMap::new()),
            credential_expiry: BTreeMap::new(),
        };
        let series = |n| {
            snapshot_of(n)
                .prometheus(&facts)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count()
        };
        let per_mailbox = series(11) - series(10);
        assert!(per_mailbox <= 30, "{per_mailbox} series per mailbox");
        let text = snapshot_of(3).prometheus(&facts);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("mailintake_ingest_latency_seconds_bucket"))
                .count(),
            12,
            "11 bounds and +Inf, once for the process"
        );
        assert!(text.contains("mailintake_ingest_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("mailintake_sweep_duration_seconds_count 0\n"));
        assert!(text.contains("mailintake_messages_total{mailbox=\"m2\",outcome=\"ticket\"} 0\n"));
    }

    #[test]
    fn labels_are_escaped() {
        let mut out = Exposition {
            text: String::new(),
        };
        out.sample("m", "_x", &[("mailbox", "a\"b\\c\nd"), ("le", "+Inf")], 1.5);
        out.sample("m", "", &[], 3.0);
        assert_eq!(
            out.text,
            "m_x{mailbox=\"a\\\"b\\\\c\\nd\",le=\"+Inf\"} 1.5\nm 3\n"
        );
    }
}
