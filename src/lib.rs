//! mailintake turns helpdesk mailboxes into ticket rows.
//!
//! The parts, top to bottom; each uses only the ones below it (ARCHITECTURE.md has the map):
//!
//! - [`commands`]: one function per command verb, deciding every line a command prints and its
//!   exit code; `main.rs` only parses the command line ([`cli`]), starts logging, loads the config
//!   and hands over to [`commands::dispatch`].
//! - [`http`]: the optional endpoint of `run`: monitoring (`/healthz`, `/readyz`, `/metrics`, a
//!   status page), reading [`telemetry::Metrics`] and the store, and the HTTP API for outgoing
//!   mail (`/v1/messages`), which changes state only through `reply::outgoing::submit`.
//! - [`junk`], [`admin`], [`check`]: the Junk folder, admin actions that need IMAP (quarantine
//!   release, reprocess), and `mailintake check` step by step.
//! - [`intake`]: one task per watched folder that drives mail source → ingest → store, and
//!   disposes of each message only after its outcome is committed; it reaches the mail server only
//!   through the [`mail_source`] seam.
//! - [`imap`]: the IMAP implementation of that seam (TLS, `AUTHENTICATE XOAUTH2`, size-first
//!   listing, capped body fetches, folder moves); the only module that knows async-imap.
//! - [`graph`]: the Microsoft Graph implementation of the seam (message delta, the store size
//!   before `$value`, throttling), numbering each folder's messages through [`store`].
//! - [`reply`]: acknowledgements, planned (pure) and sent from the outbox over SMTP.
//! - [`registry`]: mailboxes and identities kept in the database, added and changed at run
//!   time, validated by the config file's code and merged with the file's for every worker.
//! - [`fleet`]: the workers on one database sharing the mailboxes by leases (heartbeat, fair
//!   share, renewal, the monotonic guard), for the tasks of `intake` and `reply`.
//! - [`oauth`]: OAuth2 access tokens from Microsoft Entra ID (or any token endpoint), cached per
//!   identity and shared by every mailbox and protocol that uses that identity.
//! - [`store`]: every SQL statement, for SQLite (embedded default) and PostgreSQL, with migrations.
//! - [`telemetry`]: logging setup and the metrics the tasks' reports fill in.
//! - [`ingest`]: pure functions from raw message bytes plus facts from the store to a decision
//!   (new ticket, follow-up, duplicate, ignored, quarantine). No IO.
//! - The ground floor: [`config`] (the typed settings file, validated once; secrets stay secret),
//!   [`report`] (what tasks report), [`mail_source`] (the seam's operations and words), [`time`]
//!   (clocks and dates), [`closed_set`] (stored closed sets as enums), [`open_files`] (the
//!   open-files limit raised at start-up) and [`failpoint`].

pub mod admin;
pub mod check;
pub mod cli;
pub mod closed_set;
pub mod commands;
pub mod config;
pub mod failpoint;
pub mod fleet;
pub mod graph;
pub mod http;
pub mod imap;
pub mod ingest;
pub mod intake;
pub mod junk;
pub mod mail_source;
pub mod oauth;
pub mod open_files;
pub mod registry;
pub mod reply;
pub mod report;
pub mod store;
pub mod telemetry;
pub mod time;
