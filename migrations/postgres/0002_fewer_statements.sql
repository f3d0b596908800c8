-- mailintake schema v2 (PostgreSQL): lets the database do per-row work that cost a statement per
-- message before. The SQLite twin is migrations/sqlite/0002_fewer_statements.sql.

-- The ticket reference (TCK-000123; more digits past 999999) is set by the database when a ticket is
-- inserted without one. It must match ingest::ticket_reference.
CREATE FUNCTION tickets_set_reference() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reference IS NULL THEN
        NEW.reference := 'TCK-' || CASE WHEN NEW.id < 1000000 THEN lpad(NEW.id::text, 6, '0') ELSE NEW.id::text END;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tickets_reference BEFORE INSERT ON tickets FOR EACH ROW EXECUTE FUNCTION tickets_set_reference();

-- Each incoming message asks whether an operator released it: only unused releases are indexed.
CREATE INDEX quarantine_unused_release ON quarantine (mailbox, message_id)
    WHERE released_at IS NOT NULL AND release_used_at IS NULL;

-- The per-recipient acknowledgement limit counts by lower-cased address.
CREATE INDEX outbox_recipient_lower ON outbox (lower(to_address), created_at);
