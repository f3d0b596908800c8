-- mailintake schema v3, migration 0016 (PostgreSQL): a copy of each sent message in the mailbox's
-- Sent folder. With `sent_copy = "append"` (a server that keeps no copy of what is submitted,
-- unlike Exchange Online) the sender appends the message to the folder the server marks \Sent
-- (RFC 6154) after the server accepted it, once: it looks for the Message-ID there first. The
-- state is decided when the row is sent, so changing the setting later never copies old mail.
-- The twin is migrations/sqlite/0016_sent_copy.sql. Only ASCII in this file.

-- NULL until sent; then 'server' (the submission server keeps the copy), 'none' (no copy
-- wanted), 'pending' (to be appended: due at sent_copy_due_at), 'appended' (appended by us),
-- 'present' (a message with our Message-ID was in the folder already: an earlier append whose
-- answer was lost).
ALTER TABLE outbox ADD COLUMN sent_copy TEXT;
-- The folder that got the copy ('appended', 'present').
ALTER TABLE outbox ADD COLUMN sent_copy_folder TEXT;
-- When the copy was appended or found.
ALTER TABLE outbox ADD COLUMN sent_copy_at BIGINT;
-- Why the last try to append failed (the server's words and the fix); the row stays 'pending'.
ALTER TABLE outbox ADD COLUMN sent_copy_error TEXT;
-- When a 'pending' copy is tried (again).
ALTER TABLE outbox ADD COLUMN sent_copy_due_at BIGINT;
CREATE INDEX outbox_sent_copy_due ON outbox (mailbox, sent_copy_due_at) WHERE sent_copy = 'pending';
