//! `[[mailboxes]]`: the watched mailboxes, their IMAP and SMTP servers, what happens to a message
//! once it is committed, and the acknowledgements sent to customers.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::problems::{Problems, Table, alternatives};
use super::{
    Acknowledge, AutomaticMail, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_SEND_BYTES, Disposal,
    FirstStart, GraphEndpoint, Identity, ImapEndpoint, Mailbox, Mode, Outlet, SendVia, Sending,
    SentCopy, SmtpServer, Timeouts, TlsMode, Transport, file_problem, graph, raw,
};
use crate::time::parse_date;

/// Recipients never acknowledged (unless `acknowledge.deny_defaults = false`): the no-reply
/// addresses of automatic senders, and the command, owner and bounce addresses of mailing lists
/// (Mailman's `-request`/`-owner`/`-bounces`, LISTSERV's and Majordomo's `owner-`), where an
/// acknowledgement would reach a list robot or its owner, never the person.
pub const DEFAULT_ACK_DENY: [&str; 13] = [
    "noreply@*",
    "no-reply@*",
    "no_reply@*",
    "noreply-*@*",
    "no-reply-*@*",
    "donotreply@*",
    "do-not-reply@*",
    "owner-*@*",
    "*-owner@*",
    "*-request@*",
    "*-bounces@*",
    "*-bounces+*@*",
    "listserv@*",
];

/// The placeholders templates may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 4] = ["ticket", "subject", "requester_name", "mailbox"];

/// The acknowledgement sent when no template is configured.
pub const DEFAULT_ACK_TEMPLATE: &str = "Hello {requester_name},\n\n\
thank you for your message. We have opened ticket {ticket} for it:\n\n    {subject}\n\n\
Please keep {ticket} in the subject when you reply, so that your reply reaches the same ticket.\n\n\
This is an automatic message from {mailbox}.\n";

/// Checks that `template` uses only known `{placeholders}`; the error names the unknown one.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err("has a `{` without a closing `}`".into());
        };
        let name = &after[..end];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "uses the unknown placeholder {{{name}}}; known: {}",
                TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Normal, Mode::Shadow];

    /// The `mode` value that selects this mode in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Shadow => "shadow",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| format!("must be {}", alternatives(&Mode::ALL.map(Mode::name))))
    }
}

impl FromStr for FirstStart {
    type Err = String;

    /// `all`, `now`, or a date (`2026-11-01`, `2026-11-01T08:00:00Z`).
    fn from_str(text: &str) -> Result<FirstStart, String> {
        match text {
            "all" => Ok(FirstStart::All),
            "now" => Ok(FirstStart::Now),
            date => parse_date(date).map(FirstStart::Since).ok_or_else(|| {
                format!(
                    "`{date}` is not \"all\", \"now\" or a date such as \"2026-11-01\" or \"2026-11-01T08:00:00Z\""
                )
            }),
        }
    }
}

/// The `dispose` key; `move` takes its folder from `processed_folder` (see [`Disposal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DisposeMode {
    Seen,
    Move,
    Delete,
}

impl DisposeMode {
    const ALL: [DisposeMode; 3] = [DisposeMode::Seen, DisposeMode::Move, DisposeMode::Delete];

    fn name(self) -> &'static str {
        match self {
            DisposeMode::Seen => "seen",
            DisposeMode::Move => "move",
            DisposeMode::Delete => "delete",
        }
    }
}

impl FromStr for DisposeMode {
    type Err = String;

    fn from_str(text: &str) -> Result<DisposeMode, String> {
        DisposeMode::ALL
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| {
                format!(
                    "must be {}",
                    alternatives(&DisposeMode::ALL.map(DisposeMode::name))
                )
            })
    }
}

impl AutomaticMail {
    pub const ALL: [AutomaticMail; 2] = [AutomaticMail::Ticket, AutomaticMail::Ignore];

    /// The `automatic` value that selects this in the config file.
    pub fn name(self) -> &'static str {
        match self {
            AutomaticMail::Ticket => "ticket",
            AutomaticMail::Ignore => "ignore",
        }
    }
}

impl FromStr for AutomaticMail {
    type Err = String;

    fn from_str(text: &str) -> Result<AutomaticMail, String> {
        AutomaticMail::ALL
            .into_iter()
            .find(|automatic| automatic.name() == text)
            .ok_or_else(|| {
                format!(
                    "must be {} (what machine-generated mail such as alerts, notifications and list mail becomes)",
                    alternatives(&AutomaticMail::ALL.map(AutomaticMail::name))
                )
            })
    }
}

/// The `keep_raw` key: whose raw bytes are kept (compressed) beside the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepRaw {
    /// Only those of messages that failed or were quarantined.
    Failures,
    /// Those of every ingested message.
    All,
}

