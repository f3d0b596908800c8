//! Logging: `tracing` to stderr, human-readable or JSON lines, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

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
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
