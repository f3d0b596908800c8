-- mailintake schema v2, migration 0006 (PostgreSQL): keys that mail controls are indexed without
-- btree's 2,704-byte limit on an index row, and a message the database refuses is quarantined
-- as `unstorable`. The SQLite twin is migrations/sqlite/0006_unlimited_keys_and_unstorable.sql
-- (SQLite indexes have no such limit: only the quarantine reason changes there).
--
-- A hash index stores a 4-byte hash of the key and compares the key itself on a hit: equality
-- lookups (=, IN) of any length, which is all these keys are used for. A hash index cannot be
-- UNIQUE, but it can back an exclusion constraint, which keeps the Message-ID unique (and is an
-- arbiter for INSERT ... ON CONFLICT DO NOTHING). Only ASCII in this file: a database in
-- another encoding than UTF8 (LATIN1) must be able to read it.

-- messages.message_id: was UNIQUE (btree), now unique through a hash exclusion constraint.
ALTER TABLE messages DROP CONSTRAINT messages_message_id_key;
ALTER TABLE messages ADD CONSTRAINT messages_message_id_unique EXCLUDE USING hash (message_id WITH =);

-- The ledger by Message-ID (for the helpdesk and operators).
DROP INDEX imap_messages_message_id;
CREATE INDEX imap_messages_message_id ON imap_messages USING hash (message_id);

-- Unused releases, asked by Message-ID; the mailbox is compared on the rows found.
DROP INDEX quarantine_unused_release;
CREATE INDEX quarantine_unused_release ON quarantine USING hash (message_id)
    WHERE released_at IS NOT NULL AND release_used_at IS NULL;

-- The per-sender limit counts by lower-cased From address; the time window is compared on the
-- sender's rows.
DROP INDEX tickets_requester;
CREATE INDEX tickets_requester ON tickets USING hash (lower(requester_address));

-- The per-recipient acknowledgement limit counts by lower-cased envelope sender (Return-Path);
-- outbox_recipient (as written) had no query.
DROP INDEX outbox_recipient;
DROP INDEX outbox_recipient_lower;
CREATE INDEX outbox_recipient_lower ON outbox USING hash (lower(to_address));

ALTER TABLE quarantine DROP CONSTRAINT quarantine_reason_check;
ALTER TABLE quarantine ADD CONSTRAINT quarantine_reason_check CHECK (reason IN (
    'too-large', 'unparseable', 'message-id-conflict', 'sender-rate-limit', 'unreadable', 'unstorable'));
