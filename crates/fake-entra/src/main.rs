//! `fake-entra`: runs the fake Entra ID token endpoint on loopback for the local mail stack.
//!
//! ```text
//! fake-entra --listen 127.0.0.1:14080 --key signing-key.pem --config fake-entra.toml
//! ```
//!
//! - `--key`: a PEM RSA private key (PKCS#8 or PKCS#1, at least 2048 bits), e.g. made with
//!   `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out signing-key.pem`.
//!   Every instance started with the same key accepts the others' tokens.
//! - `--config`: the tenant in TOML; `fake-entra.example.toml` beside this crate's Cargo.toml
//!   documents every key, and the crate README describes the format.
//! - `--listen`: a loopback address (anything else is refused); default 127.0.0.1:14080.
//!
//! Each request is logged on stdout (grant, client, outcome; never secrets or tokens); rejected
//! token validations are explained on stderr. Runs until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use fake_entra::{Config, FakeEntra, SigningKey};

/// A fake of Microsoft Entra ID's v2.0 token endpoint, on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:14080")]
    listen: SocketAddr,
    /// PEM RSA private key that signs the tokens.
    #[arg(long)]
    key: PathBuf,
    /// The tenant, in TOML.
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fake-entra: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: fake-entra listens on loopback only (127.0.0.1 or ::1)",
            args.listen
        );
    }
    let key = SigningKey::from_pem_file(&args.key)?;
    let mut config = Config::from_file(&args.config)?;
    config.log_requests = true;
    let entra = FakeEntra::start(config, key, args.listen)
        .await
        .context("starting fake-entra")?;
    let config = entra.config();
    println!(
        "fake-entra listening on {} — tenant {} ({}), authority {}, token endpoint {}, tokeninfo {}",
        entra.base_url(),
        config.tenant_id,
        config.tenant_domains.join(", "),
        entra.authority(),
        entra.token_url(),
        entra.tokeninfo_url()
    );
    wait_for_signal().await?;
    println!("fake-entra: shutting down");
    entra.shutdown().await;
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