impl KeepRaw {
    const ALL: [KeepRaw; 2] = [KeepRaw::Failures, KeepRaw::All];

    fn name(self) -> &'static str {
        match self {
            KeepRaw::Failures => "failures",
            KeepRaw::All => "all",
        }
    }
}

impl FromStr for KeepRaw {
    type Err = String;

    fn from_str(text: &str) -> Result<KeepRaw, String> {
        KeepRaw::ALL
            .into_iter()
            .find(|keep| keep.name() == text)
            .ok_or_else(|| format!("must be {}", alternatives(&KeepRaw::ALL.map(KeepRaw::name))))
    }
}

pub(super) fn validate_mailboxes(
    raw: Vec<raw::Mailbox>,
    declared_identities: &[String],
    identities: &BTreeMap<String, Identity>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Vec<Mailbox> {
    // No mailbox in the file is fine: the registry may hold them all (`mailintake mailbox add`).
    let named = raw
        .into_iter()
        .enumerate()
        .map(|(index, m)| (format!("mailboxes[{index}]"), m))
        .collect();
    validate_mailboxes_as(named, declared_identities, identities, base_dir, problems)
}

/// Like [`validate_mailboxes`], each table's problems named by the name given with it
/// (`mailboxes[acme]` for a registry row).
pub(super) fn validate_mailboxes_as(
    raw: Vec<(String, raw::Mailbox)>,
    declared_identities: &[String],
    identities: &BTreeMap<String, Identity>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Vec<Mailbox> {
    let mut names = HashSet::new();
    raw.into_iter()
        .map(|(table_name, m)| {
            let mut table = problems.within(table_name);
            check_references(&m, &mut names, declared_identities, &mut table);
            let identity = identities.get(&m.identity);
            validate_mailbox(m, identity, base_dir, &mut table)
        })
        .collect()
}

/// `name` unique, `address` an address, `identity` a declared one.
fn check_references(
    m: &raw::Mailbox,
    names: &mut HashSet<String>,
    declared_identities: &[String],
    table: &mut Table,
) {
    if m.name.trim().is_empty() {
        table.report("name", "must not be empty");
    } else if !names.insert(m.name.clone()) {
        table.report(
            "name",
            format!(
                "`{}` is used by two mailboxes; names must be unique",
                m.name
            ),
        );
    }
    if !m.address.contains('@') {
        table.report("address", "must be an email address (the IMAP login)");
    }
    if !declared_identities.contains(&m.identity) {
        let declared = if declared_identities.is_empty() {
            "none".to_string()
        } else {
            declared_identities.join(", ")
        };
        table.report(
            "identity",
            format!(
                "names identity `{}`, which is not declared; declared identities: {declared}",
                m.identity
            ),
        );
    }
}

fn validate_mailbox(
    m: raw::Mailbox,
    identity: Option<&Identity>,
    base_dir: &Path,
    table: &mut Table,
) -> Mailbox {
    let uses_graph = m.transport.as_deref() == Some("graph") || m.send.as_deref() == Some("graph");
    let graph = uses_graph.then(|| {
        let raw = m.graph.clone().unwrap_or_default();
        graph::validate_graph(raw, identity, base_dir, table)
    });
    let transport = validate_transport(&m, graph.clone(), base_dir, table);
    let dispose_mode = table.choice("dispose", m.dispose.as_deref(), DisposeMode::Seen);
    let mode = table.choice("mode", m.mode.as_deref(), Mode::Normal);
    let first_start = table.choice("first_start", m.first_start.as_deref(), FirstStart::All);
    let idle_interval = validate_idle_interval(m.idle_interval.as_deref(), table);
    let folders = validate_folders(m.folder, m.folders, m.max_connections, table);
    let fetch_batch_messages = m.fetch_batch_messages.unwrap_or(200);
    if fetch_batch_messages == 0 {
        table.report("fetch_batch_messages", "must be at least 1");
    }
    let junk_folder = m.junk_folder.unwrap_or_else(|| "Junk".into());
    if junk_folder.trim().is_empty() {
        table.report(
            "junk_folder",
            "must name a folder (default \"Junk\"; Exchange Online: \"Junk Email\")",
        );
    }
    let dispose = validate_disposal(dispose_mode, m.processed_folder, table);
    let quarantine_folder = m.quarantine_folder.unwrap_or_else(|| "Quarantine".into());
    refuse_watched_targets(&folders, &dispose, &quarantine_folder, table);
    let poll_interval = duration(
        table,
        "poll_interval",
        m.poll_interval.as_deref(),
        Duration::from_secs(60),
    );
    let reconcile_interval = duration(
        table,
        "reconcile_interval",
        m.reconcile_interval.as_deref(),
        Duration::from_secs(3600),
    );
    if reconcile_interval < Duration::from_secs(1) {
        table.report(
            "reconcile_interval",
            "must be at least 1s (default \"1h\": one UID SEARCH below the checkpoint per hour)",
        );
    }
    let max_message_bytes = m.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if max_message_bytes < 1024 {
        table.report("max_message_bytes", "must be at least 1024");
    }
    let unreadable_after = duration(
        table,
        "unreadable_after",
        m.unreadable_after.as_deref(),
        Duration::from_secs(15 * 60),
    );
    let keep_raw = table.choice("keep_raw", m.keep_raw.as_deref(), KeepRaw::Failures);
    let automatic = table.choice(
        "automatic",
        m.automatic.as_deref(),
        AutomaticMail::default(),
    );
    let outlet = validate_outlet(
        m.send.as_deref(),
        m.smtp,
        m.graph.as_ref(),
        graph,
        base_dir,
        table,
    );
    let acknowledge = validate_acknowledge(
        m.acknowledge.unwrap_or_default(),
        outlet.is_some(),
        match &transport {
            Transport::Imap(imap) => is_exchange_online_host(&imap.host),
            Transport::Graph(_) => true,
        },
        base_dir,
        table,
    );
    let graph_sends = outlet.as_ref().is_some_and(|o| o.smtp().is_none());
    if graph_sends
        && m.max_send_bytes
            .is_some_and(|n| n > graph::GRAPH_MAX_SEND_BYTES)
    {
        table.report(
            "max_send_bytes",
            format!(
                "must be at most {} with send = \"graph\" (Exchange Online's largest message size, 150 MB)",
                graph::GRAPH_MAX_SEND_BYTES
            ),
        );
    }
    let max_send_bytes = m.max_send_bytes;
    let sending = validate_sending(m.send_as, max_send_bytes, m.allow_recipients, table);
    let sent_copy = validate_sent_copy(
        m.sent_copy.as_deref(),
        m.sent_folder,
        outlet.is_some(),
        table,
    );
    if matches!(transport, Transport::Graph(_)) && matches!(sent_copy, SentCopy::Append { .. }) {
        table.report(
            "sent_copy",
            "\"append\" copies sent mail into the Sent folder over IMAP, which a mailbox read through Graph does not use: Exchange keeps the copy itself (\"server\", the default)",
        );
    } else if outlet.as_ref().is_some_and(|o| o.smtp().is_none())
        && matches!(sent_copy, SentCopy::Append { .. })
    {
        table.report(
            "sent_copy",
            "\"append\" is for SMTP servers that keep no copy; Graph's sendMail keeps one in Sent Items itself (\"server\", the default)",
        );
    }
    Mailbox {
        name: m.name,
        address: m.address,
        identity: m.identity,
        transport,
        folders,
        poll_interval,
        reconcile_interval,
        idle: m.idle.unwrap_or(true),
        idle_interval,
        max_message_bytes,
        fetch_batch_bytes: m.fetch_batch_bytes.unwrap_or(8 * 1024 * 1024),
        fetch_batch_messages: fetch_batch_messages.max(1),
        unreadable_after,
        dispose,
        quarantine_folder,
        junk_folder,
        mode,
        first_start,
        max_new_tickets_per_sender_per_hour: m.max_new_tickets_per_sender_per_hour.unwrap_or(20),
        reopen_closed: m.reopen_closed.unwrap_or(true),
        automatic,
        keep_raw_all: keep_raw == KeepRaw::All,
        outlet,
        acknowledge,
        sending,
        sent_copy,
    }
}

/// `transport` with its table: `[mailboxes.imap]` for `"imap"` (the default),
/// `[mailboxes.graph]` (optional) for `"graph"`.
fn validate_transport(
    m: &raw::Mailbox,
    graph: Option<GraphEndpoint>,
    base_dir: &Path,
    table: &mut Table,
) -> Transport {
    match m.transport.as_deref() {
        None | Some("imap") => {
            if m.graph.is_some() && graph.is_none() {
                table.report(
                    "graph",
                    "is only read with transport = \"graph\" or send = \"graph\"; remove it, or set one of them",
                );
            }
            match &m.imap {
                Some(imap) => Transport::Imap(validate_imap(imap, base_dir, table)),
                None => {
                    table.report(
                        "imap",
                        "missing: give [mailboxes.imap] with at least host (Exchange Online: host = \"outlook.office365.com\"), or read the mailbox through Microsoft Graph with transport = \"graph\"",
                    );
                    Transport::Imap(validate_imap(&raw::Imap::default(), base_dir, table))
                }
            }
        }
        Some("graph") => {
            if m.imap.is_some() {
                table.report(
                    "imap",
                    "is not used with transport = \"graph\" (mail is read through Microsoft Graph); remove it",
                );
            }
            Transport::Graph(graph.expect("validated for transport = \"graph\""))
        }
        Some(other) => {
            table.report(
                "transport",
                format!(
                    "`{other}` is not a transport: must be \"imap\" (IMAP with XOAUTH2) or \"graph\" (Microsoft Graph, where IMAP is switched off)"
                ),
            );
            Transport::Imap(validate_imap(&raw::Imap::default(), base_dir, table))
        }
    }
}

/// `[mailboxes.imap]`.
fn validate_imap(imap: &raw::Imap, base_dir: &Path, table: &mut Table) -> ImapEndpoint {
    let ca_file = existing_file(base_dir, imap.ca_file.clone(), "imap.ca_file", table);
    let timeouts = Timeouts {
        connect: duration(
            table,
            "imap.connect_timeout",
            imap.connect_timeout.as_deref(),
            Duration::from_secs(15),
        ),
        command: duration(
            table,
            "imap.command_timeout",
            imap.command_timeout.as_deref(),
            Duration::from_secs(120),
        ),
    };
    let tls = imap.tls.unwrap_or(TlsMode::Implicit);
    let logins_per_second = imap
        .logins_per_second
        .unwrap_or(super::DEFAULT_LOGINS_PER_SECOND);
    if logins_per_second == 0 {
        table.report(
            "imap.logins_per_second",
            "must be at least 1 (default 10: logins to one server spread out when many folders start at once)",
        );
    }
    ImapEndpoint {
        host: imap.host.clone(),
        port: imap.port.unwrap_or(match tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls => 143,
        }),
        tls,
        ca_file,
        timeouts,
        logins_per_second,
    }
}

/// `sent_copy` (`"server"`, `"append"`, `"none"`) and `sent_folder`, which only `"append"` uses.
fn validate_sent_copy(
    sent_copy: Option<&str>,
    sent_folder: Option<String>,
    has_smtp: bool,
    table: &mut Table,
) -> SentCopy {
    const CHOICES: [&str; 3] = ["server", "append", "none"];
    let choice = match sent_copy {
        None => "server",
        Some(text) if CHOICES.contains(&text) => text,
        Some(_) => {
            table.report(
                "sent_copy",
                format!(
                    "must be {} (who keeps a copy of sent mail in the Sent folder: the submission server, as Exchange Online does; mailintake by IMAP APPEND; nobody)",
                    alternatives(&CHOICES)
                ),
            );
            "server"
        }
    };
    if let Some(folder) = &sent_folder {
        if folder.trim().is_empty() {
            table.report(
                "sent_folder",
                "must name a folder (or leave it out: the folder the server marks \\Sent)",
            );
        } else if choice != "append" {
            table.report("sent_folder", "is used only with sent_copy = \"append\"");
        }
    }
    if choice == "append" && !has_smtp {
        table.report(
            "sent_copy",
            "\"append\" needs a [mailboxes.smtp] table: a mailbox without one sends nothing",
        );
    }
    match choice {
        "append" => SentCopy::Append {
            folder: sent_folder.filter(|f| !f.trim().is_empty()),
        },
        "none" => SentCopy::None,
        _ => SentCopy::Server,
    }
}

/// `send_as`, `max_send_bytes`, `allow_recipients`: the rules for mail the helpdesk hands over.
fn validate_sending(
    send_as: Option<Vec<String>>,
    max_send_bytes: Option<u64>,
    allow_recipients: Option<Vec<String>>,
    table: &mut Table,
) -> Sending {
    let send_as: Vec<String> = send_as
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, address)| {
            let address = address.trim().to_ascii_lowercase();
            match address.parse::<lettre::Address>() {
                Ok(_) => Some(address),
                Err(e) => {
                    table.report(
                        &format!("send_as[{i}]"),
                        format!("is not an email address ({e})"),
                    );
                    None
                }
            }
        })
        .collect();
    let max_bytes = max_send_bytes.unwrap_or(DEFAULT_MAX_SEND_BYTES);
    if max_bytes < 1024 {
        table.report(
            "max_send_bytes",
            "must be at least 1024 (bytes of the encoded message; Exchange Online: 36700160)",
        );
    }
    let allow_recipients = allow_recipients.map(|patterns| {
        patterns
            .into_iter()
            .enumerate()
            .filter_map(|(i, pattern)| {
                let pattern = pattern.trim().to_ascii_lowercase();
                if pattern.contains('@') {
                    Some(pattern)
                } else {
                    table.report(
                        &format!("allow_recipients[{i}]"),
                        "must be an address or a pattern with @, such as \"*@customer.test\"",
                    );
                    None
                }
            })
            .collect()
    });
    Sending {
        send_as,
        max_bytes,
        allow_recipients,
    }
}

