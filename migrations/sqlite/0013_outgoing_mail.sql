-- no-transaction
-- mailintake schema v3, migration 0013 (SQLite): outgoing mail from the helpdesk goes through the
-- one outbox. `outbox.kind` gains `reply` (a person's mail: an agent's answer) and
-- `notification` (automatic mail, `Auto-Submitted: auto-generated`); such a row carries the
-- complete message composed once at submission (`raw`; a resend is byte-identical), its envelope
-- recipients (`envelope_to`: To, Cc and Bcc, one per line; Bcc is never in `raw`), how many
-- there are (`recipient_count`), the caller's idempotency key with the digest of its request,
-- and the way it came in (`submitted_via`). The table `outgoing` is the database contract: the
-- helpdesk inserts a request in its own transaction, mailintake takes it and writes the outcome.
-- The PostgreSQL twin is migrations/postgres/0013_outgoing_mail.sql.
--
-- SQLite cannot change a CHECK constraint in place: `outbox` is rebuilt, keeping every row and
-- id (https://sqlite.org/lang_altertable.html#otheralter), as in migration 0007. Foreign keys
-- must be off for that, which only works outside a transaction; hence the transaction is this
-- file's own.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE outbox_v3 (
    id                INTEGER PRIMARY KEY,
    mailbox           TEXT NOT NULL,
    ticket_id         BIGINT REFERENCES tickets (id),
    kind              TEXT NOT NULL CHECK (kind IN ('acknowledgement', 'follow-up-acknowledgement', 'quarantine-notice',
                                                    'reply', 'notification')),
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
    bounced_at        BIGINT,
    bounce_reason     TEXT,
    -- Agent mail and notifications (NULL for acknowledgements and notices): the caller's key,
    -- unique per mailbox, and the SHA-256 (hex) of its canonical request.
    idempotency_key   TEXT,
    request_digest    TEXT,
    -- The complete message as composed at submission; NULL for acknowledgements and notices,
    -- which are composed from the columns above when they are sent.
    raw               BLOB,
    -- Every envelope recipient (To, Cc, Bcc), one per line; NULL: to_address alone.
    envelope_to       TEXT,
    recipient_count   BIGINT NOT NULL DEFAULT 1,
    submitted_via     TEXT NOT NULL DEFAULT 'acknowledgement'
                      CHECK (submitted_via IN ('acknowledgement', 'cli', 'database', 'api'))
);
INSERT INTO outbox_v3 (id, mailbox, ticket_id, kind, from_address, to_address, subject, message_id, in_reply_to,
    thread_references, body_text, body_html, state, reason, attempts, next_attempt_at, claimed_at, last_error,
    smtp_response, created_at, sent_at, blocked_reason, blocked_at, bounced_at, bounce_reason)
SELECT id, mailbox, ticket_id, kind, from_address, to_address, subject, message_id, in_reply_to,
    thread_references, body_text, body_html, state, reason, attempts, next_attempt_at, claimed_at, last_error,
    smtp_response, created_at, sent_at, blocked_reason, blocked_at, bounced_at, bounce_reason
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v3 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (mailbox, state, next_attempt_at);
CREATE INDEX outbox_recipient ON outbox (to_address, created_at);
CREATE INDEX outbox_recipient_lower ON outbox (lower(to_address), created_at);
CREATE INDEX outbox_blocked ON outbox (mailbox, from_address) WHERE blocked_reason IS NOT NULL;
CREATE UNIQUE INDEX outbox_idempotency ON outbox (mailbox, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The database contract. The helpdesk writes mailbox, idempotency_key, request (the JSON
-- document `mailintake send --request` and the HTTP API take) and optionally created_at;
-- mailintake writes state, outbox_id, error and taken_at. What became of the mail itself is
-- read from the outbox row `outbox_id` names.
CREATE TABLE outgoing (
    id              INTEGER PRIMARY KEY,
    mailbox         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request         TEXT NOT NULL,
    created_at      BIGINT NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    state           TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'accepted', 'refused')),
    outbox_id       BIGINT REFERENCES outbox (id),
    error           TEXT,
    taken_at        BIGINT,
    UNIQUE (mailbox, idempotency_key)
);
CREATE INDEX outgoing_new ON outgoing (mailbox, state, id);

COMMIT;
PRAGMA foreign_keys = ON;
