-- no-transaction
-- mailintake schema v2, migration 0011 (SQLite): each message's fingerprint is stored with the
-- version of the algorithm that computed it (`messages.fingerprint_version`: 1 = the identifying
-- header fields and the body's bytes, every row before this migration; 2 = what a person sees,
-- which a server re-rendering the message leaves as it was), and a released Message-ID conflict
-- is stored under `<original>#<n>` with `message_id_source = 'conflict-release'`. The PostgreSQL
-- twin is migrations/postgres/0011_fingerprint_versions.sql.
--
-- Rows stored under version 1 are not re-fingerprinted here (that takes the Rust parser): a new
-- message that meets one is compared under version 1, and under version 2 with the stored row's
-- kept raw bytes (`raw_messages`) where there are some, at that moment.
--
-- SQLite cannot change a CHECK constraint in place: `messages` is rebuilt, keeping every row and
-- id (https://sqlite.org/lang_altertable.html#otheralter), as in migration 0007. Foreign keys must
-- be off for that, which only works outside a transaction; hence the transaction is this file's own.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE messages_v3 (
    id                  INTEGER PRIMARY KEY,
    ticket_id           BIGINT NOT NULL REFERENCES tickets (id),
    direction           TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    mailbox             TEXT NOT NULL,
    message_id          TEXT NOT NULL UNIQUE,
    message_id_source   TEXT NOT NULL CHECK (message_id_source IN ('header', 'content-hash', 'conflict-release')),
    in_reply_to         TEXT,
    thread_references   TEXT,
    subject             TEXT NOT NULL,
    from_address        TEXT,
    from_name           TEXT,
    reply_to            TEXT,
    to_addresses        TEXT NOT NULL,
    cc_addresses        TEXT NOT NULL,
    sent_at             BIGINT,
    received_at         BIGINT,
    body_text           TEXT,
    body_html           TEXT,
    body_text_derived   TEXT,
    auto_kind           TEXT CHECK (auto_kind IN ('auto-reply', 'bounce', 'delivery-status', 'read-receipt', 'loop',
                                                  'auto-generated', 'bulk', 'list')),
    headers             TEXT NOT NULL,
    size_bytes          BIGINT NOT NULL,
    content_sha256      TEXT NOT NULL,
    fingerprint         TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    from_addresses      TEXT,
    fingerprint_version BIGINT NOT NULL DEFAULT 1 CHECK (fingerprint_version IN (1, 2))
);
INSERT INTO messages_v3 (id, ticket_id, direction, mailbox, message_id, message_id_source, in_reply_to,
    thread_references, subject, from_address, from_name, reply_to, to_addresses, cc_addresses, sent_at,
    received_at, body_text, body_html, body_text_derived, auto_kind, headers, size_bytes, content_sha256,
    fingerprint, created_at, from_addresses, fingerprint_version)
SELECT id, ticket_id, direction, mailbox, message_id, message_id_source, in_reply_to,
    thread_references, subject, from_address, from_name, reply_to, to_addresses, cc_addresses, sent_at,
    received_at, body_text, body_html, body_text_derived, auto_kind, headers, size_bytes, content_sha256,
    fingerprint, created_at, from_addresses, 1
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v3 RENAME TO messages;
CREATE INDEX messages_ticket ON messages (ticket_id);

COMMIT;
PRAGMA foreign_keys = ON;
