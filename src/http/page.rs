//! The status page at `/`: server-rendered HTML of the mailboxes, Junk folders, identities, newest
//! tickets and quarantined messages, every value from mail or errors escaped. The mailbox table
//! is paged ([`PAGE_SIZE`] rows) and filtered ([`MailboxFilter`]), so a worker with 1,000
//! mailboxes renders (and asks the database about) one page of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::credential_expiries;
use crate::config::Config;
use crate::oauth;
use crate::telemetry::{MailboxState, Snapshot};
use crate::time::now_ms;

/// Mailboxes per page of the status page.
pub const PAGE_SIZE: usize = 50;

/// Which mailboxes the page shows: `?page=` (from 1), `?q=` and `?state=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxFilter {
    pub page: usize,
    /// Lower case; matched against the name and the address, lower-cased.
    pub q: Option<String>,
    pub state: Option<MailboxState>,
}

/// The mailboxes of one page, and where it stands among all of them.
#[derive(Debug)]
pub struct Shown {
    pub filter: MailboxFilter,
    /// The page's mailboxes, by name.
    pub names: Vec<String>,
    /// How many mailboxes the filter matches, and how many there are.
    pub matching: usize,
    pub total: usize,
    pub pages: usize,
}

impl MailboxFilter {
    /// Reads the query's values; `Err` is the 400 answer's text, naming the parameter and what
    /// it takes.
    pub fn parse(
        page: Option<&str>,
        q: Option<&str>,
        state: Option<&str>,
    ) -> Result<MailboxFilter, String> {
        let page = match page.map(str::trim).filter(|p| !p.is_empty()) {
            None => 1,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                        "page: `{text}` is not a page number; pages count from 1, e.g. /?page=2"
                    ));
                }
            },
        };
        let q = q
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase);
        let state = match state.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(MailboxState::parse(text).ok_or_else(|| {
                let all: Vec<&str> = MailboxState::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "state: `{text}` is not a mailbox state; use one of {}",
                    all.join(", ")
                )
            })?),
        };
        Ok(MailboxFilter { page, q, state })
    }

    /// The page's mailboxes from the snapshot (sorted by name), with the counts for the pager.
    pub fn select(&self, config: &Config, snapshot: &Snapshot) -> Shown {
        let addresses = addresses(config);
        let matching: Vec<&String> = snapshot
            .mailboxes
            .iter()
            .filter(|(_, m)| self.state.is_none_or(|state| m.state() == state))
            .filter(|(name, _)| {
                self.q.as_deref().is_none_or(|q| {
                    name.to_lowercase().contains(q)
                        || addresses
                            .get(name.as_str())
                            .is_some_and(|a| a.to_lowercase().contains(q))
                })
            })
            .map(|(name, _)| name)
            .collect();
        let pages = matching.len().div_ceil(PAGE_SIZE).max(1);
        Shown {
            names: matching
                .iter()
                .skip((self.page - 1).saturating_mul(PAGE_SIZE))
                .take(PAGE_SIZE)
                .map(|name| name.to_string())
                .collect(),
            matching: matching.len(),
            total: snapshot.mailboxes.len(),
            pages,
            filter: self.clone(),
        }
    }

    /// The page's address with this filter on page `page`.
    fn href(&self, page: usize) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(q) = &self.q {
            query.append_pair("q", q);
        }
        if let Some(state) = self.state {
            query.append_pair("state", state.as_str());
        }
        query.append_pair("page", &page.to_string());
        format!("/?{}", query.finish())
    }
}

/// Each configured mailbox's address, by name.
fn addresses(config: &Config) -> BTreeMap<&str, &str> {
    config
        .mailboxes
        .iter()
        .map(|m| (m.name.as_str(), m.address.as_str()))
        .collect()
}

