//! `mailintake send`: a message handed to a mailbox's outbox through the same library function
//! as the `outgoing` table ([`reply::outgoing::submit`]); with `--wait`, sent from here and
//! followed until it is sent, failed or bounced.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;

use super::token_cache;
use crate::cli::SendArgs;
use crate::config::Config;
use crate::intake::{self, session::LoginPacer};
use crate::reply::outgoing::{
    self, AttachmentSpec, OutgoingRequest, Recipient, RequestKind, SubmitError, TicketRef,
};
use crate::reply::sender::{self, SenderContext, SentCopies};
use crate::store::{Store, SubmittedVia};
use crate::telemetry::Metrics;

/// Exit code of a request refused (a field to fix, a conflict, too large): a usage mistake.
const REFUSED: u8 = 2;

pub(super) async fn send(
    config: &Config,
    store: &Store,
    args: SendArgs,
) -> anyhow::Result<ExitCode> {
    let mailbox = crate::junk::pick_mailbox(config, args.mailbox.as_deref())?;
    let mut request = match &args.request {
        Some(source) => read_request(source)?,
        None => request_from_flags(&args)?,
    };
    if request.mailbox.is_empty() {
        request.mailbox.clone_from(&mailbox.name);
    }
    if let Some(key) = &args.idempotency_key {
        request.idempotency_key.clone_from(key);
    }
    let generated_key = request.idempotency_key.is_empty();
    if generated_key {
        request.idempotency_key = random_key()?;
    }
    if generated_key {
        println!("idempotency key: {}", request.idempotency_key);
    }
    let submission =
        match outgoing::submit(store, &config.mailboxes, &request, SubmittedVia::Cli).await {
            Ok(submission) => submission,
            Err(SubmitError::Store(e)) => return Err(e).context("writing the outbox row"),
            Err(refused) => {
                eprintln!("mailintake: refused: {refused}");
                return Ok(ExitCode::from(REFUSED));
            }
        };
    let id = submission.outbox_id;
    let state = store
        .outbox_state(id)
        .await?
        .context("the outbox row is gone")?;
    println!(
        "outbox {id}: {} ({})",
        state.state,
        if submission.new {
            "new"
        } else {
            "submitted before with this key"
        }
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait(config, store, &request.mailbox, id, args.wait_timeout).await
}

/// Flushes the mailbox's outbox until row `id` is sent, failed or bounced (or `limit` passes,
/// or its From address is refused); exit code 0 only when it was sent.
async fn wait(
    config: &Config,
    store: &Store,
    mailbox_name: &str,
    id: i64,
    limit: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let mailbox = config
        .mailboxes
        .iter()
        .find(|m| m.name == mailbox_name)
        .context("the mailbox was checked by submit")?;
    let outlet = mailbox.outlet.as_ref().context("checked by submit")?;
    let tokens = token_cache(config, store);
    let metrics = Metrics::new(config);
    let identity = config.identity(&mailbox.identity);
    let logins = LoginPacer::default();
    let copies = intake::sent_copies(mailbox, identity, &tokens, &metrics, &logins);
    let ctx = SenderContext {
        mailbox,
        outlet,
        identity,
        store,
        tokens: &tokens,
        metrics: &metrics,
        sent_copies: copies.as_ref().map(|c| c as &dyn SentCopies),
        tenure: None,
        graph: &logins.graph,
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        sender::flush(&ctx).await?;
        let state = store
            .outbox_state(id)
            .await?
            .context("the outbox row is gone")?;
        match state.state.as_str() {
            "sent" => {
                println!(
                    "outbox {id}: sent: {}",
                    state.smtp_response.unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            "pending" | "sending" => {}
            other => {
                println!(
                    "outbox {id}: {other}: {}",
                    state.last_error.unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        if let Some(reason) = state.blocked_reason {
            println!("outbox {id}: pending, the server refuses its From address: {reason}");
            return Ok(ExitCode::FAILURE);
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "outbox {id}: still {} after {} (attempts: {}; last error: {})",
                state.state,
                humantime::format_duration(limit),
                state.attempts,
                state.last_error.as_deref().unwrap_or("none")
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The JSON document from a file, or stdin for `-`.
fn read_request(source: &str) -> anyhow::Result<OutgoingRequest> {
    let text = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the request from stdin")?;
        text
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading --request {source}"))?
    };
    serde_json::from_str(&text)
        .with_context(|| format!("--request {source}: not a valid request document"))
}

fn request_from_flags(args: &SendArgs) -> anyhow::Result<OutgoingRequest> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {flag} {}", path.display()))
    };
    let text = match (&args.text, &args.text_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => Some(read("--text-file", path)?),
        (None, None) => None,
    };
    let html = match &args.html_file {
        Some(path) => Some(read("--html-file", path)?),
        None => None,
    };
    let mut attachments = Vec::new();
    for path in &args.attach {
        let content =
            std::fs::read(path).with_context(|| format!("reading --attach {}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        attachments.push(AttachmentSpec::Content {
            content_type: guess_content_type(&filename).to_string(),
            filename,
            content_base64: base64::engine::general_purpose::STANDARD.encode(content),
        });
    }
    let recipients = |list: &[String]| list.iter().cloned().map(Recipient::Address).collect();
    Ok(OutgoingRequest {
        mailbox: args.mailbox.clone().unwrap_or_default(),
        idempotency_key: String::new(),
        kind: if args.notification {
            RequestKind::Notification
        } else {
            RequestKind::Reply
        },
        ticket: args.ticket.clone().map(TicketRef::Reference),
        to: recipients(&args.to),
        cc: recipients(&args.cc),
        bcc: recipients(&args.bcc),
        from: args.from.clone(),
        subject: args.subject.clone(),
        text,
        html,
        attachments,
    })
}

/// A fresh key: 16 random bytes, hex.
fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes).context("no randomness for the idempotency key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The MIME type of a file by its name's extension (the common ones; else octet-stream).
fn guess_content_type(filename: &str) -> &'static str {
    let extension = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "json" => "application/json",
        "eml" => "message/rfc822",
        _ => "application/octet-stream",
    }
}
