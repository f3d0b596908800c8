//! The closed set of commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
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
    /// List recent tickets.
    Tickets {
        /// How many tickets to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
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
    /// Move the message back to its folder and let it in once (up to --max-bytes when it was
    /// too large, and past the per-sender limit).
    Release {
        id: i64,
        /// The size limit for this one message, in bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// The most recent rows, optionally of one state (pending, sending, sent, failed, cancelled,
    /// suppressed).
    List {
        #[arg(long)]
        state: Option<String>,
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
