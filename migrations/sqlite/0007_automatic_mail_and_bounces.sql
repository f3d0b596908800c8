-- no-transaction
-- mailintake schema v2, migration 0007 (SQLite): machine-generated mail is kept as tickets with
-- its kind (`messages.auto_kind` gains `delivery-status`, `auto-generated`, `bulk`, `list`), and
-- a delivery status notification about one of our own messages marks its outbox row `bounced`
-- (with when and why). The PostgreSQL twin is migrations/postgres/0007_automatic_mail_and_bounces.sql.
--
-- SQLite cannot change a CHECK constraint in place: both tables are rebuilt, keeping every row
-- and id (https://sqlite.org/lang_altertable.html#otheralter). Foreign keys must be off for that,
-- which only works outside a transaction; hence the transaction is this file's own.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE messages_v2 (
    id                INTEGER PRIMARY KEY,
    ticket_id         BIGINT NOT NULL REFERENCES tickets (id),
    direction         TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    mailbox           TEXT NOT NULL,
    message_id        TEXT NOT NULL UNIQUE,
    message_id_source TEXT NOT NULL CHECK (message_id_source IN ('header', 'content-hash')),
    in_reply_to       TEXT,
    thread_references TEXT,
    subject           TEXT NOT NULL,
    from_address      TEXT,
    from_name         TEXT,
    reply_to          TEXT,
    to_addresses      TEXT NOT NULL,
    cc_addresses      TEXT NOT NULL,
    sent_at           BIGINT,
    received_at       BIGINT,
    body_text         TEXT,
    body_html         TEXT,
    body_text_derived TEXT,
    auto_kind         TEXT CHECK (auto_kind IN ('auto-reply', 'bounce', 'delivery-status', 'read-receipt', 'loop',
                                                'auto-generated', 'bulk', 'list')),
    headers           TEXT NOT NULL,
    size_bytes        BIGINT NOT NULL,
    content_sha256    TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);
INSERT INTO messages_v2 (id, ticket_id, direction, mailbox, message_id, message_id_source, in_reply_to,
    thread_references, subject, from_address, from_name, reply_to, to_addresses, cc_addresses, sent_at,
    received_at, body_text, body_html, body_text_derived, auto_kind, headers, size_bytes, content_sha256,
    fingerprint, created_at)
SELECT id, ticket_id, direction, mailbox, message_id, message_id_source, in_reply_to,
    thread_references, subject, from_address, from_name, reply_to, to_addresses, cc_addresses, sent_at,
    received_at, body_text, body_html, body_text_derived, auto_kind, headers, size_bytes, content_sha256,
    fingerprint, created_at
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE INDEX messages_ticket ON messages (ticket_id);

CREATE TABLE outbox_v2 (
    id                INTEGER PRIMARY KEY,
    mailbox           TEXT NOT NULL,
    ticket_id         BIGINT REFERENCES tickets (id),
    kind              TEXT NOT NULL CHECK (kind IN ('acknowledgement', 'follow-up-acknowledgement', 'quarantine-notice')),
    from_address      TEXT NOT NULL,
    to_address        TEXT,
    subject           TEXT NOT NULL,
    message_id        TEXT NOT NULL UNIQUE,
    in_reply_to       TEXT,
    thread_references TEXT,
    body_text         TEXT NOT NULL,
    body_html         TEXT,
    state             TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'cancelled',
                                                                    'suppressed', 'bounced')),
    reason            TEXT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    claimed_at        BIGINT,
    last_error        TEXT,
    smtp_response     TEXT,
    created_at        BIGINT NOT NULL,
    sent_at           BIGINT,
    blocked_reason    TEXT,
    blocked_at        BIGINT,
    -- A delivery status notification said the message could not be delivered (RFC 3464
    -- `Action: failed`): when it was recorded, and what it said (recipient, status, diagnostic).
    bounced_at        BIGINT,
    bounce_reason     TEXT
);
INSERT INTO outbox_v2 (id, mailbox, ticket_id, kind, from_address, to_address, subject, message_id, in_reply_to,
    thread_references, body_text, body_html, state, reason, attempts, next_attempt_at, claimed_at, last_error,
    smtp_response, created_at, sent_at, blocked_reason, blocked_at)
SELECT id, mailbox, ticket_id, kind, from_address, to_address, subject, message_id, in_reply_to,
    thread_references, body_text, body_html, state, reason, attempts, next_attempt_at, claimed_at, last_error,
    smtp_response, created_at, sent_at, blocked_reason, blocked_at
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (mailbox, state, next_attempt_at);
CREATE INDEX outbox_recipient ON outbox (to_address, created_at);
CREATE INDEX outbox_recipient_lower ON outbox (lower(to_address), created_at);
CREATE INDEX outbox_blocked ON outbox (mailbox, from_address) WHERE blocked_reason IS NOT NULL;

COMMIT;
PRAGMA foreign_keys = ON;
