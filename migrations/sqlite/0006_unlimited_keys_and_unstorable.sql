-- no-transaction
-- mailintake schema v2, migration 0006 (SQLite): a message the database refuses is quarantined
-- as `unstorable`. The PostgreSQL twin (migrations/postgres/0006_unlimited_keys_and_unstorable.sql)
-- also moves the keys that mail controls to hash indexes; SQLite's indexes have no limit on the
-- size of a key, so they stay as they are here.
--
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt
-- (https://sqlite.org/lang_altertable.html#otheralter). Foreign keys must be off for that, which
-- only works outside a transaction; hence the transaction is this file's own.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE quarantine_v2 (
    id           INTEGER PRIMARY KEY,
    mailbox      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  BIGINT NOT NULL,
    uid          BIGINT NOT NULL,
    message_id   TEXT,
    size_bytes   BIGINT NOT NULL,
    from_address TEXT,
    subject      TEXT,
    reason       TEXT NOT NULL CHECK (reason IN ('too-large', 'unparseable', 'message-id-conflict', 'sender-rate-limit', 'unreadable', 'unstorable')),
    detail       TEXT,
    raw          BLOB,
    created_at   BIGINT NOT NULL,
    released_at  BIGINT,
    -- A release lets the message in once (up to this many bytes when set); then it is used.
    release_max_bytes BIGINT,
    release_used_at   BIGINT,
    raw_purged_at      BIGINT,
    resolved_at        BIGINT,
    resolved_ticket_id BIGINT REFERENCES tickets (id)
);
INSERT INTO quarantine_v2 (id, mailbox, folder, uidvalidity, uid, message_id, size_bytes, from_address, subject,
    reason, detail, raw, created_at, released_at, release_max_bytes, release_used_at, raw_purged_at, resolved_at,
    resolved_ticket_id)
SELECT id, mailbox, folder, uidvalidity, uid, message_id, size_bytes, from_address, subject,
    reason, detail, raw, created_at, released_at, release_max_bytes, release_used_at, raw_purged_at, resolved_at,
    resolved_ticket_id
FROM quarantine;
DROP TABLE quarantine;
ALTER TABLE quarantine_v2 RENAME TO quarantine;
CREATE INDEX quarantine_unused_release ON quarantine (mailbox, message_id)
    WHERE released_at IS NOT NULL AND release_used_at IS NULL;
COMMIT;
PRAGMA foreign_keys = ON;
