-- mailintake schema v3, migration 0017 (PostgreSQL): mailboxes read through Microsoft Graph
-- (transport = "graph"). Graph names a message by a string id, not by a UID, and reports changes
-- by delta query. mailintake numbers each message of a watched folder itself, in the order delta
-- first reports it, and keeps the number with the message's immutable id here; the ledger
-- (imap_messages) and the checkpoint (mailbox_state) then work by that number exactly as they do
-- by IMAP UID. A message that leaves the folder and comes back (moved back by an agent, released
-- from quarantine) gets a new number, as a new UID in IMAP.
-- The twin is migrations/sqlite/0017_graph.sql. Only ASCII in this file.

-- One row per watched folder of a Graph mailbox.
CREATE TABLE graph_folders (
    mailbox    TEXT NOT NULL,
    folder     TEXT NOT NULL,
    -- The folder's Graph id; a new id (the folder was deleted and made again) is a new validity.
    folder_id  TEXT NOT NULL,
    -- Plays UIDVALIDITY's part in imap_messages and mailbox_state.
    validity   BIGINT NOT NULL,
    -- The number the next new message gets.
    next_uid   BIGINT NOT NULL,
    -- Where the next delta round starts (@odata.deltaLink, or the @odata.nextLink of a round
    -- that was interrupted); NULL before the first round and after Graph answered 410.
    delta_link TEXT,
    -- When the last complete delta round ended (unix ms).
    synced_at  BIGINT,
    PRIMARY KEY (mailbox, folder)
);

-- The messages delta reported in a watched folder, with what the listing needs before any body
-- is downloaded.
CREATE TABLE graph_items (
    mailbox     TEXT NOT NULL,
    folder      TEXT NOT NULL,
    validity    BIGINT NOT NULL,
    uid         BIGINT NOT NULL,
    -- The immutable id (Prefer: IdType="ImmutableId"): it stays the same across moves.
    item_id     TEXT NOT NULL,
    -- PidTagMessageSize (0x0E08), the store's size: the body download is capped as well.
    size_bytes  BIGINT NOT NULL,
    -- receivedDateTime as unix ms.
    received_at BIGINT,
    -- isRead: 1 or 0.
    is_read     BIGINT NOT NULL,
    -- When delta reported it gone from the folder (unix ms); NULL while it is there.
    gone_at     BIGINT,
    PRIMARY KEY (mailbox, folder, validity, uid)
);
CREATE UNIQUE INDEX graph_items_item ON graph_items (mailbox, folder, item_id);
