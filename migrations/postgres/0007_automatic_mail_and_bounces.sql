-- mailintake schema v2, migration 0007 (PostgreSQL): machine-generated mail is kept as tickets
-- with its kind (`messages.auto_kind` gains `delivery-status`, `auto-generated`, `bulk`, `list`),
-- and a delivery status notification about one of our own messages marks its outbox row
-- `bounced` (with when and why). The SQLite twin is
-- migrations/sqlite/0007_automatic_mail_and_bounces.sql. Only ASCII in this file.

ALTER TABLE messages DROP CONSTRAINT messages_auto_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_auto_kind_check CHECK (auto_kind IN (
    'auto-reply', 'bounce', 'delivery-status', 'read-receipt', 'loop', 'auto-generated', 'bulk', 'list'));

ALTER TABLE outbox DROP CONSTRAINT outbox_state_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_state_check CHECK (state IN (
    'pending', 'sending', 'sent', 'failed', 'cancelled', 'suppressed', 'bounced'));
-- A delivery status notification said the message could not be delivered (RFC 3464
-- `Action: failed`): when it was recorded, and what it said (recipient, status, diagnostic).
ALTER TABLE outbox ADD COLUMN bounced_at BIGINT;
ALTER TABLE outbox ADD COLUMN bounce_reason TEXT;
