-- mailintake schema v3, migration 0019 (PostgreSQL): what Exchange calls a message mailintake sent
-- through Microsoft Graph (issue 18). Exchange may give a message its own Message-ID
-- (internetMessageId) instead of the one in our MIME; replies, auto-replies and bounces then name
-- that one, so it is kept beside ours and read as ours (loop safety, threading, bounces). Every
-- Graph send goes through a draft: its immutable id is kept so the copy in Sent Items (the same
-- item, sent) is read back by it. The twin is migrations/sqlite/0019_graph_sent_ids.sql. Only
-- ASCII in this file.

-- The draft's immutable id (Prefer: IdType="ImmutableId"), from its creation on; after the send
-- it names the copy in Sent Items.
ALTER TABLE outbox ADD COLUMN graph_item_id TEXT;
-- The Message-ID (with angle brackets stripped, like message_id) Exchange gave the message when it
-- is not ours; NULL when Exchange kept ours.
ALTER TABLE outbox ADD COLUMN sent_message_id TEXT;
CREATE INDEX outbox_sent_message_id ON outbox (sent_message_id) WHERE sent_message_id IS NOT NULL;
