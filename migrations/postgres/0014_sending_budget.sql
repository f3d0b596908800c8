-- mailintake schema v3, migration 0014 (PostgreSQL): one sending budget per mailbox, what the SMTP
-- server announced. `sender_state` has one row per sending mailbox:
-- the sender locks it while it counts the budget and claims a row (FOR UPDATE on PostgreSQL; the
-- write lock of BEGIN IMMEDIATE on SQLite), so two processes on one database count the same
-- rows; it also keeps what the server's EHLO said (SIZE, DSN), which submission reads to refuse a
-- message that server would refuse. The twin is migrations/sqlite/0014_sending_budget.sql.
-- Only ASCII in this file.

CREATE TABLE sender_state (
    mailbox TEXT PRIMARY KEY,
    -- The server's EHLO SIZE (bytes; NULL: not learnt yet, 0: announced without a limit).
    server_size_limit BIGINT,
    -- 1 when the server's EHLO offers DSN (RFC 3461), 0 when not; NULL: not learnt yet.
    server_dsn BIGINT,
    -- When the EHLO above was read.
    server_seen_at BIGINT
);

-- Why a pending row waits for the mailbox's sending budget (30 messages a minute, 10,000
-- recipients a day), with when it is due (next_attempt_at); cleared when it is claimed.
ALTER TABLE outbox ADD COLUMN deferred_reason TEXT;
-- The budget counts sent_at over the last minute and day.
CREATE INDEX outbox_sent ON outbox (mailbox, sent_at) WHERE sent_at IS NOT NULL;
