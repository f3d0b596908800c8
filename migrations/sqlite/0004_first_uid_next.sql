-- mailintake schema v4 (SQLite): the first-start cutoff decides by arrival in the folder, not by
-- date alone. The PostgreSQL twin is migrations/postgres/0004_first_uid_next.sql.

-- The UIDNEXT seen when the folder was first swept (under its current UIDVALIDITY): a UID from
-- here on arrived after the first start and is ingested whatever its INTERNALDATE (mail released
-- from Junk, dragged back, recovered). NULL: no mark, the date cutoff applies to every UID.
ALTER TABLE mailbox_state ADD COLUMN first_uid_next BIGINT;
-- A folder swept before this version: what it has recorded was there, what comes above it is new.
UPDATE mailbox_state SET first_uid_next = last_uid + 1;
