-- mailintake schema v3, migration 0020 (PostgreSQL): the large columns compressed with lz4
-- instead of the server's default pglz (issue 19, item 5). PostgreSQL compresses every value
-- above about 2 kB before it stores it out of line (TOAST): with pglz that was a large part of
-- the server's CPU when a batch writes its bodies, headers and attachments. Measured by the
-- benchmark (scripts/bench.sh, 10,000 messages, 471 MB, one round each on the same machine):
-- mailintake on PostgreSQL 10.8 s with pglz, 9.7 s with lz4. lz4 needs PostgreSQL 14 or later
-- built with it (Debian's is); on another server the columns keep the default. The raw mail
-- mailintake keeps is gzip-compressed already: it is stored out of line without a second try
-- at compressing it. Only new values are affected; nothing is rewritten. The twin is
-- migrations/sqlite/0020_lz4.sql. Only ASCII in this file.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE messages
            ALTER COLUMN body_text SET COMPRESSION lz4,
            ALTER COLUMN body_html SET COMPRESSION lz4,
            ALTER COLUMN body_text_derived SET COMPRESSION lz4,
            ALTER COLUMN headers SET COMPRESSION lz4;
        ALTER TABLE attachment_blobs ALTER COLUMN content SET COMPRESSION lz4;
        ALTER TABLE quarantine ALTER COLUMN raw SET COMPRESSION lz4;
        ALTER TABLE outbox ALTER COLUMN raw SET COMPRESSION lz4;
    END IF;
END
$$;

ALTER TABLE raw_messages ALTER COLUMN content SET STORAGE EXTERNAL;
