-- mailintake schema v2 (SQLite): lets the database do per-row work that cost a statement per
-- message before. The PostgreSQL twin is migrations/postgres/0002_fewer_statements.sql.

-- The ticket reference (TCK-000123; more digits past 999999) is set by the database when a ticket is
-- inserted without one. It must match ingest::ticket_reference.
CREATE TRIGGER tickets_reference AFTER INSERT ON tickets WHEN NEW.reference IS NULL
BEGIN
    UPDATE tickets SET reference = printf('TCK-%06d', NEW.id) WHERE id = NEW.id;
END;

-- Each incoming message asks whether an operator released it: only unused releases are indexed.
CREATE INDEX quarantine_unused_release ON quarantine (mailbox, message_id)
    WHERE released_at IS NOT NULL AND release_used_at IS NULL;

-- The per-recipient acknowledgement limit counts by lower-cased address.
CREATE INDEX outbox_recipient_lower ON outbox (lower(to_address), created_at);
