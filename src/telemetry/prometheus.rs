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
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self, facts: &ScrapeFacts) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {}", number(value));
            }
        };
        let per_mailbox = |f: &dyn Fn(&MailboxStats) -> u64| -> Vec<(String, f64)> {
            self.mailboxes
                .iter()
                .map(|(name, m)| (labels(&[("mailbox", name)]), f(m) as f64))
                .collect()
        };

        family(
            "mailintake_start_time_seconds",
            "gauge",
            "When the process started (unix seconds).",
            vec![(String::new(), self.started_at_ms as f64 / 1000.0)],
        );
        family(
            "mailintake_database_up",
            "gauge",
            "1 when the database answered this scrape's ping.",
            vec![(String::new(), f64::from(u8::from(facts.database_up)))],
        );
        family(
            "mailintake_messages_listed_total",
            "counter",
            "New messages listed above the folder checkpoint.",
            per_mailbox(&|m| m.listed),
        );
        let mut outcomes = Vec::new();
        for (name, m) in &self.mailboxes {
            for (outcome, n) in [
                ("ticket", m.tickets),
                ("follow_up", m.follow_ups),
                ("duplicate", m.duplicates),
                ("quarantined", m.quarantined),
                ("ignored", m.ignored),
            ] {
                outcomes.push((labels(&[("mailbox", name), ("outcome", outcome)]), n as f64));
            }
        }
        family(
            "mailintake_messages_total",
            "counter",
            "Messages recorded, by outcome.",
            outcomes,
        );
        family(
            "mailintake_fetched_bytes_total",
            "counter",
            "Message bytes downloaded from IMAP.",
            per_mailbox(&|m| m.bytes_fetched),
        );
        let now = now_ms();
        family(
            "mailintake_oldest_unprocessed_age_seconds",
            "gauge",
            "Age of the oldest message listed but not yet recorded (0 when caught up).",
            self.mailboxes
                .iter()
                .map(|(name, m)| {
                    let age = m
                        .oldest_unprocessed_ms()
                        .map_or(0, |t| (now - t).max(0) / 1000);
                    (labels(&[("mailbox", name)]), age as f64)
                })
                .collect(),
        );
        family(
            "mailintake_junk_messages",
            "gauge",
            "Messages in the mailbox's Junk folder at the last check (every few minutes; absent until counted).",
            self.mailboxes
                .iter()
                .filter_map(|(name, m)| match m.junk.as_ref().map(|j| &j.result) {
                    Some(Ok(JunkListing::Listed { total, .. })) => {
                        Some((labels(&[("mailbox", name)]), f64::from(*total)))
                    }
                    _ => None,
                })
                .collect(),
        );
        family(
            "mailintake_acks_queued_total",
            "counter",
            "Acknowledgements written to the outbox.",
            per_mailbox(&|m| m.acks_queued),
        );
        for (name, help, pick) in [
            (
                "mailintake_ingest_latency_seconds",
                "From the server's INTERNALDATE to the commit of the message's outcome.",
                (|m: &MailboxStats| &m.ingest_latency) as fn(&MailboxStats) -> &Histogram,
            ),
            (
                "mailintake_sweep_duration_seconds",
                "Duration of a successful sweep over a folder.",
                |m: &MailboxStats| &m.sweep_duration,
            ),
        ] {
            let mut samples = Vec::new();
            for (mailbox, m) in &self.mailboxes {
                let h = pick(m);
                let mut cumulative = 0;
                for (bound, n) in h.bounds.iter().zip(&h.counts) {
                    cumulative += n;
                    samples.push((
                        format!(
                            "_bucket{}",
                            labels(&[("mailbox", mailbox), ("le", &number(*bound))])
                        ),
                        cumulative as f64,
                    ));
                }
                samples.push((
                    format!("_bucket{}", labels(&[("mailbox", mailbox), ("le", "+Inf")])),
                    h.count as f64,
                ));
                samples.push((format!("_sum{}", labels(&[("mailbox", mailbox)])), h.sum));
                samples.push((
                    format!("_count{}", labels(&[("mailbox", mailbox)])),
                    h.count as f64,
                ));
            }
            family(name, "histogram", help, samples);
        }
        family(
            "mailintake_last_success_timestamp_seconds",
            "gauge",
            "When every folder of the mailbox was last swept successfully (unix seconds; 0: never).",
            self.mailboxes
                .iter()
                .map(|(name, m)| {
                    (
                        labels(&[("mailbox", name)]),
                        m.last_success_ms().unwrap_or(0) as f64 / 1000.0,
                    )
                })
                .collect(),
        );
        let mut states = Vec::new();
        for (name, m) in &self.mailboxes {
            let current = m.state();
            for state in MailboxState::ALL {
                states.push((
                    labels(&[("mailbox", name), ("state", state.as_str())]),
                    f64::from(u8::from(state == current)),
                ));
            }
        }
        family(
            "mailintake_mailbox_state",
            "gauge",
            "1 for the mailbox's current state (the worst of its folders).",
            states,
        );
        let mut errors = Vec::new();
        for (name, m) in &self.mailboxes {
            for (kind, n) in [
                ("token", m.errors_token),
                ("imap", m.errors_imap),
                ("store", m.errors_store),
                ("panic", m.errors_panic),
            ] {
                errors.push((labels(&[("mailbox", name), ("kind", kind)]), n as f64));
            }
        }
        family(
            "mailintake_cycle_errors_total",
            "counter",
            "Failed logins and sweeps, by kind.",
            errors,
        );
        family(
            "mailintake_imap_logins_total",
            "counter",
            "IMAP logins.",
            per_mailbox(&|m| m.logins()),
        );
        family(
            "mailintake_reconciled_total",
            "counter",
            "Messages found at or below a folder's checkpoint without an outcome (shown late by the server) and taken in by the reconciliation.",
            per_mailbox(&|m| m.reconciled),
        );
        family(
            "mailintake_imap_reconnects_total",
            "counter",
            "IMAP logins after a folder's first one (token renewal, errors, dropped connections).",
            per_mailbox(&|m| m.reconnects()),
        );
        let mut sends = Vec::new();
        for (name, m) in &self.mailboxes {
            for (result, n) in [
                ("sent", m.sends_sent),
                ("retry", m.sends_retry),
                ("failed", m.sends_failed),
            ] {
                sends.push((labels(&[("mailbox", name), ("result", result)]), n as f64));
            }
        }
        family(
            "mailintake_outbox_sends_total",
            "counter",
            "Acknowledgement send attempts, by result.",
            sends,
        );
        family(
            "mailintake_outbox_blocked",
            "gauge",
            "Outbox rows waiting because the SMTP server refuses their From address (retried every 10 minutes).",
            self.mailboxes
                .iter()
                .flat_map(|(name, m)| {
                    capped_by_rows(&m.outbox_blocked)
                        .into_iter()
                        .map(move |(from, n_rows)| {
                            (labels(&[("mailbox", name), ("from", from)]), n_rows as f64)
                        })
                })
                .collect(),
        );
        family(
            "mailintake_dispositions_refused",
            "gauge",
            "Messages recorded whose disposition (mark seen, move, delete) the server refuses: they stay in the folder and each sweep tries again.",
            self.mailboxes
                .iter()
                .flat_map(|(name, m)| {
                    m.folders.iter().map(move |(folder, f)| {
                        let n: u64 = f.refused.iter().map(|r| r.n_messages).sum();
                        (labels(&[("mailbox", name), ("folder", folder)]), n as f64)
                    })
                })
                .collect(),
        );
        if let Some(pending) = &facts.outbox_pending {
            family(
                "mailintake_outbox_pending",
                "gauge",
                "Outbox rows waiting to be sent (due or waiting for a retry).",
                self.mailboxes
                    .keys()
                    .map(|name| {
                        (
                            labels(&[("mailbox", name)]),
                            pending.get(name).copied().unwrap_or(0) as f64,
                        )
                    })
                    .collect(),
            );
        }
        family(
            "mailintake_tokens_obtained_total",
            "counter",
            "New access tokens received by the workers.",
            self.identities
                .iter()
                .map(|(name, i)| (labels(&[("identity", name)]), i.tokens_obtained as f64))
                .collect(),
        );
        let mut failures = Vec::new();
        for (name, i) in &self.identities {
            for (reason, n) in [
                ("retry", i.failures_retry),
                ("needs_admin", i.failures_needs_admin),
            ] {
                failures.push((labels(&[("identity", name), ("reason", reason)]), n as f64));
            }
        }
        family(
            "mailintake_token_failures_total",
            "counter",
            "Token requests that failed, by what it takes: retry (passing trouble) or needs_admin.",
            failures,
        );
        let mut identity_states = Vec::new();
        for (name, i) in &self.identities {
            for state in IdentityState::ALL {
                identity_states.push((
                    labels(&[("identity", name), ("state", state.as_str())]),
                    f64::from(u8::from(state == i.state)),
                ));
            }
        }
        family(
            "mailintake_identity_state",
            "gauge",
            "1 for the identity's current state.",
            identity_states,
        );
        family(
            "mailintake_token_obtained_timestamp_seconds",
            "gauge",
            "When the identity last obtained a new access token (unix seconds): its last successful refresh.",
            self.identities
                .iter()
                .filter_map(|(name, i)| {
                    let at = i.token_obtained_at_ms?;
                    Some((labels(&[("identity", name)]), at as f64 / 1000.0))
                })
                .collect(),
        );
        family(
            "mailintake_token_expiry_timestamp_seconds",
            "gauge",
            "When the identity's newest access token expires (unix seconds).",
            self.identities
                .iter()
                .filter_map(|(name, i)| {
                    let at = i.token_expires_at_ms?;
                    Some((labels(&[("identity", name)]), at as f64 / 1000.0))
                })
                .collect(),
        );
        family(
            "mailintake_credential_expiry_timestamp_seconds",
            "gauge",
            "When the identity's client secret (secret_expires) or certificate (notAfter) expires.",
            facts
                .credential_expiry
                .iter()
                .map(|(name, (kind, at_ms))| {
                    (
                        labels(&[("identity", name), ("kind", kind)]),
                        *at_ms as f64 / 1000.0,
                    )
                })
                .collect(),
        );
        out
    }
}

/// `{a="x",b="y"}` with values escaped as the exposition format requires.
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

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Integers without a fraction, others as Rust prints them.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
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

    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            labels(&[("mailbox", "a\"b\\c\nd"), ("le", "+Inf")]),
            r#"{mailbox="a\"b\\c\nd",le="+Inf"}"#
        );
    }
}
