//! Integration tests: the real `mailintake` binary against the local mail stack (Dovecot, Postfix,
//! started by `scripts/mailstack.sh up`), SQLite and PostgreSQL, with an in-process fake Entra ID.
//! One test binary, so CI links once.

mod acks;
mod addresses;
mod admin;
mod api;
mod automatic;
mod badrow;
mod cli;
mod cutoff;
mod drills;
mod drills_db;
mod engine;
mod faultproxy;
mod fingerprints;
mod fleet;
mod fleet_full;
mod flows;
mod graph;
mod guides;
mod helpers;
mod imapproxy;
mod intake;
mod junk;
mod leases;
mod listing;
mod mx;
mod network;
mod oauth;
mod ops;
mod outgoing;
mod reconcile;
mod record;
mod registry;
mod retention;
mod scale;
mod sending;
mod sent_copy;
mod smtp;
mod statements;
mod threading;
mod tokens;
