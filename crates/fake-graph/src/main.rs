//! `fake-graph`: runs the fake Microsoft Graph (Outlook mail) on loopback.
//!
//! ```text
//! fake-graph --listen 127.0.0.1:14081 --key signing-key.pem --user support@helpdesk.test
//! ```
//!
//! - `--key`: fake-entra's signing key (PEM); only tokens it signed for the Graph audience
//!   are accepted.
//! - `--user`: a mailbox (repeatable); more through `POST /_fake/users`.
//! - `--listen`: a loopback address (anything else is refused); default 127.0.0.1:14081.
//! - `--state-dir DIR`: ids and sync states survive a restart (one JSON file per mailbox).
//! - `--imap 127.0.0.1:14993 --imap-ca ca.pem [--submission-port 14587]`: serve the users'
//!   real mailboxes in the mail stack's Dovecot instead of the in-memory store; every user
//!   logs in with the password in `$MAILSTACK_PLAIN_PASSWORD` (or `--imap-password`).
//!
//! One line per request on stdout (method, path, mailbox, status; never tokens). Runs until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use fake_graph::{Config, DovecotConfig, FakeGraph, User};

/// A fake of Microsoft Graph's mail API, on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:14081")]
    listen: SocketAddr,
    /// fake-entra's PEM signing key.
    #[arg(long)]
    key: PathBuf,
    /// A mailbox (userPrincipalName); repeatable.
    #[arg(long = "user")]
    users: Vec<String>,
    /// Dovecot's IMAPS address (loopback): serve real mailboxes instead of the in-memory store.
    #[arg(long)]
    imap: Option<SocketAddr>,
    /// The PEM CA of Dovecot's (and Postfix's) certificate.
    #[arg(long, requires = "imap")]
    imap_ca: Option<PathBuf>,
    /// The users' IMAP/SMTP password (default: $MAILSTACK_PLAIN_PASSWORD).
    #[arg(long, requires = "imap")]
    imap_password: Option<String>,
    /// Keep ids, change sequences and delta sync states (and the in-memory store's messages)
    /// in one JSON file per mailbox here, so they survive a restart.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Postfix's submission port (STARTTLS, AUTH PLAIN) on the same host, for sendMail.
    #[arg(long, default_value_t = 14587)]
    submission_port: u16,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fake-graph: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: fake-graph listens on loopback only (127.0.0.1 or ::1)",
            args.listen
        );
    }
    let key = fake_entra::SigningKey::from_pem_file(&args.key)?;
    let mut config = Config {
        log_requests: true,
        state_dir: args.state_dir.clone(),
        ..Config::default()
    };
    for upn in &args.users {
        config = config.with_user(User::new(upn));
    }
    if let Some(imap) = args.imap {
        if !imap.ip().is_loopback() {
            anyhow::bail!("--imap {imap}: fake-graph talks to a loopback Dovecot only");
        }
        let ca = args
            .imap_ca
            .context("--imap needs --imap-ca (the mail stack's tls/ca.pem)")?;
        let password = match args.imap_password {
            Some(p) => p,
            None => std::env::var("MAILSTACK_PLAIN_PASSWORD").context(
                "--imap needs the users' password: --imap-password or $MAILSTACK_PLAIN_PASSWORD (scripts/mailstack.sh env)",
            )?,
        };
        let mut dovecot = DovecotConfig::new(ca, &password);
        dovecot.host = imap.ip().to_string();
        dovecot.imaps_port = imap.port();
        dovecot.submission_port = args.submission_port;
        config.dovecot = Some(dovecot);
    }
    let graph = FakeGraph::start(config, key, args.listen)
        .await
        .context("starting fake-graph")?;
    println!(
        "fake-graph listening on {} — Graph at {}, mailboxes: {}",
        graph.base_url(),
        graph.graph_url(),
        args.users.join(", ")
    );
    wait_for_signal().await?;
    println!("fake-graph: shutting down");
    graph.shutdown().await;
    Ok(())
}

/// Returns at SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
