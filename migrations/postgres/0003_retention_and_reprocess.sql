-- mailintake schema v3 (PostgreSQL): retention (`mailintake purge`) and dead-letter replay
-- (`mailintake reprocess`). The SQLite twin is migrations/sqlite/0003_retention_and_reprocess.sql.

-- `purge` removes attachment contents past the retention period; the rows keep their metadata.
ALTER TABLE attachments ADD COLUMN content_purged_at BIGINT;
-- `purge` asks per blob whether a newer attachment shares it.
CREATE INDEX attachments_sha256 ON attachments (sha256, created_at);
-- A blob whose content was purged keeps its row (attachments reference it) with an empty content.
ALTER TABLE attachment_blobs ADD COLUMN purged_at BIGINT;
-- `purge` removes the raw bytes of old quarantined mail.
ALTER TABLE quarantine ADD COLUMN raw_purged_at BIGINT;
-- `reprocess` turned the quarantined message into this outcome (ticket, follow-up or ignored).
ALTER TABLE quarantine ADD COLUMN resolved_at BIGINT;
ALTER TABLE quarantine ADD COLUMN resolved_ticket_id BIGINT REFERENCES tickets (id);

-- Nothing is lost to retention: when the same content arrives again in a new attachment, its
-- purged blob gets the content back (the insert itself then conflicts and does nothing).
CREATE FUNCTION attachment_blobs_refill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE attachment_blobs SET content = NEW.content, size_bytes = NEW.size_bytes, purged_at = NULL
    WHERE sha256 = NEW.sha256 AND purged_at IS NOT NULL;
    RETURN NEW;
END;
$$;
CREATE TRIGGER attachment_blobs_refill BEFORE INSERT ON attachment_blobs
FOR EACH ROW EXECUTE FUNCTION attachment_blobs_refill();