/// `idle_interval`: at most 29 minutes (RFC 2177).
fn validate_idle_interval(text: Option<&str>, table: &mut Table) -> Duration {
    let idle_interval = duration(table, "idle_interval", text, Duration::from_secs(600));
    if idle_interval > Duration::from_secs(29 * 60) || idle_interval < Duration::from_secs(1) {
        table.report(
            "idle_interval",
            "must be between 1s and 29m (RFC 2177: servers may drop IDLE after 30 minutes)",
        );
    }
    idle_interval
}

/// `folder` or `folders` (default INBOX): one IMAP connection each, within `max_connections`.
fn validate_folders(
    folder: Option<String>,
    folders: Option<Vec<String>>,
    max_connections: Option<usize>,
    table: &mut Table,
) -> Vec<String> {
    let folders = match (folder, folders) {
        (Some(_), Some(_)) => {
            table.report("folders", "give either folder or folders, not both");
            vec!["INBOX".to_string()]
        }
        (Some(folder), None) => vec![folder],
        (None, Some(folders)) => folders,
        (None, None) => vec!["INBOX".to_string()],
    };
    let max_connections = max_connections.unwrap_or(4);
    if folders.is_empty() || folders.iter().any(|f| f.trim().is_empty()) {
        table.report(
            "folders",
            "must name at least one folder, and no empty name",
        );
    } else if folders.len() > max_connections {
        table.report(
            "folders",
            format!(
                "{} folders need {} IMAP connections, more than max_connections = {max_connections} (Exchange Online allows 20 per mailbox); raise max_connections or watch fewer folders",
                folders.len(),
                folders.len()
            ),
        );
    }
    let mut seen_folders = HashSet::new();
    for folder in &folders {
        if !seen_folders.insert(folder.as_str()) {
            table.report("folders", format!("`{folder}` is listed twice"));
        }
    }
    folders
}

