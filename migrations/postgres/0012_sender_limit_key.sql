-- mailintake migration 0012 (PostgreSQL): the per-sender ticket limit counts tickets by the address
-- the receiving server vouched for (SPF or aligned DKIM in its own Authentication-Results), so a
-- forged From cannot use up a real customer's limit and get their mail quarantined. The twin is
-- migrations/sqlite/0012_sender_limit_key.sql.

-- The key the limit counts this ticket under: the vouched address, lower case, or
-- 'unverified:' and the lower-case From address when nothing vouched for the sender. NULL for
-- tickets without a From. (Hash-indexed: an address may be longer than a btree entry allows.)
ALTER TABLE tickets ADD COLUMN sender_key TEXT;
UPDATE tickets SET sender_key = 'unverified:' || lower(requester_address)
    WHERE requester_address IS NOT NULL;
CREATE INDEX tickets_sender_key ON tickets USING hash (sender_key);
