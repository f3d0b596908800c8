//! How many statements a batch runs (issue 19, set-based writes): what its messages' decisions
//! ask is read once for the whole batch — the stored messages and outbox rows their references
//! name, the tickets those and their subjects' tags belong to, with status and participants —
//! so a follow-up, threaded by In-Reply-To or by a tag, runs no statement of its own. A new
//! ticket runs none on SQLite (its id is the next rowid, read once under the batch's write lock,
//! and its row goes with the batch's others) and one on PostgreSQL (`INSERT … RETURNING id`: the
//! sequence one number at a time, so that ticket numbers have no gaps).
//!
//! Counted as `tests/it/scale.rs` counts a request's: with `--log-format json` and
//! `RUST_LOG=…,sqlx::query=debug` sqlx logs one line per statement, and every statement of a
//! batch carries the span field `batch_messages`; a connection's set-up (PRAGMA, SET) is the
//! pool's and not counted.

use serde_json::Value;

use crate::helpers::*;
use crate::threading::mail;

/// Originals, then in one batch replies by In-Reply-To, tagged replies, and new mail.
const PER_KIND: usize = 20;
/// What a batch runs whatever its size: BEGIN and COMMIT, the prefetch (stored messages, outbox
/// rows, senders' recent tickets, releases, Message-IDs Exchange gave ours, tags, tickets), the
/// id reads, the multi-row inserts of messages and ledger rows, the tickets' update and the
/// checkpoint, and on SQLite the tickets' id read and multi-row insert. Measured 20 on
/// PostgreSQL (this test's batch: 40 statements) and 22 on SQLite (the whole batch); with each
/// ticket read when a decision asked for it and inserted alone, as before, it ran 94–95.
const BATCH_OVERHEAD: usize = 24;

/// The statements of the log's batches: per batch (its first line's order), how many.
fn batch_statements(stderr: &str) -> Vec<usize> {
    let mut batches: Vec<usize> = Vec::new();
    let mut last: Option<u64> = None;
    for line in stderr.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["target"] != "sqlx::query" {
            continue;
        }
        let Some(n) = v["batch_messages"].as_u64() else {
            last = None;
            continue;
        };
        let summary = v["summary"].as_str().unwrap_or("");
        if summary.starts_with("PRAGMA ") || summary.starts_with("SET ") {
            continue;
        }
        if last != Some(n) || batches.is_empty() {
            batches.push(0);
        }
        last = Some(n);
        *batches.last_mut().expect("pushed") += 1;
    }
    batches
}

async fn a_batchs_follow_ups_run_no_statement_of_their_own(backend: Backend) {
    let case = Case::new(backend, "", "implicit").await;
    let originals: Vec<String> = (0..PER_KIND)
        .map(|i| format!("{}@customer.test", unique(&format!("o{i}"))))
        .collect();
    for (i, id) in originals.iter().enumerate() {
        let from = format!("c{i}@customer.test");
        deliver_lmtp(
            &case.mailbox,
            &from,
            &mail(&from, &case.mailbox, &format!("Question {i}"), id, None),
        )
        .await;
    }
    assert_ok(&case.run(&["once"]).await);
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM tickets").await,
        PER_KIND as i64
    );

    for (i, original) in originals.iter().enumerate() {
        let from = format!("c{i}@customer.test");
        let reply = format!("{}@customer.test", unique("r"));
        deliver_lmtp(
            &case.mailbox,
            &from,
            &mail(
                &from,
                &case.mailbox,
                &format!("Re: Question {i}"),
                &reply,
                Some(original),
            ),
        )
        .await;
        let reference: String = crate::outgoing::query_text(
            &case.db,
            &format!("SELECT t.reference FROM tickets t JOIN messages m ON m.ticket_id = t.id WHERE m.message_id = '{original}'"),
        )
        .await;
        let tagged = format!("{}@customer.test", unique("t"));
        deliver_lmtp(
            &case.mailbox,
            &from,
            &mail(
                &from,
                &case.mailbox,
                &format!("[#{reference}] more on {i}"),
                &tagged,
                None,
            ),
        )
        .await;
        let stranger = format!("d{i}@customer.test");
        let new = format!("{}@customer.test", unique("n"));
        deliver_lmtp(
            &case.mailbox,
            &stranger,
            &mail(
                &stranger,
                &case.mailbox,
                &format!("Another problem {i}"),
                &new,
                None,
            ),
        )
        .await;
    }
    let out = case
        .run_with(
            &["--log-format", "json", "once"],
            &[("RUST_LOG", "info,sqlx::query=debug")],
        )
        .await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM tickets").await,
        2 * PER_KIND as i64,
        "the replies and tagged mail are follow-ups, the strangers' mail new tickets"
    );
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM messages").await,
        4 * PER_KIND as i64
    );
    let batches = batch_statements(&stderr);
    assert_eq!(batches.len(), 1, "one batch: {batches:?}");
    let per_ticket = match backend {
        Backend::Sqlite => 0,
        Backend::Postgres => 1,
    };
    assert!(
        batches[0] <= per_ticket * PER_KIND + BATCH_OVERHEAD,
        "{} statements for {} follow-ups and {PER_KIND} new tickets (at most {per_ticket} per new ticket and {BATCH_OVERHEAD} for the batch)",
        batches[0],
        2 * PER_KIND
    );
    assert!(
        batches[0] > 10,
        "the count sees the statements at all: {batches:?}"
    );
}

#[tokio::test]
async fn a_batchs_follow_ups_run_no_statement_of_their_own_on_sqlite() {
    a_batchs_follow_ups_run_no_statement_of_their_own(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_batchs_follow_ups_run_no_statement_of_their_own_on_postgres() {
    a_batchs_follow_ups_run_no_statement_of_their_own(Backend::Postgres).await;
}
