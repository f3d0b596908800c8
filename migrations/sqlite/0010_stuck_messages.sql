-- mailintake schema v2, migration 0010 (SQLite): a message is set aside as unreadable only for
-- failures that are its own, and only after `unreadable_after` has passed since the first one;
-- several messages of a folder can wait at once. The twin is migrations/postgres/0010_stuck_messages.sql.

-- A message the server failed to deliver in a way that is its own: a refusal (tagged NO/BAD, or
-- no body although UID SEARCH still finds it) when it was fetched alone on a working session, or
-- the connection lost while it was fetched alone. It is tried again, alone, at the end of every
-- sweep; the checkpoint stays below it meanwhile. The row goes when the message comes through,
-- is set aside, or is gone from the folder.
CREATE TABLE stuck_messages (
    mailbox           TEXT NOT NULL,
    folder            TEXT NOT NULL,
    uidvalidity       BIGINT NOT NULL,
    uid               BIGINT NOT NULL,
    -- Failures in a row that belong to the message.
    failures          BIGINT NOT NULL,
    -- Connection losses in a row while it was fetched alone (0: the last failure was a refusal).
    connection_losses BIGINT NOT NULL,
    first_failed_at   BIGINT NOT NULL,
    last_failed_at    BIGINT NOT NULL,
    last_error        TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, uidvalidity, uid)
);

-- A batch with these UIDs (first and last) lost its connection while it was fetched, which says
-- nothing about any one message: the next sweeps take them one at a time, so that a message that
-- breaks the connection is found. Cleared when a sweep has got past them.
ALTER TABLE mailbox_state ADD COLUMN alone_from BIGINT;
ALTER TABLE mailbox_state ADD COLUMN alone_to BIGINT;

-- The old per-folder record counted any failure against the batch's first UID; its counts are
-- not evidence under the new rule, so they are dropped rather than carried over.
ALTER TABLE mailbox_state DROP COLUMN stuck_uid;
ALTER TABLE mailbox_state DROP COLUMN stuck_count;
ALTER TABLE mailbox_state DROP COLUMN stuck_error;