/// A folder that messages are moved into must not be watched: what is moved there would be listed
/// again and moved again on every sweep, forever. Folder names are compared as Exchange Online
/// does, without regard to case (and INBOX is case-insensitive everywhere, RFC 3501 §5.1).
fn refuse_watched_targets(
    folders: &[String],
    dispose: &Disposal,
    quarantine_folder: &str,
    table: &mut Table,
) {
    let watched = |target: &str| {
        folders
            .iter()
            .find(|folder| folder.trim().eq_ignore_ascii_case(target.trim()))
    };
    if let Disposal::Move { folder: processed } = dispose
        && let Some(folder) = watched(processed)
    {
        table.report(
            "processed_folder",
            format!(
                "`{processed}` is also a watched folder (`{folder}`): processed mail would be taken in and moved again on every sweep; choose a folder that is not watched"
            ),
        );
    }
    if let Some(folder) = watched(quarantine_folder) {
        table.report(
            "quarantine_folder",
            format!(
                "`{quarantine_folder}` is also a watched folder (`{folder}`): quarantined mail would be taken in and set aside again on every sweep; choose a folder that is not watched"
            ),
        );
    }
}

/// `dispose` with `processed_folder`, which only `move` uses (default "Processed").
fn validate_disposal(
    mode: DisposeMode,
    processed_folder: Option<String>,
    table: &mut Table,
) -> Disposal {
    if processed_folder.is_some() && mode != DisposeMode::Move {
        table.report(
            "processed_folder",
            "is only used with dispose = \"move\"; remove it or set dispose = \"move\"",
        );
    }
    match mode {
        DisposeMode::Seen => Disposal::MarkSeen,
        DisposeMode::Move => Disposal::Move {
            folder: processed_folder.unwrap_or_else(|| "Processed".into()),
        },
        DisposeMode::Delete => Disposal::Delete,
    }
}

