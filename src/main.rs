//! The `mailintake` binary: parse the command line, start logging, load the config, and call the
//! library. Exit codes: 0 success, 1 a mailbox or the database failed, 2 invalid configuration.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mailintake::cli::{Cli, Command, JunkAction, OutboxAction, QuarantineAction};
use mailintake::config::{Config, redact_url};
use mailintake::oauth::{self, TokenCache};
use mailintake::report::JunkListing;
use mailintake::store::Store;
use mailintake::telemetry::Metrics;
use mailintake::time::rfc3339;
use mailintake::{admin, check, http, intake as worker, junk, telemetry};

/// Two glibc malloc settings for a process that passes multi-MiB message bodies between threads
/// (measured over 10,000 and 50,000 messages in BENCHMARKS.md; no measurable cost in speed):
/// - two arenas: glibc gives every allocating thread its own, and bodies parsed on a blocking
///   thread and freed on the runtime's threads leave memory in each (peak RSS 118 → 85 MiB);
/// - a fixed 1 MiB mmap threshold: allocations above it go straight to the kernel and back when
///   freed; glibc's default threshold grows with every large free and then keeps freed bodies in
///   the heap (peak RSS 85 → 76 MiB, and 104 → 89 MiB at 50,000 messages).
///
/// An operator's own MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ is left alone.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator settings; it is called before any other thread
        // exists.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mailintake: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mailintake: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailintake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    if let Command::Check {
        mailbox,
        all,
        send_test_mail,
    } = &command
    {
        println!(
            "configuration is valid: {} identity(ies), {} mailbox(es), database {}",
            config.identities.len(),
            config.mailboxes.len(),
            redact_url(&config.database.url)
        );
        if mailbox.is_none() && !all {
            if send_test_mail.is_some() {
                eprintln!("mailintake: --send-test-mail needs a mailbox name or --all");
                return Ok(ExitCode::from(2));
            }
            return Ok(ExitCode::SUCCESS);
        }
        let passed = check::online(&config, mailbox.as_deref(), send_test_mail.as_deref()).await?;
        return Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if let Command::ConsentUrl { identity } = &command {
        let Some(identity) = config.identities.get(identity) else {
            eprintln!("mailintake: {}", unknown_identity(&config, identity));
            return Ok(ExitCode::from(2));
        };
        return match oauth::admin_consent_url(identity) {
            Some(url) => {
                println!("{url}");
                eprintln!(
                    "Open this URL as a Global, Application or Cloud Application Administrator of the tenant that will use the app, \
                     and accept: it grants admin consent to every permission the app registration asks for ({}).",
                    identity.scope
                );
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "mailintake: identity `{}` has only a token_url; admin consent is an Entra ID feature: give tenant or authority",
                    identity.name
                );
                Ok(ExitCode::from(2))
            }
        };
    }
    let store = Store::open(&config.database.url)
        .await
        .context("opening the database")?;
    let code = match command {
        Command::Check { .. } | Command::ConsentUrl { .. } => unreachable!("handled above"),
        Command::Login { identity } => {
            let Some(identity) = config.identities.get(&identity) else {
                eprintln!("mailintake: {}", unknown_identity(&config, &identity));
                return Ok(ExitCode::from(2));
            };
            let tokens = TokenCache::new().with_token_store(store.clone(), &config.token_keys);
            let result = tokens
                .login_device_code(identity, |prompt| {
                    match &prompt.message {
                        Some(message) => println!("{message}"),
                        None => println!(
                            "To sign in, open {} and enter the code {}",
                            prompt.verification_uri, prompt.user_code
                        ),
                    }
                    println!(
                        "Sign in as the account whose mailboxes this identity reads. Waiting up to {} minute(s)…",
                        prompt.expires_in.as_secs().div_ceil(60)
                    );
                })
                .await;
            match result {
                Ok(login) => {
                    println!(
                        "identity `{}` is signed in; its refresh token is stored encrypted in the database{}",
                        identity.name,
                        login
                            .scope
                            .map(|s| format!(" (granted: {s})"))
                            .unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailintake: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate => {
            println!(
                "database schema is up to date ({})",
                redact_url(&config.database.url)
            );
            ExitCode::SUCCESS
        }
        Command::Once => {
            let tokens = TokenCache::new().with_token_store(store.clone(), &config.token_keys);
            let mut failed = 0;
            for (mailbox, result) in worker::run_once(&config, &store, &tokens).await {
                match result {
                    Ok(report) => println!("{mailbox}: {report}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{mailbox}: FAILED: {}", store.explain_failure(&e));
                    }
                }
            }
            for (mailbox, result) in worker::flush_outboxes(&config, &store, &tokens).await {
                match result {
                    Ok(report) => println!("{mailbox} outbox: {report}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{mailbox} outbox: FAILED: {e}");
                    }
                }
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run => {
            let tokens =
                Arc::new(TokenCache::new().with_token_store(store.clone(), &config.token_keys));
            let config = Arc::new(config);
            let metrics = Arc::new(Metrics::new(&config));
            // Every task of the worker (folders, outbox senders, the Junk check) stops at a safe
            // point on `cancel`; the monitoring endpoint keeps answering while they drain.
            let tracker = tokio_util::task::TaskTracker::new();
            let cancel = tokio_util::sync::CancellationToken::new();
            let stop_http = tokio_util::sync::CancellationToken::new();
            let server = match &config.http {
                Some(http_config) => {
                    let listener = http::bind(http_config).await?;
                    // The status page shows each Junk folder's count from this task, so that a
                    // page view never opens an IMAP session.
                    tokio::spawn(junk::watch(
                        Arc::clone(&config),
                        Arc::clone(&tokens),
                        Arc::clone(&metrics),
                        stop_http.clone(),
                    ));
                    Some(tokio::spawn(http::serve(
                        listener,
                        Arc::clone(&config),
                        store.clone(),
                        Arc::clone(&metrics),
                        stop_http.clone(),
                    )))
                }
                None => None,
            };
            worker::spawn(config, store.clone(), tokens, metrics, &tracker, &cancel);
            tracker.close();
            shutdown_signal().await;
            tracing::info!("shutdown requested; letting mailboxes reach a safe point");
            cancel.cancel();
            tracker.wait().await;
            tracing::info!("all mailboxes stopped");
            stop_http.cancel();
            if let Some(server) = server {
                match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => tracing::error!(error = %e, "monitoring endpoint failed"),
                    Ok(Err(e)) => tracing::error!(error = %e, "monitoring endpoint panicked"),
                    Err(_) => tracing::warn!("monitoring endpoint did not stop within 5 s"),
                }
            }
            ExitCode::SUCCESS
        }
        Command::Ticket { id, json } => {
            let Some(ticket) = store.ticket_summary(id).await? else {
                anyhow::bail!("no ticket with id {id}");
            };
            let messages = store.ticket_messages(id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ticket": ticket, "messages": messages })
                );
            } else {
                println!(
                    "{} [{}] {} — {} ({} message(s))",
                    ticket.reference,
                    ticket.status,
                    ticket.subject,
                    ticket.requester.as_deref().unwrap_or("-"),
                    messages.len()
                );
                for m in &messages {
                    println!(
                        "\n  #{} {} from {}{}: {}",
                        m.id,
                        m.direction,
                        m.from_address.as_deref().unwrap_or("-"),
                        m.auto_kind
                            .as_deref()
                            .map(|k| format!(" ({k})"))
                            .unwrap_or_default(),
                        m.subject
                    );
                    for (aid, name, kind, size) in &m.attachments {
                        println!(
                            "     attachment {aid}: {} ({kind}, {size} bytes)",
                            name.as_deref().unwrap_or("(unnamed)")
                        );
                    }
                    if let Some(body) = &m.body_text {
                        for line in body.lines().take(20) {
                            println!("     | {line}");
                        }
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Quarantine { action } => match action {
            QuarantineAction::List { limit, json } => {
                let entries = store.quarantine_list(limit).await?;
                if json {
                    for e in &entries {
                        println!("{}", serde_json::to_string(e)?);
                    }
                } else if entries.is_empty() {
                    println!("nothing is quarantined");
                } else {
                    println!(
                        "{:>6} {:<10} {:<20} {:>10} {:<30} SUBJECT",
                        "ID", "MAILBOX", "REASON", "BYTES", "FROM"
                    );
                    for e in &entries {
                        println!(
                            "{:>6} {:<10} {:<20} {:>10} {:<30} {}{}",
                            e.id,
                            e.mailbox,
                            e.reason,
                            e.size_bytes,
                            e.from_address.as_deref().unwrap_or("-"),
                            e.subject.as_deref().unwrap_or("-"),
                            match (e.released_at_ms, e.resolved_at_ms, e.resolved_ticket_id) {
                                (_, Some(_), Some(ticket)) => format!(
                                    "  (reprocessed: {})",
                                    mailintake::ingest::ticket_reference(ticket)
                                ),
                                (_, Some(_), None) => "  (reprocessed: no ticket needed)".into(),
                                (Some(_), None, _) => "  (released)".into(),
                                (None, None, _) => String::new(),
                            }
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            QuarantineAction::Show { id } => {
                let Some(entry) = store.quarantine_entry(id).await? else {
                    anyhow::bail!("no quarantined message with id {id}");
                };
                println!("{}", serde_json::to_string_pretty(&entry)?);
                ExitCode::SUCCESS
            }
            QuarantineAction::Purge {
                older_than,
                dry_run,
            } => {
                let cutoff = mailintake::time::now_ms() - older_than.as_millis() as i64;
                let report = store.quarantine_purge(cutoff, dry_run).await?;
                println!(
                    "{} {} quarantine row(s) older than {} ({} raw bytes){}",
                    if dry_run { "would delete" } else { "deleted" },
                    report.rows,
                    humantime::format_duration(older_than),
                    report.raw_bytes,
                    if report.kept_released_pending > 0 {
                        format!(
                            "; kept {} released message(s) that have not come in yet",
                            report.kept_released_pending
                        )
                    } else {
                        String::new()
                    }
                );
                ExitCode::SUCCESS
            }
            QuarantineAction::Release { id, max_bytes } => {
                let tokens = TokenCache::new().with_token_store(store.clone(), &config.token_keys);
                println!(
                    "{}",
                    admin::release(&config, &store, &tokens, id, max_bytes).await?
                );
                ExitCode::SUCCESS
            }
        },
        Command::Outbox { action } => match action {
            OutboxAction::List { state, limit, json } => {
                let rows = store.outbox_list(state.as_deref(), limit).await?;
                if json {
                    for r in &rows {
                        println!("{}", serde_json::to_string(r)?);
                    }
                } else if rows.is_empty() {
                    println!("the outbox is empty");
                } else {
                    println!(
                        "{:>6} {:<10} {:<11} {:>3} {:<30} SUBJECT / WHY",
                        "ID", "MAILBOX", "STATE", "TRY", "TO"
                    );
                    for r in &rows {
                        println!(
                            "{:>6} {:<10} {:<11} {:>3} {:<30} {}{}",
                            r.id,
                            r.mailbox,
                            r.state,
                            r.attempts,
                            r.to_address.as_deref().unwrap_or("-"),
                            r.subject,
                            r.reason
                                .as_deref()
                                .or(r.last_error.as_deref())
                                .map(|w| format!(" — {}", w.lines().next().unwrap_or("")))
                                .unwrap_or_default()
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            OutboxAction::Retry { id } => {
                if !store.outbox_retry(id).await? {
                    anyhow::bail!(
                        "outbox row {id} is not failed, cancelled or pending (or does not exist)"
                    );
                }
                println!(
                    "outbox row {id} is due now; a running worker (or the next `once`) sends it"
                );
                ExitCode::SUCCESS
            }
            OutboxAction::Cancel { id } => {
                if !store.outbox_cancel(id).await? {
                    anyhow::bail!("outbox row {id} is sent, being sent, or does not exist");
                }
                println!("outbox row {id} is cancelled");
                ExitCode::SUCCESS
            }
        },
        Command::Purge {
            older_than,
            dry_run,
        } => {
            let cutoff = mailintake::time::now_ms() - older_than.as_millis() as i64;
            let r = store.purge_older_than(cutoff, dry_run).await?;
            println!(
                "{} mail stored before {}:\n  raw messages: {} ({} bytes)\n  quarantine raw bytes: {} message(s) ({} bytes)\n  attachment contents: {} attachment(s), {} distinct content(s) ({} bytes)",
                if dry_run { "would purge" } else { "purged" },
                rfc3339(cutoff),
                r.raw_messages,
                r.raw_message_bytes,
                r.quarantine_raw,
                r.quarantine_raw_bytes,
                r.attachments,
                r.attachment_blobs,
                r.attachment_blob_bytes
            );
            ExitCode::SUCCESS
        }
        Command::Reprocess { id, message } => {
            let done = if message {
                admin::reprocess_article(&store, id).await?
            } else {
                admin::reprocess_quarantined(&config, &store, id).await?
            };
            println!("{done}");
            ExitCode::SUCCESS
        }
        Command::Junk { action } => {
            let tokens = TokenCache::new().with_token_store(store.clone(), &config.token_keys);
            match action {
                JunkAction::List {
                    mailbox,
                    limit,
                    json,
                } => {
                    let mailbox = junk::pick_mailbox(&config, mailbox.as_deref())?;
                    let listing = junk::list(&config, &tokens, mailbox, limit).await?;
                    match listing {
                        JunkListing::Missing { folder } => {
                            if json {
                                println!(
                                    "{}",
                                    serde_json::to_string(&JunkListing::Missing { folder })?
                                );
                            } else {
                                println!(
                                    "{} has no folder `{folder}` (junk_folder; Exchange Online calls it \"Junk Email\")",
                                    mailbox.address
                                );
                            }
                        }
                        JunkListing::Listed {
                            folder,
                            total,
                            newest,
                        } => {
                            if json {
                                for item in &newest {
                                    println!("{}", serde_json::to_string(item)?);
                                }
                            } else if total == 0 {
                                println!("`{folder}` of {} is empty", mailbox.address);
                            } else {
                                println!(
                                    "`{folder}` of {} holds {total} message(s){}:",
                                    mailbox.address,
                                    if newest.len() < total as usize {
                                        format!("; the newest {}", newest.len())
                                    } else {
                                        String::new()
                                    }
                                );
                                println!(
                                    "{:>6} {:<20} {:<30} {:>10}  SUBJECT",
                                    "UID", "DATE", "FROM", "BYTES"
                                );
                                for item in &newest {
                                    let date = item
                                        .date_ms
                                        .or(item.received_ms)
                                        .map(|t| rfc3339(t).to_string())
                                        .unwrap_or_else(|| "-".into());
                                    println!(
                                        "{:>6} {:<20} {:<30} {:>10}  {}",
                                        item.uid,
                                        date,
                                        item.from.as_deref().unwrap_or("-"),
                                        item.size_bytes,
                                        item.subject.as_deref().unwrap_or("-")
                                    );
                                }
                                println!(
                                    "`mailintake junk release UID` moves a real message to the inbox."
                                );
                            }
                        }
                    }
                }
                JunkAction::Release { uid, mailbox } => {
                    let mailbox = junk::pick_mailbox(&config, mailbox.as_deref())?;
                    println!("{}", junk::release(&config, &tokens, mailbox, uid).await?);
                }
            }
            ExitCode::SUCCESS
        }
        Command::Raw { id, out } => {
            let Some(raw) = store.raw_message(id).await? else {
                anyhow::bail!(
                    "no raw message is kept for message {id}; set keep_raw = \"all\" on the mailbox to keep them (failures keep theirs in the quarantine); `mailintake purge` removes old ones"
                );
            };
            write_new_file(&out, &raw)?;
            println!(
                "wrote message {id} ({} bytes) to {}",
                raw.len(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Command::Attachment { id, out } => {
            if let Some(purged_ms) = store.attachment_purged_at(id).await? {
                anyhow::bail!(
                    "the content of attachment {id} was removed by `mailintake purge` on {} (retention); its metadata is kept",
                    rfc3339(purged_ms)
                );
            }
            let Some(attachment) = store.attachment(id).await? else {
                anyhow::bail!(
                    "no attachment with id {id}; `mailintake tickets` and the attachments table list them"
                );
            };
            write_new_file(&out, &attachment.content)?;
            println!(
                "wrote {} ({}, {} bytes, sha256 {}) to {}",
                attachment.filename.as_deref().unwrap_or("(unnamed)"),
                attachment.content_type,
                attachment.content.len(),
                attachment.sha256,
                out.display()
            );
            ExitCode::SUCCESS
        }
        Command::Tickets { limit, json, since } => {
            let tickets = match since {
                Some(since_ms) => store.tickets_since(since_ms, limit).await?,
                None => store.recent_tickets(limit).await?,
            };
            if json {
                for ticket in &tickets {
                    println!("{}", serde_json::to_string(ticket)?);
                }
            } else if tickets.is_empty() {
                println!(
                    "{}",
                    if since.is_some() {
                        "no tickets since then"
                    } else {
                        "no tickets yet"
                    }
                );
            } else {
                println!(
                    "{:<11} {:<10} {:<28} {:>4} {:>4}  SUBJECT",
                    "TICKET", "MAILBOX", "REQUESTER", "MSGS", "ATT"
                );
                for t in &tickets {
                    println!(
                        "{:<11} {:<10} {:<28} {:>4} {:>4}  {}",
                        t.reference,
                        t.mailbox,
                        t.requester.as_deref().unwrap_or("-"),
                        t.n_messages,
                        t.n_attachments,
                        t.subject
                    );
                }
            }
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

fn unknown_identity(config: &Config, name: &str) -> String {
    let known: Vec<&str> = config.identities.keys().map(String::as_str).collect();
    format!(
        "no identity `{name}` is declared; declared identities: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// Writes `bytes` to a file that must not exist yet.
fn write_new_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    std::io::Write::write_all(&mut file, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
