-- mailintake migration 0005 (SQLite): a From address the SMTP server refuses for good holds only its
-- own acknowledgements. The PostgreSQL twin is migrations/postgres/0005_outbox_blocked_sender.sql.

-- Set while a pending row waits because the server refused its From address (SendAs denied, a
-- policy, a quota): the reply and the fix. Cleared when the address is accepted again.
ALTER TABLE outbox ADD COLUMN blocked_reason TEXT;
-- When the row's From address was first refused; kept after the row is sent, as a record.
ALTER TABLE outbox ADD COLUMN blocked_at BIGINT;
-- The sender asks, for each row it may claim, whether its address has a blocked row.
CREATE INDEX outbox_blocked ON outbox (mailbox, from_address) WHERE blocked_reason IS NOT NULL;
