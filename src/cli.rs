//! The closed set of commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "mailintake",
    version,
    about = "Turns helpdesk mailboxes into ticket rows"
)]
pub struct Cli {
    /// The configuration file (TOML). Keys can be overridden with MAILINTAKE_SECTION__KEY variables.
    #[arg(
        long,
        short,
        global = true,
        env = "MAILINTAKE_CONFIG",
        default_value = "config/mailintake.toml"
    )]
    pub config: PathBuf,

    /// Log output: human-readable lines or JSON lines. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, env = "MAILINTAKE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Poll every mailbox until SIGTERM or SIGINT.
    Run,
    /// Process every mailbox once and exit (0 when every mailbox worked).
    Once,
    /// Validate the configuration and exit. With a mailbox name (or --all), then check that
    /// mailbox online, step by step: token, IMAP login, folders.
    Check {
        /// The mailbox (its `name`) to check online.
        mailbox: Option<String>,
        /// Check every mailbox online.
        #[arg(long, conflicts_with = "mailbox")]
        all: bool,
        /// Also send a real test message from each checked mailbox to this address.
        #[arg(long, value_name = "ADDRESS")]
        send_test_mail: Option<String>,
    },
    /// Sign in a delegated identity (flow = "device_code") once: prints a URL and a code to
    /// enter there, waits for the sign-in, and stores the refresh token encrypted.
    Login {
        /// The identity's name (its [identities.NAME] table).
        identity: String,
    },
    /// Print the URL at which a tenant's administrator grants admin consent to an identity's app.
    ConsentUrl {
        /// The identity's name (its [identities.NAME] table).
        identity: String,
    },
    /// Create or upgrade the database schema and exit.
    Migrate,
    /// List the fleet's live workers (id, host, pid, version, last heartbeat) and who holds which
    /// mailbox's lease.
    Workers,
    /// The mailbox registry: mailboxes kept in the database, followed by every running worker
    /// within seconds, without a restart.
    Mailbox {
        #[command(subcommand)]
        action: MailboxAction,
    },
    /// The registry's identities (token sources), named by its mailboxes; a secret given as
    /// text is stored encrypted with the [token_store] key.
    Identity {
        #[command(subcommand)]
        action: IdentityAction,
    },
    /// List recent tickets.
    Tickets {
        /// How many tickets to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only tickets created since then: a date (2026-11-01, midnight UTC), an RFC 3339
        /// instant, or a duration back from now (7d, 12h).
        #[arg(long, value_parser = parse_since, value_name = "DATE|DURATION")]
        since: Option<i64>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One ticket with its messages and attachments.
    Ticket {
        /// The ticket's id (TCK-000123 is id 123).
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Quarantined messages: list, show, release.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Outgoing acknowledgements: list, retry, cancel.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// The Junk folder of a mailbox, where real customer mail sometimes lands: list it (header
    /// fields only), or move one message to the inbox so the worker ingests it.
    Junk {
        #[command(subcommand)]
        action: JunkAction,
    },
    /// Remove stored raw mail (keep_raw = "all"), quarantine raw bytes and attachment contents of
    /// mail older than the retention period. Tickets, messages and attachment rows stay.
    Purge {
        /// The retention period, e.g. 90d, 26w, 8760h.
        #[arg(long, value_parser = parse_age, value_name = "DURATION")]
        older_than: std::time::Duration,
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-parse a stored raw message with the current code and record the result once: a
    /// quarantined message (by its quarantine id) becomes a ticket, follow-up or ignored mail; an
    /// article (--message, its messages row id, kept with keep_raw = "all") is checked against
    /// what is stored. Running it again changes nothing.
    Reprocess {
        /// The quarantine id (or, with --message, the messages row id).
        id: i64,
        /// ID is a row of the messages table (an article whose raw was kept).
        #[arg(long)]
        message: bool,
    },
    /// Hand a message to a mailbox's outbox (an agent's reply on a ticket, or mail to explicit
    /// recipients): validated and composed now, sent by the mailbox's sender (`run`, or here
    /// with --wait). Prints the outbox id and its state.
    Send(Box<SendArgs>),
    /// Write the raw message of a stored article (by its id in the messages table; kept with
    /// keep_raw = "all") to a file, byte-exact.
    Raw {
        /// The message row's id.
        id: i64,
        /// Where to write it; an existing file is not overwritten.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Write one stored attachment (by its id in the attachments table) to a file, byte-exact.
    Attachment {
        /// The attachment's id.
        id: i64,
        /// Where to write it; an existing file is not overwritten.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// `mailintake send`: the request from flags, or the JSON document with --request.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The mailbox (its `name`); may be left out when only one is configured.
    #[arg(long)]
    pub mailbox: Option<String>,
    /// Answer this ticket (123 or TCK-000123): to its requester unless --to is given, threaded
    /// and with the ticket's tag in the subject.
    #[arg(long, conflicts_with = "request")]
    pub ticket: Option<String>,
    /// A recipient (repeatable): an address.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "request")]
    pub to: Vec<String>,
    #[arg(long, value_name = "ADDRESS", conflicts_with = "request")]
    pub cc: Vec<String>,
    /// Recipients in the envelope only.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "request")]
    pub bcc: Vec<String>,
    /// The mailbox's address by default, or one of its send_as addresses.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "request")]
    pub from: Option<String>,
    #[arg(long, conflicts_with = "request")]
    pub subject: Option<String>,
    #[arg(long, conflicts_with_all = ["request", "text_file"])]
    pub text: Option<String>,
    #[arg(long, value_name = "FILE", conflicts_with = "request")]
    pub text_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", conflicts_with = "request")]
    pub html_file: Option<PathBuf>,
    /// Attach a file (repeatable); its type is guessed from the name.
    #[arg(long, value_name = "FILE", conflicts_with = "request")]
    pub attach: Vec<PathBuf>,
    /// Automatic mail (Auto-Submitted: auto-generated) instead of a person's.
    #[arg(long, conflicts_with = "request")]
    pub notification: bool,
    /// The idempotency key (default: a fresh random key, printed).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The JSON request document (as in the outgoing table), from a file or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub request: Option<String>,
    /// Send it now and wait until it is sent, failed or bounced; exit non-zero unless sent.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub wait_timeout: std::time::Duration,
}

/// A registry table's keys, as written in the config file: `--toml 'KEY = VALUE …'` and/or
/// `--file PATH` (`-`: stdin; keeps a secret out of the command line).
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// The table's keys in TOML, e.g. 'address = "help@acme.test"' (repeatable: joined by
    /// newlines).
    #[arg(long, value_name = "TOML")]
    pub toml: Vec<String>,
    /// The table's keys from a TOML file, or - for stdin (read before --toml).
    #[arg(long, value_name = "FILE|-")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MailboxAction {
    /// Add a mailbox: the keys of its [[mailboxes]] table (config/example.toml documents them),
    /// validated as the file's are.
    Add {
        /// The mailbox's name (its `name` key).
        name: String,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Change a mailbox: the keys given replace its own (a sub-table such as imap is merged key
    /// by key); --unset removes keys.
    Set {
        name: String,
        #[command(flatten)]
        table: TableArgs,
        /// A key to remove, e.g. dispose or imap.ca_file (repeatable).
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Stop working on a mailbox (its row, tickets and messages stay).
    Disable { name: String },
    /// Work on a disabled mailbox again.
    Enable { name: String },
    /// Remove a mailbox from the registry (its tickets and messages stay).
    Remove { name: String },
    /// The registry's mailboxes, and whether the fleet follows the registry or the file.
    List {
        /// Print JSON lines (with each mailbox's settings) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the config file's [[mailboxes]] into the registry: new ones are added, changed
    /// ones made equal to the file's; the registry's others stay.
    Sync,
}

#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Add an identity: the keys of its [identities.NAME] table, validated as the file's are. A
    /// secret given as text is stored encrypted; { env = "…" } and { file = "…" } stay
    /// references that every worker resolves.
    Add {
        /// The identity's name (as in [identities.NAME]).
        name: String,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Change an identity: the keys given replace its own; --unset removes keys.
    Set {
        name: String,
        #[command(flatten)]
        table: TableArgs,
        /// A key to remove (repeatable).
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Remove an identity (refused while a registry mailbox names it).
    Remove { name: String },
    /// The registry's identities (never a secret).
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// The most recent quarantined messages.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One quarantined message in full.
    Show { id: i64 },
    /// Delete quarantine rows (and their raw bytes) older than the period, except releases still
    /// waiting for their message. The messages stay in the quarantine folder.
    Purge {
        /// e.g. 90d
        #[arg(long, value_parser = parse_age, value_name = "DURATION")]
        older_than: std::time::Duration,
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move the message back to its folder and let it in once (up to --max-bytes when it was
    /// too large, and past the per-sender limit).
    Release {
        id: i64,
        /// The size limit for this one message, in bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
}

/// Which rows `outbox list --state` shows: an `outbox.state`, or `blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboxFilter {
    Pending,
    /// Pending rows whose From address the server refuses (they wait with the reply and the fix).
    Blocked,
    Sending,
    Sent,
    Bounced,
    Failed,
    Cancelled,
    Suppressed,
}

impl OutboxFilter {
    /// The `outbox.state` the rows have.
    pub fn state(self) -> &'static str {
        match self {
            OutboxFilter::Pending | OutboxFilter::Blocked => "pending",
            OutboxFilter::Sending => "sending",
            OutboxFilter::Sent => "sent",
            OutboxFilter::Bounced => "bounced",
            OutboxFilter::Failed => "failed",
            OutboxFilter::Cancelled => "cancelled",
            OutboxFilter::Suppressed => "suppressed",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// The most recent rows, optionally of one state; `blocked` is the pending rows that wait
    /// because the server refuses their From address.
    List {
        #[arg(long, value_enum)]
        state: Option<OutboxFilter>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a failed or cancelled row due now.
    Retry { id: i64 },
    /// Cancel a row that has not been sent.
    Cancel { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum JunkAction {
    /// The newest messages in the Junk folder: UID, date, From, Subject, size (no bodies are read).
    List {
        /// The mailbox (its `name`); may be left out when only one is configured.
        #[arg(long)]
        mailbox: Option<String>,
        /// How many of the newest messages to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move the message with this ID (from `junk list`: a UID, or on a Graph mailbox its Graph
    /// id) to the mailbox's inbox (its first watched folder), where the worker ingests it as
    /// ordinary mail.
    Release {
        id: String,
        /// The mailbox (its `name`); may be left out when only one is configured.
        #[arg(long)]
        mailbox: Option<String>,
    },
}

/// `7d`, `12h` (back from now), `2026-11-01` (midnight UTC) or an RFC 3339 instant, as unix ms.
fn parse_since(text: &str) -> Result<i64, String> {
    if let Some(at) = crate::time::parse_date(text) {
        return Ok(at);
    }
    match humantime::parse_duration(text) {
        Ok(back) => Ok(crate::time::now_ms() - back.as_millis() as i64),
        Err(_) => Err(format!(
            "`{text}` is neither a date (2026-11-01), an instant (2026-11-01T08:00:00Z) nor a duration (7d, 12h)"
        )),
    }
}

/// A retention period: a duration of at least one day.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let age = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 90d"))?;
    if age < std::time::Duration::from_secs(86_400) {
        return Err(format!(
            "`{text}` is shorter than a day; a retention period is given in days, e.g. 90d"
        ));
    }
    Ok(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_instants_and_durations() {
        assert_eq!(parse_since("2026-11-01"), Ok(1_793_491_200_000));
        assert_eq!(parse_since("2026-11-01T08:00:00Z"), Ok(1_793_520_000_000));
        let week = parse_since("7d").unwrap();
        let expected = crate::time::now_ms() - 7 * 86_400_000;
        assert!((expected - week).abs() < 5_000, "{week} vs {expected}");
        assert!(
            parse_since("last tuesday")
                .unwrap_err()
                .contains("neither a date")
        );
    }

    #[test]
    fn retention_is_at_least_a_day() {
        assert_eq!(
            parse_age("90d"),
            Ok(std::time::Duration::from_secs(90 * 86_400))
        );
        assert!(parse_age("90m").unwrap_err().contains("shorter than a day"));
        assert!(parse_age("90").is_err());
    }
}