/// `[mailboxes.smtp]`: STARTTLS on 587 unless told otherwise; Exchange Online's sending limits.
/// How the mailbox sends: `send` (`"smtp"`, the default when `[mailboxes.smtp]` is there, or
/// `"graph"`), with Exchange Online's limits (30 messages a minute, 10,000 recipients a day).
fn validate_outlet(
    send: Option<&str>,
    smtp: Option<raw::Smtp>,
    raw_graph: Option<&raw::Graph>,
    graph: Option<GraphEndpoint>,
    base_dir: &Path,
    table: &mut Table,
) -> Option<Outlet> {
    match send {
        None | Some("smtp") => match smtp {
            Some(raw) => Some(validate_smtp(raw, base_dir, table)),
            None if send.is_some() => {
                table.report(
                    "smtp",
                    "missing: send = \"smtp\" needs [mailboxes.smtp] with at least host (Exchange Online: host = \"smtp.office365.com\")",
                );
                None
            }
            None => None,
        },
        Some("graph") => {
            if smtp.is_some() {
                table.report(
                    "smtp",
                    "is not used with send = \"graph\" (mail is sent through Graph's sendMail); remove it",
                );
            }
            let graph = graph.expect("validated for send = \"graph\"");
            let limits = raw_graph.cloned().unwrap_or_default();
            Some(Outlet {
                timeout: graph.timeout,
                max_per_minute: limits.max_per_minute.unwrap_or(30),
                max_recipients_per_day: limits.max_recipients_per_day.unwrap_or(10_000),
                retry_delay: Duration::from_secs(30),
                claim_lease: Duration::from_secs(600),
                via: SendVia::Graph(graph),
            })
        }
        Some(other) => {
            table.report(
                "send",
                format!(
                    "`{other}` is not a way to send: must be \"smtp\" (SMTP AUTH, [mailboxes.smtp]) or \"graph\" (Graph's sendMail, where SMTP AUTH is switched off)"
                ),
            );
            None
        }
    }
}

