//! `transport = "graph"`'s table, `[mailboxes.graph]`: where Microsoft Graph is (worldwide or a
//! national cloud, derived from the identity's authority), the scope of its tokens, and how hard
//! mailintake may press it. Graph reads with an app-only identity (`Mail.ReadWrite` granted as an
//! application permission, or through RBAC for Applications); delegated identities come later.

use std::path::Path;
use std::time::Duration;

use url::Url;

use super::problems::Table;
use super::{GraphEndpoint, Identity, entra, file_problem, raw};

/// The largest message sent by one `sendMail` (`send = "graph"`): Graph takes at most 4 MB in
/// one request, and `sendMail`'s base64 makes a message 4/3 larger. A larger one goes as a
/// draft with its large attachments added separately (`graph/send.rs`).
pub const SENDMAIL_MAX_BYTES: u64 = 3_000_000;

/// The largest `max_send_bytes` with `send = "graph"`: Exchange Online's largest message size
/// (150 MB, an administrator's setting; 35 MB by default).
pub const GRAPH_MAX_SEND_BYTES: u64 = 150 * 1024 * 1024;

/// Outlook's concurrency limit: 4 requests at once per app (Graph's throttling page).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 4;

/// Validates `[mailboxes.graph]` against the mailbox's identity (`None` when that identity is
/// invalid: its own problems are reported).
pub(super) fn validate_graph(
    raw: raw::Graph,
    identity: Option<&Identity>,
    base_dir: &Path,
    table: &mut Table,
) -> GraphEndpoint {
    if let Some(identity) = identity
        && identity.grant.is_delegated()
    {
        table.report(
            "transport",
            format!(
                "\"graph\" reads with an app-only identity (flow = \"client_credentials\", with the application permission Mail.ReadWrite); identity `{}` is delegated (flow = \"{}\"): use an app-only identity for this mailbox, or transport = \"imap\"",
                identity.name,
                identity.grant.flow_name()
            ),
        );
    }
    let authority_host = identity
        .and_then(|i| i.authority.as_ref())
        .and_then(|a| a.host_str().map(str::to_string));
    let cloud = entra::graph_resource_for(authority_host.as_deref());
    if cloud.is_none() {
        table.report(
            "transport",
            "\"graph\" is not offered in the cloud operated by 21Vianet (China): Microsoft Graph there has no message delta; read this mailbox with transport = \"imap\"",
        );
    }
    let resource = cloud.unwrap_or(entra::GRAPH_RESOURCE);
    let url = match raw.url.as_deref() {
        None => Url::parse(resource).expect("a Graph root is a URL"),
        Some(text) => parse_service_root(text, table),
    };
    if url.host_str().is_some_and(entra::is_china_graph_host) {
        table.report(
            "graph.url",
            "names Microsoft Graph operated by 21Vianet (China), which has no message delta; read this mailbox with transport = \"imap\"",
        );
    }
    let scope = match raw.scope.as_deref().map(str::trim) {
        None => format!("{resource}/.default"),
        Some(scope) if entra::is_app_only_scope(scope) && !scope.contains(' ') => scope.to_string(),
        Some(_) => {
            table.report(
                "graph.scope",
                format!(
                    "must be one resource's /.default scope (app-only tokens carry the app's application permissions), e.g. \"{resource}/.default\""
                ),
            );
            format!("{resource}/.default")
        }
    };
    let max_concurrent_requests = raw
        .max_concurrent_requests
        .unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS);
    if max_concurrent_requests == 0 {
        table.report(
            "graph.max_concurrent_requests",
            "must be at least 1 (default 4, Outlook's concurrency limit per app)",
        );
    }
    let timeout = match raw.timeout.as_deref() {
        None => Duration::from_secs(120),
        Some(text) => humantime::parse_duration(text).unwrap_or_else(|e| {
            table.report(
                "graph.timeout",
                format!("`{text}` is not a duration ({e}); write e.g. \"120s\""),
            );
            Duration::from_secs(120)
        }),
    };
    let ca_file = raw.ca_file.map(|p| base_dir.join(p));
    if let Some(message) = ca_file.as_deref().and_then(file_problem) {
        table.report("graph.ca_file", message);
    }
    GraphEndpoint {
        url,
        scope,
        max_concurrent_requests: max_concurrent_requests.max(1),
        timeout,
        ca_file,
    }
}

/// `graph.url`: an https URL of Graph's service root (plain http only on loopback, for a local
/// stand-in), without the `/v1.0` version segment, which mailintake adds.
fn parse_service_root(text: &str, table: &mut Table) -> Url {
    let fallback = || Url::parse(entra::GRAPH_RESOURCE).expect("a Graph root is a URL");
    let text = text.trim().trim_end_matches('/');
    let text = text.strip_suffix("/v1.0").unwrap_or(text);
    let Ok(url) = Url::parse(text) else {
        table.report(
            "graph.url",
            format!("`{text}` is not a URL; write e.g. \"https://graph.microsoft.com\""),
        );
        return fallback();
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => url,
        "http" if loopback => url,
        _ => {
            table.report(
                "graph.url",
                format!(
                    "`{text}` must be an https URL (plain http only on loopback, for a local stand-in)"
                ),
            );
            fallback()
        }
    }
}
