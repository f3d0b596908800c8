-- mailintake migration 0008 (PostgreSQL): every From address of a message, normalised. The twin is
-- migrations/sqlite/0008_from_addresses.sql.

-- A JSON array of {"name"?, "address"} like to_addresses: all From addresses in the order written
-- (RFC 5322 allows several, with a Sender); from_address is the first. NULL for rows stored before.
ALTER TABLE messages ADD COLUMN from_addresses TEXT;
