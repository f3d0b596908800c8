//! What a decision asks of the store (is this Message-ID known? which ticket does this thread
//! belong to? how many tickets did this sender open lately? was this message released?), read for
//! the whole batch in a few statements at its start and answered from memory, together with what
//! the batch wrote since.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::{Batch, IDS_PER_STATEMENT};

/// Tickets per statement of the prefetch: the ids appear in seven `IN (…)` lists of one
/// statement, and sqlx's per-parameter cost on SQLite grows with the parameter count.
const TICKETS_PER_STATEMENT: usize = 50;
use crate::ingest::{FingerprintVersion, KnownMessage, KnownTicket, ParsedMail, TicketStatus};
use crate::store::Result;
use crate::store::sql::placeholders;

/// What [`Batch::message_facts`] found.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub same_message_id: Option<KnownMessage>,
    pub sender_recent_tickets: u32,
    pub released: bool,
}

/// What a batch's messages will ask, known before the first is decided: see [`Batch::prefetch`].
#[derive(Debug, Default)]
pub struct BatchQuestions<'a> {
    pub mailbox: &'a str,
    /// The Message-IDs of the batch's messages.
    pub message_ids: Vec<&'a str>,
    /// Their senders' keys for the per-sender limit (`tickets.sender_key`: the vouched address,
    /// or `unverified:` and the From address), lower case.
    pub senders: Vec<String>,
    /// The Message-IDs they refer to (In-Reply-To, References, reported messages).
    pub referenced_ids: Vec<&'a str>,
    /// The start of the window of the per-sender limit.
    pub since_ms: i64,
    /// How many attachments the messages have (the batch allocates ids for its rows).
    pub attachments: usize,
    /// The ticket references their subjects' tags name (`TCK-000123`).
    pub tags: Vec<String>,
}

/// The answers to a batch's [`BatchQuestions`], as stored when the batch began.
#[derive(Debug, Default)]
pub(super) struct Prefetched {
    mailbox: String,
    since_ms: i64,
    /// Every Message-ID asked about (own and referenced), and the stored inbound message for
    /// those that have one.
    asked_messages: HashSet<String>,
    /// The referenced IDs asked about (they were looked up in the outbox too).
    asked_references: HashSet<String>,
    messages: HashMap<String, KnownMessage>,
    /// Referenced IDs that are our own outbox messages, with their ticket.
    outbox: HashMap<String, i64>,
    /// sender key → tickets opened since `since_ms`, for every sender key asked about.
    senders: HashMap<String, u32>,
    /// Message-IDs of the batch with an unused release.
    released: HashSet<String>,
    /// The tickets the referenced IDs and the tags found, with status and participants as
    /// stored when the batch began.
    tickets: HashMap<i64, KnownTicket>,
    /// The tags asked about, and the ticket of each that exists.
    asked_tags: HashSet<String>,
    tags: HashMap<String, i64>,
}

/// Message-IDs Exchange gave messages we sent through Graph, and which IDs were looked up.
#[derive(Debug, Default)]
pub(super) struct SentIds {
    /// `outbox.sent_message_id` → `outbox.message_id`.
    ours: HashMap<String, String>,
    asked: HashSet<String>,
}