fn validate_smtp(raw: raw::Smtp, base_dir: &Path, table: &mut Table) -> Outlet {
    let tls = raw.tls.unwrap_or(TlsMode::Starttls);
    let ca_file = existing_file(base_dir, raw.ca_file, "smtp.ca_file", table);
    Outlet {
        via: SendVia::Smtp(SmtpServer {
            host: raw.host,
            port: raw.port.unwrap_or(match tls {
                TlsMode::Starttls => 587,
                TlsMode::Implicit => 465,
            }),
            tls,
            ca_file,
        }),
        timeout: duration(
            table,
            "smtp.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_per_minute: raw.max_per_minute.unwrap_or(30),
        max_recipients_per_day: raw.max_recipients_per_day.unwrap_or(10_000),
        retry_delay: duration(
            table,
            "smtp.retry_delay",
            raw.retry_delay.as_deref(),
            Duration::from_secs(30),
        ),
        claim_lease: duration(
            table,
            "smtp.claim_lease",
            raw.claim_lease.as_deref(),
            Duration::from_secs(600),
        ),
    }
}

/// `[mailboxes.acknowledge]`: on when the mailbox has SMTP; templates read and checked now, so a
/// typo shows at start-up and not in a customer's inbox.
fn validate_acknowledge(
    raw: raw::Acknowledge,
    has_smtp: bool,
    exchange_online: bool,
    base_dir: &Path,
    table: &mut Table,
) -> Acknowledge {
    let template_text = read_template(base_dir, "template", raw.template.as_deref(), table)
        .unwrap_or_else(|| DEFAULT_ACK_TEMPLATE.to_string());
    let template_html = read_template(
        base_dir,
        "template_html",
        raw.template_html.as_deref(),
        table,
    );
    for (field, template) in [
        ("template", Some(&template_text)),
        ("template_html", template_html.as_ref()),
    ] {
        if let Some(template) = template
            && let Err(e) = check_template(template)
        {
            table.report(&format!("acknowledge.{field}"), format!("the template {e}"));
        }
    }
    let enabled = raw.enabled.unwrap_or(has_smtp);
    if enabled && !has_smtp {
        table.report(
            "acknowledge.enabled",
            "acknowledgements need a [mailboxes.smtp] table (Exchange Online: host = \"smtp.office365.com\")",
        );
    }
    let since_ms = raw.since.as_deref().and_then(|text| {
        parse_date(text).or_else(|| {
            table.report(
                "acknowledge.since",
                format!(
                    "`{text}` is not a date such as \"2026-11-01\" or \"2026-11-01T08:00:00Z\""
                ),
            );
            None
        })
    });
    let follow_up_interval = duration(
        table,
        "acknowledge.follow_up_interval",
        raw.follow_up_interval.as_deref(),
        Duration::from_secs(3600),
    );
    Acknowledge {
        enabled,
        follow_ups: raw.follow_ups.unwrap_or(false),
        follow_up_interval,
        from: raw.from,
        template_text,
        template_html,
        // The mailbox's own entries add to the defaults, unless it drops them.
        deny: raw
            .deny
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .chain(
                if raw.deny_defaults.unwrap_or(true) {
                    DEFAULT_ACK_DENY.as_slice()
                } else {
                    &[]
                }
                .iter()
                .copied(),
            )
            .map(str::to_ascii_lowercase)
            .collect(),
        max_per_recipient_per_day: raw.max_per_recipient_per_day.unwrap_or(5),
        quarantine_notice: raw.quarantine_notice.unwrap_or(false),
        since_ms,
        require_authentication: raw.require_authentication.unwrap_or(true),
        authserv_id: match raw.authserv_id {
            Some(id) if id.trim().is_empty() => {
                table.report(
                    "acknowledge.authserv_id",
                    "is empty: set the id the receiving server writes first in its Authentication-Results, or \"exchange-online\"",
                );
                None
            }
            Some(id) => Some(id.trim().to_ascii_lowercase()),
            None if exchange_online => Some(super::EXCHANGE_ONLINE_AUTHSERV_ID.to_string()),
            None => None,
        },
    }
}

/// Whether `host` is Exchange Online's IMAP endpoint (worldwide, GCC High/DoD, 21Vianet), whose
/// receiving servers stamp `Authentication-Results` without an id.
fn is_exchange_online_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    matches!(
        host.as_str(),
        "outlook.office365.com" | "outlook.office.com"
    ) || host.ends_with(".office365.us")
        || host.ends_with(".partner.outlook.cn")
}

