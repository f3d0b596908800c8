//! mailintake turns helpdesk mailboxes into ticket rows.
//!
//! Read the parts in the order data flows through them:
//!
//! - [`config`]: the typed settings file, loaded and validated once; secrets stay secret.
//! - [`oauth`]: OAuth2 access tokens from Microsoft Entra ID (or any token endpoint), cached per
//!   identity and shared by every mailbox and protocol that uses that identity.
//! - [`imap`]: the IMAP connection (TLS, `AUTHENTICATE XOAUTH2`), size-first listing, body fetches and
//!   folder moves. Only this module knows async-imap's types and its sharp edges.
//! - [`ingest`]: pure functions from raw message bytes plus facts from the store to a decision
//!   (new ticket, quarantine, duplicate). No IO.
//! - [`worker`]: one task per mailbox that drives imap → ingest → store, and disposes of each message
//!   in IMAP only after its outcome is committed.
//! - [`store`]: every SQL statement, for SQLite (embedded default) and PostgreSQL, with migrations.
//! - [`check`]: `mailintake check <mailbox>`, the token → IMAP → folders path step by step.
//! - [`admin`] and [`junk`]: admin commands that need IMAP (quarantine release, reprocess, the
//!   Junk folder) and the Junk folder count of the status page.
//! - [`telemetry`]: logging setup, and [`telemetry::Metrics`]: counters and state the workers write.
//! - [`http`]: the optional monitoring endpoint that reads them (`/healthz`, `/readyz`, `/metrics`,
//!   a status page).
//! - [`commands`]: one function per command verb, which calls into the modules above and decides
//!   every line the command prints and its exit code.
//!
//! `main.rs` only parses the command line ([`cli`]), starts logging, loads the config and hands
//! over to [`commands::dispatch`].

pub mod admin;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod failpoint;
pub mod http;
pub mod imap;
pub mod ingest;
pub mod junk;
pub mod oauth;
pub mod reply;
pub mod report;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod worker;