/// The filter form and the pager above the mailbox table.
fn pager(page: &mut String, shown: &Shown) {
    let filter = &shown.filter;
    let _ = write!(
        page,
        "<form method=\"get\" action=\"/\" class=\"filter\"><input type=\"search\" name=\"q\" \
         placeholder=\"name or address\" value=\"{}\"> <select name=\"state\"><option value=\"\">any state</option>",
        escape(filter.q.as_deref().unwrap_or(""))
    );
    for state in MailboxState::ALL {
        let _ = write!(
            page,
            "<option value=\"{0}\"{1}>{2}</option>",
            state.as_str(),
            if filter.state == Some(state) {
                " selected"
            } else {
                ""
            },
            state.as_str().replace('_', " ")
        );
    }
    page.push_str("</select> <button type=\"submit\">Filter</button></form>");
    let first = (filter.page - 1) * PAGE_SIZE;
    let range = if shown.names.is_empty() {
        "none".to_string()
    } else {
        format!("{}–{}", first + 1, first + shown.names.len())
    };
    let _ = write!(
        page,
        "<p class=\"pager\">mailboxes {range} of {} matching ({} in all) · page {} of {}",
        shown.matching, shown.total, filter.page, shown.pages
    );
    if filter.page > 1 {
        let _ = write!(
            page,
            " · <a rel=\"prev\" href=\"{}\">previous</a>",
            escape(&filter.href((filter.page - 1).min(shown.pages)))
        );
    }
    if filter.page < shown.pages {
        let _ = write!(
            page,
            " · <a rel=\"next\" href=\"{}\">next</a>",
            escape(&filter.href(filter.page + 1))
        );
    }
    page.push_str("</p>");
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number of seconds as `90s`, `5m`, `3h`, `4d`.
fn span(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The Junk column of a mailbox: its count at the last check, already HTML.
fn junk_cell(junk: Option<&crate::report::JunkStatus>, now: i64) -> String {
    use crate::report::JunkListing;
    match junk {
        None => "<span class=\"muted\">not checked yet</span>".into(),
        Some(status) => {
            let checked = format!(
                "<div class=\"muted\">checked {}</div>",
                escape(&when(status.checked_at_ms, now))
            );
            match &status.result {
                Ok(JunkListing::Listed { folder, total, .. }) => {
                    format!("{total} in {}{checked}", escape(folder))
                }
                Ok(JunkListing::Missing { folder }) => {
                    format!("no folder {} (junk_folder){checked}", escape(folder))
                }
                Err(e) => format!(
                    "could not look: {}{checked}",
                    escape(e.lines().next().unwrap_or(""))
                ),
            }
        }
    }
}

/// The newest messages of every Junk folder that has any.
fn junk_section(page: &mut String, snapshot: &Snapshot, shown: &Shown, now: i64) {
    use crate::report::JunkListing;
    page.push_str(
        "<h2>Junk folders</h2><p class=\"muted\">Real customer mail sometimes lands here: \
         <code>mailintake junk list</code> and <code>mailintake junk release UID</code>. \
         The mailboxes of this page.</p>\
         <table><thead><tr><th>Mailbox</th><th>UID</th><th>From</th><th>Subject</th><th>Bytes</th>\
         <th>Received</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (name, m) in shown
        .names
        .iter()
        .filter_map(|name| Some((name, snapshot.mailboxes.get(name)?)))
    {
        let Some(Ok(JunkListing::Listed { newest, .. })) = m.junk.as_ref().map(|j| &j.result)
        else {
            continue;
        };
        for item in newest {
            any = true;
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(&item.id.to_string()),
                escape(item.from.as_deref().unwrap_or("-")),
                escape(item.subject.as_deref().unwrap_or("-")),
                item.size_bytes,
                escape(
                    &item
                        .received_ms
                        .map(|t| when(t, now))
                        .unwrap_or_else(|| "-".into())
                ),
            );
        }
    }
    if !any {
        page.push_str(
            "<tr><td colspan=\"6\" class=\"muted\">no junk mail seen in these mailboxes</td></tr>",
        );
    }
    page.push_str("</tbody></table>");
}

/// A unix-ms time as `2026-05-01T10:00:00Z (3m ago)` / `(in 20d)`.
fn when(at_ms: i64, now_ms: i64) -> String {
    let at = if at_ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(at_ms as u64)
    } else {
        UNIX_EPOCH
    };
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    let delta = (now_ms - at_ms) / 1000;
    if delta >= 0 {
        format!("{stamp} ({} ago)", span(delta))
    } else {
        format!("{stamp} (in {})", span(-delta))
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2430}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{border-bottom:1px solid #d8dde6;padding:.35rem .5rem;text-align:left;vertical-align:top}\
th{background:#f2f4f8}.state{font-weight:600;padding:.1rem .4rem;border-radius:.3rem}\
.ok{background:#d9f2df;color:#17602b}.starting{background:#e6ecf5;color:#34495e}\
.retrying{background:#fff0c9;color:#7a5300}.needs_admin,.down{background:#fbd9d9;color:#8a1c1c}\
.hint{color:#5a6475;font-size:.85rem}.muted{color:#7b8494}.wide{overflow-x:auto}";

#[allow(clippy::too_many_arguments)]
pub(super) fn render_page(
    config: &Config,
    snapshot: &Snapshot,
    shown: &Shown,
    database: &Result<(), String>,
    tickets: Option<&[crate::store::TicketSummary]>,
    quarantined: Option<&[crate::store::admin::QuarantineEntry]>,
    backlog: Option<&crate::store::admin::Backlog>,
    ack_notices: &std::collections::BTreeMap<String, String>,
) -> String {
    let now = now_ms();
    let expiries = credential_expiries(config);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>mailintake status</title><style>{STYLE}</style></head><body>\
         <h1>mailintake status</h1><p class=\"muted\">version {} · started {} · rendered {} · database: {}</p>",
        env!("CARGO_PKG_VERSION"),
        escape(&when(snapshot.started_at_ms, now)),
        escape(&when(now, now)),
        match database {
            Ok(()) => "<span class=\"state ok\">ok</span>".to_string(),
            Err(e) => format!(
                "<span class=\"state down\">unreachable</span> {}",
                escape(e)
            ),
        }
    );

    page.push_str("<h2>Mailboxes</h2>");
    pager(&mut page, shown);
    page.push_str(
        "<div class=\"wide\"><table><thead><tr><th>Mailbox</th><th>State</th><th>Last successful sweep</th>\
         <th>Since start</th><th>Oldest unprocessed</th><th>Quarantined (open)</th><th>Outbox backlog</th><th>Junk folder</th><th>Token expires</th>\
         <th>Credential expires</th><th>Last error</th></tr></thead><tbody>",
    );
    let count = |pick: fn(&crate::store::admin::Backlog) -> &BTreeMap<String, i64>,
                 mailbox: &str|
     -> String {
        match backlog {
            None => "?".into(),
            Some(b) => pick(b).get(mailbox).copied().unwrap_or(0).to_string(),
        }
    };
    let addresses = addresses(config);
    if shown.names.is_empty() {
        page.push_str(
            "<tr><td colspan=\"11\" class=\"muted\">no mailbox on this page matches</td></tr>",
        );
    }
    for (name, m) in shown
        .names
        .iter()
        .filter_map(|name| Some((name, snapshot.mailboxes.get(name)?)))
    {
        let state = m.state().as_str();
        let identity = snapshot.identities.get(&m.identity);
        let token = identity
            .and_then(|i| i.token_expires_at_ms)
            .map(|t| when(t, now))
            .unwrap_or_else(|| "-".into());
        let credential = expiries
            .get(&m.identity)
            .map(|(kind, at)| format!("{} {}", kind.replace('_', " "), when(*at, now)))
            .unwrap_or_else(|| "unknown".into());
        let oldest = match m.oldest_unprocessed_ms() {
            Some(t) => format!("{} old", span((now - t).max(0) / 1000)),
            None => "none (caught up)".into(),
        };
        let junk = junk_cell(m.junk.as_ref(), now);
        let mut error = String::new();
        if let Some(e) = m.last_error() {
            let _ = write!(error, "{}", escape(&e.summary));
            if let Some(hint) = &e.hint {
                let _ = write!(error, "<div class=\"hint\">fix: {}</div>", escape(hint));
            }
        }
        if let Some(e) = &m.outbox_error {
            let _ = write!(error, "<div>outbox: {}</div>", escape(&e.summary));
        }
        if let Some(notice) = ack_notices.get(name) {
            let _ = write!(error, "<div class=\"refused\">{}</div>", escape(notice));
        }
        for (folder, refused) in m.refused_dispositions() {
            let since = refused
                .since_ms
                .map(|t| format!(" (since {})", when(t, now)))
                .unwrap_or_default();
            let _ = write!(
                error,
                "<div class=\"refused\">{}: {}{}</div>",
                escape(folder),
                escape(&refused.describe()),
                escape(&since)
            );
        }
        let _ = write!(
            page,
            "<tr class=\"mailbox\"><td>{}<div class=\"muted\">{}</div></td><td><span class=\"state {state}\">{}</span></td>\
             <td>{}</td><td>{} ticket(s), {} follow-up(s), {} quarantined, {} ignored</td>\
             <td class=\"oldest\">{}</td><td>{}</td><td>{}</td><td class=\"junk\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(addresses.get(name.as_str()).copied().unwrap_or_default()),
            state.replace('_', " "),
            escape(
                &m.last_success_ms()
                    .map(|t| when(t, now))
                    .unwrap_or_else(|| "never".into())
            ),
            m.tickets,
            m.follow_ups,
            m.quarantined,
            m.ignored,
            escape(&oldest),
            escape(&count(|b| &b.quarantine_open, name)),
            outbox_cell(&count(|b| &b.outbox_pending, name), &m.outbox_blocked, now)
                + &deferred_div(m.outbox_deferred.as_ref()),
            junk,
            escape(&token),
            escape(&credential),
            error,
        );
    }
    page.push_str("</tbody></table></div>");

    junk_section(&mut page, snapshot, shown, now);

    page.push_str(
        "<h2>Identities</h2><table><thead><tr><th>Identity</th><th>State</th><th>New tokens</th>\
         <th>Failures (retry / needs admin)</th><th>Problem</th></tr></thead><tbody>",
    );
    for (name, i) in &snapshot.identities {
        let warning = config.identities.get(name).and_then(oauth::expiry_warning);
        let mut problem = String::new();
        if let Some(e) = &i.last_error {
            let _ = write!(problem, "{}", escape(&e.summary));
            if let Some(hint) = &e.hint {
                let _ = write!(problem, "<div class=\"hint\">fix: {}</div>", escape(hint));
            }
        }
        if let Some(w) = warning {
            let _ = write!(problem, "<div class=\"hint\">{}</div>", escape(&w));
        }
        let _ = write!(
            page,
            "<tr><td>{}</td><td><span class=\"state {}\">{}</span></td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            escape(name),
            i.state.as_str(),
            i.state.as_str().replace('_', " "),
            i.tokens_obtained,
            i.failures_retry,
            i.failures_needs_admin,
            problem
        );
    }
    page.push_str("</tbody></table>");

    page.push_str(
        "<h2>Recent tickets</h2><table><thead><tr><th>Ticket</th><th>Mailbox</th><th>Requester</th>\
         <th>Subject</th><th>Messages</th><th>Created</th></tr></thead><tbody>",
    );
    match tickets {
        None => page.push_str("<tr><td colspan=\"6\">the database did not answer</td></tr>"),
        Some([]) => page.push_str("<tr><td colspan=\"6\" class=\"muted\">no tickets yet</td></tr>"),
        Some(tickets) => {
            for t in tickets {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&t.reference),
                    escape(&t.mailbox),
                    escape(t.requester.as_deref().unwrap_or("-")),
                    escape(&t.subject),
                    t.n_messages,
                    escape(&when(t.created_at_ms, now)),
                );
            }
        }
    }
    page.push_str("</tbody></table>");

    page.push_str(
        "<h2>Recently quarantined</h2><table><thead><tr><th>Id</th><th>Mailbox</th><th>Reason</th>\
         <th>From</th><th>Subject</th><th>Bytes</th><th>When</th></tr></thead><tbody>",
    );
    match quarantined {
        None => page.push_str("<tr><td colspan=\"7\">the database did not answer</td></tr>"),
        Some([]) => {
            page.push_str("<tr><td colspan=\"7\" class=\"muted\">nothing is quarantined</td></tr>")
        }
        Some(rows) => {
            for q in rows {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    q.id,
                    escape(&q.mailbox),
                    escape(q.reason.as_str()),
                    if q.released_at_ms.is_some() {
                        " (released)"
                    } else {
                        ""
                    },
                    escape(q.from_address.as_deref().unwrap_or("-")),
                    escape(q.subject.as_deref().unwrap_or("-")),
                    q.size_bytes,
                    escape(&when(q.created_at_ms, now)),
                );
            }
        }
    }
    page.push_str(
        "</tbody></table><p class=\"muted\">Act on them with <code>mailintake quarantine</code> and \
         <code>mailintake outbox</code>. Machine-readable: <a href=\"/metrics\">/metrics</a>, \
         <a href=\"/readyz\">/readyz</a>.</p></body></html>\n",
    );
    page
}

/// Under the outbox backlog: the rows the sending budget holds back, why, and when they are due.
fn deferred_div(deferred: Option<&crate::report::Deferred>) -> String {
    deferred.map_or_else(String::new, |d| {
        format!(
            "<div class=\"blocked\">{} waiting for the {}; due {}</div>",
            d.n_rows,
            escape(&d.reason),
            crate::time::rfc3339(d.until_ms)
        )
    })
}

/// The outbox backlog, and under it each From address the server refuses: how many rows wait,
/// since when, the reply and the fix.
fn outbox_cell(pending: &str, blocked: &[crate::report::BlockedSender], now: i64) -> String {
    let mut cell = escape(pending);
    for b in blocked.iter().take(BLOCKED_SHOWN) {
        let mut lines = b.reason.lines();
        let reply = lines.next().unwrap_or("");
        let _ = write!(
            cell,
            "<div class=\"blocked\">{} waiting: {} refused since {}: {}</div>",
            b.n_rows,
            escape(&b.from_address),
            escape(&when(b.since_ms, now)),
            escape(reply)
        );
        for line in lines {
            let _ = write!(cell, "<div class=\"hint\">{}</div>", escape(line.trim()));
        }
    }
    if blocked.len() > BLOCKED_SHOWN {
        let _ = write!(
            cell,
            "<div class=\"blocked\">and {} more From address(es): <code>mailintake outbox list</code></div>",
            blocked.len() - BLOCKED_SHOWN
        );
    }
    cell
}

/// Blocked From addresses named in one mailbox's outbox cell; the rest are counted.
const BLOCKED_SHOWN: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn the_outbox_cell_names_a_blocked_from_address_with_the_fix() {
        let blocked = crate::report::BlockedSender {
            from_address: "sales@contoso.com".into(),
            n_rows: 2,
            reason: "RCPT TO refused: 553 5.7.1 <sales@contoso.com>: Sender address rejected\n  fix: grant SendAs".into(),
            since_ms: 0,
            retry_at_ms: 600_000,
        };
        let cell = outbox_cell("5", &[blocked], 60_000);
        assert!(
            cell.starts_with("5<div class=\"blocked\">2 waiting: sales@contoso.com refused since "),
            "{cell}"
        );
        assert!(
            cell.contains("&lt;sales@contoso.com&gt;: Sender address rejected</div>"),
            "{cell}"
        );
        assert!(
            cell.contains("<div class=\"hint\">fix: grant SendAs</div>"),
            "{cell}"
        );
        assert_eq!(outbox_cell("0", &[], 0), "0");
    }

    #[test]
    fn the_query_is_read_and_a_bad_value_named_with_what_it_takes() {
        assert_eq!(
            MailboxFilter::parse(None, Some("  "), Some("")),
            Ok(MailboxFilter {
                page: 1,
                q: None,
                state: None
            })
        );
        assert_eq!(
            MailboxFilter::parse(Some("3"), Some("Sales"), Some("needs_admin")),
            Ok(MailboxFilter {
                page: 3,
                q: Some("sales".into()),
                state: Some(MailboxState::NeedsAdmin)
            })
        );
        let bad = MailboxFilter::parse(None, None, Some("broken")).unwrap_err();
        assert_eq!(
            bad,
            "state: `broken` is not a mailbox state; use one of starting, ok, retrying, needs_admin"
        );
        assert!(
            MailboxFilter::parse(Some("0"), None, None)
                .unwrap_err()
                .starts_with("page: `0`")
        );
        assert!(MailboxFilter::parse(Some("x"), None, None).is_err());
    }

    #[test]
    fn the_pages_links_keep_the_filter() {
        let filter = MailboxFilter {
            page: 2,
            q: Some("a b&c".into()),
            state: Some(MailboxState::Ok),
        };
        assert_eq!(filter.href(3), "/?q=a+b%26c&state=ok&page=3");
    }

    #[test]
    fn times_read_as_ago_and_in() {
        assert!(when(0, 90_000).ends_with("(90s ago)"));
        assert!(when(3 * 86_400_000, 0).ends_with("(in 3d)"));
    }
}