/// The text of an `acknowledge.template…` file; `None` when not configured or unreadable
/// (reported).
fn read_template(
    base_dir: &Path,
    field: &str,
    path: Option<&Path>,
    table: &mut Table,
) -> Option<String> {
    let path = base_dir.join(path?);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) => {
            table.report(
                &format!("acknowledge.{field}"),
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

/// A configured file, relative to the config file's folder; a missing one is reported.
fn existing_file(
    base_dir: &Path,
    path: Option<PathBuf>,
    field: &str,
    table: &mut Table,
) -> Option<PathBuf> {
    let path = base_dir.join(path?);
    if let Some(message) = file_problem(&path) {
        table.report(field, message);
    }
    Some(path)
}

/// A duration key (`"30s"`, `"5m"`): `default` when absent; a bad one is reported and `default`
/// is taken.
fn duration(table: &mut Table, field: &str, text: Option<&str>, default: Duration) -> Duration {
    let Some(text) = text else {
        return default;
    };
    humantime::parse_duration(text).unwrap_or_else(|e| {
        table.report(
            field,
            format!("`{text}` is not a duration ({e}); write e.g. \"30s\", \"5m\""),
        );
        default
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{MINIMAL, load};

    #[test]
    fn closed_sets_parse_their_words_and_name_the_allowed_ones() {
        assert_eq!("normal".parse(), Ok(Mode::Normal));
        assert_eq!("shadow".parse(), Ok(Mode::Shadow));
        assert_eq!(
            "Shadow".parse::<Mode>(),
            Err("must be \"normal\" or \"shadow\"".to_string())
        );
        for mode in DisposeMode::ALL {
            assert_eq!(mode.name().parse(), Ok(mode));
        }
        assert_eq!(
            "archive".parse::<DisposeMode>(),
            Err("must be \"seen\", \"move\" or \"delete\"".to_string())
        );
        for keep in KeepRaw::ALL {
            assert_eq!(keep.name().parse(), Ok(keep));
        }
        for automatic in AutomaticMail::ALL {
            assert_eq!(automatic.name().parse(), Ok(automatic));
        }
        assert!(
            "tickets"
                .parse::<AutomaticMail>()
                .unwrap_err()
                .starts_with("must be \"ticket\" or \"ignore\"")
        );
        assert_eq!(
            "none".parse::<KeepRaw>(),
            Err("must be \"failures\" or \"all\"".to_string())
        );
        assert_eq!("all".parse(), Ok(FirstStart::All));
        assert_eq!("now".parse(), Ok(FirstStart::Now));
        assert_eq!(
            "2026-11-01".parse(),
            Ok(FirstStart::Since(1_793_491_200_000))
        );
        assert!(
            "yesterday"
                .parse::<FirstStart>()
                .unwrap_err()
                .starts_with("`yesterday` is not \"all\", \"now\" or a date")
        );
    }

    #[test]
    fn undeclared_identity_lists_the_declared_ones() {
        let text = MINIMAL.replace("identity = \"app\"", "identity = \"missing\"");
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].identity");
        assert!(
            problems[0].message.contains("declared identities: app"),
            "{problems:?}"
        );
    }

    #[test]
    fn acknowledgement_templates_are_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ack.txt"), "Ticket {ticket} for {customer}").unwrap();
        let text = MINIMAL.replace(
            "imap = { host = \"outlook.office365.com\" }",
            "imap = { host = \"outlook.office365.com\" }\nsmtp = { host = \"smtp.office365.com\" }\nacknowledge = { template = \"ack.txt\" }",
        );
        let problems = Config::from_toml_str(&text, dir.path()).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].acknowledge.template");
        assert!(problems[0].message.contains("{customer}"), "{problems:?}");
        assert!(check_template(DEFAULT_ACK_TEMPLATE).is_ok());
    }

    #[test]
    fn sent_copy_defaults_to_the_server_and_append_takes_an_optional_folder() {
        assert_eq!(
            load(MINIMAL).unwrap().mailboxes[0].sent_copy,
            SentCopy::Server
        );
        let with = |keys: &str| {
            MINIMAL.replace(
                "name = \"support\"",
                &format!("name = \"support\"\n{keys}\nsmtp = {{ host = \"smtp.office365.com\" }}"),
            )
        };
        assert_eq!(
            load(&with("sent_copy = \"append\"")).unwrap().mailboxes[0].sent_copy,
            SentCopy::Append { folder: None }
        );
        assert_eq!(
            load(&with(
                "sent_copy = \"append\"\nsent_folder = \"Gesendete Elemente\""
            ))
            .unwrap()
            .mailboxes[0]
                .sent_copy,
            SentCopy::Append {
                folder: Some("Gesendete Elemente".into())
            }
        );
        assert_eq!(
            load(&with("sent_copy = \"none\"")).unwrap().mailboxes[0].sent_copy,
            SentCopy::None
        );
        let problems = load(&with("sent_copy = \"imap\"")).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].sent_copy");
        assert!(
            problems[0]
                .message
                .starts_with("must be \"server\", \"append\" or \"none\""),
            "{problems:?}"
        );
        let problems = load(&with("sent_folder = \"Sent\"")).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].sent_folder");
        assert!(
            problems[0].message.contains("only with sent_copy"),
            "{problems:?}"
        );
        // Without SMTP nothing is sent, so nothing can be copied.
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nsent_copy = \"append\"",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].sent_copy");
        assert!(
            problems[0].message.contains("[mailboxes.smtp]"),
            "{problems:?}"
        );
    }

    #[test]
    fn junk_folder_defaults_to_junk_and_must_name_a_folder() {
        assert_eq!(load(MINIMAL).unwrap().mailboxes[0].junk_folder, "Junk");
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\njunk_folder = \"Junk Email\"",
        );
        assert_eq!(load(&text).unwrap().mailboxes[0].junk_folder, "Junk Email");
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\njunk_folder = \" \"",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].junk_folder");
        assert!(problems[0].message.contains("Junk Email"), "{problems:?}");
    }

    #[test]
    fn several_folders_within_the_connection_limit() {
        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nfolders = [\"INBOX\", \"Support/Urgent\"]",
        );
        let config = load(&text).unwrap();
        assert_eq!(config.mailboxes[0].folders, ["INBOX", "Support/Urgent"]);

        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nfolders = [\"INBOX\", \"A\", \"B\"]\nmax_connections = 2",
        );
        let problems = load(&text).unwrap_err();
        assert_eq!(problems[0].key, "mailboxes[0].folders");
        assert!(
            problems[0].message.contains("max_connections"),
            "{problems:?}"
        );
    }

    #[test]
    fn mailbox_modes_and_first_start_policies() {
        let config = load(MINIMAL).unwrap();
        let mailbox = &config.mailboxes[0];
        assert_eq!(mailbox.mode, Mode::Normal);
        assert_eq!(mailbox.first_start, FirstStart::All);
        assert!(mailbox.idle);
        assert_eq!(mailbox.idle_interval, Duration::from_secs(600));

        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nmode = \"shadow\"\nfirst_start = \"2026-11-01\"\ndispose = \"delete\"",
        );
        let config = load(&text).unwrap();
        let mailbox = &config.mailboxes[0];
        assert_eq!(mailbox.mode, Mode::Shadow);
        assert_eq!(mailbox.first_start, FirstStart::Since(1_793_491_200_000));
        assert_eq!(mailbox.dispose, Disposal::Delete);

        let text = MINIMAL.replace(
            "name = \"support\"",
            "name = \"support\"\nfirst_start = \"yesterday\"\nidle_interval = \"45m\"",
        );
        let problems = load(&text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["mailboxes[0].first_start", "mailboxes[0].idle_interval"],
            "{problems:?}"
        );
    }

    #[test]
    fn the_reconciliation_runs_hourly_unless_configured() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(
            config.mailboxes[0].reconcile_interval,
            Duration::from_secs(3600)
        );
        let with = |value: &str| {
            MINIMAL.replace(
                "name = \"support\"",
                &format!("name = \"support\"\nreconcile_interval = \"{value}\""),
            )
        };
        let config = load(&with("15m")).unwrap();
        assert_eq!(
            config.mailboxes[0].reconcile_interval,
            Duration::from_secs(900)
        );
        for bad in ["0s", "hourly"] {
            let problems = load(&with(bad)).unwrap_err();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].key, "mailboxes[0].reconcile_interval");
        }
    }
}
