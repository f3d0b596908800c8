-- mailintake schema v2, migration 0011 (PostgreSQL): each message's fingerprint is stored with the
-- version of the algorithm that computed it (`messages.fingerprint_version`: 1 = the identifying
-- header fields and the body's bytes, every row before this migration; 2 = what a person sees,
-- which a server re-rendering the message leaves as it was), and a released Message-ID conflict
-- is stored under `<original>#<n>` with `message_id_source = 'conflict-release'`. The twin is
-- migrations/sqlite/0011_fingerprint_versions.sql.
--
-- Rows stored under version 1 are not re-fingerprinted here (that takes the Rust parser): a new
-- message that meets one is compared under version 1, and under version 2 with the stored row's
-- kept raw bytes (`raw_messages`) where there are some, at that moment.

ALTER TABLE messages ADD COLUMN fingerprint_version BIGINT NOT NULL DEFAULT 1
    CONSTRAINT messages_fingerprint_version_check CHECK (fingerprint_version IN (1, 2));

ALTER TABLE messages DROP CONSTRAINT messages_message_id_source_check;
ALTER TABLE messages ADD CONSTRAINT messages_message_id_source_check CHECK (message_id_source IN (
    'header', 'content-hash', 'conflict-release'));
