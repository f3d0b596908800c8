-- mailintake migration 0009 (SQLite): a disposition the server refuses (a tagged NO to MOVE, STORE
-- or CREATE: a full or unwritable target folder, a missing permission) is recorded on the message's
-- row and retried by every sweep, and it no longer stops the folder; and each folder remembers when
-- it was last reconciled below its checkpoint. The twin is
-- migrations/postgres/0009_refusals_and_reconciliation.sql.

-- The server's last refusal of this row's pending disposition (its reply); NULL once it is done.
ALTER TABLE imap_messages ADD COLUMN disposition_refusal TEXT;
-- When the server first refused it (unix ms); NULL once it is done.
ALTER TABLE imap_messages ADD COLUMN disposition_refused_at BIGINT;

-- When a sweep last compared the UIDs the server has at or below `last_uid` with the recorded
-- outcomes (unix ms); NULL: never, so the next sweep does.
ALTER TABLE mailbox_state ADD COLUMN reconciled_at BIGINT;
