//! Logging and the operator's view of the process.
//!
//! - Logging: `tracing` to stderr, human-readable or JSON lines, filtered by `RUST_LOG`. JSON lines
//!   are flat ([`json`]): the fields of every enclosing span (`mailbox`, `folder`, `uid`,
//!   `message_id`, …) sit beside the event's own (`ticket_id`, `reference`, …), so a log store can
//!   filter on them directly.
//! - [`Metrics`]: what the worker did and how each mailbox and identity is doing, shared as an
//!   `Arc` by the workers (which write it) and the HTTP endpoint (which reads it), and rendered
//!   as Prometheus text by [`prometheus`].

mod json;
mod metrics;
mod prometheus;

pub use metrics::{
    ErrorInfo, FolderStatus, Histogram, IdentityState, IdentityStats, MailboxState, MailboxStats,
    Metrics, Snapshot, first_line_and_hint,
};
pub use prometheus::ScrapeFacts;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;

/// How log lines are written: human-readable, or one flat JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber. Defaults to `info` for mailintake and `warn` for libraries.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,mailintake=info"))
        // async-imap traces every line it sends and receives, including the XOAUTH2 string that
        // carries the access token (and message bodies): never log it, at any level.
        .add_directive(
            "async_imap::imap_stream=off"
                .parse()
                .expect("a valid filter directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        // Span fields are kept as JSON objects (JsonFields) so the formatter can merge them.
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(json::FlatJson)
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