impl Batch {
    /// Looks up which of `ids` are Message-IDs Exchange gave messages we sent through Graph
    /// (`outbox.sent_message_id`, migration 0019), one statement per `IDS_PER_STATEMENT` IDs not
    /// looked up yet; [`Batch::name_our_messages`] then answers from memory. A batch asks for
    /// all its messages' IDs at once.
    pub async fn sent_ids<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut new: Vec<&str> = ids
            .into_iter()
            .filter(|id| !self.sent_ids.asked.contains(*id))
            .collect();
        new.sort_unstable();
        new.dedup();
        for chunk in new.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT sent_message_id, message_id FROM outbox WHERE sent_message_id IN ({list})"
            )));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                self.sent_ids.ours.insert(row.get(0), row.get(1));
            }
        }
        self.sent_ids
            .asked
            .extend(new.into_iter().map(str::to_string));
        Ok(())
    }

    /// Reads the references of `mail` to a message we sent under the Message-ID Exchange gave
    /// it as references to our Message-ID (In-Reply-To, References, a report's original
    /// message: threading and bounces then find our outbox row), looking up what was not looked
    /// up yet. Returns our Message-ID when `mail`'s own Message-ID is one Exchange gave a message
    /// of ours: our own mail come back.
    pub async fn name_our_messages(&mut self, mail: &mut ParsedMail) -> Result<Option<String>> {
        let ids: Vec<String> = mail.referenced_and_own_ids().map(str::to_string).collect();
        self.sent_ids(ids.iter().map(String::as_str)).await?;
        Ok(mail.name_our_messages(&self.sent_ids.ours))
    }

    /// What is stored about a message about to be recorded, in one statement: the stored message
    /// with the same Message-ID, how many tickets were opened under `sender_key` (see
    /// [`BatchQuestions::senders`]) since `since_ms`, and whether an
    /// operator released this Message-ID from the quarantine of `mailbox` (not used yet).
    pub async fn message_facts(
        &mut self,
        mailbox: &str,
        message_id: &str,
        sender_key: Option<&str>,
        since_ms: i64,
    ) -> Result<MessageFacts> {
        if let Some(answer) = self.prefetched_facts(mailbox, message_id, sender_key, since_ms) {
            return Ok(answer);
        }
        self.flush_pending().await?;
        let row = sqlx::query(
            "SELECT m.ticket_id, m.fingerprint, m.id, m.fingerprint_version, \
             (SELECT COUNT(*) FROM tickets WHERE sender_key = $2 AND created_at >= $3), \
             (SELECT COUNT(*) FROM quarantine WHERE mailbox = $4 AND message_id = $1 \
              AND released_at IS NOT NULL AND release_used_at IS NULL) \
             FROM (SELECT 1 AS one) AS q LEFT JOIN messages m ON m.message_id = $1",
        )
        .bind(message_id)
        .bind(sender_key.map(str::to_string))
        .bind(since_ms)
        .bind(mailbox)
        .fetch_one(&mut *self.tx)
        .await?;
        let same_message_id = match (
            row.get::<Option<i64>, _>(0),
            row.get(1),
            row.get::<Option<i64>, _>(2),
            row.get::<Option<i64>, _>(3),
        ) {
            (Some(ticket_id), Some(fingerprint), Some(message_row_id), Some(version)) => {
                Some(KnownMessage {
                    ticket_id,
                    message_row_id,
                    fingerprint,
                    fingerprint_version: FingerprintVersion::from_number(version)?,
                })
            }
            _ => None,
        };
        Ok(MessageFacts {
            same_message_id,
            sender_recent_tickets: row.get::<i64, _>(4) as u32,
            released: row.get::<i64, _>(5) > 0,
        })
    }

    /// The stored message with exactly this Message-ID (this batch's writes included).
    async fn stored_message(&mut self, message_id: &str) -> Result<Option<KnownMessage>> {
        if let Some(known) = self.written.messages.get(message_id) {
            return Ok(Some(known.clone()));
        }
        self.flush_pending().await?;
        let row = sqlx::query(
            "SELECT ticket_id, fingerprint, id, fingerprint_version FROM messages WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|row| known_message(&row, 0)).transpose()
    }

    /// The released conflicts of Message-ID `original` (stored under `<original>#2`, `#3`, …:
    /// [`crate::ingest::conflict_release_key`]) and the first of those keys still free. One
    /// statement per key: asked only when a message meets another one under its Message-ID.
    pub async fn conflict_releases(
        &mut self,
        original: &str,
    ) -> Result<(Vec<KnownMessage>, String)> {
        let mut found = Vec::new();
        for n in 2.. {
            let key = crate::ingest::conflict_release_key(original, n);
            match self.stored_message(&key).await? {
                Some(known) => found.push(known),
                None => return Ok((found, key)),
            }
        }
        unreachable!("an unbounded range ends only by returning")
    }

    /// The raw message kept for stored row `message_row_id` (`keep_raw = "all"`), decompressed.
    pub async fn kept_raw_message(&mut self, message_row_id: i64) -> Result<Option<Vec<u8>>> {
        self.flush_pending().await?;
        let row = sqlx::query("SELECT content FROM raw_messages WHERE message_row_id = $1")
            .bind(message_row_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let compressed: Vec<u8> = row.get(0);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut raw)
            .map_err(sqlx::Error::Io)?;
        Ok(Some(raw))
    }

    /// The ticket owning one of these Message-IDs (our stored inbound messages or our outbox),
    /// the first of them in order that is known: one statement per `IDS_PER_STATEMENT` IDs.
    pub async fn ticket_of_message_ids(&mut self, ids: &[String]) -> Result<Option<KnownTicket>> {
        Ok(self
            .thread_of_message_ids(ids)
            .await?
            .map(|(ticket, _)| ticket))
    }

    /// Like [`Batch::ticket_of_message_ids`], and whether the ID that matched is one of our own
    /// outbound messages (an outbox row: an acknowledgement, a notice, an agent's reply): a reply naming one was
    /// written to something we sent.
    pub async fn thread_of_message_ids(
        &mut self,
        ids: &[String],
    ) -> Result<Option<(KnownTicket, bool)>> {
        if let Some(known) = self.prefetched_thread(ids) {
            return match known {
                Some((ticket_id, ours)) => {
                    Ok(self.ticket(ticket_id).await?.map(|ticket| (ticket, ours)))
                }
                None => Ok(None),
            };
        }
        self.flush_pending().await?;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            // Only placeholders are formatted into the statement; the IDs are bound.
            let sql = format!(
                "SELECT message_id, ticket_id, CASE WHEN direction = 'outbound' THEN 1 ELSE 0 END \
                 FROM messages WHERE message_id IN ({list}) \
                 UNION ALL SELECT message_id, ticket_id, 1 FROM outbox WHERE message_id IN ({list}) \
                 AND ticket_id IS NOT NULL"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            // An agent's reply is in both tables: the outbox's answer (ours) wins.
            let mut found: HashMap<String, (i64, bool)> = HashMap::new();
            for r in query.fetch_all(&mut *self.tx).await? {
                let ours = r.get::<i64, _>(2) == 1;
                let entry = found.entry(r.get(0)).or_insert((r.get(1), ours));
                entry.1 |= ours;
            }
            if let Some((ticket_id, ours)) = chunk.iter().find_map(|id| found.get(id)) {
                let ours = *ours;
                return Ok(self.ticket(*ticket_id).await?.map(|ticket| (ticket, ours)));
            }
        }
        Ok(None)
    }

    /// The ticket with this reference (`TCK-000123`).
    pub async fn ticket_by_reference(&mut self, reference: &str) -> Result<Option<KnownTicket>> {
        let known = self.written.references.get(reference).copied().or_else(|| {
            self.prefetched
                .as_ref()
                .filter(|p| p.asked_tags.contains(reference))
                .map(|p| p.tags.get(reference).copied().unwrap_or(0))
        });
        match known {
            Some(0) => return Ok(None),
            Some(ticket_id) => return self.ticket(ticket_id).await,
            None => {}
        }
        let row = sqlx::query("SELECT id FROM tickets WHERE reference = $1")
            .bind(reference)
            .fetch_optional(&mut *self.tx)
            .await?;
        match row {
            Some(row) => self.ticket(row.get(0)).await,
            None => Ok(None),
        }
    }

    /// A ticket with its status and participants: the requester, everyone in the From,
    /// Reply-To, To or Cc of one of its messages, and the recipients of our outbox messages —
    /// from what the batch opened or prefetched and added since, else in one statement.
    async fn ticket(&mut self, ticket_id: i64) -> Result<Option<KnownTicket>> {
        // Opened by this batch, or read by its prefetch: what the batch added since is known.
        let known = self.written.tickets.get(&ticket_id).or_else(|| {
            self.prefetched
                .as_ref()
                .and_then(|p| p.tickets.get(&ticket_id))
        });
        if let Some(known) = known {
            let mut ticket = known.clone();
            for address in self
                .written
                .participants
                .get(&ticket_id)
                .into_iter()
                .flatten()
            {
                if !ticket.participants.contains(address) {
                    ticket.participants.push(address.clone());
                }
            }
            if self.touched_tickets.get(&ticket_id) == Some(&true) {
                ticket.status = TicketStatus::Open;
            }
            return Ok(Some(ticket));
        }
        // Its messages written by this batch must be in the answer.
        if self.pending.has_ticket(ticket_id) {
            self.flush_pending().await?;
        }
        let Some(mut ticket) = self.tickets_as_stored(&[ticket_id]).await?.pop() else {
            return Ok(None);
        };
        // Reopened earlier in this batch (written at commit).
        if self.touched_tickets.get(&ticket_id) == Some(&true) {
            ticket.status = TicketStatus::Open;
        }
        Ok(Some(ticket))
    }

    /// Reads, in a few statements for the whole batch, what its messages' decisions will ask:
    /// the stored messages with their Message-IDs and the ones they refer to, the senders' recent
    /// tickets and the unused releases. [`Batch::message_facts`] and
    /// [`Batch::ticket_of_message_ids`] then answer from it (adding what the batch wrote since)
    /// instead of one statement per message; anything not asked here is still queried.
    pub async fn prefetch(&mut self, questions: &BatchQuestions<'_>) -> Result<()> {
        self.ids
            .expect(questions.message_ids.len(), questions.attachments);
        let mut prefetched = Prefetched {
            mailbox: questions.mailbox.to_string(),
            since_ms: questions.since_ms,
            ..Prefetched::default()
        };
        let mut ids: Vec<&str> = questions.message_ids.clone();
        ids.extend(&questions.referenced_ids);
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT message_id, ticket_id, fingerprint, id, fingerprint_version FROM messages \
                 WHERE message_id IN ({list})"
            )));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched
                    .messages
                    .insert(row.get(0), known_message(&row, 1)?);
            }
        }
        let mut referenced: Vec<&str> = questions.referenced_ids.clone();
        referenced.sort_unstable();
        referenced.dedup();
        for chunk in referenced.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT message_id, ticket_id FROM outbox WHERE message_id IN ({list}) AND ticket_id IS NOT NULL"
            )));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched.outbox.insert(row.get(0), row.get(1));
            }
        }
        let mut senders: Vec<String> = questions.senders.clone();
        senders.sort_unstable();
        senders.dedup();
        for chunk in senders.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(2, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT sender_key, COUNT(*) FROM tickets \
                 WHERE sender_key IN ({list}) AND created_at >= $1 GROUP BY sender_key"
            )))
            .bind(questions.since_ms);
            for sender in chunk {
                query = query.bind(sender.as_str());
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched
                    .senders
                    .insert(row.get(0), row.get::<i64, _>(1) as u32);
            }
            for sender in chunk {
                prefetched.senders.entry(sender.clone()).or_insert(0);
            }
        }
        for chunk in questions.message_ids.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(2, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT message_id FROM quarantine WHERE mailbox = $1 AND released_at IS NOT NULL \
                 AND release_used_at IS NULL AND message_id IN ({list})"
            )))
            .bind(questions.mailbox);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched.released.insert(row.get(0));
            }
        }
        let mut tags: Vec<&str> = questions.tags.iter().map(String::as_str).collect();
        tags.sort_unstable();
        tags.dedup();
        for chunk in tags.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT reference, id FROM tickets WHERE reference IN ({list})"
            )));
            for tag in chunk {
                query = query.bind(*tag);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                prefetched.tags.insert(row.get(0), row.get(1));
            }
        }
        prefetched.asked_tags = tags.iter().map(|t| t.to_string()).collect();
        // The tickets the batch's threads and tags will ask for: the referenced messages' and
        // outbox rows', and the tagged ones.
        let mut ticket_ids: Vec<i64> = referenced
            .iter()
            .filter_map(|id| prefetched.messages.get(*id).map(|m| m.ticket_id))
            .chain(prefetched.outbox.values().copied())
            .chain(prefetched.tags.values().copied())
            .collect();
        ticket_ids.sort_unstable();
        ticket_ids.dedup();
        for chunk in ticket_ids.chunks(TICKETS_PER_STATEMENT) {
            for ticket in self.tickets_as_stored(chunk).await? {
                prefetched.tickets.insert(ticket.ticket_id, ticket);
            }
        }
        prefetched.asked_messages = ids.iter().map(|id| id.to_string()).collect();
        prefetched.asked_references = referenced.iter().map(|id| id.to_string()).collect();
        self.prefetched = Some(prefetched);
        Ok(())
    }

    /// Tickets `ids` with their status and participants as stored, in one statement: a row per
    /// ticket, then one per address (the requester, the From, Reply-To, To and Cc of its
    /// messages — the lists as stored JSON, kind 2 — and the recipients of our outbox rows).
    async fn tickets_as_stored(&mut self, ids: &[i64]) -> Result<Vec<KnownTicket>> {
        let list = placeholders(1, ids.len());
        // Only placeholders are formatted into the statement; the ids are bound.
        let sql = format!(
            "SELECT 0, id, status, requester_address FROM tickets WHERE id IN ({list}) \
             UNION ALL SELECT 1, ticket_id, NULL, from_address FROM messages WHERE ticket_id IN ({list}) AND from_address IS NOT NULL \
             UNION ALL SELECT 1, ticket_id, NULL, reply_to FROM messages WHERE ticket_id IN ({list}) AND reply_to IS NOT NULL \
             UNION ALL SELECT 2, ticket_id, NULL, from_addresses FROM messages WHERE ticket_id IN ({list}) AND from_addresses IS NOT NULL \
             UNION ALL SELECT 2, ticket_id, NULL, to_addresses FROM messages WHERE ticket_id IN ({list}) AND to_addresses IS NOT NULL \
             UNION ALL SELECT 2, ticket_id, NULL, cc_addresses FROM messages WHERE ticket_id IN ({list}) AND cc_addresses IS NOT NULL \
             UNION ALL SELECT 1, ticket_id, NULL, to_address FROM outbox WHERE ticket_id IN ({list}) AND to_address IS NOT NULL"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&mut *self.tx).await?;
        let mut tickets: HashMap<i64, KnownTicket> = HashMap::new();
        for row in rows.iter().filter(|r| r.get::<i64, _>(0) == 0) {
            let ticket_id: i64 = row.get(1);
            let mut participants = Vec::new();
            if let Some(requester) = row.get::<Option<String>, _>(3) {
                participants.push(requester.to_ascii_lowercase());
            }
            tickets.insert(
                ticket_id,
                KnownTicket {
                    ticket_id,
                    status: row.get::<String, _>(2).parse()?,
                    participants,
                },
            );
        }
        for row in rows.iter().filter(|r| r.get::<i64, _>(0) != 0) {
            let Some(ticket) = tickets.get_mut(&row.get::<i64, _>(1)) else {
                continue;
            };
            let Some(text) = row.get::<Option<String>, _>(3) else {
                continue;
            };
            let addresses = if row.get::<i64, _>(0) == 2 {
                addresses_of_json(&text)
            } else {
                vec![text]
            };
            for address in addresses {
                let address = address.to_ascii_lowercase();
                if !ticket.participants.contains(&address) {
                    ticket.participants.push(address);
                }
            }
        }
        Ok(tickets.into_values().collect())
    }

    /// [`Batch::message_facts`] from the prefetch, when it asked about this message.
    fn prefetched_facts(
        &self,
        mailbox: &str,
        message_id: &str,
        sender_key: Option<&str>,
        since_ms: i64,
    ) -> Option<MessageFacts> {
        let prefetched = self.prefetched.as_ref()?;
        if prefetched.mailbox != mailbox
            || prefetched.since_ms != since_ms
            || !prefetched.asked_messages.contains(message_id)
        {
            return None;
        }
        let sender_recent_tickets = match sender_key {
            Some(key) => {
                prefetched.senders.get(key)? + self.written.opened_by.get(key).copied().unwrap_or(0)
            }
            None => 0,
        };
        let same_message_id = self
            .written
            .messages
            .get(message_id)
            .or_else(|| prefetched.messages.get(message_id))
            .cloned();
        Some(MessageFacts {
            same_message_id,
            sender_recent_tickets,
            released: prefetched.released.contains(message_id)
                && !self.written.used_releases.contains(message_id),
        })
    }

    /// [`Batch::ticket_of_message_ids`] from the prefetch: `Some(answer)` when every ID was asked
    /// about (the first known one in order wins), `None` when the database must be asked.
    /// The ticket of the first known of `ids` and whether that ID is one of our outbox messages,
    /// from the prefetch and what the batch wrote since; `None` when the prefetch did not ask.
    fn prefetched_thread(&self, ids: &[String]) -> Option<Option<(i64, bool)>> {
        let prefetched = self.prefetched.as_ref()?;
        for id in ids {
            if let Some(known) = self.written.messages.get(id) {
                return Some(Some((known.ticket_id, false)));
            }
            if !prefetched.asked_references.contains(id) {
                return None;
            }
            // Our own outbound messages (an agent's reply) are in both: the outbox says it is ours.
            if let Some(ticket_id) = prefetched.outbox.get(id) {
                return Some(Some((*ticket_id, true)));
            }
            if let Some(known) = prefetched.messages.get(id) {
                return Some(Some((known.ticket_id, false)));
            }
        }
        Some(None)
    }
}

/// A stored message from `ticket_id, fingerprint, id, fingerprint_version`, the first at column
/// `first`.
fn known_message(row: &sqlx::any::AnyRow, first: usize) -> Result<KnownMessage> {
    Ok(KnownMessage {
        ticket_id: row.get(first),
        fingerprint: row.get(first + 1),
        message_row_id: row.get(first + 2),
        fingerprint_version: FingerprintVersion::from_number(row.get(first + 3))?,
    })
}

/// The addresses of a stored address list (`[{"name"?, "address"}]`); a list that does not
/// parse names no one.
fn addresses_of_json(text: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        address: Option<String>,
    }
    serde_json::from_str::<Vec<Entry>>(text)
        .map(|entries| entries.into_iter().filter_map(|e| e.address).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::addresses_of_json;

    #[test]
    fn stored_address_lists_give_their_addresses() {
        assert_eq!(
            addresses_of_json(r#"[{"name":"Ann","address":"ann@x.test"},{"address":"bo@y.test"}]"#),
            ["ann@x.test", "bo@y.test"]
        );
        assert!(addresses_of_json("not json").is_empty());
        assert!(addresses_of_json("[]").is_empty());
    }
}
