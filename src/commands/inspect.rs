//! Read-only commands: what is stored (tickets, one ticket, an attachment, a raw message, the
//! quarantine, the outbox) and what sits in a mailbox's Junk folder. None of them changes a row
//! or a message.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;

use super::{token_cache, write_new_file};
use crate::config::Config;
use crate::ingest;
use crate::junk;
use crate::report::JunkListing;
use crate::store::Store;
use crate::time::rfc3339;

/// `mailintake workers`: the live workers of the fleet (heartbeat within one lease TTL), then
/// each lease with its holder (or `free`).
pub(super) async fn workers(config: &Config, store: &Store) -> anyhow::Result<ExitCode> {
    let now = crate::time::now_ms();
    for worker in store.live_workers(config.fleet.lease_ttl).await? {
        println!(
            "worker {}  host {}  pid {}  version {}  started {}  heartbeat {} ms ago",
            worker.id,
            worker.host,
            worker.pid,
            worker.version,
            rfc3339(worker.started_at_ms),
            (now - worker.heartbeat_at_ms).max(0),
        );
    }
    for (mailbox, folder, holder) in store.lease_holders().await? {
        let unit = crate::fleet::Unit::folder(&mailbox, &folder);
        println!("lease {unit}  {}", holder.as_deref().unwrap_or("free"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `mailintake tickets [--since DATE|DURATION] [--limit N] [--json]`: the newest tickets.
pub(super) async fn tickets(
    store: &Store,
    limit: i64,
    since: Option<i64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

/// `mailintake ticket ID [--json]`: one ticket with its messages (the first 20 lines of each
/// body) and attachments.
pub(super) async fn ticket(store: &Store, id: i64, json: bool) -> anyhow::Result<ExitCode> {
    let Some(ticket) = store.ticket_summary(id).await? else {
        bail!("no ticket with id {id}");
    };
    let messages = store.ticket_messages(id).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "ticket": ticket, "messages": messages })
        );
        return Ok(ExitCode::SUCCESS);
    }
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
        let others: Vec<&str> = m
            .from_addresses
            .as_ref()
            .and_then(|list| list.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("address").and_then(|a| a.as_str()))
            .skip(1)
            .collect();
        if !others.is_empty() {
            println!("     also from: {}", others.join(", "));
        }
        if let Some(detail) = &m.intake_detail {
            println!("     note: {detail}");
        }
        if let Some(ack) = &m.acknowledgement {
            println!(
                "     acknowledgement: {}{}{}",
                ack.state,
                ack.to_address
                    .as_deref()
                    .map(|to| format!(" to {to}"))
                    .unwrap_or_default(),
                ack.reason
                    .as_deref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default()
            );
        }
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
    Ok(ExitCode::SUCCESS)
}

/// `mailintake attachment ID --out FILE`: one attachment's content, byte-exact, to a new file.
pub(super) async fn attachment(store: &Store, id: i64, out: &Path) -> anyhow::Result<ExitCode> {
    if let Some(purged_ms) = store.attachment_purged_at(id).await? {
        bail!(
            "the content of attachment {id} was removed by `mailintake purge` on {} (retention); its metadata is kept",
            rfc3339(purged_ms)
        );
    }
    let Some(attachment) = store.attachment(id).await? else {
        bail!(
            "no attachment with id {id}; `mailintake tickets` and the attachments table list them"
        );
    };
    write_new_file(out, &attachment.content)?;
    println!(
        "wrote {} ({}, {} bytes, sha256 {}) to {}",
        attachment.filename.as_deref().unwrap_or("(unnamed)"),
        attachment.content_type,
        attachment.content.len(),
        attachment.sha256,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `mailintake raw ID --out FILE`: a kept raw message, byte-exact, to a new file.
pub(super) async fn raw(store: &Store, id: i64, out: &Path) -> anyhow::Result<ExitCode> {
    let Some(raw) = store.raw_message(id).await? else {
        bail!(
            "no raw message is kept for message {id}; set keep_raw = \"all\" on the mailbox to keep them (failures keep theirs in the quarantine); `mailintake purge` removes old ones"
        );
    };
    write_new_file(out, &raw)?;
    println!(
        "wrote message {id} ({} bytes) to {}",
        raw.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `mailintake quarantine list [--limit N] [--json]`: the newest quarantined messages, each with
/// what became of it.
pub(super) async fn quarantine_list(
    store: &Store,
    limit: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
                    (_, Some(_), Some(ticket)) =>
                        format!("  (reprocessed: {})", ingest::ticket_reference(ticket)),
                    (_, Some(_), None) => "  (reprocessed: no ticket needed)".into(),
                    (Some(_), None, _) => "  (released)".into(),
                    (None, None, _) => String::new(),
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mailintake quarantine show ID`: one quarantine row in full, as pretty JSON.
pub(super) async fn quarantine_show(store: &Store, id: i64) -> anyhow::Result<ExitCode> {
    let Some(entry) = store.quarantine_entry(id).await? else {
        bail!("no quarantined message with id {id}");
    };
    println!("{}", serde_json::to_string_pretty(&entry)?);
    Ok(ExitCode::SUCCESS)
}

/// `mailintake outbox list [--state S] [--limit N] [--json]`: the newest rows of every kind, with
/// why each was suppressed or bounced, or what its last attempt said. A pending row whose From
/// address the server refuses shows as `blocked`, with the refusal and the fix; one the sending
/// budget holds back as `deferred`, with the budget and when it is due.
pub(super) async fn outbox_list(
    store: &Store,
    state: Option<crate::cli::OutboxFilter>,
    limit: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let only_blocked = state == Some(crate::cli::OutboxFilter::Blocked);
    let rows = store
        .outbox_list(state.map(|s| s.state()), only_blocked, limit)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let blocked = store.blocked_reasons(&ids).await?;
    if json {
        #[derive(serde::Serialize)]
        struct Listed<'a> {
            #[serde(flatten)]
            row: &'a crate::store::admin::OutboxEntry,
            blocked_reason: Option<&'a String>,
        }
        for r in &rows {
            let listed = Listed {
                row: r,
                blocked_reason: blocked.get(&r.id),
            };
            println!("{}", serde_json::to_string(&listed)?);
        }
    } else if rows.is_empty() {
        println!("the outbox is empty");
    } else {
        println!(
            "{:>6} {:<10} {:<12} {:<11} {:>3} {:<30} SUBJECT / WHY",
            "ID", "MAILBOX", "KIND", "STATE", "TRY", "TO"
        );
        for r in &rows {
            let blocked_reason = blocked.get(&r.id);
            let deferred = (r.state == "pending")
                .then_some(r.deferred_reason.as_ref())
                .flatten()
                .filter(|_| r.next_attempt_at_ms > crate::time::now_ms())
                .map(|why| format!("{why}; due {}", crate::time::rfc3339(r.next_attempt_at_ms)));
            let copy_waits =
                (r.sent_copy == Some(crate::store::SentCopyState::Pending)).then(|| {
                    format!(
                        "sent; its copy to the Sent folder waits: {}",
                        r.sent_copy_error.as_deref().unwrap_or("not tried yet")
                    )
                });
            let why = blocked_reason
                .or(deferred.as_ref())
                .or(r.bounce_reason.as_ref())
                .or(r.reason.as_ref())
                .or(r.last_error.as_ref())
                .or(copy_waits.as_ref())
                .map(|w| format!(" — {}", w.lines().next().unwrap_or("")))
                .unwrap_or_default();
            let fix = blocked_reason
                .and_then(|w| w.lines().find_map(|l| l.trim().strip_prefix("fix: ")))
                .map(|f| format!(" (fix: {f})"))
                .unwrap_or_default();
            println!(
                "{:>6} {:<10} {:<12} {:<11} {:>3} {:<30} {}{why}{fix}",
                r.id,
                r.mailbox,
                kind_label(&r.kind),
                if blocked_reason.is_some() {
                    "blocked"
                } else if deferred.is_some() {
                    "deferred"
                } else {
                    r.state.as_str()
                },
                r.attempts,
                r.to_address.as_deref().unwrap_or("-"),
                r.subject,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The outbox kind in a listing's column: the long acknowledgement kinds shortened.
fn kind_label(kind: &str) -> &str {
    match kind {
        "follow-up-acknowledgement" => "follow-up-ack",
        "acknowledgement" => "ack",
        "quarantine-notice" => "notice",
        other => other,
    }
}

/// `mailintake junk list [--mailbox NAME] [--limit N] [--json]`: the newest messages of the
/// mailbox's Junk folder, from header fields only (read-only EXAMINE).
pub(super) async fn junk_list(
    config: &Config,
    store: &Store,
    mailbox: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let tokens = token_cache(config, store);
    let mailbox = junk::pick_mailbox(config, mailbox)?;
    match junk::list(config, &tokens, mailbox, limit).await? {
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
                    "ID", "DATE", "FROM", "BYTES"
                );
                for item in &newest {
                    let date = item
                        .date_ms
                        .or(item.received_ms)
                        .map(|t| rfc3339(t).to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:>6} {:<20} {:<30} {:>10}  {}",
                        item.id,
                        date,
                        item.from.as_deref().unwrap_or("-"),
                        item.size_bytes,
                        item.subject.as_deref().unwrap_or("-")
                    );
                }
                println!("`mailintake junk release ID` moves a real message to the inbox.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
